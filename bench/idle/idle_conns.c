/*
 * idle_conns: open many keep-alive HTTP/1.1 connections, make one request on
 * each, then hold them all open and idle, so the server's memory per idle
 * connection can be measured from outside.
 *
 * Usage: idle_conns --port 7300 --connections 15000 [--host 127.0.0.1]
 *                   [--path /plaintext] [--window 64] [--timeout 60]
 *                   [--hold 300]
 *        idle_conns --port 7300 --warmup 5000 [--window 64] ...
 *
 * Hold mode (--connections N): at most WINDOW connections are connecting or
 * waiting for their response at any time (so a listen backlog never
 * overflows and the server sees the same concurrency as in the warm-up);
 * each sends `GET PATH HTTP/1.1\r\nHost: x\r\n\r\n` once and reads the
 * whole response (status 200, Content-Length or chunked framing checked).
 * When every connection has finished, one line goes to stdout:
 *
 *     ready ok=<n> failed=<n> secs=<setup time>
 *
 * and the connections stay open, idle, until SIGTERM or SIGINT (or --hold
 * seconds, a safety net: exit 3). SIGUSR1 prints `status open=<n>
 * closed_by_server=<n>` (a connection the server closed while idle is
 * noticed at once, so the count proves the rest were still held). At the end
 * `done open=<n> closed_by_server=<n>` is printed and every socket is closed
 * with a reset (SO_LINGER 0), which leaves no TIME_WAIT behind to exhaust
 * ephemeral ports across runs.
 *
 * Warm-up mode (--warmup R): WINDOW connections each keep one request in
 * flight until R responses have arrived, then all are reset and
 * `warm responses=<n> errors=<n> secs=<s>` is printed.
 *
 * Exit status: 0 when nothing failed, 1 when some connection failed (the
 * counts say how many), 2 for bad arguments or setup errors, 3 when --hold
 * ran out. Every phase is bounded: setup by --timeout, holding by --hold.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum {
	EVENTS_MAX = 512,
	CONNECTIONS_MAX = 60000,
	RESP_BYTES_MAX = 8192, /* a response head and body must fit */
};

enum conn_state { C_IDLE_SLOT = 0, C_CONNECTING, C_WAITING, C_HELD, C_CLOSED };

struct conn {
	int fd;
	uint8_t state;
	char *buf; /* the response being read; only while waiting */
	uint32_t len;
};

static volatile sig_atomic_t got_stop, got_status;

static void on_signal(int sig)
{
	if (sig == SIGUSR1)
		got_status = 1;
	else
		got_stop = 1;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void usage(FILE *f)
{
	fputs("usage: idle_conns --port P (--connections N | --warmup R) [--host 127.0.0.1]\n"
	      "                  [--path /plaintext] [--window 64] [--timeout 60] [--hold 300]\n",
	      f);
}

static void close_reset(int fd)
{
	struct linger l = {1, 0};
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
	close(fd);
}

/* Take k out of the epoll set and reset it. */
static void conn_drop(int ep, struct conn *k)
{
	epoll_ctl(ep, EPOLL_CTL_DEL, k->fd, NULL);
	close_reset(k->fd);
	k->fd = -1;
	k->state = C_CLOSED;
}

/*
 * 1: a complete 200 response is in buf[0..len); 0: need more; -1: bad
 * (not 200, unframed, or bytes beyond the response).
 */
static int response_complete(const char *buf, uint32_t len)
{
	const char *end = memmem(buf, len, "\r\n\r\n", 4);
	if (!end)
		return len >= RESP_BYTES_MAX - 1 ? -1 : 0;
	size_t head = (size_t)(end - buf) + 4;
	if (len < 12 || memcmp(buf, "HTTP/1.", 7) != 0 || memcmp(buf + 8, " 200", 4) != 0)
		return -1;
	long clen = -1;
	bool chunked = false;
	for (const char *p = memchr(buf, '\n', head); p && p + 1 < buf + head;
	     p = memchr(p + 1, '\n', (size_t)(buf + head - p - 1))) {
		const char *line = p + 1;
		if (strncasecmp(line, "content-length:", 15) == 0)
			clen = strtol(line + 15, NULL, 10);
		else if (strncasecmp(line, "transfer-encoding:", 18) == 0 &&
		         memmem(line, (size_t)(buf + head - line), "chunked", 7))
			chunked = true;
	}
	if (clen >= 0) {
		if (len < head + (size_t)clen)
			return 0;
		return len == head + (size_t)clen ? 1 : -1;
	}
	if (chunked) {
		if (len >= head + 5 && memcmp(buf + len - 5, "0\r\n\r\n", 5) == 0)
			return 1;
		return 0;
	}
	return -1;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"host", required_argument, NULL, 'a'},    {"port", required_argument, NULL, 'p'},
	    {"path", required_argument, NULL, 'P'},    {"connections", required_argument, NULL, 'n'},
	    {"warmup", required_argument, NULL, 'w'},  {"window", required_argument, NULL, 'W'},
	    {"timeout", required_argument, NULL, 't'}, {"hold", required_argument, NULL, 'H'},
	    {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0},
	};
	const char *host = "127.0.0.1", *path = "/plaintext";
	long port = 0, nconns = 0, warmup = 0, window = 64;
	double timeout_s = 60, hold_s = 300;
	int c;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'a': host = optarg; break;
		case 'p': port = strtol(optarg, NULL, 10); break;
		case 'P': path = optarg; break;
		case 'n': nconns = strtol(optarg, NULL, 10); break;
		case 'w': warmup = strtol(optarg, NULL, 10); break;
		case 'W': window = strtol(optarg, NULL, 10); break;
		case 't': timeout_s = strtod(optarg, NULL); break;
		case 'H': hold_s = strtod(optarg, NULL); break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	bool warm_mode = warmup > 0;
	if (port < 1 || port > 65535 || (nconns > 0) == warm_mode || nconns > CONNECTIONS_MAX || warmup < 0 ||
	    window < 1 || window > 4096 || timeout_s <= 0 || hold_s <= 0 || optind != argc) {
		usage(stderr);
		return 2;
	}
	if (warm_mode)
		nconns = window;
	if (window > nconns)
		window = nconns;

	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
		fprintf(stderr, "idle_conns: bad IPv4 address %s\n", host);
		return 2;
	}
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
	    rl.rlim_cur < (rlim_t)nconns + 16) {
		fprintf(stderr, "idle_conns: fd limit %llu is too low for %ld connections\n",
		        (unsigned long long)rl.rlim_cur, nconns);
		return 2;
	}
	char req[512];
	int reqlen = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path);
	if (reqlen <= 0 || (size_t)reqlen >= sizeof(req)) {
		fprintf(stderr, "idle_conns: path too long\n");
		return 2;
	}

	/* Signals are delivered only inside epoll_pwait, so none is lost between checks. */
	sigset_t block, waitmask;
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGUSR1);
	sigprocmask(SIG_BLOCK, &block, &waitmask);
	sigdelset(&waitmask, SIGTERM);
	sigdelset(&waitmask, SIGINT);
	sigdelset(&waitmask, SIGUSR1);
	struct sigaction act = {.sa_handler = on_signal};
	sigemptyset(&act.sa_mask);
	sigaction(SIGTERM, &act, NULL);
	sigaction(SIGINT, &act, NULL);
	sigaction(SIGUSR1, &act, NULL);
	signal(SIGPIPE, SIG_IGN);

	struct conn *conns = calloc((size_t)nconns, sizeof(*conns));
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (!conns || ep < 0) {
		fprintf(stderr, "idle_conns: setup: %s\n", strerror(errno));
		return 2;
	}
	long next = 0, inflight = 0, ok = 0, failed = 0, responses = 0, sent = 0, closed_by_server = 0,
	     open = 0;
	double t0 = now_s(), deadline = t0 + timeout_s;

	/* Start a connection: nonblocking connect, request written on EPOLLOUT. */
#define FAIL(i)                                                          \
	do {                                                             \
		struct conn *f_ = &conns[i];                             \
		if (f_->fd >= 0)                                         \
			close_reset(f_->fd);                             \
		free(f_->buf);                                           \
		f_->buf = NULL;                                          \
		if (f_->state == C_CONNECTING || f_->state == C_WAITING) \
			inflight--;                                      \
		if (f_->state != C_IDLE_SLOT)                            \
			open--;                                          \
		f_->state = C_CLOSED;                                    \
		f_->fd = -1;                                             \
		failed++;                                                \
	} while (0)

	bool setup_done = false;
	struct epoll_event evs[EVENTS_MAX];
	while (!setup_done) {
		while (inflight < window && next < nconns) {
			long i = next++;
			struct conn *k = &conns[i];
			k->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
			if (k->fd < 0) {
				fprintf(stderr, "idle_conns: socket: %s\n", strerror(errno));
				k->state = C_IDLE_SLOT;
				FAIL(i);
				continue;
			}
			k->state = C_CONNECTING;
			inflight++;
			open++;
			if (connect(k->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno != EINPROGRESS) {
				fprintf(stderr, "idle_conns: connect: %s\n", strerror(errno));
				FAIL(i);
				continue;
			}
			struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = (uint64_t)i};
			if (epoll_ctl(ep, EPOLL_CTL_ADD, k->fd, &ev) < 0) {
				FAIL(i);
				continue;
			}
		}
		if (warm_mode ? (responses >= warmup && inflight == 0) || (inflight == 0 && next >= nconns)
		              : (next >= nconns && inflight == 0)) {
			setup_done = true;
			break;
		}
		double left = deadline - now_s();
		if (left <= 0 || got_stop) {
			fprintf(stderr, "idle_conns: %s with %ld connections unfinished\n",
			        got_stop ? "stopped" : "setup timed out", inflight + (nconns - next));
			for (long i = 0; i < nconns; i++)
				if (conns[i].state == C_CONNECTING || conns[i].state == C_WAITING)
					FAIL(i);
			failed += nconns - next;
			next = nconns;
			break;
		}
		int n =
		    epoll_pwait(ep, evs, EVENTS_MAX, left > 0.2 ? 200 : (int)(left * 1000) + 1, &waitmask);
		if (n < 0 && errno != EINTR) {
			fprintf(stderr, "idle_conns: epoll_wait: %s\n", strerror(errno));
			return 2;
		}
		for (int e = 0; e < n; e++) {
			long i = (long)evs[e].data.u64;
			struct conn *k = &conns[i];
			if (k->state == C_CONNECTING) {
				int err = 0;
				socklen_t el = sizeof(err);
				getsockopt(k->fd, SOL_SOCKET, SO_ERROR, &err, &el);
				if (err) {
					fprintf(stderr, "idle_conns: connect: %s\n", strerror(err));
					FAIL(i);
					continue;
				}
				k->state = C_WAITING;
			send_request:
				if (write(k->fd, req, (size_t)reqlen) != reqlen) {
					fprintf(stderr, "idle_conns: write: %s\n", strerror(errno));
					FAIL(i);
					continue;
				}
				sent++;
				if (!k->buf && !(k->buf = malloc(RESP_BYTES_MAX))) {
					FAIL(i);
					continue;
				}
				k->len = 0;
				struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP,
				                         .data.u64 = (uint64_t)i};
				epoll_ctl(ep, EPOLL_CTL_MOD, k->fd, &ev);
			} else if (k->state == C_WAITING) {
				ssize_t r = read(k->fd, k->buf + k->len, RESP_BYTES_MAX - 1 - k->len);
				if (r < 0 && (errno == EAGAIN || errno == EINTR))
					continue;
				if (r <= 0) {
					fprintf(stderr,
					        "idle_conns: connection %ld: %s before the whole response\n",
					        i, r == 0 ? "EOF" : strerror(errno));
					FAIL(i);
					continue;
				}
				k->len += (uint32_t)r;
				int rc = response_complete(k->buf, k->len);
				if (rc == 0)
					continue;
				if (rc < 0) {
					k->buf[k->len] = '\0';
					fprintf(stderr, "idle_conns: connection %ld: bad response: %.80s\n",
					        i, k->buf);
					FAIL(i);
					continue;
				}
				responses++;
				if (warm_mode && sent < warmup)
					goto send_request;
				free(k->buf);
				k->buf = NULL;
				k->state = C_HELD;
				inflight--;
				ok++;
				if (warm_mode) {
					conn_drop(ep, k);
					open--;
				}
			} else if (k->state == C_HELD) {
				/* Input or EOF on an idle connection: the server gave up on it. */
				conn_drop(ep, k);
				open--;
				closed_by_server++;
			}
		}
	}
	double secs = now_s() - t0;
	if (warm_mode) {
		printf("warm responses=%ld errors=%ld secs=%.2f\n", responses, failed, secs);
		return failed ? 1 : 0;
	}
	printf("ready ok=%ld failed=%ld secs=%.2f\n", ok, failed, secs);
	fflush(stdout);

	/* Hold: wait for a stop, noticing any connection the server closes. */
	int rc = 0;
	double hold_end = now_s() + hold_s;
	while (!got_stop) {
		if (got_status) {
			got_status = 0;
			printf("status open=%ld closed_by_server=%ld\n", open, closed_by_server);
			fflush(stdout);
		}
		double left = hold_end - now_s();
		if (left <= 0) {
			fprintf(stderr, "idle_conns: --hold %.0f s ran out\n", hold_s);
			rc = 3;
			break;
		}
		int n = epoll_pwait(ep, evs, EVENTS_MAX, left > 1 ? 1000 : (int)(left * 1000) + 1, &waitmask);
		for (int e = 0; e < n; e++) {
			struct conn *k = &conns[evs[e].data.u64];
			if (k->state != C_HELD)
				continue;
			conn_drop(ep, k);
			open--;
			closed_by_server++;
		}
	}
	printf("done open=%ld closed_by_server=%ld\n", open, closed_by_server);
	fflush(stdout);
	for (long i = 0; i < nconns; i++)
		if (conns[i].state == C_HELD)
			close_reset(conns[i].fd);
	return rc ? rc : failed ? 1 : 0;
}
