# issue 15, "latent actions that separate the controls": a LAM whose decoder sees only the current frame
# (`lam.decoder.temporal_window=1`). With its 16-frame window the decoder reads the player's velocity
# from the frames before, so a code only has to carry what momentum does not predict (a change of
# control), and holding a code in the world means "keep changing" rather than "keep moving right":
# the shipped world has no code that moves right without jumping (cfg1.sh's refits: the right key
# scores at most 0.22 on any code). With one frame the decoder cannot know the velocity, so the code
# must carry the motion itself, which is what a held key means.
# One arm (one H200): a fresh LAM on held-action data, the shipped dynamics continued on its codes, the
# shipped sampling, keys refitted by effect; then, side by side on the GPU: controls on 192 test states
# (seed 2, as ctl1.sh/cfg1.sh: the shipped world read 0.594 there), held-action test clips (GenieRedux
# protocol, Δ4, the LAM probe) and validation 64 x 1000 frames (seed 7, same-level; shipped 0.67).
# Calls: kind nvidia-h200, carry [".whl", ".gl"]:
#   `DRIFTLESS_GIT_COMMIT=<HEAD> bash tools/gpu_job.sh start tools/plans/lam2.sh 560`, then
#   `bash tools/gpu_job.sh wait 560` chained within 30 s until `plan: finished` (~17 min), give_back.
# Brings back world.tar (fp16 world, ~15 MB) and results.tar.gz. Knobs: EPI, BUDGET, WIN, N.
EPI=${EPI:-5000}; BUDGET=${BUDGET:-10}; WIN=${WIN:-1}; N=${N:-192}; W=${W:-/tmp/job/w}; D=$W/data
DL="python3 -m driftless"; S=${S:-src/driftless/assets/coinrun}; VAL_LONG=1100
stamp() { echo "$(date +%T) $*" >> $R/status.txt; }
stamp start
source tools/plans/coinrun_data.sh
stamp data
$DL train world --data $D/train --val-data $D/val --test-data $D/test --out $W/run \
  --preset ${PRESET:-small} --init-from tokenizer=$S/tokenizer,dynamics=$S/dynamics --budget $BUDGET --shares 0,1,3 \
  --reserve 0.1 --stop-after world --no-progress --dynamics-batch 128 --set lam.vq_warmup=200 \
  --set lam.decoder.temporal_window=$WIN > $R/train.log 2>&1
cp $W/run/run.json $R/run.json
cp $W/run/lam/metrics.jsonl $R/metrics-lam.jsonl; cp $W/run/dynamics/metrics.jsonl $R/metrics-dynamics.jsonl
source tools/plans/world_checks.sh
finish_run $W/run
check_world $W/run/world
stamp done
