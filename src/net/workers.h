/*
 * Worker threads for servers (workers.c): internal, for keel_http_main and
 * the keel command line.
 */
#ifndef KEEL_NET_WORKERS_H
#define KEEL_NET_WORKERS_H

#include "keel/loop.h"

/* A worker's body: serve on loop with listen_fd (it closes it) until stopped; 0 or an error. */
typedef int (*keel__worker_main)(keel_loop *loop, int index, int listen_fd, void *arg);
/* Posted to every worker's loop on SIGINT/SIGTERM: begin a graceful stop. */
typedef void (*keel__worker_stop)(keel_loop *loop, void *arg);

/*
 * Start n worker threads, each with its own loop and its own SO_REUSEPORT
 * listener on addr (a port of 0 is chosen once and shared); log "WHAT
 * listening on ADDR:PORT (n workers, backend B)"; run until SIGINT or
 * SIGTERM (blocked in every thread, taken by a signalfd here, the caller's
 * mask restored at the end) or until a worker's main_fn returns non-zero,
 * then post stop_fn to every worker and wait for them. Returns 0, a negative errno
 * (a listener, thread or loop that could not be made, logged), or the
 * first non-zero status a worker returned.
 */
int keel__workers_run(const char *what, const char *addr, int n, keel__worker_main main_fn,
                      keel__worker_stop stop_fn, void *arg);

#endif
