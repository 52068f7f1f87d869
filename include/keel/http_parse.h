/*
 * keel's HTTP/1.1 message parser: strict (RFC 9110/9112), zero-copy,
 * incremental.
 *
 * The head parser reports spans (keel_str) that point into the caller's
 * buffer; nothing is copied, so the spans are valid as long as the buffer
 * is. It is incremental in the way picohttpparser is: call it again with
 * the same buffer, grown, and the previous length; until the head is
 * complete only the new bytes are scanned (for the end of the head and for
 * the size limits), so a head arriving a byte at a time costs O(n), and the
 * full parse runs once. Pipelined messages: the return value is where the
 * body (or the next message) starts.
 *
 * The body is framed by the parser's verdict: none, Content-Length, or
 * chunked (decoded by keel_http_chunked, also zero-copy and incremental).
 */
#ifndef KEEL_HTTP_PARSE_H
#define KEEL_HTTP_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keel_str {
	const char *ptr;
	size_t len;
} keel_str;

/* A keel_str of a string literal, its length counted by the compiler: KEEL_STR("Allow"). */
#define KEEL_STR(lit) ((keel_str){"" lit, sizeof(lit) - 1})
/* The same, as an initializer (static tables): {KEEL_STR_INIT("Retry-After"), KEEL_STR_INIT("1")}. */
#define KEEL_STR_INIT(lit)              \
	{                               \
		"" lit, sizeof(lit) - 1 \
	}

typedef struct keel_http_header {
	keel_str name;
	keel_str value; /* leading and trailing whitespace removed */
} keel_http_header;

enum keel_http_body {
	KEEL_HTTP_BODY_NONE = 0, /* no body */
	KEEL_HTTP_BODY_LENGTH,   /* content_length bytes */
	KEEL_HTTP_BODY_CHUNKED,  /* Transfer-Encoding: chunked (HTTP/2: a streamed body of unknown length) */
	KEEL_HTTP_BODY_UNTIL_CLOSE /* responses only: read until the connection closes */
};

typedef struct keel_http_limits {
	size_t request_line_max; /* default 8192; longer: 414 */
	size_t head_max;         /* request line + headers; default 16384; larger: 431 */
	unsigned headers_max;    /* default 100; more: 431 */
} keel_http_limits;

/* A parsed request head (or response head: status/reason instead of method/target). */
typedef struct keel_http_msg {
	keel_str method; /* requests */
	keel_str target;
	int status; /* responses */
	keel_str reason;
	int version_minor;         /* HTTP/1.x */
	keel_http_header *headers; /* the caller's array */
	unsigned nheaders;
	enum keel_http_body body;
	uint64_t content_length;
	keel_str host;        /* requests: the Host header value */
	bool keep_alive;      /* per version and Connection */
	bool expect_continue; /* Expect: 100-continue */
	bool upgrade;         /* Connection: upgrade with an Upgrade header */
	size_t head_len;      /* bytes of the head, including the final CRLF CRLF (and the empty
	                           lines, up to 8, skipped before the start line: RFC 9112 2.2) */
} keel_http_msg;

/* Results below zero: what to answer. */
enum {
	KEEL_HTTP_INCOMPLETE = -1, /* need more bytes */
	KEEL_HTTP_E400 = -400,     /* malformed: answer 400 and close */
	KEEL_HTTP_E414 = -414,     /* request line too long */
	KEEL_HTTP_E431 = -431,     /* head too large or too many headers */
	KEEL_HTTP_E501 = -501,     /* a transfer coding keel does not implement */
	KEEL_HTTP_E505 = -505,     /* HTTP version not supported */
};

void keel_http_limits_default(keel_http_limits *l);

/*
 * Parse a request head in buf[0..len). prev_len is how many bytes of buf a
 * previous call already saw without finding the end of the head (0 the first
 * time). headers/headers_cap is the caller's array for the header spans.
 * Returns the head length (> 0) with *msg filled in, KEEL_HTTP_INCOMPLETE,
 * or a negative status (KEEL_HTTP_E4xx/E5xx): reject with that status and
 * close the connection. msg's spans point into buf and msg->headers is
 * headers: *msg is valid while both are. limits is read during the call.
 *
 * Strict: CL with TE, differing or malformed Content-Length, a
 * Transfer-Encoding other than a final chunked (501 for an unknown coding),
 * TE in HTTP/1.0, whitespace before ':', obs-fold, CTLs and NUL in names,
 * values and target, missing or repeated Host in HTTP/1.1, a Host that is not
 * uri-host [":" port], bare CR, and a version
 * other than HTTP/1.x (505 for HTTP/2+ and HTTP/0.x, 400 for junk) are all
 * rejected. HTTP/1.2 .. HTTP/1.9 are read as HTTP/1.1 (RFC 9110 2.5):
 * version_minor is 1.
 */
int keel_http_parse_request(const char *buf, size_t len, size_t prev_len, keel_http_msg *msg,
                            keel_http_header *headers, unsigned headers_cap, const keel_http_limits *limits);

/*
 * Parse a response head. method is the request's method (HEAD and CONNECT
 * change the framing of a response; read during the call); may be NULL.
 * Same returns, and *msg points into buf and headers as above. Framing per
 * RFC 9112 6.3: Transfer-Encoding with chunked last is CHUNKED (codings
 * before it, e.g. "gzip, chunked", stay in the body: check the header), with
 * another coding last it is UNTIL_CLOSE.
 */
int keel_http_parse_response(const char *buf, size_t len, size_t prev_len, keel_http_msg *msg,
                             keel_http_header *headers, unsigned headers_cap, const keel_http_limits *limits,
                             keel_str method);

/*
 * Iterate the comma-separated elements of a list header value (Connection,
 * Transfer-Encoding, ...), empty ones skipped and OWS trimmed: true and
 * *elem set (a span of list's bytes) while there is one; list is advanced
 * past it.
 */
bool keel_http_list_next(keel_str *list, keel_str *elem);

/* ---- Request targets ----------------------------------------------------- */

enum keel_http_target_form {
	KEEL_HTTP_TARGET_ORIGIN = 0, /* "/path?query" */
	KEEL_HTTP_TARGET_ABSOLUTE,   /* "http://authority/path?query" (to a proxy, or any server) */
	KEEL_HTTP_TARGET_ASTERISK,   /* "*" (OPTIONS) */
};

/* A request target, parsed once: what routing matches and what a proxy forwards are the same. */
typedef struct keel_http_target {
	enum keel_http_target_form form;
	keel_str scheme;    /* absolute-form: "http" or "https" (any case); else empty */
	keel_str authority; /* absolute-form: host [":" port], which replaces Host (RFC 9112 3.2.2) */
	keel_str path;      /* normalized (keel_http_path_normalize); "/" when empty; "*" for asterisk-form */
	keel_str query;     /* after '?', without it, as sent */
} keel_http_target;

/*
 * Parse a request target (RFC 9112 3.2): origin-form, absolute-form with an
 * http or https scheme and a valid host (no userinfo), or "*". The path is
 * normalized into scratch (at least target.len bytes) when it is not already
 * normal, else it points into the target; the other spans of *out point
 * into the target. scratch may be NULL: a path that needs normalizing then
 * returns KEEL_HTTP_INCOMPLETE, to be asked again with room (so the common
 * case allocates nothing). Returns 0 or KEEL_HTTP_E400
 * (a fragment, an unknown scheme, a bad authority, a path that cannot be
 * normalized safely).
 */
int keel_http_target_parse(keel_str target, keel_http_target *out, char *scratch);

/*
 * Normalize an absolute path (RFC 3986 6.2.2) into out (len bytes suffice):
 * escapes of unreserved characters decoded (%7E -> ~, %2E -> .), other
 * escapes' hex upper-cased (%2f -> %2F), "." and ".." segments removed, a
 * run of '/' merged into one (as nginx's merge_slashes). Encoded '/' and
 * '\' (%2F, %5C) stay encoded: data, not separators. Returns the length
 * (never more than len), or KEEL_HTTP_E400 for: no leading '/', a bad
 * escape, an encoded control byte (%00..%1F, %7F), a ".." above the root,
 * or a segment another server could read as a dot segment -- "." or ".."
 * next to %2F, %5C or '\', or before ";" ("..;/", "..%2F"). out is caller
 * storage, written before return; path is read during the call.
 */
long keel_http_path_normalize(const char *path, size_t len, char *out);

/* Case-insensitive header lookup: the first header named name (a pointer into msg->headers), or NULL. */
const keel_http_header *keel_http_header_find(const keel_http_msg *msg, const char *name);

/* Exact (case-sensitive) comparison of a span with a C string. Inline so the length of a
 * literal is known at compile time. */
static inline bool keel_str_eq(keel_str a, const char *lit)
{
	size_t n = __builtin_strlen(lit);
	/* (an empty span may have no ptr) */
	return a.len == n && (n == 0 || __builtin_memcmp(a.ptr, lit, n) == 0);
}

/* ASCII-case-insensitive comparison of two spans. */
static inline bool keel_str_ieq_str(keel_str a, keel_str b)
{
	if (a.len != b.len)
		return false;
	for (size_t i = 0; i < a.len; i++) {
		unsigned char x = (unsigned char)a.ptr[i], y = (unsigned char)b.ptr[i];
		if ((unsigned char)(x - 'A') < 26)
			x = (unsigned char)(x + 32);
		if ((unsigned char)(y - 'A') < 26)
			y = (unsigned char)(y + 32);
		if (x != y)
			return false;
	}
	return true;
}

/* ASCII-case-insensitive comparison of a span with a C string. */
static inline bool keel_str_ieq(keel_str a, const char *lit)
{
	size_t n = __builtin_strlen(lit);
	if (a.len != n)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char x = (unsigned char)a.ptr[i], y = (unsigned char)lit[i];
		if ((unsigned char)(x - 'A') < 26)
			x = (unsigned char)(x + 32);
		if ((unsigned char)(y - 'A') < 26)
			y = (unsigned char)(y + 32);
		if (x != y)
			return false;
	}
	return true;
}

/* ---- Chunked transfer coding ------------------------------------------- */

typedef struct keel_http_chunked {
	int state;
	uint64_t remaining; /* bytes left in the current chunk */
	uint64_t total;     /* data bytes decoded so far */
	uint64_t body_max;  /* 0: no limit; more: KEEL_HTTP_E413 */
	unsigned trailer_bytes;
	int ext_len;
	/*
	 * Set after init to have the trailer section handed out: its bytes as
	 * they are decoded (KEEL_HTTP_CHUNK_TRAILER spans), for the caller to
	 * gather and read with keel_http_trailers_parse; the caller bounds
	 * what it gathers. Off: trailers are checked and dropped, their names
	 * and values bounded at 8 KiB.
	 */
	bool trailers_want;
} keel_http_chunked;

enum {
	KEEL_HTTP_CHUNK_DATA = 1,    /* *data is a span of body bytes */
	KEEL_HTTP_CHUNK_DONE = 2,    /* last chunk and trailers consumed: the message ends */
	KEEL_HTTP_CHUNK_TRAILER = 3, /* *data is a span of the trailer section (trailers_want) */
	KEEL_HTTP_E413 = -413,       /* body larger than body_max */
};

void keel_http_chunked_init(keel_http_chunked *d, uint64_t body_max);

/*
 * Decode from buf[0..len). *used is set to the bytes consumed. Returns
 * KEEL_HTTP_CHUNK_DATA with *data pointing into buf (one call returns one
 * span; call again with the rest), KEEL_HTTP_INCOMPLETE when all of buf was
 * consumed without finishing (keep feeding), KEEL_HTTP_CHUNK_DONE (the
 * bytes after *used belong to the next message), or KEEL_HTTP_E400 /
 * KEEL_HTTP_E413.
 */
int keel_http_chunked_decode(keel_http_chunked *d, const char *buf, size_t len, size_t *used, keel_str *data);

/*
 * The fields of a trailer section gathered from KEEL_HTTP_CHUNK_TRAILER
 * spans (raw[0..len), which the decoder has checked: "name: value" lines,
 * each ending in CRLF). Up to max fields go to out, their spans pointing
 * into raw; returns how many there are (more than max: some were left out).
 */
unsigned keel_http_trailers_parse(const char *raw, size_t len, keel_http_header *out, unsigned max);

#ifdef __cplusplus
}
#endif

#endif
