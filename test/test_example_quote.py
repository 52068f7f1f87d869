#!/usr/bin/env python3
"""examples/quote end to end: All (two upstream calls combined), Any (the
fast replica hides the slow one, which is cancelled), a deadline that fires,
and bad requests. Run by test/run.sh under each backend."""
import os, socket, time

from keeltest import EXAMPLES, Proc, check, free_ports, main

exe = os.path.join(EXAMPLES, "quote")

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

def test():
    port = free_ports(4)  # quote listens on port, its upstreams on the next three
    with Proc([exe, port], name="quote") as srv:
        check(srv.port == port, f"quote listens on {srv.port}, not the {port} it was given")
        out, ms = ask(port, "QUOTE ACME\n")
        check(out.startswith("ACME price=") and " volume=" in out, out)
        print(f"QUOTE (All of two upstreams): {out.strip()!r} in {ms:.0f} ms")
        out, ms = ask(port, "FAST ACME\n")
        check(out.strip().endswith("from=fast"), out)  # the first success won
        print(f"FAST (Any, slow replica 300 ms): {out.strip()!r} in {ms:.0f} ms")
        out, ms = ask(port, "SLOW ACME\n")
        check(out.startswith("ERROR") and "timed out" in out, out)
        check(ms >= 95, f"deadline of 100 ms fired early: {ms:.0f} ms")
        print(f"SLOW (100 ms deadline): {out.strip()!r} in {ms:.0f} ms")
        out, _ = ask(port, "BOGUS X\n")
        check(out.startswith("ERROR"), out)
        out, _ = ask(port, "QUOTE\n")
        check(out == "", f"QUOTE without a symbol: {out!r}")
        # Many at once: the service keeps answering correctly.
        for i in range(50):
            out, _ = ask(port, f"QUOTE S{i}\n")
            check(out.startswith(f"S{i} price="), out)
        check(srv.alive(), "the example exited")
        print("quote example: ok")

if __name__ == "__main__":
    main(test)
