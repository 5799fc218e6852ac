# issue 16 (and 17): does a longer memory keep the player's level over 1000 frames? Stop 32 (benchmarks
# 2.8) continued the shipped world with section 2.7's recipe at 16 frames: +0.5 dB over ten frames,
# level kept less often over 1000. The dynamics sees 16 frames (clip_len, context_window, its backbone's
# temporal_window), about one second of play: whatever left the window is forgotten.
# A dose-response from the shipped world (src/driftless/assets/coinrun; stop 32's weights were not kept
# on this checkout), one GPU per arm, equal budgets, same data, equal frames per step:
#   A: 32-frame clips, context window and temporal window (256 clips per step),
#   B: 64 frames (128 clips per step); both with clean_history 0.5 (section 2.7's recipe).
# Each arm is tuned on 32 x 1000 validation frames (context level 100 or 300); then the shipped world
# is measured by the same tune (--dry-run, levels only) on the same rollouts, and on the uniform
# agent's test levels as the arms: three worlds, one store, paired rollouts.
# Calls (chain them; a machine stays warm 30 s after a call; do not pipe the start call's output):
#   1. kind nvidia-h200-x2, carry [".whl", ".gl"]:
#      `DRIFTLESS_GIT_COMMIT=<HEAD> bash tools/gpu_job.sh start tools/plans/world6.sh 540`
#   2. `bash tools/gpu_job.sh wait 550`; 3. `bash tools/gpu_job.sh wait 540` until `plan: finished`, give_back.
# Brings back worldA.tar, worldB.tar (fp16, untuned), results.tar.gz (run-, eval-, tune-, world-tuned-,
# uniform-*.json for A, B and the shipped world "S", logs).
# Timeline: data ~1.5 min, the arms BUDGET (12) minutes at once, tunes ~3 (B's window is 4x the
# shipped one), uniform evaluations ~1, the shipped world's tune and evaluation ~2.
INIT=${INIT:-src/driftless/assets/coinrun}; VAL_LONG=${VAL_LONG:-1100}; FULL=0
ARGS_A=${ARGS_A:---set dynamics.clean_history=0.5 --set dynamics.clip_len=32 --set dynamics.context_window=32 --set dynamics.backbone.temporal_window=32 --dynamics-batch 256}
ARGS_B=${ARGS_B:---set dynamics.clean_history=0.5 --set dynamics.clip_len=64 --set dynamics.context_window=64 --set dynamics.backbone.temporal_window=64 --dynamics-batch 128}
TUNE_ARGS=${TUNE_ARGS:---levels 100,300 --clips 64 --rollouts 32 --frames 1000 --psnr-tolerance 0.5}
source tools/plans/world2.sh
stamp shipped-reference
# the shipped world on the same validation rollouts (levels only, nothing written) and test clips
CUDA_VISIBLE_DEVICES=0 $DL world tune $INIT --data $D/val $TUNE_ARGS --temperatures none \
  --steps none --batch-size 32 --dry-run --no-progress --json $R/tune-S.json > $R/tune-S.log 2>&1 &
CUDA_VISIBLE_DEVICES=1 $DL eval $INIT --data $D/utest --clips 256 --batch-size 128 \
  --skip recon,drift,actions,controls,fvd --no-progress --json $R/uniform-S.json > $R/uniform-S.log 2>&1 &
wait
stamp done
