/*
 * File and descriptor operations through the loop.
 *
 * On io_uring they are ring operations like any other. On epoll, which cannot
 * wait for regular files, they run on a small bounded thread pool and their
 * results re-enter the loop through an eventfd, as completions.
 * Paths and buffers are borrowed until the promise settles. Every call that
 * returns a keel_promise * returns the consumer's handle (keel/promise.h).
 */
#ifndef KEEL_FILE_H
#define KEEL_FILE_H

#include <fcntl.h>
#include <linux/stat.h> /* struct statx, STATX_*: also without _GNU_SOURCE (glibc's own use this) */
#include <stdint.h>
#include <sys/stat.h>

#include "promise.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * openat2(2). resolve takes RESOLVE_* flags (RESOLVE_BENEATH keeps the lookup
 * below dirfd). O_CLOEXEC is always added. Resolves with n = fd, the
 * consumer's to close.
 */
keel_promise *keel_file_open(keel_loop *loop, int dirfd, const char *path, int flags, mode_t mode,
                             uint64_t resolve);

/*
 * pread/pwrite at off; off == KEEL_FILE_POS (UINT64_MAX) uses and advances
 * the file position (and appends on O_APPEND files). n = bytes transferred
 * (a short count is possible, as with pread).
 */
#define KEEL_FILE_POS UINT64_MAX
keel_promise *keel_file_read(keel_loop *loop, int fd, void *buf, size_t len, uint64_t off);
keel_promise *keel_file_write(keel_loop *loop, int fd, const void *buf, size_t len, uint64_t off);

/* statx(2) into *out (borrowed until the promise settles; filled when it resolves). */
keel_promise *keel_file_statx(keel_loop *loop, int dirfd, const char *path, int flags, unsigned mask,
                              struct statx *out);

keel_promise *keel_file_fsync(keel_loop *loop, int fd, int datasync);

/*
 * Names in directories, as promises like the others (io_uring's UNLINKAT,
 * RENAMEAT and MKDIRAT; the epoll backend's file threads): no blocking
 * call on the loop to clean up after an upload. Paths are relative to
 * their dirfd (AT_FDCWD: the working directory) and borrowed until the
 * promise settles. Each resolves with n = 0 or rejects with the call's
 * -errno (-ENOENT, -EEXIST, -ENOTEMPTY, -EACCES, ...), or KEEL_ELIMIT.
 *   keel_file_unlink  unlinkat(2); flags 0, or AT_REMOVEDIR for an empty directory
 *   keel_file_rename  renameat2(2); flags 0, RENAME_NOREPLACE or RENAME_EXCHANGE
 *   keel_file_mkdir   mkdirat(2) with mode (less the umask)
 */
keel_promise *keel_file_unlink(keel_loop *loop, int dirfd, const char *path, int flags);
keel_promise *keel_file_rename(keel_loop *loop, int olddirfd, const char *oldpath, int newdirfd,
                               const char *newpath, unsigned flags);
keel_promise *keel_file_mkdir(keel_loop *loop, int dirfd, const char *path, mode_t mode);

/*
 * read(2) on a pollable descriptor (pipe, eventfd, signalfd, socket) into
 * buf; waits for readiness. n = bytes.
 */
keel_promise *keel_read(keel_loop *loop, int fd, void *buf, size_t len);

/*
 * Send len bytes of file in_fd from offset off to socket out_fd without
 * copying through user space (splice through a pipe on io_uring, sendfile(2)
 * on epoll). Short transfers are continued; n == len unless the file ended
 * early, in which case n is what was sent. Neither descriptor is closed:
 * both are borrowed until the promise settles.
 */
keel_promise *keel_sendfile(keel_loop *loop, int out_fd, int in_fd, uint64_t off, size_t len);

/*
 * Close fd (taken: the caller must not use it after this call). In-flight
 * operations on fd are cancelled first (they settle with -ECANCELED), so
 * nothing is left waiting on a closed descriptor. Never refused: with the
 * operation table full (ops_max), the close is made with close(2) once the
 * operations on fd have ended.
 */
keel_promise *keel_close(keel_loop *loop, int fd);

#ifdef __cplusplus
}
#endif

#endif
