/*
 * The client's address from trusted proxies' headers. A request whose
 * connection comes from a trusted source is taken to come from the last
 * address of its X-Forwarded-For (or Forwarded's for=) list that is not
 * itself trusted, read from the right: each proxy appends the address it
 * got the request from, and only the trusted ones' appends are believed.
 * All of them trusted: the leftmost. Anything that is not an address ends
 * the walk at the last address believed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "keel/http.h"
#include "realip.h"
#include "server_internal.h"

/* ip[0 .. len) as an address: 4 or 16 bytes into out, the family returned (0: not one). */
static int addr_bytes(const char *ip, size_t len, uint8_t out[16])
{
	char buf[INET6_ADDRSTRLEN];
	if (len == 0 || len >= sizeof(buf))
		return 0;
	memcpy(buf, ip, len);
	buf[len] = '\0';
	if (inet_pton(AF_INET, buf, out) == 1)
		return AF_INET;
	if (inet_pton(AF_INET6, buf, out) != 1)
		return 0;
	static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	if (memcmp(out, mapped, 12) == 0) { /* ::ffff:a.b.c.d, an IPv4 client of a dual-stack socket */
		memmove(out, out + 12, 4);
		return AF_INET;
	}
	return AF_INET6;
}

int keel__cidrs_parse(const char *list, struct keel__cidr *out, unsigned max, const char **bad)
{
	unsigned n = 0;
	const char *p = list;
	while (p && *p) {
		while (*p == ' ' || *p == ',' || *p == '\t')
			p++;
		if (!*p)
			break;
		const char *e = p;
		while (*e && *e != ' ' && *e != ',' && *e != '\t')
			e++;
		*bad = p;
		if (n == max)
			return -E2BIG;
		struct keel__cidr c = {0};
		if (e - p == 5 &&
		    memcmp(p, "unix:", 5) == 0) { /* every client of a Unix socket (nginx's unix:) */
			c.family = AF_UNIX;
			out[n++] = c;
			p = e;
			continue;
		}
		const char *slash = memchr(p, '/', (size_t)(e - p));
		int fam = addr_bytes(p, (size_t)((slash ? slash : e) - p), c.addr);
		int most = fam == AF_INET ? 32 : 128;
		int bits = most;
		if (fam && slash) {
			char *end;
			long v = strtol(slash + 1, &end, 10);
			bits = slash + 1 == e || end != e || v < 0 || v > most ? -1 : (int)v;
		}
		if (!fam || bits < 0 || (fam == AF_INET && memchr(p, ':', (size_t)(e - p)) && bits != 32))
			return -EINVAL; /* (an IPv4-mapped block: write it as IPv4) */
		c.family = (uint8_t)fam;
		c.bits = (uint8_t)bits;
		out[n++] = c;
		p = e;
	}
	return (int)n;
}

bool keel__cidrs_match(const struct keel__cidr *c, unsigned n, const char *ip, size_t len)
{
	uint8_t a[16];
	int fam = len == 5 && memcmp(ip, "unix:", 5) == 0 ? AF_UNIX : addr_bytes(ip, len, a);
	for (unsigned i = 0; fam == AF_UNIX && i < n; i++)
		if (c[i].family == AF_UNIX)
			return true;
	for (unsigned i = 0; fam && fam != AF_UNIX && i < n; i++) {
		if (c[i].family != fam)
			continue;
		unsigned whole = c[i].bits / 8, rest = c[i].bits % 8;
		if (memcmp(a, c[i].addr, whole) != 0)
			continue;
		if (rest && ((a[whole] ^ c[i].addr[whole]) & (uint8_t)(0xff << (8 - rest))))
			continue;
		return true;
	}
	return false;
}

/* The list's entries from the right: *end moves left past the one returned ({NULL, 0} when none is left). */
static keel_str list_prev(const char *start, const char **end)
{
	const char *e = *end;
	while (e > start && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == ','))
		e--;
	const char *b = e;
	while (b > start && b[-1] != ',')
		b--;
	*end = b;
	while (b < e && (*b == ' ' || *b == '\t'))
		b++;
	return (keel_str){b, (size_t)(e - b)};
}

/* A Forwarded element's for= address (RFC 7239): unquoted, and without brackets and port. */
static keel_str forwarded_for(keel_str el)
{
	const char *p = el.ptr, *end = el.ptr + el.len;
	while (p < end) {
		const char *q = memchr(p, ';', (size_t)(end - p));
		const char *pe = q ? q : end;
		while (p < pe && (*p == ' ' || *p == '\t'))
			p++;
		if (pe - p > 4 && strncasecmp(p, "for=", 4) == 0) {
			const char *v = p + 4, *ve = pe;
			while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
				ve--;
			if (ve - v >= 2 && *v == '"' && ve[-1] == '"') {
				v++;
				ve--;
			}
			if (v < ve && *v == '[') { /* "[2001:db8::1]:4711" */
				const char *rb = memchr(v, ']', (size_t)(ve - v));
				return rb ? (keel_str){v + 1, (size_t)(rb - v - 1)} : (keel_str){NULL, 0};
			}
			const char *colon = memchr(v, ':', (size_t)(ve - v)); /* "192.0.2.60:8080" */
			return (keel_str){v, (size_t)((colon ? colon : ve) - v)};
		}
		p = q ? q + 1 : end;
	}
	return (keel_str){NULL, 0};
}

const char *keel__real_ip(keel_http_request *r, const char *peer)
{
	keel_http_server *s = r->server;
	if (!s->ntrusted || !s->cfg.real_ip_header ||
	    !keel__cidrs_match(s->trusted, s->ntrusted, peer, strlen(peer)))
		return peer;
	bool fwd = s->cfg.real_ip_header == KEEL_HTTP_REAL_IP_FORWARDED;
	const char *name = fwd ? "forwarded" : "x-forwarded-for";
	keel_str got = {NULL, 0};
	for (unsigned h = r->msg.nheaders; h-- > 0;) { /* (several lines are one list, in order) */
		if (!keel_str_ieq(r->msg.headers[h].name, name))
			continue;
		const char *start = r->msg.headers[h].value.ptr, *end = start + r->msg.headers[h].value.len;
		while (end > start) {
			keel_str el = list_prev(start, &end);
			keel_str ip = fwd ? forwarded_for(el) : el;
			uint8_t scratch[16];
			if (!ip.len || !addr_bytes(ip.ptr, ip.len, scratch))
				goto done; /* not an address (unknown, obfuscated, junk): what we had stands */
			got = ip;
			if (!keel__cidrs_match(s->trusted, s->ntrusted, ip.ptr, ip.len))
				goto done;
		}
	}
done:
	if (!got.len)
		return peer;
	keel_ctx *ctx = keel_http_request_ctx(r);
	char *out = ctx ? keel_ctx_alloc(ctx, got.len + 1) : NULL;
	if (!out)
		return peer;
	memcpy(out, got.ptr, got.len);
	out[got.len] = '\0';
	return out;
}
