/*
 * The PROXY protocol's header parser (src/net/proxy_proto.c): versions 1
 * and 2 as HAProxy sends them, every prefix of a good header asking for
 * more, the limits and one past them, and broken headers refused.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>

#include "net/proxy_proto.h"
#include "test.h"

#define ASSERT_STREQ(a, b) ASSERT(strcmp((a), (b)) == 0)

static int parse(const void *buf, size_t len, struct sockaddr_storage *ss)
{
	size_t need = 0;
	int n = keel__pp_parse(buf, len, ss, &need);
	if (n == 0)
		ASSERT(need > len); /* more is asked for, never what is there already */
	return n;
}

/* Every proper prefix of a whole header asks for more; the whole gives its length. */
static void whole(const void *buf, size_t len, struct sockaddr_storage *ss)
{
	for (size_t i = 1; i < len; i++)
		ASSERT_EQ(parse(buf, i, ss), 0);
	ASSERT_EQ(parse(buf, len, ss), (int)len);
}

static const char *addr_of(const struct sockaddr_storage *ss, char *buf, size_t size, int *port)
{
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *in4 = (const void *)ss;
		*port = ntohs(in4->sin_port);
		return inet_ntop(AF_INET, &in4->sin_addr, buf, (socklen_t)size);
	}
	const struct sockaddr_in6 *in6 = (const void *)ss;
	*port = ntohs(in6->sin6_port);
	return inet_ntop(AF_INET6, &in6->sin6_addr, buf, (socklen_t)size);
}

static void test_v1(void)
{
	struct sockaddr_storage ss;
	char a[64];
	int port;
	const char *h4 = "PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r\n";
	whole(h4, strlen(h4), &ss);
	ASSERT_EQ(ss.ss_family, AF_INET);
	ASSERT_STREQ(addr_of(&ss, a, sizeof(a), &port), "203.0.113.7");
	ASSERT_EQ(port, 56324);
	/* What follows the header is not taken: the length says where the request starts. */
	char more[128];
	snprintf(more, sizeof(more), "%sGET / HTTP/1.1\r\n\r\n", h4);
	ASSERT_EQ(parse(more, strlen(more), &ss), (int)strlen(h4));

	const char *h6 = "PROXY TCP6 2001:db8::7 2001:db8::1 65535 0\r\n";
	whole(h6, strlen(h6), &ss);
	ASSERT_EQ(ss.ss_family, AF_INET6);
	ASSERT_STREQ(addr_of(&ss, a, sizeof(a), &port), "2001:db8::7");
	ASSERT_EQ(port, 65535);

	/* UNKNOWN: the connection's own address stands (whatever follows on the line). */
	ASSERT_EQ(parse("PROXY UNKNOWN\r\n", 15, &ss), 15);
	ASSERT_EQ(ss.ss_family, AF_UNSPEC);
	ASSERT_EQ(parse("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", 35, &ss), 35);

	/* The longest line, 107 bytes, is taken; one more byte is not. */
	const char *longest = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
	                      "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
	ASSERT_EQ(strlen(longest), 104u);
	ASSERT_EQ(parse(longest, strlen(longest), &ss), 104);
	char line[200];
	memset(line, 'x', sizeof(line));
	memcpy(line, "PROXY UNKNOWN ", 14);
	memcpy(line + 105, "\r\n", 2); /* 107 bytes with the CRLF */
	ASSERT_EQ(parse(line, 107, &ss), 107);
	memcpy(line + 105, "x\r\n", 3); /* 108 */
	ASSERT_EQ(parse(line, 108, &ss), -EPROTO);
	ASSERT_EQ(parse(line, 107, &ss), -EPROTO); /* no CRLF within 107 bytes: never a header */

	const char *bad[] = {
	    "PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\n",    /* LF alone */
	    "PROXY TCP4 203.0.113.7  192.0.2.1 56324 443\r\n", /* two spaces */
	    "PROXY TCP4 203.0.113.7 192.0.2.1 56324 443 \r\n", /* a trailing space */
	    "PROXY TCP4 203.0.113.7 192.0.2.1 056324 443\r\n", /* a leading zero */
	    "PROXY TCP4 203.0.113.7 192.0.2.1 65536 443\r\n",  /* past 65535 */
	    "PROXY TCP4 2001:db8::7 192.0.2.1 1 2\r\n",        /* the wrong family */
	    "PROXY TCP6 203.0.113.7 2001:db8::1 1 2\r\n",
	    "PROXY TCP4 203.0.113.7 192.0.2.1 1\r\n", /* a field missing */
	    "PROXY UDP4 203.0.113.7 192.0.2.1 1 2\r\n",
	    "PROXY tcp4 203.0.113.7 192.0.2.1 1 2\r\n",
	    "PROXY TCP4 203.0.113.777 192.0.2.1 1 2\r\n",
	    "PROXY\r\n",
	    "GET / HTTP/1.1\r\n", /* no header at all */
	    "proxy TCP4 203.0.113.7 192.0.2.1 1 2\r\n",
	    "PROXY UNKNOWN a\nb\r\n", /* a CR or LF within the line (found by fuzz_proxyproto) */
	    "PROXY UNKNOWN a\rb\r\n",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ASSERT_EQ(parse(bad[i], strlen(bad[i]), &ss), -EPROTO);
	printf("version 1: ok\n");
}

static size_t v2(uint8_t *out, int cmd, int fam_proto, const void *addrs, size_t alen, size_t tlvs)
{
	static const uint8_t sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
	                                0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
	memcpy(out, sig, 12);
	out[12] = (uint8_t)(0x20 | cmd);
	out[13] = (uint8_t)fam_proto;
	size_t len = alen + tlvs;
	out[14] = (uint8_t)(len >> 8);
	out[15] = (uint8_t)len;
	if (alen)
		memcpy(out + 16, addrs, alen);
	memset(out + 16 + alen, 0xAB, tlvs);
	return 16 + len;
}

static void test_v2(void)
{
	static uint8_t b[4096];
	struct sockaddr_storage ss;
	char a[64];
	int port;
	uint8_t in4[12] = {203, 0, 113, 7, 192, 0, 2, 1, 0xDC, 0x04, 0x01, 0xBB}; /* port 56324 -> 443 */
	size_t n = v2(b, 1, 0x11, in4, sizeof(in4), 0);
	whole(b, n, &ss);
	ASSERT_STREQ(addr_of(&ss, a, sizeof(a), &port), "203.0.113.7");
	ASSERT_EQ(port, 56324);

	uint8_t in6[36] = {
	    0x20, 0x01, 0x0d, 0xb8, [15] = 7, [16] = 0x20, [17] = 0x01, [31] = 1, [32] = 0x12, [33] = 0x34};
	n = v2(b, 1, 0x21, in6, sizeof(in6), 40); /* TLVs after the addresses: skipped */
	whole(b, n, &ss);
	ASSERT_STREQ(addr_of(&ss, a, sizeof(a), &port), "2001:db8::7");
	ASSERT_EQ(port, 0x1234);

	/* LOCAL (a balancer's health check) and UNSPEC: the connection's own address. */
	n = v2(b, 0, 0x00, NULL, 0, 0);
	ASSERT_EQ(parse(b, n, &ss), 16);
	ASSERT_EQ(ss.ss_family, AF_UNSPEC);
	n = v2(b, 0, 0x11, in4, sizeof(in4), 0);
	ASSERT_EQ(parse(b, n, &ss), (int)n);
	ASSERT_EQ(ss.ss_family, AF_UNSPEC);
	uint8_t un[216] = {0};
	n = v2(b, 1, 0x31, un, sizeof(un), 0);
	ASSERT_EQ(parse(b, n, &ss), (int)n);
	ASSERT_EQ(ss.ss_family, AF_UNSPEC);

	/* The limit: KEEL__PP_MAX in all is taken, one byte more is refused before it is read. */
	n = v2(b, 1, 0x11, in4, sizeof(in4), KEEL__PP_MAX - 16 - sizeof(in4));
	ASSERT_EQ(n, (size_t)KEEL__PP_MAX);
	ASSERT_EQ(parse(b, n, &ss), KEEL__PP_MAX);
	n = v2(b, 1, 0x11, in4, sizeof(in4), KEEL__PP_MAX - 16 - sizeof(in4) + 1);
	ASSERT_EQ(parse(b, 16, &ss), -E2BIG);

	n = v2(b, 1, 0x11, in4, 8, 0); /* shorter than two IPv4 addresses and ports */
	ASSERT_EQ(parse(b, n, &ss), -EPROTO);
	n = v2(b, 1, 0x12, in4, sizeof(in4), 0); /* UDP */
	ASSERT_EQ(parse(b, n, &ss), -EPROTO);
	n = v2(b, 2, 0x11, in4, sizeof(in4), 0); /* a command that does not exist */
	ASSERT_EQ(parse(b, n, &ss), -EPROTO);
	n = v2(b, 1, 0x41, in4, sizeof(in4), 0); /* a family that does not exist */
	ASSERT_EQ(parse(b, n, &ss), -EPROTO);
	n = v2(b, 1, 0x11, in4, sizeof(in4), 0);
	b[12] = 0x11; /* version 1 in a binary header */
	ASSERT_EQ(parse(b, n, &ss), -EPROTO);
	n = v2(b, 1, 0x11, in4, sizeof(in4), 0);
	b[11] = 0x0B; /* the signature's last byte */
	ASSERT_EQ(parse(b, n, &ss), -EPROTO);
	printf("version 2: ok\n");
}

int main(void)
{
	test_v1();
	test_v2();
	return 0;
}
