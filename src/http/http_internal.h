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

/* Format t as an IMF-fixdate (RFC 9110 5.6.7) into out (at least 30 bytes). */
size_t keel__http_date(time_t t, char *out, size_t size);

/* Parse an IMF-fixdate; -1 if it is not one. */
time_t keel__http_date_parse(const char *s, size_t len);

/*
 * Percent-decode path and remove dot segments into out (size >= len + 1),
 * without the leading '/'. Returns the length, or -1 for a path that is
 * malformed (bad escape, NUL or CTL) or climbs above the root.
 */
long keel__path_normalize(const char *path, size_t len, char *out);

#endif
