#!/usr/bin/env python3
"""keel -c FILE, keel -t -c FILE and keel proxy, end to end.

Good files: static routes with the longest prefix winning, the status
handler (exact match), upstream routes, limits that reach the server,
server_name, an access log and static roots relative to the file. Bad
files: every kind of mistake must exit 1 with "FILE:LINE: message" naming
the right line. keel proxy's flag errors exit 2. TLS: a file with
tls_cert/tls_key pairs serves HTTPS (curl --cacert, SNI picking the pair),
keel proxy --tls-cert too; -t refuses keys that do not match, missing files,
unpaired lines, old protocols and expired certificates at the right line,
and warns about one that expires soon (certificates made with the openssl
command in a temporary directory).

Assertions marked PROXY go through keel's reverse proxy to a real upstream
(build/test/http_testsrv or keel serve); a failing one is recorded and
listed at the end so the rest still runs. Runs under the backend in
KEEL_BACKEND."""
import os, shutil, subprocess, sys, tempfile, time

from keeltest import CURL, KEEL, TESTSRV, Proc, Skip, check, curl, fail, main, request, run_keel

proxy_passed = []   # PROXY assertions that held against the real proxy,
proxy_failed = []   # ... and the ones that did not (reported at the end: the rest still runs)


def proxy_request(port, path, method="GET", body=None):
    """A request through keel's proxy: a broken answer is a result, not an exception."""
    try:
        return request(port, path, method, body)
    except Exception as e:  # any failure (reset, short body, timeout) is the assertion's to report
        return (None, {}, f"{type(e).__name__}: {e}".encode())


def proxy_check(label, gots, cond, msg):
    """A PROXY assertion over responses gots = [(status, headers, body)] that
    went through keel's proxy: a failure is recorded and reported at the end."""
    if cond():
        proxy_passed.append(label)
    else:
        print(f"FAIL PROXY {label}: {msg}")
        proxy_failed.append(f"{label}: {msg}")


def show(body):
    return repr(body) if body is None or len(body) <= 80 else f"{len(body)} bytes {body[:40]!r}..."


def proxy_expect(label, got, want_status, want_body):
    status, _, body = got
    proxy_check(label, [got], lambda: status == want_status and (want_body is None or body == want_body),
                f"got {status} {show(body)}, want {want_status} {show(want_body)}")


def stopped(label, proc):
    """Stop proc; exit status 0 wanted (a crash after a PROXY failure counts as one more)."""
    rc = proc.stop()
    if rc == 0:
        check("stopping" in proc.text(), f"{label}: no graceful stop message")
    else:
        msg = f"{label}: exit {rc} after SIGTERM: {proc.text()[-500:]}"
        if proxy_failed:
            print("FAIL PROXY", msg)
            proxy_failed.append(msg)
        else:
            fail(msg)


def keel_run(*args):
    return run_keel(*args, timeout=20)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


# ---- Bad files -------------------------------------------------------------------------------

def bad_files(tmp):
    www = os.path.join(tmp, "www")
    afile = os.path.join(www, "a.txt")
    S = "[server]\nlisten = 127.0.0.1:8080\n"  # lines 1-2
    R = "[route /]\nstatic = " + www + "\n"
    # (name, text, line or None for "no line applies", a piece of the message)
    cases = [
        ("unknown section", S + R + "[bogus]\nx = 1\n", 5, "unknown section [bogus]"),
        ("unknown section with a name", S + R + "[servers main]\n", 5, "unknown section"),
        ("unknown key", S + "lisen = 1\n" + R, 3, "unknown key 'lisen'"),
        ("unknown key in a route", S + R + "statc = x\n", 5, "unknown key 'statc'"),
        ("unknown key in an upstream", S + R + "[upstream u]\nserver = 127.0.0.1:1\nbalanse = x\n", 7,
         "unknown key 'balanse'"),
        ("bad integer", S + "conns_max = 12x\n" + R, 3, "conns_max"),
        ("negative integer", S + "workers = -1\n" + R, 3, "workers"),
        ("bad size suffix", S + "body_max = 10q\n" + R, 3, "body_max"),
        ("out of range", S + "conns_max = 0\n" + R, 3, "out of range"),
        ("out of range, huge", S + "pipeline_max = 99999999999999999999999\n" + R, 3, "out of range"),
        ("out of range, size", S + "conn_out_max = 2g\n" + R, 3, "out of range"),
        ("out of range, upstream", S + R + "[upstream u]\nserver = 127.0.0.1:1\npool_max = 0\n", 7,
         "pool_max"),
        ("bad listen address", "[server]\nlisten = localhost:8080\n" + R, 2, "listen"),
        ("listen without a port", "[server]\nlisten = 127.0.0.1\n" + R, 2, "listen"),
        ("http2 not on or off", "[server]\nlisten = 127.0.0.1:1\nhttp2 = yes\n" + R, 3, "http2: 'yes' is not on or off"),
        ("h2_streams_max out of range", "[server]\nlisten = 127.0.0.1:1\nh2_streams_max = 0\n" + R, 3,
         "h2_streams_max"),
        ("bad upstream address", S + R + "[upstream u]\nserver = 127.0.0.1:1\nserver = example.com\n", 7,
         "bad address 'example.com'"),
        ("upstream port 0", S + R + "[upstream u]\nserver = 127.0.0.1:0\n", 6, "server"),
        ("route with no target", S + "[route /x/]\nmatch = prefix\n" + R, 3, "no target"),
        ("empty route section", S + R + "[route /empty]\n", 5, "no target"),
        ("route with two targets", S + "[route /x/]\nstatic = " + www + "\nhandler = status\n", 5,
         "already has a target"),
        ("unknown upstream group", S + R + "[upstream api]\nserver = 127.0.0.1:1\n[route /api/]\nupstream = apx\n",
         8, "no [upstream apx]"),
        ("upstream group with no server", S + R + "[upstream api]\nbalance = least_conn\n[route /api/]\nupstream = api\n",
         5, "no server"),
        ("missing static root", S + "[route /]\nstatic = " + os.path.join(tmp, "nonexistent") + "\n", 4,
         "No such file or directory"),
        ("static root is a file", S + "[route /]\nstatic = " + afile + "\n", 4, "Not a directory"),
        ("relative static root that does not exist", S + "[route /]\nstatic = nope\n", 4,
         os.path.join(tmp, "nope")),
        ("duplicate key", S + "workers = 1\nworkers = 2\n" + R, 4, "given twice"),
        ("the same listen address twice", S + "listen = 127.0.0.1:8080\n" + R, 3, "already on line 2"),
        ("ipv6only on IPv4", S + "listen = 127.0.0.1:1 ipv6only\n" + R, 3, "for an IPv6 address only"),
        ("a mode on TCP", S + "listen = [::1]:1 mode=0600\n" + R, 3, "for a Unix socket's path only"),
        ("a mode on an abstract socket", S + "listen = unix:@keel mode=0600\n" + R, 3,
         "for a Unix socket's path only"),
        ("a bad mode", S + "listen = unix:/tmp/k.sock mode=0800\n" + R, 3, "octal, 1 to 0777"),
        ("an unknown owner", S + "listen = unix:/tmp/k.sock owner=no-such-user-here\n" + R, 3, "no such user"),
        ("an unknown group", S + "listen = unix:/tmp/k.sock group=no-such-group-here\n" + R, 3,
         "no such group"),
        ("an unknown listen option", S + "listen = unix:/tmp/k.sock backlog=5\n" + R, 3, "unknown option"),
        ("a relative Unix socket path", S + "listen = unix:k.sock\n" + R, 3, "unix:/PATH"),
        ("a bad real_ip_from entry", S + "real_ip_from = 10.0.0.0/8, 10.0.0.0/33\n" + R, 3,
         "'10.0.0.0/33' is not an address"),
        ("real_ip_header without real_ip_from", S + "real_ip_header = X-Forwarded-For\n" + R, 1,
         "needs real_ip_from"),
        ("a bad real_ip_header", S + "real_ip_header = X-Real-IP\n" + R, 3, "not X-Forwarded-For"),
        ("17 listen addresses", S + "".join("listen = 127.0.0.1:%d\n" % (9000 + i) for i in range(16)) + R,
         18, "more than 16 addresses"),
        ("duplicate section", S + R + "[server]\n", 5, "second [server]"),
        ("duplicate route", S + R + "[route /]\nhandler = status\n", 5, "second [route /]"),
        ("duplicate upstream", S + R + "[upstream a]\nserver = 127.0.0.1:1\n[upstream a]\nserver = 127.0.0.1:2\n", 7,
         "second [upstream a]"),
        ("duplicate server", S + R + "[upstream a]\nserver = 127.0.0.1:1\nserver = 127.0.0.1:1\n", 7,
         "already in"),
        ("bad balance", S + R + "[upstream a]\nserver = 127.0.0.1:1\nbalance = random\n", 7, "balance"),
        ("unknown handler", S + "[route /s]\nhandler = stats\n", 4, "unknown handler"),
        ("bad match", S + R + "match = regex\n", 5, "match"),
        ("route path without /", S + "[route api]\nstatic = " + www + "\n", 3, "not a path"),
        ("upstream name with a space", S + R + "[upstream a b]\n", 5, "not a name"),
        ("key outside any section", "listen = 127.0.0.1:1\n" + S + R, 1, "outside any section"),
        ("syntax error", S + "this is not a key\n" + R, 3, "expected"),
        ("syntax error before a bad value", S + "junk\nconns_max = 0\n" + R, 3, "expected"),
        ("header without ]", S + "[route /x\n" + R, 3, "closing ']'"),
        ("text after ]", S + "[route /x] static\n" + R, 3, "after ']'"),
        ("empty key", S + "= 1\n" + R, 3, "key is missing"),
        ("line too long", S + "server_name = " + "x" * 300 + "\n" + R, 3, "line too long"),
        ("indented continuation is not a value", S + "server_name = a\n   b\n" + R, 4, "expected"),
        ("no listen", "[server]\nworkers = 1\n" + R, 1, "no listen"),
        ("no [server]", R, None, "no [server]"),
        ("no route", S, None, "no [route"),
        ("access log in a missing directory", S + "access_log = /nonexistent/dir/log\n" + R, 3, "access_log"),
    ]
    for name, text, line, piece in cases:
        path = write(os.path.join(tmp, "bad.conf"), text)
        r = keel_run("-t", "-c", path)
        check(r.returncode == 1, f"{name}: exit {r.returncode}, want 1 (stderr {r.stderr!r})")
        want = f"{path}:{line}: " if line else f"keel: {path}: "
        check(r.stderr.startswith(want), f"{name}: stderr {r.stderr!r} does not start with {want!r}")
        check(piece in r.stderr, f"{name}: stderr {r.stderr!r} lacks {piece!r}")
        check(r.stderr.count("\n") == 1, f"{name}: one line of error wanted, got {r.stderr!r}")
        check("ok" not in r.stdout, f"{name}: stdout says ok")
    print(f"bad files: {len(cases)} kinds, each exit 1 with FILE:LINE: message: ok")

    # Running (not just checking) a bad file fails the same way, without starting.
    path = write(os.path.join(tmp, "bad.conf"), "[server]\nlisten = 127.0.0.1:0\nconns_max = x\n" + R)
    r = keel_run("-c", path)
    check(r.returncode == 1 and r.stderr.startswith(f"{path}:3: "), f"keel -c bad file: {r.returncode} {r.stderr!r}")
    check("listening" not in r.stderr, "keel -c bad file started anyway")

    # A missing file, a directory.
    missing = os.path.join(tmp, "missing.conf")
    r = keel_run("-t", "-c", missing)
    check(r.returncode == 1 and f"{missing}: No such file or directory" in r.stderr, f"missing file: {r.stderr!r}")
    r = keel_run("-t", "-c", tmp)
    check(r.returncode == 1 and tmp in r.stderr, f"a directory as the file: {r.returncode} {r.stderr!r}")
    print("missing file, a directory: exit 1 naming the file: ok")

    # Usage errors: exit 2.
    for args in [["-t"], ["-c"], ["-c", path, "extra"], ["--bogus"], ["-x", "-c", path]]:
        r = keel_run(*args)
        check(r.returncode == 2 and r.stderr.strip(), f"keel {' '.join(args)}: exit {r.returncode} {r.stderr!r}")
    print("-c/-t usage errors exit 2: ok")


# ---- Good files ------------------------------------------------------------------------------

def good_check(tmp):
    www = os.path.join(tmp, "www")
    path = write(os.path.join(tmp, "good.conf"), f"""
; every kind of section, comments, indentation and size suffixes
# a hash comment too
[server]
    listen = [::1]:8080          ; an IPv6 address parses (not bound by -t)
    workers = 2
    body_max = 1m
    body_stream_max = 0
    conn_out_max = 64K
    head_max = 16k
    header_timeout_ms = 5000
    queue_delay_max_us = 0
    inflight_max = 0
    http2 = on
    h2_streams_max = 50
    server_name =
    access_log =

[upstream api]
server = 127.0.0.1:9001
server = [::1]:9002
balance = least_conn
fail_timeout_ms = 0
health_path = /health
health_interval_ms = 1000
via =

[upstream unused]
server = 127.0.0.1:9003

[route /]
static = {www}
[route /api/]
upstream = api
[route /_keel/status]
match = exact
handler = status
""")
    r = keel_run("-t", "-c", path)
    check(r.returncode == 0, f"-t on a good file: exit {r.returncode}: {r.stderr!r}")
    check(r.stdout == f"keel: {path}: ok\n", f"-t stdout: {r.stdout!r}")
    # keel.conf.example itself checks (it serves the repository's www/). Found
    # from the cwd (test/run.sh runs in the repository) or from build/test/.
    for example in ["keel.conf.example",
                    os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), "..", "..", "keel.conf.example")]:
        if os.path.exists(example):
            r = keel_run("-t", "-c", example)
            check(r.returncode == 0, f"keel.conf.example: exit {r.returncode}: {r.stderr!r}")
            break
    print("-t on good files (and keel.conf.example): ok")


def good_run(tmp):
    # Three static roots: the longest prefix must win.
    roots = {}
    for name, files in [("root1", {"a.txt": "root1 a", "deep/x.txt": "root1 x", "prefix/p.txt": "static p"}),
                        ("root2", {"deep/x.txt": "root2 x", "deep/more/y.txt": "root2 y"}),
                        ("root3", {"deep/more/y.txt": "root3 y"})]:
        roots[name] = os.path.join(tmp, "site", name)
        for rel, text in files.items():
            os.makedirs(os.path.dirname(os.path.join(roots[name], rel)), exist_ok=True)
            write(os.path.join(roots[name], rel), text)
    up = Proc([TESTSRV, "--listen", "127.0.0.1:0"])
    down = Proc([TESTSRV, "--listen", "127.0.0.1:0"])
    down_port = down.port
    down.stop()  # a port nothing listens on any more
    conf = write(os.path.join(tmp, "site", "site.conf"), f"""[server]
listen = 127.0.0.1:0
workers = 1
body_max = 1k
server_name = keel-test
access_log = access.log     ; relative: next to this file

[upstream api]
server = 127.0.0.1:{up.port}

[upstream dead]
server = 127.0.0.1:{down_port}
connect_timeout_ms = 2000

[route /]
static = root1              ; relative: next to this file
[route /deep/]
static = root2
[route /deep/more/]
static = root3
[route /_keel/status]
match = exact
handler = status
[route /prefix/]
upstream = api
[route /hello]
match = exact
upstream = api
[route /echo]
match = exact
upstream = api
[route /dead/]
upstream = dead
""")
    # Run from / so that relative paths can only work relative to the file.
    srv = Proc([KEEL, "-c", conf], cwd="/")
    try:
        p = srv.port
        check("1 worker" in srv.text(), "the listening line")
        for path, want in [("/a.txt", b"root1 a"), ("/deep/x.txt", b"root2 x"), ("/deep/more/y.txt", b"root3 y")]:
            st, h, body = request(p, path)
            check(st == 200 and body == want, f"GET {path}: {st} {body!r}, want {want!r}")
            check(h.get("server") == "keel-test", f"server_name: {h.get('server')!r}")
        st, _, _ = request(p, "/deep/a.txt")
        check(st == 404, f"/deep/a.txt must come from root2 (404), got {st}")
        print("static routes, longest prefix wins, roots relative to the file, server_name: ok")

        st, h, body = request(p, "/_keel/status")
        check(st == 200 and b"requests_total" in body and body.startswith(b"worker 0"), f"status: {st} {body!r}")
        st, _, body = request(p, "/_keel/status/x")
        check(st == 404, f"an exact route must not match /_keel/status/x: {st}")
        print("handler = status with match = exact: ok")

        st, _, body = request(p, "/a.txt", method="POST", body=b"x" * 2000)
        check(st == 413, f"body_max = 1k: a 2000-byte body got {st}")
        print("limits reach the server (body_max = 1k -> 413): ok")

        deadline = time.monotonic() + 5
        log = os.path.join(tmp, "site", "access.log")
        while time.monotonic() < deadline and not (os.path.exists(log) and "GET /a.txt" in open(log).read()):
            time.sleep(0.05)
        check(os.path.exists(log) and "GET /a.txt" in open(log).read(), "access.log (relative to the file) has no line")
        print("access_log relative to the file: ok")

        # Upstream routes. /prefix/p.txt exists under root1: the longer upstream
        # prefix must take it.
        got = proxy_request(p, "/prefix/p.txt?q=1")
        check(got[2] != b"static p", "GET /prefix/p.txt was served by the static route, not the upstream one")
        st, _, body = proxy_request(p, "/dead/x")
        check(st in (502, 503), f"an upstream that is down: {st} {body!r}")
        print("upstream routes reach the proxy, not the static route below them; a dead upstream -> 502/503: ok")
        proxy_expect("config: GET /prefix/p.txt?q=1 -> the upstream's echo of the path", got, 200, b"/prefix/p.txt")
        proxy_expect("config: GET /hello", proxy_request(p, "/hello"), 200, b"Hello, World!")
        data = bytes(range(256)) * 3
        proxy_expect("config: POST /echo 768 bytes, echoed", proxy_request(p, "/echo", "POST", data), 200, data)
        big = os.urandom(300000)  # over body_max = 1k: a streamed route is bounded by body_stream_max only
        proxy_expect("config: POST /echo 300 kB (streamed past body_max), echoed",
                     proxy_request(p, "/echo", "POST", big), 200, big)
    finally:
        stopped("keel -c", srv)
        up.stop()
    print("keel -c: SIGTERM -> graceful stop: done")


def proxy_cmd(tmp):
    up = Proc([TESTSRV, "--listen", "127.0.0.1:0"])
    px = Proc([KEEL, "proxy", "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{up.port}", "--workers", "1",
               "--status"])
    try:
        st, _, body = request(px.port, "/_keel/status")
        check(st == 200 and b"requests_total" in body, f"keel proxy --status: {st} {body!r}")
        got = proxy_request(px.port, "/hello")
        check(got[0] is not None and got[0] != 404, f"keel proxy GET /hello did not reach the proxy: {got}")
        print("keel proxy --status; / reaches the proxy: ok")
        proxy_expect("keel proxy: GET /hello", got, 200, b"Hello, World!")
        proxy_expect("keel proxy: GET /prefix/a/b", proxy_request(px.port, "/prefix/a/b"), 200, b"/prefix/a/b")
    finally:
        stopped("keel proxy", px)
        up.stop()

    # Two upstreams (keel serve, each its own file), both balancing modes.
    ups = []
    for who in "AB":
        d = os.path.join(tmp, "up" + who)
        os.makedirs(d)
        write(os.path.join(d, "who.txt"), who)
        ups.append(Proc([KEEL, "serve", "--listen", "127.0.0.1:0", "--workers", "1", d]))
    try:
        for balance in ["round_robin", "least_conn"]:
            px = Proc([KEEL, "proxy", "--listen", "127.0.0.1:0", "--workers", "2", "--balance", balance,
                       *sum([["--upstream", f"127.0.0.1:{u.port}"] for u in ups], [])])
            try:
                check("2 workers" in px.text(), "keel proxy --workers 2")
                gots = [proxy_request(px.port, "/who.txt") for _ in range(8)]
                bodies = set(g[2] for g in gots)
                proxy_check(f"keel proxy --balance {balance}: 8 GETs answered by the upstreams", gots,
                            lambda: all(g[0] == 200 for g in gots) and bodies <= {b"A", b"B"},
                            f"{[(g[0], g[2]) for g in gots]}")
                if balance == "round_robin":
                    proxy_check("keel proxy --balance round_robin: both upstreams used", gots,
                                lambda: bodies == {b"A", b"B"}, f"only {bodies}")
            finally:
                stopped(f"keel proxy --balance {balance}", px)
    finally:
        for u in ups:
            u.stop()
    print("keel proxy: two upstreams, round_robin and least_conn: done")


def proxy_flags():
    for args in [[], ["--upstream", "x"], ["--upstream", "127.0.0.1:0"], ["--upstream", "local host:80"],
                 ["--upstream", "127.0.0.1:1", "--balance", "random"], ["--upstream", "127.0.0.1:1", "--workers", "0"],
                 ["--upstream", "127.0.0.1:1", "--listen", "nope"], ["--upstream", "127.0.0.1:1", "extra"],
                 ["--bogus"], ["--upstream"]]:
        r = keel_run("proxy", *args)
        check(r.returncode == 2, f"keel proxy {' '.join(args)}: exit {r.returncode}, want 2")
        check(r.stderr.strip(), f"keel proxy {' '.join(args)}: no message")
    r = keel_run("proxy", "--help")
    check(r.returncode == 0 and "--upstream" in r.stdout, "keel proxy --help")
    r = keel_run("--help")
    check(r.returncode == 0 and "proxy" in r.stdout and "-c FILE" in r.stdout and "-t -c FILE" in r.stdout,
          "keel --help lists proxy and -c/-t")
    print("keel proxy flag errors -> 2, --help: ok")


# ---- TLS -------------------------------------------------------------------------------------

def openssl(*args, cwd):
    r = subprocess.run(["openssl", *args], cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=60)
    check(r.returncode == 0, f"openssl {' '.join(args)}: {r.stderr}")


def self_signed(d, name, cn, days, san):
    """name.pem and name.key in d: an ECDSA P-256 certificate for cn, valid for days."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
            name + ".key", "-out", name + ".pem", "-days", str(days), "-subj", "/CN=" + cn,
            "-addext", "subjectAltName=" + san, cwd=d)


def expired_cert(d):
    """expired.pem and expired.key in d, valid in January 2020 only. openssl req and x509 take
    no date in the past (-days must be positive; -not_after came in 3.4), so a throwaway CA
    signs it with openssl ca -startdate/-enddate. False if that cannot be done here."""
    ca = os.path.join(d, "ca")
    os.makedirs(ca)
    write(os.path.join(ca, "index.txt"), "")
    write(os.path.join(ca, "serial"), "01\n")
    write(os.path.join(ca, "ca.cnf"), "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nserial = serial\n"
          "new_certs_dir = .\ndefault_md = sha256\npolicy = p\n[p]\ncommonName = supplied\n")
    try:
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                "ca.key", "-out", "ca.pem", "-days", "30", "-subj", "/CN=keel test CA", cwd=ca)
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                "../expired.key", "-out", "expired.csr", "-subj", "/CN=localhost", cwd=ca)
        openssl("ca", "-batch", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile", "ca.key", "-startdate",
                "20200101000000Z", "-enddate", "20200201000000Z", "-in", "expired.csr", "-out", "../expired.pem",
                cwd=ca)
    except AssertionError as e:
        print(f"tls: cannot make an expired certificate here, that case is skipped: {e}")
        return False
    return True


def tls_https_get(port, path, cacert, name="localhost"):
    """GET https://name:port/path with curl, name resolved to 127.0.0.1 (SNI sends it)."""
    r = curl("--cacert", cacert, "--resolve", f"{name}:{port}:127.0.0.1", f"https://{name}:{port}{path}", text=True)
    return r.returncode, r.stdout, r.stderr


def tls(tmp):
    if not shutil.which("openssl") or not CURL:
        print("tls: skipped (no openssl or no curl)")
        return
    d = os.path.join(tmp, "tls")
    os.makedirs(d)
    www = os.path.join(tmp, "www")
    self_signed(d, "good", "localhost", 30, "DNS:localhost,IP:127.0.0.1")
    self_signed(d, "other", "other.test", 30, "DNS:other.test")
    self_signed(d, "soon", "soon.test", 5, "DNS:soon.test")
    have_expired = expired_cert(d)

    # Paths relative to the file's directory; lines 1-3 are the [server] head.
    H = "[server]\nlisten = 127.0.0.1:0\nworkers = 2\n"
    R = "[route /]\nstatic = " + www + "\n[route /_keel/status]\nmatch = exact\nhandler = status\n"
    good = write(os.path.join(d, "good.conf"), H + "tls_cert = good.pem\ntls_key = good.key\n"
                 "tls_cert = other.pem\ntls_key = other.key\ntls_protocols = TLSv1.2 TLSv1.3\n"
                 "tls_handshakes_max = 100\ntls_handshake_timeout_ms = 5000\ntls_tickets = off\n" + R)
    r = keel_run("-t", "-c", good)
    check(r.returncode == 0 and r.stdout == f"keel: {good}: ok\n" and not r.stderr,
          f"-t on a good TLS file: exit {r.returncode} {r.stdout!r} {r.stderr!r}")
    print("tls: -t accepts two tls_cert/tls_key pairs and the settings: ok")

    srv = Proc([KEEL, "-c", good], cwd="/")
    try:
        p = srv.port
        check(f"config (https) {good} listening on" in srv.text(), f"the listening line says https: {srv.text()!r}")
        rc, out, err = tls_https_get(p, "/a.txt", os.path.join(d, "good.pem"))
        check(rc == 0 and out == "a", f"curl --cacert good.pem https://localhost/a.txt: {rc} {out!r} {err!r}")
        rc, out, err = tls_https_get(p, "/a.txt", os.path.join(d, "other.pem"), "other.test")
        check(rc == 0 and out == "a", f"SNI other.test must get other.pem: {rc} {out!r} {err!r}")
        rc, out, err = tls_https_get(p, "/_keel/status", os.path.join(d, "good.pem"))
        check(rc == 0 and "tls_handshakes_total" in out and "\ntls_conns " in out, f"status page: {out!r} {err!r}")
        st, _, _ = request(p, "/a.txt")
        check(st == 400, f"plain HTTP to the HTTPS port: {st}, want 400")
        print("tls: keel -c serves HTTPS, SNI picks the pair, TLS counters on the status page, "
              "plain HTTP -> 400: ok")
    finally:
        stopped("keel -c (https)", srv)

    # Bad files: (name, text, line, pieces of the message).
    tc, tk = "tls_cert = good.pem\n", "tls_key = good.key\n"
    cases = [
        ("a key that does not match its certificate", H + tc + "tls_key = other.key\n" + R, 4,
         ["tls_cert: ", "other.key", "mismatch"]),
        ("the second pair's key does not match", H + tc + tk + "tls_cert = other.pem\ntls_key = good.key\n" + R, 6,
         ["tls_cert: ", "good.key"]),
        ("a missing certificate file", H + "tls_cert = nope.pem\n" + tk + R, 4,
         ["tls_cert: ", "nope.pem", "No such file"]),
        ("a missing key file", H + tc + "tls_key = nope.key\n" + R, 5, ["tls_key: ", "nope.key", "No such file"]),
        ("a certificate without its key", H + tc + tk + "tls_cert = other.pem\n" + R, 6,
         ["tls_cert without its tls_key", "2 tls_cert, 1 tls_key"]),
        ("a key without a certificate", H + "tls_key = good.key\n" + R, 4, ["tls_key without its tls_cert"]),
        ("tls_protocols TLSv1.1", H + tc + tk + "tls_protocols = TLSv1.1 TLSv1.2\n" + R, 6,
         ["tls_protocols: ", "TLSv1.1"]),
        ("a tls setting without a pair", H + "tls_tickets = off\n" + R, 4, ["tls_cert and tls_key"]),
        ("tls_tickets not on or off", H + tc + tk + "tls_tickets = yes\n" + R, 6, ["tls_tickets"]),
        ("tls_handshakes_max out of range", H + tc + tk + "tls_handshakes_max = 0\n" + R, 6, ["out of range"]),
        ("tls_handshake_timeout_ms out of range", H + tc + tk + "tls_handshake_timeout_ms = 3600001\n" + R, 6,
         ["out of range"]),
        ("tls_protocols twice", H + tc + tk + "tls_protocols = TLSv1.3\ntls_protocols = TLSv1.2\n" + R, 7,
         ["given twice"]),
        ("a certificate file that is not one", H + "tls_cert = good.key\n" + tk + R, 4,
         ["tls_cert: ", "good.key"]),
        ("a missing client CA file", H + tc + tk + "tls_client_ca = nope.pem\n" + R, 6,
         ["tls_client_ca: ", "No such file"]),
        ("an OCSP file that is not one", H + tc + tk + "tls_ocsp = good.pem\n" + R, 6, ["tls_ocsp: "]),
    ]
    # [upstream] TLS: lines 1-3 the [server] head, 4 [upstream u], 5 the first server.
    U = H + "[upstream u]\nserver = https://127.0.0.1:9443\n"
    RU = "[route /]\nupstream = u\n"
    cases += [
        ("http:// and https:// servers in one group", U + "server = 127.0.0.1:9444\n" + RU, 6,
         ["server: 127.0.0.1:9444 is plain", "first server (line 5) is https", "one scheme"]),
        ("a bad https:// address", H + "[upstream u]\nserver = https://127.0.0.1\n" + RU, 5,
         ["server: bad address 'https://127.0.0.1'"]),
        ("a scheme keel does not speak", H + "[upstream u]\nserver = ftp://127.0.0.1:21\n" + RU, 5,
         ["server: bad address"]),
        ("tls_ca for a plain group", H + "[upstream u]\nserver = 127.0.0.1:9444\ntls_ca = good.pem\n" + RU, 6,
         ["tls_* keys need https:// servers in [upstream u]"]),
        ("a missing tls_ca file", U + "tls_ca = nope.pem\n" + RU, 6, ["tls_ca: ", "nope.pem", "No such file"]),
        ("an upstream tls_cert without its tls_key", U + "tls_cert = good.pem\n" + RU, 6,
         ["tls_cert without its tls_key"]),
        ("an upstream tls_key that does not match", U + "tls_cert = good.pem\ntls_key = other.key\n" + RU, 6,
         ["[upstream u]: ", "other.key"]),
        ("tls_verify not on or off", U + "tls_verify = no\n" + RU, 6, ["tls_verify: 'no' is not on or off"]),
        ("an empty tls_name", U + "tls_name =\n" + RU, 6, ["tls_name: '' is not a host name"]),
        ("an unknown upstream tls key", U + "tls_ciphers = x\n" + RU, 6, ["unknown key 'tls_ciphers' in [upstream u]"]),
    ]
    if have_expired:
        cases.append(("an expired certificate", H + tc + tk + "tls_cert = expired.pem\ntls_key = expired.key\n" + R,
                      6, ["tls_cert: ", "expired.pem", "expired"]))
    for name, text, line, pieces in cases:
        path = write(os.path.join(d, "bad.conf"), text)
        for args in (["-t", "-c", path], ["-c", path]):
            r = keel_run(*args)
            what = f"{name} (keel {args[0]})"
            check(r.returncode == 1, f"{what}: exit {r.returncode}, want 1 (stderr {r.stderr!r})")
            check(r.stderr.startswith(f"{path}:{line}: "), f"{what}: stderr {r.stderr!r}, want {path}:{line}: ...")
            for piece in pieces:
                check(piece in r.stderr, f"{what}: stderr {r.stderr!r} lacks {piece!r}")
            check(r.stderr.count("\n") == 1 and "listening" not in r.stderr, f"{what}: {r.stderr!r}")
            check("BEGIN" not in r.stderr and "PRIVATE" not in r.stderr, f"{what}: key material in {r.stderr!r}")
    print(f"tls: {len(cases)} kinds of bad TLS keys, each exit 1 at the right line, for -t and a run: ok"
          + ("" if have_expired else " (without the expired certificate)"))

    # Expiring within 14 days: a warning, and still ok.
    soon = write(os.path.join(d, "soon.conf"), H + tc + tk + "tls_cert = soon.pem\ntls_key = soon.key\n" + R)
    r = keel_run("-t", "-c", soon)
    check(r.returncode == 0 and r.stdout == f"keel: {soon}: ok\n", f"-t, soon expiring: {r.returncode} {r.stdout!r}")
    want = f"keel: {soon}: warning: certificate {os.path.join(d, 'soon.pem')} expires in "
    check(r.stderr.startswith(want) and r.stderr.endswith(" days\n") and r.stderr.count("\n") == 1,
          f"-t, soon expiring: stderr {r.stderr!r}, want {want!r}...")
    print("tls: a certificate that expires in 5 days: a warning, status 0: ok")

    # keel proxy --tls-cert/--tls-key.
    up = Proc([TESTSRV, "--listen", "127.0.0.1:0"])
    px = Proc([KEEL, "proxy", "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{up.port}", "--workers", "1",
               "--status", "--tls-cert", os.path.join(d, "good.pem"), "--tls-key", os.path.join(d, "good.key")])
    try:
        check("proxy (https) to 1 upstream listening on" in px.text(), f"keel proxy https line: {px.text()!r}")
        rc, out, err = tls_https_get(px.port, "/_keel/status", os.path.join(d, "good.pem"))
        check(rc == 0 and "tls_handshakes_total" in out, f"keel proxy --tls-cert status: {rc} {out!r} {err!r}")
        print("tls: keel proxy --tls-cert/--tls-key listens for HTTPS: ok")
        rc, out, err = tls_https_get(px.port, "/hello", os.path.join(d, "good.pem"))
        got = (200 if rc == 0 else None, {}, out.encode())
        proxy_expect("keel proxy over HTTPS: GET /hello", got, 200, b"Hello, World!")
    finally:
        stopped("keel proxy (https)", px)
        up.stop()
    gc, gk = os.path.join(d, "good.pem"), os.path.join(d, "good.key")
    for args, want in [(["--tls-cert", gc], 2), (["--tls-key", gk], 2), (["--tls-cert", gc, "--tls-key", gc], 1),
                       (["--tls-cert", gc, "--tls-key", os.path.join(d, "other.key")], 1)]:
        r = keel_run("proxy", "--upstream", "127.0.0.1:1", "--listen", "127.0.0.1:0", *args)
        check(r.returncode == want and r.stderr.strip() and "listening" not in r.stderr,
              f"keel proxy {' '.join(args)}: exit {r.returncode}, want {want}: {r.stderr!r}")
    print("tls: keel proxy with an unpaired --tls-cert/--tls-key exits 2, a bad key 1: ok")
    for args, want, piece in [
            (["--upstream", "https://127.0.0.1:1", "--upstream", "127.0.0.1:2"], 2, "a group speaks one scheme"),
            (["--upstream", "127.0.0.1:1", "--tls-ca", gc], 1, "--tls-ca is for https:// upstreams"),
            (["--upstream", "https://127.0.0.1:1", "--tls-ca", os.path.join(d, "nope.pem")], 1, "No such file"),
            (["--upstream", "https://127.0.0.1"], 2, "bad address 'https://127.0.0.1'")]:
        r = keel_run("proxy", "--listen", "127.0.0.1:0", *args)
        check(r.returncode == want and piece in r.stderr and "listening" not in r.stderr,
              f"keel proxy {' '.join(args)}: exit {r.returncode}, want {want} and {piece!r}: {r.stderr!r}")
    print("tls: keel proxy with mixed schemes, --tls-ca without https://, a missing CA file: refused: ok")


def test():
    for b in (KEEL, TESTSRV):
        if not os.access(b, os.X_OK):
            raise Skip(f"{b} not built")
    tmp = tempfile.mkdtemp(prefix="keel-config-")
    try:
        os.makedirs(os.path.join(tmp, "www"))
        write(os.path.join(tmp, "www", "a.txt"), "a")
        bad_files(tmp)
        good_check(tmp)
        proxy_flags()
        good_run(tmp)
        proxy_cmd(tmp)
        tls(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if proxy_passed:
        print(f"PROXY assertions passed ({len(proxy_passed)}):")
        for label in proxy_passed:
            print("  -", label)
    if proxy_failed:
        print(f"PROXY assertions FAILED ({len(proxy_failed)}):")
        for msg in proxy_failed:
            print("  -", msg)
        return 1
    print("config: ok")


if __name__ == "__main__":
    main(test)
