"""The dependency direction of DESIGN.md: agents -> core, agents -> envs, tools -> agents and envs;
never the other way. Checked on the source (every import statement, also inside functions), so an
import added anywhere in the core fails here, not in a user's environment."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: the tools (rlgeom/tools/) and the `python -m rlgeom.X` entry points that forward to them
TOOL_MODULES = ("rlgeom.tools", "rlgeom.train", "rlgeom.compare", "rlgeom.landscape")
FORBIDDEN_FOR_CORE = ("agents", "envs", *TOOL_MODULES)
ENTRY_POINTS = {"train.py", "compare.py", "landscape.py"}


def core_files() -> list[pathlib.Path]:
    package = ROOT / "rlgeom"
    return [p for p in package.rglob("*.py")
            if "tools" not in p.relative_to(package).parts and not (p.parent == package and p.name in ENTRY_POINTS)]


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
    loose = sorted(p.name for p in package.glob("*.py") if p.name not in ENTRY_POINTS | {"__init__.py", "validation.py"})
    assert loose == []  # every module lives in geometry/, models/, data/, persistence/, training/ or tools/


def test_envs_import_no_agent_and_no_tool():
    assert _violations((ROOT / "envs").glob("*.py"), ("agents", *TOOL_MODULES)) == []


def test_training_does_not_import_the_geometry():
    """The layering's one former back-edge: the optimisers (training/) need flat parameter vectors, which
    live in rlgeom.models.parameters, not in the geometry that itself imports training.distributed."""
    training = list((ROOT / "rlgeom" / "training").glob("*.py"))
    assert any(p.name == "optim.py" for p in training)
    assert _violations(training, ("rlgeom.geometry",)) == []


def test_agents_import_no_tool():
    assert _violations((ROOT / "agents").glob("*.py"), TOOL_MODULES) == []


def test_the_check_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from agents.ppo import PPO\n    import envs\n")
    assert {"agents.ppo", "agents.ppo.PPO", "envs"} <= imported_modules(module)
