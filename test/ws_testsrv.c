/*
 * ws_testsrv: WebSocket routes with the limits and behaviours test_ws.py
 * needs that examples/chat does not have.
 *
 *   usage: build/test/ws_testsrv [ADDR:PORT]     (default 127.0.0.1:0; one worker)
 *
 *   /echo     echo, send_timeout_ms 2000, no pings
 *   /closeq   on open: sends 8 MiB, then keel_ws_close(1000, "bye"); then echoes
 *   /keep     receives one message and keeps it 1.5 s without receiving again,
 *             then prints "keep: unchanged" or "keep: CHANGED" (its bytes, as
 *             seen through the pointer it was given)
 *   /norecv   never receives; pings every 300 ms with a 300 ms timeout
 *   /proto    subprotocol and origin chosen by the handler: 403 for Origin
 *             http://evil.example; "chat.v2" when offered, else "not-offered"
 *             when the client offered any (keel_ws_accept refuses it), else
 *             none; on open, sends the subprotocol agreed as a text message
 *
 * Each connection's end is printed: "end CODE" (keel_ws_close_status).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/errors.h"
#include "keel/http.h"
#include "keel/timer.h"
#include "keel/ws.h"

static keel_loop *loop;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

static void ended(keel_ws *ws)
{
	say("end %u", keel_ws_close_status(ws, NULL, NULL));
	keel_ws_free(ws);
}

static void echo_got(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	keel_ws *ws = ud;
	if (o.err) {
		ended(ws);
		return;
	}
	const keel_ws_msg *m = o.ptr;
	keel_promise_release(keel_ws_send(ws, m->type, m->data, m->len));
	keel_promise_done(keel_ws_recv(ws), echo_got, ws);
}

static void echo_open(keel_ws *ws, void *ud)
{
	(void)ud;
	keel_promise_done(keel_ws_recv(ws), echo_got, ws);
}

static void closeq_open(keel_ws *ws, void *ud)
{
	(void)ud;
	size_t n = 8u << 20;
	char *b = calloc(1, n);
	if (b)
		keel_promise_release(keel_ws_send(ws, KEEL_WS_BINARY, b, n));
	free(b);
	keel_promise_release(keel_ws_close(ws, 1000, "bye"));
	keel_promise_done(keel_ws_recv(ws), echo_got, ws);
}

struct keep {
	keel_ws *ws;
	const char *data;
	size_t len;
	char copy[64];
};

static void keep_later(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	struct keep *k = ud;
	say("keep: %s", memcmp(k->data, k->copy, k->len) ? "CHANGED" : "unchanged");
	ended(k->ws);
	free(k);
}

static void keep_got(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	keel_ws *ws = ud;
	struct keep *k = o.err ? NULL : calloc(1, sizeof(*k));
	if (!k) {
		ended(ws);
		return;
	}
	const keel_ws_msg *m = o.ptr;
	k->ws = ws;
	k->data = m->data;
	k->len = m->len < sizeof(k->copy) ? m->len : sizeof(k->copy);
	memcpy(k->copy, k->data, k->len);
	say("keep: got %zu bytes", m->len);
	keel_promise_done(keel_sleep(loop, 1500), keep_later, k);
}

static void keep_open(keel_ws *ws, void *ud)
{
	(void)ud;
	keel_promise_done(keel_ws_recv(ws), keep_got, ws);
}

static keel_ws *norecv[16];
static unsigned nnorecv;

static void norecv_open(keel_ws *ws, void *ud)
{
	(void)ud;
	say("norecv: open"); /* (never received from: freed at teardown, after the server's stop ended it) */
	if (nnorecv < 16)
		norecv[nnorecv++] = ws;
	else
		keel_ws_free(ws);
}

static void teardown(keel_http_server *srv, keel_loop *l, unsigned worker, void *ud)
{
	(void)srv;
	(void)l;
	(void)worker;
	(void)ud;
	while (nnorecv)
		keel_ws_free(norecv[--nnorecv]);
}

static void proto_open(keel_ws *ws, void *ud)
{
	(void)ud;
	const char *sp = keel_ws_subprotocol(ws);
	keel_promise_release(keel_ws_send(ws, KEEL_WS_TEXT, sp, strlen(sp)));
	keel_promise_done(keel_ws_recv(ws), echo_got, ws);
}

static keel_promise *proto_route(keel_http_request *req, void *ud)
{
	(void)ud;
	const keel_http_header *o = keel_http_header_find(&req->msg, "origin");
	if (o && keel_str_eq(o->value, "http://evil.example"))
		return keel_http_respond(req, 403, "text/plain", "origin refused\n", 15);
	keel_ws_config c;
	keel_ws_config_default(&c);
	c.on_open = proto_open;
	const keel_http_header *p = keel_http_header_find(&req->msg, "sec-websocket-protocol");
	if (p) {
		keel_str list = p->value, e;
		c.subprotocol = "not-offered";
		while (keel_http_list_next(&list, &e))
			if (keel_str_eq(e, "chat.v2"))
				c.subprotocol = "chat.v2";
	}
	return keel_ws_accept(req, &c);
}

static keel_promise *route(keel_http_request *req, void *ud)
{
	keel_ws_config c;
	keel_ws_config_default(&c);
	c.on_open = (keel_ws_open_fn)ud;
	c.message_max = 32u << 20;
	c.send_queue_max = 32u << 20;
	c.ping_interval_ms = 0;
	if (ud == (void *)echo_open)
		c.send_timeout_ms = 2000;
	if (ud == (void *)norecv_open)
		c.ping_interval_ms = c.ping_timeout_ms = 300;
	return keel_ws_accept(req, &c);
}

static int setup(keel_http_server *srv, keel_loop *l, unsigned worker, void *ud)
{
	(void)worker;
	(void)ud;
	loop = l;
	int e;
	if ((e = keel_http_route(srv, "GET", "/echo", 0, route, (void *)echo_open)) < 0 ||
	    (e = keel_http_route(srv, "GET", "/closeq", 0, route, (void *)closeq_open)) < 0 ||
	    (e = keel_http_route(srv, "GET", "/keep", 0, route, (void *)keep_open)) < 0 ||
	    (e = keel_http_route(srv, "GET", "/norecv", 0, route, (void *)norecv_open)) < 0 ||
	    (e = keel_http_route(srv, "GET", "/proto", 0, proto_route, NULL)) < 0)
		return e;
	return 0;
}

int main(int argc, char **argv)
{
	keel_http_main_opts o = {.listen = argc > 1 ? argv[1] : "127.0.0.1:0",
	                         .workers = 1,
	                         .grace_ms = 2000,
	                         .setup = setup,
	                         .teardown = teardown};
	int err = keel_http_main(&o);
	if (err < 0)
		fprintf(stderr, "ws_testsrv: %s\n", keel_strerror(err));
	return err < 0;
}
