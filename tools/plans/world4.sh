# issues 17 and 16: continue the shipped CoinRun world's dynamics once more (stop 29's world, shipped in
# stop 29: stop 28's world + 8,700 steps with clean_history 0.5 on 2 x H200; +0.95 dB on the uniform
# agent's test levels, controls 0.62; benchmarks 2.7) on both GPUs of an nvidia-h200-x2, then choose its
# sampling on validation with a long horizon as long as the test's: stop 29's tune on 400-frame
# rollouts chose context level 100, whose 1000-frame rollouts kept their level less often than level
# 300's (validation: same-level 0.54 vs 0.69); `world tune` now also chooses the sampling steps (the
# CPU frame rate of play) and a continued world starts from its parent's sampling settings.
# The world starts from the shipped one (INIT=coinrun, in the tree): nothing to carry but the wheels.
# Calls (chain them; a machine stays warm 30 s after a call; do not pipe the start call's output):
#   1. kind nvidia-h200-x2, carry [".whl", ".gl"]:
#      `DRIFTLESS_GIT_COMMIT=<HEAD> bash tools/gpu_job.sh start tools/plans/world4.sh 540`
#   2. and 3. `bash tools/gpu_job.sh wait 540` until `plan: finished`, then spend what is left on
#      sweeps against $W/data (stop 29: ~9 minutes left after its plan), give_back.
# Brings back: world.tar (fp16, < 16 MB; key map by effect, context level, temperature and steps tuned),
# eval-full-plots.tgz, results.tar.gz (run.json, eval.json, metrics, refit, tune, uniform-*.json: the
# GenieRedux protocol on the uniform random agent's test levels, 256 clips, for this world and the
# shipped one; eval-full*.json: 16 x 1000-frame drift, same-level score and controls on held-action
# test levels, this world on GPU 0 and the shipped one on GPU 1).
# Timeline (stop 29's run of world3.sh: 20 minutes for BUDGET 14): data ~1.5 min, the run BUDGET (15)
# minutes, refit ~1, tune ~3 (16 x 1000-frame rollouts per candidate), uniform ~1, full evaluations ~2.
# Knobs: EPI, TEST_EPI, BUDGET, NG, INIT, ARGS (more train-world flags), TUNE_ARGS, UCLIPS, FULL (0: skip the full
# evaluations, for a CPU smoke run), PRESET, VAL_LONG.
EPI=${EPI:-5000}; BUDGET=${BUDGET:-15}; VAL_LONG=${VAL_LONG:-1100}; PRESET=${PRESET:-small}; W=${W:-/tmp/job/w}; D=$W/data; DL="python3 -m driftless"
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
# psnr-tolerance 0.5: level-keeping over 1000 frames weighs more for play than half a dB over 10
# frames (stop 29's validation: level 300 0.49 dB under 100 on 10 frames, same-level 0.69 against 0.54)
$DL world tune $W/run/world --data $D/val ${TUNE_ARGS:---levels 100,300 --clips 64 --rollouts 16 --frames 1000 --psnr-tolerance 0.5} \
  --batch-size 64 --no-progress --json $R/tune.json > $R/tune.log 2>&1
cp $W/run/world/world.json $R/world-tuned.json
tar cf $P/world.tar -C $W/run world && ls -la $P >> $R/status.txt
stamp uniform
# the GenieRedux protocol on the uniform random agent's test levels (the comparison of benchmarks 1.3)
$DL eval $W/run/world --data $D/utest --clips $UCLIPS --batch-size 128 --skip recon,drift,actions,controls,fvd \
  --no-progress --json $R/uniform.json > $R/uniform.log 2>&1
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
