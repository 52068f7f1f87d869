#!/usr/bin/env python3
"""keel serve end to end, with real clients: curl (ranges, conditional
requests, HEAD, keep-alive reuse), python http.client, a pipelined burst on
a raw socket; files of 0 B, 1 B and powers of two up to 64 MiB compared by
SHA-256; traversal attempts, encoded or not; precompressed .gz; bad flags.
Runs under the backend in KEEL_BACKEND."""
import http.client, os, re, shutil, socket, subprocess, tempfile, time

from keeltest import KEEL, Proc, check, eq, exchange, main, run_keel, sha
import keeltest

def server(root, *extra):
    return Proc([KEEL, "serve", "--listen", "127.0.0.1:0", "--workers", "1", *extra, root], name="keel serve")

def curl(*args):
    return keeltest.curl(*args, max_time=60)

def raw_get(port, target):
    return exchange(port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(), timeout=5)

def status_page(url):
    r = keeltest.curl(url, text=True)
    return r.stdout, dict(l.split(" ", 1) for l in r.stdout.splitlines())

def test():
    root = tempfile.mkdtemp(prefix="keel-serve-")
    outside = tempfile.mkdtemp(prefix="keel-outside-")
    try:
        with open(os.path.join(outside, "secret.txt"), "w") as f:
            f.write("secret")
        os.symlink(os.path.join(outside, "secret.txt"), os.path.join(root, "escape-link"))
        sizes = [0, 1] + [1 << k for k in range(1, 27)]  # up to 64 MiB
        files = {}
        for n in sizes:
            data = os.urandom(n) if n <= (1 << 20) else (os.urandom(1 << 20) * (n >> 20))
            name = f"f{n}.bin"
            with open(os.path.join(root, name), "wb") as f:
                f.write(data)
            files[name] = sha(data)
        os.makedirs(os.path.join(root, "dir"))
        with open(os.path.join(root, "dir", "index.html"), "w") as f:
            f.write("<p>index</p>")
        os.makedirs(os.path.join(root, "noindex"))
        with open(os.path.join(root, "page.css"), "w") as f:
            f.write("body { color: red; }\n" * 50)
        subprocess.run(["gzip", "-k", "-n", os.path.join(root, "page.css")], check=True)

        srv = server(root)
        base = srv.url("")
        try:
            # Every file, by SHA-256, through curl.
            for name, digest in files.items():
                r = curl("-o", "-", "-w", "%{http_code}", base + "/" + name)
                body, code = r.stdout[:-3], r.stdout[-3:]
                check(code == b"200", f"{name}: status {code}")
                check(sha(body) == digest, f"{name}: body differs ({len(body)} bytes)")
            print(f"files 0 B .. 64 MiB ({len(files)}) by SHA-256 through curl: ok")

            # http.client, keep-alive on one connection.
            c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
            for name in ["f1.bin", "f1024.bin", "f65536.bin", "f0.bin"]:
                c.request("GET", "/" + name)
                resp = c.getresponse()
                body = resp.read()
                check(resp.status == 200 and sha(body) == files[name], f"http.client {name}")
                check(resp.getheader("Content-Type") == "application/octet-stream", "content type")
                check(resp.getheader("ETag") and resp.getheader("Last-Modified"), "validators missing")
            c.request("GET", "/dir/")
            resp = c.getresponse()
            check(resp.status == 200 and resp.read() == b"<p>index</p>", "index.html")
            check(resp.getheader("Content-Type").startswith("text/html"), "html type")
            c.close()
            print("http.client: several files on one keep-alive connection, index.html: ok")

            # curl keep-alive reuse.
            r = curl("-v", "-o", "/dev/null", "-o", "/dev/null", base + "/f1.bin", base + "/f2.bin")
            check(b"Re-using existing connection" in r.stderr or b"Reusing existing connection" in r.stderr,
                  "curl did not reuse the connection")
            print("curl reuses the connection: ok")

            # HEAD.
            r = curl("-I", base + "/f4096.bin")
            check(b"200 OK" in r.stdout and b"Content-Length: 4096" in r.stdout, "HEAD headers")
            print("HEAD: ok")

            # Ranges.
            data = open(os.path.join(root, "f65536.bin"), "rb").read()
            for spec, lo, hi in [("0-0", 0, 0), ("10-19", 10, 19), ("65000-", 65000, 65535), ("-100", 65436, 65535),
                                 ("60000-99999999", 60000, 65535)]:
                r = curl("-D", "-", "-r", spec, "-o", "/tmp/keel-range", base + "/f65536.bin")
                got = open("/tmp/keel-range", "rb").read()
                check(b"206 Partial Content" in r.stdout, f"range {spec}: {r.stdout[:60]!r}")
                check(f"Content-Range: bytes {lo}-{hi}/65536".encode() in r.stdout, f"range {spec}: Content-Range")
                check(got == data[lo:hi + 1], f"range {spec}: bytes")
            r = curl("-D", "-", "-o", "/dev/null", "-r", "70000-80000", base + "/f65536.bin")
            check(b"416" in r.stdout and b"Content-Range: bytes */65536" in r.stdout, "416")
            print("ranges 206 (5 shapes) and 416: ok")

            # Conditional requests.
            r = curl("-D", "-", "-o", "/dev/null", base + "/f1024.bin")
            etag = re.search(rb"ETag: (\S+)", r.stdout).group(1).decode()
            lm = re.search(rb"Last-Modified: ([^\r\n]+)", r.stdout).group(1).decode()
            for hdr in [f"If-None-Match: {etag}", f"If-None-Match: \"x\", {etag}", "If-None-Match: *",
                        f"If-Modified-Since: {lm}"]:
                r = curl("-o", "/dev/null", "-w", "%{http_code}", "-H", hdr, base + "/f1024.bin")
                check(r.stdout == b"304", f"{hdr}: {r.stdout}")
            r = curl("-o", "/dev/null", "-w", "%{http_code}", "-H", "If-None-Match: \"other\"", base + "/f1024.bin")
            check(r.stdout == b"200", "non-matching ETag")
            r = curl("-o", "/dev/null", "-w", "%{http_code}", "-H", "If-Modified-Since: Sat, 01 Jan 2000 00:00:00 GMT",
                     base + "/f1024.bin")
            check(r.stdout == b"200", "old If-Modified-Since")
            print("conditional: If-None-Match / If-Modified-Since -> 304, otherwise 200: ok")

            # Directories, errors.
            r = curl("-D", "-", "-o", "/dev/null", base + "/dir?x=1")
            check(b"301" in r.stdout and b"Location: /dir/?x=1" in r.stdout, "301 with trailing slash")
            # The Location comes from the normalized path: "//dir" must not send the client to
            # "//dir/", a scheme-relative URL naming another host.
            for target in ("//dir", "/./dir", "/x/../dir", "/%64ir"):
                resp = raw_get(srv.port, target)
                check(resp.startswith(b"HTTP/1.1 301") and b"\r\nLocation: /dir/\r\n" in resp,
                      f"GET {target}: {resp[:200]!r}")
            # A method the files do not take: 405 that says which ones they do.
            for method in ("POST", "PUT", "DELETE"):
                r = curl("-D", "-", "-o", "/dev/null", "-X", method, base + "/f1.bin")
                check(b" 405 " in r.stdout and b"Allow: GET, HEAD" in r.stdout, f"{method}: {r.stdout[:200]!r}")
            for path, want in [("/nope", b"404"), ("/noindex/", b"403"), ("/escape-link", b"404")]:
                r = curl("-o", "/dev/null", "-w", "%{http_code}", base + path)
                check(r.stdout == want, f"{path}: {r.stdout} (want {want})")
            print("301 for directories, 403 without index, 404, symlink escape refused: ok")

            # Traversal: raw requests, encoded or not; never the secret.
            for target in ["/../secret.txt", "/..%2fsecret.txt", "/%2e%2e/%2e%2e/etc/passwd", "/dir/../../etc/passwd",
                           "/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", "/.%2e/etc/passwd", "/dir/%00", "/f1.bin%00.txt",
                           "//etc/passwd", "/./../etc/passwd"]:
                resp = raw_get(srv.port, target)
                status = resp.split(b" ", 2)[1] if resp else b""
                check(status in (b"400", b"404"), f"traversal {target}: {resp[:40]!r}")
                check(b"secret" not in resp and b"root:" not in resp, f"traversal {target} leaked")
            print("traversal attempts (10, encoded or not): 400/404, nothing outside the root: ok")

            # Precompressed variant.
            r = curl("-D", "-", "-H", "Accept-Encoding: gzip", "-o", "/tmp/keel-gz", base + "/page.css")
            check(b"Content-Encoding: gzip" in r.stdout and b"Vary: Accept-Encoding" in r.stdout, "gz headers")
            check(open("/tmp/keel-gz", "rb").read() == open(os.path.join(root, "page.css.gz"), "rb").read(), "gz body")
            check(b"text/css" in r.stdout, "gz content type is the original's")
            r = curl("-D", "-", "-o", "/tmp/keel-plain", base + "/page.css")
            check(b"Content-Encoding" not in r.stdout, "plain without Accept-Encoding")
            check(b"Vary: Accept-Encoding" in r.stdout, "the plain variant says it varies too")
            r = curl("-D", "-", "-H", "Accept-Encoding: gzip;q=0", "-o", "/dev/null", base + "/page.css")
            check(b"Content-Encoding" not in r.stdout, "gzip;q=0 refused")
            print("precompressed .gz when accepted (and not when q=0): ok")

            # The small-file cache never serves stale or escaped content.
            small = os.path.join(root, "small.txt")
            with open(small, "w") as f:
                f.write("version one\n")
            for _ in range(3):
                r = curl(base + "/small.txt")
                check(r.stdout == b"version one\n", f"cached small file: {r.stdout!r}")
            with open(small, "w") as f:
                f.write("version two, longer\n")
            r = curl(base + "/small.txt")
            check(r.stdout == b"version two, longer\n", f"changed file served stale: {r.stdout!r}")
            with open(small + ".tmp", "w") as f:
                f.write("version three\n")
            os.replace(small + ".tmp", small)  # same size class, new inode
            r = curl(base + "/small.txt")
            check(r.stdout == b"version three\n", f"replaced file served stale: {r.stdout!r}")
            r = curl("-r", "8-12", base + "/small.txt")
            check(r.stdout == b"three", f"range from the cache: {r.stdout!r}")
            os.remove(small)
            os.symlink(os.path.join(outside, "secret.txt"), small)  # swapped for a link out of the root
            r = curl("-o", "/dev/null", "-w", "%{http_code}", base + "/small.txt")
            check(r.stdout == b"404", f"cached file swapped for an escaping symlink: {r.stdout}")
            os.remove(small)
            r = curl("-o", "/dev/null", "-w", "%{http_code}", base + "/small.txt")
            check(r.stdout == b"404", f"deleted cached file: {r.stdout}")
            print("small-file cache: changes, replacement, range, escaping symlink, deletion: ok")

            # Pipelined burst on a raw socket.
            names = ["f1.bin", "f2.bin", "f1024.bin", "dir/", "nope", "f16.bin"] * 5
            burst = b"".join(f"GET /{n} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for n in names)
            resp = exchange(srv.port, burst + b"GET /f4.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            statuses = re.findall(rb"HTTP/1\.1 (\d{3})", resp)
            want = [b"404" if n == "nope" else b"200" for n in names] + [b"200"]
            check(statuses == want, f"pipelined statuses {statuses}")
            print(f"pipelined burst of {len(names) + 1} requests answered in order: ok")

            rc = srv.stop()
            check(rc == 0, f"exit status {rc}")
            print("SIGTERM: exit 0")
        finally:
            srv.stop()

        # --status: live counters at /_keel/status; without it the path is just a (missing) file.
        srv = server(root, "--status", "--queue-delay-us", "0")
        try:
            b = srv.url("")
            # A gzip-accepting client of a small file with no .gz sibling is served from the cache
            # (the sibling's absence is remembered for a moment), not read from disk every time.
            for _ in range(6):
                r = curl("-D", "-", "-H", "Accept-Encoding: gzip", b + "/f1024.bin")
                check(b" 200 " in r.stdout and b"Content-Encoding" not in r.stdout, "f1024.bin for a gzip client")
            _, lines = status_page(b + "/_keel/status")
            hits, misses = int(lines.get("static_cache_hits_total", "-1")), int(lines.get("static_cache_misses_total", "-1"))
            check(hits >= 4 and misses <= 2, f"cache for gzip clients, no .gz: {hits} hits, {misses} misses")
            # 32 pipelined requests for one cached file arrive in one tick: one statx checks the
            # entry for all of them, not one each, and each answer is whole -- the ones that waited
            # for another's statx included: plain, a range, a conditional that is not met.
            with open(os.path.join(root, "f1024.bin"), "rb") as f:
                data = f.read()
            time.sleep(0.05)  # (a later tick than the last check)
            checks0 = int(lines.get("static_cache_checks_total", "-1"))
            plain = b"GET /f1024.bin HTTP/1.1\r\nHost: x\r\n\r\n"
            with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
                s.sendall(plain * 20 + b"GET /f1024.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=10-19\r\n\r\n" +
                          b"GET /f1024.bin HTTP/1.1\r\nHost: x\r\nIf-Modified-Since: Thu, 01 Jan 1998 00:00:00 GMT\r\n\r\n" +
                          plain * 9 + b"GET /f1024.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                got = keeltest.recv_all(s)
            answers = got.split(b"HTTP/1.1 ")[1:]
            eq(len(answers), 32, "32 pipelined answers")
            bodies = [a.split(b"\r\n\r\n", 1)[1] for a in answers]
            for i, (a, body) in enumerate(zip(answers, bodies)):
                want = (b"206", data[10:20]) if i == 20 else (b"200", data)
                check(a.startswith(want[0]) and body == want[1],
                      f"answer {i}: {a[:40]!r}, a {len(body)}-byte body, want {want[0]!r} and {len(want[1])} bytes")
            _, lines = status_page(b + "/_keel/status")
            checks = int(lines.get("static_cache_checks_total", "-1")) - checks0
            check(1 <= checks <= 4, f"statx calls for 32 hits arriving together: {checks}")
            curl(b + "/f1.bin")
            out, lines = status_page(b + "/_keel/status")
            check(lines.get("worker") == "0", f"status worker line: {out[:200]!r}")
            check(int(lines.get("requests_total", "0")) >= 2, f"status requests: {out[:300]!r}")
            check(int(lines.get("rss_bytes", "0")) > 0, f"status rss: {out[:300]!r}")
            out = keeltest.curl(b + "/_keel/status?format=prometheus", text=True).stdout
            check('keel_requests_total{worker="0"}' in out, f"prometheus: {out[:300]!r}")
        finally:
            srv.stop()
        srv = server(root)
        try:
            r = keeltest.curl("-o", "/dev/null", "-w", "%{http_code}", srv.url("/_keel/status"), text=True)
            check(r.stdout == "404", f"/_keel/status without --status: {r.stdout}")
        finally:
            srv.stop()
        print("--status: text and Prometheus counters; off by default: ok")

        # Bad flags and a missing DIR.
        for args, want in [(["serve", "--bogus"], 2), (["serve", "--workers", "0"], 2),
                           (["serve", "--listen", "nope"], 2), (["serve", "a", "b"], 2),
                           (["serve", "--queue-delay-us", "-1"], 2), (["serve", "/nonexistent/dir"], 1)]:
            r = run_keel(*args)
            check(r.returncode == want, f"keel {' '.join(args)}: exit {r.returncode}, want {want}")
            check(r.stderr.strip(), f"keel {' '.join(args)}: no message")
        print("bad flags -> 2, missing DIR -> clear error: ok")
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(outside, ignore_errors=True)
    print("serve: ok")

if __name__ == "__main__":
    main(test)
