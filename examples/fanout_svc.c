/*
 * fanout_svc: a tiny upstream service for the fan-out example (examples/fanout.c),
 * on keel's HTTP/1.1 server.
 *
 *   usage: build/examples/fanout_svc --listen ADDR:PORT --kind price|info [--delay-ms N] [--fail]
 *
 *   --kind price   GET /price?sym=X -> 200 {"sym":"X","price":123.45}
 *   --kind info    GET /info?sym=X  -> 200 {"sym":"X","name":"X Corporation","currency":"USD"}
 *   --delay-ms N   every answer waits N ms on a loop timer (keel_sleep: the loop goes on serving)
 *   --fail         every answer is 500 {"error":"injected failure","kind":"..."}
 *
 * A missing or bad sym (not [A-Za-z0-9.]{1,16}, percent-encoding allowed) is 400, any other
 * path 404, both with a JSON error. GET /_keel/status gives the server's live counters (never
 * delayed, never shed). The price is a hash of the symbol, so the same symbol always has the
 * same price on every instance. Port 0 picks a free port; the "listening on" line says which.
 * SIGINT/SIGTERM stop it gracefully.
 *
 * fanout.c includes this file (with FANOUT_SVC_EMBEDDED defined, which leaves out main) to run
 * the same services in its self-contained demo and to share the symbol parsing: the handlers
 * exist once.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "keel/http.h"
#include "keel/keel.h"

/* ---- Shared with fanout.c ------------------------------------------------ */

#define SYM_MAX 16

static int hexval(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

/*
 * The value of "sym" in a query string, percent-decoded into sym. Returns 0,
 * -ENOENT when there is none (or it is empty), -EINVAL when it is not
 * [A-Za-z0-9.]{1,16}. Those characters are all unreserved in a URL, so a
 * valid symbol goes into an upstream's target as it is.
 */
static int query_sym(keel_str query, char sym[SYM_MAX + 1])
{
	const char *p = query.ptr, *end = query.ptr + query.len;
	while (p < end) {
		const char *amp = memchr(p, '&', (size_t)(end - p));
		const char *stop = amp ? amp : end;
		if (stop - p >= 4 && memcmp(p, "sym=", 4) == 0) {
			size_t n = 0;
			for (const char *s = p + 4; s < stop; s++) {
				char ch = *s;
				if (ch == '%') {
					int hi = s + 2 < stop ? hexval(s[1]) : -1,
					    lo = hi >= 0 ? hexval(s[2]) : -1;
					if (lo < 0)
						return -EINVAL;
					ch = (char)(hi * 16 + lo);
					s += 2;
				}
				bool ok = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
				          (ch >= '0' && ch <= '9') || ch == '.';
				if (!ok || n == SYM_MAX)
					return -EINVAL;
				sym[n++] = ch;
			}
			sym[n] = '\0';
			return n ? 0 : -ENOENT;
		}
		p = stop + 1;
	}
	return -ENOENT;
}

/* ---- The service ---------------------------------------------------------- */

struct svc_conf {
	const char *kind; /* "price" or "info" */
	uint64_t delay_ms;
	bool fail;
};

static keel_outcome svc_delayed(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	(void)in;
	keel_http_request *req = ud;
	return keel_ok(0, &req->resp);
}

/* Answer with a JSON body formatted into the request's arena, after the configured delay. */
__attribute__((format(printf, 4, 5))) static keel_promise *
svc_answer(keel_http_request *req, const struct svc_conf *conf, int status, const char *fmt, ...)
{
	enum { BODY_MAX = 256 }; /* the longest answer is about 100 bytes */
	char *body = keel_ctx_alloc(keel_http_request_ctx(req), BODY_MAX);
	if (!body)
		return keel_http_respond(req, 500, "text/plain", "out of memory\n", 14);
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(body, BODY_MAX, fmt, ap);
	va_end(ap);
	if (n < 0 || n >= BODY_MAX) {
		n = snprintf(body, BODY_MAX, "{\"error\":\"answer too long\"}\n");
		status = 500;
	}
	if (!conf->delay_ms)
		return keel_http_respond(req, status, "application/json", body, (size_t)n);
	req->resp.status = status;
	req->resp.content_type = "application/json";
	req->resp.body.ptr = body;
	req->resp.body.len = (size_t)n;
	/* If the client leaves, the server cancels this promise and the timer goes with it. */
	return keel_map(keel_sleep(req->loop, conf->delay_ms), svc_delayed, req);
}

static keel_promise *svc_handle(keel_http_request *req, void *ud)
{
	const struct svc_conf *conf = ud;
	if (conf->fail)
		return svc_answer(req, conf, 500, "{\"error\":\"injected failure\",\"kind\":\"%s\"}\n",
		                  conf->kind);
	char sym[SYM_MAX + 1];
	int err = query_sym(req->query, sym);
	if (err == -ENOENT)
		return svc_answer(req, conf, 400, "{\"error\":\"missing sym\"}\n");
	if (err)
		return svc_answer(req, conf, 400, "{\"error\":\"bad sym: want [A-Za-z0-9.]{1,16}\"}\n");
	if (strcmp(conf->kind, "info") == 0)
		return svc_answer(req, conf, 200,
		                  "{\"sym\":\"%s\",\"name\":\"%s Corporation\",\"currency\":\"USD\"}\n", sym,
		                  sym);
	uint32_t h = 2166136261u; /* FNV-1a: the same symbol has the same price everywhere */
	for (const char *s = sym; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	uint32_t cents = 100 + h % 99900; /* 1.00 .. 999.99 */
	return svc_answer(req, conf, 200, "{\"sym\":\"%s\",\"price\":%u.%02u}\n", sym, cents / 100,
	                  cents % 100);
}

static keel_promise *svc_not_found(keel_http_request *req, void *ud)
{
	return svc_answer(req, ud, 404, "{\"error\":\"not found\"}\n");
}

/*
 * Listen on addr (tcp_flags: KEEL_TCP_REUSEPORT when several loops share
 * it) and serve conf's kind there. conf is borrowed for the server's life.
 * Returns the listening socket (the caller closes it after freeing *out)
 * or a negative errno.
 */
static int svc_start(keel_loop *loop, const char *addr, unsigned tcp_flags, const struct svc_conf *conf,
                     keel_http_server **out)
{
	int lfd = keel_tcp_listen(addr, 1024, tcp_flags);
	if (lfd < 0)
		return lfd;
	const char *path = strcmp(conf->kind, "info") == 0 ? "/info" : "/price";
	keel_http_server *s;
	int err = keel_http_server_new(&s, loop, NULL);
	if (!err)
		err = keel_http_route(s, "GET", path, 0, svc_handle, (void *)conf);
	if (!err)
		err = keel_http_route(s, NULL, "/", KEEL_HTTP_PREFIX, svc_not_found, (void *)conf);
	if (!err)
		err = keel_http_route(s, "GET", "/_keel/status", KEEL_HTTP_NO_SHED, keel_http_status, NULL);
	if (!err)
		err = keel_http_server_start(s, lfd);
	if (err) {
		if (s)
			keel_http_server_free(s);
		close(lfd);
		return err;
	}
	*out = s;
	return lfd;
}

#ifndef FANOUT_SVC_EMBEDDED

/* addr with its port replaced by the one lfd is bound to (port 0 resolved). */
static void svc_bound_addr(const char *addr, int lfd, char *out, size_t size)
{
	const char *colon = strrchr(addr, ':');
	snprintf(out, size, "%.*s:%d", (int)(colon - addr), addr, keel_tcp_port(lfd));
}

#include <getopt.h>
#include <signal.h>
#include <stdlib.h>

struct svc_main {
	keel_loop *loop;
	keel_http_server *srv;
};

static void svc_stopped(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	struct svc_main *m = ud;
	keel_loop_stop(m->loop);
}

static void svc_signalled(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct svc_main *m = ud;
	if (o.err == 0)
		keel_promise_done(keel_http_server_stop(m->srv, 2000), svc_stopped, m);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"listen", required_argument, NULL, 'l'},   {"kind", required_argument, NULL, 'k'},
	    {"delay-ms", required_argument, NULL, 'd'}, {"fail", no_argument, NULL, 'f'},
	    {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0}};
	static const char usage[] =
	    "usage: %s --listen ADDR:PORT --kind price|info [--delay-ms N] [--fail]\n";
	static struct svc_conf conf;
	const char *addr = NULL;
	int c;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		char *end = NULL;
		long v = optarg ? strtol(optarg, &end, 10) : 0;
		bool number = optarg && end != optarg && !*end && v >= 0;
		if (c == 'l') {
			addr = optarg;
		} else if (c == 'k' && (strcmp(optarg, "price") == 0 || strcmp(optarg, "info") == 0)) {
			conf.kind = optarg;
		} else if (c == 'd' && number && v <= 3600000) {
			conf.delay_ms = (uint64_t)v;
		} else if (c == 'f') {
			conf.fail = true;
		} else {
			fprintf(stderr, usage, argv[0]);
			return c == 'h' ? 0 : 2;
		}
	}
	if (!addr || !conf.kind || optind != argc) {
		fprintf(stderr, usage, argv[0]);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	keel_loop *loop;
	int err = keel_loop_new(&loop, NULL);
	if (err < 0) {
		fprintf(stderr, "fanout_svc: %s\n", keel_strerror(err));
		return 1;
	}
	static struct svc_main m;
	m.loop = loop;
	int lfd = svc_start(loop, addr, 0, &conf, &m.srv);
	if (lfd < 0) {
		fprintf(stderr, "fanout_svc: cannot serve on %s: %s\n", addr, keel_strerror(lfd));
		keel_loop_free(loop);
		return 1;
	}
	static const int sigs[] = {SIGINT, SIGTERM};
	keel_promise *sig = keel_signal_wait(loop, sigs, 2);
	keel_promise_done(sig, svc_signalled, &m);
	char bound[128];
	svc_bound_addr(addr, lfd, bound, sizeof(bound));
	fprintf(stderr, "fanout_svc: listening on %s (kind %s, delay %llu ms%s, %s)\n", bound, conf.kind,
	        (unsigned long long)conf.delay_ms, conf.fail ? ", failing" : "", keel_loop_backend(loop));
	keel_loop_run(loop);
	keel_http_server_free(m.srv);
	close(lfd);
	keel_loop_free(loop);
	return 0;
}

#endif
