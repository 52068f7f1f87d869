/*
 * echo: the smallest useful keel server, using only the public API.
 *
 *   usage: build/examples/echo [ADDR:PORT]      (default 127.0.0.1:7000)
 *
 * Each connection is a chain of promises: receive into the connection's
 * buffer, then send what arrived, then receive again, until the peer closes.
 * (build/keel echo is the production version: multishot receive from the
 * shared buffer pool, batching, limits, workers, graceful stop.)
 */
#include <stdio.h>
#include <stdlib.h>

#include "keel/keel.h"

struct conn {
	keel_loop *loop;
	int fd;
	char buf[16384];
};

static void conn_step(struct conn *c);

static keel_promise *send_back(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	struct conn *c = ud;
	if (in.n == 0) /* end of file: report it as an error to end the chain */
		return NULL;
	return keel_send(c->loop, c->fd, c->buf, (size_t)in.n);
}

static void step_done(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct conn *c = ud;
	if (o.err) { /* peer closed (or failed): close and forget */
		keel_promise_release(keel_close(c->loop, c->fd));
		free(c);
		return;
	}
	conn_step(c);
}

static void conn_step(struct conn *c)
{
	keel_promise *p = keel_recv(c->loop, c->fd, c->buf, sizeof(c->buf));
	keel_promise_done(keel_flat_map(p, send_back, c), step_done, c);
}

static int on_accept(void *ud, int fd)
{
	struct conn *c = malloc(sizeof(*c));
	if (!c)
		return KEEL_CONTINUE;
	c->loop = ud;
	c->fd = fd;
	conn_step(c);
	return KEEL_CONTINUE;
}

int main(int argc, char **argv)
{
	const char *addr = argc > 1 ? argv[1] : "127.0.0.1:7000";
	keel_loop *loop;
	int err = keel_loop_new(&loop, NULL);
	if (err < 0) {
		fprintf(stderr, "echo: %s\n", keel_strerror(err));
		return 1;
	}
	int lfd = keel_tcp_listen(addr, 1024, 0);
	if (lfd < 0) {
		fprintf(stderr, "echo: listen %s: %s\n", addr, keel_strerror(lfd));
		return 1;
	}
	fprintf(stderr, "echo: listening on %s (%s)\n", addr, keel_loop_backend(loop));
	keel_promise_release(keel_accept(loop, lfd, on_accept, loop));
	keel_loop_run(loop);
	keel_loop_free(loop);
	return 0;
}
