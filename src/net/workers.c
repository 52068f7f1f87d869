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

/* What the threads share: the calling thread's loop, told when a worker fails. */
struct run {
	keel_loop *main_loop;
	bool failed; /* (main thread only: set by a post) */
	/*
	 * The workers begin once every one has its loop (1), or not at all (-1):
	 * none fails -- and frees its loop -- while another is still being made.
	 */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int go;
};

struct worker {
	struct run *run;
	const char *backend; /* its loop's, for the log line */
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

static void worker_failed(keel_loop *loop, void *ud)
{
	(void)loop;
	struct run *run = ud;
	run->failed = true;
}

static void *worker_thread(void *p)
{
	struct worker *w = p;
	int err = keel_loop_new(&w->loop, NULL);
	pthread_mutex_lock(&w->mu);
	w->ready = err < 0 ? -1 : 1;
	w->backend = err < 0 ? "none" : keel_loop_backend(w->loop);
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
	if (err < 0) {
		keel_log(KEEL_LOG_ERROR, "worker %d: cannot create a loop: %s", w->index, keel_strerror(err));
		w->status = err;
		close(w->listen_fd);
		return NULL;
	}
	struct run *run = w->run;
	pthread_mutex_lock(&run->mu);
	while (!run->go)
		pthread_cond_wait(&run->cv, &run->mu);
	int go = run->go;
	pthread_mutex_unlock(&run->mu);
	if (go > 0) {
		w->status = w->main_fn(w->loop, w->index, w->listen_fd, w->arg);
		if (w->status != 0) /* the others stop too: no server answering on fewer threads than told */
			keel_loop_post(run->main_loop, worker_failed, run);
	} else {
		close(w->listen_fd);
	}
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
	/*
	 * Block the stop signals in every thread (the workers inherit the
	 * mask); the main loop takes them via signalfd. The caller's mask comes
	 * back at the end.
	 */
	sigset_t set, old;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, &old);
	signal(SIGPIPE, SIG_IGN);

	struct run run = {0};
	pthread_mutex_init(&run.mu, NULL);
	pthread_cond_init(&run.cv, NULL);
	keel_loop_opts o;
	keel_loop_opts_default(&o);
	o.quiet = true;
	o.recv_buf_count = 1;
	o.recv_buf_size = 64;
	int err = keel_loop_new(&run.main_loop, &o);
	struct worker *ws = err ? NULL : calloc((size_t)n, sizeof(*ws));
	if (!ws) {
		keel_log(KEEL_LOG_ERROR, "cannot create the main loop: %s",
		         keel_strerror(err ? err : -ENOMEM));
		keel_loop_free(run.main_loop);
		pthread_mutex_destroy(&run.mu);
		pthread_cond_destroy(&run.cv);
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		return err ? err : -ENOMEM;
	}

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
		ws[i].run = &run;
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

	pthread_mutex_lock(&run.mu);
	run.go = status == 0 ? 1 : -1;
	pthread_cond_broadcast(&run.cv);
	pthread_mutex_unlock(&run.mu);
	if (status == 0) {
		keel_log(KEEL_LOG_INFO, "%s%slistening on %s (%d worker%s, backend %s)", what ? what : "",
		         what ? " " : "", bound, n, n == 1 ? "" : "s", ws[0].backend);
		static const int sigs[] = {SIGINT, SIGTERM};
		keel_promise *sig = keel_signal_wait(run.main_loop, sigs, 2);
		while (!keel_promise_is_settled(sig) && !run.failed)
			keel_loop_run_once(run.main_loop, 1000);
		if (!keel_promise_is_settled(sig)) { /* a worker failed: the rest stop */
			keel_promise_cancel(sig);
			while (!keel_promise_is_settled(sig))
				keel_loop_run_once(run.main_loop, 100);
		}
		keel_outcome so = keel_promise_outcome(sig);
		keel_promise_release(sig);
		if (so.err == 0)
			keel_log(KEEL_LOG_INFO, "%s received, stopping", strsignal((int)so.n));
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
	keel_loop_free(run.main_loop); /* (after the workers: none posts any more) */
	pthread_mutex_destroy(&run.mu);
	pthread_cond_destroy(&run.cv);
	free(ws);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return status;
}
