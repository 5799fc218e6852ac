# issue 15: can the dynamics learn to move the scene sideways as far as the game does? (benchmarks 2.18)
# Under a LAM with clean left / right codes (lam3.sh's arm C: 16 codes, one-frame decoder) the world still
# shifts the scene sideways a fraction of the game's shift under the same inferred actions (motion
# following x0.06 on held-action test clips at the shipped sampling; teacher-forced one step about half;
# x0.49 with stochastic 16-step sampling), so keys cannot move the player.
# 1. LAM C: carried at $LAM, or (its checkpoint lost with an earlier machine) trained here alone for LT
#    minutes with lam3.sh's arm C settings, its codes read on 1,500 held-action test clips (direction score;
#    lam3's C: 1.00) and brought back as lams.tar (fp16). LAM_NAME, LAM_CODES and LAM_SETS train another
#    one instead, e.g. LAM_NAME=P LAM_CODES=18 LAM_SETS="--set factors=[3,6]": a product code (3 x 6), whose
#    codes can say a direction and a vertical motion at once (benchmarks 2.19: LAM C's jumps and falls carry
#    no direction).
# 2. Arms continue the shipped dynamics under that LAM (new action rows; shares 0,0,1) for BUDGET minutes
#    side by side on the GPUs, each with dynamics.motion_weight = its MW (0 = plain Diffusion Forcing; > 0 =
#    tokens that change between frames weigh more) and its action conditioning COND (token: the shipped
#    prepended action token; additive: the action added to every block's adaLN conditioning, a stronger
#    path); shipped sampling, keys refitted by effect. The plain arm was lam3.sh's world (sideways 0.06,
#    controls 0.655, same-level 0.63): not repeated by default (ARMS="P:0:token ..." adds it).
#    An arm's optional fourth field SRC = true conditions the dynamics on the data's true Procgen actions
#    instead of the LAM's codes (the upper bound of what keys can do with this dynamics and sampler; keys
#    are then fitted by effect to the game's own actions).
# 3. Held-action test clips per arm (ten-frame PSNR, Δ4, motion following); the arm that follows sideways
#    best (STOCH=all: every arm) is copied as "stoch" ("s-NAME") with stochastic sampling (SAMPLE =
#    T:ETA:STEPS, default 0.7:1:16; empty skips), keys refitted under it; then, all at once: controls on N
#    test states (seed 2; shipped 0.594, lam3 world 0.655) and validation 64 x 1000 frames same-level
#    (seed 7; shipped 0.67, lam3 world 0.63) for every arm and every stochastic copy, and their test clips.
# Ran at 1937fda (benchmarks 2.19): M4 and A4, 5.5-minute arms, stochastic copy of M4.
# Calls: kind nvidia-h200 (or -x2), carry [".whl", ".gl"] (and the LAM's folder if there is one):
#   `DRIFTLESS_GIT_COMMIT=<HEAD> bash tools/gpu_job.sh start tools/plans/dyn2.sh 555`, then
#   `bash tools/gpu_job.sh wait 555` chained within 30 s until `plan: finished` (~27 min), give_back;
#   results.tar.gz comes back with every call, so a plan cut short still reports its stages.
# Brings back world-NAME.tar per arm (fp16 worlds, ~15 MB each; stoch is its arm's world with
# results/world-stoch.json's sampling and keys), lams.tar when the LAM was trained here, results.tar.gz.
# Knobs: EPI, TEST_EPI, LT, BUDGET, SAMPLE, STOCH (best | all), ARMS (NAME:MW:COND[:SRC] ...), LAM, LAM_NAME,
# LAM_CODES, LAM_SETS, N, REFIT (refit states), DYN_BATCH, LAM_FLAGS, DL, VAL (0: a token 1000-frame check,
# for smoke runs).
EPI=${EPI:-5000}; LT=${LT:-2}; BUDGET=${BUDGET:-8}; N=${N:-192}; W=${W:-/tmp/job/w}; D=$W/data; VAL_LONG=1100
ARMS=${ARMS:-"M4:4:token A4:4:additive"}; LAM=${LAM:-runs/s38/gpu/lam3/lams/lam-C}
DL=${DL:-"python3 -m driftless"}; S=${S:-src/driftless/assets/coinrun}
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l); [ "$NGPU" -ge 1 ] || NGPU=1
stamp() { echo "$(date +%T) $*" >> $R/status.txt; }
stamp start
source tools/plans/coinrun_data.sh
stamp data
source tools/plans/world_checks.sh
if [ "${VAL:-1}" = 0 ]; then V="$V --drift-rollouts 1 --drift-frames 8"; fi
if [ ! -f $LAM/model.safetensors ]; then
  L=${LAM_NAME:-C}; LAM=$W/lams/lam-$L
  $DL train lam --data $D/train --val-data $D/val --out $W/lam-$L --preset small --set num_actions=${LAM_CODES:-16} \
    --set decoder.temporal_window=1 --set chunk=1 --set vq_warmup=200 --batch-size 96 --lr 3e-4 --warmup 100 \
    --steps 1000000000 --time-budget $LT --log-every 50 --val-every 1000 ${LAM_SETS:-} ${LAM_FLAGS:-} \
    > $R/lam-$L.log 2>&1
  cp $W/lam-$L/metrics.jsonl $R/metrics-lam-$L.jsonl
  python3 tools/fp16_checkpoint.py $W/lam-$L/checkpoint $LAM > /dev/null
  tar cf $P/lams.tar -C $W lams
  stamp "lam $L trained"
  python3 tools/control_signal.py $D/test --codes-only --max-clips 1500 --lam $LAM --json $R/probe.json \
    > $R/probe.log 2>&1 &
fi
i=0
for arm in $ARMS; do
  IFS=: read -r name mw cond src <<< "$arm"; gpu=$((i % NGPU)); i=$((i + 1))
  (export CUDA_VISIBLE_DEVICES=$gpu
   $DL train world --data $D/train --val-data $D/val --out $W/run-$name --preset small \
     --init-from tokenizer=$S/tokenizer,lam=$LAM,dynamics=$S/dynamics --budget $BUDGET --shares 0,0,1 \
     --reserve 0.05 --stop-after world --no-progress --dynamics-batch ${DYN_BATCH:-128} \
     --set dynamics.motion_weight=$mw --set dynamics.action_conditioning=${cond:-token} \
     --set "dynamics.action_source=\"${src:-lam}\"" > $R/train-$name.log 2>&1
   cp $W/run-$name/dynamics/metrics.jsonl $R/metrics-$name.jsonl
   finish_run $W/run-$name $name
   one_check test $W/run-$name/world $name $gpu) &
done
wait
# Controls and the 1000-frame validation of every arm, beside the stochastic-sampling stage: the arm that
# follows sideways motion best (benchmarks 2.18: at eta 1 and 16 steps the LAM C world followed sideways
# motion 0.49 against 0.04, same ten-frame PSNR, on this CPU), keys refitted under it, the same checks:
# does it move the keys, and does it keep the level?
i=0
for arm in $ARMS; do
  name=${arm%%:*}; g=$((i % NGPU)); i=$((i + 1))
  check_world $W/run-$name/world $name $g &  # (its test clips are measured: controls and validation run)
done
stoch() {  # stoch ARM NAME GPU: ARM's world with stochastic sampling, keys refitted under it, the checks
  local arm=$1 n=$2 g=$3
  stamp "stochastic sampling on $arm as $n"
  cp -r $W/run-$arm/world $W/$n
  $DL world sampling $W/$n --temperature $st --eta $se --steps $ss --no-fused-commit > $R/sampling-$n.log 2>&1
  refit_world $W/$n $n
  stamp "refit-$n"
  check_world $W/$n $n $g
}
if [ -n "${SAMPLE-0.7:1:16}" ]; then
  IFS=: read -r st se ss <<< "${SAMPLE-0.7:1:16}"
  if [ "${STOCH:-best}" = all ]; then
    for arm in $ARMS; do stoch ${arm%%:*} s-${arm%%:*} $((i % NGPU)) & i=$((i + 1)); done
  else
    BEST=$(python3 -c "
import json, sys
r = {a.split(':')[0]: json.load(open('$R/test-' + a.split(':')[0] + '.json'))['rollout']['motion_following']['sideways'] or 0
     for a in '$ARMS'.split()}
print(max(r, key=r.get))")
    stoch $BEST stoch $((i % NGPU)) &
  fi
fi
wait
stamp done
