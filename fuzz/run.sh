#!/bin/sh
# Build keel's libFuzzer drivers and run each for a bounded time.
#
#   sh fuzz/run.sh                      every driver, FUZZ_SECONDS (default 60) each
#   FUZZ_SECONDS=300 sh fuzz/run.sh     longer
#   sh fuzz/run.sh fuzz_chunked         only the named drivers
#   KEEL_BACKEND=epoll sh fuzz/run.sh fuzz_server    the whole server on the epoll backend
#
# Environment: FUZZ_SECONDS per driver; FUZZ_CFLAGS extra compiler flags
# (e.g. -DKEEL_FUZZ_STRICT_STATUS=0); FUZZ_ARGS extra libFuzzer flags
# (e.g. -jobs=2 -workers=2); FUZZ_COVERAGE=0 skips the line-coverage report;
# KEEL_BACKEND (default io_uring) for fuzz_server; CC (default clang).
#
# Each driver is built with ASan+UBSan into build/fuzz/ and run on
# build/fuzz/corpus-<driver>, a working corpus seeded from fuzz/corpus/<name>/
# (so the checked-in seeds stay small), with fuzz/http.dict (and, for
# fuzz_server, fuzz/server.dict). The parser drivers link only the parser
# sources, and only those get coverage instrumentation: their cov/ft figures
# are the parser's, not the driver's. fuzz_server links the whole library
# (src/core, src/backend, src/net, src/http), all of it instrumented, and
# runs a real server on a real loop. A crash, leak, timeout or broken
# invariant is written to build/fuzz/artifacts-<driver>/ and makes this
# script exit 1. Afterwards each working corpus is replayed through a
# source-coverage build and llvm-cov prints line/branch coverage of the
# parser (src/http/parse.c, chunked.c) and, with fuzz_server, of every
# library file.
set -u

cd "$(dirname "$0")/.." || exit 2
CC=${CC:-clang}
SECONDS_EACH=${FUZZ_SECONDS:-60}
OUT=build/fuzz
DRIVERS=${*:-"fuzz_request fuzz_chunked fuzz_response fuzz_ws fuzz_proxyproto fuzz_server"}
PARSER="src/http/parse.c src/http/chunked.c"
# The library, as the Makefile's LIB_SRC.
LIB=$(ls src/core/*.c src/backend/*.c src/backend/uring/*.c src/backend/epoll/*.c src/net/*.c src/http/*.c)
BASE="-std=c17 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer -Iinclude -Isrc -pthread ${FUZZ_CFLAGS:-}"
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined"

# A smaller ASan quarantine: the drivers make many tiny windows, and the default 256 MB of
# quarantined chunks pushes RSS towards libFuzzer's 2 GB limit in a long run.
ASAN_OPTIONS=${ASAN_OPTIONS:-quarantine_size_mb=64}
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
KEEL_BACKEND=${KEEL_BACKEND:-io_uring}
export ASAN_OPTIONS UBSAN_OPTIONS KEEL_BACKEND

# What each driver links (and instruments), and the libraries it needs.
sources() {
	case $1 in
	fuzz_server) echo "$LIB" ;;
	fuzz_ws) echo "src/http/ws_codec.c" ;;
	fuzz_proxyproto) echo "src/net/proxy_proto.c" ;;
	*) echo "$PARSER" ;;
	esac
}
libs() {
	case $1 in
	fuzz_server) echo "-luring -lssl -lcrypto -lnghttp2 -pthread" ;; # the library has TLS and HTTP/2
	fuzz_ws) echo "-lcrypto" ;;                                         # (the handshake's SHA-1)
	*) echo "" ;;
	esac
}
dict() {
	case $1 in
	fuzz_server)
		cat fuzz/http.dict fuzz/server.dict >"$OUT/server.dict"
		echo "$OUT/server.dict"
		;;
	*) echo fuzz/http.dict ;;
	esac
}

mkdir -p "$OUT/obj"
built=" "
failed=""
for d in $DRIVERS; do
	name=${d#fuzz_}
	echo "== $d: build"
	objs=""
	ok=1
	for src in $(sources "$d"); do
		# src/backend/uring/net.c and src/backend/epoll/net.c: name objects by path.
		o="$OUT/obj/$(echo "${src%.c}" | tr / _).o"
		case $built in
		*" $o "*) ;;
		*)
			# shellcheck disable=SC2086 # flag lists
			if $CC $BASE $SAN -fsanitize=fuzzer-no-link -c "$src" -o "$o"; then
				built="$built$o "
			else
				ok=0
			fi
			;;
		esac
		objs="$objs $o"
	done
	# shellcheck disable=SC2086
	$CC $BASE $SAN -Wall -Wextra -Werror -c "fuzz/$d.c" -o "$OUT/obj/$d.o" || ok=0
	# shellcheck disable=SC2086,SC2046 # flag and file lists
	[ $ok = 1 ] && $CC $SAN -fsanitize=fuzzer $objs "$OUT/obj/$d.o" $(libs "$d") -o "$OUT/$d" || ok=0
	if [ $ok = 0 ]; then
		failed="$failed $d(build)"
		continue
	fi
	corpus="$OUT/corpus-$d"
	artifacts="$OUT/artifacts-$d"
	mkdir -p "$corpus" "$artifacts"
	cp fuzz/corpus/"$name"/* "$corpus"/ 2>/dev/null
	case $d in
	fuzz_server) echo "== $d: fuzz for ${SECONDS_EACH}s (KEEL_BACKEND=$KEEL_BACKEND)" ;;
	*) echo "== $d: fuzz for ${SECONDS_EACH}s" ;;
	esac
	# shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
	"$OUT/$d" -max_total_time="$SECONDS_EACH" -max_len=16384 -timeout=10 \
		-dict="$(dict "$d")" -artifact_prefix="$artifacts/" -print_final_stats=1 \
		${FUZZ_ARGS:-} "$corpus" >"$OUT/$d.log" 2>&1
	rc=$?
	grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' \
		"$OUT/$d.log"
	if [ $rc -ne 0 ]; then
		echo "== $d: FAILED (exit $rc); log $OUT/$d.log"
		grep -E 'FUZZ INVARIANT|ERROR: |SUMMARY: |Test unit written' "$OUT/$d.log" | head -5
		failed="$failed $d"
	fi
done

# Line and branch coverage over the corpora the run left behind.
if [ "${FUZZ_COVERAGE:-1}" != 0 ] && command -v llvm-profdata >/dev/null && command -v llvm-cov >/dev/null; then
	echo "== coverage of the working corpora"
	cov="$OUT/cov"
	mkdir -p "$cov"
	rm -f "$cov"/*.profraw
	bins=""
	report="$PARSER"
	for d in $DRIVERS; do
		[ -d "$OUT/corpus-$d" ] || continue
		# shellcheck disable=SC2086,SC2046 # flag and file lists
		$CC $BASE -fprofile-instr-generate -fcoverage-mapping -fsanitize=fuzzer \
			$(sources "$d") "fuzz/$d.c" $(libs "$d") -o "$cov/$d" || continue
		LLVM_PROFILE_FILE="$cov/$d.profraw" "$cov/$d" -runs=0 "$OUT/corpus-$d" >/dev/null 2>&1
		bins="${bins:+$bins -object }$cov/$d"
		[ "$d" = fuzz_server ] && report="$LIB"
	done
	if [ -n "$bins" ] && llvm-profdata merge -sparse "$cov"/*.profraw -o "$cov/all.profdata"; then
		# shellcheck disable=SC2086
		llvm-cov report -instr-profile="$cov/all.profdata" $bins $report
	fi
fi

if [ -n "$failed" ]; then
	echo "fuzz: failed:$failed"
	exit 1
fi
echo "fuzz: all drivers ran ${SECONDS_EACH}s without a finding"
