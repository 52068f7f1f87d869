/*
 * The access log: one combined-format line per response, appended to one
 * of two buffers while the other is written through the loop (never a
 * blocking write on the loop's thread); when the disk falls behind and
 * both are full, lines are dropped and counted, so memory stays bounded.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "http_internal.h" /* keel__log_date */
#include "keel/errors.h"
#include "keel/file.h"
#include "keel/http.h"
#include "keel/log.h"
#include "server_internal.h"

#define LOG_BUF 65536
#define LOG_FLUSH_AT 32768

static void log_written(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	keel_http_server *s = ud;
	if (o.err)
		keel_log(KEEL_LOG_WARN, "access log: %s", keel_strerror(o.err));
	s->log_writing = false;
	s->log_len[1 - s->log_cur] = 0;
	if (s->log_len[s->log_cur] >= LOG_FLUSH_AT || (s->stopping && s->log_len[s->log_cur]))
		keel__log_flush(s);
	keel__server_maybe_stopped(s);
}

void keel__log_flush(keel_http_server *s)
{
	if (s->log_writing || !s->log_len[s->log_cur])
		return;
	int b = s->log_cur;
	s->log_cur = 1 - b;
	s->log_writing = true;
	keel_promise_done(
	    keel_file_write(s->loop, s->cfg.access_log_fd, s->log_buf[b], s->log_len[b], KEEL_FILE_POS),
	    log_written, s);
}

static void log_tick(keel_loop *loop, keel_timer *t)
{
	keel_http_server *s = keel_container_of(t, keel_http_server, log_timer);
	keel__log_flush(s);
	if (!s->stopping || s->nconns)
		keel_timer_arm(loop, t, 1000);
}

static size_t log_esc(char *out, keel_str v, size_t max)
{
	size_t o = 0;
	for (size_t i = 0; i < v.len && o + 4 < max; i++) {
		unsigned char ch = (unsigned char)v.ptr[i];
		if (ch == '"' || ch == '\\' || ch < 0x20 || ch >= 0x7f)
			o += (size_t)snprintf(out + o, max - o, "\\x%02x", ch);
		else
			out[o++] = (char)ch;
	}
	return o;
}

/* One combined-format line, appended to the current buffer; dropped (counted) if both are full. */
void keel__log_request(keel_http_server *s, const char *peer, keel_http_request *r, int status,
                       uint64_t bytes)
{
	if (!s->log_buf[0]) {
		s->log_buf[0] = malloc(LOG_BUF);
		s->log_buf[1] = malloc(LOG_BUF);
		if (!s->log_buf[0] || !s->log_buf[1])
			return;
		keel_timer_init(&s->log_timer, log_tick);
		keel_timer_arm(s->loop, &s->log_timer, 1000);
	}
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME_COARSE, &ts);
	if (ts.tv_sec != s->log_date_sec) {
		keel__log_date(ts.tv_sec, s->log_date, sizeof(s->log_date));
		s->log_date_sec = ts.tv_sec;
	}
	char line[2048];
	size_t n = (size_t)snprintf(line, sizeof(line), "%s - - [%s] \"", peer ? peer : "-", s->log_date);
	n += log_esc(line + n, r->msg.method, 64);
	line[n++] = ' ';
	n += log_esc(line + n, r->msg.target, 1024);
	if (r->proto->version)
		n += (size_t)snprintf(line + n, sizeof(line) - n, " %s\" %d %llu \"", r->proto->version,
		                      status, (unsigned long long)bytes);
	else
		n += (size_t)snprintf(line + n, sizeof(line) - n, " HTTP/1.%d\" %d %llu \"",
		                      r->msg.version_minor, status, (unsigned long long)bytes);
	const keel_http_header *ref = keel_http_header_find(&r->msg, "referer");
	const keel_http_header *ua = keel_http_header_find(&r->msg, "user-agent");
	if (ref)
		n += log_esc(line + n, ref->value, 300);
	else
		line[n++] = '-';
	n += (size_t)snprintf(line + n, sizeof(line) - n, "\" \"");
	if (ua)
		n += log_esc(line + n, ua->value, 300);
	else
		line[n++] = '-';
	line[n++] = '"';
	line[n++] = '\n';
	int b = s->log_cur;
	if (s->log_len[b] + n > LOG_BUF) {
		s->stats.log_lines_dropped++; /* the disk is behind: bounded memory wins */
		return;
	}
	memcpy(s->log_buf[b] + s->log_len[b], line, n);
	s->log_len[b] += n;
	if (s->log_len[b] >= LOG_FLUSH_AT)
		keel__log_flush(s);
}

/*
 * The server is stopping: the timer ends and what is buffered is written.
 * False while a write is still under way (log_written calls
 * keel__server_maybe_stopped when it is done).
 */
bool keel__log_stop(keel_http_server *s)
{
	if (!s->log_buf[0])
		return true;
	keel_timer_disarm(s->loop, &s->log_timer);
	keel__log_flush(s);
	return !s->log_writing;
}

/* At the server's free: whatever is still buffered is written synchronously (the loop is going away). */
void keel__log_free(keel_http_server *s)
{
	if (!s->log_buf[0])
		return;
	keel_timer_disarm(s->loop, &s->log_timer);
	for (int i = 0; i < 2; i++) {
		int b = (s->log_cur + 1 + i) % 2;
		if (s->log_len[b] && !(s->log_writing && b != s->log_cur)) {
			ssize_t w = write(s->cfg.access_log_fd, s->log_buf[b], s->log_len[b]);
			(void)w;
		}
	}
	free(s->log_buf[0]);
	free(s->log_buf[1]);
}
