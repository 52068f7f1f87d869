/*
 * The HTTP server's rooms and what they share. The server core -- routes
 * (route.c), the request's life handed to handlers (request.c), admission
 * (admission.c), the access log (accesslog.c), the status page (status.c),
 * the server's own lifecycle and its acceptor (server.c) -- knows nothing of
 * HTTP/1.1 framing. A protocol (HTTP/1.1: h1_conn.c and h1_send.c) owns its
 * connections, parses requests into keel_http_request records, and hands
 * them to the core; the core calls it back through keel__http_proto when a
 * handler is done, a request's answer is set, a streamed body is read, or
 * the client's address is wanted.
 */
#ifndef KEEL_HTTP_SERVER_INTERNAL_H
#define KEEL_HTTP_SERVER_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "keel/acceptor.h"
#include "keel/buf.h"
#include "keel/http.h"
#include "keel/promise.h"
#include "keel/timer.h"
#include "keel/transport.h"
#include "keel/util.h"
#include "realip.h"

struct route {
	char *method; /* NULL: any */
	size_t mlen;
	char *path;
	size_t plen;
	bool prefix, stream, no_shed;
	keel_http_handler fn;
	void *ud;
};

#define STATUS_SOURCES_MAX 16
#define STATUS_SOURCE_METRICS 16

/* Latency buckets: 0..3 us one each, then four per power of two, up to 2^41 us. */
#define KEEL__LAT_BUCKETS 160
/* A response's head is written now: its request's latency into the window. */
void keel__lat_record(keel_http_server *s, const keel_http_request *r);

struct status_source {
	char *label, *value;
	keel_http_metrics_fn fn;
	void *ud;
};

/* What a protocol does for the core; one table per protocol, pointed to by each request. */
struct keel__http_proto {
	/* r's handler settled with o (already counted out of inflight): answer it, or discard it. */
	void (*handler_done)(keel_http_request *r, keel_outcome o);
	/* r's answer was just set (r->answer, r->done): account for it. */
	void (*answered)(keel_http_request *r);
	/* A read of r's streamed body (r->conn set, r->stream_body): settle p with the next piece. */
	void (*body_read)(keel_http_request *r, keel_promise *p);
	/* The client's address, host alone ("127.0.0.1", "::1"); r->conn set. */
	const char *(*peer)(keel_http_request *r);
	/* Whether r came over a protected transport (TLS); r->conn set. */
	bool (*secure)(keel_http_request *r);
	/* What the access log says the request came as ("HTTP/1.1"); NULL: HTTP/1.x from msg.version_minor. */
	const char *version;
};

/*
 * Records kept for reuse per server; past these a burst's records are
 * freed as they come back, so memory returns towards its baseline when the
 * burst is over.
 */
/* An idle connection accepted less than this long ago is not closed for room (its request is likely on the way). */
#define FRESH_GRACE_MS 200
#define CONN_FREE_MAX 256
#define REQ_FREE_MAX 256
/*
 * After a burst -- connections down to a quarter of their peak for
 * TRIM_AFTER_MS -- the free lists are cut to TRIM_KEEP and the loop gives
 * back what it keeps for reuse (keel_loop_trim): RSS returns towards its
 * baseline instead of staying at the burst's peak.
 */
#define TRIM_AFTER_MS 1000
#define TRIM_KEEP 16

struct keel_http_server {
	keel_loop *loop;
	keel_http_config cfg;
	struct status_source status_src[STATUS_SOURCES_MAX];
	unsigned nstatus_src;
	struct route *routes;
	unsigned nroutes;
	keel_acceptor acc;
	unsigned listen_flags[KEEL_ACCEPTOR_LISTENERS_MAX]; /* KEEL_HTTP_LISTEN_*, per acceptor listener */
	struct keel__preamble *preambles; /* connections whose PROXY header is being read (preamble.c) */
	unsigned npreambles;              /* counted as connections */
	struct keel__cidr trusted[KEEL__CIDRS_MAX]; /* cfg.real_ip_from */
	unsigned ntrusted;
	bool stopping;
	keel_http_conn *conns;
	unsigned nconns;
	unsigned nclosing; /* of nconns, being closed (their descriptors not yet released) */
	keel_http_conn *idle_head, *idle_tail; /* idle connections, oldest first */
	unsigned nidle;
	struct keel__h2_conn *h2_conns; /* HTTP/2 connections (h2_conn.c), counted in nconns */
	struct keel_ws *ws_conns;       /* WebSocket connections (ws.c), counted in nconns */
	struct keel__tunnel
	    *tunnels;    /* connections switched to a byte tunnel (tunnel.c), counted in nconns */
	void *h2_shared; /* what they share: nghttp2's callbacks and options */
	keel_http_conn *free_conns;
	unsigned nfree_conns;
	struct conn_tx *free_tx;
	unsigned nfree_tx;
	keel_http_request *free_reqs;
	unsigned nfree_reqs;
	keel_http_request *zombies; /* requests whose handlers' producers still hold them */
	unsigned peak_conns;        /* the most connections open since the last trim */
	keel_timer trim_timer;
	size_t req_size;
	keel_promise *stopped;
	keel_promise **stopped_more; /* later stops' promises, resolved with the first */
	unsigned nstopped_more;
	keel_timer grace;
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
	/* keel_http_server_latency's window: responses by latency bucket (keel__lat_record). */
	uint64_t lat[KEEL__LAT_BUCKETS];
	uint64_t lat_n, lat_max_us;
	/* Access log: two buffers; one fills while the other is being written. */
	char *log_buf[2];
	size_t log_len[2];
	int log_cur;
	bool log_writing;
	keel_timer log_timer;
	char log_date[40];
	time_t log_date_sec;
};

/*
 * A protocol the connection switches to after a 101 (keel_ws_accept makes
 * one for WebSocket), carried by the request (keel_http_request.upgrade).
 * Once the 101 is out, HTTP/1.1 calls adopt: the transport moves (the
 * connection stays counted in nconns, now the new protocol's to release
 * with keel__server_conn_gone), with the input that came after the request
 * (receive buffers linked through next, held: the first from off on) and
 * the client's address as the connection had it (peer: a PROXY header's, or
 * NULL; adopt takes it). A request that ends any other way calls drop.
 * Either frees u.
 */
struct keel__upgrade {
	void (*adopt)(struct keel__upgrade *u, keel_http_server *s, keel_transport *tp, keel_buf *held,
	              uint32_t off, char *peer);
	void (*drop)(struct keel__upgrade *u);
};

/* ws.c: the server's stop (close 1001 to each) and its grace's end (each cut). */
void keel__ws_drain_all(keel_http_server *s);
void keel__ws_close_all(keel_http_server *s);

/* server.c */
void keel__server_date_update(keel_http_server *s);
void keel__server_conn_opened(keel_http_server *s);
void keel__server_conn_gone(keel_http_server *s);
void keel__server_maybe_stopped(keel_http_server *s);
/* PROXY protocol: read fd's header, then keel__h1_open it (preamble.c); the stop ends those under way. */
void keel__preamble_start(keel_http_server *s, int fd);
void keel__preamble_stop_all(keel_http_server *s);
/* The request's client address: peer (its connection's), or what trusted proxies say (realip.c). */
const char *keel__real_ip(keel_http_request *r, const char *peer);
/* The address of the request's connection (after a PROXY header), not what forwarded headers say. */
const char *keel__request_conn_peer(keel_http_request *r);
const char *keel__conn_peer(keel_transport *tp, char **cache);
/* sa's host alone into buf ("127.0.0.1", "::1"; "unix:" for a Unix socket's client). Returns buf. */
const char *keel__addr_host(const struct sockaddr *sa, char *buf, size_t size);

/* route.c */
const struct route *keel__route_find(keel_http_server *s, const keel_http_request *req, bool *method_ok);
/* The methods routes allow for path, ", "-separated, into list (cap bytes, cap >= 64); returns the length. */
size_t keel__route_methods(keel_http_server *s, keel_str path, char *list, size_t cap);

/* request.c: records, answers, handlers, whatever the protocol. */
keel_http_request *keel__req_new(keel_http_server *s, void *c, const struct keel__http_proto *proto);
void keel__req_put(keel_http_server *s, keel_http_request *r);
void keel__req_end(keel_http_server *s, keel_http_request *r);
void keel__req_zombie(keel_http_request *r, keel_promise *p);
void keel__req_trim(keel_http_server *s, unsigned keep);
void keel__req_zombies_free(keel_http_server *s);
void keel__body_wait_reject(keel_http_request *r, int err);
int keel__req_body_append(keel_http_server *s, keel_http_request *r, const char *p, size_t n);
/* Trailers: a piece of the section as it came, then its end (fields into r->trailers). 0 or 431/500. */
int keel__req_trailer_raw(keel_http_request *r, const char *p, size_t n);
int keel__req_trailers_end(keel_http_request *r);
/* Whether a response's trailer field may be sent (not framing, routing or connection-specific). */
bool keel__trailer_ok(keel_str name);
void keel__req_answer(keel_http_request *r, keel_outcome o);
void keel__req_error_answer(keel_http_request *r, int status);
int keel__req_target(keel_http_request *r);
extern const keel_http_header keel__retry_after; /* Retry-After: 1, for 503s */
void keel__handler_call(keel_http_request *r, const struct route *rt);
void keel__req_dispatch(keel_http_request *r);

/* admission.c */
bool keel__should_shed(keel_http_server *s, const struct route *rt);

/* accesslog.c */
void keel__log_request(keel_http_server *s, const char *peer, keel_http_request *r, int status,
                       uint64_t bytes);
void keel__log_flush(keel_http_server *s);
bool keel__log_stop(keel_http_server *s); /* false while a write is still under way */
void keel__log_free(keel_http_server *s);

/* h1_conn.c: the HTTP/1.1 protocol's side of the server's lifecycle. */
/* false: refused, fd closed. accepted_ns: when (0: now), for the first head's deadline. */
bool keel__h1_open(keel_http_server *s, int fd, char *peer, uint64_t accepted_ns);
void keel__h1_drain_all(keel_http_server *s);
void keel__h1_close_all(keel_http_server *s);
keel_http_conn *keel__h1_idle_pick(keel_http_server *s);
unsigned keel__h1_idle_reclaim(keel_http_server *s, unsigned n);
void keel__h1_trim(keel_http_server *s, unsigned keep);

/*
 * h2_conn.c: HTTP/2. A connection starts as HTTP/1.1's (h1_conn.c), which
 * hands it over on its first input when that is HTTP/2 (keel__h2_sniff):
 * the transport moves to an HTTP/2 connection, which is fed what the
 * HTTP/1.1 receive still delivers (keel__h2_input) until that receive has
 * ended (keel__h2_rx_handed), then receives on its own.
 */
struct keel__h2_conn;
bool keel__h2_sniff(keel_transport *tp, const keel_buf *buf);
struct keel__h2_conn *keel__h2_adopt(keel_http_server *s, keel_transport *tp, keel_promise *rx, char **peer);
void keel__h2_input(struct keel__h2_conn *h, keel_buf *buf);
void keel__h2_rx_handed(struct keel__h2_conn *h, int err);
void keel__h2_drain_all(keel_http_server *s);
void keel__h2_close_all(keel_http_server *s);
void keel__h2_free_shared(keel_http_server *s);
void keel__h2_trim(keel_http_server *s, unsigned keep);
unsigned keel__h2_idle_reclaim(keel_http_server *s, unsigned n);
bool keel__h2_idle_reclaimable(keel_http_server *s);
bool keel__h2_idle_any(keel_http_server *s);

#endif
