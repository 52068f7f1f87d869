/*
 * libFuzzer driver for the PROXY protocol's header parser (keel__pp_parse).
 *
 * Every input is parsed whole and then a byte at a time, as a header that
 * arrives in pieces would be (src/http/preamble.c takes all the bytes of a
 * header that is not whole yet): the two must agree. A length is never
 * past the input or KEEL__PP_MAX, "more" always asks for more than is
 * there, and an address, when there is one, is IPv4 or IPv6.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "net/proxy_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int parse(const uint8_t *data, size_t size, struct sockaddr_storage *ss)
{
	size_t need = 0;
	int n = keel__pp_parse(data, size, ss, &need);
	if (n > (int)size || n > KEEL__PP_MAX || (n < 0 && n != -EPROTO && n != -E2BIG))
		abort();
	if (n == 0 && (need <= size || need > KEEL__PP_MAX))
		abort();
	if (n > 0 && ss->ss_family != AF_UNSPEC && ss->ss_family != AF_INET && ss->ss_family != AF_INET6)
		abort();
	return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	struct sockaddr_storage whole, step;
	int n = parse(data, size, &whole);
	/* As it would come: one byte more each time, until the parse is decided. */
	int m = 0;
	size_t len = 1;
	for (; len <= size; len++)
		if ((m = parse(data, len, &step)) != 0)
			break;
	if (n > 0 && (m != n || memcmp(&whole, &step, sizeof(whole)) != 0))
		abort();
	if (n < 0 && m > 0)
		abort(); /* a prefix that is a whole header makes the whole input one too */
	return 0;
}
