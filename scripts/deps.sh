#!/bin/sh
# Install the Debian packages keel builds and tests with, when missing.
# As root it runs apt-get; otherwise it prints the exact command and fails.
set -e
need=""
[ -f /usr/include/liburing.h ] || need="$need liburing-dev"
[ -f /usr/include/ini.h ] || need="$need libinih-dev"
[ -f /usr/include/cjson/cJSON.h ] || need="$need libcjson-dev"
# TLS: OpenSSL 3 (libssl-dev), and the openssl command the tests make certificates with.
[ -f /usr/include/openssl/ssl.h ] || need="$need libssl-dev"
command -v openssl >/dev/null 2>&1 || need="$need openssl"
# HTTP/2: nghttp2's framing, HPACK and flow control.
[ -f /usr/include/nghttp2/nghttp2.h ] || need="$need libnghttp2-dev"
# The keel command: systemd socket activation and readiness (sd_listen_fds, sd_notify).
[ -f /usr/include/systemd/sd-daemon.h ] || need="$need libsystemd-dev"
[ -f /etc/ssl/certs/ca-certificates.crt ] || need="$need ca-certificates"
command -v curl >/dev/null 2>&1 || need="$need curl"
command -v python3 >/dev/null 2>&1 || need="$need python3"
# test_date builds a German locale with localedef to show HTTP dates ignore the locale.
[ -f /usr/share/i18n/locales/de_DE ] || need="$need locales"
# make tsan: gcc's ThreadSanitizer runtime.
if [ "${TSAN:-0}" = 1 ] && ! dpkg -s libtsan2 >/dev/null 2>&1; then
	need="$need libtsan2"
fi
[ -n "$need" ] || exit 0
if [ "$(id -u)" = 0 ]; then
	echo "keel: installing$need" >&2
	apt-get update -qq >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
else
	echo "keel: missing Debian packages:$need" >&2
	echo "keel: run: sudo apt-get install -y$need" >&2
	exit 1
fi
