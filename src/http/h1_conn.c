/*
 * HTTP/1.1 connections, one state machine per socket, driven by the
 * transport's receive stream (keel/transport.h: plain TCP today).
 *
 * Heads are parsed in place in the receive buffer (a head split across
 * buffers is first gathered into one heap copy); every request keeps the
 * buffers its spans point into until its response is sent. Requests go on
 * a per-connection queue in arrival order and are handed to the server
 * core (request.c); handlers may finish in any order, and h1_send.c writes
 * the oldest answered ones in one send. Every resource is bounded:
 * requests in flight per connection and unsent output (receiving pauses),
 * head and body sizes (414/431/413 before reading further), and time
 * (header, body, idle and send deadlines on the loop's timer heap).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/alloc.h"
#include "h1.h"
#include "keel/errors.h"
#include "keel/http.h"
#include "keel/http_parse.h"
#include "keel/tcp.h"
#include "keel/transport.h"

static void pump_later(keel_http_conn *c);
static void idle_update(keel_http_conn *c);
static void conn_put(keel_http_conn *c);
extern const struct keel__http_proto keel__h1_proto;

/* A request record for c, not yet queued (queued once its head has parsed). NULL on ENOMEM. */
static keel_http_request *req_new(keel_http_conn *c)
{
	return keel__req_new(c->s, c, &keel__h1_proto);
}

/* Queue r: responses leave in arrival order whatever order handlers finish in. */
static void req_queue(keel_http_conn *c, keel_http_request *r)
{
	if (c->qtail)
		c->qtail->next = r;
	else
		c->qhead = r;
	c->qtail = r;
	c->nreqs++;
}

void keel__h1_req_free(keel_http_conn *c, keel_http_request *r)
{
	keel__body_wait_reject(r, -ECANCELED); /* the response is out: the request ends here */
	if (c->cur == r)
		c->cur = NULL;
	c->out_pending -= r->out_bytes;
	keel__req_end(c->s, r);
}

static void req_hold(keel_http_request *r, keel_buf *buf)
{
	if (!buf)
		return;
	int i = r->hold[0] ? 1 : 0;
	if (r->hold[0] == buf || r->hold[1] == buf)
		return;
	keel_buf_hold(buf);
	r->hold[i] = buf;
}

/* An error answered by the server itself; the connection closes after it. */
static void req_error(keel_http_conn *c, keel_http_request *r, int status)
{
	if (!r) {
		if (!(r = req_new(c))) {
			keel__h1_conn_close(c); /* not even room to say so */
			return;
		}
		req_queue(c, r);
	}
	r->keep_alive = 0;
	keel__req_error_answer(r, status);
	if (c->cur == r)
		c->cur = NULL;
	c->no_more = true; /* whatever follows cannot be framed: read no further */
	if (status >= 500)
		c->s->stats.responses_5xx++;
	else
		c->s->stats.responses_4xx++;
}

/* ---- Input --------------------------------------------------------------- */

static bool want_close_after(keel_http_conn *c, keel_http_request *r)
{
	unsigned max = c->s->cfg.requests_per_conn_max;
	return !r->keep_alive || (max && c->served >= max) || c->draining;
}

static void cont_sent(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	keel_http_conn *c = ud;
	c->sending = false;
	c->send_p = NULL;
	if (o.err || c->closing) {
		keel__h1_conn_close(c);
		return;
	}
	keel__h1_timer_update(c);
	keel__h1_flush(c);
}

/*
 * 100 Continue for the request whose body is being read, once it is the
 * oldest one (earlier responses go first), through the same one-send-at-a-
 * time path as responses so nothing can overtake it.
 */
bool keel__h1_send_continue_if_due(keel_http_conn *c)
{
	static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
	keel_http_request *r = c->cur;
	if (!r || !r->want_continue || c->qhead != r || c->sending || c->closing)
		return false;
	r->want_continue = 0;
	c->sending = true;
	static const struct iovec v = {(void *)cont, sizeof(cont) - 1};
	c->send_p = keel_transport_sendv(&c->tp, &v, 1);
	keel_promise_done(c->send_p, cont_sent, c);
	return true;
}

/* A route that streams its body: the handler runs now and reads the body as it comes. */
static void req_stream_begin(keel_http_conn *c, keel_http_request *r, const struct route *rt)
{
	uint64_t max = c->s->cfg.body_stream_max;
	if (r->msg.body == KEEL_HTTP_BODY_LENGTH && max && r->msg.content_length > max) {
		req_error(c, r, 413); /* answered before reading the body */
		return;
	}
	r->stream_body = 1;
	if (r->msg.body == KEEL_HTTP_BODY_LENGTH) {
		r->body_need = r->msg.content_length;
		r->body_done = r->body_need == 0;
	} else {
		keel_http_chunked_init(&r->chunk, max);
		r->chunk.trailers_want = true;
	}
	if (!r->body_done)
		c->cur = r;
	c->s->stats.requests++;
	r->head_only = keel_str_eq(r->msg.method, "HEAD");
	keel__handler_call(r, rt);
}

/* A head was parsed: set up its body or dispatch it. */
static void req_begin(keel_http_conn *c, keel_http_request *r, size_t avail)
{
	c->served++;
	/* (an error answered before dispatch has no body either) */
	r->head_only = keel_str_eq(r->msg.method, "HEAD");
	r->keep_alive = r->msg.keep_alive;
	if (want_close_after(c, r)) {
		r->keep_alive = 0;
		c->no_more = true;
	}
	if (keel_str_eq(r->msg.method, "CONNECT")) {
		req_error(c, r, 501); /* no tunnels here: what follows is not HTTP */
		return;
	}
	if (r->msg.upgrade) {
		/*
		 * What follows may be another protocol's: this is the connection's
		 * last request as HTTP/1.1. Its handler may switch (a 101 from
		 * keel_ws_accept); any other answer closes the connection. Input
		 * after the head waits meanwhile, for the new protocol.
		 */
		c->no_more = true;
		if (r->msg.body == KEEL_HTTP_BODY_NONE)
			c->upgrading = true;
	}
	int st = keel__req_target(r);
	if (st) {
		req_error(c, r, st); /* a target that cannot be read one way only */
		return;
	}
	if (r->msg.body != KEEL_HTTP_BODY_NONE) {
		bool method_ok;
		const struct route *rt = keel__route_find(c->s, r, &method_ok);
		if (rt && rt->stream) {
			req_stream_begin(c, r, rt);
			return;
		}
	}
	switch (r->msg.body) {
	case KEEL_HTTP_BODY_LENGTH:
		if (r->msg.content_length > c->s->cfg.body_max) {
			req_error(c, r, 413); /* answered before reading the body */
			return;
		}
		c->cur = r;
		r->body_need = r->msg.content_length;
		r->body_len = 0;
		if (r->msg.expect_continue && avail < r->body_need)
			r->want_continue = 1;
		break;
	case KEEL_HTTP_BODY_CHUNKED:
		c->cur = r;
		r->body_len = 0;
		keel_http_chunked_init(&r->chunk, c->s->cfg.body_max);
		r->chunk.trailers_want = true;
		if (r->msg.expect_continue)
			r->want_continue = 1;
		break;
	default: keel__req_dispatch(r); break;
	}
}

/* Hand a piece of a streamed body to the reader waiting for it. */
static void body_give(keel_http_request *r, keel_buf *buf, const char *p, size_t n)
{
	keel_promise *w = r->body_wait;
	r->body_wait = NULL;
	if (n) {
		keel_buf_hold(buf);
		r->body_buf = buf;
	}
	r->piece.ptr = p;
	r->piece.len = n;
	keel_promise_resolve(w, 0, &r->piece);
}

/* The body of a streamed request cannot be framed any further. */
static void body_fail(keel_http_conn *c, keel_http_request *r, int err)
{
	r->body_err = err;
	r->keep_alive = 0;
	c->cur = NULL;
	c->no_more = true;
	keel__body_wait_reject(r, err);
}

/*
 * Feed a streamed body: one piece per waiting read (the caller checked
 * there is one, or that the rest is being discarded). Returns bytes consumed.
 */
static size_t body_stream(keel_http_conn *c, keel_buf *buf, const char *data, size_t len)
{
	keel_http_request *r = c->cur;
	keel_str piece = {NULL, 0};
	size_t used;
	bool end = false;
	if (r->msg.body == KEEL_HTTP_BODY_LENGTH) {
		used = len < r->body_need ? len : (size_t)r->body_need;
		piece.ptr = data;
		piece.len = used;
		r->body_need -= used;
		end = r->body_need == 0;
	} else {
		int rc = keel_http_chunked_decode(&r->chunk, data, len, &used, &piece);
		if (rc == KEEL_HTTP_CHUNK_TRAILER) {
			if (keel__req_trailer_raw(r, piece.ptr, piece.len)) { /* (bounded, even if dropped) */
				body_fail(c, r, -EMSGSIZE); /* a trailer section over the head's limits */
				return len;
			}
			return used;
		}
		if (rc == KEEL_HTTP_CHUNK_DONE) {
			end = true;
			if (keel__req_trailers_end(r)) {
				body_fail(c, r, -EMSGSIZE);
				return len;
			}
		} else if (rc != KEEL_HTTP_CHUNK_DATA && rc != KEEL_HTTP_INCOMPLETE) {
			body_fail(c, r, rc == KEEL_HTTP_E413 ? -EMSGSIZE : -EBADMSG);
			return len;
		}
	}
	if (piece.len && r->body_wait)
		body_give(r, buf, piece.ptr, piece.len);
	if (end) {
		r->body_done = 1;
		c->cur = NULL;
		if (r->body_wait)
			body_give(r, buf, NULL, 0);
	}
	return used;
}

/* Feed body bytes of c->cur; returns bytes consumed. */
static size_t body_feed(keel_http_conn *c, keel_buf *buf, const char *data, size_t len)
{
	keel_http_request *r = c->cur;
	if (r->stream_body)
		return body_stream(c, buf, data, len);
	int st;
	if (r->msg.body == KEEL_HTTP_BODY_LENGTH) {
		size_t n = len < r->body_need ? len : (size_t)r->body_need;
		if (r->body_len == 0 && n == r->body_need && buf) {
			/* The whole body is here: point at it. */
			req_hold(r, buf);
			r->body.ptr = data;
			r->body.len = n;
		} else if ((st = keel__req_body_append(c->s, r, data, n))) {
			req_error(c, r, st);
			return len;
		}
		r->body_need -= n;
		if (r->body_need == 0) {
			if (!r->body.ptr) {
				r->body.ptr = r->body_own;
				r->body.len = r->body_len;
			}
			c->cur = NULL;
			keel__req_dispatch(r);
		}
		return n;
	}
	size_t off = 0;
	while (off < len) {
		size_t used = 0;
		keel_str span;
		int rc = keel_http_chunked_decode(&r->chunk, data + off, len - off, &used, &span);
		off += used;
		if (rc == KEEL_HTTP_CHUNK_DATA) {
			if (!c->s->cfg.body_max) {
				/* body_max 0: no body, whatever its framing (the decoder's 0 is "no limit") */
				req_error(c, r, 413);
				return len;
			}
			if ((st = keel__req_body_append(c->s, r, span.ptr, span.len))) {
				req_error(c, r, st);
				return len;
			}
		} else if (rc == KEEL_HTTP_CHUNK_TRAILER) {
			if ((st = keel__req_trailer_raw(r, span.ptr, span.len))) {
				req_error(c, r, st);
				return len;
			}
		} else if (rc == KEEL_HTTP_CHUNK_DONE) {
			if ((st = keel__req_trailers_end(r))) {
				req_error(c, r, st);
				return len;
			}
			r->body.ptr = r->body_own;
			r->body.len = r->body_len;
			c->cur = NULL;
			keel__req_dispatch(r);
			return off;
		} else if (rc == KEEL_HTTP_INCOMPLETE) {
			return len;
		} else {
			req_error(c, r, rc == KEEL_HTTP_E413 ? 413 : 400);
			return len;
		}
	}
	return off;
}

static bool part_reserve(keel_http_conn *c, size_t need)
{
	if (need <= c->part_cap)
		return true;
	size_t cap = c->part_cap ? (size_t)c->part_cap * 2 : 2048;
	while (cap < need)
		cap *= 2;
	char *p = keel__realloc(c->part, cap);
	if (!p)
		return false;
	c->part = p;
	c->part_cap = (uint32_t)cap;
	return true;
}

/*
 * Parse and dispatch what buf holds from off on. Returns how far it got:
 * buf->len, or less when a streamed body's reader is not waiting (the rest
 * is then held back until it asks).
 */
static size_t conn_input(keel_http_conn *c, keel_buf *buf, size_t off)
{
	keel_http_server *s = c->s;
	const keel_http_limits *lim = &s->cfg.limits;
	const char *data = buf->data + off;
	size_t len = buf->len - off;
	bool blocked = false;

	/* no_more stops new requests, not the body of the one being read. */
	while (len && !c->closing && (c->cur || !c->no_more)) {
		if (c->cur) {
			keel_http_request *cr = c->cur;
			if (cr->stream_body && !cr->body_wait && !cr->body_discard) {
				blocked = true;
				break;
			}
			size_t n = body_feed(c, buf, data, len);
			data += n;
			len -= n;
			continue;
		}
		if (c->nreqs >= s->cfg.pipeline_max) {
			/*
			 * The pipelining limit holds exactly, whatever one buffer
			 * carries: the rest waits until responses drain. This also
			 * bounds the work one connection gets per tick.
			 */
			blocked = true;
			break;
		}
		keel_http_request *r;
		int rc;
		if (c->part_len) {
			/* A head in pieces: gather, bounded by the head limit (+1 to detect excess). */
			size_t take = len, cap = lim->head_max + 1 - c->part_len;
			if (take > cap)
				take = cap;
			if (!part_reserve(c, c->part_len + take)) {
				req_error(c, NULL, 500);
				break;
			}
			memcpy(c->part + c->part_len, data, take);
			size_t prev = c->part_len;
			c->part_len += (uint32_t)take;
			if (!(r = req_new(c))) {
				keel__h1_conn_close(c);
				break;
			}
			rc = keel_http_parse_request(c->part, c->part_len, prev, &r->msg, r->headers,
			                             lim->headers_max, lim);
			if (rc == KEEL_HTTP_INCOMPLETE) {
				keel__req_put(s, r); /* not a request yet */
				data += take;
				len -= take;
				continue;
			}
			req_queue(c, r);
			if (rc < 0) {
				r->head_only =
				    keel_str_eq(r->msg.method, "HEAD"); /* (no body, whatever the error) */
				req_error(c, r, -rc);
				break;
			}
			/* The head ended inside what we just took: give the rest back. */
			size_t extra = c->part_len - (size_t)rc;
			data += take - extra;
			len -= take - extra;
			r->own = c->part; /* the request's spans point here now */
			c->part = NULL;
			c->part_len = c->part_cap = 0;
			req_begin(c, r, len);
			continue;
		}
		if (!(r = req_new(c))) {
			keel__h1_conn_close(c);
			break;
		}
		rc = keel_http_parse_request(data, len, 0, &r->msg, r->headers, lim->headers_max, lim);
		if (rc == KEEL_HTTP_INCOMPLETE) {
			/* Keep the start of the head; it is gathered with what follows. */
			keel__req_put(s, r);
			if (!part_reserve(c, len)) {
				req_error(c, NULL, 500);
				break;
			}
			memcpy(c->part, data, len);
			c->part_len = (uint32_t)len;
			break;
		}
		req_queue(c, r);
		if (rc < 0) {
			req_hold(r, buf); /* the access log reads its spans later */
			r->head_only = keel_str_eq(r->msg.method, "HEAD"); /* (no body, whatever the error) */
			req_error(c, r, -rc);
			break;
		}
		req_hold(r, buf);
		data += rc;
		len -= (size_t)rc;
		req_begin(c, r, len);
	}
	if (len && c->upgrading && !c->closing)
		blocked = true; /* the next protocol's bytes, sent right behind the upgrade: held for it */
	keel__h1_timer_update(c);
	keel__h1_flush(c);
	return blocked ? (size_t)(data - buf->data) : buf->len;
}

/* Requests in flight and unsent answers are bounded per connection: past either, receiving pauses. */
static bool conn_full(const keel_http_conn *c)
{
	/* (A body being read must be read to the end, whatever the limit: it is not a new request.) */
	return (!c->cur && c->nreqs >= c->s->cfg.pipeline_max) || c->out_pending > c->s->cfg.conn_out_max;
}

bool keel__h1_conn_may_read(const keel_http_conn *c)
{
	return !c->inq_head && !c->recv && !c->closing && !c->eof && !c->lingering && !c->upgrading &&
	       !conn_full(c);
}

/*
 * The client's input ended (it may still read: a half-close). The requests
 * it completed are answered, then the connection closes; the one it cut off
 * cannot be: a head in pieces is dropped, a body read whole is answered 400,
 * and a streamed body's reader sees -ECONNRESET (its handler may still
 * answer).
 */
static void input_ended(keel_http_conn *c)
{
	c->no_more = true;
	c->part_len = 0; /* (the buffer stays: a request refused from it may still point there) */
	keel_http_request *r = c->cur;
	if (r && r->stream_body)
		body_fail(c, r, -ECONNRESET);
	else if (r)
		req_error(c, r, 400);
	if (c->nreqs == 0) {
		keel__h1_conn_close(c);
		return;
	}
	keel__h1_timer_update(c);
	keel__h1_flush(c);
}

/* Feed held-back input on, as far as readers allow; then read again if nothing is held. */
void keel__h1_conn_pump(keel_http_conn *c)
{
	while (c->inq_head && !c->closing) {
		keel_buf *b = c->inq_head;
		c->s->input_ns = c->held_ns;
		size_t off = conn_input(c, b, c->inq_off);
		c->s->input_ns = 0;
		if (c->closing)
			return; /* conn_close released the held input */
		if (off < b->len) {
			c->inq_off = (uint32_t)off;
			return;
		}
		c->inq_head = b->next;
		c->inq_off = 0;
		keel_buf_release(b);
	}
	if (c->eof && !c->closing) {
		input_ended(c);
		return;
	}
	if (keel__h1_conn_may_read(c))
		keel__h1_conn_read(c);
	keel__h1_timer_update(c);
	keel__h1_flush(c);
}

static void inq_push(keel_http_conn *c, keel_buf *buf, size_t off)
{
	keel_buf_hold(buf);
	buf->next = NULL;
	keel_buf **pp = &c->inq_head; /* a short list: the reader stops the receive at once */
	if (!*pp) {
		c->inq_off = (uint32_t)off;
		if (!c->held_ns)
			c->held_ns = keel_loop_now_ns(c->s->loop);
	}
	while (*pp)
		pp = &(*pp)->next;
	*pp = buf;
}

void keel__h1_inq_clear(keel_http_conn *c)
{
	while (c->inq_head) {
		keel_buf *b = c->inq_head;
		c->inq_head = b->next;
		keel_buf_release(b);
	}
	c->inq_off = 0;
}

static void pump_due(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	keel_http_conn *c = ud;
	c->pumping = false;
	if (c->closing) {
		keel__h1_conn_close(c);
		return;
	}
	keel__h1_conn_pump(c);
}

/*
 * Feed held-back input (or read again, or send 100 Continue) from the
 * ready queue: the reader's call may come from inside the input path.
 */
static void pump_later(keel_http_conn *c)
{
	if (c->pumping || c->closing)
		return;
	c->pumping = true;
	keel_promise *p = keel_promise_new(c->s->loop);
	keel_promise_resolve(p, 0, NULL);
	keel_promise_done(p, pump_due, c);
}

/* A waiting body read given up by its consumer (a keel_timeout around it, say). */
static void body_read_cancel(keel_promise *p, void *ud)
{
	keel_http_request *r = ud;
	if (r->body_wait == p) {
		r->body_wait = NULL;
		keel_promise_reject(p, -ECANCELED);
		if (r->conn)
			keel__h1_timer_update(r->conn); /* nobody waits: not the client's delay */
	}
}

/* Off the server's list of connections. */
static void conn_unlink(keel_http_conn *c)
{
	keel_http_server *s = c->s;
	if (c->prev)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->prev = c->next = NULL;
}

/*
 * The connection speaks HTTP/2 (ALPN agreed "h2", or it began with the
 * preface): it goes on as an HTTP/2 connection, which takes the transport.
 * This record leaves the server's lists at once (the connection stays
 * counted, as HTTP/2's) and lives on only until its receive has ended,
 * forwarding what that still delivers (recv_ended).
 */
static int h2_handover(keel_http_conn *c, keel_buf *buf)
{
	keel_http_server *s = c->s;
	struct keel__h2_conn *h = keel__h2_adopt(s, &c->tp, c->recv, &c->peer);
	if (!h) {
		keel__h1_conn_close(c);
		return KEEL_CONTINUE;
	}
	c->h2 = h;
	c->closing = true; /* (not counted in nclosing: the connection is not closing) */
	idle_update(c);
	keel_timer_disarm(s->loop, &c->timer);
	conn_unlink(c);
	keel__h2_input(h, buf);
	return KEEL_STOP;
}

/*
 * The 101 is out: the connection goes on as up's protocol, which takes the
 * transport and the input held since the request. The receive must have
 * stopped first (no completion may come back here); this record leaves the
 * server's lists, and the connection stays counted, as the new protocol's.
 */
void keel__h1_upgrade(keel_http_conn *c, struct keel__upgrade *up)
{
	keel_http_server *s = c->s;
	if (c->recv) {
		c->upgrade_due = up;
		keel_promise_cancel(c->recv); /* (recv_ended comes back here) */
		return;
	}
	keel_buf *held = c->inq_head;
	uint32_t off = c->inq_off;
	c->inq_head = NULL;
	c->inq_off = 0;
	c->closing = true; /* (not counted in nclosing: the connection is not closing) */
	idle_update(c);
	keel_timer_disarm(s->loop, &c->timer);
	conn_unlink(c);
	keel_transport tp = c->tp;
	char *peer = c->peer;
	c->peer = NULL;
	conn_put(c);
	up->adopt(up, s, &tp, held, off, peer);
}

static int on_data(void *ud, keel_buf *buf)
{
	keel_http_conn *c = ud;
	if (c->h2) {
		keel__h2_input(c->h2, buf); /* received before the stop took effect */
		return KEEL_CONTINUE;
	}
	if (c->s->cfg.http2 && !c->served && !c->nreqs && !c->part_len && !c->closing && !c->lingering &&
	    keel__h2_sniff(&c->tp, buf))
		return h2_handover(c, buf);
	if (c->upgrading && !c->closing && !c->lingering) {
		inq_push(c, buf, 0); /* after an upgrade's head: the next protocol's, if it switches */
		c->paused = true;
		return KEEL_STOP;
	}
	if (c->closing || c->lingering || (c->no_more && !c->cur && !c->inq_head))
		return KEEL_CONTINUE; /* past the last request we will answer: discard */
	if (c->inq_head) {
		inq_push(c, buf, 0); /* behind what is held back already (a stop is under way) */
		return KEEL_CONTINUE;
	}
	if (c->held_ns && keel_loop_now_ns(c->s->loop) - c->resumed_ns > 1000000)
		c->held_ns = 0;      /* not the backlog of the pause: that arrives right after the resume */
	c->s->input_ns = c->held_ns; /* (a backlog that waited in the kernel while paused) */
	size_t off = conn_input(c, buf, 0);
	c->s->input_ns = 0;
	if (buf->len < buf->cap && off == buf->len)
		c->held_ns = 0; /* a short read: nothing older is waiting */
	if (off < buf->len && !c->closing) {
		/* A streamed body's reader is busy, or the pipelining limit is reached: hold the rest. */
		inq_push(c, buf, off);
		c->paused = true;
		keel__h1_timer_update(c);
		return KEEL_STOP;
	}
	if (c->paced && !c->cur && !c->paused && !c->closing) {
		c->paused = true; /* the body is in: back to a multishot receive */
		return KEEL_STOP;
	}
	if (conn_full(c) && !c->paused && !c->closing) {
		c->paused = true; /* resumes as responses drain */
		if (!c->held_ns)
			c->held_ns = keel_loop_now_ns(c->s->loop);
		return KEEL_STOP;
	}
	return KEEL_CONTINUE;
}

/* A record off the server's lists goes back to the free list, with what it held. */
static void conn_put(keel_http_conn *c)
{
	keel_http_server *s = c->s;
	free(c->part);
	free(c->peer);
	if (c->tx)
		keel__h1_tx_put(s, c->tx);
	if (s->nfree_conns < CONN_FREE_MAX) {
		c->next = s->free_conns;
		s->free_conns = c;
		s->nfree_conns++;
	} else {
		free(c);
	}
}

static void recv_ended(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	keel_http_conn *c = ud;
	c->recv = NULL;
	if (c->upgrade_due) {
		struct keel__upgrade *up = c->upgrade_due;
		c->upgrade_due = NULL;
		if (o.err == -ECANCELED && !c->closing) {
			keel__h1_upgrade(c, up); /* stopped as asked: now the handover */
		} else {
			up->drop(up); /* the client's input ended (or failed) before the switch */
			keel__h1_conn_close(c);
		}
		return;
	}
	if (c->h2) {
		/* Handed over: the HTTP/2 connection receives on its own from now on. */
		struct keel__h2_conn *h = c->h2;
		conn_put(c);
		keel__h2_rx_handed(h, o.err);
		return;
	}
	if (c->closing || c->lingering) {
		keel__h1_conn_close(c); /* a lingering connection ends at the client's EOF */
		return;
	}
	if (o.err == -ECANCELED && c->paused) {
		if (keel__h1_conn_may_read(c))
			keel__h1_conn_read(c);
		return;
	}
	/* End of input (or an error): answer what was asked, then close. */
	c->eof = true;
	if (c->inq_head && !o.err)
		return; /* input is held back (a busy reader, the pipelining limit); its end is the EOF */
	if (o.err && o.err != -ECANCELED) {
		keel__h1_conn_close(c); /* a reset: nothing sent now would arrive */
		return;
	}
	input_ended(c);
}

void keel__h1_conn_read(keel_http_conn *c)
{
	c->paused = false;
	c->resumed_ns = keel_loop_now_ns(c->s->loop);
	/*
	 * While a streamed body is read, ask for one buffer at a time: a
	 * multishot receive would fill pool buffers as fast as the client
	 * sends, ahead of the reader, before a stop could take effect.
	 */
	c->paced = c->cur && c->cur->stream_body;
	c->recv = keel_transport_recv(&c->tp, on_data, c, c->paced);
	keel_promise_done(c->recv, recv_ended, c);
}

/* ---- Timers -------------------------------------------------------------- */

static void conn_timeout(keel_loop *loop, keel_timer *t)
{
	(void)loop;
	keel_http_conn *c = keel_container_of(t, keel_http_conn, timer);
	uint64_t now = keel_loop_now_ns(loop);
	if (!c->deadline_ns)
		return; /* the deadline went away since the timer was armed */
	if (now < c->deadline_ns) {
		/* It moved later since the timer was armed: arm for it now. */
		keel_timer_arm(loop, t, (c->deadline_ns - now + 999999) / 1000000);
		return;
	}
	c->timer_kind = T_NONE;
	c->deadline_ns = 0;
	/* slowloris, stalled body, idle keep-alive, or a reader that stopped reading */
	keel__h1_conn_close(c);
}

/*
 * Idle connections -- waiting for a first request, or kept alive between
 * requests -- sit on the server's list in the order they went idle. When
 * the connection limit is reached, or descriptors run out, the oldest are
 * closed to make room, instead of new clients waiting for their timeouts.
 */
static bool conn_is_idle(const keel_http_conn *c)
{
	return !c->closing && !c->lingering && !c->nreqs && !c->part_len && !c->cur && !c->inq_head &&
	       !c->sending;
}

static void idle_update(keel_http_conn *c)
{
	keel_http_server *s = c->s;
	bool idle = conn_is_idle(c);
	if (idle == c->idle)
		return;
	c->idle = idle;
	if (idle) {
		c->idle_ns = keel_loop_now_ns(s->loop);
		c->idle_next = NULL;
		c->idle_prev = s->idle_tail;
		if (s->idle_tail)
			s->idle_tail->idle_next = c;
		else
			s->idle_head = c;
		s->idle_tail = c;
		s->nidle++;
		keel_acceptor_idle(&s->acc);
		return;
	}
	if (c->idle_prev)
		c->idle_prev->idle_next = c->idle_next;
	else
		s->idle_head = c->idle_next;
	if (c->idle_next)
		c->idle_next->idle_prev = c->idle_prev;
	else
		s->idle_tail = c->idle_prev;
	c->idle_prev = c->idle_next = NULL;
	s->nidle--;
}

/*
 * The idle connection to close for room: the longest-idle one that has
 * been served (kept alive between requests) or has stayed silent since
 * accept for FRESH_GRACE_MS. A connection accepted a moment ago most likely
 * has its request on the way: closing it would reset that client for
 * nothing. Looks at the oldest few only (bounded work per accept).
 */
#define IDLE_PICK_SCAN 64
keel_http_conn *keel__h1_idle_pick(keel_http_server *s)
{
	uint64_t now = keel_loop_now_ns(s->loop);
	keel_http_conn *c = s->idle_head;
	for (int i = 0; c && i < IDLE_PICK_SCAN; i++, c = c->idle_next) {
		if (!c->served && now - c->idle_ns < FRESH_GRACE_MS * 1000000ull)
			continue;
		/* A request already in the kernel, not yet read: not idle, and closing it would reset it. */
		if (keel_transport_pending(&c->tp))
			continue;
		return c;
	}
	return NULL;
}

/* Close up to n of the longest-idle connections (idle_pick); returns how many. */
unsigned keel__h1_idle_reclaim(keel_http_server *s, unsigned n)
{
	unsigned done = 0;
	keel_http_conn *c;
	while (done < n && (c = keel__h1_idle_pick(s))) {
		s->stats.idle_closed++;
		keel__h1_conn_close(c); /* (leaves the list) */
		done++;
	}
	return done;
}

void keel__h1_timer_update(keel_http_conn *c)
{
	idle_update(c);
	if (c->closing || c->lingering)
		return;
	const keel_http_config *cfg = &c->s->cfg;
	int kind;
	uint64_t ms;
	if (c->sending && c->tx && c->tx->stream_state == 2) {
		kind = T_NONE; /* the producer is working: its own deadlines apply */
		ms = 0;
	} else if (c->sending) {
		kind = T_SEND;
		ms = cfg->send_timeout_ms;
	} else if (c->cur && c->cur->stream_body && (!c->cur->body_wait || c->inq_head)) {
		kind = T_NONE; /* the handler is not reading: not the client's delay */
		ms = 0;
	} else if (c->cur) {
		kind = T_BODY; /* re-armed on every call: a deadline between reads */
		ms = cfg->body_timeout_ms;
	} else if (c->part_len || (!c->nreqs && !c->served)) {
		/*
		 * One deadline for the whole head, the first one from accept (as
		 * nginx): a connection that never sends a byte must not be six
		 * times cheaper to hold than one that sends a byte.
		 */
		kind = T_HEADER;
		ms = cfg->header_timeout_ms;
	} else if (c->nreqs == 0) {
		kind = T_IDLE;
		ms = cfg->idle_timeout_ms;
	} else {
		kind = T_NONE; /* a handler is working: its own deadlines apply */
		ms = 0;
	}
	if (kind == c->timer_kind && (kind == T_HEADER || kind == T_IDLE || kind == T_SEND))
		return; /* one deadline for the whole head; idle and send run from their start */
	c->timer_kind = (uint8_t)kind;
	if (kind == T_NONE || !ms) {
		c->deadline_ns = 0; /* an armed timer will fire, find nothing due and stay off */
		return;
	}
	/*
	 * Lazy re-arming: a keep-alive request moves the deadline later at
	 * every state change, so the heap is touched only when the new
	 * deadline comes before the armed one; a timer that fires early
	 * re-arms itself for the real deadline (conn_timeout).
	 */
	keel_loop *loop = c->s->loop;
	uint64_t now = keel_loop_now_ns(loop);
	if (kind == T_HEADER && c->accepted_ns && !c->nreqs && !c->served) {
		/* The first head's deadline runs from accept, a PROXY header's time included. */
		uint64_t due = c->accepted_ns + ms * 1000000ull;
		ms = due > now ? (due - now + 999999) / 1000000 : 0;
	}
	c->deadline_ns = now + ms * 1000000ull;
	if (!keel_timer_is_armed(&c->timer) || keel_timer_deadline_ns(&c->timer) > c->deadline_ns)
		keel_timer_arm(loop, &c->timer, ms);
}

static void conn_closed(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	keel_http_conn *c = ud;
	keel_http_server *s = c->s;
	conn_unlink(c);
	conn_put(c);
	keel__server_conn_gone(s);
}

void keel__h1_conn_close(keel_http_conn *c)
{
	if (!c->closing) {
		c->closing = true;
		c->s->nclosing++;
		idle_update(c);
		keel_timer_disarm(c->s->loop, &c->timer);
		/* Handlers still working are asked to stop; their answers are discarded. */
		for (keel_http_request *r = c->qhead; r; r = r->next) {
			keel__body_wait_reject(r, -ECONNRESET);
			if (r->pending)
				keel_promise_cancel(r->pending);
		}
		keel__h1_inq_clear(c);
		if (c->recv)
			keel_promise_cancel(c->recv);
		if (c->send_p)
			keel_promise_cancel(c->send_p); /* a peer that stopped reading must not hold us */
	}
	/* Free only when nothing refers to the connection any more. */
	for (keel_http_request *r = c->qhead; r; r = r->next)
		if (r->pending)
			return;
	if (c->recv || c->sending || c->pumping || c->closed)
		return;
	while (c->qhead) {
		keel_http_request *r = c->qhead;
		c->qhead = r->next;
		keel__h1_req_free(c, r);
	}
	c->qtail = NULL;
	c->nreqs = 0;
	c->closed = true;
	keel_promise_done(keel_transport_close(&c->tp), conn_closed, c);
}

/* The client's address, host alone ("127.0.0.1", "::1"), looked up once per connection. */
const char *keel__h1_peer(keel_http_conn *c)
{
	return keel__conn_peer(&c->tp, &c->peer);
}

bool keel__h1_open(keel_http_server *s, int fd, char *peer, uint64_t accepted_ns)
{
	keel_http_conn *c = s->free_conns;
	if (c) {
		s->free_conns = c->next;
		s->nfree_conns--;
	} else if (!(c = keel__malloc(sizeof(*c)))) {
		free(peer);
		close(fd);
		return false;
	}
	memset(c, 0, sizeof(*c));
	c->s = s;
	c->peer = peer; /* (a PROXY header's address; NULL: looked up from the socket) */
	c->accepted_ns = accepted_ns;
	if (s->cfg.transport_init) {
		int err = s->cfg.transport_init(&c->tp, s->loop, fd, s->cfg.transport_ud);
		if (err < 0) {
			free(peer);
			c->peer = NULL;
			close(fd); /* refused by the transport: never a connection */
			c->next = s->free_conns;
			s->free_conns = c;
			s->nfree_conns++;
			return false;
		}
	} else {
		keel_tcp_transport_init(&c->tp, s->loop, fd);
	}
	keel_timer_init(&c->timer, conn_timeout);
	c->next = s->conns;
	if (s->conns)
		s->conns->prev = c;
	s->conns = c;
	keel__server_conn_opened(s);
	if (s->cfg.access_log_fd >= 0)
		keel__h1_peer(c);
	keel__h1_conn_read(c);
	keel__h1_timer_update(c);
	return true;
}

/* HTTP/1.1's side of keel_http_body_read: the next piece comes as the client sends it. */
static void h1_body_read(keel_http_request *r, keel_promise *p)
{
	keel_http_conn *c = r->conn;
	if (r->body_err || c->closing) {
		keel_promise_reject(p, r->body_err ? r->body_err : -ECONNRESET);
		return;
	}
	if (r->body_done) {
		r->piece.ptr = NULL;
		r->piece.len = 0;
		keel_promise_resolve(p, 0, &r->piece);
		return;
	}
	if (r->body_wait || r->body_discard) {
		keel_promise_reject(p, r->body_wait ? -EBUSY : -ECANCELED);
		return;
	}
	r->body_wait = p;
	keel_promise_on_cancel(p, body_read_cancel, r);
	if (!r->body_given && r->msg.expect_continue)
		r->want_continue = 1; /* the first read is the handler's interest in the body */
	r->body_given = 1;
	if (c->inq_head || r->want_continue || !c->recv)
		pump_later(c);
	keel__h1_timer_update(c); /* a reader is waiting now: the client's body deadline runs */
}

static void h1_handler_done(keel_http_request *r, keel_outcome o)
{
	keel_http_conn *c = r->conn;
	if (o.err == -ECANCELED && c->closing)
		keel__req_zombie(r, r->pending); /* cancelled, but its producer may still write to it */
	if (r->zombie) {
		/* Its answer is discarded, and its response is still the producer's: untouched. */
		r->pending = NULL;
		r->done = 1;
		keel__h1_conn_close(c);
		return;
	}
	keel__req_answer(r, o);
	if (c->closing) {
		keel__h1_conn_close(c); /* re-check: it may now be free of pending handlers */
		return;
	}
	keel__h1_flush(c);
}

static void h1_answered(keel_http_request *r)
{
	if (r->answer->file_fd < 0 && !r->answer->stream) {
		r->out_bytes = r->answer->body.len; /* files and streams are pulled as they go */
		((keel_http_conn *)r->conn)->out_pending += r->out_bytes;
	}
	if (r->stream_body && !r->body_done && !r->answer->stream) {
		/* Answered without a streamed response: the rest of the body is not wanted. */
		r->body_discard = 1;
		keel__body_wait_reject(r, -ECANCELED);
		pump_later(r->conn);
	}
}

static const char *h1_peer(keel_http_request *r)
{
	return keel__h1_peer(r->conn);
}

static bool h1_secure(keel_http_request *r)
{
	return ((keel_http_conn *)r->conn)->tp.ops->secure;
}

const struct keel__http_proto keel__h1_proto = {
    .handler_done = h1_handler_done,
    .answered = h1_answered,
    .body_read = h1_body_read,
    .peer = h1_peer,
    .secure = h1_secure,
};

/* Stopping: idle connections close now, the others once their last answer is out. */
#define DRAIN_FIRST_MS 1000
void keel__h1_drain_all(keel_http_server *s)
{
	uint64_t now = keel_loop_now_ns(s->loop);
	for (keel_http_conn *c = s->conns, *next; c; c = next) {
		next = c->next;
		c->draining = true;
		if (c->closing || c->nreqs || c->part_len || c->cur || c->upgrade_due)
			continue; /* closing already (its timer is off for good), a request to finish, or a
			             switch under way (the new protocol's to end) */
		if (c->served) {
			keel__h1_conn_close(c); /* idle between requests: nothing to finish */
			continue;
		}
		/*
		 * Accepted, no request yet: it is most likely on the way (a
		 * reload's old workers accepted it a moment ago). It gets
		 * DRAIN_FIRST_MS to arrive -- answered, then closed -- rather than
		 * a reset; a connection that has said nothing for that long goes.
		 */
		uint64_t due = now + DRAIN_FIRST_MS * 1000000ull;
		if (!c->deadline_ns || c->deadline_ns > due) {
			c->deadline_ns = due;
			keel_timer_arm(s->loop, &c->timer, DRAIN_FIRST_MS);
		}
	}
}

/* The grace period is over: every connection closes. */
void keel__h1_close_all(keel_http_server *s)
{
	for (keel_http_conn *c = s->conns, *next; c; c = next) {
		next = c->next;
		keel__h1_conn_close(c);
	}
}

/* The free lists of connections and send states down to keep each. */
void keel__h1_trim(keel_http_server *s, unsigned keep)
{
	while (s->nfree_conns > keep) {
		keel_http_conn *c = s->free_conns;
		s->free_conns = c->next;
		s->nfree_conns--;
		free(c);
	}
	while (s->nfree_tx > keep) {
		struct conn_tx *tx = s->free_tx;
		s->free_tx = tx->next;
		s->nfree_tx--;
		free(tx->out);
		free(tx);
	}
}
