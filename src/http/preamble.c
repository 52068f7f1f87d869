/*
 * A connection's PROXY protocol header, before anything else is read from
 * it (a listener started with KEEL_HTTP_LISTEN_PROXY_PROTOCOL). The header
 * ends where its parse says, so it is read by peeking: what the socket
 * holds is looked at in place, the header's bytes alone are taken, and the
 * request (or TLS's ClientHello) after it stays in the socket for the
 * connection. Bytes of a header not yet whole are all the header's, so
 * they are taken as they come and the peek waits for more: no spin.
 *
 * One record per connection while its header comes, counted as a
 * connection (conns_max); past header_timeout_ms, at a broken header, or
 * at the stop, the connection is closed.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/alloc.h"
#include "keel/errors.h"
#include "keel/log.h"
#include "keel/tcp.h"
#include "net/proxy_proto.h"
#include "realip.h"
#include "server_internal.h"

struct keel__preamble {
	keel_http_server *s;
	int fd;
	size_t have; /* the header's bytes taken so far, in buf */
	bool timed_out;
	uint64_t accepted_ns;
	keel_promise *peek;
	keel_timer timer;
	struct keel__preamble *prev, *next;
	uint8_t buf[KEEL__PP_MAX];
};

static void peek_next(struct keel__preamble *p);

/*
 * The record goes. With ok, the connection goes on with peer as its
 * client's address (NULL: its own; the count moves to it); else it is
 * closed, and its place in conns_max is free again.
 */
static void preamble_end(struct keel__preamble *p, bool ok, char *peer)
{
	keel_http_server *s = p->s;
	int fd = p->fd;
	uint64_t accepted_ns = p->accepted_ns;
	keel_timer_disarm(s->loop, &p->timer);
	if (p->prev)
		p->prev->next = p->next;
	else
		s->preambles = p->next;
	if (p->next)
		p->next->prev = p->prev;
	s->npreambles--;
	free(p);
	if (ok && !s->stopping) {
		if (!keel__h1_open(s, fd, peer, accepted_ns)) /* (refused after all: its place is free) */
			keel_acceptor_conn_gone(&s->acc);
		return;
	}
	free(peer);
	close(fd);
	keel_acceptor_conn_gone(&s->acc);
	keel__server_maybe_stopped(s);
}

static void preamble_fail(struct keel__preamble *p, const char *why)
{
	keel_log(KEEL_LOG_DEBUG, "PROXY protocol: %s: connection closed", why);
	p->s->stats.proxy_protocol_errors++;
	preamble_end(p, false, NULL);
}

static void peeked(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct keel__preamble *p = ud;
	p->peek = NULL;
	if (p->timed_out) {
		preamble_fail(p, "no header within header_timeout_ms");
		return;
	}
	if (o.err == -ECANCELED || p->s->stopping) { /* (the stop) */
		preamble_end(p, false, NULL);
		return;
	}
	if (o.err || o.n == 0) {
		preamble_fail(p, o.err ? keel_strerror(o.err) : "the client closed before its header");
		return;
	}
	size_t len = p->have + (size_t)o.n, need = 0;
	struct sockaddr_storage src;
	int n = keel__pp_parse(p->buf, len, &src, &need);
	if (n < 0) {
		preamble_fail(p, n == -E2BIG ? "a header longer than 1536 bytes"
		                             : "not a PROXY protocol header");
		return;
	}
	/* Take the header's bytes (all of them once whole; else all there are, every one the header's). */
	size_t take = (n > 0 ? (size_t)n : len) - p->have;
	ssize_t got = recv(p->fd, p->buf + p->have, take, MSG_DONTWAIT);
	if (got != (ssize_t)take) {
		preamble_fail(p, "the header's bytes could not be taken");
		return;
	}
	p->have += take;
	if (n == 0) {
		peek_next(p);
		return;
	}
	char *peer = NULL;
	if (src.ss_family != AF_UNSPEC) {
		char a[64];
		if (!(peer = strdup(keel__addr_host((struct sockaddr *)&src, a, sizeof(a))))) {
			preamble_fail(p, keel_strerror(-ENOMEM));
			return;
		}
	}
	preamble_end(p, true, peer);
}

static void peek_next(struct keel__preamble *p)
{
	p->peek = keel_recv_peek(p->s->loop, p->fd, p->buf + p->have, sizeof(p->buf) - p->have);
	keel_promise_done(p->peek, peeked, p);
}

static void preamble_timeout(keel_loop *loop, keel_timer *t)
{
	(void)loop;
	struct keel__preamble *p = keel_container_of(t, struct keel__preamble, timer);
	p->timed_out = true;
	if (p->peek)
		keel_promise_cancel(p->peek); /* (peeked ends it) */
}

/* Whether the connection on fd comes from a source the server trusts (none set: every one). */
static bool from_trusted(keel_http_server *s, int fd)
{
	if (!s->ntrusted)
		return true;
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char a[64];
	if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0)
		return false;
	const char *h = keel__addr_host((struct sockaddr *)&ss, a, sizeof(a));
	return keel__cidrs_match(s->trusted, s->ntrusted, h, strlen(h));
}

void keel__preamble_start(keel_http_server *s, int fd)
{
	struct keel__preamble *p = from_trusted(s, fd) ? keel__malloc(sizeof(*p)) : NULL;
	if (!p) { /* (not counted yet: nothing to undo) */
		if (s->ntrusted)
			s->stats.proxy_protocol_errors++;
		close(fd);
		return;
	}
	p->s = s;
	p->fd = fd;
	p->have = 0;
	p->timed_out = false;
	p->accepted_ns = keel_loop_now_ns(s->loop);
	p->prev = NULL;
	p->next = s->preambles;
	if (s->preambles)
		s->preambles->prev = p;
	s->preambles = p;
	s->npreambles++;
	keel_timer_init(&p->timer, preamble_timeout);
	if (s->cfg.header_timeout_ms) /* (0: no deadline, as for a request's head) */
		keel_timer_arm(s->loop, &p->timer, s->cfg.header_timeout_ms);
	peek_next(p);
}

void keel__preamble_stop_all(keel_http_server *s)
{
	for (struct keel__preamble *p = s->preambles; p; p = p->next)
		if (p->peek)
			keel_promise_cancel(p->peek);
}
