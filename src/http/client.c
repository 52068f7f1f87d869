/*
 * The HTTP/1.1 client: per-upstream pools of keep-alive connections, a
 * bounded queue of requests waiting for one, one request at a time per
 * connection, responses parsed incrementally by keel's strict parser.
 *
 * A connection keeps its multishot receive running for its whole life, so
 * a pooled idle connection that the server closes is seen (EOF) and dropped
 * at once rather than found dead by the next request.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/internal.h"
#include "keel/errors.h"
#include "keel/file.h"
#include "keel/http_client.h"
#include "keel/tcp.h"

enum { T_OFF = 0, T_RESPONSE, T_IDLE };

struct creq {
	struct creq *next;
	struct upstream *up;
	keel_promise *p;
	char *head; /* the formatted request head */
	size_t head_len;
	keel_str body; /* borrowed until settled */
	keel_str method;
	bool idempotent, retried;
};

struct cconn {
	struct cconn *next, *prev;           /* the upstream's list of connections */
	struct cconn *idle_next, *idle_prev; /* its idle list, most recently used first */
	struct upstream *up;
	int fd;
	keel_promise *recv, *send_p, *connect_p;
	struct creq *req;
	/* The response being read: its head bytes, then its body. */
	char *head;
	size_t head_len, head_cap;
	bool head_done;
	keel_http_msg msg;
	keel_http_header *hdrs;
	keel_http_chunked chunk;
	uint64_t body_need;
	char *body;
	size_t body_len, body_cap;
	keel__timer timer;
	uint8_t timer_kind;
	bool idle, reused, got_bytes, closing, keep;
	bool release_due; /* the response is done, the request's send is not: release after it */
};

struct upstream {
	struct upstream *next;
	keel_http_client *cl;
	char *name;
	struct sockaddr_storage addr;
	socklen_t addrlen;
	struct cconn *conns; /* all of them */
	struct cconn *idle;  /* the idle ones, most recently used first */
	unsigned nconns, nidle;
	struct creq *pend_head, *pend_tail;
	unsigned npending;
};

struct keel_http_client {
	keel_loop *loop;
	keel_http_client_config cfg;
	struct upstream *ups;
	keel_http_client_stats stats;
	bool freeing, in_free;
};

static void conn_close(struct cconn *k);
static void conn_send(struct cconn *k, struct creq *r);
static void req_start(struct upstream *up, struct creq *r);

void keel_http_client_config_default(keel_http_client_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->pool_max = 64;
	cfg->pending_max = 1024;
	cfg->connect_timeout_ms = 5000;
	cfg->response_timeout_ms = 30000;
	cfg->idle_timeout_ms = 60000;
	cfg->body_max = 8 << 20;
	keel_http_limits_default(&cfg->limits);
}

keel_http_client *keel_http_client_new(keel_loop *loop, const keel_http_client_config *cfg)
{
	keel_http_client *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->loop = loop;
	if (cfg)
		c->cfg = *cfg;
	else
		keel_http_client_config_default(&c->cfg);
	if (!c->cfg.pool_max || !c->cfg.limits.headers_max) {
		free(c);
		return NULL;
	}
	return c;
}

/* ---- Requests ------------------------------------------------------------- */

static void req_settle(struct creq *r, int err, keel_http_client_response *resp)
{
	keel_promise *p = r->p;
	free(r->head);
	free(r);
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

static struct upstream *upstream_get(keel_http_client *c, const char *name)
{
	for (struct upstream *u = c->ups; u; u = u->next)
		if (strcmp(u->name, name) == 0)
			return u;
	struct upstream *u = calloc(1, sizeof(*u));
	if (!u)
		return NULL;
	u->cl = c;
	u->name = strdup(name);
	if (!u->name || keel_addr_parse(name, &u->addr, &u->addrlen) < 0) {
		free(u->name);
		free(u);
		return NULL;
	}
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

/* Format the head once; the body goes beside it in the send. */
static char *format_head(const keel_http_client_request *q, const char *method, size_t *out_len)
{
	const char *target = q->target ? q->target : "/";
	const char *host = q->host ? q->host : q->upstream;
	bool with_len = q->body.len || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
	                strcmp(method, "PATCH") == 0;
	size_t cap = strlen(method) + strlen(target) + strlen(host) + 96;
	for (unsigned i = 0; i < q->nheaders; i++)
		cap += q->headers[i].name.len + q->headers[i].value.len + 4;
	char *h = malloc(cap);
	if (!h)
		return NULL;
	size_t n = (size_t)snprintf(h, cap, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, target, host);
	for (unsigned i = 0; i < q->nheaders; i++) {
		const keel_http_header *x = &q->headers[i];
		memcpy(h + n, x->name.ptr, x->name.len);
		n += x->name.len;
		h[n++] = ':';
		h[n++] = ' ';
		memcpy(h + n, x->value.ptr, x->value.len);
		n += x->value.len;
		h[n++] = '\r';
		h[n++] = '\n';
	}
	if (with_len)
		n += (size_t)snprintf(h + n, cap - n, "Content-Length: %zu\r\n", q->body.len);
	h[n++] = '\r';
	h[n++] = '\n';
	*out_len = n;
	return h;
}

keel_promise *keel_http_client_request_send(keel_http_client *c, const keel_http_client_request *q)
{
	keel_promise *p = keel_promise_new(c->loop);
	const char *method = q->method ? q->method : "GET";
	bool ok = q->upstream && token_ok(method) && (!q->target || (q->target[0] == '/' && token_ok(q->target))) &&
	          (!q->host || token_ok(q->host));
	for (unsigned i = 0; ok && i < q->nheaders; i++) {
		keel_str n = q->headers[i].name;
		ok = n.len && value_ok(n) && !memchr(n.ptr, ':', n.len) && !memchr(n.ptr, ' ', n.len) &&
		     value_ok(q->headers[i].value) && !keel_str_ieq(n, "host") && !keel_str_ieq(n, "content-length") &&
		     !keel_str_ieq(n, "transfer-encoding") && !keel_str_ieq(n, "connection");
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
	struct creq *r = calloc(1, sizeof(*r));
	if (r)
		r->head = format_head(q, method, &r->head_len);
	if (!r || !r->head) {
		free(r);
		keel_promise_reject(p, -ENOMEM);
		return p;
	}
	r->p = p;
	r->up = up;
	r->body = q->body;
	r->method.ptr = r->head; /* the head starts with the method */
	r->method.len = strlen(method);
	r->idempotent = method_idempotent(r->method);
	req_start(up, r);
	return p;
}

/* ---- Connections ---------------------------------------------------------- */

/* The oldest request waiting for a connection, or NULL. */
static struct creq *pending_pop(struct upstream *up)
{
	struct creq *r = up->pend_head;
	if (r) {
		up->pend_head = r->next;
		if (!up->pend_head)
			up->pend_tail = NULL;
		up->npending--;
	}
	return r;
}

/* A client being freed goes once its last connection has closed. */
static void client_release(keel_http_client *c)
{
	if (c->stats.conns_open)
		return;
	while (c->ups) {
		struct upstream *u = c->ups;
		c->ups = u->next;
		free(u->name);
		free(u);
	}
	free(c);
}

static void idle_push(struct cconn *k)
{
	struct upstream *up = k->up;
	k->idle = true;
	k->idle_prev = NULL;
	k->idle_next = up->idle;
	if (up->idle)
		up->idle->idle_prev = k;
	up->idle = k;
	up->nidle++;
}

static void idle_remove(struct cconn *k)
{
	struct upstream *up = k->up;
	if (!k->idle)
		return;
	if (k->idle_prev)
		k->idle_prev->idle_next = k->idle_next;
	else
		up->idle = k->idle_next;
	if (k->idle_next)
		k->idle_next->idle_prev = k->idle_prev;
	k->idle = false;
	up->nidle--;
}

static void timer_set(struct cconn *k, int kind, uint64_t ms)
{
	keel_loop *loop = k->up->cl->loop;
	keel__timer_stop(loop, &k->timer);
	k->timer_kind = (uint8_t)kind;
	if (kind != T_OFF && ms)
		keel__timer_start(loop, &k->timer, ms);
}

static void response_reset(struct cconn *k)
{
	k->head_len = 0;
	k->head_done = false;
	k->body_len = 0;
	k->body_need = 0;
	k->got_bytes = false;
}

/* The connection is free: the next waiting request, or the idle list. */
static void conn_release(struct cconn *k)
{
	struct upstream *up = k->up;
	keel_http_client *c = up->cl;
	response_reset(k);
	if (!k->keep || k->closing || c->freeing) {
		conn_close(k);
		return;
	}
	struct creq *r = pending_pop(up);
	if (r) {
		k->reused = true;
		conn_send(k, r);
		return;
	}
	idle_push(k);
	timer_set(k, T_IDLE, c->cfg.idle_timeout_ms);
}

/* The request on k failed before its response completed. */
static void conn_fail(struct cconn *k, int err)
{
	struct creq *r = k->req;
	k->req = NULL;
	k->keep = false;
	if (r) {
		struct upstream *up = k->up;
		/*
		 * A reused connection that ends before any byte of the answer:
		 * the server closed it while idle as we sent. Safe to send again
		 * on a fresh connection if the method is idempotent.
		 */
		if (k->reused && !k->got_bytes && r->idempotent && !r->retried && !up->cl->freeing &&
		    (err == -ECONNRESET || err == -EPIPE)) {
			r->retried = true;
			up->cl->stats.retries++;
			conn_close(k);
			req_start(up, r);
			return;
		}
		req_settle(r, err, NULL);
	}
	conn_close(k);
}

static void conn_timeout(keel_loop *loop, keel__timer *t)
{
	(void)loop;
	struct cconn *k = (struct cconn *)((char *)t - offsetof(struct cconn, timer));
	int kind = k->timer_kind;
	k->timer_kind = T_OFF;
	if (kind == T_RESPONSE)
		conn_fail(k, -ETIMEDOUT);
	else
		conn_close(k); /* idle too long */
}

/* Build the caller's response: the head re-parsed over a copy, the body after it. */
static keel_http_client_response *response_build(struct cconn *k, struct creq *r)
{
	keel_http_client *c = k->up->cl;
	keel_http_client_response *resp = calloc(1, sizeof(*resp));
	size_t nh = k->msg.nheaders ? k->msg.nheaders : 1;
	char *mem = resp ? malloc(k->msg.head_len + k->body_len + nh * sizeof(keel_http_header)) : NULL;
	if (!mem) {
		free(resp);
		return NULL;
	}
	keel_http_header *hdrs = (keel_http_header *)mem;
	char *head = mem + nh * sizeof(keel_http_header);
	memcpy(head, k->head, k->msg.head_len);
	memcpy(head + k->msg.head_len, k->body, k->body_len);
	int rc = keel_http_parse_response(head, k->msg.head_len, 0, &resp->msg, hdrs, (unsigned)nh,
	                                  &c->cfg.limits, r->method);
	if (rc <= 0) {
		free(mem);
		free(resp);
		return NULL;
	}
	resp->status = resp->msg.status;
	resp->body.ptr = head + k->msg.head_len;
	resp->body.len = k->body_len;
	resp->mem_ = mem;
	return resp;
}

static void response_done(struct cconn *k)
{
	struct creq *r = k->req;
	keel_http_client *c = k->up->cl;
	k->req = NULL;
	timer_set(k, T_OFF, 0);
	keel_http_client_response *resp = response_build(k, r);
	c->stats.responses++;
	k->keep = k->keep && k->msg.keep_alive && k->msg.body != KEEL_HTTP_BODY_UNTIL_CLOSE;
	req_settle(r, resp ? 0 : -ENOMEM, resp);
	if (k->send_p) {
		k->release_due = true; /* answered early: the next request waits for this send */
		return;
	}
	conn_release(k);
}

static bool body_add(struct cconn *k, const char *p, size_t n)
{
	keel_http_client *c = k->up->cl;
	if (k->body_len + n > c->cfg.body_max)
		return false;
	if (k->body_len + n > k->body_cap) {
		size_t cap = k->body_cap ? k->body_cap * 2 : 4096;
		while (cap < k->body_len + n)
			cap *= 2;
		char *b = realloc(k->body, cap);
		if (!b)
			return false;
		k->body = b;
		k->body_cap = cap;
	}
	memcpy(k->body + k->body_len, p, n);
	k->body_len += n;
	return true;
}

/* Feed response bytes; returns false once k has been failed or released. */
static bool conn_feed(struct cconn *k, const char *data, size_t len)
{
	keel_http_client *c = k->up->cl;
	while (len && k->req) {
		if (!k->head_done) {
			size_t take = len, room = c->cfg.limits.head_max + 1 - k->head_len;
			if (take > room)
				take = room;
			if (k->head_len + take > k->head_cap) {
				size_t cap = k->head_cap ? k->head_cap * 2 : 1024;
				while (cap < k->head_len + take)
					cap *= 2;
				char *h = realloc(k->head, cap);
				if (!h) {
					conn_fail(k, -ENOMEM);
					return false;
				}
				k->head = h;
				k->head_cap = cap;
			}
			memcpy(k->head + k->head_len, data, take);
			size_t prev = k->head_len;
			k->head_len += take;
			if (!k->hdrs && !(k->hdrs = malloc(c->cfg.limits.headers_max * sizeof(*k->hdrs)))) {
				conn_fail(k, -ENOMEM);
				return false;
			}
			int rc = keel_http_parse_response(k->head, k->head_len, prev, &k->msg, k->hdrs,
			                                  c->cfg.limits.headers_max, &c->cfg.limits, k->req->method);
			if (rc == KEEL_HTTP_INCOMPLETE) {
				if (k->head_len > c->cfg.limits.head_max) {
					conn_fail(k, -EBADMSG);
					return false;
				}
				data += take;
				len -= take;
				continue;
			}
			if (rc < 0) {
				conn_fail(k, -EBADMSG);
				return false;
			}
			size_t extra = k->head_len - (size_t)rc; /* bytes after the head: the body's */
			data += take - extra;
			len -= take - extra;
			if (k->msg.status >= 100 && k->msg.status < 200) {
				if (k->msg.status == 101) {
					conn_fail(k, -EBADMSG); /* no upgrades asked for */
					return false;
				}
				k->head_len = 0; /* an interim response: the real one follows */
				continue;
			}
			k->head_done = true;
			switch (k->msg.body) {
			case KEEL_HTTP_BODY_NONE:
				if (len)
					k->keep = false; /* bytes nobody asked for: do not reuse */
				response_done(k);
				return true;
			case KEEL_HTTP_BODY_LENGTH:
				if (k->msg.content_length > c->cfg.body_max) {
					conn_fail(k, -EMSGSIZE);
					return false;
				}
				k->body_need = k->msg.content_length;
				if (!k->body_need) {
					if (len)
						k->keep = false;
					response_done(k);
					return true;
				}
				break;
			case KEEL_HTTP_BODY_CHUNKED:
				keel_http_chunked_init(&k->chunk, c->cfg.body_max);
				break;
			case KEEL_HTTP_BODY_UNTIL_CLOSE:
				break;
			}
			continue;
		}
		if (k->msg.body == KEEL_HTTP_BODY_LENGTH) {
			size_t n = len < k->body_need ? len : (size_t)k->body_need;
			if (!body_add(k, data, n)) {
				conn_fail(k, -EMSGSIZE);
				return false;
			}
			data += n;
			len -= n;
			k->body_need -= n;
			if (!k->body_need) {
				if (len)
					k->keep = false; /* bytes nobody asked for: do not reuse */
				response_done(k);
				return true;
			}
		} else if (k->msg.body == KEEL_HTTP_BODY_CHUNKED) {
			size_t used = 0;
			keel_str span;
			int rc = keel_http_chunked_decode(&k->chunk, data, len, &used, &span);
			data += used;
			len -= used;
			if (rc == KEEL_HTTP_CHUNK_DATA) {
				if (!body_add(k, span.ptr, span.len)) {
					conn_fail(k, -EMSGSIZE);
					return false;
				}
			} else if (rc == KEEL_HTTP_CHUNK_DONE) {
				if (len)
					k->keep = false;
				response_done(k);
				return true;
			} else if (rc != KEEL_HTTP_INCOMPLETE) {
				conn_fail(k, rc == KEEL_HTTP_E413 ? -EMSGSIZE : -EBADMSG);
				return false;
			}
		} else { /* until close */
			if (!body_add(k, data, len)) {
				conn_fail(k, -EMSGSIZE);
				return false;
			}
			len = 0;
		}
	}
	return true;
}

static int on_data(void *ud, keel_buf *buf)
{
	struct cconn *k = ud;
	if (k->closing)
		return KEEL_STOP;
	if (!k->req) {
		k->keep = false; /* the server spoke unasked: nothing it sends now can be trusted */
		idle_remove(k);
		conn_close(k);
		return KEEL_STOP;
	}
	k->got_bytes = true;
	return conn_feed(k, buf->data, buf->len) ? KEEL_CONTINUE : KEEL_STOP;
}

static void recv_ended(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct cconn *k = ud;
	k->recv = NULL;
	if (k->req && !k->closing) {
		if (o.err == 0 && k->head_done && k->msg.body == KEEL_HTTP_BODY_UNTIL_CLOSE) {
			k->keep = false;
			response_done(k); /* the close ends this body */
			return;
		}
		conn_fail(k, o.err && o.err != -ECANCELED ? o.err : -ECONNRESET);
		return;
	}
	idle_remove(k); /* the server closed an idle connection */
	conn_close(k);
}

static void send_done(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct cconn *k = ud;
	k->send_p = NULL;
	if (k->closing) {
		conn_close(k);
	} else if (o.err && k->req) {
		conn_fail(k, o.err);
	} else if (o.err) {
		k->release_due = false; /* answered, but the connection broke under the send */
		k->keep = false;
		conn_close(k);
	} else if (k->release_due) {
		k->release_due = false;
		conn_release(k);
	}
}

static void conn_send(struct cconn *k, struct creq *r)
{
	keel_http_client *c = k->up->cl;
	idle_remove(k);
	k->req = r;
	k->keep = true;
	response_reset(k);
	struct iovec v[2] = {{r->head, r->head_len}, {(void *)r->body.ptr, r->body.len}};
	k->send_p = keel_sendv(c->loop, k->fd, v, r->body.len ? 2 : 1);
	keel_promise_done(k->send_p, send_done, k);
	timer_set(k, T_RESPONSE, c->cfg.response_timeout_ms);
}

static void conn_closed(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	struct cconn *k = ud;
	struct upstream *up = k->up;
	keel_http_client *c = up->cl;
	if (k->prev)
		k->prev->next = k->next;
	else
		up->conns = k->next;
	if (k->next)
		k->next->prev = k->prev;
	up->nconns--;
	c->stats.conns_open--;
	free(k->head);
	free(k->hdrs);
	free(k->body);
	free(k);
	/* Room for a waiting request. */
	if (up->pend_head && !c->freeing && up->nconns < c->cfg.pool_max)
		req_start(up, pending_pop(up));
	if (c->freeing && !c->in_free)
		client_release(c);
}

static void conn_close(struct cconn *k)
{
	if (!k->closing) {
		k->closing = true;
		idle_remove(k);
		timer_set(k, T_OFF, 0);
		if (k->req) {
			struct creq *r = k->req;
			k->req = NULL;
			req_settle(r, k->up->cl->freeing ? -ECANCELED : -ECONNRESET, NULL);
		}
		if (k->connect_p)
			keel_promise_cancel(k->connect_p);
		if (k->recv)
			keel_promise_cancel(k->recv);
		if (k->send_p)
			keel_promise_cancel(k->send_p);
	}
	if (k->connect_p || k->recv || k->send_p || k->fd == -2)
		return;
	if (k->fd < 0) {
		k->fd = -2;
		conn_closed(NULL, keel_ok(0, NULL), k);
		return;
	}
	int fd = k->fd;
	k->fd = -2;
	keel_promise_done(keel_close(k->up->cl->loop, fd), conn_closed, k);
}

static void connect_done(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct cconn *k = ud;
	k->connect_p = NULL;
	if (o.err || k->closing) {
		if (!o.err)
			close((int)o.n); /* connected after all, but no longer wanted */
		conn_fail(k, o.err ? o.err : -ECANCELED);
		return;
	}
	k->fd = (int)o.n;
	k->recv = keel_recv_stream(k->up->cl->loop, k->fd, on_data, k);
	keel_promise_done(k->recv, recv_ended, k);
	struct creq *r = k->req;
	k->req = NULL;
	conn_send(k, r);
}

/* A request wants a connection: an idle one, a new one, or a place in the queue. */
static void req_start(struct upstream *up, struct creq *r)
{
	keel_http_client *c = up->cl;
	if (up->idle) {
		struct cconn *k = up->idle;
		k->reused = true;
		conn_send(k, r);
		return;
	}
	if (up->nconns >= c->cfg.pool_max) {
		if (up->npending >= c->cfg.pending_max && !r->retried) {
			c->stats.rejected_full++;
			req_settle(r, KEEL_ELIMIT, NULL);
			return;
		}
		r->next = NULL;
		if (up->pend_tail)
			up->pend_tail->next = r;
		else
			up->pend_head = r;
		up->pend_tail = r;
		up->npending++;
		return;
	}
	struct cconn *k = calloc(1, sizeof(*k));
	if (!k) {
		req_settle(r, -ENOMEM, NULL);
		return;
	}
	k->up = up;
	k->fd = -1;
	k->req = r; /* (sent once connected) */
	keel__timer_init(&k->timer, conn_timeout);
	k->next = up->conns;
	if (up->conns)
		up->conns->prev = k;
	up->conns = k;
	up->nconns++;
	c->stats.conns_open++;
	c->stats.connects++;
	k->connect_p = keel_connect(c->loop, (struct sockaddr *)&up->addr, up->addrlen, c->cfg.connect_timeout_ms);
	keel_promise_done(k->connect_p, connect_done, k);
}

void keel_http_client_response_free(keel_http_client_response *r)
{
	if (!r)
		return;
	free(r->mem_);
	free(r);
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
	c->freeing = true;
	c->in_free = true; /* connections closing right here must not free c under this loop */
	for (struct upstream *u = c->ups; u; u = u->next) {
		while (u->pend_head) {
			struct creq *r = u->pend_head;
			u->pend_head = r->next;
			req_settle(r, -ECANCELED, NULL);
		}
		u->pend_tail = NULL;
		u->npending = 0;
		for (struct cconn *k = u->conns, *next; k; k = next) {
			next = k->next;
			conn_close(k);
		}
	}
	c->in_free = false;
	client_release(c);
}
