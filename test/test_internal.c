/*
 * Internals that no public call can reach directly: the generation tag
 * that makes a late completion for a reused op slot unrecognisable, the
 * timer heap under random insertions and removals, and the arena's
 * alignment. Uses the private headers on purpose.
 */
#include "core/internal.h"
#include "test.h"

static void test_generations(keel_loop *loop)
{
	keel__op *a = keel__op_new(loop, KEEL__OP_RECV, -1);
	ASSERT(a != NULL);
	uint64_t ud_a = keel__op_user_data(a);
	ASSERT(keel__op_lookup(loop, ud_a) == a);
	uint32_t slot = a->slot;
	keel__op_free(loop, a);
	ASSERT(keel__op_lookup(loop, ud_a) == NULL); /* freed: a late CQE finds nothing */

	keel__op *b = keel__op_new(loop, KEEL__OP_RECV, -1);
	ASSERT_EQ(b->slot, slot);                    /* the slot is reused... */
	ASSERT(keel__op_lookup(loop, ud_a) == NULL); /* ...but the old tag does not match it */
	ASSERT(keel__op_lookup(loop, keel__op_user_data(b)) == b);
	ASSERT(keel__op_lookup(loop, UINT64_MAX) == NULL);
	keel__op_free(loop, b);
	printf("generation tags: ok\n");
}

static uint64_t fired[2000];
static int nfired;
static void on_fire(keel_loop *loop, keel__timer *t)
{
	(void)loop;
	fired[nfired++] = t->deadline_ns;
}

static void test_heap(keel_loop *loop)
{
	enum { N = 2000 };
	static keel__timer ts[N];
	unsigned seed = 12345;
	for (int i = 0; i < N; i++) {
		keel__timer_init(&ts[i], on_fire);
		seed = seed * 1103515245u + 12345u;
		keel__timer_start(loop, &ts[i], (seed >> 8) % 1000);
	}
	/* Remove every third one. */
	int removed = 0;
	for (int i = 0; i < N; i += 3, removed++)
		keel__timer_stop(loop, &ts[i]);
	ASSERT_EQ(loop->heap_len, N - removed);
	/* Expire all: they must come out in deadline order. */
	loop->now_ns += 2000ull * 1000000ull;
	nfired = 0;
	keel__timer_expire(loop);
	ASSERT_EQ(nfired, N - removed);
	for (int i = 1; i < nfired; i++)
		ASSERT(fired[i - 1] <= fired[i]);
	printf("timer heap: %d timers, %d removed, fired in order: ok\n", N, removed);
}

static void test_arena(keel_loop *loop)
{
	keel_ctx *ctx = keel_ctx_new(loop);
	for (int i = 1; i < 300; i++) {
		char *p = keel_ctx_alloc(ctx, (size_t)i * 7);
		ASSERT(((uintptr_t)p & 15) == 0);
		memset(p, 0xab, (size_t)i * 7);
	}
	keel_ctx_release(ctx);
	printf("arena alignment across chunks: ok\n");
}

int main(void)
{
	keel_loop *loop = test_loop();
	test_generations(loop);
	test_heap(loop);
	test_arena(loop);
	keel_loop_free(loop);
	return 0;
}
