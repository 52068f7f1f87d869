/*
 * The chunked transfer coding (RFC 9112 7.1), decoded in place.
 *
 * A state machine that can stop at any byte and resume with the next
 * buffer. Data spans point into the caller's buffer: chunk framing is
 * skipped, body bytes are never copied. Sizes are hex without sign or
 * spaces, bounded so they cannot overflow; extensions are accepted with a
 * bounded length and ignored; trailers are validated and discarded.
 */
#include "keel/http_parse.h"

enum {
	S_SIZE_START = 0, /* first hex digit */
	S_SIZE,           /* more hex digits, or the end of the size */
	S_EXT,            /* in a chunk extension */
	S_SIZE_LF,        /* CR seen after the size line */
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
}

static int hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
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

int keel_http_chunked_decode(keel_http_chunked *d, const char *buf, size_t len, size_t *used,
                             keel_str *data)
{
	size_t i = 0;
	while (i < len) {
		unsigned char c = (unsigned char)buf[i];
		switch (d->state) {
		case S_SIZE_START: {
			int h = hexval(c);
			if (h < 0)
				return KEEL_HTTP_E400;
			d->remaining = (uint64_t)h;
			d->ext_len = 1; /* digits seen */
			d->state = S_SIZE;
			i++;
			break;
		}
		case S_SIZE: {
			int h = hexval(c);
			if (h >= 0) {
				if (++d->ext_len > SIZE_DIGITS_MAX)
					return KEEL_HTTP_E400;
				d->remaining = d->remaining * 16 + (uint64_t)h;
				i++;
			} else if (c == ';' || c == ' ' || c == '\t') {
				d->state = S_EXT;
				d->ext_len = 0;
			} else if (c == '\r') {
				d->state = S_SIZE_LF;
				i++;
			} else {
				return KEEL_HTTP_E400;
			}
			break;
		}
		case S_EXT:
			/* BWS ";" name [ "=" value ] ...: any field byte, bounded; no bare CR/LF. */
			if (c == '\r') {
				d->state = S_SIZE_LF;
			} else if (c == '\n' || (c < 0x20 && c != '\t') || c == 0x7f) {
				return KEEL_HTTP_E400;
			} else if (++d->ext_len > EXT_MAX) {
				return KEEL_HTTP_E400;
			}
			i++;
			break;
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
				d->state = S_FINAL_LF;
				i++;
				break;
			}
			if (!is_tchar_c(c))
				return KEEL_HTTP_E400; /* obs-fold or junk */
			d->state = S_TRAILER_NAME;
			break;
		case S_TRAILER_NAME:
			if (c == ':') {
				d->state = S_TRAILER_VALUE;
			} else if (!is_tchar_c(c)) {
				return KEEL_HTTP_E400;
			}
			if (++d->trailer_bytes > TRAILERS_MAX)
				return KEEL_HTTP_E400;
			i++;
			break;
		case S_TRAILER_VALUE:
			if (c == '\r') {
				d->state = S_TRAILER_LF;
			} else if (c == '\n' || (c < 0x20 && c != '\t') || c == 0x7f) {
				return KEEL_HTTP_E400;
			}
			if (++d->trailer_bytes > TRAILERS_MAX)
				return KEEL_HTTP_E400;
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
		case S_DONE:
			*used = i;
			return KEEL_HTTP_CHUNK_DONE;
		default:
			return KEEL_HTTP_E400;
		}
	}
	*used = len;
	if (d->state == S_DONE)
		return KEEL_HTTP_CHUNK_DONE;
	return KEEL_HTTP_INCOMPLETE;
}
