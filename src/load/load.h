/*
 * keel load, an HTTP/1.1 load generator on keel's own runtime: what the
 * command line (src/cli/load.c) calls. The command line turns its flags into
 * a load_opts and checks them; load_run does everything else, from the
 * first connect to the last line of the results.
 *
 * Closed loop (like wrk): every connection keeps `pipeline` requests in
 * flight and queues the next one as soon as a response completes; latency
 * runs from the moment a request was queued. Open loop (rate > 0, like
 * wrk2): request k is due at start + k/rate whatever happened to the earlier
 * ones, and its latency runs from the time it was due, so a server that
 * stalls is charged for every request it held up (the coordinated omission
 * of closed-loop measurement is corrected).
 *
 * Built into libkeel_load.a on top of libkeel's public headers; not part of
 * libkeel's API.
 */
#ifndef KEEL_LOAD_H
#define KEEL_LOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

/* Requests in flight at most, over all connections: conns x pipeline. */
#define LOAD_SLOTS_MAX (1l << 22)

/* Where a URL sends keel load. */
typedef struct load_url {
	struct sockaddr_storage addr; /* the address to connect to */
	socklen_t addrlen;
	char host[256];   /* the authority as written: the Host header */
	char name[64];    /* the host alone (no port, no brackets): SNI and the name verified */
	bool tls;         /* https */
	const char *path; /* the request target: into the URL, or "/" when it has none */
} load_url;

/*
 * Parse http://HOST[:PORT][/path][?query] (port 80 by default) or the same
 * with https:// (port 443) into u; HOST is a numeric IPv4 address, a
 * bracketed IPv6 address or localhost (127.0.0.1). u->path borrows url.
 * Returns 0, or -EINVAL for a URL keel load cannot use (another scheme, a
 * host name other than localhost, a bad port, a fragment, a control character).
 */
int load_url_parse(load_url *u, const char *url);

/* One run. Every pointer is borrowed until load_run returns. */
typedef struct load_opts {
	const char *url;            /* load_url_parse syntax */
	long conns;                 /* connections, at least threads */
	long duration_s;            /* length of the run */
	long rate;                  /* open loop: requests/s over all threads; 0: closed loop */
	long pipeline;              /* requests in flight per connection, >= 1 */
	long timeout_ms;            /* connect timeout, and how long the oldest request may wait */
	long threads;               /* >= 1, each with a loop and a share of conns and rate */
	const char *method;         /* an HTTP method token */
	const char *const *headers; /* nheaders extra header lines "Name: value", no CR or LF */
	int nheaders;
	const char *body; /* NULL: no body; else body_len bytes, sent with Content-Length */
	size_t body_len;
	const char *json_path; /* NULL, or a file to write the results to as JSON as well */
	bool quiet;            /* no progress line on stderr */
	/* https only (ignored for http): */
	const char *tls_ca; /* verify the server against this CA file (PEM); NULL: the system store */
	bool tls_insecure;  /* no verification at all (curl -k) */
} load_opts;

/*
 * Run the load o describes (conns x pipeline at most LOAD_SLOTS_MAX) for
 * duration_s: progress on stderr each second unless quiet, the results on
 * stdout at the end, and to json_path. SIGINT or SIGTERM ends the run early,
 * with results; the calling thread blocks both while it runs and waits for
 * them, and a second one exits the process with status 130. Process-wide:
 * SIGPIPE is ignored from then on, and the soft RLIMIT_NOFILE is raised to
 * conns + 64 if the hard limit allows; for https, keel_log is set to errors
 * only unless $KEEL_LOG says otherwise (a warning per failed handshake would
 * bury the progress line; the results count them).
 *
 * Returns 0 when the run completed and its results were printed, whatever
 * the server answered; -EINVAL, before anything starts and without a
 * message, for a URL load_url_parse rejects; otherwise a negative errno or
 * keel error when keel load itself could not run (no memory, no loop, no
 * thread, a TLS context that could not be made: an unreadable CA file) or
 * could not write json_path, said on stderr.
 */
int load_run(const load_opts *o);

#endif
