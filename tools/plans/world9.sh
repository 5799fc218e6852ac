# issue 16, "Diffusion Forcing vs teacher forcing on the same curves": two dynamics trained from scratch on
# the shipped world's tokenizer and LAM, one GPU each, same data, budget, clip length (64 frames), window and
# frames per step; they differ only in how the past is noised in training:
#   GPU 0: DF, the shipped recipe (per-frame noise levels, clean_history 0.5)
#   GPU 1: TF (dynamics.teacher_forcing=true: the past is always clean, only the newest frame is noised)
# Both tuned the same way on validation (context level 0/100/300: TF's past was clean in training, so 0 is
# its natural level), then measured on the same rollouts: test --full (16 x 1000 frames, GenieRedux protocol)
# and validation 64 x 1000 frames (seed 7, as benchmarks 2.9-2.10).
# Calls (chain them; a machine stays warm 30 s after a call; do not pipe the start call's output):
#   1. kind nvidia-h200-x2, carry [".whl", ".gl"]:
#      `DRIFTLESS_GIT_COMMIT=<HEAD> bash tools/gpu_job.sh start tools/plans/world9.sh 540`
#   2. and 3. `bash tools/gpu_job.sh wait 540` until `plan: finished`, give_back.
# Brings back worldDF.tar, worldTF.tar (fp16) and results.tar.gz (tune-*.json, val-*.json, test-*.json, logs).
# Timeline: data ~1.5 min; BUDGET (12) minutes each; tune ~3; evaluations ~4.
EPI=${EPI:-5000}; BUDGET=${BUDGET:-12}; W=${W:-/tmp/job/w}; D=$W/data; DL="python3 -m driftless"
S=${S:-src/driftless/assets/coinrun}; VAL_LONG=1100
stamp() { echo "$(date +%T) $*" >> $R/status.txt; }
stamp start
source tools/plans/coinrun_data.sh
V="--skip recon,rollout,actions,controls,fvd --drift-rollouts 64 --drift-frames 1000 --batch-size 64 --seed 7 --no-progress"
arm() {  # arm NAME GPU EXTRA_SET...
  local n=$1 g=$2; shift 2
  CUDA_VISIBLE_DEVICES=$g $DL train world --data $D/train --val-data $D/val --test-data $D/test --out $W/run$n \
    --preset small --init-from tokenizer=$S/tokenizer,lam=$S/lam --budget $BUDGET --shares 0,0,1 --reserve 0.2 \
    --eval-size quick --no-progress --dynamics-batch 128 --set tokenizer.latent_dim=32 --set dynamics.latent_dim=32 \
    --set dynamics.clip_len=64 --set dynamics.context_window=64 --set dynamics.backbone.temporal_window=64 \
    --set dynamics.backbone.dim=208 --set dynamics.backbone.depth=5 --set dynamics.backbone.heads=4 \
    --set dynamics.history_dropout=0.1 "$@" \
    > $R/train-$n.log 2>&1
  cp $W/run$n/run.json $R/run-$n.json; cp $W/run$n/dynamics/metrics.jsonl $R/metrics-dynamics-$n.jsonl
  tar cf $P/world$n.tar -C $W/run$n world
  stamp "$n trained"
  CUDA_VISIBLE_DEVICES=$g $DL world tune $W/run$n/world --data $D/val --levels 0,100,300 --clips 64 --rollouts 32 \
    --frames 1000 --psnr-tolerance 0.5 --batch-size 32 --no-progress --json $R/tune-$n.json > $R/tune-$n.log 2>&1
  cp $W/run$n/world/world.json $R/world-tuned-$n.json
  CUDA_VISIBLE_DEVICES=$g $DL eval $W/run$n/world --data $D/val $V --json $R/val-$n.json > $R/val-$n.log 2>&1
  CUDA_VISIBLE_DEVICES=$g $DL eval $W/run$n/world --data $D/test --full --batch-size 128 --no-progress \
    --json $R/test-$n.json > $R/test-$n.log 2>&1
  stamp "$n done"
}
arm DF 0 --set dynamics.clean_history=0.5 &
arm TF 1 --set dynamics.teacher_forcing=true &
wait
stamp done
