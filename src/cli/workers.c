/*
 * Worker plumbing for the CLI servers: the library's master and worker
 * threads (src/net/workers.c) with what a process run by an operator adds:
 * sockets passed by systemd (LISTEN_FDS) or by the keel this one upgrades
 * (KEEL_UPGRADE_FD), readiness told to systemd (sd_notify) and to
 * /_keel/ready, the binary to start again on SIGUSR2, and exit statuses.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "cli.h"
#include "keel/log.h"

static atomic_bool ready;
static char exe[PATH_MAX];
static char **args;

/* Whether path is the file this process runs (its device and inode), symlinks followed. */
static bool is_self(const char *path)
{
	struct stat a, b;
	return stat(path, &a) == 0 && stat("/proc/self/exe", &b) == 0 && a.st_dev == b.st_dev &&
	       a.st_ino == b.st_ino;
}

/*
 * The path the binary was started by, made absolute now: the file there
 * is what SIGUSR2 runs (a new build installed over it, or a symlink moved
 * to a new version). A bare name is looked up on PATH as the shell did (an
 * empty entry is the working directory). The path is kept only if it
 * leads to this very binary now; otherwise, /proc/self/exe (symlinks
 * resolved; read now, as it says "(deleted)" once the file is replaced).
 */
void cli_set_argv(char **argv)
{
	args = argv;
	const char *a0 = argv[0];
	char cwd[PATH_MAX], cand[PATH_MAX];
	exe[0] = '\0';
	if (!getcwd(cwd, sizeof(cwd)))
		cwd[0] = '\0';
	if (strchr(a0, '/')) {
		int n = snprintf(cand, sizeof(cand), "%s%s%s", a0[0] == '/' ? "" : cwd,
		                 a0[0] == '/' ? "" : "/", a0);
		if (n > 0 && (size_t)n < sizeof(cand) && is_self(cand))
			memcpy(exe, cand, (size_t)n + 1);
	} else {
		for (const char *p = getenv("PATH"); p && !exe[0];) {
			size_t len = strcspn(p, ":");
			const char *dir = len ? p : ".";
			int dlen = len ? (int)len : 1;
			int n = dir[0] == '/'
			            ? snprintf(cand, sizeof(cand), "%.*s/%s", dlen, dir, a0)
			            : snprintf(cand, sizeof(cand), "%s/%.*s/%s", cwd, dlen, dir, a0);
			if (n > 0 && (size_t)n < sizeof(cand) && access(cand, X_OK) == 0 && is_self(cand))
				memcpy(exe, cand, (size_t)n + 1);
			if (!p[len])
				break;
			p += len + 1;
		}
	}
	if (!exe[0]) {
		ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
		exe[n > 0 ? n : 0] = '\0';
	}
}

bool cli_ready(void)
{
	return atomic_load_explicit(&ready, memory_order_relaxed);
}

static void cli_notify(void *ud, const char *state)
{
	(void)ud;
	if (strcmp(state, "READY=1") == 0)
		atomic_store(&ready, true);
	else if (strcmp(state, "STOPPING=1") == 0)
		atomic_store(&ready, false);
	sd_notify(0, state); /* (nothing without NOTIFY_SOCKET) */
}

void cli_reopen_log(const char *path, int fd)
{
	if (!path || fd < 0)
		return;
	int nfd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (nfd < 0 || dup3(nfd, fd, O_CLOEXEC) < 0)
		keel_log(KEEL_LOG_ERROR, "access log %s: cannot reopen: %s; still writing the old file", path,
		         strerror(errno));
	if (nfd >= 0)
		close(nfd);
}

long cli_parse_long(const char *opt, const char *s, long min, long max)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max) {
		fprintf(stderr, "keel: %s: expected an integer in [%ld, %ld], got '%s'\n", opt, min, max, s);
		exit(CLI_USAGE);
	}
	return v;
}

int cli_run_master(keel__master *m)
{
	char **names = NULL;
	int n = sd_listen_fds_with_names(1, &names);
	enum { PASSED_MAX = 16384 }; /* (16 addresses of 1024 workers) */
	if (n < 0 || n > PASSED_MAX) {
		keel_log(KEEL_LOG_ERROR, "LISTEN_FDS: %s",
		         n < 0 ? keel_strerror(n) : "more than 16384 sockets");
		return CLI_FAIL;
	}
	static int fds[PASSED_MAX]; /* (one master per process) */
	static bool foreign[PASSED_MAX];
	for (int i = 0; i < n; i++) {
		fds[i] = SD_LISTEN_FDS_START + i;
		/* keel's own sockets, passed on by an upgrade, are named so; systemd's are not */
		foreign[i] = !names || !names[i] || strcmp(names[i], "keel") != 0;
	}
	if (names) {
		for (int i = 0; i < n; i++)
			free(names[i]);
		free(names);
	}
	m->inherited = fds;
	m->foreign = foreign;
	m->ninherited = n;
	m->ready_fd = -1;
	const char *up = getenv("KEEL_UPGRADE_FD");
	if (up) {
		m->upgrade = true;
		m->ready_fd = atoi(up);
		unsetenv("KEEL_UPGRADE_FD");
	}
	m->notify = cli_notify;
	if (exe[0] && args) {
		m->exec_path = exe;
		m->exec_argv = args;
	}
	int st = keel__master_run(m);
	return st < 0 ? CLI_FAIL : st;
}

int cli_run_workers(const char *what, const char *addr, int n, cli_worker_main main_fn,
                    cli_worker_stop stop_fn, void *arg)
{
	keel__listen at = {.addr = addr, .perm = {0, (uid_t)-1, (gid_t)-1}};
	keel__master m = {
	    .what = what,
	    .gen = {.arg = arg, .listen = &at, .nlisten = 1, .workers = n},
	    .main_fn = main_fn,
	    .stop_fn = stop_fn,
	};
	return cli_run_master(&m);
}
