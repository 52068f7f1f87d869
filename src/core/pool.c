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

/*
 * Promise slabs are aligned to their size, the first slot a header, so a
 * promise finds its slab by masking its address: keel_loop_trim can then
 * give back every slab whose promises are all free (after a burst).
 */
#define PSLAB_BYTES 32768
#define PSLAB_N (PSLAB_BYTES / sizeof(keel_promise) - 1)
#define PSLAB_KEEP 2 /* slabs kept for reuse when trimming */
#define OP_SLAB 64

struct keel__pslab {
	struct keel__pslab *next;
	uint32_t nfree; /* counted by a trim */
};
_Static_assert(sizeof(struct keel__pslab) <= sizeof(keel_promise), "the header fits the first slot");

static struct keel__pslab *pslab_of(const keel_promise *p)
{
	return (struct keel__pslab *)((uintptr_t)p & ~(uintptr_t)(PSLAB_BYTES - 1));
}

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
		struct keel__pslab *h = aligned_alloc(PSLAB_BYTES, PSLAB_BYTES);
		if (!h)
			keel__oom();
		h->next = loop->pslabs;
		loop->pslabs = h;
		keel_promise *slab = (keel_promise *)h + 1;
		for (int i = (int)PSLAB_N - 1; i >= 0; i--) {
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
	if (keel__op_may_sigpipe(kind)) {
		loop->sigpipe_ops++;
		if (loop->in_tick)
			keel__sigpipe_hold(loop); /* (it may reach the kernel before this tick ends) */
	}
	return op;
}

void keel__op_free(keel_loop *loop, keel__op *op)
{
	KEEL__ASSERT(op->kind != 0);
	if (op->kind == KEEL__OP_SEND && op->u.send.iov != op->u.send.iov_inline)
		free(op->u.send.iov);
	if (op->flags & KEEL__OPF_DAEMON)
		loop->ops_daemon--;
	if (keel__op_may_sigpipe(op->kind))
		loop->sigpipe_ops--;
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

void keel__promise_pool_trim(keel_loop *loop)
{
	for (struct keel__pslab *h = loop->pslabs; h; h = h->next)
		h->nfree = 0;
	for (keel_promise *p = loop->promise_free; p; p = p->next)
		pslab_of(p)->nfree++;
	/* The slabs wholly free go (but a few); their promises leave the free list first. */
	unsigned kept = 0;
	for (struct keel__pslab *h = loop->pslabs; h; h = h->next)
		if (h->nfree == PSLAB_N && kept++ >= PSLAB_KEEP)
			h->nfree = UINT32_MAX; /* marked to go */
	keel_promise **pp = &loop->promise_free;
	while (*pp) {
		if (pslab_of(*pp)->nfree == UINT32_MAX)
			*pp = (*pp)->next;
		else
			pp = &(*pp)->next;
	}
	for (struct keel__pslab **hp = &loop->pslabs; *hp;) {
		struct keel__pslab *h = *hp;
		if (h->nfree == UINT32_MAX) {
			*hp = h->next;
			free(h);
		} else {
			hp = &h->next;
		}
	}
}

void keel__pools_fini(keel_loop *loop)
{
	while (loop->pslabs) {
		struct keel__pslab *h = loop->pslabs;
		loop->pslabs = h->next;
		free(h);
	}
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
