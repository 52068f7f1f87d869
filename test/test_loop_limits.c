/*
 * The loop at its edges: a full operation table must not break cleanup or
 * wake-ups; a peer that goes away must not kill the host with SIGPIPE, and
 * a transfer it cut short is an error, not a count; a stop asked for before
 * keel_loop_run is not lost.
 */
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test.h"

#define OPS_MAX 16

static int posted;

static void on_post(keel_loop *loop, void *ud)
{
	(void)loop;
	(void)ud;
	posted++;
}

struct poster {
	keel_loop *loop;
};

static void *post_thread(void *arg)
{
	struct poster *p = arg;
	if (keel_loop_post(p->loop, on_post, NULL) < 0)
		abort();
	return NULL;
}

static void post_from_thread(keel_loop *loop)
{
	struct poster p = {loop};
	pthread_t t;
	ASSERT_EQ(pthread_create(&t, NULL, post_thread, &p), 0);
	pthread_join(t, NULL);
}

static int on_recv(void *ud, keel_buf *buf)
{
	(void)ud;
	(void)buf;
	return KEEL_CONTINUE;
}

/* Data arriving in the same tick as a wake-up: this callback takes whatever op slot is free. */
static keel_loop *grab_loop;
static int grab_fd = -1;
static keel_promise *grabbed;

static int on_recv_grab(void *ud, keel_buf *buf)
{
	(void)ud;
	(void)buf;
	if (!grabbed)
		grabbed = keel_recv_stream(grab_loop, grab_fd, on_recv, NULL);
	return KEEL_CONTINUE;
}

/*
 * Fill the op table with receive streams, then: cross-thread posts still
 * reach the loop (more than once: the wake-up re-arms), and every socket can
 * still be closed (a refused close would leak its descriptor).
 */
static void test_table_full(void)
{
	keel_loop_opts o;
	keel_loop_opts_default(&o);
	o.ops_max = OPS_MAX;
	o.quiet = true;
	keel_loop *loop;
	ASSERT_OK(keel_loop_new(&loop, &o));

	int fds[2 * OPS_MAX];
	keel_promise *streams[OPS_MAX];
	int n = 0;
	for (; n < OPS_MAX; n++) {
		int sp[2];
		ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp), 0);
		fds[2 * n] = sp[0];
		fds[2 * n + 1] = sp[1];
		streams[n] = keel_recv_stream(loop, sp[0], n == 0 ? on_recv_grab : on_recv, NULL);
		keel_loop_run_once(loop, 0);
		if (keel_promise_is_settled(streams[n])) {
			ASSERT_EQ(keel_promise_outcome(streams[n]).err, KEEL_ELIMIT);
			keel_promise_release(streams[n]);
			break; /* the table is full */
		}
	}
	ASSERT(n > 0 && n < OPS_MAX);

	/*
	 * A wake-up and data in the same tick, the data's callback starting an
	 * operation: if the wake-up had to find a slot again to re-arm, that
	 * operation would have taken it, and every later post would be lost.
	 */
	int spare[2];
	ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, spare), 0);
	grab_loop = loop;
	grab_fd = spare[0];
	post_from_thread(loop);
	ASSERT_EQ(write(fds[1], "x", 1), 1);
	for (int i = 0; i < 100 && (posted < 1 || !grabbed); i++)
		keel_loop_run_once(loop, 50);
	ASSERT_EQ(posted, 1);
	ASSERT(grabbed != NULL);
	keel_loop_run_once(loop, 0);
	if (keel_promise_is_settled(grabbed))
		ASSERT_EQ(keel_promise_outcome(grabbed).err, KEEL_ELIMIT);

	/* Wake-ups while the table is full: each must run. */
	for (int round = 2; round <= 4; round++) {
		post_from_thread(loop);
		for (int i = 0; i < 100 && posted < round; i++)
			keel_loop_run_once(loop, 50);
		ASSERT_EQ(posted, round);
	}

	/* Close every socket: none may be refused for want of a slot. */
	keel_promise *closes[OPS_MAX];
	for (int i = 0; i <= n; i++)
		closes[i] = keel_close(loop, fds[2 * i]);
	for (int i = 0; i <= n; i++) {
		keel_outcome c = test_await(loop, closes[i]);
		ASSERT_EQ(c.err, 0);
		ASSERT_EQ(fcntl(fds[2 * i], F_GETFD), -1); /* really closed */
		close(fds[2 * i + 1]);
	}
	for (int i = 0; i < n; i++) {
		keel_outcome s = test_await(loop, streams[i]);
		ASSERT(s.err == -ECANCELED || s.err == 0);
	}
	if (!keel_promise_is_settled(grabbed))
		keel_promise_cancel(grabbed);
	test_await(loop, grabbed);
	close(spare[0]);
	close(spare[1]);
	keel_loop_free(loop);
}

static void sleep_done(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	*(int *)ud = 1;
}

/* keel_loop_stop before keel_loop_run: the run returns after one tick, with the timer still pending. */
static void test_stop_before_run(void)
{
	keel_loop *loop = test_loop();
	int fired = 0;
	keel_promise *s = keel_sleep(loop, 60000);
	keel_promise_done(keel_finally(s, NULL, NULL), sleep_done, &fired);
	keel_loop_stop(loop);
	ASSERT_OK(keel_loop_run(loop));
	ASSERT_EQ(fired, 0);
	keel_loop_free(loop);
}

/*
 * A peer that resets in the middle of a file transfer: with SIGPIPE at its
 * default disposition (a host that never thought of it), the process must
 * survive, and the transfer must fail rather than report a short count.
 * Run in a child, so a death by SIGPIPE is reported instead of ending the test.
 */
static void sendfile_child(void)
{
	signal(SIGPIPE, SIG_DFL);
	sigset_t none;
	sigemptyset(&none);
	pthread_sigmask(SIG_SETMASK, &none, NULL);

	char path[] = "/tmp/keel-sigpipe-XXXXXX";
	int file = mkstemp(path);
	ASSERT(file >= 0);
	unlink(path);
	size_t size = 64u << 20;
	ASSERT_EQ(ftruncate(file, (off_t)size), 0);

	keel_loop *loop = test_loop();
	int lfd = keel_tcp_listen("127.0.0.1:0", 16, 0);
	ASSERT_OK(lfd);
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	getsockname(lfd, (struct sockaddr *)&ss, &len);

	/* A transfer the peer cuts short with a reset. */
	keel_outcome c = test_await(loop, keel_connect(loop, (struct sockaddr *)&ss, len, 2000));
	ASSERT_EQ(c.err, 0);
	int fd = (int)c.n;
	int peer = accept(lfd, NULL, NULL);
	ASSERT(peer >= 0);
	keel_promise *sf = keel_sendfile(loop, fd, file, 0, size);
	for (int i = 0; i < 5; i++)
		keel_loop_run_once(loop, 10);
	char b[4096];
	ASSERT(read(peer, b, sizeof(b)) > 0);
	struct linger lg = {1, 0};
	setsockopt(peer, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(peer); /* RST */
	keel_outcome r = test_await(loop, sf);
	ASSERT(r.err < 0); /* not a count short of the length */
	test_await(loop, keel_close(loop, fd));

	/* A transfer on a socket already shut down for writing: EPIPE, the classic SIGPIPE. */
	c = test_await(loop, keel_connect(loop, (struct sockaddr *)&ss, len, 2000));
	ASSERT_EQ(c.err, 0);
	fd = (int)c.n;
	peer = accept(lfd, NULL, NULL);
	ASSERT(peer >= 0);
	ASSERT_EQ(shutdown(fd, SHUT_WR), 0);
	r = test_await(loop, keel_sendfile(loop, fd, file, 0, 65536));
	ASSERT_EQ(r.err, -EPIPE);
	r = test_await(loop, keel_send(loop, fd, "x", 1));
	ASSERT_EQ(r.err, -EPIPE);
	test_await(loop, keel_close(loop, fd));
	close(peer);

	/* Nothing of keel's SIGPIPEs is left pending for the host to receive later. */
	sigset_t pending;
	sigpending(&pending);
	ASSERT(!sigismember(&pending, SIGPIPE));
	close(lfd);
	close(file);
	keel_loop_free(loop);
	exit(0);
}

static void test_sigpipe(void)
{
	pid_t pid = fork();
	ASSERT(pid >= 0);
	if (pid == 0)
		sendfile_child();
	int status;
	ASSERT_EQ(waitpid(pid, &status, 0), pid);
	if (WIFSIGNALED(status))
		FAIL("the host was killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
	ASSERT(WIFEXITED(status));
	ASSERT_EQ(WEXITSTATUS(status), 0);
}

/*
 * epoll takes a descriptor's waiting ops off its list and attempts them in
 * turn; a stream callback of the first cancels the second. It must settle
 * once, -ECANCELED (it used to be reported twice: an abort).
 */
static keel_promise *later_recv;
static int later_settled, cancels;

static int cancel_later(void *ud, keel_buf *buf)
{
	(void)ud;
	(void)buf;
	if (!cancels++)
		keel_promise_cancel(later_recv);
	return KEEL_CONTINUE;
}

static keel_outcome later_out;

static void later_done(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)ud;
	later_settled++;
	later_out = o;
}

static void test_cancel_within_edge(void)
{
	keel_loop *loop = test_loop();
	int sv[2];
	ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
	keel_promise *stream = keel_recv_stream(loop, sv[0], cancel_later, NULL);
	static char buf[64];
	later_recv = keel_recv(loop, sv[0], buf, sizeof(buf));
	keel_promise_done(later_recv, later_done, NULL);
	for (int i = 0; i < 5; i++)
		keel_loop_run_once(loop, 1); /* both wait on the descriptor */
	ASSERT_EQ(write(sv[1], "x", 1), 1);
	for (int i = 0; i < 10; i++)
		keel_loop_run_once(loop, 1);
	/* Whichever op the kernel gave the byte to (io_uring may give it to the plain receive), once. */
	ASSERT_EQ(later_settled, 1);
	if (cancels)
		ASSERT_EQ(later_out.err, -ECANCELED);
	else
		ASSERT_EQ(later_out.n, 1);
	if (strcmp(keel_loop_backend(loop), "epoll") == 0)
		ASSERT_EQ(cancels, 1); /* (epoll attempts the waiting ops in order: the stream first) */
	keel_promise_cancel(stream);
	test_await(loop, stream);
	close(sv[0]);
	close(sv[1]);
	keel_loop_free(loop);
}

/*
 * SIGPIPE is blocked in a tick once an op that can raise it is made (a
 * write, here), and a continuation that drives the loop (keel_loop_run_once
 * inside run_once) keeps it blocked until the outer tick ends. A tick with
 * no such op leaves the mask alone.
 */
static keel_loop *nest_loop;
static int nested_blocked = -1, blocked_before_write = -1;
static int devnull = -1;
static keel_promise *nest_write;

static int sigpipe_blocked_now(void)
{
	sigset_t set;
	pthread_sigmask(SIG_BLOCK, NULL, &set);
	return sigismember(&set, SIGPIPE);
}

static void nest(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	(void)ud;
	blocked_before_write = sigpipe_blocked_now();
	nest_write = keel_file_write(nest_loop, devnull, "x", 1, KEEL_FILE_POS);
	keel_loop_run_once(nest_loop, 0);
	nested_blocked = sigpipe_blocked_now();
}

static void test_nested_run_once(void)
{
	nest_loop = test_loop();
	devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
	ASSERT(devnull >= 0);
	ASSERT_EQ(sigpipe_blocked_now(), 0);
	keel_promise *p = keel_promise_new(nest_loop);
	keel_promise_done(p, nest, NULL);
	keel_promise_resolve(p, 0, NULL);
	keel_loop_run_once(nest_loop, 0);
	ASSERT_EQ(blocked_before_write, 0);  /* nothing that could raise it yet */
	ASSERT_EQ(nested_blocked, 1);        /* still inside the outer tick */
	ASSERT_EQ(sigpipe_blocked_now(), 0); /* and the host's mask back afterwards */
	ASSERT_EQ(test_await(nest_loop, nest_write).n, 1);
	close(devnull);
	keel_loop_free(nest_loop);
}

int main(void)
{
	test_cancel_within_edge();
	test_nested_run_once();
	test_table_full();
	test_stop_before_run();
	test_sigpipe();
	printf("loop limits: ok\n");
	return 0;
}
