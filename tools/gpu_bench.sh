#!/usr/bin/env bash
# Run a list of benchmark commands detached on a lent GPU machine, over one or more device calls.
#   bash tools/gpu_bench.sh start PLAN SECONDS   start PLAN (a file of shell lines, one command each,
#                                                run in order from the repo root), wait up to SECONDS
#   bash tools/gpu_bench.sh wait SECONDS         wait again for the same plan
# Each line's output goes to $ROOT/log.txt; JSON results written under $ROOT/res/ are packed
# into $OUT/results.tar.gz at the end of every call, with the log, so a call cut short still
# brings back what finished.
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${BENCH_ROOT:-/tmp/bench}
verb=$1
export PYTHONPATH=$REPO/src PYTHONUNBUFFERED=1 DRIFTLESS_GIT_COMMIT=${DRIFTLESS_GIT_COMMIT:-unknown}
mkdir -p "$ROOT/res"
if [ "$verb" = start ]; then
  plan=$2; secs=${3:-540}
  nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv,noheader
  cp "$plan" "$ROOT/plan.sh"
  (cd "$REPO" && setsid nohup bash -c "set -x; cd $REPO; R=$ROOT/res; source $ROOT/plan.sh" \
      > "$ROOT/log.txt" 2>&1 < /dev/null & echo $! > "$ROOT/pid")
else
  secs=${2:-540}
fi
timeout "$secs" tail --pid="$(cat "$ROOT/pid")" -f /dev/null
tar czf "$OUT/results.tar.gz" -C "$ROOT" res log.txt 2>/dev/null
if kill -0 "$(cat "$ROOT/pid")" 2>/dev/null; then echo "STILL RUNNING"; else echo "PLAN DONE"; fi
grep -v "^USDT\|^+ \|it/s\]\|s/it\]" "$ROOT/log.txt" | tail -40
