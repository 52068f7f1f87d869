/*
 * What keel load prints: the line as a run starts and the progress line
 * each second (stderr), the results table (stdout) and the same results as
 * JSON. Latencies are kept in microseconds and printed in the unit that
 * suits them; the JSON keeps microseconds.
 */
#include <errno.h>
#include <stdio.h>

#include "load/internal.h"

static const char *const err_json[E_KINDS] = {"connect",    "read",     "timeout", "status_4xx",
                                              "status_5xx", "shed_503", "parse"};
static const char *const err_text[E_KINDS] = {"connect",    "read/reset", "timeout", "status 4xx",
                                              "status 5xx", "shed 503",   "parse"};

static void fmt_us(char *buf, size_t cap, uint64_t us)
{
	if (us < 1000)
		snprintf(buf, cap, "%lluus", (unsigned long long)us);
	else if (us < 1000000)
		snprintf(buf, cap, "%.2fms", (double)us / 1e3);
	else
		snprintf(buf, cap, "%.2fs", (double)us / 1e6);
}

void load__print_start(const load_opts *o, const char *backend)
{
	if (o->rate)
		fprintf(
		    stderr,
		    "keel load: %s for %ld s, open loop at %ld req/s, %ld connections, pipeline %ld (%s)\n",
		    o->url, o->duration_s, o->rate, o->conns, o->pipeline, backend);
	else
		fprintf(stderr, "keel load: %s for %ld s, closed loop, %ld connections, pipeline %ld (%s)\n",
		        o->url, o->duration_s, o->conns, o->pipeline, backend);
}

void load__print_progress(double elapsed_s, double rate, uint64_t responses, uint64_t errors, uint64_t p99_us)
{
	char p[32];
	fmt_us(p, sizeof(p), p99_us);
	fprintf(stderr, "keel load: %5.1fs  %10.0f req/s  %10llu responses  %6llu errors  p99 %s\n",
	        elapsed_s, rate, (unsigned long long)responses, (unsigned long long)errors, p);
}

static const double pcts[] = {50, 90, 99, 99.9};

static void print_latency(const char *what, const load_hist *h)
{
	char v[6][32];
	for (int i = 0; i < 4; i++)
		fmt_us(v[i], sizeof(v[i]), load_hist_percentile(h, pcts[i]));
	fmt_us(v[4], sizeof(v[4]), h->max);
	fmt_us(v[5], sizeof(v[5]), (uint64_t)load_hist_mean(h));
	printf("  %-13s %10s %10s %10s %10s %10s %10s  (%llu)\n", what, v[0], v[1], v[2], v[3], v[4], v[5],
	       (unsigned long long)h->total);
}

void load__print_results(const load_opts *o, const struct results *r)
{
	const struct counters *c = &r->c;
	double d = r->duration_s > 0 ? r->duration_s : 1e-9;
	printf("keel load %s\n", o->url);
	if (o->rate)
		printf("  mode          open loop at %ld req/s, %ld connections, pipeline %ld", o->rate,
		       o->conns, o->pipeline);
	else
		printf("  mode          closed loop, %ld connections, pipeline %ld", o->conns, o->pipeline);
	printf(", %ld thread%s, %s\n", o->threads, o->threads == 1 ? "" : "s", r->backend);
	printf("  duration      %.2f s\n", r->duration_s);
	printf("  requests      %llu responses, %llu 2xx/3xx; %llu sent", (unsigned long long)c->responses,
	       (unsigned long long)c->ok, (unsigned long long)c->sent);
	if (o->rate)
		printf(", %llu scheduled", (unsigned long long)c->scheduled);
	printf("\n");
	printf("  goodput       %.1f req/s (2xx/3xx)\n", (double)c->ok / d);
	printf("  offered       %.1f req/s (%s)\n", (double)c->scheduled / d, o->rate ? "scheduled" : "sent");
	printf("  throughput    %.1f responses/s\n", (double)c->responses / d);
	printf("  transfer      %.2f MB/s in, %.2f MB/s out\n", (double)c->bytes_in / d / 1e6,
	       (double)c->bytes_out / d / 1e6);
	printf("  errors        %llu:", (unsigned long long)errors_total(c));
	for (int i = 0; i < E_KINDS; i++)
		printf("%s %s %llu", i ? "," : "", err_text[i], (unsigned long long)c->errors[i]);
	printf("\n");
	if (c->retried)
		printf("  retried       %llu (sent again: the connection closed before the answer began)\n",
		       (unsigned long long)c->retried);
	if (r->tls) {
		printf("  tls           %llu handshakes, %llu resumed; %llu failed",
		       (unsigned long long)c->tls_handshakes, (unsigned long long)c->tls_resumed,
		       (unsigned long long)(c->tls_failed_cert + c->tls_failed_other));
		if (c->tls_failed_cert + c->tls_failed_other)
			printf(" (connect errors): certificate did not verify %llu, other TLS failure %llu",
			       (unsigned long long)c->tls_failed_cert,
			       (unsigned long long)c->tls_failed_other);
		printf("\n");
	}
	printf("  %-13s %10s %10s %10s %10s %10s %10s  (count%s)\n", "latency", "p50", "p90", "p99", "p99.9",
	       "max", "mean", o->rate ? "; timed from when each request was due" : "");
	print_latency("2xx/3xx", &r->lat_ok);
	print_latency("all", &r->lat_all);
}

static void json_latency(FILE *f, const load_hist *h)
{
	fprintf(
	    f,
	    "{\"p50\": %llu, \"p90\": %llu, \"p99\": %llu, \"p999\": %llu, \"max\": %llu, \"mean\": %.1f, \"count\": %llu}",
	    (unsigned long long)load_hist_percentile(h, 50), (unsigned long long)load_hist_percentile(h, 90),
	    (unsigned long long)load_hist_percentile(h, 99),
	    (unsigned long long)load_hist_percentile(h, 99.9), (unsigned long long)h->max, load_hist_mean(h),
	    (unsigned long long)h->total);
}

static void json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			fprintf(f, "\\%c", ch);
		else if (ch < 0x20)
			fprintf(f, "\\u%04x", ch);
		else
			fputc(ch, f);
	}
	fputc('"', f);
}

int load__write_json(const load_opts *o, const struct results *r)
{
	FILE *f = fopen(o->json_path, "w");
	if (!f)
		return -errno;
	const struct counters *c = &r->c;
	double d = r->duration_s > 0 ? r->duration_s : 1e-9;
	fprintf(f, "{\n  \"url\": ");
	json_string(f, o->url);
	fprintf(f, ",\n  \"mode\": \"%s\",\n", o->rate ? "open" : "closed");
	if (o->rate)
		fprintf(f, "  \"rate\": %ld,\n", o->rate);
	else
		fprintf(f, "  \"rate\": null,\n");
	fprintf(f, "  \"connections\": %ld,\n  \"pipeline\": %ld,\n  \"threads\": %ld,\n", o->conns,
	        o->pipeline, o->threads);
	fprintf(f, "  \"backend\": \"%s\",\n", r->backend);
	fprintf(f, "  \"duration_s\": %.3f,\n", r->duration_s);
	fprintf(f, "  \"requests\": %llu,\n", (unsigned long long)c->responses);
	fprintf(f, "  \"ok\": %llu,\n", (unsigned long long)c->ok);
	fprintf(f, "  \"sent\": %llu,\n", (unsigned long long)c->sent);
	fprintf(f, "  \"scheduled\": %llu,\n", (unsigned long long)c->scheduled);
	fprintf(f, "  \"requests_per_sec\": %.1f,\n", (double)c->ok / d);
	fprintf(f, "  \"responses_per_sec\": %.1f,\n", (double)c->responses / d);
	fprintf(f, "  \"offered_per_sec\": %.1f,\n", (double)c->scheduled / d);
	fprintf(f, "  \"bytes_in_per_sec\": %.1f,\n", (double)c->bytes_in / d);
	fprintf(f, "  \"bytes_out_per_sec\": %.1f,\n", (double)c->bytes_out / d);
	fprintf(f, "  \"errors\": {");
	for (int i = 0; i < E_KINDS; i++)
		fprintf(f, "%s\"%s\": %llu", i ? ", " : "", err_json[i], (unsigned long long)c->errors[i]);
	fprintf(f, "},\n  \"errors_total\": %llu,\n", (unsigned long long)errors_total(c));
	fprintf(f, "  \"retried\": %llu,\n", (unsigned long long)c->retried);
	if (r->tls)
		fprintf(f,
		        "  \"tls\": {\"handshakes\": %llu, \"resumed\": %llu, \"handshake_failed\": %llu, "
		        "\"failed_cert\": %llu, \"failed_other\": %llu},\n",
		        (unsigned long long)c->tls_handshakes, (unsigned long long)c->tls_resumed,
		        (unsigned long long)(c->tls_failed_cert + c->tls_failed_other),
		        (unsigned long long)c->tls_failed_cert, (unsigned long long)c->tls_failed_other);
	else
		fprintf(f, "  \"tls\": null,\n");
	fprintf(f, "  \"latency_us\": ");
	json_latency(f, &r->lat_ok);
	fprintf(f, ",\n  \"latency_all_us\": ");
	json_latency(f, &r->lat_all);
	fprintf(f, ",\n  \"intervals\": [");
	for (uint32_t i = 0; i < r->niv; i++)
		fprintf(f, "%s\n    {\"t\": %u, \"ok\": %llu, \"shed_503\": %llu, \"p99_us\": %llu}",
		        i ? "," : "", i + 1, (unsigned long long)r->iv[i].ok,
		        (unsigned long long)r->iv[i].shed, (unsigned long long)r->iv[i].p99_us);
	fprintf(f, "\n  ]\n}\n");
	if (ferror(f)) {
		fclose(f);
		return -EIO;
	}
	return fclose(f) == 0 ? 0 : -errno;
}
