/*
 * The live dashboard (board.c): each worker samples its server once a
 * second into a process-wide history of the last BOARD_SAMPLES seconds,
 * and any worker serves all of it -- an HTML page with inline canvas plots
 * (GET PATH), and the data it draws (GET PATH?format=json).
 */
#ifndef KEEL_CLI_BOARD_H
#define KEEL_CLI_BOARD_H

#include "keel/http.h"
#include "keel/timer.h"

enum { BOARD_SAMPLES = 300, BOARD_INTERVAL_MS = 1000, BOARD_WORKERS_MAX = 1024 };

/* One worker's sampler: embedded in the worker, on its loop. */
typedef struct board_worker {
	keel_timer timer;
	keel_http_server *srv;
	int index;
	uint64_t requests, shed; /* the counters at the last sample (rates are the differences) */
	bool on;
} board_worker;

/* Begin sampling srv as worker index (its slot: a reload's worker i continues worker i's history). */
void board_worker_start(board_worker *b, keel_loop *loop, keel_http_server *srv, int index);
/* Stop sampling (before the server stops: a draining worker no longer shares the slot). */
void board_worker_stop(board_worker *b, keel_loop *loop);

/* The handler: the page, or ?format=json the history of every worker. ud unused. */
keel_promise *board_handler(keel_http_request *req, void *ud);

#endif
