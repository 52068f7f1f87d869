/*
 * TLS (OpenSSL 3) as a keel_transport: HTTP/1.1 runs over it unchanged.
 *
 * Ciphertext arrives on the connection's ordinary receive stream (the
 * buffer ring on io_uring), is handed to OpenSSL through a BIO that reads
 * the received buffers in place, and the plaintext goes up in buffers of
 * the transport's own (keel_buf_owner). Records written are collected and
 * sent with one send per batch. OpenSSL never touches the socket and never
 * blocks the loop.
 *
 * Three objects:
 *   keel_tls_ctx       certificates, settings and session-ticket keys; made
 *                      once, shared by every worker (thread-safe).
 *   keel_tls_endpoint  one per loop: its buffers, its handshake budget, its
 *                      counters. What a server's transport_ud points to.
 *   a connection       a keel_transport set up by keel_tls_server_init or
 *                      keel_tls_client_init, closed by keel_transport_close.
 *
 *   keel_tls_ctx *ctx;
 *   keel_tls_ctx_new(&ctx, &cfg, err, sizeof(err));         (once)
 *   keel_tls_endpoint *ep;
 *   keel_tls_endpoint_new(&ep, ctx, loop);                   (per worker)
 *   http_cfg.transport_init = keel_tls_server_init;
 *   http_cfg.transport_ud = ep;
 *
 * Handshakes are the expensive unit: at most handshakes_max run at once per
 * endpoint (a connection over that is refused before the server says a
 * word: keel_tls_server_init returns KEEL_ELIMIT and the caller closes it),
 * and each has handshake_timeout_ms to finish.
 */
#ifndef KEEL_TLS_H
#define KEEL_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loop.h"
#include "transport.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keel_tls_ctx keel_tls_ctx;
typedef struct keel_tls_endpoint keel_tls_endpoint;

/* A certificate (PEM: the leaf, then its chain) and its private key (PEM): paths read by keel_tls_ctx_new. */
typedef struct keel_tls_cert {
	const char *cert_file;
	const char *key_file;
} keel_tls_cert;

#define KEEL_TLS_CERTS_MAX 16

typedef struct keel_tls_config {
	/*
	 * Server: one or more (at most KEEL_TLS_CERTS_MAX). Certificates with
	 * the same names and different key types (ECDSA and RSA) serve one site
	 * together, OpenSSL picking by what the client supports; a client's SNI
	 * name picks the site whose certificate covers it (wildcards too); the
	 * first certificate's site answers a name no certificate covers, and
	 * clients that send none. Client: an optional client certificate
	 * (the first entry).
	 */
	const keel_tls_cert *certs;
	size_t ncerts;
	bool client; /* a context for keel_tls_client_init, not a server */
	/* "TLSv1.2 TLSv1.3" (the default, NULL), "TLSv1.3", "TLSv1.2": nothing older exists here. */
	const char *protocols;
	/* TLS 1.2 cipher list (OpenSSL syntax); NULL: Mozilla's "intermediate" list. */
	const char *ciphers;
	/* TLS 1.3 suites; NULL: the three AEAD suites. */
	const char *ciphersuites;
	/*
	 * Server: require a client certificate verified against this CA file
	 * (mTLS); NULL: none asked for. Client: the CA file to verify servers
	 * with; NULL: the system store (ca-certificates).
	 */
	const char *ca_file;
	/* Client: verify the server (chain and name). Default true; false is for tests. */
	bool verify;
	/*
	 * Client: the name keel_tls_client_transport sends as SNI and verifies
	 * the certificate against, instead of the host the connection was made
	 * to (an upstream reached by IP whose certificate names a host); NULL:
	 * that host.
	 */
	const char *name;
	/* Server: a DER OCSP response stapled for clients that ask (NULL: none). Read once. */
	const char *ocsp_file;
	/* ALPN, comma-separated, in preference order; NULL: "http/1.1". */
	const char *alpn;
	/* Server: concurrent handshakes per endpoint (default 256) and the deadline for each (default 10000). */
	unsigned handshakes_max;
	uint64_t handshake_timeout_ms;
	/* Server: session tickets (TLS 1.2 and 1.3 resumption; default on), keys rotated every ticket_key_s (default 3600). */
	bool tickets;
	uint32_t ticket_key_s;
	/*
	 * Server: once a handshake is done, give the connection's send side to
	 * the kernel (kTLS: it encrypts, file bodies go from the page cache to
	 * the socket) where the kernel has it and the cipher is one it takes
	 * (AES-GCM, ChaCha20-Poly1305); elsewhere records are encrypted in user
	 * space. Default true. A kTLS connection whose peer asks for a TLS 1.3
	 * KeyUpdate is closed (its reply would need the kernel's keys).
	 */
	bool ktls;
} keel_tls_config;

void keel_tls_config_default(keel_tls_config *cfg);

/*
 * Load certificates and keys and build the OpenSSL contexts. On failure
 * returns a negative errno or KEEL_ETLS, and err (errlen bytes, may be
 * NULL) says what and which file; key material is never written there.
 * cfg, its certs array and every string and file it names are copied or
 * read before return: the caller may free or change them at once. On
 * success *out is the caller's: keel_tls_ctx_free, once every endpoint made
 * with it is gone (see keel_tls_endpoint_new).
 */
int keel_tls_ctx_new(keel_tls_ctx **out, const keel_tls_config *cfg, char *err, size_t errlen);
void keel_tls_ctx_free(keel_tls_ctx *ctx);

/*
 * Days until the earliest notAfter of the context's certificates (negative:
 * expired), and its file in *file (borrowed from ctx: valid until
 * keel_tls_ctx_free; NULL with no certificate). For `keel -t`.
 */
int keel_tls_ctx_expiry_days(const keel_tls_ctx *ctx, const char **file);

/*
 * A loop's TLS state, the caller's (keel_tls_endpoint_free). ctx and loop
 * are borrowed until the endpoint is gone. Free it after the loop's last
 * TLS connection is closed (after the HTTP server that uses it is freed):
 * what is still open then keeps the endpoint -- and so ctx -- until the
 * last of it has closed.
 */
int keel_tls_endpoint_new(keel_tls_endpoint **out, keel_tls_ctx *ctx, keel_loop *loop);
void keel_tls_endpoint_free(keel_tls_endpoint *ep);

/*
 * The server side of a new connection on fd, taken on success (closed with
 * the transport): the shape of keel_http_config.transport_init, with ud a
 * keel_tls_endpoint, borrowed until the connection is closed. Returns 0,
 * KEEL_ELIMIT when handshakes_max are already under way, or -ENOMEM; on
 * an error fd stays the caller's to close.
 */
int keel_tls_server_init(keel_transport *t, keel_loop *loop, int fd, void *ud);

/*
 * The client side over a connected fd (taken on success; on an error it
 * stays the caller's): host is the name to send as SNI and to verify the
 * certificate against (an IP address is checked as one), copied before
 * return; a session from an earlier connection to the same host is
 * offered. ep is borrowed until the connection is closed. A failed
 * verification fails the first receive and send with KEEL_ETLSCERT.
 */
int keel_tls_client_init(keel_transport *t, keel_loop *loop, int fd, keel_tls_endpoint *ep, const char *host);
/*
 * keel_tls_client_init in the shape of keel_http_client_config.transport_init,
 * with ud a keel_tls_endpoint of a client context: host is the upstream's,
 * or the context's cfg.name when it has one. An HTTPS client:
 *   ccfg.transport_init = keel_tls_client_transport;
 *   ccfg.transport_ud = ep;
 */
int keel_tls_client_transport(keel_transport *t, keel_loop *loop, int fd, void *ud, const char *host);

/*
 * Whether t is a TLS transport; the ALPN protocol it agreed ("" before the
 * handshake or none), a string of the connection's valid until
 * keel_transport_close.
 */
bool keel_tls_is(const keel_transport *t);
const char *keel_tls_alpn(const keel_transport *t);

typedef struct keel_tls_stats {
	uint64_t handshakes;         /* completed */
	uint64_t resumed;            /* of which resumed sessions */
	uint64_t handshake_failed;   /* a protocol error, an alert, no shared cipher, a bad certificate */
	uint64_t handshake_timeouts; /* handshake_timeout_ms passed */
	uint64_t handshake_refused;  /* over handshakes_max: closed before the first flight */
	uint64_t plain_http;         /* plain HTTP sent to the TLS port (answered 400) */
	uint64_t ktls;               /* connections whose sends the kernel encrypts */
	uint64_t ktls_failed;        /* ... that the kernel refused (encrypted in user space instead) */
	uint32_t handshaking;        /* now */
	uint32_t conns;              /* open now */
} keel_tls_stats;

/* Copy ep's counters into *out. */
void keel_tls_endpoint_stats(const keel_tls_endpoint *ep, keel_tls_stats *out);

#ifdef __cplusplus
}
#endif

#endif
