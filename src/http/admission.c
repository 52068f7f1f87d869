/*
 * Admission: a request is shed -- answered 503 with Retry-After at once,
 * its handler not called -- when the work ahead of it in the current tick
 * already exceeds the queueing budget, or too many handlers are pending.
 * A 503 costs a parse and a few bytes in a send the connection makes
 * anyway; the work it declines would have made every later answer late.
 */
#include <time.h>

#include "keel/http.h"
#include "keel/loop.h"
#include "server_internal.h"

/* Whether the loop's thread used 70% of a CPU or more since the last look (at least 10 ms ago). */
static bool loop_saturated(keel_http_server *s, uint64_t now)
{
	if (now - s->adm_wall_ns < 10000000 && s->adm_wall_ns)
		return s->adm_saturated;
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	uint64_t cpu = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	if (s->adm_wall_ns)
		s->adm_saturated = (cpu - s->adm_cpu_ns) * 10 >= (now - s->adm_wall_ns) * 7;
	s->adm_wall_ns = now;
	s->adm_cpu_ns = cpu;
	return s->adm_saturated;
}

bool keel__should_shed(keel_http_server *s, const struct route *rt)
{
	if (rt->no_shed)
		return false;
	if (s->cfg.inflight_max && s->stats.inflight >= s->cfg.inflight_max)
		return true;
	if (s->cfg.queue_delay_max_us) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		uint64_t now = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
		uint64_t budget = (uint64_t)s->cfg.queue_delay_max_us * 1000;
		/*
		 * Input arrives with the tick. Input held back by the pipelining
		 * limit arrived earlier; its wait is queueing only if the loop's
		 * thread is CPU-bound -- not when a client simply pipelined past
		 * the limit behind slow (waiting, not working) handlers.
		 */
		uint64_t since = keel_loop_now_ns(s->loop);
		if (s->input_ns && loop_saturated(s, now))
			since = s->input_ns;
		if (now > since && now - since > budget)
			return true;
	}
	return false;
}
