/*
 * keel's HTTP/1.1 client: requests as promises, over per-upstream pools of
 * keep-alive connections on the same loop as everything else.
 *
 * An upstream is "HOST:PORT": numeric ("127.0.0.1:8080", "[::1]:8080") or
 * a name, looked up off the loop on first use (keel_resolve) and again
 * after a connect to it fails.
 * Each has a bounded pool of connections and a bounded queue of requests
 * waiting for one: a request that finds both full is rejected at once with
 * KEEL_ELIMIT instead of growing a queue. One request at a time per
 * connection (no pipelining). Responses are parsed by keel's strict parser
 * (response mode): Content-Length, chunked and close-delimited bodies, 1xx
 * interim responses skipped.
 *
 * Bodies stream both ways if asked: a request body can come from a
 * producer one piece at a time (body_read), and a response can be handed
 * over once its head is in, its body then read piece by piece
 * (stream_response, keel_http_client_body_read) straight from the receive
 * buffers, with backpressure: the connection reads from the server only
 * while the caller asks for more.
 *
 * A request that fails on a reused keep-alive connection before any byte of
 * its response arrived (the server closed the idle connection as we sent)
 * is retried once on a new connection if its method is idempotent and its
 * body is not streamed. Bytes a server sends that no request asked for --
 * while its connection is idle, after a complete response, or before the
 * next request has gone out -- are never taken as an answer: the
 * connection is closed (and the request retried as above). Cancelling a request's promise aborts it: a queued
 * request leaves the queue, one in flight closes its connection.
 *
 * A connection's bytes go through a keel_transport (keel/transport.h) it
 * embeds, as the server's do: plain TCP unless cfg.transport_init wraps
 * the socket in something else (TLS, for an https:// upstream).
 *
 * Every call that returns a keel_promise * returns the consumer's handle
 * (keel/promise.h).
 */
#ifndef KEEL_HTTP_CLIENT_H
#define KEEL_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "http_parse.h"
#include "loop.h"
#include "promise.h"
#include "transport.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keel_http_client keel_http_client;

typedef struct keel_http_client_config {
	unsigned pool_max;            /* connections per upstream (open or opening); default 64 */
	unsigned pending_max;         /* requests waiting for a connection, per upstream; past it
	                                 KEEL_ELIMIT at once. Default 1024 */
	uint64_t connect_timeout_ms;  /* default 5000 */
	uint64_t response_timeout_ms; /* the longest wait for the server: for the response after the
	                                 send, and between its pieces; default 30000 */
	uint64_t idle_timeout_ms;     /* a pooled connection unused this long is closed; 60000 */
	uint64_t resolve_interval_ms; /* an upstream given by name is looked up again this often
	                                 (in the background, at the next request); 0: only on first
	                                 use and after connects to every address failed; 30000 */
	size_t body_max;              /* response body bytes; more: -EMSGSIZE. Default 8 MiB */
	keel_http_limits limits;      /* response head limits (the server defaults) */
	/*
	 * How each connection's socket is wrapped (keel/transport.h), as
	 * keel_http_config.transport_init is for the server: called once per
	 * connection, when its connect has succeeded, with the connected fd
	 * and the upstream's host -- HOST of "HOST:PORT" without the port or
	 * an IPv6 address's brackets ("example.com", "127.0.0.1", "::1"),
	 * borrowed for the call: the name a TLS transport sends (SNI) and
	 * checks the certificate against. It sets up *t (which the connection
	 * embeds; every byte of the connection goes through it) and returns
	 * 0, or a negative errno: then the connect fails with that error, as
	 * a refused connect does -- the request rejects with it, not retried
	 * -- the client closes fd, and *t needs no close. NULL (default):
	 * plain TCP, keel_tcp_transport_init (TCP_NODELAY: a request's last
	 * piece must not wait for an ACK). TLS plugs in here: a hook that
	 * calls keel_tls_client_init (keel/tls.h) with ud as its endpoint.
	 * transport_ud is borrowed until the client's last connection has
	 * closed, which can be after keel_http_client_free returns.
	 */
	int (*transport_init)(keel_transport *t, keel_loop *loop, int fd, void *ud, const char *host);
	void *transport_ud;
} keel_http_client_config;

void keel_http_client_config_default(keel_http_client_config *cfg);

/*
 * Make a client on loop. cfg may be NULL for the defaults; it is copied
 * (transport_ud is borrowed: see its field).
 * Returns 0 and sets *out to a client the caller owns
 * (keel_http_client_free), or a negative errno with *out set to NULL:
 *   -EINVAL  no loop, or a bad cfg (pool_max or limits.headers_max of 0)
 *   -ENOMEM  out of memory
 */
int keel_http_client_new(keel_http_client **out, keel_loop *loop, const keel_http_client_config *cfg);

/*
 * Close every connection; requests still waiting or in flight reject with
 * -ECANCELED. The memory goes once the last connection has closed.
 * Responses already handed out stay the caller's: free them, before or
 * after this, with keel_http_client_response_free.
 */
void keel_http_client_free(keel_http_client *c);

typedef struct keel_http_client_request {
	const char *upstream;            /* "HOST:PORT" */
	const char *method;              /* NULL: GET */
	const char *target;              /* origin-form: "/path?query"; NULL: "/" */
	const char *host;                /* the Host header; NULL: the upstream */
	const keel_http_header *headers; /* extra headers (not Host, Content-Length,
	                                    Transfer-Encoding or Connection; a TE is
	                                    announced with Connection: TE) */
	unsigned nheaders;
	keel_str body; /* sent with Content-Length (always, for POST/PUT/PATCH) */
	/*
	 * A streamed body instead: body_read(body_ud) returns a promise that
	 * resolves with ptr = a keel_str * (the next piece, borrowed until the
	 * next call) or with an empty piece / NULL at the end. body_length is
	 * its length when known (sent with Content-Length; a producer that
	 * gives more or fewer bytes fails the request), or -1 (sent chunked).
	 * The next piece is asked for once the previous one is in the kernel.
	 * A response that completes first stops the body (the connection is
	 * then not reused); a piece keel was still sending is let go before
	 * the promise settles. body_read and body_ud are used until then.
	 * With stream_response the body goes on after the promise settles:
	 * body_read, body_ud and the producer's memory are used until the
	 * response is freed and its connection closed, a moment the caller
	 * does not see: use memory that lives as long as its source (a server
	 * request's body).
	 */
	keel_promise *(*body_read)(void *body_ud);
	void *body_ud;
	int64_t body_length;
	/*
	 * Resolve once the response head is in: body holds the part of the
	 * body that came with the head (zero-copy, maybe all of it), and
	 * keel_http_client_body_read gives the rest. The connection stays the
	 * response's until keel_http_client_response_free: freeing it before
	 * the body's end closes the connection. A whole request body (body,
	 * not body_read) still going out when the head arrives is stopped
	 * there, as for a whole response: an upstream that reads the request
	 * while it answers (full duplex) needs body_read.
	 */
	bool stream_response;
	/*
	 * Ask to switch protocols (RFC 9110 7.8): headers carry the Upgrade
	 * header (required; and no body), and keel adds Connection: Upgrade. A
	 * 101 answer resolves with a response whose connection the caller
	 * takes (keel_http_client_response_upgraded); any other answer is an
	 * ordinary response. Without it a 101 fails the request (-EBADMSG).
	 */
	bool upgrade;
} keel_http_client_request;

/*
 * A response: msg (its spans and headers), body and trailers point into
 * memory the response owns, valid until keel_http_client_response_free.
 */
typedef struct keel_http_client_response {
	int status;
	keel_http_msg msg; /* version, headers (keel_http_header_find), reason */
	keel_str body;     /* de-chunked; with stream_response, the first piece */
	/*
	 * A chunked body's trailer fields, once the body is whole (with
	 * stream_response: once keel_http_client_body_read has given its end),
	 * bounded by limits.head_max bytes (more: -EMSGSIZE). Part of the
	 * response; none: NULL, 0.
	 */
	const keel_http_header *trailers;
	unsigned ntrailers;
	/* internal */
	char *mem_;  /* the bytes msg and body point into */
	void *conn_; /* a streamed response's connection */
	keel_loop *loop_;
	bool given_;
	void *upgrade_; /* after a 101: the connection, until taken */
} keel_http_client_response;

/*
 * Send req. The struct *req and upstream are copied before return. method,
 * target, host, the headers array and its strings, and body are borrowed
 * until the promise settles; after that keel no longer reads them (the
 * head is formatted when the request goes out, which may be after this
 * returns; a whole body still being sent when the request ends -- answered
 * early, failed, cancelled -- is cancelled, and the promise settles once
 * that send has let go). A streamed body follows body_read's rule above.
 * Resolves with ptr = a keel_http_client_response, the caller's: free it
 * with keel_http_client_response_free. Rejects with KEEL_ELIMIT (pool and
 * queue full), -EINVAL (bad upstream), -ECONNREFUSED and other connect
 * errors, KEEL_ENAME (a name that does not resolve), KEEL_ECONNTIMEDOUT
 * (connect timeout), what cfg.transport_init returned (its refusal),
 * -ETIMEDOUT (response timeout), -EBADMSG (a response keel's parser
 * rejects), -EMSGSIZE (body over body_max), -ECONNRESET (the connection
 * ended before the response did), -ECANCELED.
 */
keel_promise *keel_http_client_request_send(keel_http_client *c, const keel_http_client_request *req);

/*
 * The next piece of a streamed response's body (after resp->body): resolves
 * with ptr = a keel_str * borrowed until the next call or the free, an
 * empty piece at the end. Rejects with -ECONNRESET (the body broke off),
 * -EBADMSG (bad chunked framing), -ETIMEDOUT, -EBUSY (a read is already
 * waiting). On a response that is not streamed, the whole body comes as one
 * piece, then the end.
 */
keel_promise *keel_http_client_body_read(keel_http_client_response *resp);

/*
 * Free a response (a streamed one gives its connection back, or closes it
 * mid-body). A streamed response holds receive buffers: free it before
 * keel_loop_free.
 */
void keel_http_client_response_free(keel_http_client_response *r);

/*
 * After a 101 to an upgrade request: the connection's byte stream moves to
 * *tp, the caller's from now on (keel_transport_close it), with what the
 * server sent after the 101: *held, receive buffers linked through next
 * (the first from *off on; NULL when none), each held -- release every one
 * before closing tp -- and *eof, true when the server's input had already
 * ended. The response's head (msg) stays valid until it is freed. Returns
 * 0, or -EINVAL for a response with no connection to give (not a 101, or
 * given already). A 101 response freed without this closes the connection.
 */
int keel_http_client_response_upgraded(keel_http_client_response *r, keel_transport *tp, keel_buf **held,
                                       uint32_t *off, bool *eof);

typedef struct keel_http_client_stats {
	uint64_t requests, responses, retries, rejected_full, connects;
	/* connections closed for bytes no request asked for (never taken as an answer) */
	uint64_t unsolicited;
	uint32_t conns_open, conns_idle, pending;
} keel_http_client_stats;
/* Copy the client's counters into *out. */
void keel_http_client_get_stats(const keel_http_client *c, keel_http_client_stats *out);

#ifdef __cplusplus
}
#endif

#endif
