#!/usr/bin/env python3
"""Backend choice and fallback of `keel echo`, seen from outside.

seccomp_exec (test/seccomp_exec.c) runs keel the way a container whose
seccomp profile blocks io_uring would: io_uring_setup fails with EPERM.
  (a) there, with KEEL_BACKEND unset, keel falls back to epoll, says why
      (EPERM), and echoes correctly;
  (b) there, KEEL_BACKEND=io_uring is an error: nonzero exit, clear message;
  (c) without the filter, KEEL_BACKEND=epoll and KEEL_BACKEND=io_uring each
      run the backend they name, and echo correctly;
  (d) KEEL_BACKEND=bogus is an error with a message naming it.
The test sets KEEL_BACKEND itself for every server it starts, so it does the
same thing whichever backend the runner names. Only (c io_uring) is skipped,
and only when this machine cannot run io_uring even without the filter (as the
server's own log line says); the rest still runs, then the test exits 77.

Exit status: 0 pass, 1 fail, 77 skip (reason on the last line).
Environment: KEEL_BIN (default build/keel), KEEL_BUILD (default build).
"""
import os
import re
import subprocess

from keeltest import (CLI_LISTEN_RE, KEEL, SECCOMP_EXEC, Proc, Skip, Subtests, check, echo_roundtrip, fail,
                      main)


def env_with(backend):
    """This process's environment with KEEL_BACKEND set to backend, or removed if None."""
    env = dict(os.environ)
    env.pop("KEEL_BACKEND", None)
    env.pop("KEEL_LOG", None)  # the backend line is logged at the default level
    if backend is not None:
        env["KEEL_BACKEND"] = backend
    return env


def server(backend, what, seccomp=False, must_listen=True):
    """One `keel echo` with KEEL_BACKEND=backend (unset if None), under seccomp_exec if asked."""
    return Proc(([SECCOMP_EXEC] if seccomp else []) + [KEEL, "echo", "--listen", "127.0.0.1:0", "--workers", "1"],
                name=what, env=env_with(backend), listen=CLI_LISTEN_RE, must_listen=must_listen)


def echo_payloads(srv, what):
    for size in (1, 64 << 10, 1 << 20):
        echo_roundtrip(srv.port, os.urandom(size), "%s, %d-byte payload" % (what, size), timeout=30.0)


def expect_failure(backend, seccomp, what):
    """Start a server that must refuse to run; return its stderr."""
    srv = server(backend, what, seccomp, must_listen=False)
    try:
        rc = srv.wait(10)
        if rc is None:
            fail("%s: still running after 10 s (listening: %s); stderr:\n%s"
                 % (what, srv.port is not None, srv.shown()))
        check(srv.port is None, "%s: server listened on port %s before failing; stderr:\n%s"
              % (what, srv.port, srv.shown()))
        check(rc > 0, "%s: exit status %d, expected a nonzero exit (not a signal); stderr:\n%s"
              % (what, rc, srv.shown()))
        return rc, srv.text()
    finally:
        srv.kill()


def io_uring_usable():
    """Whether io_uring runs here without the filter, by the server's own log line."""
    srv = server(None, "auto backend, no filter")
    try:
        err = srv.text()
        if "backend io_uring" in err:
            print("  auto, no filter: backend io_uring")
            return True, ""
        m = re.search(r"backend epoll: io_uring unavailable \((.*)\)\s*$", err, re.M)
        check(m, "auto, no filter: neither `backend io_uring` nor the fallback line in stderr:\n"
              + srv.shown())
        print("  auto, no filter: backend epoll (%s)" % m.group(1))
        return False, m.group(1)
    finally:
        srv.kill()


def test_seccomp_fallback():
    srv = server(None, "seccomp, KEEL_BACKEND unset", seccomp=True)
    try:
        err = srv.text()
        check("backend epoll" in err, "seccomp, KEEL_BACKEND unset: stderr lacks `backend epoll`:\n"
              + srv.shown())
        check("EPERM" in err, "seccomp, KEEL_BACKEND unset: stderr does not say why (EPERM):\n" + srv.shown())
        check(srv.backend == "epoll", "seccomp, KEEL_BACKEND unset: listening line says backend %s" % srv.backend)
        echo_payloads(srv, "seccomp fallback")
        srv.stop_ok("seccomp fallback")
        print("  %s" % next(l for l in srv.lines if "backend epoll" in l))
        print("  echo of 1 B, 64 KiB, 1 MiB: ok")
    finally:
        srv.kill()


def test_seccomp_forced():
    rc, err = expect_failure("io_uring", True, "seccomp, KEEL_BACKEND=io_uring")
    check(re.search(r"io_uring.*cannot run", err), "seccomp, KEEL_BACKEND=io_uring: stderr does not say "
          "io_uring cannot run:\n" + err)
    print("  exit %d: %s" % (rc, next(l for l in err.splitlines() if "cannot run" in l)))


def test_forced(backend, line):
    srv = server(backend, "KEEL_BACKEND=%s" % backend)
    try:
        check(line in srv.lines, "KEEL_BACKEND=%s: no line %r in stderr:\n%s" % (backend, line, srv.shown()))
        check(srv.backend == backend, "KEEL_BACKEND=%s: listening line says backend %s" % (backend, srv.backend))
        echo_payloads(srv, "KEEL_BACKEND=%s" % backend)
        srv.stop_ok("KEEL_BACKEND=%s" % backend)
        print("  %s; echo ok" % line)
    finally:
        srv.kill()


def test_bogus():
    rc, err = expect_failure("bogus", False, "KEEL_BACKEND=bogus")
    check("KEEL_BACKEND" in err and "bogus" in err, "KEEL_BACKEND=bogus: stderr does not name the bad value:\n"
          + err)
    print("  exit %d: %s" % (rc, next(l for l in err.splitlines() if "bogus" in l)))


def test():
    for path in (KEEL, SECCOMP_EXEC):
        check(os.access(path, os.X_OK), "%s is not an executable (run make first)" % path)
    # The filter must install here; an architecture seccomp_exec has no filter for is a skip.
    r = subprocess.run([SECCOMP_EXEC, "true"], capture_output=True, timeout=10)
    if r.returncode == 77:
        raise Skip(r.stderr.decode(errors="replace").strip())
    check(r.returncode == 0, "`seccomp_exec true` exited %d: %s"
          % (r.returncode, r.stderr.decode(errors="replace").strip()))

    uring = {"ok": True, "why": ""}

    def probe():
        uring["ok"], uring["why"] = io_uring_usable()

    def forced_io_uring():
        if not uring["ok"]:
            raise Skip("io_uring is unavailable here even without seccomp (%s)" % uring["why"])
        test_forced("io_uring", "keel: backend io_uring")

    sub = Subtests()
    sub.run("probe: io_uring without the filter", probe)
    sub.run("a: seccomp blocks io_uring, auto -> epoll", test_seccomp_fallback)
    sub.run("b: seccomp blocks io_uring, forced io_uring fails", test_seccomp_forced)
    sub.run("c: KEEL_BACKEND=epoll", lambda: test_forced("epoll", "keel: backend epoll (forced)"))
    sub.run("c: KEEL_BACKEND=io_uring", forced_io_uring)
    sub.run("d: KEEL_BACKEND=bogus", test_bogus)
    return sub.status(skip_status=77)


if __name__ == "__main__":
    main(test)
