/*
 * keel error codes.
 *
 * Every keel call that can fail returns 0 (or a count) on success and a
 * negative errno on failure; promises reject with the same negative int.
 * Codes that have no errno equivalent live below -4095 so they can never
 * collide with a kernel error.
 */
#ifndef KEEL_ERRORS_H
#define KEEL_ERRORS_H

#ifdef __cplusplus
extern "C" {
#endif

enum {
	KEEL_ELIMIT = -5001,        /* a configured limit was reached */
	KEEL_EBACKEND = -5002,      /* the requested backend cannot run here */
	KEEL_ESTOPPED = -5003,      /* the loop is stopping; no new work accepted */
	KEEL_ECONNTIMEDOUT = -5004, /* connecting timed out (the HTTP client; -ETIMEDOUT is the response) */
	KEEL_ENAME = -5005,         /* a name that does not resolve (no such host, or no address) */
	KEEL_ETLS = -5006,          /* a TLS record failed after the handshake (a bad record, an alert) */
	KEEL_ETLSCERT = -5007,  /* the peer's certificate did not verify (untrusted, expired, wrong name) */
	KEEL_ETLSHS = -5008,    /* the TLS handshake failed before it was done (protocol, alert, no shared
	                          cipher, the peer gone): no application data was sent */
	KEEL_EWSCLOSED = -5009, /* the WebSocket connection has ended, or its close was sent */
};

/*
 * Text for a keel error or a negative errno. Never NULL. Static storage,
 * except for an errno value the C library does not know: then the text is
 * in strerror's buffer, valid until the next strerror call (glibc: per thread).
 */
const char *keel_strerror(int err);

#ifdef __cplusplus
}
#endif

#endif
