# issue 20, fourth GPU session: gentler continuations, a wider model for the large maze, and the
# parents scored beside them. Stop 31 (docs/benchmarks.md section 8) found that ten more minutes at
# the full learning rate made the medium planner worse on validation while its loss stayed, that
# uniform loss weighting helped on the large maze (44.4 with MCTG on the evaluation episodes), and
# that the large maze's model is the least exact (position error 0.15-0.24 against 0.03 on U-maze)
# with the same 1.3M-parameter network for every maze (the official configuration doubles its
# network for large). Per maze, side by side: the parent itself (`keep`, runs/s31/best/<maze>-df:
# stop 30's U-maze and medium models, stop 31's large one), the parent continued at a quarter of the
# learning rate, and on the large maze a network of width 256 (5.0M parameters) with uniform
# weighting from scratch; each tuned on validation (seed 1, 50 episodes), confirmed on a second
# validation set (seed 2, 100 episodes at its chosen scale), the best by both evaluated once (seed 0).
# Calls (chain them; a machine stays warm 30 s after a call):
#   1. kind nvidia-h200-x2, carry [".whl-maze", "runs/s31/best"]:
#      `DRIFTLESS_GIT_COMMIT=<HEAD> bash tools/gpu_job.sh start tools/plans/maze4.sh 540`
#   2. and 3. `bash tools/gpu_job.sh wait 540` until `plan: finished`; give_back.
# Brings back maze-models-<maze>.tgz (the trained variants, fp16, with planner.json), maze-plots.tgz,
# results.tar.gz (train / show / tune / confirm / eval JSON and logs, choice.txt).
# Timeline on 2 GPUs: data ~1.5 min, training MIN (11), show ~1, tuning ~6, confirming ~3, evaluation ~2.
# Knobs: maze2.sh's.
INIT=${INIT:-runs/s31/best}; MIN=${MIN:-11}; CONFIRM_EPIS=${CONFIRM_EPIS:-100}
LOW=--lr,7.5e-5; UNI=--set,diffusion.weighting=uniform
VARIANTS_umaze=${VARIANTS_umaze:-parent:keep:: lowlr:small:init:$LOW}
VARIANTS_medium=${VARIANTS_medium:-parent:keep:: lowlr:small:init:$LOW uni-lowlr:small:init:$LOW,$UNI}
VARIANTS_large=${VARIANTS_large:-parent:keep:: lowlr:small:init:$LOW,$UNI wide:small::--set,width=256,$UNI}
SCALES_umaze=${SCALES_umaze:-6 12 24 48}; SCALES_medium=${SCALES_medium:-0.375 0.75 1.5 3}
SCALES_large=${SCALES_large:-0.1875 0.375 0.75 1.5}
source tools/plans/maze2.sh
