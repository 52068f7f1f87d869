/*
 * Fault injection (fault.h): the plan, its parser, and the per-call
 * decisions. Compiled to nothing unless KEEL_FAULT is defined.
 *
 * Decisions are cheap and lock-free: a rule's counters are atomics, the
 * random numbers come from a per-thread xorshift generator seeded from the
 * plan's seed and the thread's number, so a run with one worker is
 * repeatable.
 */
#ifdef KEEL_FAULT

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "fault.h"
#include "internal.h"

enum fault_kind {
	FK_ANY = 0,
	FK_ALLOC,
	FK_ACCEPT,
	FK_CONNECT,
	FK_RECV,
	FK_SEND,
	FK_SENDFILE,
	FK_SHUTDOWN,
	FK_OPEN,
	FK_READ,
	FK_WRITE,
	FK_STATX,
	FK_FSYNC,
	FK_READPOLL,
	FK_PATH,
	FK_MAX
};

static const char *const kind_names[FK_MAX] = {
    "any",  "alloc", "accept", "connect", "recv",  "send",     "sendfile", "shutdown",
    "open", "read",  "write",  "statx",   "fsync", "readpoll", "path",
};

static const struct {
	const char *name;
	int err;
} errnames[] = {
    {"ECONNRESET", ECONNRESET}, {"EPIPE", EPIPE},         {"EMFILE", EMFILE},
    {"ENFILE", ENFILE},         {"ENOMEM", ENOMEM},       {"EAGAIN", EAGAIN},
    {"ENOBUFS", ENOBUFS},       {"ECANCELED", ECANCELED}, {"EIO", EIO},
    {"EINTR", EINTR},           {"ETIMEDOUT", ETIMEDOUT}, {"ECONNREFUSED", ECONNREFUSED},
    {"EACCES", EACCES},         {"ENOENT", ENOENT},       {"EBADF", EBADF},
    {"EINVAL", EINVAL},         {"ENOSPC", ENOSPC},       {"EHOSTUNREACH", EHOSTUNREACH},
};

#define RULES_MAX 32
#define ERR_SHORT 1 /* not an errno: a partial transfer */

struct rule {
	int kind;
	int err;            /* negative errno, or ERR_SHORT */
	uint64_t threshold; /* fire when a 64-bit random number is below it */
	uint64_t nth;       /* or at the nth matching call (1-based); 0: by rate */
	_Atomic uint64_t calls, fired;
};

static struct rule rules[RULES_MAX];
static int nrules;
static uint64_t seed = 1;
static uint64_t active_from_ns; /* delay=MS: nothing fires before then (setup runs clean) */
static pthread_once_t env_once = PTHREAD_ONCE_INIT;
static atomic_uint thread_count;
static _Thread_local uint64_t rng;

static int kind_of_op(const keel__op *op)
{
	switch (op->kind) {
	case KEEL__OP_ACCEPT: return FK_ACCEPT;
	case KEEL__OP_CONNECT: return FK_CONNECT;
	case KEEL__OP_RECV_STREAM:
	case KEEL__OP_RECV: return FK_RECV;
	case KEEL__OP_SEND: return FK_SEND;
	case KEEL__OP_SENDFILE: return FK_SENDFILE;
	case KEEL__OP_SHUTDOWN: return FK_SHUTDOWN;
	case KEEL__OP_OPEN: return FK_OPEN;
	case KEEL__OP_READ: return FK_READ;
	case KEEL__OP_WRITE: return FK_WRITE;
	case KEEL__OP_STATX: return FK_STATX;
	case KEEL__OP_FSYNC: return FK_FSYNC;
	case KEEL__OP_READ_POLL: return FK_READPOLL;
	case KEEL__OP_UNLINK:
	case KEEL__OP_RENAME:
	case KEEL__OP_MKDIR: return FK_PATH;
	default: return -1; /* closes are never failed (see fault.h) */
	}
}

static uint64_t next_random(void)
{
	if (!rng)
		rng = (seed ^ (0x9e3779b97f4a7c15ull * (atomic_fetch_add(&thread_count, 1) + 1))) | 1;
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 0x2545f4914f6cdd1dull;
}

static void report(void)
{
	for (int i = 0; i < nrules; i++) {
		const struct rule *r = &rules[i];
		const char *en = "short";
		for (size_t j = 0; r->err != ERR_SHORT && j < sizeof(errnames) / sizeof(errnames[0]); j++)
			if (-errnames[j].err == r->err)
				en = errnames[j].name;
		fprintf(stderr, "keel: fault %s:%s fired %llu of %llu\n", kind_names[r->kind], en,
		        (unsigned long long)atomic_load(&r->fired),
		        (unsigned long long)atomic_load(&r->calls));
	}
}

static int parse_rule(char *s, struct rule *r)
{
	char *a = strchr(s, ':');
	char *b = a ? strchr(a + 1, ':') : NULL;
	if (!a || !b)
		return -EINVAL;
	*a++ = '\0';
	*b++ = '\0';
	r->kind = -1;
	for (int k = 0; k < FK_MAX; k++)
		if (strcmp(s, kind_names[k]) == 0)
			r->kind = k;
	if (r->kind < 0)
		return -EINVAL;
	r->err = 0;
	if (strcmp(a, "short") == 0) {
		if (r->kind != FK_RECV && r->kind != FK_SEND)
			return -EINVAL;
		r->err = ERR_SHORT;
	}
	for (size_t j = 0; !r->err && j < sizeof(errnames) / sizeof(errnames[0]); j++)
		if (strcmp(a, errnames[j].name) == 0)
			r->err = -errnames[j].err;
	if (!r->err)
		return -EINVAL;
	char *end;
	if (*b == '@') {
		r->nth = strtoull(b + 1, &end, 10);
		if (!r->nth || *end)
			return -EINVAL;
		return 0;
	}
	double p = strtod(b, &end);
	if (end == b || (*end && strcmp(end, "%") != 0))
		return -EINVAL;
	if (*end == '%')
		p /= 100;
	if (p < 0 || p > 1)
		return -EINVAL;
	r->nth = 0;
	r->threshold = p >= 1 ? UINT64_MAX : (uint64_t)(p * 18446744073709551616.0);
	return 0;
}

static uint64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int keel__fault_configure(const char *spec)
{
	nrules = 0;
	seed = 1;
	active_from_ns = 0;
	if (!spec || !*spec)
		return 0;
	char buf[1024];
	if (strlen(spec) >= sizeof(buf))
		return -EINVAL;
	strcpy(buf, spec);
	char *save = NULL;
	for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (strncmp(tok, "seed=", 5) == 0) {
			seed = strtoull(tok + 5, NULL, 10) | 1;
			continue;
		}
		if (strncmp(tok, "delay=", 6) == 0) {
			active_from_ns = mono_ns() + strtoull(tok + 6, NULL, 10) * 1000000ull;
			continue;
		}
		if (nrules == RULES_MAX || parse_rule(tok, &rules[nrules]) < 0) {
			nrules = 0;
			return -EINVAL;
		}
		atomic_store(&rules[nrules].calls, 0);
		atomic_store(&rules[nrules].fired, 0);
		nrules++;
	}
	return 0;
}

static void configure_from_env(void)
{
	const char *spec = getenv("KEEL_FAULT");
	if (!spec || !*spec)
		return;
	if (keel__fault_configure(spec) < 0) {
		fprintf(stderr, "keel: KEEL_FAULT=%s: not a fault plan (see src/core/fault.h)\n", spec);
		abort();
	}
	atexit(report);
}

/* The first rule of kind k (or "any") that fires for this call: its error, or 0. */
static int decide(int k)
{
	pthread_once(&env_once, configure_from_env);
	if (!nrules || (k == FK_ALLOC && active_from_ns && mono_ns() < active_from_ns))
		return 0;
	for (int i = 0; i < nrules; i++) {
		struct rule *r = &rules[i];
		if (r->kind != k && !(r->kind == FK_ANY && k != FK_ALLOC))
			continue;
		if (r->err == ERR_SHORT && k != FK_RECV && k != FK_SEND)
			continue;
		uint64_t n = atomic_fetch_add(&r->calls, 1) + 1;
		bool fire = r->nth ? n == r->nth : next_random() < r->threshold;
		if (fire) {
			atomic_fetch_add(&r->fired, 1);
			return r->err;
		}
	}
	return 0;
}

bool keel__fault_alloc(void)
{
	return decide(FK_ALLOC) != 0;
}

/* Send only part of what is asked: cut the iovecs at a random point (restored by op.c). */
static void shorten_send(keel__op *op)
{
	struct msghdr *m = &op->u.send.msg;
	size_t left = op->u.send.total - op->u.send.done;
	if (left < 2 || m->msg_iovlen == 0)
		return;
	size_t keep = 1 + (size_t)(next_random() % (left - 1));
	size_t i = 0;
	while (i < m->msg_iovlen && keep > m->msg_iov[i].iov_len) {
		keep -= m->msg_iov[i].iov_len;
		i++;
	}
	if (i == m->msg_iovlen)
		return;
	op->u.send.fault_iov = (uint32_t)i;
	op->u.send.fault_len = m->msg_iov[i].iov_len;
	op->u.send.fault_iovlen = (uint32_t)m->msg_iovlen;
	m->msg_iov[i].iov_len = keep;
	m->msg_iovlen = i + 1;
}

int keel__fault_op(keel__op *op)
{
	int k = kind_of_op(op);
	if (k < 0)
		return 0;
	if (op->kind == KEEL__OP_RECV_STREAM)
		op->u.stream.cap = 0; /* (a short read is decided per submission) */
	int err = decide(k);
	if (err != ERR_SHORT)
		return err;
	if (op->kind == KEEL__OP_SEND)
		shorten_send(op);
	else if (op->kind == KEEL__OP_RECV_STREAM)
		op->u.stream.cap = 1 + (uint32_t)(next_random() % 64);
	return 0;
}

#endif
