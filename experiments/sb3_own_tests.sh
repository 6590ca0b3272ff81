#!/bin/bash
# SB3's own test suite with rlgeom's PPO swapped in (issue 28's measure): the tests shipped in the sdist of the
# installed stable-baselines3 (fetched with pip, not committed here), the selection `-k PPO`, run once with SB3's
# PPO and once with `stable_baselines3.PPO = agents.PPO` (a conftest.py written beside the tests). Each test file
# runs in its own pytest process (no state carried from one file to the next), under pytest-timeout, with a JUnit
# XML per file; experiments/sb3_own_tests_table.py turns them into the per-test table.
# usage: experiments/sb3_own_tests.sh [workdir] [sides]   (from the repository root; default sides: "sb3 rlgeom")
# results: <workdir>/res/<side>.<file>.{log,xml} and <workdir>/res/<side>.summary
set -euo pipefail
REPO=$(pwd)
WORK=${1:-/tmp/sb3_own_tests}
SIDES=${2:-sb3 rlgeom}
VERSION=$(python -c "import stable_baselines3; print(stable_baselines3.__version__)")
export PIP_CONSTRAINT=${PIP_CONSTRAINT:-$REPO/.ci/constraints.txt}
python -c "import pytest_timeout" 2>/dev/null || python -m pip install pytest-timeout
mkdir -p "$WORK/res" && cd "$WORK"
if [ ! -d "stable_baselines3-$VERSION/tests" ]; then
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
FILES=$(python -m pytest --collect-only -q -k PPO tests/ -p no:cacheprovider 2>/dev/null | grep '::' | cut -d: -f1 | sort -u)
for side in $SIDES; do
    swap=""; [ "$side" = rlgeom ] && swap=1
    rm -f "$WORK/res/$side.summary"
    for f in $FILES; do
        b=$(basename "$f" .py)
        rc=0
        SWAP_RLGEOM=$swap PYTHONPATH="$REPO" timeout 900 nice -n 5 python -m pytest -q -k PPO "$f" -p no:cacheprovider \
            -p no:randomly -rA --tb=short --timeout 300 --junitxml="$WORK/res/$side.$b.xml" \
            > "$WORK/res/$side.$b.log" 2>&1 || rc=$?
        echo "$b rc=$rc $(tail -1 "$WORK/res/$side.$b.log")" >> "$WORK/res/$side.summary"
    done
    echo "$side:"; cat "$WORK/res/$side.summary"
done
python "$REPO/experiments/sb3_own_tests_table.py" "$WORK/res"
