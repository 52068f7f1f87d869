/*
 * The public timer (keel/timer.h) through public calls only: expiry order,
 * re-arming either way, disarming before expiry and from inside another
 * timer's callback, a callback that re-arms itself for 0 ms, one that frees
 * its own object, a loop freed with timers armed, and a random mix checked
 * against a model. Deadlines are only checked from below: a timer never
 * fires early, while how late it fires depends on the machine.
 */
#include <unistd.h>

#include "test.h"

struct rec {
	keel_timer t;
	int id;
	int fired;
	uint64_t due_ns; /* the deadline it was armed for */
};

static int order[64];
static int norder;

static void rec_fire(keel_loop *loop, keel_timer *t)
{
	struct rec *r = keel_container_of(t, struct rec, t);
	ASSERT(!keel_timer_is_armed(t)); /* disarmed before the callback runs */
	ASSERT_GE(keel_loop_now_ns(loop), r->due_ns);
	r->fired++;
	if (norder < 64)
		order[norder++] = r->id;
}

static void rec_arm(keel_loop *loop, struct rec *r, uint64_t ms)
{
	keel_timer_arm(loop, &r->t, ms);
	ASSERT(keel_timer_is_armed(&r->t));
	r->due_ns = keel_timer_deadline_ns(&r->t);
	ASSERT_EQ(r->due_ns, keel_loop_now_ns(loop) + ms * 1000000ull);
}

static void recs_init(struct rec *r, int n)
{
	for (int i = 0; i < n; i++) {
		memset(&r[i], 0, sizeof(r[i]));
		keel_timer_init(&r[i].t, rec_fire);
		r[i].id = i;
		ASSERT(!keel_timer_is_armed(&r[i].t));
	}
	norder = 0;
}

static uint32_t timers_live(keel_loop *loop)
{
	keel_loop_stats st;
	keel_loop_get_stats(loop, &st);
	return st.timers_live;
}

/* Armed out of order, they fire in deadline order; an armed timer keeps keel_loop_run going. */
static void test_order(keel_loop *loop)
{
	struct rec r[4];
	recs_init(r, 4);
	rec_arm(loop, &r[0], 30);
	rec_arm(loop, &r[1], 10);
	rec_arm(loop, &r[2], 20);
	rec_arm(loop, &r[3], 0);
	ASSERT_EQ(timers_live(loop), 4);
	ASSERT_OK(keel_loop_run(loop));
	ASSERT_EQ(norder, 4);
	ASSERT_EQ(order[0], 3);
	ASSERT_EQ(order[1], 1);
	ASSERT_EQ(order[2], 2);
	ASSERT_EQ(order[3], 0);
	for (int i = 0; i < 4; i++)
		ASSERT_EQ(r[i].fired, 1);
	ASSERT_EQ(timers_live(loop), 0);
	printf("expiry order: ok\n");
}

/* Re-arming moves a timer, earlier or later; it still fires once, at the new deadline. */
static void test_rearm(keel_loop *loop)
{
	struct rec r[3];
	recs_init(r, 3);
	rec_arm(loop, &r[0], 5000);
	rec_arm(loop, &r[0], 5); /* earlier */
	rec_arm(loop, &r[1], 5);
	rec_arm(loop, &r[1], 40); /* later */
	rec_arm(loop, &r[2], 20);
	ASSERT_EQ(timers_live(loop), 3); /* moved, not added twice */
	ASSERT_OK(keel_loop_run(loop));
	ASSERT_EQ(norder, 3);
	ASSERT_EQ(order[0], 0);
	ASSERT_EQ(order[1], 2);
	ASSERT_EQ(order[2], 1);
	for (int i = 0; i < 3; i++)
		ASSERT_EQ(r[i].fired, 1);
	printf("re-arm earlier and later: ok\n");
}

/* Disarmed before its deadline, a timer never runs, and no longer keeps the loop alive. */
static void test_disarm(keel_loop *loop)
{
	struct rec r[2];
	recs_init(r, 2);
	rec_arm(loop, &r[0], 10);
	rec_arm(loop, &r[1], 20);
	keel_timer_disarm(loop, &r[0].t);
	ASSERT(!keel_timer_is_armed(&r[0].t));
	keel_timer_disarm(loop, &r[0].t); /* again: a no-op */
	ASSERT_EQ(timers_live(loop), 1);
	ASSERT_OK(keel_loop_run(loop));
	ASSERT_EQ(r[0].fired, 0);
	ASSERT_EQ(r[1].fired, 1);

	rec_arm(loop, &r[0], 10);
	keel_timer_disarm(loop, &r[0].t);
	ASSERT_EQ(timers_live(loop), 0);
	ASSERT_OK(keel_loop_run(loop)); /* returns at once: nothing is armed */
	ASSERT_EQ(r[0].fired, 0);
	printf("disarm before expiry: ok\n");
}

/*
 * Three timers due in one tick: the first disarms the second (due, not yet
 * run) and re-arms the third for later. Neither runs in that tick; the third
 * runs once, at its new deadline.
 */
static struct rec *meddle_victims[2];

static void meddler_fire(keel_loop *loop, keel_timer *t)
{
	rec_fire(loop, t);
	keel_timer_disarm(loop, &meddle_victims[0]->t);
	rec_arm(loop, meddle_victims[1], 30);
}

static void test_disarm_from_callback(keel_loop *loop)
{
	struct rec r[3];
	recs_init(r, 3);
	keel_timer_init(&r[0].t, meddler_fire);
	meddle_victims[0] = &r[1];
	meddle_victims[1] = &r[2];
	rec_arm(loop, &r[0], 1);
	rec_arm(loop, &r[1], 2);
	rec_arm(loop, &r[2], 3);
	usleep(20000); /* all three are due when the next tick reads the clock */
	ASSERT_OK(keel_loop_run_once(loop, 0));
	ASSERT_EQ(r[0].fired, 1);
	ASSERT_EQ(r[1].fired, 0);
	ASSERT_EQ(r[2].fired, 0);
	ASSERT(keel_timer_is_armed(&r[2].t));
	ASSERT_OK(keel_loop_run(loop));
	ASSERT_EQ(r[1].fired, 0);
	ASSERT_EQ(r[2].fired, 1);
	printf("disarm and re-arm from another timer's callback: ok\n");
}

/* A callback that re-arms itself for 0 ms runs once per tick, not forever within one. */
static int spins;
static void spin_fire(keel_loop *loop, keel_timer *t)
{
	if (++spins < 5)
		keel_timer_arm(loop, t, 0);
}

static void test_rearm_zero(keel_loop *loop)
{
	keel_timer t;
	keel_timer_init(&t, spin_fire);
	keel_timer_arm(loop, &t, 0);
	spins = 0;
	for (int tick = 1; tick <= 5; tick++) {
		ASSERT_OK(keel_loop_run_once(loop, 1000));
		ASSERT(spins <= tick);
	}
	ASSERT_OK(keel_loop_run(loop));
	ASSERT_EQ(spins, 5);
	ASSERT(!keel_timer_is_armed(&t));
	printf("re-arm for 0 ms from its own callback: one run per tick: ok\n");
}

/* A delay past the clock's range (UINT64_MAX: "never") is the end of time, not a wrap to now. */
static int never_fired;

static void never_fire(keel_loop *loop, keel_timer *t)
{
	(void)loop;
	(void)t;
	never_fired++;
}

static void test_huge_delay(keel_loop *loop)
{
	keel_timer t;
	keel_timer_init(&t, never_fire);
	uint64_t delays[] = {UINT64_MAX, UINT64_MAX / 1000000 + 1, UINT64_MAX / 2};
	for (size_t i = 0; i < sizeof(delays) / sizeof(delays[0]); i++) {
		keel_timer_arm(loop, &t, delays[i]);
		ASSERT(keel_timer_deadline_ns(&t) > keel_loop_now_ns(loop));
		for (int k = 0; k < 3; k++)
			ASSERT_OK(keel_loop_run_once(loop, 1));
		ASSERT_EQ(never_fired, 0);
		ASSERT(keel_timer_is_armed(&t));
	}
	keel_timer_disarm(loop, &t);
	printf("a delay of UINT64_MAX ms (and others past the clock's range) does not fire: ok\n");
}

/*
 * keel_loop_stop is keel_loop_run's: a loop driven by keel_loop_run_once
 * still waits as asked after one (it used to wait for nothing, ever after:
 * a busy loop), and the stop still ends the next keel_loop_run.
 */
static void test_stop_and_run_once(keel_loop *loop)
{
	keel_timer t;
	keel_timer_init(&t, never_fire);
	never_fired = 0;
	keel_timer_arm(loop, &t, 50);
	keel_loop_stop(loop);
	ASSERT_OK(keel_loop_run_once(loop, -1)); /* until the timer: the one thing that can happen */
	ASSERT_EQ(never_fired, 1);
	keel_timer_arm(loop, &t, 60000);
	ASSERT_OK(keel_loop_run(loop)); /* the stop still pending: one tick, not a minute */
	ASSERT(keel_timer_is_armed(&t));
	keel_timer_disarm(loop, &t);
	printf("keel_loop_stop leaves keel_loop_run_once waiting as asked, and ends the next run: ok\n");
}

/* The callback may free the object its timer is embedded in (ASan checks the loop lets go). */
struct owned {
	int *count;
	keel_timer t;
};

static void owned_fire(keel_loop *loop, keel_timer *t)
{
	(void)loop;
	struct owned *o = keel_container_of(t, struct owned, t);
	(*o->count)++;
	free(o);
}

static void test_free_in_callback(keel_loop *loop)
{
	int count = 0;
	for (int i = 0; i < 8; i++) {
		struct owned *o = malloc(sizeof(*o));
		ASSERT(o != NULL);
		o->count = &count;
		keel_timer_init(&o->t, owned_fire);
		keel_timer_arm(loop, &o->t, (uint64_t)(i % 3));
	}
	ASSERT_OK(keel_loop_run(loop));
	ASSERT_EQ(count, 8);
	printf("callback frees its own object: ok\n");
}

/* A loop freed with timers armed runs none of them and leaves them disarmed. */
static void test_loop_free_armed(void)
{
	keel_loop *loop = test_loop();
	struct rec r[3];
	recs_init(r, 3);
	rec_arm(loop, &r[0], 0);
	rec_arm(loop, &r[1], 10);
	rec_arm(loop, &r[2], 100000);
	keel_loop_free(loop);
	for (int i = 0; i < 3; i++) {
		ASSERT_EQ(r[i].fired, 0);
		ASSERT(!keel_timer_is_armed(&r[i].t));
	}
	printf("loop freed with timers armed: none runs: ok\n");
}

/*
 * Many timers armed, re-armed and disarmed at random, partly from callbacks:
 * each fires exactly when the model says it is still armed, never before its
 * deadline, and together in deadline order within each tick.
 */
enum { MIX_N = 500 };
static struct rec mix[MIX_N];
static bool mix_armed[MIX_N]; /* the model */
static unsigned mix_seed = 12345;
static uint64_t mix_last_due;
static int mix_fired;

static unsigned mix_rand(void)
{
	mix_seed = mix_seed * 1103515245u + 12345u;
	return mix_seed >> 8;
}

static void mix_fire(keel_loop *loop, keel_timer *t)
{
	struct rec *r = keel_container_of(t, struct rec, t);
	ASSERT_GE(keel_loop_now_ns(loop), r->due_ns);
	ASSERT(mix_armed[r->id]);
	mix_armed[r->id] = false;
	ASSERT_GE(r->due_ns, mix_last_due); /* in deadline order */
	mix_last_due = r->due_ns;
	r->fired++;
	mix_fired++;
	/* Now and then, touch another timer: only later deadlines, so the order check holds. */
	struct rec *o = &mix[mix_rand() % MIX_N];
	switch (mix_rand() % 4) {
	case 0:
		keel_timer_disarm(loop, &o->t);
		mix_armed[o->id] = false;
		break;
	case 1:
		rec_arm(loop, o, 1 + mix_rand() % 20);
		mix_armed[o->id] = true;
		o->fired = 0;
		break;
	default: break;
	}
}

static void test_mix(keel_loop *loop)
{
	for (int i = 0; i < MIX_N; i++) {
		memset(&mix[i], 0, sizeof(mix[i]));
		keel_timer_init(&mix[i].t, mix_fire);
		mix[i].id = i;
		rec_arm(loop, &mix[i], mix_rand() % 30);
		mix_armed[i] = true;
	}
	for (int i = 0; i < MIX_N; i += 4)
		rec_arm(loop, &mix[i], mix_rand() % 30);
	for (int i = 1; i < MIX_N; i += 5) {
		keel_timer_disarm(loop, &mix[i].t);
		mix_armed[i] = false;
	}
	/*
	 * A tick fires what is due in deadline order, and a callback only arms
	 * for later than now: the order holds across the whole run.
	 */
	mix_last_due = 0;
	ASSERT_OK(keel_loop_run(loop));
	ASSERT(mix_fired > 0);
	for (int i = 0; i < MIX_N; i++) {
		ASSERT(!keel_timer_is_armed(&mix[i].t));
		ASSERT(!mix_armed[i]); /* every timer the model holds armed has run */
		ASSERT(mix[i].fired <= 1);
	}
	ASSERT_EQ(timers_live(loop), 0);
	printf("random mix of %d timers (%d runs): ok\n", MIX_N, mix_fired);
}

int main(void)
{
	keel_loop *loop = test_loop();
	test_order(loop);
	test_rearm(loop);
	test_disarm(loop);
	test_disarm_from_callback(loop);
	test_rearm_zero(loop);
	test_huge_delay(loop);
	test_stop_and_run_once(loop);
	test_free_in_callback(loop);
	test_mix(loop);
	keel_loop_free(loop);
	test_loop_free_armed();
	return 0;
}
