# issue 20, a GPU session: the Diffusion-Forcing maze planners trained at scale (the gap to the
# paper is training: ~4k steps of batch 512 here against ~100k of batch 4096 there), the goal-
# guidance scale chosen per maze on validation episodes (`plan tune`, seed 1), then the
# evaluation protocol once on the evaluation episodes (seed 0) with the chosen scale.
# Calls (chain them; a machine stays warm 30 s after a call):
#   1. carry [".whl-maze"] (and "runs/maze" when continuing): `bash tools/gpu_job.sh start tools/plans/maze1.sh 540`
#   2. and 3. `bash tools/gpu_job.sh wait 540` until `plan: finished`; give_back.
# Brings back: maze-models.tgz (the three DF models, fp16, with their planner.json: continue them
# next session with INIT=runs/maze), maze-plots.tgz, results.tar.gz (train, tune, eval JSON and logs).
# Timeline on 2 GPUs: data ~1.5 min (three mazes side by side), training MIN (12) minutes (three
# models side by side over the GPUs; --steps is only an upper bound, the clock ends training),
# tuning (3 mazes x the SCALES, one process each) and evaluation (3 mazes x DF with / without MCTG).
# Knobs: MAZES, STEPS (transitions per maze), MIN (training minutes), BATCH, PRESET, EPIS
# (episodes per cell), VAL_EPIS (validation episodes per scale), SCALES, INIT (a folder of earlier
# <maze>-df models to continue), DEVICE (cpu: smoke test).
MAZES=${MAZES:-umaze medium large}; STEPS=${STEPS:-1000000}; MIN=${MIN:-12}; BATCH=${BATCH:-2048}
PRESET=${PRESET:-small}; EPIS=${EPIS:-100}; VAL_EPIS=${VAL_EPIS:-50}; SCALES=${SCALES:-1.5 3 6 12}; INIT=${INIT:-}; DEVICE=${DEVICE:-cuda}; W=${W:-/tmp/job/m}
DL="python3 -m driftless"; export MUJOCO_GL=disable
NG=$(python3 -c 'import torch; print(max(1, torch.cuda.device_count()))')
stamp() { echo "$(date +%T) $*" >> $R/status.txt; }
gpu() { echo $(( $1 % NG )); }  # the GPU of the i-th job
mkdir -p $W/plots
stamp "start, $NG GPU(s)"
for m in $MAZES; do $DL data maze --maze $m --steps $STEPS --out $W/data --quiet > $R/data-$m.log 2>&1 & done; wait
stamp train
i=0
for m in $MAZES; do
  init=""; [ -n "$INIT" ] && [ -f $INIT/$m-df/config.json ] && init="--init-from $INIT/$m-df"
  CUDA_VISIBLE_DEVICES=$(gpu $i) $DL plan train --data $W/data/$m.npz --out $W/models/$m-df --preset $PRESET \
    --steps 10000000 --batch $BATCH --max-minutes $MIN --compile --half --device $DEVICE $init > $R/train-$m.log 2>&1 &
  i=$((i + 1))
done; wait
tail -qn1 $R/train-*.log >> $R/status.txt
tar czf $P/maze-models.tgz -C $W models  # again after tuning, with planner.json
stamp tune
# the guidance scale of each maze chosen on validation episodes (seed 1), stored in the checkpoint
i=0
for m in $MAZES; do
  CUDA_VISIBLE_DEVICES=$(gpu $i) $DL plan tune --maze $m --checkpoint $W/models/$m-df --method df --mctg 4 \
    --sampling-steps 15 --guidance $SCALES --episodes $VAL_EPIS --batch $VAL_EPIS --seed 1 --workers 4 \
    --device $DEVICE --json $R/tune-$m.json > $R/tune-$m.log 2>&1 &
  i=$((i + 1))
done; wait
tail -qn1 $R/tune-*.log >> $R/status.txt
tar czf $P/maze-models.tgz -C $W models
stamp eval
# evaluation episodes (seed 0, as benchmarks 8), once, with the tuned scale (no --guidance)
i=0
for m in $MAZES; do
  for method in df df-plain; do
    CUDA_VISIBLE_DEVICES=$(gpu $i) $DL plan maze --maze $m --checkpoint $W/models/$m-df --method $method --mctg 4 \
      --sampling-steps 15 --episodes $EPIS --batch $EPIS --seed 0 --device $DEVICE --json $R/eval-$m-$method.json \
      --plot $W/plots/$m-$method.png > $R/eval-$m-$method.log 2>&1 &
    i=$((i + 1))
  done
done; wait
tar czf $P/maze-plots.tgz -C $W plots
stamp done
