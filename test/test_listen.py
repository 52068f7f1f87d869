#!/usr/bin/env python3
"""Listeners and upstreams beyond one TCP address: `listen` repeated in
[server], IPv4 and IPv6 (dual stack unless `ipv6only`), Unix sockets with
their file's mode and owner, and upstream servers on Unix sockets.

- several listeners: one site on 127.0.0.1, [::1], [::] (which takes IPv4
  too), [::] ipv6only (which does not), a Unix socket path (mode 0660, a
  group set) and an abstract one; every one answers; the access log names
  a Unix socket's client "unix:"; the socket file goes at the stop.
- stale and live socket files: a file nobody listens on is replaced; one a
  running keel listens on is refused with the reason, and left alone.
- reload: listeners added and removed by SIGHUP; a removed Unix socket
  refuses new clients and its file goes once its workers have drained; a
  kept one gets a new mode.
- upgrade: SIGUSR2 hands the Unix socket to the new process (the same
  socket), which removes the file when it stops.
- socket files are keel's alone: a rejected reload puts the old mode back;
  a link put in the socket's place is never followed (the reload is
  rejected, the link's target untouched); a new process that fails leaves
  the old one's file; one that serves gives the file the mode its
  configuration says, and removes the file of an address it dropped.
- upstreams on Unix sockets: keel -c and keel proxy forward to a server on
  a Unix socket; its health checks say Host: localhost.
- upstreams by name (a hosts file of keel's own): every address of the name
  (a server on ::1 alone is reached; with one on each, both get
  connections); a name that moves is followed within resolve_interval_ms.
- socket activation of a Unix socket: keel serves on the passed one and
  leaves its file to the service manager.
Everything on loopback and in a temporary directory. Runs under KEEL_BACKEND."""
import grp, os, re, shutil, signal, socket, stat, tempfile, threading, time

from keeltest import (CLI_LISTEN_RE, KEEL, Proc, Skip, Subtests, check, end_adopted, eq, free_port, main,
                      pid_exit, recv_all, set_subreaper)


def other_group():
    """A group that is not ours, to see the owner set (root can give a file any group)."""
    for g in grp.getgrall():
        if g.gr_gid != os.getgid():
            return g
    raise Skip("no second group on this machine")


def get(addr, path="/", timeout=5):
    """GET path over a new connection to addr: ("tcp", host, port) or ("unix", path); (status, body)."""
    if addr[0] == "unix":
        s = socket.socket(socket.AF_UNIX)
        target = addr[1] if not addr[1].startswith("@") else "\0" + addr[1][1:]
    else:
        s = socket.socket(socket.AF_INET6 if ":" in addr[1] else socket.AF_INET)
        target = (addr[1], addr[2])
    s.settimeout(timeout)
    try:
        s.connect(target)
        s.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % path.encode())
        data = recv_all(s)
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    check(head.startswith(b"HTTP/1.1 "), "%s: not an HTTP response: %r" % (addr, data[:80]))
    return int(head[9:12]), body


def refused(addr):
    try:
        get(addr, timeout=2)
    except (ConnectionRefusedError, FileNotFoundError):
        return True
    return False


def site(d, listens, extra=""):
    os.makedirs(os.path.join(d, "www"), exist_ok=True)
    with open(os.path.join(d, "www", "index.html"), "w") as f:
        f.write("hello\n")
    conf = os.path.join(d, "keel.conf")
    with open(conf, "w") as f:
        f.write("[server]\n" + "".join("listen = %s\n" % l for l in listens) +
                "workers = 2\ngrace_ms = 2000\naccess_log = access.log\n" + extra + "[route /]\nstatic = www\n")
    return conf


def start(d, listens, name="keel -c"):
    conf = site(d, listens)
    return conf, Proc([KEEL, "-c", conf], name=name, cwd=d, listen=re.compile(r"listening on .*\(\d+ workers?"))


def several(d):
    p1, p2, p3, p4 = free_port(), free_port(), free_port(), free_port()
    sock = os.path.join(d, "keel.sock")
    abstract = "@keel-test-%d" % os.getpid()
    g = other_group()
    listens = ["127.0.0.1:%d" % p1, "[::1]:%d" % p2, "[::]:%d" % p3, "[::]:%d ipv6only" % p4,
               "unix:%s mode=0660 group=%s" % (sock, g.gr_name), "unix:" + abstract]
    _, p = start(d, listens)
    line = p.wait_line(r"listening on (.*) \(2 workers", 1).group(1)
    eq(line, ", ".join(["127.0.0.1:%d" % p1, "[::1]:%d" % p2, "[::]:%d" % p3, "[::]:%d" % p4, "unix:" + sock,
                        "unix:" + abstract]), "the listening line")
    for addr in [("tcp", "127.0.0.1", p1), ("tcp", "::1", p2), ("tcp", "::1", p3), ("tcp", "127.0.0.1", p3),
                 ("tcp", "::1", p4), ("unix", sock), ("unix", abstract)]:
        eq(get(addr), (200, b"hello\n"), "GET / on %s" % (addr,))
    check(refused(("tcp", "127.0.0.1", p4)), "IPv4 reached [::]:%d though it is ipv6only" % p4)
    check(refused(("tcp", "::1", p1)), "[::1] reached 127.0.0.1's port")
    st = os.lstat(sock)
    check(stat.S_ISSOCK(st.st_mode), "keel.sock is not a socket")
    eq(oct(stat.S_IMODE(st.st_mode)), oct(0o660), "the socket file's mode")
    eq(st.st_gid, g.gr_gid, "the socket file's group")
    p.stop_ok("keel with six listeners")
    check(not os.path.exists(sock), "the socket file is still there after the stop")
    with open(os.path.join(d, "access.log")) as f:
        hosts = [l.split(" ", 1)[0] for l in f]
    eq(sorted(set(hosts)), sorted({"127.0.0.1", "::1", "::ffff:127.0.0.1", "unix:"}), "clients in the access log")
    eq(hosts.count("unix:"), 2, "requests from Unix clients in the access log")


def stale_and_live(d):
    sock = os.path.join(d, "keel.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(sock)
    s.close()  # a file nobody listens on: what a killed server leaves behind
    _, p = start(os.path.join(d, "a"), ["unix:" + sock])
    eq(get(("unix", sock)), (200, b"hello\n"), "GET / on the socket that replaced a stale file")
    conf = site(os.path.join(d, "b"), ["unix:" + sock])
    q = Proc([KEEL, "-c", conf], name="second keel", cwd=os.path.join(d, "b"), listen=None)
    eq(q.wait(10), 1, "a second keel on a socket in use: exit status")
    check(q.wait_line(r"cannot listen on unix:%s: .*in use" % re.escape(sock), 0), "no reason:\n" + q.shown())
    eq(get(("unix", sock)), (200, b"hello\n"), "the first keel after the second one failed")
    p.stop_ok("keel on a socket that was stale")
    check(not os.path.exists(sock), "the socket file is still there after the stop")


def reload(d):
    p1, p5 = free_port(), free_port()
    a, b = os.path.join(d, "a.sock"), os.path.join(d, "b.sock")
    conf, p = start(d, ["127.0.0.1:%d" % p1, "unix:" + a, "unix:%s mode=0666" % b])
    eq(oct(stat.S_IMODE(os.lstat(b).st_mode)), oct(0o666), "b.sock's mode")
    site(d, ["127.0.0.1:%d" % p1, "127.0.0.1:%d" % p5, "unix:%s mode=0600" % b])
    p.signal(signal.SIGHUP)
    check(p.wait_line(r"reloaded: 2 workers listening on 127\.0\.0\.1:%d, 127\.0\.0\.1:%d, unix:%s;" %
                      (p1, p5, re.escape(b)), 10), "the reload:\n" + p.shown())
    check(p.wait_line(r"old workers gone", 10), "the old workers did not drain:\n" + p.shown())
    for addr in [("tcp", "127.0.0.1", p1), ("tcp", "127.0.0.1", p5), ("unix", b)]:
        eq(get(addr), (200, b"hello\n"), "GET / on %s after the reload" % (addr,))
    check(refused(("unix", a)), "a.sock still answers after the reload removed it")
    check(not os.path.exists(a), "a.sock's file is still there after its workers drained")
    eq(oct(stat.S_IMODE(os.lstat(b).st_mode)), oct(0o600), "b.sock's mode after the reload")
    # Back to one address: 127.0.0.1:p5 refuses from then on.
    site(d, ["unix:" + b])
    p.signal(signal.SIGHUP)
    check(p.wait_line(r"reloaded: 2 workers listening on unix:%s;" % re.escape(b), 10), "reload:\n" + p.shown())
    check(refused(("tcp", "127.0.0.1", p5)), "127.0.0.1:%d answers after the reload removed it" % p5)
    eq(get(("unix", b)), (200, b"hello\n"), "GET / on b.sock after the second reload")
    p.stop_ok("keel after two reloads")
    check(not os.path.exists(b), "b.sock is still there after the stop")


def upgrade(d):
    set_subreaper()
    port = free_port()
    sock = os.path.join(d, "keel.sock")
    _, p = start(d, ["127.0.0.1:%d" % port, "unix:" + sock])
    ino = os.lstat(sock).st_ino
    p.signal(signal.SIGUSR2)
    m = p.wait_line(r"upgrade: pid (\d+) serves", 10)
    check(m, "no upgrade:\n" + p.shown())
    new = int(m.group(1))
    try:
        eq(p.p.wait(10), 0, "the old process's exit status")  # (its output pipe stays open: the new one has it)
        eq(os.lstat(sock).st_ino, ino, "the socket file after the old process exited: the same one")
        for addr in [("unix", sock), ("tcp", "127.0.0.1", port)]:
            eq(get(addr), (200, b"hello\n"), "GET / on %s from the new process" % (addr,))
        os.kill(new, signal.SIGTERM)
        eq(pid_exit(new, 10), 0, "the new process's exit status")
        check(not os.path.exists(sock), "the new process left the socket file behind")
    finally:
        end_adopted([new])


def mode(path):
    return oct(stat.S_IMODE(os.lstat(path).st_mode))


def files_are_keels(d):
    set_subreaper()
    port, busy = free_port(), socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    a, b = os.path.join(d, "a.sock"), os.path.join(d, "b.sock")
    conf, p = start(d, ["127.0.0.1:%d" % port, "unix:%s mode=0600" % a])
    # A reload rejected after the mode was changed: the old mode comes back.
    site(d, ["127.0.0.1:%d" % port, "unix:%s mode=0666" % a, "127.0.0.1:%d" % busy.getsockname()[1]])
    p.signal(signal.SIGHUP)
    check(p.wait_line(r"reload rejected: cannot listen on a new address", 10), "no rejection:\n" + p.shown())
    eq(mode(a), oct(0o600), "a.sock's mode after a rejected reload")
    # A link in the socket's place: never followed.
    victim = os.path.join(d, "victim")
    with open(victim, "w") as f:
        f.write("x")
    os.chmod(victim, 0o600)
    os.rename(a, a + ".moved")
    os.symlink(victim, a)
    site(d, ["127.0.0.1:%d" % port, "unix:%s mode=0666" % a])
    p.signal(signal.SIGHUP)
    check(p.wait_line(r"mode or owner: the file is not keel's socket any more", 10), "no refusal:\n" + p.shown())
    eq(mode(victim), oct(0o600), "the mode of the file a link in the socket's place points to")
    os.unlink(a)
    os.rename(a + ".moved", a)
    # An upgrade whose new process fails (an address it cannot bind): the old one's file stays.
    site(d, ["127.0.0.1:%d" % port, "unix:%s mode=0600" % a, "127.0.0.1:%d" % busy.getsockname()[1]])
    p.signal(signal.SIGUSR2)
    check(p.wait_line(r"upgrade failed", 10), "the upgrade did not fail:\n" + p.shown())
    check(os.path.exists(a), "a failed new process removed the old one's socket file")
    eq(get(("unix", a)), (200, b"hello\n"), "GET / on a.sock after a failed upgrade")
    # One that serves: the new mode; an address dropped goes, one added comes.
    busy.close()
    site(d, ["127.0.0.1:%d" % port, "unix:%s mode=0640" % a, "unix:%s" % b])
    p.signal(signal.SIGUSR2)
    m = p.wait_line(r"upgrade: pid (\d+) serves", 10)
    check(m, "no upgrade:\n" + p.shown())
    new = int(m.group(1))
    try:
        eq(p.p.wait(10), 0, "the old process's exit status")
        eq(mode(a), oct(0o640), "a.sock's mode set by the new process")
        eq(get(("unix", b)), (200, b"hello\n"), "GET / on b.sock, the new process's own")
        site(d, ["127.0.0.1:%d" % port, "unix:%s" % b])
        os.kill(new, signal.SIGUSR2)  # the next one drops a.sock
        newer = None
        deadline = time.monotonic() + 10
        while newer is None and time.monotonic() < deadline:
            time.sleep(0.05)
            if not os.path.exists(a):
                newer = True
        check(newer, "a.sock is still there after an upgrade to a configuration without it")
        eq(get(("unix", b)), (200, b"hello\n"), "GET / on b.sock after the second upgrade")
    finally:
        end_adopted([new])
        for pid in pid_children():
            end_adopted([pid])


def pid_children():
    """Our adopted children still running (a test that upgraded twice has one more)."""
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open("/proc/%s/stat" % pid) as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == os.getpid():
                        out.append(int(pid))
            except (OSError, IndexError, ValueError):
                pass
    return out


class UnixHTTP:
    """An HTTP/1.1 server on a Unix socket (or at addr, a (family, address)) answering with the
    Host header it got, or with its own name."""

    def __init__(self, path, addr=None, name=None, keep_alive=False):
        self.path, self.hosts, self.name, self.keep_alive = path, [], name, keep_alive
        self.sock = socket.socket(addr[0] if addr else socket.AF_UNIX)
        if addr:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(addr[1] if addr else path)
        self.sock.listen(64)
        self.t = threading.Thread(target=self.accept, daemon=True)
        self.t.start()

    def accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        buf = b""
        with c:
            while True:
                while b"\r\n\r\n" not in buf:
                    b = c.recv(65536)
                    if not b:
                        return
                    buf += b
                head, _, buf = buf.partition(b"\r\n\r\n")
                host = re.search(rb"(?im)^host: *(\S*)", head)
                host = host.group(1).decode() if host else "-"
                path = head.split(b" ")[1].decode()
                self.hosts.append((path, host))
                body = ("host %s\n" % host if not self.name else self.name).encode()
                if self.name and not self.keep_alive:  # (one request per connection: a new one upstream each)
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" %
                              (len(body), body))
                    return
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # (wakes the accepting thread: no client is taken after)
        except OSError:
            pass
        self.sock.close()


def upstream(d):
    up = UnixHTTP(os.path.join(d, "up.sock"))
    try:
        port = free_port()
        conf = os.path.join(d, "proxy.conf")
        with open(conf, "w") as f:
            f.write(f"""[server]
listen = 127.0.0.1:{port}
workers = 1
[upstream app]
server = unix:{up.path}
health_path = /health
health_interval_ms = 100
[route /]
upstream = app
""")
        p = Proc([KEEL, "-c", conf], name="keel -c proxy", cwd=d, listen=CLI_LISTEN_RE)
        eq(get(("tcp", "127.0.0.1", port), "/x"), (200, b"host t\n"), "GET /x through the Unix socket upstream")
        deadline = time.monotonic() + 5
        while ("/health", "localhost") not in up.hosts and time.monotonic() < deadline:
            time.sleep(0.02)
        check(("/health", "localhost") in up.hosts, "no health check with Host: localhost: %s" % up.hosts[:5])
        p.stop_ok("keel -c with a Unix socket upstream")
        q = Proc([KEEL, "proxy", "--listen", "127.0.0.1:0", "--upstream", "unix:" + up.path, "--workers", "1"],
                 name="keel proxy", listen=CLI_LISTEN_RE)
        eq(get(("tcp", "127.0.0.1", q.port), "/y"), (200, b"host t\n"), "GET /y through keel proxy")
        q.stop_ok("keel proxy to a Unix socket")
    finally:
        up.close()


def by_name(d):
    """An upstream given by name: every address of it, and looked up again as it changes. The name
    is keel's own: a hosts file bind-mounted over /etc/hosts in a mount namespace of keel's."""
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or not unshare:
        raise Skip("a name of the test's own needs root and unshare(1) (a private /etc/hosts)")
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError as e:
        raise Skip("no IPv6 loopback here: %s" % e)
    port, front = free_port(), free_port()
    hosts, nss = os.path.join(d, "hosts"), os.path.join(d, "nsswitch.conf")
    with open(hosts, "w") as f:
        f.write("127.0.0.1 upstream.keel.test\n::1 upstream.keel.test\n")
    with open(nss, "w") as f:
        f.write("hosts: files\n")  # (the file alone: no DNS, no cache in between)
    conf = os.path.join(d, "proxy.conf")
    with open(conf, "w") as f:
        f.write(f"""[server]
listen = 127.0.0.1:{front}
workers = 1
[upstream app]
server = upstream.keel.test:{port}
resolve_interval_ms = 200
[route /]
upstream = app
""")
    servers = [UnixHTTP(None, (socket.AF_INET6, ("::1", port)), name="v6"),
               UnixHTTP(None, (socket.AF_INET, ("127.0.0.1", port)), name="v4")]
    p = Proc([unshare, "--mount", "--propagation", "private", "sh", "-c",
              'mount --bind "$0" /etc/hosts && mount --bind "$1" /etc/nsswitch.conf && exec "$2" -c "$3"',
              hosts, nss, KEEL, conf], name="keel -c with its own /etc/hosts", cwd=d, listen=CLI_LISTEN_RE)
    try:
        # Both listen: new connections go round both addresses.
        seen = {get(("tcp", "127.0.0.1", front))[1] for _ in range(8)}  # (a new upstream connection each)
        eq(seen, {b"v4", b"v6"}, "the addresses upstream.keel.test's connections went to")
        # Only ::1 listens: a connect to 127.0.0.1 is refused, and the next address is tried.
        servers.pop().close()
        for _ in range(4):
            eq(get(("tcp", "127.0.0.1", front)), (200, b"v6"), "GET through upstream.keel.test (::1 alone listens)")
        # The name moves (from a server that keeps its connections open): looked up again within
        # resolve_interval_ms, and the kept-alive connection to the old address no longer used.
        for s in servers:
            s.close()
        servers = [UnixHTTP(None, (socket.AF_INET, ("127.0.0.2", port)), name="old", keep_alive=True),
                   UnixHTTP(None, (socket.AF_INET, ("127.0.0.3", port)), name="moved", keep_alive=True)]
        with open(hosts, "r+") as f:  # (in place: the bind mount holds the inode)
            f.truncate(0)
            f.write("127.0.0.2 upstream.keel.test\n")
        deadline = time.monotonic() + 5
        while get(("tcp", "127.0.0.1", front))[1] != b"old":
            check(time.monotonic() < deadline, "upstream.keel.test not followed to 127.0.0.2 within 5 s")
            time.sleep(0.05)
        eq(get(("tcp", "127.0.0.1", front)), (200, b"old"), "GET on the kept-alive connection to 127.0.0.2")
        with open(hosts, "r+") as f:
            f.truncate(0)
            f.write("127.0.0.3 upstream.keel.test\n")
        deadline = time.monotonic() + 5
        while get(("tcp", "127.0.0.1", front))[1] != b"moved":
            check(time.monotonic() < deadline, "upstream.keel.test not followed to 127.0.0.3 within 5 s "
                  "(resolve_interval_ms 200)")
            time.sleep(0.05)
        eq({get(("tcp", "127.0.0.1", front))[1] for _ in range(6)}, {b"moved"}, "GETs after the name moved")
        p.stop_ok("keel -c with its own /etc/hosts")
    finally:
        for s in servers:
            s.close()


def activation(d):
    tool = shutil.which("systemd-socket-activate")
    if not tool:
        raise Skip("systemd-socket-activate not installed (Debian's systemd package)")
    sock = os.path.join(d, "act.sock")
    conf = site(d, ["unix:" + sock])
    p = Proc([tool, "-l", sock, KEEL, "-c", conf], name="socket-activated keel", cwd=d,
             listen=re.compile(r"Listening on (?P<host>\S+)"))
    eq(get(("unix", sock)), (200, b"hello\n"), "the first request through the passed Unix socket")
    check(p.wait_line(r"listening on unix:%s \(2 workers" % re.escape(sock), 5), "no listening line:\n" + p.shown())
    eq(os.readlink("/proc/%d/fd/3" % p.pid).startswith("socket:"), True, "fd 3 is the passed socket")
    p.stop_ok("socket-activated keel on a Unix socket")
    check(os.path.exists(sock), "keel removed the service manager's socket file")


def run():
    t = Subtests()
    for name, fn in [("several listeners", several), ("stale and live socket files", stale_and_live),
                     ("reload adds and removes listeners", reload), ("upgrade with a Unix socket", upgrade),
                     ("socket files are keel's alone", files_are_keels),
                     ("upstreams on Unix sockets", upstream), ("upstreams by name", by_name), ("socket activation of a Unix socket", activation)]:
        with tempfile.TemporaryDirectory(prefix="keel-listen-") as d:
            t.run(name, lambda: fn(d))
    return t.status()


if __name__ == "__main__":
    main(run)
