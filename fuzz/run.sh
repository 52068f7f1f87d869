#!/bin/sh
# Build keel's libFuzzer drivers and run each for a bounded time.
#
#   sh fuzz/run.sh                      every driver, FUZZ_SECONDS (default 60) each
#   FUZZ_SECONDS=300 sh fuzz/run.sh     longer
#   sh fuzz/run.sh fuzz_chunked         only the named drivers
#
# Environment: FUZZ_SECONDS per driver; FUZZ_CFLAGS extra compiler flags
# (e.g. -DKEEL_FUZZ_STRICT_STATUS=0); FUZZ_ARGS extra libFuzzer flags
# (e.g. -jobs=2 -workers=2); FUZZ_COVERAGE=0 skips the line-coverage report;
# CC (default clang).
#
# Each driver is built with ASan+UBSan into build/fuzz/ and run on
# build/fuzz/corpus-<driver>, a working corpus seeded from fuzz/corpus/<name>/
# (so the checked-in seeds stay small), with fuzz/http.dict. Only the parser
# sources get coverage instrumentation: libFuzzer's cov/ft figures are the
# parser's, not the driver's. A crash, leak, timeout or broken invariant is
# written to build/fuzz/artifacts-<driver>/ and makes this script exit 1.
# Afterwards each working corpus is replayed through a source-coverage build
# and llvm-cov prints line/branch coverage of src/http/parse.c and chunked.c.
set -u

cd "$(dirname "$0")/.." || exit 2
CC=${CC:-clang}
SECONDS_EACH=${FUZZ_SECONDS:-60}
OUT=build/fuzz
DRIVERS=${*:-"fuzz_request fuzz_chunked fuzz_response"}
PARSER="src/http/parse.c src/http/chunked.c"
BASE="-std=c17 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer -Iinclude ${FUZZ_CFLAGS:-}"
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined"

# A smaller ASan quarantine: the drivers make many tiny windows, and the default 256 MB of
# quarantined chunks pushes RSS towards libFuzzer's 2 GB limit in a long run.
ASAN_OPTIONS=${ASAN_OPTIONS:-quarantine_size_mb=64}
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
export ASAN_OPTIONS UBSAN_OPTIONS

mkdir -p "$OUT/obj"
failed=""
for d in $DRIVERS; do
	name=${d#fuzz_}
	echo "== $d: build"
	objs=""
	ok=1
	for src in $PARSER; do
		o="$OUT/obj/$(basename "$src" .c).o"
		# shellcheck disable=SC2086 # flag lists
		$CC $BASE $SAN -fsanitize=fuzzer-no-link -c "$src" -o "$o" || ok=0
		objs="$objs $o"
	done
	# shellcheck disable=SC2086
	$CC $BASE $SAN -Wall -Wextra -Werror -c "fuzz/$d.c" -o "$OUT/obj/$d.o" || ok=0
	# shellcheck disable=SC2086
	[ $ok = 1 ] && $CC $SAN -fsanitize=fuzzer $objs "$OUT/obj/$d.o" -o "$OUT/$d" || ok=0
	if [ $ok = 0 ]; then
		failed="$failed $d(build)"
		continue
	fi
	corpus="$OUT/corpus-$d"
	artifacts="$OUT/artifacts-$d"
	mkdir -p "$corpus" "$artifacts"
	cp fuzz/corpus/"$name"/* "$corpus"/ 2>/dev/null
	echo "== $d: fuzz for ${SECONDS_EACH}s"
	# shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
	"$OUT/$d" -max_total_time="$SECONDS_EACH" -max_len=16384 -timeout=10 \
		-dict=fuzz/http.dict -artifact_prefix="$artifacts/" -print_final_stats=1 \
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

# Line and branch coverage of the parser over the corpora the run left behind.
if [ "${FUZZ_COVERAGE:-1}" != 0 ] && command -v llvm-profdata >/dev/null && command -v llvm-cov >/dev/null; then
	echo "== coverage of the working corpora"
	cov="$OUT/cov"
	mkdir -p "$cov"
	rm -f "$cov"/*.profraw
	bins=""
	for d in $DRIVERS; do
		[ -d "$OUT/corpus-$d" ] || continue
		# shellcheck disable=SC2086
		$CC $BASE -fprofile-instr-generate -fcoverage-mapping -fsanitize=fuzzer \
			$PARSER "fuzz/$d.c" -o "$cov/$d" || continue
		LLVM_PROFILE_FILE="$cov/$d.profraw" "$cov/$d" -runs=0 "$OUT/corpus-$d" >/dev/null 2>&1
		bins="${bins:+$bins -object }$cov/$d"
	done
	if [ -n "$bins" ] && llvm-profdata merge -sparse "$cov"/*.profraw -o "$cov/all.profdata"; then
		# shellcheck disable=SC2086
		llvm-cov report -instr-profile="$cov/all.profdata" $bins $PARSER
	fi
fi

if [ -n "$failed" ]; then
	echo "fuzz: failed:$failed"
	exit 1
fi
echo "fuzz: all drivers ran ${SECONDS_EACH}s without a finding"
