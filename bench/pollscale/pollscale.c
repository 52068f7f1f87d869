/*
 * pollscale: time for repeated monitoring operations while N descriptors are
 * watched and exactly one is ready (TLPI table 63-9, plus io_uring).
 *
 * The watched descriptors are N eventfds, one fd each, so N = 10,000 fits
 * under a 20,000-fd limit; the last one (highest fd number) is the ready one.
 *
 * The design idea is that every method does the same work per operation, so
 * the columns compare only the monitoring:
 *
 *     write(ready, 1)  ->  one monitoring call that reports it  ->  read(ready)
 *
 * io_uring needs this because a multishot poll posts a completion when the fd
 * is woken, not while it merely stays readable; poll, select and epoll do it
 * too so all columns carry the same write+read cost. "-m none" times that
 * write+read alone, so it can be subtracted. "-b" is the book's loop exactly
 * (the fd stays ready, one operation is just the call); io_uring has no such
 * mode.
 *
 * usage: pollscale -m poll|select|epoll|io_uring|none -N fds
 *                  [-n ops] [-t budget_s] [-b]
 * prints one tab-separated line: method N ops ops_run seconds
 * where seconds is the time for ops operations; when the run hit the time
 * budget it is extrapolated linearly from ops_run < ops, and "NA" means the
 * method cannot watch this N (select: an fd >= FD_SETSIZE).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <liburing.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

enum { FDS_MAX = 19000, URING_ENTRIES = 4096, CHECK_EVERY_OPS = 1024 };

struct bench {
	int *fds;
	int nfds;
	int ready_fd;
	bool bare;

	struct pollfd *pfds;
	fd_set set;
	int set_nfds;
	int epfd;
	struct io_uring ring;
};

struct method {
	const char *name;
	int (*setup)(struct bench *b);
	int (*wait)(struct bench *b);
	void (*teardown)(struct bench *b);
};

static int none_setup(struct bench *b)
{
	(void)b;
	return 0;
}

static int none_wait(struct bench *b)
{
	(void)b;
	return 0;
}

static void none_teardown(struct bench *b)
{
	(void)b;
}

/* The pollfd array is built once; poll() only writes revents. */
static int poll_setup(struct bench *b)
{
	b->pfds = calloc((size_t)b->nfds, sizeof(*b->pfds));
	if (!b->pfds)
		return -ENOMEM;
	for (int i = 0; i < b->nfds; i++) {
		b->pfds[i].fd = b->fds[i];
		b->pfds[i].events = POLLIN;
	}
	return 0;
}

static int poll_wait(struct bench *b)
{
	int n = poll(b->pfds, (nfds_t)b->nfds, 0);

	if (n < 0)
		return -errno;
	if (n != 1 || !(b->pfds[b->nfds - 1].revents & POLLIN))
		return -EPROTO;
	return 0;
}

static void poll_teardown(struct bench *b)
{
	free(b->pfds);
}

static int select_setup(struct bench *b)
{
	FD_ZERO(&b->set);
	for (int i = 0; i < b->nfds; i++) {
		if (b->fds[i] >= FD_SETSIZE)
			return -EMFILE;
		FD_SET(b->fds[i], &b->set);
	}
	b->set_nfds = b->ready_fd + 1;
	return 0;
}

/* select() overwrites its set, so each call starts from a copy, as in TLPI. */
static int select_wait(struct bench *b)
{
	fd_set rd = b->set;
	struct timeval tv = {0, 0};
	int n = select(b->set_nfds, &rd, NULL, NULL, &tv);

	if (n < 0)
		return -errno;
	if (n != 1 || !FD_ISSET(b->ready_fd, &rd))
		return -EPROTO;
	return 0;
}

static void select_teardown(struct bench *b)
{
	(void)b;
}

static int epoll_setup(struct bench *b)
{
	b->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (b->epfd < 0)
		return -errno;
	for (int i = 0; i < b->nfds; i++) {
		struct epoll_event ev = {.events = EPOLLIN, .data.fd = b->fds[i]};

		if (epoll_ctl(b->epfd, EPOLL_CTL_ADD, b->fds[i], &ev) < 0) {
			int err = -errno;

			close(b->epfd);
			return err;
		}
	}
	return 0;
}

static int epoll_wait_one(struct bench *b)
{
	struct epoll_event ev;
	int n = epoll_wait(b->epfd, &ev, 1, 0);

	if (n < 0)
		return -errno;
	if (n != 1 || ev.data.fd != b->ready_fd)
		return -EPROTO;
	return 0;
}

static void epoll_teardown(struct bench *b)
{
	close(b->epfd);
}

static int uring_arm(struct bench *b, int i)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&b->ring);

	if (!sqe) {
		int ret = io_uring_submit(&b->ring);

		if (ret < 0)
			return ret;
		sqe = io_uring_get_sqe(&b->ring);
		if (!sqe)
			return -EBUSY;
	}
	io_uring_prep_poll_multishot(sqe, b->fds[i], POLLIN);
	io_uring_sqe_set_data64(sqe, (__u64)i);
	return 0;
}

/* One multishot poll per fd, armed once; each wakeup of the fd posts a CQE. */
static int uring_setup(struct bench *b)
{
	int ret = io_uring_queue_init(URING_ENTRIES, &b->ring, 0);

	if (ret < 0)
		return ret;
	for (int i = 0; i < b->nfds; i++) {
		ret = uring_arm(b, i);
		if (ret < 0)
			goto out_exit_ring;
	}
	ret = io_uring_submit(&b->ring);
	if (ret < 0)
		goto out_exit_ring;
	return 0;

out_exit_ring:
	io_uring_queue_exit(&b->ring);
	return ret;
}

static int uring_wait(struct bench *b)
{
	struct io_uring_cqe *cqe;
	int ret = io_uring_wait_cqe(&b->ring, &cqe);

	if (ret < 0)
		return ret;
	uint64_t i = io_uring_cqe_get_data64(cqe);
	int res = cqe->res;
	bool more = cqe->flags & IORING_CQE_F_MORE;

	io_uring_cqe_seen(&b->ring, cqe);
	if (res < 0)
		return res;
	if (i != (uint64_t)(b->nfds - 1) || !(res & POLLIN))
		return -EPROTO;
	/* The kernel may end a multishot poll (e.g. CQ overflow); re-arm it. */
	if (!more) {
		ret = uring_arm(b, (int)i);
		if (ret < 0)
			return ret;
		ret = io_uring_submit(&b->ring);
		if (ret < 0)
			return ret;
	}
	return 0;
}

static void uring_teardown(struct bench *b)
{
	io_uring_queue_exit(&b->ring);
}

static const struct method methods[] = {
    {"none", none_setup, none_wait, none_teardown},
    {"poll", poll_setup, poll_wait, poll_teardown},
    {"select", select_setup, select_wait, select_teardown},
    {"epoll", epoll_setup, epoll_wait_one, epoll_teardown},
    {"io_uring", uring_setup, uring_wait, uring_teardown},
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int make_ready(int fd)
{
	uint64_t one = 1;

	return write(fd, &one, sizeof(one)) == sizeof(one) ? 0 : -errno;
}

static int drain(int fd)
{
	uint64_t count;

	return read(fd, &count, sizeof(count)) == sizeof(count) ? 0 : -errno;
}

/* One operation; see the file comment for what it contains and why. */
static int op(const struct method *m, struct bench *b)
{
	int ret;

	if (b->bare)
		return m->wait(b);
	ret = make_ready(b->ready_fd);
	if (ret < 0)
		return ret;
	ret = m->wait(b);
	if (ret < 0)
		return ret;
	return drain(b->ready_fd);
}

/* Runs up to ops operations; stops early once budget_s has passed. */
static int run(const struct method *m, struct bench *b, long ops, double budget_s, long *ops_run,
               double *elapsed_s)
{
	int ret;

	if (b->bare) {
		ret = make_ready(b->ready_fd);
		if (ret < 0)
			return ret;
	}
	for (int i = 0; i < 100; i++) { /* Warm caches and the kernel's paths. */
		ret = op(m, b);
		if (ret < 0)
			return ret;
	}

	double start = now_s();
	long done = 0;

	while (done < ops) {
		ret = op(m, b);
		if (ret < 0)
			return ret;
		done++;
		if (done % CHECK_EVERY_OPS == 0 && now_s() - start > budget_s)
			break;
	}
	*elapsed_s = now_s() - start;
	*ops_run = done;
	return 0;
}

static int raise_fd_limit(int want)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return -errno;
	if (rl.rlim_cur >= (rlim_t)want)
		return 0;
	if (rl.rlim_max < (rlim_t)want)
		return -EMFILE;
	rl.rlim_cur = (rlim_t)want;
	return setrlimit(RLIMIT_NOFILE, &rl) < 0 ? -errno : 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: pollscale -m poll|select|epoll|io_uring|none "
	                "-N fds [-n ops] [-t budget_s] [-b]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const struct method *m = NULL;
	struct bench b = {.epfd = -1};
	long ops = 100000, ops_run = 0;
	double budget_s = 10.0, elapsed_s = 0.0;
	int opened = 0, opt, ret;

	while ((opt = getopt(argc, argv, "m:N:n:t:b")) != -1) {
		switch (opt) {
		case 'm':
			for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
				if (strcmp(optarg, methods[i].name) == 0)
					m = &methods[i];
			break;
		case 'N': b.nfds = atoi(optarg); break;
		case 'n': ops = atol(optarg); break;
		case 't': budget_s = atof(optarg); break;
		case 'b': b.bare = true; break;
		default: usage();
		}
	}
	if (!m || b.nfds < 1 || b.nfds > FDS_MAX || ops < 1 || budget_s <= 0)
		usage();
	if (b.bare && (m->wait == uring_wait || m->wait == none_wait)) {
		fprintf(stderr, "pollscale: -b applies to poll, select, epoll\n");
		return 2;
	}

	ret = raise_fd_limit(b.nfds + 64);
	if (ret < 0)
		goto out_err;
	b.fds = calloc((size_t)b.nfds, sizeof(*b.fds));
	if (!b.fds) {
		ret = -ENOMEM;
		goto out_err;
	}
	for (; opened < b.nfds; opened++) {
		b.fds[opened] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (b.fds[opened] < 0) {
			ret = -errno;
			goto out_close_fds;
		}
	}
	b.ready_fd = b.fds[b.nfds - 1];

	ret = m->setup(&b);
	if (ret == -EMFILE && m->wait == select_wait) {
		fprintf(stderr, "pollscale: select: fd %d >= FD_SETSIZE %d\n", b.ready_fd, FD_SETSIZE);
		printf("%s\t%d\t%ld\t0\tNA\n", m->name, b.nfds, ops);
		ret = 0;
		goto out_close_fds;
	}
	if (ret < 0)
		goto out_close_fds;
	ret = run(m, &b, ops, budget_s, &ops_run, &elapsed_s);
	m->teardown(&b);
	if (ret < 0)
		goto out_close_fds;

	printf("%s\t%d\t%ld\t%ld\t%.4f\n", m->name, b.nfds, ops, ops_run,
	       elapsed_s * (double)ops / (double)ops_run);

out_close_fds:
	while (opened > 0)
		close(b.fds[--opened]);
	free(b.fds);
out_err:
	if (ret < 0) {
		fprintf(stderr, "pollscale: %s: %s\n", m->name, strerror(-ret));
		return 1;
	}
	return 0;
}
