/*
 * chat: a WebSocket chat room and an echo endpoint.
 *
 *   usage: build/examples/chat [--listen ADDR:PORT] [--page FILE] [--ping-ms MS]
 *                              [--tls-cert FILE --tls-key FILE]
 *          (default 127.0.0.1:8091; the page is www/chat.html; a ping after
 *          MS of silence, and the connection dropped MS after it: 30000;
 *          with a certificate, HTTPS and wss:// instead of http and ws://)
 *
 *   GET /       the page (plain JavaScript, no external assets)
 *   GET /ws     the room: a text message sent here goes to every member,
 *               the sender too, as "<member>: <text>"; joins and leaves are
 *               said to all. A member whose send queue is full when a
 *               message is due is dropped (close 1008, "too slow") rather
 *               than slowing the room.
 *   GET /echo   every text or binary message sent back as it came, up to
 *               16 MiB (conformance tests, benchmarks).
 *
 * One worker: the room lives on its loop. A broadcast frames its message
 * once (keel_ws_frame_new) and queues that frame on every member without a
 * copy each. SIGINT or SIGTERM closes every connection with 1001.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/errors.h"
#include "keel/http.h"
#include "keel/log.h"
#include "keel/tls.h"
#include "keel/ws.h"

#define ROOM_QUEUE_MAX (256u << 10) /* a member further behind than this is dropped */
#define ECHO_MAX (16u << 20)
#define LINE_MAX 4096 /* a chat line, with its sender's name */

struct member {
	struct member *prev, *next;
	struct member *slow_next;
	keel_ws *ws;
	unsigned id;
	bool in_room;
	char name[24];
};

struct room {
	struct member *head;
	unsigned n, next_id;
	const char *page;
	size_t page_len;
	uint32_t ping_ms;
};

static struct room room;
static keel_tls_ctx *tls_ctx;
static keel_tls_endpoint *tls_ep; /* (one worker: one loop, one endpoint) */

/* ---- The room ---------------------------------------------------------------- */

/*
 * A member's receive loop owns it: a receive is always waiting (or its
 * callback is running), and the member is freed when that receive fails.
 * Dropping a slow member only closes it and takes it off the room; the
 * close makes its waiting receive fail, and that frees it.
 */

static void member_unlink(struct member *m);
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void broadcast(const char *text, size_t len)
{
	keel_ws_frame *f = keel_ws_frame_new(KEEL_WS_TEXT, text, len);
	if (!f)
		return;
	struct member *slow = NULL;
	for (struct member *m = room.head; m; m = m->next) {
		if (keel_ws_queued(m->ws) + len > ROOM_QUEUE_MAX) {
			m->slow_next =
			    slow; /* dropped below: a leave is said to the room, a broadcast of its own */
			slow = m;
		} else {
			keel_promise_release(keel_ws_send_frame(m->ws, f));
		}
	}
	keel_ws_frame_release(f);
	/*
	 * Off the room first, all of them; then said. (Each leave is a
	 * broadcast of its own, which may find more slow members: they are
	 * on the room's list, never on this one.)
	 */
	for (struct member *m = slow; m; m = m->slow_next) {
		keel_promise_release(keel_ws_close(m->ws, KEEL_WS_POLICY, "too slow"));
		member_unlink(m);
	}
	while (slow) {
		struct member *m = slow;
		slow = m->slow_next;
		say("* %s left (%u here)", m->name, room.n);
	}
}

static void say(const char *fmt, ...)
{
	char line[LINE_MAX + 64];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n > 0)
		broadcast(line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

/* Off the room's list. */
static void member_unlink(struct member *m)
{
	m->in_room = false;
	if (m->prev)
		m->prev->next = m->next;
	else
		room.head = m->next;
	if (m->next)
		m->next->prev = m->prev;
	room.n--;
}

/* Off the room (once), said to those still in it. */
static void member_leave(struct member *m)
{
	if (!m->in_room)
		return;
	member_unlink(m);
	say("* %s left (%u here)", m->name, room.n);
}

static void member_got(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct member *m = ud;
	const keel_ws_msg *msg = o.err ? NULL : o.ptr;
	if (msg && msg->type != KEEL_WS_TEXT)
		keel_promise_release(keel_ws_close(m->ws, 1003, "text only"));
	if (!msg || msg->type != KEEL_WS_TEXT) {
		/* Closed, by either side: the member goes. */
		member_leave(m);
		keel_ws_free(m->ws);
		free(m);
		return;
	}
	if (m->in_room)
		say("%s: %.*s", m->name, (int)msg->len, msg->data);
	keel_promise_done(keel_ws_recv(m->ws), member_got, m); /* (fails at once if dropped meanwhile) */
}

static void member_open(keel_ws *ws, void *ud)
{
	(void)ud;
	struct member *m = calloc(1, sizeof(*m));
	if (!m) {
		keel_promise_release(keel_ws_close(ws, KEEL_WS_TRY_AGAIN, "out of memory"));
		keel_ws_free(ws);
		return;
	}
	m->ws = ws;
	m->id = ++room.next_id;
	snprintf(m->name, sizeof(m->name), "member%u", m->id);
	m->in_room = true;
	m->next = room.head;
	if (room.head)
		room.head->prev = m;
	room.head = m;
	room.n++;
	say("* %s joined (%u here)", m->name, room.n);
	keel_promise_done(keel_ws_recv(ws), member_got, m);
}

static keel_promise *room_route(keel_http_request *req, void *ud)
{
	(void)ud;
	keel_ws_config cfg;
	keel_ws_config_default(&cfg);
	cfg.on_open = member_open;
	cfg.ping_interval_ms = cfg.ping_timeout_ms = room.ping_ms;
	cfg.message_max = LINE_MAX;
	cfg.send_queue_max = ROOM_QUEUE_MAX;
	return keel_ws_accept(req, &cfg);
}

/* ---- Echo ------------------------------------------------------------------------ */

static void echo_got(keel_ctx *ctx, keel_outcome o, void *ud);

static void echo_sent(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	keel_ws *ws = ud;
	if (o.err) {
		keel_ws_free(ws);
		return;
	}
	keel_promise_done(keel_ws_recv(ws), echo_got, ws);
}

static void echo_got(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	keel_ws *ws = ud;
	if (o.err) {
		keel_ws_free(ws);
		return;
	}
	const keel_ws_msg *msg = o.ptr;
	keel_promise *sent = keel_ws_send(ws, msg->type, msg->data, msg->len);
	if (keel_ws_queued(ws) > ECHO_MAX / 2) {
		/* Far behind: read on once this one is out (the peer's sends stall meanwhile). */
		keel_promise_done(sent, echo_sent, ws);
		return;
	}
	keel_promise_release(sent);
	keel_promise_done(keel_ws_recv(ws), echo_got, ws);
}

static void echo_open(keel_ws *ws, void *ud)
{
	(void)ud;
	keel_promise_done(keel_ws_recv(ws), echo_got, ws);
}

static keel_promise *echo_route(keel_http_request *req, void *ud)
{
	(void)ud;
	keel_ws_config cfg;
	keel_ws_config_default(&cfg);
	cfg.on_open = echo_open;
	cfg.ping_interval_ms = cfg.ping_timeout_ms = room.ping_ms;
	cfg.message_max = ECHO_MAX;
	cfg.send_queue_max = ECHO_MAX;
	return keel_ws_accept(req, &cfg);
}

/* ---- The page and the server -------------------------------------------------- */

static keel_promise *page_route(keel_http_request *req, void *ud)
{
	(void)ud;
	return keel_http_respond(req, 200, "text/html; charset=utf-8", room.page, room.page_len);
}

/* The server's transport: TLS through this loop's endpoint, made with its first connection. */
static int tls_init(keel_transport *t, keel_loop *loop, int fd, void *ud)
{
	(void)ud;
	int err;
	if (!tls_ep && (err = keel_tls_endpoint_new(&tls_ep, tls_ctx, loop)) < 0)
		return err;
	return keel_tls_server_init(t, loop, fd, tls_ep);
}

static void teardown(keel_http_server *srv, keel_loop *loop, unsigned worker, void *ud)
{
	(void)srv;
	(void)loop;
	(void)worker;
	(void)ud;
	keel_tls_endpoint_free(tls_ep); /* (what is still open keeps it until closed) */
	tls_ep = NULL;
}

static int setup(keel_http_server *srv, keel_loop *loop, unsigned worker, void *ud)
{
	(void)loop;
	(void)worker;
	(void)ud;
	int err;
	if ((err = keel_http_route(srv, "GET", "/ws", 0, room_route, NULL)) < 0 ||
	    (err = keel_http_route(srv, "GET", "/echo", 0, echo_route, NULL)) < 0 ||
	    (err = keel_http_route(srv, "GET", "/", 0, page_route, NULL)) < 0)
		return err;
	return 0;
}

static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	char *buf = NULL;
	size_t cap = 0, n = 0, got;
	do {
		if (n == cap) {
			char *b = realloc(buf, cap = cap ? cap * 2 : 16384);
			if (!b) {
				free(buf);
				fclose(f);
				return NULL;
			}
			buf = b;
		}
		got = fread(buf + n, 1, cap - n, f);
		n += got;
	} while (got);
	fclose(f);
	*len = n;
	return buf;
}

int main(int argc, char **argv)
{
	const char *listen = "127.0.0.1:8091", *page = "www/chat.html", *cert = NULL, *key = NULL;
	room.ping_ms = 30000;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
			listen = argv[++i];
		} else if (strcmp(argv[i], "--page") == 0 && i + 1 < argc) {
			page = argv[++i];
		} else if (strcmp(argv[i], "--tls-cert") == 0 && i + 1 < argc) {
			cert = argv[++i];
		} else if (strcmp(argv[i], "--tls-key") == 0 && i + 1 < argc) {
			key = argv[++i];
		} else if (strcmp(argv[i], "--ping-ms") == 0 && i + 1 < argc && atoi(argv[i + 1]) > 0) {
			room.ping_ms = (uint32_t)atoi(argv[++i]);
		} else {
			fprintf(stderr, "usage: %s [--listen ADDR:PORT] [--page FILE] [--ping-ms MS]\n",
			        argv[0]);
			return 2;
		}
	}
	char *text = slurp(page, &room.page_len);
	if (!text) {
		fprintf(stderr, "chat: %s: %s (run it from keel's tree, or give --page)\n", page,
		        strerror(errno));
		return 1;
	}
	room.page = text;
	keel_http_config cfg;
	keel_http_config_default(&cfg);
	if (cert || key) {
		keel_tls_config tc;
		keel_tls_config_default(&tc);
		keel_tls_cert c = {cert, key};
		tc.certs = &c;
		tc.ncerts = 1;
		char why[256];
		if (!cert || !key || keel_tls_ctx_new(&tls_ctx, &tc, why, sizeof(why)) < 0) {
			fprintf(stderr, "chat: TLS: %s\n",
			        cert && key ? why : "give both --tls-cert and --tls-key");
			free(text);
			return 1;
		}
		cfg.transport_init = tls_init;
	}
	keel_http_main_opts o = {.listen = listen,
	                         .workers = 1,
	                         .cfg = &cfg,
	                         .grace_ms = 5000,
	                         .setup = setup,
	                         .teardown = teardown};
	int err = keel_http_main(&o);
	keel_tls_ctx_free(tls_ctx);
	free(text);
	if (err < 0) {
		fprintf(stderr, "chat: %s\n", keel_strerror(err));
		return 1;
	}
	return 0;
}
