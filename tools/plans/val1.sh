# issue 15/17: is lam1.sh's arm A (a fresh LAM on held-action data, the shipped dynamics continued on
# its codes; controls 0.65 against the shipped world's 0.52 on 32 test states) fit to ship? The gate of
# benchmarks 2.9-2.10: same-level over 64 validation rollouts x 1000 frames (seed 7), paired with the
# shipped world; and controls on 64 more states (validation levels, seed 1).
#   GPU 0: shipped world    GPU 1: arm A (its dynamics, LAM and world.json over the shipped tokenizer)
# Calls: kind nvidia-h200-x2, carry [".whl" (slimmed: tools/gpu_prepare.sh slim), ".gl", "runs/s36/carry"]:
#   `DRIFTLESS_GIT_COMMIT=<HEAD> bash tools/gpu_job.sh start tools/plans/val1.sh 540`
W=${W:-/tmp/job/w}; D=$W/data; DL="python3 -m driftless"; S=src/driftless/assets/coinrun
stamp() { echo "$(date +%T) $*" >> $R/status.txt; }
stamp start
mkdir -p $W/A && cp -r $S/. $W/A/ && cp -r runs/s36/carry/worldA/. $W/A/
$DL data coinrun --out $D/val --episodes 168 --split val --workers 30
$DL data coinrun --out $D/val --episodes 16 --split val --workers 16 --same-level-frames 450
V="--skip recon,rollout,actions,controls,fvd --drift-rollouts 64 --drift-frames 1000 --batch-size 64 --seed 7 --no-progress"
C="--skip recon,rollout,actions,drift,fvd --controls-starts 64 --seed 1 --no-progress"
one() {  # one NAME GPU WORLD
  CUDA_VISIBLE_DEVICES=$2 $DL eval $3 --data $D/val $V --json $R/val-$1.json > $R/val-$1.log 2>&1
  stamp "$1 drift"
  CUDA_VISIBLE_DEVICES=$2 $DL eval $3 --data $D/val $C --json $R/ctl-$1.json > $R/ctl-$1.log 2>&1
  stamp "$1 controls"
}
one shipped 0 $S &
one A 1 $W/A &
wait
stamp done
