/*
 * The keel command line: one function per subcommand.
 */
#ifndef KEEL_CLI_H
#define KEEL_CLI_H

#include "keel/http.h"
#include "keel/keel.h"
#include "net/workers.h"

/* Exit statuses: 0 ok, 1 runtime failure, 2 usage error. */
enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

int cli_echo(int argc, char **argv);
int cli_serve(int argc, char **argv);
int cli_load(int argc, char **argv);
int cli_proxy(int argc, char **argv);
/* keel -c FILE [-t]: argv[0] is "keel", the options follow (site.c). */
int cli_site(int argc, char **argv);

/* Shared worker plumbing (workers.c). */
typedef struct cli_workers cli_workers;
typedef int (*cli_worker_main)(keel_loop *loop, int index, const int *lfds, int nlfds, void *arg);
typedef void (*cli_worker_stop)(keel_loop *loop, void *ud);

/*
 * Start n worker threads, each with its own loop, on listening sockets for
 * addr (one SO_REUSEPORT socket per worker, or those systemd or an upgrade
 * passed); run until SIGINT/SIGTERM, then ask every worker to stop
 * gracefully (stop) and wait for them. SIGUSR2 upgrades the binary.
 * Returns a CLI exit status.
 */
int cli_run_workers(const char *what, const char *addr, int n, cli_worker_main main_fn,
                    cli_worker_stop stop_fn, void *arg);
/*
 * Run m (src/net/workers.h) with what every keel command has: the sockets
 * passed in the environment (LISTEN_FDS: systemd, or the keel this one
 * upgrades), readiness (sd_notify, cli_ready) and the binary to start on
 * SIGUSR2. Returns a CLI exit status.
 */
int cli_run_master(keel__master *m);
/* main's argv, kept for SIGUSR2 (with the binary's path, read now). */
void cli_set_argv(char **argv);
/*
 * SIGUSR1: the log at path opened again, in place: the new file takes fd's
 * number (dup3), so each worker's next write -- a whole batch of lines --
 * goes to it, and none is lost or split. Logged when it cannot.
 */
void cli_reopen_log(const char *path, int fd);
/* Ready for traffic: serving, and no SIGTERM yet (/_keel/ready). */
bool cli_ready(void);

/* Parse a positive integer option; exits with usage status on junk. */
long cli_parse_long(const char *opt, const char *s, long min, long max);

/* A TLS endpoint's counters for the status page (tls.c): keel_http_status_add(srv, NULL, NULL, cli_tls_metrics, ep). */
unsigned cli_tls_metrics(void *ep, keel_http_metric *out, unsigned max);

#endif
