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
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

KEEL_BIN = os.environ.get("KEEL_BIN", "build/keel")
KEEL_BUILD = os.environ.get("KEEL_BUILD", "build")
SECCOMP_EXEC = os.path.join(KEEL_BUILD, "test", "seccomp_exec")
STARTUP_S = 10.0
LISTEN_RE = re.compile(r"listening on (\S+):(\d+) \((\d+) workers?, backend (\S+)\)")


class TestFailure(Exception):
    pass


class Skip(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


def env_with(backend):
    """This process's environment with KEEL_BACKEND set to backend, or removed if None."""
    env = dict(os.environ)
    env.pop("KEEL_BACKEND", None)
    env.pop("KEEL_LOG", None)  # the backend line is logged at the default level
    if backend is not None:
        env["KEEL_BACKEND"] = backend
    return env


class Server:
    """One `keel echo` process (optionally under seccomp_exec); stderr drained by a thread."""

    def __init__(self, backend, seccomp=False):
        self.argv = ([SECCOMP_EXEC] if seccomp else []) + [
            KEEL_BIN, "echo", "--listen", "127.0.0.1:0", "--workers", "1"]
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=env_with(backend))
        self.lines = []
        self.port = None
        self.backend = None
        self.done = threading.Event()  # listening, or stderr closed
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()
        self.done.wait(STARTUP_S)

    def _drain(self):
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            m = LISTEN_RE.search(line)
            if m and not self.done.is_set():
                self.port, self.backend = int(m.group(2)), m.group(4)
                self.done.set()
        self.done.set()

    def stderr(self):
        return "\n".join(self.lines)

    def shown_stderr(self):
        return "\n".join("    " + l for l in self.lines) or "    (empty)"

    def require_listening(self, what):
        check(self.port is not None, "%s: server not listening after %.0f s (exit status %s); argv=%s; stderr:\n%s"
              % (what, STARTUP_S, self.proc.poll(), self.argv, self.shown_stderr()))

    def stop(self, what):
        """SIGTERM, and expect exit 0 (no connections are open)."""
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            rc = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            raise TestFailure("%s: server still running 10 s after SIGTERM; stderr:\n%s"
                              % (what, self.shown_stderr()))
        check(rc == 0, "%s: exit status %d after SIGTERM, expected 0; stderr:\n%s" % (what, rc, self.shown_stderr()))

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.reader.join(5)


def echo_roundtrip(port, payload, what, timeout=30.0):
    """Send payload while a reader thread drains the echo; half-close; compare by SHA-256."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    got = {"n": 0, "sha": hashlib.sha256(), "eof": False, "err": None}

    def reader():
        try:
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    got["eof"] = True
                    return
                got["n"] += len(chunk)
                got["sha"].update(chunk)
        except Exception as e:  # reported by the main thread
            got["err"] = e

    t = threading.Thread(target=reader, daemon=True)
    try:
        t.start()
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        t.join(timeout)
        check(not t.is_alive(), "%s: reader still waiting after %.0f s (%d of %d bytes back)"
              % (what, timeout, got["n"], len(payload)))
        check(got["err"] is None, "%s: receive failed after %d of %d bytes: %r"
              % (what, got["n"], len(payload), got["err"]))
        check(got["eof"], "%s: no EOF" % what)
        check(got["n"] == len(payload), "%s: got %d bytes back, sent %d" % (what, got["n"], len(payload)))
        check(got["sha"].hexdigest() == hashlib.sha256(payload).hexdigest(), "%s: echoed bytes differ" % what)
    finally:
        s.close()


def echo_payloads(srv, what):
    for size in (1, 64 << 10, 1 << 20):
        echo_roundtrip(srv.port, os.urandom(size), "%s, %d-byte payload" % (what, size))


def expect_failure(backend, seccomp, what):
    """Start a server that must refuse to run; return its stderr."""
    srv = Server(backend, seccomp)
    try:
        try:
            rc = srv.proc.wait(10)
        except subprocess.TimeoutExpired:
            raise TestFailure("%s: still running after 10 s (listening: %s); stderr:\n%s"
                              % (what, srv.port is not None, srv.shown_stderr()))
        srv.reader.join(5)
        check(srv.port is None, "%s: server listened on port %s before failing; stderr:\n%s"
              % (what, srv.port, srv.shown_stderr()))
        check(rc > 0, "%s: exit status %d, expected a nonzero exit (not a signal); stderr:\n%s"
              % (what, rc, srv.shown_stderr()))
        return rc, srv.stderr()
    finally:
        srv.kill()


def io_uring_usable():
    """Whether io_uring runs here without the filter, by the server's own log line."""
    srv = Server(None)
    try:
        srv.require_listening("auto backend, no filter")
        err = srv.stderr()
        if "backend io_uring" in err:
            print("  auto, no filter: backend io_uring")
            return True, ""
        m = re.search(r"backend epoll: io_uring unavailable \((.*)\)\s*$", err, re.M)
        check(m, "auto, no filter: neither `backend io_uring` nor the fallback line in stderr:\n"
              + srv.shown_stderr())
        print("  auto, no filter: backend epoll (%s)" % m.group(1))
        return False, m.group(1)
    finally:
        srv.kill()


def test_seccomp_fallback():
    srv = Server(None, seccomp=True)
    try:
        srv.require_listening("seccomp, KEEL_BACKEND unset")
        err = srv.stderr()
        check("backend epoll" in err, "seccomp, KEEL_BACKEND unset: stderr lacks `backend epoll`:\n"
              + srv.shown_stderr())
        check("EPERM" in err, "seccomp, KEEL_BACKEND unset: stderr does not say why (EPERM):\n" + srv.shown_stderr())
        check(srv.backend == "epoll", "seccomp, KEEL_BACKEND unset: listening line says backend %s" % srv.backend)
        echo_payloads(srv, "seccomp fallback")
        srv.stop("seccomp fallback")
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
    srv = Server(backend)
    try:
        srv.require_listening("KEEL_BACKEND=%s" % backend)
        check(line in srv.lines, "KEEL_BACKEND=%s: no line %r in stderr:\n%s" % (backend, line, srv.shown_stderr()))
        check(srv.backend == backend, "KEEL_BACKEND=%s: listening line says backend %s" % (backend, srv.backend))
        echo_payloads(srv, "KEEL_BACKEND=%s" % backend)
        srv.stop("KEEL_BACKEND=%s" % backend)
        print("  %s; echo ok" % line)
    finally:
        srv.kill()


def test_bogus():
    rc, err = expect_failure("bogus", False, "KEEL_BACKEND=bogus")
    check("KEEL_BACKEND" in err and "bogus" in err, "KEEL_BACKEND=bogus: stderr does not name the bad value:\n"
          + err)
    print("  exit %d: %s" % (rc, next(l for l in err.splitlines() if "bogus" in l)))


def main():
    for path in (KEEL_BIN, SECCOMP_EXEC):
        if not os.access(path, os.X_OK):
            print("FAIL: %s is not an executable (run make first)" % path)
            return 1
    # The filter must install here; an architecture seccomp_exec has no filter for is a skip.
    r = subprocess.run([SECCOMP_EXEC, "true"], capture_output=True, timeout=10)
    if r.returncode == 77:
        print("skip: " + r.stderr.decode(errors="replace").strip())
        return 77
    if r.returncode != 0:
        print("FAIL: `seccomp_exec true` exited %d: %s" % (r.returncode, r.stderr.decode(errors="replace").strip()))
        return 1

    failed, skipped = [], []
    uring_ok, why = True, ""
    steps = [
        ("probe: io_uring without the filter", None),
        ("a: seccomp blocks io_uring, auto -> epoll", test_seccomp_fallback),
        ("b: seccomp blocks io_uring, forced io_uring fails", test_seccomp_forced),
        ("c: KEEL_BACKEND=epoll", lambda: test_forced("epoll", "keel: backend epoll (forced)")),
        ("c: KEEL_BACKEND=io_uring", lambda: test_forced("io_uring", "keel: backend io_uring")),
        ("d: KEEL_BACKEND=bogus", test_bogus),
    ]
    for name, fn in steps:
        print(name, flush=True)
        t0 = time.monotonic()
        try:
            if fn is None:
                uring_ok, why = io_uring_usable()
            elif name.startswith("c: KEEL_BACKEND=io_uring") and not uring_ok:
                raise Skip("io_uring is unavailable here even without seccomp (%s)" % why)
            else:
                fn()
            print("ok   %s (%.1f s)" % (name, time.monotonic() - t0), flush=True)
        except Skip as e:
            print("skip %s: %s" % (name, e), flush=True)
            skipped.append(str(e))
        except TestFailure as e:
            print("FAIL %s: %s" % (name, e), flush=True)
            failed.append(name)
        except Exception:  # an unexpected error is a failure too, with its traceback
            print("FAIL %s: unexpected exception:\n%s" % (name, traceback.format_exc()), flush=True)
            failed.append(name)
    if failed:
        print("failed: %s" % ", ".join(failed))
        return 1
    if skipped:
        print("skipped part: " + "; ".join(skipped))
        return 77
    return 0


if __name__ == "__main__":
    sys.exit(main())
