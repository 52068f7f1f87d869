/*
 * The opt-in io_uring features: SQPOLL and zero-copy send. Each is asked
 * for through the loop options; where the kernel refuses, keel must say so
 * and run without it. Either way, data must arrive intact: 4 MiB over TCP
 * loopback with every send at or above the zero-copy threshold.
 */
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include "test.h"

#define BYTES (4u << 20)

struct sink {
	int fd;
	size_t got;
	int bad;
};

static void *sink_thread(void *arg)
{
	struct sink *s = arg;
	static unsigned char buf[65536];
	for (;;) {
		ssize_t n = read(s->fd, buf, sizeof(buf));
		if (n <= 0)
			break;
		for (ssize_t i = 0; i < n; i++)
			if (buf[i] != (unsigned char)((s->got + (size_t)i) * 13))
				s->bad = 1;
		s->got += (size_t)n;
	}
	return NULL;
}

static void run(int sqpoll, long zc)
{
	keel_loop_opts o;
	keel_loop_opts_default(&o);
	o.sqpoll = sqpoll;
	o.send_zc_min_bytes = zc;
	o.quiet = true;
	keel_loop *loop;
	ASSERT_OK(keel_loop_new(&loop, &o));
	bool is_uring = strcmp(keel_loop_backend(loop), "io_uring") == 0;
	if (!is_uring) {
		ASSERT(!keel_loop_feature(loop, "sqpoll"));
		ASSERT(!keel_loop_feature(loop, "send_zc"));
	}
	printf("%s: sqpoll asked %d -> %d, zero-copy asked %ld -> %d\n", keel_loop_backend(loop), sqpoll,
	       keel_loop_feature(loop, "sqpoll"), zc, keel_loop_feature(loop, "send_zc"));

	int lfd = keel_tcp_listen("127.0.0.1:0", 16, 0);
	ASSERT_OK(lfd);
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	getsockname(lfd, (struct sockaddr *)&ss, &len);
	keel_outcome c = test_await(loop, keel_connect(loop, (struct sockaddr *)&ss, len, 2000));
	ASSERT_EQ(c.err, 0);
	int fd = (int)c.n;
	struct sink s = {accept(lfd, NULL, NULL), 0, 0};
	ASSERT(s.fd >= 0);
	pthread_t th;
	pthread_create(&th, NULL, sink_thread, &s);

	unsigned char *data = malloc(BYTES);
	for (size_t i = 0; i < BYTES; i++)
		data[i] = (unsigned char)(i * 13);
	/* In 64 KiB pieces, several in flight one after another, then the rest at once. */
	size_t half = BYTES / 2;
	for (size_t off = 0; off < half; off += 65536) {
		keel_outcome r = test_await(loop, keel_send(loop, fd, data + off, 65536));
		ASSERT_EQ(r.err, 0);
		ASSERT_EQ(r.n, 65536);
	}
	keel_outcome r = test_await(loop, keel_send(loop, fd, data + half, BYTES - half));
	ASSERT_EQ(r.err, 0);
	ASSERT_EQ(r.n, BYTES - half);
	test_await(loop, keel_close(loop, fd));
	pthread_join(th, NULL);
	ASSERT_EQ(s.got, BYTES);
	ASSERT(!s.bad);
	close(s.fd);
	close(lfd);
	free(data); /* after the send promises settled: zero-copy notifications included */
	keel_loop_free(loop);
}

int main(void)
{
	run(0, 0);
	run(1, 0);
	run(0, 4096);
	run(1, 4096);
	printf("features: ok\n");
	return 0;
}
