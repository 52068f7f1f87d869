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
 * Each worker thread has its own loop and its own SO_REUSEPORT listener.
 * SIGINT/SIGTERM stop the workers gracefully.
 */
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
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

struct worker {
	pthread_t th;
	int lfd;
	keel_loop *loop;
	keel_http_server *srv;
	const keel_http_config *cfg;
	bool status;
	char label[24];
	int ready;
	pthread_mutex_t mu;
	pthread_cond_t cv;
};

static void stopped(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	keel_loop_stop(ud);
}

static void stop_worker(keel_loop *loop, void *ud)
{
	struct worker *w = ud;
	keel_promise_done(keel_http_server_stop(w->srv, 5000), stopped, loop);
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	int err = keel_loop_new(&w->loop, NULL);
	if (err == 0) {
		err = keel_http_server_new(&w->srv, w->loop, w->cfg);
		if (err < 0) {
			fprintf(stderr, "hello: cannot set up the server: %s\n", keel_strerror(err));
			keel_loop_free(w->loop);
		}
	}
	if (err == 0) {
		keel_http_route(w->srv, "GET", "/plaintext", false, plaintext, NULL);
		keel_http_route(w->srv, "GET", "/work", false, work, NULL);
		keel_http_route(w->srv, "GET", "/sleep", false, sleep_route, NULL);
		if (w->status)
			keel_http_route(w->srv, "GET", "/_keel/status", KEEL_HTTP_NO_SHED, keel_http_status,
			                w->label);
		keel_http_server_start(w->srv, w->lfd);
	}
	pthread_mutex_lock(&w->mu);
	w->ready = err == 0 ? 1 : -1;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
	if (err)
		return NULL;
	keel_loop_run(w->loop);
	keel_http_server_free(w->srv);
	close(w->lfd);
	keel_loop_free(w->loop);
	return NULL;
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
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	struct worker *ws = calloc((size_t)n, sizeof(*ws));
	char bound[128];
	snprintf(bound, sizeof(bound), "%s", addr);
	for (long i = 0; i < n; i++) {
		ws[i].lfd = keel_tcp_listen(bound, 4096, KEEL_TCP_REUSEPORT);
		if (ws[i].lfd < 0) {
			fprintf(stderr, "hello: listen %s: %s\n", bound, keel_strerror(ws[i].lfd));
			return 1;
		}
		if (i == 0) {
			const char *colon = strrchr(addr, ':');
			snprintf(bound, sizeof(bound), "%.*s:%d", (int)(colon - addr), addr,
			         keel_tcp_port(ws[0].lfd));
		}
		ws[i].cfg = &cfg;
		ws[i].status = status;
		snprintf(ws[i].label, sizeof(ws[i].label), "%ld", i);
		pthread_mutex_init(&ws[i].mu, NULL);
		pthread_cond_init(&ws[i].cv, NULL);
		pthread_create(&ws[i].th, NULL, worker_main, &ws[i]);
		pthread_mutex_lock(&ws[i].mu);
		while (!ws[i].ready)
			pthread_cond_wait(&ws[i].cv, &ws[i].mu);
		pthread_mutex_unlock(&ws[i].mu);
		if (ws[i].ready < 0) {
			fprintf(stderr, "hello: cannot start worker %ld\n", i);
			return 1;
		}
	}
	fprintf(stderr, "hello: listening on %s (%ld workers, %s)\n", bound, n,
	        keel_loop_backend(ws[0].loop));
	int sig;
	sigwait(&set, &sig);
	for (long i = 0; i < n; i++)
		keel_loop_post(ws[i].loop, stop_worker, &ws[i]);
	for (long i = 0; i < n; i++)
		pthread_join(ws[i].th, NULL);
	free(ws);
	return 0;
}
