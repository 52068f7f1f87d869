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
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/fault.h"
#include "core/internal.h"
#include "keel/errors.h"
#include "keel/file.h"
#include "keel/http_client.h"
#include "keel/tcp.h"
#include "put.h"

enum { T_OFF = 0, T_RESPONSE, T_IDLE };

/* A streamed request body: more pieces to read, or the last send in flight. */
enum { B_NONE = 0, B_MORE, B_LAST };

#define REQ_FREE_MAX 256 /* request records kept for reuse per client */

struct creq {
	struct creq *next;  /* the upstream's queue, or the client's free list */
	struct upstream *up;
	struct cconn *conn; /* the connection carrying it; NULL while queued */
	keel_promise *p;
	keel_http_client_request q; /* the caller's (its strings borrowed until settled) */
	keel_str method;
	bool idempotent, retried;
	bool cancelled; /* cancelled while its answer waited for its body's send to let go */
};

struct cconn {
	struct cconn *next, *prev;           /* the upstream's list of connections */
	struct cconn *idle_next, *idle_prev; /* its idle list, most recently used first */
	struct upstream *up;
	int fd;
	keel_promise *recv, *send_p, *connect_p;
	struct creq *req; /* the request whose response is awaited */
	struct creq *due_req; /* answered, settled when the send in flight ends */
	keel_http_client_response *due_resp;
	char *out;        /* the request head being sent */
	size_t out_cap;
	/* A streamed request body. */
	keel_promise *(*body_read)(void *);
	void *body_ud;
	keel_promise *body_rp; /* the producer's piece being waited for */
	int64_t body_left;     /* bytes still owed under Content-Length; -1: chunked */
	uint8_t body_out;      /* B_NONE, B_MORE, B_LAST */
	char chunk_head[24];
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
	/* A streamed response: handed to the caller, its body read from held input. */
	keel_http_client_response sresp;
	keel_buf *inq_head; /* received, not yet handed out */
	uint32_t inq_off;
	keel_buf *piece_buf; /* the buffer the last piece points into */
	keel_str piece;
	keel_promise *body_wait; /* a keel_http_client_body_read waiting for input */
	int body_err;
	bool attached;  /* the caller holds sresp */
	bool resp_done; /* its body is complete */
	bool paused;    /* the receive was stopped for a reader that is not reading */
	bool eof;
	int eof_err;    /* how the input ended, if not cleanly */
	bool paced;     /* the receive runs one buffer at a time (after a streamed response) */
	bool dead;      /* closed while attached: freed with the response */
	keel__timer timer;
	uint8_t timer_kind;
	bool idle, reused, got_bytes, closing, keep;
	/*
	 * The tick the request was given to this connection: its send reaches
	 * the kernel at the next one. Bytes received in the same tick cannot be
	 * its answer -- they were sent before it, after the last response, and
	 * would be taken for this one (response desync).
	 */
	uint64_t send_tick;
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
	/* A name is looked up off the loop (keel_resolve), and again after a connect fails. */
	bool addr_ok, named;
	keel_promise *resolving;
	struct sockaddr_storage rs;
};

struct keel_http_client {
	keel_loop *loop;
	keel_http_client_config cfg;
	struct upstream *ups;
	struct creq *free_reqs;
	unsigned nfree_reqs;
	unsigned resolving; /* lookups in flight (the client is freed after them) */
	keel_http_client_stats stats;
	bool freeing, in_free;
};

static void conn_close(struct cconn *k);
static void conn_send(struct cconn *k, struct creq *r);
static void client_release(keel_http_client *c);
static void conn_read(struct cconn *k);
static void maybe_release(struct cconn *k);
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
	keel_http_client *c = keel__calloc(1, sizeof(*c));
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

static void req_settle(struct creq *r, int err, keel_http_client_response *resp)
{
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

static struct upstream *upstream_get(keel_http_client *c, const char *name)
{
	for (struct upstream *u = c->ups; u; u = u->next)
		if (strcmp(u->name, name) == 0)
			return u;
	struct upstream *u = keel__calloc(1, sizeof(*u));
	if (!u)
		return NULL;
	u->cl = c;
	u->name = keel__malloc(strlen(name) + 1);
	if (u->name)
		strcpy(u->name, name);
	if (!u->name || !keel_hostport_valid(name)) {
		free(u->name);
		free(u);
		return NULL;
	}
	u->addr_ok = keel_addr_parse(name, &u->addr, &u->addrlen) == 0; /* else: looked up on first use */
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

/* Format r's head into k->out (kept for the connection's next requests). Returns its length or 0. */
static size_t format_head(struct cconn *k, const struct creq *r)
{
	const keel_http_client_request *q = &r->q;
	const char *target = q->target ? q->target : "/";
	const char *host = q->host ? q->host : q->upstream;
	size_t tl = strlen(target), hl = strlen(host);
	size_t cap = r->method.len + tl + hl + 96; /* (the fixed text below is 60 bytes at most) */
	for (unsigned i = 0; i < q->nheaders; i++)
		cap += q->headers[i].name.len + q->headers[i].value.len + 4;
	if (cap > k->out_cap) {
		char *o = keel__realloc(k->out, cap);
		if (!o)
			return 0;
		k->out = o;
		k->out_cap = cap;
	}
	char *h = k->out;
	h = keel__put(h, r->method.ptr, r->method.len);
	*h++ = ' ';
	h = keel__put(h, target, tl);
	h = KEEL__PUT_LIT(h, " HTTP/1.1\r\nHost: ");
	h = keel__put(h, host, hl);
	h = KEEL__PUT_LIT(h, "\r\n");
	for (unsigned i = 0; i < q->nheaders; i++) {
		const keel_http_header *x = &q->headers[i];
		h = keel__put(h, x->name.ptr, x->name.len);
		h = KEEL__PUT_LIT(h, ": ");
		h = keel__put(h, x->value.ptr, x->value.len);
		h = KEEL__PUT_LIT(h, "\r\n");
	}
	if (q->body_read && q->body_length < 0) {
		h = KEEL__PUT_LIT(h, "Transfer-Encoding: chunked\r\n");
	} else {
		uint64_t len = q->body_read ? (uint64_t)q->body_length : q->body.len;
		if (len || keel_str_eq(r->method, "POST") || keel_str_eq(r->method, "PUT") ||
		    keel_str_eq(r->method, "PATCH")) {
			h = KEEL__PUT_LIT(h, "Content-Length: ");
			h = keel__put_u64(h, len);
			h = KEEL__PUT_LIT(h, "\r\n");
		}
	}
	h = KEEL__PUT_LIT(h, "\r\n");
	return (size_t)(h - k->out);
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
		req_settle(r, -ECANCELED, NULL);
		conn_close(k);
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
	req_settle(r, -ECANCELED, NULL);
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

/*
 * The response timer runs only while we wait for the server: for the head
 * (unless the request body's producer is the one keeping us), and for the
 * next piece of a streamed body a reader is waiting for. A slow client on
 * the other side of a proxy is not the upstream's fault. Called at each
 * step, it also re-arms: the limit is on the wait between pieces.
 */
static void response_timer(struct cconn *k)
{
	bool waiting = k->req ? !k->body_rp : (k->attached && !k->resp_done && k->body_wait);
	if (waiting && !k->closing)
		timer_set(k, T_RESPONSE, k->up->cl->cfg.response_timeout_ms);
	else if (k->timer_kind == T_RESPONSE)
		timer_set(k, T_OFF, 0);
}

static void inq_clear(struct cconn *k)
{
	while (k->inq_head) {
		keel_buf *b = k->inq_head;
		k->inq_head = b->next;
		keel_buf_release(b);
	}
	k->inq_off = 0;
}

static void response_reset(struct cconn *k)
{
	k->head_len = 0;
	k->head_done = false;
	k->body_len = 0;
	k->body_need = 0;
	k->got_bytes = false;
	k->resp_done = false;
	k->body_err = 0;
}

/*
 * Whether a kept-alive connection may carry another request: nothing the
 * server sent since its last response is waiting unread (the kernel still
 * holds it while the receive was paused, or had no tick to report it) --
 * that would be read as the next request's answer -- and it has not closed.
 * One MSG_PEEK per reuse, when the connection is taken for a request;
 * what was already reported is the tick rule's (send_tick) and on_data's.
 */
static bool conn_clean(struct cconn *k)
{
	char b;
	ssize_t n = recv(k->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		return true;
	if (n > 0)
		k->up->cl->stats.unsolicited++;
	k->keep = false;
	return false;
}

/* The connection is free: the next waiting request, or the idle list. */
static void conn_release(struct cconn *k)
{
	struct upstream *up = k->up;
	keel_http_client *c = up->cl;
	response_reset(k);
	if (!k->keep || k->closing || c->freeing || k->eof) {
		conn_close(k);
		return;
	}
	struct creq *r = up->pend_head;
	if (r && !conn_clean(k)) {
		conn_close(k); /* (reused at once, it is checked now; an idle one when it is taken) */
		return;
	}
	if (k->paused && !k->recv)
		conn_read(k); /* watch the connection: what the server sends unasked closes it */
	if (r) {
		k->reused = true;
		conn_send(k, pending_pop(up));
		return;
	}
	idle_push(k);
	timer_set(k, T_IDLE, c->cfg.idle_timeout_ms);
}

/* Free once nothing is in flight and the caller is done with the response. */
static void maybe_release(struct cconn *k)
{
	if (k->req || k->attached || k->send_p || k->body_rp || k->closing || k->idle)
		return;
	conn_release(k);
}

/* The request on k failed before its response came. */
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
			r->conn = NULL;
			up->cl->stats.retries++;
			k->body_out = B_NONE;
			conn_close(k);
			req_start(up, r);
			return;
		}
		req_settle(r, err, NULL);
	}
	conn_close(k);
}

/* A streamed response's body failed: the reader hears it, the connection goes. */
static void body_fail(struct cconn *k, int err)
{
	if (!k->body_err)
		k->body_err = err;
	k->keep = false;
	if (k->body_wait) {
		keel_promise *p = k->body_wait;
		k->body_wait = NULL;
		keel_promise_reject(p, k->body_err);
	}
	conn_close(k);
}

static void conn_timeout(keel_loop *loop, keel__timer *t)
{
	(void)loop;
	struct cconn *k = (struct cconn *)((char *)t - offsetof(struct cconn, timer));
	int kind = k->timer_kind;
	k->timer_kind = T_OFF;
	if (kind == T_RESPONSE && k->req)
		conn_fail(k, -ETIMEDOUT);
	else if (kind == T_RESPONSE && k->attached)
		body_fail(k, -ETIMEDOUT);
	else
		conn_close(k); /* idle too long */
}

/* Build the caller's response: the head re-parsed over a copy, the body after it. */
static keel_http_client_response *response_build(struct cconn *k, struct creq *r)
{
	keel_http_client *c = k->up->cl;
	keel_http_client_response *resp = keel__calloc(1, sizeof(*resp));
	size_t nh = k->msg.nheaders ? k->msg.nheaders : 1;
	char *mem = resp ? keel__malloc(k->msg.head_len + k->body_len + nh * sizeof(keel_http_header)) : NULL;
	if (!mem) {
		free(resp);
		return NULL;
	}
	keel_http_header *hdrs = (keel_http_header *)mem;
	char *head = mem + nh * sizeof(keel_http_header);
	memcpy(head, k->head, k->msg.head_len);
	if (k->body_len)
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
	resp->loop_ = c->loop;
	return resp;
}

/*
 * A streamed request body still going when its response is complete: stop,
 * and do not reuse the connection. Returns true if a send of the
 * producer's bytes is still in the kernel (being cancelled): the request
 * must not be reported done before it lets go of them.
 */
static bool body_out_abort(struct cconn *k)
{
	if (k->body_out == B_NONE)
		return false;
	bool in_flight = k->send_p && !keel_promise_is_settled(k->send_p);
	if (k->body_out == B_LAST && !in_flight)
		return false; /* all of it is out (its completion not yet seen): reusable */
	k->body_out = B_NONE;
	k->keep = false;
	if (in_flight)
		keel_promise_cancel(k->send_p);
	return in_flight;
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
	if (body_out_abort(k)) {
		k->due_req = r; /* settled once the send has let go of the producer's piece */
		k->due_resp = resp;
		return;
	}
	req_settle(r, resp ? 0 : -ENOMEM, resp);
	maybe_release(k);
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
		char *b = keel__realloc(k->body, cap);
		if (!b)
			return false;
		k->body = b;
		k->body_cap = cap;
	}
	memcpy(k->body + k->body_len, p, n);
	k->body_len += n;
	return true;
}

/* ---- Streamed responses ---------------------------------------------------- */

/* The streamed body is complete: what follows it must not be there. */
static void stream_complete(struct cconn *k)
{
	keel_http_client *c = k->up->cl;
	k->resp_done = true;
	c->stats.responses++;
	if (k->inq_head && (k->inq_off < k->inq_head->len || k->inq_head->next))
		k->keep = false; /* bytes nobody asked for: do not reuse */
	inq_clear(k);
	timer_set(k, T_OFF, 0);
	k->keep = k->keep && k->msg.keep_alive && k->msg.body != KEEL_HTTP_BODY_UNTIL_CLOSE;
	body_out_abort(k);
}

/*
 * The next piece of a streamed body from the held input: 1 (*piece set,
 * its buffer held in k->piece_buf), 0 at the end, -1 when more input is
 * needed, or a negative errno.
 */
static int body_pump(struct cconn *k, keel_str *piece)
{
	if (k->resp_done)
		return 0;
	for (;;) {
		if (k->msg.body == KEEL_HTTP_BODY_LENGTH && !k->body_need) {
			stream_complete(k);
			return 0;
		}
		keel_buf *b = k->inq_head;
		if (!b)
			break;
		const char *data = b->data + k->inq_off;
		size_t avail = b->len - k->inq_off;
		if (!avail) {
			k->inq_head = b->next;
			k->inq_off = 0;
			keel_buf_release(b);
			continue;
		}
		if (k->msg.body == KEEL_HTTP_BODY_LENGTH) {
			size_t n = avail < k->body_need ? avail : (size_t)k->body_need;
			piece->ptr = data;
			piece->len = n;
			k->inq_off += (uint32_t)n;
			k->body_need -= n;
			if (!k->body_need) {
				keel_buf_hold(b); /* (the piece's, over stream_complete's release of the queue) */
				k->piece_buf = b;
				stream_complete(k); /* known now: the caller may free without asking again */
				return 1;
			}
		} else if (k->msg.body == KEEL_HTTP_BODY_CHUNKED) {
			size_t used = 0;
			int rc = keel_http_chunked_decode(&k->chunk, data, avail, &used, piece);
			k->inq_off += (uint32_t)used;
			if (rc == KEEL_HTTP_CHUNK_DONE) {
				stream_complete(k);
				return 0;
			}
			if (rc == KEEL_HTTP_INCOMPLETE)
				continue;
			if (rc != KEEL_HTTP_CHUNK_DATA)
				return -EBADMSG;
		} else {
			piece->ptr = data;
			piece->len = avail;
			k->inq_off += (uint32_t)avail;
		}
		if (k->inq_off == b->len) {
			k->inq_head = b->next; /* all taken: the piece keeps the queue's reference */
			k->inq_off = 0;
		} else {
			keel_buf_hold(b);
		}
		k->piece_buf = b;
		return 1;
	}
	if (k->eof && k->msg.body == KEEL_HTTP_BODY_UNTIL_CLOSE && !k->eof_err) {
		stream_complete(k);
		return 0;
	}
	if (k->eof)
		return k->eof_err && k->eof_err != -ECANCELED ? k->eof_err : -ECONNRESET; /* cut off */
	return -1;
}

/* Give a waiting reader what the held input has; returns false if k failed. */
static bool body_deliver(struct cconn *k)
{
	if (!k->body_wait)
		return true;
	if (k->piece_buf) {
		keel_buf_release(k->piece_buf);
		k->piece_buf = NULL;
	}
	int rc = body_pump(k, &k->piece);
	if (rc == -1)
		return true;
	if (rc < 0) {
		body_fail(k, rc);
		return false;
	}
	keel_promise *p = k->body_wait;
	k->body_wait = NULL;
	if (rc == 0)
		k->piece = (keel_str){NULL, 0};
	keel_promise_resolve(p, 0, &k->piece);
	response_timer(k); /* the reader has it: its pace is not the server's */
	return true;
}

/* The head of a streamed response is in: hand it over with what came of the body. */
static void stream_start(struct cconn *k, keel_buf *buf, size_t off)
{
	struct creq *r = k->req;
	keel_http_client *c = k->up->cl;
	k->req = NULL;
	r->conn = NULL;
	k->attached = true;
	k->sresp = (keel_http_client_response){0};
	k->sresp.status = k->msg.status;
	k->sresp.msg = k->msg; /* its spans point into k->head, which stays until the free */
	k->sresp.conn_ = k;
	k->sresp.loop_ = c->loop;
	if (k->msg.body == KEEL_HTTP_BODY_NONE) {
		k->resp_done = true;
		c->stats.responses++;
		k->keep = k->keep && k->msg.keep_alive;
		if (off < buf->len)
			k->keep = false;
		timer_set(k, T_OFF, 0);
		body_out_abort(k);
	} else {
		if (k->msg.body == KEEL_HTTP_BODY_LENGTH)
			k->body_need = k->msg.content_length;
		else if (k->msg.body == KEEL_HTTP_BODY_CHUNKED)
			keel_http_chunked_init(&k->chunk, UINT64_MAX);
		if (off < buf->len) {
			keel_buf_hold(buf);
			buf->next = NULL;
			k->inq_head = buf;
			k->inq_off = (uint32_t)off;
		}
		int rc = body_pump(k, &k->sresp.body);
		if (rc < 0 && rc != -1) {
			k->body_err = rc; /* the head is good; the reader hears of the body's fault */
			k->keep = false;
		}
	}
	response_timer(k); /* (off until a reader asks for more) */
	req_settle(r, 0, &k->sresp);
}

/* A waiting body read given up by its consumer: it stops waiting (the response stays usable). */
static void body_read_cancel(keel_promise *p, void *ud)
{
	struct cconn *k = ud;
	if (k->body_wait == p) {
		k->body_wait = NULL;
		keel_promise_reject(p, -ECANCELED);
		response_timer(k);
	}
}

keel_promise *keel_http_client_body_read(keel_http_client_response *resp)
{
	struct cconn *k = resp->conn_;
	if (!k) {
		/* A response read whole: one piece, then the end. */
		keel_promise *p = keel_promise_new(resp->loop_);
		static const keel_str end = {NULL, 0};
		keel_promise_resolve(p, 0, resp->given_ ? (void *)&end : &resp->body);
		resp->given_ = true;
		return p;
	}
	keel_promise *p = keel_promise_new(resp->loop_);
	if (k->piece_buf) {
		keel_buf_release(k->piece_buf); /* the previous piece is done with */
		k->piece_buf = NULL;
	}
	if (k->dead || k->body_err || (k->closing && !k->resp_done)) {
		keel_promise_reject(p, k->body_err ? k->body_err : -ECONNRESET);
		return p;
	}
	if (k->body_wait) {
		keel_promise_reject(p, -EBUSY);
		return p;
	}
	int rc = body_pump(k, &k->piece);
	if (rc >= 0) {
		if (rc == 0)
			k->piece = (keel_str){NULL, 0};
		keel_promise_resolve(p, 0, &k->piece);
		return p;
	}
	if (rc != -1) {
		keel_promise_reject(p, rc);
		body_fail(k, rc);
		return p;
	}
	k->body_wait = p;
	keel_promise_on_cancel(p, body_read_cancel, k);
	if (!k->recv)
		conn_read(k);
	response_timer(k);
	return p;
}

/* ---- Input ----------------------------------------------------------------- */

/* Feed response bytes from buf; returns false once k has been failed or released. */
static bool conn_feed(struct cconn *k, keel_buf *buf)
{
	keel_http_client *c = k->up->cl;
	const char *data = buf->data;
	size_t len = buf->len;
	while (len && k->req) {
		if (!k->head_done) {
			size_t take = len, room = c->cfg.limits.head_max + 1 - k->head_len;
			if (take > room)
				take = room;
			if (k->head_len + take > k->head_cap) {
				size_t cap = k->head_cap ? k->head_cap * 2 : 1024;
				while (cap < k->head_len + take)
					cap *= 2;
				char *h = keel__realloc(k->head, cap);
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
			if (!k->hdrs && !(k->hdrs = keel__malloc(c->cfg.limits.headers_max * sizeof(*k->hdrs)))) {
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
			if (k->req->q.stream_response) {
				stream_start(k, buf, (size_t)(data - buf->data));
				return true;
			}
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
	if (k->attached && !k->resp_done) {
		/* A streamed body: queue it for the reader. */
		keel_buf_hold(buf);
		buf->next = NULL;
		keel_buf **pp = &k->inq_head; /* a short list: the receive pauses at two */
		unsigned queued = 1;
		for (; *pp; pp = &(*pp)->next)
			queued++;
		*pp = buf;
		if (!body_deliver(k))
			return KEEL_STOP;
		/*
		 * One buffer may wait for a reader that is busy with the last
		 * piece (a paced receive brings at most one more); two mean it
		 * is slower than the server: stop reading until it asks.
		 */
		if (queued >= 2 && k->inq_head && !k->body_wait && !k->resp_done) {
			k->paused = true; /* the reader is busy: read on when it asks */
			return KEEL_STOP;
		}
		return KEEL_CONTINUE;
	}
	if (!k->req) {
		k->keep = false; /* the server spoke unasked: nothing it sends now can be trusted */
		k->up->cl->stats.unsolicited++;
		idle_remove(k);
		if (!k->attached)
			conn_close(k);
		return KEEL_STOP;
	}
	if (k->up->cl->loop->stats.ticks == k->send_tick) {
		/*
		 * Bytes before our request went out: not its answer but what the
		 * server sent after the last one. The connection cannot be trusted;
		 * the request is tried again elsewhere if that is safe.
		 */
		k->up->cl->stats.unsolicited++;
		conn_fail(k, -ECONNRESET);
		return KEEL_STOP;
	}
	k->got_bytes = true;
	if (!conn_feed(k, buf))
		return KEEL_STOP;
	if (k->req)
		response_timer(k); /* progress on the head or a whole body: the wait starts again */
	if (k->attached && !k->resp_done && !k->body_wait) {
		k->paused = true; /* the body goes on past this buffer; its reader has not asked yet */
		return KEEL_STOP;
	}
	return KEEL_CONTINUE;
}

static void recv_ended(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct cconn *k = ud;
	k->recv = NULL;
	if (k->closing) {
		conn_close(k);
		return;
	}
	if (o.err == -ECANCELED && k->paused) {
		if (k->body_wait || !k->attached)
			conn_read(k); /* asked for more, released or reused while the stop was settling */
		return;
	}
	if (k->req) {
		if (o.err == 0 && k->head_done && k->msg.body == KEEL_HTTP_BODY_UNTIL_CLOSE) {
			k->keep = false;
			response_done(k); /* the close ends this body */
			return;
		}
		conn_fail(k, o.err && o.err != -ECANCELED ? o.err : -ECONNRESET);
		return;
	}
	if (k->attached && !k->resp_done) {
		/* The input ended under a streamed body: the reader drains what is held first. */
		k->eof = true;
		k->eof_err = o.err;
		k->keep = false;
		body_deliver(k);
		return;
	}
	k->eof = true;
	k->keep = false;
	idle_remove(k); /* the server closed an idle connection */
	if (!k->attached)
		conn_close(k);
}

static void conn_read(struct cconn *k)
{
	keel_loop *loop = k->up->cl->loop;
	k->paused = false;
	/*
	 * Once a response has been streamed, read one buffer at a time: a
	 * multishot receive would fill pool buffers ahead of a slow reader.
	 */
	k->paced = k->paced || k->attached;
	k->recv = k->paced ? keel_recv_stream_paced(loop, k->fd, on_data, k) : keel_recv_stream(loop, k->fd, on_data, k);
	keel_promise_done(k->recv, recv_ended, k);
}

/* ---- Output ---------------------------------------------------------------- */

static void body_next(struct cconn *k);

/* The request body's producer failed (its client went away): the request cannot complete. */
static void body_src_fail(struct cconn *k, int err)
{
	k->body_out = B_NONE;
	k->keep = false;
	if (k->req)
		conn_fail(k, err);
	else if (k->attached && !k->resp_done)
		body_fail(k, err);
	else
		conn_close(k);
}

static void send_done(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct cconn *k = ud;
	k->send_p = NULL;
	if (k->due_req) {
		struct creq *r = k->due_req; /* answered while its body was still going out */
		keel_http_client_response *resp = k->due_resp;
		k->due_req = NULL;
		k->due_resp = NULL;
		if (r->cancelled) {
			keel_http_client_response_free(resp);
			req_settle(r, -ECANCELED, NULL);
		} else {
			req_settle(r, resp ? 0 : -ENOMEM, resp);
		}
	}

	if (k->closing) {
		conn_close(k);
		return;
	}
	if (o.err) {
		k->keep = false;
		k->body_out = B_NONE;
		if (k->req)
			conn_fail(k, o.err);
		else if (!k->attached)
			conn_close(k); /* answered, but the connection broke under the send */
		return;            /* (a streamed response may still arrive whole) */
	}
	if (k->body_out == B_LAST)
		k->body_out = B_NONE;
	if (k->body_out == B_MORE) {
		body_next(k);
		return;
	}
	maybe_release(k);
}

static void body_piece(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct cconn *k = ud;
	keel_http_client *c = k->up->cl;
	k->body_rp = NULL;
	if (k->closing) {
		conn_close(k);
		return;
	}
	if (k->body_out != B_MORE) {
		maybe_release(k); /* the response came whole first: the rest is not wanted */
		return;
	}
	if (o.err) {
		body_src_fail(k, o.err);
		return;
	}
	static const char crlf[] = "\r\n", last_chunk[] = "0\r\n\r\n";
	keel_str *piece = o.ptr;
	struct iovec v[3];
	int n = 0;
	bool chunked = k->body_left < 0;
	if (piece && piece->len) {
		if (!chunked && (uint64_t)piece->len > (uint64_t)k->body_left) {
			body_src_fail(k, -EMSGSIZE); /* more than the Content-Length said */
			return;
		}
		if (chunked) {
			v[n].iov_base = k->chunk_head;
			v[n++].iov_len = (size_t)snprintf(k->chunk_head, sizeof(k->chunk_head), "%zx\r\n", piece->len);
		}
		v[n].iov_base = (void *)piece->ptr;
		v[n++].iov_len = piece->len;
		if (chunked) {
			v[n].iov_base = (void *)crlf;
			v[n++].iov_len = sizeof(crlf) - 1;
		} else if (!(k->body_left -= (int64_t)piece->len)) {
			k->body_out = B_LAST;
		}
	} else if (chunked) {
		v[n].iov_base = (void *)last_chunk;
		v[n++].iov_len = sizeof(last_chunk) - 1;
		k->body_out = B_LAST;
	} else {
		body_src_fail(k, -EPIPE); /* fewer bytes than the Content-Length said */
		return;
	}
	k->send_p = keel_sendv(c->loop, k->fd, v, n);
	keel_promise_done(k->send_p, send_done, k);
	response_timer(k); /* progress */
}

static void body_next(struct cconn *k)
{
	keel_promise *p = k->body_read(k->body_ud);
	if (!p) {
		body_src_fail(k, -ENOMEM);
		return;
	}
	k->body_rp = p;
	keel_promise_done(p, body_piece, k);
	response_timer(k); /* the producer's turn (a client uploading through a proxy, say) */
}

static void conn_send(struct cconn *k, struct creq *r)
{
	keel_http_client *c = k->up->cl;
	const keel_http_client_request *q = &r->q;
	idle_remove(k);
	k->req = r;
	r->conn = k;
	k->keep = true;
	k->send_tick = c->loop->stats.ticks;
	response_reset(k);
	size_t hl = format_head(k, r);
	if (!hl) {
		conn_fail(k, -ENOMEM);
		return;
	}
	if (q->body_read && q->body_length) {
		k->body_read = q->body_read;
		k->body_ud = q->body_ud;
		k->body_left = q->body_length;
		k->body_out = B_MORE; /* the head first, then piece by piece */
		k->send_p = keel_send(c->loop, k->fd, k->out, hl);
	} else {
		k->body_out = B_NONE;
		struct iovec v[2] = {{k->out, hl}, {(void *)q->body.ptr, q->body.len}};
		k->send_p = keel_sendv(c->loop, k->fd, v, !q->body_read && q->body.len ? 2 : 1);
	}
	keel_promise_done(k->send_p, send_done, k);
	if (k->paused && !k->recv)
		conn_read(k);
	response_timer(k);
}

static void conn_free(struct cconn *k)
{
	if (k->piece_buf)
		keel_buf_release(k->piece_buf);
	inq_clear(k);
	free(k->out);
	free(k->head);
	free(k->hdrs);
	free(k->body);
	free(k);
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
	if (k->attached)
		k->dead = true; /* the caller still holds its response: freed with it */
	else
		conn_free(k);
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
		int err = k->up->cl->freeing ? -ECANCELED : -ECONNRESET;
		if (k->req) {
			struct creq *r = k->req;
			k->req = NULL;
			req_settle(r, err, NULL);
		}
		if (k->attached && !k->resp_done) {
			if (!k->body_err)
				k->body_err = err;
			if (k->body_wait) {
				keel_promise *p = k->body_wait;
				k->body_wait = NULL;
				keel_promise_reject(p, k->body_err);
			}
		}
		if (k->connect_p)
			keel_promise_cancel(k->connect_p);
		if (k->recv)
			keel_promise_cancel(k->recv);
		if (k->send_p)
			keel_promise_cancel(k->send_p);
		if (k->body_rp)
			keel_promise_cancel(k->body_rp);
	}
	if (k->connect_p || k->recv || k->send_p || k->body_rp || k->fd == -2)
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
		if (o.err && o.err != -ECANCELED && k->up->named)
			k->up->addr_ok = false; /* look the name up again: it may have moved */
		conn_fail(k, o.err == -ETIMEDOUT ? KEEL_ECONNTIMEDOUT : o.err ? o.err : -ECANCELED);
		return;
	}
	k->fd = (int)o.n;
	int one = 1; /* a request body's last piece must not wait for an ACK (Nagle) */
	setsockopt(k->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	conn_read(k);
	struct creq *r = k->req;
	k->req = NULL;
	conn_send(k, r);
}

static void upstream_resolve(struct upstream *up);


/* A request wants a connection: an idle one, a new one, or a place in the queue. */
static void req_start(struct upstream *up, struct creq *r)
{
	keel_http_client *c = up->cl;
	while (up->idle) {
		struct cconn *k = up->idle;
		if (!conn_clean(k)) {
			conn_close(k); /* (leaves the idle list) */
			continue;
		}
		k->reused = true;
		conn_send(k, r);
		return;
	}
	if (up->nconns >= c->cfg.pool_max || !up->addr_ok) {
		if (!up->addr_ok)
			upstream_resolve(up); /* the request waits in the queue for the address */
		if (up->npending >= c->cfg.pending_max && !r->retried) {
			c->stats.rejected_full++;
			req_settle(r, KEEL_ELIMIT, NULL);
			return;
		}
		r->conn = NULL;
		r->next = NULL;
		if (up->pend_tail)
			up->pend_tail->next = r;
		else
			up->pend_head = r;
		up->pend_tail = r;
		up->npending++;
		return;
	}
	struct cconn *k = keel__calloc(1, sizeof(*k));
	if (!k) {
		req_settle(r, -ENOMEM, NULL);
		return;
	}
	k->up = up;
	k->fd = -1;
	k->req = r; /* (sent once connected) */
	r->conn = k;
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

static void resolved(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct upstream *up = ud;
	keel_http_client *c = up->cl;
	up->resolving = NULL;
	c->resolving--;
	if (c->freeing) {
		if (!c->in_free)
			client_release(c);
		return;
	}
	if (o.err) {
		/* Nothing to connect to: the requests waiting for it fail alike. */
		struct creq *r;
		while ((r = pending_pop(up)))
			req_settle(r, o.err, NULL);
		return;
	}
	memcpy(&up->addr, &up->rs, (size_t)o.n);
	up->addrlen = (socklen_t)o.n;
	up->addr_ok = true;
	while (up->pend_head && up->nconns < c->cfg.pool_max)
		req_start(up, pending_pop(up));
}

static void upstream_resolve(struct upstream *up)
{
	if (up->resolving)
		return;
	up->cl->resolving++;
	up->resolving = keel_resolve(up->cl->loop, up->name, &up->rs);
	keel_promise_done(up->resolving, resolved, up);
}

void keel_http_client_response_free(keel_http_client_response *r)
{
	if (!r)
		return;
	struct cconn *k = r->conn_;
	if (!k) {
		free(r->mem_);
		free(r);
		return;
	}
	/* A streamed response is part of its connection. */
	k->attached = false;
	r->conn_ = NULL;
	if (k->piece_buf) {
		keel_buf_release(k->piece_buf);
		k->piece_buf = NULL;
	}
	if (k->dead) {
		conn_free(k);
		return;
	}
	if (k->body_wait) {
		keel_promise *p = k->body_wait;
		k->body_wait = NULL;
		keel_promise_reject(p, -ECANCELED);
	}
	/* What is already here may finish the body (a chunked body's last chunk, say). */
	keel_str rest;
	while (!k->resp_done && !k->body_err && body_pump(k, &rest) == 1) {
		keel_buf_release(k->piece_buf);
		k->piece_buf = NULL;
	}
	if (!k->resp_done || !k->keep) {
		k->keep = false;
		conn_close(k); /* given up mid-body: the rest would be mistaken for the next response */
		return;
	}
	inq_clear(k);
	maybe_release(k);
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
		if (u->resolving)
			keel_promise_cancel(u->resolving);
		for (struct cconn *k = u->conns, *next; k; k = next) {
			next = k->next;
			conn_close(k);
		}
	}
	c->in_free = false;
	client_release(c);
}
