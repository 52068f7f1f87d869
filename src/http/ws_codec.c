/*
 * RFC 6455 framing (see ws_codec.h). The one idea: everything here works on
 * the bytes where they are, so a frame is checked and unmasked in the
 * receive buffer that holds it, and a message of one frame is never copied.
 * The digest of the opening handshake is OpenSSL's.
 */
#include <string.h>

#include <openssl/evp.h>

#include "ws_codec.h"

int keel__ws_hdr_parse(const uint8_t *p, size_t n, struct keel__ws_hdr *h)
{
	if (n < 2)
		return 0;
	h->fin = p[0] & 0x80;
	h->rsv = (p[0] >> 4) & 7;
	h->opcode = p[0] & 0x0f;
	h->masked = p[1] & 0x80;
	unsigned len7 = p[1] & 0x7f;
	if (h->rsv)
		return -1; /* no extension was agreed: every reserved bit must be 0 */
	bool control = h->opcode & 0x8;
	if (h->opcode > KEEL__WS_BINARY && !(h->opcode >= KEEL__WS_CLOSE && h->opcode <= KEEL__WS_PONG))
		return -1; /* reserved opcodes 3-7 and 0xB-0xF */
	if (control && (!h->fin || len7 > KEEL__WS_CTRL_MAX))
		return -1;
	size_t size = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + (h->masked ? 4 : 0);
	if (n < size)
		return 0;
	const uint8_t *q = p + 2;
	if (len7 == 126) {
		h->len = (uint64_t)q[0] << 8 | q[1];
		q += 2;
	} else if (len7 == 127) {
		h->len = 0;
		for (int i = 0; i < 8; i++)
			h->len = h->len << 8 | q[i];
		q += 8;
		if (h->len >> 63)
			return -1; /* "the most significant bit MUST be 0" */
	} else {
		h->len = len7;
	}
	if (h->masked)
		memcpy(h->mask, q, 4);
	else
		memset(h->mask, 0, 4);
	h->size = (uint8_t)size;
	return (int)size;
}

size_t keel__ws_hdr_write(uint8_t *out, bool fin, unsigned opcode, uint64_t len)
{
	out[0] = (uint8_t)((fin ? 0x80 : 0) | (opcode & 0x0f));
	if (len < 126) {
		out[1] = (uint8_t)len;
		return 2;
	}
	if (len <= 0xffff) {
		out[1] = 126;
		out[2] = (uint8_t)(len >> 8);
		out[3] = (uint8_t)len;
		return 4;
	}
	out[1] = 127;
	for (int i = 0; i < 8; i++)
		out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
	return 10;
}

void keel__ws_unmask(uint8_t *p, size_t n, const uint8_t mask[4], uint64_t off)
{
	uint8_t m[4];
	for (int i = 0; i < 4; i++)
		m[i] = mask[(off + (uint64_t)i) & 3];
	size_t i = 0;
	/* Eight bytes at a time: the mask rotated to p's start, twice over. */
	uint64_t m8;
	uint8_t mm[8] = {m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]};
	memcpy(&m8, mm, 8);
	for (; i + 8 <= n; i += 8) {
		uint64_t v;
		memcpy(&v, p + i, 8);
		v ^= m8;
		memcpy(p + i, &v, 8);
	}
	for (; i < n; i++)
		p[i] ^= m[i & 3];
}

/*
 * The state: 0 at a boundary; otherwise the continuation bytes still owed
 * (bits 0-1) and the range the next one must fall in (lo in bits 8-15, hi
 * in bits 16-23) -- narrower than 80..BF right after E0, ED, F0 and F4,
 * which is how overlongs, surrogates and values past U+10FFFF are refused.
 */
static uint32_t utf8_state(unsigned need, unsigned lo, unsigned hi)
{
	return need | lo << 8 | hi << 16;
}

uint32_t keel__utf8_step(uint32_t state, const uint8_t *p, size_t n)
{
	if (state == KEEL__UTF8_BAD)
		return state;
	size_t i = 0;
	while (i < n) {
		if (state == 0) {
			/* ASCII runs, eight bytes at a time. */
			while (i + 8 <= n) {
				uint64_t v;
				memcpy(&v, p + i, 8);
				if (v & 0x8080808080808080ull)
					break;
				i += 8;
			}
			if (i == n)
				break;
			uint8_t b = p[i++];
			if (b < 0x80)
				continue;
			if (b >= 0xc2 && b <= 0xdf)
				state = utf8_state(1, 0x80, 0xbf);
			else if (b == 0xe0)
				state = utf8_state(2, 0xa0, 0xbf);
			else if (b == 0xed)
				state = utf8_state(2, 0x80, 0x9f);
			else if (b >= 0xe1 && b <= 0xef)
				state = utf8_state(2, 0x80, 0xbf);
			else if (b == 0xf0)
				state = utf8_state(3, 0x90, 0xbf);
			else if (b >= 0xf1 && b <= 0xf3)
				state = utf8_state(3, 0x80, 0xbf);
			else if (b == 0xf4)
				state = utf8_state(3, 0x80, 0x8f);
			else
				return KEEL__UTF8_BAD; /* 80-C1 (a stray continuation, an overlong lead), F5-FF */
			continue;
		}
		uint8_t b = p[i++];
		unsigned need = state & 3, lo = (state >> 8) & 0xff, hi = (state >> 16) & 0xff;
		if (b < lo || b > hi)
			return KEEL__UTF8_BAD;
		state = need == 1 ? 0 : utf8_state(need - 1, 0x80, 0xbf);
	}
	return state;
}

bool keel__ws_close_code_ok(unsigned code)
{
	return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
	       (code >= 3000 && code <= 4999);
}

bool keel__ws_key_ok(const char *key, size_t len)
{
	if (len != 24 || key[22] != '=' || key[23] != '=')
		return false;
	for (size_t i = 0; i < 22; i++) {
		char c = key[i];
		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '+' || c == '/'))
			return false;
	}
	return true;
}

int keel__ws_accept_key(const char *key, size_t len, char out[29])
{
	static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
	char buf[64 + sizeof(guid)];
	if (len > 64)
		return -1;
	memcpy(buf, key, len);
	memcpy(buf + len, guid, sizeof(guid) - 1);
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned mdlen = 0;
	if (!EVP_Digest(buf, len + sizeof(guid) - 1, md, &mdlen, EVP_sha1(), NULL) || mdlen != 20)
		return -1;
	return EVP_EncodeBlock((unsigned char *)out, md, 20) == 28 ? 0 : -1;
}
