/*
 * Per-loop pools: promises, operations and small objects.
 *
 * Everything the hot path needs comes from free lists that grow in slabs and
 * are only given back to the system when the loop is freed, so steady-state
 * traffic makes no malloc calls. Operations also live in a slot table: the
 * slot and a generation number form the user_data the kernel echoes back, so
 * a completion that arrives after its slot was reused is recognised.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define PROMISE_SLAB 256
#define OP_SLAB 64

_Noreturn void keel__assert_fail(const char *what, const char *file, int line)
{
	fprintf(stderr, "keel: assertion failed: %s (%s:%d)\n", what, file, line);
	abort();
}

_Noreturn void keel__oom(void)
{
	fputs("keel: out of memory\n", stderr);
	abort();
}

void *keel__xmalloc(size_t n)
{
	void *p = malloc(n);
	if (!p)
		keel__oom();
	return p;
}

void *keel__xcalloc(size_t n, size_t size)
{
	void *p = calloc(n, size);
	if (!p)
		keel__oom();
	return p;
}

static void *slab_new(keel_loop *loop, size_t bytes)
{
	if (loop->nslabs == loop->slabs_cap) {
		uint32_t cap = loop->slabs_cap ? loop->slabs_cap * 2 : 16;
		void **s = realloc(loop->slabs, cap * sizeof(*s));
		if (!s)
			keel__oom();
		loop->slabs = s;
		loop->slabs_cap = cap;
	}
	void *mem = keel__xcalloc(1, bytes);
	loop->slabs[loop->nslabs++] = mem;
	return mem;
}

keel_promise *keel__promise_alloc(keel_loop *loop)
{
	if (!loop->promise_free) {
		keel_promise *slab = slab_new(loop, PROMISE_SLAB * sizeof(keel_promise));
		for (int i = PROMISE_SLAB - 1; i >= 0; i--) {
			slab[i].next = loop->promise_free;
			loop->promise_free = &slab[i];
		}
	}
	keel_promise *p = loop->promise_free;
	loop->promise_free = p->next;
	memset(p, 0, sizeof(*p));
	loop->stats.promises_live++;
	return p;
}

void keel__promise_free(keel_loop *loop, keel_promise *p)
{
	p->next = loop->promise_free;
	loop->promise_free = p;
	loop->stats.promises_live--;
}

/* ---- Small objects: size classes 64..1024 bytes -------------------------- */

static int mem_class(size_t size)
{
	size_t c = 64;
	for (int i = 0; i < KEEL__MEM_CLASSES; i++, c <<= 1)
		if (size <= c)
			return i;
	return -1;
}

void *keel__mem_alloc(keel_loop *loop, size_t size)
{
	int c = mem_class(size);
	if (c < 0)
		return keel__xmalloc(size);
	struct keel__memfree **head = &loop->mem_free[c];
	if (!*head) {
		size_t csz = (size_t)64 << c;
		size_t n = 16384 / csz;
		char *slab = slab_new(loop, n * csz);
		for (size_t i = 0; i < n; i++) {
			struct keel__memfree *f = (struct keel__memfree *)(slab + i * csz);
			f->next = *head;
			*head = f;
		}
	}
	struct keel__memfree *f = *head;
	*head = f->next;
	return f;
}

void keel__mem_free(keel_loop *loop, void *ptr, size_t size)
{
	int c = mem_class(size);
	if (c < 0) {
		free(ptr);
		return;
	}
	struct keel__memfree *f = ptr;
	f->next = loop->mem_free[c];
	loop->mem_free[c] = f;
}

/* ---- Operations ----------------------------------------------------------- */

keel__op *keel__op_new(keel_loop *loop, int kind, int fd)
{
	bool small = keel__op_kind_small(kind);
	size_t size = small ? (KEEL__OP_SMALL_SIZE + 7) & ~(size_t)7 : sizeof(keel__op);
	keel__op **free_list = small ? &loop->op_free_small : &loop->op_free;
	if (!*free_list) {
		/* A slab of ops of this size; their slots continue the one table. */
		if (loop->ops_cap >= loop->opts.ops_max)
			return NULL;
		uint32_t n = OP_SLAB;
		if (loop->ops_cap + n > loop->opts.ops_max)
			n = loop->opts.ops_max - loop->ops_cap;
		keel__op **table = realloc(loop->ops, (loop->ops_cap + n) * sizeof(*table));
		if (!table)
			keel__oom();
		loop->ops = table;
		char *slab = slab_new(loop, n * size);
		for (int i = (int)n - 1; i >= 0; i--) {
			keel__op *op = (keel__op *)(slab + (size_t)i * size);
			op->slot = loop->ops_cap + (uint32_t)i;
			op->gen = 1;
			op->kind = 0;
			loop->ops[op->slot] = op;
			op->next = *free_list;
			*free_list = op;
		}
		loop->ops_cap += n;
	}
	keel__op *op = *free_list;
	*free_list = op->next;
	uint32_t slot = op->slot, gen = op->gen;
	memset(op, 0, size);
	op->slot = slot;
	op->gen = gen;
	op->kind = (uint8_t)kind;
	op->fd = fd;
	if (kind == KEEL__OP_CONNECT)
		op->u.connect.timer.heap_idx = UINT32_MAX;
	loop->ops_live++;
	loop->stats.ops_inflight = loop->ops_live;
	return op;
}

void keel__op_free(keel_loop *loop, keel__op *op)
{
	KEEL__ASSERT(op->kind != 0);
	if (op->kind == KEEL__OP_SEND && op->u.send.iov != op->u.send.iov_inline)
		free(op->u.send.iov);
	if (op->flags & KEEL__OPF_DAEMON)
		loop->ops_daemon--;
	int fd = op->fd;
	bool fdref = op->flags & KEEL__OPF_FDREF;
	keel__op **free_list = keel__op_kind_small(op->kind) ? &loop->op_free_small : &loop->op_free;
	op->kind = 0;
	op->gen++;
	if (op->gen == 0)
		op->gen = 1;
	op->next = *free_list;
	*free_list = op;
	loop->ops_live--;
	loop->stats.ops_inflight = loop->ops_live;
	if (fdref)
		keel__fd_unref(loop, fd); /* may start a close that waited for this op */
}

keel__op *keel__op_lookup(keel_loop *loop, uint64_t user_data)
{
	uint32_t slot = (uint32_t)user_data, gen = (uint32_t)(user_data >> 32);
	if (slot >= loop->ops_cap)
		return NULL;
	keel__op *op = loop->ops[slot];
	if (op->gen != gen || op->kind == 0)
		return NULL;
	return op;
}

void keel__pools_fini(keel_loop *loop)
{
	for (uint32_t i = 0; i < loop->nslabs; i++)
		free(loop->slabs[i]);
	free(loop->slabs);
	free(loop->ops);
	free(loop->fdrefs);
	loop->fdrefs = NULL;
	loop->slabs = NULL;
	loop->ops = NULL;
	loop->nslabs = loop->slabs_cap = 0;
}
