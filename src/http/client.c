/*
 * The HTTP/1.1 client's API and a request's life: checked and given a
 * record, queued for its upstream's connection, settled once, cancelled at
 * any point. The work on the wire is in the other client_*.c files
 * (client_internal.h says which).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "client_internal.h"
#include "core/alloc.h"
#include "keel/errors.h"
#include "keel/tcp.h"

#define REQ_FREE_MAX 256 /* request records kept for reuse per client */

void keel_http_client_config_default(keel_http_client_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->pool_max = 64;
	cfg->pending_max = 1024;
	cfg->connect_timeout_ms = 5000;
	cfg->response_timeout_ms = 30000;
	cfg->idle_timeout_ms = 60000;
	cfg->resolve_interval_ms = 30000;
	cfg->body_max = 8 << 20;
	keel_http_limits_default(&cfg->limits);
}

int keel_http_client_new(keel_http_client **out, keel_loop *loop, const keel_http_client_config *cfg)
{
	*out = NULL;
	keel_http_client_config cc;
	if (cfg)
		cc = *cfg;
	else
		keel_http_client_config_default(&cc);
	if (!loop || !cc.pool_max || !cc.limits.headers_max)
		return -EINVAL;
	keel_http_client *c = keel__calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->loop = loop;
	c->cfg = cc;
	*out = c;
	return 0;
}

/* ---- Requests ------------------------------------------------------------- */

static void req_put(keel_http_client *c, struct creq *r)
{
	if (c->nfree_reqs >= REQ_FREE_MAX || c->freeing) {
		free(r);
		return;
	}
	r->next = c->free_reqs;
	c->free_reqs = r;
	c->nfree_reqs++;
}

void keel__http_client_req_settle(struct creq *r, int err, keel_http_client_response *resp)
{
	struct cconn *k = r->conn;
	/*
	 * The caller may free or reuse its body the moment the promise settles,
	 * so a send still reading it (a whole body, or a producer's piece) must
	 * let go first: it is cancelled -- the rest of the body is not wanted
	 * now, so the connection cannot carry another request -- and r settles
	 * from send_done.
	 */
	if (k && k->due_req != r && keel__http_client_body_lent(k, r)) {
		k->due_req = r;
		k->due_resp = resp;
		k->due_err = err;
		k->keep = false;
		k->body_out = B_NONE;
		keel_promise_cancel(k->send_p);
		return;
	}
	keel_promise *p = r->p;
	req_put(r->up->cl, r);
	if (err)
		keel_promise_reject(p, err);
	else
		keel_promise_resolve(p, 0, resp);
}

static bool method_idempotent(keel_str m)
{
	static const char *const idem[] = {"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE", NULL};
	for (int i = 0; idem[i]; i++)
		if (keel_str_eq(m, idem[i]))
			return true;
	return false;
}

/* HOST of a valid "HOST:PORT", without an IPv6 address's brackets, into host (strlen(name) + 1 bytes). */
static void host_of(char *host, const char *name)
{
	if (strncmp(name, "unix:", 5) == 0) { /* (a Unix socket's server is this machine) */
		strcpy(host, "localhost");
		return;
	}
	const char *h = name, *he = strrchr(name, ':');
	if (*h == '[') {
		h++;
		he--;
	}
	memcpy(host, h, (size_t)(he - h));
	host[he - h] = '\0';
}

static struct upstream *upstream_get(keel_http_client *c, const char *name)
{
	for (struct upstream *u = c->ups; u; u = u->next)
		if (strcmp(u->name, name) == 0)
			return u;
	if (!keel_hostport_valid(name))
		return NULL;
	struct upstream *u = keel__calloc(1, sizeof(*u));
	size_t nl = strlen(name);
	/* the name, then its host ("localhost" for a Unix socket) */
	if (!u || !(u->name = keel__malloc(2 * (nl + 1) + sizeof("localhost")))) {
		free(u);
		return NULL;
	}
	u->cl = c;
	memcpy(u->name, name, nl + 1);
	u->host = u->name + nl + 1;
	host_of(u->host, name);
	u->addr_ok = keel_addr_parse(name, &u->addrs[0], &u->lens[0]) == 0; /* else: looked up on first use */
	u->naddrs = u->addr_ok;
	u->named = !u->addr_ok;
	u->next = c->ups;
	c->ups = u;
	return u;
}

static bool token_ok(const char *s)
{
	if (!s || !*s)
		return false;
	for (; *s; s++)
		if ((unsigned char)*s <= ' ' || *s == 0x7f)
			return false;
	return true;
}

static bool value_ok(keel_str v)
{
	for (size_t i = 0; i < v.len; i++) {
		unsigned char ch = (unsigned char)v.ptr[i];
		if ((ch < ' ' && ch != '\t') || ch == 0x7f)
			return false;
	}
	return true;
}

/* A queued request leaves the queue; one in flight takes its connection down with it. */
static void req_cancel(keel_promise *p, void *ud)
{
	(void)p;
	struct creq *r = ud;
	struct upstream *up = r->up;
	if (r->conn) {
		struct cconn *k = r->conn;
		if (k->due_req == r) {
			/* Answered; its body's send is letting go of the producer's piece: settled then. */
			r->cancelled = true;
			return;
		}
		k->req = NULL;
		k->keep = false;
		keel__http_client_req_settle(r, -ECANCELED, NULL);
		keel__http_client_conn_close(k);
		return;
	}
	struct creq **pp = &up->pend_head, *prev = NULL;
	while (*pp && *pp != r) {
		prev = *pp;
		pp = &(*pp)->next;
	}
	if (*pp) {
		*pp = r->next;
		if (up->pend_tail == r)
			up->pend_tail = prev;
		up->npending--;
	}
	keel__http_client_req_settle(r, -ECANCELED, NULL);
}

keel_promise *keel_http_client_request_send(keel_http_client *c, const keel_http_client_request *q)
{
	keel_promise *p = keel_promise_new(c->loop);
	const char *method = q->method ? q->method : "GET";
	bool ok = q->upstream && token_ok(method) &&
	          (!q->target || (q->target[0] == '/' && token_ok(q->target))) &&
	          (!q->host || token_ok(q->host));
	for (unsigned i = 0; ok && i < q->nheaders; i++) {
		keel_str n = q->headers[i].name;
		ok = n.len && value_ok(n) && !memchr(n.ptr, ':', n.len) && !memchr(n.ptr, ' ', n.len) &&
		     value_ok(q->headers[i].value) && !keel_str_ieq(n, "host") &&
		     !keel_str_ieq(n, "content-length") && !keel_str_ieq(n, "transfer-encoding") &&
		     !keel_str_ieq(n, "connection");
	}
	if (ok && q->upgrade) {
		/* A switch names its protocol, and carries no body (what follows the head is the new protocol's). */
		bool named = false;
		for (unsigned i = 0; i < q->nheaders; i++)
			named = named || keel_str_ieq(q->headers[i].name, "upgrade");
		ok = named && !q->body.len && !q->body_read;
	}
	struct upstream *up = ok && !c->freeing ? upstream_get(c, q->upstream) : NULL;
	if (!up) {
		keel_promise_reject(p, c->freeing ? -ECANCELED : -EINVAL);
		return p;
	}
	c->stats.requests++;
	if (!up->idle && up->nconns >= c->cfg.pool_max && up->npending >= c->cfg.pending_max) {
		c->stats.rejected_full++;
		keel_promise_reject(p, KEEL_ELIMIT); /* a full queue says so at once */
		return p;
	}
	struct creq *r = c->free_reqs;
	if (r) {
		c->free_reqs = r->next;
		c->nfree_reqs--;
	} else if (!(r = keel__malloc(sizeof(*r)))) {
		keel_promise_reject(p, -ENOMEM);
		return p;
	}
	memset(r, 0, sizeof(*r));
	r->p = p;
	r->up = up;
	r->q = *q;
	r->q.method = method;
	r->method.ptr = method;
	r->method.len = strlen(method);
	/* A streamed body cannot be sent twice. */
	r->idempotent = method_idempotent(r->method) && (!q->body_read || q->body_length == 0);
	keel_promise_on_cancel(p, req_cancel, r);
	keel__http_client_req_start(up, r);
	return p;
}

/* ---- The client's end ----------------------------------------------------- */

void keel__http_client_release(keel_http_client *c)
{
	if (c->stats.conns_open || c->resolving)
		return;
	while (c->ups) {
		struct upstream *u = c->ups;
		c->ups = u->next;
		free(u->name);
		free(u);
	}
	while (c->free_reqs) {
		struct creq *r = c->free_reqs;
		c->free_reqs = r->next;
		free(r);
	}
	free(c);
}

void keel_http_client_get_stats(const keel_http_client *c, keel_http_client_stats *out)
{
	*out = c->stats;
	out->conns_idle = 0;
	out->pending = 0;
	for (const struct upstream *u = c->ups; u; u = u->next) {
		out->conns_idle += u->nidle;
		out->pending += u->npending;
	}
}

void keel_http_client_free(keel_http_client *c)
{
	if (!c)
		return;
	c->freeing = true;
	c->in_free = true; /* connections closing right here must not free c under this loop */
	for (struct upstream *u = c->ups; u; u = u->next) {
		while (u->pend_head) {
			struct creq *r = u->pend_head;
			u->pend_head = r->next;
			keel__http_client_req_settle(r, -ECANCELED, NULL);
		}
		u->pend_tail = NULL;
		u->npending = 0;
		if (u->resolving)
			keel_promise_cancel(u->resolving);
		for (struct cconn *k = u->conns, *next; k; k = next) {
			next = k->next;
			keel__http_client_conn_close(k);
		}
	}
	c->in_free = false;
	keel__http_client_release(c);
}
