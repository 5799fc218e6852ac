# issues 15 + 17: should the shipped world play with classifier-free guidance on the action? On 192 test
# states (tools/plans/ctl1.sh, benchmarks 2.16) cfg_scale 2 in every step lifted its controls from 0.59
# to 0.67; guiding only the first CFG_STEPS denoising steps keeps fused_commit and costs one pass per
# guided step. Before shipping it: the key map refitted under it, and what it does to the other figures.
#   arm shipped: the shipped world as it is
#   arm g: the same at cfg_scale CFG, cfg_steps CFG_STEPS, keys refitted under it
#   arm h: the same at cfg_scale CFG_H, cfg_steps CFG_STEPS, keys refitted under it
# Arms take the GPUs in turn (on one GPU all three share it: these evaluations are launch-bound).
# each: validation 64 rollouts x 1000 frames (seed 7, one-level episodes of 1100 frames, so same-level is
# scored), the held-action test clips (GenieRedux protocol, 256 clips, Δ4) and controls on 192 test states
# (seed 2, as ctl1.sh). ~9 minutes.
# Calls: kind nvidia-h200 or nvidia-h200-x2, carry [".whl", ".gl"]: `bash tools/gpu_job.sh start tools/plans/cfg1.sh 540`
W=${W:-/tmp/job/w}; D=$W/data; DL="python3 -m driftless"; S=src/driftless/assets/coinrun
CFG=${CFG:-2}; CFG_H=${CFG_H:-3}; CFG_STEPS=${CFG_STEPS:-1}; N=${N:-192}
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l); [ "$NGPU" -ge 1 ] || NGPU=1
stamp() { echo "$(date +%T) $*" >> $R/status.txt; }
stamp start
$DL data coinrun --out $D/val --episodes 168 --split val --workers 30 > $R/data.log 2>&1
$DL data coinrun --out $D/val --episodes 16 --split val --workers 16 --same-level-frames 1100 >> $R/data.log 2>&1
$DL data coinrun --out $D/test --episodes 254 --split test --workers 30 >> $R/data.log 2>&1
for a in g h; do
  mkdir -p $W/$a && cp -r $S/. $W/$a/
  scale=$CFG; [ $a = h ] && scale=$CFG_H
  $DL world sampling $W/$a --cfg-scale $scale --cfg-steps $CFG_STEPS > $R/sampling-$a.log 2>&1
done
source tools/plans/world_checks.sh
check_world $S shipped 0 &
i=1
for a in g h; do
  gpu=$((i % NGPU)); i=$((i + 1))
  (CUDA_VISIBLE_DEVICES=$gpu $DL world refit-actions $W/$a --game coinrun --action-starts 64 --eval-starts 0 --seed 0 \
     --no-progress > $R/refit-$a.log 2>&1; cp $W/$a/world.json $R/world-$a.json; stamp "$a refit"; check_world $W/$a $a $gpu) &
done
wait
stamp done
