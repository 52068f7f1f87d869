/*
 * What the files of the HTTP/1.1 client share: its four records and the
 * calls between the rooms. client.c is the API and a request's life
 * (checked, queued, settled, cancelled); client_pool.c the connections to
 * each upstream (reaching it, idle, reuse, close); client_write.c a
 * request going out; client_read.c its response coming in; client_stream.c
 * a response handed over before its body is in.
 */
#ifndef KEEL_HTTP_CLIENT_INTERNAL_H
#define KEEL_HTTP_CLIENT_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "keel/buf.h"
#include "keel/http_client.h"
#include "keel/timer.h"
#include "keel/transport.h"
#include "keel/util.h"

/* What a connection's timer is running for. */
enum { T_OFF = 0, T_RESPONSE, T_IDLE };

/* A streamed request body: more pieces to read, or the last send in flight. */
enum { B_NONE = 0, B_MORE, B_LAST };

/* A request, from its send to its settling. */
struct creq {
	struct creq *next; /* the upstream's queue, or the client's free list */
	struct upstream *up;
	struct cconn *conn; /* the connection carrying it; NULL while queued */
	keel_promise *p;
	keel_http_client_request q; /* the caller's (its strings borrowed until settled) */
	keel_str method;
	bool idempotent, retried;
	bool cancelled; /* cancelled while it waited for its body's send to let go (due_req) */
};

/* A connection to an upstream: one request at a time, then idle or closed. */
struct cconn {
	struct cconn *next, *prev;           /* the upstream's list of connections */
	struct cconn *idle_next, *idle_prev; /* its idle list, most recently used first */
	struct upstream *up;
	unsigned addr, tries; /* which of up->addrs it connects to, and how many it has tried */
	uint32_t addr_tag;    /* that address's tag (addr indexes a list a lookup may replace) */
	keel_transport tp;    /* the byte stream, once connected: plain TCP or cfg.transport_init's */
	keel_promise *recv, *send_p, *connect_p;
	struct creq *req; /* the request whose response is awaited */
	/*
	 * A request that ended (answered, failed or cancelled) while a send of
	 * its caller's bytes was still in the kernel: settled with due_resp or
	 * due_err when that send lets go of them, never before.
	 */
	struct creq *due_req;
	keel_http_client_response *due_resp;
	int due_err;
	char *out; /* the request head being sent */
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
	char *tr; /* its chunked body's trailer section as it came, bounded by limits.head_max */
	uint32_t tr_len, tr_cap;
	keel_http_header *tr_fields; /* a streamed response's trailers (sresp.trailers) */
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
	int eof_err; /* how the input ended, if not cleanly */
	bool paced;  /* the receive runs one buffer at a time (after a streamed response) */
	bool dead;   /* closed while attached: freed with the response */
	keel_timer timer;
	uint8_t timer_kind;
	bool idle, reused, got_bytes, closing, keep;
	bool connected; /* tp is set up: closed through it */
	bool upgraded;  /* a 101 is in: the connection goes to the caller once nothing of ours is in flight */
	bool closed;    /* the close was issued (conn_closed comes next) */
	/*
	 * The tick the request was given to this connection: its send reaches
	 * the kernel at the next one. Bytes received in the same tick cannot be
	 * its answer -- they were sent before it, after the last response, and
	 * would be taken for this one (response desync).
	 */
	uint64_t send_tick;
};

/* A switched connection held by its 101 response (keel_http_client_response_upgraded). */
struct keel__client_upgrade {
	keel_transport tp;
	keel_buf *held;
	uint32_t off;
	bool eof;
};

/* One "HOST:PORT": its address, its connections, the requests waiting for one. */
#define UPSTREAM_ADDRS 8 /* of a name's addresses, the first ones kept */

struct upstream {
	struct upstream *next;
	keel_http_client *cl;
	char *name;
	char *host; /* name's HOST, unbracketed ("localhost": unix:), for cfg.transport_init and the Host
	               header of a Unix socket's server (in name's allocation) */
	/* Its addresses: a numeric one, or every one of a name's (new connections go round them) */
	struct sockaddr_storage addrs[UPSTREAM_ADDRS];
	socklen_t lens[UPSTREAM_ADDRS];
	unsigned naddrs, next_addr;
	uint64_t addr_down[UPSTREAM_ADDRS]; /* an address whose connect failed is skipped until then */
	uint64_t resolved_ns;               /* a name's last lookup: again after cfg.resolve_interval_ms */
	struct cconn *conns;                /* all of them */
	struct cconn *idle;                 /* the idle ones, most recently used first */
	unsigned nconns, nidle;
	struct creq *pend_head, *pend_tail;
	unsigned npending;
	/*
	 * A name is looked up off the loop (keel_resolve_all): on first use,
	 * again once a connect to every address failed, and every
	 * resolve_interval_ms (then in the background: the old addresses serve
	 * until the answer).
	 */
	bool addr_ok, named;
	keel_promise *resolving;
	struct sockaddr_storage rs[UPSTREAM_ADDRS];
};

/* The client: its upstreams and the request records kept for reuse. */
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

/* ---- client.c ---- */

/* r's promise settles: rejected with err if not 0, else resolved with resp. r is recycled. */
void keel__http_client_req_settle(struct creq *r, int err, keel_http_client_response *resp);
/* A client being freed goes once its last connection has closed and its last lookup ended. */
void keel__http_client_release(keel_http_client *c);

/* Whether k's send in flight still reads r's caller's bytes (a whole body, or a producer's piece). */
static inline bool keel__http_client_body_lent(const struct cconn *k, const struct creq *r)
{
	return k->send_p && !keel_promise_is_settled(k->send_p) &&
	       (r->q.body.len || (r->q.body_read && r->q.body_length));
}

/* ---- client_pool.c ---- */

/* A request wants a connection: an idle one, a new one, or a place in the queue. */
void keel__http_client_req_start(struct upstream *up, struct creq *r);
/*
 * Close k: the request it carries fails, its ops are cancelled, and it is
 * unlinked and freed once they have all ended (it is called again as each
 * ends). A streamed response the caller still holds keeps its memory.
 */
void keel__http_client_conn_close(struct cconn *k);
/* The request on k failed before its response came: tried again elsewhere if safe, or settled. */
void keel__http_client_conn_fail(struct cconn *k, int err);
/* k is free once nothing is in flight and the caller is done with the response: reused or idled. */
void keel__http_client_maybe_release(struct cconn *k);
void keel__http_client_conn_free(struct cconn *k);

/* ---- client_write.c ---- */

/* r goes out on k, which is connected and carries no other request. */
void keel__http_client_conn_send(struct cconn *k, struct creq *r);
/*
 * A streamed request body still going when its response is complete: stop,
 * and do not reuse the connection. Returns true if a send of the
 * producer's bytes is still in the kernel (being cancelled): the request
 * must not be reported done before it lets go of them.
 */
bool keel__http_client_body_out_abort(struct cconn *k);

/* ---- client_read.c ---- */

/* Start k's receive: once connected, and again after a pause. */
void keel__http_client_conn_read(struct cconn *k);
/* After a 101: once k's receive and send have ended, its request resolves and the connection is the caller's. */
void keel__http_client_upgrade_try(struct cconn *k);
/*
 * The response timer runs only while we wait for the server: for the head
 * (unless the request body's producer is the one keeping us), and for the
 * next piece of a streamed body a reader is waiting for. A slow client on
 * the other side of a proxy is not the upstream's fault. Called at each
 * step, it also re-arms: the limit is on the wait between pieces.
 */
void keel__http_client_response_timer(struct cconn *k);

/* ---- client_stream.c ---- */

/* The head of a streamed response is in: hand it over with what came of the body (buf from off). */
void keel__http_client_stream_start(struct cconn *k, keel_buf *buf, size_t off);
/* Give a waiting reader what the held input has; returns false if k failed. */
bool keel__http_client_body_deliver(struct cconn *k);
/* A chunked response's trailer section: a piece as it came (false: over the limit), a new response. */
bool keel__http_client_trailer_add(struct cconn *k, keel_str span);
void keel__http_client_trailers_reset(struct cconn *k);
/* A streamed response's body failed: the reader hears it, the connection goes. */
void keel__http_client_body_fail(struct cconn *k, int err);
/* Drop the input held for a streamed body's reader. */
void keel__http_client_inq_clear(struct cconn *k);

/* ---- Small steps on every request's path, inline where they are taken ---- */

static inline void keel__http_client_timer_set(struct cconn *k, int kind, uint64_t ms)
{
	keel_loop *loop = k->up->cl->loop;
	keel_timer_disarm(loop, &k->timer);
	k->timer_kind = (uint8_t)kind;
	if (kind != T_OFF && ms)
		keel_timer_arm(loop, &k->timer, ms);
}

static inline void keel__http_client_idle_remove(struct cconn *k)
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

static inline void keel__http_client_response_reset(struct cconn *k)
{
	k->head_len = 0;
	k->head_done = false;
	k->body_len = 0;
	k->body_need = 0;
	k->got_bytes = false;
	k->resp_done = false;
	k->body_err = 0;
}

#endif
