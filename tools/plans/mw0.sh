# issue 15: a pilot for the dynamics' sideways motion (benchmarks 2.18). Under the same inferred actions
# the worlds shift the scene sideways a fraction of what the game does (teacher-forced on real moving
# frames, about half a step's shift), so the keys cannot move the player whatever the LAM. Arms continue
# the shipped dynamics (shipped tokenizer and LAM, shares 0,0,1) for BUDGET minutes each, side by side
# on one GPU, with dynamics.motion_weight = each of MWS (0: plain; > 0: the tokens that change between
# frames weigh more), then every world and the shipped one are measured on the same held-action test
# clips (GenieRedux protocol; its motion-following slope, 1 = as far as the game moved). Everything is
# short: the question is the direction of the effect, for the next session's full run.
# One call (kind nvidia-h200, carry [".whl", ".gl"]), results copied into $OUT as they come:
#   `DRIFTLESS_GIT_COMMIT=<HEAD> bash tools/gpu_job.sh start tools/plans/mw0.sh 330`
# Knobs: EPI, TEST_EPI, BUDGET, MWS, CLIPS, DYN_BATCH, DL.
EPI=${EPI:-1500}; BUDGET=${BUDGET:-3}; MWS=${MWS:-"0 4"}; CLIPS=${CLIPS:-256}; W=${W:-/tmp/job/w}; D=$W/data
DL=${DL:-"python3 -m driftless"}; S=${S:-src/driftless/assets/coinrun}
stamp() { echo "$(date +%T) $*" >> $R/status.txt; }
out() { [ -n "${OUT:-}" ] && cp "$@" "$OUT/" 2>/dev/null; true; }
T="--skip recon,drift,actions,controls,fvd --clips $CLIPS --batch-size 128 --no-progress"
stamp start
$DL data coinrun --out $D/train --episodes $EPI --split train --workers 15
$DL data coinrun --out $D/val --episodes $((EPI / 30 + 2)) --split val --workers 15
$DL data coinrun --out $D/test --episodes ${TEST_EPI:-128} --split test --workers 15
stamp data
(CUDA_VISIBLE_DEVICES=0 $DL eval $S --data $D/test $T --json $R/test-shipped.json > $R/test-shipped.log 2>&1
 out $R/test-shipped.json; stamp "test shipped") &
for mw in $MWS; do
  ($DL train world --data $D/train --val-data $D/val --out $W/run-$mw --preset small \
     --init-from tokenizer=$S/tokenizer,lam=$S/lam,dynamics=$S/dynamics --budget $BUDGET --shares 0,0,1 \
     --reserve 0.05 --stop-after world --no-progress --dynamics-batch ${DYN_BATCH:-128} \
     --set dynamics.motion_weight=$mw > $R/train-$mw.log 2>&1
   cp $W/run-$mw/dynamics/metrics.jsonl $R/metrics-$mw.jsonl; stamp "trained $mw"
   $DL world sampling $W/run-$mw/world --from $S > $R/sampling-$mw.log 2>&1
   $DL eval $W/run-$mw/world --data $D/test $T --json $R/test-$mw.json > $R/test-$mw.log 2>&1
   out $R/test-$mw.json; stamp "test $mw") &
done
wait
stamp done
