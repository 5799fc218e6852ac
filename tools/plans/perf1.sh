# issue 13, run 1: where the time goes with the new defaults (compile on), all stages, small and base
B="python3 -m driftless bench train --steps 10 --warmup 5"
$B --stage tokenizer --preset small --batch-size 192 --profile /tmp/prof --json $R/tok-small-b192.json
$B --stage dynamics --preset small --batch-size 256 --profile /tmp/prof --json $R/dyn-small-b256.json
$B --stage tokenizer --preset base --batch-size 48 --profile /tmp/prof --json $R/tok-base-b48.json
$B --stage dynamics --preset base --batch-size 128 --profile /tmp/prof --json $R/dyn-base-b128.json
$B --stage lam --preset small --batch-size 96 --json $R/lam-small-b96.json
python3 -m driftless bench generate coinrun --batch-sizes 1,16 --json $R/gen-coinrun.json
python3 -m driftless bench generate random:small --batch-sizes 1,16,64,256 --json $R/gen-small.json
$B --stage lam --preset base --batch-size 32 --json $R/lam-base-b32.json
