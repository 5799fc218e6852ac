# issue 15: which LAM gives the keys codes that mean a direction? Diagnosis (docs/benchmarks.md 2.17): the
# shipped LAM spends six of its eight codes on vertical motion (jumps, falls: 2-3x the pixel change of a
# step sideways) and has one direction-blind "moving sideways" code (right 0.49 / left 0.29 of its
# test transitions); a LAM whose decoder sees only the current frame (lam2.sh) grew a clean "right" code (0.96)
# but no "left" one. Here LAMs of other codebook sizes and decoder windows, trained side by side the same
# minutes, are compared by tools/control_signal.py on held-action test transitions (direction score:
# the best "left" code's and the best "right" code's rate of moving that way, averaged), and the best
# one goes under the shipped dynamics (continued BUDGET minutes; new codes get new action rows) with the
# shipped sampling, keys refitted by effect, then: controls on 192 test states (seed 2; shipped 0.594),
# held-action test clips (GenieRedux protocol, Δ4), validation 64 x 1000 frames (seed 7; shipped 0.67).
#   ARMS: NAME:CODES:DECODER_WINDOW:CHUNK, trained at once (the GPUs taken in turn). F adds chunks of 4
#   transitions per code to the one-frame decoder: four frames of a held control move the scene
#   sideways by whole pixels far more often than one does.
# Calls: kind nvidia-h200 (or -x2), carry [".whl", ".gl"]:
#   `DRIFTLESS_GIT_COMMIT=<HEAD> bash tools/gpu_job.sh start tools/plans/lam3.sh 555`, then
#   `bash tools/gpu_job.sh wait 555` chained within 30 s until `plan: finished` (~22 min), give_back.
# Brings back world.tar (fp16 world, ~15 MB), lams.tar (the arms' LAMs, fp16) and results.tar.gz.
# Knobs: EPI, TEST_EPI, LT (LAM minutes), BUDGET (world minutes), ARMS, N, PICK (an arm's name: skip the
# choice), DYN_BATCH, LAM_FLAGS (e.g. "--batch-size 4" for a CPU smoke run), DL.
EPI=${EPI:-5000}; LT=${LT:-4}; BUDGET=${BUDGET:-9}; N=${N:-192}; W=${W:-/tmp/job/w}; D=$W/data
ARMS=${ARMS:-"A:8:16:1 B:16:16:1 C:16:1:1 F:16:1:4"}
DL=${DL:-"python3 -m driftless"}; S=${S:-src/driftless/assets/coinrun}; VAL_LONG=1100
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l); [ "$NGPU" -ge 1 ] || NGPU=1
stamp() { echo "$(date +%T) $*" >> $R/status.txt; }
stamp start
source tools/plans/coinrun_data.sh
stamp data
i=0; LAMS=""
for arm in $ARMS; do
  IFS=: read -r name na win chunk <<< "$arm"; gpu=$((i % NGPU)); i=$((i + 1))
  LAMS="$LAMS --lam $W/lam-$name/checkpoint"
  (CUDA_VISIBLE_DEVICES=$gpu $DL train lam --data $D/train --val-data $D/val --out $W/lam-$name --preset small \
     --set num_actions=$na --set decoder.temporal_window=$win --set chunk=${chunk:-1} --set vq_warmup=200 --batch-size 96 --lr 3e-4 \
     --warmup 100 --steps 1000000000 --time-budget $LT --log-every 50 --val-every 1000 ${LAM_FLAGS:-} \
     > $R/lam-$name.log 2>&1
   cp $W/lam-$name/metrics.jsonl $R/metrics-lam-$name.jsonl; stamp "lam $name") &
done
wait
python3 tools/control_signal.py $D/test --codes-only --max-clips 1500 $LAMS --json $R/probe.json > $R/probe.log 2>&1
for arm in $ARMS; do n=${arm%%:*}; python3 tools/fp16_checkpoint.py $W/lam-$n/checkpoint $W/lams/lam-$n >/dev/null 2>&1; done
tar cf $P/lams.tar -C $W lams
PICK=${PICK:-$(python3 -c "
import json, sys
r = json.load(open('$R/probe.json'))['lams']
name = max(r, key=lambda k: (r[k]['direction_code']['score'], r[k]['probes']['latent_codes']['accuracy']))
print(name.split('/lam-')[-1].split('/')[0])")}
stamp "picked $PICK"
$DL train world --data $D/train --val-data $D/val --test-data $D/test --out $W/run \
  --preset small --init-from tokenizer=$S/tokenizer,lam=$W/lam-$PICK/checkpoint,dynamics=$S/dynamics \
  --budget $BUDGET --shares 0,0,1 --reserve 0.1 --stop-after world --no-progress --dynamics-batch ${DYN_BATCH:-128} \
  > $R/train.log 2>&1
cp $W/run/run.json $R/run.json; cp $W/run/dynamics/metrics.jsonl $R/metrics-dynamics.jsonl
source tools/plans/world_checks.sh
finish_run $W/run
check_world $W/run/world
stamp done
