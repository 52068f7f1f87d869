/*
 * Running a cli_config (config.h): `keel -c FILE`, `keel -t -c FILE`, and
 * the runner `keel proxy` shares.
 *
 * Each worker thread builds the whole site on its own loop -- one HTTP
 * server, one proxy per upstream group, one static tree per static route,
 * one TLS endpoint when the site is HTTPS and one per https:// upstream
 * group -- so nothing is shared between threads but the TLS contexts, made
 * once before they start (thread-safe).
 * Stopping is serve.c's: stop accepting, let connections finish within
 * grace_ms, then free the server and only after it the proxies, whose
 * upstream connections close through the loop, and the TLS endpoint.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "board.h"
#include "cli.h"
#include "config.h"
#include "keel/proxy.h"
#include "keel/static.h"
#include "keel/tls.h"

struct site_worker {
	keel_http_server *srv;
	keel_proxy **proxies;       /* one per upstream group */
	keel_tls_endpoint **up_tls; /* one per https:// group (its session cache); NULL for plain ones */
	keel_static **statics;      /* one per route; NULL for routes that are not static */
	keel_tls_endpoint *tls;     /* NULL: plain HTTP */
	board_worker board;         /* the dashboard's sampler, when a route shows it */
	bool stopping;
	char label[24]; /* the worker's number, for /_keel/status */
};

static void site_stopped(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	keel_loop_stop(ud);
}

static void site_stop(keel_loop *loop, void *arg)
{
	const cli_config *cfg = arg;
	struct site_worker *w = keel_loop_data(loop);
	if (!w || w->stopping)
		return;
	w->stopping = true;
	board_worker_stop(&w->board, loop); /* (a reload's new worker samples into its slot now) */
	keel_promise_done(keel_http_server_stop(w->srv, cfg->grace_ms), site_stopped, loop);
}

/* /_keel/live: the process answers. */
static keel_promise *site_live(keel_http_request *req, void *ud)
{
	(void)ud;
	static const char body[] = "live\n";
	return keel_http_respond(req, 200, "text/plain", body, sizeof(body) - 1);
}

/* /_keel/ready: 200 while it takes traffic; 503 from SIGTERM on (the stop delay, then the drain). */
static keel_promise *site_ready(keel_http_request *req, void *ud)
{
	(void)ud;
	static const char yes[] = "ready\n", no[] = "stopping\n";
	if (cli_ready())
		return keel_http_respond(req, 200, "text/plain", yes, sizeof(yes) - 1);
	return keel_http_respond(req, 503, "text/plain", no, sizeof(no) - 1);
}

/* Whether cfg has a route of its own for exactly path. */
static bool site_has_route(const cli_config *cfg, const char *path)
{
	for (unsigned i = 0; i < cfg->nroutes; i++)
		if (strcmp(cfg->routes[i].path, path) == 0)
			return true;
	return false;
}

/* Build the routes of cfg on w->srv. 0 or a negative errno (logged). */
static int site_build(keel_loop *loop, struct site_worker *w, const cli_config *cfg)
{
	/* The probes, unless the configuration routes those paths itself. */
	int perr = 0;
	if (!site_has_route(cfg, "/_keel/live"))
		perr = keel_http_route(w->srv, "GET", "/_keel/live", KEEL_HTTP_NO_SHED, site_live, NULL);
	if (!perr && !site_has_route(cfg, "/_keel/ready"))
		perr = keel_http_route(w->srv, "GET", "/_keel/ready", KEEL_HTTP_NO_SHED, site_ready, NULL);
	if (perr < 0) {
		keel_log(KEEL_LOG_ERROR, "/_keel/live, /_keel/ready: %s", keel_strerror(perr));
		return perr;
	}
	for (unsigned i = 0; i < cfg->nups; i++) {
		const struct cli_upstream *up = &cfg->ups[i];
		keel_proxy_config pcfg = up->proxy;
		pcfg.upstreams = (const char *const *)up->servers;
		pcfg.nupstreams = up->nservers;
		int err = 0;
		if (up->tls.ctx && (err = keel_tls_endpoint_new(&w->up_tls[i], up->tls.ctx, loop)) < 0) {
			keel_log(KEEL_LOG_ERROR, "upstream %s: cannot set up TLS: %s", up->name,
			         keel_strerror(err));
			return err;
		}
		if (w->up_tls[i]) {
			pcfg.client.transport_init = keel_tls_client_transport;
			pcfg.client.transport_ud = w->up_tls[i];
		}
		err = keel_proxy_new(&w->proxies[i], loop, &pcfg);
		if (err < 0) {
			keel_log(KEEL_LOG_ERROR, "upstream %s: cannot set up its proxy: %s", up->name,
			         keel_strerror(err));
			return err;
		}
		/* Its counters on the status page, if there is one. */
		err = keel_http_status_add(w->srv, "upstream", up->name, keel_proxy_metrics, w->proxies[i]);
		if (!err && w->up_tls[i]) /* (its handshakes, resumptions and failures) */
			err =
			    keel_http_status_add(w->srv, "upstream", up->name, cli_tls_metrics, w->up_tls[i]);
		if (err < 0)
			keel_log(KEEL_LOG_WARN, "upstream %s: not on the status page: %s", up->name,
			         keel_strerror(err));
	}
	for (unsigned i = 0; i < cfg->nroutes; i++) {
		const struct cli_route *r = &cfg->routes[i];
		unsigned flags = r->exact ? 0 : KEEL_HTTP_PREFIX;
		int err = 0;
		switch (r->kind) {
		case CLI_ROUTE_STATIC:
			err = keel_static_new(&w->statics[i], r->dir);
			if (err < 0) {
				keel_log(KEEL_LOG_ERROR, "route %s: static %s: %s", r->path, r->dir,
				         keel_strerror(err));
				return err;
			}
			err =
			    keel_http_route(w->srv, NULL, r->path, flags, keel_static_handler, w->statics[i]);
			if (!err && keel_http_status_add(w->srv, "route", r->path, keel_static_metrics,
			                                 w->statics[i]) < 0)
				keel_log(KEEL_LOG_WARN, "route %s: its cache is not on the status page",
				         r->path);
			break;
		case CLI_ROUTE_UPSTREAM:
			err = keel_http_route(w->srv, NULL, r->path, flags | KEEL_HTTP_STREAM_BODY,
			                      keel_proxy_handler, w->proxies[r->upstream]);
			break;
		case CLI_ROUTE_HANDLER:
			err = keel_http_route(w->srv, "GET", r->path, flags | KEEL_HTTP_NO_SHED,
			                      r->handler == CLI_HANDLER_LIVE        ? site_live
			                      : r->handler == CLI_HANDLER_READY     ? site_ready
			                      : r->handler == CLI_HANDLER_DASHBOARD ? board_handler
			                                                            : keel_http_status,
			                      w->label);
			break;
		case CLI_ROUTE_NONE: err = -EINVAL; break; /* cli_config_check refuses these */
		}
		if (err < 0) {
			keel_log(KEEL_LOG_ERROR, "route %s: %s", r->path, keel_strerror(err));
			return err;
		}
	}
	return 0;
}

static int site_worker_main(keel_loop *loop, int index, const int *lfds, int nlfds, void *arg)
{
	const cli_config *cfg = arg;
	struct site_worker w = {0};
	int status = CLI_FAIL;
	snprintf(w.label, sizeof(w.label), "%d", index);
	/*
	 * Set before anything can run on this loop: a stop posted while we set
	 * up runs at the first tick below, when w.srv exists.
	 */
	keel_loop_set_data(loop, &w);
	w.proxies = calloc(cfg->nups ? cfg->nups : 1, sizeof(*w.proxies));
	w.up_tls = calloc(cfg->nups ? cfg->nups : 1, sizeof(*w.up_tls));
	w.statics = calloc(cfg->nroutes ? cfg->nroutes : 1, sizeof(*w.statics));
	if (!w.proxies || !w.up_tls || !w.statics) {
		keel_log(KEEL_LOG_ERROR, "worker %d: cannot set up the server: %s", index,
		         keel_strerror(-ENOMEM));
		goto out_free;
	}
	keel_http_config http = cfg->http;
	int err = 0;
	if (cfg->tls.ctx && (err = keel_tls_endpoint_new(&w.tls, cfg->tls.ctx, loop)) < 0) {
		keel_log(KEEL_LOG_ERROR, "worker %d: cannot set up TLS: %s", index, keel_strerror(err));
		goto out_free;
	}
	if (w.tls) {
		http.transport_init = keel_tls_server_init;
		http.transport_ud = w.tls;
	}
	err = keel_http_server_new(&w.srv, loop, &http);
	if (err < 0) {
		keel_log(KEEL_LOG_ERROR, "worker %d: cannot set up the server: %s", index,
		         keel_strerror(err));
		goto out_free;
	}
	/* First, so that upstreams and static routes cannot use up the page's sources before it. */
	if (w.tls && (err = keel_http_status_add(w.srv, NULL, NULL, cli_tls_metrics, w.tls)) < 0)
		keel_log(KEEL_LOG_WARN, "worker %d: TLS counters not on the status page: %s", index,
		         keel_strerror(err));
	if (site_build(loop, &w, cfg) < 0)
		goto out_free;
	err = 0; /* (a page source that could not be added is a warning above) */
	for (int i = 0; i < nlfds && err >= 0; i++)
		err = keel_http_server_listen(w.srv, lfds[i], cfg->listen_http[i]);
	if (err < 0) {
		keel_log(KEEL_LOG_ERROR, "worker %d: cannot start the server: %s", index, keel_strerror(err));
		goto out_free;
	}
	for (unsigned i = 0; i < cfg->nroutes; i++)
		if (cfg->routes[i].kind == CLI_ROUTE_HANDLER &&
		    cfg->routes[i].handler == CLI_HANDLER_DASHBOARD) {
			board_worker_start(&w.board, loop, w.srv, index);
			break;
		}
	keel__worker_serving();
	while (!w.stopping)
		keel_loop_run_once(loop, -1);
	keel_loop_run(loop); /* until the graceful stop has closed every connection */
	status = CLI_OK;
out_free:
	board_worker_stop(&w.board, loop);
	keel_loop_set_data(loop, NULL);
	if (w.srv)
		keel_http_server_free(w.srv);
	bool had_proxy = false;
	for (unsigned i = 0; w.proxies && i < cfg->nups; i++)
		if (w.proxies[i]) {
			keel_proxy_free(w.proxies[i]);
			had_proxy = true;
		}
	if (had_proxy)
		keel_loop_run(loop); /* the upstream connections close and their memory goes */
	for (unsigned i = 0; w.statics && i < cfg->nroutes; i++)
		if (w.statics[i])
			keel_static_free(w.statics[i]);
	keel_tls_endpoint_free(w.tls); /* (after the server: its connections are gone) */
	for (unsigned i = 0; w.up_tls && i < cfg->nups; i++)
		keel_tls_endpoint_free(w.up_tls[i]); /* (after the proxies and their connections) */
	free(w.up_tls);
	free(w.proxies);
	free(w.statics);
	for (int i = 0; i < nlfds; i++)
		close(lfds[i]); /* (its own descriptors: the sockets stay the master's) */
	return status;          /* (a worker that cannot run stops the others: workers.c) */
}

/*
 * What a generation of workers needs besides cfg: the access log open,
 * the listening sockets left to the master (a reload's workers take them
 * over). 0, or CLI_FAIL (printed).
 */
static int site_prepare(cli_config *cfg)
{
	cfg->http.server_name = cfg->server_name;
	cfg->http.listener_keep = true;
	cfg->http.access_log_fd = -1;
	if (cfg->access_log) {
		cfg->http.access_log_fd =
		    open(cfg->access_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (cfg->http.access_log_fd < 0) {
			keel_log(KEEL_LOG_ERROR, "access_log %s: %s", cfg->access_log, strerror(errno));
			return CLI_FAIL;
		}
	}
	return 0;
}

static void site_unprepare(cli_config *cfg)
{
	if (cfg->http.access_log_fd >= 0) {
		close(cfg->http.access_log_fd);
		cfg->http.access_log_fd = -1;
	}
}

static void site_gen(cli_config *cfg, keel__gen *g)
{
	*g = (keel__gen){
	    .arg = cfg,
	    .listen = cfg->listen,
	    .nlisten = cfg->nlisten,
	    .workers = cfg->workers,
	    .stop_delay_ms = cfg->stop_delay_ms,
	};
}

/* What the master's hooks share: the file to read again, and the caller's configuration. */
struct site_run {
	const char *file;
	cli_config *first;
};

/* SIGHUP: the file read and checked again; the errors are printed as keel -t prints them. */
static int site_reload(void *ud, keel__gen *g)
{
	const struct site_run *run = ud;
	const char *file = run->file;
	if (!file) { /* keel proxy: built from flags */
		keel_log(KEEL_LOG_WARN, "SIGHUP: nothing to reload (no configuration file)");
		return -ENOENT;
	}
	cli_config *cfg = malloc(sizeof(*cfg));
	if (!cfg)
		return -ENOMEM;
	cli_config_init(cfg);
	if (cli_config_load(cfg, file) != 0 || site_prepare(cfg) != 0) {
		cli_config_fini(cfg);
		free(cfg);
		return -EINVAL;
	}
	site_gen(cfg, g);
	return 0;
}

/* A configuration a reload replaced, once its workers have drained. */
static void site_release(void *ud, void *arg)
{
	const struct site_run *run = ud;
	cli_config *cfg = arg;
	site_unprepare(cfg);
	if (cfg == run->first)
		return; /* (the caller's) */
	cli_config_fini(cfg);
	free(cfg);
}

/* SIGUSR1: the access log opened again, in place (cli_reopen_log). */
static void site_reopen(void *ud, void *arg)
{
	(void)ud;
	cli_config *cfg = arg;
	cli_reopen_log(cfg->access_log, cfg->http.access_log_fd);
}

int cli_config_run(cli_config *cfg, const char *what)
{
	if (site_prepare(cfg) != 0)
		return CLI_FAIL;
	struct site_run run = {cfg->file, cfg};
	keel__master m = {
	    .what = what,
	    .main_fn = site_worker_main,
	    .stop_fn = site_stop,
	    .ud = &run,
	    .reload = site_reload,
	    .release = site_release,
	    .reopen = site_reopen,
	};
	site_gen(cfg, &m.gen);
	int rc = cli_run_master(&m);
	site_unprepare(cfg);
	return rc;
}

/* ---- keel -c FILE [-t] ----------------------------------------------------- */

static void site_usage(FILE *f)
{
	fputs("usage: keel -c FILE        run the site FILE describes\n"
	      "       keel -t -c FILE     check FILE and exit: 0 and \"keel: FILE: ok\", or\n"
	      "                           1 and \"FILE:LINE: problem\" on stderr\n"
	      "  -c, --config FILE   the configuration (INI: keel.conf.example, docs/config.md)\n"
	      "  -t, --test          check only: syntax, values, static roots, addresses,\n"
	      "                      TLS certificates and keys (a warning if one expires\n"
	      "                      within 14 days)\n",
	      f);
}

int cli_site(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"config", required_argument, NULL, 'c'},
	    {"test", no_argument, NULL, 't'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *file = NULL;
	bool test = false;
	int c;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":c:th", opts, NULL)) != -1) {
		switch (c) {
		case 'c': file = optarg; break;
		case 't': test = true; break;
		case 'h': site_usage(stdout); return CLI_OK;
		case ':':
			fprintf(stderr, "keel: %s needs a value\n", argv[optind - 1]);
			site_usage(stderr);
			return CLI_USAGE;
		default:
			fprintf(stderr, "keel: unknown option '%s'\n", argv[optind - 1]);
			site_usage(stderr);
			return CLI_USAGE;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "keel: unexpected argument '%s'\n", argv[optind]);
		site_usage(stderr);
		return CLI_USAGE;
	}
	if (!file) {
		fprintf(stderr, "keel: -t needs -c FILE\n");
		site_usage(stderr);
		return CLI_USAGE;
	}
	cli_config cfg;
	cli_config_init(&cfg);
	int rc = cli_config_load(&cfg, file);
	if (rc == 0 && test)
		printf("keel: %s: ok\n", file);
	else if (rc == 0) {
		char what[300];
		snprintf(what, sizeof(what), "config%s %s", cfg.tls.ctx ? " (https)" : "", file);
		rc = cli_config_run(&cfg, what);
	}
	cli_config_fini(&cfg);
	return rc;
}
