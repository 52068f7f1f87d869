/*
 * Receive-buffer exhaustion: far more busy connections than buffers in the
 * pool, with the server holding on to buffers. Streams must be parked and
 * re-armed (ENOBUFS is never an error to the user): every byte arrives, in
 * order, and no connection is dropped.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include "test.h"

#define CONNS 64
#define BYTES (256 * 1024)
#define BUFS 8

static keel_loop *loop;
static struct sockaddr_in addr;

struct sconn {
	int id;
	int fd;
	size_t got;
	int ended, err;
};
static struct sconn conns[CONNS];
static int naccepted;

static keel_buf *held[4096];
static int nheld;

static unsigned char expect(int id, size_t pos)
{
	return (unsigned char)((pos * 31 + (size_t)id * 7) & 0xff);
}

static int on_data(void *ud, keel_buf *buf)
{
	struct sconn *c = ud;
	for (uint32_t i = 0; i < buf->len; i++)
		if ((unsigned char)buf->data[i] != expect(c->id, c->got + i))
			FAIL("conn %d: byte %zu wrong", c->id, c->got + i);
	c->got += buf->len;
	/* Keep the buffer for a while so the pool runs dry. */
	ASSERT(nheld < 4096);
	keel_buf_hold(buf);
	held[nheld++] = buf;
	return KEEL_CONTINUE;
}

static void on_end(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct sconn *c = ud;
	c->ended = 1;
	c->err = o.err;
}

static int on_accept(void *ud, int fd)
{
	(void)ud;
	/* The client writes its id first, as one byte, then the stream. */
	unsigned char id;
	struct pollfd pfd = {fd, POLLIN, 0}; /* the socket may be non-blocking (epoll backend) */
	ASSERT_EQ(poll(&pfd, 1, 5000), 1);
	ASSERT_EQ(recv(fd, &id, 1, 0), 1);
	ASSERT(id < CONNS);
	struct sconn *c = &conns[id];
	c->id = id;
	c->fd = fd;
	naccepted++;
	keel_promise_done(keel_recv_stream(loop, fd, on_data, c), on_end, c);
	return KEEL_CONTINUE;
}

static void *writer(void *arg)
{
	int id = (int)(intptr_t)arg;
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
		return (void *)1;
	unsigned char b = (unsigned char)id;
	if (write(fd, &b, 1) != 1)
		return (void *)1;
	static __thread unsigned char chunk[3000];
	size_t pos = 0;
	while (pos < BYTES) {
		size_t n = BYTES - pos < sizeof(chunk) ? BYTES - pos : sizeof(chunk);
		for (size_t i = 0; i < n; i++)
			chunk[i] = expect(id, pos + i);
		ssize_t w = write(fd, chunk, n);
		if (w <= 0)
			return (void *)1;
		pos += (size_t)w;
	}
	shutdown(fd, SHUT_WR);
	char x;
	ssize_t r = read(fd, &x, 1); /* wait for the server's close */
	(void)r;
	close(fd);
	return NULL;
}

static keel_buf *kept;
static int keep_first(void *ud, keel_buf *buf)
{
	(void)ud;
	if (!kept) {
		keel_buf_hold(buf);
		kept = buf;
	}
	return KEEL_CONTINUE;
}

/* A stream parked for want of a buffer is not in the kernel; closing its fd must still end it. */
static void test_close_parked(void)
{
	keel_loop_opts o;
	keel_loop_opts_default(&o);
	o.recv_buf_count = 1;
	o.recv_buf_size = 1024;
	o.quiet = true;
	keel_loop *l;
	ASSERT_OK(keel_loop_new(&l, &o));
	int a[2], b[2];
	ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, a), 0);
	ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, b), 0);
	keel_promise *sa = keel_recv_stream(l, a[0], keep_first, NULL);
	ASSERT_EQ(write(a[1], "x", 1), 1);
	while (!kept)
		keel_loop_run_once(l, 10);
	keel_promise *sb = keel_recv_stream(l, b[0], keep_first, NULL);
	ASSERT_EQ(write(b[1], "y", 1), 1);
	keel_loop_stats st;
	for (int i = 0; i < 200; i++) {
		keel_loop_get_stats(l, &st);
		if (st.enobufs)
			break;
		keel_loop_run_once(l, 10);
	}
	ASSERT(st.enobufs > 0); /* b's stream is parked */
	keel_outcome r = test_await(l, keel_close(l, b[0]));
	ASSERT_EQ(r.err, 0);
	r = test_await(l, sb);
	ASSERT_EQ(r.err, -ECANCELED);
	keel_buf_release(kept);
	test_await(l, keel_close(l, a[0]));
	test_await(l, sa);
	close(a[1]);
	close(b[1]);
	keel_loop_free(l);
	printf("closing the fd of a parked stream ends it: ok\n");
}

/*
 * A stream woken by a returned buffer may have nothing to read, leaving the
 * buffer free; one parked behind it with data waiting must still be served
 * (a connection storm once left hundreds of requests unread this way).
 * Pool of 2: A and B hold one each; I (no data) parks, then D (data) parks;
 * A's buffer comes back.
 */
static keel_buf *held2[2];
static int nheld2, got_d;

static int hold2(void *ud, keel_buf *buf)
{
	(void)ud;
	keel_buf_hold(buf);
	held2[nheld2++] = buf;
	return KEEL_CONTINUE;
}

static int count_d(void *ud, keel_buf *buf)
{
	(void)ud;
	got_d += (int)buf->len;
	return KEEL_CONTINUE;
}

static void test_lost_wakeup(void)
{
	keel_loop_opts o;
	keel_loop_opts_default(&o);
	o.recv_buf_count = 2;
	o.recv_buf_size = 1024;
	o.quiet = true;
	keel_loop *l;
	ASSERT_OK(keel_loop_new(&l, &o));
	int a[2], b[2], idle[2], d[2];
	int *pairs[4] = {a, b, idle, d};
	for (int i = 0; i < 4; i++)
		ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, pairs[i]), 0);
	keel_promise *s[4];
	s[0] = keel_recv_stream(l, a[0], hold2, NULL);
	s[1] = keel_recv_stream(l, b[0], hold2, NULL);
	ASSERT_EQ(write(a[1], "a", 1), 1);
	ASSERT_EQ(write(b[1], "b", 1), 1);
	for (int i = 0; i < 500 && nheld2 < 2; i++)
		keel_loop_run_once(l, 1);
	ASSERT_EQ(nheld2, 2);
	keel_loop_stats st;
	s[2] = keel_recv_stream(l, idle[0], count_d, NULL); /* no data: the first parked */
	for (int i = 0; i < 20; i++)
		keel_loop_run_once(l, 1);
	s[3] = keel_recv_stream(l, d[0], count_d, NULL);
	ASSERT_EQ(write(d[1], "GET / HTTP/1.1\r\n\r\n", 18), 18);
	for (int i = 0; i < 20; i++)
		keel_loop_run_once(l, 1);
	ASSERT_EQ(got_d, 0);        /* parked: no buffer */
	keel_buf_release(held2[0]); /* one comes back; B keeps the other */
	for (int i = 0; i < 1000 && !got_d; i++)
		keel_loop_run_once(l, 1);
	ASSERT_EQ(got_d, 18);
	keel_loop_get_stats(l, &st);
	ASSERT(st.enobufs >= 2);
	keel_buf_release(held2[1]);
	for (int i = 0; i < 4; i++) {
		test_await(l, keel_close(l, pairs[i][0]));
		test_await(l, s[i]);
		close(pairs[i][1]);
	}
	keel_loop_free(l);
	printf("a wake-up spent on a stream with nothing to read is not lost: ok\n");
}

int main(void)
{
	test_close_parked();
	test_lost_wakeup();

	keel_loop_opts o;
	keel_loop_opts_default(&o);
	o.recv_buf_count = BUFS;
	o.recv_buf_size = 4096;
	o.quiet = true;
	ASSERT_OK(keel_loop_new(&loop, &o));

	int lfd = keel_tcp_listen("127.0.0.1:0", 256, 0);
	ASSERT_OK(lfd);
	socklen_t len = sizeof(addr);
	getsockname(lfd, (struct sockaddr *)&addr, &len);
	keel_promise *acc = keel_accept(loop, lfd, on_accept, NULL);

	pthread_t th[CONNS];
	for (int i = 0; i < CONNS; i++)
		ASSERT_EQ(pthread_create(&th[i], NULL, writer, (void *)(intptr_t)i), 0);

	uint64_t deadline = keel_loop_now_ms(loop) + 60000;
	for (;;) {
		int ended = 0;
		for (int i = 0; i < CONNS; i++)
			ended += conns[i].ended;
		if (ended == CONNS && naccepted == CONNS)
			break;
		ASSERT(keel_loop_now_ms(loop) < deadline);
		keel_loop_run_once(loop, 1);
		/* Give the held buffers back, a tick late. */
		for (int i = 0; i < nheld; i++)
			keel_buf_release(held[i]);
		nheld = 0;
	}
	for (int i = 0; i < CONNS; i++) {
		if (conns[i].err)
			FAIL("conn %d ended with %s", i, keel_strerror(conns[i].err));
		ASSERT_EQ(conns[i].got, BYTES);
	}
	keel_loop_stats st;
	keel_loop_get_stats(loop, &st);
	printf("%d connections x %d KiB through %d buffers: %llu times parked for want of a buffer\n", CONNS,
	       BYTES / 1024, BUFS, (unsigned long long)st.enobufs);
	ASSERT(st.enobufs > 0); /* the pool really ran dry */
	ASSERT_EQ(st.bufs_in_use, 0);

	keel_promise_cancel(acc);
	test_await(loop, acc);
	close(lfd);
	/* Close the server sides so the writers' final reads return. */
	for (int i = 0; i < CONNS; i++)
		test_await(loop, keel_close(loop, conns[i].fd));
	for (int i = 0; i < CONNS; i++) {
		void *ret;
		pthread_join(th[i], &ret);
		ASSERT(ret == NULL);
	}
	keel_loop_free(loop);
	printf("bufring: ok\n");
	return 0;
}
