/*
 * Worker threads for servers, and the master that runs them (workers.c):
 * internal, for keel_http_main and the keel command line.
 *
 * The master is the calling thread. It owns the listening sockets and
 * lends each worker a descriptor of one; it turns signals into what an
 * operator expects of a server:
 *   SIGINT, SIGTERM  a graceful stop: the listening sockets are shut at once
 *                    (new clients refused), then every worker drains
 *                    (SIGTERM first waits stop_delay_ms, not ready);
 *   SIGHUP           reload: a new generation of workers on the same
 *                    sockets, then the old one drains;
 *   SIGUSR1          reopen the logs;
 *   SIGUSR2          binary upgrade: the binary is started again with the
 *                    listening sockets (LISTEN_FDS), and once it reports
 *                    ready this process drains and exits.
 */
#ifndef KEEL_NET_WORKERS_H
#define KEEL_NET_WORKERS_H

#include <stdbool.h>
#include <stdint.h>

#include "keel/loop.h"
#include "listen.h"

/*
 * A worker's body: serve on loop with lfds[0 .. nlfds-1] (its own
 * descriptors of the listening sockets, one per listen address: it closes
 * them, and never shuts a socket down) until stopped; call
 * keel__worker_serving once it accepts; return 0 or an error.
 */
typedef int (*keel__worker_main)(keel_loop *loop, int index, const int *lfds, int nlfds, void *arg);
/* Posted to every worker's loop of a generation to end: begin a graceful stop. */
typedef void (*keel__worker_stop)(keel_loop *loop, void *arg);

/* Called by a worker's body (on its thread) once it serves: the master waits for it. */
void keel__worker_serving(void);

/* Listen addresses of one generation: at most 16 (KEEL_ACCEPTOR_LISTENERS_MAX). */
#define KEEL__LISTENS_MAX 16

/* One listen address and how to bind it. */
typedef struct keel__listen {
	const char *addr;     /* ADDR:PORT, numeric (a port of 0 is chosen once), or unix:/path */
	unsigned flags;       /* KEEL_TCP_V6ONLY */
	keel__unix_perm perm; /* a Unix socket's file: mode and owner */
} keel__listen;

/* What a generation of workers runs: the arg its bodies get, where, and how many. */
typedef struct keel__gen {
	void *arg;
	const keel__listen *listen; /* nlisten of them, 1..KEEL__LISTENS_MAX, no two the same */
	int nlisten;
	int workers;            /* >= 1 */
	uint64_t stop_delay_ms; /* SIGTERM: this long not ready, still serving, before the stop */
} keel__gen;

typedef struct keel__master {
	const char *what; /* names the server in "WHAT listening on ..." */
	keel__gen gen;    /* the first generation (its arg is the caller's: never released) */
	keel__worker_main main_fn;
	keel__worker_stop stop_fn;
	void *ud;
	/*
	 * Listening sockets passed in (socket activation, or an upgrade): each
	 * one bound to a gen.listen address takes the place of binding it; one
	 * that is bound to none is
	 * an error, unless upgrade is set (then it is closed with a warning).
	 * foreign[i]: the service manager's socket, closed but never shut down.
	 */
	const int *inherited;
	const bool *foreign;
	int ninherited;
	bool upgrade;
	int ready_fd; /* >= 0: written and closed once serving (the process that started this one) */
	/* SIGHUP (optional): fill *g for a new generation and return 0, or log why not and return < 0. */
	int (*reload)(void *ud, keel__gen *g);
	/*
	 * A generation's arg, now that its workers are gone: one reload made,
	 * or the first generation's (still the caller's to free at the end).
	 */
	void (*release)(void *ud, void *arg);
	/* SIGUSR1 (optional): reopen a generation's logs. */
	void (*reopen)(void *ud, void *arg);
	/* sd_notify-style state changes (optional): "READY=1", "RELOADING=1", "STOPPING=1", "MAINPID=N". */
	void (*notify)(void *ud, const char *state);
	/* SIGUSR2 (optional): the binary to start, and its argv (NULL-terminated); NULL: no upgrades. */
	const char *exec_path;
	char *const *exec_argv;
} keel__master;

/*
 * Bind (or take over) the listening sockets, start the first generation,
 * log "WHAT listening on ADDR:PORT[, ADDR:PORT...] (n workers, backend B)",
 * and run until a
 * stop, or until a worker of the serving generation returns non-zero.
 * Returns 0, a negative errno (a listener, thread or loop that could not be
 * made, logged), or the first non-zero status a worker returned. The
 * caller's signal mask is restored at the end.
 */
int keel__master_run(const keel__master *m);

/* keel__master_run with a first generation only, no hooks. */
int keel__workers_run(const char *what, const char *addr, int n, keel__worker_main main_fn,
                      keel__worker_stop stop_fn, void *arg);

#endif
