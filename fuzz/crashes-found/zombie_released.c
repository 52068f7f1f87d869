/*
 * Reproducer: a handler whose promise has no cancel hook (keel_promise_new,
 * as test/http_testsrv.c's /upload) reads a streamed request body, and its
 * connection is closed under it -- here by keel_http_server_stop with no
 * grace, in the tick in which a piece of the body arrived. The server makes
 * the request a zombie (its producer still holds it); the handler's read is
 * rejected and it rejects its promise before the connection has been freed,
 * so zombie_released() (src/http/server.c) walks the server's zombie list
 * for a request that is not on it yet: NULL dereference. Found by
 * fuzz_server (UBSan: member access within null pointer, server.c:445).
 *
 *   make && clang -std=c17 -D_GNU_SOURCE -Iinclude \
 *       fuzz/crashes-found/zombie_released.c build/libkeel.a -luring -pthread \
 *       -o /tmp/keel-repro && /tmp/keel-repro; KEEL_BACKEND=epoll /tmp/keel-repro
 *
 * Crashes (SIGSEGV) while the bug is there; exits 0 once the server stops
 * cleanly.
 */
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "keel/http.h"
#include "keel/keel.h"

struct upload {
	keel_http_request *r;
	keel_promise *done;
};

static void piece(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct upload *u = ud;
	if (o.err) {
		keel_promise_reject(u->done, o.err); /* (the body read failed: -ECONNRESET) */
		return;
	}
	keel_str *p = o.ptr;
	if (!p || !p->len) {
		keel_http_respond(u->r, 200, "text/plain", "done", 4); /* (never reached here) */
		keel_promise_resolve(u->done, 0, &u->r->resp);
		return;
	}
	keel_promise_done(keel_http_body_read(u->r), piece, u);
}

static keel_promise *h_upload(keel_http_request *r, void *ud)
{
	(void)ud;
	struct upload *u = keel_ctx_alloc(keel_http_request_ctx(r), sizeof(*u));
	u->r = r;
	u->done = keel_promise_new(r->loop); /* no cancel hook: nothing can stop it */
	keel_promise_done(keel_http_body_read(r), piece, u);
	return u->done;
}

static int stopped;
static void on_stopped(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	(void)ud;
	stopped = 1;
}

int main(void)
{
	keel_loop *loop;
	if (keel_loop_new(&loop, NULL) < 0)
		return 2;
	keel_http_server *srv;
	if (keel_http_server_new(&srv, loop, NULL) < 0)
		return 2;
	keel_http_route(srv, "POST", "/upload", KEEL_HTTP_STREAM_BODY, h_upload, NULL);
	int sv[2];
	socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
	keel_http_server_adopt(srv, sv[1]);
	static const char req[] =
	    "POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nc\r\na";
	/* In pieces of 9 bytes, a loop tick between them (as the fuzz driver's "w/9" does). */
	for (size_t off = 0; off < sizeof(req) - 1; off += 9) {
		size_t n = sizeof(req) - 1 - off < 9 ? sizeof(req) - 1 - off : 9;
		if (write(sv[0], req + off, n) != (ssize_t)n)
			return 2;
		if (off + n < sizeof(req) - 1)
			keel_loop_run_once(loop, 0);
	}
	keel_promise_done(keel_http_server_stop(srv, 0), on_stopped, NULL);
	for (int i = 0; i < 200 && !stopped; i++)
		keel_loop_run_once(loop, 1);
	printf("backend %s: server %s\n", keel_loop_backend(loop),
	       stopped ? "stopped cleanly" : "did not stop");
	close(sv[0]);
	keel_http_server_free(srv);
	keel_loop_free(loop);
	return stopped ? 0 : 1;
}
