/*
 * WebSocket (RFC 6455) in the HTTP server: a route's handler accepts an
 * upgrade, and the connection becomes a keel_ws that receives messages as
 * promises and sends them through a bounded queue.
 *
 *   static void on_open(keel_ws *ws, void *ud) { keel_promise_done(keel_ws_recv(ws), got, ws); }
 *
 *   static keel_promise *ws_route(keel_http_request *req, void *ud)
 *   {
 *       keel_ws_config cfg;
 *       keel_ws_config_default(&cfg);
 *       cfg.on_open = on_open;
 *       return keel_ws_accept(req, &cfg);   // 101, or the status that refuses it
 *   }
 *
 * Framing is keel's own (src/http/ws_codec.c): frames are parsed where they
 * were received, unmasked in place, and a message that came in one frame of
 * one receive buffer is handed to the service without a copy; only a
 * message in pieces is gathered, up to message_max. Outgoing frames are a
 * header and the payload in one allocation, sent as they are; one frame
 * (keel_ws_frame_new) can go to many connections without a copy each.
 *
 * Receiving is paced by the service: input is parsed up to the next whole
 * message, which waits until a receive asks for it; meanwhile at most four
 * receive buffers are held before reading stops (the peer's sends then stall
 * in TCP). Pings are answered and the close handshake is done as the input
 * is parsed. While reading is stopped the server neither pings nor counts
 * the peer's silence against it.
 *
 * A keel_ws belongs to the loop that accepted it: every call here is made
 * on that loop's thread, and a frame is used on one loop only.
 */
#ifndef KEEL_WS_H
#define KEEL_WS_H

#include <stddef.h>
#include <stdint.h>

#include "http.h"
#include "promise.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keel_ws keel_ws;
typedef struct keel_ws_frame keel_ws_frame;

/* A message's kind, as its opcode says. */
enum { KEEL_WS_TEXT = 1, KEEL_WS_BINARY = 2 };

/* Close status codes keel itself sends (RFC 6455 7.4.1). */
enum {
	KEEL_WS_NORMAL = 1000,
	KEEL_WS_GOING_AWAY = 1001,   /* the server stops */
	KEEL_WS_PROTOCOL = 1002,     /* a frame that breaks the protocol */
	KEEL_WS_NO_STATUS = 1005,    /* (received) a close frame without a status */
	KEEL_WS_ABNORMAL = 1006,     /* (never sent) the connection ended without a close frame */
	KEEL_WS_INVALID_DATA = 1007, /* a text message or close reason that is not UTF-8 */
	KEEL_WS_POLICY = 1008,
	KEEL_WS_TOO_BIG = 1009, /* a message over message_max */
	KEEL_WS_INTERNAL = 1011,
	KEEL_WS_TRY_AGAIN = 1013,
};

/* Called once the 101 is sent: ws is the caller's until keel_ws_free. */
typedef void (*keel_ws_open_fn)(keel_ws *ws, void *ud);

typedef struct keel_ws_config {
	keel_ws_open_fn on_open; /* required */
	void *ud;                /* passed to on_open; keel_ws_ud returns it */
	/*
	 * The subprotocol chosen from the request's Sec-WebSocket-Protocol
	 * (the handler picks one the client offered; keel_ws_accept answers
	 * 400 if it was not offered), or NULL. Copied before return.
	 */
	const char *subprotocol;
	size_t message_max;        /* a received message's bytes; past it: close 1009. Default 1 MiB */
	size_t send_queue_max;     /* bytes queued and not yet sent; past it a send fails. Default 1 MiB */
	uint32_t ping_interval_ms; /* a ping after this long without input; 0: none. Default 30000 */
	uint32_t ping_timeout_ms;  /* no input this long after a ping: dropped. Default 10000 */
	uint32_t close_timeout_ms; /* the peer's close awaited once ours is written (> 0). Default 5000 */
	/*
	 * Frames are written in slices of 256 KiB; a slice not written within
	 * this: dropped (0: no limit). The kernel takes a slice when its send
	 * buffer has room (a third of it free), so give a slow reader room for
	 * that. Default 30000.
	 */
	uint32_t send_timeout_ms;
} keel_ws_config;

void keel_ws_config_default(keel_ws_config *cfg);

/*
 * Whether req is a WebSocket opening handshake keel can accept: 0, or the
 * status to refuse it with -- 426 for a request without Upgrade: websocket
 * or of another version than 13, 400 for one that is malformed (not GET,
 * no or a bad Sec-WebSocket-Key, a body), 501 over HTTP/2 (RFC 8441 is not
 * supported). keel_ws_accept checks the same; a handler calls this first
 * only when it wants to answer such requests itself.
 */
int keel_ws_check(const keel_http_request *req);

/*
 * Accept the upgrade: the promise a handler returns. It resolves with the
 * 101 response (in req's storage) when keel_ws_check passes and cfg is
 * valid; once that response is sent, the connection is a WebSocket and
 * cfg->on_open runs with it. Otherwise it resolves with the refusal
 * (keel_ws_check's status, with Sec-WebSocket-Version: 13 on a 426; 400 for
 * a subprotocol the client did not offer; 503 while the server stops) and
 * the connection closes after it. cfg is copied before return. Origin
 * checks are the handler's: read the Origin header and answer 403 instead
 * of calling this.
 */
keel_promise *keel_ws_accept(keel_http_request *req, const keel_ws_config *cfg);

/*
 * A received message: valid until the next keel_ws_recv on its connection,
 * or keel_ws_free -- even once the connection has closed meanwhile (a
 * message in one of the loop's receive buffers keeps that buffer: free
 * every keel_ws before keel_loop_free).
 */
typedef struct keel_ws_msg {
	int type; /* KEEL_WS_TEXT (valid UTF-8) or KEEL_WS_BINARY */
	const char *data;
	size_t len;
} keel_ws_msg;

/*
 * The next message: resolves with ptr = a const keel_ws_msg * (a message
 * in fragments arrives whole). Rejects with KEEL_EWSCLOSED once the
 * connection has ended -- a close from the peer, a protocol error keel
 * answered with its close, a ping or send timeout, a reset -- and
 * keel_ws_close_status says how; -EBUSY while another receive waits.
 * Cancelling it (keel_promise_cancel) stops the wait; the message stays
 * for the next receive. A message is handed over when the promise
 * resolves: a combinator that drops a resolved input (keel_timeout or
 * keel_any losing the race in the same tick) drops the message with it.
 */
keel_promise *keel_ws_recv(keel_ws *ws);

/*
 * Send a message (one frame). data is copied before return. Resolves with
 * n = len once the frame has been written to the connection; rejects with
 * KEEL_ELIMIT at once when send_queue_max would be passed (a message
 * larger than the bound is queued only alone), KEEL_EWSCLOSED once a close
 * has been sent or the connection ended, -EINVAL for a type that is not
 * one above or text that is not UTF-8.
 */
keel_promise *keel_ws_send(keel_ws *ws, int type, const void *data, size_t len);

/*
 * A message framed once to send to many connections (a broadcast): data
 * copied before return; NULL when out of memory or type is invalid. The
 * caller holds one reference: keel_ws_frame_release when done; each send
 * holds its own until written. Also NULL for text that is not UTF-8.
 */
keel_ws_frame *keel_ws_frame_new(int type, const void *data, size_t len);
void keel_ws_frame_release(keel_ws_frame *f);

/* keel_ws_send with a prepared frame: f is held until written. */
keel_promise *keel_ws_send_frame(keel_ws *ws, keel_ws_frame *f);

/* Bytes queued to send and not yet written (what send_queue_max bounds). */
size_t keel_ws_queued(const keel_ws *ws);

/*
 * Start the close handshake: a close frame with code (1000-1003,
 * 1007-1014, 3000-4999) and reason (at most 123 bytes of UTF-8, copied;
 * may be NULL). Resolves once the connection is closed: after the peer's
 * close frame, or close_timeout_ms. Messages queued before it are sent
 * first; later sends fail. -EINVAL for a code or reason that cannot be
 * sent. A second close resolves with the first.
 */
keel_promise *keel_ws_close(keel_ws *ws, unsigned code, const char *reason);

/*
 * How the connection ended, once keel_ws_recv has rejected with
 * KEEL_EWSCLOSED: the status code (the peer's, keel's own for a protocol
 * error or a stop, KEEL_WS_NO_STATUS for a close without one,
 * KEEL_WS_ABNORMAL for no close frame at all) and the reason (not
 * NUL-terminated; valid until keel_ws_free). 0 while open.
 */
unsigned keel_ws_close_status(const keel_ws *ws, const char **reason, size_t *len);

/* The subprotocol agreed on ("" for none), and on_open's ud. */
const char *keel_ws_subprotocol(const keel_ws *ws);
void *keel_ws_ud(const keel_ws *ws);

/* The client's address, host alone ("127.0.0.1", "::1"); valid until keel_ws_free. */
const char *keel_ws_peer(keel_ws *ws);

/*
 * Give up the caller's hold. A connection still open is closed with 1000
 * (the handshake finishes on its own, within close_timeout_ms); a receive
 * still waiting rejects with -ECANCELED; sends already queued still go out.
 * ws is not used after this returns.
 */
void keel_ws_free(keel_ws *ws);

#ifdef __cplusplus
}
#endif

#endif
