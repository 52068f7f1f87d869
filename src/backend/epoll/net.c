/*
 * epoll backend: one attempt at a socket operation (or a pollable read).
 * Each returns ATT_DONE after reporting to the core, or says what to wait for.
 */
#include <errno.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "epoll.h"

/*
 * Raw syscalls: glibc's recv/sendmsg wrappers are thread-cancellation points
 * and toggle the cancel state around every call, which showed in profiles.
 */
static inline ssize_t sys_recv(int fd, void *buf, size_t len)
{
	return syscall(SYS_recvfrom, fd, buf, len, MSG_DONTWAIT, NULL, NULL);
}

static inline ssize_t sys_recv_peek(int fd, void *buf, size_t len)
{
	return syscall(SYS_recvfrom, fd, buf, len, MSG_DONTWAIT | MSG_PEEK, NULL, NULL);
}

static inline ssize_t sys_sendmsg(int fd, const struct msghdr *msg)
{
	/* One piece: sendto skips sendmsg's msghdr and iovec copying. */
	if (msg->msg_iovlen == 1)
		return syscall(SYS_sendto, fd, msg->msg_iov[0].iov_base, msg->msg_iov[0].iov_len,
		               MSG_NOSIGNAL | MSG_DONTWAIT, NULL, 0);
	return syscall(SYS_sendmsg, fd, msg, MSG_NOSIGNAL | MSG_DONTWAIT);
}

#define ACCEPT_BURST 64 /* accepts per edge before yielding to other work */
#define RECV_BURST 16   /* receives per edge per stream */
#define SENDFILE_CHUNK (1u << 20)

static bool user_ended(const keel__op *op)
{
	return op->flags & (KEEL__OPF_CANCELED | KEEL__OPF_STOPPED);
}

static int attempt_accept(keel_loop *loop, keel__epoll *ep, keel__op *op)
{
	keel__ep_fd_nonblock(ep, op->fd);
	for (int i = 0; i < ACCEPT_BURST; i++) {
		int fd = accept4(op->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd >= 0) {
			keel__ep_fd_reset(ep, fd);
			keel__op_complete(loop, op, fd, KEEL__F_MORE, 0);
			if (user_ended(op)) {
				keel__op_complete(loop, op, -ECANCELED, 0, 0);
				return ATT_DONE;
			}
			continue;
		}
		if (errno == EAGAIN)
			return ATT_WAIT_RD;
		if (errno == EINTR || errno == ECONNABORTED)
			continue;
		keel__op_complete(loop, op, -errno, 0, 0);
		return ATT_DONE;
	}
	return ATT_REQUEUE;
}

static int attempt_recv_stream(keel_loop *loop, keel__epoll *ep, keel__op *op)
{
	keel__bufpool *pool = keel__loop_bufpool(loop);
	bool hup = op->fd < ep->nfds && ep->fds[op->fd].hup;
	for (int i = 0; i < RECV_BURST; i++) {
		keel_buf *buf = keel__buf_take(pool);
		if (!buf) {
			keel__op_complete(loop, op, -ENOBUFS, 0, 0);
			return ATT_DONE;
		}
		uint32_t cap = op->u.stream.cap ? op->u.stream.cap : buf->cap; /* (a short read injected) */
		ssize_t n = sys_recv(op->fd, buf->data, cap < buf->cap ? cap : buf->cap);
		if (n > 0) {
			keel__op_complete(loop, op, (int)n, KEEL__F_MORE | KEEL__F_BUFFER, buf->id);
			if (user_ended(op)) {
				keel__op_complete(loop, op, -ECANCELED, 0, 0);
				return ATT_DONE;
			}
			if (op->u.stream.cap) {
				op->u.stream.cap = 0;
				return ATT_REQUEUE; /* the socket may hold more: no edge will say so */
			}
			/*
			 * A short read drained the socket; data arriving later raises a
			 * new edge. Not so for a hang-up that an edge already reported:
			 * then read on to see it.
			 */
			if ((size_t)n < buf->cap && !hup)
				return ATT_WAIT_RD;
			continue;
		}
		int err = n == 0 ? 0 : errno;
		pool->free_ids[pool->nfree++] = buf->id; /* unused: straight back */
		if (n < 0 && err == EAGAIN)
			return ATT_WAIT_RD;
		if (n < 0 && err == EINTR)
			continue;
		keel__op_complete(loop, op, -err, 0, 0);
		return ATT_DONE;
	}
	return ATT_REQUEUE;
}

int keel__ep_attempt_net(keel_loop *loop, keel__epoll *ep, keel__op *op)
{
	ssize_t n;
	switch (op->kind) {
	case KEEL__OP_ACCEPT: return attempt_accept(loop, ep, op);
	case KEEL__OP_RECV_STREAM: return attempt_recv_stream(loop, ep, op);
	case KEEL__OP_RECV:
		n = op->u.rw.off & MSG_PEEK ? sys_recv_peek(op->fd, op->u.rw.buf, op->u.rw.len)
		                            : sys_recv(op->fd, op->u.rw.buf, op->u.rw.len);
		if (n < 0 && errno == EAGAIN)
			return ATT_WAIT_RD;
		break;
	case KEEL__OP_READ_POLL:
		keel__ep_fd_nonblock(ep, op->fd);
		n = read(op->fd, op->u.rw.buf, op->u.rw.len);
		if (n < 0 && errno == EAGAIN)
			return ATT_WAIT_RD;
		break;
	case KEEL__OP_SEND:
		n = sys_sendmsg(op->fd, &op->u.send.msg);
		if (n < 0 && errno == EAGAIN)
			return ATT_WAIT_WR;
		break;
	case KEEL__OP_SHUTDOWN: n = shutdown(op->fd, op->u.shutdown.how); break;
	case KEEL__OP_CONNECT:
		if (op->be_scratch == 0) {
			n = connect(op->fd, (struct sockaddr *)&op->u.connect.addr, op->u.connect.addrlen);
			if (n < 0 && (errno == EINPROGRESS || errno == EAGAIN)) {
				op->be_scratch = 1; /* in progress: writable means decided */
				return ATT_WAIT_WR;
			}
		} else {
			int soerr = 0;
			socklen_t len = sizeof(soerr);
			n = getsockopt(op->fd, SOL_SOCKET, SO_ERROR, &soerr, &len);
			if (n == 0 && soerr) {
				errno = soerr;
				n = -1;
			}
		}
		break;
	case KEEL__OP_SENDFILE: {
		keel__ep_fd_nonblock(ep, op->fd);
		off_t off = (off_t)(op->u.sendfile.off + op->u.sendfile.done);
		size_t left = op->u.sendfile.len - op->u.sendfile.done;
		n = sendfile(op->fd, op->u.sendfile.in_fd, &off,
		             left < SENDFILE_CHUNK ? left : SENDFILE_CHUNK);
		if (n < 0 && errno == EAGAIN)
			return ATT_WAIT_WR;
		break;
	}
	default:
		n = -1;
		errno = EINVAL;
		break;
	}
	keel__op_complete(loop, op, n < 0 ? -errno : (int)n, 0, 0);
	return ATT_DONE;
}
