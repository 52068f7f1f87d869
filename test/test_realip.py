#!/usr/bin/env python3
"""The client's real address from trusted proxies: the PROXY protocol on a
listener (`listen = ADDR proxy_protocol`), X-Forwarded-For and Forwarded
from `real_ip_from` sources (`real_ip_header`).

- PROXY protocol by hand: versions 1 and 2 (TLVs skipped, LOCAL keeps the
  connection's own address); the address shows in the access log and in
  the X-Forwarded-For keel's proxy sends upstream; the request after the
  header, sent in the same packet or apart, is served.
- refused headers: none, broken, one byte past the 1536-byte limit (the
  limit itself is taken), a header that never comes (header_timeout_ms),
  a source outside real_ip_from: each connection closed and counted in
  proxy_protocol_errors_total; the other listener serves on.
- X-Forwarded-For and Forwarded: the rightmost untrusted address, several
  header lines as one list, junk ending the walk, an untrusted connection's
  header ignored.
- HAProxy from Debian in front with send-proxy, send-proxy-v2 and option
  forwardfor: keel logs the client HAProxy saw (127.0.0.3, its own source
  being 127.0.0.1).
Loopback only. Runs under KEEL_BACKEND."""
import json, os, re, shutil, signal, socket, struct, tempfile, time

from keeltest import (CLI_LISTEN_RE, KEEL, Proc, PyServer, Skip, Subtests, check, eq, free_port, main,
                      recv_all, request)

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(cmd, fam, addrs, tlvs=b""):
    body = addrs + tlvs
    return V2_SIG + bytes([0x20 | cmd, fam]) + struct.pack("!H", len(body)) + body


def v2_tcp4(src, dst, sport, dport, tlvs=b""):
    return v2(1, 0x11, socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport), tlvs)


def v2_tcp6(src, dst, sport, dport):
    return v2(1, 0x21, socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) +
              struct.pack("!HH", sport, dport))


def exchange(port, chunks, source=None, timeout=5):
    """Send chunks (bytes, or a float: a pause) on a new connection; all that comes back until
    EOF, or b"" if the connection was reset."""
    s = socket.socket()
    s.settimeout(timeout)
    if source:
        s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    out = b""
    try:
        for c in chunks:
            if isinstance(c, float):
                time.sleep(c)
            else:
                s.sendall(c)
        out = recv_all(s, stop_on=ConnectionResetError)
    except ConnectionResetError:
        pass
    finally:
        s.close()
    return out


GET = b"GET /up HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


class Echo(PyServer):
    """An upstream that answers with the X-Forwarded-For it got."""

    def handle(self, conn):
        buf = b""
        while b"\r\n\r\n" not in buf:
            b = conn.recv(65536)
            if not b:
                return
            buf += b
        m = re.search(rb"(?im)^x-forwarded-for: *([^\r]*)", buf)
        body = m.group(1) if m else b"-"
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))


class Site:
    def __init__(self, d, trusted="127.0.0.1, 10.0.0.0/8", header="X-Forwarded-For", extra=""):
        self.dir = d
        self.pp, self.plain = free_port(), free_port()
        self.up = Echo()
        os.makedirs(os.path.join(d, "www"), exist_ok=True)
        with open(os.path.join(d, "www", "index.html"), "w") as f:
            f.write("hello\n")
        self.log = os.path.join(d, "access.log")
        conf = os.path.join(d, "keel.conf")
        with open(conf, "w") as f:
            f.write(f"""[server]
listen = 127.0.0.1:{self.pp} proxy_protocol
listen = 127.0.0.1:{self.plain}
workers = 1
access_log = access.log
real_ip_from = {trusted}
real_ip_header = {header}
header_timeout_ms = 500
{extra}
[upstream echo]
server = 127.0.0.1:{self.up.port}
[route /_keel/status]
handler = status
[route /up]
upstream = echo
[route /]
static = www
""")
        self.proc = Proc([KEEL, "-c", conf], name="keel -c", cwd=d, listen=CLI_LISTEN_RE)

    def clients(self, n, timeout=5):
        """The first column of the access log once it has n lines (it is written once a second)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with open(self.log) as f:
                    lines = f.read().splitlines()
            except FileNotFoundError:
                lines = []
            if len(lines) >= n or time.monotonic() > deadline:
                return [l.split(" ", 1)[0] for l in lines]
            time.sleep(0.05)

    def errors(self):
        _, _, body = request(self.plain, "/_keel/status?format=json")
        return json.loads(body)["metrics"]["proxy_protocol_errors_total"]

    def stop(self):
        self.proc.stop_ok("keel")
        self.up.stop()


def body_of(resp):
    check(resp.startswith(b"HTTP/1.1 200 "), "not a 200: %r" % resp[:80])
    return resp.partition(b"\r\n\r\n")[2]


def proxy_protocol(d):
    s = Site(d)
    cases = [
        ([b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r\n" + GET], "203.0.113.7"),
        ([b"PROXY TCP6 2001:db8::7 2001:db8::1 4711 443\r\n", 0.1, GET], "2001:db8::7"),  # apart
        ([b"PROXY TC", 0.1, b"P4 198.51.100.1 192.0.2.1 1 2\r", 0.1, b"\n" + GET], "198.51.100.1"),  # in pieces
        ([b"PROXY UNKNOWN\r\n" + GET], "127.0.0.1"),
        ([v2_tcp4("192.0.2.44", "127.0.0.1", 12345, 8080) + GET], "192.0.2.44"),
        ([v2_tcp6("2001:db8::44", "::1", 1, 2), 0.1, GET], "2001:db8::44"),
        ([v2_tcp4("192.0.2.45", "127.0.0.1", 1, 2, tlvs=b"\x01\x00\x02h2" + b"\x04" + b"\x00" * 40)[:20], 0.1,
          v2_tcp4("192.0.2.45", "127.0.0.1", 1, 2, tlvs=b"\x01\x00\x02h2" + b"\x04" + b"\x00" * 40)[20:] + GET],
         "192.0.2.45"),
        ([v2(0, 0x00, b"") + GET], "127.0.0.1"),  # LOCAL: a balancer's own health check
    ]
    for chunks, want in cases:
        # The upstream hears the PROXY header's address as the hop the request came from.
        eq(body_of(exchange(s.pp, chunks)), want.encode(), "X-Forwarded-For upstream for %r" % chunks[0][:24])
    # The longest header taken: 1536 bytes in all.
    hdr = v2_tcp4("192.0.2.46", "127.0.0.1", 1, 2, tlvs=b"\xee" * (1536 - 16 - 12))
    eq(len(hdr), 1536, "the longest header's length")
    eq(body_of(exchange(s.pp, [hdr + GET])), b"192.0.2.46", "X-Forwarded-For after a 1536-byte header")
    eq(s.clients(len(cases) + 1), [w for _, w in cases] + ["192.0.2.46"], "the access log's clients")
    eq(s.errors(), 0, "proxy_protocol_errors_total after good headers")
    s.stop()


def refused(d):
    s = Site(d)
    bad = [
        [GET],  # no header
        [b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\n" + GET],  # LF alone
        [b"PROXY TCP4 203.0.113.777 192.0.2.1 1 2\r\n" + GET],
        [b"PROXY " + b"x" * 120 + b"\r\n" + GET],  # no CRLF within 107 bytes
        [v2_tcp4("192.0.2.46", "127.0.0.1", 1, 2, tlvs=b"\xee" * (1537 - 16 - 12)) + GET],  # one past
        [v2(1, 0x12, b"\x00" * 12) + GET],  # UDP
        [b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r"],  # and no more: header_timeout_ms
    ]
    for i, chunks in enumerate(bad):
        eq(exchange(s.pp, chunks), b"", "case %d: a refused header got an answer" % i)
    t0 = time.monotonic()
    eq(exchange(s.pp, [], timeout=10), b"", "a silent connection")
    waited = time.monotonic() - t0
    check(0.3 < waited < 5, "a connection without a header closed after %.2f s (header_timeout_ms 500)" % waited)
    eq(s.errors(), len(bad) + 1, "proxy_protocol_errors_total")
    # One deadline for the header and the request's head, from accept: a header at 0.45 s, then
    # nothing, is closed at 0.5 s (header_timeout_ms), not 0.5 s after the header.
    t0 = time.monotonic()
    eq(exchange(s.pp, [0.45, b"PROXY TCP4 203.0.113.7 192.0.2.1 1 2\r\n"], timeout=10), b"",
       "a header, then no request")
    waited = time.monotonic() - t0
    check(waited < 0.85, "the request's head got a deadline of its own after the PROXY header: closed after "
          "%.2f s (header_timeout_ms 500 from accept)" % waited)
    eq(request(s.plain, "/")[0], 200, "the plain listener after refused headers")
    s.stop()
    # A source outside real_ip_from: its PROXY header is not believed, its connection is closed.
    s = Site(os.path.join(d, "b"), trusted="10.0.0.0/8")
    eq(exchange(s.pp, [b"PROXY TCP4 203.0.113.7 192.0.2.1 1 2\r\n" + GET]), b"", "an untrusted PROXY header")
    eq(s.errors(), 1, "proxy_protocol_errors_total after an untrusted source")
    s.stop()


def forwarded_headers(d):
    s = Site(d)
    xff = [
        ("198.51.100.9, 10.1.2.3", None, "198.51.100.9"),
        ("1.2.3.4, 198.51.100.9, 10.1.2.3, 127.0.0.1", None, "198.51.100.9"),  # the rightmost untrusted
        ("10.0.0.1,10.0.0.2", None, "10.0.0.1"),  # all trusted: the leftmost
        ("unknown, 10.1.2.3", None, "10.1.2.3"),  # junk ends the walk
        ("junk", None, "127.0.0.1"),
        (None, None, "127.0.0.1"),
        ("198.51.100.1", "10.0.0.5", "198.51.100.1"),  # two lines are one list
        ("2001:db8::9", None, "2001:db8::9"),
    ]
    for a, b, want in xff:
        head = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        for v in (a, b):
            if v:
                head += b"X-Forwarded-For: " + v.encode() + b"\r\n"
        check(exchange(s.plain, [head + b"\r\n"]).startswith(b"HTTP/1.1 200"), "GET with %r" % a)
    # From a source that is not trusted, the header is ignored.
    exchange(s.plain, [b"GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 198.51.100.9\r\nConnection: close\r\n\r\n"],
             source="127.0.0.2")
    # keel's proxy appends the hop it got the request from, not the address it derived.
    eq(body_of(exchange(s.plain, [b"GET /up HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 198.51.100.9\r\n"
                                  b"Connection: close\r\n\r\n"])), b"198.51.100.9, 127.0.0.1",
       "X-Forwarded-For sent upstream")
    eq(s.clients(len(xff) + 2), [w for _, _, w in xff] + ["127.0.0.2", "198.51.100.9"], "the access log's clients")
    s.stop()
    s = Site(os.path.join(d, "fwd"), header="Forwarded")
    fwd = [
        ('for="[2001:db8::7]:4711", for=10.0.0.2;proto=https', "2001:db8::7"),
        ('For="198.51.100.3:80";by=10.0.0.1', "198.51.100.3"),
        ("for=unknown", "127.0.0.1"),
        ("for=_hidden, for=10.9.9.9", "10.9.9.9"),
        ("proto=http;by=10.0.0.1", "127.0.0.1"),
    ]
    for v, want in fwd:
        check(exchange(s.plain, [b"GET / HTTP/1.1\r\nHost: t\r\nForwarded: " + v.encode() +
                                 b"\r\nConnection: close\r\n\r\n"]).startswith(b"HTTP/1.1 200"), "GET with %r" % v)
    eq(s.clients(len(fwd)), [w for _, w in fwd], "the access log's clients with Forwarded")
    s.stop()


def unix_clients(d):
    """A Unix socket's clients are "unix:", trusted only when real_ip_from lists unix:."""
    os.makedirs(os.path.join(d, "www"))
    with open(os.path.join(d, "www", "index.html"), "w") as f:
        f.write("hello\n")
    for trusted, want in [("unix:, 10.0.0.0/8", "198.51.100.7"), ("127.0.0.1", "unix:")]:
        sock = os.path.join(d, "k.sock")
        conf = os.path.join(d, "keel.conf")
        with open(conf, "w") as f:
            f.write(f"""[server]
listen = unix:{sock}
listen = unix:{sock}.pp proxy_protocol
workers = 1
access_log = access.log
real_ip_from = {trusted}
real_ip_header = X-Forwarded-For
[route /]
static = www
""")
        p = Proc([KEEL, "-c", conf], name="keel on Unix sockets", cwd=d, listen=re.compile(r"listening on"))
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 198.51.100.7, 10.0.0.1\r\n"
                  b"Connection: close\r\n\r\n")
        check(s.recv(65536).startswith(b"HTTP/1.1 200"), "GET over the Unix socket")
        s.close()
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock + ".pp")
        s.settimeout(5)
        try:
            s.sendall(b"PROXY TCP4 203.0.113.9 192.0.2.1 1 2\r\n" + GET.replace(b"/up", b"/"))
            got = s.recv(65536)
        except (ConnectionResetError, BrokenPipeError):  # (closed with the request unread)
            got = b""
        s.close()
        p.stop_ok("keel on Unix sockets")
        with open(os.path.join(d, "access.log")) as f:
            clients = [l.split(" ", 1)[0] for l in f]
        os.unlink(os.path.join(d, "access.log"))
        if want == "unix:":  # not trusted: the PROXY connection is closed, the header ignored
            eq((clients, got), (["unix:"], b""), "real_ip_from %r: clients logged, the PROXY answer" % trusted)
        else:
            check(got.startswith(b"HTTP/1.1 200"), "GET after a PROXY header over a trusted Unix socket")
            eq(clients, [want, "203.0.113.9"], "real_ip_from %r: clients logged" % trusted)


def haproxy(d):
    hp = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.access(hp, os.X_OK):
        raise Skip("no haproxy (Debian package haproxy)")
    s = Site(d)
    ports = [free_port() for _ in range(3)]
    cfg = os.path.join(d, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(f"""defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend v1
    bind 127.0.0.1:{ports[0]}
    default_backend v1
frontend v2
    bind 127.0.0.1:{ports[1]}
    default_backend v2
frontend xff
    bind 127.0.0.1:{ports[2]}
    option forwardfor
    default_backend xff
backend v1
    server k 127.0.0.1:{s.pp} send-proxy
backend v2
    server k 127.0.0.1:{s.pp} send-proxy-v2
backend xff
    server k 127.0.0.1:{s.plain}
""")
    h = Proc([hp, "-db", "-f", cfg], name="haproxy", listen=None, cwd=d)
    try:
        deadline = time.monotonic() + 10
        for port in ports:
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    check(time.monotonic() < deadline and h.alive(), "HAProxy did not start:\n" + h.shown())
                    time.sleep(0.05)
        for port in ports:
            resp = exchange(port, [b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"], source="127.0.0.3")
            check(resp.startswith(b"HTTP/1.1 200"), "GET through HAProxy on %d: %r" % (port, resp[:60]))
        eq(s.clients(3), ["127.0.0.3"] * 3, "the clients keel logged behind HAProxy (send-proxy, send-proxy-v2, "
           "forwardfor)")
        eq(s.errors(), 0, "proxy_protocol_errors_total behind HAProxy")
    finally:
        h.signal(signal.SIGUSR1)  # HAProxy's graceful stop
        if h.wait(10) is None:
            h.kill()
    s.stop()


def run():
    t = Subtests()
    for name, fn in [("PROXY protocol", proxy_protocol), ("refused PROXY headers", refused),
                     ("X-Forwarded-For and Forwarded", forwarded_headers), ("Unix socket clients", unix_clients),
                     ("HAProxy in front", haproxy)]:
        with tempfile.TemporaryDirectory(prefix="keel-realip-") as d:
            t.run(name, lambda: fn(d))
    return t.status()


if __name__ == "__main__":
    main(run)
