#!/usr/bin/env python3
"""Black-box tests of `keel echo`, run under the backend named by $KEEL_BACKEND.

Each sub-test starts its own server on 127.0.0.1 port 0 (the port is read
from the server's stderr), talks to it over real sockets, and kills only the
server it started, by PID, in a `finally`. Every wait has a deadline, so a hung
server is reported as a failure instead of hanging the run.

Sub-tests: (a) 1,000 concurrent connections with varied payloads, each
half-closed and expected to get its exact bytes back then EOF; (b) large
payloads on single connections, compared by SHA-256; (c) peers that reset
mid-stream do not disturb other connections; (d) bad command lines exit 2;
(e) SIGTERM stops gracefully; (f) --max-conns holds the excess in the backlog.

Usage: test_echo_server.py [name-substring ...]   (e.g. "a:" runs only (a))
Exit status: 0 pass, 1 fail, 77 skip (reason on the last line).
Environment: KEEL_BIN (default build/keel), KEEL_BACKEND (passed through).
"""
import errno
import os
import random
import resource
import selectors
import signal
import socket
import struct
import time

from keeltest import (BACKEND, CLI_LISTEN_RE, KEEL, Proc, Subtests, check, connect, echo_roundtrip, expect_eof,
                      fail, first_diff, main, recv_exact, run_keel)

SEED = int(os.environ.get("TEST_SEED", str(int(time.time()))))


def server(*args, workers=2):
    """One `keel echo` on a port of its choosing."""
    return Proc([KEEL, "echo", "--listen", "127.0.0.1:0", "--workers", workers, *args], name="keel echo",
                listen=CLI_LISTEN_RE)


def raise_nofile(want):
    """Raise RLIMIT_NOFILE's soft limit toward want (capped by the hard limit); return the result."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return soft


# --- (a) ------------------------------------------------------------------------------------------

class Conn:
    __slots__ = ("i", "sock", "payload", "cuts", "sent", "nwrites", "got", "state")

    def __init__(self, i, sock, payload, cuts):
        self.i, self.sock, self.payload, self.cuts = i, sock, payload, cuts
        self.sent = 0
        self.nwrites = 0
        self.got = bytearray()
        self.state = "connecting"  # -> sending -> draining -> done

    def describe(self):
        return "conn %d: %s, sent %d/%d in %d writes, got %d" % (
            self.i, self.state, self.sent, len(self.payload), self.nwrites, len(self.got))


def payload_sizes(rng, n):
    sizes = [1, 2, 65535, 65536]
    while len(sizes) < n:
        if rng.random() < 0.4:
            sizes.append(int(2 ** rng.uniform(0, 16)))  # log-uniform: plenty of small ones
        else:
            sizes.append(rng.randint(1, 65536))
    rng.shuffle(sizes)
    return sizes[:n]


def test_concurrent(nconns=1000, deadline_s=60.0):
    limit = raise_nofile(nconns * 2 + 256)  # our sockets, and the server's, which inherits it
    if limit < nconns + 64:
        print("  note: RLIMIT_NOFILE hard limit %d, using %d connections" % (limit, limit - 64))
        nconns = limit - 64
    rng = random.Random(SEED)
    srv = server("--max-conns", str(nconns * 2))
    sel = selectors.DefaultSelector()
    conns = []
    try:
        for i, size in enumerate(payload_sizes(rng, nconns)):
            # A distinct payload: a 4-byte index prefix (where it fits), then random bytes.
            payload = (struct.pack(">I", i) + rng.randbytes(size))[:size] if size >= 4 else rng.randbytes(size)
            nwrites = min(size, rng.randint(2, 6))
            cuts = sorted(set(rng.sample(range(1, size), nwrites - 1))) + [size] if size > 1 else [size]
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            err = s.connect_ex(("127.0.0.1", srv.port))
            check(err in (0, errno.EINPROGRESS), "conn %d: connect: %s" % (i, os.strerror(err)))
            c = Conn(i, s, payload, cuts)
            conns.append(c)
            sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
        total = sum(len(c.payload) for c in conns)
        print("  %d connections, %d bytes, seed %d" % (len(conns), total, SEED))

        end = time.monotonic() + deadline_s
        pending = len(conns)
        while pending:
            left = end - time.monotonic()
            if left <= 0:
                stuck = [c for c in conns if c.state != "done"]
                fail("%d of %d connections unfinished after %.0f s (server alive: %s); first few:\n%s"
                     % (len(stuck), len(conns), deadline_s, srv.alive(),
                        "\n".join("    " + c.describe() for c in stuck[:10])))
            for key, ev in sel.select(min(left, 1.0)):
                c = key.data
                s = c.sock
                if c.state == "connecting":
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    check(err == 0, "conn %d: connect failed: %s" % (c.i, os.strerror(err)))
                    c.state = "sending"
                if ev & selectors.EVENT_WRITE and c.state == "sending":
                    # One write per chunk, so every payload goes out in several writes.
                    stop = next(x for x in c.cuts if x > c.sent)
                    try:
                        n = s.send(memoryview(c.payload)[c.sent:stop])
                    except BlockingIOError:
                        n = 0
                    except OSError as e:
                        fail("%s: send failed: %s" % (c.describe(), e))
                    c.sent += n
                    c.nwrites += 1 if n else 0
                    if c.sent == len(c.payload):
                        s.shutdown(socket.SHUT_WR)
                        c.state = "draining"
                        sel.modify(s, selectors.EVENT_READ, c)
                if ev & selectors.EVENT_READ:
                    try:
                        chunk = s.recv(1 << 17)
                    except BlockingIOError:
                        continue
                    except OSError as e:
                        fail("%s: recv failed: %s" % (c.describe(), e))
                    if chunk:
                        at = len(c.got)
                        c.got += chunk
                        check(len(c.got) <= len(c.payload), "%s: more bytes back than sent" % c.describe())
                        if c.got[at:] != c.payload[at:len(c.got)]:
                            off = at + first_diff(c.got[at:], c.payload[at:len(c.got)])
                            fail("%s: wrong byte at offset %d: got %#04x, sent %#04x"
                                 % (c.describe(), off, c.got[off], c.payload[off]))
                        continue
                    check(c.state == "draining", "%s: EOF before the client finished sending" % c.describe())
                    check(len(c.got) == len(c.payload), "%s: EOF after %d of %d bytes"
                          % (c.describe(), len(c.got), len(c.payload)))
                    c.state = "done"
                    sel.unregister(s)
                    s.close()
                    pending -= 1
        check(srv.alive(), "server exited during the test; stderr:\n" + srv.shown())
        print("  all %d echoed exactly, then EOF" % len(conns))
    finally:
        sel.close()
        for c in conns:
            c.sock.close()
        srv.kill()


# --- (b) ------------------------------------------------------------------------------------------

def test_large_payloads():
    srv = server()
    try:
        for size in (1, 1024, 64 << 10, 1 << 20, 4 << 20):
            echo_roundtrip(srv.port, os.urandom(size), "%d-byte payload" % size)
            print("  %d bytes: ok" % size)
        check(srv.alive(), "server exited; stderr:\n" + srv.shown())
    finally:
        srv.kill()


# --- (c) ------------------------------------------------------------------------------------------

def reset(s):
    """Close with SO_LINGER {on, 0}: the kernel sends RST instead of FIN."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def test_reset_peers():
    srv = server()
    good = []
    try:
        good = [connect(srv.port, 10) for _ in range(4)]

        def round_on_good(tag):
            for j, s in enumerate(good):
                msg = ("%s/%d:" % (tag, j)).encode() + os.urandom(4096)
                s.sendall(msg)
                back = recv_exact(s, len(msg), "good conn %d, %s" % (j, tag))
                check(back == msg, "good conn %d, %s: echo differs at offset %d"
                      % (j, tag, first_diff(back, msg)))

        round_on_good("before")
        for k in range(24):
            bad = connect(srv.port, 10)
            mode = k % 3
            if mode == 1:
                # Mid-stream: part of the echo read, more sent, then reset.
                bad.sendall(os.urandom(32 << 10))
                recv_exact(bad, 1000, "resetting conn %d" % k)
                bad.sendall(os.urandom(8 << 10))
            elif mode == 2:
                # Reset while the server has a backlog to send us: we stop reading.
                bad.setblocking(False)
                blob = os.urandom(64 << 10)
                sent = 0
                for _ in range(64):
                    try:
                        sent += bad.send(blob)
                    except BlockingIOError:
                        break
            # mode 0: reset right after connecting.
            reset(bad)
            if k % 8 == 7:
                round_on_good("after %d resets" % (k + 1))
        time.sleep(0.2)  # let the server see the last resets
        check(srv.alive(), "server exited after peer resets; stderr:\n" + srv.shown())
        round_on_good("end")
        for j, s in enumerate(good):
            s.shutdown(socket.SHUT_WR)
            expect_eof(s, "good conn %d" % j)
        print("  4 connections unaffected by 24 resets")
        echo_roundtrip(srv.port, os.urandom(256 << 10), "new connection after resets")
        print("  new connections still served")
    finally:
        for s in good:
            s.close()
        srv.kill()


# --- (d) ------------------------------------------------------------------------------------------

def test_bad_flags():
    # Where the flag under test is not --listen, port 0 keeps a regression from taking a real port.
    cases = [
        (["echo", "--bogus"], "usage"),
        (["echo", "--listen", "127.0.0.1:0", "--workers", "0"], "--workers"),
        (["echo", "--listen", "127.0.0.1:0", "--workers", "two"], "--workers"),
        (["echo", "--listen", "127.0.0.1:0", "--max-conns", "0"], "--max-conns"),
        (["echo", "--listen", "127.0.0.1:0", "--grace-ms", "-1"], "--grace-ms"),
        (["echo", "--listen", "nonsense"], "nonsense"),
        (["echo", "--listen", "127.0.0.1:99999"], "--listen"),
        (["echo", "--listen", "127.0.0.1:0", "stray"], "stray"),
        (["nosuchcmd"], "nosuchcmd"),
        ([], "usage"),
    ]
    for args, needle in cases:
        r = run_keel(*args)
        rc, err = r.returncode, r.stderr
        shown = " ".join(["keel", *args])
        check(rc == 2, "`%s`: exit status %d, expected 2; stderr: %r" % (shown, rc, err))
        check(needle in err, "`%s`: stderr does not mention %r: %r" % (shown, needle, err))
        print("  `%s` -> 2: %s" % (shown, err.strip().splitlines()[0]))
    r = run_keel("echo", "--help")
    rc, out, err = r.returncode, r.stdout, r.stderr
    check(rc == 0, "`keel echo --help`: exit status %d, expected 0; stderr: %r" % (rc, err))
    check("--listen" in out, "`keel echo --help`: usage not on stdout: %r" % out)
    print("  `keel echo --help` -> 0")


# --- (e) ------------------------------------------------------------------------------------------

def test_graceful_stop():
    # An idle connection is closed when the grace period ends, and the server exits 0.
    srv = server("--grace-ms", "500")
    s = None
    try:
        s = connect(srv.port, 10)
        s.sendall(b"ping")
        check(recv_exact(s, 4, "idle conn") == b"ping", "idle conn: bad echo")
        t0 = time.monotonic()
        srv.stop_ok("--grace-ms 500, an idle connection", timeout=10)
        try:
            tail = s.recv(100)
            check(tail == b"", "idle conn: expected EOF after stop, got %r" % tail)
        except ConnectionResetError:
            pass  # a reset is also a close
        except socket.timeout:
            fail("idle conn: neither EOF nor reset after the server exited")
        print("  idle connection closed, exit 0 after %.2f s (grace 500 ms)" % (time.monotonic() - t0))
    finally:
        if s:
            s.close()
        srv.kill()

    # A connection active at SIGTERM may finish within the grace period; new ones are refused;
    # the server exits as soon as the last one closes, without waiting out the grace.
    srv = server("--grace-ms", "30000")
    s = None
    try:
        s = connect(srv.port, 10)
        s.sendall(b"before")
        check(recv_exact(s, 6, "active conn") == b"before", "active conn: bad echo")
        srv.terminate()
        end = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()
            except (ConnectionRefusedError, ConnectionResetError):
                break  # refused, or reset as the listener closed with it in the backlog
            check(time.monotonic() < end, "new connections still accepted 10 s after SIGTERM")
            time.sleep(0.05)
        payload = os.urandom(200 << 10)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        back = recv_exact(s, len(payload), "active conn after SIGTERM")
        check(back == payload, "active conn after SIGTERM: echo differs at offset %d" % first_diff(back, payload))
        expect_eof(s, "active conn after SIGTERM")
        s.close()
        s = None
        srv.expect_exit("its last connection closed after SIGTERM (--grace-ms 30000: it should exit once no "
                        "connections are left, not wait out the grace period)", 10)
        print("  connection finished within grace, new ones refused, exit 0 once it closed")
    finally:
        if s:
            s.close()
        srv.kill()

    srv = server("--grace-ms", "500")
    try:
        srv.stop_ok("no connections", timeout=5)
        print("  no connections: exit 0 promptly")
    finally:
        srv.kill()

    srv = server("--grace-ms", "500")
    try:
        srv.signal(signal.SIGINT)
        srv.expect_exit("SIGINT", 5)
        print("  SIGINT: exit 0")
    finally:
        srv.kill()


# --- (f) ------------------------------------------------------------------------------------------

def test_max_conns():
    # --max-conns is per worker: one worker makes the limit the server's.
    srv = server("--max-conns", "5", workers=1)
    socks = []
    try:
        socks = [connect(srv.port, 10) for _ in range(10)]  # connect() completes in the backlog
        msgs = [("conn %d:" % i).encode() + os.urandom(1000) for i in range(10)]
        for i in range(5):
            socks[i].sendall(msgs[i])
            check(recv_exact(socks[i], len(msgs[i]), "conn %d of the first 5" % i) == msgs[i],
                  "conn %d: bad echo" % i)
        # The other 5 must wait in the backlog: data sent now is not echoed yet.
        for i in range(5, 10):
            socks[i].sendall(msgs[i])
        for i in range(5, 10):
            socks[i].settimeout(0.3)
            try:
                early = socks[i].recv(100)
                fail("conn %d was served while 5 others were open (--max-conns 5): got %r"
                     % (i, early[:20]))
            except socket.timeout:
                pass
            socks[i].settimeout(10)
        print("  first 5 echoed, last 5 held back")
        for i in range(5):
            socks[i].shutdown(socket.SHUT_WR)
            expect_eof(socks[i], "conn %d" % i)
            socks[i].close()
        for i in range(5, 10):
            back = recv_exact(socks[i], len(msgs[i]), "conn %d after the first 5 closed" % i)
            check(back == msgs[i], "conn %d: bad echo" % i)
            more = os.urandom(5000)
            socks[i].sendall(more)
            check(recv_exact(socks[i], len(more), "conn %d" % i) == more, "conn %d: bad second echo" % i)
            socks[i].shutdown(socket.SHUT_WR)
            expect_eof(socks[i], "conn %d" % i)
        print("  last 5 served once the first 5 closed")
    finally:
        for s in socks:
            s.close()
        srv.kill()


TESTS = [
    ("a: 1000 concurrent connections", test_concurrent),
    ("b: large payloads", test_large_payloads),
    ("c: peers resetting mid-stream", test_reset_peers),
    ("d: bad flags", test_bad_flags),
    ("e: graceful stop", test_graceful_stop),
    ("f: --max-conns", test_max_conns),
]


def test():
    check(os.access(KEEL, os.X_OK), "KEEL_BIN=%s is not an executable (run make first)" % KEEL)
    print("backend: %s" % (BACKEND or "(auto)"))
    sub = Subtests()
    for name, fn in TESTS:
        sub.run(name, fn)
    return sub.status()


if __name__ == "__main__":
    main(test)
