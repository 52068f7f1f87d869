/*
 * TCP: address parsing, listening sockets, and the socket operations as
 * promises (accept and receive streams, connect with a deadline, sends that
 * complete in full).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/internal.h"
#include "keel/errors.h"
#include "keel/tcp.h"
#include "listen.h"

int keel_addr_parse(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
	char host[64];
	const char *colon, *hs;
	size_t hl;

	if (!s)
		return -EINVAL;
	memset(ss, 0, sizeof(*ss));
	if (strncmp(s, "unix:", 5) == 0) {
		/* unix:/absolute/path, or unix:@name in the abstract namespace */
		struct sockaddr_un *un = (struct sockaddr_un *)ss;
		const char *path = s + 5;
		size_t n = strlen(path);
		if ((path[0] != '/' && path[0] != '@') || n < 2 || n >= sizeof(un->sun_path))
			return -EINVAL;
		un->sun_family = AF_UNIX;
		memcpy(un->sun_path, path, n);
		if (path[0] == '@')
			un->sun_path[0] = '\0';
		*len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (path[0] == '/'));
		return 0;
	}
	if (s[0] == '[') {
		const char *end = strchr(s, ']');
		if (!end || end[1] != ':')
			return -EINVAL;
		hs = s + 1;
		hl = (size_t)(end - hs);
		colon = end + 1;
	} else {
		colon = strrchr(s, ':');
		if (!colon)
			return -EINVAL;
		hs = s;
		hl = (size_t)(colon - s);
	}
	if (hl >= sizeof(host))
		return -EINVAL;
	memcpy(host, hs, hl);
	host[hl] = '\0';

	char *endp;
	errno = 0;
	unsigned long port = strtoul(colon + 1, &endp, 10);
	if (colon[1] == '\0' || *endp != '\0' || port > 65535 || errno || colon[1] == '-' || colon[1] == '+')
		return -EINVAL;

	struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
	if (hl == 0 || strcmp(host, "*") == 0) {
		in4->sin_family = AF_INET;
		in4->sin_addr.s_addr = htonl(INADDR_ANY);
		in4->sin_port = htons((uint16_t)port);
		*len = sizeof(*in4);
	} else if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons((uint16_t)port);
		*len = sizeof(*in4);
	} else if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)port);
		*len = sizeof(*in6);
	} else {
		return -EINVAL;
	}
	return 0;
}

char *keel_addr_format(const struct sockaddr *sa, char *buf, size_t size)
{
	char ip[INET6_ADDRSTRLEN];
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in4 = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &in4->sin_addr, ip, sizeof(ip));
		snprintf(buf, size, "%s:%u", ip, ntohs(in4->sin_port));
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
		snprintf(buf, size, "[%s]:%u", ip, ntohs(in6->sin6_port));
	} else if (sa->sa_family == AF_UNIX) {
		/* (an unnamed socket -- a client's -- has no path: "unix:") */
		const struct sockaddr_un *un = (const struct sockaddr_un *)sa;
		const char *p = un->sun_path;
		size_t max = sizeof(un->sun_path);
		if (p[0] || !p[1])
			snprintf(buf, size, "unix:%.*s", (int)strnlen(p, max), p);
		else
			snprintf(buf, size, "unix:@%.*s", (int)strnlen(p + 1, max - 1), p + 1);
	} else {
		snprintf(buf, size, "?");
	}
	return buf;
}

/*
 * A Unix socket's path is taken when a socket file is there: one nobody
 * listens on any more (a process that ended without removing it) is
 * removed, and the bind tried again; a live one is left alone.
 */
static bool unix_stale(const struct sockaddr_un *un, socklen_t len)
{
	int saved = errno; /* (the bind's, for the message if the file is not stale) */
	struct stat st;
	bool stale = false;
	if (un->sun_path[0] == '/' && lstat(un->sun_path, &st) == 0 && S_ISSOCK(st.st_mode)) {
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd >= 0) {
			stale = connect(fd, (const struct sockaddr *)un, len) < 0 && errno == ECONNREFUSED;
			close(fd);
		}
	}
	if (stale && unlink(un->sun_path) == 0)
		return true;
	errno = saved;
	return false;
}

int keel__unix_perm_apply(const char *path, const keel__unix_perm *perm, const struct stat *want)
{
	bool owner = perm->uid != (uid_t)-1 || perm->gid != (gid_t)-1;
	if (!perm->mode && !owner)
		return 0;
	/*
	 * The file itself, never what a link there points to: opened without
	 * following one, checked to be a socket (the one bound, when want is
	 * known), then changed through that descriptor.
	 */
	int fd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct stat st;
	int err = 0;
	if (fstat(fd, &st) < 0)
		err = -errno;
	else if (!S_ISSOCK(st.st_mode) || (want && (st.st_dev != want->st_dev || st.st_ino != want->st_ino)))
		err = -ESTALE; /* (not the socket keel bound there any more) */
	char self[40];
	snprintf(self, sizeof(self), "/proc/self/fd/%d", fd);
	if (!err && perm->mode && chmod(self, perm->mode) < 0)
		err = -errno;
	if (!err && owner && fchownat(fd, "", perm->uid, perm->gid, AT_EMPTY_PATH) < 0)
		err = -errno;
	close(fd);
	return err;
}

int keel__listen_socket(const char *addr, int backlog, unsigned flags, const keel__unix_perm *perm)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int err = keel_addr_parse(addr, &ss, &len);
	if (err < 0)
		return err;
	int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	int one = 1, v6only = (flags & KEEL_TCP_V6ONLY) != 0;
	bool un = ss.ss_family == AF_UNIX;
	if (!un && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
		goto out_close;
	if (!un && (flags & KEEL_TCP_REUSEPORT) &&
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
		goto out_close;
	/* Both families on [::] unless asked, whatever net.ipv6.bindv6only says. */
	if (ss.ss_family == AF_INET6 &&
	    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof(v6only)) < 0)
		goto out_close;
	/* (Linux passes TCP_NODELAY on to the connections accepted from it.) */
	if (!un && (flags & KEEL_TCP_NODELAY) &&
	    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
		goto out_close;
	if (bind(fd, (struct sockaddr *)&ss, len) < 0 &&
	    !(un && errno == EADDRINUSE && unix_stale((struct sockaddr_un *)&ss, len) &&
	      bind(fd, (struct sockaddr *)&ss, len) == 0))
		goto out_close;
	/* Before listen(): no client connects while the file has the umask's permissions. */
	const char *path = ((struct sockaddr_un *)&ss)->sun_path;
	if (un && path[0] && perm && (err = keel__unix_perm_apply(path, perm, NULL)) < 0) {
		unlink(path);
		close(fd);
		return err;
	}
	if (listen(fd, backlog > 0 ? backlog : 65535) < 0) { /* (the kernel caps it at net.core.somaxconn) */
		err = -errno;
		if (un && path[0])
			unlink(path);
		close(fd);
		return err;
	}
	return fd;

out_close:
	err = -errno;
	close(fd);
	return err;
}

int keel_tcp_listen(const char *addr, int backlog, unsigned flags)
{
	return keel__listen_socket(addr, backlog, flags, NULL);
}

int keel_tcp_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		return -errno;
	if (ss.ss_family == AF_INET)
		return ntohs(((struct sockaddr_in *)&ss)->sin_port);
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	return -EAFNOSUPPORT;
}

#define START_OR_LIMIT(op) ((op) ? keel__op_start(loop, (op)) : keel__rejected(loop, KEEL_ELIMIT))

keel_promise *keel_accept(keel_loop *loop, int lfd, keel_accept_fn fn, void *ud)
{
	keel__op *op = keel__op_new(loop, KEEL__OP_ACCEPT, lfd);
	if (op) {
		op->u.accept.fn = fn;
		op->u.accept.ud = ud;
	}
	return START_OR_LIMIT(op);
}

static void connect_deadline(keel_loop *loop, keel__timer *t)
{
	keel__op *op = (keel__op *)((char *)t - offsetof(keel__op, u.connect.timer));
	op->flags |= KEEL__OPF_TIMEDOUT;
	keel__op_cancel(loop, op);
}

keel_promise *keel_connect(keel_loop *loop, const struct sockaddr *addr, socklen_t addrlen,
                           uint64_t timeout_ms)
{
	if (addrlen > sizeof(struct sockaddr_storage))
		return keel__rejected(loop, -EINVAL);
	int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return keel__rejected(loop, -errno);
	keel__op *op = keel__op_new(loop, KEEL__OP_CONNECT, fd);
	if (!op) {
		close(fd);
		return keel__rejected(loop, KEEL_ELIMIT);
	}
	memcpy(&op->u.connect.addr, addr, addrlen);
	op->u.connect.addrlen = addrlen;
	if (timeout_ms) {
		keel__timer_init(&op->u.connect.timer, connect_deadline);
		keel__timer_start(loop, &op->u.connect.timer, timeout_ms);
	}
	return keel__op_start(loop, op);
}

keel_promise *keel_recv_stream(keel_loop *loop, int fd, keel_recv_fn fn, void *ud)
{
	keel__op *op = keel__op_new(loop, KEEL__OP_RECV_STREAM, fd);
	if (op) {
		op->u.stream.fn = fn;
		op->u.stream.ud = ud;
	}
	return START_OR_LIMIT(op);
}

keel_promise *keel_recv_stream_paced(keel_loop *loop, int fd, keel_recv_fn fn, void *ud)
{
	keel__op *op = keel__op_new(loop, KEEL__OP_RECV_STREAM, fd);
	if (op) {
		op->u.stream.fn = fn;
		op->u.stream.ud = ud;
		op->flags |= KEEL__OPF_PACED;
	}
	return START_OR_LIMIT(op);
}

keel_promise *keel_recv(keel_loop *loop, int fd, void *buf, size_t len)
{
	keel__op *op = keel__op_new(loop, KEEL__OP_RECV, fd);
	if (op) {
		op->u.rw.buf = buf;
		op->u.rw.len = len;
		op->u.rw.off = 0;
	}
	return START_OR_LIMIT(op);
}

keel_promise *keel_recv_peek(keel_loop *loop, int fd, void *buf, size_t len)
{
	keel__op *op = keel__op_new(loop, KEEL__OP_RECV, fd);
	if (op) {
		op->u.rw.buf = buf;
		op->u.rw.len = len;
		op->u.rw.off = MSG_PEEK;
	}
	return START_OR_LIMIT(op);
}

keel_promise *keel_sendv(keel_loop *loop, int fd, const struct iovec *iov, int iovcnt)
{
	if (iovcnt < 0 || iovcnt > KEEL_IOV_MAX)
		return keel__rejected(loop, -EINVAL);
	size_t total = 0;
	for (int i = 0; i < iovcnt; i++)
		total += iov[i].iov_len;
	if (total == 0) {
		keel_promise *p = keel_promise_new(loop);
		keel_promise_resolve(p, 0, NULL);
		return p;
	}
	keel__op *op = keel__op_new(loop, KEEL__OP_SEND, fd);
	if (!op)
		return keel__rejected(loop, KEEL_ELIMIT);
	struct iovec *v = op->u.send.iov_inline;
	if (iovcnt > KEEL__IOV_INLINE)
		v = keel__xmalloc((size_t)iovcnt * sizeof(*v)); /* rare: more than 8 pieces */
	memcpy(v, iov, (size_t)iovcnt * sizeof(*v));
	op->u.send.iov = v;
	op->u.send.msg.msg_iov = v;
	op->u.send.msg.msg_iovlen = (size_t)iovcnt;
	op->u.send.total = total;
	long zc = loop->opts.send_zc_min_bytes;
	if (zc > 0 && total >= (size_t)zc && keel_loop_feature(loop, "send_zc"))
		op->flags |= KEEL__OPF_ZC;
	return keel__op_start(loop, op);
}

keel_promise *keel_send(keel_loop *loop, int fd, const void *buf, size_t len)
{
	struct iovec v = {(void *)buf, len};
	return keel_sendv(loop, fd, &v, 1);
}

keel_promise *keel_shutdown(keel_loop *loop, int fd, int how)
{
	keel__op *op = keel__op_new(loop, KEEL__OP_SHUTDOWN, fd);
	if (op)
		op->u.shutdown.how = how;
	return START_OR_LIMIT(op);
}
