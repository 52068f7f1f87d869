#!/usr/bin/env bash
# WebSocket benchmark: keel (build/examples/chat, one worker) against Node.js
# with the `ws` package (bench/ws/server.js, from npm), the same endpoints on
# each. Build first (make), then run from the repo root:
#
#     bench/ws/run.sh               # ~2 minutes
#     QUICK=1 bench/ws/run.sh
#
# Environment: SECS per echo point (default 5; 2 with QUICK=1), IDLE_CONNS
# (default 10000), FAN_MEMBERS (default 1000), FAN_ROUNDS (default 50), PORT
# first port to try (default 7400). Node's `ws` is installed into
# build/bench/ws/node_modules by npm when missing (NO_INSTALL=1: never).
#
# Every point starts its server fresh, pinned to CPU 0; the client
# (bench/ws/wsload.c, epoll, one thread) runs pinned to CPU 1.
#   echo    closed loop on /echo, each connection one message in flight, 32 B
#           and 4 KiB messages over 16 and 1,000 connections: messages a second,
#           the server's CPU over the same window (bench/lib.sh's accounting),
#           and messages per server-CPU-second, the figure compared.
#   idle    IDLE_CONNS connections each echo one message, then stay open:
#           the server's RSS before and while they are held, per connection.
#   fanout  FAN_MEMBERS members in the room /ws, one more sends FAN_ROUNDS
#           lines 20 ms apart: for each, the time from its send until the
#           last member has it; median and worst.
# Prints the tables, writes build/bench/ws.tsv and draws build/bench/ws.png.
set -euo pipefail

cd "$(dirname "$0")/../.."
. bench/lib.sh

secs=${SECS:-5}
if ((bench_quick)); then secs=${SECS:-2}; fi
idle_n=${IDLE_CONNS:-10000}
fan_n=${FAN_MEMBERS:-1000}
fan_rounds=${FAN_ROUNDS:-50}
port=${PORT:-7400}
bench_require cc gcc
bench_require node nodejs
[[ -x build/examples/chat ]] || bench_die "build/examples/chat missing: run make first"
bench_fd_limit 20000 $((idle_n + 64))

bench_work ws
cc -std=c17 -O2 -Wall -Wextra -o "$work/wsload" bench/ws/wsload.c || bench_die "bench/ws/wsload.c did not build"
if [[ ! -d $work/node_modules/ws ]]; then
	[[ ${NO_INSTALL:-0} == 1 ]] && bench_die "Node's ws missing (npm install --prefix $work ws@8)"
	(cd "$work" && npm install --no-audit --no-fund --silent ws@8) || bench_die "npm install ws failed"
fi
node_ws=$(node -e "console.log(require('$work_abs/node_modules/ws/package.json').version)")

start_server() { # name
	case $1 in
	keel) bench_server_start keel "$work/keel.log" build/examples/chat --listen "127.0.0.1:$port" --page www/chat.html ;;
	node) NODE_PATH=$work_abs/node_modules bench_server_start node "$work/node.log" node bench/ws/server.js "$port" ;;
	esac
}

tsv=$out/ws.tsv
: >"$tsv"
bench_busy_before
printf '\n== echo: messages a second, and per server-CPU-second (keel: chat, 1 worker; node %s, ws %s)\n' \
	"$(node --version)" "$node_ws"
printf '%-6s %6s %6s %10s %8s %10s %9s %9s %7s\n' server conns size msgs/s srv_cpu% msgs/cpu-s p50_us p99_us other%
declare -A per_cpu
for conns in 16 1000; do
	for size in 32 4096; do
		for srv in keel node; do
			start_server $srv || continue
			bench_measure "$server_pid" 0 bench_client $((secs + 60)) "$work/wsload" echo "$port" "$conns" "$size" "$secs" \
				>"$work/echo.out" || bench_warn "wsload failed ($srv $conns $size)"
			line=$(tail -1 "$work/echo.out")
			rate=$(bench_kv "$line" rate)
			srv_pct=$(bench_kv "$measured" srv_pct)
			pc=$(bench_per_cpu "$rate" "$srv_pct")
			per_cpu[$srv.$conns.$size]=$pc
			printf '%-6s %6s %6s %10s %8s %10s %9s %9s %7s\n' $srv "$conns" "$size" "$rate" "$srv_pct" "$pc" \
				"$(bench_kv "$line" p50_us)" "$(bench_kv "$line" p99_us)" "$(bench_noisy "$(bench_kv "$measured" other_pct)")"
			bench_tsv "$tsv" echo $srv "$conns" "$size" "$rate" "$srv_pct" "$pc"
			bench_server_stop
		done
		printf '%-6s %6s %6s %10s %8s %10s  keel/node per server-CPU-second\n' ratio "$conns" "$size" "" "" \
			"$(awk -v a="${per_cpu[keel.$conns.$size]:-0}" -v b="${per_cpu[node.$conns.$size]:-0}" \
				'BEGIN { printf (b > 0 ? "%.2fx" : "-"), a / b }')"
	done
done

printf '\n== idle: RSS per idle WebSocket connection, %d connections\n' "$idle_n"
printf '%-6s %10s %10s %8s %12s\n' server rss0_kib rss_kib open bytes/conn
for srv in keel node; do
	start_server $srv || continue
	bench_client 60 "$work/wsload" idle "$port" 64 0.1 >/dev/null || true # (warm: buffers, free lists)
	rss0=$(bench_rss_kib "$server_pid")
	taskset -c "$bench_cli_cpu" "$work/wsload" idle "$port" "$idle_n" 8 >"$work/idle.out" &
	cli=$!
	bench_track $cli
	for ((i = 0; i < 600; i++)); do
		grep -q open= "$work/idle.out" 2>/dev/null && break
		sleep 0.1
	done
	sleep 1
	rss=$(bench_rss_kib "$server_pid")
	open=$(bench_kv "$(cat "$work/idle.out")" open)
	per=$(awk -v a="$rss0" -v b="$rss" -v n="$open" 'BEGIN { printf "%.0f", (n > 0 ? (b - a) * 1024 / n : 0) }')
	printf '%-6s %10s %10s %8s %12s\n' $srv "$rss0" "$rss" "$open" "$per"
	bench_tsv "$tsv" idle $srv "$open" "$rss0" "$rss" "$per"
	bench_stop $cli 15
	bench_server_stop
done

printf '\n== fanout: one line to %d members, until the last has it (%d rounds)\n' "$fan_n" "$fan_rounds"
printf '%-6s %8s %10s %10s %10s\n' server rounds p50_us p99_us max_us
for srv in keel node; do
	start_server $srv || continue
	bench_client 120 "$work/wsload" fanout "$port" "$fan_n" "$fan_rounds" >"$work/fan.out" || bench_warn "fanout failed ($srv)"
	line=$(tail -1 "$work/fan.out")
	printf '%-6s %8s %10s %10s %10s\n' $srv "$(bench_kv "$line" rounds)" "$(bench_kv "$line" p50_us)" \
		"$(bench_kv "$line" p99_us)" "$(bench_kv "$line" max_us)"
	bench_tsv "$tsv" fanout $srv "$(bench_kv "$line" p50_us)" "$(bench_kv "$line" max_us)"
	bench_server_stop
done

cat >"$work/ws.gp" <<EOF
set terminal pngcairo size 900,420
set output '$out/ws.png'
set title 'WebSocket echo: messages per server-CPU-second (keel chat vs Node ws), one run'
set style data histograms
set style fill solid 0.8
set ylabel 'messages / server CPU-second'
set yrange [0:*]
set key top right
plot '< grep "^echo" $tsv | grep keel' using 7:xtic(sprintf("%s conns, %s B", stringcolumn(3), stringcolumn(4))) title 'keel', \\
     '< grep "^echo" $tsv | grep node' using 7 title 'node ws'
EOF
bench_plot "$work/ws.gp" "$out/ws.png"
