# issues 15 + 17: should the shipped world play with classifier-free guidance on the action? On 192 test
# states (tools/plans/ctl1.sh, benchmarks 2.16) cfg_scale 2 in every step lifted its controls from 0.59
# to 0.67; guiding only the first CFG_STEPS denoising steps keeps fused_commit and costs one pass per
# guided step. Before shipping it: the key map refitted under it, and what it does to the other figures.
#   GPU 0: the shipped world as it is      GPU 1: the same at cfg_scale CFG, cfg_steps CFG_STEPS, keys refitted
# each: validation 64 rollouts x 1000 frames (seed 7, one-level episodes of 1100 frames, so same-level is
# scored), the held-action test clips (GenieRedux protocol, 256 clips, Δ4) and controls on 192 test states
# (seed 2, as ctl1.sh). ~9 minutes.
# Calls: kind nvidia-h200-x2, carry [".whl", ".gl"]: `bash tools/gpu_job.sh start tools/plans/cfg1.sh 540`
W=${W:-/tmp/job/w}; D=$W/data; DL="python3 -m driftless"; S=src/driftless/assets/coinrun
CFG=${CFG:-2}; CFG_STEPS=${CFG_STEPS:-1}; N=${N:-192}
stamp() { echo "$(date +%T) $*" >> $R/status.txt; }
stamp start
$DL data coinrun --out $D/val --episodes 168 --split val --workers 30 > $R/data.log 2>&1
$DL data coinrun --out $D/val --episodes 16 --split val --workers 16 --same-level-frames 1100 >> $R/data.log 2>&1
$DL data coinrun --out $D/test --episodes 254 --split test --workers 30 >> $R/data.log 2>&1
mkdir -p $W/g && cp -r $S/. $W/g/
$DL world sampling $W/g --cfg-scale $CFG --cfg-steps $CFG_STEPS > $R/sampling-g.log 2>&1
V="--skip recon,rollout,actions,controls,fvd --drift-rollouts 64 --drift-frames 1000 --batch-size 64 --seed 7 --no-progress"
T="--skip recon,drift,actions,controls,fvd --clips 256 --batch-size 128 --no-progress"
C="--skip recon,rollout,actions,drift,fvd --controls-starts $N --seed 2 --no-progress"
one() {  # one NAME GPU WORLD
  CUDA_VISIBLE_DEVICES=$2 $DL eval $3 --data $D/val $V --json $R/val-$1.json > $R/val-$1.log 2>&1; stamp "$1 val"
  CUDA_VISIBLE_DEVICES=$2 $DL eval $3 --data $D/test $T --json $R/test-$1.json > $R/test-$1.log 2>&1; stamp "$1 test"
  CUDA_VISIBLE_DEVICES=$2 $DL eval $3 --data $D/test $C --json $R/ctl-$1.json > $R/ctl-$1.log 2>&1; stamp "$1 controls"
}
one shipped 0 $S &
(CUDA_VISIBLE_DEVICES=1 $DL world refit-actions $W/g --game coinrun --action-starts 64 --eval-starts 0 --seed 0 \
   --no-progress > $R/refit-g.log 2>&1; cp $W/g/world.json $R/world-g.json; stamp "g refit"; one g 1 $W/g) &
wait
stamp done
