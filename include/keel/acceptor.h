/*
 * The accept loop of one or more listening sockets with the limits a
 * server needs: a cap on
 * connections, descriptors the kernel accepted past the cap held unserved
 * (as its backlog would have) until there is room, idle connections closed
 * to make room when the owner has some, and running out of descriptors or
 * memory met with a pause -- 10 ms doubling to 1 s, logged at most once
 * every 10 s -- never with a spin and never by giving up.
 *
 * The owner embeds a keel_acceptor, says what a connection is through
 * keel_acceptor_ops, and tells the acceptor when one of its connections has
 * gone (keel_acceptor_conn_gone) or gone idle (keel_acceptor_idle).
 */
#ifndef KEEL_ACCEPTOR_H
#define KEEL_ACCEPTOR_H

#include <stdbool.h>
#include <stdint.h>

#include "loop.h"
#include "promise.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keel_acceptor_ops {
	/* A new connection: the owner takes fd. */
	void (*open)(void *ud, int fd);
	/*
	 * Or, when set (instead of open): a new connection and which listening
	 * socket it came from (0 for the first keel_acceptor_start, and so on).
	 */
	void (*open_from)(void *ud, int fd, unsigned listener);
	/* Connections open and not closing: what conns_max bounds. */
	unsigned (*live)(void *ud);
	/*
	 * Optional (NULL: the owner never closes a connection for room).
	 * reclaim closes up to n idle connections and returns how many began
	 * closing; reclaimable says whether reclaim(1) would close one now;
	 * idle says whether the owner has idle connections at all (some may
	 * become reclaimable after a while: the acceptor looks again).
	 */
	unsigned (*reclaim)(void *ud, unsigned n);
	bool (*reclaimable)(void *ud);
	bool (*idle)(void *ud);
	/*
	 * How long the owner spares an idle connection it just accepted (its
	 * request is most likely on the way): at the limit with only such
	 * connections idle, the acceptor looks again after this long. 0: 200 ms.
	 */
	unsigned idle_grace_ms;
	/* Optional: called when, after keel_acceptor_stop, nothing of the acceptor's is in flight. */
	void (*quiet)(void *ud);
} keel_acceptor_ops;

/* Listening sockets one acceptor takes (keel_acceptor_start): 16. */
#define KEEL_ACCEPTOR_LISTENERS_MAX 16

struct keel_acceptor;
typedef struct keel_acceptor_listener {
	struct keel_acceptor *a;
	int lfd;
	keel_promise *accept; /* its accept stream while it runs */
	bool halted;          /* its stream was told to end at the limit (it starts again with room) */
	bool closed;          /* shut down by its owner: nothing comes from it again */
} keel_acceptor_listener;

/* Embedded by the owner; the fields are the acceptor's (loop, ops and ud as given to init). */
typedef struct keel_acceptor {
	keel_loop *loop;
	const keel_acceptor_ops *ops;
	void *ud;
	unsigned conns_max;
	keel_acceptor_listener ls[KEEL_ACCEPTOR_LISTENERS_MAX];
	unsigned nls;
	unsigned accepting;    /* accept streams in flight */
	keel_promise *backoff; /* a pause (descriptors out, or a look again at the limit) */
	unsigned backoff_ms;   /* grows while accepting keeps failing; 0 after a success */
	uint64_t backoff_logged_ms;
	bool paused, stopping, reclaiming;
	/* accepted past the limit, in arrival order: not served yet (the acceptor's to close) */
	struct keel_acceptor_held {
		int fd;
		unsigned listener;
	} * held;
	unsigned nheld, held_cap;
	uint64_t pauses; /* times accepting paused (the limit, EMFILE and the like) */
} keel_acceptor;

/*
 * Set a up; nothing runs until keel_acceptor_start. conns_max > 0. loop,
 * ops and ud are borrowed until keel_acceptor_fini; a itself must not move
 * or go while keel_acceptor_busy is true.
 */
void keel_acceptor_init(keel_acceptor *a, keel_loop *loop, unsigned conns_max, const keel_acceptor_ops *ops,
                        void *ud);

/*
 * Accept on the listening socket lfd too (borrowed: the acceptor never
 * closes it); every socket counts towards the one cap. 0, -EINVAL (lfd < 0,
 * or stopping), or -E2BIG past KEEL_ACCEPTOR_LISTENERS_MAX.
 */
int keel_acceptor_start(keel_acceptor *a, int lfd);

/*
 * Stop accepting: the accept streams and any pause are cancelled, held
 * descriptors closed; with shut_listener the listening sockets are shut
 * down as well, so that new clients are refused at once (and those in
 * their backlogs reset) instead of waiting in a backlog.
 */
void keel_acceptor_stop(keel_acceptor *a, bool shut_listener);

/* Whether an accept stream or a pause is still in flight (then a's memory must stay). */
bool keel_acceptor_busy(const keel_acceptor *a);

/* One of the owner's connections has gone (its descriptor is back): held ones and accepting go on. */
void keel_acceptor_conn_gone(keel_acceptor *a);

/* One of the owner's connections went idle: a held one may take its place. */
void keel_acceptor_idle(keel_acceptor *a);

/* Free what a holds (held descriptors are closed). Only once keel_acceptor_busy is false. */
void keel_acceptor_fini(keel_acceptor *a);

#ifdef __cplusplus
}
#endif

#endif
