/*
 * The HTTP/1.1 client's connections to each upstream: reaching it (a name
 * looked up, a connect), the idle list, reuse, failure and close, and the
 * queue of requests waiting for a connection.
 *
 * A connection keeps its multishot receive running for its whole life, so
 * a pooled idle connection that the server closes is seen (EOF) and dropped
 * at once rather than found dead by the next request.
 *
 * Once connected, every byte of a connection goes through the transport it
 * embeds (keel/transport.h), set up here: plain TCP, or what
 * cfg.transport_init makes of the socket (TLS).
 */
#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "client_internal.h"
#include "core/alloc.h"
#include "keel/errors.h"
#include "keel/tcp.h"
#include "keel/transport.h"

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

/*
 * Whether a kept-alive connection may carry another request: nothing the
 * server sent since its last response is waiting unread (the kernel still
 * holds it while the receive was paused, or had no tick to report it) --
 * that would be read as the next request's answer -- and it has not closed.
 * One peek per reuse (plain TCP: one MSG_PEEK), when the connection is
 * taken for a request; what was already reported is the tick rule's
 * (send_tick) and on_data's.
 */
static bool conn_clean(struct cconn *k)
{
	int st = keel_transport_peek(&k->tp);
	if (st == 0)
		return true;
	if (st > 0)
		k->up->cl->stats.unsolicited++;
	k->keep = false;
	return false;
}

/* The connection is free: the next waiting request, or the idle list. */
static void conn_release(struct cconn *k)
{
	struct upstream *up = k->up;
	keel_http_client *c = up->cl;
	keel__http_client_response_reset(k);
	if (!k->keep || k->closing || c->freeing || k->eof) {
		keel__http_client_conn_close(k);
		return;
	}
	struct creq *r = up->pend_head;
	if (r && !conn_clean(k)) {
		/* (Reused at once, it is checked now; an idle one when it is taken.) */
		keel__http_client_conn_close(k);
		return;
	}
	/* Watch the connection: what the server sends unasked closes it. */
	if (k->paused && !k->recv)
		keel__http_client_conn_read(k);
	if (r) {
		k->reused = true;
		keel__http_client_conn_send(k, pending_pop(up));
		return;
	}
	idle_push(k);
	keel__http_client_timer_set(k, T_IDLE, c->cfg.idle_timeout_ms);
}

void keel__http_client_maybe_release(struct cconn *k)
{
	if (k->req || k->attached || k->send_p || k->body_rp || k->closing || k->idle)
		return;
	conn_release(k);
}

void keel__http_client_conn_fail(struct cconn *k, int err)
{
	struct creq *r = k->req;
	k->req = NULL;
	k->keep = false;
	if (r) {
		struct upstream *up = k->up;
		/*
		 * A reused connection that ends before any byte of the answer:
		 * the server closed it while idle as we sent. Safe to send again
		 * on a fresh connection if the method is idempotent -- and once
		 * the old send has let go of the body (lent: the request could
		 * settle on the new connection while the kernel still read it).
		 */
		if (k->reused && !k->got_bytes && r->idempotent && !r->retried && !up->cl->freeing &&
		    !keel__http_client_body_lent(k, r) && (err == -ECONNRESET || err == -EPIPE)) {
			r->retried = true;
			r->conn = NULL;
			up->cl->stats.retries++;
			k->body_out = B_NONE;
			keel__http_client_conn_close(k);
			keel__http_client_req_start(up, r);
			return;
		}
		keel__http_client_req_settle(r, err, NULL);
	}
	keel__http_client_conn_close(k);
}

static void conn_timeout(keel_loop *loop, keel_timer *t)
{
	(void)loop;
	struct cconn *k = keel_container_of(t, struct cconn, timer);
	int kind = k->timer_kind;
	k->timer_kind = T_OFF;
	if (kind == T_RESPONSE && k->req)
		keel__http_client_conn_fail(k, -ETIMEDOUT);
	else if (kind == T_RESPONSE && k->attached)
		keel__http_client_body_fail(k, -ETIMEDOUT);
	else
		keel__http_client_conn_close(k); /* idle too long */
}

void keel__http_client_conn_free(struct cconn *k)
{
	if (k->piece_buf)
		keel_buf_release(k->piece_buf);
	keel__http_client_inq_clear(k);
	free(k->out);
	free(k->head);
	free(k->hdrs);
	free(k->body);
	free(k->tr);
	free(k->tr_fields);
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
		keel__http_client_conn_free(k);
	/* Room for a waiting request. */
	if (up->pend_head && !c->freeing && up->nconns < c->cfg.pool_max)
		keel__http_client_req_start(up, pending_pop(up));
	if (c->freeing && !c->in_free)
		keel__http_client_release(c);
}

void keel__http_client_conn_close(struct cconn *k)
{
	if (!k->closing) {
		k->closing = true;
		keel__http_client_idle_remove(k);
		keel__http_client_timer_set(k, T_OFF, 0);
		int err = k->up->cl->freeing ? -ECANCELED : -ECONNRESET;
		if (k->req) {
			struct creq *r = k->req;
			k->req = NULL;
			keel__http_client_req_settle(r, err, NULL);
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
	if (k->connect_p || k->recv || k->send_p || k->body_rp || k->closed)
		return;
	k->closed = true;
	if (!k->connected) {
		conn_closed(NULL, keel_ok(0, NULL), k); /* never connected: nothing to close */
		return;
	}
	keel_promise_done(keel_transport_close(&k->tp), conn_closed, k);
}

#define ADDR_DOWN_MS 10000 /* an address of a name whose connect failed is skipped this long */

/* An address's tag: to know a connection's address in a list a later lookup replaced. */
static uint32_t addr_tag(const struct sockaddr_storage *a, socklen_t len)
{
	const unsigned char *p = (const unsigned char *)a;
	uint32_t h = 2166136261u; /* FNV-1a */
	for (socklen_t i = 0; i < len; i++)
		h = (h ^ p[i]) * 16777619u;
	return h;
}

/* The address the next new connection goes to: round the ones not marked down (all down: round all). */
static unsigned addr_pick(struct upstream *up)
{
	uint64_t now = keel_loop_now_ns(up->cl->loop);
	for (unsigned j = 0; j < up->naddrs; j++) {
		unsigned i = (up->next_addr + j) % up->naddrs;
		if (up->addr_down[i] <= now) {
			up->next_addr = i + 1;
			return i;
		}
	}
	return up->next_addr++ % up->naddrs;
}

/* A connect error that says nothing was sent and another address may do: try it. */
static bool connect_retryable(int err)
{
	return err == -ECONNREFUSED || err == -ETIMEDOUT || err == -EHOSTUNREACH || err == -ENETUNREACH ||
	       err == -EADDRNOTAVAIL || err == -EAFNOSUPPORT;
}

static void connect_done(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct cconn *k = ud;
	k->connect_p = NULL;
	struct upstream *upp = k->up;
	if (o.err && connect_retryable(o.err) && !k->closing && upp->naddrs > 1) {
		if (k->addr < upp->naddrs &&
		    addr_tag(&upp->addrs[k->addr], upp->lens[k->addr]) == k->addr_tag)
			upp->addr_down[k->addr] = keel_loop_now_ns(upp->cl->loop) + ADDR_DOWN_MS * 1000000ull;
		if (k->tries < upp->naddrs) {
			/* A name's other addresses, one after another, before the connect fails (nothing was sent). */
			k->addr = (k->addr + 1) % upp->naddrs;
			k->addr_tag = addr_tag(&upp->addrs[k->addr], upp->lens[k->addr]);
			k->tries++;
			k->connect_p = keel_connect(upp->cl->loop, (struct sockaddr *)&upp->addrs[k->addr],
			                            upp->lens[k->addr], upp->cl->cfg.connect_timeout_ms);
			keel_promise_done(k->connect_p, connect_done, k);
			return;
		}
	}
	if (o.err || k->closing) {
		if (!o.err)
			close((int)o.n); /* connected after all, but no longer wanted */
		if (o.err && o.err != -ECANCELED && k->up->named)
			k->up->addr_ok = false; /* look the name up again: it may have moved */
		int err = o.err == -ETIMEDOUT ? KEEL_ECONNTIMEDOUT : o.err ? o.err : -ECANCELED;
		keel__http_client_conn_fail(k, err);
		return;
	}
	int fd = (int)o.n;
	struct upstream *up = k->up;
	keel_http_client *c = up->cl;
	if (k->addr < up->naddrs && addr_tag(&up->addrs[k->addr], up->lens[k->addr]) == k->addr_tag)
		up->addr_down[k->addr] = 0; /* (it answers again) */
	if (c->cfg.transport_init) {
		int err = c->cfg.transport_init(&k->tp, c->loop, fd, c->cfg.transport_ud, up->host);
		if (err < 0) {
			close(fd); /* refused by the transport: the connect fails with its error */
			keel__http_client_conn_fail(k, err);
			return;
		}
	} else {
		keel_tcp_transport_init(&k->tp, c->loop, fd); /* (TCP_NODELAY: no wait for an ACK) */
	}
	k->connected = true;
	keel__http_client_conn_read(k);
	struct creq *r = k->req;
	k->req = NULL;
	keel__http_client_conn_send(k, r);
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
			keel__http_client_release(c);
		return;
	}
	up->resolved_ns = keel_loop_now_ns(c->loop);
	if (o.err && up->addr_ok)
		return; /* a lookup in the background failed: the addresses known serve on */
	if (o.err) {
		/* Nothing to connect to: the requests waiting for it fail alike. */
		struct creq *r;
		while ((r = pending_pop(up)))
			keel__http_client_req_settle(r, o.err, NULL);
		return;
	}
	up->naddrs = (unsigned)o.n;
	uint32_t tags[UPSTREAM_ADDRS];
	for (unsigned i = 0; i < up->naddrs; i++) {
		up->addrs[i] = up->rs[i];
		up->lens[i] = up->rs[i].ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
		                                              : sizeof(struct sockaddr_in);
		up->addr_down[i] = 0;
		tags[i] = addr_tag(&up->addrs[i], up->lens[i]);
	}
	up->addr_ok = true;
	/* Connections to an address the name no longer has: no more requests on them. */
	for (struct cconn *k = up->conns, *next; k; k = next) {
		next = k->next;
		bool kept = false;
		for (unsigned i = 0; i < up->naddrs && !kept; i++)
			kept = tags[i] == k->addr_tag;
		if (kept || k->connect_p)
			continue;
		k->keep = false;
		if (k->idle)
			keel__http_client_conn_close(k);
	}
	while (up->pend_head && up->nconns < c->cfg.pool_max)
		keel__http_client_req_start(up, pending_pop(up));
}

static void upstream_resolve(struct upstream *up)
{
	if (up->resolving)
		return;
	up->cl->resolving++;
	up->resolving = keel_resolve_all(up->cl->loop, up->name, up->rs, UPSTREAM_ADDRS);
	keel_promise_done(up->resolving, resolved, up);
}

void keel__http_client_req_start(struct upstream *up, struct creq *r)
{
	keel_http_client *c = up->cl;
	uint64_t every = c->cfg.resolve_interval_ms;
	if (up->named && up->addr_ok && every &&
	    keel_loop_now_ns(c->loop) - up->resolved_ns >=
	        (every < UINT64_MAX / 1000000 ? every * 1000000 : UINT64_MAX))
		upstream_resolve(up); /* (in the background: the addresses known serve until the answer) */
	while (up->idle) {
		struct cconn *k = up->idle;
		if (!conn_clean(k)) {
			keel__http_client_conn_close(k); /* (leaves the idle list) */
			continue;
		}
		k->reused = true;
		keel__http_client_conn_send(k, r);
		return;
	}
	if (up->nconns >= c->cfg.pool_max || !up->addr_ok) {
		if (!up->addr_ok)
			upstream_resolve(up); /* the request waits in the queue for the address */
		if (up->npending >= c->cfg.pending_max && !r->retried) {
			c->stats.rejected_full++;
			keel__http_client_req_settle(r, KEEL_ELIMIT, NULL);
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
		keel__http_client_req_settle(r, -ENOMEM, NULL);
		return;
	}
	k->up = up;
	k->addr = addr_pick(up); /* (a name's addresses share the new connections) */
	k->addr_tag = addr_tag(&up->addrs[k->addr], up->lens[k->addr]);
	k->tries = 1;
	k->req = r; /* (sent once connected) */
	r->conn = k;
	keel_timer_init(&k->timer, conn_timeout);
	k->next = up->conns;
	if (up->conns)
		up->conns->prev = k;
	up->conns = k;
	up->nconns++;
	c->stats.conns_open++;
	c->stats.connects++;
	k->connect_p = keel_connect(c->loop, (struct sockaddr *)&up->addrs[k->addr], up->lens[k->addr],
	                            c->cfg.connect_timeout_ms);
	keel_promise_done(k->connect_p, connect_done, k);
}
