/*
 * epoll_echo: a classic single-threaded epoll echo server, the baseline that
 * keel's echo server is measured against by bench/echo/run.sh.
 *
 * Usage: epoll_echo 127.0.0.1:7100      (stops on SIGINT or SIGTERM)
 *
 * Every socket is registered once, edge-triggered, for both EPOLLIN and
 * EPOLLOUT, so the steady state costs no epoll_ctl calls: an event only says
 * "something changed", and the handler reads until EAGAIN, writing each chunk
 * back before reading the next. When a write comes up short, the unsent bytes
 * stay in the connection's fixed 16 KiB buffer and reading pauses until the
 * EPOLLOUT edge reports room again; that is the whole backpressure story.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

enum { CONN_BUF_BYTES = 16 * 1024, EVENTS_MAX = 512 };

struct conn {
	int fd;
	unsigned pending_off; /* first byte of buf not yet written back */
	unsigned pending_len; /* bytes of buf still owed to the peer */
	char buf[CONN_BUF_BYTES];
};

static volatile sig_atomic_t stopping;

static void on_signal(int sig)
{
	(void)sig;
	stopping = 1;
}

/* Parses "A.B.C.D:PORT". Returns 0 or -EINVAL. */
static int parse_addr(const char *s, struct sockaddr_in *sa)
{
	const char *colon = strrchr(s, ':');
	char host[INET_ADDRSTRLEN];
	char *end;
	unsigned long port;

	if (!colon || colon == s || (size_t)(colon - s) >= sizeof host)
		return -EINVAL;
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = '\0';
	errno = 0;
	port = strtoul(colon + 1, &end, 10);
	if (errno || end == colon + 1 || *end || port == 0 || port > 65535)
		return -EINVAL;
	memset(sa, 0, sizeof *sa);
	sa->sin_family = AF_INET;
	sa->sin_port = htons((unsigned short)port);
	if (inet_pton(AF_INET, host, &sa->sin_addr) != 1)
		return -EINVAL;
	return 0;
}

/* Returns a nonblocking listening socket, or -errno. */
static int listen_on(const struct sockaddr_in *sa)
{
	int one = 1;
	int fd, err;

	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
		goto out_close_fd;
	if (bind(fd, (const struct sockaddr *)sa, sizeof *sa) < 0)
		goto out_close_fd;
	if (listen(fd, SOMAXCONN) < 0)
		goto out_close_fd;
	return fd;

out_close_fd:
	err = -errno;
	close(fd);
	return err;
}

static void conn_close(struct conn *c)
{
	/* No fd is ever dup'd, so close() also removes it from the epoll set. */
	close(c->fd);
	free(c);
}

/*
 * Flushes what is pending, then reads and echoes until the kernel says
 * EAGAIN; edge triggering promises no further event until then. Returns 0
 * while the connection lives, -errno (-ESHUTDOWN for an orderly EOF) when it
 * should be closed.
 */
static int conn_service(struct conn *c)
{
	ssize_t n;

	for (;;) {
		while (c->pending_len > 0) {
			n = send(c->fd, c->buf + c->pending_off, c->pending_len, MSG_NOSIGNAL);
			if (n < 0) {
				if (errno == EAGAIN)
					return 0; /* wait for the EPOLLOUT edge */
				if (errno == EINTR)
					continue;
				return -errno;
			}
			c->pending_off += (unsigned)n;
			c->pending_len -= (unsigned)n;
		}
		n = recv(c->fd, c->buf, sizeof c->buf, 0);
		if (n < 0) {
			if (errno == EAGAIN)
				return 0;
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -ESHUTDOWN;
		c->pending_off = 0;
		c->pending_len = (unsigned)n;
	}
}

static void accept_all(int ep, int lfd)
{
	struct epoll_event ev;
	struct conn *c;
	int one = 1;
	int fd;

	for (;;) {
		fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			/*
			 * On EMFILE the connection stays queued and, edge
			 * triggered, waits for the next arrival to be seen.
			 * Acceptable here: run.sh raises the fd limit.
			 */
			if (errno != EAGAIN)
				perror("epoll_echo: accept4");
			return;
		}
		c = malloc(sizeof *c);
		if (!c) {
			close(fd);
			continue;
		}
		c->fd = fd;
		c->pending_off = 0;
		c->pending_len = 0;
		/* Echo replies are latency-bound: never let Nagle hold them. */
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		ev.events = EPOLLIN | EPOLLOUT | EPOLLET;
		ev.data.ptr = c;
		if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
			perror("epoll_echo: epoll_ctl");
			conn_close(c);
		}
	}
}

int main(int argc, char **argv)
{
	struct epoll_event evs[EVENTS_MAX];
	struct epoll_event ev;
	struct sigaction sa_stop;
	struct sockaddr_in addr;
	sigset_t stop_set, wait_set;
	int ep, lfd, n, i;

	if (argc != 2 || parse_addr(argv[1], &addr) < 0) {
		fprintf(stderr, "usage: %s A.B.C.D:PORT\n", argv[0]);
		return 2;
	}

	/*
	 * The stop signals stay blocked except inside epoll_pwait, so one that
	 * lands between the loop test and the wait cannot be lost.
	 */
	memset(&sa_stop, 0, sizeof sa_stop);
	sa_stop.sa_handler = on_signal;
	sigaction(SIGINT, &sa_stop, NULL);
	sigaction(SIGTERM, &sa_stop, NULL);
	sigemptyset(&stop_set);
	sigaddset(&stop_set, SIGINT);
	sigaddset(&stop_set, SIGTERM);
	sigprocmask(SIG_BLOCK, &stop_set, &wait_set);
	sigdelset(&wait_set, SIGINT); /* in case they came in blocked */
	sigdelset(&wait_set, SIGTERM);

	lfd = listen_on(&addr);
	if (lfd < 0) {
		fprintf(stderr, "epoll_echo: listen %s: %s\n", argv[1], strerror(-lfd));
		return 1;
	}
	ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0) {
		perror("epoll_echo: epoll_create1");
		return 1;
	}
	ev.events = EPOLLIN | EPOLLET;
	ev.data.ptr = NULL; /* the listener is the only NULL */
	if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0) {
		perror("epoll_echo: epoll_ctl");
		return 1;
	}

	while (!stopping) {
		n = epoll_pwait(ep, evs, EVENTS_MAX, -1, &wait_set);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("epoll_echo: epoll_pwait");
			return 1;
		}
		for (i = 0; i < n; i++) {
			struct conn *c = evs[i].data.ptr;

			if (!c)
				accept_all(ep, lfd);
			else if (conn_service(c) < 0)
				conn_close(c);
		}
	}

	/* Open connections are left for the kernel to close at exit. */
	close(ep);
	close(lfd);
	return 0;
}
