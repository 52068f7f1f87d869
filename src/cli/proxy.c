/*
 * keel proxy: a reverse proxy from the command line. The flags build the
 * configuration a file would -- one [upstream default] group and one
 * [route /] to it, plus /_keel/status with --status, tls_cert/tls_key
 * pairs with --tls-cert/--tls-key, and the group's tls_ca with --tls-ca --
 * and the same runner (site.c) runs it.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "config.h"

static void proxy_usage(FILE *f)
{
	fputs("usage: keel proxy [--listen ADDR:PORT] --upstream [https://]HOST:PORT [--upstream ...]\n"
	      "                  [options]\n"
	      "  --listen ADDR:PORT    default 127.0.0.1:8080\n"
	      "  --upstream [https://]HOST:PORT\n"
	      "                        a server to forward to (an IP or a name; repeat); https://:\n"
	      "                        over TLS, its certificate and name verified\n"
	      "  --workers N           worker threads (default: online CPUs)\n"
	      "  --balance MODE        round_robin (default) or least_conn\n"
	      "  --status              serve live counters at /_keel/status (each worker its own)\n"
	      "  --http2               clients may speak HTTP/2 (TLS: by ALPN; plain: prior knowledge)\n"
	      "  --tls-cert FILE       listen for HTTPS with this certificate (PEM, chain after the leaf)\n"
	      "  --tls-key FILE        and this key; repeat both for more (ECDSA and RSA, other names)\n"
	      "  --tls-ca FILE         verify https:// upstreams against these CAs (PEM), not the\n"
	      "                        system store\n"
	      "Every other setting: a configuration file (keel -c FILE, docs/config.md).\n",
	      f);
}

int cli_proxy(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"listen", required_argument, NULL, 'l'},
	    {"upstream", required_argument, NULL, 'u'},
	    {"workers", required_argument, NULL, 'w'},
	    {"balance", required_argument, NULL, 'b'},
	    {"status", no_argument, NULL, 's'},
	    {"tls-cert", required_argument, NULL, 'C'},
	    {"tls-key", required_argument, NULL, 'K'},
	    {"tls-ca", required_argument, NULL, 'A'},
	    {"http2", no_argument, NULL, '2'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	cli_config cfg;
	cli_config_init(&cfg);
	int rc = CLI_USAGE;
	const char *listen = "127.0.0.1:8080";
	bool status = false;
	struct cli_upstream *up = cli_config_add_upstream(&cfg, "default", 0);
	if (!up) {
		fprintf(stderr, "keel proxy: out of memory\n");
		rc = CLI_FAIL;
		goto out;
	}
	int c;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":l:u:w:h", opts, NULL)) != -1) {
		switch (c) {
		case 'l': listen = optarg; break;
		case 'u': {
			char msg[256];
			if (cli_upstream_add_server(up, optarg, 0, msg, sizeof(msg)) < 0) {
				fprintf(stderr, "keel proxy: --upstream: %s\n", msg);
				goto out;
			}
			break;
		}
		case 'A':
			free(up->tls.ca);
			if (!(up->tls.ca = strdup(optarg))) {
				fprintf(stderr, "keel proxy: out of memory\n");
				rc = CLI_FAIL;
				goto out;
			}
			up->tls.setting_line = -1; /* (set: refused without https:// upstreams) */
			break;
		case 'w': cfg.workers = (int)cli_parse_long("--workers", optarg, 1, 1024); break;
		case 'b':
			if (strcmp(optarg, "round_robin") == 0)
				up->proxy.balance = KEEL_PROXY_ROUND_ROBIN;
			else if (strcmp(optarg, "least_conn") == 0)
				up->proxy.balance = KEEL_PROXY_LEAST_CONN;
			else {
				fprintf(stderr,
				        "keel proxy: --balance: '%s' is not round_robin or "
				        "least_conn\n",
				        optarg);
				goto out;
			}
			break;
		case 's': status = true; break;
		case '2': cli_config_http2(&cfg, true); break;
		case 'C':
		case 'K': {
			int err = cli_tls_add(&cfg.tls, c == 'K', optarg, 0);
			if (err == -E2BIG) {
				fprintf(stderr, "keel proxy: at most %d --tls-cert/--tls-key pairs\n",
				        KEEL_TLS_CERTS_MAX);
				goto out;
			}
			if (err < 0) {
				fprintf(stderr, "keel proxy: out of memory\n");
				rc = CLI_FAIL;
				goto out;
			}
			break;
		}
		case 'h':
			proxy_usage(stdout);
			rc = CLI_OK;
			goto out;
		case ':':
			fprintf(stderr, "keel proxy: %s needs a value\n", argv[optind - 1]);
			proxy_usage(stderr);
			goto out;
		default:
			fprintf(stderr, "keel proxy: unknown option '%s'\n", argv[optind - 1]);
			proxy_usage(stderr);
			goto out;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "keel proxy: unexpected argument '%s'\n", argv[optind]);
		proxy_usage(stderr);
		goto out;
	}
	if (!up->nservers) {
		fprintf(stderr, "keel proxy: at least one --upstream [https://]HOST:PORT is needed\n");
		proxy_usage(stderr);
		goto out;
	}
	char why[200];
	if (cli_listen_parse(listen, &cfg.listen[0], &cfg.listen_http[0], why, sizeof(why)) < 0) {
		fprintf(stderr, "keel proxy: --listen: %s\n", why);
		goto out;
	}
	cfg.nlisten = 1;
	if (cfg.tls.ncerts != cfg.tls.nkeys) {
		fprintf(stderr,
		        "keel proxy: each --tls-cert needs its --tls-key (%u certificates, %u keys)\n",
		        cfg.tls.ncerts, cfg.tls.nkeys);
		proxy_usage(stderr);
		goto out;
	}
	rc = CLI_FAIL;
	struct cli_route *r = cli_config_add_route(&cfg, "/", 0);
	if (!r || !(r->group = strdup("default"))) {
		fprintf(stderr, "keel proxy: out of memory\n");
		goto out;
	}
	r->kind = CLI_ROUTE_UPSTREAM;
	if (status) {
		r = cli_config_add_route(&cfg, "/_keel/status", 0);
		if (!r) {
			fprintf(stderr, "keel proxy: out of memory\n");
			goto out;
		}
		r->exact = true;
		r->kind = CLI_ROUTE_HANDLER;
		r->handler = CLI_HANDLER_STATUS;
	}
	if (cli_config_check(&cfg) != 0)
		goto out;
	char what[128];
	snprintf(what, sizeof(what), "proxy%s to %u%s upstream%s", cfg.tls.ctx ? " (https)" : "",
	         up->nservers, up->tls.on ? " https" : "", up->nservers == 1 ? "" : "s");
	rc = cli_config_run(&cfg, what);
out:
	cli_config_fini(&cfg);
	return rc;
}
