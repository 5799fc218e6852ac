# issues 17 and 16: continue the shipped CoinRun world's dynamics (stop 28's arm B, shipped in stop 28:
# the 36.7 dB 32-channel tokenizer and the held-action LAM kept, dynamics 5,450 + 7,297 steps) on both
# GPUs of an nvidia-h200-x2 with clean_history 0.5 (arm B's setting: +0.4 dB held-action, +0.16 dB
# uniform-agent PSNR and Δ4 +4.5 against +3.7 over arm A, benchmarks 2.6), then measure it with the
# GPU doing the work (stop 28 made `world tune` and `world refit-actions` run on the GPU: before, they
# ran on the machine's CPU and ate stop 27's and 28's tune slots).
# The world starts from the shipped one (INIT=coinrun, in the tree): nothing to carry but the wheels.
# Calls (chain them; a machine stays warm 30 s after a call; do not pipe the start call's output,
# stop 28 lost 5 minutes to a `| tail` that never returned):
#   1. kind nvidia-h200-x2, carry [".whl", ".gl"]:
#      `DRIFTLESS_GIT_COMMIT=<HEAD> bash tools/gpu_job.sh start tools/plans/world3.sh 540`
#   2. and 3. `bash tools/gpu_job.sh wait 540` until `plan: finished` (or the budget nearly spent), give_back.
# Brings back: world.tar (fp16, < 16 MB; key map by effect, context level and temperature tuned),
# eval-full-plots.tgz, results.tar.gz (run.json, eval.json, metrics, refit, tune, uniform-*.json: the
# GenieRedux protocol on the uniform random agent's test levels, 256 clips, at the world's 8 sampling
# steps and at 4 (uniform-s4; val-steps4/8: the same on validation); eval-full*.json: 16 x
# 1000-frame drift, same-level score and controls on held-action test levels, for this world and,
# on the second GPU, for the shipped one it started from).
# Timeline: data ~1.5 min, the run BUDGET (14) minutes (latent cache ~1, compile ~0.5 with block
# scope, dynamics ~11, quick evaluation), refit ~0.5, tune ~2, steps and uniform ~2, full evaluations ~4
# (about 26 minutes: the session's 30 leave little room; give BUDGET=12 if the machine starts slowly).
# Knobs: EPI, TEST_EPI, BUDGET, NG, INIT, ARGS (more train-world flags), TUNE_ARGS, UCLIPS, FULL (0: skip the full
# evaluations, for a CPU smoke run), PRESET, STEPS_SWEEP (0: no 4-vs-8-steps evaluations), VAL_LONG.
EPI=${EPI:-5000}; BUDGET=${BUDGET:-14}; PRESET=${PRESET:-small}; W=${W:-/tmp/job/w}; D=$W/data; DL="python3 -m driftless"
INIT=${INIT:-coinrun}; UCLIPS=${UCLIPS:-256}; NG=${NG:-$(python3 -c 'import torch; print(max(1, torch.cuda.device_count()))')}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
stamp() { echo "$(date +%T) $*" >> $R/status.txt; }
stamp "start, $NG GPU(s)"
UTEST=1 source tools/plans/coinrun_data.sh
stamp train-world
python3 -m torch.distributed.run --standalone --nproc-per-node $NG -m driftless train world \
  --data $D/train --val-data $D/val --test-data $D/test --out $W/run --preset $PRESET --init-from $INIT \
  --budget $BUDGET --shares 0,0,1 --reserve 0.15 --eval-size quick --no-progress \
  ${ARGS:---set dynamics.clean_history=0.5} > $R/train-world.log 2>&1
cp $W/run/run.json $W/run/eval.json $R/ 2>/dev/null
cp $W/run/dynamics/metrics.jsonl $R/metrics-dynamics.jsonl 2>/dev/null
tar cf $P/world.tar -C $W/run world  # (untuned; replaced below once tuned)
stamp refit-actions
$DL world refit-actions $W/run/world --method effect --game coinrun --action-starts 64 --no-progress > $R/refit.log 2>&1
stamp tune
$DL world tune $W/run/world --data $D/val ${TUNE_ARGS:---levels 15,100,300 --clips 64 --rollouts 16 --frames 400} \
  --batch-size 64 --no-progress --json $R/tune.json > $R/tune.log 2>&1
cp $W/run/world/world.json $R/world-tuned.json
tar cf $P/world.tar -C $W/run world && ls -la $P >> $R/status.txt
if [ "${STEPS_SWEEP:-1}" = 1 ]; then  # (world4.sh: 0, its tune chooses the steps)
stamp steps
# 4 sampling steps (the shipped world's, half the CPU time of 8) against the world's 8, on validation
for st in 4 8; do
  $DL eval $W/run/world --data $D/val --split val --clips 128 --batch-size 128 --steps $st \
    --skip recon,drift,actions,controls,fvd --no-progress --json $R/val-steps$st.json > $R/val-steps$st.log 2>&1
done
fi
stamp uniform
# the GenieRedux protocol on the uniform random agent's test levels (the comparison of benchmarks 1.3)
$DL eval $W/run/world --data $D/utest --clips $UCLIPS --batch-size 128 --skip recon,drift,actions,controls,fvd \
  --no-progress --json $R/uniform.json > $R/uniform.log 2>&1
[ "${STEPS_SWEEP:-1}" = 1 ] && $DL eval $W/run/world --data $D/utest --clips $UCLIPS --batch-size 128 --steps 4 --skip recon,drift,actions,controls,fvd \
  --no-progress --json $R/uniform-s4.json > $R/uniform-s4.log 2>&1
$DL eval $INIT --data $D/utest --clips $UCLIPS --batch-size 128 --skip recon,drift,actions,controls,fvd \
  --no-progress --json $R/uniform-init.json > $R/uniform-init.log 2>&1
stamp eval-full
if [ "${FULL:-1}" = 1 ]; then
  CUDA_VISIBLE_DEVICES=1 $DL eval $INIT --data $D/test --full --batch-size 128 --no-progress \
    --json $R/eval-full-init.json > $R/eval-full-init.log 2>&1 &
  CUDA_VISIBLE_DEVICES=0 $DL eval $W/run/world --data $D/test --full --batch-size 128 --no-progress \
    --json $R/eval-full.json --plots $W/plots-full > $R/eval-full.log 2>&1
  wait
fi
tar czf $P/eval-full-plots.tgz -C $W plots-full 2>/dev/null
stamp done
