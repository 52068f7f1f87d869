/*
 * keel load: an HTTP/1.1 load generator on keel's own runtime.
 *
 * Closed loop (like wrk): every connection keeps --pipeline requests in
 * flight and queues the next one as soon as a response completes; latency
 * runs from the moment a request was queued. Open loop (--rate, like wrk2):
 * request k is due at start + k/rate whatever happened to the earlier ones;
 * a due request goes to the next connection with room (at most --pipeline in
 * flight each) or waits in the backlog until one has room, and its latency
 * runs from the time it was due. A server that stalls is thus charged for
 * every request it held up, not only for the one it was working on: the
 * coordinated omission of closed-loop measurement is corrected.
 *
 * The request is formatted once, as many copies back to back as one send
 * may need, so sending k requests is one send of k * len bytes (or a few
 * iovecs) from that buffer. Responses are parsed in the receive buffers;
 * only a head split across two buffers is copied, into a per-connection
 * staging area. Bodies are skipped by Content-Length, by the chunked decoder
 * or until close. A request in flight is one slot in a per-connection ring
 * of start times: nothing is allocated per request.
 *
 * Each thread (--threads, default 1) runs its own loop with its share of the
 * connections and of the rate; the main thread prints progress from
 * snapshots the workers publish, handles SIGINT/SIGTERM and adds up the
 * results at the end.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "keel/http_parse.h"
#include "load/hist.h"

#define LOAD_HEAD_MAX 65536          /* a response head larger than this is a parse error */
#define LOAD_HEADERS_MAX 128         /* response headers */
#define LOAD_HIST_MAX_US 100000000ull /* latencies tracked up to 100 s (more: top bucket) */
#define LOAD_HIST_DIGITS 3
#define LOAD_COPY_BYTES 65536        /* prebuilt request copies: up to this many bytes */
#define LOAD_IOV 8                   /* iovecs per send (keel keeps up to 8 inline) */
#define LOAD_PUBLISH_MS 100          /* snapshots for the progress line */
#define LOAD_BACKOFF_MIN_MS 10       /* reconnect backoff after a failed connection */
#define LOAD_BACKOFF_MAX_MS 1000
#define LOAD_STOP_GRACE_MS 2000      /* at the end, time for closes and cancels to settle */
#define LOAD_BODY_MAX (64l << 20)    /* --body @FILE */
#define LOAD_SLOTS_MAX (1l << 22)    /* connections x pipeline */
#define LOAD_PACE_GAP_NS 50000       /* open loop: pacer wake-ups at least this far apart */

enum err_kind { E_CONNECT, E_READ, E_TIMEOUT, E_4XX, E_5XX, E_SHED, E_PARSE, E_KINDS };
static const char *const err_json[E_KINDS] = {"connect",    "read",     "timeout", "status_4xx",
                                              "status_5xx", "shed_503", "parse"};
static const char *const err_text[E_KINDS] = {"connect",    "read/reset", "timeout", "status 4xx",
                                              "status 5xx", "shed 503",   "parse"};

struct load_cfg {
	const char *url;
	long conns, duration_s, rate, pipeline, timeout_ms, threads;
	const char *json_path;
	bool quiet;
	struct sockaddr_storage addr;
	socklen_t addrlen;
	char target[300];    /* the address connected to, ip:port */
	const char *method;
	keel_str method_str;
	char *req;           /* one request */
	size_t req_len;
	char *batch;         /* batch_n copies of req back to back */
	uint32_t batch_n;
};

struct counters {
	uint64_t sent;      /* requests handed to a send (again if re-sent after a reconnect) */
	uint64_t scheduled; /* open loop: requests that came due */
	uint64_t responses; /* complete responses, any status */
	uint64_t ok;        /* 2xx and 3xx */
	uint64_t bytes_in, bytes_out;
	uint64_t errors[E_KINDS];
};

struct snapshot {
	struct counters c;
	uint64_t p99_us;
	uint64_t at_ns; /* loop time of the snapshot, from the worker's start */
};

enum conn_state { C_CONNECTING, C_OPEN, C_CLOSING, C_BACKOFF, C_DONE };
enum parse_state { P_HEAD, P_LENGTH, P_CHUNKED, P_CLOSE };

struct worker;

struct conn {
	struct worker *w;
	int fd;
	enum conn_state state;
	keel_promise *connect_p; /* while connecting, for a cancel at the end */
	keel_promise *sleep_p;   /* while backing off */
	bool recv_live, sending, closed, backoff_next;
	bool announced;          /* the server said it closes after the current response */
	bool answered;           /* a response arrived since this connection opened */
	uint32_t inflight;       /* requests queued or sent and not answered */
	uint32_t unsent;         /* the newest of those, not handed to a send yet */
	uint32_t head;           /* ring index of the oldest */
	uint64_t *start_ns;      /* ring of pipeline start times (due times in open loop) */
	uint64_t wait_ns;        /* since when the oldest sent request has waited (timeouts) */
	uint32_t backoff_ms;
	enum parse_state pstate;
	int status;
	uint64_t body_left;
	keel_http_chunked chunked;
	char *stage;             /* a head split across receive buffers (allocated on first use) */
	uint32_t stage_len;
	bool dirty;              /* on the worker's list of connections to flush */
	struct conn *dirty_next;
};

struct load_run;

struct interval {
	uint64_t ok, shed, p99_us;
};

struct worker {
	const struct load_cfg *cfg;
	struct load_run *run;
	int index;
	keel_loop *loop;
	pthread_t thread;
	bool loop_gone;
	int status;
	struct conn *conns;
	uint32_t nconns, nlive;
	uint32_t depth;
	uint64_t *slots;
	/* Open loop: request k of this worker is due at t0 + k * 1e9 / rate ns. */
	double rate;
	uint64_t t0_ns, end_ns, ended_ns;
	uint64_t seq_sent;   /* requests taken from the schedule */
	uint64_t free_slots; /* room for more requests on open connections */
	uint32_t cursor;
	uint64_t *retry;     /* due times of requests to send again (their connection closed) */
	uint32_t retry_head, retry_len, retry_cap;
	struct conn *dirty;
	/*
	 * The pacer: a timerfd armed (absolute, ns) for the next due request,
	 * read through the loop. The loop's own timers count milliseconds,
	 * which would send requests in bursts up to 1 ms late.
	 */
	int pace_fd;
	uint64_t pace_armed_ns; /* 0: not armed */
	uint64_t pace_buf;
	bool pace_live;
	bool stopping, stop_asked;
	struct counters c;
	load_hist lat_ok, lat_all;
	/*
	 * Per-second intervals (for the JSON): successes, 503s and the p99 of
	 * the successes that completed in each second of the run.
	 */
	load_hist lat_iv;
	struct interval *iv;
	uint32_t niv, iv_cap;
	uint64_t iv_next_ns, iv_ok0, iv_shed0;
	keel_http_header headers[LOAD_HEADERS_MAX];
	keel_http_limits limits;
	struct snapshot snap; /* under run->mu */
};

struct load_run {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int nready, ndone;
	bool go;
	const char *backend; /* of the first worker's loop */
};

static void conn_connect(struct conn *c);
static void conn_flush(struct conn *c);
static void dispatch(struct worker *w);
static void pace_arm(struct worker *w);

/* ---- Bookkeeping --------------------------------------------------------- */

static void count_error(struct worker *w, int kind)
{
	if (!w->stopping)
		w->c.errors[kind]++;
}

static uint64_t due_count(const struct worker *w, uint64_t now)
{
	if (now < w->t0_ns)
		return 0;
	return (uint64_t)((double)(now - w->t0_ns) * w->rate / 1e9) + 1;
}

static uint64_t due_time(const struct worker *w, uint64_t k)
{
	return w->t0_ns + (uint64_t)((double)k * 1e9 / w->rate);
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
		conn_connect(c);
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
	c->fd = -1;
	if (c->w->stopping)
		conn_done(c);
	else if (c->backoff_next)
		conn_backoff(c);
	else
		conn_connect(c);
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
	/* keel_close cancels the receive stream and a send still in flight first. */
	keel_promise_done(keel_close(w->loop, c->fd), close_done, c);
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
	                                w->cfg->method_str);
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
		case P_CLOSE:
			return 0; /* the body runs to the end of the connection */
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
		dispatch(w);
	else
		conn_flush(c);
	return KEEL_CONTINUE;
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
	/* The stream ended by itself: the server closed (or reset) the connection. */
	if (o.err == 0 && c->pstate == P_CLOSE) {
		response_done(c); /* a close-delimited body is complete; announced, so this closes */
		return;
	}
	if (c->inflight > c->unsent || c->pstate != P_HEAD || c->stage_len)
		conn_fail(c, E_READ, !c->answered);
	else
		conn_fail(c, -1, !c->answered); /* idle connection closed: reconnect without blame */
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
		conn_fail(c, E_READ, !c->answered);
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
		p = keel_send(w->loop, c->fd, cfg->batch, k * cfg->req_len);
	} else {
		struct iovec iov[LOAD_IOV];
		int niov = 0;
		for (uint32_t left = k; left; niov++) {
			uint32_t m = left < cfg->batch_n ? left : cfg->batch_n;
			iov[niov].iov_base = cfg->batch;
			iov[niov].iov_len = m * cfg->req_len;
			left -= m;
		}
		p = keel_sendv(w->loop, c->fd, iov, niov);
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
	fprintf(stderr, "keel load: bug: %llu free slots counted, none found\n", (unsigned long long)w->free_slots);
	abort();
}

/*
 * Open loop: hand every request that is due (retried ones first, oldest
 * first) to connections with room, round robin, then flush them. Requests
 * for which there is no room stay due; they go out as responses free room.
 */
static void dispatch(struct worker *w)
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
	dispatch(w);
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
	c->fd = (int)o.n;
	if (w->stopping) {
		keel_promise_release(keel_close(w->loop, c->fd));
		c->fd = -1;
		conn_done(c);
		return;
	}
	int one = 1;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->state = C_OPEN;
	c->recv_live = true;
	keel_promise_done(keel_recv_stream(w->loop, c->fd, on_data, c), recv_ended, c);
	if (w->rate > 0) {
		w->free_slots += w->depth;
		dispatch(w);
	} else {
		uint64_t now = keel_loop_now_ns(w->loop);
		for (uint32_t i = 0; i < w->depth; i++)
			ring_push(c, now);
		conn_flush(c);
	}
}

static void conn_connect(struct conn *c)
{
	struct worker *w = c->w;
	c->state = C_CONNECTING;
	c->fd = -1;
	c->recv_live = c->sending = c->closed = c->announced = c->answered = false;
	c->inflight = c->unsent = c->head = 0;
	c->pstate = P_HEAD;
	c->stage_len = 0;
	c->connect_p = keel_connect(w->loop, (const struct sockaddr *)&w->cfg->addr, w->cfg->addrlen,
	                            (uint64_t)w->cfg->timeout_ms);
	keel_promise_done(c->connect_p, connect_done, c);
}

/* A connection whose oldest sent request has waited --timeout without a response is given up. */
static void check_timeouts(struct worker *w, uint64_t now)
{
	uint64_t limit = (uint64_t)w->cfg->timeout_ms * 1000000ull;
	for (uint32_t i = 0; i < w->nconns; i++) {
		struct conn *c = &w->conns[i];
		if (c->state == C_OPEN && c->inflight > c->unsent && now - c->wait_ns >= limit)
			conn_fail(c, E_TIMEOUT, false);
	}
}

/* ---- The worker ----------------------------------------------------------- */

static void publish(struct worker *w, uint64_t now)
{
	uint64_t p99 = load_hist_percentile(&w->lat_ok, 99);
	pthread_mutex_lock(&w->run->mu);
	w->snap.c = w->c;
	w->snap.p99_us = p99;
	w->snap.at_ns = now - w->t0_ns;
	pthread_mutex_unlock(&w->run->mu);
}

/* Close the interval that ended at now. */
static void interval_close(struct worker *w)
{
	if (w->niv == w->iv_cap) {
		uint32_t cap = w->iv_cap ? w->iv_cap * 2 : 64;
		struct interval *iv = realloc(w->iv, cap * sizeof(*iv));
		if (!iv)
			return;
		w->iv = iv;
		w->iv_cap = cap;
	}
	struct interval *x = &w->iv[w->niv++];
	x->ok = w->c.ok - w->iv_ok0;
	x->shed = w->c.errors[E_SHED] - w->iv_shed0;
	x->p99_us = load_hist_percentile(&w->lat_iv, 99);
	w->iv_ok0 = w->c.ok;
	w->iv_shed0 = w->c.errors[E_SHED];
	load_hist_reset(&w->lat_iv);
}

static void stop_asked(keel_loop *loop, void *ud)
{
	(void)loop;
	struct worker *w = ud;
	w->stop_asked = true;
}

static int ms_until(uint64_t now, uint64_t t)
{
	if (t <= now)
		return 0;
	uint64_t ms = (t - now + 999999) / 1000000;
	return ms > 1000 ? 1000 : (int)ms;
}

static int worker_run(struct worker *w)
{
	const struct load_cfg *cfg = w->cfg;
	uint64_t check_ms = (uint64_t)cfg->timeout_ms / 10;
	if (check_ms < 1)
		check_ms = 1;
	if (check_ms > 100)
		check_ms = 100;
	/* The loop's clock is from the end of its last wait: take a fresh reading to start. */
	keel_loop_run_once(w->loop, 0);
	uint64_t now = keel_loop_now_ns(w->loop);
	w->t0_ns = now;
	w->end_ns = now + (uint64_t)cfg->duration_s * 1000000000ull;
	uint64_t next_check = now + check_ms * 1000000ull;
	uint64_t next_publish = now + LOAD_PUBLISH_MS * 1000000ull;
	w->iv_next_ns = now + 1000000000ull;
	w->nlive = w->nconns;
	w->pace_fd = -1;
	if (w->rate > 0)
		w->pace_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	for (uint32_t i = 0; i < w->nconns; i++)
		conn_connect(&w->conns[i]);
	while (!w->stop_asked) {
		now = keel_loop_now_ns(w->loop);
		if (now >= w->end_ns)
			break;
		if (w->rate > 0)
			dispatch(w);
		if (now >= next_check) {
			check_timeouts(w, now);
			next_check = now + check_ms * 1000000ull;
		}
		if (now >= next_publish) {
			publish(w, now);
			next_publish = now + LOAD_PUBLISH_MS * 1000000ull;
		}
		while (now >= w->iv_next_ns && w->iv_next_ns <= w->end_ns) {
			interval_close(w);
			w->iv_next_ns += 1000000000ull;
		}
		uint64_t wake = w->end_ns;
		if (next_check < wake)
			wake = next_check;
		if (next_publish < wake)
			wake = next_publish;
		if (w->rate > 0 && w->pace_fd < 0) {
			uint64_t next_due = due_time(w, due_count(w, now));
			if (next_due < wake)
				wake = next_due;
		}
		int err = keel_loop_run_once(w->loop, ms_until(now, wake));
		if (err < 0) {
			fprintf(stderr, "keel load: loop: %s\n", keel_strerror(err));
			return CLI_FAIL;
		}
	}

	/* The run is over: nothing counts from here on; close everything. */
	now = keel_loop_now_ns(w->loop);
	if (w->iv_next_ns <= w->end_ns && now >= w->end_ns)
		interval_close(w); /* the last second */
	w->ended_ns = now < w->end_ns ? now : w->end_ns;
	w->c.scheduled = w->rate > 0 ? due_count(w, w->ended_ns) : w->c.sent;
	w->stopping = true;
	publish(w, w->ended_ns);
	if (w->pace_fd >= 0) {
		keel_promise_release(keel_close(w->loop, w->pace_fd)); /* cancels the pending read */
		w->pace_fd = -1;
	}
	for (uint32_t i = 0; i < w->nconns; i++) {
		struct conn *c = &w->conns[i];
		switch (c->state) {
		case C_CONNECTING:
			keel_promise_cancel(c->connect_p);
			break;
		case C_OPEN:
			conn_fail(c, -1, false);
			break;
		case C_BACKOFF:
			keel_promise_cancel(c->sleep_p);
			break;
		case C_CLOSING:
		case C_DONE:
			break;
		}
	}
	uint64_t deadline = now + LOAD_STOP_GRACE_MS * 1000000ull;
	while (w->nlive > 0 && keel_loop_now_ns(w->loop) < deadline)
		if (keel_loop_run_once(w->loop, 100) < 0)
			break;
	return CLI_OK;
}

static void *worker_thread(void *arg)
{
	struct worker *w = arg;
	struct load_run *run = w->run;
	keel_loop_opts o;
	keel_loop_opts_default(&o);
	o.quiet = true;
	int err = keel_loop_new(&w->loop, &o);
	if (err < 0) {
		fprintf(stderr, "keel load: cannot create a loop: %s\n", keel_strerror(err));
		w->status = CLI_FAIL;
	}
	pthread_mutex_lock(&run->mu);
	run->nready++;
	pthread_cond_broadcast(&run->cv);
	while (!run->go)
		pthread_cond_wait(&run->cv, &run->mu);
	pthread_mutex_unlock(&run->mu);
	if (err == 0 && w->status == CLI_OK)
		w->status = worker_run(w);
	pthread_mutex_lock(&run->mu);
	run->ndone++;
	w->loop_gone = true; /* no more posts: the loop goes below */
	pthread_mutex_unlock(&run->mu);
	if (w->loop)
		keel_loop_free(w->loop); /* cancels and waits for anything the grace period left */
	w->loop = NULL;
	return NULL;
}

static int worker_init(struct worker *w, const struct load_cfg *cfg, struct load_run *run, int index,
                       uint32_t nconns, double rate)
{
	w->cfg = cfg;
	w->run = run;
	w->index = index;
	w->nconns = nconns;
	w->depth = (uint32_t)cfg->pipeline;
	w->rate = rate;
	keel_http_limits_default(&w->limits);
	w->limits.head_max = LOAD_HEAD_MAX;
	w->limits.request_line_max = LOAD_HEAD_MAX;
	w->limits.headers_max = LOAD_HEADERS_MAX;
	if (load_hist_init(&w->lat_ok, LOAD_HIST_MAX_US, LOAD_HIST_DIGITS) < 0 ||
	    load_hist_init(&w->lat_all, LOAD_HIST_MAX_US, LOAD_HIST_DIGITS) < 0 ||
	    load_hist_init(&w->lat_iv, LOAD_HIST_MAX_US, LOAD_HIST_DIGITS) < 0)
		return -ENOMEM;
	w->conns = calloc(nconns, sizeof(*w->conns));
	w->slots = calloc((size_t)nconns * w->depth, sizeof(*w->slots));
	w->retry_cap = nconns * w->depth;
	w->retry = rate > 0 ? calloc(w->retry_cap, sizeof(*w->retry)) : NULL;
	if (!w->conns || !w->slots || (rate > 0 && !w->retry))
		return -ENOMEM;
	for (uint32_t i = 0; i < nconns; i++) {
		w->conns[i].w = w;
		w->conns[i].fd = -1;
		w->conns[i].state = C_DONE;
		w->conns[i].start_ns = w->slots + (size_t)i * w->depth;
	}
	return 0;
}

static void worker_fini(struct worker *w)
{
	for (uint32_t i = 0; w->conns && i < w->nconns; i++)
		free(w->conns[i].stage);
	free(w->conns);
	free(w->slots);
	free(w->retry);
	load_hist_fini(&w->lat_ok);
	load_hist_fini(&w->lat_all);
	load_hist_fini(&w->lat_iv);
	free(w->iv);
}

/* ---- Configuration --------------------------------------------------------- */

static void load_usage(FILE *f)
{
	fputs("usage: keel load [options] URL\n"
	      "  URL                     http://HOST[:PORT][/path]; HOST a numeric IPv4 address,\n"
	      "                          [IPv6] or localhost (127.0.0.1)\n"
	      "  -c, --connections N     connections (default 64)\n"
	      "  -d, --duration SECONDS  length of the run (default 10)\n"
	      "  -R, --rate R            open loop: R requests/s in total, each timed from when it was\n"
	      "                          due (coordinated omission corrected); default: closed loop\n"
	      "  -p, --pipeline D        requests in flight per connection (default 1; 16 with --rate)\n"
	      "  -m, --method M          request method (default GET)\n"
	      "  -b, --body STRING|@FILE request body, sent with Content-Length\n"
	      "  -H, --header 'N: v'     extra request header (repeatable)\n"
	      "  -T, --timeout MS        connect timeout, and how long a connection may go without\n"
	      "                          answering its oldest request before it is dropped (default 2000)\n"
	      "  -t, --threads N         threads, each with a loop and a share of the connections (default 1)\n"
	      "  -j, --json FILE         also write the results as JSON\n"
	      "  -q, --quiet             no progress line on stderr\n",
	      f);
}

__attribute__((format(printf, 1, 2))) static int usage_error(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("keel load: ", stderr);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	load_usage(stderr);
	return CLI_USAGE;
}

static bool is_tchar(unsigned char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
	       (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static bool is_token(const char *s, size_t n)
{
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!is_tchar((unsigned char)s[i]))
			return false;
	return true;
}

/*
 * Split http://HOST[:PORT][/path] into the address to connect to, the Host
 * header (the authority as written) and the target. Returns 0 or -1.
 */
static int parse_url(const char *url, struct load_cfg *cfg, char *host, size_t host_cap, const char **path)
{
	if (strncmp(url, "http://", 7) != 0)
		return -1;
	const char *a = url + 7;
	size_t alen = strcspn(a, "/?#");
	if (alen == 0 || alen >= host_cap || a[alen] == '#')
		return -1;
	memcpy(host, a, alen);
	host[alen] = '\0';
	*path = a[alen] ? a + alen : "/";
	for (const char *q = *path; *q; q++)
		if ((unsigned char)*q <= ' ' || *q == 0x7f || *q == '#')
			return -1;
	/* host[:port], [v6][:port] */
	const char *hs = host, *he, *port = NULL;
	if (*hs == '[') {
		he = strchr(hs, ']');
		if (!he)
			return -1;
		hs++;
		if (he[1] == ':')
			port = he + 2;
		else if (he[1])
			return -1;
	} else {
		he = strchr(hs, ':');
		if (he)
			port = he + 1;
		else
			he = hs + strlen(hs);
	}
	long pn = 80;
	if (port) {
		char *end;
		errno = 0;
		pn = strtol(port, &end, 10);
		if (errno || end == port || *end || pn < 1 || pn > 65535)
			return -1;
	}
	char ip[200];
	size_t hlen = (size_t)(he - hs);
	if (hlen == 0 || hlen >= 64)
		return -1;
	if (hlen == 9 && strncasecmp(hs, "localhost", 9) == 0)
		snprintf(ip, sizeof(ip), "127.0.0.1:%ld", pn);
	else if (host[0] == '[')
		snprintf(ip, sizeof(ip), "[%.*s]:%ld", (int)hlen, hs, pn);
	else
		snprintf(ip, sizeof(ip), "%.*s:%ld", (int)hlen, hs, pn);
	if (keel_addr_parse(ip, &cfg->addr, &cfg->addrlen) < 0)
		return -1;
	snprintf(cfg->target, sizeof(cfg->target), "%s", ip);
	return 0;
}

static char *read_file(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	struct stat sb;
	char *buf = NULL;
	if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode) || sb.st_size > LOAD_BODY_MAX) {
		errno = EFBIG;
		goto out_close;
	}
	buf = malloc((size_t)sb.st_size + 1);
	if (!buf)
		goto out_close;
	size_t got = 0;
	while (got < (size_t)sb.st_size) {
		ssize_t r = read(fd, buf + got, (size_t)sb.st_size - got);
		if (r <= 0) {
			free(buf);
			buf = NULL;
			errno = r == 0 ? EIO : errno;
			goto out_close;
		}
		got += (size_t)r;
	}
	*len = got;
out_close:
	close(fd);
	return buf;
}

/* Append to a growing request buffer. */
struct sbuf {
	char *p;
	size_t len, cap;
	bool oom;
};

static void sb_add(struct sbuf *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p) {
			b->oom = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
}

static void sb_str(struct sbuf *b, const char *s)
{
	sb_add(b, s, strlen(s));
}

static bool header_named(const char *h, const char *name)
{
	size_t n = strlen(name);
	return strncasecmp(h, name, n) == 0 && h[n] == ':';
}

/* Format the request once, then batch_n copies of it for pipelined sends. */
static int build_request(struct load_cfg *cfg, const char *host, const char *path, char **headers,
                         int nheaders, const char *body, size_t body_len, bool has_body)
{
	struct sbuf b = {0};
	bool have_host = false, have_length = false;
	for (int i = 0; i < nheaders; i++) {
		have_host |= header_named(headers[i], "host");
		have_length |= header_named(headers[i], "content-length") ||
		               header_named(headers[i], "transfer-encoding");
	}
	sb_str(&b, cfg->method);
	sb_str(&b, " ");
	if (*path == '?')
		sb_str(&b, "/");
	sb_str(&b, path);
	sb_str(&b, " HTTP/1.1\r\n");
	if (!have_host) {
		sb_str(&b, "Host: ");
		sb_str(&b, host);
		sb_str(&b, "\r\n");
	}
	for (int i = 0; i < nheaders; i++) {
		sb_str(&b, headers[i]);
		sb_str(&b, "\r\n");
	}
	if (has_body && !have_length) {
		char cl[64];
		snprintf(cl, sizeof(cl), "Content-Length: %zu\r\n", body_len);
		sb_str(&b, cl);
	}
	sb_str(&b, "\r\n");
	if (has_body)
		sb_add(&b, body, body_len);
	if (b.oom) {
		free(b.p);
		return -ENOMEM;
	}
	cfg->req = b.p;
	cfg->req_len = b.len;
	size_t n = LOAD_COPY_BYTES / b.len;
	if (n < 1)
		n = 1;
	if (n > (size_t)cfg->pipeline)
		n = (size_t)cfg->pipeline;
	cfg->batch_n = (uint32_t)n;
	cfg->batch = malloc(n * b.len);
	if (!cfg->batch)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		memcpy(cfg->batch + i * b.len, b.p, b.len);
	return 0;
}

/* ---- Results ---------------------------------------------------------------- */

struct results {
	struct counters c;
	load_hist lat_ok, lat_all;
	double duration_s;
	const char *backend;
	const struct interval *iv; /* the first worker's seconds (all of them with one thread) */
	uint32_t niv;
};

static uint64_t errors_total(const struct counters *c)
{
	uint64_t n = 0;
	for (int i = 0; i < E_KINDS; i++)
		n += c->errors[i];
	return n;
}

static void fmt_us(char *buf, size_t cap, uint64_t us)
{
	if (us < 1000)
		snprintf(buf, cap, "%lluus", (unsigned long long)us);
	else if (us < 1000000)
		snprintf(buf, cap, "%.2fms", (double)us / 1e3);
	else
		snprintf(buf, cap, "%.2fs", (double)us / 1e6);
}

static const double pcts[] = {50, 90, 99, 99.9};

static void print_latency(const char *what, const load_hist *h)
{
	char v[6][32];
	for (int i = 0; i < 4; i++)
		fmt_us(v[i], sizeof(v[i]), load_hist_percentile(h, pcts[i]));
	fmt_us(v[4], sizeof(v[4]), h->max);
	fmt_us(v[5], sizeof(v[5]), (uint64_t)load_hist_mean(h));
	printf("  %-13s %10s %10s %10s %10s %10s %10s  (%llu)\n", what, v[0], v[1], v[2], v[3], v[4], v[5],
	       (unsigned long long)h->total);
}

static void print_results(const struct load_cfg *cfg, const struct results *r)
{
	const struct counters *c = &r->c;
	double d = r->duration_s > 0 ? r->duration_s : 1e-9;
	printf("keel load %s\n", cfg->url);
	if (cfg->rate)
		printf("  mode          open loop at %ld req/s, %ld connections, pipeline %ld", cfg->rate,
		       cfg->conns, cfg->pipeline);
	else
		printf("  mode          closed loop, %ld connections, pipeline %ld", cfg->conns, cfg->pipeline);
	printf(", %ld thread%s, %s\n", cfg->threads, cfg->threads == 1 ? "" : "s", r->backend);
	printf("  duration      %.2f s\n", r->duration_s);
	printf("  requests      %llu responses, %llu 2xx/3xx; %llu sent",
	       (unsigned long long)c->responses, (unsigned long long)c->ok, (unsigned long long)c->sent);
	if (cfg->rate)
		printf(", %llu scheduled", (unsigned long long)c->scheduled);
	printf("\n");
	printf("  goodput       %.1f req/s (2xx/3xx)\n", (double)c->ok / d);
	printf("  offered       %.1f req/s (%s)\n", (double)c->scheduled / d, cfg->rate ? "scheduled" : "sent");
	printf("  throughput    %.1f responses/s\n", (double)c->responses / d);
	printf("  transfer      %.2f MB/s in, %.2f MB/s out\n", (double)c->bytes_in / d / 1e6,
	       (double)c->bytes_out / d / 1e6);
	printf("  errors        %llu:", (unsigned long long)errors_total(c));
	for (int i = 0; i < E_KINDS; i++)
		printf("%s %s %llu", i ? "," : "", err_text[i], (unsigned long long)c->errors[i]);
	printf("\n");
	printf("  %-13s %10s %10s %10s %10s %10s %10s  (count%s)\n", "latency", "p50", "p90", "p99", "p99.9", "max",
	       "mean", cfg->rate ? "; timed from when each request was due" : "");
	print_latency("2xx/3xx", &r->lat_ok);
	print_latency("all", &r->lat_all);
}

static void json_latency(FILE *f, const load_hist *h)
{
	fprintf(f, "{\"p50\": %llu, \"p90\": %llu, \"p99\": %llu, \"p999\": %llu, \"max\": %llu, \"mean\": %.1f, \"count\": %llu}",
	        (unsigned long long)load_hist_percentile(h, 50), (unsigned long long)load_hist_percentile(h, 90),
	        (unsigned long long)load_hist_percentile(h, 99), (unsigned long long)load_hist_percentile(h, 99.9),
	        (unsigned long long)h->max, load_hist_mean(h), (unsigned long long)h->total);
}

static void json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			fprintf(f, "\\%c", ch);
		else if (ch < 0x20)
			fprintf(f, "\\u%04x", ch);
		else
			fputc(ch, f);
	}
	fputc('"', f);
}

static int write_json(const struct load_cfg *cfg, const struct results *r)
{
	FILE *f = fopen(cfg->json_path, "w");
	if (!f)
		return -errno;
	const struct counters *c = &r->c;
	double d = r->duration_s > 0 ? r->duration_s : 1e-9;
	fprintf(f, "{\n  \"url\": ");
	json_string(f, cfg->url);
	fprintf(f, ",\n  \"mode\": \"%s\",\n", cfg->rate ? "open" : "closed");
	if (cfg->rate)
		fprintf(f, "  \"rate\": %ld,\n", cfg->rate);
	else
		fprintf(f, "  \"rate\": null,\n");
	fprintf(f, "  \"connections\": %ld,\n  \"pipeline\": %ld,\n  \"threads\": %ld,\n", cfg->conns, cfg->pipeline,
	        cfg->threads);
	fprintf(f, "  \"backend\": \"%s\",\n", r->backend);
	fprintf(f, "  \"duration_s\": %.3f,\n", r->duration_s);
	fprintf(f, "  \"requests\": %llu,\n", (unsigned long long)c->responses);
	fprintf(f, "  \"ok\": %llu,\n", (unsigned long long)c->ok);
	fprintf(f, "  \"sent\": %llu,\n", (unsigned long long)c->sent);
	fprintf(f, "  \"scheduled\": %llu,\n", (unsigned long long)c->scheduled);
	fprintf(f, "  \"requests_per_sec\": %.1f,\n", (double)c->ok / d);
	fprintf(f, "  \"responses_per_sec\": %.1f,\n", (double)c->responses / d);
	fprintf(f, "  \"offered_per_sec\": %.1f,\n", (double)c->scheduled / d);
	fprintf(f, "  \"bytes_in_per_sec\": %.1f,\n", (double)c->bytes_in / d);
	fprintf(f, "  \"bytes_out_per_sec\": %.1f,\n", (double)c->bytes_out / d);
	fprintf(f, "  \"errors\": {");
	for (int i = 0; i < E_KINDS; i++)
		fprintf(f, "%s\"%s\": %llu", i ? ", " : "", err_json[i], (unsigned long long)c->errors[i]);
	fprintf(f, "},\n  \"errors_total\": %llu,\n", (unsigned long long)errors_total(c));
	fprintf(f, "  \"latency_us\": ");
	json_latency(f, &r->lat_ok);
	fprintf(f, ",\n  \"latency_all_us\": ");
	json_latency(f, &r->lat_all);
	fprintf(f, ",\n  \"intervals\": [");
	for (uint32_t i = 0; i < r->niv; i++)
		fprintf(f, "%s\n    {\"t\": %u, \"ok\": %llu, \"shed_503\": %llu, \"p99_us\": %llu}", i ? "," : "", i + 1,
		        (unsigned long long)r->iv[i].ok, (unsigned long long)r->iv[i].shed,
		        (unsigned long long)r->iv[i].p99_us);
	fprintf(f, "\n  ]\n}\n");
	if (ferror(f)) {
		fclose(f);
		return -EIO;
	}
	return fclose(f) == 0 ? 0 : -errno;
}

/* ---- Main thread ------------------------------------------------------------- */

static void progress(struct worker *ws, long n, struct snapshot *prev, double elapsed_s)
{
	double rate = 0;
	uint64_t responses = 0, errors = 0, p99 = 0;
	pthread_mutex_lock(&ws[0].run->mu);
	for (long i = 0; i < n; i++) {
		struct snapshot *s = &ws[i].snap;
		if (s->at_ns > prev[i].at_ns)
			rate += (double)(s->c.responses - prev[i].c.responses) * 1e9 / (double)(s->at_ns - prev[i].at_ns);
		responses += s->c.responses;
		errors += errors_total(&s->c);
		if (s->p99_us > p99)
			p99 = s->p99_us; /* with several threads: the largest of theirs */
		prev[i] = *s;
	}
	pthread_mutex_unlock(&ws[0].run->mu);
	char p[32];
	fmt_us(p, sizeof(p), p99);
	fprintf(stderr, "keel load: %5.1fs  %10.0f req/s  %10llu responses  %6llu errors  p99 %s\n", elapsed_s, rate,
	        (unsigned long long)responses, (unsigned long long)errors, p);
}

static double mono_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Raise the descriptor limit to what the connections need, if the hard limit allows. */
static void raise_nofile(long need)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY || (long)rl.rlim_cur >= need)
		return;
	rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || (long)rl.rlim_max > need ? (rlim_t)need : rl.rlim_max;
	setrlimit(RLIMIT_NOFILE, &rl);
}

static int run_load(struct load_cfg *cfg)
{
	struct load_run run = {.nready = 0};
	pthread_mutex_init(&run.mu, NULL);
	pthread_cond_init(&run.cv, NULL);
	long n = cfg->threads;
	struct worker *ws = calloc((size_t)n, sizeof(*ws));
	struct snapshot *prev = calloc((size_t)n, sizeof(*prev));
	int status = CLI_OK;
	long started = 0;
	if (!ws || !prev) {
		fprintf(stderr, "keel load: out of memory\n");
		free(ws);
		free(prev);
		return CLI_FAIL;
	}
	for (long i = 0; i < n; i++) {
		uint32_t nc = (uint32_t)(cfg->conns / n + (i < cfg->conns % n ? 1 : 0));
		double rate = cfg->rate ? (double)cfg->rate / (double)n : 0;
		if (worker_init(&ws[i], cfg, &run, (int)i, nc, rate) < 0) {
			fprintf(stderr, "keel load: out of memory\n");
			status = CLI_FAIL;
			goto out_free;
		}
	}

	/* SIGINT/SIGTERM end the run early (results still printed); the workers never see them. */
	sigset_t set, old;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, &old);
	signal(SIGPIPE, SIG_IGN);
	raise_nofile(cfg->conns + 64);

	for (long i = 0; i < n; i++) {
		if (pthread_create(&ws[i].thread, NULL, worker_thread, &ws[i]) != 0) {
			fprintf(stderr, "keel load: cannot start a thread\n");
			status = CLI_FAIL;
			break;
		}
		started++;
	}
	pthread_mutex_lock(&run.mu);
	while (run.nready < started)
		pthread_cond_wait(&run.cv, &run.mu);
	for (long i = 0; i < started; i++)
		if (ws[i].status != CLI_OK)
			status = CLI_FAIL; /* its loop failed to start */
	if (status != CLI_OK) {
		/* Do not make the user wait for the others' duration. */
		for (long i = 0; i < started; i++)
			if (ws[i].loop)
				keel_loop_post(ws[i].loop, stop_asked, &ws[i]);
	}
	run.go = true;
	run.backend = started > 0 && ws[0].loop ? keel_loop_backend(ws[0].loop) : "?";
	pthread_cond_broadcast(&run.cv);
	pthread_mutex_unlock(&run.mu);
	if (status != CLI_OK)
		goto out_join;

	if (!cfg->quiet) {
		if (cfg->rate)
			fprintf(stderr, "keel load: %s for %ld s, open loop at %ld req/s, %ld connections, pipeline %ld (%s)\n",
			        cfg->url, cfg->duration_s, cfg->rate, cfg->conns, cfg->pipeline,
			        run.backend);
		else
			fprintf(stderr, "keel load: %s for %ld s, closed loop, %ld connections, pipeline %ld (%s)\n",
			        cfg->url, cfg->duration_s, cfg->conns, cfg->pipeline, run.backend);
	}
	double t0 = mono_s(), next_report = 1.0;
	bool stop_sent = false;
	/* Bounded: every worker ends by itself after the duration plus its grace period. */
	for (;;) {
		pthread_mutex_lock(&run.mu);
		bool all_done = run.ndone == started;
		pthread_mutex_unlock(&run.mu);
		if (all_done)
			break;
		double now = mono_s() - t0;
		if (now >= next_report) {
			if (!cfg->quiet && now < (double)cfg->duration_s)
				progress(ws, n, prev, now);
			next_report += 1.0;
			continue;
		}
		double wait = next_report - now;
		if (wait > 0.05)
			wait = 0.05; /* also notice the workers finishing promptly */
		struct timespec ts = {0, (long)(wait * 1e9)};
		int sig = sigtimedwait(&set, NULL, &ts);
		if (sig > 0) {
			if (stop_sent) {
				fprintf(stderr, "keel load: %s again, exiting\n", strsignal(sig));
				_exit(130);
			}
			fprintf(stderr, "keel load: %s, stopping\n", strsignal(sig));
			stop_sent = true;
			pthread_mutex_lock(&run.mu);
			for (long i = 0; i < n; i++)
				if (!ws[i].loop_gone && ws[i].loop)
					keel_loop_post(ws[i].loop, stop_asked, &ws[i]);
			pthread_mutex_unlock(&run.mu);
		}
	}

out_join:
	for (long i = 0; i < started; i++) {
		pthread_join(ws[i].thread, NULL);
		if (ws[i].status != CLI_OK)
			status = ws[i].status;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (status == CLI_OK) {
		struct results r;
		memset(&r, 0, sizeof(r));
		r.backend = "?";
		if (load_hist_init(&r.lat_ok, LOAD_HIST_MAX_US, LOAD_HIST_DIGITS) < 0 ||
		    load_hist_init(&r.lat_all, LOAD_HIST_MAX_US, LOAD_HIST_DIGITS) < 0) {
			status = CLI_FAIL;
		} else {
			for (long i = 0; i < n; i++) {
				struct worker *w = &ws[i];
				double d = (double)(w->ended_ns - w->t0_ns) / 1e9;
				if (d > r.duration_s)
					r.duration_s = d;
				r.c.sent += w->c.sent;
				r.c.scheduled += w->c.scheduled;
				r.c.responses += w->c.responses;
				r.c.ok += w->c.ok;
				r.c.bytes_in += w->c.bytes_in;
				r.c.bytes_out += w->c.bytes_out;
				for (int k = 0; k < E_KINDS; k++)
					r.c.errors[k] += w->c.errors[k];
				load_hist_merge(&r.lat_ok, &w->lat_ok);
				load_hist_merge(&r.lat_all, &w->lat_all);
			}
			r.backend = run.backend;
			r.iv = ws[0].iv;
			r.niv = ws[0].niv;
			print_results(cfg, &r);
			fflush(stdout);
			if (cfg->json_path) {
				int err = write_json(cfg, &r);
				if (err < 0) {
					fprintf(stderr, "keel load: --json %s: %s\n", cfg->json_path, strerror(-err));
					status = CLI_FAIL;
				}
			}
		}
		load_hist_fini(&r.lat_ok);
		load_hist_fini(&r.lat_all);
	}
out_free:
	for (long i = 0; i < n; i++)
		worker_fini(&ws[i]);
	free(ws);
	free(prev);
	pthread_mutex_destroy(&run.mu);
	pthread_cond_destroy(&run.cv);
	return status;
}

/* --duration accepts "5" or "5s". */
static long parse_seconds(const char *opt, const char *s)
{
	char buf[32];
	size_t n = strlen(s);
	if (n > 0 && n < sizeof(buf) && s[n - 1] == 's') {
		memcpy(buf, s, n - 1);
		buf[n - 1] = '\0';
		s = buf;
	}
	return cli_parse_long(opt, s, 1, 86400);
}

int cli_load(int argc, char **argv)
{
	static const struct option opts[] = {
		{"connections", required_argument, NULL, 'c'}, {"duration", required_argument, NULL, 'd'},
		{"rate", required_argument, NULL, 'R'},        {"pipeline", required_argument, NULL, 'p'},
		{"method", required_argument, NULL, 'm'},      {"body", required_argument, NULL, 'b'},
		{"header", required_argument, NULL, 'H'},      {"timeout", required_argument, NULL, 'T'},
		{"threads", required_argument, NULL, 't'},     {"json", required_argument, NULL, 'j'},
		{"quiet", no_argument, NULL, 'q'},             {"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct load_cfg cfg;
	memset(&cfg, 0, sizeof(cfg));
	cfg.conns = 64;
	cfg.duration_s = 10;
	cfg.timeout_ms = 2000;
	cfg.threads = 1;
	cfg.method = "GET";
	long pipeline = 0;
	const char *body_arg = NULL;
	char **headers = calloc((size_t)argc, sizeof(*headers));
	int nheaders = 0, status = CLI_USAGE;
	char *body = NULL;
	size_t body_len = 0;
	if (!headers)
		return CLI_FAIL;
	int c;
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":c:d:R:p:m:b:H:T:t:j:qh", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			cfg.conns = cli_parse_long("--connections", optarg, 1, 1000000);
			break;
		case 'd':
			cfg.duration_s = parse_seconds("--duration", optarg);
			break;
		case 'R':
			cfg.rate = cli_parse_long("--rate", optarg, 1, 100000000);
			break;
		case 'p':
			pipeline = cli_parse_long("--pipeline", optarg, 1, 1024);
			break;
		case 'm':
			if (!is_token(optarg, strlen(optarg)) || strlen(optarg) > 32) {
				status = usage_error("--method: not an HTTP method token: '%s'", optarg);
				goto out;
			}
			cfg.method = optarg;
			break;
		case 'b':
			body_arg = optarg;
			break;
		case 'H': {
			const char *colon = strchr(optarg, ':');
			if (!colon || !is_token(optarg, (size_t)(colon - optarg)) || strpbrk(optarg, "\r\n")) {
				status = usage_error("--header: expected 'Name: value', got '%s'", optarg);
				goto out;
			}
			headers[nheaders++] = optarg;
			break;
		}
		case 'T':
			cfg.timeout_ms = cli_parse_long("--timeout", optarg, 1, 3600000);
			break;
		case 't':
			cfg.threads = cli_parse_long("--threads", optarg, 1, 256);
			break;
		case 'j':
			cfg.json_path = optarg;
			break;
		case 'q':
			cfg.quiet = true;
			break;
		case 'h':
			load_usage(stdout);
			status = CLI_OK;
			goto out;
		case ':':
			status = usage_error("%s needs a value", argv[optind - 1]);
			goto out;
		default:
			status = usage_error("unknown option '%s'", argv[optind - 1]);
			goto out;
		}
	}
	if (argc - optind != 1) {
		status = usage_error("%s", argc == optind ? "a URL is needed" : "one URL only");
		goto out;
	}
	cfg.url = argv[optind];
	cfg.pipeline = pipeline ? pipeline : cfg.rate ? 16 : 1;
	if (cfg.threads > cfg.conns) {
		status = usage_error("%s", "--threads: more threads than connections");
		goto out;
	}
	if (cfg.conns * cfg.pipeline > LOAD_SLOTS_MAX) {
		status = usage_error("%s", "--connections x --pipeline: too many requests in flight (at most 4194304)");
		goto out;
	}
	char host[256];
	const char *path;
	if (parse_url(cfg.url, &cfg, host, sizeof(host), &path) < 0) {
		status = usage_error("bad URL '%s' (expected http://IP[:PORT]/path, [IPv6] or localhost)", cfg.url);
		goto out;
	}
	if (body_arg && body_arg[0] == '@') {
		body = read_file(body_arg + 1, &body_len);
		if (!body) {
			fprintf(stderr, "keel load: --body %s: %s\n", body_arg, strerror(errno));
			status = CLI_FAIL;
			goto out;
		}
	} else if (body_arg) {
		body_len = strlen(body_arg);
	}
	cfg.method_str.ptr = cfg.method;
	cfg.method_str.len = strlen(cfg.method);
	if (build_request(&cfg, host, path, headers, nheaders, body ? body : body_arg, body_len, body_arg != NULL) < 0) {
		fprintf(stderr, "keel load: out of memory\n");
		status = CLI_FAIL;
		goto out;
	}
	status = run_load(&cfg);
out:
	free(cfg.req);
	free(cfg.batch);
	free(body);
	free(headers);
	return status;
}
