# issue 14 session 1, part B (run in the foreground of a device call): evaluate the tokenizer
# candidates of tok1.sh on the test split and write their latent caches.
W=${W:-/tmp/job/w}; D=$W/data; DL="python3 -m driftless"; CANDS=${CANDS:-"a conv c32"}
for c in $CANDS; do
  $DL eval $W/tok-$c/checkpoint --data $D/test --skip rollout,drift,actions,fvd --recon-clips 256 --no-progress --json $R/eval-tok-$c.json
  $DL eval $W/tok-$c/checkpoint --data $D/test --skip rollout,drift,actions,fvd --recon-clips 24 --recon-len 256 --no-progress --json $R/long-tok-$c.json
done
for c in $CANDS; do
  $DL train latents --data $D/train --tokenizer $W/tok-$c/checkpoint --out $W/lat-$c --force
  $DL train latents --data $D/val --tokenizer $W/tok-$c/checkpoint --out $W/latv-$c --force
done
