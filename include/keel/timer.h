/*
 * keel_timer: a timer the caller embeds in its own object.
 *
 * Timers live in the loop's user-space min-heap of deadlines; the kernel only
 * ever sees the nearest one, as the wait time of the tick. Arming and
 * disarming cost O(log n) and never allocate (the heap's array grows by
 * doubling, once, as the number of armed timers reaches a new high), so a
 * timer per connection, re-armed at every request, is cheap. keel_sleep() is
 * the promise-shaped version of the same heap.
 *
 * SYNOPSIS
 *	struct conn { int fd; keel_timer idle; };
 *
 *	static void conn_idle(keel_loop *loop, keel_timer *t)
 *	{
 *		struct conn *c = keel_container_of(t, struct conn, idle);
 *		...
 *	}
 *
 *	keel_timer_init(&c->idle, conn_idle);
 *	keel_timer_arm(loop, &c->idle, 30000);   (again at every request: moves it)
 *	keel_timer_disarm(loop, &c->idle);       (before c is freed)
 *
 * OWNERSHIP
 * The caller owns the timer's memory. The loop borrows it while the timer is
 * armed: an armed timer must not be freed, moved or re-initialised; disarm it
 * first. A timer belongs to the loop that armed it, and every call on it
 * comes from that loop's thread.
 *
 * NOTES
 * Deadlines are on the loop's clock (keel_loop_now_ns(): CLOCK_MONOTONIC, read
 * once per tick), so a delay counts from the start of the current tick's
 * work, not from the call. Timers due in the same tick fire in deadline
 * order; the order of timers with equal deadlines is unspecified. A timer is
 * disarmed before its callback runs, so the callback may re-arm it, disarm
 * or re-arm any other timer, or free the object that holds it. A timer armed
 * from a timer's callback fires no earlier than the next tick, even with a
 * delay of 0. keel_loop_free() disarms the timers still armed without
 * running them: their memory must still be valid then.
 */
#ifndef KEEL_TIMER_H
#define KEEL_TIMER_H

#include <stdbool.h>
#include <stdint.h>

#include "loop.h"
#include "util.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keel_timer keel_timer;

/* Runs on the loop's thread when t's deadline has passed; t is disarmed by then. */
typedef void (*keel_timer_fn)(keel_loop *loop, keel_timer *t);

/* Embed it; the fields are the loop's (read them through the calls below). */
struct keel_timer {
	uint64_t deadline_ns; /* on the loop's clock; meaningful while armed */
	uint32_t heap_idx;    /* position in the loop's heap; UINT32_MAX when not armed */
	keel_timer_fn fn;
};

/* Set t up, disarmed, to call fn when it fires. Never fails. */
void keel_timer_init(keel_timer *t, keel_timer_fn fn);

/*
 * Arm t to fire delay_ms after the loop's current time. An armed timer is
 * moved to the new deadline (re-arming is one heap update, not a disarm and
 * an arm). t must have been initialised with a non-NULL fn. Never fails (out
 * of memory for the heap's array aborts, as every keel allocation does).
 */
void keel_timer_arm(keel_loop *loop, keel_timer *t, uint64_t delay_ms);

/* Disarm t: its callback will not run. A no-op on a timer that is not armed. */
void keel_timer_disarm(keel_loop *loop, keel_timer *t);

/* Whether t is armed (its callback is due to run). */
static inline bool keel_timer_is_armed(const keel_timer *t)
{
	return t->heap_idx != UINT32_MAX;
}

/* When an armed t fires, on the loop's clock (compare with keel_loop_now_ns()). */
static inline uint64_t keel_timer_deadline_ns(const keel_timer *t)
{
	return t->deadline_ns;
}

#ifdef __cplusplus
}
#endif

#endif
