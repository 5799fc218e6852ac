# issue 15, "latent actions that separate the controls": one latent action per transition (today) against
# one per chunk of 4 transitions (`lam.chunk=4`: the encoder's vectors averaged over the chunk, one code,
# used by the decoder for every frame of it). A CPU diagnostic (docs/benchmarks.md 2.13) found a single
# transition of held-action CoinRun says little of the control held (a probe of global-motion features:
# 0.61-0.64, the shipped LAM's codes 0.53-0.54, majority 0.49-0.50); a chunk asks a code to explain several frames
# of one control. Two arms, one GPU each, same data and budget; each trains a LAM from scratch, then
# continues the shipped dynamics on its codes (the action embeddings learn the new codes), plays with the
# shipped world's sampling settings, gets its key map fitted by effect (`world refit-actions`), and is
# measured on the test split: controls accuracy (32 held-out states), the LAM probe, GenieRedux protocol,
# Δ4, 1000-frame drift.
#   GPU 0: A, lam.chunk=1    GPU 1: B, lam.chunk=4
# Calls (chain them; a machine stays warm 30 s after a call; do not pipe the start call's output):
#   1. kind nvidia-h200-x2, carry [".whl", ".gl"]:
#      `DRIFTLESS_GIT_COMMIT=<HEAD> bash tools/gpu_job.sh start tools/plans/lam1.sh 540`
#   2. and 3. `bash tools/gpu_job.sh wait 540` until `plan: finished`, give_back.
# Brings back worldA.tar, worldB.tar (fp16) and results.tar.gz (run-*.json, refit-*.json, test-*.json, logs).
# Timeline: data ~1.5 min; BUDGET (16) minutes each (LAM a quarter, dynamics the rest); refit ~1; eval ~5.
EPI=${EPI:-5000}; BUDGET=${BUDGET:-16}; W=${W:-/tmp/job/w}; D=$W/data; DL="python3 -m driftless"
S=${S:-src/driftless/assets/coinrun}; VAL_LONG=450
stamp() { echo "$(date +%T) $*" >> $R/status.txt; }
stamp start
source tools/plans/coinrun_data.sh
arm() {  # arm NAME GPU CHUNK
  local n=$1 g=$2 k=$3
  CUDA_VISIBLE_DEVICES=$g $DL train world --data $D/train --val-data $D/val --test-data $D/test --out $W/run$n \
    --preset small --init-from tokenizer=$S/tokenizer,dynamics=$S/dynamics --budget $BUDGET --shares 0,1,3 \
    --reserve 0.15 --eval-size quick --no-progress --dynamics-batch 128 --set lam.vq_warmup=200 \
    --set lam.chunk=$k > $R/train-$n.log 2>&1
  cp $W/run$n/run.json $R/run-$n.json
  cp $W/run$n/lam/metrics.jsonl $R/metrics-lam-$n.jsonl; cp $W/run$n/dynamics/metrics.jsonl $R/metrics-dynamics-$n.jsonl
  # the shipped world's sampling (context level, temperature, steps, fused_commit), so the arms differ only in the LAM
  $DL world sampling $W/run$n/world --from $S > $R/sampling-$n.log 2>&1
  CUDA_VISIBLE_DEVICES=$g $DL world refit-actions $W/run$n/world --game coinrun --eval-starts 0 --no-progress \
    > $R/refit-$n.log 2>&1
  cp $W/run$n/world/world.json $R/world-$n.json
  tar cf $P/world$n.tar -C $W/run$n world
  stamp "$n trained"
  CUDA_VISIBLE_DEVICES=$g $DL eval $W/run$n/world --data $D/test --full --batch-size 128 --no-progress \
    --json $R/test-$n.json > $R/test-$n.log 2>&1
  stamp "$n done"
}
arm A 0 1 &
arm B 1 4 &
wait
stamp done
