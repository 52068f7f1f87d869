/*
 * io_uring backend: socket operations. Accept and receive are multishot;
 * receive picks its buffer from the provided-buffer ring at the moment data
 * arrives.
 *
 * Accept is a multishot poll of the listening socket with accept4 at each
 * readiness (keel__uring_accept), not IORING_OP_ACCEPT: io_uring's accept
 * waits on the socket exclusively, and one cancelled after its wakeup --
 * a worker that stops accepting while another ring accepts on the same
 * socket (a reload's next generation, an upgrade's new process, workers
 * sharing a Unix socket) -- takes the wakeup with it, leaving the other
 * ring asleep over a queued client. A poll wakes every waiter.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "uring.h"

int keel__uring_prep_net(keel_loop *loop, keel__uring *u, keel__op *op)
{
	struct io_uring_sqe *sqe = keel__uring_sqe(loop, u);
	if (!sqe)
		return -EBUSY;
	switch (op->kind) {
	case KEEL__OP_ACCEPT: {
		int fl = fcntl(op->fd, F_GETFL); /* (accept4 below must never block) */
		if (fl >= 0 && !(fl & O_NONBLOCK))
			fcntl(op->fd, F_SETFL, fl | O_NONBLOCK);
		op->u.accept.err = 0;
		io_uring_prep_poll_multishot(sqe, op->fd, POLLIN);
		break;
	}
	case KEEL__OP_CONNECT:
		io_uring_prep_connect(sqe, op->fd, (struct sockaddr *)&op->u.connect.addr,
		                      op->u.connect.addrlen);
		break;
	case KEEL__OP_RECV_STREAM:
		if (op->u.stream.cap) /* an injected short read: one receive of at most cap bytes */
			io_uring_prep_recv(sqe, op->fd, NULL, op->u.stream.cap, 0);
		else if (op->flags & KEEL__OPF_PACED)
			io_uring_prep_recv(sqe, op->fd, NULL, 0, 0); /* re-armed after each buffer */
		else
			io_uring_prep_recv_multishot(sqe, op->fd, NULL, 0, 0);
		sqe->flags |= IOSQE_BUFFER_SELECT;
		sqe->buf_group = keel__loop_bufpool(loop)->bgid;
		break;
	case KEEL__OP_RECV:
		io_uring_prep_recv(sqe, op->fd, op->u.rw.buf, op->u.rw.len, (int)op->u.rw.off);
		break;
	case KEEL__OP_SEND:
		if ((op->flags & KEEL__OPF_ZC) && op->u.send.msg.msg_iovlen == 1)
			io_uring_prep_send_zc(sqe, op->fd, op->u.send.msg.msg_iov[0].iov_base,
			                      op->u.send.msg.msg_iov[0].iov_len, MSG_NOSIGNAL, 0);
		else if (op->flags & KEEL__OPF_ZC)
			io_uring_prep_sendmsg_zc(sqe, op->fd, &op->u.send.msg, MSG_NOSIGNAL);
		else if (op->u.send.msg.msg_iovlen == 1)
			io_uring_prep_send(sqe, op->fd, op->u.send.msg.msg_iov[0].iov_base,
			                   op->u.send.msg.msg_iov[0].iov_len, MSG_NOSIGNAL);
		else
			io_uring_prep_sendmsg(sqe, op->fd, &op->u.send.msg, MSG_NOSIGNAL);
		break;
	case KEEL__OP_SHUTDOWN: io_uring_prep_shutdown(sqe, op->fd, op->u.shutdown.how); break;
	default: return -EINVAL;
	}
	io_uring_sqe_set_data64(sqe, keel__op_user_data(op));
	return 0;
}

void keel__uring_accept(keel_loop *loop, keel__op *op, int res, bool more)
{
	if (res >= 0) {
		/* Ready: every queued client, until the queue is empty or the owner says stop. */
		while (!(op->flags & (KEEL__OPF_CANCELED | KEEL__OPF_STOPPED)) && !op->u.accept.err) {
			/*
			 * (The raw system call, as the epoll backend's receives: a
			 * connection's descriptor is closed through the ring, which
			 * ThreadSanitizer cannot see, so it must not see it made either.)
			 */
			int fd = (int)syscall(SYS_accept4, op->fd, NULL, NULL, SOCK_CLOEXEC);
			if (fd >= 0) {
				keel__op_complete(loop, op, fd, KEEL__F_MORE, 0);
				continue;
			}
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno != EAGAIN) { /* (EMFILE and the like: the stream ends with it) */
				op->u.accept.err = -errno;
				keel__uring_cancel(loop, op);
			}
			break;
		}
		if (more)
			return;
		if (!(op->flags & (KEEL__OPF_CANCELED | KEEL__OPF_STOPPED)) && !op->u.accept.err) {
			keel__uring_resubmit(loop, op); /* the kernel ended the poll early: re-arm */
			return;
		}
		res = -ECANCELED;
	}
	if (more)
		return;
	keel__op_complete(loop, op, op->u.accept.err ? op->u.accept.err : res, 0, 0);
}
