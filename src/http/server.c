/*
 * The HTTP server's own life: configuration, the acceptor that brings it
 * connections (keel/acceptor.h: the cap, held descriptors, idle ones closed
 * for room, EMFILE backoff), the graceful stop, the trim after a burst, and
 * the free. The protocol's connections (h1_conn.c) report here as they open
 * and go; everything that reads requests and writes responses is elsewhere
 * (see server_internal.h for the map).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "http_internal.h"
#include "keel/acceptor.h"
#include "keel/errors.h"
#include "keel/http.h"
#include "keel/log.h"
#include "keel/tcp.h"
#include "server_internal.h"
#include "tunnel.h"

/* Connections open and not being closed: what conns_max bounds. */
static unsigned conns_live(void *ud)
{
	keel_http_server *s = ud;
	return s->nconns - s->nclosing + s->npreambles;
}

static void acc_open(void *ud, int fd, unsigned listener)
{
	keel_http_server *s = ud;
	if (s->listen_flags[listener] & KEEL_HTTP_LISTEN_PROXY_PROTOCOL)
		keel__preamble_start(s, fd);
	else
		keel__h1_open(s, fd, NULL, 0);
}

static unsigned acc_reclaim(void *ud, unsigned n)
{
	unsigned done = keel__h1_idle_reclaim(ud, n);
	return done < n ? done + keel__h2_idle_reclaim(ud, n - done) : done;
}

static bool acc_reclaimable(void *ud)
{
	return keel__h1_idle_pick(ud) != NULL || keel__h2_idle_reclaimable(ud);
}

static bool acc_idle(void *ud)
{
	keel_http_server *s = ud;
	return s->nidle > 0 || keel__h2_idle_any(s);
}

static void acc_quiet(void *ud)
{
	keel__server_maybe_stopped(ud);
}

static const keel_acceptor_ops acceptor_ops = {
    .open_from = acc_open,
    .live = conns_live,
    .reclaim = acc_reclaim,
    .reclaimable = acc_reclaimable,
    .idle = acc_idle,
    .idle_grace_ms = FRESH_GRACE_MS,
    .quiet = acc_quiet,
};

static void trim_due(keel_loop *loop, keel_timer *t);
static void grace_over(keel_loop *loop, keel_timer *t);

void keel_http_config_default(keel_http_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	keel_http_limits_default(&cfg->limits);
	cfg->body_max = 1 << 20;
	cfg->conns_max = 10000;
	cfg->pipeline_max = 32;
	cfg->header_timeout_ms = 10000;
	cfg->body_timeout_ms = 30000;
	cfg->idle_timeout_ms = 60000;
	cfg->send_timeout_ms = 30000;
	cfg->server_name = "keel";
	cfg->access_log_fd = -1;
	cfg->queue_delay_max_us = 20000;
	cfg->inflight_max = 10000;
	cfg->conn_out_max = 1 << 20;
	cfg->body_mem_max = 64 << 20;
	cfg->h2_streams_max = 100;
}

int keel_http_server_new(keel_http_server **out, keel_loop *loop, const keel_http_config *cfg)
{
	*out = NULL;
	keel_http_config c;
	if (cfg)
		c = *cfg;
	else
		keel_http_config_default(&c);
	if (!loop || !c.limits.headers_max || !c.pipeline_max || !c.conns_max)
		return -EINVAL;
	if (c.server_name && !keel__wire_ok(c.server_name, true))
		return -EINVAL; /* it goes into every response's head */
	struct keel__cidr trusted[KEEL__CIDRS_MAX];
	const char *bad;
	int ntrusted = c.real_ip_from ? keel__cidrs_parse(c.real_ip_from, trusted, KEEL__CIDRS_MAX, &bad) : 0;
	if (ntrusted < 0 || c.real_ip_header < KEEL_HTTP_REAL_IP_NONE ||
	    c.real_ip_header > KEEL_HTTP_REAL_IP_FORWARDED)
		return -EINVAL;
	keel_http_server *s = keel__calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->loop = loop;
	s->cfg = c;
	s->cfg.real_ip_from = NULL; /* (read: the caller's string is not kept) */
	memcpy(s->trusted, trusted, (size_t)ntrusted * sizeof(trusted[0]));
	s->ntrusted = (unsigned)ntrusted;
	keel_acceptor_init(&s->acc, loop, s->cfg.conns_max, &acceptor_ops, s);
	s->server_name_len = s->cfg.server_name ? strlen(s->cfg.server_name) : 0;
	s->req_size = sizeof(keel_http_request) + s->cfg.limits.headers_max * sizeof(keel_http_header);
	keel_timer_init(&s->grace, grace_over);
	keel_timer_init(&s->trim_timer, trim_due);
	*out = s;
	return 0;
}

/* The Date header, formatted at most once per second. */
void keel__server_date_update(keel_http_server *s)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME_COARSE, &ts);
	if (ts.tv_sec == s->date_sec && s->date_len)
		return;
	s->date_sec = ts.tv_sec;
	s->date_len = keel__http_date(ts.tv_sec, s->date, sizeof(s->date));
}

/* Free lists down to TRIM_KEEP each, then the loop's own (keel_loop_trim). */
static void server_trim(keel_http_server *s)
{
	keel__h1_trim(s, TRIM_KEEP);
	keel__h2_trim(s, TRIM_KEEP);
	keel__req_trim(s, TRIM_KEEP);
	keel_loop_trim(s->loop);
	s->peak_conns = s->nconns;
}

static void trim_due(keel_loop *loop, keel_timer *t)
{
	(void)loop;
	keel_http_server *s = keel_container_of(t, keel_http_server, trim_timer);
	if (!s->stopping && s->nconns * 4 <= s->peak_conns)
		server_trim(s); /* (a new burst since: the next close looks again) */
}

void keel__server_maybe_stopped(keel_http_server *s)
{
	/*
	 * Stopped only when nothing refers to the server: no connection,
	 * accept, backoff or log write. The last log lines are written first
	 * (log_written comes back here), so that once the promise resolves the
	 * server may be freed.
	 */
	if (!s->stopping || s->nconns || s->npreambles || !s->stopped || keel_acceptor_busy(&s->acc) ||
	    s->log_writing)
		return;
	keel_timer_disarm(s->loop, &s->grace);
	keel_timer_disarm(s->loop, &s->trim_timer);
	if (!keel__log_stop(s))
		return; /* (log_written comes back here) */
	keel_promise *p = s->stopped;
	s->stopped = NULL;
	keel_promise_resolve(p, 0, NULL);
	for (unsigned i = 0; i < s->nstopped_more; i++)
		keel_promise_resolve(s->stopped_more[i], 0, NULL);
	free(s->stopped_more);
	s->stopped_more = NULL;
	s->nstopped_more = 0;
}

/* A connection of the protocol's was opened (it is on s->conns). */
void keel__server_conn_opened(keel_http_server *s)
{
	s->nconns++;
	if (s->nconns > s->peak_conns)
		s->peak_conns = s->nconns;
	s->stats.connections++;
	s->stats.conns_open = s->nconns;
}

/* A connection's descriptor was released (it has left s->conns). */
void keel__server_conn_gone(keel_http_server *s)
{
	s->nconns--;
	s->nclosing--;
	s->stats.conns_open = s->nconns;
	if (s->peak_conns > 2 * TRIM_KEEP && s->nconns * 4 <= s->peak_conns && !s->stopping &&
	    !keel_timer_is_armed(&s->trim_timer))
		keel_timer_arm(s->loop, &s->trim_timer, TRIM_AFTER_MS);
	keel_acceptor_conn_gone(&s->acc);
	keel__server_maybe_stopped(s);
}

const char *keel__addr_host(const struct sockaddr *sa, char *buf, size_t size)
{
	if (sa->sa_family == AF_UNIX) {
		snprintf(buf, size,
		         "unix:"); /* (a Unix socket's client has no address: nginx's $remote_addr too) */
		return buf;
	}
	keel_addr_format(sa, buf, size);
	char *colon = strrchr(buf, ':'); /* the host alone */
	if (colon)
		*colon = '\0';
	if (buf[0] == '[') {
		memmove(buf, buf + 1, strlen(buf));
		buf[strlen(buf) - 1] = '\0';
	}
	return buf;
}

/* The client's address on tp, host alone ("127.0.0.1", "::1"), looked up once into *cache (freed by the caller). */
const char *keel__conn_peer(keel_transport *tp, char **cache)
{
	char *p = *cache;
	if (p)
		return p;
	struct sockaddr_storage ss;
	if (!(p = *cache = keel__malloc(48)))
		return "-";
	if (keel_transport_peer(tp, &ss) == 0)
		keel__addr_host((struct sockaddr *)&ss, p, 48);
	else
		strcpy(p, "-");
	return p;
}

int keel_http_server_start(keel_http_server *s, int lfd)
{
	return keel_http_server_listen(s, lfd, 0);
}

int keel_http_server_listen(keel_http_server *s, int lfd, unsigned flags)
{
	if (flags & ~(unsigned)KEEL_HTTP_LISTEN_PROXY_PROTOCOL)
		return -EINVAL;
	unsigned i = s->acc.nls;
	if (i < KEEL_ACCEPTOR_LISTENERS_MAX)
		s->listen_flags[i] = flags; /* (before the socket's first accept can come) */
	return keel_acceptor_start(&s->acc, lfd);
}

int keel_http_server_adopt(keel_http_server *s, int fd)
{
	if (fd < 0)
		return -EINVAL;
	if (s->stopping) {
		close(fd);
		return KEEL_ESTOPPED;
	}
	keel__h1_open(s, fd, NULL, 0);
	return 0;
}

static void grace_over(keel_loop *loop, keel_timer *t)
{
	(void)loop;
	keel_http_server *s = keel_container_of(t, keel_http_server, grace);
	keel__h1_close_all(s);
	keel__h2_close_all(s);
	keel__ws_close_all(s);
	keel__tunnel_close_all(s);
}

keel_promise *keel_http_server_stop(keel_http_server *s, uint64_t grace_ms)
{
	keel_promise *p = keel_promise_new(s->loop);
	if (s->stopping) {
		/*
		 * Stopped already, or stopping: this promise resolves with the
		 * first one, and a shorter grace cuts the wait (a second ^C).
		 */
		keel_promise **more =
		    s->stopped ? keel__realloc(s->stopped_more, (s->nstopped_more + 1) * sizeof(*more))
		               : NULL;
		if (!more) {
			keel_promise_resolve(p, 0, NULL);
			return p;
		}
		s->stopped_more = more;
		more[s->nstopped_more++] = p;
		uint64_t now = keel_loop_now_ns(s->loop), due = keel_timer_deadline_ns(&s->grace);
		if (keel_timer_is_armed(&s->grace) && due > now && (due - now) / 1000000 > grace_ms)
			keel_timer_arm(s->loop, &s->grace, grace_ms); /* (in ms left: no overflow) */
		return p;
	}
	s->stopping = true;
	s->stopped = p;
	keel_acceptor_stop(&s->acc, !s->cfg.listener_keep);
	keel__preamble_stop_all(s);
	keel__h1_drain_all(s);
	keel__h2_drain_all(s);
	keel__ws_drain_all(s);
	keel_timer_arm(s->loop, &s->grace, grace_ms);
	if (s->log_buf[0])
		keel__log_flush(s);
	keel__server_maybe_stopped(s);
	return p;
}

void keel_http_server_free(keel_http_server *s)
{
	if (!s)
		return;
	if (s->nconns || s->npreambles || keel_acceptor_busy(&s->acc) || s->log_writing) {
		/*
		 * Connections, the accept stream or a write still hold the
		 * server: freeing it would leave their completions pointing at
		 * freed memory. A leak is the lesser harm.
		 */
		keel_log(KEEL_LOG_ERROR,
		         "keel_http_server_free: %u connections open%s%s; not freed "
		         "(free it once keel_http_server_stop has resolved)",
		         s->nconns, keel_acceptor_busy(&s->acc) ? ", still accepting" : "",
		         s->log_writing ? ", an access-log write under way" : "");
		return;
	}
	for (unsigned i = 0; i < s->nstatus_src; i++) {
		free(s->status_src[i].label);
		free(s->status_src[i].value);
	}
	keel_timer_disarm(s->loop, &s->grace);
	keel_timer_disarm(s->loop, &s->trim_timer);
	keel__log_free(s);
	keel__h1_trim(s, 0);
	keel__h2_free_shared(s);
	keel__req_zombies_free(s);
	keel__req_trim(s, 0);
	for (unsigned i = 0; i < s->nroutes; i++) {
		free(s->routes[i].method);
		free(s->routes[i].path);
	}
	free(s->routes);
	keel_acceptor_fini(&s->acc);
	free(s);
}

static unsigned lat_bucket(uint64_t us)
{
	if (us < 4)
		return (unsigned)us;
	unsigned e = 63u - (unsigned)__builtin_clzll(us); /* >= 2 */
	unsigned b = 4 * (e - 1) + (unsigned)((us >> (e - 2)) & 3);
	return b < KEEL__LAT_BUCKETS ? b : KEEL__LAT_BUCKETS - 1;
}

/* The largest latency bucket b holds. */
static uint64_t lat_upper(unsigned b)
{
	if (b < 4)
		return b;
	unsigned e = b / 4 + 1, sub = b % 4;
	return ((uint64_t)(4 + sub + 1) << (e - 2)) - 1;
}

void keel__lat_record(keel_http_server *s, const keel_http_request *r)
{
	/*
	 * The start is the tick's time (the wait's return: about when the
	 * head's bytes were taken); the end is read now (vDSO: no syscall),
	 * so the work of the tick before this response counts too.
	 */
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	uint64_t now = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	uint64_t us = now > r->start_ns ? (now - r->start_ns + 999) / 1000 : 0; /* (rounded up) */
	s->lat[lat_bucket(us)]++;
	s->lat_n++;
	if (us > s->lat_max_us)
		s->lat_max_us = us;
}

void keel_http_server_latency(keel_http_server *s, keel_http_latency *out)
{
	*out = (keel_http_latency){.count = s->lat_n, .max_us = s->lat_max_us};
	uint64_t seen = 0, p50 = (s->lat_n + 1) / 2, p99 = s->lat_n - s->lat_n / 100;
	bool got50 = false, got99 = false;
	for (unsigned b = 0; b < KEEL__LAT_BUCKETS && seen < s->lat_n; b++) {
		seen += s->lat[b];
		uint64_t v = lat_upper(b) < s->lat_max_us ? lat_upper(b) : s->lat_max_us;
		if (!got50 && seen >= p50 && seen) {
			out->p50_us = v;
			got50 = true;
		}
		if (!got99 && seen >= p99 && seen) {
			out->p99_us = v;
			got99 = true;
		}
	}
	memset(s->lat, 0, sizeof(s->lat));
	s->lat_n = s->lat_max_us = 0;
}

void keel_http_server_stats(const keel_http_server *s, keel_http_stats *out)
{
	*out = s->stats;
	out->accept_pauses = s->acc.pauses;
}
