/*
 * The epoll backend: io_uring's completion interface, emulated.
 *
 * Submissions are queued and attempted at the next poll, optimistically,
 * before waiting (a socket usually has data or room already). An attempt that
 * would block parks the op on its descriptor's read or write list; the
 * descriptor is registered once, edge-triggered, and each edge re-attempts
 * the ops waiting there. Multishot accept and receive are loops bounded per
 * edge, requeued when the bound is hit so one busy socket cannot starve the
 * rest. Regular files, which epoll cannot wait for, go to filepool.c.
 * Results reach the core exactly as io_uring's CQEs would.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "epoll.h"
#include "keel/log.h"

#define POOL_TAG UINT64_MAX

void keel__ep_push(keel__op **head, keel__op **tail, keel__op *op)
{
	op->next = NULL;
	if (*tail)
		(*tail)->next = op;
	else
		*head = op;
	*tail = op;
}

keel__op *keel__ep_pop(keel__op **head, keel__op **tail)
{
	keel__op *op = *head;
	if (op) {
		*head = op->next;
		if (!*head)
			*tail = NULL;
		op->next = NULL;
	}
	return op;
}

bool keel__ep_unlink(keel__op **head, keel__op **tail, keel__op *op)
{
	keel__op *prev = NULL;
	for (keel__op *it = *head; it; prev = it, it = it->next) {
		if (it != op)
			continue;
		if (prev)
			prev->next = it->next;
		else
			*head = it->next;
		if (*tail == it)
			*tail = prev;
		it->next = NULL;
		return true;
	}
	return false;
}

void keel__ep_defer(keel__epoll *ep, keel__op *op, int res)
{
	op->be_state = EP_DONE;
	op->be_scratch = res;
	keel__ep_push(&ep->done, &ep->done_tail, op);
}

static struct keel__epfd *fd_entry(keel__epoll *ep, int fd)
{
	if (fd < 0)
		return NULL;
	if (fd >= ep->nfds) {
		int n = ep->nfds ? ep->nfds : 1024;
		while (n <= fd)
			n *= 2;
		struct keel__epfd *f = realloc(ep->fds, (size_t)n * sizeof(*f));
		if (!f)
			return NULL;
		memset(f + ep->nfds, 0, (size_t)(n - ep->nfds) * sizeof(*f));
		ep->fds = f;
		ep->nfds = n;
	}
	return &ep->fds[fd];
}

void keel__ep_fd_reset(keel__epoll *ep, int fd)
{
	if (fd >= 0 && fd < ep->nfds) {
		ep->fds[fd].registered = 0;
		ep->fds[fd].nonblock_set = 0;
		ep->fds[fd].hup = 0;
	}
}

void keel__ep_fd_nonblock(keel__epoll *ep, int fd)
{
	struct keel__epfd *e = fd_entry(ep, fd);
	if (!e || e->nonblock_set)
		return;
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0 && !(fl & O_NONBLOCK))
		fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	e->nonblock_set = 1;
}

static int fd_wait(keel__epoll *ep, keel__op *op, bool write)
{
	struct keel__epfd *e = fd_entry(ep, op->fd);
	if (!e)
		return -ENOMEM;
	/*
	 * Registered once per descriptor, edge-triggered. A descriptor closed
	 * with close(2) instead of keel_close leaves the kernel's epoll set
	 * without telling us, and its number can come back as a new file; so
	 * an op checks the registration (MOD, which also re-reports readiness)
	 * the first time it has to wait. A receive stream does that once per
	 * connection, not once per message.
	 */
	struct epoll_event ev = {
	    .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
	    .data.u64 = (uint64_t)op->fd,
	};
	if (!e->registered) {
		if (epoll_ctl(ep->epfd, EPOLL_CTL_ADD, op->fd, &ev) < 0) {
			if (errno != EEXIST || epoll_ctl(ep->epfd, EPOLL_CTL_MOD, op->fd, &ev) < 0)
				return -errno;
		}
		e->registered = 1;
		op->be_flags |= EPF_CHECKED;
	} else if (!(op->be_flags & EPF_CHECKED)) {
		if (epoll_ctl(ep->epfd, EPOLL_CTL_MOD, op->fd, &ev) < 0) {
			if (errno != ENOENT || epoll_ctl(ep->epfd, EPOLL_CTL_ADD, op->fd, &ev) < 0)
				return -errno;
		}
		op->be_flags |= EPF_CHECKED;
	}
	op->be_state = write ? EP_WAIT_WR : EP_WAIT_RD;
	if (write) {
		keel__op *tail = e->wr;
		while (tail && tail->next)
			tail = tail->next;
		op->next = NULL;
		if (tail)
			tail->next = op;
		else
			e->wr = op;
	} else {
		keel__op *tail = e->rd;
		while (tail && tail->next)
			tail = tail->next;
		op->next = NULL;
		if (tail)
			tail->next = op;
		else
			e->rd = op;
	}
	return 0;
}

static bool fd_unwait(keel__epoll *ep, keel__op *op)
{
	if (op->fd < 0 || op->fd >= ep->nfds)
		return false;
	struct keel__epfd *e = &ep->fds[op->fd];
	keel__op **head = op->be_state == EP_WAIT_WR ? &e->wr : &e->rd;
	keel__op *prev = NULL;
	for (keel__op *it = *head; it; prev = it, it = it->next) {
		if (it == op) {
			if (prev)
				prev->next = it->next;
			else
				*head = it->next;
			op->next = NULL;
			return true;
		}
	}
	return false;
}

static bool is_file_kind(int kind)
{
	return kind == KEEL__OP_OPEN || kind == KEEL__OP_READ || kind == KEEL__OP_WRITE ||
	       kind == KEEL__OP_STATX || kind == KEEL__OP_FSYNC || kind == KEEL__OP_UNLINK ||
	       kind == KEEL__OP_RENAME || kind == KEEL__OP_MKDIR;
}

static void cancel_waiters(keel__epoll *ep, int fd);

static void attempt(keel_loop *loop, keel__epoll *ep, keel__op *op)
{
	if ((op->flags & KEEL__OPF_CANCELED) && op->kind != KEEL__OP_CLOSE) {
		/* Cancelled while it waited its turn (ep_cancel found it between queues): end it. */
		keel__op_complete(loop, op, -ECANCELED, 0, 0);
		return;
	}
	if (is_file_kind(op->kind)) {
		op->be_flags |= EPF_POOL;
		int err = keel__ep_pool_queue(ep, op, ep->threads_max);
		if (err < 0)
			keel__op_complete(loop, op, err, 0, 0);
		return;
	}
	if (op->kind == KEEL__OP_CLOSE) {
		/* Nothing may stay waiting on a closed descriptor. */
		cancel_waiters(ep, op->fd);
		if (op->fd >= 0 && op->fd < ep->nfds) {
			if (ep->fds[op->fd].registered)
				epoll_ctl(ep->epfd, EPOLL_CTL_DEL, op->fd, NULL);
			keel__ep_fd_reset(ep, op->fd);
		}
		int res = close(op->fd) < 0 ? -errno : 0;
		keel__op_complete(loop, op, res, 0, 0);
		return;
	}
	op->be_state = EP_RUNNING;
	int r = keel__ep_attempt_net(loop, ep, op);
	if (r == ATT_WAIT_RD || r == ATT_WAIT_WR) {
		int err = fd_wait(ep, op, r == ATT_WAIT_WR);
		if (err < 0)
			keel__op_complete(loop, op, err, 0, 0);
	} else if (r == ATT_REQUEUE) {
		op->be_state = EP_PENDING;
		keel__ep_push(&ep->pending, &ep->pending_tail, op);
	}
}

static void ep_submit(keel_loop *loop, keel__op *op)
{
	keel__epoll *ep = keel__loop_be(loop);
	if (op->kind == KEEL__OP_CONNECT)
		keel__ep_fd_reset(ep, op->fd); /* a new socket may carry an old number */
	op->be_state = EP_PENDING;
	op->be_scratch = 0;
	keel__ep_push(&ep->pending, &ep->pending_tail, op);
}

static void ep_inject(keel_loop *loop, keel__op *op, int res)
{
	keel__ep_defer(keel__loop_be(loop), op, res);
}

static void ep_cancel(keel_loop *loop, keel__op *op)
{
	keel__epoll *ep = keel__loop_be(loop);
	if (op->be_flags & EPF_POOL) {
		/* A file thread may be writing be_state: only the pool looks, under its lock. */
		if (keel__ep_pool_cancel(ep, op))
			keel__ep_defer(ep, op, -ECANCELED);
		return;
	}
	switch (op->be_state) {
	case EP_PENDING:
		keel__ep_unlink(&ep->pending, &ep->pending_tail, op);
		keel__ep_defer(ep, op, -ECANCELED);
		break;
	case EP_WAIT_RD:
	case EP_WAIT_WR:
		fd_unwait(ep, op);
		keel__ep_defer(ep, op, -ECANCELED);
		break;
	default:
		/* Running or already done: its result is on its way; attempts check the flags. */
		break;
	}
}

/* Cancel every op waiting for readiness on fd (results reported at the next poll). */
static void cancel_waiters(keel__epoll *ep, int fd)
{
	if (fd < 0 || fd >= ep->nfds)
		return;
	struct keel__epfd *e = &ep->fds[fd];
	keel__op *lists[2] = {e->rd, e->wr};
	e->rd = e->wr = NULL;
	for (int i = 0; i < 2; i++) {
		while (lists[i]) {
			keel__op *w = lists[i];
			lists[i] = w->next;
			w->flags |= KEEL__OPF_CANCELED;
			keel__ep_defer(ep, w, -ECANCELED);
		}
	}
}

/* Cancel the ops on fd in a queue (the pending list, or the file pool's jobs). */
static void cancel_queued(keel__epoll *ep, keel__op **head, keel__op **tail, int fd)
{
	keel__op **pp = head;
	keel__op *prev = NULL;
	while (*pp) {
		keel__op *op = *pp;
		if (op->fd == fd && op->kind != KEEL__OP_CLOSE) {
			*pp = op->next;
			if (*tail == op)
				*tail = prev;
			op->flags |= KEEL__OPF_CANCELED;
			keel__ep_defer(ep, op, -ECANCELED);
			continue;
		}
		prev = op;
		pp = &op->next;
	}
}

static void ep_cancel_fd(keel_loop *loop, int fd)
{
	keel__epoll *ep = keel__loop_be(loop);
	cancel_waiters(ep, fd);
	cancel_queued(ep, &ep->pending, &ep->pending_tail, fd);
	/* File-pool jobs on fd: those not started yet are cancelled; running ones finish. */
	pthread_mutex_lock(&ep->mu);
	cancel_queued(ep, &ep->jobs, &ep->jobs_tail, fd);
	pthread_mutex_unlock(&ep->mu);
}

static void run_list(keel_loop *loop, keel__epoll *ep, keel__op *list)
{
	while (list) {
		keel__op *op = list;
		list = op->next;
		op->next = NULL;
		attempt(loop, ep, op);
	}
}

/*
 * Attempt a list taken off a queue. Its ops are marked idle first: one
 * op's completion may cancel a later one, and ep_cancel must then leave it
 * to its attempt (which sees the cancel and ends it once) rather than look
 * for it on a queue it has left and report it a second time.
 */
static void run_detached(keel_loop *loop, keel__epoll *ep, keel__op *list)
{
	for (keel__op *op = list; op; op = op->next)
		op->be_state = EP_IDLE;
	run_list(loop, ep, list);
}

/*
 * Attempt the submitted ops, for at most rounds passes (what the attempts
 * themselves submit is picked up by the next pass, or the next tick).
 */
static void run_pending(keel_loop *loop, keel__epoll *ep, unsigned rounds)
{
	for (unsigned round = 0; ep->pending && round < rounds; round++) {
		keel__op *list = ep->pending;
		ep->pending = ep->pending_tail = NULL;
		run_detached(loop, ep, list);
	}
}

static unsigned drain_done(keel_loop *loop, keel__epoll *ep)
{
	unsigned n = 0;
	keel__op *op;
	while ((op = keel__ep_pop(&ep->done, &ep->done_tail))) {
		op->be_state = EP_IDLE;
		keel__op_complete(loop, op, (int)op->be_scratch, 0, 0);
		n++;
	}
	return n;
}

static int ep_poll(keel_loop *loop, int64_t timeout_ns, unsigned max)
{
	keel__epoll *ep = keel__loop_be(loop);
	unsigned before = (unsigned)keel__loop_completions(loop);

	/*
	 * Attempt what was submitted since the last poll (resubmissions
	 * included, bounded). Their completions run now, so they must see the
	 * clock of now, not of the end of the last wait: deadlines armed and
	 * queue delays measured from them would be short by however long the
	 * loop was away.
	 */
	if (ep->pending || ep->done)
		keel__loop_update_time(loop);
	run_pending(loop, ep, 4);
	drain_done(loop, ep);

	if (ep->pending || ep->done || (unsigned)keel__loop_completions(loop) != before)
		timeout_ns = 0;

	struct epoll_event evs[256];
	int maxev = max < 256 ? (int)max : 256;
	struct timespec ts, *tsp = NULL;
	if (timeout_ns >= 0) {
		ts.tv_sec = timeout_ns / 1000000000ll;
		ts.tv_nsec = timeout_ns % 1000000000ll;
		tsp = &ts;
	}
	keel__loop_count_submit(loop, 0);
	int n = epoll_pwait2(ep->epfd, evs, maxev, tsp, NULL);
	if (n < 0 && errno == ENOSYS) {
		int ms = timeout_ns < 0 ? -1 : (int)((timeout_ns + 999999) / 1000000);
		n = epoll_wait(ep->epfd, evs, maxev, ms);
	}
	if (n < 0)
		return errno == EINTR ? 0 : -errno;
	keel__loop_update_time(loop); /* events are handled at the time they arrived */

	for (int i = 0; i < n; i++) {
		uint64_t tag = evs[i].data.u64;
		if (tag == POOL_TAG) {
			keel__ep_pool_reap(ep);
			continue;
		}
		int fd = (int)tag;
		if (fd >= ep->nfds)
			continue;
		struct keel__epfd *e = &ep->fds[fd];
		uint32_t what = evs[i].events;
		if (what & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
			e->hup = 1;
		if (what & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) {
			keel__op *list = e->rd;
			e->rd = NULL;
			run_detached(loop, ep, list);
		}
		if (fd < ep->nfds && (what & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
			e = &ep->fds[fd];
			keel__op *list = e->wr;
			e->wr = NULL;
			run_detached(loop, ep, list);
		}
		/*
		 * What this descriptor's completions just submitted (a reply, say)
		 * goes out now, while its data is still hot in cache, as a classic
		 * read-then-write server would do.
		 */
		run_pending(loop, ep, 1);
	}
	/*
	 * Work the completions just submitted (a reply sent from a receive
	 * callback, say) goes out in this tick, not after another wait.
	 */
	run_pending(loop, ep, 2);
	drain_done(loop, ep);
	return (int)((unsigned)keel__loop_completions(loop) - before);
}

static int ep_init(keel_loop *loop, keel_loop_opts *opts)
{
	keel__epoll *ep = calloc(1, sizeof(*ep));
	if (!ep)
		return -ENOMEM;
	ep->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (ep->epfd < 0)
		goto out_errno;
	ep->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (ep->efd < 0)
		goto out_errno;
	struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.u64 = POOL_TAG};
	if (epoll_ctl(ep->epfd, EPOLL_CTL_ADD, ep->efd, &ev) < 0)
		goto out_errno;
	pthread_mutex_init(&ep->mu, NULL);
	pthread_cond_init(&ep->cv, NULL);
	ep->threads_max = opts->file_threads ? opts->file_threads : 1;
	const char *sq_env = getenv("KEEL_SQPOLL"), *zc_env = getenv("KEEL_SEND_ZC");
	if (opts->sqpoll > 0 || (opts->sqpoll < 0 && sq_env && *sq_env && strcmp(sq_env, "0") != 0))
		keel_log(KEEL_LOG_INFO, "SQPOLL needs io_uring; the epoll backend runs without it");
	if (opts->send_zc_min_bytes > 0 ||
	    (opts->send_zc_min_bytes < 0 && zc_env && *zc_env && strcmp(zc_env, "0") != 0))
		keel_log(KEEL_LOG_INFO, "zero-copy send needs io_uring; the epoll backend uses plain send");
	opts->send_zc_min_bytes = 0;
	keel__loop_set_be(loop, ep);
	return 0;

out_errno:;
	int err = -errno;
	if (ep->epfd >= 0)
		close(ep->epfd);
	if (ep->efd > 0)
		close(ep->efd);
	free(ep);
	return err;
}

static void ep_fini(keel_loop *loop)
{
	keel__epoll *ep = keel__loop_be(loop);
	if (!ep)
		return;
	keel__ep_pool_fini(ep);
	pthread_mutex_destroy(&ep->mu);
	pthread_cond_destroy(&ep->cv);
	close(ep->efd);
	close(ep->epfd);
	free(ep->fds);
	free(ep);
	keel__loop_set_be(loop, NULL);
}

static int ep_bufpool_init(keel_loop *loop, keel__bufpool *pool)
{
	(void)loop;
	(void)pool;
	return 0; /* the core's free stack is the pool */
}

static void ep_bufpool_fini(keel_loop *loop, keel__bufpool *pool)
{
	(void)loop;
	(void)pool;
}

static void ep_buf_recycle(keel_loop *loop, keel__bufpool *pool, uint16_t bid)
{
	(void)loop;
	pool->free_ids[pool->nfree++] = bid;
}

static bool ep_feature(keel_loop *loop, const char *name)
{
	(void)loop;
	(void)name;
	return false;
}

static bool ep_bufs_trimmable(keel_loop *loop)
{
	(void)loop;
	return true; /* free buffers are on keel's own stack: nothing else writes into them */
}

const keel__backend keel__backend_epoll = {
    .name = "epoll",
    .init = ep_init,
    .fini = ep_fini,
    .submit = ep_submit,
    .inject = ep_inject,
    .cancel = ep_cancel,
    .cancel_fd = ep_cancel_fd,
    .poll = ep_poll,
    .bufpool_init = ep_bufpool_init,
    .bufpool_fini = ep_bufpool_fini,
    .buf_recycle = ep_buf_recycle,
    .feature = ep_feature,
    .bufs_trimmable = ep_bufs_trimmable,
};
