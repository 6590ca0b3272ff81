"""`python -m rlgeom.train --help-hp`: the values a run will use and where each came from.

The order a run applies them: the agent's default (its Config dataclass, or the SB3 class's constructor),
then the task's preset (agents.presets, with its source), then --hp. The run settings the preset also
holds (n_envs, timesteps, policy_kwargs) are shown the same way, with their command-line flags.
"""

from __future__ import annotations

import importlib
import inspect
import json


def resolved_hyperparameters(algo: str, env_id: str, overrides: dict,
                             n_envs: int | None = None) -> tuple[list[tuple[str, object, str, str]], dict]:
    """([(name, value, origin, help)], preset) for one agent on one task; ValueError for an unknown --hp name."""
    from rlgeom.tools.benchmark import algo_preset, accepted_hyperparameters

    preset = algo_preset(algo, env_id, n_envs=n_envs, overrides=overrides)
    fields = _fields(algo)
    unknown = sorted(set(overrides) - accepted_hyperparameters(algo))
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {', '.join(unknown)} for {algo}; accepted: "
                         f"{', '.join(sorted(accepted_hyperparameters(algo)))}")
    rows = []
    for name in sorted(set(fields) | set(preset["hyperparameters"]) | set(overrides)):
        default, help_text = fields.get(name, (None, ""))
        if name in overrides:
            rows.append((name, overrides[name], "--hp", help_text))
        elif name in preset["hyperparameters"]:
            rows.append((name, preset["hyperparameters"][name], "preset", help_text))
        else:
            rows.append((name, default, "default", help_text))
    return rows, preset


def run_settings(preset: dict, args) -> list[tuple[str, object, str, str]]:
    """n_envs, timesteps, policy and policy_kwargs: the preset's unless a flag overrides them."""
    source = "preset"
    policy_kwargs = dict(preset["policy_kwargs"])
    given = json.loads(args.policy_kwargs) if args.policy_kwargs else {}
    return [
        ("n_envs", args.n_envs or preset["n_envs"], "--n-envs" if args.n_envs else source, "parallel envs"),
        ("timesteps", args.timesteps or preset["timesteps"], "--timesteps" if args.timesteps else source,
         "environment steps"),
        ("policy", preset["policy"], source, "policy class name"),
        ("policy_kwargs", {**policy_kwargs, **given}, "--policy-kwargs" if given else (source if policy_kwargs else "default"),
         "network options"),
    ]


def format_help(algo: str, env_id: str, overrides: dict, args) -> str:
    rows, preset = resolved_hyperparameters(algo, env_id, overrides, n_envs=args.n_envs)
    settings = run_settings(preset, args)
    every = rows + settings
    width = max(len(name) for name, *_ in every)
    value_width = max(len(_show(value)) for _, value, *_ in every)
    origin_width = max(len(origin) for _, _, origin, _ in every)
    lines = [f"{algo} on {env_id}: the values this run uses (default < preset < command line)",
             f"preset: {preset['source']}", ""]
    for title, block in (("run settings", settings), ("hyperparameters", rows)):
        lines.append(f"{title}:")
        lines += [f"  {name:{width}s}  {_show(value):>{value_width}}  {origin:<{origin_width}}  {help_text}".rstrip()
                  for name, value, origin, help_text in block]
        lines.append("")
    return "\n".join(lines).rstrip()


def _fields(algo: str) -> dict[str, tuple[object, str]]:
    """{name: (default, documentation)}: rlgeom's Config fields, or the SB3 constructor's arguments."""
    from rlgeom.tools.benchmark import SB3_ALGOS, SB3_HYPERPARAMETERS

    if algo not in SB3_ALGOS:
        from rlgeom.tools.train import agent_class

        return agent_class(algo).Config.field_help()
    module, cls_name, _ = SB3_ALGOS[algo]
    try:
        cls = getattr(importlib.import_module(module), cls_name)
    except ImportError as err:
        raise ValueError(f"{algo} needs {module} (pip install 'rlgeom[baselines]'): {err}") from None
    parameters = inspect.signature(cls.__init__).parameters
    return {name: (parameters[name].default if name in parameters else None, f"{cls_name}'s argument (SB3 docs)")
            for name in SB3_HYPERPARAMETERS[algo]}


def _config_class(algo: str):
    """rlgeom's Config dataclass for `algo` (its --hp values are checked against its field types); None for SB3's."""
    from rlgeom.tools.benchmark import SB3_ALGOS

    if algo in SB3_ALGOS:
        return None
    from rlgeom.tools.train import agent_class

    return agent_class(algo).Config


def _show(value) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else repr(value)


def print_help(args) -> None:
    """--help-hp: one table per agent and task the command names (comma-separated lists allowed)."""
    from rlgeom.agents.presets import DEFAULT_ENV
    from rlgeom.tools.benchmark import check_algos, import_gym_packages, split_list
    from rlgeom.tools.train import parse_overrides

    import_gym_packages(args.gym_packages)
    algos = split_list(args.algo, "--algo")
    check_algos(algos)
    tables = [format_help(algo, env_id, parse_overrides(args.hp, _config_class(algo)), args)
              for algo in algos for env_id in split_list(args.env or DEFAULT_ENV, "--env")]
    print("\n\n".join(tables))
