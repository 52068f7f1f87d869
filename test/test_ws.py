#!/usr/bin/env python3
"""WebSocket (RFC 6455) in the server, end to end against build/examples/chat: Python's
websockets package (Debian python3-websockets) for whole conversations, and raw frames written
by hand for the protocol's edge cases -- the case groups of the Autobahn|Testsuite that apply
to a server (docs/websocket.md lists them).

Each part asserts one behaviour; every wait has a deadline and every loop a bound.
Runs under the backend in KEEL_BACKEND. Usage: test_ws.py [part-name-substring ...]
Exit status: 0 pass, 1 fail, 77 skip (python3-websockets missing)."""
import asyncio, base64, hashlib, json, os, re, shutil, signal, socket, ssl, struct, subprocess, sys, tempfile, time

try:
    import websockets
except ImportError:  # a Python that does not see Debian's python3-websockets: the system's does
    if os.path.realpath(sys.executable) != os.path.realpath("/usr/bin/python3") and os.access("/usr/bin/python3", os.X_OK):
        os.execv("/usr/bin/python3", ["/usr/bin/python3", *sys.argv])
    print("SKIP: no python3-websockets (Debian: apt-get install python3-websockets)", flush=True)
    sys.exit(77)

from keeltest import EXAMPLES, KEEL, Chromium, Proc, Skip, Subtests, check, connect, eq, exchange, fail, main

CHAT = os.path.join(EXAMPLES, "chat")
WS_TESTSRV = os.path.join(os.path.dirname(EXAMPLES), "test", "ws_testsrv")
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "www", "chat.html")
if not os.path.exists(PAGE):  # (run from the build directory's copy)
    PAGE = os.path.join(os.getcwd(), "www", "chat.html")
UPSTREAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ws_upstream.py")
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MIB = 1 << 20

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0, 1, 2, 8, 9, 10


def start(*args):
    return Proc([CHAT, "--listen", "127.0.0.1:0", "--page", PAGE, *args], name="chat")


# ---- Raw frames -------------------------------------------------------------------------------

def accept_of(key):
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def frame(op, payload=b"", fin=True, mask=True, rsv=0, len_form=None):
    """One frame as a client writes it (masked unless mask=False). len_form forces the 16- or
    64-bit length form (126, 127)."""
    b0 = (0x80 if fin else 0) | (rsv << 4) | op
    n = len(payload)
    form = len_form or (n if n < 126 else 126 if n < 65536 else 127)
    head = bytes([b0, (0x80 if mask else 0) | form])
    if form == 126:
        head += struct.pack(">H", n)
    elif form == 127:
        head += struct.pack(">Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i & 3] for i, b in enumerate(payload))


def read_head(s):
    """An answer's head from s: (head, the bytes after it, whether the head ended before s
    closed: if not, head is all that came)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            return buf, b"", False
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest, True


class Conn:
    """A raw WebSocket client connection: handshake, frames out, frames in."""

    def __init__(self, port, path="/echo", extra=b"", timeout=10, rcvbuf=None):
        if rcvbuf:  # (before connecting: the window it advertises)
            self.s = socket.socket()
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.s.settimeout(timeout)
            self.s.connect(("127.0.0.1", port))
        else:
            self.s = connect(port, timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path, key)).encode() + extra)
        head, self.buf, whole = read_head(self.s)
        if not whole:
            fail("connection closed during the handshake: %r" % head)
        lines = head.decode("latin-1").split("\r\n")
        eq(lines[0].split(" ")[1], "101", "handshake status (%s)" % lines[0])
        hdrs = {l.split(":", 1)[0].lower(): l.split(":", 1)[1].strip() for l in lines[1:]}
        eq(hdrs.get("sec-websocket-accept"), accept_of(key), "Sec-WebSocket-Accept")
        eq(hdrs.get("upgrade", "").lower(), "websocket", "Upgrade: websocket")

    def send(self, data):
        self.s.sendall(data)

    def _need(self, n):
        while len(self.buf) < n:
            d = self.s.recv(1 << 20)
            if not d:
                raise EOFError
            self.buf += d

    def frame(self):
        """The next frame: (fin, opcode, payload). EOFError at the end of the input."""
        self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        check(not b1 & 0x80, "a server's frames are not masked")
        n, off = b1 & 0x7F, 2
        if n == 126:
            self._need(4)
            n, off = struct.unpack(">H", self.buf[2:4])[0], 4
        elif n == 127:
            self._need(10)
            n, off = struct.unpack(">Q", self.buf[2:10])[0], 10
        self._need(off + n)
        payload, self.buf = self.buf[off:off + n], self.buf[off + n:]
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def message(self):
        """The next data message whole (answering nothing): (opcode, payload)."""
        fin, op, data = self.frame()
        while not fin:
            fin, _, more = self.frame()
            data += more
        return op, data

    def expect_close(self, code, what):
        """Frames until the server's close: its code is code, then the connection ends."""
        for _ in range(10000):
            try:
                _, op, data = self.frame()
            except EOFError:
                fail("%s: the connection ended without a close frame" % what)
            if op == CLOSE:
                got = struct.unpack(">H", data[:2])[0] if len(data) >= 2 else 1005
                eq(got, code, "%s: close code" % what)
                break
        else:
            fail("%s: no close frame" % what)
        self.s.settimeout(5)
        try:
            self.send(frame(CLOSE, struct.pack(">H", 1000)))
        except OSError:
            pass
        try:
            while self.s.recv(65536):
                pass
        except ConnectionResetError:
            pass
        self.s.close()

    def close(self):
        self.s.close()


def ws_url(srv, path="/echo"):
    return "ws://127.0.0.1:%d%s" % (srv.port, path)


def run(coro, timeout=120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


# ---- Parts ----------------------------------------------------------------------------------------

def handshake_refusals(srv):
    def raw(req):
        """One answer to req: (status, head); and whether the connection closed after it."""
        s = connect(srv.port)
        s.sendall(req)
        s.settimeout(5)
        head, body, _ = read_head(s)
        n = next((int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")), 0)
        while len(body) < n:
            body += s.recv(65536)
        s.settimeout(0.5)  # (a close comes at once; a kept connection stays quiet)
        try:
            closed = s.recv(1) == b""
        except socket.timeout:
            closed = False
        s.close()
        return head + b"\r\n", closed
    key = base64.b64encode(os.urandom(16)).decode()
    base = "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\n" % key
    cases = [
        ("GET /echo HTTP/1.1\r\nHost: x\r\n\r\n", "426", "no Upgrade"),
        ("GET /echo HTTP/1.1\r\n" + base + "\r\n", "426", "no Sec-WebSocket-Version"),
        ("GET /echo HTTP/1.1\r\n" + base + "Sec-WebSocket-Version: 8\r\n\r\n", "426", "version 8"),
        ("GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Version: 13\r\n\r\n", "400", "no Sec-WebSocket-Key"),
        ("GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n", "400", "a key that is not 16 bytes"),
        ("GET /echo HTTP/1.0\r\n" + base + "Sec-WebSocket-Version: 13\r\n\r\n", "400", "HTTP/1.0"),
        ("GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n"
         "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % key, "400", "Connection: close beside Upgrade"),
    ]
    for i, (req, want, what) in enumerate(cases):
        head, closed = raw(req.encode())
        eq(head.split(b" ", 2)[1].decode() if head else "", want, what)
        if i:  # (an upgrade asked for and refused: what follows may not be HTTP)
            check(b"\r\nconnection: close\r\n" in head.lower() and closed, "%s: then the connection closes" % what)
        else:
            check(not closed, "a plain GET refused 426 keeps its connection")
    # An upgrade a route does not take (h2c to the page): answered as HTTP, then the connection
    # closes -- the bytes behind it are never read as a next request.
    head, closed = raw(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                       b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\nGET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    check(head.startswith(b"HTTP/1.1 200 ") and closed, "an upgrade not taken: 200, then closed (%r)" % head[:40])
    head, _ = raw(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n")
    check(head.startswith(b"HTTP/1.1 501 "), "CONNECT: 501")
    head, _ = raw(("GET /echo HTTP/1.1\r\n" + base + "Sec-WebSocket-Version: 7\r\n\r\n").encode())
    check(b"\r\nSec-WebSocket-Version: 13\r\n" in head, "426 says the version spoken")
    # Frames sent right behind the handshake, before the 101 arrived, are not lost.
    c = Conn(srv.port, extra=frame(TEXT, b"early") + frame(BINARY, b"\x00\x01"))
    eq(c.message(), (TEXT, b"early"), "a message sent with the handshake")
    eq(c.message(), (BINARY, b"\x00\x01"), "and the one after it")
    c.close()


def echo_sizes(srv):
    async def go():
        async with websockets.connect(ws_url(srv), max_size=None, compression=None) as ws:
            for n in (0, 1, 125, 126, 127, 65535, 65536, 65537, MIB, 16 * MIB):
                b = os.urandom(n)
                await ws.send(b)
                eq(await ws.recv(), b, "binary %d B echoed" % n)
            for n in (0, 1, 125, 126, 65536, MIB):
                t = ("aé€𝄞" * (n // 10 + 1))[:max(n // 4, 0)]
                await ws.send(t)
                eq(await ws.recv(), t, "text of %d characters echoed" % len(t))
    run(go())


def fragments(srv):
    c = Conn(srv.port)
    # Text in three fragments with a ping between them (5.x, 6.x): one message, the pong first.
    c.send(frame(TEXT, "héllo, ".encode(), fin=False) + frame(PING, b"mid") +
           frame(CONT, b"frag", fin=False) + frame(CONT, "mented €".encode()))
    _, op, data = c.frame()
    eq((op, data), (PONG, b"mid"), "a ping between fragments is answered at once")
    eq(c.message(), (TEXT, "héllo, fragmented €".encode()), "three fragments, one message")
    # A UTF-8 character split across fragments is fine.
    e = "€".encode()
    c.send(frame(TEXT, e[:1], fin=False) + frame(CONT, e[1:2], fin=False) + frame(CONT, e[2:]))
    eq(c.message(), (TEXT, e), "a character split across three fragments")
    # Frames written one byte at a time: every header and payload boundary split.
    data = frame(BINARY, os.urandom(300)) + frame(TEXT, b"x" * 70000, len_form=127) + frame(PING, b"p")
    for i in range(len(data[:400])):
        c.send(data[i:i + 1])
    c.send(data[400:])
    eq(c.message()[0], BINARY, "a frame sent a byte at a time")
    # (the pong may overtake the echo queued before it: control frames go ahead of queued messages)
    got = sorted([c.message(), c.message()])
    check(got[0] == (TEXT, b"x" * 70000), "a 64-bit length for a short payload is taken")
    check(got[1] == (PONG, b"p"), "a ping sent a byte at a time is answered")
    # Many fragments of empty payloads, then the end.
    c.send(frame(BINARY, b"", fin=False) + b"".join(frame(CONT, b"", fin=False) for _ in range(100)) +
           frame(CONT, b"end"))
    eq(c.message(), (BINARY, b"end"), "a message of 102 fragments, most empty")
    c.close()


def pings(srv):
    c = Conn(srv.port)
    c.send(frame(PING, b"x" * 125))
    eq(c.frame()[1:], (PONG, b"x" * 125), "a ping of 125 bytes: its pong carries them")
    c.send(frame(PONG, b"unasked") + frame(TEXT, b"after"))
    eq(c.message(), (TEXT, b"after"), "an unsolicited pong is ignored")
    c.send(frame(PING) + frame(TEXT, b"t"))
    eq(c.frame()[1:], (PONG, b""), "an empty ping")
    eq(c.message(), (TEXT, b"t"), "then the message")
    # Ten pings at once: at least the last is answered, never more pongs than pings.
    c.send(b"".join(frame(PING, b"%d" % i) for i in range(10)) + frame(TEXT, b"end"))
    pongs = []
    while True:
        _, op, data = c.frame()
        if op != PONG:
            eq((op, data), (TEXT, b"end"), "the message after ten pings")
            break
        pongs.append(data)
    check(1 <= len(pongs) <= 10 and pongs[-1] == b"9", "ten pings: pongs %r end with the last" % pongs)
    c.close()


def server_ping(srv_unused):
    # A server pinging every 300 ms drops a client that never answers within 300 ms more.
    with start("--ping-ms", "300") as srv:
        c = Conn(srv.port)
        t0 = time.monotonic()
        _, op, _ = c.frame()
        eq(op, PING, "the server pings an idle connection")
        check(0.2 < time.monotonic() - t0 < 3, "after the interval (%.2f s)" % (time.monotonic() - t0))
        c.send(frame(PONG))
        _, op, _ = c.frame()
        eq(op, PING, "answered: the next ping comes")
        c.s.settimeout(5)
        t1 = time.monotonic()
        try:
            while True:  # never answer: the connection is dropped
                _, op, _ = c.frame()
        except (EOFError, ConnectionResetError):
            pass
        check(time.monotonic() - t1 < 2, "a silent peer is dropped after the timeout (%.2f s)" % (time.monotonic() - t1))
        c.close()
        srv.stop_ok()


def closes(srv):
    # The client closes with a code and reason: the server answers with the same code.
    async def go():
        async with websockets.connect(ws_url(srv)) as ws:
            await ws.close(4000, "bye")
            eq(ws.close_code, 4000, "the server's close answers with the client's code")
    run(go())
    c = Conn(srv.port)
    c.send(frame(CLOSE))
    _, op, data = c.frame()
    eq((op, data), (CLOSE, b""), "a close without a status is answered without one")
    c.close()
    for code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999):
        c = Conn(srv.port)
        c.send(frame(CLOSE, struct.pack(">H", code) + b"reason"))
        c.expect_close(code, "close %d echoed" % code)
    for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535):
        c = Conn(srv.port)
        c.send(frame(CLOSE, struct.pack(">H", code)))
        c.expect_close(1002, "close %d may not be sent: 1002" % code)
    c = Conn(srv.port)
    c.send(frame(CLOSE, b"\x03"))
    c.expect_close(1002, "a close payload of one byte: 1002")
    c = Conn(srv.port)
    c.send(frame(CLOSE, struct.pack(">H", 1000) + b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"))
    c.expect_close(1007, "a close reason that is not UTF-8: 1007")
    c = Conn(srv.port)
    c.send(frame(CLOSE, struct.pack(">H", 1000) + "κόσμε".encode()))
    c.expect_close(1000, "a close reason in UTF-8 is fine")
    # Data after the close is not answered: the close is the last thing read.
    c = Conn(srv.port)
    c.send(frame(CLOSE, struct.pack(">H", 1000)) + frame(TEXT, b"late") + frame(PING, b"late"))
    c.expect_close(1000, "frames after a close are dropped")


def violations(srv):
    """Each breaks the protocol (RFC 6455 5.1-5.5, 5.6, 8.1): the server closes with the code."""
    cases = [
        ("an unmasked frame", frame(TEXT, b"x", mask=False), 1002),
        ("RSV1 set", frame(TEXT, b"x", rsv=4), 1002),
        ("RSV2 set", frame(TEXT, b"x", rsv=2), 1002),
        ("RSV3 set on a ping", frame(PING, b"", rsv=1), 1002),
        ("a control frame of 126 bytes", frame(PING, b"x" * 126), 1002),
        ("a fragmented ping", frame(PING, b"x", fin=False), 1002),
        ("a fragmented close", frame(CLOSE, b"\x03\xe8", fin=False), 1002),
        ("a continuation with nothing to continue", frame(CONT, b"x"), 1002),
        ("a text message inside a fragmented one", frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"), 1002),
        ("a binary message inside a fragmented one", frame(BINARY, b"a", fin=False) + frame(BINARY, b"b"), 1002),
        ("a 64-bit length with its top bit set",
         bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 63) + os.urandom(4), 1002),
        ("text that is not UTF-8 (a lone continuation byte)", frame(TEXT, b"ab\x80cd"), 1007),
        ("text with a UTF-16 surrogate", frame(TEXT, b"\xed\xa0\x80"), 1007),
        ("text with an overlong encoding", frame(TEXT, b"\xc0\xaf"), 1007),
        ("text past U+10FFFF", frame(TEXT, b"\xf4\x90\x80\x80"), 1007),
        ("text ending inside a character", frame(TEXT, b"\xe2\x82"), 1007),
        ("fragmented text ending inside a character", frame(TEXT, b"a", fin=False) + frame(CONT, b"\xe2\x82"), 1007),
    ]
    for op in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15):
        cases.append(("reserved opcode %d" % op, frame(op, b"x"), 1002))
    for what, data, code in cases:
        c = Conn(srv.port)
        c.send(data)
        c.expect_close(code, what)
    # Fail fast: a bad byte in the first fragment closes before the message ends.
    c = Conn(srv.port)
    c.send(frame(TEXT, b"ok\xff", fin=False))
    c.expect_close(1007, "invalid UTF-8 in a first fragment, the message unfinished")
    # Over the message limit: 16 MiB is echoed (echo_sizes), one byte more is 1009, whole or fragmented.
    c = Conn(srv.port)
    c.send(bytes([0x82, 0xFF]) + struct.pack(">Q", 16 * MIB + 1) + os.urandom(4))
    c.expect_close(1009, "a frame announcing 16 MiB + 1")
    c = Conn(srv.port)
    c.send(frame(BINARY, b"x" * (8 * MIB), fin=False) + frame(CONT, b"x" * (8 * MIB), fin=False))
    c.send(frame(CONT, b"y"))
    c.expect_close(1009, "fragments adding up to 16 MiB + 1")
    # The room's lines are 4096 bytes at most (its own limit, said with 1009 by keel).
    c = Conn(srv.port, "/ws")
    c.send(frame(TEXT, b"x" * 4097))
    c.expect_close(1009, "a chat line over the room's message_max")


def many(srv):
    async def one(i):
        async with websockets.connect(ws_url(srv), compression=None, open_timeout=30) as ws:
            await ws.send("m%d" % i)
            eq(await ws.recv(), "m%d" % i, "echo on connection %d" % i)
            return ws

    async def go():
        conns = []
        for i in range(1000):
            conns.append(await websockets.connect(ws_url(srv), compression=None, open_timeout=30))
        await asyncio.gather(*(c.send("m%d" % i) for i, c in enumerate(conns)))
        got = await asyncio.gather(*(c.recv() for c in conns))
        eq(got, ["m%d" % i for i in range(1000)], "1,000 connections each echoed")
        await asyncio.gather(*(c.close() for c in conns))
    run(go(), timeout=120)


def room(srv):
    async def go():
        a = await websockets.connect(ws_url(srv, "/ws"))
        b = await websockets.connect(ws_url(srv, "/ws"))
        joined = [await a.recv(), await a.recv(), await b.recv()]
        check(all(j.startswith("* member") and "joined" in j for j in joined), "joins said: %r" % joined)
        await a.send("hello from a")
        await b.send("hello from b")
        seen_a = {await a.recv(), await a.recv()}
        seen_b = {await b.recv(), await b.recv()}
        check(any(m.endswith(": hello from a") for m in seen_a) and any(m.endswith(": hello from b") for m in seen_a),
              "a sees both messages, its own too: %r" % seen_a)
        eq(seen_a, seen_b, "b sees the same")
        await b.close()
        left = await a.recv()
        check("left" in left, "a leave is said: %r" % left)
        await a.close()
    run(go())


def slow_member(srv):
    """A member that stops reading is dropped once its queue is full; the room goes on."""
    slow = Conn(srv.port, "/ws", rcvbuf=4096)

    async def go():
        fast = await websockets.connect(ws_url(srv, "/ws"))
        line = "x" * 4000
        dropped = False
        t0 = time.monotonic()
        for i in range(5000):  # (the slow one's kernel buffers and its 256 KiB queue: ~1,200 lines)
            await fast.send(line + str(i))
            while True:  # read up to this line's own echo (the fast member keeps up), looking for the leave
                m = await asyncio.wait_for(fast.recv(), 10)
                dropped = dropped or m.startswith("* ") and "left" in m
                if m.endswith(line + str(i)):
                    break
            if dropped:
                break
        check(dropped, "the slow member was dropped (after %d lines, %.1f s)" % (i + 1, time.monotonic() - t0))
        await fast.send("still here")
        for _ in range(100):
            m = await asyncio.wait_for(fast.recv(), 5)
            if m.endswith("still here"):
                break
        else:
            fail("the room goes on after the drop")
        await fast.close()
        return i + 1
    n = run(go())
    # The slow one finds a close (1008, too slow) after what was queued for it, or a reset.
    slow.s.settimeout(10)
    code = None
    try:
        for _ in range(100000):
            _, op, data = slow.frame()
            if op == CLOSE:
                code = struct.unpack(">H", data[:2])[0]
                break
    except (EOFError, ConnectionResetError):
        pass
    check(code in (1008, None), "the slow member's close: %r" % code)
    slow.close()
    print("     slow member dropped after %d lines of 4000 B" % n, flush=True)


def stop(srv_unused):
    """SIGTERM: each open connection gets close 1001, and the process exits 0."""
    with start() as srv:
        c = Conn(srv.port)
        c.send(frame(TEXT, b"before"))
        eq(c.message(), (TEXT, b"before"), "echo before the stop")
        srv.p.send_signal(signal.SIGTERM)
        c.expect_close(1001, "a stop")
        srv.expect_exit("after its connections closed")


# ---- Through keel proxy ------------------------------------------------------------------------

class Upstream(Proc):
    """test/ws_upstream.py: .port (websockets), .raw_port (raw upgrades); "closed" lines counted."""

    def __init__(self):
        super().__init__(["/usr/bin/python3", UPSTREAM], name="ws_upstream",
                         listen=re.compile(r"(?P<host>)ports (?P<port>\d+) (?P<raw>\d+)"))
        self.raw_port = int(self.wait_line(r"ports \d+ (\d+)", 5).group(1))

    def closed(self):
        return sum(1 for l in list(self.lines) if l == "closed")


def proxy(tmp, up_port, extra=""):
    path = os.path.join(tmp, "proxy%d.conf" % time.monotonic_ns())
    with open(path, "w") as f:
        f.write("[server]\nlisten = 127.0.0.1:0\nworkers = 1\nqueue_delay_max_us = 0\n\n"
                "[upstream u]\nserver = 127.0.0.1:%d\n%s\n\n[route /]\nupstream = u\n\n"
                "[route /_keel/status]\nmatch = exact\nhandler = status\n" % (up_port, extra))
    return Proc([KEEL, "-c", path], name="keel proxy")


def status(port):
    data = exchange(port, b"GET /_keel/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return {l.split()[0].split("{")[0]: int(l.split()[-1]) for l in data.decode().split("\n")
            if l.startswith("proxy_tunnel")}


def until(cond, timeout, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def proxy_echo(tmp):
    with Upstream() as up, proxy(tmp, up.port) as px:
        async def go():
            async with websockets.connect(ws_url(px), max_size=None, compression=None) as ws:
                for n in (0, 1, 126, 65536, MIB, 16 * MIB):
                    b = os.urandom(n)
                    await ws.send(b)
                    eq(await ws.recv(), b, "binary %d B through the proxy" % n)
                await ws.send("héllo")
                eq(await ws.recv(), "héllo", "text through the proxy")
                await ws.ping(b"p")
        run(go())
        st = status(px.port)
        eq(st.get("proxy_tunnels_total"), 1, "the status page counts the tunnel")
        check(st.get("proxy_tunnel_bytes_up_total", 0) > 17 * MIB and
              st.get("proxy_tunnel_bytes_down_total", 0) > 17 * MIB, "and its bytes both ways: %r" % st)
        check(until(lambda: status(px.port).get("proxy_tunnels_open") == 0, 5), "closed: no tunnel open")
        check(until(lambda: up.closed() == 1, 5), "the upstream's connection closed with the client's")
        px.stop_ok()


def proxy_upstream_killed(tmp):
    up = Upstream()
    with proxy(tmp, up.port) as px:
        c = Conn(px.port)
        c.send(frame(TEXT, b"one"))
        eq(c.message(), (TEXT, b"one"), "echo before the upstream dies")
        up.kill()
        t0 = time.monotonic()
        c.s.settimeout(5)
        try:
            while c.s.recv(65536):
                pass
        except ConnectionResetError:
            pass
        took = time.monotonic() - t0
        check(took < 1, "the client's connection closed %.2f s after the upstream died" % took)
        c.close()
        check(until(lambda: status(px.port).get("proxy_tunnels_open") == 0, 5), "no tunnel left open")
        px.stop_ok()


def fd_list(pid):
    out = []
    for fd in sorted(os.listdir("/proc/%d/fd" % pid), key=int):
        try:
            out.append("%s:%s" % (fd, os.readlink("/proc/%d/fd/%s" % (pid, fd))))
        except OSError:
            pass
    return " ".join(out)


def proxy_client_gone(tmp):
    with Upstream() as up, proxy(tmp, up.port) as px:
        w = Conn(px.port)  # (a first tunnel, closed cleanly: the proxy is all set up before counting)
        w.send(frame(CLOSE, struct.pack(">H", 1000)))
        w.expect_close(1000, "a first tunnel")
        check(until(lambda: up.closed() == 1, 5), "the first tunnel's upstream connection closed")
        fds = px.fds()
        for _ in range(5):
            c = Conn(px.port)
            c.send(frame(TEXT, b"x"))
            eq(c.message(), (TEXT, b"x"), "echo")
            c.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()  # a reset
        check(until(lambda: up.closed() == 6, 5), "each client gone: its upstream connection closed (%d of 5)"
              % (up.closed() - 1))
        check(until(lambda: px.fds() <= fds, 5), "and the proxy holds no descriptor for them (%d -> %d: %s)"
              % (fds, px.fds(), fd_list(px.pid)))
        px.stop_ok()


def proxy_slow_reader(tmp):
    """The upstream floods 256 MiB at a client that does not read: the proxy's memory stays flat."""
    with Upstream() as up, proxy(tmp, up.port) as px:
        c = Conn(px.port, rcvbuf=65536)
        c.send(frame(TEXT, b"flood 256"))
        time.sleep(0.5)
        rss0 = px.rss_kib()
        time.sleep(1.5)
        grew = px.rss_kib() - rss0
        st = status(px.port)
        check(st["proxy_tunnel_bytes_down_total"] < 64 * MIB,
              "a reader that stops holds the upstream back (%d MiB passed)" % (st["proxy_tunnel_bytes_down_total"] >> 20))
        check(grew < 2048, "proxy RSS grew %d KiB while its client did not read" % grew)
        got = 0
        c.s.settimeout(20)
        while True:  # now it reads: everything comes, then "done"
            op, data = c.message()
            if op == TEXT:
                eq(data, b"done", "the flood's end")
                break
            got += len(data)
        eq(got, 256 * MIB, "every byte of the flood arrived once the client read")
        c.close()
        px.stop_ok()
        print("     slow reader: proxy RSS grew %d KiB; %d MiB passed while it did not read"
              % (grew, st["proxy_tunnel_bytes_down_total"] >> 20), flush=True)


def raw_upgrade(port, proto, extra=b"", version=b"1.1", conn=b"Upgrade", more=b""):
    s = connect(port)
    s.sendall(b"GET /r HTTP/%s\r\nHost: x\r\nConnection: %s\r\nUpgrade: %s\r\n%s\r\n" % (version, conn, proto, more)
              + extra)
    head, rest, _ = read_head(s)
    return s, head, rest


def proxy_raw_upgrades(tmp):
    with Upstream() as up, proxy(tmp, up.raw_port, "upgrade = websocket, rawecho, refuse, mismatch\ntunnel_idle_timeout_ms = 500") as px:
        # Half-closes pass both ways: the client's FIN reaches the upstream, whose "bye" and FIN come back.
        s, head, rest = raw_upgrade(px.port, b"rawecho", b"early bytes ")
        check(head.startswith(b"HTTP/1.1 101 "), "an allowed upgrade: 101 passed on (%r)" % head[:40])
        check(b"\r\nx-upstream: raw" in head.lower() and b"\r\nconnection: upgrade" in head.lower() and
              b"\r\nupgrade: rawecho" in head.lower(), "with the upstream's headers and the switch's")
        s.sendall(b"and more")
        s.shutdown(socket.SHUT_WR)
        s.settimeout(5)
        while True:
            d = s.recv(65536)
            if not d:
                break
            rest += d
        eq(rest, b"early bytes and morebye", "bytes both ways, the half-close passed on and answered")
        s.close()
        # What the upstream sends right behind its 101 comes through, and is counted.
        down0 = status(px.port).get("proxy_tunnel_bytes_down_total", 0)
        s, head, rest = raw_upgrade(px.port, b"rawecho", more=b"X-Hello: 1\r\n")
        s.settimeout(5)
        while len(rest) < 5:
            rest += s.recv(100)
        eq(rest, b"hello", "bytes behind the upstream's 101")
        s.close()
        check(status(px.port).get("proxy_tunnel_bytes_down_total", 0) - down0 >= 5, "counted among the tunnel's bytes")
        # No tunnel for HTTP/1.0 (RFC 9110 7.8), nor beside Connection: close.
        for what, kw in (("HTTP/1.0", {"version": b"1.0"}), ("Connection: Upgrade, close", {"conn": b"Upgrade, close"})):
            s, head, _ = raw_upgrade(px.port, b"rawecho", **kw)
            check(head.startswith(b"HTTP/1.") and not head.startswith(b"HTTP/1.1 101"),
                  "%s: proxied without the switch (%r)" % (what, head[:30]))
            s.close()
        # An upstream that switches to a protocol nobody asked for: 502, no tunnel.
        s, head, _ = raw_upgrade(px.port, b"mismatch")
        check(head.startswith(b"HTTP/1.1 502 "), "a 101 to another protocol than asked: 502 (%r)" % head[:30])
        s.close()
        # The idle timeout closes a tunnel nobody speaks on.
        s, head, _ = raw_upgrade(px.port, b"rawecho")
        t0 = time.monotonic()
        s.settimeout(5)
        eq(s.recv(100), b"", "an idle tunnel is closed")
        took = time.monotonic() - t0
        check(0.3 < took < 2.5, "after tunnel_idle_timeout_ms (%.2f s)" % took)
        s.close()
        # A refusal is an ordinary response; the client's connection closes after it.
        s, head, rest = raw_upgrade(px.port, b"refuse")
        check(head.startswith(b"HTTP/1.1 403 "), "a non-101 answer is passed on as a response (%r)" % head[:40])
        s.close()
        # An upgrade not allowed: its Upgrade header is dropped, and the request goes as usual.
        s, head, rest = raw_upgrade(px.port, b"h2c")
        check(head.startswith(b"HTTP/1.1 200 ") and b"\r\nconnection: close" in head.lower(),
              "an upgrade not allowed: proxied without its Upgrade, then the connection closes (%r)" % head[:40])
        s.close()
        px.stop_ok()
    with Upstream() as up, proxy(tmp, up.port, "upgrade =") as px:
        s, head, _ = raw_upgrade(px.port, b"websocket")
        check(not head.startswith(b"HTTP/1.1 101 "), "upgrade = (none): no switch (%r)" % head[:40])
        s.close()
        px.stop_ok()


# ---- wss:// ---------------------------------------------------------------------------------------

def self_signed(tmp):
    key, crt = os.path.join(tmp, "ws-key.pem"), os.path.join(tmp, "ws-cert.pem")
    if not os.path.exists(crt):
        r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                            "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=localhost",
                            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], capture_output=True, timeout=30)
        if r.returncode:
            raise Skip("openssl could not make a certificate: %s" % r.stderr.decode()[-200:])
    return crt, key


def wss(tmp):
    """The same conversations over TLS: keel_ws on a TLS transport, and a tunnel behind a TLS listener."""
    crt, key = self_signed(tmp)
    ctx = ssl.create_default_context(cafile=crt)

    async def talk(url):
        async with websockets.connect(url, ssl=ctx, max_size=None, compression=None) as ws:
            for n in (0, 125, 70000, 4 * MIB):
                b = os.urandom(n)
                await ws.send(b)
                eq(await ws.recv(), b, "%s: binary %d B" % (url, n))
            await ws.send("wss é")
            eq(await ws.recv(), "wss é", "%s: text" % url)
            await ws.close(4001, "done")
            eq(ws.close_code, 4001, "%s: the close handshake" % url)

    with start("--tls-cert", crt, "--tls-key", key) as srv:
        run(talk("wss://localhost:%d/echo" % srv.port))
        srv.stop_ok()
    with start() as srv:
        path = os.path.join(tmp, "wss-proxy.conf")
        with open(path, "w") as f:
            f.write("[server]\nlisten = 127.0.0.1:0\nworkers = 1\ntls_cert = %s\ntls_key = %s\n\n"
                    "[upstream u]\nserver = 127.0.0.1:%d\n\n[route /]\nupstream = u\n" % (crt, key, srv.port))
        with Proc([KEEL, "-c", path], name="keel proxy (TLS)") as px:
            run(talk("wss://localhost:%d/echo" % px.port))
            px.stop_ok()
        srv.stop_ok()


# ---- A real browser ----------------------------------------------------------------------------

def browser_chat(tmp, port, what):
    """Two chat pages in Chromium: both connect, each sends a line, each page shows both lines."""
    chrome = Chromium(tmp)
    try:
        async def go():
            async with websockets.connect(chrome.url, max_size=None) as conn:
                sessions = []
                for _ in range(2):
                    t = await chrome.call(conn, "Target.createTarget", {"url": "http://127.0.0.1:%d/" % port})
                    a = await chrome.call(conn, "Target.attachToTarget", {"targetId": t["targetId"], "flatten": True})
                    sessions.append(a["sessionId"])

                async def ev(sess, expr):
                    r = await chrome.call(conn, "Runtime.evaluate", {"expression": expr, "returnByValue": True}, sess)
                    return r["result"].get("value")

                async def wait(sess, expr, why):
                    for _ in range(300):
                        if await ev(sess, expr):
                            return
                        # A page answered 503 by admission control (a loaded machine: Chromium and a
                        # sanitizer build on two cores) is loaded again, as its Retry-After asks.
                        if await ev(sess, "document.body && document.body.innerText.startsWith("
                                          "'Service Unavailable') && (location.reload(), true)"):
                            await asyncio.sleep(1.0)
                        await asyncio.sleep(0.05)
                    fail("%s: %s (page state: %r)" % (what, why, await ev(sess, "document.body.innerText")))

                for sess in sessions:
                    await wait(sess, "document.getElementById('state') && "
                                     "document.getElementById('state').textContent === 'connected'", "a page connects")
                for sess, line in zip(sessions, ("hello from page A", "hello from page B")):
                    await ev(sess, "document.getElementById('text').value = %s; "
                                   "document.getElementById('form').requestSubmit(); true" % json.dumps(line))
                lines = "Array.from(document.querySelectorAll('#log li.msg')).map(e => e.textContent)"
                for sess in sessions:
                    await wait(sess, "(l => l.some(x => x.endsWith('hello from page A')) && "
                                     "l.some(x => x.endsWith('hello from page B')))(%s)" % lines, "a page shows both lines")
                got = [await ev(sess, lines) for sess in sessions]
                eq(got[0], got[1], "%s: both pages show the same lines" % what)
                return got[0]
        return run(go(), timeout=60)
    finally:
        chrome.close()


def browser(tmp):
    with start() as srv:
        direct = browser_chat(tmp, srv.port, "direct")
        with proxy(tmp, srv.port) as px:
            proxied = browser_chat(tmp, px.port, "through keel proxy")
            check(status(px.port).get("proxy_tunnels_total", 0) >= 2, "the pages' WebSockets went through tunnels")
            px.stop_ok()
        srv.stop_ok()
    print("     direct: %r; proxied: %r" % (direct, proxied), flush=True)


# ---- Lifetimes and deadlines (build/test/ws_testsrv) --------------------------------------------

def read_until_end(c, limit_s):
    """Every byte until the end of the input (EOF or reset), within limit_s: (bytes, ended)."""
    got = len(c.buf)
    c.buf = b""
    c.s.settimeout(limit_s)
    try:
        while True:
            d = c.s.recv(1 << 20)
            if not d:
                return got, True
            got += len(d)
    except ConnectionResetError:
        return got, True
    except socket.timeout:
        return got, False


def edges():
    with Proc([WS_TESTSRV], name="ws_testsrv") as srv:
        # A peer that half-closes and stops reading under a 24 MiB echo: dropped by the send
        # timeout (2 s without progress), not held until the server stops.
        c = Conn(srv.port, "/echo", rcvbuf=65536)
        c.send(frame(BINARY, b"\0" * (24 * MIB)))
        c.s.shutdown(socket.SHUT_WR)
        time.sleep(3)
        got, ended = read_until_end(c, 10)
        check(ended and got < 24 * MIB, "a half-closed peer that stopped reading was dropped (%d bytes came, "
              "ended: %s)" % (got, ended))
        c.close()
        check(srv.wait_line(r"^end 1006$", 5), "its end: 1006, no close frame")
        # A reader slower than the send timeout, but steady: every byte comes.
        c = Conn(srv.port, "/echo", rcvbuf=65536)
        c.send(frame(BINARY, b"s" * (12 * MIB)))
        got = len(c.buf)
        c.buf = b""
        t0 = time.monotonic()
        c.s.settimeout(5)
        while got < 12 * MIB + 10:
            d = c.s.recv(65536)
            if not d:
                break
            got += len(d)
            time.sleep(0.02)  # (a few MiB/s: seconds for the echo, past the 2 s send timeout)
        took = time.monotonic() - t0
        eq(got, 12 * MIB + 10, "a steady reader slower than send_timeout_ms gets the whole echo (%.1f s)" % took)
        check(took > 2.5, "the echo took longer than the send timeout (%.1f s)" % took)
        c.close()
        # A protocol error after the service queued its close: the close still goes, after the data.
        c = Conn(srv.port, "/closeq")
        c.send(frame(TEXT, b"x", mask=False))
        op, data = c.message()
        check(op == BINARY and len(data) == 8 * MIB, "the data queued before the close (%d, %d bytes)" % (op, len(data)))
        _, op, data = c.frame()
        eq((op, data), (CLOSE, struct.pack(">H", 1000) + b"bye"), "then the close the service queued")
        c.close()
        # A message the service holds stays as it was, whatever happens to its connection.
        c = Conn(srv.port, "/keep")
        c.send(frame(BINARY, b"keep-me-0123456789" * 3))
        check(srv.wait_line(r"^keep: got", 5), "the service holds the message")
        c.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()  # a reset, while the service holds the message
        others = [Conn(srv.port, "/echo") for _ in range(4)]
        deadline = time.monotonic() + 1.6
        while time.monotonic() < deadline:  # other connections churn receive buffers meanwhile
            for o in others:
                o.send(frame(BINARY, os.urandom(30000)))
                o.message()
        check(srv.wait_line(r"^keep: (unchanged|CHANGED)$", 5) and any(l == "keep: unchanged" for l in srv.lines),
              "the held message's bytes did not change under the service")
        for o in others:
            o.close()
        # A service that does not receive: a peer answering pings is not dropped for it.
        c = Conn(srv.port, "/norecv")
        c.send(frame(TEXT, b"never read"))
        t0 = time.monotonic()
        pings = 0
        c.s.settimeout(0.2)
        while time.monotonic() - t0 < 2:
            try:
                _, op, data = c.frame()
            except socket.timeout:
                continue  # (once its reading stops, the server stops pinging too)
            except (EOFError, ConnectionResetError):
                fail("a peer answering pings was dropped after %.2f s" % (time.monotonic() - t0))
            if op == PING:
                pings += 1
                c.send(frame(PONG, data))
        check(pings >= 1, "pings came (%d) and the peer stayed 2 s, past the 300 ms ping timeout" % pings)
        c.close()
        srv.stop_ok()


def subprotocols():
    """The handler picks the subprotocol from what the client offered, and judges the Origin."""
    with Proc([WS_TESTSRV], name="ws_testsrv") as srv:
        async def go():
            url = "ws://127.0.0.1:%d/proto" % srv.port
            async with websockets.connect(url, subprotocols=["chat.v1", "chat.v2"]) as ws:
                eq(ws.subprotocol, "chat.v2", "the subprotocol the handler chose, in the 101")
                eq(await ws.recv(), "chat.v2", "and keel_ws_subprotocol on the server")
            async with websockets.connect(url) as ws:
                eq(ws.subprotocol, None, "none offered: none in the 101")
                eq(await ws.recv(), "", "keel_ws_subprotocol: \"\"")
            for kw, status, what in (({"subprotocols": ["other"]}, 400, "a subprotocol the client did not offer"),
                                     ({"origin": "http://evil.example"}, 403, "an Origin the handler refuses")):
                try:
                    async with websockets.connect(url, **kw):
                        fail("%s: the handshake succeeded" % what)
                except websockets.InvalidStatusCode as e:
                    eq(e.status_code, status, what)
        run(go())
        srv.stop_ok()


def test():
    if not os.access(CHAT, os.X_OK):
        fail("%s not built" % CHAT)
    t = Subtests()
    with start() as srv:
        for name, fn in [
            ("handshake: refusals (426, 400), and frames sent with the handshake", handshake_refusals),
            ("echo: text and binary from 0 B to 16 MiB", echo_sizes),
            ("fragmentation: reassembly, pings between fragments, frames split at every byte", fragments),
            ("pings: answered with their payload; unsolicited pongs ignored", pings),
            ("close: codes echoed, codes that may not be sent, reasons", closes),
            ("violations: 1002, 1007 and 1009, each case", violations),
            ("1,000 concurrent connections", many),
            ("room: messages to every member, joins and leaves", room),
            ("room: a slow member is dropped, the room goes on", slow_member),
        ]:
            t.run(name, lambda fn=fn: fn(srv))
        if not t.failed:
            srv.stop_ok()
    tmp = tempfile.mkdtemp(prefix="keel-ws-")
    for name, fn in [
        ("proxy: echo through keel proxy to a websockets upstream, counted on the status page", proxy_echo),
        ("proxy: upstream killed mid-stream: the client's connection closes at once", proxy_upstream_killed),
        ("proxy: client gone: the upstream's connection closes", proxy_client_gone),
        ("proxy: a client that does not read holds the upstream back; memory flat", proxy_slow_reader),
        ("proxy: half-closes, idle timeout, refusals and upgrades not allowed", proxy_raw_upgrades),
    ]:
        t.run(name, lambda fn=fn: fn(tmp))
    t.run("lifetimes and deadlines: half-closed non-readers, slow readers, a close kept, held messages, "
          "a service that does not receive", edges)
    t.run("subprotocol and origin, chosen by the handler", subprotocols)
    t.run("wss://: keel_ws over TLS, and a tunnel behind a TLS listener", lambda: wss(tmp))
    t.run("browser: two chat pages in headless Chromium, direct and through keel proxy", lambda: browser(tmp))
    t.run("server pings an idle connection and drops a silent one", lambda: server_ping(None))
    t.run("graceful stop: close 1001 to every connection, exit 0", lambda: stop(None))
    return t.status()


if __name__ == "__main__":
    main(test)
