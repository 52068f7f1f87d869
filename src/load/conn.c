/*
 * keel load's connections: connect, send, parse the responses, close and
 * reconnect; and, for the open loop, the schedule that hands due requests to
 * connections with room, paced by a timerfd. A connection's bytes go through
 * a keel_transport: plain TCP, or TLS for https (its handshake runs under
 * the first requests, which wait in the transport until it is done).
 *
 * The request is formatted once (request.c), as many copies back to back as
 * one send may need, so sending k requests is one send of k * len bytes (or
 * a few iovecs) from that buffer. Responses are parsed in the receive
 * buffers; only a head split across two buffers is copied, into a
 * per-connection staging area. Bodies are skipped by Content-Length, by the
 * chunked decoder or until close. A request in flight is one slot in a
 * per-connection ring of start times: nothing is allocated per request.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <time.h>

#include "load/internal.h"

#define LOAD_IOV 8             /* iovecs per send (keel keeps up to 8 inline) */
#define LOAD_BACKOFF_MIN_MS 10 /* reconnect backoff after a failed connection */
#define LOAD_BACKOFF_MAX_MS 1000
#define LOAD_PACE_GAP_NS 50000 /* open loop: pacer wake-ups at least this far apart */

static void conn_flush(struct conn *c);
static void pace_arm(struct worker *w);

/* ---- Bookkeeping --------------------------------------------------------- */

static void count_error(struct worker *w, int kind)
{
	if (!w->stopping)
		w->c.errors[kind]++;
}

static void ring_push(struct conn *c, uint64_t t)
{
	uint32_t d = c->w->depth;
	uint32_t i = c->head + c->inflight;
	c->start_ns[i >= d ? i - d : i] = t;
	c->inflight++;
	c->unsent++;
}

static void retry_push(struct worker *w, uint64_t t)
{
	/* Cannot overflow: retried and in-flight requests together never exceed the slots. */
	if (w->retry_len == w->retry_cap)
		abort();
	uint32_t i = w->retry_head + w->retry_len++;
	w->retry[i >= w->retry_cap ? i - w->retry_cap : i] = t;
}

static uint64_t retry_pop(struct worker *w)
{
	uint64_t t = w->retry[w->retry_head];
	if (++w->retry_head == w->retry_cap)
		w->retry_head = 0;
	w->retry_len--;
	return t;
}

static void mark_dirty(struct conn *c)
{
	if (c->dirty)
		return;
	c->dirty = true;
	c->dirty_next = c->w->dirty;
	c->w->dirty = c;
}

/* ---- Connection life cycle ----------------------------------------------- */

static void conn_done(struct conn *c)
{
	c->state = C_DONE;
	c->w->nlive--;
}

/* The connection stops taking requests: its room leaves the worker's pool. */
static void conn_leave_open(struct conn *c)
{
	if (c->state == C_OPEN && c->w->rate > 0)
		c->w->free_slots -= c->w->depth - c->inflight;
}

static void backoff_done(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	struct conn *c = ud;
	c->sleep_p = NULL;
	if (c->w->stopping)
		conn_done(c);
	else
		load__conn_connect(c);
}

static void conn_backoff(struct conn *c)
{
	c->backoff_ms = c->backoff_ms ? c->backoff_ms * 2 : LOAD_BACKOFF_MIN_MS;
	if (c->backoff_ms > LOAD_BACKOFF_MAX_MS)
		c->backoff_ms = LOAD_BACKOFF_MAX_MS;
	c->state = C_BACKOFF;
	c->sleep_p = keel_sleep(c->w->loop, c->backoff_ms);
	keel_promise_done(c->sleep_p, backoff_done, c);
}

/* Once the close and every operation on the descriptor have settled: reconnect or finish. */
static void conn_maybe_reopen(struct conn *c)
{
	if (c->state != C_CLOSING || !c->closed || c->recv_live || c->sending)
		return;
	if (c->w->stopping)
		conn_done(c);
	else if (c->backoff_next)
		conn_backoff(c);
	else
		load__conn_connect(c);
}

static void close_done(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	struct conn *c = ud;
	c->closed = true;
	conn_maybe_reopen(c);
}

/*
 * End an open connection. kind >= 0 counts one error of that kind and
 * charges it to the oldest request in flight; the others are given back to
 * the schedule (open loop: sent again on another connection, their latency
 * still running from their due time) or simply re-issued after the
 * reconnect (closed loop). backoff: wait before reconnecting (the connection
 * failed before answering anything: do not spin against a broken server).
 */
static void conn_fail(struct conn *c, int kind, bool backoff)
{
	struct worker *w = c->w;
	conn_leave_open(c);
	uint32_t skip = 0;
	if (kind >= 0) {
		count_error(w, kind);
		skip = c->inflight ? 1 : 0;
	}
	if (w->rate > 0 && !w->stopping) {
		for (uint32_t i = skip; i < c->inflight; i++) {
			uint32_t j = c->head + i;
			retry_push(w, c->start_ns[j >= w->depth ? j - w->depth : j]);
		}
	}
	c->inflight = c->unsent = 0;
	c->state = C_CLOSING;
	c->closed = false;
	c->backoff_next = backoff;
	/* The close cancels the receive stream and a send still in flight first. */
	keel_promise_done(keel_transport_close(&c->t), close_done, c);
}

/* ---- Responses ------------------------------------------------------------ */

/*
 * A response is complete. Returns false when the connection is closing
 * (the server announced it), true to keep reading.
 */
static bool response_done(struct conn *c)
{
	struct worker *w = c->w;
	uint64_t now = keel_loop_now_ns(w->loop);
	uint64_t t = c->start_ns[c->head];
	if (++c->head == w->depth)
		c->head = 0;
	c->inflight--;
	c->answered = true;
	c->backoff_ms = 0;
	c->wait_ns = now;
	if (!w->stopping) {
		uint64_t us = now > t ? (now - t + 500) / 1000 : 0;
		int st = c->status;
		w->c.responses++;
		load_hist_record(&w->lat_all, us);
		if (st >= 200 && st < 400) {
			w->c.ok++;
			load_hist_record(&w->lat_ok, us);
			load_hist_record(&w->lat_iv, us);
		} else if (st == 503) {
			w->c.errors[E_SHED]++;
		} else if (st >= 500) {
			w->c.errors[E_5XX]++;
		} else if (st >= 400) {
			w->c.errors[E_4XX]++;
		}
	}
	c->pstate = P_HEAD;
	if (w->rate > 0)
		w->free_slots++; /* (before conn_fail, which takes this connection's room away) */
	if (c->announced) {
		conn_fail(c, -1, false);
		return false;
	}
	if (w->rate == 0 && !w->stopping)
		ring_push(c, now); /* closed loop: the next request, sent after this buffer is parsed */
	return true;
}

static int parse_head(struct conn *c, const char *p, size_t n, size_t prev, keel_http_msg *msg)
{
	struct worker *w = c->w;
	return keel_http_parse_response(p, n, prev, msg, w->headers, LOAD_HEADERS_MAX, &w->limits,
	                                w->cfg->method);
}

/* A complete head: what frames the body. Returns 0, or -1 for a response keel load cannot follow. */
static int head_done(struct conn *c, const keel_http_msg *msg)
{
	c->status = msg->status;
	if (msg->status == 101)
		return -1; /* switching protocols: no more HTTP on this connection */
	if (!msg->keep_alive)
		c->announced = true;
	switch (msg->body) {
	case KEEL_HTTP_BODY_NONE:
		c->body_left = 0;
		c->pstate = P_LENGTH;
		break;
	case KEEL_HTTP_BODY_LENGTH:
		c->body_left = msg->content_length;
		c->pstate = P_LENGTH;
		break;
	case KEEL_HTTP_BODY_CHUNKED:
		keel_http_chunked_init(&c->chunked, 0);
		c->pstate = P_CHUNKED;
		break;
	case KEEL_HTTP_BODY_UNTIL_CLOSE:
		c->announced = true;
		c->pstate = P_CLOSE;
		break;
	}
	return 0;
}

/*
 * Parse received bytes. Returns 0 to keep reading, or -1 when the
 * connection was ended (a parse error, or a close the server announced).
 */
static int conn_parse(struct conn *c, const char *p, size_t n)
{
	keel_http_msg msg;
	while (n > 0) {
		switch (c->pstate) {
		case P_HEAD: {
			if (c->inflight == c->unsent && c->stage_len == 0)
				goto bad; /* bytes nobody asked for */
			int r;
			size_t used;
			if (c->stage_len == 0) {
				r = parse_head(c, p, n, 0, &msg);
				if (r == KEEL_HTTP_INCOMPLETE) {
					if (n >= LOAD_HEAD_MAX)
						goto bad;
					if (!c->stage && !(c->stage = malloc(LOAD_HEAD_MAX)))
						goto bad;
					memcpy(c->stage, p, n);
					c->stage_len = (uint32_t)n;
					return 0;
				}
				used = (size_t)r;
			} else {
				/* The head began in an earlier buffer: append and parse the staged bytes. */
				size_t prev = c->stage_len, take = LOAD_HEAD_MAX - prev;
				if (take > n)
					take = n;
				memcpy(c->stage + prev, p, take);
				c->stage_len += (uint32_t)take;
				r = parse_head(c, c->stage, c->stage_len, prev, &msg);
				if (r == KEEL_HTTP_INCOMPLETE) {
					if (c->stage_len == LOAD_HEAD_MAX)
						goto bad;
					return 0;
				}
				used = r > 0 ? (size_t)r - prev : 0;
				c->stage_len = 0;
			}
			if (r < 0)
				goto bad;
			p += used;
			n -= used;
			if (msg.status < 200 && msg.status != 101)
				continue; /* 1xx interim response: the final one follows */
			if (head_done(c, &msg) < 0)
				goto bad;
			if (c->pstate == P_LENGTH && c->body_left == 0 && !response_done(c))
				return -1;
			break;
		}
		case P_LENGTH: {
			size_t take = c->body_left < n ? (size_t)c->body_left : n;
			p += take;
			n -= take;
			c->body_left -= take;
			if (c->body_left == 0 && !response_done(c))
				return -1;
			break;
		}
		case P_CHUNKED: {
			size_t used = 0;
			keel_str data;
			int r = keel_http_chunked_decode(&c->chunked, p, n, &used, &data);
			if (used == 0 && r != KEEL_HTTP_CHUNK_DONE)
				goto bad; /* no progress: never loop on it */
			p += used;
			n -= used;
			if (r == KEEL_HTTP_CHUNK_DONE) {
				if (!response_done(c))
					return -1;
			} else if (r < 0 && r != KEEL_HTTP_INCOMPLETE) {
				goto bad;
			}
			break;
		}
		case P_CLOSE: return 0; /* the body runs to the end of the connection */
		}
	}
	return 0;
bad:
	conn_fail(c, E_PARSE, !c->answered);
	return -1;
}

static int on_data(void *ud, keel_buf *buf)
{
	struct conn *c = ud;
	struct worker *w = c->w;
	if (c->state != C_OPEN)
		return KEEL_STOP;
	if (!w->stopping)
		w->c.bytes_in += buf->len;
	if (conn_parse(c, buf->data, buf->len) < 0)
		return KEEL_STOP;
	if (w->rate > 0)
		load__dispatch(w);
	else
		conn_flush(c);
	return KEEL_CONTINUE;
}

/*
 * Whether c's stream broke on its TLS handshake, and if so end it as that:
 * a TLS failure before the connection delivered a byte is the handshake's
 * (the certificate did not verify, an alert, nothing in common), so the
 * connection was never made; it counts as a connect error, backs off like
 * one, and gives its requests back as if it had never opened (nor are they
 * counted as sent). A handshake past its deadline (--timeout) is a timeout,
 * as a request that waits that long is. Returns false, doing nothing, for
 * any other failure.
 */
static bool handshake_failed(struct conn *c, int err)
{
	struct worker *w = c->w;
	bool nothing_yet = !c->answered && c->pstate == P_HEAD && c->stage_len == 0;
	if (!w->tls || !nothing_yet)
		return false;
	if (err == -ETIMEDOUT) {
		conn_fail(c, E_TIMEOUT, false);
		return true;
	}
	if (err != KEEL_ETLSCERT && err != KEEL_ETLS && err != KEEL_ETLSHS)
		return false;
	if (!w->stopping) {
		/* What was handed to the transport waited for the handshake: none of it went out. */
		uint32_t handed = c->inflight - c->unsent;
		w->c.sent -= handed;
		w->c.bytes_out -= (uint64_t)handed * w->cfg->req_len;
		w->c.errors[E_CONNECT]++;
		if (err == KEEL_ETLSCERT)
			w->c.tls_failed_cert++;
		else
			w->c.tls_failed_other++;
	}
	conn_fail(c, -1, true);
	return true;
}

/*
 * Whether the requests in flight on c crossed the server's close of an
 * idle kept-alive connection: c has answered before, nothing of the next
 * answer has arrived, and the method is idempotent. Then they are sent
 * again on a new connection (counted as retried, not as errors), as a
 * browser does (RFC 9112 9.3.1); the new connection is fresh, so a server
 * that drops requests fails them there.
 */
static bool crossed_close(const struct conn *c)
{
	keel_str m = c->w->cfg->method;
	return c->answered && c->inflight > c->unsent && c->pstate == P_HEAD && !c->stage_len &&
	       (keel_str_eq(m, "GET") || keel_str_eq(m, "HEAD") || keel_str_eq(m, "OPTIONS") ||
	        keel_str_eq(m, "PUT") || keel_str_eq(m, "DELETE"));
}

static void recv_ended(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct conn *c = ud;
	c->recv_live = false;
	if (c->state != C_OPEN) {
		conn_maybe_reopen(c);
		return;
	}
	if (o.err && handshake_failed(c, o.err))
		return;
	/* The stream ended by itself: the server closed (or reset) the connection. */
	if (o.err == 0 && c->pstate == P_CLOSE) {
		response_done(c); /* a close-delimited body is complete; announced, so this closes */
		return;
	}
	if (crossed_close(c)) {
		if (!c->w->stopping) /* (at the end nothing is sent again) */
			c->w->c.retried += c->inflight - c->unsent;
		conn_fail(c, -1, false);
	} else if (c->inflight > c->unsent || c->pstate != P_HEAD || c->stage_len) {
		conn_fail(c, E_READ, !c->answered);
	} else {
		conn_fail(c, -1, !c->answered); /* idle connection closed: reconnect without blame */
	}
}

/* ---- Requests ------------------------------------------------------------- */

static void send_done(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct conn *c = ud;
	c->sending = false;
	if (c->state != C_OPEN) {
		conn_maybe_reopen(c);
		return;
	}
	if (o.err) {
		if (handshake_failed(c, o.err))
			return;
		if (crossed_close(c)) {
			if (!c->w->stopping) /* (at the end nothing is sent again) */
				c->w->c.retried += c->inflight - c->unsent;
			conn_fail(c, -1, false);
		} else {
			conn_fail(c, E_READ, !c->answered);
		}
		return;
	}
	conn_flush(c);
}

/* Hand every queued request to one send, from the prebuilt copies. */
static void conn_flush(struct conn *c)
{
	struct worker *w = c->w;
	const struct load_cfg *cfg = w->cfg;
	if (c->sending || c->unsent == 0 || c->state != C_OPEN)
		return;
	uint32_t k = c->unsent;
	if (k > cfg->batch_n * LOAD_IOV)
		k = cfg->batch_n * LOAD_IOV;
	if (c->inflight == c->unsent)
		c->wait_ns = keel_loop_now_ns(w->loop); /* the first request outstanding starts the clock */
	c->unsent -= k;
	c->sending = true;
	if (!w->stopping) {
		w->c.sent += k;
		w->c.bytes_out += (uint64_t)k * cfg->req_len;
	}
	keel_promise *p;
	if (k <= cfg->batch_n) {
		struct iovec iov = {cfg->batch, k * cfg->req_len};
		p = keel_transport_sendv(&c->t, &iov, 1);
	} else {
		struct iovec iov[LOAD_IOV];
		int niov = 0;
		for (uint32_t left = k; left; niov++) {
			uint32_t m = left < cfg->batch_n ? left : cfg->batch_n;
			iov[niov].iov_base = cfg->batch;
			iov[niov].iov_len = m * cfg->req_len;
			left -= m;
		}
		p = keel_transport_sendv(&c->t, iov, niov);
	}
	keel_promise_done(p, send_done, c);
}

static struct conn *next_with_room(struct worker *w)
{
	/* Only called with free_slots > 0, which promises an open connection with room. */
	for (uint32_t i = 0; i < w->nconns; i++) {
		struct conn *c = &w->conns[w->cursor];
		if (++w->cursor == w->nconns)
			w->cursor = 0;
		if (c->state == C_OPEN && c->inflight < w->depth)
			return c;
	}
	fprintf(stderr, "keel load: bug: %llu free slots counted, none found\n",
	        (unsigned long long)w->free_slots);
	abort();
}

/*
 * Open loop: hand every request that is due (retried ones first, oldest
 * first) to connections with room, round robin, then flush them. Requests
 * for which there is no room stay due; they go out as responses free room.
 */
void load__dispatch(struct worker *w)
{
	if (w->stopping)
		return;
	uint64_t due = due_count(w, keel_loop_now_ns(w->loop));
	while (w->free_slots > 0 && (w->retry_len > 0 || w->seq_sent < due)) {
		struct conn *c = next_with_room(w);
		ring_push(c, w->retry_len ? retry_pop(w) : due_time(w, w->seq_sent++));
		w->free_slots--;
		mark_dirty(c);
	}
	while (w->dirty) {
		struct conn *c = w->dirty;
		w->dirty = c->dirty_next;
		c->dirty = false;
		conn_flush(c);
	}
	pace_arm(w);
}

static void pace_read(struct worker *w);

/*
 * Make sure a wake-up comes when the next request is due, if there is room
 * to send it (without room, due requests wait for responses, which dispatch
 * them). An earlier wake-up already armed is kept: it costs one empty
 * dispatch, a re-arm costs a syscall.
 */
static void pace_arm(struct worker *w)
{
	if (w->pace_fd < 0 || w->stopping || w->free_slots == 0)
		return;
	uint64_t now = keel_loop_now_ns(w->loop);
	uint64_t t = due_time(w, due_count(w, now));
	if (t < now + LOAD_PACE_GAP_NS)
		t = now + LOAD_PACE_GAP_NS;
	if (w->pace_armed_ns && w->pace_armed_ns <= t)
		return;
	struct itimerspec its = {.it_value = {(time_t)(t / 1000000000ull), (long)(t % 1000000000ull)}};
	if (timerfd_settime(w->pace_fd, TFD_TIMER_ABSTIME, &its, NULL) == 0)
		w->pace_armed_ns = t;
	if (!w->pace_live)
		pace_read(w);
}

static void pace_fired(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct worker *w = ud;
	w->pace_live = false;
	w->pace_armed_ns = 0;
	if (w->stopping)
		return;
	if (o.err) {
		/* Not expected; the main loop's millisecond wake-ups still pace, only less precisely. */
		fprintf(stderr, "keel load: pacer: %s\n", keel_strerror(o.err));
		keel_promise_release(keel_close(w->loop, w->pace_fd));
		w->pace_fd = -1;
		return;
	}
	load__dispatch(w);
	pace_arm(w);
}

static void pace_read(struct worker *w)
{
	w->pace_live = true;
	keel_promise_done(keel_read(w->loop, w->pace_fd, &w->pace_buf, sizeof(w->pace_buf)), pace_fired, w);
}

static void connect_done(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct conn *c = ud;
	struct worker *w = c->w;
	c->connect_p = NULL;
	if (o.err) {
		if (w->stopping) {
			conn_done(c);
		} else {
			count_error(w, E_CONNECT);
			conn_backoff(c);
		}
		return;
	}
	int fd = (int)o.n;
	if (w->stopping) {
		keel_promise_release(keel_close(w->loop, fd));
		conn_done(c);
		return;
	}
	if (!w->tls) {
		keel_tcp_transport_init(&c->t, w->loop, fd); /* (sets TCP_NODELAY) */
	} else {
		/* The requests queue behind the handshake; the session of the last connection is offered. */
		int err = keel_tls_client_init(&c->t, w->loop, fd, w->tls, w->cfg->tls_name);
		if (err < 0) {
			keel_promise_release(keel_close(w->loop, fd)); /* not taken on failure */
			count_error(w, E_CONNECT);
			conn_backoff(c);
			return;
		}
	}
	c->state = C_OPEN;
	c->recv_live = true;
	keel_promise_done(keel_transport_recv(&c->t, on_data, c, false), recv_ended, c);
	if (w->rate > 0) {
		w->free_slots += w->depth;
		load__dispatch(w);
	} else {
		uint64_t now = keel_loop_now_ns(w->loop);
		for (uint32_t i = 0; i < w->depth; i++)
			ring_push(c, now);
		conn_flush(c);
	}
}

void load__conn_connect(struct conn *c)
{
	struct worker *w = c->w;
	c->state = C_CONNECTING;
	c->t.fd = -1;
	c->recv_live = c->sending = c->closed = c->announced = c->answered = false;
	c->inflight = c->unsent = c->head = 0;
	c->pstate = P_HEAD;
	c->stage_len = 0;
	c->connect_p = keel_connect(w->loop, (const struct sockaddr *)&w->cfg->addr, w->cfg->addrlen,
	                            (uint64_t)w->cfg->opts->timeout_ms);
	keel_promise_done(c->connect_p, connect_done, c);
}

/* ---- Timeouts and the end of the run -------------------------------------- */

/* A connection whose oldest sent request has waited --timeout without a response is given up. */
void load__check_timeouts(struct worker *w, uint64_t now)
{
	uint64_t limit = (uint64_t)w->cfg->opts->timeout_ms * 1000000ull;
	for (uint32_t i = 0; i < w->nconns; i++) {
		struct conn *c = &w->conns[i];
		if (c->state == C_OPEN && c->inflight > c->unsent && now - c->wait_ns >= limit)
			conn_fail(c, E_TIMEOUT, false);
	}
}

void load__conn_stop(struct conn *c)
{
	switch (c->state) {
	case C_CONNECTING: keel_promise_cancel(c->connect_p); break;
	case C_OPEN: conn_fail(c, -1, false); break;
	case C_BACKOFF: keel_promise_cancel(c->sleep_p); break;
	case C_CLOSING:
	case C_DONE: break;
	}
}
