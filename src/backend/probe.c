/*
 * Backend choice: io_uring when the kernel lets us set up a ring with the
 * opcodes keel needs, epoll otherwise, with one log line saying why.
 * $KEEL_BACKEND=io_uring|epoll (or the loop option) forces one; forcing
 * io_uring where it cannot run is an error, not a silent fallback.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "keel/errors.h"
#include "keel/log.h"

/* The choice is logged once per process, by whichever loop (of any thread) is made first. */
static atomic_bool logged;

static const char *why(int err)
{
	switch (err) {
	case -EPERM: return "EPERM: io_uring is blocked (seccomp filter, or sysctl kernel.io_uring_disabled)";
	case -ENOSYS: return "ENOSYS: the kernel has no io_uring, or lacks an opcode keel needs";
	case -ENOMEM: return "ENOMEM: not enough locked memory for the ring (RLIMIT_MEMLOCK)";
	case -EACCES: return "EACCES: io_uring is restricted to a group this process is not in";
	default: return strerror(-err);
	}
}

int keel__backend_open(keel_loop *loop, keel_loop_opts *opts, const keel__backend **out)
{
	keel_backend_kind kind = opts->backend;
	const char *env = getenv("KEEL_BACKEND");
	if (kind == KEEL_BACKEND_AUTO && env && *env) {
		if (strcmp(env, "io_uring") == 0 || strcmp(env, "uring") == 0) {
			kind = KEEL_BACKEND_URING;
		} else if (strcmp(env, "epoll") == 0) {
			kind = KEEL_BACKEND_EPOLL;
		} else {
			keel_log(KEEL_LOG_ERROR, "KEEL_BACKEND=%s: expected io_uring or epoll", env);
			return KEEL_EBACKEND;
		}
	}

	const keel__backend *be = NULL;
	char log_line[256];
	int err = 0;
	if (kind != KEEL_BACKEND_EPOLL) {
		err = keel__backend_uring.init(loop, opts);
		if (err == 0) {
			be = &keel__backend_uring;
			snprintf(log_line, sizeof(log_line), "backend io_uring%s%s",
			         be->feature(loop, "sqpoll") ? " (SQPOLL)" : "",
			         be->feature(loop, "send_zc") ? " (zero-copy send)" : "");
		} else if (kind == KEEL_BACKEND_URING) {
			keel_log(KEEL_LOG_ERROR, "io_uring was forced but cannot run: %s", why(err));
			return KEEL_EBACKEND;
		}
	}
	if (!be) {
		int uerr = err;
		err = keel__backend_epoll.init(loop, opts);
		if (err < 0)
			return err;
		be = &keel__backend_epoll;
		if (kind == KEEL_BACKEND_EPOLL)
			snprintf(log_line, sizeof(log_line), "backend epoll (forced)");
		else
			snprintf(log_line, sizeof(log_line), "backend epoll: io_uring unavailable (%s)",
			         why(uerr));
	}
	*out = be;
	if (!opts->quiet && !atomic_exchange(&logged, true))
		keel_log(KEEL_LOG_INFO, "%s", log_line);
	return 0;
}
