/*
 * Worker threads for servers, and the master that runs them: one loop per
 * thread, nothing shared between workers but the listening sockets, which
 * the master owns. keel_http_main and the keel command line run on it.
 *
 * The calling thread is the master. It runs a small loop of its own that
 * takes signals through signalfd (they are blocked in every thread) and
 * the workers' exits through posts. Workers come in generations: the first
 * one, then one per reload. A generation lends each worker i a descriptor
 * of socket i % nsockets of its address; the sockets outlive generations,
 * so a reload or an upgrade never closes a listening socket that still has
 * clients in its backlog. With SO_REUSEPORT (keel binds one socket per
 * worker) a reload with more workers binds more; a passed socket (systemd)
 * is one socket all workers accept on.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "keel/errors.h"
#include "keel/file.h"
#include "keel/log.h"
#include "keel/loop.h"
#include "keel/signal.h"
#include "keel/tcp.h"
#include "keel/timer.h"
#include "keel/util.h"
#include "workers.h"

extern char **environ;

/*
 * An upgrade's process: UPGRADE_TIMEOUT_MS to serve; CHILD_EXIT_MS to exit
 * once its pipe closed; CHILD_STOP_MS for its graceful stop when a stop of
 * this process calls the upgrade off.
 */
enum {
	LISTENERS_MAX = 1024,
	ADDR_MAX = 128,
	UPGRADE_TIMEOUT_MS = 60000,
	CHILD_EXIT_MS = 1000,
	CHILD_STOP_MS = 30000
};

/* The listening sockets of one address, shared by the generations that serve on it. */
struct lset {
	char addr[ADDR_MAX];  /* as configured */
	char bound[ADDR_MAX]; /* the port resolved, for messages */
	unsigned flags;       /* KEEL_TCP_V6ONLY */
	keel__unix_perm perm;
	int fds[LISTENERS_MAX];
	int nfds;
	bool reuseport; /* keel's own SO_REUSEPORT sockets: more can be bound */
	bool foreign;   /* the service manager's: never shut down, only closed */
	bool is_unix;   /* one socket, shared by every worker */
	/* A Unix socket's file, removed with the last socket unless another process has it now */
	bool has_path, keep_path;
	dev_t path_dev;
	ino_t path_ino;
	int refs; /* the master's, and the generations' on it */
};

struct master;

struct worker {
	struct gen *g;
	int index;
	int lfds[KEEL__LISTENS_MAX]; /* its own descriptors of the sockets, until the body takes them */
	int nlfds;
	keel_loop *loop;
	int status;
	pthread_t thread;
	int made;       /* its loop: 0 being made, 1 made, -1 failed (under m->mu) */
	int state;      /* 0 starting, 1 serving, -1 ended (under m->mu) */
	bool loop_gone; /* the worker freed its loop: no more posts (under m->mu) */
};

struct stop_msg {
	keel__worker_stop fn;
	void *arg;
};

struct gen {
	struct master *m;
	keel__gen cfg;
	bool owned; /* cfg.arg is reload's: released when the workers are gone */
	struct lset *ls[KEEL__LISTENS_MAX];
	int nls;
	struct worker *ws;
	int started; /* threads made */
	int alive;   /* threads not yet joined */
	bool stopping;
	bool served;      /* every worker started serving */
	int go;           /* 1: every loop is made, begin; -1: one failed, end (under m->mu) */
	uint64_t stop_ms; /* when it was told to stop (master loop time) */
	struct stop_msg stop;
	struct gen *next;
};

struct master {
	const keel__master *o;
	keel_loop *loop;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct gen *gens;                   /* every generation with workers */
	struct gen *serving;                /* the one that serves (the others drain) */
	struct lset *ls[KEEL__LISTENS_MAX]; /* the serving generation's sockets (references) */
	int nls;
	int status;
	bool failed;   /* a worker of the serving generation returned non-zero */
	bool stopping; /* every generation told to stop */
	bool upgraded; /* a new binary took over the sockets: they stay open for it */
	/* SIGTERM's delay before the stop */
	keel_timer delay;
	bool delay_over;
	/* SIGUSR2 */
	pid_t child;
	int child_st;           /* its wait status, when reaped before its pipe closed */
	bool child_reaped;      /* (then child_st is set) */
	bool child_eof;         /* its pipe closed before it served: it failed */
	bool child_off;         /* called off by a stop (it was told to stop too) */
	int child_fd;           /* read end of its ready pipe */
	keel_timer child_timer; /* UPGRADE_TIMEOUT_MS to serve */
	char child_buf[8];
	keel_promise *child_read;
};

static _Thread_local struct worker *tls_worker;

void keel__worker_serving(void)
{
	struct worker *w = tls_worker;
	if (!w)
		return;
	struct master *m = w->g->m;
	pthread_mutex_lock(&m->mu);
	if (w->state == 0)
		w->state = 1;
	pthread_cond_broadcast(&m->cv);
	pthread_mutex_unlock(&m->mu);
}

static void notify(struct master *m, const char *state)
{
	if (m->o->notify)
		m->o->notify(m->o->ud, state);
}

/* ---- Listening sockets ---------------------------------------------------- */

static const char *unix_path(const struct lset *ls)
{
	return ls->addr + 5; /* (after "unix:") */
}

/* Note which file a Unix socket's path is now (to remove it at the end only if it still is). */
static void lset_note_path(struct lset *ls)
{
	struct stat st;
	const char *path = unix_path(ls);
	if (ls->is_unix && path[0] == '/' && lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
		ls->has_path = true;
		ls->path_dev = st.st_dev;
		ls->path_ino = st.st_ino;
	}
}

static void lset_unref(struct lset *ls)
{
	if (!ls || --ls->refs > 0)
		return;
	for (int i = 0; i < ls->nfds; i++)
		close(ls->fds[i]);
	struct stat st;
	if (ls->has_path && !ls->foreign && !ls->keep_path && lstat(unix_path(ls), &st) == 0 &&
	    st.st_dev == ls->path_dev && st.st_ino == ls->path_ino)
		unlink(unix_path(ls));
	free(ls);
}

static void lsets_unref(struct lset **ls, int n)
{
	for (int i = 0; i < n; i++)
		lset_unref(ls[i]);
}

/* Whether fd is a listening stream socket bound to want (port 0: any port). */
static bool listener_matches(int fd, const struct sockaddr_storage *want, socklen_t wlen)
{
	int on = 0;
	socklen_t olen = sizeof(on);
	if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &olen) < 0 || !on)
		return false;
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	memset(&ss, 0, sizeof(ss));
	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0 || ss.ss_family != want->ss_family)
		return false;
	if (ss.ss_family == AF_INET) {
		const struct sockaddr_in *a = (const void *)&ss, *b = (const void *)want;
		return a->sin_addr.s_addr == b->sin_addr.s_addr &&
		       (b->sin_port == 0 || a->sin_port == b->sin_port);
	}
	if (ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const void *)&ss, *b = (const void *)want;
		return memcmp(&a->sin6_addr, &b->sin6_addr, sizeof(a->sin6_addr)) == 0 &&
		       (b->sin6_port == 0 || a->sin6_port == b->sin6_port);
	}
	if (ss.ss_family == AF_UNIX) {
		const struct sockaddr_un *a = (const void *)&ss, *b = (const void *)want;
		size_t off = offsetof(struct sockaddr_un, sun_path);
		if (b->sun_path[0]) /* a path (the kernel may count its NUL or not) */
			return strncmp(a->sun_path, b->sun_path, sizeof(a->sun_path)) == 0;
		return len == wlen && memcmp(a->sun_path, b->sun_path, wlen - off) == 0;
	}
	return false;
}

static void lset_set_bound(struct lset *ls)
{
	if (ls->is_unix) {
		snprintf(ls->bound, sizeof(ls->bound), "%s", ls->addr);
		return;
	}
	const char *colon = strrchr(ls->addr, ':');
	int port = keel_tcp_port(ls->fds[0]);
	snprintf(ls->bound, sizeof(ls->bound), "%.*s:%d", colon ? (int)(colon - ls->addr) : 0, ls->addr,
	         port);
}

/*
 * Bind keel's own sockets until ls has n (a Unix socket: one, whatever n).
 * 0 or a negative errno (logged).
 */
static int lset_grow(struct lset *ls, int n)
{
	if (ls->is_unix)
		n = 1;
	while (ls->nfds < n) {
		if (ls->nfds == LISTENERS_MAX)
			return -E2BIG;
		/* the largest backlog the host allows; the first resolves a port of 0 for the rest */
		int fd = keel__listen_socket(ls->nfds ? ls->bound : ls->addr, 0,
		                             KEEL_TCP_REUSEPORT | ls->flags, &ls->perm);
		if (fd < 0) {
			keel_log(KEEL_LOG_ERROR, "cannot listen on %s: %s", ls->nfds ? ls->bound : ls->addr,
			         keel_strerror(fd));
			return fd;
		}
		ls->fds[ls->nfds++] = fd;
		if (ls->nfds == 1) {
			lset_set_bound(ls);
			lset_note_path(ls);
		}
	}
	return 0;
}

/* A reload's Unix socket whose mode or owner changed: the file gets the new ones. */
/*
 * Give a Unix socket's file (keel's own: never the service manager's)
 * perm, if it is not what the file was given last; with force, whatever it
 * was given. Only the file bound (its device and inode): never a file or
 * link put in its place. 0, or a negative errno (logged).
 */
static int lset_set_perm(struct lset *ls, const keel__unix_perm *perm, bool force)
{
	const keel__unix_perm *was = &ls->perm;
	if (!ls->has_path || ls->foreign ||
	    (!force && was->mode == perm->mode && was->uid == perm->uid && was->gid == perm->gid))
		return 0;
	struct stat want = {.st_dev = ls->path_dev, .st_ino = ls->path_ino};
	int err = keel__unix_perm_apply(unix_path(ls), perm, &want);
	if (err < 0) {
		keel_log(KEEL_LOG_ERROR, "%s: mode or owner: %s", ls->addr,
		         err == -ESTALE ? "the file is not keel's socket any more" : keel_strerror(err));
		return err;
	}
	ls->perm = *perm; /* (only once it is so) */
	return 0;
}

/*
 * The sockets for l and n workers: the passed ones bound to it, or n of
 * keel's own (one for a Unix socket). *taken marks the passed ones used.
 * NULL on an error (logged).
 */
static struct lset *lset_make(struct master *m, const keel__listen *l, int n, bool *taken)
{
	struct sockaddr_storage want;
	socklen_t wlen;
	int err = keel_addr_parse(l->addr, &want, &wlen);
	struct lset *ls = err ? NULL : calloc(1, sizeof(*ls));
	if (!ls) {
		keel_log(KEEL_LOG_ERROR, "cannot listen on %s: %s", l->addr,
		         keel_strerror(err ? err : -ENOMEM));
		return NULL;
	}
	snprintf(ls->addr, sizeof(ls->addr), "%s", l->addr);
	ls->flags = l->flags;
	ls->perm = l->perm; /* (what keel__listen_socket gives a file it binds; inherited ones: below) */
	ls->is_unix = want.ss_family == AF_UNIX;
	ls->refs = 1;
	const keel__master *o = m->o;
	for (int i = 0; taken && i < o->ninherited; i++) {
		int fd = o->inherited[i];
		if (taken[i] || !listener_matches(fd, &want, wlen) || ls->nfds == LISTENERS_MAX ||
		    (ls->is_unix && ls->nfds == 1))
			continue;
		int one = 0;
		socklen_t olen = sizeof(one);
		if (ls->nfds == 0) {
			ls->foreign = o->foreign && o->foreign[i];
			ls->reuseport = !ls->foreign && !ls->is_unix &&
			                getsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, &olen) == 0 && one;
		}
		fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
		fcntl(fd, F_SETFD, FD_CLOEXEC);
		ls->fds[ls->nfds++] = fd;
		taken[i] = true;
		if (ls->nfds == 1) {
			lset_set_bound(ls);
			lset_note_path(ls);
			/* An upgrade's: the old process's file until this one serves (master_run) */
			ls->keep_path = o->upgrade;
		}
	}
	if (ls->nfds > 0 && ls->is_unix && lset_set_perm(ls, &l->perm, true) < 0) {
		lset_unref(ls); /* (the configuration's mode and owner, which may have changed) */
		return NULL;
	}
	if (ls->nfds == 0) {
		ls->reuseport = !ls->is_unix;
		if (lset_grow(ls, n) < 0) {
			lset_unref(ls);
			return NULL;
		}
	}
	return ls;
}

/* Refuse new clients on keel's own sockets of ls now (and reset those in their backlogs). */
static void lset_shut(struct lset *ls)
{
	if (!ls->foreign)
		for (int i = 0; i < ls->nfds; i++)
			shutdown(ls->fds[i], SHUT_RD);
}

/* "ADDR, ADDR, ..." for messages. */
static const char *lsets_bound(struct lset *const *ls, int n, char *buf, size_t size)
{
	size_t k = 0;
	buf[0] = '\0';
	for (int i = 0; i < n && k < size; i++) {
		int w = snprintf(buf + k, size - k, "%s%s", i ? ", " : "", ls[i]->bound);
		k += w > 0 ? (size_t)w : 0;
	}
	return buf;
}

/* ---- Generations ---------------------------------------------------------- */

/* A worker ended (posted from its thread just before it does): wakes the master to join it. */
static void worker_ended(keel_loop *loop, void *ud)
{
	(void)loop;
	(void)ud;
}

static void worker_close_fds(struct worker *w)
{
	for (int i = 0; i < w->nlfds; i++)
		close(w->lfds[i]);
}

static void *worker_thread(void *p)
{
	struct worker *w = p;
	struct master *m = w->g->m;
	tls_worker = w;
	keel_loop *loop = NULL;
	int err = keel_loop_new(&loop, NULL);
	/*
	 * The workers of a generation begin once every one has its loop, or
	 * not at all: none fails -- and frees its ring -- while another ring is
	 * still being made (a freed ring's mapping may be the next one's).
	 */
	pthread_mutex_lock(&m->mu);
	w->loop = loop;
	w->made = err < 0 ? -1 : 1;
	if (err < 0) {
		w->state = -1;
		w->status = err;
	}
	pthread_cond_broadcast(&m->cv);
	while (err == 0 && w->g->go == 0)
		pthread_cond_wait(&m->cv, &m->mu);
	bool go = err == 0 && w->g->go > 0;
	if (err == 0 && !go) {
		w->state = -1;
		w->status = -ECANCELED;
	}
	pthread_mutex_unlock(&m->mu);
	if (err == 0 && !go) {
		worker_close_fds(w);
		pthread_mutex_lock(&m->mu);
		w->loop_gone = true;
		w->loop = NULL;
		pthread_cond_broadcast(&m->cv);
		pthread_mutex_unlock(&m->mu);
		keel_loop_free(loop);
	} else if (err < 0) {
		keel_log(KEEL_LOG_ERROR, "worker %d: cannot create a loop: %s", w->index, keel_strerror(err));
		worker_close_fds(w);
	} else {
		int st = m->o->main_fn(loop, w->index, w->lfds, w->nlfds, w->g->cfg.arg);
		/* No more posts to the loop from here on: then it goes, on this thread (a ring is its thread's). */
		pthread_mutex_lock(&m->mu);
		w->status = st;
		w->state = -1;
		w->loop_gone = true;
		w->loop = NULL;
		pthread_cond_broadcast(&m->cv);
		pthread_mutex_unlock(&m->mu);
		keel_loop_free(loop);
	}
	keel_loop_post(m->loop, worker_ended, NULL); /* (the master joins this thread) */
	return NULL;
}

static void stop_on_loop(keel_loop *loop, void *ud)
{
	struct stop_msg *msg = ud;
	msg->fn(loop, msg->arg);
}

static void gen_stop(struct gen *g)
{
	if (g->stopping)
		return;
	struct master *m = g->m;
	g->stopping = true;
	g->stop_ms = keel_loop_now_ms(m->loop);
	g->stop = (struct stop_msg){m->o->stop_fn, g->cfg.arg};
	pthread_mutex_lock(&m->mu);
	for (int i = 0; i < g->started; i++)
		if (g->ws[i].loop && !g->ws[i].loop_gone)
			keel_loop_post(g->ws[i].loop, stop_on_loop, &g->stop);
	pthread_mutex_unlock(&m->mu);
}

static void gen_free(struct gen *g)
{
	struct master *m = g->m;
	for (struct gen **pp = &m->gens; *pp; pp = &(*pp)->next)
		if (*pp == g) {
			*pp = g->next;
			break;
		}
	if (!m->stopping && g->served && g != m->serving)
		keel_log(KEEL_LOG_INFO, "old workers gone: %d drained in %llu ms", g->started,
		         (unsigned long long)(keel_loop_now_ms(m->loop) - g->stop_ms));
	if (m->serving == g)
		m->serving = NULL;
	if (m->o->release && (g->owned || g->cfg.arg == m->o->gen.arg))
		m->o->release(m->o->ud, g->cfg.arg);
	lsets_unref(g->ls, g->nls);
	free(g->ws);
	free(g);
}

/* Join the workers that have ended; free the generations with none left. */
static void reap_workers(struct master *m)
{
	for (struct gen *g = m->gens, *next; g; g = next) {
		next = g->next;
		for (int i = 0; i < g->started; i++) {
			struct worker *w = &g->ws[i];
			pthread_mutex_lock(&m->mu);
			bool gone = w->loop_gone || (w->state < 0 && !w->loop);
			pthread_mutex_unlock(&m->mu);
			if (!gone || w->thread == 0)
				continue;
			pthread_join(w->thread, NULL);
			w->thread = 0;
			g->alive--;
			if (w->status != 0 && g == m->serving) {
				if (!g->stopping) /* no server answering on fewer threads than told */
					m->failed = true;
				if (m->status == 0)
					m->status = w->status;
			}
		}
		if (g->alive == 0 && g->stopping)
			gen_free(g);
	}
}

static bool gen_listed(const struct master *m, const struct gen *g)
{
	for (const struct gen *x = m->gens; x; x = x->next)
		if (x == g)
			return true;
	return false;
}

/*
 * Start a generation of cfg->workers on ls[0 .. cfg->nlisten-1] (a
 * reference to each is taken), and wait until each worker serves or fails.
 * The new generation, or NULL if any worker failed (those that started are
 * stopped and joined; logged; *status is the first failure's).
 */
static struct gen *gen_start(struct master *m, const keel__gen *cfg, struct lset *const *ls, bool owned,
                             int *status)
{
	struct gen *g = calloc(1, sizeof(*g));
	struct worker *ws = g ? calloc((size_t)cfg->workers, sizeof(*ws)) : NULL;
	if (!ws) {
		free(g);
		keel_log(KEEL_LOG_ERROR, "cannot start workers: %s", keel_strerror(-ENOMEM));
		*status = -ENOMEM;
		return NULL;
	}
	*g = (struct gen){.m = m, .cfg = *cfg, .owned = owned, .nls = cfg->nlisten, .ws = ws};
	for (int j = 0; j < g->nls; j++) {
		g->ls[j] = ls[j];
		ls[j]->refs++;
	}
	g->next = m->gens;
	m->gens = g;
	int err = 0;
	for (int i = 0; i < cfg->workers; i++) {
		struct worker *w = &ws[i];
		*w = (struct worker){.g = g, .index = i};
		for (int j = 0; j < g->nls && !err; j++) {
			int fd = fcntl(ls[j]->fds[i % ls[j]->nfds], F_DUPFD_CLOEXEC, 3);
			if (fd < 0) {
				err = -errno;
				keel_log(KEEL_LOG_ERROR, "worker %d: %s", i, keel_strerror(err));
			} else {
				w->lfds[w->nlfds++] = fd;
			}
		}
		if (err) {
			worker_close_fds(w);
			break;
		}
		if ((err = -pthread_create(&w->thread, NULL, worker_thread, w)) < 0) {
			keel_log(KEEL_LOG_ERROR, "worker %d: cannot start a thread: %s", i,
			         keel_strerror(err));
			worker_close_fds(w);
			w->thread = 0;
			break;
		}
		g->started++;
		g->alive++;
	}
	pthread_mutex_lock(&m->mu);
	for (int i = 0; i < g->started; i++)
		while (ws[i].made == 0)
			pthread_cond_wait(&m->cv, &m->mu);
	g->go = 1;
	for (int i = 0; i < g->started; i++)
		if (ws[i].made < 0)
			g->go = -1;
	if (err)
		g->go = -1;
	pthread_cond_broadcast(&m->cv);
	for (int i = 0; i < g->started; i++)
		while (ws[i].state == 0)
			pthread_cond_wait(&m->cv, &m->mu);
	for (int i = g->started - 1; i >= 0; i--)
		if (ws[i].state < 0)
			err = ws[i].status ? ws[i].status : -ECHILD; /* (the first one that failed) */
	pthread_mutex_unlock(&m->mu);
	if (!err) {
		g->served = true;
		return g;
	}
	/* Some failed: the others stop, and this generation goes (reap_workers frees it). */
	*status = err;
	g->owned = false; /* (its arg is still the caller's) */
	gen_stop(g);
	while (gen_listed(m, g)) {
		keel_loop_run_once(m->loop, 10);
		reap_workers(m);
	}
	return NULL;
}

/* ---- Signals -------------------------------------------------------------- */

static void reload(struct master *m)
{
	if (!m->o->reload) {
		keel_log(KEEL_LOG_WARN, "SIGHUP: nothing to reload (no configuration file)");
		return;
	}
	if (m->stopping || m->upgraded || keel_timer_is_armed(&m->delay) || m->child > 0) {
		keel_log(KEEL_LOG_WARN, "SIGHUP ignored: %s",
		         m->child > 0 ? "a binary upgrade is under way" : "stopping");
		return;
	}
	keel_log(KEEL_LOG_INFO, "SIGHUP received, reloading");
	notify(m, "RELOADING=1");
	keel__gen cfg = {0};
	if (m->o->reload(m->o->ud, &cfg) < 0) {
		keel_log(KEEL_LOG_ERROR, "reload rejected: the old configuration keeps serving");
		notify(m, "READY=1");
		return;
	}
	/*
	 * The new generation's sockets: the serving one's for an address it
	 * keeps (more bound if it has more workers), new ones for the rest.
	 * Each of ls holds a reference of the master's.
	 */
	struct lset *ls[KEEL__LISTENS_MAX] = {0};
	int nls = 0, grown[KEEL__LISTENS_MAX];
	keel__unix_perm perm[KEEL__LISTENS_MAX]; /* (what a rejected reload puts back) */
	for (int j = 0; j < m->nls; j++) {
		grown[j] = m->ls[j]->nfds;
		perm[j] = m->ls[j]->perm;
	}
	const char *why = NULL;
	if (cfg.workers < 1 || cfg.nlisten < 1 || cfg.nlisten > KEEL__LISTENS_MAX)
		why = cfg.workers < 1 ? "no workers" : "no listen address";
	for (int i = 0; !why && i < cfg.nlisten; i++) {
		struct lset *old = NULL;
		for (int j = 0; j < m->nls && !old; j++)
			if (strcmp(cfg.listen[i].addr, m->ls[j]->addr) == 0 &&
			    cfg.listen[i].flags == m->ls[j]->flags)
				old = m->ls[j];
		if (!old) {
			if (!(ls[nls++] = lset_make(m, &cfg.listen[i], cfg.workers, NULL)))
				why = "cannot listen on a new address";
			continue;
		}
		ls[nls++] = old;
		old->refs++;
		if (old->nfds > cfg.workers)
			why = "fewer workers than listening sockets: a reload keeps the sockets (restart to "
			      "have fewer)";
		else if (old->reuseport && old->nfds < cfg.workers && lset_grow(old, cfg.workers) < 0)
			why = "cannot listen on more sockets";
		else if (old->is_unix && lset_set_perm(old, &cfg.listen[i].perm, false) < 0)
			why = "cannot set a socket's mode or owner";
	}
	int st = 0;
	struct gen *g = why ? NULL : gen_start(m, &cfg, ls, true, &st);
	if (!g) {
		for (int j = 0; j < m->nls; j++) {
			while (m->ls[j]->nfds > grown[j]) /* (bound for it: no worker would accept on them) */
				close(m->ls[j]->fds[--m->ls[j]->nfds]);
			lset_set_perm(m->ls[j], &perm[j], false); /* (the old mode and owner, if changed) */
		}
		lsets_unref(ls, nls);
		keel_log(KEEL_LOG_ERROR, "reload rejected: %s: the old configuration keeps serving",
		         why ? why : keel_strerror(st));
		if (m->o->release)
			m->o->release(m->o->ud, cfg.arg);
		notify(m, "READY=1");
		return;
	}
	struct gen *cur = m->serving;
	m->serving = g;
	for (int j = 0; j < m->nls; j++) {
		bool kept = false;
		for (int i = 0; i < nls; i++)
			kept |= ls[i] == m->ls[j];
		if (!kept) /* an address no longer served refuses new clients now; its sockets go with the old workers */
			lset_shut(m->ls[j]);
	}
	lsets_unref(m->ls, m->nls);
	memcpy(m->ls, ls, sizeof(ls));
	m->nls = nls;
	gen_stop(cur);
	char where[512];
	keel_log(KEEL_LOG_INFO, "reloaded: %d worker%s listening on %s; the old ones drain", cfg.workers,
	         cfg.workers == 1 ? "" : "s", lsets_bound(m->ls, m->nls, where, sizeof(where)));
	notify(m, "READY=1");
}

static void reopen(struct master *m)
{
	if (!m->o->reopen)
		return;
	for (struct gen *g = m->gens; g; g = g->next)
		m->o->reopen(m->o->ud, g->cfg.arg);
	keel_log(KEEL_LOG_INFO, "SIGUSR1 received: logs reopened");
}

/*
 * A stop while an upgrade is under way calls it off: its process would
 * outlive this one, orphaned, and the service would not stop. SIGINT: its
 * graceful stop at once, without a stop delay.
 */
static void call_off_upgrade(struct master *m)
{
	if (m->child <= 0 || m->child_off || m->child_reaped)
		return;
	m->child_off = true;
	keel_log(KEEL_LOG_WARN, "upgrade called off: stopping pid %ld too", (long)m->child);
	kill(m->child, SIGINT);
}

static void stop_all(struct master *m)
{
	if (m->stopping)
		return;
	m->stopping = true;
	call_off_upgrade(m);
	if (!m->upgraded) /* (the service is the new process's now: it goes on) */
		notify(m, "STOPPING=1");
	/*
	 * New clients are refused at once (and those in the backlog reset),
	 * rather than left waiting through the grace period -- unless the
	 * sockets are the service manager's or a new binary's now.
	 */
	for (int j = 0; j < m->nls && !m->upgraded; j++)
		lset_shut(m->ls[j]);
	for (struct gen *g = m->gens; g; g = g->next)
		gen_stop(g);
}

static void delay_over(keel_loop *loop, keel_timer *t)
{
	(void)loop;
	struct master *m = keel_container_of(t, struct master, delay);
	m->delay_over = true;
}

/* Format n into buf (async-signal-safe: for the child after fork). */
static void put_decimal(char *buf, long n)
{
	char tmp[24];
	int len = 0;
	do
		tmp[len++] = (char)('0' + n % 10);
	while ((n /= 10) > 0);
	while (len > 0)
		*buf++ = tmp[--len];
	*buf = '\0';
}

static void child_read_done(keel_ctx *ctx, keel_outcome o, void *ud);
static void reap_child(struct master *m);
static void child_failed(struct master *m);

/*
 * Start the binary again with the listening sockets as 3.. (LISTEN_FDS),
 * and a pipe after them (KEEL_UPGRADE_FD) it writes to once it serves.
 */
static void upgrade(struct master *m)
{
	const keel__master *o = m->o;
	if (!o->exec_path) {
		keel_log(KEEL_LOG_WARN, "SIGUSR2: binary upgrade not available here");
		return;
	}
	if (m->child > 0 || m->stopping || m->upgraded || keel_timer_is_armed(&m->delay)) {
		keel_log(KEEL_LOG_WARN, "SIGUSR2 ignored: %s",
		         m->child > 0 ? "an upgrade is under way" : "stopping");
		return;
	}
	int n = 0;
	for (int j = 0; j < m->nls; j++)
		n += m->ls[j]->nfds;
	/* Everything the child needs is made here: after fork it may only call async-signal-safe functions. */
	size_t nenv = 0;
	while (environ[nenv])
		nenv++;
	char **envp = calloc(nenv + 5, sizeof(*envp));
	char *names = malloc((size_t)n * 11 + 32);
	int *fds = malloc(((size_t)n + 1) * sizeof(*fds)); /* (the child's) */
	char fds_var[32], pid_var[40], up_var[40];
	int pfd[2] = {-1, -1};
	/* (The read end nonblocking: the loop reads it, and a backend may try the read at once.) */
	if (!envp || !names || !fds || pipe2(pfd, O_CLOEXEC) < 0 ||
	    fcntl(pfd[0], F_SETFL, fcntl(pfd[0], F_GETFL) | O_NONBLOCK) < 0) {
		keel_log(KEEL_LOG_ERROR, "upgrade: %s", keel_strerror(-errno));
		goto out;
	}
	size_t k = 0;
	for (size_t i = 0; i < nenv; i++)
		if (strncmp(environ[i], "LISTEN_", 7) != 0 &&
		    strncmp(environ[i], "KEEL_UPGRADE_FD=", 16) != 0)
			envp[k++] = environ[i];
	snprintf(fds_var, sizeof(fds_var), "LISTEN_FDS=%d", n);
	strcpy(names, "LISTEN_FDNAMES=");
	for (int j = 0, i = 0; j < m->nls; j++)
		for (int f = 0; f < m->ls[j]->nfds; f++, i++)
			strcat(names,
			       m->ls[j]->foreign ? (i ? ":inherited" : "inherited") : (i ? ":keel" : "keel"));
	snprintf(up_var, sizeof(up_var), "KEEL_UPGRADE_FD=%d", 3 + n);
	strcpy(pid_var, "LISTEN_PID=");
	envp[k++] = fds_var;
	envp[k++] = names;
	envp[k++] = up_var;
	envp[k++] = pid_var;
	envp[k] = NULL;
	pid_t pid = fork();
	if (pid < 0) {
		keel_log(KEEL_LOG_ERROR, "upgrade: cannot fork: %s", keel_strerror(-errno));
		goto out;
	}
	if (pid == 0) {
		/* Move the sockets and the pipe to 3 .. 3+n, out of each other's way first. */
		int high = 3 + n + 1, *tmp = fds;
		for (int j = 0, i = 0; j < m->nls; j++)
			for (int f = 0; f < m->ls[j]->nfds; f++)
				if ((tmp[i++] = fcntl(m->ls[j]->fds[f], F_DUPFD_CLOEXEC, high)) < 0)
					_exit(127);
		if ((tmp[n] = fcntl(pfd[1], F_DUPFD_CLOEXEC, high)) < 0)
			_exit(127);
		for (int i = 0; i <= n; i++)
			if (dup2(tmp[i], 3 + i) < 0) /* (without close-on-exec) */
				_exit(127);
		put_decimal(pid_var + strlen("LISTEN_PID="), (long)getpid());
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		execve(o->exec_path, o->exec_argv, envp);
		_exit(127);
	}
	m->child = pid;
	m->child_fd = pfd[0];
	pfd[0] = -1;
	m->child_read = keel_read(m->loop, m->child_fd, m->child_buf, sizeof(m->child_buf));
	keel_promise_done(m->child_read, child_read_done, m);
	keel_timer_arm(m->loop, &m->child_timer, UPGRADE_TIMEOUT_MS);
	keel_log(KEEL_LOG_INFO, "SIGUSR2 received: started %s (pid %ld) with the listening sockets",
	         o->exec_path, (long)pid);
out:
	if (pfd[0] >= 0)
		close(pfd[0]);
	if (pfd[1] >= 0)
		close(pfd[1]);
	free(fds);
	free(names);
	free(envp);
}

/* The upgrade's process failed before it served, and has been reaped: say so, and forget it. */
static void child_failed(struct master *m)
{
	int st = m->child_st;
	if (m->child_off)
		keel_log(KEEL_LOG_INFO, "pid %ld (the called-off upgrade) has ended", (long)m->child);
	else
		keel_log(KEEL_LOG_ERROR,
		         "upgrade failed: pid %ld %s %d before it served; this process keeps serving",
		         (long)m->child, WIFSIGNALED(st) ? "was killed by signal" : "exited with status",
		         WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
	keel_timer_disarm(m->loop, &m->child_timer);
	m->child = 0;
	m->child_reaped = m->child_eof = m->child_off = false;
}

/* The new binary said it serves (a byte), or its pipe closed first (it failed). */
static void child_read_done(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct master *m = ud;
	m->child_read = NULL;
	close(m->child_fd);
	m->child_fd = -1;
	if (o.err == -ECANCELED)
		return; /* (the master's end: it waits for the process there) */
	reap_child(m);
	bool stopping = m->stopping || keel_timer_is_armed(&m->delay) || m->delay_over;
	if (o.err == 0 && o.n > 0 && !stopping && !m->child_reaped) {
		char state[40];
		keel_timer_disarm(m->loop, &m->child_timer);
		keel_log(KEEL_LOG_INFO, "upgrade: pid %ld serves; this process (pid %ld) drains and exits",
		         (long)m->child, (long)getpid());
		snprintf(state, sizeof(state), "MAINPID=%ld", (long)m->child);
		notify(m, state);
		m->upgraded = true;
		for (int j = 0; j < m->nls; j++)
			m->ls[j]->keep_path = true; /* (the new process's Unix sockets now) */
		m->child = 0; /* (no longer ours to wait for: it outlives this process) */
		stop_all(m);
		return;
	}
	if (o.err == 0 && o.n > 0 && !m->child_reaped) {
		keel_timer_disarm(m->loop, &m->child_timer); /* (it served: no 60 s kill; the end waits) */
		call_off_upgrade(m); /* (it serves, but this service is stopping: it stops too) */
		return;
	}
	/* Its pipe closed first: it is exiting. SIGCHLD reaps it; one that lingers gets a second. */
	m->child_eof = true;
	if (m->child_reaped)
		child_failed(m);
	else
		keel_timer_arm(m->loop, &m->child_timer, CHILD_EXIT_MS);
}

/*
 * The upgrade's process did not serve within UPGRADE_TIMEOUT_MS, or closed
 * its pipe and did not exit within CHILD_EXIT_MS: it is killed (SIGCHLD
 * then reports it).
 */
static void child_timeout(keel_loop *loop, keel_timer *t)
{
	(void)loop;
	struct master *m = keel_container_of(t, struct master, child_timer);
	if (m->child > 0 && !m->child_reaped) {
		if (m->child_eof)
			keel_log(KEEL_LOG_ERROR, "upgrade: pid %ld closed its pipe and runs on: killed",
			         (long)m->child);
		else
			keel_log(KEEL_LOG_ERROR, "upgrade: pid %ld did not serve within %d s: killed",
			         (long)m->child, UPGRADE_TIMEOUT_MS / 1000);
		kill(m->child, SIGKILL);
	}
}

/* SIGCHLD: the upgrade's process, if it ended (no other child of the program is touched). */
static void reap_child(struct master *m)
{
	int st;
	if (m->child > 0 && !m->child_reaped && waitpid(m->child, &st, WNOHANG) == m->child) {
		m->child_st = st;
		m->child_reaped = true;
		if (m->child_eof) /* (its pipe closed already: the failure can be told) */
			child_failed(m);
	}
}

/* At the end: a called-off upgrade's process gets CHILD_STOP_MS for its graceful stop, then SIGKILL. */
static void reap_child_wait(struct master *m)
{
	for (int i = 0; m->child > 0 && !m->child_reaped; i++) {
		if (i == CHILD_STOP_MS / 10) {
			keel_log(KEEL_LOG_WARN, "pid %ld (the called-off upgrade) still runs: killed",
			         (long)m->child);
			kill(m->child, SIGKILL);
		}
		int st;
		pid_t got = waitpid(m->child, &st, i >= CHILD_STOP_MS / 10 ? 0 : WNOHANG);
		if (got == m->child) {
			m->child_st = st;
			m->child_reaped = true;
		} else if (got < 0) {
			break;
		} else {
			usleep(10000);
		}
	}
}

/* ---- The master ----------------------------------------------------------- */

static void master_on_signal(struct master *m, int signo)
{
	switch (signo) {
	case SIGHUP: reload(m); break;
	case SIGUSR1: reopen(m); break;
	case SIGUSR2: upgrade(m); break;
	case SIGCHLD: reap_child(m); break;
	case SIGTERM:
		if (!m->stopping && !keel_timer_is_armed(&m->delay) && m->serving &&
		    m->serving->cfg.stop_delay_ms > 0) {
			notify(m, "STOPPING=1"); /* (first: /_keel/ready says 503 once the line is out) */
			keel_log(KEEL_LOG_INFO, "SIGTERM received: not ready; stopping in %llu ms",
			         (unsigned long long)m->serving->cfg.stop_delay_ms);
			call_off_upgrade(m);
			keel_timer_arm(m->loop, &m->delay, m->serving->cfg.stop_delay_ms);
			break;
		}
		/* fall through */
	default:
		if (m->stopping) { /* (a second SIGINT/SIGTERM in the drain: the grace period runs on) */
			keel_log(KEEL_LOG_INFO, "%s received: already stopping", strsignal(signo));
			break;
		}
		keel_log(KEEL_LOG_INFO, "%s received, stopping", strsignal(signo));
		stop_all(m);
		break;
	}
}

int keel__master_run(const keel__master *o)
{
	/*
	 * The signals it acts on, blocked in every thread (the workers inherit
	 * the mask) and taken by the master's signalfd; the others keep their
	 * dispositions. The caller's mask comes back at the end.
	 */
	int sigs[6], nsigs = 0;
	sigs[nsigs++] = SIGINT;
	sigs[nsigs++] = SIGTERM;
	if (o->reload)
		sigs[nsigs++] = SIGHUP;
	if (o->reopen)
		sigs[nsigs++] = SIGUSR1;
	if (o->exec_path) {
		sigs[nsigs++] = SIGUSR2;
		sigs[nsigs++] = SIGCHLD;
	}
	sigset_t set, old;
	sigemptyset(&set);
	for (int i = 0; i < nsigs; i++)
		sigaddset(&set, sigs[i]);
	pthread_sigmask(SIG_BLOCK, &set, &old);
	signal(SIGPIPE, SIG_IGN);

	struct master m = {.o = o, .child_fd = -1};
	pthread_mutex_init(&m.mu, NULL);
	pthread_cond_init(&m.cv, NULL);
	keel_timer_init(&m.delay, delay_over);
	keel_timer_init(&m.child_timer, child_timeout);
	keel_loop_opts lo;
	keel_loop_opts_default(&lo);
	lo.quiet = true;
	lo.recv_buf_count = 1;
	lo.recv_buf_size = 64;
	int err = keel_loop_new(&m.loop, &lo);
	bool *taken = err || o->ninherited == 0 ? NULL : calloc((size_t)o->ninherited, sizeof(*taken));
	if (err || (o->ninherited > 0 && !taken)) {
		keel_log(KEEL_LOG_ERROR, "cannot create the main loop: %s",
		         keel_strerror(err ? err : -ENOMEM));
		if (!err)
			keel_loop_free(m.loop);
		m.status = err ? err : -ENOMEM;
		goto out;
	}
	keel__gen first = o->gen;
	if (first.nlisten < 1 || first.nlisten > KEEL__LISTENS_MAX) {
		keel_log(KEEL_LOG_ERROR, "%d listen addresses: 1 to %d", first.nlisten, KEEL__LISTENS_MAX);
		m.status = -EINVAL;
		goto out_loop;
	}
	bool no_taken[1] = {false};
	struct {
		char path[sizeof(((struct sockaddr_un *)0)->sun_path) + 1];
		dev_t dev;
		ino_t ino;
	} dropped[KEEL__LISTENS_MAX]; /* an upgrade's Unix sockets the configuration no longer has */
	int ndropped = 0;
	for (int i = 0; i < first.nlisten; i++)
		if (!(m.ls[m.nls++] =
		          lset_make(&m, &first.listen[i], first.workers, taken ? taken : no_taken)))
			m.status = -EADDRNOTAVAIL;
	for (int i = 0; i < o->ninherited; i++) {
		if (taken[i])
			continue;
		char name[ADDR_MAX] = "?";
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		memset(&ss, 0, sizeof(ss));
		if (getsockname(o->inherited[i], (struct sockaddr *)&ss, &len) == 0)
			keel_addr_format((struct sockaddr *)&ss, name, sizeof(name));
		if (o->upgrade) {
			keel_log(KEEL_LOG_WARN, "inherited socket %s is not in the configuration: closed",
			         name);
			close(o->inherited[i]);
			/* Its file goes once this process serves (the old one keeps it until then). */
			const struct sockaddr_un *un = (const void *)&ss;
			struct stat st;
			if (ss.ss_family == AF_UNIX && un->sun_path[0] == '/' &&
			    ndropped < KEEL__LISTENS_MAX && lstat(un->sun_path, &st) == 0 &&
			    S_ISSOCK(st.st_mode)) {
				size_t n = strnlen(un->sun_path, sizeof(un->sun_path));
				memcpy(dropped[ndropped].path, un->sun_path, n);
				dropped[ndropped].path[n] = '\0';
				dropped[ndropped].dev = st.st_dev;
				dropped[ndropped++].ino = st.st_ino;
			}
		} else if (m.status == 0) {
			keel_log(KEEL_LOG_ERROR,
			         "socket %d (%s) passed by the service manager matches no listen "
			         "address (%s%s)",
			         o->inherited[i], name, first.listen[0].addr,
			         first.nlisten > 1 ? ", ..." : "");
			m.status = -EINVAL;
		}
	}
	int most = 0; /* (each socket needs a worker) */
	for (int j = 0; j < m.nls; j++)
		if (m.ls[j] && m.ls[j]->nfds > most)
			most = m.ls[j]->nfds;
	if (m.status == 0 && most > first.workers) {
		keel_log(KEEL_LOG_WARN, "%d listening sockets inherited: %d workers, not %d", most, most,
		         first.workers);
		first.workers = most;
	}
	for (int j = 0; j < m.nls && m.status == 0; j++)
		if (m.ls[j]->reuseport && m.ls[j]->nfds < first.workers &&
		    lset_grow(m.ls[j], first.workers) < 0)
			m.status = -EADDRINUSE;
	if (m.status != 0)
		goto out_loop;
	if (!(m.serving = gen_start(&m, &first, m.ls, false, &m.status)))
		goto out_loop;
	char where[512];
	keel_log(KEEL_LOG_INFO, "%s%slistening on %s (%d worker%s, backend %s)", o->what ? o->what : "",
	         o->what ? " " : "", lsets_bound(m.ls, m.nls, where, sizeof(where)), first.workers,
	         first.workers == 1 ? "" : "s", keel_loop_backend(m.loop));
	if (o->ready_fd >= 0) {
		ssize_t wr = write(o->ready_fd, "1", 1);
		(void)wr; /* (the old process reads it, or has gone: nothing to do either way) */
		close(o->ready_fd);
		/* This process serves: the Unix socket files are its own now, to remove at its end. */
		for (int j = 0; j < m.nls; j++)
			m.ls[j]->keep_path = false;
		for (int i = 0; i < ndropped; i++) {
			struct stat st;
			if (lstat(dropped[i].path, &st) == 0 && st.st_dev == dropped[i].dev &&
			    st.st_ino == dropped[i].ino)
				unlink(dropped[i].path);
		}
	}
	notify(&m, "READY=1");

	keel_promise *sig = NULL;
	while (m.gens) {
		if (!sig) /* (while stopping too: a signal then must not end the process when the mask goes) */
			sig = keel_signal_wait(m.loop, sigs, nsigs);
		keel_loop_run_once(m.loop, 1000);
		if (sig && keel_promise_is_settled(sig)) {
			keel_outcome so = keel_promise_outcome(sig);
			keel_promise_release(sig);
			sig = NULL;
			if (so.err == 0)
				master_on_signal(&m, (int)so.n);
		}
		reap_workers(&m);
		if ((m.delay_over || m.failed) && !m.stopping) {
			stop_all(&m);
			reap_workers(&m);
		}
	}
	if (sig) {
		keel_promise_cancel(sig);
		while (!keel_promise_is_settled(sig))
			keel_loop_run_once(m.loop, 100);
		keel_promise_release(sig);
	}
	if (m.child_read)
		keel_promise_cancel(m.child_read);
	while (m.child_read)
		keel_loop_run_once(m.loop, 100);
	keel_timer_disarm(m.loop, &m.delay);
	keel_timer_disarm(m.loop, &m.child_timer);
	reap_child_wait(&m); /* (an upgrade called off by the stop: told to stop too) */
out_loop:
	lsets_unref(m.ls, m.nls);
	keel_loop_free(m.loop);
out:
	if (m.child_fd >= 0)
		close(m.child_fd);
	free(taken);
	pthread_mutex_destroy(&m.mu);
	pthread_cond_destroy(&m.cv);
	/* Signals that came after the last wait are dropped, not delivered as the mask goes. */
	struct timespec none = {0, 0};
	while (sigtimedwait(&set, NULL, &none) > 0)
		;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return m.status;
}

int keel__workers_run(const char *what, const char *addr, int n, keel__worker_main main_fn,
                      keel__worker_stop stop_fn, void *arg)
{
	keel__listen l = {.addr = addr, .perm = {0, (uid_t)-1, (gid_t)-1}};
	keel__master m = {
	    .what = what,
	    .gen = {.arg = arg, .listen = &l, .nlisten = 1, .workers = n},
	    .main_fn = main_fn,
	    .stop_fn = stop_fn,
	    .ready_fd = -1,
	};
	return keel__master_run(&m);
}
