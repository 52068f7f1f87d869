#!/usr/bin/env python3
"""Operating keel: what an operator does to a running `keel -c FILE`.

- probes: /_keel/live and /_keel/ready answer 200; on SIGTERM with
  stop_delay_ms, ready turns 503 at once while every route still serves;
  after the delay new clients are refused (ECONNREFUSED) while a request
  already under way is still answered, then the process exits 0.
- reload: ten SIGHUPs under a steady open-loop load (keel load --rate),
  each with a changed server_name: every reload logged, the new name served
  after each, 0 failed requests; after the drains the process is back to
  its threads and descriptors (no listener or worker leaked).
- bad reload: a broken file, then fewer workers than sockets, under load:
  each rejected with its reason, the old configuration still served, 0
  failed requests.
- log reopen: the access log renamed and SIGUSR1 sent five times under
  load: every response has exactly one well-formed line across the files.
- upgrade: three binary upgrades (SIGUSR2) under load, each new process
  taking over the same listening socket; 0 failed requests; an upgrade
  whose new process cannot start (its file now broken) leaves the old one
  serving.
- socket activation: systemd-socket-activate passes the listening socket;
  keel serves the first request on it without binding one of its own; a
  passed socket that no listen entry names is refused with a clear message.
- notify: with NOTIFY_SOCKET, READY=1, then RELOADING=1 and READY=1 on
  SIGHUP, STOPPING=1 on SIGTERM.

Load runs on 127.0.0.1 only, bounded in rate and time. Requests that
crossed a server's close of an idle kept-alive connection are sent again
by keel load (it reports them as retried, as a browser would retry them);
failed ones are what the assertions count. Runs under KEEL_BACKEND."""
import json, os, re, shutil, signal, socket, ssl, subprocess, tempfile, time

from keeltest import (CLI_LISTEN_RE, KEEL, Proc, Skip, Subtests, check, connect, end_adopted, eq, fail, free_port,
                      main, pid_exit, request, set_subreaper)

LINE_RE = re.compile(r'^127\.0\.0\.1 - - \[[^\]]+\] "GET /[^"]*" \d{3} \d+ "[^"]*" "[^"]*"')
RATE = 2000  # requests/s: well below what one core serves here


def write_conf(path, port, name="gen-0", workers=2, extra=""):
    # (No shedding by queueing delay: under ThreadSanitizer a tick can outlast the budget, and
    # a shed request is a 503 these tests would count; admission has tests of its own.)
    with open(path, "w") as f:
        f.write(f"""[server]
listen = 127.0.0.1:{port}
workers = {workers}
server_name = {name}
grace_ms = 3000
queue_delay_max_us = 0
{extra}
[route /]
static = www
""")


class Site:
    """A keel -c FILE in a temporary directory with a www/ of one file."""

    def __init__(self, d, extra="", workers=2, env=None):
        self.dir = d
        os.makedirs(os.path.join(d, "www"), exist_ok=True)
        with open(os.path.join(d, "www", "index.html"), "w") as f:
            f.write("hello\n")
        self.conf = os.path.join(d, "keel.conf")
        self.port = free_port()
        self.extra = extra
        self.workers = workers
        write_conf(self.conf, self.port, workers=workers, extra=extra)
        self.proc = Proc([KEEL, "-c", self.conf], name="keel -c", listen=CLI_LISTEN_RE, cwd=d, env=env)

    def rewrite(self, name, workers=None, tail=""):
        write_conf(self.conf, self.port, name=name, workers=workers or self.workers, extra=self.extra)
        if tail:
            with open(self.conf, "a") as f:
                f.write(tail)

    def server_name(self, want=None):
        """The Server header of GET /; with want, asked again for up to 2 s until it is want (a
        worker of the old generation may still accept for a moment after the reload's line)."""
        deadline = time.monotonic() + 2
        while True:
            status, headers, _ = request(self.port, "/")
            eq(status, 200, "GET /")
            if want is None or headers.get("server") == want or time.monotonic() > deadline:
                return headers.get("server")
            time.sleep(0.05)


def count_lines(proc, pattern, after=0):
    return sum(1 for l in proc.lines[after:] if re.search(pattern, l))


def wait_count(proc, pattern, n, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count_lines(proc, pattern) >= n:
            return True
        time.sleep(0.02)
    return False


class Load:
    """keel load at RATE for secs against port, its results read from its JSON at the end."""

    def __init__(self, d, port, secs):
        self.json = os.path.join(d, "load-%d.json" % time.monotonic_ns())
        # (-p 1: a request at a time per connection, as browsers and balancers send them; a close
        # behind pipelined requests is a keel load retry limit, not what these tests measure)
        self.proc = Proc([KEEL, "load", "-q", "-c", "8", "-p", "1", "--rate", RATE, "-d", secs, "-T", "5000",
                          "-j", self.json, "http://127.0.0.1:%d/" % port], name="keel load", listen=None)

    def result(self, timeout=30):
        rc = self.proc.wait(timeout)
        check(rc == 0, "keel load exited %s:\n%s" % (rc, self.proc.shown()))
        with open(self.json) as f:
            r = json.load(f)
        return r

    def no_failures(self, what):
        r = self.result()
        check(r["errors_total"] == 0, "%s: %d failed requests under load: %s\n%s" %
              (what, r["errors_total"], r["errors"], self.proc.shown()))
        check(r["requests_per_sec"] > RATE * 0.9, "%s: goodput %.0f req/s at an offered %d" %
              (what, r["requests_per_sec"], RATE))
        print("  %s: %.0f req/s, 0 failed, %d retried" % (what, r["requests_per_sec"], r["retried"]))
        return r


def fd_kinds(pid):
    kinds = {}
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            k = re.sub(r"\[.*", "", os.readlink("/proc/%d/fd/%s" % (pid, fd)))
        except FileNotFoundError:
            continue
        kinds[k] = kinds.get(k, 0) + 1
    return kinds


def listener_inodes(port):
    """The inodes of the listening TCP sockets on 127.0.0.1:port, from /proc/net/tcp."""
    with open("/proc/net/tcp") as f:
        rows = [l.split() for l in f.read().splitlines()[1:]]
    return sorted(r[9] for r in rows if r[1] == "0100007F:%04X" % port and r[3] == "0A")


def listeners(port):
    return len(listener_inodes(port))


def socket_inodes(pid):
    out = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except FileNotFoundError:
            continue
        if link.startswith("socket:["):
            out.add(link[8:-1])
    return out


def wait_until(fn, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return
        time.sleep(0.05)
    fail("%s: not within %.0f s" % (what() if callable(what) else what, timeout))


# ---- Parts --------------------------------------------------------------------------------------


def probes(d):
    site = Site(d, extra="stop_delay_ms = 20000")
    eq(request(site.port, "/_keel/live")[0], 200, "/_keel/live")
    status, _, body = request(site.port, "/_keel/ready")
    eq((status, body), (200, b"ready\n"), "/_keel/ready before SIGTERM")
    # A request under way: its head half sent, finished after the stop began.
    slow = connect(site.port)
    slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    t0 = time.monotonic()
    site.proc.terminate()
    check(site.proc.wait_line("not ready; stopping in 20000 ms", 5), "no delay logged:\n" + site.proc.shown())
    eq(request(site.port, "/_keel/ready")[0], 503, "/_keel/ready during the stop delay")
    eq(request(site.port, "/")[0], 200, "GET / during the stop delay")
    site.proc.signal(signal.SIGHUP)  # no reload while stopping: still not ready
    check(site.proc.wait_line("SIGHUP ignored: stopping", 5), "SIGHUP in the delay:\n" + site.proc.shown())
    eq(request(site.port, "/_keel/ready")[0], 503, "/_keel/ready after a SIGHUP in the stop delay")
    # A second SIGTERM ends the delay: the stop begins, and new clients are refused at once.
    os.kill(site.proc.pid, signal.SIGTERM)
    wait_until(lambda: refused(site.port), 5, "new clients refused after a second SIGTERM")
    check(time.monotonic() - t0 < 10, "the second SIGTERM did not cut the 20 s delay short")
    check(site.proc.alive(), "keel exited before the request under way was answered")
    os.kill(site.proc.pid, signal.SIGTERM)  # a third, in the drain: logged, the drain goes on
    os.kill(site.proc.pid, signal.SIGUSR1)  # and logrotate's: the logs reopen, nothing dies
    check(site.proc.wait_line("Terminated received: already stopping", 5), "a SIGTERM in the drain:\n" +
          site.proc.shown())
    time.sleep(0.2)
    check(site.proc.alive(), "keel ended on a signal in its drain:\n" + site.proc.shown())
    slow.sendall(b"\r\n")
    got = b""
    while b"hello\n" not in got:
        chunk = slow.recv(4096)
        if not chunk:
            break
        got += chunk
    check(got.startswith(b"HTTP/1.1 200") and b"hello\n" in got,
          "the request under way during the drain was not answered: %r" % got[:200])
    check(b"connection: close" in got.lower(), "a response during the drain must close: %r" % got[:300])
    slow.close()
    site.proc.expect_exit("after the drain", 10)


def signals_after_reload(d):
    """A reload, then SIGTERM with a short stop delay, then (the new workers gone, the old ones
    still draining a request) another SIGTERM: logged, and the exit is still 0 (the serving
    generation's memory was once read after it was freed here)."""
    site = Site(d, extra="stop_delay_ms = 300")
    held = connect(site.port)  # (a request under way on the first generation's worker)
    held.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    time.sleep(0.1)
    site.rewrite("gen-1")
    site.proc.signal(signal.SIGHUP)
    check(wait_count(site.proc, r"reloaded: ", 1), "reload:\n" + site.proc.shown())
    site.proc.signal(signal.SIGTERM)
    check(site.proc.wait_line("not ready; stopping in 300 ms", 5), "delay:\n" + site.proc.shown())
    time.sleep(0.8)  # (the delay is over: the stop began; the new generation has nothing to drain)
    site.proc.signal(signal.SIGTERM)
    check(site.proc.wait_line("already stopping", 5), "a SIGTERM in the drain:\n" + site.proc.shown())
    held.sendall(b"\r\n")
    check(held.recv(4096).startswith(b"HTTP/1.1 200"), "the held request answered in the drain")
    held.close()
    site.proc.expect_exit("after the drain", 10)


def tls_reload(d):
    """HTTPS: a reload reads the certificates again; new handshakes get the new one."""
    if not shutil.which("openssl"):
        raise Skip("openssl missing")
    for name in ("one", "two"):
        r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                            "-nodes", "-keyout", os.path.join(d, name + ".key"), "-out", os.path.join(d, name + ".crt"),
                            "-days", "2", "-subj", "/CN=" + name], capture_output=True, text=True, timeout=30)
        check(r.returncode == 0, "openssl req: " + r.stderr)

    def served_cert(port):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", port), 5) as raw, ctx.wrap_socket(raw) as s:
            return s.getpeercert(binary_form=True)

    def der(name):
        with open(os.path.join(d, name + ".crt")) as f:
            return ssl.PEM_cert_to_DER_cert(f.read())

    site = Site(d, extra="tls_cert = one.crt\ntls_key = one.key")
    eq(served_cert(site.port) == der("one"), True, "the first certificate served")
    site.extra = "tls_cert = two.crt\ntls_key = two.key"
    site.rewrite("gen-1")
    site.proc.signal(signal.SIGHUP)
    check(wait_count(site.proc, r"reloaded: ", 1), "reload:\n" + site.proc.shown())
    wait_until(lambda: served_cert(site.port) == der("two"), 3, "the second certificate served after the reload")
    site.proc.stop_ok("after a TLS reload")


def refused(port):
    s = socket.socket()
    s.settimeout(1)
    try:
        s.connect(("127.0.0.1", port))
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False  # (in the backlog as the socket was shut: reset; the next one is refused)
    finally:
        s.close()
    return False


def reload_under_load(d):
    site = Site(d)
    eq(site.server_name(), "gen-0", "Server before the reloads")
    base_fds = site.proc.fds()
    load = Load(d, site.port, 7)
    time.sleep(0.5)
    for i in range(1, 11):
        site.rewrite("gen-%d" % i)
        site.proc.signal(signal.SIGHUP)
        check(wait_count(site.proc, r"reloaded: 2 workers", i), "reload %d not logged:\n%s" % (i, site.proc.shown()))
        eq(site.server_name("gen-%d" % i), "gen-%d" % i, "Server after reload %d" % i)
        time.sleep(0.4)
    load.no_failures("10 reloads")
    # The old generations drain and go, and the listening sockets stay the two they were.
    check(wait_count(site.proc, r"old workers gone: 2 drained in", 10, 10),
          "old workers not all gone:\n" + site.proc.shown())
    eq(listeners(site.port), 2, "listening sockets on the port after 10 reloads")
    # One more, with no load: the new workers' caches (splice pipes) start empty, so the
    # descriptors are those of before the reloads, give or take a test connection.
    site.proc.signal(signal.SIGHUP)
    check(wait_count(site.proc, r"old workers gone: 2 drained in", 11, 10), "11th reload")
    check(site.proc.fds() <= base_fds + 2, "descriptors: %d before the reloads, %d after: %s" %
          (base_fds, site.proc.fds(), fd_kinds(site.proc.pid)))
    site.proc.stop_ok("after 10 reloads")


def bad_reload(d):
    site = Site(d)
    load = Load(d, site.port, 4)
    time.sleep(0.5)
    site.rewrite("gen-broken", tail="\nnot a line\n")
    site.proc.signal(signal.SIGHUP)
    check(wait_count(site.proc, r"reload rejected", 1), "broken file not rejected:\n" + site.proc.shown())
    check(count_lines(site.proc, re.escape(site.conf) + r":\d+: ") >= 1,
          "the rejection does not say FILE:LINE:\n" + site.proc.shown())
    eq(site.server_name(), "gen-0", "Server after a rejected reload")
    site.rewrite("gen-one", workers=1)
    site.proc.signal(signal.SIGHUP)
    check(wait_count(site.proc, r"reload rejected: fewer workers than listening sockets", 1),
          "a shrink of workers not rejected with its reason:\n" + site.proc.shown())
    eq(site.server_name(), "gen-0", "Server after a rejected shrink")
    site.rewrite("gen-more", workers=3)
    site.proc.signal(signal.SIGHUP)
    check(wait_count(site.proc, r"reloaded: 3 workers", 1), "3 workers not reloaded:\n" + site.proc.shown())
    eq(site.server_name("gen-more"), "gen-more", "Server after growing to 3 workers")
    eq(listeners(site.port), 3, "listening sockets after growing to 3 workers")
    load.no_failures("rejected reloads")
    site.proc.stop_ok("after rejected reloads")


def log_reopen(d):
    site = Site(d, extra="access_log = access.log")
    log = os.path.join(d, "access.log")
    load = Load(d, site.port, 5)
    time.sleep(0.5)
    for i in range(1, 6):
        wait_until(lambda: os.path.exists(log) and os.path.getsize(log) > 0, 5, "lines in access.log")
        os.rename(log, "%s.%d" % (log, i))
        site.proc.signal(signal.SIGUSR1)
        check(wait_count(site.proc, "logs reopened", i), "SIGUSR1 %d not logged" % i)
        wait_until(lambda: os.path.exists(log), 5, "access.log made again after SIGUSR1 %d" % i)
        time.sleep(0.6)
    r = load.no_failures("5 log reopens")
    site.proc.stop_ok("after log reopens")
    files = [log] + ["%s.%d" % (log, i) for i in range(1, 6)]
    lines = []
    for f in files:
        with open(f) as fh:
            got = fh.read()
        check(got.endswith("\n") or not got, "%s ends inside a line" % f)
        part = got.splitlines()
        check(len(part) > 0, "%s is empty: the rotation lost a file's worth" % f)
        lines += part
    bad = [l for l in lines if not LINE_RE.match(l)]
    check(not bad, "%d malformed or split lines, e.g. %r" % (len(bad), bad[:3]))
    # Every response the client got has its line (a few more may have been answered as the run
    # ended, and each line is one request sent).
    check(r["requests"] <= len(lines) <= r["sent"], "%d access-log lines for %d responses, %d sent" %
          (len(lines), r["requests"], r["sent"]))
    print("  %d lines in 6 files for %d responses" % (len(lines), r["requests"]))


def exited(proc):
    """proc's exit status (within 10 s): its output pipe stays open, held by the new process."""
    try:
        return proc.p.wait(10)
    except subprocess.TimeoutExpired:
        return None


def upgrade(d):
    set_subreaper()
    site = Site(d)
    load = Load(d, site.port, 7)
    time.sleep(0.5)
    pid, adopted = site.proc.pid, []
    try:
        for i in range(1, 4):
            os.kill(pid, signal.SIGUSR2)
            m = site.proc.wait_line(r"upgrade: pid (\d+) serves; this process \(pid %d\)" % pid, 10)
            check(m, "upgrade %d: no new process served:\n%s" % (i, site.proc.shown()))
            new = int(m.group(1))
            adopted.append(new)
            rc = exited(site.proc) if pid == site.proc.pid else pid_exit(pid, 10)
            eq(rc, 0, "upgrade %d: the old process's exit status" % i)
            eq(request(site.port, "/")[0], 200, "GET / after upgrade %d" % i)
            pid = new
            time.sleep(1.0)
        load.no_failures("3 upgrades")
        # A new process that cannot start: the old one keeps serving.
        site.rewrite("gen-broken", tail="\nnot a line\n")
        os.kill(pid, signal.SIGUSR2)
        check(site.proc.wait_line(r"upgrade failed: pid \d+ exited with status 1 before it served", 10),
              "a failed upgrade not reported:\n" + site.proc.shown())
        eq(request(site.port, "/")[0], 200, "GET / after a failed upgrade")
        os.kill(pid, signal.SIGTERM)
        eq(pid_exit(pid, 10), 0, "the last process's exit status")
        site.proc.check_sanitizers()
    finally:
        end_adopted(adopted)


def serve_upgrade(d):
    """keel serve (no configuration file) upgrades too: its workers leave the sockets alone."""
    set_subreaper()
    os.makedirs(os.path.join(d, "www"))
    with open(os.path.join(d, "www", "index.html"), "w") as f:
        f.write("hello\n")
    p = Proc([KEEL, "serve", "--listen", "127.0.0.1:0", "--workers", "2", os.path.join(d, "www")],
             name="keel serve", listen=CLI_LISTEN_RE)
    before = listener_inodes(p.port)
    eq(len(before), 2, "keel serve's listening sockets")
    p.signal(signal.SIGUSR2)
    m = p.wait_line(r"upgrade: pid (\d+) serves", 10)
    check(m, "keel serve did not upgrade:\n" + p.shown())
    new = int(m.group(1))
    try:
        eq(exited(p), 0, "the old keel serve's exit status")
        for _ in range(4):  # (both workers of the new process)
            eq(request(p.port, "/")[:3:2], (200, b"hello\n"), "GET / from the upgraded keel serve")
        eq(listener_inodes(p.port), before, "the listening sockets after the upgrade: the same ones")
        check(set(before) <= socket_inodes(new), "the new process holds the old one's sockets")
        os.kill(new, signal.SIGTERM)
        eq(pid_exit(new, 10), 0, "the new keel serve's exit status")
    finally:
        end_adopted([new])


def stop_during_upgrade(d):
    """SIGTERM (with a stop delay) while an upgrade's process has not served yet: the upgrade is
    called off, its process stops too, and nothing is left serving once the old one has stopped.
    The new process is held in its start deterministically: its access log is a FIFO that has
    lost its reader, so its open() waits."""
    set_subreaper()
    fifo = os.path.join(d, "access.fifo")
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # (for the first process's open)
    site = Site(d, extra="stop_delay_ms = 20000\naccess_log = access.fifo")
    os.close(reader)
    os.kill(site.proc.pid, signal.SIGUSR2)
    m = site.proc.wait_line(r"started .* \(pid (\d+)\)", 10)
    check(m, "no upgrade started:\n" + site.proc.shown())
    child = int(m.group(1))
    try:
        time.sleep(0.3)
        check(alive(child) and not site.proc.wait_line(r"upgrade: pid \d+ serves", 0),
              "the new process should be waiting in its start:\n" + site.proc.shown())
        os.kill(site.proc.pid, signal.SIGTERM)
        check(site.proc.wait_line(r"upgrade called off: stopping pid %d too" % child, 10),
              "the upgrade was not called off:\n" + site.proc.shown())
        check(not site.proc.wait_line(r"upgrade: pid \d+ serves", 1), "the upgrade went on:\n" + site.proc.shown())
        os.kill(site.proc.pid, signal.SIGTERM)  # (the delay: cut short)
        eq(exited(site.proc), 0, "the old process's exit status")
        wait_until(lambda: not alive(child), 5, "the called-off process gone")
        check(refused(site.port), "something still serves on the port")
    finally:
        end_adopted([child])


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # (a zombie of ours: reap it)
        got, _ = os.waitpid(pid, os.WNOHANG)
        return got == 0
    except ChildProcessError:
        return True


def socket_activation(d):
    tool = shutil.which("systemd-socket-activate")
    if not tool:
        raise Skip("systemd-socket-activate not installed (Debian's systemd package)")
    port = free_port()
    os.makedirs(os.path.join(d, "www"), exist_ok=True)
    with open(os.path.join(d, "www", "index.html"), "w") as f:
        f.write("hello\n")
    conf = os.path.join(d, "keel.conf")
    write_conf(conf, port)
    p = Proc([tool, "-l", "127.0.0.1:%d" % port, KEEL, "-c", conf], name="socket-activated keel",
             cwd=d, listen=re.compile(r"Listening on (?P<host>[\d.]+):(?P<port>\d+)"))
    status, _, body = request(port, "/")  # starts keel (the tool waits for the first client)
    eq((status, body), (200, b"hello\n"), "the first request through the passed socket")
    check(p.wait_line(CLI_LISTEN_RE, 5), "keel did not log its listening line:\n" + p.shown())
    # keel bound nothing itself: one listening socket on the port (the passed one), though 2 workers.
    eq(listeners(port), 1, "listening sockets on the port")
    eq(os.readlink("/proc/%d/fd/3" % p.pid).startswith("socket:"), True, "fd 3 is the passed socket")
    p.stop_ok("socket-activated keel")
    # A passed socket that no listen entry names is an error.
    write_conf(conf, free_port())
    q = Proc([tool, "-l", "127.0.0.1:%d" % port, KEEL, "-c", conf], name="mismatched keel", cwd=d,
             listen=re.compile(r"Listening on (?P<host>[\d.]+):(?P<port>\d+)"))
    try:
        request(port, "/", timeout=3)
    except Exception:
        pass
    eq(q.wait(10), 1, "exit status with a passed socket no entry names")
    check(q.wait_line(r"passed by the service manager matches no listen address", 0),
          "no clear message:\n" + q.shown())


def notify(d):
    path = os.path.join(d, "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(10)
    env = dict(os.environ, NOTIFY_SOCKET=path)
    site = Site(d, env=env)

    def expect(state):
        while True:
            try:
                msg = s.recv(4096).decode()
            except socket.timeout:
                fail("no %s on NOTIFY_SOCKET:\n%s" % (state, site.proc.shown()))
            if state in msg.split("\n"):
                return

    expect("READY=1")
    site.rewrite("gen-1")
    site.proc.signal(signal.SIGHUP)
    expect("RELOADING=1")
    expect("READY=1")
    # An upgrade: the old process names the new one MAINPID and does not say STOPPING=1 (the
    # service goes on); the new one says READY=1, and STOPPING=1 when it stops.
    set_subreaper()
    site.proc.signal(signal.SIGUSR2)
    m = site.proc.wait_line(r"upgrade: pid (\d+) serves", 10)
    check(m, "no upgrade:\n" + site.proc.shown())
    new = int(m.group(1))
    try:
        got = []
        while "MAINPID=%d" % new not in got:
            try:
                got += s.recv(4096).decode().split("\n")
            except socket.timeout:
                fail("no MAINPID=%d on NOTIFY_SOCKET: %r" % (new, got))
        eq(exited(site.proc), 0, "the old process's exit status")
        s.settimeout(0.3)
        try:
            while True:
                got += s.recv(4096).decode().split("\n")
        except socket.timeout:
            pass
        eq(got.count("STOPPING=1"), 0, "STOPPING=1 from the upgraded process: %r" % got)
        check("READY=1" in got, "READY=1 from the new process: %r" % got)
        s.settimeout(10)
        os.kill(new, signal.SIGTERM)
        expect("STOPPING=1")
        eq(pid_exit(new, 10), 0, "the new process's exit status")
    finally:
        end_adopted([new])
    s.close()


def status_json(d):
    """?format=json: the worker's counters and each source's, parsed by json, moving with traffic."""
    site = Site(d, extra="")
    with open(site.conf, "a") as f:
        f.write("\n[route /_keel/status]\nmatch = exact\nhandler = status\n")
    site.proc.signal(signal.SIGHUP)
    check(wait_count(site.proc, r"reloaded: ", 1), "status route reload:\n" + site.proc.shown())

    def get():
        deadline = time.monotonic() + 2  # (an old worker may answer for a moment: it has no such route)
        while True:
            status, headers, body = request(site.port, "/_keel/status?format=json")
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        eq((status, headers.get("content-type")), (200, "application/json"), "status JSON answer")
        return json.loads(body)

    a = get()
    check(a["worker"] in ("0", "1"), "worker label: %r" % a["worker"])
    for k in ["connections_open", "requests_total", "requests_shed_total", "rss_bytes", "bytes_out_total"]:
        check(isinstance(a["metrics"].get(k), int), "metric %s in %r" % (k, a["metrics"]))
    check(a["metrics"]["rss_bytes"] > 1 << 20, "rss_bytes %r" % a["metrics"]["rss_bytes"])
    routes = [s for s in a["sources"] if s["labels"] == {"route": "/"}]
    check(len(routes) == 1 and isinstance(routes[0]["metrics"].get("static_cache_entries"), int),
          "the static route's source: %r" % a["sources"])
    for _ in range(20):  # (each worker sees its share)
        request(site.port, "/")
    seen = {}
    for _ in range(40):
        b = get()
        seen[b["worker"]] = b
    moved = sum(b["metrics"]["requests_total"] - (a["metrics"]["requests_total"] if w == a["worker"] else 0)
                for w, b in seen.items())
    check(moved >= 20, "requests_total moved by %d over the workers seen (%s) after 20 requests" %
          (moved, sorted(seen)))
    site.proc.stop_ok("after the status checks")


def run():
    t = Subtests()
    for name, fn in [("probes and the stop delay", probes), ("reload under load", reload_under_load),
                     ("bad reloads rejected under load", bad_reload), ("log reopen under load", log_reopen),
                     ("binary upgrade under load", upgrade), ("keel serve upgrade", serve_upgrade),
                     ("a stop during an upgrade", stop_during_upgrade),
                     ("signals after a reload and the stop delay", signals_after_reload),
                     ("TLS certificates reload", tls_reload),
                     ("socket activation", socket_activation), ("status as JSON", status_json),
                     ("sd_notify", notify)]:
        with tempfile.TemporaryDirectory(prefix="keel-ops-") as d:
            t.run(name, lambda: fn(d))
    return t.status()


if __name__ == "__main__":
    main(run)
