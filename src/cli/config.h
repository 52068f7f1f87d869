/*
 * keel's site configuration: what `keel -c FILE` runs and what `keel proxy`
 * builds from its flags. Listen addresses (plain HTTP or HTTPS), the HTTP
 * server's limits, named groups of upstream servers, and routes from a path
 * (prefix or exact) to static files, an upstream group or a built-in handler.
 *
 * The design idea: a file and the command line build the same in-memory
 * cli_config, and one checker (cli_config_check) and one runner
 * (cli_config_run, site.c) serve both, so a flag and its key cannot drift.
 * Every string in a cli_config is owned by it (freed by cli_config_fini).
 */
#ifndef KEEL_CLI_CONFIG_H
#define KEEL_CLI_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "keel/http.h"
#include "keel/proxy.h"
#include "keel/tls.h"
#include "net/workers.h"

enum cli_route_kind { CLI_ROUTE_NONE, CLI_ROUTE_STATIC, CLI_ROUTE_UPSTREAM, CLI_ROUTE_HANDLER };

enum cli_handler { CLI_HANDLER_STATUS, CLI_HANDLER_LIVE, CLI_HANDLER_READY, CLI_HANDLER_DASHBOARD };

/* Limits on what a configuration may hold (a limit on everything). */
enum { CLI_ROUTES_MAX = 1024, CLI_UPSTREAMS_MAX = 256, CLI_SERVERS_MAX = 256 };

/* A certificate that expires within this many days gets a warning from cli_config_check. */
enum { CLI_TLS_EXPIRY_WARN_DAYS = 14 };

/*
 * HTTPS to an upstream group: its servers are written https://HOST:PORT
 * (all of them: a group speaks one scheme), with [upstream]'s tls_* keys
 * (keel proxy's --tls-ca). The client context is made once, by
 * cli_config_check in the main thread, and every worker makes its
 * keel_tls_endpoint from it (its session cache: resumption across the
 * worker's pooled connections).
 */
struct cli_upstream_tls {
	bool on;          /* https:// servers */
	int scheme_line;  /* of the first server (to blame a mix of schemes on) */
	char *ca;         /* tls_ca; NULL: the system store */
	char *cert, *key; /* tls_cert, tls_key: a client certificate; NULL: none */
	char *name;       /* tls_name: the name to send and verify; NULL: the server's host */
	bool verify;      /* tls_verify; default on */
	int ca_line, cert_line, key_line, name_line;
	int setting_line;  /* of the first tls_* key; 0: none */
	keel_tls_ctx *ctx; /* made by cli_config_check when on */
};

struct cli_upstream {
	char *name;
	int line;       /* of its [upstream NAME] header; 0 when built from flags */
	char **servers; /* "HOST:PORT", numeric or a name, the scheme taken off */
	unsigned nservers;
	struct cli_upstream_tls tls;
	char *health_path; /* owned copies of the strings proxy points at once */
	char *via;         /* set by their keys */
	char *upgrade;
	/* balance, fail_timeout_ms, health_*, client.*; upstreams/nupstreams are
	   filled from servers when a proxy is made (cli_config_run). */
	keel_proxy_config proxy;
};

struct cli_route {
	char *path; /* starts with '/' */
	int line;   /* of its [route PATH] header; 0 when built from flags */
	bool exact; /* match = exact; otherwise a prefix (longest wins) */
	enum cli_route_kind kind;
	int target_line;   /* of the key that set kind */
	char *dir;         /* CLI_ROUTE_STATIC: the root (a relative one joined to the file's directory) */
	char *group;       /* CLI_ROUTE_UPSTREAM: the group's name ... */
	unsigned upstream; /* ... and its index in ups, set by cli_config_check */
	enum cli_handler handler; /* CLI_ROUTE_HANDLER */
};

/*
 * HTTPS on the listener: [server]'s tls_* keys (keel proxy's --tls-cert and
 * --tls-key). The i-th key goes with the i-th certificate. The context is
 * made once, by cli_config_check in the main thread, and every worker makes
 * its keel_tls_endpoint from it.
 */
struct cli_tls {
	char *certs
	    [KEEL_TLS_CERTS_MAX]; /* tls_cert, in order (a relative one joined to the file's directory) */
	char *keys[KEEL_TLS_CERTS_MAX]; /* tls_key, in order */
	int cert_lines[KEEL_TLS_CERTS_MAX];
	int key_lines[KEEL_TLS_CERTS_MAX];
	unsigned ncerts, nkeys;
	char *protocols, *ciphers; /* NULL: keel_tls_config's defaults */
	char *client_ca, *ocsp;    /* NULL: off */
	int protocols_line, ciphers_line, client_ca_line, ocsp_line;
	int setting_line; /* of the first tls_* key other than tls_cert and tls_key; 0: none */
	keel_tls_config
	    cfg;           /* handshakes_max, handshake_timeout_ms, tickets; the rest is set from the above */
	keel_tls_ctx *ctx; /* made by cli_config_check when there are pairs; NULL: plain HTTP */
};

typedef struct cli_config {
	char *file; /* for messages ("FILE:LINE: ..."); NULL when built from flags */
	/* ADDR:PORT (numeric) or unix:/PATH, with options; each addr owned (cli_listen_parse) */
	keel__listen listen[KEEL__LISTENS_MAX];
	unsigned listen_http[KEEL__LISTENS_MAX]; /* KEEL_HTTP_LISTEN_* of each (proxy_protocol) */
	int listen_line[KEEL__LISTENS_MAX];
	char *real_ip_from; /* http.real_ip_from points at it */
	int real_ip_line;
	int nlisten;
	int server_line;        /* of [server]; 0 if there is none */
	int workers;            /* threads; default: online CPUs */
	uint64_t grace_ms;      /* on SIGINT/SIGTERM, time for connections to finish; 5000 */
	uint64_t stop_delay_ms; /* on SIGTERM, time not ready (/_keel/ready 503) but serving before
	                           the stop; 0 */
	keel_http_config http;  /* server_name points at server_name below; access_log_fd is
	                          opened by cli_config_run */
	char *server_name;      /* NULL: no Server header */
	char *access_log;       /* NULL: off */
	int access_log_line;
	struct cli_tls tls;
	struct cli_upstream *ups;
	unsigned nups;
	struct cli_route *routes;
	unsigned nroutes;
} cli_config;

/* Defaults; the lists start empty. */
void cli_config_init(cli_config *cfg);
void cli_config_fini(cli_config *cfg);

/*
 * Read FILE into cfg (initialized by the caller) and check it
 * (cli_config_check). On the first error prints "FILE:LINE: message" (or
 * "keel: FILE: message" when no line applies) to stderr and returns
 * CLI_FAIL; returns 0 when the configuration can be run.
 */
int cli_config_load(cli_config *cfg, const char *file);

/*
 * Append a group / a route; the strings are copied. NULL past the
 * CLI_*_MAX limits or out of memory. Pointers returned stay valid until the
 * next append of the same kind.
 */
struct cli_upstream *cli_config_add_upstream(cli_config *cfg, const char *name, int line);
struct cli_route *cli_config_add_route(cli_config *cfg, const char *path, int line);
/*
 * Append a server, "https://HOST:PORT", "http://HOST:PORT" or "HOST:PORT"
 * (plain), given on line (0 from flags). 0, or -EINVAL (not such an
 * address: the message says what is expected), -EEXIST (already in the
 * group), -EPROTO (a scheme other than the group's first server's), -E2BIG
 * (past CLI_SERVERS_MAX), -ENOMEM; on an error, msg (msglen bytes) says so.
 */
int cli_upstream_add_server(struct cli_upstream *up, const char *value, int line, char *msg, size_t msglen);
/*
 * Append a certificate file (key false) or a key file (key true) to the
 * pairs, with the line it was given on (0 from flags); the path is copied.
 * 0, -E2BIG (past KEEL_TLS_CERTS_MAX) or -ENOMEM.
 */
int cli_tls_add(struct cli_tls *t, bool key, const char *path, int line);

/*
 * The checks that need the whole configuration: a listen address that
 * parses, at least one route, every route with a target, every group a route
 * names defined and with servers, static roots that are directories, an
 * access log that can be created, TLS keys in pairs whose certificates and
 * keys load and match (this makes cfg->tls.ctx; a certificate that expires
 * within CLI_TLS_EXPIRY_WARN_DAYS is a warning on stderr, an expired one an
 * error). Prints the first problem to stderr and returns CLI_FAIL, or
 * returns 0. Called again, it makes the TLS context anew.
 */
int cli_config_check(cli_config *cfg);

/*
 * Run cfg (checked) on cfg->workers threads until SIGINT/SIGTERM, then stop
 * gracefully. what names the site in the "listening on" line ("config
 * (https) FILE": the caller says https when cfg->tls.ctx is set, as keel
 * serve does). Returns a CLI exit status.
 */
int cli_config_run(cli_config *cfg, const char *what);

/* HTTP/2 on or off: the server's protocols and what its TLS listener offers by ALPN. */
void cli_config_http2(cli_config *cfg, bool on);

/*
 * A listen value, "ADDR [proxy_protocol] [ipv6only] [mode=OCTAL]
 * [owner=USER] [group=GROUP]" (the last three for a Unix socket's file),
 * into *out (out->addr allocated: the caller frees it) and *http
 * (KEEL_HTTP_LISTEN_*). 0, or -1 with the reason in err.
 */
int cli_listen_parse(const char *value, keel__listen *out, unsigned *http, char *err, size_t errlen);

#endif
