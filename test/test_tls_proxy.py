#!/usr/bin/env python3
"""keel's proxy and HTTP client over TLS end to end: https:// upstreams
(plain -> TLS, TLS -> TLS, TLS -> plain), verification against a CA file or
the system store, the name checked (and tls_name), a client certificate
(mTLS to the upstream), session reuse across pooled connections, and each
failure the issue names -- an upstream with an expired, self-signed,
wrong-name or unknown-CA certificate, one that speaks plain HTTP, one that
refuses the client certificate, one that closes without close_notify in the
middle of a body -- answered 502 (or a closed connection once the head has
gone out) with a log line saying why, never a hang. nginx (Debian's) is a
peer both ways: `proxy_pass https://` to keel serve, and keel proxy in front
of nginx serving HTTPS.

The PKI is test_tls.py's (a root CA, leaves for localhost/127.0.0.1 and
b.example, a client CA and a client certificate), plus a self-signed
certificate and one from the same root that expired in 2020.

Upstreams (each started when a part first needs it, stopped by its PID):
  ok      keel serve --tls-cert ecdsa, --status
  once    keel -c: the same with requests_per_conn_max = 1 (a new connection per request)
  mtls    keel serve with --tls-client-ca clientca.pem
  self, expired, bex   keel serve with the self-signed, the expired and the b.example pair
  plain   keel serve without TLS
  echo    a TLS server here: /echo answers the request's headers, /cut sends half a body
          and closes without close_notify
  echo0   the same without TLS
Every wait has a deadline. Runs under the backend in KEEL_BACKEND.
Exit status: 0 pass, 1 fail, 77 skip (openssl missing; without nginx its two parts are skipped)."""
import http.client, json, os, re, shutil, socket, tempfile, time

import keeltest
from keeltest import KEEL, Proc, PyServer, Skip, Subtests, check, connect, eq, fail, free_port, main, sha
import test_tls  # first: it re-runs this test under /usr/bin/python3 if this Python has no ssl
from test_tls import Pki, openssl
import ssl

MIB = 1 << 20
FILES = {"hello.txt": b"hello through the proxy\n", "big.bin": os.urandom(5 * MIB + 3)}
ROOT = None
PKI = None
SUBDIRS = ("named", "mtls", "noverify", "retry")  # routes whose upstream serves ROOT/<name>/ too


def make_certs(d):
    """test_tls's PKI in d, plus self.pem (self-signed, localhost) and expired.pem (from the same
    root, valid in January 2020 only: openssl x509 takes no past date, openssl ca does)."""
    pki = Pki(d)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
            pki.p("self.key"), "-out", pki.p("self.pem"), "-days", 2, "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1")
    with open(pki.p("index.txt"), "w"):
        pass
    with open(pki.p("ca.cnf"), "w") as f:
        f.write("[ca]\ndefault_ca = d\n[d]\ndatabase = %s\nserial = %s\nnew_certs_dir = %s\ndefault_md = sha256\n"
                "policy = p\ncopy_extensions = copy\n[p]\ncommonName = supplied\n"
                % (pki.p("index.txt"), pki.p("serial"), d))
    with open(pki.p("serial"), "w") as f:
        f.write("1000\n")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
            pki.p("expired.key"), "-out", pki.p("expired.csr"), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1")
    openssl("ca", "-batch", "-config", pki.p("ca.cnf"), "-cert", pki.ca, "-keyfile", pki.p("ca.key"),
            "-startdate", "20200101000000Z", "-enddate", "20200201000000Z", "-in", pki.p("expired.csr"),
            "-out", pki.p("expired.pem"))
    return pki


# ---- Upstreams -------------------------------------------------------------------------------------

class Echo(PyServer):
    """HTTP/1.1 upstream in this process, over TLS when ctx is given. /echo: 200 with the
    request's headers as a JSON object (lowercase names); /cut: a head announcing 1 MB, 64 KiB
    of it, then the connection closed with no close_notify; anything else 404. Keep-alive."""

    def __init__(self, ctx=None):
        self.ctx = ctx
        super().__init__()

    def handle(self, conn):
        s = self.ctx.wrap_socket(conn, server_side=True) if self.ctx else conn
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                d = s.recv(65536)
                if not d:
                    return
                buf += d
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            hdrs = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
            if path == "/echo":
                body = json.dumps(hdrs).encode()
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                          % (len(body), body))
            elif path == "/cut":
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 65536)
                if self.ctx:
                    # The TCP end with no close_notify: close the descriptor under the SSL object
                    # (closing the SSLSocket would not send one either, but this says so).
                    os.close(s.detach())
                return
            else:
                s.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")


def serve_tls(name, pair, *extra):
    cert, key = PKI.pair(pair)
    return Proc([KEEL, "serve", "--listen", "127.0.0.1:0", "--workers", "1", "--tls-cert", cert, "--tls-key", key,
                 *extra, ROOT], name="upstream " + name)


def conf_file(text):
    path = os.path.join(os.path.dirname(ROOT), "c%d.conf" % time.monotonic_ns())
    with open(path, "w") as f:
        f.write(text)
    return path


def upstream_once():
    """keel -c over TLS closing every connection after one request."""
    cert, key = PKI.pair("ecdsa")
    return Proc([KEEL, "-c", conf_file(
        "[server]\nlisten = 127.0.0.1:0\nworkers = 1\nrequests_per_conn_max = 1\ntls_cert = %s\ntls_key = %s\n\n"
        "[route /]\nstatic = %s\n" % (cert, key, ROOT))], name="upstream once")


# ---- Clients ---------------------------------------------------------------------------------------

def get(port, path, tls=False, timeout=15):
    """GET path from 127.0.0.1:port (https with the test CA, SNI localhost): (status, body)."""
    if tls:
        c = ssl.create_default_context(cafile=PKI.ca)
        conn = http.client.HTTPSConnection("localhost", port, timeout=timeout, context=c)
        conn.sock = c.wrap_socket(connect(port, timeout), server_hostname="localhost")
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def metrics(port, tls=False):
    """/_keel/status as {line's name with labels: value}."""
    st, body = get(port, "/_keel/status", tls=tls)
    eq(st, 200, "GET /_keel/status")
    out = {}
    for line in body.decode().splitlines():
        if " " in line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = v
    return out


def upstream_counter(m, name, group="default"):
    key = '%s{upstream="%s"}' % (name, group)
    if key not in m:
        fail("no %s on the proxy's status page: %s" % (key, sorted(m)))
    return int(m[key])


def proxy(*upstreams, tls=False, ca=True, extra=()):
    """keel proxy --status to upstreams (URLs), --tls-ca the test CA unless told not to, listening
    for HTTPS with the ECDSA pair when tls."""
    args = [KEEL, "proxy", "--listen", "127.0.0.1:0", "--workers", "1", "--status", *extra]
    for u in upstreams:
        args += ["--upstream", u]
    if ca:
        args += ["--tls-ca", PKI.ca]
    if tls:
        cert, key = PKI.pair("ecdsa")
        args += ["--tls-cert", cert, "--tls-key", key]
    return Proc(args, name="keel proxy")


def new_lines(p, since):
    """What p printed after its first since lines, as one string."""
    return "\n".join(p.lines[since:])


def settle(p, pattern, since, timeout=5):
    """Wait until a line after the first since lines of p matches pattern; that text."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = new_lines(p, since)
        if re.search(pattern, text):
            return text
        time.sleep(0.02)
    fail("no line matching %r from %s within %d s; it printed:\n%s" % (pattern, p.name, timeout, new_lines(p, since)))


# ---- Parts -----------------------------------------------------------------------------------------

def t_plain_to_tls(U):
    p = proxy("https://127.0.0.1:%d" % U["ok"].port)
    for name, data in FILES.items():
        st, body = get(p.port, "/" + name)
        eq(st, 200, "GET /%s through the proxy" % name)
        eq(sha(body), sha(data), "GET /%s: the body, byte-exact" % name)
    st, _ = get(p.port, "/nothing-here")
    eq(st, 404, "a 404 from the upstream passes through")
    m = metrics(p.port)
    check(upstream_counter(m, "tls_handshakes_total") >= 1, "the proxy's upstream handshakes are counted")
    eq(upstream_counter(m, "tls_handshake_failed_total"), 0, "no upstream handshake failed")
    p.stop_ok("keel proxy")


def t_session_reuse(U):
    p = proxy("https://127.0.0.1:%d" % U["once"].port)
    N = 8
    for i in range(N):
        st, body = get(p.port, "/hello.txt")
        eq((st, body), (200, FILES["hello.txt"]), "request %d through an upstream closing each connection" % i)
    m = metrics(p.port)
    done, resumed = upstream_counter(m, "tls_handshakes_total"), upstream_counter(m, "tls_resumed_total")
    check(done >= N, "a handshake per request (%d for %d)" % (done, N))
    # Each connection's ticket is offered by the next: every one after the first resumes.
    check(resumed >= N - 1, "sessions reused across the pool's connections: %d of %d resumed" % (resumed, done))
    p.stop_ok("keel proxy")


def t_tls_to_tls(U):
    p = proxy("https://127.0.0.1:%d" % U["echo"].port, tls=True)
    st, body = get(p.port, "/echo", tls=True)
    eq(st, 200, "GET /echo over TLS to an https:// upstream")
    seen = json.loads(body)
    eq(seen.get("x-forwarded-proto"), "https", "X-Forwarded-Proto the upstream saw")
    p.stop_ok("keel proxy")
    p = proxy("https://127.0.0.1:%d" % U["ok"].port, tls=True)
    st, body = get(p.port, "/big.bin", tls=True)
    eq((st, sha(body)), (200, sha(FILES["big.bin"])), "5 MiB+3 TLS -> TLS, byte-exact")
    p.stop_ok("keel proxy")


def t_tls_to_plain(U):
    for up in ("127.0.0.1:%d" % U["echo0"].port, "http://127.0.0.1:%d" % U["echo0"].port):
        p = proxy(up, tls=True, ca=False)
        st, body = get(p.port, "/echo", tls=True)
        eq(st, 200, "GET /echo over TLS to %s" % up)
        eq(json.loads(body).get("x-forwarded-proto"), "https", "X-Forwarded-Proto the plain upstream saw")
        p.stop_ok("keel proxy")


def bad_cert_sites(U):
    """keel -c with one group per bad upstream, each routed at /NAME/."""
    groups = [
        ("self", "https://127.0.0.1:%d" % U["self"].port, "tls_ca = %s" % PKI.ca),
        ("expired", "https://127.0.0.1:%d" % U["expired"].port, "tls_ca = %s" % PKI.ca),
        ("wrongname", "https://127.0.0.1:%d" % U["bex"].port, "tls_ca = %s" % PKI.ca),
        ("unknownca", "https://127.0.0.1:%d" % U["ok"].port, ""),  # the system store has not heard of it
        ("plainup", "https://127.0.0.1:%d" % U["plain"].port, "tls_ca = %s" % PKI.ca),
        ("nocert", "https://127.0.0.1:%d" % U["mtls"].port, "tls_ca = %s" % PKI.ca),
        ("named", "https://127.0.0.1:%d" % U["bex"].port, "tls_ca = %s\ntls_name = b.example" % PKI.ca),
        ("mtls", "https://127.0.0.1:%d" % U["mtls"].port, "tls_ca = %s\ntls_cert = %s\ntls_key = %s"
         % ((PKI.ca,) + PKI.pair("client"))),
        ("noverify", "https://127.0.0.1:%d" % U["self"].port, "tls_verify = off"),
        ("retry", "https://127.0.0.1:%d\nserver = https://127.0.0.1:%d" % (U["expired"].port, U["ok"].port),
         "tls_ca = %s" % PKI.ca),
    ]
    text = "[server]\nlisten = 127.0.0.1:0\nworkers = 1\n\n"
    for name, server, keys in groups:
        text += "[upstream %s]\nserver = %s\n%s\n\n[route /%s/]\nupstream = %s\n\n" % (name, server, keys, name, name)
    text += "[route /_keel/status]\nmatch = exact\nhandler = status\n"
    return Proc([KEEL, "-c", conf_file(text)], name="keel -c (bad upstreams)")


# (route, what the TLS layer's line says, what the proxy's line says)
BAD = [
    ("self", r"certificate did not verify: self[- ]signed certificate", "TLS certificate did not verify"),
    ("expired", r"certificate did not verify: certificate has expired", "TLS certificate did not verify"),
    ("wrongname", r"certificate did not verify: IP address mismatch", "TLS certificate did not verify"),
    ("unknownca", r"certificate did not verify: unable to get local issuer certificate", "TLS certificate did not verify"),
    ("plainup", r"tls: 127\.0\.0\.1: the handshake failed: wrong version number", "TLS handshake failed"),
    # The upstream's alert, or its reset when it closes with our request unread (a race the TCP stack
    # decides): either is said.
    ("nocert", r"tls: 127\.0\.0\.1: after the handshake: .*certificate required|Connection reset by peer",
     r"(TLS record failed|Connection reset by peer)"),
]


def t_bad_upstreams(U):
    p = bad_cert_sites(U)
    for route, tls_says, proxy_says in BAD:
        since = len(p.lines)
        t0 = time.monotonic()
        st, body = get(p.port, "/%s/hello.txt" % route)
        secs = time.monotonic() - t0
        eq(st, 502, "/%s/: the status" % route)
        check(secs < 5, "/%s/: answered in %.1f s, not after a timeout" % (route, secs))
        text = settle(p, r"proxy: upstream 127\.0\.0\.1:\d+: %s: answered 502"
                      % (proxy_says if proxy_says.startswith("(") else re.escape(proxy_says)), since)
        check(re.search(tls_says, text), "/%s/: the log says why (%r):\n%s" % (route, tls_says, text))
        print("  /%s/: 502 in %.2f s; %s" % (route, secs, text.strip().splitlines()[0]))
    for route in ("named", "mtls", "noverify"):
        st, body = get(p.port, "/%s/hello.txt" % route)
        eq((st, body), (200, FILES["hello.txt"]), "/%s/: the request goes through" % route)
    # A group of an expired server and a good one: round-robin sends one of two requests to the expired
    # one first; it is marked down and the request goes to the other, never sent twice.
    since = len(p.lines)
    for i in range(2):
        st, body = get(p.port, "/retry/hello.txt")
        eq((st, body), (200, FILES["hello.txt"]), "/retry/ request %d: answered by the good server" % i)
    settle(p, r"proxy: upstream 127\.0\.0\.1:%d: TLS certificate did not verify: trying another" % U["expired"].port,
           since)
    m = metrics(p.port)
    check(upstream_counter(m, "tls_handshake_failed_total", "expired") >= 1, "the expired upstream's failure counted")
    check(upstream_counter(m, "tls_handshakes_total", "mtls") >= 1, "the mTLS upstream's handshake counted")
    p.stop_ok("keel -c")


def t_cut_body(U):
    p = proxy("https://127.0.0.1:%d" % U["echo"].port)
    s = connect(p.port, 10)
    try:
        s.sendall(b"GET /cut HTTP/1.1\r\nHost: x\r\n\r\n")
        got, t0 = b"", time.monotonic()
        s.settimeout(10)
        while True:
            try:
                d = s.recv(65536)
            except socket.timeout:
                fail("the client's connection was left open 10 s after the upstream's end (%d bytes in)" % len(got))
            if not d:
                break
            got += d
        head, _, body = got.partition(b"\r\n\r\n")
        check(head.startswith(b"HTTP/1.1 200"), "the head went out first: %r" % head[:40])
        check(0 < len(body) < 1000000, "a part of the body, then the close (%d bytes)" % len(body))
        print("  closed %.2f s after the request, %d of 1000000 bytes passed on" % (time.monotonic() - t0, len(body)))
    finally:
        s.close()
    st, body = get(p.port, "/echo")
    eq(st, 200, "the next request through the same proxy")
    p.stop_ok("keel proxy")


# ---- nginx -----------------------------------------------------------------------------------------

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)


def nginx(conf_http):
    """nginx in the foreground on a directory of its own, with conf_http inside http {}: its Proc,
    once its port answers."""
    if not NGINX:
        raise Skip("nginx is not installed (apt-get install nginx-light)")
    d = tempfile.mkdtemp(prefix="nginx", dir=os.path.dirname(ROOT))
    port = free_port()
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write("daemon off;\nmaster_process off;\nworker_processes 1;\npid %s/nginx.pid;\nerror_log stderr warn;\n"
                "events { worker_connections 256; }\nhttp {\naccess_log off;\nclient_body_temp_path %s/b;\n"
                "proxy_temp_path %s/p;\nfastcgi_temp_path %s/f;\nuwsgi_temp_path %s/u;\nscgi_temp_path %s/s;\n%s\n}\n"
                % (d, d, d, d, d, d, conf_http.replace("PORT", str(port))))
    p = Proc([NGINX, "-p", d, "-c", os.path.join(d, "nginx.conf")], name="nginx", listen=None)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            break
        except OSError:
            if time.monotonic() > deadline or not p.alive():
                fail("nginx did not start listening on %d:\n%s" % (port, p.shown()))
            time.sleep(0.05)
    p.port = port
    return p


def t_nginx_to_keel(U):
    ng = nginx("server {\nlisten 127.0.0.1:PORT;\nlocation / {\nproxy_pass https://127.0.0.1:%d;\n"
               "proxy_ssl_verify on;\nproxy_ssl_trusted_certificate %s;\nproxy_ssl_name localhost;\n"
               "proxy_ssl_server_name on;\nproxy_http_version 1.1;\nproxy_set_header Connection \"\";\n}\n}\n"
               % (U["ok"].port, PKI.ca))
    try:
        for name, data in FILES.items():
            st, body = get(ng.port, "/" + name)
            eq((st, sha(body)), (200, sha(data)), "nginx proxy_pass https:// to keel serve: /%s" % name)
    finally:
        ng.stop()


def t_keel_to_nginx(U):
    cert, key = PKI.pair("ecdsa")
    ng = nginx("server {\nlisten 127.0.0.1:PORT ssl;\nssl_certificate %s;\nssl_certificate_key %s;\nroot %s;\n}\n"
               % (cert, key, ROOT))
    try:
        p = proxy("https://127.0.0.1:%d" % ng.port, tls=True)
        for name, data in FILES.items():
            st, body = get(p.port, "/" + name, tls=True)
            eq((st, sha(body)), (200, sha(data)), "keel proxy (TLS) to nginx over TLS: /%s" % name)
        check(upstream_counter(metrics(p.port, tls=True), "tls_handshakes_total") >= 1, "the handshake with nginx counted")
        p.stop_ok("keel proxy")
    finally:
        ng.stop()


# ---- The whole -------------------------------------------------------------------------------------

def test():
    global ROOT, PKI
    if not test_tls.OPENSSL:
        raise Skip("openssl is not installed")
    tmp = tempfile.mkdtemp(prefix="keel-tls-proxy")
    try:
        t0 = time.monotonic()
        PKI = test_tls.PKI = make_certs(tmp)
        print("certificates made in %.1f s" % (time.monotonic() - t0), flush=True)
        ROOT = os.path.join(tmp, "www")
        for sub in ("",) + SUBDIRS:
            os.makedirs(os.path.join(ROOT, sub), exist_ok=True)
            for n, data in FILES.items():
                with open(os.path.join(ROOT, sub, n), "wb") as f:
                    f.write(data)
        return run_parts()
    finally:
        keeltest.kill_all()
        shutil.rmtree(tmp, ignore_errors=True)


def run_parts():
    sub = Subtests()

    def echo_ctx():
        c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        c.load_cert_chain(*PKI.pair("ecdsa"))
        return c

    spec = {
        "ok": lambda: serve_tls("ok", "ecdsa", "--status"),
        "once": upstream_once,
        "mtls": lambda: serve_tls("mtls", "ecdsa", "--tls-client-ca", PKI.p("clientca.pem")),
        "self": lambda: serve_tls("self", "self"),
        "expired": lambda: serve_tls("expired", "expired"),
        "bex": lambda: serve_tls("bex", "bex"),
        "plain": lambda: Proc([KEEL, "serve", "--listen", "127.0.0.1:0", "--workers", "1", ROOT], name="upstream plain"),
        "echo": lambda: Echo(echo_ctx()),
        "echo0": lambda: Echo(),
    }

    class Ups(dict):
        def __missing__(self, key):
            self[key] = spec[key]()
            return self[key]

    U = Ups()
    plan = [
        ("plain -> TLS: files byte-exact through an https:// upstream", t_plain_to_tls),
        ("session reuse across the pool's connections", t_session_reuse),
        ("TLS -> TLS: X-Forwarded-Proto https, 5 MiB+3 byte-exact", t_tls_to_tls),
        ("TLS -> plain: X-Forwarded-Proto https", t_tls_to_plain),
        ("bad upstreams: self-signed, expired, wrong name, unknown CA, plain, no client certificate: 502 and why; "
         "tls_name, mTLS, tls_verify off", t_bad_upstreams),
        ("an upstream closes without close_notify mid-body: the client's connection is closed", t_cut_body),
        ("nginx proxy_pass https:// to keel serve", t_nginx_to_keel),
        ("keel proxy in front of nginx over TLS", t_keel_to_nginx),
    ]
    for name, fn in plan:
        sub.run(name, lambda: fn(U))
    for key, u in list(U.items()):
        if isinstance(u, Proc):
            sub.run("stop: upstream %s exits 0 on SIGTERM" % key, lambda: u.stop_ok("upstream " + key), always=True)
        else:
            u.stop()
    return sub.status()


if __name__ == "__main__":
    main(test)
