# issues 17 and 16: continue the dynamics of stop 27's world (runs/s27/world: the 36.7 dB 32-channel
# tokenizer and the held-action LAM, both kept) as two arms side by side, one per GPU, equal
# budgets, on the same data: A plain Diffusion Forcing, B with clean_history 0.5 (half the clips
# train with a nearly clean past, the condition every rollout frame is generated under;
# benchmarks 2.5 measured that world reproducing unchanged detail poorly).
# The first GPU run with --compile-scope blocks (the default since stop 27): compare the dynamics'
# first-50-steps time (105 s in stop 27, whole-model compile) and its frames/s (118.6k for two GPUs
# there; here each arm has one GPU) in metrics-dynamics-*.jsonl.
# Data: held-action training episodes as stop 27's (a store holds one agent policy: the data
# command refuses to mix them); test stores of both policies (the GenieRedux protocol's figures on
# the uniform random agent's, as section 1.3; controls and the quick evaluation on the held one's).
# Calls (chain them; a machine stays warm 30 s after a call):
#   1. kind nvidia-h200-x2, carry [".whl", ".gl"]: `bash tools/gpu_job.sh start tools/plans/world2.sh 3`
#      (returns at once: the tree with the wheels is at the 64 MiB cap, the world travels in call 2)
#   2. carry ["runs/s27/world"]: `bash tools/gpu_job.sh wait 550`
#   3. `bash tools/gpu_job.sh wait 540` until `plan: finished` (or the budget nearly spent), give_back.
# Brings back: worldA.tar, worldB.tar (fp16, < 16 MB each, untuned), results.tar.gz (run-*.json,
# eval-*.json, tune-*.json and world-tuned-*.json: context level and temperature chosen on validation,
# uniform-*.json: GenieRedux protocol on the uniform test store tuned and untuned, logs).
# Timeline: data ~2 min, both arms BUDGET (12) minutes at once (latent cache ~1.4, compiling ~2,
# dynamics the rest, quick evaluation), tune ~2, uniform-test evaluations ~1, then the full protocol
# (16 x 1000-frame drift) on arm B's world if time is left (it is packed before).
# Knobs: EPI (training episodes), BUDGET, TUNE_ARGS, FULL (0: no full evaluation, for a CPU smoke run), PRESET, INIT, WAIT_FOR, ARGS_A, ARGS_B.
EPI=${EPI:-5000}; BUDGET=${BUDGET:-12}; PRESET=${PRESET:-small}; W=${W:-/tmp/job/w}; D=$W/data; DL="python3 -m driftless"
INIT=${INIT:-runs/s27/world}; WAIT_FOR=${WAIT_FOR:-$INIT/world.json}
ARGS_A=${ARGS_A:---set dynamics.history_dropout=0.1}
ARGS_B=${ARGS_B:---set dynamics.history_dropout=0.1 --set dynamics.clean_history=0.5}
stamp() { echo "$(date +%T) $*" >> $R/status.txt; }
stamp start
UTEST=1 source tools/plans/coinrun_data.sh
stamp waiting-for-world
for _ in $(seq 600); do [ -f $WAIT_FOR ] && break; sleep 2; done
stamp train-arms
arm() {  # arm NAME GPU ARGS...
  local name=$1 gpu=$2; shift 2
  CUDA_VISIBLE_DEVICES=$gpu $DL train world --data $D/train --val-data $D/val --test-data $D/test \
    --out $W/run$name --preset $PRESET --init-from $INIT --budget $BUDGET --shares 0,0,1 --reserve 0.2 \
    --eval-size quick --no-progress "$@" > $R/train-$name.log 2>&1
  cp $W/run$name/run.json $R/run-$name.json; cp $W/run$name/eval.json $R/eval-$name.json
  cp $W/run$name/dynamics/metrics.jsonl $R/metrics-dynamics-$name.jsonl
  tar cf $P/world$name.tar -C $W/run$name world
  # context level and temperature chosen on validation (a shorter long horizon than stop 27's tune,
  # which generated only ~50 frames/s on the H200); world.json comes back in the results
  CUDA_VISIBLE_DEVICES=$gpu $DL world tune $W/run$name/world --data $D/val \
    ${TUNE_ARGS:---levels 15,100,300 --clips 32 --rollouts 4 --frames 200} --batch-size 32 --no-progress --json $R/tune-$name.json > $R/tune-$name.log 2>&1
  cp $W/run$name/world/world.json $R/world-tuned-$name.json
  # the GenieRedux protocol on the uniform random agent's test levels: tuned, and the untuned defaults
  # (large batches: stop 27's tune stepped about 3 batches a second, so time goes by sequential steps)
  CUDA_VISIBLE_DEVICES=$gpu $DL eval $W/run$name/world --data $D/utest --clips 256 --batch-size 128 \
    --skip recon,drift,actions,controls,fvd --no-progress --json $R/uniform-$name.json > $R/uniform-$name.log 2>&1
  CUDA_VISIBLE_DEVICES=$gpu $DL eval $W/run$name/world --data $D/utest --clips 256 --batch-size 128 --temperature 1 --context-level 15 \
    --skip recon,drift,actions,controls,fvd --no-progress --json $R/uniform-$name-untuned.json > $R/uniform-$name-untuned.log 2>&1
  stamp "arm $name done"
}
arm A 0 $ARGS_A &
arm B 1 $ARGS_B &
wait
ls -la $P >> $R/status.txt
stamp eval-full-B
[ "${FULL:-1}" = 1 ] && CUDA_VISIBLE_DEVICES=0 $DL eval $W/runB/world --data $D/test --full --batch-size 128 --no-progress --json $R/eval-full-B.json \
  --plots $W/plots-full > $R/eval-full-B.log 2>&1
tar czf $P/eval-full-plots.tgz -C $W plots-full 2>/dev/null
stamp done
