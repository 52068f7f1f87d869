/*
 * Promise semantics: settle-once, deferred continuations and their order,
 * then/map/flat_map/catch/finally, All/Any/Race/Timeout with cancellation,
 * and the request context's arena being freed when the chain ends.
 */
#include "test.h"

static int order[64];
static int norder;

static keel_outcome record(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	order[norder++] = (int)(intptr_t)ud;
	return in;
}

static void test_settle_once_and_deferred(keel_loop *loop)
{
	keel_promise *p = keel_promise_new(loop);
	ASSERT(keel_promise_resolve(p, 7, NULL));
	ASSERT(!keel_promise_resolve(p, 8, NULL));
	ASSERT(!keel_promise_reject(p, -EIO));
	norder = 0;
	keel_promise *q = keel_then(p, record, (void *)1);
	/* Already settled input: the continuation still must not run synchronously. */
	ASSERT_EQ(norder, 0);
	keel_outcome o = test_await(loop, q);
	ASSERT_EQ(norder, 1);
	ASSERT_EQ(o.err, 0);
	ASSERT_EQ(o.n, 7);
}

static void test_order(keel_loop *loop)
{
	/* Continuations run in the order their inputs settled. */
	keel_promise *a = keel_promise_new(loop), *b = keel_promise_new(loop), *c = keel_promise_new(loop);
	keel_promise *qa = keel_then(a, record, (void *)1);
	keel_promise *qb = keel_then(b, record, (void *)2);
	keel_promise *qc = keel_then(c, record, (void *)3);
	norder = 0;
	keel_promise_resolve(c, 0, NULL);
	keel_promise_resolve(a, 0, NULL);
	keel_promise_resolve(b, 0, NULL);
	ASSERT_EQ(norder, 0);
	keel_promise *all[3] = {qa, qb, qc};
	test_await(loop, keel_all(loop, all, 3, NULL));
	ASSERT_EQ(norder, 3);
	ASSERT_EQ(order[0], 3);
	ASSERT_EQ(order[1], 1);
	ASSERT_EQ(order[2], 2);
}

static keel_outcome add_one(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	(void)ud;
	return keel_ok(in.n + 1, NULL);
}

static keel_outcome must_not_run(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	(void)ud;
	FAIL("continuation ran on the wrong outcome (err %d)", in.err);
}

static keel_outcome recover(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	(void)ud;
	return keel_ok(-in.err, NULL); /* turn the error code into a value */
}

static keel_promise *sleep_then_value(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	keel_loop *loop = ud;
	(void)in;
	return keel_map(keel_sleep(loop, 1), add_one, NULL);
}

static int finally_seen;
static void on_finally(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	(void)ud;
	finally_seen = in.err ? in.err : (int)in.n;
}

static void test_chaining(keel_loop *loop)
{
	keel_promise *p = keel_promise_new(loop);
	keel_promise *q = keel_map(keel_map(p, add_one, NULL), add_one, NULL);
	keel_promise_resolve(p, 40, NULL);
	keel_outcome o = test_await(loop, q);
	ASSERT_EQ(o.err, 0);
	ASSERT_EQ(o.n, 42);

	/* Errors skip map and reach catch; catch's value continues the chain. */
	p = keel_promise_new(loop);
	q = keel_catch(keel_map(p, must_not_run, NULL), recover, NULL);
	q = keel_finally(q, on_finally, NULL);
	keel_promise_reject(p, -EPIPE);
	o = test_await(loop, q);
	ASSERT_EQ(o.err, 0);
	ASSERT_EQ(o.n, EPIPE);
	ASSERT_EQ(finally_seen, EPIPE);

	/* Success skips catch. */
	p = keel_promise_new(loop);
	q = keel_catch(p, must_not_run, NULL);
	keel_promise_resolve(p, 5, NULL);
	o = test_await(loop, q);
	ASSERT_EQ(o.n, 5);

	/* flat_map: the inner promise's outcome becomes the result. */
	p = keel_promise_new(loop);
	q = keel_flat_map(p, sleep_then_value, loop);
	keel_promise_resolve(p, 1, NULL);
	o = test_await(loop, q);
	ASSERT_EQ(o.err, 0);
	ASSERT_EQ(o.n, 1); /* sleep resolves 0, add_one -> 1 */
}

static void test_all(keel_loop *loop)
{
	keel_outcome res[3];
	keel_promise *in[3] = {keel_promise_new(loop), keel_promise_new(loop), keel_promise_new(loop)};
	keel_promise *prod[3] = {in[0], in[1], in[2]};
	keel_promise *all = keel_all(loop, in, 3, res);
	keel_promise_resolve(prod[2], 30, NULL);
	keel_promise_resolve(prod[0], 10, NULL);
	keel_loop_run_once(loop, 0);
	ASSERT(!keel_promise_is_settled(all));
	keel_promise_resolve(prod[1], 20, NULL);
	keel_outcome o = test_await(loop, all);
	ASSERT_EQ(o.err, 0);
	ASSERT_EQ(o.n, 3);
	ASSERT_EQ(res[0].n, 10);
	ASSERT_EQ(res[1].n, 20);
	ASSERT_EQ(res[2].n, 30);

	/* First failure settles All and cancels the rest, down to timers. */
	keel_promise *s1 = keel_sleep(loop, 60000), *s2 = keel_sleep(loop, 60000);
	keel_promise *bad = keel_promise_new(loop);
	keel_promise *in2[3] = {s1, bad, s2};
	all = keel_all(loop, in2, 3, res);
	keel_promise_reject(bad, -ECONNREFUSED);
	o = test_await(loop, all);
	ASSERT_EQ(o.err, -ECONNREFUSED);
	keel_loop_stats st;
	for (int i = 0; i < 10; i++)
		keel_loop_run_once(loop, 0);
	keel_loop_get_stats(loop, &st);
	ASSERT_EQ(st.timers_live, 0); /* both sleeps were cancelled */

	/* Empty All resolves at once (on the next tick). */
	o = test_await(loop, keel_all(loop, NULL, 0, NULL));
	ASSERT_EQ(o.err, 0);
	ASSERT_EQ(o.n, 0);
}

static void test_any_race(keel_loop *loop)
{
	int winner = -1;
	keel_promise *slow = keel_map(keel_sleep(loop, 60000), add_one, NULL);
	keel_promise *fast = keel_map(keel_sleep(loop, 5), add_one, NULL);
	keel_promise *failing = keel_promise_new(loop);
	keel_promise *in[3] = {slow, failing, fast};
	keel_promise *any = keel_any(loop, in, 3, &winner);
	keel_promise_reject(failing, -EIO); /* a failure does not decide Any */
	keel_outcome o = test_await(loop, any);
	ASSERT_EQ(o.err, 0);
	ASSERT_EQ(o.n, 1);
	ASSERT_EQ(winner, 2);
	for (int i = 0; i < 10; i++)
		keel_loop_run_once(loop, 0);
	keel_loop_stats st;
	keel_loop_get_stats(loop, &st);
	ASSERT_EQ(st.timers_live, 0); /* the loser was cancelled */

	/* All fail: reject with the last error. */
	keel_promise *a = keel_promise_new(loop), *b = keel_promise_new(loop);
	keel_promise *pa = a, *pb = b;
	keel_promise *in2[2] = {a, b};
	any = keel_any(loop, in2, 2, &winner);
	keel_promise_reject(pa, -EIO);
	keel_loop_run_once(loop, 0);
	keel_promise_reject(pb, -EHOSTUNREACH);
	o = test_await(loop, any);
	ASSERT_EQ(o.err, -EHOSTUNREACH);

	/* Race: the first to settle wins, even a failure. */
	keel_promise *r1 = keel_sleep(loop, 60000);
	keel_promise *r2 = keel_promise_new(loop);
	keel_promise *pr2 = r2;
	keel_promise *in3[2] = {r1, r2};
	keel_promise *race = keel_race(loop, in3, 2, &winner);
	keel_promise_reject(pr2, -ENOENT);
	o = test_await(loop, race);
	ASSERT_EQ(o.err, -ENOENT);
	ASSERT_EQ(winner, 1);

	o = test_await(loop, keel_any(loop, NULL, 0, NULL));
	ASSERT_EQ(o.err, -EINVAL);
}

static void test_timeout(keel_loop *loop)
{
	uint64_t t0 = keel_loop_now_ms(loop);
	keel_outcome o = test_await(loop, keel_timeout(keel_sleep(loop, 60000), 20));
	ASSERT_EQ(o.err, -ETIMEDOUT);
	ASSERT_GE(keel_loop_now_ms(loop) - t0, 20);
	for (int i = 0; i < 10; i++)
		keel_loop_run_once(loop, 0);
	keel_loop_stats st;
	keel_loop_get_stats(loop, &st);
	ASSERT_EQ(st.timers_live, 0);

	o = test_await(loop, keel_timeout(keel_sleep(loop, 1), 60000));
	ASSERT_EQ(o.err, 0);
	keel_loop_get_stats(loop, &st);
	ASSERT_EQ(st.timers_live, 0);

	/* Explicit cancel of a pending promise. */
	keel_promise *s = keel_sleep(loop, 60000);
	keel_promise_cancel(s);
	o = test_await(loop, s);
	ASSERT_EQ(o.err, -ECANCELED);
}

static void test_timer_order(keel_loop *loop)
{
	static const int delays[] = {30, 10, 20, 5, 25, 15};
	keel_promise *ps[6];
	norder = 0;
	for (int i = 0; i < 6; i++)
		ps[i] = keel_then(keel_sleep(loop, (uint64_t)delays[i]), record, (void *)(intptr_t)delays[i]);
	test_await(loop, keel_all(loop, ps, 6, NULL));
	ASSERT_EQ(norder, 6);
	for (int i = 1; i < 6; i++)
		ASSERT(order[i - 1] < order[i]);
}

static int ctx_freed;
static void on_ctx_free(void *ud)
{
	(void)ud;
	ctx_freed++;
}

static keel_outcome use_arena(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ud;
	ASSERT(ctx != NULL);
	char *s = keel_ctx_alloc(ctx, 10000); /* bigger than a chunk */
	memset(s, 'x', 10000);
	for (int i = 0; i < 100; i++)
		ASSERT(keel_ctx_strdup(ctx, "hello") != NULL);
	return keel_ok(in.n + 1, NULL);
}

static void test_ctx(keel_loop *loop)
{
	keel_loop_stats st;
	keel_loop_get_stats(loop, &st);
	uint32_t before = st.ctx_live;
	ctx_freed = 0;
	keel_ctx *ctx = keel_ctx_new(loop);
	ASSERT(keel_ctx_alloc(ctx, SIZE_MAX) == NULL); /* (rounded up, it used to wrap to 16 bytes) */
	ASSERT(keel_ctx_alloc(ctx, SIZE_MAX - 8) == NULL);
	ASSERT(keel_ctx_alloc(ctx, SIZE_MAX - 16) == NULL); /* (plus a chunk's header, it wrapped too) */
	keel_ctx_on_free(ctx, on_ctx_free, NULL);
	keel_promise *p = keel_promise_bind_ctx(keel_sleep(loop, 1), ctx);
	keel_ctx_release(ctx); /* the chain holds it now */
	keel_promise *q = keel_map(keel_map(p, use_arena, NULL), use_arena, NULL);
	ASSERT_EQ(ctx_freed, 0);
	keel_outcome o = test_await(loop, q);
	ASSERT_EQ(o.n, 2);
	ASSERT_EQ(ctx_freed, 1); /* freed in one step when the chain ended */
	keel_loop_get_stats(loop, &st);
	ASSERT_EQ(st.ctx_live, before);
}

/* Several hooks on one context, as when a handler wraps another that sets its own: all run, last first. */
static char hook_order[8];
static int nhooks;

static void on_hook(void *ud)
{
	hook_order[nhooks++] = *(const char *)ud;
}

static void test_ctx_hooks(keel_loop *loop)
{
	nhooks = 0;
	keel_ctx *ctx = keel_ctx_new(loop);
	ASSERT_EQ(keel_ctx_on_free(ctx, on_hook, "a"), 0);
	ASSERT_EQ(keel_ctx_on_free(ctx, on_hook, "b"), 0);
	ASSERT_EQ(keel_ctx_on_free(ctx, on_hook, "c"), 0);
	keel_ctx_release(ctx);
	ASSERT_EQ(nhooks, 3);
	ASSERT(memcmp(hook_order, "cba", 3) == 0);
}

static void test_cancel_without_hook(keel_loop *loop)
{
	/*
	 * The consumer sees -ECANCELED at once; the producer, which knows
	 * nothing of it, settles later: that must be ignored, and must not
	 * touch a promise that reused the memory.
	 */
	keel_promise *p = keel_promise_new(loop);
	keel_promise *producer = p;
	keel_promise_cancel(p);
	keel_outcome o = test_await(loop, p); /* the consumer's handle is gone now */
	ASSERT_EQ(o.err, -ECANCELED);
	keel_promise *q = keel_promise_new(loop);
	ASSERT(q != producer); /* still the producer's: not reused yet */
	ASSERT(!keel_promise_resolve(producer, 42, NULL));
	ASSERT(!keel_promise_is_settled(q));
	keel_promise_resolve(q, 7, NULL);
	o = test_await(loop, q);
	ASSERT_EQ(o.n, 7);
}

/*
 * A loop written as a flat stage that returns the next flat stage (read,
 * then write, then read again, ...): however many turns, the chain stays a
 * few promises long, its result reaches the outermost consumer, and
 * cancelling that consumer still reaches the turn under way.
 */
struct turns {
	keel_loop *loop;
	int n, max;
	uint64_t wait_ms; /* the last turn's wait */
	uint32_t live_max;
};

static keel_promise *turn(keel_ctx *ctx, keel_outcome in, void *ud)
{
	struct turns *t = ud;
	keel_loop_stats st;
	keel_loop_get_stats(t->loop, &st);
	if (st.promises_live > t->live_max)
		t->live_max = st.promises_live;
	if (++t->n == t->max) {
		keel_promise *p = keel_promise_new(t->loop);
		keel_promise_resolve(p, t->n, NULL);
		return p;
	}
	(void)in;
	uint64_t ms = t->n == t->max - 1 ? t->wait_ms : 0;
	return keel_flat_map(keel_promise_bind_ctx(keel_sleep(t->loop, ms), ctx), turn, t);
}

/* A turn whose state lives in a context of its own, which only its stage holds. */
struct own_turn {
	struct turns *t;
	int n;
};

static keel_promise *own_turn_step(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	(void)in;
	struct own_turn *prev = ud;
	struct turns *t = prev->t;
	ASSERT_EQ(prev->n, t->n); /* (ASan: the previous turn's arena is still there) */
	if (++t->n == t->max) {
		keel_promise *p = keel_promise_new(t->loop);
		keel_promise_resolve(p, t->n, NULL);
		return p;
	}
	keel_ctx *own = keel_ctx_new(t->loop);
	struct own_turn *next = keel_ctx_alloc(own, sizeof(*next));
	next->t = t;
	next->n = t->n;
	keel_promise *p =
	    keel_flat_map(keel_promise_bind_ctx(keel_sleep(t->loop, 0), own), own_turn_step, next);
	keel_ctx_release(own);
	return p;
}

static void test_flat_loop(keel_loop *loop)
{
	keel_loop_stats st;
	keel_loop_get_stats(loop, &st);
	uint32_t before = st.promises_live;
	keel_ctx *ctx = keel_ctx_new(loop);
	struct turns t = {loop, 0, 50000, 0, 0};
	keel_promise *p = keel_flat_map(keel_promise_bind_ctx(keel_sleep(loop, 0), ctx), turn, &t);
	keel_ctx_release(ctx);
	keel_outcome o = test_await(loop, p);
	ASSERT_EQ(o.err, 0);
	ASSERT_EQ(o.n, 50000);
	ASSERT(t.live_max <= before + 6); /* it was one more per turn: 50,000 */

	/* Cancelled on its 1000th turn, waiting a minute: the wait is what is cancelled. */
	struct turns c = {loop, 0, 1000, 60000, 0};
	p = keel_flat_map(keel_sleep(loop, 0), turn, &c);
	for (int i = 0; i < 5000 && c.n < 999; i++)
		keel_loop_run_once(loop, 0);
	ASSERT_EQ(c.n, 999);
	keel_promise_cancel(p);
	o = test_await(loop, p);
	ASSERT_EQ(o.err, -ECANCELED);
	ASSERT_EQ(c.n, 999);
	keel_loop_get_stats(loop, &st);
	ASSERT_EQ(st.timers_live, 0);

	/* Each turn's state in its own context: kept until the next turn has used it. */
	struct turns u = {loop, 0, 200, 0, 0};
	struct own_turn first = {&u, 0};
	o = test_await(loop, keel_flat_map(keel_sleep(loop, 0), own_turn_step, &first));
	ASSERT_EQ(o.n, 200);
	for (int i = 0; i < 5; i++)
		keel_loop_run_once(loop, 0);
	keel_loop_get_stats(loop, &st);
	ASSERT_EQ(st.ctx_live, 0);
	printf("a flat_map loop of 50,000 turns holds %u promises, and is cancelled where it is: ok\n",
	       t.live_max - before);
}

static void test_no_leak(keel_loop *loop)
{
	keel_loop_stats st;
	for (int i = 0; i < 20; i++)
		keel_loop_run_once(loop, 0);
	keel_loop_get_stats(loop, &st);
	ASSERT_EQ(st.promises_live, 0); /* (the loop's own wake-up read holds none) */
}

int main(void)
{
	keel_loop *loop = test_loop();
	test_settle_once_and_deferred(loop);
	test_order(loop);
	test_chaining(loop);
	test_all(loop);
	test_any_race(loop);
	test_timeout(loop);
	test_timer_order(loop);
	test_ctx(loop);
	test_ctx_hooks(loop);
	test_cancel_without_hook(loop);
	test_flat_loop(loop);
	test_no_leak(loop);
	keel_loop_free(loop);
	printf("promise: ok (%s)\n", "all cases");
	return 0;
}
