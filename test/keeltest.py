"""What every Python test of keel shares. Imported from the test's own
directory (test/, or build/test/ where the build copies it); test/run.sh sets
KEEL_BIN, KEEL_BUILD and KEEL_BACKEND.

Paths: BUILD, KEEL, TESTSRV (build/test/http_testsrv), EXAMPLES (build/examples),
SECCOMP_EXEC, CURL (None without curl); BACKEND is $KEEL_BACKEND or "".

Checks: fail(msg) raises TestFailure (an AssertionError, so it is seen like one
in threads and `except Exception`); check(cond, msg) fails unless cond, and
counts the checks that held in `passed`; eq(got, want, what) says both sides.
Skip(reason) skips what raises it.

Running a test: main(body) runs body() and exits 0 (or body's int result),
1 on a failure ("FAIL ...: msg"), 77 on Skip ("SKIP: reason"), killing every
process still running first. Subtests runs named parts one after another,
each reported ok/FAIL/skip with its time, the rest running after a failure;
its status() is the exit status.

Processes: Proc(args) starts a program with its stdout and stderr drained by a
thread into .lines and, unless told listen=None, waits (bounded) for its
"listening on HOST:PORT" line: .host, .port, .addr ("HOST:PORT"), .url(path),
.backend (which one it says it runs; if $KEEL_BACKEND in its environment names
another, that is a failure). .text() is all it printed, .shown() the same
indented for a message, .wait_line(pattern, timeout) waits for a line.
Stopping, always by PID: terminate() (SIGTERM, once), signal(sig),
wait(timeout) (the exit status, or None while it runs), kill() (SIGKILL),
stop() (SIGTERM, then SIGKILL if it lingers; returns the exit status),
expect_exit(what, timeout) (must exit 0 in time, with no sanitizer report),
stop_ok(what) (SIGTERM, then expect_exit). Also alive(), fds(), rss_kib(),
cpu_seconds(). kill_all() kills every Proc still running. set_subreaper() adopts what
our children leave behind (a binary upgrade's new process); pid_exit(pid, timeout) waits for an
adopted one; end_adopted(pids) SIGKILLs and reaps those still running. run_keel(*args)
runs the CLI to its exit (bounded) and returns the CompletedProcess (text).
PyServer is a server in this process: a subclass's handle(conn) answers each
connection. Chromium(tmp) is headless Chromium with its DevTools endpoint at
.url (the caller speaks to it with the websockets package: call()).

Network, on 127.0.0.1: free_port(), free_ports(n) (n consecutive ones);
connect(port) (TCP_NODELAY); recv_exact(sock, n, what); recv_all(sock) (until
EOF, or an exception it is told to stop at); exchange(port, data) (send on a
new connection, read until it closes); expect_eof(sock, what);
echo_roundtrip(port, payload, what) (send while reading back, half-close,
compare by SHA-256); response(port, path, ...) (one request on its own
connection: the http.client response, its body read) and request(port, path,
...) ((status, {lowercase name: value}, body)); curl(*args) (curl -sS,
bounded); sha(bytes); first_diff(a, b)."""
import asyncio, ctypes, hashlib, http.client, json, os, re, resource, shutil, signal, socket, subprocess, sys, tempfile
import threading, time
import traceback

BUILD = os.environ.get("KEEL_BUILD", "build")
KEEL = os.path.abspath(os.environ.get("KEEL_BIN", os.path.join(BUILD, "keel")))
TESTSRV = os.path.abspath(os.path.join(BUILD, "test", "http_testsrv"))
SECCOMP_EXEC = os.path.abspath(os.path.join(BUILD, "test", "seccomp_exec"))
EXAMPLES = os.path.abspath(os.path.join(BUILD, "examples"))
BACKEND = os.environ.get("KEEL_BACKEND", "")
CURL = shutil.which("curl")
STARTUP_S = 10.0  # for a server to print its listening line

# Any server's line, and the keel CLI's own, which also says how many workers and which backend.
LISTEN_RE = re.compile(r"listening on (?P<host>\S+):(?P<port>\d+)")
CLI_LISTEN_RE = re.compile(r"listening on (?P<host>[^\s,]+):(?P<port>\d+)(?:, \S+)* \(\d+ workers?, "
                           r"backend (?P<backend>\w+)\)")
BACKEND_RE = re.compile(r"\bbackend (io_uring|epoll)\b")
SANITIZER_RE = re.compile(r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|Sanitizer")

# ---- Checks ---------------------------------------------------------------------------------------

passed = 0  # checks that held


class TestFailure(AssertionError):
    pass


class Skip(Exception):
    pass


def fail(msg):
    raise TestFailure(msg)


def check(cond, msg):
    global passed
    if not cond:
        fail(msg)
    passed += 1


def eq(got, want, what):
    if got != want:
        g, w = got, want
        if isinstance(g, (bytes, bytearray)) and len(g) > 200:
            g = "%d bytes %r..." % (len(g), bytes(g[:80]))
        if isinstance(w, (bytes, bytearray)) and len(w) > 200:
            w = "%d bytes %r..." % (len(w), bytes(w[:80]))
        fail("%s: got %r, expected %r" % (what, g, w))
    check(True, what)


def _where(exc):
    """file:line of the innermost frame outside this module that exc passed through."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if os.path.basename(f.filename) != "keeltest.py"]
    return "%s:%d" % (os.path.basename(frames[-1].filename), frames[-1].lineno) if frames else "?"


# ---- Running a test -------------------------------------------------------------------------------

def main(body):
    """Run body() as the whole test, then exit (see the module's docstring)."""
    try:
        rc = body() or 0
    except Skip as e:
        print("SKIP: %s" % e, flush=True)
        rc = 77
    except TestFailure as e:
        print("FAIL [%s]: %s" % (_where(e), e), flush=True)
        rc = 1
    except Exception:
        print("FAIL: unexpected exception:\n%s" % traceback.format_exc(), flush=True)
        rc = 1
    finally:
        kill_all()
    sys.exit(rc)


class Subtests:
    """Named parts of a test run one after another; a failed one is reported and the rest
    still run. Arguments on the command line (only) select the parts whose name contains one."""

    def __init__(self, only=None):
        self.only = sys.argv[1:] if only is None else only
        self.passed, self.failed, self.skipped = 0, [], []

    def wanted(self, name):
        return not self.only or any(o in name for o in self.only)

    def run(self, name, fn, always=False):
        """fn() as the part called name: True if it passed, False if not, None if not selected
        (always: run it whatever the command line selects)."""
        if not always and not self.wanted(name):
            return None
        print(name, flush=True)
        t0 = time.monotonic()
        try:
            fn()
        except Skip as e:
            print("skip %s: %s" % (name, e), flush=True)
            self.skipped.append("%s: %s" % (name, e))
            return False
        except TestFailure as e:
            print("FAIL %s [%s]: %s" % (name, _where(e), e), flush=True)
            self.failed.append(name)
            return False
        except Exception:  # an unexpected error (say ECONNRESET) is a failure too, with its traceback
            print("FAIL %s: unexpected exception:\n%s" % (name, traceback.format_exc()), flush=True)
            self.failed.append(name)
            return False
        self.passed += 1
        print("ok   %s (%.2f s)" % (name, time.monotonic() - t0), flush=True)
        return True

    def status(self, skip_status=0):
        """Print the tally; the exit status: 1 if a part failed, else skip_status if one was
        skipped (77 where a skipped part means the test did not do its job here), else 0."""
        print("%d passed, %d failed, %d skipped" % (self.passed, len(self.failed), len(self.skipped)))
        if self.failed:
            print("failed: " + "; ".join(self.failed))
            return 1
        if self.skipped:
            print("skipped: " + "; ".join(self.skipped))
            return skip_status
        return 0


# ---- Processes ------------------------------------------------------------------------------------

procs = []  # every Proc started, for kill_all()


class Proc:
    """A program started here (see the module's docstring). args may hold numbers; env and cwd
    go to Popen; nofile sets its RLIMIT_NOFILE; stdout (a file) keeps its stdout apart from what
    is drained; listen is the pattern of its listening line (groups host, port, maybe backend),
    or None for a program that does not listen; must_listen=False returns without a failure when
    it exits (or the time runs out) before listening."""

    def __init__(self, args, name=None, env=None, cwd=None, nofile=None, stdout=None, listen=LISTEN_RE,
                 must_listen=True, timeout=STARTUP_S):
        self.args = [str(a) for a in args]
        self.name = name or " ".join(self.args)
        self.lines = []
        self.host = self.port = self.backend = None
        self._listen = listen
        self._eof = False
        self._terminated = False
        self._cond = threading.Condition()
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))) if nofile else None
        if stdout is None:  # both into one pipe
            self.p = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, env=env, cwd=cwd, preexec_fn=limit)
            self._out = self.p.stdout
        else:
            self.p = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=stdout,
                                      stderr=subprocess.PIPE, env=env, cwd=cwd, preexec_fn=limit)
            self._out = self.p.stderr
        self.pid = self.p.pid
        procs.append(self)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        if listen is None:
            return
        self.wait_line(lambda line: self.port is not None, timeout)
        if self.port is None:
            if not must_listen:
                return
            self.kill()
            fail("%s did not print its listening line within %.0f s (exit status %s); argv=%s; output:\n%s"
                 % (self.name, timeout, self.p.returncode, self.args, self.shown()))
        want = (os.environ if env is None else env).get("KEEL_BACKEND")
        if want and self.backend not in (want, None):
            self.kill()
            fail("KEEL_BACKEND=%s but %s runs backend %s; output:\n%s" % (want, self.name, self.backend,
                                                                          self.shown()))

    def _drain(self):
        for raw in self._out:
            line = raw.decode(errors="replace").rstrip("\n")
            with self._cond:
                self.lines.append(line)
                m = self._listen.search(line) if self._listen is not None and self.port is None else None
                if m:
                    g = m.groupdict()  # (a pattern without a port: a Unix socket's line, say)
                    self.host, self.port = g.get("host"), int(g["port"]) if g.get("port") else 0
                    if "backend" in g:
                        self.backend = m.group("backend")
                b = BACKEND_RE.search(line)
                if b and self.backend is None:
                    self.backend = b.group(1)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_line(self, pattern, timeout):
        """The first line (from the start) for which pattern (a regex, searched, or a function
        of the line) is true: the match (or the function's value); None once the output ends or
        timeout seconds pass without one."""
        test = pattern if callable(pattern) else re.compile(pattern).search
        deadline = time.monotonic() + timeout
        i = 0
        with self._cond:
            while True:
                while i < len(self.lines):
                    got = test(self.lines[i])
                    i += 1
                    if got:
                        return got
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    return None
                self._cond.wait(left)

    @property
    def addr(self):
        return "%s:%d" % (self.host, self.port)

    def url(self, path):
        return "http://%s%s" % (self.addr, path)

    def text(self):
        with self._cond:
            return "".join(l + "\n" for l in self.lines)

    def shown(self):
        with self._cond:
            return "\n".join("    " + l for l in self.lines) or "    (empty)"

    def alive(self):
        return self.p.poll() is None

    def signal(self, sig):
        if self.p.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self):
        """SIGTERM, once: a later call does nothing."""
        if not self._terminated:
            self._terminated = True
            self.signal(signal.SIGTERM)

    def wait(self, timeout):
        """The exit status, or None if it still runs after timeout seconds. Once it has exited,
        its last output is in .lines."""
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(5)
        return rc

    def kill(self):
        if self.p.poll() is None:
            try:
                self.p.kill()
            except ProcessLookupError:
                pass
        self.wait(10)

    def stop(self, timeout=10):
        """SIGTERM, SIGKILL after timeout seconds; the exit status. A non-zero one prints the tail
        of the output (an ASan report) on stderr."""
        self.terminate()
        if self.wait(timeout) is None:
            self.kill()
        if self.p.returncode:
            print("%s exited %s:\n%s" % (self.name, self.p.returncode, self.text()[-6000:]), file=sys.stderr)
        return self.p.returncode

    def check_sanitizers(self):
        bad = [l for l in self.lines if SANITIZER_RE.search(l)]
        check(not bad, "%s: sanitizer report in its output:\n%s" % (self.name, self.shown()))

    def expect_exit(self, what, timeout=10):
        """It must exit within timeout seconds (of whatever told it to), with status 0 and no
        sanitizer report; what says when, for the message."""
        rc = self.wait(timeout)
        check(rc is not None, "%s: %s still running after %.0f s; output:\n%s" % (what, self.name, timeout,
                                                                                 self.shown()))
        check(rc == 0, "%s: %s exited %d, expected 0; output:\n%s" % (what, self.name, rc, self.shown()))
        self.check_sanitizers()

    def stop_ok(self, what=None, timeout=10):
        """SIGTERM, then expect_exit()."""
        self.terminate()
        self.expect_exit("%s, SIGTERM" % (what or self.name), timeout)

    def fds(self):
        return len(os.listdir("/proc/%d/fd" % self.pid))

    def rss_kib(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def cpu_seconds(self):
        with open("/proc/%d/stat" % self.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


class PyServer:
    """A TCP server in this process on 127.0.0.1, on a port of its choosing (.port): a thread
    accepts, and a subclass's handle(conn) runs for each connection, in a thread of its own, or
    with one_at_a_time in the accepting thread while the next connection waits in the backlog.
    An OSError ends a connection quietly; it is closed after handle. stop() closes the listener
    and every connection still open."""

    def __init__(self, one_at_a_time=False):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1 if one_at_a_time else 128)
        self.port = self.sock.getsockname()[1]
        self.one_at_a_time = one_at_a_time
        self.conns = []
        self.stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.one_at_a_time:
                self._serve(conn)
            else:
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            self.handle(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def handle(self, conn):
        raise NotImplementedError

    def stop(self):
        self.stopping = True
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


def kill_all():
    for p in procs:
        if p.alive():
            p.kill()


def set_subreaper():
    """Adopt what our children leave behind (a new binary outlives the keel that started it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_CHILD_SUBREAPER = 36
    check(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0, "prctl(PR_SET_CHILD_SUBREAPER)")


def pid_exit(pid, timeout):
    """Wait for an adopted process: its exit status, or None if it still runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got, st = os.waitpid(pid, os.WNOHANG)
        if got == pid:
            return os.waitstatus_to_exitcode(st)
        time.sleep(0.02)
    return None


def end_adopted(pids):
    """SIGKILL and reap the processes of ours that still run (a test that failed midway)."""
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
            os.waitpid(p, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def run_keel(*args, timeout=10, env=None):
    """keel ARGS to its exit (text output): a CompletedProcess. Not exiting in time is a failure."""
    try:
        return subprocess.run([KEEL, *map(str, args)], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        fail("`keel %s` did not exit within %.0f s (did it start serving?)" % (" ".join(map(str, args)), timeout))


# ---- Network --------------------------------------------------------------------------------------

def sha(b):
    return hashlib.sha256(b).hexdigest()


def first_diff(a, b):
    for i in range(min(len(a), len(b))):
        if a[i] != b[i]:
            return i
    return min(len(a), len(b))


def free_port():
    """A port on 127.0.0.1 nothing listens on (now)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def free_ports(n):
    """The first of n consecutive free ports on 127.0.0.1."""
    for base in range(21000, 60000, 97):
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                socks.append(s)
                s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            pass
        finally:
            for s in socks:
                s.close()
    fail("no %d consecutive free ports" % n)


def connect(port, timeout=10.0, host="127.0.0.1"):
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exact(s, n, what):
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = s.recv(n - len(buf))
        except socket.timeout:
            fail("%s: timed out after %d of %d bytes" % (what, len(buf), n))
        if not chunk:
            fail("%s: EOF after %d of %d bytes" % (what, len(buf), n))
        buf += chunk
    return bytes(buf)


def recv_all(s, stop_on=()):
    """Everything until the peer closes, or until one of the exceptions stop_on (what came before
    it is kept)."""
    data = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
    except stop_on:
        pass
    return data


def exchange(port, data, timeout=10.0):
    """Send data on a new connection; everything the server sends until it closes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        return recv_all(s)
    finally:
        s.close()


def expect_eof(s, what):
    try:
        extra = s.recv(65536)
    except socket.timeout:
        fail("%s: no EOF (timed out)" % what)
    check(extra == b"", "%s: expected EOF, got %d more bytes %r" % (what, len(extra), extra[:32]))


def echo_roundtrip(port, payload, what, timeout=60.0):
    """Send payload to an echo server while a thread reads the echo; half-close; compare by SHA-256."""
    s = connect(port, timeout)
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
        want = sha(payload)
        check(got["sha"].hexdigest() == want, "%s: SHA-256 of echo %s != sent %s"
              % (what, got["sha"].hexdigest(), want))
    finally:
        s.close()


def response(port, path, method="GET", body=None, headers=None, timeout=10, host="127.0.0.1"):
    """One request on a new connection: (http.client response, body); the response's status,
    reason, version and getheader() stay usable."""
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r, r.read()
    finally:
        c.close()


def request(port, path, method="GET", body=None, headers=None, timeout=10):
    """One request on a new connection: (status, {lowercase header: value}, body)."""
    r, data = response(port, path, method, body, headers, timeout)
    return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data


def curl(*args, max_time=10, text=False):
    """curl -sS --max-time max_time ARGS (the process bounded 10 s beyond): a CompletedProcess."""
    return subprocess.run([CURL or "curl", "-sS", "--max-time", str(max_time), *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=text, timeout=max_time + 10)


# ---- A real browser ------------------------------------------------------------------------------

class Chromium:
    """Headless Chromium driven over its DevTools protocol (a WebSocket, spoken with the websockets
    package by the caller: call(conn, method, params, session) on a connection to .url). tmp holds
    its profile. Raises Skip without chromium."""

    def __init__(self, tmp):
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if not exe:
            raise Skip("chromium missing (Debian: apt-get install chromium)")
        self.profile = tempfile.mkdtemp(prefix="keel-chromium-", dir=tmp)
        self.p = subprocess.Popen([exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                   "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                                   "--user-data-dir=" + self.profile, "about:blank"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        path = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + 30
        while not (os.path.exists(path) and len(open(path).read().split()) == 2):
            if time.monotonic() > deadline:
                self.close()
                fail("chromium did not open its DevTools port within 30 s")
            time.sleep(0.1)
        port, ws_path = open(path).read().split()
        self.url = "ws://127.0.0.1:%s%s" % (port, ws_path)
        self.next_id = 0

    async def call(self, conn, method, params=None, session=None):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        await conn.send(json.dumps(msg))
        while True:  # (events in between are skipped)
            r = json.loads(await asyncio.wait_for(conn.recv(), 30))
            if r.get("id") == self.next_id:
                if "error" in r:
                    fail("DevTools %s: %s" % (method, r["error"]))
                return r["result"]

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)
