/*
 * HTTP/1.1 connections: what h1_conn.c (input, requests, deadlines, the
 * connection's life) and h1_send.c (responses out, batched) share.
 */
#ifndef KEEL_HTTP_H1_H
#define KEEL_HTTP_H1_H

#include <sys/uio.h>

#include "keel/buf.h"
#include "keel/transport.h"
#include "server_internal.h"

#define OUT_INLINE_BODY 1024 /* bodies up to this size are copied next to their head */
#define IOV_BATCH 32
#define HEAD_RESERVE 512        /* bytes of output reserved per response head */
#define SEND_SLICE (256u << 10) /* bytes per send; the send deadline restarts after each */

enum { T_NONE = 0, T_IDLE, T_HEADER, T_BODY, T_SEND, T_LINGER };

#define LINGER_MS 2000 /* after an error response: how long unread input is drained */

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
	keel_timer timer;
	uint64_t deadline_ns;     /* what the timer is for (0: nothing); the heap entry may be earlier */
	uint64_t accepted_ns;     /* when it was accepted, if before its open (a PROXY header first); 0 */
	keel_transport tp;        /* the byte stream: plain TCP or TLS */
	struct keel__h2_conn *h2; /* handed over to HTTP/2: its receive feeds that connection until it ends */
	struct keel__upgrade *upgrade_due; /* the 101 is out: handed over once the receive has stopped */
	uint32_t inq_off;
	uint32_t part_len, part_cap;
	unsigned nreqs, nsending, served;
	uint8_t timer_kind;
	bool sending : 1, closing : 1, no_more : 1, eof : 1, paused : 1, draining : 1, lingering : 1;
	bool paced : 1;     /* the receive runs one buffer at a time (a streamed body is being read) */
	bool pumping : 1;   /* a deferred pump (pump_later) is due */
	bool idle : 1;      /* on the server's idle list */
	bool closed : 1;    /* the transport's close was issued (conn_closed comes next) */
	bool upgrading : 1; /* the last request asked to switch protocols: input after it is held */
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
	bool stream_sized; /* sent with Content-Length: stream_left bytes still owed */
	uint64_t stream_left;
	char chunk_head[24];
};

#define TX_FREE_MAX 256   /* send states kept for reuse per server */
#define TX_OUT_KEEP 16384 /* larger output buffers are not kept */

/* h1_conn.c */
void keel__h1_conn_close(keel_http_conn *c);
void keel__h1_conn_read(keel_http_conn *c);
void keel__h1_conn_pump(keel_http_conn *c);
bool keel__h1_conn_may_read(const keel_http_conn *c);
void keel__h1_timer_update(keel_http_conn *c);
void keel__h1_inq_clear(keel_http_conn *c);
void keel__h1_req_free(keel_http_conn *c, keel_http_request *r);
bool keel__h1_send_continue_if_due(keel_http_conn *c);
const char *keel__h1_peer(keel_http_conn *c);
void keel__h1_upgrade(keel_http_conn *c, struct keel__upgrade *up);

/* h1_send.c */
void keel__h1_flush(keel_http_conn *c);
void keel__h1_tx_put(keel_http_server *s, struct conn_tx *tx);

#endif
