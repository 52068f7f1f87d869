#!/usr/bin/python3
"""bench/h2/idle_h2.py: holds N idle HTTP/2 connections for bench/h2/run.sh.

Opens N connections to 127.0.0.1:PORT, one after the other: over TLS with
ALPN h2 (--tls, verifying with --ca) or in plain text with prior knowledge
(h2c). On each it sends the client preface and SETTINGS, one GET PATH, reads
the whole response (it must be 200 with --size bytes of body), acknowledges
the server's SETTINGS, and then leaves the connection open and idle. Then it
writes READY ("open N"), and waits for RELEASE to exist (at most --hold
seconds). Before closing them all it checks each connection: one the server
closed, or sent GOAWAY on, is counted as gone. It prints one line,
"opened=N held=M gone=G setup_s=S", and exits 0 when every connection was
opened and still held, else 1.

Uses the h2 package (python3-h2) for the framing; nothing else beyond the
standard library.
"""
import argparse
import os
import select
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions


def die(msg):
    print("idle_h2.py: " + msg, file=sys.stderr)
    sys.exit(2)


def open_one(args, ctx):
    sock = socket.create_connection(("127.0.0.1", args.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ctx is not None:
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
        if sock.selected_alpn_protocol() != "h2":
            raise RuntimeError("ALPN gave %r, not h2" % sock.selected_alpn_protocol())
    conn = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    scheme = "https" if ctx is not None else "http"
    conn.send_headers(1, [(":method", "GET"), (":scheme", scheme),
                          (":authority", "127.0.0.1:%d" % args.port), (":path", args.path)],
                      end_stream=True)
    sock.sendall(conn.data_to_send())
    status, body, done = None, 0, False
    while not done:
        data = sock.recv(65536)
        if not data:
            raise RuntimeError("closed by the server before the response ended")
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                status = dict(ev.headers).get(":status")
            elif isinstance(ev, h2.events.DataReceived):
                body += len(ev.data)
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                done = True
            elif isinstance(ev, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                raise RuntimeError("server ended it: %r" % ev)
        out = conn.data_to_send()
        if out:
            sock.sendall(out)
    if status != "200" or (args.size >= 0 and body != args.size):
        raise RuntimeError("got status %s and %d bytes, not 200 and %d" % (status, body, args.size))
    return sock, conn


def still_open(sock, conn):
    """False when the server closed the connection or sent GOAWAY on it."""
    sock.setblocking(False)
    try:
        while True:
            r, _, _ = select.select([sock], [], [], 0)
            if not r and not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                return True
            try:
                data = sock.recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError):
                return True
            if not data:
                return False
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ConnectionTerminated):
                    return False
    except (OSError, h2.exceptions.ProtocolError):
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--path", default="/plaintext")
    ap.add_argument("--size", type=int, default=-1, help="expected body bytes (-1: any)")
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--ca", help="CA file to verify the server with (--tls)")
    ap.add_argument("--ready", required=True, help="file written once all are held")
    ap.add_argument("--release", required=True, help="file whose existence ends the hold")
    ap.add_argument("--hold", type=float, default=120, help="longest hold, seconds")
    args = ap.parse_args()

    ctx = None
    if args.tls:
        ctx = ssl.create_default_context(cafile=args.ca)
        ctx.set_alpn_protocols(["h2"])
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    conns = []
    t0 = time.monotonic()
    err = None
    for i in range(args.n):
        try:
            conns.append(open_one(args, ctx))
        except Exception as e:  # noqa: BLE001 - report and hold what was opened
            err = "connection %d: %s" % (i + 1, e)
            break
    setup = time.monotonic() - t0
    if err:
        print("idle_h2.py: " + err, file=sys.stderr)
    with open(args.ready + ".tmp", "w") as f:
        f.write("open %d\n" % len(conns))
    os.rename(args.ready + ".tmp", args.ready)
    deadline = time.monotonic() + args.hold
    while not os.path.exists(args.release) and time.monotonic() < deadline:
        time.sleep(0.05)
    held = sum(1 for s, c in conns if still_open(s, c))
    for s, _ in conns:
        try:
            s.close()
        except OSError:
            pass
    print("opened=%d held=%d gone=%d setup_s=%.2f" % (len(conns), held, len(conns) - held, setup))
    sys.exit(0 if held == args.n else 1)


if __name__ == "__main__":
    main()
