/*
 * keel serve: static files over HTTP/1.1.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "board.h"
#include "cli.h"
#include "keel/http.h"
#include "keel/static.h"
#include "keel/tls.h"

struct serve_cfg {
	const char *listen;
	const char *dir;
	int workers;
	long grace_ms;
	bool status;
	const char *access_log; /* --access-log: SIGUSR1 opens it again */
	keel_http_config http;
	keel_tls_config tls;
	keel_tls_cert certs[KEEL_TLS_CERTS_MAX];
	size_t nkeys;
	keel_tls_ctx *tls_ctx; /* NULL: plain HTTP */
};

struct serve_worker {
	keel_http_server *srv;
	keel_static *st;
	keel_tls_endpoint *tls;
	board_worker board; /* --status: the dashboard's sampler */
	bool stopping;
	char label[24];
};

static void serve_stopped(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	keel_loop_stop(ud);
}

/* SIGUSR1: --access-log opened again (logrotate). */
static void serve_reopen(void *ud, void *arg)
{
	(void)ud;
	struct serve_cfg *cfg = arg;
	cli_reopen_log(cfg->access_log, cfg->http.access_log_fd);
}

static void serve_stop(keel_loop *loop, void *arg)
{
	struct serve_cfg *cfg = arg;
	struct serve_worker *w = keel_loop_data(loop);
	if (!w || w->stopping)
		return;
	w->stopping = true;
	board_worker_stop(&w->board, loop);
	keel_promise_done(keel_http_server_stop(w->srv, (uint64_t)cfg->grace_ms), serve_stopped, loop);
}

/*
 * A worker that cannot run returns a failure, which stops the others
 * (workers.c), rather than leave a server answering on fewer threads than
 * it was told.
 */
static int serve_worker_fail(int lfd, const char *what, int err)
{
	keel_log(KEEL_LOG_ERROR, "serve: %s: %s", what, keel_strerror(err));
	close(lfd);
	return CLI_FAIL; /* (the other workers stop: workers.c) */
}

static int serve_worker_main(keel_loop *loop, int index, const int *lfds, int nlfds, void *arg)
{
	int lfd = lfds[0]; /* (one listen address: nlfds is 1) */
	(void)nlfds;
	struct serve_cfg *cfg = arg;
	struct serve_worker w = {0};
	keel_http_config http = cfg->http;
	int err = 0;
	if (cfg->tls_ctx && (err = keel_tls_endpoint_new(&w.tls, cfg->tls_ctx, loop)) < 0)
		return serve_worker_fail(lfd, "cannot set up TLS", err);
	if (w.tls) {
		http.transport_init = keel_tls_server_init;
		http.transport_ud = w.tls;
	}
	err = keel_static_new(&w.st, cfg->dir);
	if (err < 0) {
		keel_tls_endpoint_free(w.tls);
		return serve_worker_fail(lfd, cfg->dir, err);
	}
	err = keel_http_server_new(&w.srv, loop, &http);
	if (err < 0) {
		keel_static_free(w.st);
		keel_tls_endpoint_free(w.tls);
		return serve_worker_fail(lfd, "cannot set up the server", err);
	}
	err = keel_http_route(w.srv, NULL, "/", KEEL_HTTP_PREFIX, keel_static_handler, w.st);
	if (!err && cfg->status) {
		snprintf(w.label, sizeof(w.label), "%d", index);
		err = keel_http_route(w.srv, "GET", "/_keel/status", KEEL_HTTP_NO_SHED, keel_http_status,
		                      w.label);
		if (!err)
			err = keel_http_route(w.srv, "GET", "/_keel/dashboard", KEEL_HTTP_NO_SHED,
			                      board_handler, NULL);
		if (!err)
			err = keel_http_status_add(w.srv, NULL, NULL, keel_static_metrics, w.st);
		if (!err && w.tls)
			err = keel_http_status_add(w.srv, NULL, NULL, cli_tls_metrics, w.tls);
	}
	if (!err)
		err = keel_http_server_start(w.srv, lfd);
	if (err < 0) {
		keel_http_server_free(w.srv); /* (nothing accepted yet: it frees) */
		keel_static_free(w.st);
		keel_tls_endpoint_free(w.tls);
		return serve_worker_fail(lfd, "cannot set up the routes", err);
	}
	if (cfg->status)
		board_worker_start(&w.board, loop, w.srv, index);
	keel__worker_serving();
	keel_loop_set_data(loop, &w);
	while (!w.stopping)
		keel_loop_run_once(loop, -1);
	keel_loop_run(loop); /* until the graceful stop has closed every connection */
	board_worker_stop(&w.board, loop);
	keel_loop_set_data(loop, NULL);
	keel_http_server_free(w.srv);
	keel_static_free(w.st);
	keel_tls_endpoint_free(w.tls); /* (after the server: its connections are gone) */
	close(lfd);
	return CLI_OK;
}

static void serve_usage(FILE *f)
{
	fputs("usage: keel serve [--listen ADDR:PORT] [--workers N] [options] [DIR]\n"
	      "  DIR                   directory to serve (default: the current directory)\n"
	      "  --listen ADDR:PORT    default 127.0.0.1:8080\n"
	      "  --workers N           worker threads (default: online CPUs)\n"
	      "  --max-conns N         connections per worker (default 10000)\n"
	      "  --header-timeout-ms N whole-head deadline (default 10000)\n"
	      "  --idle-timeout-ms N   keep-alive idle deadline (default 60000)\n"
	      "  --grace-ms N          on SIGINT/SIGTERM, time to finish (default 5000)\n"
	      "  --access-log FILE     combined-format access log (default: off)\n"
	      "  --queue-delay-us N    shed (503) requests reached after N us of a loop tick's\n"
	      "                        work (default 20000; 0: off)\n"
	      "  --http2               speak HTTP/2 too: over TLS by ALPN (h2), in plain text to\n"
	      "                        clients that start with its preface (h2c, prior knowledge)\n"
	      "  --status              serve live counters at /_keel/status (each worker its own;\n"
	      "                        ?format=json, ?format=prometheus) and a live dashboard of\n"
	      "                        every worker at /_keel/dashboard\n"
	      "  --tls-cert FILE       serve HTTPS with this certificate (PEM, chain after the leaf);\n"
	      "  --tls-key FILE        and this key; repeat both for more (ECDSA and RSA, other names)\n"
	      "  --tls-protocols LIST  \"TLSv1.2 TLSv1.3\" (default), or one of them\n"
	      "  --tls-ciphers LIST    TLS 1.2 ciphers (default: Mozilla's intermediate list)\n"
	      "  --tls-client-ca FILE  require client certificates signed by FILE (mTLS)\n"
	      "  --tls-ocsp FILE       staple this DER OCSP response\n"
	      "  --tls-handshakes-max N  concurrent handshakes per worker (default 256; over: closed)\n"
	      "  --tls-handshake-timeout-ms N  (default 10000)\n"
	      "  --tls-no-tickets      no session tickets (resumption)\n"
	      "  --tls-no-ktls         never hand sends to kernel TLS (default: where the kernel has it)\n",
	      f);
}

int cli_serve(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"listen", required_argument, NULL, 'l'},
	    {"workers", required_argument, NULL, 'w'},
	    {"max-conns", required_argument, NULL, 'm'},
	    {"header-timeout-ms", required_argument, NULL, 'H'},
	    {"idle-timeout-ms", required_argument, NULL, 'I'},
	    {"grace-ms", required_argument, NULL, 'g'},
	    {"access-log", required_argument, NULL, 'a'},
	    {"queue-delay-us", required_argument, NULL, 'q'},
	    {"status", no_argument, NULL, 's'},
	    {"http2", no_argument, NULL, '2'},
	    {"tls-cert", required_argument, NULL, 'C'},
	    {"tls-key", required_argument, NULL, 'K'},
	    {"tls-protocols", required_argument, NULL, 'P'},
	    {"tls-ciphers", required_argument, NULL, 'Z'},
	    {"tls-client-ca", required_argument, NULL, 'A'},
	    {"tls-ocsp", required_argument, NULL, 'O'},
	    {"tls-handshakes-max", required_argument, NULL, 'X'},
	    {"tls-handshake-timeout-ms", required_argument, NULL, 'T'},
	    {"tls-no-tickets", no_argument, NULL, 'N'},
	    {"tls-no-ktls", no_argument, NULL, 'E'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	struct serve_cfg cfg;
	memset(&cfg, 0, sizeof(cfg));
	cfg.listen = "127.0.0.1:8080";
	cfg.dir = ".";
	cfg.workers = ncpu > 0 ? (int)ncpu : 1;
	cfg.grace_ms = 5000;
	keel_http_config_default(&cfg.http);
	cfg.http.listener_keep = true; /* (the master's sockets: it shuts them, not a worker) */
	keel_tls_config_default(&cfg.tls);
	size_t ncerts = 0;
	const char *access_log = NULL;
	int c;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":l:w:h", opts, NULL)) != -1) {
		switch (c) {
		case 'l': cfg.listen = optarg; break;
		case 'w': cfg.workers = (int)cli_parse_long("--workers", optarg, 1, 1024); break;
		case 'm':
			cfg.http.conns_max = (unsigned)cli_parse_long("--max-conns", optarg, 1, 1000000);
			break;
		case 'H':
			cfg.http.header_timeout_ms =
			    (uint64_t)cli_parse_long("--header-timeout-ms", optarg, 1, 3600000);
			break;
		case 'I':
			cfg.http.idle_timeout_ms =
			    (uint64_t)cli_parse_long("--idle-timeout-ms", optarg, 1, 86400000);
			break;
		case 'g': cfg.grace_ms = cli_parse_long("--grace-ms", optarg, 0, 3600000); break;
		case 'a': access_log = optarg; break;
		case 'q':
			cfg.http.queue_delay_max_us =
			    (uint32_t)cli_parse_long("--queue-delay-us", optarg, 0, 10000000);
			break;
		case 's': cfg.status = true; break;
		case '2': cfg.http.http2 = true; break;
		case 'C':
		case 'K':
			if ((c == 'C' ? ncerts : cfg.nkeys) >= KEEL_TLS_CERTS_MAX) {
				fprintf(stderr, "keel serve: at most %d --tls-cert/--tls-key pairs\n",
				        KEEL_TLS_CERTS_MAX);
				return CLI_USAGE;
			}
			if (c == 'C')
				cfg.certs[ncerts++].cert_file = optarg;
			else
				cfg.certs[cfg.nkeys++].key_file = optarg;
			break;
		case 'P': cfg.tls.protocols = optarg; break;
		case 'Z': cfg.tls.ciphers = optarg; break;
		case 'A': cfg.tls.ca_file = optarg; break;
		case 'O': cfg.tls.ocsp_file = optarg; break;
		case 'X':
			cfg.tls.handshakes_max =
			    (unsigned)cli_parse_long("--tls-handshakes-max", optarg, 1, 1000000);
			break;
		case 'T':
			cfg.tls.handshake_timeout_ms =
			    (uint64_t)cli_parse_long("--tls-handshake-timeout-ms", optarg, 1, 3600000);
			break;
		case 'N': cfg.tls.tickets = false; break;
		case 'E': cfg.tls.ktls = false; break;
		case 'h': serve_usage(stdout); return CLI_OK;
		case ':':
			fprintf(stderr, "keel serve: %s needs a value\n", argv[optind - 1]);
			serve_usage(stderr);
			return CLI_USAGE;
		default:
			fprintf(stderr, "keel serve: unknown option '%s'\n", argv[optind - 1]);
			serve_usage(stderr);
			return CLI_USAGE;
		}
	}
	if (argc - optind > 1) {
		fprintf(stderr, "keel serve: one DIR at most\n");
		serve_usage(stderr);
		return CLI_USAGE;
	}
	if (optind < argc)
		cfg.dir = argv[optind];
	struct stat sb;
	if (stat(cfg.dir, &sb) < 0) {
		fprintf(stderr, "keel serve: %s: %s\n", cfg.dir, strerror(errno));
		return CLI_FAIL;
	}
	if (!S_ISDIR(sb.st_mode)) {
		fprintf(stderr, "keel serve: %s: not a directory\n", cfg.dir);
		return CLI_FAIL;
	}
	struct sockaddr_storage ss;
	socklen_t len;
	if (keel_addr_parse(cfg.listen, &ss, &len) < 0) {
		fprintf(stderr, "keel serve: --listen: bad address '%s' (expected IP:PORT or [IPv6]:PORT)\n",
		        cfg.listen);
		return CLI_USAGE;
	}
	if (ncerts != cfg.nkeys) {
		fprintf(stderr,
		        "keel serve: each --tls-cert needs its --tls-key (%zu certificates, %zu keys)\n",
		        ncerts, cfg.nkeys);
		return CLI_USAGE;
	}
	if (!ncerts && (cfg.tls.protocols || cfg.tls.ciphers || cfg.tls.ca_file || cfg.tls.ocsp_file)) {
		fprintf(stderr, "keel serve: --tls-* options need --tls-cert and --tls-key\n");
		return CLI_USAGE;
	}
	if (ncerts) {
		char err[512];
		cfg.tls.certs = cfg.certs;
		if (cfg.http.http2)
			cfg.tls.alpn = "h2,http/1.1";
		cfg.tls.ncerts = ncerts;
		int terr = keel_tls_ctx_new(&cfg.tls_ctx, &cfg.tls, err, sizeof(err));
		if (terr < 0) {
			fprintf(stderr, "keel serve: TLS: %s\n", err);
			return CLI_FAIL;
		}
	}
	if (access_log) {
		cfg.access_log = access_log;
		cfg.http.access_log_fd = open(access_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (cfg.http.access_log_fd < 0) {
			fprintf(stderr, "keel serve: --access-log %s: %s\n", access_log, strerror(errno));
			return CLI_FAIL;
		}
	}
	char what[300];
	snprintf(what, sizeof(what), "serve%s %s", cfg.tls_ctx ? " (https)" : "", cfg.dir);
	keel__listen at = {.addr = cfg.listen, .perm = {0, (uid_t)-1, (gid_t)-1}};
	keel__master m = {
	    .what = what,
	    .gen = {.arg = &cfg, .listen = &at, .nlisten = 1, .workers = cfg.workers},
	    .main_fn = serve_worker_main,
	    .stop_fn = serve_stop,
	    .reopen = serve_reopen,
	};
	int rc = cli_run_master(&m);
	if (cfg.http.access_log_fd >= 0)
		close(cfg.http.access_log_fd);
	keel_tls_ctx_free(cfg.tls_ctx);
	return rc;
}
