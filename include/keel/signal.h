/*
 * Signals through the loop (signalfd). keel_signal_wait returns the
 * consumer's handle of a promise (keel/promise.h).
 */
#ifndef KEEL_SIGNAL_H
#define KEEL_SIGNAL_H

#include "promise.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Resolve with n = the signal number when one of signos[0..n) is delivered.
 * The signals are blocked in the calling thread (block them in every thread,
 * e.g. before starting workers, for process-directed signals to reach the
 * loop). signos is read before return. Cancel to stop waiting.
 */
keel_promise *keel_signal_wait(keel_loop *loop, const int *signos, int n);

#ifdef __cplusplus
}
#endif

#endif
