/*
 * Shared helpers for keel's libFuzzer drivers: a failure macro that names
 * the broken invariant, and a chunked-body harness that feeds the decoder
 * on a schedule of pieces and records what it produced.
 *
 * The one idea: the same bytes are decoded under several schedules (whole,
 * split in two, a piece at a time) and the outcomes must agree exactly.
 * Every window handed to the decoder is an exact-size heap copy, so ASan
 * sees a read one byte past the window even when the bytes behind it exist
 * in the caller's stream.
 */
#ifndef KEEL_FUZZ_H
#define KEEL_FUZZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/http_parse.h"

/*
 * With KEEL_FUZZ_STRICT_STATUS=1 (the default) two error results for the
 * same bytes must also be the same error; 0 only requires both to be errors.
 */
#ifndef KEEL_FUZZ_STRICT_STATUS
#define KEEL_FUZZ_STRICT_STATUS 1
#endif

#define FUZZ_FAIL(...)                                                           \
	do {                                                                     \
		fprintf(stderr, "\nFUZZ INVARIANT %s:%d: ", __FILE__, __LINE__); \
		fprintf(stderr, __VA_ARGS__);                                    \
		fputc('\n', stderr);                                             \
		abort();                                                         \
	} while (0)

#define FUZZ_CHECK(cond)                        \
	do {                                    \
		if (!(cond))                    \
			FUZZ_FAIL("%s", #cond); \
	} while (0)

static inline void *fuzz_dup(const void *p, size_t n)
{
	/* malloc(0) may return NULL; one byte keeps the pointer valid and ASan still sees n. */
	void *q = malloc(n ? n : 1);
	if (!q)
		abort();
	if (n)
		memcpy(q, p, n);
	return q;
}

/* How a byte stream is cut into the pieces the decoder sees. */
enum fuzz_sched_kind {
	SCHED_WHOLE, /* everything at once */
	SCHED_SPLIT, /* [0, k) then the rest */
	SCHED_STEPS, /* pieces of 1 + sizes[i] % step_max bytes; all 1s when nsizes == 0 */
};

struct fuzz_sched {
	enum fuzz_sched_kind kind;
	size_t k;
	const unsigned char *sizes;
	size_t nsizes;
	unsigned step_max;
};

/* The end of the next piece after lim (the stream is len bytes). */
static inline size_t fuzz_sched_next(const struct fuzz_sched *s, size_t idx, size_t lim, size_t len)
{
	size_t step;
	switch (s->kind) {
	case SCHED_SPLIT:
		if (idx == 0)
			return s->k < len ? s->k : len;
		return len;
	case SCHED_STEPS:
		step = s->nsizes ? 1 + s->sizes[idx % s->nsizes] % s->step_max : 1;
		return len - lim < step ? len : lim + step;
	case SCHED_WHOLE:
	default: return len;
	}
}

struct chunked_out {
	int rc;               /* the last result: DONE, INCOMPLETE (input ran out) or an error */
	size_t end;           /* on DONE: bytes of the stream the body took */
	uint64_t total;       /* the decoder's own count */
	size_t nbytes;        /* bytes collected from the spans */
	unsigned char *bytes; /* len bytes of room; the caller frees */
	unsigned char *tr;    /* the trailer section's spans (in bytes' block, len more) */
	size_t ntr;
	bool want; /* trailers were asked for */
};

static inline const char *fuzz_rc_name(int rc)
{
	switch (rc) {
	case KEEL_HTTP_INCOMPLETE: return "INCOMPLETE";
	case KEEL_HTTP_CHUNK_DATA: return "DATA";
	case KEEL_HTTP_CHUNK_DONE: return "DONE";
	case KEEL_HTTP_E400: return "E400";
	case KEEL_HTTP_E413: return "E413";
	case KEEL_HTTP_E414: return "E414";
	case KEEL_HTTP_E431: return "E431";
	case KEEL_HTTP_E501: return "E501";
	case KEEL_HTTP_E505: return "E505";
	default: return rc > 0 ? "OK" : "?";
	}
}

/*
 * Decode buf[0..len) as a chunked body under schedule s, checking on every
 * call: the result is a documented one, *used <= the window, INCOMPLETE
 * consumed the whole window, DATA returned a non-empty span inside the
 * consumed part of the window, the decoder's total equals the sum of the
 * spans, body_max is respected, and the number of calls stays linear.
 */
/*
 * Decode buf under schedule s. want: the trailer section handed out too
 * (KEEL_HTTP_CHUNK_TRAILER spans, gathered in out->tr), which must change
 * nothing else; fuzz_chunked_run asks for it.
 */
static inline void fuzz_chunked_run_want(const unsigned char *buf, size_t len, uint64_t body_max,
                                         const struct fuzz_sched *s, struct chunked_out *out, bool want)
{
	keel_http_chunked d;
	keel_http_chunked_init(&d, body_max);
	d.trailers_want = want;
	out->bytes = malloc(len ? 2 * len : 1);
	if (!out->bytes)
		abort();
	out->tr = out->bytes + len;
	out->ntr = 0;
	out->want = want;
	out->nbytes = 0;
	out->end = 0;
	out->rc = KEEL_HTTP_INCOMPLETE;

	size_t pos = 0, idx = 0, lim = fuzz_sched_next(s, idx++, 0, len), calls = 0;

	/* A call with nothing to decode must neither move nor finish. */
	{
		size_t used = 12345;
		keel_str data = {0};
		int rc = keel_http_chunked_decode(&d, (const char *)buf, 0, &used, &data);
		if (rc != KEEL_HTTP_INCOMPLETE || used != 0)
			FUZZ_FAIL("empty call on a fresh decoder: rc=%s used=%zu", fuzz_rc_name(rc), used);
	}

	for (;;) {
		if (++calls > 2 * len + 8)
			FUZZ_FAIL("chunked: %zu calls for %zu bytes (no progress)", calls, len);
		size_t wlen = lim - pos;
		char *w = fuzz_dup(buf + pos, wlen);
		size_t used = (size_t)-1;
		keel_str data = {NULL, (size_t)-1};
		int rc = keel_http_chunked_decode(&d, w, wlen, &used, &data);
		switch (rc) {
		case KEEL_HTTP_CHUNK_DATA:
			if (used > wlen || used == 0)
				FUZZ_FAIL("DATA: used=%zu of a %zu-byte window", used, wlen);
			if (data.len == 0 || data.ptr < w || data.ptr + data.len > w + used)
				FUZZ_FAIL("DATA: span [%td, +%zu) outside the %zu consumed bytes",
				          data.ptr - w, data.len, used);
			memcpy(out->bytes + out->nbytes, data.ptr, data.len);
			out->nbytes += data.len;
			break;
		case KEEL_HTTP_CHUNK_TRAILER:
			if (!want)
				FUZZ_FAIL("TRAILER without trailers_want");
			if (used > wlen || used == 0 || data.len == 0 || data.ptr < w ||
			    data.ptr + data.len != w + used)
				FUZZ_FAIL(
				    "TRAILER: span [%td, +%zu) is not the end of the %zu consumed bytes",
				    data.ptr - w, data.len, used);
			memcpy(out->tr + out->ntr, data.ptr, data.len);
			out->ntr += data.len;
			break;
		case KEEL_HTTP_CHUNK_DONE:
			if (used > wlen)
				FUZZ_FAIL("DONE: used=%zu of a %zu-byte window", used, wlen);
			break;
		case KEEL_HTTP_INCOMPLETE:
			if (used != wlen)
				FUZZ_FAIL("INCOMPLETE consumed %zu of %zu bytes (stall)", used, wlen);
			break;
		case KEEL_HTTP_E400:
		case KEEL_HTTP_E413: used = 0; break;
		default: FUZZ_FAIL("chunked: undocumented result %d", rc);
		}
		free(w);
		if (d.total != out->nbytes)
			FUZZ_FAIL("decoder total %llu != %zu bytes in spans", (unsigned long long)d.total,
			          out->nbytes);
		if (body_max && d.total > body_max)
			FUZZ_FAIL("decoded %llu bytes past body_max %llu", (unsigned long long)d.total,
			          (unsigned long long)body_max);
		out->rc = rc;
		if (rc < 0 && rc != KEEL_HTTP_INCOMPLETE)
			break;
		pos += used;
		if (rc == KEEL_HTTP_CHUNK_DONE) {
			out->end = pos;
			/* Finished is sticky and consumes nothing more. */
			size_t wl = len - pos;
			char *w2 = fuzz_dup(buf + pos, wl);
			size_t u2 = 999;
			keel_str d2 = {0};
			int rc2 = keel_http_chunked_decode(&d, w2, wl, &u2, &d2);
			free(w2);
			if (rc2 != KEEL_HTTP_CHUNK_DONE || u2 != 0)
				FUZZ_FAIL("call after DONE: rc=%s used=%zu", fuzz_rc_name(rc2), u2);
			break;
		}
		if (pos == lim) {
			if (lim == len) {
				out->rc = KEEL_HTTP_INCOMPLETE; /* out of input, even if the last
				                                   call was DATA */
				break;
			}
			lim = fuzz_sched_next(s, idx++, lim, len);
		}
	}
	out->total = d.total;
	if (out->rc == KEEL_HTTP_CHUNK_DONE && out->ntr) {
		/* The section the decoder checked: "name:value" lines, each ending in CRLF. */
		size_t lines = 0;
		for (size_t i = 0; i + 1 < out->ntr; i++)
			lines += out->tr[i] == '\r' && out->tr[i + 1] == '\n';
		if (out->tr[out->ntr - 2] != '\r' || out->tr[out->ntr - 1] != '\n')
			FUZZ_FAIL("trailer section does not end in CRLF");
		keel_http_header f[4];
		unsigned n = keel_http_trailers_parse((const char *)out->tr, out->ntr, f, 4);
		if (n != lines)
			FUZZ_FAIL("trailers: %u fields for %zu lines", n, lines);
		for (unsigned i = 0; i < n && i < 4; i++)
			if (!f[i].name.len || f[i].name.ptr < (const char *)out->tr ||
			    f[i].value.ptr + f[i].value.len > (const char *)out->tr + out->ntr)
				FUZZ_FAIL("trailer field %u outside its section", i);
	}
}

static inline void fuzz_chunked_run(const unsigned char *buf, size_t len, uint64_t body_max,
                                    const struct fuzz_sched *s, struct chunked_out *out)
{
	fuzz_chunked_run_want(buf, len, body_max, s, out, true);
}

/* Two runs over the same bytes must agree on everything observable. */
static inline void fuzz_chunked_same(const struct chunked_out *a, const struct chunked_out *b,
                                     const char *what)
{
	if (a->rc != b->rc || a->nbytes != b->nbytes || a->total != b->total ||
	    (a->rc == KEEL_HTTP_CHUNK_DONE && a->end != b->end) ||
	    memcmp(a->bytes, b->bytes, a->nbytes) != 0 ||
	    (a->rc == KEEL_HTTP_CHUNK_DONE && a->want && b->want &&
	     (a->ntr != b->ntr || memcmp(a->tr, b->tr, a->ntr) != 0)))
		FUZZ_FAIL("chunked %s differs: rc %s/%s bytes %zu/%zu end %zu/%zu", what, fuzz_rc_name(a->rc),
		          fuzz_rc_name(b->rc), a->nbytes, b->nbytes, a->end, b->end);
}

/* ---- Head checks shared by the request and response drivers ------------ */

#define FUZZ_HEADERS_CAP 128

static inline bool fuzz_is_tchar(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c && strchr("!#$%&'*+-.^_`|~", c));
}

static inline bool fuzz_ieq(keel_str s, const char *lit)
{
	size_t n = strlen(lit);
	if (s.len != n)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char a = (unsigned char)s.ptr[i], b = (unsigned char)lit[i];
		if (a >= 'A' && a <= 'Z')
			a += 32;
		if (b >= 'A' && b <= 'Z')
			b += 32;
		if (a != b)
			return false;
	}
	return true;
}

static inline bool fuzz_in_span(const char *base, size_t len, keel_str s)
{
	return s.ptr >= base && s.len <= len && (size_t)(s.ptr - base) <= len - s.len;
}

static inline bool fuzz_has_terminator(const char *p, size_t n)
{
	for (size_t i = 0; i + 4 <= n; i++)
		if (memcmp(p + i, "\r\n\r\n", 4) == 0)
			return true;
	return false;
}

/*
 * The elements of a comma-separated list, OWS trimmed, empty ones skipped:
 * an independent re-implementation, so the driver does not trust the
 * parser's own splitting. Returns false when there are no more.
 */
static inline bool fuzz_list_next(keel_str *v, keel_str *el)
{
	for (;;) {
		while (v->len && (*v->ptr == ',' || *v->ptr == ' ' || *v->ptr == '\t')) {
			v->ptr++;
			v->len--;
		}
		if (!v->len)
			return false;
		size_t n = 0;
		while (n < v->len && v->ptr[n] != ',')
			n++;
		el->ptr = v->ptr;
		el->len = n;
		v->ptr += n;
		v->len -= n;
		while (el->len && (el->ptr[el->len - 1] == ' ' || el->ptr[el->len - 1] == '\t'))
			el->len--;
		if (el->len)
			return true;
	}
}

static inline bool fuzz_list_has(keel_str v, const char *tok)
{
	keel_str el;
	while (fuzz_list_next(&v, &el))
		if (fuzz_ieq(el, tok))
			return true;
	return false;
}

static inline keel_str fuzz_list_last(keel_str v)
{
	keel_str el, last = {v.ptr, 0};
	while (fuzz_list_next(&v, &el))
		last = el;
	return last;
}

static inline bool fuzz_digits_equal(keel_str v, uint64_t want)
{
	if (v.len == 0 || v.len > 19)
		return false;
	uint64_t n = 0;
	for (size_t i = 0; i < v.len; i++) {
		if (v.ptr[i] < '0' || v.ptr[i] > '9')
			return false;
		n = n * 10 + (uint64_t)(v.ptr[i] - '0');
	}
	return n == want;
}

/* What the header lines say, recomputed by the driver. */
struct fuzz_fields {
	unsigned nhost, ncl, nte;
	unsigned te_nchunked, te_nother; /* Transfer-Encoding elements, across all its lines */
	const keel_http_header *host, *te_last;
	const keel_http_header *first_host, *first_cl;
	bool conn_close, conn_ka, conn_up, has_up, exp100;
};

/*
 * Check the header spans of a parsed head buf[0..hl) whose first header line
 * starts at next: one header per line, in order, token names followed by
 * ':', values of field bytes without surrounding whitespace running to their
 * line's CRLF, and the last line followed by the blank line. Every
 * Content-Length must equal content_length. Fills in *f.
 */
static inline void fuzz_check_fields(const char *buf, size_t hl, const char *next, const keel_http_msg *m,
                                     const keel_http_header *hdrs, unsigned cap, const keel_http_limits *lim,
                                     struct fuzz_fields *f)
{
	memset(f, 0, sizeof(*f));
	FUZZ_CHECK(m->nheaders <= cap && m->nheaders <= lim->headers_max);
	FUZZ_CHECK(m->nheaders == 0 || m->headers == hdrs);
	for (unsigned i = 0; i < m->nheaders; i++) {
		const keel_http_header *h = &m->headers[i];
		if (h->name.ptr != next)
			FUZZ_FAIL("header %u does not start where the previous line ended", i);
		FUZZ_CHECK(h->name.len > 0 && fuzz_in_span(buf, hl, h->name));
		for (size_t j = 0; j < h->name.len; j++)
			FUZZ_CHECK(fuzz_is_tchar((unsigned char)h->name.ptr[j]));
		FUZZ_CHECK(h->name.ptr[h->name.len] == ':');
		FUZZ_CHECK(fuzz_in_span(buf, hl, h->value));
		FUZZ_CHECK(h->value.ptr >= h->name.ptr + h->name.len + 1);
		for (const char *p = h->name.ptr + h->name.len + 1; p < h->value.ptr; p++)
			FUZZ_CHECK(*p == ' ' || *p == '\t');
		for (size_t j = 0; j < h->value.len; j++) {
			unsigned char c = (unsigned char)h->value.ptr[j];
			if (c == '\r' || c == '\n' || c == 0x7f || (c < 0x20 && c != '\t'))
				FUZZ_FAIL("header %u value has byte 0x%02x", i, c);
		}
		if (h->value.len) {
			char a = h->value.ptr[0], z = h->value.ptr[h->value.len - 1];
			FUZZ_CHECK(a != ' ' && a != '\t' && z != ' ' && z != '\t');
		}
		const char *p = h->value.ptr + h->value.len;
		while (*p == ' ' || *p == '\t')
			p++;
		if (p[0] != '\r' || p[1] != '\n')
			FUZZ_FAIL("header %u value does not run to its line's CRLF", i);
		next = p + 2;

		if (fuzz_ieq(h->name, "host")) {
			f->nhost++;
			f->host = h;
			if (!f->first_host)
				f->first_host = h;
		} else if (fuzz_ieq(h->name, "content-length")) {
			f->ncl++;
			if (!f->first_cl)
				f->first_cl = h;
			if (!fuzz_digits_equal(h->value, m->content_length))
				FUZZ_FAIL("Content-Length \"%.*s\" but content_length %llu",
				          (int)h->value.len, h->value.ptr,
				          (unsigned long long)m->content_length);
		} else if (fuzz_ieq(h->name, "transfer-encoding")) {
			f->nte++;
			f->te_last = h;
			keel_str list = h->value, el;
			while (fuzz_list_next(&list, &el)) {
				if (fuzz_ieq(el, "chunked"))
					f->te_nchunked++;
				else
					f->te_nother++;
			}
		} else if (fuzz_ieq(h->name, "connection")) {
			f->conn_close |= fuzz_list_has(h->value, "close");
			f->conn_ka |= fuzz_list_has(h->value, "keep-alive");
			f->conn_up |= fuzz_list_has(h->value, "upgrade");
		} else if (fuzz_ieq(h->name, "upgrade")) {
			f->has_up = true;
		} else if (fuzz_ieq(h->name, "expect")) {
			f->exp100 |= fuzz_ieq(h->value, "100-continue");
		}
	}
	if (next != buf + hl - 2)
		FUZZ_FAIL("headers end %td bytes before the blank line", buf + hl - 2 - next);
	FUZZ_CHECK(m->upgrade == (f->conn_up && f->has_up));
	/* The lookup finds the first header of a name, whatever its case. */
	FUZZ_CHECK(keel_http_header_find(m, "Host") == f->first_host);
	FUZZ_CHECK(keel_http_header_find(m, "content-LENGTH") == f->first_cl);
}

/* ---- Parsing a head whole and in pieces -------------------------------- */

typedef int (*fuzz_parse_fn)(const char *buf, size_t len, size_t prev_len, keel_http_msg *msg,
                             keel_http_header *headers, unsigned cap, const keel_http_limits *lim,
                             const void *ctx);
typedef void (*fuzz_check_fn)(const char *buf, size_t len, int rc, const keel_http_msg *m,
                              const keel_http_header *hdrs, unsigned cap, const keel_http_limits *lim);

struct fuzz_parser {
	fuzz_parse_fn parse;
	fuzz_check_fn check;
	const void *ctx;
	unsigned cap;
	const keel_http_limits *lim; /* for the checks */
	bool null_limits;            /* pass NULL (the defaults) to the parser; lim must be the defaults */
};

struct fuzz_parse {
	int rc;
	const char *base;
	keel_http_msg msg;
	keel_http_header hdrs[FUZZ_HEADERS_CAP];
};

static inline const char *fuzz_rebase(const char *ptr, const char *from, const char *to)
{
	return ptr ? to + (ptr - from) : NULL;
}

/*
 * Parse buf[0..len) under schedule s as a server reading a socket would:
 * each call sees the grown buffer and the previous length, until the result
 * is not INCOMPLETE. Prefix calls get exact-size copies so ASan catches a
 * read past len, and each one's result is checked. The last call sees buf.
 */
static inline void fuzz_parse_pieces(const struct fuzz_parser *ps, struct fuzz_parse *p, const char *buf,
                                     size_t len, const struct fuzz_sched *s)
{
	const keel_http_limits *plim = ps->null_limits ? NULL : ps->lim;
	size_t prev = 0, idx = 0;
	for (;;) {
		size_t cut = fuzz_sched_next(s, idx++, prev, len);
		if (cut == len) {
			p->base = buf;
			p->rc = ps->parse(buf, len, prev, &p->msg, p->hdrs, ps->cap, plim, ps->ctx);
			ps->check(buf, len, p->rc, &p->msg, p->hdrs, ps->cap, ps->lim);
			return;
		}
		char *w = fuzz_dup(buf, cut);
		p->rc = ps->parse(w, cut, prev, &p->msg, p->hdrs, ps->cap, plim, ps->ctx);
		ps->check(w, cut, p->rc, &p->msg, p->hdrs, ps->cap, ps->lim);
		if (p->rc != KEEL_HTTP_INCOMPLETE) {
			/* The copy dies here: re-point the spans at buf, where the same bytes are.
			 */
			if (p->rc > 0) {
				keel_http_msg *m = &p->msg;
				m->method.ptr = fuzz_rebase(m->method.ptr, w, buf);
				m->target.ptr = fuzz_rebase(m->target.ptr, w, buf);
				m->reason.ptr = fuzz_rebase(m->reason.ptr, w, buf);
				m->host.ptr = fuzz_rebase(m->host.ptr, w, buf);
				for (unsigned i = 0; i < m->nheaders; i++) {
					p->hdrs[i].name.ptr = fuzz_rebase(p->hdrs[i].name.ptr, w, buf);
					p->hdrs[i].value.ptr = fuzz_rebase(p->hdrs[i].value.ptr, w, buf);
				}
			}
			p->base = buf;
			free(w);
			return;
		}
		free(w);
		prev = cut;
	}
}

static inline bool fuzz_str_same(keel_str a, const char *abase, keel_str b, const char *bbase)
{
	if (a.len != b.len)
		return false;
	return a.len == 0 || a.ptr - abase == b.ptr - bbase;
}

/* The same bytes parsed two ways: the same verdict, and on success the same message. */
static inline void fuzz_same_parse(const struct fuzz_parse *a, const struct fuzz_parse *b, const char *what)
{
	if (a->rc != b->rc) {
		bool both_errors = a->rc < -1 && b->rc < -1;
		if (!both_errors || KEEL_FUZZ_STRICT_STATUS)
			FUZZ_FAIL("%s: whole gives %d (%s), pieces give %d (%s)", what, a->rc,
			          fuzz_rc_name(a->rc), b->rc, fuzz_rc_name(b->rc));
		return;
	}
	if (a->rc <= 0)
		return;
	const keel_http_msg *x = &a->msg, *y = &b->msg;
	bool same = fuzz_str_same(x->method, a->base, y->method, b->base) &&
	            fuzz_str_same(x->target, a->base, y->target, b->base) &&
	            fuzz_str_same(x->reason, a->base, y->reason, b->base) &&
	            fuzz_str_same(x->host, a->base, y->host, b->base) && x->status == y->status &&
	            x->version_minor == y->version_minor && x->nheaders == y->nheaders &&
	            x->body == y->body && x->content_length == y->content_length &&
	            x->keep_alive == y->keep_alive && x->expect_continue == y->expect_continue &&
	            x->upgrade == y->upgrade && x->head_len == y->head_len;
	for (unsigned i = 0; same && i < x->nheaders; i++)
		same = fuzz_str_same(x->headers[i].name, a->base, y->headers[i].name, b->base) &&
		       fuzz_str_same(x->headers[i].value, a->base, y->headers[i].value, b->base);
	if (!same)
		FUZZ_FAIL("%s: same bytes, different message", what);
}

#define FUZZ_STEPS_LEN_MAX 2048 /* growing by a few bytes rescans the request line: bound it */

/*
 * One head at buf[0..len) parsed whole, split in two (at a point scaled from
 * its first byte) and grown a few bytes at a time; all must agree. The whole
 * parse is left in *whole.
 */
static inline void fuzz_parse_three_ways(const struct fuzz_parser *ps, struct fuzz_parse *whole,
                                         const char *buf, size_t len)
{
	static struct fuzz_parse split, steps;
	unsigned char b0 = len ? (unsigned char)buf[0] : 0;
	struct fuzz_sched w = {.kind = SCHED_WHOLE};
	fuzz_parse_pieces(ps, whole, buf, len, &w);

	struct fuzz_sched s = {.kind = SCHED_SPLIT, .k = (size_t)b0 * len / 255};
	fuzz_parse_pieces(ps, &split, buf, len, &s);
	fuzz_same_parse(whole, &split, "split in two");

	if (len <= FUZZ_STEPS_LEN_MAX) {
		struct fuzz_sched st = {.kind = SCHED_STEPS,
		                        .sizes = (const unsigned char *)buf,
		                        .nsizes = len < 16 ? len : 16,
		                        .step_max = 1 + b0 % 8};
		fuzz_parse_pieces(ps, &steps, buf, len, &st);
		fuzz_same_parse(whole, &steps, "grown in steps");
	}
}

static inline bool fuzz_is_head_error(int rc)
{
	return rc == KEEL_HTTP_E400 || rc == KEEL_HTTP_E414 || rc == KEEL_HTTP_E431 || rc == KEEL_HTTP_E501 ||
	       rc == KEEL_HTTP_E505;
}

/*
 * RFC 9112 2.2 lets a recipient skip empty lines before the start line, and
 * keel skips up to this many (a policy of parse.c, mirrored here): they
 * count in head_len, and the start line begins after them.
 */
#define FUZZ_EMPTY_LINES_MAX 8

/* Bytes of complete CRLF pairs at the start of buf[0..len). */
static inline size_t fuzz_leading_crlfs(const char *buf, size_t len)
{
	size_t i = 0;
	while (i + 1 < len && buf[i] == '\r' && buf[i + 1] == '\n')
		i += 2;
	return i;
}

/*
 * The checks every head result shares: INCOMPLETE only without a blank line
 * (after the skipped empty lines) and within head_max; errors documented; a
 * head ends at the first CRLF CRLF after the empty lines. Returns the head
 * length with *start set to where the start line begins, or 0 when there is
 * nothing more to check.
 */
static inline size_t fuzz_check_head(const char *buf, size_t len, int rc, const keel_http_msg *m,
                                     const keel_http_limits *lim, size_t *start)
{
	size_t s = fuzz_leading_crlfs(buf, len);
	if (rc == KEEL_HTTP_INCOMPLETE) {
		if (fuzz_has_terminator(buf + s, len - s))
			FUZZ_FAIL("INCOMPLETE although the %zu bytes hold CRLF CRLF after %zu of "
			          "empty lines",
			          len, s);
		if (len > lim->head_max)
			FUZZ_FAIL("INCOMPLETE with %zu bytes > head_max %zu", len, lim->head_max);
		return 0;
	}
	if (rc < 0) {
		if (!fuzz_is_head_error(rc))
			FUZZ_FAIL("undocumented result %d", rc);
		return 0;
	}
	size_t hl = (size_t)rc;
	FUZZ_CHECK(m->head_len == hl);
	FUZZ_CHECK(s <= 2 * FUZZ_EMPTY_LINES_MAX);
	FUZZ_CHECK(hl <= len && hl >= s + 4);
	FUZZ_CHECK(hl <= lim->head_max);
	FUZZ_CHECK(memcmp(buf + hl - 4, "\r\n\r\n", 4) == 0);
	if (fuzz_has_terminator(buf + s, hl - s - 1))
		FUZZ_FAIL("head_len %zu is past the first CRLF CRLF", hl);
	*start = s;
	return hl;
}

/* Decode a chunked body at buf[0..len) whole, split and byte by byte; its length, or 0. */
static inline size_t fuzz_chunked_three_ways(const char *buf, size_t len)
{
	const unsigned char *u = (const unsigned char *)buf;
	struct fuzz_sched whole = {.kind = SCHED_WHOLE};
	struct fuzz_sched split = {.kind = SCHED_SPLIT, .k = len ? (size_t)u[0] * len / 255 : 0};
	struct fuzz_sched bytes = {.kind = SCHED_STEPS};
	struct chunked_out a, b, c;
	fuzz_chunked_run(u, len, 0, &whole, &a);
	fuzz_chunked_run(u, len, 0, &split, &b);
	fuzz_chunked_same(&a, &b, "whole vs split");
	if (len <= 4096) {
		fuzz_chunked_run(u, len, 0, &bytes, &c);
		fuzz_chunked_same(&a, &c, "whole vs byte by byte");
		free(c.bytes);
	}
	size_t end = a.rc == KEEL_HTTP_CHUNK_DONE ? a.end : 0;
	free(a.bytes);
	free(b.bytes);
	return end;
}

#endif
