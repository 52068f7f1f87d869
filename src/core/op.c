/*
 * Operations: the bridge from a kernel completion to a settled promise.
 *
 * A backend reports each completion with io_uring's vocabulary; this file
 * turns it into keel semantics, identically for both backends: short sends
 * are continued, receive streams that ran out of buffers are parked and
 * re-armed, multishot streams the kernel ended early are re-armed, connect
 * deadlines become -ETIMEDOUT. An op is freed (its generation bumped) only
 * when its last completion has arrived, so the buffers it lent the kernel are
 * never released early, cancelled or not.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fault.h"
#include "internal.h"

static void op_cancel_hook(keel_promise *p, void *arg)
{
	keel__op_cancel(p->loop, arg);
}

void keel__fd_ref(keel_loop *loop, int fd)
{
	if (fd >= loop->nfdrefs) {
		int n = loop->nfdrefs ? loop->nfdrefs : 1024;
		while (n <= fd)
			n *= 2;
		uint32_t *t = realloc(loop->fdrefs, (size_t)n * sizeof(*t));
		if (!t)
			keel__oom();
		memset(t + loop->nfdrefs, 0, (size_t)(n - loop->nfdrefs) * sizeof(*t));
		loop->fdrefs = t;
		loop->nfdrefs = n;
	}
	loop->fdrefs[fd]++;
}

void keel__fd_unref(keel_loop *loop, int fd)
{
	KEEL__ASSERT(fd < loop->nfdrefs && loop->fdrefs[fd] > 0);
	if (--loop->fdrefs[fd] > 0)
		return;
	/* The last operation on fd is done: a close that waited for it goes now. */
	for (keel__op **pp = &loop->closes; *pp; pp = &(*pp)->next) {
		keel__op *c = *pp;
		if (c->fd == fd) {
			*pp = c->next;
			c->next = NULL;
			keel__op_submit(loop, c);
			return;
		}
	}
	for (struct keel__close_wait **pp = &loop->close_waits; *pp; pp = &(*pp)->next) {
		struct keel__close_wait *w = *pp;
		if (w->fd == fd) {
			*pp = w->next;
			loop->nclose_waits--;
			keel__close_now(loop, w->p, fd);
			keel__mem_free(loop, w, sizeof(*w));
			return;
		}
	}
}

void keel__close_now(keel_loop *loop, keel_promise *p, int fd)
{
	(void)loop;
	if (close(fd) < 0 && errno != EINTR)
		keel_promise_reject(p, -errno);
	else
		keel_promise_resolve(p, 0, NULL); /* (EINTR: Linux has released the descriptor anyway) */
}

/*
 * A close with no operation slot to spare: done here, with close(2), once
 * nothing is in flight on fd. Cleanup must never fail for want of a slot
 * (a refused close would leak the descriptor).
 */
keel_promise *keel__close_without_op(keel_loop *loop, int fd)
{
	keel_promise *p = keel__promise_make(loop, NULL);
	if (fd < 0 || fd >= loop->nfdrefs || !loop->fdrefs[fd]) {
		keel__close_now(loop, p, fd);
		return p;
	}
	struct keel__close_wait *w = keel__mem_alloc(loop, sizeof(*w));
	w->fd = fd;
	w->p = p;
	w->next = loop->close_waits;
	loop->close_waits = w;
	loop->nclose_waits++;
	for (keel__op *o = loop->bufpool.waiters, *next; o; o = next) {
		next = o->next;
		if (o->fd == fd)
			keel__op_cancel(loop, o);
	}
	loop->be->cancel_fd(loop, fd);
	return p;
}

void keel__op_submit(keel_loop *loop, keel__op *op)
{
#ifdef KEEL_FAULT
	int err = keel__fault_op(op);
	if (err < 0) {
		loop->be->inject(loop, op, err);
		return;
	}
#endif
	loop->be->submit(loop, op);
}

static bool op_holds_fd(const keel__op *op)
{
	return op->fd >= 0 && op->kind != KEEL__OP_CLOSE;
}

keel_promise *keel__op_start(keel_loop *loop, keel__op *op)
{
	keel_promise *p = keel__promise_make(loop, NULL);
	op->promise = p;
	keel__promise_set_cancel(p, op_cancel_hook, op);
	loop->stats.ops_submitted++;
	if (op_holds_fd(op)) {
		keel__fd_ref(loop, op->fd);
		op->flags |= KEEL__OPF_FDREF;
	}
	if (op->kind == KEEL__OP_CLOSE && op->fd >= 0 && op->fd < loop->nfdrefs && loop->fdrefs[op->fd]) {
		/* Cancel what is in flight on fd; close once all of it has completed. */
		op->next = loop->closes;
		loop->closes = op;
		/* Streams parked for a buffer are not in the kernel: end them here. */
		for (keel__op *w = loop->bufpool.waiters, *next; w; w = next) {
			next = w->next;
			if (w->fd == op->fd)
				keel__op_cancel(loop, w);
		}
		loop->be->cancel_fd(loop, op->fd);
		return p;
	}
	keel__op_submit(loop, op);
	return p;
}

static void op_finish(keel_loop *loop, keel__op *op, int64_t res)
{
	keel_promise *p = op->promise;
	if (op->kind == KEEL__OP_CONNECT)
		keel__timer_stop(loop, &op->u.connect.timer);
	keel__op_free(loop, op);
	if (res < 0)
		keel_promise_reject(p, (int)res);
	else
		keel_promise_resolve(p, res, NULL);
}

void keel__op_cancel(keel_loop *loop, keel__op *op)
{
	if (op->flags & KEEL__OPF_CANCELED)
		return;
	op->flags |= KEEL__OPF_CANCELED;
	if (op->flags & KEEL__OPF_PARKED) {
		/* Not in the kernel: unlink from the buffer waiters and end it here. */
		keel__bufpool *pool = &loop->bufpool;
		keel__op **pp = &pool->waiters;
		keel__op *prev = NULL;
		while (*pp && *pp != op) {
			prev = *pp;
			pp = &(*pp)->next;
		}
		if (*pp) {
			*pp = op->next;
			if (pool->waiters_tail == op)
				pool->waiters_tail = prev;
		}
		op->flags &= (uint8_t)~KEEL__OPF_PARKED;
		op_finish(loop, op, -ECANCELED);
		return;
	}
	loop->be->cancel(loop, op);
}

static void resubmit(keel_loop *loop, keel__op *op)
{
	keel__op_submit(loop, op);
}

static bool op_ended_by_user(const keel__op *op)
{
	return op->flags & (KEEL__OPF_CANCELED | KEEL__OPF_STOPPED);
}

static void accept_complete(keel_loop *loop, keel__op *op, int res, unsigned flags)
{
	if (res >= 0) {
		/*
		 * Connections the kernel accepted before a stop took effect are
		 * still handed over: dropping them would reset a client for nothing.
		 */
		if (op->u.accept.fn(op->u.accept.ud, res) == KEEL_STOP && !op_ended_by_user(op)) {
			op->flags |= KEEL__OPF_STOPPED;
			loop->be->cancel(loop, op);
		}
		if (flags & KEEL__F_MORE)
			return;
		if (op_ended_by_user(op))
			op_finish(loop, op, -ECANCELED);
		else
			resubmit(loop, op); /* the kernel ended the multishot early: re-arm */
		return;
	}
	if (flags & KEEL__F_MORE)
		return;
	op_finish(loop, op, op_ended_by_user(op) ? -ECANCELED : res);
}

static void stream_complete(keel_loop *loop, keel__op *op, int res, unsigned flags, uint16_t bid)
{
	keel__bufpool *pool = &loop->bufpool;
	keel_buf *buf = NULL;

	if (flags & KEEL__F_BUFFER) {
		KEEL__ASSERT(bid < pool->count);
		buf = &pool->bufs[bid];
		keel__buf_claim(loop, buf);
		buf->len = res > 0 ? (uint32_t)res : 0;
	}
	if (res > 0) {
		KEEL__ASSERT(buf != NULL);
		/* Data the kernel received before a stop took effect is still delivered: never lost. */
		if (op->u.stream.fn(op->u.stream.ud, buf) == KEEL_STOP && !op_ended_by_user(op)) {
			op->flags |= KEEL__OPF_STOPPED;
			loop->be->cancel(loop, op);
		}
		keel_buf_release(buf);
		if (flags & KEEL__F_MORE)
			return;
		if (op_ended_by_user(op))
			op_finish(loop, op, -ECANCELED);
		else
			resubmit(loop, op);
		return;
	}
	if (buf)
		keel_buf_release(buf);
	if (flags & KEEL__F_MORE)
		return;
	if (res == -ENOBUFS && !op_ended_by_user(op)) {
		keel__bufpool_park(loop, op);
		return;
	}
	if (op_ended_by_user(op) && res != 0)
		res = -ECANCELED;
	op_finish(loop, op, res);
}

static void send_complete(keel_loop *loop, keel__op *op, int res)
{
#ifdef KEEL_FAULT
	if (op->u.send.fault_iovlen) {
		/* An injected short send: the rest of the cut piece, and the pieces after it, are owed. */
		struct msghdr *m = &op->u.send.msg;
		m->msg_iov[op->u.send.fault_iov].iov_len = op->u.send.fault_len;
		m->msg_iovlen = op->u.send.fault_iovlen;
		op->u.send.fault_iovlen = 0;
	}
#endif
	if (res < 0) {
		op_finish(loop, op, res);
		return;
	}
	op->u.send.done += (size_t)res;
	if (op->u.send.done >= op->u.send.total) {
		op_finish(loop, op, (int64_t)op->u.send.total);
		return;
	}
	if (res == 0 || (op->flags & KEEL__OPF_CANCELED)) {
		op_finish(loop, op, res == 0 ? -EPIPE : -ECANCELED);
		return;
	}
	/* Short send: skip what went out and continue with the rest. */
	struct msghdr *m = &op->u.send.msg;
	size_t skip = (size_t)res;
	while (skip && m->msg_iovlen) {
		if (skip >= m->msg_iov->iov_len) {
			skip -= m->msg_iov->iov_len;
			m->msg_iov++;
			m->msg_iovlen--;
		} else {
			m->msg_iov->iov_base = (char *)m->msg_iov->iov_base + skip;
			m->msg_iov->iov_len -= skip;
			skip = 0;
		}
	}
	resubmit(loop, op);
}

static void connect_complete(keel_loop *loop, keel__op *op, int res)
{
	if (res == 0 && !(op->flags & KEEL__OPF_CANCELED)) {
		op_finish(loop, op, op->fd);
		return;
	}
	close(op->fd);
	if (op->flags & KEEL__OPF_TIMEDOUT)
		res = -ETIMEDOUT;
	else if (res == 0)
		res = -ECANCELED;
	op_finish(loop, op, res);
}

static void sendfile_complete(keel_loop *loop, keel__op *op, int res)
{
	if (res < 0) {
		/* what went before is lost with the connection: an error, not a count */
		op_finish(loop, op, res);
		return;
	}
	op->u.sendfile.done += (size_t)res;
	if (res == 0 || op->u.sendfile.done >= op->u.sendfile.len || (op->flags & KEEL__OPF_CANCELED)) {
		op_finish(loop, op, (int64_t)op->u.sendfile.done);
		return;
	}
	resubmit(loop, op);
}

void keel__op_complete(keel_loop *loop, keel__op *op, int res, unsigned flags, uint16_t bid)
{
	loop->stats.completions++;
	if (op == loop->post_op) {
		keel__loop_post_complete(loop, res);
		return;
	}
	switch (op->kind) {
	case KEEL__OP_ACCEPT: accept_complete(loop, op, res, flags); break;
	case KEEL__OP_RECV_STREAM: stream_complete(loop, op, res, flags, bid); break;
	case KEEL__OP_SEND: send_complete(loop, op, res); break;
	case KEEL__OP_CONNECT: connect_complete(loop, op, res); break;
	case KEEL__OP_SENDFILE: sendfile_complete(loop, op, res); break;
	default:
		if (flags & KEEL__F_BUFFER)
			keel__buf_return(loop, bid);
		op_finish(loop, op, res);
		break;
	}
}

void keel__count_late(keel_loop *loop)
{
	loop->stats.late_completions++;
}
