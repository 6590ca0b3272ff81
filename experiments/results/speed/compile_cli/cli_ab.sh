#!/bin/bash
# the default CLI run (PPO on CartPole-v1, the rl-zoo preset: 100k steps, 8 envs), plain and --compile default,
# alternated twice, each compiled run with an empty inductor cache (the cold compile a first-time user pays)
cd "$(dirname "$0")/../../../.."  # the repository root
export PYTHONPATH=$PWD
for rep in 1 2; do
  for mode in off default; do
    dir=/tmp/cli_ab/$mode$rep; rm -rf $dir; mkdir -p $dir
    export TORCHINDUCTOR_CACHE_DIR=$dir/inductor
    start=$(date +%s.%N)
    nice -n 10 python -m rlgeom.train --algo ppo --compile $mode --no-progress --logdir $dir/runs > $dir/out.txt 2>&1
    end=$(date +%s.%N)
    echo "$mode rep$rep process_s $(echo "$end - $start" | bc) $(tail -1 $dir/out.txt)"
  done
done
