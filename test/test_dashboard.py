#!/usr/bin/env python3
"""The live dashboard (handler = dashboard; keel serve --status at /_keel/dashboard).

- data: a keel -c site with two workers under a steady keel load; the page's
  data (?format=json) has both workers' histories, one sample a second, and
  the requests per second summed over every sample equal what was served;
  p99 latency, open connections and resident memory are there while the load
  runs; after a reload each worker's history goes on in its slot.
- browser: headless Chromium opens the page after the traffic; every plot but
  the shed one (nothing was shed) has points drawn, and a screenshot
  (build/test/dashboard.png) shows both workers' line colours.

Uses Debian's python3-websockets for the DevTools protocol (run by
/usr/bin/python3 when the Python on PATH lacks it). Runs under KEEL_BACKEND.
Exit status: 0 pass, 1 fail, 77 skip (no websockets package)."""
import asyncio, json, os, signal, struct, sys, tempfile, time, zlib

try:
    import websockets
except ImportError:  # a Python that does not see Debian's python3-websockets: the system's does
    if os.path.realpath(sys.executable) != os.path.realpath("/usr/bin/python3") and os.access("/usr/bin/python3", os.X_OK):
        os.execv("/usr/bin/python3", ["/usr/bin/python3", *sys.argv])
    print("SKIP: no python3-websockets (Debian: apt-get install python3-websockets)", flush=True)
    sys.exit(77)

from keeltest import (BUILD, CLI_LISTEN_RE, KEEL, Chromium, Proc, Subtests, check, eq, fail, main, request)

COLOURS = [(0x1f, 0x77, 0xb4), (0xd6, 0x27, 0x28)]  # workers 0 and 1 (the page's first two)
RATE, SECS = 1500, 4


def start(d):
    os.makedirs(os.path.join(d, "www"), exist_ok=True)
    with open(os.path.join(d, "www", "index.html"), "w") as f:
        f.write("hello\n")
    conf = os.path.join(d, "keel.conf")
    with open(conf, "w") as f:
        f.write("[server]\nlisten = 127.0.0.1:0\nworkers = 2\nqueue_delay_max_us = 0\n"
                "[route /]\nstatic = www\n[route /_keel/dashboard]\nmatch = exact\nhandler = dashboard\n")
    return Proc([KEEL, "-c", conf], name="keel -c", listen=CLI_LISTEN_RE, cwd=d), conf


def data(port):
    status, headers, body = request(port, "/_keel/dashboard?format=json")
    eq((status, headers.get("content-type")), (200, "application/json"), "the dashboard's data")
    return json.loads(body)


def png_pixels(png):
    """(width, height, rows of RGB(A) bytes) of an 8-bit, non-interlaced RGB or RGBA PNG."""
    check(png[:8] == b"\x89PNG\r\n\x1a\n", "a PNG")
    pos, idat, w = 8, b"", None
    while pos < len(png):
        n, kind = struct.unpack(">I4s", png[pos:pos + 8])
        chunk = png[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
            check(depth == 8 and colour in (2, 6) and not interlace, "an 8-bit RGB(A) PNG: %r" % ((depth, colour),))
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + n
    raw, stride, rows, prev = zlib.decompress(idat), w * bpp, [], bytearray(w * bpp)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    return w, h, bpp, rows


def colour_count(png, rgb, tol=40):
    w, h, bpp, rows = png_pixels(png)
    n = 0
    for line in rows:
        for x in range(0, w * bpp, bpp):
            if abs(line[x] - rgb[0]) + abs(line[x + 1] - rgb[1]) + abs(line[x + 2] - rgb[2]) <= tol:
                n += 1
    return n


def run_all():
    t = Subtests()
    with tempfile.TemporaryDirectory(prefix="keel-dash-") as d:
        p, conf = start(d)
        state = {}

        def part_data():
            load = Proc([KEEL, "load", "-q", "-c", "8", "--rate", RATE, "-d", SECS, "-j", os.path.join(d, "l.json"),
                         p.url("/")], name="keel load", listen=None)
            time.sleep(SECS / 2)
            during = data(p.port)
            eq(load.wait(SECS + 30), 0, "keel load's exit status")
            time.sleep(2.2)  # (the last second's samples)
            after = data(p.port)
            with open(os.path.join(d, "l.json")) as f:
                served = json.load(f)["requests"]
            eq(after["interval_ms"], 1000, "interval_ms")
            eq(sorted(w["worker"] for w in after["workers"]), [0, 1], "workers with a history")
            for w in after["workers"]:
                check(len(w["samples"]) >= SECS, "worker %d: %d samples" % (w["worker"], len(w["samples"])))
                ts = [s[0] for s in w["samples"]]
                check(ts == sorted(ts) and all(0.5e3 < b - a < 2e3 for a, b in zip(ts, ts[1:])),
                      "worker %d: a sample a second: %r" % (w["worker"], ts))
            total = sum(s[1] for w in after["workers"] for s in w["samples"])
            # (At most 8 connections x 16 pipelined requests were in flight at keel load's end:
            # served, not counted by it; and the one data request during the run.)
            check(served <= total <= served + 8 * 16 + 1,
                  "requests/s summed over the samples: %d; served %d" % (total, served))
            busy = [s for w in during["workers"] for s in w["samples"] if s[1] > 0]
            check(busy and all(s[6] > 0 and s[6] >= s[5] for s in busy), "p99 >= p50 > 0 while busy: %r" % busy)
            check(any(s[3] > 0 for s in busy), "open connections seen during the load: %r" % busy)
            check(all(s[4] > 1 << 20 for w in after["workers"] for s in w["samples"]), "resident memory")
            # A reload: each worker's history goes on.
            before = {w["worker"]: len(w["samples"]) for w in after["workers"]}
            p.signal(signal.SIGHUP)
            check(p.wait_line("old workers gone", 10), "reload:\n" + p.shown())
            time.sleep(1.5)
            again = {w["worker"]: len(w["samples"]) for w in data(p.port)["workers"]}
            check(all(again[k] > before[k] for k in before), "histories after a reload: %r then %r" % (before, again))
            state["ok"] = True

        def part_browser():
            check(state.get("ok"), "needs the data part's traffic")
            chrome = Chromium(d)
            try:
                async def go():
                    async with websockets.connect(chrome.url, max_size=None) as conn:
                        tgt = await chrome.call(conn, "Target.createTarget", {"url": p.url("/_keel/dashboard")})
                        a = await chrome.call(conn, "Target.attachToTarget", {"targetId": tgt["targetId"], "flatten": True})
                        sess = a["sessionId"]
                        await chrome.call(conn, "Emulation.setDeviceMetricsOverride",
                                          {"width": 1000, "height": 700, "deviceScaleFactor": 1, "mobile": False}, sess)
                        ink = None
                        for _ in range(200):
                            r = await chrome.call(conn, "Runtime.evaluate",
                                                  {"expression": "JSON.stringify(ink)", "returnByValue": True}, sess)
                            ink = json.loads(r["result"].get("value") or "{}")
                            if all(ink.get(k, 0) > 0 for k in ("rps", "p99", "conns", "rss")):
                                break
                            await asyncio.sleep(0.05)
                        shot = await chrome.call(conn, "Page.captureScreenshot", {"format": "png"}, sess)
                        return ink, __import__("base64").b64decode(shot["data"])

                ink, png = asyncio.run(asyncio.wait_for(go(), 90))
            finally:
                chrome.close()
            out = os.path.join(BUILD, "test", "dashboard.png")
            with open(out, "wb") as f:
                f.write(png)
            for k in ("rps", "p99", "conns", "rss"):
                check(ink.get(k, 0) > 0, "plot %s has points drawn: %r" % (k, ink))
            eq(ink.get("shed"), 0, "the shed plot: nothing shed")
            counts = [colour_count(png, c) for c in COLOURS]
            check(all(n > 50 for n in counts), "both workers' colours in the screenshot (%s): %r pixels" % (out, counts))
            print("     plots %r; colour pixels %r; %s" % (ink, counts, out), flush=True)

        t.run("data: two workers' histories under load, and after a reload", part_data)
        t.run("browser: the page's plots in headless Chromium", part_browser)
        p.stop_ok()
    return t.status()


if __name__ == "__main__":
    main(run_all)
