/*
 * hello: the plaintext benchmark server on keel's HTTP/1.1 server.
 *
 *   usage: build/examples/hello [--listen ADDR:PORT] [--workers N] [--max-conns N]
 *                               [--queue-delay-us N] [--status]
 *          (default 127.0.0.1:8080, one worker per online CPU; --max-conns: connections
 *          per worker, default 10000; --queue-delay-us: admission budget, see
 *          keel_http_config, default 20000, 0 = never shed; --status: /_keel/status)
 *
 *   GET /plaintext   -> 200, text/plain, "Hello, World!" (13 bytes)
 *   GET /work?us=N   -> burns N microseconds of CPU (default 50), then 200 "done"
 *   GET /sleep?ms=N  -> waits N milliseconds (default 10) on a loop timer, no CPU, then
 *                       200 "slept" (a slow backend for load tests: build/keel load)
 *
 * Each worker thread has its own loop and its own SO_REUSEPORT listener
 * (keel_http_main).
 * SIGINT/SIGTERM stop the workers gracefully.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "keel/http.h"
#include "keel/keel.h"

static const char hello[] = "Hello, World!";

static keel_promise *plaintext(keel_http_request *req, void *ud)
{
	(void)ud;
	return keel_http_respond(req, 200, "text/plain", hello, sizeof(hello) - 1);
}

static keel_promise *work(keel_http_request *req, void *ud)
{
	(void)ud;
	long us = 50;
	const char *q = req->query.ptr;
	if (req->query.len > 3 && memcmp(q, "us=", 3) == 0)
		us = strtol(q + 3, NULL, 10);
	if (us < 0 || us > 1000000)
		return keel_http_respond(req, 400, "text/plain", "bad us\n", 7);
	struct timespec t0, t;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
	do
		clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
	while ((t.tv_sec - t0.tv_sec) * 1000000L + (t.tv_nsec - t0.tv_nsec) / 1000 < us);
	return keel_http_respond(req, 200, "text/plain", "done\n", 5);
}

static keel_outcome slept(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	(void)in;
	keel_http_request *req = ud;
	req->resp.status = 200;
	req->resp.content_type = "text/plain";
	req->resp.body.ptr = "slept\n";
	req->resp.body.len = 6;
	return keel_ok(0, &req->resp);
}

/* The server keeps req alive until this promise settles, and cancels it if the client leaves. */
static keel_promise *sleep_route(keel_http_request *req, void *ud)
{
	(void)ud;
	long ms = 10;
	const char *q = req->query.ptr;
	if (req->query.len > 3 && memcmp(q, "ms=", 3) == 0)
		ms = strtol(q + 3, NULL, 10);
	if (ms < 0 || ms > 600000)
		return keel_http_respond(req, 400, "text/plain", "bad ms\n", 7);
	return keel_map(keel_sleep(req->loop, (uint64_t)ms), slept, req);
}

struct opts {
	bool status;
};

/* Each worker's routes, on its own thread (keel_http_main). */
static int setup(keel_http_server *srv, keel_loop *loop, unsigned worker, void *ud)
{
	(void)loop;
	const struct opts *o = ud;
	static _Thread_local char label[24];
	snprintf(label, sizeof(label), "%u", worker);
	int err = keel_http_route(srv, "GET", "/plaintext", false, plaintext, NULL);
	if (!err)
		err = keel_http_route(srv, "GET", "/work", false, work, NULL);
	if (!err)
		err = keel_http_route(srv, "GET", "/sleep", false, sleep_route, NULL);
	if (!err && o->status)
		err =
		    keel_http_route(srv, "GET", "/_keel/status", KEEL_HTTP_NO_SHED, keel_http_status, label);
	return err;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {{"listen", required_argument, NULL, 'l'},
	                                     {"workers", required_argument, NULL, 'w'},
	                                     {"max-conns", required_argument, NULL, 'm'},
	                                     {"queue-delay-us", required_argument, NULL, 'q'},
	                                     {"status", no_argument, NULL, 's'},
	                                     {"help", no_argument, NULL, 'h'},
	                                     {NULL, 0, NULL, 0}};
	static const char usage[] = "usage: %s [--listen ADDR:PORT] [--workers N] [--max-conns N] "
	                            "[--queue-delay-us N] [--status]\n";
	const char *addr = "127.0.0.1:8080";
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	keel_http_config cfg;
	keel_http_config_default(&cfg);
	bool status = false;
	int c;
	while ((c = getopt_long(argc, argv, "l:w:h", opts, NULL)) != -1) {
		char *end = NULL;
		long v = optarg ? strtol(optarg, &end, 10) : 0;
		bool bad = optarg && (*end || end == optarg || v < 0);
		if (c == 'l') {
			addr = optarg;
		} else if (c == 'w' && !bad) {
			n = v;
		} else if (c == 'm' && !bad && v > 0) {
			cfg.conns_max = (unsigned)v;
		} else if (c == 'q' && !bad && v <= 10000000) {
			cfg.queue_delay_max_us = (uint32_t)v;
		} else if (c == 's') {
			status = true;
		} else {
			fprintf(stderr, usage, argv[0]);
			return c == 'h' ? 0 : 2;
		}
	}
	if (n < 1 || n > 256 || optind != argc) {
		fprintf(stderr, usage, argv[0]);
		return 2;
	}
	struct opts o = {.status = status};
	keel_http_main_opts m = {
	    .listen = addr, .workers = (unsigned)n, .cfg = &cfg, .grace_ms = 5000, .setup = setup, .ud = &o};
	return keel_http_main(&m) ? 1 : 0; /* until SIGINT/SIGTERM, then a graceful stop */
}
