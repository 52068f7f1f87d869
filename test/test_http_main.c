/*
 * keel_http_main, in process:
 *
 *  - A setup that fails (worker 0 of 2, and worker 1 of 2) makes the call
 *    return that error -- no crash, the other worker stopped -- and the
 *    caller's signal mask is as it was (SIGINT and SIGTERM not left blocked).
 *  - After that, a second call in the same process serves: two workers
 *    answer over loopback, teardown runs once per worker after the drain,
 *    and work a handler started (a timer) is finished before the worker
 *    ends. SIGTERM, sent by a thread of the test, stops it; the call
 *    returns 0 and the mask is restored again.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>

#include "keel/http.h"
#include "keel/keel.h"
#include "test.h"

static unsigned fail_worker;
static atomic_uint setups, teardowns, late_timers;
static atomic_int port;

static void late_done(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)ud;
	if (!o.err)
		atomic_fetch_add(&late_timers, 1);
}

static keel_promise *hello(keel_http_request *r, void *ud)
{
	(void)ud;
	/* Work the server does not know of, still running when the stop comes: it must finish. */
	keel_promise_done(keel_sleep(r->loop, 300), late_done, NULL);
	return keel_http_respond(r, 200, "text/plain", "main\n", 5);
}

static int setup_failing(keel_http_server *srv, keel_loop *loop, unsigned worker, void *ud)
{
	(void)srv;
	(void)loop;
	(void)ud;
	atomic_fetch_add(&setups, 1);
	return worker == fail_worker ? -EADDRNOTAVAIL : 0;
}

static int setup_ok(keel_http_server *srv, keel_loop *loop, unsigned worker, void *ud)
{
	(void)loop;
	(void)worker;
	(void)ud;
	atomic_fetch_add(&setups, 1);
	return keel_http_route(srv, "GET", "/hello", 0, hello, NULL);
}

static atomic_uint teardown_last;

static void teardown_step(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	(void)ud;
	atomic_fetch_add(&teardown_last, 1);
}

static void teardown(keel_http_server *srv, keel_loop *loop, unsigned worker, void *ud)
{
	(void)srv;
	(void)worker;
	(void)ud;
	atomic_fetch_add(&teardowns, 1);
	/* Its last step a continuation, queued and nothing else in flight for it: it still runs. */
	keel_promise *p = keel_promise_new(loop);
	keel_promise_resolve(p, 0, NULL);
	keel_promise_done(p, teardown_step, NULL);
}

static bool term_blocked(void)
{
	sigset_t cur;
	pthread_sigmask(SIG_SETMASK, NULL, &cur);
	return sigismember(&cur, SIGTERM) || sigismember(&cur, SIGINT);
}

/* A request over loopback to the server on port; true when it answered "main". */
static bool ask(int p)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p)};
	a.sin_addr.s_addr = htonl(0x7f000001);
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		close(fd);
		return false;
	}
	const char req[] = "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
	ssize_t w = write(fd, req, sizeof(req) - 1);
	char buf[512];
	size_t got = 0;
	ssize_t n;
	while (w > 0 && got < sizeof(buf) - 1 && (n = read(fd, buf + got, sizeof(buf) - 1 - got)) > 0)
		got += (size_t)n;
	close(fd);
	buf[got] = '\0';
	return strstr(buf, "200 OK") && strstr(buf, "\r\n\r\nmain\n");
}

/* The test's client: its own mask blocks the stop signals, so the process's SIGTERM goes to the server. */
static void *client(void *arg)
{
	(void)arg;
	int ok = 0;
	for (int i = 0; i < 500 && ok < 20; i++) {
		int p = atomic_load(&port);
		if (p && ask(p))
			ok++;
		else
			usleep(10000);
	}
	kill(getpid(), SIGTERM);
	return (void *)(intptr_t)ok;
}

int main(void)
{
	for (fail_worker = 0; fail_worker < 2; fail_worker++) {
		keel_http_main_opts o = {
		    .listen = "127.0.0.1:0", .workers = 2, .setup = setup_failing, .teardown = teardown};
		int rc = keel_http_main(&o);
		ASSERT_EQ(rc, -EADDRNOTAVAIL);
		ASSERT(!term_blocked());
		/* The workers that were set up were torn down, their last steps run though idle. */
		ASSERT_EQ(atomic_load(&teardown_last), atomic_load(&teardowns));
	}
	ASSERT(atomic_load(&teardowns) >= 1);
	atomic_store(&teardowns, 0);
	atomic_store(&teardown_last, 0);
	printf("a worker whose setup fails (0 of 2, 1 of 2): its error, the mask restored: ok\n");

	/* A port for the second run: bound and closed, then named (SO_REUSEPORT listeners take it). */
	int probe = keel_tcp_listen("127.0.0.1:0", 1, 0);
	ASSERT_OK(probe);
	int p = keel_tcp_port(probe);
	close(probe);
	char addr[32];
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", p);
	atomic_store(&port, p);

	sigset_t stops;
	sigemptyset(&stops);
	sigaddset(&stops, SIGINT);
	sigaddset(&stops, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &stops, NULL); /* (inherited by the client thread) */
	pthread_t th;
	ASSERT_EQ(pthread_create(&th, NULL, client, NULL), 0);
	pthread_sigmask(SIG_UNBLOCK, &stops, NULL);
	atomic_store(&setups, 0);
	keel_http_main_opts o = {
	    .listen = addr, .workers = 2, .grace_ms = 2000, .setup = setup_ok, .teardown = teardown};
	int rc = keel_http_main(&o);
	void *ok;
	pthread_join(th, &ok);
	ASSERT_EQ(rc, 0);
	ASSERT_EQ((intptr_t)ok, 20);
	ASSERT_EQ(atomic_load(&setups), 2);
	ASSERT_EQ(atomic_load(&teardowns), 2);
	ASSERT_EQ(atomic_load(&teardown_last), 2);
	ASSERT_EQ(atomic_load(&late_timers),
	          20); /* (their timers outlived the server: drained, not dropped) */
	ASSERT(!term_blocked());
	printf(
	    "then 2 workers serve 20 requests, SIGTERM stops them, teardown twice, the late work done: ok\n");
	return 0;
}
