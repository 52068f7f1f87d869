/*
 * Internals shared by the files of src/http.
 */
#ifndef KEEL_HTTP_INTERNAL_H
#define KEEL_HTTP_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

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

#include "date.h" /* keel__http_date, keel__http_date_parse, keel__log_date */

/*
 * Percent-decode path and remove dot segments into out (size >= len + 1),
 * without the leading '/'. Returns the length, or -1 for a path that is
 * malformed (bad escape, NUL or CTL) or climbs above the root.
 */
long keel__path_normalize(const char *path, size_t len, char *out);

#endif
