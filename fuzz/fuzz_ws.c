/*
 * libFuzzer driver for keel's WebSocket framing (src/http/ws_codec.c).
 *
 * The input is read three ways:
 *   - as a stream of client frames: each header is parsed from the whole
 *     remaining input and again from a copy cut to each shorter length
 *     (which must say "incomplete", never succeed or fail differently), its
 *     payload unmasked in place, and a header written back for the same
 *     payload must parse to the same length and opcode;
 *   - as text for the UTF-8 checker: checked whole, and in pieces whose
 *     sizes come from the input, the verdicts must agree, and agree with a
 *     reference decoder written here the plain way (code points decoded and
 *     judged against RFC 3629's ranges);
 *   - the first two bytes as a close code, judged against RFC 6455 7.4's list.
 * Every window handed to the codec is an exact-size heap copy, so ASan sees
 * a read one byte past it.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/ws_codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FAIL(...)                                                \
	do {                                                     \
		fprintf(stderr, "FUZZ INVARIANT: " __VA_ARGS__); \
		fputc('\n', stderr);                             \
		abort();                                         \
	} while (0)

/* Valid UTF-8, the plain way: decode each code point and judge it. */
static bool utf8_ref(const uint8_t *p, size_t n)
{
	size_t i = 0;
	while (i < n) {
		uint8_t b = p[i];
		unsigned len = b < 0x80             ? 1
		               : (b & 0xe0) == 0xc0 ? 2
		               : (b & 0xf0) == 0xe0 ? 3
		               : (b & 0xf8) == 0xf0 ? 4
		                                    : 0;
		if (!len || i + len > n)
			return false;
		uint32_t cp = len == 1 ? b : len == 2 ? b & 0x1f : len == 3 ? b & 0x0f : b & 0x07;
		for (unsigned k = 1; k < len; k++) {
			if ((p[i + k] & 0xc0) != 0x80)
				return false;
			cp = cp << 6 | (p[i + k] & 0x3f);
		}
		static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
		if (cp < min[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += len;
	}
	return true;
}

static void frames(const uint8_t *data, size_t size)
{
	uint8_t *buf = malloc(size ? size : 1);
	memcpy(buf, data, size);
	size_t off = 0;
	for (int guard = 0; off < size && guard < 4096; guard++) {
		size_t n = size - off;
		uint8_t *w = malloc(n);
		memcpy(w, buf + off, n);
		struct keel__ws_hdr h;
		int rc = keel__ws_hdr_parse(w, n, &h);
		free(w);
		if (rc < 0)
			break; /* a header that breaks the protocol whatever follows */
		if (rc == 0) {
			if (n >= KEEL__WS_HDR_MAX)
				FAIL("%zu bytes and the header is still incomplete", n);
			break;
		}
		if ((size_t)rc != h.size || rc > KEEL__WS_HDR_MAX)
			FAIL("header size %d vs %u", rc, h.size);
		/* Every shorter cut of the header is "incomplete". */
		for (int cut = 0; cut < rc; cut++) {
			uint8_t *c = malloc((size_t)cut + 1);
			memcpy(c, buf + off, (size_t)cut);
			struct keel__ws_hdr h2;
			int rc2 = keel__ws_hdr_parse(c, (size_t)cut, &h2);
			free(c);
			if (rc2 > 0)
				FAIL("a header of %d bytes parsed from %d", rc, cut);
			if (rc2 < 0 && cut >= 2) {
				/* (a refusal may come as soon as the first two bytes say so, and must be final) */
				FAIL("the first %d bytes of a good header refused", cut);
			}
		}
		if ((h.opcode & 8) && (!h.fin || h.len > KEEL__WS_CTRL_MAX))
			FAIL("a control frame passed: fin %d len %llu", h.fin, (unsigned long long)h.len);
		if (h.rsv || (h.opcode > 2 && h.opcode < 8) || h.opcode > 10)
			FAIL("reserved bits or opcode passed");
		off += (size_t)rc;
		size_t pl = h.len > size - off ? size - off : (size_t)h.len;
		/* Unmasking in two pieces is unmasking whole. */
		uint8_t *a = malloc(pl + 1), *b = malloc(pl + 1);
		memcpy(a, buf + off, pl);
		memcpy(b, buf + off, pl);
		keel__ws_unmask(a, pl, h.mask, 0);
		size_t k = pl ? data[0] % (pl + 1) : 0;
		keel__ws_unmask(b, k, h.mask, 0);
		keel__ws_unmask(b + k, pl - k, h.mask, k);
		if (memcmp(a, b, pl))
			FAIL("unmasking in pieces differs");
		for (size_t i = 0; i < pl; i++)
			if (a[i] != (uint8_t)(buf[off + i] ^ h.mask[i & 3]))
				FAIL("unmask byte %zu", i);
		free(a);
		free(b);
		/* A server's header for the same payload parses back (unmasked frames parse; the caller refuses them). */
		uint8_t out[KEEL__WS_SHDR_MAX];
		size_t on = keel__ws_hdr_write(out, h.fin, h.opcode, h.len);
		struct keel__ws_hdr h3;
		if (keel__ws_hdr_parse(out, on, &h3) != (int)on || h3.len != h.len || h3.opcode != h.opcode ||
		    h3.fin != h.fin || h3.masked)
			FAIL("a written header does not parse back");
		off += pl;
	}
	free(buf);
}

static void utf8(const uint8_t *data, size_t size)
{
	uint8_t *w = malloc(size ? size : 1);
	memcpy(w, data, size);
	bool whole = keel__utf8_step(0, w, size) == 0, ref = utf8_ref(w, size);
	if (whole != ref)
		FAIL("UTF-8 of %zu bytes: keel says %d, the reference %d", size, whole, ref);
	/* In pieces whose sizes come from the input. */
	uint32_t st = 0;
	size_t off = 0, i = 0;
	while (off < size) {
		size_t n = 1 + data[i++ % size] % 16;
		if (n > size - off)
			n = size - off;
		uint8_t *piece = malloc(n);
		memcpy(piece, w + off, n);
		st = keel__utf8_step(st, piece, n);
		free(piece);
		off += n;
	}
	if ((st == 0) != whole)
		FAIL("UTF-8 in pieces: %08x, whole: %d", st, whole);
	free(w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	frames(data, size);
	utf8(data, size);
	if (size >= 2) {
		unsigned code = (unsigned)data[0] << 8 | data[1];
		bool ref = (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
		           (code >= 3000 && code <= 4999);
		if (keel__ws_close_code_ok(code) != ref)
			FAIL("close code %u", code);
	}
	return 0;
}
