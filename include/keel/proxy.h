/*
 * keel's reverse proxy: a request handler that forwards to a group of
 * upstream servers through keel's HTTP client.
 *
 * Bodies stream both ways with backpressure: the request body is read from
 * the client one receive buffer at a time as the upstream takes it, and the
 * response body is passed on one piece at a time as the client takes it, so
 * memory per proxied request is bounded whatever the body's size.
 *
 * Proxy semantics (RFC 9110 7.6, RFC 9112): hop-by-hop headers are removed
 * both ways (Connection and every header it names, Keep-Alive, TE, Trailer,
 * Transfer-Encoding, Upgrade -- but for an upgrade cfg.upgrade allows --,
 * Proxy-*); X-Forwarded-For (appended to),
 * X-Forwarded-Proto and Via are added; Host is passed on as the server saw
 * it (an absolute-form target's authority replaces it, RFC 9112 3.2.2).
 * The target forwarded is the one the route matched: the normalized path
 * (keel_http_target_parse) and the query as sent. Request headers named
 * with '_' are dropped by default (cfg.underscores). keel's strict parser
 * refuses ambiguous framing on either side, so such a message is never
 * forwarded; an upstream response with a transfer coding other than
 * chunked ("gzip, chunked") is answered 502, as its coding could not be
 * passed on.
 *
 * Errors: 502 when the upstream fails before a response (refused, reset, a
 * response keel's parser refuses), 504 when it does not answer in time, 503
 * when every upstream is down or the upstream queue is full; 400 or 413 when
 * the client's own body breaks (bad chunked framing, over the limit) -- its
 * fault, not the upstream's, whose connection is closed. A response
 * whose body breaks off mid-way closes the client's connection (the only
 * honest signal once the head has gone out).
 *
 * Balancing: round-robin or least-connections over the upstreams that are
 * up. Passive health: an upstream that fails to connect (or resets) is
 * marked down for fail_timeout_ms; a request that failed that way before
 * any of its body was sent (no body, or an idempotent method) is retried
 * once on another upstream. Optional active health checks GET health_path
 * on every upstream each health_interval_ms.
 *
 * Usage:
 *   keel_proxy *px;
 *   int err = keel_proxy_new(&px, loop, &cfg);
 *   if (err < 0) ... keel_strerror(err) ...
 *   keel_http_route(srv, NULL, "/", KEEL_HTTP_PREFIX | KEEL_HTTP_STREAM_BODY,
 *                   keel_proxy_handler, px);
 */
#ifndef KEEL_PROXY_H
#define KEEL_PROXY_H

#include <stdint.h>

#include "http.h"
#include "http_client.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keel_proxy keel_proxy;

enum keel_proxy_balance { KEEL_PROXY_ROUND_ROBIN = 0, KEEL_PROXY_LEAST_CONN = 1 };

/* Request headers whose names hold '_' (Transfer_Encoding): what the proxy does with them. */
enum keel_proxy_underscores {
	KEEL_PROXY_UNDERSCORES_DROP = 0, /* not passed on (default, as nginx) */
	KEEL_PROXY_UNDERSCORES_PASS,     /* passed on as they are */
	KEEL_PROXY_UNDERSCORES_REJECT,   /* the request is answered 400 */
};

typedef struct keel_proxy_config {
	const char *const *upstreams; /* "HOST:PORT" each (a name is resolved off the loop; copied) */
	unsigned nupstreams;
	enum keel_proxy_balance balance;
	uint64_t fail_timeout_ms;                /* an upstream that failed is skipped this long; 10000 */
	uint64_t health_interval_ms;             /* active checks; 0 (default): off */
	const char *health_path;                 /* what they GET (any 2xx/3xx is healthy); "/" */
	const char *via;                         /* the Via pseudonym: "1.1 <via>"; "keel"; NULL: no Via */
	enum keel_proxy_underscores underscores; /* headers named with '_'; default: dropped */
	keel_http_client_config client;          /* pools, queue, timeouts (response_timeout_ms -> 504),
	                                            transport_init (TLS; a refusal -> 502); its
	                                            transport_ud is borrowed as keel/http_client.h says */
	/* (Added after the fields above, so that their offsets stay.) */
	/*
	 * Upgrade tokens passed on (a comma-separated list, matched without
	 * case): "websocket" by default; "" for none. A request asking for one
	 * goes upstream with its Upgrade header and Connection: Upgrade; an
	 * upstream's 101 is passed on and the connection becomes a byte tunnel
	 * between client and upstream (backpressure both ways, half-closes
	 * passed on, both closed when either fails). Any other Upgrade is
	 * dropped, as a hop-by-hop header, and the request proxied as usual.
	 */
	const char *upgrade;
	uint64_t tunnel_idle_timeout_ms; /* a tunnel with no byte either way this long is closed; 300000 */
} keel_proxy_config;

void keel_proxy_config_default(keel_proxy_config *cfg);

/*
 * Make a proxy on loop (one per loop). cfg is required and copied (the
 * upstream names, health_path, via and upgrade too: the caller's strings may go once
 * this returns; cfg->client.transport_ud is borrowed, as keel_http_client_new
 * says). loop is borrowed: it must outlive the proxy. Returns 0 and sets
 * *out to a proxy the caller owns (keel_proxy_free), or a negative errno
 * with *out set to NULL:
 *   -EINVAL  no loop or no cfg, or a bad cfg: no upstreams, an upstream that
 *            is not HOST:PORT, an upgrade list that is not tokens, a health_path not starting with '/', a via
 *            too long for the header, a health_path or via with a space or
 *            control character, balance or underscores out of range,
 *            or a bad cfg->client (keel_http_client_new)
 *   -ENOMEM  out of memory
 * Upstream names are only checked for form here; they are resolved on use.
 */
int keel_proxy_new(keel_proxy **out, keel_loop *loop, const keel_proxy_config *cfg);

/*
 * Requests still being proxied are cut off (their clients' connections
 * close); the memory goes once they have ended. A route still holding px
 * as its ud must not run after this: free the proxy once the server that
 * routes to it has stopped.
 */
void keel_proxy_free(keel_proxy *px);

/*
 * The handler; ud is the keel_proxy (keel_proxy_free says how long it must
 * live). Route it with KEEL_HTTP_STREAM_BODY.
 */
keel_promise *keel_proxy_handler(keel_http_request *req, void *ud);

typedef struct keel_proxy_stats {
	uint64_t requests, responses, errors_502, errors_503, errors_504, retries;
	uint32_t inflight; /* requests being proxied */
	uint32_t ups_down; /* upstreams currently marked down */
	/* (Added after the fields above, so that their offsets stay.) */
	uint64_t tunnels;           /* connections switched to a tunnel (an upstream's 101) */
	uint64_t tunnel_bytes_up;   /* bytes through tunnels, client to upstream */
	uint64_t tunnel_bytes_down; /* and upstream to client */
	uint32_t tunnels_open;
} keel_proxy_stats;
/* Copy the proxy's counters into *out. */
void keel_proxy_get_stats(const keel_proxy *px, keel_proxy_stats *out);

/*
 * The proxy's counters (and its client's connections) for the status page
 * (a keel_http_metrics_fn; px must outlive the server, as its ud):
 *   keel_http_status_add(srv, "upstream", "api", keel_proxy_metrics, px);
 */
unsigned keel_proxy_metrics(void *px, keel_http_metric *out, unsigned max);

#ifdef __cplusplus
}
#endif

#endif
