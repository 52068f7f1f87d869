/*
 * Static files: a handler that serves a directory tree.
 *
 * The request path is percent-decoded and its dot segments removed, then
 * opened with openat2(RESOLVE_BENEATH) relative to the root's descriptor, so
 * no path, however encoded, and no symlink can reach outside the root. The
 * open and the statx go through the loop; the body goes file -> socket with
 * splice/sendfile, never through user space. ETag and Last-Modified drive
 * 304s; a single byte range gets 206 (or 416); a precompressed .gz sibling
 * is preferred when the client accepts gzip.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "http_internal.h"
#include "keel/file.h"
#include "keel/http.h"
#include "keel/static.h"

/*
 * The small-file cache: files up to CACHE_FILE_MAX bytes, CACHE_BYTES per
 * root (per worker), least recently used out first. An entry is checked
 * against the file with a statx (size, mtime, inode) for each request, or
 * once per loop tick for the hits of that tick, so it is never staler than
 * the tick the request arrived in; its bytes were read through an openat2(RESOLVE_BENEATH), so
 * what a hit serves never came from outside the root. An entry in use by a
 * response in flight is not freed until that response has been sent.
 * A plain file whose ".gz" sibling was looked for and not found serves
 * gzip-accepting clients from the cache too, for GZ_ABSENT_MS, after which
 * the sibling is looked for again.
 */
#define CACHE_FILE_MAX (64u << 10)
#define CACHE_BYTES (8u << 20)
#define CACHE_BUCKETS 1024
#define GZ_ABSENT_MS 1000

struct centry {
	struct centry *hnext, *prev, *next; /* hash chain, LRU list */
	char *key;
	uint32_t hash;
	uint32_t refs;
	bool dead; /* out of the table; freed when refs drop to 0 */
	char *data;
	uint64_t size, ino;
	struct statx_timestamp mtime;
	uint64_t gz_absent_ns; /* when a ".gz" sibling was last looked for and not found (0: not) */
	uint64_t checked_ns;   /* the loop time (per tick) of the last statx that matched it */
	struct job *checker;   /* the request whose statx checks it now (issued at check_ns) */
	uint64_t check_ns;
	char etag[48], lm[40]; /* its ETag and Last-Modified, made once */
};

struct keel_static {
	int rootfd;
	struct centry *buckets[CACHE_BUCKETS];
	struct centry *lru_head, *lru_tail; /* head: most recent */
	size_t bytes;
	uint32_t entries;
	uint64_t hits, misses, checks;
};

static uint32_t key_hash(const char *k)
{
	uint32_t h = 2166136261u;
	for (; *k; k++)
		h = (h ^ (unsigned char)*k) * 16777619u;
	return h;
}

static void lru_unlink(keel_static *st, struct centry *e)
{
	if (e->prev)
		e->prev->next = e->next;
	else
		st->lru_head = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else
		st->lru_tail = e->prev;
	e->prev = e->next = NULL;
}

static void lru_push(keel_static *st, struct centry *e)
{
	e->prev = NULL;
	e->next = st->lru_head;
	if (st->lru_head)
		st->lru_head->prev = e;
	else
		st->lru_tail = e;
	st->lru_head = e;
}

static void centry_free(struct centry *e)
{
	free(e->key);
	free(e->data);
	free(e);
}

/* Take e out of the table; it is freed now or when its last response is sent. */
static void cache_remove(keel_static *st, struct centry *e)
{
	struct centry **pp = &st->buckets[e->hash % CACHE_BUCKETS];
	while (*pp && *pp != e)
		pp = &(*pp)->hnext;
	if (*pp)
		*pp = e->hnext;
	lru_unlink(st, e);
	st->bytes -= e->size;
	st->entries--;
	e->dead = true;
	if (!e->refs)
		centry_free(e);
}

static struct centry *cache_find(keel_static *st, const char *key)
{
	uint32_t h = key_hash(key);
	for (struct centry *e = st->buckets[h % CACHE_BUCKETS]; e; e = e->hnext)
		if (e->hash == h && strcmp(e->key, key) == 0)
			return e;
	return NULL;
}

static void centry_unref(void *ud)
{
	struct centry *e = ud;
	if (--e->refs == 0 && e->dead)
		centry_free(e);
}

long keel__path_normalize(const char *path, size_t len, char *out)
{
	size_t o = 0;
	size_t i = 0;
	if (len == 0 || path[0] != '/')
		return -1;
	while (i < len) {
		/* One segment: from after '/' to the next '/'. */
		while (i < len && path[i] == '/')
			i++;
		size_t seg = o;
		while (i < len && path[i] != '/') {
			char c = path[i++];
			if (c == '%') {
				if (i + 2 > len)
					return -1;
				int h = keel__hexval((unsigned char)path[i]),
				    l = keel__hexval((unsigned char)path[i + 1]);
				if (h < 0 || l < 0)
					return -1;
				c = (char)(h * 16 + l);
				i += 2;
				if (c == '/' || c == '\\')
					/* an encoded separator is never a legitimate file name here */
					return -1;
			}
			if ((unsigned char)c < 0x20 || c == 0x7f)
				return -1;
			out[o++] = c;
		}
		size_t sl = o - seg;
		if (sl == 1 && out[seg] == '.') {
			o = seg;
		} else if (sl == 2 && out[seg] == '.' && out[seg + 1] == '.') {
			if (seg == 0)
				return -1; /* above the root */
			o = seg - 1;
			while (o > 0 && out[o - 1] != '/')
				o--;
		} else if (sl > 0) {
			out[o++] = '/';
		}
	}
	if (o > 0 && out[o - 1] == '/')
		o--;
	out[o] = '\0';
	return (long)o;
}

int keel_static_new(keel_static **out, const char *dir)
{
	*out = NULL;
	if (!dir)
		return -EINVAL;
	int fd = open(dir, O_DIRECTORY | O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	keel_static *st = keel__calloc(1, sizeof(*st));
	if (!st) {
		close(fd);
		return -ENOMEM;
	}
	st->rootfd = fd;
	*out = st;
	return 0;
}

void keel_static_free(keel_static *st)
{
	if (!st)
		return;
	while (st->lru_head)
		cache_remove(st, st->lru_head); /* responses are all sent by now: refs are 0 */
	close(st->rootfd);
	free(st);
}

/* One request's journey through open -> statx -> answer. */
struct job {
	keel_http_request *r;
	keel_static *st;
	char *rel; /* normalized, relative to the root ("" is the root) */
	size_t rel_len;
	char *open_path; /* what is being opened now */
	int fd;
	bool gz, tried_index;
	bool gz_absent;              /* the ".gz" sibling was tried and is not there */
	char *fill;                  /* a small file's bytes while they are read for the cache */
	struct centry *mem;          /* serving from the cache */
	struct job *waiters, *wnext; /* hits of the same tick waiting for this job's statx; their list */
	struct job *checker;         /* (a waiter's: the job it waits for) */
	keel_promise *wait_p;        /* (a waiter's: settled with the statx's verdict, 1 or 0) */
	struct statx stx;
	keel_http_header hdrs[8];
	unsigned nh;
};

static keel_promise *out_of_memory(keel_http_request *r)
{
	keel_promise *p = keel_promise_new(r->loop);
	keel_promise_reject(p, -ENOMEM); /* the server answers 503 */
	return p;
}

static keel_promise *answer_status(keel_http_request *r, int status)
{
	const char *t = keel_http_status_text(status);
	return keel_http_respond(r, status, "text/plain; charset=utf-8", t, strlen(t));
}

static void add_header(struct job *j, const char *name, const char *value)
{
	keel_http_header *h = &j->hdrs[j->nh++];
	h->name.ptr = name;
	h->name.len = strlen(name);
	h->value.ptr = value;
	h->value.len = strlen(value);
}

static const keel_http_header *req_header(const keel_http_request *r, const char *name)
{
	return keel_http_header_find(&r->msg, name);
}

static bool accepts_gzip(const keel_http_request *r)
{
	const keel_http_header *h = req_header(r, "accept-encoding");
	if (!h)
		return false;
	/* gzip listed, and not with q=0 */
	for (size_t i = 0; i + 4 <= h->value.len; i++) {
		if (strncasecmp(h->value.ptr + i, "gzip", 4) != 0)
			continue;
		const char *p = h->value.ptr + i + 4, *end = h->value.ptr + h->value.len;
		while (p < end && *p == ' ')
			p++;
		if (p < end && *p == ';') {
			const char *q = memmem(p, (size_t)(end - p), "q=0", sizeof("q=0") - 1);
			const char *comma = memchr(p, ',', (size_t)(end - p));
			if (q && (!comma || q < comma) &&
			    (q + 3 == end || q[3] == ',' || q[3] == ' ' ||
			     (q[3] == '.' && strspn(q + 4, "0") >= 1 &&
			      (q + 4 + strspn(q + 4, "0") == end || q[4 + strspn(q + 4, "0")] == ','))))
				return false;
		}
		return true;
	}
	return false;
}

static bool etag_matches(const keel_http_header *h, const char *etag)
{
	keel_str list = h->value;
	size_t el = strlen(etag);
	const char *p = list.ptr, *end = list.ptr + list.len;
	while (p < end) {
		while (p < end && (*p == ' ' || *p == ','))
			p++;
		const char *s = p;
		while (p < end && *p != ',')
			p++;
		const char *e = p;
		while (e > s && e[-1] == ' ')
			e--;
		if (e - s == 1 && *s == '*')
			return true;
		if (e - s > 2 && s[0] == 'W' && s[1] == '/')
			s += 2; /* weak comparison for If-None-Match */
		if ((size_t)(e - s) == el && memcmp(s, etag, el) == 0)
			return true;
	}
	return false;
}

/* Parse a single "bytes=" range against size. 1: range set; 0: ignore (serve whole); -1: 416. */
static int parse_range(keel_str v, uint64_t size, uint64_t *off, uint64_t *len)
{
	if (v.len < 7 || strncasecmp(v.ptr, "bytes=", 6) != 0)
		return 0;
	const char *p = v.ptr + 6, *end = v.ptr + v.len;
	if (memchr(p, ',', (size_t)(end - p)))
		return 0; /* several ranges: keel serves the whole representation instead */
	uint64_t a = 0, b = 0;
	bool has_a = false, has_b = false;
	while (p < end && *p >= '0' && *p <= '9') {
		if (a > UINT64_MAX / 10 - 10)
			return 0;
		a = a * 10 + (uint64_t)(*p++ - '0');
		has_a = true;
	}
	if (p >= end || *p++ != '-')
		return 0;
	while (p < end && *p >= '0' && *p <= '9') {
		if (b > UINT64_MAX / 10 - 10)
			return 0;
		b = b * 10 + (uint64_t)(*p++ - '0');
		has_b = true;
	}
	if (p != end || (!has_a && !has_b))
		return 0;
	if (!has_a) { /* suffix: the last b bytes */
		if (b == 0)
			return -1;
		if (b > size)
			b = size;
		*off = size - b;
		*len = b;
		return size ? 1 : -1;
	}
	if (has_b && b < a)
		return 0; /* invalid: ignore it */
	if (a >= size)
		return -1;
	if (!has_b || b >= size)
		b = size - 1;
	*off = a;
	*len = b - a + 1;
	return 1;
}

static keel_promise *open_path(struct job *j, int dirfd, const char *path);
static keel_promise *on_open(keel_ctx *ctx, keel_outcome in, void *ud);

static keel_promise *finish(struct job *j)
{
	keel_http_request *r = j->r;
	keel_ctx *ctx = keel_http_request_ctx(r);
	uint64_t size = j->stx.stx_size;
	uint64_t mtime_ns = (uint64_t)j->stx.stx_mtime.tv_sec * 1000000000ull + j->stx.stx_mtime.tv_nsec;
	char *etag = keel_ctx_alloc(ctx, 48 + 40 + 80);
	if (!etag) {
		if (j->fd >= 0)
			close(j->fd);
		return out_of_memory(r);
	}
	char *lm = etag + 48, *cr = lm + 40;
	if (j->mem && j->mem->etag[0] && j->gz == (j->mem->etag[strlen(j->mem->etag) - 2] == 'z')) {
		etag = j->mem->etag; /* (held with the entry until the response is sent) */
		lm = j->mem->lm;
	} else {
		snprintf(etag, 48, "\"%llx-%llx%s\"", (unsigned long long)mtime_ns, (unsigned long long)size,
		         j->gz ? "-gz" : "");
		keel__http_date((time_t)j->stx.stx_mtime.tv_sec, lm, 40);
	}
	add_header(j, "ETag", etag);
	add_header(j, "Last-Modified", lm);
	add_header(j, "Accept-Ranges", "bytes");
	if (j->gz)
		add_header(j, "Content-Encoding", "gzip");
	/* Which variant is served depends on Accept-Encoding, the plain one included: caches must know. */
	add_header(j, "Vary", "Accept-Encoding");
	r->resp.headers = j->hdrs;
	r->resp.nheaders = j->nh;
	r->resp.content_type = keel__mime_type(j->rel, j->rel_len);

	/* Conditional requests: If-None-Match wins over If-Modified-Since. */
	const keel_http_header *inm = req_header(r, "if-none-match");
	bool not_modified = false;
	if (inm) {
		not_modified = etag_matches(inm, etag);
	} else {
		const keel_http_header *ims = req_header(r, "if-modified-since");
		if (ims) {
			time_t t = keel__http_date_parse(ims->value.ptr, ims->value.len);
			not_modified = t >= 0 && (time_t)j->stx.stx_mtime.tv_sec <= t;
		}
	}
	if (not_modified) {
		if (j->fd >= 0)
			close(j->fd);
		r->resp.status = 304;
		r->resp.content_type = NULL;
		keel_promise *p = keel_promise_new(r->loop);
		keel_promise_resolve(p, 0, &r->resp);
		return p;
	}

	r->resp.status = 200;
	if (j->mem) {
		r->resp.file_fd = -1; /* from the cache: one send with the head */
		r->resp.body.ptr = j->mem->data;
		r->resp.body.len = size;
	} else {
		r->resp.file_fd = j->fd;
		r->resp.file_close = true;
		r->resp.file_off = 0;
		r->resp.file_len = size;
	}
	const keel_http_header *range = req_header(r, "range");
	const keel_http_header *ifr = req_header(r, "if-range");
	if (range && (!ifr || keel_str_eq(ifr->value, etag) || keel_str_eq(ifr->value, lm))) {
		uint64_t off, len;
		int rc = parse_range(range->value, size, &off, &len);
		if (rc > 0) {
			snprintf(cr, 80, "bytes %llu-%llu/%llu", (unsigned long long)off,
			         (unsigned long long)(off + len - 1), (unsigned long long)size);
			add_header(j, "Content-Range", cr);
			r->resp.nheaders = j->nh;
			r->resp.status = 206;
			r->resp.file_off = off;
			r->resp.file_len = len;
			if (j->mem) {
				r->resp.body.ptr = j->mem->data + off;
				r->resp.body.len = len;
			}
		} else if (rc < 0) {
			snprintf(cr, 80, "bytes */%llu", (unsigned long long)size);
			if (j->fd >= 0)
				close(j->fd);
			r->resp.file_fd = -1;
			j->nh = 0;
			add_header(j, "Content-Range", cr);
			r->resp.headers = j->hdrs;
			r->resp.nheaders = j->nh;
			const char *t = keel_http_status_text(416);
			r->resp.status = 416;
			r->resp.content_type = "text/plain; charset=utf-8";
			r->resp.body.ptr = t;
			r->resp.body.len = strlen(t);
		}
	}
	keel_promise *p = keel_promise_new(r->loop);
	keel_promise_resolve(p, 0, &r->resp);
	return p;
}

/* The cache key: the path beneath the root that was (or will be) opened. */
static char *job_key(struct job *j)
{
	char *k = keel_ctx_alloc(keel_http_request_ctx(j->r), j->rel_len + 4);
	if (!k)
		return NULL;
	memcpy(k, j->rel, j->rel_len);
	memcpy(k + j->rel_len, j->gz ? ".gz" : "", j->gz ? 4 : 1);
	return k;
}

/* Serve e: held until the response is sent (a hook on the request's context). false on ENOMEM. */
static bool use_entry(struct job *j, struct centry *e)
{
	if (keel_ctx_on_free(keel_http_request_ctx(j->r), centry_unref, e) < 0)
		return false;
	e->refs++;
	j->mem = e;
	lru_unlink(j->st, e);
	lru_push(j->st, e);
	return true;
}

/* A small file was read whole: keep it, then answer from memory. */
static keel_promise *on_fill(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	struct job *j = ud;
	keel_static *st = j->st;
	char *data = j->fill;
	j->fill = NULL;
	if (in.err || (uint64_t)in.n != j->stx.stx_size) {
		free(data); /* changed under us, or failed: serve from the file as usual */
		return finish(j);
	}
	char *key = job_key(j);
	struct centry *e = key ? keel__calloc(1, sizeof(*e)) : NULL;
	if (e)
		e->key = keel__malloc(strlen(key) + 1);
	if (e && e->key)
		strcpy(e->key, key);
	if (!e || !e->key) {
		if (e)
			free(e->key);
		free(e);
		free(data);
		return finish(j); /* no memory for the cache: serve from the file */
	}
	close(j->fd);
	j->fd = -1;
	struct centry *old = cache_find(st, key);
	if (old)
		cache_remove(st, old);
	while (st->bytes + j->stx.stx_size > CACHE_BYTES && st->lru_tail)
		cache_remove(st, st->lru_tail);
	e->hash = key_hash(key);
	e->data = data;
	e->size = j->stx.stx_size;
	e->ino = j->stx.stx_ino;
	e->mtime = j->stx.stx_mtime;
	e->gz_absent_ns = j->gz_absent ? keel_loop_now_ns(j->r->loop) : 0;
	e->checked_ns = keel_loop_now_ns(j->r->loop);
	snprintf(e->etag, sizeof(e->etag), "\"%llx-%llx%s\"",
	         (unsigned long long)((uint64_t)e->mtime.tv_sec * 1000000000ull + e->mtime.tv_nsec),
	         (unsigned long long)e->size, j->gz ? "-gz" : "");
	keel__http_date((time_t)e->mtime.tv_sec, e->lm, sizeof(e->lm));
	e->hnext = st->buckets[e->hash % CACHE_BUCKETS];
	st->buckets[e->hash % CACHE_BUCKETS] = e;
	lru_push(st, e);
	st->bytes += e->size;
	st->entries++;
	if (!use_entry(j, e))
		return out_of_memory(j->r);
	return finish(j);
}

static void close_fd_done(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	(void)in;
	close((int)(intptr_t)ud);
}

static keel_promise *on_stat(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	struct job *j = ud;
	keel_http_request *r = j->r;
	if (in.err) {
		close(j->fd);
		return answer_status(r, 500);
	}
	if (S_ISDIR(j->stx.stx_mode)) {
		if (j->tried_index) {
			close(j->fd);
			return answer_status(r, 403);
		}
		if (r->path.len == 0 || r->path.ptr[r->path.len - 1] != '/') {
			/* A directory without its slash: relative links would break. */
			close(j->fd);
			char *loc = keel_ctx_alloc(keel_http_request_ctx(r), r->path.len + r->query.len + 3);
			if (!loc)
				return out_of_memory(r);
			/* (r->path is normalized: "//docs" came as "/docs", never a scheme-relative URL) */
			size_t n = 0;
			memcpy(loc, r->path.ptr, r->path.len);
			n = r->path.len;
			loc[n++] = '/';
			if (r->query.len) {
				loc[n++] = '?';
				memcpy(loc + n, r->query.ptr, r->query.len);
				n += r->query.len;
			}
			loc[n] = '\0';
			add_header(j, "Location", loc);
			r->resp.headers = j->hdrs;
			r->resp.nheaders = j->nh;
			const char *t = keel_http_status_text(301);
			return keel_http_respond(r, 301, "text/plain; charset=utf-8", t, strlen(t));
		}
		j->tried_index = true;
		int dirfd = j->fd;
		j->fd = -1;
		/* index.html inside it (opened beneath the directory, which is beneath the root) */
		char *rel = keel_ctx_alloc(keel_http_request_ctx(r), j->rel_len + 12);
		if (!rel) {
			close(dirfd);
			return out_of_memory(r);
		}
		memcpy(rel, j->rel, j->rel_len);
		memcpy(rel + j->rel_len, j->rel_len ? "/index.html" : "index.html", j->rel_len ? 12 : 11);
		j->rel = rel;
		j->rel_len = strlen(rel);
		keel_promise *p = open_path(j, dirfd, "index.html");
		/* The directory fd closes once everything opened beneath it is settled. */
		return keel_finally(p, close_fd_done, (void *)(intptr_t)dirfd);
	}
	if (!S_ISREG(j->stx.stx_mode)) {
		close(j->fd);
		return answer_status(r, 403);
	}
	if (j->stx.stx_size > 0 && j->stx.stx_size <= CACHE_FILE_MAX && !j->tried_index) {
		char *data = keel__malloc(j->stx.stx_size);
		if (data) {
			j->fill = data;
			return keel_then_flat(keel_file_read(r->loop, j->fd, data, j->stx.stx_size, 0),
			                      on_fill, j);
		}
	}
	return finish(j);
}

static keel_promise *on_open(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	struct job *j = ud;
	keel_http_request *r = j->r;
	if (in.err) {
		if (j->gz) {
			/* No precompressed sibling: the plain file (and the cache remembers it a while). */
			j->gz = false;
			j->gz_absent = in.err == -ENOENT;
			return open_path(j, j->st->rootfd, j->rel_len ? j->rel : ".");
		}
		if (in.err == -ENOENT || in.err == -ENOTDIR || in.err == -EXDEV || in.err == -ELOOP ||
		    in.err == -ENAMETOOLONG)
			return answer_status(r, j->tried_index ? 403 : 404);
		if (in.err == -EACCES || in.err == -EPERM)
			return answer_status(r, 403);
		return answer_status(r, 500);
	}
	j->fd = (int)in.n;
	return keel_then_flat(keel_file_statx(r->loop, j->fd, "", AT_EMPTY_PATH,
	                                      STATX_TYPE | STATX_MODE | STATX_SIZE | STATX_MTIME | STATX_INO,
	                                      &j->stx),
	                      on_stat, j);
}

static keel_promise *open_path(struct job *j, int dirfd, const char *path)
{
	keel_http_request *r = j->r;
	j->open_path = (char *)path;
	keel_promise *p = keel_file_open(r->loop, dirfd, path, O_RDONLY | O_NOCTTY | O_NONBLOCK, 0,
	                                 RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS);
	keel_promise_bind_ctx(p, keel_http_request_ctx(r));
	return keel_then_flat(p, on_open, j);
}

/*
 * A check of cache entry e is over for job j, which held e while it ran:
 * ok, the entry is served (its hold becomes the response's, dropped when
 * the response is sent); not, the file is looked up properly.
 */
static keel_promise *cache_checked(struct job *j, struct centry *e, bool ok, int err)
{
	j->mem = NULL;
	if (ok) {
		if (keel_ctx_on_free(keel_http_request_ctx(j->r), centry_unref, e) < 0) {
			centry_unref(e);
			return out_of_memory(j->r);
		}
		/* What the answer is made from (a waiter had no statx of its own). */
		j->stx.stx_mode = S_IFREG;
		j->stx.stx_size = e->size;
		j->stx.stx_ino = e->ino;
		j->stx.stx_mtime = e->mtime;
		j->mem = e;
		return finish(j);
	}
	centry_unref(e);
	if (err == -ECANCELED) {
		keel_promise *p = keel_promise_new(j->r->loop); /* the client went */
		keel_promise_reject(p, -ECANCELED);
		return p;
	}
	if (j->gz) {
		char *key = job_key(j);
		return key ? open_path(j, j->st->rootfd, key) : out_of_memory(j->r);
	}
	return open_path(j, j->st->rootfd, j->rel);
}

/* A cache hit is used only if the file is still the one that was read. */
static keel_promise *on_cache_stat(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	struct job *j = ud;
	struct centry *e = j->mem;
	bool ok = !e->dead && !in.err && S_ISREG(j->stx.stx_mode) && j->stx.stx_size == e->size &&
	          j->stx.stx_ino == e->ino && j->stx.stx_mtime.tv_sec == e->mtime.tv_sec &&
	          j->stx.stx_mtime.tv_nsec == e->mtime.tv_nsec;
	if (e->checker == j)
		e->checker = NULL;
	if (ok) {
		e->checked_ns = keel_loop_now_ns(j->r->loop);
		lru_unlink(j->st, e);
		lru_push(j->st, e);
	} else if (!e->dead && in.err != -ECANCELED) {
		cache_remove(j->st, e); /* changed or gone: forget it, look the file up properly */
	}
	/* The hits that waited for this statx hear its verdict (a cancelled one: none, they look). */
	struct job *w = j->waiters;
	j->waiters = NULL;
	while (w) {
		struct job *next = w->wnext;
		w->checker = NULL;
		keel_promise_resolve(w->wait_p, ok, NULL);
		w = next;
	}
	return cache_checked(j, e, ok, in.err);
}

/* A waiting hit given up by its request: it leaves its checker's list. */
static void cache_wait_cancel(keel_promise *p, void *ud)
{
	struct job *w = ud;
	if (w->checker) {
		for (struct job **pp = &w->checker->waiters; *pp; pp = &(*pp)->wnext) {
			if (*pp == w) {
				*pp = w->wnext;
				break;
			}
		}
		w->checker = NULL;
	}
	keel_promise_reject(p, -ECANCELED);
}

static keel_promise *on_cache_wait(keel_ctx *ctx, keel_outcome in, void *ud)
{
	(void)ctx;
	struct job *w = ud;
	return cache_checked(w, w->mem, !in.err && in.n == 1, in.err);
}

keel_promise *keel_static_handler(keel_http_request *r, void *ud)
{
	static const keel_http_header allow = {KEEL_STR_INIT("Allow"), KEEL_STR_INIT("GET, HEAD")};
	keel_static *st = ud;
	if (!keel_str_eq(r->msg.method, "GET") && !keel_str_eq(r->msg.method, "HEAD")) {
		r->resp.headers = &allow; /* RFC 9110 15.5.6: a 405 says what is allowed */
		r->resp.nheaders = 1;
		return answer_status(r, 405);
	}
	keel_ctx *ctx = keel_http_request_ctx(r);
	struct job *j = keel_ctx_alloc(ctx, sizeof(*j));
	char *rel = j ? keel_ctx_alloc(ctx, r->path.len + 4) : NULL;
	if (!rel)
		return out_of_memory(r);
	memset(j, 0, sizeof(*j));
	j->r = r;
	j->st = st;
	j->fd = -1;
	j->rel = rel;
	long n = keel__path_normalize(r->path.ptr, r->path.len, j->rel);
	if (n < 0)
		return answer_status(r, 400);
	j->rel_len = (size_t)n;
	bool gz = j->rel_len && accepts_gzip(r);
	if (j->rel_len) {
		/* The cache first: a .gz variant when the client takes gzip, else the plain file. */
		j->gz = gz;
		char *key = job_key(j);
		if (!key)
			return out_of_memory(r);
		struct centry *e = cache_find(st, key);
		if (!e && gz) {
			/* No .gz cached: the plain file, if its sibling was missing a moment ago. */
			j->gz = false;
			struct centry *plain = cache_find(st, j->rel);
			uint64_t now = keel_loop_now_ns(r->loop);
			if (plain && plain->gz_absent_ns &&
			    now - plain->gz_absent_ns < GZ_ABSENT_MS * 1000000ull) {
				e = plain;
				j->gz_absent = true;
			}
		}
		if (e && e->checked_ns == keel_loop_now_ns(r->loop)) {
			/*
			 * Checked by a statx in this very tick (the loop's time is read once
			 * per tick): as fresh as h2o's per-iteration file cache. A statx
			 * through io_uring always goes to an io-wq thread (and through the
			 * epoll backend's file pool): one per request cost more than TLS.
			 */
			st->hits++;
			j->stx.stx_mode = S_IFREG;
			j->stx.stx_size = e->size;
			j->stx.stx_ino = e->ino;
			j->stx.stx_mtime = e->mtime;
			if (!use_entry(j, e))
				return out_of_memory(r);
			return finish(j);
		}
		uint64_t now = keel_loop_now_ns(r->loop);
		if (e && e->checker && e->check_ns == now) {
			/*
			 * A statx issued in this tick checks it already: wait for its
			 * verdict (issued after this request arrived, it is as fresh)
			 * instead of sending one more through the file threads.
			 */
			st->hits++;
			e->refs++;
			j->mem = e;
			j->checker = e->checker;
			j->wnext = e->checker->waiters;
			e->checker->waiters = j;
			j->wait_p = keel_promise_new(r->loop);
			keel_promise_on_cancel(j->wait_p, cache_wait_cancel, j);
			return keel_then_flat(keel_promise_bind_ctx(j->wait_p, ctx), on_cache_wait, j);
		}
		if (e) {
			st->hits++;
			e->refs++; /* held while statx checks it: it may be evicted meanwhile */
			j->mem = e;
			e->checker = j;
			e->check_ns = now;
			st->checks++;
			return keel_then_flat(
			    keel_promise_bind_ctx(
			        keel_file_statx(r->loop, st->rootfd, e->key, 0,
			                        STATX_TYPE | STATX_SIZE | STATX_MTIME | STATX_INO, &j->stx),
			        ctx),
			    on_cache_stat, j);
		}
		st->misses++;
		j->gz = false;
	}
	if (gz) {
		char *gzpath = keel_ctx_alloc(ctx, j->rel_len + 4);
		if (!gzpath)
			return out_of_memory(r);
		memcpy(gzpath, j->rel, j->rel_len);
		memcpy(gzpath + j->rel_len, ".gz", sizeof(".gz")); /* (with its NUL) */
		j->gz = true;
		return open_path(j, st->rootfd, gzpath);
	}
	return open_path(j, st->rootfd, j->rel_len ? j->rel : ".");
}

void keel_static_get_stats(const keel_static *st, keel_static_stats *out)
{
	out->cache_hits = st->hits;
	out->cache_misses = st->misses;
	out->cache_checks = st->checks;
	out->cache_entries = st->entries;
	out->cache_bytes = st->bytes;
}

unsigned keel_static_metrics(void *ud, keel_http_metric *out, unsigned max)
{
	keel_static_stats s;
	keel_static_get_stats(ud, &s);
	const keel_http_metric m[] = {
	    {"static_cache_hits_total", "counter", "small-file cache hits", s.cache_hits},
	    {"static_cache_misses_total", "counter", "small-file cache misses", s.cache_misses},
	    {"static_cache_checks_total", "counter", "statx calls checking cache hits", s.cache_checks},
	    {"static_cache_entries", "gauge", "files in the small-file cache", s.cache_entries},
	    {"static_cache_bytes", "gauge", "bytes in the small-file cache", s.cache_bytes},
	};
	unsigned n = sizeof(m) / sizeof(m[0]);
	if (n > max)
		n = max;
	memcpy(out, m, n * sizeof(m[0]));
	return n;
}
