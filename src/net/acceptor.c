/*
 * The accept loop of a server, with its limits (see keel/acceptor.h).
 *
 * The one idea: accepting is a stream that stops itself (KEEL_STOP) the
 * moment the owner is full, and every event that can make room -- a
 * connection gone, one gone idle, a pause over -- is the one place that
 * starts it again. A client the kernel accepted before the stop took effect
 * is held, never dropped: dropping it would reset a client for nothing.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "keel/acceptor.h"
#include "keel/errors.h"
#include "keel/log.h"
#include "keel/tcp.h"

#define IDLE_GRACE_MS_DEFAULT 200 /* keel_acceptor_ops.idle_grace_ms when 0 */
#define RECLAIM_BATCH 16          /* idle connections closed at once when descriptors run out */
#define BACKOFF_FIRST_MS 10
#define BACKOFF_MAX_MS 1000
#define BACKOFF_LOG_EVERY_MS 10000

static void accept_start(keel_acceptor *a);
static void backoff_done(keel_ctx *ctx, keel_outcome o, void *ud);

void keel_acceptor_init(keel_acceptor *a, keel_loop *loop, unsigned conns_max, const keel_acceptor_ops *ops,
                        void *ud)
{
	memset(a, 0, sizeof(*a));
	a->loop = loop;
	a->ops = ops;
	a->ud = ud;
	a->conns_max = conns_max;
}

static bool at_limit(keel_acceptor *a)
{
	return a->ops->live(a->ud) >= a->conns_max;
}

static bool reclaimable(keel_acceptor *a)
{
	return a->ops->reclaimable && a->ops->reclaimable(a->ud);
}

static unsigned reclaim(keel_acceptor *a, unsigned n)
{
	return a->ops->reclaim ? a->ops->reclaim(a->ud, n) : 0;
}

static void maybe_quiet(keel_acceptor *a)
{
	if (a->stopping && !a->accepting && !a->backoff && a->ops->quiet)
		a->ops->quiet(a->ud);
}

/*
 * At the limit with only connections accepted a moment ago idle: look
 * again once they may be closed to make room (backoff_done).
 */
static void limit_recheck(keel_acceptor *a)
{
	if (!a->ops->idle || !a->ops->idle(a->ud) || a->backoff || a->stopping)
		return;
	a->backoff =
	    keel_sleep(a->loop, a->ops->idle_grace_ms ? a->ops->idle_grace_ms : IDLE_GRACE_MS_DEFAULT);
	keel_promise_done(a->backoff, backoff_done, a);
}

static void open_conn(keel_acceptor *a, int fd, unsigned listener)
{
	if (a->ops->open_from)
		a->ops->open_from(a->ud, fd, listener);
	else
		a->ops->open(a->ud, fd);
}

static int on_accept(void *ud, int fd)
{
	keel_acceptor_listener *l = ud;
	keel_acceptor *a = l->a;
	if (!a->stopping && at_limit(a))
		reclaim(a, 1); /* the longest-idle connection makes room for this one */
	if (a->stopping) {
		close(fd);
		return KEEL_STOP;
	}
	if (at_limit(a)) {
		/* Accepted by the kernel before our pause took effect: hold it unserved. */
		if (a->nheld == a->held_cap) {
			unsigned cap = a->held_cap ? a->held_cap * 2 : 16;
			struct keel_acceptor_held *h = realloc(a->held, cap * sizeof(*h));
			if (!h) {
				close(fd);
				return KEEL_STOP;
			}
			a->held = h;
			a->held_cap = cap;
		}
		a->held[a->nheld++] = (struct keel_acceptor_held){fd, (unsigned)(l - a->ls)};
		if (!a->paused)
			a->pauses++;
		a->paused = true;
		l->halted = true;
		limit_recheck(a);
		return KEEL_STOP;
	}
	a->backoff_ms = 0;
	open_conn(a, fd, (unsigned)(l - a->ls));
	if (at_limit(a) && !reclaimable(a)) {
		if (!a->paused)
			a->pauses++;
		a->paused = true; /* the kernels' backlogs hold the rest */
		l->halted = true;
		limit_recheck(a);
		return KEEL_STOP;
	}
	return KEEL_CONTINUE;
}

static void backoff_done(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	keel_acceptor *a = ud;
	a->backoff = NULL;
	if (!a->stopping && a->nheld) {
		/* Clients accepted at the limit go first: an idle connection's close lets one in. */
		if (!reclaim(a, 1))
			limit_recheck(a);
	} else if (!a->stopping) {
		a->paused = false;
		accept_start(a); /* (the streams that have ended) */
	}
	maybe_quiet(a);
}

static void accept_ended(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	keel_acceptor_listener *l = ud;
	keel_acceptor *a = l->a;
	l->accept = NULL;
	a->accepting--;
	if (a->stopping) {
		maybe_quiet(a);
		return;
	}
	if (l->halted) {
		/* Halted at the limit: room may have come back while the stream was still ending. */
		l->halted = false;
		if (a->paused && !a->nheld && (!at_limit(a) || reclaimable(a)))
			a->paused = false;
		if (!a->paused)
			accept_start(a);
		return;
	}
	int listening = 1;
	socklen_t len = sizeof(listening);
	if (o.err == -EINVAL && getsockopt(l->lfd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == 0 &&
	    !listening) {
		/*
		 * The socket no longer listens: its owner shut it down (a stop
		 * refuses new clients before each worker hears of it). Nothing
		 * will come from it again; the stop follows.
		 */
		keel_log(KEEL_LOG_DEBUG, "accept: the listening socket was shut down");
		l->closed = true;
		maybe_quiet(a);
		return;
	}
	if ((o.err == -EMFILE || o.err == -ENFILE) && a->ops->idle && a->ops->idle(a->ud) &&
	    reclaim(a, RECLAIM_BATCH)) {
		/*
		 * Out of descriptors with idle connections open: the oldest close,
		 * and accepting resumes as soon as their descriptors come back,
		 * rather than leave new clients waiting for idle ones to time out.
		 */
		a->pauses++;
		a->reclaiming = true;
		return;
	}
	/*
	 * Out of descriptors, memory or op slots -- or any other end we did not
	 * ask for (an error of the listener, a cancel not ours): pause, 10 ms
	 * doubling up to 1 s, and say so once; then accept again. A listener
	 * that keeps failing is retried at most once a second, never in a spin,
	 * and never given up on.
	 */
	uint64_t now = keel_loop_now_ms(a->loop);
	if (!a->backoff_ms && (!a->backoff_logged_ms || now - a->backoff_logged_ms > BACKOFF_LOG_EVERY_MS)) {
		a->backoff_logged_ms = now;
		keel_log(KEEL_LOG_WARN, "accept: %s; pausing (%u connections open)",
		         o.err ? keel_strerror(o.err) : "ended", a->ops->live(a->ud));
	}
	a->backoff_ms = a->backoff_ms ? a->backoff_ms * 2 : BACKOFF_FIRST_MS;
	if (a->backoff_ms > BACKOFF_MAX_MS)
		a->backoff_ms = BACKOFF_MAX_MS;
	a->pauses++;
	if (!a->backoff) { /* (one pause at a time: a recheck may be pending already) */
		a->backoff = keel_sleep(a->loop, a->backoff_ms);
		keel_promise_done(a->backoff, backoff_done, a);
	}
}

static void listener_start(keel_acceptor_listener *l)
{
	keel_acceptor *a = l->a;
	if (l->accept || l->closed)
		return;
	a->accepting++;
	l->accept = keel_accept(a->loop, l->lfd, on_accept, l);
	keel_promise_done(l->accept, accept_ended, l);
}

/* Accept again on every listening socket whose stream has ended. */
static void accept_start(keel_acceptor *a)
{
	for (unsigned i = 0; i < a->nls; i++)
		listener_start(&a->ls[i]);
}

int keel_acceptor_start(keel_acceptor *a, int lfd)
{
	if (lfd < 0 || a->stopping)
		return -EINVAL;
	if (a->nls == KEEL_ACCEPTOR_LISTENERS_MAX)
		return -E2BIG;
	keel_acceptor_listener *l = &a->ls[a->nls++];
	*l = (keel_acceptor_listener){.a = a, .lfd = lfd};
	if (!a->paused && !a->backoff && !a->reclaiming)
		listener_start(l);
	return 0;
}

void keel_acceptor_stop(keel_acceptor *a, bool shut_listener)
{
	if (a->stopping)
		return;
	a->stopping = true;
	for (unsigned i = 0; i < a->nls; i++) {
		if (shut_listener)
			shutdown(a->ls[i].lfd,
			         SHUT_RD); /* refuse new clients now, and reset those in its backlog */
		if (a->ls[i].accept)
			keel_promise_cancel(a->ls[i].accept);
	}
	if (a->backoff)
		keel_promise_cancel(a->backoff);
	for (unsigned i = 0; i < a->nheld; i++)
		close(a->held[i].fd); /* never served */
	a->nheld = 0;
}

bool keel_acceptor_busy(const keel_acceptor *a)
{
	return a->accepting || a->backoff;
}

void keel_acceptor_conn_gone(keel_acceptor *a)
{
	if (a->stopping)
		return;
	if (a->nheld) {
		struct keel_acceptor_held h = a->held[0];
		memmove(a->held, a->held + 1, --a->nheld * sizeof(*a->held));
		open_conn(a, h.fd, h.listener);
	}
	if (a->reclaiming && !a->backoff) {
		a->reclaiming = false; /* a descriptor came back: accept again */
		accept_start(a);
	}
	if (a->paused && !a->nheld && !at_limit(a)) {
		a->paused = false; /* (a halted stream that has not ended yet starts again as it ends) */
		accept_start(a);
	}
}

void keel_acceptor_idle(keel_acceptor *a)
{
	/*
	 * Accepting paused at the limit: clients wait. One accepted already
	 * (held) takes the oldest idle connection's place now; otherwise
	 * accepting resumes, and the next client makes room as it comes.
	 */
	if (!a->paused || a->stopping || !reclaimable(a))
		return;
	if (a->nheld) {
		reclaim(a, 1);
	} else {
		a->paused = false;
		accept_start(a);
	}
}

void keel_acceptor_fini(keel_acceptor *a)
{
	for (unsigned i = 0; i < a->nheld; i++)
		close(a->held[i].fd);
	free(a->held);
	a->held = NULL;
	a->nheld = a->held_cap = 0;
}
