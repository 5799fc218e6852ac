# issue 20, third GPU session: does the loss weighting hold the planners back?
# The official Diffusion-Forcing maze configuration trains its x0-predicting model with a uniform
# weight over noise levels; driftless's default is min-SNR (weight min(SNR, 5) on the x0 error),
# which nearly ignores the noisiest levels - the levels at which the planner's goal-guidance
# gradient passes through the model for every token but the one being finished. So, per maze,
# stop 30's model is continued twice side by side for the same minutes: with min-SNR (the control:
# more training only) and with uniform weighting; each is measured by `plan show --data`, its
# guidance tuned on validation episodes (seed 1), and the better by validation evaluated once on
# the evaluation episodes (seed 0), with and without MCTG - all planning in fp32 (the planner's new
# default; stop 30 planned under bf16 autocast). Beside the training, stop 30's models are scored
# on the same validation episodes at their chosen scales in fp32 and bf16 (what precision alone
# changes) - results in $R/prec-<maze>-<precision>.json.
# Calls (chain them; a machine stays warm 30 s after a call):
#   1. kind nvidia-h200-x2, carry [".whl-maze", "runs/s30/models"]:
#      `DRIFTLESS_GIT_COMMIT=<HEAD> bash tools/gpu_job.sh start tools/plans/maze3.sh 540`
#   2. and 3. `bash tools/gpu_job.sh wait 540` until `plan: finished`; give_back.
# Brings back what maze2.sh brings (as run: one maze-models.tgz; maze2.sh now packs one per maze).
# Knobs: maze2.sh's, PREC_EPIS (episodes of the precision check); DEVICE=cpu W=/tmp/m3 MAZES=umaze
# STEPS=20000 MIN=0.2 EPIS=2 VAL_EPIS=2 PREC_EPIS=2 R=... P=...: a CPU smoke run.
# Timeline on 2 GPUs: data ~1.5 min, training MIN (10), show ~1, tuning ~5, evaluation ~3.
VARIANTS=${VARIANTS:-snr:small:init: uni:small:init:--set,diffusion.weighting=uniform}
MIN=${MIN:-10}
SCALES_umaze=${SCALES_umaze:-6 12 24}
CHOSEN_umaze=12; CHOSEN_medium=0.75; CHOSEN_large=0.75  # stop 30's choices (benchmarks section 8)
MAZES=${MAZES:-umaze medium large}; DEVICE=${DEVICE:-cuda}; PREC_EPIS=${PREC_EPIS:-50}; W=${W:-/tmp/job/m}
export CHOSEN_umaze CHOSEN_medium CHOSEN_large MAZES DEVICE PREC_EPIS W
mkdir -p $W/prec
# detached (a grandchild): maze2.sh's `wait`s must not wait for it
(setsid bash -c '
  n=$(python3 -c "import torch; print(max(1, torch.cuda.device_count()))")
  i=0
  for m in $MAZES; do
    for prec in fp32 bf16; do
      cp -r runs/s30/models/$m-df $W/prec/$m-$prec
      chosen=CHOSEN_$m
      CUDA_VISIBLE_DEVICES=$((i % n)) python3 -m driftless plan tune --maze $m --checkpoint $W/prec/$m-$prec \
        --method df --mctg 4 --sampling-steps 15 --guidance ${!chosen} --precision $prec --episodes $PREC_EPIS \
        --batch $PREC_EPIS --seed 1 --device $DEVICE --json $R/prec-$m-$prec.json > $R/prec-$m-$prec.log 2>&1 &
      i=$((i + 1))
    done
  done
  wait; touch $W/prec/done' > $R/prec.log 2>&1 < /dev/null &)
source tools/plans/maze2.sh
for _ in $(seq 120); do [ -f $W/prec/done ] && break; sleep 5; done
stamp "precision check: $(ls $R/prec-*.json 2>/dev/null | wc -l) of $(( $(echo $MAZES | wc -w) * 2 ))"
