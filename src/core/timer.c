/*
 * Timers (include/keel/timer.h): a binary min-heap of deadlines in user space.
 *
 * The kernel only ever sees one timeout per loop, the nearest deadline, passed
 * as the wait time of the tick's single submit-and-wait. Connection timers,
 * sleeps and keel_timeout cost a heap insert, not a submission. Each timer
 * keeps its own index in the heap, so disarming or moving one is a sift from
 * where it stands, not a search.
 */
#include <errno.h>
#include <stdlib.h>

#include "internal.h"

void keel_timer_init(keel_timer *t, keel_timer_fn fn)
{
	t->deadline_ns = 0;
	t->heap_idx = UINT32_MAX;
	t->fn = fn;
}

static void heap_set(keel_loop *loop, uint32_t i, keel_timer *t)
{
	loop->heap[i] = t;
	t->heap_idx = i;
}

static void sift_up(keel_loop *loop, uint32_t i)
{
	keel_timer *t = loop->heap[i];
	while (i > 0) {
		uint32_t parent = (i - 1) / 2;
		if (loop->heap[parent]->deadline_ns <= t->deadline_ns)
			break;
		heap_set(loop, i, loop->heap[parent]);
		i = parent;
	}
	heap_set(loop, i, t);
}

static void sift_down(keel_loop *loop, uint32_t i)
{
	keel_timer *t = loop->heap[i];
	for (;;) {
		uint32_t l = 2 * i + 1, r = l + 1, m = i;
		uint64_t md = t->deadline_ns;
		if (l < loop->heap_len && loop->heap[l]->deadline_ns < md) {
			m = l;
			md = loop->heap[l]->deadline_ns;
		}
		if (r < loop->heap_len && loop->heap[r]->deadline_ns < md)
			m = r;
		if (m == i)
			break;
		heap_set(loop, i, loop->heap[m]);
		i = m;
	}
	heap_set(loop, i, t);
}

/* Restore the heap order around i after its deadline changed either way. */
static void sift(keel_loop *loop, uint32_t i)
{
	sift_up(loop, i);
	sift_down(loop, loop->heap[i]->heap_idx);
}

void keel_timer_arm(keel_loop *loop, keel_timer *t, uint64_t delay_ms)
{
	KEEL__ASSERT(t->fn != NULL);
	/* (A delay past the clock's range -- UINT64_MAX for "never", say -- is the end of it.) */
	uint64_t deadline = delay_ms > (UINT64_MAX - loop->now_ns) / 1000000ull
	                        ? UINT64_MAX
	                        : loop->now_ns + delay_ms * 1000000ull;
	/*
	 * keel__timer_expire runs what is due at now_ns: a callback that
	 * re-armed itself for now_ns would run again in the same pass, and one
	 * that always does so would never let the tick end.
	 */
	if (loop->timers_firing && deadline == loop->now_ns)
		deadline++;
	t->deadline_ns = deadline;
	if (keel_timer_is_armed(t)) {
		sift(loop, t->heap_idx);
		return;
	}
	if (loop->heap_len == loop->heap_cap) {
		uint32_t cap = loop->heap_cap ? loop->heap_cap * 2 : 64;
		keel_timer **h = realloc(loop->heap, cap * sizeof(*h));
		if (!h)
			keel__oom();
		loop->heap = h;
		loop->heap_cap = cap;
	}
	uint32_t i = loop->heap_len++;
	heap_set(loop, i, t);
	sift_up(loop, i);
	loop->stats.timers_live = loop->heap_len;
}

void keel_timer_disarm(keel_loop *loop, keel_timer *t)
{
	if (!keel_timer_is_armed(t))
		return;
	uint32_t i = t->heap_idx;
	KEEL__ASSERT(i < loop->heap_len && loop->heap[i] == t); /* armed on this loop */
	t->heap_idx = UINT32_MAX;
	loop->heap_len--;
	loop->stats.timers_live = loop->heap_len;
	if (i == loop->heap_len)
		return;
	heap_set(loop, i, loop->heap[loop->heap_len]);
	sift(loop, i);
}

int64_t keel__timer_next(keel_loop *loop)
{
	if (loop->heap_len == 0)
		return -1;
	uint64_t d = loop->heap[0]->deadline_ns;
	return d <= loop->now_ns ? 0 : (int64_t)(d - loop->now_ns);
}

void keel__timer_expire(keel_loop *loop)
{
	/* Timers armed by a callback run no earlier than the next tick: their deadline is > now. */
	bool was_firing = loop->timers_firing; /* (a callback may run a nested tick) */
	loop->timers_firing = true;
	while (loop->heap_len && loop->heap[0]->deadline_ns <= loop->now_ns) {
		keel_timer *t = loop->heap[0];
		keel_timer_disarm(loop, t);
		t->fn(loop, t);
	}
	loop->timers_firing = was_firing;
}

void keel__timer_forget_all(keel_loop *loop)
{
	for (uint32_t i = 0; i < loop->heap_len; i++)
		loop->heap[i]->heap_idx = UINT32_MAX;
	loop->heap_len = 0;
	loop->stats.timers_live = 0;
}

/* ---- keel_sleep ----------------------------------------------------------- */

struct sleep_node {
	keel_timer timer;
	keel_promise *out;
};

static void sleep_fire(keel_loop *loop, keel_timer *t)
{
	struct sleep_node *s = keel_container_of(t, struct sleep_node, timer);
	keel_promise_resolve(s->out, 0, NULL);
	keel__mem_free(loop, s, sizeof(*s));
}

static void sleep_cancel(keel_promise *p, void *arg)
{
	struct sleep_node *s = arg;
	keel_timer_disarm(p->loop, &s->timer);
	keel_promise_reject(s->out, -ECANCELED);
	keel__mem_free(p->loop, s, sizeof(*s));
}

keel_promise *keel_sleep(keel_loop *loop, uint64_t ms)
{
	struct sleep_node *s = keel__mem_alloc(loop, sizeof(*s));
	keel_timer_init(&s->timer, sleep_fire);
	s->out = keel__promise_make(loop, NULL);
	keel__promise_set_cancel(s->out, sleep_cancel, s);
	keel_timer_arm(loop, &s->timer, ms);
	return s->out;
}
