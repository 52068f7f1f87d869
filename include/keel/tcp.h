/*
 * TCP (and any stream socket) operations through the loop.
 *
 * Accept and receive are streams: one submission delivers many items
 * (multishot accept; multishot receive from the buffer pool). The promise a
 * stream returns settles once, when the stream ends: 0 at end of file, or a
 * negative errno, -ECANCELED after a cancel or a callback's KEEL_STOP.
 * A stream never ends for want of buffers: when the pool runs dry it is
 * parked and re-armed as buffers come back, without losing data.
 *
 * A stream's fn and ud are used until its promise settles. Every call that
 * returns a keel_promise * returns the consumer's handle (keel/promise.h).
 */
#ifndef KEEL_TCP_H
#define KEEL_TCP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "buf.h"
#include "promise.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A stream callback returns KEEL_CONTINUE to keep going or KEEL_STOP to end the stream. */
enum { KEEL_CONTINUE = 0, KEEL_STOP = 1 };

enum { KEEL_TCP_REUSEPORT = 1 << 0, KEEL_TCP_NODELAY = 1 << 1, KEEL_TCP_V6ONLY = 1 << 2 };

/*
 * Parse "127.0.0.1:7000", "[::1]:7000", "unix:/run/app.sock" (a Unix
 * socket; "unix:@name" in the abstract namespace); "localhost:7000" is not
 * resolved: numeric addresses only. Returns 0 or -EINVAL. s is read during the call;
 * *ss and *len are written on success (*ss may be zeroed on failure too).
 */
int keel_addr_parse(const char *s, struct sockaddr_storage *ss, socklen_t *len);

/*
 * Resolve "HOST:PORT" without blocking the loop: a numeric address at once,
 * a name by getaddrinfo on keel's resolver threads (two per process, at
 * most 256 lookups waiting: past that KEEL_ELIMIT at once). hostport is
 * copied before return. Resolves with n = the address length and ptr = out,
 * the address in it; an IPv4 address when the name has one. out is caller
 * storage, borrowed until the promise settles: keel may write it (zeroes
 * included) until then, and it holds the address only on success. Rejects
 * -EINVAL (not HOST:PORT), KEEL_ENAME (no such name), -ECANCELED. A loop
 * with a lookup outstanding does not run out of work.
 */
keel_promise *keel_resolve(keel_loop *loop, const char *hostport, struct sockaddr_storage *out);
/*
 * The same, every address of the name: out[0 .. max-1] (max at most
 * KEEL_RESOLVE_MAX, 16), each once, in the order getaddrinfo sorts them
 * (RFC 6724: the ones most likely to work first); resolves with n = how
 * many were written (a numeric address: 1). Each is a whole
 * sockaddr_storage, IPv4 or IPv6 (its family says its length); a Unix
 * socket's address is -EINVAL here (keel_resolve gives its length).
 */
#define KEEL_RESOLVE_MAX 16
keel_promise *keel_resolve_all(keel_loop *loop, const char *hostport, struct sockaddr_storage *out,
                               unsigned max);
/* Whether s is HOST:PORT (a numeric address or a DNS name, and a port 1..65535) or unix:/PATH. */
bool keel_hostport_valid(const char *s);
/*
 * Format an address as "ip:port", "[ip]:port" or "unix:/path" ("unix:" for
 * an unnamed Unix socket, a client's) into buf (size bytes, NUL-terminated).
 * Returns buf.
 */
char *keel_addr_format(const struct sockaddr *sa, char *buf, size_t size);

/*
 * Create a listening socket bound to addr (keel_addr_parse syntax). backlog
 * <= 0: the largest the host allows (net.core.somaxconn). flags:
 * KEEL_TCP_REUSEPORT; KEEL_TCP_NODELAY (the connections accepted from it
 * start with TCP_NODELAY); KEEL_TCP_V6ONLY (an IPv6 socket takes IPv6
 * only; without it [::] takes IPv4 too, whatever net.ipv6.bindv6only
 * says). A Unix socket ignores the flags; a socket file already at its
 * path that nobody listens on is removed first (one somebody listens on:
 * -EADDRINUSE). Returns the fd (non-blocking, close-on-exec; the
 * caller's to close) or a negative errno. addr is read during the call.
 * Synchronous: this is setup, not a per-request path.
 */
int keel_tcp_listen(const char *addr, int backlog, unsigned flags);

/* The port a socket is bound to, or a negative errno. */
int keel_tcp_port(int fd);

/*
 * Multishot accept on lfd (borrowed: never closed by keel). fn(ud, fd) runs
 * for each new connection and owns fd (close-on-exec; non-blocking on the
 * epoll backend and not on io_uring's: set O_NONBLOCK to use it outside
 * keel); it returns KEEL_CONTINUE or KEEL_STOP. The promise settles when the stream ends: with a negative
 * errno (EMFILE/ENFILE included: the caller decides on backoff) or
 * -ECANCELED.
 *
 * Stopping (KEEL_STOP, keel_promise_cancel, keel_close of the socket) takes
 * effect in the kernel asynchronously: items the kernel produced before that
 * are still passed to fn, whatever it returns, until the promise settles.
 * Nothing the kernel accepted or received is dropped.
 */
typedef int (*keel_accept_fn)(void *ud, int fd);
keel_promise *keel_accept(keel_loop *loop, int lfd, keel_accept_fn fn, void *ud);

/*
 * Connect a new non-blocking TCP socket to addr (copied before return).
 * Resolves with n = the connected fd (the consumer owns it); rejects with a
 * negative errno, or -ETIMEDOUT after timeout_ms (0: no timeout), and then
 * keel has closed the socket.
 */
keel_promise *keel_connect(keel_loop *loop, const struct sockaddr *addr, socklen_t addrlen,
                           uint64_t timeout_ms);

/*
 * Multishot receive on fd (borrowed: never closed by keel). fn(ud, buf)
 * runs for each chunk; buf is borrowed for the call (keel_buf_hold to keep
 * it). Settles with 0 at end of file.
 * As with accept, chunks received before a stop took effect still reach fn.
 */
typedef int (*keel_recv_fn)(void *ud, keel_buf *buf);
keel_promise *keel_recv_stream(keel_loop *loop, int fd, keel_recv_fn fn, void *ud);

/*
 * The same stream, but the kernel is asked for one buffer at a time (a
 * plain receive, re-armed after each) instead of multishot: once fn says
 * KEEL_STOP, no further buffer arrives. For consumers that pace their input
 * to a slower reader (a streamed request body), where a multishot receive
 * could fill many pool buffers before the stop takes effect. One submission
 * per buffer.
 */
keel_promise *keel_recv_stream_paced(keel_loop *loop, int fd, keel_recv_fn fn, void *ud);

/* One receive into caller memory (borrowed until the promise settles). n = bytes, 0 at EOF. */
keel_promise *keel_recv(keel_loop *loop, int fd, void *buf, size_t len);
/*
 * The same, but the bytes stay in the socket (MSG_PEEK): once there are
 * some, it resolves with what is there, and the next receive gets them
 * again. For reading a preamble whose end is only known once seen (the
 * PROXY protocol's header) without taking what follows it.
 */
keel_promise *keel_recv_peek(keel_loop *loop, int fd, void *buf, size_t len);

/*
 * Send all of buf / of the iovecs: short sends are continued internally, so
 * n == total on success. The bytes are borrowed until the promise settles;
 * the iovec array itself is copied (at most KEEL_IOV_MAX entries). Sends at or
 * above the loop's zero-copy threshold use IORING_OP_SEND_ZC where active.
 */
#define KEEL_IOV_MAX 64
keel_promise *keel_send(keel_loop *loop, int fd, const void *buf, size_t len);
keel_promise *keel_sendv(keel_loop *loop, int fd, const struct iovec *iov, int iovcnt);

keel_promise *keel_shutdown(keel_loop *loop, int fd, int how);

#ifdef __cplusplus
}
#endif

#endif
