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
# Server CPU is utime+stime from /proc (the server and any descendants) read
# before and after each point. The headline number is messages per server CPU
# second: on two cores the client often saturates first, so msgs/s alone may
# measure the client; work per CPU second measures the server. The CPU window
# spans the whole client run (connect, warmup, measured phase) while messages
# are counted only after warmup, so msgs per CPU second is msgs/s divided by
# the server's CPU fraction, which assumes the warmup runs at the steady state.
#
# Prints a table, writes build/bench/echo.tsv, draws build/bench/echo.png and
# prints keel/epoll-echo ratios for every point.
set -euo pipefail

cd "$(dirname "$0")/../.."
out=build/bench
mkdir -p "$out"

duration=${DURATION:-5}
warmup=${WARMUP:-1}
if [[ ${QUICK:-0} == 1 ]]; then
	read -ra conns_list <<<"${CONNS:-1 50 1000}"
	read -ra sizes <<<"${SIZES:-128}"
else
	read -ra conns_list <<<"${CONNS:-1 50 300 1000}"
	read -ra sizes <<<"${SIZES:-128 1024}"
fi
read -ra servers <<<"${SERVERS:-keel-uring keel-epoll keel-sqpoll keel-zc epoll-echo}"
port=${PORT:-7100}
clk_tck=$(getconf CLK_TCK)

for c in bench/echo/epoll_echo.c bench/echo/echo_load.c; do
	b=$(basename "$c" .c)
	cc -O2 -Wall -Wextra -o "$out/$b" "$c"
done

# Each side needs one fd per connection plus a few; ask for 20000 at most.
max_conns=0
for c in "${conns_list[@]}"; do
	if ((c > max_conns)); then max_conns=$c; fi
done
hard=$(ulimit -Hn)
want=20000
if [[ $hard != unlimited ]] && ((hard < want)); then want=$hard; fi
ulimit -n "$want"
if ((want < max_conns + 64)); then
	echo "run.sh: fd limit $want is too low for $max_conns connections" >&2
	exit 1
fi

server_pid=
cleanup() {
	if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
		kill -TERM "$server_pid" 2>/dev/null || true
		wait "$server_pid" 2>/dev/null || true
	fi
	server_pid=
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { # port: does something accept connections there?
	timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# Prints two sums in clock ticks: utime+stime (stat fields 14, 15) over $1 and
# its descendants, and utime+stime+cutime+cstime over every process, so that a
# short-lived process reaped during a point still shows up in the second sum
# through its parent. Threads are already folded into their process's line;
# the scan for children is there in case a server forks its workers.
proc_ticks() {
	{ cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v root="$1" '
		{
			line = $0
			pid = substr(line, 1, index(line, " ") - 1)
			rest = substr(line, match(line, /\) [^)]*$/) + 2)
			split(rest, f, " ")   # f[1] is field 3
			parent[pid] = f[2]
			ticks[pid] = f[12] + f[13]
			all += f[12] + f[13] + f[14] + f[15]
		}
		END {
			want[root] = 1
			do {
				grew = 0
				for (p in parent)
					if (!(p in want) && (parent[p] in want)) {
						want[p] = 1
						grew = 1
					}
			} while (grew)
			for (p in want)
				sum += ticks[p]
			print sum + 0, all + 0
		}'
}

start_server() { # name: sets server_pid, or returns 1 to skip this server
	local name=$1 log=$out/$1.log tries
	local -a cmd

	if [[ $name == keel-* && ! -x build/keel ]]; then
		echo "run.sh: build/keel not found, skipping $name" >&2
		return 1
	fi
	# Never measure a stranger: move past ports that already answer.
	for ((tries = 0; tries < 50; tries++)); do
		port_open "$port" || break
		port=$((port + 1))
	done
	case $name in
	keel-uring)
		cmd=(env KEEL_BACKEND=io_uring taskset -c 0 build/keel echo
			--listen "127.0.0.1:$port" --workers 1)
		;;
	keel-epoll)
		cmd=(env KEEL_BACKEND=epoll taskset -c 0 build/keel echo
			--listen "127.0.0.1:$port" --workers 1)
		;;
	keel-sqpoll)
		# The SQPOLL kernel thread inherits the server's CPU pin: on this
		# 2-core box it shares CPU 0 with the loop; its CPU time is counted.
		cmd=(env KEEL_BACKEND=io_uring KEEL_SQPOLL=1 taskset -c 0 build/keel echo
			--listen "127.0.0.1:$port" --workers 1)
		;;
	keel-zc)
		# Zero-copy send for every echo of at least 1 KiB.
		cmd=(env KEEL_BACKEND=io_uring KEEL_SEND_ZC=1024 taskset -c 0 build/keel echo
			--listen "127.0.0.1:$port" --workers 1)
		;;
	epoll-echo)
		cmd=(taskset -c 0 "$out/epoll_echo" "127.0.0.1:$port")
		;;
	*)
		echo "run.sh: unknown server $name" >&2
		return 1
		;;
	esac
	# env and taskset exec, so $! is the server itself.
	"${cmd[@]}" >"$log" 2>&1 &
	server_pid=$!
	for ((tries = 0; tries < 100; tries++)); do
		if ! kill -0 "$server_pid" 2>/dev/null; then
			echo "run.sh: $name exited at startup; log $log:" >&2
			tail -5 "$log" >&2
			server_pid=
			return 1
		fi
		port_open "$port" && return 0
		sleep 0.1
	done
	echo "run.sh: $name did not accept on port $port within 10 s" >&2
	cleanup
	return 1
}

stop_server() {
	local i
	kill -TERM "$server_pid" 2>/dev/null || true
	# keel gives open connections a grace period; none are open by now.
	for ((i = 0; i < 50; i++)); do
		kill -0 "$server_pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$server_pid" 2>/dev/null || true
	wait "$server_pid" 2>/dev/null || true
	server_pid=
	port=$((port + 1))
}

tsv=$out/echo.tsv
printf 'server\tconns\tsize\tmsgs_per_s\tserver_cpu_pct\tmsgs_per_server_cpu_s\tclient_cpu_pct\tother_cpu_pct\terrors\n' >"$tsv"
fmt='%-11s %6s %6s %10s %8s %14s %8s %7s %6s\n'
echo "echo benchmark: $(uname -r), $(nproc) CPUs, ${duration}s per point after ${warmup}s warmup"
echo "(other% is CPU used by other processes during a point: noise, want ~0)"
# shellcheck disable=SC2059 # one format shared with the awk rows below
printf "$fmt" server conns size msgs/s srv_cpu% msgs/srv_cpu_s cli_cpu% other% errors

run_point() { # name conns size
	local name=$1 conns=$2 size=$3
	local t0 t1 c0 c1 a0 a1 rc=0 line usr_sys
	local res=$out/.point.out err=$out/.point.err tim=$out/.point.time
	local TIMEFORMAT='%U %S'

	read -r c0 a0 < <(proc_ticks "$server_pid")
	t0=$(date +%s%N)
	# timeout bounds a wedged client: connect (5 s) + warmup + duration + slack.
	{ time timeout "$(awk -v d="$duration" -v w="$warmup" 'BEGIN{print d + w + 15}')" \
		taskset -c 1 "$out/echo_load" --host 127.0.0.1 --port "$port" \
		--connections "$conns" --size "$size" --duration "$duration" \
		--warmup "$warmup" >"$res" 2>"$err"; } 2>"$tim" || rc=$?
	t1=$(date +%s%N)
	read -r c1 a1 < <(proc_ticks "$server_pid")

	line=$(cat "$res")
	usr_sys=$(tail -1 "$tim")
	if [[ $line != msgs=* ]]; then
		echo "run.sh: $name conns=$conns size=$size: client failed (rc $rc):" >&2
		cat "$err" >&2
		line="msgs=0 secs=0 msgs_per_sec=0 errors=$conns"
	elif ((rc != 0)); then
		sed 's/^/    /' "$err" >&2
	fi
	awk -v name="$name" -v conns="$conns" -v size="$size" -v line="$line" \
		-v wall_ns=$((t1 - t0)) -v ticks=$((c1 - c0)) -v hz="$clk_tck" \
		-v all=$((a1 - a0)) \
		-v usr_sys="$usr_sys" -v fmt="$fmt" -v tsv="$tsv" 'BEGIN {
		n = split(line, kv, /[ =]/)
		for (i = 1; i < n; i += 2)
			r[kv[i]] = kv[i + 1]
		wall = wall_ns / 1e9
		cpu = ticks / hz / wall          # server CPU fraction
		split(usr_sys, us, " ")
		cli = (us[1] + us[2]) / wall
		other = all / hz / wall - cpu - cli
		if (other < 0)
			other = 0 # tick granularity
		per_cpu = cpu > 0 ? r["msgs_per_sec"] / cpu : 0
		printf "%s\t%d\t%d\t%.0f\t%.1f\t%.0f\t%.1f\t%.1f\t%d\n", name, conns,
			size, r["msgs_per_sec"], 100 * cpu, per_cpu, 100 * cli, 100 * other,
			r["errors"] >> tsv
		printf fmt, name, conns, size, sprintf("%.0f", r["msgs_per_sec"]),
			sprintf("%.1f", 100 * cpu), sprintf("%.0f", per_cpu),
			sprintf("%.1f", 100 * cli),
			sprintf("%.1f%s", 100 * other, other > 0.05 ? "!" : ""), r["errors"]
	}'
}

for name in "${servers[@]}"; do
	start_server "$name" || continue
	for size in "${sizes[@]}"; do
		for conns in "${conns_list[@]}"; do
			if ! kill -0 "$server_pid" 2>/dev/null; then
				echo "run.sh: $name died; log $out/$name.log" >&2
				break 2
			fi
			run_point "$name" "$conns" "$size"
		done
	done
	stop_server
done
rm -f "$out"/.point.out "$out"/.point.err "$out"/.point.time

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

# One line per server x size; left panel efficiency, right panel throughput.
if ! command -v gnuplot >/dev/null; then
	echo "run.sh: gnuplot missing (apt-get install -y gnuplot-nox); no plot" >&2
	exit 0
fi
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
if gnuplot "$gp"; then
	echo "wrote $tsv and $out/echo.png"
else
	echo "run.sh: gnuplot failed on $gp" >&2
fi
