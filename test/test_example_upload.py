#!/usr/bin/env python3
"""examples/upload end to end, with curl: a 20 MB streamed upload lands whole
(SHA-256) under its name, a second replaces it, a chunked one too; a bad name
is 400; DELETE is 204 then 404; a client that goes away mid-body leaves no
part file behind (closed and unlinked through the loop) and the server goes
on; the server's memory does not grow with the body (it is written piece by
piece, never held); SIGTERM exits 0. Run by test/run.sh under each backend."""
import os, shutil, signal, socket, subprocess, tempfile, time

from keeltest import CURL, EXAMPLES, Proc, Skip, check, eq, main, sha

exe = os.path.join(EXAMPLES, "upload")


def put(url, path, *extra):
    r = subprocess.run([CURL, "-sS", "-o", "-", "-w", "\n%{http_code}", "-T", path, *extra, url],
                       capture_output=True, timeout=60)
    body, _, code = r.stdout.rpartition(b"\n")
    return int(code or 0), body


def test():
    if not CURL:
        raise Skip("curl missing")
    tmp = tempfile.mkdtemp(prefix="keel-upload-")
    try:
        store = os.path.join(tmp, "store")
        data = os.urandom(20 << 20)
        src = os.path.join(tmp, "src.bin")
        with open(src, "wb") as f:
            f.write(data)
        with Proc([exe, "--listen", "127.0.0.1:0", "--dir", store], name="upload") as srv:
            base = "http://127.0.0.1:%d/files/" % srv.port
            eq(put(base + "w.bin", src), (201, b"stored %d bytes\n" % len(data)), "20 MB upload")
            rss0 = srv.rss_kib()  # (after one: the receive buffers the kernel fills are touched by now)
            eq(put(base + "a.bin", src), (201, b"stored %d bytes\n" % len(data)), "20 MB upload, again")
            with open(os.path.join(store, "a.bin"), "rb") as f:
                check(sha(f.read()) == sha(data), "the stored file is the body")
            grew = srv.rss_kib() - rss0
            check(grew < 4 * 1024, "RSS grew %d KiB during a 20 MB upload (pieces, never the whole body)" % grew)
            os.unlink(os.path.join(store, "w.bin"))
            with open(src, "wb") as f:
                f.write(data[:1000])
            eq(put(base + "a.bin", src)[0], 201, "a second upload of the name")
            eq(os.path.getsize(os.path.join(store, "a.bin")), 1000, "it replaced the first")
            eq(put(base + "c.bin", src, "-H", "Transfer-Encoding: chunked")[0], 201, "a chunked upload")
            eq(os.path.getsize(os.path.join(store, "c.bin")), 1000, "chunked, stored whole")
            for bad in (".hidden", "a%2Fb", "x" * 129):
                eq(put(base + bad, src)[0], 400, "bad name %r" % bad[:20])
            for want in (204, 404):
                r = subprocess.run([CURL, "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "DELETE", base + "c.bin"],
                                   capture_output=True, timeout=10)
                eq(int(r.stdout), want, "DELETE")
            print("ok   20 MB whole, replace, chunked, bad names, DELETE; RSS grew %d KiB" % grew, flush=True)

            # A client gone mid-body: the part file goes too.
            with open(src, "wb") as f:
                f.write(data)
            c = subprocess.Popen([CURL, "-sS", "--limit-rate", "2M", "-T", src, base + "cut.bin"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while not any(n.startswith(".cut.bin.part") for n in os.listdir(store)) and time.monotonic() < deadline:
                time.sleep(0.05)
            check(any(n.startswith(".cut.bin.part") for n in os.listdir(store)), "a part file while the body comes")
            time.sleep(0.5)
            c.kill()
            c.wait()
            deadline = time.monotonic() + 5
            while os.listdir(store) != ["a.bin"] and time.monotonic() < deadline:
                time.sleep(0.05)
            eq(sorted(os.listdir(store)), ["a.bin"], "files after a client left mid-body")
            eq(put(base + "b.bin", src)[0], 201, "the next upload")
            print("ok   a client gone mid-body: its part file closed and unlinked; the next one stored", flush=True)
            srv.stop_ok()

        # keel_http_main's stop, with two workers: on SIGTERM the listeners close at once (a new
        # client is refused), the upload in flight finishes within the grace period, exit 0.
        with open(src, "wb") as f:
            f.write(data[:3 << 20])
        with Proc([exe, "--listen", "127.0.0.1:0", "--dir", store, "--workers", "2"], name="upload") as srv:
            check("(2 workers" in srv.text(), "two workers: %r" % srv.text()[-300:])
            base = "http://127.0.0.1:%d/files/" % srv.port
            c = subprocess.Popen([CURL, "-sS", "-o", "-", "--limit-rate", "2M", "-T", src, base + "slow.bin"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            time.sleep(0.5)
            srv.signal(signal.SIGTERM)
            time.sleep(0.3)
            refused = False
            try:
                socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()
            except ConnectionRefusedError:
                refused = True
            check(refused, "a new client during the drain is refused")
            out, _ = c.communicate(timeout=20)
            eq(out, b"stored %d bytes\n" % (3 << 20), "the upload in flight at SIGTERM finished")
            eq(srv.wait(10), 0, "exit status after the drain")
            eq(os.path.getsize(os.path.join(store, "slow.bin")), 3 << 20, "and its file is whole")
        print("ok   keel_http_main, 2 workers: SIGTERM refuses new clients at once, drains, exits 0", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(test)
