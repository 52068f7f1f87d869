/*
 * floor: the "kernel floor" for bench/http. An io_uring HTTP/1.1 responder
 * that does the least a server can do and still be correct for a
 * benchmarking client. It does not parse: it counts request terminators
 * ("\r\n\r\n") in what it receives and answers each with one fixed,
 * precomputed keep-alive response. Whatever keel, nginx or h2o spend per
 * request above this program's cost is their own work, not the kernel's.
 *
 *     cc -O2 -Wall -Wextra -o floor bench/http/floor.c -luring
 *     floor 127.0.0.1:8080
 *
 * Built as the best raw io_uring design this machine allows: one ring with
 * SINGLE_ISSUER|DEFER_TASKRUN (plain ring where the kernel refuses them), a
 * registered ring fd, one multishot accept, one multishot recv per
 * connection drawing from a provided buffer ring, sends of a static
 * response with IOSQE_CQE_SKIP_SUCCESS, and one io_uring_submit_and_wait()
 * per loop. Requests with bodies are not supported: a benchmark does not
 * send them.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* MAP_ANONYMOUS under -std=c17 */
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#define RING_ENTRIES 4096
#define BUF_GROUP 0
#define BUF_COUNT 2048 /* power of two, as the buffer ring requires */
#define BUF_BYTES 4096
#define FD_MAX 65536 /* connections with a larger fd are refused */
#define BATCH_MAX 64 /* responses in the static send buffer */

enum { OP_ACCEPT, OP_RECV, OP_SEND, OP_CLOSE };

#define RESPONSE                       \
	"HTTP/1.1 200 OK\r\n"          \
	"Server: floor\r\n"            \
	"Content-Type: text/plain\r\n" \
	"Content-Length: 13\r\n"       \
	"\r\n"                         \
	"Hello, World!"

static const char response[] = RESPONSE;
#define RESPONSE_BYTES (sizeof(response) - 1)

static char batch[BATCH_MAX * RESPONSE_BYTES]; /* BATCH_MAX copies */
static unsigned char matched[FD_MAX];          /* bytes of "\r\n\r\n" seen, per fd */

static struct io_uring ring;
static struct io_uring_buf_ring *buf_ring;
static char *bufs;

static void die(const char *what, int err)
{
	fprintf(stderr, "floor: %s: %s\n", what, strerror(err));
	exit(1);
}

static struct io_uring_sqe *get_sqe(void)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);

	if (!sqe) { /* SQ full: flush it and try once more. */
		io_uring_submit(&ring);
		sqe = io_uring_get_sqe(&ring);
		if (!sqe)
			die("io_uring_get_sqe", EBUSY);
	}
	return sqe;
}

static void set_data(struct io_uring_sqe *sqe, int op, int fd)
{
	io_uring_sqe_set_data64(sqe, (__u64)fd << 2 | (__u64)op);
}

static void arm_accept(int lfd)
{
	struct io_uring_sqe *sqe = get_sqe();

	io_uring_prep_multishot_accept(sqe, lfd, NULL, NULL, 0);
	set_data(sqe, OP_ACCEPT, lfd);
}

static void arm_recv(int fd)
{
	struct io_uring_sqe *sqe = get_sqe();

	io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = BUF_GROUP;
	set_data(sqe, OP_RECV, fd);
}

static void close_conn(int fd)
{
	struct io_uring_sqe *sqe = get_sqe();

	io_uring_prep_close(sqe, fd);
	sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
	set_data(sqe, OP_CLOSE, fd);
}

/*
 * Queues n responses on fd. MSG_WAITALL makes the kernel finish a short send
 * itself, so a skipped (successful) CQE always means every byte went out.
 * Two sends on one socket could interleave if the first went async, but a
 * benchmarking client sends again only after it has read our answers, so a
 * connection never has more than one send in flight.
 */
static void send_responses(int fd, unsigned n)
{
	while (n > 0) {
		unsigned k = n < BATCH_MAX ? n : BATCH_MAX;
		struct io_uring_sqe *sqe = get_sqe();

		io_uring_prep_send(sqe, fd, batch, k * RESPONSE_BYTES, MSG_WAITALL);
		sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
		set_data(sqe, OP_SEND, fd);
		n -= k;
	}
}

/* Counts "\r\n\r\n" in p[0..len), carrying a partial match across reads. */
static unsigned count_requests(int fd, const unsigned char *p, size_t len)
{
	static const char term[4] = "\r\n\r\n";
	unsigned state = matched[fd], n = 0;

	for (size_t i = 0; i < len; i++) {
		if (p[i] == term[state]) {
			if (++state == 4) {
				n++;
				state = 0;
			}
		} else {
			/* The only proper prefix that can restart is "\r". */
			state = p[i] == '\r';
		}
	}
	matched[fd] = (unsigned char)state;
	return n;
}

static void recycle(unsigned bid)
{
	io_uring_buf_ring_add(buf_ring, bufs + (size_t)bid * BUF_BYTES, BUF_BYTES, (unsigned short)bid,
	                      io_uring_buf_ring_mask(BUF_COUNT), 0);
	io_uring_buf_ring_advance(buf_ring, 1);
}

static void on_recv(int fd, const struct io_uring_cqe *cqe)
{
	if (cqe->flags & IORING_CQE_F_BUFFER) {
		unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;

		if (cqe->res > 0) {
			unsigned n = count_requests(fd, (const unsigned char *)bufs + (size_t)bid * BUF_BYTES,
			                            (size_t)cqe->res);
			send_responses(fd, n);
		}
		recycle(bid);
	}
	if (cqe->flags & IORING_CQE_F_MORE)
		return;
	/* The multishot recv ended: out of buffers or data, re-arm; EOF or error, close. */
	if (cqe->res > 0 || cqe->res == -ENOBUFS)
		arm_recv(fd);
	else
		close_conn(fd);
}

static void on_accept(int lfd, const struct io_uring_cqe *cqe)
{
	int fd = cqe->res, one = 1;

	if (!(cqe->flags & IORING_CQE_F_MORE))
		arm_accept(lfd);
	if (fd < 0)
		return; /* e.g. EMFILE: the client sees a refused connection */
	if (fd >= FD_MAX) {
		close(fd);
		return;
	}
	matched[fd] = 0;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	arm_recv(fd);
}

static int listen_on(const char *spec)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	const char *colon = strrchr(spec, ':');
	char host[64];
	int fd, one = 1;

	if (!colon || colon == spec || (size_t)(colon - spec) >= sizeof(host))
		goto usage;
	memcpy(host, spec, (size_t)(colon - spec));
	host[colon - spec] = '\0';
	sa.sin_port = htons((unsigned short)atoi(colon + 1));
	if (inet_pton(AF_INET, host, &sa.sin_addr) != 1 || sa.sin_port == 0)
		goto usage;
	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		die("socket", errno);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		die("bind", errno);
	if (listen(fd, 4096) < 0)
		die("listen", errno);
	return fd;
usage:
	fprintf(stderr, "usage: floor ADDR:PORT (IPv4)\n");
	exit(2);
}

static void setup_ring(void)
{
	struct io_uring_params p = {
	    .flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
	};
	struct io_uring_buf_reg reg = {.ring_entries = BUF_COUNT, .bgid = BUF_GROUP};
	size_t ring_bytes = BUF_COUNT * sizeof(struct io_uring_buf);
	int ret;

	ret = io_uring_queue_init_params(RING_ENTRIES, &ring, &p);
	if (ret == -EINVAL) { /* kernel older than 6.1 */
		memset(&p, 0, sizeof(p));
		ret = io_uring_queue_init_params(RING_ENTRIES, &ring, &p);
	}
	if (ret < 0)
		die("io_uring_queue_init", -ret);
	ret = io_uring_register_ring_fd(&ring);
	if (ret < 0)
		die("io_uring_register_ring_fd", -ret);

	/* liburing 2.3 lacks io_uring_setup_buf_ring: map and register by hand. */
	buf_ring = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf_ring == MAP_FAILED)
		die("mmap", errno);
	bufs = malloc((size_t)BUF_COUNT * BUF_BYTES);
	if (!bufs)
		die("malloc", ENOMEM);
	reg.ring_addr = (unsigned long)buf_ring;
	ret = io_uring_register_buf_ring(&ring, &reg, 0);
	if (ret < 0)
		die("io_uring_register_buf_ring", -ret);
	io_uring_buf_ring_init(buf_ring);
	for (unsigned i = 0; i < BUF_COUNT; i++)
		io_uring_buf_ring_add(buf_ring, bufs + (size_t)i * BUF_BYTES, BUF_BYTES, (unsigned short)i,
		                      io_uring_buf_ring_mask(BUF_COUNT), (int)i);
	io_uring_buf_ring_advance(buf_ring, BUF_COUNT);
}

int main(int argc, char **argv)
{
	int lfd;

	if (argc != 2) {
		fprintf(stderr, "usage: floor ADDR:PORT\n");
		return 2;
	}
	for (unsigned i = 0; i < BATCH_MAX; i++)
		memcpy(batch + i * RESPONSE_BYTES, response, RESPONSE_BYTES);
	lfd = listen_on(argv[1]);
	setup_ring();
	arm_accept(lfd);

	for (;;) {
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		int ret = io_uring_submit_and_wait(&ring, 1);

		if (ret < 0 && ret != -EINTR)
			die("io_uring_submit_and_wait", -ret);
		io_uring_for_each_cqe(&ring, head, cqe)
		{
			int fd = (int)(cqe->user_data >> 2);

			switch (cqe->user_data & 3) {
			case OP_ACCEPT: on_accept(fd, cqe); break;
			case OP_RECV: on_recv(fd, cqe); break;
			default:
				/*
				 * Only failed sends and closes report. A failed send
				 * means the peer is gone; its recv will see that and
				 * close the connection.
				 */
				break;
			}
			seen++;
		}
		io_uring_cq_advance(&ring, seen);
	}
}
