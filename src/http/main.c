/*
 * keel_http_main: N workers, each a loop with its own server and listener,
 * a graceful stop on SIGINT/SIGTERM -- the boilerplate every program
 * repeated -- on the library's worker threads (src/net/workers.c).
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/internal.h"
#include "keel/errors.h"
#include "keel/http.h"
#include "keel/log.h"
#include "net/workers.h"

#define GRACE_DEFAULT_MS 10000

struct run {
	const keel_http_main_opts *o;
	keel_http_config cfg;
	uint64_t grace_ms;
	unsigned n;
	bool stop_all; /* a stop was posted (a worker still in its setup starts its own) */
	pthread_mutex_t mu;
	struct slot {
		keel_loop *loop;
		keel_http_server *srv;
		bool stopping, stopped;
	} * slots;
};

static void stopped(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	struct slot *w = ud;
	w->stopped = true;
}

static void stop_begin(struct run *m, struct slot *w, keel_loop *loop)
{
	(void)loop;
	w->stopping = true;
	keel_promise_done(keel_http_server_stop(w->srv, m->grace_ms), stopped, w);
}

/*
 * What the handlers and teardown started and the server does not know of
 * (an upload's cleanup, a client's closes) runs to its end -- within the
 * grace period once more, so that work that never ends cannot hold the stop.
 */
static void drain(keel_loop *loop, uint64_t grace_ms)
{
	uint64_t start = keel_loop_now_ns(loop); /* (elapsed time, in ms, cannot overflow) */
	/* (Continuations count too: a teardown's last step may be one, queued and not yet run.) */
	while (keel__loop_alive(loop) && (keel_loop_now_ns(loop) - start) / 1000000u < grace_ms)
		keel_loop_run_once(loop, 100);
}

/* On a worker's loop, posted on SIGINT/SIGTERM (src/net/workers.c): its graceful stop. */
static void stop_worker(keel_loop *loop, void *arg)
{
	struct run *m = arg;
	struct slot *w = NULL;
	pthread_mutex_lock(&m->mu);
	m->stop_all = true;
	for (unsigned i = 0; i < m->n && !w; i++)
		if (m->slots[i].loop == loop)
			w = &m->slots[i];
	pthread_mutex_unlock(&m->mu);
	if (w && w->srv && !w->stopping)
		stop_begin(m, w, loop);
}

static int worker_main(keel_loop *loop, int index, const int *lfds, int nlfds, void *arg)
{
	int lfd = lfds[0]; /* (one listen address: nlfds is 1) */
	(void)nlfds;
	struct run *m = arg;
	struct slot *w = &m->slots[index];
	keel_http_server *srv = NULL;
	bool set_up = false;
	int err = keel_http_server_new(&srv, loop, &m->cfg);
	if (!err && m->o->setup) {
		err = m->o->setup(srv, loop, (unsigned)index, m->o->ud);
		set_up = !err;
	}
	if (!err)
		err = keel_http_server_start(srv, lfd);
	if (err) {
		/* (workers.c stops the others: a non-zero return) */
		keel_log(KEEL_LOG_ERROR, "worker %d: %s", index, keel_strerror(err < 0 ? err : -EINVAL));
		if (set_up && m->o->teardown)
			m->o->teardown(srv, loop, (unsigned)index, m->o->ud);
		keel_http_server_free(srv); /* (nothing accepted yet: it frees) */
		close(lfd);
		drain(loop, m->grace_ms);
		return err < 0 ? err : -EINVAL;
	}
	keel__worker_serving();
	pthread_mutex_lock(&m->mu);
	w->srv = srv;
	w->loop = loop;
	bool stop_now = m->stop_all;
	pthread_mutex_unlock(&m->mu);
	if (stop_now)
		stop_begin(m, w, loop);
	while (!w->stopped)
		keel_loop_run_once(loop, -1);
	if (m->o->teardown)
		m->o->teardown(srv, loop, (unsigned)index, m->o->ud);
	drain(loop, m->grace_ms);
	pthread_mutex_lock(&m->mu);
	w->srv = NULL;
	pthread_mutex_unlock(&m->mu);
	keel_http_server_free(srv);
	close(lfd);
	return 0;
}

int keel_http_main(const keel_http_main_opts *opts)
{
	if (!opts)
		return -EINVAL;
	long n = opts->workers ? (long)opts->workers : sysconf(_SC_NPROCESSORS_ONLN);
	if (n < 1)
		n = 1;
	if (n > 1024)
		return -EINVAL;
	struct run m = {.o = opts, .grace_ms = opts->grace_ms ? opts->grace_ms : GRACE_DEFAULT_MS};
	if (opts->cfg)
		m.cfg = *opts->cfg;
	else
		keel_http_config_default(&m.cfg);
	m.cfg.listener_keep = true; /* (workers.c's sockets: it shuts them at a stop, not a worker) */
	m.n = (unsigned)n;
	m.slots = calloc((size_t)n, sizeof(*m.slots));
	if (!m.slots)
		return -ENOMEM;
	pthread_mutex_init(&m.mu, NULL);
	int st = keel__workers_run(NULL, opts->listen ? opts->listen : "127.0.0.1:8080", (int)n, worker_main,
	                           stop_worker, &m);
	pthread_mutex_destroy(&m.mu);
	free(m.slots);
	return st;
}
