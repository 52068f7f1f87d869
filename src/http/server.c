/*
 * The HTTP/1.1 server: one connection state machine per socket, driven by
 * the runtime's multishot receive.
 *
 * Heads are parsed in place in the receive buffer (a head split across
 * buffers is first gathered into one heap copy); every request keeps the
 * buffers its spans point into until its response is sent. Requests go on
 * a per-connection queue in arrival order; handlers may finish in any
 * order, and whenever the oldest ones are answered they are written in one
 * send, so pipelined requests cost one syscall per batch. Small bodies are
 * copied next to their heads; large ones are sent from where they are.
 * Every resource is bounded: connections (accepting pauses when full),
 * requests in flight per connection (receiving pauses), head and body sizes
 * (414/431/413 before reading further), and time (header, body, idle and
 * send deadlines on the loop's user-space timer heap).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/fault.h"
#include "core/internal.h"
#include "http_internal.h"
#include "keel/errors.h"
#include "keel/file.h"
#include "keel/http.h"
#include "keel/log.h"
#include "keel/tcp.h"

#define OUT_INLINE_BODY 1024 /* bodies up to this size are copied next to their head */
#define IOV_BATCH 32
#define HEAD_RESERVE 512     /* bytes of output reserved per response head */
#define SEND_SLICE (256u << 10) /* bytes per send; the send deadline restarts after each */

enum { T_NONE = 0, T_IDLE, T_HEADER, T_BODY, T_SEND, T_LINGER };

#define LINGER_MS 2000 /* after an error response: how long unread input is drained */

struct route {
	char *method; /* NULL: any */
	size_t mlen;
	char *path;
	size_t plen;
	bool prefix, stream, no_shed;
	keel_http_handler fn;
	void *ud;
};

/*
 * A connection. Every idle keep-alive connection costs this struct, its
 * receive operation and promise, and no buffer: keep it small (fields
 * ordered to leave no holes; send state lives in conn_tx).
 */
struct keel_http_conn {
	keel_http_server *s;
	keel_http_conn *prev, *next;
	keel_promise *recv; /* the receive stream while it runs */
	char *part;         /* a head that arrived in pieces, gathered here */
	/* The request whose body is being read. */
	keel_http_request *cur;
	/*
	 * Input held back while a streamed body waits for its reader, in
	 * arrival order (linked through buf->next), the first from inq_off on.
	 */
	keel_buf *inq_head;
	/*
	 * Since when input has been held back -- in inq, or in the kernel while
	 * receiving was paused; 0 when not. Its age counts for admission, until
	 * a short read shows the kernel's backlog drained.
	 */
	uint64_t held_ns;
	uint64_t resumed_ns; /* when receiving resumed with held_ns set: its backlog comes at once */
	/* Requests in arrival order; the first nsending are in the current send. */
	keel_http_request *qhead, *qtail;
	size_t out_pending;   /* answered, unsent response bytes (conn_out_max) */
	struct conn_tx *tx;   /* the send state, only while sending */
	keel_promise *send_p; /* the send in flight, to cancel on close */
	char *peer;           /* for the access log (only when it is on) */
	/* The server's idle connections, oldest first: closed first when room is needed. */
	keel_http_conn *idle_prev, *idle_next;
	uint64_t idle_ns; /* since when it is idle */
	keel__timer timer;
	uint64_t deadline_ns; /* what the timer is for (0: nothing); the heap entry may be earlier */
	int fd;
	uint32_t inq_off;
	uint32_t part_len, part_cap;
	unsigned nreqs, nsending, served;
	uint8_t timer_kind;
	bool sending : 1, closing : 1, no_more : 1, eof : 1, paused : 1, draining : 1, lingering : 1;
	bool paced : 1;   /* the receive runs one buffer at a time (a streamed body is being read) */
	bool pumping : 1; /* a deferred pump (pump_later) is due */
	bool idle : 1;    /* on the server's idle list */
};

/*
 * What a connection needs while it sends, taken from a per-server free
 * list for the batch and given back after it: an idle keep-alive
 * connection holds none of it (the output buffer and the iovecs are most
 * of a connection's memory).
 */
struct conn_tx {
	struct conn_tx *next; /* free list */
	char *out;            /* heads and small bodies of the batch */
	size_t out_cap;
	/* The batch being sent, in slices so a slow reader shows progress to the send deadline. */
	struct iovec iov[IOV_BATCH];
	int niov, iov_pos;
	uint64_t file_off, file_left;
	uint64_t file_slice; /* bytes asked of the sendfile in flight; 0 when none */
	/* A streamed body: 1 while pieces remain, 2 while waiting for the producer. */
	uint8_t stream_state;
	bool stream_chunked;
	bool stream_sized;    /* sent with Content-Length: stream_left bytes still owed */
	uint64_t stream_left;
	char chunk_head[24];
};

#define TX_FREE_MAX 256    /* send states kept for reuse per server */
/*
 * Connection and request records kept for reuse per server; past these a
 * burst's records are freed as they come back, so memory returns towards
 * its baseline when the burst is over.
 */
#define CONN_FREE_MAX 256
#define REQ_FREE_MAX 256
#define RECLAIM_BATCH 16   /* idle connections closed at once when descriptors run out */
/*
 * After a burst -- connections down to a quarter of their peak for
 * TRIM_AFTER_MS -- the free lists are cut to TRIM_KEEP and the loop gives
 * back what it keeps for reuse (keel_loop_trim): RSS returns towards its
 * baseline instead of staying at the burst's peak.
 */
#define TRIM_AFTER_MS 1000
#define TRIM_KEEP 16
#define TX_OUT_KEEP 16384  /* larger output buffers are not kept */

#define STATUS_SOURCES_MAX 16
#define STATUS_SOURCE_METRICS 16

struct status_source {
	char *label, *value;
	keel_http_metrics_fn fn;
	void *ud;
};

struct keel_http_server {
	keel_loop *loop;
	keel_http_config cfg;
	struct status_source status_src[STATUS_SOURCES_MAX];
	unsigned nstatus_src;
	struct route *routes;
	unsigned nroutes;
	int lfd;
	keel_promise *accept;  /* the accept stream while it runs (at most one) */
	keel_promise *backoff; /* the pause after EMFILE and the like */
	unsigned backoff_ms;   /* grows while accepting keeps failing; 0 after a success */
	uint64_t backoff_logged_ms;
	bool accept_paused, stopping;
	keel_http_conn *conns;
	unsigned nconns;
	unsigned nclosing;  /* of nconns, being closed (their descriptors not yet released) */
	keel_http_conn *idle_head, *idle_tail; /* idle connections, oldest first */
	unsigned nidle;
	bool reclaiming;    /* out of descriptors: idle connections are closing to make room */
	keel_http_conn *free_conns;
	unsigned nfree_conns;
	struct conn_tx *free_tx;
	unsigned nfree_tx;
	keel_http_request *free_reqs;
	unsigned nfree_reqs;
	keel_http_request *zombies; /* requests whose handlers' producers still hold them */
	unsigned peak_conns;        /* the most connections open since the last trim */
	keel__timer trim_timer;
	size_t req_size;
	int *held;
	unsigned nheld, held_cap;
	keel_promise *stopped;
	keel__timer grace;
	uint64_t input_ns; /* when the input being parsed arrived, if not this tick (held back) */
	size_t body_mem;   /* request body bytes copied and held (body_mem_max) */
	/* Admission's view of the loop's CPU use: a window's start (wall and thread CPU time). */
	uint64_t adm_wall_ns, adm_cpu_ns;
	bool adm_saturated;
	char date[32];
	size_t date_len;
	time_t date_sec;
	size_t server_name_len;
	keel_http_stats stats;
	/* Access log: two buffers; one fills while the other is being written. */
	char *log_buf[2];
	size_t log_len[2];
	int log_cur;
	bool log_writing;
	keel__timer log_timer;
	char log_date[40];
	time_t log_date_sec;
};

#define LOG_BUF 65536
#define LOG_FLUSH_AT 32768

static void conn_close(keel_http_conn *c);
static void conn_flush(keel_http_conn *c);

/* Connections open and not being closed: what conns_max bounds. */
static unsigned conns_live(const keel_http_server *s)
{
	return s->nconns - s->nclosing;
}

static void conn_read(keel_http_conn *c);
static void pump_later(keel_http_conn *c);
static void accept_start(keel_http_server *s);
static void accept_resume(keel_http_server *s);
static keel_http_conn *idle_pick(keel_http_server *s);
static void limit_recheck(keel_http_server *s);
static void backoff_done(keel_ctx *ctx, keel_outcome o, void *ud);
static unsigned idle_reclaim(keel_http_server *s, unsigned n);
static void conn_timer_update(keel_http_conn *c);
static void conn_open(keel_http_server *s, int fd);
static void log_flush(keel_http_server *s);
static void trim_due(keel_loop *loop, keel__timer *t);

/* ---- Configuration, routes ---------------------------------------------- */

void keel_http_config_default(keel_http_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	keel_http_limits_default(&cfg->limits);
	cfg->body_max = 1 << 20;
	cfg->conns_max = 10000;
	cfg->pipeline_max = 32;
	cfg->header_timeout_ms = 10000;
	cfg->body_timeout_ms = 30000;
	cfg->idle_timeout_ms = 60000;
	cfg->send_timeout_ms = 30000;
	cfg->server_name = "keel";
	cfg->access_log_fd = -1;
	cfg->queue_delay_max_us = 20000;
	cfg->inflight_max = 10000;
	cfg->conn_out_max = 1 << 20;
	cfg->body_mem_max = 64 << 20;
}

keel_http_server *keel_http_server_new(keel_loop *loop, const keel_http_config *cfg)
{
	keel_http_server *s = keel__calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->loop = loop;
	if (cfg)
		s->cfg = *cfg;
	else
		keel_http_config_default(&s->cfg);
	if (!s->cfg.limits.headers_max || !s->cfg.pipeline_max || !s->cfg.conns_max) {
		free(s);
		return NULL;
	}
	s->lfd = -1;
	s->server_name_len = s->cfg.server_name ? strlen(s->cfg.server_name) : 0;
	s->req_size = sizeof(keel_http_request) + s->cfg.limits.headers_max * sizeof(keel_http_header);
	keel__timer_init(&s->grace, NULL);
	keel__timer_init(&s->trim_timer, trim_due);
	return s;
}

int keel_http_route(keel_http_server *s, const char *method, const char *path, unsigned flags,
                    keel_http_handler handler, void *ud)
{
	if (!path || path[0] != '/' || !handler ||
	    (flags & ~(unsigned)(KEEL_HTTP_PREFIX | KEEL_HTTP_STREAM_BODY | KEEL_HTTP_NO_SHED)))
		return -EINVAL;
	/* Requests are matched by their normalized path: a route that is not one could never match. */
	size_t plen = strlen(path);
	char *norm = keel__malloc(plen + 1);
	if (!norm)
		return -ENOMEM;
	long nl = keel_http_path_normalize(path, plen, norm);
	bool normal = nl == (long)plen && memcmp(norm, path, plen) == 0;
	free(norm);
	if (!normal)
		return -EINVAL;
	struct route *r = keel__realloc(s->routes, (s->nroutes + 1) * sizeof(*r));
	if (!r)
		return -ENOMEM;
	s->routes = r;
	r = &s->routes[s->nroutes];
	r->method = method ? strdup(method) : NULL;
	r->path = strdup(path);
	if ((method && !r->method) || !r->path)
		return -ENOMEM;
	r->plen = strlen(path);
	r->mlen = method ? strlen(method) : 0;
	r->prefix = flags & KEEL_HTTP_PREFIX;
	r->stream = flags & KEEL_HTTP_STREAM_BODY;
	r->no_shed = flags & KEEL_HTTP_NO_SHED;
	r->fn = handler;
	r->ud = ud;
	s->nroutes++;
	return 0;
}

static const struct route *route_find(keel_http_server *s, const keel_http_request *req, bool *method_ok)
{
	const struct route *best = NULL;
	*method_ok = true;
	bool path_matched = false;
	for (unsigned i = 0; i < s->nroutes; i++) {
		const struct route *r = &s->routes[i];
		bool match = r->prefix ? req->path.len >= r->plen && memcmp(req->path.ptr, r->path, r->plen) == 0
		                       : req->path.len == r->plen && memcmp(req->path.ptr, r->path, r->plen) == 0;
		if (!match)
			continue;
		path_matched = true;
		keel_str m = req->msg.method;
		if (r->method && !(m.len == r->mlen && memcmp(m.ptr, r->method, m.len) == 0) &&
		    !(r->mlen == 3 && memcmp(r->method, "GET", 3) == 0 && m.len == 4 && memcmp(m.ptr, "HEAD", 4) == 0))
			continue;
		if (!best || (!r->prefix && best->prefix) || (r->prefix && best->prefix && r->plen > best->plen))
			best = r;
	}
	if (!best && path_matched)
		*method_ok = false;
	return best;
}

/* ---- Status lines, Date ------------------------------------------------- */

const char *keel_http_status_text(int status)
{
	switch (status) {
	case 100: return "Continue";
	case 101: return "Switching Protocols";
	case 200: return "OK";
	case 201: return "Created";
	case 204: return "No Content";
	case 206: return "Partial Content";
	case 301: return "Moved Permanently";
	case 302: return "Found";
	case 304: return "Not Modified";
	case 400: return "Bad Request";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 411: return "Length Required";
	case 413: return "Content Too Large";
	case 414: return "URI Too Long";
	case 416: return "Range Not Satisfiable";
	case 417: return "Expectation Failed";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	case 505: return "HTTP Version Not Supported";
	default: return status < 200 ? "Informational" : status < 300 ? "OK" : status < 400 ? "Redirect"
	               : status < 500 ? "Client Error" : "Server Error";
	}
}

/* The Date header, formatted at most once per second. */
static void date_update(keel_http_server *s)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME_COARSE, &ts);
	if (ts.tv_sec == s->date_sec && s->date_len)
		return;
	s->date_sec = ts.tv_sec;
	s->date_len = keel__http_date(ts.tv_sec, s->date, sizeof(s->date));
}

/* ---- Requests ------------------------------------------------------------ */

/* A request record, not yet queued (queued once its head has parsed). NULL on ENOMEM. */
static keel_http_request *req_new(keel_http_conn *c)
{
	keel_http_server *s = c->s;
	keel_http_request *r = s->free_reqs;
	if (r) {
		s->free_reqs = r->next;
		s->nfree_reqs--;
	} else if (!(r = keel__malloc(s->req_size))) {
		return NULL;
	}
	memset(r, 0, sizeof(*r));
	r->loop = s->loop;
	r->conn = c;
	r->server = s;
	r->resp.file_fd = -1;
	r->keep_alive = 1;
	return r;
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

static void req_put(keel_http_server *s, keel_http_request *r)
{
	if (s->nfree_reqs >= REQ_FREE_MAX) {
		free(r);
		return;
	}
	r->next = s->free_reqs;
	s->free_reqs = r;
	s->nfree_reqs++;
}

/* A streamed-body read still waiting ends with err. */
static void body_wait_reject(keel_http_request *r, int err)
{
	keel_promise *w = r->body_wait;
	if (w) {
		r->body_wait = NULL;
		keel_promise_reject(w, err);
	}
}

/* Everything r holds goes back: its buffers, copies, file, context; then the record (s may be NULL). */
static void req_release(keel_http_server *s, keel_http_request *r)
{
	for (int i = 0; i < 2; i++)
		if (r->hold[i])
			keel_buf_release(r->hold[i]);
	if (r->body_buf)
		keel_buf_release(r->body_buf);
	free(r->own);
	free(r->body_own);
	if (r->answer && r->answer->file_fd >= 0 && r->answer->file_close)
		close(r->answer->file_fd);
	if (r->ctx)
		keel_ctx_release(r->ctx);
	if (!s) {
		free(r); /* (a zombie whose server was freed first) */
		return;
	}
	s->body_mem -= r->body_cap;
	req_put(s, r);
}

/*
 * A detached zombie released (from the ready queue: its producer's settle
 * runs nobody's code). The server may have been freed meanwhile: then r is
 * no longer on its list (r->server is NULL) and goes alone.
 */
static void zombie_release_due(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	keel_http_request *r = ud;
	keel_http_server *s = r->server;
	if (s) {
		keel_http_request **pp = &s->zombies;
		while (*pp != r)
			pp = &(*pp)->next;
		*pp = r->next;
	}
	/* What the handler answered with at last is its to give back: a file it opened, say. */
	if (r->resp.file_fd >= 0 && r->resp.file_close)
		close(r->resp.file_fd);
	req_release(s, r);
}

/* A zombie's producer let go (called inside its settle: only bookkeeping here). */
static void zombie_released(keel_promise *p, void *arg)
{
	(void)p;
	keel_http_request *r = arg;
	r->zombie = 0;
	r->holder = NULL;
	if (r->conn) {
		/* Let go before its connection was freed: req_free releases it as usual. */
		if (r->resp.file_fd >= 0 && r->resp.file_close)
			r->answer = &r->resp; /* (so req_release closes the handler's file) */
		return;
	}
	r->zombie = 2; /* (on the zombie list until the ready queue releases it) */
	keel_promise *due = keel_promise_new(r->loop);
	keel_promise_resolve(due, 0, NULL);
	keel_promise_done(due, zombie_release_due, r);
}

/*
 * The client went while a producer the server could not stop (a handler's
 * promise, or a streamed body's piece, without a cancel hook) still holds
 * r: keep it until that producer settles (keel_http_handler's contract).
 */
static void req_zombie(keel_http_request *r, keel_promise *p)
{
	if (r->zombie || !p || !keel__promise_producer_holds(p))
		return;
	r->zombie = 1;
	r->holder = p;
	keel__promise_on_release(p, zombie_released, r);
}

static void req_free(keel_http_conn *c, keel_http_request *r)
{
	body_wait_reject(r, -ECANCELED); /* the response is out: the request ends here */
	if (c->cur == r)
		c->cur = NULL;
	c->out_pending -= r->out_bytes;
	if (r->zombie) {
		r->conn = NULL; /* the connection goes; the request stays for its producer */
		r->next = c->s->zombies;
		c->s->zombies = r;
		return;
	}
	req_release(c->s, r);
}

keel_ctx *keel_http_request_ctx(keel_http_request *req)
{
	if (!req->ctx)
		req->ctx = keel_ctx_new(req->loop);
	return req->ctx;
}

keel_promise *keel_http_respond(keel_http_request *req, int status, const char *content_type,
                                const char *body, size_t len)
{
	req->resp.status = status;
	req->resp.content_type = content_type;
	req->resp.body.ptr = body;
	req->resp.body.len = len;
	keel_promise *p = keel_promise_new(req->loop);
	keel_promise_resolve(p, 0, &req->resp);
	return p;
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

static const keel_http_header retry_after = {{"Retry-After", 11}, {"1", 1}};

static int err_status(int err)
{
	switch (err) {
	case -ENOENT: return 404;
	case -EACCES:
	case -EPERM: return 403;
	case -ETIMEDOUT: return 504;
	case -EBADMSG: return 400;
	case -EMSGSIZE: return 413;
	case -ENOMEM:
	case KEEL_ELIMIT: return 503; /* out of a resource for now: worth retrying */
	default: return 500;
	}
}

static void req_answer(keel_http_request *r, keel_outcome o)
{
	r->pending = NULL;
	if (o.err || !o.ptr) {
		if (r->resp.file_fd >= 0 && r->resp.file_close)
			close(r->resp.file_fd); /* a handler that failed after opening its file */
		/* The body's own error passed on is the client's doing: a body cut off is a bad request. */
		int st = o.err && o.err == r->body_err && o.err == -ECONNRESET ? 400 : err_status(o.err);
		r->resp.status = st;
		r->resp.content_type = "text/plain";
		r->resp.body.ptr = keel_http_status_text(st);
		r->resp.body.len = strlen(r->resp.body.ptr);
		r->resp.headers = st == 503 ? &retry_after : NULL;
		r->resp.nheaders = st == 503;
		r->resp.file_fd = -1;
		r->resp.stream = NULL; /* whatever the handler had begun to fill */
		r->resp.stream_length = 0;
		r->answer = &r->resp;
	} else {
		r->answer = o.ptr;
	}
	r->done = 1;
	if (r->answer->file_fd < 0 && !r->answer->stream) {
		r->out_bytes = r->answer->body.len; /* files and streams are pulled as they go */
		r->conn->out_pending += r->out_bytes;
	}
	if (r->stream_body && !r->body_done && !r->answer->stream) {
		/* Answered without a streamed response: the rest of the body is not wanted. */
		r->body_discard = 1;
		body_wait_reject(r, -ECANCELED);
		pump_later(r->conn);
	}
}

static void handler_done(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	keel_http_request *r = ud;
	keel_http_conn *c = r->conn;
	c->s->stats.inflight--;
	if (o.err == -ECANCELED && c->closing)
		req_zombie(r, r->pending); /* cancelled, but its producer may still write to it */
	if (r->zombie) {
		/* Its answer is discarded, and its response is still the producer's: untouched. */
		r->pending = NULL;
		r->done = 1;
		conn_close(c);
		return;
	}
	req_answer(r, o);
	if (c->closing) {
		conn_close(c); /* re-check: it may now be free of pending handlers */
		return;
	}
	conn_flush(c);
}

/* An error answered by the server itself; the connection closes after it. */
static void req_error(keel_http_conn *c, keel_http_request *r, int status)
{
	if (!r) {
		if (!(r = req_new(c))) {
			conn_close(c); /* not even room to say so */
			return;
		}
		req_queue(c, r);
	}
	r->is_error = 1;
	r->keep_alive = 0;
	r->resp.status = status;
	r->resp.content_type = "text/plain";
	r->resp.body.ptr = keel_http_status_text(status);
	r->resp.body.len = strlen(r->resp.body.ptr);
	if (status == 503) {
		r->resp.headers = &retry_after;
		r->resp.nheaders = 1;
	}
	r->answer = &r->resp;
	r->done = 1;
	if (c->cur == r)
		c->cur = NULL;
	c->no_more = true; /* whatever follows cannot be framed: read no further */
	if (status >= 500)
		c->s->stats.responses_5xx++;
	else
		c->s->stats.responses_4xx++;
}

/* 405 must say which methods the path does allow (RFC 9110 15.5.6). */
static void allow_header(keel_http_server *s, keel_http_request *r)
{
	keel_ctx *ctx = keel_http_request_ctx(r);
	char *list = keel_ctx_alloc(ctx, 256);
	keel_http_header *h = list ? keel_ctx_alloc(ctx, sizeof(*h)) : NULL;
	if (!h)
		return; /* no memory for the list: a 405 without Allow beats none */
	size_t n = 0;
	bool get = false;
	list[0] = '\0';
	for (unsigned i = 0; i < s->nroutes; i++) {
		const struct route *rt = &s->routes[i];
		bool match = rt->prefix ? r->path.len >= rt->plen && memcmp(r->path.ptr, rt->path, rt->plen) == 0
		                        : keel_str_eq(r->path, rt->path);
		if (!match || !rt->method || strstr(list, rt->method))
			continue;
		if (n + rt->mlen + 8 > 256)
			break; /* the list is bounded; 405 with a partial Allow is still a 405 */
		n += (size_t)snprintf(list + n, 256 - n, "%s%s", n ? ", " : "", rt->method);
		get = get || strcmp(rt->method, "GET") == 0;
		if (n >= 200)
			break;
	}
	if (get && !strstr(list, "HEAD") && n + 6 < 256)
		n += (size_t)snprintf(list + n, 256 - n, ", HEAD");
	h->name.ptr = "Allow";
	h->name.len = 5;
	h->value.ptr = list;
	h->value.len = n;
	r->resp.headers = h;
	r->resp.nheaders = 1;
}

/*
 * Parse the target once (keel_http_target_parse): routes match, handlers
 * see and the proxy forwards the same normalized path. In absolute-form the
 * target's authority replaces Host (RFC 9112 3.2.2). Returns 0 or a status.
 */
static int req_target(keel_http_request *r)
{
	keel_http_target t;
	int rc = keel_http_target_parse(r->msg.target, &t, NULL);
	if (rc == KEEL_HTTP_INCOMPLETE) {
		char *scratch = keel_ctx_alloc(keel_http_request_ctx(r), r->msg.target.len);
		if (!scratch)
			return 503;
		rc = keel_http_target_parse(r->msg.target, &t, scratch);
	}
	if (rc < 0)
		return 400;
	if (t.form == KEEL_HTTP_TARGET_ASTERISK && !keel_str_eq(r->msg.method, "OPTIONS"))
		return 400;
	if (t.form == KEEL_HTTP_TARGET_ABSOLUTE)
		r->msg.host = t.authority;
	r->path = t.path;
	r->query = t.query;
	return 0;
}

/*
 * Admission: shed when the work ahead of this request in the current tick
 * already exceeds the queueing budget, or too many handlers are pending.
 * A 503 costs a parse and a few bytes in a send the connection makes
 * anyway; the work it declines would have made every later answer late.
 */
/* Whether the loop's thread used 70% of a CPU or more since the last look (at least 10 ms ago). */
static bool loop_saturated(keel_http_server *s, uint64_t now)
{
	if (now - s->adm_wall_ns < 10000000 && s->adm_wall_ns)
		return s->adm_saturated;
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	uint64_t cpu = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	if (s->adm_wall_ns)
		s->adm_saturated = (cpu - s->adm_cpu_ns) * 10 >= (now - s->adm_wall_ns) * 7;
	s->adm_wall_ns = now;
	s->adm_cpu_ns = cpu;
	return s->adm_saturated;
}

static bool should_shed(keel_http_server *s, const struct route *rt)
{
	if (rt->no_shed)
		return false;
	if (s->cfg.inflight_max && s->stats.inflight >= s->cfg.inflight_max)
		return true;
	if (s->cfg.queue_delay_max_us) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		uint64_t now = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
		uint64_t budget = (uint64_t)s->cfg.queue_delay_max_us * 1000;
		/*
		 * Input arrives with the tick. Input held back by the pipelining
		 * limit arrived earlier; its wait is queueing only if the loop's
		 * thread is CPU-bound -- not when a client simply pipelined past
		 * the limit behind slow (waiting, not working) handlers.
		 */
		uint64_t since = keel_loop_now_ns(s->loop);
		if (s->input_ns && loop_saturated(s, now))
			since = s->input_ns;
		if (now > since && now - since > budget)
			return true;
	}
	return false;
}

static void req_shed(keel_http_request *r)
{
	r->conn->s->stats.shed++;
	r->resp.status = 503;
	r->resp.content_type = "text/plain";
	r->resp.body.ptr = "Service Unavailable\n";
	r->resp.body.len = 20;
	r->resp.headers = &retry_after;
	r->resp.nheaders = 1;
	req_answer(r, keel_ok(0, &r->resp));
}

static void handler_call(keel_http_request *r, const struct route *rt)
{
	if (should_shed(r->conn->s, rt)) {
		req_shed(r);
		return;
	}
	keel_promise *p = rt->fn(r, rt->ud);
	if (!p) {
		req_answer(r, keel_fail(-ENOMEM));
	} else if (keel_promise_is_settled(p)) {
		/* Already answered: no need to wait for the ready queue. */
		req_answer(r, keel_promise_outcome(p));
		keel_promise_release(p);
	} else {
		r->pending = p;
		r->conn->s->stats.inflight++;
		keel_promise_done(p, handler_done, r);
	}
}

static void req_dispatch(keel_http_conn *c, keel_http_request *r)
{
	keel_http_server *s = c->s;
	s->stats.requests++;
	r->head_only = keel_str_eq(r->msg.method, "HEAD");
	if (r->path.len == 1 && r->path.ptr[0] == '*') {
		r->resp.status = 200; /* OPTIONS * (RFC 9110 9.3.7): the server is here; no route is asked */
		r->answer = &r->resp;
		r->done = 1;
		return;
	}
	bool method_ok;
	const struct route *rt = route_find(s, r, &method_ok);
	if (!rt) {
		static const char *const known[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT",
		                                    "OPTIONS", "TRACE", "PATCH", NULL};
		bool is_known = false;
		for (int i = 0; known[i]; i++)
			is_known = is_known || keel_str_eq(r->msg.method, known[i]);
		int st = !is_known ? 501 : method_ok ? 404 : 405;
		if (st == 405)
			allow_header(s, r);
		r->resp.status = st;
		r->resp.content_type = "text/plain";
		r->resp.body.ptr = keel_http_status_text(st);
		r->resp.body.len = strlen(r->resp.body.ptr);
		r->answer = &r->resp;
		r->done = 1;
		return;
	}
	handler_call(r, rt);
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
		conn_close(c);
		return;
	}
	conn_timer_update(c);
	conn_flush(c);
}

/*
 * 100 Continue for the request whose body is being read, once it is the
 * oldest one (earlier responses go first), through the same one-send-at-a-
 * time path as responses so nothing can overtake it.
 */
static bool send_continue_if_due(keel_http_conn *c)
{
	static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
	keel_http_request *r = c->cur;
	if (!r || !r->want_continue || c->qhead != r || c->sending || c->closing)
		return false;
	r->want_continue = 0;
	c->sending = true;
	c->send_p = keel_send(c->s->loop, c->fd, cont, sizeof(cont) - 1);
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
	}
	if (!r->body_done)
		c->cur = r;
	c->s->stats.requests++;
	r->head_only = keel_str_eq(r->msg.method, "HEAD");
	handler_call(r, rt);
}

/* A head was parsed: set up its body or dispatch it. */
static void req_begin(keel_http_conn *c, keel_http_request *r, size_t avail)
{
	c->served++;
	r->head_only = keel_str_eq(r->msg.method, "HEAD"); /* (an error answered before dispatch has no body either) */
	r->keep_alive = r->msg.keep_alive;
	if (want_close_after(c, r)) {
		r->keep_alive = 0;
		c->no_more = true;
	}
	if (r->msg.upgrade || keel_str_eq(r->msg.method, "CONNECT")) {
		req_error(c, r, 501); /* no upgrades or tunnels here: what follows is not HTTP */
		return;
	}
	int st = req_target(r);
	if (st) {
		req_error(c, r, st); /* a target that cannot be read one way only */
		return;
	}
	if (r->msg.body != KEEL_HTTP_BODY_NONE) {
		bool method_ok;
		const struct route *rt = route_find(c->s, r, &method_ok);
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
		if (r->msg.expect_continue)
			r->want_continue = 1;
		break;
	default:
		req_dispatch(c, r);
		break;
	}
}

/*
 * Copy body bytes that arrived in pieces. A Content-Length body gets its
 * exact size at once; a chunked one grows by doubling. Copies across the
 * server are bounded by body_mem_max. Returns 0, or the status to answer:
 * 503 (over the server's body memory) or 500 (out of memory).
 */
static int body_append(keel_http_conn *c, keel_http_request *r, const char *p, size_t n)
{
	keel_http_server *s = c->s;
	if (r->body_len + n > r->body_cap) {
		size_t cap;
		if (r->msg.body == KEEL_HTTP_BODY_LENGTH) {
			cap = (size_t)r->msg.content_length;
		} else {
			cap = r->body_cap ? r->body_cap * 2 : 4096;
			while (cap < r->body_len + n)
				cap *= 2;
			if (cap > s->cfg.body_max && s->cfg.body_max >= r->body_len + n)
				cap = s->cfg.body_max;
		}
		if (s->cfg.body_mem_max && s->body_mem - r->body_cap + cap > s->cfg.body_mem_max)
			return 503;
		char *nb = keel__realloc(r->body_own, cap);
		if (!nb)
			return 500;
		s->body_mem += cap - r->body_cap;
		r->body_own = nb;
		r->body_cap = cap;
	}
	memcpy(r->body_own + r->body_len, p, n);
	r->body_len += n;
	return 0;
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
	body_wait_reject(r, err);
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
		if (rc == KEEL_HTTP_CHUNK_DONE) {
			end = true;
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
		} else if ((st = body_append(c, r, data, n))) {
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
			req_dispatch(c, r);
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
				req_error(c, r, 413); /* body_max 0: no body, whatever its framing (the decoder's 0 is "no limit") */
				return len;
			}
			if ((st = body_append(c, r, span.ptr, span.len))) {
				req_error(c, r, st);
				return len;
			}
		} else if (rc == KEEL_HTTP_CHUNK_DONE) {
			r->body.ptr = r->body_own;
			r->body.len = r->body_len;
			c->cur = NULL;
			req_dispatch(c, r);
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
				conn_close(c);
				break;
			}
			rc = keel_http_parse_request(c->part, c->part_len, prev, &r->msg, r->headers,
			                             lim->headers_max, lim);
			if (rc == KEEL_HTTP_INCOMPLETE) {
				req_put(s, r); /* not a request yet */
				data += take;
				len -= take;
				continue;
			}
			req_queue(c, r);
			if (rc < 0) {
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
			conn_close(c);
			break;
		}
		rc = keel_http_parse_request(data, len, 0, &r->msg, r->headers, lim->headers_max, lim);
		if (rc == KEEL_HTTP_INCOMPLETE) {
			/* Keep the start of the head; it is gathered with what follows. */
			req_put(s, r);
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
			req_error(c, r, -rc);
			break;
		}
		req_hold(r, buf);
		data += rc;
		len -= (size_t)rc;
		req_begin(c, r, len);
	}
	conn_timer_update(c);
	conn_flush(c);
	return blocked ? (size_t)(data - buf->data) : buf->len;
}

/* Requests in flight and unsent answers are bounded per connection: past either, receiving pauses. */
static bool conn_full(const keel_http_conn *c)
{
	/* (A body being read must be read to the end, whatever the limit: it is not a new request.) */
	return (!c->cur && c->nreqs >= c->s->cfg.pipeline_max) || c->out_pending > c->s->cfg.conn_out_max;
}

static bool conn_may_read(const keel_http_conn *c)
{
	return !c->inq_head && !c->recv && !c->closing && !c->eof && !c->lingering && !conn_full(c);
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
		conn_close(c);
		return;
	}
	conn_timer_update(c);
	conn_flush(c);
}

/* Feed held-back input on, as far as readers allow; then read again if nothing is held. */
static void conn_pump(keel_http_conn *c)
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
	if (conn_may_read(c))
		conn_read(c);
	conn_timer_update(c);
	conn_flush(c);
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

static void inq_clear(keel_http_conn *c)
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
		conn_close(c);
		return;
	}
	conn_pump(c);
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
			conn_timer_update(r->conn); /* nobody waits: not the client's delay */
	}
}

keel_promise *keel_http_body_read(keel_http_request *r)
{
	keel_promise *p = keel_promise_new(r->loop);
	if (!r->stream_body) {
		/* A body read whole: one piece, then the end. */
		r->piece = r->body_given ? (keel_str){NULL, 0} : r->body;
		r->body_given = 1;
		keel_promise_resolve(p, 0, &r->piece);
		return p;
	}
	keel_http_conn *c = r->conn;
	if (r->body_buf) {
		keel_buf_release(r->body_buf); /* the previous piece is done with */
		r->body_buf = NULL;
	}
	if (!c) {
		keel_promise_reject(p, -ECONNRESET); /* a zombie: its client is gone */
		return p;
	}
	if (r->body_err || c->closing) {
		keel_promise_reject(p, r->body_err ? r->body_err : -ECONNRESET);
		return p;
	}
	if (r->body_done) {
		r->piece.ptr = NULL;
		r->piece.len = 0;
		keel_promise_resolve(p, 0, &r->piece);
		return p;
	}
	if (r->body_wait || r->body_discard) {
		keel_promise_reject(p, r->body_wait ? -EBUSY : -ECANCELED);
		return p;
	}
	r->body_wait = p;
	keel_promise_on_cancel(p, body_read_cancel, r);
	if (!r->body_given && r->msg.expect_continue)
		r->want_continue = 1; /* the first read is the handler's interest in the body */
	r->body_given = 1;
	if (c->inq_head || r->want_continue || !c->recv)
		pump_later(c);
	conn_timer_update(c); /* a reader is waiting now: the client's body deadline runs */
	return p;
}

static int on_data(void *ud, keel_buf *buf)
{
	keel_http_conn *c = ud;
	if (c->closing || c->lingering || (c->no_more && !c->cur && !c->inq_head))
		return KEEL_CONTINUE; /* past the last request we will answer: discard */
	if (c->inq_head) {
		inq_push(c, buf, 0); /* behind what is held back already (a stop is under way) */
		return KEEL_CONTINUE;
	}
	if (c->held_ns && keel_loop_now_ns(c->s->loop) - c->resumed_ns > 1000000)
		c->held_ns = 0; /* not the backlog of the pause: that arrives right after the resume */
	c->s->input_ns = c->held_ns; /* (a backlog that waited in the kernel while paused) */
	size_t off = conn_input(c, buf, 0);
	c->s->input_ns = 0;
	if (buf->len < buf->cap && off == buf->len)
		c->held_ns = 0; /* a short read: nothing older is waiting */
	if (off < buf->len && !c->closing) {
		/* A streamed body's reader is busy, or the pipelining limit is reached: hold the rest. */
		inq_push(c, buf, off);
		c->paused = true;
		conn_timer_update(c);
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

static void recv_ended(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	keel_http_conn *c = ud;
	c->recv = NULL;
	if (c->closing || c->lingering) {
		conn_close(c); /* a lingering connection ends at the client's EOF */
		return;
	}
	if (o.err == -ECANCELED && c->paused) {
		if (conn_may_read(c))
			conn_read(c);
		return;
	}
	/* End of input (or an error): answer what was asked, then close. */
	c->eof = true;
	if (c->inq_head && !o.err)
		return; /* input is held back (a busy reader, the pipelining limit); its end is the EOF */
	if (o.err && o.err != -ECANCELED) {
		conn_close(c); /* a reset: nothing sent now would arrive */
		return;
	}
	input_ended(c);
}

static void conn_read(keel_http_conn *c)
{
	c->paused = false;
	c->resumed_ns = keel_loop_now_ns(c->s->loop);
	/*
	 * While a streamed body is read, ask for one buffer at a time: a
	 * multishot receive would fill pool buffers as fast as the client
	 * sends, ahead of the reader, before a stop could take effect.
	 */
	c->paced = c->cur && c->cur->stream_body;
	c->recv = c->paced ? keel_recv_stream_paced(c->s->loop, c->fd, on_data, c)
	                   : keel_recv_stream(c->s->loop, c->fd, on_data, c);
	keel_promise_done(c->recv, recv_ended, c);
}

/* ---- Access log ---------------------------------------------------------- */

static void log_flush(keel_http_server *s);
static void server_maybe_stopped(keel_http_server *s);

static void log_written(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	keel_http_server *s = ud;
	if (o.err)
		keel_log(KEEL_LOG_WARN, "access log: %s", keel_strerror(o.err));
	s->log_writing = false;
	s->log_len[1 - s->log_cur] = 0;
	if (s->log_len[s->log_cur] >= LOG_FLUSH_AT || (s->stopping && s->log_len[s->log_cur]))
		log_flush(s);
	server_maybe_stopped(s);
}

static void log_flush(keel_http_server *s)
{
	if (s->log_writing || !s->log_len[s->log_cur])
		return;
	int b = s->log_cur;
	s->log_cur = 1 - b;
	s->log_writing = true;
	keel_promise_done(keel_file_write(s->loop, s->cfg.access_log_fd, s->log_buf[b], s->log_len[b], KEEL_FILE_POS),
	                  log_written, s);
}

static void log_tick(keel_loop *loop, keel__timer *t)
{
	keel_http_server *s = (keel_http_server *)((char *)t - offsetof(keel_http_server, log_timer));
	log_flush(s);
	if (!s->stopping || s->nconns)
		keel__timer_start(loop, t, 1000);
}

static size_t log_esc(char *out, keel_str v, size_t max)
{
	size_t o = 0;
	for (size_t i = 0; i < v.len && o + 4 < max; i++) {
		unsigned char ch = (unsigned char)v.ptr[i];
		if (ch == '"' || ch == '\\' || ch < 0x20 || ch >= 0x7f)
			o += (size_t)snprintf(out + o, max - o, "\\x%02x", ch);
		else
			out[o++] = (char)ch;
	}
	return o;
}

/* One combined-format line, appended to the current buffer; dropped (counted) if both are full. */
static void log_request(keel_http_conn *c, keel_http_request *r, int status, uint64_t bytes)
{
	keel_http_server *s = c->s;
	if (!s->log_buf[0]) {
		s->log_buf[0] = malloc(LOG_BUF);
		s->log_buf[1] = malloc(LOG_BUF);
		if (!s->log_buf[0] || !s->log_buf[1])
			return;
		keel__timer_init(&s->log_timer, log_tick);
		keel__timer_start(s->loop, &s->log_timer, 1000);
	}
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME_COARSE, &ts);
	if (ts.tv_sec != s->log_date_sec) {
		keel__log_date(ts.tv_sec, s->log_date, sizeof(s->log_date));
		s->log_date_sec = ts.tv_sec;
	}
	char line[2048];
	size_t n = (size_t)snprintf(line, sizeof(line), "%s - - [%s] \"", c->peer ? c->peer : "-", s->log_date);
	n += log_esc(line + n, r->msg.method, 64);
	line[n++] = ' ';
	n += log_esc(line + n, r->msg.target, 1024);
	n += (size_t)snprintf(line + n, sizeof(line) - n, " HTTP/1.%d\" %d %llu \"", r->msg.version_minor, status,
	                      (unsigned long long)bytes);
	const keel_http_header *ref = keel_http_header_find(&r->msg, "referer");
	const keel_http_header *ua = keel_http_header_find(&r->msg, "user-agent");
	if (ref)
		n += log_esc(line + n, ref->value, 300);
	else
		line[n++] = '-';
	n += (size_t)snprintf(line + n, sizeof(line) - n, "\" \"");
	if (ua)
		n += log_esc(line + n, ua->value, 300);
	else
		line[n++] = '-';
	line[n++] = '"';
	line[n++] = '\n';
	int b = s->log_cur;
	if (s->log_len[b] + n > LOG_BUF) {
		s->stats.log_lines_dropped++; /* the disk is behind: bounded memory wins */
		return;
	}
	memcpy(s->log_buf[b] + s->log_len[b], line, n);
	s->log_len[b] += n;
	if (s->log_len[b] >= LOG_FLUSH_AT)
		log_flush(s);
}

/* ---- Output -------------------------------------------------------------- */

static char *put(char *p, const char *s, size_t n)
{
	memcpy(p, s, n);
	return p + n;
}

static char *put_u64(char *p, uint64_t v)
{
	char tmp[24];
	int n = 0;
	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		*p++ = tmp[--n];
	return p;
}

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
		p = put(p, "HTTP/1.1 200 OK\r\n", 17);
	} else {
		const char *text = keel_http_status_text(st);
		p = put(p, "HTTP/1.1 ", 9);
		p = put_u64(p, (uint64_t)st);
		*p++ = ' ';
		p = put(p, text, strlen(text));
		p = put(p, "\r\n", 2);
	}
	if (s->cfg.server_name) {
		p = put(p, "Server: ", 8);
		p = put(p, s->cfg.server_name, s->server_name_len);
		p = put(p, "\r\n", 2);
	}
	p = put(p, "Date: ", 6);
	p = put(p, s->date, s->date_len);
	p = put(p, "\r\n", 2);
	if (a->content_type) {
		p = put(p, "Content-Type: ", 14);
		p = put(p, a->content_type, strlen(a->content_type));
		p = put(p, "\r\n", 2);
	}
	if (st >= 200 && st != 204 && st != 304) {
		if (a->stream && a->stream_length > 0) {
			p = put(p, "Content-Length: ", 16);
			p = put_u64(p, (uint64_t)a->stream_length);
			p = put(p, "\r\n", 2);
		} else if (a->stream) {
			if (r->msg.version_minor >= 1)
				p = put(p, "Transfer-Encoding: chunked\r\n", 28);
		} else {
			uint64_t len = a->file_fd >= 0 ? a->file_len : a->body.len;
			p = put(p, "Content-Length: ", 16);
			p = put_u64(p, len);
			p = put(p, "\r\n", 2);
		}
	}
	for (unsigned i = 0; i < a->nheaders; i++) {
		p = put(p, a->headers[i].name.ptr, a->headers[i].name.len);
		p = put(p, ": ", 2);
		p = put(p, a->headers[i].value.ptr, a->headers[i].value.len);
		p = put(p, "\r\n", 2);
	}
	if (closing)
		p = put(p, "Connection: close\r\n", 19);
	else if (r->msg.version_minor == 0)
		p = put(p, "Connection: keep-alive\r\n", 24);
	return put(p, "\r\n", 2);
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

static void send_done(keel_ctx *ctx, keel_outcome o, void *ud);

/* The batch's last request: the one whose file or streamed body is being sent. */
static keel_http_request *batch_last(keel_http_conn *c)
{
	keel_http_request *last = c->qhead;
	for (unsigned i = 1; i < c->nsending && last; i++)
		last = last->next;
	return last;
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
			req_zombie(batch_last(c), sp); /* a producer that could not be stopped still holds it */
		conn_close(c); /* cannot signal an error mid-body but by closing */
		return;
	}
	keel_str *piece = o.ptr;
	struct iovec v[3];
	int n = 0;
	if (piece && piece->len && c->tx->stream_sized) {
		if (piece->len > c->tx->stream_left) {
			conn_close(c); /* more than its Content-Length: cannot be sent */
			return;
		}
		c->tx->stream_left -= piece->len;
		c->tx->stream_state = c->tx->stream_left ? 1 : 0; /* all of it: done, no need to ask again */
		v[n].iov_base = (void *)piece->ptr;
		v[n++].iov_len = piece->len;
		c->s->stats.bytes_out += piece->len;
	} else if (c->tx->stream_sized) {
		conn_close(c); /* the body ended short of its Content-Length */
		return;
	} else if (piece && piece->len) {
		c->tx->stream_state = 1;
		if (c->tx->stream_chunked) {
			int hl = snprintf(c->tx->chunk_head, sizeof(c->tx->chunk_head), "%zx\r\n", piece->len);
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
	}
	c->sending = true;
	c->send_p = keel_sendv(c->s->loop, c->fd, v, n);
	keel_promise_done(c->send_p, send_done, c);
	c->timer_kind = T_NONE;
	conn_timer_update(c);
}

/* Start the next slice of the current batch: head/body iovecs first, then a file body. */
static bool send_next_slice(keel_http_conn *c)
{
	keel_http_server *s = c->s;
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
		c->send_p = keel_sendv(s->loop, c->fd, v, n);
	} else if (c->tx->file_left) {
		keel_http_request *last = batch_last(c);
		uint64_t n = c->tx->file_left < 4 * SEND_SLICE ? c->tx->file_left : 4 * SEND_SLICE;
		c->send_p = keel_sendfile(s->loop, c->fd, last->answer->file_fd, c->tx->file_off, n);
		c->tx->file_off += n;
		c->tx->file_left -= n;
		c->tx->file_slice = n;
	} else if (c->tx->stream_state == 1) {
		keel_http_request *last = batch_last(c);
		keel_promise *p = last->answer->stream(last, last->answer->stream_ud);
		if (!p) {
			conn_close(c);
			return true;
		}
		c->tx->stream_state = 2;
		c->sending = true; /* nothing else may be sent on this connection meanwhile */
		c->send_p = p;
		keel_promise_done(p, stream_piece, c);
		conn_timer_update(c);
		return true;
	} else {
		return false;
	}
	c->sending = true;
	keel_promise_done(c->send_p, send_done, c);
	c->timer_kind = T_NONE; /* progress: the send deadline starts again */
	conn_timer_update(c);
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

static void tx_put(keel_http_server *s, struct conn_tx *tx)
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
	for (unsigned i = 0; i < c->nsending; i++) {
		keel_http_request *r = c->qhead;
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
		req_free(c, r);
	}
	c->nsending = 0;
	tx_put(s, c->tx); /* the batch is out: an idle connection holds no send state */
	c->tx = NULL;
	if (!o.err && after_error && !c->closing && !c->eof && (c->recv || c->inq_head)) {
		/*
		 * Lingering close: the client may still be sending what we refused
		 * (a body over the limit, say). Closing with unread input would
		 * reset the connection and could destroy the error response before
		 * the client reads it; so send FIN, drain for a while, then close.
		 */
		c->lingering = true;
		inq_clear(c);
		if (!c->recv)
			conn_read(c); /* it was paused for a streamed body's reader */
		keel_promise_release(keel_shutdown(s->loop, c->fd, SHUT_WR));
		c->timer_kind = T_LINGER;
		c->deadline_ns = keel_loop_now_ns(s->loop) + LINGER_MS * 1000000ull;
		keel__timer_start(s->loop, &c->timer, LINGER_MS);
		return;
	}
	if (o.err || close_after || c->closing) {
		conn_close(c);
		return;
	}
	if (c->inq_head) {
		conn_pump(c); /* requests held back by the pipelining limit */
		if (c->closing)
			return;
	} else if (c->paused && conn_may_read(c)) {
		conn_read(c);
	}
	if (c->eof && c->nreqs == 0) {
		conn_close(c);
		return;
	}
	if (c->draining && c->nreqs == 0 && !c->part_len && !c->cur) {
		conn_close(c);
		return;
	}
	conn_timer_update(c);
	conn_flush(c);
}

static void conn_flush(keel_http_conn *c)
{
	keel_http_server *s = c->s;
	if (send_continue_if_due(c))
		return;
	if (c->sending || c->closing || !c->qhead || !c->qhead->done)
		return;
	if (!c->tx && !(c->tx = tx_get(s))) {
		conn_close(c);
		return;
	}
	date_update(s);
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
		if (r->answer->stream && r->answer->stream_length <= 0 && has_body(r) && r->msg.version_minor == 0)
			r->keep_alive = 0; /* HTTP/1.0: the end of a streamed body of unknown length is the close */
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
			conn_close(c);
			return;
		}
	}
	struct iovec iov[IOV_BATCH];
	int niov = 0;
	char *p = c->tx->out, *seg = p;
	keel_http_request *r = c->qhead;
	for (unsigned i = 0; i < n; i++, r = r->next) {
		if (c->draining && !r->next && !c->cur && !c->part_len)
			r->keep_alive = 0; /* stopping: the last answer says so */
		bool closing = !r->keep_alive;
		p = write_head(c, r, p, closing);
		const keel_http_response *a = r->answer;
		bool framed = a->stream && a->stream_length <= 0 && r->msg.version_minor >= 1;
		if (has_body(r) && a->file_fd < 0 && a->body.len) {
			KEEL__ASSERT(niov + body_iovs(r) + 1 <= IOV_BATCH);
			if (framed) {
				p += snprintf(p, 24, "%zx\r\n", a->body.len); /* a stream's first piece */
			}
			if (a->body.len <= OUT_INLINE_BODY) {
				p = put(p, a->body.ptr, a->body.len);
			} else {
				iov[niov].iov_base = seg;
				iov[niov++].iov_len = (size_t)(p - seg);
				iov[niov].iov_base = (void *)a->body.ptr;
				iov[niov++].iov_len = a->body.len;
				seg = p;
			}
			if (framed)
				p = put(p, "\r\n", 2);
		}
		int st = a->status ? a->status : 200;
		if (s->cfg.access_log_fd >= 0 && !r->is_error_logged) {
			r->is_error_logged = 1;
			uint64_t blen = a->file_fd >= 0 ? a->file_len : a->stream_length > 0 ? (uint64_t)a->stream_length : a->body.len;
			log_request(c, r, st, has_body(r) ? blen : 0);
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
			conn_close(c); /* a first piece longer than the whole: nothing honest to send */
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

/* ---- Timers -------------------------------------------------------------- */

static void conn_timeout(keel_loop *loop, keel__timer *t)
{
	(void)loop;
	keel_http_conn *c = (keel_http_conn *)((char *)t - offsetof(keel_http_conn, timer));
	uint64_t now = keel_loop_now_ns(loop);
	if (!c->deadline_ns)
		return; /* the deadline went away since the timer was armed */
	if (now < c->deadline_ns) {
		/* It moved later since the timer was armed: arm for it now. */
		keel__timer_start(loop, t, (c->deadline_ns - now + 999999) / 1000000);
		return;
	}
	c->timer_kind = T_NONE;
	c->deadline_ns = 0;
	conn_close(c); /* slowloris, stalled body, idle keep-alive, or a reader that stopped reading */
}

/*
 * Idle connections -- waiting for a first request, or kept alive between
 * requests -- sit on the server's list in the order they went idle. When
 * the connection limit is reached, or descriptors run out, the oldest are
 * closed to make room, instead of new clients waiting for their timeouts.
 */
static bool conn_is_idle(const keel_http_conn *c)
{
	return !c->closing && !c->lingering && !c->nreqs && !c->part_len && !c->cur && !c->inq_head && !c->sending;
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
		/*
		 * Accepting paused at the limit: clients wait. One accepted already
		 * (held) takes the oldest idle connection's place now; otherwise
		 * accepting resumes, and the next client makes room as it comes.
		 */
		if (s->accept_paused && !s->stopping && idle_pick(s)) {
			if (s->nheld)
				idle_reclaim(s, 1);
			else if (!s->accept)
				accept_resume(s);
		}
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

static void accept_resume(keel_http_server *s)
{
	s->accept_paused = false;
	accept_start(s);
}

/*
 * The idle connection to close for room: the longest-idle one that has
 * been served (kept alive between requests) or has stayed silent since
 * accept for FRESH_GRACE_MS. A connection accepted a moment ago most likely
 * has its request on the way: closing it would reset that client for
 * nothing. Looks at the oldest few only (bounded work per accept).
 */
#define FRESH_GRACE_MS 200
#define IDLE_PICK_SCAN 64

static keel_http_conn *idle_pick(keel_http_server *s)
{
	uint64_t now = keel_loop_now_ns(s->loop);
	keel_http_conn *c = s->idle_head;
	for (int i = 0; c && i < IDLE_PICK_SCAN; i++, c = c->idle_next) {
		if (!c->served && now - c->idle_ns < FRESH_GRACE_MS * 1000000ull)
			continue;
		/* A request already in the kernel, not yet read: not idle, and closing it would reset it. */
		char b;
		if (recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) > 0)
			continue;
		return c;
	}
	return NULL;
}

/* Close up to n of the longest-idle connections (idle_pick); returns how many. */
static unsigned idle_reclaim(keel_http_server *s, unsigned n)
{
	unsigned done = 0;
	keel_http_conn *c;
	while (done < n && (c = idle_pick(s))) {
		s->stats.idle_closed++;
		conn_close(c); /* (leaves the list) */
		done++;
	}
	return done;
}

static void conn_timer_update(keel_http_conn *c)
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
	c->deadline_ns = keel_loop_now_ns(loop) + ms * 1000000ull;
	if (!keel__timer_armed(&c->timer) || c->timer.deadline_ns > c->deadline_ns)
		keel__timer_start(loop, &c->timer, ms);
}

/* ---- Connections --------------------------------------------------------- */

/* Free lists down to TRIM_KEEP each, then the loop's own (keel_loop_trim). */
static void server_trim(keel_http_server *s)
{
	while (s->nfree_conns > TRIM_KEEP) {
		keel_http_conn *c = s->free_conns;
		s->free_conns = c->next;
		s->nfree_conns--;
		free(c);
	}
	while (s->nfree_reqs > TRIM_KEEP) {
		keel_http_request *r = s->free_reqs;
		s->free_reqs = r->next;
		s->nfree_reqs--;
		free(r);
	}
	while (s->nfree_tx > TRIM_KEEP) {
		struct conn_tx *tx = s->free_tx;
		s->free_tx = tx->next;
		s->nfree_tx--;
		free(tx->out);
		free(tx);
	}
	keel_loop_trim(s->loop);
	s->peak_conns = s->nconns;
}

static void trim_due(keel_loop *loop, keel__timer *t)
{
	(void)loop;
	keel_http_server *s = (keel_http_server *)((char *)t - offsetof(keel_http_server, trim_timer));
	if (!s->stopping && s->nconns * 4 <= s->peak_conns)
		server_trim(s); /* (a new burst since: the next close looks again) */
}

static void server_maybe_stopped(keel_http_server *s)
{
	/*
	 * Stopped only when nothing refers to the server: no connection,
	 * accept, backoff or log write. The last log lines are written first
	 * (log_written comes back here), so that once the promise resolves the
	 * server may be freed.
	 */
	if (!s->stopping || s->nconns || !s->stopped || s->accept || s->backoff || s->log_writing)
		return;
	keel__timer_stop(s->loop, &s->grace);
	keel__timer_stop(s->loop, &s->trim_timer);
	if (s->log_buf[0]) {
		keel__timer_stop(s->loop, &s->log_timer);
		log_flush(s);
		if (s->log_writing)
			return;
	}
	keel_promise *p = s->stopped;
	s->stopped = NULL;
	keel_promise_resolve(p, 0, NULL);
}

static void conn_closed(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	keel_http_conn *c = ud;
	keel_http_server *s = c->s;
	if (c->prev)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	free(c->part);
	free(c->peer);
	if (c->tx)
		tx_put(s, c->tx);
	if (s->nfree_conns < CONN_FREE_MAX) {
		c->next = s->free_conns;
		s->free_conns = c;
		s->nfree_conns++;
	} else {
		free(c);
	}
	s->nconns--;
	s->nclosing--;
	s->stats.conns_open = s->nconns;
	if (s->peak_conns > 2 * TRIM_KEEP && s->nconns * 4 <= s->peak_conns && !s->stopping &&
	    !keel__timer_armed(&s->trim_timer))
		keel__timer_start(s->loop, &s->trim_timer, TRIM_AFTER_MS);
	if (s->nheld && !s->stopping) {
		int fd = s->held[0];
		memmove(s->held, s->held + 1, --s->nheld * sizeof(*s->held));
		conn_open(s, fd);
	}
	if (s->reclaiming && !s->accept && !s->backoff && !s->stopping) {
		s->reclaiming = false; /* a descriptor came back: accept again */
		accept_start(s);
	}
	if (s->accept_paused && !s->accept && !s->stopping && !s->nheld && conns_live(s) < s->cfg.conns_max) {
		s->accept_paused = false; /* (if the paused stream has not ended yet, accept_ended resumes) */
		accept_start(s);
	}
	server_maybe_stopped(s);
}

static void conn_close(keel_http_conn *c)
{
	if (!c->closing) {
		c->closing = true;
		c->s->nclosing++;
		idle_update(c);
		keel__timer_stop(c->s->loop, &c->timer);
		/* Handlers still working are asked to stop; their answers are discarded. */
		for (keel_http_request *r = c->qhead; r; r = r->next) {
			body_wait_reject(r, -ECONNRESET);
			if (r->pending)
				keel_promise_cancel(r->pending);
		}
		inq_clear(c);
		if (c->recv)
			keel_promise_cancel(c->recv);
		if (c->send_p)
			keel_promise_cancel(c->send_p); /* a peer that stopped reading must not hold us */
	}
	/* Free only when nothing refers to the connection any more. */
	for (keel_http_request *r = c->qhead; r; r = r->next)
		if (r->pending)
			return;
	if (c->recv || c->sending || c->pumping || c->fd < 0)
		return;
	while (c->qhead) {
		keel_http_request *r = c->qhead;
		c->qhead = r->next;
		req_free(c, r);
	}
	c->qtail = NULL;
	c->nreqs = 0;
	int fd = c->fd;
	c->fd = -1;
	keel_promise_done(keel_close(c->s->loop, fd), conn_closed, c);
}

/* The client's address, host alone ("127.0.0.1", "::1"), looked up once per connection. */
static const char *conn_peer(keel_http_conn *c)
{
	if (c->peer)
		return c->peer;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	if (!(c->peer = keel__malloc(48)))
		return "-";
	if (getpeername(c->fd, (struct sockaddr *)&ss, &sl) == 0) {
		keel_addr_format((struct sockaddr *)&ss, c->peer, 48);
		char *colon = strrchr(c->peer, ':'); /* the host alone */
		if (colon)
			*colon = '\0';
		if (c->peer[0] == '[') {
			memmove(c->peer, c->peer + 1, strlen(c->peer));
			c->peer[strlen(c->peer) - 1] = '\0';
		}
	} else {
		strcpy(c->peer, "-");
	}
	return c->peer;
}

const char *keel_http_request_peer(keel_http_request *req)
{
	return req->conn ? conn_peer(req->conn) : "-";
}

static void conn_open(keel_http_server *s, int fd)
{
	keel_http_conn *c = s->free_conns;
	if (c) {
		s->free_conns = c->next;
		s->nfree_conns--;
	} else if (!(c = keel__malloc(sizeof(*c)))) {
		close(fd);
		return;
	}
	memset(c, 0, sizeof(*c));
	c->s = s;
	c->fd = fd;
	keel__timer_init(&c->timer, conn_timeout);
	c->next = s->conns;
	if (s->conns)
		s->conns->prev = c;
	s->conns = c;
	s->nconns++;
	if (s->nconns > s->peak_conns)
		s->peak_conns = s->nconns;
	s->stats.connections++;
	s->stats.conns_open = s->nconns;
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (s->cfg.access_log_fd >= 0)
		conn_peer(c);
	conn_read(c);
	conn_timer_update(c);
}

static int on_accept(void *ud, int fd)
{
	keel_http_server *s = ud;
	if (!s->stopping && conns_live(s) >= s->cfg.conns_max)
		idle_reclaim(s, 1); /* the longest-idle connection makes room for this one */
	if (conns_live(s) >= s->cfg.conns_max || s->stopping) {
		if (s->stopping) {
			close(fd);
			return KEEL_STOP;
		}
		/* Accepted by the kernel before our pause took effect: hold it unserved. */
		if (s->nheld == s->held_cap) {
			unsigned cap = s->held_cap ? s->held_cap * 2 : 16;
			int *h = realloc(s->held, cap * sizeof(*h));
			if (!h) {
				close(fd);
				return KEEL_STOP;
			}
			s->held = h;
			s->held_cap = cap;
		}
		s->held[s->nheld++] = fd;
		if (!s->accept_paused)
			s->stats.accept_pauses++;
		s->accept_paused = true;
		limit_recheck(s);
		return KEEL_STOP;
	}
	s->backoff_ms = 0;
	conn_open(s, fd);
	if (conns_live(s) >= s->cfg.conns_max && !idle_pick(s)) {
		s->accept_paused = true; /* the kernel's backlog holds the rest */
		s->stats.accept_pauses++;
		limit_recheck(s);
		return KEEL_STOP;
	}
	return KEEL_CONTINUE;
}

/*
 * At the limit with only connections accepted a moment ago idle: look
 * again once they have been silent FRESH_GRACE_MS (backoff_done), when
 * they may be closed to make room.
 */
static void limit_recheck(keel_http_server *s)
{
	if (!s->nidle || s->backoff || s->stopping)
		return;
	s->backoff = keel_sleep(s->loop, FRESH_GRACE_MS);
	keel_promise_done(s->backoff, backoff_done, s);
}

static void backoff_done(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	keel_http_server *s = ud;
	s->backoff = NULL;
	if (!s->stopping && s->nheld) {
		/* Clients accepted at the limit go first: an idle connection's close lets one in. */
		if (!idle_reclaim(s, 1))
			limit_recheck(s);
	} else if (!s->stopping && !s->accept) {
		s->accept_paused = false;
		accept_start(s);
	}
	server_maybe_stopped(s);
}

static void accept_ended(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	keel_http_server *s = ud;
	s->accept = NULL;
	if (s->stopping) {
		server_maybe_stopped(s);
		return;
	}
	if (s->accept_paused) {
		/* Room may have come back while the stopped stream was still ending. */
		if (!s->nheld && (conns_live(s) < s->cfg.conns_max || idle_pick(s))) {
			s->accept_paused = false;
			accept_start(s);
		}
		return;
	}
	if ((o.err == -EMFILE || o.err == -ENFILE) && s->nidle && idle_reclaim(s, RECLAIM_BATCH)) {
		/*
		 * Out of descriptors with idle connections open: the oldest close,
		 * and accepting resumes as soon as their descriptors come back,
		 * rather than leave new clients waiting for idle ones to time out.
		 */
		s->stats.accept_pauses++;
		s->reclaiming = true;
		return;
	}
	{
		/*
		 * Out of descriptors, memory or op slots -- or any other end we did
		 * not ask for (an error of the listener, a cancel not ours): pause,
		 * 10 ms doubling up to 1 s, and say so once; then accept again. A
		 * listener that keeps failing is retried at most once a second,
		 * never in a spin, and never given up on.
		 */
		uint64_t now = keel_loop_now_ms(s->loop);
		if (!s->backoff_ms && (!s->backoff_logged_ms || now - s->backoff_logged_ms > 10000)) {
			s->backoff_logged_ms = now;
			keel_log(KEEL_LOG_WARN, "accept: %s; pausing (%u connections open)",
			         o.err ? keel_strerror(o.err) : "ended", s->nconns);
		}
		s->backoff_ms = s->backoff_ms ? s->backoff_ms * 2 : 10;
		if (s->backoff_ms > 1000)
			s->backoff_ms = 1000;
		s->stats.accept_pauses++;
		if (!s->backoff) { /* (one pause at a time: a recheck may be pending already) */
			s->backoff = keel_sleep(s->loop, s->backoff_ms);
			keel_promise_done(s->backoff, backoff_done, s);
		}
	}
}

static void accept_start(keel_http_server *s)
{
	s->accept = keel_accept(s->loop, s->lfd, on_accept, s);
	keel_promise_done(s->accept, accept_ended, s);
}

int keel_http_server_start(keel_http_server *s, int lfd)
{
	if (s->lfd >= 0 || lfd < 0)
		return -EINVAL;
	s->lfd = lfd;
	accept_start(s);
	return 0;
}

int keel_http_server_adopt(keel_http_server *s, int fd)
{
	if (fd < 0)
		return -EINVAL;
	if (s->stopping) {
		close(fd);
		return KEEL_ESTOPPED;
	}
	conn_open(s, fd);
	return 0;
}

static void grace_over(keel_loop *loop, keel__timer *t)
{
	(void)loop;
	keel_http_server *s = (keel_http_server *)((char *)t - offsetof(keel_http_server, grace));
	for (keel_http_conn *c = s->conns, *next; c; c = next) {
		next = c->next;
		conn_close(c);
	}
}

keel_promise *keel_http_server_stop(keel_http_server *s, uint64_t grace_ms)
{
	keel_promise *p = keel_promise_new(s->loop);
	if (s->stopping) {
		keel_promise_resolve(p, 0, NULL);
		return p;
	}
	s->stopping = true;
	s->stopped = p;
	if (s->lfd >= 0 && !s->cfg.listener_keep)
		shutdown(s->lfd, SHUT_RD); /* refuse new clients now, and reset those in its backlog */
	if (s->accept)
		keel_promise_cancel(s->accept);
	if (s->backoff)
		keel_promise_cancel(s->backoff);
	for (unsigned i = 0; i < s->nheld; i++)
		close(s->held[i]);
	s->nheld = 0;
	for (keel_http_conn *c = s->conns, *next; c; c = next) {
		next = c->next;
		c->draining = true;
		if (c->nreqs == 0 && !c->part_len && !c->cur)
			conn_close(c); /* idle: nothing to finish */
	}
	s->grace.fn = grace_over;
	keel__timer_start(s->loop, &s->grace, grace_ms);
	if (s->log_buf[0])
		log_flush(s);
	server_maybe_stopped(s);
	return p;
}

void keel_http_server_free(keel_http_server *s)
{
	if (!s)
		return;
	if (s->nconns || s->accept || s->backoff || s->log_writing) {
		/*
		 * Connections, the accept stream or a write still hold the
		 * server: freeing it would leave their completions pointing at
		 * freed memory. A leak is the lesser harm.
		 */
		keel_log(KEEL_LOG_ERROR, "keel_http_server_free: %u connections open%s%s; not freed "
		                         "(free it once keel_http_server_stop has resolved)",
		         s->nconns, s->accept || s->backoff ? ", still accepting" : "",
		         s->log_writing ? ", an access-log write under way" : "");
		return;
	}
	for (unsigned i = 0; i < s->nstatus_src; i++) {
		free(s->status_src[i].label);
		free(s->status_src[i].value);
	}
	keel__timer_stop(s->loop, &s->grace);
	keel__timer_stop(s->loop, &s->trim_timer);
	if (s->log_buf[0]) {
		keel__timer_stop(s->loop, &s->log_timer);
		/* Whatever is still buffered: written synchronously, the loop is going away. */
		for (int i = 0; i < 2; i++) {
			int b = (s->log_cur + 1 + i) % 2;
			if (s->log_len[b] && !(s->log_writing && b != s->log_cur)) {
				ssize_t w = write(s->cfg.access_log_fd, s->log_buf[b], s->log_len[b]);
				(void)w;
			}
		}
		free(s->log_buf[0]);
		free(s->log_buf[1]);
	}
	while (s->free_conns) {
		keel_http_conn *c = s->free_conns;
		s->free_conns = c->next;
		free(c);
	}
	while (s->free_tx) {
		struct conn_tx *tx = s->free_tx;
		s->free_tx = tx->next;
		free(tx->out);
		free(tx);
	}
	while (s->zombies) {
		/* Handlers that never let go of their requests: theirs was the last word. */
		keel_http_request *r = s->zombies;
		s->zombies = r->next;
		if (r->zombie == 2) {
			r->server = NULL; /* its release is already queued: it goes then, alone */
			continue;
		}
		if (r->zombie == 1)
			keel__promise_on_release(r->holder, NULL, NULL);
		r->zombie = 0;
		req_release(s, r);
	}
	while (s->free_reqs) {
		keel_http_request *r = s->free_reqs;
		s->free_reqs = r->next;
		free(r);
	}
	for (unsigned i = 0; i < s->nroutes; i++) {
		free(s->routes[i].method);
		free(s->routes[i].path);
	}
	free(s->routes);
	free(s->held);
	free(s);
}

void keel_http_server_stats(const keel_http_server *s, keel_http_stats *out)
{
	*out = s->stats;
}

/* ---- Status ---------------------------------------------------------------- */

/* /proc/self/statm, opened once per process by whichever worker thread asks first. */
static int statm_fd = -1;
static pthread_once_t statm_once = PTHREAD_ONCE_INIT;

static void statm_open(void)
{
	statm_fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
}

/* Resident set size in bytes, from /proc/self/statm (a procfs read: no disk). */
static uint64_t rss_bytes(void)
{
	pthread_once(&statm_once, statm_open);
	char b[128];
	ssize_t n = statm_fd >= 0 ? pread(statm_fd, b, sizeof(b) - 1, 0) : -1;
	if (n <= 0)
		return 0;
	b[n] = '\0';
	unsigned long long size, resident;
	if (sscanf(b, "%llu %llu", &size, &resident) != 2)
		return 0;
	return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* snprintf at out[*n], clamped: a line that does not fit is dropped, never written past cap. */
__attribute__((format(printf, 4, 5))) static void appendf(char *out, size_t cap, size_t *n, const char *fmt, ...)
{
	if (*n >= cap)
		return;
	va_list ap;
	va_start(ap, fmt);
	int w = vsnprintf(out + *n, cap - *n, fmt, ap);
	va_end(ap);
	if (w > 0 && (size_t)w < cap - *n)
		*n += (size_t)w;
	else
		out[*n] = '\0'; /* (too long: left out) */
}

int keel_http_status_add(keel_http_server *s, const char *label, const char *value, keel_http_metrics_fn fn,
                         void *ud)
{
	if (!fn || (label && (!value || strlen(label) > 200 || strlen(value) > 200 || strpbrk(value, "\"\\\n"))))
		return -EINVAL;
	if (s->nstatus_src >= STATUS_SOURCES_MAX)
		return -ENOSPC;
	struct status_source *src = &s->status_src[s->nstatus_src];
	src->label = label ? strdup(label) : NULL;
	src->value = label ? strdup(value) : NULL;
	if (label && (!src->label || !src->value)) {
		free(src->label);
		free(src->value);
		return -ENOMEM;
	}
	src->fn = fn;
	src->ud = ud;
	s->nstatus_src++;
	return 0;
}

keel_promise *keel_http_status(keel_http_request *req, void *ud)
{
	const char *label = ud;
	keel_http_server *s = req->conn->s;
	keel_loop_stats ls;
	keel_loop_get_stats(req->loop, &ls);
	const keel_http_stats *st = &s->stats;
	bool prom = req->query.len >= 17 && memmem(req->query.ptr, req->query.len, "format=prometheus", 17);
	struct {
		const char *name, *type, *help;
		uint64_t v;
	} m[] = {
		{"connections_open", "gauge", "connections open", st->conns_open},
		{"connections_total", "counter", "connections accepted", st->connections},
		{"requests_total", "counter", "requests received", st->requests},
		{"requests_inflight", "gauge", "requests waiting for their handlers", st->inflight},
		{"requests_shed_total", "counter", "requests answered 503 by admission control", st->shed},
		{"responses_4xx_total", "counter", "4xx responses", st->responses_4xx},
		{"responses_5xx_total", "counter", "5xx responses", st->responses_5xx},
		{"bytes_out_total", "counter", "response bytes sent", st->bytes_out},
		{"accept_pauses_total", "counter", "times accepting paused (limit, EMFILE)", st->accept_pauses},
		{"idle_closed_total", "counter", "idle connections closed to make room", st->idle_closed},
		{"recv_buffers_in_use", "gauge", "receive buffers out of the pool", ls.bufs_in_use},
		{"recv_buffers_total", "gauge", "receive buffers in the pool", ls.bufs_total},
		{"recv_buffer_waits_total", "counter", "receives parked for want of a buffer", ls.enobufs},
		{"ops_inflight", "gauge", "kernel operations in flight", ls.ops_inflight},
		{"log_lines_dropped_total", "counter", "access log lines dropped", st->log_lines_dropped},
		{"request_body_bytes", "gauge", "request body bytes held in copies", s->body_mem},
		{"rss_bytes", "gauge", "resident memory of the process", rss_bytes()},
	};
	size_t llen = label ? strnlen(label, 256) : 0;
	size_t nm = sizeof(m) / sizeof(m[0]), cap = nm * (200 + llen) + llen + 64, n = 0;
	for (unsigned i = 0; i < s->nstatus_src; i++)
		cap += STATUS_SOURCE_METRICS * (400 + llen + 2 * (s->status_src[i].label ? 256 : 0));
	char *out = keel_ctx_alloc(keel_http_request_ctx(req), cap);
	if (!out)
		return keel_http_respond(req, 500, "text/plain", "out of memory\n", 14);
	if (label && !prom)
		appendf(out, cap, &n, "worker %.*s\n", (int)llen, label);
	for (size_t i = 0; i < nm; i++) {
		if (prom)
			appendf(out, cap, &n, "# HELP keel_%s %s\n# TYPE keel_%s %s\nkeel_%s%s%.*s%s %llu\n",
			                      m[i].name, m[i].help, m[i].name, m[i].type, m[i].name,
			                      label ? "{worker=\"" : "", label ? (int)llen : 0, label ? label : "",
			                      label ? "\"}" : "",
			                      (unsigned long long)m[i].v);
		else
			appendf(out, cap, &n, "%s %llu\n", m[i].name, (unsigned long long)m[i].v);
	}
	/*
	 * The sources' metrics, name{worker="0",upstream="api"} value. The
	 * Prometheus format wants each family's HELP/TYPE once and its samples
	 * together: the samples of one name (from every source) follow it.
	 */
	struct sample {
		keel_http_metric m;
		const struct status_source *src;
		bool done;
	} *xs = keel_ctx_alloc(keel_http_request_ctx(req),
	                       (s->nstatus_src ? s->nstatus_src : 1) * STATUS_SOURCE_METRICS * sizeof(*xs));
	unsigned nx = 0;
	for (unsigned i = 0; xs && i < s->nstatus_src; i++) {
		keel_http_metric x[STATUS_SOURCE_METRICS];
		unsigned k = s->status_src[i].fn(s->status_src[i].ud, x, STATUS_SOURCE_METRICS);
		for (unsigned j = 0; j < k && j < STATUS_SOURCE_METRICS; j++)
			xs[nx++] = (struct sample){x[j], &s->status_src[i], false};
	}
	for (unsigned i = 0; i < nx; i++) {
		if (xs[i].done)
			continue;
		if (prom)
			appendf(out, cap, &n, "# HELP keel_%s %s\n# TYPE keel_%s %s\n", xs[i].m.name,
			                      xs[i].m.help, xs[i].m.name, xs[i].m.type);
		for (unsigned j = i; j < nx; j++) {
			if (xs[j].done || strcmp(xs[j].m.name, xs[i].m.name) != 0)
				continue;
			xs[j].done = true;
			const struct status_source *src = xs[j].src;
			char lab[1024] = "";
			size_t ln = 0;
			if (prom && label)
				ln += (size_t)snprintf(lab, sizeof(lab), "worker=\"%.*s\"", (int)llen, label);
			if (src->label)
				snprintf(lab + ln, sizeof(lab) - ln, "%s%s=\"%s\"", ln ? "," : "", src->label, src->value);
			appendf(out, cap, &n, "%s%s%s%s%s %llu\n", prom ? "keel_" : "", xs[j].m.name,
			                      lab[0] ? "{" : "", lab, lab[0] ? "}" : "", (unsigned long long)xs[j].m.value);
		}
	}
	return keel_http_respond(req, 200, prom ? "text/plain; version=0.0.4" : "text/plain", out, n);
}
