/*
 * TLS as a keel_transport (keel/tls.h): OpenSSL does the protocol and the
 * crypto, keel does every byte of I/O.
 *
 * Input. The connection's receive stream ("raw") delivers ciphertext in pool
 * buffers; each is held on a queue (rq) that a BIO of ours reads from, so
 * OpenSSL copies straight out of the buffer ring and the buffer goes back as
 * soon as it is consumed. pump() runs the handshake, then decrypts into
 * plaintext buffers of the endpoint's (keel_buf_owner) and hands them to the
 * consumer's keel_recv_fn, as a plain receive stream would. When the
 * consumer stops (KEEL_STOP), the raw stream stops at its next buffer and
 * what arrived is kept, still encrypted, for the next recv: the kernel's
 * window stays the backpressure.
 *
 * Output. Records are written by OpenSSL into "out" through the same BIO;
 * flush_out() moves out to "fly" and sends it, one send at a time, so
 * records leave in order and one send carries a batch. A sendv or sendfile
 * is a job encrypted at most FILL_MAX plaintext bytes ahead of the socket:
 * memory per connection stays bounded whatever the size of a body, and the
 * job's promise settles when its last record has been sent.
 *
 * Kernel TLS. Where the kernel has it, a server connection's send side is
 * handed to it at its first send after the handshake (ktls_try, net/ktls.h):
 * jobs then go to the socket as plaintext, files by sendfile, and OpenSSL
 * only reads.
 *
 * Handshakes are counted per endpoint and bounded; each has a deadline.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ocsp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "core/alloc.h"
#include "keel/buf.h"
#include "keel/errors.h"
#include "keel/file.h"
#include "keel/log.h"
#include "keel/tcp.h"
#include "keel/timer.h"
#include "keel/tls.h"
#include "keel/util.h"
#include "net/ktls.h"

#define PLAIN_CAP 16384        /* a plaintext buffer: one full record */
#define FILL_MAX 65536         /* plaintext encrypted ahead of the socket, per connection */
#define OBUF_CAP 69632         /* an output buffer: FILL_MAX and the records' overhead */
#define FREE_KEEP 64           /* spare buffers an endpoint keeps, of each kind */
#define SESS_CACHE 16          /* client: hosts whose last session is kept, per endpoint */
#define TLS_RECORD 16384       /* the most plaintext one record holds */
#define OUT_MAX (4 * OBUF_CAP) /* output waiting for the socket, past which the connection fails */
#define RQ_MAX 65536 /* ciphertext held unread: enough for a whole record, whatever the buffer size */

/* Mozilla's "intermediate" configuration (v5.7): TLS 1.2's suites; TLS 1.3's are OpenSSL's. */
#define INTERMEDIATE_CIPHERS                                                                       \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:" \
	"ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"   \
	"DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
#define INTERMEDIATE_SUITES "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
#define INTERMEDIATE_GROUPS "X25519:P-256:P-384"

/* ---- Context: certificates, settings, ticket keys (shared) --------------- */

struct ticket_key {
	unsigned char name[16], aes[32], hmac[32];
	uint64_t born_s;
	bool set;
};

struct keel_tls_ctx {
	SSL_CTX *site[KEEL_TLS_CERTS_MAX]; /* server: one per set of names; client: site[0] */
	X509 *leaf[KEEL_TLS_CERTS_MAX];    /* a certificate of each site, to match SNI against */
	int nsites;
	bool client;
	bool verify; /* client: a failed check is KEEL_ETLSCERT only when it was asked for */
	bool ktls;   /* server: hand each connection's send side to the kernel where it can */
	char *name;  /* client: cfg.name, or NULL */
	unsigned handshakes_max;
	uint64_t handshake_timeout_ms;
	unsigned char alpn[256]; /* wire format: length-prefixed names */
	unsigned alpn_len;
	unsigned char *ocsp; /* DER, stapled as is */
	long ocsp_len;
	X509 *ocsp_cert;               /* the certificate it is about: only that one gets it */
	X509 *all[KEEL_TLS_CERTS_MAX]; /* every certificate loaded */
	int nall;
	pthread_mutex_t tk_mu;
	struct ticket_key tk[2]; /* [0] encrypts; [1] the previous one, still decrypts */
	uint32_t tk_life_s;
	time_t not_after; /* the earliest of all certificates' */
	char *not_after_file;
};

struct pbuf {
	keel_buf buf;
	keel_tls_endpoint *ep;
	struct pbuf *next_free;
	char data[PLAIN_CAP];
};

struct sess_slot {
	char host[256];
	SSL_SESSION *sess;
};

struct keel_tls_endpoint {
	keel_tls_ctx *ctx;
	keel_loop *loop;
	keel_buf_owner owner;
	struct pbuf *pfree;
	unsigned npfree;
	void *ofree; /* spare output buffers, linked through their first bytes */
	unsigned nofree;
	unsigned pbufs_out; /* plaintext buffers lent out now */
	bool freed;
	/* Server handshakes with input to work on, in arrival order (hs_run). */
	struct tconn *hs_head, *hs_tail;
	bool hs_scheduled; /* an hs_run is due (a continuation, or hs_later for the next tick) */
	keel_timer hs_later;
	uint64_t hs_tick, hs_tick_ns; /* the tick handshakes last ran in, and their time in it */
	unsigned sess_next;
	struct sess_slot sess[SESS_CACHE];
	keel_tls_stats st;
};

enum { TX_NONE, TX_IOV, TX_FILE };

struct tconn {
	keel_tls_endpoint *ep;
	keel_loop *loop;
	SSL *ssl;
	int fd;
	unsigned refs; /* our promises in flight (raw, send, fread, close) */
	bool server, hs_done, hs_counted, sniffed, closing;
	bool hs_queued, hs_turn;
	struct tconn *hs_next;
	int fatal;           /* the stream is dead: every later operation fails with this */
	int fail_after_send; /* fail with this once out is sent (plain HTTP's 400) */
	keel_timer hs_timer;
	char *host;    /* client: for the session cache */
	char alpn[32]; /* what ALPN agreed, "" for nothing */
	/* input */
	keel_buf *rq_head, *rq_tail;
	uint32_t rq_off;
	size_t rq_bytes;
	keel_promise *raw;
	bool raw_paced, raw_eof;
	keel_recv_fn fn;
	void *ud;
	keel_promise *rx;
	bool want_paced, in_pump, pump_again;
	/* output */
	char *out, *fly;
	size_t out_len, out_cap, fly_len, fly_cap;
	uint64_t wrote, sent; /* ciphertext bytes put in out, and sent */
	keel_promise *send;
	keel_promise *shut_p, *close_p;
	/* the job */
	int tx_kind;
	keel_promise *tx;
	struct iovec iov[KEEL_IOV_MAX];
	int niov, iov_i;
	size_t iov_off;
	uint64_t tx_left;  /* plaintext not yet encrypted */
	uint64_t tx_total; /* what the job resolves with */
	uint64_t tx_end;   /* `wrote` once the job's last byte was encrypted */
	int tx_err;        /* settle with this once the file read or kTLS send in flight returns */
	int file_fd;
	uint64_t file_off;
	char *fbuf;
	keel_promise *fread;
	/* kernel TLS (the send side of a server connection: net/ktls.h) */
	uint8_t ktls;                /* KTLS_OFF, KTLS_WAIT (records counted, keys to come), KTLS_ON */
	bool fin_seen;               /* OpenSSL has written its Finished */
	bool ktls_stuck;             /* OpenSSL had a record to send after the kernel took the keys */
	bool ktls_notified;          /* close_notify went through the kernel */
	uint32_t rec_wrote, rec_fin; /* records OpenSSL wrote, and how many with its Finished */
	uint8_t secret_len;
	unsigned char secret[EVP_MAX_MD_SIZE]; /* TLS 1.3: the server application traffic secret */
	struct ktls_emu *emu;                  /* test builds: the emulated kernel */
};

enum { KTLS_OFF, KTLS_WAIT, KTLS_ON };

static const keel_transport_ops tls_ops;
static void hs_next_tick(keel_loop *loop, keel_timer *t);
static BIO_METHOD *bio_method;
static int conn_index = -1; /* SSL ex_data: the struct tconn */
static pthread_once_t once = PTHREAD_ONCE_INIT;
static const char *ktls_note;
static bool ktls_ok; /* the kernel takes TLS (or a test build emulates it) */

static void set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
	if (!err || !errlen)
		return;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	unsigned long e = ERR_peek_last_error();
	if (e && n >= 0 && (size_t)n < errlen) {
		char why[200];
		ERR_error_string_n(e, why, sizeof(why));
		const char *reason = ERR_reason_error_string(e);
		snprintf(err + n, errlen - (size_t)n, ": %s", reason ? reason : why);
	}
	ERR_clear_error();
}

/*
 * The error queue must be empty before an SSL I/O call for SSL_get_error to
 * tell a WANT_READ from a failure. ERR_clear_error walks and frees all 16
 * slots (~840 instructions, 32 CRYPTO_free calls); peeking first is ~200 and
 * the queue is nearly always empty already (every failure path clears it).
 */
static inline void err_clean(void)
{
	if (ERR_peek_error())
		ERR_clear_error();
}

/* ---- The BIO: reads the received queue, writes into out ------------------ */

static char *obuf_get(keel_tls_endpoint *ep);

static int bio_write(BIO *b, const char *data, int len)
{
	struct tconn *tc = BIO_get_data(b);
	if (tc->ktls == KTLS_ON) {
		tc->ktls_stuck = true; /* the kernel has the write keys: an alert cannot go (deliver) */
		return -1;
	}
	size_t need = tc->out_len + (size_t)len;
	if (need > OUT_MAX)
		return -1; /* records OpenSSL writes on its own (KeyUpdate replies) to a peer that never reads */
	if (!tc->out && need <= OBUF_CAP && (tc->out = obuf_get(tc->ep)))
		tc->out_cap = OBUF_CAP;
	if (need > tc->out_cap) {
		size_t cap = tc->out_cap ? tc->out_cap : OBUF_CAP;
		while (cap < need)
			cap *= 2;
		char *p = keel__realloc(tc->out, cap);
		if (!p)
			return -1; /* OpenSSL reports a write error: the connection fails */
		tc->out = p;
		tc->out_cap = cap;
	}
	memcpy(tc->out + tc->out_len, data, (size_t)len);
	tc->out_len += (size_t)len;
	tc->wrote += (uint64_t)len;
	return len;
}

static int bio_read(BIO *b, char *data, int len)
{
	struct tconn *tc = BIO_get_data(b);
	BIO_clear_retry_flags(b);
	int got = 0;
	while (got < len && tc->rq_head) {
		keel_buf *h = tc->rq_head;
		uint32_t n = h->len - tc->rq_off;
		if (n > (uint32_t)(len - got))
			n = (uint32_t)(len - got);
		memcpy(data + got, h->data + tc->rq_off, n);
		got += (int)n;
		tc->rq_off += n;
		tc->rq_bytes -= n;
		if (tc->rq_off == h->len) {
			tc->rq_head = h->next;
			if (!tc->rq_head)
				tc->rq_tail = NULL;
			tc->rq_off = 0;
			keel_buf_release(h);
		}
	}
	if (got)
		return got;
	if (tc->raw_eof)
		return 0; /* the peer's end: OpenSSL sees EOF */
	BIO_set_retry_read(b);
	return -1;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	(void)b;
	(void)num;
	(void)ptr;
	return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create(BIO *b)
{
	BIO_set_init(b, 1);
	return 1;
}

/* ---- Once per process ----------------------------------------------------- */

static void init_once(void)
{
	OPENSSL_init_ssl(0, NULL);
	bio_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "keel");
	if (bio_method) {
		BIO_meth_set_write(bio_method, bio_write);
		BIO_meth_set_read(bio_method, bio_read);
		BIO_meth_set_ctrl(bio_method, bio_ctrl);
		BIO_meth_set_create(bio_method, bio_create);
	}
	conn_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	ktls_ok = keel__ktls_probe(&ktls_note);
}

/* ---- Ticket keys: rotated every tk_life_s, the previous one still accepted -- */

static int ticket_key_new(struct ticket_key *k, uint64_t now)
{
	if (RAND_bytes(k->name, sizeof(k->name)) != 1 || RAND_bytes(k->aes, sizeof(k->aes)) != 1 ||
	    RAND_bytes(k->hmac, sizeof(k->hmac)) != 1)
		return -1;
	k->born_s = now;
	k->set = true;
	return 0;
}

static int ticket_cb(SSL *ssl, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *ectx,
                     EVP_MAC_CTX *hctx, int enc)
{
	keel_tls_ctx *ctx = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
	struct ticket_key k;
	int ret = 1;
	uint64_t now = (uint64_t)time(NULL);
	pthread_mutex_lock(&ctx->tk_mu);
	if (!ctx->tk[0].set || now - ctx->tk[0].born_s >= ctx->tk_life_s) {
		struct ticket_key fresh;
		if (ticket_key_new(&fresh, now) == 0) {
			ctx->tk[1] = ctx->tk[0];
			ctx->tk[0] = fresh;
		}
	}
	if (enc) {
		k = ctx->tk[0];
	} else if (ctx->tk[0].set && memcmp(name, ctx->tk[0].name, 16) == 0) {
		k = ctx->tk[0];
		/* TLS 1.3 tickets are for one use (RFC 8446 C.4): a resumed session gets a fresh one. */
		ret = SSL_version(ssl) == TLS1_3_VERSION ? 2 : 1;
	} else if (ctx->tk[1].set && memcmp(name, ctx->tk[1].name, 16) == 0 &&
	           now - ctx->tk[1].born_s < 2ull * ctx->tk_life_s) {
		k = ctx->tk[1];
		ret = 2; /* good, but issue a ticket under the current key */
	} else {
		k.set = false;
	}
	pthread_mutex_unlock(&ctx->tk_mu);
	if (!k.set)
		return enc ? -1 : 0; /* unknown or retired key: a full handshake */
	OSSL_PARAM params[] = {
	    OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, k.hmac, sizeof(k.hmac)),
	    OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
	    OSSL_PARAM_construct_end(),
	};
	if (enc) {
		memcpy(name, k.name, 16);
		if (RAND_bytes(iv, EVP_MAX_IV_LENGTH) != 1 ||
		    !EVP_EncryptInit_ex(ectx, EVP_aes_256_cbc(), NULL, k.aes, iv))
			ret = -1;
	} else if (!EVP_DecryptInit_ex(ectx, EVP_aes_256_cbc(), NULL, k.aes, iv)) {
		ret = -1;
	}
	if (ret > 0 && !EVP_MAC_CTX_set_params(hctx, params))
		ret = -1;
	OPENSSL_cleanse(&k, sizeof(k));
	return ret;
}

/* ---- Context callbacks: SNI, ALPN, OCSP ----------------------------------- */

static int sni_cb(SSL *ssl, int *alert, void *arg)
{
	(void)alert;
	keel_tls_ctx *ctx = arg;
	const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
	if (!name)
		return SSL_TLSEXT_ERR_NOACK;
	for (int i = 0; i < ctx->nsites; i++) {
		if (X509_check_host(ctx->leaf[i], name, 0, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS, NULL) == 1) {
			if (i > 0)
				SSL_set_SSL_CTX(ssl, ctx->site[i]);
			return SSL_TLSEXT_ERR_OK;
		}
	}
	return SSL_TLSEXT_ERR_OK; /* the first site answers names nobody covers */
}

static int alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                   unsigned inlen, void *arg)
{
	(void)ssl;
	keel_tls_ctx *ctx = arg;
	unsigned char *o;
	if (SSL_select_next_proto(&o, outlen, ctx->alpn, ctx->alpn_len, in, inlen) != OPENSSL_NPN_NEGOTIATED)
		return SSL_TLSEXT_ERR_ALERT_FATAL; /* RFC 7301 3.2: no_application_protocol */
	*out = o;
	return SSL_TLSEXT_ERR_OK;
}

static int ocsp_cb(SSL *ssl, void *arg)
{
	keel_tls_ctx *ctx = arg;
	X509 *x = SSL_get_certificate(ssl); /* the one chosen for this client (site, key type) */
	if (!ctx->ocsp || !x || X509_cmp(x, ctx->ocsp_cert) != 0)
		return SSL_TLSEXT_ERR_NOACK;
	unsigned char *copy = OPENSSL_memdup(ctx->ocsp, (size_t)ctx->ocsp_len);
	if (!copy || !SSL_set_tlsext_status_ocsp_resp(ssl, copy, ctx->ocsp_len)) {
		OPENSSL_free(copy);
		return SSL_TLSEXT_ERR_NOACK;
	}
	return SSL_TLSEXT_ERR_OK;
}

static int new_session_cb(SSL *ssl, SSL_SESSION *sess);

/*
 * Kernel TLS needs what OpenSSL keeps to itself: TLS 1.3's server
 * application traffic secret, which only the key log says, and the number
 * of records written under the current keys, which the message callback
 * counts (a record's header is reported as it is written; a handshake
 * message once its records are out, so the count at the Finished includes
 * it). A KeyUpdate of ours would change the keys: no kTLS then.
 */
static void ktls_keylog(const SSL *ssl, const char *line)
{
	static const char tag[] = "SERVER_TRAFFIC_SECRET_0 ";
	struct tconn *tc = SSL_get_ex_data(ssl, conn_index);
	if (!tc || tc->ktls != KTLS_WAIT || strncmp(line, tag, sizeof(tag) - 1) != 0)
		return;
	const char *h = strchr(line + sizeof(tag) - 1, ' '); /* past the client random */
	size_t n = 0;
	for (h = h ? h + 1 : ""; n < sizeof(tc->secret) && h[0] && h[1]; h += 2) {
		int hi = OPENSSL_hexchar2int((unsigned char)h[0]),
		    lo = OPENSSL_hexchar2int((unsigned char)h[1]);
		if (hi < 0 || lo < 0)
			break;
		tc->secret[n++] = (unsigned char)(hi << 4 | lo);
	}
	tc->secret_len = (uint8_t)n;
}

static void ktls_msg(int write_p, int version, int content_type, const void *buf, size_t len, SSL *ssl,
                     void *arg)
{
	(void)version;
	(void)arg;
	struct tconn *tc = SSL_get_ex_data(ssl, conn_index);
	if (!write_p || !tc || tc->ktls != KTLS_WAIT)
		return;
	const unsigned char *b = buf;
	if (content_type == SSL3_RT_HEADER) {
		tc->rec_wrote++;
	} else if (content_type == SSL3_RT_HANDSHAKE && len) {
		if (b[0] == SSL3_MT_FINISHED && !tc->fin_seen) {
			tc->fin_seen = true;
			tc->rec_fin = tc->rec_wrote;
		} else if (b[0] == SSL3_MT_KEY_UPDATE) {
			tc->ktls = KTLS_OFF; /* (the secret is no longer the keys') */
			OPENSSL_cleanse(tc->secret, sizeof(tc->secret));
			tc->secret_len = 0;
		}
	}
}

/* ---- Building a context ---------------------------------------------------- */

/*
 * OpenSSL 3.0 fills a certificate's extension cache and its names'
 * canonical encodings the first time a verification needs them, writing
 * under the store's lock where other threads read them without it (a
 * ThreadSanitizer report on two workers verifying at once). The store is
 * shared by every worker: fill them here, in the thread that makes the
 * context, before any can verify.
 */
static void warm_store(SSL_CTX *sc)
{
	STACK_OF(X509_OBJECT) *objs = X509_STORE_get0_objects(SSL_CTX_get_cert_store(sc));
	for (int i = 0; i < sk_X509_OBJECT_num(objs); i++) {
		X509 *x = X509_OBJECT_get0_X509(sk_X509_OBJECT_value(objs, i));
		if (!x)
			continue;
		(void)X509_check_purpose(x, -1, 0);
		(void)X509_NAME_cmp(X509_get_subject_name(x), X509_get_issuer_name(x));
	}
	ERR_clear_error();
}

void keel_tls_config_default(keel_tls_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->verify = true;
	cfg->handshakes_max = 256;
	cfg->handshake_timeout_ms = 10000;
	cfg->tickets = true;
	cfg->ticket_key_s = 3600;
	cfg->ktls = true;
}

static int parse_protocols(const char *s, int *min, int *max, char *err, size_t errlen)
{
	int lo = 0, hi = 0;
	if (!s)
		s = "TLSv1.2 TLSv1.3";
	char word[32];
	while (*s) {
		size_t n = strcspn(s, " ,");
		if (n) {
			if (n >= sizeof(word)) {
				set_err(err, errlen, "tls_protocols: '%.*s' is not TLSv1.2 or TLSv1.3",
				        (int)n, s);
				return -EINVAL;
			}
			memcpy(word, s, n);
			word[n] = '\0';
			int v;
			if (strcmp(word, "TLSv1.2") == 0) {
				v = TLS1_2_VERSION;
			} else if (strcmp(word, "TLSv1.3") == 0) {
				v = TLS1_3_VERSION;
			} else {
				set_err(
				    err, errlen,
				    "tls_protocols: '%s' is not TLSv1.2 or TLSv1.3 (nothing older is offered)",
				    word);
				return -EINVAL;
			}
			lo = lo && lo < v ? lo : v;
			hi = hi > v ? hi : v;
		}
		s += n;
		s += strspn(s, " ,");
	}
	if (!lo) {
		set_err(err, errlen, "tls_protocols: empty");
		return -EINVAL;
	}
	*min = lo;
	*max = hi;
	return 0;
}

static int parse_alpn(keel_tls_ctx *ctx, const char *s, char *err, size_t errlen)
{
	if (!s)
		s = "http/1.1";
	ctx->alpn_len = 0;
	while (*s) {
		size_t n = strcspn(s, ",");
		if (n == 0 || n > 255 || ctx->alpn_len + 1 + n > sizeof(ctx->alpn)) {
			set_err(err, errlen, "alpn: bad protocol list");
			return -EINVAL;
		}
		ctx->alpn[ctx->alpn_len++] = (unsigned char)n;
		memcpy(ctx->alpn + ctx->alpn_len, s, n);
		ctx->alpn_len += (unsigned)n;
		s += n;
		if (*s == ',')
			s++;
	}
	return 0;
}

static int name_cmp(const void *a, const void *b)
{
	return strcmp(a, b);
}

/* The names a certificate answers for, canonical (sorted, lower case): equal strings share a site. */
static void cert_names(X509 *x, char *out, size_t outlen)
{
	char names[32][256];
	int n = 0;
	GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
	for (int i = 0; gens && i < sk_GENERAL_NAME_num(gens) && n < 32; i++) {
		const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
		if (g->type == GEN_DNS || g->type == GEN_IPADD) {
			const ASN1_STRING *s = g->type == GEN_DNS ? g->d.dNSName : g->d.iPAddress;
			int len = ASN1_STRING_length(s);
			const unsigned char *d = ASN1_STRING_get0_data(s);
			int w = snprintf(names[n], sizeof(names[n]), "%c:", g->type == GEN_DNS ? 'd' : 'i');
			for (int j = 0; j < len && w < 250; j++)
				w += snprintf(names[n] + w, sizeof(names[n]) - (size_t)w,
				              g->type == GEN_DNS ? "%c" : "%02x",
				              g->type == GEN_DNS ? (d[j] | 0x20) : d[j]);
			n++;
		}
	}
	GENERAL_NAMES_free(gens);
	if (n == 0) {
		X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, names[0],
		                          sizeof(names[0]));
		n = 1;
	}
	qsort(names, (size_t)n, sizeof(names[0]), name_cmp);
	out[0] = '\0';
	size_t w = 0;
	for (int i = 0; i < n && w < outlen; i++)
		w += (size_t)snprintf(out + w, outlen - w, "%s,", names[i]);
}

static SSL_CTX *ctx_base(keel_tls_ctx *ctx, const keel_tls_config *cfg, char *err, size_t errlen)
{
	SSL_CTX *sc = SSL_CTX_new(cfg->client ? TLS_client_method() : TLS_server_method());
	if (!sc) {
		set_err(err, errlen, "cannot create an OpenSSL context");
		return NULL;
	}
	int min, max;
	if (parse_protocols(cfg->protocols, &min, &max, err, errlen) < 0)
		goto fail;
	SSL_CTX_set_min_proto_version(sc, min);
	SSL_CTX_set_max_proto_version(sc, max);
	SSL_CTX_set_options(sc, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
	SSL_CTX_set_mode(sc, SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_read_ahead(sc, 1);
	if (!SSL_CTX_set_cipher_list(sc, cfg->ciphers ? cfg->ciphers : INTERMEDIATE_CIPHERS)) {
		set_err(err, errlen, "tls_ciphers: no usable cipher in '%s'",
		        cfg->ciphers ? cfg->ciphers : "");
		goto fail;
	}
	if (!SSL_CTX_set_ciphersuites(sc, cfg->ciphersuites ? cfg->ciphersuites : INTERMEDIATE_SUITES)) {
		set_err(err, errlen, "tls_ciphersuites: no usable suite in '%s'",
		        cfg->ciphersuites ? cfg->ciphersuites : "");
		goto fail;
	}
	if (!SSL_CTX_set1_groups_list(sc, INTERMEDIATE_GROUPS)) {
		set_err(err, errlen, "cannot set the key exchange groups");
		goto fail;
	}
	SSL_CTX_set_app_data(sc, ctx);
	if (cfg->client) {
		if (cfg->verify) {
			SSL_CTX_set_verify(sc, SSL_VERIFY_PEER, NULL);
			if (cfg->ca_file ? !SSL_CTX_load_verify_locations(sc, cfg->ca_file, NULL)
			                 : !SSL_CTX_set_default_verify_paths(sc)) {
				set_err(err, errlen, "%s: cannot load the CA certificates",
				        cfg->ca_file ? cfg->ca_file : "the system store");
				goto fail;
			}
			warm_store(sc);
		}
		SSL_CTX_set_session_cache_mode(sc, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
		SSL_CTX_sess_set_new_cb(sc, new_session_cb);
		SSL_CTX_set_alpn_protos(sc, ctx->alpn, ctx->alpn_len);
		return sc;
	}
	SSL_CTX_set_dh_auto(sc, 1);
	SSL_CTX_set_max_early_data(sc, 0);
	SSL_CTX_set_session_id_context(sc, (const unsigned char *)"keel", 4);
	SSL_CTX_set_session_cache_mode(sc, SSL_SESS_CACHE_OFF);
	if (cfg->tickets)
		SSL_CTX_set_tlsext_ticket_key_evp_cb(sc, ticket_cb);
	else
		SSL_CTX_set_options(sc, SSL_OP_NO_TICKET);
	SSL_CTX_set_num_tickets(sc, cfg->tickets ? 1 : 0);
	/* A ticket is honoured while its key is current or previous: at most two rotations. */
	SSL_CTX_set_timeout(sc, 2 * (long)ctx->tk_life_s);
	SSL_CTX_set_tlsext_servername_callback(sc, sni_cb);
	SSL_CTX_set_tlsext_servername_arg(sc, ctx);
	SSL_CTX_set_alpn_select_cb(sc, alpn_cb, ctx);
	SSL_CTX_set_tlsext_status_cb(sc, ocsp_cb);
	SSL_CTX_set_tlsext_status_arg(sc, ctx);
	if (ctx->ktls)
		SSL_CTX_set_keylog_callback(sc, ktls_keylog);
	if (cfg->ca_file) {
		STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(cfg->ca_file);
		if (!names || !SSL_CTX_load_verify_locations(sc, cfg->ca_file, NULL)) {
			sk_X509_NAME_pop_free(names, X509_NAME_free);
			set_err(err, errlen, "%s: cannot load the client CA certificates", cfg->ca_file);
			goto fail;
		}
		SSL_CTX_set_client_CA_list(sc, names);
		SSL_CTX_set_verify(sc, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
		warm_store(sc);
	}
	return sc;
fail:
	SSL_CTX_free(sc);
	return NULL;
}

/* Load one certificate (with its chain) and its key into sc; the leaf in *leaf (a reference). */
static int load_pair(keel_tls_ctx *ctx, SSL_CTX *sc, const keel_tls_cert *c, X509 **leaf, char *err,
                     size_t errlen)
{
	if (!c->cert_file || !c->key_file) {
		set_err(err, errlen, "a certificate needs both a cert file and a key file");
		return -EINVAL;
	}
	if (SSL_CTX_use_certificate_chain_file(sc, c->cert_file) != 1) {
		set_err(err, errlen, "%s: cannot load the certificate chain", c->cert_file);
		return KEEL_ETLS;
	}
	if (SSL_CTX_use_PrivateKey_file(sc, c->key_file, SSL_FILETYPE_PEM) != 1) {
		set_err(err, errlen, "%s: cannot load the private key", c->key_file);
		return KEEL_ETLS;
	}
	if (SSL_CTX_check_private_key(sc) != 1) {
		set_err(err, errlen, "%s does not match the certificate in %s", c->key_file, c->cert_file);
		return KEEL_ETLS;
	}
	X509 *x = SSL_CTX_get0_certificate(sc);
	X509_up_ref(x);
	*leaf = x;
	if (ctx->nall < KEEL_TLS_CERTS_MAX && X509_up_ref(x))
		ctx->all[ctx->nall++] = x;
	/* The earliest expiry, for keel -t. */
	const ASN1_TIME *na = X509_get0_notAfter(x);
	struct tm tm;
	if (ASN1_TIME_to_tm(na, &tm) == 1) {
		time_t t = timegm(&tm);
		if (!ctx->not_after_file || t < ctx->not_after) {
			ctx->not_after = t;
			free(ctx->not_after_file);
			ctx->not_after_file = strdup(c->cert_file);
		}
	}
	return 0;
}

static int load_ocsp(keel_tls_ctx *ctx, const char *file, char *err, size_t errlen)
{
	FILE *f = fopen(file, "rb");
	if (!f) {
		int e = errno;
		set_err(err, errlen, "%s: %s", file, strerror(e));
		return -e;
	}
	unsigned char *buf = NULL;
	size_t len = 0, cap = 0;
	for (;;) {
		if (len == cap) {
			cap = cap ? cap * 2 : 4096;
			unsigned char *p = cap <= (1u << 20) ? realloc(buf, cap) : NULL;
			if (!p) {
				free(buf);
				fclose(f);
				set_err(err, errlen, "%s: too large for an OCSP response", file);
				return -EFBIG;
			}
			buf = p;
		}
		size_t n = fread(buf + len, 1, cap - len, f);
		if (n == 0)
			break;
		len += n;
	}
	fclose(f);
	const unsigned char *p = buf;
	OCSP_RESPONSE *resp = d2i_OCSP_RESPONSE(NULL, &p, (long)len);
	if (!resp) {
		free(buf);
		set_err(err, errlen, "%s: not a DER OCSP response", file);
		return KEEL_ETLS;
	}
	/* Which certificate it speaks of: serial and issuer name (RFC 6960 CertID). */
	OCSP_BASICRESP *bs = OCSP_response_get1_basic(resp);
	for (int i = 0; bs && i < OCSP_resp_count(bs) && !ctx->ocsp_cert; i++) {
		ASN1_OCTET_STRING *name_hash;
		ASN1_OBJECT *alg;
		ASN1_INTEGER *serial;
		OCSP_CERTID *cid = (OCSP_CERTID *)OCSP_SINGLERESP_get0_id(OCSP_resp_get0(bs, i));
		if (!OCSP_id_get0_info(&name_hash, &alg, NULL, &serial, cid))
			continue;
		const EVP_MD *md = EVP_get_digestbyobj(alg);
		for (int j = 0; md && j < ctx->nall; j++) {
			unsigned char h[EVP_MAX_MD_SIZE];
			unsigned hl;
			X509 *x = ctx->all[j];
			if (ASN1_INTEGER_cmp(serial, X509_get0_serialNumber(x)) == 0 &&
			    X509_NAME_digest(X509_get_issuer_name(x), md, h, &hl) &&
			    (int)hl == ASN1_STRING_length(name_hash) &&
			    memcmp(h, ASN1_STRING_get0_data(name_hash), hl) == 0)
				ctx->ocsp_cert = x;
		}
	}
	OCSP_BASICRESP_free(bs);
	OCSP_RESPONSE_free(resp);
	if (!ctx->ocsp_cert) {
		free(buf);
		set_err(err, errlen, "%s: the OCSP response is about none of the certificates", file);
		return KEEL_ETLS;
	}
	ctx->ocsp = buf;
	ctx->ocsp_len = (long)len;
	return 0;
}

int keel_tls_ctx_new(keel_tls_ctx **out, const keel_tls_config *cfg, char *err, size_t errlen)
{
	*out = NULL;
	pthread_once(&once, init_once);
	if (!bio_method || conn_index < 0) {
		set_err(err, errlen, "OpenSSL did not initialise");
		return -ENOMEM;
	}
	if (!cfg->client && cfg->ncerts == 0) {
		set_err(err, errlen, "a TLS server needs a certificate and its key");
		return -EINVAL;
	}
	if (cfg->ncerts > KEEL_TLS_CERTS_MAX) {
		set_err(err, errlen, "at most %d certificates", KEEL_TLS_CERTS_MAX);
		return -EINVAL;
	}
	keel_tls_ctx *ctx = calloc(1, sizeof(*ctx));
	if (!ctx)
		return -ENOMEM;
	pthread_mutex_init(&ctx->tk_mu, NULL);
	ctx->client = cfg->client;
	ctx->verify = cfg->verify;
	ctx->ktls = cfg->ktls && !cfg->client && ktls_ok;
	ctx->handshakes_max = cfg->handshakes_max ? cfg->handshakes_max : 256;
	ctx->handshake_timeout_ms = cfg->handshake_timeout_ms ? cfg->handshake_timeout_ms : 10000;
	ctx->tk_life_s = cfg->ticket_key_s ? cfg->ticket_key_s : 3600;
	int rc = parse_alpn(ctx, cfg->alpn, err, errlen);
	if (rc < 0)
		goto fail;
	if (cfg->client) {
		rc = -ENOMEM;
		if (cfg->name && !(ctx->name = strdup(cfg->name)))
			goto fail;
		rc = KEEL_ETLS;
		if (!(ctx->site[0] = ctx_base(ctx, cfg, err, errlen)))
			goto fail;
		ctx->nsites = 1;
		if (cfg->ncerts &&
		    (rc = load_pair(ctx, ctx->site[0], &cfg->certs[0], &ctx->leaf[0], err, errlen)) < 0)
			goto fail;
		*out = ctx;
		return 0;
	}
	char site_names[KEEL_TLS_CERTS_MAX][1024];
	int site_types[KEEL_TLS_CERTS_MAX][4] = {{0}};
	for (size_t i = 0; i < cfg->ncerts; i++) {
		/* Read the certificate alone first, to find its site by its names. */
		FILE *f = cfg->certs[i].cert_file ? fopen(cfg->certs[i].cert_file, "r") : NULL;
		if (!f) {
			rc = cfg->certs[i].cert_file ? -errno : -EINVAL;
			set_err(err, errlen, "%s: %s",
			        cfg->certs[i].cert_file ? cfg->certs[i].cert_file : "(no cert file)",
			        strerror(-rc));
			goto fail;
		}
		X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
		fclose(f);
		if (!x) {
			rc = KEEL_ETLS;
			set_err(err, errlen, "%s: not a PEM certificate", cfg->certs[i].cert_file);
			goto fail;
		}
		char names[1024];
		cert_names(x, names, sizeof(names));
		int type = EVP_PKEY_get_base_id(X509_get0_pubkey(x));
		X509_free(x);
		int s = 0;
		while (s < ctx->nsites && strcmp(site_names[s], names) != 0)
			s++;
		int slot = type == EVP_PKEY_EC ? 0 : type == EVP_PKEY_RSA ? 1 : 2;
		if (s < ctx->nsites && site_types[s][slot]) {
			rc = -EINVAL;
			set_err(err, errlen,
			        "%s: a second certificate of the same key type for the same names",
			        cfg->certs[i].cert_file);
			goto fail;
		}
		if (s == ctx->nsites) {
			rc = KEEL_ETLS;
			if (!(ctx->site[s] = ctx_base(ctx, cfg, err, errlen)))
				goto fail;
			snprintf(site_names[s], sizeof(site_names[s]), "%s", names);
			ctx->nsites++;
		}
		site_types[s][slot] = 1;
		X509 *leaf = NULL;
		if ((rc = load_pair(ctx, ctx->site[s], &cfg->certs[i], &leaf, err, errlen)) < 0)
			goto fail;
		if (ctx->leaf[s])
			X509_free(leaf);
		else
			ctx->leaf[s] = leaf;
	}
	if (cfg->ocsp_file && (rc = load_ocsp(ctx, cfg->ocsp_file, err, errlen)) < 0)
		goto fail;
	*out = ctx;
	return 0;
fail:
	keel_tls_ctx_free(ctx);
	return rc < 0 ? rc : KEEL_ETLS;
}

void keel_tls_ctx_free(keel_tls_ctx *ctx)
{
	if (!ctx)
		return;
	for (int i = 0; i < KEEL_TLS_CERTS_MAX; i++) {
		SSL_CTX_free(ctx->site[i]);
		X509_free(ctx->leaf[i]);
	}
	free(ctx->ocsp);
	free(ctx->name);
	for (int i = 0; i < ctx->nall; i++)
		X509_free(ctx->all[i]);
	free(ctx->not_after_file);
	OPENSSL_cleanse(ctx->tk, sizeof(ctx->tk));
	pthread_mutex_destroy(&ctx->tk_mu);
	free(ctx);
}

int keel_tls_ctx_expiry_days(const keel_tls_ctx *ctx, const char **file)
{
	*file = ctx->not_after_file;
	if (!ctx->not_after_file)
		return INT32_MAX;
	double d = difftime(ctx->not_after, time(NULL)) / 86400.0;
	return d < 0 ? (int)d - 1 : (int)d;
}

/* ---- Endpoint: a loop's buffers, budget and counters ---------------------- */

static void ep_maybe_free(keel_tls_endpoint *ep)
{
	if (!ep->freed || ep->st.conns || ep->pbufs_out || ep->hs_scheduled)
		return;
	keel_timer_disarm(ep->loop, &ep->hs_later);
	while (ep->pfree) {
		struct pbuf *p = ep->pfree;
		ep->pfree = p->next_free;
		free(p);
	}
	while (ep->ofree) {
		void *o = ep->ofree;
		memcpy(&ep->ofree, o, sizeof(void *));
		free(o);
	}
	for (int i = 0; i < SESS_CACHE; i++)
		SSL_SESSION_free(ep->sess[i].sess);
	free(ep);
}

static void pbuf_release(keel_buf_owner *owner, keel_buf *buf)
{
	struct pbuf *p = keel_container_of(buf, struct pbuf, buf);
	keel_tls_endpoint *ep = p->ep;
	(void)owner;
	ep->pbufs_out--;
	if (ep->npfree < FREE_KEEP && !ep->freed) {
		p->next_free = ep->pfree;
		ep->pfree = p;
		ep->npfree++;
	} else {
		free(p);
	}
	ep_maybe_free(ep);
}

static struct pbuf *pbuf_get(keel_tls_endpoint *ep)
{
	struct pbuf *p = ep->pfree;
	if (p) {
		ep->pfree = p->next_free;
		ep->npfree--;
	} else if (!(p = keel__malloc(sizeof(*p)))) {
		return NULL;
	}
	memset(&p->buf, 0, sizeof(p->buf));
	p->buf.data = p->data;
	p->buf.cap = PLAIN_CAP;
	p->buf.refs = 1;
	p->buf.owner = &ep->owner;
	p->ep = ep;
	ep->pbufs_out++;
	return p;
}

static char *obuf_get(keel_tls_endpoint *ep)
{
	void *o = ep->ofree;
	if (o) {
		memcpy(&ep->ofree, o, sizeof(void *));
		ep->nofree--;
		return o;
	}
	return keel__malloc(OBUF_CAP);
}

static void obuf_put(keel_tls_endpoint *ep, char *o, size_t cap)
{
	if (!o)
		return;
	if (cap != OBUF_CAP || ep->nofree >= FREE_KEEP) {
		free(o);
		return;
	}
	memcpy(o, &ep->ofree, sizeof(void *));
	ep->ofree = o;
	ep->nofree++;
}

int keel_tls_endpoint_new(keel_tls_endpoint **out, keel_tls_ctx *ctx, keel_loop *loop)
{
	*out = NULL;
	keel_tls_endpoint *ep = keel__calloc(1, sizeof(*ep));
	if (!ep)
		return -ENOMEM;
	ep->ctx = ctx;
	ep->loop = loop;
	ep->owner.release = pbuf_release;
	keel_timer_init(&ep->hs_later, hs_next_tick);
	static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
	static bool logged;
	pthread_mutex_lock(&log_mu);
	if (!logged && ktls_note) {
		logged = true;
		keel_log(KEEL_LOG_INFO, "tls: %s", ktls_note);
	}
	pthread_mutex_unlock(&log_mu);
	*out = ep;
	return 0;
}

void keel_tls_endpoint_free(keel_tls_endpoint *ep)
{
	if (!ep)
		return;
	ep->freed = true;
	ep_maybe_free(ep);
}

void keel_tls_endpoint_stats(const keel_tls_endpoint *ep, keel_tls_stats *out)
{
	*out = ep->st;
}

/* ---- A connection ---------------------------------------------------------- */

static void pump(struct tconn *tc);
static void hs_enqueue(struct tconn *tc);
static void raw_start(struct tconn *tc);
static void flush_out(struct tconn *tc);
static void tx_progress(struct tconn *tc);
static void finish_close(struct tconn *tc);

static void hs_release(struct tconn *tc)
{
	if (tc->hs_counted) {
		tc->hs_counted = false;
		tc->ep->st.handshaking--;
	}
	keel_timer_disarm(tc->loop, &tc->hs_timer);
}

static void rx_end(struct tconn *tc, int err)
{
	keel_promise *p = tc->rx;
	if (!p)
		return;
	tc->rx = NULL;
	tc->fn = NULL;
	if (err)
		keel_promise_reject(p, err);
	else
		keel_promise_resolve(p, 0, NULL);
}

static void tx_end(struct tconn *tc, int err)
{
	if (!tc->tx)
		return;
	if (tc->fread || (tc->ktls == KTLS_ON && tc->send)) {
		/*
		 * The file, or with kTLS the caller's plaintext (the kernel makes
		 * the records from it), is the caller's again when we settle:
		 * wait for the read or send that uses it.
		 */
		if (!tc->tx_err)
			tc->tx_err = err ? err : -ECANCELED;
		keel_promise_cancel(tc->fread ? tc->fread : tc->send);
		return;
	}
	keel_promise *p = tc->tx;
	tc->tx = NULL;
	tc->tx_kind = TX_NONE;
	obuf_put(tc->ep, tc->fbuf, OBUF_CAP);
	tc->fbuf = NULL;
	if (err)
		keel_promise_reject(p, err);
	else
		keel_promise_resolve(p, (int64_t)tc->tx_total, NULL);
}

/* The stream is dead: everything waiting hears err; nothing more is read or written. */
static void conn_fail(struct tconn *tc, int err)
{
	if (tc->fatal)
		return;
	tc->fatal = err;
	if ((err == KEEL_ETLS || err == KEEL_ETLSHS || err == KEEL_ETLSCERT) && !tc->send && tc->out_len &&
	    tc->fd >= 0) {
		/*
		 * The alert goes now, if the socket takes it at once: the close
		 * that follows cancels whatever is still in flight.
		 */
		(void)!send(tc->fd, tc->out, tc->out_len, MSG_DONTWAIT | MSG_NOSIGNAL);
		tc->out_len = 0;
	}
	if (!tc->hs_done && (tc->hs_counted || (!tc->server && err != -ECANCELED)))
		tc->ep->st.handshake_failed += err != -ETIMEDOUT;
	hs_release(tc);
	rx_end(tc, err);
	tx_end(tc, err);
	if (tc->shut_p) {
		keel_promise_reject(tc->shut_p, err);
		tc->shut_p = NULL;
	}
}

static int tls_error(struct tconn *tc)
{
	long v = SSL_get_verify_result(tc->ssl);
	if (!tc->server && tc->ep->ctx->verify && v != X509_V_OK) {
		keel_log(KEEL_LOG_WARN, "tls: %s: certificate did not verify: %s", tc->host ? tc->host : "?",
		         X509_verify_cert_error_string(v));
		return KEEL_ETLSCERT;
	}
	unsigned long e = ERR_peek_error();
	if (e && !tc->server) {
		char code[256];
		const char *why = ERR_reason_error_string(e);
		if (!why) {
			ERR_error_string_n(e, code, sizeof(code));
			why = code;
		}
		keel_log(KEEL_LOG_WARN, "tls: %s: %s: %s", tc->host ? tc->host : "?",
		         tc->hs_done ? "after the handshake" : "the handshake failed", why);
	}
	ERR_clear_error();
	return tc->hs_done ? KEEL_ETLS : KEEL_ETLSHS;
}

static void hs_timeout(keel_loop *loop, keel_timer *t)
{
	(void)loop;
	struct tconn *tc = keel_container_of(t, struct tconn, hs_timer);
	if (tc->hs_done || tc->fatal)
		return;
	tc->ep->st.handshake_timeouts++;
	conn_fail(tc, -ETIMEDOUT);
}

static void raw_ended(keel_ctx *ctx, keel_outcome o, void *ud);

static int raw_data(void *ud, keel_buf *buf)
{
	struct tconn *tc = ud;
	if (tc->closing || tc->fatal || tc->fail_after_send)
		return KEEL_STOP; /* nothing more is read: discard */
	keel_buf_hold(buf);
	buf->next = NULL;
	if (tc->rq_tail)
		tc->rq_tail->next = buf;
	else
		tc->rq_head = buf;
	tc->rq_tail = buf;
	tc->rq_bytes += buf->len;
	pump(tc);
	/* Nobody to hand plaintext to: what comes next waits in the kernel. */
	bool stop = tc->hs_done && !tc->rx;
	stop |= tc->rx && tc->raw_paced != tc->want_paced;
	stop |= tc->rq_bytes >= RQ_MAX; /* (a handshake waiting for its turn reads no further) */
	return stop || tc->fatal || tc->closing ? KEEL_STOP : KEEL_CONTINUE;
}

static void raw_start(struct tconn *tc)
{
	if (tc->raw || tc->raw_eof || tc->fatal || tc->closing || tc->rq_bytes >= RQ_MAX)
		return;
	tc->raw_paced = tc->want_paced;
	tc->raw = tc->raw_paced ? keel_recv_stream_paced(tc->loop, tc->fd, raw_data, tc)
	                        : keel_recv_stream(tc->loop, tc->fd, raw_data, tc);
	tc->refs++;
	keel_promise_done(tc->raw, raw_ended, tc);
}

static void raw_ended(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct tconn *tc = ud;
	tc->raw = NULL;
	tc->refs--;
	if (tc->closing) {
		finish_close(tc);
		return;
	}
	if (o.err == -ECANCELED) {
		/* Stopped by us: again if someone still waits for input. */
		if (tc->rx || !tc->hs_done)
			raw_start(tc);
		return;
	}
	if (o.err < 0) {
		conn_fail(tc, o.err);
		return;
	}
	tc->raw_eof = true;
	pump(tc);
}

/* A plain HTTP request on the TLS port: a plaintext 400, then the close. */
static void plain_http(struct tconn *tc)
{
	static const char msg[] = "HTTP/1.1 400 Bad Request\r\n"
	                          "Content-Type: text/plain\r\n"
	                          "Content-Length: 50\r\n"
	                          "Connection: close\r\n"
	                          "\r\n"
	                          "The plain HTTP request was sent to an HTTPS port.\n";
	tc->ep->st.plain_http++;
	hs_release(tc);
	if (bio_write(SSL_get_wbio(tc->ssl), msg, (int)sizeof(msg) - 1) < 0)
		conn_fail(tc, KEEL_ETLS);
	else
		tc->fail_after_send = KEEL_ETLS;
}

static void handshake_step(struct tconn *tc)
{
	if (tc->server && !tc->sniffed) {
		if (!tc->rq_head)
			goto want_read;
		tc->sniffed = true;
		unsigned char b = (unsigned char)tc->rq_head->data[tc->rq_off];
		if (b >= 'A' && b <= 'Z') {
			plain_http(tc);
			return;
		}
	}
	ERR_clear_error();
	int r = SSL_do_handshake(tc->ssl);
	if (r == 1) {
		tc->hs_done = true;
		hs_release(tc);
		tc->ep->st.handshakes++;
		tc->ep->st.resumed += (uint64_t)SSL_session_reused(tc->ssl);
		const unsigned char *ap;
		unsigned alen;
		SSL_get0_alpn_selected(tc->ssl, &ap, &alen);
		if (ap && alen < sizeof(tc->alpn)) {
			memcpy(tc->alpn, ap, alen);
			tc->alpn[alen] = '\0';
		}
		tx_progress(tc); /* a client's request written before the handshake was done */
		return;
	}
	int e = SSL_get_error(tc->ssl, r);
	if (e != SSL_ERROR_WANT_READ) {
		conn_fail(tc, tls_error(tc));
		return;
	}
want_read:
	if (tc->raw_eof)
		conn_fail(tc, KEEL_ETLSHS); /* the peer went away mid-handshake */
	else
		raw_start(tc);
}

/* Decrypt what has arrived and hand it to the consumer, a buffer at a time. */
static void deliver(struct tconn *tc)
{
	while (tc->rx && !tc->fatal && !tc->closing) {
		struct pbuf *pb = pbuf_get(tc->ep);
		if (!pb) {
			conn_fail(tc, -ENOMEM);
			return;
		}
		size_t len = 0;
		int e = SSL_ERROR_NONE;
		while (len < PLAIN_CAP) {
			size_t got;
			err_clean();
			if (!SSL_read_ex(tc->ssl, pb->data + len, PLAIN_CAP - len, &got)) {
				e = SSL_get_error(tc->ssl, 0);
				break;
			}
			len += got;
			/*
			 * Nothing left to decrypt: no ciphertext queued, none in OpenSSL's
			 * read-ahead buffer, no plaintext pending. Another SSL_read_ex would
			 * only find the BIO empty and say WANT_READ (~1,400 instructions,
			 * and a read buffer allocated and freed under RELEASE_BUFFERS).
			 */
			if (!tc->rq_head && !tc->raw_eof && !SSL_has_pending(tc->ssl)) {
				e = SSL_ERROR_WANT_READ;
				break;
			}
		}
		if (tc->ktls == KTLS_ON &&
		    (tc->ktls_stuck || SSL_get_key_update_type(tc->ssl) != SSL_KEY_UPDATE_NONE)) {
			/*
			 * The peer made OpenSSL owe it a record -- a KeyUpdate in reply
			 * to one that asked (RFC 8446 4.6.3: before any more data, so
			 * nothing read with it may be answered), an alert refusing
			 * renegotiation -- that only the kernel's keys could send. The
			 * connection cannot go on honestly: it ends.
			 */
			keel_buf_release(&pb->buf);
			conn_fail(tc, KEEL_ETLS);
			return;
		}
		if (len) {
			pb->buf.len = (uint32_t)len;
			int rc = tc->fn(tc->ud, &pb->buf);
			keel_buf_release(&pb->buf);
			if (rc == KEEL_STOP)
				rx_end(tc, -ECANCELED);
		} else {
			keel_buf_release(&pb->buf);
		}
		if (e == SSL_ERROR_NONE)
			continue;
		if (e == SSL_ERROR_WANT_READ) {
			if (tc->raw_eof)
				rx_end(
				    tc,
				    0); /* the end without close_notify: an EOF; HTTP's framing judges truncation */
			else if (tc->rx)
				raw_start(tc);
			return;
		}
		if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && tc->raw_eof) ||
		    (e == SSL_ERROR_SSL && tc->raw_eof && !tc->rq_head)) {
			ERR_clear_error();
			rx_end(tc, 0); /* close_notify, or the TCP end */
			return;
		}
		conn_fail(tc, tls_error(tc));
		return;
	}
}

/*
 * Handshakes are the expensive unit: a burst of new connections must not
 * take the loop from the connections already established. Handshakes with
 * input wait on the endpoint's queue and run after the tick's other work
 * (hs_run), at most HS_SLICE_NS of their CPU time per tick (at least one).
 * That is the whole policy, and it is a share: the established
 * connections' work in a tick is what arrived during the last one, all of
 * it done, so when both kinds wait, ticks alternate them and established
 * requests wait one tick of bounded length, not the queue of handshakes.
 * With nothing else to do, ticks follow each other at once and handshakes
 * take the whole CPU. Connections over handshakes_max are closed on
 * arrival, before a byte is sent. (A measured share -- handshakes held to
 * the CPU time of everything else over 20 ms windows -- was tried and
 * dropped: a loop busy with handshakes alone idled, and their latency grew
 * threefold.)
 */
#define HS_SLICE_NS 1000000ull

static void hs_run(keel_ctx *ctx, keel_outcome o, void *ud);

static void hs_schedule(keel_tls_endpoint *ep)
{
	if (ep->hs_scheduled)
		return;
	ep->hs_scheduled = true;
	keel_promise *p = keel_promise_new(ep->loop);
	keel_promise_resolve(p, 0, NULL);
	keel_promise_done(p, hs_run, ep); /* after this tick's completions */
}

static void hs_next_tick(keel_loop *loop, keel_timer *t)
{
	(void)loop;
	keel_tls_endpoint *ep = keel_container_of(t, keel_tls_endpoint, hs_later);
	ep->hs_scheduled = false;
	hs_schedule(ep);
}

static void hs_enqueue(struct tconn *tc)
{
	keel_tls_endpoint *ep = tc->ep;
	if (tc->hs_queued)
		return;
	tc->hs_queued = true;
	tc->refs++;
	tc->hs_next = NULL;
	if (ep->hs_tail)
		ep->hs_tail->hs_next = tc;
	else
		ep->hs_head = tc;
	ep->hs_tail = tc;
	hs_schedule(ep);
}

static uint64_t thread_cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void hs_run(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	(void)o;
	keel_tls_endpoint *ep = ud;
	if (keel_loop_tick(ep->loop) != ep->hs_tick) {
		ep->hs_tick = keel_loop_tick(ep->loop);
		ep->hs_tick_ns = 0;
	}
	while (ep->hs_head) {
		if (ep->hs_tick_ns >= HS_SLICE_NS) {
			keel_timer_arm(ep->loop, &ep->hs_later, 0);
			return; /* the rest next tick, after its other work */
		}
		uint64_t cpu0 = thread_cpu_ns(); /* (CPU, not wall: a preempted thread did no handshake) */
		struct tconn *tc = ep->hs_head;
		ep->hs_head = tc->hs_next;
		if (!ep->hs_head)
			ep->hs_tail = NULL;
		tc->hs_queued = false;
		tc->hs_turn = true;
		pump(tc);
		tc->hs_turn = false;
		uint64_t took = thread_cpu_ns() - cpu0;
		ep->hs_tick_ns += took;
		tc->refs--;
		finish_close(tc);
	}
	ep->hs_scheduled = false;
	ep_maybe_free(ep);
}

/*
 * The server's flight is out, its costly part done (the key exchange, the
 * signature): what is left of the handshake is reading the client's
 * Finished, cheap, and doing it at once ends the handshake -- a slot freed
 * and a connection served -- instead of a second wait in the queue. Not after
 * a HelloRetryRequest: the second ClientHello still costs a signature.
 */
static bool hs_flight_sent(const struct tconn *tc)
{
	if (!tc->wrote)
		return false;
	/* TLS 1.2's full flight ends with ServerHelloDone, the others with our Finished (an HRR has neither). */
	if (SSL_get_state(tc->ssl) == TLS_ST_SW_SRVR_DONE)
		return true;
	unsigned char fin[EVP_MAX_MD_SIZE];
	return SSL_get_finished(tc->ssl, fin, sizeof(fin)) > 0;
}

static void pump(struct tconn *tc)
{
	if (tc->in_pump) {
		tc->pump_again = true;
		return;
	}
	if (tc->server && !tc->hs_done && !tc->hs_turn && !tc->fatal && !tc->closing && !hs_flight_sent(tc)) {
		/* The handshake's work waits for its turn (hs_run); without input there is none to do. */
		if (tc->rq_head || tc->raw_eof)
			hs_enqueue(tc);
		else
			raw_start(tc);
		return;
	}
	tc->in_pump = true;
	tc->refs++; /* a consumer's callback may close the transport: stay until we return */
	do {
		tc->pump_again = false;
		if (tc->fatal || tc->closing || tc->fail_after_send)
			break;
		if (!tc->hs_done)
			handshake_step(tc);
		if (tc->hs_done)
			deliver(tc);
	} while (tc->pump_again);
	tc->in_pump = false;
	flush_out(tc);
	tc->refs--;
	finish_close(tc);
}

/* ---- Output ----------------------------------------------------------------- */

static void sent(keel_ctx *ctx, keel_outcome o, void *ud);

static void flush_out(struct tconn *tc)
{
	if (tc->send || !tc->out_len || tc->closing)
		return;
	char *b = tc->fly;
	size_t cap = tc->fly_cap;
	tc->fly = tc->out;
	tc->fly_cap = tc->out_cap;
	tc->fly_len = tc->out_len;
	tc->out = b;
	tc->out_cap = cap;
	tc->out_len = 0;
	tc->send = keel_send(tc->loop, tc->fd, tc->fly, tc->fly_len);
	tc->refs++;
	keel_promise_done(tc->send, sent, tc);
}

static void shut_now(struct tconn *tc);
static void ktls_try(struct tconn *tc);
static void tx_start(struct tconn *tc);

/* A send of ours ended: false when the connection is closing or has failed, and that is all. */
static bool send_ended(struct tconn *tc, keel_outcome o)
{
	tc->send = NULL;
	tc->refs--;
	if (tc->closing) {
		finish_close(tc);
		return false;
	}
	if (o.err) {
		conn_fail(tc, o.err);
		return false;
	}
	return true;
}

static void sent(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct tconn *tc = ud;
	if (!send_ended(tc, o))
		return;
	tc->sent += tc->fly_len;
	tc->fly_len = 0;
	if (tc->fail_after_send && !tc->out_len) {
		conn_fail(tc, tc->fail_after_send);
		return;
	}
	flush_out(tc);
	tx_progress(tc); /* the next batch is encrypted while this one is sent */
	flush_out(tc);
	if (!tc->send) {
		/* Idle: the buffers go back to the endpoint. */
		if (!tc->out_len) {
			obuf_put(tc->ep, tc->out, tc->out_cap);
			tc->out = NULL;
			tc->out_cap = 0;
		}
		obuf_put(tc->ep, tc->fly, tc->fly_cap);
		tc->fly = NULL;
		tc->fly_cap = 0;
		if (!tc->tx) /* OpenSSL's last records (session tickets) are out: the kernel can take over */
			ktls_try(tc);
		shut_now(tc);
	}
}

/* Encrypt up to n bytes of the job's iovecs: small pieces gathered into one record. */
static int encrypt_iov(struct tconn *tc)
{
	char stage[TLS_RECORD];
	size_t sl = 0;
	while (tc->iov_i < tc->niov && tc->out_len < FILL_MAX) {
		const struct iovec *v = &tc->iov[tc->iov_i];
		const char *p = (const char *)v->iov_base + tc->iov_off;
		size_t rem = v->iov_len - tc->iov_off;
		size_t n;
		if (sl == 0 && rem >= TLS_RECORD) {
			n = rem < FILL_MAX ? rem : FILL_MAX; /* OpenSSL cuts it into records */
			size_t w;
			err_clean();
			if (!SSL_write_ex(tc->ssl, p, n, &w))
				return tls_error(tc);
		} else {
			n = rem < TLS_RECORD - sl ? rem : TLS_RECORD - sl;
			memcpy(stage + sl, p, n);
			sl += n;
		}
		tc->iov_off += n;
		tc->tx_left -= n;
		if (tc->iov_off == v->iov_len) {
			tc->iov_i++;
			tc->iov_off = 0;
		}
		if (sl == TLS_RECORD || (sl && tc->iov_i == tc->niov)) {
			size_t w;
			err_clean();
			if (!SSL_write_ex(tc->ssl, stage, sl, &w))
				return tls_error(tc);
			sl = 0;
		}
	}
	if (sl) {
		size_t w;
		err_clean();
		if (!SSL_write_ex(tc->ssl, stage, sl, &w))
			return tls_error(tc);
	}
	return 0;
}

static void file_read_done(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct tconn *tc = ud;
	tc->fread = NULL;
	tc->refs--;
	if (tc->tx_err) {
		int err = tc->tx_err;
		tc->tx_err = 0;
		tx_end(tc, err);
		finish_close(tc);
		return;
	}
	if (tc->closing || tc->fatal) {
		finish_close(tc);
		return;
	}
	if (o.err) {
		tx_end(tc, o.err); /* the file failed; the TLS stream is whole */
		return;
	}
	size_t n = (size_t)o.n;
	if (n == 0) {
		tc->tx_total -= tc->tx_left; /* the file ended early: a short count */
		tc->tx_left = 0;
		tc->tx_end = tc->wrote;
	} else {
		size_t w;
		err_clean();
		if (!SSL_write_ex(tc->ssl, tc->fbuf, n, &w)) {
			conn_fail(tc, tls_error(tc));
			return;
		}
		tc->file_off += n;
		tc->tx_left -= n;
		if (!tc->tx_left)
			tc->tx_end = tc->wrote;
	}
	flush_out(tc);
	tx_progress(tc);
}

static void tx_progress(struct tconn *tc)
{
	if (!tc->tx || !tc->hs_done || tc->fatal || tc->ktls == KTLS_ON)
		return;
	if (tc->tx_kind == TX_IOV && tc->tx_left) {
		int err = encrypt_iov(tc);
		if (err) {
			conn_fail(tc, err);
			return;
		}
		if (!tc->tx_left)
			tc->tx_end = tc->wrote;
	}
	if (tc->tx_kind == TX_FILE && tc->tx_left && !tc->fread && tc->out_len == 0) {
		if (!tc->fbuf && !(tc->fbuf = obuf_get(tc->ep))) {
			tx_end(tc, -ENOMEM);
			return;
		}
		size_t n = tc->tx_left < FILL_MAX ? (size_t)tc->tx_left : FILL_MAX;
		tc->fread = keel_file_read(tc->loop, tc->file_fd, tc->fbuf, n, tc->file_off);
		tc->refs++;
		keel_promise_done(tc->fread, file_read_done, tc);
		return;
	}
	if (!tc->tx_left && !tc->fread && tc->sent >= tc->tx_end)
		tx_end(tc, 0);
}

static void tx_cancel(keel_promise *p, void *ud)
{
	(void)p;
	struct tconn *tc = ud;
	/* Records may be half sent: the stream cannot go on. */
	if (tc->send)
		keel_promise_cancel(tc->send);
	conn_fail(tc, -ECANCELED);
}

static keel_promise *failed(keel_loop *loop, int err)
{
	keel_promise *p = keel_promise_new(loop);
	keel_promise_reject(p, err);
	return p;
}

/*
 * Hand the send side to the kernel, once OpenSSL's own records (the
 * handshake's last flight, session tickets) have all been sent: the
 * sequence number is then exact. Until that moment the job at hand is
 * encrypted here; a failure leaves it so for good, with one log line per
 * process.
 */
static void ktls_try(struct tconn *tc)
{
	if (tc->ktls != KTLS_WAIT || !tc->hs_done || tc->send || tc->out_len || tc->fatal || tc->closing ||
	    tc->shut_p || SSL_get_shutdown(tc->ssl))
		return;
	bool v13 = SSL_version(tc->ssl) == TLS1_3_VERSION;
	uint64_t seq = (uint64_t)(tc->rec_wrote - tc->rec_fin) + (v13 ? 0 : 1); /* 1.2: Finished was 0 */
	struct ktls_info ki;
	int err = tc->fin_seen ? keel__ktls_info(tc->ssl, tc->secret, tc->secret_len, seq, &ki) : KEEL_ETLS;
	OPENSSL_cleanse(tc->secret, sizeof(tc->secret));
	tc->secret_len = 0;
	tc->ktls = KTLS_OFF;
	SSL_set_msg_callback(tc->ssl, NULL);
	if (!err)
		err = keel__ktls_install(tc->fd, &ki, &tc->emu);
	OPENSSL_cleanse(&ki, sizeof(ki));
	if (err) {
		static atomic_flag said = ATOMIC_FLAG_INIT;
		tc->ep->st.ktls_failed++;
		if (!atomic_flag_test_and_set(&said))
			keel_log(KEEL_LOG_WARN,
			         "tls: kernel TLS refused a connection (%s, %s): it is encrypted here",
			         SSL_get_cipher_name(tc->ssl), keel_strerror(err));
		return;
	}
	tc->ktls = KTLS_ON;
	tc->ep->st.ktls++;
}

static void ktls_sent(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct tconn *tc = ud;
	if (tc->tx_err) {
		/* tx_end waited for this send to let go of the caller's bytes. */
		tc->send = NULL;
		tc->refs--;
		int err = tc->tx_err;
		tc->tx_err = 0;
		tx_end(tc, err);
		finish_close(tc);
		return;
	}
	if (!send_ended(tc, o))
		return;
	tc->tx_total = (uint64_t)o.n; /* (a file that ended early: a short count, as keel_sendfile says) */
	tx_end(tc, 0);
	shut_now(tc);
}

/* The job's first step: to the kernel (kTLS), or its first batch encrypted here. */
static void tx_start(struct tconn *tc)
{
	if (tc->ktls == KTLS_ON) {
		/* Plaintext to the kernel, which makes the records: file bodies never come up here. */
		tc->send = tc->tx_kind == TX_IOV
		               ? keel__ktls_sendv(tc->loop, tc->fd, tc->emu, tc->iov, tc->niov)
		               : keel__ktls_sendfile(tc->loop, tc->fd, tc->emu, tc->file_fd, tc->file_off,
		                                     (size_t)tc->tx_total);
		tc->refs++;
		keel_promise_done(tc->send, ktls_sent, tc);
		return;
	}
	tx_progress(tc);
	flush_out(tc);
	tx_progress(tc); /* the next batch is encrypted while this one is sent */
}

static keel_promise *tx_begin(struct tconn *tc, int kind, uint64_t total)
{
	tc->tx_kind = kind;
	tc->tx_total = total;
	tc->tx_left = total;
	tc->tx_end = tc->wrote;
	tc->tx_err = 0;
	tc->tx = keel_promise_new(tc->loop);
	keel_promise *p = tc->tx;
	keel_promise_on_cancel(p, tx_cancel, tc);
	ktls_try(tc);
	tx_start(tc);
	return p;
}

static keel_promise *tls_sendv(keel_transport *t, const struct iovec *iov, int n)
{
	struct tconn *tc = t->impl;
	if (tc->fatal)
		return failed(t->loop, tc->fatal);
	if (tc->tx || n < 0 || n > KEEL_IOV_MAX)
		return failed(t->loop, tc->tx ? -EBUSY : -EINVAL);
	uint64_t total = 0;
	for (int i = 0; i < n; i++) {
		tc->iov[i] = iov[i];
		total += iov[i].iov_len;
	}
	tc->niov = n;
	tc->iov_i = 0;
	tc->iov_off = 0;
	return tx_begin(tc, TX_IOV, total);
}

static keel_promise *tls_sendfile(keel_transport *t, int in_fd, uint64_t off, size_t len)
{
	struct tconn *tc = t->impl;
	if (tc->fatal)
		return failed(t->loop, tc->fatal);
	if (tc->tx)
		return failed(t->loop, -EBUSY);
	tc->file_fd = in_fd;
	tc->file_off = off;
	return tx_begin(tc, TX_FILE, len);
}

static void shut_done(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct tconn *tc = ud;
	tc->refs--;
	keel_promise *p = tc->shut_p;
	tc->shut_p = NULL;
	if (p)
		keel_promise_settle(p, o);
	finish_close(tc);
}

static void shut_now(struct tconn *tc)
{
	if (!tc->shut_p || tc->send || tc->out_len || tc->fatal || tc->closing)
		return;
	if (tc->ktls == KTLS_ON &&
	    !tc->ktls_notified) { /* after the last data: the kernel's record of it is out */
		tc->ktls_notified = true;
		keel__ktls_close_notify(tc->fd, tc->emu);
	}
	tc->refs++;
	keel_promise_done(keel_shutdown(tc->loop, tc->fd, SHUT_WR), shut_done, tc);
}

static keel_promise *tls_shutdown(keel_transport *t)
{
	struct tconn *tc = t->impl;
	if (tc->fatal)
		return failed(t->loop, tc->fatal);
	if (tc->shut_p)
		return failed(t->loop, -EBUSY);
	if (tc->hs_done && tc->ktls != KTLS_ON) { /* (kTLS: shut_now sends it) */
		ERR_clear_error();
		SSL_shutdown(tc->ssl); /* close_notify, then the TCP end */
		ERR_clear_error();
	}
	tc->shut_p = keel_promise_new(t->loop);
	keel_promise *p = tc->shut_p;
	flush_out(tc);
	shut_now(tc);
	return p;
}

static void conn_free(struct tconn *tc)
{
	keel_tls_endpoint *ep = tc->ep;
	while (tc->rq_head) {
		keel_buf *b = tc->rq_head;
		tc->rq_head = b->next;
		keel_buf_release(b);
	}
	obuf_put(ep, tc->out, tc->out_cap);
	obuf_put(ep, tc->fly, tc->fly_cap);
	obuf_put(ep, tc->fbuf, OBUF_CAP);
	keel__ktls_emu_free(tc->emu);
	OPENSSL_cleanse(tc->secret, sizeof(tc->secret));
	SSL_free(tc->ssl);
	free(tc->host);
	free(tc);
	ep->st.conns--;
	ep_maybe_free(ep);
}

static void fd_closed(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct tconn *tc = ud;
	keel_promise *p = tc->close_p;
	tc->close_p = NULL;
	keel_promise_settle(p, o);
	conn_free(tc);
}

static void finish_close(struct tconn *tc)
{
	if (!tc->closing || tc->refs || tc->fd < 0)
		return;
	int fd = tc->fd;
	tc->fd = -1;
	keel_promise_done(keel_close(tc->loop, fd), fd_closed, tc);
}

static keel_promise *tls_close(keel_transport *t)
{
	struct tconn *tc = t->impl;
	t->impl = NULL;
	t->fd = -1;
	/* A clean end says so (close_notify), if the socket takes it at once: never wait for a peer. */
	if (tc->ktls == KTLS_ON && !tc->fatal && !tc->send && !tc->ktls_notified) {
		tc->ktls_notified = true;
		keel__ktls_close_notify(tc->fd, tc->emu);
	} else if (tc->hs_done && !tc->fatal && !tc->send && !tc->out_len && tc->ktls != KTLS_ON &&
	           !(SSL_get_shutdown(tc->ssl) & SSL_SENT_SHUTDOWN)) {
		ERR_clear_error();
		SSL_shutdown(tc->ssl);
		ERR_clear_error();
		if (tc->out_len)
			(void)!send(tc->fd, tc->out, tc->out_len, MSG_DONTWAIT | MSG_NOSIGNAL);
		tc->out_len = 0;
	}
	conn_fail(tc, -ECANCELED);
	tc->closing = true;
	tc->close_p = keel_promise_new(tc->loop);
	keel_promise *p = tc->close_p;
	if (tc->raw)
		keel_promise_cancel(tc->raw);
	/*
	 * What is in flight is cancelled, an alert included: a peer that
	 * stopped reading would hold the close for ever (zero-window probes).
	 */
	if (tc->send)
		keel_promise_cancel(tc->send);
	if (tc->fread)
		keel_promise_cancel(tc->fread);
	finish_close(tc);
	return p;
}

static void rx_cancel(keel_promise *p, void *ud)
{
	struct tconn *tc = ud;
	if (tc->rx == p)
		rx_end(tc, -ECANCELED); /* no more calls to the consumer's fn */
}

static keel_promise *tls_recv(keel_transport *t, keel_recv_fn fn, void *ud, bool paced)
{
	struct tconn *tc = t->impl;
	if (tc->fatal)
		return failed(t->loop, tc->fatal);
	if (tc->rx)
		return failed(t->loop, -EBUSY);
	tc->fn = fn;
	tc->ud = ud;
	tc->want_paced = paced;
	tc->rx = keel_promise_new(t->loop);
	keel_promise *p = tc->rx;
	keel_promise_on_cancel(p, rx_cancel, tc);
	if (tc->raw && tc->raw_paced != paced)
		keel_promise_cancel(tc->raw); /* restarted in the pace asked for (raw_ended) */
	pump(tc);
	return p;
}

static bool tls_pending(keel_transport *t)
{
	struct tconn *tc = t->impl;
	if (SSL_has_pending(tc->ssl) || tc->rq_head)
		return true;
	char b;
	return recv(tc->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
}

/*
 * tls_pending's look, and the end of the input: ciphertext the raw stream
 * saw end, a close_notify already read, or the socket's EOF still in the
 * kernel. A record waiting (even one that is not data, a session ticket)
 * counts as bytes: the caller only learns the connection is not quiet.
 */
static int tls_peek(keel_transport *t)
{
	struct tconn *tc = t->impl;
	if (tc->fatal)
		return tc->fatal;
	if (SSL_has_pending(tc->ssl) || tc->rq_head)
		return 1;
	if (tc->raw_eof || (SSL_get_shutdown(tc->ssl) & SSL_RECEIVED_SHUTDOWN))
		return -EPIPE;
	char b;
	ssize_t n = recv(tc->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
	if (n > 0)
		return 1;
	if (n == 0)
		return -EPIPE;
	return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
}

static int tls_peer(keel_transport *t, struct sockaddr_storage *ss)
{
	socklen_t sl = sizeof(*ss);
	return getpeername(t->fd, (struct sockaddr *)ss, &sl) == 0 ? 0 : -errno;
}

static const keel_transport_ops tls_ops = {
    .recv = tls_recv,
    .sendv = tls_sendv,
    .sendfile = tls_sendfile,
    .shutdown = tls_shutdown,
    .close = tls_close,
    .pending = tls_pending,
    .peek = tls_peek,
    .peer = tls_peer,
    .secure = true,
};

static struct tconn *conn_new(keel_tls_endpoint *ep, keel_loop *loop, int fd, SSL_CTX *sc)
{
	struct tconn *tc = keel__calloc(1, sizeof(*tc));
	if (!tc)
		return NULL;
	BIO *bio = BIO_new(bio_method);
	tc->ssl = bio ? SSL_new(sc) : NULL;
	if (!tc->ssl) {
		BIO_free(bio);
		free(tc);
		ERR_clear_error();
		return NULL;
	}
	BIO_set_data(bio, tc);
	SSL_set_bio(tc->ssl, bio, bio); /* one BIO both ways: SSL_free frees it once */
	SSL_set_ex_data(tc->ssl, conn_index, tc);
	tc->ep = ep;
	tc->loop = loop;
	tc->fd = fd;
	keel_timer_init(&tc->hs_timer, hs_timeout);
	ep->st.conns++;
	return tc;
}

/* The transport set up; whether fd is TCP (a Unix socket's connection has no TCP_NODELAY, and no kTLS). */
static bool transport_set(keel_transport *t, keel_loop *loop, int fd, struct tconn *tc)
{
	t->ops = &tls_ops;
	t->loop = loop;
	t->impl = tc;
	t->fd = fd;
	int one = 1;
	return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == 0;
}

int keel_tls_server_init(keel_transport *t, keel_loop *loop, int fd, void *ud)
{
	keel_tls_endpoint *ep = ud;
	keel_tls_ctx *ctx = ep->ctx;
	if (ep->st.handshaking >= ctx->handshakes_max) {
		ep->st.handshake_refused++;
		return KEEL_ELIMIT;
	}
	struct tconn *tc = conn_new(ep, loop, fd, ctx->site[0]);
	if (!tc)
		return -ENOMEM;
	tc->server = true;
	bool tcp = transport_set(t, loop, fd, tc);
	if (ctx->ktls && tcp) {
		tc->ktls = KTLS_WAIT;
		SSL_set_msg_callback(tc->ssl, ktls_msg);
	}
	SSL_set_accept_state(tc->ssl);
	tc->hs_counted = true;
	ep->st.handshaking++;
	keel_timer_arm(loop, &tc->hs_timer, ctx->handshake_timeout_ms);
	raw_start(tc); /* the handshake reads whether or not anyone asked for data yet */
	return 0;
}

static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
	struct tconn *tc = SSL_get_ex_data(ssl, conn_index);
	if (!tc || !tc->host || strlen(tc->host) >= sizeof(tc->ep->sess[0].host))
		return 0;
	keel_tls_endpoint *ep = tc->ep;
	struct sess_slot *slot = NULL;
	for (int i = 0; i < SESS_CACHE && !slot; i++)
		if (ep->sess[i].sess && strcmp(ep->sess[i].host, tc->host) == 0)
			slot = &ep->sess[i];
	if (!slot)
		slot = &ep->sess[ep->sess_next++ % SESS_CACHE];
	SSL_SESSION_free(slot->sess);
	snprintf(slot->host, sizeof(slot->host), "%s", tc->host);
	slot->sess = sess;
	return 1; /* we keep the reference */
}

int keel_tls_client_init(keel_transport *t, keel_loop *loop, int fd, keel_tls_endpoint *ep, const char *host)
{
	keel_tls_ctx *ctx = ep->ctx;
	if (!ctx->client)
		return -EINVAL;
	struct tconn *tc = conn_new(ep, loop, fd, ctx->site[0]);
	if (!tc)
		return -ENOMEM;
	if (host && !(tc->host = strdup(host))) {
		tc->closing = true;
		conn_free(tc);
		return -ENOMEM;
	}
	SSL_set_connect_state(tc->ssl);
	if (host) {
		unsigned char ip[16];
		bool is_ip = inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1;
		if (!is_ip && !SSL_set_tlsext_host_name(tc->ssl, host))
			ERR_clear_error(); /* (a name over 255 bytes: no SNI; the check below still applies) */
		bool checked = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(tc->ssl), host) == 1
		                     : SSL_set1_host(tc->ssl, host) == 1;
		if (!checked) {
			ERR_clear_error();
			tc->closing = true;
			conn_free(tc); /* never a connection that would accept any name */
			return -EINVAL;
		}
		for (int i = 0; i < SESS_CACHE; i++) {
			struct sess_slot *sl = &ep->sess[i];
			if (!sl->sess || strcmp(sl->host, host) != 0)
				continue;
			if (SSL_SESSION_is_resumable(sl->sess))
				SSL_set_session(tc->ssl, sl->sess);
			if (SSL_SESSION_get_protocol_version(sl->sess) == TLS1_3_VERSION ||
			    !SSL_SESSION_is_resumable(sl->sess)) {
				/* One use each (the connection holds its own reference). */
				SSL_SESSION_free(sl->sess);
				sl->sess = NULL;
			}
		}
	}
	keel_timer_arm(loop, &tc->hs_timer, ctx->handshake_timeout_ms);
	(void)transport_set(t, loop, fd, tc);
	pump(tc); /* the ClientHello goes now */
	return 0;
}

int keel_tls_client_transport(keel_transport *t, keel_loop *loop, int fd, void *ud, const char *host)
{
	keel_tls_endpoint *ep = ud;
	return keel_tls_client_init(t, loop, fd, ep, ep->ctx->name ? ep->ctx->name : host);
}

bool keel_tls_is(const keel_transport *t)
{
	return t->ops == &tls_ops;
}

const char *keel_tls_alpn(const keel_transport *t)
{
	const struct tconn *tc = keel_tls_is(t) ? t->impl : NULL;
	return tc ? tc->alpn : "";
}
