#!/bin/bash
# SB3's own test suite with rlgeom's PPO swapped in (issue 28's measure): the tests shipped in the sdist of the
# installed stable-baselines3 (fetched with pip, not committed here), the selection `-k PPO`, run once with SB3's
# PPO and once with `stable_baselines3.PPO = agents.PPO` (a conftest.py written beside the tests).
# usage: experiments/sb3_own_tests.sh [workdir]   (from the repository root; results: <workdir>/{sb3,rlgeom}.log)
set -euo pipefail
REPO=$(pwd)
WORK=${1:-/tmp/sb3_own_tests}
VERSION=$(python -c "import stable_baselines3; print(stable_baselines3.__version__)")
mkdir -p "$WORK" && cd "$WORK"
if [ ! -d "stable_baselines3-$VERSION/tests" ]; then
    export PIP_CONSTRAINT=${PIP_CONSTRAINT:-$REPO/.ci/constraints.txt}
    python -m pip download "stable-baselines3==$VERSION" --no-binary :all: --no-deps --no-build-isolation -d . \
        || true  # pip may fail after unpacking while preparing metadata; the archive is what is needed
    tar xzf "stable_baselines3-$VERSION.tar.gz" "stable_baselines3-$VERSION/tests"
fi
cd "stable_baselines3-$VERSION"
cat > tests/conftest.py <<'PY'
import os

if os.environ.get("SWAP_RLGEOM"):
    import stable_baselines3

    import agents

    stable_baselines3.PPO = agents.PPO
PY
for side in sb3 rlgeom; do
    swap=""; [ "$side" = rlgeom ] && swap=1
    SWAP_RLGEOM=$swap PYTHONPATH="$REPO" timeout 3000 python -m pytest -q -k PPO tests/ -p no:cacheprovider -rfE \
        --tb=line > "$WORK/$side.log" 2>&1 || true
    echo "$side: $(tail -1 "$WORK/$side.log")"
done
