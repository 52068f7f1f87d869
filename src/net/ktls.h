/*
 * Kernel TLS for the send side of a server connection (src/net/ktls.c):
 * once a handshake is done and everything OpenSSL wrote has been sent, the
 * connection's write keys and record sequence number go to the kernel
 * (setsockopt TCP_ULP "tls", then SOL_TLS TLS_TX), and from then on the
 * kernel encrypts: responses are sent as plaintext, file bodies go from
 * the page cache to the socket (sendfile, splice) without passing through
 * user space. Receiving stays with OpenSSL.
 *
 * OpenSSL cannot do this itself here: it only offloads keys to a socket
 * BIO, and keel's BIO is memory. So the keys are derived the way OpenSSL's
 * own kTLS code does (RFC 8446 7.3 for TLS 1.3 from the server's
 * application traffic secret, RFC 5246 6.3 for TLS 1.2 from the master
 * secret), with OpenSSL's KDFs, and the sequence number counted from the
 * records OpenSSL wrote after its Finished.
 *
 * Emulation (test builds, -DKEEL_FAULT, with KEEL_KTLS_EMULATE=1): no
 * kernel here has CONFIG_TLS, so the kernel's record layer is played in
 * user space from exactly what would be handed to it -- the same key, IV,
 * salt and sequence number, the kernel's record framing -- and a real
 * client must decrypt the result (`make faults` runs test/test_tls.py and
 * test/test_tls_proxy.py so).
 */
#ifndef KEEL_NET_KTLS_H
#define KEEL_NET_KTLS_H

#include <linux/tls.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "keel/loop.h"
#include "keel/promise.h"

/* What TLS_TX takes: one of the kernel's crypto_info structs. */
struct ktls_info {
	union {
		struct tls_crypto_info info;
		struct tls12_crypto_info_aes_gcm_128 gcm128;
		struct tls12_crypto_info_aes_gcm_256 gcm256;
		struct tls12_crypto_info_chacha20_poly1305 chacha;
	} u;
	socklen_t len;
};

struct ktls_emu; /* the emulated kernel state of one connection (test builds) */

/*
 * Once per process: whether connections may try kTLS, and the log line
 * that says what was found (*note).
 */
bool keel__ktls_probe(const char **note);

/*
 * The kernel's TX state for ssl's connection (a server's, its handshake
 * done): TLS 1.2 or 1.3 with AES-128-GCM, AES-256-GCM or
 * ChaCha20-Poly1305, seq records already sent under the current keys.
 * secret is TLS 1.3's server application traffic secret (unused for 1.2).
 * 0, or -EOPNOTSUPP (a version or cipher the kernel does not take),
 * KEEL_ETLS (a KDF failed). The caller cleanses *out after use.
 */
int keel__ktls_info(SSL *ssl, const unsigned char *secret, size_t secret_len, uint64_t seq,
                    struct ktls_info *out);

/*
 * Give fd's send side to the kernel. 0, or a negative errno (the socket is
 * then unchanged for plain sends). In emulation *emu is set instead.
 */
int keel__ktls_install(int fd, const struct ktls_info *ki, struct ktls_emu **emu);

/* The close_notify alert, sent at once if the socket takes it (never waits). */
void keel__ktls_close_notify(int fd, struct ktls_emu *emu);

/* Sends through the kernel's record layer: keel_sendv and keel_sendfile, or their emulation. */
keel_promise *keel__ktls_sendv(keel_loop *loop, int fd, struct ktls_emu *emu, const struct iovec *iov, int n);
keel_promise *keel__ktls_sendfile(keel_loop *loop, int fd, struct ktls_emu *emu, int in_fd, uint64_t off,
                                  size_t len);

void keel__ktls_emu_free(struct ktls_emu *emu);

#endif
