#!/usr/bin/env bash
# Overload benchmark: from a quarter of the saturation rate to four times it,
# does the server keep its goodput, bound the latency of what it admits, and
# keep its memory flat? keel's examples/hello against nginx, side by side,
# driven open loop by `build/keel load`. Run from the repo root (as root to
# install what nginx needs):
#
#     bench/overload/run.sh                # ~6 minutes
#     QUICK=1 bench/overload/run.sh        # shorter steps
#
# The work. On this 2-core machine the generator gets one core and the
# server the other, and a server answering trivial requests costs about what
# the generator spends sending them, so the generator could never offer 4x
# the saturation rate S. Each request therefore carries real CPU work:
# GET /work?us=N burns N microseconds (WORK_US, default 50) in the handler,
# which puts S near 1/(N + overhead). nginx does the same work in its perl
# module (libnginx-mod-http-perl: a handler that spins on the thread CPU
# clock for N us), so both servers pay for the same thing per request.
#
# Servers (SERVERS, default "keel keel-default keel-noshed nginx"), each one
# worker pinned to CPU 0, started fresh for each server:
#   keel          hello --queue-delay-us QUEUE_DELAY_US (default 2000): shed
#                 what would wait longer than 2 ms of work
#   keel-default  hello with the library default (20 ms)
#   keel-noshed   hello --queue-delay-us 0: no admission control, so the
#                 difference to "keel" is the admission control alone
#   nginx         nginx 1.22 + perl, one worker, keepalive, no access log
# The generator runs pinned to CPU 1.
#
# Per server:
#   1. S = goodput of a closed-loop run (64 connections, SAT_DURATION s).
#   2. Open loop at FACTORS x S (default "0.25 0.5 1 2 4"), STEP seconds each
#      (default 10; 5 with QUICK=1), CONNS connections (default 16) each
#      pipelining up to PIPELINE requests (default 256): goodput (2xx per
#      second), shed 503s, other errors, latency percentiles of the admitted
#      (2xx) requests timed from when each was due, the generator's offered
#      rate (a check that it kept its schedule), the per-second p99 range
#      over the step (from the second second on), and the server's RSS and
#      fd count sampled every second (max over the step; RSS before any load).
#   3. Slowloris (SLOWLORIS=0 to skip): slowhttptest holds SLOW_CONNS (default
#      5000) slow-header connections while the generator offers 0.5 S; goodput
#      and p99 against the same rate without the attack. slowhttptest spins on
#      its CPU, so it runs as SCHED_IDLE beside the generator (otherwise the
#      generator's own scheduling delays, ~6 ms, show up as everyone's p99).
#
# Prints tables, writes build/bench/overload.tsv, overload-slowloris.tsv and
# build/bench/overload.png (goodput and p99 against the offered load).
set -euo pipefail

cd "$(dirname "$0")/../.."
. bench/lib.sh
bench_work overload

work_us=${WORK_US:-50}
step=${STEP:-$( ((bench_quick)) && echo 5 || echo 10)}
sat_dur=${SAT_DURATION:-5}
conns=${CONNS:-16}
pipeline=${PIPELINE:-256}
qd=${QUEUE_DELAY_US:-2000}
read -ra factors <<<"${FACTORS:-0.25 0.5 1 2 4}"
read -ra servers <<<"${SERVERS:-keel keel-default keel-noshed nginx}"
slowloris=${SLOWLORIS:-1}
slow_conns=${SLOW_CONNS:-5000}
port=${PORT:-7400}
keel=build/keel
hello=build/examples/hello

[[ -x $keel && -x $hello ]] || bench_die "build first (make)"
bench_require python3
bench_fd_limit 20000
# keel load bounds itself (-d); this bounds a wedged one.
load_timeout=$(((step > sat_dur ? step : sat_dur) + 60))

# What nginx needs: nginx and its perl module, from Debian, as root.
perl_mod=/usr/lib/nginx/modules/ngx_http_perl_module.so
missing=()
bench_ensure_bin nginx nginx-light || missing+=(nginx-light)
bench_ensure_file "$perl_mod" libnginx-mod-http-perl || missing+=(libnginx-mod-http-perl)
if [[ $slowloris == 1 ]]; then bench_ensure_bin slowhttptest slowhttptest || missing+=(slowhttptest); fi
if ((${#missing[@]})); then
	bench_warn "missing ${missing[*]} (run as root to install); skipping what needs them"
fi

# Start server $1 on $port; sets server_pid (the process to stop) and mem_pid
# (the process whose memory and fds are sampled: nginx's worker).
start_server() {
	local name=$1
	bench_free_port
	local -a cmd=("$hello" --workers 1 --listen "127.0.0.1:$port")
	case $name in
	keel) cmd+=(--queue-delay-us "$qd") ;;
	keel-default) ;;
	keel-noshed) cmd+=(--queue-delay-us 0) ;;
	nginx)
		[[ -e $perl_mod ]] && bench_find_bin nginx >/dev/null || return 1
		mkdir -p "$work_abs/nginx"
		cat >"$work_abs/nginx/keelwork.pm" <<'EOF'
package keelwork;
use nginx;
use Time::HiRes qw(clock_gettime CLOCK_THREAD_CPUTIME_ID);
sub handler {
    my $r = shift;
    my $us = 50;
    if (($r->args // "") =~ /us=(\d+)/) { $us = $1; }
    my $t0 = clock_gettime(CLOCK_THREAD_CPUTIME_ID);
    while ((clock_gettime(CLOCK_THREAD_CPUTIME_ID) - $t0) * 1e6 < $us) {}
    $r->send_http_header("text/plain");
    $r->print("done\n");
    return OK;
}
1;
EOF
		bench_nginx_conf "$work_abs/nginx/nginx.conf" on 20000 "load_module $perl_mod;" <<EOF
	perl_modules $work_abs/nginx;
	perl_require keelwork.pm;
	server {
		listen 127.0.0.1:$port;
		keepalive_requests 10000000;
		keepalive_timeout 300s;
		location /work { perl 'sub { return keelwork::handler(@_); }'; }
		location /plaintext { return 200 "Hello, World!"; }
	}
EOF
		cmd=("${bench_nginx[@]}")
		;;
	*) bench_die "unknown server $name" ;;
	esac
	bench_server_start "$name" "$work/$name.log" "${cmd[@]}" || return 1
	# Listening is not answering: nginx's worker may not be up yet.
	for _ in $(seq 50); do
		if curl -sf -o /dev/null "http://127.0.0.1:$port/work?us=1"; then break; fi
		sleep 0.1
	done
	curl -sf -o /dev/null "http://127.0.0.1:$port/work?us=1" || {
		bench_warn "$name did not answer"
		bench_server_stop
		return 1
	}
	mem_pid=$server_pid
	if [[ $name == nginx ]]; then
		mem_pid=$(bench_child "$server_pid") || {
			bench_warn "nginx: no worker process appeared"
			bench_server_stop
			return 1
		}
	fi
}


# Sample RSS and fds of $1 once a second into $2 until killed.
sampler() {
	while kill -0 "$1" 2>/dev/null; do
		echo "$(bench_rss_kib "$1") $(bench_fd_count "$1")" >>"$2"
		sleep 1
	done
}

# Run the generator: load JSON-FILE [keel load args...]
load() {
	local json=$1
	shift
	bench_client "$load_timeout" "$keel" load -q --json "$json" "$@" >/dev/null 2>"$json.err" || true
}

# Summarise a JSON result: prints "goodput offered shed errors p50 p90 p99 p999 max p99lo p99hi".
summ() {
	python3 - "$1" <<'EOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception:
    print("0 0 0 0 0 0 0 0 0 0 0"); sys.exit()
e = r.get("errors", {})
shed = e.get("shed_503", 0)
other = sum(v for k, v in e.items() if k != "shed_503")
l = r.get("latency_us", {})
iv = [x for x in r.get("intervals", [])[1:] if x.get("ok", 0) > 0]
p99s = [x["p99_us"] for x in iv]
lo, hi = (min(p99s), max(p99s)) if p99s else (0, 0)
print("%.0f %.0f %d %d %d %d %d %d %d %d %d" % (r.get("requests_per_sec", 0), r.get("offered_per_sec", 0), shed, other,
      l.get("p50", 0), l.get("p90", 0), l.get("p99", 0), l.get("p999", 0), l.get("max", 0), lo, hi))
EOF
}

ms() { awk -v u="$1" 'BEGIN { if (u >= 100000) printf "%.0f", u / 1000; else printf "%.2f", u / 1000 }'; }

tsv=$out/overload.tsv
echo -e "server\tfactor\trate\toffered\tgoodput\tgoodput_pct_of_S\tshed\terrors\tp50_us\tp90_us\tp99_us\tp999_us\tmax_us\tp99_lo_us\tp99_hi_us\trss_idle_kb\trss_max_kb\tfds_max" >"$tsv"
slow_tsv=$out/overload-slowloris.tsv
echo -e "server\trate\tcase\tgoodput\tp99_us\tshed\terrors\tslow_conns_seen" >"$slow_tsv"

echo "overload: /work?us=$work_us, open loop $conns connections x pipeline $pipeline, ${step}s steps; server CPU 0, generator CPU 1"
echo "machine load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for name in "${servers[@]}"; do
	if ! start_server "$name"; then
		bench_warn "skipping $name"
		continue
	fi
	url="http://127.0.0.1:$port/work?us=$work_us"
	load "$work/$name-warm.json" -c 64 -d 1 "$url"
	rss_idle=$(bench_rss_kib "$mem_pid")
	load "$work/$name-sat.json" -c 64 -d "$sat_dur" "$url"
	read -r S _ <<<"$(summ "$work/$name-sat.json")"
	if [[ -z $S || $S == 0 ]]; then
		bench_warn "$name: no saturation rate measured"
		bench_server_stop
		continue
	fi
	echo
	echo "== $name: saturation S = $S req/s (closed loop, 64 connections); RSS idle $((rss_idle / 1024)) MiB"
	printf "%-6s %8s %8s %8s %6s %8s %6s %9s %9s %9s %9s %17s %8s %6s\n" factor rate offered goodput "%S" shed errors \
		"p50 ms" "p99 ms" "p99.9 ms" "max ms" "p99/s range ms" "RSS MiB" fds
	for f in "${factors[@]}"; do
		rate=$(awk -v s="$S" -v f="$f" 'BEGIN { printf "%d", s * f }')
		samples=$work/$name-$f.samples
		: >"$samples"
		sampler "$mem_pid" "$samples" &
		spid=$!
		bench_track "$spid"
		load "$work/$name-$f.json" -c "$conns" -p "$pipeline" -d "$step" -R "$rate" "$url"
		bench_stop "$spid"
		read -r good off shed errs p50 p90 p99 p999 max lo hi <<<"$(summ "$work/$name-$f.json")"
		read -r rss_max fds_max <<<"$(awk 'BEGIN {r = 0; f = 0} {if ($1 > r) r = $1; if ($2 > f) f = $2} END {print r, f}' "$samples")"
		pct=$(awk -v g="$good" -v s="$S" 'BEGIN { printf "%.0f", 100 * g / s }')
		printf "%-6s %8s %8s %8s %6s %8s %6s %9s %9s %9s %9s %17s %8.1f %6s\n" "$f" "$rate" "$off" "$good" "$pct" "$shed" \
			"$errs" "$(ms "$p50")" "$(ms "$p99")" "$(ms "$p999")" "$(ms "$max")" "$(ms "$lo")-$(ms "$hi")" \
			"$(awk -v k="$rss_max" 'BEGIN { print k / 1024 }')" "$fds_max"
		echo -e "$name\t$f\t$rate\t$off\t$good\t$pct\t$shed\t$errs\t$p50\t$p90\t$p99\t$p999\t$max\t$lo\t$hi\t$rss_idle\t$rss_max\t$fds_max" >>"$tsv"
	done
	if [[ $slowloris == 1 ]] && command -v slowhttptest >/dev/null && [[ $name != keel-default && $name != keel-noshed ]]; then
		rate=$(awk -v s="$S" 'BEGIN { printf "%d", s * 0.5 }')
		load "$work/$name-slow-base.json" -c "$conns" -p "$pipeline" -d "$step" -R "$rate" "$url"
		chrt -i 0 taskset -c "$bench_cli_cpu" slowhttptest -H -c "$slow_conns" -r 2000 -i 5 -l $((step + 15)) -p 3 \
			-u "http://127.0.0.1:$port/plaintext" >"$work/$name-slowhttptest.log" 2>&1 &
		slow_pid=$!
		bench_track "$slow_pid"
		sleep 5 # let it open its connections
		conns_seen=$(($(bench_fd_count "$mem_pid")))
		load "$work/$name-slow.json" -c "$conns" -p "$pipeline" -d "$step" -R "$rate" "$url"
		conns_seen2=$(($(bench_fd_count "$mem_pid")))
		bench_stop "$slow_pid"
		read -r g0 _ s0 e0 _ _ q0 _ <<<"$(summ "$work/$name-slow-base.json")"
		read -r g1 _ s1 e1 _ _ q1 _ <<<"$(summ "$work/$name-slow.json")"
		echo "   slowloris ($slow_conns slow-header connections; server fds ${conns_seen}..${conns_seen2}) at 0.5 S = $rate req/s:"
		echo "     without: goodput $g0, p99 $(ms "$q0") ms, shed $s0, errors $e0"
		echo "     with:    goodput $g1, p99 $(ms "$q1") ms, shed $s1, errors $e1  ->" \
			"goodput $(awk -v a="$g1" -v b="$g0" 'BEGIN { printf "%.1f%%", 100 * a / b }'), p99 x$(awk -v a="$q1" -v b="$q0" 'BEGIN { printf "%.2f", a / b }')"
		echo -e "$name\t$rate\twithout\t$g0\t$q0\t$s0\t$e0\t0" >>"$slow_tsv"
		echo -e "$name\t$rate\twith\t$g1\t$q1\t$s1\t$e1\t$conns_seen" >>"$slow_tsv"
	fi
	bench_server_stop
done
echo
echo "machine load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrote $tsv and $slow_tsv"

gp=$work/overload.gp
# One gnuplot "plot" line over every server in the TSV, for column expression $1.
plot_servers() {
	local first=1 name
	echo -n "plot "
	for name in "${servers[@]}"; do
		grep -q "^$name	" "$tsv" || continue
		[[ $first == 1 ]] || echo -n ", "
		first=0
		echo -n "'< grep \"^$name	\" $tsv' using 2:$1 with linespoints title '$name'"
	done
	echo
}
{
	echo "set terminal pngcairo size 1200,480 font 'sans,10'"
	echo "set output '$out/overload.png'"
	echo "set multiplot layout 1,2 title 'Overload: open loop at 0.25..4 x S, /work?us=$work_us, one worker on one core'"
	echo "set xlabel 'offered load (x saturation rate S)'; set logscale x 2; set key top left"
	echo "set ylabel 'goodput (% of S)'; set yrange [0:130]; set grid"
	plot_servers 6
	echo "set ylabel 'p99 of admitted requests (ms)'; set logscale y; set yrange [*:*]; set key top left"
	# shellcheck disable=SC2016 # a gnuplot expression, not shell
	plot_servers '($11/1000)'
	echo "unset multiplot"
} >"$gp"
bench_plot "$gp" "$out/overload.png"
