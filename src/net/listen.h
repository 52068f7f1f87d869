/*
 * Listening sockets with what a configuration can ask of them beyond
 * keel_tcp_listen (tcp.c): a Unix socket's permissions. Internal, for the
 * master (workers.c).
 */
#ifndef KEEL_NET_LISTEN_H
#define KEEL_NET_LISTEN_H

#include <sys/stat.h>
#include <sys/types.h>

/* A Unix socket file's mode (0: the umask's) and owner ((uid_t)-1, (gid_t)-1: unchanged). */
typedef struct keel__unix_perm {
	mode_t mode;
	uid_t uid;
	gid_t gid;
} keel__unix_perm;

/*
 * Give the Unix socket file at path perm's mode and owner: the file itself
 * (a symbolic link there is refused, never followed), which must be a
 * socket -- the one of want's device and inode, when want is given
 * (-ESTALE otherwise). 0 or a negative errno.
 */
int keel__unix_perm_apply(const char *path, const keel__unix_perm *perm, const struct stat *want);

/* keel_tcp_listen, and for a Unix socket path perm (NULL: none) applied before listen(). */
int keel__listen_socket(const char *addr, int backlog, unsigned flags, const keel__unix_perm *perm);

#endif
