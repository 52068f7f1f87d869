#!/usr/bin/env python3
"""libkeel as a C or C++ developer gets it.

Every public header compiles on its own, -pedantic -Werror, as C17 without
_GNU_SOURCE (gcc and clang) and as C++17 (g++ and clang++). `make install
PREFIX=<tmp>` puts the binary, libkeel.so (soname libkeel.so.0, with its
symlinks), libkeel.a, the headers, keel.pc, the systemd units (verified by
systemd-analyze, with the prefix's paths), keel.conf.example, the logrotate
snippet (parsed by logrotate -d) and the man pages in place (each
page renders without a groff warning, each alias resolves through man(1),
each documented name is still in the API); against that tree a
small program -- an HTTP server and a client asking it over loopback --
builds with pkg-config as C and as C++, linked to libkeel.so and (with
pkg-config --static) to libkeel.a, and each runs and prints its answer.
docs/guide.md's service, extracted from the page, builds as C and C++ and
answers as the page says against three Python upstreams (one slow): All,
the 200 ms deadline's 504, a refused upstream's 502, Any, and SIGTERM. The
shared library exports keel_* symbols only, and `make uninstall` removes
every file install made.

Runs under the backend in KEEL_BACKEND (the programs' loops), with the build
in KEEL_BUILD (a sanitizer build links its programs with the same runtime).
Exit status: 0 pass, 1 fail, 77 skip (no pkg-config or no C++ compiler)."""
import os, re, shutil, subprocess, tempfile

from keeltest import BUILD, Skip, check, eq, fail, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not os.path.isdir(os.path.join(ROOT, "include", "keel")):  # (run from build/test/)
    ROOT = os.getcwd()

# The program a newcomer writes: one route, one request to it, a clean stop. Valid C17 and C++17.
PROGRAM = r"""
#include <keel/http.h>
#include <keel/http_client.h>
#include <keel/keel.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

static int answered, stopped;

static keel_promise *hello(keel_http_request *req, void *ud)
{
	(void)ud;
	return keel_http_respond(req, 200, "text/plain", "installed\n", 10);
}

static void got(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)ud;
	keel_http_client_response *r = (keel_http_client_response *)o.ptr;
	if (o.err) {
		fprintf(stderr, "request: %s\n", keel_strerror(o.err));
		answered = -1;
		return;
	}
	printf("%d %.*s", r->status, (int)r->body.len, r->body.ptr);
	answered = r->status == 200 ? 1 : -1;
	keel_http_client_response_free(r);
}

static void done(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	(void)ud;
	stopped = 1;
}

int main(void)
{
	keel_loop *loop;
	keel_http_server *srv;
	keel_http_client *cl;
	keel_http_config cfg;
	if (keel_loop_new(&loop, NULL) < 0)
		return 1;
	keel_http_config_default(&cfg);
	if (keel_http_server_new(&srv, loop, &cfg) < 0 ||
	    keel_http_route(srv, "GET", "/hello", 0, hello, NULL) < 0)
		return 1;
	int lfd = keel_tcp_listen("127.0.0.1:0", 16, 0);
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char addr[64];
	if (lfd < 0 || getsockname(lfd, (struct sockaddr *)&ss, &sl) < 0 ||
	    !keel_addr_format((struct sockaddr *)&ss, addr, sizeof(addr)) || keel_http_server_start(srv, lfd) < 0 ||
	    keel_http_client_new(&cl, loop, NULL) < 0)
		return 1;
	keel_http_client_request q;
	memset(&q, 0, sizeof(q));
	q.upstream = addr;
	q.target = "/hello";
	keel_promise_done(keel_http_client_request_send(cl, &q), got, NULL);
	for (int i = 0; i < 100 && !answered; i++)
		keel_loop_run_once(loop, 100);
	keel_http_client_free(cl);
	keel_promise_done(keel_http_server_stop(srv, 1000), done, NULL);
	for (int i = 0; i < 100 && !stopped; i++)
		keel_loop_run_once(loop, 100);
	keel_http_server_free(srv);
	keel_loop_free(loop);
	return answered == 1 && stopped ? 0 : 1;
}
"""


def guide_program():
    """The first C block of docs/guide.md: the service the page walks through."""
    text = open(os.path.join(ROOT, "docs", "guide.md")).read()
    m = re.search(r"^```c\n(.*?)^```$", text, re.S | re.M)
    check(m is not None and "keel_http_main" in m.group(1), "docs/guide.md has its service in a ```c block")
    return m.group(1)


class Upstreams:
    """Three HTTP services on loopback: price (/price: 42), info (/info: a JSON object), and
    one that answers /price and /info only after a second."""

    def __init__(self):
        import http.server, socketserver, threading, time

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                if self.server.slow:
                    time.sleep(1.0)
                body = {"/price": b"42", "/info": b'{"name":"Keel"}'}.get(self.path)
                self.send_response(200 if body else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *a):
                pass

        class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # (a call keel cancelled: the slow service finds its client gone)

        self.servers = []
        for slow in (False, False, True):
            s = S(("127.0.0.1", 0), H)
            s.slow = slow
            threading.Thread(target=s.serve_forever, daemon=True).start()
            self.servers.append(s)
        self.price, self.info, self.slow = ["127.0.0.1:%d" % s.server_address[1] for s in self.servers]

    def close(self):
        for s in self.servers:
            s.shutdown()
            s.server_close()


def closed_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nobody listens there now: connections are refused
    return "127.0.0.1:%d" % port


def guide_get(addr, path):
    import http.client
    c = http.client.HTTPConnection(*addr.rsplit(":", 1), timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode()
    finally:
        c.close()


def guide_start(exe, args):
    """Start the service on a port of its choosing; returns (process, "127.0.0.1:PORT")."""
    import select, signal, time
    p = subprocess.Popen([exe, "127.0.0.1:0", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True, env=dict(os.environ, KEEL_LOG="2"))
    # (Unbuffered reads: a readline could take both lines into its buffer, where select cannot see the second.)
    said, end = "", time.time() + 20
    while time.time() < end and p.poll() is None:
        if select.select([p.stderr], [], [], 0.5)[0]:
            said += os.read(p.stderr.fileno(), 4096).decode(errors="replace")
            m = re.search(r"listening on (127\.0\.0\.1:\d+)", said)
            if m:
                return p, m.group(1)
    p.kill()
    p.wait()
    fail("the guide's service did not start: %r" % said)


def guide_stop(p, lang):
    import signal
    p.send_signal(signal.SIGTERM)
    try:
        rc = p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        fail("%s: the guide's service did not stop on SIGTERM" % lang)
    eq(rc, 0, "%s: the guide's service's exit status after SIGTERM" % lang)


def guide_run(exe, lang):
    up = Upstreams()
    try:
        # Both answer: All gives both bodies. Replicas slow and quick: Any takes the quick one
        # (waiting for the slow one would have been a 504).
        p, addr = guide_start(exe, [up.price, up.info, up.slow, up.price])
        try:
            eq(guide_get(addr, "/quote"), (200, '{"price":42,"info":{"name":"Keel"}}\n'), lang + " /quote")
            eq(guide_get(addr, "/fast"), (200, '{"price":42}\n'), lang + " /fast, one replica slow")
            eq(guide_get(addr, "/nothing")[0], 404, lang + " a path with no route")
        finally:
            guide_stop(p, lang)
        # The info service takes a second: the deadline answers 504. Nobody there: 502.
        for info, want in [(up.slow, 504), (closed_port(), 502)]:
            p, addr = guide_start(exe, [up.price, info, up.slow, up.slow])
            try:
                eq(guide_get(addr, "/quote")[0], want, "%s /quote with info %s" % (lang, info))
                eq(guide_get(addr, "/fast")[0], 504, lang + " /fast, both replicas slow")
            finally:
                guide_stop(p, lang)
    finally:
        up.close()


def run(cmd, env=None, what=None):
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        fail("%s: exit %d\n%s%s" % (what or " ".join(cmd), r.returncode, r.stdout[-2000:], r.stderr[-3000:]))
    return r.stdout


def sanitizer_flags():
    """What the library in this build was compiled with, for the programs that link it."""
    b = os.path.basename(os.path.normpath(BUILD))
    if b in ("build-san", "build-fault"):
        return ["-fsanitize=address,undefined"], ["SAN=1"] + (["FAULT=1"] if b == "build-fault" else [])
    if b == "build-tsan":
        return ["-fsanitize=thread"], ["TSAN=1"]
    return [], []


def test():
    cxx = shutil.which("g++")
    if not shutil.which("pkg-config") or not cxx or not shutil.which("man") or not shutil.which("groff"):
        raise Skip("pkg-config, g++, man or groff missing (Debian: pkg-config, g++, man-db, groff-base)")
    san, make_flags = sanitizer_flags()
    tmp = tempfile.mkdtemp(prefix="keel-install-")
    try:
        # Each header alone, in four compilers.
        headers = sorted(os.listdir(os.path.join(ROOT, "include", "keel")))
        check(len(headers) >= 19, "headers found: %r" % headers)
        compilers = [(c, std, ext) for c, std, ext in [("gcc", "c17", "c"), ("clang", "c17", "c"),
                                                      ("g++", "c++17", "cc"), ("clang++", "c++17", "cc")]
                     if shutil.which(c)]
        for h in headers:
            for c, std, ext in compilers:
                src = os.path.join(tmp, "one.%s" % ext)
                with open(src, "w") as f:
                    f.write("#include <keel/%s>\n" % h)
                run([c, "-std=" + std, "-pedantic", "-Wall", "-Wextra", "-Werror", "-Iinclude", "-fsyntax-only", src],
                    what="%s alone as %s (%s)" % (h, std, c))
        print("ok   %d headers alone: %s" % (len(headers), ", ".join("%s %s" % (c, s) for c, s, _ in compilers)), flush=True)

        # Install into a prefix of our own.
        prefix = os.path.join(tmp, "prefix")
        run(["make", "-s", "install", "BUILD=" + BUILD, "PREFIX=" + prefix, *make_flags], what="make install")
        lib = os.path.join(prefix, "lib")
        for name, link in [("libkeel.so", "libkeel.so.0"), ("libkeel.so.0", "libkeel.so.0.1.0")]:
            eq(os.readlink(os.path.join(lib, name)), link, name + " symlink")
        for f in ["bin/keel", "lib/libkeel.a", "lib/libkeel.so.0.1.0", "lib/pkgconfig/keel.pc", "include/keel/http.h"]:
            check(os.path.isfile(os.path.join(prefix, f)), f + " installed")
        # What operators get: the units with this prefix's paths, which systemd accepts; the
        # example configuration, which checks; the logrotate snippet, which logrotate parses.
        units = os.path.join(lib, "systemd", "system")
        service = open(os.path.join(units, "keel.service")).read()
        check("ExecStart=%s/bin/keel -c %s/etc/keel/keel.conf" % (prefix, prefix) in service and "@" not in service,
              "keel.service names the installed binary and configuration:\n" + service)
        if shutil.which("systemd-analyze"):
            run(["systemd-analyze", "verify", "--man=no", os.path.join(units, "keel.service"),
                 os.path.join(units, "keel.socket")], what="systemd-analyze verify")
        example = os.path.join(prefix, "etc", "keel", "keel.conf.example")
        check(open(example).read() == open(os.path.join(ROOT, "keel.conf.example")).read(),
              "keel.conf.example installed as it is")
        logrotate = os.path.join(prefix, "etc", "logrotate.d", "keel")
        check("postrotate" in open(logrotate).read() and "USR1" in open(logrotate).read(),
              "the logrotate snippet sends SIGUSR1")
        if shutil.which("logrotate") or os.path.exists("/usr/sbin/logrotate"):
            run([shutil.which("logrotate") or "/usr/sbin/logrotate", "-d", "-s", os.path.join(tmp, "lr.state"),
                 logrotate], what="logrotate -d")
        print("ok   keel.service, keel.socket, keel.conf.example and the logrotate snippet installed", flush=True)
        soname = run(["objdump", "-p", os.path.join(lib, "libkeel.so.0.1.0")])
        check("SONAME               libkeel.so.0" in soname, "soname libkeel.so.0")
        syms = run(["nm", "-D", "--defined-only", os.path.join(lib, "libkeel.so")]).split("\n")
        names = [l.split()[-1] for l in syms if l.strip()]
        check(names and all(n.startswith("keel_") and not n.startswith("keel__") for n in names),
              "only keel_* exported: %r" % [n for n in names if not n.startswith("keel_") or n.startswith("keel__")][:10])
        check("keel_loop_new" in names and "keel_http_respond" in names, "the API is exported")
        print("ok   make install: soname, symlinks, %d keel_* symbols and nothing else" % len(names), flush=True)

        # The man pages: installed, each main page rendered without a warning, every alias
        # resolving through man(1), and every name a page documents still in the API.
        mandir = os.path.join(prefix, "share", "man")
        pages = sorted(os.listdir(os.path.join(ROOT, "docs", "man")))
        headers_text = "".join(open(os.path.join(ROOT, "include", "keel", h)).read() for h in headers)
        mains, aliases = [], []
        for p in pages:
            sec = p.rsplit(".", 1)[1]
            installed = os.path.join(mandir, "man" + sec, p)
            check(os.path.isfile(installed), "man page %s installed" % p)
            text = open(installed).read()
            if text.startswith(".so "):
                aliases.append(p)
                target = text.split()[1]
                check(os.path.isfile(os.path.join(mandir, target)), "%s: its .so %s is there" % (p, target))
            else:
                mains.append(p)
                r = subprocess.run(["groff", "-man", "-ww", "-z", "-Tutf8", installed], capture_output=True,
                                   text=True, timeout=60)
                eq((r.returncode, r.stderr), (0, ""), "groff -ww on %s" % p)
            name = p.rsplit(".", 1)[0]
            if sec == "3":
                check(name in names or re.search(r"\b%s\b" % re.escape(name), headers_text),
                      "man page %s names something the headers declare" % p)
        check(len(mains) >= 15 and "keel.7" in mains, "main pages: %r" % mains)
        for p in aliases[:3] + ["keel_http_main.3"]:
            out = run(["man", "-M", mandir, "-P", "cat", p.rsplit(".", 1)[0]],
                      env=dict(os.environ, MANWIDTH="100"), what="man " + p)
            check("SYNOPSIS" in out and "OWNERSHIP" in out, "man %s: rendered with SYNOPSIS and OWNERSHIP" % p)
        print("ok   %d man pages and %d aliases installed, rendered without warnings, naming the API"
              % (len(mains), len(aliases)), flush=True)

        env = dict(os.environ, PKG_CONFIG_PATH=os.path.join(lib, "pkgconfig"))
        cflags = run(["pkg-config", "--cflags", "keel"], env=env).split()
        libs = run(["pkg-config", "--libs", "keel"], env=env).split()
        static_libs = ["-l:libkeel.a" if x == "-lkeel" else x for x in run(["pkg-config", "--static", "--libs", "keel"], env=env).split()]
        check("-lkeel" in libs and "-luring" in static_libs and "-lnghttp2" in static_libs and "-lssl" in static_libs,
              "pkg-config: %r / --static %r" % (libs, static_libs))
        for lang, compiler, ext in [("C", "gcc", "c"), ("C++", cxx, "cc")]:
            src = os.path.join(tmp, "prog.%s" % ext)
            with open(src, "w") as f:
                f.write(PROGRAM)
            std = "-std=c17" if ext == "c" else "-std=c++17"
            for kind, link in [("shared", libs + ["-Wl,-rpath," + lib]), ("static", static_libs)]:
                exe = os.path.join(tmp, "prog-%s-%s" % (ext, kind))
                run([compiler, std, "-Wall", "-Wextra", "-Werror", *san, *cflags, "-o", exe, src, *link],
                    what="%s program, %s" % (lang, kind))
                needed = run(["objdump", "-p", exe])
                eq("NEEDED               libkeel.so.0" in needed, kind == "shared", "%s %s: libkeel.so.0 needed" % (lang, kind))
                out = run([exe], what="%s program (%s) run" % (lang, kind))
                eq(out, "200 installed\n", "%s program (%s): its answer" % (lang, kind))
        print("ok   a server and a client in C and C++, with pkg-config, shared and static: each ran", flush=True)

        # docs/guide.md's service, as printed there, in C and C++, against real upstreams.
        guide = guide_program()
        for lang, compiler, ext in [("C", "gcc", "c"), ("C++", cxx, "cc")]:
            src = os.path.join(tmp, "quote.%s" % ext)
            with open(src, "w") as f:
                f.write(guide)
            exe = os.path.join(tmp, "quote-%s" % ext)
            std = "-std=c17" if ext == "c" else "-std=c++17"
            run([compiler, std, "-Wall", "-Wextra", "-Werror", *san, *cflags, "-o", exe, src, *libs,
                 "-Wl,-rpath," + lib], what="the guide's service as %s" % lang)
            guide_run(exe, lang)
        print("ok   docs/guide.md's service (%d lines) built as C and C++ with pkg-config; All, timeout 504, "
              "502, Any and a graceful stop seen" % guide.count("\n"), flush=True)

        run(["make", "-s", "uninstall", "BUILD=" + BUILD, "PREFIX=" + prefix, *make_flags], what="make uninstall")
        left = [os.path.join(d, f) for d, _, fs in os.walk(prefix) for f in fs]
        eq(left, [], "files left after make uninstall")
        print("ok   make uninstall removed everything", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(test)
