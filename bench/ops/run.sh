#!/usr/bin/env bash
# Operations under load: what reloads, binary upgrades, log reopens and a bad
# configuration cost the clients of a keel -c site running at half of what it
# can serve. Run from the repo root:
#
#     bench/ops/run.sh            # ~1.5 minutes
#     QUICK=1 bench/ops/run.sh    # ~40 s
#
# The site (one worker, pinned to SERVER_CPU) serves a 13-byte static file.
# First its saturation: keel load closed-loop, 64 connections, pinned to
# CLIENT_CPU. Then, each at half that rate (open loop, keel load --rate,
# 16 connections), one run per scenario: nothing (the baseline), 10 reloads
# (SIGHUP, each with a changed server_name), 3 binary upgrades (SIGUSR2,
# each new process upgraded in turn), 5 log reopens (the access log renamed,
# then SIGUSR1) and a reload with a broken file. Per scenario: requests,
# failed requests (keel load's errors), retried ones (sent again after their
# kept-alive connection closed before the answer began), p99 and max latency;
# for the reopens, access-log lines against responses. Then two timings: from
# SIGTERM to new clients refused (no stop delay), and from SIGTERM to
# /_keel/ready answering 503 (stop_delay_ms set).
# Results: the table on stdout and in build/bench/ops/results.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/lib.sh
bench_work ops
[[ -x build/keel ]] || bench_die "build/keel missing: run make first"
exec python3 bench/ops/ops.py "$work_abs" "$bench_srv_cpu" "$bench_cli_cpu" "$bench_quick"
