/*
 * What the CLI's servers share about TLS: the counters on the status page.
 */
#include <string.h>

#include "cli.h"
#include "keel/tls.h"

unsigned cli_tls_metrics(void *ep, keel_http_metric *out, unsigned max)
{
	keel_tls_stats s;
	keel_tls_endpoint_stats(ep, &s);
	const keel_http_metric m[] = {
	    {"tls_handshakes_total", "counter", "TLS handshakes completed", s.handshakes},
	    {"tls_resumed_total", "counter", "of which resumed sessions", s.resumed},
	    {"tls_handshake_failed_total", "counter", "TLS handshakes failed (protocol, alert, certificate)",
	     s.handshake_failed},
	    {"tls_handshake_timeouts_total", "counter", "TLS handshakes past their deadline",
	     s.handshake_timeouts},
	    {"tls_handshake_refused_total", "counter",
	     "connections closed at once: handshakes at their limit", s.handshake_refused},
	    {"tls_plain_http_total", "counter", "plain HTTP requests on the TLS port (answered 400)",
	     s.plain_http},
	    {"tls_ktls_total", "counter", "connections whose sends the kernel encrypts (kTLS)", s.ktls},
	    {"tls_ktls_failed_total", "counter", "connections kTLS was tried for and refused", s.ktls_failed},
	    {"tls_handshaking", "gauge", "TLS handshakes under way", s.handshaking},
	    {"tls_conns", "gauge", "TLS connections open", s.conns},
	};
	unsigned n = sizeof(m) / sizeof(m[0]);
	if (n > max)
		n = max;
	memcpy(out, m, n * sizeof(m[0]));
	return n;
}
