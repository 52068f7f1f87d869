/*
 * What keel load sends, and where: the URL becomes an address to connect to
 * and a Host header (and for https a TLS client context), and the request is
 * formatted once, then copied back to back as many times as one pipelined
 * send may need (up to LOAD_COPY_BYTES), so that sending k requests never
 * formats anything.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "load/internal.h"

#define LOAD_COPY_BYTES 65536 /* prebuilt request copies: up to this many bytes */

/*
 * The authority as written becomes the Host header; the address connected
 * to is the host with the port (80 or 443 if none), localhost taken as
 * 127.0.0.1. For https the host as written (localhost stays localhost) is
 * the name sent as SNI and verified against the certificate.
 */
int load_url_parse(load_url *u, const char *url)
{
	char *host = u->host;
	const char *a;
	if (strncmp(url, "http://", 7) == 0)
		a = url + 7;
	else if (strncmp(url, "https://", 8) == 0)
		a = url + 8;
	else
		return -EINVAL;
	u->tls = a == url + 8;
	size_t alen = strcspn(a, "/?#");
	if (alen == 0 || alen >= sizeof(u->host) || a[alen] == '#')
		return -EINVAL;
	memcpy(host, a, alen);
	host[alen] = '\0';
	u->path = a[alen] ? a + alen : "/";
	for (const char *q = u->path; *q; q++)
		if ((unsigned char)*q <= ' ' || *q == 0x7f || *q == '#')
			return -EINVAL;
	/* host[:port], [v6][:port] */
	const char *hs = host, *he, *port = NULL;
	if (*hs == '[') {
		he = strchr(hs, ']');
		if (!he)
			return -EINVAL;
		hs++;
		if (he[1] == ':')
			port = he + 2;
		else if (he[1])
			return -EINVAL;
	} else {
		he = strchr(hs, ':');
		if (he)
			port = he + 1;
		else
			he = hs + strlen(hs);
	}
	long pn = u->tls ? 443 : 80;
	if (port) {
		char *end;
		errno = 0;
		pn = strtol(port, &end, 10);
		if (errno || end == port || *end || pn < 1 || pn > 65535)
			return -EINVAL;
	}
	char ip[200];
	size_t hlen = (size_t)(he - hs);
	if (hlen == 0 || hlen >= sizeof(u->name))
		return -EINVAL;
	memcpy(u->name, hs, hlen);
	u->name[hlen] = '\0';
	if (hlen == 9 && strncasecmp(hs, "localhost", 9) == 0)
		snprintf(ip, sizeof(ip), "127.0.0.1:%ld", pn);
	else if (host[0] == '[')
		snprintf(ip, sizeof(ip), "[%.*s]:%ld", (int)hlen, hs, pn);
	else
		snprintf(ip, sizeof(ip), "%.*s:%ld", (int)hlen, hs, pn);
	if (keel_addr_parse(ip, &u->addr, &u->addrlen) < 0)
		return -EINVAL;
	return 0;
}

/* Append to a growing request buffer. */
struct sbuf {
	char *p;
	size_t len, cap;
	bool oom;
};

static void sb_add(struct sbuf *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p) {
			b->oom = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
}

static void sb_str(struct sbuf *b, const char *s)
{
	sb_add(b, s, strlen(s));
}

static bool header_named(const char *h, const char *name)
{
	size_t n = strlen(name);
	return strncasecmp(h, name, n) == 0 && h[n] == ':';
}

/* Format the request once, then batch_n copies of it for pipelined sends. */
static int build_request(struct load_cfg *cfg, const char *host, const char *path)
{
	const load_opts *o = cfg->opts;
	const char *const *headers = o->headers;
	int nheaders = o->nheaders;
	bool has_body = o->body != NULL;
	struct sbuf b = {0};
	bool have_host = false, have_length = false;
	for (int i = 0; i < nheaders; i++) {
		have_host |= header_named(headers[i], "host");
		have_length |= header_named(headers[i], "content-length") ||
		               header_named(headers[i], "transfer-encoding");
	}
	sb_str(&b, o->method);
	sb_str(&b, " ");
	if (*path == '?')
		sb_str(&b, "/");
	sb_str(&b, path);
	sb_str(&b, " HTTP/1.1\r\n");
	if (!have_host) {
		sb_str(&b, "Host: ");
		sb_str(&b, host);
		sb_str(&b, "\r\n");
	}
	for (int i = 0; i < nheaders; i++) {
		sb_str(&b, headers[i]);
		sb_str(&b, "\r\n");
	}
	if (has_body && !have_length) {
		char cl[64];
		snprintf(cl, sizeof(cl), "Content-Length: %zu\r\n", o->body_len);
		sb_str(&b, cl);
	}
	sb_str(&b, "\r\n");
	if (has_body)
		sb_add(&b, o->body, o->body_len);
	if (b.oom) {
		free(b.p);
		return -ENOMEM;
	}
	cfg->req = b.p;
	cfg->req_len = b.len;
	size_t n = LOAD_COPY_BYTES / b.len;
	if (n < 1)
		n = 1;
	if (n > (size_t)o->pipeline)
		n = (size_t)o->pipeline;
	cfg->batch_n = (uint32_t)n;
	cfg->batch = malloc(n * b.len);
	if (!cfg->batch)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		memcpy(cfg->batch + i * b.len, b.p, b.len);
	return 0;
}

int load__cfg_init(struct load_cfg *cfg, const load_opts *o)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->opts = o;
	load_url u;
	int err = load_url_parse(&u, o->url);
	if (err < 0)
		return err;
	cfg->addr = u.addr;
	cfg->addrlen = u.addrlen;
	if (u.tls)
		snprintf(cfg->tls_name, sizeof(cfg->tls_name), "%s", u.name);
	cfg->method.ptr = o->method;
	cfg->method.len = strlen(o->method);
	return build_request(cfg, u.host, u.path);
}

/*
 * One client context for the run, shared by the workers' endpoints. A
 * handshake gets --timeout, as a connect does.
 */
int load__tls_init(struct load_cfg *cfg)
{
	const load_opts *o = cfg->opts;
	if (!cfg->tls_name[0])
		return 0; /* http */
	keel_tls_config tc;
	keel_tls_config_default(&tc);
	tc.client = true;
	tc.verify = !o->tls_insecure;
	tc.ca_file = o->tls_insecure ? NULL : o->tls_ca;
	tc.handshake_timeout_ms = (uint64_t)o->timeout_ms;
	char why[512] = "";
	int err = keel_tls_ctx_new(&cfg->tls, &tc, why, sizeof(why));
	if (err < 0)
		fprintf(stderr, "keel load: TLS: %s\n", why[0] ? why : keel_strerror(err));
	return err;
}

void load__cfg_fini(struct load_cfg *cfg)
{
	free(cfg->req);
	free(cfg->batch);
	cfg->req = cfg->batch = NULL;
	keel_tls_ctx_free(cfg->tls);
	cfg->tls = NULL;
}
