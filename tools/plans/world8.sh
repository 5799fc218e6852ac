# issue 16/17 follow-up on the machine world7.sh left warm (its data and runC still in /tmp/job/w):
#   GPU 1: world C continued BUDGET more minutes (world D), measured on world7's validation set (64 x 1000, seed 7);
#   GPU 0: world C (tuned) on the same set at a 32-frame window.
BUDGET=${BUDGET:-5}; W=${W:-/tmp/job/w}; D=$W/data; DL="python3 -m driftless"
V="--skip recon,rollout,actions,controls,fvd --drift-rollouts 64 --drift-frames 1000 --batch-size 64 --seed 7 --no-progress"
(CUDA_VISIBLE_DEVICES=0 $DL eval $W/runC/world --data $D/val $V --window 32 --json $R/val-C-w32.json > $R/val-C-w32.log 2>&1) &
(CUDA_VISIBLE_DEVICES=1 $DL train world --data $D/train --val-data $D/val --test-data $D/test --out $W/runD \
    --preset small --init-from $W/runC/world --budget $BUDGET --shares 0,0,1 --reserve 0.2 --eval-size quick --no-progress \
    --dynamics-batch 128 > $R/train-D.log 2>&1
 cp $W/runD/run.json $R/run-D.json; cp $W/runD/dynamics/metrics.jsonl $R/metrics-dynamics-D.jsonl
 tar cf $P/worldD.tar -C $W/runD world
 CUDA_VISIBLE_DEVICES=1 $DL eval $W/runD/world --data $D/val $V --json $R/val-D.json > $R/val-D.log 2>&1) &
wait
