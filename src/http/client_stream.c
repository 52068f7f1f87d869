/*
 * A response handed to the caller once its head is in, its body read piece
 * by piece straight from the receive buffers the connection holds: the
 * connection reads from the server only while the caller asks for more.
 * Also the caller's side of any response: reading its body, freeing it.
 */
#include <errno.h>
#include <stdlib.h>

#include "client_internal.h"
#include "core/alloc.h"

void keel__http_client_inq_clear(struct cconn *k)
{
	while (k->inq_head) {
		keel_buf *b = k->inq_head;
		k->inq_head = b->next;
		keel_buf_release(b);
	}
	k->inq_off = 0;
}

void keel__http_client_body_fail(struct cconn *k, int err)
{
	if (!k->body_err)
		k->body_err = err;
	k->keep = false;
	if (k->body_wait) {
		keel_promise *p = k->body_wait;
		k->body_wait = NULL;
		keel_promise_reject(p, k->body_err);
	}
	keel__http_client_conn_close(k);
}

/* The streamed body is complete: what follows it must not be there. */
/* A streamed response's trailers, once its body is whole: fields over the section kept in k->tr. */
static int trailers_end(struct cconn *k)
{
	unsigned n = keel_http_trailers_parse(k->tr, k->tr_len, NULL, 0);
	if (!n)
		return 0;
	if (!(k->tr_fields = keel__malloc(n * sizeof(*k->tr_fields))))
		return -ENOMEM;
	k->sresp.ntrailers = keel_http_trailers_parse(k->tr, k->tr_len, k->tr_fields, n);
	k->sresp.trailers = k->tr_fields;
	return 0;
}

static void stream_complete(struct cconn *k)
{
	keel_http_client *c = k->up->cl;
	k->resp_done = true;
	c->stats.responses++;
	if (k->inq_head && (k->inq_off < k->inq_head->len || k->inq_head->next))
		k->keep = false; /* bytes nobody asked for: do not reuse */
	keel__http_client_inq_clear(k);
	keel__http_client_timer_set(k, T_OFF, 0);
	k->keep = k->keep && k->msg.keep_alive && k->msg.body != KEEL_HTTP_BODY_UNTIL_CLOSE;
	keel__http_client_body_out_abort(k);
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
				/* (the piece's, over stream_complete's release of the queue) */
				keel_buf_hold(b);
				k->piece_buf = b;
				stream_complete(k); /* known now: the caller may free without asking again */
				return 1;
			}
		} else if (k->msg.body == KEEL_HTTP_BODY_CHUNKED) {
			size_t used = 0;
			int rc = keel_http_chunked_decode(&k->chunk, data, avail, &used, piece);
			k->inq_off += (uint32_t)used;
			if (rc == KEEL_HTTP_CHUNK_TRAILER) {
				bool ok = keel__http_client_trailer_add(k, *piece);
				*piece = (keel_str){NULL, 0}; /* (not body bytes) */
				if (!ok)
					return -EMSGSIZE;
				continue;
			}
			if (rc == KEEL_HTTP_CHUNK_DONE) {
				int err = trailers_end(k);
				if (err)
					return err;
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

bool keel__http_client_body_deliver(struct cconn *k)
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
		keel__http_client_body_fail(k, rc);
		return false;
	}
	keel_promise *p = k->body_wait;
	k->body_wait = NULL;
	if (rc == 0)
		k->piece = (keel_str){NULL, 0};
	keel_promise_resolve(p, 0, &k->piece);
	keel__http_client_response_timer(k); /* the reader has it: its pace is not the server's */
	return true;
}

void keel__http_client_stream_start(struct cconn *k, keel_buf *buf, size_t off)
{
	struct creq *r = k->req;
	keel_http_client *c = k->up->cl;
	k->req = NULL;
	/*
	 * A whole body still going out is the caller's again when the promise
	 * settles: req_settle waits for that send (cancelled) while r->conn
	 * says where it is. A producer's body goes on beside the response.
	 */
	if (r->q.body_read || !r->q.body.len)
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
		keel__http_client_timer_set(k, T_OFF, 0);
		/* The response is whole: a producer's piece still in flight must let go first. */
		if (keel__http_client_body_out_abort(k))
			r->conn = k;
	} else {
		if (k->msg.body == KEEL_HTTP_BODY_LENGTH)
			k->body_need = k->msg.content_length;
		else if (k->msg.body == KEEL_HTTP_BODY_CHUNKED) {
			keel_http_chunked_init(&k->chunk, UINT64_MAX);
			k->chunk.trailers_want = true;
			keel__http_client_trailers_reset(k);
		}
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
	keel__http_client_response_timer(k); /* (off until a reader asks for more) */
	keel__http_client_req_settle(r, 0, &k->sresp);
}

/* A waiting body read given up by its consumer: it stops waiting (the response stays usable). */
static void body_read_cancel(keel_promise *p, void *ud)
{
	struct cconn *k = ud;
	if (k->body_wait == p) {
		k->body_wait = NULL;
		keel_promise_reject(p, -ECANCELED);
		keel__http_client_response_timer(k);
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
		keel__http_client_body_fail(k, rc);
		return p;
	}
	k->body_wait = p;
	keel_promise_on_cancel(p, body_read_cancel, k);
	if (!k->recv)
		keel__http_client_conn_read(k);
	keel__http_client_response_timer(k);
	return p;
}

int keel_http_client_response_upgraded(keel_http_client_response *r, keel_transport *tp, keel_buf **held,
                                       uint32_t *off, bool *eof)
{
	struct keel__client_upgrade *u = r ? r->upgrade_ : NULL;
	if (!u)
		return -EINVAL;
	*tp = u->tp;
	*held = u->held;
	*off = u->off;
	*eof = u->eof;
	free(u);
	r->upgrade_ = NULL;
	return 0;
}

void keel_http_client_response_free(keel_http_client_response *r)
{
	if (!r)
		return;
	struct keel__client_upgrade *u = r->upgrade_;
	if (u) {
		/* A switched connection nobody took: its input goes, then the connection. */
		while (u->held) {
			keel_buf *b = u->held;
			u->held = b->next;
			keel_buf_release(b);
		}
		keel_promise_release(keel_transport_close(&u->tp));
		free(u);
		r->upgrade_ = NULL;
	}
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
		keel__http_client_conn_free(k);
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
		/* Given up mid-body: the rest would be mistaken for the next response. */
		keel__http_client_conn_close(k);
		return;
	}
	keel__http_client_inq_clear(k);
	keel__http_client_maybe_release(k);
}
