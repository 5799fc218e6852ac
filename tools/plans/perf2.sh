# issue 13, run 2: CUDA-graph play, the short temporal attention, the attention kernels
G="python3 -m driftless bench generate"
$G coinrun --batch-sizes 1,16,64,256 --json $R/gen-coinrun-graphs.json
$G coinrun --batch-sizes 1,16 --no-cuda-graphs --json $R/gen-coinrun-eager.json
$G random:base --batch-sizes 1,16 --json $R/gen-base-graphs.json
B="python3 -m driftless bench train --steps 10 --warmup 5"
$B --stage tokenizer --preset base --batch-size 48 --profile /tmp/prof --json $R/tok-base-b48.json
$B --stage dynamics --preset base --batch-size 128 --profile /tmp/prof --json $R/dyn-base-b128.json
DRIFTLESS_SHORT_ATTENTION=0 $B --stage tokenizer --preset base --batch-size 48 --no-reference --json $R/tok-base-b48-sdpa.json
$B --stage tokenizer --preset small --batch-size 192 --json $R/tok-small-b192.json
$B --stage dynamics --preset small --batch-size 256 --json $R/dyn-small-b256.json
python3 tools/attention_bench.py --json $R/attention.json
