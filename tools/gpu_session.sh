#!/usr/bin/env bash
# Run the CoinRun recipe on a lent GPU machine in chunks of one device call each.
# SUPERSEDED with tools/coinrun_recipe.py by `driftless train world ... --max-minutes 9`, called
# again until run.json says done (docs/training.md); kept as the provenance of docs/benchmarks.md, section 1.
#   bash tools/gpu_session.sh start SECONDS   install Procgen wheels + GL libs, start the recipe
#                                             detached, wait up to SECONDS, pack results to $OUT
#   bash tools/gpu_session.sh wait SECONDS    wait for the detached recipe, pack results to $OUT
# Needs .whl/ (cp312 wheels: procgen-mirror, gym3, gym, gym-notices, cffi, pycparser) and .gl/
# (Debian debs of libGL and friends) carried with the call. A packer loop refreshes $OUT every
# 40 s, so whatever is finished comes back even if the call is cut short.
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${RECIPE_ROOT:-/tmp/run}
verb=$1; secs=${2:-540}
export PYTHONPATH=/tmp/site:$REPO/src PYTHONUNBUFFERED=1 MUJOCO_GL=disable
export LD_LIBRARY_PATH=/tmp/gl/usr/lib/x86_64-linux-gnu:/tmp/gl/lib/x86_64-linux-gnu
mkdir -p "$ROOT"
if [ "$verb" = start ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$REPO"/.whl/*.whl || exit 1
  mkdir -p /tmp/gl && for f in "$REPO"/.gl/*.deb; do dpkg -x "$f" /tmp/gl; done
  nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader
  python3 -c "import procgen, torch; print('procgen ok, torch', torch.__version__, torch.cuda.get_device_name(0))" 2>&1 | tail -1
  cd "$ROOT" && setsid nohup python3 "$REPO/tools/coinrun_recipe.py" run --root "$ROOT" --profile gpu ${RECIPE_ARGS:-} \
      > "$ROOT/recipe.log" 2>&1 < /dev/null & echo $! > "$ROOT/pid"
  setsid nohup bash -c "while sleep 40; do python3 $REPO/tools/coinrun_recipe.py pack --root $ROOT --out $OUT; done" \
      > "$ROOT/pack.log" 2>&1 < /dev/null &
fi
timeout "$secs" tail --pid="$(cat "$ROOT/pid")" -f /dev/null
python3 "$REPO/tools/coinrun_recipe.py" pack --root "$ROOT" --out "$OUT"
python3 - "$ROOT" <<'PY'
import json, sys, pathlib
s = json.loads((pathlib.Path(sys.argv[1]) / "status.json").read_text())
print(json.dumps({"stages": s.get("stages"), "jobs": {k: (v["state"], v.get("minutes")) for k, v in s.get("jobs", {}).items()}}))
PY
tail -3 "$ROOT/recipe.log"; ls -la "$OUT"
