/*
 * The allocations keel checks and survives failing (the rest abort:
 * keel__xmalloc). In a fault build (-DKEEL_FAULT, core/fault.h) they fail
 * as $KEEL_FAULT's alloc rule says; otherwise they are malloc and its
 * siblings. The one core header the layers above include: fault injection
 * must reach their allocations too, and this header depends on nothing.
 */
#ifndef KEEL_CORE_ALLOC_H
#define KEEL_CORE_ALLOC_H

#include <stdbool.h>
#include <stdlib.h>

#ifdef KEEL_FAULT
/* Whether the next fallible allocation fails. */
bool keel__fault_alloc(void);
#define KEEL__FAULT_ALLOC() keel__fault_alloc()
#else
#define KEEL__FAULT_ALLOC() false
#endif

/* Allocations keel checks and survives failing (the rest abort: keel__xmalloc). */
static inline void *keel__malloc(size_t n)
{
	return KEEL__FAULT_ALLOC() ? NULL : malloc(n);
}

static inline void *keel__calloc(size_t n, size_t size)
{
	return KEEL__FAULT_ALLOC() ? NULL : calloc(n, size);
}

static inline void *keel__realloc(void *p, size_t n)
{
	return KEEL__FAULT_ALLOC() ? NULL : realloc(p, n);
}

#endif
