# issue 14, GPU session 1: three shipped-size tokenizer candidates side by side, each evaluated on
# the test split (16-frame and 256-frame clips) and judged by a dynamics model trained on its
# latents (true actions, equal short budget). Knobs for a CPU smoke run: EPI, TB, DB, PRESET, BS.
EPI=${EPI:-2500}; TB=${TB:-14}; DB=${DB:-3.5}; PRESET=${PRESET:-small}; BS=${BS:-192}; W=${W:-/tmp/job/w}
D=$W/data; DL="python3 -m driftless"; CANDS=${CANDS:-"a conv c32"}
declare -A SET=([a]="" [conv]="--set head_conv=32" [c32]="--set latent_dim=32")
stamp() { echo "$(date +%T) $*" >> $R/status.txt; }
stamp data
$DL data coinrun --out $D/train --episodes $EPI --split train --workers 15
$DL data coinrun --out $D/val --episodes $((EPI / 30 + 2)) --split val --workers 15
$DL data coinrun --out $D/test --episodes $((EPI / 10 + 4)) --split test --workers 15
stamp tokenizers
for c in $CANDS; do
  $DL train tokenizer --data $D/train --val-data $D/val --out $W/tok-$c --preset $PRESET ${SET[$c]} \
    --batch-size $BS --lr 5e-4 --warmup 200 --steps 10000000 --time-budget $TB --log-every 100 \
    --val-every 2000 --save-every 1000 > $R/train-tok-$c.log 2>&1 &
done
wait
for c in $CANDS; do cp $W/tok-$c/metrics.jsonl $R/metrics-tok-$c.jsonl
  python3 tools/fp16_checkpoint.py $W/tok-$c/checkpoint $W/fp16/tok-$c && tar cf $P/tok-$c.tar -C $W/fp16 tok-$c; done
stamp eval-tokenizers
for c in $CANDS; do
  $DL eval $W/tok-$c/checkpoint --data $D/test --skip rollout,drift,actions,fvd --recon-clips 256 --no-progress --json $R/eval-tok-$c.json
  $DL eval $W/tok-$c/checkpoint --data $D/test --skip rollout,drift,actions,fvd --recon-clips 24 --recon-len 256 --no-progress --json $R/long-tok-$c.json
done
stamp latents
for c in $CANDS; do
  $DL train latents --data $D/train --tokenizer $W/tok-$c/checkpoint --out $W/lat-$c
  $DL train latents --data $D/val --tokenizer $W/tok-$c/checkpoint --out $W/latv-$c
done
stamp dynamics
for c in $CANDS; do
  $DL train dynamics --data $W/lat-$c --val-data $W/latv-$c --out $W/dyn-$c --preset $PRESET --actions true \
    --batch-size 256 --warmup 100 --steps 10000000 --time-budget $DB --log-every 100 --val-every 2000 \
    > $R/train-dyn-$c.log 2>&1 &
done
wait
stamp eval-worlds
for c in $CANDS; do cp $W/dyn-$c/metrics.jsonl $R/metrics-dyn-$c.jsonl
  $DL world build --tokenizer $W/tok-$c/checkpoint --dynamics $W/dyn-$c/checkpoint --out $W/world-$c --force
  $DL eval $W/world-$c --data $D/test --skip drift,actions,fvd --clips 256 --recon-clips 64 --no-progress --json $R/eval-world-$c.json
done
stamp done
