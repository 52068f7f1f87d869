/*
 * A log-bucketed latency histogram in the manner of HdrHistogram: values
 * below 2^S are counted exactly, larger ones in buckets that keep S
 * significant bits, so every recorded value is known to within 2^-(S-1) of
 * itself (S = 11: 3 significant decimal digits, 0.1%). Recording is one
 * count-leading-zeros and an increment; memory is fixed at init; two
 * histograms with the same shape merge by adding their counts.
 *
 * Units are the caller's (keel load records microseconds). Values above the
 * highest trackable value are counted in the top bucket; max still reports
 * the true largest value.
 */
#ifndef KEEL_LOAD_HIST_H
#define KEEL_LOAD_HIST_H

#include <stdbool.h>
#include <stdint.h>

typedef struct load_hist {
	uint64_t *counts; /* ncounts buckets, owned */
	uint32_t ncounts;
	unsigned sub_bits; /* S: significant bits kept */
	uint64_t highest;  /* highest trackable value */
	uint64_t total;    /* values recorded */
	uint64_t min, max; /* exact; min is UINT64_MAX while empty */
	uint64_t sum;      /* for the mean */
} load_hist;

/*
 * Set up h for values 0 .. highest with digits (1..4) significant decimal
 * digits. Returns 0, -EINVAL for a bad shape or -ENOMEM.
 */
int load_hist_init(load_hist *h, uint64_t highest, unsigned digits);

/* Free the counts; h may be zeroed or initialised. */
void load_hist_fini(load_hist *h);

/* Forget every value, keep the shape. */
void load_hist_reset(load_hist *h);

/* Record one value (count times). */
void load_hist_record_n(load_hist *h, uint64_t v, uint64_t count);
static inline void load_hist_record(load_hist *h, uint64_t v)
{
	load_hist_record_n(h, v, 1);
}

/*
 * The value at percentile p (0..100): the highest value equivalent to the
 * bucket that holds the ceil(p% of total)-th smallest value, never more
 * than max. 0 when empty.
 */
uint64_t load_hist_percentile(const load_hist *h, double p);

/* The arithmetic mean of the recorded values (exact: from the sum); 0 when empty. */
double load_hist_mean(const load_hist *h);

/* Add src's values to dst. Returns 0, or -EINVAL if their shapes differ. */
int load_hist_merge(load_hist *dst, const load_hist *src);

/* The bucket a value falls in, and that bucket's lowest / highest equivalent values (for tests). */
uint32_t load_hist_index(const load_hist *h, uint64_t v);
uint64_t load_hist_lowest_equiv(const load_hist *h, uint32_t idx);
uint64_t load_hist_highest_equiv(const load_hist *h, uint32_t idx);

#endif
