/*
 * libFuzzer driver for keel_http_parse_response, fed a stream of pipelined
 * responses (the client side of keel, and its proxy).
 *
 * Same scheme as fuzz_request.c: each head is parsed whole, split in two and
 * grown in steps, the results must agree and satisfy the invariants a client
 * relies on; a chunked body is decoded three ways and the next response is
 * parsed from where it ended. The request method changes a response's
 * framing, so every input is run as the answer to none, GET, HEAD and
 * CONNECT.
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

static keel_str cur_method; /* the method of the request being answered */

static int parse_response(const char *buf, size_t len, size_t prev_len, keel_http_msg *msg,
                          keel_http_header *headers, unsigned cap, const keel_http_limits *lim,
                          const void *ctx)
{
	(void)ctx;
	return keel_http_parse_response(buf, len, prev_len, msg, headers, cap, lim, cur_method);
}

static void check_response(const char *buf, size_t len, int rc, const keel_http_msg *m,
                           const keel_http_header *hdrs, unsigned cap, const keel_http_limits *lim)
{
	if (rc == KEEL_HTTP_E505 || rc == KEEL_HTTP_E414)
		FUZZ_FAIL("response parser returned %s", fuzz_rc_name(rc));
	size_t st = 0;
	size_t hl = fuzz_check_head(buf, len, rc, m, lim, &st);
	if (!hl)
		return;

	/* Status line: HTTP/1.x SP 3DIGIT SP reason CRLF (the SP and reason may be absent). */
	const char *line = buf + st;
	FUZZ_CHECK(hl >= st + 16);
	FUZZ_CHECK(memcmp(line, "HTTP/1.", 7) == 0 && line[8] == ' ');
	FUZZ_CHECK(m->version_minor == 0 || m->version_minor == 1);
	/* HTTP/1.2 .. HTTP/1.9 are read as 1.1 (RFC 9110 2.5). */
	FUZZ_CHECK(line[7] == '0' + m->version_minor ||
	           (m->version_minor == 1 && line[7] >= '2' && line[7] <= '9'));
	int status = 0;
	for (int i = 9; i < 12; i++) {
		FUZZ_CHECK(line[i] >= '0' && line[i] <= '9');
		status = status * 10 + (line[i] - '0');
	}
	FUZZ_CHECK(m->status == status && status >= 100 && status <= 999);
	FUZZ_CHECK(fuzz_in_span(buf, hl, m->reason));
	FUZZ_CHECK(m->reason.ptr == line + (line[12] == ' ' ? 13 : 12));
	for (size_t i = 0; i < m->reason.len; i++) {
		unsigned char c = (unsigned char)m->reason.ptr[i];
		if (c == '\r' || c == '\n' || c == 0x7f || (c < 0x20 && c != '\t'))
			FUZZ_FAIL("reason has byte 0x%02x", c);
	}
	const char *eol = m->reason.ptr + m->reason.len;
	FUZZ_CHECK(eol[0] == '\r' && eol[1] == '\n');
	FUZZ_CHECK(m->method.len == 0 && m->target.len == 0 && m->host.len == 0);
	FUZZ_CHECK(!m->expect_continue);

	struct fuzz_fields f;
	fuzz_check_fields(buf, hl, eol + 2, m, hdrs, cap, lim, &f);

	bool head = keel_str_eq(cur_method, "HEAD"), connect = keel_str_eq(cur_method, "CONNECT");
	bool bodiless = status < 200 || status == 204 || status == 304 || head || (connect && status < 300);
	switch (m->body) {
	case KEEL_HTTP_BODY_NONE:
		/* No body by status or method, or Content-Length: 0 without TE. */
		if (!bodiless)
			FUZZ_CHECK(f.nte == 0 && f.ncl >= 1 && m->content_length == 0);
		break;
	case KEEL_HTTP_BODY_LENGTH:
		FUZZ_CHECK(!bodiless && f.nte == 0 && f.ncl >= 1 && m->content_length > 0);
		break;
	case KEEL_HTTP_BODY_CHUNKED:
		FUZZ_CHECK(!bodiless && f.nte >= 1 && f.ncl == 0 && m->content_length == 0);
		FUZZ_CHECK(fuzz_ieq(fuzz_list_last(f.te_last->value), "chunked"));
		FUZZ_CHECK(f.te_nchunked == 1);
		break;
	case KEEL_HTTP_BODY_UNTIL_CLOSE:
		FUZZ_CHECK(!bodiless && f.ncl == 0 && m->content_length == 0);
		FUZZ_CHECK(!m->keep_alive);
		break;
	default: FUZZ_FAIL("response body kind %d", (int)m->body);
	}
	if (f.ncl == 0)
		FUZZ_CHECK(m->content_length == 0);

	/* Until close, or Transfer-Encoding in 1.0 (faulty framing, RFC 9112 6.1): no reuse. */
	bool ka = m->version_minor == 1 ? !f.conn_close : f.conn_ka && !f.conn_close;
	if (m->body == KEEL_HTTP_BODY_UNTIL_CLOSE || (m->version_minor == 0 && f.nte))
		ka = false;
	FUZZ_CHECK(m->keep_alive == ka);
}

static void run_stream(const char *data, size_t size, const keel_http_limits *lim, unsigned cap,
                       bool null_limits)
{
	static struct fuzz_parse whole;
	struct fuzz_parser ps = {.parse = parse_response,
	                         .check = check_response,
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
		case KEEL_HTTP_BODY_UNTIL_CLOSE: return;
		default: break;
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *methods[] = {NULL, "GET", "HEAD", "CONNECT"};
	const char *buf = (const char *)data;
	keel_http_limits def;
	keel_http_limits_default(&def);
	for (int i = 0; i < 4; i++) {
		cur_method.ptr = methods[i];
		cur_method.len = methods[i] ? strlen(methods[i]) : 0;
		run_stream(buf, size, &def, FUZZ_HEADERS_CAP, true);
	}
	keel_http_limits small = {
	    .request_line_max = 12 + size % 53,
	    .head_max = 40 + (size * 7) % 251,
	    .headers_max = 1 + (unsigned)(size % 9),
	};
	cur_method.ptr = "GET";
	cur_method.len = 3;
	run_stream(buf, size, &small, size % 3 ? FUZZ_HEADERS_CAP : 1 + (unsigned)(size % 5), false);
	return 0;
}
