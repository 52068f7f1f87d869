/*
 * A request going out on an HTTP/1.1 client connection: its head written
 * into the connection's buffer (kept for its next requests), then its body
 * -- given whole, or taken from the caller's producer one piece at a time
 * with a send in flight for each.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "client_internal.h"
#include "core/alloc.h"
#include "keel/transport.h"
#include "put.h"

/* Format r's head into k->out (kept for the connection's next requests). Returns its length or 0. */
static size_t format_head(struct cconn *k, const struct creq *r)
{
	const keel_http_client_request *q = &r->q;
	const char *target = q->target ? q->target : "/";
	/* (the client's copy of q->upstream; a Unix socket's server is localhost) */
	const char *host = q->host                                 ? q->host
	                   : strncmp(r->up->name, "unix:", 5) == 0 ? r->up->host
	                                                           : r->up->name;
	size_t tl = strlen(target), hl = strlen(host);
	size_t cap = r->method.len + tl + hl + 96; /* (the fixed text below is 85 bytes at most) */
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
	bool te = false;
	for (unsigned i = 0; i < q->nheaders; i++) {
		const keel_http_header *x = &q->headers[i];
		h = keel__put(h, x->name.ptr, x->name.len);
		h = KEEL__PUT_LIT(h, ": ");
		h = keel__put(h, x->value.ptr, x->value.len);
		h = KEEL__PUT_LIT(h, "\r\n");
		te = te || keel_str_ieq(x->name, "te");
	}
	if (q->upgrade)
		h = te ? KEEL__PUT_LIT(h, "Connection: Upgrade, TE\r\n")
		       : KEEL__PUT_LIT(h, "Connection: Upgrade\r\n");
	else if (te)
		h = KEEL__PUT_LIT(h, "Connection: TE\r\n"); /* TE is for this connection (RFC 9110 10.1.4) */
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

bool keel__http_client_body_out_abort(struct cconn *k)
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

/* The request body's producer failed (its client went away): the request cannot complete. */
static void body_src_fail(struct cconn *k, int err)
{
	k->body_out = B_NONE;
	k->keep = false;
	if (k->req)
		keel__http_client_conn_fail(k, err);
	else if (k->attached && !k->resp_done)
		keel__http_client_body_fail(k, err);
	else
		keel__http_client_conn_close(k);
}

static void body_next(struct cconn *k);

static void send_done(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct cconn *k = ud;
	k->send_p = NULL;
	if (k->upgraded && !k->closing && !o.err) {
		keel__http_client_upgrade_try(k); /* a 101 came before this completion */
		return;
	}
	if (k->due_req) {
		struct creq *r = k->due_req; /* ended while its body was still going out */
		keel_http_client_response *resp = k->due_resp;
		int err = k->due_err;
		k->due_req = NULL;
		k->due_resp = NULL;
		k->due_err = 0;
		if (r->cancelled) {
			keel_http_client_response_free(resp);
			keel__http_client_req_settle(r, -ECANCELED, NULL);
		} else {
			keel__http_client_req_settle(r, err ? err : resp ? 0 : -ENOMEM, resp);
		}
	}

	if (k->closing) {
		keel__http_client_conn_close(k);
		return;
	}
	if (o.err) {
		k->keep = false;
		k->body_out = B_NONE;
		if (k->req)
			keel__http_client_conn_fail(k, o.err);
		else if (!k->attached)
			keel__http_client_conn_close(k); /* answered, but the connection broke */
		return;                                  /* (a streamed response may still arrive whole) */
	}
	if (k->body_out == B_LAST)
		k->body_out = B_NONE;
	if (k->body_out == B_MORE) {
		body_next(k);
		return;
	}
	keel__http_client_maybe_release(k);
}

static void body_piece(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct cconn *k = ud;
	k->body_rp = NULL;
	if (k->closing) {
		keel__http_client_conn_close(k);
		return;
	}
	if (k->body_out != B_MORE) {
		/* The response came whole first: the rest is not wanted. */
		keel__http_client_maybe_release(k);
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
			v[n++].iov_len =
			    (size_t)snprintf(k->chunk_head, sizeof(k->chunk_head), "%zx\r\n", piece->len);
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
	k->send_p = keel_transport_sendv(&k->tp, v, n);
	keel_promise_done(k->send_p, send_done, k);
	keel__http_client_response_timer(k); /* progress */
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
	/* The producer's turn (a client uploading through a proxy, say). */
	keel__http_client_response_timer(k);
}

void keel__http_client_conn_send(struct cconn *k, struct creq *r)
{
	keel_http_client *c = k->up->cl;
	const keel_http_client_request *q = &r->q;
	keel__http_client_idle_remove(k);
	k->req = r;
	r->conn = k;
	k->keep = true;
	k->send_tick = keel_loop_tick(c->loop);
	keel__http_client_response_reset(k);
	size_t hl = format_head(k, r);
	if (!hl) {
		keel__http_client_conn_fail(k, -ENOMEM);
		return;
	}
	if (q->body_read && q->body_length) {
		k->body_read = q->body_read;
		k->body_ud = q->body_ud;
		k->body_left = q->body_length;
		k->body_out = B_MORE; /* the head first, then piece by piece */
		struct iovec v = {k->out, hl};
		k->send_p = keel_transport_sendv(&k->tp, &v, 1);
	} else {
		k->body_out = B_NONE;
		struct iovec v[2] = {{k->out, hl}, {(void *)q->body.ptr, q->body.len}};
		k->send_p = keel_transport_sendv(&k->tp, v, !q->body_read && q->body.len ? 2 : 1);
	}
	keel_promise_done(k->send_p, send_done, k);
	if (k->paused && !k->recv)
		keel__http_client_conn_read(k);
	keel__http_client_response_timer(k);
}
