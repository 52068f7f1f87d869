/*
 * HTTP dates (RFC 9110 5.6.7) and the access log's timestamp, written and
 * read with fixed English names and integer calendar arithmetic. Nothing
 * here reads the locale, so a host program that calls setlocale(LC_ALL, "")
 * cannot change what goes on the wire. The one idea: a date is a count of
 * days since 1970-01-01, turned into a year, month and day and back by
 * Howard Hinnant's civil_from_days and days_from_civil, which are exact for
 * every proleptic Gregorian year.
 *
 * Declarations, with their contracts in date.h:
 *   size_t keel__http_date(time_t t, char *out, size_t size);
 *   time_t keel__http_date_parse(const char *s, size_t len);
 *   size_t keel__log_date(time_t t, char *out, size_t size);
 */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "date.h"
#include "http_internal.h"

_Static_assert(sizeof(time_t) >= 8, "years up to 9999 need a 64-bit time_t");

#define SECS_PER_DAY 86400
/* 0000-01-01 00:00:00 and 9999-12-31 23:59:59 UTC: what four year digits can hold. */
#define T_MIN (-62167219200LL)
#define T_MAX 253402300799LL

static const char *const day_names[7] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
static const char *const day_names_long[7] = {"Sunday",   "Monday", "Tuesday", "Wednesday",
                                              "Thursday", "Friday", "Saturday"};
static const char *const month_names[12] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

struct civil {
	int year, month, day; /* month 1..12 */
	int hour, min, sec;
};

static bool is_leap(int y)
{
	return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int days_in_month(int y, int m)
{
	static const unsigned char days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	return m == 2 && is_leap(y) ? 29 : days[m - 1];
}

/* Days since 1970-01-01 of a date; eras of 400 years keep the divisions non-negative. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
	y -= m <= 2; /* the year starts in March, so a leap day is the last day of its year */
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	int64_t yoe = y - era * 400;                                   /* [0, 399] */
	int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1; /* [0, 365] */
	int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;           /* [0, 146096] */
	return era * 146097 + doe - 719468;
}

/* The inverse of days_from_civil. */
static void civil_from_days(int64_t z, struct civil *c)
{
	z += 719468;
	int64_t era = (z >= 0 ? z : z - 146096) / 146097;
	int64_t doe = z - era * 146097;
	int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	int64_t mp = (5 * doy + 2) / 153;
	c->day = (int)(doy - (153 * mp + 2) / 5 + 1);
	c->month = (int)(mp < 10 ? mp + 3 : mp - 9);
	c->year = (int)(yoe + era * 400 + (c->month <= 2));
}

static int64_t clamp(int64_t t)
{
	return t < T_MIN ? T_MIN : t > T_MAX ? T_MAX : t;
}

/* Split t into date and time of day; returns the weekday, 0 = Sunday. */
static int split(int64_t t, struct civil *c)
{
	int64_t days = t / SECS_PER_DAY, secs = t % SECS_PER_DAY;
	if (secs < 0) {
		secs += SECS_PER_DAY;
		days--;
	}
	civil_from_days(days, c);
	c->hour = (int)(secs / 3600);
	c->min = (int)(secs / 60 % 60);
	c->sec = (int)(secs % 60);
	int64_t wd = (days + 4) % 7; /* 1970-01-01 was a Thursday */
	return (int)(wd < 0 ? wd + 7 : wd);
}

/* ---- Writing ------------------------------------------------------------- */

static char *put(char *p, const char *s, size_t n)
{
	memcpy(p, s, n);
	return p + n;
}
#define PUT_LIT(p, lit) put((p), (lit), sizeof(lit) - 1)

static char *put2(char *p, int v)
{
	p[0] = (char)('0' + v / 10);
	p[1] = (char)('0' + v % 10);
	return p + 2;
}

static char *put4(char *p, int v)
{
	return put2(put2(p, v / 100), v % 100);
}

static char *put_time(char *p, const struct civil *c)
{
	p = put2(p, c->hour);
	p = PUT_LIT(p, ":");
	p = put2(p, c->min);
	p = PUT_LIT(p, ":");
	return put2(p, c->sec);
}

size_t keel__http_date(time_t t, char *out, size_t size)
{
	KEEL_HTTP_ASSERT(size >= 30);
	struct civil c;
	int wd = split(clamp(t), &c);
	char *p = put(out, day_names[wd], 3);
	p = PUT_LIT(p, ", ");
	p = put2(p, c.day);
	p = PUT_LIT(p, " ");
	p = put(p, month_names[c.month - 1], 3);
	p = PUT_LIT(p, " ");
	p = put4(p, c.year);
	p = PUT_LIT(p, " ");
	p = put_time(p, &c);
	p = PUT_LIT(p, " GMT");
	*p = '\0';
	return (size_t)(p - out);
}

size_t keel__log_date(time_t t, char *out, size_t size)
{
	KEEL_HTTP_ASSERT(size >= 32);
	/*
	 * Only the offset comes from the C library (localtime_r reads TZ, never
	 * LC_TIME); the fields come from the same arithmetic as the HTTP date.
	 * Clamped before adding the offset (no overflow) and after (four digits).
	 */
	struct tm tm;
	long off = localtime_r(&t, &tm) ? tm.tm_gmtoff : 0;
	struct civil c;
	split(clamp(clamp(t) + off), &c);
	char *p = put2(out, c.day);
	p = PUT_LIT(p, "/");
	p = put(p, month_names[c.month - 1], 3);
	p = PUT_LIT(p, "/");
	p = put4(p, c.year);
	p = PUT_LIT(p, ":");
	p = put_time(p, &c);
	p = off < 0 ? PUT_LIT(p, " -") : PUT_LIT(p, " +");
	long abs_min = (off < 0 ? -off : off) / 60;
	if (abs_min > 99 * 60 + 59) /* no real zone is this far off; keep the field four digits */
		abs_min = 99 * 60 + 59;
	p = put2(p, (int)(abs_min / 60));
	p = put2(p, (int)(abs_min % 60));
	*p = '\0';
	return (size_t)(p - out);
}

/* ---- Reading ------------------------------------------------------------- */

/*
 * A cursor whose failure is sticky: each step after the first mismatch does
 * nothing, so a form reads as its grammar and is checked once at the end.
 */
struct scan {
	const char *p, *end;
	bool bad;
};

static void expect(struct scan *sc, const char *lit, size_t n)
{
	if (sc->bad || (size_t)(sc->end - sc->p) < n || memcmp(sc->p, lit, n) != 0) {
		sc->bad = true;
		return;
	}
	sc->p += n;
}
#define EXPECT(sc, lit) expect((sc), (lit), sizeof(lit) - 1)

/* Exactly n ASCII digits (not isdigit, which consults the locale). */
static int number(struct scan *sc, int n)
{
	if (sc->bad || sc->end - sc->p < n) {
		sc->bad = true;
		return 0;
	}
	int v = 0;
	for (int i = 0; i < n; i++) {
		unsigned d = (unsigned char)sc->p[i] - (unsigned)'0';
		if (d > 9) {
			sc->bad = true;
			return 0;
		}
		v = v * 10 + (int)d;
	}
	sc->p += n;
	return v;
}

/* One of n names, byte for byte as the grammar is case-sensitive; its index. (None is a prefix.) */
static int name(struct scan *sc, const char *const *names, int n)
{
	for (int i = 0; i < n && !sc->bad; i++) {
		size_t len = strlen(names[i]);
		if ((size_t)(sc->end - sc->p) >= len && memcmp(sc->p, names[i], len) == 0) {
			sc->p += len;
			return i;
		}
	}
	sc->bad = true;
	return 0;
}

static void time_of_day(struct scan *sc, struct civil *c)
{
	c->hour = number(sc, 2);
	EXPECT(sc, ":");
	c->min = number(sc, 2);
	EXPECT(sc, ":");
	c->sec = number(sc, 2);
}

/* "Sun, 06 Nov 1994 08:49:37 GMT" */
static void imf_fixdate(struct scan *sc, struct civil *c)
{
	name(sc, day_names, 7);
	EXPECT(sc, ", ");
	c->day = number(sc, 2);
	EXPECT(sc, " ");
	c->month = name(sc, month_names, 12) + 1;
	EXPECT(sc, " ");
	c->year = number(sc, 4);
	EXPECT(sc, " ");
	time_of_day(sc, c);
	EXPECT(sc, " GMT");
}

/* "Sunday, 06-Nov-94 08:49:37 GMT" */
static void rfc850_date(struct scan *sc, struct civil *c)
{
	name(sc, day_names_long, 7);
	EXPECT(sc, ", ");
	c->day = number(sc, 2);
	EXPECT(sc, "-");
	c->month = name(sc, month_names, 12) + 1;
	EXPECT(sc, "-");
	/*
	 * RFC 9110 requires a year that appears more than 50 years in the future
	 * to be read as the past century's. A fixed pivot meets that for every
	 * current year from 2019 on (2069 is never more than 50 years ahead),
	 * gives the same answer every run, and disagrees with a window around
	 * "now" only for years 45 or more away, which no sender writes.
	 */
	int yy = number(sc, 2);
	c->year = yy + (yy < 70 ? 2000 : 1900);
	EXPECT(sc, " ");
	time_of_day(sc, c);
	EXPECT(sc, " GMT");
}

/* "Sun Nov  6 08:49:37 1994", the day as a space and a digit or as two digits. */
static void asctime_date(struct scan *sc, struct civil *c)
{
	name(sc, day_names, 7);
	EXPECT(sc, " ");
	c->month = name(sc, month_names, 12) + 1;
	EXPECT(sc, " ");
	if (!sc->bad && sc->p < sc->end && *sc->p == ' ') {
		sc->p++;
		c->day = number(sc, 1);
	} else {
		c->day = number(sc, 2);
	}
	EXPECT(sc, " ");
	time_of_day(sc, c);
	EXPECT(sc, " ");
	c->year = number(sc, 4);
}

time_t keel__http_date_parse(const char *s, size_t len)
{
	struct scan sc = {s, s + len, false};
	struct civil c = {0};
	/* The forms part at the fourth byte: ',' after a short day name, ' ', or a long name. */
	if (len > 3 && s[3] == ',')
		imf_fixdate(&sc, &c);
	else if (len > 3 && s[3] == ' ')
		asctime_date(&sc, &c);
	else
		rfc850_date(&sc, &c);
	if (sc.bad || sc.p != sc.end)
		return -1;
	/* Before 1970 is refused rather than returned: -1 would be both a time and the error. */
	if (c.year < 1970 || c.day < 1 || c.day > days_in_month(c.year, c.month) || c.hour > 23 ||
	    c.min > 59 || c.sec > 60)
		return -1;
	return (time_t)(days_from_civil(c.year, c.month, c.day) * SECS_PER_DAY + c.hour * 3600 + c.min * 60 +
	                c.sec);
}
