/*
 * Internals shared by the files of src/core: the loop and promise records,
 * the op table, the timer heap and the ready queue.
 */
#ifndef KEEL_CORE_INTERNAL_H
#define KEEL_CORE_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "backend/backend.h"
#include "keel/loop.h"
#include "keel/promise.h"

#define KEEL__ASSERT(cond)                                            \
	do {                                                          \
		if (__builtin_expect(!(cond), 0))                     \
			keel__assert_fail(#cond, __FILE__, __LINE__); \
	} while (0)

_Noreturn void keel__assert_fail(const char *what, const char *file, int line);
_Noreturn void keel__oom(void);

/* malloc that aborts on failure: out of memory is not a recoverable input here. */
void *keel__xmalloc(size_t n);
void *keel__xcalloc(size_t n, size_t size);

enum keel__pstate { KEEL__PENDING = 0, KEEL__SETTLED = 1 };

/* How a promise's own continuation (the fn it was derived with) runs. */
enum keel__pmode {
	KEEL__M_NONE = 0,
	KEEL__M_THEN,
	KEEL__M_MAP,
	KEEL__M_FLAT,
	KEEL__M_CATCH,
	KEEL__M_FINALLY,
	KEEL__M_FORWARD,  /* flat_map: waiting on the inner promise */
	KEEL__M_FLAT_ANY, /* then_flat: fn on either outcome, returns a promise */
};

struct keel_promise {
	keel_loop *loop;
	keel_ctx *ctx;
	keel_promise *next; /* ready queue / free list */
	keel_outcome out;
	uint8_t state;
	uint8_t queued;        /* on the ready queue */
	uint8_t refs;          /* producer + consumer */
	uint8_t mode;          /* enum keel__pmode */
	uint8_t consumed;      /* a consumer is attached */
	uint8_t producer_owed; /* settled by a cancel while the producer still holds its reference */
	/* Consumer: runs from the ready queue after this promise settles. */
	void (*notify)(keel_promise *self, void *arg);
	void *notify_arg;
	/* Producer: what keel_promise_cancel reaches. */
	void (*cancel)(keel_promise *self, void *arg);
	void *cancel_arg;
	/* Derived promises: the user function and its argument. */
	void *fn;
	void *ud;
	keel_promise *upstream; /* the promise this one waits on, for cancel */
	/* keel_promise_done: the terminal observer, run without a derived promise. */
	keel_done_fn done_fn;
	void *done_ud;
};

struct keel__ctx_hook {
	void (*fn)(void *ud);
	void *ud;
	struct keel__ctx_hook *next;
};

struct keel_ctx {
	keel_loop *loop;
	uint32_t refs;
	struct keel__chunk *chunks;
	char *cur, *end;
	struct keel__ctx_hook *hooks; /* keel_ctx_on_free, newest first; in the arena */
	keel_ctx *next_free;
};

#define KEEL__MEM_CLASSES 5 /* 64, 128, 256, 512, 1024 bytes */
struct keel__memfree {
	struct keel__memfree *next;
};

struct keel__post {
	void (*fn)(keel_loop *loop, void *ud);
	/* A post the loop is freed before it runs: drop(ud) instead (NULL: nothing to do). */
	void (*drop)(void *ud);
	void *ud;
	struct keel__post *next;
	bool embedded; /* part of ud's memory (keel__loop_post_node): never freed by the loop */
};

/*
 * keel_loop_post with caller storage: cannot fail. node lives until fn has
 * run, or drop(ud) has been called because the loop went first.
 */
void keel__loop_post_node(keel_loop *loop, struct keel__post *node, void (*fn)(keel_loop *, void *),
                          void (*drop)(void *), void *ud);

/* Something outside the loop that posts back to it (the resolver) forgets a loop being freed. */
struct keel__loop_watcher {
	void (*forget)(keel_loop *loop);
	struct keel__loop_watcher *next;
};
/* Register w (static storage) once per process; its forget runs for every loop freed after. */
void keel__loop_watch(struct keel__loop_watcher *w);

/* A close waiting, without an op slot, for the operations on its fd to end (op.c). */
struct keel__close_wait {
	int fd;
	keel_promise *p;
	struct keel__close_wait *next;
};

struct keel_loop {
	const keel__backend *be;
	void *be_data;
	keel_loop_opts opts;
	uint64_t now_ns;
	bool stopping; /* keel_loop_stop: run returns after this tick */
	bool freeing;  /* keel_loop_free is draining the kernel */
	bool in_run;   /* inside keel_loop_run */

	/*
	 * SIGPIPE (loop.c): blocked while the loop runs work that can raise it
	 * -- for all of keel_loop_run, and in a keel_loop_run_once tick from
	 * when such an op is live (keel__op_may_sigpipe) -- then put back.
	 */
	uint32_t sigpipe_ops; /* live ops that can raise it */
	bool in_tick;         /* inside the outermost keel_loop_run_once */
	bool sp_held, sp_blocked, sp_was_pending;
	void *user_data;

	/* Ready queue: settled promises whose consumer must run. */
	keel_promise *ready_head, *ready_tail;

	/* Pools. */
	keel_promise *promise_free;
	struct keel__pslab *pslabs; /* promise slabs (pool.c) */
	void **slabs;
	uint32_t nslabs, slabs_cap;
	struct keel__memfree *mem_free[KEEL__MEM_CLASSES];
	keel_ctx *ctx_free;
	uint32_t ctx_free_count;
	struct keel__chunk *chunk_free;
	uint32_t chunk_free_count;

	/* Op table: slot -> op; free ops are chained through op->next. */
	keel__op **ops;
	uint32_t ops_cap;
	keel__op *op_free;       /* full-size ops */
	keel__op *op_free_small; /* ops of keel__op_kind_small kinds */
	uint32_t ops_live, ops_daemon;
	uint32_t holds; /* work outside the loop that will post back (name lookups): keeps it alive */

	/*
	 * Operations in flight per descriptor, and closes waiting for them to
	 * reach zero: a close never overtakes an operation on the same fd, so
	 * a late operation cannot land on a new file that reuses the number.
	 */
	uint32_t *fdrefs;
	int nfdrefs;
	keel__op *closes;                     /* chained through op->next */
	struct keel__close_wait *close_waits; /* closes that found no op slot */
	uint32_t nclose_waits;

	/* Timer heap (binary, by deadline). */
	keel_timer **heap;
	uint32_t heap_len, heap_cap;
	bool timers_firing; /* inside keel__timer_expire */

	keel__bufpool bufpool;

	/*
	 * Cross-thread posts, through an eventfd read op that is allocated with
	 * the loop and re-armed for its whole life: waking the loop never
	 * depends on finding a free op slot.
	 */
	pthread_mutex_t post_mu;
	struct keel__post *post_head, *post_tail;
	int post_efd;
	uint64_t post_val;
	keel__op *post_op;
	bool post_running; /* the posts are due on the ready queue */
	bool post_rearm;   /* the wake-up op ended in an error: re-armed from the ready queue */

	keel_loop_stats stats;
};

/* pool.c: small-object allocator with per-size free lists (no malloc in steady state). */
void *keel__mem_alloc(keel_loop *loop, size_t size);
void keel__mem_free(keel_loop *loop, void *ptr, size_t size);

keel_promise *keel__promise_alloc(keel_loop *loop);
/* Give back promise slabs whose promises are all free (a few are kept). */
void keel__promise_pool_trim(keel_loop *loop);
void keel__promise_free(keel_loop *loop, keel_promise *p);
keel__op *keel__op_new(keel_loop *loop, int kind, int fd);
void keel__op_free(keel_loop *loop, keel__op *op);
void keel__pools_fini(keel_loop *loop);

/* promise.c */
void keel__promise_unref(keel_promise *p);
void keel__ready_run(keel_loop *loop, unsigned max);
/* Attach an internal consumer to p (takes the consumer handle). */
void keel__promise_listen(keel_promise *p, void (*notify)(keel_promise *, void *), void *arg);
/* Set the producer's cancel hook. */
void keel__promise_set_cancel(keel_promise *p, void (*fn)(keel_promise *, void *), void *arg);
/* A pending promise of the loop, with producer and consumer references. */
keel_promise *keel__promise_make(keel_loop *loop, keel_ctx *ctx);

/* timer.c (the public calls are in keel/timer.h; these names stay for the callers not yet moved). */
static inline void keel__timer_init(keel__timer *t, keel_timer_fn fn)
{
	keel_timer_init(t, fn);
}
static inline void keel__timer_start(keel_loop *loop, keel__timer *t, uint64_t delay_ms)
{
	keel_timer_arm(loop, t, delay_ms);
}
static inline void keel__timer_stop(keel_loop *loop, keel__timer *t)
{
	keel_timer_disarm(loop, t);
}
static inline bool keel__timer_armed(const keel__timer *t)
{
	return keel_timer_is_armed(t);
}
/* Nanoseconds until the nearest deadline, -1 if none. */
int64_t keel__timer_next(keel_loop *loop);
void keel__timer_expire(keel_loop *loop);
/* keel_loop_free: every armed timer reads as disarmed, none runs. */
void keel__timer_forget_all(keel_loop *loop);

/* op.c */
void keel__fd_ref(keel_loop *loop, int fd);
void keel__fd_unref(keel_loop *loop, int fd);
keel_promise *keel__op_start(keel_loop *loop, keel__op *op);
void keel__op_cancel(keel_loop *loop, keel__op *op);
/* Hand op to the backend (or, in fault builds, to an injected completion). */
void keel__op_submit(keel_loop *loop, keel__op *op);
/* keel_close when the op table is full: close(2) once nothing is in flight on fd. Never fails. */
keel_promise *keel__close_without_op(keel_loop *loop, int fd);
void keel__close_now(keel_loop *loop, keel_promise *p, int fd);

/* loop.c: the wake-up op completed (op.c hands it over; it is never freed but by keel_loop_free). */
void keel__loop_post_complete(keel_loop *loop, int res);

/*
 * Ops whose system call can raise SIGPIPE: splice and sendfile(2) to a
 * socket, write(2) to a pipe -- none takes MSG_NOSIGNAL, as sends do.
 */
static inline bool keel__op_may_sigpipe(int kind)
{
	return kind == KEEL__OP_SENDFILE || kind == KEEL__OP_WRITE;
}
/* loop.c: block SIGPIPE until the tick (or run) ends; a no-op when already held. */
void keel__sigpipe_hold(keel_loop *loop);
/* loop.c: whether work remains (what keel_loop_run waits for): operations, timers, continuations. */
bool keel__loop_alive(const keel_loop *loop);

/* arena.c */
void keel__ctx_pool_fini(keel_loop *loop);
/* Free contexts and chunks kept for reuse, down to keep of each. */
void keel__ctx_pool_trim(keel_loop *loop, unsigned keep);

/* buf.c */
int keel__bufpool_init(keel_loop *loop);
void keel__bufpool_fini(keel_loop *loop);
void keel__bufpool_park(keel_loop *loop, keel__op *op);
/* keel_loop_trim: the pages of the buffers nobody holds go back (when the backend says it is safe). */
void keel__bufpool_trim(keel_loop *loop);
/* Once per tick: re-arm as many parked streams as there are free buffers (buf.c explains why). */
void keel__bufpool_rewake(keel_loop *loop);
/* A completion reported buffer buf: count it in use, with one reference. */
void keel__buf_claim(keel_loop *loop, keel_buf *buf);

static inline keel_promise *keel__rejected(keel_loop *loop, int err)
{
	keel_promise *p = keel_promise_new(loop);
	keel_promise_reject(p, err);
	return p;
}

#endif
