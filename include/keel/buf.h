/*
 * keel_buf: a receive buffer from the loop's pool.
 *
 * On io_uring the pool is a provided-buffer ring: the kernel picks a buffer
 * only when data arrives, so an idle connection holds none. The epoll backend
 * takes from the same pool at the same moment. A keel_recv_stream callback
 * borrows the buffer for the duration of the call; keel_buf_hold keeps it
 * (for instance to send it back without a copy) until keel_buf_release.
 * A pool buffer must be released before keel_loop_free, which unmaps the pool.
 */
#ifndef KEEL_BUF_H
#define KEEL_BUF_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keel_buf keel_buf;

/*
 * Who a buffer goes back to when it is not the loop's own: a transport that
 * hands out buffers of its own (TLS: decrypted bytes) sets owner, and
 * keel_buf_release calls owner->release on the last reference instead of
 * returning the buffer to the pool. Every buffer that points to owner
 * borrows it: owner must outlive them all.
 */
typedef struct keel_buf_owner {
	void (*release)(struct keel_buf_owner *owner, keel_buf *buf);
} keel_buf_owner;

struct keel_buf {
	char *data;                 /* received bytes; valid while a reference is held */
	uint32_t len;               /* how many */
	uint32_t cap;               /* buffer size */
	uint16_t id;                /* index in the pool */
	uint16_t refs;              /* internal */
	struct keel__bufpool *pool; /* internal */
	keel_buf_owner *owner;      /* NULL: the loop's pool */
	struct keel_buf *next;      /* free for the holder's use (e.g. a queue) while it holds the buffer */
};

/* Take a reference: the buffer stays out of the pool until released. */
void keel_buf_hold(keel_buf *buf);

/* Drop a reference; the last one returns the buffer to the kernel's ring. */
void keel_buf_release(keel_buf *buf);

#ifdef __cplusplus
}
#endif

#endif
