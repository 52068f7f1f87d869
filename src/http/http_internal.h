/*
 * Internals shared by the files of src/http.
 */
#ifndef KEEL_HTTP_INTERNAL_H
#define KEEL_HTTP_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "keel/log.h"

/* An invariant of this layer's own code, checked in every build: a bug, never an input. */
#define KEEL_HTTP_ASSERT(cond)                                                                              \
	do {                                                                                                \
		if (__builtin_expect(!(cond), 0)) {                                                         \
			keel_log(KEEL_LOG_ERROR, "%s:%d: assertion failed: %s", __FILE__, __LINE__, #cond); \
			abort();                                                                            \
		}                                                                                           \
	} while (0)

const char *keel__mime_type(const char *path, size_t len);

/* The value of a hex digit, or -1. */
static inline int keel__hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if ((unsigned char)((c | 0x20) - 'a') < 6)
		return (c | 0x20) - 'a' + 10;
	return -1;
}

/*
 * Whether a configured string may go on the wire as it is: visible ASCII
 * (and, with spaces, inner spaces), never a control character -- a CR or
 * LF in a config value would otherwise split a header or a request line.
 */
static inline bool keel__wire_ok(const char *s, bool spaces)
{
	size_t n = 0;
	for (; s[n]; n++) {
		unsigned char c = (unsigned char)s[n];
		if (!(c > 0x20 && c < 0x7f) && !(spaces && c == ' '))
			return false;
	}
	return n == 0 || (s[0] != ' ' && s[n - 1] != ' ');
}

#include "date.h" /* keel__http_date, keel__http_date_parse, keel__log_date */

/*
 * Percent-decode path and remove dot segments into out (size >= len + 1),
 * without the leading '/'. Returns the length, or -1 for a path that is
 * malformed (bad escape, NUL or CTL) or climbs above the root.
 */
long keel__path_normalize(const char *path, size_t len, char *out);

#endif
