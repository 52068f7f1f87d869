#!/usr/bin/env python3
"""testssl.sh (Debian's package `testssl.sh`, 3.0.8 in Debian 12) against
keel serve over TLS with its default profile: no finding may be rated worse
than LOW.

keel serve runs as test_tls.py starts it, with an ECDSA P-256 and an RSA-2048
certificate at once and nothing else about TLS set: --listen 127.0.0.1:0
--workers 1 --tls-cert ecdsa.pem --tls-key ecdsa.key --tls-cert rsa.pem
--tls-key rsa.key DIR. The PKI is test_tls.py's Pki with only a root and
the two leaves (for localhost and 127.0.0.1), made as a public CA would issue
them, so that testssl judges keel and not the test's certificates: valid for
90 days (testssl rates under 30 days left HIGH, under 60 MEDIUM), with a CRL
distribution point (none and no OCSP URI either is HIGH; the URL is never
fetched, testssl runs without --phone-out). The root is given to testssl with
--add-ca, so the chain of trust is checked too.

testssl.sh is told to touch nothing but 127.0.0.1: the target is
localhost:PORT (the SNI name) with --ip 127.0.0.1 and --nodns none (no DNS
lookup of its own), no --phone-out (no CRL or OCSP fetch), and
NXCONNECT=127.0.0.1:0 in its environment: it probes which options its
openssl has with `openssl s_client ... -connect invalid.`, 30 DNS queries to
the system's resolver without it (strace saw them; with it, every socket it
opens is to 127.0.0.1, and to ::1 port 4433, refused, where a probe gives no
-connect at all). Also --warnings off and stdin from /dev/null (never a
question), --connect-timeout 10 and --openssl-timeout 10 (a hung connection
costs 10 s, not forever), --quiet --color 0, and --jsonfile (the flat JSON:
one object per finding, with id, severity, finding). The whole run is
bounded (TESTSSL_S), then killed with its process group.

Checks run: -p protocols, -s cipher categories, -f forward secrecy, -P
server preference, -S server defaults (certificates, extensions, session
resumption), -U every vulnerability check (Heartbleed, CCS, Ticketbleed,
ROBOT, renegotiation, CRIME, BREACH, POODLE, TLS_FALLBACK_SCSV, SWEET32,
FREAK, DROWN, LOGJAM, BEAST, LUCKY13, RC4) and -E the ciphers per protocol:
about 25 s on 2 idle cores, 14 s of it CPU (testssl is bash and a few
thousand processes), so up to twice that on a busy machine. Left out: the
HTTP headers (-h: HSTS and the like are the site's, not TLS's), the client
simulations (-c: 11 s, a list of which old clients connect, no rating) --
those two make the default run 40 s -- and -g (GREASE and ClientHello
sizes: OpenSSL's parser, not keel's, and test_tls.py sends unknown ALPN
names; 3 to 8 s).

The verdict is on the JSON. testssl's severity field is one of INFO, OK,
LOW, MEDIUM, HIGH, CRITICAL (its rating), WARN (testssl could not run a check:
a problem on its side) and FATAL (the scan stopped). "NOT ok" and "VULNERABLE"
are not severities: they are words of the finding (on the screen "(NOT ok)"
marks HIGH and CRITICAL ratings and a few LOW ones; a positive vulnerability
finding says VULNERABLE in capitals, LOW or MEDIUM ones included, a negative
"not vulnerable"). A failure is
  - a finding rated MEDIUM, HIGH or CRITICAL, or FATAL. MEDIUM too: testssl
    3.0.8 rates a server with no forward secrecy and only CBC
    (--tls-ciphers AES128-SHA) MEDIUM and nothing worse, and keel's default
    profile has no MEDIUM finding at all;
  - a finding whose text says VULNERABLE or NOT ok, whatever its rating;
  - a check asked for with no verdict in the JSON (missing, or only WARN);
  - with the default profile, what docs/tls.md promises not holding: TLS 1.2
    and 1.3 offered, SSLv2, SSLv3, TLS 1.0 and 1.1 not (testssl rates TLS 1.0
    and 1.1 only LOW), both certificates served, each chain trusted;
  - keel dying, or not exiting 0 on SIGTERM at the end.
LOW and WARN findings are printed, not failures. LOW is e.g. CBC ciphers or
TLS 1.0 offered (a changed profile, which the rules above catch) or a short
certificate serial number. WARN is testssl's own trouble: e.g.
sessionresumption_ticket "check failed because of connect problem" comes
and goes because openssl s_client -sess_out exits at once and now and then
before the TLS 1.3 ticket has arrived (as often against openssl s_server).

One rating is re-rated: testssl 3.0.8 rates a server without a cipher order
of its own (cipher_order "NOT a cipher order configured") HIGH whatever
ciphers the client could pick from. keel leaves the choice to the client on
purpose (Mozilla's intermediate profile, docs/tls.md), and testssl 3.2 rates
it by the worst cipher offered (upstream issue #1311): INFO when every one
is AEAD with an ephemeral key exchange. The same is done here, from the
ciphers -E found; with one weaker cipher offered it stays HIGH.

Usage: test_testssl.py [keel serve option ...]: options added to keel serve
to judge another profile, e.g. --tls-protocols TLSv1.2 --tls-ciphers
AES128-SHA (which must fail); the default profile's own checks are then not
made. Runs under the backend in KEEL_BACKEND.
Exit status: 0 pass, 1 fail, 77 skip (testssl.sh or openssl missing)."""
import collections, json, os, re, shutil, signal, subprocess, sys, tempfile, time

import keeltest
from keeltest import KEEL, Proc, Skip, Subtests, check, eq, fail, main
import test_tls
from test_tls import CA_EXT, Pki, server_ext

TESTSSL = shutil.which("testssl") or shutil.which("testssl.sh")  # Debian's name, upstream's
TESTSSL_S = 120  # the whole scan; it takes 25 to 50 s
CHECKS = ["-p", "-s", "-f", "-P", "-S", "-U", "-E"]
DAYS = 90
CRL_URL = "http://127.0.0.1:9/keel-test-ca.crl"  # never fetched (no --phone-out)
EXTRA = sys.argv[1:]  # keel serve options to judge another profile with

# Ids that must have a verdict (not only WARN), one of each tuple (the second: testssl 3.2's name).
VERDICTS = [
    ("SSLv2",), ("SSLv3",), ("TLS1",), ("TLS1_1",), ("TLS1_2",), ("TLS1_3",),
    ("cipherlist_NULL",), ("cipherlist_aNULL",), ("cipherlist_EXPORT",), ("cipherlist_LOW",),
    ("cipherlist_3DES_IDEA",), ("cipherlist_AVERAGE", "cipherlist_OBSOLETED"),
    ("PFS", "FS"), ("cipher_order",), ("cert_numbers",), ("cert_chain_of_trust",), ("cert_trust",),
    ("heartbleed",), ("CCS",), ("ticketbleed",), ("ROBOT",), ("secure_renego",), ("secure_client_renego",),
    ("CRIME_TLS",), ("BREACH",), ("POODLE_SSL",), ("fallback_SCSV",), ("SWEET32",), ("FREAK",), ("DROWN",),
    ("LOGJAM",), ("BEAST",), ("LUCKY13",), ("RC4",),
]
BAD = ("MEDIUM", "HIGH", "CRITICAL", "FATAL")  # ratings that fail
ORDER = ["FATAL", "CRITICAL", "HIGH", "MEDIUM", "LOW", "WARN", "OK", "INFO", "DEBUG"]


class TestsslPki(Pki):
    """test_tls's Pki with a root (ca) and two leaves for localhost and 127.0.0.1 (ecdsa, rsa),
    valid for DAYS days, the leaves with a CRL distribution point."""

    def __init__(self, d):
        self.d = d
        crl = "crlDistributionPoints=URI:%s\n" % CRL_URL
        local = "DNS:localhost,IP:127.0.0.1"
        self.cert("ca", "ec", "/CN=keel test CA", None, CA_EXT, days=DAYS)
        self.cert("ecdsa", "ec", "/O=keel-ecdsa/CN=localhost", "ca", server_ext(local) + crl, days=DAYS)
        self.cert("rsa", "rsa", "/O=keel-rsa/CN=localhost", "ca", server_ext(local, rsa=True) + crl, days=DAYS)
        self.ca = self.p("ca.pem")


# ---- Running testssl.sh ----------------------------------------------------------------------------

def testssl_version(tmp):
    r = subprocess.run([TESTSSL, "--version"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       errors="replace", timeout=30, cwd=tmp)
    m = re.search(r"testssl(?:\.sh)?\s+(\d\S*)", re.sub(r"\x1b\[[0-9;]*m", "", r.stdout))
    return m.group(1) if m else "unknown (%s)" % r.stdout.strip()[:100]


def scan(port, pki, tmp):
    """testssl.sh CHECKS against localhost:port at 127.0.0.1: (exit status, screen text, findings)."""
    out, js = os.path.join(tmp, "testssl.txt"), os.path.join(tmp, "testssl.json")
    args = [TESTSSL, "--quiet", "--color", "0", "--warnings", "off", "--nodns", "none", "--ip", "127.0.0.1",
            "--add-ca", pki.ca, "--connect-timeout", "10", "--openssl-timeout", "10", "--jsonfile", js,
            *CHECKS, "localhost:%d" % port]
    print("$ " + " ".join(args), flush=True)
    env = dict(os.environ, TERM_WIDTH="120", NXCONNECT="127.0.0.1:0")  # NXCONNECT: no DNS (see the docstring)
    t0 = time.monotonic()
    with open(out, "wb") as f:
        # Its own process group: on a timeout the openssl processes under it go too.
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, cwd=tmp, env=env,
                             start_new_session=True)
        try:
            rc = p.wait(TESTSSL_S)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
            rc = None
    text = open(out, errors="replace").read()
    print(text.rstrip("\n"), flush=True)
    print("testssl.sh took %.1f s, exit status %s" % (time.monotonic() - t0, rc), flush=True)
    check(rc is not None, "testssl.sh still running after %d s: killed" % TESTSSL_S)
    # 242..255 are its own errors (ERR_CHILD .. ERR_BASH); below, the sum of its checks' trouble (WARNs).
    check(rc < 242, "testssl.sh failed: exit status %d (see its output above)" % rc)
    try:
        with open(js) as f:
            findings = json.load(f)
    except (OSError, ValueError) as e:
        fail("testssl.sh's JSON file %s: %s" % (js, e))
    check(isinstance(findings, list) and all(isinstance(x, dict) and {"id", "severity", "finding"} <= set(x)
                                             for x in findings),
          "testssl.sh's JSON is not a list of findings with id, severity and finding: %.300r" % (findings,))
    return rc, text, findings


# ---- Judging ---------------------------------------------------------------------------------------

def cipher_quality(rfc):
    """testssl 3.2's get_cipher_quality of a cipher's IANA name: 7 for AEAD with (EC)DHE or TLS 1.3,
    6 AEAD with static key exchange, 5 other, 4 CBC, 3 3DES/IDEA, 2 RC4/DES/MD5, 1 NULL/export/anon."""
    if re.search(r"NULL|EXP|_DES40_|anon|^TLS_SHA", rfc):
        return 1
    if re.search(r"RC4|RC2|MD5$|MD5_1$", rfc):
        return 2
    if "_DES_" in rfc:
        return 3 if "EDE3" in rfc else 2
    if re.search(r"CBC3|3DES|IDEA", rfc):
        return 3
    if re.search(r"CBC|GOST", rfc):
        return 4
    if re.match(r"TLS_RSA_|TLS_DH_|TLS_ECDH_|TLS_PSK_WITH_", rfc):
        return 6
    if re.search(r"GCM|CCM|CHACHA20", rfc):
        return 7
    return 5


def offered_ciphers(findings):
    """{IANA name: quality} of the ciphers -E found (ids cipher-<proto>_x<hex>; the name is the last
    column of the finding, "-" where testssl has none)."""
    out = {}
    for x in findings:
        if re.match(r"cipher-(ssl|tls)", x["id"]):
            name = x["finding"].split()[-1] if x["finding"].split() else "-"
            out[name] = cipher_quality(name) if name.startswith(("TLS_", "SSL_")) else 0
    return out


def rerate(findings):
    """The findings with cipher_order re-rated as testssl 3.2 does (see the docstring)."""
    ciphers = offered_ciphers(findings)
    out = []
    for x in findings:
        x = dict(x)
        if x["id"] == "cipher_order" and x["severity"] == "HIGH":
            worst = min(ciphers.values(), default=0)
            if worst == 7:
                x["severity"] = "INFO"
                x["finding"] += (" [re-rated INFO from HIGH as testssl 3.2 does: the client picks, and all %d "
                                 "ciphers offered are AEAD with an ephemeral key exchange]" % len(ciphers))
            else:
                weak = sorted(n for n, q in ciphers.items() if q < 7) or ["(no ciphers found by -E)"]
                x["finding"] += " [stays HIGH: the client may pick %s]" % ", ".join(weak)
        out.append(x)
    return out


def show(findings):
    """The findings rated other than OK and INFO, worst first, and the count of each rating."""
    rank = {s: i for i, s in enumerate(ORDER)}
    notable = [x for x in findings if x["severity"] not in ("OK", "INFO", "DEBUG")]
    notable += [x for x in findings if "[re-rated" in x["finding"]]
    notable.sort(key=lambda x: rank.get(x["severity"], -1))
    print("findings rated other than OK and INFO (and the re-rated):", flush=True)
    for x in notable:
        print("  %-8s %-36s %s" % (x["severity"], x["id"], x["finding"]), flush=True)
    if not notable:
        print("  (none)", flush=True)
    n = collections.Counter(x["severity"] for x in findings)
    print("ratings: " + ", ".join("%s %d" % (s, n[s]) for s in sorted(n, key=lambda s: rank.get(s, -1))), flush=True)


def by_id(findings, name):
    """The findings whose id is name, or name with a " <cert#N>" suffix."""
    return [x for x in findings if x["id"] == name or x["id"].startswith(name + " <")]


def t_verdicts(S):
    missing = []
    for names in VERDICTS:
        got = [x for n in names for x in by_id(S["findings"], n)]
        if not any(x["severity"] != "WARN" for x in got):
            missing.append("%s (%s)" % ("/".join(names), "; ".join("WARN: " + x["finding"] for x in got)
                                        or "not in the JSON"))
    check(not missing, "testssl.sh gave no verdict on: " + ", ".join(missing))


def t_ratings(S):
    bad = [x for x in S["findings"]
           if x["severity"] in BAD or (re.search(r"VULNERABLE|NOT ok", x["finding"])
                                       and not x["finding"].startswith("-----BEGIN"))]  # a certificate's PEM
    check(not bad, "%d finding(s) rated MEDIUM or worse, or saying VULNERABLE or NOT ok:\n%s"
          % (len(bad), "\n".join("  %-8s %-36s %s" % (x["severity"], x["id"], x["finding"]) for x in bad)))


def t_profile(S):
    f = S["findings"]

    def one(name):
        got = by_id(f, name)
        eq(len(got), 1, "findings with id %s" % name)
        return got[0]["finding"]

    for name, want in (("TLS1_2", "offered"), ("TLS1_3", "offered"), ("SSLv2", "not offered"),
                       ("SSLv3", "not offered"), ("TLS1", "not offered"), ("TLS1_1", "not offered")):
        got = one(name)
        check(got.startswith(want), "%s: %r, expected %s" % (name, got, want))
    eq(one("cert_numbers"), "2", "certificates testssl.sh saw (ECDSA and RSA)")
    keys = sorted(x["finding"].split()[0] for x in by_id(f, "cert_keySize"))
    eq(keys, ["EC", "RSA"], "the certificates' key types")
    for x in by_id(f, "cert_chain_of_trust"):
        check(x["severity"] == "OK" and x["finding"].startswith("passed"), "%s: %s %r, expected OK passed"
              % (x["id"], x["severity"], x["finding"]))
    for x in by_id(f, "cert_trust"):
        check(x["severity"] == "OK", "%s: %s %r, expected OK" % (x["id"], x["severity"], x["finding"]))


# ---- The whole -------------------------------------------------------------------------------------

def test():
    if not TESTSSL:
        raise Skip("testssl.sh is not installed: apt-get install testssl.sh")
    if not test_tls.OPENSSL:
        raise Skip("openssl is not installed: apt-get install openssl")
    tmp = tempfile.mkdtemp(prefix="keel-testssl")
    try:
        return run(tmp)
    finally:
        keeltest.kill_all()
        shutil.rmtree(tmp, ignore_errors=True)


def run(tmp):
    print("testssl.sh %s (%s)" % (testssl_version(tmp), TESTSSL), flush=True)
    os.mkdir(os.path.join(tmp, "pki"))
    pki = TestsslPki(os.path.join(tmp, "pki"))
    root = os.path.join(tmp, "www")
    os.mkdir(root)
    with open(os.path.join(root, "index.html"), "w") as f:
        f.write("<!doctype html><title>keel</title><p>testssl.sh was here\n")
    args = [KEEL, "serve", "--listen", "127.0.0.1:0", "--workers", "1"]
    for name in ("ecdsa", "rsa"):
        cert, key = pki.pair(name)
        args += ["--tls-cert", cert, "--tls-key", key]
    keel = Proc(args + EXTRA + [root], name="keel serve (TLS)")
    S = {"findings": None}

    def t_scan():
        rc, text, findings = scan(keel.port, pki, tmp)
        S["findings"] = rerate(findings)
        show(S["findings"])
        check(keel.alive(), "keel serve died during the scan; output:\n%s" % keel.shown())

    def after_scan(fn):
        def part():
            if S["findings"] is None:
                fail("no findings: the scan failed")
            fn(S)
        return part

    sub = Subtests(only=[])
    sub.run("testssl.sh %s against keel serve%s" % (" ".join(CHECKS), " " + " ".join(EXTRA) if EXTRA else ""),
            t_scan)
    sub.run("every check asked for has a verdict (not only WARN)", after_scan(t_verdicts))
    sub.run("no finding rated MEDIUM, HIGH, CRITICAL or FATAL, none saying VULNERABLE or NOT ok",
            after_scan(t_ratings))
    if not EXTRA:
        sub.run("the default profile as docs/tls.md says: TLS 1.2 and 1.3 only, ECDSA and RSA, trusted chains",
                after_scan(t_profile))
    sub.run("stop: keel serve exits 0 on SIGTERM", lambda: keel.stop_ok("keel serve (TLS)"))
    return sub.status()


if __name__ == "__main__":
    main(test)
