/*
 * HTTP/2 (RFC 9113): a second protocol on the same transports and the same
 * server core. nghttp2 does the framing, HPACK, stream states and flow
 * control; keel owns the I/O. What the transport receives is fed to the
 * session (nghttp2_session_mem_recv); what the session has to send is
 * gathered into one batch -- frame bytes and small payloads copied into the
 * batch's buffer, larger body bytes pointed at where they are
 * (NGHTTP2_DATA_FLAG_NO_COPY) -- and sent with one sendv, as HTTP/1.1 does.
 * The batch's memory is the connection's only while it is built and sent.
 *
 * A stream is a request: a keel_http_request record whose conn is the
 * stream (struct h2_stream, allocated in the request's arena), dispatched
 * through the core like any other. Handlers, static files and the proxy
 * see keel_http_request and keel_http_response only.
 *
 * Response bodies are pulled a piece at a time: a handler's bytes whole, a
 * file 64 KiB per read through the loop, a streamed body piece by piece
 * from its producer. A piece's bytes are borrowed by the batch that sends
 * them, so the next piece is fetched only once that batch is out, and a
 * stream's request is released only after the batch holding its last bytes.
 *
 * Request bodies are read whole (up to body_max, counted in body_mem_max),
 * except on routes that stream their body: there the handler runs once the
 * head is in, and received bytes are consumed -- the window reopened --
 * only as its reader asks for the next piece (automatic window updates are
 * off), so the window is the backpressure.
 */
#include <errno.h>
#include <nghttp2/nghttp2.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/alloc.h"
#include "http_internal.h"
#include "keel/acceptor.h"
#include "keel/buf.h"
#include "keel/file.h"
#include "keel/http.h"
#include "keel/log.h"
#include "keel/tls.h"
#include "keel/transport.h"
#include "put.h"
#include "server_internal.h"

#define SEG_MAX 64               /* pieces of one sendv (KEEL_IOV_MAX) */
#define OUT_SOFT (64u << 10)     /* frame bytes copied into one batch before it is sent */
#define FILE_CHUNK (64u << 10)   /* a file body is read this much at a time */
#define STREAM_WINDOW (1u << 18) /* what each stream may send us ahead (request bodies) */
#define CONN_WINDOW (1u << 20)   /* and all of them together */
/*
 * DATA frames that carry no data (empty, or padding only) without
 * END_STREAM: each costs a callback. A leaky count -- one up for each,
 * one down for a frame with data -- past this is a flood.
 */
#define EMPTY_MAX 100

static const char PREFACE[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

enum { SRC_NONE = 0, SRC_MEM, SRC_FILE, SRC_STREAM };
enum { HT_NONE = 0, HT_HEADER, HT_IDLE, HT_REQUEST, HT_SEND, HT_WINDOW };

struct h2_stream {
	struct keel__h2_conn *h;
	keel_http_request *r;
	struct h2_stream *prev, *next; /* the connection's streams */
	struct h2_stream *due;         /* on the connection's release or fetch list */
	int32_t id;
	int status;    /* a status answered before dispatch (400, 413, 431, 503), 0: none */
	size_t hbytes; /* request header bytes so far, against limits.head_max */
	/*
	 * A streamed request body (KEEL_HTTP_STREAM_BODY routes): what arrived
	 * waits in r->body_own ([0, r->body_len), at most the stream's window),
	 * the first given bytes handed to the reader as its piece. Bytes are
	 * consumed (the window reopened) only when the reader asks for more.
	 */
	size_t given;
	uint64_t streamed; /* body bytes so far, against body_stream_max */
	/* The response body, one piece at a time: the piece's unsent bytes. */
	const char *piece;
	size_t plen;
	uint64_t file_off, file_left, stream_left;
	char *fbuf;
	keel_promise *fetch; /* a file read or a producer's piece in flight */
	uint8_t src;
	bool sized : 1;        /* a stream with a Content-Length: stream_left bytes owed */
	bool last : 1;         /* the piece is the end of the body */
	bool headers_done : 1; /* the request's header block is in (later ones: trailers) */
	bool remote_done : 1;  /* the client ended its side */
	bool dispatched : 1;   /* handed to the core (or answered by us) */
	bool submitted : 1;    /* the response is with nghttp2 */
	bool closed : 1;       /* nghttp2 closed the stream */
	bool listed : 1;       /* on a due list */
	bool released : 1;     /* queued for release */
	bool out_done : 1;     /* the response's end is with nghttp2 (no body, or its EOF given) */
	uint64_t rx_ns;        /* the request's first frame, then its last DATA */
	uint64_t wait_ns;      /* since when a streamed body's reader waits */
};

struct keel__h2_conn {
	keel_http_server *s;
	struct keel__h2_conn *prev, *next; /* the server's HTTP/2 connections */
	nghttp2_session *ng;
	keel_promise *rx;     /* the receive: HTTP/1.1's while it still runs (rx_h1), then ours */
	keel_promise *send_p; /* the batch in flight */
	struct h2_stream *streams;
	struct h2_stream *release; /* closed: released once the batch holding their last bytes is out */
	struct h2_stream *fetchq;  /* their next piece is fetched once the batch holding this one is out */
	char *peer;
	/*
	 * The batch being built or sent: taken from the server's free list
	 * when a batch starts and given back once it is sent, so an idle
	 * connection holds none.
	 */
	struct h2_batch *b;
	size_t ob_len;
	int nseg;
	unsigned nstreams, served;
	keel_timer timer;
	/*
	 * What the deadlines run from (conn_due): the adoption (the first
	 * request's), the last stream's end (idle), the last frame of a request
	 * still coming in, the batch in flight, the last DATA sent to a client
	 * whose window holds the rest back. Frames that carry no progress
	 * (PING, SETTINGS) move none of them.
	 */
	uint64_t start_ns, idle_ns, rx_ns, batch_ns, data_ns;
	int32_t goaway_last; /* draining: streams above it are refused */
	unsigned empty;      /* empty DATA frames in a row (EMPTY_MAX) */
	bool told_idle;      /* the acceptor was told it went idle (it may be closed for room) */
	bool discard_due;    /* a response ended: a streamed request body nobody reads is dropped (pump) */
	bool flood;          /* why the session failed: a flood (ENHANCE_YOUR_CALM) */
	keel_transport tp;
	bool rx_h1 : 1, in_ng : 1, sending : 1, closing : 1, closed : 1, eof : 1, draining : 1;
};

/* Frame bytes copied into ob, body bytes by reference; the iovecs of the send. */
struct h2_batch {
	struct h2_batch *next; /* the free list */
	struct {
		const char *ptr; /* own: an offset into ob */
		size_t len;
		bool own;
	} seg[SEG_MAX];
	struct iovec iov[SEG_MAX];
	size_t cap;
	char ob[]; /* cap bytes */
};

#define BATCH_OB OUT_SOFT /* every batch's output buffer: OUT_SOFT and one frame past it */
#define BATCH_FREE_MAX 64 /* batches kept for reuse per server (trimmed after a burst) */
#define DATA_INLINE 1024  /* DATA payloads up to this size are copied into the batch */

struct h2_shared {
	nghttp2_session_callbacks *cb;
	nghttp2_option *opt;
	struct h2_batch *free_b;
	unsigned nfree_b;
};

extern const struct keel__http_proto keel__h2_proto;

static void pump(struct keel__h2_conn *h);
static void conn_close(struct keel__h2_conn *h);
static void try_free(struct keel__h2_conn *h);
static void timer_update(struct keel__h2_conn *h);
static void fetch_start(struct h2_stream *st);
static void stream_give(struct h2_stream *st);
static void stream_consume_all(struct h2_stream *st);
static void trailers_submit(struct keel__h2_conn *h, struct h2_stream *st, uint32_t *flags);
static void stream_begin(struct h2_stream *st, const struct route *rt);

/* ---- Detection ----------------------------------------------------------- */

bool keel__h2_sniff(keel_transport *tp, const keel_buf *buf)
{
	if (keel_tls_is(tp))
		return strcmp(keel_tls_alpn(tp), "h2") == 0;
	/*
	 * Prior knowledge: the client's first bytes are the preface. A first
	 * read of fewer than 4 bytes goes to HTTP/1.1, which answers 505 to a
	 * preface that arrives in such pieces.
	 */
	size_t n = buf->len < sizeof(PREFACE) - 1 ? buf->len : sizeof(PREFACE) - 1;
	return n >= 4 && memcmp(buf->data, PREFACE, n) == 0;
}

/* ---- The batch ------------------------------------------------------------ */

/* The batch's memory, taken when a batch starts; false on ENOMEM. */
static bool batch_take(struct keel__h2_conn *h)
{
	struct h2_shared *sh = h->s->h2_shared;
	if (h->b)
		return true;
	if ((h->b = sh->free_b)) {
		sh->free_b = h->b->next;
		sh->nfree_b--;
		return true;
	}
	if (!(h->b = keel__malloc(sizeof(*h->b) + BATCH_OB + 16384)))
		return false;
	h->b->cap = BATCH_OB + 16384;
	return true;
}

/* The batch is out: its memory back to the free list. */
static void batch_put(struct keel__h2_conn *h)
{
	struct h2_shared *sh = h->s->h2_shared;
	if (!h->b)
		return;
	if (sh->nfree_b < BATCH_FREE_MAX) {
		h->b->next = sh->free_b;
		sh->free_b = h->b;
		sh->nfree_b++;
	} else {
		free(h->b);
	}
	h->b = NULL;
}

/* Copy len bytes into the batch; false when there is no room (the batch goes first). */
static bool out_copy(struct keel__h2_conn *h, const void *p, size_t len)
{
	if (!batch_take(h))
		return false;
	struct h2_batch *b = h->b;
	bool join = h->nseg && b->seg[h->nseg - 1].own &&
	            (size_t)b->seg[h->nseg - 1].ptr + b->seg[h->nseg - 1].len == h->ob_len;
	if ((!join && h->nseg == SEG_MAX) || h->ob_len + len > b->cap)
		return false;
	memcpy(b->ob + h->ob_len, p, len);
	if (join) {
		b->seg[h->nseg - 1].len += len;
	} else {
		b->seg[h->nseg].ptr = (const char *)(uintptr_t)h->ob_len;
		b->seg[h->nseg].len = len;
		b->seg[h->nseg++].own = true;
	}
	h->ob_len += len;
	return true;
}

static ssize_t on_send(nghttp2_session *ng, const uint8_t *data, size_t len, int flags, void *ud)
{
	(void)ng;
	(void)flags;
	struct keel__h2_conn *h = ud;
	if (h->ob_len && h->ob_len + len > OUT_SOFT)
		return NGHTTP2_ERR_WOULDBLOCK;
	if (!out_copy(h, data, len))
		return h->nseg ? NGHTTP2_ERR_WOULDBLOCK : NGHTTP2_ERR_CALLBACK_FAILURE;
	return (ssize_t)len;
}

/* A DATA frame: its 9-byte header copied, its payload pointed at. */
static int on_send_data(nghttp2_session *ng, nghttp2_frame *f, const uint8_t *framehd, size_t len,
                        nghttp2_data_source *src, void *ud)
{
	(void)ng;
	(void)f;
	struct keel__h2_conn *h = ud;
	struct h2_stream *st = src->ptr;
	/* A small payload is copied after its header: many small responses fit one iovec. */
	bool copy = len <= DATA_INLINE;
	if (h->nseg + 2 > SEG_MAX || (h->ob_len && h->ob_len + 9 + (copy ? len : 0) > OUT_SOFT))
		return NGHTTP2_ERR_WOULDBLOCK;
	if (!out_copy(h, framehd, 9))
		return h->nseg ? NGHTTP2_ERR_WOULDBLOCK : NGHTTP2_ERR_CALLBACK_FAILURE;
	if (copy) {
		out_copy(h, st->piece, len); /* (room was checked: it joins the header's segment) */
		st->piece += len;
		st->plen -= len;
	} else {
		h->b->seg[h->nseg].ptr = st->piece;
		h->b->seg[h->nseg].len = len;
		h->b->seg[h->nseg++].own = false;
		st->piece += len;
		st->plen -= len;
	}
	h->data_ns = keel_loop_now_ns(h->s->loop);
	return 0;
}

static ssize_t on_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                       nghttp2_data_source *src, void *ud)
{
	(void)ng;
	(void)id;
	(void)buf;
	struct keel__h2_conn *h = ud;
	struct h2_stream *st = src->ptr;
	if (!st->plen) {
		if (st->last) {
			*flags |= NGHTTP2_DATA_FLAG_EOF;
			trailers_submit(h, st, flags);
			st->out_done = true;
			h->discard_due = true;
			return 0;
		}
		if (!st->fetch && !st->listed) {
			/* Fetched once the batch holding the last piece is out. */
			st->listed = true;
			st->due = h->fetchq;
			h->fetchq = st;
		}
		return NGHTTP2_ERR_DEFERRED;
	}
	size_t n = st->plen < len ? st->plen : len;
	*flags |= NGHTTP2_DATA_FLAG_NO_COPY;
	if (n == st->plen && st->last) {
		*flags |= NGHTTP2_DATA_FLAG_EOF;
		trailers_submit(h, st, flags);
		st->out_done = true;
		h->discard_due = true;
	}
	return (ssize_t)n;
}

static void sent(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct keel__h2_conn *h = ud;
	h->send_p = NULL;
	h->sending = false;
	if (o.err) {
		conn_close(h);
		return;
	}
	h->s->stats.bytes_out += (uint64_t)o.n;
	h->ob_len = 0;
	h->nseg = 0;
	batch_put(h);
	pump(h);
}

static void flush(struct keel__h2_conn *h)
{
	struct h2_batch *b = h->b;
	for (int i = 0; i < h->nseg; i++) {
		b->iov[i].iov_base =
		    (void *)(b->seg[i].own ? b->ob + (uintptr_t)b->seg[i].ptr : b->seg[i].ptr);
		b->iov[i].iov_len = b->seg[i].len;
	}
	h->sending = true;
	h->batch_ns = keel_loop_now_ns(h->s->loop);
	h->send_p = keel_transport_sendv(&h->tp, b->iov, h->nseg);
	keel_promise_done(h->send_p, sent, h);
}

/* ---- Streams --------------------------------------------------------------- */

static void stream_release(struct h2_stream *st)
{
	struct keel__h2_conn *h = st->h;
	if (st->prev)
		st->prev->next = st->next;
	else
		h->streams = st->next;
	if (st->next)
		st->next->prev = st->prev;
	keel__req_end(h->s, st->r); /* (st lives in the request's arena: gone with it, or kept by a zombie) */
}

/* A closed stream with nothing in flight is released after the batch being built. */
static void stream_maybe_done(struct h2_stream *st)
{
	if (!st->closed || st->released || st->fetch || st->r->pending)
		return;
	st->released = true;
	if (st->listed) {
		/* (off the fetch list: it has nothing more to fetch) */
		struct h2_stream **pp = &st->h->fetchq;
		while (*pp && *pp != st)
			pp = &(*pp)->due;
		if (*pp)
			*pp = st->due;
	}
	st->listed = true;
	st->due = st->h->release;
	st->h->release = st;
}

/* What held a closed stream or a closing connection let go: release it, or go on. */
static void stream_settled(struct h2_stream *st)
{
	stream_maybe_done(st);
	if (st->h->closing)
		try_free(st->h);
	else
		pump(st->h);
}

static void stream_reset(struct h2_stream *st, uint32_t code)
{
	if (!st->closed)
		nghttp2_submit_rst_stream(st->h->ng, NGHTTP2_FLAG_NONE, st->id, code);
}

static bool is_hop_by_hop(keel_str n)
{
	static const char *const hop[] = {"connection",        "keep-alive", "proxy-connection",
	                                  "transfer-encoding", "upgrade",    NULL};
	for (int i = 0; hop[i]; i++)
		if (keel_str_ieq(n, hop[i]))
			return true;
	return false;
}

static nghttp2_nv nv_of(const char *name, size_t nlen, const char *value, size_t vlen)
{
	nghttp2_nv nv = {(uint8_t *)name, (uint8_t *)value, nlen, vlen, NGHTTP2_NV_FLAG_NONE};
	return nv;
}

/*
 * A handler's fields as nghttp2 takes them, names lower-cased (in ctx), the
 * connection-specific ones left out (and, for trailers, those that may not
 * be trailers). Returns how many went to nv, or -1 out of memory.
 */
static long nv_fields(keel_ctx *ctx, nghttp2_nv *nv, const keel_http_header *f, unsigned nf, bool trailers)
{
	long n = 0;
	for (unsigned i = 0; i < nf; i++) {
		keel_str hn = f[i].name;
		if (!hn.len || (trailers ? !keel__trailer_ok(hn) : is_hop_by_hop(hn)))
			continue;
		char *lower = keel_ctx_alloc(ctx, hn.len);
		if (!lower)
			return -1;
		for (size_t k = 0; k < hn.len; k++) {
			unsigned char c = (unsigned char)hn.ptr[k];
			lower[k] = (char)(c >= 'A' && c <= 'Z' ? c | 0x20 : c);
		}
		nv[n++] = nv_of(lower, hn.len, f[i].value.ptr, f[i].value.len);
	}
	return n;
}

/*
 * The body has ended: its trailers (read now: a producer may have set them
 * with its last piece) go out as a HEADERS frame that ends the stream, in
 * place of the last DATA frame's END_STREAM. nghttp2 copies them.
 */
static void trailers_submit(struct keel__h2_conn *h, struct h2_stream *st, uint32_t *flags)
{
	const keel_http_response *a = st->r->answer;
	if (!a->ntrailers)
		return;
	keel_ctx *ctx = keel_http_request_ctx(st->r);
	nghttp2_nv *nv = ctx ? keel_ctx_alloc(ctx, a->ntrailers * sizeof(*nv)) : NULL;
	long n = nv ? nv_fields(ctx, nv, a->trailers, a->ntrailers, true) : -1;
	if (n > 0 && nghttp2_submit_trailer(h->ng, st->id, nv, (size_t)n) == 0)
		*flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
	/* (out of memory: the body ends without them, as a client that does not read them sees it) */
}

/* The answer goes to nghttp2: the head now, the body as the window allows. */
static void submit(struct h2_stream *st)
{
	struct keel__h2_conn *h = st->h;
	keel_http_server *s = h->s;
	keel_http_request *r = st->r;
	const keel_http_response *a = r->answer;
	st->submitted = true;
	if (st->closed)
		return;
	int status = a->status ? a->status : 200;
	bool body = !r->head_only && status >= 200 && status != 204 && status != 304;
	keel_ctx *ctx = keel_http_request_ctx(r);
	nghttp2_nv *nv = ctx ? keel_ctx_alloc(ctx, (5 + a->nheaders) * sizeof(*nv)) : NULL;
	char *num = ctx ? keel_ctx_alloc(ctx, 32) : NULL;
	if (!nv || !num) {
		stream_reset(st, NGHTTP2_INTERNAL_ERROR);
		return;
	}
	size_t n = 0;
	status = status >= 100 && status <= 999 ? status : 500; /* (three digits on the wire) */
	nv[n++] = nv_of(":status", 7, num, (size_t)(keel__put_u64(num, (uint64_t)status) - num));
	if (s->cfg.server_name)
		nv[n++] = nv_of("server", 6, s->cfg.server_name, s->server_name_len);
	keel__server_date_update(s);
	nv[n++] = nv_of("date", 4, s->date, s->date_len);
	if (a->content_type)
		nv[n++] = nv_of("content-type", 12, a->content_type, strlen(a->content_type));
	uint64_t blen = 0;
	bool known = true;
	if (a->stream)
		known = a->stream_length > 0, blen = known ? (uint64_t)a->stream_length : 0;
	else
		blen = a->file_fd >= 0 ? a->file_len : a->body.len;
	if (status >= 200 && status != 204 && status != 304 && known) {
		char *cl = num + 4;
		nv[n++] = nv_of("content-length", 14, cl, (size_t)(keel__put_u64(cl, blen) - cl));
	}
	long nh = nv_fields(ctx, nv + n, a->headers, a->nheaders, false);
	if (nh < 0) {
		stream_reset(st, NGHTTP2_INTERNAL_ERROR);
		return;
	}
	n += (size_t)nh;
	nghttp2_data_provider prd = {.source.ptr = st, .read_callback = on_read};
	bool data = false;
	if (body) {
		if (a->stream) {
			st->src = SRC_STREAM;
			st->sized = a->stream_length > 0;
			st->piece = a->body.ptr;
			st->plen = a->body.len;
			if (st->sized) {
				if (a->body.len > (uint64_t)a->stream_length) {
					stream_reset(
					    st,
					    NGHTTP2_INTERNAL_ERROR); /* a first piece longer than the whole */
					return;
				}
				st->stream_left = (uint64_t)a->stream_length - a->body.len;
				st->last = st->stream_left == 0;
			}
			data = true;
		} else if (a->file_fd >= 0) {
			st->src = SRC_FILE;
			st->file_off = a->file_off;
			st->file_left = a->file_len;
			st->last = st->file_left == 0;
			data = st->file_left > 0 || a->ntrailers;
		} else {
			st->src = SRC_MEM;
			st->piece = a->body.ptr;
			st->plen = a->body.len;
			st->last = true;
			data = st->plen > 0 || a->ntrailers; /* (trailers follow even an empty body) */
		}
	}
	h->data_ns = keel_loop_now_ns(s->loop);
	int rv = nghttp2_submit_response(h->ng, st->id, nv, n, data ? &prd : NULL);
	if (rv < 0) {
		stream_reset(st, NGHTTP2_INTERNAL_ERROR);
		return;
	}
	if (!data) {
		st->out_done = true;
		h->discard_due = true;
	} else if (st->src != SRC_MEM && !st->plen && !st->last) {
		/* The first piece: no need to wait for the head to go out. (A producer may read the body:
		 * in_ng keeps that read's pump from sending before st->fetch is set.) */
		bool was = h->in_ng;
		h->in_ng = true;
		fetch_start(st);
		h->in_ng = was;
	}
	keel__lat_record(s, r);
	if (s->cfg.access_log_fd >= 0 && !r->is_error_logged) {
		r->is_error_logged = 1;
		keel__log_request(s, keel_http_request_peer(r), r, status, body ? blen : 0);
	}
	if (status >= 500)
		s->stats.responses_5xx++;
	else if (status >= 400)
		s->stats.responses_4xx++;
}

static void fetched(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct h2_stream *st = ud;
	struct keel__h2_conn *h = st->h;
	keel_promise *fp = st->fetch;
	st->fetch = NULL;
	if (st->closed || h->closing) {
		if (o.err == -ECANCELED && st->src == SRC_STREAM)
			keel__req_zombie(st->r, fp); /* a producer that could not be stopped still holds it */
		stream_settled(st);
		return;
	}
	if (st->src == SRC_FILE) {
		if (o.err || o.n <= 0) {
			stream_reset(
			    st, NGHTTP2_INTERNAL_ERROR); /* the file ended short of its promised length */
		} else {
			st->piece = st->fbuf;
			st->plen = (size_t)o.n;
			st->file_off += (uint64_t)o.n;
			st->file_left -= (uint64_t)o.n;
			st->last = st->file_left == 0;
		}
	} else {
		keel_str *piece = o.ptr;
		if (o.err) {
			stream_reset(st, NGHTTP2_INTERNAL_ERROR); /* the only honest signal mid-body */
		} else if (piece && piece->len) {
			if (st->sized && piece->len > st->stream_left) {
				stream_reset(st, NGHTTP2_INTERNAL_ERROR); /* more than its Content-Length */
			} else {
				st->piece = piece->ptr;
				st->plen = piece->len;
				if (st->sized) {
					st->stream_left -= piece->len;
					st->last = st->stream_left == 0;
				}
			}
		} else if (st->sized) {
			stream_reset(st, NGHTTP2_INTERNAL_ERROR); /* ended short of its Content-Length */
		} else {
			st->last = true;
		}
	}
	nghttp2_session_resume_data(h->ng, st->id);
	pump(h);
}

static void fetch_start(struct h2_stream *st)
{
	keel_http_request *r = st->r;
	const keel_http_response *a = r->answer;
	if (st->closed || st->fetch || st->plen || st->last)
		return; /* (a piece still unsent is still borrowed: the next one waits) */
	if (st->src == SRC_FILE) {
		if (!st->fbuf && !(st->fbuf = keel_ctx_alloc(keel_http_request_ctx(r), FILE_CHUNK))) {
			stream_reset(st, NGHTTP2_INTERNAL_ERROR);
			return;
		}
		size_t n = st->file_left < FILE_CHUNK ? (size_t)st->file_left : FILE_CHUNK;
		st->fetch = keel_file_read(r->loop, a->file_fd, st->fbuf, n, st->file_off);
	} else {
		st->fetch = a->stream(r, a->stream_ud);
		if (!st->fetch) {
			stream_reset(st, NGHTTP2_INTERNAL_ERROR);
			return;
		}
	}
	keel_promise_done(st->fetch, fetched, st);
}

/* ---- Requests in --------------------------------------------------------- */

/* The request is in (or answered early with st->status): hand it to the core. */
static void req_begin(struct h2_stream *st)
{
	keel_http_request *r = st->r;
	if (st->dispatched)
		return;
	st->dispatched = true;
	r->head_only = keel_str_eq(r->msg.method, "HEAD");
	int status = st->status;
	if (!status && (keel_str_eq(r->msg.method, "CONNECT") || !r->msg.target.len))
		status = 501; /* no tunnels (CONNECT, extended CONNECT) here */
	if (!status) {
		r->body.ptr = r->body_own;
		r->body.len = r->body_len;
		if (r->body_len && r->msg.body == KEEL_HTTP_BODY_NONE) {
			/* DATA without content-length (RFC 9113 8.1.1): a body of the length that came */
			r->msg.body = KEEL_HTTP_BODY_LENGTH;
			r->msg.content_length = r->body_len;
		}
		if (!r->path.ptr)
			status =
			    keel__req_target(r); /* (parsed already when the head came without its body) */
	}
	if (status) {
		st->h->s->stats.requests++;
		keel__req_error_answer(r, status);
		submit(st);
		return;
	}
	keel__req_dispatch(r);
	if (r->done && !st->submitted)
		submit(st); /* answered by the core itself (404, 405, OPTIONS *) */
}

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *f, void *ud)
{
	struct keel__h2_conn *h = ud;
	if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
		return 0;
	if (h->draining && f->hd.stream_id > h->goaway_last) {
		/* After the GOAWAY: not taken, the client may retry it elsewhere. */
		nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, f->hd.stream_id, NGHTTP2_REFUSED_STREAM);
		return 0;
	}
	h->rx_ns = keel_loop_now_ns(h->s->loop);
	keel_http_request *r = keel__req_new(h->s, NULL, &keel__h2_proto);
	keel_ctx *ctx = r ? keel_http_request_ctx(r) : NULL;
	struct h2_stream *st = ctx ? keel_ctx_alloc(ctx, sizeof(*st)) : NULL;
	if (!st) {
		if (r)
			keel__req_end(h->s, r);
		/* Refused before any processing: safe for the client to retry. */
		nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, f->hd.stream_id, NGHTTP2_REFUSED_STREAM);
		return 0;
	}
	memset(st, 0, sizeof(*st));
	st->h = h;
	st->r = r;
	st->id = f->hd.stream_id;
	st->rx_ns = h->rx_ns;
	r->conn = st;
	r->msg.headers = r->headers;
	r->msg.version_minor = 1;
	r->msg.keep_alive = true;
	st->next = h->streams;
	if (h->streams)
		h->streams->prev = st;
	h->streams = st;
	h->nstreams++;
	h->served++;
	h->told_idle = false;
	nghttp2_session_set_stream_user_data(ng, st->id, st);
	return 0;
}

/*
 * A trailer field (a HEADERS block after the request's first): kept as
 * "name: value\r\n" for r->trailers, as a chunked body's would be, and
 * read into fields when the stream ends. nghttp2 has checked it (no
 * pseudo-header, no CR, LF or NUL). Over the limits: 431 for a request
 * not yet handed over; a streamed body's reader gets -EMSGSIZE.
 */
static void trailer_add(struct h2_stream *st, const uint8_t *name, size_t nlen, const uint8_t *value,
                        size_t vlen)
{
	keel_http_request *r = st->r;
	if (r->body_discard || r->body_err)
		return; /* (the body is being dropped, or failed: no one will read them) */
	int rc = keel__req_trailer_raw(r, (const char *)name, nlen);
	if (!rc)
		rc = keel__req_trailer_raw(r, ": ", 2);
	if (!rc)
		rc = keel__req_trailer_raw(r, (const char *)value, vlen);
	if (!rc)
		rc = keel__req_trailer_raw(r, "\r\n", 2);
	if (!rc)
		return;
	if (!st->dispatched) {
		st->status = rc;
	} else {
		r->body_err = -EMSGSIZE;
		keel__body_wait_reject(r, -EMSGSIZE);
		stream_consume_all(st);
	}
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
	(void)flags;
	(void)ud;
	if (f->hd.type != NGHTTP2_HEADERS)
		return 0;
	struct h2_stream *st = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
	if (!st || st->status)
		return 0; /* refused, or over a limit already */
	if (st->headers_done) {
		trailer_add(st, name, nlen, value, vlen);
		return 0;
	}
	keel_http_request *r = st->r;
	const keel_http_limits *lim = &st->h->s->cfg.limits;
	st->hbytes += nlen + vlen + 4;
	if (st->hbytes > lim->head_max) {
		st->status = 431;
		return 0;
	}
	keel_str n = {(const char *)name, nlen};
	if (nlen && name[0] != ':' && r->msg.nheaders >= lim->headers_max) {
		st->status = 431;
		return 0;
	}
	char *copy = keel_ctx_alloc(r->ctx, nlen + vlen + 1);
	if (!copy) {
		st->status = 503;
		return 0;
	}
	memcpy(copy, name, nlen);
	memcpy(copy + nlen, value, vlen);
	copy[nlen + vlen] =
	    '\0'; /* (a value ends where a C string would: as over HTTP/1.1, a delimiter follows) */
	keel_str v = {copy + nlen, vlen};
	n.ptr = copy;
	if (nlen && name[0] == ':') {
		/* (nghttp2 has checked the pseudo-headers: known, once each, before the others) */
		if (keel_str_eq(n, ":method"))
			r->msg.method = v;
		else if (keel_str_eq(n, ":path"))
			r->msg.target = v;
		else if (keel_str_eq(n, ":authority"))
			r->msg.host = v;
		return 0;
	}
	keel_http_header *hd = &r->headers[r->msg.nheaders++];
	hd->name = n;
	hd->value = v;
	if (keel_str_eq(n, "host") && !r->msg.host.len) {
		r->msg.host = v;
	} else if (keel_str_eq(n, "content-length")) {
		uint64_t cl = 0; /* (digits only: nghttp2 checked) */
		for (size_t i = 0; i < vlen; i++)
			cl = cl * 10 + (uint64_t)(value[i] - '0');
		r->msg.body = KEEL_HTTP_BODY_LENGTH;
		r->msg.content_length = cl;
	}
	return 0;
}

/*
 * Cookies may come split over several fields (RFC 9113 8.2.3): joined
 * into one with "; " for handlers and HTTP/1.1 upstreams, which expect one.
 */
static void cookies_join(struct h2_stream *st)
{
	keel_http_request *r = st->r;
	unsigned n = 0, first = 0;
	size_t len = 0;
	for (unsigned i = 0; i < r->msg.nheaders; i++) {
		if (keel_str_eq(r->headers[i].name, "cookie")) {
			if (!n++)
				first = i;
			len += r->headers[i].value.len + 2;
		}
	}
	if (n < 2)
		return;
	char *joined = keel_ctx_alloc(r->ctx, len);
	if (!joined) {
		st->status = 503;
		return;
	}
	size_t at = 0;
	unsigned out = 0;
	for (unsigned i = 0; i < r->msg.nheaders; i++) {
		keel_http_header hd = r->headers[i];
		if (keel_str_eq(hd.name, "cookie")) {
			if (at)
				joined[at++] = ';', joined[at++] = ' ';
			memcpy(joined + at, hd.value.ptr, hd.value.len);
			at += hd.value.len;
			if (i != first)
				continue;
		}
		r->headers[out++] = hd;
	}
	r->msg.nheaders = out;
	for (unsigned i = 0; i < out; i++)
		if (keel_str_eq(r->headers[i].name, "cookie"))
			r->headers[i].value = (keel_str){joined, at};
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *ud)
{
	struct keel__h2_conn *h = ud;
	if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA)
		return 0;
	if (f->hd.type == NGHTTP2_DATA && f->hd.length == f->data.padlen &&
	    !(f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
		if (++h->empty > EMPTY_MAX) {
			h->flood = true;
			return NGHTTP2_ERR_CALLBACK_FAILURE; /* (GOAWAY ENHANCE_YOUR_CALM: keel__h2_input) */
		}
	} else if (f->hd.type == NGHTTP2_DATA && h->empty) {
		h->empty--;
	}
	struct h2_stream *st = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
	if (!st)
		return 0;
	if (f->hd.type == NGHTTP2_HEADERS && !st->headers_done) {
		st->headers_done = true;
		keel_http_request *r = st->r;
		if (!st->status)
			cookies_join(st);
		if (!st->status && !(f->hd.flags & NGHTTP2_FLAG_END_STREAM) && r->msg.target.len &&
		    !keel_str_eq(r->msg.method, "CONNECT") && !(st->status = keel__req_target(r))) {
			bool method_ok;
			const struct route *rt = keel__route_find(st->h->s, r, &method_ok);
			if (rt && rt->stream)
				stream_begin(st, rt);
		}
		if (!st->status && !st->dispatched && r->msg.body == KEEL_HTTP_BODY_LENGTH &&
		    r->msg.content_length > st->h->s->cfg.body_max)
			st->status = 413; /* answered before reading the body */
		if (st->status)
			req_begin(st);
	}
	if (f->hd.flags & NGHTTP2_FLAG_END_STREAM) {
		st->remote_done = true;
		int rc = st->status || st->r->body_err ? 0 : keel__req_trailers_end(st->r);
		if (rc && !st->dispatched) {
			st->status = rc;
		} else if (rc) {
			st->r->body_err = -EMSGSIZE;
			keel__body_wait_reject(st->r, -EMSGSIZE);
		}
		if (st->r->stream_body) {
			st->r->body_done = 1;
			stream_give(st);
		}
		req_begin(st);
	}
	return 0;
}

/* What a streamed body's reader has not consumed goes back to the window. */
static void stream_consume_all(struct h2_stream *st)
{
	keel_http_request *r = st->r;
	if (r->body_len && !st->closed)
		nghttp2_session_consume(st->h->ng, st->id, r->body_len);
	else if (r->body_len)
		nghttp2_session_consume_connection(st->h->ng, r->body_len);
	r->body_len = st->given = 0;
}

/* The reader waiting gets what has arrived, or the end. */
static void stream_give(struct h2_stream *st)
{
	keel_http_request *r = st->r;
	keel_promise *w = r->body_wait;
	if (!w || (!r->body_len && !r->body_done))
		return;
	r->body_wait = NULL;
	st->given = r->body_len;
	r->piece.ptr = r->body_len ? r->body_own : NULL;
	r->piece.len = r->body_len;
	keel_promise_resolve(w, 0, &r->piece);
}

static void stream_feed(struct h2_stream *st, const uint8_t *data, size_t len)
{
	keel_http_request *r = st->r;
	uint64_t max = st->h->s->cfg.body_stream_max;
	if (r->body_discard || r->body_err) {
		nghttp2_session_consume(st->h->ng, st->id, len);
		return;
	}
	st->streamed += len;
	if (max && st->streamed > max) {
		r->body_err = -EMSGSIZE; /* the handler's read fails: 413 */
		keel__body_wait_reject(r, -EMSGSIZE);
		nghttp2_session_consume(st->h->ng, st->id, len);
		stream_consume_all(st);
		return;
	}
	if (len > r->body_cap - r->body_len) {
		/* More than the window allows: nghttp2 checks it, so this is a bug, not an input. */
		nghttp2_session_consume(st->h->ng, st->id, len);
		stream_reset(st, NGHTTP2_FLOW_CONTROL_ERROR);
		return;
	}
	memcpy(r->body_own + r->body_len, data, len);
	r->body_len += len;
	stream_give(st);
}

/* A route that streams its body: the handler runs once the head is in, and reads the body as it comes. */
static void stream_begin(struct h2_stream *st, const struct route *rt)
{
	struct keel__h2_conn *h = st->h;
	keel_http_server *s = h->s;
	keel_http_request *r = st->r;
	uint64_t max = s->cfg.body_stream_max;
	if (r->msg.body == KEEL_HTTP_BODY_LENGTH && max && r->msg.content_length > max) {
		st->status = 413; /* answered before reading the body */
		return;
	}
	if (s->cfg.body_mem_max && s->body_mem + STREAM_WINDOW > s->cfg.body_mem_max) {
		st->status = 503;
		return;
	}
	if (!(r->body_own = keel__malloc(STREAM_WINDOW))) {
		st->status = 503;
		return;
	}
	r->body_cap = STREAM_WINDOW;
	s->body_mem += STREAM_WINDOW;
	r->stream_body = 1;
	if (r->msg.body == KEEL_HTTP_BODY_NONE)
		r->msg.body = KEEL_HTTP_BODY_CHUNKED; /* DATA without content-length: its length unknown */
	st->dispatched = true;
	r->head_only = keel_str_eq(r->msg.method, "HEAD");
	s->stats.requests++;
	keel__handler_call(r, rt);
	if (r->done && !st->submitted)
		submit(st);
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                         void *ud)
{
	(void)flags;
	struct keel__h2_conn *h = ud;
	struct h2_stream *st = nghttp2_session_get_stream_user_data(ng, id);
	h->rx_ns = keel_loop_now_ns(h->s->loop);
	if (st)
		st->rx_ns = h->rx_ns;
	if (st && st->r->stream_body) {
		stream_feed(st, data, len);
		return 0;
	}
	nghttp2_session_consume(ng, id, len); /* (copied, or not wanted: consumed either way) */
	if (!st || st->dispatched)
		return 0; /* refused, or answered already: the rest of the body is not wanted */
	keel_http_request *r = st->r;
	int status = 0;
	if (r->body_len + len > h->s->cfg.body_max)
		status = 413;
	else if (r->msg.body == KEEL_HTTP_BODY_LENGTH && r->body_len + len > r->msg.content_length)
		status = 400; /* (nghttp2 resets such a stream first) */
	else
		status = keel__req_body_append(h->s, r, (const char *)data, len);
	if (status) {
		st->status = status;
		req_begin(st);
	}
	return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t code, void *ud)
{
	(void)code;
	struct keel__h2_conn *h = ud;
	struct h2_stream *st = nghttp2_session_get_stream_user_data(ng, id);
	if (!st)
		return 0;
	nghttp2_session_set_stream_user_data(ng, id, NULL);
	st->closed = true;
	if (!--h->nstreams)
		h->idle_ns = keel_loop_now_ns(h->s->loop);
	keel_http_request *r = st->r;
	if (r->stream_body) {
		if (!r->body_done || r->body_len > st->given)
			r->body_err =
			    -ECONNRESET; /* reset mid-body, or bytes unread dropped: the reader's error */
		keel__body_wait_reject(r, -ECONNRESET);
		stream_consume_all(st);
	}
	/* Reset by the client, or done: a handler or a fetch still working is asked to stop. */
	if (r->pending)
		keel_promise_cancel(r->pending);
	if (st->fetch)
		keel_promise_cancel(st->fetch);
	stream_maybe_done(st);
	return 0;
}

/* ---- The connection -------------------------------------------------------- */

static void *shared_get(keel_http_server *s)
{
	if (s->h2_shared)
		return s->h2_shared;
	struct h2_shared *sh = keel__calloc(1, sizeof(*sh));
	if (!sh)
		return NULL;
	if (nghttp2_session_callbacks_new(&sh->cb) || nghttp2_option_new(&sh->opt)) {
		nghttp2_session_callbacks_del(sh->cb);
		free(sh);
		return NULL;
	}
	nghttp2_session_callbacks_set_send_callback(sh->cb, on_send);
	nghttp2_session_callbacks_set_send_data_callback(sh->cb, on_send_data);
	nghttp2_session_callbacks_set_on_begin_headers_callback(sh->cb, on_begin_headers);
	nghttp2_session_callbacks_set_on_header_callback(sh->cb, on_header);
	nghttp2_session_callbacks_set_on_frame_recv_callback(sh->cb, on_frame_recv);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(sh->cb, on_data_chunk);
	nghttp2_session_callbacks_set_on_stream_close_callback(sh->cb, on_stream_close);
	/* Closed streams are not kept for priority: memory follows the open streams only. */
	nghttp2_option_set_no_closed_streams(sh->opt, 1);
	/* The window reopens as bodies are consumed: streamed ones as their readers read. */
	nghttp2_option_set_no_auto_window_update(sh->opt, 1);
	nghttp2_option_set_max_outbound_ack(sh->opt, 1000);
	nghttp2_option_set_max_settings(sh->opt, 32);
	nghttp2_option_set_stream_reset_rate_limit(sh->opt, 1000, 33);
	nghttp2_option_set_max_continuations(sh->opt, 8);
	s->h2_shared = sh;
	return sh;
}

/* The free list of batches down to keep (after a burst, and at the server's free). */
void keel__h2_trim(keel_http_server *s, unsigned keep)
{
	struct h2_shared *sh = s->h2_shared;
	while (sh && sh->nfree_b > keep) {
		struct h2_batch *b = sh->free_b;
		sh->free_b = b->next;
		sh->nfree_b--;
		free(b);
	}
}

void keel__h2_free_shared(keel_http_server *s)
{
	struct h2_shared *sh = s->h2_shared;
	if (!sh)
		return;
	nghttp2_session_callbacks_del(sh->cb);
	nghttp2_option_del(sh->opt);
	keel__h2_trim(s, 0);
	free(sh);
	s->h2_shared = NULL;
}

/*
 * Whether a submitted response waits for the client (its flow-control
 * window), not for its handler or producer: then the send deadline runs.
 */
static bool waits_for_client(const struct keel__h2_conn *h)
{
	for (const struct h2_stream *st = h->streams; st; st = st->next)
		if (st->submitted && !st->out_done && !st->closed && !st->fetch && !st->listed)
			return true;
	return false;
}

/*
 * The earliest deadline of a request still coming in, as HTTP/1.1's: a
 * header block from its first frame; a body between its frames, or from
 * when its reader began to wait (our window, not the client, may be what
 * held it); a body answered already, dropped as it comes, between its
 * frames. 0: none.
 */
static uint64_t requests_due(const struct keel__h2_conn *h)
{
	const keel_http_config *cfg = &h->s->cfg;
	uint64_t due = 0, d;
	for (const struct h2_stream *st = h->streams; st; st = st->next) {
		const keel_http_request *r = st->r;
		if (st->closed)
			continue;
		if (!st->headers_done)
			d = st->rx_ns + cfg->header_timeout_ms * 1000000ull;
		else if (!st->dispatched || (st->out_done && !st->remote_done))
			d = st->rx_ns + cfg->body_timeout_ms * 1000000ull;
		else if (r->body_wait && !r->body_done)
			d = (st->rx_ns > st->wait_ns ? st->rx_ns : st->wait_ns) +
			    cfg->body_timeout_ms * 1000000ull;
		else
			continue;
		if (!due || d < due)
			due = d;
	}
	return due;
}

/* The connection's deadline now, and what it is for (0: none). */
static uint64_t conn_due(const struct keel__h2_conn *h, uint8_t *kind)
{
	const keel_http_config *cfg = &h->s->cfg;
	*kind = HT_NONE;
	if (h->closing)
		return 0;
	if (h->sending) {
		*kind = HT_SEND; /* a batch that makes no progress */
		return h->batch_ns + cfg->send_timeout_ms * 1000000ull;
	}
	if (waits_for_client(h)) {
		*kind = HT_WINDOW; /* a client that keeps its window shut */
		return h->data_ns + cfg->send_timeout_ms * 1000000ull;
	}
	uint64_t due = requests_due(h);
	if (due) {
		*kind = HT_REQUEST;
		return due;
	}
	if (h->nstreams)
		return 0; /* handlers are working: their own deadlines apply */
	if (!h->served) {
		*kind = HT_HEADER; /* the first request, from accept, as over HTTP/1.1 */
		return h->start_ns + cfg->header_timeout_ms * 1000000ull;
	}
	*kind = HT_IDLE;
	return h->idle_ns + cfg->idle_timeout_ms * 1000000ull;
}

static void conn_timeout(keel_loop *loop, keel_timer *t)
{
	struct keel__h2_conn *h = keel_container_of(t, struct keel__h2_conn, timer);
	uint64_t now = keel_loop_now_ns(loop);
	uint8_t kind;
	uint64_t due = conn_due(h, &kind);
	if (!due)
		return; /* nothing is due any more */
	if (now < due) {
		keel_timer_arm(loop, t, (due - now + 999999) / 1000000);
		return;
	}
	if (kind == HT_IDLE && !h->draining) {
		/* Idle: say so (GOAWAY), then close once it is out. */
		h->draining = true;
		h->goaway_last = nghttp2_session_get_last_proc_stream_id(h->ng);
		nghttp2_session_terminate_session(h->ng, NGHTTP2_NO_ERROR);
		pump(h);
		return;
	}
	/* Silent since accept, a request that stopped coming, a send without progress, a window kept shut. */
	conn_close(h);
}

/*
 * Lazy re-arming, as HTTP/1.1's: the heap is touched only when the
 * deadline comes before the armed one; a timer that fires early finds the
 * later deadline and re-arms for it (conn_timeout).
 */
static void timer_update(struct keel__h2_conn *h)
{
	uint8_t kind;
	uint64_t due = conn_due(h, &kind);
	if (!due)
		return;
	if (!keel_timer_is_armed(&h->timer) || keel_timer_deadline_ns(&h->timer) > due) {
		uint64_t now = keel_loop_now_ns(h->s->loop);
		keel_timer_arm(h->s->loop, &h->timer, due > now ? (due - now + 999999) / 1000000 : 0);
	}
}

/* Send what the session has to send, one batch at a time; close when it is over. */
static void pump(struct keel__h2_conn *h)
{
	if (h->in_ng || h->sending || h->closed)
		return;
	if (h->closing) {
		try_free(h);
		return;
	}
	if (h->discard_due) {
		/* A response ended with its streamed request body unread: the rest is dropped as it comes. */
		h->discard_due = false;
		for (struct h2_stream *st = h->streams; st; st = st->next) {
			keel_http_request *r = st->r;
			if (st->out_done && r->stream_body && !r->body_done && !r->body_discard &&
			    !st->closed) {
				r->body_discard = 1;
				keel__body_wait_reject(r, -ECANCELED);
				stream_consume_all(st);
			}
		}
	}
	/* The batch is out: what it borrowed is free. */
	while (h->release) {
		struct h2_stream *st = h->release;
		h->release = st->due;
		stream_release(st);
	}
	for (int round = 0; round < 2; round++) {
		/*
		 * (A producer may read a streamed request body, whose read would
		 * pump: in_ng keeps that from building a batch inside this one.)
		 */
		h->in_ng = true;
		while (h->fetchq) {
			struct h2_stream *st = h->fetchq;
			h->fetchq = st->due;
			st->listed = false;
			fetch_start(st);
		}
		h->in_ng = false;
		h->in_ng = true;
		int rv = nghttp2_session_send(h->ng);
		h->in_ng = false;
		if (rv < 0) {
			conn_close(h);
			return;
		}
		if (h->nseg) {
			flush(h);
			timer_update(h);
			return;
		}
		batch_put(h); /* (taken, nothing went in) */
		/* Nothing went into a batch: what was deferred may start now. */
		while (h->release) {
			struct h2_stream *st = h->release;
			h->release = st->due;
			stream_release(st);
		}
		if (!h->fetchq)
			break;
	}
	if ((!nghttp2_session_want_read(h->ng) && !nghttp2_session_want_write(h->ng)) ||
	    (h->eof && !h->nstreams)) {
		conn_close(h); /* a GOAWAY went out and every stream is done, or the client is gone */
		return;
	}
	timer_update(h);
	if (!h->nstreams && h->served && !h->told_idle) {
		/* Idle now: an acceptor waiting for room may close it (last: h may be closing after). */
		h->told_idle = true;
		keel_acceptor_idle(&h->s->acc);
	}
}

/*
 * Idle HTTP/2 connections -- no stream open, nothing being sent -- may be
 * closed for room when the connection limit is reached, as HTTP/1.1's are;
 * one that has not had its first request spares FRESH_GRACE_MS. They are
 * not kept in age order: the first few idle ones found go.
 */
static bool conn_idle(const struct keel__h2_conn *h, uint64_t now)
{
	return !h->closing && !h->nstreams && !h->sending &&
	       (h->served || now - h->start_ns >= FRESH_GRACE_MS * 1000000ull);
}

#define IDLE_PICK_SCAN 64
static struct keel__h2_conn *idle_pick(keel_http_server *s)
{
	uint64_t now = keel_loop_now_ns(s->loop);
	struct keel__h2_conn *h = s->h2_conns;
	for (int i = 0; h && i < IDLE_PICK_SCAN; i++, h = h->next)
		if (conn_idle(h, now))
			return h;
	return NULL;
}

bool keel__h2_idle_reclaimable(keel_http_server *s)
{
	return idle_pick(s) != NULL;
}

bool keel__h2_idle_any(keel_http_server *s)
{
	for (struct keel__h2_conn *h = s->h2_conns; h; h = h->next)
		if (!h->closing && !h->nstreams)
			return true;
	return false;
}

unsigned keel__h2_idle_reclaim(keel_http_server *s, unsigned n)
{
	unsigned done = 0;
	struct keel__h2_conn *h;
	while (done < n && (h = idle_pick(s))) {
		s->stats.idle_closed++;
		conn_close(h);
		done++;
	}
	return done;
}

void keel__h2_input(struct keel__h2_conn *h, keel_buf *buf)
{
	if (h->closing || h->eof)
		return;
	h->in_ng = true;
	ssize_t rv = nghttp2_session_mem_recv(h->ng, (const uint8_t *)buf->data, buf->len);
	h->in_ng = false;
	if (rv < 0) {
		/* Not HTTP/2, or a flood: say why in a GOAWAY, then close. */
		if (rv == NGHTTP2_ERR_BAD_CLIENT_MAGIC) {
			conn_close(h);
			return;
		}
		h->draining = true;
		bool calm = rv == NGHTTP2_ERR_FLOODED || h->flood;
		nghttp2_session_terminate_session(h->ng,
		                                  calm ? NGHTTP2_ENHANCE_YOUR_CALM : NGHTTP2_PROTOCOL_ERROR);
	}
	pump(h);
}

static int on_data(void *ud, keel_buf *buf)
{
	struct keel__h2_conn *h = ud;
	keel__h2_input(h, buf);
	return h->closing ? KEEL_STOP : KEEL_CONTINUE;
}

static void rx_ended(keel_ctx *ctx, keel_outcome o, void *ud);

static void rx_start(struct keel__h2_conn *h)
{
	h->rx_h1 = false;
	h->rx = keel_transport_recv(&h->tp, on_data, h, false);
	keel_promise_done(h->rx, rx_ended, h);
}

static void input_ended(struct keel__h2_conn *h, int err)
{
	if (h->closing) {
		try_free(h);
		return;
	}
	if (err && err != -ECANCELED) {
		conn_close(h); /* a reset: nothing sent now would arrive */
		return;
	}
	h->eof = true; /* the answers to what was asked still go out */
	for (struct h2_stream *st = h->streams; st; st = st->next)
		if (!st->dispatched || (st->r->stream_body && !st->r->body_done))
			stream_reset(st, NGHTTP2_CANCEL); /* cut off: it can never be complete */
	pump(h);
}

static void rx_ended(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct keel__h2_conn *h = ud;
	h->rx = NULL;
	input_ended(h, o.err);
}

void keel__h2_rx_handed(struct keel__h2_conn *h, int err)
{
	h->rx = NULL;
	h->rx_h1 = false;
	if (err == -ECANCELED && !h->closing && !h->eof)
		rx_start(h); /* HTTP/1.1's receive stopped as asked: ours takes over */
	else
		input_ended(h, err == -ECANCELED ? 0 : err);
}

struct keel__h2_conn *keel__h2_adopt(keel_http_server *s, keel_transport *tp, keel_promise *rx, char **peer)
{
	struct h2_shared *sh = shared_get(s);
	struct keel__h2_conn *h = sh ? keel__calloc(1, sizeof(*h)) : NULL;
	if (!h)
		return NULL;
	h->s = s;
	if (nghttp2_session_server_new2(&h->ng, sh->cb, h, sh->opt)) {
		free(h);
		return NULL;
	}
	const keel_http_config *cfg = &s->cfg;
	nghttp2_settings_entry iv[] = {
	    {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, cfg->h2_streams_max ? cfg->h2_streams_max : 100},
	    {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, (uint32_t)cfg->limits.head_max},
	    {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW},
	};
	if (nghttp2_submit_settings(h->ng, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0])) ||
	    nghttp2_session_set_local_window_size(h->ng, NGHTTP2_FLAG_NONE, 0, CONN_WINDOW)) {
		nghttp2_session_del(h->ng);
		free(h);
		return NULL;
	}
	h->tp = *tp;     /* (the transport moves: nothing of it points back at where it was) */
	h->peer = *peer; /* (and the client's address, a PROXY header's included) */
	*peer = NULL;
	h->rx = rx;
	h->rx_h1 = true;
	keel_timer_init(&h->timer, conn_timeout);
	h->start_ns = keel_loop_now_ns(s->loop);
	h->next = s->h2_conns;
	if (s->h2_conns)
		s->h2_conns->prev = h;
	s->h2_conns = h;
	if (s->cfg.access_log_fd >= 0)
		keel__conn_peer(&h->tp, &h->peer);
	if (s->stopping) {
		h->draining = true; /* (goaway_last 0: no stream is taken) */
		nghttp2_submit_goaway(h->ng, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, NULL, 0);
	}
	timer_update(h);
	return h;
}

static void conn_closed(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	struct keel__h2_conn *h = ud;
	keel_http_server *s = h->s;
	if (h->prev)
		h->prev->next = h->next;
	else
		s->h2_conns = h->next;
	if (h->next)
		h->next->prev = h->prev;
	batch_put(h);
	free(h->peer);
	free(h);
	keel__server_conn_gone(s);
}

/* Free only when nothing refers to the connection any more. */
static void try_free(struct keel__h2_conn *h)
{
	if (h->closed || h->rx || h->sending)
		return;
	for (struct h2_stream *st = h->streams; st; st = st->next)
		if (st->r->pending || st->fetch)
			return;
	while (h->streams)
		stream_release(h->streams);
	h->release = h->fetchq = NULL;
	nghttp2_session_del(h->ng);
	h->ng = NULL;
	h->closed = true;
	keel_promise_done(keel_transport_close(&h->tp), conn_closed, h);
}

static void conn_close(struct keel__h2_conn *h)
{
	if (!h->closing) {
		h->closing = true;
		h->s->nclosing++;
		keel_timer_disarm(h->s->loop, &h->timer);
		/* Handlers and fetches still working are asked to stop; their answers are discarded. */
		for (struct h2_stream *st = h->streams; st; st = st->next) {
			keel__body_wait_reject(st->r, -ECONNRESET);
			if (st->r->pending)
				keel_promise_cancel(st->r->pending);
			if (st->fetch)
				keel_promise_cancel(st->fetch);
		}
		if (h->rx)
			keel_promise_cancel(h->rx); /* (HTTP/1.1's, while it is still the one running) */
		if (h->send_p)
			keel_promise_cancel(h->send_p);
	}
	try_free(h);
}

/* Stopping: GOAWAY now; the streams in flight finish within the grace period. */
void keel__h2_drain_all(keel_http_server *s)
{
	for (struct keel__h2_conn *h = s->h2_conns, *next; h; h = next) {
		next = h->next;
		if (h->closing || h->draining)
			continue;
		h->draining = true;
		h->goaway_last = nghttp2_session_get_last_proc_stream_id(h->ng);
		nghttp2_submit_goaway(h->ng, NGHTTP2_FLAG_NONE, h->goaway_last, NGHTTP2_NO_ERROR, NULL, 0);
		pump(h);
	}
}

void keel__h2_close_all(keel_http_server *s)
{
	for (struct keel__h2_conn *h = s->h2_conns, *next; h; h = next) {
		next = h->next;
		conn_close(h);
	}
}

/* ---- The core's calls back ------------------------------------------------- */

static void h2_handler_done(keel_http_request *r, keel_outcome o)
{
	struct h2_stream *st = r->conn;
	struct keel__h2_conn *h = st->h;
	if (st->closed || h->closing) {
		if (o.err == -ECANCELED)
			keel__req_zombie(r,
			                 r->pending); /* cancelled, but its producer may still write to it */
		else if (!o.err && o.ptr)
			r->answer = o.ptr; /* (discarded, but a file it opened is closed with it) */
		r->pending = NULL;
		r->done = 1;
		stream_settled(st);
		return;
	}
	keel__req_answer(r, o);
	pump(h);
}

static void h2_answered(keel_http_request *r)
{
	struct h2_stream *st = r->conn;
	if (r->stream_body && !r->body_done && !r->answer->stream) {
		/* Answered without a streamed response: the rest of the body is not wanted. */
		r->body_discard = 1;
		keel__body_wait_reject(r, -ECANCELED);
		stream_consume_all(st);
	}
	if (!st->dispatched || st->submitted)
		return; /* (answered inside dispatch: the caller submits it) */
	submit(st);
}

static void body_read_cancel(keel_promise *p, void *ud)
{
	keel_http_request *r = ud;
	if (r->body_wait == p) {
		r->body_wait = NULL;
		keel_promise_reject(p, -ECANCELED);
	}
}

/* HTTP/2's side of keel_http_body_read: the previous piece is consumed, the next is what arrived since. */
static void h2_body_read(keel_http_request *r, keel_promise *p)
{
	struct h2_stream *st = r->conn;
	struct keel__h2_conn *h = st->h;
	if (r->body_err || h->closing || (st->closed && !r->body_done)) {
		keel_promise_reject(p, r->body_err ? r->body_err : -ECONNRESET);
		return;
	}
	if (r->body_wait || r->body_discard) {
		keel_promise_reject(p, r->body_wait ? -EBUSY : -ECANCELED);
		return;
	}
	if (st->given) {
		/* The reader is done with its piece: the window reopens by as much. */
		if (!st->closed)
			nghttp2_session_consume(h->ng, st->id, st->given);
		memmove(r->body_own, r->body_own + st->given, r->body_len - st->given);
		r->body_len -= st->given;
		st->given = 0;
	}
	r->body_wait = p;
	st->wait_ns = keel_loop_now_ns(h->s->loop);
	keel_promise_on_cancel(p, body_read_cancel, r);
	stream_give(st);
	pump(h); /* (the WINDOW_UPDATE; a no-op inside nghttp2's callbacks) */
}

static const char *h2_peer(keel_http_request *r)
{
	struct h2_stream *st = r->conn;
	return keel__conn_peer(&st->h->tp, &st->h->peer);
}

static bool h2_secure(keel_http_request *r)
{
	struct h2_stream *st = r->conn;
	return st->h->tp.ops->secure;
}

const struct keel__http_proto keel__h2_proto = {
    .handler_done = h2_handler_done,
    .answered = h2_answered,
    .body_read = h2_body_read,
    .peer = h2_peer,
    .secure = h2_secure,
    .version = "HTTP/2.0",
};
