#!/usr/bin/env python3
"""keel's reverse proxy end to end: `keel -c FILE` with upstream groups in
front of real upstreams -- keel's own test server (streamed bodies both
ways), `keel serve` (files up to 64 MiB) and a small raw upstream written
here that misbehaves on request (cut-off bodies, stalls, hop-by-hop
headers, ambiguous framing). Bodies are compared by SHA-256; failures must
show as 502/503/504 or a closed connection within the timeouts, never a
hang; the proxy's fds and memory must stay bounded. Runs under the backend
in KEEL_BACKEND."""
import http.client, json, os, shutil, socket, tempfile, threading, time

from keeltest import KEEL, TESTSRV, Proc, PyServer, check, fail, free_port, main, recv_all, sha
from keeltest import request as get
import keeltest

# Set by the upstream once its late bytes are out (see /late-big).
LATE_SENT = threading.Event()

def proxy(tmp, groups, route_prefix="/", extra_server=""):
    """keel -c with one [upstream u] group (dict of keys; 'server' a list) routed at route_prefix."""
    # No shedding by queueing delay (admission has its own tests): under ThreadSanitizer one tick
    # that reads health answers ahead of a request can pass the 20 ms budget, and the request
    # would be answered 503 by design, not by the proxy's logic under test.
    lines = ["[server]", "listen = 127.0.0.1:0", "workers = 1", "queue_delay_max_us = 0", extra_server, "",
             "[upstream u]"]
    for k, v in groups.items():
        for x in (v if isinstance(v, list) else [v]):
            lines.append(f"{k} = {x}")
    lines += ["", f"[route {route_prefix}]", "upstream = u", "", "[route /_keel/status]", "match = exact",
              "handler = status"]
    path = os.path.join(tmp, f"proxy{time.monotonic_ns()}.conf")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return Proc([KEEL, "-c", path])

# ---- A raw upstream that does what each test asks -----------------------------

class RawUpstream(PyServer):
    """Reads one request head (and a Content-Length body), then acts by path:
      /echo-headers   200 with the request head as the body (JSON list of [name, value])
      /cut            head with Content-Length 1000000, 1000 bytes, then close
      /stall          reads the request and never answers
      /hop            a response with hop-by-hop headers to be removed
      /ambiguous      a response with both Content-Length and Transfer-Encoding
      /chunked        a chunked response (3 chunks) with a trailer
      anything else   200 "raw:<path>"
    Keeps connections alive (one request at a time)."""
    def __init__(self, health=200):
        self.health = health  # what GET /health answers
        self.requests = []
        super().__init__()

    def handle(self, c):
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            hdrs = [l.split(":", 1) for l in lines[1:]]
            hdrs = [[n, v.strip()] for n, v in hdrs]
            cl = next((int(v) for n, v in hdrs if n.lower() == "content-length"), 0)
            while len(buf) < cl:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
            buf = buf[cl:]
            self.requests.append((method, target, hdrs))
            if not self._answer(c, method, target, hdrs):
                return

    def _answer(self, c, method, full_target, hdrs):
        target = full_target[4:] if full_target.startswith("/api/") else full_target  # (routes under /api/)
        if target == "/health":
            c.sendall(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % self.health)
        elif target == "/echo-headers":
            body = json.dumps(hdrs).encode()
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        elif target == "/cut":
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
            time.sleep(0.05)
            return False
        elif target == "/stall":
            time.sleep(3)
            return False
        elif target == "/hop":
            c.sendall(b"HTTP/1.1 200 OK\r\nConnection: X-Secret, keep-alive\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\n"
                      b"Proxy-Authenticate: Basic\r\nX-Kept: k\r\nServer: raw\r\nContent-Length: 2\r\n\r\nok")
        elif target == "/ambiguous":
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
            return False
        elif target == "/late-big":
            # A complete response, then -- late, unasked -- bytes that look like another one.
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"b" * 100000)
            time.sleep(0.05)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL")
            LATE_SENT.set()
        elif target == "/wait":
            time.sleep(0.5)  # (the request's body, if any, is what the proxy deals with meanwhile)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nwait")
        elif target == "/gzip-chunked":
            c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        elif target == "/empty":
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        elif target == "/chunked":
            c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + (b"" if method == "HEAD" else
                      b"3\r\nabc\r\n4\r\ndefg\r\n2\r\nhi\r\n0\r\nX-T: 1\r\n\r\n"))
        else:
            body = b"raw:" + full_target.encode()
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        return True

def read_chunked(f):
    out = []
    while True:
        line = f.readline()
        size = int(line.split(b";")[0], 16)
        if size == 0:
            while f.readline() not in (b"\r\n", b""):
                pass
            return b"".join(out)
        out.append(f.read(size))
        f.read(2)

def duplex_roundtrip(s, f, data, chunked):
    """POST data to /duplex on a kept-alive socket, sending from a thread while this one reads the echo."""
    if chunked:
        head = b"POST /duplex HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        step = 300000
        parts = [b"%x\r\n" % len(data[i:i + step]) + data[i:i + step] + b"\r\n" for i in range(0, len(data), step)]
        payload = head + b"".join(parts) + b"0\r\n\r\n"
    else:
        payload = b"POST /duplex HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(data) + data
    err = []
    def send():
        try:
            s.sendall(payload)
        except OSError as e:
            err.append(e)
    t = threading.Thread(target=send)
    t.start()
    status = f.readline()
    hdrs = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        n, v = line.decode().split(":", 1)
        hdrs[n.strip().lower()] = v.strip()
    check(status.startswith(b"HTTP/1.1 200") and hdrs.get("transfer-encoding") == "chunked",
          f"duplex answer of {len(data)} B: {status!r} {hdrs}")
    body = read_chunked(f)
    t.join(60)
    check(not err and not t.is_alive(), f"the upload of {len(data)} B went through: {err}")
    return body

# ---- The tests ----------------------------------------------------------------

def test_bodies(tmp):
    """Bodies of 0 B to 64 MiB both ways: downloads from keel serve (Content-Length kept), uploads
    echoed by the test server (streamed: request with Content-Length or chunked, response chunked)."""
    root = os.path.join(tmp, "www")
    os.makedirs(root)
    sizes = [0, 1, 1000, 16384, 16385, 100000, 1 << 20, 8 << 20, 64 << 20]
    files = {}
    for n in sizes:
        data = os.urandom(n) if n <= (1 << 20) else os.urandom(1 << 20) * (n >> 20)
        with open(os.path.join(root, f"f{n}"), "wb") as f:
            f.write(data)
        files[n] = data
    up = Proc([KEEL, "serve", "--listen", "127.0.0.1:0", "--workers", "1", root])
    echo = Proc([TESTSRV, "--listen", "127.0.0.1:0"])
    try:
        px = proxy(tmp, {"server": f"127.0.0.1:{up.port}"})
        pe = proxy(tmp, {"server": f"127.0.0.1:{echo.port}"})
        try:
            c = http.client.HTTPConnection("127.0.0.1", px.port, timeout=60)
            for n in sizes:
                c.request("GET", f"/f{n}")
                r = c.getresponse()
                data = r.read()
                check(r.status == 200 and sha(data) == sha(files[n]), f"download of {n} B through the proxy")
                check(r.getheader("Content-Length") == str(n), f"Content-Length {n} passed on")
                check(r.getheader("Via") == "1.1 keel", "Via added to the response")
            c.request("HEAD", "/f100000")
            r = c.getresponse()
            r.read()
            check(r.status == 200 and r.getheader("Content-Length") == "100000", "HEAD keeps the upstream's length")
            c.close()
            print("ok   downloads 0 B..64 MiB by SHA-256 on one keep-alive connection, HEAD")

            # Echoed as it arrives: the client must read while it sends (full duplex).
            s = socket.create_connection(("127.0.0.1", pe.port), timeout=30)
            f = s.makefile("rb")
            for n in sizes:
                d = duplex_roundtrip(s, f, files[n], chunked=False)
                check(sha(d) == sha(files[n]), f"upload of {n} B (Content-Length) echoed through the proxy")
            d = duplex_roundtrip(s, f, files[8 << 20], chunked=True)
            check(sha(d) == sha(files[8 << 20]), "chunked upload of 8 MiB echoed")
            s.close()
            print("ok   uploads 0 B..64 MiB (Content-Length and chunked) echoed by SHA-256")

            # pipelined requests on one raw connection
            s = socket.create_connection(("127.0.0.1", px.port), timeout=10)
            s.sendall(b"".join(b"GET /f%d HTTP/1.1\r\nHost: x\r\n\r\n" % n for n in (1, 1000, 16385, 0, 100000)))
            want = sum(len(files[n]) for n in (1, 1000, 16385, 0, 100000))
            got, deadline = b"", time.monotonic() + 10
            while got.count(b"HTTP/1.1 200") < 5 or len(got) < want + 5 * 100:
                d = s.recv(1 << 20)
                if not d or time.monotonic() > deadline:
                    break
                got += d
            s.close()
            check(got.count(b"HTTP/1.1 200 OK") == 5, "five pipelined requests answered")
            pos = 0
            for n in (1, 1000, 16385, 0, 100000):
                i = got.index(b"\r\n\r\n", pos) + 4
                check(got[i:i + n] == files[n], f"pipelined answer of {n} B in order")
                pos = i + n
            print("ok   five pipelined requests through the proxy, in order")

            # a slow client reading a 64 MiB body: the proxy must not buffer it
            base = px.rss_kib()
            s = socket.create_connection(("127.0.0.1", px.port), timeout=10)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.sendall(b"GET /f%d HTTP/1.1\r\nHost: x\r\n\r\n" % (64 << 20))
            got, peak = 0, base
            t_end = time.monotonic() + 1.5
            while time.monotonic() < t_end:
                got += len(s.recv(65536))
                time.sleep(0.01)
                peak = max(peak, px.rss_kib())
            check(got < (48 << 20), f"the client was slow ({got} B read)")
            check(peak - base < 16 * 1024, f"proxy RSS grew {peak - base} KiB for a slow reader of 64 MiB (bounded)")
            s.close()
            print(f"ok   slow reader of 64 MiB: proxy RSS grew {peak - base} KiB while it read {got >> 20} MiB")
        finally:
            check(px.stop() == 0 and pe.stop() == 0, "the proxies exit 0 on SIGTERM (no leak under ASan)")
    finally:
        up.stop()
        echo.stop()

def test_semantics(tmp):
    raw = RawUpstream()
    px = proxy(tmp, {"server": f"127.0.0.1:{raw.port}", "response_timeout_ms": 500})
    try:
        st, h, body = get(px.port, "/echo-headers", headers={
            "Host": "example.test", "Connection": "X-Drop, keep-alive", "X-Drop": "1", "Keep-Alive": "300",
            "TE": "gzip, trailers", "Proxy-Authorization": "Basic x", "X-Forwarded-For": "10.1.2.3",
            "X-Forwarded-Proto": "https", "Via": "1.0 edge", "X-Keep": "yes"})
        check(st == 200, "echo-headers answered")
        seen = {n.lower(): v for n, v in json.loads(body)}
        for hop in ("x-drop", "keep-alive", "proxy-authorization", "upgrade"):
            check(hop not in seen, f"hop-by-hop request header {hop} removed")
        check(seen.get("te") == "trailers" and seen.get("connection") == "TE",
              f"TE: its trailers token alone passed on, with Connection: TE ({seen.get('te')}, {seen.get('connection')})")
        st, h, body = get(px.port, "/echo-headers", headers={"TE": "gzip"})
        names = {n.lower() for n, v in json.loads(body)}
        check(st == 200 and "te" not in names and "connection" not in names, "TE without trailers removed")
        check(seen.get("host") == "example.test", "Host passed on as sent")
        check(seen.get("x-keep") == "yes", "an end-to-end header kept")
        check(seen.get("x-forwarded-for") == "10.1.2.3, 127.0.0.1", "X-Forwarded-For appended to")
        check(seen.get("x-forwarded-proto") == "http", "X-Forwarded-Proto set by the proxy")
        check(seen.get("via") == "1.0 edge, 1.1 keel", "Via appended to")
        print("ok   request: hop-by-hop removed (and what Connection names), Host kept, XFF/XFP/Via")

        n0 = len(raw.conns)
        for i in range(20):
            check(get(px.port, f"/reuse{i}")[0] == 200, "answered")
        check(len(raw.conns) - n0 <= 1, f"20 requests from 20 client connections took {len(raw.conns) - n0} "
              "new upstream connections (kept alive and reused)")
        st, h, body = get(px.port, "/hop")
        check(st == 200 and body == b"ok", "hop response answered")
        for hop in ("x-secret", "keep-alive", "proxy-authenticate"):
            check(hop not in h, f"hop-by-hop response header {hop} removed")
        check(h.get("x-kept") == "k" and h.get("server") == "keel", "end-to-end response header kept; Server ours")
        st, h, body = get(px.port, "/chunked")
        check(st == 200 and body == b"abcdefghi", "a chunked upstream response passed on")
        s = socket.create_connection(("127.0.0.1", px.port), timeout=5)
        s.sendall(b"GET /chunked HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n")
        got = recv_all(s)
        s.close()
        check(got.endswith(b"2\r\nhi\r\n0\r\nX-T: 1\r\n\r\n"), f"its trailer passed on: {got[-40:]!r}")
        st, h, body = get(px.port, "/chunked", method="HEAD")
        check(st == 200 and h.get("transfer-encoding") == "chunked" and "content-length" not in h,
              f"HEAD of a chunked resource keeps its framing, not Content-Length: 0 ({h})")
        st, h, body = get(px.port, "/empty", method="HEAD")
        check(st == 200 and h.get("content-length") == "0" and "transfer-encoding" not in h,
              f"HEAD of an empty resource keeps Content-Length: 0 ({h})")
        print("ok   response: hop-by-hop removed, chunked passed on")

        st, _, _ = get(px.port, "/ambiguous")
        check(st == 502, f"an upstream response with Content-Length and Transfer-Encoding: 502 (got {st})")
        s = socket.create_connection(("127.0.0.1", px.port), timeout=5)
        n0 = len(raw.requests)
        s.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"5\r\nhello\r\n0\r\n\r\n")
        d = s.recv(4096)
        s.close()
        check(d.startswith(b"HTTP/1.1 400"), "a request with ambiguous framing: 400")
        check(len(raw.requests) == n0, "and it was never forwarded")
        print("ok   ambiguous framing: 502 from the upstream side, 400 (not forwarded) from the client side")

        fds = px.fds()
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", px.port), timeout=5)
            s.sendall(b"GET /cut HTTP/1.1\r\nHost: x\r\n\r\n")
            t0 = time.monotonic()
            got = recv_all(s)
            s.close()
            check(time.monotonic() - t0 < 3, "a cut-off upstream body ends the client's connection promptly")
            body = got.split(b"\r\n\r\n", 1)[1]
            check(b"Content-Length: 1000000" in got and len(body) < 1000000,
                  "the client saw a short body and a close, not a hang")
        time.sleep(0.3)
        check(px.fds() <= fds + 2, f"no fd leak after cut-off bodies ({fds} -> {px.fds()})")
        print("ok   upstream killed mid-response: the client connection closes, no fd leak")

        t0 = time.monotonic()
        st, _, _ = get(px.port, "/stall")
        check(st == 504, f"a stalled upstream: 504 (got {st})")
        check(time.monotonic() - t0 < 2.5, "504 within the response timeout")
        print(f"ok   stalled upstream: 504 after {time.monotonic() - t0:.2f} s (response_timeout_ms 500)")
    finally:
        px.stop()
        raw.stop()

def raw_request(port, data, timeout=5, half_close=False):
    """Send raw bytes on a new connection (then half-close it if asked); everything until the
    server closes (or 1 s quiet)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(data)
    if half_close:
        s.shutdown(socket.SHUT_WR)
    s.settimeout(1.0)
    got = recv_all(s, stop_on=socket.timeout)
    s.close()
    return got

def test_hardening(tmp):
    raw = RawUpstream()
    px = proxy(tmp, {"server": f"127.0.0.1:{raw.port}", "pool_max": 1}, route_prefix="/api/")
    try:
        # Routed and forwarded by the same, normalized path.
        n0 = len(raw.requests)
        for target in ("/api/../admin", "/api/%2e%2e/admin", "/api/%2E%2e/admin?x", "//admin"):
            got = raw_request(px.port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            check(got.startswith(b"HTTP/1.1 404"), f"GET {target} reached the /api/ upstream: {got[:60]!r}")
        for target in ("/api/..%2Fadmin", "/api/..;/admin", "/api/..%5Cadmin"):
            got = raw_request(px.port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            check(got.startswith(b"HTTP/1.1 400"), f"GET {target}: {got[:60]!r}")
        check(len(raw.requests) == n0, f"forwarded: {raw.requests[n0:]}")
        for target, fwd in (("/api/x/../y", "/api/y"), ("/api//a/./b?q=/../z", "/api/a/b?q=/../z"),
                            ("/api/%7Euser", "/api/~user"), ("http://h/api/p?/internal/secret", "/api/p?/internal/secret")):
            got = raw_request(px.port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            check(got.endswith(b"raw:" + fwd.encode()), f"GET {target} forwarded as {got[-60:]!r}, want {fwd}")
        # Absolute-form: the target's authority replaces Host (RFC 9112 3.2.2).
        got = raw_request(px.port, b"GET http://example.test/api/echo-headers HTTP/1.1\r\nHost: other\r\n"
                                   b"Connection: close\r\n\r\n")
        seen = {n.lower(): v for n, v in json.loads(got.split(b"\r\n\r\n", 1)[1])}
        check(seen.get("host") == "example.test", f"absolute-form Host forwarded: {seen.get('host')}")
        print("ok   routes and forwarding by the normalized path; absolute-form's authority as Host")

        # Every token of Connection is removed, however many; headers named with '_' are not passed on.
        names = [f"X-Hop{i}" for i in range(20)]
        headers = "".join(f"{n}: 1\r\n" for n in names)
        got = raw_request(px.port, ("GET /api/echo-headers HTTP/1.1\r\nHost: x\r\nConnection: close, " +
                                    ", ".join(names) + "\r\n" + headers +
                                    "Transfer_Encoding: chunked\r\nContent_Length: 5\r\nX_Custom: 1\r\n"
                                    "X-Kept: 1\r\n\r\n").encode())
        seen = {n.lower(): v for n, v in json.loads(got.split(b"\r\n\r\n", 1)[1])}
        for n in names:
            check(n.lower() not in seen, f"{n}, named by Connection, was forwarded")
        for n in ("transfer_encoding", "content_length", "x_custom"):
            check(n not in seen, f"{n} (named with '_') was forwarded")
        check(seen.get("x-kept") == "1", "an ordinary header kept")
        print("ok   all 20 Connection tokens removed; headers named with '_' dropped")

        # A transfer coding the proxy cannot pass on: 502, not a gzip body announced as nothing.
        got = raw_request(px.port, b"GET /api/gzip-chunked HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        check(got.startswith(b"HTTP/1.1 502"), f"Transfer-Encoding: gzip, chunked upstream: {got[:80]!r}")

        # A malformed chunked request body is the client's fault: 400, the upstream not blamed.
        st0 = status_of(px.port)
        got = raw_request(px.port, b"POST /api/wait HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   b"5\r\nhello\r\nzz\r\n")
        check(got.startswith(b"HTTP/1.1 400"), f"a malformed chunked body through the proxy: {got[:80]!r}")
        st1 = status_of(px.port)
        check(st1["proxy_errors_502_total"] == st0["proxy_errors_502_total"],
              "a client's bad body counted as an upstream error")
        check(get(px.port, "/api/after-bad-body")[2] == b"raw:/api/after-bad-body", "the upstream still serves")
        # So is a body its client cut off (its input ended, half-closed): 400, not 502.
        got = raw_request(px.port, b"POST /api/wait HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                                   b"hello", half_close=True)
        check(got.startswith(b"HTTP/1.1 400"), f"a body cut off by a half-close through the proxy: {got[:80]!r}")
        st2 = status_of(px.port)
        check(st2["proxy_errors_502_total"] == st0["proxy_errors_502_total"],
              "a client's cut-off body counted as an upstream error")
        print("ok   gzip-coded upstream: 502; malformed or cut-off request body: 400, not an upstream error")

        # An upstream that sends bytes after a complete response: never the next request's answer.
        evil = 0
        for _ in range(3):
            LATE_SENT.clear()
            a = socket.create_connection(("127.0.0.1", px.port), timeout=10)
            a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            a.sendall(b"GET /api/late-big HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.1)  # the response waits in the proxy: its upstream receive pauses
            result = {}
            def b_req():
                result["b"] = get(px.port, "/api/after", timeout=10)
            t = threading.Thread(target=b_req)
            # The late bytes are sent before the next request can reach the upstream connection:
            # bytes that arrive after a request went out cannot be told from its answer (by anyone),
            # so a loaded machine that delays the upstream's send must not turn this into that case.
            check(LATE_SENT.wait(10), "the upstream never sent its late bytes")
            t.start()  # queued behind the busy connection (pool_max 1)
            time.sleep(0.2)
            got = b""
            while len(got) < 100000 or b"\r\n\r\n" not in got:
                d = a.recv(65536)
                if not d:
                    break
                got += d
            a.close()
            t.join(15)
            st, _, body = result.get("b", (0, {}, b""))
            if body == b"EVIL":
                evil += 1
            check(st == 200 and body == b"raw:/api/after", f"the next request after late bytes got {st} {body[:40]!r}")
        check(evil == 0, f"{evil} answers were an upstream's late bytes")
        print("ok   bytes an upstream sends after a complete response never answer the next request")
    finally:
        px.stop()
        raw.stop()
    # underscore_headers = reject
    raw = RawUpstream()
    px = proxy(tmp, {"server": f"127.0.0.1:{raw.port}", "underscore_headers": "reject"})
    try:
        got = raw_request(px.port, b"GET /x HTTP/1.1\r\nHost: x\r\nX_Y: 1\r\nConnection: close\r\n\r\n")
        check(got.startswith(b"HTTP/1.1 400"), f"underscore_headers = reject: {got[:60]!r}")
        print("ok   underscore_headers = reject: 400")
    finally:
        px.stop()
        raw.stop()

def status_of(port):
    st, _, body = get(port, "/_keel/status")
    check(st == 200, "status page")
    out = {}
    for line in body.decode().splitlines():
        k, _, v = line.partition(" ")
        if v.isdigit():
            out[k.split("{")[0]] = out.get(k.split("{")[0], 0) + int(v)
    return out

def test_failures(tmp):
    dead = free_port()
    px = proxy(tmp, {"server": f"127.0.0.1:{dead}"})
    try:
        t0 = time.monotonic()
        st, _, _ = get(px.port, "/")
        check(st == 502, f"upstream not listening: 502 (got {st})")
        check(time.monotonic() - t0 < 2, "502 fast")
        get(px.port, "/")
        _, _, body = get(px.port, "/_keel/status")
        text = body.decode()
        check('proxy_errors_502_total{upstream="u"} 2' in text and 'proxy_requests_total{upstream="u"} 2' in text,
              f"the proxy's counters on the status page: {text[-400:]}")
        _, _, body = get(px.port, "/_keel/status?format=prometheus")
        check('keel_proxy_errors_502_total{worker="0",upstream="u"} 2' in body.decode(),
              "and in the Prometheus format")
    finally:
        px.stop()
    print("ok   upstream not listening: 502")

    # Two groups on one status page: each family once, a sample per group (Prometheus text format).
    conf = os.path.join(tmp, "two.conf")
    with open(conf, "w") as f:
        f.write(f"[server]\nlisten = 127.0.0.1:0\nworkers = 1\n\n[upstream a]\nserver = 127.0.0.1:{dead}\n\n"
                f"[upstream b]\nserver = 127.0.0.1:{dead}\n\n[route /a/]\nupstream = a\n\n[route /b/]\nupstream = b\n\n"
                "[route /_keel/status]\nmatch = exact\nhandler = status\n")
    px = Proc([KEEL, "-c", conf])
    try:
        get(px.port, "/a/x"), get(px.port, "/b/x"), get(px.port, "/b/y")
        text = get(px.port, "/_keel/status?format=prometheus")[2].decode()
        check(text.count("# HELP keel_proxy_errors_502_total") == 1 and text.count("# TYPE keel_proxy_errors_502_total") == 1,
              "one HELP/TYPE per metric family across upstream groups")
        i = text.index("# TYPE keel_proxy_errors_502_total")
        block = text[i:].split("\n")[1:3]
        check(block == ['keel_proxy_errors_502_total{worker="0",upstream="a"} 1',
                        'keel_proxy_errors_502_total{worker="0",upstream="b"} 2'],
              f"the family's samples together, one per group: {block}")
    finally:
        check(px.stop() == 0, "the proxy exits 0 on SIGTERM")
    print("ok   status page with two upstream groups: one family, a sample per group")

    dead2 = free_port()
    px = proxy(tmp, {"server": [f"127.0.0.1:{dead}", f"127.0.0.1:{dead2}"], "fail_timeout_ms": 10000})
    try:
        codes = [get(px.port, "/")[0] for _ in range(6)]
        check(all(c in (502, 503) for c in codes), f"every upstream down: 502/503 ({codes})")
        t0 = time.monotonic()
        st, h, _ = get(px.port, "/")
        check(st == 503 and "retry-after" in h, f"both marked down: 503 with Retry-After at once (got {st})")
        check(time.monotonic() - t0 < 0.5, "503 fast")
    finally:
        px.stop()
    print("ok   every upstream down: 502, then 503 at once while they are marked down")

    raw = RawUpstream()
    px = proxy(tmp, {"server": [f"127.0.0.1:{dead}", f"127.0.0.1:{raw.port}"], "balance": "round_robin"})
    try:
        codes = [get(px.port, f"/r{i}")[0] for i in range(10)]
        check(codes == [200] * 10, f"GETs retried on the live upstream: {codes}")
        st, _, body = get(px.port, "/post", method="POST", body=b"abc")
        check(st == 200 and body == b"raw:/post", "a POST reaches the live upstream (the dead one is marked down)")
    finally:
        px.stop()
        raw.stop()
    print("ok   one of two upstreams down: GETs retried on the other, then it is skipped")

    raw = RawUpstream()
    px = proxy(tmp, {"server": f"localhost:{raw.port}"})
    try:
        codes = [get(px.port, "/named")[0] for _ in range(3)]
        check(codes == [200] * 3, f"an upstream by name (localhost), looked up off the loop: {codes}")
    finally:
        check(px.stop() == 0, "the proxy exits 0 on SIGTERM")
        raw.stop()
    px = proxy(tmp, {"server": "no-such-host.invalid:80"})
    try:
        st = get(px.port, "/")[0]
        check(st == 502, f"an upstream name that does not resolve: 502 (got {st})")
    finally:
        check(px.stop() == 0, "the proxy exits 0 on SIGTERM")
    print("ok   upstreams by name: localhost works, a name that does not resolve gives 502")

    a, b = RawUpstream(), RawUpstream()
    for mode in ("round_robin", "least_conn"):
        px = proxy(tmp, {"server": [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"], "balance": mode})
        try:
            na, nb = len(a.requests), len(b.requests)
            for i in range(20):
                check(get(px.port, f"/lb{i}")[0] == 200, "balanced request answered")
            da, db = len(a.requests) - na, len(b.requests) - nb
            check(da + db == 20 and da >= 5 and db >= 5, f"{mode}: both upstreams used ({da}/{db})")
        finally:
            px.stop()
        print(f"ok   {mode}: 20 requests split {da}/{db}")
    a.stop()
    b.stop()

def test_active_health(tmp):
    """Active checks GET health_path on every upstream: one answering 503 there gets no traffic."""
    good, sick = RawUpstream(), RawUpstream(health=503)
    px = proxy(tmp, {"server": [f"127.0.0.1:{good.port}", f"127.0.0.1:{sick.port}"], "health_path": "/health",
                     "health_interval_ms": 100})
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(t == "/health" for _, t, _ in sick.requests):
            time.sleep(0.05)
        time.sleep(0.1)
        n_sick = len([1 for _, t, _ in sick.requests if t != "/health"])
        codes = [get(px.port, f"/h{i}")[0] for i in range(20)]
        check(codes == [200] * 20, f"requests answered while one upstream is unhealthy: {codes}")
        got_sick = len([1 for _, t, _ in sick.requests if t != "/health"]) - n_sick
        got_good = len([1 for _, t, _ in good.requests if t.startswith("/h") and t != "/health"])
        check(got_sick == 0 and got_good == 20, f"the unhealthy upstream got none of 20 requests ({got_sick}/{got_good})")
        check(len([1 for _, t, _ in good.requests if t == "/health"]) >= 2, "checks repeat every interval")
        sick.health = 200  # it recovers: the next check brings it back
        time.sleep(0.4)
        for i in range(20):
            get(px.port, f"/back{i}")
        check(any(t.startswith("/back") for _, t, _ in sick.requests), "a recovered upstream gets traffic again")
    finally:
        check(px.stop() == 0, "the proxy exits 0 on SIGTERM")
        good.stop()
        sick.stop()
    print("ok   active health checks: an upstream answering 503 on /health is skipped, and back once it recovers")

def test_client_gone(tmp):
    """A client that resets its connection while its request waits on a stalled upstream: the upstream
    call is cut. (A client that only half-closes still gets its answer: HTTP allows a FIN after the
    request, and the upstream call stays bounded by response_timeout_ms.)"""
    raw = RawUpstream()
    px = proxy(tmp, {"server": f"127.0.0.1:{raw.port}", "response_timeout_ms": 20000})
    try:
        fds = px.fds()
        for _ in range(10):
            s = socket.create_connection(("127.0.0.1", px.port), timeout=5)
            s.sendall(b"GET /stall HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.05)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()  # a reset
        time.sleep(0.5)
        check(px.fds() <= fds + 2, f"clients gone: their upstream connections closed ({fds} -> {px.fds()})")
        st, _, body = get(px.port, "/after")
        check(st == 200 and body == b"raw:/after", "the proxy still serves")
    finally:
        check(px.stop() == 0, "the proxy exits 0 on SIGTERM")
        raw.stop()
    print("ok   clients that go away cancel their upstream requests (no fd left behind)")

def test_slow_client_timeouts(tmp):
    """response_timeout_ms bounds the upstream, not the client: a client that uploads or reads slowly
    (pauses longer than the timeout) still gets its whole answer."""
    up = Proc([TESTSRV, "--listen", "127.0.0.1:0"])
    px = proxy(tmp, {"server": f"127.0.0.1:{up.port}", "response_timeout_ms": 300})
    try:
        s = socket.create_connection(("127.0.0.1", px.port), timeout=10)
        body = os.urandom(200000)
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:100000])
        time.sleep(1.0)
        s.sendall(body[100000:])
        d = s.recv(65536)
        check(d.startswith(b"HTTP/1.1 200") and b"bytes 200000 " in d,
              f"an upload paused 1 s under a 300 ms response timeout completes: {d[:80]!r}")
        s.sendall(b"POST /duplex HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        f = s.makefile("rb")
        check(f.readline().startswith(b"HTTP/1.1 200"), "duplex answered")
        while f.readline() not in (b"\r\n", b""):
            pass
        first = f.readline()
        time.sleep(1.0)  # the reader stalls: the upstream has long sent everything
        f.read(int(first, 16) + 2)
        rest = read_chunked(f)
        check(int(first, 16) + len(rest) == len(body), "a reader paused 1 s still gets the whole body")
        s.close()
    finally:
        check(px.stop() == 0, "the proxy exits 0 on SIGTERM")
        up.stop()
    print("ok   a client slower than response_timeout_ms (uploading or reading) is not cut off")

def test():
    for exe in (KEEL, TESTSRV):
        if not os.access(exe, os.X_OK):
            fail(f"{exe} not built")
    tmp = tempfile.mkdtemp(prefix="keel-proxy-")
    try:
        test_semantics(tmp)
        test_hardening(tmp)
        test_failures(tmp)
        test_client_gone(tmp)
        test_active_health(tmp)
        test_slow_client_timeouts(tmp)
        test_bodies(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"proxy: {keeltest.passed} checks passed")

if __name__ == "__main__":
    main(test)
