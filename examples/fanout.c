/*
 * fanout: a small REST service that calls two upstream services at once and
 * combines their JSON (keel_all), or hedges one call over two replicas and
 * takes the first good answer (keel_any), on keel's HTTP server and client.
 *
 *   usage: build/examples/fanout [--listen ADDR:PORT] [--timeout-ms N] [--workers N]
 *                                [--price ADDR:PORT --info ADDR:PORT
 *                                 --replica ADDR:PORT --replica ADDR:PORT]
 *          (default 127.0.0.1:8090, --timeout-ms 1000 per upstream call, 1 worker)
 *
 *   GET /quote?sym=X  GET /price?sym=X on --price and GET /info?sym=X on --info,
 *                     concurrently; 200 {"sym":"X","price":..,"name":"..","currency":".."}
 *   GET /fast?sym=X   GET /price?sym=X on both replicas; the first success answers
 *                     200 {"sym":"X","price":..,"replica":0|1} and the other request is
 *                     cancelled, down to its socket
 *
 * Errors are JSON too: a bad sym (missing, or not [A-Za-z0-9.]{1,16}) is 400; an
 * upstream that answers non-2xx or JSON without the expected fields, or that cannot be
 * reached, is 502 {"error":"..","upstream":"price"}; one that takes longer than
 * --timeout-ms is 504 {"error":"upstream timed out","upstream":"info"}; /fast fails only
 * when both replicas do (502, or 504 if both timed out). See docs/fanout.md.
 *
 * Without the upstream flags it is a self-contained demo: the services of
 * examples/fanout_svc.c run on the same loop, price on 127.0.0.1:8091, info on
 * 8092, and a slow price replica (50 ms) on 8093; the replicas are 8091 and 8093.
 *
 * Each request's state, strings and answer live in its context's arena, freed in one
 * step after the response is sent and the last cancelled call has let go. keel_http_main
 * runs the workers: each thread has its own loop, listener (SO_REUSEPORT) and client
 * connection pools; SIGINT/SIGTERM stop it gracefully. docs/guide.md is the same service
 * in one screen, without JSON parsing or per-call error reports.
 */
#include <cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "keel/http.h"
#include "keel/http_client.h"
#include "keel/keel.h"

/* The upstream services and the symbol parsing, shared with build/examples/fanout_svc. */
#define FANOUT_SVC_EMBEDDED
#include "fanout_svc.c"

/* Read-only once the workers start. */
static struct {
	const char *price, *info, *replica[2];
	uint64_t timeout_ms;
	bool demo;
} opt = {.timeout_ms = 1000};

/* The demo's upstreams (fanout_svc's handlers), started on every worker's loop. */
static const struct {
	const char *addr;
	struct svc_conf conf;
} demo_ups[] = {
    {"127.0.0.1:8091", {"price", 0, false}},
    {"127.0.0.1:8092", {"info", 0, false}},
    {"127.0.0.1:8093", {"price", 50, false}},
};
#define DEMO_UPS (sizeof(demo_ups) / sizeof(demo_ups[0]))

/* A worker's own: its client's connection pools, and the demo's upstreams. */
struct worker {
	keel_loop *loop;
	keel_http_client *client;
	keel_http_server *ups[DEMO_UPS];
	int up_lfd[DEMO_UPS];
};

/* ---- One upstream call ------------------------------------------------------ */

enum want { WANT_PRICE, WANT_INFO };

struct call {
	struct fan *f;
	const char *name;            /* for errors: "price", "info", "replica 0" */
	enum want want;              /* the fields the answer must have */
	keel_http_client_request rq; /* its strings are in the arena: valid until it settles */
	cJSON *doc;                  /* the upstream's answer, deleted with the context */
	const char *answer_why;      /* what was wrong with the upstream's answer, if it came */
	int err;                     /* why the call failed; 0 while it has not */
	const char *why;             /* the same in words, for the error answer */
};

/* A request to the front service. Lives in the request's context arena. */
struct fan {
	keel_http_request *req; /* valid while the handler's promise is pending */
	char sym[SYM_MAX + 1];
	struct call calls[2];
	struct call *failed; /* the call whose failure decided keel_all */
	int winner;          /* keel_any's */
};

static void fan_free(void *ud)
{
	struct fan *f = ud;
	for (int i = 0; i < 2; i++)
		cJSON_Delete(f->calls[i].doc);
}

/*
 * The upstream's answer, straight from the client: a 2xx with the JSON
 * fields this call wants, or a failure. It runs before keel_timeout on
 * purpose: a combinator that has already decided drops the outcome of an
 * input that settles later, and the response is memory we must free, so it
 * is turned into c->doc (freed with the context) before anything can drop it.
 */
static keel_outcome call_parse(keel_ctx *ctx, keel_outcome in, void *ud)
{
	struct call *c = ud;
	if (in.err)
		return in;
	keel_http_client_response *resp = in.ptr;
	int status = resp->status;
	if (status >= 200 && status <= 299)
		c->doc = cJSON_ParseWithLength(resp->body.ptr, resp->body.len);
	keel_http_client_response_free(resp);
	if (status < 200 || status > 299) {
		/* (ctx is the request's: call_start bound it, and it outlives every call.) */
		char *why = keel_ctx_alloc(ctx, 48);
		if (why)
			snprintf(why, 48, "upstream answered %d", status);
		c->answer_why = why ? why : "upstream answered an error";
		return keel_fail(-EPROTO);
	}
	bool ok = c->want == WANT_PRICE
	              ? cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(c->doc, "price"))
	              : cJSON_IsString(cJSON_GetObjectItemCaseSensitive(c->doc, "name")) &&
	                    cJSON_IsString(cJSON_GetObjectItemCaseSensitive(c->doc, "currency"));
	if (!ok) {
		c->answer_why = "upstream sent bad JSON";
		return keel_fail(-EBADMSG);
	}
	return keel_ok(0, c);
}

/* The call's outcome after its deadline: record why it failed, for the error answer. */
static keel_outcome call_done(keel_ctx *ctx, keel_outcome in, void *ud)
{
	struct call *c = ud;
	if (!in.err)
		return in;
	c->err = in.err;
	if (in.err == -ETIMEDOUT) {
		c->why = "upstream timed out";
	} else if (in.err == KEEL_ECONNTIMEDOUT) {
		c->why = "upstream timed out (connecting)"; /* the client's connect_timeout_ms */
	} else if (c->answer_why) {
		c->why = c->answer_why;
	} else {
		char *why = keel_ctx_alloc(ctx, 96);
		if (why)
			snprintf(why, 96, "upstream connection failed: %s", keel_strerror(in.err));
		c->why = why ? why : "upstream connection failed";
	}
	/* A call cancelled because the other one already decided is not the cause. */
	if (in.err != -ECANCELED && !c->f->failed)
		c->f->failed = c;
	return in;
}

/* GET path?sym=<f->sym> on upstream, bounded by --timeout-ms. */
static keel_promise *call_start(struct worker *w, keel_ctx *ctx, struct call *c, const char *upstream,
                                const char *path)
{
	size_t n = strlen(path) + sizeof("?sym=") + SYM_MAX;
	char *target = keel_ctx_alloc(ctx, n);
	if (!target)
		return NULL;
	snprintf(target, n, "%s?sym=%s", path, c->f->sym); /* sym was checked: URL-safe as it is */
	c->rq.upstream = upstream;
	c->rq.target = target;
	keel_promise *p = keel_promise_bind_ctx(keel_http_client_request_send(w->client, &c->rq), ctx);
	p = keel_then(p, call_parse, c);
	/* At the deadline keel_timeout cancels the request: the client aborts it, socket too. */
	return keel_then(keel_timeout(p, opt.timeout_ms), call_done, c);
}

/* ---- Answers ---------------------------------------------------------------- */

/* Print obj (and delete it) into the request's arena as the response body. */
static keel_outcome answer_json(struct fan *f, int status, cJSON *obj)
{
	keel_http_request *req = f->req;
	char *s = obj ? cJSON_PrintUnformatted(obj) : NULL;
	cJSON_Delete(obj);
	size_t n = s ? strlen(s) : 0;
	char *body = s ? keel_ctx_alloc(keel_http_request_ctx(req), n + 1) : NULL;
	if (body) {
		memcpy(body, s, n);
		body[n] = '\n';
	}
	cJSON_free(s);
	if (!body)
		return keel_fail(-ENOMEM); /* the server answers 500 */
	req->resp.status = status;
	req->resp.content_type = "application/json";
	req->resp.body.ptr = body;
	req->resp.body.len = n + 1;
	return keel_ok(0, &req->resp);
}

static keel_outcome answer_error(struct fan *f, int status, const char *why, const char *upstream)
{
	cJSON *o = cJSON_CreateObject();
	bool ok = o && cJSON_AddStringToObject(o, "error", why);
	if (ok && upstream)
		ok = cJSON_AddStringToObject(o, "upstream", upstream);
	if (!ok) {
		cJSON_Delete(o);
		o = NULL;
	}
	return answer_json(f, status, o);
}

/* The status a failed call maps to. */
static int call_status(const struct call *c)
{
	if (c->err == -ETIMEDOUT || c->err == KEEL_ECONNTIMEDOUT)
		return 504;
	if (c->err == KEEL_ELIMIT)
		return 503; /* our own queue for that upstream is full: try again later */
	return 502;
}

/* Move field name from src into dst; false on ENOMEM. */
static bool take(cJSON *dst, cJSON *src, const char *name)
{
	cJSON *item = cJSON_DetachItemFromObjectCaseSensitive(src, name);
	if (item && !cJSON_AddItemToObject(dst, name, item)) {
		cJSON_Delete(item);
		return false;
	}
	return item != NULL;
}

static keel_outcome quote_done(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	struct fan *f = ud;
	if (in.err == -ECANCELED)
		return in; /* the client left: nobody to answer */
	if (in.err && f->failed)
		return answer_error(f, call_status(f->failed), f->failed->why, f->failed->name);
	if (in.err)
		return in;
	cJSON *o = cJSON_CreateObject();
	bool ok = o && cJSON_AddStringToObject(o, "sym", f->sym) && take(o, f->calls[0].doc, "price") &&
	          take(o, f->calls[1].doc, "name") && take(o, f->calls[1].doc, "currency");
	if (!ok) {
		cJSON_Delete(o);
		return keel_fail(-ENOMEM);
	}
	return answer_json(f, 200, o);
}

static keel_outcome fast_done(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	struct fan *f = ud;
	if (in.err == -ECANCELED)
		return in;
	if (in.err) {
		/* Both replicas failed: 504 if both timed out (503: both queues full), else 502. */
		struct call *a = &f->calls[0], *b = &f->calls[1];
		if (!a->err || !b->err)
			return in;
		int status = call_status(a) == call_status(b) ? call_status(a) : 502;
		cJSON *o = cJSON_CreateObject(), *errs = NULL;
		bool ok = o && cJSON_AddStringToObject(o, "error", "every replica failed") &&
		          cJSON_AddStringToObject(o, "upstream", "replicas") &&
		          (errs = cJSON_AddArrayToObject(o, "errors"));
		for (int i = 0; ok && i < 2; i++) {
			cJSON *e = cJSON_CreateObject();
			if (!e || !cJSON_AddItemToArray(errs, e)) {
				cJSON_Delete(e);
				ok = false;
				break;
			}
			ok = cJSON_AddStringToObject(e, "error", f->calls[i].why) &&
			     cJSON_AddStringToObject(e, "upstream", f->calls[i].name);
		}
		if (!ok) {
			cJSON_Delete(o);
			return keel_fail(-ENOMEM);
		}
		return answer_json(f, status, o);
	}
	struct call *c = in.ptr;
	cJSON *o = cJSON_CreateObject();
	bool ok = o && cJSON_AddStringToObject(o, "sym", f->sym) && take(o, c->doc, "price") &&
	          cJSON_AddNumberToObject(o, "replica", f->winner);
	if (!ok) {
		cJSON_Delete(o);
		return keel_fail(-ENOMEM);
	}
	return answer_json(f, 200, o);
}

/* ---- Routes ------------------------------------------------------------------ */

/* The request's state in its arena, sym parsed; or NULL, and *p is the answer (400, 500). */
static struct fan *fan_new(keel_http_request *req, keel_promise **p)
{
	keel_ctx *ctx = keel_http_request_ctx(req);
	struct fan *f = ctx ? keel_ctx_alloc(ctx, sizeof(*f)) : NULL;
	if (!f) {
		*p = keel_http_respond(req, 500, "text/plain", "out of memory\n", 14);
		return NULL;
	}
	memset(f, 0, sizeof(*f));
	f->req = req;
	for (int i = 0; i < 2; i++)
		f->calls[i].f = f;
	if (keel_ctx_on_free(ctx, fan_free, f) < 0) {
		*p = keel_http_respond(req, 500, "text/plain", "out of memory\n", 14);
		return NULL;
	}
	int err = query_sym(req->query, f->sym);
	if (err) {
		*p = keel_promise_new(req->loop);
		keel_promise_settle(
		    *p,
		    answer_error(f, 400, err == -ENOENT ? "missing sym" : "bad sym: want [A-Za-z0-9.]{1,16}",
		                 NULL));
		return NULL;
	}
	return f;
}

/* One of two calls could not start: cancel the other and say so. */
static keel_promise *calls_abandon(keel_http_request *req, keel_promise *calls[2])
{
	for (int i = 0; i < 2; i++)
		if (calls[i]) {
			keel_promise_cancel(calls[i]);
			keel_promise_release(calls[i]);
		}
	return keel_http_respond(req, 500, "text/plain", "out of memory\n", 14);
}

static keel_promise *route_quote(keel_http_request *req, void *ud)
{
	struct worker *w = ud;
	keel_promise *p;
	struct fan *f = fan_new(req, &p);
	if (!f)
		return p;
	keel_ctx *ctx = keel_http_request_ctx(req);
	f->calls[0].name = "price";
	f->calls[0].want = WANT_PRICE;
	f->calls[1].name = "info";
	f->calls[1].want = WANT_INFO;
	keel_promise *calls[2] = {call_start(w, ctx, &f->calls[0], opt.price, "/price"),
	                          call_start(w, ctx, &f->calls[1], opt.info, "/info")};
	if (!calls[0] || !calls[1])
		return calls_abandon(req, calls);
	/* All: both calls run at once; the first failure decides and cancels the other. */
	return keel_then(keel_all(req->loop, calls, 2, NULL), quote_done, f);
}

static keel_promise *route_fast(keel_http_request *req, void *ud)
{
	struct worker *w = ud;
	keel_promise *p;
	struct fan *f = fan_new(req, &p);
	if (!f)
		return p;
	keel_ctx *ctx = keel_http_request_ctx(req);
	keel_promise *calls[2];
	for (int i = 0; i < 2; i++) {
		f->calls[i].name = i == 0 ? "replica 0" : "replica 1";
		f->calls[i].want = WANT_PRICE;
		calls[i] = call_start(w, ctx, &f->calls[i], opt.replica[i], "/price");
	}
	if (!calls[0] || !calls[1])
		return calls_abandon(req, calls);
	/* Any: the first success answers; the other request is cancelled, down to its socket. */
	return keel_then(keel_any(req->loop, calls, 2, &f->winner), fast_done, f);
}

static keel_promise *route_not_found(keel_http_request *req, void *ud)
{
	(void)ud;
	static const char body[] = "{\"error\":\"not found: try /quote?sym=ACME or /fast?sym=ACME\"}\n";
	return keel_http_respond(req, 404, "application/json", body, sizeof(body) - 1);
}

/* ---- Workers ----------------------------------------------------------------- */

/*
 * keel_http_main runs the workers: one thread, loop, server and listener
 * each, and the graceful stop on SIGINT/SIGTERM. What is ours on each
 * worker is made in worker_setup and let go in worker_teardown.
 */
static void demo_up_stopped(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	struct worker *w = ud;
	for (size_t i = 0; i < DEMO_UPS; i++) {
		keel_http_server_free(w->ups[i]);
		if (w->up_lfd[i] >= 0)
			close(w->up_lfd[i]);
	}
	free(w);
}

static void worker_teardown(keel_http_server *srv, keel_loop *loop, unsigned index, void *ud)
{
	(void)srv;
	(void)index;
	(void)ud;
	struct worker *w = keel_loop_data(loop);
	keel_http_client_free(w->client); /* (its connections close while the loop drains) */
	keel_promise *ps[DEMO_UPS];
	size_t n = 0;
	for (size_t i = 0; i < DEMO_UPS; i++)
		if (w->ups[i])
			ps[n++] = keel_http_server_stop(w->ups[i], 0);
	keel_promise_done(keel_all(loop, ps, n, NULL), demo_up_stopped, w);
}

static int worker_setup(keel_http_server *s, keel_loop *loop, unsigned index, void *ud)
{
	(void)index;
	(void)ud;
	struct worker *w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	for (size_t i = 0; i < DEMO_UPS; i++)
		w->up_lfd[i] = -1;
	w->loop = loop;
	int err = keel_http_client_new(&w->client, loop, NULL);
	for (size_t i = 0; !err && opt.demo && i < DEMO_UPS; i++) {
		w->up_lfd[i] =
		    svc_start(loop, demo_ups[i].addr, KEEL_TCP_REUSEPORT, &demo_ups[i].conf, &w->ups[i]);
		if (w->up_lfd[i] < 0) {
			err = w->up_lfd[i];
			keel_log(KEEL_LOG_ERROR, "demo upstream on %s: %s", demo_ups[i].addr,
			         keel_strerror(err));
		}
	}
	if (!err)
		err = keel_http_route(s, "GET", "/quote", 0, route_quote, w);
	if (!err)
		err = keel_http_route(s, "GET", "/fast", 0, route_fast, w);
	if (!err)
		err = keel_http_route(s, NULL, "/", KEEL_HTTP_PREFIX, route_not_found, NULL);
	if (!err)
		err = keel_http_route(s, "GET", "/_keel/status", KEEL_HTTP_NO_SHED, keel_http_status, NULL);
	keel_loop_set_data(loop, w);
	if (err)
		worker_teardown(s, loop, index,
		                ud); /* (keel_http_main calls it only after a setup that worked) */
	return err;
}

/* How to try the demo. */
static void demo_banner(const char *bound)
{
	fprintf(stderr, "fanout: demo upstreams: price %s, info %s, replicas %s and %s (slow)\n", opt.price,
	        opt.info, opt.replica[0], opt.replica[1]);
	fprintf(stderr, "try:\n");
	fprintf(stderr, "  curl -s 'http://%s/quote?sym=ACME'  # All: price + info\n", bound);
	fprintf(stderr, "  curl -s 'http://%s/fast?sym=ACME'   # Any: fast replica\n", bound);
	fprintf(stderr, "  curl -s 'http://%s/quote?sym=a/b'   # 400: bad symbol\n", bound);
}

static bool addr_ok(const char *s)
{
	return keel_hostport_valid(s); /* an IP or a name (the client looks names up off the loop) */
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {{"listen", required_argument, NULL, 'l'},
	                                     {"price", required_argument, NULL, 'p'},
	                                     {"info", required_argument, NULL, 'i'},
	                                     {"replica", required_argument, NULL, 'r'},
	                                     {"timeout-ms", required_argument, NULL, 't'},
	                                     {"workers", required_argument, NULL, 'w'},
	                                     {"help", no_argument, NULL, 'h'},
	                                     {NULL, 0, NULL, 0}};
	static const char usage[] =
	    "usage: %s [--listen ADDR:PORT] [--timeout-ms N] [--workers N]\n"
	    "          [--price ADDR:PORT --info ADDR:PORT\n"
	    "           --replica ADDR:PORT --replica ADDR:PORT]\n"
	    "  (no upstream flags: a demo, its upstreams in-process on 127.0.0.1:8091..8093)\n";
	const char *listen_addr = "127.0.0.1:8090";
	long nworkers = 1;
	int nreplicas = 0, c;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		char *end = NULL;
		long v = optarg ? strtol(optarg, &end, 10) : 0;
		bool number = optarg && end != optarg && !*end;
		if (c == 'l') {
			listen_addr = optarg;
		} else if (c == 'p' && addr_ok(optarg)) {
			opt.price = optarg;
		} else if (c == 'i' && addr_ok(optarg)) {
			opt.info = optarg;
		} else if (c == 'r' && addr_ok(optarg) && nreplicas < 2) {
			opt.replica[nreplicas++] = optarg;
		} else if (c == 't' && number && v > 0 && v <= 3600000) {
			opt.timeout_ms = (uint64_t)v;
		} else if (c == 'w' && number && v >= 1 && v <= 256) {
			nworkers = v;
		} else {
			if (c != 'h' && optarg)
				fprintf(stderr, "fanout: bad value for an option: %s\n", optarg);
			fprintf(stderr, usage, argv[0]);
			return c == 'h' ? 0 : 2;
		}
	}
	opt.demo = !opt.price && !opt.info && nreplicas == 0;
	if (optind != argc || (!opt.demo && (!opt.price || !opt.info || nreplicas != 2))) {
		fprintf(stderr, "fanout: give all of --price, --info and two --replica, or none\n");
		fprintf(stderr, usage, argv[0]);
		return 2;
	}
	if (opt.demo) {
		opt.price = opt.replica[0] = demo_ups[0].addr;
		opt.info = demo_ups[1].addr;
		opt.replica[1] = demo_ups[2].addr;
	}

	fprintf(stderr, "fanout: upstream calls time out after %llu ms\n",
	        (unsigned long long)opt.timeout_ms);
	if (opt.demo)
		demo_banner(listen_addr);
	keel_http_main_opts mo = {.listen = listen_addr,
	                          .workers = (unsigned)nworkers,
	                          .grace_ms = 2000,
	                          .setup = worker_setup,
	                          .teardown = worker_teardown};
	return keel_http_main(&mo) < 0;
}
