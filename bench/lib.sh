# shellcheck shell=bash disable=SC2034 # it sets variables for the scripts
# bench/lib.sh: the plumbing every bench/*/run.sh shares. A script changes to
# the repository root and sources it:
#
#     cd "$(dirname "$0")/../.."
#     . bench/lib.sh
#
# It holds CPU pinning, free ports, finding (as root: installing) the servers
# and tools keel is compared with, starting and stopping servers by pid, and
# the one CPU accounting all benchmarks use, so that "per server-CPU-second"
# means the same thing in every table of docs/benchmarks.md.
#
# CPU accounting. The CPU time of a server is that of its whole process tree:
# the sum, over the server process and every live descendant of it, of
# utime+stime+cutime+cstime (/proc/PID/stat fields 14 to 17), in clock ticks
# (getconf CLK_TCK, usually 100 a second, so 10 ms granularity). A point's CPU
# is the difference between a reading taken just before the load starts and
# one taken just after it ends. Why this sum is the robust one:
#   - utime and stime of a process already cover all its threads: keel's
#     workers and io_uring's SQPOLL and io-wq threads are counted.
#   - A descendant reaped during a point moves all of its time into its
#     parent's cutime+cstime, so it stays in the sum, counted once, whether it
#     lived through the point, started in it or ended in it (nginx's master
#     and worker, h2o's helper).
#   - Children reaped before the point are in both readings and cancel out.
# It cannot see a descendant that leaves the tree (a double fork), one reaped
# by a parent that ignores SIGCHLD, nor kernel work charged to no process
# (softirq under IRQ_TIME_ACCOUNTING); the cpu0% column of bench/http and
# bench/proxy (bench_busy_ticks) is there to show the last.
# The client's CPU is the same sum from the other side: bash's `time` around
# the client command reports utime+stime of it and of every descendant it
# waited for (RUSAGE_CHILDREN). "other" is the same sum over every process on
# the machine, less the server, the upstream and the client: noise, want ~0.
# "Requests per server-CPU-second" is requests per second divided by the
# server's CPU seconds per wall-clock second over the same window.
#
# What sourcing sets: out (build/bench, created), bench_hz (CLK_TCK),
# bench_quick (1 when QUICK=1 or BENCH_QUICK=1: each script's short mode),
# bench_srv_cpu and bench_cli_cpu (SERVER_CPU, default 0, and CLIENT_CPU,
# default 1; both 0 on one CPU), bench_tmp (a private directory removed at
# exit), and traps that stop every process started with bench_start (or
# handed to bench_track) on exit.

bench_hz=$(getconf CLK_TCK)
bench_quick=0
if [[ ${QUICK:-0} == 1 || ${BENCH_QUICK:-0} == 1 ]]; then bench_quick=1; fi

bench_warn() { echo "run.sh: $*" >&2; }
bench_die() {
	bench_warn "$@"
	exit 1
}

out=build/bench
mkdir -p "$out"

# Sets work (build/bench/name) and work_abs (its absolute path), and creates
# it: the configs, logs and files of one benchmark.
bench_work() { # name
	work=$out/$1
	work_abs=$PWD/$work
	mkdir -p "$work"
}

# ---- CPU pinning. ----

bench_srv_cpu=${SERVER_CPU:-0}
bench_cli_cpu=${CLIENT_CPU:-1}
command -v taskset >/dev/null || bench_die "needs taskset (apt-get install -y util-linux)"
if (($(nproc) < 2)) && [[ -z ${CLIENT_CPU:-} ]]; then
	bench_cli_cpu=0
	bench_warn "one CPU only: the client shares CPU 0 with the server"
fi

# Runs a client in the foreground pinned to the client's CPU, killed after
# seconds if it wedges.
bench_client() { # seconds cmd...
	local secs=$1
	shift
	timeout "$secs" taskset -c "$bench_cli_cpu" "$@"
}

# ---- Processes: started by pid, stopped by pid, all stopped at exit. ----

bench_tmp=$(mktemp -d /tmp/keel-bench.XXXXXX) || bench_die "cannot create a temporary directory"
# h2o drops to nobody after binding; what it serves from here must be readable.
chmod 755 "$bench_tmp"
bench_pids=()

bench_track() { bench_pids+=("$1"); }

bench_untrack() { # pid
	local -a keep=()
	local p
	for p in "${bench_pids[@]}"; do
		[[ $p == "$1" ]] || keep+=("$p")
	done
	bench_pids=("${keep[@]}")
}

# TERM, then KILL after grace seconds (5); also KILLs the descendants it had
# (nginx's worker) if they outlive it. Reaps it when it is this shell's child.
bench_stop() { # pid [grace_s]
	local pid=$1 i kids
	[[ -n $pid && $pid != 0 ]] || return 0
	kids=$(bench_descendants "$pid")
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < ${2:-5} * 10; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	for i in $kids; do kill -KILL "$i" 2>/dev/null || true; done
	bench_untrack "$pid"
}

bench_cleanup() {
	local p
	for p in "${bench_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${bench_pids[@]}"; do bench_stop "$p"; done
	rm -rf "$bench_tmp"
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

bench_port_open() { # port: does something accept connections on 127.0.0.1 there?
	timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# Never measure a stranger: moves port to the first one, from port on, that
# nothing listens on (any address).
bench_free_port() {
	local tries
	for ((tries = 0; tries < 100; tries++)); do
		if command -v ss >/dev/null; then
			ss -Htln "sport = :$port" | grep -q . || return 0
		else
			bench_port_open "$port" || return 0
		fi
		port=$((port + 1))
	done
	bench_die "no free port in the 100 from $((port - 100))"
}

# Starts cmd pinned to cpu in the background, its output into log, and waits
# until 127.0.0.1:port accepts; sets bench_pid. taskset (and env) exec, so
# bench_pid is the server itself. Returns 1, with the log's tail, when it
# exits first or does not accept within 10 s.
bench_start() { # name port log cpu cmd...
	local name=$1 p=$2 log=$3 cpu=$4 tries
	shift 4
	taskset -c "$cpu" "$@" >"$log" 2>&1 &
	bench_pid=$!
	bench_track "$bench_pid"
	for ((tries = 0; tries < 100; tries++)); do
		if ! kill -0 "$bench_pid" 2>/dev/null; then
			wait "$bench_pid" 2>/dev/null || true
			bench_untrack "$bench_pid"
			bench_warn "$name exited at startup; log $log:"
			tail -5 "$log" | sed 's/^/    /' >&2
			return 1
		fi
		bench_port_open "$p" && return 0
		sleep 0.1
	done
	bench_warn "$name did not accept on port $p within 10 s"
	bench_stop "$bench_pid"
	return 1
}

# The server under test, one at a time: started on port, pinned to the
# server's CPU, sets server_pid; stopped, port moves on, away from the
# sockets the last one left in TIME_WAIT.
bench_server_start() { # name log cmd...
	local name=$1 log=$2
	shift 2
	bench_start "$name" "$port" "$log" "$bench_srv_cpu" "$@" || return 1
	server_pid=$bench_pid
}

bench_server_stop() {
	bench_stop "$server_pid"
	server_pid=
	port=$((port + 1))
}

# One line per process: pid, parent pid, utime+stime+cutime+cstime.
bench_proc_table() {
	{ cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '{
		# comm (field 2) may hold spaces and ")": field 3 on follows the last ") ".
		split(substr($0, match($0, /\) [^)]*$/) + 2), f, " ") # f[1] is field 3
		print substr($0, 1, index($0, " ") - 1), f[2], f[12] + f[13] + f[14] + f[15]
	}'
}

# Reads bench_proc_table; for each "|"-separated group of root pids in
# groups, marks the roots and their descendants, then runs the END code
# given (per group i of ng: in_tree[] holds the tree; ticks[] and all are at
# hand).
bench_proc_trees() { # groups end-code
	bench_proc_table | awk -v groups="$1" '
		{ parent[$1] = $2; ticks[$1] = $3; all += $3 }
		function tree(roots,    n, r, j, p, grew) {
			for (p in in_tree)
				delete in_tree[p]
			n = split(roots, r, " ")
			for (j = 1; j <= n; j++)
				if (r[j] in ticks)
					in_tree[r[j]] = 1
			do {
				grew = 0
				for (p in parent)
					if (!(p in in_tree) && (parent[p] in in_tree)) {
						in_tree[p] = 1
						grew = 1
					}
			} while (grew)
		}
		END {
			ng = split(groups, g, "|")
			for (i = 1; i <= ng; i++) {
				tree(g[i])
				'"$2"'
			}
		}'
}

bench_descendants() { # pid: its live descendants, one a line
	bench_proc_trees "$1" 'for (p in in_tree) if (p != g[i]) print p'
}

bench_child() { # pid: prints a descendant of it (nginx's worker), waiting up to 5 s for one
	local tries p
	for ((tries = 0; tries < 50; tries++)); do
		p=$(bench_descendants "$1" | head -1)
		if [[ -n $p ]]; then
			echo "$p"
			return 0
		fi
		sleep 0.1
	done
	return 1
}

# ---- CPU accounting (defined at the top of this file). ----

# For each argument, a space-separated list of root pids (0 for none), the
# ticks of their process trees; then the ticks of every process.
bench_cpu_ticks() { # pids...
	local groups
	groups=$(
		IFS='|'
		echo "$*"
	)
	bench_proc_trees "$groups" '
		sum = 0
		for (p in in_tree)
			sum += ticks[p]
		printf "%d ", sum
		if (i == ng)
			print all + 0'
}

# Busy ticks (user, nice, system, irq, softirq in /proc/stat) of one CPU, or
# of all without an argument: everything done there, charged to a process or
# not.
bench_busy_ticks() { # [cpu]
	awk -v c="cpu${1:-}" '$1 == c { print $2 + $3 + $4 + $7 + $8 }' /proc/stat
}

# On two cores anything else running lands in the numbers: sets
# bench_busy_pct (percent of a CPU busy over one second) and warns above 10.
bench_busy_before() {
	local b0
	b0=$(bench_busy_ticks)
	sleep 1
	bench_busy_pct=$((($(bench_busy_ticks) - b0) * 100 / bench_hz))
	if ((bench_busy_pct > 10)); then
		bench_warn "warning: ${bench_busy_pct}% of a CPU was busy before starting; expect noise"
	fi
}

# Runs cmd and writes "user system", its CPU seconds and those of every
# descendant it waited for, into timefile; returns cmd's status.
bench_timed() { # timefile cmd...
	local tf=$1 TIMEFORMAT='%U %S'
	shift
	{ time "$@" 2>&3 3>&-; } 3>&2 2>"$tf"
}

# Runs cmd (the load; the caller redirects its output) and sets measured to
# key=value pairs over that window: wall_s; CPU seconds srv_s (the trees of
# srv_pids), up_s (those of up_pids: an upstream, 0 for none), cli_s (cmd),
# other_s (every other process); the same as percent of one CPU (srv_pct,
# up_pct, cli_pct, other_pct); and core_pct, the busy time of the server's
# CPU. Returns cmd's status.
bench_measure() { # srv_pids up_pids cmd...
	local srv=${1:-0} up=${2:-0} tf=$bench_tmp/measure.time t0 t1 z0 z1 rc=0
	local -a before after
	shift 2
	read -ra before < <(bench_cpu_ticks "$srv" "$up")
	z0=$(bench_busy_ticks "$bench_srv_cpu")
	t0=$(date +%s%N)
	bench_timed "$tf" "$@" || rc=$?
	t1=$(date +%s%N)
	z1=$(bench_busy_ticks "$bench_srv_cpu")
	read -ra after < <(bench_cpu_ticks "$srv" "$up")
	measured=$(awk -v wall_ns=$((t1 - t0)) -v st=$((after[0] - before[0])) \
		-v ut=$((after[1] - before[1])) -v all=$((after[2] - before[2])) \
		-v core=$((z1 - z0)) -v hz="$bench_hz" -v cli="$(tail -1 "$tf")" 'BEGIN {
		wall = wall_ns / 1e9
		split(cli, c, " ")
		cs = c[1] + c[2]
		other = all / hz - st / hz - ut / hz - cs
		if (other < 0)
			other = 0 # tick granularity
		printf "wall_s=%.3f srv_s=%.2f up_s=%.2f cli_s=%.2f other_s=%.2f ", wall, st / hz,
			ut / hz, cs, other
		printf "srv_pct=%.1f up_pct=%.1f cli_pct=%.1f other_pct=%.1f core_pct=%.1f\n",
			100 * st / hz / wall, 100 * ut / hz / wall, 100 * cs / wall, 100 * other / wall,
			100 * core / hz / wall
	}')
	return $rc
}

bench_kv() { # line key [default]: the value of the last key=value in line, or default (0)
	local f v=${3:-0}
	for f in $1; do
		[[ $f == "$2="* ]] && v=${f#*=}
	done
	echo "$v"
}

bench_per_cpu() { # rate cpu_pct: rate per CPU second
	awk -v r="$1" -v c="$2" 'BEGIN { printf "%.0f", (c > 0 ? r * 100 / c : 0) }'
}

bench_noisy() { # other_pct: itself, flagged "!" above 5
	awk -v o="$1" 'BEGIN { printf "%s%s", o, (o > 5 ? "!" : "") }'
}

# ---- wrk and curl. ----

# wrk's output (--latency) as key=value: rps reqs bpr (bytes read per
# response) p50_us p99_us errors (socket errors) non2xx.
bench_wrk_parse() { # file
	awk '
		function us(v) { # wrk latency text to microseconds
			if (v ~ /us$/) return v + 0
			if (v ~ /ms$/) return v * 1000
			if (v ~ /m$/) return v * 60e6
			return v * 1e6 # "s"
		}
		function bytes(v) { # wrk byte counts are binary multiples
			if (v ~ /TB$/) return v * 1024 ^ 4
			if (v ~ /GB$/) return v * 1024 ^ 3
			if (v ~ /MB$/) return v * 1024 ^ 2
			if (v ~ /KB$/) return v * 1024
			return v + 0
		}
		/^Requests\/sec:/ { rps = $2 }
		/ requests in / { reqs = $1; rd = bytes($5) }
		$1 == "50%" { p50 = us($2) }
		$1 == "99%" { p99 = us($2) }
		/^  Socket errors:/ { gsub(/,/, ""); err += $4 + $6 + $8 + $10 }
		/^  Non-2xx or 3xx responses:/ { bad += $5 }
		END {
			printf "rps=%.0f reqs=%d bpr=%.0f p50_us=%.0f p99_us=%.0f errors=%d non2xx=%d\n",
				rps, reqs, (reqs > 0 ? rd / reqs : 0), p50, p99, err, bad
		}' "$1"
}

# Runs wrk (one thread, on the client's CPU, --latency) against url while
# accounting CPU; prints wrk's figures and measured as one key=value line.
bench_wrk() { # conns secs srv_pids up_pids url [wrk args]
	local conns=$1 secs=$2 srv=$3 up=$4 res=$bench_tmp/wrk.out rc=0
	shift 4
	bench_measure "$srv" "$up" bench_client $((secs + 15)) wrk -t1 -c"$conns" -d"${secs}s" \
		--latency "$@" >"$res" 2>&1 || rc=$?
	if ((rc != 0)) || ! grep -q '^Requests/sec:' "$res"; then
		bench_warn "wrk failed (rc $rc):"
		sed 's/^/    /' "$res" >&2
	fi
	echo "$(bench_wrk_parse "$res") $measured"
}

# Unmeasured load so that the first point is not cold.
bench_warm() { # secs url [wrk args]
	local secs=$1
	shift
	if ((secs > 0)); then
		bench_client $((secs + 10)) wrk -t1 -c16 -d"${secs}s" "$@" >/dev/null 2>&1 || true
	fi
}

bench_check_get() { # name url file: curl must get 200 and exactly that file
	local code body=$bench_tmp/body
	: >"$body"
	code=$(curl -s -o "$body" -w '%{http_code}' --max-time 5 "$2") || code=000
	if [[ $code != 200 ]] || ! cmp -s "$body" "$3"; then
		bench_warn "$1: GET $2 gave status $code and $(wc -c <"$body") bytes, not 200 and $(wc -c <"$3")"
		return 1
	fi
}

# ---- Peers: finding them and, as root, installing them from Debian. ----

bench_require() { # command [package]: exits when command is missing
	command -v "$1" >/dev/null || bench_die "needs $1 (apt-get install -y ${2:-$1})"
}

bench_find_bin() { # name: prints its path (PATH or /usr/sbin)
	command -v "$1" 2>/dev/null || { [[ -x /usr/sbin/$1 ]] && echo "/usr/sbin/$1"; }
}

# Installs Debian packages as root unless NO_INSTALL=1 (log in
# build/bench/apt.log). Debian starts a packaged service on install where an
# init system runs; it listens on port 80 and is never measured.
bench_apt_install() { # package...
	local log=build/bench/apt.log
	if [[ ${NO_INSTALL:-0} == 1 || $(id -u) != 0 ]]; then return 1; fi
	mkdir -p build/bench
	bench_warn "installing $* (log $log)"
	DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q "$@" >>"$log" 2>&1 && return 0
	timeout 300 apt-get update -q >>"$log" 2>&1 || true
	DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q "$@" >>"$log" 2>&1
}

# Finds command, else installs the first of the packages that provides it.
bench_ensure_bin() { # command package...
	local cmd=$1 pkg
	shift
	bench_find_bin "$cmd" >/dev/null && return 0
	for pkg in "$@"; do
		bench_apt_install "$pkg" || continue
		bench_find_bin "$cmd" >/dev/null && return 0
	done
	return 1
}

bench_ensure_file() { # path package: the file, else installs package for it
	[[ -e $1 ]] || bench_apt_install "$2" || true
	[[ -e $1 ]]
}

# Writes conf (an absolute path, NAME.conf) for nginx: one worker in the
# foreground, the master process on or off, no access log, its pid, error
# log (NAME.error.log) and temporary files (NAME-tmp/) beside conf. stdin is
# what goes inside http { }; main holds lines for the main context. Sets
# bench_nginx to the command that runs it.
bench_nginx_conf() { # conf master(on|off) worker_connections [main]
	local conf=$1 base=${1%.conf} t=${1%.conf}-tmp
	mkdir -p "$t"
	{
		echo "# Generated for $0 by bench/lib.sh."
		if [[ -n ${4:-} ]]; then echo "$4"; fi
		cat <<EOF
worker_processes 1;
daemon off;
master_process $2;
pid $base.pid;
error_log $base.error.log warn;
worker_rlimit_nofile 20000;
events {
	worker_connections $3;
}
http {
	access_log off;
	client_body_temp_path $t/body;
	proxy_temp_path $t/proxy;
	fastcgi_temp_path $t/fastcgi;
	uwsgi_temp_path $t/uwsgi;
	scgi_temp_path $t/scgi;
EOF
		cat
		echo "}"
	} >"$conf"
	bench_nginx=("$(bench_find_bin nginx || echo nginx)" -p "$(dirname "$conf")/" -c "$conf"
		-e "$base.error.log")
}

# Writes conf (NAME.conf) for h2o: one thread, no access log, serving the
# files of dir (text/plain by default) on 127.0.0.1:port, its error log
# NAME.error.log; further arguments are more top-level lines, and the lines
# of the array bench_h2o_listen (empty unless set) go inside listen: (an
# ssl: block, for HTTPS). Sets bench_h2o to the command that runs it.
# Started as root, h2o drops to nobody after binding, and keeps a helper
# child (a perl backtrace annotator).
bench_h2o_listen=()
bench_h2o_conf() { # conf port max_connections dir [line...]
	local conf=$1 port=$2 max=$3 dir=$4
	shift 4
	{
		echo "# Generated for $0 by bench/lib.sh."
		echo "num-threads: 1"
		echo "max-connections: $max"
		if (($#)); then printf '%s\n' "$@"; fi
		cat <<EOF
error-log: ${conf%.conf}.error.log
listen:
  host: 127.0.0.1
  port: $port
EOF
		if ((${#bench_h2o_listen[@]})); then printf '  %s\n' "${bench_h2o_listen[@]}"; fi
		cat <<EOF
hosts:
  default:
    paths:
      /:
        file.dir: $dir
        file.mime.setdefaulttype: text/plain
EOF
	} >"$conf"
	bench_h2o=("$(bench_find_bin h2o || echo h2o)" -c "$conf")
}

bench_rss_kib() { # pid: its VmRSS in KiB, 0 if gone
	{ cat "/proc/$1/status" 2>/dev/null || true; } |
		awk '/^VmRSS:/ { print $2; found = 1 } END { if (!found) print 0 }'
}

bench_fd_count() { # pid: its open fds, 0 if gone
	local n
	n=$(find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l) || n=0
	echo "$n"
}

# ---- TLS benchmarks' clients. ----

# What every client of a TLS benchmark offers, written to DIR/client.cnf and
# made theirs (OPENSSL_CONF): TLS 1.3 only, the one cipher suite and the one
# group given; curl trusts DIR/ca.pem. The servers never read it.
bench_tls_clients() { # dir suite group
	cat >"$1/client.cnf" <<EOF
# Generated by bench/lib.sh (bench_tls_clients): what every client of the
# benchmark offers (OPENSSL_CONF). The servers do not read it.
openssl_conf = keel_bench_tls
[keel_bench_tls]
ssl_conf = keel_bench_ssl
[keel_bench_ssl]
system_default = keel_bench_client
[keel_bench_client]
MinProtocol = TLSv1.3
MaxProtocol = TLSv1.3
Ciphersuites = $2
Groups = $3
EOF
	export OPENSSL_CONF=$1/client.cnf
	export CURL_CA_BUNDLE=$1/ca.pem
}

# ---- Limits and plots. ----

# Raises the fd limit to want (or the hard limit); exits if that is below
# need.
bench_fd_limit() { # want [need]
	local want=$1 hard
	hard=$(ulimit -Hn)
	if [[ $hard != unlimited ]] && ((hard < want)); then want=$hard; fi
	ulimit -n "$want"
	if ((want < ${2:-0})); then
		bench_die "fd limit $want is too low: $2 needed (raise the hard limit or ask for less)"
	fi
}

# Draws gp with gnuplot into png, or says why not.
bench_plot() { # gp png
	if ! command -v gnuplot >/dev/null; then
		bench_warn "gnuplot missing (apt-get install -y gnuplot-nox); no plot"
	elif gnuplot "$1"; then
		echo "wrote $2"
	else
		bench_warn "gnuplot failed on $1"
	fi
}

bench_tsv() { # file field...: appends the fields as one tab-separated line
	local file=$1 IFS=$'\t'
	shift
	echo "$*" >>"$file"
}
