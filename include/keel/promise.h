/*
 * keel_promise: a value or an error that arrives later, settled exactly once.
 *
 * Every transformation in keel is a synchronization stage plus a function:
 * keel_then/keel_map wait for one input, keel_all for every input, keel_any
 * for the first success, then run the function. Continuations never run
 * inside the call that registers them or the call that settles the promise;
 * they run from the loop's ready queue.
 *
 * Ownership. A promise has one producer (the operation, combinator or user
 * that settles it) and at most one consumer. The pointer a keel function
 * returns is the consumer's handle; passing it to keel_then, keel_all,
 * keel_timeout, keel_promise_done, ... hands it over, and the caller must not
 * touch it again. A handle that is never handed over must be given back with
 * keel_promise_release(). Promises come from a per-loop pool. A ud or arg
 * given with a function is passed back to it as is and never freed by keel:
 * keep it valid for as long as the function may still be called.
 *
 * Errors are negative errno values (or KEEL_E* codes), the same numbers keel
 * returns everywhere else. Cancellation settles with -ECANCELED once the
 * producer has let go of everything it lent to the kernel.
 *
 * keel_promise_new and keel_ctx_new return the object itself, unlike the
 * `int keel_x_new(keel_x **out, ...)` constructors: they are per-operation
 * allocators from the loop's pools, on the hot path, and cannot fail (out
 * of memory aborts), so there is no error to return.
 */
#ifndef KEEL_PROMISE_H
#define KEEL_PROMISE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loop.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keel_promise keel_promise;
typedef struct keel_ctx keel_ctx;

/*
 * What a promise settled with: err == 0 and a value (n, ptr), or err < 0.
 * ptr is handed from producer to consumer as is; keel never frees it (each
 * call that resolves with one says who owns it).
 */
typedef struct keel_outcome {
	int err;
	int64_t n;
	void *ptr;
} keel_outcome;

static inline keel_outcome keel_ok(int64_t n, void *ptr)
{
	keel_outcome o = {0, n, ptr};
	return o;
}

static inline keel_outcome keel_fail(int err)
{
	keel_outcome o = {err, 0, NULL};
	return o;
}

/* Continuation types. ctx is the request context carried by the chain (may be NULL). */
typedef keel_outcome (*keel_then_fn)(keel_ctx *ctx, keel_outcome in, void *ud);
typedef keel_promise *(*keel_flat_fn)(keel_ctx *ctx, keel_outcome in, void *ud);
typedef void (*keel_done_fn)(keel_ctx *ctx, keel_outcome in, void *ud);
typedef void (*keel_cancel_fn)(keel_promise *p, void *ud);

/* ---- Producing ---------------------------------------------------------- */

/*
 * A promise the caller settles with keel_promise_resolve/reject. The caller
 * holds both the producer side (until it settles) and the consumer handle.
 */
keel_promise *keel_promise_new(keel_loop *loop);

/*
 * Settle. Returns true if this call settled it, false if it was already
 * settled (the later value is ignored: settle-once). The producer's hold
 * on p ends with its settle: p may be back in the pool (even another
 * promise) by the next call, so settle a p once. The one exception is a p
 * the consumer cancelled without a hook (keel_promise_on_cancel): it is
 * held until the producer settles it, which returns false.
 */
bool keel_promise_resolve(keel_promise *p, int64_t n, void *ptr);
bool keel_promise_reject(keel_promise *p, int err);
bool keel_promise_settle(keel_promise *p, keel_outcome out);

/*
 * Called from keel_promise_cancel when a consumer asks to cancel a pending
 * promise made with keel_promise_new; the hook should stop the work and
 * settle p. Without a hook, the consumer sees -ECANCELED at once, and the
 * producer still settles p later as it would have (that settle is ignored
 * and returns false): p stays valid for the producer until then.
 */
void keel_promise_on_cancel(keel_promise *p, keel_cancel_fn fn, void *ud);

/* ---- Consuming ---------------------------------------------------------- */

/* fn runs on success or failure; its return value settles the new promise. */
keel_promise *keel_then(keel_promise *p, keel_then_fn fn, void *ud);

/* fn runs on success only; failures pass through unchanged. */
keel_promise *keel_map(keel_promise *p, keel_then_fn fn, void *ud);

/* fn runs on success and returns a promise whose outcome becomes the result. fn may return NULL to fail with -ENOMEM. */
keel_promise *keel_flat_map(keel_promise *p, keel_flat_fn fn, void *ud);

/* fn runs on success or failure and returns a promise whose outcome becomes the result. */
keel_promise *keel_then_flat(keel_promise *p, keel_flat_fn fn, void *ud);

/* fn runs on failure only and may recover; successes pass through. */
keel_promise *keel_catch(keel_promise *p, keel_then_fn fn, void *ud);

/* fn observes the outcome, which passes through unchanged. */
keel_promise *keel_finally(keel_promise *p, keel_done_fn fn, void *ud);

/* Terminal: fn observes the outcome (fn may be NULL); p is consumed. */
void keel_promise_done(keel_promise *p, keel_done_fn fn, void *ud);

/* Give back a handle without consuming the outcome. Does not cancel. */
void keel_promise_release(keel_promise *p);

/*
 * Ask the producer to stop: operations are cancelled down to the kernel
 * (IORING_OP_ASYNC_CANCEL), combinators cancel their pending inputs, timers
 * are removed. The promise still settles, normally with -ECANCELED, or with
 * its value if the work completed first. The handle stays the caller's.
 */
void keel_promise_cancel(keel_promise *p);

/*
 * A promise cancelled that has no cancel hook (made with keel_promise_new,
 * keel_promise_on_cancel never called) is settled for its consumer at once,
 * while its producer still holds it -- and whatever it writes to -- until
 * the producer settles it too. keel_promise_producer_holds says whether
 * that is so now; keel_promise_on_release sets fn to run, once, when the
 * producer lets go (fn NULL: forget a hook set before). An HTTP server uses
 * them to keep a request such a handler may still write to. on_release
 * only while producer_holds is true.
 */
bool keel_promise_producer_holds(const keel_promise *p);
void keel_promise_on_release(keel_promise *p, void (*fn)(keel_promise *p, void *arg), void *arg);

bool keel_promise_is_settled(const keel_promise *p);
/* Valid once settled. */
keel_outcome keel_promise_outcome(const keel_promise *p);
/* The loop p belongs to. */
keel_loop *keel_promise_loop(const keel_promise *p);

/* ---- Synchronization stages -------------------------------------------- */

/*
 * All: settles when every input has succeeded, with n = count and
 * results[i] = input i's outcome (results is borrowed: caller storage that
 * must outlive the settle; may be NULL), or at the first failure with that
 * error, after which the remaining inputs are cancelled. Takes the inputs;
 * the array ps is read before return. n == 0 resolves with n = 0.
 */
keel_promise *keel_all(keel_loop *loop, keel_promise *const *ps, size_t n, keel_outcome *results);

/*
 * Any: settles with the first success (its outcome), and cancels the rest;
 * if every input fails, rejects with the last error. *winner (if not NULL)
 * is set to the index that decided as the promise settles: caller storage,
 * borrowed until then. Takes the inputs, as keel_all does; ps is read
 * before return. n == 0 rejects with -EINVAL and leaves *winner alone.
 *
 * (All, Any, Race and keel_timeout drop the outcome of an input that
 * settles after they have decided -- a loser that succeeded in the same
 * tick, say. When a value owns memory (a client response), free it in a
 * stage on the input itself, before the combinator, or do the work there.)
 */
keel_promise *keel_any(keel_loop *loop, keel_promise *const *ps, size_t n, int *winner);

/* Race: settles with the first input to settle, success or failure; cancels the rest. Else as keel_any. */
keel_promise *keel_race(keel_loop *loop, keel_promise *const *ps, size_t n, int *winner);

/* Settles like p, or rejects with -ETIMEDOUT after timeout_ms and cancels p. Takes p. */
keel_promise *keel_timeout(keel_promise *p, uint64_t timeout_ms);

/* Resolves with 0 after ms milliseconds (user-space timer; no SQE per timer). */
keel_promise *keel_sleep(keel_loop *loop, uint64_t ms);

/* ---- Request context ---------------------------------------------------- */

/*
 * A per-request context with an arena. keel_ctx_new returns it with one
 * reference, the caller's. keel_promise_bind_ctx makes a promise (and every
 * promise derived from it by then/map/all/...) hold a reference too; the
 * arena is freed in one step when the last reference goes, i.e. when the
 * chain has ended and the caller has released its own.
 */
keel_ctx *keel_ctx_new(keel_loop *loop);
void keel_ctx_release(keel_ctx *ctx);
void keel_ctx_retain(keel_ctx *ctx);

/*
 * Arena allocation, 16-byte aligned, valid until the context is freed. NULL
 * on ENOMEM. keel_ctx_strdup copies s into the arena.
 */
void *keel_ctx_alloc(keel_ctx *ctx, size_t size);
char *keel_ctx_strdup(keel_ctx *ctx, const char *s);

/*
 * Call fn(ud) when the context is freed, before its arena goes. Any number
 * of hooks: each module (a handler, the static files, the proxy, a wrapper
 * around them) adds its own; they run last added first. Returns 0, or
 * -ENOMEM (the hook is not registered: undo whatever it was to undo).
 */
int keel_ctx_on_free(keel_ctx *ctx, void (*fn)(void *ud), void *ud);

/* Attach ctx to p (p takes a reference; the handle stays the caller's). Returns p for chaining. */
keel_promise *keel_promise_bind_ctx(keel_promise *p, keel_ctx *ctx);
/* p's context or NULL, without a new reference: keel_ctx_retain to keep it longer than p holds it. */
keel_ctx *keel_promise_ctx(const keel_promise *p);

#ifdef __cplusplus
}
#endif

#endif
