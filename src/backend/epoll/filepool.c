/*
 * epoll backend: a small bounded pool of threads for regular-file operations,
 * which epoll cannot wait for. Jobs are ops; results go back to the loop on a
 * list and an eventfd wakes it. Threads start on first use, up to the
 * configured count.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "epoll.h"

static int run_job(keel__op *op)
{
	long r;
	switch (op->kind) {
	case KEEL__OP_OPEN:
		r = syscall(SYS_openat2, op->u.open.dirfd, op->u.open.path, &op->u.open.how,
		            sizeof(op->u.open.how));
		break;
	case KEEL__OP_READ:
		r = op->u.rw.off == UINT64_MAX
		        ? read(op->fd, op->u.rw.buf, op->u.rw.len)
		        : pread(op->fd, op->u.rw.buf, op->u.rw.len, (off_t)op->u.rw.off);
		break;
	case KEEL__OP_WRITE:
		r = op->u.rw.off == UINT64_MAX
		        ? write(op->fd, op->u.rw.buf, op->u.rw.len)
		        : pwrite(op->fd, op->u.rw.buf, op->u.rw.len, (off_t)op->u.rw.off);
		break;
	case KEEL__OP_STATX:
		r = statx(op->u.statx.dirfd, op->u.statx.path, op->u.statx.flags, op->u.statx.mask,
		          op->u.statx.out);
		break;
	case KEEL__OP_FSYNC: r = op->u.fsync.datasync ? fdatasync(op->fd) : fsync(op->fd); break;
	case KEEL__OP_UNLINK: r = unlinkat(op->u.path.dirfd, op->u.path.path, (int)op->u.path.flags); break;
	case KEEL__OP_RENAME:
		r = syscall(SYS_renameat2, op->u.path.dirfd, op->u.path.path, op->u.path.newdirfd,
		            op->u.path.newpath, op->u.path.flags);
		break;
	case KEEL__OP_MKDIR: r = mkdirat(op->u.path.dirfd, op->u.path.path, op->u.path.mode); break;
	default: errno = EINVAL; r = -1;
	}
	return r < 0 ? -errno : (int)r;
}

static void *worker(void *arg)
{
	keel__epoll *ep = arg;
	pthread_mutex_lock(&ep->mu);
	for (;;) {
		while (!ep->jobs && !ep->stop)
			pthread_cond_wait(&ep->cv, &ep->mu);
		if (ep->stop && !ep->jobs)
			break;
		keel__op *op = keel__ep_pop(&ep->jobs, &ep->jobs_tail);
		op->be_state = EP_RUNNING;
		pthread_mutex_unlock(&ep->mu);

		int res = run_job(op);

		pthread_mutex_lock(&ep->mu);
		op->be_scratch = res;
		op->be_state = EP_DONE;
		bool was_empty = ep->pool_done == NULL;
		keel__ep_push(&ep->pool_done, &ep->pool_done_tail, op);
		if (was_empty) {
			uint64_t one = 1;
			ssize_t n = write(ep->efd, &one, sizeof(one));
			(void)n;
		}
	}
	pthread_mutex_unlock(&ep->mu);
	return NULL;
}

int keel__ep_pool_queue(keel__epoll *ep, keel__op *op, unsigned threads_max)
{
	pthread_mutex_lock(&ep->mu);
	if (!ep->threads)
		ep->threads = calloc(threads_max, sizeof(pthread_t)); /* (NULL: no thread, -EAGAIN below) */
	if (ep->threads && ep->nthreads < threads_max && (ep->jobs || ep->nthreads == 0)) {
		if (keel__thread_start(&ep->threads[ep->nthreads], worker, ep) == 0)
			ep->nthreads++;
	}
	if (ep->nthreads == 0) {
		pthread_mutex_unlock(&ep->mu);
		return -EAGAIN;
	}
	op->be_state = EP_JOB;
	keel__ep_push(&ep->jobs, &ep->jobs_tail, op);
	pthread_cond_signal(&ep->cv);
	pthread_mutex_unlock(&ep->mu);
	return 0;
}

bool keel__ep_pool_cancel(keel__epoll *ep, keel__op *op)
{
	pthread_mutex_lock(&ep->mu);
	bool removed = op->be_state == EP_JOB && keel__ep_unlink(&ep->jobs, &ep->jobs_tail, op);
	pthread_mutex_unlock(&ep->mu);
	return removed;
}

void keel__ep_pool_reap(keel__epoll *ep)
{
	uint64_t v;
	ssize_t n = read(ep->efd, &v, sizeof(v));
	(void)n;
	pthread_mutex_lock(&ep->mu);
	keel__op *list = ep->pool_done;
	ep->pool_done = ep->pool_done_tail = NULL;
	pthread_mutex_unlock(&ep->mu);
	while (list) {
		keel__op *op = list;
		list = op->next;
		keel__ep_push(&ep->done, &ep->done_tail, op);
	}
}

void keel__ep_pool_fini(keel__epoll *ep)
{
	pthread_mutex_lock(&ep->mu);
	ep->stop = true;
	pthread_cond_broadcast(&ep->cv);
	pthread_mutex_unlock(&ep->mu);
	for (unsigned i = 0; i < ep->nthreads; i++)
		pthread_join(ep->threads[i], NULL);
	free(ep->threads);
	ep->threads = NULL;
	ep->nthreads = 0;
}
