/*
 * Reproducer: on io_uring, keel_sendfile to a non-blocking socket fails
 * with -EAGAIN as soon as the socket's buffer is full, where the epoll
 * backend (and a blocking socket on io_uring) waits and sends everything.
 * Found by fuzz_server: a static file over the socket buffer, answered on a
 * non-blocking socket handed to keel_http_server_adopt, was cut off after
 * 64 KiB (one pipe) and the connection closed.
 *
 *   make && clang -std=c17 -D_GNU_SOURCE -Iinclude \
 *       fuzz/crashes-found/sendfile_nonblocking_socket.c build/libkeel.a -luring -pthread \
 *       -o /tmp/keel-repro && /tmp/keel-repro; KEEL_BACKEND=epoll /tmp/keel-repro
 *
 * Exits 1 while keel_sendfile fails, 0 once it sends the whole file.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "keel/keel.h"

#define LEN 200000

static keel_outcome got;
static int done;

static void fin(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)ud;
	got = o;
	done = 1;
}

int main(void)
{
	static char buf[LEN];
	char path[] = "/tmp/keel-sendfile-XXXXXX";
	int ffd = mkstemp(path);
	memset(buf, 'x', LEN);
	if (ffd < 0 || write(ffd, buf, LEN) != LEN)
		return 2;
	unlink(path);
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) < 0)
		return 2;
	int sz = 4096; /* a small buffer: it fills long before the file is sent */
	setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	keel_loop *loop;
	if (keel_loop_new(&loop, NULL) < 0)
		return 2;
	keel_promise_done(keel_sendfile(loop, sv[0], ffd, 0, LEN), fin, NULL);
	size_t total = 0;
	for (int i = 0; i < 2000 && !done; i++) {
		keel_loop_run_once(loop, 1);
		if (i > 20) { /* a reader that starts late, as a client may */
			ssize_t n = recv(sv[1], buf, sizeof buf, MSG_DONTWAIT);
			if (n > 0)
				total += (size_t)n;
		}
	}
	printf("backend %s: keel_sendfile to a non-blocking socket: %s, n %lld (the reader got %zu)\n",
	       keel_loop_backend(loop), got.err ? strerror(-got.err) : "ok", (long long)got.n, total);
	keel_loop_free(loop);
	return got.err == 0 && got.n == LEN ? 0 : 1;
}
