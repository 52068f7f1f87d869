#!/usr/bin/env bash
# HTTPS benchmark: `build/keel serve` against nginx and h2o over TLS 1.3, all
# with the same certificates and the same cipher, driven by wrk (which links
# OpenSSL) and h2load (nghttp2-client). Run from the repo root (as root to
# install nginx, h2o and h2load from Debian):
#
#     bench/tls/run.sh               # ~4 minutes
#     QUICK=1 bench/tls/run.sh       # ~2 minutes
#
# Four parts (PARTS, default "keepalive conns storm large"):
#
#   keepalive  wrk -t1 over HTTPS keep-alive connections, GET /plaintext (a
#              13-byte static file, "Hello, World!", served from disk by all
#              three), at each shape of SHAPES (default "c16 c256").
#   conns      New TLS connections: every request on a new connection
#              (wrk -c HS_CONNS, default 64, with `Connection: close`), for
#              each certificate of HS_CERTS (default "ecdsa rsa") and each
#              mode of HS_MODES (default "full resumed"):
#                full     the servers run without session resumption (keel
#                         --tls-no-tickets; nginx ssl_session_tickets off and
#                         ssl_session_cache off; h2o ssl-session-resumption
#                         mode off), so every handshake is a full one.
#                resumed  the servers run with their default resumption
#                         (tickets), and wrk resumes: it keeps one SSL object
#                         per connection slot and reconnects with SSL_clear,
#                         which keeps the session, so every connection after
#                         a slot's first offers the ticket it last received.
#              Before each point a probe (openssl s_client twice, the second
#              offering the first's session) must show the mode: "New" for
#              full, "Reused" for resumed; keel's /_keel/status counters give
#              the exact share of resumed handshakes in each of its points.
#              Why wrk for both: h2load also resumes on reconnect and its
#              timed mode (-D) never ends once the server closes connections
#              (nghttp2 1.52); `openssl s_time -new/-reuse` does the right
#              kind of handshake but one connection at a time (about 100-200
#              connections/s here: it measures round trips, not servers);
#              and no Debian client discards tickets on demand, so "full"
#              is made on the server side. A full handshake here therefore
#              issues no ticket; with tickets on it would also encrypt and
#              send two NewSessionTicket messages (a few microseconds).
#   storm      Handshake storm, for STORM_SERVERS (default "keel nginx"),
#              certificate STORM_CERT (default rsa: a handshake costs the
#              server an RSA-2048 signature and the client a cheap check, so
#              one client core can offer more than one server core can sign),
#              resumption off, each server its own H and S:
#                1. H, the handshake capacity: full handshakes per server
#                   CPU second (wrk -c HS_CONNS, Connection: close).
#                2. S, the keep-alive clients' saturation rate: KA_CONNS
#                   (default 16) connections, closed loop, DURATION s.
#                3. Alone: the same clients at KA_FACTOR x S (default 0.5),
#                   a fixed rate, STORM_DURATION s (default 10; 6 with
#                   QUICK=1).
#                4. Storm: the same again while, from the 2nd second for
#                   STORM_DURATION - 2 s, h2load -r asks for new connections
#                   (one request each, full handshakes) at STORM_FACTOR x H
#                   (default 4), in bursts every 100 ms.
#              Keep-alive goodput (2xx completed per second) and p50/p99 of
#              the keep-alive requests (h2load --log-file) are taken over the
#              storm's window, and over the same window of the run alone.
#              The storm's own figures: the rate asked for, the connections
#              the server accepted per second (keel's TLS counters; nginx's
#              stub_status on a unix socket) also as a multiple of H, those
#              answered, keel's refusals (--tls-handshakes-max), and SYNs
#              dropped at full listen queues (machine-wide TcpExt ListenDrops).
#              The keep-alive clients are `build/keel load -R` (open loop,
#              -p 1, latency timed from when each request was due, as wrk2),
#              S its closed loop; goodput over the window's seconds, p99 the
#              worst of the window's per-second p99s (its --json). Where keel
#              load has no https (or KA_TOOL=h2load): h2load --rps, which is
#              not coordinated-omission free (a connection sends its next
#              request only after the previous answer, timed from the send),
#              with goodput and p99 from its --log-file.
#              Where this is not the faithful version, and why:
#              - Both generators share the one client CPU (the server has the
#                other). So that the storm's generator does not take the
#                keep-alive clients' CPU (which would show as the server's
#                fault), it runs SCHED_IDLE and gets what they leave; h2load
#                -r then keeps its schedule only while it has CPU, so 4x H is
#                what is asked for and reached/s (in multiples of H) is what
#                was offered. A storm of completed handshakes costs the client
#                about a tenth of the server's RSA signature, so on one shared
#                core the offered storm is bounded; a faithful 4x would need a
#                third core or a ClientHello replayer (no such Debian tool).
#   large      A 1 MiB static file over HTTPS keep-alive, wrk -c LARGE_CONNS
#              (default "16"): body MB/s (10^6 bytes) and MB per server CPU
#              second. sendfile is on for nginx, but with TLS in user space
#              (this kernel has no kernel TLS: no "tls" ULP) every server reads
#              the file and encrypts it, nginx and h2o as much as keel.
#
# TLS, the same for every server: TLS 1.3 only, TLS_AES_128_GCM_SHA256, key
# exchange X25519 (TLS_GROUP), certificate ECDSA P-256 (CERT, for keepalive
# and large; "rsa" for RSA-2048). The clients (wrk, h2load, curl, openssl)
# offer nothing else: OPENSSL_CONF points them at build/bench/tls/client.cnf
# (MinProtocol and MaxProtocol TLSv1.3, Ciphersuites, Groups), and the
# servers are started with OPENSSL_CONF unset and TLS 1.3 only (nginx
# ssl_protocols TLSv1.3; h2o minimum-version TLSv1.3; keel --tls-protocols
# TLSv1.3). What each server negotiated is printed after it starts
# (openssl s_client: protocol, cipher, key exchange, signature, resumption).
# Certificates: a throwaway CA (ECDSA P-256) and two leaves for 127.0.0.1 and
# localhost, an ECDSA P-256 and an RSA-2048 one, written with the openssl CLI
# into build/bench/tls/ (made again when missing or expiring within a day);
# each server gets the leaf followed by the CA as its chain (the CA stands in
# for an intermediate, so a handshake carries a two-certificate chain). curl
# checks every server with that CA (CURL_CA_BUNDLE).
#
# Method: the house one (bench/lib.sh). Each server runs one worker pinned to
# CPU 0, started fresh from a config written under build/bench/tls/; the
# clients run pinned to CPU 1, one thread each. Server CPU is utime+stime of
# the server's whole process tree over each point; the headline is requests
# (or connections, or MB) per server CPU second, and keel/nginx, keel/h2o
# ratios come from the same run. Before measuring, curl must get 200 and
# exactly the file. keel runs with --status (its counters; the status page
# is asked for only between points).
#
# Environment: DURATION seconds per point (default 5; 2 with QUICK=1), WARMUP
# seconds of unmeasured load after each start (default 1), SERVERS (default
# "keel nginx h2o"), SHAPES, PARTS, CERT, HS_CERTS, HS_MODES, HS_CONNS,
# STORM_SERVERS, STORM_CERT, STORM_FACTOR, KA_FACTOR, KA_CONNS,
# STORM_DURATION, LARGE_CONNS, KA_TOOL (above), TLS_GROUP (default X25519), PORT first
# port to try (default 7800), NO_INSTALL=1 never to install anything.
#
# Prints tables, writes build/bench/tls-keepalive.tsv, tls-conns.tsv,
# tls-storm.tsv and tls-large.tsv, and draws build/bench/tls.png.
set -euo pipefail

cd "$(dirname "$0")/../.."
. bench/lib.sh
bench_work tls

if ((bench_quick)); then
	duration=${DURATION:-2}
	storm_dur=${STORM_DURATION:-6}
else
	duration=${DURATION:-5}
	storm_dur=${STORM_DURATION:-10}
fi
warmup=${WARMUP:-1}
read -ra servers <<<"${SERVERS:-keel nginx h2o}"
read -ra shapes <<<"${SHAPES:-c16 c256}"
read -ra parts <<<"${PARTS:-keepalive conns storm large}"
read -ra hs_certs <<<"${HS_CERTS:-ecdsa rsa}"
read -ra hs_modes <<<"${HS_MODES:-full resumed}"
read -ra storm_servers <<<"${STORM_SERVERS:-keel nginx}"
read -ra large_conns <<<"${LARGE_CONNS:-16}"
cert=${CERT:-ecdsa}
hs_conns=${HS_CONNS:-64}
storm_cert=${STORM_CERT:-rsa}
storm_factor=${STORM_FACTOR:-4}
ka_factor=${KA_FACTOR:-0.5}
ka_conns=${KA_CONNS:-16}
group=${TLS_GROUP:-X25519}
suite=TLS_AES_128_GCM_SHA256
port=${PORT:-7800}

for v in "$duration" "$storm_dur" "$hs_conns" "$ka_conns" "$port" "${large_conns[@]}"; do
	[[ $v =~ ^[1-9][0-9]*$ ]] || bench_die "DURATION, STORM_DURATION, HS_CONNS, KA_CONNS, LARGE_CONNS and PORT are positive integers"
done
[[ $warmup =~ ^[0-9]+$ ]] || bench_die "WARMUP is whole seconds"
((storm_dur >= 5)) || bench_die "STORM_DURATION is at least 5 s (the storm leaves 1 s each side)"
for v in "$storm_factor" "$ka_factor"; do
	[[ $v =~ ^[0-9]+(\.[0-9]+)?$ ]] || bench_die "STORM_FACTOR and KA_FACTOR are numbers"
done
for c in "$cert" "$storm_cert" "${hs_certs[@]}"; do
	[[ $c == @(ecdsa|rsa) ]] || bench_die "a certificate is ecdsa or rsa, not $c"
done
for m in "${hs_modes[@]}"; do
	[[ $m == @(full|resumed) ]] || bench_die "a mode is full or resumed, not $m"
done
max_conns=$hs_conns
for s in "${shapes[@]}"; do
	[[ $s =~ ^c([1-9][0-9]*)$ ]] || bench_die "bad shape $s (want cN)"
	if ((BASH_REMATCH[1] > max_conns)); then max_conns=${BASH_REMATCH[1]}; fi
done
has_part() { [[ " ${parts[*]} " == *" $1 "* ]]; }

bench_require wrk
bench_require curl
bench_require openssl
# The storm opens thousands of connections at once on each side.
bench_fd_limit 20000 $((max_conns + 64))

# ---- Certificates, files and the clients' TLS settings. ----

certs_fresh() {
	local k
	[[ -s $work/ca.pem ]] || return 1
	for k in ecdsa rsa; do
		[[ -s $work/$k.pem && -s $work/$k.key ]] || return 1
		openssl x509 -checkend 86400 -noout -in "$work/$k.pem" >/dev/null 2>&1 || return 1
	done
}

make_certs() {
	local k log=$work/certs.log
	local -a newkey
	: >"$log"
	printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=critical,CA:FALSE" \
		"keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$work/leaf.ext"
	openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
		-keyout "$work/ca.key" -out "$work/ca.pem" -days 3650 -subj "/CN=keel bench throwaway CA" \
		-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
		>>"$log" 2>&1 || return 1
	for k in ecdsa rsa; do
		if [[ $k == ecdsa ]]; then
			newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256)
		else
			newkey=(-newkey rsa:2048)
		fi
		openssl req -new -nodes "${newkey[@]}" -keyout "$work/$k.key" -out "$work/$k.csr" \
			-subj /CN=localhost >>"$log" 2>&1 || return 1
		openssl x509 -req -in "$work/$k.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
			-CAcreateserial -days 825 -extfile "$work/leaf.ext" -out "$work/$k.crt" >>"$log" 2>&1 ||
			return 1
		cat "$work/$k.crt" "$work/ca.pem" >"$work/$k.pem"
	done
	# h2o reads them as root, but keep the keys private all the same.
	chmod 600 "$work/ca.key" "$work/ecdsa.key" "$work/rsa.key"
}

if ! certs_fresh; then
	make_certs || bench_die "openssl could not make the certificates; log $work/certs.log"
fi
openssl verify -CAfile "$work/ca.pem" "$work/ecdsa.crt" "$work/rsa.crt" >/dev/null ||
	bench_die "the certificates in $work do not verify"

mkdir -p "$work/www"
printf 'Hello, World!' >"$work/www/plaintext"
head -c 1048576 /dev/zero | tr '\0' m >"$work/www/1m.bin"

bench_tls_clients "$work_abs" "$suite" "$group"

# ---- Finding and installing the servers and h2load. ----

declare -A usable
for name in "${servers[@]}" "${storm_servers[@]}"; do
	[[ -z ${usable[$name]+x} ]] || continue
	usable[$name]=
	case $name in
	keel)
		if [[ -x build/keel ]] && build/keel serve --help 2>&1 | grep -q -- --tls-no-tickets; then
			usable[$name]=1
		else
			bench_warn "build/keel serve with TLS not found (make), skipping keel"
		fi
		;;
	nginx | h2o)
		if [[ $name == nginx ]]; then pkgs=(nginx-light nginx); else pkgs=(h2o); fi
		if bench_ensure_bin "$name" "${pkgs[@]}"; then
			usable[$name]=1
		else
			bench_warn "$name missing and not installable, skipping it"
		fi
		;;
	*) bench_warn "unknown server $name" ;;
	esac
done
if has_part storm && ! bench_ensure_bin h2load nghttp2-client; then
	bench_warn "h2load missing (apt-get install -y nghttp2-client): no storm part"
	parts=("${parts[@]/storm/}")
fi
# The storm's keep-alive clients: keel load (open loop, latency timed from
# when each request was due) where it speaks https, else h2load --rps.
ka_tool=${KA_TOOL:-}
if [[ -z $ka_tool ]]; then
	ka_tool=h2load
	if [[ -x build/keel ]] && build/keel load --help 2>&1 | grep -q -- --tls-ca &&
		command -v python3 >/dev/null; then
		ka_tool=keel
	fi
fi
[[ $ka_tool == @(keel|h2load) ]] || bench_die "KA_TOOL is keel or h2load"

# ---- Starting and stopping servers. ----

write_nginx_conf() { # cert tickets(1|0)
	local tickets=on cache=none
	if (($2 == 0)); then
		tickets=off
		cache=off
	fi
	bench_nginx_conf "$work_abs/nginx.conf" off 16384 <<EOF
	sendfile on;
	tcp_nopush on;
	tcp_nodelay on;
	keepalive_requests 1000000;
	keepalive_timeout 65s;
	ssl_protocols TLSv1.3;
	ssl_certificate $work_abs/$1.pem;
	ssl_certificate_key $work_abs/$1.key;
	ssl_session_tickets $tickets;
	ssl_session_cache $cache;
	default_type text/plain;
	server {
		listen 127.0.0.1:$port ssl backlog=4096;
		root $work_abs/www;
	}
	# Its connection counters for the storm, off the measured port.
	server {
		listen unix:$work_abs/nginx-status.sock;
		location = /status { stub_status; }
	}
EOF
}

# h2o serves /plaintext as a file, with last-modified, etag and accept-ranges.
write_h2o_conf() { # cert tickets(1|0)
	local mode=all
	if (($2 == 0)); then mode=off; fi
	bench_h2o_listen=(
		"ssl:"
		"  certificate-file: $work_abs/$1.pem"
		"  key-file: $work_abs/$1.key"
		"  minimum-version: TLSv1.3"
		"  ocsp-update-interval: 0"
	)
	bench_h2o_conf "$work_abs/h2o.conf" "$port" 16384 "$work_abs/www" \
		"ssl-session-resumption:" "  mode: $mode"
}

server_pid=
start_server() { # name cert tickets(1|0): sets server_pid, or returns 1
	local name=$1 c=$2 tickets=$3
	local -a cmd
	bench_free_port
	case $name in
	keel)
		cmd=(build/keel serve --listen "127.0.0.1:$port" --workers 1 --status
			--tls-protocols TLSv1.3 --tls-cert "$work/$c.pem" --tls-key "$work/$c.key")
		if ((tickets == 0)); then cmd+=(--tls-no-tickets); fi
		cmd+=("$work/www")
		;;
	nginx)
		write_nginx_conf "$c" "$tickets"
		cmd=("${bench_nginx[@]}")
		;;
	h2o)
		write_h2o_conf "$c" "$tickets"
		cmd=("${bench_h2o[@]}")
		;;
	esac
	# env execs too: the server is still bench_pid, without the clients' TLS settings.
	bench_server_start "$name" "$work/$name.log" env -u OPENSSL_CONF "${cmd[@]}" || return 1
	# Listening is not answering (nginx's worker, h2o's thread): wait for a 200.
	for _ in $(seq 50); do
		if curl -s -o /dev/null --max-time 2 "https://127.0.0.1:$port/plaintext"; then break; fi
		sleep 0.1
	done
}

check_get() { # name path: curl must get 200 and exactly the file
	bench_check_get "$1" "https://127.0.0.1:$port$2" "$work/www$2" || {
		bench_warn "skipping $1"
		return 1
	}
}

# Two connections with openssl s_client, the second offering the first's
# session; sets probe to "protocol cipher group signature New|Reused".
tls_probe() {
	local sess=$bench_tmp/probe.sess o1=$bench_tmp/probe1 o2=$bench_tmp/probe2 req
	req=$'GET /plaintext HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n'
	rm -f "$sess"
	printf '%s' "$req" | timeout 10 openssl s_client -connect "127.0.0.1:$port" \
		-servername localhost -CAfile "$work/ca.pem" -verify_return_error -ign_eof \
		-sess_out "$sess" >"$o1" 2>&1 || true
	if [[ -s $sess ]]; then
		printf '%s' "$req" | timeout 10 openssl s_client -connect "127.0.0.1:$port" \
			-servername localhost -CAfile "$work/ca.pem" -verify_return_error -ign_eof \
			-sess_in "$sess" >"$o2" 2>&1 || true
	else
		echo "New, (no session to offer)" >"$o2"
	fi
	probe=$(awk '
		FNR == 1 { file++ }
		file == 1 && /^New, / { proto = $2; sub(/,$/, "", proto); cipher = $5 }
		file == 1 && /^Server Temp Key:/ { grp = $4; sub(/,$/, "", grp) }
		file == 1 && /^Peer signature type:/ { sig = $4 }
		file == 1 && /^Verify return code:/ && $4 != "0" { bad = 1 }
		file == 2 && /^(New|Reused), / { again = $1; sub(/,$/, "", again) }
		END {
			if (proto == "" || bad)
				print "failed"
			else
				printf "%s %s %s %s %s\n", proto, cipher, grp, sig, (again == "" ? "?" : again)
		}' "$o1" "$o2")
}

# Prints what the server negotiated, and warns unless it is what was asked for.
show_probe() { # name what
	tls_probe
	echo "  $1 ($2): $probe"
	if [[ $probe != "TLSv1.3 $suite $group "* ]]; then
		bench_warn "$1 did not negotiate TLSv1.3 $suite $group; s_client output in $bench_tmp/probe1"
		return 1
	fi
}

# keel's TLS counters, summed over its workers: "handshakes resumed refused
# reached", reached being every TLS connection it took (handshakes done,
# refused, failed, timed out, and under way).
keel_tls_counters() {
	curl -s --max-time 5 "https://127.0.0.1:$port/_keel/status" | awk '
		$1 == "tls_handshakes_total" { h += $2 }
		$1 == "tls_resumed_total" { r += $2 }
		$1 == "tls_handshake_refused_total" { f += $2 }
		$1 ~ /^tls_handshake_(failed|timeouts)_total$/ || $1 == "tls_handshaking" { o += $2 }
		END { printf "%d %d %d %d\n", h, r, f, h + f + o }'
}

# Connections the server under test has accepted so far (keel: TLS
# connections; nginx: stub_status accepts), or -1 where it cannot tell.
server_accepts() { # name
	case $1 in
	keel) keel_tls_counters | awk '{ print $4 }' ;;
	nginx)
		curl -s --max-time 5 --unix-socket "$work_abs/nginx-status.sock" http://localhost/status |
			awk 'f { print $1; exit } /accepts/ { f = 1 }'
		;;
	*) echo -1 ;;
	esac
}

listen_drops() { # machine-wide SYNs dropped at full listen queues (TcpExt ListenDrops)
	awk '/^TcpExt:/ && !h { split($0, n); h = 1; next }
		/^TcpExt:/ { for (i = 2; i <= NF; i++) if (n[i] == "ListenDrops") print $i }' /proc/net/netstat
}

# Runs wrk once: one key=value line (bench_wrk's), errors = socket errors +
# non-2xx answers.
run_wrk() { # conns secs url [wrk args]
	local line conns=$1 secs=$2
	shift 2
	line=$(bench_wrk "$conns" "$secs" "$server_pid" 0 "$@")
	echo "$line errors=$(($(bench_kv "$line" errors) + $(bench_kv "$line" non2xx)))"
}

# Sets cols: server CPU%, CPU 0 busy%, rate per server CPU second, client
# CPU%, other%, errors.
cpu_cols() { # line rate
	local cpu
	cpu=$(bench_kv "$1" srv_pct)
	cols=("$cpu" "$(bench_kv "$1" core_pct)" "$(bench_per_cpu "$2" "$cpu")"
		"$(bench_kv "$1" cli_pct)" "$(bench_kv "$1" other_pct)" "$(bench_kv "$1" errors)")
}

alive() { # name
	kill -0 "$server_pid" 2>/dev/null && return 0
	bench_warn "$1 died; log $work/$1.log"
	return 1
}

# keel / other server for each point of a TSV: rows keyed by the columns
# keys (comma-separated numbers), servers in column 1, the value in column v.
ratios() { # tsv keys v title
	awk -F'\t' -v keys="$2" -v v="$3" -v title="$4" '
		NR == 1 { next }
		{
			n = split(keys, kc, ",")
			k = $kc[1]
			for (i = 2; i <= n; i++)
				k = k " " $kc[i]
			val[$1, k] = $v
			if (!(k in seen)) { seen[k] = 1; key[++nk] = k }
		}
		function r(b, k) {
			if (!(("keel", k) in val) || !((b, k) in val) || val[b, k] <= 0)
				return "-"
			return sprintf("%.2f", val["keel", k] / val[b, k])
		}
		END {
			if (nk == 0)
				exit
			printf "\nkeel / other server, %s\n%-22s %8s %8s\n", title, "point", "nginx", "h2o"
			for (i = 1; i <= nk; i++)
				printf "%-22s %8s %8s\n", key[i], r("nginx", key[i]), r("h2o", key[i])
		}' "$1"
}

tbl=()
bench_busy_before
echo "https: $(uname -r), $(nproc) CPUs, server on CPU $bench_srv_cpu, clients on CPU $bench_cli_cpu, ${duration} s per point"
echo "TLS 1.3 $suite, $group; other% is CPU used by other processes during a point (noise, want ~0; ! above 5)"

# ---- 1. Keep-alive, 13-byte responses. ----

ka_tsv=$out/tls-keepalive.tsv
printf 'server\tcert\tshape\tconns\treq_per_s\tp50_us\tp99_us\tserver_cpu_pct\tcpu0_busy_pct\treq_per_server_cpu_s\tclient_cpu_pct\tother_cpu_pct\terrors\n' >"$ka_tsv"
if has_part keepalive; then
	fmt='%-6s %-6s %-6s %9s %8s %8s %8s %6s %14s %8s %7s %6s\n'
	echo
	echo "1. keep-alive GET /plaintext (13-byte file), certificate $cert, wrk -t1"
	for name in "${servers[@]}"; do
		[[ -n ${usable[$name]:-} ]] || continue
		start_server "$name" "$cert" 1 || continue
		if ! check_get "$name" /plaintext || ! show_probe "$name" "$cert"; then
			bench_server_stop
			continue
		fi
		url=https://127.0.0.1:$port/plaintext
		bench_warm "$warmup" "$url"
		for shape in "${shapes[@]}"; do
			alive "$name" || break
			conns=${shape#c}
			line=$(run_wrk "$conns" "$duration" "$url")
			rps=$(bench_kv "$line" rps)
			cpu_cols "$line" "$rps"
			row=("$name" "$cert" "$shape" "$conns" "$rps" "$(bench_kv "$line" p50_us)"
				"$(bench_kv "$line" p99_us)" "${cols[@]}")
			bench_tsv "$ka_tsv" "${row[@]}"
			# shellcheck disable=SC2059 # one format for the header and the rows
			tbl+=("$(printf "$fmt" "${row[@]:0:3}" "${row[@]:4:7}" "$(bench_noisy "${row[11]}")" "${row[12]}")")
		done
		bench_server_stop
	done
	# shellcheck disable=SC2059 # one format for the header and the rows
	printf "$fmt" server cert shape req/s p50_us p99_us srv_cpu% cpu0% req/srv_cpu_s cli_cpu% other% errors
	printf '%s\n' "${tbl[@]}"
	tbl=()
	ratios "$ka_tsv" 3 10 "keep-alive requests per server CPU second"
fi

# ---- 2. New TLS connections. ----

hs_tsv=$out/tls-conns.tsv
printf 'server\tcert\tmode\tconns\tconn_per_s\tp50_us\tp99_us\tserver_cpu_pct\tcpu0_busy_pct\tconn_per_server_cpu_s\tclient_cpu_pct\tother_cpu_pct\terrors\tprobe\tresumed_pct\n' >"$hs_tsv"
if has_part conns; then
	fmt='%-6s %-6s %-8s %8s %8s %8s %7s %6s %14s %8s %7s %6s %-7s %8s\n'
	echo
	echo "2. new TLS connections: one GET /plaintext each (wrk -t1 -c$hs_conns, Connection: close)"
	echo "   (probe: the second of two s_client connections; resumed%: keel's own count)"
	tbl=()
	for c in "${hs_certs[@]}"; do
		for mode in "${hs_modes[@]}"; do
			tickets=0
			if [[ $mode == resumed ]]; then tickets=1; fi
			for name in "${servers[@]}"; do
				[[ -n ${usable[$name]:-} ]] || continue
				start_server "$name" "$c" "$tickets" || continue
				if ! check_get "$name" /plaintext || ! show_probe "$name" "$c $mode" >/dev/null; then
					bench_server_stop
					continue
				fi
				want=New
				if ((tickets)); then want=Reused; fi
				seen=${probe##* }
				if [[ $seen != "$want" ]]; then
					bench_warn "$name ($c, $mode): the probe's second connection was $seen, not $want"
				fi
				url=https://127.0.0.1:$port/plaintext
				bench_warm "$warmup" "$url" -H 'Connection: close'
				if [[ $name == keel ]]; then read -ra k0 < <(keel_tls_counters); fi
				line=$(run_wrk "$hs_conns" "$duration" "$url" -H 'Connection: close')
				resumed=-
				if [[ $name == keel ]]; then
					read -ra k1 < <(keel_tls_counters)
					# (less the status request's own handshake)
					resumed=$(awk -v h=$((k1[0] - k0[0] - 1)) -v r=$((k1[1] - k0[1])) \
						'BEGIN { printf "%.1f", (h > 0 ? 100 * r / h : 0) }')
				fi
				rps=$(bench_kv "$line" rps)
				cpu_cols "$line" "$rps"
				row=("$name" "$c" "$mode" "$hs_conns" "$rps" "$(bench_kv "$line" p50_us)"
					"$(bench_kv "$line" p99_us)" "${cols[@]}" "$seen" "$resumed")
				bench_tsv "$hs_tsv" "${row[@]}"
				# shellcheck disable=SC2059
				tbl+=("$(printf "$fmt" "${row[@]:0:3}" "${row[@]:4:7}" "$(bench_noisy "${row[11]}")" "${row[@]:12}")")
				bench_server_stop
			done
		done
	done
	# shellcheck disable=SC2059
	printf "$fmt" server cert mode conn/s p50_us p99_us srv_cpu% cpu0% conn/srv_cpu_s cli_cpu% other% errors probe resumed%
	printf '%s\n' "${tbl[@]}"
	tbl=()
	ratios "$hs_tsv" 2,3 10 "new connections per server CPU second"
fi

# ---- 3. Handshake storm. ----

# h2load's summary as key=value: h2_secs h2_rps total ok (2xx) failed errored.
h2load_parse() { # file
	awk '
		/^finished in/ {
			s = $3
			sub(/,$/, "", s)
			secs = (s ~ /ms$/) ? s / 1000 : s + 0
			rps = $4
		}
		/^requests:/ { total = $2; failed = $10; errored = $12 }
		/^status codes:/ { ok = $3 }
		END {
			printf "h2_secs=%.3f h2_rps=%.0f total=%d ok=%d failed=%d errored=%d\n",
				secs, rps, total, ok, failed, errored
		}' "$1"
}

# From an h2load --log-file (start_us status duration_us), over [t0, t1)
# in epoch microseconds: goodput (2xx completed per second in the window),
# p50_us and p99_us of the 2xx requests sent in it, and bad (the others).
ka_window() { # log t0 t1
	local lat=$bench_tmp/lat
	awk -v t0="$2" -v t1="$3" -v lat="$lat" '
		$2 >= 200 && $2 < 300 && $1 + $3 >= t0 && $1 + $3 < t1 { good++ }
		$1 >= t0 && $1 < t1 {
			if ($2 >= 200 && $2 < 300)
				print $3 > lat
			else
				bad++
		}
		END {
			close(lat)
			printf "goodput=%.0f bad=%d ", good / ((t1 - t0) / 1e6), bad
		}' "$1"
	touch "$lat"
	sort -n "$lat" | awk '{ v[NR] = $1 }
		END {
			if (NR == 0) { print "p50_us=0 p99_us=0"; exit }
			i50 = int(NR * 0.50); if (i50 < 1) i50 = 1
			i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
			printf "p50_us=%d p99_us=%d\n", v[i50], v[i99]
		}'
	rm -f "$lat"
}

now_us() { echo $(($(date +%s%N) / 1000)); }

# The keep-alive clients' closed-loop rate (req/s) over DURATION s.
ka_saturation() {
	local f=$work/$name.sat
	if [[ $ka_tool == keel ]]; then
		bench_client $((duration + 20)) build/keel load -q -c "$ka_conns" -d "$duration" \
			--tls-ca "$work/ca.pem" --json "$f.json" "$url" >"$f.out" 2>&1 || true
		python3 -c 'import json, sys; print(round(json.load(open(sys.argv[1]))["requests_per_sec"]))' \
			"$f.json" 2>/dev/null || echo 0
	else
		bench_client $((duration + 20)) h2load --h1 -c "$ka_conns" -D "$duration" "$url" >"$f.out" 2>&1 || true
		bench_kv "$(h2load_parse "$f.out")" h2_rps
	fi
}

# The keep-alive clients at rate (req/s in all) for storm_dur s, in the
# background, logging each request (h2load) or each second (keel load); sets
# ka_pid.
ka_start() { # rate log
	local per
	if [[ $ka_tool == keel ]]; then
		bench_client $((storm_dur + 20)) build/keel load -q -c "$ka_conns" -p 1 -R "$1" \
			-d "$storm_dur" --tls-ca "$work/ca.pem" --json "$2" "$url" >"$2.out" 2>&1 &
	else
		per=$(awk -v r="$1" -v c="$ka_conns" 'BEGIN { p = int(r / c + 0.5); print (p < 1 ? 1 : p) }')
		bench_client $((storm_dur + 20)) h2load --h1 -c "$ka_conns" --rps "$per" -D "$storm_dur" \
			--log-file "$2" "$url" >"$2.out" 2>&1 &
	fi
	ka_pid=$!
	bench_track "$ka_pid"
}

# keel load's --json over the seconds first..last of its run: goodput (2xx
# per second), p50_us (of the whole run) and p99_us (the worst second's),
# bad (errors in the whole run).
ka_window_json() { # json first last
	python3 - "$@" <<'EOF' 2>/dev/null || echo "goodput=0 bad=0 p50_us=0 p99_us=0"
import json, sys
d = json.load(open(sys.argv[1]))
a, b = int(sys.argv[2]), int(sys.argv[3])
iv = [i for i in d["intervals"] if a <= i["t"] <= b]
ok = sum(i["ok"] for i in iv)
p99 = max((i["p99_us"] for i in iv), default=0)
print("goodput=%.0f bad=%d p50_us=%d p99_us=%d" % (ok / (b - a + 1), d["errors_total"],
      d["latency_us"]["p50"], p99))
EOF
}

ka_wait() {
	wait "$ka_pid" || bench_warn "the keep-alive clients failed (rc $?); see $work/*.ka.log.out"
	bench_untrack "$ka_pid"
}

storm_tsv=$out/tls-storm.tsv
printf 'server\tcert\tphase\thandshakes_per_server_cpu_s\tka_saturation_req_s\tka_offered_req_s\tka_goodput_req_s\tka_goodput_pct\tka_p50_us\tka_p99_us\tka_bad\tstorm_asked_conn_s\tstorm_run_s\tstorm_reached_conn_s\tstorm_completed_conn_s\tstorm_failed\tlisten_drops\tserver_cpu_pct\tkeel_refused\n' >"$storm_tsv"
if has_part storm; then
	echo
	if [[ $ka_tool == keel ]]; then
		ka_desc="keel load -c$ka_conns -p1 -R, open loop; p99: the window's worst second"
	else
		ka_desc="h2load --h1 -c$ka_conns --rps"
	fi
	echo "3. handshake storm: certificate $storm_cert, no resumption; keep-alive clients ($ka_desc) at $ka_factor x S,"
	echo "   new connections (h2load -r, full handshakes) at $storm_factor x H, ${storm_dur} s runs, figures over the storm's window"
	tbl=()
	sfmt='%-6s %-6s %7s %8s %8s %15s %7s %8s %6s %6s %6s %12s %7s %7s %7s %6s %7s\n'
	lead=1
	storm_len=$((storm_dur - 2))
	for name in "${storm_servers[@]}"; do
		[[ -n ${usable[$name]:-} ]] || continue
		start_server "$name" "$storm_cert" 0 || continue
		if ! check_get "$name" /plaintext || ! show_probe "$name" "$storm_cert, storm" >/dev/null; then
			bench_server_stop
			continue
		fi
		url=https://127.0.0.1:$port/plaintext
		bench_warm "$warmup" "$url" -H 'Connection: close'
		# 1. H: full handshakes per server CPU second.
		line=$(run_wrk "$hs_conns" "$duration" "$url" -H 'Connection: close')
		hcap=$(bench_per_cpu "$(bench_kv "$line" rps)" "$(bench_kv "$line" srv_pct)")
		# 2. S: the keep-alive clients, unthrottled.
		alive "$name" || {
			bench_server_stop
			continue
		}
		sat=$(ka_saturation)
		if ((hcap <= 0 || sat <= 0)); then
			bench_warn "$name: no capacity measured (H $hcap, S $sat); skipping its storm"
			bench_server_stop
			continue
		fi
		ka_rate=$(awk -v s="$sat" -v f="$ka_factor" -v c="$ka_conns" \
			'BEGIN { p = int(s * f / c + 0.5); if (p < 1) p = 1; print p * c }')
		# Connections per 100 ms period.
		per=$(awk -v h="$hcap" -v f="$storm_factor" 'BEGIN { p = int(h * f / 10 + 0.5); print (p < 1 ? 1 : p) }')
		storm_rate=$((per * 10))
		nconn=$((storm_rate * storm_len))
		base_good=
		base_p99=
		for phase in alone storm; do
			alive "$name" || break
			log=$work/$name.$phase.ka.log
			rm -f "$log"
			if [[ $name == keel ]]; then read -ra k0 < <(keel_tls_counters); fi
			a0=$(server_accepts "$name")
			d0=$(listen_drops)
			ka_start "$ka_rate" "$log"
			sleep "$lead"
			t0=$(now_us)
			if [[ $phase == storm ]]; then
				s0=$(now_us)
				# -N and -T bound each connection: the run ends a few seconds
				# after the last is opened, even when SYNs go unanswered.
				bench_client $((storm_len + 90)) chrt --idle 0 h2load --h1 -r "$per" --rate-period 100ms \
					-c "$nconn" -n "$nconn" -N 2s -T 5s "$url" >"$work/$name.storm.out" 2>&1 &
				storm_pid=$!
				bench_track "$storm_pid"
			fi
			# The server's CPU over the window (the clients' is not told apart here).
			bench_measure "$server_pid" 0 sleep "$storm_len" || true
			t1=$((t0 + storm_len * 1000000))
			ka_wait
			st="- - - - - -"
			if [[ $phase == storm ]]; then
				wait "$storm_pid" || bench_warn "the storm's h2load failed (rc $?); see $work/$name.storm.out"
				bench_untrack "$storm_pid"
				srun=$(awk -v a="$s0" -v b="$(now_us)" 'BEGIN { printf "%.1f", (b - a) / 1e6 }')
				sp=$(h2load_parse "$work/$name.storm.out")
				a1=$(server_accepts "$name")
				reached=-
				if ((a0 >= 0 && a1 >= 0)); then
					# (less the counting requests' own connections), and as a multiple of H
					reached=$(awk -v n=$((a1 - a0 - 1)) -v s="$srun" -v h="$hcap" \
						'BEGIN { printf "%.0f(%.1fx)", n / s, n / s / h }')
				fi
				st="$storm_rate $srun $reached $(awk -v n="$(bench_kv "$sp" ok)" -v s="$srun" \
					'BEGIN { printf "%.0f", n / s }') $(bench_kv "$sp" failed) $(($(listen_drops) - d0))"
			fi
			refused=-
			if [[ $name == keel ]]; then
				read -ra k1 < <(keel_tls_counters)
				refused=$((k1[2] - k0[2]))
			fi
			if [[ $ka_tool == keel ]]; then
				w=$(ka_window_json "$log" $((lead + 1)) $((lead + storm_len)))
			else
				w=$(ka_window "$log" "$t0" "$t1")
			fi
			good=$(bench_kv "$w" goodput)
			p99=$(bench_kv "$w" p99_us)
			if [[ $phase == alone ]]; then
				base_good=$good
				base_p99=$p99
			fi
			pct=$(awk -v g="$good" -v b="$base_good" 'BEGIN { printf "%.1f", (b > 0 ? 100 * g / b : 0) }')
			read -ra sta <<<"$st"
			row=("$name" "$storm_cert" "$phase" "$hcap" "$sat" "$ka_rate" "$good" "$pct"
				"$(bench_kv "$w" p50_us)" "$p99" "$(bench_kv "$w" bad)" "${sta[@]}"
				"$(bench_kv "$measured" srv_pct)" "$refused")
			bench_tsv "$storm_tsv" "${row[@]}"
			p99x=$(awk -v p="$p99" -v b="$base_p99" 'BEGIN { printf "%.1fx", (b > 0 ? p / b : 0) }')
			# shellcheck disable=SC2059
			tbl+=("$(printf "$sfmt" "$name" "$phase" "$hcap" "$sat" "$ka_rate" "$good ($pct%)" \
				"$(bench_kv "$w" p50_us)" "$p99" "$p99x" "${sta[@]}" "$(bench_kv "$measured" srv_pct)" \
				"$refused")")
		done
		bench_server_stop
	done
	# shellcheck disable=SC2059
	printf "$sfmt" server phase H/cpu_s S_req/s ka_req/s "ka_goodput(%)" p50_us p99_us p99x asked/s run_s reached/s done/s failed drops srv% refused
	printf '%s\n' "${tbl[@]}"
	echo "(H: full handshakes per server CPU second; S: the keep-alive clients' closed-loop rate; ka_*: over the storm's"
	echo " window; p99x: p99 / alone. Storm: asked/s, run_s its h2load's run (the tail included), reached/s connections the"
	echo " server accepted per second of that run (and that as a multiple of H), done/s those answered 2xx, failed"
	echo " (h2load), drops: SYNs dropped at full listen queues, machine-wide; refused: over keel's --tls-handshakes-max;"
	echo " srv%: server CPU over the window. The storm's h2load runs SCHED_IDLE: the keep-alive clients come first)"
	tbl=()
fi

# ---- 4. A 1 MiB static file. ----

lg_tsv=$out/tls-large.tsv
printf 'server\tcert\tconns\treq_per_s\tbody_mb_per_s\tp99_us\tserver_cpu_pct\tcpu0_busy_pct\tmb_per_server_cpu_s\tclient_cpu_pct\tother_cpu_pct\terrors\n' >"$lg_tsv"
if has_part large; then
	lfmt='%-6s %-6s %6s %8s %8s %9s %7s %6s %14s %8s %7s %6s\n'
	echo
	echo "4. GET /1m.bin (1 MiB) over HTTPS keep-alive, certificate $cert; MB = 10^6 bytes of body"
	tbl=()
	for name in "${servers[@]}"; do
		[[ -n ${usable[$name]:-} ]] || continue
		start_server "$name" "$cert" 1 || continue
		if ! check_get "$name" /1m.bin; then
			bench_server_stop
			continue
		fi
		url=https://127.0.0.1:$port/1m.bin
		bench_warm "$warmup" "$url"
		for conns in "${large_conns[@]}"; do
			alive "$name" || break
			line=$(run_wrk "$conns" "$duration" "$url")
			# (wrk prints bytes read with 3 digits: allow its rounding)
			if (($(bench_kv "$line" bpr) < 1048576 * 99 / 100)); then
				bench_warn "$name: fewer bytes per response than the file; point refused"
				continue
			fi
			rps=$(bench_kv "$line" rps)
			rps_exact=$(bench_kv "$line" reqs)
			mbs=$(awk -v n="$rps_exact" -v w="$(bench_kv "$line" wall_s)" \
				'BEGIN { printf "%.1f", n * 1048576 / 1e6 / w }')
			cpu=$(bench_kv "$line" srv_pct)
			mbcpu=$(awk -v m="$mbs" -v c="$cpu" 'BEGIN { printf "%.1f", (c > 0 ? m * 100 / c : 0) }')
			row=("$name" "$cert" "$conns" "$rps" "$mbs" "$(bench_kv "$line" p99_us)" "$cpu"
				"$(bench_kv "$line" core_pct)" "$mbcpu" "$(bench_kv "$line" cli_pct)"
				"$(bench_kv "$line" other_pct)" "$(bench_kv "$line" errors)")
			bench_tsv "$lg_tsv" "${row[@]}"
			# shellcheck disable=SC2059
			tbl+=("$(printf "$lfmt" "${row[@]:0:10}" "$(bench_noisy "${row[10]}")" "${row[11]}")")
		done
		bench_server_stop
	done
	# shellcheck disable=SC2059
	printf "$lfmt" server cert conns req/s MB/s p99_us srv_cpu% cpu0% MB/srv_cpu_s cli_cpu% other% errors
	printf '%s\n' "${tbl[@]}"
	tbl=()
	ratios "$lg_tsv" 3 9 "1 MiB file, MB per server CPU second (conns)"
fi

# ---- The plot: one panel per part. ----

# A gnuplot datablock: one line per point (columns keys of tsv joined), one
# column per server (keel nginx h2o) with column v ("-" where missing).
datablock() { # name tsv keys v
	awk -F'\t' -v name="$1" -v keys="$3" -v v="$4" '
		NR == 1 { next }
		{
			n = split(keys, kc, ",")
			k = $kc[1]
			for (i = 2; i <= n; i++)
				k = k " " $kc[i]
			val[$1, k] = $v
			if (!(k in seen)) { seen[k] = 1; key[++nk] = k }
		}
		END {
			ns = split("keel nginx h2o", s, " ")
			printf "$%s << EOD\n", name
			for (i = 1; i <= nk; i++) {
				printf "\"%s\"", key[i]
				for (j = 1; j <= ns; j++)
					printf " %s", ((s[j], key[i]) in val) ? val[s[j], key[i]] : "-"
				print ""
			}
			print "EOD"
		}' "$2"
}

has_rows() { (($(wc -l <"$1") > 1)); }

plot() {
	local gp=$out/tls.gp png=$out/tls.png n=0 t
	local -a panels=()
	local bars="using 2:xtic(1) lc rgb \"#1f77b4\" title \"keel\", '' using 3 lc rgb \"#2ca02c\" title \"nginx\", '' using 4 lc rgb \"#ff7f0e\" title \"h2o\""
	if has_rows "$ka_tsv"; then
		datablock ka "$ka_tsv" 3 10 >"$gp.ka"
		panels+=("set title \"1. keep-alive GET 13 B ($cert): requests per server CPU second\"
plot \$ka $bars")
	fi
	if has_rows "$hs_tsv"; then
		datablock hs "$hs_tsv" 2,3 10 >"$gp.hs"
		panels+=("set title \"2. new TLS connections per server CPU second\"
plot \$hs $bars")
	fi
	if has_rows "$storm_tsv"; then
		# The keep-alive goodput (% of alone) and p99 (ms) per server and phase.
		awk -F'\t' 'BEGIN { print "$st << EOD" }
			NR > 1 { printf "\"%s %s\" %s %.3f\n", $1, $3, $8, $10 / 1000 }
			END { print "EOD" }' "$storm_tsv" >"$gp.st"
		t=$(awk -F'\t' 'NR > 1 && $10 / 1000 > m { m = $10 / 1000 } END { printf "%.1f", m * 1.4 + 0.1 }' "$storm_tsv")
		panels+=("set title \"3. storm ($storm_cert, ${storm_factor}x H): keep-alive goodput, % of alone (bars), and p99 ms (points)\"
set key top left; set yrange [0:140]; set y2tics; set y2range [0:$t]; set ytics nomirror
plot \$st using 2:xtic(1) lc rgb \"#9467bd\" title \"goodput %\", '' using 0:3 axes x1y2 with points pt 7 ps 1.5 lc rgb \"black\" title \"p99 ms\"
unset y2tics; set ytics mirror; set key top right; set yrange [0:*]")
	fi
	if has_rows "$lg_tsv"; then
		datablock lg "$lg_tsv" 3 9 >"$gp.lg"
		panels+=("set title \"4. 1 MiB file ($cert): MB per server CPU second, by connections\"
plot \$lg $bars")
	fi
	n=${#panels[@]}
	if ((n == 0)); then
		bench_warn "no points measured; no plot"
		return
	fi
	{
		cat "$gp".?? 2>/dev/null || true
		cat <<EOF
set terminal pngcairo size 1400,$((n > 2 ? 1000 : 520)) font ",10" noenhanced
set output "$png"
set multiplot layout $((n > 2 ? 2 : 1)),$((n > 1 ? 2 : 1)) title "HTTPS (TLS 1.3, $suite, $group): server (1 worker) on CPU $bench_srv_cpu, clients on CPU $bench_cli_cpu, ${duration} s per point"
set datafile missing "-"
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key top right
set yrange [0:*]
EOF
		for t in "${panels[@]}"; do echo "$t"; done
		echo "unset multiplot"
	} >"$gp"
	rm -f "$gp".??
	echo
	echo "wrote $ka_tsv $hs_tsv $storm_tsv $lg_tsv"
	bench_plot "$gp" "$png"
}
plot
