/*
 * The loop: one tick = run ready continuations, one kernel round trip that
 * submits everything queued and waits for the nearest deadline, dispatch
 * completions, expire timers. Every stage is bounded so no single source of
 * work can starve the others.
 */
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "fault.h"
#include "internal.h"
#include "keel/log.h"

void keel_loop_opts_default(keel_loop_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->backend = KEEL_BACKEND_AUTO;
	o->sq_entries = 1024;
	o->recv_buf_count = 1024;
	o->recv_buf_size = 16384;
	o->ops_max = 65536;
	o->cqe_batch_max = 1024;
	o->ready_batch_max = 4096;
	o->sqpoll = -1;
	o->sqpoll_idle_ms = 50;
	o->send_zc_min_bytes = -1;
	o->file_threads = 4;
}

static uint64_t clock_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static bool pow2(unsigned v)
{
	return v && !(v & (v - 1));
}

/* ---- Cross-thread posts ------------------------------------------------- */

static void post_run(keel_promise *p, void *arg);

static void post_arm(keel_loop *loop)
{
	keel__op *op = loop->post_op;
	op->u.rw.buf = &loop->post_val;
	op->u.rw.len = sizeof(loop->post_val);
	keel__op_submit(loop, op);
}

void keel__loop_post_complete(keel_loop *loop, int res)
{
	/* Whatever the read said, the list is the truth; an error only re-arms. */
	if (loop->freeing) {
		/* keel_loop_free cancelled it: what is still posted is dropped there. */
		keel__op *op = loop->post_op;
		loop->post_op = NULL;
		keel__op_free(loop, op);
		return;
	}
	if (res < 0)
		/* from the ready queue: a re-arm that fails at once must not recurse */
		loop->post_rearm = true;
	else
		post_arm(loop);
	/*
	 * The posts run from the ready queue, like every continuation: never
	 * inside a backend's dispatch, where cancelling an operation it is
	 * about to attempt would go unseen.
	 */
	if (!loop->post_running) {
		loop->post_running = true;
		keel_promise *p = keel__promise_make(loop, NULL);
		keel_promise_resolve(p, 0, NULL);
		keel__promise_listen(p, post_run, NULL);
	}
}

static void post_run(keel_promise *p, void *arg)
{
	(void)arg;
	keel_loop *loop = p->loop;
	keel__promise_unref(p);
	loop->post_running = false;
	if (loop->post_rearm && !loop->freeing) {
		loop->post_rearm = false;
		post_arm(loop);
	}
	pthread_mutex_lock(&loop->post_mu);
	struct keel__post *list = loop->post_head;
	loop->post_head = loop->post_tail = NULL;
	pthread_mutex_unlock(&loop->post_mu);
	while (list) {
		struct keel__post *next = list->next;
		bool embedded = list->embedded; /* (fn may free an embedded node) */
		list->fn(loop, list->ud);
		if (!embedded)
			free(list);
		list = next;
	}
}

static void post_push(keel_loop *loop, struct keel__post *post);

int keel_loop_post(keel_loop *loop, void (*fn)(keel_loop *, void *), void *ud)
{
	struct keel__post *post = keel__malloc(sizeof(*post));
	if (!post)
		return -ENOMEM;
	post->fn = fn;
	post->drop = NULL;
	post->ud = ud;
	post->embedded = false;
	post_push(loop, post);
	return 0;
}

void keel__loop_post_node(keel_loop *loop, struct keel__post *node, void (*fn)(keel_loop *, void *),
                          void (*drop)(void *), void *ud)
{
	node->fn = fn;
	node->drop = drop;
	node->ud = ud;
	node->embedded = true;
	post_push(loop, node);
}

static void post_push(keel_loop *loop, struct keel__post *post)
{
	post->next = NULL;
	pthread_mutex_lock(&loop->post_mu);
	if (loop->post_tail)
		loop->post_tail->next = post;
	else
		loop->post_head = post;
	loop->post_tail = post;
	pthread_mutex_unlock(&loop->post_mu);
	uint64_t one = 1;
	ssize_t n = write(loop->post_efd, &one, sizeof(one));
	(void)n; /* EAGAIN means the counter is already non-zero: the loop wakes anyway */
}

/* ---- Watchers of freed loops ---------------------------------------------- */

static pthread_mutex_t watch_mu = PTHREAD_MUTEX_INITIALIZER;
static struct keel__loop_watcher *watchers;

void keel__loop_watch(struct keel__loop_watcher *w)
{
	pthread_mutex_lock(&watch_mu);
	w->next = watchers;
	watchers = w;
	pthread_mutex_unlock(&watch_mu);
}

/* ---- SIGPIPE -------------------------------------------------------------- */

/*
 * A send or splice to a socket whose peer has gone raises SIGPIPE in the
 * thread that made it, unless MSG_NOSIGNAL was passed -- and sendfile(2) and
 * splice(2) have no such flag. keel must never kill its host that way,
 * whatever the host's dispositions: while the loop runs, SIGPIPE is blocked
 * on its thread, and one raised meanwhile is consumed before the mask is put
 * back. (A host that blocks SIGPIPE itself keeps its own pending ones.)
 */
/* Block SIGPIPE on this thread if the host has not; true if this call did (restore it then). */
static bool sigpipe_block(bool *was_pending)
{
	sigset_t set, old;
	sigemptyset(&set);
	sigaddset(&set, SIGPIPE);
	if (pthread_sigmask(SIG_BLOCK, &set, &old) != 0 || sigismember(&old, SIGPIPE))
		return false; /* already blocked (by the host, or an outer call): nothing of ours to undo */
	sigset_t pending;
	sigpending(&pending);
	*was_pending = sigismember(&pending, SIGPIPE);
	return true;
}

static void sigpipe_restore(bool blocked, bool was_pending)
{
	if (!blocked)
		return;
	sigset_t set, pending;
	sigemptyset(&set);
	sigaddset(&set, SIGPIPE);
	sigpending(&pending);
	if (sigismember(&pending, SIGPIPE) && !was_pending) {
		static const struct timespec zero = {0, 0};
		while (sigtimedwait(&set, NULL, &zero) == SIGPIPE)
			;
	}
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

void keel__sigpipe_hold(keel_loop *loop)
{
	if (loop->sp_held)
		return;
	loop->sp_held = true;
	loop->sp_blocked = sigpipe_block(&loop->sp_was_pending);
}

static void sigpipe_release(keel_loop *loop)
{
	if (!loop->sp_held)
		return;
	loop->sp_held = false;
	sigpipe_restore(loop->sp_blocked, loop->sp_was_pending);
}

int keel__thread_start(pthread_t *t, void *(*fn)(void *), void *arg)
{
	/* Threads keel starts take no signals: the host's go to its own threads. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int err = pthread_create(t, NULL, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return err;
}

int keel_loop_new(keel_loop **out, const keel_loop_opts *user_opts)
{
	*out = NULL;
	keel_loop_opts opts;
	if (user_opts)
		opts = *user_opts;
	else
		keel_loop_opts_default(&opts);
	if (!pow2(opts.recv_buf_count) || opts.recv_buf_count > 32768 || opts.recv_buf_size == 0 ||
	    opts.ops_max == 0 || opts.cqe_batch_max == 0 || opts.ready_batch_max == 0)
		return -EINVAL;

	keel_loop *loop = calloc(1, sizeof(*loop));
	if (!loop)
		return -ENOMEM;
	loop->opts = opts;
	loop->now_ns = clock_ns();
	loop->post_efd = -1;
	pthread_mutex_init(&loop->post_mu, NULL);

	int err = keel__backend_open(loop, &loop->opts, &loop->be);
	if (err < 0)
		goto out_free;
	err = keel__bufpool_init(loop);
	if (err < 0)
		goto out_backend;
	loop->post_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (loop->post_efd < 0) {
		err = -errno;
		goto out_bufpool;
	}
	/* The wake-up op, for the loop's whole life (the table is empty: this cannot fail). */
	loop->post_op = keel__op_new(loop, KEEL__OP_READ_POLL, loop->post_efd);
	if (!loop->post_op) {
		err = -ENOMEM;
		goto out_efd;
	}
	loop->post_op->flags |= KEEL__OPF_DAEMON;
	loop->ops_daemon++;
	post_arm(loop);
	*out = loop;
	return 0;

out_efd:
	close(loop->post_efd);
out_bufpool:
	keel__bufpool_fini(loop);
out_backend:
	loop->be->fini(loop);
out_free:
	pthread_mutex_destroy(&loop->post_mu);
	free(loop);
	return err;
}

void keel_loop_free(keel_loop *loop)
{
	if (!loop)
		return;
	loop->stopping = true;
	loop->freeing = true;
	bool was_pending = false, blocked = sigpipe_block(&was_pending);
	/* Cancel everything in flight and wait for the kernel to let go of it. */
	for (uint32_t i = 0; i < loop->ops_cap; i++) {
		keel__op *op = loop->ops[i];
		if (op->kind)
			keel__op_cancel(loop, op);
	}
	for (int round = 0; (loop->ops_live || loop->nclose_waits) && round < 1000; round++)
		if (loop->be->poll(loop, 10 * 1000000ll, loop->opts.cqe_batch_max) < 0)
			break;
	if (loop->ops_live)
		keel_log(KEEL_LOG_WARN, "loop freed with %u operations still in the kernel", loop->ops_live);
	sigpipe_restore(blocked, was_pending);
	keel__bufpool_fini(loop);
	loop->be->fini(loop);
	pthread_mutex_lock(&watch_mu);
	for (struct keel__loop_watcher *w = watchers; w; w = w->next)
		w->forget(loop); /* work still running elsewhere will not post here */
	pthread_mutex_unlock(&watch_mu);
	if (loop->post_efd >= 0)
		close(loop->post_efd);
	struct keel__post *post = loop->post_head;
	while (post) {
		struct keel__post *next = post->next;
		bool embedded = post->embedded;
		if (post->drop)
			post->drop(post->ud); /* (may free an embedded node) */
		if (!embedded)
			free(post);
		post = next;
	}
	pthread_mutex_destroy(&loop->post_mu);
	keel__timer_forget_all(loop); /* before the pools go: sleeps keep their timers there */
	free(loop->heap);
	keel__ctx_pool_fini(loop);
	keel__pools_fini(loop);
	free(loop);
}

static bool loop_alive(const keel_loop *loop)
{
	return loop->ops_live > loop->ops_daemon || loop->heap_len || loop->ready_head || loop->holds ||
	       loop->nclose_waits;
}

bool keel__loop_alive(const keel_loop *loop)
{
	return loop_alive(loop);
}

static int tick(keel_loop *loop, int timeout_ms)
{
	/* now_ns is from the end of the last tick's wait: one clock read per tick. */
	loop->stats.ticks++;

	/* Leftover continuations (the ready stage is bounded) mean: do not block. */
	int64_t wait_ns = timeout_ms < 0 ? -1 : (int64_t)timeout_ms * 1000000ll;
	if (loop->ready_head || (loop->stopping && loop->in_run))
		wait_ns = 0; /* (a stop ends keel_loop_run; keel_loop_run_once still waits as asked) */
	int64_t t = keel__timer_next(loop);
	if (t >= 0 && (wait_ns < 0 || t < wait_ns))
		wait_ns = t;

	int n = loop->be->poll(loop, wait_ns, loop->opts.cqe_batch_max);
	if (n < 0 && n != -EINTR)
		return n;
	/* now_ns was read by the backend right after the kernel wait (keel__loop_update_time). */
	keel__timer_expire(loop);
	/* Continuations of this tick's completions run before the next wait. */
	keel__ready_run(loop, loop->opts.ready_batch_max);
	if (loop->bufpool.waiters && loop->bufpool.in_use < loop->bufpool.count)
		keel__bufpool_rewake(loop);
	return 0;
}

int keel_loop_run_once(keel_loop *loop, int timeout_ms)
{
	if (loop->in_run || loop->in_tick)
		return tick(loop, timeout_ms); /* (a continuation driving the loop: the outer call guards) */
	/*
	 * SIGPIPE is blocked only when an op that can raise it is live, now or
	 * from when one is made during the tick (keel__op_new): a tick of sends
	 * and receives, which carry MSG_NOSIGNAL, costs no signal-mask calls.
	 */
	loop->in_tick = true;
	if (loop->sigpipe_ops)
		keel__sigpipe_hold(loop);
	int err = tick(loop, timeout_ms);
	loop->in_tick = false;
	sigpipe_release(loop);
	return err;
}

int keel_loop_run(keel_loop *loop)
{
	int err = 0;
	bool hold = !loop->sp_held; /* (once for the whole run; a run inside a tick leaves it to the tick) */
	keel__sigpipe_hold(loop);
	loop->in_run = true;
	keel__ready_run(loop, loop->opts.ready_batch_max);
	/* A stop asked for before the run (or by a continuation just run) ends it after one tick. */
	while (loop_alive(loop)) {
		err = tick(loop, -1);
		if (err < 0 || loop->stopping)
			break;
	}
	loop->stopping = false;
	loop->in_run = false;
	if (hold)
		sigpipe_release(loop);
	return err < 0 ? err : 0;
}

void keel_loop_trim(keel_loop *loop)
{
	keel__ctx_pool_trim(loop, 16);
	keel__promise_pool_trim(loop);
	keel__bufpool_trim(loop);
#ifdef __GLIBC__
	malloc_trim(0); /* what the heap keeps in free chunks, including between live ones */
#endif
}

void keel_loop_stop(keel_loop *loop)
{
	loop->stopping = true;
}

const char *keel_loop_backend(const keel_loop *loop)
{
	return loop->be->name;
}

uint64_t keel_loop_now_ms(const keel_loop *loop)
{
	return loop->now_ns / 1000000ull;
}

uint64_t keel_loop_now_ns(const keel_loop *loop)
{
	return loop->now_ns;
}

uint64_t keel_loop_tick(const keel_loop *loop)
{
	return loop->stats.ticks;
}

bool keel_loop_feature(const keel_loop *loop, const char *name)
{
	return loop->be->feature((keel_loop *)loop, name);
}

void keel_loop_get_stats(const keel_loop *loop, keel_loop_stats *out)
{
	*out = loop->stats;
	out->ops_inflight = loop->ops_live - loop->ops_daemon;
}

void keel_loop_set_data(keel_loop *loop, void *data)
{
	loop->user_data = data;
}

void *keel_loop_data(const keel_loop *loop)
{
	return loop->user_data;
}

void *keel__loop_be(keel_loop *loop)
{
	return loop->be_data;
}

void keel__loop_set_be(keel_loop *loop, void *be)
{
	loop->be_data = be;
}

keel__bufpool *keel__loop_bufpool(keel_loop *loop)
{
	return &loop->bufpool;
}

void keel__loop_count_submit(keel_loop *loop, unsigned ops)
{
	(void)ops;
	loop->stats.submits++;
}

uint64_t keel__loop_completions(const keel_loop *loop)
{
	return loop->stats.completions;
}

void keel__loop_update_time(keel_loop *loop)
{
	loop->now_ns = clock_ns();
}
