/*
 * seccomp_exec CMD [ARGS...]: run CMD with io_uring blocked, as in a container
 * whose seccomp profile denies io_uring (recent Docker default profiles do).
 * The filter makes io_uring_setup, io_uring_enter and io_uring_register fail
 * with EPERM and allows every other system call, so the fallback tests see
 * what keel sees in such a container. Filters are inherited across execvp
 * and by every thread CMD starts.
 *
 * Exits 77 (skip) on an architecture it has no filter for, 126 if the filter
 * cannot be installed, 127 if CMD cannot be run.
 */
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#define FILTER_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define FILTER_ARCH AUDIT_ARCH_AARCH64
#endif

/* The io_uring calls have the same numbers on every architecture (425..427). */
#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#define __NR_io_uring_enter 426
#define __NR_io_uring_register 427
#endif

int main(int argc, char **argv)
{
	if (argc < 2) {
		fputs("usage: seccomp_exec CMD [ARGS...]\n", stderr);
		return 2;
	}
#ifndef FILTER_ARCH
	fputs("seccomp_exec: no io_uring filter for this architecture\n", stderr);
	return 77;
#else
	struct sock_filter insns[] = {
		/* A call made under another ABI (say 32-bit) is let through untouched. */
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, FILTER_ARCH, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
#if defined(__x86_64__)
		/* x32 calls share AUDIT_ARCH_X86_64 and carry this bit: block them too. */
		BPF_STMT(BPF_ALU | BPF_AND | BPF_K, ~0x40000000u),
#endif
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 3, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_enter, 2, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_register, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
	};
	struct sock_fprog prog = {
	    .len = (unsigned short)(sizeof(insns) / sizeof(insns[0])),
	    .filter = insns,
	};

	/* Lets an unprivileged process install a filter; required before SECCOMP_MODE_FILTER. */
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
		fprintf(stderr, "seccomp_exec: PR_SET_NO_NEW_PRIVS: %s\n", strerror(errno));
		return 126;
	}
	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) != 0) {
		fprintf(stderr, "seccomp_exec: PR_SET_SECCOMP: %s\n", strerror(errno));
		return 126;
	}
	execvp(argv[1], argv + 1);
	fprintf(stderr, "seccomp_exec: %s: %s\n", argv[1], strerror(errno));
	return 127;
#endif
}
