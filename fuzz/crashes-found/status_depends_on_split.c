/*
 * Reproducer: keel_http_parse_request's error status depends on how the
 * bytes arrived. Found by fuzz_request ("whole gives -400, pieces give
 * -414"); this program shows it with the default limits.
 *
 *   clang -std=c17 -Iinclude fuzz/crashes-found/status_depends_on_split.c \
 *       src/http/parse.c src/http/chunked.c -o /tmp/keel-repro && /tmp/keel-repro
 *
 * Exits 1 while the statuses differ, 0 once they agree.
 */
#include <stdio.h>
#include <string.h>

#include "keel/http_parse.h"

static int parse(const char *b, size_t len, size_t prev)
{
	keel_http_msg m;
	keel_http_header h[100];
	return keel_http_parse_request(b, len, prev, &m, h, 100, NULL);
}

/* Whole, then as a first read of `first` bytes followed by the rest. */
static int compare(const char *what, const char *b, size_t n, size_t first)
{
	int whole = parse(b, n, 0);
	int split = parse(b, first, 0);
	if (split == KEEL_HTTP_INCOMPLETE)
		split = parse(b, n, first);
	printf("%s: whole %d, %zu bytes then the rest %d%s\n", what, whole, first, split,
	       whole == split ? "" : "   <-- differ");
	return whole != split;
}

int main(void)
{
	static char b[17000];
	int bad = 0;

	/* A 9000-byte request line (limit 8192), then a bare CR: 400 or 414. */
	size_t n = (size_t)sprintf(b, "GET /");
	memset(b + n, 'a', 9000);
	n += 9000;
	b[n++] = '\r';
	b[n++] = 'X';
	bad |= compare("long request line + bare CR", b, n, 8500);

	/* A 16400-byte head (limit 16384) with no end yet, then a bare LF: 400 or 431. */
	n = (size_t)sprintf(b, "GET / HTTP/1.1\r\nHost: h\r\nX: ");
	memset(b + n, 'v', 16400 - n);
	n = 16400;
	b[n++] = '\n';
	bad |= compare("oversized head + bare LF", b, n, 16390);
	return bad;
}
