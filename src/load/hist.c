/*
 * The latency histogram of keel load (see hist.h for the shape).
 *
 * Bucket index of v with S significant bits and H = 2^(S-1): values below
 * 2^S are their own index; above, b = msb(v) - S + 1 low bits are dropped
 * and the index is b*H + (v >> b), which is dense because v >> b lies in
 * [H, 2H). The inverse is b = idx/H - 1, m = idx - b*H, value range
 * [m << b, ((m + 1) << b) - 1].
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "hist.h"

static unsigned msb64(uint64_t v)
{
	return 63u - (unsigned)__builtin_clzll(v);
}

uint32_t load_hist_index(const load_hist *h, uint64_t v)
{
	if (v > h->highest)
		v = h->highest;
	if (v < (1ull << h->sub_bits))
		return (uint32_t)v;
	unsigned b = msb64(v) - h->sub_bits + 1;
	return (uint32_t)(((uint64_t)b << (h->sub_bits - 1)) + (v >> b));
}

uint64_t load_hist_lowest_equiv(const load_hist *h, uint32_t idx)
{
	if (idx < (1u << h->sub_bits))
		return idx;
	unsigned b = (idx >> (h->sub_bits - 1)) - 1;
	uint64_t m = idx - ((uint64_t)b << (h->sub_bits - 1));
	return m << b;
}

uint64_t load_hist_highest_equiv(const load_hist *h, uint32_t idx)
{
	if (idx < (1u << h->sub_bits))
		return idx;
	unsigned b = (idx >> (h->sub_bits - 1)) - 1;
	uint64_t m = idx - ((uint64_t)b << (h->sub_bits - 1));
	return ((m + 1) << b) - 1;
}

int load_hist_init(load_hist *h, uint64_t highest, unsigned digits)
{
	memset(h, 0, sizeof(*h));
	if (digits < 1 || digits > 4 || highest < 1 || highest > (1ull << 62))
		return -EINVAL;
	uint64_t need = 2;
	for (unsigned i = 0; i < digits; i++)
		need *= 10;
	unsigned s = 1;
	while ((1ull << s) < need)
		s++;
	h->sub_bits = s;
	h->highest = highest;
	h->ncounts = load_hist_index(h, highest) + 1;
	h->counts = calloc(h->ncounts, sizeof(*h->counts));
	if (!h->counts)
		return -ENOMEM;
	h->min = UINT64_MAX;
	return 0;
}

void load_hist_fini(load_hist *h)
{
	free(h->counts);
	h->counts = NULL;
	h->ncounts = 0;
}

void load_hist_reset(load_hist *h)
{
	memset(h->counts, 0, h->ncounts * sizeof(*h->counts));
	h->total = h->sum = h->max = 0;
	h->min = UINT64_MAX;
}

void load_hist_record_n(load_hist *h, uint64_t v, uint64_t count)
{
	h->counts[load_hist_index(h, v)] += count;
	h->total += count;
	h->sum += v * count;
	if (v < h->min)
		h->min = v;
	if (v > h->max)
		h->max = v;
}

uint64_t load_hist_percentile(const load_hist *h, double p)
{
	if (h->total == 0)
		return 0;
	if (p >= 100.0)
		return h->max;
	if (p < 0.0)
		p = 0.0;
	/* The rank of the value asked for, 1-based: ceil(p% of total), at least 1. */
	double want = p / 100.0 * (double)h->total;
	uint64_t rank = (uint64_t)want;
	if ((double)rank < want)
		rank++;
	if (rank == 0)
		rank = 1;
	uint64_t seen = 0;
	for (uint32_t i = 0; i < h->ncounts; i++) {
		seen += h->counts[i];
		if (seen >= rank) {
			uint64_t v = load_hist_highest_equiv(h, i);
			if (v > h->max)
				v = h->max;
			if (v < h->min)
				v = h->min;
			return v;
		}
	}
	return h->max;
}

double load_hist_mean(const load_hist *h)
{
	return h->total ? (double)h->sum / (double)h->total : 0.0;
}

int load_hist_merge(load_hist *dst, const load_hist *src)
{
	if (dst->ncounts != src->ncounts || dst->sub_bits != src->sub_bits)
		return -EINVAL;
	for (uint32_t i = 0; i < src->ncounts; i++)
		dst->counts[i] += src->counts[i];
	dst->total += src->total;
	dst->sum += src->sum;
	if (src->min < dst->min)
		dst->min = src->min;
	if (src->max > dst->max)
		dst->max = src->max;
	return 0;
}
