/*
 * The receive buffer pool.
 *
 * One pool per loop, shared by every receive stream. A buffer leaves the pool
 * only when data arrives for it (the kernel picks it from the ring on
 * io_uring; the epoll backend takes it right before recv), so an idle
 * connection holds none. When the pool is dry, a stream is parked instead of
 * failing, and each buffer that comes back re-arms one parked stream.
 *
 * A re-armed stream may have nothing to read: on io_uring it then waits in
 * the kernel without taking the buffer, on epoll it gives the buffer straight
 * back. That wake-up is spent, and a stream parked behind it with data
 * waiting would stay parked with buffers free (a connection storm left
 * hundreds of requests unread that way). So once per tick, as many parked
 * streams as there are free buffers are re-armed (keel__bufpool_rewake).
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "internal.h"

int keel__bufpool_init(keel_loop *loop)
{
	keel__bufpool *pool = &loop->bufpool;
	pool->loop = loop;
	pool->count = loop->opts.recv_buf_count;
	pool->size = loop->opts.recv_buf_size;
	size_t bytes = (size_t)pool->count * pool->size;
	/* mmap: page-aligned, and untouched pages cost no RSS until used. */
	pool->mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (pool->mem == MAP_FAILED) {
		pool->mem = NULL;
		return -ENOMEM;
	}
	pool->bufs = keel__xcalloc(pool->count, sizeof(keel_buf));
	pool->free_ids = keel__xcalloc(pool->count, sizeof(uint16_t));
	for (uint32_t i = 0; i < pool->count; i++) {
		keel_buf *b = &pool->bufs[i];
		b->data = pool->mem + (size_t)i * pool->size;
		b->cap = pool->size;
		b->id = (uint16_t)i;
		b->pool = pool;
		pool->free_ids[i] = (uint16_t)(pool->count - 1 - i);
	}
	pool->nfree = pool->count;
	loop->stats.bufs_total = pool->count;
	int err = loop->be->bufpool_init(loop, pool);
	if (err < 0) {
		keel__bufpool_fini(loop);
		return err;
	}
	return 0;
}

void keel__bufpool_fini(keel_loop *loop)
{
	keel__bufpool *pool = &loop->bufpool;
	if (!pool->mem)
		return;
	if (pool->ring)
		loop->be->bufpool_fini(loop, pool);
	munmap(pool->mem, (size_t)pool->count * pool->size);
	free(pool->bufs);
	free(pool->free_ids);
	pool->mem = NULL;
}

keel_buf *keel__buf_take(keel__bufpool *pool)
{
	if (!pool->nfree)
		return NULL;
	keel_buf *b = &pool->bufs[pool->free_ids[--pool->nfree]];
	return b;
}

void keel_buf_hold(keel_buf *buf)
{
	KEEL__ASSERT(buf->refs > 0);
	buf->refs++;
}

/* Re-arm the stream parked longest, if any. */
static bool wake_one(keel_loop *loop, keel__bufpool *pool)
{
	keel__op *op = pool->waiters;
	if (!op)
		return false;
	pool->waiters = op->next;
	if (!pool->waiters)
		pool->waiters_tail = NULL;
	op->next = NULL;
	op->flags &= (uint8_t)~KEEL__OPF_PARKED;
	keel__op_submit(loop, op);
	return true;
}

static void buf_recycle(keel_loop *loop, keel__bufpool *pool, keel_buf *buf)
{
	pool->in_use--;
	loop->stats.bufs_in_use = pool->in_use;
	loop->be->buf_recycle(loop, pool, buf->id);
	wake_one(loop, pool);
}

void keel_buf_release(keel_buf *buf)
{
	KEEL__ASSERT(buf->refs > 0);
	if (--buf->refs > 0)
		return;
	if (buf->owner) {
		buf->owner->release(buf->owner, buf);
		return;
	}
	buf_recycle(buf->pool->loop, buf->pool, buf);
}

/* Called by op.c for each buffer a completion reports: it is now ours. */
void keel__buf_claim(keel_loop *loop, keel_buf *buf)
{
	KEEL__ASSERT(buf->refs == 0);
	buf->refs = 1;
	loop->bufpool.in_use++;
	loop->stats.bufs_in_use = loop->bufpool.in_use;
}

void keel__buf_return(keel_loop *loop, uint16_t bid)
{
	keel__bufpool *pool = &loop->bufpool;
	KEEL__ASSERT(bid < pool->count);
	keel_buf *buf = &pool->bufs[bid];
	keel__buf_claim(loop, buf);
	keel_buf_release(buf);
}

void keel__bufpool_park(keel_loop *loop, keel__op *op)
{
	keel__bufpool *pool = &loop->bufpool;
	loop->stats.enobufs++;
	op->flags |= KEEL__OPF_PARKED;
	op->next = NULL;
	if (pool->waiters_tail)
		pool->waiters_tail->next = op;
	else
		pool->waiters = op;
	pool->waiters_tail = op;
	/* A buffer may have come back between the kernel's ENOBUFS and now. */
	if (pool->in_use < pool->count && pool->waiters == op) {
		pool->waiters = pool->waiters_tail = NULL;
		op->flags &= (uint8_t)~KEEL__OPF_PARKED;
		keel__op_submit(loop, op);
	}
}

void keel__bufpool_rewake(keel_loop *loop)
{
	keel__bufpool *pool = &loop->bufpool;
	for (uint32_t free_bufs = pool->count - pool->in_use; free_bufs && wake_one(loop, pool); free_bufs--)
		;
}

/* Give back the pages of buffers nobody holds (they fault in again, zeroed, when next used). */
void keel__bufpool_trim(keel_loop *loop)
{
	keel__bufpool *pool = &loop->bufpool;
	if (!pool->mem || !loop->be->bufs_trimmable(loop))
		return;
	uint32_t i = 0;
	while (i < pool->count) {
		while (i < pool->count && pool->bufs[i].refs)
			i++;
		uint32_t start = i;
		while (i < pool->count && !pool->bufs[i].refs)
			i++;
		if (i > start)
			madvise(pool->mem + (size_t)start * pool->size, (size_t)(i - start) * pool->size,
			        MADV_DONTNEED);
	}
}
