/*
 * echo_load: a closed-loop load generator for echo servers.
 *
 * Usage: echo_load --host 127.0.0.1 --port 7100 --connections 50 \
 *                  --size 128 --duration 5 [--warmup 1]
 *
 * Each connection keeps exactly one message in flight: it sends SIZE bytes,
 * waits until all SIZE have come back, checks them, and sends the next. Round
 * trips completed after the warmup are counted until the duration is up, and
 * one line goes to stdout:
 *
 *     msgs=<count> secs=<elapsed> msgs_per_sec=<x> errors=<n>
 *
 * Diagnostics go to stderr. Exit status is 0 when errors=0, 1 otherwise, and
 * 2 for bad arguments. Runtime is bounded by the connect timeout (5 s) plus
 * warmup plus duration.
 *
 * On a small box the client is usually the bottleneck, so it spends as few
 * syscalls per round trip as correctness allows: one thread; every socket
 * registered once, edge-triggered, so no epoll_ctl in the steady state; 512
 * events per epoll_wait and one clock read per batch; one recv and one send
 * per message. The recv asks for one byte more than the server still owes,
 * so a short count proves the socket was drained (the next arrival raises a
 * new edge, no EAGAIN probe needed) and an over-long echo is caught as an
 * error rather than miscounted. Message k is the window starting at k % 251
 * of one fixed byte pattern, so consecutive messages differ and a stale or
 * shifted echo fails the check. Nothing is allocated after setup.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum {
	EVENTS_MAX = 512,
	CONNECTIONS_MAX = 60000,
	MSG_BYTES_MAX = 1 << 20,
	PATTERN_SHIFTS = 251, /* prime, so shifts cycle through every window */
	CONNECT_ATTEMPTS_MAX = 5,
};

#define NS_PER_SEC 1000000000LL
#define CONNECT_TIMEOUT_NS (5 * NS_PER_SEC)
#define RETRY_BACKOFF_NS (100 * 1000000LL) /* times the attempt number */

enum conn_state { CONN_CONNECTING, CONN_RETRY, CONN_RUNNING, CONN_DEAD };

struct conn {
	int fd;
	uint8_t state;    /* enum conn_state */
	uint8_t attempts; /* connects started so far */
	uint32_t shift;   /* pattern window of the message in flight */
	uint32_t sent;    /* bytes of it written */
	uint32_t recvd;   /* bytes of it echoed back and checked */
	int64_t retry_at_ns;
};

struct load {
	/* Options. */
	struct sockaddr_in addr;
	uint32_t conn_count;
	uint32_t msg_bytes;
	double duration_s;
	double warmup_s;

	/* State. */
	struct conn *conns;
	uint8_t *pattern; /* msg_bytes + PATTERN_SHIFTS bytes */
	uint8_t *scratch; /* msg_bytes + 1 bytes: one more than any message */
	int ep;
	bool counting;
	uint32_t unsettled; /* connecting or waiting to retry */
	uint32_t running;
	uint64_t msgs;
	uint64_t errors;
	int64_t next_retry_ns; /* earliest retry_at_ns, INT64_MAX if none */
	int first_err;         /* positive errno, or EBADMSG for a content mismatch */
};

static volatile sig_atomic_t stopping;

static void on_signal(int sig)
{
	(void)sig;
	stopping = 1;
}

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * NS_PER_SEC + ts.tv_nsec;
}

static void load_error(struct load *ld, int err)
{
	if (ld->errors++ == 0)
		ld->first_err = err;
}

/* Takes the connection out of play for good, counting one error. */
static void conn_kill(struct load *ld, struct conn *c, int err)
{
	if (c->state == CONN_RUNNING)
		ld->running--;
	else if (c->state != CONN_DEAD)
		ld->unsettled--;
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->state = CONN_DEAD;
	load_error(ld, err);
}

static void conn_connect_failed(struct load *ld, struct conn *c, int err, int64_t now)
{
	if (c->attempts >= CONNECT_ATTEMPTS_MAX) {
		conn_kill(ld, c, err);
		return;
	}
	close(c->fd);
	c->fd = -1;
	c->state = CONN_RETRY;
	c->retry_at_ns = now + RETRY_BACKOFF_NS * c->attempts;
	if (c->retry_at_ns < ld->next_retry_ns)
		ld->next_retry_ns = c->retry_at_ns;
}

/* Starts a nonblocking connect; failures are routed to the retry logic. */
static void conn_connect(struct load *ld, struct conn *c, int64_t now)
{
	struct epoll_event ev;
	int one = 1;
	int fd;

	c->attempts++;
	c->state = CONN_CONNECTING;
	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		c->fd = -1;
		conn_kill(ld, c, errno);
		return;
	}
	c->fd = fd;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	/*
	 * Register before connecting: the completion is the first EPOLLOUT
	 * edge, and connecting first could let it fire before the socket is
	 * in the set (ADD polls once, so it would still be seen, but this
	 * order needs no such argument).
	 */
	ev.events = EPOLLIN | EPOLLOUT | EPOLLET;
	ev.data.u64 = (uint64_t)(c - ld->conns);
	if (epoll_ctl(ld->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
		conn_kill(ld, c, errno);
		return;
	}
	if (connect(fd, (const struct sockaddr *)&ld->addr, sizeof ld->addr) < 0 && errno != EINPROGRESS)
		conn_connect_failed(ld, c, errno, now);
}

/* Writes what is left of the message in flight. Returns 0 or -errno. */
static int conn_send(struct load *ld, struct conn *c)
{
	ssize_t n;

	while (c->sent < ld->msg_bytes) {
		n = send(c->fd, ld->pattern + c->shift + c->sent, ld->msg_bytes - c->sent, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EAGAIN)
				return 0; /* wait for the EPOLLOUT edge */
			if (errno == EINTR)
				continue;
			return -errno;
		}
		c->sent += (uint32_t)n;
	}
	return 0;
}

static int conn_next_msg(struct load *ld, struct conn *c)
{
	c->shift = (c->shift + 1) % PATTERN_SHIFTS;
	c->sent = 0;
	c->recvd = 0;
	return conn_send(ld, c);
}

/*
 * Reads once (see the file comment for why once is enough) and checks the
 * bytes. Completes the message and sends the next when it is all back.
 * Returns 0, -errno, -EBADMSG for wrong content or -ESHUTDOWN for EOF.
 */
static int conn_recv(struct load *ld, struct conn *c)
{
	/* Only bytes already sent can come back; large messages overlap. */
	uint32_t owed = c->sent - c->recvd;
	ssize_t n;

	do
		n = recv(c->fd, ld->scratch, owed + 1, 0);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno == EAGAIN ? 0 : -errno;
	if (n == 0)
		return -ESHUTDOWN;
	if ((uint32_t)n > owed || memcmp(ld->scratch, ld->pattern + c->shift + c->recvd, (size_t)n))
		return -EBADMSG;
	c->recvd += (uint32_t)n;
	if (c->recvd < ld->msg_bytes)
		return 0;
	if (ld->counting)
		ld->msgs++;
	return conn_next_msg(ld, c);
}

static void conn_event(struct load *ld, struct conn *c, uint32_t events, int64_t now)
{
	socklen_t len = sizeof(int);
	int err = 0;

	switch (c->state) {
	case CONN_CONNECTING:
		if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
			err = errno;
		if (err) {
			conn_connect_failed(ld, c, err, now);
			return;
		}
		if (!(events & EPOLLOUT))
			return;
		c->state = CONN_RUNNING;
		ld->unsettled--;
		ld->running++;
		c->shift = 0;
		c->sent = 0;
		c->recvd = 0;
		err = conn_send(ld, c);
		break;
	case CONN_RUNNING:
		/*
		 * A partial send is the only reason to act on EPOLLOUT. The
		 * echo of a large message starts while it is still being
		 * sent, so reading must not wait for the send to finish.
		 */
		if (c->sent < ld->msg_bytes)
			err = conn_send(ld, c);
		if (!err && (events & EPOLLIN))
			err = conn_recv(ld, c);
		if (!err && (events & (EPOLLERR | EPOLLHUP)))
			err = -ECONNRESET;
		break;
	default: return; /* a stale event for a socket already closed */
	}
	if (err)
		conn_kill(ld, c, err < 0 ? -err : err);
}

/*
 * Restarts connections whose backoff has expired and recomputes the next due
 * time. O(connections), but it only runs while connections are failing.
 */
static void retry_due(struct load *ld, int64_t now)
{
	uint32_t i;

	ld->next_retry_ns = INT64_MAX;
	for (i = 0; i < ld->conn_count; i++) {
		struct conn *c = &ld->conns[i];

		if (c->state != CONN_RETRY)
			continue;
		if (c->retry_at_ns <= now)
			conn_connect(ld, c, now); /* may reschedule itself */
		else if (c->retry_at_ns < ld->next_retry_ns)
			ld->next_retry_ns = c->retry_at_ns;
	}
}

static int timeout_ms(int64_t deadline, int64_t now)
{
	int64_t ms;

	if (deadline <= now)
		return 0;
	ms = (deadline - now + 999999) / 1000000;
	return ms > 1000 ? 1000 : (int)ms;
}

static void usage(const char *argv0)
{
	fprintf(stderr,
	        "usage: %s [--host A.B.C.D] --port P --connections N "
	        "--size BYTES --duration SECONDS [--warmup SECONDS]\n",
	        argv0);
	exit(2);
}

static double parse_num(const char *argv0, const char *s, double lo, double hi)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || v < lo || v > hi) {
		fprintf(stderr, "echo_load: bad number '%s' (want %g..%g)\n", s, lo, hi);
		usage(argv0);
	}
	return v;
}

static void parse_args(struct load *ld, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"host", required_argument, NULL, 'h'},
	    {"port", required_argument, NULL, 'p'},
	    {"connections", required_argument, NULL, 'c'},
	    {"size", required_argument, NULL, 's'},
	    {"duration", required_argument, NULL, 'd'},
	    {"warmup", required_argument, NULL, 'w'},
	    {NULL, 0, NULL, 0},
	};
	const char *host = "127.0.0.1";
	double port = 0;
	int opt;

	ld->warmup_s = 1;
	while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (opt) {
		case 'h': host = optarg; break;
		case 'p': port = parse_num(argv[0], optarg, 1, 65535); break;
		case 'c': ld->conn_count = (uint32_t)parse_num(argv[0], optarg, 1, CONNECTIONS_MAX); break;
		case 's': ld->msg_bytes = (uint32_t)parse_num(argv[0], optarg, 1, MSG_BYTES_MAX); break;
		case 'd': ld->duration_s = parse_num(argv[0], optarg, 0.001, 3600); break;
		case 'w': ld->warmup_s = parse_num(argv[0], optarg, 0, 600); break;
		default: usage(argv[0]);
		}
	}
	if (optind != argc || port == 0 || ld->conn_count == 0 || ld->msg_bytes == 0 || ld->duration_s == 0)
		usage(argv[0]);
	memset(&ld->addr, 0, sizeof ld->addr);
	ld->addr.sin_family = AF_INET;
	ld->addr.sin_port = htons((uint16_t)port);
	if (inet_pton(AF_INET, host, &ld->addr.sin_addr) != 1) {
		fprintf(stderr, "echo_load: bad IPv4 address '%s'\n", host);
		usage(argv[0]);
	}
}

/* Lifts the soft fd limit toward what the connections need, if allowed. */
static void raise_fd_limit(uint32_t conn_count)
{
	struct rlimit rl;
	rlim_t want = (rlim_t)conn_count + 64;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= want)
		return;
	rl.rlim_cur = want < rl.rlim_max ? want : rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur < want)
		fprintf(stderr, "echo_load: fd limit %llu is below %llu\n", (unsigned long long)rl.rlim_cur,
		        (unsigned long long)want);
}

int main(int argc, char **argv)
{
	static struct epoll_event evs[EVENTS_MAX];
	struct load ld = {0};
	struct sigaction sa_stop;
	int64_t now, connect_deadline, warm_end = 0, end = 0;
	bool settled = false;
	double secs;
	uint32_t i;
	size_t pattern_bytes;
	int n, k;

	parse_args(&ld, argc, argv);
	raise_fd_limit(ld.conn_count);

	memset(&sa_stop, 0, sizeof sa_stop);
	sa_stop.sa_handler = on_signal;
	sigaction(SIGINT, &sa_stop, NULL);
	sigaction(SIGTERM, &sa_stop, NULL);

	pattern_bytes = (size_t)ld.msg_bytes + PATTERN_SHIFTS;
	ld.pattern = malloc(pattern_bytes);
	ld.scratch = malloc((size_t)ld.msg_bytes + 1);
	ld.conns = calloc(ld.conn_count, sizeof *ld.conns);
	ld.ep = epoll_create1(EPOLL_CLOEXEC);
	if (!ld.pattern || !ld.scratch || !ld.conns || ld.ep < 0) {
		perror("echo_load: setup");
		return 1;
	}
	/* Multiplier 7 is odd, so any 256-byte run holds every byte value. */
	for (size_t j = 0; j < pattern_bytes; j++)
		ld.pattern[j] = (uint8_t)(j * 7 + (j >> 8));

	now = now_ns();
	connect_deadline = now + CONNECT_TIMEOUT_NS;
	ld.unsettled = ld.conn_count;
	ld.next_retry_ns = INT64_MAX;
	for (i = 0; i < ld.conn_count; i++) {
		ld.conns[i].fd = -1;
		conn_connect(&ld, &ld.conns[i], now);
	}

	while (!stopping) {
		int64_t deadline;

		if (!settled) {
			if (ld.next_retry_ns <= now)
				retry_due(&ld, now);
			if (ld.unsettled == 0 || now >= connect_deadline) {
				/* Whatever has not connected by now never will. */
				for (i = 0; i < ld.conn_count; i++)
					if (ld.conns[i].state == CONN_CONNECTING ||
					    ld.conns[i].state == CONN_RETRY)
						conn_kill(&ld, &ld.conns[i], ETIMEDOUT);
				settled = true;
				warm_end = now + (int64_t)(ld.warmup_s * NS_PER_SEC);
				end = warm_end + (int64_t)(ld.duration_s * NS_PER_SEC);
			}
		}
		if (settled && (now >= end || ld.running == 0))
			break;
		if (!settled)
			deadline = ld.next_retry_ns < connect_deadline ? ld.next_retry_ns : connect_deadline;
		else
			deadline = ld.counting ? end : warm_end;

		n = epoll_wait(ld.ep, evs, EVENTS_MAX, timeout_ms(deadline, now));
		if (n < 0 && errno != EINTR) {
			perror("echo_load: epoll_wait");
			return 1;
		}
		now = now_ns();
		/* Fold the clock into counting before handling this batch. */
		if (settled)
			ld.counting = now >= warm_end && now < end;
		for (k = 0; k < n; k++)
			conn_event(&ld, &ld.conns[evs[k].data.u64], evs[k].events, now);
	}

	now = now_ns();
	if (!settled || now <= warm_end)
		secs = 0;
	else
		secs = (double)((now < end ? now : end) - warm_end) / NS_PER_SEC;
	for (i = 0; i < ld.conn_count; i++)
		if (ld.conns[i].fd >= 0)
			close(ld.conns[i].fd);

	if (ld.errors)
		fprintf(stderr, "echo_load: %" PRIu64 " errors, first: %s\n", ld.errors,
		        ld.first_err == EBADMSG ? "echo content mismatch" : strerror(ld.first_err));
	if (ld.running < ld.conn_count && settled)
		fprintf(stderr, "echo_load: %u of %u connections still running\n", ld.running, ld.conn_count);
	printf("msgs=%" PRIu64 " secs=%.3f msgs_per_sec=%.1f errors=%" PRIu64 "\n", ld.msgs, secs,
	       secs > 0 ? (double)ld.msgs / secs : 0.0, ld.errors);
	return ld.errors ? 1 : 0;
}
