#!/usr/bin/env bash
# Echo benchmark: keel's echo server on each backend against a classic epoll
# echo server (epoll_echo.c), driven by a closed-loop client (echo_load.c).
# Run from the repo root:
#
#     bench/echo/run.sh
#
# Environment: DURATION seconds per point (default 5), WARMUP seconds before
# counting (default 1), QUICK=1 for a reduced sweep, CONNS / SIZES / SERVERS to
# pick points and servers by hand (space-separated), PORT first port to try
# (default 7100).
#
# Each server runs pinned to CPU 0 with one worker, the client pinned to CPU 1.
# Server CPU is that of the server's whole process tree (bench/lib.sh says
# exactly what) over the whole client run. The headline number is messages
# per server CPU second: on two cores the client often saturates first, so
# msgs/s alone may measure the client; work per CPU second measures the
# server. The CPU window spans the whole client run (connect, warmup,
# measured phase) while messages are counted only after warmup, so msgs per
# CPU second is msgs/s divided by the server's CPU fraction, which assumes
# the warmup runs at the steady state.
#
# Prints a table, writes build/bench/echo.tsv, draws build/bench/echo.png and
# prints keel/epoll-echo ratios for every point.
set -euo pipefail

cd "$(dirname "$0")/../.."
. bench/lib.sh

warmup=${WARMUP:-1}
if ((bench_quick)); then
	duration=${DURATION:-2}
	read -ra conns_list <<<"${CONNS:-1 50 1000}"
	read -ra sizes <<<"${SIZES:-128}"
else
	duration=${DURATION:-5}
	read -ra conns_list <<<"${CONNS:-1 50 300 1000}"
	read -ra sizes <<<"${SIZES:-128 1024}"
fi
read -ra servers <<<"${SERVERS:-keel-uring keel-epoll keel-sqpoll keel-zc epoll-echo}"
port=${PORT:-7100}

for c in bench/echo/epoll_echo.c bench/echo/echo_load.c; do
	b=$(basename "$c" .c)
	cc -O2 -Wall -Wextra -o "$out/$b" "$c"
done

# Each side needs one fd per connection plus a few.
max_conns=0
for c in "${conns_list[@]}"; do
	if ((c > max_conns)); then max_conns=$c; fi
done
bench_fd_limit 20000 $((max_conns + 64))

server_pid=
start_server() { # name: sets server_pid, or returns 1 to skip this server
	local name=$1
	local -a cmd

	if [[ $name == keel-* && ! -x build/keel ]]; then
		bench_warn "build/keel not found, skipping $name"
		return 1
	fi
	bench_free_port
	case $name in
	keel-uring) cmd=(env KEEL_BACKEND=io_uring build/keel echo) ;;
	keel-epoll) cmd=(env KEEL_BACKEND=epoll build/keel echo) ;;
	keel-sqpoll)
		# The SQPOLL kernel thread inherits the server's CPU pin: on this
		# 2-core box it shares CPU 0 with the loop; its CPU time is counted.
		cmd=(env KEEL_BACKEND=io_uring KEEL_SQPOLL=1 build/keel echo)
		;;
	keel-zc)
		# Zero-copy send for every echo of at least 1 KiB.
		cmd=(env KEEL_BACKEND=io_uring KEEL_SEND_ZC=1024 build/keel echo)
		;;
	epoll-echo) cmd=("$out/epoll_echo" "127.0.0.1:$port") ;;
	*)
		bench_warn "unknown server $name"
		return 1
		;;
	esac
	if [[ $name == keel-* ]]; then cmd+=(--listen "127.0.0.1:$port" --workers 1); fi
	bench_server_start "$name" "$out/$name.log" "${cmd[@]}"
}

tsv=$out/echo.tsv
printf 'server\tconns\tsize\tmsgs_per_s\tserver_cpu_pct\tmsgs_per_server_cpu_s\tclient_cpu_pct\tother_cpu_pct\terrors\n' >"$tsv"
fmt='%-11s %6s %6s %10s %8s %14s %8s %7s %6s\n'
echo "echo benchmark: $(uname -r), $(nproc) CPUs, ${duration}s per point after ${warmup}s warmup"
echo "(other% is CPU used by other processes during a point: noise, want ~0)"
# shellcheck disable=SC2059 # one format for the header and the rows
printf "$fmt" server conns size msgs/s srv_cpu% msgs/srv_cpu_s cli_cpu% other% errors

run_point() { # name conns size
	local name=$1 conns=$2 size=$3 rc=0 line msgs cpu
	local -a row
	local res=$bench_tmp/point.out err=$bench_tmp/point.err

	# The timeout bounds a wedged client: connect (5 s) + warmup + duration + slack.
	bench_measure "$server_pid" 0 bench_client $((duration + warmup + 15)) \
		"$out/echo_load" --host 127.0.0.1 --port "$port" --connections "$conns" \
		--size "$size" --duration "$duration" --warmup "$warmup" >"$res" 2>"$err" || rc=$?
	line=$(cat "$res")
	if [[ $line != msgs=* ]]; then
		bench_warn "$name conns=$conns size=$size: client failed (rc $rc):"
		cat "$err" >&2
		line="msgs=0 secs=0 msgs_per_sec=0 errors=$conns"
	elif ((rc != 0)); then
		sed 's/^/    /' "$err" >&2
	fi
	printf -v msgs '%.0f' "$(bench_kv "$line" msgs_per_sec)"
	cpu=$(bench_kv "$measured" srv_pct)
	row=("$name" "$conns" "$size" "$msgs" "$cpu" "$(bench_per_cpu "$msgs" "$cpu")"
		"$(bench_kv "$measured" cli_pct)" "$(bench_kv "$measured" other_pct)"
		"$(bench_kv "$line" errors)")
	bench_tsv "$tsv" "${row[@]}"
	row[7]=$(bench_noisy "${row[7]}")
	# shellcheck disable=SC2059
	printf "$fmt" "${row[@]}"
}

for name in "${servers[@]}"; do
	start_server "$name" || continue
	for size in "${sizes[@]}"; do
		for conns in "${conns_list[@]}"; do
			if ! kill -0 "$server_pid" 2>/dev/null; then
				bench_warn "$name died; log $out/$name.log"
				break 2
			fi
			run_point "$name" "$conns" "$size"
		done
	done
	# keel gives open connections a grace period; none are open by now.
	bench_server_stop
done

# Ratios against the classic server, point by point.
awk -F'\t' '
	NR == 1 { next }
	{
		key = $2 SUBSEP $3
		rate[$1, key] = $4
		eff[$1, key] = $6
		noisy[$1, key] = $8 > 5
		if (!(key in seen)) { seen[key] = 1; keys[++nk] = key }
	}
	function ratio(a, b, flag) {
		return (b > 0 && a != "") ? sprintf("%.2f%s", a / b, flag ? "!" : "") : "-"
	}
	END {
		have = 0
		for (i = 1; i <= nk; i++)
			if (("epoll-echo", keys[i]) in rate && \
			    (("keel-uring", keys[i]) in rate || ("keel-epoll", keys[i]) in rate))
				have = 1
		if (!have)
			exit
		printf "\nratios to epoll-echo (msgs/s and msgs per server-CPU-s; ! = a noisy point)\n"
		printf "%6s %6s %13s %13s %13s %13s %13s %13s\n", "conns", "size",
			"uring msgs/s", "uring /cpu", "epoll msgs/s", "epoll /cpu", "sqpoll /cpu", "zc /cpu"
		for (i = 1; i <= nk; i++) {
			k = keys[i]
			split(k, cs, SUBSEP)
			b = rate["epoll-echo", k]; be = eff["epoll-echo", k]
			nu = noisy["epoll-echo", k] || noisy["keel-uring", k]
			ne = noisy["epoll-echo", k] || noisy["keel-epoll", k]
			ns = noisy["epoll-echo", k] || noisy["keel-sqpoll", k]
			nz = noisy["epoll-echo", k] || noisy["keel-zc", k]
			printf "%6s %6s %13s %13s %13s %13s %13s %13s\n", cs[1], cs[2],
				ratio(rate["keel-uring", k], b, nu), ratio(eff["keel-uring", k], be, nu),
				ratio(rate["keel-epoll", k], b, ne), ratio(eff["keel-epoll", k], be, ne),
				ratio(eff["keel-sqpoll", k], be, ns), ratio(eff["keel-zc", k], be, nz)
		}
	}' "$tsv"

echo "wrote $tsv"

# One line per server x size; left panel efficiency, right panel throughput.
gp=$out/echo.gp
awk -F'\t' -v png="$out/echo.png" -v title="echo: server (1 worker) on CPU 0, echo_load on CPU 1, ${duration} s per point after ${warmup} s warmup" '
	NR == 1 { next }
	{
		s = $1 "  " $3 " B"
		if (!(s in idx)) { idx[s] = ++ns; name[ns] = s; srv[ns] = $1; sz[ns] = $3 }
		if (!($3 in dash)) dash[$3] = ++ndash
		data[idx[s]] = data[idx[s]] $2 " " $6 " " $4 "\n"
	}
	END {
		color["keel-uring"] = "#1f77b4"; color["keel-epoll"] = "#2ca02c"
		color["epoll-echo"] = "#d62728"; color["keel-sqpoll"] = "#9467bd"
		color["keel-zc"] = "#ff7f0e"
		for (i = 1; i <= ns; i++)
			printf "$d%d << EOD\n%sEOD\n", i, data[i]
		print "set terminal pngcairo size 1400,560 font \",10\" noenhanced"
		printf "set output \"%s\"\n", png
		printf "set multiplot layout 1,2 title \"%s\"\n", title
		print "set logscale x; set grid; set key top left; set xlabel \"connections\""
		print "set format y \"%.0s%c\"; set yrange [0:*]; set offsets graph 0.03, graph 0.03, 0, 0"
		for (panel = 1; panel <= 2; panel++) {
			if (panel == 1) {
				print "set title \"messages per server CPU second (higher is better)\""
				col = 2
			} else {
				print "set title \"messages per second\""
				col = 3
			}
			printf "plot "
			for (i = 1; i <= ns; i++) {
				c = (srv[i] in color) ? color[srv[i]] : "black"
				printf "%s$d%d using 1:%d with linespoints lw 2 pt 7 lc rgb \"%s\" dt %d title \"%s\"",
					(i > 1 ? ", " : ""), i, col, c, dash[sz[i]], name[i]
			}
			print ""
		}
		print "unset multiplot"
	}' "$tsv" >"$gp"
bench_plot "$gp" "$out/echo.png"
