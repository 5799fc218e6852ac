# issue 14, GPU session 2 (plan; see the issue notes): continue the best shipped-size tokenizer
# candidates of session 1 alone on the GPU, then judge their latents with dynamics models at a
# budget long enough to beat copying the last frame.
# Call 1 carries .whl and .gl (the tree is capped at 64 MiB: the Procgen wheel leaves no room for
# checkpoints) and starts this plan; call 2 (chained within 30 s) carries runs/tok14/s1, which the
# plan waits for. Knobs: EPI, TB (tokenizer minutes), DB (dynamics minutes), CKPTS.
EPI=${EPI:-2500}; TB=${TB:-10}; DB=${DB:-6}; W=${W:-/tmp/job/w}; D=$W/data; DL="python3 -m driftless"
CKPTS=${CKPTS:-runs/tok14/s1}; CANDS=${CANDS:-"c32 a"}
stamp() { echo "$(date +%T) $*" >> $R/status.txt; }
stamp data
$DL data coinrun --out $D/train --episodes $EPI --split train --workers 15
$DL data coinrun --out $D/val --episodes $((EPI / 30 + 2)) --split val --workers 15
$DL data coinrun --out $D/test --episodes $((EPI / 10 + 4)) --split test --workers 15
$DL data coinrun --out $D/test --episodes 16 --split test --workers 15 --same-level-frames 1100
stamp waiting-for-checkpoints
for _ in $(seq 600); do [ -f $CKPTS/tok-c32/config.json ] && break; sleep 2; done
for c in $CANDS; do
  stamp tokenizer-$c
  # one at a time: a small tokenizer alone runs at ~60k frames/s, three side by side at ~19k each
  $DL train tokenizer --data $D/train --val-data $D/val --out $W/tok-$c --preset small --init-from $CKPTS/tok-$c \
    $( [ $c = c32 ] && echo --set latent_dim=32 ) --batch-size 192 --lr 3e-4 --warmup 100 --steps 10000000 \
    --time-budget $TB --log-every 100 --val-every 2000 --save-every 1000 > $R/train-tok-$c.log 2>&1
  cp $W/tok-$c/metrics.jsonl $R/metrics-tok-$c.jsonl
  python3 tools/fp16_checkpoint.py $W/tok-$c/checkpoint $W/fp16/tok-$c && tar cf $P/tok-$c.tar -C $W/fp16 tok-$c
  $DL eval $W/tok-$c/checkpoint --data $D/test --skip rollout,drift,actions,fvd,controls --recon-clips 256 --no-progress --json $R/eval-tok-$c.json
  $DL eval $W/tok-$c/checkpoint --data $D/test --skip rollout,drift,actions,fvd,controls --recon-clips 24 --recon-len 256 --no-progress --json $R/long-tok-$c.json
  $DL train latents --data $D/train --tokenizer $W/tok-$c/checkpoint --out $W/lat-$c --force
  $DL train latents --data $D/val --tokenizer $W/tok-$c/checkpoint --out $W/latv-$c --force
done
stamp dynamics
for c in $CANDS; do
  $DL train dynamics --data $W/lat-$c --val-data $W/latv-$c --out $W/dyn-$c --preset small --actions true \
    --batch-size 256 --warmup 100 --steps 10000000 --time-budget $DB --log-every 100 --val-every 2000 \
    > $R/train-dyn-$c.log 2>&1 &
done
wait
for c in $CANDS; do cp $W/dyn-$c/metrics.jsonl $R/metrics-dyn-$c.jsonl
  $DL world build --tokenizer $W/tok-$c/checkpoint --dynamics $W/dyn-$c/checkpoint --out $W/world-$c --force
  $DL eval $W/world-$c --data $D/test --skip drift,actions,fvd,controls --clips 256 --recon-clips 64 --no-progress --json $R/eval-world-$c.json
done
stamp done
