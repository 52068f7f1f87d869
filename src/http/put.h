/*
 * Writing heads into a buffer sized beforehand: each call copies and
 * returns the position after what it wrote. A literal's length is its
 * size, never counted by hand.
 */
#ifndef KEEL_HTTP_PUT_H
#define KEEL_HTTP_PUT_H

#include <stdint.h>
#include <string.h>

static inline char *keel__put(char *p, const char *s, size_t n)
{
	memcpy(p, s, n);
	return p + n;
}

/* A string literal (its length from sizeof: a literal only). */
#define KEEL__PUT_LIT(p, lit) keel__put((p), "" lit, sizeof(lit) - 1)

/* v in decimal. */
static inline char *keel__put_u64(char *p, uint64_t v)
{
	char tmp[24];
	int n = 0;
	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		*p++ = tmp[--n];
	return p;
}

#endif
