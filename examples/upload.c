/*
 * upload: a streamed upload to a file, with cancellation and cleanup.
 *
 *   usage: build/examples/upload [--listen ADDR:PORT] [--dir DIR]
 *          (default 127.0.0.1:8092 and ./uploads, made if missing)
 *
 *   PUT    /files/NAME   the body is written as it arrives into DIR/.NAME.part.N,
 *                        then fsync'd and renamed over DIR/NAME -- a reader never
 *                        sees half a file -> 201 "stored B bytes"
 *   DELETE /files/NAME   -> 204, or 404
 *
 * NAME: 1 to 128 letters, digits, '.', '_' or '-', not starting with '.'.
 * The body is never held whole: each piece keel_http_body_read gives is
 * written before the next is asked for, so a fast client is slowed to the
 * disk's pace and memory stays at one piece. When the client goes away
 * mid-body (the server cancels the handler's promise), the body is over
 * 1 GiB, or a write fails, the step in flight is cancelled down to the
 * kernel, and the part file is closed and unlinked -- through the loop,
 * like everything else.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <linux/openat2.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "keel/http.h"
#include "keel/keel.h"

#define NAME_MAX_LEN 128

static int dirfd_ = -1;                /* the upload directory, shared by the workers */
static _Atomic unsigned long part_seq; /* part files are named apart */

/*
 * One upload. Not in the request's context: its cleanup (close, unlink)
 * outlives the request when the client has gone.
 */
struct upload {
	keel_loop *loop;
	keel_http_request *r;
	keel_promise *done; /* the handler's promise */
	keel_promise *cur;  /* the step in flight (a handle kept to cancel it) */
	int fd;
	bool cancelled;
	uint64_t off;
	keel_str piece; /* the piece being written, and how much of it is */
	size_t piece_off;
	char part[NAME_MAX_LEN + 32], name[NAME_MAX_LEN + 1];
};

static void step(struct upload *u, keel_promise *p, keel_done_fn fn)
{
	u->cur = keel_finally(p, fn, u); /* fn sees the outcome; the handle lets on_cancel stop it */
}

static void step_over(struct upload *u)
{
	keel_promise_release(u->cur);
	u->cur = NULL;
}

static void fail(struct upload *u, int err);

/* A step is over: true to go on, false when it failed or the upload was given up (cleaned up). */
static bool step_ok(struct upload *u, keel_outcome o)
{
	step_over(u);
	if (!o.err && !u->cancelled)
		return true;
	fail(u, o.err ? o.err : -ECANCELED);
	return false;
}

static void unlinked(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	free(ud);
}

/* The part file goes (closed, unlinked), then the upload; the answer is err. */
static void fail(struct upload *u, int err)
{
	if (u->fd >= 0)
		keel_promise_release(keel_close(u->loop, u->fd));
	u->fd = -1;
	if (!u->cancelled)
		keel_promise_reject(u->done, err); /* (-EMSGSIZE: 413, -EBADMSG: 400, else 500) */
	else
		keel_promise_reject(u->done, -ECANCELED);
	keel_promise_done(keel_file_unlink(u->loop, dirfd_, u->part, 0), unlinked,
	                  u); /* u->part lives until then */
}

/* The server gave up the request (its client went): stop the step in flight; fail() follows. */
static void on_cancel(keel_promise *p, void *ud)
{
	(void)p;
	struct upload *u = ud;
	u->cancelled = true;
	if (u->cur)
		keel_promise_cancel(u->cur);
}

static void read_next(struct upload *u);

static void renamed(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct upload *u = ud;
	if (!step_ok(u, o))
		return;
	/* The answer lives in the request's context, sent after u is gone. */
	keel_http_request *r = u->r;
	keel_promise *done = u->done;
	unsigned long long bytes = (unsigned long long)u->off;
	free(u); /* (done is settled below, before anything could cancel it) */
	keel_ctx *rc = keel_http_request_ctx(r);
	char *text = rc ? keel_ctx_alloc(rc, 48) : NULL;
	if (!text) {
		keel_promise_reject(done, -ENOMEM);
		return;
	}
	int n = snprintf(text, 48, "stored %llu bytes\n", bytes);
	r->resp.status = 201;
	r->resp.content_type = "text/plain";
	r->resp.body = (keel_str){text, (size_t)n};
	keel_promise_resolve(done, 0, &r->resp);
}

static void closed(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct upload *u = ud;
	if (!step_ok(u, o))
		return;
	step(u, keel_file_rename(u->loop, dirfd_, u->part, dirfd_, u->name, 0), renamed);
}

static void synced(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct upload *u = ud;
	if (!step_ok(u, o))
		return;
	int fd = u->fd;
	u->fd = -1;
	step(u, keel_close(u->loop, fd), closed);
}

static void written(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct upload *u = ud;
	if (!step_ok(u, o))
		return;
	u->off += (uint64_t)o.n;
	u->piece_off += (size_t)o.n;
	if (u->piece_off < u->piece.len) { /* (a short write: the rest) */
		step(u,
		     keel_file_write(u->loop, u->fd, u->piece.ptr + u->piece_off, u->piece.len - u->piece_off,
		                     u->off),
		     written);
		return;
	}
	read_next(u);
}

static void got_piece(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct upload *u = ud;
	if (!step_ok(u, o))
		return;
	keel_str *piece = o.ptr;
	if (!piece || !piece->len) { /* the end: make it durable, then give it its name */
		step(u, keel_file_fsync(u->loop, u->fd, 0), synced);
		return;
	}
	u->piece = *piece; /* (borrowed until the next read) */
	u->piece_off = 0;
	step(u, keel_file_write(u->loop, u->fd, piece->ptr, piece->len, u->off), written);
}

static void read_next(struct upload *u)
{
	step(u, keel_http_body_read(u->r), got_piece);
}

static void opened(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct upload *u = ud;
	step_over(u);
	if (o.err) {
		keel_promise_reject(u->done, u->cancelled ? -ECANCELED : o.err);
		free(u); /* (nothing was made) */
		return;
	}
	u->fd = (int)o.n;
	if (u->cancelled) {
		fail(u, -ECANCELED);
		return;
	}
	read_next(u);
}

static bool name_ok(keel_str n)
{
	if (n.len == 0 || n.len > NAME_MAX_LEN || n.ptr[0] == '.')
		return false;
	for (size_t i = 0; i < n.len; i++) {
		char c = n.ptr[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			return false;
	}
	return true;
}

static keel_promise *put_route(keel_http_request *r, void *ud)
{
	(void)ud;
	keel_str name = {r->path.ptr + 7, r->path.len - 7}; /* after "/files/" */
	if (!name_ok(name))
		return keel_http_respond(r, 400, "text/plain", "bad name\n", 9);
	struct upload *u = calloc(1, sizeof(*u));
	if (!u)
		return keel_http_respond(r, 503, "text/plain", "busy\n", 5);
	u->loop = r->loop;
	u->r = r;
	u->fd = -1;
	memcpy(u->name, name.ptr, name.len);
	snprintf(u->part, sizeof(u->part), ".%s.part.%lu", u->name, part_seq++);
	u->done = keel_promise_new(r->loop);
	keel_promise_on_cancel(u->done, on_cancel, u);
	step(u,
	     keel_file_open(u->loop, dirfd_, u->part, O_WRONLY | O_CREAT | O_EXCL, 0644,
	                    RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS),
	     opened);
	return u->done;
}

static keel_outcome delete_answer(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	keel_http_request *r = ud;
	r->resp.status = o.err == -ENOENT ? 404 : o.err ? 500 : 204;
	r->resp.content_type = NULL;
	return keel_ok(0, &r->resp);
}

static keel_promise *delete_file(keel_http_request *r, void *ud)
{
	(void)ud;
	keel_str name = {r->path.ptr + 7, r->path.len - 7};
	if (!name_ok(name))
		return keel_http_respond(r, 400, "text/plain", "bad name\n", 9);
	char *path = keel_ctx_alloc(keel_http_request_ctx(r), name.len + 1);
	if (!path)
		return keel_http_respond(r, 503, "text/plain", "busy\n", 5);
	memcpy(path, name.ptr, name.len);
	path[name.len] = '\0';
	return keel_then(
	    keel_promise_bind_ctx(keel_file_unlink(r->loop, dirfd_, path, 0), keel_http_request_ctx(r)),
	    delete_answer, r);
}

static int setup(keel_http_server *srv, keel_loop *loop, unsigned worker, void *ud)
{
	(void)loop;
	(void)worker;
	(void)ud;
	int err =
	    keel_http_route(srv, "PUT", "/files/", KEEL_HTTP_PREFIX | KEEL_HTTP_STREAM_BODY, put_route, NULL);
	return err ? err : keel_http_route(srv, "DELETE", "/files/", KEEL_HTTP_PREFIX, delete_file, NULL);
}

int main(int argc, char **argv)
{
	keel_http_main_opts o = {.listen = "127.0.0.1:8092", .workers = 1, .grace_ms = 5000, .setup = setup};
	const char *dir = "uploads";
	static const struct option opts[] = {{"listen", required_argument, NULL, 'l'},
	                                     {"dir", required_argument, NULL, 'd'},
	                                     {"workers", required_argument, NULL, 'w'},
	                                     {NULL, 0, NULL, 0}};
	for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
		if (c == 'l')
			o.listen = optarg;
		else if (c == 'd')
			dir = optarg;
		else if (c == 'w')
			o.workers = (unsigned)atoi(optarg);
		else
			return 2;
	}
	if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
		fprintf(stderr, "upload: %s: %s\n", dir, strerror(errno));
		return 1;
	}
	if ((dirfd_ = open(dir, O_DIRECTORY | O_RDONLY | O_CLOEXEC)) < 0) {
		fprintf(stderr, "upload: %s: %s\n", dir, strerror(errno));
		return 1;
	}
	keel_http_config cfg;
	keel_http_config_default(&cfg);
	cfg.body_stream_max = 1ull << 30;
	o.cfg = &cfg;
	int err = keel_http_main(&o); /* until SIGINT/SIGTERM: uploads in flight get 5 s */
	close(dirfd_);
	return err ? 1 : 0;
}
