/*
 * Signals through the loop: a process-directed signal sent by another
 * process, a signal raised by the thread itself, and cancelling a wait.
 */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test.h"

int main(void)
{
	keel_loop *loop = test_loop();
	static const int sigs[] = {SIGUSR1, SIGUSR2};

	keel_promise *p = keel_signal_wait(loop, sigs, 2);
	pid_t child = fork();
	ASSERT(child >= 0);
	if (child == 0) {
		usleep(50000);
		kill(getppid(), SIGUSR2);
		_exit(0);
	}
	keel_outcome o = test_await(loop, p);
	ASSERT_EQ(o.err, 0);
	ASSERT_EQ(o.n, SIGUSR2);
	waitpid(child, NULL, 0);

	p = keel_signal_wait(loop, sigs, 2);
	raise(SIGUSR1); /* blocked: stays pending until the loop reads it */
	o = test_await(loop, p);
	ASSERT_EQ(o.n, SIGUSR1);

	p = keel_signal_wait(loop, sigs, 2);
	keel_loop_run_once(loop, 0);
	keel_promise_cancel(p);
	o = test_await(loop, p);
	ASSERT_EQ(o.err, -ECANCELED);

	static const int bad[] = {12345};
	o = test_await(loop, keel_signal_wait(loop, bad, 1));
	ASSERT_EQ(o.err, -EINVAL);

	keel_loop_stats st;
	keel_loop_get_stats(loop, &st);
	ASSERT_EQ(st.ops_inflight, 0);
	keel_loop_free(loop);
	printf("signal: ok\n");
	return 0;
}
