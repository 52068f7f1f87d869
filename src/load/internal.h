/*
 * What the files of keel load share: the run's configuration, a worker
 * thread with its connections, and the results. Each worker owns its loop,
 * its connections and its counters; the only state threads share is
 * struct load_shared (start and finish) and each worker's snapshot, both
 * under load_shared.mu.
 *
 *   request.c  the URL and the request bytes, formatted once (struct load_cfg)
 *   conn.c     one connection: connect, send, parse responses, reconnect;
 *              the open loop's schedule and pacer
 *   worker.c   one thread: its loop, clock, timeouts, snapshots, the stop
 *   run.c      load_run: start the workers, progress, signals, add up the results
 *   report.c   what is printed: progress, the results table, the JSON
 */
#ifndef KEEL_LOAD_INTERNAL_H
#define KEEL_LOAD_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include "keel/http_parse.h"
#include "keel/keel.h"
#include "load/hist.h"
#include "load/load.h"

#define LOAD_HEAD_MAX 65536           /* a response head larger than this is a parse error */
#define LOAD_HEADERS_MAX 128          /* response headers */
#define LOAD_HIST_MAX_US 100000000ull /* latencies tracked up to 100 s (more: top bucket) */
#define LOAD_HIST_DIGITS 3

/* What every worker reads and none writes: the options and what request.c derives from them. */
struct load_cfg {
	const load_opts *opts;
	struct sockaddr_storage addr; /* the URL's, to connect to */
	socklen_t addrlen;
	keel_str method; /* how responses are framed (HEAD has no body) */
	char *req;       /* one request */
	size_t req_len;
	char *batch; /* batch_n copies of req back to back */
	uint32_t batch_n;
	keel_tls_ctx *tls; /* https: the run's client context (load__tls_init); NULL: plain TCP */
	char tls_name[64]; /* https: the URL's host, for SNI and verification; "" for http */
};

/*
 * Parse o->url (setting tls_name for https) and format the request.
 * Returns 0, -EINVAL for a URL load_url_parse rejects, or -ENOMEM. cfg
 * borrows o.
 */
int load__cfg_init(struct load_cfg *cfg, const load_opts *o);
/*
 * https: make cfg->tls from the options (nothing for http). Returns 0, or
 * what keel_tls_ctx_new returned, said on stderr (an unreadable CA file).
 */
int load__tls_init(struct load_cfg *cfg);
/* Free what load__cfg_init and load__tls_init allocated; cfg may be zeroed. */
void load__cfg_fini(struct load_cfg *cfg);

enum err_kind { E_CONNECT, E_READ, E_TIMEOUT, E_4XX, E_5XX, E_SHED, E_PARSE, E_KINDS };

struct counters {
	uint64_t sent;                /* requests handed to a send (again if re-sent after a reconnect) */
	uint64_t scheduled;           /* open loop: requests that came due */
	uint64_t responses;           /* complete responses, any status */
	uint64_t ok;                  /* 2xx and 3xx */
	uint64_t bytes_in, bytes_out; /* plaintext, with https */
	uint64_t errors[E_KINDS];
	/*
	 * Requests sent again on a new connection: their kept-alive connection
	 * closed before any byte of the answer (they crossed the server's close
	 * of an idle connection), and the method is idempotent (RFC 9110 9.2.2),
	 * as browsers retry them.
	 */
	uint64_t retried;
	/*
	 * https: handshakes completed and of those resumed (the endpoint's
	 * counts when the run ended), and handshakes that failed, by why: the
	 * certificate did not verify (KEEL_ETLSCERT), or anything else in TLS
	 * (KEEL_ETLSHS, or KEEL_ETLS). The failures are connect errors as well.
	 */
	uint64_t tls_handshakes, tls_resumed, tls_failed_cert, tls_failed_other;
};

static inline uint64_t errors_total(const struct counters *c)
{
	uint64_t n = 0;
	for (int i = 0; i < E_KINDS; i++)
		n += c->errors[i];
	return n;
}

struct snapshot {
	struct counters c;
	uint64_t p99_us;
	uint64_t at_ns; /* loop time of the snapshot, from the worker's start */
};

enum conn_state { C_CONNECTING, C_OPEN, C_CLOSING, C_BACKOFF, C_DONE };
enum parse_state { P_HEAD, P_LENGTH, P_CHUNKED, P_CLOSE };

struct worker;

struct conn {
	struct worker *w;
	keel_transport t; /* the byte stream once connected (t.fd -1 otherwise) */
	enum conn_state state;
	keel_promise *connect_p; /* while connecting, for a cancel at the end */
	keel_promise *sleep_p;   /* while backing off */
	bool recv_live, sending, closed, backoff_next;
	bool announced;     /* the server said it closes after the current response */
	bool answered;      /* a response arrived since this connection opened */
	uint32_t inflight;  /* requests queued or sent and not answered */
	uint32_t unsent;    /* the newest of those, not handed to a send yet */
	uint32_t head;      /* ring index of the oldest */
	uint64_t *start_ns; /* ring of pipeline start times (due times in open loop) */
	uint64_t wait_ns;   /* since when the oldest sent request has waited (timeouts) */
	uint32_t backoff_ms;
	enum parse_state pstate;
	int status;
	uint64_t body_left;
	keel_http_chunked chunked;
	char *stage; /* a head split across receive buffers (allocated on first use) */
	uint32_t stage_len;
	bool dirty; /* on the worker's list of connections to flush */
	struct conn *dirty_next;
};

/* What the threads share: starting together, finishing, the snapshots. */
struct load_shared {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int nready, ndone;
	bool go;
	const char *backend; /* of the first worker's loop */
};

struct interval {
	uint64_t ok, shed, p99_us;
};

struct worker {
	const struct load_cfg *cfg;
	struct load_shared *shared;
	int index;
	keel_loop *loop;
	keel_tls_endpoint *tls; /* https: this loop's TLS state, freed after its connections */
	pthread_t thread;
	bool loop_gone;
	int status; /* 0, or why this worker could not run */
	struct conn *conns;
	uint32_t nconns, nlive;
	uint32_t depth;
	uint64_t *slots;
	/* Open loop: request k of this worker is due at t0 + k * 1e9 / rate ns. */
	double rate;
	uint64_t t0_ns, end_ns, ended_ns;
	uint64_t seq_sent;   /* requests taken from the schedule */
	uint64_t free_slots; /* room for more requests on open connections */
	uint32_t cursor;
	uint64_t *retry; /* due times of requests to send again (their connection closed) */
	uint32_t retry_head, retry_len, retry_cap;
	struct conn *dirty;
	/*
	 * The pacer: a timerfd armed (absolute, ns) for the next due request,
	 * read through the loop. The loop's own timers count milliseconds,
	 * which would send requests in bursts up to 1 ms late.
	 */
	int pace_fd;
	uint64_t pace_armed_ns; /* 0: not armed */
	uint64_t pace_buf;
	bool pace_live;
	bool stopping, stop_asked;
	struct counters c;
	load_hist lat_ok, lat_all;
	/*
	 * Per-second intervals (for the JSON): successes, 503s and the p99 of
	 * the successes that completed in each second of the run.
	 */
	load_hist lat_iv;
	struct interval *iv;
	uint32_t niv, iv_cap;
	uint64_t iv_next_ns, iv_ok0, iv_shed0;
	keel_http_header headers[LOAD_HEADERS_MAX];
	keel_http_limits limits;
	struct snapshot snap; /* under shared->mu */
};

/* Open loop: how many requests are due by now, and when request k is. */
static inline uint64_t due_count(const struct worker *w, uint64_t now)
{
	if (now < w->t0_ns)
		return 0;
	return (uint64_t)((double)(now - w->t0_ns) * w->rate / 1e9) + 1;
}

static inline uint64_t due_time(const struct worker *w, uint64_t k)
{
	return w->t0_ns + (uint64_t)((double)k * 1e9 / w->rate);
}

/* conn.c: a connection's life, and the open loop's schedule. */

/* Open c to the URL's address; it starts taking requests once connected. */
void load__conn_connect(struct conn *c);
/* At the end of the run (w->stopping): cancel or close whatever c is doing. */
void load__conn_stop(struct conn *c);
/* Drop every connection whose oldest sent request has waited the timeout without a response. */
void load__check_timeouts(struct worker *w, uint64_t now);
/* Open loop: give due requests to connections with room, send them, re-arm the pacer. */
void load__dispatch(struct worker *w);

/* worker.c: one thread. */

/*
 * Set up w for nconns connections and rate requests/s (0: closed loop).
 * Borrows cfg and shared. Returns 0 or -ENOMEM; load__worker_fini either way.
 */
int load__worker_init(struct worker *w, const struct load_cfg *cfg, struct load_shared *shared, int index,
                      uint32_t nconns, double rate);
void load__worker_fini(struct worker *w);
/* The thread: creates the loop, waits for shared->go, runs, frees the loop. */
void *load__worker_thread(void *arg);
/* Posted to a worker's loop (ud: the worker) to end its run early. */
void load__worker_stop(keel_loop *loop, void *ud);

/* The run's results, added up over the workers (run.c) for report.c. */
struct results {
	struct counters c;
	load_hist lat_ok, lat_all;
	double duration_s;
	bool tls; /* https: the tls_ counters mean something */
	const char *backend;
	const struct interval *iv; /* the first worker's seconds (all of them with one thread) */
	uint32_t niv;
};

/* report.c: what is printed. */

/* The line on stderr as the run starts. */
void load__print_start(const load_opts *o, const char *backend);
/* The progress line on stderr, once a second. */
void load__print_progress(double elapsed_s, double rate, uint64_t responses, uint64_t errors,
                          uint64_t p99_us);
/* The results table on stdout. */
void load__print_results(const load_opts *o, const struct results *r);
/* The results as JSON, to o->json_path. Returns 0 or -errno. */
int load__write_json(const load_opts *o, const struct results *r);

#endif
