# The checks of the controls plans (cfg1.sh, lam2.sh, lam3.sh, dyn2.sh), sourced from the repo root with DL (the
# driftless command), D (the data folder with val/ and test/), R (results), S (the shipped world), N
# (controls states) and a `stamp` function set. On the test split: controls on N states (seed 2) and the
# held-action clips (GenieRedux protocol, Δ4); on validation: 64 rollouts x 1000 frames (seed 7, scored
# against the one-level episodes of 1,100 frames) for same-level.
V="--skip recon,rollout,actions,controls,fvd --drift-rollouts 64 --drift-frames 1000 --batch-size 64 --seed 7 --no-progress"
T="--skip recon,drift,actions,controls,fvd --clips 256 --batch-size 128 --no-progress"
C="--skip recon,rollout,actions,drift,fvd --controls-starts $N --seed 2 --no-progress"

one_check() {  # one_check KIND WORLD [NAME [GPU]]: KIND ctl (controls) | test (clips) | val (1000 frames) -> $R/KIND[-NAME].json, unless there already
  local k=$1 w=$2 x=${3:+-$3} g=${4:+CUDA_VISIBLE_DEVICES=$4} data=$D/test flags=$T label=test
  [ -s $R/$k$x.json ] && return 0
  case $k in ctl) flags=$C; label=controls ;; val) data=$D/val; flags=$V; label=val ;; esac
  env $g $DL eval $w --data $data $flags --json $R/$k$x.json > $R/$k$x.log 2>&1
  stamp "$label$x"
}

check_world() {  # check_world WORLD [NAME [GPU]]: controls beside (test clips, then validation); $R/ctl[-NAME].json ...
  (one_check ctl "$@") &
  (one_check test "$@"; one_check val "$@") &
  wait
}

refit_world() {  # refit_world WORLD [NAME]: keys refitted by effect on REFIT (default 64) validation states; $R/world[-NAME].json
  local x=${2:+-$2}
  $DL world refit-actions $1 --game coinrun --action-starts ${REFIT:-64} --eval-starts 0 --seed 0 --no-progress \
    > $R/refit$x.log 2>&1
  cp $1/world.json $R/world$x.json
}

finish_run() {  # finish_run RUN [NAME]: its world with the shipped sampling, keys refitted, packed as $P/world[-NAME].tar
  local x=${2:+-$2}
  $DL world sampling $1/world --from $S > $R/sampling$x.log 2>&1
  refit_world $1/world $2
  tar cf $P/world$x.tar -C $1 world
  stamp "trained$x"
}
