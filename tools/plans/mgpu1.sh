# issues 21 + 14, GPU session on nvidia-h200-x2 (see the issue notes).
# A. Multi-GPU (issue 21): frames/s of the base tokenizer and base dynamics on 1 and 2 GPUs (same
#    per-GPU batch: weak scaling), weights identical across ranks, and resume of a 2-GPU checkpoint
#    on 2 GPUs and on 1 GPU (same global batch).
# B. Tokenizer (issue 14): continue the best shipped-size candidate (latent_dim 32) with DDP on both
#    GPUs, then evaluate it on the test split.
# Call 1 carries .whl and .gl and starts this plan; call 2 (chained within 30 s) carries
# runs/tok14/s1, which part B waits for. Knobs: EPI, TB (tokenizer minutes), STEPS_A.
EPI=${EPI:-2500}; TB=${TB:-9}; STEPS_A=${STEPS_A:-150}; PA=${PA:-base}; W=${W:-/tmp/job/w}; D=$W/data; DL="python3 -m driftless"
CKPTS=${CKPTS:-runs/tok14/s1}; NG=${NG:-2}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
TR="python3 -m torch.distributed.run --standalone --nproc-per-node"
stamp() { echo "$(date +%T) $*" >> $R/status.txt; }
keep() { cp $W/$1/metrics.jsonl $R/metrics-$1.jsonl 2>/dev/null; }
stamp start; nvidia-smi topo -m > $R/topo.txt 2>&1
python3 -c "import torch; print(torch.cuda.device_count(), torch.__version__)" >> $R/status.txt 2>&1
stamp data
$DL data coinrun --out $D/train --episodes $EPI --split train --workers 30
$DL data coinrun --out $D/val --episodes $((EPI / 30 + 2)) --split val --workers 30
$DL data coinrun --out $D/test --episodes $((EPI / 10 + 4)) --split test --workers 30
$DL data coinrun --out $D/test --episodes 16 --split test --workers 16 --same-level-frames 1100

# ---- A: scaling (base tokenizer, then base dynamics on that tokenizer's latents of the val store)
common="--steps $STEPS_A --log-every 10 --val-every 0 --save-every 0 --warmup 20"
for n in 1 $NG; do
  stamp tok-base-$n
  $TR $n -m driftless train tokenizer --data $D/train --out $W/mg-tok$n --preset $PA --batch-size 32 $common \
    > $R/mg-tok$n.log 2>&1; keep mg-tok$n
done
$DL train latents --data $D/val --tokenizer $W/mg-tok1/checkpoint --out $W/mg-lat --force > $R/mg-lat.log 2>&1
for n in 1 $NG; do
  stamp dyn-base-$n
  $TR $n -m driftless train dynamics --data $W/mg-lat --actions true --out $W/mg-dyn$n --preset $PA --batch-size 64 $common \
    > $R/mg-dyn$n.log 2>&1; keep mg-dyn$n
done
stamp resume
# stop a 2-GPU run halfway, then continue it on 2 GPUs (x32) and on 1 GPU (x64): the same global batch
rcommon="--data $W/mg-lat --actions true --preset $PA --steps 200 --log-every 10 --val-every 0 --save-every 0 --warmup 20"
$TR $NG -m driftless train dynamics $rcommon --out $W/mg-r2 --batch-size 32 --stop-after 100 > $R/mg-r-first.log 2>&1
cp -r $W/mg-r2 $W/mg-r1
$TR $NG -m driftless train dynamics $rcommon --out $W/mg-r2 --batch-size 32 --resume > $R/mg-r2.log 2>&1; keep mg-r2
$TR 1 -m driftless train dynamics $rcommon --out $W/mg-r1 --batch-size $((32 * NG)) --resume > $R/mg-r1.log 2>&1; keep mg-r1
python3 - "$W" > $R/mg-resume.json <<'EOF'
import json, sys
from safetensors.torch import load_file
w = sys.argv[1]
def weights(run):
    import glob
    f = sorted(glob.glob(f"{w}/{run}/checkpoint/model.safetensors"))
    return {k: v.float() for fn in f for k, v in load_file(fn).items()}
a, b = weights("mg-r2"), weights("mg-r1")
common = [k for k in a if k in b and a[k].shape == b[k].shape]
num = sum(float((a[k] - b[k]).pow(2).sum()) for k in common); den = sum(float(a[k].pow(2).sum()) for k in common)
print(json.dumps({"tensors": len(common), "relative_l2_difference": (num / max(den, 1e-30)) ** 0.5}))
EOF

# ---- B: the shipped-size tokenizer candidate (latent_dim 32), continued with DDP on both GPUs
stamp waiting-for-checkpoints
for _ in $(seq 600); do [ -f $CKPTS/tok-c32/config.json ] && break; sleep 2; done
stamp tokenizer-c32
if grep -q '"ranks_in_sync": true' $R/mg-dyn$NG.log; then LAUNCH="$TR $NG -m driftless"; else LAUNCH="$DL"; fi
echo "part B launcher: $LAUNCH" >> $R/status.txt
$LAUNCH train tokenizer --data $D/train --val-data $D/val --out $W/tok-c32 --preset small --init-from $CKPTS/tok-c32 \
  --set latent_dim=32 --batch-size 192 --lr 3e-4 --warmup 100 --steps 10000000 \
  --time-budget $TB --log-every 100 --val-every 2000 --save-every 1000 > $R/train-tok-c32.log 2>&1
keep tok-c32
python3 tools/fp16_checkpoint.py $W/tok-c32/checkpoint $W/fp16/tok-c32 && tar cf $P/tok-c32.tar -C $W/fp16 tok-c32
stamp eval
$DL eval $W/tok-c32/checkpoint --data $D/test --skip rollout,drift,actions,fvd,controls --recon-clips 256 --no-progress --json $R/eval-tok-c32.json &
CUDA_VISIBLE_DEVICES=1 $DL eval $W/tok-c32/checkpoint --data $D/test --skip rollout,drift,actions,fvd,controls --recon-clips 24 --recon-len 256 --no-progress --json $R/long-tok-c32.json
wait
stamp done
