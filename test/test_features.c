/*
 * The opt-in io_uring features: SQPOLL and zero-copy send. Where the kernel
 * offers a feature (probed here, independently of keel), a loop on io_uring
 * that asks for it must report it active and use it: the ring's fdinfo names
 * a kernel SQ thread, and every send at or above the threshold reaches the
 * kernel as a SEND_ZC/SENDMSG_ZC SQE. A loop that does not ask has neither;
 * on epoll neither is ever active. Where the kernel refuses a feature, keel
 * must run without it, and the program ends with a skip that names the
 * reason once everything else has passed. Either way the data must arrive
 * intact: 4 MiB over TCP loopback.
 *
 * The SQEs are seen by defining, here, the liburing calls that hand them to
 * the kernel: the library's references bind to the executable's definitions,
 * which count the SQEs not yet flushed and then call liburing's own (found
 * with RTLD_NEXT, so liburing must be the shared library; a static one would
 * clash at link time, not pass silently).
 */
#include <dirent.h>
#include <dlfcn.h>
#include <liburing.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include "test.h"

#define BYTES (4u << 20)
#define SMALL 1000 /* one send below the zero-copy threshold */
#define PIECE 65536
#define ZC_MIN 4096

/* ---- The SQEs keel submits. */

static struct {
	const struct io_uring *ring;
	unsigned counted;   /* the ring's SQEs before this index are counted */
	unsigned zc;        /* SEND_ZC and SENDMSG_ZC */
	unsigned plain;     /* SEND and SENDMSG */
	unsigned plain_big; /* plain ones of at least ZC_MIN bytes */
} sqes;

static size_t msg_bytes(const struct msghdr *m)
{
	size_t n = 0;
	for (size_t i = 0; i < m->msg_iovlen; i++)
		n += m->msg_iov[i].iov_len;
	return n;
}

static void count_sqes(struct io_uring *ring)
{
	if (ring != sqes.ring) {
		sqes.ring = ring;
		sqes.counted = ring->sq.sqe_head;
	}
	for (unsigned i = sqes.counted; i != ring->sq.sqe_tail; i++) {
		const struct io_uring_sqe *sqe = &ring->sq.sqes[i & ring->sq.ring_mask];
		switch (sqe->opcode) {
		case IORING_OP_SEND_ZC:
		case IORING_OP_SENDMSG_ZC: sqes.zc++; break;
		case IORING_OP_SEND:
			sqes.plain++;
			sqes.plain_big += sqe->len >= ZC_MIN;
			break;
		case IORING_OP_SENDMSG: {
			const struct msghdr *m = (const struct msghdr *)(uintptr_t)sqe->addr;
			sqes.plain++;
			sqes.plain_big += msg_bytes(m) >= ZC_MIN;
			break;
		}
		default: break;
		}
	}
	sqes.counted = ring->sq.sqe_tail;
}

static void *real(const char *name)
{
	void *fn = dlsym(RTLD_NEXT, name);
	if (!fn)
		FAIL("dlsym(%s): %s", name, dlerror());
	return fn;
}

int io_uring_submit(struct io_uring *ring)
{
	static int (*fn)(struct io_uring *);
	if (!fn)
		fn = (int (*)(struct io_uring *))real("io_uring_submit");
	count_sqes(ring);
	return fn(ring);
}

int io_uring_submit_and_wait(struct io_uring *ring, unsigned wait_nr)
{
	static int (*fn)(struct io_uring *, unsigned);
	if (!fn)
		fn = (int (*)(struct io_uring *, unsigned))real("io_uring_submit_and_wait");
	count_sqes(ring);
	return fn(ring, wait_nr);
}

typedef int submit_wait_timeout_fn(struct io_uring *, struct io_uring_cqe **, unsigned,
                                   struct __kernel_timespec *, sigset_t *);

int io_uring_submit_and_wait_timeout(struct io_uring *ring, struct io_uring_cqe **cqe_ptr, unsigned wait_nr,
                                     struct __kernel_timespec *ts, sigset_t *sigmask)
{
	static submit_wait_timeout_fn *fn;
	if (!fn)
		fn = (submit_wait_timeout_fn *)real("io_uring_submit_and_wait_timeout");
	count_sqes(ring);
	return fn(ring, cqe_ptr, wait_nr, ts, sigmask);
}

int io_uring_submit_and_get_events(struct io_uring *ring)
{
	static int (*fn)(struct io_uring *);
	if (!fn)
		fn = (int (*)(struct io_uring *))real("io_uring_submit_and_get_events");
	count_sqes(ring);
	return fn(ring);
}

/* ---- What the kernel offers, asked directly. */

static const char *sqpoll_refused; /* NULL: this kernel gives this process an SQ thread */
static const char *zc_refused;     /* NULL: this kernel has SEND_ZC and SENDMSG_ZC */
static bool saw_uring;             /* a loop ran on io_uring: the refusals above mattered */

static void probe_kernel(void)
{
	static char sq_why[128];
	struct io_uring ring;
	struct io_uring_params p;
	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_SQPOLL;
	p.sq_thread_idle = 50;
	int err = io_uring_queue_init_params(8, &ring, &p);
	if (err == 0) {
		io_uring_queue_exit(&ring);
	} else {
		snprintf(sq_why, sizeof(sq_why), "the kernel refuses SQPOLL to this process (%s)",
		         strerror(-err));
		sqpoll_refused = sq_why;
	}
	struct io_uring_probe *probe = io_uring_get_probe();
	if (!probe)
		zc_refused = "no io_uring opcode probe";
	else if (!io_uring_opcode_supported(probe, IORING_OP_SEND_ZC) ||
	         !io_uring_opcode_supported(probe, IORING_OP_SENDMSG_ZC))
		zc_refused = "the kernel lacks IORING_OP_SEND_ZC/SENDMSG_ZC (Linux 6.0+)";
	if (probe)
		io_uring_free_probe(probe);
}

/*
 * The SQ thread of the one io_uring instance this process has open, from
 * its fdinfo: its pid, -1 without SQPOLL, or -2 when the kernel does not
 * show it (no fdinfo line, or not exactly one ring).
 */
static int ring_sq_thread(void)
{
	DIR *d = opendir("/proc/self/fd");
	ASSERT(d != NULL);
	int ring_fd = -1, rings = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		char path[300], target[64];
		snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
		ssize_t n = readlink(path, target, sizeof(target) - 1);
		if (n <= 0)
			continue;
		target[n] = '\0';
		if (strcmp(target, "anon_inode:[io_uring]") == 0) {
			ring_fd = atoi(e->d_name);
			rings++;
		}
	}
	closedir(d);
	if (rings != 1)
		return -2;
	char path[64], line[256];
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", ring_fd);
	FILE *f = fopen(path, "r");
	if (!f)
		return -2;
	int pid = -2;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "SqThread: %d", &pid) == 1)
			break;
	fclose(f);
	return pid;
}

/* ---- One loop with the features asked for, and 4 MiB sent through it. */

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

static void send_ok(keel_loop *loop, int fd, const unsigned char *p, size_t len)
{
	keel_outcome r = test_await(loop, keel_send(loop, fd, p, len));
	ASSERT_EQ(r.err, 0);
	ASSERT_EQ(r.n, len);
}

static void run(int sqpoll, long zc)
{
	keel_loop_opts o;
	keel_loop_opts_default(&o);
	o.sqpoll = sqpoll;
	o.send_zc_min_bytes = zc;
	o.quiet = true;
	keel_loop *loop;
	memset(&sqes, 0, sizeof(sqes)); /* a new ring may reuse the old one's address */
	ASSERT_OK(keel_loop_new(&loop, &o));
	bool is_uring = strcmp(keel_loop_backend(loop), "io_uring") == 0;
	saw_uring |= is_uring;
	bool sq_on = keel_loop_feature(loop, "sqpoll"), zc_on = keel_loop_feature(loop, "send_zc");
	printf("%s: sqpoll asked %d -> %d, zero-copy asked %ld -> %d\n", keel_loop_backend(loop), sqpoll,
	       sq_on, zc, zc_on);
	bool sq_want = is_uring && sqpoll && !sqpoll_refused, zc_want = is_uring && zc > 0 && !zc_refused;
	if (sq_on != sq_want)
		FAIL("sqpoll %s, want %s (%s, asked %d; %s)", sq_on ? "active" : "inactive",
		     sq_want ? "active" : "inactive", keel_loop_backend(loop), sqpoll,
		     sqpoll_refused ? sqpoll_refused : "the kernel offers it");
	if (zc_on != zc_want)
		FAIL("send_zc %s, want %s (%s, asked %ld; %s)", zc_on ? "active" : "inactive",
		     zc_want ? "active" : "inactive", keel_loop_backend(loop), zc,
		     zc_refused ? zc_refused : "the kernel offers it");
	if (is_uring) {
		/* The kernel's view: an SQ thread exists exactly when SQPOLL is on. */
		int sq_pid = ring_sq_thread();
		if (sq_pid == -2)
			printf("  (the ring's fdinfo does not show its SQ thread here)\n");
		else if (sq_on ? sq_pid <= 0 : sq_pid != -1)
			FAIL("fdinfo SqThread %d with sqpoll %s", sq_pid, sq_on ? "active" : "inactive");
		else
			printf("  fdinfo SqThread: %d\n", sq_pid);
	}

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
	ASSERT(data != NULL);
	for (size_t i = 0; i < BYTES; i++)
		data[i] = (unsigned char)(i * 13);
	/* One send below the threshold, then 64 KiB pieces one after another, then the rest at once. */
	unsigned big = 0;
	send_ok(loop, fd, data, SMALL);
	size_t off = SMALL;
	for (; off + PIECE <= BYTES / 2; off += PIECE, big++)
		send_ok(loop, fd, data + off, PIECE);
	send_ok(loop, fd, data + off, BYTES - off);
	big++;
	test_await(loop, keel_close(loop, fd));
	pthread_join(th, NULL);
	ASSERT_EQ(s.got, BYTES);
	ASSERT(!s.bad);

	/*
	 * How the sends reached the kernel (short sends are continued, so a
	 * send may take more than one SQE). Zero-copy: every send at or above
	 * the threshold, and only those; the small one stays plain.
	 */
	if (is_uring)
		printf("  send SQEs: %u zero-copy, %u plain (%u of them >= %d bytes); "
		       "%u sends >= %d bytes\n",
		       sqes.zc, sqes.plain, sqes.plain_big, ZC_MIN, big, ZC_MIN);
	if (zc_on) {
		ASSERT_GE(sqes.zc, big);
		ASSERT_EQ(sqes.plain_big, 0);
		ASSERT_GE(sqes.plain, 1);
	} else {
		ASSERT_EQ(sqes.zc, 0);
		if (is_uring)
			ASSERT_GE(sqes.plain, big + 1);
	}
	close(s.fd);
	close(lfd);
	free(data); /* after the send promises settled: zero-copy notifications included */
	keel_loop_free(loop);
}

int main(void)
{
	probe_kernel();
	run(0, 0);
	run(1, 0);
	run(0, ZC_MIN);
	run(1, ZC_MIN);
	printf("features: ok\n");
	if (saw_uring && (sqpoll_refused || zc_refused)) {
		/* The runner shows the last line as the reason. */
		printf("skip: not testable here: %s%s%s\n", sqpoll_refused ? sqpoll_refused : "",
		       sqpoll_refused && zc_refused ? "; " : "", zc_refused ? zc_refused : "");
		return TEST_SKIP;
	}
	return 0;
}
