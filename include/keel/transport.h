/*
 * A connection's byte stream, behind a small table of operations: what a
 * protocol (HTTP/1.1 today) reads and writes through, so that TLS can slide
 * in underneath without the protocol knowing. Plain TCP is the first
 * implementation (keel_tcp_transport_init); TLS is the next.
 *
 * Every operation is asynchronous and returns a promise, exactly as the
 * socket operations of tcp.h and file.h do, with the same ownership: what a
 * call borrows (iovecs' memory, a file descriptor) stays borrowed until its
 * promise settles. Receiving delivers buffers to a keel_recv_fn, as
 * keel_recv_stream does: plaintext, whatever the transport does to it.
 * Every call that returns a keel_promise * returns the consumer's handle
 * (keel/promise.h).
 *
 *   keel_transport t;
 *   keel_tcp_transport_init(&t, loop, fd);
 *   keel_promise *rx = keel_transport_recv(&t, on_data, conn, false);
 *   keel_promise *tx = keel_transport_sendv(&t, iov, n);
 */
#ifndef KEEL_TRANSPORT_H
#define KEEL_TRANSPORT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "loop.h"
#include "promise.h"
#include "tcp.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keel_transport keel_transport;

typedef struct keel_transport_ops {
	/*
	 * Deliver received bytes to fn until it returns KEEL_STOP, the peer's
	 * input ends (resolves) or an error (rejects); paced: one buffer at a
	 * time instead of a multishot stream (keel_recv_stream_paced). fn and
	 * ud are used until the promise settles.
	 */
	keel_promise *(*recv)(keel_transport *t, keel_recv_fn fn, void *ud, bool paced);
	/*
	 * Send all of iov; resolves with the bytes sent. The iovec array is
	 * copied; the bytes it points to are borrowed until the promise settles.
	 */
	keel_promise *(*sendv)(keel_transport *t, const struct iovec *iov, int n);
	/*
	 * Send len bytes of the file in_fd from off; resolves with the bytes
	 * sent (short: the file ended). in_fd is borrowed until the promise
	 * settles (never closed).
	 */
	keel_promise *(*sendfile)(keel_transport *t, int in_fd, uint64_t off, size_t len);
	/* No more output: the peer sees the end of the stream; input goes on. */
	keel_promise *(*shutdown)(keel_transport *t);
	/*
	 * Cancel what is in flight and release the connection: the transport
	 * closes the descriptor and frees impl. The promise settles once the
	 * descriptor is closed; t itself is not used after close returns, so
	 * its memory may go then (a recv's fn and ud stay in use until the
	 * recv's promise settles).
	 */
	keel_promise *(*close)(keel_transport *t);
	/* Whether input is waiting that recv has not delivered yet (looked at, not consumed). */
	bool (*pending)(keel_transport *t);
	/*
	 * What waits in the input that recv has not delivered yet, looked at
	 * and not consumed: 1 bytes, 0 nothing (the connection is quiet), or a
	 * negative errno: the input has ended (-EPIPE: the peer closed its
	 * side) or failed. pending only asks for bytes; a pooled connection
	 * about to be reused (the HTTP client's) also needs to know it is
	 * still open.
	 */
	int (*peek)(keel_transport *t);
	/* The peer's address into *ss (written before return); 0 or -errno. */
	int (*peer)(keel_transport *t, struct sockaddr_storage *ss);
	/* The bytes are protected on the wire (TLS): what a request's scheme is, https or http. */
	bool secure;
} keel_transport_ops;

/*
 * Embedded (by value) in the connection that owns it. fd is the socket
 * underneath, whatever the transport; an implementation keeps state of its
 * own (a TLS session, say) behind impl, which plain TCP leaves NULL. The
 * fields are the transport's; ops points to a static table.
 */
struct keel_transport {
	const keel_transport_ops *ops;
	keel_loop *loop;
	void *impl;
	int fd;
};

/* Plain TCP on fd (taken: closed by keel_transport_close). Sets TCP_NODELAY. */
void keel_tcp_transport_init(keel_transport *t, keel_loop *loop, int fd);

static inline keel_promise *keel_transport_recv(keel_transport *t, keel_recv_fn fn, void *ud, bool paced)
{
	return t->ops->recv(t, fn, ud, paced);
}

static inline keel_promise *keel_transport_sendv(keel_transport *t, const struct iovec *iov, int n)
{
	return t->ops->sendv(t, iov, n);
}

static inline keel_promise *keel_transport_sendfile(keel_transport *t, int in_fd, uint64_t off, size_t len)
{
	return t->ops->sendfile(t, in_fd, off, len);
}

static inline keel_promise *keel_transport_shutdown(keel_transport *t)
{
	return t->ops->shutdown(t);
}

static inline keel_promise *keel_transport_close(keel_transport *t)
{
	return t->ops->close(t);
}

static inline bool keel_transport_pending(keel_transport *t)
{
	return t->ops->pending(t);
}

static inline int keel_transport_peek(keel_transport *t)
{
	return t->ops->peek(t);
}

static inline int keel_transport_peer(keel_transport *t, struct sockaddr_storage *ss)
{
	return t->ops->peer(t, ss);
}

#ifdef __cplusplus
}
#endif

#endif
