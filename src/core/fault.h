/*
 * Fault injection, for test builds (-DKEEL_FAULT, `make faults`).
 *
 * Every operation reaches its backend through keel__op_submit(), and every
 * allocation whose failure keel can survive goes through keel__malloc() and
 * its siblings below. In a fault build both consult a plan read once from
 * $KEEL_FAULT (or set by keel__fault_configure), and may instead complete the
 * operation with a chosen error -- through the backend, asynchronously, as
 * the kernel would: an injected io_uring completion (IORING_OP_NOP with an
 * injected result), a deferred result on epoll -- shorten a send or a
 * receive, or fail the allocation. In other builds they are plain calls.
 *
 * The plan, comma-separated:
 *   KIND:ERROR:RATE    KIND one of accept connect recv send sendfile shutdown
 *                      open read write statx fsync readpoll path (unlink,
 *                      rename, mkdir) alloc any;
 *                      ERROR an errno name (ECONNRESET, EMFILE, ENOMEM,
 *                      EAGAIN, ENOBUFS, ECANCELED, ...) or "short" (recv,
 *                      send: a partial transfer); RATE "5%", "0.05" or "@N"
 *                      (the Nth such call only)
 *   seed=N             the PRNG seed (per thread: seed + thread number)
 *   delay=MS           no allocation fails for the first MS milliseconds (setup runs clean)
 * e.g. KEEL_FAULT="recv:ECONNRESET:2%,send:short:10%,accept:EMFILE:5%,alloc:ENOMEM:1%".
 * At exit a line per rule says how often it fired (stderr), so a test can
 * tell that the plan did something.
 *
 * Closes are never failed: a close(2) that fails still releases the
 * descriptor, so an injected close error would only leak it.
 */
#ifndef KEEL_CORE_FAULT_H
#define KEEL_CORE_FAULT_H

#include <stdbool.h>
#include <stdlib.h>

#include "backend/backend.h"
#include "core/alloc.h"

#ifdef KEEL_FAULT
/* Replace the plan (tests; not while loops run on other threads). spec NULL: none. -EINVAL if bad. */
int keel__fault_configure(const char *spec);
/*
 * Whether op's submission is to fail: a negative errno to complete it with,
 * or 0 (it goes to the kernel; a send or receive may have been shortened:
 * op->u.send.fault_* / op->u.stream.cap set).
 */
int keel__fault_op(keel__op *op);
#endif

#endif
