/*
 * HTTP dates and the access log's timestamp (src/http/date.c): exact
 * strings for known times, the RFC's example in its three forms, every day
 * from 1970 to 2100 and a sample up to 9999 against gmtime_r, near misses
 * that must be refused, every single-byte change of a valid date, and
 * truncated dates ending at an unmapped page (nothing is read past len).
 *
 * Then all of it again under a German locale, where strftime writes "So"
 * and "Okt": ours must not change. When no German locale is installed, one
 * is generated with localedef into a temporary directory and loaded through
 * LOCPATH (no root needed; the sources come with Debian's "locales"
 * package). When that is impossible too, everything else still runs and
 * the program exits 77 saying why.
 */
#include <ftw.h>
#include <limits.h>
#include <locale.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "http/date.h"
#include "test.h"

#define ASSERT_STR(a, b)                                                    \
	do {                                                                \
		const char *a_ = (a), *b_ = (b);                            \
		if (strcmp(a_, b_) != 0)                                    \
			FAIL("%s == %s: \"%s\" != \"%s\"", #a, #b, a_, b_); \
	} while (0)

/* A literal and its length, NULs inside included. */
#define SPAN(lit) lit, sizeof(lit) - 1
#define PARSE(lit) keel__http_date_parse(SPAN(lit))

#define RFC_EXAMPLE 784111777  /* Sun, 06 Nov 1994 08:49:37 GMT */
#define T_MIN (-62167219200LL) /* 0000-01-01 00:00:00 */
#define T_MAX 253402300799LL   /* 9999-12-31 23:59:59 */

/* The test's own tables, so the reference below shares nothing with date.c. */
static const char *const days[7] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
static const char *const days_long[7] = {"Sunday",   "Monday", "Tuesday", "Wednesday",
                                         "Thursday", "Friday", "Saturday"};
static const char *const months[12] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

/* keel__http_date into a buffer that shows any write past the 30 bytes allowed. */
static const char *fmt(time_t t)
{
	static char buf[64];
	memset(buf, 'x', sizeof(buf));
	size_t n = keel__http_date(t, buf, 30);
	ASSERT_EQ(n, 29);
	ASSERT_EQ(strlen(buf), 29);
	ASSERT(buf[30] == 'x');
	return buf;
}

/* The three forms of t from gmtime_r's fields (snprintf's %d ignores the locale). */
struct forms {
	char imf[64], rfc850[64], asc[64], asc_02[64];
};

static void reference(time_t t, struct forms *f)
{
	struct tm tm;
	ASSERT(gmtime_r(&t, &tm) != NULL);
	int y = tm.tm_year + 1900;
	snprintf(f->imf, sizeof(f->imf), "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday], tm.tm_mday,
	         months[tm.tm_mon], y, tm.tm_hour, tm.tm_min, tm.tm_sec);
	snprintf(f->rfc850, sizeof(f->rfc850), "%s, %02d-%s-%02d %02d:%02d:%02d GMT", days_long[tm.tm_wday],
	         tm.tm_mday, months[tm.tm_mon], (y % 100 + 100) % 100, tm.tm_hour, tm.tm_min, tm.tm_sec);
	snprintf(f->asc, sizeof(f->asc), "%s %s %2d %02d:%02d:%02d %04d", days[tm.tm_wday], months[tm.tm_mon],
	         tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, y);
	snprintf(f->asc_02, sizeof(f->asc_02), "%s %s %02d %02d:%02d:%02d %04d", days[tm.tm_wday],
	         months[tm.tm_mon], tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, y);
}

static time_t parse_str(const char *s)
{
	return keel__http_date_parse(s, strlen(s));
}

static void test_format(const char *label)
{
	static const struct {
		time_t t;
		const char *s;
	} known[] = {
	    {0, "Thu, 01 Jan 1970 00:00:00 GMT"},
	    {RFC_EXAMPLE, "Sun, 06 Nov 1994 08:49:37 GMT"},
	    {1709210096, "Thu, 29 Feb 2024 12:34:56 GMT"},
	    {951782400, "Tue, 29 Feb 2000 00:00:00 GMT"},
	    {4107542400, "Mon, 01 Mar 2100 00:00:00 GMT"},
	    {T_MAX, "Fri, 31 Dec 9999 23:59:59 GMT"},
	    {-1, "Wed, 31 Dec 1969 23:59:59 GMT"}, /* before 1970: exact */
	    {T_MIN, "Sat, 01 Jan 0000 00:00:00 GMT"},
	    {T_MAX + 1, "Fri, 31 Dec 9999 23:59:59 GMT"}, /* beyond four digits: clamped */
	    {INT64_MAX, "Fri, 31 Dec 9999 23:59:59 GMT"},
	    {T_MIN - 1, "Sat, 01 Jan 0000 00:00:00 GMT"},
	    {INT64_MIN, "Sat, 01 Jan 0000 00:00:00 GMT"},
	};
	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
		ASSERT_STR(fmt(known[i].t), known[i].s);
	printf("%s: %zu known times format exactly\n", label, sizeof(known) / sizeof(known[0]));
}

/* One time checked every way: our formatting against gmtime_r's, and all forms parse back. */
static void check_time(time_t t)
{
	struct forms f;
	reference(t, &f);
	const char *s = fmt(t);
	if (strcmp(s, f.imf) != 0)
		FAIL("t=%lld: \"%s\" != gmtime_r's \"%s\"", (long long)t, s, f.imf);
	time_t want = t >= 0 ? t : -1;
	if (parse_str(s) != want || parse_str(f.asc) != want || parse_str(f.asc_02) != want)
		FAIL("t=%lld: \"%s\" / \"%s\" / \"%s\" parse to %lld / %lld / %lld", (long long)t, s, f.asc,
		     f.asc_02, (long long)parse_str(s), (long long)parse_str(f.asc),
		     (long long)parse_str(f.asc_02));
	if (t >= 0 && t <= 3155759999 && parse_str(f.rfc850) != t) /* two-digit years: 1970..2069 */
		FAIL("t=%lld: \"%s\" parses to %lld", (long long)t, f.rfc850, (long long)parse_str(f.rfc850));
}

static void test_against_gmtime(const char *label)
{
	long n = 0;
	/* Every day of 1970..2100 (three century rules, 32 leap days), each at another second. */
	for (int64_t d = 0; d <= 47846; d++, n++)
		check_time((time_t)(d * 86400 + d * 7919 % 86400));
	for (int64_t t = 4133980800; t <= T_MAX; t += 30 * 86400 + 3607, n++)
		check_time((time_t)t);
	check_time((time_t)T_MAX);
	for (int64_t t = -1; t >= T_MIN; t -= 30 * 86400 + 3607, n++)
		check_time((time_t)t);
	check_time((time_t)T_MIN);
	printf("%s: %ld times agree with gmtime_r and round-trip in all forms\n", label, n + 2);
}

static void test_accept(const char *label)
{
	/* The RFC's example in its three forms. */
	ASSERT_EQ(PARSE("Sun, 06 Nov 1994 08:49:37 GMT"), RFC_EXAMPLE);
	ASSERT_EQ(PARSE("Sunday, 06-Nov-94 08:49:37 GMT"), RFC_EXAMPLE);
	ASSERT_EQ(PARSE("Sun Nov  6 08:49:37 1994"), RFC_EXAMPLE);
	ASSERT_EQ(PARSE("Sun Nov 06 08:49:37 1994"), RFC_EXAMPLE); /* date3 allows 2DIGIT too */
	/* A valid day name that disagrees with the date is not checked (documented). */
	ASSERT_EQ(PARSE("Mon, 06 Nov 1994 08:49:37 GMT"), RFC_EXAMPLE);
	ASSERT_EQ(PARSE("Wednesday, 06-Nov-94 08:49:37 GMT"), RFC_EXAMPLE);
	/* A leap second is the next minute's first. */
	ASSERT_EQ(PARSE("Sat, 31 Dec 2016 23:59:60 GMT"), 1483228800);
	ASSERT_EQ(PARSE("Thu, 29 Feb 2024 12:34:56 GMT"), 1709210096);
	ASSERT_EQ(PARSE("Tue, 29 Feb 2000 00:00:00 GMT"), 951782400);
	ASSERT_EQ(PARSE("Thu, 01 Jan 1970 00:00:00 GMT"), 0);
	ASSERT_EQ(PARSE("Fri, 31 Dec 9999 23:59:59 GMT"), T_MAX);
	/* RFC 850 two-digit years: 70..99 are 19xx, 00..69 are 20xx. */
	ASSERT_EQ(PARSE("Thursday, 01-Jan-70 00:00:00 GMT"), 0);
	ASSERT_EQ(PARSE("Friday, 31-Dec-99 23:59:59 GMT"), 946684799);
	ASSERT_EQ(PARSE("Saturday, 01-Jan-00 00:00:00 GMT"), 946684800);
	ASSERT_EQ(PARSE("Tuesday, 31-Dec-69 23:59:59 GMT"), 3155759999);
	printf("%s: the RFC's example in three forms and the edge cases parse\n", label);
}

static void test_reject(const char *label)
{
#define BAD(lit)          \
	{                 \
		SPAN(lit) \
	}
	static const struct {
		const char *s;
		size_t len;
	} bad[] = {
	    BAD(""),
	    BAD("Sun"),
	    BAD("Sun,"),
	    /* Day names. */
	    BAD("Sux, 06 Nov 1994 08:49:37 GMT"),
	    BAD("sun, 06 Nov 1994 08:49:37 GMT"),
	    BAD("SUN, 06 Nov 1994 08:49:37 GMT"),
	    BAD("Sunday, 06 Nov 1994 08:49:37 GMT"),
	    BAD("Sun, 06-Nov-94 08:49:37 GMT"),
	    BAD("Sundy, 06-Nov-94 08:49:37 GMT"),
	    BAD("sunday, 06-Nov-94 08:49:37 GMT"),
	    BAD("Sunday Nov  6 08:49:37 1994"),
	    BAD("06 Nov 1994 08:49:37 GMT"),
	    /* Days that do not exist. */
	    BAD("Wed, 30 Feb 1994 08:49:37 GMT"),
	    BAD("Wed, 29 Feb 2023 08:49:37 GMT"),
	    BAD("Mon, 29 Feb 2100 00:00:00 GMT"),
	    BAD("Sun, 31 Apr 1994 08:49:37 GMT"),
	    BAD("Sun, 00 Nov 1994 08:49:37 GMT"),
	    BAD("Sun, 32 Jan 1994 08:49:37 GMT"),
	    BAD("Wednesday, 30-Feb-94 08:49:37 GMT"),
	    BAD("Wed Feb 30 08:49:37 1994"),
	    BAD("Sun Nov  0 08:49:37 1994"),
	    /* Times that do not exist. */
	    BAD("Sun, 06 Nov 1994 24:00:00 GMT"),
	    BAD("Sun, 06 Nov 1994 08:60:37 GMT"),
	    BAD("Sun, 06 Nov 1994 08:49:61 GMT"),
	    BAD("Sunday, 06-Nov-94 24:49:37 GMT"),
	    BAD("Sun Nov  6 24:49:37 1994"),
	    /* The zone. */
	    BAD("Sun, 06 Nov 1994 08:49:37"),
	    BAD("Sun, 06 Nov 1994 08:49:37 UTC"),
	    BAD("Sun, 06 Nov 1994 08:49:37 gmt"),
	    BAD("Sun, 06 Nov 1994 08:49:37 +0000"),
	    BAD("Sunday, 06-Nov-94 08:49:37"),
	    BAD("Sun Nov  6 08:49:37 1994 GMT"),
	    /* Trailing bytes. */
	    BAD("Sun, 06 Nov 1994 08:49:37 GMT "),
	    BAD("Sun, 06 Nov 1994 08:49:37 GMT\r\n"),
	    BAD("Sun, 06 Nov 1994 08:49:37 GMTX"),
	    BAD("Sunday, 06-Nov-94 08:49:37 GMT "),
	    BAD("Sun Nov  6 08:49:37 1994 "),
	    BAD("Sun Nov  6 08:49:37 19940"),
	    /* Month names. */
	    BAD("Sun, 06 nov 1994 08:49:37 GMT"),
	    BAD("Sun, 06 NOV 1994 08:49:37 GMT"),
	    BAD("Sun, 06 Nox 1994 08:49:37 GMT"),
	    BAD("Sun, 06 November 1994 08:49:37 GMT"),
	    BAD("Sunday, 06-nov-94 08:49:37 GMT"),
	    BAD("Sun nov  6 08:49:37 1994"),
	    /* Spaces: two where one is required, one where two are, a tab, a no-break space. */
	    BAD("Sun,  06 Nov 1994 08:49:37 GMT"),
	    BAD("Sun, 06  Nov 1994 08:49:37 GMT"),
	    BAD("Sun, 06 Nov  1994 08:49:37 GMT"),
	    BAD("Sun, 06 Nov 1994  08:49:37 GMT"),
	    BAD("Sun, 06 Nov 1994 08:49:37  GMT"),
	    BAD("Sunday,  06-Nov-94 08:49:37 GMT"),
	    BAD("Sun  Nov  6 08:49:37 1994"),
	    BAD("Sun Nov   6 08:49:37 1994"),
	    BAD("Sun Nov  6  08:49:37 1994"),
	    BAD("Sun Nov 6 08:49:37 1994"),
	    BAD("Sun Nov  16 08:49:37 1994"),
	    BAD(" Sun, 06 Nov 1994 08:49:37 GMT"),
	    BAD("Sun,\t06 Nov 1994 08:49:37 GMT"),
	    BAD("Sun,\xc2\xa0"
	        "06 Nov 1994 08:49:37 GMT"),
	    /* Field widths and shapes. */
	    BAD("Sun, 6 Nov 1994 08:49:37 GMT"),
	    BAD("Sun, 06 Nov 94 08:49:37 GMT"),
	    BAD("Sun, 06 Nov 01994 08:49:37 GMT"),
	    BAD("Sunday, 06-Nov-1994 08:49:37 GMT"),
	    BAD("Sunday, 06 Nov 94 08:49:37 GMT"),
	    BAD("Sun 06 Nov 1994 08:49:37 GMT"),
	    BAD("Sun, 06 Nov 1994 8:49:37 GMT"),
	    BAD("Sun, 06 Nov 1994 08.49.37 GMT"),
	    BAD("Sun, 06 Nov 1994 08:49 GMT"),
	    BAD("Sun, +6 Nov 1994 08:49:37 GMT"),
	    BAD("Sun, 06 Nov 1994 08:49:-7 GMT"),
	    BAD("Sun, 06 Nov 199x 08:49:37 GMT"),
	    BAD("Sun Nov  6 08:49:37 94"),
	    /* Before 1970: a valid HTTP-date, refused because -1 is the error (documented). */
	    BAD("Wed, 31 Dec 1969 23:59:59 GMT"),
	    BAD("Sat, 01 Jan 0000 00:00:00 GMT"),
	    BAD("Thu Jan  1 00:00:00 1903"),
	    /* NUL inside. */
	    BAD("Sun, 06 Nov 1994 08:49:37\0GMT"),
	    BAD("Sun, 06 Nov 1994 08:49:37 GMT\0"),
	    BAD("Sun\0 06 Nov 1994 08:49:37 GMT"),
	    BAD("Sun Nov \0"
	        "6 08:49:37 1994"),
	    BAD("\0"),
	};
#undef BAD
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		time_t t = keel__http_date_parse(bad[i].s, bad[i].len);
		if (t != -1)
			FAIL("bad date #%zu \"%.*s\" (%zu bytes) parsed to %lld", i, (int)bad[i].len,
			     bad[i].s, bad[i].len, (long long)t);
	}
	printf("%s: %zu malformed dates refused\n", label, sizeof(bad) / sizeof(bad[0]));
}

static const char *const good[3] = {"Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT",
                                    "Sun Nov  6 08:49:37 1994"};

/*
 * Length off by one either way, and every prefix placed so that its last
 * byte is the last one before an unmapped page: a read past len faults.
 */
static void test_lengths(const char *label)
{
	long page = sysconf(_SC_PAGESIZE);
	char *map = mmap(NULL, (size_t)page * 2, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT(map != MAP_FAILED);
	ASSERT_EQ(mprotect(map + page, (size_t)page, PROT_NONE), 0);
	char *fence = map + page;
	for (int f = 0; f < 3; f++) {
		size_t len = strlen(good[f]);
		char buf[64];
		memcpy(buf, good[f], len);
		ASSERT_EQ(keel__http_date_parse(buf, len), RFC_EXAMPLE);
		ASSERT_EQ(keel__http_date_parse(buf, len - 1), -1);
		const char extra[] = {' ', '0', 'X', '\r', '\0'};
		for (size_t e = 0; e < sizeof(extra); e++) {
			buf[len] = extra[e];
			ASSERT_EQ(keel__http_date_parse(buf, len + 1), -1);
		}
		for (size_t k = 0; k <= len; k++) {
			memcpy(fence - k, good[f], k);
			ASSERT_EQ(keel__http_date_parse(fence - k, k), k == len ? RFC_EXAMPLE : -1);
		}
	}
	munmap(map, (size_t)page * 2);
	printf("%s: length off by one refused; no prefix reads past its end\n", label);
}

/*
 * Byte i of a valid date replaced by v: the result is -1 or a different
 * time (a digit changed), never the same time, except where the grammar
 * allows two spellings (asctime's "06" and " 6", at byte 8).
 */
static void check_mutation(const char *good_s, bool asctime_form, size_t i, int v)
{
	size_t len = strlen(good_s);
	char buf[64];
	memcpy(buf, good_s, len);
	buf[i] = (char)v;
	time_t t = keel__http_date_parse(buf, len);
	bool pad = asctime_form && i == 8;
	if (t == RFC_EXAMPLE && !(pad && v == '0'))
		FAIL("\"%.*s\" still parses to the original time", (int)len, buf);
	bool digit = v >= '0' && v <= '9';
	bool was_digit = good_s[i] >= '0' && good_s[i] <= '9';
	if (t != -1 && !(digit && (was_digit || pad)))
		FAIL("\"%.*s\" (byte %zu = 0x%02x) parses to %lld", (int)len, buf, i, v, (long long)t);
}

static void test_mutations(const char *label)
{
	long n = 0;
	for (int f = 0; f < 3; f++)
		for (size_t i = 0; good[f][i]; i++)
			for (int v = 0; v < 256; v++) {
				if ((char)v == good[f][i])
					continue;
				check_mutation(good[f], f == 2, i, v);
				n++;
			}
	printf("%s: %ld single-byte changes refused or read as another time\n", label, n);
}

static void test_log_date(const char *label)
{
	static const struct {
		const char *tz;
		time_t t;
		const char *s;
	} cases[] = {
	    {"UTC0", 971211336, "10/Oct/2000:20:55:36 +0000"},
	    {"MST7", 971211336, "10/Oct/2000:13:55:36 -0700"},
	    {"IST-5:30", 971211336, "11/Oct/2000:02:25:36 +0530"},
	    {"<-0330>3:30", 0, "31/Dec/1969:20:30:00 -0330"},
	    {"CET-1CEST,M3.5.0,M10.5.0/3", 1719835200, "01/Jul/2024:14:00:00 +0200"},
	    {"CET-1CEST,M3.5.0,M10.5.0/3", 1709210096, "29/Feb/2024:13:34:56 +0100"},
	    {"UTC0", T_MAX, "31/Dec/9999:23:59:59 +0000"},
	};
	char *old = getenv("TZ") ? strdup(getenv("TZ")) : NULL;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		setenv("TZ", cases[i].tz, 1);
		tzset();
		char buf[64];
		memset(buf, 'x', sizeof(buf));
		size_t n = keel__log_date(cases[i].t, buf, 32);
		ASSERT_EQ(n, strlen(cases[i].s));
		ASSERT_STR(buf, cases[i].s);
		ASSERT(buf[32] == 'x');
	}
	if (old)
		setenv("TZ", old, 1);
	else
		unsetenv("TZ");
	tzset();
	free(old);
	printf("%s: %zu access-log times exact in fixed, half-hour and DST zones\n", label,
	       sizeof(cases) / sizeof(cases[0]));
}

static void run_all(const char *label)
{
	test_format(label);
	test_against_gmtime(label);
	test_accept(label);
	test_reject(label);
	test_lengths(label);
	test_mutations(label);
	test_log_date(label);
}

/* ---- A German locale ------------------------------------------------------ */

/* Where a generated locale lives; removed at exit, a FAIL's exit(1) included. */
static char locale_dir[PATH_MAX];

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st, (void)flag, (void)ftw;
	return remove(path);
}

static void locale_dir_remove(void)
{
	if (locale_dir[0])
		nftw(locale_dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/*
 * Load a German locale: an installed one, else one generated with
 * localedef into locale_dir. Returns its name, or NULL with why filled.
 */
static const char *german_locale(char *why, size_t why_size)
{
	static const char *const installed[] = {"de_DE.UTF-8", "de_DE.utf8", "de_DE"};
	for (size_t i = 0; i < sizeof(installed) / sizeof(installed[0]); i++)
		if (setlocale(LC_ALL, installed[i]))
			return installed[i];
	const char *src = "/usr/share/i18n/locales/de_DE";
	if (access(src, R_OK) != 0) {
		snprintf(why, why_size,
		         "no German locale installed, and %s is missing to generate one "
		         "(Debian package: locales)",
		         src);
		return NULL;
	}
	const char *tmp = getenv("TMPDIR");
	snprintf(locale_dir, sizeof(locale_dir), "%s/keel-test-locale-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(locale_dir)) {
		snprintf(why, why_size, "mkdtemp %s: %s", locale_dir, strerror(errno));
		locale_dir[0] = '\0';
		return NULL;
	}
	char out[PATH_MAX + 16]; /* locale_dir is at most PATH_MAX - 1 bytes */
	snprintf(out, sizeof(out), "%s/de_DE.UTF-8", locale_dir);
	char *argv[] = {"localedef", "-i", "de_DE", "-f", "UTF-8", out, NULL};
	pid_t pid;
	int err = posix_spawnp(&pid, "localedef", NULL, NULL, argv, environ);
	if (err) {
		snprintf(why, why_size, "cannot run localedef (libc-bin): %s", strerror(err));
		return NULL;
	}
	int status = 0;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	/* localedef can fail on mere warnings; whether the locale loads is what counts. */
	setenv("LOCPATH", locale_dir, 1);
	if (setlocale(LC_ALL, "de_DE.UTF-8"))
		return "de_DE.UTF-8";
	snprintf(why, why_size, "localedef -i de_DE -f UTF-8 %s: status %d; it does not load", out,
	         WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	return NULL;
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0); /* keep stdout and stderr in order in the log */
	run_all("C locale");

	char why[PATH_MAX + 200] = "";
	atexit(locale_dir_remove);
	const char *loc = german_locale(why, sizeof(why));
	if (loc) {
		/* Show that the locale bites: the old strftime/strptime code changes under it. */
		time_t t = RFC_EXAMPLE;
		struct tm tm;
		gmtime_r(&t, &tm);
		char old[64];
		strftime(old, sizeof(old), "%a, %d %b %Y %H:%M:%S GMT", &tm);
		struct tm back;
		memset(&back, 0, sizeof(back));
		bool strptime_ok =
		    strptime("Sun, 06 Nov 1994 08:49:37 GMT", "%a, %d %b %Y %H:%M:%S GMT", &back) != NULL;
		printf("%s: strftime writes \"%s\", strptime %s the English date; "
		       "ours writes \"%s\"\n",
		       loc, old, strptime_ok ? "accepts" : "refuses", fmt(t));
		if (strcmp(old, "Sun, 06 Nov 1994 08:49:37 GMT") == 0) {
			snprintf(why, sizeof(why), "%s loaded, but strftime still writes English", loc);
			loc = NULL;
		} else {
			run_all(loc);
		}
		setlocale(LC_ALL, "C");
	}
	if (!loc) {
		printf("skip: the C-locale checks passed; the German-locale part cannot run: %s\n", why);
		return TEST_SKIP;
	}
	printf("all date checks passed in the C locale and in %s\n", loc);
	return 0;
}
