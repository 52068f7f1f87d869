/*
 * HTTP dates and the access log's timestamp (date.c): fixed English names,
 * integer calendar arithmetic, no locale.
 */
#ifndef KEEL_HTTP_DATE_H
#define KEEL_HTTP_DATE_H

#include <stddef.h>
#include <time.h>

/*
 * Format t (seconds since the epoch) as an IMF-fixdate, "Sun, 06 Nov 1994
 * 08:49:37 GMT", into out and NUL-terminate it; size must be at least 30
 * (asserted). Returns 29, the length. The names come from fixed English
 * tables: the locale is never read. Dates before 1970 are exact
 * (proleptic Gregorian); a t outside 0000-01-01 .. 9999-12-31, which four
 * year digits cannot hold, is clamped to the nearer end.
 */
size_t keel__http_date(time_t t, char *out, size_t size);

/*
 * Parse an HTTP-date in any of the three forms RFC 9110 5.6.7 requires a
 * recipient to accept:
 *   IMF-fixdate  "Sun, 06 Nov 1994 08:49:37 GMT"
 *   RFC 850      "Sunday, 06-Nov-94 08:49:37 GMT"
 *   asctime      "Sun Nov  6 08:49:37 1994"  (day " 6" or "06")
 * Borrows s for the call; s need not be NUL-terminated, and a NUL is just
 * a byte that matches nothing. Strict: the exact shape, names with the
 * grammar's case, day 1 .. the month's length (leap years included), hour
 * 0..23, minute 0..59, second 0..60 (a leap second counts as the next
 * minute's first, as timegm does). The day name must be one of the seven
 * but need not agree with the date (as Go, nginx and Apache do). An RFC
 * 850 year 00..69 is 20xx and 70..99 is 19xx.
 * Returns the time (>= 0), or -1 if s is none of the forms or the date is
 * before 1970 (-1 itself is a second of 1969).
 */
time_t keel__http_date_parse(const char *s, size_t len);

/*
 * Format t as an access-log (common log format) timestamp in the local
 * time zone, "10/Oct/2000:13:55:36 -0700", into out and NUL-terminate it;
 * size must be at least 32 (asserted). Returns the length (26). The zone
 * comes from localtime_r (TZ), the month name from a fixed English table;
 * the locale is never read. If localtime_r fails, the time is written in
 * UTC with +0000.
 */
size_t keel__log_date(time_t t, char *out, size_t size);

#endif
