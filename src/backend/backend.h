/*
 * The seam between keel's core and a kernel interface.
 *
 * The core describes work as keel__op records and hands them to a backend
 * through the keel__backend table; the backend reports every result back
 * through keel__op_complete(), with io_uring's completion vocabulary (a
 * result, "more to come", "a buffer was used"). The epoll backend emulates
 * that vocabulary, so the core cannot tell the two apart. The backend is
 * chosen at run time by probing the kernel (probe.c), not at build time.
 */
#ifndef KEEL_BACKEND_H
#define KEEL_BACKEND_H

#include <linux/openat2.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include "keel/buf.h"
#include "keel/loop.h"
#include "keel/promise.h"
#include "keel/tcp.h"
#include "keel/timer.h"

typedef struct keel__op keel__op;
typedef struct keel__bufpool keel__bufpool;

enum keel__op_kind {
	KEEL__OP_ACCEPT = 1, /* multishot */
	KEEL__OP_CONNECT,
	KEEL__OP_RECV_STREAM, /* multishot, buffers from the pool */
	KEEL__OP_RECV,
	KEEL__OP_SEND,
	KEEL__OP_SHUTDOWN,
	KEEL__OP_CLOSE,
	KEEL__OP_OPEN,
	KEEL__OP_READ, /* regular file, positioned */
	KEEL__OP_WRITE,
	KEEL__OP_STATX,
	KEEL__OP_FSYNC,
	KEEL__OP_READ_POLL, /* pollable fd: pipe, eventfd, signalfd */
	KEEL__OP_SENDFILE,
	KEEL__OP_UNLINK, /* unlinkat, renameat2, mkdirat: u.path */
	KEEL__OP_RENAME,
	KEEL__OP_MKDIR,
	KEEL__OP_KIND_MAX
};

/* Completion flags, io_uring's meaning. */
#define KEEL__F_MORE (1u << 0)   /* a multishot op goes on after this item */
#define KEEL__F_BUFFER (1u << 1) /* a pool buffer (bid) carries this item's data */

/* Op flags. */
#define KEEL__OPF_CANCELED (1u << 0) /* cancel requested */
#define KEEL__OPF_STOPPED (1u << 1)  /* a stream callback said KEEL_STOP */
#define KEEL__OPF_DAEMON (1u << 2)   /* internal: does not keep keel_loop_run alive */
#define KEEL__OPF_TIMEDOUT (1u << 3) /* its deadline fired */
#define KEEL__OPF_PARKED (1u << 4)   /* waiting for a pool buffer */
#define KEEL__OPF_ZC (1u << 5)       /* send with IORING_OP_SEND_ZC */
#define KEEL__OPF_FDREF (1u << 6)    /* counted in the loop's per-fd references */
#define KEEL__OPF_PACED (1u << 7)    /* RECV_STREAM: one buffer per submission, not multishot */

#define KEEL__IOV_INLINE 8

/* The internal name of keel_timer, until src/http and src/net use the public one. */
typedef keel_timer keel__timer;

struct keel__op {
	uint32_t slot; /* index in the loop's op table */
	uint32_t gen;  /* bumped at every free: late completions don't match */
	uint8_t kind;
	uint8_t flags;
	uint8_t be_state; /* backend's own */
	uint8_t be_flags; /* backend's own */
	int fd;
	keel_promise *promise; /* settled when the op ends */
	keel__op *next;        /* free list, backend queues, buffer waiters */
	int64_t be_scratch;
	/*
	 * Kinds whose part of the union fits KEEL__OP_SMALL_U bytes (receive
	 * streams, accept, plain reads and writes, close, shutdown, fsync) are
	 * allocated without the rest: one per idle connection, so it counts.
	 */
	union {
		struct {
			keel_accept_fn fn;
			void *ud;
			int err; /* io_uring: accept4's error, given once the poll has ended */
		} accept;
		struct {
			keel_recv_fn fn;
			void *ud;
			uint32_t cap; /* fault builds: receive at most this much once (0: a buffer) */
		} stream;
		struct {
			struct sockaddr_storage addr;
			socklen_t addrlen;
			keel__timer timer; /* the deadline */
		} connect;
		struct {
			struct msghdr msg;
			struct iovec *iov; /* points at iov_inline or heap */
			size_t total, done;
			int zc_res; /* io_uring: result held until the ZC notification */
#ifdef KEEL_FAULT
			/* An injected short send: iov[fault_iov] was cut, msg_iovlen was fault_iovlen. */
			uint32_t fault_iov, fault_iovlen;
			size_t fault_len;
#endif
			struct iovec iov_inline[KEEL__IOV_INLINE];
		} send;
		struct {
			void *buf;
			size_t len;
			uint64_t off; /* a file's position; RECV: its flags (MSG_PEEK or 0) */
		} rw;
		struct {
			int dirfd;
			const char *path;
			struct open_how how;
		} open;
		struct {
			int dirfd;
			const char *path;
			int flags;
			unsigned mask;
			struct statx *out;
		} statx;
		struct {
			int dirfd, newdirfd;
			const char *path, *newpath;
			unsigned flags; /* AT_REMOVEDIR; RENAME_NOREPLACE, RENAME_EXCHANGE */
			mode_t mode;
		} path;
		struct {
			int how;
		} shutdown;
		struct {
			int datasync;
		} fsync;
		struct {
			int in_fd;
			uint64_t off;
			size_t len, done;
			size_t in_pipe; /* io_uring: bytes sitting in the pipe */
			int pipe[2];
		} sendfile;
	} u;
};

#define KEEL__OP_SMALL_U 24
#define KEEL__OP_SMALL_SIZE (offsetof(keel__op, u) + KEEL__OP_SMALL_U)

/* Whether ops of this kind are allocated small (their union part fits KEEL__OP_SMALL_U). */
static inline bool keel__op_kind_small(int kind)
{
	return kind != KEEL__OP_CONNECT && kind != KEEL__OP_SEND && kind != KEEL__OP_OPEN &&
	       kind != KEEL__OP_STATX && kind != KEEL__OP_SENDFILE && kind != KEEL__OP_UNLINK &&
	       kind != KEEL__OP_RENAME && kind != KEEL__OP_MKDIR;
}

/* The receive buffer pool shared by every receive stream of a loop. */
struct keel__bufpool {
	keel_loop *loop;
	char *mem;
	keel_buf *bufs;
	uint32_t count, size;
	uint32_t in_use;
	uint16_t *free_ids; /* epoll backend: stack of free buffer ids */
	uint32_t nfree;
	keel__op *waiters, *waiters_tail; /* streams parked for want of a buffer */
	void *ring;                       /* io_uring: the registered buffer ring */
	uint16_t bgid;
};

typedef struct keel__backend {
	const char *name;
	/*
	 * Set up the kernel side for loop; return -errno if impossible. opts is
	 * the loop's own copy: init resolves settings that come from the
	 * environment into it (e.g. the zero-copy threshold, 0 if unavailable).
	 */
	int (*init)(keel_loop *loop, keel_loop_opts *opts);
	void (*fini)(keel_loop *loop);
	/* Queue op for the next kernel entry. Never completes it synchronously. */
	void (*submit)(keel_loop *loop, keel__op *op);
	/*
	 * Complete op with res at the next poll, as if the kernel had (fault
	 * injection: op never reaches the kernel). Never synchronously.
	 */
	void (*inject)(keel_loop *loop, keel__op *op, int res);
	/* Ask the kernel to cancel op; it still completes, normally with -ECANCELED. */
	void (*cancel)(keel_loop *loop, keel__op *op);
	/* Cancel every op in flight on fd (each still completes). */
	void (*cancel_fd)(keel_loop *loop, int fd);
	/*
	 * Submit everything queued, wait up to timeout_ns (-1: forever, 0: don't
	 * block) for completions, dispatch at most max of them. Returns the
	 * number dispatched or a negative errno.
	 */
	int (*poll)(keel_loop *loop, int64_t timeout_ns, unsigned max);
	int (*bufpool_init)(keel_loop *loop, keel__bufpool *pool);
	void (*bufpool_fini)(keel_loop *loop, keel__bufpool *pool);
	/* Give buffer bid back to the kernel (io_uring) or to the free stack (epoll). */
	void (*buf_recycle)(keel_loop *loop, keel__bufpool *pool, uint16_t bid);
	bool (*feature)(keel_loop *loop, const char *name);
	/*
	 * Whether the pool's free buffers may have their pages given back now
	 * (madvise): no kernel write into them can be under way or reported
	 * but not yet seen.
	 */
	bool (*bufs_trimmable)(keel_loop *loop);
} keel__backend;

extern const keel__backend keel__backend_uring;
extern const keel__backend keel__backend_epoll;

/*
 * probe.c: pick and initialise a backend for loop; *out is the one chosen
 * (the loop keeps it: the probe does not reach back into the loop).
 */
int keel__backend_open(keel_loop *loop, keel_loop_opts *opts, const keel__backend **out);

/* ---- What the core offers backends ----------------------------------- */

/* Report a result for op. For multishot ops, flags carry KEEL__F_MORE. */
void keel__op_complete(keel_loop *loop, keel__op *op, int res, unsigned flags, uint16_t bid);

/* Map a user_data (slot | gen << 32) back to its op, or NULL if stale. */
keel__op *keel__op_lookup(keel_loop *loop, uint64_t user_data);

static inline uint64_t keel__op_user_data(const keel__op *op)
{
	return (uint64_t)op->slot | ((uint64_t)op->gen << 32);
}

/* A late completion's buffer must still go back to the pool. */
void keel__buf_return(keel_loop *loop, uint16_t bid);

/* epoll backend: take a free pool buffer (counted in use), or NULL when the pool is dry. */
keel_buf *keel__buf_take(keel__bufpool *pool);

/* Start a thread with every signal blocked: keel's helper threads take none of the host's. */
int keel__thread_start(pthread_t *t, void *(*fn)(void *), void *arg);

/* Count a late completion that was dropped. */
void keel__count_late(keel_loop *loop);

/* Backend-private state and the loop's pool. */
void *keel__loop_be(keel_loop *loop);
void keel__loop_set_be(keel_loop *loop, void *be);
keel__bufpool *keel__loop_bufpool(keel_loop *loop);
void keel__loop_count_submit(keel_loop *loop, unsigned ops);
uint64_t keel__loop_completions(const keel_loop *loop);
/* Read the clock into the loop's cached time: call after every kernel wait, before dispatch. */
void keel__loop_update_time(keel_loop *loop);

#endif
