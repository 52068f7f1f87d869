/*
 * File and descriptor operations: openat2 with RESOLVE_BENEATH, write, read,
 * statx, fsync, close; sendfile of files from 0 B to 8 MiB into a socket,
 * verified; pollable reads on a pipe, and their cancellation; mkdir,
 * rename (plain, RENAME_NOREPLACE, RENAME_EXCHANGE) and unlink of files and
 * directories, with the errors a service meets.
 */
#include <fcntl.h>
#include <linux/fs.h> /* RENAME_NOREPLACE, RENAME_EXCHANGE */
#include <linux/openat2.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test.h"

static keel_loop *loop;
static char dir[] = "/tmp/keel-test-file-XXXXXX";

static int await_ok(keel_promise *p)
{
	keel_outcome o = test_await(loop, p);
	if (o.err)
		FAIL("%s", keel_strerror(o.err));
	return (int)o.n;
}

static void test_rw(int dfd)
{
	int fd =
	    await_ok(keel_file_open(loop, dfd, "a.bin", O_RDWR | O_CREAT | O_TRUNC, 0644, RESOLVE_BENEATH));
	ASSERT(fd >= 0);
	char out[10000], in[10000];
	for (size_t i = 0; i < sizeof(out); i++)
		out[i] = (char)(i * 7);
	ASSERT_EQ(await_ok(keel_file_write(loop, fd, out, sizeof(out), 0)), sizeof(out));
	ASSERT_EQ(await_ok(keel_file_write(loop, fd, "tail", 4, sizeof(out))), 4);
	ASSERT_EQ(await_ok(keel_file_fsync(loop, fd, 0)), 0);
	ASSERT_EQ(await_ok(keel_file_fsync(loop, fd, 1)), 0);
	ASSERT_EQ(await_ok(keel_file_read(loop, fd, in, sizeof(in), 0)), sizeof(in));
	ASSERT(memcmp(in, out, sizeof(in)) == 0);
	ASSERT_EQ(await_ok(keel_file_read(loop, fd, in, sizeof(in), sizeof(out))), 4);
	ASSERT(memcmp(in, "tail", 4) == 0);
	ASSERT_EQ(await_ok(keel_file_read(loop, fd, in, sizeof(in), 1 << 20)), 0); /* past EOF */

	struct statx stx;
	ASSERT_EQ(await_ok(keel_file_statx(loop, dfd, "a.bin", 0, STATX_SIZE | STATX_MODE, &stx)), 0);
	ASSERT_EQ(stx.stx_size, sizeof(out) + 4);
	ASSERT(S_ISREG(stx.stx_mode));
	ASSERT_EQ(await_ok(keel_close(loop, fd)), 0);

	/* Errors come back as negative errno. */
	keel_outcome o = test_await(loop, keel_file_open(loop, dfd, "missing", O_RDONLY, 0, 0));
	ASSERT_EQ(o.err, -ENOENT);
	o = test_await(loop, keel_file_statx(loop, dfd, "missing", 0, STATX_SIZE, &stx));
	ASSERT_EQ(o.err, -ENOENT);
	o = test_await(loop, keel_file_read(loop, 12345, in, 1, 0));
	ASSERT_EQ(o.err, -EBADF);

	/* RESOLVE_BENEATH: no escaping the directory, by .. or absolute path or symlink. */
	o = test_await(loop, keel_file_open(loop, dfd, "../etc/passwd", O_RDONLY, 0, RESOLVE_BENEATH));
	ASSERT_EQ(o.err, -EXDEV);
	o = test_await(loop, keel_file_open(loop, dfd, "/etc/passwd", O_RDONLY, 0, RESOLVE_BENEATH));
	ASSERT_EQ(o.err, -EXDEV);
	ASSERT_EQ(symlinkat("/etc/passwd", dfd, "link"), 0);
	o = test_await(loop, keel_file_open(loop, dfd, "link", O_RDONLY, 0, RESOLVE_BENEATH));
	ASSERT_EQ(o.err, -EXDEV);
	unlinkat(dfd, "link", 0);
	printf("open/read/write/statx/fsync/close, RESOLVE_BENEATH: ok\n");
}

struct drain {
	int fd;
	char *buf;
	size_t len, cap;
	int eof;
};

static void drain_step(struct drain *d);

static void drain_got(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct drain *d = ud;
	ASSERT_EQ(o.err, 0);
	if (o.n == 0) {
		d->eof = 1;
		return;
	}
	d->len += (size_t)o.n;
	drain_step(d);
}

static void drain_step(struct drain *d)
{
	keel_promise_done(keel_recv(loop, d->fd, d->buf + d->len, d->cap - d->len), drain_got, d);
}

static void test_sendfile(int dfd)
{
	static const size_t sizes[] = {0, 1, 4096, 65537, 1 << 20, (8 << 20) + 3};
	for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		size_t n = sizes[k];
		char *data = malloc(n + 1);
		for (size_t i = 0; i < n; i++)
			data[i] = (char)((i * 131 + k) >> 3);
		int fd = openat(dfd, "sf.bin", O_RDWR | O_CREAT | O_TRUNC, 0644);
		ASSERT(fd >= 0);
		ASSERT_EQ(write(fd, data, n), (ssize_t)n);

		int sv[2];
		ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
		struct drain d = {sv[1], malloc(n + 16), 0, n + 16, 0};
		drain_step(&d);
		/* From an offset, to check offsets are honoured. */
		size_t off = n > 10 ? 7 : 0;
		keel_outcome o = test_await(loop, keel_sendfile(loop, sv[0], fd, off, n - off));
		ASSERT_EQ(o.err, 0);
		ASSERT_EQ(o.n, (long long)(n - off));
		close(sv[0]);
		while (!d.eof)
			keel_loop_run_once(loop, 100);
		ASSERT_EQ(d.len, n - off);
		ASSERT(memcmp(d.buf, data + off, n - off) == 0);

		/* Asking for more than the file holds: short, with what there was. */
		if (n > 0) {
			ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
			struct drain d2 = {sv[1], malloc(n + 16), 0, n + 16, 0};
			drain_step(&d2);
			o = test_await(loop, keel_sendfile(loop, sv[0], fd, 0, n + 1000));
			ASSERT_EQ(o.err, 0);
			ASSERT_EQ(o.n, (long long)n);
			close(sv[0]);
			while (!d2.eof)
				keel_loop_run_once(loop, 100);
			ASSERT_EQ(d2.len, n);
			free(d2.buf);
			close(sv[1]);
		}
		close(d.fd);
		close(fd);
		free(d.buf);
		free(data);
	}
	printf("sendfile 0 B .. 8 MiB (+offsets, short files): ok\n");
}

static void test_pipe_read(void)
{
	int p[2];
	ASSERT_EQ(pipe2(p, O_CLOEXEC), 0); /* blocking on purpose: keel must not block */
	char buf[32];
	keel_promise *r = keel_read(loop, p[0], buf, sizeof(buf));
	for (int i = 0; i < 3; i++)
		keel_loop_run_once(loop, 10);
	ASSERT(!keel_promise_is_settled(r));
	ASSERT_EQ(write(p[1], "ping", 4), 4);
	keel_outcome o = test_await(loop, r);
	ASSERT_EQ(o.n, 4);
	ASSERT(memcmp(buf, "ping", 4) == 0);

	r = keel_read(loop, p[0], buf, sizeof(buf));
	keel_loop_run_once(loop, 0);
	keel_promise_cancel(r);
	o = test_await(loop, r);
	ASSERT_EQ(o.err, -ECANCELED);

	close(p[1]);
	o = test_await(loop, keel_read(loop, p[0], buf, sizeof(buf)));
	ASSERT_EQ(o.n, 0); /* EOF */
	close(p[0]);
	printf("pollable read on a pipe, cancel, EOF: ok\n");
}

static keel_outcome sf_out;
static int sf_done;

static void sf_fin(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)ud;
	sf_out = o;
	sf_done = 1;
}

static int file_of(int dfd, const char *name, char ch, size_t n)
{
	char *buf = malloc(n);
	memset(buf, ch, n);
	int fd = openat(dfd, name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ASSERT(fd >= 0);
	ASSERT_EQ(write(fd, buf, n), (ssize_t)n);
	free(buf);
	unlinkat(dfd, name, 0);
	return fd;
}

/*
 * A transfer cancelled right after its first chunk went into the pipe must
 * not leave that pipe, full, for the next transfer: those bytes would be
 * sent as another file's body, to another socket (io_uring's pipe cache).
 */
static void test_sendfile_cancel_pipe(int dfd)
{
	int a = file_of(dfd, "A.bin", 'A', 100000), b = file_of(dfd, "B.bin", 'B', 16);
	int s1[2], s2[2];
	ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, s1), 0);
	ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, s2), 0);
	for (int round = 0; round < 20; round++) {
		sf_done = 0;
		keel_promise *p = keel_sendfile(loop, s1[0], a, 0, 100000);
		keel_promise_done(p, sf_fin, NULL);
		keel_loop_run_once(loop, 0); /* the first splice, file -> pipe, is submitted */
		keel_promise_cancel(p);
		while (!sf_done)
			keel_loop_run_once(loop, 1);
		static char junk[200000];
		while (recv(s1[1], junk, sizeof junk, MSG_DONTWAIT) > 0)
			;
		sf_done = 0;
		keel_promise_done(keel_sendfile(loop, s2[0], b, 0, 16), sf_fin, NULL);
		while (!sf_done)
			keel_loop_run_once(loop, 1);
		ASSERT_EQ(sf_out.n, 16);
		char got[64] = "";
		ASSERT_EQ(recv(s2[1], got, sizeof got, MSG_DONTWAIT), 16);
		if (memcmp(got, "BBBBBBBBBBBBBBBB", 16) != 0)
			FAIL("round %d: the next transfer sent \"%.16s\": the cancelled one's bytes", round,
			     got);
	}
	close(a);
	close(b);
	for (int i = 0; i < 2; i++) {
		close(s1[i]);
		close(s2[i]);
	}
	printf("sendfile: a cancelled transfer leaves no bytes for the next one: ok\n");
}

/* A non-blocking socket whose buffer fills: the transfer waits for room, on both backends. */
static void test_sendfile_nonblocking(int dfd)
{
	enum { LEN = 200000 };
	int f = file_of(dfd, "nb.bin", 'x', LEN);
	int sv[2];
	ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
	int sz = 4096;
	setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	sf_done = 0;
	keel_promise_done(keel_sendfile(loop, sv[0], f, 0, LEN), sf_fin, NULL);
	size_t total = 0;
	static char buf[LEN];
	for (int i = 0; i < 5000 && (!sf_done || total < LEN); i++) {
		keel_loop_run_once(loop, 1);
		if (i > 20) { /* a reader that starts late */
			ssize_t n = recv(sv[1], buf, sizeof buf, MSG_DONTWAIT);
			if (n > 0)
				total += (size_t)n;
		}
	}
	ASSERT(sf_done);
	ASSERT_EQ(sf_out.err, 0);
	ASSERT_EQ(sf_out.n, LEN);
	ASSERT_EQ(total, LEN);
	close(f);
	close(sv[0]);
	close(sv[1]);
	printf("sendfile: a non-blocking socket that fills is waited for: ok\n");
}

static int await_err(keel_promise *p)
{
	keel_outcome o = test_await(loop, p);
	return o.err;
}

/* A file's contents, read the ordinary way (the checks are not what is tested). */
static void expect_file(int dfd, const char *path, const char *want)
{
	char buf[64] = {0};
	int fd = openat(dfd, path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		FAIL("%s: not there", path);
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n < 0 || strcmp(buf, want) != 0)
		FAIL("%s holds \"%s\", want \"%s\"", path, buf, want);
}

static void put_file(int dfd, const char *path, const char *text)
{
	int fd = openat(dfd, path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	ASSERT(fd >= 0);
	ASSERT_EQ(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
}

static void test_paths(int dfd)
{
	struct stat sb;
	ASSERT_EQ(await_ok(keel_file_mkdir(loop, dfd, "up", 0750)), 0);
	ASSERT(fstatat(dfd, "up", &sb, 0) == 0 && S_ISDIR(sb.st_mode));
	ASSERT_EQ(sb.st_mode & 0777 & ~0750u, 0); /* (less the umask) */
	ASSERT_EQ(await_err(keel_file_mkdir(loop, dfd, "up", 0750)), -EEXIST);
	ASSERT_EQ(await_err(keel_file_mkdir(loop, dfd, "nope/up", 0750)), -ENOENT);

	put_file(dfd, "up/part", "one");
	ASSERT_EQ(await_ok(keel_file_rename(loop, dfd, "up/part", dfd, "up/done", 0)), 0);
	expect_file(dfd, "up/done", "one");
	ASSERT(fstatat(dfd, "up/part", &sb, 0) < 0 && errno == ENOENT);
	put_file(dfd, "up/part", "two");
	ASSERT_EQ(await_err(keel_file_rename(loop, dfd, "up/part", dfd, "up/done", RENAME_NOREPLACE)),
	          -EEXIST);
	expect_file(dfd, "up/done", "one");
	ASSERT_EQ(await_ok(keel_file_rename(loop, dfd, "up/part", dfd, "up/done", RENAME_EXCHANGE)), 0);
	expect_file(dfd, "up/done", "two");
	expect_file(dfd, "up/part", "one");
	ASSERT_EQ(await_err(keel_file_rename(loop, dfd, "up/missing", dfd, "up/x", 0)), -ENOENT);

	ASSERT_EQ(await_err(keel_file_unlink(loop, dfd, "up", AT_REMOVEDIR)), -ENOTEMPTY);
	ASSERT_EQ(await_err(keel_file_unlink(loop, dfd, "up", 0)), -EISDIR);
	ASSERT_EQ(await_ok(keel_file_unlink(loop, dfd, "up/part", 0)), 0);
	ASSERT_EQ(await_ok(keel_file_unlink(loop, dfd, "up/done", 0)), 0);
	ASSERT_EQ(await_err(keel_file_unlink(loop, dfd, "up/done", 0)), -ENOENT);
	ASSERT_EQ(await_ok(keel_file_unlink(loop, dfd, "up", AT_REMOVEDIR)), 0);
	ASSERT(fstatat(dfd, "up", &sb, 0) < 0 && errno == ENOENT);

	/* The paths are the caller's until the promise settles, not longer: a buffer reused after. */
	char name[32];
	snprintf(name, sizeof(name), "tmp%d", 1);
	keel_promise *p = keel_file_mkdir(loop, dfd, name, 0700);
	ASSERT_EQ(await_ok(p), 0);
	memset(name, 'X', sizeof(name) - 1);
	ASSERT_EQ(await_ok(keel_file_unlink(loop, dfd, "tmp1", AT_REMOVEDIR)), 0);
	printf("mkdir, rename (NOREPLACE, EXCHANGE), unlink and their errors: ok\n");
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	ASSERT(mkdtemp(dir) != NULL);
	int dfd = open(dir, O_DIRECTORY | O_RDONLY | O_CLOEXEC);
	ASSERT(dfd >= 0);
	loop = test_loop();
	test_rw(dfd);
	test_sendfile(dfd);
	test_sendfile_cancel_pipe(dfd);
	test_sendfile_nonblocking(dfd);
	test_pipe_read();
	test_paths(dfd);
	keel_loop_stats st;
	keel_loop_get_stats(loop, &st);
	ASSERT_EQ(st.ops_inflight, 0);
	keel_loop_free(loop);
	unlinkat(dfd, "a.bin", 0);
	unlinkat(dfd, "sf.bin", 0);
	close(dfd);
	rmdir(dir);
	printf("file: ok\n");
	return 0;
}
