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
# so that is the generator and all its threads); the server's is that of its
# whole process tree (bench/lib.sh says exactly what) over each run, as a
# check that both generators loaded it alike.
#
# Prints one row per run, then the medians and the keel/wrk ratios of req/s
# and of requests per generator CPU second; writes build/bench/load.tsv.
#
# Environment: CONNS (default 64), DURATION seconds (default 5; 2 with
# QUICK=1), ROUNDS (default 3; 1 with QUICK=1), PORT first port to try
# (default 7300), BUILD (default build), NO_BUILD=1 to use what is built,
# LOAD_BACKEND=io_uring|epoll to force keel load's backend (the server keeps
# the default).
set -euo pipefail

cd "$(dirname "$0")/../.."
. bench/lib.sh
build=${BUILD:-build}
conns=${CONNS:-64}
if ((bench_quick)); then
	duration=${DURATION:-2}
	rounds=${ROUNDS:-1}
else
	duration=${DURATION:-5}
	rounds=${ROUNDS:-3}
fi
port=${PORT:-7300}
bench_work load

for v in "$conns" "$duration" "$rounds" "$port"; do
	if ! [[ $v =~ ^[1-9][0-9]*$ ]]; then
		bench_die "CONNS, DURATION, ROUNDS and PORT are positive integers"
	fi
done
bench_require wrk
if ((rounds > 20 || duration > 600)); then
	bench_die "at most 20 rounds of 600 s"
fi
if [[ ${NO_BUILD:-0} != 1 ]]; then
	make -s BUILD="$build" "$build/keel" "$build/examples/hello" >/dev/null
fi
bench_fd_limit $((conns + 1024))

# On two cores, anything else running lands in the numbers: say so up front.
load1=$(cut -d' ' -f1 /proc/loadavg)
bench_busy_before
echo "keel load vs wrk: $(uname -r), $(nproc) CPUs, load average $load1, ${bench_busy_pct}% of a CPU busy before starting"

bench_free_port
bench_server_start hello "$work/hello.log" "$build/examples/hello" --workers 1 \
	--listen "127.0.0.1:$port" || exit 1
url=http://127.0.0.1:$port/plaintext
if [[ $(curl -s --max-time 5 "$url" || true) != "Hello, World!" ]]; then
	bench_die "GET $url did not answer Hello, World!"
fi
# Unmeasured warm-up.
bench_client 20 wrk -t1 -c"$conns" -d1s "$url" >/dev/null 2>&1 || true

# run_one gen: prints "requests rps cpu_s server_cpu_s other_cpu_s"; other is CPU time
# used by anything else during the run (noise: want ~0).
run_one() {
	local gen=$1 res=$work/$1.out json=$work/keel.json rc=0 line
	if [[ $gen == wrk ]]; then
		bench_measure "$server_pid" 0 bench_client $((duration + 30)) \
			wrk -t1 -c"$conns" -d"${duration}s" "$url" >"$res" 2>&1 || rc=$?
	else
		rm -f "$json"
		bench_measure "$server_pid" 0 bench_client $((duration + 30)) \
			env KEEL_BACKEND="${LOAD_BACKEND:-${KEEL_BACKEND:-}}" "$build/keel" load --quiet \
			--json "$json" -c "$conns" -d "$duration" "$url" >"$res" 2>&1 || rc=$?
	fi
	if ((rc != 0)); then
		bench_warn "$gen failed (exit $rc):"
		sed 's/^/    /' "$res" >&2
		echo "0 0 0 0 0"
		return
	fi
	local rest
	rest="$(bench_kv "$measured" cli_s) $(bench_kv "$measured" srv_s) $(bench_kv "$measured" other_s)"
	if [[ $gen == wrk ]]; then
		line=$(bench_wrk_parse "$res")
		if (($(bench_kv "$line" errors) + $(bench_kv "$line" non2xx) > 0)); then
			bench_warn "wrk reported errors"
		fi
		echo "$(bench_kv "$line" reqs) $(bench_kv "$line" rps) $rest"
	else
		python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
if r["errors_total"]:
    print("run.sh: keel load reported errors:", r["errors"], file=sys.stderr)
print("%d %.0f %s" % (r["ok"], r["requests_per_sec"], sys.argv[2]))
' "$json" "$rest"
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
			bench_die "hello died; log $work/hello.log"
		fi
		read -r n rps cpu srv other < <(run_one "$gen")
		eff=$(awk -v n="$n" -v c="$cpu" 'BEGIN { printf "%.0f", (c > 0 ? n / c : 0) }')
		bench_tsv "$tsv" "$r" "$gen" "$n" "$rps" "$cpu" "$eff" "$srv" "$other"
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
rm -f "$work/wrk.out" "$work/keel.out"
