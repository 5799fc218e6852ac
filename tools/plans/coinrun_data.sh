# The CoinRun stores a world plan trains and measures on; sourced from the repo root by
# tools/plans/world*.sh with DL (the driftless command), D (the data folder) and EPI (training
# episodes) set. TEST_EPI: ordinary test episodes (default 254); UTEST=1 adds the uniform random
# agent's test episodes (the GenieRedux protocol's comparison, benchmarks 1.3). VAL_LONG: frames of the
# validation store's one-level episodes (default 450; 1100 for a tune whose long horizon is 1000 frames).
# train: held-action episodes (the data command's default policy); val: 1/30 of them plus 16
# one-level episodes of VAL_LONG frames (the reference of `world tune`); test: plus 16 one-level
# episodes of 1100 frames (the reference of the 1000-frame drift).
$DL data coinrun --out $D/train --episodes $EPI --split train --workers 30
$DL data coinrun --out $D/val --episodes $((EPI / 30 + 2)) --split val --workers 30
$DL data coinrun --out $D/val --episodes 16 --split val --workers 16 --same-level-frames ${VAL_LONG:-450}
$DL data coinrun --out $D/test --episodes ${TEST_EPI:-254} --split test --workers 30
$DL data coinrun --out $D/test --episodes 16 --split test --workers 16 --same-level-frames 1100
if [ "${UTEST:-0}" = 1 ]; then
  $DL data coinrun --out $D/utest --episodes ${TEST_EPI:-254} --split test --workers 30 --policy uniform
fi
