/*
 * Small helpers for code built around keel's embeddable objects.
 *
 * keel hands a callback a pointer to the object the caller embedded (a
 * keel_timer, say), not to the caller's own record: keel_container_of walks
 * back from the member to the record that holds it, as the kernel's
 * container_of does, and refuses (a compiler diagnostic) a pointer whose
 * type is not the member's.
 */
#ifndef KEEL_UTIL_H
#define KEEL_UTIL_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * The type * whose member is *ptr. ptr must point at that member of a live
 * type (NULL is not allowed). The unevaluated arm of ?: makes the compiler
 * check that ptr has the member's type.
 */
#define keel_container_of(ptr, type, member) \
	((type *)(void *)((char *)(1 ? (ptr) : &((type *)0)->member) - offsetof(type, member)))

#ifdef __cplusplus
}
#endif

#endif
