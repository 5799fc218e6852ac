# The checks of the controls plans (cfg1.sh, lam2.sh, lam3.sh, dyn2.sh), sourced from the repo root with DL (the
# driftless command), D (the data folder with val/ and test/), R (results), S (the shipped world), N
# (controls states) and a `stamp` function set. On the test split: controls on N states (seed 2) and the
# held-action clips (GenieRedux protocol, Δ4); on validation: 64 rollouts x 1000 frames (seed 7, scored
# against the one-level episodes of 1,100 frames) for same-level.
V="--skip recon,rollout,actions,controls,fvd --drift-rollouts 64 --drift-frames 1000 --batch-size 64 --seed 7 --no-progress"
T="--skip recon,drift,actions,controls,fvd --clips 256 --batch-size 128 --no-progress"
C="--skip recon,rollout,actions,drift,fvd --controls-starts $N --seed 2 --no-progress"

check_world() {  # check_world WORLD [NAME [GPU]]: controls beside (test clips, then validation); $R/ctl[-NAME].json ...
  local w=$1 x=${2:+-$2} g=${3:+CUDA_VISIBLE_DEVICES=$3}
  (env $g $DL eval $w --data $D/test $C --json $R/ctl$x.json > $R/ctl$x.log 2>&1; stamp "controls$x") &
  (env $g $DL eval $w --data $D/test $T --json $R/test$x.json > $R/test$x.log 2>&1; stamp "test$x"
   env $g $DL eval $w --data $D/val $V --json $R/val$x.json > $R/val$x.log 2>&1; stamp "val$x") &
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
