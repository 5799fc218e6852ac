# issue 20, second GPU session: model variants for the maze planners, each chosen on validation.
# Stop 30 found (docs/benchmarks.md section 8) that the planners' plans jump at the seams between
# tokens (median position error ~0.06 against a largest physical step of 0.071) and pass through
# walls. This session trains VARIANTS of each maze's model side by side, measures each one's
# precision and first plans (`plan show --data`, on a fresh validation dataset), tunes each one's
# guidance on validation episodes (seed 1), keeps per maze the variant with the best validation
# score and evaluates that one once on the evaluation episodes (seed 0), with and without MCTG.
# (--clean-level CLEAN, default 0: it halves the seam jumps of whole plans but changes nothing
# that one-token MPC executes.)
# Calls (chain them; a machine stays warm 30 s after a call):
#   1. carry [".whl-maze", "runs/s30/models"]: `bash tools/gpu_job.sh start tools/plans/maze2.sh 540`
#      (tracked tree 21.1 MB + .whl-maze 37.7 + models 7.8 = 63.5 MiB of the 64 MiB cap, 2026-11-30:
#      check `du` first; pettingzoo's wheel in .whl-maze is not needed by the maze)
#   2. and 3. `bash tools/gpu_job.sh wait 540` until `plan: finished`; give_back.
# Brings back: maze-models-<maze>.tgz (every trained variant, fp16, with planner.json), maze-plots.tgz,
# results.tar.gz (train / show / tune / eval JSON and logs, choice.txt).
# Timeline on 2 GPUs: data ~1.5 min, training MIN (11) minutes (all variants of all mazes side by
# side: 6 processes with the defaults), show ~1, tuning ~4, evaluation ~3.
# Knobs: MAZES, STEPS, MIN, BATCH, EPIS, VAL_EPIS, CONFIRM_EPIS (> 0: a second validation set, seed 2),
# SCALES (per maze: SCALES_umaze etc.), CLEAN,
# INIT (the folder of stop 30's <maze>-df models), VARIANTS (name:preset:init:extra-flags; extra
# flags with commas for spaces; preset `keep`: INIT's model itself, untrained, scored beside the
# others; VARIANTS_<maze> replaces the list for one maze), DEVICE (cpu: smoke test).
MAZES=${MAZES:-umaze medium large}; STEPS=${STEPS:-1000000}; MIN=${MIN:-11}; BATCH=${BATCH:-2048}
EPIS=${EPIS:-100}; VAL_EPIS=${VAL_EPIS:-50}; CONFIRM_EPIS=${CONFIRM_EPIS:-0}; CLEAN=${CLEAN:-0}; INIT=${INIT:-runs/s30/models}
DEVICE=${DEVICE:-cuda}; W=${W:-/tmp/job/m}
SCALES_umaze=${SCALES_umaze:-3 6 12 24}; SCALES_medium=${SCALES_medium:-0.375 0.75 1.5 3}
SCALES_large=${SCALES_large:-0.375 0.75 1.5 3}
# small: stop 30's models continued in bf16; fp32: the same continued in full precision;
# base: the wider preset from scratch
VARIANTS=${VARIANTS:-small:small:init: fp32:small:init:--precision,fp32 base:base::}
variants() { local vs=VARIANTS_$1; echo ${!vs:-$VARIANTS}; }  # the maze's variant specs
names() { for v in $(variants $1); do printf '%s ' "${v%%:*}"; done; }
DL="python3 -m driftless"; export MUJOCO_GL=disable
NG=$(python3 -c 'import torch; print(max(1, torch.cuda.device_count()))')
stamp() { echo "$(date +%T) $*" >> $R/status.txt; }
gpu() { echo $(( $1 % NG )); }  # the GPU of the i-th job
pack_models() {  # one archive per maze (each file that comes back must stay under 16 MB)
  touch $W/kept.txt
  for m in $MAZES; do tar czf $P/maze-models-$m.tgz -C $W --exclude-from=$W/kept.txt $(cd $W && ls -d models/$m-*); done
}
mkdir -p $W/plots
stamp "start, $NG GPU(s)"
for m in $MAZES; do
  $DL data maze --maze $m --steps $STEPS --out $W/data --quiet > $R/data-$m.log 2>&1 &
  $DL data maze --maze $m --steps 50000 --seed 1 --out $W/val --quiet > $R/val-$m.log 2>&1 &
done; wait
stamp train
i=0
for m in $MAZES; do
  for v in $(variants $m); do
    IFS=: read -r name preset init extra <<< "$v"
    if [ "$preset" = keep ]; then  # the parent itself, scored beside its continuations
      mkdir -p $W/models && cp -r $INIT/$m-df $W/models/$m-$name && rm -f $W/models/$m-$name/planner.json
      echo "models/$m-$name/model.safetensors" >> $W/kept.txt  # its weights are here already: not packed
      continue
    fi
    from=""; [ "$init" = init ] && [ -f $INIT/$m-df/config.json ] && from="--init-from $INIT/$m-df"
    CUDA_VISIBLE_DEVICES=$(gpu $i) $DL plan train --data $W/data/$m.npz --out $W/models/$m-$name --preset $preset \
      --steps 10000000 --batch $BATCH --max-minutes $MIN --compile --half --device $DEVICE $from ${extra//,/ } \
      > $R/train-$m-$name.log 2>&1 &
    i=$((i + 1))
  done
done; wait
tail -qn1 $R/train-*.log >> $R/status.txt
pack_models
stamp show
i=0
for m in $MAZES; do
  scales=SCALES_$m
  for name in $(names $m); do
    CUDA_VISIBLE_DEVICES=$(gpu $i) $DL plan show --maze $m --checkpoint $W/models/$m-$name --guidance 0 ${!scales} \
      --mctg 4 --sampling-steps 15 --clean-level $CLEAN --data $W/val/$m.npz --device $DEVICE \
      --out $W/plots/plans-$m-$name.png > $R/show-$m-$name.jsonl 2>$R/show-$m-$name.err &
    i=$((i + 1))
  done
done; wait
stamp tune
i=0
for m in $MAZES; do
  scales=SCALES_$m
  for name in $(names $m); do
    CUDA_VISIBLE_DEVICES=$(gpu $i) $DL plan tune --maze $m --checkpoint $W/models/$m-$name --method df --mctg 4 \
      --sampling-steps 15 --clean-level $CLEAN --guidance ${!scales} --episodes $VAL_EPIS --batch $VAL_EPIS --seed 1 \
      --workers 4 --device $DEVICE --json $R/tune-$m-$name.json > $R/tune-$m-$name.log 2>&1 &
    i=$((i + 1))
  done
done; wait
pack_models  # again, with each variant's planner.json
if [ "$CONFIRM_EPIS" -gt 0 ]; then  # a second validation set (seed 2) at each variant's chosen scale
  stamp confirm
  i=0
  for m in $MAZES; do
    for name in $(names $m); do
      [ -f $R/tune-$m-$name.json ] || continue
      g=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['guidance'])" $R/tune-$m-$name.json)
      mkdir -p $W/confirm && cp -r $W/models/$m-$name $W/confirm/  # (tune writes planner.json: not into the model)
      CUDA_VISIBLE_DEVICES=$(gpu $i) $DL plan tune --maze $m --checkpoint $W/confirm/$m-$name --method df --mctg 4 \
        --sampling-steps 15 --clean-level $CLEAN --guidance $g --episodes $CONFIRM_EPIS --batch $CONFIRM_EPIS \
        --seed 2 --device $DEVICE --json $R/confirm-$m-$name.json > $R/confirm-$m-$name.log 2>&1 &
      i=$((i + 1))
    done
  done; wait
fi
stamp eval
# per maze, the variant whose chosen scale scored best on the validation episodes (with CONFIRM_EPIS:
# the mean over both validation sets, by episodes); then seed 0, once
i=0
for m in $MAZES; do
  best=$(python3 -c "
import json, sys
rows = []
for name in sys.argv[1:]:
    try:
        t = json.load(open(f'$R/tune-$m-{name}.json'))
    except OSError:
        continue
    top = max(t['scores'], key=lambda s: s['normalized_mean'])
    score, n = top['normalized_mean'] * top['episodes'], top['episodes']
    try:
        c = json.load(open(f'$R/confirm-$m-{name}.json'))['scores'][0]
        score, n = score + c['normalized_mean'] * c['episodes'], n + c['episodes']
    except OSError:
        pass
    rows.append((score / n, name))
print(max(rows)[1] if rows else '')" $(names $m))
  echo "$m: $best" >> $R/choice.txt
  [ -n "$best" ] || continue
  for method in df df-plain; do
    CUDA_VISIBLE_DEVICES=$(gpu $i) $DL plan maze --maze $m --checkpoint $W/models/$m-$best --method $method --mctg 4 \
      --sampling-steps 15 --clean-level $CLEAN --episodes $EPIS --batch $EPIS --seed 0 --device $DEVICE \
      --json $R/eval-$m-$method.json --plot $W/plots/$m-$method.png > $R/eval-$m-$method.log 2>&1 &
    i=$((i + 1))
  done
done; wait
cat $R/choice.txt >> $R/status.txt
tar czf $P/maze-plots.tgz -C $W plots
stamp done
