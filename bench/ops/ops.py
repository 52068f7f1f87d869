#!/usr/bin/env python3
"""bench/ops/run.sh's body (see there): operations on a keel -c site under open-loop load.

argv: WORK_DIR SERVER_CPU CLIENT_CPU QUICK. Every process it starts is ended by PID; each load
run is bounded by keel load's -d."""
import json, os, re, signal, socket, subprocess, sys, threading, time

work, srv_cpu, cli_cpu, quick = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
KEEL = os.path.abspath("build/keel")
DUR = 6 if quick else 12
started = []  # pids to end at exit


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def write_conf(path, port, name, extra=""):
    with open(path, "w") as f:
        f.write(f"[server]\nlisten = 127.0.0.1:{port}\nworkers = 1\nserver_name = {name}\n"
                f"grace_ms = 3000\naccess_log = access.log\n{extra}\n[route /]\nstatic = www\n")


class Site:
    def __init__(self, extra=""):
        self.dir = os.path.join(work, "site")
        os.makedirs(os.path.join(self.dir, "www"), exist_ok=True)
        with open(os.path.join(self.dir, "www", "index.html"), "w") as f:
            f.write("Hello, World!")
        for n in os.listdir(self.dir):
            if n.startswith("access.log"):
                os.unlink(os.path.join(self.dir, n))
        self.conf = os.path.join(self.dir, "keel.conf")
        self.port = free_port()
        self.extra = extra
        write_conf(self.conf, self.port, "gen-0", extra)
        self.log = open(os.path.join(work, "keel.log"), "a")
        self.p = subprocess.Popen(["taskset", "-c", srv_cpu, KEEL, "-c", self.conf], cwd=self.dir,
                                  stdout=self.log, stderr=subprocess.STDOUT,
                                  preexec_fn=lambda: __import__("ctypes").CDLL(None).prctl(36, 1, 0, 0, 0))
        self.pid = self.p.pid
        started.append(self.pid)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        sys.exit("keel did not start; see %s/keel.log" % work)

    def stop(self):
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        for _ in range(500):
            try:
                got, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return
            if got:
                return
            time.sleep(0.02)
        os.kill(self.pid, signal.SIGKILL)


def load(port, rate=None, secs=DUR, conns=16):
    out = os.path.join(work, "load-%d.json" % time.monotonic_ns())
    args = ["taskset", "-c", cli_cpu, KEEL, "load", "-q", "-c", str(conns), "-d", str(secs), "-T", "5000",
            "-j", out]
    if rate:
        args += ["--rate", str(rate)]
    p = subprocess.Popen(args + ["http://127.0.0.1:%d/" % port], stdout=subprocess.DEVNULL)
    started.append(p.pid)
    return p, out


def result(p, out):
    p.wait(timeout=DUR + 60)
    with open(out) as f:
        return json.load(f)


def wait_log(pattern, n, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(os.path.join(work, "keel.log")) as f:
            if len(re.findall(pattern, f.read())) >= n:
                return True
        time.sleep(0.02)
    return False


def count_log(pattern):
    with open(os.path.join(work, "keel.log")) as f:
        return len(re.findall(pattern, f.read()))


rows = []


def scenario(name, rate, events, action):
    site = Site()
    time.sleep(0.3)
    p, out = load(site.port, rate)
    t0 = time.monotonic()
    note = action(site, t0) if action else ""
    r = result(p, out)
    site.stop()
    if action is reopens:  # every response has its line: count them across the rotated files
        lines = 0
        for n in os.listdir(site.dir):
            if n.startswith("access.log"):
                with open(os.path.join(site.dir, n)) as f:
                    lines += sum(1 for _ in f)
        note = "(%d access-log lines in 6 files for %d responses, %d sent)" % (lines, r["requests"], r["sent"])
    lat = r["latency_all_us"]
    rows.append((name, events, r["requests"], r["errors_total"], r["retried"], lat["p99"], lat["max"], note))
    print("  %-26s %2s events: %7d requests, %d failed, %d retried, p99 %d us, max %d us %s" %
          (name, events, r["requests"], r["errors_total"], r["retried"], lat["p99"], lat["max"], note), flush=True)


def spaced(t0, i, n):
    """Sleep until the i-th of n events, spread over the middle of the run."""
    due = t0 + DUR * (0.15 + 0.7 * i / max(n - 1, 1))
    time.sleep(max(0, due - time.monotonic()))


def reloads(site, t0):
    base = count_log(r"reloaded: ")
    for i in range(10):
        spaced(t0, i, 10)
        write_conf(site.conf, site.port, "gen-%d" % (i + 1))
        os.kill(site.pid, signal.SIGHUP)
        wait_log(r"reloaded: ", base + i + 1)
    return ""


def upgrades(site, t0):
    base = count_log(r"upgrade: pid \d+ serves")
    for i in range(3):
        spaced(t0, i, 3)
        os.kill(site.pid, signal.SIGUSR2)
        if not wait_log(r"upgrade: pid \d+ serves", base + i + 1):
            return "(upgrade %d did not complete)" % (i + 1)
        with open(os.path.join(work, "keel.log")) as f:
            site.pid = int(re.findall(r"upgrade: pid (\d+) serves", f.read())[-1])
        started.append(site.pid)
    return ""


def reopens(site, t0):
    log = os.path.join(site.dir, "access.log")
    base = count_log(r"logs reopened")
    for i in range(5):
        spaced(t0, i, 5)
        os.rename(log, "%s.%d" % (log, i + 1))
        os.kill(site.pid, signal.SIGUSR1)
        wait_log(r"logs reopened", base + i + 1)
    return ""


def bad_reload(site, t0):
    spaced(t0, 1, 3)
    with open(site.conf, "a") as f:
        f.write("\nnot a line\n")
    os.kill(site.pid, signal.SIGHUP)
    return "" if wait_log(r"reload rejected", 1) else "(not rejected?)"


def refused_after_sigterm():
    """ms from SIGTERM to ECONNREFUSED, with a request under way holding the drain open."""
    site = Site()
    held = socket.create_connection(("127.0.0.1", site.port))
    held.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    time.sleep(0.1)
    t0 = time.monotonic()
    os.kill(site.pid, signal.SIGTERM)
    while time.monotonic() - t0 < 5:
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", site.port))
        except ConnectionRefusedError:
            break
        finally:
            s.close()
        time.sleep(0.0005)
    ms = (time.monotonic() - t0) * 1000
    held.sendall(b"\r\n")
    answered = held.recv(4096).startswith(b"HTTP/1.1 200")
    held.close()
    site.stop()
    return ms, answered


def ready_off_after_sigterm():
    site = Site(extra="stop_delay_ms = 2000")
    t0 = time.monotonic()
    os.kill(site.pid, signal.SIGTERM)
    status = None
    while time.monotonic() - t0 < 2:
        s = socket.create_connection(("127.0.0.1", site.port))
        s.sendall(b"GET /_keel/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status = s.recv(64)[9:12]
        s.close()
        if status == b"503":
            break
    ms = (time.monotonic() - t0) * 1000
    site.stop()
    return ms, status


def main():
    try:
        print("keel -c, 1 worker on CPU %s; keel load on CPU %s; %d s per run" % (srv_cpu, cli_cpu, DUR), flush=True)
        site = Site()
        p, out = load(site.port, None, 5 if quick else 8, 64)
        sat = result(p, out)["requests_per_sec"]
        site.stop()
        rate = int(sat / 2)
        print("  saturation (closed loop, 64 connections): %.0f req/s; runs at %d req/s" % (sat, rate), flush=True)
        scenario("baseline", rate, 0, None)
        scenario("reload (SIGHUP)", rate, 10, reloads)
        scenario("binary upgrade (SIGUSR2)", rate, 3, upgrades)
        scenario("log reopen (SIGUSR1)", rate, 5, reopens)
        scenario("bad configuration", rate, 1, bad_reload)
        refused_ms, answered = refused_after_sigterm()
        ready_ms, status = ready_off_after_sigterm()
    finally:
        for pid in started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    md = ["| scenario | events | requests | failed | retried | p99 | max |", "|---|---|---|---|---|---|---|"]
    for name, ev, req, failed, retried, p99, mx, note in rows:
        md.append("| %s | %d | %d | %d | %d | %.2f ms | %.2f ms |" % (name, ev, req, failed, retried, p99 / 1000,
                                                                     mx / 1000))
    md.append("")
    md += ["%s: %s" % (name, note.strip("()")) for name, _, _, _, _, _, _, note in rows if note]
    md.append("Saturation %.0f req/s; every run at %d req/s (open loop, 16 connections, %d s)." % (sat, rate, DUR))
    md.append("SIGTERM to new clients refused: %.1f ms (a request under way still answered: %s)." %
              (refused_ms, "yes" if answered else "NO"))
    md.append("SIGTERM to /_keel/ready answering 503 (stop_delay_ms 2000): %.1f ms (got %s)." %
              (ready_ms, status.decode() if status else None))
    text = "\n".join(md) + "\n"
    with open(os.path.join(work, "results.md"), "w") as f:
        f.write(text)
    print()
    print(text)


main()
