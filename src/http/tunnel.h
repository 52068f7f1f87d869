/*
 * A byte tunnel between two transports: what the proxy becomes for a
 * connection after an upgrade (WebSocket, or any protocol allowed) is
 * switched by both sides' 101.
 */
#ifndef KEEL_HTTP_TUNNEL_H
#define KEEL_HTTP_TUNNEL_H

#include <stdbool.h>
#include <stdint.h>

#include "keel/buf.h"
#include "keel/http.h"
#include "keel/transport.h"

struct keel__tunnel;

/* Counters a tunnel adds to as bytes pass (its owner's: they must outlive it). */
struct keel__tunnel_stats {
	uint64_t tunnels, bytes_up, bytes_down; /* up: client to upstream */
	uint32_t open;
};

/*
 * One end: its transport (moved into the tunnel), the input that came
 * before the tunnel (held buffers linked through next, the first from off
 * on; taken), and whether its input has already ended.
 */
struct keel__tunnel_end {
	keel_transport tp;
	keel_buf *held;
	uint32_t off;
	bool eof;
};

/* A tunnel's record, made before the switch is answered (so starting it cannot fail); NULL: no memory. */
struct keel__tunnel *keel__tunnel_new(void);
/* A record never started. */
void keel__tunnel_discard(struct keel__tunnel *t);

/*
 * Join a (the client's connection, counted in s's nconns: released with
 * keel__server_conn_gone once closed) and b (the upstream's). Bytes pass
 * both ways with backpressure (a side that does not read stops the other's
 * reading: at most a few receive buffers held per direction); an end's
 * input ending is passed on as a half-close; an error on either closes
 * both; so does idle_ms without a byte either way (0: no limit). done(ud)
 * runs once both are closed.
 */
void keel__tunnel_start(struct keel__tunnel *t, keel_http_server *s, struct keel__tunnel_end *a,
                        struct keel__tunnel_end *b, uint64_t idle_ms, struct keel__tunnel_stats *stats,
                        void (*done)(void *ud), void *ud);

/* The server's grace is over: every tunnel of s is cut. */
void keel__tunnel_close_all(keel_http_server *s);

#endif
