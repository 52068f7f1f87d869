/*
 * Reproducer: on io_uring, a keel_sendfile cancelled while its first splice
 * (file -> pipe) is in flight returns that pipe to the loop's cache with
 * the file's bytes still in it, and the next keel_sendfile -- to another
 * socket, of another file -- sends those bytes instead of its own. Found by
 * fuzz_server: GET /sub/ answered with 34 bytes of big.bin, a file another
 * connection had been sent.
 *
 * Send file A (100000 'A's) to socket 1 and cancel it right after its first
 * splice was submitted; then send file B (16 'B's) to socket 2, which must
 * receive "BBBBBBBBBBBBBBBB".
 *
 *   make && clang -std=c17 -D_GNU_SOURCE -Iinclude \
 *       fuzz/crashes-found/sendfile_stale_pipe.c build/libkeel.a -luring -pthread \
 *       -o /tmp/keel-repro && /tmp/keel-repro; KEEL_BACKEND=epoll /tmp/keel-repro
 *
 * Exits 1 while socket 2 gets bytes of A, 0 once it gets its own.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "keel/keel.h"

static int tmpfile_with(char ch, size_t n)
{
	char path[] = "/tmp/keel-stale-XXXXXX";
	int fd = mkstemp(path);
	static char buf[100000];
	memset(buf, ch, n);
	if (fd < 0 || write(fd, buf, n) != (ssize_t)n)
		exit(2);
	unlink(path);
	return fd;
}

static int settled;
static keel_outcome out;
static void done(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)ud;
	out = o;
	settled++;
}

int main(void)
{
	int a = tmpfile_with('A', 100000), b = tmpfile_with('B', 16);
	int s1[2], s2[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, s1) < 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, s2) < 0)
		return 2;
	keel_loop *loop;
	if (keel_loop_new(&loop, NULL) < 0)
		return 2;
	int bad = 0;
	for (int round = 0; round < 50 && !bad; round++) {
		settled = 0;
		keel_promise *p = keel_sendfile(loop, s1[0], a, 0, 100000);
		keel_promise_done(p, done, NULL);
		keel_loop_run_once(loop, 0); /* submits the first splice (file -> pipe) */
		keel_promise_cancel(p);
		while (!settled)
			keel_loop_run_once(loop, 1);
		char junk[200000];
		while (recv(s1[1], junk, sizeof junk, MSG_DONTWAIT) > 0)
			;
		settled = 0;
		keel_promise_done(keel_sendfile(loop, s2[0], b, 0, 16), done, NULL);
		while (!settled)
			keel_loop_run_once(loop, 1);
		char got[64] = "";
		ssize_t n = recv(s2[1], got, sizeof got - 1, MSG_DONTWAIT);
		if (n != 16 || memcmp(got, "BBBBBBBBBBBBBBBB", 16) != 0) {
			printf("round %d: socket 2 received %zd bytes \"%.*s\" (sendfile n %lld err %d)\n",
			       round, n, (int)(n > 0 ? n : 0), got, (long long)out.n, out.err);
			bad = 1;
		}
	}
	printf("backend %s: %s\n", keel_loop_backend(loop),
	       bad ? "stale bytes from the cancelled sendfile" : "ok");
	keel_loop_free(loop);
	return bad;
}
