# issue 14 session 1, part C (foreground): a dynamics model on each candidate's latents (true
# actions, equal short budget, side by side), built into a world and evaluated on the test split.
W=${W:-/tmp/job/w}; D=$W/data; DL="python3 -m driftless"; CANDS=${CANDS:-"a conv c32"}; DB=${DB:-3.5}
for c in $CANDS; do
  $DL train dynamics --data $W/lat-$c --val-data $W/latv-$c --out $W/dyn-$c --preset small --actions true \
    --batch-size 256 --warmup 100 --steps 10000000 --time-budget $DB --log-every 100 --val-every 2000 \
    > $R/train-dyn-$c.log 2>&1 &
done
wait
for c in $CANDS; do cp $W/dyn-$c/metrics.jsonl $R/metrics-dyn-$c.jsonl
  $DL world build --tokenizer $W/tok-$c/checkpoint --dynamics $W/dyn-$c/checkpoint --out $W/world-$c --force
  $DL eval $W/world-$c --data $D/test --skip drift,actions,fvd --clips 256 --recon-clips 64 --no-progress --json $R/eval-world-$c.json
done
