/*
 * quote: "receive request -> All(call A, call B) -> format -> send" and
 * "Any(replica 1, replica 2)" hedging, on plain TCP lines.
 *
 *   usage: build/examples/quote [PORT]     (default 7100; listens on 127.0.0.1)
 *
 * One process runs three small upstream services on the next ports (price,
 * volume, and a slow replica of price) and the front service:
 *
 *   QUOTE <sym>\n  -> calls price and volume concurrently (keel_all), answers
 *                     "<sym> price=<p> volume=<v>\n"
 *   FAST <sym>\n   -> asks the fast and the slow price replica (keel_any) and
 *                     answers with the first, cancelling the other
 *   SLOW <sym>\n   -> asks only the slow replica, with a 100 ms deadline
 *                     (keel_timeout): answers "ERROR Connection timed out"
 *
 * Every request gets a context: its arena holds the request's strings and
 * the calls' buffers, and is freed in one step when the chain ends. Each
 * upstream call is bounded by keel_timeout.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/keel.h"

#define CALL_TIMEOUT_MS 1000

static keel_loop *loop;
static struct sockaddr_in up_price, up_volume, up_slow;

/* ---- Upstreams: answer "<name> <sym> <value>\n" after a delay. ----------- */

struct upstream {
	const char *name;
	unsigned delay_ms;
};

struct up_req {
	struct upstream *up;
	int fd;
	char in[64];
	char out[96];
};

static keel_promise *up_reply(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	(void)in;
	struct up_req *r = ud;
	char sym[32] = "";
	sscanf(r->in, "%31s", sym);
	unsigned value = 0;
	for (const char *s = sym; *s; s++)
		value = value * 31 + (unsigned char)*s;
	int n = snprintf(r->out, sizeof(r->out), "%s %s %u\n", r->up->name, sym, value % 1000);
	return keel_send(loop, r->fd, r->out, (size_t)n);
}

static keel_promise *up_got(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	struct up_req *r = ud;
	r->in[in.n < (int64_t)sizeof(r->in) ? in.n : (int64_t)sizeof(r->in) - 1] = '\0';
	return keel_flat_map(keel_sleep(loop, r->up->delay_ms), up_reply, r);
}

static void up_done(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	struct up_req *r = ud;
	keel_promise_release(keel_close(loop, r->fd));
	free(r);
}

static int up_accept(void *ud, int fd)
{
	struct up_req *r = calloc(1, sizeof(*r));
	if (!r)
		return KEEL_CONTINUE;
	r->up = ud;
	r->fd = fd;
	keel_promise *p = keel_recv(loop, fd, r->in, sizeof(r->in) - 1);
	keel_promise_done(keel_flat_map(p, up_got, r), up_done, r);
	return KEEL_CONTINUE;
}

static int start_upstream(struct upstream *up, int port, struct sockaddr_in *addr)
{
	char a[32];
	snprintf(a, sizeof(a), "127.0.0.1:%d", port);
	int fd = keel_tcp_listen(a, 128, 0);
	if (fd < 0)
		return fd;
	memset(addr, 0, sizeof(*addr));
	addr->sin_family = AF_INET;
	addr->sin_port = htons((uint16_t)port);
	addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	keel_promise_release(keel_accept(loop, fd, up_accept, up));
	return 0;
}

/* ---- A call: connect, send the line, read one reply line. --------------- */

struct call {
	const char *line; /* in the request's arena */
	char *reply;      /* in the request's arena */
	int fd;
};

static keel_promise *call_send(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	struct call *c = ud;
	c->fd = (int)in.n;
	return keel_send(loop, c->fd, c->line, strlen(c->line));
}

static keel_promise *call_recv(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	(void)in;
	struct call *c = ud;
	return keel_recv(loop, c->fd, c->reply, 95);
}

static keel_outcome call_parse(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	struct call *c = ud;
	if (in.n == 0)
		return keel_fail(-ECONNRESET);
	c->reply[in.n] = '\0';
	char name[16], sym[32];
	unsigned value;
	if (sscanf(c->reply, "%15s %31s %u", name, sym, &value) != 3)
		return keel_fail(-EPROTO);
	return keel_ok(value, c);
}

static void call_cleanup(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	(void)in;
	struct call *c = ud;
	if (c->fd >= 0)
		keel_promise_release(keel_close(loop, c->fd));
}

static keel_promise *call(keel_ctx *ctx, const struct sockaddr_in *to, const char *line)
{
	struct call *c = keel_ctx_alloc(ctx, sizeof(*c));
	c->line = line;
	c->reply = keel_ctx_alloc(ctx, 96);
	c->fd = -1;
	keel_promise *p = keel_promise_bind_ctx(
	    keel_connect(loop, (const struct sockaddr *)to, sizeof(*to), CALL_TIMEOUT_MS), ctx);
	p = keel_flat_map(p, call_send, c);
	p = keel_flat_map(p, call_recv, c);
	p = keel_map(p, call_parse, c);
	/* finally closes the socket on every path, timeouts and cancels included */
	return keel_timeout(keel_finally(p, call_cleanup, c), CALL_TIMEOUT_MS);
}

/* ---- The front service. ------------------------------------------------- */

struct request {
	int fd;
	char in[128];
	char *sym, *line;
	keel_outcome both[2]; /* All's results, by index */
	int winner;
	char *out;
};

static keel_outcome format_quote(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)in;
	struct request *r = ud;
	r->out = keel_ctx_alloc(ctx, 128);
	snprintf(r->out, 128, "%s price=%lld volume=%lld\n", r->sym, (long long)r->both[0].n,
	         (long long)r->both[1].n);
	return keel_ok(0, r->out);
}

static keel_outcome format_fast(keel_ctx *ctx, keel_outcome in, void *ud)
{
	struct request *r = ud;
	r->out = keel_ctx_alloc(ctx, 128);
	snprintf(r->out, 128, "%s price=%lld from=%s\n", r->sym, (long long)in.n,
	         r->winner == 0 ? "fast" : "slow");
	return keel_ok(0, r->out);
}

static keel_outcome format_error(keel_ctx *ctx, keel_outcome in, void *ud)
{
	struct request *r = ud;
	r->out = keel_ctx_alloc(ctx, 128);
	snprintf(r->out, 128, "ERROR %s\n", keel_strerror(in.err));
	return keel_ok(0, r->out);
}

static keel_promise *respond(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	struct request *r = ud;
	return keel_send(loop, r->fd, in.ptr, strlen(in.ptr));
}

static void request_done(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	struct request *r = ud;
	keel_promise_release(keel_close(loop, r->fd));
}

static keel_promise *handle(keel_ctx *ctx, keel_outcome in, void *ud)
{
	struct request *r = ud;
	r->in[in.n] = '\0';
	char verb[16], sym[32];
	if (in.n == 0 || sscanf(r->in, "%15s %31s", verb, sym) != 2)
		return NULL; /* fails the chain: the connection is closed without a reply */
	r->sym = keel_ctx_strdup(ctx, sym);
	r->line = keel_ctx_alloc(ctx, strlen(sym) + 2);
	sprintf(r->line, "%s\n", sym);

	keel_promise *p;
	if (strcmp(verb, "QUOTE") == 0) {
		/* All: both calls run concurrently; their values land in r->both. */
		keel_promise *calls[2] = {call(ctx, &up_price, r->line), call(ctx, &up_volume, r->line)};
		p = keel_map(keel_all(loop, calls, 2, r->both), format_quote, r);
	} else if (strcmp(verb, "FAST") == 0) {
		/* Any: the first success wins; the slower call is cancelled, socket and all. */
		keel_promise *calls[2] = {call(ctx, &up_price, r->line), call(ctx, &up_slow, r->line)};
		p = keel_map(keel_any(loop, calls, 2, &r->winner), format_fast, r);
	} else if (strcmp(verb, "SLOW") == 0) {
		r->winner = 1;
		p = keel_map(keel_timeout(call(ctx, &up_slow, r->line), 100), format_fast, r);
	} else {
		p = keel_promise_bind_ctx(keel_promise_new(loop), ctx);
		keel_promise_reject(p, -EINVAL);
	}
	return keel_flat_map(keel_catch(p, format_error, r), respond, r);
}

static int front_accept(void *ud, int fd)
{
	(void)ud;
	keel_ctx *ctx = keel_ctx_new(loop);
	struct request *r = keel_ctx_alloc(ctx, sizeof(*r));
	memset(r, 0, sizeof(*r));
	r->fd = fd;
	keel_promise *p = keel_promise_bind_ctx(keel_recv(loop, fd, r->in, sizeof(r->in) - 1), ctx);
	keel_ctx_release(ctx); /* the chain holds it from here; freed when the chain ends */
	keel_promise_done(keel_flat_map(p, handle, r), request_done, r);
	return KEEL_CONTINUE;
}

int main(int argc, char **argv)
{
	int port = argc > 1 ? atoi(argv[1]) : 7100;
	static struct upstream price = {"price", 2}, volume = {"volume", 5}, slow = {"price", 300};
	int err = keel_loop_new(&loop, NULL);
	if (err < 0) {
		fprintf(stderr, "quote: %s\n", keel_strerror(err));
		return 1;
	}
	char addr[32];
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
	int lfd = keel_tcp_listen(addr, 128, 0);
	if (lfd < 0 || start_upstream(&price, port + 1, &up_price) < 0 ||
	    start_upstream(&volume, port + 2, &up_volume) < 0 ||
	    start_upstream(&slow, port + 3, &up_slow) < 0) {
		fprintf(stderr, "quote: cannot listen on ports %d..%d\n", port, port + 3);
		return 1;
	}
	keel_promise_release(keel_accept(loop, lfd, front_accept, NULL));
	fprintf(stderr, "quote: listening on %s (upstreams on %d..%d)\n", addr, port + 1, port + 3);
	keel_loop_run(loop);
	keel_loop_free(loop);
	return 0;
}
