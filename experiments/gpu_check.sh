#!/usr/bin/env bash
# Issue 27's GPU check in one command, from the project root on a GPU machine that has only torch (and
# pytest, pytest-xdist, pytest-timeout) installed; ../shared/gpu/README.md says how to bring the rest as
# wheels in .whl/ (installed here with --target, no network, no editable install):
#
#     OUT=gpu-out experiments/gpu_check.sh                 # the GPU run, under 8 minutes on an H200
#     OUT=/tmp/dry experiments/gpu_check.sh --device cpu --quick   # a dry run of every part on a CPU
#
# It runs, each under its own timeout: the suite with its agents on cuda (RLGEOM_TEST_DEVICE), bench_gpu's
# three sections (and PPO/TRPO throughput at 65,536 envs), the 8-env table of rlgeom (plain, and compiled:
# compile="auto", i.e. reduce-overhead, CUDA graphs) and SB3 / sb3-contrib on cuda and on the CPU
# (experiments/gpu_table.py), the compiled path beside the plain one at 64 envs (experiments/bench_compile.py:
# CartPole-v1 and Hopper-v5, PPO and TRPO, compile time apart) and compiled PPO/TRPO throughput on
# torch/CartPole-v1 at 4096 envs. Everything it measures ends up in $OUT/gpu_check.json (the logs beside it).
# Each part writes its JSON as it goes, so a part cut short by its timeout keeps what it measured.
set -u
DEVICE=cuda QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    *) echo "usage: $0 [--device cuda|cpu] [--quick]" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  SITE=${SITE:-/tmp/site}
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=$SITE:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
unset MUJOCO_GL  # nothing renders; a MUJOCO_GL naming a missing backend breaks `import mujoco`
export PYTHONUNBUFFERED=1
S=$(date +%s)
stamp() { echo "== $1 at $(( $(date +%s) - S ))s"; }
if [ "$DEVICE" != cpu ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/smi.txt" 2>&1
fi

stamp "pytest on $DEVICE"
if [ $QUICK = 1 ]; then
  RLGEOM_TEST_DEVICE=$DEVICE timeout 300 $PY -m pytest -q -p no:cacheprovider -rfEs tests/test_devices.py > "$OUT/pytest.log" 2>&1
else
  RLGEOM_TEST_DEVICE=$DEVICE timeout 150 $PY -m pytest -q -p no:cacheprovider -n 14 --timeout 120 -rfE tests \
    --ignore=tests/test_compare.py --ignore=tests/test_ray_grid.py > "$OUT/pytest.log" 2>&1
fi
echo "pytest exit $?" | tee "$OUT/pytest.exit"; tail -3 "$OUT/pytest.log"

stamp "bench_gpu"
if [ $QUICK = 1 ]; then
  BENCH=(--n-envs 256 --budget-s 3 --eval-every 2 --throughput-updates 10 --gym-steps 1024) BIG=256 TORCH_ENVS=256
  # the CPU dry run: dynamo's graphs run eagerly (inductor's C++ build takes minutes on a small CPU)
  COMPILE='{"mode": "default", "backend": "eager"}' COMPILED=(--backend eager --tasks CartPole-v1)
else
  BENCH=(--budget-s 30 --gym-steps 8192) BIG=65536 TORCH_ENVS=4096
  COMPILE=auto COMPILED=()
fi
timeout 95 $PY experiments/bench_gpu.py --device "$DEVICE" "${BENCH[@]}" --out "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.log" | tail -12
timeout 30 $PY experiments/bench_gpu.py --device "$DEVICE" --n-envs $BIG --sections throughput --algos ppo trpo \
  --throughput-updates 10 --out "$OUT/bench_gpu_$BIG.json" 2>&1 | tail -3

stamp "8-env table (rlgeom plain and compiled, SB3)"
timeout 100 $PY experiments/gpu_table.py --device "$DEVICE" --steps 8192 --compile "$COMPILE" \
  $([ $QUICK = 1 ] && echo --quick) --out "$OUT/table.json" 2>&1 | tee "$OUT/table.log" | tail -6

stamp "compiled beside plain at 64 envs"
timeout 70 $PY experiments/bench_compile.py --device "$DEVICE" --n-envs 64 --repeats 1 --chunk 1 ${COMPILED[@]+"${COMPILED[@]}"} \
  --out "$OUT/compiled_64.json" 2>&1 | tee "$OUT/compiled_64.log" | grep -v ": first" | tail -4
stamp "compiled on torch/CartPole-v1 at $TORCH_ENVS envs"
timeout 35 $PY experiments/bench_gpu.py --device "$DEVICE" --n-envs $TORCH_ENVS --sections throughput --algos ppo trpo \
  --throughput-updates 10 --compile "$COMPILE" --out "$OUT/compiled_$TORCH_ENVS.json" 2>&1 | tail -3

stamp "end"
ELAPSED=$(( $(date +%s) - S )) $PY - "$OUT" "$DEVICE" "$QUICK" <<'EOF'
"""Gather what the check wrote into one JSON."""
import json, os, re, sys
from pathlib import Path

out, device, quick = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
def load(name):
    path = out / name
    return json.loads(path.read_text()) if path.is_file() else None
log = (out / "pytest.log").read_text() if (out / "pytest.log").is_file() else ""
summary = [line for line in log.splitlines() if re.search(r"\d+ (passed|failed|error|skipped)", line)]
record = {
    "device": device, "quick": quick, "seconds": int(os.environ["ELAPSED"]),
    "gpu": (out / "smi.txt").read_text().strip() if (out / "smi.txt").is_file() else None,
    "pytest": {"exit": (out / "pytest.exit").read_text().split()[-1] if (out / "pytest.exit").is_file() else None,
               "summary": summary[-1] if summary else None,
               "failures": [l for l in log.splitlines() if l.startswith(("FAILED", "ERROR"))]},
    "bench_gpu": load("bench_gpu.json"),
    "bench_gpu_many_envs": load(next((p.name for p in out.glob("bench_gpu_*.json")), "none.json")),
    "table": load("table.json"),
    "compiled_64_envs": load("compiled_64.json"),
    "compiled_torch_cartpole": load(next((p.name for p in out.glob("compiled_[0-9]*.json") if p.name != "compiled_64.json"),
                                         "none.json")),
}
(out / "gpu_check.json").write_text(json.dumps(record, indent=1))
print(f"wrote {out / 'gpu_check.json'}: pytest {record['pytest']['summary']}, "
      f"table rows {len((record['table'] or {}).get('rows', []))}, "
      f"compiled rows at 64 envs {len((record['compiled_64_envs'] or {}).get('rows', []))}, "
      f"compiled throughput rows {len((record['compiled_torch_cartpole'] or {}).get('throughput', []))}")
EOF
