/*
 * The latency histogram of keel load (src/load/hist.c, linked from the load
 * generator's module, libkeel_load.a).
 * Bucket arithmetic checked exhaustively over the exact range and the first
 * buckets after it, then sampled up to the top; percentiles against exact
 * ranks; clamping, merging, reset and the empty case.
 */
#include "test.h"

#include "load/hist.h"

#define US_100S 100000000ull /* 100 s in microseconds: keel load's range */

/* Every value lies inside its bucket, buckets are contiguous, and no bucket is wider than allowed. */
static void check_buckets(unsigned digits, unsigned want_bits)
{
	load_hist h;
	ASSERT_OK(load_hist_init(&h, US_100S, digits));
	ASSERT_EQ(h.sub_bits, want_bits);
	ASSERT_EQ(h.ncounts, load_hist_index(&h, US_100S) + 1);
	uint64_t width_max_rel_den = 1ull << (want_bits - 1); /* width/low <= 1/H */
	uint32_t prev = 0;
	uint64_t v = 0;
	while (v <= US_100S) {
		uint32_t i = load_hist_index(&h, v);
		ASSERT(i < h.ncounts);
		if (v > 0 && i != prev && i != prev + 1)
			FAIL("digits %u: index jumps from %u to %u at %" PRIu64, digits, prev, i, v);
		uint64_t lo = load_hist_lowest_equiv(&h, i), hi = load_hist_highest_equiv(&h, i);
		if (lo > v || hi < v)
			FAIL("digits %u: %" PRIu64 " outside its bucket %u [%" PRIu64 ", %" PRIu64 "]",
			     digits, v, i, lo, hi);
		if (lo >= (1ull << want_bits) && (hi - lo + 1) * width_max_rel_den > lo)
			FAIL("digits %u: bucket %u [%" PRIu64 ", %" PRIu64 "] too wide", digits, i, lo, hi);
		if (load_hist_index(&h, lo) != i || load_hist_index(&h, hi) != i)
			FAIL("digits %u: bucket %u bounds map elsewhere", digits, i);
		prev = i;
		/* Exhaustive through the exact range and well past it, then skip within buckets. */
		v = v < (1ull << 20) ? v + 1 : hi + 1;
	}
	load_hist_fini(&h);
}

static void check_percentiles(void)
{
	load_hist h;
	ASSERT_OK(load_hist_init(&h, US_100S, 3));
	ASSERT_EQ(load_hist_percentile(&h, 50), 0);
	ASSERT_EQ(h.total, 0);
	ASSERT(load_hist_mean(&h) == 0.0);

	/* Small values are exact. */
	load_hist_record(&h, 1);
	load_hist_record(&h, 2);
	load_hist_record(&h, 3);
	ASSERT_EQ(load_hist_percentile(&h, 0), 1);
	ASSERT_EQ(load_hist_percentile(&h, 50), 2);
	ASSERT_EQ(load_hist_percentile(&h, 66.6), 2);
	ASSERT_EQ(load_hist_percentile(&h, 66.7), 3);
	ASSERT_EQ(load_hist_percentile(&h, 100), 3);
	ASSERT(load_hist_mean(&h) == 2.0);
	load_hist_reset(&h);
	ASSERT_EQ(h.total, 0);
	ASSERT_EQ(load_hist_percentile(&h, 99), 0);

	/* 1..100000 once each: the value at p is p% of 100000, to 0.1%. */
	for (uint64_t v = 1; v <= 100000; v++)
		load_hist_record(&h, v);
	static const double ps[] = {1, 10, 25, 50, 75, 90, 99, 99.9, 99.99};
	for (size_t i = 0; i < sizeof(ps) / sizeof(ps[0]); i++) {
		double exact = ps[i] * 1000.0;
		double got = (double)load_hist_percentile(&h, ps[i]);
		if (got < exact || got > exact * 1.001 + 1)
			FAIL("p%g of 1..100000: %.0f, exact %.0f", ps[i], got, exact);
	}
	ASSERT_EQ(load_hist_percentile(&h, 100), 100000);
	ASSERT_EQ(h.min, 1);
	ASSERT_EQ(h.max, 100000);
	ASSERT(load_hist_mean(&h) == 50000.5);

	/* Above the top: counted in the last bucket, max stays exact. */
	load_hist_reset(&h);
	load_hist_record(&h, 10);
	load_hist_record(&h, 5000000000ull);
	ASSERT_EQ(load_hist_percentile(&h, 50), 10);
	ASSERT_EQ(load_hist_percentile(&h, 100), 5000000000ull);
	ASSERT_EQ(load_hist_percentile(&h, 99), load_hist_highest_equiv(&h, h.ncounts - 1));
	ASSERT(load_hist_highest_equiv(&h, h.ncounts - 1) >= US_100S);
	ASSERT_EQ(h.counts[h.ncounts - 1], 1);

	/* A skewed run: 990 fast, 10 slow. */
	load_hist_reset(&h);
	load_hist_record_n(&h, 250, 990);
	load_hist_record_n(&h, 1000000, 10);
	ASSERT_EQ(load_hist_percentile(&h, 50), 250);
	ASSERT_EQ(load_hist_percentile(&h, 99), 250);
	/* Its bucket, capped at the exact max. */
	ASSERT_EQ(load_hist_percentile(&h, 99.9), 1000000);
	load_hist_fini(&h);
}

static void check_merge(void)
{
	load_hist a, b, all, other;
	ASSERT_OK(load_hist_init(&a, US_100S, 3));
	ASSERT_OK(load_hist_init(&b, US_100S, 3));
	ASSERT_OK(load_hist_init(&all, US_100S, 3));
	ASSERT_OK(load_hist_init(&other, US_100S, 2));
	uint64_t x = 88172645463325252ull; /* xorshift: a spread of magnitudes */
	for (int i = 0; i < 200000; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		uint64_t v = (x % 1000) << (x >> 60); /* 0 .. ~3.3e7 */
		load_hist_record(i & 1 ? &a : &b, v);
		load_hist_record(&all, v);
	}
	ASSERT_OK(load_hist_merge(&a, &b));
	ASSERT_EQ(a.total, all.total);
	ASSERT_EQ(a.sum, all.sum);
	ASSERT_EQ(a.min, all.min);
	ASSERT_EQ(a.max, all.max);
	ASSERT(memcmp(a.counts, all.counts, a.ncounts * sizeof(*a.counts)) == 0);
	for (double p = 0; p <= 100; p += 0.5)
		ASSERT_EQ(load_hist_percentile(&a, p), load_hist_percentile(&all, p));
	ASSERT_EQ(load_hist_merge(&a, &other), -EINVAL);
	load_hist_fini(&a);
	load_hist_fini(&b);
	load_hist_fini(&all);
	load_hist_fini(&other);
}

int main(void)
{
	load_hist h;
	ASSERT_EQ(load_hist_init(&h, US_100S, 0), -EINVAL);
	ASSERT_EQ(load_hist_init(&h, US_100S, 5), -EINVAL);
	ASSERT_EQ(load_hist_init(&h, 0, 3), -EINVAL);
	load_hist_fini(&h); /* a zeroed one */

	check_buckets(2, 8);
	check_buckets(3, 11);
	check_percentiles();
	check_merge();
	printf("hist: buckets (2 and 3 digits), percentiles, clamping, merge: ok\n");
	return 0;
}
