/*
 * A test server for the HTTP tests: one loop, routes that exercise the
 * server's paths. Prints "listening on ADDR:PORT" to stderr.
 *
 *   http_testsrv [--listen ADDR:PORT] [--body-max N] [--conns-max N] [--pipeline-max N]
 *                [--header-timeout-ms N] [--idle-timeout-ms N] [--body-timeout-ms N]
 *                [--send-timeout-ms N] [--requests-per-conn N] [--headers-max N]
 *                [--head-max N] [--line-max N]
 *
 *   GET  /hello            13-byte text/plain
 *   POST /echo             the request body back (Content-Length or chunked in)
 *   GET  /slow?ms=N        answers after N ms (keel_sleep), body "slow N"
 *   GET  /big?n=N          N bytes of a repeating pattern (arena memory)
 *   GET  /status?code=N    an empty response with that status
 *   GET  /fail?err=N       the handler rejects with -N (e.g. 2 -> 404)
 *   GET  /headers          the request's headers as "name: value" lines
 *   GET  /prefix/...       prefix route: echoes the path
 *   GET  /stats            the server's counters
 *   GET  /stream?n=N&ms=M  N pieces "piece i\n", M ms apart, streamed (chunked)
 *
 * Routes that stream their request body (KEEL_HTTP_STREAM_BODY):
 *   POST /upload?ms=M      reads the body piece by piece (M ms pause after each),
 *                          answers "bytes B pieces P maxpiece X adler32 H" (Adler-32 of the body);
 *                          a read error becomes the handler's error (400/413/...)
 *   POST /duplex?ms=M      echoes the body back as it arrives, streamed (chunked); answers M ms late
 *   POST /early?stream=S   answers "early" at once, without reading the body (S=1: as a streamed body)
 *   (/upload's answer ends with "trailers name=value;...", the request's trailers, when it has
 *   some; /duplex sends them back as the response's trailers)
 *   POST /trailers?stream=S  "bytes N" and the request's trailers, answered with trailers
 *                          (X-Checksum, Grpc-Status and a Content-Length that must be left out);
 *                          S=1: as a streamed body (chunked to HTTP/1.1); file=1: an empty file's
 *                          body instead; fail=1: the handler fails (500) after setting them
 *
 *   --body-stream-max N    limit on streamed bodies
 *   --http2                HTTP/2 with prior knowledge too (h2c), --h2-streams-max N
 *
 * Admission and bounds:
 *   GET  /burn?us=N        burns N microseconds of CPU in the handler, then "burnt"
 *   GET  /_keel/status     keel_http_status (never shed)
 *   --queue-delay-max-us N, --inflight-max N, --conn-out-max N  (0 turns the first off),
 *   --body-mem-max N
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "keel/http.h"
#include "keel/keel.h"
#include "keel/static.h"

static unsigned long wrapped_frees; /* context hooks of the wrapper around the static handler that ran */

static keel_loop *loop;
static keel_http_server *srv;

static long qnum(const keel_http_request *r, const char *key, long dflt)
{
	size_t kl = strlen(key);
	const char *q = r->query.ptr, *end = q + r->query.len;
	while (q && q < end) {
		if ((size_t)(end - q) > kl && memcmp(q, key, kl) == 0 && q[kl] == '=')
			return strtol(q + kl + 1, NULL, 10);
		q = memchr(q, '&', (size_t)(end - q));
		if (q)
			q++;
	}
	return dflt;
}

static keel_promise *h_hello(keel_http_request *r, void *ud)
{
	(void)ud;
	return keel_http_respond(r, 200, "text/plain", "Hello, World!", 13);
}

static keel_promise *h_echo(keel_http_request *r, void *ud)
{
	(void)ud;
	return keel_http_respond(r, 200, "application/octet-stream", r->body.ptr, r->body.len);
}

static keel_outcome slow_done(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)in;
	keel_http_request *r = ud;
	char *b = keel_ctx_alloc(ctx, 32);
	int n = snprintf(b, 32, "slow %ld", (long)(intptr_t)r->user);
	r->resp.status = 200;
	r->resp.content_type = "text/plain";
	r->resp.body.ptr = b;
	r->resp.body.len = (size_t)n;
	return keel_ok(0, &r->resp);
}

static keel_promise *h_slow(keel_http_request *r, void *ud)
{
	(void)ud;
	long ms = qnum(r, "ms", 100);
	r->user = (void *)(intptr_t)ms;
	keel_promise *p = keel_promise_bind_ctx(keel_sleep(loop, (uint64_t)ms), keel_http_request_ctx(r));
	return keel_map(p, slow_done, r);
}

static keel_promise *h_big(keel_http_request *r, void *ud)
{
	(void)ud;
	long n = qnum(r, "n", 100000);
	if (n < 0 || n > (64L << 20))
		return keel_http_respond(r, 400, "text/plain", "bad n", 5);
	char *b = keel_ctx_alloc(keel_http_request_ctx(r), (size_t)n + 1);
	for (long i = 0; i < n; i++)
		b[i] = (char)('a' + i % 26);
	return keel_http_respond(r, 200, "application/octet-stream", b, (size_t)n);
}

static keel_promise *h_status(keel_http_request *r, void *ud)
{
	(void)ud;
	return keel_http_respond(r, (int)qnum(r, "code", 200), NULL, NULL, 0);
}

static keel_promise *h_fail(keel_http_request *r, void *ud)
{
	(void)ud;
	keel_promise *p = keel_promise_new(loop);
	keel_promise_reject(p, -(int)qnum(r, "err", 5));
	return p;
}

static keel_promise *h_headers(keel_http_request *r, void *ud)
{
	(void)ud;
	keel_ctx *ctx = keel_http_request_ctx(r);
	size_t cap = 64;
	for (unsigned i = 0; i < r->msg.nheaders; i++)
		cap += r->msg.headers[i].name.len + r->msg.headers[i].value.len + 4;
	char *b = keel_ctx_alloc(ctx, cap), *p = b;
	for (unsigned i = 0; i < r->msg.nheaders; i++)
		p += sprintf(p, "%.*s: %.*s\n", (int)r->msg.headers[i].name.len, r->msg.headers[i].name.ptr,
		             (int)r->msg.headers[i].value.len, r->msg.headers[i].value.ptr);
	return keel_http_respond(r, 200, "text/plain", b, (size_t)(p - b));
}

static keel_promise *h_prefix(keel_http_request *r, void *ud)
{
	(void)ud;
	return keel_http_respond(r, 200, "text/plain", r->path.ptr, r->path.len);
}

static keel_promise *h_stats(keel_http_request *r, void *ud)
{
	(void)ud;
	keel_http_stats st;
	keel_http_server_stats(srv, &st);
	keel_loop_stats ls;
	keel_loop_get_stats(loop, &ls);
	char *b = keel_ctx_alloc(keel_http_request_ctx(r), 512);
	int n = snprintf(b, 512,
	                 "connections %llu\nrequests %llu\nconns_open %u\nresponses_4xx %llu\n"
	                 "responses_5xx %llu\nbufs_in_use %u\nops_inflight %u\npromises_live %u\n"
	                 "wrapped_frees %lu\n",
	                 (unsigned long long)st.connections, (unsigned long long)st.requests, st.conns_open,
	                 (unsigned long long)st.responses_4xx, (unsigned long long)st.responses_5xx,
	                 ls.bufs_in_use, ls.ops_inflight, ls.promises_live, wrapped_frees);
	return keel_http_respond(r, 200, "text/plain", b, (size_t)n);
}

struct streamer {
	long n, i, ms;
	char buf[32];
	keel_str piece;
};

static keel_outcome stream_fill(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	(void)in;
	struct streamer *st = ud;
	if (st->i >= st->n)
		return keel_ok(0, NULL);
	st->piece.ptr = st->buf;
	st->piece.len = (size_t)snprintf(st->buf, sizeof(st->buf), "piece %ld\n", st->i++);
	return keel_ok(0, &st->piece);
}

static keel_promise *stream_next(keel_http_request *r, void *ud)
{
	struct streamer *st = ud;
	keel_promise *p = keel_promise_bind_ctx(keel_sleep(loop, (uint64_t)st->ms), keel_http_request_ctx(r));
	return keel_map(p, stream_fill, st);
}

static keel_promise *h_stream(keel_http_request *r, void *ud)
{
	(void)ud;
	struct streamer *st = keel_ctx_alloc(keel_http_request_ctx(r), sizeof(*st));
	st->n = qnum(r, "n", 5);
	st->ms = qnum(r, "ms", 10);
	st->i = 0;
	r->resp.status = 200;
	r->resp.content_type = "text/plain";
	r->resp.stream = stream_next;
	r->resp.stream_ud = st;
	long first = qnum(r, "first", 0); /* a first piece of that many bytes, sent with the head */
	if (first > 0 && first <= (1L << 20)) {
		char *b = keel_ctx_alloc(keel_http_request_ctx(r), (size_t)first);
		for (long i = 0; i < first; i++)
			b[i] = (char)('a' + i % 26);
		r->resp.body.ptr = b;
		r->resp.body.len = (size_t)first;
	}
	keel_promise *p = keel_promise_new(loop);
	keel_promise_resolve(p, 0, &r->resp);
	return p;
}

/* ---- Streamed request bodies ---- */

struct upload {
	keel_http_request *r;
	long ms;
	uint64_t bytes, pieces, maxpiece;
	uint32_t a, b; /* Adler-32 */
	keel_promise *done;
	char out[1024];
};

static void upload_read(struct upload *u);

/* The request's trailers as "trailers name=value;...\n" (nothing when none came); returns the length. */
static int trailers_text(const keel_http_request *r, char *out, size_t cap)
{
	if (!r->ntrailers)
		return 0;
	int n = snprintf(out, cap, "trailers");
	for (unsigned i = 0; i < r->ntrailers && (size_t)n < cap; i++)
		n += snprintf(out + n, cap - (size_t)n, "%c%.*s=%.*s", i ? ';' : ' ',
		              (int)r->trailers[i].name.len, r->trailers[i].name.ptr,
		              (int)r->trailers[i].value.len, r->trailers[i].value.ptr);
	if ((size_t)n < cap)
		n += snprintf(out + n, cap - (size_t)n, "\n");
	return (size_t)n < cap ? n : (int)cap - 1;
}

static void upload_resume(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	upload_read(ud);
}

static void upload_piece(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct upload *u = ud;
	if (o.err) {
		keel_promise_reject(u->done, o.err); /* -EBADMSG -> 400, -EMSGSIZE -> 413 */
		return;
	}
	keel_str *piece = o.ptr;
	if (!piece->len) {
		int n =
		    snprintf(u->out, sizeof(u->out), "bytes %llu pieces %llu maxpiece %llu adler32 %08x\n",
		             (unsigned long long)u->bytes, (unsigned long long)u->pieces,
		             (unsigned long long)u->maxpiece, (unsigned)(u->b << 16 | u->a));
		n += trailers_text(u->r, u->out + n, sizeof(u->out) - (size_t)n);
		u->r->resp.status = 200;
		u->r->resp.content_type = "text/plain";
		u->r->resp.body.ptr = u->out;
		u->r->resp.body.len = (size_t)n;
		keel_promise_resolve(u->done, 0, &u->r->resp);
		return;
	}
	u->bytes += piece->len;
	u->pieces++;
	if (piece->len > u->maxpiece)
		u->maxpiece = piece->len;
	for (size_t i = 0; i < piece->len; i++) {
		u->a = (u->a + (unsigned char)piece->ptr[i]) % 65521;
		u->b = (u->b + u->a) % 65521;
	}
	if (u->ms)
		keel_promise_done(keel_sleep(loop, (uint64_t)u->ms), upload_resume, u);
	else
		upload_read(u);
}

static void upload_read(struct upload *u)
{
	keel_promise_done(keel_http_body_read(u->r), upload_piece, u);
}

/* ---- Trailers ---- */

static const keel_http_header trailers_out[] = {
    {KEEL_STR("X-Checksum"), KEEL_STR("abc123")},
    {KEEL_STR("Grpc-Status"), KEEL_STR("0")},
    {KEEL_STR("Content-Length"), KEEL_STR("99")}, /* may not be a trailer: left out */
};

static keel_promise *trailers_next(keel_http_request *r, void *ud)
{
	(void)ud;
	static keel_str end = {NULL, 0};
	r->resp.trailers = trailers_out; /* (set with the end, which is when they are read) */
	r->resp.ntrailers = 3;
	keel_promise *p = keel_promise_new(loop);
	keel_promise_resolve(p, 0, &end);
	return p;
}

/*
 * The body's length and trailers, answered with trailers of its own: as a
 * whole body (stream=0: HTTP/2 sends them, HTTP/1.1 cannot) or a streamed
 * one (stream=1: chunked to HTTP/1.1).
 */
static keel_promise *h_trailers(keel_http_request *r, void *ud)
{
	(void)ud;
	size_t cap = 64;
	for (unsigned i = 0; i < r->ntrailers; i++)
		cap += r->trailers[i].name.len + r->trailers[i].value.len + 2;
	char *out = keel_ctx_alloc(keel_http_request_ctx(r), cap);
	int n = snprintf(out, cap, "bytes %zu\n", r->body.len);
	n += trailers_text(r, out + n, cap - (size_t)n);
	r->resp.status = 200;
	r->resp.content_type = "text/plain";
	r->resp.body = (keel_str){out, (size_t)n};
	keel_promise *p = keel_promise_new(loop);
	if (qnum(r, "stream", 0)) {
		r->resp.stream = trailers_next;
	} else {
		r->resp.trailers = trailers_out;
		r->resp.ntrailers = 3;
	}
	if (qnum(r, "file", 0)) {
		r->resp.file_fd = open("/dev/null", O_RDONLY | O_CLOEXEC); /* an empty file */
		r->resp.file_len = 0;
		r->resp.file_close = true;
	}
	if (qnum(r, "fail", 0)) {
		keel_promise_reject(p, -EIO); /* with its trailers set: the 500 must not carry them */
		return p;
	}
	keel_promise_resolve(p, 0, &r->resp);
	return p;
}

static keel_promise *h_upload(keel_http_request *r, void *ud)
{
	(void)ud;
	struct upload *u = keel_ctx_alloc(keel_http_request_ctx(r), sizeof(*u));
	memset(u, 0, sizeof(*u));
	u->r = r;
	u->ms = qnum(r, "ms", 0);
	u->a = 1;
	u->done = keel_promise_new(loop);
	upload_read(u);
	return u->done;
}

/* At the body's end, the request's trailers become the response's (set with the last piece). */
static keel_outcome duplex_piece(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	keel_http_request *r = ud;
	keel_str *piece = in.ptr;
	if (!piece || !piece->len) {
		r->resp.trailers = r->trailers;
		r->resp.ntrailers = r->ntrailers;
	}
	return in;
}

/* The request body's pieces are the response's pieces: the producer reads, the server sends. */
static keel_promise *duplex_next(keel_http_request *r, void *ud)
{
	(void)ud;
	return keel_map(keel_http_body_read(r), duplex_piece, r);
}

static keel_outcome duplex_answer(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	(void)in;
	keel_http_request *r = ud;
	r->resp.status = 200;
	r->resp.content_type = "application/octet-stream";
	r->resp.stream = duplex_next;
	return keel_ok(0, &r->resp);
}

static keel_promise *h_duplex(keel_http_request *r, void *ud)
{
	(void)ud;
	long ms = qnum(r, "ms", 0); /* answer that late (the body keeps coming meanwhile) */
	if (!ms) {
		keel_promise *p = keel_promise_new(loop);
		keel_promise_resolve(p, 0, duplex_answer(NULL, keel_ok(0, NULL), r).ptr);
		return p;
	}
	keel_promise *p = keel_promise_bind_ctx(keel_sleep(loop, (uint64_t)ms), keel_http_request_ctx(r));
	return keel_map(p, duplex_answer, r);
}

/* A streamed response of one piece that never reads the request body (/early?stream=1). */
static keel_promise *early_piece(keel_http_request *r, void *ud)
{
	(void)ud;
	static keel_str piece = {"early", 5};
	keel_promise *p = keel_promise_new(loop);
	keel_promise_resolve(p, 0, r->user ? NULL : &piece);
	r->user = "given";
	return p;
}

static keel_promise *h_early(keel_http_request *r, void *ud)
{
	(void)ud;
	if (qnum(r, "stream", 0)) {
		r->user = NULL;
		r->resp.status = 200;
		r->resp.content_type = "text/plain";
		r->resp.stream = early_piece;
		keel_promise *p = keel_promise_new(loop);
		keel_promise_resolve(p, 0, &r->resp);
		return p;
	}
	return keel_http_respond(r, 200, "text/plain", "early", 5);
}

static keel_promise *h_burn(keel_http_request *r, void *ud)
{
	(void)ud;
	long us = qnum(r, "us", 1000);
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	do
		clock_gettime(CLOCK_MONOTONIC, &t);
	while ((t.tv_sec - t0.tv_sec) * 1000000L + (t.tv_nsec - t0.tv_nsec) / 1000 < us);
	return keel_http_respond(r, 200, "text/plain", "burnt", 5);
}

/*
 * A handler whose promise has no cancel hook: nothing can stop it, and it
 * writes into its request when it answers, ms later -- whether or not its
 * client is still there (keel_http_handler's lifetime rule).
 */
struct late {
	keel_http_request *r;
	keel_promise *p;
};

static void late_fire(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	struct late *l = ud;
	l->r->resp.status = 200;
	l->r->resp.content_type = "text/plain";
	l->r->resp.body.ptr = "late";
	l->r->resp.body.len = 4;
	l->r->resp.headers = NULL;
	l->r->resp.nheaders = 0;
	keel_promise_resolve(l->p, 0, &l->r->resp);
	free(l);
}

static keel_promise *h_hookless(keel_http_request *r, void *ud)
{
	(void)ud;
	struct late *l = malloc(sizeof(*l));
	if (!l)
		return NULL;
	l->r = r;
	l->p = keel_promise_new(loop);
	/* (not the request's) */
	keel_promise_done(keel_sleep(loop, (uint64_t)qnum(r, "ms", 100)), late_fire, l);
	return l->p;
}

/* Fills its response at once and answers it ms later, untouched: "pin". */
static keel_outcome pin_done(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	(void)in;
	keel_http_request *r = ud;
	return keel_ok(0, &r->resp);
}

static keel_promise *h_pin(keel_http_request *r, void *ud)
{
	(void)ud;
	r->resp.status = 200;
	r->resp.content_type = "text/plain";
	r->resp.body.ptr = "pin";
	r->resp.body.len = 3;
	keel_promise *p =
	    keel_promise_bind_ctx(keel_sleep(loop, (uint64_t)qnum(r, "ms", 100)), keel_http_request_ctx(r));
	return keel_map(p, pin_done, r);
}

/* The static handler wrapped by another that adds its own context hook first (--static DIR). */
static keel_static *statics;

static void wrapped_free(void *ud)
{
	(void)ud;
	wrapped_frees++;
}

static keel_promise *h_wrapped_static(keel_http_request *r, void *ud)
{
	(void)ud;
	keel_ctx *ctx = keel_http_request_ctx(r);
	if (!ctx || keel_ctx_on_free(ctx, wrapped_free, NULL) < 0)
		return keel_http_respond(r, 503, "text/plain", "no memory", 9);
	r->user = "wrapper's"; /* the wrapped handler must not need it */
	return keel_static_handler(r, statics);
}

static void stopped(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	(void)ud;
	keel_loop_stop(loop);
}

static void on_signal(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	(void)ud;
	keel_promise_done(keel_http_server_stop(srv, 2000), stopped, NULL);
}

int main(int argc, char **argv)
{
	keel_http_config cfg;
	keel_http_config_default(&cfg);
	const char *addr = "127.0.0.1:0";
	const char *static_dir = NULL;
	unsigned recv_bufs = 0;  /* the receive pool's size (a power of two); 0: the default */
	unsigned sq_entries = 0; /* io_uring submission queue (completion queue: 4x); 0: the default */
	static const struct option opts[] = {
	    {"listen", 1, NULL, 'l'},
	    {"body-max", 1, NULL, 'b'},
	    {"conns-max", 1, NULL, 'c'},
	    {"pipeline-max", 1, NULL, 'p'},
	    {"header-timeout-ms", 1, NULL, 'H'},
	    {"idle-timeout-ms", 1, NULL, 'I'},
	    {"body-timeout-ms", 1, NULL, 'B'},
	    {"send-timeout-ms", 1, NULL, 'S'},
	    {"requests-per-conn", 1, NULL, 'r'},
	    {"headers-max", 1, NULL, 'n'},
	    {"head-max", 1, NULL, 'm'},
	    {"line-max", 1, NULL, 'L'},
	    {"body-stream-max", 1, NULL, 'M'},
	    {"queue-delay-max-us", 1, NULL, 'Q'},
	    {"inflight-max", 1, NULL, 'F'},
	    {"conn-out-max", 1, NULL, 'O'},
	    {"body-mem-max", 1, NULL, 'X'},
	    {"static", 1, NULL, 'D'},
	    {"recv-bufs", 1, NULL, 'R'},
	    {"sq-entries", 1, NULL, 'q'},
	    {"http2", 0, NULL, '2'},
	    {"h2-streams-max", 1, NULL, 's'},
	    {NULL, 0, NULL, 0},
	};
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		long v = optarg ? strtol(optarg, NULL, 10) : 0;
		switch (c) {
		case 'l': addr = optarg; break;
		case 'b': cfg.body_max = (uint64_t)v; break;
		case 'c': cfg.conns_max = (unsigned)v; break;
		case 'p': cfg.pipeline_max = (unsigned)v; break;
		case 'H': cfg.header_timeout_ms = (uint64_t)v; break;
		case 'I': cfg.idle_timeout_ms = (uint64_t)v; break;
		case 'B': cfg.body_timeout_ms = (uint64_t)v; break;
		case 'S': cfg.send_timeout_ms = (uint64_t)v; break;
		case 'r': cfg.requests_per_conn_max = (unsigned)v; break;
		case 'n': cfg.limits.headers_max = (unsigned)v; break;
		case 'm': cfg.limits.head_max = (size_t)v; break;
		case 'L': cfg.limits.request_line_max = (size_t)v; break;
		case 'M': cfg.body_stream_max = (uint64_t)v; break;
		case 'Q': cfg.queue_delay_max_us = (uint32_t)v; break;
		case 'F': cfg.inflight_max = (unsigned)v; break;
		case 'O': cfg.conn_out_max = (size_t)v; break;
		case 'X': cfg.body_mem_max = (size_t)v; break;
		case 'D': static_dir = optarg; break;
		case 'R': recv_bufs = (unsigned)v; break;
		case 'q': sq_entries = (unsigned)v; break;
		case '2': cfg.http2 = true; break;
		case 's': cfg.h2_streams_max = (unsigned)v; break;
		default: return 2;
		}
	}
	signal(SIGPIPE, SIG_IGN);
	/* Blocked before anything is printed: a stop sent right after "listening" must not kill us. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigprocmask(SIG_BLOCK, &set, NULL);
	keel_loop_opts lo;
	keel_loop_opts_default(&lo);
	if (recv_bufs)
		lo.recv_buf_count = recv_bufs;
	if (sq_entries)
		lo.sq_entries = sq_entries;
	int err = keel_loop_new(&loop, &lo);
	if (err < 0) {
		fprintf(stderr, "keel_loop_new: %s\n", keel_strerror(err));
		return 1;
	}
	err = keel_http_server_new(&srv, loop, &cfg);
	if (err < 0) {
		fprintf(stderr, "keel_http_server_new: %s\n", keel_strerror(err));
		return 1;
	}
	keel_http_route(srv, "GET", "/hello", false, h_hello, NULL);
	keel_http_route(srv, "POST", "/echo", false, h_echo, NULL);
	keel_http_route(srv, "GET", "/slow", false, h_slow, NULL);
	keel_http_route(srv, "GET", "/big", false, h_big, NULL);
	keel_http_route(srv, "GET", "/status", false, h_status, NULL);
	keel_http_route(srv, "GET", "/fail", false, h_fail, NULL);
	keel_http_route(srv, "GET", "/headers", false, h_headers, NULL);
	keel_http_route(srv, "GET", "/prefix/", true, h_prefix, NULL);
	keel_http_route(srv, "GET", "/stats", false, h_stats, NULL);
	keel_http_route(srv, "GET", "/stream", false, h_stream, NULL);
	keel_http_route(srv, "POST", "/upload", KEEL_HTTP_STREAM_BODY, h_upload, NULL);
	keel_http_route(srv, "POST", "/duplex", KEEL_HTTP_STREAM_BODY, h_duplex, NULL);
	keel_http_route(srv, "POST", "/early", KEEL_HTTP_STREAM_BODY, h_early, NULL);
	keel_http_route(srv, "POST", "/trailers", false, h_trailers, NULL);
	keel_http_route(srv, "GET", "/burn", false, h_burn, NULL);
	keel_http_route(srv, "GET", "/hookless", false, h_hookless, NULL);
	keel_http_route(srv, "GET", "/pin", false, h_pin, NULL);
	if (static_dir) {
		err = keel_static_new(&statics, static_dir);
		if (err < 0) {
			fprintf(stderr, "static %s: %s\n", static_dir, keel_strerror(err));
			return 1;
		}
		keel_http_route(srv, "GET", "/static/", KEEL_HTTP_PREFIX, h_wrapped_static, NULL);
	}
	keel_http_route(srv, "GET", "/_keel/status", KEEL_HTTP_NO_SHED, keel_http_status, NULL);
	int lfd = keel_tcp_listen(addr, 1024, 0);
	if (lfd < 0) {
		fprintf(stderr, "listen %s: %s\n", addr, keel_strerror(lfd));
		return 1;
	}
	char a[64];
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	getsockname(lfd, (struct sockaddr *)&ss, &len);
	fprintf(stderr, "listening on %s\n", keel_addr_format((struct sockaddr *)&ss, a, sizeof(a)));
	keel_http_server_start(srv, lfd);
	static const int sigs[] = {SIGINT, SIGTERM};
	keel_promise_done(keel_signal_wait(loop, sigs, 2), on_signal, NULL);
	keel_loop_run(loop);
	keel_http_server_free(srv);
	keel_static_free(statics);
	close(lfd);
	keel_loop_free(loop);
	return 0;
}
