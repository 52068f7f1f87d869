/*
 * RFC 6455 framing, as pure functions over bytes: frame headers read and
 * written, payloads unmasked in place, UTF-8 checked a piece at a time,
 * close codes judged. No allocation, no I/O: ws.c drives these over
 * receive buffers, and fuzz/fuzz_ws.c drives them over anything.
 */
#ifndef KEEL_HTTP_WS_CODEC_H
#define KEEL_HTTP_WS_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
	KEEL__WS_CONT = 0x0,
	KEEL__WS_TEXT = 0x1,
	KEEL__WS_BINARY = 0x2,
	KEEL__WS_CLOSE = 0x8,
	KEEL__WS_PING = 0x9,
	KEEL__WS_PONG = 0xA,
};

#define KEEL__WS_HDR_MAX 14  /* 2 + 8 (length) + 4 (mask) */
#define KEEL__WS_SHDR_MAX 10 /* a server's frame: no mask */
#define KEEL__WS_CTRL_MAX 125

struct keel__ws_hdr {
	uint64_t len; /* payload bytes */
	uint8_t mask[4];
	uint8_t opcode;
	bool fin, masked;
	uint8_t rsv;  /* the three reserved bits, as they came */
	uint8_t size; /* the header's own bytes */
};

/*
 * Read a frame header from p[0..n). Returns its size (> 0), 0 when more
 * bytes are needed, or -1 for a header that breaks the protocol whatever
 * the state: a reserved bit set (no extension is agreed), an opcode that
 * is not defined, a control frame fragmented or over 125 bytes, or a
 * 64-bit length with its top bit set. (A length not in its shortest form
 * is taken, as common peers do.)
 * Whether it must be masked is the caller's (a server requires it).
 */
int keel__ws_hdr_parse(const uint8_t *p, size_t n, struct keel__ws_hdr *h);

/*
 * Write a server's (unmasked) frame header for a payload of len bytes
 * into out (KEEL__WS_SHDR_MAX bytes); returns its size.
 */
size_t keel__ws_hdr_write(uint8_t *out, bool fin, unsigned opcode, uint64_t len);

/* XOR p[0..n) with the mask, p[0] being byte off of the payload. */
void keel__ws_unmask(uint8_t *p, size_t n, const uint8_t mask[4], uint64_t off);

/*
 * UTF-8, checked in pieces (RFC 3629: no overlongs, no surrogates, nothing
 * past U+10FFFF). state starts at 0; each call returns the state after
 * p[0..n), KEEL__UTF8_BAD once a byte is wrong (fail fast: at the first
 * such byte, whatever follows), and 0 at a character boundary. A message
 * is valid when its last piece leaves 0.
 */
#define KEEL__UTF8_BAD 0xffffffffu
uint32_t keel__utf8_step(uint32_t state, const uint8_t *p, size_t n);

/* Whether a close frame may carry code (RFC 6455 7.4: 1000-1003, 1007-1014, 3000-4999). */
bool keel__ws_close_code_ok(unsigned code);

/*
 * Sec-WebSocket-Accept for a Sec-WebSocket-Key: base64(SHA-1(key + the
 * RFC's GUID)), 28 characters and a NUL into out. Returns 0, or -1 when
 * the digest is not available.
 */
int keel__ws_accept_key(const char *key, size_t len, char out[29]);

/* Whether key is a Sec-WebSocket-Key: the base64 of 16 bytes (24 characters, "==" last). */
bool keel__ws_key_ok(const char *key, size_t len);

#endif
