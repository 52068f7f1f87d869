/*
 * The HTTP server driven in-process, its clients socketpairs handed over
 * with keel_http_server_adopt: exact byte sequences and exact tick
 * boundaries, which a client over TCP cannot pin down.
 *
 *  - A handler that cannot be stopped (its promise has no cancel hook)
 *    reading a streamed body when the server stops without grace, a body
 *    piece arriving in the same tick: the server must stop cleanly (a
 *    request that stopped being a zombie before its connection was freed was
 *    looked for on the wrong list).
 *  - Error answers the server makes up before dispatching a HEAD request
 *    (400, 413, 501) carry no body.
 *  - A connection adopted while stopping is refused and closed.
 *  - A handler that cannot be stopped keeps its request untouched until it
 *    settles, and its settle runs nobody's code.
 *  - One accept back-off at a time: none fires after the server is freed.
 *  - A client that half-closes after complete requests and the start of
 *    another gets every answer it is owed, whole, then the close.
 *  - Work done on the epoll backend before its wait sees the clock of now:
 *    a request that arrived while the application was busy for 200 ms is
 *    neither shed as if it had queued that long nor cut off by a send
 *    deadline that had passed when it was armed.
 *  - keel_http_server_free with a connection open does not free (its
 *    completions would run into freed memory); after the stop it does, even
 *    from the stop's own callback with an access log, and even when an
 *    unstoppable handler's request is still waiting for its release.
 *  - The transport seam (keel_http_config.transport_init): HTTP/1.1 over a
 *    transport that changes every byte both ways, and one that refuses.
 *  - The client's side of it (keel_http_client_config.transport_init): the
 *    HTTP client over the same transport against that server on a TCP
 *    port -- bodies both ways, streamed, on one pooled connection; a pooled
 *    connection its peer closed or spoke on is not reused; a refusal fails
 *    the request with its error and leaves nothing open.
 *  - Lifetimes: a handler's chain the server cancels still runs its stages
 *    (with -ECANCELED) on a whole request; an upload written to a file by
 *    a loop of flat stages holds the same few promises and no more memory
 *    from its first quarter to its end.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "keel/http.h"
#include "keel/http_client.h"
#include "test.h"

static keel_loop *loop;

struct upload {
	keel_http_request *r;
	keel_promise *done;
};

static void upload_piece(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct upload *u = ud;
	if (o.err) {
		keel_promise_reject(u->done, o.err);
		return;
	}
	keel_str *p = o.ptr;
	if (!p || !p->len) {
		keel_http_respond(u->r, 200, "text/plain", "done", 4);
		keel_promise_resolve(u->done, 0, &u->r->resp);
		return;
	}
	keel_promise_done(keel_http_body_read(u->r), upload_piece, u);
}

static keel_promise *h_upload(keel_http_request *r, void *ud)
{
	(void)ud;
	struct upload *u = keel_ctx_alloc(keel_http_request_ctx(r), sizeof(*u));
	u->r = r;
	u->done = keel_promise_new(r->loop); /* no cancel hook: nothing can stop it */
	keel_promise_done(keel_http_body_read(r), upload_piece, u);
	return u->done;
}

static keel_promise *h_hello(keel_http_request *r, void *ud)
{
	(void)ud;
	return keel_http_respond(r, 200, "text/plain", "hello", 5);
}

#define BIG (1 << 20)
static char big[BIG];

static keel_promise *h_big(keel_http_request *r, void *ud)
{
	(void)ud;
	return keel_http_respond(r, 200, "application/octet-stream", big, BIG);
}

static int stopped;

static void on_stopped(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	(void)ud;
	stopped = 1;
}

static keel_http_server *server(uint64_t body_max)
{
	keel_http_config cfg;
	keel_http_config_default(&cfg);
	cfg.body_max = body_max;
	keel_http_server *srv;
	ASSERT_OK(keel_http_server_new(&srv, loop, &cfg));
	ASSERT_OK(keel_http_route(srv, "POST", "/upload", KEEL_HTTP_STREAM_BODY, h_upload, NULL));
	ASSERT_OK(keel_http_route(srv, NULL, "/hello", 0, h_hello, NULL));
	ASSERT_OK(keel_http_route(srv, "GET", "/big", 0, h_big, NULL));
	return srv;
}

static int adopt(keel_http_server *srv)
{
	int sv[2];
	ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	ASSERT_OK(keel_http_server_adopt(srv, sv[1]));
	return sv[0];
}

/* A TCP connection srv serves as if accepted; returns the client's end (it can reset: SO_LINGER 0). */
static int adopt_tcp(keel_http_server *srv)
{
	int lfd = keel_tcp_listen("127.0.0.1:0", 4, 0);
	ASSERT_OK(lfd);
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	getsockname(lfd, (struct sockaddr *)&ss, &sl);
	int c = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ASSERT_EQ(connect(c, (struct sockaddr *)&ss, sl), 0);
	int a = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	ASSERT(a >= 0);
	close(lfd);
	ASSERT_OK(keel_http_server_adopt(srv, a));
	return c;
}

/* keel_http_server_free(srv), returning what it logged (stderr captured meanwhile). */
static const char *free_logged(keel_http_server *srv)
{
	static char said[1024];
	int p[2];
	ASSERT_EQ(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
	fflush(stderr);
	int saved = dup(2);
	ASSERT(saved >= 0);
	ASSERT_EQ(dup2(p[1], 2), 2);
	keel_http_server_free(srv);
	fflush(stderr);
	ASSERT_EQ(dup2(saved, 2), 2);
	close(saved);
	close(p[1]);
	ssize_t n = read(p[0], said, sizeof(said) - 1);
	close(p[0]);
	said[n > 0 ? n : 0] = '\0';
	return said;
}

/* Stop without grace and wait for the promise. */
static void stop_wait(keel_http_server *srv)
{
	stopped = 0;
	keel_promise_done(keel_http_server_stop(srv, 0), on_stopped, NULL);
	for (int i = 0; i < 300 && !stopped; i++)
		keel_loop_run_once(loop, 1);
	ASSERT(stopped);
}

/* Stop, then free: which must not be refused. */
static void stop_and_free(keel_http_server *srv)
{
	stop_wait(srv);
	const char *said = free_logged(srv);
	if (*said)
		FAIL("keel_http_server_free after the stop said: %s", said);
}

static void test_stop_under_unstoppable_upload(void)
{
	keel_http_server *srv = server(1 << 20);
	int c = adopt(srv);
	static const char req[] =
	    "POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nc\r\na";
	/* In pieces of 9 bytes, a tick between them; the stop comes in the tick of the last. */
	for (size_t off = 0; off < sizeof(req) - 1; off += 9) {
		size_t n = sizeof(req) - 1 - off < 9 ? sizeof(req) - 1 - off : 9;
		ASSERT_EQ(write(c, req + off, n), (ssize_t)n);
		if (off + n < sizeof(req) - 1)
			keel_loop_run_once(loop, 0);
	}
	stop_and_free(srv);
	close(c);
	printf("stop without grace under a handler that cannot be stopped: ok\n");
}

/* Everything the server sends on c until it closes (bounded). */
static size_t read_all(int c, char *out, size_t cap)
{
	size_t n = 0;
	fcntl(c, F_SETFL, O_NONBLOCK);
	for (int i = 0; i < 300; i++) {
		keel_loop_run_once(loop, 1);
		ssize_t r = read(c, out + n, cap - 1 - n);
		if (r == 0)
			break;
		if (r > 0)
			n += (size_t)r;
	}
	out[n] = '\0';
	return n;
}

static void test_head_errors(void)
{
	static const struct {
		const char *req, *status;
	} cases[] = {
	    {"HEAD HTTP/1.1/x HTTP/1.1\r\nHost: a\r\n\r\n", "HTTP/1.1 400 "},
	    {"HEAD /hello HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "HTTP/1.1 501 "},
	    {"HEAD /hello HTTP/1.1\r\nHost: a\r\nContent-Length: 9000\r\n\r\n", "HTTP/1.1 413 "},
	    {"HEAD /hello HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "HTTP/1.1 400 "},
	    {"HEAD /a/..%2Fb HTTP/1.1\r\nHost: a\r\n\r\n", "HTTP/1.1 400 "},
	};
	keel_http_server *srv = server(1000);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int c = adopt(srv);
		ASSERT_EQ(write(c, cases[i].req, strlen(cases[i].req)), (ssize_t)strlen(cases[i].req));
		char got[4096];
		size_t n = read_all(c, got, sizeof(got));
		if (strncmp(got, cases[i].status, strlen(cases[i].status)) != 0)
			FAIL("case %zu: %.60s", i, got);
		char *end = strstr(got, "\r\n\r\n");
		ASSERT(end != NULL);
		if ((size_t)(end + 4 - got) != n)
			FAIL("case %zu: %zu bytes after the head of a HEAD answer: %s", i,
			     n - (size_t)(end + 4 - got), end + 4);
		close(c);
	}
	stopped = 0;
	keel_promise_done(keel_http_server_stop(srv, 100), on_stopped, NULL);
	for (int i = 0; i < 300 && !stopped; i++)
		keel_loop_run_once(loop, 1);
	ASSERT(stopped);
	int sv[2];
	ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	ASSERT_EQ(keel_http_server_adopt(srv, sv[1]), KEEL_ESTOPPED);
	ASSERT_EQ(fcntl(sv[1], F_GETFD), -1); /* closed by the server */
	close(sv[0]);
	keel_http_server_free(srv);
	printf("errors answered to HEAD before dispatch have no body; adopt while stopping refused: ok\n");
}

/*
 * A handler that cannot be stopped, its client reset under it: until it
 * settles, its request is its own -- the file it put in resp stays open, resp
 * stays as it wrote it -- and its settle runs nobody's code: the request (and
 * the context hooks that free the handler's state) go later, from the ready
 * queue, not inside keel_promise_resolve.
 */
struct slow {
	keel_promise *p;
	keel_http_request *req;
	int fd;
};

static struct slow *slow_state;
static int in_resolve, hook_ran_inside, hook_ran;

static void slow_free(void *ud)
{
	hook_ran_inside |= in_resolve;
	hook_ran++;
	free(ud);
}

static keel_promise *h_unstoppable(keel_http_request *r, void *ud)
{
	(void)ud;
	struct slow *s = calloc(1, sizeof(*s));
	ASSERT_OK(keel_ctx_on_free(keel_http_request_ctx(r), slow_free, s));
	s->req = r;
	s->p = keel_promise_new(r->loop); /* no cancel hook */
	s->fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	r->resp.status = 200;
	r->resp.file_fd = s->fd; /* a file answer in the making */
	r->resp.file_close = true;
	r->resp.file_len = 0;
	slow_state = s;
	return s->p;
}

static void test_unstoppable_handler_keeps_its_request(void)
{
	keel_http_server *srv = server(1 << 20);
	ASSERT_OK(keel_http_route(srv, "GET", "/unstoppable", 0, h_unstoppable, NULL));
	int c = adopt_tcp(srv);
	static const char req[] = "GET /unstoppable HTTP/1.1\r\nHost: a\r\n\r\n";
	ASSERT_EQ(write(c, req, sizeof(req) - 1), (ssize_t)sizeof(req) - 1);
	for (int i = 0; i < 100 && !slow_state; i++)
		keel_loop_run_once(loop, 5);
	ASSERT(slow_state != NULL);
	struct linger lg = {1, 0};
	setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(c); /* a reset: the server cancels the handler's promise */
	for (int i = 0; i < 20; i++)
		keel_loop_run_once(loop, 5);
	struct slow *st = slow_state;
	ASSERT(fcntl(st->fd, F_GETFD) >= 0);  /* its file is still its own */
	ASSERT_EQ(st->req->resp.status, 200); /* and its response as it left it */
	ASSERT_EQ(st->req->resp.file_fd, st->fd);
	in_resolve = 1;
	keel_promise_resolve(st->p, 0, &st->req->resp);
	in_resolve = 0;
	ASSERT_EQ(hook_ran_inside, 0);
	int fd = st->fd; /* (st is freed by the hook, from the ready queue) */
	for (int i = 0; i < 10; i++)
		keel_loop_run_once(loop, 1);
	ASSERT_EQ(hook_ran, 1);
	ASSERT_EQ(fcntl(fd, F_GETFD), -1); /* answered with a file to close: closed with the request */
	stop_and_free(srv);
	printf("an unstoppable handler keeps its request, and its settle runs nobody's code: ok\n");
}

/*
 * At the connection limit a re-check of idle connections is pending when the
 * accept stream ends with an error: one back-off at a time, or stop cancels
 * only the newer and the older fires into a freed server.
 */
static void test_one_backoff_at_a_time(void)
{
	keel_http_config cfg;
	keel_http_config_default(&cfg);
	cfg.conns_max = 1;
	keel_http_server *srv;
	ASSERT_OK(keel_http_server_new(&srv, loop, &cfg));
	ASSERT_OK(keel_http_route(srv, "GET", "/hello", 0, h_hello, NULL));
	int lfd = keel_tcp_listen("127.0.0.1:0", 16, 0);
	ASSERT_OK(lfd);
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	getsockname(lfd, (struct sockaddr *)&ss, &sl);
	ASSERT_OK(keel_http_server_start(srv, lfd));
	keel_http_stats st;
	int a = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ASSERT_EQ(connect(a, (struct sockaddr *)&ss, sl), 0);
	for (int i = 0; i < 100; i++) { /* the server is full: a 200 ms re-check is pending */
		keel_loop_run_once(loop, 2);
		keel_http_server_stats(srv, &st);
		if (st.conns_open == 1)
			break;
	}
	ASSERT_EQ(st.conns_open, 1);
	close(a); /* room again: accepting resumes, the re-check still pending */
	for (int i = 0; i < 100; i++) {
		keel_loop_run_once(loop, 2);
		keel_http_server_stats(srv, &st);
		if (st.conns_open == 0)
			break;
	}
	/* Out of descriptors: the next accept fails; a second pause would start. */
	int b = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int n = dup(0);
	close(n);
	struct rlimit old, lim;
	getrlimit(RLIMIT_NOFILE, &old);
	lim = old;
	lim.rlim_cur = (rlim_t)n;
	setrlimit(RLIMIT_NOFILE, &lim);
	connect(b, (struct sockaddr *)&ss, sl);
	for (int i = 0; i < 5; i++)
		keel_loop_run_once(loop, 2);
	stopped = 0;
	keel_promise_done(keel_http_server_stop(srv, 0), on_stopped, NULL);
	for (int i = 0; i < 100 && !stopped; i++)
		keel_loop_run_once(loop, 2);
	setrlimit(RLIMIT_NOFILE, &old);
	ASSERT(stopped);
	keel_http_server_free(srv);
	for (int i = 0; i < 40; i++)
		keel_loop_run_once(loop, 10); /* nothing of the server's may fire now */
	close(b);
	close(lfd);
	printf("one accept back-off at a time; none outlives the server: ok\n");
}

/*
 * Everything the server sends on c until it closes, read promptly (bounded
 * in ticks); *eof says whether the close came.
 */
static size_t read_until_close(int c, char *out, size_t cap, int *eof)
{
	size_t n = 0;
	*eof = 0;
	fcntl(c, F_SETFL, O_NONBLOCK);
	for (int i = 0; i < 3000 && !*eof; i++) {
		keel_loop_run_once(loop, 1);
		for (;;) {
			ssize_t r = read(c, out + n, cap - n);
			if (r == 0)
				*eof = 1;
			if (r <= 0)
				break;
			n += (size_t)r;
			if (n == cap)
				FAIL("more than %zu bytes", cap);
		}
	}
	return n;
}

/* The length of the response at p (head and Content-Length body), or 0. */
static size_t response_len(const char *p, size_t n)
{
	const char *end = memmem(p, n, "\r\n\r\n", 4);
	const char *cl = memmem(p, n, "Content-Length: ", 16);
	if (!end || !cl || cl > end)
		return 0;
	return (size_t)(end + 4 - p) + strtoull(cl + 16, NULL, 10);
}

static void test_halfclose_gets_what_it_is_owed(void)
{
	static const struct {
		const char *req, *first, *second; /* second: the answer to the cut-off request, if any */
	} cases[] = {
	    /* A head cut off: dropped; the big answer before it arrives whole. */
	    {"GET /big HTTP/1.1\r\nHost: a\r\n\r\nGET /hel", "HTTP/1.1 200 ", NULL},
	    /* A body read whole, cut off: answered 400 after what came before. */
	    {"GET /hello HTTP/1.1\r\nHost: a\r\n\r\nPOST /hello HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc",
	     "HTTP/1.1 200 ", "HTTP/1.1 400 "},
	    /* A streamed body cut off: its handler fails with the read's -ECONNRESET, answered 400. */
	    {"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc", "HTTP/1.1 400 ", NULL},
	    /* Nothing complete: closed with nothing sent. */
	    {"GET /hello HTTP/1.1\r\nHo", NULL, NULL},
	};
	static char got[BIG + 4096];
	keel_http_server *srv = server(1000);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int c = adopt(srv);
		size_t len = strlen(cases[i].req);
		ASSERT_EQ(write(c, cases[i].req, len), (ssize_t)len);
		ASSERT_EQ(shutdown(c, SHUT_WR), 0);
		int eof;
		size_t n = read_until_close(c, got, sizeof(got), &eof);
		if (!eof)
			FAIL("case %zu: no close after %zu bytes", i, n);
		size_t one = 0, two = 0;
		if (cases[i].first) {
			if (n < 13 || memcmp(got, cases[i].first, 13) != 0)
				FAIL("case %zu: %zu bytes: %.40s", i, n, got);
			one = response_len(got, n);
			if (!one || one > n)
				FAIL("case %zu: the first answer is cut off: %zu of %zu bytes", i, n, one);
		}
		if (cases[i].second) {
			if (n - one < 13 || memcmp(got + one, cases[i].second, 13) != 0)
				FAIL("case %zu: second answer: %.40s", i, got + one);
			two = response_len(got + one, n - one);
		}
		if (one + two != n)
			FAIL("case %zu: %zu bytes, answers of %zu + %zu", i, n, one, two);
		close(c);
	}
	stop_and_free(srv);
	printf("a half-close after complete requests gets every answer owed, whole: ok\n");
}

static void test_clock_fresh_before_the_wait(void)
{
	keel_http_config cfg;
	keel_http_config_default(&cfg);
	cfg.send_timeout_ms = 50;
	keel_http_server *srv;
	ASSERT_OK(keel_http_server_new(&srv, loop, &cfg));
	ASSERT_OK(keel_http_route(srv, "GET", "/big", 0, h_big, NULL));
	int sv[2];
	ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	keel_loop_run_once(loop, 0); /* the loop reads its clock here... */
	usleep(200 * 1000);          /* ...and the application is busy elsewhere for 200 ms */
	static const char req[] = "GET /big HTTP/1.1\r\nHost: a\r\n\r\n";
	ASSERT_EQ(write(sv[0], req, sizeof(req) - 1), (ssize_t)sizeof(req) - 1);
	ASSERT_OK(keel_http_server_adopt(srv, sv[1]));
	static char got[BIG + 4096];
	size_t n = 0;
	fcntl(sv[0], F_SETFL, O_NONBLOCK);
	for (int i = 0; i < 3000 && (!response_len(got, n) || n < response_len(got, n)); i++) {
		keel_loop_run_once(loop, 1);
		ssize_t r;
		while ((r = read(sv[0], got + n, sizeof(got) - n)) > 0)
			n += (size_t)r;
		if (r == 0)
			break;
	}
	if (n < 13 || memcmp(got, "HTTP/1.1 200 ", 13) != 0)
		FAIL("%zu bytes: %.40s", n, got);
	ASSERT_EQ(n, response_len(got, n));
	close(sv[0]);
	stop_and_free(srv);
	printf("work before the wait sees a fresh clock: ok\n");
}

static void test_free_refused_while_open(void)
{
	keel_http_server *srv = server(1000);
	int c = adopt(srv);
	static const char req[] = "GET /hello HTTP/1.1\r\nHost: a\r\n\r\n";
	ASSERT_EQ(write(c, req, sizeof(req) - 1), (ssize_t)sizeof(req) - 1);
	for (int i = 0; i < 5; i++)
		keel_loop_run_once(loop, 1);
	if (!strstr(free_logged(srv), "not freed")) /* refused: the connection is open */
		FAIL("keel_http_server_free with a connection open did not say it refused");
	ASSERT_EQ(write(c, req, sizeof(req) - 1), (ssize_t)sizeof(req) - 1);
	char got[4096];
	size_t n = 0;
	fcntl(c, F_SETFL, O_NONBLOCK);
	const char *second = NULL;
	for (int i = 0; i < 300 && !second; i++) {
		keel_loop_run_once(loop, 1);
		ssize_t r = read(c, got + n, sizeof(got) - 1 - n);
		if (r > 0)
			n += (size_t)r;
		got[n] = '\0';
		const char *first = strstr(got, "hello");
		second = first ? strstr(first + 5, "hello") : NULL;
	}
	ASSERT(second != NULL); /* still serving, both requests answered */
	close(c);
	stop_and_free(srv); /* now it frees (LeakSanitizer would say otherwise) */
	printf("keel_http_server_free refused while a connection is open: ok\n");
}

/* A handler that answers when the test says (its promise has no cancel hook). */
static keel_promise *held;
static keel_http_request *held_req;

static keel_promise *h_held(keel_http_request *r, void *ud)
{
	(void)ud;
	held_req = r;
	held = keel_promise_new(r->loop);
	return held;
}

static int log_fd = -1;

/*
 * The stop's promise resolves only once the access log's last lines are
 * written: a server freed at once, from the promise's callback, is freed
 * (before, the last request's line was still being written when the stop
 * resolved, and the free was refused).
 */
static void free_when_stopped(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	const char *said = free_logged(ud);
	if (*said)
		FAIL("freed from the stop's callback: %s", said);
	char line[512];
	ssize_t n = read(log_fd, line, sizeof(line) - 1);
	if (n <= 0)
		FAIL("the access log's last line was not written before the stop resolved");
	line[n] = '\0';
	if (!strstr(line, "/held"))
		FAIL("access log: %s", line);
	stopped = 1;
}

static void test_free_right_after_stop_with_access_log(void)
{
	int lp[2];
	ASSERT_EQ(pipe2(lp, O_CLOEXEC), 0);
	log_fd = lp[0];
	fcntl(log_fd, F_SETFL, O_NONBLOCK);
	keel_http_config cfg;
	keel_http_config_default(&cfg);
	cfg.access_log_fd = lp[1];
	keel_http_server *srv;
	ASSERT_OK(keel_http_server_new(&srv, loop, &cfg));
	ASSERT_OK(keel_http_route(srv, "GET", "/held", 0, h_held, NULL));
	int c = adopt(srv);
	static const char req[] = "GET /held HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
	ASSERT_EQ(write(c, req, sizeof(req) - 1), (ssize_t)sizeof(req) - 1);
	held = NULL;
	for (int i = 0; i < 100 && !held; i++)
		keel_loop_run_once(loop, 1);
	ASSERT(held != NULL);
	/* Stopping with a request in flight; its answer, the close and the stop follow in a row. */
	stopped = 0;
	keel_promise_done(keel_http_server_stop(srv, 1000), free_when_stopped, srv);
	held_req->resp.status = 200;
	held_req->resp.content_type = "text/plain";
	held_req->resp.body = (keel_str){.ptr = "held", .len = 4};
	keel_promise_resolve(held, 0, &held_req->resp);
	char got[4096];
	int eof;
	read_until_close(c, got, sizeof(got), &eof);
	ASSERT(eof);
	close(c);
	for (int i = 0; i < 300 && !stopped; i++)
		keel_loop_run_once(loop, 1);
	ASSERT(stopped);
	close(lp[0]);
	close(lp[1]);
	printf("the stop resolves after the access log's last write; free at once works: ok\n");
}

/*
 * A handler that could not be stopped settles after the stop resolved, and
 * the server is freed before the ready queue releases its request: the
 * release runs alone, after the server is gone (before, into freed memory).
 */
static void test_zombie_released_after_free(void)
{
	keel_http_server *srv = server(1000);
	ASSERT_OK(keel_http_route(srv, "GET", "/held", 0, h_held, NULL));
	int c = adopt(srv);
	static const char req[] = "GET /held HTTP/1.1\r\nHost: a\r\n\r\n";
	ASSERT_EQ(write(c, req, sizeof(req) - 1), (ssize_t)sizeof(req) - 1);
	held = NULL;
	for (int i = 0; i < 100 && !held; i++)
		keel_loop_run_once(loop, 1);
	ASSERT(held != NULL);
	stop_wait(srv);
	keel_promise_reject(held, -EIO); /* the producer lets go: its request's release is queued */
	const char *said = free_logged(srv);
	if (*said)
		FAIL("free: %s", said);
	for (int i = 0; i < 5; i++)
		keel_loop_run_once(loop, 0); /* the release runs now, with the server gone */
	close(c);
	printf("a zombie released after its server was freed goes alone: ok\n");
}

/*
 * The transport seam: a connection whose bytes are changed on the way (each
 * XORed with a key, both ways -- a toy cipher) is served by the HTTP/1.1
 * code unchanged, as a TLS connection will be. Heads, a whole body and a
 * streamed one, pipelined requests and the close all go through the
 * transport's table; a transport that refuses a connection closes it.
 */
#define XOR_KEY 0x5a

struct xor_impl {
	keel_recv_fn fn;
	void *ud;
	unsigned sends, recvs;
};

static unsigned xor_conns, xor_closes;

static void xor_bytes(char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] ^= XOR_KEY;
}

static int xor_on_data(void *ud, keel_buf *buf)
{
	keel_transport *t = ud;
	struct xor_impl *x = t->impl;
	x->recvs++;
	xor_bytes(buf->data, buf->len); /* in place: the buffer is the connection's */
	return x->fn(x->ud, buf);
}

static keel_promise *xor_recv(keel_transport *t, keel_recv_fn fn, void *ud, bool paced)
{
	struct xor_impl *x = t->impl;
	x->fn = fn;
	x->ud = ud;
	return paced ? keel_recv_stream_paced(t->loop, t->fd, xor_on_data, t)
	             : keel_recv_stream(t->loop, t->fd, xor_on_data, t);
}

static void xor_sent(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	free(ud); /* the copy was the kernel's until now */
}

static keel_promise *xor_send_copy(keel_transport *t, char *copy, size_t n)
{
	xor_bytes(copy, n);
	((struct xor_impl *)t->impl)->sends++;
	return keel_finally(keel_send(t->loop, t->fd, copy, n), xor_sent, copy);
}

static keel_promise *xor_sendv(keel_transport *t, const struct iovec *iov, int n)
{
	size_t len = 0;
	for (int i = 0; i < n; i++)
		len += iov[i].iov_len;
	char *copy = malloc(len ? len : 1), *p = copy;
	ASSERT(copy != NULL);
	for (int i = 0; i < n; i++) {
		memcpy(p, iov[i].iov_base, iov[i].iov_len);
		p += iov[i].iov_len;
	}
	return xor_send_copy(t, copy, len);
}

static keel_promise *xor_sendfile(keel_transport *t, int in_fd, uint64_t off, size_t len)
{
	char *copy = malloc(len ? len : 1);
	ASSERT(copy != NULL);
	ssize_t got = pread(in_fd, copy, len, (off_t)off); /* (a test: a blocking read is fine) */
	return xor_send_copy(t, copy, got > 0 ? (size_t)got : 0);
}

static keel_promise *xor_shutdown(keel_transport *t)
{
	return keel_shutdown(t->loop, t->fd, SHUT_WR);
}

static keel_promise *xor_close(keel_transport *t)
{
	xor_closes++;
	free(t->impl);
	t->impl = NULL;
	return keel_close(t->loop, t->fd);
}

static int xor_peek(keel_transport *t)
{
	char b; /* (no bytes held back: what the socket has is all there is) */
	ssize_t n = recv(t->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
	if (n >= 0)
		return n > 0 ? 1 : -EPIPE;
	return errno == EAGAIN ? 0 : -errno;
}

static bool xor_pending(keel_transport *t)
{
	return xor_peek(t) > 0;
}

static int xor_peer(keel_transport *t, struct sockaddr_storage *ss)
{
	(void)t;
	memset(ss, 0, sizeof(*ss));
	return -ENOTSOCK; /* (a socketpair: no address) */
}

static const keel_transport_ops xor_ops = {
    .recv = xor_recv,
    .sendv = xor_sendv,
    .sendfile = xor_sendfile,
    .shutdown = xor_shutdown,
    .close = xor_close,
    .pending = xor_pending,
    .peek = xor_peek,
    .peer = xor_peer,
};

static int xor_init(keel_transport *t, keel_loop *l, int fd, void *ud)
{
	if (ud)
		return -EPERM; /* (this server refuses every connection) */
	t->ops = &xor_ops;
	t->loop = l;
	t->fd = fd;
	t->impl = calloc(1, sizeof(struct xor_impl));
	if (!t->impl)
		return -ENOMEM;
	xor_conns++;
	return 0;
}

static void test_transport_seam(void)
{
	keel_http_config cfg;
	keel_http_config_default(&cfg);
	cfg.transport_init = xor_init;
	keel_http_server *srv;
	ASSERT_OK(keel_http_server_new(&srv, loop, &cfg));
	ASSERT_OK(keel_http_route(srv, NULL, "/hello", 0, h_hello, NULL));
	ASSERT_OK(keel_http_route(srv, "GET", "/big", 0, h_big, NULL));
	ASSERT_OK(keel_http_route(srv, "POST", "/upload", KEEL_HTTP_STREAM_BODY, h_upload, NULL));
	int c = adopt(srv);
	ASSERT_EQ(xor_conns, 1);
	/* Two pipelined requests and a third that closes: one XORed stream in, one out. */
	char req[] =
	    "GET /hello HTTP/1.1\r\nHost: a\r\n\r\n"
	    "GET /big HTTP/1.1\r\nHost: a\r\n\r\n"
	    "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nabcde";
	xor_bytes(req, sizeof(req) - 1);
	ASSERT_EQ(write(c, req, sizeof(req) - 1), (ssize_t)(sizeof(req) - 1));
	static char got[BIG + 8192];
	size_t n = read_all(c, got, sizeof(got));
	xor_bytes(got, n);
	got[n] = '\0';
	char *first = strstr(got, "HTTP/1.1 200 OK\r\n");
	ASSERT(first == got);
	char *body = strstr(got, "\r\n\r\n");
	ASSERT(body && strncmp(body + 4, "hello", 5) == 0);
	char *second = strstr(body + 4, "HTTP/1.1 200 OK\r\n");
	ASSERT(second != NULL);
	char *body2 = strstr(second, "\r\n\r\n");
	ASSERT(body2 != NULL);
	ASSERT_EQ(memcmp(body2 + 4, big, BIG), 0); /* a megabyte, sent from where it is, XORed */
	char *third = body2 + 4 + BIG;
	if (strncmp(third, "HTTP/1.1 ", 9) != 0)
		FAIL("the upload's answer: %.60s", third);
	ASSERT(strstr(third, "Connection: close\r\n") != NULL);
	close(c);
	for (int i = 0; i < 50 && xor_closes < 1; i++)
		keel_loop_run_once(loop, 1);
	ASSERT_EQ(xor_closes, 1); /* the connection's close went through the transport */
	stop_and_free(srv);

	/* A transport that refuses: the connection is closed, never served, nothing leaks. */
	cfg.transport_ud = &cfg;
	ASSERT_OK(keel_http_server_new(&srv, loop, &cfg));
	int sv[2];
	ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	ASSERT_OK(keel_http_server_adopt(srv, sv[1]));
	ASSERT_EQ(fcntl(sv[1], F_GETFD), -1); /* closed by the server */
	char b;
	ASSERT_EQ(read(sv[0], &b, 1), 0);
	close(sv[0]);
	keel_http_stats st;
	keel_http_server_stats(srv, &st);
	ASSERT_EQ(st.conns_open, 0);
	stop_and_free(srv);
	printf("transport seam: HTTP/1.1 over a transport that changes every byte; a refusal closes: ok\n");
}

/*
 * The client's side of the seam (keel_http_client_config.transport_init):
 * the HTTP client over the same XOR transport, against the XOR server on a
 * TCP port. Both ends change every byte, so any byte the client read or
 * wrote past its transport would garble a head or a body: heads, a 1 MiB
 * body, uploads streamed with and without a length, a streamed response
 * read piece by piece (the paced receive), all on one pooled connection,
 * and its close going through the transport.
 */
struct xor_client {
	unsigned inits;
	char host[64];
	int refuse; /* a negative errno: every connection is refused with it */
};

static int xor_client_init(keel_transport *t, keel_loop *l, int fd, void *ud, const char *host)
{
	struct xor_client *xc = ud;
	xc->inits++;
	snprintf(xc->host, sizeof(xc->host), "%s", host);
	if (xc->refuse)
		return xc->refuse;
	return xor_init(t, l, fd, NULL);
}

static keel_promise *h_echo(keel_http_request *r, void *ud)
{
	(void)ud;
	return keel_http_respond(r, 200, "application/octet-stream", r->body.ptr, r->body.len);
}

/* A streamed request body: piece bytes at a time from p, then the end. */
struct feed {
	const char *p;
	size_t left, piece;
	keel_str s;
};

static keel_promise *feed_read(void *ud)
{
	struct feed *f = ud;
	size_t n = f->left < f->piece ? f->left : f->piece;
	f->s = (keel_str){f->p, n};
	f->p += n;
	f->left -= n;
	keel_promise *p = keel_promise_new(loop);
	keel_promise_resolve(p, 0, &f->s);
	return p;
}

static keel_http_client_response *client_send(keel_http_client *c, const keel_http_client_request *q)
{
	keel_outcome o = test_await(loop, keel_http_client_request_send(c, q));
	if (o.err)
		FAIL("%s %s: %s", q->method ? q->method : "GET", q->target, keel_strerror(o.err));
	return o.ptr;
}

static void expect_response(keel_http_client_response *resp, const char *body, size_t len)
{
	ASSERT_EQ(resp->status, 200);
	ASSERT_EQ(resp->body.len, len);
	ASSERT_EQ(memcmp(resp->body.ptr, body, len), 0);
	keel_http_client_response_free(resp);
}

static void test_client_transport_seam(void)
{
	keel_http_config scfg;
	keel_http_config_default(&scfg);
	scfg.transport_init = xor_init;
	keel_http_server *srv;
	ASSERT_OK(keel_http_server_new(&srv, loop, &scfg));
	ASSERT_OK(keel_http_route(srv, "GET", "/hello", 0, h_hello, NULL));
	ASSERT_OK(keel_http_route(srv, "GET", "/big", 0, h_big, NULL));
	ASSERT_OK(keel_http_route(srv, NULL, "/echo", 0, h_echo, NULL));
	int lfd = keel_tcp_listen("127.0.0.1:0", 16, 0);
	ASSERT_OK(lfd);
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", keel_tcp_port(lfd));
	ASSERT_OK(keel_http_server_start(srv, lfd));

	struct xor_client xc = {0};
	keel_http_client_config cfg;
	keel_http_client_config_default(&cfg);
	cfg.pool_max = 1; /* every request on the one connection */
	cfg.transport_init = xor_client_init;
	cfg.transport_ud = &xc;
	keel_http_client *c;
	ASSERT_OK(keel_http_client_new(&c, loop, &cfg));

	keel_http_client_request q = {.upstream = addr, .target = "/hello"};
	expect_response(client_send(c, &q), "hello", 5);
	ASSERT_EQ(xc.inits, 1);
	ASSERT(strcmp(xc.host, "127.0.0.1") == 0);
	q.target = "/big";
	expect_response(client_send(c, &q), big, BIG);

	/* Uploads streamed from a producer: chunked, then with a Content-Length. */
	struct feed f = {big, BIG / 2, 64 << 10, {0}};
	q = (keel_http_client_request){.upstream = addr,
	                               .method = "POST",
	                               .target = "/echo",
	                               .body_read = feed_read,
	                               .body_ud = &f,
	                               .body_length = -1};
	expect_response(client_send(c, &q), big, BIG / 2);
	f = (struct feed){big + 1000, 300000, 70000, {0}};
	q.method = "PUT";
	q.body_length = 300000;
	expect_response(client_send(c, &q), big + 1000, 300000);

	/* A response streamed to the caller: read piece by piece through the transport. */
	q = (keel_http_client_request){.upstream = addr, .target = "/big", .stream_response = true};
	keel_http_client_response *resp = client_send(c, &q);
	ASSERT_EQ(resp->status, 200);
	size_t got = resp->body.len;
	ASSERT(got <= BIG && memcmp(resp->body.ptr, big, got) == 0);
	for (;;) {
		keel_outcome o = test_await(loop, keel_http_client_body_read(resp));
		ASSERT_OK(o.err);
		keel_str *piece = o.ptr;
		if (!piece->len)
			break;
		ASSERT(got + piece->len <= BIG);
		ASSERT_EQ(memcmp(piece->ptr, big + got, piece->len), 0);
		got += piece->len;
	}
	ASSERT_EQ(got, BIG);
	keel_http_client_response_free(resp);
	q = (keel_http_client_request){.upstream = addr, .target = "/hello"};
	expect_response(client_send(c, &q), "hello", 5); /* and the connection is still good */

	keel_http_client_stats st;
	keel_http_client_get_stats(c, &st);
	ASSERT_EQ(st.responses, 6);
	ASSERT_EQ(st.connects, 1); /* pooled: reused for all six */
	ASSERT_EQ(st.retries, 0);
	ASSERT_EQ(st.unsolicited, 0);
	ASSERT_EQ(xc.inits, 1);
	unsigned closes = xor_closes;
	keel_http_client_free(c);
	for (int i = 0; i < 100 && xor_closes < closes + 2; i++)
		keel_loop_run_once(loop, 1);
	ASSERT_EQ(xor_closes, closes + 2); /* the client's close and then the server's, both through it */
	stop_and_free(srv);
	close(lfd);
	printf("client transport seam: the client over a transport that changes every byte, pooled: ok\n");
}

/* ---- A peer by hand: the test plays the XOR server on raw sockets ---- */

/* Accept the client's next connection on lfd (non-blocking), running the loop meanwhile. */
static int raw_accept(int lfd)
{
	for (int i = 0; i < 300; i++) {
		keel_loop_run_once(loop, 1);
		int a = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (a >= 0) {
			int one = 1; /* what the test writes must not wait for an ACK (Nagle) */
			setsockopt(a, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
			return a;
		}
	}
	FAIL("no new connection from the client");
}

/* Read one request head (and what came with it) from a, un-XORed; check it starts with line. */
static void raw_expect(int a, const char *line)
{
	char b[4096];
	size_t n = 0;
	for (int i = 0; i < 300 && !memmem(b, n, "\r\n\r\n", 4); i++) {
		keel_loop_run_once(loop, 1);
		ssize_t r = read(a, b + n, sizeof(b) - 1 - n);
		if (r > 0) {
			xor_bytes(b + n, (size_t)r);
			n += (size_t)r;
		}
	}
	b[n] = '\0';
	if (strncmp(b, line, strlen(line)) != 0)
		FAIL("expected %s, got: %.60s", line, b);
}

static void raw_say(int a, const char *s)
{
	char b[256];
	size_t n = strlen(s);
	memcpy(b, s, n);
	xor_bytes(b, n);
	ASSERT_EQ(write(a, b, n), (ssize_t)n);
}

/* A request answered by the test: its promise, the peer's side served, the body checked. */
static void raw_exchange(keel_http_client *c, keel_http_client_request *q, int a, const char *line,
                         const char *body)
{
	keel_promise *p = keel_http_client_request_send(c, q);
	raw_expect(a, line);
	char resp[128];
	snprintf(resp, sizeof(resp), "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n%s", strlen(body), body);
	raw_say(a, resp);
	keel_outcome o = test_await(loop, p);
	ASSERT_OK(o.err);
	expect_response(o.ptr, body, strlen(body));
}

/*
 * A pooled connection is checked through the transport before reuse (its
 * peek): a peer that closed it while the loop was not looking, or sent
 * bytes nobody asked for, is not reused. A POST, which is never retried,
 * shows the closed one was seen before anything was sent on it.
 */
static void test_client_transport_stale(void)
{
	int lfd = keel_tcp_listen("127.0.0.1:0", 16, 0);
	ASSERT_OK(lfd);
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", keel_tcp_port(lfd));
	struct xor_client xc = {0};
	keel_http_client_config cfg;
	keel_http_client_config_default(&cfg);
	cfg.pool_max = 1;
	cfg.transport_init = xor_client_init;
	cfg.transport_ud = &xc;
	keel_http_client *c;
	ASSERT_OK(keel_http_client_new(&c, loop, &cfg));

	keel_http_client_request q = {.upstream = addr, .target = "/a"};
	keel_promise *p = keel_http_client_request_send(c, &q);
	int a = raw_accept(lfd);
	raw_expect(a, "GET /a HTTP/1.1\r\n");
	raw_say(a, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na");
	keel_outcome o = test_await(loop, p);
	ASSERT_OK(o.err);
	expect_response(o.ptr, "a", 1);

	close(a);      /* the peer closes the pooled connection... */
	usleep(20000); /* ...and the loop has not run since */
	q = (keel_http_client_request){.upstream = addr, .method = "POST", .target = "/b", .body = {"x", 1}};
	p = keel_http_client_request_send(c, &q);
	int b = raw_accept(lfd);
	raw_expect(b, "POST /b HTTP/1.1\r\n");
	raw_say(b, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb");
	o = test_await(loop, p);
	ASSERT_OK(o.err);
	expect_response(o.ptr, "b", 1);
	keel_http_client_stats st;
	keel_http_client_get_stats(c, &st);
	ASSERT_EQ(st.connects, 2);
	ASSERT_EQ(st.retries, 0);
	ASSERT_EQ(st.unsolicited, 0);

	q = (keel_http_client_request){.upstream = addr, .target = "/b2"};
	raw_exchange(c, &q, b, "GET /b2 HTTP/1.1\r\n", "b2");           /* reused: quiet and open */
	raw_say(b, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL"); /* unasked */
	usleep(20000);
	q.target = "/c";
	p = keel_http_client_request_send(c, &q);
	int d = raw_accept(lfd);
	raw_expect(d, "GET /c HTTP/1.1\r\n");
	raw_say(d, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nc");
	o = test_await(loop, p);
	ASSERT_OK(o.err);
	expect_response(o.ptr, "c", 1);
	keel_http_client_get_stats(c, &st);
	ASSERT_EQ(st.connects, 3);
	ASSERT_GE(st.unsolicited, 1);
	ASSERT_EQ(xc.inits, 3);
	keel_http_client_free(c);
	for (int i = 0; i < 20; i++)
		keel_loop_run_once(loop, 0);
	close(b);
	close(d);
	close(lfd);
	printf("client transport seam: a pooled connection closed or spoken on unasked is not reused: ok\n");
}

/* The lowest free descriptor: the same before and after means none was left open. */
static int fd_probe(void)
{
	int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	ASSERT(fd >= 0);
	close(fd);
	return fd;
}

/*
 * A transport_init that refuses: the connect fails with its error, for the
 * request on the connection and for the one queued behind it (each gets a
 * connection of its own, refused alike); the descriptor is closed and the
 * connection freed. The hook is told the host without port or brackets.
 */
static void test_client_transport_refused(void)
{
	int lfd = keel_tcp_listen("127.0.0.1:0", 16, 0); /* connects complete in its backlog */
	ASSERT_OK(lfd);
	int port = keel_tcp_port(lfd);
	int lfd6 = keel_tcp_listen("[::1]:0", 16, 0); /* (where IPv6 is there) */
	char addr[64], named[64], addr6[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
	snprintf(named, sizeof(named), "localhost:%d", port);
	snprintf(addr6, sizeof(addr6), "[::1]:%d", lfd6 >= 0 ? keel_tcp_port(lfd6) : 1);
	struct xor_client xc = {.refuse = -EPROTO};
	keel_http_client_config cfg;
	keel_http_client_config_default(&cfg);
	cfg.pool_max = 1;
	cfg.transport_init = xor_client_init;
	cfg.transport_ud = &xc;
	keel_http_client *c;
	ASSERT_OK(keel_http_client_new(&c, loop, &cfg));
	int fd_before = fd_probe();
	unsigned conns_before = xor_conns;

	keel_http_client_request q = {.upstream = addr, .target = "/"};
	keel_promise *p1 = keel_http_client_request_send(c, &q);
	keel_promise *p2 = keel_http_client_request_send(c, &q); /* queued: pool_max 1 */
	ASSERT_EQ(test_await(loop, p1).err, -EPROTO);
	ASSERT_EQ(test_await(loop, p2).err, -EPROTO);
	ASSERT_EQ(xc.inits, 2);
	ASSERT(strcmp(xc.host, "127.0.0.1") == 0);
	q.upstream = named;
	ASSERT_EQ(test_await(loop, keel_http_client_request_send(c, &q)).err, -EPROTO);
	ASSERT(strcmp(xc.host, "localhost") == 0);
	if (lfd6 >= 0) {
		q.upstream = addr6;
		ASSERT_EQ(test_await(loop, keel_http_client_request_send(c, &q)).err, -EPROTO);
		ASSERT(strcmp(xc.host, "::1") == 0);
	}

	keel_http_client_stats st;
	keel_http_client_get_stats(c, &st);
	ASSERT_EQ(st.connects, lfd6 >= 0 ? 4 : 3);
	ASSERT_EQ(st.conns_open, 0);
	ASSERT_EQ(st.responses, 0);
	ASSERT_EQ(st.retries, 0);
	ASSERT_EQ(xor_conns, conns_before); /* no transport was set up */
	ASSERT_EQ(fd_probe(), fd_before);   /* every refused socket closed */
	keel_http_client_free(c);           /* nothing open: freed here (the sanitizer build checks) */
	for (int i = 0; i < 5; i++)
		keel_loop_run_once(loop, 0);
	keel_loop_stats ls;
	keel_loop_get_stats(loop, &ls);
	ASSERT_EQ(ls.ops_inflight, 0);
	close(lfd);
	if (lfd6 >= 0)
		close(lfd6);
	printf("client transport seam: a refusing transport_init fails the request with its error: ok\n");
}

/* ---- Lifetimes ------------------------------------------------------------ */

/*
 * A handler's chain that the server cancels (its client went) still runs its
 * stages, with -ECANCELED, and until the handler's promise has settled its
 * request is whole: its path, its response, its context.
 */
static int after_ran, after_err;

static keel_outcome after_cancel(keel_ctx *ctx, keel_outcome in, void *ud)
{
	keel_http_request *req = ud;
	after_ran++;
	after_err = in.err;
	ASSERT(keel_str_eq(req->path, "/wait"));
	ASSERT(ctx == keel_http_request_ctx(req));
	char *note = keel_ctx_alloc(ctx, 64); /* the arena still takes allocations */
	ASSERT(note != NULL);
	memset(note, 'n', 64);
	req->resp.status = 299; /* written, and discarded */
	return in;
}

static keel_promise *h_wait(keel_http_request *req, void *ud)
{
	(void)ud;
	keel_ctx *ctx = keel_http_request_ctx(req);
	keel_promise *p = keel_promise_bind_ctx(keel_sleep(req->loop, 30000), ctx);
	return keel_then(p, after_cancel, req);
}

static void test_cancelled_chain_keeps_its_request(void)
{
	keel_http_server *srv = server(1 << 20);
	ASSERT_OK(keel_http_route(srv, "GET", "/wait", 0, h_wait, NULL));
	keel_loop_stats st0, st;
	keel_loop_get_stats(loop, &st0);
	int c = adopt_tcp(srv);
	static const char req[] = "GET /wait HTTP/1.1\r\nHost: a\r\n\r\n";
	ASSERT_EQ(write(c, req, sizeof(req) - 1), (ssize_t)sizeof(req) - 1);
	for (int i = 0; i < 20; i++)
		keel_loop_run_once(loop, 1);
	keel_http_stats hs;
	keel_http_server_stats(srv, &hs);
	ASSERT_EQ(hs.inflight, 1);
	ASSERT_EQ(after_ran, 0);
	struct linger lg = {1, 0};
	setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(c); /* a reset: the server cancels the handler's promise */
	for (int i = 0; i < 100 && after_ran == 0; i++)
		keel_loop_run_once(loop, 5);
	ASSERT_EQ(after_ran, 1);
	ASSERT_EQ(after_err, -ECANCELED);
	for (int i = 0; i < 20; i++)
		keel_loop_run_once(loop, 1);
	keel_http_server_stats(srv, &hs);
	ASSERT_EQ(hs.conns_open, 0);
	keel_loop_get_stats(loop, &st);
	ASSERT_EQ(st.timers_live, st0.timers_live); /* the 30 s wait is gone */
	ASSERT_EQ(st.ctx_live, st0.ctx_live);
	stop_and_free(srv);
	printf("a cancelled handler's stages still run, on a whole request, then it goes: ok\n");
}

/* A second stop resolves with the first, and its shorter grace cuts the wait. */
static int stops_done;

static void count_stop(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)ud;
	ASSERT_EQ(o.err, 0);
	stops_done++;
}

static keel_promise *h_status42(keel_http_request *req, void *ud)
{
	(void)ud;
	return keel_http_respond(req, 42, "text/plain", "?", 1);
}

static void test_second_stop_and_bad_status(void)
{
	keel_http_server *srv = server(1 << 20);
	ASSERT_OK(keel_http_route(srv, "GET", "/wait", 0, h_wait, NULL));
	ASSERT_OK(keel_http_route(srv, "GET", "/42", 0, h_status42, NULL));
	/* A status that is not a final one is the handler's mistake: 500. */
	int c = adopt(srv);
	static const char req42[] = "GET /42 HTTP/1.1\r\nHost: a\r\n\r\n";
	ASSERT_EQ(write(c, req42, sizeof(req42) - 1), (ssize_t)sizeof(req42) - 1);
	char got[512] = {0};
	size_t n = 0;
	for (int i = 0; i < 200 && !strstr(got, "\r\n\r\n"); i++) {
		keel_loop_run_once(loop, 5);
		ssize_t r = recv(c, got + n, sizeof(got) - 1 - n, MSG_DONTWAIT);
		if (r > 0)
			n += (size_t)r;
	}
	ASSERT(strncmp(got, "HTTP/1.1 500 ", 13) == 0);
	close(c);
	/* Busy with a 30 s handler: the first stop would wait 10 s, the second 0. */
	int b = adopt(srv);
	static const char reqw[] = "GET /wait HTTP/1.1\r\nHost: a\r\n\r\n";
	ASSERT_EQ(write(b, reqw, sizeof(reqw) - 1), (ssize_t)sizeof(reqw) - 1);
	for (int i = 0; i < 20; i++)
		keel_loop_run_once(loop, 1);
	stops_done = 0;
	keel_promise_done(keel_http_server_stop(srv, 10000), count_stop, NULL);
	for (int i = 0; i < 20; i++)
		keel_loop_run_once(loop, 1);
	ASSERT_EQ(stops_done, 0);
	/* A longer grace (UINT64_MAX: no limit) leaves the first's 10 s as they are. */
	keel_promise_done(keel_http_server_stop(srv, UINT64_MAX), count_stop, NULL);
	for (int i = 0; i < 40; i++)
		keel_loop_run_once(loop, 5);
	ASSERT_EQ(stops_done, 0);
	keel_promise_done(keel_http_server_stop(srv, 0), count_stop, NULL);
	for (int i = 0; i < 200 && stops_done < 3; i++)
		keel_loop_run_once(loop, 5);
	ASSERT_EQ(stops_done, 3); /* all three, well before the first's 10 s */
	keel_promise_done(keel_http_server_stop(srv, 10000), count_stop, NULL);
	for (int i = 0; i < 5; i++)
		keel_loop_run_once(loop, 1);
	ASSERT_EQ(stops_done, 4); /* stopped already: at once */
	close(b);
	const char *said = free_logged(srv);
	if (*said)
		FAIL("keel_http_server_free after the stops said: %s", said);
	printf("a status under 200 is answered 500; a second stop resolves with the first, sooner: ok\n");
}

/*
 * An upload written to a file as a loop of flat stages (read a piece,
 * write it, read the next): 64 MiB, and what the loop holds -- promises,
 * contexts, resident memory -- does not grow with it.
 */
#define UP_LEN (64ull << 20)

struct up {
	keel_http_request *req;
	int fd;
	uint64_t off, want;
	uint32_t live_min, live_max;
	long rss_quarter, rss_max;
};

static struct up up_state;

static long rss_kib(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[128];
	long kib = -1;
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld", &kib) == 1)
			break;
	if (f)
		fclose(f);
	return kib;
}

static keel_promise *up_read(keel_ctx *ctx, keel_outcome in, void *ud);

static keel_promise *up_write(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	(void)in;
	struct up *u = ud;
	keel_str *piece = in.ptr;
	keel_loop_stats st;
	keel_loop_get_stats(u->req->loop, &st);
	if (!u->live_min || st.promises_live < u->live_min)
		u->live_min = st.promises_live;
	if (st.promises_live > u->live_max)
		u->live_max = st.promises_live;
	long rss = rss_kib();
	if (u->off >= UP_LEN / 4 && !u->rss_quarter)
		u->rss_quarter = rss;
	if (rss > u->rss_max)
		u->rss_max = rss;
	if (!piece || !piece->len)
		return keel_http_respondf(u->req, 200, "text/plain", "%llu\n", (unsigned long long)u->off);
	u->want = piece->len;
	keel_promise *w = keel_file_write(u->req->loop, u->fd, piece->ptr, piece->len, u->off);
	return keel_flat_map(w, up_read, u);
}

static keel_promise *up_read(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	struct up *u = ud;
	ASSERT_EQ((uint64_t)in.n, u->want); /* (a regular file takes the whole piece) */
	u->off += (uint64_t)in.n;
	return keel_flat_map(keel_http_body_read(u->req), up_write, u);
}

static keel_promise *h_up(keel_http_request *req, void *ud)
{
	(void)ud;
	struct up *u = &up_state;
	u->req = req;
	return keel_flat_map(keel_http_body_read(req), up_write, u);
}

struct up_client {
	int fd;
	char answer[256];
	atomic_int done;
};

static void *up_client_run(void *arg)
{
	struct up_client *uc = arg;
	char head[128];
	int n = snprintf(head, sizeof(head), "PUT /up HTTP/1.1\r\nHost: a\r\nContent-Length: %llu\r\n\r\n",
	                 (unsigned long long)UP_LEN);
	if (write(uc->fd, head, (size_t)n) != n)
		return NULL;
	for (uint64_t sent = 0; sent < UP_LEN;) {
		size_t k = UP_LEN - sent < BIG ? (size_t)(UP_LEN - sent) : BIG;
		ssize_t w = write(uc->fd, big, k); /* (BIG divides UP_LEN: the pattern lines up) */
		if (w <= 0)
			return NULL;
		sent += (uint64_t)w;
	}
	size_t got = 0;
	ssize_t r;
	while (got < sizeof(uc->answer) - 1 && !strstr(uc->answer, "67108864\n") &&
	       (r = read(uc->fd, uc->answer + got, sizeof(uc->answer) - 1 - got)) > 0)
		got += (size_t)r; /* (answer is zeroed: strstr sees what came) */
	atomic_store(&uc->done, 1);
	return NULL;
}

static void test_upload_loop_is_bounded(void)
{
	keel_http_config cfg;
	keel_http_config_default(&cfg);
	keel_http_server *srv;
	ASSERT_OK(keel_http_server_new(&srv, loop, &cfg));
	ASSERT_OK(keel_http_route(srv, "PUT", "/up", KEEL_HTTP_STREAM_BODY, h_up, NULL));
	up_state.fd = open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	ASSERT(up_state.fd >= 0);
	struct up_client uc = {adopt(srv), {0}, 0};
	pthread_t th;
	ASSERT_EQ(pthread_create(&th, NULL, up_client_run, &uc), 0);
	uint64_t until = keel_loop_now_ms(loop) + 120000; /* (a bound, not a speed: it takes seconds) */
	while (!atomic_load(&uc.done) && keel_loop_now_ms(loop) < until)
		keel_loop_run_once(loop, 5);
	ASSERT_EQ(pthread_join(th, NULL), 0);
	ASSERT_EQ(up_state.off, UP_LEN);
	ASSERT(strncmp(uc.answer, "HTTP/1.1 200", 12) == 0);
	/* The file is the body, byte for byte (a sample of 1 MiB blocks). */
	for (uint64_t at = 0; at < UP_LEN; at += 37 * (uint64_t)BIG) {
		static char back[BIG];
		ASSERT_EQ(pread(up_state.fd, back, BIG, (off_t)at), BIG);
		ASSERT(memcmp(back, big, BIG) == 0);
	}
	close(up_state.fd);
	close(uc.fd);
	ASSERT(up_state.live_max <= up_state.live_min + 8);
	ASSERT(up_state.rss_max - up_state.rss_quarter < 16 * 1024);
	printf("a 64 MiB upload written by a loop of flat stages: promises %u..%u, RSS +%ld KiB after the "
	       "first quarter: ok\n",
	       up_state.live_min, up_state.live_max, up_state.rss_max - up_state.rss_quarter);
	stop_and_free(srv);
}

int main(void)
{
	for (size_t i = 0; i < BIG; i++)
		big[i] = (char)('a' + (i * 7) % 26); /* a pattern: a byte out of place shows */
	loop = test_loop();
	test_stop_under_unstoppable_upload();
	test_head_errors();
	test_unstoppable_handler_keeps_its_request();
	test_one_backoff_at_a_time();
	test_halfclose_gets_what_it_is_owed();
	test_clock_fresh_before_the_wait();
	test_free_refused_while_open();
	test_free_right_after_stop_with_access_log();
	test_zombie_released_after_free();
	test_transport_seam();
	test_client_transport_seam();
	test_client_transport_stale();
	test_client_transport_refused();
	test_cancelled_chain_keeps_its_request();
	test_second_stop_and_bad_status();
	test_upload_loop_is_bounded();
	for (int i = 0; i < 20; i++)
		keel_loop_run_once(loop, 0);
	keel_loop_stats st;
	keel_loop_get_stats(loop, &st);
	ASSERT_EQ(st.bufs_in_use, 0);
	keel_loop_free(loop);
	printf("http in-process: ok\n");
	return 0;
}
