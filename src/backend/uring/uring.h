/*
 * Private state of the io_uring backend, shared by its files.
 */
#ifndef KEEL_URING_H
#define KEEL_URING_H

#include <liburing.h>
#include <stdbool.h>

#include "backend/backend.h"

/* user_data of SQEs whose completions nobody waits for (cancels, close's link head). */
#define KEEL__URING_IGNORE UINT64_MAX

#define KEEL__URING_PIPE_CACHE 16

typedef struct keel__uring {
	struct io_uring ring;
	unsigned setup_flags;
	bool sqpoll;
	bool send_zc;
	bool ring_fd_registered;
	struct io_uring_buf_ring *br;
	size_t br_bytes;
	int br_mask;
	int nop_inject; /* fault builds: NOP can inject a result (1), or not (-1: a deferred list) */
	keel__op *inj_head, *inj_tail; /* injected results waiting for the next poll (be_scratch) */
	int pipes[KEEL__URING_PIPE_CACHE][2];
	int npipes;
	int pipe_size;
} keel__uring;

/* An SQE, flushing the queue to the kernel first if it is full. NULL only if the kernel refuses. */
struct io_uring_sqe *keel__uring_sqe(keel_loop *loop, keel__uring *u);

/* net.c / file.c: fill SQEs for op; return 0, or a negative errno to fail the op. */
int keel__uring_prep_net(keel_loop *loop, keel__uring *u, keel__op *op);
/* An accept op's poll completion (res: its mask or an error; more: still armed): net.c. */
void keel__uring_accept(keel_loop *loop, keel__op *op, int res, bool more);
/* Submit op again (a multishot the kernel ended early); ask the kernel to end it. */
void keel__uring_resubmit(keel_loop *loop, keel__op *op);
void keel__uring_cancel(keel_loop *loop, keel__op *op);
int keel__uring_prep_file(keel_loop *loop, keel__uring *u, keel__op *op);

/*
 * Ops that take several kernel steps (sendfile through a pipe, pollable
 * reads) see their completions here first. Returns true if the op is done
 * with this step and the result should go to the core.
 */
bool keel__uring_step(keel_loop *loop, keel__uring *u, keel__op *op, int *res);
void keel__uring_pipes_fini(keel__uring *u);

#endif
