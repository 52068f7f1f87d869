/*
 * The status page (/_keel/status): the server's counters and gauges, the
 * loop's, the process's resident memory, and whatever sources the program
 * added (keel_http_status_add), as text, in Prometheus' format, or as JSON.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "keel/http.h"
#include "keel/loop.h"
#include "server_internal.h"

/* /proc/self/statm, opened once per process by whichever worker thread asks first. */
static int statm_fd = -1;
static pthread_once_t statm_once = PTHREAD_ONCE_INIT;

static void statm_open(void)
{
	statm_fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
}

/* Resident set size in bytes, from /proc/self/statm (a procfs read: no disk). */
static uint64_t rss_bytes(void)
{
	pthread_once(&statm_once, statm_open);
	char b[128];
	ssize_t n = statm_fd >= 0 ? pread(statm_fd, b, sizeof(b) - 1, 0) : -1;
	if (n <= 0)
		return 0;
	b[n] = '\0';
	unsigned long long size, resident;
	if (sscanf(b, "%llu %llu", &size, &resident) != 2)
		return 0;
	return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* snprintf at out[*n], clamped: a line that does not fit is dropped, never written past cap. */
__attribute__((format(printf, 4, 5))) static void appendf(char *out, size_t cap, size_t *n, const char *fmt,
                                                          ...)
{
	if (*n >= cap)
		return;
	va_list ap;
	va_start(ap, fmt);
	int w = vsnprintf(out + *n, cap - *n, fmt, ap);
	va_end(ap);
	if (w > 0 && (size_t)w < cap - *n)
		*n += (size_t)w;
	else
		out[*n] = '\0'; /* (too long: left out) */
}

int keel_http_status_add(keel_http_server *s, const char *label, const char *value, keel_http_metrics_fn fn,
                         void *ud)
{
	if (!fn ||
	    (label && (!value || strlen(label) > 200 || strlen(value) > 200 || strpbrk(value, "\"\\\n"))))
		return -EINVAL;
	if (s->nstatus_src >= STATUS_SOURCES_MAX)
		return -ENOSPC;
	struct status_source *src = &s->status_src[s->nstatus_src];
	src->label = label ? strdup(label) : NULL;
	src->value = label ? strdup(value) : NULL;
	if (label && (!src->label || !src->value)) {
		free(src->label);
		free(src->value);
		return -ENOMEM;
	}
	src->fn = fn;
	src->ud = ud;
	s->nstatus_src++;
	return 0;
}

/* s as a JSON string's contents (quotes and backslashes escaped, control characters as \u00XX). */
static void append_json_str(char *out, size_t cap, size_t *n, const char *s)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			appendf(out, cap, n, "\\%c", c);
		else if (c < 0x20)
			appendf(out, cap, n, "\\u%04x", c);
		else
			appendf(out, cap, n, "%c", c);
	}
}

static bool query_has(const keel_http_request *req, const char *what)
{
	size_t len = strlen(what);
	return req->query.len >= len && memmem(req->query.ptr, req->query.len, what, len);
}

/*
 * ?format=json: {"worker": LABEL or null, "metrics": {NAME: VALUE, ...},
 * "sources": [{"labels": {LABEL: VALUE}, "metrics": {...}}, ...]}, one
 * entry per source that keel_http_status_add added, in that order.
 */
static void status_json(char *out, size_t cap, size_t *n, const char *label, size_t llen,
                        const char *const *names, const uint64_t *vals, size_t nm, const keel_http_server *s)
{
	appendf(out, cap, n, "{\"worker\": ");
	if (label) {
		char lab[257];
		snprintf(lab, sizeof(lab), "%.*s", (int)llen, label);
		appendf(out, cap, n, "\"");
		append_json_str(out, cap, n, lab);
		appendf(out, cap, n, "\"");
	} else {
		appendf(out, cap, n, "null");
	}
	appendf(out, cap, n, ",\n \"metrics\": {");
	for (size_t i = 0; i < nm; i++)
		appendf(out, cap, n, "%s\"%s\": %llu", i ? ", " : "", names[i], (unsigned long long)vals[i]);
	appendf(out, cap, n, "},\n \"sources\": [");
	for (unsigned i = 0; i < s->nstatus_src; i++) {
		const struct status_source *src = &s->status_src[i];
		keel_http_metric x[STATUS_SOURCE_METRICS];
		unsigned k = src->fn(src->ud, x, STATUS_SOURCE_METRICS);
		appendf(out, cap, n, "%s\n  {\"labels\": {", i ? "," : "");
		if (src->label) {
			appendf(out, cap, n, "\"");
			append_json_str(out, cap, n, src->label);
			appendf(out, cap, n, "\": \"");
			append_json_str(out, cap, n, src->value);
			appendf(out, cap, n, "\"");
		}
		appendf(out, cap, n, "}, \"metrics\": {");
		for (unsigned j = 0; j < k && j < STATUS_SOURCE_METRICS; j++)
			appendf(out, cap, n, "%s\"%s\": %llu", j ? ", " : "", x[j].name,
			        (unsigned long long)x[j].value);
		appendf(out, cap, n, "}}");
	}
	appendf(out, cap, n, "]}\n");
}

keel_promise *keel_http_status(keel_http_request *req, void *ud)
{
	const char *label = ud;
	keel_http_server *s = req->server;
	keel_loop_stats ls;
	keel_loop_get_stats(req->loop, &ls);
	keel_http_stats stats;
	keel_http_server_stats(s, &stats);
	const keel_http_stats *st = &stats;
	bool prom = query_has(req, "format=prometheus"), json = query_has(req, "format=json");
	struct {
		const char *name, *type, *help;
		uint64_t v;
	} m[] = {
	    {"connections_open", "gauge", "connections open", st->conns_open},
	    {"connections_total", "counter", "connections accepted", st->connections},
	    {"requests_total", "counter", "requests received", st->requests},
	    {"requests_inflight", "gauge", "requests waiting for their handlers", st->inflight},
	    {"requests_shed_total", "counter", "requests answered 503 by admission control", st->shed},
	    {"responses_4xx_total", "counter", "4xx responses", st->responses_4xx},
	    {"responses_5xx_total", "counter", "5xx responses", st->responses_5xx},
	    {"bytes_out_total", "counter", "response bytes sent", st->bytes_out},
	    {"accept_pauses_total", "counter", "times accepting paused (limit, EMFILE)", st->accept_pauses},
	    {"idle_closed_total", "counter", "idle connections closed to make room", st->idle_closed},
	    {"recv_buffers_in_use", "gauge", "receive buffers out of the pool", ls.bufs_in_use},
	    {"recv_buffers_total", "gauge", "receive buffers in the pool", ls.bufs_total},
	    {"recv_buffer_waits_total", "counter", "receives parked for want of a buffer", ls.enobufs},
	    {"ops_inflight", "gauge", "kernel operations in flight", ls.ops_inflight},
	    {"log_lines_dropped_total", "counter", "access log lines dropped", st->log_lines_dropped},
	    {"proxy_protocol_errors_total", "counter", "connections closed for their PROXY protocol header",
	     st->proxy_protocol_errors},
	    {"request_body_bytes", "gauge", "request body bytes held in copies", s->body_mem},
	    {"rss_bytes", "gauge", "resident memory of the process", rss_bytes()},
	};
	size_t llen = label ? strnlen(label, 256) : 0;
	size_t nm = sizeof(m) / sizeof(m[0]), cap = nm * (200 + llen) + llen + 64, n = 0;
	for (unsigned i = 0; i < s->nstatus_src; i++)
		cap += STATUS_SOURCE_METRICS * (400 + llen + 2 * (s->status_src[i].label ? 256 : 0));
	if (json) /* (label values escaped: up to six bytes for one) */
		for (unsigned i = 0; i < s->nstatus_src; i++)
			cap += 64 + (s->status_src[i].label ? 6 * 2 * 256 : 0) + 5 * llen;
	char *out = keel_ctx_alloc(keel_http_request_ctx(req), cap);
	if (!out)
		return keel_http_respond(req, 500, "text/plain", "out of memory\n",
		                         sizeof("out of memory\n") - 1);
	if (json) {
		const char *names[sizeof(m) / sizeof(m[0])];
		uint64_t vals[sizeof(m) / sizeof(m[0])];
		for (size_t i = 0; i < nm; i++) {
			names[i] = m[i].name;
			vals[i] = m[i].v;
		}
		status_json(out, cap, &n, label, llen, names, vals, nm, s);
		return keel_http_respond(req, 200, "application/json", out, n);
	}
	if (label && !prom)
		appendf(out, cap, &n, "worker %.*s\n", (int)llen, label);
	for (size_t i = 0; i < nm; i++) {
		if (prom)
			appendf(out, cap, &n, "# HELP keel_%s %s\n# TYPE keel_%s %s\nkeel_%s%s%.*s%s %llu\n",
			        m[i].name, m[i].help, m[i].name, m[i].type, m[i].name,
			        label ? "{worker=\"" : "", label ? (int)llen : 0, label ? label : "",
			        label ? "\"}" : "", (unsigned long long)m[i].v);
		else
			appendf(out, cap, &n, "%s %llu\n", m[i].name, (unsigned long long)m[i].v);
	}
	/*
	 * The sources' metrics, name{worker="0",upstream="api"} value. The
	 * Prometheus format wants each family's HELP/TYPE once and its samples
	 * together: the samples of one name (from every source) follow it.
	 */
	struct sample {
		keel_http_metric m;
		const struct status_source *src;
		bool done;
	} *xs = keel_ctx_alloc(keel_http_request_ctx(req),
	                       (s->nstatus_src ? s->nstatus_src : 1) * STATUS_SOURCE_METRICS * sizeof(*xs));
	unsigned nx = 0;
	for (unsigned i = 0; xs && i < s->nstatus_src; i++) {
		keel_http_metric x[STATUS_SOURCE_METRICS];
		unsigned k = s->status_src[i].fn(s->status_src[i].ud, x, STATUS_SOURCE_METRICS);
		for (unsigned j = 0; j < k && j < STATUS_SOURCE_METRICS; j++)
			xs[nx++] = (struct sample){x[j], &s->status_src[i], false};
	}
	for (unsigned i = 0; i < nx; i++) {
		if (xs[i].done)
			continue;
		if (prom)
			appendf(out, cap, &n, "# HELP keel_%s %s\n# TYPE keel_%s %s\n", xs[i].m.name,
			        xs[i].m.help, xs[i].m.name, xs[i].m.type);
		for (unsigned j = i; j < nx; j++) {
			if (xs[j].done || strcmp(xs[j].m.name, xs[i].m.name) != 0)
				continue;
			xs[j].done = true;
			const struct status_source *src = xs[j].src;
			char lab[1024] = "";
			size_t ln = 0;
			if (prom && label)
				ln += (size_t)snprintf(lab, sizeof(lab), "worker=\"%.*s\"", (int)llen, label);
			if (src->label)
				snprintf(lab + ln, sizeof(lab) - ln, "%s%s=\"%s\"", ln ? "," : "", src->label,
				         src->value);
			appendf(out, cap, &n, "%s%s%s%s%s %llu\n", prom ? "keel_" : "", xs[j].m.name,
			        lab[0] ? "{" : "", lab, lab[0] ? "}" : "", (unsigned long long)xs[j].m.value);
		}
	}
	return keel_http_respond(req, 200, prom ? "text/plain; version=0.0.4" : "text/plain", out, n);
}
