#!/usr/bin/env bash
# Run a long plan on a lent GPU machine across several device calls (each call <= 10 minutes).
#   bash tools/gpu_job.sh start PLAN SECONDS   install the carried wheels (.whl, .whl-maze) and GL libs,
#                                              start PLAN detached, follow it up to SECONDS, pack
#   bash tools/gpu_job.sh wait SECONDS         follow the running plan up to SECONDS, pack
# The plan outlives a call while the machine stays warm (30 s after a call: chain the calls); seen
# working on the H200 2026-11-29. Never follow it with `pgrep -f` on words of your own command line.
# PLAN is a bash file run from the repo root with R (small results: JSON, logs) and P (files to
# bring back whole, at most 7, each < 16 MB) exported; R goes back as $OUT/results.tar.gz.
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${JOB_ROOT:-/tmp/job}
verb=$1
export PYTHONPATH=/tmp/site:$REPO/src PYTHONUNBUFFERED=1 MUJOCO_GL=disable
export LD_LIBRARY_PATH=/tmp/gl/usr/lib/x86_64-linux-gnu:/tmp/gl/lib/x86_64-linux-gnu
export R=$ROOT/res P=$ROOT/pack DRIFTLESS_GIT_COMMIT=${DRIFTLESS_GIT_COMMIT:-unknown}
mkdir -p "$R" "$P"
if [ "$verb" = start ]; then
  plan=$2; secs=${3:-540}
  for d in "$REPO/.whl" "$REPO/.whl-maze"; do  # Procgen's, MuJoCo's (tools/gpu_prepare.sh [maze])
    if [ -d "$d" ]; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$d"/*.whl || exit 1
    fi
  done
  if [ -d "$REPO/.gl" ]; then mkdir -p /tmp/gl && for f in "$REPO"/.gl/*.deb; do dpkg -x "$f" /tmp/gl; done; fi
  nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader
  rm -f "$ROOT/pid"
  # the plan writes its own pid (setsid may fork, so $! can name a process that is already gone)
  (cd "$REPO" && setsid nohup bash -c "echo \$\$ > $ROOT/pid; set -x; source $plan" > "$R/log.txt" 2>&1 < /dev/null &)
  for _ in $(seq 50); do [ -s "$ROOT/pid" ] && break; sleep 0.1; done
else
  secs=${2:-540}
fi
[ -f "$ROOT/pid" ] || { echo "no plan running here (a fresh machine?)"; exit 2; }
timeout "$secs" tail --pid="$(cat "$ROOT/pid")" -f /dev/null
if kill -0 "$(cat "$ROOT/pid")" 2>/dev/null; then echo "plan: still running"; else echo "plan: finished"; fi
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
tar czf "$OUT/results.tar.gz" -C "$ROOT" res
for f in "$P"/*; do [ -f "$f" ] && cp "$f" "$OUT/"; done
# (progress bars redraw with carriage returns: one line each, then dropped)
tr '\r' '\n' < "$R/log.txt" | grep -v "%|\|Warning\|warn" | grep -v "^+ \|^  " | tail -40
ls -la "$OUT"
