/*
 * Promises: settle-once values, their continuations and the ready queue.
 *
 * The one design rule: settling a promise never runs anybody's code. It
 * records the outcome and, if a consumer is attached, puts the promise on the
 * loop's ready queue; the loop runs consumers between kernel round trips. So
 * a continuation never runs inside the call that registered it or the call
 * that settled its input, and stack depth never grows with chain length.
 *
 * Each promise has two references, producer and consumer; it goes back to
 * the pool when both are dropped.
 */
#include <errno.h>

#include "internal.h"

keel_promise *keel__promise_make(keel_loop *loop, keel_ctx *ctx)
{
	keel_promise *p = keel__promise_alloc(loop);
	p->loop = loop;
	p->refs = 2;
	if (ctx) {
		keel_ctx_retain(ctx);
		p->ctx = ctx;
	}
	return p;
}

keel_promise *keel_promise_new(keel_loop *loop)
{
	return keel__promise_make(loop, NULL);
}

void keel__promise_unref(keel_promise *p)
{
	KEEL__ASSERT(p->refs > 0);
	if (--p->refs > 0)
		return;
	KEEL__ASSERT(!p->queued);
	if (p->ctx)
		keel_ctx_release(p->ctx);
	keel__promise_free(p->loop, p);
}

static void ready_push(keel_promise *p)
{
	keel_loop *loop = p->loop;
	if (p->queued)
		return;
	p->queued = 1;
	p->next = NULL;
	if (loop->ready_tail)
		loop->ready_tail->next = p;
	else
		loop->ready_head = p;
	loop->ready_tail = p;
}

void keel__ready_run(keel_loop *loop, unsigned max)
{
	/*
	 * Bounded so that a chain which keeps scheduling work cannot keep the
	 * loop from the kernel; what is left runs next tick with a zero wait.
	 */
	for (unsigned i = 0; i < max && loop->ready_head; i++) {
		keel_promise *p = loop->ready_head;
		loop->ready_head = p->next;
		if (!loop->ready_head)
			loop->ready_tail = NULL;
		p->queued = 0;
		p->next = NULL;
		p->notify(p, p->notify_arg); /* the consumer drops its reference */
	}
}

bool keel_promise_settle(keel_promise *p, keel_outcome out)
{
	if (p->state == KEEL__SETTLED) {
		if (p->producer_owed) {
			/* Cancelled without a hook: the producer's settle is ignored but ends its hold. */
			p->producer_owed = 0;
			if (p->cancel) {
				/* keel_promise_on_release: whoever waited for the producer to let go hears now. */
				void (*fn)(keel_promise *, void *) = p->cancel;
				p->cancel = NULL;
				fn(p, p->cancel_arg);
			}
			keel__promise_unref(p);
		}
		return false;
	}
	KEEL__ASSERT(out.err <= 0);
	p->state = KEEL__SETTLED;
	p->out = out;
	p->cancel = NULL;
	p->cancel_arg = NULL;
	if (p->notify)
		ready_push(p);
	keel__promise_unref(p); /* the producer is done with it */
	return true;
}

bool keel_promise_resolve(keel_promise *p, int64_t n, void *ptr)
{
	return keel_promise_settle(p, keel_ok(n, ptr));
}

bool keel_promise_reject(keel_promise *p, int err)
{
	KEEL__ASSERT(err < 0);
	return keel_promise_settle(p, keel_fail(err));
}

void keel__promise_set_cancel(keel_promise *p, void (*fn)(keel_promise *, void *), void *arg)
{
	p->cancel = fn;
	p->cancel_arg = arg;
}

void keel_promise_on_cancel(keel_promise *p, keel_cancel_fn fn, void *ud)
{
	if (p->state == KEEL__SETTLED)
		return; /* (cancelled already: there is nothing left to stop) */
	keel__promise_set_cancel(p, fn, ud);
}

void keel_promise_cancel(keel_promise *p)
{
	if (!p || p->state == KEEL__SETTLED)
		return;
	if (p->cancel) {
		void (*fn)(keel_promise *, void *) = p->cancel;
		fn(p, p->cancel_arg);
	} else if (p->mode == KEEL__M_NONE) {
		/*
		 * No hook: settle it for the consumer now, but the producer still
		 * holds its reference and will settle later (ignored, returns
		 * false); the promise cannot be reused before that.
		 */
		p->state = KEEL__SETTLED;
		p->out = keel_fail(-ECANCELED);
		p->producer_owed = 1;
		if (p->notify)
			ready_push(p);
	}
}

bool keel_promise_producer_holds(const keel_promise *p)
{
	return p->producer_owed;
}

void keel_promise_on_release(keel_promise *p, void (*fn)(keel_promise *, void *), void *arg)
{
	KEEL__ASSERT(p->producer_owed && (!p->cancel || !fn));
	/* (The cancel hook's fields: a settled promise has no more use for them. fn NULL: forget it.) */
	p->cancel = fn;
	p->cancel_arg = arg;
}

void keel__promise_listen(keel_promise *p, void (*notify)(keel_promise *, void *), void *arg)
{
	KEEL__ASSERT(!p->consumed);
	p->consumed = 1;
	p->notify = notify;
	p->notify_arg = arg;
	if (p->state == KEEL__SETTLED)
		ready_push(p);
}

void keel_promise_release(keel_promise *p)
{
	if (!p)
		return;
	KEEL__ASSERT(!p->consumed);
	p->consumed = 1;
	keel__promise_unref(p);
}

bool keel_promise_is_settled(const keel_promise *p)
{
	return p->state == KEEL__SETTLED;
}

keel_outcome keel_promise_outcome(const keel_promise *p)
{
	KEEL__ASSERT(p->state == KEEL__SETTLED);
	return p->out;
}

keel_loop *keel_promise_loop(const keel_promise *p)
{
	return p->loop;
}

/* ---- Derived promises --------------------------------------------------- */

static void cancel_upstream(keel_promise *self, void *arg)
{
	(void)arg;
	if (self->upstream)
		keel_promise_cancel(self->upstream);
}

static void derived_notify(keel_promise *in, void *arg);

/*
 * q, a flat stage whose function returned r, settles as r does. A loop
 * written as a flat stage that returns the next flat stage would make a
 * chain of such followers, one per turn, each waiting on the next: memory
 * growing with the loop's length. So when q's own consumer p is a stage
 * that only follows q, p follows r instead and q goes: however long the
 * loop, two promises stand for it. (Only when q holds no context that p
 * does not: dropping q early must not free an arena r's work may use.)
 */
static void follow(keel_promise *q, keel_promise *r)
{
	keel_promise *p = q->notify == derived_notify ? q->notify_arg : NULL;
	if (p && p->mode == KEEL__M_FORWARD && p->upstream == q && (!q->ctx || q->ctx == p->ctx)) {
		p->upstream = r;
		keel__promise_listen(r, derived_notify, p);
		q->upstream = NULL;
		q->notify = NULL;
		q->cancel = NULL;
		keel__promise_unref(q); /* its producer, which will never settle it */
		keel__promise_unref(q); /* and its consumer, p, which no longer waits on it */
		return;
	}
	q->mode = KEEL__M_FORWARD;
	q->upstream = r;
	keel__promise_listen(r, derived_notify, q);
}

static void derived_notify(keel_promise *in, void *arg)
{
	keel_promise *q = arg;
	keel_outcome o = in->out;

	q->upstream = NULL;
	switch (q->mode) {
	case KEEL__M_THEN: keel_promise_settle(q, ((keel_then_fn)q->fn)(q->ctx, o, q->ud)); break;
	case KEEL__M_MAP: keel_promise_settle(q, o.err ? o : ((keel_then_fn)q->fn)(q->ctx, o, q->ud)); break;
	case KEEL__M_CATCH:
		keel_promise_settle(q, o.err ? ((keel_then_fn)q->fn)(q->ctx, o, q->ud) : o);
		break;
	case KEEL__M_FINALLY:
		if (q->fn)
			((keel_done_fn)q->fn)(q->ctx, o, q->ud);
		keel_promise_settle(q, o);
		break;
	case KEEL__M_FLAT:
	case KEEL__M_FLAT_ANY:
		if (o.err && q->mode == KEEL__M_FLAT) {
			keel_promise_settle(q, o);
		} else {
			keel_promise *r = ((keel_flat_fn)q->fn)(q->ctx, o, q->ud);
			if (!r)
				keel_promise_settle(q, keel_fail(-ENOMEM));
			else
				follow(q, r);
		}
		break;
	case KEEL__M_FORWARD: keel_promise_settle(q, o); break;
	default: KEEL__ASSERT(0);
	}
	keel__promise_unref(in);
}

static keel_promise *derive(keel_promise *p, int mode, void *fn, void *ud)
{
	KEEL__ASSERT(p != NULL);
	keel_promise *q = keel__promise_make(p->loop, p->ctx);
	q->mode = (uint8_t)mode;
	q->fn = fn;
	q->ud = ud;
	q->upstream = p;
	keel__promise_set_cancel(q, cancel_upstream, NULL);
	keel__promise_listen(p, derived_notify, q);
	return q;
}

keel_promise *keel_then(keel_promise *p, keel_then_fn fn, void *ud)
{
	return derive(p, KEEL__M_THEN, (void *)fn, ud);
}

keel_promise *keel_map(keel_promise *p, keel_then_fn fn, void *ud)
{
	return derive(p, KEEL__M_MAP, (void *)fn, ud);
}

keel_promise *keel_flat_map(keel_promise *p, keel_flat_fn fn, void *ud)
{
	return derive(p, KEEL__M_FLAT, (void *)fn, ud);
}

keel_promise *keel_then_flat(keel_promise *p, keel_flat_fn fn, void *ud)
{
	return derive(p, KEEL__M_FLAT_ANY, (void *)fn, ud);
}

keel_promise *keel_catch(keel_promise *p, keel_then_fn fn, void *ud)
{
	return derive(p, KEEL__M_CATCH, (void *)fn, ud);
}

keel_promise *keel_finally(keel_promise *p, keel_done_fn fn, void *ud)
{
	return derive(p, KEEL__M_FINALLY, (void *)fn, ud);
}

static void done_notify(keel_promise *p, void *arg)
{
	(void)arg;
	if (p->done_fn)
		p->done_fn(p->ctx, p->out, p->done_ud);
	keel__promise_unref(p);
}

void keel_promise_done(keel_promise *p, keel_done_fn fn, void *ud)
{
	/* The hot path of every request ends here: no extra promise, no extra hop. */
	p->done_fn = fn;
	p->done_ud = ud;
	keel__promise_listen(p, done_notify, NULL);
}

keel_promise *keel_promise_bind_ctx(keel_promise *p, keel_ctx *ctx)
{
	if (p->ctx == ctx)
		return p;
	if (ctx)
		keel_ctx_retain(ctx);
	if (p->ctx)
		keel_ctx_release(p->ctx);
	p->ctx = ctx;
	return p;
}

keel_ctx *keel_promise_ctx(const keel_promise *p)
{
	return p->ctx;
}
