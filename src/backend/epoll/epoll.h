/*
 * Private state of the epoll backend, shared by its files.
 */
#ifndef KEEL_EPOLL_H
#define KEEL_EPOLL_H

#include <pthread.h>
#include <stdbool.h>

#include "backend/backend.h"

/* Where an op is (op->be_state). */
enum {
	EP_IDLE = 0,
	EP_PENDING, /* to be attempted at the next poll */
	EP_WAIT_RD, /* on its fd's read list, waiting for EPOLLIN */
	EP_WAIT_WR, /* on its fd's write list, waiting for EPOLLOUT */
	EP_JOB,     /* queued for the file threads */
	EP_RUNNING, /* a file thread or an attempt is executing it */
	EP_DONE,    /* result ready, to be reported at the next poll */
};

/* op->be_flags */
#define EPF_CHECKED 0x01 /* this op has confirmed its fd's registration */
#define EPF_POOL 0x02    /* handed to the file threads: its be_state is theirs too (under ep->mu) */

/* What an attempt did. */
enum { ATT_DONE = 0, ATT_WAIT_RD, ATT_WAIT_WR, ATT_REQUEUE };

struct keel__epfd {
	keel__op *rd, *wr; /* FIFOs of waiting ops, chained by op->next */
	uint8_t registered;
	uint8_t nonblock_set;
	uint8_t hup; /* an edge reported RDHUP/HUP/ERR: read to the end, no short-read shortcut */
};

typedef struct keel__epoll {
	int epfd;
	struct keel__epfd *fds;
	int nfds;
	keel__op *pending, *pending_tail;
	keel__op *done, *done_tail; /* loop-thread results (cancels, pool results moved here) */

	/* File threads. */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	keel__op *jobs, *jobs_tail;
	keel__op *pool_done, *pool_done_tail;
	int efd; /* pool -> loop wakeups */
	pthread_t *threads;
	unsigned nthreads, threads_max;
	bool stop;
} keel__epoll;

void keel__ep_push(keel__op **head, keel__op **tail, keel__op *op);
keel__op *keel__ep_pop(keel__op **head, keel__op **tail);
bool keel__ep_unlink(keel__op **head, keel__op **tail, keel__op *op);

/* Report a result at the next poll, never from inside the caller's call. */
void keel__ep_defer(keel__epoll *ep, keel__op *op, int res);

/* Forget fd's registration (it was closed, or a new socket got its number). */
void keel__ep_fd_reset(keel__epoll *ep, int fd);
void keel__ep_fd_nonblock(keel__epoll *ep, int fd);

/* net.c: one attempt at a socket op (or pollable read). */
int keel__ep_attempt_net(keel_loop *loop, keel__epoll *ep, keel__op *op);

/* filepool.c */
int keel__ep_pool_queue(keel__epoll *ep, keel__op *op, unsigned threads_max);
bool keel__ep_pool_cancel(keel__epoll *ep, keel__op *op);
void keel__ep_pool_reap(keel__epoll *ep);
void keel__ep_pool_fini(keel__epoll *ep);

#endif
