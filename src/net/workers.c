/*
 * Worker threads for servers: one loop and one SO_REUSEPORT listener per
 * thread, nothing shared. The calling thread runs a small loop of its own
 * that waits for SIGINT/SIGTERM through signalfd and then posts a stop to
 * every worker. keel_http_main and the keel command line run on it.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "keel/errors.h"
#include "keel/log.h"
#include "keel/loop.h"
#include "keel/signal.h"
#include "keel/tcp.h"
#include "workers.h"

struct worker {
	int index;
	int listen_fd;
	keel_loop *loop;
	keel__worker_main main_fn;
	void *arg;
	int status;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int ready;      /* 1: loop up, -1: failed */
	bool loop_gone; /* the worker freed its loop: no more posts */
};

static void *worker_thread(void *p)
{
	struct worker *w = p;
	int err = keel_loop_new(&w->loop, NULL);
	pthread_mutex_lock(&w->mu);
	w->ready = err < 0 ? -1 : 1;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
	if (err < 0) {
		keel_log(KEEL_LOG_ERROR, "worker %d: cannot create a loop: %s", w->index, keel_strerror(err));
		w->status = err;
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
	keel__worker_stop fn;
	void *arg;
};

static void stop_on_loop(keel_loop *loop, void *ud)
{
	struct stop_msg *m = ud;
	m->fn(loop, m->arg);
}

int keel__workers_run(const char *what, const char *addr, int n, keel__worker_main main_fn,
                      keel__worker_stop stop_fn, void *arg)
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
		return -ENOMEM;

	/* Bind the first listener here so port 0 resolves once, then share the port. */
	char bound[128];
	snprintf(bound, sizeof(bound), "%s", addr);
	int status = 0;
	int started = 0;
	for (int i = 0; i < n; i++) {
		/* the largest backlog the host allows */
		int fd = keel_tcp_listen(bound, 0, KEEL_TCP_REUSEPORT);
		if (fd < 0) {
			keel_log(KEEL_LOG_ERROR, "cannot listen on %s: %s", bound, keel_strerror(fd));
			status = fd;
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
			status = -EAGAIN;
			break;
		}
		started++;
		pthread_mutex_lock(&ws[i].mu);
		while (!ws[i].ready)
			pthread_cond_wait(&ws[i].cv, &ws[i].mu);
		pthread_mutex_unlock(&ws[i].mu);
		if (ws[i].ready < 0) {
			status = ws[i].status < 0 ? ws[i].status : -ENOMEM;
			break;
		}
	}

	keel_loop *main_loop = NULL;
	if (status == 0) {
		keel_loop_opts o;
		keel_loop_opts_default(&o);
		o.quiet = true;
		o.recv_buf_count = 1;
		o.recv_buf_size = 64;
		int err = keel_loop_new(&main_loop, &o);
		if (err < 0) {
			keel_log(KEEL_LOG_ERROR, "cannot create the main loop: %s", keel_strerror(err));
			status = err;
		}
	}
	if (status == 0) {
		keel_log(KEEL_LOG_INFO, "%s%slistening on %s (%d worker%s, backend %s)", what ? what : "",
		         what ? " " : "", bound, n, n == 1 ? "" : "s", keel_loop_backend(ws[0].loop));
		static const int sigs[] = {SIGINT, SIGTERM};
		keel_promise *sig = keel_signal_wait(main_loop, sigs, 2);
		while (!keel_promise_is_settled(sig))
			keel_loop_run_once(main_loop, 1000);
		keel_outcome o = keel_promise_outcome(sig);
		keel_promise_release(sig);
		if (o.err == 0)
			keel_log(KEEL_LOG_INFO, "%s received, stopping", strsignal((int)o.n));
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
		if (ws[i].status != 0 && status == 0)
			status = ws[i].status;
		pthread_mutex_destroy(&ws[i].mu);
		pthread_cond_destroy(&ws[i].cv);
	}
	keel_loop_free(main_loop);
	free(ws);
	return status;
}
