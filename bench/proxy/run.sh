#!/usr/bin/env bash
# Reverse-proxy benchmark: wrk -> keel proxy -> upstream against
# wrk -> nginx proxy_pass (keepalive upstream pool) -> the same upstream, for
# a small (13-byte) and a 64 KiB response, then keel's fan-out example with
# fast upstreams and with one slow or failing replica. Run from anywhere:
#
#     bench/proxy/run.sh                     # ~3 minutes
#     QUICK=1 bench/proxy/run.sh             # ~1.5 minutes
#     PLOT=docs/proxy.png bench/proxy/run.sh # also draw the plot there
#
# Placement on this 2-core machine: the proxy under test alone on CPU 0
# (PROXY_CPU); wrk (one thread) and the upstream on CPU 1 (LOAD_CPU). The
# upstream is not what is measured, so it shares the load generator's core
# and the proxy keeps a core to itself; the direct row (wrk -> upstream,
# same placement) shows how many requests per second that core can feed.
# When CPU 1 is the bottleneck the proxy idles part of the time, so req/s
# alone can measure wrk+upstream: requests per proxy-CPU-second is the
# figure that compares proxies. The proxy's CPU is that of its whole process
# tree (nginx's master and worker; keel's threads are folded into its
# process; bench/lib.sh says exactly what) over wrk's run; cpu0% (all busy
# time on CPU 0 from /proc/stat) cross-checks it.
#
# The upstream (UPSTREAM=keel, the default): `keel serve --workers 1
# --status` over the two files (both fit keel's in-memory file cache), the
# same server behind both proxies. Its /_keel/status gives, per row, how
# many upstream connections the proxy opened during the point (up_conns: a
# pool that works opens about its size once, then none). keel serve rather
# than nginx as the upstream because the upstream shares CPU 1 with wrk and
# the cheaper it is, the more requests that core can feed a proxy: wrk ->
# keel serve direct does ~165k small req/s here, wrk -> nginx ~105k, and a
# proxy at 1.5x nginx's efficiency needs ~135k to be saturated. At 64 KiB
# the two upstreams feed alike (~45-60k req/s, far above what the proxies
# reach). UPSTREAM=nginx uses nginx (one process, sendfile,
# open_file_cache, keepalive_requests 10^6, stub_status for up_conns).
#
# nginx as the proxy: its normal deployment, one worker (master+worker both
# counted), `upstream u { server ...; keepalive 64; }`, proxy_http_version
# 1.1, proxy_set_header Connection "", access_log off, proxy_buffering on
# (the default: proxy_buffer_size 4k + proxy_buffers 8 4k, so a 64 KiB body
# the client does not take at once can spill to a temporary file; the spill
# column counts the warnings nginx logs for that). keepalive 64 caches 64
# idle connections: with 256 clients nginx opens more and closes the excess
# after each response, which here cost it half its efficiency (40-64k new
# upstream connections in 5 s). So the default PROXIES also run nginx-ka1024,
# the same with keepalive 1024 (any nginx-kaN works), and keel is compared
# with both; the target counts against the better one.
# keel: `build/keel proxy --listen ... --upstream ... --workers 1`. It adds
# X-Forwarded-For and Via; nginx with this config adds neither. Both keep
# client connections alive indefinitely (nginx keepalive_requests 10^6).
#
# Every proxy must return 200 and exactly the file (curl, compared byte for
# byte) before it is measured and again after each size. A row is refused,
# and not reported, when wrk saw any non-2xx/3xx response, no response, or
# fewer bytes per response than the body (from wrk's "MB read"); socket
# errors are reported in the errs column.
#
# Fan-out (skipped with a message when build/examples/fanout or fanout_svc
# is missing): fanout on CPU 0; four fanout_svc (price,
# info and two price replicas) and wrk on CPU 1. GET /quote combines price
# and info (All); GET /fast asks both replicas and takes the first answer
# (Any). Scenarios: every service answers in FAST_MS (1) ms; one replica
# answers in SLOW_MS (50) ms (Any should hide it: p99 near the fast case);
# one replica fails (--fail); and, as the contrast, info answering in
# SLOW_MS ms under /quote (All must wait for it).
#
# Environment: DURATION seconds per point (default 5; 3 with QUICK=1),
# WARMUP seconds of unmeasured load per proxy and size (default 1), CONNS
# (default "16 64 256"; "16 256" with QUICK=1), SIZES (default "small 64k"),
# PROXIES (default "direct nginx nginx-ka1024 keel"), UPSTREAM (keel|nginx),
# NGINX_KEEPALIVE (the plain nginx's pool, 64), KEEL_WORKERS (1), FANOUT
# (1; 0 skips it), FANOUT_CONNS (64), FAST_MS (1), SLOW_MS (50),
# FANOUT_TIMEOUT_MS (passed as --timeout-ms when set), PORT first port to
# try (7600), PROXY_CPU (0) and LOAD_CPU (1), OUT directory for the TSVs
# (default build/bench), PLOT where to draw the PNG (default
# $OUT/proxy.png), KEEL and EXAMPLES (default build/keel, build/examples),
# NO_INSTALL=1 never to install nginx (by default, as root, it comes from
# Debian).
#
# Prints the tables, the keel/nginx ratios per row against the issue's
# target (>= 1.5x requests per proxy-CPU-second with a lower p99), writes
# $OUT/proxy.tsv and $OUT/proxy-fanout.tsv and draws $PLOT. Configs, logs
# and the served files are under build/bench/proxy/.
set -euo pipefail

cd "$(dirname "$0")/../.."
. bench/lib.sh
bench_work proxy
out=${OUT:-$out}
mkdir -p "$out"
plot_png=${PLOT:-$out/proxy.png}

if ((bench_quick)); then
	duration=${DURATION:-3}
	read -ra conns_list <<<"${CONNS:-16 256}"
else
	duration=${DURATION:-5}
	read -ra conns_list <<<"${CONNS:-16 64 256}"
fi
warmup=${WARMUP:-1}
read -ra sizes <<<"${SIZES:-small 64k}"
read -ra proxies <<<"${PROXIES:-direct nginx nginx-ka1024 keel}"
upstream_kind=${UPSTREAM:-keel}
nginx_keepalive=${NGINX_KEEPALIVE:-64}
keel_workers=${KEEL_WORKERS:-1}
fanout=${FANOUT:-1}
fanout_conns=${FANOUT_CONNS:-64}
fast_ms=${FAST_MS:-1}
slow_ms=${SLOW_MS:-50}
port=${PORT:-7600}
bench_srv_cpu=${PROXY_CPU:-$bench_srv_cpu}
bench_cli_cpu=${LOAD_CPU:-$bench_cli_cpu}
keel=${KEEL:-build/keel}
examples=${EXAMPLES:-build/examples}

for v in "$duration" "$port" "$nginx_keepalive" "$keel_workers" "$fanout_conns" "$fast_ms" "$slow_ms"; do
	[[ $v =~ ^[0-9]+$ ]] || bench_die "DURATION, PORT, NGINX_KEEPALIVE, KEEL_WORKERS, FANOUT_CONNS, FAST_MS and SLOW_MS are whole numbers"
done
[[ $warmup =~ ^[0-9]+$ ]] || bench_die "WARMUP is whole seconds"
((duration >= 1 && duration <= 600)) || bench_die "DURATION is 1..600 seconds"
for c in "${conns_list[@]}" "$fanout_conns"; do
	[[ $c =~ ^[1-9][0-9]*$ ]] || bench_die "bad connection count $c"
done
for s in "${sizes[@]}"; do
	[[ $s == @(small|64k) ]] || bench_die "bad size $s (small or 64k)"
done
for p in "${proxies[@]}"; do
	[[ $p =~ ^(direct|nginx|nginx-ka[1-9][0-9]*|keel)$ ]] || bench_die "bad proxy $p (direct, nginx, nginx-kaN or keel)"
done
[[ $upstream_kind == @(nginx|keel) ]] || bench_die "UPSTREAM is nginx or keel"
bench_require wrk
bench_require curl

# The proxy holds two fds per client (the client's and an upstream's).
bench_fd_limit 20000

# ---- nginx, from Debian when missing. ----

bench_ensure_bin nginx nginx-light || true
nginx_bin=$(bench_find_bin nginx || true)
if [[ -z $nginx_bin ]]; then
	if [[ $upstream_kind == nginx ]]; then
		bench_die "nginx missing (run as root to install it, or UPSTREAM=keel)"
	fi
	bench_warn "nginx missing; skipping the nginx proxy"
fi
if [[ $upstream_kind == keel && ! -x $keel ]]; then
	bench_die "$keel missing: build first (make), or UPSTREAM=nginx"
fi

# ---- The files the upstream serves. ----

mkdir -p "$work/www"
printf 'Hello, World!' >"$work/www/small.txt"
head -c 65536 /dev/zero | tr '\0' k >"$work/www/64k.bin"
declare -A file_of=([small]=small.txt [64k]=64k.bin)

# ---- Measuring. ----

up_accepts() { # connections the upstream has accepted so far (its status page), or -
	if [[ $up_pid == 0 ]]; then
		echo -
	elif [[ $upstream_kind == nginx ]]; then
		curl -s --max-time 2 "http://127.0.0.1:$up_port/_status" |
			awk 'NR == 3 { print $1; f = 1 } END { if (!f) print "-" }'
	else
		curl -s --max-time 2 "http://127.0.0.1:$up_port/_keel/status" |
			awk '$1 == "connections_total" { print $2; f = 1 } END { if (!f) print "-" }'
	fi
}

# Runs wrk once against url while accounting CPU; prints one line of
# key=value (bench_wrk's, then upc and spill). proxy_pid 0 for none (direct),
# up_pids the upstream (or the fan-out services), spill_log a log whose
# "buffered to a temporary file" lines are counted (or /dev/null).
run_wrk() { # conns url proxy_pid up_pids spill_log
	local conns=$1 url=$2 ppid=$3 upids=$4 spill_log=$5 acc0 acc1 s0 s1 line upc=-

	acc0=$(up_accepts)
	s0=$(grep -c 'buffered to a temporary file' "$spill_log" 2>/dev/null || true)
	line=$(bench_wrk "$conns" "$duration" "$ppid" "$upids" "$url")
	s1=$(grep -c 'buffered to a temporary file' "$spill_log" 2>/dev/null || true)
	acc1=$(up_accepts)
	if [[ $acc0 != - && $acc1 != - ]]; then
		upc=$((acc1 - acc0 - 1)) # less the status request itself
	fi
	echo "$line upc=$upc spill=$((s1 - s0))"
}

# Why a row may not be reported ("" when it may): any non-2xx/3xx response,
# no response, or fewer bytes per response than the body.
refusal() { # line body_bytes
	local reqs non2xx bpr
	reqs=$(bench_kv "$1" reqs)
	non2xx=$(bench_kv "$1" non2xx)
	bpr=$(bench_kv "$1" bpr)
	if ((non2xx > 0)); then
		echo "$non2xx of $reqs responses were not 2xx/3xx"
	elif ((reqs == 0)); then
		echo "no responses"
	elif ((bpr < $2)); then
		echo "$bpr bytes read per response, less than the $2-byte body"
	fi
}

bench_busy_before
t_start=$(date +%s)

# ---- The upstream. ----

write_upstream_conf() { # port: the static upstream behind both proxies
	bench_nginx_conf "$work_abs/upstream.conf" off 8192 <<EOF
	sendfile on;
	tcp_nopush on;
	tcp_nodelay on;
	open_file_cache max=64 inactive=600s;
	open_file_cache_valid 600s;
	keepalive_requests 1000000;
	keepalive_timeout 300s;
	types {
		text/plain txt;
		application/octet-stream bin;
	}
	server {
		listen 127.0.0.1:$1 backlog=4096;
		root $work_abs/www;
		location = /_status {
			stub_status;
		}
	}
EOF
}

bench_free_port
up_port=$port
port=$((port + 1))
if [[ $upstream_kind == nginx ]]; then
	write_upstream_conf "$up_port"
	bench_start upstream "$up_port" "$work/upstream.log" "$bench_cli_cpu" "${bench_nginx[@]}" ||
		bench_die "the upstream did not start"
	up_desc="nginx $("$nginx_bin" -v 2>&1 | sed 's,.*/,,'), 1 process"
else
	bench_start upstream "$up_port" "$work/upstream.log" "$bench_cli_cpu" "$keel" serve \
		--listen "127.0.0.1:$up_port" --workers 1 --status "$work/www" ||
		bench_die "the upstream did not start"
	up_desc="keel serve, 1 worker"
fi
up_pid=$bench_pid
for s in "${sizes[@]}"; do
	bench_check_get upstream "http://127.0.0.1:$up_port/${file_of[$s]}" "$work/www/${file_of[$s]}" ||
		bench_die "the upstream does not serve its files"
done

# ---- The proxies. ----

# nginx as a reverse proxy in its normal deployment (master + one worker,
# keepalive upstream pool, buffering on).
write_nginx_conf() { # port keepalive
	bench_nginx_conf "$work_abs/nginx.conf" on 8192 <<EOF
	tcp_nodelay on;
	keepalive_requests 1000000;
	keepalive_timeout 300s;
	upstream u {
		server 127.0.0.1:$up_port;
		keepalive $2;
		keepalive_requests 1000000;
		keepalive_timeout 300s;
	}
	server {
		listen 127.0.0.1:$1 backlog=4096;
		location / {
			proxy_pass http://u;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
		}
	}
EOF
}

start_proxy() { # name: sets proxy_pid and url_base, or returns 1
	local name=$1
	bench_free_port
	case $name in
	nginx | nginx-ka*)
		[[ -n $nginx_bin ]] || return 1
		if [[ $name == nginx ]]; then
			write_nginx_conf "$port" "$nginx_keepalive"
		else
			write_nginx_conf "$port" "${name#nginx-ka}"
		fi
		: >"$work/nginx.error.log"
		bench_start "$name proxy" "$port" "$work/nginx.log" "$bench_srv_cpu" "${bench_nginx[@]}" ||
			return 1
		;;
	keel)
		if [[ ! -x $keel ]]; then
			bench_warn "$keel missing (make)"
			return 1
		fi
		bench_start "keel proxy" "$port" "$work/keel.log" "$bench_srv_cpu" "$keel" proxy \
			--listen "127.0.0.1:$port" --upstream "127.0.0.1:$up_port" \
			--workers "$keel_workers" || return 1
		;;
	esac
	proxy_pid=$bench_pid
	url_base=http://127.0.0.1:$port
	port=$((port + 1))
}

tsv=$out/proxy.tsv
printf 'proxy\tsize\tconns\treq_per_s\tp50_us\tp99_us\tproxy_cpu_pct\treq_per_proxy_cpu_s\tcpu0_busy_pct\treq_per_cpu0_busy_s\tupstream_cpu_pct\twrk_cpu_pct\tother_cpu_pct\tbytes_per_resp\tupstream_conns\tnginx_spills\tsocket_errors\n' >"$tsv"
fmt='%-12s %-5s %5s %7s %6s %6s %5s %8s %5s %8s %5s %5s %6s %6s %6s %5s %4s\n'
echo "proxy benchmark: $(uname -r), $(nproc) CPUs, ${duration} s per point; proxy on CPU $bench_srv_cpu, wrk -t1 and the upstream ($up_desc) on CPU $bench_cli_cpu"
echo "(p50/p99 in microseconds; prx% = the proxy's processes, a core is 100; cpu0% = all busy time on CPU $bench_srv_cpu, softirq included;"
echo " req/prx_s and req/cpu0_s = requests per second of each; up% = upstream, wrk% = wrk, other% = anything else (noise, want ~0);"
echo " B/resp = bytes read per response; up_conns = upstream connections opened during the point; spill = nginx temp-file warnings)"
# shellcheck disable=SC2059 # one format for the header and the rows
printf "$fmt" proxy size conns req/s p50_us p99_us prx% req/prx_s cpu0% req/cpu0_s up% wrk% other% B/resp up_conns spill errs

for name in "${proxies[@]}"; do
	proxy_pid=0
	spill_log=/dev/null
	if [[ $name == direct ]]; then
		url_base=http://127.0.0.1:$up_port
	else
		if ! start_proxy "$name"; then
			bench_warn "skipping the $name proxy"
			continue
		fi
		if [[ $name == nginx* ]]; then spill_log=$work/nginx.error.log; fi
	fi
	for s in "${sizes[@]}"; do
		f=${file_of[$s]}
		body=$(wc -c <"$work/www/$f")
		if ! bench_check_get "$name" "$url_base/$f" "$work/www/$f"; then
			bench_warn "refusing to measure $name with $s responses"
			continue
		fi
		bench_warm "$warmup" "$url_base/$f"
		for c in "${conns_list[@]}"; do
			if [[ $proxy_pid != 0 ]] && ! kill -0 "$proxy_pid" 2>/dev/null; then
				bench_warn "the $name proxy died; log $work/${name%%-*}.log"
				break 2
			fi
			line=$(run_wrk "$c" "$url_base/$f" "$proxy_pid" "$up_pid" "$spill_log")
			why=$(refusal "$line" "$body")
			if [[ -n $why ]]; then
				bench_warn "$name $s c$c REFUSED, not reported: $why"
				continue
			fi
			rps=$(bench_kv "$line" rps)
			cpu=$(bench_kv "$line" srv_pct)
			core=$(bench_kv "$line" core_pct)
			if [[ $name == direct ]]; then
				cpu=- eff=- core=- eff0=-
			else
				eff=$(bench_per_cpu "$rps" "$cpu")
				eff0=$(bench_per_cpu "$rps" "$core")
			fi
			spill=$(bench_kv "$line" spill)
			[[ $name == nginx* ]] || spill=-
			row=("$name" "$s" "$c" "$rps" "$(bench_kv "$line" p50_us)" "$(bench_kv "$line" p99_us)" "$cpu"
				"$eff" "$core" "$eff0" "$(bench_kv "$line" up_pct)" "$(bench_kv "$line" cli_pct)"
				"$(bench_kv "$line" other_pct)" "$(bench_kv "$line" bpr)" "$(bench_kv "$line" upc)" "$spill"
				"$(bench_kv "$line" errors)")
			bench_tsv "$tsv" "${row[@]}"
			# shellcheck disable=SC2059
			printf "$fmt" "${row[@]}"
		done
		# The proxy must still answer correctly after the load.
		if ! bench_check_get "$name" "$url_base/$f" "$work/www/$f"; then
			bench_warn "$name answered wrongly after the $s points; its rows above are suspect"
		fi
	done
	if [[ $proxy_pid != 0 ]]; then
		bench_stop "$proxy_pid"
	fi
done

# keel against each nginx, row by row, and the issue's target: at least
# 1.5x the requests per proxy-CPU-second with a lower p99.
awk -F'\t' '
	NR == 1 { next }
	{
		k = $2 " c" $3
		rate[$1, k] = $4
		p99[$1, k] = $6
		eff[$1, k] = $8
		eff0[$1, k] = $10
		noisy[$1, k] = $13 > 5
		if (!(k in seen)) { seen[k] = 1; key[++nk] = k }
		if ($1 ~ /^nginx/ && !($1 in isb)) { isb[$1] = 1; base[++nb] = $1 }
	}
	function r(v, b, k) {
		return (v["keel", k] > 0 && v[b, k] > 0) ? sprintf("%.2f", v["keel", k] / v[b, k]) : "-"
	}
	END {
		for (j = 1; j <= nb; j++) {
			b = base[j]
			printf "\nkeel / %s (target: >= 1.5x req per proxy-CPU-s and a lower p99; ! = a noisy point)\n", b
			printf "%-10s %7s %10s %10s %13s %8s\n", "point", "req/s", "req/prx_s", "req/cpu0_s", "p99 keel/" b, "target"
			for (i = 1; i <= nk; i++) {
				k = key[i]
				if (!(("keel", k) in eff) || !((b, k) in eff)) {
					printf "%-10s %7s %10s %10s %13s %8s\n", k, "-", "-", "-", "-", "-"
					continue
				}
				met = (eff[b, k] > 0 && eff["keel", k] >= 1.5 * eff[b, k] && p99["keel", k] < p99[b, k]) ? "met" : "not met"
				printf "%-10s %7s %9s%s %10s %13s %8s\n", k, r(rate, b, k), r(eff, b, k),
					(noisy["keel", k] || noisy[b, k]) ? "!" : " ", r(eff0, b, k), r(p99, b, k), met
			}
		}
	}' "$tsv"
echo "wrote $tsv"

bench_stop "$up_pid"
up_pid=0

# ---- The plot: req per proxy-CPU-second, req/s and p99, clustered by point. ----

draw_plot() {
	local gp=$work/proxy.gp
	mkdir -p "$(dirname "$plot_png")"
	awk -F'\t' -v png="$plot_png" -v title="Reverse proxy (1 worker) on CPU $bench_srv_cpu; wrk -t1 and the upstream ($up_desc) on CPU $bench_cli_cpu; ${duration} s per point" '
		NR == 1 { next }
		{
			if (!($1 in si)) { si[$1] = ++np; px[np] = $1 }
			k = $2 " c" $3
			if (!(k in ki)) { ki[k] = ++nk; key[nk] = k }
			rate[$1, k] = $4
			p99[$1, k] = $6 / 1000
			eff[$1, k] = $8
		}
		END {
			if (nk == 0)
				exit 1
			color["direct"] = "#7f7f7f"; color["nginx"] = "#2ca02c"; color["keel"] = "#1f77b4"
			color["nginx-ka1024"] = "#98df8a"
			# Columns: label, then eff, rate, p99 for each proxy.
			print "$d << EOD"
			for (i = 1; i <= nk; i++) {
				printf "\"%s\"", key[i]
				for (j = 1; j <= np; j++) {
					q = px[j] SUBSEP key[i]
					printf " %s %s %s", (q in eff) ? eff[q] : "-", (q in rate) ? rate[q] : "-",
						(q in p99) ? p99[q] : "-"
				}
				print ""
			}
			print "EOD"
			print "set terminal pngcairo size 1800,560 font \",10\" noenhanced"
			printf "set output \"%s\"\n", png
			printf "set multiplot layout 1,3 title \"%s\"\n", title
			print "set datafile missing \"-\""
			print "set style data histogram; set style histogram clustered gap 1"
			print "set style fill solid 0.85 border -1; set boxwidth 0.9"
			print "set grid ytics; set key top right; set xtics rotate by -30"
			for (panel = 1; panel <= 3; panel++) {
				if (panel == 1)
					print "set title \"requests per proxy-CPU-second (higher is better)\"; set yrange [0:*]; unset logscale y"
				else if (panel == 2)
					print "set title \"requests per second (direct: wrk -> upstream, no proxy)\"; set yrange [0:*]"
				else
					print "set title \"p99 latency, ms (lower is better; log scale)\"; set logscale y; set yrange [*:*]"
				if (panel == 1 && np == ("direct" in si)) {
					print "set label 1 \"no proxy measured\" at graph 0.4, graph 0.5"
					print "plot [0:1] [0:1] NaN notitle"
					print "unset label 1"
					continue
				}
				printf "plot "
				first = 1
				for (j = 1; j <= np; j++) {
					if (panel == 1 && px[j] == "direct")
						continue
					c = (px[j] in color) ? color[px[j]] : "black"
					printf "%s$d using %d:xtic(1) lc rgb \"%s\" title \"%s\"",
						first ? "" : ", ", 1 + 3 * (j - 1) + panel, c, px[j]
					first = 0
				}
				print ""
			}
			print "unset multiplot"
		}' "$tsv" >"$gp" || {
		bench_warn "no rows measured; no plot"
		return
	}
	bench_plot "$gp" "$plot_png"
}
draw_plot

# ---- The fan-out example. ----


fanout_bin=$examples/fanout
svc_bin=$examples/fanout_svc
if [[ $fanout != 1 ]]; then
	echo "run.sh: FANOUT=$fanout: skipping the fan-out example"
elif [[ ! -x $fanout_bin || ! -x $svc_bin ]]; then
	echo
	echo "run.sh: $fanout_bin or $svc_bin not built yet; skipping the fan-out example"
else
	ftsv=$out/proxy-fanout.tsv
	printf 'scenario\tpath\tconns\treq_per_s\tp50_us\tp99_us\tfanout_cpu_pct\treq_per_fanout_cpu_s\tservices_cpu_pct\twrk_cpu_pct\tother_cpu_pct\tsocket_errors\n' >"$ftsv"
	ffmt='%-22s %-6s %5s %8s %7s %7s %6s %13s %6s %6s %6s %5s\n'
	echo
	echo "fan-out example: fanout on CPU $bench_srv_cpu; price, info, 2 replicas and wrk -t1 -c$fanout_conns on CPU $bench_cli_cpu; ${duration} s per point"
	echo "(/quote = All(price, info); /fast = Any(replica 1, replica 2); fast services answer in $fast_ms ms, slow ones in $slow_ms ms)"
	# shellcheck disable=SC2059
	printf "$ffmt" scenario path conns req/s p50_us p99_us fan% req/fan_cpu_s svc% wrk% other% errs

	# scenario path price_args info_args replica1_args replica2_args
	scenarios=(
		"all-${fast_ms}ms /quote|--delay-ms $fast_ms|--delay-ms $fast_ms|--delay-ms $fast_ms|--delay-ms $fast_ms"
		"all-${fast_ms}ms /fast|--delay-ms $fast_ms|--delay-ms $fast_ms|--delay-ms $fast_ms|--delay-ms $fast_ms"
		"replica2-${slow_ms}ms /fast|--delay-ms $fast_ms|--delay-ms $fast_ms|--delay-ms $fast_ms|--delay-ms $slow_ms"
		"replica2-fails /fast|--delay-ms $fast_ms|--delay-ms $fast_ms|--delay-ms $fast_ms|--delay-ms $fast_ms --fail"
		"info-${slow_ms}ms /quote|--delay-ms $fast_ms|--delay-ms $slow_ms|--delay-ms $fast_ms|--delay-ms $fast_ms"
	)
	for sc in "${scenarios[@]}"; do
		IFS='|' read -r head a_price a_info a_r1 a_r2 <<<"$sc"
		read -r scen path <<<"$head"
		svc_pids=()
		svc_ports=()
		ok=1
		i=0
		for spec in "price $a_price" "info $a_info" "price $a_r1" "price $a_r2"; do
			kind=${spec%% *}
			read -ra extra <<<"${spec#* }"
			bench_free_port
			if ! bench_start "fanout_svc $kind" "$port" "$work/svc$i.log" "$bench_cli_cpu" \
				"$svc_bin" --listen "127.0.0.1:$port" --kind "$kind" "${extra[@]}"; then
				ok=0
				break
			fi
			svc_pids+=("$bench_pid")
			svc_ports+=("$port")
			port=$((port + 1))
			i=$((i + 1))
		done
		fan_pid=0
		if ((ok)); then
			bench_free_port
			targs=()
			if [[ -n ${FANOUT_TIMEOUT_MS:-} ]]; then targs=(--timeout-ms "$FANOUT_TIMEOUT_MS"); fi
			if bench_start fanout "$port" "$work/fanout.log" "$bench_srv_cpu" "$fanout_bin" \
				--listen "127.0.0.1:$port" --price "127.0.0.1:${svc_ports[0]}" \
				--info "127.0.0.1:${svc_ports[1]}" --replica "127.0.0.1:${svc_ports[2]}" \
				--replica "127.0.0.1:${svc_ports[3]}" "${targs[@]}"; then
				fan_pid=$bench_pid
			else
				ok=0
			fi
		fi
		url="http://127.0.0.1:$port$path?sym=KEEL"
		port=$((port + 1))
		if ((ok)); then
			: >"$bench_tmp/body"
			code=$(curl -s -o "$bench_tmp/body" -w '%{http_code}' --max-time 5 "$url") || code=000
			if [[ $code != 200 ]]; then
				bench_warn "fanout $scen: GET $path gave $code ($(head -c 200 "$bench_tmp/body")); skipping it"
				ok=0
			fi
		fi
		if ((ok)); then
			bench_warm "$warmup" "$url"
			line=$(run_wrk "$fanout_conns" "$url" "$fan_pid" "${svc_pids[*]}" /dev/null)
			why=$(refusal "$line" 1)
			if [[ -n $why ]]; then
				bench_warn "fanout $scen $path REFUSED, not reported: $why"
			else
				rps=$(bench_kv "$line" rps)
				cpu=$(bench_kv "$line" srv_pct)
				row=("$scen" "$path" "$fanout_conns" "$rps" "$(bench_kv "$line" p50_us)"
					"$(bench_kv "$line" p99_us)" "$cpu" "$(bench_per_cpu "$rps" "$cpu")"
					"$(bench_kv "$line" up_pct)" "$(bench_kv "$line" cli_pct)" "$(bench_kv "$line" other_pct)"
					"$(bench_kv "$line" errors)")
				bench_tsv "$ftsv" "${row[@]}"
				# shellcheck disable=SC2059
				printf "$ffmt" "${row[@]}"
			fi
		fi
		if [[ $fan_pid != 0 ]]; then bench_stop "$fan_pid"; fi
		for p in "${svc_pids[@]}"; do bench_stop "$p"; done
	done
	echo "wrote $ftsv"
fi

echo
echo "took $(($(date +%s) - t_start)) s; load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
