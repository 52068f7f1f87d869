/*
 * libFuzzer driver for keel's whole HTTP server: a real server on a real
 * loop, fed fuzzed byte streams over several connections at once, with a
 * reverse-proxy route whose upstream answers with fuzzed bytes too.
 *
 * One loop, one server and its routes are made once per process and reused
 * by every input (an input that stops the server gets a new one after it):
 *
 *   GET /  static files from a directory made under /tmp: small.txt,
 *          big.bin (over the static cache's 64 KiB: sendfile/splice),
 *          page.html with a .gz sibling, sub/index.html, empty.txt, and a
 *          symlink out of the root that must never be served
 *   /hello, POST|PUT /echo, /mem?n=N (a large body from memory), /slow?ms=N
 *          (keel_sleep), /fail?e=N (handler errors), /stream?n=N[&sized]
 *          [&lie] (a streamed response), /hookless?ms=N[&hook] (a promise
 *          the server cannot cancel, or can with ?hook)
 *   POST /upload[?early|?one][&hook], POST /duplex: KEEL_HTTP_STREAM_BODY
 *          routes reading the body with keel_http_body_read
 *   /_keel/status (with the proxy's metrics), and /proxy (a prefix) to a
 *          proxy made per input, whose upstreams are raw listeners on the
 *          same loop (keel_tcp_listen, keel_accept, keel_recv_stream)
 *          answering with bytes from the input, plus a port that refuses
 *
 * The server's limits and timeouts are small (2 KiB heads, 8 KiB bodies,
 * four pipelined requests, 25-40 ms timeouts, 32 receive buffers of 1 KiB)
 * so their paths are near. Clients are socketpairs handed to the server
 * with keel_http_server_adopt, so no TCP ports are used on that side.
 *
 * The input is a small program: segments separated by "\n%%", each an op
 * letter, an optional number N, an optional "/K", an optional space, and a
 * payload (the rest of the segment):
 *
 *   oN/K       open client N now; K: 1 the server's end non-blocking (as
 *              adopted sockets may be; by default it blocks, as io_uring's
 *              accept makes them), 2 small socket buffers, 4 default ones
 *              (without 2 or 4: small on every other connection)
 *   wN/K DATA  write DATA on client N (0..3; opened on first use), in pieces
 *              of K bytes with a loop tick between them (no K: at once)
 *   rN         read what client N has received (every client without N)
 *   tN         run N loop ticks without waiting (default 1, at most 64)
 *   sN         run the loop for N ms (at most 30; 100 ms per input)
 *   hN         half-close client N (shutdown SHUT_WR)
 *   xN         close client N without reading (a reset if input is unread)
 *   cN         read client N to the end of what is there, then close it
 *   kN         stop the server (keel_http_server_stop, grace N % 31 ms);
 *              it is freed and made anew after the input
 *   uN DATA    queue DATA as the upstream's answer to the next request head
 *              it receives; N: 0 keep the connection, 1 then half-close,
 *              2 then close, 3 then reset (SO_LINGER 0)
 *   UN/K DATA  send DATA now on upstream connection N (in order of
 *              arrival), then K as for u
 *   HN, CN, XN half-close, close, reset upstream connection N
 *   pN         (first segment only) the proxy's configuration, bits:
 *              0-1 upstreams [A] [A,B] [refused,A] [A,refused]; 2 least-
 *              connections; 3 no Via; 4-5 response timeout 1000/10/40/200
 *              ms; 6-7 pool 64/1/2/4; 8 one request queued at most; 9 a
 *              256-byte response body limit; 10 small response head
 *              limits; 11 a 5 ms connect timeout
 *
 * Checks: no sanitizer report; everything the server sends starts with
 * "HTTP/1.1 " and is a sequence of responses keel's strict parser accepts,
 * paired with the requests in order (100 Continue only where one was
 * asked for, nothing after a response that closes, no body for HEAD, no
 * chunked body to an HTTP/1.0 client, error statuses for heads the parser
 * rejects), with the right body where the driver knows it (static files,
 * /hello, /mem, /echo, /upload's digest, /duplex, /stream) and not cut off
 * by a close before any timeout could have fired; and after every input,
 * once all clients are closed, the server's connections, requests in
 * flight, operations, receive buffers, promises and contexts return to
 * their baseline within a bounded number of ticks.
 *
 * Build and run: sh fuzz/run.sh fuzz_server (KEEL_BACKEND=epoll for the
 * other backend). $FUZZ_SERVER_TRACE prints what each client got. The
 * seeds in fuzz/corpus/server/ are such programs, one scenario each.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fuzz.h"
#include "keel/http.h"
#include "keel/keel.h"
#include "keel/proxy.h"
#include "keel/static.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define CLIENTS 4          /* client slots a program names (N mod 4) */
#define OPENS_MAX 8        /* connections opened per input */
#define UPCONNS_MAX 16     /* upstream connections tracked per input */
#define ANSWERS_MAX 16     /* queued upstream answers */
#define IN_CAP 32768       /* bytes a client wrote, kept for the pairing check */
#define OUT_CAP (1u << 20) /* bytes a client received, kept for the checks */
#define PIECES_MAX 64      /* pieces one write is cut into */
#define TICKS_MAX 64
#define SLEEP_OP_MAX_MS 30
#define SLEEP_INPUT_MAX_MS 100
#define DRAIN_TICKS 4000 /* at most this many ticks (1 ms each past the first few) to settle */
#define SEP "\n%%"

/* ---- What the server serves, known to the checks ------------------------- */

static const char SMALL[] = "hello from keel's fuzz driver\n";
static const char PAGE[] = "<!doctype html><title>page</title><p>plain</p>\n";
static const char PAGE_GZ[] = "\x1f\x8b\x08\x00 not really gzip, but the .gz sibling\n";
static const char INDEX[] = "<!doctype html><title>sub</title>\n";
static const char HELLO[] = "Hello, World!";
#define BIG_LEN 100000 /* over the static cache's 64 KiB: sent with sendfile/splice */
static char big[BIG_LEN];
#define MEM_LEN 65536
static char mem[MEM_LEN]; /* /mem?n=N answers its first N bytes (borrowed, not copied) */

/* ---- State ------------------------------------------------------------------ */

struct client {
	int fd; /* the driver's end; -1 when closed */
	bool eof;
	bool in_over, out_over; /* more than the checks keep: only the prefix is checked */
	size_t in_len, out_len;
	char in[IN_CAP];
	char *out; /* OUT_CAP bytes */
};

enum { UP_KEEP = 0, UP_SHUT_WR = 1, UP_CLOSE = 2, UP_RESET = 3 };

struct upconn {
	int fd;                          /* -1 once its close is under way */
	keel_promise *recv;              /* while the receive stream runs */
	bool open;                       /* until its close completed */
	bool in_cb;                      /* inside its receive callback */
	int close_mode;                  /* a close asked for: UP_CLOSE or UP_RESET */
	unsigned heads, answered, match; /* request heads seen (CRLF CRLF), answers sent */
};

struct answer {
	const char *p;
	size_t n;
	int mode;
};

static struct {
	keel_loop *loop;
	keel_http_server *srv;
	keel_http_config cfg;
	keel_static *st;
	keel_proxy *px;
	char root[96];
	int lfd[2], port[2];
	int dead_fd, dead_port; /* bound, never listening: connections to it are refused */
	int log_fd;
	keel_loop_stats base;
	unsigned hookless_live;
	bool draining;
	bool stopping, stopped; /* "k": keel_http_server_stop called, and its promise resolved */
	bool trace;             /* $FUZZ_SERVER_TRACE: what each client got, on stderr */
	/* This input's. */
	struct client cl[CLIENTS];
	unsigned opens;
	struct upconn up[UPCONNS_MAX];
	unsigned nup, nup_open;
	struct answer ans[ANSWERS_MAX];
	unsigned ans_head, ans_n;
	unsigned slept_ms;
	uint64_t t0_ms; /* when the input began */
	uint64_t out0;  /* the server's bytes_out then */
	uint64_t rcvd;  /* bytes the clients received since */
} g;

static void tick(int timeout_ms)
{
	int rc = keel_loop_run_once(g.loop, timeout_ms);
	if (rc < 0)
		FUZZ_FAIL("keel_loop_run_once: %s", keel_strerror(rc));
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The number after key= in a query, or dflt. */
static long qnum(keel_str q, const char *key, long dflt)
{
	if (!q.ptr)
		return dflt; /* (no query) */
	size_t kl = strlen(key);
	const char *p = q.ptr, *end = q.ptr + q.len;
	while (p && p < end) {
		if ((size_t)(end - p) > kl && memcmp(p, key, kl) == 0 && p[kl] == '=') {
			long v = 0;
			for (p += kl + 1; p < end && *p >= '0' && *p <= '9' && v < 1000000; p++)
				v = v * 10 + (*p - '0');
			return v;
		}
		p = memchr(p, '&', (size_t)(end - p));
		if (p)
			p++;
	}
	return dflt;
}

static bool qhas(keel_str q, const char *word)
{
	size_t n = strlen(word);
	return q.len >= n && memmem(q.ptr, q.len, word, n) != NULL;
}

/* ---- Handlers ----------------------------------------------------------------- */

static keel_promise *h_hello(keel_http_request *r, void *ud)
{
	(void)ud;
	return keel_http_respond(r, 200, "text/plain", HELLO, sizeof(HELLO) - 1);
}

static keel_promise *h_echo(keel_http_request *r, void *ud)
{
	(void)ud;
	return keel_http_respond(r, 200, "application/octet-stream", r->body.ptr, r->body.len);
}

static size_t mem_len(keel_str query)
{
	long n = qnum(query, "n", 100);
	return n < 0 ? 0 : n > MEM_LEN ? MEM_LEN : (size_t)n;
}

static keel_promise *h_mem(keel_http_request *r, void *ud)
{
	(void)ud;
	return keel_http_respond(r, 200, "application/octet-stream", mem, mem_len(r->query));
}

static keel_outcome slow_done(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	(void)in;
	keel_http_request *r = ud;
	r->resp.status = 200;
	r->resp.content_type = "text/plain";
	r->resp.body = (keel_str){"slow", 4};
	return keel_ok(0, &r->resp);
}

static keel_promise *h_slow(keel_http_request *r, void *ud)
{
	(void)ud;
	long ms = 1 + qnum(r->query, "ms", 1) % 5;
	keel_promise *p = keel_promise_bind_ctx(keel_sleep(r->loop, (uint64_t)ms), keel_http_request_ctx(r));
	return keel_map(p, slow_done, r);
}

static keel_promise *h_fail(keel_http_request *r, void *ud)
{
	(void)ud;
	static const int errs[] = {-ENOENT, -EACCES, -ETIMEDOUT, -EBADMSG, -EMSGSIZE, -ENOMEM, -EIO};
	keel_promise *p = keel_promise_new(r->loop);
	keel_promise_reject(p, errs[qnum(r->query, "e", 0) % 7]);
	return p;
}

/*
 * /hookless?ms=N: a promise with no cancel hook: nothing stops it, and it
 * writes to its request when it fires, whether or not the client is still
 * there (the server keeps such a request as a "zombie" until then). With
 * ?hook it has a hook that stops it instead.
 */
struct late {
	keel_http_request *r;
	keel_promise *p, *sleep;
};

static void late_fire(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct late *l = ud;
	if (!o.err) {
		l->r->resp.status = 200;
		l->r->resp.content_type = "text/plain";
		l->r->resp.body = (keel_str){"late", 4};
		l->r->resp.headers = NULL;
		l->r->resp.nheaders = 0;
		keel_promise_resolve(l->p, 0, &l->r->resp);
	}
	free(l);
	g.hookless_live--;
}

static void late_cancel(keel_promise *p, void *ud)
{
	struct late *l = ud;
	keel_promise_cancel(l->sleep); /* late_fire sees -ECANCELED and leaves the request alone */
	keel_promise_reject(p, -ECANCELED);
}

static keel_promise *h_hookless(keel_http_request *r, void *ud)
{
	(void)ud;
	struct late *l = malloc(sizeof(*l));
	if (!l)
		return NULL;
	l->r = r;
	l->p = keel_promise_new(r->loop);
	g.hookless_live++;
	l->sleep = keel_sleep(r->loop, 1 + (uint64_t)qnum(r->query, "ms", 2) % 4);
	keel_promise_done(l->sleep, late_fire, l);
	if (qhas(r->query, "hook"))
		keel_promise_on_cancel(l->p, late_cancel, l);
	return l->p;
}

/* /stream?n=N: N pieces "piece i\n"; &sized: with Content-Length; &lie: one byte off it. */
struct streamer {
	long n, i;
	char buf[16];
	keel_str piece;
};

static keel_promise *stream_next(keel_http_request *r, void *ud)
{
	struct streamer *s = ud;
	keel_promise *p = keel_promise_new(r->loop);
	if (s->i >= s->n) {
		keel_promise_resolve(p, 0, NULL);
		return p;
	}
	s->piece.ptr = s->buf;
	s->piece.len = (size_t)snprintf(s->buf, sizeof(s->buf), "piece %ld\n", s->i++);
	keel_promise_resolve(p, 0, &s->piece);
	return p;
}

static long stream_pieces(keel_str query)
{
	return qnum(query, "n", 3) % 9;
}

static size_t stream_body(keel_str query, char *out)
{
	size_t n = 0;
	for (long i = 0; i < stream_pieces(query); i++)
		n += (size_t)sprintf(out + n, "piece %ld\n", i);
	return n;
}

static keel_promise *h_stream(keel_http_request *r, void *ud)
{
	(void)ud;
	struct streamer *s = keel_ctx_alloc(keel_http_request_ctx(r), sizeof(*s));
	if (!s)
		return NULL;
	memset(s, 0, sizeof(*s));
	s->n = stream_pieces(r->query);
	r->resp.status = 200;
	r->resp.content_type = "text/plain";
	r->resp.stream = stream_next;
	r->resp.stream_ud = s;
	if (qhas(r->query, "sized")) {
		char tmp[128];
		r->resp.stream_length = (int64_t)stream_body(r->query, tmp) + (qhas(r->query, "lie") ? 1 : 0);
	}
	keel_promise *p = keel_promise_new(r->loop);
	keel_promise_resolve(p, 0, &r->resp);
	return p;
}

/*
 * /upload: the streamed body read piece by piece, answered "bytes N adler32
 * H" (?early: at once, unread; ?one: after the first piece). Its promise is
 * made with keel_promise_new and has no cancel hook, as in
 * test/http_testsrv.c, unless ?hook: then a hook rejects it, and the
 * reading stops at the next piece. The state is the handler's own (malloc),
 * freed when the reading stops: it may outlive the request.
 */
struct upload {
	keel_http_request *r;
	uint64_t bytes;
	uint32_t a, b;
	bool one, stop;
	keel_promise *done;
	char out[64];
};

static void upload_read(struct upload *u);

static void adler(uint32_t *a, uint32_t *b, const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		*a = (*a + (unsigned char)p[i]) % 65521;
		*b = (*b + *a) % 65521;
	}
}

static void upload_answer(struct upload *u, const char *tag)
{
	/* (the answer's bytes live in the request's context: u goes now) */
	char *out = keel_ctx_alloc(keel_http_request_ctx(u->r), sizeof(u->out));
	int n = !out  ? 0
	        : tag ? snprintf(out, sizeof(u->out), "%s", tag)
	              : snprintf(out, sizeof(u->out), "bytes %llu adler32 %08x\n",
	                         (unsigned long long)u->bytes, (unsigned)(u->b << 16 | u->a));
	if (!out) {
		keel_promise_reject(u->done, -ENOMEM);
		return;
	}
	u->r->resp.status = 200;
	u->r->resp.content_type = "text/plain";
	u->r->resp.body = (keel_str){out, (size_t)n};
	keel_promise_resolve(u->done, 0, &u->r->resp);
}

static void upload_piece(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct upload *u = ud;
	if (u->stop) {
		free(u); /* cancelled: its request may be gone */
		return;
	}
	if (o.err) {
		keel_promise_reject(u->done, o.err); /* -EBADMSG -> 400, -EMSGSIZE -> 413 */
		free(u);
		return;
	}
	keel_str *piece = o.ptr;
	if (!piece || !piece->len) {
		upload_answer(u, NULL);
		free(u);
		return;
	}
	u->bytes += piece->len;
	adler(&u->a, &u->b, piece->ptr, piece->len);
	if (u->one) {
		upload_answer(u, "one\n"); /* answered with the rest of the body unread */
		free(u);
		return;
	}
	upload_read(u);
}

static void upload_read(struct upload *u)
{
	keel_promise_done(keel_http_body_read(u->r), upload_piece, u);
}

static void upload_cancel(keel_promise *p, void *ud)
{
	struct upload *u = ud;
	u->stop = true; /* (a body read is waiting: the server settles it) */
	keel_promise_reject(p, -ECANCELED);
}

static keel_promise *h_upload(keel_http_request *r, void *ud)
{
	(void)ud;
	if (qhas(r->query, "early"))
		return keel_http_respond(r, 200, "text/plain", "early\n", 6);
	struct upload *u = calloc(1, sizeof(*u));
	if (!u)
		return NULL;
	u->r = r;
	u->a = 1;
	u->one = qhas(r->query, "one");
	u->done = keel_promise_new(r->loop);
	if (qhas(r->query, "hook"))
		keel_promise_on_cancel(u->done, upload_cancel, u);
	upload_read(u);
	return u->done;
}

/* /duplex: the request body's pieces are the response's pieces (full duplex). */
static keel_promise *duplex_next(keel_http_request *r, void *ud)
{
	(void)ud;
	return keel_http_body_read(r);
}

static keel_promise *h_duplex(keel_http_request *r, void *ud)
{
	(void)ud;
	r->resp.status = 200;
	r->resp.content_type = "application/octet-stream";
	r->resp.stream = duplex_next;
	keel_promise *p = keel_promise_new(r->loop);
	keel_promise_resolve(p, 0, &r->resp);
	return p;
}

/* The proxy is made per input (its configuration comes from the input); the route is the server's.
 */
static keel_promise *h_proxy(keel_http_request *r, void *ud)
{
	(void)ud;
	return keel_proxy_handler(r, g.px);
}

static unsigned proxy_metrics(void *ud, keel_http_metric *out, unsigned max)
{
	(void)ud;
	return g.px ? keel_proxy_metrics(g.px, out, max) : 0;
}

/* ---- The upstream: a raw listener answering with bytes from the input --------- */

static void up_closed(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	struct upconn *k = ud;
	k->open = false;
	g.nup_open--;
}

static void up_close_now(struct upconn *k)
{
	if (k->fd < 0)
		return;
	if (k->close_mode == UP_RESET) {
		struct linger lg = {1, 0};
		setsockopt(k->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	}
	keel_promise_done(keel_close(g.loop, k->fd), up_closed, k);
	k->fd = -1;
}

/* Close (UP_CLOSE) or reset (UP_RESET) k once its receive stream has stopped. */
static void up_close(struct upconn *k, int mode)
{
	if (k->fd < 0)
		return;
	if (!k->close_mode || mode == UP_RESET)
		k->close_mode = mode;
	if (!k->recv)
		up_close_now(k);
	else if (!k->in_cb)
		keel_promise_cancel(k->recv); /* (inside the callback, KEEL_STOP does it) */
}

static void up_send(struct upconn *k, const char *p, size_t n, int mode)
{
	if (k->fd < 0 || k->close_mode)
		return;
	while (n) {
		ssize_t w = send(k->fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (w <= 0)
			break; /* (a full socket or a gone peer: the rest is lost, as on a network)
			        */
		p += w;
		n -= (size_t)w;
	}
	if (mode == UP_SHUT_WR)
		shutdown(k->fd, SHUT_WR);
	else if (mode == UP_CLOSE || mode == UP_RESET)
		up_close(k, mode);
}

/* Queued answers go to the connections that have received more request heads than answered. */
static void up_dispatch(void)
{
	for (unsigned i = 0; i < g.nup && g.ans_n; i++) {
		struct upconn *k = &g.up[i];
		while (k->fd >= 0 && !k->close_mode && k->answered < k->heads && g.ans_n) {
			struct answer *a = &g.ans[g.ans_head];
			g.ans_head = (g.ans_head + 1) % ANSWERS_MAX;
			g.ans_n--;
			k->answered++;
			up_send(k, a->p, a->n, a->mode);
		}
	}
}

static int up_data(void *ud, keel_buf *buf)
{
	struct upconn *k = ud;
	static const char crlf2[] = "\r\n\r\n";
	for (uint32_t i = 0; i < buf->len; i++) {
		char ch = buf->data[i];
		if (ch == crlf2[k->match])
			k->match++;
		else
			k->match = ch == '\r';
		if (k->match == 4) {
			k->heads++;
			k->match = 0;
		}
	}
	k->in_cb = true;
	if (!g.draining)
		up_dispatch();
	k->in_cb = false;
	return k->close_mode ? KEEL_STOP : KEEL_CONTINUE;
}

static void up_recv_ended(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	struct upconn *k = ud;
	k->recv = NULL;
	/* The proxy's client closed (or reset) its end, or we asked to stop: close ours. */
	up_close(k, k->close_mode ? k->close_mode : UP_CLOSE);
}

static int up_accept(void *ud, int fd)
{
	(void)ud;
	if (g.draining || g.nup >= UPCONNS_MAX) {
		struct linger lg = {1, 0}; /* a reset leaves no TIME_WAIT behind */
		setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		close(fd);
		return KEEL_CONTINUE;
	}
	struct upconn *k = &g.up[g.nup++];
	memset(k, 0, sizeof(*k));
	k->fd = fd;
	k->open = true;
	g.nup_open++;
	k->recv = keel_recv_stream(g.loop, fd, up_data, k);
	keel_promise_done(k->recv, up_recv_ended, k);
	return KEEL_CONTINUE;
}

static void up_accept_ended(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)ud;
	FUZZ_FAIL("the upstream's accept stream ended: %s", keel_strerror(o.err));
}

/* ---- Setup, once per process ------------------------------------------------------- */

static void write_file(const char *dir, const char *name, const void *p, size_t n)
{
	char path[256];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, p, n) != (ssize_t)n)
		FUZZ_FAIL("cannot write %s: %s", path, strerror(errno));
	close(fd);
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

static void cleanup_root(void)
{
	if (g.root[0])
		nftw(g.root, rm_one, 8, FTW_DEPTH | FTW_PHYS);
}

/*
 * Roots left by earlier runs whose process is gone: libFuzzer often ends
 * with _Exit (a crash, -max_total_time), which skips atexit.
 */
static void cleanup_stale_roots(void)
{
	DIR *d = opendir("/tmp");
	if (!d)
		return;
	struct dirent *e;
	while ((e = readdir(d))) {
		int pid;
		char path[300];
		if (sscanf(e->d_name, "keel-fuzz-server-%d", &pid) != 1 || pid == (int)getpid())
			continue;
		if (kill(pid, 0) == 0 || errno != ESRCH)
			continue; /* (still running, or not ours to judge) */
		snprintf(path, sizeof(path), "/tmp/%s", e->d_name);
		nftw(path, rm_one, 8, FTW_DEPTH | FTW_PHYS);
	}
	closedir(d);
}

static void make_root(void)
{
	cleanup_stale_roots();
	snprintf(g.root, sizeof(g.root), "/tmp/keel-fuzz-server-%d", (int)getpid());
	cleanup_root();
	char sub[160];
	snprintf(sub, sizeof(sub), "%s/sub", g.root);
	if (mkdir(g.root, 0755) < 0 || mkdir(sub, 0755) < 0)
		FUZZ_FAIL("cannot make %s: %s", g.root, strerror(errno));
	atexit(cleanup_root);
	for (size_t i = 0; i < BIG_LEN; i++)
		big[i] = (char)('a' + (i * 7 + i / 251) % 26);
	for (size_t i = 0; i < MEM_LEN; i++)
		mem[i] = (char)('A' + (i * 5 + i / 97) % 26);
	write_file(g.root, "small.txt", SMALL, sizeof(SMALL) - 1);
	write_file(g.root, "big.bin", big, BIG_LEN);
	write_file(g.root, "page.html", PAGE, sizeof(PAGE) - 1);
	write_file(g.root, "page.html.gz", PAGE_GZ, sizeof(PAGE_GZ) - 1);
	write_file(g.root, "empty.txt", "", 0);
	write_file(sub, "index.html", INDEX, sizeof(INDEX) - 1);
	char link[200];
	snprintf(link, sizeof(link), "%s/outside", g.root);
	if (symlink("/etc/passwd", link) < 0) /* never served: RESOLVE_BENEATH */
		FUZZ_FAIL("symlink: %s", strerror(errno));
}

static int listen_port(int *fd)
{
	*fd = keel_tcp_listen("127.0.0.1:0", 128, 0);
	if (*fd < 0)
		FUZZ_FAIL("keel_tcp_listen: %s", keel_strerror(*fd));
	return keel_tcp_port(*fd);
}

/* The server and its routes: made once, and again after an input stopped it ("k"). */
static void server_make(void)
{
	int err = keel_http_server_new(&g.srv, g.loop, &g.cfg);
	if (err < 0)
		FUZZ_FAIL("keel_http_server_new: %s", keel_strerror(err));

	struct {
		const char *method, *path;
		unsigned flags;
		keel_http_handler fn;
		void *ud;
	} routes[] = {
	    {"GET", "/hello", 0, h_hello, NULL},
	    {"POST", "/echo", 0, h_echo, NULL},
	    {"PUT", "/echo", 0, h_echo, NULL},
	    {"GET", "/mem", 0, h_mem, NULL},
	    {NULL, "/slow", 0, h_slow, NULL},
	    {NULL, "/fail", 0, h_fail, NULL},
	    {NULL, "/hookless", 0, h_hookless, NULL},
	    {"GET", "/stream", 0, h_stream, NULL},
	    {"POST", "/upload", KEEL_HTTP_STREAM_BODY, h_upload, NULL},
	    {"POST", "/duplex", KEEL_HTTP_STREAM_BODY, h_duplex, NULL},
	    {"GET", "/_keel/status", KEEL_HTTP_NO_SHED, keel_http_status, "0"},
	    {NULL, "/proxy", KEEL_HTTP_PREFIX | KEEL_HTTP_STREAM_BODY, h_proxy, NULL},
	    {"GET", "/", KEEL_HTTP_PREFIX, keel_static_handler, g.st}, /* (and HEAD) */
	};
	for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++)
		if (keel_http_route(g.srv, routes[i].method, routes[i].path, routes[i].flags, routes[i].fn,
		                    routes[i].ud) < 0)
			FUZZ_FAIL("route %s", routes[i].path);
	if (keel_http_status_add(g.srv, "upstream", "fuzz", proxy_metrics, NULL) < 0)
		FUZZ_FAIL("keel_http_status_add");
}

static void server_stopped(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)ud;
	FUZZ_CHECK(o.err == 0);
	g.stopped = true;
}

static void setup(void)
{
	g.trace = getenv("FUZZ_SERVER_TRACE") != NULL;
	keel_log_set_level(getenv("KEEL_LOG") ? atoi(getenv("KEEL_LOG")) : KEEL_LOG_ERROR);
	make_root();

	keel_loop_opts lo;
	keel_loop_opts_default(&lo);
	lo.quiet = true;
	lo.recv_buf_count = 32; /* few and small: heads span buffers, and the pool can run dry */
	lo.recv_buf_size = 1024;
	lo.ops_max = 1024;
	int rc = keel_loop_new(&g.loop, &lo);
	if (rc < 0)
		FUZZ_FAIL("keel_loop_new: %s", keel_strerror(rc));
	fprintf(stderr, "fuzz_server: backend %s, static root %s\n", keel_loop_backend(g.loop), g.root);

	keel_http_config *c = &g.cfg;
	keel_http_config_default(c);
	c->limits.request_line_max = 512;
	c->limits.head_max = 2048;
	c->limits.headers_max = 16;
	c->body_max = 8192;
	c->body_stream_max = 32768;
	c->pipeline_max = 4;
	c->requests_per_conn_max = 6;
	c->queue_delay_max_us = 0; /* (time-dependent: would make inputs irreproducible) */
	c->inflight_max = 6;
	c->body_mem_max = 16384;
	c->conn_out_max = 4096;
	c->header_timeout_ms = 25;
	c->body_timeout_ms = 25;
	c->idle_timeout_ms = 40;
	c->send_timeout_ms = 25;
	g.log_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
	c->access_log_fd = g.log_fd;
	int err = keel_static_new(&g.st, g.root);
	if (err < 0)
		FUZZ_FAIL("keel_static_new: %s", keel_strerror(err));
	server_make();

	for (int i = 0; i < 2; i++) {
		g.port[i] = listen_port(&g.lfd[i]);
		keel_promise_done(keel_accept(g.loop, g.lfd[i], up_accept, NULL), up_accept_ended, NULL);
	}
	/* A port that refuses: bound, not listening. */
	g.dead_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	if (g.dead_fd < 0 || bind(g.dead_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		FUZZ_FAIL("bind: %s", strerror(errno));
	g.dead_port = keel_tcp_port(g.dead_fd);

	for (int i = 0; i < CLIENTS; i++) {
		g.cl[i].fd = -1;
		if (!(g.cl[i].out = malloc(OUT_CAP)))
			FUZZ_FAIL("out of memory");
	}
	for (int i = 0; i < 16; i++)
		tick(0);
	keel_loop_get_stats(g.loop, &g.base);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	setup();
	return 0;
}

/* ---- The proxy, per input ------------------------------------------------------------ */

static void proxy_make(unsigned bits)
{
	static char names[3][32];
	snprintf(names[0], sizeof(names[0]), "127.0.0.1:%d", g.port[0]);
	snprintf(names[1], sizeof(names[1]), "127.0.0.1:%d", g.port[1]);
	snprintf(names[2], sizeof(names[2]), "127.0.0.1:%d", g.dead_port);
	const char *ups[2];
	unsigned n = 1;
	switch (bits & 3) {
	case 0: ups[0] = names[0]; break;
	case 1:
		ups[0] = names[0];
		ups[1] = names[1];
		n = 2;
		break;
	case 2:
		ups[0] = names[2];
		ups[1] = names[0];
		n = 2;
		break;
	default:
		ups[0] = names[0];
		ups[1] = names[2];
		n = 2;
		break;
	}
	keel_proxy_config pc;
	keel_proxy_config_default(&pc);
	pc.upstreams = ups;
	pc.nupstreams = n;
	pc.balance = bits & 4 ? KEEL_PROXY_LEAST_CONN : KEEL_PROXY_ROUND_ROBIN;
	if (bits & 8)
		pc.via = NULL;
	static const uint64_t timeouts[] = {1000, 10, 40, 200};
	pc.client.response_timeout_ms = timeouts[(bits >> 4) & 3];
	static const unsigned pools[] = {64, 1, 2, 4};
	pc.client.pool_max = pools[(bits >> 6) & 3];
	pc.client.pending_max = bits & 0x100 ? 1 : 16;
	pc.client.body_max = bits & 0x200 ? 256 : 65536;
	if (bits & 0x400) {
		pc.client.limits.head_max = 256;
		pc.client.limits.headers_max = 4;
		pc.client.limits.request_line_max = 128;
	}
	pc.client.connect_timeout_ms = bits & 0x800 ? 5 : 1000;
	pc.client.idle_timeout_ms = 50;
	int err = keel_proxy_new(&g.px, g.loop, &pc);
	if (err < 0)
		FUZZ_FAIL("keel_proxy_new: %s", keel_strerror(err));
}

/* ---- Clients ---------------------------------------------------------------------------- */

enum { OPEN_NONBLOCK = 1, OPEN_SMALL = 2, OPEN_LARGE = 4 };

/*
 * Client i, opened if asked (and the input has not opened too many). The
 * server's end is a blocking socket, as io_uring's accept makes them,
 * unless OPEN_NONBLOCK; the driver's end never blocks. Socket buffers: small (sends in slices,
 * receiving pauses), the default, or by default small on every other connection.
 */
static struct client *client_open(unsigned i, int how)
{
	struct client *c = &g.cl[i % CLIENTS];
	if (c->fd >= 0 || g.opens >= OPENS_MAX)
		return c->fd >= 0 ? c : NULL;
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		FUZZ_FAIL("socketpair: %s", strerror(errno));
	fcntl(sv[0], F_SETFL, O_NONBLOCK);
	if (how & OPEN_NONBLOCK)
		fcntl(sv[1], F_SETFL, O_NONBLOCK);
	if ((how & OPEN_SMALL) || (!(how & OPEN_LARGE) && g.opens % 2 == 0)) {
		int sz = 4096;
		setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
		setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	}
	g.opens++;
	int rc = keel_http_server_adopt(g.srv, sv[1]);
	if (rc < 0 && !(rc == KEEL_ESTOPPED && g.stopping))
		FUZZ_FAIL("keel_http_server_adopt: %s", keel_strerror(rc));
	c->fd = sv[0];
	c->eof = c->in_over = c->out_over = false;
	c->in_len = c->out_len = 0;
	return c;
}

static struct client *client_get(unsigned i, bool open)
{
	struct client *c = &g.cl[i % CLIENTS];
	if (c->fd >= 0 || !open)
		return c->fd >= 0 ? c : NULL;
	return client_open(i, 0);
}

static void client_read(struct client *c)
{
	if (!c || c->eof)
		return;
	for (;;) {
		char scratch[16384];
		bool keep = c->out_len < OUT_CAP;
		char *dst = keep ? c->out + c->out_len : scratch;
		size_t room = keep ? OUT_CAP - c->out_len : sizeof(scratch);
		ssize_t n = recv(c->fd, dst, room, MSG_DONTWAIT);
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
			c->eof = true; /* the server closed (or reset) its end */
			break;
		}
		if (n < 0)
			break;
		if (keep)
			c->out_len += (size_t)n;
		else
			c->out_over = true;
		g.rcvd += (uint64_t)n;
	}
	size_t k = c->out_len < 9 ? c->out_len : 9;
	if (k && memcmp(c->out, "HTTP/1.1 ", k) != 0)
		FUZZ_FAIL("the server's output starts with \"%.*s\", not \"HTTP/1.1 \"", (int)k, c->out);
}

static void client_write(struct client *c, const char *p, size_t n, size_t piece)
{
	unsigned pieces = 0, stalls = 0;
	while (c && n) {
		size_t k = piece && pieces < PIECES_MAX ? (piece < n ? piece : n) : n;
		ssize_t w = send(c->fd, p, k, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
			/* The server is not reading (paused, or a full buffer): let it run a
			 * little. */
			if (++stalls > 16)
				return;
			tick(0);
			continue;
		}
		if (w <= 0)
			return; /* the server closed its end */
		if (c->in_len + (size_t)w <= IN_CAP) {
			memcpy(c->in + c->in_len, p, (size_t)w);
			c->in_len += (size_t)w;
		} else {
			c->in_over = true;
		}
		p += w;
		n -= (size_t)w;
		pieces++;
		if (n && piece)
			tick(0);
	}
}

/* ---- Checks on what a client saw ----------------------------------------------------------- */

#define CHECK_HDRS 128

/* What the driver makes of the next request a client sent. */
struct creq {
	enum { Q_NONE, Q_OK, Q_BAD } kind;
	keel_http_msg m;
	keel_http_header h[16];
	keel_http_target t;
	bool target_ok;
	bool body_complete;
	bool body_bad; /* framing the server cannot read past */
	char *body;
	size_t body_len;
};

static char qscratch[IN_CAP], qbody[IN_CAP], rbody[OUT_CAP], expect[OUT_CAP];

/*
 * De-chunk a body from in into out (appending at *out_len). Returns
 * KEEL_HTTP_CHUNK_DONE with *used the bytes of in it took, or
 * KEEL_HTTP_INCOMPLETE (more to come), or the decoder's error.
 */
static int dechunk(const char *in, size_t len, char *out, size_t *out_len, size_t *used)
{
	keel_http_chunked d;
	keel_http_chunked_init(&d, 0);
	size_t off = 0;
	for (;;) {
		size_t n = 0;
		keel_str span;
		int r = keel_http_chunked_decode(&d, in + off, len - off, &n, &span);
		off += n;
		if (r != KEEL_HTTP_CHUNK_DATA) {
			*used = off;
			return r;
		}
		memcpy(out + *out_len, span.ptr, span.len);
		*out_len += span.len;
	}
}

static size_t next_request(const struct client *c, size_t off, struct creq *q)
{
	memset(q, 0, sizeof(*q));
	if (off >= c->in_len)
		return off;
	int rc = keel_http_parse_request(c->in + off, c->in_len - off, 0, &q->m, q->h, 16, &g.cfg.limits);
	if (rc == KEEL_HTTP_INCOMPLETE)
		return off;
	if (rc < 0) {
		q->kind = Q_BAD;
		return c->in_len;
	}
	q->kind = Q_OK;
	q->target_ok = keel_http_target_parse(q->m.target, &q->t, qscratch) == 0;
	off += (size_t)rc;
	q->body = qbody;
	switch (q->m.body) {
	case KEEL_HTTP_BODY_LENGTH:
		if (q->m.content_length > c->in_len - off) {
			q->body_len = c->in_len - off;
			memcpy(qbody, c->in + off, q->body_len);
			return c->in_len;
		}
		q->body_len = (size_t)q->m.content_length;
		memcpy(qbody, c->in + off, q->body_len);
		q->body_complete = true;
		return off + q->body_len;
	case KEEL_HTTP_BODY_CHUNKED: {
		size_t used;
		int r = dechunk(c->in + off, c->in_len - off, qbody, &q->body_len, &used);
		if (r == KEEL_HTTP_CHUNK_DONE) {
			q->body_complete = true;
			return off + used;
		}
		q->body_bad = r != KEEL_HTTP_INCOMPLETE;
		return c->in_len;
	}
	default: q->body_complete = true; return off;
	}
}

static bool list_has(const keel_http_msg *m, const char *name, const char *token)
{
	for (unsigned i = 0; i < m->nheaders; i++) {
		if (!keel_str_ieq(m->headers[i].name, name))
			continue;
		keel_str list = m->headers[i].value, e;
		while (keel_http_list_next(&list, &e))
			if (keel_str_ieq(e, token))
				return true;
	}
	return false;
}

static bool path_is(const struct creq *q, const char *p)
{
	return q->target_ok && keel_str_eq(q->t.path, p);
}

/* The body a 200 answer to q must have, when the driver knows it: its length, or -1. */
static long expected_body(const struct creq *q, const char *got, size_t got_len)
{
	if (!q->body_complete || !q->target_ok)
		return -1;
	if (path_is(q, "/small.txt")) {
		memcpy(expect, SMALL, sizeof(SMALL) - 1);
		return (long)sizeof(SMALL) - 1;
	}
	if (path_is(q, "/big.bin")) {
		memcpy(expect, big, BIG_LEN);
		return BIG_LEN;
	}
	if (path_is(q, "/page.html")) {
		/* Either the page or its .gz sibling, by Accept-Encoding. */
		bool gz = got_len == sizeof(PAGE_GZ) - 1 && memcmp(got, PAGE_GZ, got_len) == 0;
		const char *p = gz ? PAGE_GZ : PAGE;
		size_t n = gz ? sizeof(PAGE_GZ) - 1 : sizeof(PAGE) - 1;
		memcpy(expect, p, n);
		return (long)n;
	}
	if (path_is(q, "/sub/") || path_is(q, "/sub/index.html")) {
		memcpy(expect, INDEX, sizeof(INDEX) - 1);
		return (long)sizeof(INDEX) - 1;
	}
	if (path_is(q, "/empty.txt"))
		return 0;
	if (path_is(q, "/hello")) {
		memcpy(expect, HELLO, sizeof(HELLO) - 1);
		return (long)sizeof(HELLO) - 1;
	}
	if (path_is(q, "/mem")) {
		size_t n = mem_len(q->t.query);
		memcpy(expect, mem, n);
		return (long)n;
	}
	if (path_is(q, "/slow")) {
		memcpy(expect, "slow", 4);
		return 4;
	}
	if (path_is(q, "/echo") || path_is(q, "/duplex")) {
		memcpy(expect, q->body, q->body_len);
		return (long)q->body_len;
	}
	if (path_is(q, "/stream"))
		return qhas(q->t.query, "lie") ? -1 : (long)stream_body(q->t.query, expect);
	if (path_is(q, "/upload")) {
		if (qhas(q->t.query, "early")) {
			memcpy(expect, "early\n", 6);
			return 6;
		}
		if (qhas(q->t.query, "one"))
			return -1; /* (depends on how the body arrived) */
		uint32_t a = 1, b = 0;
		adler(&a, &b, q->body, q->body_len);
		return snprintf(expect, 64, "bytes %llu adler32 %08x\n", (unsigned long long)q->body_len,
		                (unsigned)(b << 16 | a));
	}
	return -1;
}

/*
 * Pair the responses a client received with the requests it sent, in
 * order, and check each. Stops quietly where the output was cut off (a
 * response still coming when the client looked).
 */
static void check_client(const struct client *c)
{
	if (g.trace)
		fprintf(stderr, "client %d: wrote %zu bytes, received %zu%s\n", (int)(c - g.cl), c->in_len,
		        c->out_len, c->eof ? ", then the end" : "");
	if (c->in_over || c->out_over)
		return;
	static struct creq q;
	keel_http_limits lim = {.request_line_max = 1 << 16, .head_max = 1 << 16, .headers_max = CHECK_HDRS};
	static keel_http_header rh[CHECK_HDRS];
	size_t qo = 0, so = 0;
	unsigned nresp = 0;
	bool closed = false;
	while (so < c->out_len) {
		if (closed)
			FUZZ_FAIL("client got %zu bytes after response %u, which ended the "
			          "connection:\n%.*s",
			          c->out_len - so, nresp - 1,
			          (int)(c->out_len - so > 300 ? 300 : c->out_len - so), c->out + so);
		qo = next_request(c, qo, &q);
		keel_str method = q.kind == Q_OK ? q.m.method : (keel_str){NULL, 0};
		keel_http_msg m;
		int rc;
		for (;;) {
			rc = keel_http_parse_response(c->out + so, c->out_len - so, 0, &m, rh, CHECK_HDRS,
			                              &lim, method);
			if (rc == KEEL_HTTP_INCOMPLETE)
				return;
			if (rc < 0)
				FUZZ_FAIL("response %u: keel's parser rejects it (%s):\n%.*s", nresp,
				          fuzz_rc_name(rc),
				          (int)(c->out_len - so > 400 ? 400 : c->out_len - so), c->out + so);
			if (m.status >= 200)
				break;
			if (m.status != 100 || q.kind != Q_OK || !q.m.expect_continue)
				FUZZ_FAIL("response %u: interim %d to a request that did not ask "
				          "for 100-continue",
				          nresp, m.status);
			so += (size_t)rc;
		}
		so += (size_t)rc;
		if (q.kind != Q_OK && m.status < 400)
			FUZZ_FAIL("response %u: status %d to a request %s", nresp, m.status,
			          q.kind == Q_BAD ? "the parser rejects" : "that was never completed");
		if (q.kind == Q_OK && q.m.version_minor == 0 && m.body == KEEL_HTTP_BODY_CHUNKED)
			FUZZ_FAIL("response %u: chunked body to an HTTP/1.0 request", nresp);
		size_t blen = 0;
		bool until_close = false;
		switch (m.body) {
		case KEEL_HTTP_BODY_LENGTH:
			if (m.content_length > c->out_len - so) {
				/*
				 * Cut off. Fine if it is still coming; but a body the
				 * driver knows, ended by the server's close before any
				 * send could time out (and with no stop), was lost.
				 */
				if (c->eof && q.kind == Q_OK && !g.stopping &&
				    expected_body(&q, "", 0) >= 0 &&
				    now_ms() - g.t0_ms < g.cfg.send_timeout_ms)
					FUZZ_FAIL("response %u to %.*s %.*s: the server closed "
					          "after %zu of its %llu "
					          "body bytes (%llu ms into the input)",
					          nresp, (int)q.m.method.len, q.m.method.ptr,
					          (int)q.m.target.len, q.m.target.ptr, c->out_len - so,
					          (unsigned long long)m.content_length,
					          (unsigned long long)(now_ms() - g.t0_ms));
				return;
			}
			blen = (size_t)m.content_length;
			memcpy(rbody, c->out + so, blen);
			so += blen;
			break;
		case KEEL_HTTP_BODY_CHUNKED: {
			size_t used;
			int r = dechunk(c->out + so, c->out_len - so, rbody, &blen, &used);
			if (r == KEEL_HTTP_INCOMPLETE)
				return;
			if (r != KEEL_HTTP_CHUNK_DONE)
				FUZZ_FAIL("response %u: bad chunked framing from the server (%s)", nresp,
				          fuzz_rc_name(r));
			so += used;
			break;
		}
		case KEEL_HTTP_BODY_UNTIL_CLOSE:
			if (!c->eof)
				return; /* (the body runs to a close the client has not seen yet) */
			blen = c->out_len - so;
			memcpy(rbody, c->out + so, blen);
			so = c->out_len;
			until_close = true;
			break;
		default: break;
		}
		if (q.kind == Q_OK && path_is(&q, "/outside") && m.status < 300)
			FUZZ_FAIL("response %u: status %d for a symlink out of the static root", nresp,
			          m.status);
		if (q.kind == Q_OK && m.status == 200 && !keel_str_eq(q.m.method, "HEAD") &&
		    (!path_is(&q, "/duplex") || q.body_complete)) {
			long want = expected_body(&q, rbody, blen);
			if (want >= 0 && ((size_t)want != blen || memcmp(expect, rbody, blen) != 0))
				FUZZ_FAIL("response %u to %.*s %.*s: body of %zu bytes, expected "
				          "%ld:\n%.*s",
				          nresp, (int)q.m.method.len, q.m.method.ptr, (int)q.m.target.len,
				          q.m.target.ptr, blen, want, (int)(blen > 200 ? 200 : blen), rbody);
		}
		if (g.trace)
			fprintf(stderr, "  response %u: %d, %zu body bytes, to %.*s %.*s\n", nresp, m.status,
			        blen, q.kind == Q_OK ? (int)q.m.method.len : 1,
			        q.kind == Q_OK ? q.m.method.ptr : "-",
			        q.kind == Q_OK ? (int)q.m.target.len : 0,
			        q.kind == Q_OK ? q.m.target.ptr : "");
		nresp++;
		closed = until_close || q.kind != Q_OK || q.body_bad || list_has(&m, "connection", "close") ||
		         !q.m.keep_alive;
		if (q.kind == Q_OK && !q.body_complete)
			closed = true; /* what follows cannot be framed */
	}
}

static void settle(void);

static void client_close(struct client *c, bool abort_)
{
	if (!c)
		return;
	if (!abort_)
		settle();
	check_client(c);
	close(c->fd);
	c->fd = -1;
}

/* ---- The program ------------------------------------------------------------------------------
 */

struct seg {
	char op;
	long n, k; /* -1: absent */
	const char *p;
	size_t len;
};

static const char *find_sep(const char *p, const char *end)
{
	for (; p + 3 <= end; p++)
		if (p[0] == '\n' && p[1] == '%' && p[2] == '%')
			return p;
	return end;
}

static long seg_num(const char **p, const char *end)
{
	if (*p >= end || **p < '0' || **p > '9')
		return -1;
	long v = 0;
	while (*p < end && **p >= '0' && **p <= '9') {
		if (v < 100000000)
			v = v * 10 + (**p - '0');
		(*p)++;
	}
	return v;
}

static void seg_parse(const char *p, const char *end, struct seg *s)
{
	s->op = p < end ? *p++ : 0;
	s->n = seg_num(&p, end);
	s->k = -1;
	if (p < end && *p == '/') {
		p++;
		s->k = seg_num(&p, end);
	}
	if (p < end && *p == ' ')
		p++;
	s->p = p;
	s->len = (size_t)(end - p);
}

static void run_ms(long ms)
{
	if (ms < 0)
		ms = 1;
	if (ms > SLEEP_OP_MAX_MS)
		ms = SLEEP_OP_MAX_MS;
	if (g.slept_ms + (unsigned)ms > SLEEP_INPUT_MAX_MS)
		ms = SLEEP_INPUT_MAX_MS - g.slept_ms;
	g.slept_ms += (unsigned)ms;
	uint64_t end = now_ms() + (uint64_t)ms;
	while (now_ms() < end)
		tick(1);
}

static struct upconn *upconn(long n)
{
	if (!g.nup)
		return NULL;
	return &g.up[(n < 0 ? 0 : (unsigned long)n) % g.nup];
}

static void run_seg(const struct seg *s)
{
	unsigned n = s->n < 0 ? 0 : (unsigned)s->n;
	struct upconn *k;
	switch (s->op) {
	case 'w': client_write(client_get(n, true), s->p, s->len, s->k > 0 ? (size_t)s->k : 0); break;
	case 'o': client_open(n, s->k < 0 ? 0 : (int)s->k); break;
	case 'r':
		if (s->n < 0)
			for (unsigned i = 0; i < CLIENTS; i++)
				client_read(client_get(i, false));
		else
			client_read(client_get(n, false));
		break;
	case 't':
		for (long i = 0; i < (s->n < 0 ? 1 : s->n > TICKS_MAX ? TICKS_MAX : s->n); i++)
			tick(0);
		break;
	case 's': run_ms(s->n); break;
	case 'h': {
		struct client *c = client_get(n, false);
		if (c)
			shutdown(c->fd, SHUT_WR);
		break;
	}
	case 'x':
	case 'c': client_close(client_get(n, false), s->op == 'x'); break;
	case 'k':
		if (!g.stopping) {
			g.stopping = true;
			keel_promise_done(keel_http_server_stop(g.srv, n % 31), server_stopped, NULL);
		}
		break;
	case 'u':
		if (g.ans_n < ANSWERS_MAX) {
			g.ans[(g.ans_head + g.ans_n) % ANSWERS_MAX] =
			    (struct answer){s->p, s->len, (int)(n % 4)};
			g.ans_n++;
			up_dispatch();
		}
		break;
	case 'U':
		if ((k = upconn(s->n)))
			up_send(k, s->p, s->len, s->k < 0 ? UP_KEEP : (int)(s->k % 4));
		break;
	case 'H':
		if ((k = upconn(s->n)) && k->fd >= 0 && !k->close_mode)
			shutdown(k->fd, SHUT_WR);
		break;
	case 'C':
	case 'X':
		if ((k = upconn(s->n)))
			up_close(k, s->op == 'X' ? UP_RESET : UP_CLOSE);
		break;
	default: break; /* (unknown ops are no-ops: the mutator makes many) */
	}
}

/* ---- After each input: everything the input opened is closed and given back -------------- */

static bool settled(bool want_no_conns_only)
{
	keel_http_stats hs;
	keel_http_server_stats(g.srv, &hs);
	if (hs.conns_open || g.hookless_live || (g.stopping && !g.stopped))
		return false;
	if (want_no_conns_only)
		return true;
	keel_loop_stats ls;
	keel_loop_get_stats(g.loop, &ls);
	return !g.nup_open && ls.ops_inflight == g.base.ops_inflight &&
	       ls.bufs_in_use == g.base.bufs_in_use && ls.promises_live == g.base.promises_live &&
	       ls.ctx_live == g.base.ctx_live;
}

static void wait_until(bool conns_only, const char *what)
{
	for (unsigned i = 0; i < DRAIN_TICKS && !settled(conns_only); i++)
		tick(i < 32 ? 0 : 1);
	if (settled(conns_only))
		return;
	keel_http_stats hs;
	keel_http_server_stats(g.srv, &hs);
	keel_loop_stats ls;
	keel_loop_get_stats(g.loop, &ls);
	FUZZ_FAIL("%s: not back to baseline after %d ticks: conns_open %u inflight %u hookless %u "
	          "upstream conns %u; ops_inflight %u (base %u) bufs_in_use %u (base %u) "
	          "promises_live %u "
	          "(base %u) ctx_live %u (base %u)",
	          what, DRAIN_TICKS, hs.conns_open, hs.inflight, g.hookless_live, g.nup_open, ls.ops_inflight,
	          g.base.ops_inflight, ls.bufs_in_use, g.base.bufs_in_use, ls.promises_live,
	          g.base.promises_live, ls.ctx_live, g.base.ctx_live);
}

/*
 * Whether the server has nothing left to do but wait for input: no handler
 * pending, the clients have received every byte it counted as sent (heads,
 * bodies, files; chunk framing and 100 Continue are extra), and no
 * operation is in flight beyond one receive per connection (file
 * operations on io_uring complete on the kernel's worker threads, a tick or
 * a few later). Bytes lost to a close or a reset keep it false: settle()
 * then gives up after its bound.
 */
static bool quiet(void)
{
	keel_http_stats hs;
	keel_http_server_stats(g.srv, &hs);
	keel_loop_stats ls;
	keel_loop_get_stats(g.loop, &ls);
	return !hs.inflight && g.rcvd >= hs.bytes_out - g.out0 &&
	       ls.ops_inflight <= g.base.ops_inflight + hs.conns_open + 2 * g.nup_open;
}

/* Let the answers under way arrive (reading, so that big ones can), a bounded while. */
static void settle(void)
{
	for (int i = 0; i < 64 + 3; i++) {
		tick(i < 64 ? 0 : 1);
		for (unsigned j = 0; j < CLIENTS; j++)
			client_read(client_get(j, false));
		if (i >= 4 && quiet())
			break;
	}
}

static void finish(void)
{
	settle();
	for (unsigned i = 0; i < CLIENTS; i++)
		client_close(client_get(i, false), true); /* (settled: all read) */
	/*
	 * A closed client looks like a half-closed one to the server: it
	 * answers what was asked, then closes. A request waiting for an
	 * upstream that never answers would hold its connection for the
	 * proxy's response timeout; after a short grace, freeing the proxy cuts
	 * such requests off (a path of its own).
	 */
	for (unsigned i = 0; i < 40 && !settled(true); i++)
		tick(i < 32 ? 0 : 1);
	g.draining = true;
	keel_proxy_free(g.px);
	g.px = NULL;
	for (unsigned i = 0; i < g.nup; i++)
		up_close(&g.up[i], UP_RESET);
	wait_until(false, "after the clients, the proxy and the upstream closed");
	keel_http_stats hs;
	keel_http_server_stats(g.srv, &hs);
	FUZZ_CHECK(hs.inflight == 0);
	if (g.stopping) {
		/* Stopped: a new server for the next input (and freeing one is a path too). */
		keel_http_server_free(g.srv);
		server_make();
		g.stopping = g.stopped = false;
	}
	g.draining = false;
	g.nup = 0;
	g.ans_n = g.ans_head = 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *p = (const char *)data, *end = p + size;
	/*
	 * The loop has not run since the last input: a tick first, so that its
	 * clock is fresh, as in a server that runs its loop without pause (on
	 * epoll, work done before a tick's wait uses the clock of the tick
	 * before: fuzz/crashes-found/README.md, server-epoll-stale-clock).
	 */
	tick(0);
	g.opens = 0;
	g.slept_ms = 0;
	g.t0_ms = now_ms();
	g.rcvd = 0;
	keel_http_stats hs0;
	keel_http_server_stats(g.srv, &hs0);
	g.out0 = hs0.bytes_out;
	struct seg s;
	const char *e = find_sep(p, end);
	seg_parse(p, e, &s);
	proxy_make(s.op == 'p' && s.n >= 0 ? (unsigned)s.n : 0);
	for (;;) {
		if (s.op != 'p')
			run_seg(&s);
		if (e == end)
			break;
		p = e + 3;
		e = find_sep(p, end);
		seg_parse(p, e, &s);
	}
	finish();
	return 0;
}
