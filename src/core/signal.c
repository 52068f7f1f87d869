/*
 * Signals as promises: a signalfd read through the loop.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "internal.h"
#include "keel/file.h"
#include "keel/signal.h"

struct sigwait {
	int fd;
	struct signalfd_siginfo info;
};

static keel_outcome sig_done(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	struct sigwait *w = ud;
	keel_outcome out = in.err ? in : keel_ok((int64_t)w->info.ssi_signo, NULL);
	if (!in.err && in.n != (int64_t)sizeof(w->info))
		out = keel_fail(-EIO);
	close(w->fd);
	free(w);
	return out;
}

keel_promise *keel_signal_wait(keel_loop *loop, const int *signos, int n)
{
	sigset_t set;
	sigemptyset(&set);
	for (int i = 0; i < n; i++)
		if (sigaddset(&set, signos[i]) < 0)
			return keel__rejected(loop, -EINVAL);
	int err = pthread_sigmask(SIG_BLOCK, &set, NULL);
	if (err)
		return keel__rejected(loop, -err);
	struct sigwait *w = malloc(sizeof(*w));
	if (!w)
		return keel__rejected(loop, -ENOMEM);
	w->fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (w->fd < 0) {
		err = -errno;
		free(w);
		return keel__rejected(loop, err);
	}
	return keel_then(keel_read(loop, w->fd, &w->info, sizeof(w->info)), sig_done, w);
}
