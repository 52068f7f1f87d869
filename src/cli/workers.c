/*
 * Worker plumbing for the CLI servers: the library's worker threads
 * (src/net/workers.c) with the CLI's exit statuses.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"
#include "net/workers.h"

long cli_parse_long(const char *opt, const char *s, long min, long max)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max) {
		fprintf(stderr, "keel: %s: expected an integer in [%ld, %ld], got '%s'\n", opt, min, max, s);
		exit(CLI_USAGE);
	}
	return v;
}

int cli_run_workers(const char *what, const char *addr, int n, cli_worker_main main_fn,
                    cli_worker_stop stop_fn, void *arg)
{
	int st = keel__workers_run(what, addr, n, main_fn, stop_fn, arg);
	return st < 0 ? CLI_FAIL : st;
}
