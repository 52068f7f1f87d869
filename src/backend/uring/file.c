/*
 * io_uring backend: file operations, close, pollable reads and sendfile.
 *
 * sendfile is two splices per chunk, file -> pipe -> socket, with pipes from a
 * small per-loop cache so the data never passes through user space. Pollable
 * reads (eventfd, signalfd, pipes) wait with POLL_ADD and then read without
 * blocking, which behaves the same whatever O_NONBLOCK says.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include "uring.h"

enum { SF_TO_PIPE = 0, SF_TO_SOCK = 1, SF_WAIT_OUT = 2 };
enum { RP_POLL = 0 };

static int pipe_get(keel__uring *u, int fds[2])
{
	if (u->npipes) {
		u->npipes--;
		fds[0] = u->pipes[u->npipes][0];
		fds[1] = u->pipes[u->npipes][1];
		return 0;
	}
	if (pipe2(fds, O_CLOEXEC) < 0)
		return -errno;
	int sz = fcntl(fds[1], F_SETPIPE_SZ, u->pipe_size);
	if (sz < 0)
		sz = fcntl(fds[1], F_GETPIPE_SZ);
	(void)sz;
	return 0;
}

static void pipe_put(keel__uring *u, int fds[2], bool clean)
{
	if (fds[0] < 0)
		return; /* none was taken (the op ended before its first step) */
	if (clean && u->npipes < KEEL__URING_PIPE_CACHE) {
		u->pipes[u->npipes][0] = fds[0];
		u->pipes[u->npipes][1] = fds[1];
		u->npipes++;
	} else {
		close(fds[0]);
		close(fds[1]);
	}
	fds[0] = fds[1] = -1;
}

void keel__uring_pipes_fini(keel__uring *u)
{
	while (u->npipes) {
		u->npipes--;
		close(u->pipes[u->npipes][0]);
		close(u->pipes[u->npipes][1]);
	}
}

static int pipe_capacity(int fd)
{
	int sz = fcntl(fd, F_GETPIPE_SZ);
	return sz > 0 ? sz : 65536;
}

static void prep_sendfile_step(keel__uring *u, keel__op *op, struct io_uring_sqe *sqe)
{
	(void)u;
	if (op->be_state == SF_TO_PIPE) {
		size_t left = op->u.sendfile.len - op->u.sendfile.done;
		size_t cap = (size_t)pipe_capacity(op->u.sendfile.pipe[1]);
		unsigned n = (unsigned)(left < cap ? left : cap);
		io_uring_prep_splice(sqe, op->u.sendfile.in_fd,
		                     (int64_t)(op->u.sendfile.off + op->u.sendfile.done),
		                     op->u.sendfile.pipe[1], -1, n, SPLICE_F_MOVE);
	} else {
		io_uring_prep_splice(sqe, op->u.sendfile.pipe[0], -1, op->fd, -1,
		                     (unsigned)op->u.sendfile.in_pipe, SPLICE_F_MOVE);
	}
	io_uring_sqe_set_data64(sqe, keel__op_user_data(op));
}

int keel__uring_prep_file(keel_loop *loop, keel__uring *u, keel__op *op)
{
	struct io_uring_sqe *sqe = keel__uring_sqe(loop, u);
	if (!sqe)
		return -EBUSY;
	switch (op->kind) {
	case KEEL__OP_OPEN:
		io_uring_prep_openat2(sqe, op->u.open.dirfd, op->u.open.path, &op->u.open.how);
		break;
	case KEEL__OP_READ:
		io_uring_prep_read(sqe, op->fd, op->u.rw.buf, (unsigned)op->u.rw.len, op->u.rw.off);
		break;
	case KEEL__OP_WRITE:
		io_uring_prep_write(sqe, op->fd, op->u.rw.buf, (unsigned)op->u.rw.len, op->u.rw.off);
		break;
	case KEEL__OP_STATX:
		io_uring_prep_statx(sqe, op->u.statx.dirfd, op->u.statx.path, op->u.statx.flags,
		                    op->u.statx.mask, op->u.statx.out);
		break;
	case KEEL__OP_FSYNC:
		io_uring_prep_fsync(sqe, op->fd, op->u.fsync.datasync ? IORING_FSYNC_DATASYNC : 0);
		break;
	case KEEL__OP_UNLINK:
		io_uring_prep_unlinkat(sqe, op->u.path.dirfd, op->u.path.path, (int)op->u.path.flags);
		break;
	case KEEL__OP_RENAME:
		io_uring_prep_renameat(sqe, op->u.path.dirfd, op->u.path.path, op->u.path.newdirfd,
		                       op->u.path.newpath, op->u.path.flags);
		break;
	case KEEL__OP_MKDIR:
		io_uring_prep_mkdirat(sqe, op->u.path.dirfd, op->u.path.path, op->u.path.mode);
		break;
	case KEEL__OP_CLOSE:
		/* The core submits a close only once no other op is in flight on fd. */
		io_uring_prep_close(sqe, op->fd);
		break;
	case KEEL__OP_READ_POLL:
		op->be_state = RP_POLL;
		io_uring_prep_poll_add(sqe, op->fd, POLLIN);
		break;
	case KEEL__OP_SENDFILE:
		if (op->u.sendfile.pipe[0] < 0) {
			int err = pipe_get(u, op->u.sendfile.pipe);
			if (err < 0) {
				/* Give the SQE back as a no-op that nobody waits for. */
				io_uring_prep_nop(sqe);
				io_uring_sqe_set_data64(sqe, KEEL__URING_IGNORE);
				return err;
			}
		}
		op->be_state = op->u.sendfile.in_pipe ? SF_TO_SOCK : SF_TO_PIPE;
		prep_sendfile_step(u, op, sqe);
		return 0;
	default:
		io_uring_prep_nop(sqe);
		io_uring_sqe_set_data64(sqe, KEEL__URING_IGNORE);
		return -EINVAL;
	}
	io_uring_sqe_set_data64(sqe, keel__op_user_data(op));
	return 0;
}

static bool sendfile_step(keel_loop *loop, keel__uring *u, keel__op *op, int *res)
{
	int r = *res;
	if (op->be_state == SF_WAIT_OUT && r >= 0 && !(op->flags & KEEL__OPF_CANCELED)) {
		op->be_state = SF_TO_SOCK; /* the socket has room again: splice what the pipe holds */
		goto next;
	}
	if (r == -EAGAIN && op->be_state == SF_TO_SOCK && !(op->flags & KEEL__OPF_CANCELED)) {
		/*
		 * A non-blocking socket with a full buffer (io_uring does not poll
		 * before a splice): wait until it can take more, then go on.
		 */
		struct io_uring_sqe *sqe = keel__uring_sqe(loop, u);
		if (sqe) {
			op->be_state = SF_WAIT_OUT;
			io_uring_prep_poll_add(sqe, op->fd, POLLOUT);
			io_uring_sqe_set_data64(sqe, keel__op_user_data(op));
			return false;
		}
	}
	if (r < 0 || (op->flags & KEEL__OPF_CANCELED)) {
		/*
		 * What the pipe holds after this completion: a pipe that still has
		 * bytes of this file must never serve another transfer (they would
		 * be sent as its body), so only an empty one goes back to the cache.
		 */
		size_t left = op->u.sendfile.in_pipe;
		if (r > 0 && op->be_state == SF_TO_PIPE)
			left += (size_t)r;
		else if (r > 0 && op->be_state == SF_TO_SOCK)
			left -= (size_t)r;
		pipe_put(u, op->u.sendfile.pipe, left == 0);
		op->u.sendfile.in_pipe = 0;
		*res = r < 0 ? r : -ECANCELED;
		return true;
	}
	if (op->be_state == SF_TO_PIPE) {
		if (r == 0) { /* end of file */
			pipe_put(u, op->u.sendfile.pipe, true);
			return true;
		}
		op->u.sendfile.in_pipe = (size_t)r;
		op->be_scratch = r; /* this chunk's size, reported when it has left the pipe */
		op->be_state = SF_TO_SOCK;
	} else {
		op->u.sendfile.in_pipe -= (size_t)r;
		if (op->u.sendfile.in_pipe == 0) {
			pipe_put(u, op->u.sendfile.pipe, true);
			*res = (int)op->be_scratch;
			return true;
		}
		if (r == 0) {
			pipe_put(u, op->u.sendfile.pipe, false);
			*res = -EPIPE;
			return true;
		}
	}
next:;
	struct io_uring_sqe *sqe = keel__uring_sqe(loop, u);
	if (!sqe) {
		pipe_put(u, op->u.sendfile.pipe, false);
		*res = -EBUSY;
		return true;
	}
	prep_sendfile_step(u, op, sqe);
	return false;
}

static bool read_poll_step(keel_loop *loop, keel__uring *u, keel__op *op, int *res)
{
	if (*res < 0)
		return true;
	ssize_t n = read(op->fd, op->u.rw.buf, op->u.rw.len);
	if (n >= 0) {
		*res = (int)n;
		return true;
	}
	if (errno != EAGAIN || (op->flags & KEEL__OPF_CANCELED)) {
		*res = errno == EAGAIN ? -ECANCELED : -errno;
		return true;
	}
	/* Someone else drained it first: wait again. */
	struct io_uring_sqe *sqe = keel__uring_sqe(loop, u);
	if (!sqe) {
		*res = -EBUSY;
		return true;
	}
	io_uring_prep_poll_add(sqe, op->fd, POLLIN);
	io_uring_sqe_set_data64(sqe, keel__op_user_data(op));
	return false;
}

bool keel__uring_step(keel_loop *loop, keel__uring *u, keel__op *op, int *res)
{
	if (op->kind == KEEL__OP_SENDFILE)
		return sendfile_step(loop, u, op, res);
	return read_poll_step(loop, u, op, res);
}
