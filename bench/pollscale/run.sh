#!/usr/bin/env bash
# Reproduces TLPI table 63-9 (seconds for 100,000 monitoring operations with
# N fds watched, one ready) and adds io_uring. Run from the repo root:
#
#     bench/pollscale/run.sh [budget_s]
#
# Builds build/bench/pollscale, prints our table beside the book's, writes
# build/bench/pollscale.tsv and draws build/bench/pollscale.png. A run that
# would take longer than budget_s (default 10; 1 with QUICK=1) stops there and
# is extrapolated to 100,000 operations; such entries are marked '*'. See
# pollscale.c for what one operation is.
set -euo pipefail

cd "$(dirname "$0")/../.."
. bench/lib.sh
bin=$out/pollscale
ops=100000
budget_s=${1:-$( ((bench_quick)) && echo 1 || echo 10)}
sizes=(10 100 1000 10000)
methods=(poll select epoll io_uring)

# TLPI table 63-9, seconds; the book has no io_uring column.
declare -A book=(
	[poll,10]=0.61 [poll,100]=2.9 [poll,1000]=35 [poll,10000]=990
	[select,10]=0.73 [select,100]=3.0 [select,1000]=35 [select,10000]=930
	[epoll,10]=0.41 [epoll,100]=0.42 [epoll,1000]=0.53 [epoll,10000]=0.66
)

[[ -e /usr/include/liburing.h ]] || bench_die "liburing.h missing: apt-get install -y liburing-dev"
cc -std=c17 -O2 -Wall -Wextra -o "$bin" bench/pollscale/pollscale.c -luring

declare -A secs
notes=()
measure() { # key, then pollscale arguments
	local key=$1 line n_ops n_run s
	shift
	line=$("$bin" -n "$ops" -t "$budget_s" "$@" 2>/dev/null)
	read -r _ _ n_ops n_run s <<<"$line"
	if [[ $s == NA ]]; then
		secs[$key]=NA
	elif ((n_run < n_ops)); then
		secs[$key]="$s*"
		notes+=("${key%,*} N=${key#*,}: $n_run ops run, scaled x$(awk "BEGIN{printf \"%.1f\", $n_ops/$n_run}")")
	else
		secs[$key]=$s
	fi
}

for n in "${sizes[@]}"; do
	for m in "${methods[@]}" none; do
		measure "$m,$n" -m "$m" -N "$n"
	done
	for m in poll select epoll; do
		measure "$m-b,$n" -m "$m" -N "$n" -b
	done
done

fmt() { # seconds[*] -> 3 significant digits, keeping the mark
	local v=$1 mark=
	[[ $v == *'*' ]] && { mark='*'; v=${v%'*'}; }
	[[ $v == NA ]] && { echo "N/A"; return; }
	printf '%.3g%s' "$v" "$mark"
}

echo "Seconds for $ops monitoring operations, N eventfds watched, one ready."
echo "One operation = write(ready fd) + the monitoring call + read(ready fd)."
echo
printf '%6s | %9s %9s %9s %9s %10s | %9s %9s %9s\n' \
	"" ours "" "" "" "" book "" ""
printf '%6s | %9s %9s %9s %9s %10s | %9s %9s %9s\n' \
	N poll select epoll io_uring write+read poll select epoll
for n in "${sizes[@]}"; do
	printf '%6s | %9s %9s %9s %9s %10s | %9s %9s %9s\n' "$n" \
		"$(fmt "${secs[poll,$n]}")" "$(fmt "${secs[select,$n]}")" \
		"$(fmt "${secs[epoll,$n]}")" "$(fmt "${secs[io_uring,$n]}")" \
		"$(fmt "${secs[none,$n]}")" \
		"${book[poll,$n]}" "${book[select,$n]}" "${book[epoll,$n]}"
done
echo
echo "The book's loop (-b: the fd stays ready, one operation = the call alone):"
printf '%6s | %9s %9s %9s\n' N poll select epoll
for n in "${sizes[@]}"; do
	printf '%6s | %9s %9s %9s\n' "$n" "$(fmt "${secs[poll-b,$n]}")" \
		"$(fmt "${secs[select-b,$n]}")" "$(fmt "${secs[epoll-b,$n]}")"
done
echo
echo "write+read: the same write and read with no monitoring call (-m none)."
echo "N/A: select cannot watch an fd >= FD_SETSIZE (1024); N=10000 needs fd 10004."
for note in "${notes[@]}"; do
	echo "* extrapolated: $note (budget ${budget_s}s)"
done

{
	echo "# pollscale: seconds for $ops operations; N eventfds, one ready."
	echo "# op = write + call + read; *_bare = book's loop (call alone); book_* = TLPI table 63-9."
	for note in "${notes[@]}"; do echo "# extrapolated: $note"; done
	printf '# N\tpoll\tselect\tepoll\tio_uring\twrite_read\tpoll_bare\tselect_bare\tepoll_bare\tbook_poll\tbook_select\tbook_epoll\n'
	for n in "${sizes[@]}"; do
		row=$n
		for k in poll select epoll io_uring none poll-b select-b epoll-b; do
			row+=$'\t'${secs[$k,$n]%'*'}
		done
		for m in poll select epoll; do row+=$'\t'${book[$m,$n]}; done
		echo "$row"
	done
} >"$out/pollscale.tsv"
echo
echo "wrote $out/pollscale.tsv"

cat >"$out/pollscale.gp" <<EOF
set terminal pngcairo size 800,560
set output "$out/pollscale.png"
set title "Seconds for $ops monitoring operations, one of N fds ready"
set logscale xy
set xlabel "N (fds watched)"
set ylabel "seconds"
set key top left
set grid
set datafile missing "NA"
set xrange [7:14000]
f = "$out/pollscale.tsv"
plot f u 1:2 w lp lc 1 pt 7 t "poll", \
     f u 1:3 w lp lc 2 pt 7 t "select", \
     f u 1:4 w lp lc 3 pt 7 t "epoll", \
     f u 1:5 w lp lc 4 pt 7 t "io_uring" noenhanced, \
     f u 1:6 w l lc rgb "gray40" dt 3 lw 2 t "write+read alone", \
     f u 1:10 w lp lc 1 dt 2 pt 6 t "poll (book)", \
     f u 1:11 w lp lc 2 dt 2 pt 6 t "select (book)", \
     f u 1:12 w lp lc 3 dt 2 pt 6 t "epoll (book)"
EOF
bench_plot "$out/pollscale.gp" "$out/pollscale.png"
