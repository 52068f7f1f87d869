/*
 * WebSocket connections (RFC 6455) in the HTTP server: the opening
 * handshake a handler accepts, then the connection that takes the
 * transport over from HTTP/1.1 once the 101 is out.
 *
 * The design idea: the service paces the input. Frames are parsed from the
 * receive buffers where they landed (ws_codec.c), up to the next whole
 * message, which waits there until the service asks for it; a connection
 * whose service does not ask holds at most RX_HELD_MAX buffers and stops
 * reading. Control frames are handled as they are parsed. Output is a queue
 * of frames, each a header and payload in one block, written a batch per
 * send and bounded in bytes.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "keel/errors.h"
#include "keel/http_parse.h"
#include "keel/log.h"
#include "keel/timer.h"
#include "keel/ws.h"
#include "server_internal.h"
#include "ws_codec.h"

#define RX_HELD_MAX 4           /* receive buffers held unparsed before reading stops */
#define TX_BATCH 64             /* frames per send */
#define OUT_FREE_MAX 8          /* queue entries kept for reuse per connection */
#define MSG_KEEP 16384          /* a gathering buffer larger than this is freed between messages */
#define REASON_MAX 123          /* a close frame's reason: 125 bytes less the code */
#define SEND_SLICE (256u << 10) /* bytes per send: the send deadline restarts after each */

struct keel_ws_frame {
	uint32_t refs;
	uint8_t hoff; /* where the header starts in data */
	uint8_t opcode;
	size_t len;     /* the payload's bytes */
	uint8_t data[]; /* KEEL__WS_SHDR_MAX bytes of room (the header at hoff), then the payload */
};

static size_t frame_bytes(const keel_ws_frame *f)
{
	return KEEL__WS_SHDR_MAX - f->hoff + f->len;
}

struct ws_out {
	struct ws_out *next;
	keel_ws_frame *f;
	keel_promise *p; /* NULL: keel's own (a pong, a ping, the close) */
	bool close;      /* the close frame: the last one */
	bool data;       /* counted in queued */
};

enum { MSG_NONE = 0, MSG_READY, MSG_OUT };

struct keel_ws {
	keel_loop *loop;
	keel_http_server *s;  /* NULL once the connection is closed */
	keel_ws *prev, *next; /* the server's WebSocket connections */
	keel_transport tp;
	keel_ws_config cfg;
	char *subprotocol; /* "" for none */
	char *peer;
	/* Input */
	keel_promise *rx;                /* the receive while it runs */
	keel_buf *held_head, *held_tail; /* received, not yet parsed; the first from held_off */
	uint32_t held_off;
	unsigned nheld;
	struct keel__ws_hdr fh; /* the frame being read */
	uint64_t got;           /* of its payload */
	uint8_t hdr[KEEL__WS_HDR_MAX];
	uint8_t hdr_len; /* a header in pieces, gathered */
	uint8_t msg_op;  /* the message in fragments being gathered: its opcode, or 0 */
	uint8_t msg_state;
	bool in_frame;
	uint32_t utf8; /* the text message's UTF-8 state */
	char *msg;     /* a message gathered from pieces */
	size_t msg_len, msg_cap;
	keel_buf *msg_buf; /* the buffer a message handed out in place points into */
	keel_ws_msg cur;
	uint8_t ctrl[KEEL__WS_CTRL_MAX];
	keel_promise *recv_wait;
	/* Output */
	struct ws_out *out_head, *out_tail, *out_free;
	struct ws_out *pong;          /* a pong queued and not yet being sent: a later ping replaces it */
	unsigned nsending, nout_free; /* queue entries the send in flight touches (the last maybe in part) */
	keel_promise *send_p;
	size_t out_off; /* bytes of the first entry already written */
	size_t sending; /* bytes of the send in flight */
	size_t queued;
	/* Closing */
	keel_promise **close_waits;
	unsigned nclose_waits;
	char *rcvd_reason, *sent_reason;
	size_t rcvd_reason_len, sent_reason_len;
	uint16_t rcvd_code, sent_code;
	bool close_sent : 1, close_written : 1, close_rcvd : 1, failed : 1, rx_eof : 1, rx_done : 1;
	bool closing : 1, tp_closing : 1, closed : 1, app_gone : 1, aborted : 1;
	bool rx_starting : 1; /* inside keel_transport_recv (see rx_start) */
	/* Deadlines */
	keel_timer timer;
	uint64_t last_rx_ns, ping_sent_ns, close_due_ns, send_start_ns;
};

/* ---- Frames -------------------------------------------------------------- */

static keel_ws_frame *frame_make(unsigned opcode, const void *a, size_t alen, const void *b, size_t blen)
{
	size_t len = alen + blen;
	if (len > SIZE_MAX - sizeof(keel_ws_frame) - KEEL__WS_SHDR_MAX)
		return NULL;
	keel_ws_frame *f = keel__malloc(sizeof(*f) + KEEL__WS_SHDR_MAX + len);
	if (!f)
		return NULL;
	uint8_t h[KEEL__WS_SHDR_MAX];
	size_t hn = keel__ws_hdr_write(h, true, opcode, len);
	f->refs = 1;
	f->hoff = (uint8_t)(KEEL__WS_SHDR_MAX - hn);
	f->opcode = (uint8_t)opcode;
	f->len = len;
	memcpy(f->data + f->hoff, h, hn);
	if (alen)
		memcpy(f->data + KEEL__WS_SHDR_MAX, a, alen);
	if (blen)
		memcpy(f->data + KEEL__WS_SHDR_MAX + alen, b, blen);
	return f;
}

keel_ws_frame *keel_ws_frame_new(int type, const void *data, size_t len)
{
	if (type != KEEL_WS_TEXT && type != KEEL_WS_BINARY)
		return NULL;
	if (type == KEEL_WS_TEXT && keel__utf8_step(0, data, len) != 0)
		return NULL;
	return frame_make((unsigned)type, data, len, NULL, 0);
}

void keel_ws_frame_release(keel_ws_frame *f)
{
	if (f && --f->refs == 0)
		free(f);
}

/* ---- Lifetime ------------------------------------------------------------ */

static void ws_destroy(keel_ws *ws)
{
	while (ws->out_free) {
		struct ws_out *o = ws->out_free;
		ws->out_free = o->next;
		free(o);
	}
	if (ws->msg_buf)
		keel_buf_release(ws->msg_buf);
	free(ws->msg);
	free(ws->peer);
	free(ws->subprotocol);
	free(ws->rcvd_reason);
	free(ws->sent_reason);
	free(ws->close_waits);
	free(ws);
}

static void out_put(keel_ws *ws, struct ws_out *o)
{
	keel_ws_frame_release(o->f);
	if (ws->nout_free < OUT_FREE_MAX) {
		o->next = ws->out_free;
		ws->out_free = o;
		ws->nout_free++;
	} else {
		free(o);
	}
}

static struct ws_out *out_get(keel_ws *ws)
{
	struct ws_out *o = ws->out_free;
	if (o) {
		ws->out_free = o->next;
		ws->nout_free--;
	} else if (!(o = keel__malloc(sizeof(*o)))) {
		return NULL;
	}
	memset(o, 0, sizeof(*o));
	return o;
}

/* The held input goes (a TLS transport's buffers must go before it). */
static void held_clear(keel_ws *ws)
{
	while (ws->held_head) {
		keel_buf *b = ws->held_head;
		ws->held_head = b->next;
		keel_buf_release(b);
	}
	ws->held_tail = NULL;
	ws->held_off = 0;
	ws->nheld = 0;
}

static void tp_closed(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	keel_ws *ws = ud;
	keel_http_server *s = ws->s;
	ws->closed = true;
	keel_timer_disarm(ws->loop, &ws->timer);
	if (ws->recv_wait) {
		keel_promise *p = ws->recv_wait;
		ws->recv_wait = NULL;
		keel_promise_reject(p, KEEL_EWSCLOSED);
	}
	while (ws->out_head) {
		struct ws_out *q = ws->out_head;
		ws->out_head = q->next;
		if (q->p)
			keel_promise_reject(q->p, KEEL_EWSCLOSED);
		out_put(ws, q);
	}
	ws->out_tail = NULL;
	ws->pong = NULL;
	ws->queued = 0;
	ws->out_off = 0;
	for (unsigned i = 0; i < ws->nclose_waits; i++)
		keel_promise_resolve(ws->close_waits[i], 0, NULL);
	ws->nclose_waits = 0;
	if (ws->prev)
		ws->prev->next = ws->next;
	else
		s->ws_conns = ws->next;
	if (ws->next)
		ws->next->prev = ws->prev;
	ws->s = NULL;
	keel__server_conn_gone(s);
	if (ws->app_gone)
		ws_destroy(ws);
}

/* Close the transport once nothing of ours is in flight on it. */
static void maybe_close(keel_ws *ws)
{
	if (!ws->closing || ws->rx || ws->rx_starting || ws->send_p || ws->tp_closing)
		return;
	ws->tp_closing = true;
	/*
	 * (A message handed out in place keeps its buffer, held, until the
	 * next receive or the free: a loop's pool buffer, or a TLS endpoint's,
	 * which the endpoint outlives; neither goes with the transport.)
	 */
	held_clear(ws);
	ws->s->nclosing++;
	keel_promise_done(keel_transport_close(&ws->tp), tp_closed, ws);
}

static void timer_at(keel_ws *ws, uint64_t due_ns);

/* The connection ends: abort says whether a send in flight is cut (a peer gone, a timeout) or may finish. */
static void finish(keel_ws *ws, bool abort)
{
	if (!ws->closing) {
		ws->closing = true;
		ws->rx_done = true;
		if (ws->rx)
			keel_promise_cancel(ws->rx);
		if (ws->recv_wait) {
			keel_promise *p = ws->recv_wait;
			ws->recv_wait = NULL;
			keel_promise_reject(p, KEEL_EWSCLOSED);
		}
	}
	if (abort && !ws->aborted) {
		ws->aborted = true;
		if (ws->send_p)
			keel_promise_cancel(ws->send_p);
	} else if (!abort && !ws->close_due_ns) {
		/* A send still going may finish, within the close timeout (and the send timeout). */
		ws->close_due_ns = keel_loop_now_ns(ws->loop) + ws->cfg.close_timeout_ms * 1000000ull;
		timer_at(ws, ws->close_due_ns);
	}
	maybe_close(ws);
}

/* ---- Deadlines ------------------------------------------------------------ */

static void timer_at(keel_ws *ws, uint64_t due_ns)
{
	uint64_t now = keel_loop_now_ns(ws->loop);
	if (keel_timer_is_armed(&ws->timer) && keel_timer_deadline_ns(&ws->timer) <= due_ns)
		return;
	keel_timer_arm(ws->loop, &ws->timer, due_ns > now ? (due_ns - now + 999999) / 1000000 : 0);
}

static void send_ping(keel_ws *ws);

static void ws_timeout(keel_loop *loop, keel_timer *t)
{
	keel_ws *ws = keel_container_of(t, keel_ws, timer);
	uint64_t now = keel_loop_now_ns(loop), next = UINT64_MAX;
	if (ws->tp_closing || ws->aborted)
		return;
	if (ws->close_due_ns) {
		if (now >= ws->close_due_ns) {
			finish(ws, true); /* the peer never answered our close, or the end is overdue */
			return;
		}
		next = ws->close_due_ns;
	}
	if (ws->send_p && ws->cfg.send_timeout_ms) {
		uint64_t due = ws->send_start_ns + ws->cfg.send_timeout_ms * 1000000ull;
		if (now >= due) {
			keel_log(KEEL_LOG_DEBUG, "websocket %s: a send made no progress in %u ms: dropped",
			         keel_ws_peer(ws), ws->cfg.send_timeout_ms);
			finish(ws, true);
			return;
		}
		next = due < next ? due : next;
	}
	if (ws->cfg.ping_interval_ms && !ws->close_sent && !ws->closing) {
		uint64_t due;
		if (!ws->rx && ws->nheld) {
			/*
			 * Not reading: the service has not taken what is held. The
			 * peer's answers wait unread, and it is not theirs to answer
			 * for: the wait starts again when reading does.
			 */
			ws->last_rx_ns = now;
			ws->ping_sent_ns = 0;
		}
		if (ws->ping_sent_ns > ws->last_rx_ns) {
			due = ws->ping_sent_ns + ws->cfg.ping_timeout_ms * 1000000ull;
			if (now >= due) {
				keel_log(KEEL_LOG_DEBUG,
				         "websocket %s: no answer to a ping in %u ms: dropped",
				         keel_ws_peer(ws), ws->cfg.ping_timeout_ms);
				finish(ws, true);
				return;
			}
		} else {
			due = ws->last_rx_ns + ws->cfg.ping_interval_ms * 1000000ull;
			if (now >= due) {
				send_ping(ws);
				ws->ping_sent_ns = now;
				due = now + ws->cfg.ping_timeout_ms * 1000000ull;
			}
		}
		next = due < next ? due : next;
	}
	if (next != UINT64_MAX)
		timer_at(ws, next);
}

/* ---- Output --------------------------------------------------------------- */

static void write_more(keel_ws *ws);

static void sent(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	keel_ws *ws = ud;
	ws->send_p = NULL;
	if (o.err) {
		ws->nsending = 0;
		finish(ws, true);
		return;
	}
	/* The slice is out: every entry it ended is done; the last may go on in the next one. */
	size_t left = ws->sending;
	ws->sending = 0;
	ws->nsending = 0;
	while (left) {
		struct ws_out *q = ws->out_head;
		size_t rest = frame_bytes(q->f) - ws->out_off;
		if (left < rest) {
			ws->out_off += left;
			break;
		}
		left -= rest;
		ws->out_off = 0;
		ws->out_head = q->next;
		if (!ws->out_head)
			ws->out_tail = NULL;
		if (q->data)
			ws->queued -= frame_bytes(q->f);
		if (q->close) {
			ws->close_written = true;
			/* Out: now the peer has close_timeout_ms to answer it. */
			ws->close_due_ns = keel_loop_now_ns(ws->loop) + ws->cfg.close_timeout_ms * 1000000ull;
			timer_at(ws, ws->close_due_ns);
		}
		if (q->p)
			keel_promise_resolve(q->p, (int64_t)q->f->len, NULL);
		out_put(ws, q);
	}
	/* Our close is out: after the peer's, or after an error of theirs, the connection ends. */
	if (ws->close_written && (ws->close_rcvd || ws->failed || ws->rx_eof))
		finish(ws, false);
	if (ws->closing) {
		maybe_close(ws);
		return;
	}
	write_more(ws);
}

/* The queue entries already begun: the send in flight's, or the first one part-written. */
static unsigned out_started(const keel_ws *ws)
{
	return ws->send_p ? ws->nsending : ws->out_off ? 1 : 0;
}

/* The next slice of the queue, up to SEND_SLICE bytes and TX_BATCH frames, in one send. */
static void write_more(keel_ws *ws)
{
	if (ws->send_p || ws->closing || !ws->out_head || ws->tp_closing)
		return;
	struct iovec iov[TX_BATCH];
	unsigned n = 0;
	size_t bytes = 0, off = ws->out_off;
	for (struct ws_out *q = ws->out_head; q && n < TX_BATCH && bytes < SEND_SLICE; q = q->next) {
		size_t len = frame_bytes(q->f) - off;
		if (len > SEND_SLICE - bytes)
			len = SEND_SLICE - bytes;
		iov[n].iov_base = q->f->data + q->f->hoff + off;
		iov[n++].iov_len = len;
		bytes += len;
		off = 0;
		if (q == ws->pong)
			ws->pong = NULL; /* on its way: a later ping gets a pong of its own */
	}
	ws->nsending = n;
	ws->sending = bytes;
	ws->send_start_ns = keel_loop_now_ns(ws->loop);
	if (ws->cfg.send_timeout_ms)
		timer_at(ws, ws->send_start_ns + ws->cfg.send_timeout_ms * 1000000ull);
	ws->send_p = keel_transport_sendv(&ws->tp, iov, (int)n);
	keel_promise_done(ws->send_p, sent, ws);
}

/* Queue q: at the tail, or (a control frame of ours) right behind what is being sent. */
static void out_queue(keel_ws *ws, struct ws_out *q, bool front)
{
	q->next = NULL;
	if (!front || !ws->out_head) {
		if (ws->out_tail)
			ws->out_tail->next = q;
		else
			ws->out_head = q;
		ws->out_tail = q;
	} else {
		struct ws_out **pp = &ws->out_head;
		for (unsigned i = 0, n = out_started(ws); i < n && *pp; i++)
			pp = &(*pp)->next;
		q->next = *pp;
		*pp = q;
		if (!q->next)
			ws->out_tail = q;
	}
	write_more(ws);
}

static void control_send(keel_ws *ws, unsigned opcode, const void *a, size_t alen, const void *b, size_t blen,
                         bool close)
{
	keel_ws_frame *f = frame_make(opcode, a, alen, b, blen);
	struct ws_out *q = f ? out_get(ws) : NULL;
	if (!q) {
		keel_ws_frame_release(f);
		finish(ws, true); /* out of memory for a frame the protocol owes */
		return;
	}
	q->f = f;
	q->close = close;
	if (opcode == KEEL__WS_PONG)
		ws->pong = q;
	out_queue(ws, q, !close);
}

static void send_ping(keel_ws *ws)
{
	control_send(ws, KEEL__WS_PING, NULL, 0, NULL, 0, false);
}

static void send_close(keel_ws *ws, unsigned code, const char *reason, size_t rlen)
{
	if (ws->close_sent || ws->closing)
		return;
	ws->close_sent = true;
	ws->sent_code = (uint16_t)code;
	if (rlen && (ws->sent_reason = keel__malloc(rlen))) {
		memcpy(ws->sent_reason, reason, rlen);
		ws->sent_reason_len = rlen;
	}
	if (!ws->cfg.send_timeout_ms) {
		/* No send deadline to get it written: the close's own one runs from now. */
		ws->close_due_ns = keel_loop_now_ns(ws->loop) + ws->cfg.close_timeout_ms * 1000000ull;
		timer_at(ws, ws->close_due_ns);
	}
	uint8_t c[2] = {(uint8_t)(code >> 8), (uint8_t)code};
	if (code == KEEL_WS_NO_STATUS)
		control_send(ws, KEEL__WS_CLOSE, NULL, 0, NULL, 0,
		             true); /* an empty close, answered as it came */
	else
		control_send(ws, KEEL__WS_CLOSE, c, 2, reason, rlen, true);
	if (ws->closing)
		return;
	if (ws->recv_wait) {
		keel_promise *p = ws->recv_wait;
		ws->recv_wait = NULL;
		keel_promise_reject(p, KEEL_EWSCLOSED);
	}
}

/* The peer broke the protocol: our close with code, and the connection ends once it is out. */
static void fail(keel_ws *ws, unsigned code, const char *why)
{
	if (ws->failed || ws->closing)
		return;
	keel_log(KEEL_LOG_DEBUG, "websocket %s: %s: closing with %u", keel_ws_peer(ws), why, code);
	ws->failed = true;
	ws->rx_done = true;
	if (ws->close_sent) {
		/* Our close is queued already (with what came before it): the end follows it. */
		if (ws->close_written)
			finish(ws, false);
		return;
	}
	/* What was queued and not begun is dropped: the close goes next. */
	struct ws_out **pp = &ws->out_head;
	for (unsigned i = 0, n = out_started(ws); i < n && *pp; i++)
		pp = &(*pp)->next;
	while (*pp) {
		struct ws_out *q = *pp;
		*pp = q->next;
		if (q->data)
			ws->queued -= frame_bytes(q->f);
		if (q->p)
			keel_promise_reject(q->p, KEEL_EWSCLOSED);
		out_put(ws, q);
	}
	ws->out_tail = NULL;
	for (struct ws_out *q = ws->out_head; q; q = q->next)
		ws->out_tail = q;
	ws->pong = NULL;
	send_close(ws, code, why, strlen(why));
}

/* ---- Input ---------------------------------------------------------------- */

/* Messages are read and dropped: our close is sent, or nobody will ask for them. */
static bool discarding(const keel_ws *ws)
{
	return ws->close_sent || ws->app_gone;
}

static void control(keel_ws *ws, unsigned opcode, const uint8_t *p, size_t n)
{
	if (opcode == KEEL__WS_PING) {
		if (ws->close_sent)
			return;
		if (ws->pong) {
			/* The pong for an earlier ping has not left: it answers this one instead (RFC 6455 5.5.3). */
			keel_ws_frame *f = frame_make(KEEL__WS_PONG, p, n, NULL, 0);
			if (f) {
				keel_ws_frame_release(ws->pong->f);
				ws->pong->f = f;
			}
			return;
		}
		control_send(ws, KEEL__WS_PONG, p, n, NULL, 0, false);
		return;
	}
	if (opcode == KEEL__WS_PONG)
		return; /* (its arrival counted as input) */
	/* Close */
	unsigned code = KEEL_WS_NO_STATUS;
	if (n == 1) {
		fail(ws, KEEL_WS_PROTOCOL, "a close frame of one byte");
		return;
	}
	if (n >= 2) {
		code = (unsigned)p[0] << 8 | p[1];
		if (!keel__ws_close_code_ok(code)) {
			fail(ws, KEEL_WS_PROTOCOL, "a close code that may not be sent");
			return;
		}
		if (keel__utf8_step(0, p + 2, n - 2) != 0) {
			fail(ws, KEEL_WS_INVALID_DATA, "a close reason that is not UTF-8");
			return;
		}
		if (n > 2 && (ws->rcvd_reason = keel__malloc(n - 2))) {
			memcpy(ws->rcvd_reason, p + 2, n - 2);
			ws->rcvd_reason_len = n - 2;
		}
	}
	ws->close_rcvd = true;
	ws->rcvd_code = (uint16_t)code;
	ws->rx_done = true;
	if (!ws->close_sent)
		send_close(ws, code, NULL, 0); /* the echo: the code received */
	else if (ws->close_written)
		finish(ws, false);
	if (ws->recv_wait) {
		keel_promise *w = ws->recv_wait;
		ws->recv_wait = NULL;
		keel_promise_reject(w, KEEL_EWSCLOSED);
	}
}

/* A frame's header is read: check it against the state. false: the connection failed. */
static bool frame_begin(keel_ws *ws)
{
	const struct keel__ws_hdr *h = &ws->fh;
	if (!h->masked) {
		fail(ws, KEEL_WS_PROTOCOL, "an unmasked frame from a client");
		return false;
	}
	if (h->opcode & 0x8) {
		ws->in_frame = true;
		ws->got = 0;
		return true;
	}
	if (h->opcode == KEEL__WS_CONT && !ws->msg_op) {
		fail(ws, KEEL_WS_PROTOCOL, "a continuation frame with no message to continue");
		return false;
	}
	if (h->opcode != KEEL__WS_CONT && ws->msg_op) {
		fail(ws, KEEL_WS_PROTOCOL, "a new message inside a fragmented one");
		return false;
	}
	if (h->opcode != KEEL__WS_CONT) {
		ws->msg_op = h->opcode;
		ws->msg_len = 0;
		ws->utf8 = 0;
	}
	if (h->len > ws->cfg.message_max - ws->msg_len && !discarding(ws)) {
		fail(ws, KEEL_WS_TOO_BIG, "a message over message_max");
		return false;
	}
	ws->in_frame = true;
	ws->got = 0;
	return true;
}

/* The frame's payload is all in: a control frame acted on, a message maybe complete. */
static void frame_end(keel_ws *ws)
{
	const struct keel__ws_hdr *h = &ws->fh;
	ws->in_frame = false;
	if (h->opcode & 0x8) {
		control(ws, h->opcode, ws->ctrl, (size_t)h->len);
		return;
	}
	if (!h->fin)
		return;
	uint8_t op = ws->msg_op;
	ws->msg_op = 0;
	if (discarding(ws)) {
		ws->msg_len = 0;
		return;
	}
	if (op == KEEL__WS_TEXT && ws->utf8 != 0) {
		fail(ws, KEEL_WS_INVALID_DATA, "a text message that ends inside a character");
		return;
	}
	ws->cur.type = op;
	ws->cur.data = ws->msg;
	ws->cur.len = ws->msg_len;
	ws->msg_state = MSG_READY;
}

/* Gather n payload bytes of a data frame into the message. false: the connection failed. */
static bool gather(keel_ws *ws, const uint8_t *p, size_t n)
{
	if (discarding(ws))
		return true;
	if (ws->msg_op == KEEL__WS_TEXT) {
		ws->utf8 = keel__utf8_step(ws->utf8, p, n);
		if (ws->utf8 == KEEL__UTF8_BAD) {
			fail(ws, KEEL_WS_INVALID_DATA, "a text message that is not UTF-8");
			return false;
		}
	}
	if (ws->msg_len + n > ws->msg_cap) {
		/*
		 * Doubling, by what has come (not by what a header announced: a
		 * peer could make every connection reserve message_max with one
		 * byte); message_max was checked at each header, so this stays
		 * within it.
		 */
		size_t want = ws->msg_len + n;
		size_t cap = ws->msg_cap * 2 > want ? ws->msg_cap * 2 : want;
		if (cap < 4096)
			cap = 4096;
		if (cap > ws->cfg.message_max && want <= ws->cfg.message_max)
			cap = ws->cfg.message_max;
		char *m = keel__realloc(ws->msg, cap);
		if (!m) {
			fail(ws, KEEL_WS_INTERNAL, "out of memory for a message");
			return false;
		}
		ws->msg = m;
		ws->msg_cap = cap;
	}
	memcpy(ws->msg + ws->msg_len, p, n);
	ws->msg_len += n;
	return true;
}

/*
 * Parse from p[0..n) of buf: up to one whole message (then the service
 * takes it), or the end of the input (a close, an error). Returns the
 * bytes consumed.
 */
static size_t input(keel_ws *ws, keel_buf *buf, uint8_t *p, size_t n)
{
	size_t off = 0;
	while (off < n && ws->msg_state == MSG_NONE && !ws->rx_done) {
		if (!ws->in_frame) {
			int rc;
			if (!ws->hdr_len) {
				rc = keel__ws_hdr_parse(p + off, n - off, &ws->fh);
				if (rc == 0) {
					memcpy(ws->hdr, p + off,
					       n - off); /* (< KEEL__WS_HDR_MAX: it was incomplete) */
					ws->hdr_len = (uint8_t)(n - off);
					return n;
				}
				if (rc > 0)
					off += (size_t)rc;
			} else {
				size_t k = n - off < (size_t)(KEEL__WS_HDR_MAX - ws->hdr_len)
				               ? n - off
				               : (size_t)(KEEL__WS_HDR_MAX - ws->hdr_len);
				memcpy(ws->hdr + ws->hdr_len, p + off, k);
				rc = keel__ws_hdr_parse(ws->hdr, ws->hdr_len + k, &ws->fh);
				if (rc == 0) {
					ws->hdr_len = (uint8_t)(ws->hdr_len + k);
					return n;
				}
				if (rc > 0) {
					off += (size_t)rc - ws->hdr_len;
					ws->hdr_len = 0;
				}
			}
			if (rc < 0) {
				fail(ws, KEEL_WS_PROTOCOL, "a frame header that breaks the protocol");
				break;
			}
			if (!frame_begin(ws))
				break;
			const struct keel__ws_hdr *h = &ws->fh;
			if (h->fin && h->opcode != KEEL__WS_CONT && !(h->opcode & 0x8) && h->len <= n - off &&
			    !discarding(ws)) {
				/* A message in one frame of this buffer: unmasked and handed out where it is. */
				uint8_t *pl = p + off;
				size_t len = (size_t)h->len;
				keel__ws_unmask(pl, len, h->mask, 0);
				off += len;
				ws->in_frame = false;
				ws->msg_op = 0;
				if (h->opcode == KEEL__WS_TEXT && keel__utf8_step(0, pl, len) != 0) {
					fail(ws, KEEL_WS_INVALID_DATA, "a text message that is not UTF-8");
					break;
				}
				keel_buf_hold(buf);
				ws->msg_buf = buf;
				ws->cur.type = h->opcode;
				ws->cur.data = (const char *)pl;
				ws->cur.len = len;
				ws->msg_state = MSG_READY;
				break;
			}
			if (h->len == 0) {
				frame_end(ws);
				continue;
			}
		}
		size_t k = n - off < ws->fh.len - ws->got ? n - off : (size_t)(ws->fh.len - ws->got);
		uint8_t *pl = p + off;
		keel__ws_unmask(pl, k, ws->fh.mask, ws->got);
		if (ws->fh.opcode & 0x8)
			memcpy(ws->ctrl + ws->got, pl, k);
		else if (!gather(ws, pl, k))
			break;
		ws->got += k;
		off += k;
		if (ws->got == ws->fh.len)
			frame_end(ws);
	}
	return off;
}

static void rx_start(keel_ws *ws);

/* Hand a ready message to the receive waiting for it; parse held input while nothing waits to be taken. */
static void pump(keel_ws *ws)
{
	for (;;) {
		if (ws->msg_state == MSG_READY && ws->recv_wait) {
			keel_promise *p = ws->recv_wait;
			ws->recv_wait = NULL;
			ws->msg_state = MSG_OUT;
			keel_promise_resolve(p, 0, &ws->cur);
		}
		if (ws->msg_state != MSG_NONE || ws->rx_done || !ws->held_head)
			break;
		keel_buf *b = ws->held_head;
		size_t off = ws->held_off;
		off += input(ws, b, (uint8_t *)b->data + off, b->len - off);
		if (off < b->len && !ws->rx_done) {
			ws->held_off = (uint32_t)off;
			continue;
		}
		ws->held_head = b->next;
		if (!ws->held_head)
			ws->held_tail = NULL;
		ws->held_off = 0;
		ws->nheld--;
		keel_buf_release(b);
	}
	if (ws->rx_done && ws->held_head)
		held_clear(ws); /* past the close or the error: the rest is not read */
	if (ws->rx_eof && !ws->held_head && ws->msg_state == MSG_NONE && !ws->closing) {
		/* The input ended and all of it is read: no close frame came (else rx_done). */
		if (!ws->close_rcvd && !ws->close_sent)
			ws->rcvd_code = 0;
		finish(ws, false);
		return;
	}
	if (!ws->rx && !ws->rx_starting && !ws->rx_eof && !ws->closing && ws->nheld < RX_HELD_MAX)
		rx_start(ws);
}

static int on_data(void *ud, keel_buf *buf)
{
	keel_ws *ws = ud;
	ws->last_rx_ns = keel_loop_now_ns(ws->loop);
	if (ws->rx_done || ws->closing)
		return KEEL_CONTINUE; /* past the close: read and dropped until the end */
	keel_buf_hold(buf);
	buf->next = NULL;
	if (ws->held_tail)
		ws->held_tail->next = buf;
	else
		ws->held_head = buf;
	ws->held_tail = buf;
	ws->nheld++;
	pump(ws);
	if (ws->closing)
		return KEEL_STOP;
	return ws->nheld >= RX_HELD_MAX ? KEEL_STOP : KEEL_CONTINUE;
}

static void rx_ended(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	keel_ws *ws = ud;
	ws->rx = NULL;
	if (o.err == -ECANCELED && !ws->closing) {
		pump(ws); /* stopped to hold back: reads again once the service takes what is held */
		return;
	}
	if (!ws->closing) {
		ws->rx_eof = true; /* the peer's end, or a reset: what is held is still delivered */
		if (o.err)
			held_clear(ws);
		if (o.err || ws->close_written)
			finish(ws, o.err != 0);
		else
			pump(ws);
		return;
	}
	maybe_close(ws);
}

static void rx_start(keel_ws *ws)
{
	/* (A transport may deliver before it returns -- TLS, with plaintext at hand: pump must not start another.) */
	ws->rx_starting = true;
	keel_promise *p = keel_transport_recv(&ws->tp, on_data, ws, false);
	ws->rx_starting = false;
	ws->rx = p;
	keel_promise_done(p, rx_ended, ws);
	if (ws->closing && !keel_promise_is_settled(p))
		keel_promise_cancel(p); /* (it ended while the receive was being set up) */
}

/* ---- The service's calls ------------------------------------------------------ */

static void recv_cancelled(keel_promise *p, void *ud)
{
	keel_ws *ws = ud;
	if (ws->recv_wait != p)
		return;
	ws->recv_wait = NULL;
	keel_promise_reject(p, -ECANCELED);
}

static bool ended(const keel_ws *ws)
{
	return ws->close_sent || ws->close_rcvd || ws->failed || ws->closing;
}

keel_promise *keel_ws_recv(keel_ws *ws)
{
	keel_promise *p = keel_promise_new(ws->loop);
	if (ws->recv_wait) {
		keel_promise_reject(p, -EBUSY);
		return p;
	}
	if (ws->msg_state == MSG_OUT) {
		/* The message handed out last is done with. */
		ws->msg_state = MSG_NONE;
		if (ws->msg_buf) {
			keel_buf_release(ws->msg_buf);
			ws->msg_buf = NULL;
		}
		ws->msg_len = 0;
		if (ws->msg_cap > MSG_KEEP) {
			free(ws->msg);
			ws->msg = NULL;
			ws->msg_cap = 0;
		}
	}
	if (ws->msg_state == MSG_NONE && ended(ws)) {
		keel_promise_reject(p, KEEL_EWSCLOSED);
		return p;
	}
	ws->recv_wait = p;
	keel_promise_on_cancel(p, recv_cancelled, ws);
	pump(ws);
	return p;
}

static keel_promise *send_frame(keel_ws *ws, keel_ws_frame *f, bool own)
{
	keel_promise *p = keel_promise_new(ws->loop);
	size_t bytes = frame_bytes(f);
	int err = 0;
	struct ws_out *q = NULL;
	if (ended(ws))
		err = KEEL_EWSCLOSED;
	else if (ws->queued &&
	         bytes > ws->cfg.send_queue_max -
	                     (ws->queued < ws->cfg.send_queue_max ? ws->queued : ws->cfg.send_queue_max))
		err = KEEL_ELIMIT;
	else if (!(q = out_get(ws)))
		err = -ENOMEM;
	if (err) {
		if (own)
			keel_ws_frame_release(f);
		keel_promise_reject(p, err);
		return p;
	}
	if (!own)
		f->refs++;
	q->f = f;
	q->p = p;
	q->data = true;
	ws->queued += bytes;
	out_queue(ws, q, false);
	return p;
}

keel_promise *keel_ws_send(keel_ws *ws, int type, const void *data, size_t len)
{
	keel_ws_frame *f;
	if (type != KEEL_WS_TEXT && type != KEEL_WS_BINARY) {
		keel_promise *p = keel_promise_new(ws->loop);
		keel_promise_reject(p, -EINVAL);
		return p;
	}
	if (!(f = keel_ws_frame_new(type, data, len))) {
		keel_promise *p = keel_promise_new(ws->loop);
		keel_promise_reject(p, type == KEEL_WS_TEXT && keel__utf8_step(0, data, len) ? -EINVAL
		                                                                             : -ENOMEM);
		return p;
	}
	return send_frame(ws, f, true);
}

keel_promise *keel_ws_send_frame(keel_ws *ws, keel_ws_frame *f)
{
	return send_frame(ws, f, false);
}

size_t keel_ws_queued(const keel_ws *ws)
{
	return ws->queued;
}

keel_promise *keel_ws_close(keel_ws *ws, unsigned code, const char *reason)
{
	keel_promise *p = keel_promise_new(ws->loop);
	size_t rlen = reason ? strlen(reason) : 0;
	if (!ws->close_sent &&
	    (code == KEEL_WS_NO_STATUS || !keel__ws_close_code_ok(code) || rlen > REASON_MAX ||
	     keel__utf8_step(0, (const uint8_t *)reason, rlen) != 0)) {
		keel_promise_reject(p, -EINVAL);
		return p;
	}
	if (ws->closed) {
		keel_promise_resolve(p, 0, NULL);
		return p;
	}
	keel_promise **w = keel__realloc(ws->close_waits, (ws->nclose_waits + 1) * sizeof(*w));
	if (!w) {
		keel_promise_reject(p, -ENOMEM);
		return p;
	}
	ws->close_waits = w;
	w[ws->nclose_waits++] = p;
	send_close(ws, code, reason, rlen);
	return p;
}

unsigned keel_ws_close_status(const keel_ws *ws, const char **reason, size_t *len)
{
	const char *r = NULL;
	size_t n = 0;
	unsigned code = 0;
	if (ws->failed || (ws->close_sent && !ws->close_rcvd)) {
		code = ws->sent_code;
		r = ws->sent_reason;
		n = ws->sent_reason_len;
		if (!ws->failed && ws->closing && !ws->close_written)
			code = KEEL_WS_ABNORMAL; /* ours never left */
	} else if (ws->close_rcvd) {
		code = ws->rcvd_code;
		r = ws->rcvd_reason;
		n = ws->rcvd_reason_len;
	} else if (ws->closing || ws->rx_eof) {
		code = KEEL_WS_ABNORMAL;
	}
	if (reason)
		*reason = r ? r : "";
	if (len)
		*len = n;
	return code;
}

const char *keel_ws_subprotocol(const keel_ws *ws)
{
	return ws->subprotocol;
}

void *keel_ws_ud(const keel_ws *ws)
{
	return ws->cfg.ud;
}

const char *keel_ws_peer(keel_ws *ws)
{
	if (ws->peer)
		return ws->peer;
	if (ws->tp_closing)
		return "-";
	return keel__conn_peer(&ws->tp, &ws->peer);
}

void keel_ws_free(keel_ws *ws)
{
	if (!ws)
		return;
	ws->app_gone = true;
	if (ws->recv_wait) {
		keel_promise *p = ws->recv_wait;
		ws->recv_wait = NULL;
		keel_promise_reject(p, -ECANCELED);
	}
	if (ws->msg_state != MSG_NONE) {
		ws->msg_state = MSG_NONE;
		if (ws->msg_buf) {
			keel_buf_release(ws->msg_buf);
			ws->msg_buf = NULL;
		}
	}
	if (ws->closed) {
		ws_destroy(ws);
		return;
	}
	if (!ws->close_sent && !ws->closing)
		send_close(ws, KEEL_WS_NORMAL, NULL, 0);
	pump(ws); /* read on: the peer's close is what ends it */
}

/* ---- The opening handshake ------------------------------------------------- */

void keel_ws_config_default(keel_ws_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->message_max = 1 << 20;
	cfg->send_queue_max = 1 << 20;
	cfg->ping_interval_ms = 30000;
	cfg->ping_timeout_ms = 10000;
	cfg->close_timeout_ms = 5000;
	cfg->send_timeout_ms = 30000;
}

static bool list_has(const keel_http_msg *m, const char *name, const char *token, bool icase)
{
	for (unsigned i = 0; i < m->nheaders; i++) {
		if (!keel_str_ieq(m->headers[i].name, name))
			continue;
		keel_str list = m->headers[i].value, e;
		while (keel_http_list_next(&list, &e))
			if (icase ? keel_str_ieq(e, token) : keel_str_eq(e, token))
				return true;
	}
	return false;
}

int keel_ws_check(const keel_http_request *req)
{
	const keel_http_msg *m = &req->msg;
	if (req->proto && req->proto->version)
		return 501; /* HTTP/2's extended CONNECT (RFC 8441) is not spoken */
	if (!m->upgrade || !list_has(m, "upgrade", "websocket", true))
		return 426;
	if (!keel_str_eq(m->method, "GET") || m->version_minor < 1 || m->body != KEEL_HTTP_BODY_NONE ||
	    !m->keep_alive)
		return 400; /* (Connection: close beside Upgrade: the switch and the close contradict) */
	const keel_http_header *v = keel_http_header_find(m, "sec-websocket-version");
	if (!v || !keel_str_eq(v->value, "13"))
		return 426;
	const keel_http_header *k = keel_http_header_find(m, "sec-websocket-key");
	if (!k || !keel__ws_key_ok(k->value.ptr, k->value.len))
		return 400;
	return 0;
}

/* What the 101 carries over to the connection: keel__upgrade's first, as the protocol sees it. */
struct ws_pending {
	struct keel__upgrade up;
	keel_ws_config cfg;
	char *subprotocol;
};

static void pending_drop(struct keel__upgrade *u)
{
	struct ws_pending *w = (struct ws_pending *)u;
	free(w->subprotocol);
	free(w);
}

static void adopt_failed_closed(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	keel__server_conn_gone(ud);
}

static void pending_adopt(struct keel__upgrade *u, keel_http_server *s, keel_transport *tp, keel_buf *held,
                          uint32_t off, char *peer)
{
	struct ws_pending *w = (struct ws_pending *)u;
	keel_ws *ws = keel__calloc(1, sizeof(*ws));
	if (!ws) {
		free(peer);
		/* No record: the connection closes as HTTP/1.1's would. */
		while (held) {
			keel_buf *b = held;
			held = b->next;
			keel_buf_release(b);
		}
		s->nclosing++;
		keel_promise_done(keel_transport_close(tp), adopt_failed_closed, s);
		pending_drop(u);
		return;
	}
	ws->loop = s->loop;
	ws->s = s;
	ws->tp = *tp;    /* (the transport moves: nothing of it points back at where it was) */
	ws->peer = peer; /* (NULL: looked up from the socket when asked) */
	ws->cfg = w->cfg;
	ws->subprotocol = w->subprotocol;
	w->subprotocol = NULL;
	pending_drop(u);
	keel_timer_init(&ws->timer, ws_timeout);
	ws->last_rx_ns = keel_loop_now_ns(s->loop);
	ws->next = s->ws_conns;
	if (s->ws_conns)
		s->ws_conns->prev = ws;
	s->ws_conns = ws;
	s->stats.ws_upgrades++;
	for (keel_buf *b = held; b; b = b->next) {
		ws->held_tail = b;
		ws->nheld++;
	}
	ws->held_head = held;
	ws->held_off = off;
	if (ws->cfg.ping_interval_ms)
		timer_at(ws, ws->last_rx_ns + ws->cfg.ping_interval_ms * 1000000ull);
	ws->cfg.on_open(ws, ws->cfg.ud);
	if (s->stopping && !ws->close_sent)
		send_close(ws, KEEL_WS_GOING_AWAY, "server stopping", 15);
	pump(ws);
}

static keel_promise *refuse(keel_http_request *req, keel_promise *p, int st)
{
	static const keel_http_header v13[] = {
	    {KEEL_STR_INIT("Sec-WebSocket-Version"), KEEL_STR_INIT("13")},
	    {KEEL_STR_INIT("Upgrade"), KEEL_STR_INIT("websocket")},
	};
	keel_http_response *a = &req->resp;
	a->status = st;
	a->content_type = "text/plain";
	a->body.ptr = keel_http_status_text(st);
	a->body.len = strlen(a->body.ptr);
	if (st == 426) {
		a->headers = v13;
		a->nheaders = 2;
	} else if (st == 503) {
		a->headers = &keel__retry_after;
		a->nheaders = 1;
	}
	keel_promise_resolve(p, 0, a);
	return p;
}

keel_promise *keel_ws_accept(keel_http_request *req, const keel_ws_config *cfg)
{
	keel_promise *p = keel_promise_new(req->loop);
	if (!cfg || !cfg->on_open || !cfg->message_max || !cfg->send_queue_max || !cfg->close_timeout_ms ||
	    (cfg->ping_interval_ms && !cfg->ping_timeout_ms) || req->upgrade) {
		keel_promise_reject(p, -EINVAL);
		return p;
	}
	int st = keel_ws_check(req);
	if (st)
		return refuse(req, p, st);
	if (req->server->stopping)
		return refuse(req, p, 503);
	const char *sub = cfg->subprotocol;
	if (sub && *sub && !list_has(&req->msg, "sec-websocket-protocol", sub, false))
		return refuse(req, p, 400); /* one the client did not offer */
	const keel_http_header *k = keel_http_header_find(&req->msg, "sec-websocket-key");
	keel_ctx *ctx = keel_http_request_ctx(req);
	keel_http_header *h = keel_ctx_alloc(ctx, 4 * sizeof(*h));
	char *acc = keel_ctx_alloc(ctx, 29);
	struct ws_pending *w = keel__calloc(1, sizeof(*w));
	if (w)
		w->subprotocol = strdup(sub ? sub : "");
	if (!h || !acc || !w || !w->subprotocol || keel__ws_accept_key(k->value.ptr, k->value.len, acc)) {
		if (w)
			pending_drop(&w->up);
		keel_promise_reject(p, -ENOMEM);
		return p;
	}
	w->up.adopt = pending_adopt;
	w->up.drop = pending_drop;
	w->cfg = *cfg;
	w->cfg.subprotocol = NULL;
	unsigned n = 0;
	h[n].name = KEEL_STR("Upgrade");
	h[n++].value = KEEL_STR("websocket");
	h[n].name = KEEL_STR("Connection");
	h[n++].value = KEEL_STR("Upgrade");
	h[n].name = KEEL_STR("Sec-WebSocket-Accept");
	h[n].value.ptr = acc;
	h[n++].value.len = 28;
	if (*w->subprotocol) {
		h[n].name = KEEL_STR("Sec-WebSocket-Protocol");
		h[n].value.ptr = w->subprotocol;
		h[n++].value.len = strlen(w->subprotocol);
	}
	req->upgrade = &w->up;
	keel_http_response *a = &req->resp;
	memset(a, 0, sizeof(*a));
	a->file_fd = -1;
	a->status = 101;
	a->headers = h;
	a->nheaders = n;
	keel_promise_resolve(p, 0, a);
	return p;
}

/* ---- The server's stop ------------------------------------------------------ */

void keel__ws_drain_all(keel_http_server *s)
{
	for (keel_ws *ws = s->ws_conns; ws; ws = ws->next)
		if (!ws->close_sent && !ws->closing)
			send_close(ws, KEEL_WS_GOING_AWAY, "server stopping", 15);
}

void keel__ws_close_all(keel_http_server *s)
{
	for (keel_ws *ws = s->ws_conns; ws; ws = ws->next)
		finish(ws, true);
}
