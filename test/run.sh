#!/bin/sh
# Run every test program once per backend, each with a timeout.
# Exit status 0 = pass, 77 = skip, anything else = fail.
# Ends with one line: "N passed, N failed, N skipped".
#
#   BUILD=build sh test/run.sh [name-filter]
BUILD=${BUILD:-build}
TIMEOUT=${TEST_TIMEOUT:-180}
BACKENDS=${BACKENDS:-"io_uring epoll"}
filter=${1:-}
pass=0 fail=0 skip=0 failed=""
export KEEL_BIN="$BUILD/keel" KEEL_BUILD="$BUILD"
ulimit -n 20000 2>/dev/null || ulimit -n 4096 2>/dev/null || true
for be in $BACKENDS; do
	for t in "$BUILD"/test/test_*; do
		[ -x "$t" ] || continue
		name=$(basename "$t")
		case "$name" in *"$filter"*) ;; *) continue ;; esac
		log="$BUILD/test/$name.$be.log"
		start=$(date +%s)
		KEEL_BACKEND=$be timeout -k 5 "$TIMEOUT" "$t" >"$log" 2>&1
		rc=$?
		secs=$(($(date +%s) - start))
		case $rc in
		0) pass=$((pass + 1)); echo "PASS $name [$be] (${secs}s)" ;;
		77) skip=$((skip + 1)); echo "SKIP $name [$be]: $(tail -n 1 "$log")" ;;
		*) fail=$((fail + 1)); failed="$failed $name[$be]"
		   [ $rc = 124 ] && echo "FAIL $name [$be]: timed out after ${TIMEOUT}s" || echo "FAIL $name [$be] (exit $rc)"
		   sed 's/^/    /' "$log" | tail -n 30 ;;
		esac
	done
done
[ -n "$failed" ] && echo "failed:$failed"
echo "$pass passed, $fail failed, $skip skipped"
[ $fail = 0 ] && [ $pass -gt 0 ]
