/*
 * keel's HTTP/1.1 server.
 *
 * A handler receives a request and returns a promise of a response; the
 * server keeps connections alive, answers pipelined requests in order
 * (writing all the responses that are ready in one send), enforces limits
 * and timeouts, and stops gracefully. Request heads are parsed in place in
 * the receive buffers: the spans in a request stay valid until its response
 * has been sent. Every call that returns a keel_promise * returns the
 * consumer's handle (keel/promise.h).
 */
#ifndef KEEL_HTTP_H
#define KEEL_HTTP_H

#include <stdbool.h>
#include <stdint.h>

#include "http_parse.h"
#include "loop.h"
#include "promise.h"
#include "transport.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keel_http_server keel_http_server;
typedef struct keel_http_conn keel_http_conn;
typedef struct keel_http_request keel_http_request;

typedef struct keel_http_config {
	keel_http_limits limits;        /* request line, head and header count (414/431) */
	uint64_t body_max;              /* request body bytes; more: 413 before reading. Default 1 MiB */
	uint64_t body_stream_max;       /* the same for routes that stream their body (KEEL_HTTP_STREAM_BODY),
	                              which never hold more than one receive buffer of it; 0 (default):
	                              no limit on the length */
	unsigned conns_max;             /* per server (one per loop); when full, the longest-idle
	                              connection is closed to make room, and with none idle
	                              accepting pauses. 10000 */
	unsigned pipeline_max;          /* requests in flight per connection; 32 */
	unsigned requests_per_conn_max; /* then Connection: close; 0 = no limit (default 0) */
	/*
	 * Admission. A request is shed -- answered at once with 503 and
	 * Retry-After, its handler not called -- when the loop has already
	 * spent queue_delay_max_us of the current tick before reaching it (the
	 * work ahead of it would make it late: better a fast no than a slow
	 * yes), or when inflight_max requests already wait for their handlers.
	 * Routes flagged KEEL_HTTP_NO_SHED are exempt (status, health checks).
	 */
	uint32_t queue_delay_max_us; /* 0: off. Default 20000 (20 ms) */
	unsigned inflight_max;       /* per server; default 10000 */
	size_t body_mem_max;         /* request body bytes held in copies (bodies that arrive in
	                                pieces), across the server; a body that would take more
	                                gets 503 + Retry-After and the connection closes. 64 MiB */
	size_t conn_out_max;         /* answered, unsent response bytes per connection; past
	                                it receiving pauses (bodies from files and streams are
	                                not counted: they are pulled). Default 1 MiB */
	uint64_t header_timeout_ms;  /* one deadline for the whole head, the first one from accept
	                               (slowloris, silent connections); 10000 */
	uint64_t body_timeout_ms;    /* between body reads; 30000 */
	uint64_t idle_timeout_ms;    /* keep-alive idle, between requests; 60000 */
	uint64_t send_timeout_ms;    /* a response send that makes no progress; 30000 */
	const char *server_name;     /* Server header; "keel"; NULL: none */
	int access_log_fd;           /* combined-format access log, written through the loop in
	                               batches; -1 (default): off. Borrowed: the server never
	                               closes it; keep it open until the stop has resolved */
	bool listener_keep;          /* stop leaves the listening socket listening (another server
	                               takes it over); default false: stop shuts it down at once */
	/*
	 * The client's address from trusted proxies (keel_http_request_peer,
	 * the access log). real_ip_from: the sources trusted to tell it, a
	 * list of addresses and CIDR blocks ("10.0.0.0/8, 2001:db8::/32,
	 * 127.0.0.1"; "unix:" for a Unix socket's clients; at most 64; read by keel_http_server_new: -EINVAL if
	 * bad); NULL (default): none. real_ip_header: KEEL_HTTP_REAL_IP_NONE
	 * (default), _XFF (X-Forwarded-For) or _FORWARDED (RFC 7239's for=):
	 * a request whose connection comes from a trusted source is taken to
	 * come from the last address of that list, read from the right, that
	 * is not itself trusted (all trusted: the leftmost). A listener with
	 * KEEL_HTTP_LISTEN_PROXY_PROTOCOL takes the connection's address from
	 * its PROXY header first, and with real_ip_from set accepts such
	 * connections from those sources only.
	 */
	const char *real_ip_from;
	int real_ip_header;
	/*
	 * How each connection's socket is wrapped (keel/transport.h): called
	 * once per accepted or adopted connection with its descriptor, it sets
	 * up *t (which the connection embeds) and returns 0 (fd is then *t's,
	 * closed by keel_transport_close), or a negative errno to refuse the
	 * connection (the server closes fd; *t needs no close then). NULL
	 * (default): plain TCP, keel_tcp_transport_init. TLS plugs in here.
	 * transport_ud is borrowed until the server's last connection has
	 * closed (keel_http_server_stop has resolved).
	 */
	int (*transport_init)(keel_transport *t, keel_loop *loop, int fd, void *ud);
	void *transport_ud;
	/*
	 * HTTP/2 (RFC 9113) on the same connections: over TLS when ALPN agreed
	 * "h2" (the TLS context must offer it: keel_tls_config.alpn
	 * "h2,http/1.1"), and over plain TCP for clients that start with the
	 * connection preface (prior knowledge, h2c). Default off: every
	 * connection speaks HTTP/1.1, and a preface is answered 505.
	 */
	bool http2;
	unsigned h2_streams_max; /* concurrent streams per HTTP/2 connection; default 100 */
} keel_http_config;

typedef struct keel_http_response {
	int status;
	const char *content_type;        /* NULL: no Content-Type; borrowed until the response is sent */
	keel_str body;                   /* borrowed until the response is sent */
	const keel_http_header *headers; /* extra headers: the array and its strings borrowed until
	                                    the response is sent */
	unsigned nheaders;
	/*
	 * A body from a file instead (sent with sendfile/splice): fd >= 0,
	 * borrowed until the response is sent; with file_close it is taken
	 * instead, and the server closes it once sent, or when the response is
	 * dropped.
	 */
	int file_fd;
	uint64_t file_off, file_len;
	bool file_close; /* close file_fd after sending (taken) */
	/*
	 * A streamed body of unknown length instead: stream(req, stream_ud) is
	 * called for each piece and returns a promise that resolves with ptr =
	 * a keel_str * (the piece, borrowed until the next call) or with ptr =
	 * NULL / an empty piece at the end. Sent chunked to HTTP/1.1 clients and
	 * delimited by closing the connection for HTTP/1.0 ones. The next piece
	 * is asked for only once the previous one is in the kernel: a slow
	 * reader slows the producer (bounded memory). A rejection ends the
	 * response by closing the connection (the only honest signal mid-body).
	 */
	keel_promise *(*stream)(keel_http_request *req, void *ud);
	void *stream_ud;
	/*
	 * With stream: body, if set, is the first piece, sent with the head;
	 * stream_length > 0 is the whole body's length when known: sent with
	 * Content-Length instead of chunked (keep-alive works for HTTP/1.0
	 * too), stream is called only while bytes are owed, and a producer
	 * that gives more or ends short closes the connection.
	 */
	int64_t stream_length;
	/*
	 * Trailer fields, sent after the body: read when the body has ended
	 * (a streamed body's producer may set them before it gives its end),
	 * borrowed until the response is sent. HTTP/2: a trailing HEADERS
	 * frame. HTTP/1.1: the trailer section of a chunked body (a stream of
	 * unknown length to an HTTP/1.1 client); any other body has none, and
	 * they are dropped. Fields that may not be trailers (Content-Length,
	 * Transfer-Encoding, Host, TE, Trailer and the connection-specific
	 * ones) are left out.
	 */
	const keel_http_header *trailers;
	unsigned ntrailers;
} keel_http_response;

struct keel_http_request {
	keel_loop *loop;
	keel_http_msg msg; /* method, target, version, headers */
	keel_str path;     /* the target's path, normalized (keel_http_target_parse): what routes match */
	keel_str query;    /* after '?', without it, as sent */
	keel_str body;     /* the whole request body (Content-Length or de-chunked); empty on
	                      KEEL_HTTP_STREAM_BODY routes: read it with keel_http_body_read */
	/*
	 * Trailer fields that came after the body (a chunked body's trailer
	 * section; an HTTP/2 request's trailing HEADERS), once the body is
	 * whole: at the handler's call, or on a streamed body once
	 * keel_http_body_read has given its end. Up to limits.headers_max
	 * fields and limits.head_max bytes (more: 431, or the reader's
	 * -EMSGSIZE). In the request's context (valid until it is freed);
	 * none: NULL, 0.
	 */
	const keel_http_header *trailers;
	unsigned ntrailers;
	keel_http_response resp; /* storage a handler may fill and return */
	void *user;              /* free for the handler */
	/* internal */
	void *conn; /* the protocol's record for it (an HTTP/1.1 connection, an HTTP/2 stream);
	              NULL once a zombie */
	keel_http_server *server;
	const struct keel__http_proto *proto; /* the protocol that carried it */
	struct keel_http_request *next;
	keel_promise *pending;
	keel_promise *holder; /* a zombie's: the promise whose producer still holds it */
	keel_http_response *answer;
	keel_ctx *ctx;
	void *hold[2];  /* receive buffers the spans point into */
	char *own;      /* heap copy of a head that arrived in pieces */
	char *body_own; /* heap copy of a body that arrived in pieces */
	size_t body_cap;
	keel_promise *body_wait; /* a keel_http_body_read waiting for the next piece */
	void *body_buf;          /* the receive buffer the last piece points into */
	keel_str piece;          /* the last piece handed out */
	keel_http_chunked chunk; /* the body's framing while it is read */
	uint64_t body_need;
	size_t body_len;
	int body_err;
	uint8_t done, keep_alive, head_only, is_error, is_error_logged, want_continue;
	uint8_t stream_body, body_done, body_given, body_discard;
	uint8_t zombie;   /* its client went, its handler's producer still holds it (see keel_http_handler) */
	size_t out_bytes; /* counted in the connection's unsent output */
	char *tr_raw;     /* the trailer section as it came ("name: value\r\n"...), in the context */
	uint32_t tr_len, tr_cap;
	keel_http_header *headers;     /* config limits.headers_max, right after the record (a pointer:
	                              C++ has no flexible array members) */
	struct keel__upgrade *upgrade; /* the protocol a 101 switches to (keel_ws_accept) */
	uint64_t start_ns;             /* loop time its head was parsed (for the latency window) */
	const char *real_peer;         /* keel_http_request_peer's answer, once asked */
};

/*
 * A handler returns a promise that resolves with ptr = a keel_http_response
 * (often &req->resp), or rejects: -ENOENT -> 404, -EACCES/-EPERM -> 403,
 * -ETIMEDOUT -> 504, -EBADMSG -> 400, -EMSGSIZE -> 413, -ENOMEM and
 * KEEL_ELIMIT -> 503 with Retry-After, anything else -> 500 (as is a
 * resolve with ptr NULL; a handler that returns NULL is answered 503). A
 * promise already settled when
 * the handler returns is answered at once. The server takes the returned
 * handle. The response, and everything it points to, is borrowed until it
 * has been sent.
 *
 * Lifetime. req (its spans, resp, user, context) is the handler's until its
 * response has been sent. If the client goes away first, the server cancels
 * the handler's promise (keel_promise_cancel) and discards the answer.
 * Promises derived from keel operations (keel_then, keel_map, keel_all, ...)
 * and those with a keel_promise_on_cancel hook stop there. A promise made
 * with keel_promise_new and no hook cannot be stopped: its producer may go
 * on writing to req, so the server keeps req -- not its connection, which
 * closes at once -- until that producer settles the promise; only then is
 * req reused. The same holds for a streamed body's piece promises. On such
 * a req, keel_http_body_read rejects with -ECONNRESET. (A producer that
 * never settles keeps its req until keel_http_server_free.)
 */
typedef keel_promise *(*keel_http_handler)(keel_http_request *req, void *ud);

void keel_http_config_default(keel_http_config *cfg);

/*
 * Make a server on loop (borrowed: it must outlive the server). cfg may be
 * NULL for the defaults; it is copied (server_name is borrowed: it must
 * outlive the server; transport_ud: see its field). Returns 0 and sets
 * *out to a server the caller owns (keel_http_server_free), or a negative
 * errno with *out set to NULL:
 *   -EINVAL  no loop, or a bad cfg (limits.headers_max, pipeline_max or
 *            conns_max of 0; a server_name with a control character, or
 *            spaces at either end)
 *   -ENOMEM  out of memory
 */
int keel_http_server_new(keel_http_server **out, keel_loop *loop, const keel_http_config *cfg);

/* Route flags. */
enum {
	KEEL_HTTP_PREFIX = 1,      /* match paths that start with path (true works too) */
	KEEL_HTTP_STREAM_BODY = 2, /* call the handler once the head is in; it reads the body in
	                              pieces with keel_http_body_read (uploads, proxies) */
	KEEL_HTTP_NO_SHED = 4,     /* never shed by admission control */
};

/*
 * Route method (NULL: any) and path to handler. Exact routes win over
 * prefixes; longer prefixes win. flags: KEEL_HTTP_PREFIX, KEEL_HTTP_STREAM_BODY.
 * Requests are matched by their normalized path (keel_http_target_parse:
 * "/api/../admin" is "/admin", "//docs" is "/docs", "%7E" is "~"), which is
 * also what req->path holds and what the proxy forwards; path must itself
 * be normalized. method and path are copied; ud is passed to handler as is
 * until the server is freed. Returns 0 or -ENOMEM / -EINVAL.
 */
int keel_http_route(keel_http_server *s, const char *method, const char *path, unsigned flags,
                    keel_http_handler handler, void *ud);

/*
 * The next piece of the request body: resolves with ptr = a keel_str * (the
 * piece, borrowed until the next call or until the response is sent), an
 * empty piece at the end of the body. One read at a time. The server reads
 * from the client only while a read is waiting (backpressure: a slow
 * consumer slows the client, one receive buffer at a time), and sends
 * "100 Continue" on the first read of a request that expects it.
 *
 * Rejects with -EBADMSG for bad chunked framing, -EMSGSIZE past
 * body_stream_max (the connection closes after the response; answering 400
 * or 413 is up to the handler: these errors map to them when the handler's
 * promise rejects with them), -ECONNRESET when the client went away,
 * -EBUSY when a read is already waiting, -ECANCELED when the read was
 * cancelled or the handler has answered without streaming. On a
 * route without KEEL_HTTP_STREAM_BODY the whole body comes as one piece.
 *
 * A handler may answer before it has read the whole body. An answer that
 * is not streamed gives up the rest: the server discards it, and closes the
 * connection after the response (a lingering close) if the rest has not
 * arrived by the time the response is sent. A streamed answer may go on
 * reading the body while it sends (full duplex).
 */
keel_promise *keel_http_body_read(keel_http_request *req);

enum { KEEL_HTTP_REAL_IP_NONE, KEEL_HTTP_REAL_IP_XFF, KEEL_HTTP_REAL_IP_FORWARDED };

/*
 * keel_http_server_listen's flags. KEEL_HTTP_LISTEN_PROXY_PROTOCOL: every
 * connection starts with a PROXY protocol header (version 1 or 2, as
 * HAProxy's send-proxy and send-proxy-v2 write it; at most 1536 bytes,
 * within header_timeout_ms), whose source address becomes the client's; a
 * connection without one, or with a broken one, is closed.
 */
enum { KEEL_HTTP_LISTEN_PROXY_PROTOCOL = 1 << 0 };

/*
 * Accept connections on listening socket lfd (the server does not own it: it
 * never closes it). Call it once per socket: a server takes up to
 * KEEL_ACCEPTOR_LISTENERS_MAX (16; TCP and Unix sockets alike), and
 * conns_max bounds them together. 0, -EINVAL for a negative lfd or a
 * server stopped, -E2BIG past the limit.
 */
int keel_http_server_start(keel_http_server *s, int lfd);
/* keel_http_server_start with flags (KEEL_HTTP_LISTEN_*) for this socket's connections. */
int keel_http_server_listen(keel_http_server *s, int lfd, unsigned flags);

/*
 * Serve one connected stream socket fd, as if it had been accepted (the
 * server takes it: closed on every path). It counts towards conns_max but
 * is never refused for it (the caller already has the connection). 0, or
 * -EINVAL / KEEL_ESTOPPED (fd is closed then too).
 */
int keel_http_server_adopt(keel_http_server *s, int fd);

/*
 * Stop: no new connections -- the listening socket is shut down at once
 * (shutdown(2); closing it stays the caller's), so new clients are refused
 * rather than left in a backlog nobody accepts, unless cfg.listener_keep;
 * idle connections close now, busy ones after their responses, all
 * remaining ones after grace_ms. The promise resolves when every connection
 * is closed. A later stop's promise resolves with the first one's (at once
 * if the server has stopped), and a shorter grace_ms cuts the wait: a
 * second ^C can mean "now".
 */
keel_promise *keel_http_server_stop(keel_http_server *s, uint64_t grace_ms);

/*
 * Free a server that is stopped (keel_http_server_stop's promise has
 * resolved) or was never started. One with connections still open, or
 * still accepting, is not freed -- its operations would complete into freed
 * memory -- and an error is logged: a leak, never a use after free.
 */
void keel_http_server_free(keel_http_server *s);

/*
 * A server the usual way, in one call. keel_http_main starts opts->workers
 * threads (0: one per online CPU), each with its own loop, its own server
 * (opts->cfg, copied; NULL: the defaults) and its own SO_REUSEPORT
 * listener on opts->listen (default "127.0.0.1:8080"; port 0: one is
 * chosen, and logged). On each worker's thread, before it serves,
 * opts->setup(srv, loop, worker, ud) adds its routes (and whatever else the
 * worker needs: clients, contexts). SIGINT and SIGTERM stop it gracefully:
 * every listener closes at once (new clients are refused, not left in the
 * backlog), requests in flight get opts->grace_ms (0: 10 s), then
 * opts->teardown (if set) runs on each worker's thread, operations and
 * timers still in flight there (a cleanup a handler started) get grace_ms
 * more to end, and the servers and loops are freed. The two signals are
 * blocked in every thread while it runs (the caller's mask comes back at
 * the end); SIGPIPE is ignored. Returns 0 after such a stop, or a negative
 * errno: a listener, thread or loop that could not be made, or what a
 * setup returned (logged; the other workers are stopped). opts and what it
 * points to are borrowed until keel_http_main returns; ud is passed to
 * setup and teardown on every worker's thread.
 */
typedef struct keel_http_main_opts {
	const char *listen;
	unsigned workers;
	const keel_http_config *cfg;
	uint64_t grace_ms;
	int (*setup)(keel_http_server *srv, keel_loop *loop, unsigned worker, void *ud);
	void (*teardown)(keel_http_server *srv, keel_loop *loop, unsigned worker, void *ud);
	void *ud;
} keel_http_main_opts;
int keel_http_main(const keel_http_main_opts *opts);

/*
 * Handler helpers: answer req with status, content_type (borrowed: a string
 * that outlives the response, usually a literal; NULL for none) and a body,
 * returning the handler's promise, already resolved with &req->resp.
 *
 * keel_http_respond borrows body: it is sent from where it is, so it must
 * stay unchanged until the response has been sent (a literal, memory in the
 * request's context, or memory the handler frees in a context hook) -- not
 * a stack buffer. keel_http_respond_copy copies body into the request's
 * context first: any memory will do. keel_http_respondf formats the body
 * (printf) into the context; fmt and its arguments are read before return.
 * Both return a promise that rejects with -ENOMEM (answered 503) when the
 * copy finds no memory (-EINVAL, answered 500, for a format vsnprintf
 * refuses). keel/json.h adds keel_http_respond_json (cJSON).
 */
keel_promise *keel_http_respond(keel_http_request *req, int status, const char *content_type,
                                const char *body, size_t len);
keel_promise *keel_http_respond_copy(keel_http_request *req, int status, const char *content_type,
                                     const void *body, size_t len);
keel_promise *keel_http_respondf(keel_http_request *req, int status, const char *content_type,
                                 const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/*
 * The client's address, the host alone ("127.0.0.1", "::1", "unix:" for a
 * Unix socket's client); looked up once per connection. A PROXY protocol
 * header's source address when the listener has one; what trusted proxies
 * say when cfg.real_ip_header is set and the connection comes from
 * cfg.real_ip_from (then in the request's context, valid while it is). The string is the connection's: valid until it closes,
 * which can come before the handler's promise settles (the client went);
 * copy it (keel_ctx_strdup) to keep it. "-" when unknown or gone.
 */
const char *keel_http_request_peer(keel_http_request *req);
/* Whether the request came over TLS (its scheme is https); false once its connection is gone. */
bool keel_http_request_secure(keel_http_request *req);
/*
 * The request's context (arena), created on first use (never NULL). The
 * reference is the request's (do not release it): it goes with the request,
 * after its response has been sent (keel_http_handler says when a request
 * outlives its client). keel_ctx_retain to keep the context longer.
 */
keel_ctx *keel_http_request_ctx(keel_http_request *req);
/* The reason phrase for status (static storage, never NULL). */
const char *keel_http_status_text(int status);

typedef struct keel_http_stats {
	uint64_t connections, requests, responses_4xx, responses_5xx, bytes_out;
	uint64_t shed;              /* requests answered 503 by admission control */
	uint64_t accept_pauses;     /* accepting paused: connection limit or EMFILE/ENFILE */
	uint64_t idle_closed;       /* idle connections closed to make room (limit reached, EMFILE) */
	uint64_t log_lines_dropped; /* access log lines lost because the disk fell behind */
	uint32_t conns_open;
	uint32_t inflight; /* requests waiting for their handlers */
	uint64_t
	    ws_upgrades; /* connections switched to WebSocket (after the fields above: their offsets stay) */
	/* connections closed for their PROXY protocol header: broken, too long, late, or from an untrusted source */
	uint64_t proxy_protocol_errors;
} keel_http_stats;
/* Copy the server's counters into *out. */
void keel_http_server_stats(const keel_http_server *s, keel_http_stats *out);

/*
 * Response latency over a window: from the start of the loop tick that
 * parsed a request's head to the moment its response head is written
 * (the tick's work before it, the handler's time, a request body's
 * arrival; not the client's network beyond that, nor a wait before the
 * head is parsed, such as behind a pipelining limit). In whole
 * microseconds, rounded up. Quantiles are upper bounds of log-spaced
 * buckets (4 per power of two: within 19%).
 */
typedef struct keel_http_latency {
	uint64_t count;  /* responses in the window */
	uint64_t p50_us; /* 0 when count is 0 */
	uint64_t p99_us;
	uint64_t max_us;
} keel_http_latency;
/* The latency since the previous call (or the server's start) into *out; a new window begins. */
void keel_http_server_latency(keel_http_server *s, keel_http_latency *out);

/*
 * A handler with the server's live counters (connections, requests, shed
 * requests, bytes, receive buffers in use, RSS): plain text ("name value"
 * lines, after "worker LABEL" when ud is set), JSON with ?format=json
 * ({"worker": LABEL or null, "metrics": {NAME: N, ...}, "sources":
 * [{"labels": {L: V}, "metrics": {...}}, ...]}: one entry per
 * keel_http_status_add, in order), or the Prometheus text format with
 * ?format=prometheus. ud: a label for this
 * server (e.g. the worker number as a string; borrowed: it must outlive
 * the server) or NULL. Opt-in, e.g.
 *   keel_http_route(s, "GET", "/_keel/status", KEEL_HTTP_NO_SHED, keel_http_status, NULL);
 */
keel_promise *keel_http_status(keel_http_request *req, void *ud);

/* A counter or gauge another component adds to keel_http_status's output. */
typedef struct keel_http_metric {
	const char *name; /* "proxy_requests_total" (prefixed "keel_" for Prometheus) */
	const char *type; /* "counter" or "gauge" */
	const char *help;
	uint64_t value;
} keel_http_metric;
typedef unsigned (*keel_http_metrics_fn)(void *ud, keel_http_metric *out, unsigned max);

/*
 * Add fn's metrics to the status page, each labelled label="value" (e.g.
 * upstream="api"; NULL: no label). fn fills at most max (16) and returns how
 * many; names and help are short literals (a line over ~400 bytes is left
 * out), read when fn returns. label and value are copied; ud must outlive
 * the server: sources cannot be removed. At most 16 sources per server;
 * -ENOSPC past that.
 */
int keel_http_status_add(keel_http_server *s, const char *label, const char *value, keel_http_metrics_fn fn,
                         void *ud);

#ifdef __cplusplus
}
#endif

#endif
