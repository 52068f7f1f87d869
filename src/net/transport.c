/*
 * Plain TCP as a keel_transport: each operation is the socket operation
 * of tcp.h or file.h on the connection's descriptor, nothing in between.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "keel/file.h"
#include "keel/tcp.h"
#include "keel/transport.h"

static keel_promise *tcp_recv(keel_transport *t, keel_recv_fn fn, void *ud, bool paced)
{
	return paced ? keel_recv_stream_paced(t->loop, t->fd, fn, ud)
	             : keel_recv_stream(t->loop, t->fd, fn, ud);
}

static keel_promise *tcp_sendv(keel_transport *t, const struct iovec *iov, int n)
{
	return keel_sendv(t->loop, t->fd, iov, n);
}

static keel_promise *tcp_sendfile(keel_transport *t, int in_fd, uint64_t off, size_t len)
{
	return keel_sendfile(t->loop, t->fd, in_fd, off, len);
}

static keel_promise *tcp_shutdown(keel_transport *t)
{
	return keel_shutdown(t->loop, t->fd, SHUT_WR);
}

static keel_promise *tcp_close(keel_transport *t)
{
	int fd = t->fd;
	t->fd = -1;
	return keel_close(t->loop, fd);
}

static int tcp_peek(keel_transport *t)
{
	char b;
	ssize_t n = recv(t->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
	if (n > 0)
		return 1;
	if (n == 0)
		return -EPIPE;
	return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
}

static bool tcp_pending(keel_transport *t)
{
	return tcp_peek(t) > 0;
}

static int tcp_peer(keel_transport *t, struct sockaddr_storage *ss)
{
	socklen_t sl = sizeof(*ss);
	return getpeername(t->fd, (struct sockaddr *)ss, &sl) == 0 ? 0 : -errno;
}

static const keel_transport_ops tcp_ops = {
    .recv = tcp_recv,
    .sendv = tcp_sendv,
    .sendfile = tcp_sendfile,
    .shutdown = tcp_shutdown,
    .close = tcp_close,
    .pending = tcp_pending,
    .peek = tcp_peek,
    .peer = tcp_peer,
};

void keel_tcp_transport_init(keel_transport *t, keel_loop *loop, int fd)
{
	t->ops = &tcp_ops;
	t->loop = loop;
	t->impl = NULL;
	t->fd = fd;
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}
