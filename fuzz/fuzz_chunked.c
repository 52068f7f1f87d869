/*
 * libFuzzer driver for keel_http_chunked_decode alone.
 *
 * The input is a chunked body as it would arrive after a request head, so
 * seeds are plain bodies. It is decoded under several schedules (whole,
 * split in two, a byte at a time, pieces whose sizes come from the input)
 * and every run must produce the same result, the same bytes and the same
 * end; fuzz.h checks spans, progress and totals on every call. A run with a
 * small body_max must agree with the unlimited one up to the point it stops
 * with 413. Finally the input is used the other way round, as a body to
 * encode: a well-formed chunked encoding of it (sizes, extensions, case and
 * trailers chosen from its bytes) must decode back to exactly it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "keel/http_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void schedules(const uint8_t *data, size_t size)
{
	struct fuzz_sched whole = {.kind = SCHED_WHOLE};
	struct fuzz_sched split = {.kind = SCHED_SPLIT, .k = size ? (size_t)data[0] * size / 255 : 0};
	struct fuzz_sched bytes = {.kind = SCHED_STEPS};
	struct fuzz_sched steps = {.kind = SCHED_STEPS,
	                           .sizes = data,
	                           .nsizes = size,
	                           .step_max = size ? 1 + data[size - 1] % 32 : 1};
	struct chunked_out a, b, c, d;

	fuzz_chunked_run(data, size, 0, &whole, &a);
	fuzz_chunked_run(data, size, 0, &split, &b);
	fuzz_chunked_same(&a, &b, "whole vs split");
	/* A byte at a time costs a call and a copy per byte: the small inputs get it. */
	fuzz_chunked_run(data, size, 0, size <= 4096 ? &bytes : &steps, &c);
	fuzz_chunked_same(&a, &c, "whole vs byte by byte");
	fuzz_chunked_run(data, size, 0, &steps, &d);
	fuzz_chunked_same(&a, &d, "whole vs steps");
	free(d.bytes);
	fuzz_chunked_run_want(data, size, 0, &split, &d, false); /* trailers not asked for: the same body */
	if (!(d.rc == KEEL_HTTP_E400 && a.ntr > 8192)) /* (unless past the 8 KiB bound of dropped ones) */
		fuzz_chunked_same(&a, &d, "trailers handed out vs not");
	free(b.bytes);
	free(c.bytes);
	free(d.bytes);

	/* body_max: the same run until it stops with 413, and no 413 if the body fits. */
	uint64_t max = size ? 1 + (uint64_t)data[size / 2] % 64 : 1;
	struct chunked_out l;
	fuzz_chunked_run(data, size, max, &split, &l);
	if (l.rc == KEEL_HTTP_E413) {
		if (l.nbytes > a.nbytes || memcmp(l.bytes, a.bytes, l.nbytes) != 0)
			FUZZ_FAIL("body_max %llu: the limited run is not a prefix of the unlimited one",
			          (unsigned long long)max);
		if (a.rc == KEEL_HTTP_CHUNK_DONE && a.total <= max)
			FUZZ_FAIL("413 for a %llu-byte body with body_max %llu", (unsigned long long)a.total,
			          (unsigned long long)max);
	} else {
		fuzz_chunked_same(&a, &l, "unlimited vs body_max (no 413)");
	}
	free(l.bytes);
	free(a.bytes);
}

struct enc {
	char *p;
	size_t n, cap;
};

static void put(struct enc *e, const void *s, size_t n)
{
	if (e->n + n > e->cap) {
		e->cap = (e->n + n) * 2;
		e->p = realloc(e->p, e->cap);
		if (!e->p)
			abort();
	}
	memcpy(e->p + e->n, s, n);
	e->n += n;
}

static void puts_(struct enc *e, const char *s)
{
	put(e, s, strlen(s));
}

/* A valid encoding of data[0..size) must decode to exactly it, ending where it ends. */
static void round_trip(const uint8_t *data, size_t size)
{
	static const char *exts[] = {"", ";a", ";name=value", " ;x=\"quoted;str\"", ";a=1;b=2", ";\tt"};
	static const char *trailers[] = {"", "X-Sum: 1\r\n", "A: \r\nB-c: d e\t\r\n",
	                                 "Server-Timing: total;dur=1\r\n"};
	struct enc e = {0};
	size_t off = 0, i = 0;
	unsigned sel = size ? data[0] : 0;
	while (off < size) {
		unsigned char k = data[(off * 31 + i) % size];
		size_t n = 1 + (size_t)k * (size_t)(1 + (sel & 3)); /* 1..1024 */
		if (n > size - off)
			n = size - off;
		char line[64];
		int zeros = (k >> 5) & 3;
		snprintf(line, sizeof line, (k & 1) ? "%0*zX" : "%0*zx", zeros + 1, n);
		puts_(&e, line);
		puts_(&e, exts[(k + i) % 6]);
		puts_(&e, "\r\n");
		put(&e, data + off, n);
		puts_(&e, "\r\n");
		off += n;
		i++;
	}
	puts_(&e, (sel & 4) ? "000" : "0");
	puts_(&e, exts[(sel >> 3) % 6]);
	puts_(&e, "\r\n");
	puts_(&e, trailers[(sel >> 5) & 3]);
	puts_(&e, "\r\n");
	size_t body_len = e.n;
	puts_(&e, "GET /next HTTP/1.1\r\n"); /* the next pipelined message */

	struct fuzz_sched whole = {.kind = SCHED_WHOLE};
	struct fuzz_sched bytes = {.kind = SCHED_STEPS};
	struct fuzz_sched *scheds[] = {&whole, &bytes};
	for (int s = 0; s < (e.n <= 8192 ? 2 : 1); s++) {
		struct chunked_out o;
		fuzz_chunked_run((const unsigned char *)e.p, e.n, 0, scheds[s], &o);
		if (o.rc != KEEL_HTTP_CHUNK_DONE || o.end != body_len || o.nbytes != size ||
		    (size && memcmp(o.bytes, data, size) != 0))
			FUZZ_FAIL("round trip (%s): rc=%s end=%zu/%zu bytes=%zu/%zu", s ? "bytes" : "whole",
			          fuzz_rc_name(o.rc), o.end, body_len, o.nbytes, size);
		free(o.bytes);
	}
	free(e.p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	schedules(data, size);
	round_trip(data, size);
	return 0;
}
