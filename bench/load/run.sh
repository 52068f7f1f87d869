#!/usr/bin/env bash
# keel load against wrk: the same server, the same shape, in the same run.
# Run from anywhere:
#
#     bench/load/run.sh
#
# Builds, starts build/examples/hello with one worker pinned to CPU 0, then
# alternates `wrk -t1 -c64 -d5s` and `keel load -c 64 -d 5`, both pinned to
# CPU 1, against GET /plaintext, ROUNDS times each (wrk first in odd rounds,
# keel first in even ones, so neither always gets the warmer server). Each
# generator's CPU time is user+system from the shell's `time` (taskset execs,
# so that is the generator and all its threads); the server's is
# utime+stime from /proc/PID/stat around each run, as a check that both
# generators loaded it alike.
#
# Prints one row per run, then the medians and the keel/wrk ratios of req/s
# and of requests per generator CPU second; writes build/bench/load.tsv.
#
# Environment: CONNS (default 64), DURATION seconds (default 5), ROUNDS
# (default 3), PORT first port to try (default 7300), BUILD (default build),
# NO_BUILD=1 to use what is built, LOAD_BACKEND=io_uring|epoll to force keel
# load's backend (the server keeps the default).
set -euo pipefail

cd "$(dirname "$0")/../.."
build=${BUILD:-build}
conns=${CONNS:-64}
duration=${DURATION:-5}
rounds=${ROUNDS:-3}
port=${PORT:-7300}
out=build/bench
mkdir -p "$out"
work=$out/load
mkdir -p "$work"
clk_tck=$(getconf CLK_TCK)

for v in "$conns" "$duration" "$rounds" "$port"; do
	if ! [[ $v =~ ^[1-9][0-9]*$ ]]; then
		echo "run.sh: CONNS, DURATION, ROUNDS and PORT are positive integers" >&2
		exit 1
	fi
done
if ! command -v wrk >/dev/null; then
	echo "run.sh: needs wrk (apt-get install -y wrk)" >&2
	exit 1
fi
if ((rounds > 20 || duration > 600)); then
	echo "run.sh: at most 20 rounds of 600 s" >&2
	exit 1
fi
if [[ ${NO_BUILD:-0} != 1 ]]; then
	make -s BUILD="$build" "$build/keel" "$build/examples/hello" >/dev/null
fi
ulimit -n $((conns + 1024)) 2>/dev/null || true

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

proc_ticks() { # pid: utime+stime of that process (all its threads)
	awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

busy_ticks() { # all CPUs: user, nice, system, irq, softirq, steal
	awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat
}

# On two cores, anything else running lands in the numbers: say so up front.
load1=$(cut -d' ' -f1 /proc/loadavg)
b0=$(busy_ticks)
sleep 1
busy=$((($(busy_ticks) - b0) * 100 / clk_tck))
echo "keel load vs wrk: $(uname -r), $(nproc) CPUs, load average $load1, ${busy}% of a CPU busy before starting"
if ((busy > 10)); then
	echo "run.sh: warning: the machine is not idle; expect noise" >&2
fi

for ((tries = 0; tries < 50; tries++)); do
	port_open "$port" || break
	port=$((port + 1))
done
taskset -c 0 "$build/examples/hello" --workers 1 --listen "127.0.0.1:$port" >"$work/hello.log" 2>&1 &
server_pid=$!
for ((tries = 0; tries < 100; tries++)); do
	port_open "$port" && break
	if ! kill -0 "$server_pid" 2>/dev/null; then
		echo "run.sh: hello exited at startup:" >&2
		cat "$work/hello.log" >&2
		exit 1
	fi
	sleep 0.1
done
url=http://127.0.0.1:$port/plaintext
if [[ $(curl -s --max-time 5 "$url" || true) != "Hello, World!" ]]; then
	echo "run.sh: GET $url did not answer Hello, World!" >&2
	exit 1
fi
# Unmeasured warm-up.
timeout 20 taskset -c 1 wrk -t1 -c"$conns" -d1s "$url" >/dev/null 2>&1 || true

# run_one gen: prints "requests rps cpu_s server_cpu_s other_cpu_s"; other is CPU time
# used by anything else during the run (noise: want ~0).
run_one() {
	local gen=$1 res=$work/$1.out tim=$work/$1.time json=$work/keel.json rc=0 s0 s1 b0 b1
	local TIMEFORMAT='%U %S'
	s0=$(proc_ticks "$server_pid")
	b0=$(busy_ticks)
	if [[ $gen == wrk ]]; then
		{ time timeout $((duration + 30)) taskset -c 1 wrk -t1 -c"$conns" -d"${duration}s" "$url" \
			>"$res" 2>&1; } 2>"$tim" || rc=$?
	else
		rm -f "$json"
		{ time KEEL_BACKEND=${LOAD_BACKEND:-${KEEL_BACKEND:-}} timeout $((duration + 30)) \
			taskset -c 1 "$build/keel" load --quiet --json "$json" \
			-c "$conns" -d "$duration" "$url" >"$res" 2>&1; } 2>"$tim" || rc=$?
	fi
	s1=$(proc_ticks "$server_pid")
	b1=$(busy_ticks)
	if ((rc != 0)); then
		echo "run.sh: $gen failed (exit $rc):" >&2
		sed 's/^/    /' "$res" >&2
		echo "0 0 0 0 0"
		return
	fi
	local cpu srv other
	cpu=$(awk '{ printf "%.2f", $1 + $2 }' "$tim")
	srv=$(awk -v t=$((s1 - s0)) -v hz="$clk_tck" 'BEGIN { printf "%.2f", t / hz }')
	other=$(awk -v t=$((b1 - b0)) -v hz="$clk_tck" -v c="$cpu" -v s="$srv" \
		'BEGIN { o = t / hz - c - s; printf "%.2f", (o < 0 ? 0 : o) }')
	if [[ $gen == wrk ]]; then
		awk -v rest="$cpu $srv $other" '
			/ requests in / { n = $1 }
			/^Requests\/sec:/ { rps = $2 }
			/Socket errors|Non-2xx/ { bad = 1 }
			END { if (bad) print "run.sh: wrk reported errors" > "/dev/stderr"
			      printf "%d %.0f %s\n", n, rps, rest }' "$res"
	else
		python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
if r["errors_total"]:
    print("run.sh: keel load reported errors:", r["errors"], file=sys.stderr)
print("%d %.0f %s" % (r["ok"], r["requests_per_sec"], sys.argv[2]))
' "$json" "$cpu $srv $other"
	fi
}

tsv=$out/load.tsv
printf 'round\tgenerator\trequests\treq_per_s\tgen_cpu_s\treq_per_gen_cpu_s\tserver_cpu_s\tother_cpu_s\n' >"$tsv"
fmt='%-5s %-5s %10s %10s %9s %14s %12s %11s\n'
echo "hello (1 worker) on CPU 0; each generator on CPU 1 with $conns connections for $duration s; GET /plaintext"
echo "keel load backend: $(KEEL_BACKEND=${LOAD_BACKEND:-${KEEL_BACKEND:-}} "$build/keel" load -q -c 1 -d 1 \
	"$url" 2>/dev/null | awk '/mode/ { print $NF }')"
# shellcheck disable=SC2059
printf "$fmt" round gen requests req/s cpu_s req/cpu_s server_cpu_s other_cpu_s
for ((r = 1; r <= rounds; r++)); do
	if ((r % 2)); then order="wrk keel"; else order="keel wrk"; fi
	for gen in $order; do
		if ! kill -0 "$server_pid" 2>/dev/null; then
			echo "run.sh: hello died; log $work/hello.log" >&2
			exit 1
		fi
		read -r n rps cpu srv other < <(run_one "$gen")
		eff=$(awk -v n="$n" -v c="$cpu" 'BEGIN { printf "%.0f", (c > 0 ? n / c : 0) }')
		printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$gen" "$n" "$rps" "$cpu" "$eff" "$srv" \
			"$other" >>"$tsv"
		# shellcheck disable=SC2059
		printf "$fmt" "$r" "$gen" "$n" "$rps" "$cpu" "$eff" "$srv" "$other"
	done
done

awk -F'\t' '
	NR == 1 { next }
	{ k = $2; n[k]++; rps[k, n[k]] = $4; eff[k, n[k]] = $6 }
	function median(a, k, cnt,   i, j, t, v) {
		for (i = 1; i <= cnt; i++) v[i] = a[k, i]
		for (i = 2; i <= cnt; i++)
			for (j = i; j > 1 && v[j - 1] > v[j]; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
		return cnt % 2 ? v[(cnt + 1) / 2] : (v[cnt / 2] + v[cnt / 2 + 1]) / 2
	}
	END {
		printf "\nmedians of %d rounds\n", n["wrk"]
		printf "%-10s %12s %16s\n", "generator", "req/s", "req/gen_cpu_s"
		for (g = 1; g <= 2; g++) {
			k = g == 1 ? "wrk" : "keel"
			mr[k] = median(rps, k, n[k]); me[k] = median(eff, k, n[k])
			printf "%-10s %12.0f %16.0f\n", k, mr[k], me[k]
		}
		if (mr["wrk"] > 0 && me["wrk"] > 0)
			printf "%-10s %12.2f %16.2f\n", "keel/wrk", mr["keel"] / mr["wrk"], me["keel"] / me["wrk"]
	}' "$tsv"
echo "wrote $tsv"
rm -f "$work/wrk.out" "$work/keel.out" "$work/wrk.time" "$work/keel.time"
