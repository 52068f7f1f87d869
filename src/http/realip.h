/*
 * The client's address as trusted proxies tell it: the PROXY protocol's
 * preamble (preamble.c) and X-Forwarded-For / Forwarded (realip.c).
 * Internal to the HTTP server; the CLI's checker uses keel__cidrs_parse.
 */
#ifndef KEEL_HTTP_REALIP_H
#define KEEL_HTTP_REALIP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Trusted sources a server holds (keel_http_config.real_ip_from): 64. */
#define KEEL__CIDRS_MAX 64

/* An address block: IPv4 (family AF_INET, 4 bytes of addr) or IPv6, and its prefix length. */
struct keel__cidr {
	uint8_t family;
	uint8_t bits;
	uint8_t addr[16];
};

/*
 * Parse "ADDR[/BITS], ..." (commas and spaces between; "unix:" stands for
 * every client of a Unix socket) into out (at most max). The count, or
 * -EINVAL (a bad entry: *bad points at it) or -E2BIG.
 */
int keel__cidrs_parse(const char *list, struct keel__cidr *out, unsigned max, const char **bad);

/* Whether the numeric address ip[0 .. len) (IPv4, IPv6, IPv4-mapped IPv6; "unix:") is in one of the n blocks. */
bool keel__cidrs_match(const struct keel__cidr *c, unsigned n, const char *ip, size_t len);

#endif
