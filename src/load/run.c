/*
 * load_run: the main thread of keel load. It formats the request, starts
 * the workers together, prints progress each second from the snapshots they
 * publish, turns SIGINT/SIGTERM into a stop posted to every worker's loop
 * (the workers never see a signal), and once they have all finished adds up
 * their counters and histograms for the report.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "load/internal.h"

static void progress(struct worker *ws, long n, struct snapshot *prev, double elapsed_s)
{
	double rate = 0;
	uint64_t responses = 0, errors = 0, p99 = 0;
	pthread_mutex_lock(&ws[0].shared->mu);
	for (long i = 0; i < n; i++) {
		struct snapshot *s = &ws[i].snap;
		if (s->at_ns > prev[i].at_ns)
			rate += (double)(s->c.responses - prev[i].c.responses) * 1e9 /
			        (double)(s->at_ns - prev[i].at_ns);
		responses += s->c.responses;
		errors += errors_total(&s->c);
		if (s->p99_us > p99)
			p99 = s->p99_us; /* with several threads: the largest of theirs */
		prev[i] = *s;
	}
	pthread_mutex_unlock(&ws[0].shared->mu);
	load__print_progress(elapsed_s, rate, responses, errors, p99);
}

static double mono_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Raise the descriptor limit to what the connections need, if the hard limit allows. */
static void raise_nofile(long need)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY || (long)rl.rlim_cur >= need)
		return;
	rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || (long)rl.rlim_max > need ? (rlim_t)need : rl.rlim_max;
	setrlimit(RLIMIT_NOFILE, &rl);
}

/* Start the workers on cfg, wait for them, report. Returns load_run's status. */
static int run_workers(const struct load_cfg *cfg)
{
	const load_opts *o = cfg->opts;
	struct load_shared run = {.nready = 0};
	pthread_mutex_init(&run.mu, NULL);
	pthread_cond_init(&run.cv, NULL);
	long n = o->threads;
	struct worker *ws = calloc((size_t)n, sizeof(*ws));
	struct snapshot *prev = calloc((size_t)n, sizeof(*prev));
	int status = 0;
	long started = 0;
	if (!ws || !prev) {
		fprintf(stderr, "keel load: out of memory\n");
		free(ws);
		free(prev);
		return -ENOMEM;
	}
	for (long i = 0; i < n; i++) {
		uint32_t nc = (uint32_t)(o->conns / n + (i < o->conns % n ? 1 : 0));
		double rate = o->rate ? (double)o->rate / (double)n : 0;
		int err = load__worker_init(&ws[i], cfg, &run, (int)i, nc, rate);
		if (err < 0) {
			fprintf(stderr, "keel load: out of memory\n");
			status = err;
			goto out_free;
		}
	}

	/* SIGINT/SIGTERM end the run early (results still printed); the workers never see them. */
	sigset_t set, old;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, &old);
	signal(SIGPIPE, SIG_IGN);
	raise_nofile(o->conns + 64);

	for (long i = 0; i < n; i++) {
		int err = pthread_create(&ws[i].thread, NULL, load__worker_thread, &ws[i]);
		if (err != 0) {
			fprintf(stderr, "keel load: cannot start a thread\n");
			status = -err;
			break;
		}
		started++;
	}
	pthread_mutex_lock(&run.mu);
	while (run.nready < started)
		pthread_cond_wait(&run.cv, &run.mu);
	for (long i = 0; i < started; i++)
		if (ws[i].status != 0)
			status = ws[i].status; /* its loop failed to start */
	if (status != 0) {
		/* Do not make the user wait for the others' duration. */
		for (long i = 0; i < started; i++)
			if (ws[i].loop)
				keel_loop_post(ws[i].loop, load__worker_stop, &ws[i]);
	}
	run.go = true;
	run.backend = started > 0 && ws[0].loop ? keel_loop_backend(ws[0].loop) : "?";
	pthread_cond_broadcast(&run.cv);
	pthread_mutex_unlock(&run.mu);
	if (status != 0)
		goto out_join;

	if (!o->quiet)
		load__print_start(o, run.backend);
	double t0 = mono_s(), next_report = 1.0;
	bool stop_sent = false;
	/* Bounded: every worker ends by itself after the duration plus its grace period. */
	for (;;) {
		pthread_mutex_lock(&run.mu);
		bool all_done = run.ndone == started;
		pthread_mutex_unlock(&run.mu);
		if (all_done)
			break;
		double now = mono_s() - t0;
		if (now >= next_report) {
			if (!o->quiet && now < (double)o->duration_s)
				progress(ws, n, prev, now);
			next_report += 1.0;
			continue;
		}
		double wait = next_report - now;
		if (wait > 0.05)
			wait = 0.05; /* also notice the workers finishing promptly */
		struct timespec ts = {0, (long)(wait * 1e9)};
		int sig = sigtimedwait(&set, NULL, &ts);
		if (sig > 0) {
			if (stop_sent) {
				fprintf(stderr, "keel load: %s again, exiting\n", strsignal(sig));
				_exit(130);
			}
			fprintf(stderr, "keel load: %s, stopping\n", strsignal(sig));
			stop_sent = true;
			pthread_mutex_lock(&run.mu);
			for (long i = 0; i < n; i++)
				if (!ws[i].loop_gone && ws[i].loop)
					keel_loop_post(ws[i].loop, load__worker_stop, &ws[i]);
			pthread_mutex_unlock(&run.mu);
		}
	}

out_join:
	for (long i = 0; i < started; i++) {
		pthread_join(ws[i].thread, NULL);
		if (ws[i].status != 0)
			status = ws[i].status;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (status == 0) {
		struct results r;
		memset(&r, 0, sizeof(r));
		r.backend = "?";
		if (load_hist_init(&r.lat_ok, LOAD_HIST_MAX_US, LOAD_HIST_DIGITS) < 0 ||
		    load_hist_init(&r.lat_all, LOAD_HIST_MAX_US, LOAD_HIST_DIGITS) < 0) {
			status = -ENOMEM;
		} else {
			for (long i = 0; i < n; i++) {
				struct worker *w = &ws[i];
				double d = (double)(w->ended_ns - w->t0_ns) / 1e9;
				if (d > r.duration_s)
					r.duration_s = d;
				r.c.sent += w->c.sent;
				r.c.scheduled += w->c.scheduled;
				r.c.responses += w->c.responses;
				r.c.ok += w->c.ok;
				r.c.bytes_in += w->c.bytes_in;
				r.c.bytes_out += w->c.bytes_out;
				for (int k = 0; k < E_KINDS; k++)
					r.c.errors[k] += w->c.errors[k];
				r.c.retried += w->c.retried;
				r.c.tls_handshakes += w->c.tls_handshakes;
				r.c.tls_resumed += w->c.tls_resumed;
				r.c.tls_failed_cert += w->c.tls_failed_cert;
				r.c.tls_failed_other += w->c.tls_failed_other;
				load_hist_merge(&r.lat_ok, &w->lat_ok);
				load_hist_merge(&r.lat_all, &w->lat_all);
			}
			r.backend = run.backend;
			r.tls = cfg->tls != NULL;
			r.iv = ws[0].iv;
			r.niv = ws[0].niv;
			load__print_results(o, &r);
			fflush(stdout);
			if (o->json_path) {
				int err = load__write_json(o, &r);
				if (err < 0) {
					fprintf(stderr, "keel load: --json %s: %s\n", o->json_path,
					        strerror(-err));
					status = err;
				}
			}
		}
		load_hist_fini(&r.lat_ok);
		load_hist_fini(&r.lat_all);
	}
out_free:
	for (long i = 0; i < n; i++)
		load__worker_fini(&ws[i]);
	free(ws);
	free(prev);
	pthread_mutex_destroy(&run.mu);
	pthread_cond_destroy(&run.cv);
	return status;
}

int load_run(const load_opts *o)
{
	struct load_cfg cfg;
	int err = load__cfg_init(&cfg, o);
	if (err == -ENOMEM)
		fprintf(stderr, "keel load: out of memory\n");
	if (err == 0)
		err = load__tls_init(&cfg);
	if (err == 0 && cfg.tls && !getenv("KEEL_LOG"))
		keel_log_set_level(KEEL_LOG_ERROR); /* not a warning per failed handshake: they are counted */
	if (err == 0)
		err = run_workers(&cfg);
	load__cfg_fini(&cfg);
	return err;
}
