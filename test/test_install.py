#!/usr/bin/env python3
"""libkeel as a C or C++ developer gets it.

Every public header compiles on its own, -pedantic -Werror, as C17 without
_GNU_SOURCE (gcc and clang) and as C++17 (g++ and clang++). `make install
PREFIX=<tmp>` puts the binary, libkeel.so (soname libkeel.so.0, with its
symlinks), libkeel.a, the headers, keel.pc and the man pages in place (each
page renders without a groff warning, each alias resolves through man(1),
each documented name is still in the API); against that tree a
small program -- an HTTP server and a client asking it over loopback --
builds with pkg-config as C and as C++, linked to libkeel.so and (with
pkg-config --static) to libkeel.a, and each runs and prints its answer. The
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

        run(["make", "-s", "uninstall", "BUILD=" + BUILD, "PREFIX=" + prefix, *make_flags], what="make uninstall")
        left = [os.path.join(d, f) for d, _, fs in os.walk(prefix) for f in fs]
        eq(left, [], "files left after make uninstall")
        print("ok   make uninstall removed everything", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(test)
