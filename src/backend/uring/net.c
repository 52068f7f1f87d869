/*
 * io_uring backend: socket operations. Accept and receive are multishot;
 * receive picks its buffer from the provided-buffer ring at the moment data
 * arrives.
 */
#include <errno.h>
#include <sys/socket.h>

#include "uring.h"

int keel__uring_prep_net(keel_loop *loop, keel__uring *u, keel__op *op)
{
	struct io_uring_sqe *sqe = keel__uring_sqe(loop, u);
	if (!sqe)
		return -EBUSY;
	switch (op->kind) {
	case KEEL__OP_ACCEPT: io_uring_prep_multishot_accept(sqe, op->fd, NULL, NULL, SOCK_CLOEXEC); break;
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
