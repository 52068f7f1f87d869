/*
 * Socket operations over loopback, all on one loop: multishot accept,
 * connect, multishot receive, sends of 1 B to 4 MiB (short sends continued
 * internally, bytes verified), peer reset, cancellation of each operation
 * kind, connect errors and deadlines, and close cancelling what is in flight.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include "test.h"

static keel_loop *loop;
static struct sockaddr_storage srv_addr;
static socklen_t srv_len;

/* ---- A server that collects each connection's bytes and sends them back at EOF. */

struct sconn {
	int fd;
	char *data;
	size_t len, cap;
	int recv_err;
	int done;
};

#define MAX_CONNS 512
static struct sconn sconns[MAX_CONNS];
static int nsconns;

static int srv_on_data(void *ud, keel_buf *buf)
{
	struct sconn *c = ud;
	if (c->len + buf->len > c->cap) {
		c->cap = (c->len + buf->len) * 2;
		c->data = realloc(c->data, c->cap);
		ASSERT(c->data != NULL);
	}
	memcpy(c->data + c->len, buf->data, buf->len);
	c->len += buf->len;
	return KEEL_CONTINUE;
}

static void srv_closed(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	ASSERT_EQ(o.err, 0);
	((struct sconn *)ud)->done = 1;
}

static void srv_sent(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct sconn *c = ud;
	ASSERT_EQ(o.err, 0);
	ASSERT_EQ(o.n, (long long)c->len);
	keel_promise_done(keel_close(loop, c->fd), srv_closed, c);
}

static void srv_recv_end(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct sconn *c = ud;
	c->recv_err = o.err;
	if (o.err) {
		keel_promise_done(keel_close(loop, c->fd), srv_closed, c);
		return;
	}
	if (c->len == 0) {
		keel_promise_done(keel_close(loop, c->fd), srv_closed, c);
		return;
	}
	keel_promise_done(keel_send(loop, c->fd, c->data, c->len), srv_sent, c);
}

static int srv_on_accept(void *ud, int fd)
{
	(void)ud;
	ASSERT(nsconns < MAX_CONNS);
	struct sconn *c = &sconns[nsconns++];
	memset(c, 0, sizeof(*c));
	c->fd = fd;
	keel_promise_done(keel_recv_stream(loop, fd, srv_on_data, c), srv_recv_end, c);
	return KEEL_CONTINUE;
}

/* ---- Clients: connect, send, half-close, read everything back, compare. */

struct client {
	int fd;
	char *out, *in;
	size_t len, got;
	int small_sndbuf;
	int finished;
	int err;
};

static void fill(char *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++) {
		seed = seed * 1103515245u + 12345u;
		p[i] = (char)(seed >> 16);
	}
}

static void client_read(struct client *c);

static void client_got(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct client *c = ud;
	if (o.err) {
		c->err = o.err;
		c->finished = 1;
		return;
	}
	if (o.n == 0) {
		c->finished = 1;
		close(c->fd);
		return;
	}
	c->got += (size_t)o.n;
	client_read(c);
}

static void client_read(struct client *c)
{
	size_t room = c->len + 1 - c->got; /* +1: an extra byte would be a bug we want to see */
	keel_promise_done(keel_recv(loop, c->fd, c->in + c->got, room), client_got, c);
}

static keel_outcome client_sent(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct client *c = ud;
	if (!o.err) {
		ASSERT_EQ(o.n, (long long)c->len); /* all of it, whatever the short sends */
		shutdown(c->fd, SHUT_WR);
	}
	return o;
}

static keel_promise *client_connected(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct client *c = ud;
	c->fd = (int)o.n;
	if (c->small_sndbuf) {
		int sz = 4096;
		setsockopt(c->fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	}
	client_read(c);
	if (c->len == 0) {
		shutdown(c->fd, SHUT_WR);
		keel_promise *p = keel_promise_new(loop);
		keel_promise_resolve(p, 0, NULL);
		return p;
	}
	return keel_map(keel_send(loop, c->fd, c->out, c->len), client_sent, c);
}

static void client_start_failed(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct client *c = ud;
	if (o.err) {
		c->err = o.err;
		c->finished = 1;
	}
}

static void client_start(struct client *c, size_t len, unsigned seed, int small_sndbuf)
{
	memset(c, 0, sizeof(*c));
	c->len = len;
	c->out = malloc(len + 1);
	c->in = malloc(len + 1);
	c->small_sndbuf = small_sndbuf;
	fill(c->out, len, seed);
	keel_promise *p = keel_connect(loop, (struct sockaddr *)&srv_addr, srv_len, 5000);
	keel_promise_done(keel_flat_map(p, client_connected, c), client_start_failed, c);
}

static int clients_done(struct client *cs, int n)
{
	int d = 0;
	for (int i = 0; i < n; i++)
		d += cs[i].finished;
	return d;
}

static void run_clients(struct client *cs, int n)
{
	uint64_t deadline = keel_loop_now_ms(loop) + 60000;
	while (clients_done(cs, n) < n) {
		ASSERT(keel_loop_now_ms(loop) < deadline);
		keel_loop_run_once(loop, 100);
	}
	for (int i = 0; i < n; i++) {
		struct client *c = &cs[i];
		if (c->err)
			FAIL("client %d (len %zu): %s", i, c->len, keel_strerror(c->err));
		ASSERT_EQ(c->got, c->len);
		ASSERT(memcmp(c->in, c->out, c->len) == 0);
		free(c->in);
		free(c->out);
	}
}

static void test_payloads(void)
{
	static const size_t sizes[] = {0, 1, 100, 16384, 65543, 1 << 20, 4 << 20};
	enum { N = sizeof(sizes) / sizeof(sizes[0]) };
	struct client cs[N * 2];
	for (int i = 0; i < N; i++) {
		client_start(&cs[i], sizes[i], (unsigned)i, 0);
		client_start(&cs[N + i], sizes[i], (unsigned)(100 + i), 1); /* forces short sends */
	}
	run_clients(cs, N * 2);
	printf("payloads 0 B .. 4 MiB, with and without a tiny send buffer: ok\n");
}

static void test_many(void)
{
	enum { N = 300 };
	static struct client cs[N];
	for (int i = 0; i < N; i++)
		client_start(&cs[i], 1 + (size_t)(i * 977) % 20000, (unsigned)(1000 + i), 0);
	run_clients(cs, N);
	printf("%d concurrent connections: ok\n", N);
}

/* ---- Raw socket pairs for the error and cancel cases. */

static int connect_blocking(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	ASSERT(fd >= 0);
	ASSERT_EQ(connect(fd, (struct sockaddr *)&srv_addr, srv_len), 0);
	return fd;
}

static int last_accepted(int before)
{
	uint64_t deadline = keel_loop_now_ms(loop) + 5000;
	while (nsconns == before) {
		ASSERT(keel_loop_now_ms(loop) < deadline);
		keel_loop_run_once(loop, 50);
	}
	return nsconns - 1;
}

static void test_reset(void)
{
	int before = nsconns;
	int fd = connect_blocking();
	ASSERT_EQ(write(fd, "abc", 3), 3);
	int idx = last_accepted(before);
	struct sconn *c = &sconns[idx];
	while (c->len < 3)
		keel_loop_run_once(loop, 50);
	struct linger lg = {1, 0};
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(fd); /* RST */
	uint64_t deadline = keel_loop_now_ms(loop) + 5000;
	while (!c->done) {
		ASSERT(keel_loop_now_ms(loop) < deadline);
		keel_loop_run_once(loop, 50);
	}
	ASSERT_EQ(c->recv_err, -ECONNRESET);
	printf("peer reset: receive stream ends with ECONNRESET: ok\n");
}

static int nop_data(void *ud, keel_buf *buf)
{
	(void)ud;
	(void)buf;
	return KEEL_CONTINUE;
}

static int nop_accept(void *ud, int fd)
{
	(void)ud;
	close(fd);
	return KEEL_CONTINUE;
}

static void socketpair_nb(int sv[2])
{
	ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
}

static void test_cancel(void)
{
	int sv[2];
	keel_outcome o;

	/* Receive stream with no data. */
	socketpair_nb(sv);
	keel_promise *p = keel_recv_stream(loop, sv[0], nop_data, NULL);
	keel_loop_run_once(loop, 0);
	keel_promise_cancel(p);
	o = test_await(loop, p);
	ASSERT_EQ(o.err, -ECANCELED);

	/* Single receive. */
	char buf[16];
	p = keel_recv(loop, sv[0], buf, sizeof(buf));
	keel_loop_run_once(loop, 0);
	keel_promise_cancel(p);
	o = test_await(loop, p);
	ASSERT_EQ(o.err, -ECANCELED);

	/* A send that cannot finish: the peer never reads. */
	size_t big = 16 << 20;
	char *data = calloc(1, big);
	p = keel_send(loop, sv[0], data, big);
	for (int i = 0; i < 5; i++)
		keel_loop_run_once(loop, 10);
	ASSERT(!keel_promise_is_settled(p));
	keel_promise_cancel(p);
	o = test_await(loop, p);
	ASSERT_EQ(o.err, -ECANCELED);
	free(data); /* only now: the kernel let go of it when the promise settled */
	close(sv[0]);
	close(sv[1]);

	/* Accept stream. */
	int lfd = keel_tcp_listen("127.0.0.1:0", 16, 0);
	ASSERT_OK(lfd);
	p = keel_accept(loop, lfd, nop_accept, NULL);
	keel_loop_run_once(loop, 0);
	keel_promise_cancel(p);
	o = test_await(loop, p);
	ASSERT_EQ(o.err, -ECANCELED);

	/* Close cancels what is in flight on the descriptor. */
	p = keel_accept(loop, lfd, nop_accept, NULL);
	keel_loop_run_once(loop, 0);
	o = test_await(loop, keel_close(loop, lfd));
	ASSERT_EQ(o.err, 0);
	o = test_await(loop, p);
	ASSERT_EQ(o.err, -ECANCELED);

	socketpair_nb(sv);
	p = keel_recv_stream(loop, sv[0], nop_data, NULL);
	keel_loop_run_once(loop, 0);
	o = test_await(loop, keel_close(loop, sv[0]));
	ASSERT_EQ(o.err, 0);
	o = test_await(loop, p);
	ASSERT_EQ(o.err, -ECANCELED);
	close(sv[1]);

	printf("cancel: recv stream, recv, send, accept, close-cancels-in-flight: ok\n");
}

static int stop_after_first(void *ud, keel_buf *buf)
{
	size_t *seen = ud;
	*seen += buf->len;
	return KEEL_STOP;
}

static void test_stop_keeps_data(void)
{
	/* KEEL_STOP ends the stream, but nothing the kernel received is dropped. */
	int sv[2];
	socketpair_nb(sv);
	size_t seen = 0;
	keel_promise *p = keel_recv_stream(loop, sv[0], stop_after_first, &seen);
	ASSERT_EQ(write(sv[1], "hello", 5), 5);
	keel_outcome o = test_await(loop, p);
	ASSERT_EQ(o.err, -ECANCELED);
	ASSERT_GE(seen, 5);
	ASSERT_EQ(write(sv[1], "world", 5), 5);
	char buf[16];
	o = test_await(loop, keel_recv(loop, sv[0], buf, sizeof(buf)));
	ASSERT_EQ(o.n + (long long)seen, 10); /* the rest is still in the socket */
	close(sv[0]);
	close(sv[1]);
	printf("KEEL_STOP: stream ends, no data lost: ok\n");
}

static void test_close_order(void)
{
	/*
	 * A shutdown and a close of the same fd queued in one tick: the close
	 * must not overtake the shutdown (io_uring runs a shutdown in a worker
	 * thread, after a close submitted with it), or the shutdown would hit
	 * EBADF, or worse, a new socket that got the same number.
	 */
	for (int i = 0; i < 50; i++) {
		int sv[2];
		socketpair_nb(sv);
		keel_promise *sh = keel_shutdown(loop, sv[0], SHUT_WR);
		keel_promise *cl = keel_close(loop, sv[0]);
		keel_outcome o = test_await(loop, sh);
		/* Done before the close, or cancelled by it; never EBADF. */
		if (o.err != 0 && o.err != -ECANCELED)
			FAIL("shutdown before close: %s", keel_strerror(o.err));
		o = test_await(loop, cl);
		ASSERT_EQ(o.err, 0);
		char c;
		ASSERT_EQ(read(sv[1], &c, 1), 0); /* EOF from the shutdown/close */
		close(sv[1]);
	}
	printf("close waits for the ops in flight on its fd: ok\n");
}

static void test_connect_errors(void)
{
	/* Nobody listening: refused. */
	int lfd = keel_tcp_listen("127.0.0.1:0", 1, 0);
	int port = keel_tcp_port(lfd);
	close(lfd);
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	keel_outcome o = test_await(loop, keel_connect(loop, (struct sockaddr *)&sin, sizeof(sin), 2000));
	ASSERT_EQ(o.err, -ECONNREFUSED);

	/*
	 * A listener whose backlog is full and never accepts: new SYNs are
	 * dropped, so the connect can only end by its deadline.
	 */
	lfd = keel_tcp_listen("127.0.0.1:0", 1, 0);
	port = keel_tcp_port(lfd);
	sin.sin_port = htons((uint16_t)port);
	int filler[8], nfill = 0;
	for (; nfill < 8; nfill++) {
		filler[nfill] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
		connect(filler[nfill], (struct sockaddr *)&sin, sizeof(sin));
	}
	usleep(50000);
	uint64_t t0 = keel_loop_now_ms(loop);
	o = test_await(loop, keel_connect(loop, (struct sockaddr *)&sin, sizeof(sin), 200));
	if (o.err == -ETIMEDOUT) {
		ASSERT_GE(keel_loop_now_ms(loop) - t0, 200);
		printf("connect: refused, and deadline -> ETIMEDOUT: ok\n");
	} else {
		/* The kernel completed the handshake anyway (SYN cookies): nothing to time out. */
		ASSERT_EQ(o.err, 0);
		close((int)o.n);
		printf("connect: refused ok; deadline case not reproducible here (handshake completed)\n");
	}
	for (int i = 0; i < nfill; i++)
		close(filler[i]);
	close(lfd);

	/* Bad address family. */
	struct sockaddr bad = {.sa_family = 9999};
	o = test_await(loop, keel_connect(loop, &bad, sizeof(bad), 0));
	ASSERT(o.err < 0);
}

static void test_addr_parse(void)
{
	struct sockaddr_storage ss;
	socklen_t len;
	char out[64];
	ASSERT_OK(keel_addr_parse("127.0.0.1:80", &ss, &len));
	ASSERT(strcmp(keel_addr_format((struct sockaddr *)&ss, out, sizeof(out)), "127.0.0.1:80") == 0);
	ASSERT_OK(keel_addr_parse("[::1]:8080", &ss, &len));
	ASSERT(strcmp(keel_addr_format((struct sockaddr *)&ss, out, sizeof(out)), "[::1]:8080") == 0);
	ASSERT_OK(keel_addr_parse(":7000", &ss, &len));
	static const char *bad[] = {"", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1",
	                            "127.0.0.1:80x", "host:80", "[::1:80", "1.2.3.4.5:80", NULL};
	for (int i = 0; bad[i]; i++)
		if (keel_addr_parse(bad[i], &ss, &len) != -EINVAL)
			FAIL("accepted bad address '%s'", bad[i]);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	loop = test_loop();
	test_addr_parse();
	int lfd = keel_tcp_listen("127.0.0.1:0", 1024, 0);
	ASSERT_OK(lfd);
	srv_len = sizeof(srv_addr);
	ASSERT_EQ(getsockname(lfd, (struct sockaddr *)&srv_addr, &srv_len), 0);
	keel_promise *acc = keel_accept(loop, lfd, srv_on_accept, NULL);

	test_payloads();
	for (int i = 0; i < nsconns; i++)
		free(sconns[i].data);
	nsconns = 0;
	test_many();
	test_reset();
	test_cancel();
	test_stop_keeps_data();
	test_close_order();
	test_connect_errors();

	keel_promise_cancel(acc);
	ASSERT_EQ(test_await(loop, acc).err, -ECANCELED);
	close(lfd);
	for (int i = 0; i < 20; i++)
		keel_loop_run_once(loop, 0);
	keel_loop_stats st;
	keel_loop_get_stats(loop, &st);
	ASSERT_EQ(st.ops_inflight, 0);
	ASSERT_EQ(st.bufs_in_use, 0);
	for (int i = 0; i < nsconns; i++)
		free(sconns[i].data);
	keel_loop_free(loop);
	printf("tcp: ok (%s)\n", getenv("KEEL_BACKEND") ? getenv("KEEL_BACKEND") : "auto");
	return 0;
}
