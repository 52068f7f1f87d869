/*
 * Reproducer: keel_http_server_free() with a connection still open, the
 * loop running on: the connection's receive stream still calls the server's
 * on_data(), whose connection points at the freed server -- heap use after
 * free (ASan), on both backends. Seen while writing the fuzz_server
 * reproducers (LeakSanitizer first reported the open connection's record as
 * leaked: keel_http_server_free frees idle records, zombies and routes, not
 * s->conns).
 *
 *   make SAN=1 && clang -std=c17 -D_GNU_SOURCE -fsanitize=address,undefined -Iinclude \
 *       fuzz/crashes-found/server_free_open_conn.c build-san/libkeel.a -luring -pthread \
 *       -o /tmp/keel-repro && /tmp/keel-repro
 *
 * With the bug: an ASan report (or, without ASan, whatever the freed memory
 * holds). Exits 0 once freeing a server with open connections closes them,
 * or once the contract (stop first, free after it resolved) is enforced.
 */
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#include "keel/http.h"
#include "keel/keel.h"

static keel_promise *h_root(keel_http_request *r, void *ud)
{
	(void)ud;
	return keel_http_respond(r, 200, "text/plain", "x", 1);
}

int main(void)
{
	keel_loop *loop;
	if (keel_loop_new(&loop, NULL) < 0)
		return 2;
	keel_http_server *srv;
	if (keel_http_server_new(&srv, loop, NULL) < 0)
		return 2;
	keel_http_route(srv, "GET", "/", 0, h_root, NULL);
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
		return 2;
	keel_http_server_adopt(srv, sv[1]);
	for (int i = 0; i < 4; i++)
		keel_loop_run_once(loop, 0);
	keel_http_server_free(srv); /* a connection is still open */
	static const char req[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
	if (write(sv[0], req, sizeof(req) - 1) < 0)
		return 2;
	for (int i = 0; i < 10; i++)
		keel_loop_run_once(loop, 1); /* the connection's receive stream still runs */
	printf("backend %s: survived\n", keel_loop_backend(loop));
	close(sv[0]);
	keel_loop_free(loop);
	return 0;
}
