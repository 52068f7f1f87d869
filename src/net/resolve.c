/*
 * Name resolution off the loop: getaddrinfo(3) blocks (files, DNS, NSS
 * modules), so names are looked up on a few resolver threads shared by the
 * process, and the answer comes back to the loop through keel_loop_post.
 * Numeric addresses never leave the loop.
 *
 * Bounded: RESOLVE_THREADS threads, at most RESOLVE_QUEUE_MAX lookups
 * waiting; past that a lookup is refused at once (KEEL_ELIMIT). A loop with
 * a lookup outstanding stays alive (keel_loop_run does not return for want
 * of work); a loop freed meanwhile is forgotten by the threads.
 */
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/fault.h"
#include "core/internal.h"
#include "keel/errors.h"
#include "keel/tcp.h"

#define RESOLVE_THREADS 2
#define RESOLVE_QUEUE_MAX 256
#define HOST_MAX 253

enum { J_QUEUED = 0, J_BUSY };

struct job {
	struct job *next, *prev; /* all jobs, queued first-in first-out then busy */
	keel_loop *loop;
	keel_promise *p;
	struct sockaddr_storage *out;
	unsigned max;  /* addresses wanted in out (keel_resolve: 1, its IPv4 one first) */
	bool all;      /* keel_resolve_all: every address, in getaddrinfo's order */
	unsigned n;    /* addresses found */
	socklen_t len; /* keel_resolve: the first one's length */
	struct sockaddr_storage ss[KEEL_RESOLVE_MAX];
	int err;
	int state;
	struct keel__post post; /* how the answer goes back: posting cannot fail */
	bool cancelled;         /* the consumer let go: the answer is dropped */
	bool loop_gone;         /* the loop was freed: do not post */
	char host[HOST_MAX + 1];
	char port[8];
};

static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct job *head, *tail;
	unsigned queued, threads;
} R = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL, 0, 0};

static void unlink_job(struct job *j)
{
	if (j->prev)
		j->prev->next = j->next;
	else
		R.head = j->next;
	if (j->next)
		j->next->prev = j->prev;
	else
		R.tail = j->prev;
}

/* Split "HOST:PORT" / "[V6]:PORT"; HOST a name or a numeric address. */
static bool split(const char *s, char *host, char *port)
{
	const char *colon = s ? strrchr(s, ':') : NULL;
	if (!colon || colon == s)
		return false;
	const char *h = s, *he = colon;
	if (*h == '[') {
		if (he[-1] != ']')
			return false;
		h++;
		he--;
	}
	size_t hl = (size_t)(he - h), pl = strlen(colon + 1);
	if (!hl || hl > HOST_MAX || !pl || pl > 5)
		return false;
	long v = 0;
	for (const char *p = colon + 1; *p; p++) {
		if (*p < '0' || *p > '9')
			return false;
		v = v * 10 + (*p - '0');
	}
	if (v < 1 || v > 65535)
		return false;
	for (const char *p = h; p < he; p++) {
		char ch = *p;
		bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
		          ch == '-' || ch == '.' || ch == ':' || ch == '_';
		if (!ok)
			return false;
	}
	memcpy(host, h, hl);
	host[hl] = '\0';
	memcpy(port, colon + 1, pl + 1);
	return true;
}

bool keel_hostport_valid(const char *s)
{
	char host[HOST_MAX + 1], port[8];
	struct sockaddr_storage ss;
	socklen_t len;
	if (s && strncmp(s, "unix:", 5) == 0) /* a Unix socket: its path is the address */
		return keel_addr_parse(s, &ss, &len) == 0;
	return split(s, host, port);
}

/* Runs on the loop's thread. */
static void job_done(keel_loop *loop, void *ud)
{
	struct job *j = ud;
	if (!j->cancelled) {
		loop->holds--;
		if (j->err) {
			keel_promise_reject(j->p, j->err);
		} else {
			unsigned n = j->n < j->max ? j->n : j->max;
			memcpy(j->out, j->ss, n * sizeof(j->ss[0]));
			keel_promise_resolve(j->p, j->all ? n : j->len, j->out);
		}
	}
	free(j);
}

/* An answer posted to a loop that was freed before it ran. */
static void job_drop(void *ud)
{
	free(ud);
}

static void *resolver_thread(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&R.mu);
	for (;;) {
		struct job *j = R.head;
		while (j && j->state != J_QUEUED)
			j = j->next;
		if (!j) {
			pthread_cond_wait(&R.cv, &R.mu);
			continue;
		}
		j->state = J_BUSY;
		R.queued--;
		pthread_mutex_unlock(&R.mu);

		struct addrinfo hints, *res = NULL;
		memset(&hints, 0, sizeof(hints));
		hints.ai_family = AF_UNSPEC;
		hints.ai_socktype = SOCK_STREAM;
		hints.ai_flags = AI_NUMERICSERV;
		errno = 0;
		int rc = getaddrinfo(j->host, j->port, &hints, &res);
		if (rc == 0) {
			/*
			 * keel_resolve: IPv4 first when there is one (the common
			 * listener, and one address to try). keel_resolve_all: each
			 * address once, in the order getaddrinfo sorted them (RFC 6724).
			 */
			struct addrinfo *pick = res;
			for (struct addrinfo *a = res; !j->all && a; a = a->ai_next)
				if (a->ai_family == AF_INET) {
					pick = a;
					break;
				}
			j->len = pick->ai_addrlen;
			for (struct addrinfo *a = j->all ? res : pick; a && j->n < KEEL_RESOLVE_MAX;
			     a = a->ai_next) {
				bool seen = false;
				for (unsigned i = 0; i < j->n && !seen; i++)
					seen = memcmp(&j->ss[i], a->ai_addr, a->ai_addrlen) == 0;
				if (!seen && a->ai_addrlen <= sizeof(j->ss[0])) {
					memset(&j->ss[j->n], 0, sizeof(j->ss[0]));
					memcpy(&j->ss[j->n++], a->ai_addr, a->ai_addrlen);
				}
				if (!j->all)
					break;
			}
			freeaddrinfo(res);
		} else {
			int e = errno; /* (EAI_SYSTEM with errno 0 happens: still a failure) */
			j->err = rc == EAI_MEMORY ? -ENOMEM : rc == EAI_SYSTEM ? (e ? -e : -EIO) : KEEL_ENAME;
		}

		pthread_mutex_lock(&R.mu);
		unlink_job(j);
		if (j->loop_gone)
			free(j); /* its loop is being freed */
		else
			/* j is the loop's now */
			keel__loop_post_node(j->loop, &j->post, job_done, job_drop, j);
	}
	return NULL;
}

static void job_cancel(keel_promise *p, void *ud)
{
	struct job *j = ud;
	keel_loop *loop = j->loop;
	pthread_mutex_lock(&R.mu);
	if (j->state == J_QUEUED) {
		unlink_job(j); /* not started: its place in the queue goes back */
		R.queued--;
		free(j);
	} else {
		j->cancelled = true; /* the thread's answer, when it comes, is dropped */
	}
	pthread_mutex_unlock(&R.mu);
	loop->holds--; /* the loop need not wait for a lookup nobody wants */
	keel_promise_reject(p, -ECANCELED);
}

static void resolve_forget(keel_loop *loop);
static struct keel__loop_watcher watcher = {resolve_forget, NULL};
static pthread_once_t watch_once = PTHREAD_ONCE_INIT;

static void watch(void)
{
	keel__loop_watch(&watcher);
}

static keel_promise *resolve(keel_loop *loop, const char *hostport, struct sockaddr_storage *out,
                             unsigned max, bool all)
{
	keel_promise *p = keel_promise_new(loop);
	socklen_t len;
	if (!keel_hostport_valid(hostport) || max == 0 || (all && strncmp(hostport, "unix:", 5) == 0)) {
		keel_promise_reject(p, -EINVAL); /* (no port, port 0, no host, a wildcard) */
		return p;
	}
	if (keel_addr_parse(hostport, out, &len) == 0) {
		keel_promise_resolve(p, all ? 1 : len, out); /* numeric: no lookup */
		return p;
	}
	struct job *j = keel__calloc(1, sizeof(*j));
	if (!j) {
		keel_promise_reject(p, -ENOMEM);
		return p;
	}
	j->max = max;
	j->all = all;
	pthread_once(&watch_once, watch);
	split(hostport, j->host, j->port);
	j->loop = loop;
	j->p = p;
	j->out = out;
	pthread_mutex_lock(&R.mu);
	if (R.queued >= RESOLVE_QUEUE_MAX) {
		pthread_mutex_unlock(&R.mu);
		free(j);
		keel_promise_reject(p, KEEL_ELIMIT);
		return p;
	}
	while (R.threads < RESOLVE_THREADS) {
		pthread_t t;
		if (keel__thread_start(&t, resolver_thread, NULL) != 0)
			break;
		pthread_detach(t);
		R.threads++;
	}
	if (!R.threads) {
		pthread_mutex_unlock(&R.mu);
		free(j);
		keel_promise_reject(p, -EAGAIN);
		return p;
	}
	j->prev = R.tail;
	if (R.tail)
		R.tail->next = j;
	else
		R.head = j;
	R.tail = j;
	R.queued++;
	pthread_cond_signal(&R.cv);
	pthread_mutex_unlock(&R.mu);
	loop->holds++;
	keel_promise_on_cancel(p, job_cancel, j);
	return p;
}

keel_promise *keel_resolve(keel_loop *loop, const char *hostport, struct sockaddr_storage *out)
{
	return resolve(loop, hostport, out, 1, false);
}

keel_promise *keel_resolve_all(keel_loop *loop, const char *hostport, struct sockaddr_storage *out,
                               unsigned max)
{
	return resolve(loop, hostport, out, max < KEEL_RESOLVE_MAX ? max : KEEL_RESOLVE_MAX, true);
}

/* A loop is being freed: lookups for it are dropped, answers in flight are not posted. */
static void resolve_forget(keel_loop *loop)
{
	pthread_mutex_lock(&R.mu);
	for (struct job *j = R.head, *next; j; j = next) {
		next = j->next;
		if (j->loop != loop)
			continue;
		if (j->state == J_QUEUED) {
			unlink_job(j);
			R.queued--;
			free(j);
		} else {
			j->loop_gone = true;
		}
	}
	pthread_mutex_unlock(&R.mu);
}
