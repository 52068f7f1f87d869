/*
 * libFuzzer driver for keel_http_parse_request (and the chunked decoder
 * behind it), fed a stream of pipelined requests.
 *
 * The input is plain bytes, as a client would send them, so seeds are real
 * requests. Each message is parsed three ways: whole, split in two (the
 * split point scaled from the message's first byte) with prev_len, and grown
 * a few bytes at a time; the results must be identical, and every result
 * must satisfy the invariants a server relies on (spans inside the head,
 * token names, clean values, framing that follows from the headers). A
 * chunked body is decoded whole, split and byte by byte, and must agree;
 * then the next message is parsed from where the body ended. Each input runs
 * twice: under the default limits and under small limits derived from its
 * length, so the 414 and 431 paths are near.
 *
 * Build: see fuzz/run.sh. -DKEEL_FUZZ_STRICT_STATUS=0 accepts two different
 * error statuses for the same bytes cut differently.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "keel/http_parse.h"

#define MESSAGES_MAX 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int parse_request(const char *buf, size_t len, size_t prev_len, keel_http_msg *msg,
                         keel_http_header *headers, unsigned cap, const keel_http_limits *lim,
                         const void *ctx)
{
	(void)ctx;
	return keel_http_parse_request(buf, len, prev_len, msg, headers, cap, lim);
}

/* Everything a server relies on after keel_http_parse_request returned rc for buf[0..len). */
static void check_request(const char *buf, size_t len, int rc, const keel_http_msg *m,
                          const keel_http_header *hdrs, unsigned cap, const keel_http_limits *lim)
{
	size_t st = 0;
	size_t hl = fuzz_check_head(buf, len, rc, m, lim, &st);
	if (!hl)
		return;

	/* Request line: method SP target SP HTTP/1.x CRLF, with nothing else in it. */
	const char *line = buf + st;
	FUZZ_CHECK(m->method.ptr == line && m->method.len > 0);
	for (size_t i = 0; i < m->method.len; i++)
		FUZZ_CHECK(fuzz_is_tchar((unsigned char)m->method.ptr[i]));
	FUZZ_CHECK(line[m->method.len] == ' ');
	FUZZ_CHECK(m->target.ptr == line + m->method.len + 1 && m->target.len > 0);
	FUZZ_CHECK(fuzz_in_span(buf, hl, m->target));
	for (size_t i = 0; i < m->target.len; i++) {
		unsigned char c = (unsigned char)m->target.ptr[i];
		FUZZ_CHECK(c > 0x20 && c < 0x7f);
	}
	const char *v = m->target.ptr + m->target.len;
	FUZZ_CHECK((size_t)(v - buf) + 11 <= hl);
	FUZZ_CHECK(memcmp(v, " HTTP/1.", 8) == 0);
	FUZZ_CHECK(m->version_minor == 0 || m->version_minor == 1);
	/* HTTP/1.2 .. HTTP/1.9 are read as 1.1 (RFC 9110 2.5). */
	FUZZ_CHECK(v[8] == '0' + m->version_minor || (m->version_minor == 1 && v[8] >= '2' && v[8] <= '9'));
	FUZZ_CHECK(v[9] == '\r' && v[10] == '\n');
	FUZZ_CHECK((size_t)(v + 9 - line) <= lim->request_line_max);
	FUZZ_CHECK(m->status == 0 && m->reason.len == 0);

	struct fuzz_fields f;
	fuzz_check_fields(buf, hl, v + 11, m, hdrs, cap, lim, &f);

	/* Host: exactly one in 1.1, at most one in 1.0, and msg->host is it. */
	if (m->version_minor == 1)
		FUZZ_CHECK(f.nhost == 1);
	FUZZ_CHECK(f.nhost <= 1);
	if (f.host)
		FUZZ_CHECK(m->host.ptr == f.host->value.ptr && m->host.len == f.host->value.len);
	else
		FUZZ_CHECK(m->host.len == 0);
	/* RFC 9112 3.2: an accepted Host can never carry a delimiter into a URL built from it. */
	for (size_t i = 0; i < m->host.len; i++) {
		unsigned char c = (unsigned char)m->host.ptr[i];
		if (c <= 0x20 || c >= 0x7f || strchr("/?#@\\\"<>{}|^`", c))
			FUZZ_FAIL("accepted Host \"%.*s\" has byte 0x%02x", (int)m->host.len, m->host.ptr, c);
	}

	/* Framing follows from the headers and is never ambiguous (no CL with TE, TE only in 1.1).
	 */
	switch (m->body) {
	case KEEL_HTTP_BODY_CHUNKED:
		FUZZ_CHECK(f.nte >= 1 && f.ncl == 0 && m->version_minor == 1);
		FUZZ_CHECK(m->content_length == 0);
		FUZZ_CHECK(fuzz_ieq(fuzz_list_last(f.te_last->value), "chunked"));
		/* Chunked once and alone: any other coding is 501, chunked twice 400. */
		FUZZ_CHECK(f.te_nchunked == 1 && f.te_nother == 0);
		break;
	case KEEL_HTTP_BODY_LENGTH: FUZZ_CHECK(f.nte == 0 && f.ncl >= 1 && m->content_length > 0); break;
	case KEEL_HTTP_BODY_NONE: FUZZ_CHECK(f.nte == 0 && m->content_length == 0); break;
	default: FUZZ_FAIL("request body kind %d", (int)m->body);
	}

	bool ka = m->version_minor == 1 ? !f.conn_close : f.conn_ka && !f.conn_close;
	FUZZ_CHECK(m->keep_alive == ka);
	FUZZ_CHECK(m->expect_continue == (f.exp100 && m->version_minor == 1));
}

static void run_stream(const char *data, size_t size, const keel_http_limits *lim, unsigned cap,
                       bool null_limits)
{
	static struct fuzz_parse whole;
	struct fuzz_parser ps = {.parse = parse_request,
	                         .check = check_request,
	                         .cap = cap,
	                         .lim = lim,
	                         .null_limits = null_limits};
	size_t off = 0;
	for (int n = 0; n < MESSAGES_MAX && off < size; n++) {
		fuzz_parse_three_ways(&ps, &whole, data + off, size - off);
		if (whole.rc <= 0)
			return;
		off += (size_t)whole.rc;
		switch (whole.msg.body) {
		case KEEL_HTTP_BODY_LENGTH:
			if (whole.msg.content_length > size - off)
				return;
			off += (size_t)whole.msg.content_length;
			break;
		case KEEL_HTTP_BODY_CHUNKED: {
			size_t end = fuzz_chunked_three_ways(data + off, size - off);
			if (!end)
				return;
			off += end;
			break;
		}
		default: break;
		}
	}
}

/* ---- Valid requests must be accepted, exactly ----------------------------- */

struct gen {
	const uint8_t *in;
	size_t n, i;
	char *out;
	size_t len, cap;
};

static unsigned gen_byte(struct gen *g)
{
	return g->n ? g->in[g->i++ % g->n] : 0;
}

static void gen_put(struct gen *g, const char *s, size_t n)
{
	if (g->len + n > g->cap)
		abort(); /* sized for the worst case below */
	memcpy(g->out + g->len, s, n);
	g->len += n;
}

static void gen_puts(struct gen *g, const char *s)
{
	gen_put(g, s, strlen(s));
}

/* n bytes drawn from alphabet, mapped from the input. */
static void gen_from(struct gen *g, const char *alphabet, size_t n)
{
	size_t a = strlen(alphabet);
	for (size_t k = 0; k < n; k++) {
		char c = alphabet[gen_byte(g) % a];
		gen_put(g, &c, 1);
	}
}

#define GEN_HEADERS_MAX 12

struct gen_expect {
	size_t method_off, method_len, target_off, target_len, host_off, host_len;
	unsigned nheaders;
	size_t name_off[GEN_HEADERS_MAX + 2], name_len[GEN_HEADERS_MAX + 2];
	size_t value_off[GEN_HEADERS_MAX + 2], value_len[GEN_HEADERS_MAX + 2];
	int minor;
	enum keel_http_body body;
	uint64_t content_length;
};

static const char TCHARS[] = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/*
 * Build a request every strict parser must accept from the input's bytes:
 * some empty lines, a token method, a visible-ASCII target, HTTP/1.0 or 1.1,
 * a valid Host, headers with token names and values of field bytes (inner
 * whitespace and obs-text included) padded with OWS, and maybe a
 * Content-Length or chunked framing. It must parse, with every span where
 * it was put.
 */
static void valid_request(const uint8_t *data, size_t size)
{
	static char out[8192];
	struct gen g = {.in = data, .n = size, .out = out, .cap = sizeof out};
	struct gen_expect e = {0};
	unsigned sel = gen_byte(&g);

	for (unsigned k = sel % 3; k; k--)
		gen_puts(&g, "\r\n");
	static const char *methods[] = {"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", NULL};
	const char *m = methods[(sel >> 2) % 8];
	e.method_off = g.len;
	if (m)
		gen_puts(&g, m);
	else
		gen_from(&g, TCHARS, 1 + gen_byte(&g) % 16);
	e.method_len = g.len - e.method_off;
	gen_puts(&g, " ");
	e.target_off = g.len;
	gen_puts(&g, "/");
	/* Visible ASCII: '!' to '~'. */
	for (unsigned k = gen_byte(&g) % 64; k; k--) {
		char c = (char)(0x21 + gen_byte(&g) % 94);
		gen_put(&g, &c, 1);
	}
	e.target_len = g.len - e.target_off;
	e.minor = (sel >> 5) & 1;
	gen_puts(&g, e.minor ? " HTTP/1.1\r\n" : " HTTP/1.0\r\n");

	unsigned nh = gen_byte(&g) % (GEN_HEADERS_MAX + 1);
	unsigned host_at = e.minor || (sel & 0x40) ? gen_byte(&g) % (nh + 1) : ~0u;
	unsigned framing = gen_byte(&g) % 3; /* none, Content-Length, chunked (1.1 only) */
	if (framing == 2 && !e.minor)
		framing = 0;
	unsigned frame_at = framing ? gen_byte(&g) % (nh + 1) : ~0u;
	for (unsigned h = 0; h <= nh; h++) {
		if (h == host_at) {
			e.name_off[e.nheaders] = g.len;
			gen_puts(&g, (sel & 0x80) ? "host" : "Host");
			e.name_len[e.nheaders] = 4;
			gen_puts(&g, ": ");
			e.host_off = e.value_off[e.nheaders] = g.len;
			if (gen_byte(&g) % 4 == 0) {
				gen_puts(&g, "[::1]");
			} else {
				gen_from(&g, "abcdefghijklmnopqrstuvwxyz0123456789-.", 1 + gen_byte(&g) % 24);
			}
			if (gen_byte(&g) & 1) {
				gen_puts(&g, ":");
				gen_from(&g, "0123456789", 1 + gen_byte(&g) % 5);
			}
			e.host_len = e.value_len[e.nheaders] = g.len - e.host_off;
			gen_puts(&g, "\r\n");
			e.nheaders++;
		}
		if (h == frame_at) {
			e.name_off[e.nheaders] = g.len;
			if (framing == 1) {
				char v[32];
				e.content_length = 1 + gen_byte(&g) % 200;
				snprintf(v, sizeof v, "%llu", (unsigned long long)e.content_length);
				gen_puts(&g, "Content-Length");
				e.name_len[e.nheaders] = 14;
				gen_puts(&g, ":\t");
				e.value_off[e.nheaders] = g.len;
				gen_puts(&g, v);
				e.value_len[e.nheaders] = strlen(v);
				e.body = KEEL_HTTP_BODY_LENGTH;
			} else {
				gen_puts(&g, "Transfer-Encoding");
				e.name_len[e.nheaders] = 17;
				gen_puts(&g, ":");
				e.value_off[e.nheaders] = g.len;
				gen_puts(&g, (sel & 2) ? "chunked" : "Chunked");
				e.value_len[e.nheaders] = 7;
				e.body = KEEL_HTTP_BODY_CHUNKED;
			}
			gen_puts(&g, " \r\n");
			e.nheaders++;
		}
		if (h == nh)
			break;
		/* "X-" keeps the name clear of the headers that change framing. */
		e.name_off[e.nheaders] = g.len;
		gen_puts(&g, "X-");
		gen_from(&g, TCHARS, gen_byte(&g) % 20);
		e.name_len[e.nheaders] = g.len - e.name_off[e.nheaders];
		gen_puts(&g, ":");
		gen_from(&g, " \t", gen_byte(&g) % 3);
		e.value_off[e.nheaders] = g.len;
		size_t vl = gen_byte(&g) % 40;
		for (size_t k = 0; k < vl; k++) {
			unsigned b = gen_byte(&g);
			/* field-vchar and obs-text; whitespace only inside. */
			char c = (char)(b < 0x80 ? 0x21 + b % 94 : b);
			if (k && k + 1 < vl && b % 7 == 0)
				c = (b & 8) ? '\t' : ' ';
			gen_put(&g, &c, 1);
		}
		e.value_len[e.nheaders] = vl;
		gen_from(&g, " \t", gen_byte(&g) % 3);
		gen_puts(&g, "\r\n");
		e.nheaders++;
	}
	gen_puts(&g, "\r\n");
	size_t head_len = g.len;

	static keel_http_header hdrs[FUZZ_HEADERS_CAP];
	keel_http_msg msg;
	int rc = keel_http_parse_request(out, g.len, 0, &msg, hdrs, FUZZ_HEADERS_CAP, NULL);
	if (rc != (int)head_len)
		FUZZ_FAIL("valid request rejected: %d (%s), head %zu bytes:\n%.*s", rc, fuzz_rc_name(rc),
		          head_len, (int)head_len, out);
#define SPAN_AT(s, off, n) ((s).ptr == out + (off) && (s).len == (n))
	FUZZ_CHECK(SPAN_AT(msg.method, e.method_off, e.method_len));
	FUZZ_CHECK(SPAN_AT(msg.target, e.target_off, e.target_len));
	FUZZ_CHECK(msg.version_minor == e.minor);
	if (host_at != ~0u)
		FUZZ_CHECK(SPAN_AT(msg.host, e.host_off, e.host_len));
	FUZZ_CHECK(msg.nheaders == e.nheaders);
	for (unsigned h = 0; h < e.nheaders; h++) {
		if (!SPAN_AT(msg.headers[h].name, e.name_off[h], e.name_len[h]) ||
		    !(SPAN_AT(msg.headers[h].value, e.value_off[h], e.value_len[h]) ||
		      (e.value_len[h] == 0 && msg.headers[h].value.len == 0)))
			FUZZ_FAIL("valid request: header %u is \"%.*s: %.*s\"", h,
			          (int)msg.headers[h].name.len, msg.headers[h].name.ptr,
			          (int)msg.headers[h].value.len, msg.headers[h].value.ptr);
	}
#undef SPAN_AT
	FUZZ_CHECK(msg.body == e.body && msg.content_length == e.content_length);
	FUZZ_CHECK(msg.keep_alive == (e.minor == 1));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *buf = (const char *)data;

	keel_http_limits def;
	keel_http_limits_default(&def);
	run_stream(buf, size, &def, FUZZ_HEADERS_CAP, true);

	/* Small limits, from the length, so 414 and 431 are near; sometimes a caller's array below
	 * headers_max. */
	keel_http_limits small = {
	    .request_line_max = 12 + size % 53,
	    .head_max = 40 + (size * 7) % 251,
	    .headers_max = 1 + (unsigned)(size % 9),
	};
	run_stream(buf, size, &small, size % 3 ? FUZZ_HEADERS_CAP : 1 + (unsigned)(size % 5), false);

	valid_request(data, size);
	return 0;
}
