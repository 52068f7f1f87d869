/*
 * keel: the command-line entry point. Dispatches to a subcommand.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"

#define KEEL_VERSION "0.1.0"

static void usage(FILE *f)
{
	fputs(
	    "usage: keel <command> [options]\n"
	    "       keel -c FILE      run the site a configuration file describes (docs/config.md)\n"
	    "       keel -t -c FILE   check that file and exit: \"keel: FILE: ok\" or FILE:LINE: ...\n"
	    "\n"
	    "commands:\n"
	    "  serve [--listen ADDR:PORT] [--workers N] [DIR]  static files over HTTP/1.1\n"
	    "                                                 (default 127.0.0.1:8080, DIR .)\n"
	    "  proxy [--listen ADDR:PORT] --upstream [https://]HOST:PORT [--upstream ...] [--workers N]\n"
	    "        [--balance round_robin|least_conn] [--status] [--tls-cert FILE --tls-key FILE]\n"
	    "                                                 reverse proxy to upstreams\n"
	    "  echo [--listen ADDR:PORT] [--workers N]         TCP echo server (default 127.0.0.1:7000)\n"
	    "  load [-c N] [-d SECONDS] [--rate R] URL         HTTP/1.1 load generator (closed or open loop)\n"
	    "\n"
	    "  keel <command> --help   options of a command\n"
	    "  keel --version\n"
	    "\n"
	    "environment: KEEL_BACKEND=io_uring|epoll, KEEL_SQPOLL=1, KEEL_SEND_ZC=BYTES, KEEL_LOG=0..3\n",
	    f);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return CLI_USAGE;
	}
	const char *cmd = argv[1];
	cli_set_argv(argv);
	if (strcmp(cmd, "echo") == 0)
		return cli_echo(argc - 1, argv + 1);
	if (strcmp(cmd, "serve") == 0)
		return cli_serve(argc - 1, argv + 1);
	if (strcmp(cmd, "load") == 0)
		return cli_load(argc - 1, argv + 1);
	if (strcmp(cmd, "proxy") == 0)
		return cli_proxy(argc - 1, argv + 1);
	if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
		usage(stdout);
		return CLI_OK;
	}
	if (strcmp(cmd, "--version") == 0) {
		printf("keel %s\n", KEEL_VERSION);
		return CLI_OK;
	}
	if (cmd[0] == '-') /* -c FILE, -t, --config, --test */
		return cli_site(argc, argv);
	fprintf(stderr, "keel: unknown command '%s'\n", cmd);
	usage(stderr);
	return CLI_USAGE;
}
