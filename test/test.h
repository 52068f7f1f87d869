/*
 * A tiny test harness: assertions that print both operands, and helpers to
 * run a loop until a promise settles. A test program exits 0 on pass, 1 on
 * failure, 77 when it cannot run here (skip).
 */
#ifndef KEEL_TEST_H
#define KEEL_TEST_H

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/keel.h"

#define TEST_SKIP 77

#define FAIL(...)                                                    \
	do {                                                         \
		fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
		fprintf(stderr, __VA_ARGS__);                        \
		fputc('\n', stderr);                                 \
		exit(1);                                             \
	} while (0)

#define ASSERT(cond)                       \
	do {                               \
		if (!(cond))               \
			FAIL("%s", #cond); \
	} while (0)

#define ASSERT_EQ(a, b)                                                 \
	do {                                                            \
		long long a_ = (long long)(a), b_ = (long long)(b);     \
		if (a_ != b_)                                           \
			FAIL("%s == %s: %lld != %lld", #a, #b, a_, b_); \
	} while (0)

#define ASSERT_NE(a, b)                                             \
	do {                                                        \
		long long a_ = (long long)(a), b_ = (long long)(b); \
		if (a_ == b_)                                       \
			FAIL("%s != %s: both %lld", #a, #b, a_);    \
	} while (0)

#define ASSERT_GE(a, b)                                                \
	do {                                                           \
		long long a_ = (long long)(a), b_ = (long long)(b);    \
		if (a_ < b_)                                           \
			FAIL("%s >= %s: %lld < %lld", #a, #b, a_, b_); \
	} while (0)

#define ASSERT_OK(expr)                                                    \
	do {                                                               \
		int r_ = (expr);                                           \
		if (r_ < 0)                                                \
			FAIL("%s: %s (%d)", #expr, keel_strerror(r_), r_); \
	} while (0)

static inline keel_loop *test_loop(void)
{
	keel_loop *loop = NULL;
	keel_loop_opts o;
	keel_loop_opts_default(&o);
	o.quiet = getenv("KEEL_TEST_VERBOSE") == NULL;
	int err = keel_loop_new(&loop, &o);
	if (err < 0)
		FAIL("keel_loop_new: %s", keel_strerror(err));
	return loop;
}

/* Drive the loop until p settles (bounded by a generous deadline); consume p. */
static inline keel_outcome test_await(keel_loop *loop, keel_promise *p)
{
	for (int i = 0; i < 1000000 && !keel_promise_is_settled(p); i++)
		if (keel_loop_run_once(loop, 100) < 0)
			FAIL("loop failed");
	if (!keel_promise_is_settled(p))
		FAIL("promise never settled");
	keel_outcome o = keel_promise_outcome(p);
	keel_promise_release(p);
	return o;
}

#endif
