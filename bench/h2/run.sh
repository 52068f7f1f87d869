#!/usr/bin/env bash
# HTTP/2 benchmark: `build/keel serve --http2` against nginx and h2o, over TLS
# (h2, by ALPN) and in plain text (h2c, prior knowledge), driven by h2load
# (nghttp2-client). Run from the repo root (as root to install nginx, h2o,
# h2load and python3-h2 from Debian):
#
#     bench/h2/run.sh               # ~9 minutes
#     QUICK=1 bench/h2/run.sh       # ~5 minutes
#
# Two parts (PARTS, default "load idle"):
#
#   load   h2load -t1, for each transport of TRANSPORTS (default "h2 h2c"),
#          each body of BODIES (default "13b 1m": GET /plaintext, the 13-byte
#          file "Hello, World!", and GET /1m.bin, a 1 MiB file; both static
#          files served from disk by all three), each shape of SHAPES
#          (default "c16 c256": connections) and each -m of STREAMS (default
#          "1 10 100": concurrent streams per connection; the servers allow
#          100 (keel, h2o) and 128 (nginx)). A point is:
#            1. calibration and warm-up: h2load -D CALIB s (default 1),
#               unmeasured; its rate of 2xx responses (for the 1 MiB file:
#               of body bytes / 1 MiB) sizes the measured run (when the timed
#               run fails, as h2load 1.52's -D now and then does, a counted
#               run of 2-4 x conns requests sizes it instead);
#            2. the server's CPU goes quiet (what it still had in flight);
#            3. the measured run: h2load -n R, R = that rate x DURATION
#               (at least 2 x conns), so that every request asked for is
#               answered and counted (-D would leave up to conns x m
#               requests in flight, served but not counted). It is killed,
#               and reported as a stall, after 6 x DURATION + 20 s.
#          The headline is requests per server CPU second: 2xx responses /
#          the server's CPU seconds over the run (bench/lib.sh), where a
#          point whose body bytes fall short of 2xx x the file's size counts
#          only body bytes / size responses (h2load counts any 2xx, an empty
#          one too). Every point
#          also checks what h2load saw: the protocol (h2 or h2c), for h2 the
#          cipher, the body bytes (2xx x the file's size), and prints
#          h2load's failed and errored counts; the whole h2load output of
#          each point is kept in build/bench/h2/. For the 1 MiB file with
#          c256, R can be below conns x m: a connection then has fewer
#          streams in flight than -m asks for.
#   idle   Memory per idle HTTP/2 connection, for IDLE_SERVERS (default
#          "keel nginx h2o"), each transport, REPS times (default 3; 1 with
#          QUICK=1), a fresh server each time:
#            1. warm-up: h2load -c 64 -m 1 -n 6400 over the same transport
#               (pools, caches, free lists), then SETTLE s (default 1);
#            2. baseline: VmRSS of the serving process (nginx: its one
#               process, master_process off; h2o: its main process, not the
#               helper) and its open fds;
#            3. IDLE_N connections (default 1000), opened one after another
#               by bench/h2/idle_h2.py (python3 and the h2 package): the
#               client preface and SETTINGS, one GET /plaintext, the whole
#               200 response read and the server's SETTINGS acknowledged;
#               then left idle; after SETTLE s, VmRSS and fds again;
#            4. the client checks that each connection is still open (no
#               close, no GOAWAY), then closes them; the server is stopped.
#          Bytes per connection = (RSS_N - RSS_0) / IDLE_N. The servers'
#          idle deadlines are raised out of the way (keel --idle-timeout-ms
#          300000, nginx keepalive_timeout 300s, h2o http2-idle-timeout 300).
#
# TLS, the same for every server: TLS 1.3 only, TLS_AES_128_GCM_SHA256, key
# exchange X25519 (TLS_GROUP), certificate ECDSA P-256 (a throwaway CA and a
# leaf for 127.0.0.1 and localhost, made with the openssl CLI into
# build/bench/h2/, the CA sent as the chain's second certificate), ALPN h2.
# The clients offer nothing else: OPENSSL_CONF points them at
# build/bench/h2/client.cnf (and h2load gets --tls13-ciphers too); the servers
# run with OPENSSL_CONF unset and TLS 1.3 only (nginx ssl_protocols TLSv1.3;
# h2o minimum-version TLSv1.3; keel --tls-protocols TLSv1.3). What each server
# negotiated is printed after it starts (openssl s_client -alpn h2).
#
# Servers: keel = `build/keel serve --http2 --workers 1`; nginx 1.22
# (Debian nginx-light), one worker, `listen ... ssl http2` for h2 and
# `listen ... http2` (no ssl: prior knowledge only) for h2c, keepalive_requests
# 1000000, sendfile off (with sendfile on, nginx 1.22 over h2c answers a
# connection with one stream in flight only every ~40 ms, the delayed-ACK
# stall: 368 req/s at -c16 -m1 against ~130,000 without; and over TLS it
# cannot use sendfile, this kernel having no kernel TLS); h2o 2.2.5 (Debian),
# num-threads 1, which takes h2c with prior knowledge on a plain listener.
# keel's admission control answers 503 to requests reached after 20 ms of a
# loop tick's work (queue_delay_max_us, --queue-delay-us) and to those beyond
# 10,000 waiting for their handlers per worker (inflight_max, config file
# only): with 25,600 streams in flight (c256 -m100) it sheds, and h2load
# counts the 503s as failed. SERVERS may add keel-noshed: the same site from
# a configuration file (keel -c) with queue_delay_max_us = 0 and
# inflight_max = 0, to see the cost per request without shedding.
#
# Method: the house one (bench/lib.sh). Each server runs one worker pinned to
# CPU 0, started fresh from a config written under build/bench/h2/; h2load
# (one thread) and idle_h2.py run pinned to CPU 1; only 127.0.0.1. Server CPU
# is utime+stime(+cutime+cstime) of the server's whole process tree from
# /proc/PID/stat, read just before and just after each measured run. Before
# measuring, curl (--http2 / --http2-prior-knowledge) must get 200 over
# HTTP/2 and exactly the file. keel/nginx and keel/h2o ratios come from the
# same run.
#
# Environment: DURATION seconds per measured run (default 5; 2 with QUICK=1),
# CALIB seconds of calibration/warm-up before each (default 1), SERVERS
# (default "keel nginx h2o"), TRANSPORTS, BODIES, SHAPES, STREAMS, PARTS,
# IDLE_SERVERS, IDLE_N, REPS, SETTLE (above), TLS_GROUP (default X25519),
# PORT first port to try (default 7900), NO_INSTALL=1 never to install
# anything.
#
# Prints tables, writes build/bench/h2-load.tsv and build/bench/h2-idle.tsv,
# and draws build/bench/h2.png.
set -euo pipefail

cd "$(dirname "$0")/../.."
. bench/lib.sh
bench_work h2

if ((bench_quick)); then
	duration=${DURATION:-2}
	reps=${REPS:-1}
else
	duration=${DURATION:-5}
	reps=${REPS:-3}
fi
calib=${CALIB:-1}
settle=${SETTLE:-1}
read -ra servers <<<"${SERVERS:-keel nginx h2o}"
read -ra transports <<<"${TRANSPORTS:-h2 h2c}"
read -ra bodies <<<"${BODIES:-13b 1m}"
read -ra shapes <<<"${SHAPES:-c16 c256}"
read -ra streams <<<"${STREAMS:-1 10 100}"
read -ra parts <<<"${PARTS:-load idle}"
read -ra idle_servers <<<"${IDLE_SERVERS:-keel nginx h2o}"
idle_n=${IDLE_N:-1000}
group=${TLS_GROUP:-X25519}
suite=TLS_AES_128_GCM_SHA256
port=${PORT:-7900}

for v in "$duration" "$calib" "$reps" "$idle_n" "$port" "${streams[@]}"; do
	[[ $v =~ ^[1-9][0-9]*$ ]] || bench_die "DURATION, CALIB, REPS, IDLE_N, STREAMS and PORT are positive integers"
done
[[ $settle =~ ^[0-9]+(\.[0-9]+)?$ ]] || bench_die "SETTLE is a number of seconds"
for t in "${transports[@]}"; do
	[[ $t == @(h2|h2c) ]] || bench_die "a transport is h2 or h2c, not $t"
done
for b in "${bodies[@]}"; do
	[[ $b == @(13b|1m) ]] || bench_die "a body is 13b or 1m, not $b"
done
max_conns=64
for s in "${shapes[@]}"; do
	[[ $s =~ ^c([1-9][0-9]*)$ ]] || bench_die "bad shape $s (want cN)"
	if ((BASH_REMATCH[1] > max_conns)); then max_conns=${BASH_REMATCH[1]}; fi
done
has_part() { [[ " ${parts[*]} " == *" $1 "* ]]; }

bench_require curl
bench_require openssl
bench_require python3
bench_ensure_bin h2load nghttp2-client || bench_die "needs h2load (apt-get install -y nghttp2-client)"
if has_part idle && ! /usr/bin/python3 -c 'import h2' 2>/dev/null; then
	bench_apt_install python3-h2 || true
	if ! /usr/bin/python3 -c 'import h2' 2>/dev/null; then
		bench_warn "no h2 package for /usr/bin/python3 (apt-get install -y python3-h2): no idle part"
		parts=("${parts[@]/idle/}")
	fi
fi
bench_fd_limit 20000 $((max_conns + idle_n + 64))

# ---- Certificate, files and the clients' TLS settings. ----

cert_fresh() {
	[[ -s $work/ca.pem && -s $work/ecdsa.pem && -s $work/ecdsa.key ]] || return 1
	openssl x509 -checkend 86400 -noout -in "$work/ecdsa.pem" >/dev/null 2>&1
}

make_cert() {
	local log=$work/certs.log
	: >"$log"
	printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=critical,CA:FALSE" \
		"keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$work/leaf.ext"
	openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
		-keyout "$work/ca.key" -out "$work/ca.pem" -days 3650 -subj "/CN=keel bench throwaway CA" \
		-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
		>>"$log" 2>&1 || return 1
	openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout "$work/ecdsa.key" \
		-out "$work/ecdsa.csr" -subj /CN=localhost >>"$log" 2>&1 || return 1
	openssl x509 -req -in "$work/ecdsa.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
		-CAcreateserial -days 825 -extfile "$work/leaf.ext" -out "$work/ecdsa.crt" >>"$log" 2>&1 ||
		return 1
	cat "$work/ecdsa.crt" "$work/ca.pem" >"$work/ecdsa.pem"
	chmod 600 "$work/ca.key" "$work/ecdsa.key"
}

if ! cert_fresh; then
	make_cert || bench_die "openssl could not make the certificate; log $work/certs.log"
fi
openssl verify -CAfile "$work/ca.pem" "$work/ecdsa.crt" >/dev/null ||
	bench_die "the certificate in $work does not verify"

mkdir -p "$work/www"
printf 'Hello, World!' >"$work/www/plaintext"
head -c 1048576 /dev/zero | tr '\0' m >"$work/www/1m.bin"
declare -A body_path=([13b]=/plaintext [1m]=/1m.bin)
declare -A body_size=([13b]=13 [1m]=1048576)

bench_tls_clients "$work_abs" "$suite" "$group"

# ---- Finding and installing the servers. ----

declare -A usable
for name in "${servers[@]}" "${idle_servers[@]}"; do
	[[ -z ${usable[$name]+x} ]] || continue
	usable[$name]=
	case $name in
	keel | keel-noshed)
		if [[ -x build/keel ]] && build/keel serve --help 2>&1 | grep -q -- --http2; then
			usable[$name]=1
		else
			bench_warn "build/keel serve with --http2 not found (make), skipping keel"
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

# The keel under test is a copy of build/keel taken now: a rebuild during the
# run (make, by hand or by another checkout's tooling) cannot change it
# between points.
keel_bin=
if [[ -x build/keel ]]; then
	keel_bin=$bench_tmp/keel
	cp build/keel "$keel_bin"
	echo "keel: build/keel of $(date -r build/keel '+%F %T'), tree at $(git log -1 --format=%h 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src include 2>/dev/null || echo ' + uncommitted changes in src/ or include/')"
fi

# ---- Starting and stopping servers. ----

write_nginx_conf() { # transport
	local ssl=
	if [[ $1 == h2 ]]; then ssl=" ssl"; fi
	bench_nginx_conf "$work_abs/nginx.conf" off 16384 <<EOF
	sendfile off;
	tcp_nodelay on;
	keepalive_requests 1000000;
	keepalive_timeout 300s;
	ssl_protocols TLSv1.3;
	ssl_certificate $work_abs/ecdsa.pem;
	ssl_certificate_key $work_abs/ecdsa.key;
	default_type text/plain;
	server {
		listen 127.0.0.1:$port$ssl http2 backlog=4096;
		root $work_abs/www;
	}
EOF
}

write_h2o_conf() { # transport
	bench_h2o_listen=()
	if [[ $1 == h2 ]]; then
		bench_h2o_listen=(
			"ssl:"
			"  certificate-file: $work_abs/ecdsa.pem"
			"  key-file: $work_abs/ecdsa.key"
			"  minimum-version: TLSv1.3"
			"  ocsp-update-interval: 0"
		)
	fi
	bench_h2o_conf "$work_abs/h2o.conf" "$port" 16384 "$work_abs/www" "http2-idle-timeout: 300"
}

# keel-noshed: `keel serve --http2 --workers 1` as a configuration file,
# with admission control off.
write_keel_conf() { # transport
	{
		echo "; Generated by bench/h2/run.sh: keel serve's site, admission control off."
		echo "[server]"
		echo "listen = 127.0.0.1:$port"
		echo "workers = 1"
		echo "idle_timeout_ms = 300000"
		echo "queue_delay_max_us = 0"
		echo "inflight_max = 0"
		echo "http2 = on"
		if [[ $1 == h2 ]]; then
			echo "tls_cert = $work_abs/ecdsa.pem"
			echo "tls_key = $work_abs/ecdsa.key"
			echo "tls_protocols = TLSv1.3"
		fi
		echo "[route /]"
		echo "static = $work_abs/www"
	} >"$work_abs/keel-noshed.conf"
}

scheme_of() { if [[ $1 == h2 ]]; then echo https; else echo http; fi; }

# curl's HTTP/2 mode for a transport.
curl_h2() { if [[ $1 == h2 ]]; then echo --http2; else echo --http2-prior-knowledge; fi; }

server_pid=
start_server() { # name transport: sets server_pid, or returns 1
	local name=$1 tr=$2
	local -a cmd
	bench_free_port
	case $name in
	keel | keel-noshed)
		cmd=("$keel_bin" serve --listen "127.0.0.1:$port" --workers 1 --http2
			--idle-timeout-ms 300000)
		if [[ $tr == h2 ]]; then
			cmd+=(--tls-protocols TLSv1.3 --tls-cert "$work/ecdsa.pem" --tls-key "$work/ecdsa.key")
		fi
		cmd+=("$work/www")
		if [[ $name == keel-noshed ]]; then
			write_keel_conf "$tr"
			cmd=("$keel_bin" -c "$work_abs/keel-noshed.conf")
		fi
		;;
	nginx)
		write_nginx_conf "$tr"
		cmd=("${bench_nginx[@]}")
		;;
	h2o)
		write_h2o_conf "$tr"
		cmd=("${bench_h2o[@]}")
		;;
	esac
	# env execs too: the server is still bench_pid, without the clients' TLS settings.
	bench_server_start "$name" "$work/$name.$tr.log" env -u OPENSSL_CONF "${cmd[@]}" || return 1
	# Listening is not answering (nginx's worker, h2o's thread): wait for a 200.
	for _ in $(seq 50); do
		if curl -s -o /dev/null --max-time 2 "$(curl_h2 "$tr")" \
			"$(scheme_of "$tr")://127.0.0.1:$port/plaintext"; then break; fi
		sleep 0.1
	done
}

check_get() { # name transport path: curl must get 200 over HTTP/2 and exactly the file
	local body=$bench_tmp/body got
	: >"$body"
	got=$(curl -s -o "$body" -w '%{http_code} %{http_version}' --max-time 5 "$(curl_h2 "$2")" \
		"$(scheme_of "$2")://127.0.0.1:$port$3") || got="000 -"
	if [[ $got != "200 2" ]] || ! cmp -s "$body" "$work/www$3"; then
		bench_warn "$1 ($2): GET $3 gave status/version $got and $(wc -c <"$body") bytes," \
			"not 200 over HTTP/2 and $(wc -c <"$work/www$3"); skipping it"
		return 1
	fi
}

# What the server negotiates with openssl s_client -alpn h2: prints
# "protocol cipher group signature alpn", warns unless it is what was asked.
show_probe() { # name
	local o=$bench_tmp/probe probe
	timeout 10 openssl s_client -connect "127.0.0.1:$port" -servername localhost \
		-CAfile "$work/ca.pem" -verify_return_error -alpn h2 </dev/null >"$o" 2>&1 || true
	probe=$(awk '
		/^New, / { proto = $2; sub(/,$/, "", proto); cipher = $5 }
		/^Server Temp Key:/ { grp = $4; sub(/,$/, "", grp) }
		/^Peer signature type:/ { sig = $4 }
		/^ALPN protocol:/ { alpn = $3 }
		/^Verify return code:/ && $4 != "0" { bad = 1 }
		END {
			if (proto == "" || bad)
				print "failed"
			else
				printf "%s %s %s %s %s\n", proto, cipher, grp, sig, (alpn == "" ? "no-alpn" : alpn)
		}' "$o")
	echo "  $1 (h2): $probe"
	if [[ $probe != "TLSv1.3 $suite $group "*" h2" ]]; then
		bench_warn "$1 did not negotiate TLSv1.3 $suite $group with ALPN h2; s_client output in $o"
		return 1
	fi
}

alive() { # name
	kill -0 "$server_pid" 2>/dev/null && return 0
	bench_warn "$1 died; log $work/$1.*.log"
	return 1
}

# Waits (at most 3 s) until the server's CPU stops moving: the work it still
# had in flight when the calibration run ended.
quiesce() {
	local a b i
	for ((i = 0; i < 30; i++)); do
		a=$(bench_cpu_ticks "$server_pid" | awk '{ print $1 }')
		sleep 0.1
		b=$(bench_cpu_ticks "$server_pid" | awk '{ print $1 }')
		((a == b)) && return 0
	done
	bench_warn "the server's CPU did not go quiet within 3 s"
}

# h2load's output as key=value: h2_secs h2_rps total done succeeded (ended
# well) ok (2xx status seen: in a timed run, ended or not) failed errored
# timeout data (body bytes) proto cipher.
h2load_parse() { # file
	awk '
		/^finished in/ {
			s = $3
			sub(/,$/, "", s)
			secs = (s ~ /ms$/) ? s / 1000 : s + 0
			rps = $4
		}
		/^requests:/ { total = $2; done = $6; succ = $8; failed = $10; errored = $12; tmo = $14 }
		/^status codes:/ { ok = $3 }
		/^traffic:/ {
			# "traffic: X (N) total, X (N) headers (...), X (N) data"
			for (i = 1; i <= NF; i++)
				if ($i == "data") { d = $(i - 1); gsub(/[()]/, "", d) }
		}
		/^Cipher:/ { cipher = $2 }
		/^Application protocol:/ { proto = $3 }
		END {
			printf "h2_secs=%.3f h2_rps=%.0f total=%d done=%d succeeded=%d ok=%d failed=%d errored=%d timeout=%d data=%.0f proto=%s cipher=%s\n",
				secs, rps, total, done, succ, ok, failed, errored, tmo, d, (proto == "" ? "-" : proto),
				(cipher == "" ? "-" : cipher)
		}' "$1"
}

# The calibration run's rate of responses ended well per second; for large bodies,
# where few responses end within CALIB s while many are under way, at least
# the body bytes received per second over the body size. (Not its req/s:
# that counts keel's 503s, which are fast.)
calib_rate() { # file size
	local p
	p=$(h2load_parse "$1")
	awk -v ok="$(bench_kv "$p" succeeded)" -v d="$(bench_kv "$p" data)" -v s="$(bench_kv "$p" h2_secs)" \
		-v size="$2" -v c="$calib" 'BEGIN {
		if (s <= 0)
			s = c
		r = ok / s
		if (size >= 65536 && d / size / s > r)
			r = d / size / s
		printf "%.0f\n", r
	}'
}

h2load_args() { # transport: the options every run gets
	h2args=()
	if [[ $1 == h2 ]]; then h2args+=(--tls13-ciphers="$suite"); fi
}

# keel / other server for each point of a TSV: rows keyed by the columns
# keys (comma-separated numbers), servers in column 1, the value in column v.
ratios() { # tsv keys v title [lower_is_better]
	awk -F'\t' -v keys="$2" -v v="$3" -v title="$4" '
		NR == 1 { next }
		{
			n = split(keys, kc, ",")
			k = $kc[1]
			for (i = 2; i <= n; i++)
				k = k " " $kc[i]
			sum[$1, k] += $v
			cnt[$1, k]++
			if (!(k in seen)) { seen[k] = 1; key[++nk] = k }
		}
		function r(b, k) {
			if (!(("keel", k) in cnt) || !((b, k) in cnt) || sum[b, k] <= 0)
				return "-"
			return sprintf("%.2f", (sum["keel", k] / cnt["keel", k]) / (sum[b, k] / cnt[b, k]))
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
echo "http/2: $(uname -r), $(nproc) CPUs, server on CPU $bench_srv_cpu, h2load on CPU $bench_cli_cpu,"
echo "${duration} s per measured run after ${calib} s of calibration; h2: TLS 1.3 $suite $group ECDSA P-256, ALPN h2;"
echo "h2c: prior knowledge; other% is CPU used by other processes during a point (noise, want ~0; ! above 5)"

# ---- 1. Load. ----

load_tsv=$out/h2-load.tsv
printf 'server\ttransport\tbody\tshape\tconns\tstreams\treqs\treq_per_s\tmb_per_s\tserver_cpu_pct\tcpu0_busy_pct\treq_per_server_cpu_s\tclient_cpu_pct\tother_cpu_pct\tfailed\terrored\tproto\trss_after_mib\n' >"$load_tsv"
if has_part load; then
	fmt='%-11s %-4s %-4s %-5s %4s %7s %8s %8s %7s %6s %13s %8s %7s %6s %7s %6s %s\n'
	echo
	echo "1. h2load -t1 -cC -mM -nR (R: calibrated to ${duration} s), GET /plaintext (13 B) and /1m.bin (1 MiB)"
	echo "   MB = 10^6 bytes of body; fail/err: h2load's failed (any non-2xx: keel's 503s) and errored; rssMiB: the"
	echo "   server's RSS after the point"
	for tr in "${transports[@]}"; do
		h2load_args "$tr"
		for name in "${servers[@]}"; do
			[[ -n ${usable[$name]:-} ]] || continue
			start_server "$name" "$tr" || continue
			ok_start=1
			for b in "${bodies[@]}"; do check_get "$name" "$tr" "${body_path[$b]}" || ok_start=0; done
			if ((ok_start)) && [[ $tr == h2 ]]; then show_probe "$name" || ok_start=0; fi
			if ((!ok_start)); then
				bench_server_stop
				continue
			fi
			for b in "${bodies[@]}"; do
				url=$(scheme_of "$tr")://127.0.0.1:$port${body_path[$b]}
				size=${body_size[$b]}
				for shape in "${shapes[@]}"; do
					conns=${shape#c}
					for m in "${streams[@]}"; do
						alive "$name" || break 3
						f=$work/$name.$tr.$b.$shape.m$m
						# 1. Calibration and warm-up.
						rc=0
						bench_client $((calib + 20)) h2load "${h2args[@]}" -c "$conns" -m "$m" \
							-D "$calib" "$url" >"$f.calib.out" 2>&1 || rc=$?
						rate=$(calib_rate "$f.calib.out" "$size")
						if ((rate <= 0)); then
							# h2load 1.52's timed mode now and then never ends (killed: rc 124)
							# or prints no summary; count mode then sizes the run.
							bench_warn "$name $tr $b $shape m$m: the timed calibration gave no rate (h2load rc $rc); counting instead"
							mv "$f.calib.out" "$f.calib-timed.out"
							n0=$((conns * (m < 4 ? m : 4)))
							if ((n0 < 2 * conns)); then n0=$((2 * conns)); fi
							bench_client 60 h2load "${h2args[@]}" -c "$conns" -m "$m" -n "$n0" "$url" \
								>"$f.calib.out" 2>&1 || true
							rate=$(calib_rate "$f.calib.out" "$size")
						fi
						if ((rate <= 0)); then
							bench_warn "$name $tr $b $shape m$m: the calibration run answered nothing; see $f.calib.out"
							tail -5 "$f.calib.out" | sed 's/^/    /' >&2
							continue
						fi
						reqs=$((rate * duration))
						if ((reqs < 2 * conns)); then reqs=$((2 * conns)); fi
						# 2. Let the server finish what it had in flight.
						quiesce
						# 3. The measured run.
						rc=0
						bench_measure "$server_pid" 0 bench_client $((6 * duration + 20)) h2load \
							"${h2args[@]}" -c "$conns" -m "$m" -n "$reqs" "$url" >"$f.out" 2>&1 || rc=$?
						p=$(h2load_parse "$f.out")
						okn=$(bench_kv "$p" ok)
						failed=$(bench_kv "$p" failed)
						errored=$(bench_kv "$p" errored)
						proto=$(bench_kv "$p" proto -)
						if ((rc == 124)); then
							bench_warn "$name $tr $b $shape m$m: h2load did not finish within $((6 * duration + 20)) s (stall); see $f.out"
						elif ((rc != 0)); then
							bench_warn "$name $tr $b $shape m$m: h2load exited with $rc; see $f.out"
						fi
						if ((failed + errored > 0 || okn != reqs)); then
							bench_warn "$name $tr $b $shape m$m: $okn of $reqs answered 2xx, failed $failed, errored $errored; h2load said:"
							grep -E '^(finished|requests|status codes|traffic)' "$f.out" | sed 's/^/    /' >&2
						fi
						if [[ $proto != "$tr" ]]; then
							bench_warn "$name $tr $b $shape m$m: h2load spoke $proto, not $tr"
						fi
						if [[ $tr == h2 && $(bench_kv "$p" cipher -) != "$suite" ]]; then
							bench_warn "$name $tr $b $shape m$m: h2load negotiated $(bench_kv "$p" cipher -), not $suite"
						fi
						# Only whole bodies count: short ones (h2load counts any 2xx) lower the rate.
						counted=$okn
						if (($(bench_kv "$p" data) != okn * size)); then
							counted=$(($(bench_kv "$p" data) / size))
							((counted > okn)) && counted=$okn
							bench_warn "$name $tr $b $shape m$m: $(bench_kv "$p" data) body bytes for $okn responses of $size; counted as $counted"
						fi
						srv_s=$(bench_kv "$measured" srv_s)
						wall=$(bench_kv "$measured" wall_s)
						row=("$name" "$tr" "$b" "$shape" "$conns" "$m" "$reqs" "$(bench_kv "$p" h2_rps)"
							"$(awk -v d="$(bench_kv "$p" data)" -v s="$(bench_kv "$p" h2_secs)" \
								'BEGIN { printf "%.1f", (s > 0 ? d / 1e6 / s : 0) }')"
							"$(bench_kv "$measured" srv_pct)" "$(bench_kv "$measured" core_pct)"
							"$(awk -v n="$counted" -v c="$srv_s" 'BEGIN { printf "%.0f", (c > 0 ? n / c : 0) }')"
							"$(bench_kv "$measured" cli_pct)" "$(bench_kv "$measured" other_pct)"
							"$failed" "$errored" "$proto"
							"$(awk -v k="$(bench_rss_kib "$server_pid")" 'BEGIN { printf "%.0f", k / 1024 }')")
						bench_tsv "$load_tsv" "${row[@]}"
						# shellcheck disable=SC2059 # one format for the header and the rows
						tbl+=("$(printf "$fmt" "${row[@]:0:4}" "m${row[5]}" "${row[@]:6:7}" \
							"$(bench_noisy "${row[13]}")" "${row[14]}/${row[15]}" "${row[17]}" "$wall")")
					done
				done
			done
			bench_server_stop
		done
	done
	# shellcheck disable=SC2059 # one format for the header and the rows
	printf "$fmt" server tr body shape m reqs req/s MB/s srv_cpu% cpu0% req/srv_cpu_s cli_cpu% other% fail/err rssMiB wall_s
	printf '%s\n' "${tbl[@]}"
	tbl=()
	ratios "$load_tsv" 2,3,4,6 12 "requests per server CPU second (tr body shape m)"
fi

# ---- 2. Memory per idle connection. ----

idle_tsv=$out/h2-idle.tsv
printf 'server\ttransport\tconns\trep\theld\trss0_kib\trssN_kib\tbytes_per_conn\tfds0\tfdsN\tsetup_s\tnote\n' >"$idle_tsv"
if has_part idle; then
	ifmt='%-11s %-4s %6s %4s %6s %9s %9s %8s %6s %6s %8s %s\n'
	echo
	echo "2. memory per idle HTTP/2 connection: $idle_n connections, each one GET /plaintext then idle"
	echo "   (RSS in KiB of the serving process; B/conn = (rssN - rss0) / $idle_n)"
	for tr in "${transports[@]}"; do
		h2load_args "$tr"
		for name in "${idle_servers[@]}"; do
			[[ -n ${usable[$name]:-} ]] || continue
			for ((rep = 1; rep <= reps; rep++)); do
				start_server "$name" "$tr" || continue
				if ! check_get "$name" "$tr" /plaintext; then
					bench_server_stop
					continue
				fi
				url=$(scheme_of "$tr")://127.0.0.1:$port/plaintext
				bench_client 30 h2load "${h2args[@]}" -c 64 -m 1 -n 6400 "$url" >"$work/idle.warm.out" 2>&1 ||
					bench_warn "$name: the warm-up failed; see $work/idle.warm.out"
				sleep "$settle"
				rss0=$(bench_rss_kib "$server_pid")
				fd0=$(bench_fd_count "$server_pid")
				ready=$bench_tmp/idle.ready
				release=$bench_tmp/idle.release
				rm -f "$ready" "$release"
				tls_args=()
				if [[ $tr == h2 ]]; then tls_args=(--tls --ca "$work/ca.pem"); fi
				bench_client 200 /usr/bin/python3 bench/h2/idle_h2.py --port "$port" --n "$idle_n" \
					--size 13 "${tls_args[@]}" --ready "$ready" --release "$release" --hold 120 \
					>"$work/idle.out" 2>&1 &
				cli_pid=$!
				bench_track "$cli_pid"
				for ((i = 0; i < 1200; i++)); do
					[[ -e $ready ]] && break
					kill -0 "$cli_pid" 2>/dev/null || break
					sleep 0.1
				done
				note=
				if [[ ! -e $ready ]]; then note="client-not-ready"; fi
				sleep "$settle"
				rssn=$(bench_rss_kib "$server_pid")
				fdn=$(bench_fd_count "$server_pid")
				touch "$release"
				wait "$cli_pid" || true
				bench_untrack "$cli_pid"
				res=$(grep '^opened=' "$work/idle.out" || true)
				held=$(bench_kv "$res" held)
				if [[ -z $res || $held != "$idle_n" ]]; then
					bench_warn "$name $tr: held $held of $idle_n; client said:"
					sed 's/^/    /' "$work/idle.out" >&2
					note="${note:+$note,}held-$held"
				fi
				alive "$name" || note="${note:+$note,}server-died"
				row=("$name" "$tr" "$idle_n" "$rep" "$held" "$rss0" "$rssn"
					"$(awk -v a="$rss0" -v b="$rssn" -v n="$idle_n" 'BEGIN { printf "%.0f", (b - a) * 1024 / n }')"
					"$fd0" "$fdn" "$(bench_kv "$res" setup_s)" "${note:--}")
				bench_tsv "$idle_tsv" "${row[@]}"
				# shellcheck disable=SC2059
				tbl+=("$(printf "$ifmt" "${row[@]}")")
				bench_server_stop
			done
		done
	done
	# shellcheck disable=SC2059
	printf "$ifmt" server tr conns rep held rss0 rssN B/conn fds0 fdsN setup_s note
	printf '%s\n' "${tbl[@]}"
	tbl=()
	# Means over the repetitions.
	echo
	echo "mean bytes per idle connection (over $reps repetition(s)):"
	awk -F'\t' 'NR > 1 && $5 == $3 { s[$1 " " $2] += $8; n[$1 " " $2]++; if (!($1 " " $2 in o)) { o[$1 " " $2] = ++k; key[k] = $1 " " $2 } }
		END { for (i = 1; i <= k; i++) printf "  %-10s %8.0f B  (%.1f KiB)\n", key[i], s[key[i]] / n[key[i]], s[key[i]] / n[key[i]] / 1024 }' "$idle_tsv"
	ratios "$idle_tsv" 2 8 "bytes per idle connection (lower is better for keel)"
fi

# ---- The plot: one panel per transport and body, and one for memory. ----

# A gnuplot datablock: one line per point (columns keys of tsv joined, rows
# where column fc is fv), one column per server (keel nginx h2o) with the
# mean of column v ("-" where missing).
datablock() { # name tsv keys v filter_col filter_val
	awk -F'\t' -v name="$1" -v keys="$3" -v v="$4" -v fc="$5" -v fv="$6" '
		NR == 1 { next }
		fc > 0 && $fc != fv { next }
		{
			n = split(keys, kc, ",")
			k = $kc[1]
			for (i = 2; i <= n; i++)
				k = k " " $kc[i]
			sum[$1, k] += $v
			cnt[$1, k]++
			if (!(k in seen)) { seen[k] = 1; key[++nk] = k }
		}
		END {
			ns = split("keel nginx h2o", s, " ")
			printf "$%s << EOD\n", name
			for (i = 1; i <= nk; i++) {
				printf "\"%s\"", key[i]
				for (j = 1; j <= ns; j++)
					printf " %s", ((s[j], key[i]) in cnt) ? sum[s[j], key[i]] / cnt[s[j], key[i]] : "-"
				print ""
			}
			print "EOD"
		}' "$2"
}

has_rows() { (($(wc -l <"$1") > 1)); }

plot() {
	local gp=$out/h2.gp png=$out/h2.png n=0 t tr b i=0
	local -a panels=()
	local bars="using 2:xtic(1) lc rgb \"#1f77b4\" title \"keel\", '' using 3 lc rgb \"#2ca02c\" title \"nginx\", '' using 4 lc rgb \"#ff7f0e\" title \"h2o\""
	: >"$gp.data"
	if has_rows "$load_tsv"; then
		for tr in "${transports[@]}"; do
			for b in "${bodies[@]}"; do
				awk -F'\t' -v t="$tr" -v b="$b" 'NR > 1 && $2 == t && $3 == b { f = 1 } END { exit !f }' \
					"$load_tsv" || continue
				i=$((i + 1))
				# Rows of this transport and body only: filter on a joined key.
				awk -F'\t' -v t="$tr" -v b="$b" 'NR == 1 || ($2 == t && $3 == b)' "$load_tsv" >"$gp.sub"
				datablock "p$i" "$gp.sub" 4,6 12 0 x | sed 's/^"\(c[0-9]*\) \([0-9]*\)"/"\1 m\2"/' >>"$gp.data"
				panels+=("set title \"$tr, GET ${body_path[$b]} ($b): requests per server CPU second, by connections and -m\"
plot \$p$i $bars")
			done
		done
		rm -f "$gp.sub"
	fi
	if has_rows "$idle_tsv"; then
		datablock mem "$idle_tsv" 2 8 0 x >>"$gp.data"
		panels+=("set title \"bytes of RSS per idle HTTP/2 connection ($idle_n held; lower is better)\"
plot \$mem $bars")
	fi
	n=${#panels[@]}
	if ((n == 0)); then
		bench_warn "no points measured; no plot"
		return
	fi
	{
		cat "$gp.data"
		cat <<EOF
set terminal pngcairo size 1400,$((((n + 1) / 2) * 460 + 60)) font ",10" noenhanced
set output "$png"
set multiplot layout $(((n + 1) / 2)),$((n > 1 ? 2 : 1)) title "HTTP/2 (h2: TLS 1.3, $suite, $group, ECDSA P-256; h2c: prior knowledge): server (1 worker) on CPU $bench_srv_cpu, h2load on CPU $bench_cli_cpu, ${duration} s per point"
set datafile missing "-"
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key top left
set yrange [0:*]
EOF
		for t in "${panels[@]}"; do echo "$t"; done
		echo "unset multiplot"
	} >"$gp"
	rm -f "$gp.data"
	echo
	echo "wrote $load_tsv $idle_tsv"
	bench_plot "$gp" "$png"
}
plot
