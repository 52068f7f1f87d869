#!/usr/bin/env bash
# Idle-connection benchmark: the memory a server spends on each idle
# keep-alive HTTP/1.1 connection. keel (build/examples/hello and
# build/keel serve, each on io_uring and on epoll), nginx and h2o hold N
# connections that have each made one request, and their resident set size
# is read before and while the connections are held. Build first (make), then
# run from the repo root (as root to install a missing nginx or h2o):
#
#     bench/idle/run.sh                  # ~2 minutes
#     QUICK=1 POINTS="1000 3000" bench/idle/run.sh
#
# Environment: POINTS connection counts (default "1000 15000"), REPS
# repetitions of each point (default 3; 1 with QUICK=1), SERVERS to pick by
# hand (default "hello-uring hello-epoll serve-uring serve-epoll nginx h2o"),
# PORT first port to try (default 7300), WARMUP_REQS requests before the
# baseline (default 5000), WINDOW connections in setup at once (default 64),
# SETTLE seconds between "all held" and sampling (default 1), NO_INSTALL=1
# never to install nginx or h2o (by default, as root, missing ones come from
# Debian).
#
# Every point starts its server fresh, one worker pinned to CPU 0, from a
# config written into bench/lib.sh's temporary directory; the client
# bench/idle/idle_conns.c runs pinned to CPU 1. A point is:
#   1. warm-up: WINDOW connections make WARMUP_REQS requests in total, then
#      are reset. This brings in what is paid once, not per connection: the
#      first touch of keel's receive-buffer pool (io_uring's provided-buffer
#      ring hands out every buffer in turn, so a cold pool grows RSS by one
#      page per buffer, up to 4 MiB, during the first ~1,024 requests), free
#      lists sized for WINDOW requests in flight, nginx's and h2o's caches.
#   2. baseline: VmRSS of the serving process (nginx: the worker) and of its
#      other processes (nginx's master, h2o's helper), its open fds, and the
#      kernel's socket counters.
#   3. N connections: each sends `GET /plaintext HTTP/1.1` once, reads the
#      whole 200 response, then stays open and idle; after SETTLE seconds the
#      same figures are read again, and the client confirms how many are
#      still open (a connection the server closed is noticed and counted).
#   4. the client resets every connection; the server is stopped.
# Bytes per connection = (RSS_N - RSS_0) / N. The slope between the smallest
# and the largest N, (RSS_Nmax - RSS_Nmin) / (Nmax - Nmin) over the means of
# the repetitions, leaves out what a burst of connections costs once (free
# lists grown for the connections being set up at the same time), and is the
# best figure for the marginal cost of one more idle connection. nginx
# allocates and touches all worker_connections slots (20,000 here, ~430 B
# each: ngx_connection_t and two events) at start: that is in its baseline,
# not in its per-connection figure; keel and h2o allocate as connections come.
#
# The kernel columns are kernel memory, not RSS, for context only: they are
# machine-wide and cover both ends of every connection (client and server
# sockets on loopback). sock = change in "sockets: used" of
# /proc/net/sockstat; tcp_pg = change in its TCP "mem" pages (socket buffer
# memory; ~0 for idle sockets); slab_B = change in Slab of /proc/meminfo per
# connection (socket, inode, file, epoll/io_uring records of both ends).
#
# keel's defaults matter here: examples/hello serves at most 10,000
# connections per worker (keel_http_config conns_max) unless it has a
# --max-conns option, so a larger N is measured at 10,000 for hello (noted in
# the table); `keel serve` gets --max-conns 20000. keel closes a keep-alive
# connection idle for 60 s (idle_timeout_ms); every sample here is taken a
# few seconds after the connection's one request (the held_s column: seconds
# from the first, oldest, response to the sample), and `keel serve` is also
# given --idle-timeout-ms 300000. nginx gets keepalive_timeout 300s, h2o
# http1-request-timeout 300 (its default, 10 s, would close them).
#
# Prints a table and a summary, writes build/bench/idle.tsv and draws
# build/bench/idle.png.
set -euo pipefail

cd "$(dirname "$0")/../.."
. bench/lib.sh

reps_default=3
if ((bench_quick)); then reps_default=1; fi
read -ra points <<<"${POINTS:-1000 15000}"
reps=${REPS:-$reps_default}
read -ra servers <<<"${SERVERS:-hello-uring hello-epoll serve-uring serve-epoll nginx h2o}"
port=${PORT:-7300}
warm_reqs=${WARMUP_REQS:-5000}
window=${WINDOW:-64}
settle=${SETTLE:-1}
hello_cap=10000 # keel_http_config_default's conns_max, when hello has no --max-conns

for v in "$reps" "$warm_reqs" "$window" "$port"; do
	[[ $v =~ ^[1-9][0-9]*$ ]] || bench_die "REPS, WARMUP_REQS, WINDOW and PORT are positive integers"
done
[[ $settle =~ ^[0-9]+(\.[0-9]+)?$ ]] || bench_die "SETTLE is a number of seconds"
max_n=0
for n in "${points[@]}"; do
	[[ $n =~ ^[1-9][0-9]*$ ]] || bench_die "bad point $n in POINTS"
	((n > max_n)) && max_n=$n
done
((${#points[@]} > 0)) || bench_die "POINTS is empty"
bench_require cc gcc

# Each side needs one fd per connection plus a few.
bench_fd_limit 20000 $((max_n + 64))

# lib.sh's directory: h2o, dropping to nobody after binding, can read it.
work=$bench_tmp
mkdir -p "$work/www"
chmod 755 "$work/www"
printf 'Hello, World!' >"$work/www/plaintext"
chmod 644 "$work/www/plaintext"

server_pid=
client_pid=
nginx_worker=

cc -std=c17 -O2 -Wall -Wextra -o "$work/idle_conns" bench/idle/idle_conns.c ||
	bench_die "bench/idle/idle_conns.c did not build"

# ---- Servers: finding, installing, configuring. ----

hello_max_conns=0
if [[ -x build/examples/hello ]] && build/examples/hello --help 2>&1 | grep -q -- '--max-conns'; then
	hello_max_conns=1
fi

declare -A usable
for name in "${servers[@]}"; do
	case $name in
	hello-uring | hello-epoll)
		if [[ -x build/examples/hello ]]; then
			usable[$name]=1
		else
			bench_warn "build/examples/hello not found (run make), skipping $name"
		fi
		;;
	serve-uring | serve-epoll)
		if [[ -x build/keel ]] && build/keel serve --help 2>&1 | grep -q -- '--max-conns'; then
			usable[$name]=1
		else
			bench_warn "build/keel serve (with --max-conns) not found, skipping $name"
		fi
		;;
	nginx)
		if bench_ensure_bin nginx nginx-light nginx; then
			usable[$name]=1
		else
			bench_warn "nginx missing and not installable (not root, or NO_INSTALL=1), skipping it"
		fi
		;;
	h2o)
		if bench_ensure_bin h2o h2o; then
			usable[$name]=1
		else
			bench_warn "h2o missing and not installable, skipping it"
		fi
		;;
	*) bench_die "unknown server $name" ;;
	esac
done
((${#usable[@]} > 0)) || bench_die "no server to measure"

write_nginx_conf() { # port: a master and one worker
	bench_nginx_conf "$work/nginx.conf" on 20000 <<EOF
	keepalive_requests 1000000;
	keepalive_timeout 300s;
	server {
		listen 127.0.0.1:$1 backlog=4096;
		location = /plaintext {
			default_type text/plain;
			return 200 "Hello, World!";
		}
	}
EOF
}

# h2o serves /plaintext as a file.
write_h2o_conf() { # port
	bench_h2o_conf "$work/h2o.conf" "$1" 20000 "$work/www" "http1-request-timeout: 300"
}

# ---- Process and kernel figures. ----

# The serving process: nginx's worker, otherwise the started process.
serving_pid() {
	if [[ -n $nginx_worker ]]; then echo "$nginx_worker"; else echo "$server_pid"; fi
}

# RSS in KiB of every process of the server but the serving one (nginx's
# master, h2o's helper).
other_rss_kib() {
	local sp total=0 p
	sp=$(serving_pid)
	for p in "$server_pid" $(bench_descendants "$server_pid"); do
		[[ $p == "$sp" ]] && continue
		total=$((total + $(bench_rss_kib "$p")))
	done
	echo "$total"
}

# Kernel figures: "sockets: used", TCP mem pages, Slab KiB.
kernel_figs() {
	local used tcpmem slab
	used=$(awk '$1 == "sockets:" { print $3 }' /proc/net/sockstat)
	tcpmem=$(awk '$1 == "TCP:" { for (i = 2; i < NF; i++) if ($i == "mem") print $(i + 1) }' /proc/net/sockstat)
	slab=$(awk '$1 == "Slab:" { print $2 }' /proc/meminfo)
	echo "${used:-0} ${tcpmem:-0} ${slab:-0}"
}

# ---- Starting and stopping. ----

start_server() { # name: sets server_pid (and nginx_worker), or returns 1
	local name=$1
	local -a cmd

	bench_free_port
	case $name in
	hello-uring | hello-epoll)
		cmd=(env "KEEL_BACKEND=${name#hello-}" build/examples/hello --workers 1
			--listen "127.0.0.1:$port")
		if ((hello_max_conns)); then cmd+=(--max-conns 20000); fi
		;;
	serve-uring | serve-epoll)
		cmd=(env "KEEL_BACKEND=${name#serve-}" build/keel serve --workers 1
			--listen "127.0.0.1:$port" --max-conns 20000 --idle-timeout-ms 300000 "$work/www")
		;;
	nginx)
		write_nginx_conf "$port"
		cmd=("${bench_nginx[@]}")
		;;
	h2o)
		write_h2o_conf "$port"
		cmd=("${bench_h2o[@]}")
		;;
	esac
	nginx_worker=
	bench_server_start "$name" "$work/$name.log" "${cmd[@]}" || return 1
	if [[ $name == nginx ]] && ! nginx_worker=$(bench_child "$server_pid"); then
		bench_warn "nginx: no worker process appeared"
		stop_server
		return 1
	fi
}

stop_server() {
	# bench_stop also ends a worker left behind by a killed master.
	bench_server_stop
	nginx_worker=
}

stop_client() {
	bench_stop "$client_pid" 10
	client_pid=
}

check_get() { # name: curl (when there is one) must get 200 and exactly the body
	if command -v curl >/dev/null &&
		! bench_check_get "$1" "http://127.0.0.1:$port/plaintext" "$work/www/plaintext"; then
		bench_warn "skipping $1"
		return 1
	fi
}

# One point: sets row to one tab-separated line of figures, or returns 1. It
# runs in this shell (not a $(...) subshell) so the EXIT trap knows its pids.
row=
run_point() { # name n rep
	local name=$1 n=$2 rep=$3 sp line ready_t sample_t i note=-
	local rss0 rssn other0 othern fd0 fdn k0 k1 status done_line
	start_server "$name" || return 1
	if ! check_get "$name"; then
		stop_server
		return 1
	fi
	if ! line=$(timeout 60 taskset -c "$bench_cli_cpu" "$work/idle_conns" --port "$port" \
		--warmup "$warm_reqs" --window "$window" --timeout 30 2>"$work/client.err"); then
		bench_warn "$name: warm-up failed: $line $(tail -3 "$work/client.err")"
		stop_server
		return 1
	fi
	sleep 0.5
	sp=$(serving_pid)
	rss0=$(bench_rss_kib "$sp")
	other0=$(other_rss_kib)
	fd0=$(bench_fd_count "$sp")
	k0=$(kernel_figs)

	: >"$work/client.out"
	# The client bounds itself: --timeout for setup, --hold for holding.
	taskset -c "$bench_cli_cpu" "$work/idle_conns" --port "$port" --connections "$n" \
		--window "$window" --timeout 60 --hold 300 >"$work/client.out" 2>"$work/client.err" &
	client_pid=$!
	bench_track "$client_pid"
	for ((i = 0; i < 700; i++)); do
		grep -q '^ready' "$work/client.out" && break
		kill -0 "$client_pid" 2>/dev/null || break
		sleep 0.1
	done
	if ! grep -q '^ready' "$work/client.out"; then
		bench_warn "$name N=$n: the client never got ready; $(tail -3 "$work/client.err")"
		stop_client
		stop_server
		return 1
	fi
	ready_t=$(date +%s.%N)
	line=$(grep '^ready' "$work/client.out")
	if [[ $(bench_kv "$line" failed -) != 0 ]]; then
		note="failed=$(bench_kv "$line" failed -)"
		bench_warn "$name N=$n: $line; $(sort "$work/client.err" | uniq -c | sort -rn | head -3)"
	fi
	sleep "$settle"
	sample_t=$(date +%s.%N)
	rssn=$(bench_rss_kib "$sp")
	othern=$(other_rss_kib)
	fdn=$(bench_fd_count "$sp")
	k1=$(kernel_figs)
	kill -USR1 "$client_pid" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		grep -q '^status' "$work/client.out" && break
		sleep 0.1
	done
	status=$(grep '^status' "$work/client.out" | tail -1)
	stop_client
	done_line=$(grep '^done' "$work/client.out" | tail -1)
	if [[ $(bench_kv "$status" closed_by_server -) != 0 ]]; then
		note="closed_by_server=$(bench_kv "$status" closed_by_server -)"
	fi
	if ! kill -0 "$sp" 2>/dev/null; then
		note="server_died"
		bench_warn "$name died during N=$n; log $work/$name.log"
	fi
	stop_server
	row=$(awk -v name="$name" -v n="$n" -v rep="$rep" -v rss0="$rss0" -v rssn="$rssn" \
		-v other0="$other0" -v othern="$othern" -v fd0="$fd0" -v fdn="$fdn" \
		-v k0="$k0" -v k1="$k1" -v t0="$ready_t" -v t1="$sample_t" \
		-v setup="$(bench_kv "$line" secs -)" -v held="$(bench_kv "$status" open -)" \
		-v ok="$(bench_kv "$line" ok -)" -v note="$note" -v done_line="$done_line" '
		BEGIN {
			split(k0, a, " ")
			split(k1, b, " ")
			d = (rssn - rss0) * 1024
			# held_s: from the last response (ready) to the sample, plus
			# the setup time for the first connections (worst case).
			printf "%s\t%d\t%d\t%s\t%s\t%d\t%.0f\t%.3f\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%.0f\t%s\t%.1f\t%.1f\t%s\n",
				name, n, rep, ok, held, rss0, d / n, d / n / 1024, rssn, fd0, fdn,
				other0, othern, b[1] - a[1], b[2] - a[2], (b[3] - a[3]) * 1024 / n,
				setup, t1 - t0, t1 - t0 + setup, note
		}')
}

# ---- The run. ----

rev=$(git describe --always --dirty 2>/dev/null) || rev=unknown
echo "idle keep-alive connections: keel $rev, $(uname -r), $(nproc) CPUs; server (1 worker) on CPU $bench_srv_cpu, client on CPU $bench_cli_cpu"
echo "points ${points[*]}, $reps repetition(s), warm-up $warm_reqs requests over $window connections, sample ${settle} s after all are held"
if ((!hello_max_conns)); then
	echo "note: build/examples/hello has no --max-conns; it serves at most $hello_cap connections, so hello's N is capped at $hello_cap"
fi
tsv=$out/idle.tsv
printf 'server\tconns\trep\tanswered\theld\trss0_kib\tbytes_per_conn\tkib_per_conn\trssN_kib\tfds0\tfdsN\tother_rss0_kib\tother_rssN_kib\tkern_sockets_delta\tkern_tcp_mem_pages_delta\tkern_slab_bytes_per_conn\tsetup_s\tsample_after_ready_s\tsample_after_first_s\tnote\n' >"$tsv"
fmt='%-12s %6s %3s %6s %7s %8s %8s %8s %6s %6s %8s %7s %6s %8s %6s %7s %s\n'
echo "(RSS in KiB of the serving process: nginx's worker; other = nginx's master / h2o's helper, RSS at N;"
echo " kernel columns are kernel memory for both ends, machine-wide, not RSS: sock and tcp_pg deltas, slab bytes per conn)"
# shellcheck disable=SC2059 # one format for the header and the rows
printf "$fmt" server conns rep held rss0 rssN B/conn KiB/conn fds0 fdsN other sock tcp_pg slab_B held_s setup_s note

for ((rep = 1; rep <= reps; rep++)); do
	for name in "${servers[@]}"; do
		[[ -n ${usable[$name]:-} ]] || continue
		for n in "${points[@]}"; do
			if [[ $name == hello-* ]] && ((!hello_max_conns && n > hello_cap)); then
				n=$hello_cap
			fi
			if ! run_point "$name" "$n" "$rep"; then
				bench_warn "$name N=$n rep $rep: no measurement"
				continue
			fi
			printf '%s\n' "$row" >>"$tsv"
			IFS=$'\t' read -r s_name s_n s_rep _ s_held s_rss0 s_b s_kib s_rssn s_fd0 s_fdn \
				_ s_on s_sock s_tcp s_slab s_setup _ s_first s_note <<<"$row"
			# shellcheck disable=SC2059
			printf "$fmt" "$s_name" "$s_n" "$s_rep" "$s_held" "$s_rss0" "$s_rssn" "$s_b" "$s_kib" \
				"$s_fd0" "$s_fdn" "$s_on" "$s_sock" "$s_tcp" "$s_slab" "$s_first" "$s_setup" "$s_note"
		done
	done
done

# Summary: mean (min-max) per server and N, the slope between the smallest
# and largest N, and keel against nginx and the target.
awk -F'\t' '
	NR == 1 { next }
	{
		k = $1 SUBSEP $2
		if (!($1 in si)) { si[$1] = ++ns; srv[ns] = $1 }
		if (!(k in cnt)) { lo[k] = $7; hi[k] = $7 }
		cnt[k]++
		sumb[k] += $7
		sumr0[k] += $6
		sumrn[k] += $9
		if ($7 < lo[k]) lo[k] = $7
		if ($7 > hi[k]) hi[k] = $7
		if (!($1 in nmin) || $2 < nmin[$1]) nmin[$1] = $2
		if (!($1 in nmax) || $2 > nmax[$1]) nmax[$1] = $2
		if ($20 != "-") bad[k] = bad[k] " " $20
	}
	END {
		printf "\nsummary: RSS per idle connection, mean over repetitions (min-max), bytes and KiB\n"
		printf "%-12s %6s %5s %10s %14s %9s %s\n", "server", "conns", "runs", "B/conn", "(min-max)", "KiB/conn", "notes"
		for (i = 1; i <= ns; i++) {
			s = srv[i]
			for (k in cnt) {
				split(k, p, SUBSEP)
				if (p[1] != s) continue
				line[p[2] + 0] = k
			}
			m = asorti_n(line, order)
			for (j = 1; j <= m; j++) {
				k = line[order[j]]
				split(k, p, SUBSEP)
				mean = sumb[k] / cnt[k]
				printf "%-12s %6d %5d %10.0f %14s %9.3f %s\n", s, p[2], cnt[k], mean,
					sprintf("(%d-%d)", lo[k], hi[k]), mean / 1024, bad[k]
				meanb[s, p[2]] = mean
			}
			delete line
			a = nmin[s]; b = nmax[s]
			if (b > a) {
				ka = s SUBSEP a; kb = s SUBSEP b
				slope[s] = (sumrn[kb] / cnt[kb] - sumrn[ka] / cnt[ka]) * 1024 / (b - a)
				printf "%-12s slope %d->%d: %.0f B = %.3f KiB per added idle connection\n", s, a, b,
					slope[s], slope[s] / 1024
			}
		}
		printf "\ntarget: keel <= 0.4 KiB (410 B) per idle connection; measured before keel: nginx 0.51, h2o 1.01 KiB\n"
		for (i = 1; i <= ns; i++) {
			s = srv[i]
			if (s !~ /^(hello|serve)-/) continue
			if (s in slope)
				printf "%-12s slope %.3f KiB: %s; vs nginx %s\n", s, slope[s] / 1024,
					(slope[s] <= 410 ? "meets the target" : sprintf("%.1fx the target", slope[s] / 410)),
					(("nginx" in slope) && (slope["nginx"] > 0) ? sprintf("%.2fx", slope[s] / slope["nginx"]) : "-")
		}
	}
	# Sorts the numeric keys of arr into out[1..n]; returns n.
	function asorti_n(arr, out,    n, x, i, j, t) {
		n = 0
		for (x in arr) out[++n] = x + 0
		for (i = 2; i <= n; i++)
			for (j = i; j > 1 && out[j - 1] > out[j]; j--) {
				t = out[j]; out[j] = out[j - 1]; out[j - 1] = t
			}
		return n
	}' "$tsv"

# Bars: mean KiB per idle connection, one cluster per server, one bar per N,
# with the target as a line.
plot() {
	local gp=$out/idle.gp
	awk -F'\t' -v png="$out/idle.png" '
		NR == 1 { next }
		{
			if (!($1 in si)) { si[$1] = ++ns; srv[ns] = $1 }
			if (!($2 in ni)) { ni[$2] = ++nn; nv[nn] = $2 }
			sum[$1, $2] += $8
			cnt[$1, $2]++
		}
		END {
			if (ns == 0)
				exit 1
			print "$d << EOD"
			for (i = 1; i <= ns; i++) {
				printf "\"%s\"", srv[i]
				for (j = 1; j <= nn; j++) {
					k = srv[i] SUBSEP nv[j]
					printf " %s", (k in cnt) ? sprintf("%.3f", sum[k] / cnt[k]) : "-"
				}
				print ""
			}
			print "EOD"
			print "set terminal pngcairo size 1000,520 font \",10\" noenhanced"
			printf "set output \"%s\"\n", png
			print "set title \"RSS per idle keep-alive connection (KiB, lower is better; dashed: keel target 0.4 KiB)\""
			print "set datafile missing \"-\""
			print "set style data histogram; set style histogram clustered gap 1"
			print "set style fill solid 0.85 border -1; set boxwidth 0.9"
			print "set grid ytics; set key top left; set yrange [0:*]; set ylabel \"KiB per connection\""
			printf "plot "
			for (j = 1; j <= nn; j++)
				printf "%s$d using %d:xtic(1) title \"%s connections\"", (j > 1 ? ", " : ""), j + 1, nv[j]
			print ", 0.4 with lines dt 2 lw 2 lc rgb \"red\" title \"target\""
		}' "$out/idle.tsv" >"$gp" || {
		bench_warn "no points measured; no plot"
		return
	}
	bench_plot "$gp" "$out/idle.png"
}
plot
