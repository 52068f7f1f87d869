/*
 * Request contexts: a reference-counted arena that travels with a promise
 * chain. Allocation bumps a pointer inside 4 KiB chunks taken from a per-loop
 * free list; freeing the context hands every chunk back in one step.
 * Allocations larger than a chunk get a chunk of their own.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fault.h"
#include "internal.h"

#define CHUNK_BYTES 4096
#define CHUNK_FREE_MAX 256 /* chunks kept for reuse per loop */
#define CTX_FREE_MAX 256   /* contexts kept for reuse per loop */

struct keel__chunk {
	struct keel__chunk *next;
	size_t size; /* usable bytes after the header */
	_Alignas(16) char data[];
};

static struct keel__chunk *chunk_get(keel_loop *loop, size_t need)
{
	struct keel__chunk *c;
	if (need <= CHUNK_BYTES - sizeof(struct keel__chunk) && loop->chunk_free) {
		c = loop->chunk_free;
		loop->chunk_free = c->next;
		loop->chunk_free_count--;
		return c;
	}
	size_t usable = CHUNK_BYTES - sizeof(struct keel__chunk);
	if (need > usable)
		usable = need;
	c = keel__malloc(sizeof(struct keel__chunk) + usable);
	if (c)
		c->size = usable;
	return c;
}

static void chunk_put(keel_loop *loop, struct keel__chunk *c)
{
	if (c->size == CHUNK_BYTES - sizeof(struct keel__chunk) && loop->chunk_free_count < CHUNK_FREE_MAX) {
		c->next = loop->chunk_free;
		loop->chunk_free = c;
		loop->chunk_free_count++;
	} else {
		free(c);
	}
}

keel_ctx *keel_ctx_new(keel_loop *loop)
{
	keel_ctx *ctx = loop->ctx_free;
	if (ctx) {
		loop->ctx_free = ctx->next_free;
		loop->ctx_free_count--;
	} else {
		ctx = keel__xmalloc(sizeof(*ctx));
	}
	memset(ctx, 0, sizeof(*ctx));
	ctx->loop = loop;
	ctx->refs = 1;
	loop->stats.ctx_live++;
	return ctx;
}

void keel_ctx_retain(keel_ctx *ctx)
{
	ctx->refs++;
}

void keel_ctx_release(keel_ctx *ctx)
{
	KEEL__ASSERT(ctx->refs > 0);
	if (--ctx->refs > 0)
		return;
	keel_loop *loop = ctx->loop;
	/* The hooks, last registered first (they live in the arena: it goes after them). */
	for (struct keel__ctx_hook *h = ctx->hooks; h; h = h->next)
		h->fn(h->ud);
	struct keel__chunk *c = ctx->chunks;
	while (c) {
		struct keel__chunk *next = c->next;
		chunk_put(loop, c);
		c = next;
	}
	loop->stats.ctx_live--;
	if (loop->ctx_free_count >= CTX_FREE_MAX) {
		free(ctx);
		return;
	}
	ctx->next_free = loop->ctx_free;
	loop->ctx_free = ctx;
	loop->ctx_free_count++;
}

void *keel_ctx_alloc(keel_ctx *ctx, size_t size)
{
	if (size > SIZE_MAX / 2)
		return NULL; /* (rounded up, with a chunk's header, it would wrap to a tiny block) */
	size = (size + 15) & ~(size_t)15;
	if (size == 0)
		size = 16;
	if ((size_t)(ctx->end - ctx->cur) < size) {
		struct keel__chunk *c = chunk_get(ctx->loop, size);
		if (!c)
			return NULL;
		c->next = ctx->chunks;
		ctx->chunks = c;
		ctx->cur = c->data;
		ctx->end = c->data + c->size;
	}
	void *p = ctx->cur;
	ctx->cur += size;
	return p;
}

char *keel_ctx_strdup(keel_ctx *ctx, const char *s)
{
	size_t n = strlen(s) + 1;
	char *d = keel_ctx_alloc(ctx, n);
	if (d)
		memcpy(d, s, n);
	return d;
}

int keel_ctx_on_free(keel_ctx *ctx, void (*fn)(void *ud), void *ud)
{
	struct keel__ctx_hook *h = keel_ctx_alloc(ctx, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->fn = fn;
	h->ud = ud;
	h->next = ctx->hooks;
	ctx->hooks = h;
	return 0;
}

void keel__ctx_pool_fini(keel_loop *loop)
{
	while (loop->ctx_free) {
		keel_ctx *next = loop->ctx_free->next_free;
		free(loop->ctx_free);
		loop->ctx_free = next;
	}
	loop->ctx_free_count = 0;
	while (loop->chunk_free) {
		struct keel__chunk *next = loop->chunk_free->next;
		free(loop->chunk_free);
		loop->chunk_free = next;
	}
	loop->chunk_free_count = 0;
}

void keel__ctx_pool_trim(keel_loop *loop, unsigned keep)
{
	while (loop->ctx_free_count > keep) {
		keel_ctx *ctx = loop->ctx_free;
		loop->ctx_free = ctx->next_free;
		loop->ctx_free_count--;
		free(ctx);
	}
	while (loop->chunk_free_count > keep) {
		struct keel__chunk *c = loop->chunk_free;
		loop->chunk_free = c->next;
		loop->chunk_free_count--;
		free(c);
	}
}
