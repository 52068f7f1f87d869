/*
 * Static files for keel's HTTP server.
 *
 *   keel_static *st;
 *   int err = keel_static_new(&st, "/srv/www");
 *   if (err < 0) ... keel_strerror(err) ...
 *   keel_http_route(srv, NULL, "/", true, keel_static_handler, st);
 *
 * Paths are percent-decoded and normalized, then opened beneath the root
 * (openat2 RESOLVE_BENEATH): nothing outside it can be served. GET and HEAD;
 * index.html for directories (301 to add the trailing slash); ETag and
 * Last-Modified with If-None-Match / If-Modified-Since (304); one byte range
 * (206, or 416); a precompressed "name.gz" when the client accepts gzip.
 * Bodies go file -> socket without a copy.
 */
#ifndef KEEL_STATIC_H
#define KEEL_STATIC_H

#include "http.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keel_static keel_static;

/*
 * Serve the tree under dir, which is opened here and not kept (dir is
 * borrowed for the call only). Returns 0 and sets *out to an object the
 * caller owns (keel_static_free), or a negative errno with *out set to NULL:
 *   -EINVAL        dir is NULL
 *   -ENOENT        dir does not exist
 *   -ENOTDIR       dir (or a component of its path) is not a directory
 *   -EACCES, -ELOOP, -ENAMETOOLONG, -EMFILE, ...: as open(2) on dir
 *   -ENOMEM        out of memory
 */
int keel_static_new(keel_static **out, const char *dir);
/*
 * Free st once the server that routes to it has stopped: requests in flight
 * use it (the route holds st as its ud). Cached bodies still being sent
 * stay until their responses are done.
 */
void keel_static_free(keel_static *st);

/* The handler; ud is the keel_static (keel_static_free says how long it must live). */
keel_promise *keel_static_handler(keel_http_request *req, void *ud);

typedef struct keel_static_stats {
	uint64_t cache_hits, cache_misses; /* small-file cache lookups (files over 64 KiB are not cached) */
	uint64_t cache_checks;             /* statx calls made for hits (at most one per entry per tick) */
	uint32_t cache_entries;
	uint64_t cache_bytes;
} keel_static_stats;
/* Copy st's counters into *out. */
void keel_static_get_stats(const keel_static *st, keel_static_stats *out);

/*
 * The counters for the status page (st must outlive the server, as its ud):
 *   keel_http_status_add(srv, "root", "www", keel_static_metrics, st);
 */
unsigned keel_static_metrics(void *st, keel_http_metric *out, unsigned max);

#ifdef __cplusplus
}
#endif

#endif
