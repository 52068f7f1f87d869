/*
 * The HTTP/1.1 head parser (requests and responses).
 *
 * Two passes over a head, never more: while the head is incomplete, only the
 * bytes added since the last call are scanned, for the blank line that ends
 * the head, for bare CR/LF (rejected at once) and for the size limits. Once
 * the end is known, one strict pass over the head fills in the spans and
 * decides the body's framing. Everything the RFC lets a strict recipient
 * reject is rejected: a parser in front of other software must never
 * disagree with it about where a message ends (request smuggling).
 */
#include <ctype.h>
#include <string.h>

#include "keel/http_parse.h"

/* Digits and letters, the part that every token-like class shares. */
#define ALNUM_ENTRIES                                                                                      \
	['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1, ['8'] = 1, \
	['9'] = 1, ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1, \
	['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1, ['Q'] = 1, \
	['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1, ['Y'] = 1, ['Z'] = 1, \
	['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1, \
	['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, \
	['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1

/* tchar (RFC 9110 5.6.2): the characters of a token. */
static const unsigned char tchar[256] = {
    ALNUM_ENTRIES, ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1,
    ['+'] = 1,     ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1,  ['~'] = 1,
};

static inline bool is_tchar(unsigned char c)
{
	return tchar[c];
}

/* field-vchar / obs-text: any byte but CTLs (HTAB is whitespace) and DEL. */
static inline bool is_field_byte(unsigned char c)
{
	return c >= 0x20 ? c != 0x7f : c == '\t';
}

/* request-target bytes: visible ASCII only (no space, no CTL, no obs-text). */
static inline bool is_target_byte(unsigned char c)
{
	return c > 0x20 && c < 0x7f;
}

void keel_http_limits_default(keel_http_limits *l)
{
	l->request_line_max = 8192;
	l->head_max = 16384;
	l->headers_max = 100;
}

const keel_http_header *keel_http_header_find(const keel_http_msg *msg, const char *name)
{
	for (unsigned i = 0; i < msg->nheaders; i++)
		if (keel_str_ieq(msg->headers[i].name, name))
			return &msg->headers[i];
	return NULL;
}

/*
 * Find the end of the head, scanning from where the last call stopped.
 * Returns the head length, 0 if not there yet, or KEEL_HTTP_E400 for a bare
 * CR or LF, which no valid head contains.
 */
static long find_head_end(const char *buf, size_t len, size_t from)
{
	/* Back up so a terminator split across calls is seen; CRs are re-checked. */
	size_t i = from >= 3 ? from - 3 : 0;
	const unsigned char *u = (const unsigned char *)buf;
	for (; i < len; i++) {
		/* Most bytes are printable: skip them in a tight loop (CR and LF are both <= 0x0d). */
		while (i < len && u[i] > '\r')
			i++;
		if (i == len)
			break;
		char c = buf[i];
		if (c == '\r') {
			if (i + 1 == len)
				return 0;
			if (buf[i + 1] != '\n')
				return KEEL_HTTP_E400;
		} else if (c == '\n') {
			if (i == 0 || buf[i - 1] != '\r')
				return KEEL_HTTP_E400;
			if (i >= 3 && buf[i - 2] == '\n' && buf[i - 3] == '\r')
				return (long)(i + 1);
		}
	}
	return 0;
}

/*
 * Parse "HTTP/1.x"; returns the minor version keel speaks for it, or a
 * negative status. RFC 9110 2.5: a higher minor version of a major version
 * keel implements is processed as the highest one it implements (HTTP/1.2
 * as HTTP/1.1); only another major version is not supported.
 */
static int parse_version(const char *p, size_t n)
{
	if (n != 8 || memcmp(p, "HTTP/", 5) != 0 || p[6] != '.')
		return KEEL_HTTP_E400;
	if (p[5] < '0' || p[5] > '9' || p[7] < '0' || p[7] > '9')
		return KEEL_HTTP_E400;
	if (p[5] == '1')
		return p[7] == '0' ? 0 : 1;
	return KEEL_HTTP_E505;
}

/* Content-Length: 1*DIGIT, no sign, no spaces inside, no overflow. */
static int parse_length(keel_str v, uint64_t *out)
{
	if (v.len == 0 || v.len > 19)
		return KEEL_HTTP_E400;
	uint64_t n = 0;
	for (size_t i = 0; i < v.len; i++) {
		unsigned char c = (unsigned char)v.ptr[i];
		if (c < '0' || c > '9')
			return KEEL_HTTP_E400;
		n = n * 10 + (uint64_t)(c - '0');
	}
	*out = n;
	return 0;
}

bool keel_http_list_next(keel_str *list, keel_str *elem)
{
	while (list->len && (*list->ptr == ',' || *list->ptr == ' ' || *list->ptr == '\t')) {
		list->ptr++;
		list->len--;
	}
	if (!list->len)
		return false;
	const char *s = list->ptr, *e = memchr(s, ',', list->len);
	size_t n = e ? (size_t)(e - s) : list->len;
	list->ptr += n;
	list->len -= n;
	while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
		n--;
	elem->ptr = s;
	elem->len = n;
	return true;
}

/* Does a list header contain an empty element ("a,,b" is allowed; ", ," too)? Only flag a fully empty value. */
static bool list_is_empty(keel_str v)
{
	keel_str e;
	return !keel_http_list_next(&v, &e);
}

/*
 * Host = uri-host [ ":" port ] (RFC 9110 7.2, RFC 3986 3.2.2): an IP-literal
 * in brackets, or a reg-name of unreserved, sub-delims and %XX; empty is
 * allowed. Checked by character class and shape, not as a full IP grammar:
 * enough that a Host can never smuggle "/", "@", "?", "#", space or a CTL
 * into whatever builds a URL from it.
 */
/* reg-name bytes: unreserved / sub-delims (RFC 3986); '%' is handled by the caller. */
static const unsigned char regname[256] = {
    ALNUM_ENTRIES, ['-'] = 1, ['.'] = 1, ['_'] = 1, ['~'] = 1, ['!'] = 1, ['$'] = 1, ['&'] = 1,
    ['\''] = 1,    ['('] = 1, [')'] = 1, ['*'] = 1, ['+'] = 1, [','] = 1, [';'] = 1, ['='] = 1,
};

static inline bool is_regname_byte(unsigned char c)
{
	return regname[c];
}

static bool host_valid(keel_str v)
{
	const char *p = v.ptr, *end = v.ptr + v.len;
	if (p < end && *p == '[') {
		for (p++; p < end && *p != ']'; p++)
			if (!is_regname_byte((unsigned char)*p) && *p != ':')
				return false;
		if (p == end)
			return false;
		p++;
	} else {
		while (p < end) {
			if (*p == '%') {
				if (end - p < 3 || !isxdigit((unsigned char)p[1]) ||
				    !isxdigit((unsigned char)p[2]))
					return false;
				p += 3;
			} else if (is_regname_byte((unsigned char)*p)) {
				p++;
			} else {
				break;
			}
		}
	}
	if (p < end && *p == ':')
		for (p++; p < end && *p >= '0' && *p <= '9'; p++)
			;
	return p == end;
}

struct framing {
	int ncl, nte, nhost;
	uint64_t cl;
	/* Transfer-Encoding, across all its lines: is chunked the final coding,
	 * how often does it appear, is there any other coding? */
	bool te_chunked_last, te_other;
	int te_nchunked;
	bool conn_close, conn_keep_alive, conn_upgrade, has_upgrade, expect_continue, expect_other;
	keel_str host;
};

static int note_header(struct framing *f, const keel_http_header *h)
{
	keel_str n = h->name, v = h->value;
	switch (n.len) {
	case 4:
		if (keel_str_ieq(n, "host")) {
			f->nhost++;
			f->host = v;
		}
		break;
	case 6:
		if (keel_str_ieq(n, "expect")) {
			if (keel_str_ieq(v, "100-continue"))
				f->expect_continue = true;
			else
				f->expect_other = true;
		}
		break;
	case 7:
		if (keel_str_ieq(n, "upgrade"))
			f->has_upgrade = true;
		break;
	case 10:
		if (keel_str_ieq(n, "connection")) {
			keel_str list = v, e;
			while (keel_http_list_next(&list, &e)) {
				if (keel_str_ieq(e, "close"))
					f->conn_close = true;
				else if (keel_str_ieq(e, "keep-alive"))
					f->conn_keep_alive = true;
				else if (keel_str_ieq(e, "upgrade"))
					f->conn_upgrade = true;
			}
		}
		break;
	case 14:
		if (keel_str_ieq(n, "content-length")) {
			uint64_t cl;
			int err = parse_length(v, &cl);
			if (err)
				return err;
			if (f->ncl && cl != f->cl)
				return KEEL_HTTP_E400; /* differing lengths: which one is the message? */
			f->ncl++;
			f->cl = cl;
		}
		break;
	case 17:
		if (keel_str_ieq(n, "transfer-encoding")) {
			f->nte++;
			if (list_is_empty(v))
				return KEEL_HTTP_E400;
			keel_str list = v, e;
			while (keel_http_list_next(&list, &e)) {
				if (e.len == 0)
					continue;
				if (keel_str_ieq(e, "chunked")) {
					f->te_nchunked++;
					f->te_chunked_last = true;
					continue;
				}
				f->te_chunked_last = false;
				for (size_t i = 0; i < e.len; i++)
					if (!is_tchar((unsigned char)e.ptr[i]) && e.ptr[i] != ';' &&
					    e.ptr[i] != '=' && e.ptr[i] != ' ' && e.ptr[i] != '"')
						return KEEL_HTTP_E400;
				f->te_other = true; /* gzip, deflate, ...: not decoded here */
			}
		}
		break;
	default: break;
	}
	return 0;
}

/*
 * Parse the header lines from p up to the blank line at end. Fills msg's
 * headers and the framing facts.
 */
static int parse_fields(const char *p, const char *end, keel_http_msg *msg, keel_http_header *headers,
                        unsigned cap, const keel_http_limits *lim, struct framing *f)
{
	unsigned n = 0;
	for (;;) {
		if (p + 2 > end)
			return KEEL_HTTP_E400;
		if (p[0] == '\r')
			break; /* the blank line (find_head_end guaranteed the LF) */
		if (p[0] == ' ' || p[0] == '\t')
			return KEEL_HTTP_E400; /* obs-fold, or whitespace before the first name */
		const char *name = p;
		while (p < end && is_tchar((unsigned char)*p))
			p++;
		if (p == name || p >= end || *p != ':')
			return KEEL_HTTP_E400; /* empty name, bad byte, or whitespace before ':' */
		size_t name_len = (size_t)(p - name);
		p++;
		while (p < end && (*p == ' ' || *p == '\t'))
			p++;
		const char *val = p;
		while (p < end && is_field_byte((unsigned char)*p))
			p++;
		if (p + 1 >= end || p[0] != '\r' || p[1] != '\n')
			return KEEL_HTTP_E400; /* a CTL, NUL or bare CR inside the value */
		const char *val_end = p;
		while (val_end > val && (val_end[-1] == ' ' || val_end[-1] == '\t'))
			val_end--;
		p += 2;
		if (n == cap || n == lim->headers_max)
			return KEEL_HTTP_E431;
		headers[n].name.ptr = name;
		headers[n].name.len = name_len;
		headers[n].value.ptr = val;
		headers[n].value.len = (size_t)(val_end - val);
		int err = note_header(f, &headers[n]);
		if (err)
			return err;
		n++;
	}
	msg->headers = headers;
	msg->nheaders = n;
	return 0;
}

/*
 * RFC 9112 2.2: a recipient SHOULD ignore at least one empty line before the
 * start line (clients send a stray CRLF after a body). Bounded, so a stream
 * of CRLFs costs O(1) per call and is soon rejected rather than rescanned.
 * Returns how many bytes to skip, or a negative status.
 */
#define EMPTY_LINES_MAX 8

static long skip_empty_lines(const char *buf, size_t len)
{
	size_t i = 0;
	while (i + 1 < len && buf[i] == '\r' && buf[i + 1] == '\n') {
		i += 2;
		if (i > 2 * EMPTY_LINES_MAX)
			return KEEL_HTTP_E400;
	}
	return (long)i;
}

/*
 * Find the head and apply the size limits, the same way however the bytes
 * were split across calls: every check is decided at the first byte where it
 * can fail, and a call that is handed many new bytes looks at them in that
 * order. So the whole buffer and the same bytes a piece at a time give the
 * same status: a bare CR past the 414 or 431 point is never reached, as it
 * would not have been had the bytes come one by one.
 */
static int head_prelude(const char *buf, size_t len, size_t prev_len, const keel_http_limits *lim,
                        bool request, long *head_len, size_t *skipped)
{
	/* Past head_max + 1 bytes the answer is 431 whatever follows: look no further. */
	size_t total_cap = lim->head_max + 1;
	long skip = skip_empty_lines(buf, len < total_cap ? len : total_cap);
	if (skip < 0)
		return (int)skip;
	*skipped = (size_t)skip;
	size_t s = (size_t)skip;
	/* The empty lines count towards head_max; the scan starts after them. */
	const char *b = buf + s;
	size_t n = len - s, from = prev_len > s ? prev_len - s : 0;
	size_t cap431 = total_cap - s; /* s <= total_cap */
	long end = 0;
	if (request && from <= lim->request_line_max + 1) {
		/*
		 * The request line's own limit, up to the byte where it fails (the
		 * one after max + CR). A call that already saw that many bytes
		 * without failing found the line's end; later calls need not look.
		 */
		size_t cap414 = lim->request_line_max + 2;
		size_t n1 = n < cap414 ? n : cap414;
		if (n1 > cap431)
			n1 = cap431;
		end = find_head_end(b, n1, from);
		if (end < 0)
			return (int)end;
		if (!end && n1 == cap414 && !memchr(b, '\n', n1))
			return KEEL_HTTP_E414;
	}
	if (!end) {
		end = find_head_end(b, n < cap431 ? n : cap431, from);
		if (end < 0)
			return (int)end;
	}
	if (end == 0)
		return n >= cap431 ? KEEL_HTTP_E431 : KEEL_HTTP_INCOMPLETE;
	if ((size_t)end > lim->head_max - s)
		return KEEL_HTTP_E431;
	*head_len = end;
	return 0;
}

int keel_http_parse_request(const char *buf, size_t len, size_t prev_len, keel_http_msg *msg,
                            keel_http_header *headers, unsigned headers_cap, const keel_http_limits *limits)
{
	keel_http_limits deflim;
	if (!limits) {
		keel_http_limits_default(&deflim);
		limits = &deflim;
	}
	long head_len = 0;
	size_t skip = 0;
	int err = head_prelude(buf, len, prev_len, limits, true, &head_len, &skip);
	if (err)
		return err;
	const char *p = buf + skip, *end = buf + skip + head_len;
	memset(msg, 0, sizeof(*msg));

	/* method SP request-target SP HTTP-version CRLF */
	const char *m = p;
	while (p < end && is_tchar((unsigned char)*p))
		p++;
	if (p == m || *p != ' ')
		return KEEL_HTTP_E400;
	msg->method.ptr = m;
	msg->method.len = (size_t)(p - m);
	const char *t = ++p;
	while (p < end && is_target_byte((unsigned char)*p))
		p++;
	if (p == t || *p != ' ')
		return KEEL_HTTP_E400;
	msg->target.ptr = t;
	msg->target.len = (size_t)(p - t);
	const char *v = ++p;
	while (p < end && *p != '\r')
		p++;
	int minor = parse_version(v, (size_t)(p - v));
	if (minor < 0)
		return minor;
	msg->version_minor = minor;
	p += 2;

	struct framing f;
	memset(&f, 0, sizeof(f));
	err = parse_fields(p, end, msg, headers, headers_cap, limits, &f);
	if (err)
		return err;

	if (f.nte) {
		if (minor == 0)
			return KEEL_HTTP_E400; /* Transfer-Encoding is not HTTP/1.0 */
		if (f.ncl)
			return KEEL_HTTP_E400; /* both: the classic smuggling vector */
		if (!f.te_chunked_last || f.te_nchunked != 1)
			return KEEL_HTTP_E400; /* RFC 9112 6.3: no reliable length without a final chunked */
		if (f.te_other)
			return KEEL_HTTP_E501; /* RFC 9112 6.1: a coding keel does not decode */
		msg->body = KEEL_HTTP_BODY_CHUNKED;
	} else if (f.ncl) {
		msg->content_length = f.cl;
		msg->body = f.cl ? KEEL_HTTP_BODY_LENGTH : KEEL_HTTP_BODY_NONE;
	}
	if (minor == 1 && f.nhost != 1)
		return KEEL_HTTP_E400; /* exactly one Host in HTTP/1.1 */
	if (f.nhost > 1)
		return KEEL_HTTP_E400;
	if (f.nhost && !host_valid(f.host))
		return KEEL_HTTP_E400; /* RFC 9112 3.2: MUST answer 400 to an invalid Host */
	msg->host = f.host;
	msg->keep_alive = minor == 1 ? !f.conn_close : (f.conn_keep_alive && !f.conn_close);
	msg->expect_continue = f.expect_continue && minor == 1;
	msg->upgrade = f.conn_upgrade && f.has_upgrade;
	msg->head_len = skip + (size_t)head_len;
	return (int)msg->head_len;
}

int keel_http_parse_response(const char *buf, size_t len, size_t prev_len, keel_http_msg *msg,
                             keel_http_header *headers, unsigned headers_cap, const keel_http_limits *limits,
                             keel_str method)
{
	keel_http_limits deflim;
	if (!limits) {
		keel_http_limits_default(&deflim);
		limits = &deflim;
	}
	long head_len = 0;
	size_t skip = 0;
	int err = head_prelude(buf, len, prev_len, limits, false, &head_len, &skip);
	if (err)
		return err;
	const char *p = buf + skip, *end = buf + skip + head_len;
	memset(msg, 0, sizeof(*msg));

	/* HTTP-version SP 3DIGIT SP [ reason-phrase ] CRLF */
	if (head_len < 12 || p[8] != ' ')
		return KEEL_HTTP_E400;
	int minor = parse_version(p, 8);
	if (minor < 0)
		return KEEL_HTTP_E400; /* a client cannot answer 505 to a server */
	msg->version_minor = minor;
	p += 9;
	int status = 0;
	for (int i = 0; i < 3; i++, p++) {
		if (*p < '0' || *p > '9')
			return KEEL_HTTP_E400;
		status = status * 10 + (*p - '0');
	}
	if (status < 100)
		return KEEL_HTTP_E400;
	msg->status = status;
	if (*p == ' ') {
		p++;
	} else if (*p != '\r') {
		return KEEL_HTTP_E400;
	}
	const char *r = p;
	while (p < end && is_field_byte((unsigned char)*p))
		p++;
	if (p[0] != '\r')
		return KEEL_HTTP_E400;
	msg->reason.ptr = r;
	msg->reason.len = (size_t)(p - r);
	p += 2;

	struct framing f;
	memset(&f, 0, sizeof(f));
	err = parse_fields(p, end, msg, headers, headers_cap, limits, &f);
	if (err)
		return err;

	bool head = method.len && keel_str_eq(method, "HEAD");
	bool connect = method.len && keel_str_eq(method, "CONNECT");
	if (status < 200 || status == 204 || status == 304 || head || (connect && status < 300)) {
		msg->body = KEEL_HTTP_BODY_NONE; /* framing headers do not apply */
		if (f.ncl)
			msg->content_length = f.cl;
	} else if (f.nte) {
		if (f.ncl)
			return KEEL_HTTP_E400;
		if (f.te_nchunked > 1)
			return KEEL_HTTP_E400; /* chunked applied twice (RFC 9112 7): no sane reading */
		/*
		 * RFC 9112 6.3: chunked as the final coding frames the body; any
		 * other final coding means the body runs until close. Codings
		 * before chunked (gzip, chunked) are left in the body: the caller
		 * sees them in the Transfer-Encoding header.
		 */
		msg->body = f.te_chunked_last ? KEEL_HTTP_BODY_CHUNKED : KEEL_HTTP_BODY_UNTIL_CLOSE;
	} else if (f.ncl) {
		msg->content_length = f.cl;
		msg->body = f.cl ? KEEL_HTTP_BODY_LENGTH : KEEL_HTTP_BODY_NONE;
	} else {
		msg->body = KEEL_HTTP_BODY_UNTIL_CLOSE;
	}
	/* RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing: close after this message. */
	msg->keep_alive = msg->body != KEEL_HTTP_BODY_UNTIL_CLOSE && !(minor == 0 && f.nte) &&
	                  (minor == 1 ? !f.conn_close : (f.conn_keep_alive && !f.conn_close));
	msg->upgrade = f.conn_upgrade && f.has_upgrade;
	msg->head_len = skip + (size_t)head_len;
	return (int)msg->head_len;
}

/* ---- Request targets --------------------------------------------------------- */

static int hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if ((unsigned char)((c | 0x20) - 'a') < 6)
		return (c | 0x20) - 'a' + 10;
	return -1;
}

/* unreserved (RFC 3986 2.3): the characters whose escapes are decoded. */
static bool is_unreserved(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
	       c == '.' || c == '_' || c == '~';
}

/*
 * Whether a normalized segment could become a dot segment on a server that
 * reads it differently: one that decodes %2F or %5C as separators, takes
 * '\' for '/', or drops ";params" (Tomcat's "..;"). Such a segment is
 * refused rather than passed on.
 */
static bool segment_hides_dots(const char *s, size_t n)
{
	size_t i = 0;
	while (i <= n) {
		size_t start = i;
		while (i < n && s[i] != '\\' &&
		       !(s[i] == '%' && i + 2 < n && s[i + 1] == '2' && (s[i + 2] == 'F')) &&
		       !(s[i] == '%' && i + 2 < n && s[i + 1] == '5' && (s[i + 2] == 'C')))
			i++;
		size_t end = i;
		for (size_t j = start; j < end; j++)
			if (s[j] == ';') {
				end = j;
				break;
			}
		size_t len = end - start;
		if ((len == 1 && s[start] == '.') || (len == 2 && s[start] == '.' && s[start + 1] == '.'))
			return true;
		if (i >= n)
			break;
		i += s[i] == '\\' ? 1 : 3;
		if (i > n)
			break;
	}
	return false;
}

/* An authority's host is not empty ("http://:80", "http://[]"), its port at most 5 digits. */
static bool authority_has_host(keel_str a)
{
	const char *colon = NULL;
	if (a.ptr[0] == '[') {
		const char *rb = memchr(a.ptr, ']', a.len);
		if (!rb || rb == a.ptr + 1)
			return false;
		colon = rb + 1 < a.ptr + a.len ? rb + 1 : NULL;
	} else {
		colon = memchr(a.ptr, ':', a.len);
		if (colon == a.ptr)
			return false;
	}
	return !colon || (size_t)(a.ptr + a.len - colon - 1) <= 5;
}

long keel_http_path_normalize(const char *path, size_t len, char *out)
{
	if (len == 0 || path[0] != '/')
		return KEEL_HTTP_E400;
	size_t o = 0, i = 0;
	while (i < len) {
		/* One segment, after its '/' (a run of '/' is one). */
		while (i < len && path[i] == '/')
			i++;
		out[o++] = '/';
		size_t seg = o;
		bool dots_only = true; /* ('.' is unreserved: %2E counts as a dot) */
		while (i < len && path[i] != '/') {
			unsigned char c = (unsigned char)path[i++];
			if (c == '%') {
				int h = i < len ? hexval((unsigned char)path[i]) : -1;
				int l = i + 1 < len ? hexval((unsigned char)path[i + 1]) : -1;
				if (h < 0 || l < 0)
					return KEEL_HTTP_E400; /* a bad escape */
				unsigned char d = (unsigned char)(h * 16 + l);
				i += 2;
				if (d < 0x20 || d == 0x7f)
					return KEEL_HTTP_E400; /* NUL, CR, LF and the like: never a path */
				if (is_unreserved(d)) {
					out[o++] = (char)d;
				} else {
					static const char hex[] = "0123456789ABCDEF";
					out[o++] = '%';
					out[o++] = hex[d >> 4];
					out[o++] = hex[d & 15];
				}
				dots_only = dots_only && d == '.';
				continue;
			}
			out[o++] = (char)c;
			dots_only = dots_only && c == '.';
		}
		/* (a segment's '/' is out[seg - 1]; one that ends the path is kept: "/a/." is "/a/") */
		size_t sl = o - seg;
		if (dots_only && sl == 1) {
			o = i == len ? seg : seg - 1; /* "." goes */
		} else if (dots_only && sl == 2) {
			if (seg == 1)
				return KEEL_HTTP_E400; /* ".." above the root */
			o = seg - 1;                   /* ".." goes, and the segment before it with its '/' */
			while (out[o - 1] != '/')
				o--;
			o--;
			if (i == len)
				out[o++] = '/';
		} else if (sl && segment_hides_dots(out + seg, sl)) {
			return KEEL_HTTP_E400;
		}
	}
	if (o == 0)
		out[o++] = '/';
	return (long)o;
}

/* Whether a path needs no normalizing: no escape, no '\\', no "//", no segment that starts with '.'. */
static bool path_is_normal(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char c = p[i];
		if (c == '%' || c == '\\')
			return false;
		if (c == '/' && i + 1 < n && (p[i + 1] == '/' || p[i + 1] == '.'))
			return false;
	}
	return true;
}

int keel_http_target_parse(keel_str target, keel_http_target *out, char *scratch)
{
	memset(out, 0, sizeof(*out));
	const char *t = target.ptr, *end = target.ptr + target.len;
	if (target.len == 0 || memchr(t, '#', target.len))
		return KEEL_HTTP_E400; /* a fragment is never part of a request target */
	if (target.len == 1 && t[0] == '*') {
		out->form = KEEL_HTTP_TARGET_ASTERISK;
		out->path = target;
		return 0;
	}
	if (t[0] != '/') {
		/* absolute-form: scheme "://" authority [path-abempty] ["?" query] */
		const char *colon = memchr(t, ':', target.len);
		if (!colon || end - colon < 3 || colon[1] != '/' || colon[2] != '/')
			return KEEL_HTTP_E400;
		keel_str scheme = {t, (size_t)(colon - t)};
		if (!keel_str_ieq(scheme, "http") && !keel_str_ieq(scheme, "https"))
			return KEEL_HTTP_E400;
		const char *a = colon + 3, *ae = a;
		while (ae < end && *ae != '/' && *ae != '?')
			ae++;
		keel_str auth = {a, (size_t)(ae - a)};
		if (!auth.len || memchr(a, '@', auth.len) || !host_valid(auth) || !authority_has_host(auth))
			return KEEL_HTTP_E400; /* no host (RFC 9110 4.2.1), userinfo (4.2.4), or not a host */
		out->form = KEEL_HTTP_TARGET_ABSOLUTE;
		out->scheme = scheme;
		out->authority = auth;
		t = ae;
	} else {
		out->form = KEEL_HTTP_TARGET_ORIGIN;
	}
	const char *q = memchr(t, '?', (size_t)(end - t));
	const char *pe = q ? q : end;
	if (q) {
		out->query.ptr = q + 1;
		out->query.len = (size_t)(end - q - 1);
	}
	if (pe == t) {
		out->path.ptr = "/"; /* "http://h" and "http://h?q": the path is "/" */
		out->path.len = 1;
		return 0;
	}
	if (path_is_normal(t, (size_t)(pe - t))) {
		out->path.ptr = t;
		out->path.len = (size_t)(pe - t);
		return 0;
	}
	if (!scratch)
		return KEEL_HTTP_INCOMPLETE; /* the caller provides room and asks again */
	long n = keel_http_path_normalize(t, (size_t)(pe - t), scratch);
	if (n < 0)
		return (int)n;
	out->path.ptr = scratch;
	out->path.len = (size_t)n;
	return 0;
}
