"""The dependency direction of DESIGN.md: agents -> core, agents -> envs, tools -> agents and envs;
never the other way. Checked on the source (every import statement, also inside functions), so an
import added anywhere in the core fails here, not in a user's environment."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: the tools (rlgeom/tools/) and the `python -m rlgeom.X` entry points that forward to them
TOOL_MODULES = ("rlgeom.tools", "rlgeom.train", "rlgeom.compare", "rlgeom.landscape")
#: the top-level names are the public face only (a user's own agents/ or envs/ may shadow them)
PUBLIC_FACES = ("agents", "envs")
FORBIDDEN_FOR_CORE = (*PUBLIC_FACES, "rlgeom.agents", "rlgeom.envs", *TOOL_MODULES)
#: rlgeom/agents and rlgeom/envs are the import names of the top-level folders, not part of the core
IMPORT_NAME_PACKAGES = ("agents", "envs")
ENTRY_POINTS = {"train.py", "compare.py", "landscape.py"}


def core_files() -> list[pathlib.Path]:
    package = ROOT / "rlgeom"
    return [p for p in package.rglob("*.py")
            if not {"tools", *IMPORT_NAME_PACKAGES} & set(p.relative_to(package).parts)
            and not (p.parent == package and p.name in ENTRY_POINTS)]


def imported_modules(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _violations(paths, forbidden):
    found = []
    for path in paths:
        for name in imported_modules(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


def test_the_core_imports_no_agent_env_or_tool():
    core = core_files()
    assert len(core) > 15 and any(p.parent.name == "geometry" for p in core)  # the check sees the real package
    assert _violations(core, FORBIDDEN_FOR_CORE) == []


def test_the_core_is_in_subpackages_by_role():
    package = ROOT / "rlgeom"
    loose = sorted(p.name for p in package.glob("*.py") if p.name not in ENTRY_POINTS | {"__init__.py", "validation.py", "public_names.py"})
    assert loose == []  # every module lives in geometry/, models/, data/, persistence/, training/ or tools/


def test_envs_import_no_agent_and_no_tool():
    assert _violations((ROOT / "envs").glob("*.py"), ("agents", "rlgeom.agents", *TOOL_MODULES)) == []


def test_training_does_not_import_the_geometry():
    """The layering's one former back-edge: the optimisers (training/) need flat parameter vectors, which
    live in rlgeom.models.parameters, not in the geometry that itself imports training.distributed."""
    training = list((ROOT / "rlgeom" / "training").glob("*.py"))
    assert any(p.name == "optim.py" for p in training)
    assert _violations(training, ("rlgeom.geometry",)) == []


def test_agents_import_no_tool():
    assert _violations((ROOT / "agents").glob("*.py"), TOOL_MODULES) == []


def test_no_rlgeom_code_imports_the_public_faces():
    """Inside the distribution only `rlgeom.agents` / `rlgeom.envs` are imported: the bare names resolve to
    whatever the user's working directory holds first."""
    faces = {ROOT / "agents" / "__init__.py", ROOT / "envs" / "__init__.py"}
    code = [p for folder in ("rlgeom", "agents", "envs") for p in (ROOT / folder).rglob("*.py") if p not in faces]
    assert len(code) > 60
    assert _violations(code, PUBLIC_FACES) == []


def test_the_check_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from agents.ppo import PPO\n    import envs\n")
    assert {"agents.ppo", "agents.ppo.PPO", "envs"} <= imported_modules(module)


def test_the_public_faces_are_the_same_modules_as_the_rlgeom_names():
    import agents
    import agents.ppo
    import envs
    import rlgeom.agents
    import rlgeom.envs
    from agents.ppo import PPO

    assert agents is rlgeom.agents and envs is rlgeom.envs
    assert agents.ppo is rlgeom.agents.ppo and PPO is rlgeom.agents.PPO  # one class, not a second copy


USER_PACKAGE_SMOKE = """
import numpy as np
from rlgeom.agents import PPO
from rlgeom.envs import make_vec_env
import envs, agents
assert envs.MINE == 'user envs' and agents.MINE == 'user agents'   # the user's own packages are untouched
model = PPO('MlpPolicy', make_vec_env('CartPole-v1', n_envs=1, seed=0), n_steps=64, batch_size=32, seed=0)
model.learn(64)
action, _ = model.predict(np.zeros(4, dtype=np.float32), deterministic=True)
print('ok', int(action), flush=True)
# then the CLI in the same process (one interpreter start, not two), run as `python -m rlgeom.train ...` runs it
import runpy, sys
sys.argv = ['rlgeom.train', *sys.argv[1:]]
runpy.run_module('rlgeom.train', run_name='__main__', alter_sys=True)
"""


def test_a_users_own_agents_and_envs_packages_break_nothing(tmp_path):
    """An RL project's own agents/ and envs/ folders in the working directory (issue 28, item 0), and the
    clone folder named rlgeom/ seen from its parent: rlgeom's imports, training and the CLI still work."""
    import os
    import subprocess
    import sys

    for name in ("agents", "envs"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"MINE = 'user {name}'\n")
    (tmp_path / "rlgeom").mkdir()  # a folder named like the package, without __init__.py (a clone's parent)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", USER_PACKAGE_SMOKE, "--algo", "ppo", "--timesteps", "256", "--logdir",
                          str(tmp_path / "runs"), "--hp", "n_steps=128", "batch_size=64"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-2000:]
    assert "ppo on CartPole-v1 (seed 0): eval return" in run.stdout  # the CLI's run, after the API's
