/*
 * Synchronization stages: All, Any, Race and Timeout.
 *
 * A join node holds the consumer side of every input and the producer side of
 * the output. The output settles as soon as the outcome is decided; the
 * inputs that are still running are then cancelled, down to their kernel
 * operations, and the node lives on until the last of them has settled, so
 * nothing the kernel still holds is ever freed early.
 */
#include <errno.h>

#include "internal.h"

enum join_kind { JOIN_ALL, JOIN_ANY, JOIN_RACE };

struct join;
struct join_slot {
	struct join *j;
	uint32_t idx;
	keel_promise *in; /* NULL once it has settled */
};

struct join {
	keel_loop *loop;
	keel_promise *out;
	keel_outcome *results;
	int *winner;
	uint32_t n, pending;
	uint8_t kind, decided;
	int last_err;
	struct join_slot slot[];
};

static size_t join_size(size_t n)
{
	return sizeof(struct join) + n * sizeof(struct join_slot);
}

static void join_cancel_inputs(struct join *j)
{
	for (uint32_t i = 0; i < j->n; i++)
		if (j->slot[i].in)
			keel_promise_cancel(j->slot[i].in);
}

static void join_out_cancel(keel_promise *p, void *arg)
{
	(void)p;
	join_cancel_inputs(arg);
}

static void join_decide(struct join *j, keel_outcome out, uint32_t idx)
{
	j->decided = 1;
	if (j->winner)
		*j->winner = (int)idx;
	keel_promise_settle(j->out, out);
	join_cancel_inputs(j);
}

static void join_notify(keel_promise *in, void *arg)
{
	struct join_slot *s = arg;
	struct join *j = s->j;
	keel_outcome o = in->out;

	s->in = NULL;
	j->pending--;
	if (!j->decided) {
		switch (j->kind) {
		case JOIN_ALL:
			if (o.err) {
				join_decide(j, o, s->idx);
			} else {
				if (j->results)
					j->results[s->idx] = o;
				if (j->pending == 0)
					join_decide(j, keel_ok(j->n, j->results), s->idx);
			}
			break;
		case JOIN_ANY:
			if (!o.err)
				join_decide(j, o, s->idx);
			else if ((j->last_err = o.err), j->pending == 0)
				join_decide(j, keel_fail(j->last_err), s->idx);
			break;
		case JOIN_RACE: join_decide(j, o, s->idx); break;
		}
	}
	keel__promise_unref(in);
	if (j->pending == 0)
		keel__mem_free(j->loop, j, join_size(j->n));
}

static keel_promise *join_new(keel_loop *loop, int kind, keel_promise *const *ps, size_t n,
                              keel_outcome *results, int *winner)
{
	keel_ctx *ctx = NULL;
	for (size_t i = 0; i < n && !ctx; i++)
		ctx = ps[i]->ctx;

	keel_promise *out = keel__promise_make(loop, ctx);
	if (n == 0) {
		if (kind == JOIN_ALL)
			keel_promise_resolve(out, 0, results);
		else
			keel_promise_reject(out, -EINVAL);
		return out;
	}
	struct join *j = keel__mem_alloc(loop, join_size(n));
	j->loop = loop;
	j->out = out;
	j->results = results;
	j->winner = winner;
	j->n = j->pending = (uint32_t)n;
	j->kind = (uint8_t)kind;
	j->decided = 0;
	j->last_err = -EINVAL;
	keel__promise_set_cancel(out, join_out_cancel, j);
	for (size_t i = 0; i < n; i++) {
		j->slot[i].j = j;
		j->slot[i].idx = (uint32_t)i;
		j->slot[i].in = ps[i];
	}
	for (size_t i = 0; i < n; i++)
		keel__promise_listen(ps[i], join_notify, &j->slot[i]);
	return out;
}

keel_promise *keel_all(keel_loop *loop, keel_promise *const *ps, size_t n, keel_outcome *results)
{
	return join_new(loop, JOIN_ALL, ps, n, results, NULL);
}

keel_promise *keel_any(keel_loop *loop, keel_promise *const *ps, size_t n, int *winner)
{
	return join_new(loop, JOIN_ANY, ps, n, NULL, winner);
}

keel_promise *keel_race(keel_loop *loop, keel_promise *const *ps, size_t n, int *winner)
{
	return join_new(loop, JOIN_RACE, ps, n, NULL, winner);
}

/* ---- Timeout -------------------------------------------------------------- */

struct tmo {
	keel__timer timer;
	keel_promise *in, *out;
};

static void tmo_fire(keel_loop *loop, keel__timer *t)
{
	(void)loop;
	struct tmo *x = (struct tmo *)t;
	keel_promise_reject(x->out, -ETIMEDOUT);
	x->out = NULL;              /* settled: the producer lets go of it */
	keel_promise_cancel(x->in); /* the node goes when the input settles */
}

static void tmo_notify(keel_promise *in, void *arg)
{
	struct tmo *x = arg;
	keel_loop *loop = in->loop;
	keel__timer_stop(loop, &x->timer);
	if (x->out)
		keel_promise_settle(x->out, in->out);
	keel__promise_unref(in);
	keel__mem_free(loop, x, sizeof(*x));
}

static void tmo_out_cancel(keel_promise *p, void *arg)
{
	(void)p;
	struct tmo *x = arg;
	keel_promise_cancel(x->in);
}

keel_promise *keel_timeout(keel_promise *p, uint64_t timeout_ms)
{
	keel_loop *loop = p->loop;
	struct tmo *x = keel__mem_alloc(loop, sizeof(*x));
	keel__timer_init(&x->timer, tmo_fire);
	x->in = p;
	x->out = keel__promise_make(loop, p->ctx);
	keel_promise *out = x->out;
	keel__promise_set_cancel(out, tmo_out_cancel, x);
	keel__timer_start(loop, &x->timer, timeout_ms);
	keel__promise_listen(p, tmo_notify, x);
	return out;
}
