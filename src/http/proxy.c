/*
 * The reverse proxy: a handler that passes a request on to one of a group
 * of upstreams through keel's HTTP client and streams the answer back.
 *
 * Per request: the forwarded headers, the strings the client borrows and
 * this file's own record live in the request's context (arena), freed in
 * one step after the response is sent; the upstream response stays
 * attached to its connection until then, its body passed through piece by
 * piece from the receive buffers (the client reads from the upstream only
 * as fast as the server sends to the client).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "http_internal.h"
#include "keel/errors.h"
#include "keel/proxy.h"
#include "keel/tcp.h"
#include "server_internal.h"
#include "tunnel.h"

#define VIA_MAX 64

struct pup {
	char *name;             /* "HOST:PORT" */
	uint64_t down_until_ns; /* skipped until then (passive or active health) */
	unsigned active;        /* requests in flight (least-connections) */
};

struct keel_proxy {
	keel_loop *loop;
	keel_proxy_config cfg;
	keel_http_client *client;
	struct pup *ups;
	unsigned nups, rr;
	char via[VIA_MAX]; /* "1.1 keel" */
	size_t via_len;
	unsigned live; /* requests and health checks still referring to this proxy */
	keel_promise *health_sleep;
	keel_proxy_stats stats;
	struct keel__tunnel_stats tstats;
	bool freeing;
};

/* An upstream's 101, waiting for the client's to go out: then the tunnel starts. */
struct ptun {
	struct keel__upgrade up; /* (first: the server hands this back) */
	keel_proxy *px;
	struct pup *pup; /* counted in its active connections while the tunnel lasts */
	struct keel__tunnel *t;
	struct keel__tunnel_end b; /* the upstream's end */
};

struct preq {
	keel_proxy *px;
	keel_http_request *req;
	keel_ctx *ctx;      /* the request's; held while a call is in flight (pr lives in it) */
	keel_promise *out;  /* the handler's answer */
	keel_promise *call; /* the upstream request in flight */
	keel_http_client_response *ur;
	struct pup *up; /* where it went (counted in up->active) */
	keel_http_client_request q;
	keel_http_header *rh; /* the response headers passed on */
	unsigned tried;       /* attempts so far */
	bool body_started;    /* the request body's reading began: it cannot be sent again */
	bool settled;
	int body_err; /* the client's body failed (bad framing, too long, gone): its fault */
};

static const keel_http_header retry_after = {KEEL_STR_INIT("Retry-After"), KEEL_STR_INIT("1")};

void keel_proxy_config_default(keel_proxy_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->balance = KEEL_PROXY_ROUND_ROBIN;
	cfg->fail_timeout_ms = 10000;
	cfg->health_path = "/";
	cfg->via = "keel";
	cfg->upgrade = "websocket";
	cfg->tunnel_idle_timeout_ms = 300000;
	keel_http_client_config_default(&cfg->client);
	/* a proxy's upstream connection is busy until its client has the answer */
	cfg->client.pool_max = 256;
}

static void health_round(keel_proxy *px);

/* Whether cfg is one keel_proxy_new can run with (its client's part is keel_http_client_new's). */
static bool config_valid(const keel_proxy_config *cfg)
{
	if (!cfg->nupstreams || !cfg->upstreams)
		return false;
	for (unsigned i = 0; i < cfg->nupstreams; i++)
		if (!cfg->upstreams[i] || !keel_hostport_valid(cfg->upstreams[i]))
			return false;
	/* Both go on the wire as they are: the health check's request line, every Via. */
	if (cfg->health_path && (cfg->health_path[0] != '/' || !keel__wire_ok(cfg->health_path, false)))
		return false;
	if (cfg->via && (strlen(cfg->via) > VIA_MAX - sizeof("1.1 ") || !keel__wire_ok(cfg->via, false)))
		return false;
	if (cfg->upgrade) {
		/* A list of tokens: what a request's Upgrade header is matched against. */
		for (const char *c = cfg->upgrade; *c; c++)
			if (!(*c == ',' || *c == ' ' ||
			      (*c > ' ' && *c < 0x7f && !strchr("\"(),/:;<=>?@[\\]{}", *c))))
				return false;
	}
	return (unsigned)cfg->balance <= KEEL_PROXY_LEAST_CONN &&
	       (unsigned)cfg->underscores <= KEEL_PROXY_UNDERSCORES_REJECT;
}

int keel_proxy_new(keel_proxy **out, keel_loop *loop, const keel_proxy_config *cfg)
{
	*out = NULL;
	if (!loop || !cfg || !config_valid(cfg))
		return -EINVAL;
	keel_proxy *px = keel__calloc(1, sizeof(*px));
	if (!px)
		return -ENOMEM;
	px->loop = loop;
	px->cfg = *cfg;
	px->cfg.upstreams = NULL; /* copied below */
	px->cfg.via = NULL;       /* formatted into px->via below */
	int err = keel_http_client_new(&px->client, loop, &cfg->client);
	if (err < 0)
		goto out_free_px;
	err = -ENOMEM;
	px->ups = keel__calloc(cfg->nupstreams, sizeof(*px->ups));
	if (!px->ups)
		goto out_free_client;
	px->nups = cfg->nupstreams;
	for (unsigned i = 0; i < px->nups; i++)
		if (!(px->ups[i].name = strdup(cfg->upstreams[i])))
			goto out_free_ups;
	px->cfg.health_path = strdup(cfg->health_path ? cfg->health_path : "/");
	px->cfg.upgrade = strdup(cfg->upgrade ? cfg->upgrade : "");
	if (!px->cfg.health_path || !px->cfg.upgrade) {
		free((char *)px->cfg.health_path);
		free((char *)px->cfg.upgrade);
		goto out_free_ups;
	}
	if (cfg->via && *cfg->via) /* fits: config_valid */
		px->via_len = (size_t)snprintf(px->via, sizeof(px->via), "1.1 %s", cfg->via);
	if (px->cfg.health_interval_ms)
		health_round(px);
	*out = px;
	return 0;

out_free_ups:
	for (unsigned i = 0; i < px->nups; i++)
		free(px->ups[i].name);
	free(px->ups);
out_free_client:
	keel_http_client_free(px->client); /* no connection yet: freed at once */
out_free_px:
	free(px);
	return err;
}

static void proxy_release(keel_proxy *px)
{
	if (!px->freeing || px->live)
		return;
	for (unsigned i = 0; i < px->nups; i++)
		free(px->ups[i].name);
	free(px->ups);
	free((char *)px->cfg.health_path);
	free((char *)px->cfg.upgrade);
	free(px);
}

void keel_proxy_free(keel_proxy *px)
{
	if (!px)
		return;
	px->freeing = true;
	if (px->health_sleep)
		keel_promise_cancel(px->health_sleep);
	keel_http_client_free(px->client); /* what is in flight ends with -ECANCELED */
	px->client = NULL;
	proxy_release(px);
}

/* ---- Balancing and health -------------------------------------------------- */

static bool up_ok(const keel_proxy *px, const struct pup *u, uint64_t now)
{
	return px->nups == 1 || u->down_until_ns <= now; /* a lone upstream is never skipped */
}

/* The next upstream to try, not `avoid`; NULL when every candidate is down. */
static struct pup *pick(keel_proxy *px, const struct pup *avoid)
{
	uint64_t now = keel_loop_now_ns(px->loop);
	struct pup *best = NULL;
	for (unsigned i = 0; i < px->nups; i++) {
		struct pup *u = &px->ups[(px->rr + i) % px->nups];
		if (u == avoid || !up_ok(px, u, now))
			continue;
		if (px->cfg.balance == KEEL_PROXY_ROUND_ROBIN) {
			best = u;
			break;
		}
		if (!best || u->active < best->active)
			best = u;
	}
	if (best)
		px->rr = (unsigned)(best - px->ups) + 1; /* ties go round */
	return best;
}

static void mark_down(keel_proxy *px, struct pup *u)
{
	if (px->nups > 1)
		u->down_until_ns = keel_loop_now_ns(px->loop) + px->cfg.fail_timeout_ms * 1000000ull;
}

/*
 * Connecting failed: the request never left, whatever its method. A TLS
 * handshake that failed, or a certificate that did not verify, failed
 * before any request byte was encrypted.
 */
static bool connect_error(int err)
{
	return err == -ECONNREFUSED || err == KEEL_ECONNTIMEDOUT || err == -EHOSTUNREACH ||
	       err == -ENETUNREACH || err == -EADDRNOTAVAIL || err == -EAFNOSUPPORT || err == KEEL_ENAME ||
	       err == KEEL_ETLSCERT || err == KEEL_ETLSHS;
}

struct hcheck {
	keel_proxy *px;
	struct pup *up;
};

static void health_answer(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct hcheck *h = ud;
	keel_proxy *px = h->px;
	px->live--;
	if (!px->freeing) {
		keel_http_client_response *r = o.err ? NULL : o.ptr;
		if (r && r->status >= 200 && r->status < 400)
			h->up->down_until_ns = 0;
		else
			mark_down(px, h->up);
	}
	if (!o.err)
		keel_http_client_response_free(o.ptr);
	free(h);
	proxy_release(px);
}

static void health_due(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	keel_proxy *px = ud;
	px->health_sleep = NULL;
	px->live--;
	if (px->freeing || o.err) {
		proxy_release(px);
		return;
	}
	health_round(px);
}

/* One GET of health_path on every upstream, then sleep for the interval. */
static void health_round(keel_proxy *px)
{
	for (unsigned i = 0; i < px->nups; i++) {
		struct hcheck *h = keel__malloc(sizeof(*h));
		if (!h)
			break;
		h->px = px;
		h->up = &px->ups[i];
		keel_http_client_request q = {0};
		q.upstream = px->ups[i].name;
		q.target = px->cfg.health_path;
		px->live++;
		keel_promise_done(keel_http_client_request_send(px->client, &q), health_answer, h);
	}
	px->live++;
	px->health_sleep = keel_sleep(px->loop, px->cfg.health_interval_ms);
	keel_promise_done(px->health_sleep, health_due, px);
}

/* ---- Headers ----------------------------------------------------------------- */

/* Whether a Connection header of m names n (every token, however many: RFC 9110 7.6.1). */
static bool conn_names(const keel_http_msg *m, keel_str n)
{
	for (unsigned i = 0; i < m->nheaders; i++) {
		if (!keel_str_ieq(m->headers[i].name, "connection"))
			continue;
		keel_str list = m->headers[i].value, e;
		while (keel_http_list_next(&list, &e))
			if (keel_str_ieq_str(n, e))
				return true;
	}
	return false;
}

/* Hop-by-hop (RFC 9110 7.6.1): meaningful for one connection only, never passed on. */
static bool hop_by_hop(keel_str n, const keel_http_msg *m, bool has_conn)
{
	switch (n.len ? n.ptr[0] | 0x20 : 0) {
	case 'c':
		if (keel_str_ieq(n, "connection") || keel_str_ieq(n, "content-length"))
			return true;
		break;
	case 'k':
		if (keel_str_ieq(n, "keep-alive"))
			return true;
		break;
	case 'p':
		if (n.len > 6 && keel_str_ieq_str((keel_str){n.ptr, 6}, KEEL_STR("proxy-")))
			return true;
		break;
	case 't':
		if (keel_str_ieq(n, "te") || keel_str_ieq(n, "trailer") ||
		    keel_str_ieq(n, "transfer-encoding"))
			return true;
		break;
	case 'u':
		if (keel_str_ieq(n, "upgrade"))
			return true;
		break;
	default: break;
	}
	return has_conn && conn_names(m, n);
}

/*
 * Whether m asks to switch to a protocol cfg.upgrade lets through: an
 * upgrade (Connection: upgrade and an Upgrade header) with no body (what
 * follows its head is the new protocol's), every token it offers allowed.
 */
static bool upgrade_allowed(const keel_proxy *px, const keel_http_request *req)
{
	const keel_http_msg *m = &req->msg;
	/*
	 * HTTP/1.0's Upgrade is ignored (RFC 9110 7.8); so is one beside
	 * Connection: close, and any while the server stops (a tunnel begun
	 * then would be cut at once).
	 */
	if (!m->upgrade || m->body != KEEL_HTTP_BODY_NONE || !*px->cfg.upgrade || m->version_minor < 1 ||
	    !m->keep_alive || req->server->stopping)
		return false;
	bool any = false;
	for (unsigned i = 0; i < m->nheaders; i++) {
		if (!keel_str_ieq(m->headers[i].name, "upgrade"))
			continue;
		keel_str list = m->headers[i].value, e;
		while (keel_http_list_next(&list, &e)) {
			keel_str allowed = {px->cfg.upgrade, strlen(px->cfg.upgrade)}, a;
			bool ok = false;
			while (!ok && keel_http_list_next(&allowed, &a))
				ok = keel_str_ieq_str(a, e);
			if (!ok)
				return false;
			any = true;
		}
	}
	return any;
}

/* "a, b" + ", " + c into the arena; with no a, c alone. */
static keel_str join(keel_ctx *ctx, keel_str a, const char *c, size_t cl)
{
	if (!a.len)
		return (keel_str){c, cl};
	char *p = keel_ctx_alloc(ctx, a.len + 2 + cl);
	if (!p)
		return (keel_str){NULL, 0};
	memcpy(p, a.ptr, a.len);
	memcpy(p + a.len, ", ", sizeof(", ") - 1);
	memcpy(p + a.len + 2, c, cl);
	return (keel_str){p, a.len + 2 + cl};
}

static char *span_dup(keel_ctx *ctx, keel_str s)
{
	char *p = keel_ctx_alloc(ctx, s.len + 1);
	if (p) {
		memcpy(p, s.ptr, s.len);
		p[s.len] = '\0';
	}
	return p;
}

/*
 * The request as it goes upstream: hop-by-hop headers out; Host kept;
 * X-Forwarded-For appended to, X-Forwarded-Proto set, Via appended to.
 * Returns 0 or a status to answer with.
 */
static int build_request(struct preq *pr, keel_ctx *ctx)
{
	keel_http_request *req = pr->req;
	const keel_http_msg *m = &req->msg;
	keel_proxy *px = pr->px;
	bool has_conn = keel_http_header_find(m, "connection") != NULL;
	bool upgrade = upgrade_allowed(px, req);
	keel_http_header *h = keel_ctx_alloc(ctx, (m->nheaders + 4) * sizeof(*h));
	if (!h)
		return 503;
	unsigned n = 0;
	keel_str xff = {NULL, 0}, via = {NULL, 0};
	bool te_trailers = false;
	for (unsigned i = 0; i < m->nheaders; i++) {
		keel_str name = m->headers[i].name, value = m->headers[i].value;
		if (keel_str_ieq(name, "te") && !te_trailers) {
			keel_str list = value, e;
			while (keel_http_list_next(&list, &e))
				te_trailers = te_trailers || keel_str_ieq(e, "trailers");
		}
		if (upgrade && keel_str_ieq(name, "upgrade")) {
			h[n++] =
			    m->headers[i]; /* the switch asked for, passed on (with Connection: Upgrade) */
			continue;
		}
		if (hop_by_hop(name, m, has_conn) || keel_str_ieq(name, "host") ||
		    keel_str_ieq(name, "expect") || keel_str_ieq(name, "x-forwarded-proto"))
			continue; /* (100-continue is answered here; the scheme is ours to say) */
		if (memchr(name.ptr, '_', name.len)) {
			/*
			 * Transfer_Encoding, Content_Length: an upstream that maps '_'
			 * to '-' (CGI and its heirs do) would see a second framing
			 * header. Dropped by default, as nginx does.
			 */
			if (px->cfg.underscores == KEEL_PROXY_UNDERSCORES_REJECT)
				return 400;
			if (px->cfg.underscores == KEEL_PROXY_UNDERSCORES_DROP)
				continue;
		}
		if (keel_str_ieq(name, "x-forwarded-for")) {
			xff = xff.len ? join(ctx, xff, value.ptr, value.len) : value;
			continue;
		}
		if (keel_str_ieq(name, "via")) {
			via = via.len ? join(ctx, via, value.ptr, value.len) : value;
			continue;
		}
		h[n++] = m->headers[i];
	}
	const char *peer =
	    keel__request_conn_peer(req); /* (the hop it came from: each proxy appends its own) */
	h[n].name = KEEL_STR("X-Forwarded-For");
	h[n++].value = join(ctx, xff, peer, strlen(peer));
	h[n].name = KEEL_STR("X-Forwarded-Proto");
	h[n++].value = keel_http_request_secure(req) ? KEEL_STR("https") : KEEL_STR("http");
	if (px->via_len) {
		h[n].name = KEEL_STR("Via");
		h[n++].value = join(ctx, via, px->via, px->via_len);
	}
	if (te_trailers) {
		/* The client reads trailers, and the upstream's are passed on: it may send them. */
		h[n].name = KEEL_STR("TE");
		h[n++].value = KEEL_STR("trailers");
	}
	for (unsigned i = 0; i < n; i++)
		if (!h[i].value.ptr)
			return 503; /* (a join that found no memory) */
	/*
	 * origin-form, from the target the server parsed once: the normalized
	 * path the route matched, and the query as sent. Host is the server's
	 * view of it too (an absolute-form target's authority replaced it).
	 */
	if (req->path.len == 1 && req->path.ptr[0] == '*')
		return 400; /* OPTIONS *: nothing to pass on */
	keel_http_client_request *q = &pr->q;
	q->method = span_dup(ctx, m->method);
	char *target = keel_ctx_alloc(ctx, req->path.len + 1 + req->query.len + 1);
	if (target) {
		memcpy(target, req->path.ptr, req->path.len);
		size_t tl = req->path.len;
		if (req->query.ptr) {
			target[tl++] = '?';
			memcpy(target + tl, req->query.ptr, req->query.len);
			tl += req->query.len;
		}
		target[tl] = '\0';
	}
	q->target = target;
	q->host = m->host.len ? span_dup(ctx, m->host) : NULL;
	if (!q->method || !q->target || (m->host.len && !q->host))
		return 503;
	q->headers = h;
	q->nheaders = n;
	q->stream_response = true;
	q->upgrade = upgrade;
	if (m->body == KEEL_HTTP_BODY_CHUNKED || (m->body == KEEL_HTTP_BODY_LENGTH && m->content_length)) {
		q->body_read = NULL; /* set below: it needs pr */
		q->body_length = m->body == KEEL_HTTP_BODY_CHUNKED ? -1 : (int64_t)m->content_length;
	}
	return 0;
}

/* At the upstream body's end its trailers become the response's (they live as long as ur). */
static keel_outcome sink_piece(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct preq *pr = ud;
	keel_str *piece = o.ptr;
	if (!piece || !piece->len) {
		pr->req->resp.trailers = pr->ur->trailers;
		pr->req->resp.ntrailers = pr->ur->ntrailers;
	}
	return o;
}

static keel_promise *body_sink(keel_http_request *req, void *ud)
{
	(void)req;
	struct preq *pr = ud;
	return keel_map(keel_http_client_body_read(pr->ur), sink_piece, pr);
}

/* The response as it goes back: hop-by-hop headers out, Date and Server are ours, Via appended. */
/*
 * An upstream response's headers as they are passed on, into h (room for
 * m's and one more): hop-by-hop ones out -- but Upgrade, for a switch --,
 * Date and Server are ours, Via appended to. Returns how many, or -1 when
 * out of memory.
 */
static int response_headers(keel_proxy *px, keel_ctx *ctx, const keel_http_msg *m, bool upgrade,
                            keel_http_header *h)
{
	bool has_conn = keel_http_header_find(m, "connection") != NULL;
	int n = 0;
	keel_str via = {NULL, 0};
	for (unsigned i = 0; i < m->nheaders; i++) {
		keel_str name = m->headers[i].name;
		if (upgrade && keel_str_ieq(name, "upgrade")) {
			h[n++] = m->headers[i];
			continue;
		}
		if (hop_by_hop(name, m, has_conn) || keel_str_ieq(name, "date") ||
		    keel_str_ieq(name, "server"))
			continue;
		if (keel_str_ieq(name, "via")) {
			via = via.len ? join(ctx, via, m->headers[i].value.ptr, m->headers[i].value.len)
			              : m->headers[i].value;
			continue;
		}
		h[n++] = m->headers[i];
	}
	if (px->via_len) {
		h[n].name = KEEL_STR("Via");
		h[n].value = join(ctx, via, px->via, px->via_len);
		if (!h[n++].value.ptr)
			return -1;
	}
	return n;
}

static int build_response(struct preq *pr, keel_ctx *ctx)
{
	keel_http_client_response *ur = pr->ur;
	keel_http_response *a = &pr->req->resp;
	keel_proxy *px = pr->px;
	const keel_http_msg *m = &ur->msg;
	for (unsigned i = 0; i < m->nheaders; i++) {
		if (!keel_str_ieq(m->headers[i].name, "transfer-encoding"))
			continue;
		/*
		 * A coding before (or instead of) chunked -- "gzip, chunked" --
		 * stays in the body the client reads; passed on without its
		 * Transfer-Encoding the client would take gzip for the content.
		 */
		keel_str list = m->headers[i].value, e;
		while (keel_http_list_next(&list, &e))
			if (!keel_str_ieq(e, "chunked"))
				return -EPROTO;
	}
	keel_http_header *h = keel_ctx_alloc(ctx, (m->nheaders + 1) * sizeof(*h));
	int n = h ? response_headers(px, ctx, m, false, h) : -1;
	if (n < 0)
		return -ENOMEM;
	a->status = ur->status;
	a->content_type = NULL; /* passed on among the headers */
	a->headers = h;
	a->nheaders = (unsigned)n;
	a->body = ur->body;
	if (m->body == KEEL_HTTP_BODY_NONE) {
		/*
		 * A HEAD answer keeps the framing the upstream announced: its
		 * Content-Length, or none (chunked) -- not the "0" of an empty body.
		 */
		if (pr->req->head_only && ur->status >= 200 && ur->status != 204 && ur->status != 304 &&
		    (m->content_length || !keel_http_header_find(m, "content-length"))) {
			a->stream_length = (int64_t)m->content_length; /* (0: none announced; chunked) */
			a->stream = body_sink; /* (never called: a HEAD answer has no body) */
			a->stream_ud = pr;
		}
		return 0; /* (an announced length of 0 is what an empty body says anyway) */
	}
	if (m->body == KEEL_HTTP_BODY_LENGTH) {
		if (!m->content_length)
			return 0;
		a->stream_length = (int64_t)m->content_length;
	}
	return 1; /* streamed */
}

/* ---- Upgrades ------------------------------------------------------------------ */

static void tunnel_done(void *ud)
{
	struct ptun *pt = ud;
	keel_proxy *px = pt->px;
	pt->pup->active--;
	free(pt);
	px->live--;
	proxy_release(px);
}

/* The client's 101 is out: its connection and the upstream's become one tunnel. */
static void tunnel_adopt(struct keel__upgrade *u, keel_http_server *s, keel_transport *tp, keel_buf *held,
                         uint32_t off, char *peer)
{
	free(peer); /* (a tunnel has no use for the client's address) */
	struct ptun *pt = (struct ptun *)u;
	struct keel__tunnel_end a = {.tp = *tp, .held = held, .off = off};
	keel_proxy *px = pt->px;
	keel__tunnel_start(pt->t, s, &a, &pt->b, px->cfg.tunnel_idle_timeout_ms, &px->tstats, tunnel_done,
	                   pt);
}

/* The request ended without its 101 going out: the upstream's connection goes. */
static void tunnel_drop(struct keel__upgrade *u)
{
	struct ptun *pt = (struct ptun *)u;
	while (pt->b.held) {
		keel_buf *b = pt->b.held;
		pt->b.held = b->next;
		keel_buf_release(b);
	}
	keel_promise_release(keel_transport_close(&pt->b.tp));
	keel__tunnel_discard(pt->t);
	tunnel_done(pt);
}

/*
 * The upstream switched (101): the same answer for the client, its
 * headers but the hop-by-hop ones (Upgrade and Connection: Upgrade set
 * again), and the upstream's connection taken from the client for the
 * tunnel. Returns 0, or a status to answer instead.
 */
/* Whether every protocol a 101 names (at least one) is one the request asked for. */
static bool switch_named(const keel_http_msg *resp, const keel_http_msg *req)
{
	bool any = false;
	for (unsigned i = 0; i < resp->nheaders; i++) {
		if (!keel_str_ieq(resp->headers[i].name, "upgrade"))
			continue;
		keel_str list = resp->headers[i].value, e;
		while (keel_http_list_next(&list, &e)) {
			bool asked = false;
			for (unsigned j = 0; j < req->nheaders && !asked; j++) {
				if (!keel_str_ieq(req->headers[j].name, "upgrade"))
					continue;
				keel_str l2 = req->headers[j].value, e2;
				while (!asked && keel_http_list_next(&l2, &e2))
					asked = keel_str_ieq_str(e, e2);
			}
			if (!asked)
				return false;
			any = true;
		}
	}
	return any;
}

static int switch_answer(struct preq *pr, keel_ctx *ctx)
{
	keel_http_client_response *ur = pr->ur;
	keel_proxy *px = pr->px;
	const keel_http_msg *m = &ur->msg;
	if (!switch_named(m, &pr->req->msg)) {
		/* A 101 to another protocol than asked (or to none): not passed on (RFC 9110 15.2.2). */
		keel_log(KEEL_LOG_WARN,
		         "proxy: upstream %s: switched to a protocol not asked for: answered 502",
		         pr->up ? pr->up->name : "-");
		return 502;
	}
	keel_http_header *h = keel_ctx_alloc(ctx, (m->nheaders + 2) * sizeof(*h));
	int n = h ? response_headers(px, ctx, m, true, h) : -1;
	struct ptun *pt = n >= 0 ? keel__calloc(1, sizeof(*pt)) : NULL;
	if (!pt || !(pt->t = keel__tunnel_new())) {
		free(pt);
		return 503;
	}
	if (keel_http_client_response_upgraded(ur, &pt->b.tp, &pt->b.held, &pt->b.off, &pt->b.eof) < 0) {
		keel__tunnel_discard(pt->t);
		free(pt);
		return 502;
	}
	h[n].name = KEEL_STR("Connection");
	h[n++].value = KEEL_STR("Upgrade");
	pt->up.adopt = tunnel_adopt;
	pt->up.drop = tunnel_drop;
	pt->px = px;
	pt->pup = pr->up; /* the tunnel counts as one of its connections (least_conn) */
	pr->up = NULL;
	px->live++;
	pr->req->upgrade = &pt->up;
	keel_http_response *a = &pr->req->resp;
	memset(a, 0, sizeof(*a));
	a->file_fd = -1;
	a->status = 101;
	a->headers = h;
	a->nheaders = (unsigned)n;
	return 0;
}

/* ---- The request ------------------------------------------------------------- */

/* The client's body failed: remembered, so the answer blames the client, not the upstream. */
static keel_outcome body_noted(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct preq *pr = ud;
	if (o.err && o.err != -ECANCELED)
		pr->body_err = o.err;
	return o;
}

static keel_promise *body_source(void *ud)
{
	struct preq *pr = ud;
	pr->body_started = true;
	return keel_then(keel_http_body_read(pr->req), body_noted, pr);
}

/* The request is over (its response sent, or its connection gone): let go of the upstream. */
static void preq_free(void *ud)
{
	struct preq *pr = ud;
	keel_proxy *px = pr->px;
	if (pr->ur)
		keel_http_client_response_free(pr->ur);
	pr->ur = NULL;
	if (pr->up) {
		pr->up->active--;
		pr->up = NULL;
	}
	px->stats.inflight--;
	px->live--;
	proxy_release(px);
}

static void answer(struct preq *pr, int status)
{
	keel_proxy *px = pr->px;
	keel_http_response *a = &pr->req->resp;
	if (pr->settled)
		return;
	pr->settled = true;
	if (status == 502)
		px->stats.errors_502++;
	else if (status == 503)
		px->stats.errors_503++;
	else if (status == 504)
		px->stats.errors_504++;
	memset(a, 0, sizeof(*a));
	a->file_fd = -1;
	a->status = status;
	a->content_type = "text/plain";
	a->body.ptr = keel_http_status_text(status);
	a->body.len = strlen(a->body.ptr);
	if (status == 503) {
		a->headers = &retry_after;
		a->nheaders = 1;
	}
	keel_promise_resolve(pr->out, 0, a);
}

static void send_upstream(struct preq *pr);
static void upstream_result(struct preq *pr, keel_outcome o);

static bool idempotent(keel_str m)
{
	return keel_str_eq(m, "GET") || keel_str_eq(m, "HEAD") || keel_str_eq(m, "PUT") ||
	       keel_str_eq(m, "DELETE") || keel_str_eq(m, "OPTIONS") || keel_str_eq(m, "TRACE");
}

static void upstream_answered(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct preq *pr = ud;
	pr->call = NULL;
	if (pr->settled) {
		/* Cancelled: the client went away. Just let go. */
		if (!o.err)
			keel_http_client_response_free(o.ptr);
		if (pr->up) {
			pr->up->active--;
			pr->up = NULL;
		}
		keel_ctx_release(pr->ctx); /* last: pr may go with it */
		return;
	}
	upstream_result(pr, o);
	keel_ctx_release(pr->ctx); /* the call's hold; the server still holds its own */
}

static void upstream_result(struct preq *pr, keel_outcome o)
{
	keel_proxy *px = pr->px;
	if (o.err && pr->body_err) {
		/*
		 * The client's body broke (bad chunked framing, past the limit,
		 * the client gone): the client's fault, answered as such; the
		 * upstream connection was closed under it, and is not blamed.
		 */
		pr->up->active--;
		pr->up = NULL;
		answer(pr, pr->body_err == -EMSGSIZE ? 413 : 400);
		return;
	}
	if (o.err) {
		struct pup *failed = pr->up;
		bool tls = o.err == KEEL_ETLS || o.err == KEEL_ETLSHS || o.err == KEEL_ETLSCERT;
		if (connect_error(o.err) || tls)
			mark_down(px, failed);
		/*
		 * Never sent (or an idempotent request reset, or its TLS broken,
		 * before any answer): once more, elsewhere.
		 */
		bool again = !pr->body_started && pr->tried < 2 && !px->freeing &&
		             (connect_error(o.err) ||
		              ((o.err == -ECONNRESET || o.err == -EPIPE || o.err == KEEL_ETLS) &&
		               !pr->q.body_read && idempotent(pr->req->msg.method)));
		struct pup *next = again ? pick(px, failed) : NULL;
		/*
		 * Each upstream failure is said, as nginx does (a full queue, our
		 * own shedding, is not one); for TLS the layer below has said which
		 * check or which alert.
		 */
		if (o.err != KEEL_ELIMIT && o.err != -ECANCELED)
			keel_log(KEEL_LOG_WARN, "proxy: upstream %s: %s: %s", failed->name,
			         keel_strerror(o.err),
			         next                  ? "trying another"
			         : o.err == -ETIMEDOUT ? "answered 504"
			                               : "answered 502");
		failed->active--;
		pr->up = NULL;
		if (next) {
			px->stats.retries++;
			pr->up = next;
			send_upstream(pr);
			return;
		}
		answer(pr, o.err == -ETIMEDOUT ? 504 : o.err == KEEL_ELIMIT ? 503 : 502);
		return;
	}
	pr->ur = o.ptr;
	if (pr->ur->status == 101) {
		/* (only to an upgrade asked for: the client fails any other 101) */
		int st = switch_answer(pr, keel_http_request_ctx(pr->req));
		if (st) {
			answer(pr, st);
			return;
		}
		pr->settled = true;
		px->stats.responses++;
		keel_promise_resolve(pr->out, 0, &pr->req->resp);
		return;
	}
	int rc = build_response(pr, keel_http_request_ctx(pr->req));
	if (rc < 0) {
		answer(pr, rc == -ENOMEM ? 503 : 502);
		return;
	}
	if (rc == 1) {
		pr->req->resp.stream = body_sink;
		pr->req->resp.stream_ud = pr;
	}
	pr->settled = true;
	px->stats.responses++;
	keel_promise_resolve(pr->out, 0, &pr->req->resp);
}

static void send_upstream(struct preq *pr)
{
	pr->tried++;
	pr->up->active++;
	pr->q.upstream = pr->up->name;
	keel_ctx_retain(pr->ctx); /* pr lives in the context: keep it until the call has ended */
	pr->call = keel_http_client_request_send(pr->px->client, &pr->q);
	keel_promise_done(pr->call, upstream_answered, pr);
}

/* The server gave up on the request (its client went away): abort the upstream call. */
static void out_cancelled(keel_promise *p, void *ud)
{
	(void)p;
	struct preq *pr = ud;
	if (pr->settled)
		return;
	pr->settled = true;
	if (pr->call)
		keel_promise_cancel(pr->call);
	keel_promise_reject(pr->out, -ECANCELED);
}

keel_promise *keel_proxy_handler(keel_http_request *req, void *ud)
{
	keel_proxy *px = ud;
	keel_promise *out = keel_promise_new(req->loop);
	keel_ctx *ctx = keel_http_request_ctx(req);
	struct preq *pr = keel_ctx_alloc(ctx, sizeof(*pr));
	px->stats.requests++;
	if (!pr) {
		keel_promise_reject(out, -ENOMEM);
		return out;
	}
	memset(pr, 0, sizeof(*pr));
	pr->px = px;
	pr->req = req;
	pr->ctx = ctx;
	pr->out = out;
	int st = px->freeing ? 503 : build_request(pr, ctx); /* (a proxy being freed takes nothing new) */
	if (!st && !(pr->up = pick(px, NULL)))
		st = 503; /* every upstream is down: say so at once */
	if (st) {
		answer(pr, st);
		return out;
	}
	if (pr->q.body_length) {
		pr->q.body_read = body_source;
		pr->q.body_ud = pr;
	}
	if (keel_ctx_on_free(ctx, preq_free, pr) < 0) {
		answer(pr, 503); /* no room for the hook that lets go of the upstream: nothing started */
		return out;
	}
	px->stats.inflight++;
	px->live++;
	keel_promise_on_cancel(out, out_cancelled, pr);
	send_upstream(pr);
	return out;
}

void keel_proxy_get_stats(const keel_proxy *px, keel_proxy_stats *out)
{
	*out = px->stats;
	out->tunnels = px->tstats.tunnels;
	out->tunnels_open = px->tstats.open;
	out->tunnel_bytes_up = px->tstats.bytes_up;
	out->tunnel_bytes_down = px->tstats.bytes_down;
	out->ups_down = 0;
	uint64_t now = keel_loop_now_ns(px->loop);
	for (unsigned i = 0; i < px->nups; i++)
		if (!up_ok(px, &px->ups[i], now))
			out->ups_down++;
}

unsigned keel_proxy_metrics(void *ud, keel_http_metric *out, unsigned max)
{
	keel_proxy *px = ud;
	keel_proxy_stats st;
	keel_proxy_get_stats(px, &st);
	keel_http_client_stats cs = {0};
	if (px->client)
		keel_http_client_get_stats(px->client, &cs);
	const keel_http_metric m[] = {
	    {"proxy_requests_total", "counter", "requests proxied", st.requests},
	    {"proxy_responses_total", "counter", "upstream responses passed on", st.responses},
	    {"proxy_errors_502_total", "counter", "502: the upstream failed before a response",
	     st.errors_502},
	    {"proxy_errors_503_total", "counter", "503: every upstream down, or the queue full",
	     st.errors_503},
	    {"proxy_errors_504_total", "counter", "504: the upstream did not answer in time", st.errors_504},
	    {"proxy_retries_total", "counter", "requests tried again on another upstream", st.retries},
	    {"proxy_inflight", "gauge", "requests being proxied", st.inflight},
	    {"proxy_upstreams_down", "gauge", "upstreams marked down", st.ups_down},
	    {"proxy_upstream_connections_open", "gauge", "upstream connections open", cs.conns_open},
	    {"proxy_upstream_connections_idle", "gauge", "upstream connections idle in the pool",
	     cs.conns_idle},
	    {"proxy_upstream_connects_total", "counter", "upstream connections opened", cs.connects},
	    {"proxy_upstream_pending", "gauge", "requests waiting for an upstream connection", cs.pending},
	    {"proxy_tunnels_total", "counter", "connections switched to a tunnel (an upstream's 101)",
	     st.tunnels},
	    {"proxy_tunnels_open", "gauge", "tunnels open", st.tunnels_open},
	    {"proxy_tunnel_bytes_up_total", "counter", "bytes through tunnels, client to upstream",
	     st.tunnel_bytes_up},
	    {"proxy_tunnel_bytes_down_total", "counter", "bytes through tunnels, upstream to client",
	     st.tunnel_bytes_down},
	};
	unsigned n = sizeof(m) / sizeof(m[0]);
	if (n > max)
		n = max;
	memcpy(out, m, n * sizeof(m[0]));
	return n;
}
