/*
 * File and descriptor operations: each builds an op record and starts it.
 * No syscalls here; the backend decides how each kind reaches the kernel.
 */
#include <errno.h>
#include <string.h>

#include "internal.h"
#include "keel/errors.h"
#include "keel/file.h"

static keel__op *op_or_null(keel_loop *loop, int kind, int fd)
{
	return keel__op_new(loop, kind, fd);
}

#define START_OR_LIMIT(op) ((op) ? keel__op_start(loop, (op)) : keel__rejected(loop, KEEL_ELIMIT))

keel_promise *keel_file_open(keel_loop *loop, int dirfd, const char *path, int flags, mode_t mode,
                             uint64_t resolve)
{
	keel__op *op = op_or_null(loop, KEEL__OP_OPEN, -1);
	if (op) {
		op->u.open.dirfd = dirfd;
		op->u.open.path = path;
		op->u.open.how.flags = (uint64_t)(flags | O_CLOEXEC);
		op->u.open.how.mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0;
		op->u.open.how.resolve = resolve;
	}
	return START_OR_LIMIT(op);
}

static keel_promise *rw(keel_loop *loop, int kind, int fd, void *buf, size_t len, uint64_t off)
{
	keel__op *op = op_or_null(loop, kind, fd);
	if (op) {
		op->u.rw.buf = buf;
		op->u.rw.len = len;
		op->u.rw.off = off;
	}
	return START_OR_LIMIT(op);
}

keel_promise *keel_file_read(keel_loop *loop, int fd, void *buf, size_t len, uint64_t off)
{
	return rw(loop, KEEL__OP_READ, fd, buf, len, off);
}

keel_promise *keel_file_write(keel_loop *loop, int fd, const void *buf, size_t len, uint64_t off)
{
	return rw(loop, KEEL__OP_WRITE, fd, (void *)buf, len, off);
}

keel_promise *keel_read(keel_loop *loop, int fd, void *buf, size_t len)
{
	return rw(loop, KEEL__OP_READ_POLL, fd, buf, len, 0);
}

keel_promise *keel_file_statx(keel_loop *loop, int dirfd, const char *path, int flags, unsigned mask,
                              struct statx *out)
{
	keel__op *op = op_or_null(loop, KEEL__OP_STATX, -1);
	if (op) {
		op->u.statx.dirfd = dirfd;
		op->u.statx.path = path;
		op->u.statx.flags = flags;
		op->u.statx.mask = mask;
		op->u.statx.out = out;
	}
	return START_OR_LIMIT(op);
}

static keel_promise *path_op(keel_loop *loop, int kind, int dirfd, const char *path, int newdirfd,
                             const char *newpath, unsigned flags, mode_t mode)
{
	keel__op *op = op_or_null(loop, kind, -1);
	if (op) {
		op->u.path.dirfd = dirfd;
		op->u.path.path = path;
		op->u.path.newdirfd = newdirfd;
		op->u.path.newpath = newpath;
		op->u.path.flags = flags;
		op->u.path.mode = mode;
	}
	return START_OR_LIMIT(op);
}

keel_promise *keel_file_unlink(keel_loop *loop, int dirfd, const char *path, int flags)
{
	return path_op(loop, KEEL__OP_UNLINK, dirfd, path, -1, NULL, (unsigned)flags, 0);
}

keel_promise *keel_file_rename(keel_loop *loop, int olddirfd, const char *oldpath, int newdirfd,
                               const char *newpath, unsigned flags)
{
	return path_op(loop, KEEL__OP_RENAME, olddirfd, oldpath, newdirfd, newpath, flags, 0);
}

keel_promise *keel_file_mkdir(keel_loop *loop, int dirfd, const char *path, mode_t mode)
{
	return path_op(loop, KEEL__OP_MKDIR, dirfd, path, -1, NULL, 0, mode);
}

keel_promise *keel_file_fsync(keel_loop *loop, int fd, int datasync)
{
	keel__op *op = op_or_null(loop, KEEL__OP_FSYNC, fd);
	if (op)
		op->u.fsync.datasync = datasync;
	return START_OR_LIMIT(op);
}

keel_promise *keel_sendfile(keel_loop *loop, int out_fd, int in_fd, uint64_t off, size_t len)
{
	if (len == 0) {
		keel_promise *p = keel_promise_new(loop);
		keel_promise_resolve(p, 0, NULL);
		return p;
	}
	keel__op *op = op_or_null(loop, KEEL__OP_SENDFILE, out_fd);
	if (op) {
		op->u.sendfile.in_fd = in_fd;
		op->u.sendfile.off = off;
		op->u.sendfile.len = len;
		op->u.sendfile.pipe[0] = op->u.sendfile.pipe[1] = -1;
	}
	return START_OR_LIMIT(op);
}

keel_promise *keel_close(keel_loop *loop, int fd)
{
	keel__op *op = op_or_null(loop, KEEL__OP_CLOSE, fd);
	return op ? keel__op_start(loop, op) : keel__close_without_op(loop, fd);
}
