# issue 15: can the dynamics learn to move the scene sideways as far as the game does? (benchmarks 2.18)
# Under a LAM with clean left / right codes (lam3.sh's arm C: 16 codes, one-frame decoder; carried) the
# world still shifts the scene sideways a fraction of the game's shift under the same inferred actions
# (motion following x0.06 on held-action test clips at the shipped sampling; teacher-forced one step about
# half; x0.49 with stochastic 16-step sampling), so keys cannot move the player. Arms continue the shipped dynamics under that LAM (new action rows; shares 0,0,1) for
# BUDGET minutes (default 9) side by side on the GPUs, each with dynamics.motion_weight = its MW (0 = plain Diffusion
# Forcing; > 0 = tokens that change between frames weigh more) and its action conditioning COND (token:
# the shipped prepended action token; additive: the action added to every block's adaLN conditioning,
# a stronger path), shipped sampling, keys refitted by effect;
# then per arm: held-action test clips (ten-frame PSNR, Δ4, motion following), controls on N test states
# (seed 2; shipped 0.594, lam3 world 0.655) and validation 64 x 1000 frames same-level (seed 7; shipped
# 0.67, lam3 world 0.63).
# Calls: kind nvidia-h200 (or -x2), carry [".whl", ".gl", "runs/s38/gpu/lam3/lams/lam-C"]:
#   `DRIFTLESS_GIT_COMMIT=<HEAD> bash tools/gpu_job.sh start tools/plans/dyn2.sh 555`, then
#   `bash tools/gpu_job.sh wait 555` chained within 30 s until `plan: finished` (~27 min), give_back;
#   results.tar.gz comes back with every call, so a plan cut short still reports its arms.
# Brings back world-NAME.tar per arm (fp16 worlds, ~15 MB each) and results.tar.gz.
# Then the arm that follows sideways motion best, with stochastic sampling (SAMPLE = T:ETA:STEPS, default
# 0.7:1:16; empty skips), keys refitted under it, the same checks (world_checks.sh, name "stoch").
# Knobs: EPI, TEST_EPI, BUDGET, SAMPLE, ARMS (NAME:MW:COND ...), LAM, N, REFIT (refit states), DYN_BATCH, DL, VAL (0: a
# token 1000-frame check, for smoke runs).
EPI=${EPI:-5000}; BUDGET=${BUDGET:-9}; N=${N:-192}; W=${W:-/tmp/job/w}; D=$W/data; VAL_LONG=1100
ARMS=${ARMS:-"P:0:token M4:4:token A4:4:additive"}; LAM=${LAM:-runs/s38/gpu/lam3/lams/lam-C}
DL=${DL:-"python3 -m driftless"}; S=${S:-src/driftless/assets/coinrun}
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l); [ "$NGPU" -ge 1 ] || NGPU=1
stamp() { echo "$(date +%T) $*" >> $R/status.txt; }
[ -f $LAM/model.safetensors ] || { echo "no LAM at $LAM (carry it)"; exit 2; }
stamp start
source tools/plans/coinrun_data.sh
stamp data
source tools/plans/world_checks.sh
if [ "${VAL:-1}" = 0 ]; then V="$V --drift-rollouts 1 --drift-frames 8"; fi
i=0
for arm in $ARMS; do
  IFS=: read -r name mw cond <<< "$arm"; gpu=$((i % NGPU)); i=$((i + 1))
  (export CUDA_VISIBLE_DEVICES=$gpu
   $DL train world --data $D/train --val-data $D/val --out $W/run-$name --preset small \
     --init-from tokenizer=$S/tokenizer,lam=$LAM,dynamics=$S/dynamics --budget $BUDGET --shares 0,0,1 \
     --reserve 0.05 --stop-after world --no-progress --dynamics-batch ${DYN_BATCH:-128} \
     --set dynamics.motion_weight=$mw --set dynamics.action_conditioning=${cond:-token} > $R/train-$name.log 2>&1
   cp $W/run-$name/dynamics/metrics.jsonl $R/metrics-$name.jsonl
   finish_run $W/run-$name $name
   check_world $W/run-$name/world $name $gpu) &
done
wait
# The arm that follows sideways motion best, again with stochastic sampling (benchmarks 2.18: at eta 1 and
# 16 steps the LAM C world followed sideways motion 0.49 against 0.04, same ten-frame PSNR, on this CPU),
# keys refitted under it, the same checks: does it move the keys, and does it keep the level?
if [ -n "${SAMPLE-0.7:1:16}" ]; then
  IFS=: read -r st se ss <<< "${SAMPLE-0.7:1:16}"
  BEST=$(python3 -c "
import json, sys
r = {a.split(':')[0]: json.load(open('$R/test-' + a.split(':')[0] + '.json'))['rollout']['motion_following']['sideways'] or 0
     for a in '$ARMS'.split()}
print(max(r, key=r.get))")
  stamp "stochastic sampling on $BEST"
  cp -r $W/run-$BEST/world $W/stoch
  $DL world sampling $W/stoch --temperature $st --eta $se --steps $ss --no-fused-commit > $R/sampling-stoch.log 2>&1
  refit_world $W/stoch stoch
  check_world $W/stoch stoch 0
fi
stamp done
