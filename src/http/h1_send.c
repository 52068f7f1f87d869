/*
 * HTTP/1.1 responses out. Answers leave in request order: whenever the
 * oldest requests are answered, their heads (and bodies small enough to
 * copy) are written into one output buffer and sent with larger bodies in
 * one sendv, so pipelined requests cost one send per batch; a file body
 * follows its head by sendfile, a streamed one piece by piece as its
 * producer delivers (chunked, or within its Content-Length). A batch is
 * bounded by its iovecs by construction, and sent in slices so that a slow
 * reader shows progress to the send deadline.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "h1.h"
#include "http_internal.h"
#include "keel/errors.h"
#include "keel/http.h"
#include "keel/transport.h"
#include "put.h"

static void send_done(keel_ctx *ctx, keel_outcome o, void *ud);

static size_t head_size(const keel_http_server *s, const keel_http_response *a)
{
	size_t n = HEAD_RESERVE;
	if (a->content_type)
		n += strlen(a->content_type);
	for (unsigned i = 0; i < a->nheaders; i++)
		n += a->headers[i].name.len + a->headers[i].value.len + 4;
	return n + s->server_name_len;
}

static char *write_head(keel_http_conn *c, keel_http_request *r, char *p, bool closing)
{
	keel_http_server *s = c->s;
	const keel_http_response *a = r->answer;
	int st = a->status ? a->status : 200;
	if (st == 200) {
		p = KEEL__PUT_LIT(p, "HTTP/1.1 200 OK\r\n");
	} else {
		const char *text = keel_http_status_text(st);
		p = KEEL__PUT_LIT(p, "HTTP/1.1 ");
		p = keel__put_u64(p, (uint64_t)st);
		*p++ = ' ';
		p = keel__put(p, text, strlen(text));
		p = KEEL__PUT_LIT(p, "\r\n");
	}
	if (s->cfg.server_name) {
		p = KEEL__PUT_LIT(p, "Server: ");
		p = keel__put(p, s->cfg.server_name, s->server_name_len);
		p = KEEL__PUT_LIT(p, "\r\n");
	}
	p = KEEL__PUT_LIT(p, "Date: ");
	p = keel__put(p, s->date, s->date_len);
	p = KEEL__PUT_LIT(p, "\r\n");
	if (a->content_type) {
		p = KEEL__PUT_LIT(p, "Content-Type: ");
		p = keel__put(p, a->content_type, strlen(a->content_type));
		p = KEEL__PUT_LIT(p, "\r\n");
	}
	if (st >= 200 && st != 204 && st != 304) {
		if (a->stream && a->stream_length > 0) {
			p = KEEL__PUT_LIT(p, "Content-Length: ");
			p = keel__put_u64(p, (uint64_t)a->stream_length);
			p = KEEL__PUT_LIT(p, "\r\n");
		} else if (a->stream) {
			if (r->msg.version_minor >= 1)
				p = KEEL__PUT_LIT(p, "Transfer-Encoding: chunked\r\n");
		} else {
			uint64_t len = a->file_fd >= 0 ? a->file_len : a->body.len;
			p = KEEL__PUT_LIT(p, "Content-Length: ");
			p = keel__put_u64(p, len);
			p = KEEL__PUT_LIT(p, "\r\n");
		}
	}
	for (unsigned i = 0; i < a->nheaders; i++) {
		p = keel__put(p, a->headers[i].name.ptr, a->headers[i].name.len);
		p = KEEL__PUT_LIT(p, ": ");
		p = keel__put(p, a->headers[i].value.ptr, a->headers[i].value.len);
		p = KEEL__PUT_LIT(p, "\r\n");
	}
	if (closing)
		p = KEEL__PUT_LIT(p, "Connection: close\r\n");
	else if (r->msg.version_minor == 0)
		p = KEEL__PUT_LIT(p, "Connection: keep-alive\r\n");
	return KEEL__PUT_LIT(p, "\r\n");
}

static bool has_body(const keel_http_request *r)
{
	int st = r->answer->status ? r->answer->status : 200;
	return !r->head_only && st >= 200 && st != 204 && st != 304;
}

/* The iovecs r's body adds to a batch: 2 when it is sent from where it is, 0 when copied. */
static int body_iovs(const keel_http_request *r)
{
	const keel_http_response *a = r->answer;
	return has_body(r) && a->file_fd < 0 && a->body.len > OUT_INLINE_BODY ? 2 : 0;
}

/* The batch's last request: the one whose file or streamed body is being sent. */
static keel_http_request *batch_last(keel_http_conn *c)
{
	keel_http_request *last = c->qhead;
	for (unsigned i = 1; i < c->nsending && last; i++)
		last = last->next;
	return last;
}

/*
 * The last chunk with the response's trailer section, when it has one (read
 * now: its producer may have set it with its last piece), formatted in the
 * request's context; *v keeps the bare last chunk if there is none to send.
 */
static void last_chunk_trailers(keel_http_request *r, struct iovec *v)
{
	const keel_http_response *a = r->answer;
	size_t len = 5;
	for (unsigned i = 0; i < a->ntrailers; i++)
		if (keel__trailer_ok(a->trailers[i].name))
			len += a->trailers[i].name.len + a->trailers[i].value.len + 4;
	keel_ctx *ctx = len > 5 ? keel_http_request_ctx(r) : NULL;
	char *b = ctx ? keel_ctx_alloc(ctx, len) : NULL;
	if (!b)
		return; /* (none, or out of memory: the body ends without them) */
	char *p = KEEL__PUT_LIT(b, "0\r\n");
	for (unsigned i = 0; i < a->ntrailers; i++) {
		const keel_http_header *f = &a->trailers[i];
		if (!keel__trailer_ok(f->name))
			continue;
		p = keel__put(p, f->name.ptr, f->name.len);
		p = KEEL__PUT_LIT(p, ": ");
		p = keel__put(p, f->value.ptr, f->value.len);
		p = KEEL__PUT_LIT(p, "\r\n");
	}
	p = KEEL__PUT_LIT(p, "\r\n");
	v->iov_base = b;
	v->iov_len = (size_t)(p - b);
}

/* The producer of a streamed body delivered a piece (or the end): frame and send it. */
static void stream_piece(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	keel_http_conn *c = ud;
	keel_promise *sp = c->send_p;
	c->send_p = NULL;
	c->sending = false;
	if (o.err || c->closing) {
		if (o.err == -ECANCELED && c->closing)
			/* a producer that could not be stopped still holds it */
			keel__req_zombie(batch_last(c), sp);
		keel__h1_conn_close(c); /* cannot signal an error mid-body but by closing */
		return;
	}
	keel_str *piece = o.ptr;
	struct iovec v[3];
	int n = 0;
	if (piece && piece->len && c->tx->stream_sized) {
		if (piece->len > c->tx->stream_left) {
			keel__h1_conn_close(c); /* more than its Content-Length: cannot be sent */
			return;
		}
		c->tx->stream_left -= piece->len;
		c->tx->stream_state = c->tx->stream_left ? 1 : 0; /* all of it: done, no need to ask again */
		v[n].iov_base = (void *)piece->ptr;
		v[n++].iov_len = piece->len;
		c->s->stats.bytes_out += piece->len;
	} else if (c->tx->stream_sized) {
		keel__h1_conn_close(c); /* the body ended short of its Content-Length */
		return;
	} else if (piece && piece->len) {
		c->tx->stream_state = 1;
		if (c->tx->stream_chunked) {
			int hl =
			    snprintf(c->tx->chunk_head, sizeof(c->tx->chunk_head), "%zx\r\n", piece->len);
			v[n].iov_base = c->tx->chunk_head;
			v[n++].iov_len = (size_t)hl;
		}
		v[n].iov_base = (void *)piece->ptr;
		v[n++].iov_len = piece->len;
		if (c->tx->stream_chunked) {
			v[n].iov_base = (void *)"\r\n";
			v[n++].iov_len = 2;
		}
		c->s->stats.bytes_out += piece->len;
	} else {
		c->tx->stream_state = 0;
		if (!c->tx->stream_chunked) {
			send_done(NULL, keel_ok(0, NULL), c); /* the close delimits the body */
			return;
		}
		v[n].iov_base = (void *)"0\r\n\r\n";
		v[n++].iov_len = 5;
		last_chunk_trailers(batch_last(c), &v[n - 1]);
	}
	c->sending = true;
	c->send_p = keel_transport_sendv(&c->tp, v, n);
	keel_promise_done(c->send_p, send_done, c);
	c->timer_kind = T_NONE;
	keel__h1_timer_update(c);
}

/* Start the next slice of the current batch: head/body iovecs first, then a file body. */
static bool send_next_slice(keel_http_conn *c)
{
	if (c->tx->iov_pos < c->tx->niov) {
		struct iovec v[IOV_BATCH];
		int n = 0;
		size_t bytes = 0;
		while (c->tx->iov_pos < c->tx->niov && bytes < SEND_SLICE) {
			struct iovec *src = &c->tx->iov[c->tx->iov_pos];
			size_t take = src->iov_len;
			if (bytes + take > SEND_SLICE)
				take = SEND_SLICE - bytes;
			v[n].iov_base = src->iov_base;
			v[n++].iov_len = take;
			bytes += take;
			src->iov_base = (char *)src->iov_base + take;
			src->iov_len -= take;
			if (src->iov_len == 0)
				c->tx->iov_pos++;
		}
		c->send_p = keel_transport_sendv(&c->tp, v, n);
	} else if (c->tx->file_left) {
		keel_http_request *last = batch_last(c);
		uint64_t n = c->tx->file_left < 4 * SEND_SLICE ? c->tx->file_left : 4 * SEND_SLICE;
		c->send_p = keel_transport_sendfile(&c->tp, last->answer->file_fd, c->tx->file_off, n);
		c->tx->file_off += n;
		c->tx->file_left -= n;
		c->tx->file_slice = n;
	} else if (c->tx->stream_state == 1) {
		keel_http_request *last = batch_last(c);
		keel_promise *p = last->answer->stream(last, last->answer->stream_ud);
		if (!p) {
			keel__h1_conn_close(c);
			return true;
		}
		c->tx->stream_state = 2;
		c->sending = true; /* nothing else may be sent on this connection meanwhile */
		c->send_p = p;
		keel_promise_done(p, stream_piece, c);
		keel__h1_timer_update(c);
		return true;
	} else {
		return false;
	}
	c->sending = true;
	keel_promise_done(c->send_p, send_done, c);
	c->timer_kind = T_NONE; /* progress: the send deadline starts again */
	keel__h1_timer_update(c);
	return true;
}

static struct conn_tx *tx_get(keel_http_server *s)
{
	struct conn_tx *tx = s->free_tx;
	if (tx) {
		s->free_tx = tx->next;
		s->nfree_tx--;
		return tx;
	}
	return calloc(1, sizeof(*tx));
}

void keel__h1_tx_put(keel_http_server *s, struct conn_tx *tx)
{
	if (s->nfree_tx >= TX_FREE_MAX) {
		free(tx->out);
		free(tx);
		return;
	}
	if (tx->out_cap > TX_OUT_KEEP) {
		free(tx->out);
		tx->out = NULL;
		tx->out_cap = 0;
	}
	tx->next = s->free_tx;
	s->free_tx = tx;
	s->nfree_tx++;
}

static void send_done(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	keel_http_conn *c = ud;
	keel_http_server *s = c->s;
	c->sending = false;
	c->send_p = NULL;
	if (c->tx->file_slice) {
		/*
		 * The file ended early (truncated while served): the promised
		 * Content-Length cannot be kept, so the only honest end is a close.
		 */
		if (!o.err && (uint64_t)o.n < c->tx->file_slice)
			o = keel_fail(-EPIPE);
		c->tx->file_slice = 0;
	}
	if (!o.err && !c->closing && send_next_slice(c))
		return;
	bool close_after = false, after_error = false;
	struct keel__upgrade *up = NULL;
	for (unsigned i = 0; i < c->nsending; i++) {
		keel_http_request *r = c->qhead;
		if (r->upgrade && !o.err && !c->closing) {
			up = r->upgrade; /* its 101 is out: the connection switches */
			r->upgrade = NULL;
		}
		c->qhead = r->next;
		if (!c->qhead)
			c->qtail = NULL;
		c->nreqs--;
		if (!r->keep_alive)
			close_after = true;
		if (r->is_error)
			after_error = true;
		if (r->stream_body && !r->body_done) {
			/* The rest of its body is still coming: it cannot be told from a next request. */
			c->no_more = true;
			close_after = after_error = true;
		}
		keel__h1_req_free(c, r);
	}
	c->nsending = 0;
	keel__h1_tx_put(s, c->tx); /* the batch is out: an idle connection holds no send state */
	c->tx = NULL;
	if (up) {
		keel__h1_upgrade(c, up); /* (the last request: nothing was parsed after it) */
		return;
	}
	if (!o.err && after_error && !c->closing && !c->eof && (c->recv || c->inq_head)) {
		/*
		 * Lingering close: the client may still be sending what we refused
		 * (a body over the limit, say). Closing with unread input would
		 * reset the connection and could destroy the error response before
		 * the client reads it; so send FIN, drain for a while, then close.
		 */
		c->lingering = true;
		keel__h1_inq_clear(c);
		if (!c->recv)
			keel__h1_conn_read(c); /* it was paused for a streamed body's reader */
		keel_promise_release(keel_transport_shutdown(&c->tp));
		c->timer_kind = T_LINGER;
		c->deadline_ns = keel_loop_now_ns(s->loop) + LINGER_MS * 1000000ull;
		keel_timer_arm(s->loop, &c->timer, LINGER_MS);
		return;
	}
	if (o.err || close_after || c->closing) {
		keel__h1_conn_close(c);
		return;
	}
	if (c->inq_head) {
		keel__h1_conn_pump(c); /* requests held back by the pipelining limit */
		if (c->closing)
			return;
	} else if (c->paused && keel__h1_conn_may_read(c)) {
		keel__h1_conn_read(c);
	}
	if (c->eof && c->nreqs == 0) {
		keel__h1_conn_close(c);
		return;
	}
	if (c->draining && c->nreqs == 0 && !c->part_len && !c->cur) {
		keel__h1_conn_close(c);
		return;
	}
	keel__h1_timer_update(c);
	keel__h1_flush(c);
}

void keel__h1_flush(keel_http_conn *c)
{
	keel_http_server *s = c->s;
	if (keel__h1_send_continue_if_due(c))
		return;
	if (c->sending || c->closing || !c->qhead || !c->qhead->done)
		return;
	if (!c->tx && !(c->tx = tx_get(s))) {
		keel__h1_conn_close(c);
		return;
	}
	keel__server_date_update(s);
	/*
	 * Size the output for the answered requests at the front of the queue,
	 * as many as the batch's iovecs hold: the output is one entry, and a
	 * body too large to copy adds two (the output before it, and itself).
	 */
	size_t need = 0;
	unsigned n = 0;
	int iovs = 1;
	for (keel_http_request *r = c->qhead; r && r->done && n < IOV_BATCH / 2; r = r->next, n++) {
		int cost = body_iovs(r);
		if (iovs + cost > IOV_BATCH)
			break;
		iovs += cost;
		need += head_size(s, r->answer);
		if (has_body(r) && r->answer->file_fd < 0 && r->answer->body.len <= OUT_INLINE_BODY)
			need += r->answer->body.len;
		if (r->answer->stream && r->answer->stream_length <= 0 && has_body(r) &&
		    r->msg.version_minor == 0)
			/* HTTP/1.0: the end of a streamed body of unknown length is the close */
			r->keep_alive = 0;
		if (r->answer->stream && has_body(r) && r->answer->body.len)
			need += 24; /* its first piece's chunk framing */
		if (r->answer->file_fd >= 0 || r->answer->stream || !r->keep_alive) {
			n++;
			break; /* a file or streamed body, or a close, ends the batch */
		}
	}
	if (need > c->tx->out_cap) {
		free(c->tx->out);
		c->tx->out = malloc(need);
		c->tx->out_cap = c->tx->out ? need : 0;
		if (!c->tx->out) {
			keel__h1_conn_close(c);
			return;
		}
	}
	struct iovec iov[IOV_BATCH];
	int niov = 0;
	char *p = c->tx->out, *seg = p;
	keel_http_request *r = c->qhead;
	for (unsigned i = 0; i < n; i++, r = r->next) {
		if (c->draining && !r->next && !c->cur && !c->part_len && !r->upgrade)
			r->keep_alive =
			    0; /* stopping: the last answer says so (a switch: the new protocol's close) */
		if (r->msg.upgrade && !r->upgrade)
			r->keep_alive =
			    0; /* asked to switch, answered otherwise: what follows may not be HTTP */
		/* (A switch's connection is the new protocol's: never "close" beside "Upgrade".) */
		bool closing = !r->keep_alive && !r->upgrade;
		p = write_head(c, r, p, closing);
		const keel_http_response *a = r->answer;
		bool framed = a->stream && a->stream_length <= 0 && r->msg.version_minor >= 1;
		if (has_body(r) && a->file_fd < 0 && a->body.len) {
			KEEL_HTTP_ASSERT(niov + body_iovs(r) + 1 <= IOV_BATCH);
			if (framed) {
				p += snprintf(p, 24, "%zx\r\n", a->body.len); /* a stream's first piece */
			}
			if (a->body.len <= OUT_INLINE_BODY) {
				p = keel__put(p, a->body.ptr, a->body.len);
			} else {
				iov[niov].iov_base = seg;
				iov[niov++].iov_len = (size_t)(p - seg);
				iov[niov].iov_base = (void *)a->body.ptr;
				iov[niov++].iov_len = a->body.len;
				seg = p;
			}
			if (framed)
				p = KEEL__PUT_LIT(p, "\r\n");
		}
		int st = a->status ? a->status : 200;
		keel__lat_record(s, r);
		if (s->cfg.access_log_fd >= 0 && !r->is_error_logged) {
			r->is_error_logged = 1;
			uint64_t blen = a->file_fd >= 0        ? a->file_len
			                : a->stream_length > 0 ? (uint64_t)a->stream_length
			                                       : a->body.len;
			keel__log_request(s, keel_http_request_peer(r), r, st, has_body(r) ? blen : 0);
		}
		if (st >= 500)
			s->stats.responses_5xx++;
		else if (st >= 400 && !r->is_error)
			s->stats.responses_4xx++;
	}
	if (p > seg) {
		iov[niov].iov_base = seg;
		iov[niov++].iov_len = (size_t)(p - seg);
	}
	c->nsending = n;
	for (int i = 0; i < niov; i++)
		s->stats.bytes_out += iov[i].iov_len;
	memcpy(c->tx->iov, iov, (size_t)niov * sizeof(iov[0]));
	c->tx->niov = niov;
	c->tx->iov_pos = 0;
	/* A file body (only the batch's last response can have one) follows its head. */
	keel_http_request *last = c->qhead;
	for (unsigned i = 1; i < n; i++)
		last = last->next;
	c->tx->file_left = 0;
	const keel_http_response *la = last->answer;
	c->tx->stream_state = la->stream && has_body(last) ? 1 : 0;
	c->tx->stream_sized = la->stream && la->stream_length > 0;
	c->tx->stream_chunked = last->msg.version_minor >= 1 && !c->tx->stream_sized;
	if (c->tx->stream_state && c->tx->stream_sized) {
		if (la->body.len > (uint64_t)la->stream_length) {
			/* a first piece longer than the whole: nothing honest to send */
			keel__h1_conn_close(c);
			return;
		}
		c->tx->stream_left = (uint64_t)la->stream_length - la->body.len;
		if (!c->tx->stream_left)
			c->tx->stream_state = 0; /* it all came with the head */
	}
	if (last->answer->file_fd >= 0 && has_body(last)) {
		c->tx->file_off = last->answer->file_off;
		c->tx->file_left = last->answer->file_len;
		s->stats.bytes_out += c->tx->file_left;
	}
	send_next_slice(c);
}
