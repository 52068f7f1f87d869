/*
 * keel_loop: one proactor per thread.
 *
 * A loop owns a kernel completion queue (io_uring, or epoll emulating the
 * same interface), a timer heap, a ready queue of promise continuations and
 * a pool of receive buffers. It is single-threaded: every call on a loop and
 * on the promises it made must come from the thread that runs it, except
 * keel_loop_post() (another thread stops a loop by posting a function that
 * calls keel_loop_stop()).
 *
 * One tick: run ready continuations (bounded), hand every queued submission
 * to the kernel in one call that also waits for the nearest timer deadline,
 * dispatch completions (bounded), expire timers.
 */
#ifndef KEEL_LOOP_H
#define KEEL_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keel_loop keel_loop;

typedef enum keel_backend_kind {
	KEEL_BACKEND_AUTO = 0, /* io_uring if usable, else epoll; honours $KEEL_BACKEND */
	KEEL_BACKEND_URING,
	KEEL_BACKEND_EPOLL,
} keel_backend_kind;

typedef struct keel_loop_opts {
	keel_backend_kind backend;
	unsigned sq_entries;      /* io_uring SQ size; default 1024 */
	unsigned recv_buf_count;  /* buffers in the receive pool (power of two); default 1024 */
	unsigned recv_buf_size;   /* bytes per receive buffer; default 16 KiB */
	unsigned ops_max;         /* operations in flight at once; default 65536 */
	unsigned cqe_batch_max;   /* completions dispatched per tick; default 1024 */
	unsigned ready_batch_max; /* continuations run per tick; default 4096 */
	int sqpoll;               /* 1 on, 0 off, -1 from $KEEL_SQPOLL (default) */
	unsigned sqpoll_idle_ms;  /* SQPOLL thread idle time before it sleeps; default 50 */
	/* zero-copy send at/above this size; 0 off, -1 from $KEEL_SEND_ZC (default) */
	long send_zc_min_bytes;
	unsigned file_threads; /* epoll backend: threads for regular-file ops; default 4 */
	bool quiet;            /* suppress the backend-choice log line */
} keel_loop_opts;

typedef struct keel_loop_stats {
	uint64_t ticks;
	uint64_t submits; /* kernel entries made to submit/wait */
	uint64_t ops_submitted;
	uint64_t completions;
	uint64_t late_completions; /* dropped: generation tag did not match */
	uint32_t ops_inflight;
	uint32_t promises_live;
	uint32_t ctx_live;
	uint32_t timers_live;
	uint32_t bufs_total;
	uint32_t bufs_in_use;
	uint64_t enobufs; /* receive streams parked for want of a buffer */
} keel_loop_stats;

/* Fill opts with the defaults above. */
void keel_loop_opts_default(keel_loop_opts *opts);

/*
 * Create a loop on the calling thread. opts may be NULL for defaults; it is
 * copied. Returns 0 and sets *out to a loop the caller owns (keel_loop_free),
 * or a negative errno with *out set to NULL: -EINVAL for bad opts, -ENOMEM,
 * an error from setting up the backend, or KEEL_EBACKEND when the backend
 * forced by opts or $KEEL_BACKEND cannot run. The backend choice is logged
 * once per process to stderr unless opts->quiet.
 *
 * Every keel object constructor has this shape, int keel_x_new(keel_x **out,
 * ...) (keel/promise.h says why keel_promise_new and keel_ctx_new do not).
 */
int keel_loop_new(keel_loop **out, const keel_loop_opts *opts);

/*
 * Free a loop. Outstanding operations are cancelled and waited for (buffers
 * handed to the kernel stay valid until then), for about 10 s at most: past
 * that a warning is logged and the loop's memory freed anyway. Promises
 * still pending are abandoned without running their continuations, and
 * armed timers are disarmed without running (keel/timer.h). The receive
 * buffers go with it: a keel_buf still held from its pool is invalid after.
 */
void keel_loop_free(keel_loop *loop);

/*
 * Run until keel_loop_stop() is called or no work remains (no operation in
 * flight, no timer, nothing ready). Returns 0, or a negative errno if the
 * kernel interface failed.
 */
int keel_loop_run(keel_loop *loop);

/* Run one tick, waiting at most timeout_ms (-1: until something happens). */
int keel_loop_run_once(keel_loop *loop, int timeout_ms);

/*
 * Make keel_loop_run() return after the current tick; called while the loop
 * is not running, the next keel_loop_run() returns after one tick.
 * keel_loop_run_once() does not see it: it waits as asked. Loop thread only.
 */
void keel_loop_stop(keel_loop *loop);

/*
 * Thread-safe: run fn(ud) on the loop's thread during a later tick. Returns 0
 * or -ENOMEM. Used for cross-thread signals such as graceful stop. ud stays
 * the caller's; if the loop is freed before fn runs, fn never runs.
 */
int keel_loop_post(keel_loop *loop, void (*fn)(keel_loop *loop, void *ud), void *ud);

/* "io_uring" or "epoll" (static storage). */
const char *keel_loop_backend(const keel_loop *loop);

/* Monotonic time in ms / ns, cached once per tick. */
uint64_t keel_loop_now_ms(const keel_loop *loop);
uint64_t keel_loop_now_ns(const keel_loop *loop);
/*
 * The loop's tick count, one more per iteration: what completes in the tick
 * an operation was submitted in came from before it (its answer cannot
 * have arrived yet: the submission leaves at the end of the tick).
 */
uint64_t keel_loop_tick(const keel_loop *loop);

/* Whether an opt-in feature is active on this loop: "sqpoll", "send_zc" (name is read during the call). */
bool keel_loop_feature(const keel_loop *loop, const char *name);

/* Copy the loop's counters into *out. */
void keel_loop_get_stats(const keel_loop *loop, keel_loop_stats *out);

/*
 * Give memory kept for reuse back to the system: free request contexts and
 * arena chunks beyond a few, the pages of receive buffers nobody holds
 * (where the backend can tell no kernel write into them is under way), and
 * the C library's free heap (malloc_trim). For after a burst; the HTTP
 * server calls it once its connections have gone. Loop thread only.
 */
void keel_loop_trim(keel_loop *loop);

/* Per-thread user pointer, for callbacks that only get the loop. Stored as is; keel never frees it. */
void keel_loop_set_data(keel_loop *loop, void *data);
void *keel_loop_data(const keel_loop *loop);

#ifdef __cplusplus
}
#endif

#endif
