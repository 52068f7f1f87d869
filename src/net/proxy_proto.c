/*
 * The PROXY protocol's header, versions 1 (a text line) and 2 (binary), as
 * HAProxy's specification (proxy-protocol.txt) gives them. Strict: a
 * header that breaks a rule is refused, never guessed at; whatever version
 * 2 carries after the addresses (TLVs) is skipped.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>

#include "proxy_proto.h"

#define V1_MAX 107 /* "PROXY TCP6 " + two addresses, two ports, spaces and CRLF */

static const uint8_t v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* A port: decimal, 0..65535, no leading zero. */
static int port_parse(const char *s, size_t n)
{
	if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
		return -1;
	int v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v <= 65535 ? v : -1;
}

/* The next space-separated field of line[*at .. end): its length, or -1 if empty. */
static int field(const char *line, size_t end, size_t *at, const char **f)
{
	size_t i = *at;
	*f = line + i;
	while (i < end && line[i] != ' ')
		i++;
	int n = (int)(i - *at);
	*at = i < end ? i + 1 : i; /* past the one space */
	return n > 0 ? n : -1;
}

static int v1_parse(const uint8_t *buf, size_t len, struct sockaddr_storage *src, size_t *need)
{
	const char *line = (const char *)buf;
	const uint8_t *crlf = NULL;
	for (size_t i = 0; i + 1 < len && i + 1 < V1_MAX; i++)
		if (buf[i] == '\r' && buf[i + 1] == '\n') {
			crlf = buf + i;
			break;
		}
	/* A CR or LF anywhere but in the line's end: never a header (whole, or as it comes) */
	size_t end = crlf ? (size_t)(crlf - buf) : len - 1, at = 6; /* after "PROXY " */
	if (memchr(buf, '\n', end) || memchr(buf, '\r', end))
		return -EPROTO;
	if (!crlf) {
		if (len >= V1_MAX || buf[len - 1] == '\n')
			return -EPROTO;
		*need = len + 1;
		return 0;
	}
	memset(src, 0, sizeof(*src));
	if (end >= 13 && memcmp(line + 6, "UNKNOWN", 7) == 0 && (end == 13 || line[13] == ' '))
		return (int)end + 2; /* (the rest of the line is ignored, as the specification says) */
	const char *proto, *sa, *da, *sp, *dp;
	int np = field(line, end, &at, &proto);
	int ns = field(line, end, &at, &sa), nd = field(line, end, &at, &da);
	int nsp = field(line, end, &at, &sp), ndp = field(line, end, &at, &dp);
	if (np != 4 || ns < 0 || nd < 0 || nsp < 0 || ndp < 0 || dp + ndp != line + end || ns > 45 || nd > 45)
		return -EPROTO;
	int family = memcmp(proto, "TCP4", 4) == 0 ? AF_INET : memcmp(proto, "TCP6", 4) == 0 ? AF_INET6 : 0;
	char a[46], b[46];
	memcpy(a, sa, (size_t)ns);
	a[ns] = '\0';
	memcpy(b, da, (size_t)nd);
	b[nd] = '\0';
	int sport = port_parse(sp, (size_t)nsp);
	struct in6_addr scratch;
	if (!family || sport < 0 || port_parse(dp, (size_t)ndp) < 0 || inet_pton(family, b, &scratch) != 1)
		return -EPROTO;
	if (family == AF_INET) {
		struct sockaddr_in *in4 = (struct sockaddr_in *)src;
		if (inet_pton(AF_INET, a, &in4->sin_addr) != 1)
			return -EPROTO;
		in4->sin_family = AF_INET;
		in4->sin_port = htons((uint16_t)sport);
	} else {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)src;
		if (inet_pton(AF_INET6, a, &in6->sin6_addr) != 1)
			return -EPROTO;
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)sport);
	}
	return (int)end + 2;
}

static int v2_parse(const uint8_t *buf, size_t len, struct sockaddr_storage *src, size_t *need)
{
	if (len < 16) {
		*need = 16;
		return 0;
	}
	size_t total = 16 + ((size_t)buf[14] << 8 | buf[15]);
	if ((buf[12] >> 4) != 2)
		return -EPROTO;
	if (total > KEEL__PP_MAX)
		return -E2BIG;
	if (len < total) {
		*need = total;
		return 0;
	}
	int cmd = buf[12] & 0xf, fam = buf[13] >> 4, proto = buf[13] & 0xf;
	memset(src, 0, sizeof(*src));
	if (cmd == 0) /* LOCAL: the balancer's own connection (a health check): its address stands */
		return (int)total;
	if (cmd != 1 || proto > 2)
		return -EPROTO;
	if (proto != 1 &&
	    !(fam == 0 && proto == 0)) /* only streams: a datagram's address is not this one's */
		return -EPROTO;
	const uint8_t *a = buf + 16;
	if (fam == 1) { /* IPv4: source, destination, two ports */
		if (total < 16 + 12)
			return -EPROTO;
		struct sockaddr_in *in4 = (struct sockaddr_in *)src;
		in4->sin_family = AF_INET;
		memcpy(&in4->sin_addr, a, 4);
		memcpy(&in4->sin_port, a + 8, 2);
	} else if (fam == 2) {
		if (total < 16 + 36)
			return -EPROTO;
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)src;
		in6->sin6_family = AF_INET6;
		memcpy(&in6->sin6_addr, a, 16);
		memcpy(&in6->sin6_port, a + 32, 2);
	} else if (fam == 3) { /* a Unix socket's client: no address to take */
		if (total < 16 + 216)
			return -EPROTO;
	} else if (fam != 0) {
		return -EPROTO;
	}
	return (int)total;
}

int keel__pp_parse(const uint8_t *buf, size_t len, struct sockaddr_storage *src, size_t *need)
{
	static const char v1_sig[6] = "PROXY ";
	size_t n1 = len < 6 ? len : 6, n2 = len < 12 ? len : 12;
	if (memcmp(buf, v1_sig, n1) == 0) {
		if (len < 6) {
			*need = 6;
			return 0;
		}
		return v1_parse(buf, len, src, need);
	}
	if (memcmp(buf, v2_sig, n2) == 0) {
		if (len < 12) {
			*need = 12;
			return 0;
		}
		return v2_parse(buf, len, src, need);
	}
	return -EPROTO;
}
