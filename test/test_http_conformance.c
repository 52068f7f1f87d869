/*
 * HTTP/1.1 parser conformance: keel's parser against llhttp's test corpus,
 * plus direct checks of the limits and of what the corpus does not reach.
 *
 * The corpus (../shared/conformance/llhttp/ beside the repository, MIT, from nodejs/llhttp) is
 * markdown: each case is raw bytes (an `http` block) and what llhttp reports
 * for them (a `log` block: spans, "headers complete", body spans, "message
 * complete", or a final "error code=N"). This program reads every case of
 * type request or response, feeds the bytes to keel_http_parse_request /
 * keel_http_parse_response and keel_http_chunked_decode the way a server
 * would (head, body by the parser's framing, next pipelined message), once
 * whole and once a byte at a time, and compares the two results with each
 * other and with llhttp's: method, target, version, status and reason,
 * headers, body bytes, how many messages, and where the input is rejected.
 *
 * The one design idea: the expected result is rebuilt from the log into the
 * same shape as keel's result, so a case is a comparison of two values, and
 * every way keel may legitimately differ (mostly rejecting what llhttp
 * tolerates, as RFC 9112 lets a strict recipient do) is named per case in the
 * allowlist below, with its reason, and in docs/conformance.md. A case on the
 * allowlist must still differ in exactly the stated way, so the list cannot
 * go stale silently.
 *
 * Three rules apply to the whole corpus rather than to single cases:
 *  - HTTP/1.1 requests without Host: keel must reject them (RFC 9112 3.2),
 *    llhttp does not check. The original bytes must be rejected at the first
 *    such message; the comparison then runs on a copy with "Host:
 *    keel.invalid" added after each such request line (and that header left
 *    out of the comparison).
 *  - keel judges a head once it is complete; llhttp stops at the first bad
 *    byte. Where llhttp rejects a head that the input never finishes, the
 *    head is ended (CRLF) and keel must reject it then.
 *  - llhttp's header value spans keep trailing whitespace, which is not part
 *    of a field value (RFC 9110 5.5); it is dropped before comparing.
 *
 *   build/test/test_http_conformance [-v] [-l] [file-or-title-filter]
 *     -v  print every case;  -l  the deliberate differences as markdown
 * KEEL_LLHTTP_CORPUS overrides the corpus directory (default
 * ../shared/conformance/llhttp, relative to the repository root).
 */
#include <stdarg.h>
#include <strings.h>

#include "keel/http_parse.h"
#include "test.h"

/* ---- Growable byte strings ---------------------------------------------- */

typedef struct sbuf {
	char *p;
	size_t len, cap;
} sbuf;

static void sb_add(sbuf *b, const void *p, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 64;
		while (cap < b->len + n + 1)
			cap *= 2;
		b->p = realloc(b->p, cap);
		if (!b->p)
			FAIL("out of memory");
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->len, p, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void sb_addc(sbuf *b, char c)
{
	sb_add(b, &c, 1);
}

static void sb_free(sbuf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

static bool sb_eq(const sbuf *a, const sbuf *b)
{
	return a->len == b->len && (a->len == 0 || memcmp(a->p, b->p, a->len) == 0);
}

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...)
{
	char tmp[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n > 0)
		sb_add(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* Append bytes quoted and escaped, cut at 60, for diagnostics. */
static void sb_quote(sbuf *b, const char *p, size_t n)
{
	sb_addc(b, '"');
	for (size_t i = 0; i < n && i < 60; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c == '"' || c == '\\')
			sb_printf(b, "\\%c", c);
		else if (c >= 0x20 && c < 0x7f)
			sb_addc(b, (char)c);
		else
			sb_printf(b, "\\x%02x", c);
	}
	sb_add(b, n > 60 ? "\"..." : "\"", n > 60 ? 4 : 1);
}

/* ---- What a parse produced (from llhttp's log, or from keel) ------------ */

typedef struct hdr {
	sbuf name, value;
} hdr;

typedef struct msgrec {
	sbuf method, target, reason, body;
	int status, major, minor;
	hdr *h;
	unsigned nh, caph;
	bool head_done, complete;
	size_t begin_off; /* llhttp only: where the message begins in the input */
} msgrec;

enum outcome {
	OUT_END = 0, /* all input used, maybe in the middle of a message */
	OUT_ERROR,   /* rejected */
	OUT_UPGRADE, /* CONNECT or Upgrade: what follows is not HTTP */
	OUT_CLOSED,  /* the connection closes after a message, and more data follows */
};

static const char *const outcome_name[] = {"end", "error", "upgrade", "closed"};

typedef struct result {
	msgrec *m;
	unsigned nm, capm;
	enum outcome out;
	int code;     /* keel: the negative status; llhttp: the error code */
	unsigned at;  /* messages completed before the outcome */
	int finish;   /* llhttp_finish()'s verdict: -1 not asked, 0 safe, 1 safe (ends a message), 2 unsafe */
	bool in_head; /* keel: the input ends inside a head */
} result;

static msgrec *res_new_msg(result *r)
{
	if (r->nm == r->capm) {
		r->capm = r->capm ? r->capm * 2 : 4;
		r->m = realloc(r->m, r->capm * sizeof(*r->m));
		if (!r->m)
			FAIL("out of memory");
	}
	msgrec *m = &r->m[r->nm++];
	memset(m, 0, sizeof(*m));
	return m;
}

static hdr *msg_new_hdr(msgrec *m)
{
	if (m->nh == m->caph) {
		m->caph = m->caph ? m->caph * 2 : 8;
		m->h = realloc(m->h, m->caph * sizeof(*m->h));
		if (!m->h)
			FAIL("out of memory");
	}
	hdr *h = &m->h[m->nh++];
	memset(h, 0, sizeof(*h));
	return h;
}

static unsigned res_completed(const result *r)
{
	unsigned n = 0;
	for (unsigned i = 0; i < r->nm; i++)
		n += r->m[i].complete;
	return n;
}

static void msg_free(msgrec *m)
{
	sb_free(&m->method);
	sb_free(&m->target);
	sb_free(&m->reason);
	sb_free(&m->body);
	for (unsigned j = 0; j < m->nh; j++) {
		sb_free(&m->h[j].name);
		sb_free(&m->h[j].value);
	}
	free(m->h);
}

static void res_free(result *r)
{
	for (unsigned i = 0; i < r->nm; i++)
		msg_free(&r->m[i]);
	free(r->m);
	memset(r, 0, sizeof(*r));
}

/* ---- The corpus ----------------------------------------------------------- */

typedef struct tcase {
	const char *file; /* "request/invalid.md" */
	char title[256];
	int line;
	char type[64];
	bool pause, skip_body;
	sbuf http, log;
} tcase;

static char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	sbuf b = {0};
	char tmp[65536];
	size_t n;
	while ((n = fread(tmp, 1, sizeof(tmp), f)) > 0)
		sb_add(&b, tmp, n);
	fclose(f);
	sb_add(&b, "", 0);
	*len = b.len;
	return b.p;
}

/* Read the value of "key": "value" out of a meta comment. */
static void meta_str(const char *meta, const char *key, char *out, size_t cap)
{
	out[0] = '\0';
	char pat[64];
	snprintf(pat, sizeof(pat), "\"%s\"", key);
	const char *p = strstr(meta, pat);
	if (!p)
		return;
	p = strchr(p + strlen(pat), '"');
	if (!p)
		return;
	p++;
	size_t n = 0;
	while (p[n] && p[n] != '"' && n + 1 < cap)
		n++;
	memcpy(out, p, n);
	out[n] = '\0';
}

/* Split a corpus file into cases: heading, meta comment, http block, log block. */
static tcase *load_cases(const char *dir, const char *file, unsigned *ncases)
{
	char path[1024];
	snprintf(path, sizeof(path), "%s/%s", dir, file);
	size_t len;
	char *text = read_file(path, &len);
	if (!text)
		return NULL;
	tcase *cases = NULL;
	unsigned n = 0, cap = 0;
	char title[256] = "", meta[512] = "";
	int lineno = 0, meta_line = 0;
	sbuf *block = NULL, other = {0};
	tcase cur;
	memset(&cur, 0, sizeof(cur));
	bool have_http = false;
	for (char *line = text; line && *line;) {
		char *nl = strchr(line, '\n');
		size_t ll = nl ? (size_t)(nl - line) : strlen(line);
		lineno++;
		if (block) {
			if (ll >= 3 && memcmp(line, "```", 3) == 0) {
				if (block == &cur.log && have_http) {
					if (n == cap) {
						cap = cap ? cap * 2 : 32;
						cases = realloc(cases, cap * sizeof(*cases));
						if (!cases)
							FAIL("out of memory");
					}
					cur.file = file;
					snprintf(cur.title, sizeof(cur.title), "%s", title);
					cur.line = meta_line;
					meta_str(meta, "type", cur.type, sizeof(cur.type));
					cur.pause = strstr(meta, "\"pause\"") != NULL;
					cur.skip_body = strstr(meta, "\"skipBody\"") != NULL;
					cases[n++] = cur;
					memset(&cur, 0, sizeof(cur));
					have_http = false;
					meta[0] = '\0';
				} else if (block == &cur.http) {
					have_http = true;
				} else if (block == &other) {
					sb_free(&other);
				}
				block = NULL;
			} else {
				sb_add(block, line, ll);
				sb_addc(block, '\n');
			}
		} else if (ll >= 7 && memcmp(line, "```http", 7) == 0) {
			sb_free(&cur.http);
			block = &cur.http;
		} else if (ll >= 6 && memcmp(line, "```log", 6) == 0) {
			sb_free(&cur.log);
			block = &cur.log;
		} else if (ll >= 3 && memcmp(line, "```", 3) == 0) {
			block = &other; /* some other fenced block: read and dropped */
		} else if (ll > 0 && line[0] == '#') {
			size_t i = 0;
			while (i < ll && (line[i] == '#' || line[i] == ' '))
				i++;
			snprintf(title, sizeof(title), "%.*s", (int)(ll - i), line + i);
		} else if (ll > 10 && memcmp(line, "<!-- meta=", 10) == 0) {
			snprintf(meta, sizeof(meta), "%.*s", (int)ll, line);
			meta_line = lineno;
		}
		line = nl ? nl + 1 : NULL;
	}
	sb_free(&cur.http);
	sb_free(&cur.log);
	free(text);
	*ncases = n;
	return cases;
}

static void add_utf8(sbuf *b, unsigned long cp)
{
	/* llhttp's runner turns \xHH and \NNN into JavaScript characters, written out as UTF-8. */
	if (cp < 0x80) {
		sb_addc(b, (char)cp);
	} else if (cp < 0x800) {
		sb_addc(b, (char)(0xc0 | (cp >> 6)));
		sb_addc(b, (char)(0x80 | (cp & 0x3f)));
	} else {
		sb_addc(b, (char)(0xe0 | ((cp >> 12) & 0x0f)));
		sb_addc(b, (char)(0x80 | ((cp >> 6) & 0x3f)));
		sb_addc(b, (char)(0x80 | (cp & 0x3f)));
	}
}

static int hexdig(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * An http block to bytes, as llhttp's test runner does it: drop one trailing
 * newline, delete backslash-newline, newline to CRLF, then the escapes.
 */
static void decode_http(const sbuf *src, sbuf *out)
{
	size_t n = src->len;
	if (n && src->p[n - 1] == '\n')
		n--;
	sbuf a = {0};
	for (size_t i = 0; i < n; i++) {
		if (src->p[i] == '\\' && i + 1 < n && src->p[i + 1] == '\n') {
			i++;
			continue;
		}
		if (src->p[i] == '\n')
			sb_add(&a, "\r\n", 2);
		else
			sb_addc(&a, src->p[i]);
	}
	for (size_t i = 0; i < a.len; i++) {
		char c = a.p[i];
		if (c != '\\' || i + 1 == a.len) {
			sb_addc(out, c);
			continue;
		}
		char e = a.p[i + 1];
		if (e == 'r' || e == 'n' || e == 't' || e == 'f') {
			sb_addc(out, e == 'r' ? '\r' : e == 'n' ? '\n' : e == 't' ? '\t' : '\f');
			i++;
		} else if (e == 'x' && i + 2 < a.len && hexdig(a.p[i + 2]) >= 0) {
			unsigned long v = 0;
			size_t j = i + 2;
			while (j < a.len && hexdig(a.p[j]) >= 0)
				v = v * 16 + (unsigned long)hexdig(a.p[j++]);
			add_utf8(out, v);
			i = j - 1;
		} else if (e >= '0' && e <= '7') {
			unsigned long v = 0;
			size_t j = i + 1;
			while (j < a.len && j < i + 4 && a.p[j] >= '0' && a.p[j] <= '7')
				v = v * 8 + (unsigned long)(a.p[j++] - '0');
			add_utf8(out, v);
			i = j - 1;
		} else {
			sb_addc(out, c);
		}
	}
	sb_free(&a);
}

/*
 * A log block to a result. Spans are printed raw by llhttp's fixture (CR and
 * LF as separate "=cr"/"=lf" spans); the runner only unescapes \t and \f.
 */
static void parse_log(const sbuf *log, result *r)
{
	memset(r, 0, sizeof(*r));
	r->finish = -1;
	msgrec *m = NULL;
	bool in_value = false;
	sbuf line = {0};
	for (size_t i = 0; i < log->len;) {
		size_t e = i;
		while (e < log->len && log->p[e] != '\n')
			e++;
		line.len = 0;
		for (size_t k = i; k < e; k++) {
			if (log->p[k] == '\\' && k + 1 < e &&
			    (log->p[k + 1] == 't' || log->p[k + 1] == 'f')) {
				sb_addc(&line, log->p[k + 1] == 't' ? '\t' : '\f');
				k++;
			} else {
				sb_addc(&line, log->p[k]);
			}
		}
		sb_add(&line, "", 0);
		i = e + 1;
		const char *l = line.p;
		if (strncmp(l, "off=", 4) != 0)
			continue;
		const char *sp = strchr(l, ' ');
		if (!sp)
			continue;
		size_t off = strtoul(l + 4, NULL, 10);
		const char *ev = sp + 1;
		if (strncmp(ev, "finish=", 7) == 0) {
			r->finish = atoi(ev + 7);
		} else if (strcmp(ev, "message begin") == 0) {
			m = res_new_msg(r);
			m->begin_off = off;
			in_value = false;
		} else if (strncmp(ev, "len=", 4) == 0 && m) {
			size_t len = strtoul(ev + 4, NULL, 10);
			const char *s = strstr(ev, "span[");
			if (!s)
				continue;
			const char *kind = s + 5, *ke = strchr(kind, ']');
			if (!ke || ke[1] != '=')
				continue;
			const char *v = ke + 2;
			char byte;
			const char *data = NULL;
			if (strcmp(v, "cr") == 0) {
				byte = '\r';
				data = &byte;
				len = 1;
			} else if (strcmp(v, "lf") == 0) {
				byte = '\n';
				data = &byte;
				len = 1;
			} else if (*v == '"' && strlen(v + 1) >= len) {
				data = v + 1;
			} else {
				FAIL("unreadable log line: %s", l);
			}
			size_t kl = (size_t)(ke - kind);
#define KIND(lit) (kl == sizeof(lit) - 1 && memcmp(kind, lit, kl) == 0)
			if (KIND("method")) {
				sb_add(&m->method, data, len);
			} else if (KIND("url")) {
				sb_add(&m->target, data, len);
			} else if (KIND("status")) {
				sb_add(&m->reason, data, len);
			} else if (KIND("header_field") && !m->head_done) {
				if (in_value || m->nh == 0)
					msg_new_hdr(m);
				in_value = false;
				sb_add(&m->h[m->nh - 1].name, data, len);
			} else if (KIND("header_value") && !m->head_done) {
				if (m->nh == 0)
					msg_new_hdr(m);
				in_value = true;
				sb_add(&m->h[m->nh - 1].value, data, len);
			} else if (KIND("body")) {
				sb_add(&m->body, data, len);
			}
#undef KIND
		} else if (strncmp(ev, "headers complete", 16) == 0 && m) {
			const char *s = strstr(ev, "status=");
			if (s)
				m->status = atoi(s + 7);
			const char *v = strstr(ev, " v=");
			if (v) {
				m->major = atoi(v + 3);
				const char *slash = strchr(v, '/');
				m->minor = slash ? atoi(slash + 1) : 0;
			}
			m->head_done = true;
		} else if (strcmp(ev, "message complete") == 0 && m) {
			m->complete = true;
		} else if (strncmp(ev, "error code=", 11) == 0) {
			int code = atoi(ev + 11);
			r->code = code;
			r->at = res_completed(r);
			if (code == 21 || code == 22 || code == 23)
				r->out = OUT_UPGRADE;
			else if (code == 5) /* "Data after Connection: close" */
				r->out = OUT_CLOSED;
			else
				r->out = OUT_ERROR;
			break;
		}
	}
	sb_free(&line);
	/*
	 * llhttp's value spans keep trailing whitespace; RFC 9110 5.5 says it is
	 * not part of the field value, and keel drops it. Not a difference.
	 */
	for (unsigned i = 0; i < r->nm; i++)
		for (unsigned j = 0; j < r->m[i].nh; j++) {
			sbuf *v = &r->m[i].h[j].value;
			while (v->len && (v->p[v->len - 1] == ' ' || v->p[v->len - 1] == '\t'))
				v->p[--v->len] = '\0';
		}
	/* A message cut off inside its head is not a message yet. */
	if (r->out == OUT_END && r->nm && !r->m[r->nm - 1].head_done)
		msg_free(&r->m[--r->nm]);
}

/* ---- Running keel's parser over the bytes ------------------------------- */

#define HCAP 128
#define INJECTED_HOST "keel.invalid"

enum phase { PH_HEAD, PH_LENGTH, PH_CHUNKED, PH_CLOSE, PH_STOP };

typedef struct runner {
	const char *in;
	size_t n;
	bool request;
	keel_str method; /* the request a response answers (HEAD for skipBody cases) */
	bool drop_injected_host;
	size_t pos;  /* start of the head being parsed, or the next body byte */
	size_t prev; /* head bytes a previous call saw */
	enum phase ph;
	uint64_t remaining;
	keel_http_chunked ck;
	bool stop_after_body, close_after_body;
	msgrec *cur;
	result *r;
} runner;

static void end_message(runner *st)
{
	st->cur->complete = true;
	if (st->stop_after_body) {
		st->r->out = OUT_UPGRADE;
		st->r->at = res_completed(st->r);
		st->ph = PH_STOP;
	} else if (st->close_after_body) {
		/* The connection closes: nothing after this message is read. */
		st->r->out = OUT_CLOSED;
		st->r->at = res_completed(st->r);
		st->ph = PH_STOP;
	} else {
		st->ph = PH_HEAD;
	}
}

static void fail_with(runner *st, int code)
{
	st->r->out = OUT_ERROR;
	st->r->code = code;
	st->r->at = res_completed(st->r);
	st->ph = PH_STOP;
}

static void record_head(runner *st, const keel_http_msg *km)
{
	msgrec *m = res_new_msg(st->r);
	st->cur = m;
	sb_add(&m->method, km->method.ptr, km->method.len);
	sb_add(&m->target, km->target.ptr, km->target.len);
	sb_add(&m->reason, km->reason.ptr, km->reason.len);
	m->status = km->status;
	m->major = 1;
	m->minor = km->version_minor;
	for (unsigned i = 0; i < km->nheaders; i++) {
		const keel_http_header *h = &km->headers[i];
		if (st->drop_injected_host && keel_str_ieq(h->name, "host") &&
		    keel_str_eq(h->value, INJECTED_HOST))
			continue;
		hdr *x = msg_new_hdr(m);
		sb_add(&x->name, h->name.ptr, h->name.len);
		sb_add(&x->value, h->value.ptr, h->value.len);
	}
	m->head_done = true;
}

/* Consume what the first avail bytes of the input allow. */
static void run_step(runner *st, size_t avail)
{
	for (;;) {
		switch (st->ph) {
		case PH_HEAD: {
			if (st->pos >= avail)
				return;
			keel_http_msg km;
			keel_http_header hs[HCAP];
			const char *b = st->in + st->pos;
			size_t len = avail - st->pos;
			int rc = st->request ? keel_http_parse_request(b, len, st->prev, &km, hs, HCAP, NULL)
			                     : keel_http_parse_response(b, len, st->prev, &km, hs, HCAP, NULL,
			                                                st->method);
			if (rc == KEEL_HTTP_INCOMPLETE) {
				st->prev = len;
				return;
			}
			if (rc < 0) {
				fail_with(st, rc);
				return;
			}
			if ((size_t)rc != km.head_len || (size_t)rc > len)
				FAIL("parser returned %d with head_len %zu over %zu bytes", rc, km.head_len,
				     len);
			record_head(st, &km);
			st->pos += (size_t)rc;
			st->prev = 0;
			st->stop_after_body = false;
			st->close_after_body = !km.keep_alive;
			if (st->request && keel_str_eq(km.method, "CONNECT")) {
				/* A CONNECT request has no content; the tunnel starts after the head. */
				st->stop_after_body = true;
				end_message(st);
				break;
			}
			if (!st->request && km.status == 101) {
				/* Switching Protocols: the new protocol starts right after the head. */
				st->stop_after_body = true;
				end_message(st);
				break;
			}
			if (st->request && km.upgrade)
				st->stop_after_body = true; /* the request's content first, then the switch */
			switch (km.body) {
			case KEEL_HTTP_BODY_NONE: end_message(st); break;
			case KEEL_HTTP_BODY_LENGTH:
				st->remaining = km.content_length;
				st->ph = PH_LENGTH;
				break;
			case KEEL_HTTP_BODY_CHUNKED:
				keel_http_chunked_init(&st->ck, 0);
				st->ph = PH_CHUNKED;
				break;
			case KEEL_HTTP_BODY_UNTIL_CLOSE: st->ph = PH_CLOSE; break;
			}
			break;
		}
		case PH_LENGTH: {
			size_t take = avail - st->pos;
			if (take > st->remaining)
				take = (size_t)st->remaining;
			sb_add(&st->cur->body, st->in + st->pos, take);
			st->pos += take;
			st->remaining -= take;
			if (st->remaining)
				return;
			end_message(st);
			break;
		}
		case PH_CHUNKED: {
			if (st->pos >= avail)
				return;
			size_t used = 0;
			keel_str data = {0};
			int rc = keel_http_chunked_decode(&st->ck, st->in + st->pos, avail - st->pos, &used,
			                                  &data);
			if (used > avail - st->pos)
				FAIL("chunked decoder used %zu of %zu bytes", used, avail - st->pos);
			if (rc == KEEL_HTTP_CHUNK_DATA) {
				if (data.ptr < st->in + st->pos ||
				    data.ptr + data.len > st->in + st->pos + used)
					FAIL("chunk data span outside the bytes used");
				sb_add(&st->cur->body, data.ptr, data.len);
				st->pos += used;
			} else if (rc == KEEL_HTTP_INCOMPLETE) {
				if (used != avail - st->pos)
					FAIL("chunked decoder: INCOMPLETE after %zu of %zu bytes", used,
					     avail - st->pos);
				st->pos += used;
				return;
			} else if (rc == KEEL_HTTP_CHUNK_DONE) {
				st->pos += used;
				end_message(st);
			} else {
				fail_with(st, rc);
				return;
			}
			break;
		}
		case PH_CLOSE:
			sb_add(&st->cur->body, st->in + st->pos, avail - st->pos);
			st->pos = avail;
			return;
		case PH_STOP: return;
		}
	}
}

static void run_keel(const char *in, size_t n, bool request, keel_str method, bool drop_injected_host,
                     bool bytewise, result *r)
{
	memset(r, 0, sizeof(*r));
	runner st;
	memset(&st, 0, sizeof(st));
	st.in = in;
	st.n = n;
	st.request = request;
	st.method = method;
	st.drop_injected_host = drop_injected_host;
	st.r = r;
	st.ph = PH_HEAD;
	for (size_t avail = bytewise ? (n ? 1 : 0) : n;; avail++) {
		run_step(&st, avail);
		if (st.ph == PH_STOP || avail >= n)
			break;
	}
	if (r->out == OUT_CLOSED && st.pos == n)
		r->out = OUT_END; /* closed with nothing after it: simply the end */
	if (r->out == OUT_UPGRADE || r->out == OUT_CLOSED || r->out == OUT_ERROR)
		r->finish = 0;
	else if (st.ph == PH_HEAD && st.pos == n)
		r->finish = 0; /* between messages */
	else if (st.ph == PH_CLOSE)
		r->finish = 1; /* the close ends the message */
	else
		r->finish = 2;
	r->in_head = st.ph == PH_HEAD && st.pos < n;
}

/* ---- Comparing -------------------------------------------------------- */

enum verdict { V_MATCH, V_STRICTER, V_LENIENT, V_DIFFER };
static const char *const verdict_name[] = {"match", "stricter", "lenient", "differ"};

static void describe(sbuf *d, const result *r, bool request)
{
	sb_printf(d, "%s", outcome_name[r->out]);
	if (r->out != OUT_END)
		sb_printf(d, "(code %d) after %u message(s)", r->code, r->at);
	for (unsigned i = 0; i < r->nm; i++) {
		const msgrec *m = &r->m[i];
		sb_printf(d, "\n      [%u] ", i);
		if (request) {
			sb_add(d, m->method.p, m->method.len);
			sb_addc(d, ' ');
			sb_quote(d, m->target.p, m->target.len);
		} else {
			sb_printf(d, "%d ", m->status);
			sb_quote(d, m->reason.p, m->reason.len);
		}
		sb_printf(d, " HTTP/%d.%d, %u header(s), body ", m->major, m->minor, m->nh);
		sb_quote(d, m->body.p, m->body.len);
		sb_printf(d, "%s", m->complete ? ", complete" : ", incomplete");
	}
}

static bool field_eq(sbuf *why, unsigned i, const char *what, const sbuf *e, const sbuf *k)
{
	if (sb_eq(e, k))
		return true;
	sb_printf(why, "message %u %s: llhttp ", i, what);
	sb_quote(why, e->p, e->len);
	sb_add(why, ", keel ", 7);
	sb_quote(why, k->p, k->len);
	return false;
}

static bool msg_eq(const msgrec *e, const msgrec *k, unsigned i, bool request, sbuf *why)
{
	if (request) {
		if (!field_eq(why, i, "method", &e->method, &k->method) ||
		    !field_eq(why, i, "target", &e->target, &k->target))
			return false;
	} else {
		if (e->status != k->status) {
			sb_printf(why, "message %u status: llhttp %d, keel %d", i, e->status, k->status);
			return false;
		}
		if (!field_eq(why, i, "reason", &e->reason, &k->reason))
			return false;
	}
	if (e->major != k->major || e->minor != k->minor) {
		sb_printf(why, "message %u version: llhttp %d.%d, keel %d.%d", i, e->major, e->minor,
		          k->major, k->minor);
		return false;
	}
	if (e->nh != k->nh) {
		sb_printf(why, "message %u: llhttp %u headers, keel %u", i, e->nh, k->nh);
		return false;
	}
	for (unsigned j = 0; j < e->nh; j++) {
		char what[64];
		snprintf(what, sizeof(what), "header %u name", j);
		if (!field_eq(why, i, what, &e->h[j].name, &k->h[j].name))
			return false;
		snprintf(what, sizeof(what), "header %u value", j);
		if (!field_eq(why, i, what, &e->h[j].value, &k->h[j].value))
			return false;
	}
	if (!field_eq(why, i, "body", &e->body, &k->body))
		return false;
	if (e->complete != k->complete) {
		sb_printf(why, "message %u: llhttp %s, keel %s", i, e->complete ? "complete" : "incomplete",
		          k->complete ? "complete" : "incomplete");
		return false;
	}
	return true;
}

static bool prefix_eq(const result *e, const result *k, unsigned n, bool request, sbuf *why)
{
	for (unsigned i = 0; i < n; i++) {
		if (i >= e->nm || i >= k->nm) {
			sb_printf(why, "llhttp has %u messages, keel %u", e->nm, k->nm);
			return false;
		}
		if (!msg_eq(&e->m[i], &k->m[i], i, request, why))
			return false;
	}
	return true;
}

/*
 * Where keel stands against llhttp. STRICTER: keel rejects a message llhttp
 * accepts (or rejects a later one), everything before it agreeing. LENIENT:
 * keel accepts a message llhttp rejects. DIFFER: anything else.
 */
static enum verdict compare(const result *e, const result *k, bool request, sbuf *why)
{
	if (k->out == OUT_ERROR &&
	    (e->out == OUT_END || k->at < e->at || (k->at == e->at && e->out != OUT_ERROR))) {
		if (!prefix_eq(e, k, k->at, request, why))
			return V_DIFFER;
		sb_printf(why, "keel rejects (%d) message %u", k->code, k->at);
		return V_STRICTER;
	}
	if (e->out == OUT_ERROR && (k->out != OUT_ERROR || k->at > e->at)) {
		if (!prefix_eq(e, k, e->at, request, why))
			return V_DIFFER;
		sb_printf(why, "llhttp rejects (code %d) message %u, keel: %s after %u", e->code, e->at,
		          outcome_name[k->out], k->out == OUT_END ? k->nm : k->at);
		return V_LENIENT;
	}
	if (e->out != k->out || (e->out != OUT_END && e->at != k->at)) {
		sb_printf(why, "llhttp: %s after %u message(s), keel: %s after %u", outcome_name[e->out],
		          e->at, outcome_name[k->out], k->at);
		return V_DIFFER;
	}
	unsigned n = e->out == OUT_END ? e->nm : e->at;
	if (e->out == OUT_END && e->nm != k->nm) {
		sb_printf(why, "llhttp has %u message(s), keel %u", e->nm, k->nm);
		return V_DIFFER;
	}
	if (!prefix_eq(e, k, n, request, why))
		return V_DIFFER;
	if (e->finish >= 0 && e->finish != k->finish) {
		sb_printf(why, "at the end of input llhttp_finish says %d, keel %d", e->finish, k->finish);
		return V_DIFFER;
	}
	return V_MATCH;
}

/* The two keel runs (whole, byte by byte) must agree exactly. */
static bool same_result(const result *a, const result *b, bool request, sbuf *why)
{
	if (a->out != b->out || a->code != b->code || a->at != b->at || a->nm != b->nm ||
	    a->finish != b->finish) {
		sb_add(why, "whole: ", 7);
		describe(why, a, request);
		sb_add(why, "\n    byte by byte: ", 19);
		describe(why, b, request);
		return false;
	}
	for (unsigned i = 0; i < a->nm; i++)
		if (!msg_eq(&a->m[i], &b->m[i], i, request, why))
			return false;
	return true;
}

/* ---- Deliberate differences -------------------------------------------- */

typedef struct allowed {
	const char *file, *title;
	enum verdict verdict;
	const char *why;
} allowed;

/*
 * Every case where keel deliberately does not do what llhttp does. Keep in
 * step with docs/conformance.md.
 */
#define NOT_HTTP                                                                           \
	"keel speaks HTTP only: HTTP-name is the case-sensitive \"HTTP\" (RFC 9112 2.3); " \
	"llhttp also parses RTSP and ICE"
#define TOKEN_METHOD                                                                      \
	"method = token (RFC 9112 3.1) and methods are extensible (RFC 9110 9.1, 16.1): " \
	"an unknown method is the server's to answer 501, not a parse error"
static const allowed allowlist[] = {
    {"request/sample.md", "No HTTP version", V_STRICTER,
     "an HTTP/0.9 request line (no version): keel implements HTTP/1.0 and 1.1 only (RFC 9112 2.3)"},
    {"request/method.md", "SOURCE request with ICE", V_STRICTER, NOT_HTTP},
    {"request/method.md", "OPTIONS request with RTSP", V_STRICTER, NOT_HTTP},
    {"request/method.md", "ANNOUNCE request with RTSP", V_STRICTER, NOT_HTTP},
    {"request/method.md", "PRI request HTTP2", V_DIFFER,
     "llhttp stops at method PRI (the HTTP/2 preface); keel has no prior-knowledge HTTP/2, parses "
     "\"PRI * HTTP/1.1\" as a request with an unknown method and rejects the \"SM\" line after it"},
    {"request/transfer-encoding.md", "POST with `chunked` as last transfer-encoding", V_STRICTER,
     "Transfer-Encoding: deflate, chunked: keel decodes no coding but chunked and answers 501, "
     "as RFC 9112 6.1 says a server SHOULD"},
    {"request/transfer-encoding.md", "POST with `chunked` as last transfer-encoding (multiple headers)",
     V_STRICTER, "the same codings on two lines: 501 (RFC 9112 6.1)"},
    {"request/invalid.md", "HTTP protocol and ANNOUNCE method", V_LENIENT, TOKEN_METHOD},
    {"request/invalid.md", "Invalid method", V_LENIENT, TOKEN_METHOD},
    {"response/sample.md", "RTSP response", V_STRICTER, NOT_HTTP},
    {"response/sample.md", "ICE response", V_STRICTER, NOT_HTTP},
    {"response/sample.md", "HTTP version 0.9", V_STRICTER,
     "a status line claiming HTTP/0.9: keel's client accepts HTTP/1.0 and 1.1 only (RFC 9112 2.3)"},
    {NULL, NULL, V_MATCH, NULL},
};

static const allowed *find_allowed(const tcase *tc)
{
	for (size_t i = 0; allowlist[i].file; i++)
		if (strcmp(allowlist[i].file, tc->file) == 0 && strcmp(allowlist[i].title, tc->title) == 0)
			return &allowlist[i];
	return NULL;
}

/* ---- Host injection ----------------------------------------------------- */

/*
 * Copy in to out, adding "Host: keel.invalid" after the request line of each
 * HTTP/1.1 message (per llhttp's message offsets, up to the one it stops at)
 * whose head has no Host line. Returns the index of the first message changed,
 * or -1 if none was.
 */
static int inject_host(const char *in, size_t n, const result *e, sbuf *out)
{
	int first = -1;
	size_t copied = 0;
	unsigned last = e->out == OUT_END ? e->nm : e->at + 1;
	for (unsigned i = 0; i < e->nm && i < last; i++) {
		size_t b = e->m[i].begin_off;
		if (b < copied || b >= n)
			continue;
		const char *le = memmem(in + b, n - b, "\r\n", 2);
		if (!le)
			continue;
		size_t line_end = (size_t)(le - in);
		if (line_end - b < 9 || memcmp(in + line_end - 9, " HTTP/1.1", 9) != 0)
			continue;
		const char *he = memmem(in + line_end, n - line_end, "\r\n\r\n", 4);
		size_t head_end = he ? (size_t)(he - in) + 2 : n;
		bool has_host = false;
		for (size_t p = line_end + 2; p + 5 <= head_end; p++)
			if (in[p - 2] == '\r' && in[p - 1] == '\n' && strncasecmp(in + p, "host:", 5) == 0)
				has_host = true;
		if (has_host)
			continue;
		sb_add(out, in + copied, line_end + 2 - copied);
		sb_add(out, "Host: " INJECTED_HOST "\r\n", strlen("Host: " INJECTED_HOST "\r\n"));
		copied = line_end + 2;
		if (first < 0)
			first = (int)i;
	}
	sb_add(out, in + copied, n - copied);
	return first;
}

/* ---- Direct checks: limits, and what the corpus does not reach --------- */

static int parse_req(const char *s, const keel_http_limits *l, keel_http_msg *m)
{
	static keel_http_header hs[HCAP];
	return keel_http_parse_request(s, strlen(s), 0, m, hs, HCAP, l);
}

static int parse_resp(const char *s, const char *method, keel_http_msg *m)
{
	static keel_http_header hs[HCAP];
	keel_str meth = {method, method ? strlen(method) : 0};
	return keel_http_parse_response(s, strlen(s), 0, m, hs, HCAP, NULL, meth);
}

/*
 * Parse s whole, then again with the buffer growing a byte per call (prev_len
 * the last length): the first result that is not INCOMPLETE must be the
 * whole parse's, with the same message.
 */
static int bytewise_same(const char *s, const keel_http_limits *l, bool request)
{
	keel_http_header h1[HCAP], h2[HCAP];
	keel_http_msg m1, m2;
	size_t n = strlen(s);
	int whole = request ? keel_http_parse_request(s, n, 0, &m1, h1, HCAP, l)
	                    : keel_http_parse_response(s, n, 0, &m1, h1, HCAP, l, (keel_str){0});
	int rc = KEEL_HTTP_INCOMPLETE;
	size_t prev = 0, len;
	for (len = 1; len <= n; len++) {
		rc = request ? keel_http_parse_request(s, len, prev, &m2, h2, HCAP, l)
		             : keel_http_parse_response(s, len, prev, &m2, h2, HCAP, l, (keel_str){0});
		if (rc != KEEL_HTTP_INCOMPLETE)
			break;
		prev = len;
	}
	if (rc != whole)
		FAIL("byte by byte %d (at %zu bytes), whole %d, for %s", rc, len, whole, s);
	if (rc > 0) {
		ASSERT_EQ(m1.head_len, m2.head_len);
		ASSERT_EQ(m1.nheaders, m2.nheaders);
		ASSERT(m1.method.len == m2.method.len && m1.target.len == m2.target.len);
		ASSERT_EQ(m1.body, m2.body);
		ASSERT_EQ(m1.content_length, m2.content_length);
		ASSERT_EQ(m1.keep_alive, m2.keep_alive);
		for (unsigned i = 0; i < m1.nheaders; i++) {
			ASSERT(m1.headers[i].name.ptr == m2.headers[i].name.ptr);
			ASSERT_EQ(m1.headers[i].value.len, m2.headers[i].value.len);
		}
	}
	return whole;
}

/*
 * Decode a whole chunked body, in pieces of step bytes; returns DONE or an
 * error, body in *out, and with tr the trailer section's bytes in *tr.
 */
static int chunked_all(const char *s, uint64_t body_max, size_t step, sbuf *out, sbuf *tr)
{
	keel_http_chunked d;
	keel_http_chunked_init(&d, body_max);
	d.trailers_want = tr != NULL;
	size_t n = strlen(s), pos = 0, avail = step < n ? step : n;
	for (;;) {
		size_t used = 0;
		keel_str data = {0};
		int rc = pos < avail ? keel_http_chunked_decode(&d, s + pos, avail - pos, &used, &data)
		                     : KEEL_HTTP_INCOMPLETE;
		pos += used;
		if (rc == KEEL_HTTP_CHUNK_DATA) {
			sb_add(out, data.ptr, data.len);
			continue;
		}
		if (rc == KEEL_HTTP_CHUNK_TRAILER) {
			ASSERT(tr && data.len > 0 && data.ptr == s + pos - data.len);
			sb_add(tr, data.ptr, data.len);
			continue;
		}
		if (rc != KEEL_HTTP_INCOMPLETE)
			return rc;
		if (avail == n)
			return KEEL_HTTP_INCOMPLETE;
		avail = avail + step < n ? avail + step : n;
	}
}

/*
 * s's trailer section, gathered at every step size, is raw exactly, and
 * reads as the fields in want ("name=value" strings, NULL-terminated).
 */
static void check_trailers(const char *s, const char *raw, const char *const *want)
{
	for (size_t step = 1; step <= strlen(s) + 1; step++) {
		sbuf out = {0}, tr = {0};
		ASSERT_EQ(chunked_all(s, 0, step, &out, &tr), KEEL_HTTP_CHUNK_DONE);
		if (tr.len != strlen(raw) || (tr.len && memcmp(tr.p, raw, tr.len) != 0))
			FAIL("trailers of %s (step %zu): \"%.*s\"", s, step, (int)tr.len, tr.p ? tr.p : "");
		keel_http_header f[4];
		unsigned nf = keel_http_trailers_parse(tr.p, tr.len, f, 4), nw = 0;
		for (; want[nw]; nw++) {
			ASSERT(nw < nf && nw < 4);
			char got[128];
			snprintf(got, sizeof(got), "%.*s=%.*s", (int)f[nw].name.len, f[nw].name.ptr,
			         (int)f[nw].value.len, f[nw].value.ptr);
			if (strcmp(got, want[nw]) != 0)
				FAIL("trailer %u of %s: %s, want %s", nw, s, got, want[nw]);
		}
		ASSERT_EQ(nf, nw);
		sb_free(&out);
		sb_free(&tr);
	}
}

static void check_chunked(const char *s, uint64_t body_max, int want, const char *body)
{
	for (size_t step = 1; step <= strlen(s) + 1; step = step < 4 ? step + 1 : step * 2) {
		sbuf out = {0};
		int rc = chunked_all(s, body_max, step, &out, NULL);
		if (rc != want)
			FAIL("chunked %s (step %zu): %d, want %d", s, step, rc, want);
		if (body && (out.len != strlen(body) || memcmp(out.p, body, out.len) != 0))
			FAIL("chunked %s (step %zu): body \"%s\"", s, step, out.p ? out.p : "");
		sb_free(&out);
	}
}

static void unit_limits(void)
{
	keel_http_limits l;
	keel_http_msg m;
	char buf[4096];

	/* Request line longer than request_line_max: 414, complete or not. */
	keel_http_limits_default(&l);
	l.request_line_max = 32;
	snprintf(buf, sizeof(buf), "GET /%s HTTP/1.1\r\nHost: a\r\n\r\n", "aaaaaaaaaaaaaaaaaa"); /* 32 */
	ASSERT_EQ(bytewise_same(buf, &l, true), (int)strlen(buf));
	snprintf(buf, sizeof(buf), "GET /%s HTTP/1.1\r\nHost: a\r\n\r\n", "aaaaaaaaaaaaaaaaaaa"); /* 33 */
	ASSERT_EQ(bytewise_same(buf, &l, true), KEEL_HTTP_E414);
	snprintf(buf, sizeof(buf), "GET /%s", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
	ASSERT_EQ(parse_req(buf, &l, &m), KEEL_HTTP_E414); /* no line end yet, already too long */

	/* Head larger than head_max: 431, complete or not. */
	keel_http_limits_default(&l);
	l.head_max = 64;
	const char *h64 = "GET / HTTP/1.1\r\nHost: a\r\nX-Pad: 0123456789012345678901234567\r\n\r\n";
	ASSERT_EQ(strlen(h64), 64);
	ASSERT_EQ(bytewise_same(h64, &l, true), 64);
	const char *h65 = "GET / HTTP/1.1\r\nHost: a\r\nX-Pad: 01234567890123456789012345678\r\n\r\n";
	ASSERT_EQ(bytewise_same(h65, &l, true), KEEL_HTTP_E431);
	ASSERT_EQ(
	    parse_req("GET / HTTP/1.1\r\nHost: a\r\nX-Pad: 012345678901234567890123456789012345", &l, &m),
	    KEEL_HTTP_E431);

	/*
	 * The status does not depend on how the bytes arrive: a bare CR after the
	 * point where 414 or 431 is decided is never reached, whole or in pieces.
	 */
	keel_http_limits_default(&l);
	l.request_line_max = 8;
	ASSERT_EQ(bytewise_same("GET /abcdefgh\rx HTTP/1.1\r\nHost: a\r\n\r\n", &l, true), KEEL_HTTP_E414);
	ASSERT_EQ(bytewise_same("GET /abc\rx HTTP/1.1\r\nHost: a\r\n\r\n", &l, true), KEEL_HTTP_E400);
	keel_http_limits_default(&l);
	l.head_max = 40;
	ASSERT_EQ(bytewise_same("GET / HTTP/1.1\r\nHost: a\r\nX-Pad: 0123456789012\rx\r\n\r\n", &l, true),
	          KEEL_HTTP_E431);
	ASSERT_EQ(bytewise_same("HTTP/1.1 200 OK\r\nX-Pad: 01234567890123456789\rx\r\n\r\n", &l, false),
	          KEEL_HTTP_E431);
	l.head_max = 11;
	ASSERT_EQ(bytewise_same("\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n\r\n", &l, true),
	          KEEL_HTTP_E431);

	/* More header lines than headers_max: 431. */
	keel_http_limits_default(&l);
	l.headers_max = 3;
	ASSERT_GE(bytewise_same("GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n", &l, true), 1);
	ASSERT_EQ(bytewise_same("GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", &l, true),
	          KEEL_HTTP_E431);

	/* Content-Length: the largest 19-digit value fits; 20 digits is refused, not wrapped. */
	ASSERT_GE(
	    parse_req("PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 9999999999999999999\r\n\r\n", NULL, &m),
	    1);
	ASSERT(m.content_length == 9999999999999999999ull);
	ASSERT_EQ(bytewise_same("PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n",
	                        NULL, true),
	          KEEL_HTTP_E400);
	ASSERT_EQ(parse_req("PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
	                    NULL, &m),
	          KEEL_HTTP_E400);

	/* Transfer codings. */
	ASSERT_EQ(bytewise_same("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
	                        NULL, true),
	          KEEL_HTTP_E501);
	ASSERT_EQ(
	    parse_req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", NULL, &m),
	    KEEL_HTTP_E400);
	ASSERT_EQ(
	    parse_req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", NULL, &m),
	    KEEL_HTTP_E400);
	ASSERT_EQ(bytewise_same("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", NULL, true),
	          KEEL_HTTP_E400);

	/* Versions: HTTP/2+ and HTTP/0.x are 505, junk is 400; HTTP/1.2+ is read as HTTP/1.1 (RFC 9110 2.5). */
	ASSERT_EQ(bytewise_same("GET / HTTP/2.0\r\nHost: a\r\n\r\n", NULL, true), KEEL_HTTP_E505);
	ASSERT_EQ(parse_req("GET / HTTP/3.0\r\nHost: a\r\n\r\n", NULL, &m), KEEL_HTTP_E505);
	ASSERT_EQ(parse_req("GET / HTTP/0.9\r\nHost: a\r\n\r\n", NULL, &m), KEEL_HTTP_E505);
	ASSERT(parse_req("GET / HTTP/1.2\r\nHost: a\r\n\r\n", NULL, &m) > 0);
	ASSERT_EQ(m.version_minor, 1);
	ASSERT(m.keep_alive);
	/* as 1.1: Host is required */
	ASSERT_EQ(parse_req("GET / HTTP/1.9\r\n\r\n", NULL, &m), KEEL_HTTP_E400);
	ASSERT(parse_resp("HTTP/1.7 200 OK\r\nContent-Length: 0\r\n\r\n", NULL, &m) > 0);
	ASSERT_EQ(m.version_minor, 1);
	ASSERT_EQ(parse_resp("HTTP/2.0 200 OK\r\n\r\n", NULL, &m), KEEL_HTTP_E400);
	ASSERT_EQ(parse_req("GET / HTTP/1.1x\r\nHost: a\r\n\r\n", NULL, &m), KEEL_HTTP_E400);
	ASSERT_EQ(parse_req("GET / http/1.1\r\nHost: a\r\n\r\n", NULL, &m), KEEL_HTTP_E400);

	/* Chunk sizes: 15 hex digits are fine, 16 and more are refused before they can overflow. */
	check_chunked("fffffffffffffff\r\n", 0, KEEL_HTTP_INCOMPLETE, NULL);
	check_chunked("10000000000000000\r\n", 0, KEEL_HTTP_E400, NULL);
	check_chunked("0000000000000000000001\r\nx\r\n0\r\n\r\n", 0, KEEL_HTTP_E400, NULL);

	/* body_max: a chunk that would pass it is refused at its size line, alone or added up. */
	check_chunked("a\r\n0123456789\r\n0\r\n\r\n", 10, KEEL_HTTP_CHUNK_DONE, "0123456789");
	check_chunked("b\r\n0123456789a\r\n0\r\n\r\n", 10, KEEL_HTTP_E413, NULL);
	check_chunked("5\r\n01234\r\n6\r\n567890\r\n0\r\n\r\n", 10, KEEL_HTTP_E413, NULL);
}

/* A target's path, normalized: want NULL means refused with 400. */
static void check_target(const char *target, const char *path, const char *query, const char *authority)
{
	keel_http_target t;
	char scratch[256];
	keel_str in = {target, strlen(target)};
	int rc = keel_http_target_parse(in, &t, NULL);
	if (rc == KEEL_HTTP_INCOMPLETE)
		rc = keel_http_target_parse(in, &t, scratch);
	if (!path) {
		if (rc != KEEL_HTTP_E400)
			FAIL("target %s: %d, expected 400 (path %.*s)", target, rc, (int)t.path.len,
			     t.path.ptr);
		return;
	}
	if (rc != 0)
		FAIL("target %s: refused (%d), expected path %s", target, rc, path);
	if (!keel_str_eq(t.path, path))
		FAIL("target %s: path %.*s, expected %s", target, (int)t.path.len, t.path.ptr, path);
	if (!keel_str_eq(t.query, query ? query : ""))
		FAIL("target %s: query %.*s, expected %s", target, (int)t.query.len, t.query.ptr, query);
	if (!keel_str_eq(t.authority, authority ? authority : ""))
		FAIL("target %s: authority %.*s, expected %s", target, (int)t.authority.len, t.authority.ptr,
		     authority ? authority : "");
	/* Normalizing is idempotent: the result is already normal. */
	char again[256];
	long n = keel_http_path_normalize(t.path.ptr, t.path.len, again);
	if (t.form != KEEL_HTTP_TARGET_ASTERISK &&
	    (n != (long)t.path.len || memcmp(again, t.path.ptr, t.path.len)))
		FAIL("target %s: normalizing %.*s again changes it", target, (int)t.path.len, t.path.ptr);
}

static void unit_targets(void)
{
	check_target("/", "/", NULL, NULL);
	check_target("/a/b?x=1", "/a/b", "x=1", NULL);
	check_target("/a/b/", "/a/b/", NULL, NULL);
	/* dot segments (RFC 3986 5.2.4), plain or encoded */
	check_target("/api/../admin", "/admin", NULL, NULL);
	check_target("/api/%2e%2e/admin", "/admin", NULL, NULL);
	check_target("/api/%2E./admin?q=/..", "/admin", "q=/..", NULL);
	check_target("/a/./b/.", "/a/b/", NULL, NULL);
	check_target("/a/b/..", "/a/", NULL, NULL);
	check_target("/..", NULL, NULL, NULL);
	check_target("/a/../..", NULL, NULL, NULL);
	/* slashes merged */
	check_target("//docs", "/docs", NULL, NULL);
	check_target("/a//b///c", "/a/b/c", NULL, NULL);
	/* unreserved escapes decoded, the rest upper-cased and kept */
	check_target("/%7Euser/%41%2d", "/~user/A-", NULL, NULL);
	check_target("/a%2fb", "/a%2Fb", NULL, NULL);
	check_target("/sp%20ace", "/sp%20ace", NULL, NULL);
	check_target("/%zz", NULL, NULL, NULL);
	check_target("/%4", NULL, NULL, NULL);
	check_target("/a%00b", NULL, NULL, NULL);
	check_target("/a%0d%0ab", NULL, NULL, NULL);
	/* what another server could turn into a dot segment */
	check_target("/api/..%2Fadmin", NULL, NULL, NULL);
	check_target("/api/%2F..", NULL, NULL, NULL);
	check_target("/api/..%5cadmin", NULL, NULL, NULL);
	check_target("/api/..\\admin", NULL, NULL, NULL);
	check_target("/api/..;/admin", NULL, NULL, NULL);
	check_target("/api/.;x/admin", NULL, NULL, NULL);
	check_target("/a..b/c%2Fd/x;y", "/a..b/c%2Fd/x;y", NULL, NULL);
	/* absolute-form: the authority replaces Host, the path is what routes see */
	check_target("http://h/a/../b?x", "/b", "x", "h");
	check_target("HTTP://h:8080", "/", NULL, "h:8080");
	check_target("http://h?/internal/secret", "/", "/internal/secret", "h");
	check_target("http://h?x=1&next=/internal/secret", "/", "x=1&next=/internal/secret", "h");
	check_target("https://h?/internal/secret", "/", "/internal/secret", "h");
	check_target("http://[::1]:80/x", "/x", NULL, "[::1]:80");
	check_target("http://u@h/x", NULL, NULL, NULL);
	check_target("http:///x", NULL, NULL, NULL);
	check_target("http://:80/x", NULL, NULL, NULL);
	check_target("http://[]/x", NULL, NULL, NULL);
	check_target("http://h:1234567/x", NULL, NULL, NULL);
	check_target("http://h:/x", "/x", NULL, "h:");
	check_target("ftp://h/x", NULL, NULL, NULL);
	check_target("http:/h/x", NULL, NULL, NULL);
	check_target("h/x", NULL, NULL, NULL);
	check_target("/a#frag", NULL, NULL, NULL);
	check_target("*", "*", NULL, NULL);
	printf("unit checks: request targets and path normalization: ok\n");
}

static void unit_grammar(void)
{
	keel_http_msg m;

	/* Empty lines before a request line are skipped (RFC 9112 2.2), a bounded number of them. */
	const char *crlf = "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
	ASSERT_EQ(bytewise_same(crlf, NULL, true), (int)strlen(crlf));
	ASSERT_EQ(parse_req(crlf, NULL, &m), (int)strlen(crlf));
	ASSERT_EQ(m.head_len, strlen(crlf));
	ASSERT(keel_str_eq(m.method, "GET"));
	ASSERT_EQ(bytewise_same("\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", NULL,
	                        true),
	          KEEL_HTTP_E400);
	ASSERT_EQ(bytewise_same("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", NULL, true), KEEL_HTTP_E400);
	ASSERT_EQ(bytewise_same("\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", NULL, false), 40);

	/* Host: exactly one in HTTP/1.1, and a valid uri-host [ ":" port ]. */
	ASSERT_EQ(parse_req("GET / HTTP/1.1\r\n\r\n", NULL, &m), KEEL_HTTP_E400);
	ASSERT_EQ(parse_req("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", NULL, &m), KEEL_HTTP_E400);
	ASSERT_GE(parse_req("GET / HTTP/1.0\r\n\r\n", NULL, &m), 1);
	const char *good[] = {"",          "example.com", "example.com:8080", "[::1]:80", "[v1.x]",
	                      "a_b.c-d~e", "%41bc",       "0.0.0.0=5000"};
	const char *bad[] = {"a b", "a/b", "a@b", "a?b", "a#b", "[::1", "a:80x", "%4g", "\"a\"", "a\\b"};
	char buf[256];
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", good[i]);
		if (parse_req(buf, NULL, &m) < 1)
			FAIL("Host: %s refused", good[i]);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", bad[i]);
		if (parse_req(buf, NULL, &m) != KEEL_HTTP_E400)
			FAIL("Host: %s accepted", bad[i]);
	}

	/* Chunk extensions (RFC 9112 7.1.1): BWS only around ";" and "=", token or quoted values. */
	check_chunked("5;a\r\nhello\r\n0\r\n\r\n", 0, KEEL_HTTP_CHUNK_DONE, "hello");
	check_chunked("5 ; a = b ;c=\"x\\\"y\"\r\nhello\r\n0;z\r\n\r\n", 0, KEEL_HTTP_CHUNK_DONE, "hello");
	check_chunked("5 \r\nhello\r\n0\r\n\r\n", 0, KEEL_HTTP_E400, NULL);
	check_chunked("5;\r\nhello\r\n0\r\n\r\n", 0, KEEL_HTTP_E400, NULL);
	check_chunked("5;a=\r\nhello\r\n0\r\n\r\n", 0, KEEL_HTTP_E400, NULL);
	check_chunked("5;a b\r\nhello\r\n0\r\n\r\n", 0, KEEL_HTTP_E400, NULL);
	check_chunked("5;a=\"b\r\nhello\r\n0\r\n\r\n", 0, KEEL_HTTP_E400, NULL);
	check_chunked("5;a=b \r\nhello\r\n0\r\n\r\n", 0, KEEL_HTTP_E400, NULL);
	check_chunked("5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n", 0, KEEL_HTTP_CHUNK_DONE, "hello");
	check_chunked("5\r\nhello\r\n0\r\nX-T: 1\r\n folded\r\n\r\n", 0, KEEL_HTTP_E400, NULL);
	/* Trailers handed out when asked for: whole at any split, and read as fields. */
	check_trailers("5\r\nhello\r\n0\r\n\r\n", "", (const char *const[]){NULL});
	check_trailers("5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n", "X-T: 1\r\n",
	               (const char *const[]){"X-T=1", NULL});
	check_trailers("0\r\nA:\r\nGrpc-Status:  0 \t\r\nb:x y\r\n\r\n",
	               "A:\r\nGrpc-Status:  0 \t\r\nb:x y\r\n",
	               (const char *const[]){"A=", "Grpc-Status=0", "b=x y", NULL});
	{
		sbuf out = {0}, tr = {0}; /* a bad trailer is still an error when they are wanted */
		ASSERT_EQ(chunked_all("0\r\nX-T: 1\r\n folded\r\n\r\n", 0, 3, &out, &tr), KEEL_HTTP_E400);
		sb_free(&out);
		sb_free(&tr);
	}

	/* Response framing (RFC 9112 6.3). */
	ASSERT_GE(parse_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", NULL, &m), 1);
	ASSERT_EQ(m.body, KEEL_HTTP_BODY_CHUNKED);
	ASSERT_GE(parse_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", NULL, &m), 1);
	ASSERT_EQ(m.body, KEEL_HTTP_BODY_UNTIL_CLOSE);
	ASSERT_EQ(parse_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", NULL, &m),
	          KEEL_HTTP_E400);
	ASSERT_GE(
	    parse_resp("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
	               NULL, &m),
	    1);
	ASSERT_EQ(m.keep_alive, false);
	ASSERT_GE(parse_resp("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "HEAD", &m), 1);
	ASSERT_EQ(m.body, KEEL_HTTP_BODY_NONE);
	ASSERT_GE(parse_resp("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", NULL, &m), 1);
	ASSERT_EQ(m.body, KEEL_HTTP_BODY_NONE);
	ASSERT_GE(parse_resp("HTTP/1.1 200 OK\r\n\r\n", NULL, &m), 1);
	ASSERT_EQ(m.body, KEEL_HTTP_BODY_UNTIL_CLOSE);
	ASSERT_EQ(m.keep_alive, false);
}

/* ---- Driving the corpus ------------------------------------------------- */

struct tally {
	const char *file;
	unsigned run, matched, differ, host, completed, skip_lenient, skip_pause, skip_other, failed;
};

static bool verbose, list_md;
static const char *filter;
static sbuf host_list; /* -l: the cases that needed a Host line, as markdown */

static void report(const tcase *tc, const char *what, const sbuf *why)
{
	printf("%s %s:%d \"%s\": %s\n", what, tc->file, tc->line, tc->title, why->p ? why->p : "");
}

/* Run one case; returns false on an unexplained mismatch. */
static bool run_case(const tcase *tc, struct tally *t)
{
	bool request = strncmp(tc->type, "request", 7) == 0;
	bool finish = strstr(tc->type, "-finish") != NULL;
	if (strstr(tc->type, "lenient")) {
		t->skip_lenient++;
		return true;
	}
	if (tc->pause) {
		t->skip_pause++;
		return true;
	}
	if ((strcmp(tc->type, "request") != 0 && strcmp(tc->type, "response") != 0 && !finish) ||
	    (request && tc->skip_body)) {
		/* skipBody on a request is on_headers_complete's return value: a callback feature. */
		t->skip_other++;
		if (verbose)
			printf("skip %s:%d \"%s\" (type %s%s)\n", tc->file, tc->line, tc->title, tc->type,
			       tc->skip_body ? ", skipBody" : "");
		return true;
	}
	t->run++;

	sbuf in = {0}, why = {0}, injected = {0};
	result e, k, kb;
	decode_http(&tc->http, &in);
	parse_log(&tc->log, &e);
	if (!finish)
		e.finish = -1;
	/* A response with skipBody is llhttp's way of saying "this answers a HEAD". */
	keel_str method = {tc->skip_body ? "HEAD" : NULL, tc->skip_body ? 4 : 0};
	bool ok = true;

	int host_at = request ? inject_host(in.p, in.len, &e, &injected) : -1;
	sbuf *bytes = host_at >= 0 ? &injected : &in;
	t->host += host_at >= 0;
	if (list_md && host_at >= 0)
		sb_printf(&host_list, "| `%s` | %s |\n", tc->file, tc->title);

	run_keel(bytes->p, bytes->len, request, method, host_at >= 0, false, &k);
	bool completed = false;
	if (e.out == OUT_ERROR && k.out == OUT_END && k.in_head && k.nm == e.at) {
		/*
		 * llhttp rejects at the bad byte; keel judges a head once it is
		 * complete, and this input stops before the head's end. End the
		 * head, and keel must reject it then.
		 */
		bool crlf = bytes->len >= 2 && memcmp(bytes->p + bytes->len - 2, "\r\n", 2) == 0;
		const char *tail = crlf ? "\r\n" : "\r\n\r\n";
		sb_add(&in, tail, strlen(tail));
		if (host_at >= 0)
			sb_add(&injected, tail, strlen(tail));
		res_free(&k);
		run_keel(bytes->p, bytes->len, request, method, host_at >= 0, false, &k);
		completed = true;
		t->completed++;
	}
	run_keel(bytes->p, bytes->len, request, method, host_at >= 0, true, &kb);

	if (host_at >= 0) {
		/* The original must be rejected where the first Host is missing. */
		result ko;
		run_keel(in.p, in.len, request, method, false, false, &ko);
		if (ko.out != OUT_ERROR || ko.at != (unsigned)host_at) {
			sb_printf(&why, "expected a rejection at message %d for the missing Host, got ",
			          host_at);
			describe(&why, &ko, request);
			report(tc, "FAIL", &why);
			ok = false;
		}
		res_free(&ko);
	}

	why.len = 0;
	if (!same_result(&k, &kb, request, &why)) {
		report(tc, "FAIL (whole vs byte by byte)", &why);
		ok = false;
	}
	why.len = 0;
	enum verdict v = compare(&e, &k, request, &why);
	const allowed *a = find_allowed(tc);
	if (a && a->verdict == v && v != V_MATCH) {
		t->differ++;
		if (verbose)
			report(tc, "differ (allowed)", &why);
		if (list_md)
			printf("| `%s` | %s | %s |\n", tc->file, tc->title, a->why);
	} else if (v == V_MATCH && !a) {
		t->matched += ok;
		if (verbose)
			printf("match %s:%d \"%s\"%s%s [llhttp %s %d, keel %s %d]\n", tc->file, tc->line,
			       tc->title, host_at >= 0 ? " (Host added)" : "",
			       completed ? " (head ended)" : "", outcome_name[e.out], e.code,
			       outcome_name[k.out], k.code);
	} else {
		ok = false;
		sbuf d = {0};
		if (a)
			sb_printf(&d, "allowlisted as %s but is %s: ", verdict_name[a->verdict],
			          verdict_name[v]);
		else
			sb_printf(&d, "%s: ", verdict_name[v]);
		sb_add(&d, why.p, why.len);
		sb_add(&d, "\n    llhttp: ", 13);
		describe(&d, &e, request);
		sb_add(&d, "\n    keel:   ", 13);
		describe(&d, &k, request);
		report(tc, "FAIL", &d);
		sb_free(&d);
	}
	t->failed += !ok;
	res_free(&e);
	res_free(&k);
	res_free(&kb);
	sb_free(&in);
	sb_free(&why);
	sb_free(&injected);
	return ok;
}

static void print_tally(const struct tally *t)
{
	printf("%-40s %4u %7u %6u %5u %5u %7u %5u %5u %6u\n", t->file, t->run, t->matched, t->differ, t->host,
	       t->completed, t->skip_lenient, t->skip_pause, t->skip_other, t->failed);
}

static const char *const corpus_files[] = {
    "request/sample.md",
    "request/method.md",
    "request/uri.md",
    "request/connection.md",
    "request/content-length.md",
    "request/transfer-encoding.md",
    "request/invalid.md",
    "request/pipelining.md",
    "request/finish.md",
    "request/pausing.md",
    "request/lenient-headers.md",
    "request/lenient-header-value-relaxed.md",
    "request/lenient-version.md",
    "response/sample.md",
    "response/connection.md",
    "response/content-length.md",
    "response/transfer-encoding.md",
    "response/invalid.md",
    "response/pipelining.md",
    "response/finish.md",
    "response/pausing.md",
    "response/lenient-version.md",
};

static int run_corpus(void)
{
	const char *dir = getenv("KEEL_LLHTTP_CORPUS");
	if (!dir)
		dir = "../shared/conformance/llhttp";
	size_t nfiles = sizeof(corpus_files) / sizeof(corpus_files[0]);
	struct tally total = {.file = "total"};
	unsigned failed = 0, loaded = 0;
	if (!list_md)
		printf("%-40s %4s %7s %6s %5s %5s %7s %5s %5s %6s\n", "file", "run", "matched", "differ",
		       "+Host", "+end", "lenient", "pause", "other", "failed");
	if (list_md)
		printf("| file | case | why |\n|---|---|---|\n");
	for (size_t f = 0; f < nfiles; f++) {
		unsigned n = 0;
		tcase *cases = load_cases(dir, corpus_files[f], &n);
		if (!cases && n == 0) {
			char path[1024];
			snprintf(path, sizeof(path), "%s/%s", dir, corpus_files[f]);
			FILE *probe = fopen(path, "rb");
			if (!probe) {
				printf("cannot read %s\n", path);
				failed++;
				continue;
			}
			fclose(probe);
		}
		loaded++;
		struct tally t = {.file = corpus_files[f]};
		for (unsigned i = 0; i < n; i++) {
			if (filter && !strstr(cases[i].file, filter) && !strstr(cases[i].title, filter))
				continue;
			run_case(&cases[i], &t);
			sb_free(&cases[i].http);
			sb_free(&cases[i].log);
		}
		free(cases);
		if (!list_md)
			print_tally(&t);
		total.run += t.run;
		total.matched += t.matched;
		total.differ += t.differ;
		total.host += t.host;
		total.completed += t.completed;
		total.skip_lenient += t.skip_lenient;
		total.skip_pause += t.skip_pause;
		total.skip_other += t.skip_other;
		total.failed += t.failed;
	}
	if (loaded == 0) {
		printf("llhttp corpus not found under %s (set KEEL_LLHTTP_CORPUS)\n", dir);
		return TEST_SKIP;
	}
	if (list_md) {
		printf("\nCases compared with a Host line added:\n\n| file | case |\n|---|---|\n%s",
		       host_list.p ? host_list.p : "");
		sb_free(&host_list);
	}
	if (!list_md) {
		print_tally(&total);
		printf("corpus: %u cases run, %u matched, %u deliberate differences, %u skipped "
		       "(%u lenient, %u pause, %u other); %u failed\n",
		       total.run, total.matched, total.differ,
		       total.skip_lenient + total.skip_pause + total.skip_other, total.skip_lenient,
		       total.skip_pause, total.skip_other, total.failed);
		printf(
		    "(+Host: %u run cases lack Host in HTTP/1.1, which keel rejects; compared with one added. "
		    "+end: %u cases end inside a head llhttp rejects; compared with the head ended.)\n",
		    total.host, total.completed);
	}
	return total.failed || failed ? 1 : 0;
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-v") == 0)
			verbose = true;
		else if (strcmp(argv[i], "-l") == 0)
			list_md = true;
		else
			filter = argv[i];
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!filter && !list_md) {
		unit_limits();
		unit_grammar();
		unit_targets();
		printf("unit checks: limits, versions, transfer codings, chunk sizes and extensions, Host, "
		       "empty lines, response framing: ok\n");
	}
	return run_corpus();
}
