/*
 * A keel load worker: one thread with its own loop and its share of the
 * connections and of the rate. The loop runs in steps (keel_loop_run_once)
 * so that the worker keeps the run's clock itself: the end of the run, the
 * timeout checks, the snapshots the main thread prints progress from and
 * the per-second intervals. At the end nothing counts any more; the
 * connections are closed within a grace period, then the loop is freed.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/timerfd.h>
#include <time.h>

#include "load/internal.h"

#define LOAD_PUBLISH_MS 100     /* snapshots for the progress line */
#define LOAD_STOP_GRACE_MS 2000 /* at the end, time for closes and cancels to settle */

static void publish(struct worker *w, uint64_t now)
{
	uint64_t p99 = load_hist_percentile(&w->lat_ok, 99);
	pthread_mutex_lock(&w->shared->mu);
	w->snap.c = w->c;
	w->snap.p99_us = p99;
	w->snap.at_ns = now - w->t0_ns;
	pthread_mutex_unlock(&w->shared->mu);
}

/* Close the interval that ended at now. */
static void interval_close(struct worker *w)
{
	if (w->niv == w->iv_cap) {
		uint32_t cap = w->iv_cap ? w->iv_cap * 2 : 64;
		struct interval *iv = realloc(w->iv, cap * sizeof(*iv));
		if (!iv)
			return;
		w->iv = iv;
		w->iv_cap = cap;
	}
	struct interval *x = &w->iv[w->niv++];
	x->ok = w->c.ok - w->iv_ok0;
	x->shed = w->c.errors[E_SHED] - w->iv_shed0;
	x->p99_us = load_hist_percentile(&w->lat_iv, 99);
	w->iv_ok0 = w->c.ok;
	w->iv_shed0 = w->c.errors[E_SHED];
	load_hist_reset(&w->lat_iv);
}

void load__worker_stop(keel_loop *loop, void *ud)
{
	(void)loop;
	struct worker *w = ud;
	w->stop_asked = true;
}

static int ms_until(uint64_t now, uint64_t t)
{
	if (t <= now)
		return 0;
	uint64_t ms = (t - now + 999999) / 1000000;
	return ms > 1000 ? 1000 : (int)ms;
}

static int worker_run(struct worker *w)
{
	const load_opts *o = w->cfg->opts;
	uint64_t check_ms = (uint64_t)o->timeout_ms / 10;
	if (check_ms < 1)
		check_ms = 1;
	if (check_ms > 100)
		check_ms = 100;
	/* The loop's clock is from the end of its last wait: take a fresh reading to start. */
	keel_loop_run_once(w->loop, 0);
	uint64_t now = keel_loop_now_ns(w->loop);
	w->t0_ns = now;
	w->end_ns = now + (uint64_t)o->duration_s * 1000000000ull;
	uint64_t next_check = now + check_ms * 1000000ull;
	uint64_t next_publish = now + LOAD_PUBLISH_MS * 1000000ull;
	w->iv_next_ns = now + 1000000000ull;
	w->nlive = w->nconns;
	w->pace_fd = -1;
	if (w->rate > 0)
		w->pace_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	for (uint32_t i = 0; i < w->nconns; i++)
		load__conn_connect(&w->conns[i]);
	while (!w->stop_asked) {
		now = keel_loop_now_ns(w->loop);
		if (now >= w->end_ns)
			break;
		if (w->rate > 0)
			load__dispatch(w);
		if (now >= next_check) {
			load__check_timeouts(w, now);
			next_check = now + check_ms * 1000000ull;
		}
		if (now >= next_publish) {
			publish(w, now);
			next_publish = now + LOAD_PUBLISH_MS * 1000000ull;
		}
		while (now >= w->iv_next_ns && w->iv_next_ns <= w->end_ns) {
			interval_close(w);
			w->iv_next_ns += 1000000000ull;
		}
		uint64_t wake = w->end_ns;
		if (next_check < wake)
			wake = next_check;
		if (next_publish < wake)
			wake = next_publish;
		if (w->rate > 0 && w->pace_fd < 0) {
			uint64_t next_due = due_time(w, due_count(w, now));
			if (next_due < wake)
				wake = next_due;
		}
		int err = keel_loop_run_once(w->loop, ms_until(now, wake));
		if (err < 0) {
			fprintf(stderr, "keel load: loop: %s\n", keel_strerror(err));
			return err;
		}
	}

	/* The run is over: nothing counts from here on; close everything. */
	now = keel_loop_now_ns(w->loop);
	if (w->iv_next_ns <= w->end_ns && now >= w->end_ns)
		interval_close(w); /* the last second */
	w->ended_ns = now < w->end_ns ? now : w->end_ns;
	w->c.scheduled = w->rate > 0 ? due_count(w, w->ended_ns) : w->c.sent;
	if (w->tls) {
		keel_tls_stats st;
		keel_tls_endpoint_stats(w->tls, &st);
		w->c.tls_handshakes = st.handshakes;
		w->c.tls_resumed = st.resumed;
	}
	w->stopping = true;
	publish(w, w->ended_ns);
	if (w->pace_fd >= 0) {
		keel_promise_release(keel_close(w->loop, w->pace_fd)); /* cancels the pending read */
		w->pace_fd = -1;
	}
	for (uint32_t i = 0; i < w->nconns; i++)
		load__conn_stop(&w->conns[i]);
	uint64_t deadline = now + LOAD_STOP_GRACE_MS * 1000000ull;
	while (w->nlive > 0 && keel_loop_now_ns(w->loop) < deadline)
		if (keel_loop_run_once(w->loop, 100) < 0)
			break;
	return 0;
}

void *load__worker_thread(void *arg)
{
	struct worker *w = arg;
	struct load_shared *shared = w->shared;
	keel_loop_opts o;
	keel_loop_opts_default(&o);
	o.quiet = true;
	int err = keel_loop_new(&w->loop, &o);
	if (err < 0) {
		fprintf(stderr, "keel load: cannot create a loop: %s\n", keel_strerror(err));
		w->status = err;
	} else if (w->cfg->tls && (err = keel_tls_endpoint_new(&w->tls, w->cfg->tls, w->loop)) < 0) {
		fprintf(stderr, "keel load: cannot set up TLS: %s\n", keel_strerror(err));
		w->status = err;
	}
	pthread_mutex_lock(&shared->mu);
	shared->nready++;
	pthread_cond_broadcast(&shared->cv);
	while (!shared->go)
		pthread_cond_wait(&shared->cv, &shared->mu);
	pthread_mutex_unlock(&shared->mu);
	if (err == 0 && w->status == 0)
		w->status = worker_run(w);
	pthread_mutex_lock(&shared->mu);
	shared->ndone++;
	w->loop_gone = true; /* no more posts: the loop goes below */
	pthread_mutex_unlock(&shared->mu);
	/*
	 * The connections are closed (or, past the grace period, closing): the
	 * endpoint goes with the last of them, which may be as the loop goes.
	 */
	keel_tls_endpoint_free(w->tls);
	w->tls = NULL;
	if (w->loop)
		keel_loop_free(w->loop); /* cancels and waits for anything the grace period left */
	w->loop = NULL;
	return NULL;
}

int load__worker_init(struct worker *w, const struct load_cfg *cfg, struct load_shared *shared, int index,
                      uint32_t nconns, double rate)
{
	w->cfg = cfg;
	w->shared = shared;
	w->index = index;
	w->nconns = nconns;
	w->depth = (uint32_t)cfg->opts->pipeline;
	w->rate = rate;
	keel_http_limits_default(&w->limits);
	w->limits.head_max = LOAD_HEAD_MAX;
	w->limits.request_line_max = LOAD_HEAD_MAX;
	w->limits.headers_max = LOAD_HEADERS_MAX;
	if (load_hist_init(&w->lat_ok, LOAD_HIST_MAX_US, LOAD_HIST_DIGITS) < 0 ||
	    load_hist_init(&w->lat_all, LOAD_HIST_MAX_US, LOAD_HIST_DIGITS) < 0 ||
	    load_hist_init(&w->lat_iv, LOAD_HIST_MAX_US, LOAD_HIST_DIGITS) < 0)
		return -ENOMEM;
	w->conns = calloc(nconns, sizeof(*w->conns));
	w->slots = calloc((size_t)nconns * w->depth, sizeof(*w->slots));
	w->retry_cap = nconns * w->depth;
	w->retry = rate > 0 ? calloc(w->retry_cap, sizeof(*w->retry)) : NULL;
	if (!w->conns || !w->slots || (rate > 0 && !w->retry))
		return -ENOMEM;
	for (uint32_t i = 0; i < nconns; i++) {
		w->conns[i].w = w;
		w->conns[i].t.fd = -1;
		w->conns[i].state = C_DONE;
		w->conns[i].start_ns = w->slots + (size_t)i * w->depth;
	}
	return 0;
}

void load__worker_fini(struct worker *w)
{
	for (uint32_t i = 0; w->conns && i < w->nconns; i++)
		free(w->conns[i].stage);
	free(w->conns);
	free(w->slots);
	free(w->retry);
	load_hist_fini(&w->lat_ok);
	load_hist_fini(&w->lat_all);
	load_hist_fini(&w->lat_iv);
	free(w->iv);
}
