/*
 * Kernel TLS for a server connection's send side (ktls.h): the probe, the
 * keys and sequence number the kernel needs, handing them over, and sends
 * through the kernel's record layer -- or, in test builds, its emulation.
 *
 * Nothing here encrypts for real use: the kernel does, and the emulation
 * (KEEL_FAULT builds only) seals records with OpenSSL's AEADs purely so a
 * test can check that what would be handed to the kernel is right.
 */
#include "net/ktls.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>

#include "core/alloc.h"
#include "keel/errors.h"
#include "keel/file.h"
#include "keel/promise.h"
#include "keel/tcp.h"

#ifndef TCP_ULP
#define TCP_ULP 31
#endif

#define REC_MAX 16384 /* plaintext per record */
#define REC_TYPE_ALERT 21
#define REC_TYPE_DATA 23

#ifdef KEEL_FAULT
static bool emulate(void)
{
	const char *e = getenv("KEEL_KTLS_EMULATE");
	return e && strcmp(e, "1") == 0;
}
#else
static bool emulate(void)
{
	return false;
}
#endif

bool keel__ktls_probe(const char **note)
{
	if (emulate()) {
		*note = "kernel TLS emulated in user space (KEEL_KTLS_EMULATE=1, a test build): responses "
		        "are sealed from the keys the kernel would be given";
		return true;
	}
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		*note = "kernel TLS not probed (no socket): records are encrypted in user space";
		return false;
	}
	/* Unconnected, a kernel with the module says ENOTCONN (loading it first); one without, ENOENT. */
	int r = setsockopt(fd, IPPROTO_TCP, TCP_ULP, "tls", sizeof("tls"));
	int e = r < 0 ? errno : 0;
	close(fd);
	if (e == ENOENT) {
		*note = "kernel TLS unavailable (setsockopt TCP_ULP \"tls\": no such ULP, a kernel without "
		        "CONFIG_TLS): records are encrypted in user space";
		return false;
	}
	*note = "kernel TLS available: once a handshake is done the kernel encrypts what the server "
	        "sends (file bodies go from the page cache to the socket)";
	return true;
}

/* ---- Keys ------------------------------------------------------------------ */

/* HKDF-Expand-Label(secret, label, "", n) (RFC 8446 7.1), with OpenSSL's HKDF. */
static int expand_label(const char *md, const unsigned char *secret, size_t secret_len, const char *label,
                        unsigned char *out, size_t n)
{
	unsigned char info[2 + 1 + 255 + 1];
	size_t ll = 6 + strlen(label);
	if (ll > 255)
		return KEEL_ETLS;
	info[0] = (unsigned char)(n >> 8);
	info[1] = (unsigned char)n;
	info[2] = (unsigned char)ll;
	memcpy(info + 3, "tls13 ", 6);
	memcpy(info + 9, label, ll - 6);
	info[3 + ll] = 0; /* the context: empty */
	int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
	OSSL_PARAM params[] = {
	    OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
	    OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)md, 0),
	    OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)secret, secret_len),
	    OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, 4 + ll),
	    OSSL_PARAM_construct_end(),
	};
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	EVP_KDF_CTX *k = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
	int ok = k && EVP_KDF_derive(k, out, n, params) == 1;
	EVP_KDF_CTX_free(k);
	EVP_KDF_free(kdf);
	return ok ? 0 : KEEL_ETLS;
}

/* TLS 1.2's key block (RFC 5246 6.3): PRF(master, "key expansion", server_random + client_random). */
static int key_block(SSL *ssl, const char *md, unsigned char *out, size_t n)
{
	unsigned char master[64], seed[13 + 2 * SSL3_RANDOM_SIZE];
	size_t ml = SSL_SESSION_get_master_key(SSL_get_session(ssl), master, sizeof(master));
	memcpy(seed, "key expansion", 13);
	if (!ml || SSL_get_server_random(ssl, seed + 13, SSL3_RANDOM_SIZE) != SSL3_RANDOM_SIZE ||
	    SSL_get_client_random(ssl, seed + 13 + SSL3_RANDOM_SIZE, SSL3_RANDOM_SIZE) != SSL3_RANDOM_SIZE) {
		OPENSSL_cleanse(master, sizeof(master));
		return KEEL_ETLS;
	}
	OSSL_PARAM params[] = {
	    OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)md, 0),
	    OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET, master, ml),
	    OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, seed, sizeof(seed)),
	    OSSL_PARAM_construct_end(),
	};
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "TLS1-PRF", NULL);
	EVP_KDF_CTX *k = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
	int ok = k && EVP_KDF_derive(k, out, n, params) == 1;
	EVP_KDF_CTX_free(k);
	EVP_KDF_free(kdf);
	OPENSSL_cleanse(master, sizeof(master));
	return ok ? 0 : KEEL_ETLS;
}

static void put_be64(unsigned char *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--) {
		p[i] = (unsigned char)v;
		v >>= 8;
	}
}

int keel__ktls_info(SSL *ssl, const unsigned char *secret, size_t secret_len, uint64_t seq,
                    struct ktls_info *out)
{
	memset(out, 0, sizeof(*out));
	const SSL_CIPHER *c = SSL_get_current_cipher(ssl);
	int version = SSL_version(ssl);
	if (!c || (version != TLS1_2_VERSION && version != TLS1_3_VERSION))
		return -EOPNOTSUPP;
	int nid = SSL_CIPHER_get_cipher_nid(c);
	size_t klen = nid == NID_aes_128_gcm                                   ? 16
	              : nid == NID_aes_256_gcm || nid == NID_chacha20_poly1305 ? 32
	                                                                       : 0;
	if (!klen)
		return -EOPNOTSUPP;
	const EVP_MD *md = SSL_CIPHER_get_handshake_digest(c);
	const char *mdname = md ? EVP_MD_get0_name(md) : NULL;
	if (!mdname)
		return KEEL_ETLS;
	/* key, then the 12-byte IV (TLS 1.3, ChaCha) or the 4-byte salt (TLS 1.2 GCM) */
	unsigned char key[32], iv[12];
	size_t ivlen = version == TLS1_2_VERSION && nid != NID_chacha20_poly1305 ? 4 : 12;
	int rc;
	if (version == TLS1_3_VERSION) {
		if (!secret || !secret_len)
			return KEEL_ETLS;
		rc = expand_label(mdname, secret, secret_len, "key", key, klen);
		if (!rc)
			rc = expand_label(mdname, secret, secret_len, "iv", iv, 12);
	} else {
		unsigned char kb[2 * 32 + 2 * 12];
		rc = key_block(ssl, mdname, kb, 2 * klen + 2 * ivlen);
		if (!rc) { /* client key, server key, client IV, server IV (no MAC keys: AEAD) */
			memcpy(key, kb + klen, klen);
			memcpy(iv, kb + 2 * klen + ivlen, ivlen);
		}
		OPENSSL_cleanse(kb, sizeof(kb));
	}
	if (rc) {
		OPENSSL_cleanse(key, sizeof(key));
		return rc;
	}
	unsigned short kv = version == TLS1_3_VERSION ? TLS_1_3_VERSION : TLS_1_2_VERSION;
	if (nid == NID_chacha20_poly1305) {
		struct tls12_crypto_info_chacha20_poly1305 *x = &out->u.chacha;
		x->info.version = kv;
		x->info.cipher_type = TLS_CIPHER_CHACHA20_POLY1305;
		memcpy(x->iv, iv, 12);
		memcpy(x->key, key, 32);
		put_be64(x->rec_seq, seq);
		out->len = sizeof(*x);
	} else {
		/* GCM: TLS 1.3's IV is salt and iv; TLS 1.2's iv is the first explicit nonce (the sequence number). */
		unsigned char *kiv, *kkey, *salt, *rs;
		if (klen == 16) {
			struct tls12_crypto_info_aes_gcm_128 *x = &out->u.gcm128;
			x->info.cipher_type = TLS_CIPHER_AES_GCM_128;
			kiv = x->iv, kkey = x->key, salt = x->salt, rs = x->rec_seq;
			out->len = sizeof(*x);
		} else {
			struct tls12_crypto_info_aes_gcm_256 *x = &out->u.gcm256;
			x->info.cipher_type = TLS_CIPHER_AES_GCM_256;
			kiv = x->iv, kkey = x->key, salt = x->salt, rs = x->rec_seq;
			out->len = sizeof(*x);
		}
		out->u.info.version = kv;
		memcpy(kkey, key, klen);
		memcpy(salt, iv, 4);
		if (version == TLS1_3_VERSION)
			memcpy(kiv, iv + 4, 8);
		else
			put_be64(kiv, seq);
		put_be64(rs, seq);
	}
	OPENSSL_cleanse(key, sizeof(key));
	OPENSSL_cleanse(iv, sizeof(iv));
	return 0;
}

/* ---- The emulated kernel (test builds) -------------------------------------- */

#ifdef KEEL_FAULT
struct ktls_emu {
	bool tls13;
	const EVP_CIPHER *cipher;
	unsigned char key[32];
	unsigned char iv[12]; /* TLS 1.3 and ChaCha: the IV; TLS 1.2 GCM: salt, then the explicit nonce */
	bool explicit_nonce;  /* TLS 1.2 GCM */
	uint64_t seq;
	EVP_CIPHER_CTX *c;
};

static struct ktls_emu *emu_new(const struct ktls_info *ki)
{
	struct ktls_emu *e = calloc(1, sizeof(*e));
	if (!e || !(e->c = EVP_CIPHER_CTX_new())) {
		free(e);
		return NULL;
	}
	e->tls13 = ki->u.info.version == TLS_1_3_VERSION;
	const unsigned char *rs;
	switch (ki->u.info.cipher_type) {
	case TLS_CIPHER_CHACHA20_POLY1305:
		e->cipher = EVP_chacha20_poly1305();
		memcpy(e->key, ki->u.chacha.key, 32);
		memcpy(e->iv, ki->u.chacha.iv, 12);
		rs = ki->u.chacha.rec_seq;
		break;
	case TLS_CIPHER_AES_GCM_128:
		e->cipher = EVP_aes_128_gcm();
		memcpy(e->key, ki->u.gcm128.key, 16);
		memcpy(e->iv, ki->u.gcm128.salt, 4);
		memcpy(e->iv + 4, ki->u.gcm128.iv, 8);
		rs = ki->u.gcm128.rec_seq;
		break;
	default:
		e->cipher = EVP_aes_256_gcm();
		memcpy(e->key, ki->u.gcm256.key, 32);
		memcpy(e->iv, ki->u.gcm256.salt, 4);
		memcpy(e->iv + 4, ki->u.gcm256.iv, 8);
		rs = ki->u.gcm256.rec_seq;
		break;
	}
	e->explicit_nonce = !e->tls13 && ki->u.info.cipher_type != TLS_CIPHER_CHACHA20_POLY1305;
	for (int i = 0; i < 8; i++)
		e->seq = e->seq << 8 | rs[i];
	return e;
}

/* One record of type holding n plaintext bytes, as the kernel frames it, at out; its length. */
static size_t emu_seal(struct ktls_emu *e, int type, const unsigned char *pt, size_t n, unsigned char *out)
{
	unsigned char nonce[12], aad[13], seqb[8];
	put_be64(seqb, e->seq);
	size_t head = 5 + (e->explicit_nonce ? 8 : 0);
	size_t inner = n + (e->tls13 ? 1 : 0);
	size_t len = head - 5 + inner + 16;
	out[0] = e->tls13 ? REC_TYPE_DATA : (unsigned char)type;
	out[1] = 3;
	out[2] = 3;
	out[3] = (unsigned char)(len >> 8);
	out[4] = (unsigned char)len;
	memcpy(nonce, e->iv, 12);
	size_t aadlen;
	if (e->explicit_nonce) {
		memcpy(out + 5, e->iv + 4, 8); /* the explicit nonce goes on the wire, then counts up */
		for (int i = 11; i >= 4 && ++e->iv[i] == 0; i--)
			;
	} else {
		for (int i = 0; i < 8; i++)
			nonce[4 + i] ^= seqb[i];
	}
	if (e->tls13) {
		memcpy(aad, out, 5);
		aadlen = 5;
	} else {
		memcpy(aad, seqb, 8);
		aad[8] = (unsigned char)type;
		aad[9] = 3;
		aad[10] = 3;
		aad[11] = (unsigned char)(n >> 8);
		aad[12] = (unsigned char)n;
		aadlen = 13;
	}
	int ol = 0;
	unsigned char *ct = out + head;
	EVP_EncryptInit_ex(e->c, e->cipher, NULL, NULL, NULL);
	EVP_CIPHER_CTX_ctrl(e->c, EVP_CTRL_AEAD_SET_IVLEN, 12, NULL);
	EVP_EncryptInit_ex(e->c, NULL, NULL, e->key, nonce);
	EVP_EncryptUpdate(e->c, NULL, &ol, aad, (int)aadlen);
	EVP_EncryptUpdate(e->c, ct, &ol, pt, (int)n);
	if (e->tls13) {
		unsigned char t = (unsigned char)type;
		EVP_EncryptUpdate(e->c, ct + n, &ol, &t, 1);
	}
	EVP_EncryptFinal_ex(e->c, ct + inner, &ol);
	EVP_CIPHER_CTX_ctrl(e->c, EVP_CTRL_AEAD_GET_TAG, 16, ct + inner);
	e->seq++;
	return head + inner + 16;
}

struct emu_send {
	unsigned char *buf;
	size_t plain;
};

static keel_outcome emu_sent(keel_ctx *ctx, keel_outcome o, void *ud)
{
	(void)ctx;
	struct emu_send *s = ud;
	if (!o.err)
		o.n = (int64_t)s->plain;
	free(s->buf);
	free(s);
	return o;
}

/* Seal the n bytes of iov as the kernel would (records of up to 16 KiB) and send them. */
static keel_promise *emu_send(keel_loop *loop, int fd, struct ktls_emu *e, const struct iovec *iov, int n)
{
	size_t total = 0;
	for (int i = 0; i < n; i++)
		total += iov[i].iov_len;
	struct emu_send *s = malloc(sizeof(*s));
	unsigned char *stage = malloc(REC_MAX);
	unsigned char *buf = malloc(total + (total / REC_MAX + 1) * 64);
	if (!s || !stage || !buf) {
		free(s);
		free(stage);
		free(buf);
		keel_promise *p = keel_promise_new(loop);
		keel_promise_reject(p, -ENOMEM);
		return p;
	}
	size_t w = 0, sl = 0;
	for (int i = 0; i < n; i++) {
		const unsigned char *p = iov[i].iov_base;
		size_t left = iov[i].iov_len;
		while (left) {
			size_t k = left < REC_MAX - sl ? left : REC_MAX - sl;
			memcpy(stage + sl, p, k);
			sl += k, p += k, left -= k;
			if (sl == REC_MAX) {
				w += emu_seal(e, REC_TYPE_DATA, stage, sl, buf + w);
				sl = 0;
			}
		}
	}
	if (sl)
		w += emu_seal(e, REC_TYPE_DATA, stage, sl, buf + w);
	free(stage);
	s->buf = buf;
	s->plain = total;
	return keel_then(keel_send(loop, fd, buf, w), emu_sent, s);
}
#endif

int keel__ktls_install(int fd, const struct ktls_info *ki, struct ktls_emu **emu)
{
	*emu = NULL;
#ifdef KEEL_FAULT
	if (emulate()) {
		*emu = emu_new(ki);
		return *emu ? 0 : -ENOMEM;
	}
#endif
	if (setsockopt(fd, IPPROTO_TCP, TCP_ULP, "tls", sizeof("tls")) < 0)
		return -errno;
	if (setsockopt(fd, SOL_TLS, TLS_TX, &ki->u, ki->len) < 0)
		return -errno; /* (the ULP without TX keys sends as plain TCP does) */
	return 0;
}

void keel__ktls_close_notify(int fd, struct ktls_emu *emu)
{
	unsigned char alert[2] = {1, 0}; /* warning, close_notify */
#ifdef KEEL_FAULT
	if (emu) {
		unsigned char rec[64];
		size_t n = emu_seal(emu, REC_TYPE_ALERT, alert, sizeof(alert), rec);
		(void)!send(fd, rec, n, MSG_DONTWAIT | MSG_NOSIGNAL);
		return;
	}
#else
	(void)emu;
#endif
	char cbuf[CMSG_SPACE(sizeof(unsigned char))] = {0};
	struct iovec v = {alert, sizeof(alert)};
	struct msghdr m = {
	    .msg_iov = &v, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
	struct cmsghdr *c = CMSG_FIRSTHDR(&m);
	c->cmsg_level = SOL_TLS;
	c->cmsg_type = TLS_SET_RECORD_TYPE;
	c->cmsg_len = CMSG_LEN(sizeof(unsigned char));
	*CMSG_DATA(c) = REC_TYPE_ALERT;
	(void)!sendmsg(fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
}

keel_promise *keel__ktls_sendv(keel_loop *loop, int fd, struct ktls_emu *emu, const struct iovec *iov, int n)
{
#ifdef KEEL_FAULT
	if (emu)
		return emu_send(loop, fd, emu, iov, n);
#else
	(void)emu;
#endif
	return keel_sendv(loop, fd, iov, n);
}

keel_promise *keel__ktls_sendfile(keel_loop *loop, int fd, struct ktls_emu *emu, int in_fd, uint64_t off,
                                  size_t len)
{
#ifdef KEEL_FAULT
	if (emu) {
		/* A test build's stand-in for the page cache's path: read it all (blocking), seal, send. */
		char *b = malloc(len ? len : 1);
		size_t got = 0;
		while (b && got < len) {
			ssize_t r = pread(in_fd, b + got, len - got, (off_t)(off + got));
			if (r <= 0)
				break;
			got += (size_t)r;
		}
		struct iovec v = {b, got};
		keel_promise *p = b ? emu_send(loop, fd, emu, &v, 1) : NULL;
		free(b);
		if (p)
			return p;
		p = keel_promise_new(loop);
		keel_promise_reject(p, -ENOMEM);
		return p;
	}
#else
	(void)emu;
#endif
	return keel_sendfile(loop, fd, in_fd, off, len);
}

void keel__ktls_emu_free(struct ktls_emu *emu)
{
#ifdef KEEL_FAULT
	if (emu) {
		EVP_CIPHER_CTX_free(emu->c);
		OPENSSL_cleanse(emu, sizeof(*emu));
		free(emu);
	}
#else
	(void)emu;
#endif
}
