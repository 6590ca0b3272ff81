#!/usr/bin/env bash
# Issue 5, MuJoCo: the five rlgeom agents on Hopper, HalfCheetah and Walker2d (v5), three seeds each,
# into one TensorBoard log directory; then the comparison report. Needs gymnasium[mujoco].
#
#   BUDGET=1000000 WORKERS=15 DEVICE=cpu LOGDIR=runs/mujoco bash experiments/mujoco.sh
#
# Budgets are the presets' (agents/presets.py; 1e6 steps for these tasks) capped at BUDGET steps, so the
# default runs the full benchmark; lower BUDGET for a quick pass. Rerunning skips finished runs
# (done.json) and retries the rest. Exit status: the grid's (0 all runs succeeded, 1 some failed);
# the report is written either way.
set -u
cd "$(dirname "$0")/.."

BUDGET="${BUDGET:-1000000}"
WORKERS="${WORKERS:-$(nproc)}"
DEVICE="${DEVICE:-cpu}"
LOGDIR="${LOGDIR:-runs/mujoco}"
OUT="${OUT:-experiments/results/mujoco}"

python -m rlgeom.train \
    --algo trpo,ppo,acktr,npg,vpg \
    --env Hopper-v5,HalfCheetah-v5,Walker2d-v5 \
    --seeds 0,1,2 \
    --max-timesteps "$BUDGET" \
    --workers "$WORKERS" \
    --device "$DEVICE" \
    --logdir "$LOGDIR"
status=$?
[ "$status" -eq 2 ] && exit 2

python -m rlgeom.compare "$LOGDIR" --out "$OUT" || exit $?
exit "$status"
