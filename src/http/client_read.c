/*
 * A response coming in on an HTTP/1.1 client connection: its head parsed
 * incrementally by keel's strict parser, its body gathered whole (or, if
 * the request asked for a stream, handed to client_stream.c), and the
 * receive's end read as the end of a body or a broken connection.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "client_internal.h"
#include "core/alloc.h"
#include "keel/tcp.h"
#include "keel/transport.h"

void keel__http_client_response_timer(struct cconn *k)
{
	bool waiting = k->req ? !k->body_rp : (k->attached && !k->resp_done && k->body_wait);
	if (waiting && !k->closing)
		keel__http_client_timer_set(k, T_RESPONSE, k->up->cl->cfg.response_timeout_ms);
	else if (k->timer_kind == T_RESPONSE)
		keel__http_client_timer_set(k, T_OFF, 0);
}

bool keel__http_client_trailer_add(struct cconn *k, keel_str span)
{
	size_t need = (size_t)k->tr_len + span.len;
	if (need > k->up->cl->cfg.limits.head_max)
		return false;
	if (need > k->tr_cap) {
		size_t cap = k->tr_cap ? (size_t)k->tr_cap * 2 : 256;
		while (cap < need)
			cap *= 2;
		char *nb = keel__realloc(k->tr, cap);
		if (!nb)
			return false;
		k->tr = nb;
		k->tr_cap = (uint32_t)cap;
	}
	memcpy(k->tr + k->tr_len, span.ptr, span.len);
	k->tr_len = (uint32_t)need;
	return true;
}

void keel__http_client_trailers_reset(struct cconn *k)
{
	k->tr_len = 0;
	free(k->tr_fields);
	k->tr_fields = NULL;
}

/*
 * Build the caller's response in one block: the head's fields, the
 * trailers' fields, the head re-parsed over a copy, the body, the trailer
 * section.
 */
static keel_http_client_response *response_build(struct cconn *k, struct creq *r)
{
	keel_http_client *c = k->up->cl;
	keel_http_client_response *resp = keel__calloc(1, sizeof(*resp));
	size_t nh = k->msg.nheaders ? k->msg.nheaders : 1;
	size_t trl = k->msg.body == KEEL_HTTP_BODY_CHUNKED ? k->tr_len : 0; /* (this response's) */
	unsigned nt = keel_http_trailers_parse(k->tr, trl, NULL, 0);
	size_t fields = (nh + nt) * sizeof(keel_http_header);
	char *mem = resp ? keel__malloc(fields + k->msg.head_len + k->body_len + trl) : NULL;
	if (!mem) {
		free(resp);
		return NULL;
	}
	keel_http_header *hdrs = (keel_http_header *)mem;
	char *head = mem + fields;
	memcpy(head, k->head, k->msg.head_len);
	if (k->body_len)
		memcpy(head + k->msg.head_len, k->body, k->body_len);
	if (nt) {
		char *tr = head + k->msg.head_len + k->body_len;
		memcpy(tr, k->tr, trl);
		resp->trailers = hdrs + nh;
		resp->ntrailers = keel_http_trailers_parse(tr, trl, hdrs + nh, nt);
	}
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

void keel__http_client_upgrade_try(struct cconn *k)
{
	if (k->recv || k->send_p || k->body_rp || k->closing)
		return;
	keel_http_client *c = k->up->cl;
	struct creq *r = k->req;
	k->req = NULL;
	keel_http_client_response *resp = response_build(k, r);
	struct keel__client_upgrade *u = resp ? keel__malloc(sizeof(*u)) : NULL;
	if (!u) {
		keel_http_client_response_free(resp);
		keel__http_client_req_settle(r, -ENOMEM, NULL);
		keel__http_client_conn_close(k);
		return;
	}
	u->tp = k->tp;
	u->held = k->inq_head;
	u->off = k->inq_off;
	u->eof = k->eof;
	k->inq_head = NULL;
	k->inq_off = 0;
	k->connected = false; /* the transport is the caller's: the record goes without closing it */
	resp->upgrade_ = u;
	c->stats.responses++;
	keel__http_client_req_settle(r, 0, resp);
	keel__http_client_conn_close(k);
}

static void response_done(struct cconn *k)
{
	struct creq *r = k->req;
	keel_http_client *c = k->up->cl;
	k->req = NULL;
	keel__http_client_timer_set(k, T_OFF, 0);
	keel_http_client_response *resp = response_build(k, r);
	c->stats.responses++;
	k->keep = k->keep && k->msg.keep_alive && k->msg.body != KEEL_HTTP_BODY_UNTIL_CLOSE;
	if (keel__http_client_body_out_abort(k)) {
		k->due_req = r; /* settled once the send has let go of the producer's piece */
		k->due_resp = resp;
		return;
	}
	keel__http_client_req_settle(r, resp ? 0 : -ENOMEM, resp);
	keel__http_client_maybe_release(k);
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
					keel__http_client_conn_fail(k, -ENOMEM);
					return false;
				}
				k->head = h;
				k->head_cap = cap;
			}
			memcpy(k->head + k->head_len, data, take);
			size_t prev = k->head_len;
			k->head_len += take;
			if (!k->hdrs &&
			    !(k->hdrs = keel__malloc(c->cfg.limits.headers_max * sizeof(*k->hdrs)))) {
				keel__http_client_conn_fail(k, -ENOMEM);
				return false;
			}
			int rc = keel_http_parse_response(k->head, k->head_len, prev, &k->msg, k->hdrs,
			                                  c->cfg.limits.headers_max, &c->cfg.limits,
			                                  k->req->method);
			if (rc == KEEL_HTTP_INCOMPLETE) {
				if (k->head_len > c->cfg.limits.head_max) {
					keel__http_client_conn_fail(k, -EBADMSG);
					return false;
				}
				data += take;
				len -= take;
				continue;
			}
			if (rc < 0) {
				keel__http_client_conn_fail(k, -EBADMSG);
				return false;
			}
			size_t extra = k->head_len - (size_t)rc; /* bytes after the head: the body's */
			data += take - extra;
			len -= take - extra;
			if (k->msg.status >= 100 && k->msg.status < 200) {
				if (k->msg.status == 101) {
					if (!k->req->q.upgrade) {
						keel__http_client_conn_fail(
						    k, -EBADMSG); /* no switch was asked for */
						return false;
					}
					/* Switched: what follows is the new protocol's, held for the caller. */
					k->upgraded = true;
					k->keep = false;
					keel__http_client_timer_set(k, T_OFF, 0);
					if (len) {
						keel_buf_hold(buf);
						buf->next = NULL;
						k->inq_head = buf;
						k->inq_off = (uint32_t)(data - buf->data);
					}
					return false; /* (the receive stops; upgrade_try once it has) */
				}
				k->head_len = 0; /* an interim response: the real one follows */
				continue;
			}
			k->head_done = true;
			if (k->req->q.stream_response) {
				keel__http_client_stream_start(k, buf, (size_t)(data - buf->data));
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
					keel__http_client_conn_fail(k, -EMSGSIZE);
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
				k->chunk.trailers_want = true;
				keel__http_client_trailers_reset(k);
				break;
			case KEEL_HTTP_BODY_UNTIL_CLOSE: break;
			}
			continue;
		}
		if (k->msg.body == KEEL_HTTP_BODY_LENGTH) {
			size_t n = len < k->body_need ? len : (size_t)k->body_need;
			if (!body_add(k, data, n)) {
				keel__http_client_conn_fail(k, -EMSGSIZE);
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
					keel__http_client_conn_fail(k, -EMSGSIZE);
					return false;
				}
			} else if (rc == KEEL_HTTP_CHUNK_TRAILER) {
				if (!keel__http_client_trailer_add(k, span)) {
					keel__http_client_conn_fail(k, -EMSGSIZE);
					return false;
				}
			} else if (rc == KEEL_HTTP_CHUNK_DONE) {
				if (len)
					k->keep = false;
				response_done(k);
				return true;
			} else if (rc != KEEL_HTTP_INCOMPLETE) {
				int err = rc == KEEL_HTTP_E413 ? -EMSGSIZE : -EBADMSG;
				keel__http_client_conn_fail(k, err);
				return false;
			}
		} else { /* until close */
			if (!body_add(k, data, len)) {
				keel__http_client_conn_fail(k, -EMSGSIZE);
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
	if (k->upgraded) {
		/* Delivered after the stop took effect: the new protocol's too. */
		keel_buf_hold(buf);
		buf->next = NULL;
		keel_buf **pp = &k->inq_head;
		while (*pp)
			pp = &(*pp)->next;
		*pp = buf;
		return KEEL_STOP;
	}
	if (k->attached && !k->resp_done) {
		/* A streamed body: queue it for the reader. */
		keel_buf_hold(buf);
		buf->next = NULL;
		keel_buf **pp = &k->inq_head; /* a short list: the receive pauses at two */
		unsigned queued = 1;
		for (; *pp; pp = &(*pp)->next)
			queued++;
		*pp = buf;
		if (!keel__http_client_body_deliver(k))
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
		keel__http_client_idle_remove(k);
		if (!k->attached)
			keel__http_client_conn_close(k);
		return KEEL_STOP;
	}
	if (keel_loop_tick(k->up->cl->loop) == k->send_tick) {
		/*
		 * Bytes before our request went out: not its answer but what the
		 * server sent after the last one. The connection cannot be trusted;
		 * the request is tried again elsewhere if that is safe.
		 */
		k->up->cl->stats.unsolicited++;
		keel__http_client_conn_fail(k, -ECONNRESET);
		return KEEL_STOP;
	}
	k->got_bytes = true;
	if (!conn_feed(k, buf))
		return KEEL_STOP;
	/* Progress on the head or a whole body: the wait starts again. */
	if (k->req)
		keel__http_client_response_timer(k);
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
		keel__http_client_conn_close(k);
		return;
	}
	if (k->upgraded) {
		if (o.err && o.err != -ECANCELED) {
			keel__http_client_conn_fail(
			    k, o.err); /* reset right after the 101: nothing to hand over */
			return;
		}
		k->eof = o.err == 0; /* the server's input already ended: said with the connection */
		keel__http_client_upgrade_try(k);
		return;
	}
	if (o.err == -ECANCELED && k->paused) {
		/* Asked for more, released or reused while the stop was settling. */
		if (k->body_wait || !k->attached)
			keel__http_client_conn_read(k);
		return;
	}
	if (k->req) {
		if (o.err == 0 && k->head_done && k->msg.body == KEEL_HTTP_BODY_UNTIL_CLOSE) {
			k->keep = false;
			response_done(k); /* the close ends this body */
			return;
		}
		keel__http_client_conn_fail(k, o.err && o.err != -ECANCELED ? o.err : -ECONNRESET);
		return;
	}
	if (k->attached && !k->resp_done) {
		/* The input ended under a streamed body: the reader drains what is held first. */
		k->eof = true;
		k->eof_err = o.err;
		k->keep = false;
		keel__http_client_body_deliver(k);
		return;
	}
	k->eof = true;
	k->keep = false;
	keel__http_client_idle_remove(k); /* the server closed an idle connection */
	if (!k->attached)
		keel__http_client_conn_close(k);
}

void keel__http_client_conn_read(struct cconn *k)
{
	k->paused = false;
	/*
	 * Once a response has been streamed, read one buffer at a time: a
	 * multishot receive would fill pool buffers ahead of a slow reader.
	 */
	k->paced = k->paced || k->attached;
	k->recv = keel_transport_recv(&k->tp, on_data, k, k->paced);
	keel_promise_done(k->recv, recv_ended, k);
}
