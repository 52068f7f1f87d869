#!/usr/bin/env python3
"""Streamed response bodies: chunked framing to HTTP/1.1 clients (curl and a
raw socket), close-delimited for HTTP/1.0, keep-alive and pipelining after a
stream, HEAD without a body. Uses build/test/http_testsrv's /stream route."""
import os, re, signal, socket, subprocess, sys

BUILD = os.environ.get("KEEL_BUILD", "build")

def check(cond, msg):
    if not cond:
        print("FAIL:", msg)
        sys.exit(1)

def read_all(s):
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            return data
        data += b

def main():
    p = subprocess.Popen([os.path.join(BUILD, "test", "http_testsrv")], stderr=subprocess.PIPE, text=True)
    try:
        port = None
        for _ in range(5):  # the backend's log line may come first
            m = re.search(r"listening on .*:(\d+)$", p.stderr.readline().strip())
            if m:
                port = int(m.group(1))
                break
        check(port, "test server did not start")
        base = f"http://127.0.0.1:{port}"
        want = b"".join(b"piece %d\n" % i for i in range(50))
        r = subprocess.run(["curl", "-s", "--max-time", "20", base + "/stream?n=50&ms=1"], capture_output=True)
        check(r.stdout == want, f"curl body: {r.stdout[:80]!r}")
        print("curl decodes 50 streamed pieces: ok")

        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /stream?n=3&ms=5 HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = read_all(s)
        s.close()
        head, rest = data.split(b"\r\n\r\n", 1)
        check(b"Transfer-Encoding: chunked" in head and b"Content-Length" not in head, f"head {head!r}")
        body = b"8\r\npiece 0\n\r\n8\r\npiece 1\n\r\n8\r\npiece 2\n\r\n0\r\n\r\n"
        check(rest.startswith(body), f"framing {rest[:120]!r}")
        check(rest[len(body):].startswith(b"HTTP/1.1 200 OK") and rest.endswith(b"Hello, World!"),
              f"pipelined response after the stream: {rest[len(body):][:60]!r}")
        print("chunked framing exact, and the pipelined request behind it answered: ok")

        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /stream?n=4&ms=2 HTTP/1.0\r\n\r\n")
        data = read_all(s)
        s.close()
        head, rest = data.split(b"\r\n\r\n", 1)
        check(b"chunked" not in head and b"Connection: close" in head, f"1.0 head {head!r}")
        check(rest == b"".join(b"piece %d\n" % i for i in range(4)), f"1.0 body {rest!r}")
        print("HTTP/1.0: body delimited by the close: ok")

        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"HEAD /stream?n=4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = read_all(s)
        s.close()
        check(data.endswith(b"\r\n\r\n") and b"piece" not in data, f"HEAD {data!r}")
        print("HEAD: no body: ok")
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
    check(p.returncode == 0, f"server exit {p.returncode}")
    print("stream: ok")

if __name__ == "__main__":
    main()
