"""Helpers the Python tests share: checks, keel processes started on a free
port and stopped by PID, one-shot HTTP requests. Imported from the test's
own directory (test/ or build/test/, where the build copies it)."""
import hashlib, http.client, os, re, signal, socket, subprocess, sys, tempfile, time

BUILD = os.environ.get("KEEL_BUILD", "build")
KEEL = os.path.abspath(os.environ.get("KEEL_BIN", os.path.join(BUILD, "keel")))
TESTSRV = os.path.abspath(os.path.join(BUILD, "test", "http_testsrv"))

passed = 0
procs = []  # every process started, killed by PID in kill_all()


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def check(cond, msg):
    global passed
    if not cond:
        fail(msg)
    passed += 1


def sha(b):
    return hashlib.sha256(b).hexdigest()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Proc:
    """A server process whose stderr goes to a file in logdir; waits (bounded)
    for its "listening on 127.0.0.1:PORT" line."""

    def __init__(self, args, logdir=None, cwd=None):
        fd, self.logpath = tempfile.mkstemp(prefix="proc-", suffix=".log", dir=logdir)
        self.log = os.fdopen(fd, "w")
        self.p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, cwd=cwd)
        procs.append(self.p)
        self.port = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            m = re.search(r"listening on (?:127\.0\.0\.1|\[::1\]):(\d+)", self.text())
            if m:
                self.port = int(m.group(1))
                break
            if self.p.poll() is not None:
                break
            time.sleep(0.02)
        if not self.port:
            self.stop()
            fail(f"{' '.join(args)} did not start: {self.text()}")

    def text(self):
        with open(self.logpath) as f:
            return f.read()

    def fds(self):
        return len(os.listdir(f"/proc/{self.p.pid}/fd"))

    def rss_kib(self):
        with open(f"/proc/{self.p.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        """SIGTERM, then the exit status (a non-zero one prints the log's tail: ASan reports)."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)
        if not self.log.closed:
            self.log.close()
        if self.p.returncode:
            print(self.text()[-6000:], file=sys.stderr)
        return self.p.returncode


def kill_all():
    for p in procs:
        if p.poll() is None:
            p.kill()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass


def request(port, path, method="GET", body=None, headers=None, timeout=10):
    """One request on a new connection: (status, {lowercase header: value}, body)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read()
    finally:
        c.close()
