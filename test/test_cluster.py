#!/usr/bin/env python3
"""Three keel instances behind a balancer, each on its own simulated machine.

The machines are network namespaces this test creates and removes: one
holds a bridge, the others a veth into it and one address from
198.18.0.0/15 (the range reserved for benchmarking); nothing is routed
outside them. The balancer (198.18.0.10) is run twice: `keel -c` with an
upstream group health-checked on /_keel/ready, and HAProxy from Debian with
the same checks. keel load runs beside it at a fixed rate, and one load run
spans each event, so failed requests are counted per event:

- reload:  node 1 gets SIGHUP (a new server_name): 0 failed;
- upgrade: node 2 gets SIGUSR2 (a new process takes its socket): 0 failed;
- kill:    node 3 gets SIGKILL: at most the requests in flight fail (keel
           load holds at most CONNS, one per connection), and the balancer
           marks the node down (its own report, polled);
- down:    a run while node 3 is gone: 0 failed;
- return:  node 3 started again: the balancer sends it requests again, and
           the run around the return has 0 failed;
- stop:    node 1 gets SIGTERM with stop_delay_ms (its /_keel/ready answers
           503 while it still serves, then it drains): 0 failed, the balancer
           marks it down, and it exits 0.

The times (kill to marked down, return to first request served) are
printed, not asserted: figures belong in docs/operations.md. Runs as root
(ip netns); without it, skipped with the reason. Runs under KEEL_BACKEND."""
import ctypes, json, os, shutil, signal, socket, subprocess, tempfile, time

from keeltest import (CLI_LISTEN_RE, KEEL, Proc, Skip, Subtests, check, end_adopted, eq, fail, main, pid_exit,
                      recv_all, response, set_subreaper)

NET = "198.18.0."
BALANCER = NET + "10"
PORT = 8080
CONNS = 8  # keel load's connections, one request in flight on each
RATE = 600  # requests/s through the balancer: well below what it serves here
HEALTH_MS = 500  # both balancers' health-check interval
STOP_DELAY_MS = 1500  # a node's time not ready before it stops: the health interval, and a margin
CLONE_NEWNET = 0x40000000


def ip(*args, ok_fail=False):
    r = subprocess.run(["ip"] + list(args), capture_output=True, text=True, timeout=10)
    if r.returncode and not ok_fail:
        fail("ip %s: %s" % (" ".join(args), r.stderr.strip()))
    return r


class Net:
    """The namespaces: a hub with the bridge, and one per machine, each with an address."""

    def __init__(self, machines):
        if shutil.which("ip") is None:
            raise Skip("no ip(8) (iproute2)")
        tag = "kc%d" % os.getpid()
        self.hub = tag + "h"
        self.ns = {name: "%s%s" % (tag, name) for name in machines}
        self.made = []
        self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)  # where leave() goes back to
        r = ip("netns", "add", self.hub, ok_fail=True)
        if r.returncode:
            raise Skip("cannot create network namespaces (root needed): " + r.stderr.strip())
        self.made.append(self.hub)
        ip("-n", self.hub, "link", "add", "br0", "type", "bridge", "forward_delay", "0")
        ip("-n", self.hub, "link", "set", "br0", "up")
        for name, addr in machines.items():
            ns = self.ns[name]
            ip("netns", "add", ns)
            self.made.append(ns)
            port = "p" + name
            ip("-n", self.hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("-n", self.hub, "link", "set", port, "master", "br0")
            ip("-n", self.hub, "link", "set", port, "up")
            ip("-n", ns, "addr", "add", addr + "/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")

    def enter(self, name):
        """Move this thread (and what it starts from now on) into machine name's namespace."""
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open("/run/netns/" + self.ns[name], os.O_RDONLY)
        try:
            check(libc.setns(fd, CLONE_NEWNET) == 0, "setns: errno %d" % ctypes.get_errno())
        finally:
            os.close(fd)

    def leave(self):
        """Back to the namespace this process started in."""
        libc = ctypes.CDLL(None, use_errno=True)
        check(libc.setns(self.home, CLONE_NEWNET) == 0, "setns back: errno %d" % ctypes.get_errno())

    def remove(self):
        for ns in reversed(self.made):  # (its veth pairs go with it)
            ip("netns", "del", ns, ok_fail=True)
        os.close(self.home)


class Node:
    """keel -c on machine i: listen 198.18.0.1i:8080, one worker, an access log."""

    def __init__(self, net, d, i):
        self.net, self.i = net, i
        self.dir = os.path.join(d, "node%d" % i)
        os.makedirs(os.path.join(self.dir, "www"), exist_ok=True)
        with open(os.path.join(self.dir, "www", "index.html"), "w") as f:
            f.write("node %d\n" % i)
        self.conf = os.path.join(self.dir, "keel.conf")
        self.log = os.path.join(self.dir, "access.log")
        self.write("node-%d" % i)
        self.pid = None
        self.start()

    @property
    def addr(self):
        return "%s1%d" % (NET, self.i)

    def write(self, name):
        with open(self.conf, "w") as f:
            f.write(f"""[server]
listen = {self.addr}:{PORT}
workers = 1
server_name = {name}
grace_ms = 3000
stop_delay_ms = {STOP_DELAY_MS}
queue_delay_max_us = 0
access_log = access.log
[route /]
static = www
""")

    def start(self):
        self.proc = Proc(["ip", "netns", "exec", self.net.ns[str(self.i)], KEEL, "-c", self.conf],
                         name="node %d" % self.i, listen=CLI_LISTEN_RE, cwd=self.dir)
        self.pid = self.proc.pid

    def served(self):
        """GET / lines in its access log (health checks are GET /_keel/ready)."""
        try:
            with open(self.log) as f:
                return sum(1 for l in f if '"GET / HTTP/1.1" 200' in l)
        except FileNotFoundError:
            return 0

    def stop(self, sig=signal.SIGINT):
        """Its exit status after sig (SIGINT: at once, no stop delay)."""
        if self.pid and self.pid != self.proc.pid:  # an upgraded node: ours by adoption
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                return 0
            rc = pid_exit(self.pid, 10)
            end_adopted([self.pid])
            return rc
        if self.proc.alive():
            self.proc.signal(sig)
        rc = self.proc.wait(10)
        if rc is None:
            self.proc.kill()
        return rc


class KeelBalancer:
    name = "keel"

    def __init__(self, d, nodes):
        conf = os.path.join(d, "balancer.conf")
        servers = "".join("server = %s:%d\n" % (n.addr, PORT) for n in nodes)
        with open(conf, "w") as f:
            f.write(f"""[server]
listen = {BALANCER}:{PORT}
workers = 1
queue_delay_max_us = 0
[upstream nodes]
{servers}health_path = /_keel/ready
health_interval_ms = {HEALTH_MS}
fail_timeout_ms = 2000
connect_timeout_ms = 1000
[route /_keel/status]
handler = status
[route /]
upstream = nodes
""")
        self.proc = Proc([KEEL, "-c", conf], name="keel balancer", listen=CLI_LISTEN_RE, cwd=d)

    def down(self):
        """How many nodes it has marked down."""
        r, body = response(PORT, "/_keel/status?format=json", host=BALANCER)
        eq(r.status, 200, "the balancer's status")
        st = json.loads(body)
        return sum(s["metrics"]["proxy_upstreams_down"] for s in st["sources"] if "proxy_upstreams_down" in
                   s["metrics"])

    def stop(self):
        return self.proc.stop_ok("the keel balancer")


class HAProxyBalancer:
    name = "HAProxy"

    def __init__(self, d, nodes):
        self.haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not os.access(self.haproxy, os.X_OK):
            raise Skip("no haproxy (Debian package haproxy)")
        conf = os.path.join(d, "haproxy.cfg")
        self.sock = os.path.join(d, "haproxy.sock")
        servers = "".join("    server n%d %s:%d\n" % (n.i, n.addr, PORT) for n in nodes)
        with open(conf, "w") as f:
            f.write(f"""global
    stats socket {self.sock} level admin
    maxconn 4000
defaults
    mode http
    timeout connect 1s
    timeout client 10s
    timeout server 10s
    retries 3
    option redispatch 1
    retry-on all-retryable-errors
frontend web
    bind {BALANCER}:{PORT}
    default_backend nodes
backend nodes
    balance roundrobin
    option httpchk GET /_keel/ready
    default-server check inter {HEALTH_MS} fall 1 rise 1
{servers}""")
        self.proc = Proc([self.haproxy, "-db", "-f", conf], name="haproxy", listen=None, cwd=d)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.stat() and self.down() == 0:
                    break
            except OSError:
                pass
            check(time.monotonic() < deadline and self.proc.alive(), "HAProxy did not start:\n" + self.proc.shown())
            time.sleep(0.05)

    def stat(self):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        try:
            s.connect(self.sock)
            s.sendall(b"show stat\n")
            out = recv_all(s)
        finally:
            s.close()
        rows = [l.split(",") for l in out.decode().splitlines() if l and not l.startswith("#")]
        return {r[1]: r[17] for r in rows if r[0] == "nodes" and r[1].startswith("n")}  # svname: status

    def down(self):
        return sum(1 for st in self.stat().values() if not st.startswith("UP"))

    def stop(self):
        self.proc.signal(signal.SIGUSR1)  # HAProxy's graceful stop
        rc = self.proc.wait(10)
        if rc is None:
            self.proc.kill()
        eq(rc, 0, "HAProxy's exit status")


class Load:
    """keel load through the balancer at RATE for secs (on this thread's machine)."""

    def __init__(self, d, secs):
        self.json = os.path.join(d, "load-%d.json" % time.monotonic_ns())
        self.proc = Proc([KEEL, "load", "-q", "-c", str(CONNS), "-p", "1", "--rate", str(RATE), "-d", str(secs),
                          "-T", "5000", "-j", self.json, "http://%s:%d/" % (BALANCER, PORT)],
                         name="keel load", listen=None)
        self.t0 = time.monotonic()

    def at(self, secs):
        """Sleep until secs into the run."""
        time.sleep(max(0.0, self.t0 + secs - time.monotonic()))

    def result(self, what):
        rc = self.proc.wait(60)
        check(rc == 0, "%s: keel load exited %s:\n%s" % (what, rc, self.proc.shown()))
        with open(self.json) as f:
            r = json.load(f)
        print("  %-8s %6d requests, %d failed, %d retried, p99 %.2f ms %s" %
              (what, r["requests"], r["errors_total"], r.get("retried", 0), r["latency_us"]["p99"] / 1000.0,
               r["errors"] if r["errors_total"] else ""))
        return r


def wait_for(fn, timeout, what):
    """Poll fn until it is true: the seconds it took."""
    t0 = time.monotonic()
    while not fn():
        if time.monotonic() - t0 > timeout:
            fail("%s: not within %g s" % (what, timeout))
        time.sleep(0.01)
    return time.monotonic() - t0


def cluster(d, kind):
    set_subreaper()
    net = Net({"b": BALANCER, "1": NET + "11", "2": NET + "12", "3": NET + "13"})
    nodes, bal, adopted = [], None, []
    try:
        nodes = [Node(net, d, i) for i in (1, 2, 3)]
        net.enter("b")  # the balancer, keel load and this test's requests run on machine b
        bal = kind(d, nodes)
        wait_for(lambda: bal.down() == 0, 5, "%s: every node up" % bal.name)
        for n in nodes:
            eq(response(PORT, "/", host=BALANCER)[1][:5], b"node ", "GET / through %s" % bal.name)

        # Reload node 1.
        load = Load(d, 4)
        load.at(1)
        nodes[0].write("node-1-reloaded")
        nodes[0].proc.signal(signal.SIGHUP)
        check(nodes[0].proc.wait_line(r"reloaded: ", 5), "node 1 reload:\n" + nodes[0].proc.shown())
        r = load.result("reload")
        eq(r["errors_total"], 0, "%s: failed requests while node 1 reloaded (%s)" % (bal.name, r["errors"]))

        # Binary upgrade of node 2.
        load = Load(d, 4)
        load.at(1)
        old = nodes[1].pid
        os.kill(old, signal.SIGUSR2)
        m = nodes[1].proc.wait_line(r"upgrade: pid (\d+) serves", 10)
        check(m, "node 2 upgrade:\n" + nodes[1].proc.shown())
        nodes[1].pid = int(m.group(1))
        adopted.append(nodes[1].pid)
        r = load.result("upgrade")
        eq(r["errors_total"], 0, "%s: failed requests while node 2 upgraded (%s)" % (bal.name, r["errors"]))
        check(nodes[1].proc.wait(10) == 0, "node 2's old process did not exit 0:\n" + nodes[1].proc.shown())

        # kill -9 node 3.
        load = Load(d, 3)
        load.at(1)
        nodes[2].proc.kill()
        marked = wait_for(lambda: bal.down() >= 1, 5, "%s: node 3 marked down" % bal.name)
        r = load.result("kill")
        check(r["errors_total"] <= CONNS, "%s: %d failed requests when node 3 was killed; at most %d were in "
              "flight (%s)" % (bal.name, r["errors_total"], CONNS, r["errors"]))
        killed_failed = r["errors_total"]

        # While it is gone.
        load = Load(d, 2)
        r = load.result("down")
        eq(r["errors_total"], 0, "%s: failed requests while node 3 was down (%s)" % (bal.name, r["errors"]))
        # (At least node 3: under a sanitizer a slow check can mark another down for a moment.)
        check(bal.down() >= 1, "%s: node 3 no longer marked down while it is gone" % bal.name)

        # Its return.
        load = Load(d, 4)
        load.at(1)
        before = nodes[2].served()
        nodes[2].start()
        back = wait_for(lambda: bal.down() == 0, 5, "%s: node 3 marked up again" % bal.name)
        r = load.result("return")
        eq(r["errors_total"], 0, "%s: failed requests around node 3's return (%s)" % (bal.name, r["errors"]))
        wait_for(lambda: bal.down() == 0, 5, "%s: every node up after node 3's return" % bal.name)
        check(nodes[2].served() > before, "%s sent node 3 no request after its return" % bal.name)
        print("  %s: node 3 marked down %.0f ms after its kill (%d failed), up %.0f ms after its return;"
              " served per second around the return: %s" % (bal.name, marked * 1000, killed_failed, back * 1000,
                                                             [iv["ok"] for iv in r["intervals"]]))

        # A graceful stop of node 1: not ready at once, serving through the delay, then draining.
        load = Load(d, 4)
        load.at(1)
        nodes[0].proc.signal(signal.SIGTERM)
        t_term = time.monotonic()
        gone = wait_for(lambda: bal.down() >= 1, 5, "%s: node 1 marked down after its SIGTERM" % bal.name)
        r = load.result("stop")
        eq(r["errors_total"], 0, "%s: failed requests while node 1 stopped gracefully (%s)" % (bal.name, r["errors"]))
        eq(nodes[0].proc.wait(max(0.0, t_term + 10 - time.monotonic())), 0, "node 1's exit status after SIGTERM")
        print("  %s: node 1 marked down %.0f ms after its SIGTERM (stop_delay_ms %d)" % (bal.name, gone * 1000,
                                                                                        STOP_DELAY_MS))

        bal.stop()
        bal = None
        for n in nodes:
            eq(n.stop(), 0, "node %d's exit status" % n.i)
            n.proc.check_sanitizers()
    finally:
        try:
            if bal:
                bal.proc.kill()
            for n in nodes:
                if n.proc.alive():
                    n.proc.kill()
            end_adopted(adopted)
            net.leave()
        finally:
            net.remove()


def run():
    if os.geteuid() != 0:
        raise Skip("network namespaces need root")
    # A timeout's SIGTERM unwinds through the finally blocks: the namespaces go, the processes end.
    signal.signal(signal.SIGTERM, lambda signo, frame: fail("stopped by SIGTERM (a timeout?)"))
    t = Subtests()
    for name, kind in [("keel as the balancer", KeelBalancer), ("HAProxy as the balancer", HAProxyBalancer)]:
        with tempfile.TemporaryDirectory(prefix="keel-cluster-") as d:
            t.run(name, lambda: cluster(d, kind))
    return t.status()


if __name__ == "__main__":
    main(run)
