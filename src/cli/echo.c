/*
 * keel echo: a TCP echo server, the runtime's first real program.
 *
 * Each connection runs a multishot receive from the loop's buffer pool and
 * sends the very buffers it received back (no copy), in order, batching all
 * that queued up into one sendmsg. A connection that queues more than
 * ECHO_QUEUE_MAX unsent buffers (a peer that writes but does not read) stops
 * receiving until its queue drains: its memory stays bounded and the shared
 * pool cannot be drained by one peer. Per-worker limits: connections; when
 * full, accepting pauses and the kernel backlog holds the rest.
 */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cli.h"

#define ECHO_QUEUE_MAX 16 /* unsent buffers before a connection stops receiving */
#define ECHO_BATCH 8      /* buffers per sendmsg */

struct echo_cfg {
	const char *listen;
	int workers;
	long conns_max;
	long grace_ms;
};

struct echo_worker;

struct conn {
	struct echo_worker *w;
	int fd;
	keel_buf *qhead, *qtail; /* received, not yet sent (chained through buf->next) */
	unsigned nqueue;
	keel_buf *sending[ECHO_BATCH];
	unsigned nsending;
	keel_promise *recv; /* the receive stream, while it runs */
	bool eof, closing, paused;
	struct conn *prev, *next;
};

struct echo_worker {
	keel_loop *loop;
	const struct echo_cfg *cfg;
	int lfd;
	keel_acceptor acc;
	bool stopping;
	long nconns;
	struct conn *conns;
	struct conn *free_conns;
	keel_promise *grace; /* the stop deadline, while it runs */
};

static void conn_flush(struct conn *c);
static void conn_read(struct conn *c);
static void conn_open(struct echo_worker *w, int fd);

static struct conn *conn_new(struct echo_worker *w, int fd)
{
	struct conn *c = w->free_conns;
	if (c)
		w->free_conns = c->next;
	else if (!(c = malloc(sizeof(*c))))
		return NULL;
	memset(c, 0, sizeof(*c));
	c->w = w;
	c->fd = fd;
	c->next = w->conns;
	if (w->conns)
		w->conns->prev = c;
	w->conns = c;
	w->nconns++;
	return c;
}

static void conn_closed(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	struct conn *c = ud;
	struct echo_worker *w = c->w;
	if (c->prev)
		c->prev->next = c->next;
	else
		w->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->next = w->free_conns;
	w->free_conns = c;
	w->nconns--;
	if (w->stopping) {
		if (w->nconns == 0 && w->grace)
			keel_promise_cancel(w->grace); /* nothing left to wait for */
		return;
	}
	keel_acceptor_conn_gone(&w->acc); /* one held past the limit, or accepting, goes on */
}

static void conn_close(struct conn *c)
{
	if (c->closing)
		return;
	c->closing = true;
	while (c->qhead) {
		keel_buf *b = c->qhead;
		c->qhead = b->next;
		keel_buf_release(b);
	}
	c->qtail = NULL;
	c->nqueue = 0;
	/* keel_close cancels the receive stream and any send still in flight. */
	keel_promise_done(keel_close(c->w->loop, c->fd), conn_closed, c);
}

/* Close once the peer has finished sending and everything was echoed. */
static void conn_maybe_done(struct conn *c)
{
	if (c->eof && !c->recv && c->nqueue == 0 && c->nsending == 0)
		conn_close(c);
}

static void send_done(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct conn *c = ud;
	for (unsigned i = 0; i < c->nsending; i++)
		keel_buf_release(c->sending[i]);
	c->nsending = 0;
	if (c->closing)
		return;
	if (o.err) {
		conn_close(c);
		return;
	}
	if (c->nqueue)
		conn_flush(c);
	else if (c->paused && !c->recv && !c->eof)
		conn_read(c);
	conn_maybe_done(c);
}

static void conn_flush(struct conn *c)
{
	struct iovec iov[ECHO_BATCH];
	unsigned n = 0;
	while (c->qhead && n < ECHO_BATCH) {
		keel_buf *b = c->qhead;
		c->qhead = b->next;
		iov[n].iov_base = b->data;
		iov[n].iov_len = b->len;
		c->sending[n++] = b;
	}
	if (!c->qhead)
		c->qtail = NULL;
	c->nqueue -= n;
	c->nsending = n;
	keel_promise_done(keel_sendv(c->w->loop, c->fd, iov, (int)c->nsending), send_done, c);
}

static int on_data(void *ud, keel_buf *buf)
{
	struct conn *c = ud;
	if (c->closing)
		return KEEL_STOP;
	keel_buf_hold(buf);
	buf->next = NULL;
	if (c->qtail)
		c->qtail->next = buf;
	else
		c->qhead = buf;
	c->qtail = buf;
	c->nqueue++;
	if (c->nsending == 0)
		conn_flush(c);
	if (c->nqueue >= ECHO_QUEUE_MAX) {
		c->paused = true; /* resumes when the queue drains */
		return KEEL_STOP;
	}
	return KEEL_CONTINUE;
}

static void recv_ended(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct conn *c = ud;
	c->recv = NULL;
	if (c->closing)
		return;
	if (o.err == -ECANCELED && c->paused) {
		if (c->nqueue == 0 && c->nsending == 0)
			conn_read(c);
		return;
	}
	if (o.err && o.err != -ECANCELED) {
		conn_close(c); /* reset or other error: nothing more to echo */
		return;
	}
	c->eof = true; /* the peer finished: close (FIN) once everything is echoed */
	conn_maybe_done(c);
}

static void conn_read(struct conn *c)
{
	c->paused = false;
	keel_promise *p = keel_recv_stream(c->w->loop, c->fd, on_data, c);
	c->recv = p;
	keel_promise_done(p, recv_ended, c);
}

static void conn_open(struct echo_worker *w, int fd)
{
	struct conn *c = conn_new(w, fd);
	if (!c) {
		close(fd);
		return;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	conn_read(c);
}

static void acc_open(void *ud, int fd)
{
	conn_open(ud, fd);
}

static unsigned acc_live(void *ud)
{
	struct echo_worker *w = ud;
	return (unsigned)w->nconns;
}

/* An echo connection is never idle in the server's sense: none is closed to make room. */
static const keel_acceptor_ops acceptor_ops = {.open = acc_open, .live = acc_live};

static void grace_over(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct echo_worker *w = ud;
	w->grace = NULL;
	if (o.err == -ECANCELED)
		return; /* every connection finished in time */
	for (struct conn *c = w->conns; c; c = c->next)
		conn_close(c);
}

static void echo_stop(keel_loop *loop, void *arg)
{
	(void)arg;
	struct echo_worker *w = keel_loop_data(loop);
	if (w->stopping)
		return;
	w->stopping = true;
	/* Stop accepting (held connections, never served, close now), give open ones the grace period. */
	keel_acceptor_stop(&w->acc, false);
	keel_promise_release(keel_close(loop, w->lfd));
	w->lfd = -1;
	if (w->nconns) {
		w->grace = keel_sleep(loop, (uint64_t)w->cfg->grace_ms);
		keel_promise_done(w->grace, grace_over, w);
	}
	/* (echo_worker_main's loop ends once no connection is left) */
}

static int echo_worker_main(keel_loop *loop, int index, const int *lfds, int nlfds, void *arg)
{
	int lfd = lfds[0]; /* (one listen address: nlfds is 1) */
	(void)nlfds;
	(void)index;
	struct echo_worker w;
	memset(&w, 0, sizeof(w));
	w.loop = loop;
	w.cfg = arg;
	w.lfd = lfd;
	keel_loop_set_data(loop, &w);
	keel_acceptor_init(&w.acc, loop, (unsigned)w.cfg->conns_max, &acceptor_ops, &w);
	keel_acceptor_start(&w.acc, lfd);
	keel__worker_serving();
	/* Until stopped and every connection has gone; each tick that changes either returns here. */
	while (!w.stopping || w.nconns > 0) {
		int err = keel_loop_run_once(loop, -1);
		if (err < 0) {
			keel_log(KEEL_LOG_ERROR, "loop: %s", keel_strerror(err));
			return CLI_FAIL;
		}
	}
	/* Let the last closes complete: keel_loop_run returns once no work remains. */
	keel_loop_run(loop);
	keel_acceptor_fini(&w.acc);
	while (w.free_conns) {
		struct conn *next = w.free_conns->next;
		free(w.free_conns);
		w.free_conns = next;
	}
	keel_loop_set_data(loop, NULL);
	return CLI_OK;
}

static void echo_usage(FILE *f)
{
	fputs("usage: keel echo [--listen ADDR:PORT] [--workers N] [--max-conns N] [--grace-ms MS]\n"
	      "  --listen     address to listen on (default 127.0.0.1:7000; port 0 picks one)\n"
	      "  --workers    worker threads, each with its own loop (default: online CPUs)\n"
	      "  --max-conns  connections per worker before accepting pauses (default 10000)\n"
	      "  --grace-ms   on SIGINT/SIGTERM, time open connections get to finish (default 5000)\n",
	      f);
}

int cli_echo(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"listen", required_argument, NULL, 'l'},
	    {"workers", required_argument, NULL, 'w'},
	    {"max-conns", required_argument, NULL, 'm'},
	    {"grace-ms", required_argument, NULL, 'g'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	struct echo_cfg cfg = {"127.0.0.1:7000", ncpu > 0 ? (int)ncpu : 1, 10000, 5000};
	int c;
	optind = 1;
	opterr = 0; /* our own message: getopt would name the program "echo" */
	while ((c = getopt_long(argc, argv, ":l:w:h", opts, NULL)) != -1) {
		switch (c) {
		case 'l': cfg.listen = optarg; break;
		case 'w': cfg.workers = (int)cli_parse_long("--workers", optarg, 1, 1024); break;
		case 'm': cfg.conns_max = cli_parse_long("--max-conns", optarg, 1, 1000000); break;
		case 'g': cfg.grace_ms = cli_parse_long("--grace-ms", optarg, 0, 3600000); break;
		case 'h': echo_usage(stdout); return CLI_OK;
		case ':':
			fprintf(stderr, "keel echo: %s needs a value\n", argv[optind - 1]);
			echo_usage(stderr);
			return CLI_USAGE;
		default:
			fprintf(stderr, "keel echo: unknown option '%s'\n", argv[optind - 1]);
			echo_usage(stderr);
			return CLI_USAGE;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "keel echo: unexpected argument '%s'\n", argv[optind]);
		echo_usage(stderr);
		return CLI_USAGE;
	}
	struct sockaddr_storage ss;
	socklen_t len;
	if (keel_addr_parse(cfg.listen, &ss, &len) < 0) {
		fprintf(stderr, "keel echo: --listen: bad address '%s' (expected IP:PORT or [IPv6]:PORT)\n",
		        cfg.listen);
		return CLI_USAGE;
	}
	return cli_run_workers("echo", cfg.listen, cfg.workers, echo_worker_main, echo_stop, &cfg);
}
