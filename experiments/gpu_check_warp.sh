#!/usr/bin/env bash
# Issue 31's GPU figures for warp/Hopper-v5 (MuJoCo Warp) on one GPU, as JSON under $OUT (default ./gpu-out-warp):
#   agents.json  end-to-end steps/s (env + agent, learn()) of PPO, TRPO, ACKTR at 4096 and 65,536 worlds;
#   solve.json   wall time to a deterministic evaluation >= 3000 with PPO and TRPO (4096 worlds, warp/ presets).
# Run from the project root. A machine with only torch preinstalled needs these wheels in .whl/ (for its Python,
# as ../shared/gpu/README.md describes; the versions go together: mujoco-warp 3.15 simulates mujoco 3.15):
#   gymnasium==1.4.0 farama-notifications==0.0.6 stable-baselines3==2.9.2 mujoco==3.15.0 glfw pyopengl
#   warp-lang==1.19.0 mujoco-warp==3.15.0 absl-py etils tbparse==0.0.9
# Warp compiles its CUDA kernels on the first run (cached in ~/.cache/warp, or $WARP_CACHE_PATH). Budget: about
# 2 min of compiling, 2 min for agents, SOLVE_BUDGET_S (default 240) of training per algorithm for solve.
OUT=${OUT:-$PWD/gpu-out-warp}; mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
unset MUJOCO_GL; export PYTHONUNBUFFERED=1
S=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/smi.txt" 2>&1
echo "== agents (end-to-end steps/s)"
timeout 300 python3 experiments/bench_warp.py agents --device cuda --worlds 4096 65536 --algos ppo trpo acktr \
  --updates 10 --out "$OUT/agents.json" 2>&1 | grep -v "^Module" | tee "$OUT/agents.log" | tail -8
echo "== solve (eval >= 3000) $(( $(date +%s)-S ))s"
B=${SOLVE_BUDGET_S:-240}
timeout $(( 2 * B + 120 )) python3 experiments/bench_warp.py solve --device cuda --algos ppo trpo --solve-worlds 4096 \
  --budget-s "$B" --eval-every 10 --out "$OUT/solve.json" 2>&1 | grep -v "^Module" | tee "$OUT/solve.log" | tail -8
echo "== end $(( $(date +%s)-S ))s"
