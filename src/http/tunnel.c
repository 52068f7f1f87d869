/*
 * A byte tunnel between two transports (see tunnel.h). Each direction is a
 * short queue of receive buffers: what one end delivered, held until the
 * other end's send of it completes. A queue at TQ_MAX stops its reader, so
 * a side that does not read holds the other to a few buffers, never more;
 * the bytes themselves are never copied.
 */
#include <errno.h>
#include <stdlib.h>

#include "core/alloc.h"
#include "keel/timer.h"
#include "server_internal.h"
#include "tunnel.h"

#define TQ_MAX 4 /* receive buffers held per direction before its reader stops */

struct tside {
	struct keel__tunnel *t;
	keel_transport tp;
	keel_promise *rx;          /* reading this end */
	keel_promise *tx;          /* sending what it read to the other end */
	keel_promise *shut_p;      /* this end's output being shut (the other's input ended) */
	keel_buf *q_head, *q_tail; /* read from this end, not yet sent on; the first from q_off */
	uint32_t q_off;
	unsigned nq, ntx;
	bool eof, shut;
	bool rx_starting; /* inside keel_transport_recv: a transport may deliver before it returns (TLS) */
	uint8_t i;
};

struct keel__tunnel {
	keel_http_server *s;
	struct keel__tunnel *prev, *next; /* the server's tunnels */
	struct tside side[2];             /* 0: the client, 1: the upstream */
	keel_timer timer;
	uint64_t idle_ms, last_ns;
	struct keel__tunnel_stats *stats;
	void (*done)(void *ud);
	void *ud;
	unsigned closes; /* transports whose close has not completed */
	bool closing, tp_closing;
};

struct keel__tunnel *keel__tunnel_new(void)
{
	return keel__calloc(1, sizeof(struct keel__tunnel));
}

void keel__tunnel_discard(struct keel__tunnel *t)
{
	free(t);
}

static void tunnel_close(struct keel__tunnel *t);

static void q_release(struct tside *d, unsigned n)
{
	for (unsigned i = 0; i < n && d->q_head; i++) {
		keel_buf *b = d->q_head;
		d->q_head = b->next;
		d->nq--;
		keel_buf_release(b);
	}
	if (!d->q_head)
		d->q_tail = NULL;
	d->q_off = 0;
}

static void tunnel_gone(struct keel__tunnel *t)
{
	t->stats->open--;
	void (*done)(void *) = t->done;
	void *ud = t->ud;
	free(t);
	done(ud);
}

static void client_closed(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	struct keel__tunnel *t = ud;
	keel_http_server *s = t->s;
	if (t->prev)
		t->prev->next = t->next;
	else
		s->tunnels = t->next;
	if (t->next)
		t->next->prev = t->prev;
	t->prev = t->next = NULL;
	t->s = NULL;
	bool last = --t->closes == 0;
	keel__server_conn_gone(s);
	if (last)
		tunnel_gone(t);
}

static void upstream_closed(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	struct keel__tunnel *t = ud;
	if (--t->closes == 0)
		tunnel_gone(t);
}

/* Both transports close once nothing is in flight on either; the held input goes first. */
static void maybe_close(struct keel__tunnel *t)
{
	if (t->tp_closing)
		return;
	for (int i = 0; i < 2; i++)
		if (t->side[i].rx || t->side[i].rx_starting || t->side[i].tx || t->side[i].shut_p)
			return;
	t->tp_closing = true;
	keel_timer_disarm(t->s->loop, &t->timer);
	for (int i = 0; i < 2; i++)
		q_release(&t->side[i], UINT32_MAX);
	t->closes = 2;
	t->s->nclosing++;
	keel_promise_done(keel_transport_close(&t->side[0].tp), client_closed, t);
	keel_promise_done(keel_transport_close(&t->side[1].tp), upstream_closed, t);
}

static void tunnel_close(struct keel__tunnel *t)
{
	if (!t->closing) {
		t->closing = true;
		for (int i = 0; i < 2; i++) {
			struct tside *d = &t->side[i];
			if (d->rx)
				keel_promise_cancel(d->rx);
			if (d->tx)
				keel_promise_cancel(d->tx);
			if (d->shut_p)
				keel_promise_cancel(d->shut_p);
		}
	}
	maybe_close(t);
}

static void pump(struct keel__tunnel *t, struct tside *d);

/* Both inputs ended and were passed on: the tunnel is done. */
static void check_end(struct keel__tunnel *t)
{
	for (int i = 0; i < 2; i++) {
		struct tside *d = &t->side[i];
		if (!d->eof || d->q_head || d->tx || !t->side[!i].shut || t->side[!i].shut_p)
			return;
	}
	tunnel_close(t);
}

static void shut_done(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct tside *d = ud;
	struct keel__tunnel *t = d->t;
	d->shut_p = NULL;
	if (t->closing || o.err) {
		tunnel_close(t);
		return;
	}
	check_end(t);
}

static void sent(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct tside *d = ud;
	struct keel__tunnel *t = d->t;
	d->tx = NULL;
	if (t->closing || o.err) {
		tunnel_close(t); /* the other end is gone (or stuck and cut): so is this one */
		return;
	}
	q_release(d, d->ntx);
	d->ntx = 0;
	pump(t, d);
	check_end(t);
}

static int on_data(void *ud, keel_buf *buf)
{
	struct tside *d = ud;
	struct keel__tunnel *t = d->t;
	if (t->closing)
		return KEEL_STOP;
	t->last_ns = keel_loop_now_ns(t->s->loop);
	keel_buf_hold(buf);
	buf->next = NULL;
	if (d->q_tail)
		d->q_tail->next = buf;
	else
		d->q_head = buf;
	d->q_tail = buf;
	d->nq++;
	if (d->i == 0)
		t->stats->bytes_up += buf->len;
	else
		t->stats->bytes_down += buf->len;
	pump(t, d);
	return d->nq >= TQ_MAX ? KEEL_STOP : KEEL_CONTINUE;
}

static void rx_ended(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct tside *d = ud;
	struct keel__tunnel *t = d->t;
	d->rx = NULL;
	if (t->closing) {
		maybe_close(t);
		return;
	}
	if (o.err && o.err != -ECANCELED) {
		tunnel_close(t); /* a reset: both go */
		return;
	}
	if (!o.err)
		d->eof = true; /* passed on as a half-close once its bytes are */
	pump(t, d);
	check_end(t);
}

/* Move d's input on to the other end: a send of what is held, the half-close after it, more reading. */
static void pump(struct keel__tunnel *t, struct tside *d)
{
	struct tside *to = &t->side[!d->i];
	if (t->closing)
		return;
	if (!d->tx && d->q_head) {
		struct iovec iov[TQ_MAX + 1];
		unsigned n = 0;
		for (keel_buf *b = d->q_head; b && n < TQ_MAX + 1; b = b->next, n++) {
			uint32_t off = b == d->q_head ? d->q_off : 0;
			iov[n].iov_base = b->data + off;
			iov[n].iov_len = b->len - off;
		}
		d->ntx = n;
		d->tx = keel_transport_sendv(&to->tp, iov, (int)n);
		keel_promise_done(d->tx, sent, d);
	} else if (!d->tx && d->eof && !to->shut) {
		to->shut = true;
		to->shut_p = keel_transport_shutdown(&to->tp);
		keel_promise_done(to->shut_p, shut_done, to);
	}
	if (!d->rx && !d->rx_starting && !d->eof && d->nq < TQ_MAX) {
		d->rx_starting = true;
		keel_promise *p = keel_transport_recv(&d->tp, on_data, d, false);
		d->rx_starting = false;
		d->rx = p;
		keel_promise_done(p, rx_ended, d);
		if (t->closing && !keel_promise_is_settled(p))
			keel_promise_cancel(p); /* (closed while the receive was being set up) */
	}
}

static void idle_check(keel_loop *loop, keel_timer *timer)
{
	struct keel__tunnel *t = keel_container_of(timer, struct keel__tunnel, timer);
	uint64_t now = keel_loop_now_ns(loop), due = t->last_ns + t->idle_ms * 1000000ull;
	if (t->closing)
		return;
	if (now >= due) {
		tunnel_close(t);
		return;
	}
	keel_timer_arm(loop, &t->timer, (due - now + 999999) / 1000000);
}

void keel__tunnel_start(struct keel__tunnel *t, keel_http_server *s, struct keel__tunnel_end *a,
                        struct keel__tunnel_end *b, uint64_t idle_ms, struct keel__tunnel_stats *stats,
                        void (*done)(void *ud), void *ud)
{
	t->s = s;
	t->stats = stats;
	t->done = done;
	t->ud = ud;
	t->idle_ms = idle_ms;
	t->last_ns = keel_loop_now_ns(s->loop);
	keel_timer_init(&t->timer, idle_check);
	struct keel__tunnel_end *e[2] = {a, b};
	for (int i = 0; i < 2; i++) {
		struct tside *d = &t->side[i];
		d->t = t;
		d->i = (uint8_t)i;
		d->tp = e[i]->tp;
		d->q_head = e[i]->held;
		d->q_off = e[i]->off;
		d->eof = e[i]->eof;
		for (keel_buf *x = d->q_head; x; x = x->next) {
			d->q_tail = x;
			d->nq++;
			uint64_t n =
			    x->len -
			    (x == d->q_head ? d->q_off : 0); /* (came before the tunnel, passes through it) */
			if (i == 0)
				stats->bytes_up += n;
			else
				stats->bytes_down += n;
		}
	}
	t->next = s->tunnels;
	if (s->tunnels)
		s->tunnels->prev = t;
	s->tunnels = t;
	stats->tunnels++;
	stats->open++;
	if (idle_ms)
		keel_timer_arm(s->loop, &t->timer, idle_ms);
	if (s->stopping) {
		tunnel_close(t); /* nothing new past a stop */
		return;
	}
	pump(t, &t->side[0]);
	pump(t, &t->side[1]);
	check_end(t);
}

void keel__tunnel_close_all(keel_http_server *s)
{
	for (struct keel__tunnel *t = s->tunnels; t; t = t->next)
		tunnel_close(t);
}
