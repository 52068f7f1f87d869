/*
 * keel's configuration file: an INI file read with libinih into a cli_config
 * (config.h), then checked as a whole.
 *
 * libinih calls a handler once per "key = value" with the section's name,
 * but never for a section without keys, never with a line number (Debian
 * builds it without INI_HANDLER_LINENO), and it cuts section names at 49
 * bytes; its return value only says on which line the first error was. So
 * the lines reach libinih through our own reader (ini_parse_stream), which
 * counts them -- the count is libinih's line number, one reader call per
 * line -- and takes each [section] header itself as it goes by: an empty
 * [route /x] still has a line to blame, and a long route path is not cut.
 * The reader also strips indentation, so libinih's multi-line continuation
 * never glues an indented key onto the value of the key above it. Each
 * error is kept with its line and the first is reported, "FILE:LINE: ...".
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <ini.h>
#include <pwd.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "config.h"
#include "http/realip.h"

#define KEYS_SEEN_MAX 64 /* more keys than any section has */
#define NAME_MAX_LEN 64  /* of an upstream group */

enum section { SEC_NONE, SEC_BAD, SEC_SERVER, SEC_UPSTREAM, SEC_ROUTE };

struct parser {
	cli_config *cfg;
	const char *file;
	char *dir; /* the file's directory, for relative paths; NULL: the cwd */
	FILE *f;
	char *buf; /* getline's */
	size_t cap;
	int lineno;
	int read_err;
	enum section sec;
	unsigned cur; /* the current group or route, by index (the arrays move) */
	struct {
		char name[32];
		int line;
	} seen[KEYS_SEEN_MAX]; /* keys of the current section, to refuse repeats */
	unsigned nseen;
	int err_line; /* of the first error; 0: none applies */
	bool has_err;
	char err[512];
};

/* ---- The configuration ---------------------------------------------------- */

void cli_config_init(cli_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	cfg->workers = ncpu > 0 ? (int)(ncpu < 1024 ? ncpu : 1024) : 1;
	cfg->grace_ms = 5000;
	keel_http_config_default(&cfg->http);
	keel_tls_config_default(&cfg->tls.cfg);
	cfg->server_name = strdup("keel"); /* NULL on ENOMEM: no Server header, harmless */
	cfg->http.server_name = cfg->server_name;
}

void cli_config_fini(cli_config *cfg)
{
	for (unsigned i = 0; i < cfg->nups; i++) {
		struct cli_upstream *up = &cfg->ups[i];
		for (unsigned j = 0; j < up->nservers; j++)
			free(up->servers[j]);
		free(up->servers);
		free(up->name);
		free(up->health_path);
		free(up->via);
		free(up->upgrade);
		free(up->tls.ca);
		free(up->tls.cert);
		free(up->tls.key);
		free(up->tls.name);
		keel_tls_ctx_free(up->tls.ctx);
	}
	for (unsigned i = 0; i < cfg->nroutes; i++) {
		free(cfg->routes[i].path);
		free(cfg->routes[i].dir);
		free(cfg->routes[i].group);
	}
	struct cli_tls *t = &cfg->tls;
	for (unsigned i = 0; i < t->ncerts; i++)
		free(t->certs[i]);
	for (unsigned i = 0; i < t->nkeys; i++)
		free(t->keys[i]);
	free(t->protocols);
	free(t->ciphers);
	free(t->client_ca);
	free(t->ocsp);
	keel_tls_ctx_free(t->ctx);
	free(cfg->ups);
	free(cfg->routes);
	free(cfg->file);
	for (int i = 0; i < cfg->nlisten; i++)
		free((char *)cfg->listen[i].addr);
	free(cfg->real_ip_from);
	free(cfg->server_name);
	free(cfg->access_log);
	memset(cfg, 0, sizeof(*cfg));
}

struct cli_upstream *cli_config_add_upstream(cli_config *cfg, const char *name, int line)
{
	if (cfg->nups >= CLI_UPSTREAMS_MAX)
		return NULL;
	struct cli_upstream *ups = realloc(cfg->ups, (cfg->nups + 1) * sizeof(*ups));
	if (!ups)
		return NULL;
	cfg->ups = ups;
	struct cli_upstream *up = &ups[cfg->nups];
	memset(up, 0, sizeof(*up));
	up->name = strdup(name);
	if (!up->name)
		return NULL;
	up->line = line;
	up->tls.verify = true;
	keel_proxy_config_default(&up->proxy);
	cfg->nups++;
	return up;
}

struct cli_route *cli_config_add_route(cli_config *cfg, const char *path, int line)
{
	if (cfg->nroutes >= CLI_ROUTES_MAX)
		return NULL;
	struct cli_route *rs = realloc(cfg->routes, (cfg->nroutes + 1) * sizeof(*rs));
	if (!rs)
		return NULL;
	cfg->routes = rs;
	struct cli_route *r = &rs[cfg->nroutes];
	memset(r, 0, sizeof(*r));
	r->path = strdup(path);
	if (!r->path)
		return NULL;
	r->line = line;
	cfg->nroutes++;
	return r;
}

int cli_upstream_add_server(struct cli_upstream *up, const char *value, int line, char *msg, size_t msglen)
{
	bool https = strncasecmp(value, "https://", 8) == 0;
	const char *addr = https ? value + 8 : strncasecmp(value, "http://", 7) == 0 ? value + 7 : value;
	if (!keel_hostport_valid(addr)) { /* numeric, or a name resolved off the loop; port 1..65535 */
		snprintf(msg, msglen,
		         "bad address '%s' (expected [https://]HOST:PORT: an IP, [IPv6] or a DNS name, "
		         "port 1..65535)",
		         value);
		return -EINVAL;
	}
	for (unsigned i = 0; i < up->nservers; i++)
		if (strcmp(up->servers[i], addr) == 0) {
			snprintf(msg, msglen, "%s is already in [upstream %s]", addr, up->name);
			return -EEXIST;
		}
	if (up->nservers && https != up->tls.on) {
		char first[32] = "";
		if (up->tls.scheme_line)
			snprintf(first, sizeof(first), " (line %d)", up->tls.scheme_line);
		snprintf(msg, msglen,
		         "%s is %s but the group's first server%s is %s: a group speaks one scheme", value,
		         https ? "https" : "plain", first, up->tls.on ? "https" : "plain");
		return -EPROTO;
	}
	if (up->nservers >= CLI_SERVERS_MAX) {
		snprintf(msg, msglen, "too many servers in [upstream %s] (at most %d)", up->name,
		         CLI_SERVERS_MAX);
		return -E2BIG;
	}
	char **s = realloc(up->servers, (up->nservers + 1) * sizeof(*s));
	if (!s || !(s[up->nservers] = strdup(addr))) {
		if (s)
			up->servers = s;
		snprintf(msg, msglen, "out of memory");
		return -ENOMEM;
	}
	up->servers = s;
	if (!up->nservers) {
		up->tls.on = https;
		up->tls.scheme_line = line;
	}
	up->nservers++;
	return 0;
}

int cli_tls_add(struct cli_tls *t, bool key, const char *path, int line)
{
	unsigned *n = key ? &t->nkeys : &t->ncerts;
	if (*n >= KEEL_TLS_CERTS_MAX)
		return -E2BIG;
	char *s = strdup(path);
	if (!s)
		return -ENOMEM;
	(key ? t->keys : t->certs)[*n] = s;
	(key ? t->key_lines : t->cert_lines)[*n] = line;
	(*n)++;
	return 0;
}

/* A user or group: a name, or a number. */
static bool id_parse(const char *s, bool group, unsigned *id)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (*s >= '0' && *s <= '9' && !*end && !errno && v < 0xffffffffUL) {
		*id = (unsigned)v;
		return true;
	}
	if (group) {
		const struct group *gr = getgrnam(s);
		if (gr)
			*id = gr->gr_gid;
		return gr != NULL;
	}
	const struct passwd *pw = getpwnam(s);
	if (pw)
		*id = pw->pw_uid;
	return pw != NULL;
}

int cli_listen_parse(const char *value, keel__listen *out, unsigned *http, char *err, size_t errlen)
{
	char buf[256], *save = NULL;
	*out = (keel__listen){.perm = {0, (uid_t)-1, (gid_t)-1}};
	*http = 0;
	if (strlen(value) >= sizeof(buf)) {
		snprintf(err, errlen, "too long");
		return -1;
	}
	strcpy(buf, value);
	char *addr = strtok_r(buf, " \t", &save);
	struct sockaddr_storage ss;
	socklen_t len;
	if (!addr || keel_addr_parse(addr, &ss, &len) < 0) {
		snprintf(err, errlen,
		         "bad address '%s' (expected IP:PORT or [IPv6]:PORT, numeric, or unix:/PATH)",
		         addr ? addr : "");
		return -1;
	}
	bool file = ss.ss_family == AF_UNIX && addr[5] == '/';
	for (char *opt; (opt = strtok_r(NULL, " \t", &save));) {
		char *end;
		unsigned id;
		if (strcmp(opt, "proxy_protocol") == 0) {
			*http |= KEEL_HTTP_LISTEN_PROXY_PROTOCOL;
		} else if (strcmp(opt, "ipv6only") == 0 && ss.ss_family == AF_INET6) {
			out->flags |= KEEL_TCP_V6ONLY;
		} else if (strncmp(opt, "mode=", 5) == 0 && file) {
			unsigned long mode = strtoul(opt + 5, &end, 8);
			if (!opt[5] || *end || mode > 0777 || mode == 0) {
				snprintf(err, errlen, "'%s': a mode is octal, 1 to 0777", opt);
				return -1;
			}
			out->perm.mode = (mode_t)mode;
		} else if (strncmp(opt, "owner=", 6) == 0 && file && id_parse(opt + 6, false, &id)) {
			out->perm.uid = (uid_t)id;
		} else if (strncmp(opt, "group=", 6) == 0 && file && id_parse(opt + 6, true, &id)) {
			out->perm.gid = (gid_t)id;
		} else {
			const char *why = strncmp(opt, "owner=", 6) == 0 && file   ? "no such user"
			                  : strncmp(opt, "group=", 6) == 0 && file ? "no such group"
			                  : strcmp(opt, "ipv6only") == 0 ? "for an IPv6 address only"
			                  : strchr(opt, '=') && !file    ? "for a Unix socket's path only"
			                                                 : "unknown option";
			snprintf(err, errlen,
			         "'%s': %s (options: proxy_protocol, ipv6only; mode=, "
			         "owner=, group= for unix:/PATH)",
			         opt, why);
			return -1;
		}
	}
	if (!(out->addr = strdup(addr))) {
		snprintf(err, errlen, "%s", strerror(ENOMEM));
		return -1;
	}
	return 0;
}

/* The directory part of path ("." for none, "/" for the root); NULL on ENOMEM. */
static char *dir_of(const char *path)
{
	const char *slash = strrchr(path, '/');
	if (!slash)
		return strdup(".");
	return strndup(path, slash == path ? 1 : (size_t)(slash - path));
}

/* ---- Messages ------------------------------------------------------------- */

/* "FILE:LINE: msg", "keel: FILE: msg" when no line applies, "keel: msg" without a file. */
static void report(const char *file, int line, const char *msg)
{
	if (file && line > 0)
		fprintf(stderr, "%s:%d: %s\n", file, line, msg);
	else if (file)
		fprintf(stderr, "keel: %s: %s\n", file, msg);
	else
		fprintf(stderr, "keel: %s\n", msg);
}

__attribute__((format(printf, 3, 4))) static int check_fail(const cli_config *cfg, int line, const char *fmt,
                                                            ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	report(cfg->file, line, msg);
	return CLI_FAIL;
}

/* Keep the first error only: the ones after it are often its echoes. */
__attribute__((format(printf, 3, 4))) static void perr(struct parser *p, int line, const char *fmt, ...)
{
	if (p->has_err)
		return;
	p->has_err = true;
	p->err_line = line;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(p->err, sizeof(p->err), fmt, ap);
	va_end(ap);
}

/* ---- Values --------------------------------------------------------------- */

/* Digits, and for sizes an optional k, m or g (KiB, MiB, GiB). 0, -EINVAL or -ERANGE. */
static int parse_u64(const char *s, bool size, uint64_t *out)
{
	if (!isdigit((unsigned char)*s))
		return -EINVAL;
	uint64_t v = 0;
	for (; isdigit((unsigned char)*s); s++) {
		unsigned d = (unsigned)(*s - '0');
		if (v > (UINT64_MAX - d) / 10)
			return -ERANGE;
		v = v * 10 + d;
	}
	if (size && *s) {
		unsigned shift;
		switch (tolower((unsigned char)*s)) {
		case 'k': shift = 10; break;
		case 'm': shift = 20; break;
		case 'g': shift = 30; break;
		default: return -EINVAL;
		}
		s++;
		if (v > (UINT64_MAX >> shift))
			return -ERANGE;
		v <<= shift;
	}
	if (*s)
		return -EINVAL;
	*out = v;
	return 0;
}

struct num_key {
	const char *name;
	size_t off, width; /* where in the struct, and 4 or 8 bytes */
	bool size;         /* takes k, m, g */
	uint64_t min, max;
};

#define FIELD(type, field) offsetof(type, field), sizeof(((type *)0)->field)
#define HTTP_KEY(key, field, sz, lo, hi)                        \
	{                                                       \
		key, FIELD(keel_http_config, field), sz, lo, hi \
	}
#define TLS_KEY(key, field, lo, hi)                               \
	{                                                         \
		key, FIELD(keel_tls_config, field), false, lo, hi \
	}
#define PROXY_KEY(key, field, lo, hi)                               \
	{                                                           \
		key, FIELD(keel_proxy_config, field), false, lo, hi \
	}

static const struct num_key server_keys[] = {
    HTTP_KEY("conns_max", conns_max, false, 1, 1000000),
    HTTP_KEY("pipeline_max", pipeline_max, false, 1, 1024),
    HTTP_KEY("requests_per_conn_max", requests_per_conn_max, false, 0, 1000000000),
    HTTP_KEY("body_max", body_max, true, 0, (uint64_t)1 << 40),
    HTTP_KEY("body_stream_max", body_stream_max, true, 0, (uint64_t)1 << 50),
    HTTP_KEY("body_mem_max", body_mem_max, true, 0, (uint64_t)1 << 40),
    HTTP_KEY("conn_out_max", conn_out_max, true, 1, (uint64_t)1 << 30),
    HTTP_KEY("request_line_max", limits.request_line_max, true, 16, 1 << 20),
    HTTP_KEY("head_max", limits.head_max, true, 16, 1 << 20),
    HTTP_KEY("headers_max", limits.headers_max, false, 1, 1000),
    HTTP_KEY("header_timeout_ms", header_timeout_ms, false, 1, 3600000),
    HTTP_KEY("body_timeout_ms", body_timeout_ms, false, 1, 3600000),
    HTTP_KEY("idle_timeout_ms", idle_timeout_ms, false, 1, 86400000),
    HTTP_KEY("send_timeout_ms", send_timeout_ms, false, 1, 3600000),
    HTTP_KEY("queue_delay_max_us", queue_delay_max_us, false, 0, 10000000),
    HTTP_KEY("inflight_max", inflight_max, false, 0, 10000000),
    HTTP_KEY("h2_streams_max", h2_streams_max, false, 1, 1000),
};

static const struct num_key tls_keys[] = {
    TLS_KEY("tls_handshakes_max", handshakes_max, 1, 1000000),
    TLS_KEY("tls_handshake_timeout_ms", handshake_timeout_ms, 1, 3600000),
};

static const struct num_key upstream_keys[] = {
    PROXY_KEY("fail_timeout_ms", fail_timeout_ms, 0, 86400000),
    PROXY_KEY("health_interval_ms", health_interval_ms, 0, 86400000),
    PROXY_KEY("connect_timeout_ms", client.connect_timeout_ms, 1, 3600000),
    PROXY_KEY("response_timeout_ms", client.response_timeout_ms, 1, 86400000),
    PROXY_KEY("idle_timeout_ms", client.idle_timeout_ms, 1, 86400000),
    PROXY_KEY("resolve_interval_ms", client.resolve_interval_ms, 0, 86400000),
    PROXY_KEY("pool_max", client.pool_max, 1, 100000),
    PROXY_KEY("pending_max", client.pending_max, 0, 1000000),
    PROXY_KEY("tunnel_idle_timeout_ms", tunnel_idle_timeout_ms, 0, 86400000),
};

/* 1: handled (or an error recorded), 0: not a key of this table. */
static int set_num(struct parser *p, const struct num_key *keys, size_t nkeys, void *base, const char *name,
                   const char *value)
{
	for (size_t i = 0; i < nkeys; i++) {
		const struct num_key *k = &keys[i];
		if (strcmp(k->name, name) != 0)
			continue;
		uint64_t v;
		int err = parse_u64(value, k->size, &v);
		if (err == -EINVAL)
			perr(p, p->lineno, "%s: '%s' is not a %s", name, value,
			     k->size ? "size (digits, then k, m or g if you like)" : "whole number");
		else if (err || v < k->min || v > k->max)
			perr(p, p->lineno, "%s: %s is out of range [%llu, %llu]", name, value,
			     (unsigned long long)k->min, (unsigned long long)k->max);
		else if (k->width == sizeof(uint32_t)) {
			uint32_t v32 = (uint32_t)v;
			memcpy((char *)base + k->off, &v32, sizeof(v32));
		} else {
			memcpy((char *)base + k->off, &v, sizeof(v));
		}
		return 1;
	}
	return 0;
}

/* Visible ASCII and spaces: values that end up in headers or paths. */
static bool printable(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
			return false;
	return true;
}

/* A path from the file, relative to the file's directory; NULL on ENOMEM. */
static char *path_from_file(const struct parser *p, const char *path)
{
	if (path[0] == '/' || !p->dir)
		return strdup(path);
	size_t n = strlen(p->dir) + 1 + strlen(path) + 1;
	char *s = malloc(n);
	if (s)
		snprintf(s, n, "%s/%s", p->dir, path);
	return s;
}

/* Replace *slot with a copy of value; NULL for an empty value when empty_null. */
static bool set_str(struct parser *p, char **slot, const char *value, bool empty_null)
{
	char *s = NULL;
	if (*value || !empty_null) {
		s = strdup(value);
		if (!s) {
			perr(p, p->lineno, "out of memory");
			return false;
		}
	}
	free(*slot);
	*slot = s;
	return true;
}

/* ---- Sections -------------------------------------------------------------- */

static bool group_name_ok(const char *s)
{
	if (!*s || strlen(s) > NAME_MAX_LEN)
		return false;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && *s != '_' && *s != '-' && *s != '.')
			return false;
	return true;
}

static bool route_path_ok(const char *s)
{
	if (s[0] != '/')
		return false;
	for (; *s; s++)
		if ((unsigned char)*s <= 0x20 || (unsigned char)*s > 0x7e)
			return false;
	return true;
}

/*
 * A header line s ("[...", indentation gone). libinih parses it too and
 * keeps the same name; where it would find no ']' -- none, or an inline
 * comment (" ;") before it -- it reports a syntax error on this line.
 */
static void section_begin(struct parser *p, char *s)
{
	int line = p->lineno;
	cli_config *cfg = p->cfg;
	p->sec = SEC_BAD; /* until it proves good: its keys are then skipped quietly */
	p->nseen = 0;
	char *end = NULL;
	for (char *q = s + 1; *q; q++) {
		if (*q == ']') {
			end = q;
			break;
		}
		if (*q == ';' && q > s + 1 && isspace((unsigned char)q[-1]))
			break;
	}
	if (!end) {
		perr(p, line, "a section header needs a closing ']'");
		return;
	}
	char *rest = end + 1;
	while (isspace((unsigned char)*rest))
		rest++;
	if (*rest && *rest != ';') {
		perr(p, line, "unexpected text after ']': '%s'", rest);
		return;
	}
	*end = '\0';
	char *kind = s + 1;
	while (isspace((unsigned char)*kind))
		kind++;
	char *arg = kind;
	while (*arg && !isspace((unsigned char)*arg))
		arg++;
	if (*arg)
		*arg++ = '\0';
	while (isspace((unsigned char)*arg))
		arg++;
	for (char *t = arg + strlen(arg); t > arg && isspace((unsigned char)t[-1]);)
		*--t = '\0';

	if (strcmp(kind, "server") == 0) {
		if (*arg)
			perr(p, line, "[server] takes no name");
		else if (cfg->server_line)
			perr(p, line, "a second [server] section (the first is at line %d)",
			     cfg->server_line);
		else {
			cfg->server_line = line;
			p->sec = SEC_SERVER;
		}
	} else if (strcmp(kind, "upstream") == 0) {
		if (!group_name_ok(arg)) {
			perr(p, line,
			     "[upstream NAME]: '%s' is not a name (letters, digits, '_', '-', '.'; "
			     "at most %d)",
			     arg, NAME_MAX_LEN);
			return;
		}
		for (unsigned i = 0; i < cfg->nups; i++)
			if (strcmp(cfg->ups[i].name, arg) == 0) {
				perr(p, line, "a second [upstream %s] (the first is at line %d)", arg,
				     cfg->ups[i].line);
				return;
			}
		if (!cli_config_add_upstream(cfg, arg, line)) {
			perr(p, line, "too many upstream groups (at most %d)", CLI_UPSTREAMS_MAX);
			return;
		}
		p->sec = SEC_UPSTREAM;
		p->cur = cfg->nups - 1;
	} else if (strcmp(kind, "route") == 0) {
		if (!route_path_ok(arg)) {
			perr(p, line, "[route PATH]: '%s' is not a path (it starts with '/', no spaces)",
			     arg);
			return;
		}
		if (!cli_config_add_route(cfg, arg, line)) {
			perr(p, line, "too many routes (at most %d)", CLI_ROUTES_MAX);
			return;
		}
		p->sec = SEC_ROUTE;
		p->cur = cfg->nroutes - 1;
	} else {
		perr(p, line, "unknown section [%s%s%s] (expected [server], [upstream NAME] or [route PATH])",
		     kind, *arg ? " " : "", arg);
	}
}

/* ---- Keys ------------------------------------------------------------------ */

/*
 * Refuse a key given twice in one section. 'server' in [upstream] repeats,
 * 'listen' in [server] too (each address once), and so do tls_cert and
 * tls_key in [server] (on_key): they come in pairs.
 */
static bool key_first(struct parser *p, const char *name)
{
	for (unsigned i = 0; i < p->nseen; i++)
		if (strcmp(p->seen[i].name, name) == 0) {
			perr(p, p->lineno, "'%s' is given twice in this section (first at line %d)", name,
			     p->seen[i].line);
			return false;
		}
	if (p->nseen < KEYS_SEEN_MAX && strlen(name) < sizeof(p->seen[0].name)) {
		snprintf(p->seen[p->nseen].name, sizeof(p->seen[0].name), "%s", name);
		p->seen[p->nseen].line = p->lineno;
		p->nseen++;
	}
	return true;
}

static void unknown_key(struct parser *p, const char *name, const char *where)
{
	perr(p, p->lineno, "unknown key '%s' in %s", name, where);
}

/* A file key: relative to the file's directory; an empty value clears it (NULL). */
static bool set_path(struct parser *p, char **slot, const char *value)
{
	char *path = *value ? path_from_file(p, value) : NULL;
	if (*value && !path) {
		perr(p, p->lineno, "out of memory");
		return false;
	}
	free(*slot);
	*slot = path;
	return true;
}

/*
 * [server]'s tls_* keys. 1: handled (or an error recorded), 0: not one of
 * them. Files are only named here; cli_config_check loads them.
 */
static int server_tls_key(struct parser *p, const char *name, const char *value)
{
	struct cli_tls *t = &p->cfg->tls;
	bool key = strcmp(name, "tls_key") == 0;
	if (key || strcmp(name, "tls_cert") == 0) {
		if (!*value) {
			perr(p, p->lineno, "%s: a file is needed", name);
			return 1;
		}
		char *path = path_from_file(p, value);
		int err = path ? cli_tls_add(t, key, path, p->lineno) : -ENOMEM;
		free(path);
		if (err == -E2BIG)
			perr(p, p->lineno, "%s: at most %d certificates and keys", name, KEEL_TLS_CERTS_MAX);
		else if (err)
			perr(p, p->lineno, "out of memory");
		return 1;
	}
	if (!set_num(p, tls_keys, sizeof(tls_keys) / sizeof(tls_keys[0]), &t->cfg, name, value)) {
		if (strcmp(name, "tls_tickets") == 0 || strcmp(name, "tls_ktls") == 0) {
			bool *flag = name[4] == 't' ? &t->cfg.tickets : &t->cfg.ktls;
			if (strcmp(value, "on") == 0)
				*flag = true;
			else if (strcmp(value, "off") == 0)
				*flag = false;
			else
				perr(p, p->lineno, "%s: '%s' is not on or off", name, value);
		} else if (strcmp(name, "tls_protocols") == 0) {
			if (set_str(p, &t->protocols, value, true))
				t->protocols_line = p->lineno;
		} else if (strcmp(name, "tls_ciphers") == 0) {
			if (set_str(p, &t->ciphers, value, true))
				t->ciphers_line = p->lineno;
		} else if (strcmp(name, "tls_client_ca") == 0) {
			if (set_path(p, &t->client_ca, value))
				t->client_ca_line = p->lineno;
		} else if (strcmp(name, "tls_ocsp") == 0) {
			if (set_path(p, &t->ocsp, value))
				t->ocsp_line = p->lineno;
		} else {
			return 0;
		}
	}
	if (!t->setting_line)
		t->setting_line = p->lineno;
	return 1;
}

static void server_key(struct parser *p, const char *name, const char *value)
{
	cli_config *cfg = p->cfg;
	if (set_num(p, server_keys, sizeof(server_keys) / sizeof(server_keys[0]), &cfg->http, name, value))
		return;
	if (strcmp(name, "listen") == 0) {
		char err[200];
		keel__listen l;
		if (cfg->nlisten == KEEL__LISTENS_MAX) {
			perr(p, p->lineno, "listen: more than %d addresses", KEEL__LISTENS_MAX);
			return;
		}
		unsigned http;
		if (cli_listen_parse(value, &l, &http, err, sizeof(err)) < 0) {
			perr(p, p->lineno, "listen: %s", err);
			return;
		}
		for (int i = 0; i < cfg->nlisten; i++)
			if (strcmp(cfg->listen[i].addr, l.addr) == 0) {
				perr(p, p->lineno, "listen: %s is already on line %d", l.addr,
				     cfg->listen_line[i]);
				free((char *)l.addr);
				return;
			}
		cfg->listen_line[cfg->nlisten] = p->lineno;
		cfg->listen_http[cfg->nlisten] = http;
		cfg->listen[cfg->nlisten++] = l;
	} else if (strcmp(name, "workers") == 0) {
		uint64_t v;
		if (parse_u64(value, false, &v) < 0 || v < 1 || v > 1024)
			perr(p, p->lineno, "workers: '%s' is not a number in [1, 1024]", value);
		else
			cfg->workers = (int)v;
	} else if (strcmp(name, "grace_ms") == 0) {
		uint64_t v;
		if (parse_u64(value, false, &v) < 0 || v > 3600000)
			perr(p, p->lineno, "grace_ms: '%s' is not a number in [0, 3600000]", value);
		else
			cfg->grace_ms = v;
	} else if (strcmp(name, "stop_delay_ms") == 0) {
		uint64_t v;
		if (parse_u64(value, false, &v) < 0 || v > 3600000)
			perr(p, p->lineno, "stop_delay_ms: '%s' is not a number in [0, 3600000]", value);
		else
			cfg->stop_delay_ms = v;
	} else if (strcmp(name, "server_name") == 0) {
		if (!printable(value)) {
			perr(p, p->lineno, "server_name: only visible ASCII characters and spaces");
			return;
		}
		if (set_str(p, &cfg->server_name, value, true))
			cfg->http.server_name = cfg->server_name;
	} else if (strcmp(name, "access_log") == 0) {
		if (set_path(p, &cfg->access_log, value))
			cfg->access_log_line = p->lineno;
	} else if (strcmp(name, "http2") == 0) {
		if (strcmp(value, "on") == 0 || strcmp(value, "off") == 0)
			cli_config_http2(cfg, value[1] == 'n');
		else
			perr(p, p->lineno, "http2: '%s' is not on or off", value);
	} else if (strcmp(name, "real_ip_from") == 0) {
		struct keel__cidr c[KEEL__CIDRS_MAX];
		const char *bad = value;
		int n = keel__cidrs_parse(value, c, KEEL__CIDRS_MAX, &bad);
		if (n <= 0) {
			int len = (int)strcspn(bad, " ,\t");
			if (n == -E2BIG)
				perr(p, p->lineno, "real_ip_from: more than %d entries", KEEL__CIDRS_MAX);
			else
				perr(p, p->lineno, "real_ip_from: '%.*s' is not an address or ADDR/BITS",
				     len ? len : 1, n == 0 ? "" : bad);
		} else if (set_str(p, &cfg->real_ip_from, value, false)) {
			cfg->http.real_ip_from = cfg->real_ip_from;
			cfg->real_ip_line = p->lineno;
		}
	} else if (strcmp(name, "real_ip_header") == 0) {
		if (strcasecmp(value, "X-Forwarded-For") == 0)
			cfg->http.real_ip_header = KEEL_HTTP_REAL_IP_XFF;
		else if (strcasecmp(value, "Forwarded") == 0)
			cfg->http.real_ip_header = KEEL_HTTP_REAL_IP_FORWARDED;
		else if (strcmp(value, "off") == 0)
			cfg->http.real_ip_header = KEEL_HTTP_REAL_IP_NONE;
		else
			perr(p, p->lineno, "real_ip_header: '%s' is not X-Forwarded-For, Forwarded or off",
			     value);
	} else if (strncmp(name, "tls_", 4) != 0 || !server_tls_key(p, name, value)) {
		unknown_key(p, name, "[server]");
	}
}

/*
 * [upstream]'s tls_* keys. 1: handled (or an error recorded), 0: not one of
 * them. Files are only named here; cli_config_check loads them.
 */
static int upstream_tls_key(struct parser *p, struct cli_upstream_tls *t, const char *name, const char *value)
{
	int line = p->lineno;
	if (strcmp(name, "tls_ca") == 0) {
		if (set_path(p, &t->ca, value))
			t->ca_line = line;
	} else if (strcmp(name, "tls_cert") == 0) {
		if (set_path(p, &t->cert, value))
			t->cert_line = line;
	} else if (strcmp(name, "tls_key") == 0) {
		if (set_path(p, &t->key, value))
			t->key_line = line;
	} else if (strcmp(name, "tls_name") == 0) {
		if (!*value || !printable(value) || strchr(value, ' ')) {
			perr(p, line, "tls_name: '%s' is not a host name", value);
			return 1;
		}
		if (set_str(p, &t->name, value, false))
			t->name_line = line;
	} else if (strcmp(name, "tls_verify") == 0) {
		if (strcmp(value, "on") == 0)
			t->verify = true;
		else if (strcmp(value, "off") == 0)
			t->verify = false;
		else
			perr(p, line, "tls_verify: '%s' is not on or off", value);
	} else {
		return 0;
	}
	if (!t->setting_line)
		t->setting_line = line;
	return 1;
}

static void upstream_key(struct parser *p, const char *name, const char *value)
{
	struct cli_upstream *up = &p->cfg->ups[p->cur];
	if (set_num(p, upstream_keys, sizeof(upstream_keys) / sizeof(upstream_keys[0]), &up->proxy, name,
	            value))
		return;
	if (strcmp(name, "server") == 0) {
		char msg[256];
		if (cli_upstream_add_server(up, value, p->lineno, msg, sizeof(msg)) < 0)
			perr(p, p->lineno, "server: %s", msg);
	} else if (strncmp(name, "tls_", 4) == 0 && upstream_tls_key(p, &up->tls, name, value)) {
	} else if (strcmp(name, "balance") == 0) {
		if (strcmp(value, "round_robin") == 0)
			up->proxy.balance = KEEL_PROXY_ROUND_ROBIN;
		else if (strcmp(value, "least_conn") == 0)
			up->proxy.balance = KEEL_PROXY_LEAST_CONN;
		else
			perr(p, p->lineno, "balance: '%s' is not round_robin or least_conn", value);
	} else if (strcmp(name, "underscore_headers") == 0) {
		if (strcmp(value, "drop") == 0)
			up->proxy.underscores = KEEL_PROXY_UNDERSCORES_DROP;
		else if (strcmp(value, "pass") == 0)
			up->proxy.underscores = KEEL_PROXY_UNDERSCORES_PASS;
		else if (strcmp(value, "reject") == 0)
			up->proxy.underscores = KEEL_PROXY_UNDERSCORES_REJECT;
		else
			perr(p, p->lineno, "underscore_headers: '%s' is not drop, pass or reject", value);
	} else if (strcmp(name, "health_path") == 0) {
		if (!route_path_ok(value)) {
			perr(p, p->lineno, "health_path: '%s' is not a path (it starts with '/', no spaces)",
			     value);
			return;
		}
		if (set_str(p, &up->health_path, value, false))
			up->proxy.health_path = up->health_path;
	} else if (strcmp(name, "upgrade") == 0) {
		for (const char *c = value; *c; c++) {
			if (!(isalnum((unsigned char)*c) || strchr("!#$%&'*+-.^_`|~, ", *c))) {
				perr(p, p->lineno,
				     "upgrade: '%s' is not a list of protocol names (\"websocket\", "
				     "\"websocket, foo\"; empty: none)",
				     value);
				return;
			}
		}
		if (set_str(p, &up->upgrade, value, false))
			up->proxy.upgrade = up->upgrade;
	} else if (strcmp(name, "via") == 0) {
		if (!printable(value) || strchr(value, ',')) {
			perr(p, p->lineno, "via: only visible ASCII characters and spaces, no ','");
			return;
		}
		if (set_str(p, &up->via, value, true))
			up->proxy.via = up->via;
	} else {
		char where[NAME_MAX_LEN + 16];
		snprintf(where, sizeof(where), "[upstream %s]", up->name);
		unknown_key(p, name, where);
	}
}

static const char *kind_key(enum cli_route_kind k)
{
	switch (k) {
	case CLI_ROUTE_STATIC: return "static";
	case CLI_ROUTE_UPSTREAM: return "upstream";
	case CLI_ROUTE_HANDLER: return "handler";
	default: return "?";
	}
}

static void route_key(struct parser *p, const char *name, const char *value)
{
	struct cli_route *r = &p->cfg->routes[p->cur];
	enum cli_route_kind kind = CLI_ROUTE_NONE;
	if (strcmp(name, "static") == 0)
		kind = CLI_ROUTE_STATIC;
	else if (strcmp(name, "upstream") == 0)
		kind = CLI_ROUTE_UPSTREAM;
	else if (strcmp(name, "handler") == 0)
		kind = CLI_ROUTE_HANDLER;
	if (kind != CLI_ROUTE_NONE) {
		if (r->kind != CLI_ROUTE_NONE) {
			perr(p, p->lineno,
			     "[route %s] already has a target ('%s' at line %d): one of static, "
			     "upstream, handler",
			     r->path, kind_key(r->kind), r->target_line);
			return;
		}
		if (!*value) {
			perr(p, p->lineno, "%s: a value is needed", name);
			return;
		}
	}
	switch (kind) {
	case CLI_ROUTE_STATIC:
		r->dir = path_from_file(p, value);
		if (!r->dir) {
			perr(p, p->lineno, "out of memory");
			return;
		}
		break;
	case CLI_ROUTE_UPSTREAM:
		if (!group_name_ok(value)) {
			perr(p, p->lineno, "upstream: '%s' is not a group name", value);
			return;
		}
		if (!set_str(p, &r->group, value, false))
			return;
		break;
	case CLI_ROUTE_HANDLER:
		if (strcmp(value, "status") == 0)
			r->handler = CLI_HANDLER_STATUS;
		else if (strcmp(value, "live") == 0)
			r->handler = CLI_HANDLER_LIVE;
		else if (strcmp(value, "ready") == 0)
			r->handler = CLI_HANDLER_READY;
		else if (strcmp(value, "dashboard") == 0)
			r->handler = CLI_HANDLER_DASHBOARD;
		else
			perr(p, p->lineno,
			     "handler: unknown handler '%s' (built in: status, live, ready, dashboard)",
			     value);
		break;
	case CLI_ROUTE_NONE:
		if (strcmp(name, "match") == 0) {
			if (strcmp(value, "prefix") == 0)
				r->exact = false;
			else if (strcmp(value, "exact") == 0)
				r->exact = true;
			else
				perr(p, p->lineno, "match: '%s' is not prefix or exact", value);
		} else {
			char where[64];
			snprintf(where, sizeof(where), "[route %.48s]", r->path);
			unknown_key(p, name, where);
		}
		return;
	}
	r->kind = kind;
	r->target_line = p->lineno;
}

/* libinih's handler: nonzero to go on, 0 marks the line as an error (recorded in p). */
static int on_key(void *user, const char *section, const char *name, const char *value)
{
	struct parser *p = user;
	(void)section; /* ours (section_begin) is the same, uncut */
	if (!*name) {
		perr(p, p->lineno, "a key is missing before '='");
		return 0;
	}
	if (p->sec == SEC_BAD)
		return 1; /* the header has been reported */
	if (p->sec == SEC_NONE) {
		perr(p, p->lineno, "'%s' is outside any section ([server], [upstream NAME] or [route PATH])",
		     name);
		return 0;
	}
	bool had_err = p->has_err;
	bool repeats =
	    (p->sec == SEC_UPSTREAM && strcmp(name, "server") == 0) ||
	    (p->sec == SEC_SERVER &&
	     (strcmp(name, "tls_cert") == 0 || strcmp(name, "tls_key") == 0 || strcmp(name, "listen") == 0));
	if (!repeats && !key_first(p, name))
		return 0;
	switch (p->sec) {
	case SEC_SERVER: server_key(p, name, value); break;
	case SEC_UPSTREAM: upstream_key(p, name, value); break;
	case SEC_ROUTE: route_key(p, name, value); break;
	default: break;
	}
	return !(p->has_err && !had_err);
}

/*
 * libinih's reader: one line per call (so libinih's line count is ours),
 * without its indentation; headers are taken here. A line that does not fit
 * libinih's buffer (num, 200 bytes on Debian) is an error, not split.
 */
static char *read_line(char *str, int num, void *stream)
{
	struct parser *p = stream;
	errno = 0;
	ssize_t n = getline(&p->buf, &p->cap, p->f);
	if (n < 0) {
		if (ferror(p->f))
			p->read_err = errno ? errno : EIO;
		return NULL;
	}
	p->lineno++;
	char *s = p->buf;
	if (p->lineno == 1 && n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) {
		s += 3; /* a UTF-8 byte order mark */
		n -= 3;
	}
	if (memchr(s, '\0', (size_t)n)) {
		perr(p, p->lineno, "a NUL byte in the line");
		str[0] = '\0';
		return str;
	}
	while (n > 0 && isspace((unsigned char)s[n - 1]))
		s[--n] = '\0';
	while (isspace((unsigned char)*s)) {
		s++;
		n--;
	}
	if (n + 1 > num) {
		perr(p, p->lineno, "line too long (at most %d characters, indentation aside)", num - 1);
		str[0] = '\0';
		return str;
	}
	memcpy(str, s, (size_t)n + 1);
	if (s[0] == '[')
		section_begin(p, s);
	return str;
}

int cli_config_load(cli_config *cfg, const char *file)
{
	struct parser p = {.cfg = cfg, .file = file};
	cfg->file = strdup(file);
	if (!cfg->file)
		return check_fail(cfg, 0, "out of memory");
	p.f = fopen(file, "re");
	if (!p.f) {
		report(file, 0, strerror(errno));
		return CLI_FAIL;
	}
	if (strchr(file, '/')) {
		p.dir = dir_of(file);
		if (!p.dir) {
			fclose(p.f);
			return check_fail(cfg, 0, "out of memory");
		}
	}
	int rc = ini_parse_stream(read_line, &p, on_key, &p);
	fclose(p.f);
	free(p.buf);
	free(p.dir);
	if (p.read_err) {
		report(file, 0, strerror(p.read_err));
		return CLI_FAIL;
	}
	if (rc > 0 && (!p.has_err || rc < p.err_line)) {
		/* libinih's own complaint: a line that is no header, key or comment. */
		report(file, rc, "expected '[section]', 'key = value' or a comment");
		return CLI_FAIL;
	}
	if (rc < 0 && !p.has_err) {
		report(file, 0, "out of memory");
		return CLI_FAIL;
	}
	if (p.has_err) {
		report(file, p.err_line, p.err);
		return CLI_FAIL;
	}
	return cli_config_check(cfg);
}

/* ---- TLS ------------------------------------------------------------------- */

/* Whether msg starts with path and a ':', as keel_tls_ctx_new names a file it blames. */
static bool names_file(const char *msg, const char *path)
{
	size_t n = strlen(path);
	return strncmp(msg, path, n) == 0 && msg[n] == ':';
}

/* How a message names the key: as the file spells it, or as keel proxy's flag. */
static const char *pair_key(const cli_config *cfg, bool key)
{
	if (cfg->file)
		return key ? "tls_key" : "tls_cert";
	return key ? "--tls-key" : "--tls-cert";
}

/*
 * A file keel_tls_ctx_new will read, opened first as static roots are: a
 * missing one is then blamed on its own line, in words ("No such file or
 * directory") rather than in OpenSSL's ("system lib").
 */
static int tls_file_check(const cli_config *cfg, const char *key, const char *path, int line)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return check_fail(cfg, line, "%s: %s: %s", key, path, strerror(errno));
	close(fd);
	return 0;
}

void cli_config_http2(cli_config *cfg, bool on)
{
	cfg->http.http2 = on;
	cfg->tls.cfg.alpn = on ? "h2,http/1.1" : NULL; /* (ALPN offers h2 only where it is spoken) */
}

/* t's first n pairs and settings as a keel_tls_config; its strings point into t and certs. */
static keel_tls_config tls_config(const struct cli_tls *t, keel_tls_cert *certs, unsigned n)
{
	keel_tls_config c = t->cfg;
	for (unsigned i = 0; i < n; i++) {
		certs[i].cert_file = t->certs[i];
		certs[i].key_file = t->keys[i];
	}
	c.certs = certs;
	c.ncerts = n;
	c.protocols = t->protocols;
	c.ciphers = t->ciphers;
	c.ca_file = t->client_ca;
	c.ocsp_file = t->ocsp;
	return c;
}

/*
 * keel_tls_ctx_new failed with msg: report it at the line of the key it is
 * about. Its messages start with the key's name (tls_protocols:,
 * tls_ciphers:) or with the file they blame. A pair's files may belong to
 * more than one pair (one key for two certificates), so the pair is found by
 * loading the pairs again, a growing prefix at a time: the first prefix that
 * fails ends with it. At most KEEL_TLS_CERTS_MAX loads, on failure only.
 */
static int tls_fail(const cli_config *cfg, const char *msg)
{
	const struct cli_tls *t = &cfg->tls;
	if (strncmp(msg, "tls_protocols:", strlen("tls_protocols:")) == 0)
		return check_fail(cfg, t->protocols_line, "%s", msg);
	if (strncmp(msg, "tls_ciphers:", strlen("tls_ciphers:")) == 0)
		return check_fail(cfg, t->ciphers_line, "%s", msg);
	if (t->client_ca && names_file(msg, t->client_ca))
		return check_fail(cfg, t->client_ca_line, "tls_client_ca: %s", msg);
	if (t->ocsp && names_file(msg, t->ocsp))
		return check_fail(cfg, t->ocsp_line, "tls_ocsp: %s", msg);
	unsigned bad = t->ncerts - 1;
	for (unsigned n = 1; n < t->ncerts; n++) {
		keel_tls_cert certs[KEEL_TLS_CERTS_MAX];
		keel_tls_config c = tls_config(t, certs, n);
		c.ocsp_file = NULL; /* read after every pair: not what failed */
		keel_tls_ctx *ctx;
		char scratch[512]; /* (an error buffer also clears OpenSSL's error queue) */
		if (keel_tls_ctx_new(&ctx, &c, scratch, sizeof(scratch)) < 0) {
			bad = n - 1;
			break;
		}
		keel_tls_ctx_free(ctx);
	}
	return check_fail(cfg, t->cert_lines[bad], "%s: %s", pair_key(cfg, false), msg);
}

/*
 * The TLS keys as a whole: pairs complete, no settings without a pair, and
 * the context made -- every certificate, chain and key read and matched
 * here, in the main thread, before any worker starts.
 */
static int tls_check(cli_config *cfg)
{
	struct cli_tls *t = &cfg->tls;
	keel_tls_ctx_free(t->ctx);
	t->ctx = NULL;
	if (t->ncerts != t->nkeys) {
		bool cert = t->ncerts > t->nkeys;
		unsigned i = cert ? t->nkeys : t->ncerts; /* the first without its partner */
		return check_fail(cfg, cert ? t->cert_lines[i] : t->key_lines[i],
		                  "%s without its %s (%u tls_cert, %u tls_key: the i-th tls_key goes with "
		                  "the i-th tls_cert)",
		                  cert ? "tls_cert" : "tls_key", cert ? "tls_key" : "tls_cert", t->ncerts,
		                  t->nkeys);
	}
	if (!t->ncerts)
		return t->setting_line ? check_fail(cfg, t->setting_line,
		                                    "tls_* settings need a certificate: tls_cert and tls_key")
		                       : 0;
	for (unsigned i = 0; i < t->ncerts; i++)
		if (tls_file_check(cfg, pair_key(cfg, false), t->certs[i], t->cert_lines[i]) ||
		    tls_file_check(cfg, pair_key(cfg, true), t->keys[i], t->key_lines[i]))
			return CLI_FAIL;
	if ((t->client_ca && tls_file_check(cfg, "tls_client_ca", t->client_ca, t->client_ca_line)) ||
	    (t->ocsp && tls_file_check(cfg, "tls_ocsp", t->ocsp, t->ocsp_line)))
		return CLI_FAIL;
	keel_tls_cert certs[KEEL_TLS_CERTS_MAX];
	keel_tls_config c = tls_config(t, certs, t->ncerts);
	char err[512];
	if (keel_tls_ctx_new(&t->ctx, &c, err, sizeof(err)) < 0)
		return tls_fail(cfg, err);
	const char *file; /* borrowed from the context */
	int days = keel_tls_ctx_expiry_days(t->ctx, &file);
	if (days < 0) {
		unsigned i = 0;
		while (i < t->ncerts - 1 && strcmp(t->certs[i], file) != 0)
			i++;
		int rc = check_fail(cfg, t->cert_lines[i], "%s: %s has expired", pair_key(cfg, false), file);
		keel_tls_ctx_free(t->ctx);
		t->ctx = NULL;
		return rc;
	}
	if (days < CLI_TLS_EXPIRY_WARN_DAYS) {
		char msg[512];
		if (days == 0)
			snprintf(msg, sizeof(msg), "warning: certificate %s expires within a day", file);
		else
			snprintf(msg, sizeof(msg), "warning: certificate %s expires in %d day%s", file, days,
			         days == 1 ? "" : "s");
		report(cfg->file, 0, msg);
	}
	return 0;
}

/*
 * An https:// group's client context: a CA file that loads (or the system
 * store), a client certificate with its key. tls_* keys in a plain group
 * are refused: they would silently do nothing.
 */
static int upstream_tls_check(const cli_config *cfg, struct cli_upstream *up)
{
	struct cli_upstream_tls *t = &up->tls;
	keel_tls_ctx_free(t->ctx);
	t->ctx = NULL;
	const char *ca_key = cfg->file ? "tls_ca" : "--tls-ca";
	if (!t->on && t->setting_line && !cfg->file)
		return check_fail(cfg, 0, "--tls-ca is for https:// upstreams, and there is none");
	if (!t->on)
		return t->setting_line
		           ? check_fail(cfg, t->setting_line,
		                        "tls_* keys need https:// servers in [upstream %s]", up->name)
		           : 0;
	if (!t->cert != !t->key)
		return t->cert ? check_fail(cfg, t->cert_line, "tls_cert without its tls_key")
		               : check_fail(cfg, t->key_line, "tls_key without its tls_cert");
	if ((t->ca && tls_file_check(cfg, ca_key, t->ca, t->ca_line)) ||
	    (t->cert && tls_file_check(cfg, "tls_cert", t->cert, t->cert_line)) ||
	    (t->key && tls_file_check(cfg, "tls_key", t->key, t->key_line)))
		return CLI_FAIL;
	keel_tls_config c;
	keel_tls_config_default(&c);
	c.client = true;
	c.ca_file = t->ca;
	c.verify = t->verify;
	c.name = t->name;
	keel_tls_cert pair = {t->cert, t->key};
	if (t->cert) {
		c.certs = &pair;
		c.ncerts = 1;
	}
	char err[512];
	if (keel_tls_ctx_new(&t->ctx, &c, err, sizeof(err)) < 0) {
		int line = t->ca && names_file(err, t->ca) ? t->ca_line : t->cert ? t->cert_line : t->ca_line;
		return check_fail(cfg, line ? line : up->line, "[upstream %s]: %s", up->name, err);
	}
	return 0;
}

/* ---- The whole ------------------------------------------------------------- */

int cli_config_check(cli_config *cfg)
{
	if (!cfg->nlisten)
		return cfg->server_line ? check_fail(cfg, cfg->server_line,
		                                     "[server] has no listen address (listen = ADDR:PORT)")
		                        : check_fail(cfg, 0, "no [server] section with a listen address");
	if (cfg->http.real_ip_header && !cfg->real_ip_from)
		return check_fail(cfg, cfg->server_line,
		                  "real_ip_header needs real_ip_from: the sources trusted to set it");
	if (!cfg->nroutes)
		return check_fail(cfg, 0, "no [route PATH] section: nothing to serve");
	for (unsigned i = 0; i < cfg->nups; i++)
		if (!cfg->ups[i].nservers)
			return check_fail(cfg, cfg->ups[i].line,
			                  "[upstream %s] has no server (server = HOST:PORT)",
			                  cfg->ups[i].name);
	for (unsigned i = 0; i < cfg->nroutes; i++) {
		struct cli_route *r = &cfg->routes[i];
		for (unsigned j = 0; j < i; j++)
			if (cfg->routes[j].exact == r->exact && strcmp(cfg->routes[j].path, r->path) == 0)
				return check_fail(cfg, r->line,
				                  "a second [route %s] (the first is at line %d)", r->path,
				                  cfg->routes[j].line);
		switch (r->kind) {
		case CLI_ROUTE_NONE:
			return check_fail(cfg, r->line,
			                  "[route %s] has no target (static, upstream or handler)", r->path);
		case CLI_ROUTE_UPSTREAM: {
			unsigned k = 0;
			while (k < cfg->nups && strcmp(cfg->ups[k].name, r->group) != 0)
				k++;
			if (k == cfg->nups)
				return check_fail(cfg, r->target_line, "upstream: no [upstream %s] section",
				                  r->group);
			r->upstream = k;
			break;
		}
		case CLI_ROUTE_STATIC: {
			/* What keel_static_new will do on each worker, so -t sees what a run would.
			 */
			int fd = open(r->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
			if (fd < 0)
				return check_fail(cfg, r->target_line, "static: %s: %s", r->dir,
				                  strerror(errno));
			close(fd);
			break;
		}
		case CLI_ROUTE_HANDLER: break;
		}
	}
	if (cfg->access_log) {
		struct stat sb;
		char *dir = dir_of(cfg->access_log);
		if (!dir)
			return check_fail(cfg, cfg->access_log_line, "out of memory");
		int err = stat(dir, &sb) < 0 ? errno : S_ISDIR(sb.st_mode) ? 0 : ENOTDIR;
		if (!err && stat(cfg->access_log, &sb) == 0 && S_ISDIR(sb.st_mode))
			err = EISDIR;
		free(dir);
		if (err)
			return check_fail(cfg, cfg->access_log_line, "access_log: %s: %s", cfg->access_log,
			                  strerror(err));
	}
	for (unsigned i = 0; i < cfg->nups; i++)
		if (upstream_tls_check(cfg, &cfg->ups[i]))
			return CLI_FAIL;
	return tls_check(cfg);
}
