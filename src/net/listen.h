/*
 * Listening sockets with what a configuration can ask of them beyond
 * keel_tcp_listen (tcp.c): a Unix socket's permissions. Internal, for the
 * master (workers.c).
 */
#ifndef KEEL_NET_LISTEN_H
#define KEEL_NET_LISTEN_H

#include <sys/types.h>

/* A Unix socket file's mode (0: the umask's) and owner ((uid_t)-1, (gid_t)-1: unchanged). */
typedef struct keel__unix_perm {
	mode_t mode;
	uid_t uid;
	gid_t gid;
} keel__unix_perm;

/* keel_tcp_listen, and for a Unix socket path perm (NULL: none) applied before listen(). */
int keel__listen_socket(const char *addr, int backlog, unsigned flags, const keel__unix_perm *perm);

#endif
