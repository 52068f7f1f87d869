/*
 * Reproducer: on the epoll backend, the work ep_poll() does before its wait
 * -- operations submitted since the last tick, attempted at once
 * (run_pending), whose completions run their callbacks there -- sees the
 * loop's clock as it was at the end of the previous tick's wait. Deadlines
 * armed there are short by however long the loop was away, and admission
 * control counts that time as queueing. Found by fuzz_server on epoll: a
 * response cut off by its 25 ms send timeout 4 ms after the input began
 * (the loop had last ticked in the previous input; it showed when the
 * machine was loaded).
 *
 * Here: the loop ticks, the application is busy for 200 ms, a client's
 * request is already waiting when its connection is handed to the server
 * (keel_http_server_adopt), and the client reads promptly. On io_uring it
 * gets its 1 MiB; on epoll the request is shed (503: 200 ms "queued" >
 * queue_delay_max_us) and even that answer's connection is closed by a
 * send deadline that had passed when it was armed.
 *
 *   make && clang -std=c17 -D_GNU_SOURCE -Iinclude \
 *       fuzz/crashes-found/stale_clock.c build/libkeel.a -luring -pthread \
 *       -o /tmp/keel-repro && KEEL_BACKEND=epoll /tmp/keel-repro; /tmp/keel-repro
 *
 * Exits 1 while the response does not arrive whole, 0 once it does.
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "keel/http.h"
#include "keel/keel.h"

#define BODY (1 << 20)
static char body[BODY];

static keel_promise *h_big(keel_http_request *r, void *ud)
{
	(void)ud;
	return keel_http_respond(r, 200, "application/octet-stream", body, BODY);
}

int main(void)
{
	keel_loop *loop;
	if (keel_loop_new(&loop, NULL) < 0)
		return 2;
	keel_http_config cfg;
	keel_http_config_default(&cfg);
	cfg.send_timeout_ms = 50;
	keel_http_server *srv;
	if (keel_http_server_new(&srv, loop, &cfg) < 0)
		return 2;
	keel_http_route(srv, "GET", "/big", 0, h_big, NULL);
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
		return 2;
	fcntl(sv[0], F_SETFL, O_NONBLOCK);

	keel_loop_run_once(loop, 0); /* the loop reads its clock here... */
	usleep(200 * 1000);          /* ...and the application is busy elsewhere for 200 ms */
	static const char req[] = "GET /big HTTP/1.1\r\nHost: a\r\n\r\n";
	if (write(sv[0], req, sizeof(req) - 1) != sizeof(req) - 1)
		return 2;
	keel_http_server_adopt(srv, sv[1]);

	size_t got = 0;
	int eof = 0;
	char status[40] = "";
	static char buf[65536];
	for (int i = 0; i < 2000 && got < BODY + 100 && !eof; i++) {
		keel_loop_run_once(loop, 1);
		for (;;) { /* a prompt reader */
			ssize_t n = recv(sv[0], buf, sizeof buf, 0);
			if (n == 0)
				eof = 1;
			if (n <= 0)
				break;
			if (!got)
				snprintf(status, sizeof status, "%.*s", (int)strcspn(buf, "\r"), buf);
			got += (size_t)n;
		}
	}
	printf("backend %s: \"%s\", %zu bytes in all%s\n", keel_loop_backend(loop), status, got,
	       eof ? ", then the server closed" : "");
	close(sv[0]);
	for (int i = 0; i < 50; i++)
		keel_loop_run_once(loop, 1); /* (the server sees the close) */
	keel_http_server_free(srv);
	keel_loop_free(loop);
	return got > BODY + 100 ? 0 : 1;
}
