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
# It is world3.sh with these defaults (the same commands; STEPS_SWEEP=0 drops its 4-vs-8-steps
# evaluations, which the tune's steps rule replaces). Knobs: world3.sh's.
BUDGET=${BUDGET:-15}; VAL_LONG=${VAL_LONG:-1100}; STEPS_SWEEP=${STEPS_SWEEP:-0}
# psnr-tolerance 0.5: level-keeping over 1000 frames weighs more for play than half a dB over 10
# frames (stop 29's validation: level 300 0.49 dB under 100 on 10 frames, same-level 0.69 against 0.54)
TUNE_ARGS=${TUNE_ARGS:---levels 100,300 --clips 64 --rollouts 16 --frames 1000 --psnr-tolerance 0.5}
source tools/plans/world3.sh
