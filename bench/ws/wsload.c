/*
 * wsload: a WebSocket load client for bench/ws (epoll, one thread).
 *
 *   wsload echo   PORT CONNS SIZE SECONDS   closed loop on /echo: each connection keeps one
 *                                           message of SIZE bytes in flight; prints
 *                                           msgs= secs= rate= p50_us= p99_us= errors=
 *   wsload idle   PORT CONNS SECONDS        opens CONNS connections to /echo, each echoes one
 *                                           message, prints "open=N", holds them SECONDS
 *   wsload fanout PORT MEMBERS ROUNDS       MEMBERS join /ws, one more sends ROUNDS lines;
 *                                           for each, the time until the last member has it:
 *                                           prints rounds= p50_us= max_us=
 *
 * 127.0.0.1 only. Frames are masked as a client's must be; what the server
 * sends is parsed just enough to find each message's end.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct conn {
	int fd;
	char *in;
	size_t in_len, in_cap;
	uint64_t sent_ns;
	unsigned got;   /* messages received */
	int last_round; /* (fanout) the last round seen */
	int open;
};

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void send_all(int fd, const void *p, size_t n)
{
	const char *c = p;
	while (n) {
		ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
		if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
			struct timespec t = {0, 100000};
			nanosleep(&t, NULL);
			continue;
		}
		if (w <= 0)
			die("send");
		c += w;
		n -= (size_t)w;
	}
}

/* A masked client frame (mask 0: the payload as it is, XORed with 0). */
static size_t frame(char *out, int op, const char *p, size_t n)
{
	size_t h = 0;
	out[h++] = (char)(0x80 | op);
	if (n < 126) {
		out[h++] = (char)(0x80 | n);
	} else if (n < 65536) {
		out[h++] = (char)(0x80 | 126);
		out[h++] = (char)(n >> 8);
		out[h++] = (char)n;
	} else {
		out[h++] = (char)(0x80 | 127);
		for (int i = 7; i >= 0; i--)
			out[h++] = (char)(n >> (8 * i));
	}
	memset(out + h, 0, 4);
	h += 4;
	memcpy(out + h, p, n);
	return h + n;
}

static int dial(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		die("socket");
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	a.sin_addr.s_addr = htonl(0x7f000001);
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
		die("connect");
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

/* Blocking handshake; the socket is left non-blocking. */
static void handshake(struct conn *c, int port, const char *path)
{
	c->fd = dial(port);
	char req[256];
	int n = snprintf(req, sizeof(req),
	                 "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
	                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
	                 path);
	send_all(c->fd, req, (size_t)n);
	char buf[1024];
	size_t got = 0;
	while (got < sizeof(buf) - 1) {
		ssize_t r = recv(c->fd, buf + got, sizeof(buf) - 1 - got, 0);
		if (r <= 0)
			die("handshake");
		got += (size_t)r;
		buf[got] = 0;
		char *end = strstr(buf, "\r\n\r\n");
		if (end) {
			if (strncmp(buf, "HTTP/1.1 101", 12) != 0) {
				fprintf(stderr, "wsload: not a 101: %.40s\n", buf);
				exit(1);
			}
			size_t rest = got - (size_t)(end + 4 - buf);
			c->in_cap = 1 << 16;
			c->in = malloc(c->in_cap);
			memcpy(c->in, end + 4, rest);
			c->in_len = rest;
			break;
		}
	}
	if (fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK) < 0)
		die("fcntl");
	c->open = 1;
}

/* Read what is there; returns the number of whole messages now complete, calling fn for each. */
static int pump_in(struct conn *c, void (*fn)(struct conn *, const char *, size_t, void *), void *ud)
{
	for (;;) {
		if (c->in_cap - c->in_len < 65536) {
			c->in_cap *= 2;
			c->in = realloc(c->in, c->in_cap);
		}
		ssize_t r = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
		if (r < 0 && (errno == EAGAIN || errno == EINTR))
			break;
		if (r <= 0) {
			c->open = 0;
			return -1;
		}
		c->in_len += (size_t)r;
	}
	int msgs = 0;
	size_t off = 0;
	for (;;) {
		unsigned char *p = (unsigned char *)c->in + off;
		size_t n = c->in_len - off;
		if (n < 2)
			break;
		size_t len = p[1] & 0x7f, h = 2;
		if (len == 126) {
			if (n < 4)
				break;
			len = (size_t)p[2] << 8 | p[3];
			h = 4;
		} else if (len == 127) {
			if (n < 10)
				break;
			len = 0;
			for (int i = 0; i < 8; i++)
				len = len << 8 | p[2 + i];
			h = 10;
		}
		if (n < h + len)
			break;
		int op = p[0] & 0x0f;
		if (op == 1 || op == 2 || op == 0) {
			if (fn)
				fn(c, (const char *)p + h, len, ud);
			if (p[0] & 0x80)
				msgs++;
		}
		off += h + len;
	}
	memmove(c->in, c->in + off, c->in_len - off);
	c->in_len -= off;
	return msgs;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static void percentiles(uint64_t *v, size_t n, uint64_t *p50, uint64_t *p99, uint64_t *max)
{
	qsort(v, n, sizeof(*v), cmp_u64);
	*p50 = n ? v[n / 2] : 0;
	*p99 = n ? v[n * 99 / 100] : 0;
	*max = n ? v[n - 1] : 0;
}

static int echo(int port, int nconns, size_t size, double secs)
{
	struct conn *cs = calloc((size_t)nconns, sizeof(*cs));
	char *payload = malloc(size + 1), *out = malloc(size + 16);
	memset(payload, 'x', size);
	size_t flen = frame(out, 2, payload, size);
	int ep = epoll_create1(0);
	for (int i = 0; i < nconns; i++) {
		handshake(&cs[i], port, "/echo");
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cs[i]};
		epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
	}
	size_t cap = 1 << 22, nlat = 0;
	uint64_t *lat = malloc(cap * sizeof(*lat));
	uint64_t t0 = now_ns(), end = t0 + (uint64_t)(secs * 1e9), msgs = 0;
	for (int i = 0; i < nconns; i++) {
		cs[i].sent_ns = now_ns();
		send_all(cs[i].fd, out, flen);
	}
	int errors = 0;
	struct epoll_event evs[256];
	while (now_ns() < end) {
		int n = epoll_wait(ep, evs, 256, 100);
		for (int i = 0; i < n; i++) {
			struct conn *c = evs[i].data.ptr;
			int m = pump_in(c, NULL, NULL);
			if (m < 0) {
				errors++;
				epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
				continue;
			}
			for (int k = 0; k < m; k++) {
				uint64_t t = now_ns();
				if (nlat < cap)
					lat[nlat++] = t - c->sent_ns;
				msgs++;
				if (t < end) {
					c->sent_ns = t;
					send_all(c->fd, out, flen);
				}
			}
		}
	}
	double took = (double)(now_ns() - t0) / 1e9;
	uint64_t p50, p99, max;
	percentiles(lat, nlat, &p50, &p99, &max);
	printf("msgs=%llu secs=%.3f rate=%.0f p50_us=%.1f p99_us=%.1f errors=%d\n", (unsigned long long)msgs,
	       took, (double)msgs / took, (double)p50 / 1e3, (double)p99 / 1e3, errors);
	for (int i = 0; i < nconns; i++)
		close(cs[i].fd);
	return 0;
}

static int idle(int port, int nconns, double secs)
{
	struct conn *cs = calloc((size_t)nconns, sizeof(*cs));
	char out[64];
	size_t flen = frame(out, 1, "hi", 2);
	int open = 0;
	for (int i = 0; i < nconns; i++) {
		handshake(&cs[i], port, "/echo");
		send_all(cs[i].fd, out, flen);
		uint64_t deadline = now_ns() + 5000000000ull;
		int m;
		while ((m = pump_in(&cs[i], NULL, NULL)) == 0 && now_ns() < deadline) {
			struct timespec t = {0, 20000};
			nanosleep(&t, NULL);
		}
		open += m > 0;
	}
	printf("open=%d\n", open);
	fflush(stdout);
	struct timespec t = {(time_t)secs, (long)((secs - (double)(time_t)secs) * 1e9)};
	nanosleep(&t, NULL);
	for (int i = 0; i < nconns; i++)
		close(cs[i].fd);
	return 0;
}

struct fan {
	int round;
	unsigned seen;
	uint64_t t_send, t_last;
};

static void fan_msg(struct conn *c, const char *p, size_t n, void *ud)
{
	struct fan *f = ud;
	char tag[32];
	int k = snprintf(tag, sizeof(tag), "round-%d", f->round);
	if (n >= (size_t)k && memcmp(p + n - (size_t)k, tag, (size_t)k) == 0 && c->last_round != f->round) {
		c->last_round = f->round;
		f->seen++;
		f->t_last = now_ns();
	}
}

static int fanout(int port, int members, int rounds)
{
	struct conn *cs = calloc((size_t)members + 1, sizeof(*cs));
	int ep = epoll_create1(0);
	for (int i = 0; i <= members; i++) {
		handshake(&cs[i], port, "/ws");
		cs[i].last_round = -1;
		if (i < members) {
			struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cs[i]};
			epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
		}
	}
	struct fan f = {0};
	uint64_t *lat = calloc((size_t)rounds, sizeof(*lat));
	int done = 0;
	struct epoll_event evs[256];
	/* Let the joins settle: drain until quiet for 300 ms. */
	for (uint64_t quiet = now_ns();;) {
		int n = epoll_wait(ep, evs, 256, 50);
		for (int i = 0; i < n; i++)
			pump_in(evs[i].data.ptr, NULL, NULL);
		if (n)
			quiet = now_ns();
		else if (now_ns() - quiet > 300000000ull)
			break;
	}
	for (int r = 0; r < rounds; r++) {
		pump_in(&cs[members], NULL, NULL); /* (the sender's own copies) */
		char line[64], out[96];
		int n = snprintf(line, sizeof(line), "round-%d", r);
		f.round = r;
		f.seen = 0;
		f.t_send = now_ns();
		send_all(cs[members].fd, out, frame(out, 1, line, (size_t)n));
		uint64_t deadline = f.t_send + 10000000000ull;
		while (f.seen < (unsigned)members && now_ns() < deadline) {
			int k = epoll_wait(ep, evs, 256, 100);
			for (int i = 0; i < k; i++)
				pump_in(evs[i].data.ptr, fan_msg, &f);
		}
		if (f.seen < (unsigned)members) {
			fprintf(stderr, "wsload: round %d: %u of %d members got it\n", r, f.seen, members);
			break;
		}
		lat[done++] = f.t_last - f.t_send;
		struct timespec t = {0, 20000000}; /* 20 ms between rounds */
		nanosleep(&t, NULL);
	}
	uint64_t p50, p99, max;
	percentiles(lat, (size_t)done, &p50, &p99, &max);
	printf("rounds=%d p50_us=%.1f p99_us=%.1f max_us=%.1f\n", done, (double)p50 / 1e3, (double)p99 / 1e3,
	       (double)max / 1e3);
	return done == rounds ? 0 : 1;
}

int main(int argc, char **argv)
{
	if (argc == 6 && strcmp(argv[1], "echo") == 0)
		return echo(atoi(argv[2]), atoi(argv[3]), (size_t)atol(argv[4]), atof(argv[5]));
	if (argc == 5 && strcmp(argv[1], "idle") == 0)
		return idle(atoi(argv[2]), atoi(argv[3]), atof(argv[4]));
	if (argc == 5 && strcmp(argv[1], "fanout") == 0)
		return fanout(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]));
	fprintf(stderr, "usage: wsload echo PORT CONNS SIZE SECONDS | idle PORT CONNS SECONDS | "
	                "fanout PORT MEMBERS ROUNDS\n");
	return 2;
}
