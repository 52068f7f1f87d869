#!/usr/bin/python3
"""An upstream for test_ws.py's proxy parts, in its own process (so it can be killed).

- websockets' server (python3-websockets) on the first port: any path echoes every message,
  except the text "flood N", answered with N MiB in 64 KiB binary messages, sent as fast as
  the connection takes them, then the text "done".
- A raw server on the second port for any other upgrade: it answers "101" to a request with
  "Upgrade: rawecho", echoes bytes until the client's input ends (a half-close), then sends
  "bye" and closes (with "X-Hello: 1" it sends "hello" right behind its 101); a request with
  "Upgrade: refuse" gets "403", one with "Upgrade: mismatch" a 101 to "other" (not what was asked),
  one without Upgrade "200 plain", and the connection closes.

Prints "ports A B" once listening, and "closed" each time a connection has ended."""
import asyncio, sys

import websockets


def say(*a):
    print(*a, flush=True)


async def ws_handler(ws, path=None):
    try:
        async for m in ws:
            if isinstance(m, str) and m.startswith("flood "):
                chunk = b"f" * 65536
                for _ in range(int(m.split()[1]) * 16):
                    await ws.send(chunk)
                await ws.send("done")
            else:
                await ws.send(m)
    except websockets.ConnectionClosed:
        pass
    finally:
        say("closed")


async def raw_handler(reader, writer):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        if b"\r\nupgrade:" not in head.lower():
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nplain")
            await writer.drain()
            return
        if b"upgrade: refuse" in head.lower():
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno")
            await writer.drain()
            return
        if b"upgrade: mismatch" in head.lower():  # switches to what nobody asked for
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: other\r\nConnection: Upgrade\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: rawecho\r\nConnection: Upgrade\r\n"
                         b"X-Upstream: raw\r\n\r\n" + (b"hello" if b"x-hello: 1" in head.lower() else b""))
        await writer.drain()
        while True:
            d = await reader.read(65536)
            if not d:
                break
            writer.write(d)
            await writer.drain()
        writer.write(b"bye")
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
        say("closed")


async def main():
    ws = await websockets.serve(ws_handler, "127.0.0.1", 0, max_size=None, compression=None)
    raw = await asyncio.start_server(raw_handler, "127.0.0.1", 0)
    say("ports", ws.sockets[0].getsockname()[1], raw.sockets[0].getsockname()[1])
    await asyncio.sleep(3600)  # (ended by the test, by PID)


if __name__ == "__main__":
    asyncio.run(main())
