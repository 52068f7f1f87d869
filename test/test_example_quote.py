#!/usr/bin/env python3
"""examples/quote end to end: All (two upstream calls combined), Any (the
fast replica hides the slow one, which is cancelled), a deadline that fires,
and bad requests. Run by test/run.sh under each backend."""
import os, socket, subprocess, sys, time

build = os.environ.get("KEEL_BUILD", "build")
exe = os.path.join(build, "examples", "quote")

def free_port_block(n=4):
    for base in range(21000, 60000, 97):
        socks = []
        try:
            for i in range(n):
                s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", base + i)); socks.append(s)
            return base
        except OSError:
            pass
        finally:
            for s in socks: s.close()
    raise RuntimeError("no free port block")

def ask(port, line, timeout=3.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    t = time.monotonic()
    s.sendall(line.encode())
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(256)
        if not chunk:
            break
        data += chunk
    s.close()
    return data.decode(), (time.monotonic() - t) * 1000

def main():
    port = free_port_block()
    proc = subprocess.Popen([exe, str(port)], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "listening" in line or "backend" in line, line
        if "listening" not in line:
            line = proc.stderr.readline()
        assert "listening" in line, line
        out, ms = ask(port, "QUOTE ACME\n")
        assert out.startswith("ACME price=") and " volume=" in out, out
        print(f"QUOTE (All of two upstreams): {out.strip()!r} in {ms:.0f} ms")
        out, ms = ask(port, "FAST ACME\n")
        assert out.strip().endswith("from=fast"), out  # the first success won
        print(f"FAST (Any, slow replica 300 ms): {out.strip()!r} in {ms:.0f} ms")
        out, ms = ask(port, "SLOW ACME\n")
        assert out.startswith("ERROR") and "timed out" in out, out
        assert ms >= 95, f"deadline of 100 ms fired early: {ms:.0f} ms"
        print(f"SLOW (100 ms deadline): {out.strip()!r} in {ms:.0f} ms")
        out, _ = ask(port, "BOGUS X\n")
        assert out.startswith("ERROR"), out
        out, _ = ask(port, "QUOTE\n")
        assert out == "", out
        # Many at once: the service keeps answering correctly.
        for i in range(50):
            out, _ = ask(port, f"QUOTE S{i}\n")
            assert out.startswith(f"S{i} price="), out
        assert proc.poll() is None, "the example exited"
        print("quote example: ok")
    finally:
        proc.kill()
        proc.wait()

if __name__ == "__main__":
    main()
