#!/usr/bin/env bash
# Run a plan of benchmark commands on a lent GPU machine within one device call.
#   bash tools/gpu_bench.sh PLAN SECONDS
# PLAN is a file of shell lines run in order from the repo root, with $R the results folder;
# after SECONDS the plan is stopped (a device call is capped at 10 minutes, and processes do not
# outlive the call). JSON written under $R and the log are packed into $OUT/results.tar.gz.
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${BENCH_ROOT:-/tmp/bench}
plan=$1; secs=${2:-540}
export PYTHONPATH=$REPO/src PYTHONUNBUFFERED=1 DRIFTLESS_GIT_COMMIT=${DRIFTLESS_GIT_COMMIT:-unknown}
mkdir -p "$ROOT/res"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv,noheader
(cd "$REPO" && timeout "$secs" bash -c "set -x; R=$ROOT/res; source $plan" > "$ROOT/log.txt" 2>&1)
echo "plan exit: $?"
tar czf "$OUT/results.tar.gz" -C "$ROOT" res log.txt 2>/dev/null
grep -v "^USDT\|^+ \|it/s\]\|s/it\]\|Warning\|warn\|^  " "$ROOT/log.txt" | tail -60
