/*
 * The io_uring backend: ring setup with the best flags the kernel accepts,
 * the provided-buffer ring, and the tick's single submit-and-wait.
 *
 * Setup tries SINGLE_ISSUER|DEFER_TASKRUN first (completions are only
 * produced when this thread asks, so no inter-processor interrupts and no
 * task-work storms), falls back on EINVAL. Every SQE carries the op's slot and
 * generation; a completion whose generation no longer matches is dropped,
 * after returning any buffer it carried.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "keel/log.h"
#include "uring.h"

static const int needed_ops[] = {
    IORING_OP_CONNECT, IORING_OP_RECV,         IORING_OP_SENDMSG,  IORING_OP_SHUTDOWN, IORING_OP_CLOSE,
    IORING_OP_OPENAT2, IORING_OP_READ,         IORING_OP_WRITE,    IORING_OP_STATX,    IORING_OP_FSYNC,
    IORING_OP_SPLICE,  IORING_OP_ASYNC_CANCEL, IORING_OP_POLL_ADD, IORING_OP_UNLINKAT, IORING_OP_RENAMEAT,
    IORING_OP_MKDIRAT, /* (5.15: older kernels get epoll) */
};

static int setup(keel__uring *u, const keel_loop_opts *opts, bool sqpoll)
{
	static const unsigned tries[] = {
	    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
	    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN,
	    IORING_SETUP_COOP_TASKRUN,
	    0,
	};
	int err = -EINVAL;
	for (size_t i = 0; i < sizeof(tries) / sizeof(tries[0]); i++) {
		struct io_uring_params p;
		memset(&p, 0, sizeof(p));
		p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL;
		p.cq_entries = opts->sq_entries * 4;
		if (sqpoll) {
			/* DEFER_TASKRUN needs the submitter to be the waiter; SQPOLL is not. */
			p.flags |= IORING_SETUP_SQPOLL | (tries[i] & IORING_SETUP_SINGLE_ISSUER);
			p.sq_thread_idle = opts->sqpoll_idle_ms;
		} else {
			p.flags |= tries[i];
		}
		err = io_uring_queue_init_params(opts->sq_entries, &u->ring, &p);
		if (err == -EINVAL && (p.flags & IORING_SETUP_SUBMIT_ALL)) {
			p.flags &= ~IORING_SETUP_SUBMIT_ALL;
			err = io_uring_queue_init_params(opts->sq_entries, &u->ring, &p);
		}
		if (err == 0) {
			u->setup_flags = p.flags;
			return 0;
		}
		if (err != -EINVAL)
			return err;
	}
	return err;
}

#define NOP_INJECT_RESULT (1u << 0) /* IORING_NOP_INJECT_RESULT, newer than this liburing */

#ifdef KEEL_FAULT
/* Whether this kernel's NOP injects a result (fault builds, at setup: the ring is empty). */
static int nop_inject_probe(keel__uring *u)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
	if (!sqe)
		return -1;
	io_uring_prep_nop(sqe);
	sqe->rw_flags = NOP_INJECT_RESULT;
	sqe->len = (unsigned)-EIO;
	io_uring_sqe_set_data64(sqe, KEEL__URING_IGNORE - 1);
	struct io_uring_cqe *cqe;
	if (io_uring_submit_and_wait(&u->ring, 1) < 0 || io_uring_peek_cqe(&u->ring, &cqe) < 0)
		return -1;
	int ok = cqe->res == -EIO ? 1 : -1;
	io_uring_cqe_seen(&u->ring, cqe);
	return ok;
}
#endif

static int env_flag(const char *name)
{
	const char *v = getenv(name);
	return v && *v && strcmp(v, "0") != 0;
}

static int uring_init(keel_loop *loop, keel_loop_opts *opts)
{
	keel__uring *u = calloc(1, sizeof(*u));
	if (!u)
		return -ENOMEM;

	bool want_sqpoll = opts->sqpoll > 0 || (opts->sqpoll < 0 && env_flag("KEEL_SQPOLL"));
	int err = -EINVAL;
	if (want_sqpoll) {
		err = setup(u, opts, true);
		if (err < 0)
			keel_log(KEEL_LOG_WARN, "SQPOLL refused by the kernel (%s); running without it",
			         strerror(-err));
		else
			u->sqpoll = true;
	}
	if (!u->sqpoll)
		err = setup(u, opts, false);
	if (err < 0) {
		free(u);
		return err;
	}

	struct io_uring_probe *probe = io_uring_get_probe_ring(&u->ring);
	if (!probe) {
		err = -ENOSYS;
		goto out_exit;
	}
	for (size_t i = 0; i < sizeof(needed_ops) / sizeof(needed_ops[0]); i++) {
		if (!io_uring_opcode_supported(probe, needed_ops[i])) {
			keel_log(KEEL_LOG_WARN, "io_uring lacks opcode %d", needed_ops[i]);
			err = -ENOSYS;
			io_uring_free_probe(probe);
			goto out_exit;
		}
	}
	bool zc_ok = io_uring_opcode_supported(probe, IORING_OP_SEND_ZC) &&
	             io_uring_opcode_supported(probe, IORING_OP_SENDMSG_ZC);
	io_uring_free_probe(probe);

	if (!(u->ring.features & IORING_FEAT_EXT_ARG))
		keel_log(KEEL_LOG_DEBUG, "io_uring without EXT_ARG: waits use a timeout SQE");

	long zc = opts->send_zc_min_bytes;
	if (zc < 0) {
		const char *v = getenv("KEEL_SEND_ZC");
		zc = v && *v ? strtol(v, NULL, 10) : 0;
		if (zc == 1)
			zc = 16384; /* "KEEL_SEND_ZC=1": a sensible threshold */
	}
	if (zc > 0) {
		if (zc_ok)
			u->send_zc = true;
		else
			keel_log(KEEL_LOG_WARN,
			         "zero-copy send unsupported by this kernel; using plain send");
	}
	opts->send_zc_min_bytes = u->send_zc ? zc : 0;

	u->ring_fd_registered = io_uring_register_ring_fd(&u->ring) == 1;
#ifdef KEEL_FAULT
	u->nop_inject = nop_inject_probe(u); /* (the ring is empty yet) */
#endif
	u->pipe_size = 1 << 20;
	keel__loop_set_be(loop, u);
	return 0;

out_exit:
	io_uring_queue_exit(&u->ring);
	free(u);
	return err;
}

static void uring_fini(keel_loop *loop)
{
	keel__uring *u = keel__loop_be(loop);
	if (!u)
		return;
	keel__uring_pipes_fini(u);
	io_uring_queue_exit(&u->ring);
	free(u);
	keel__loop_set_be(loop, NULL);
}

struct io_uring_sqe *keel__uring_sqe(keel_loop *loop, keel__uring *u)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
	if (sqe)
		return sqe;
	/* Full: more work in one tick than the SQ holds. Hand this batch over now. */
	keel__loop_count_submit(loop, 0);
	io_uring_submit(&u->ring);
	return io_uring_get_sqe(&u->ring);
}

static void uring_fail_now(keel_loop *loop, keel__op *op, int err)
{
	/*
	 * The op never reached the kernel. Completing it here is still not
	 * synchronous with the caller's code: the core only settles a promise,
	 * whose consumers run from the ready queue.
	 */
	keel__op_complete(loop, op, err, 0, 0);
}

static void uring_submit(keel_loop *loop, keel__op *op)
{
	keel__uring *u = keel__loop_be(loop);
	int err;
	switch (op->kind) {
	case KEEL__OP_OPEN:
	case KEEL__OP_READ:
	case KEEL__OP_WRITE:
	case KEEL__OP_STATX:
	case KEEL__OP_FSYNC:
	case KEEL__OP_CLOSE:
	case KEEL__OP_READ_POLL:
	case KEEL__OP_SENDFILE:
	case KEEL__OP_UNLINK:
	case KEEL__OP_RENAME:
	case KEEL__OP_MKDIR: err = keel__uring_prep_file(loop, u, op); break;
	default: err = keel__uring_prep_net(loop, u, op); break;
	}
	if (err < 0)
		uring_fail_now(loop, op, err);
}

void keel__uring_resubmit(keel_loop *loop, keel__op *op)
{
	uring_submit(loop, op);
}

void keel__uring_cancel(keel_loop *loop, keel__op *op)
{
	keel__uring *u = keel__loop_be(loop);
	struct io_uring_sqe *sqe = keel__uring_sqe(loop, u);
	if (!sqe)
		return; /* the op completes on its own; nothing was lent that is not pinned */
	io_uring_prep_cancel64(sqe, keel__op_user_data(op), 0);
	io_uring_sqe_set_data64(sqe, KEEL__URING_IGNORE);
}

static void uring_cancel_fd(keel_loop *loop, int fd)
{
	keel__uring *u = keel__loop_be(loop);
	struct io_uring_sqe *sqe = keel__uring_sqe(loop, u);
	if (!sqe)
		return;
	io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
	io_uring_sqe_set_data64(sqe, KEEL__URING_IGNORE);
}

static void dispatch(keel_loop *loop, keel__uring *u, struct io_uring_cqe *cqe)
{
	uint64_t ud = io_uring_cqe_get_data64(cqe);
	unsigned f = cqe->flags;
	uint16_t bid = (uint16_t)(f >> IORING_CQE_BUFFER_SHIFT);
	keel__op *op = ud == KEEL__URING_IGNORE ? NULL : keel__op_lookup(loop, ud);

	if (!op) {
		if (f & IORING_CQE_F_BUFFER)
			keel__buf_return(loop, bid);
		if (ud != KEEL__URING_IGNORE)
			keel__count_late(loop);
		return;
	}
	int res = cqe->res;
	if (op->flags & KEEL__OPF_ZC) {
		/* Zero-copy: the buffer is the kernel's until the notification. */
		if (!(f & IORING_CQE_F_NOTIF) && (f & IORING_CQE_F_MORE)) {
			op->u.send.zc_res = res;
			return;
		}
		if (f & IORING_CQE_F_NOTIF)
			res = op->u.send.zc_res;
		if (res == -EOPNOTSUPP && op->u.send.done == 0) {
			/* This socket type cannot send zero-copy (AF_UNIX, say): plain send. */
			op->flags &= (uint8_t)~KEEL__OPF_ZC;
			uring_submit(loop, op);
			return;
		}
		keel__op_complete(loop, op, res, 0, 0);
		return;
	}
	if (op->kind == KEEL__OP_ACCEPT) {
		keel__uring_accept(loop, op, res, f & IORING_CQE_F_MORE);
		return;
	}
	if (op->kind == KEEL__OP_SENDFILE || op->kind == KEEL__OP_READ_POLL) {
		if (!keel__uring_step(loop, u, op, &res))
			return;
	}
	unsigned kf = 0;
	if (f & IORING_CQE_F_MORE)
		kf |= KEEL__F_MORE;
	if (f & IORING_CQE_F_BUFFER)
		kf |= KEEL__F_BUFFER;
	keel__op_complete(loop, op, res, kf, bid);
}

/*
 * Fault injection: op completes with res without reaching the kernel --
 * through the ring itself where IORING_OP_NOP can inject a result (Linux
 * 6.10+), otherwise from a list drained at the next poll.
 */
static void uring_inject(keel_loop *loop, keel__op *op, int res)
{
	keel__uring *u = keel__loop_be(loop);
	if (u->nop_inject > 0) {
		struct io_uring_sqe *sqe = keel__uring_sqe(loop, u);
		if (sqe) {
			io_uring_prep_nop(sqe);
			sqe->rw_flags = NOP_INJECT_RESULT;
			sqe->len = (unsigned)res;
			io_uring_sqe_set_data64(sqe, keel__op_user_data(op));
			return;
		}
	}
	op->be_scratch = res;
	op->next = NULL;
	if (u->inj_tail)
		u->inj_tail->next = op;
	else
		u->inj_head = op;
	u->inj_tail = op;
}

static void inject_drain(keel_loop *loop, keel__uring *u)
{
	keel__op *list = u->inj_head;
	u->inj_head = u->inj_tail = NULL;
	while (list) {
		keel__op *op = list;
		list = op->next;
		op->next = NULL;
		struct io_uring_cqe cqe = {.user_data = keel__op_user_data(op),
		                           .res = (int32_t)op->be_scratch};
		dispatch(loop, u, &cqe);
	}
}

static int uring_poll(keel_loop *loop, int64_t timeout_ns, unsigned max)
{
	keel__uring *u = keel__loop_be(loop);
	struct io_uring_cqe *cqe = NULL;
	int ret;

	keel__loop_count_submit(loop, 0);
	if (u->inj_head)
		timeout_ns = 0; /* injected results are due now */
	if (timeout_ns == 0) {
		ret = io_uring_submit_and_get_events(&u->ring);
	} else if (timeout_ns < 0) {
		ret = io_uring_submit_and_wait(&u->ring, 1);
	} else {
		struct __kernel_timespec ts = {
		    .tv_sec = timeout_ns / 1000000000ll,
		    .tv_nsec = timeout_ns % 1000000000ll,
		};
		ret = io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, &ts, NULL);
	}
	if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY)
		return ret;
	keel__loop_update_time(loop); /* completions are handled at the time they arrived */

	unsigned handled = 0;
	if (u->inj_head)
		inject_drain(loop, u);
	struct io_uring_cqe *batch[64];
	while (handled < max) {
		unsigned want = max - handled < 64 ? max - handled : 64;
		unsigned n = io_uring_peek_batch_cqe(&u->ring, batch, want);
		if (n == 0)
			break;
		for (unsigned i = 0; i < n; i++)
			dispatch(loop, u, batch[i]);
		io_uring_cq_advance(&u->ring, n);
		handled += n;
	}
	return (int)handled;
}

static int uring_bufpool_init(keel_loop *loop, keel__bufpool *pool)
{
	keel__uring *u = keel__loop_be(loop);
	size_t bytes = pool->count * sizeof(struct io_uring_buf);
	void *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return -ENOMEM;
	struct io_uring_buf_reg reg;
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (unsigned long)mem;
	reg.ring_entries = pool->count;
	reg.bgid = pool->bgid;
	int err = io_uring_register_buf_ring(&u->ring, &reg, 0);
	if (err < 0) {
		munmap(mem, bytes);
		return err;
	}
	u->br = mem;
	u->br_bytes = bytes;
	u->br_mask = io_uring_buf_ring_mask(pool->count);
	io_uring_buf_ring_init(u->br);
	for (uint32_t i = 0; i < pool->count; i++)
		io_uring_buf_ring_add(u->br, pool->bufs[i].data, pool->size, (unsigned short)i, u->br_mask,
		                      (int)i);
	io_uring_buf_ring_advance(u->br, (int)pool->count);
	pool->nfree = 0; /* the kernel holds them now */
	pool->ring = u->br;
	return 0;
}

static void uring_bufpool_fini(keel_loop *loop, keel__bufpool *pool)
{
	keel__uring *u = keel__loop_be(loop);
	if (!u || !u->br)
		return;
	io_uring_unregister_buf_ring(&u->ring, pool->bgid);
	munmap(u->br, u->br_bytes);
	u->br = NULL;
	pool->ring = NULL;
}

static void uring_buf_recycle(keel_loop *loop, keel__bufpool *pool, uint16_t bid)
{
	keel__uring *u = keel__loop_be(loop);
	io_uring_buf_ring_add(u->br, pool->bufs[bid].data, pool->size, bid, u->br_mask, 0);
	io_uring_buf_ring_advance(u->br, 1);
}

static bool uring_feature(keel_loop *loop, const char *name)
{
	keel__uring *u = keel__loop_be(loop);
	if (strcmp(name, "sqpoll") == 0)
		return u->sqpoll;
	if (strcmp(name, "send_zc") == 0)
		return u->send_zc;
	if (strcmp(name, "defer_taskrun") == 0)
		return u->setup_flags & IORING_SETUP_DEFER_TASKRUN;
	return false;
}

/*
 * Free buffers sit in the kernel's ring: one may be written into at any
 * moment -- except with DEFER_TASKRUN and no SQPOLL, where the kernel
 * fills them only inside io_uring_enter on this thread, and once every
 * completion already posted has been seen (their buffers are then keel's).
 */
static bool uring_bufs_trimmable(keel_loop *loop)
{
	keel__uring *u = keel__loop_be(loop);
	return (u->setup_flags & IORING_SETUP_DEFER_TASKRUN) && !u->sqpoll && !io_uring_cq_ready(&u->ring) &&
	       !u->inj_head;
}

const keel__backend keel__backend_uring = {
    .name = "io_uring",
    .init = uring_init,
    .fini = uring_fini,
    .submit = uring_submit,
    .inject = uring_inject,
    .cancel = keel__uring_cancel,
    .cancel_fd = uring_cancel_fd,
    .poll = uring_poll,
    .bufpool_init = uring_bufpool_init,
    .bufpool_fini = uring_bufpool_fini,
    .buf_recycle = uring_buf_recycle,
    .feature = uring_feature,
    .bufs_trimmable = uring_bufs_trimmable,
};
