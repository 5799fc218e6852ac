# issue 17 (with 15, 16): retrain the shipped-size CoinRun world at scale on the 36.7 dB tokenizer
# (latent_dim 32; runs/s25/tok-c32, fp16 EMA, kept untrained: tokenizer share 0), with held-action
# data (the data command's default policy), in one `driftless train world` under torchrun.
# Calls (chain them; a machine stays warm 30 s after a call):
#   1. carry [".whl", ".gl"]: `bash tools/gpu_job.sh start tools/plans/world1.sh 3` - returns at
#      once (the tree with the wheels is at the 64 MiB cap, so the tokenizer travels in call 2;
#      stop 26 lost 8 device-minutes following the plan in call 1 while it waited for call 2);
#   2. carry ["runs/s25/tok-c32", "runs/compile"]: `bash tools/gpu_job.sh wait 550`;
#   3. and 4. `bash tools/gpu_job.sh wait 540` until the plan is done (or the budget nearly
#      spent), then give_back.
# The run after: continue the world's dynamics on the same tokenizer and LAM (their latents and
# actions stay the same): carry the world folder that came back in call 2 and run with
#   INIT=runs/s27/world WAIT_FOR=runs/s27/world/world.json SHARES=0,0,1
# (the world's LAM has no decoder, which a LAM share of 0 does not need).
# Brings back: world.tar (fp16, < 16 MB), eval-plots.tgz, eval-full-plots.tgz, compile.bin.gz.part00.. (torch.compile
# artifacts for the next run: cat the parts | gunzip > runs/compile/h200.bin), results.tar.gz (run.json, eval.json,
# tune.json, world-tuned.json, eval-full.json, logs). Timeline: data 1.4 min, the run 17 (+1-2
# of compiling beyond its budget without a compile cache), key map by effect ~0.5, tune ~1.5,
# full evaluation ~3: call 4.
# (CACHE, not CC: the H200 machine exports CC=/opt/gcc/bin/gcc, which stop 27's run copied in as
# its compile cache; torch warned and compiled from scratch.)
# Knobs: EPI, BUDGET (minutes of the train-world run), NG (GPUs), PRESET and LD (latent channels)
# for a CPU smoke run, INIT (--init-from; default tokenizer=$TOK) and WAIT_FOR (a file carried in
# call 2 that the plan waits for), SHARES, WORLD_ARGS (more train-world flags; default: history dropout 0.1,
# which history guidance needs, benchmarks 1.7), TUNE_ARGS.
EPI=${EPI:-5000}; BUDGET=${BUDGET:-17}; CACHE=${CACHE:-runs/compile/h200.bin}; PRESET=${PRESET:-small}; LD=${LD:-32}; W=${W:-/tmp/job/w}; D=$W/data; DL="python3 -m driftless"
TOK=${TOK:-runs/s25/tok-c32}; INIT=${INIT:-tokenizer=$TOK}; WAIT_FOR=${WAIT_FOR:-$TOK/config.json}; NG=${NG:-$(python3 -c 'import torch; print(max(1, torch.cuda.device_count()))')}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
stamp() { echo "$(date +%T) $*" >> $R/status.txt; }
stamp "start, $NG GPU(s)"
source tools/plans/coinrun_data.sh
stamp waiting-for-tokenizer
for _ in $(seq 600); do [ -f $WAIT_FOR ] && break; sleep 2; done
[ -f $CACHE ] && cp $CACHE $W/compile.bin
stamp train-world
python3 -m torch.distributed.run --standalone --nproc-per-node $NG -m driftless train world \
  --data $D/train --val-data $D/val --test-data $D/test --out $W/run --preset $PRESET \
  --set tokenizer.latent_dim=$LD --init-from $INIT --budget $BUDGET --shares ${SHARES:-0,0.35,0.65} \
  --reserve 0.15 --eval-size quick --compile-cache $W/compile.bin ${WORLD_ARGS:---set dynamics.history_dropout=0.1} > $R/train-world.log 2>&1
cp $W/run/run.json $W/run/eval.json $R/ 2>/dev/null
for s in tokenizer lam dynamics; do cp $W/run/$s/metrics.jsonl $R/metrics-$s.jsonl 2>/dev/null; done
tar cf $P/world.tar -C $W/run world && ls -la $P >> $R/status.txt
tar czf $P/eval-plots.tgz -C $W/run eval-plots 2>/dev/null
# (a file comes back only under 16 MB: a larger cache comes back in parts, `cat` them together)
# (at most 3 parts: 8 files come back in all)
[ -f $W/compile.bin ] && gzip -c $W/compile.bin > $W/compile.bin.gz && ls -la $W/compile.bin* >> $R/status.txt &&
  [ "$(stat -c %s $W/compile.bin.gz)" -le 47185920 ] && split -b 15M -d $W/compile.bin.gz $P/compile.bin.gz.part
ls -la $P >> $R/status.txt
stamp refit-actions
# the key map fitted by effect (Procgen branches; issue 15), before the tuning and the evaluation
$DL world refit-actions $W/run/world --method effect --game coinrun --action-starts 64 --no-progress > $R/refit.log 2>&1
cp $W/run/world/world.json $R/world-refit.json
stamp tune
# the context noise level chosen on validation (benchmarks 1.6); world.json comes back in the results
$DL world tune $W/run/world --data $D/val ${TUNE_ARGS:---rollouts 16 --frames 400 --clips 64} --no-progress --json $R/tune.json > $R/tune.log 2>&1
cp $W/run/world/world.json $R/world-tuned.json
stamp eval-full
# the full protocol on the GPU (GenieRedux 256 clips, 16 x 1000-frame drift, controls), with the
# tuned world.json; the CPU cannot run the 1000-frame drift in a session
$DL eval $W/run/world --data $D/test --full --no-progress --json $R/eval-full.json --plots $W/plots-full \
  > $R/eval-full.log 2>&1
tar czf $P/eval-full-plots.tgz -C $W plots-full 2>/dev/null
stamp done
