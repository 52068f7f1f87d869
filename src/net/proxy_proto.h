/*
 * The PROXY protocol (HAProxy's, versions 1 and 2): the header a load
 * balancer sends at the start of a connection to say whose it is. Parsing
 * only: proxy_proto.c. Internal, for the HTTP server's preamble.
 */
#ifndef KEEL_NET_PROXY_PROTO_H
#define KEEL_NET_PROXY_PROTO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* The longest header taken: a version 1 line is at most 107 bytes; version 2's TLVs make it longer. */
#define KEEL__PP_MAX 1536

/*
 * Parse the header at the start of buf[0 .. len). Returns its length once
 * it is whole (with *src the client's address, or AF_UNSPEC for a LOCAL or
 * UNKNOWN header: the connection's own address stands); 0 if buf is the
 * start of one and more is needed (*need: at least that many bytes in all);
 * -EPROTO if it is not a header (or a broken one); -E2BIG past KEEL__PP_MAX.
 */
int keel__pp_parse(const uint8_t *buf, size_t len, struct sockaddr_storage *src, size_t *need);

#endif
