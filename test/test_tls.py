#!/usr/bin/env python3
"""keel serve over TLS end to end, with real clients: curl, Python's ssl
module and `openssl s_client`, plus raw sockets (and TLS through memory BIOs,
so the test decides which bytes go on the wire when) for the bad input.

A throwaway PKI is made with the openssl CLI in a temporary directory: a root
CA; an ECDSA P-256 leaf and an RSA-2048 leaf for localhost and 127.0.0.1; an
ECDSA leaf for b.example (SNI) and one for *.w.example; a leaf behind an
intermediate CA; a client CA with a client certificate, and a client
certificate from the wrong CA; an OCSP response about the ECDSA leaf; the
ECDSA key under a passphrase. Each leaf's subject has its own O= (keel-ecdsa,
keel-rsa, keel-b, keel-wild, keel-chain), and certificates are told apart by
their DER bytes where a client gives them. (Python's ssl cannot set signature
algorithms: TLS 1.3's choice between the ECDSA and the RSA certificate is
driven with s_client -sigalgs, TLS 1.2's with Python and the cipher suites.)

Servers (keel serve --workers 1 on 127.0.0.1 port 0, each started when a part
first needs it and stopped by its PID; all must exit 0 on SIGTERM at the end):
  M  ECDSA + RSA + b.example + *.w.example pairs, --status: the ordinary cases
  K  ECDSA + RSA, --queue-delay-us 0, --status: 64 concurrent clients, 500 idle ones
  plain  keel serve without TLS on the same directory, to compare answers with
  O  ECDSA + RSA + b.example (each file with the root after the leaf), --tls-ocsp
     with a response about the ECDSA certificate
  T  --tls-handshake-timeout-ms 300, --status
  H  --tls-handshakes-max 2, --status
  A  --tls-client-ca (mTLS)
  C  the leaf with its intermediate in the certificate file
  P2 --tls-protocols TLSv1.2 --tls-ciphers ECDHE-ECDSA-CHACHA20-POLY1305
  P3 --tls-protocols TLSv1.3;  P23 --tls-protocols "TLSv1.3 TLSv1.2"
  W  --workers 2 (session tickets across workers)
  N  --tls-no-tickets
Under a sanitizer build, shedding (--queue-delay-us) is off and RSS is not
judged.

Every wait has a deadline and every loop a bound. Runs under the backend in
KEEL_BACKEND. Usage: test_tls.py [part-name-substring ...]
Exit status: 0 pass, 1 fail, 77 skip (openssl or curl missing)."""
import collections, http.client, os, random, re, select, shutil, socket, struct, subprocess, sys, tempfile, threading, time
import warnings

try:
    import ssl
except ImportError:  # a Python built without OpenSSL: the system's has it
    if os.path.realpath(sys.executable) != os.path.realpath("/usr/bin/python3") and os.access("/usr/bin/python3", os.X_OK):
        os.execv("/usr/bin/python3", ["/usr/bin/python3", *sys.argv])
    print("SKIP: this Python has no ssl module", flush=True)
    sys.exit(77)

from keeltest import BACKEND, CURL, KEEL, Proc, Skip, Subtests, check, connect, eq, fail, main, run_keel, sha
import keeltest

warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1 contexts, on purpose

OPENSSL = shutil.which("openssl")
HELLO = b"hello over tls\n"
MIB = 1 << 20
ODD = 5 * MIB + 3
# Mozilla's "intermediate" TLS 1.2 suites (OpenSSL names): keel's default list.
MOZ_INTERMEDIATE_12 = {
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-CHACHA20-POLY1305"}
# TLS 1.2 suites outside that list: none may be agreed to.
WEAK_12 = ["AES128-SHA", "AES256-SHA256", "DES-CBC3-SHA", "RC4-SHA", "RC4-MD5", "ECDHE-RSA-AES128-SHA",
           "ECDHE-ECDSA-AES128-SHA", "AECDH-AES128-SHA", "ADH-AES128-GCM-SHA256", "NULL-SHA256"]
# Handshake failures that happen in the client before anything reaches the server.
CLIENT_SIDE = {"NO_PROTOCOLS_AVAILABLE", "NO_CIPHERS_AVAILABLE", "NO_CIPHER_MATCH", "NO_SUITABLE_SIGNATURE_ALGORITHM"}

PKI = None   # the Pki, made once
KTLS_RE = re.compile(r"kernel TLS (available|emulated)")  # a server's log line when its sends go to the kernel
ROOT = None  # the served directory


# ---- The PKI ---------------------------------------------------------------------------------------

def openssl(*args, timeout=60):
    r = subprocess.run([OPENSSL, *map(str, args)], stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    if r.returncode != 0:
        fail("openssl %s: exit %d: %s" % (" ".join(map(str, args)), r.returncode, r.stderr.decode(errors="replace")))
    return r.stdout


CA_EXT = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n"
INTER_EXT = ("basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n"
             "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n")
CLIENT_EXT = ("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
              "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n")


def server_ext(sans, rsa=False):
    return ("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature%s\nextendedKeyUsage=serverAuth\n"
            "subjectAltName=%s\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n"
            % (",keyEncipherment" if rsa else "", sans))


class Pki:
    """Files in d: NAME.pem and NAME.key for ca, ecdsa, rsa, bex (b.example), inter, chainleaf
    (chain.pem: it and inter), clientca, client, rogue (a client certificate from ca, not clientca)."""

    def __init__(self, d):
        self.d = d
        self.cert("ca", "ec", "/CN=keel test CA", None, CA_EXT)
        local = "DNS:localhost,IP:127.0.0.1"
        self.cert("ecdsa", "ec", "/O=keel-ecdsa/CN=localhost", "ca", server_ext(local))
        self.cert("rsa", "rsa", "/O=keel-rsa/CN=localhost", "ca", server_ext(local, rsa=True))
        self.cert("bex", "ec", "/O=keel-b/CN=b.example", "ca", server_ext("DNS:b.example"))
        self.cert("wild", "ec", "/O=keel-wild/CN=*.w.example", "ca", server_ext("DNS:*.w.example"))
        self.cert("inter", "ec", "/CN=keel test intermediate CA", "ca", INTER_EXT)
        self.cert("chainleaf", "ec", "/O=keel-chain/CN=localhost", "inter", server_ext(local))
        openssl("pkey", "-in", self.p("ecdsa.key"), "-aes256", "-passout", "pass:secret", "-out", self.p("enc.key"))
        with open(self.p("chain.pem"), "w") as f:
            f.write(open(self.p("chainleaf.pem")).read() + open(self.p("inter.pem")).read())
        self.cert("clientca", "ec", "/CN=keel test client CA", None, CA_EXT)
        self.cert("client", "ec", "/O=keel-client/CN=client", "clientca", CLIENT_EXT)
        self.cert("rogue", "ec", "/O=keel-rogue/CN=client", "ca", CLIENT_EXT)
        self.ca = self.p("ca.pem")
        self.serial = {n: openssl("x509", "-noout", "-serial", "-in", self.p(n + ".pem")).decode().strip().split("=")[1]
                       for n in ("ecdsa", "rsa", "bex")}
        self.ocsp("ecdsa")
        for n in ("ecdsa", "rsa", "bex"):  # the root too, for curl --cert-status to find the issuer in
            with open(self.p(n + "-full.pem"), "w") as f:
                f.write(open(self.p(n + ".pem")).read() + open(self.ca).read())
        self.der = {n: ssl.PEM_cert_to_DER_cert(open(self.p(n + ".pem")).read())
                    for n in ("ecdsa", "rsa", "bex", "wild", "chainleaf")}

    def p(self, name):
        return os.path.join(self.d, name)

    def pair(self, name):
        return self.p(name + ".pem"), self.p(name + ".key")

    def cert(self, name, kind, subj, issuer, ext, days=2):
        key = self.p(name + ".key")
        if kind == "ec":
            openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
        else:
            openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key)
        with open(self.p(name + ".ext"), "w") as f:
            f.write(ext)
        openssl("req", "-new", "-key", key, "-subj", subj, "-out", self.p(name + ".csr"))
        sign = (["-signkey", key] if issuer is None
                else ["-CA", self.p(issuer + ".pem"), "-CAkey", self.p(issuer + ".key")])
        # The serial always 8 bytes long (test_testssl.py: testssl rates a shorter one LOW).
        openssl("x509", "-req", "-in", self.p(name + ".csr"), *sign, "-days", days, "-sha256",
                "-set_serial", 1 << 62 | random.getrandbits(62), "-extfile", self.p(name + ".ext"), "-out", self.p(name + ".pem"))

    def ocsp(self, name):
        """NAME.ocsp.der: a "good" OCSP response for NAME, signed by the CA, good for a day."""
        with open(self.p("index.txt"), "w") as f:
            f.write("V\t301231000000Z\t\t%s\tunknown\t/CN=x\n" % self.serial[name])
        openssl("ocsp", "-issuer", self.ca, "-cert", self.p(name + ".pem"), "-no_nonce", "-reqout", self.p(name + ".ocspreq"))
        openssl("ocsp", "-index", self.p("index.txt"), "-rsigner", self.ca, "-rkey", self.p("ca.key"), "-CA", self.ca,
                "-reqin", self.p(name + ".ocspreq"), "-respout", self.p(name + ".ocsp.der"), "-ndays", 1)

    def which(self, der):
        """The name of the leaf whose DER is der, or a short description of an unknown one."""
        for n, d in self.der.items():
            if d == der:
                return n
        return "unknown certificate (%d bytes)" % len(der or b"")


# ---- Servers ---------------------------------------------------------------------------------------

# Under a sanitizer a tick runs many times slower: the default 20 ms queue-delay budget would shed
# (503) requests behind 64 clients' encryption, which is admission control working, not TLS.
SLOW_BUILD = bool(re.search(r"san|fault", os.path.basename(os.path.abspath(keeltest.BUILD))))
SHED_OFF = ("--queue-delay-us", 0) if SLOW_BUILD else ()


def keel_tls(*extra, pairs=("ecdsa",), workers=1, name="keel serve (TLS)"):
    args = [KEEL, "serve", "--listen", "127.0.0.1:0", "--workers", workers, *SHED_OFF]
    for p in pairs:
        cert, key = PKI.pair(p) if isinstance(p, str) else p
        args += ["--tls-cert", cert, "--tls-key", key]
    return Proc(args + list(extra) + [ROOT], name=name)


# ---- Clients ---------------------------------------------------------------------------------------

def ctx(minv=None, maxv=None, ciphers=None, alpn=None, cert=None, verify=True, seclevel0=False):
    """A client context that trusts the test CA (verify=False: trusts anything, checks no name)."""
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        c.load_verify_locations(PKI.ca)
    else:
        c.check_hostname = False
        c.verify_mode = ssl.CERT_NONE
    if minv is not None:
        c.minimum_version = minv
    if maxv is not None:
        c.maximum_version = maxv
    if ciphers is not None or seclevel0:
        c.set_ciphers((ciphers or "DEFAULT") + (":@SECLEVEL=0" if seclevel0 else ""))
    if alpn:
        c.set_alpn_protocols(alpn)
    if cert:
        c.load_cert_chain(*PKI.pair(cert))
    return c


def ctx12(**kw):
    return ctx(maxv=ssl.TLSVersion.TLSv1_2, **kw)


def ctx13(**kw):
    return ctx(minv=ssl.TLSVersion.TLSv1_3, **kw)


def tls_connect(port, c, sni="localhost", timeout=5.0, session=None):
    raw = connect(port, timeout)
    try:
        return c.wrap_socket(raw, server_hostname=sni, session=session)
    except BaseException:
        raw.close()
        raise


def get_req(path, close=True, method="GET"):
    return ("%s %s HTTP/1.1\r\nHost: localhost\r\n%s\r\n"
            % (method, path, "Connection: close\r\n" if close else "")).encode()


class Reader:
    """HTTP/1.1 responses (Content-Length framed) from recv(n), which returns b"" at the end."""

    def __init__(self, recv):
        self.recv = recv
        self.buf = bytearray()

    def more(self, what):
        try:
            d = self.recv(65536)
        except (socket.timeout, TimeoutError):
            fail("%s: timed out; have %d bytes %r" % (what, len(self.buf), bytes(self.buf[:200])))
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            d = b""
        if not d:
            return False
        self.buf += d
        return True

    def response(self, what, head=False):
        """(status, {lowercase name: value}, body)."""
        for _ in range(100000):
            if b"\r\n\r\n" in self.buf:
                break
            if not self.more(what):
                fail("%s: the connection ended before a whole response head; have %r" % (what, bytes(self.buf[:300])))
        i = self.buf.index(b"\r\n\r\n")
        lines = bytes(self.buf[:i]).split(b"\r\n")
        del self.buf[:i + 4]
        m = re.match(rb"HTTP/1\.[01] (\d{3})", lines[0])
        check(m, "%s: not a status line: %r" % (what, lines[0][:100]))
        hs = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(b":")
            hs[k.strip().lower().decode()] = v.strip().decode()
        check("chunked" not in hs.get("transfer-encoding", ""), "%s: chunked response, not expected: %r" % (what, hs))
        n = 0 if head else int(hs.get("content-length", "0"))
        for _ in range(100000):
            if len(self.buf) >= n:
                break
            if not self.more(what):
                fail("%s: the connection ended after %d of %d body bytes" % (what, len(self.buf), n))
        body = bytes(self.buf[:n])
        del self.buf[:n]
        return int(m.group(1)), hs, body


def https_get(port, path, c=None, sni="localhost", what=None):
    """One GET on a new TLS connection: (status, headers, body, the TLS socket's facts)."""
    what = what or "GET %s over TLS" % path
    s = tls_connect(port, c or ctx(), sni)
    with s:
        facts = {"version": s.version(), "cipher": s.cipher()[0], "alpn": s.selected_alpn_protocol(),
                 "cert": PKI.which(s.getpeercert(binary_form=True)), "reused": s.session_reused}
        s.sendall(get_req(path))
        st, hs, body = Reader(s.recv).response(what)
    return st, hs, body, facts


def until_close(s, secs):
    """What arrives on s until the peer closes: (bytes, how), how "eof", "reset" or "open" (still
    open after secs)."""
    deadline = time.monotonic() + secs
    data = b""
    for _ in range(100000):
        left = deadline - time.monotonic()
        if left <= 0:
            return data, "open"
        s.settimeout(left)
        try:
            d = s.recv(65536)
        except (socket.timeout, TimeoutError):
            return data, "open"
        except ConnectionResetError:
            return data, "reset"
        if not d:
            return data, "eof"
        data += d
    return data, "open"


def describe(data):
    """A few words on what a server sent: a TLS alert, a TLS record, or bytes."""
    if len(data) >= 7 and data[0] == 0x15:
        return "TLS alert level %d description %d (%d bytes in all)" % (data[5], data[6], len(data))
    if data[:1] in (b"\x14", b"\x16", b"\x17"):
        return "TLS record type %d (%d bytes in all)" % (data[0], len(data))
    return "%d bytes %r" % (len(data), data[:80])


def sendall_quiet(s, data):
    """sendall that treats the server's close as ordinary: False if it was."""
    try:
        s.sendall(data)
        return True
    except (BrokenPipeError, ConnectionResetError):
        return False


class BioTLS:
    """TLS through memory BIOs on a plain socket: the test sees and sends the bytes itself."""

    def __init__(self, port, c, sni="localhost", timeout=5.0):
        self.sock = connect(port, timeout)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = c.wrap_bio(self.inc, self.out, server_hostname=sni)

    def hello(self):
        """The ClientHello, not sent."""
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return self.out.read()

    def flush(self):
        d = self.out.read()
        if d:
            self.sock.sendall(d)

    def feed(self):
        try:
            d = self.sock.recv(65536)
        except ConnectionResetError:
            d = b""
        if d:
            self.inc.write(d)
        return bool(d)

    def handshake(self, what, flush_last=True):
        """Finish the handshake (whatever was sent so far); flush_last=False keeps the client's
        last flight (its Finished) unsent, for the caller to send with what follows."""
        for _ in range(1000):
            try:
                self.tls.do_handshake()
                if flush_last:
                    self.flush()
                return
            except ssl.SSLWantReadError:
                self.flush()
                try:
                    more = self.feed()
                except (socket.timeout, TimeoutError):
                    fail("%s: handshake: no answer within %.0f s" % (what, self.sock.gettimeout()))
                if not more:
                    fail("%s: the server closed during the handshake" % what)
        fail("%s: the handshake did not finish" % what)

    def send(self, data):
        self.tls.write(data)
        self.flush()

    def recv(self, n=65536):
        for _ in range(100000):
            try:
                return self.tls.read(n)
            except ssl.SSLWantReadError:
                self.flush()
                if not self.feed():
                    self.inc.write_eof()
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
        return b""

    def ending(self, secs=5):
        """How the stream ends after what was read: "close_notify", "eof" (TCP only), "reset",
        "open" (nothing within secs) or "data" (more bytes came)."""
        self.sock.settimeout(secs)
        for _ in range(1000):
            try:
                return "data" if self.tls.read(65536) else "close_notify"
            except ssl.SSLZeroReturnError:
                return "close_notify"
            except ssl.SSLEOFError:
                return "eof"
            except ssl.SSLWantReadError:
                try:
                    if not self.feed():
                        self.inc.write_eof()
                except (socket.timeout, TimeoutError):
                    return "open"
                except ConnectionResetError:
                    return "reset"
        return "open"

    def close(self):
        self.sock.close()


def client_hello(c, sni="localhost"):
    """A real ClientHello from context c, as bytes (b"" if c cannot make one)."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = c.wrap_bio(inc, out, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        return out.read()
    except ssl.SSLError:
        return b""
    return b""


def refused(port, c, what, sni="localhost"):
    """A handshake with c must fail on the server's account (an alert or a close). Returns the
    reason; None when the client cannot offer what c asks for, so the server was never asked."""
    if not client_hello(c, sni):
        return None
    raw = connect(port, 5)
    try:
        s = c.wrap_socket(raw, server_hostname=sni)
    except ssl.SSLError as e:
        reason = e.reason or str(e)
        if reason in CLIENT_SIDE:
            return None
        return reason
    except (ConnectionResetError, BrokenPipeError) as e:
        return repr(e)
    except (socket.timeout, TimeoutError):
        fail("%s: the server neither answered nor closed within 5 s" % what)
    finally:
        raw.close()
    v, ci = s.version(), s.cipher()
    s.close()
    fail("%s: the handshake succeeded (%s, %s); the server should have refused it" % (what, v, ci))


def curl(*args, max_time=20):
    """curl with the test CA, -sS (bounded)."""
    return keeltest.curl("--cacert", PKI.ca, *args, max_time=max_time)


def resolve(port, *names):
    out = []
    for n in names:
        out += ["--resolve", "%s:%d:127.0.0.1" % (n, port)]
    return out


def subject_seen(stderr):
    """The server certificate's subject from curl -v."""
    m = re.search(rb"^\*\s+subject: ?(.*)$", stderr, re.M)
    return m.group(1).decode(errors="replace") if m else None


def s_client(port, *args, stdin=b"", timeout=15):
    """openssl s_client -connect 127.0.0.1:port ARGS with stdin, to its exit: (rc, stdout+stderr)."""
    try:
        r = subprocess.run([OPENSSL, "s_client", "-connect", "127.0.0.1:%d" % port, "-CAfile", PKI.ca, *args],
                           input=stdin, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        fail("openssl s_client %s did not exit within %d s" % (" ".join(args), timeout))
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


def pem_certs(text):
    return re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)


def leaf_of(text):
    """The server's leaf, from s_client's output (not the responder's certificate in an OCSP response)."""
    certs = pem_certs(re.sub(r"OCSP Response Data:.*?\n=+\n", "", text, flags=re.S))
    return PKI.which(ssl.PEM_cert_to_DER_cert(certs[0] + "\n")) if certs else "no certificate printed"


class Interactive:
    """A program with a pipe to its stdin and its output (stdout and stderr) gathered by a thread."""

    def __init__(self, args):
        self.p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.out = bytearray()
        self.cond = threading.Condition()
        self.eof = False
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        fd = self.p.stdout.fileno()
        while True:
            d = os.read(fd, 65536)
            with self.cond:
                if not d:
                    self.eof = True
                    self.cond.notify_all()
                    return
                self.out += d
                self.cond.notify_all()

    def text(self):
        with self.cond:
            return self.out.decode(errors="replace")

    def wait_for(self, pattern, timeout):
        """True once pattern (a bytes regex) is in the output; False at its end or after timeout s."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if re.search(pattern, self.out):
                    return True
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    return False
                self.cond.wait(left)

    def write(self, data):
        try:
            self.p.stdin.write(data)
            self.p.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            return False

    def finish(self, timeout=5):
        """Close its stdin; its exit status (killed, by PID, if it lingers: None)."""
        try:
            self.p.stdin.close()
        except OSError:
            pass
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(5)
            return None


def status(port):
    st, _, body, _ = https_get(port, "/_keel/status", what="GET /_keel/status")
    eq(st, 200, "GET /_keel/status")
    return dict(l.split(" ", 1) for l in body.decode().splitlines() if " " in l)


def status_when(port, settled, secs=5):
    """/_keel/status once settled(it) holds, or the last one seen after secs. A connection is
    counted until the server has closed it, a few loop ticks after its end: a status request
    right after another may be served in the tick before the other's connection is freed."""
    deadline = time.monotonic() + secs
    while True:
        st = status(port)
        if settled(st) or time.monotonic() > deadline:
            return st
        time.sleep(0.1)


TLS_COUNTERS = {"done": "tls_handshakes_total", "resumed": "tls_resumed_total",
                "failed": "tls_handshake_failed_total", "timeouts": "tls_handshake_timeouts_total",
                "refused": "tls_handshake_refused_total", "plain": "tls_plain_http_total",
                "handshaking": "tls_handshaking", "conns": "tls_conns", "ktls": "tls_ktls_total",
                "ktls_failed": "tls_ktls_failed_total"}


def tls_counter(st, kind):
    """A TLS line of /_keel/status (kind: a key of TLS_COUNTERS); a failure if it is not there."""
    key = TLS_COUNTERS[kind]
    check(key in st, "no %s line in /_keel/status: %r" % (key, sorted(st)))
    return int(st[key])


def stable_fds(srv, secs=3):
    """The server's open descriptor count once it holds still (two looks 100 ms apart agree)."""
    deadline = time.monotonic() + secs
    last = srv.fds()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = srv.fds()
        if now == last:
            return now
        last = now
    return last


# ---- curl ------------------------------------------------------------------------------------------

def t_curl_keepalive(M):
    u = "https://localhost:%d/hello.txt" % M.port
    tmp = PKI.p("curl-out")
    r = curl("-v", *resolve(M.port, "localhost"), "-w", "%{http_code} %{num_connects}\n",
             "-o", tmp + "1", "-o", tmp + "2", "-o", tmp + "3", u, u, u)
    eq(r.returncode, 0, "curl exit status (stderr %r)" % r.stderr[-400:])
    eq(r.stdout.decode().split("\n"), ["200 1", "200 0", "200 0", ""], "status and new connections per URL")
    for i in "123":
        eq(open(tmp + i, "rb").read(), HELLO, "body %s" % i)
    handshakes = len(re.findall(rb"SSL connection using", r.stderr))
    eq(handshakes, 1, "TLS handshakes curl made for 3 URLs")
    check(re.search(rb"Re-?using existing connection", r.stderr), "curl did not say it reused the connection")
    check(b"ALPN: server accepted http/1.1" in r.stderr or b"ALPN, server accepted to use http/1.1" in r.stderr,
          "curl's ALPN line: %r" % re.findall(rb".*ALPN.*", r.stderr))


def t_curl_big(M):
    for name, data in (("big.bin", FILES["big.bin"]), ("odd.bin", FILES["odd.bin"])):
        r = curl(*resolve(M.port, "localhost"), "-o", "-", "-w", "%{http_code}", "https://localhost:%d/%s" % (M.port, name))
        eq(r.returncode, 0, "curl %s exit status (stderr %r)" % (name, r.stderr[-300:]))
        body, code = r.stdout[:-3], r.stdout[-3:]
        eq(code, b"200", name + " status")
        eq(len(body), len(data), name + " length")
        eq(sha(body), sha(data), name + " SHA-256 (first difference at %d)" % keeltest.first_diff(body, data))


def t_curl_head_404(M):
    r = curl(*resolve(M.port, "localhost"), "-I", "https://localhost:%d/big.bin" % M.port)
    eq(r.returncode, 0, "curl -I exit status (stderr %r)" % r.stderr[-300:])
    check(re.match(rb"HTTP/1\.1 200", r.stdout), "HEAD status: %r" % r.stdout[:100])
    check(re.search(rb"(?i)\r\ncontent-length: %d\r\n" % MIB, r.stdout), "HEAD Content-Length: %r" % r.stdout[:400])
    check(r.stdout.endswith(b"\r\n\r\n"), "HEAD: bytes after the head: %r" % r.stdout[-100:])
    r = curl(*resolve(M.port, "localhost"), "-o", "/dev/null", "-w", "%{http_code}", "https://localhost:%d/nope" % M.port)
    eq((r.returncode, r.stdout), (0, b"404"), "GET /nope: (curl exit, status)")


def t_curl_sni(M):
    for host, want in (("localhost", "keel-ecdsa"), ("b.example", "keel-b")):
        r = curl("-v", *resolve(M.port, host), "-o", "-", "https://%s:%d/hello.txt" % (host, M.port))
        eq(r.returncode, 0, "curl https://%s exit status (verification included; stderr %r)" % (host, r.stderr[-400:]))
        eq(r.stdout, HELLO, "body for " + host)
        subj = subject_seen(r.stderr)
        check(subj and want in subj, "SNI %s: curl saw subject %r, want %s" % (host, subj, want))
    # A wildcard covers one label, not the bare name nor two labels (-k: those verify against nothing).
    for host, want, verify in (("a.w.example", "keel-wild", True), ("w.example", "keel-ecdsa", False),
                               ("x.y.w.example", "keel-ecdsa", False)):
        r = curl("-v", *(() if verify else ("-k",)), *resolve(M.port, host), "-o", "-", "https://%s:%d/hello.txt" % (host, M.port))
        eq((r.returncode, r.stdout), (0, HELLO), "SNI %s: (curl exit, body) (stderr %r)" % (host, r.stderr[-300:]))
        subj = subject_seen(r.stderr)
        check(subj and want in subj, "SNI %s: curl saw subject %r, want %s" % (host, subj, want))
    # Python checks the same by the certificate's bytes.
    for host, want in (("localhost", "ecdsa"), ("b.example", "bex"), ("a.w.example", "wild")):
        st, _, body, f = https_get(M.port, "/hello.txt", ctx(), sni=host)
        eq((st, body, f["cert"]), (200, HELLO, want), "python ssl, SNI %s: (status, body, certificate)" % host)


def t_curl_default_cert(M):
    # By address: no SNI at all; the first pair answers, and its IP SAN verifies.
    r = curl("-v", "-o", "-", "https://127.0.0.1:%d/hello.txt" % M.port)
    eq(r.returncode, 0, "curl https://127.0.0.1 exit status (stderr %r)" % r.stderr[-400:])
    eq(r.stdout, HELLO, "body")
    subj = subject_seen(r.stderr)
    check(subj and "keel-ecdsa" in subj, "no SNI: curl saw subject %r, want the first pair (keel-ecdsa)" % subj)
    # A name no certificate has: still the default one (the client's verification fails, so -k).
    r = curl("-v", "-k", *resolve(M.port, "c.example"), "-o", "-", "https://c.example:%d/hello.txt" % M.port)
    eq((r.returncode, r.stdout), (0, HELLO), "unknown SNI name: (curl exit, body)")
    subj = subject_seen(r.stderr)
    check(subj and "keel-ecdsa" in subj, "SNI c.example: curl saw subject %r, want keel-ecdsa" % subj)
    r = curl(*resolve(M.port, "c.example"), "-o", "/dev/null", "https://c.example:%d/hello.txt" % M.port)
    check(r.returncode != 0, "curl verified c.example against a certificate without that name")


# ---- Python ssl ------------------------------------------------------------------------------------

def t_ssl_versions(M):
    st, _, body, f = https_get(M.port, "/hello.txt", ctx13())
    eq((st, body, f["version"]), (200, HELLO, "TLSv1.3"), "TLS 1.3 client: (status, body, version)")
    st, _, body, f = https_get(M.port, "/hello.txt", ctx12())
    eq((st, body, f["version"]), (200, HELLO, "TLSv1.2"), "TLS 1.2 client: (status, body, version)")
    check(f["cipher"] in MOZ_INTERMEDIATE_12, "TLS 1.2 cipher %s is not in Mozilla's intermediate list" % f["cipher"])
    st, _, body, f = https_get(M.port, "/hello.txt", ctx())
    eq((st, f["version"]), (200, "TLSv1.3"), "a client offering both: (status, version)")


def t_ssl_old_versions(M):
    for v in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        c = ctx(minv=v, maxv=v, seclevel0=True)
        reason = refused(M.port, c, "%s client" % v.name)
        if reason is None:
            raise Skip("this OpenSSL cannot make a %s ClientHello" % v.name)
        print("  %s refused: %s" % (v.name, reason))


def t_ssl_weak_ciphers(M):
    tried = []
    for name in WEAK_12:
        try:
            c = ctx12(ciphers=name, seclevel0=True)
        except ssl.SSLError:
            continue  # not in this OpenSSL at all
        reason = refused(M.port, c, "TLS 1.2 client offering only " + name)
        if reason is not None:
            tried.append("%s (%s)" % (name, reason))
    check(len(tried) >= 3, "fewer than 3 weak ciphers could be offered here: %r" % tried)
    print("  refused: " + ", ".join(tried))


def t_ssl_alpn(M):
    for c, what in ((ctx13(alpn=["h2", "http/1.1"]), "TLS 1.3"), (ctx12(alpn=["h2", "http/1.1"]), "TLS 1.2")):
        st, _, body, f = https_get(M.port, "/hello.txt", c)
        eq((st, f["alpn"]), (200, "http/1.1"), "%s, ALPN offered h2 and http/1.1: (status, chosen)" % what)
    st, _, _, f = https_get(M.port, "/hello.txt", ctx13())
    eq((st, f["alpn"]), (200, None), "no ALPN offered: (status, chosen)")
    for c, what in ((ctx13(alpn=["h2"]), "TLS 1.3"), (ctx12(alpn=["h2", "spdy/3"]), "TLS 1.2")):
        reason = refused(M.port, c, "%s, ALPN offered without http/1.1" % what)
        check(reason and re.search(r"(?i)no.application.protocol", reason),
              "%s, ALPN without http/1.1: want the no_application_protocol alert, got %s" % (what, reason))


def t_cert_by_algorithm(M):
    # TLS 1.2: the suite says which key the client takes.
    for suite, want in (("ECDHE-ECDSA-AES128-GCM-SHA256", "ecdsa"), ("ECDHE-RSA-AES128-GCM-SHA256", "rsa")):
        st, _, body, f = https_get(M.port, "/hello.txt", ctx12(ciphers=suite))
        eq((st, body, f["cert"], f["cipher"]), (200, HELLO, want, suite), "TLS 1.2, only %s: (status, body, certificate, suite)" % suite)
    # TLS 1.3: the signature algorithms do; s_client can say which.
    for sigalgs, want in (("ecdsa_secp256r1_sha256", "ecdsa"),
                          ("rsa_pss_rsae_sha256:rsa_pss_rsae_sha384:rsa_pss_rsae_sha512", "rsa")):
        rc, out = s_client(M.port, "-tls1_3", "-servername", "localhost", "-sigalgs", sigalgs, "-verify_return_error")
        eq(rc, 0, "s_client -tls1_3 -sigalgs %s exit status; output:\n%s" % (sigalgs, out[-1500:]))
        eq(leaf_of(out), want, "TLS 1.3, sigalgs %s: the certificate sent" % sigalgs)
        check("Verify return code: 0 (ok)" in out, "s_client -sigalgs %s: verification: %s" % (sigalgs, out[-800:]))


def resume(port, c, what):
    s = tls_connect(port, c)
    with s:
        s.sendall(get_req("/hello.txt", close=False))
        st, _, body = Reader(s.recv).response(what + ", first connection")
        eq((st, body, s.session_reused), (200, HELLO, False), what + ", first connection: (status, body, reused)")
        # TLS 1.3 tickets come after the handshake: reading the response took them in.
        sess = s.session
        v = s.version()
    check(sess is not None and sess.has_ticket, "%s: no session ticket from the server (%r)" % (what, sess))
    offered = sess
    for i in range(2):
        s = tls_connect(port, c, session=offered)
        with s:
            reused = s.session_reused
            s.sendall(get_req("/hello.txt"))
            st, _, body = Reader(s.recv).response(what + ", resumed connection")
            fresh = s.session
        eq((st, body, reused), (200, HELLO, True), "%s (%s), connection %d with %s session: (status, body, reused)"
           % (what, v, i + 2, "the first's" if i == 0 else "the second's fresh"))
        if v == "TLSv1.3":
            # RFC 8446 C.4: a ticket is for one use; a resumed connection brings a fresh one,
            # which the next connection offers (a new ticket, a new session id).
            check(fresh is not None and fresh.has_ticket and fresh.id != offered.id,
                  "%s: no fresh ticket on resumed connection %d" % (what, i + 2))
            offered = fresh


def t_resume12(M):
    resume(M.port, ctx12(), "TLS 1.2 ticket")


def t_resume13(M):
    resume(M.port, ctx13(), "TLS 1.3 ticket")


def t_resume_workers(W):
    c = ctx13()
    s = tls_connect(W.port, c)
    with s:
        s.sendall(get_req("/hello.txt"))
        Reader(s.recv).response("first connection")
        sess = s.session
    reused = 0
    n = 12
    for _ in range(n):
        s = tls_connect(W.port, c, session=sess)
        with s:
            reused += s.session_reused
            s.sendall(get_req("/hello.txt"))
            eq(Reader(s.recv).response("resumed connection")[0], 200, "status")
    eq(reused, n, "connections (spread over 2 workers by the kernel) that resumed the first's session")


def t_keepalive_pipeline(M):
    c = http.client.HTTPSConnection("127.0.0.1", M.port, timeout=10, context=ctx())
    try:
        for name in ["hello.txt", "big.bin", "nope", "hello.txt", "odd.bin"] * 2:
            c.request("GET", "/" + name)
            r = c.getresponse()
            body = r.read()
            if name == "nope":
                eq(r.status, 404, "http.client /nope")
            else:
                eq((r.status, sha(body)), (200, sha(FILES[name])), "http.client /%s: (status, SHA-256)" % name)
    finally:
        c.close()
    names = ["hello.txt", "nope", "big.bin", "hello.txt"] * 8
    s = tls_connect(M.port, ctx())
    with s:
        s.settimeout(20)
        s.sendall(b"".join(get_req("/" + n, close=False) for n in names) + get_req("/hello.txt"))
        rd = Reader(s.recv)
        for i, n in enumerate(names + ["hello.txt"]):
            st, _, body = rd.response("pipelined response %d (/%s)" % (i, n))
            if n == "nope":
                eq(st, 404, "pipelined %d status" % i)
            else:
                eq((st, sha(body)), (200, sha(FILES[n])), "pipelined %d /%s: (status, SHA-256)" % (i, n))
        for _ in range(10):
            if not rd.more("after Connection: close"):
                break
        eq(bytes(rd.buf), b"", "bytes after the last response")


def t_slow_reader(M):
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    raw.settimeout(10)
    raw.connect(("127.0.0.1", M.port))
    s = ctx().wrap_socket(raw, server_hostname="localhost")
    with s:
        s.sendall(get_req("/odd.bin"))
        got = bytearray()
        deadline = time.monotonic() + 30
        for i in range(100000):
            d = s.recv(16384)
            if not d:
                break
            got += d
            if i % 8 == 0:
                time.sleep(0.005)
            check(time.monotonic() < deadline, "slow reader: 30 s and only %d bytes" % len(got))
    head, _, body = bytes(got).partition(b"\r\n\r\n")
    check(head.startswith(b"HTTP/1.1 200"), "slow reader: %r" % head[:100])
    eq(len(body), ODD, "slow reader: body length")
    eq(sha(body), sha(FILES["odd.bin"]), "slow reader: SHA-256")


# ---- openssl s_client ------------------------------------------------------------------------------

def t_s_client(M):
    rc, out = s_client(M.port, "-alpn", "http/1.1", "-servername", "localhost", "-status", "-verify_return_error",
                       "-verify_hostname", "localhost")
    eq(rc, 0, "s_client -alpn -servername -status exit status; output:\n%s" % out[-1500:])
    check("ALPN protocol: http/1.1" in out, "s_client: no 'ALPN protocol: http/1.1':\n%s" % out[-1500:])
    check("OCSP response: no response sent" in out, "s_client -status: OCSP:\n%s" % out[-1500:])
    check("Verify return code: 0 (ok)" in out, "s_client: verification:\n%s" % out[-1500:])
    eq(leaf_of(out), "ecdsa", "s_client -servername localhost: the certificate")
    rc, out = s_client(M.port, "-servername", "b.example", "-verify_return_error", "-verify_hostname", "b.example")
    eq(rc, 0, "s_client -servername b.example exit status; output:\n%s" % out[-1500:])
    eq(leaf_of(out), "bex", "s_client -servername b.example: the certificate")
    check(re.search(r"subject=.*keel-b", out), "s_client -servername b.example: subject line:\n%s" % out[-1500:])
    rc, out = s_client(M.port, "-servername", "B.Example", "-verify_return_error", "-verify_hostname", "b.example")
    eq((rc, leaf_of(out)), (0, "bex"), "s_client -servername B.Example (names are case-blind): (exit, certificate)")
    rc, out = s_client(M.port, "-alpn", "h2", "-servername", "localhost")
    check("ALPN protocol: h2" not in out, "ALPN: the server agreed to h2:\n%s" % out[-1500:])
    # A key share for a group keel does not take (ffdhe2048): a HelloRetryRequest, and the second
    # ClientHello waits its turn like a first one; the handshake ends and the request is answered.
    rc, out = s_client(M.port, "-tls1_3", "-groups", "ffdhe2048:X25519", "-servername", "localhost", "-crlf",
                       "-ign_eof", "-msg", stdin=b"GET /hello.txt HTTP/1.1\nHost: localhost\nConnection: close\n\n")
    check(out.count("ServerHello") >= 2 or "HelloRetryRequest" in out,
          "s_client -groups ffdhe2048:X25519: no HelloRetryRequest seen:\n%s" % out[-1500:])
    check(HELLO.decode() in out, "after a HelloRetryRequest: no answer:\n%s" % out[-1500:])


def t_renegotiation(M):
    p = Interactive([OPENSSL, "s_client", "-connect", "127.0.0.1:%d" % M.port, "-CAfile", PKI.ca, "-tls1_2",
                     "-servername", "localhost", "-crlf", "-no_ign_eof"])
    try:
        check(p.wait_for(rb"Verify return code: 0", 10), "s_client: no handshake:\n%s" % p.text()[-1500:])
        p.write(b"GET /hello.txt HTTP/1.1\nHost: localhost\n\n")
        check(p.wait_for(re.escape(HELLO), 10), "s_client: no answer to the first request:\n%s" % p.text()[-1500:])
        p.write(b"R\n")
        check(p.wait_for(rb"RENEGOTIATING", 5), "s_client did not start renegotiating:\n%s" % p.text()[-1500:])
        time.sleep(0.5)  # the renegotiation ClientHello goes out on s_client's next turn
        p.write(b"GET /hello.txt HTTP/1.1\nHost: localhost\n\n")
        ended = p.wait_for(rb"(?s)RENEGOTIATING.*" + re.escape(HELLO), 3)
        text = p.text()
        after = text.split("RENEGOTIATING", 1)[1]
        check(not ended and HELLO.decode() not in after,
              "a request after a renegotiation attempt was served; s_client output after it:\n%s" % after[-1500:])
    finally:
        rc = p.finish()
    check(rc is not None and rc != 0 or "alert" in p.text().lower() or "error" in p.text().lower(),
          "s_client ended quietly (exit %s): was the renegotiation refused? output:\n%s" % (rc, p.text()[-1500:]))
    st, _, body, _ = https_get(M.port, "/hello.txt", ctx12())
    eq((st, body), (200, HELLO), "served after the renegotiation attempt")


def t_early_data(M):
    sess = PKI.p("s_client.sess")
    req = b"GET /hello.txt HTTP/1.1\nHost: localhost\nConnection: close\n\n"
    rc, out = s_client(M.port, "-tls1_3", "-servername", "localhost", "-crlf", "-ign_eof", "-sess_out", sess, stdin=req)
    check(HELLO.decode() in out, "s_client -sess_out: no answer:\n%s" % out[-1500:])
    check(os.path.exists(sess), "s_client wrote no session (no ticket?):\n%s" % out[-1500:])
    check(not re.search(r"Max Early Data: [1-9]", out), "0-RTT: the tickets offer early data:\n%s" % out[-1500:])
    early = PKI.p("early.txt")
    with open(early, "wb") as f:
        f.write(b"GET /hello.txt?early HTTP/1.1\r\nHost: localhost\r\n\r\n")
    rc, out = s_client(M.port, "-tls1_3", "-servername", "localhost", "-crlf", "-ign_eof", "-sess_in", sess,
                       "-early_data", early, stdin=req)
    check("Reused, TLSv1.3" in out, "s_client -sess_in: the session was not resumed:\n%s" % out[-1500:])
    check("Early data was accepted" not in out, "0-RTT: the server accepted early data:\n%s" % out[-1500:])
    check(out.count(HELLO.decode()) <= 1, "0-RTT: the early request was answered too:\n%s" % out[-1500:])


# ---- Bad input -------------------------------------------------------------------------------------

def t_plain_http(M):
    cases = [("GET", get_req("/hello.txt", close=False)),
             ("POST", b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello"),
             ("HEAD", get_req("/hello.txt", close=False, method="HEAD")),
             ("PUT", b"PUT /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")]
    for what, req in cases:
        s = connect(M.port, 5)
        with s:
            s.sendall(req)
            t0 = time.monotonic()
            data, how = until_close(s, 5)
            secs = time.monotonic() - t0
        check(data.startswith(b"HTTP/1.1 400 Bad Request\r\n"),
              "plain %s to the TLS port: want a plaintext 400, got %s" % (what, describe(data)))
        check(how != "open", "plain %s: the connection is still open 5 s after the 400" % what)
        check(secs < 3, "plain %s: closed only after %.1f s" % (what, secs))
        head, _, body = data.partition(b"\r\n\r\n")
        if what != "HEAD":
            check(re.search(rb"(?i)https", body) and re.search(rb"(?i)plain|http request", body),
                  "plain %s: the 400's body does not say a plain HTTP request went to an HTTPS port: %r"
                  % (what, body[:300]))
            m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head + b"\r\n")
            if m:
                eq(len(body), int(m.group(1)), "plain %s: the 400's body length vs. its Content-Length" % what)
    # In two pieces, the method split.
    s = connect(M.port, 5)
    with s:
        s.sendall(b"GE")
        time.sleep(0.1)
        s.sendall(b"T /hello.txt HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data, how = until_close(s, 5)
    check(data.startswith(b"HTTP/1.1 400 Bad Request\r\n") and how != "open",
          "plain GET in two pieces: got %s, connection %s" % (describe(data), how))
    # Other methods: a close at least, promptly.
    for m in (b"OPTIONS", b"DELETE"):
        s = connect(M.port, 5)
        with s:
            s.sendall(m + b" / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            data, how = until_close(s, 3)
        check(how != "open", "plain %s: no close within 3 s (got %s)" % (m.decode(), describe(data)))
        check(b"200 OK" not in data, "plain %s served: %r" % (m.decode(), data[:200]))
    st, _, body, _ = https_get(M.port, "/hello.txt")
    eq((st, body), (200, HELLO), "TLS still served after the plain requests")


def t_garbage(M):
    rnd = random.Random(7)

    def rb(n):
        return bytes(rnd.getrandbits(8) for _ in range(n))
    cases = [
        ("zeros", b"\0" * 64),
        ("random, first byte 0x01", b"\x01" + rb(300)),
        ("a handshake record of random bytes", b"\x16\x03\x01\x00\xc8" + rb(200)),
        ("a ClientHello header over random bytes", b"\x16\x03\x01\x01\x00\x01\x00\x00\xfc" + rb(252)),
        ("application data before any handshake", b"\x17\x03\x03\x00\x20" + rb(32)),
        ("change cipher spec first", b"\x14\x03\x03\x00\x01\x01" + b"\x16\x03\x03\x00\x04" + rb(4)),
        ("a fatal alert first", b"\x15\x03\x03\x00\x02\x02\x28"),
        ("an SSLv2-style hello", b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10" + rb(37)),
        ("record version 0x0a0a", b"\x16\x0a\x0a\x00\x10" + rb(16)),
        ("a 1 MiB random stream", b"\x16\x03\x01\x00\x30" + rb(48) + os.urandom(MIB)),
    ]
    for what, data in cases:
        s = connect(M.port, 5)
        with s:
            t0 = time.monotonic()
            sendall_quiet(s, data)
            got, how = until_close(s, 4)
            secs = time.monotonic() - t0
        check(how != "open", "garbage (%s): the connection is still open after 4 s (got %s)" % (what, describe(got)))
        check(secs < 3.5, "garbage (%s): closed only after %.1f s" % (what, secs))
        check(got[:1] in (b"", b"\x15") or got.startswith(b"HTTP/1.1 400"),
              "garbage (%s): want nothing, an alert or a 400, got %s" % (what, describe(got)))
    st, _, body, _ = https_get(M.port, "/hello.txt")
    eq((st, body), (200, HELLO), "served after the garbage")


def t_oversized_record(M):
    for n in (16384 + 2048 + 1, 0xffff):
        s = connect(M.port, 5)
        with s:
            t0 = time.monotonic()
            sendall_quiet(s, b"\x16\x03\x01" + struct.pack(">H", n) + b"\x01\x00\xff\xff" + bytes(200))
            got, how = until_close(s, 4)
        check(how != "open", "a %d-byte handshake record header: the connection is still open after 4 s (got %s)"
              % (n, describe(got)))
        check(time.monotonic() - t0 < 3.5, "a %d-byte record header: closed only after %.1f s" % (n, time.monotonic() - t0))
        check(got[:1] in (b"", b"\x15"), "a %d-byte record header: got %s" % (n, describe(got)))
    # After the handshake, an application-data record too long: refused, not waited for.
    for c, v in ((ctx13(), "TLS 1.3"), (ctx12(), "TLS 1.2")):
        b = BioTLS(M.port, c)
        try:
            b.sock.sendall(b.hello())
            b.handshake(v)
            b.send(get_req("/hello.txt", close=False))
            st, _, body = Reader(b.recv).response(v + " over BIOs")
            eq((st, body), (200, HELLO), v + " over BIOs: (status, body)")
            t0 = time.monotonic()
            sendall_quiet(b.sock, b"\x17\x03\x03" + struct.pack(">H", 16384 + 2048 + 1) + os.urandom(300))
            got, how = until_close(b.sock, 4)
            check(how != "open", "%s: after an oversized application-data record header, still open after 4 s" % v)
            check(time.monotonic() - t0 < 3.5, "%s: oversized record: closed only after %.1f s" % (v, time.monotonic() - t0))
            check(b"HTTP/1.1" not in got, "%s: something was served after an oversized record" % v)
        finally:
            b.close()


def t_handshake_timeout(T):
    before = status(T.port)
    hello = client_hello(ctx())
    check(len(hello) > 100, "ClientHello of %d bytes" % len(hello))

    def closed_in(what, act, lo=0.2, hi=3.0):
        s = connect(T.port, 8)
        with s:
            t0 = time.monotonic()
            act(s, t0)
            got, how = until_close(s, 6)
            secs = time.monotonic() - t0
        check(how != "open", "%s: still open after %.1f s (--tls-handshake-timeout-ms 300)" % (what, secs))
        check(lo <= secs <= hi, "%s: closed after %.2f s, want %.1f..%.1f s (timeout 300 ms)" % (what, secs, lo, hi))
        check(b"HTTP/" not in got, "%s: served: %r" % (what, got[:100]))
        return secs

    secs = [closed_in("nothing sent", lambda s, t0: None),
            closed_in("half a ClientHello", lambda s, t0: s.sendall(hello[:len(hello) // 2])),
            closed_in("a whole ClientHello, then silence", lambda s, t0: s.sendall(hello))]

    def trickle(s, t0):  # one byte every 20 ms: the deadline is for the whole handshake
        for i in range(len(hello) - 1):
            if time.monotonic() - t0 > 3 or not sendall_quiet(s, hello[i:i + 1]):
                return
            time.sleep(0.02)
    secs.append(closed_in("a ClientHello trickled a byte per 20 ms", trickle))
    print("  closed after " + ", ".join("%.2f s" % x for x in secs))
    after = status(T.port)
    eq(tls_counter(after, "timeouts") - tls_counter(before, "timeouts"), 4, "tls_handshake_timeouts_total's increase")
    # A finished handshake is not cut by the handshake deadline.
    for c, v in ((ctx13(), "TLS 1.3"), (ctx12(), "TLS 1.2")):
        s = tls_connect(T.port, c)
        with s:
            time.sleep(0.8)
            s.sendall(get_req("/hello.txt"))
            st, _, body = Reader(s.recv).response(v + " request 0.8 s after the handshake")
        eq((st, body), (200, HELLO), "%s: a request 0.8 s after the handshake (timeout 300 ms)" % v)


def t_aborted(M):
    seed = random.randrange(1 << 30)
    print("  seed %d" % seed)
    rnd = random.Random(seed)
    hellos = [client_hello(ctx13()) for _ in range(4)] + [client_hello(ctx12()) for _ in range(4)]
    st, _, _, _ = https_get(M.port, "/big.bin")  # whatever serving opens lazily is open now
    base = stable_fds(M)
    kinds = ["connect", "prefix", "prefix+garbage", "prefix-rst", "serverhello", "serverhello-rst", "handshake",
             "mid-response"]
    weights = [3, 6, 2, 3, 4, 3, 2, 1]
    counts = collections.Counter()
    errors = []
    lock = threading.Lock()
    N, THREADS, ROUNDS = 10000, 4, 4
    deadline = time.monotonic() + 60

    def one(r):
        kind = r.choices(kinds, weights)[0]
        hello = r.choice(hellos)
        note = kind
        if kind in ("handshake", "mid-response"):
            b = BioTLS(M.port, ctx13() if r.random() < 0.5 else ctx12())
            try:
                b.sock.sendall(b.hello())
                b.handshake(kind)
                if kind == "mid-response":
                    b.send(get_req("/odd.bin"))
                    b.recv(r.randrange(1, 65536))
                    b.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            finally:
                b.close()
            return note
        s = connect(M.port, 5)
        try:
            if kind.startswith("prefix"):
                if not sendall_quiet(s, hello[:r.randrange(1, len(hello))] + (os.urandom(r.randrange(1, 600)) if kind == "prefix+garbage" else b"")):
                    note += " (reset)"
            elif kind.startswith("serverhello"):
                s.sendall(hello)
                got = s.recv(5)
                if got[:1] != b"\x16":
                    raise AssertionError("a whole ClientHello got %s, not a ServerHello" % describe(got))
            if kind.endswith("-rst"):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            s.close()
        return note

    def worker(k, rnd_no):
        r = random.Random(seed * 31 + k * 7 + rnd_no)
        for i in range(N // THREADS // ROUNDS):
            if time.monotonic() > deadline:
                with lock:
                    errors.append("thread %d: out of time after %d" % (k, i))
                return
            try:
                note = one(r)
            except Exception as e:  # noqa: BLE001 -- gathered and reported below
                note = None
                with lock:
                    errors.append("%s: %r" % (k, e))
            with lock:
                counts[note] += 1
            if len(errors) > 20:
                return
    rss = []
    for rnd_no in range(ROUNDS):
        ts = [threading.Thread(target=worker, args=(k, rnd_no), daemon=True) for k in range(THREADS)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(max(0.1, deadline - time.monotonic() + 5))
        check(not any(t.is_alive() for t in ts), "aborted handshakes: threads still running past the deadline")
        time.sleep(0.2)  # the last closes reach the server
        rss.append(M.rss_kib())
    # The first round warms the free lists and the allocator. A leak grows the process every round after
    # it; a burst that happened to hold more at once (the server descheduled on a busy machine) once.
    print("  RSS after each round of %d: %s KiB" % (N // ROUNDS, " -> ".join(map(str, rss))))
    growth = [b - a for a, b in zip(rss, rss[1:])]
    check(SLOW_BUILD or min(growth) < 2048,
          "memory grew by %s KiB over each round of %d aborted handshakes after the first" % (growth, N // ROUNDS))
    print("  " + ", ".join("%s %d" % kv for kv in sorted(counts.items(), key=lambda kv: str(kv[0]))))
    check(not errors, "aborted handshakes: %d errors, first: %s" % (len(errors), "; ".join(errors[:5])))
    eq(sum(counts.values()), N, "connections made")
    check(M.alive(), "the server died:\n%s" % M.shown())
    # Every one of them is closed by now, or soon: back to the baseline descriptor count.
    t0 = time.monotonic()
    seen = []
    while time.monotonic() - t0 < 15:
        n = M.fds()
        seen.append(n)
        if n <= base:
            break
        time.sleep(0.2)
    check(seen[-1] <= base, "open descriptors: %d at the start, still %d after 15 s (seen %r)" % (base, seen[-1], seen[-10:]))
    print("  descriptors: %d before, back to %d after %.1f s" % (base, seen[-1], time.monotonic() - t0))
    st, _, body, _ = https_get(M.port, "/hello.txt")
    eq((st, body), (200, HELLO), "served after the aborted handshakes")
    after = status_when(M.port, lambda st: (tls_counter(st, "handshaking"), tls_counter(st, "conns")) == (0, 1))
    eq((tls_counter(after, "handshaking"), tls_counter(after, "conns")), (0, 1),
       "tls_handshaking and tls_conns after the aborted handshakes, with only the status request's connection open")
    r = curl(*resolve(M.port, "localhost"), "-o", "-", "https://localhost:%d/hello.txt" % M.port)
    eq((r.returncode, r.stdout), (0, HELLO), "curl after the aborted handshakes")


def t_handshakes_max(H):
    # Handshakes that fail or are abandoned give their slot back (else the two below would be refused).
    hello = client_hello(ctx())
    for i in range(6):
        s = connect(H.port, 5)
        with s:
            sendall_quiet(s, [b"\x16\x03\x01\x00\x30" + bytes(48), hello[:50], b"\x00" * 20][i % 3])
            if i % 3 != 1:
                until_close(s, 3)
    refused(H.port, ctx12(ciphers="AES128-SHA", seclevel0=True), "AES128-SHA")
    before = status_when(H.port, lambda st: tls_counter(st, "handshaking") == 0)
    eq(tls_counter(before, "handshaking"), 0, "tls_handshaking after failed and abandoned handshakes")
    first = [BioTLS(H.port, ctx13()), BioTLS(H.port, ctx12())]
    hellos = []
    extras = []
    try:
        for b in first:
            h = b.hello()
            hellos.append(h)
            b.sock.sendall(h[:40])  # stalled partway through
        time.sleep(0.3)  # both accepted and in their handshakes
        hello = client_hello(ctx())
        for i in range(8):
            s = connect(H.port, 5)
            extras.append((s, time.monotonic(), sendall_quiet(s, hello)))
        for i, (s, t0, _) in enumerate(extras):
            got, how = until_close(s, max(0.1, t0 + 3 - time.monotonic()))
            secs = time.monotonic() - t0
            check(how != "open", "extra handshake %d over --tls-handshakes-max 2: still open after 3 s (got %s)"
                  % (i, describe(got)))
            check(secs < 2, "extra handshake %d: closed only after %.1f s" % (i, secs))
            check(got[:1] != b"\x16", "extra handshake %d: the server answered its ClientHello (%s)" % (i, describe(got)))
        for b, h, v in zip(first, hellos, ("TLS 1.3", "TLS 1.2")):
            b.sock.sendall(h[40:])
            b.handshake("stalled %s handshake, continued" % v)
            b.send(get_req("/hello.txt"))
            st, _, body = Reader(b.recv).response("stalled %s handshake, continued" % v)
            eq((st, body), (200, HELLO), "%s handshake stalled while the others were refused, continued: (status, body)" % v)
    finally:
        for b in first:
            b.close()
        for s, _, _ in extras:
            s.close()
    # The slots are free again.
    for i in range(3):
        st, _, body, _ = https_get(H.port, "/hello.txt")
        eq((st, body), (200, HELLO), "new connection %d after the stalled ones finished" % i)
    after = status(H.port)
    eq(tls_counter(after, "refused") - tls_counter(before, "refused"), 8, "refused handshakes counted in /_keel/status")


def t_mtls(A):
    def attempt(c, v):
        """("served", status) or ("refused", why)."""
        try:
            s = tls_connect(A.port, c)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as e:
            return "refused", getattr(e, "reason", None) or repr(e)
        with s:
            try:
                s.sendall(get_req("/hello.txt"))
                data = b""
                for _ in range(1000):
                    d = s.recv(65536)
                    if not d:
                        break
                    data += d
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as e:
                return "refused", getattr(e, "reason", None) or repr(e)
            except (socket.timeout, TimeoutError):
                fail("mTLS %s: no answer and no close within 5 s" % v)
        if data.startswith(b"HTTP/1.1 200") and data.endswith(HELLO):
            return "served", 200
        return "refused", "got %s" % describe(data)

    for mk, v in ((ctx13, "TLS 1.3"), (ctx12, "TLS 1.2")):
        eq(attempt(mk(cert="client"), v), ("served", 200), "%s with a certificate from the client CA" % v)
        got = attempt(mk(), v)
        eq(got[0], "refused", "%s without a client certificate (%r)" % (v, got))
        got = attempt(mk(cert="rogue"), v)
        eq(got[0], "refused", "%s with a certificate from a CA not in --tls-client-ca (%r)" % (v, got))
    r = curl(*resolve(A.port, "localhost"), "--cert", PKI.p("client.pem"), "--key", PKI.p("client.key"), "-o", "-",
             "https://localhost:%d/hello.txt" % A.port)
    eq((r.returncode, r.stdout), (0, HELLO), "curl --cert: (exit, body) (stderr %r)" % r.stderr[-300:])
    r = curl(*resolve(A.port, "localhost"), "-o", "-", "https://localhost:%d/hello.txt" % A.port)
    check(r.returncode != 0 and HELLO not in r.stdout, "curl without --cert: exit %d, %r" % (r.returncode, r.stdout[:100]))


def t_chain(C):
    r = curl(*resolve(C.port, "localhost"), "-o", "-", "https://localhost:%d/hello.txt" % C.port)
    eq((r.returncode, r.stdout), (0, HELLO), "curl trusting only the root: (exit, body) (stderr %r)" % r.stderr[-300:])
    st, _, body, f = https_get(C.port, "/hello.txt")
    eq((st, body, f["cert"]), (200, HELLO, "chainleaf"), "python ssl trusting only the root: (status, body, cert)")
    rc, out = s_client(C.port, "-servername", "localhost", "-showcerts", "-verify_return_error")
    eq(rc, 0, "s_client exit status; output:\n%s" % out[-1500:])
    eq(len(pem_certs(out)), 2, "certificates the server sent (leaf and intermediate)")


def t_protocols(P2, P3, P23):
    st, _, body, f = https_get(P2.port, "/hello.txt", ctx())
    eq((st, f["version"], f["cipher"]), (200, "TLSv1.2", "ECDHE-ECDSA-CHACHA20-POLY1305"),
       "--tls-protocols TLSv1.2 --tls-ciphers ECDHE-ECDSA-CHACHA20-POLY1305: (status, version, suite)")
    check(refused(P2.port, ctx13(), "TLS 1.3 client to a TLSv1.2-only server"), "TLS 1.3 client could not be offered")
    check(refused(P2.port, ctx12(ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"), "TLS 1.2 client outside --tls-ciphers"),
          "AES128-GCM could not be offered")
    st, _, _, f = https_get(P3.port, "/hello.txt", ctx())
    eq((st, f["version"]), (200, "TLSv1.3"), "--tls-protocols TLSv1.3: (status, version)")
    check(refused(P3.port, ctx12(), "TLS 1.2 client to a TLSv1.3-only server"), "TLS 1.2 client could not be offered")
    for c, v in ((ctx12(), "TLSv1.2"), (ctx13(), "TLSv1.3")):
        st, _, _, f = https_get(P23.port, "/hello.txt", c)
        eq((st, f["version"]), (200, v), "--tls-protocols 'TLSv1.3 TLSv1.2': (status, version)")


def t_status(M):
    before = status(M.port)
    for c in (ctx13(), ctx12()):
        eq(https_get(M.port, "/hello.txt", c)[0], 200, "status")
    resume(M.port, ctx13(), "TLS 1.3 ticket")  # a full handshake, then two resumed
    check(refused(M.port, ctx12(ciphers="AES128-SHA", seclevel0=True), "a TLS 1.2 client offering AES128-SHA"),
          "AES128-SHA could not be offered here")
    s = connect(M.port, 5)
    with s:
        s.sendall(b"\x16\x03\x01\x00\x30" + bytes(48))  # a ClientHello of zeros
        until_close(s, 3)
    s = connect(M.port, 5)
    with s:
        s.sendall(get_req("/hello.txt"))
        data, _ = until_close(s, 3)
        check(data.startswith(b"HTTP/1.1 400"), "plain HTTP: %s" % describe(data))
    s = connect(M.port, 5)
    s.sendall(client_hello(ctx())[:60])  # then gone, mid-handshake
    s.close()
    time.sleep(0.2)
    after = status(M.port)
    d = {k: tls_counter(after, k) - tls_counter(before, k) for k in ("done", "resumed", "failed", "plain", "refused",
                                                                     "timeouts")}
    eq(d, {"done": 6, "resumed": 2, "failed": 3, "plain": 1, "refused": 0, "timeouts": 0},
       "TLS counters' increase: 2 full handshakes, a first and 2 resumed, the status request's own; "
       "AES128-SHA, a bad ClientHello and a client gone mid-handshake failed; one plain HTTP request")
    eq((tls_counter(after, "handshaking"), tls_counter(after, "conns")), (0, 1),
       "tls_handshaking and tls_conns with only the status request's connection open")
    # Where the kernel takes TLS, every connection whose handshake was done goes to it once its
    # session ticket is sent (the status requests' own may be counted on either side of a snapshot:
    # one either way); none is refused. Elsewhere none does.
    ktls = tls_counter(after, "ktls") - tls_counter(before, "ktls")
    eq(tls_counter(after, "ktls_failed"), 0, "tls_ktls_failed_total")
    if KTLS_RE.search(M.text()):
        check(abs(ktls - d["done"]) <= 1, "tls_ktls_total rose by %d for %d handshakes" % (ktls, d["done"]))
    else:
        eq(ktls, 0, "tls_ktls_total's increase without kernel TLS")


def t_bad_flags(_):
    ec, rsa = PKI.pair("ecdsa"), PKI.pair("rsa")
    base = ["serve", "--listen", "127.0.0.1:0", "--workers", "1"]
    cases = [
        ("--tls-cert without --tls-key", ["--tls-cert", ec[0]]),
        ("--tls-key without --tls-cert", ["--tls-key", ec[1]]),
        ("a missing certificate file", ["--tls-cert", PKI.p("none.pem"), "--tls-key", ec[1]]),
        ("a missing key file", ["--tls-cert", ec[0], "--tls-key", PKI.p("none.key")]),
        ("a key that is not the certificate's", ["--tls-cert", ec[0], "--tls-key", rsa[1]]),
        ("a key file that is a certificate", ["--tls-cert", ec[0], "--tls-key", ec[0]]),
        ("a key with a passphrase", ["--tls-cert", ec[0], "--tls-key", PKI.p("enc.key")]),
        ("two ECDSA certificates for the same names", ["--tls-cert", ec[0], "--tls-key", ec[1], "--tls-cert",
                                                       PKI.p("chainleaf.pem"), "--tls-key", PKI.p("chainleaf.key")]),
        ("two --tls-cert, one --tls-key", ["--tls-cert", ec[0], "--tls-cert", rsa[0], "--tls-key", ec[1]]),
        ("one --tls-cert, two --tls-key", ["--tls-cert", ec[0], "--tls-key", ec[1], "--tls-key", rsa[1]]),
        ("--tls-protocols TLSv1.1", ["--tls-cert", ec[0], "--tls-key", ec[1], "--tls-protocols", "TLSv1.1"]),
        ("--tls-protocols 'TLSv1.2 SSLv3'", ["--tls-cert", ec[0], "--tls-key", ec[1], "--tls-protocols", "TLSv1.2 SSLv3"]),
        ("--tls-ciphers with no cipher", ["--tls-cert", ec[0], "--tls-key", ec[1], "--tls-ciphers", "NO-SUCH-CIPHER"]),
        ("a missing --tls-client-ca", ["--tls-cert", ec[0], "--tls-key", ec[1], "--tls-client-ca", PKI.p("none.pem")]),
        ("--tls-handshakes-max -1", ["--tls-cert", ec[0], "--tls-key", ec[1], "--tls-handshakes-max", "-1"]),
        ("--tls-handshake-timeout-ms x", ["--tls-cert", ec[0], "--tls-key", ec[1], "--tls-handshake-timeout-ms", "x"]),
    ]
    for what, args in cases:
        r = run_keel(*base, *args, ROOT, timeout=5)
        check(r.returncode != 0, "keel serve with %s: exit 0" % what)
        check(r.stderr.strip(), "keel serve with %s: exit %d and no message" % (what, r.returncode))


def t_record_shapes(M):
    """Requests in one-byte records, and the client's Finished with a request in one segment."""
    s = tls_connect(M.port, ctx13())
    with s:
        for b in get_req("/hello.txt", close=False):
            s.sendall(bytes([b]))  # a TLS record per byte
        st, _, body = Reader(s.recv).response("a request in one-byte records")
        eq((st, body), (200, HELLO), "a request sent as one-byte TLS records")
        s.sendall(get_req("/nope", close=False) + get_req("/hello.txt"))  # two in one record
        rd = Reader(s.recv)
        eq(rd.response("first of two in one record")[0], 404, "first of two requests in one record")
        eq(rd.response("second of two in one record")[:3:2], (200, HELLO), "second of two requests in one record")
    for c, v in ((ctx13(), "TLS 1.3"), (ctx12(), "TLS 1.2")):
        b = BioTLS(M.port, c)
        try:
            b.sock.sendall(b.hello())
            b.handshake(v, flush_last=False)
            b.tls.write(get_req("/hello.txt"))
            b.flush()  # the Finished and the request in one send
            st, _, body = Reader(b.recv).response(v + ": Finished and request together")
            eq((st, body), (200, HELLO), "%s: the client's Finished and a request in one segment" % v)
        finally:
            b.close()
    # A ClientHello a byte per TCP segment: slow, but within the deadline.
    b = BioTLS(M.port, ctx13())
    try:
        hello = b.hello()
        t0 = time.monotonic()
        for i in range(len(hello)):
            b.sock.sendall(hello[i:i + 1])
            time.sleep(0.001)
            check(time.monotonic() - t0 < 10, "trickling the ClientHello took over 10 s")
        b.handshake("ClientHello a byte per segment")
        b.send(get_req("/hello.txt"))
        eq(Reader(b.recv).response("after a trickled ClientHello")[:3:2], (200, HELLO), "after a trickled ClientHello")
    finally:
        b.close()


def t_close_notify(M):
    for c, v in ((ctx13(), "TLS 1.3"), (ctx12(), "TLS 1.2")):
        b = BioTLS(M.port, c)
        try:
            b.sock.sendall(b.hello())
            b.handshake(v)
            b.send(get_req("/hello.txt"))
            eq(Reader(b.recv).response(v)[:3:2], (200, HELLO), v + ": (status, body)")
            eq(b.ending(), "close_notify", "%s: how the server ends a Connection: close response" % v)
        finally:
            b.close()


def t_key_update(M):
    p = Interactive([OPENSSL, "s_client", "-connect", "127.0.0.1:%d" % M.port, "-CAfile", PKI.ca, "-tls1_3",
                     "-servername", "localhost", "-crlf", "-no_ign_eof"])
    req = b"GET /hello.txt HTTP/1.1\nHost: localhost\n\n"
    try:
        check(p.wait_for(rb"Verify return code: 0", 10), "s_client: no handshake:\n%s" % p.text()[-1500:])
        p.write(req)
        check(p.wait_for(re.escape(HELLO), 10), "s_client: no answer to the first request:\n%s" % p.text()[-1500:])
        ktls = KTLS_RE.search(M.text())
        for cmd, n in ((b"k\n", 2), (b"K\n", 3)):
            p.write(cmd)
            check(p.wait_for(rb"KEYUPDATE", 5), "s_client did not send a KeyUpdate:\n%s" % p.text()[-1500:])
            time.sleep(0.1)
            if ktls and cmd == b"K\n":
                # Asked to update its own keys, which the kernel holds: the server must not answer
                # under the old ones (RFC 8446 4.6.3), so the connection ends, the request unanswered.
                p.write(req)
                try:
                    p.p.wait(5)  # (stdin still open: only the server's close ends it)
                except subprocess.TimeoutExpired:
                    fail("kTLS: s_client still connected 5 s after asking for a KeyUpdate:\n%s" % p.text()[-1500:])
                text = p.text().split("KEYUPDATE")[-1]
                check(HELLO.decode() not in text, "kTLS: data sent after a KeyUpdate request:\n%s" % text[-1500:])
                print("  kTLS: a KeyUpdate request ends the connection")
                break
            p.write(req)
            check(p.wait_for(rb"(?s)" + (re.escape(HELLO) + rb".*") * (n - 1) + re.escape(HELLO), 5),
                  "after a KeyUpdate (%s): no answer to the next request; s_client output:\n%s"
                  % (cmd.strip().decode(), p.text()[-1500:]))
    finally:
        p.finish()


def t_concurrent(M):
    names = ["hello.txt", "big.bin", "nope", "hello.txt", "odd.bin"]
    errors = []
    done = collections.Counter()
    lock = threading.Lock()

    def client(k):
        try:
            s = tls_connect(M.port, ctx13() if k % 2 else ctx12(), timeout=30)
            with s:
                rd = Reader(s.recv)
                for i, n in enumerate(names):
                    s.sendall(get_req("/" + n, close=i == len(names) - 1))
                    st, _, body = rd.response("client %d /%s" % (k, n))
                    if n == "nope":
                        eq(st, 404, "client %d /nope" % k)
                    else:
                        eq((st, sha(body)), (200, sha(FILES[n])), "client %d /%s: (status, SHA-256)" % (k, n))
                    with lock:
                        done[k] += 1
        except Exception as e:  # noqa: BLE001 -- reported below
            with lock:
                errors.append("client %d: %r" % (k, e))
    ts = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(64)]
    for t in ts:
        t.start()
    deadline = time.monotonic() + 40
    for t in ts:
        t.join(max(0.1, deadline - time.monotonic()))
    check(not any(t.is_alive() for t in ts), "concurrent clients still running after 40 s")
    check(not errors, "%d of 64 concurrent clients failed; first: %s" % (len(errors), "; ".join(errors[:3])))
    eq(sum(done.values()), 64 * len(names), "responses to 64 concurrent clients")


def t_ranges(M):
    data = FILES["odd.bin"]
    for spec, lo, hi in (("0-0", 0, 0), ("1000-70000", 1000, 70000), ("3000001-", 3000001, ODD - 1), ("-5", ODD - 5, ODD - 1)):
        r = curl(*resolve(M.port, "localhost"), "-D", PKI.p("range-head"), "-o", "-", "-r", spec,
                 "https://localhost:%d/odd.bin" % M.port)
        head = open(PKI.p("range-head"), "rb").read()
        eq(r.returncode, 0, "curl -r %s exit status" % spec)
        check(head.startswith(b"HTTP/1.1 206"), "range %s: %r" % (spec, head[:60]))
        eq(sha(r.stdout), sha(data[lo:hi + 1]), "range %s over TLS: SHA-256 (%d bytes, want %d)" % (spec, len(r.stdout), hi - lo + 1))


def t_resume_elsewhere(M, T):
    """A ticket is good for the server that issued it only: another keel process makes a full
    handshake of it (its ticket keys are its own)."""
    c = ctx13()
    s = tls_connect(M.port, c)
    with s:
        s.sendall(get_req("/hello.txt"))
        Reader(s.recv).response("first connection")
        sess = s.session
    s = tls_connect(T.port, c, session=sess)
    with s:
        reused = s.session_reused
        s.sendall(get_req("/hello.txt"))
        st, _, body = Reader(s.recv).response("another server, the first's ticket")
    eq((st, body, reused), (200, HELLO, False), "another keel process offered the first's ticket: (status, body, reused)")


def t_stop_with_tls(P23):
    s = tls_connect(P23.port, ctx())
    s.sendall(get_req("/hello.txt", close=False))
    eq(Reader(s.recv).response("keep-alive before the stop")[:3:2], (200, HELLO), "keep-alive before the stop")
    stalled = connect(P23.port, 5)
    stalled.sendall(client_hello(ctx())[:30])
    time.sleep(0.2)
    t0 = time.monotonic()
    try:
        P23.terminate()
        rc = P23.wait(8)
        secs = time.monotonic() - t0
        check(rc is not None, "SIGTERM with an idle TLS connection and a stalled handshake open: still running after 8 s")
        eq(rc, 0, "exit status")
        check(secs < 6, "SIGTERM: exit after %.1f s (grace 5 s)" % secs)
        P23.check_sanitizers()
        for sock, what in ((s, "the idle TLS connection"), (stalled, "the stalled handshake")):
            sock.settimeout(2)
            try:
                left = sock.recv(100)
            except (ssl.SSLError, ConnectionResetError):
                left = b""
            except (socket.timeout, TimeoutError):
                fail("%s is still open after the server exited" % what)
            eq(left, b"", "%s after the stop: bytes" % what)
    finally:
        s.close()
        stalled.close()



def t_half_close(M):
    """Pipelined requests, then the client's end of the stream (close_notify, or only TCP's):
    every request is answered, then the server closes."""
    for c, v in ((ctx13(), "TLS 1.3"), (ctx12(), "TLS 1.2")):
        for how in ("close_notify", "TCP FIN"):
            b = BioTLS(M.port, c)
            try:
                b.sock.sendall(b.hello())
                b.handshake(v)
                b.tls.write(get_req("/hello.txt", close=False) + get_req("/nope", close=False) +
                            get_req("/big.bin", close=False))
                b.flush()
                if how == "close_notify":
                    try:
                        b.tls.unwrap()
                    except ssl.SSLWantReadError:
                        pass
                    b.flush()
                else:
                    b.sock.shutdown(socket.SHUT_WR)
                rd = Reader(b.recv)
                what = "%s, requests then %s" % (v, how)
                eq(rd.response(what + " #0")[:3:2], (200, HELLO), what + ": #0")
                eq(rd.response(what + " #1")[0], 404, what + ": #1")
                st, _, body = rd.response(what + " #2")
                eq((st, sha(body)), (200, sha(FILES["big.bin"])), what + ": #2")
                end = b.ending()
                check(end in ("close_notify", "eof", "reset"), "%s: after the answers, the connection: %s" % (what, end))
            finally:
                b.close()


DIFF_CASES = [
    ("GET", b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    ("HEAD", b"HEAD /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    ("404", b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    ("directory", b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    ("POST", b"POST /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"),
    ("6 KB header", b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 6000 + b"\r\nConnection: close\r\n\r\n"),
    ("100 KB header", b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 100000 + b"\r\nConnection: close\r\n\r\n"),
    ("bad request line", b"GARBAGE\r\n\r\n"),
    ("HTTP/1.0", b"GET /hello.txt HTTP/1.0\r\n\r\n"),
    ("traversal", b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    ("range", b"GET /odd.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=5000000-5000100\r\nConnection: close\r\n\r\n"),
    ("pipelined", b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\nHEAD /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    ("chunked POST", b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                     b"5\r\nhello\r\n0\r\n\r\n"),
    ("two Content-Lengths", b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
]


def t_differential(M, plain):
    """The same bytes over TLS and over plain TCP (keel serve without TLS, the same directory)
    get the same answer, Date aside."""
    def norm(data):
        return re.sub(rb"\r\nDate: [^\r]*", b"", data)

    seen = []
    for what, req in DIFF_CASES:
        s = tls_connect(M.port, ctx())
        with s:
            s.settimeout(5)
            sendall_quiet(s, req)
            got = b""
            try:
                for _ in range(100000):
                    d = s.recv(65536)
                    if not d:
                        break
                    got += d
            except (socket.timeout, TimeoutError):
                fail("%s over TLS: no close within 5 s; got %r" % (what, got[:200]))
            except (ConnectionResetError, ssl.SSLError):
                pass
        c = connect(plain.port, 5)
        with c:
            sendall_quiet(c, req)
            want, how = until_close(c, 5)
        check(how != "open", "%s over plain TCP: no close within 5 s" % what)
        g, w = norm(got), norm(want)
        check(g == w, "%s: over TLS %d bytes %r..., over plain TCP %d bytes %r... (first difference at %d)"
              % (what, len(g), g[:160], len(w), w[:160], keeltest.first_diff(g, w)))
        seen.append("%s %s" % (what, " ".join(re.findall(r"HTTP/1\.[01] (\d{3})", g.decode("latin-1"))) or "(closed)"))
    print("  " + ", ".join(seen))


def t_ocsp(O):
    """--tls-ocsp with several certificates: what is stapled must be about the certificate sent
    (or nothing is stapled); a client that insists on a good staple (curl --cert-status) gets
    one for the certificate the response covers."""
    r = curl("--cert-status", *resolve(O.port, "localhost"), "-o", "-", "https://localhost:%d/hello.txt" % O.port)
    eq((r.returncode, r.stdout), (0, HELLO), "curl --cert-status, the ECDSA certificate: (exit, body) (stderr %r)"
       % r.stderr[-300:])
    problems = []
    for what, cert, args in (("ECDSA", "ecdsa", ("-tls1_3", "-servername", "localhost", "-sigalgs", "ecdsa_secp256r1_sha256")),
                             ("RSA", "rsa", ("-tls1_3", "-servername", "localhost", "-sigalgs",
                                             "rsa_pss_rsae_sha256:rsa_pss_rsae_sha384:rsa_pss_rsae_sha512")),
                             ("RSA, TLS 1.2", "rsa", ("-tls1_2", "-servername", "localhost", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256")),
                             ("SNI b.example", "bex", ("-servername", "b.example"))):
        rc, out = s_client(O.port, "-status", *args)
        eq((rc, leaf_of(out)), (0, cert), "s_client -status, %s: (exit, certificate)" % what)
        m = re.search(r"OCSP Response Data:.*?Serial Number: (\S+).*?Cert Status: (\S+)", out, re.S)
        if cert == "ecdsa":
            check(m and m.group(1) == PKI.serial["ecdsa"] and m.group(2) == "good",
                  "%s: the stapled response: %s" % (what, m and m.groups()))
        elif m:
            problems.append("%s certificate (serial %s) sent with a stapled response about serial %s (the ECDSA one)"
                            % (what, PKI.serial[cert], m.group(1)))
        else:
            check("OCSP response: no response sent" in out, "%s: -status:\n%s" % (what, out[-1500:]))
    # b.example has no response of its own: nothing stapled (curl says so), never the ECDSA one's.
    r = curl("--cert-status", *resolve(O.port, "b.example"), "-o", "-", "https://b.example:%d/hello.txt" % O.port)
    err = r.stderr.decode(errors="replace").strip()
    if r.returncode != 91 or "No OCSP response received" not in err:
        problems.append("curl --cert-status https://b.example: exit %d, %s (want 91: no OCSP response)" % (r.returncode, err))
    check(not problems, "; ".join(problems))


def t_no_tickets(N):
    for c, v in ((ctx12(), "TLS 1.2"), (ctx13(), "TLS 1.3")):
        s = tls_connect(N.port, c)
        with s:
            s.sendall(get_req("/hello.txt"))
            eq(Reader(s.recv).response(v)[:3:2], (200, HELLO), v + ": (status, body)")
            sess = s.session
        check(sess is None or not sess.has_ticket, "%s: --tls-no-tickets, but a ticket came" % v)
        if sess is not None:
            s = tls_connect(N.port, c, session=sess)
            with s:
                reused = s.session_reused
            check(not reused, "%s: --tls-no-tickets, but the session was resumed" % v)


def t_idle_memory(K):
    """Idle TLS connections hold no buffers: 500 of them (one request served each) cost the server
    well under the 16 KiB + 68 KiB of keel's buffers, or OpenSSL's, apiece."""
    c = ctx()
    https_get(K.port, "/hello.txt", c)
    time.sleep(0.2)
    r0 = K.rss_kib()
    conns = []
    try:
        for i in range(500):
            s = tls_connect(K.port, c)
            conns.append(s)
            s.sendall(get_req("/hello.txt", close=False))
            eq(Reader(s.recv).response("idle connection %d" % i)[0], 200, "idle connection %d" % i)
        time.sleep(0.3)
        r1 = K.rss_kib()
        per = (r1 - r0) / 500
        print("  RSS %d KiB -> %d KiB: %.1f KiB per idle TLS connection" % (r0, r1, per))
        # (a sanitizer's redzones and quarantine make RSS say nothing about buffers there)
        check(SLOW_BUILD or per < 64, "RSS per idle TLS connection %.1f KiB (%d -> %d KiB): buffers held while idle?" % (per, r0, r1))
        eq(tls_counter(status(K.port), "conns"), 501, "tls_conns with 500 idle connections and the status request's")
    finally:
        for s in conns:
            s.close()
    after = status_when(K.port, lambda st: tls_counter(st, "conns") == 1)
    eq(tls_counter(after, "conns"), 1, "tls_conns after the 500 closed")


def t_backpressure(M):
    """A client that pipelines requests for 1 MiB files and reads nothing: once its window is full,
    the server stops reading (it does not decrypt and queue without bound)."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    raw.settimeout(5)
    raw.connect(("127.0.0.1", M.port))
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx().wrap_bio(inc, out, server_hostname="localhost")
    try:
        for _ in range(100):
            try:
                tls.do_handshake()
                raw.sendall(out.read())
                break
            except ssl.SSLWantReadError:
                d = out.read()
                if d:
                    raw.sendall(d)
                inc.write(raw.recv(65536))
        req = b"GET /big.bin HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 4000 + b"\r\n\r\n"
        raw.setblocking(False)
        sent, pend, t0 = 0, b"", time.monotonic()
        last = t0
        while time.monotonic() - t0 < 8 and sent < (64 << 20):
            if not pend:
                tls.write(req * 16)
                pend = out.read()
            _, w, _ = select.select([], [raw], [], 0.2)
            if not w:
                if time.monotonic() - last > 1.5:
                    break
                continue
            try:
                n = raw.send(pend)
            except BlockingIOError:
                continue
            sent += n
            pend = pend[n:]
            last = time.monotonic()
        print("  %.1f MiB of requests taken before the window closed" % (sent / MIB))
        check(sent < 16 * MIB, "a client that reads nothing sent %.1f MiB of pipelined requests in %.1f s: "
              "the server kept reading" % (sent / MIB, time.monotonic() - t0))
    finally:
        raw.close()
    st, _, body, _ = https_get(M.port, "/hello.txt")
    eq((st, body), (200, HELLO), "served after the client that read nothing")


# ---- The run ---------------------------------------------------------------------------------------

FILES = {}


def test():
    global PKI, ROOT
    if not OPENSSL:
        raise Skip("the openssl command is not installed")
    if not CURL:
        raise Skip("curl is not installed")
    print("backend: %s, keel: %s, %s" % (BACKEND or "(auto)", KEEL, ssl.OPENSSL_VERSION), flush=True)
    tmp = tempfile.mkdtemp(prefix="keel-tls-")
    try:
        t0 = time.monotonic()
        PKI = Pki(os.path.join(tmp))
        ROOT = os.path.join(tmp, "www")
        os.makedirs(ROOT)
        FILES.update({"hello.txt": HELLO, "big.bin": os.urandom(MIB), "odd.bin": os.urandom(ODD)})
        for n, data in FILES.items():
            with open(os.path.join(ROOT, n), "wb") as f:
                f.write(data)
        print("certificates made in %.1f s" % (time.monotonic() - t0), flush=True)
        return run_parts()
    finally:
        keeltest.kill_all()
        shutil.rmtree(tmp, ignore_errors=True)


def run_parts():
    sub = Subtests()
    servers = {}
    spec = {
        "M": lambda: keel_tls("--status", pairs=("ecdsa", "rsa", "bex", "wild"), name="keel M"),
        "plain": lambda: Proc([KEEL, "serve", "--listen", "127.0.0.1:0", "--workers", "1", *SHED_OFF, ROOT],
                              name="keel plain"),
        # 64 clients at once on 2 busy CPUs can make a tick pass the 20 ms queue-delay budget: the
        # 503s would be admission control (tested elsewhere), so K has it off.
        "K": lambda: keel_tls("--queue-delay-us", 0, "--status", pairs=("ecdsa", "rsa"), name="keel K"),
        "N": lambda: keel_tls("--tls-no-tickets", name="keel N"),
        "O": lambda: keel_tls("--tls-ocsp", PKI.p("ecdsa.ocsp.der"), name="keel O",
                              pairs=[(PKI.p(n + "-full.pem"), PKI.p(n + ".key")) for n in ("ecdsa", "rsa", "bex")]),
        "T": lambda: keel_tls("--tls-handshake-timeout-ms", 300, "--status", name="keel T"),
        "H": lambda: keel_tls("--tls-handshakes-max", 2, "--status", name="keel H"),
        "A": lambda: keel_tls("--tls-client-ca", PKI.p("clientca.pem"), name="keel A"),
        "C": lambda: keel_tls(pairs=((PKI.p("chain.pem"), PKI.p("chainleaf.key")),), name="keel C"),
        "P2": lambda: keel_tls("--tls-protocols", "TLSv1.2", "--tls-ciphers", "ECDHE-ECDSA-CHACHA20-POLY1305",
                               name="keel P2"),
        "P3": lambda: keel_tls("--tls-protocols", "TLSv1.3", name="keel P3"),
        "P23": lambda: keel_tls("--tls-protocols", "TLSv1.3 TLSv1.2", name="keel P23"),
        "W": lambda: keel_tls(workers=2, name="keel W"),
    }

    def srv(key):
        if key not in servers:
            servers[key] = spec[key]()
        return servers[key]

    plan = [
        ("curl: GET, three URLs on one keep-alive connection", "M", t_curl_keepalive),
        ("curl: 1 MiB and 5 MiB+3 files byte-exact", "M", t_curl_big),
        ("curl: HEAD and 404", "M", t_curl_head_404),
        ("curl: SNI picks the certificate by name", "M", t_curl_sni),
        ("curl: no SNI or an unknown name gets the first pair", "M", t_curl_default_cert),
        ("ssl: TLS 1.3 and TLS 1.2", "M", t_ssl_versions),
        ("ssl: TLS 1.0 and 1.1 refused", "M", t_ssl_old_versions),
        ("ssl: weak TLS 1.2 ciphers refused", "M", t_ssl_weak_ciphers),
        ("ssl: ALPN http/1.1", "M", t_ssl_alpn),
        ("ssl: the ECDSA or the RSA certificate by the client's algorithms", "M", t_cert_by_algorithm),
        ("ssl: resumption with a TLS 1.2 ticket", "M", t_resume12),
        ("ssl: resumption with a TLS 1.3 ticket", "M", t_resume13),
        ("ssl: keep-alive and a pipelined burst", "M", t_keepalive_pipeline),
        ("ssl: 5 MiB to a slow reader with a small receive buffer", "M", t_slow_reader),
        ("ssl: one-byte records, two requests in a record, Finished with a request, a trickled ClientHello", "M",
         t_record_shapes),
        ("ssl: Connection: close ends with close_notify", "M", t_close_notify),
        ("ssl: pipelined requests, then the client's close_notify or FIN: all answered", "M", t_half_close),
        ("differential: the same bytes over TLS and plain TCP get the same answers", ("M", "plain"), t_differential),
        ("ssl: 64 concurrent clients, 5 requests each", "K", t_concurrent),
        ("memory: 500 idle TLS connections hold no buffers", "K", t_idle_memory),
        ("backpressure: a client that pipelines and never reads is stopped by its window", "M", t_backpressure),
        ("curl: ranges of a 5 MiB file", "M", t_ranges),
        ("s_client: TLS 1.3 KeyUpdate, either side", "M", t_key_update),
        ("s_client: -alpn, -servername, -status", "M", t_s_client),
        ("s_client: renegotiation refused", "M", t_renegotiation),
        ("s_client: --tls-ocsp staples only about the certificate sent", "O", t_ocsp),
        ("s_client: no 0-RTT", "M", t_early_data),
        ("bad input: plain HTTP gets a plaintext 400 and a close", "M", t_plain_http),
        ("bad input: garbage is closed promptly", "M", t_garbage),
        ("bad input: oversized record headers, before and after the handshake", "M", t_oversized_record),
        ("status: handshakes done and failed counted", "M", t_status),
        ("bad input: 10000 handshakes aborted at random points, descriptors and memory back", "M", t_aborted),
        ("timeouts: stalled handshakes closed after --tls-handshake-timeout-ms 300", "T", t_handshake_timeout),
        ("limits: --tls-handshakes-max 2 with 10 handshakes", "H", t_handshakes_max),
        ("mTLS: --tls-client-ca", "A", t_mtls),
        ("chain: a leaf behind an intermediate, trusted by the root", "C", t_chain),
        ("protocols: --tls-protocols and --tls-ciphers", ("P2", "P3", "P23"), t_protocols),
        ("resumption across 2 workers", "W", t_resume_workers),
        ("resumption: --tls-no-tickets", "N", t_no_tickets),
        ("resumption: another keel process does not take the ticket", ("M", "T"), t_resume_elsewhere),
        ("bad flags: refused at start", None, t_bad_flags),
    ]
    for name, key, fn in plan:
        if key is None:
            sub.run(name, lambda: fn(None))
        elif isinstance(key, tuple):
            sub.run(name, lambda: fn(*[srv(k) for k in key]))
        else:
            sub.run(name, lambda: fn(srv(key)))
    sub.run("stop: SIGTERM with an idle TLS connection and a stalled handshake", lambda: t_stop_with_tls(srv("P23")))
    for key in list(servers):
        s = servers[key]
        if key == "P23":
            continue
        sub.run("stop: server %s exits 0 on SIGTERM" % key, lambda: s.stop_ok("server " + key), always=True)
    return sub.status()


if __name__ == "__main__":
    main(test)
