/*
 * Worker threads for the CLI servers: one loop and one SO_REUSEPORT listener
 * per thread, nothing shared. The main thread runs a small loop of its own
 * that waits for SIGINT/SIGTERM through signalfd and then posts a graceful
 * stop to every worker.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

struct worker {
	int index;
	int listen_fd;
	keel_loop *loop;
	cli_worker_main main_fn;
	void *arg;
	int status;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int ready;      /* 1: loop up, -1: failed */
	bool loop_gone; /* the worker freed its loop: no more posts */
};

long cli_parse_long(const char *opt, const char *s, long min, long max)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max) {
		fprintf(stderr, "keel: %s: expected an integer in [%ld, %ld], got '%s'\n", opt, min, max, s);
		exit(CLI_USAGE);
	}
	return v;
}

static void *worker_thread(void *p)
{
	struct worker *w = p;
	int err = keel_loop_new(&w->loop, NULL);
	pthread_mutex_lock(&w->mu);
	w->ready = err < 0 ? -1 : 1;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
	if (err < 0) {
		fprintf(stderr, "keel: worker %d: cannot create a loop: %s\n", w->index, keel_strerror(err));
		w->status = CLI_FAIL;
		return NULL;
	}
	w->status = w->main_fn(w->loop, w->index, w->listen_fd, w->arg);
	/* A ring belongs to its thread (SINGLE_ISSUER): free it here, fenced from posts. */
	pthread_mutex_lock(&w->mu);
	w->loop_gone = true;
	keel_loop_free(w->loop);
	w->loop = NULL;
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

struct stop_msg {
	cli_worker_stop fn;
	void *arg;
};

static void stop_on_loop(keel_loop *loop, void *ud)
{
	struct stop_msg *m = ud;
	m->fn(loop, m->arg);
}

int cli_run_workers(const char *what, const char *addr, int n, cli_worker_main main_fn,
                    cli_worker_stop stop_fn, void *arg)
{
	/* Block the stop signals in every thread; the main loop takes them via signalfd. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	struct worker *ws = calloc((size_t)n, sizeof(*ws));
	if (!ws)
		return CLI_FAIL;

	/* Bind the first listener here so port 0 resolves once, then share the port. */
	char bound[128];
	snprintf(bound, sizeof(bound), "%s", addr);
	int status = CLI_OK;
	int started = 0;
	for (int i = 0; i < n; i++) {
		/* the largest backlog the host allows */
		int fd = keel_tcp_listen(bound, 0, KEEL_TCP_REUSEPORT);
		if (fd < 0) {
			fprintf(stderr, "keel: cannot listen on %s: %s\n", bound, keel_strerror(fd));
			status = CLI_FAIL;
			break;
		}
		if (i == 0) {
			int port = keel_tcp_port(fd);
			const char *colon = strrchr(addr, ':');
			snprintf(bound, sizeof(bound), "%.*s:%d", (int)(colon - addr), addr, port);
		}
		ws[i].index = i;
		ws[i].listen_fd = fd;
		ws[i].main_fn = main_fn;
		ws[i].arg = arg;
		pthread_mutex_init(&ws[i].mu, NULL);
		pthread_cond_init(&ws[i].cv, NULL);
		if (pthread_create(&ws[i].thread, NULL, worker_thread, &ws[i]) != 0) {
			close(fd);
			status = CLI_FAIL;
			break;
		}
		started++;
		pthread_mutex_lock(&ws[i].mu);
		while (!ws[i].ready)
			pthread_cond_wait(&ws[i].cv, &ws[i].mu);
		pthread_mutex_unlock(&ws[i].mu);
		if (ws[i].ready < 0) {
			status = CLI_FAIL;
			break;
		}
	}

	keel_loop *main_loop = NULL;
	if (status == CLI_OK) {
		keel_loop_opts o;
		keel_loop_opts_default(&o);
		o.quiet = true;
		o.recv_buf_count = 1;
		o.recv_buf_size = 64;
		int err = keel_loop_new(&main_loop, &o);
		if (err < 0) {
			fprintf(stderr, "keel: cannot create the main loop: %s\n", keel_strerror(err));
			status = CLI_FAIL;
		}
	}
	if (status == CLI_OK) {
		fprintf(stderr, "keel: %s listening on %s (%d worker%s, backend %s)\n", what, bound, n,
		        n == 1 ? "" : "s", keel_loop_backend(ws[0].loop));
		static const int sigs[] = {SIGINT, SIGTERM};
		keel_promise *sig = keel_signal_wait(main_loop, sigs, 2);
		while (!keel_promise_is_settled(sig))
			keel_loop_run_once(main_loop, 1000);
		keel_outcome o = keel_promise_outcome(sig);
		keel_promise_release(sig);
		if (o.err == 0)
			fprintf(stderr, "keel: %s received, stopping\n", strsignal((int)o.n));
	}
	struct stop_msg msg = {stop_fn, arg};
	for (int i = 0; i < started; i++) {
		pthread_mutex_lock(&ws[i].mu);
		if (ws[i].ready > 0 && !ws[i].loop_gone)
			keel_loop_post(ws[i].loop, stop_on_loop, &msg);
		pthread_mutex_unlock(&ws[i].mu);
	}
	for (int i = 0; i < started; i++) {
		pthread_join(ws[i].thread, NULL);
		if (ws[i].status != CLI_OK)
			status = ws[i].status;
		pthread_mutex_destroy(&ws[i].mu);
		pthread_cond_destroy(&ws[i].cv);
	}
	keel_loop_free(main_loop);
	free(ws);
	return status;
}
