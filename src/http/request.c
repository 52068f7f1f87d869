/*
 * A request's life on the server side, whatever protocol carried it: the
 * record (taken from a per-server free list, never malloc'd per request in
 * steady state), the handler's call and its answer, the statuses the server
 * answers itself, and the request that outlives its connection (a zombie)
 * because a producer the server cannot stop still holds it.
 *
 * A protocol makes the record (keel__req_new, naming its keel__http_proto),
 * fills msg, and hands it over with keel__req_dispatch or
 * keel__handler_call; from then on the core calls back through the table.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/alloc.h"
#include "keel/buf.h"
#include "keel/errors.h"
#include "keel/http.h"
#include "keel/http_parse.h"
#include "keel/log.h"
#include "server_internal.h"

const char *keel_http_status_text(int status)
{
	switch (status) {
	case 100: return "Continue";
	case 101: return "Switching Protocols";
	case 200: return "OK";
	case 201: return "Created";
	case 204: return "No Content";
	case 206: return "Partial Content";
	case 301: return "Moved Permanently";
	case 302: return "Found";
	case 304: return "Not Modified";
	case 400: return "Bad Request";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 411: return "Length Required";
	case 413: return "Content Too Large";
	case 414: return "URI Too Long";
	case 416: return "Range Not Satisfiable";
	case 417: return "Expectation Failed";
	case 426: return "Upgrade Required";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	case 505: return "HTTP Version Not Supported";
	default:
		return status < 200   ? "Informational"
		       : status < 300 ? "OK"
		       : status < 400 ? "Redirect"
		       : status < 500 ? "Client Error"
		                      : "Server Error";
	}
}

/* ---- Requests ------------------------------------------------------------ */

/* A request record, not yet queued (queued once its head has parsed). NULL on ENOMEM. */
keel_http_request *keel__req_new(keel_http_server *s, void *c, const struct keel__http_proto *proto)
{
	keel_http_request *r = s->free_reqs;
	if (r) {
		s->free_reqs = r->next;
		s->nfree_reqs--;
	} else if (!(r = keel__malloc(s->req_size))) {
		return NULL;
	}
	memset(r, 0, sizeof(*r));
	r->headers = (keel_http_header *)(r + 1); /* (server.c sized the record for them) */
	r->loop = s->loop;
	r->conn = c;
	r->server = s;
	r->proto = proto;
	r->resp.file_fd = -1;
	r->keep_alive = 1;
	r->start_ns = keel_loop_now_ns(s->loop);
	return r;
}

void keel__req_put(keel_http_server *s, keel_http_request *r)
{
	if (s->nfree_reqs >= REQ_FREE_MAX) {
		free(r);
		return;
	}
	r->next = s->free_reqs;
	s->free_reqs = r;
	s->nfree_reqs++;
}

/*
 * Copy body bytes that arrived in pieces. A Content-Length body gets its
 * exact size at once; a chunked one grows by doubling. Copies across the
 * server are bounded by body_mem_max. Returns 0, or the status to answer:
 * 503 (over the server's body memory) or 500 (out of memory).
 */
int keel__req_body_append(keel_http_server *s, keel_http_request *r, const char *p, size_t n)
{
	if (r->body_len + n > r->body_cap) {
		size_t cap;
		if (r->msg.body == KEEL_HTTP_BODY_LENGTH) {
			cap = (size_t)r->msg.content_length;
		} else {
			cap = r->body_cap ? r->body_cap * 2 : 4096;
			while (cap < r->body_len + n)
				cap *= 2;
			if (cap > s->cfg.body_max && s->cfg.body_max >= r->body_len + n)
				cap = s->cfg.body_max;
		}
		if (s->cfg.body_mem_max && s->body_mem - r->body_cap + cap > s->cfg.body_mem_max)
			return 503;
		char *nb = keel__realloc(r->body_own, cap);
		if (!nb)
			return 500;
		s->body_mem += cap - r->body_cap;
		r->body_own = nb;
		r->body_cap = cap;
	}
	memcpy(r->body_own + r->body_len, p, n);
	r->body_len += n;
	return 0;
}

/*
 * A piece of the trailer section, gathered in the request's context: from
 * a chunked body's decoder as it came, or an HTTP/2 field written
 * "name: value\r\n". The section is bounded by limits.head_max.
 */
int keel__req_trailer_raw(keel_http_request *r, const char *p, size_t n)
{
	size_t need = (size_t)r->tr_len + n;
	if (need > r->server->cfg.limits.head_max)
		return 431;
	if (need > r->tr_cap) {
		size_t cap = r->tr_cap ? (size_t)r->tr_cap * 2 : 256;
		while (cap < need)
			cap *= 2;
		keel_ctx *ctx = keel_http_request_ctx(r);
		char *nb = ctx ? keel_ctx_alloc(ctx, cap) : NULL;
		if (!nb)
			return 500;
		if (r->tr_len)
			memcpy(nb, r->tr_raw, r->tr_len);
		r->tr_raw = nb; /* (the old copy stays in the arena: at most as much again) */
		r->tr_cap = (uint32_t)cap;
	}
	memcpy(r->tr_raw + r->tr_len, p, n);
	r->tr_len = (uint32_t)need;
	return 0;
}

/* The trailer section is whole: its fields, up to limits.headers_max, into r->trailers. */
int keel__req_trailers_end(keel_http_request *r)
{
	if (!r->tr_len)
		return 0;
	unsigned n = keel_http_trailers_parse(r->tr_raw, r->tr_len, NULL, 0);
	if (n > r->server->cfg.limits.headers_max)
		return 431;
	keel_http_header *f = keel_ctx_alloc(keel_http_request_ctx(r), (n ? n : 1) * sizeof(*f));
	if (!f)
		return 500;
	r->ntrailers = keel_http_trailers_parse(r->tr_raw, r->tr_len, f, n);
	r->trailers = f;
	return 0;
}

bool keel__trailer_ok(keel_str n)
{
	static const char *const no[] = {
	    "content-length", "transfer-encoding", "host",    "te", "trailer", "connection",
	    "keep-alive",     "proxy-connection",  "upgrade", NULL};
	if (!n.len || n.ptr[0] == ':')
		return false;
	for (int i = 0; no[i]; i++)
		if (keel_str_ieq(n, no[i]))
			return false;
	return true;
}

/* A streamed-body read still waiting ends with err. */
void keel__body_wait_reject(keel_http_request *r, int err)
{
	keel_promise *w = r->body_wait;
	if (w) {
		r->body_wait = NULL;
		keel_promise_reject(w, err);
	}
}

/* Everything r holds goes back: its buffers, copies, file, context; then the record (s may be NULL). */
static void req_release(keel_http_server *s, keel_http_request *r)
{
	if (r->upgrade) {
		r->upgrade->drop(r->upgrade); /* its 101 never went out */
		r->upgrade = NULL;
	}
	for (int i = 0; i < 2; i++)
		if (r->hold[i])
			keel_buf_release(r->hold[i]);
	if (r->body_buf)
		keel_buf_release(r->body_buf);
	free(r->own);
	free(r->body_own);
	if (r->answer && r->answer->file_fd >= 0 && r->answer->file_close)
		close(r->answer->file_fd);
	if (r->ctx)
		keel_ctx_release(r->ctx);
	if (!s) {
		free(r); /* (a zombie whose server was freed first) */
		return;
	}
	s->body_mem -= r->body_cap;
	keel__req_put(s, r);
}

/*
 * A detached zombie released (from the ready queue: its producer's settle
 * runs nobody's code). The server may have been freed meanwhile: then r is
 * no longer on its list (r->server is NULL) and goes alone.
 */
static void zombie_release_due(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	keel_http_request *r = ud;
	keel_http_server *s = r->server;
	if (s) {
		keel_http_request **pp = &s->zombies;
		while (*pp != r)
			pp = &(*pp)->next;
		*pp = r->next;
	}
	/* What the handler answered with at last is its to give back: a file it opened, say. */
	if (r->resp.file_fd >= 0 && r->resp.file_close)
		close(r->resp.file_fd);
	req_release(s, r);
}

/* A zombie's producer let go (called inside its settle: only bookkeeping here). */
static void zombie_released(keel_promise *p, void *arg)
{
	(void)p;
	keel_http_request *r = arg;
	r->zombie = 0;
	r->holder = NULL;
	if (r->conn) {
		/* Let go before its connection was freed: released as usual (keel__req_end). */
		if (r->resp.file_fd >= 0 && r->resp.file_close)
			r->answer = &r->resp; /* (so req_release closes the handler's file) */
		return;
	}
	r->zombie = 2; /* (on the zombie list until the ready queue releases it) */
	keel_promise *due = keel_promise_new(r->loop);
	keel_promise_resolve(due, 0, NULL);
	keel_promise_done(due, zombie_release_due, r);
}

/*
 * The client went while a producer the server could not stop (a handler's
 * promise, or a streamed body's piece, without a cancel hook) still holds
 * r: keep it until that producer settles (keel_http_handler's contract).
 */
void keel__req_zombie(keel_http_request *r, keel_promise *p)
{
	if (r->zombie || !p || !keel_promise_producer_holds(p))
		return;
	r->zombie = 1;
	r->holder = p;
	keel_promise_on_release(p, zombie_released, r);
}

/* r is done with (its response is out, or its connection gone): released, or kept as a zombie. */
void keel__req_end(keel_http_server *s, keel_http_request *r)
{
	if (r->zombie) {
		r->conn = NULL; /* the connection goes; the request stays for its producer */
		r->next = s->zombies;
		s->zombies = r;
		return;
	}
	req_release(s, r);
}

/* The free list down to keep records. */
void keel__req_trim(keel_http_server *s, unsigned keep)
{
	while (s->nfree_reqs > keep) {
		keel_http_request *r = s->free_reqs;
		s->free_reqs = r->next;
		s->nfree_reqs--;
		free(r);
	}
}

/* At the server's free: zombies whose producers never let go are released (theirs was the last word). */
void keel__req_zombies_free(keel_http_server *s)
{
	while (s->zombies) {
		keel_http_request *r = s->zombies;
		s->zombies = r->next;
		if (r->zombie == 2) {
			r->server = NULL; /* its release is already queued: it goes then, alone */
			continue;
		}
		if (r->zombie == 1)
			keel_promise_on_release(r->holder, NULL, NULL);
		r->zombie = 0;
		req_release(s, r);
	}
}

keel_ctx *keel_http_request_ctx(keel_http_request *req)
{
	if (!req->ctx)
		req->ctx = keel_ctx_new(req->loop);
	return req->ctx;
}

keel_promise *keel_http_respond(keel_http_request *req, int status, const char *content_type,
                                const char *body, size_t len)
{
	req->resp.status = status;
	req->resp.content_type = content_type;
	req->resp.body.ptr = body;
	req->resp.body.len = len;
	keel_promise *p = keel_promise_new(req->loop);
	keel_promise_resolve(p, 0, &req->resp);
	return p;
}

keel_promise *keel_http_respond_copy(keel_http_request *req, int status, const char *content_type,
                                     const void *body, size_t len)
{
	keel_ctx *ctx = keel_http_request_ctx(req);
	char *copy = ctx ? keel_ctx_alloc(ctx, len ? len : 1) : NULL;
	if (!copy) {
		keel_promise *p = keel_promise_new(req->loop);
		keel_promise_reject(p, -ENOMEM);
		return p;
	}
	if (len)
		memcpy(copy, body, len);
	return keel_http_respond(req, status, content_type, copy, len);
}

keel_promise *keel_http_respondf(keel_http_request *req, int status, const char *content_type,
                                 const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	keel_ctx *ctx = keel_http_request_ctx(req);
	char *out = n >= 0 && ctx ? keel_ctx_alloc(ctx, (size_t)n + 1) : NULL;
	if (!out) {
		keel_promise *p = keel_promise_new(req->loop);
		keel_promise_reject(p, n < 0 ? -EINVAL : -ENOMEM);
		return p;
	}
	va_start(ap, fmt);
	vsnprintf(out, (size_t)n + 1, fmt, ap);
	va_end(ap);
	return keel_http_respond(req, status, content_type, out, (size_t)n);
}

const keel_http_header keel__retry_after = {KEEL_STR_INIT("Retry-After"), KEEL_STR_INIT("1")};

static int err_status(int err)
{
	switch (err) {
	case -ENOENT: return 404;
	case -EACCES:
	case -EPERM: return 403;
	case -ETIMEDOUT: return 504;
	case -EBADMSG: return 400;
	case -EMSGSIZE: return 413;
	case -ENOMEM:
	case KEEL_ELIMIT: return 503; /* out of a resource for now: worth retrying */
	default: return 500;
	}
}

/*
 * Set r's answer from its handler's outcome: the response it resolved
 * with, or the status its error maps to (err_status). The protocol then
 * accounts for it (keel__http_proto.answered).
 */
void keel__req_answer(keel_http_request *r, keel_outcome o)
{
	r->pending = NULL;
	const keel_http_response *bad = o.err ? NULL : o.ptr;
	if (bad && bad->status == 101 && r->upgrade)
		bad = NULL; /* switching protocols, as keel_ws_accept set it up */
	if (bad && (bad->status < 200 || bad->status > 999)) {
		/* Not a final status a client can take: the handler's mistake, answered 500. */
		static atomic_uint said; /* (once per process: a bug, not an event) */
		if (atomic_fetch_add(&said, 1) == 0)
			keel_log(KEEL_LOG_ERROR, "a handler answered with status %d: sent 500 instead",
			         bad->status);
		if (bad != &r->resp && bad->file_fd >= 0 && bad->file_close)
			close(bad->file_fd); /* (r->resp's own file is closed below) */
		o = keel_fail(-EPROTO);
	}
	if (o.err || !o.ptr) {
		if (r->resp.file_fd >= 0 && r->resp.file_close)
			close(r->resp.file_fd); /* a handler that failed after opening its file */
		/* The body's own error passed on is the client's doing: a body cut off is a bad request. */
		int st = o.err && o.err == r->body_err && o.err == -ECONNRESET ? 400 : err_status(o.err);
		r->resp.status = st;
		r->resp.content_type = "text/plain";
		r->resp.body.ptr = keel_http_status_text(st);
		r->resp.body.len = strlen(r->resp.body.ptr);
		r->resp.headers = st == 503 ? &keel__retry_after : NULL;
		r->resp.nheaders = st == 503;
		r->resp.file_fd = -1;
		r->resp.stream = NULL; /* whatever the handler had begun to fill */
		r->resp.stream_length = 0;
		r->resp.trailers = NULL; /* (a failure's answer says nothing of what succeeded) */
		r->resp.ntrailers = 0;
		r->answer = &r->resp;
	} else {
		r->answer = o.ptr;
	}
	if (r->upgrade && r->answer->status != 101) {
		r->upgrade->drop(r->upgrade); /* refused, or failed: the connection stays HTTP's */
		r->upgrade = NULL;
	}
	r->done = 1;
	r->proto->answered(r);
}

static void handler_done(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	keel_http_request *r = ud;
	r->server->stats.inflight--;
	r->proto->handler_done(r, o);
}

/*
 * Parse the target once (keel_http_target_parse): routes match, handlers
 * see and the proxy forwards the same normalized path. In absolute-form the
 * target's authority replaces Host (RFC 9112 3.2.2). Returns 0 or a status.
 */
int keel__req_target(keel_http_request *r)
{
	keel_http_target t;
	int rc = keel_http_target_parse(r->msg.target, &t, NULL);
	if (rc == KEEL_HTTP_INCOMPLETE) {
		char *scratch = keel_ctx_alloc(keel_http_request_ctx(r), r->msg.target.len);
		if (!scratch)
			return 503;
		rc = keel_http_target_parse(r->msg.target, &t, scratch);
	}
	if (rc < 0)
		return 400;
	if (t.form == KEEL_HTTP_TARGET_ASTERISK && !keel_str_eq(r->msg.method, "OPTIONS"))
		return 400;
	if (t.form == KEEL_HTTP_TARGET_ABSOLUTE)
		r->msg.host = t.authority;
	r->path = t.path;
	r->query = t.query;
	return 0;
}

/* A status the server answers itself (a 400, 413, 431, 503 ...): its text as the body, Retry-After with a 503. */
void keel__req_error_answer(keel_http_request *r, int status)
{
	r->is_error = 1;
	r->resp.status = status;
	r->resp.content_type = "text/plain";
	r->resp.body.ptr = keel_http_status_text(status);
	r->resp.body.len = strlen(r->resp.body.ptr);
	if (status == 503) {
		r->resp.headers = &keel__retry_after;
		r->resp.nheaders = 1;
	}
	r->answer = &r->resp;
	r->done = 1;
}

/* Admission said no: 503 with Retry-After, the handler not called. */
static void req_shed(keel_http_request *r)
{
	r->server->stats.shed++;
	r->resp.status = 503;
	r->resp.content_type = "text/plain";
	r->resp.body.ptr = "Service Unavailable\n";
	r->resp.body.len = sizeof("Service Unavailable\n") - 1;
	r->resp.headers = &keel__retry_after;
	r->resp.nheaders = 1;
	keel__req_answer(r, keel_ok(0, &r->resp));
}

/* 405 must say which methods the path does allow (RFC 9110 15.5.6). */
static void allow_header(keel_http_server *s, keel_http_request *r)
{
	enum { ALLOW_MAX = 256 };
	keel_ctx *ctx = keel_http_request_ctx(r);
	char *list = keel_ctx_alloc(ctx, ALLOW_MAX);
	keel_http_header *h = list ? keel_ctx_alloc(ctx, sizeof(*h)) : NULL;
	if (!h)
		return; /* no memory for the list: a 405 without Allow beats none */
	h->name.ptr = "Allow";
	h->name.len = sizeof("Allow") - 1;
	h->value.ptr = list;
	h->value.len = keel__route_methods(s, r->path, list, ALLOW_MAX);
	r->resp.headers = h;
	r->resp.nheaders = 1;
}

void keel__handler_call(keel_http_request *r, const struct route *rt)
{
	if (keel__should_shed(r->server, rt)) {
		req_shed(r);
		return;
	}
	keel_promise *p = rt->fn(r, rt->ud);
	if (!p) {
		keel__req_answer(r, keel_fail(-ENOMEM));
	} else if (keel_promise_is_settled(p)) {
		/* Already answered: no need to wait for the ready queue. */
		keel__req_answer(r, keel_promise_outcome(p));
		keel_promise_release(p);
	} else {
		r->pending = p;
		r->server->stats.inflight++;
		keel_promise_done(p, handler_done, r);
	}
}

/* Route r and call its handler, or answer it at once (OPTIONS *, 404, 405, 501). */
void keel__req_dispatch(keel_http_request *r)
{
	keel_http_server *s = r->server;
	s->stats.requests++;
	r->head_only = keel_str_eq(r->msg.method, "HEAD");
	if (r->path.len == 1 && r->path.ptr[0] == '*') {
		r->resp.status = 200; /* OPTIONS * (RFC 9110 9.3.7): the server is here; no route is asked */
		r->answer = &r->resp;
		r->done = 1;
		return;
	}
	bool method_ok;
	const struct route *rt = keel__route_find(s, r, &method_ok);
	if (!rt) {
		static const char *const known[] = {"GET",     "HEAD",    "POST",  "PUT",   "DELETE",
		                                    "CONNECT", "OPTIONS", "TRACE", "PATCH", NULL};
		bool is_known = false;
		for (int i = 0; known[i]; i++)
			is_known = is_known || keel_str_eq(r->msg.method, known[i]);
		int st = !is_known ? 501 : method_ok ? 404 : 405;
		if (st == 405)
			allow_header(s, r);
		r->resp.status = st;
		r->resp.content_type = "text/plain";
		r->resp.body.ptr = keel_http_status_text(st);
		r->resp.body.len = strlen(r->resp.body.ptr);
		r->answer = &r->resp;
		r->done = 1;
		return;
	}
	keel__handler_call(r, rt);
}

keel_promise *keel_http_body_read(keel_http_request *r)
{
	keel_promise *p = keel_promise_new(r->loop);
	if (!r->stream_body) {
		/* A body read whole: one piece, then the end. */
		r->piece = r->body_given ? (keel_str){NULL, 0} : r->body;
		r->body_given = 1;
		keel_promise_resolve(p, 0, &r->piece);
		return p;
	}
	if (r->body_buf) {
		keel_buf_release(r->body_buf); /* the previous piece is done with */
		r->body_buf = NULL;
	}
	if (!r->conn) {
		keel_promise_reject(p, -ECONNRESET); /* a zombie: its client is gone */
		return p;
	}
	r->proto->body_read(r, p);
	return p;
}

const char *keel__request_conn_peer(keel_http_request *req)
{
	return req->conn ? req->proto->peer(req) : "-";
}

const char *keel_http_request_peer(keel_http_request *req)
{
	if (!req->conn)
		return "-";
	if (!req->real_peer) /* (once per request: what trusted proxies say, or the connection's) */
		req->real_peer = keel__real_ip(req, req->proto->peer(req));
	return req->real_peer;
}

bool keel_http_request_secure(keel_http_request *req)
{
	return req->conn && req->proto->secure(req);
}
