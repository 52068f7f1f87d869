/*
 * Routes: a method and a path (exact or prefix) to a handler. Requests are
 * matched on their normalized path; the most specific route wins (exact
 * over prefix, the longer prefix over the shorter), and a path that some
 * route knows under another method is a 405 with the methods it allows.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h" /* keel__malloc, keel__realloc: fault injection reaches them */
#include "keel/http.h"
#include "keel/http_parse.h"
#include "server_internal.h"

int keel_http_route(keel_http_server *s, const char *method, const char *path, unsigned flags,
                    keel_http_handler handler, void *ud)
{
	if (!path || path[0] != '/' || !handler ||
	    (flags & ~(unsigned)(KEEL_HTTP_PREFIX | KEEL_HTTP_STREAM_BODY | KEEL_HTTP_NO_SHED)))
		return -EINVAL;
	/* Requests are matched by their normalized path: a route that is not one could never match. */
	size_t plen = strlen(path);
	char *norm = keel__malloc(plen + 1);
	if (!norm)
		return -ENOMEM;
	long nl = keel_http_path_normalize(path, plen, norm);
	bool normal = nl == (long)plen && memcmp(norm, path, plen) == 0;
	free(norm);
	if (!normal)
		return -EINVAL;
	struct route *r = keel__realloc(s->routes, (s->nroutes + 1) * sizeof(*r));
	if (!r)
		return -ENOMEM;
	s->routes = r;
	r = &s->routes[s->nroutes];
	r->method = method ? strdup(method) : NULL;
	r->path = strdup(path);
	if ((method && !r->method) || !r->path) {
		free(r->method);
		free(r->path);
		return -ENOMEM;
	}
	r->plen = strlen(path);
	r->mlen = method ? strlen(method) : 0;
	r->prefix = flags & KEEL_HTTP_PREFIX;
	r->stream = flags & KEEL_HTTP_STREAM_BODY;
	r->no_shed = flags & KEEL_HTTP_NO_SHED;
	r->fn = handler;
	r->ud = ud;
	s->nroutes++;
	return 0;
}

static bool path_match(const struct route *rt, keel_str path)
{
	return (rt->prefix ? path.len >= rt->plen : path.len == rt->plen) &&
	       (rt->plen == 0 || memcmp(path.ptr, rt->path, rt->plen) == 0);
}

/* Whether a matches more specifically than b: exact over prefix, the longer prefix over the shorter. */
static bool more_specific(const struct route *a, const struct route *b)
{
	return (!a->prefix && b->prefix) || (a->prefix && b->prefix && a->plen > b->plen);
}

/*
 * The route for req, or NULL: *method_ok false when routes know its path
 * under other methods only -- also when the one that would take it is a
 * less specific route for every method (a catch-all "/"): a method the
 * path's own routes refuse is 405, not whatever the catch-all answers. A
 * route that names the method takes it, however specific it is.
 */
const struct route *keel__route_find(keel_http_server *s, const keel_http_request *req, bool *method_ok)
{
	const struct route *best = NULL, *nearest = NULL; /* (nearest: by path alone) */
	*method_ok = true;
	for (unsigned i = 0; i < s->nroutes; i++) {
		const struct route *r = &s->routes[i];
		if (!path_match(r, req->path))
			continue;
		if (!nearest || more_specific(r, nearest))
			nearest = r;
		keel_str m = req->msg.method;
		if (r->method && !(m.len == r->mlen && memcmp(m.ptr, r->method, m.len) == 0) &&
		    !(strcmp(r->method, "GET") == 0 && keel_str_eq(m, "HEAD")))
			continue;
		if (!best || more_specific(r, best))
			best = r;
	}
	if (nearest && (!best || (!best->method && more_specific(nearest, best)))) {
		*method_ok = false;
		return NULL;
	}
	return best;
}

/* The Allow list of a 405 (RFC 9110 15.5.6): every method some route takes for path, and HEAD with GET. */
size_t keel__route_methods(keel_http_server *s, keel_str path, char *list, size_t cap)
{
	size_t n = 0;
	bool get = false;
	list[0] = '\0';
	for (unsigned i = 0; i < s->nroutes; i++) {
		const struct route *rt = &s->routes[i];
		if (!path_match(rt, path) || !rt->method || strstr(list, rt->method))
			continue;
		if (n + rt->mlen + 8 > cap)
			break; /* the list is bounded; 405 with a partial Allow is still a 405 */
		n += (size_t)snprintf(list + n, cap - n, "%s%s", n ? ", " : "", rt->method);
		get = get || strcmp(rt->method, "GET") == 0;
		if (n + 56 >= cap)
			break;
	}
	if (get && !strstr(list, "HEAD") && n + 6 < cap)
		n += (size_t)snprintf(list + n, cap - n, ", HEAD");
	return n;
}
