# issue 15: the controls figure with a narrower interval, and classifier-free guidance on the action.
#   GPU 0: the shipped world, controls on 192 test states (seed 2)
#   GPU 1: the shipped world at cfg_scale 2 (fused_commit off): keys refitted by effect on 64 validation
#          states under that guidance, then the same 192 test states
# Calls: kind nvidia-h200-x2, carry [".whl", ".gl"]: `bash tools/gpu_job.sh start tools/plans/ctl1.sh 380`
W=${W:-/tmp/job/w}; D=$W/data; DL="python3 -m driftless"; S=src/driftless/assets/coinrun; N=${N:-192}
stamp() { echo "$(date +%T) $*" >> $R/status.txt; }
stamp start
$DL data coinrun --out $D/test --episodes 8 --split test --workers 8 > $R/data.log 2>&1
C="--skip recon,rollout,actions,drift,fvd --controls-starts $N --seed 2 --no-progress"
(CUDA_VISIBLE_DEVICES=0 $DL eval $S --data $D/test $C --json $R/ctl-shipped.json > $R/ctl-shipped.log 2>&1; stamp shipped) &
mkdir -p $W/g2 && cp -r $S/. $W/g2/
$DL world sampling $W/g2 --cfg-scale 2 --no-fused-commit > $R/sampling-g2.log 2>&1
CUDA_VISIBLE_DEVICES=1 $DL world refit-actions $W/g2 --game coinrun --action-starts 64 --eval-starts 0 --seed 0 \
  --no-progress > $R/refit-g2.log 2>&1
cp $W/g2/world.json $R/world-g2.json; stamp refit
CUDA_VISIBLE_DEVICES=1 $DL eval $W/g2 --data $D/test $C --json $R/ctl-g2.json > $R/ctl-g2.log 2>&1; stamp g2
wait
stamp done
