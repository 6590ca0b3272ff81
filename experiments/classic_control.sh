#!/usr/bin/env bash
# Issue 5, classic control: all five rlgeom agents and three SB3 baselines (RL-Zoo hyperparameters)
# on four tasks, three seeds each, into one TensorBoard log directory; then the comparison report.
#
#   BUDGET=100000 WORKERS=8 DEVICE=cpu LOGDIR=runs/classic_control bash experiments/classic_control.sh
#
# Budgets are the presets' (agents/presets.py, rlgeom/benchmark.py A2C_PRESETS) capped at BUDGET steps.
# Rerunning skips finished runs (done.json) and retries the rest. Exit status: the grid's
# (0 all runs succeeded, 1 some failed); the report is written either way.
set -u
cd "$(dirname "$0")/.."

BUDGET="${BUDGET:-100000}"
WORKERS="${WORKERS:-$(nproc)}"
DEVICE="${DEVICE:-cpu}"
LOGDIR="${LOGDIR:-runs/classic_control}"
OUT="${OUT:-experiments/results/classic_control}"

python -m rlgeom.train \
    --algo vpg,npg,trpo,ppo,acktr,sb3:ppo,sb3:a2c,sb3contrib:trpo \
    --env CartPole-v1,Acrobot-v1,Pendulum-v1,MountainCarContinuous-v0 \
    --seeds 0,1,2 \
    --max-timesteps "$BUDGET" \
    --workers "$WORKERS" \
    --device "$DEVICE" \
    --logdir "$LOGDIR"
status=$?
[ "$status" -eq 2 ] && exit 2

python -m rlgeom.compare "$LOGDIR" --out "$OUT" || exit $?
exit "$status"
