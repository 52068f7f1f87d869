/*
 * keel's site configuration: what `keel -c FILE` runs and what `keel proxy`
 * builds from its flags. One listen address, the HTTP server's limits, named
 * groups of upstream servers, and routes from a path (prefix or exact) to
 * static files, an upstream group or a built-in handler.
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

enum cli_route_kind { CLI_ROUTE_NONE, CLI_ROUTE_STATIC, CLI_ROUTE_UPSTREAM, CLI_ROUTE_HANDLER };

enum cli_handler { CLI_HANDLER_STATUS };

/* Limits on what a configuration may hold (a limit on everything). */
enum { CLI_ROUTES_MAX = 1024, CLI_UPSTREAMS_MAX = 256, CLI_SERVERS_MAX = 256 };

struct cli_upstream {
	char *name;
	int line;       /* of its [upstream NAME] header; 0 when built from flags */
	char **servers; /* "HOST:PORT", numeric */
	unsigned nservers;
	char *health_path; /* owned copies of the strings proxy points at once */
	char *via;         /* set by their keys */
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

typedef struct cli_config {
	char *file;      /* for messages ("FILE:LINE: ..."); NULL when built from flags */
	char *listen;    /* ADDR:PORT, numeric */
	int server_line; /* of [server]; 0 if there is none */
	int listen_line;
	int workers;           /* threads; default: online CPUs */
	uint64_t grace_ms;     /* on SIGINT/SIGTERM, time for connections to finish; 5000 */
	keel_http_config http; /* server_name points at server_name below; access_log_fd is
	                          opened by cli_config_run */
	char *server_name;     /* NULL: no Server header */
	char *access_log;      /* NULL: off */
	int access_log_line;
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
 * Append a group / a route / a server; the strings are copied. NULL or
 * -ENOMEM / -E2BIG (past the CLI_*_MAX limits). Pointers returned stay
 * valid until the next append of the same kind.
 */
struct cli_upstream *cli_config_add_upstream(cli_config *cfg, const char *name, int line);
struct cli_route *cli_config_add_route(cli_config *cfg, const char *path, int line);
int cli_upstream_add_server(struct cli_upstream *up, const char *addr);

/*
 * The checks that need the whole configuration: a listen address that
 * parses, at least one route, every route with a target, every group a route
 * names defined and with servers, static roots that are directories, an
 * access log that can be created. Prints the first problem to stderr and
 * returns CLI_FAIL, or returns 0.
 */
int cli_config_check(cli_config *cfg);

/*
 * Run cfg (checked) on cfg->workers threads until SIGINT/SIGTERM, then stop
 * gracefully. what names the site in the "listening on" line. Returns a CLI
 * exit status.
 */
int cli_config_run(cli_config *cfg, const char *what);

/* Parse a "HOST:PORT" an upstream can be reached at (numeric, port not 0). */
bool cli_upstream_addr_ok(const char *addr);

#endif
