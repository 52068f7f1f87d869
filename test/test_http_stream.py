#!/usr/bin/env python3
"""Streamed response bodies: chunked framing to HTTP/1.1 clients (curl and a
raw socket), close-delimited for HTTP/1.0, keep-alive and pipelining after a
stream, HEAD without a body. Uses build/test/http_testsrv's /stream route."""
from keeltest import TESTSRV, Proc, check, curl, exchange, main

def test():
    p = Proc([TESTSRV], name="test server")
    port = p.port
    want = b"".join(b"piece %d\n" % i for i in range(50))
    r = curl(p.url("/stream?n=50&ms=1"), max_time=20)
    check(r.stdout == want, f"curl body: {r.stdout[:80]!r}")
    print("curl decodes 50 streamed pieces: ok")

    data = exchange(port, b"GET /stream?n=3&ms=5 HTTP/1.1\r\nHost: x\r\n\r\n"
                          b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, rest = data.split(b"\r\n\r\n", 1)
    check(b"Transfer-Encoding: chunked" in head and b"Content-Length" not in head, f"head {head!r}")
    body = b"8\r\npiece 0\n\r\n8\r\npiece 1\n\r\n8\r\npiece 2\n\r\n0\r\n\r\n"
    check(rest.startswith(body), f"framing {rest[:120]!r}")
    check(rest[len(body):].startswith(b"HTTP/1.1 200 OK") and rest.endswith(b"Hello, World!"),
          f"pipelined response after the stream: {rest[len(body):][:60]!r}")
    print("chunked framing exact, and the pipelined request behind it answered: ok")

    data = exchange(port, b"GET /stream?n=4&ms=2 HTTP/1.0\r\n\r\n")
    head, rest = data.split(b"\r\n\r\n", 1)
    check(b"chunked" not in head and b"Connection: close" in head, f"1.0 head {head!r}")
    check(rest == b"".join(b"piece %d\n" % i for i in range(4)), f"1.0 body {rest!r}")
    print("HTTP/1.0: body delimited by the close: ok")

    data = exchange(port, b"HEAD /stream?n=4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    check(data.endswith(b"\r\n\r\n") and b"piece" not in data, f"HEAD {data!r}")
    print("HEAD: no body: ok")
    rc = p.stop()
    check(rc == 0, f"server exit {rc}")
    print("stream: ok")

if __name__ == "__main__":
    main(test)
