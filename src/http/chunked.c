/*
 * The chunked transfer coding (RFC 9112 7.1), decoded in place.
 *
 * A state machine that can stop at any byte and resume with the next
 * buffer. Data spans point into the caller's buffer: chunk framing is
 * skipped, body bytes are never copied. Sizes are hex without sign or
 * spaces, bounded so they cannot overflow; extensions are checked against
 * their grammar, bounded in length and ignored; trailers are validated and
 * discarded, or handed out as they come (trailers_want) for the caller to
 * gather and split into fields (keel_http_trailers_parse).
 */
#include <string.h>

#include "http_internal.h"
#include "keel/http_parse.h"

enum {
	S_SIZE_START = 0, /* first hex digit */
	S_SIZE,           /* more hex digits, or the end of the size */
	S_EXT_BWS,        /* whitespace after the size or a value: only ";" may follow */
	S_EXT_NAME_START, /* after ";" */
	S_EXT_NAME,
	S_EXT_NAME_BWS,  /* whitespace after a name: "=" or ";" */
	S_EXT_VAL_START, /* after "=" */
	S_EXT_TOKEN,
	S_EXT_QUOTED,
	S_EXT_QUOTED_PAIR, /* after a backslash in a quoted value */
	S_EXT_QUOTED_END,  /* after the closing quote */
	S_SIZE_LF,         /* CR seen after the size line */
	S_DATA,
	S_DATA_CR,
	S_DATA_LF,
	S_TRAILER_START, /* start of a trailer line, or the final CRLF */
	S_TRAILER_NAME,
	S_TRAILER_VALUE,
	S_TRAILER_LF,
	S_FINAL_LF,
	S_DONE,
};

#define EXT_MAX 4096
#define TRAILERS_MAX 8192
#define SIZE_DIGITS_MAX 15 /* < 2^60 */

void keel_http_chunked_init(keel_http_chunked *d, uint64_t body_max)
{
	d->state = S_SIZE_START;
	d->remaining = 0;
	d->total = 0;
	d->body_max = body_max;
	d->trailer_bytes = 0;
	d->ext_len = 0;
	d->trailers_want = false;
}

static bool is_tchar_c(unsigned char c)
{
	static const char extra[] = "!#$%&'*+-.^_`|~";
	if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
		return true;
	for (const char *e = extra; *e; e++)
		if (c == (unsigned char)*e)
			return true;
	return false;
}

/* qdtext and the second byte of a quoted-pair (RFC 9110 5.6.4), less the quote/backslash for qdtext. */
static bool is_qdtext(unsigned char c)
{
	return c == '\t' || c == ' ' || c == 0x21 || (c >= 0x23 && c <= 0x5b) || (c >= 0x5d && c <= 0x7e) ||
	       c >= 0x80;
}

static bool is_ws(unsigned char c)
{
	return c == ' ' || c == '\t';
}

/*
 * One byte of the chunk extensions, checked against RFC 9112 7.1.1:
 *   chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
 *   chunk-ext-val = token / quoted-string
 * Whitespace may only come before ";" or "=", or after them: "a \r\n" and
 * "a;\r\n" are malformed. The values are not kept; only their length is
 * bounded.
 */
static int ext_byte(keel_http_chunked *d, unsigned char c)
{
	if (++d->ext_len > EXT_MAX)
		return KEEL_HTTP_E400;
	switch (d->state) {
	case S_EXT_BWS: /* after the size, or after a value and whitespace */
		if (c == ';')
			d->state = S_EXT_NAME_START;
		else if (!is_ws(c))
			return KEEL_HTTP_E400;
		return 0;
	case S_EXT_NAME_START:
		if (is_tchar_c(c))
			d->state = S_EXT_NAME;
		else if (!is_ws(c))
			return KEEL_HTTP_E400;
		return 0;
	case S_EXT_NAME:
		if (c == '\r')
			d->state = S_SIZE_LF;
		else if (c == ';')
			d->state = S_EXT_NAME_START;
		else if (c == '=')
			d->state = S_EXT_VAL_START;
		else if (is_ws(c))
			d->state = S_EXT_NAME_BWS;
		else if (!is_tchar_c(c))
			return KEEL_HTTP_E400;
		return 0;
	case S_EXT_NAME_BWS:
		if (c == ';')
			d->state = S_EXT_NAME_START;
		else if (c == '=')
			d->state = S_EXT_VAL_START;
		else if (!is_ws(c))
			return KEEL_HTTP_E400;
		return 0;
	case S_EXT_VAL_START:
		if (c == '"')
			d->state = S_EXT_QUOTED;
		else if (is_tchar_c(c))
			d->state = S_EXT_TOKEN;
		else if (!is_ws(c))
			return KEEL_HTTP_E400;
		return 0;
	case S_EXT_TOKEN:
		if (c == '\r')
			d->state = S_SIZE_LF;
		else if (c == ';')
			d->state = S_EXT_NAME_START;
		else if (is_ws(c))
			d->state = S_EXT_BWS;
		else if (!is_tchar_c(c))
			return KEEL_HTTP_E400;
		return 0;
	case S_EXT_QUOTED:
		if (c == '"')
			d->state = S_EXT_QUOTED_END;
		else if (c == '\\')
			d->state = S_EXT_QUOTED_PAIR;
		else if (!is_qdtext(c))
			return KEEL_HTTP_E400;
		return 0;
	case S_EXT_QUOTED_PAIR:
		if (!is_qdtext(c) && c != '"' && c != '\\')
			return KEEL_HTTP_E400;
		d->state = S_EXT_QUOTED;
		return 0;
	case S_EXT_QUOTED_END:
		if (c == '\r')
			d->state = S_SIZE_LF;
		else if (c == ';')
			d->state = S_EXT_NAME_START;
		else if (is_ws(c))
			d->state = S_EXT_BWS;
		else
			return KEEL_HTTP_E400;
		return 0;
	default: return KEEL_HTTP_E400;
	}
}

/* A span of the trailer section, buf[from..to), handed out. */
static int trailer_span(const char *buf, size_t from, size_t to, size_t *used, keel_str *data)
{
	data->ptr = buf + from;
	data->len = to - from;
	*used = to;
	return KEEL_HTTP_CHUNK_TRAILER;
}

int keel_http_chunked_decode(keel_http_chunked *d, const char *buf, size_t len, size_t *used, keel_str *data)
{
	size_t i = 0;
	/* Where this call's run of trailer bytes began (mid-line from the last buffer: at 0). */
	bool mid_line = d->state == S_TRAILER_NAME || d->state == S_TRAILER_VALUE || d->state == S_TRAILER_LF;
	size_t run = mid_line ? 0 : SIZE_MAX;
	while (i < len) {
		unsigned char c = (unsigned char)buf[i];
		switch (d->state) {
		case S_SIZE_START: {
			int h = keel__hexval((unsigned char)c);
			if (h < 0)
				return KEEL_HTTP_E400;
			d->remaining = (uint64_t)h;
			d->ext_len = 1; /* digits seen */
			d->state = S_SIZE;
			i++;
			break;
		}
		case S_SIZE: {
			int h = keel__hexval((unsigned char)c);
			if (h >= 0) {
				if (++d->ext_len > SIZE_DIGITS_MAX)
					return KEEL_HTTP_E400;
				d->remaining = d->remaining * 16 + (uint64_t)h;
				i++;
				break;
			}
			d->ext_len = 0;
			if (c == '\r') {
				d->state = S_SIZE_LF;
				i++;
			} else if (c == ';' || c == ' ' || c == '\t') {
				d->state = S_EXT_BWS; /* reads the ";" or the whitespace */
			} else {
				return KEEL_HTTP_E400;
			}
			break;
		}
		case S_EXT_BWS:
		case S_EXT_NAME_START:
		case S_EXT_NAME:
		case S_EXT_NAME_BWS:
		case S_EXT_VAL_START:
		case S_EXT_TOKEN:
		case S_EXT_QUOTED:
		case S_EXT_QUOTED_PAIR:
		case S_EXT_QUOTED_END: {
			int err = ext_byte(d, c);
			if (err)
				return err;
			i++;
			break;
		}
		case S_SIZE_LF:
			if (c != '\n')
				return KEEL_HTTP_E400;
			i++;
			if (d->remaining == 0) {
				d->state = S_TRAILER_START;
			} else {
				if (d->body_max && d->total + d->remaining > d->body_max)
					return KEEL_HTTP_E413;
				d->state = S_DATA;
			}
			break;
		case S_DATA: {
			size_t n = len - i;
			if (n > d->remaining)
				n = (size_t)d->remaining;
			data->ptr = buf + i;
			data->len = n;
			d->remaining -= n;
			d->total += n;
			if (d->remaining == 0)
				d->state = S_DATA_CR;
			*used = i + n;
			return KEEL_HTTP_CHUNK_DATA;
		}
		case S_DATA_CR:
			if (c != '\r')
				return KEEL_HTTP_E400;
			d->state = S_DATA_LF;
			i++;
			break;
		case S_DATA_LF:
			if (c != '\n')
				return KEEL_HTTP_E400;
			d->state = S_SIZE_START;
			i++;
			break;
		case S_TRAILER_START:
			if (c == '\r') {
				if (d->trailers_want && run != SIZE_MAX && run < i)
					return trailer_span(buf, run, i, used,
					                    data); /* (the CR is read next time) */
				d->state = S_FINAL_LF;
				i++;
				break;
			}
			if (!is_tchar_c(c))
				return KEEL_HTTP_E400; /* obs-fold or junk */
			if (run == SIZE_MAX)
				run = i;
			d->state = S_TRAILER_NAME;
			break;
		case S_TRAILER_NAME:
			if (c == ':') {
				d->state = S_TRAILER_VALUE;
			} else if (!is_tchar_c(c)) {
				return KEEL_HTTP_E400;
			}
			if (++d->trailer_bytes > TRAILERS_MAX && !d->trailers_want)
				return KEEL_HTTP_E400; /* (gathered: the caller's limit) */
			i++;
			break;
		case S_TRAILER_VALUE:
			if (c == '\r') {
				d->state = S_TRAILER_LF;
			} else if (c == '\n' || (c < 0x20 && c != '\t') || c == 0x7f) {
				return KEEL_HTTP_E400;
			}
			if (++d->trailer_bytes > TRAILERS_MAX && !d->trailers_want)
				return KEEL_HTTP_E400; /* (gathered: the caller's limit) */
			i++;
			break;
		case S_TRAILER_LF:
			if (c != '\n')
				return KEEL_HTTP_E400;
			d->state = S_TRAILER_START;
			i++;
			break;
		case S_FINAL_LF:
			if (c != '\n')
				return KEEL_HTTP_E400;
			d->state = S_DONE;
			*used = i + 1;
			return KEEL_HTTP_CHUNK_DONE;
		case S_DONE: *used = i; return KEEL_HTTP_CHUNK_DONE;
		default: return KEEL_HTTP_E400;
		}
	}
	if (d->trailers_want && run != SIZE_MAX && run < len)
		return trailer_span(buf, run, len, used, data);
	*used = len;
	if (d->state == S_DONE)
		return KEEL_HTTP_CHUNK_DONE;
	return KEEL_HTTP_INCOMPLETE;
}

unsigned keel_http_trailers_parse(const char *raw, size_t len, keel_http_header *out, unsigned max)
{
	unsigned n = 0;
	const char *p = raw, *end = raw + len;
	while (p < end) {
		const char *eol = memchr(p, '\r', (size_t)(end - p));
		const char *colon = memchr(p, ':', (size_t)((eol ? eol : end) - p));
		if (!eol || !colon)
			break; /* (not from the decoder) */
		const char *v = colon + 1, *ve = eol;
		while (v < ve && (*v == ' ' || *v == '\t'))
			v++;
		while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
			ve--;
		if (n < max) {
			out[n].name = (keel_str){p, (size_t)(colon - p)};
			out[n].value = (keel_str){v, (size_t)(ve - v)};
		}
		n++;
		p = eol + 2;
	}
	return n;
}
