"""The grid runner: every (agent, task, seed) of a benchmark in parallel worker processes.

    python -m rlgeom.train --algo vpg,npg,trpo,ppo,acktr[,sb3:ppo,sb3:a2c,sb3contrib:trpo]
                           --env CartPole-v1,Pendulum-v1 --seeds 0,1,2 [--workers W]
                           [--timesteps N | --max-timesteps N] [--logdir DIR] [--hp KEY=VALUE ...]

All runs write into one TensorBoard log directory, laid out as <logdir>/<task>/<agent>/seed<k> (the
layout of a single `rlgeom.tools.train` run; an SB3 baseline's agent is named sb3-ppo, sb3-a2c or
sb3contrib-trpo), so TensorBoard's run selector groups by task and agent and
`python -m rlgeom.compare <logdir>` reports the whole grid.

A run that finishes writes `done.json` (its summary) into its run directory, atomically, as its last
act. Rerunning the same command skips those runs. A run directory without `done.json` is continued from
its newest checkpoint when the run was interrupted (killed, Ctrl-C; not failed with an error.log), has a
checkpoint (a grid run with --checkpoint-every N) short of the budget, and was started with exactly this
command's task, seed, envs, policy and hyperparameters; otherwise (a failed run too) it is moved aside to
`<dir>.incomplete-<timestamp>` (nothing is deleted) and run again. Each start of a run (the first and every
continuation) appends its commit and the checkpoint it continued from to `parts.json`, which done.json repeats,
so a run that spans several sessions names every commit it ran on.
The grid holds a run directory's lock (rlgeom.persistence.outputs) while it sets it aside, and its worker holds
it while the run trains: a run directory that another process (a second grid on the same --logdir, a single
run) is writing is never moved; that run is reported as in use and not started. Ctrl-C (to the process group
or to the grid's process alone) starts nothing new, interrupts the running runs within seconds and exits 130;
each unfinished run is run again by the next invocation of the same command.
A failing run is reported with its error and the path of the log holding its traceback
(`<run dir>/error.log`); it does not stop the others. Exit status: 0 if every run succeeded, 1 if
any failed, 2 for bad input (reported before anything runs).

Each run gets a fresh worker process (spawn start method, `torch.set_num_threads(1)`), so runs do
not share global state; `--workers` of them run at once (default: min(runs, CPU cores)).
SB3 and sb3-contrib are imported only inside the workers of SB3 runs.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import importlib.util
import inspect
import json
import math
import multiprocessing
import os
import socket
import subprocess
import sys
import time
import traceback

DONE_FILE = "done.json"
PARTS_FILE = "parts.json"
ERROR_LOG = "error.log"
INCOMPLETE_MARK = ".incomplete-"

#: SB3 baselines the grid accepts: name -> (module, class, preset key)
SB3_ALGOS = {
    "sb3:ppo": ("stable_baselines3", "PPO", "ppo"),
    "sb3:a2c": ("stable_baselines3", "A2C", "a2c"),
    "sb3contrib:trpo": ("sb3_contrib", "TRPO", "trpo"),
}

#: SB3's A2C logs about every this many environment steps (its iterations are only n_steps * n_envs long)
SB3_LOG_EVERY_STEPS = 2048
_SB3_COMMON = ("learning_rate", "n_steps", "gamma", "gae_lambda", "normalize_advantage", "use_sde", "sde_sample_freq",
               "stats_window_size")
#: the hyperparameters (constructor arguments) of each SB3 baseline, as SB3 2.x documents them: the parent
#: routes --hp with these without importing SB3; the worker checks them against the real constructor
SB3_HYPERPARAMETERS = {
    "sb3:ppo": frozenset(_SB3_COMMON + ("batch_size", "n_epochs", "clip_range", "clip_range_vf", "ent_coef",
                                        "vf_coef", "max_grad_norm", "target_kl")),
    "sb3:a2c": frozenset(_SB3_COMMON + ("ent_coef", "vf_coef", "max_grad_norm", "rms_prop_eps", "use_rms_prop")),
    "sb3contrib:trpo": frozenset(_SB3_COMMON + ("batch_size", "cg_max_steps", "cg_damping", "line_search_max_iter",
                                                "line_search_shrinking_factor", "n_critic_updates",
                                                "sub_sampling_factor", "target_kl")),
}
#: rlgeom hyperparameter names that SB3 spells differently, per SB3 baseline
SB3_RENAMES = {"sb3contrib:trpo": {"max_kl": "target_kl"}}

_ZOO_A2C_SDE = {"use_sde": True}
_ZOO = "rl-zoo a2c.yml"
#: A2C has no rlgeom counterpart, so its presets live here: rl-baselines3-zoo's hyperparams/a2c.yml
#: (`normalize: true` written as normalize_observations + normalize_reward, `lin_x` as a linear schedule)
A2C_PRESETS: dict[str, dict] = {
    "default": {"n_envs": 1, "timesteps": 1_000_000, "policy": "MlpPolicy", "policy_kwargs": {},
                "hyperparameters": {}, "source": "SB3 A2C defaults"},
    "CartPole-v1": {"n_envs": 8, "timesteps": 500_000, "policy": "MlpPolicy", "policy_kwargs": {},
                    "hyperparameters": {"ent_coef": 0.0}, "source": f"{_ZOO} CartPole-v1"},
    "Acrobot-v1": {"n_envs": 16, "timesteps": 500_000, "policy": "MlpPolicy", "policy_kwargs": {},
                   "hyperparameters": {"normalize_observations": True, "normalize_reward": True, "ent_coef": 0.0},
                   "source": f"{_ZOO} Acrobot-v1"},
    "Pendulum-v1": {"n_envs": 8, "timesteps": 1_000_000, "policy": "MlpPolicy",
                    "policy_kwargs": {"log_std_init": -2.0, "ortho_init": False},
                    "hyperparameters": {
                        "normalize_observations": True, "normalize_reward": True, "ent_coef": 0.0,
                        "max_grad_norm": 0.5, "n_steps": 8, "gae_lambda": 0.9, "vf_coef": 0.4, "gamma": 0.9,
                        "use_rms_prop": True, "normalize_advantage": False,
                        "learning_rate": {"kind": "linear", "start": 7e-4, "end": 0.0}, **_ZOO_A2C_SDE},
                    "source": f"{_ZOO} Pendulum-v1 (tuned, with gSDE)"},
    "MountainCarContinuous-v0": {"n_envs": 4, "timesteps": 100_000, "policy": "MlpPolicy",
                                 "policy_kwargs": {"log_std_init": 0.0, "ortho_init": False},
                                 "hyperparameters": {
                                     "normalize_observations": True, "normalize_reward": True, "n_steps": 100,
                                     "ent_coef": 0.0, "sde_sample_freq": 16, **_ZOO_A2C_SDE},
                                 "source": f"{_ZOO} MountainCarContinuous-v0 (tuned, with gSDE)"},
    "mujoco": {"n_envs": 1, "timesteps": 1_000_000, "policy": "MlpPolicy", "policy_kwargs": {},
               "hyperparameters": {"normalize_observations": True, "normalize_reward": True},
               "source": f"{_ZOO} mujoco defaults (HalfCheetah/Hopper/Walker2d/Ant-v3: normalize, SB3 A2C defaults)"},
}

#: run summary columns: header, record key, format
TABLE_COLUMNS = (
    ("agent", "algo", "{}"), ("task", "env", "{}"), ("seed", "seed", "{}"), ("status", "status", "{}"),
    ("eval return", "eval_return", "{:.1f}"), ("steps", "timesteps", "{:d}"), ("wall s", "wall_s", "{:.1f}"),
    ("FPS", "fps", "{:.0f}"),
)


#: rlgeom.tools.train options passed on to every rlgeom run of a grid (SB3 runs ignore them)
GRID_FORWARDS = ("--checkpoint-every", "--nonfinite", "--max-consecutive-skips", "--geometry-every", "--compile")
#: rlgeom.tools.train options that name one run's files, refused in a grid
GRID_REJECTS = ("--resume", "--checkpoint-dir")


class GridUsageError(ValueError):
    """Bad grid input: printed without a traceback, exit status 2, before any run starts."""


# ---------------------------------------------------------------- the command line


def is_grid(args) -> bool:
    """True when the command asks for more than one plain rlgeom run (or a grid-only option)."""
    return (
        "," in args.algo or ":" in args.algo or "," in (args.env or "")
        or args.seeds is not None or args.workers is not None or args.max_timesteps is not None
        or getattr(args, "launcher", "local") != "local"
    )


def split_list(text: str | None, what: str) -> list[str]:
    """Comma-separated names; GridUsageError on an empty item or a repeat."""
    items = [s.strip() for s in (text or "").split(",")]
    if not items or any(not s for s in items):
        raise GridUsageError(f"{what} expects a comma-separated list without empty items, got {text!r}")
    repeated = sorted({s for s in items if items.count(s) > 1})
    if repeated:
        raise GridUsageError(f"{what} lists {', '.join(repeated)} more than once")
    return items


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; non-negative integers, no repeats."""
    items = split_list(text, "--seeds")
    seeds = []
    for item in items:
        try:
            seed = int(item)
        except ValueError:
            seed = -1
        if seed < 0:
            raise GridUsageError(f"--seeds expects non-negative integers like 0,1,2; got {item!r} in {text!r}")
        seeds.append(seed)
    return seeds


def check_algos(names: list[str]) -> None:
    """Every name is an rlgeom agent or a supported SB3 baseline whose library is installed."""
    from rlgeom.agents import AGENTS

    for name in names:
        if name in AGENTS:
            continue
        if name not in SB3_ALGOS:
            accepted = ", ".join([*AGENTS, *SB3_ALGOS])
            raise GridUsageError(f"unknown algorithm {name!r} in --algo; accepted: {accepted}")
        module = SB3_ALGOS[name][0]
        if importlib.util.find_spec(module) is None:
            raise GridUsageError(f"--algo {name} needs the {module} package, which is not installed")


def check_env(env_id: str, algos: list[str]) -> None:
    """The env id exists (no env is made); SB3 baselines take Gymnasium vector-observation ids only."""
    from rlgeom.envs.atari import is_atari_id, register_atari
    from rlgeom.envs.make import TORCH_NATIVE_PREFIX

    sb3 = [a for a in algos if a in SB3_ALGOS]
    if env_id.startswith(TORCH_NATIVE_PREFIX):
        from rlgeom.envs.torch_native import TORCH_NATIVE_IDS

        if env_id not in TORCH_NATIVE_IDS:
            raise GridUsageError(f"unknown env id {env_id!r}; torch-native ids: {', '.join(TORCH_NATIVE_IDS)}")
        if sb3:
            raise GridUsageError(f"{', '.join(sb3)} cannot run the torch-native task {env_id}; use its Gymnasium id")
        return
    if is_atari_id(env_id):
        if sb3:
            raise GridUsageError(f"the grid's SB3 baselines take vector-observation tasks, not the Atari id {env_id}")
        try:
            register_atari()
        except ValueError as err:
            raise GridUsageError(str(err)) from None
    import gymnasium

    try:
        gymnasium.spec(env_id)
    except (gymnasium.error.Error, ModuleNotFoundError) as err:
        raise GridUsageError(f"unknown env id {env_id!r}: {err}") from None


def import_gym_packages(modules: list[str]) -> None:
    """Import modules that register extra Gymnasium envs (RL Zoo's --gym-packages)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise GridUsageError(f"--gym-packages {name}: cannot import it ({err})") from None


def forwarded_options(args) -> list[str]:
    """rlgeom.tools.train's per-run options that the grid passes on to each rlgeom run as given."""
    argv = []
    for option in GRID_FORWARDS:
        value = getattr(args, option.lstrip("-").replace("-", "_"), None)
        if value is not None:
            argv += [option, str(value)]
    if argv and getattr(args, "checkpoint_every", None) is not None:
        argv += ["--keep-checkpoints", str(args.keep_checkpoints)]
    return argv


def check_hyperparameters(algo: str, env_id: str, hp: list[str], n_envs: int | None) -> None:
    """The --hp overrides leave the preset a valid config for the agent (as its constructor checks it).

    A preset that is invalid by itself is not the user's input: that run fails and is reported."""
    from rlgeom.agents import AGENTS
    from rlgeom.tools.train import parse_overrides

    cfg = algo_preset(algo, env_id, n_envs=n_envs, overrides=parse_overrides(hp))
    n_envs = n_envs or cfg["n_envs"]

    config = AGENTS[algo].Config

    def problem(hyperparameters: dict, pairs: list[str] = ()) -> str | None:
        try:  # the --hp values parsed as the run will parse them (each checked against its field's type)
            config.build({**hyperparameters, **parse_overrides(list(pairs), config)}).validate(n_envs)
        except (ValueError, TypeError) as err:
            return str(err)
        return None

    if problem(cfg["hyperparameters"]) is None:
        err = problem(cfg["hyperparameters"], hp)
        if err is not None:
            raise GridUsageError(f"{algo} on {env_id} with --hp {' '.join(hp)}: {err}")


def hp_keys(pairs: list[str]) -> list[str]:
    return [pair.partition("=")[0].strip() for pair in pairs]


def accepted_hyperparameters(algo: str) -> set[str]:
    """Hyperparameter names an agent takes from --hp (SB3: its constructor's, plus normalisation)."""
    if algo in SB3_ALGOS:
        names = SB3_HYPERPARAMETERS[algo] | {"normalize_observations", "normalize_reward"}
        return names | set(SB3_RENAMES.get(algo, {}))
    from rlgeom.agents import AGENTS

    return set(AGENTS[algo].Config.field_help())


# ---------------------------------------------------------------- the plan


def algo_dirname(algo: str) -> str:
    """The agent's directory (and run.json algo) name: sb3:ppo -> sb3-ppo."""
    return algo.replace(":", "-")


def run_dir_for(logdir: str, env_id: str, algo: str, seed: int) -> str:
    """<logdir>/<task>/<agent>/seed<k>, the task named as rlgeom.persistence.logger.run_directory names it."""
    return os.path.join(logdir, env_id.replace("/", "-"), algo_dirname(algo), f"seed{seed}")


def algo_preset(algo: str, env_id: str, n_envs: int | None = None, overrides: dict | None = None) -> dict:
    """The preset a run starts from: agents.presets for rlgeom agents and SB3's PPO/TRPO, A2C_PRESETS for A2C
    (n_envs and the --hp overrides size a preset's minibatches where it names their number: warp/ ids)."""
    from rlgeom.agents.presets import preset, task_family

    key = SB3_ALGOS[algo][2] if algo in SB3_ALGOS else algo
    if key == "a2c":
        entry = A2C_PRESETS.get(env_id) or A2C_PRESETS.get(task_family(env_id) or "") or A2C_PRESETS["default"]
        return json.loads(json.dumps(entry))
    return preset(key, env_id, n_envs=n_envs, overrides=overrides)


def budget(args, algo: str, env_id: str) -> int:
    """--timesteps if given, else the preset's budget capped by --max-timesteps."""
    if args.timesteps is not None:
        return args.timesteps
    steps = algo_preset(algo, env_id)["timesteps"]
    return min(steps, args.max_timesteps) if args.max_timesteps is not None else steps


def plan(args) -> list[dict]:
    """One spec per (task, agent, seed); GridUsageError for bad input, before anything runs."""
    import_gym_packages(args.gym_packages)
    if args.save is not None:
        raise GridUsageError("--save names one model file; a grid saves each model in its run directory")
    for option in GRID_REJECTS:
        if getattr(args, option.lstrip("-").replace("-", "_"), None) is not None:
            raise GridUsageError(f"{option} applies to one run; in a grid, checkpoints go to each run's directory "
                                 "and a rerun skips finished runs and restarts unfinished ones")
    from rlgeom.persistence.outputs import OutputError, check_outside_other_runs

    try:  # before any run starts, as a single run refuses it
        check_outside_other_runs(args.logdir, "log directory (--logdir)")
    except OutputError as err:
        raise GridUsageError(str(err)) from None
    if args.timesteps is not None and args.timesteps < 1:
        raise GridUsageError(f"--timesteps must be positive, got {args.timesteps}")
    if args.max_timesteps is not None and args.max_timesteps < 1:
        raise GridUsageError(f"--max-timesteps must be positive, got {args.max_timesteps}")
    if args.workers is not None and args.workers < 1:
        raise GridUsageError(f"--workers must be a positive integer, got {args.workers}")
    algos = split_list(args.algo, "--algo")
    check_algos(algos)
    envs = split_list(args.env or "CartPole-v1", "--env")
    for env_id in envs:
        check_env(env_id, algos)
    seeds = parse_seeds(args.seeds) if args.seeds is not None else [args.seed]
    for pair in args.hp:
        if "=" not in pair or not pair.partition("=")[0].strip():
            raise GridUsageError(f"--hp expects KEY=VALUE pairs, got {pair!r}")
    accepted = {algo: accepted_hyperparameters(algo) for algo in algos}
    unused = [k for k in hp_keys(args.hp) if not any(k in names for names in accepted.values())]
    if unused:
        raise GridUsageError(f"--hp {', '.join(unused)}: no agent in --algo {args.algo} takes this hyperparameter")
    if args.policy_kwargs:
        try:
            json.loads(args.policy_kwargs)
        except json.JSONDecodeError as err:
            raise GridUsageError(f"--policy-kwargs is not valid JSON: {err}") from None
    specs = []
    for env_id in envs:
        for algo in algos:
            hp = [pair for pair in args.hp if pair.partition("=")[0].strip() in accepted[algo]]
            if algo not in SB3_ALGOS:
                check_hyperparameters(algo, env_id, hp, args.n_envs)
            for seed in seeds:
                specs.append({
                    "algo": algo, "env": env_id, "seed": seed, "timesteps": budget(args, algo, env_id),
                    "run_dir": run_dir_for(args.logdir, env_id, algo, seed), "logdir": args.logdir, "hp": hp,
                    "n_envs": args.n_envs, "device": args.device, "vectorization": args.vectorization,
                    "policy_kwargs": args.policy_kwargs, "eval_episodes": args.eval_episodes,
                    "verbose": args.verbose, "gym_packages": list(args.gym_packages),
                    "train_options": forwarded_options(args),
                })
    return specs


# ---------------------------------------------------------------- run directories


def read_done(run_dir: str) -> dict | None:
    """The done.json record of a finished run (None when the run has not finished)."""
    path = os.path.join(run_dir, DONE_FILE)
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_done(run_dir: str, record: dict) -> str:
    """done.json, written to a temporary file and renamed into place (never half-written)."""
    path = os.path.join(run_dir, DONE_FILE)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def resumable_checkpoint(spec: dict) -> tuple[str | None, str]:
    """(checkpoint, why not): the newest readable checkpoint of spec's unfinished run directory when the grid
    can continue that run, else (None, the reason, '' where there is no checkpoint to speak of).

    Continuing is safe only for the run this spec would start, stopped from outside (killed, interrupted), not by
    an error of its own: an rlgeom agent (the grid's SB3 runs write no checkpoints), no error.log, the same task,
    seed, number of envs, policy and hyperparameters (its run.json against the preset with this command's
    overrides, as the run would be built now), and a checkpoint short of the budget."""
    from rlgeom.persistence.checkpoint import latest_checkpoint, list_checkpoints
    from rlgeom.persistence.serialization import ModelFileError

    run_dir = spec["run_dir"]
    if spec["algo"] in SB3_ALGOS or not list_checkpoints(os.path.join(run_dir, "checkpoints")):
        return None, ""
    if os.path.exists(os.path.join(run_dir, ERROR_LOG)):  # it raised, and would likely again from its checkpoint
        return None, f"it failed (its {ERROR_LOG} goes with it)"
    try:
        path = latest_checkpoint(run_dir)
    except ModelFileError as err:
        return None, str(err)
    try:
        with open(os.path.join(run_dir, "run.json")) as f:
            then = json.load(f)
    except (OSError, ValueError) as err:
        return None, f"its run.json cannot be read ({err})"
    now = run_configuration(spec)
    changed = sorted(key for key in now if (then.get(key) if isinstance(then, dict) else None) != now[key])
    if changed:
        return None, f"it was started with another {', '.join(changed)} than this command's"
    step = dict((p, s) for s, p in list_checkpoints(os.path.dirname(path)))[path]
    if step > spec["timesteps"]:
        return None, f"its checkpoint is at step {step}, past this command's budget of {spec['timesteps']}"
    return path, ""


def run_configuration(spec: dict) -> dict:
    """What spec's run will record in its run.json about what it trains (JSON values): task, agent, seed, envs,
    policy, policy_kwargs and every hyperparameter, from the preset and this command's overrides."""
    from rlgeom.agents import AGENTS
    from rlgeom.persistence.serialization import policy_kwargs_to_json
    from rlgeom.tools.train import parse_overrides

    config_cls = AGENTS[spec["algo"]].Config
    cfg = algo_preset(spec["algo"], spec["env"], n_envs=spec["n_envs"], overrides=parse_overrides(spec["hp"]))
    config = config_cls.build({**cfg["hyperparameters"], **parse_overrides(spec["hp"], config_cls)})
    policy_kwargs = {**cfg["policy_kwargs"], **(json.loads(spec["policy_kwargs"]) if spec["policy_kwargs"] else {})}
    return json.loads(json.dumps({
        "env_id": spec["env"], "algo": spec["algo"], "seed": spec["seed"], "n_envs": spec["n_envs"] or cfg["n_envs"],
        "policy": cfg["policy"], "policy_kwargs": policy_kwargs_to_json(policy_kwargs),
        "hyperparameters": config.to_dict(),
    }, default=str))


def record_part(run_dir: str, part: dict) -> list[dict]:
    """Append one start of this run (its commit, the checkpoint it continued from) to parts.json, atomically;
    returns them all."""
    from rlgeom.persistence.outputs import write_atomically

    path = os.path.join(run_dir, PARTS_FILE)
    try:
        with open(path) as f:
            parts = json.load(f)
    except (OSError, ValueError):
        parts = []
    parts = [*(parts if isinstance(parts, list) else []), part]
    write_atomically(path, json.dumps(parts, indent=2, default=str).encode())
    return parts


def prepare_run_dir(run_dir: str) -> str | None:
    """With the run directory's lock held, set an unfinished run aside (set_aside) for a fresh start; returns
    where it went. DirectoryInUseError when another process holds the lock (another grid on the same --logdir,
    a single run): a live run is never moved."""
    from rlgeom.persistence.outputs import lock_directory

    if not os.path.isdir(run_dir) or os.path.islink(run_dir):
        return set_aside(run_dir)
    lock = lock_directory(run_dir, "run directory")
    try:
        return set_aside(run_dir)
    finally:
        lock.release()


def claim_run_dir(run_dir: str, resuming: bool = False):
    """The lock of `run_dir`, fresh (empty) for this worker's run, or as it is for a run it continues: rlgeom's
    RunLogger takes it over, an SB3 run holds it to its end. DirectoryInUseError when another process took it
    after the grid prepared it."""
    from rlgeom.persistence import logger
    from rlgeom.persistence.outputs import DirectoryInUseError, lock_directory, try_lock_fresh_directory

    if resuming:
        lock = lock_directory(run_dir, "run directory")
        logger._claimed[os.path.abspath(run_dir)] = lock
        return lock
    lock = try_lock_fresh_directory(run_dir)
    if lock is None:
        raise DirectoryInUseError(f"the run directory {run_dir} was taken by another process after this grid prepared "
                                  "it (another grid on the same --logdir?); rerun the grid once that one has finished")
    logger._claimed[os.path.abspath(run_dir)] = lock
    return lock


def set_aside(run_dir: str) -> str | None:
    """Move an unfinished run directory to <dir>.incomplete-<timestamp>; an empty one is removed.

    Returns the new path (None when there was nothing to keep)."""
    from rlgeom.persistence.outputs import LOCK_NAME

    if not os.path.lexists(run_dir):
        return None
    if os.path.isdir(run_dir) and not os.path.islink(run_dir) and not set(os.listdir(run_dir)) - {LOCK_NAME}:
        if os.path.exists(os.path.join(run_dir, LOCK_NAME)):
            os.remove(os.path.join(run_dir, LOCK_NAME))
        os.rmdir(run_dir)
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, k = f"{run_dir}{INCOMPLETE_MARK}{stamp}", 1
    while os.path.lexists(target):
        k += 1
        target = f"{run_dir}{INCOMPLETE_MARK}{stamp}-{k}"
    os.rename(run_dir, target)
    return target


# ---------------------------------------------------------------- the worker


def code_identity() -> dict:
    """What ran: rlgeom's version, its git commit (and whether tracked files differed from it), and the
    versions of the libraries a run's numbers depend on. `git_commit` is always recorded: the checkout's
    HEAD, else $RLGEOM_GIT_COMMIT (for a tree exported from git), else None with `git_commit_note` saying why."""
    from importlib import metadata

    from rlgeom import __version__

    identity = {"rlgeom": __version__}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        def git(*args) -> str | None:
            out = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=20)
            return out.stdout.strip() if out.returncode == 0 else None

        top = git("rev-parse", "--show-toplevel")
        if top is not None and os.path.samefile(top, root):  # rlgeom's own checkout, not a repository around it
            identity["git_commit"] = git("rev-parse", "HEAD")
            identity["git_dirty"] = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):  # no git here: the fallbacks below
        pass
    if not identity.get("git_commit"):
        identity["git_commit"] = os.environ.get("RLGEOM_GIT_COMMIT") or None
        if identity["git_commit"] is None:
            identity["git_commit_note"] = "not run from a git checkout of rlgeom and RLGEOM_GIT_COMMIT unset"
    for name in ("torch", "gymnasium", "mujoco", "stable-baselines3", "sb3-contrib"):
        try:
            identity[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return identity


def run_in_worker(spec: dict) -> dict:
    """Train one run in this (fresh) process; never raises: a failure comes back as a record."""
    start = time.perf_counter()
    base = {"algo": spec["algo"], "env": spec["env"], "seed": spec["seed"], "run_dir": spec["run_dir"],
            "worker": f"{socket.gethostname()}:{os.getpid()}",  # where it ran (a node of a Ray cluster, say)
            "code": code_identity(), "preset": preset_values(spec["algo"], spec["env"]),
            "overrides": command_overrides(spec)}
    from rlgeom.persistence.outputs import OutputError

    resume_from = spec.get("resume_from")
    try:
        claim = claim_run_dir(spec["run_dir"], resuming=resume_from is not None)
    except OutputError as err:  # another process's folder: nothing is written there, not even error.log
        return {**base, "status": "failed", "error": str(err), "log": "(none: the run was not started)", "wall_s": 0.0}
    _worker_state["running"] = True
    try:
        import torch

        parts = record_part(spec["run_dir"], {"code": base["code"], "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                              "worker": base["worker"], "resumed_from": resume_from})
        torch.set_num_threads(1)
        import_gym_packages(spec["gym_packages"])
        summary = _train_sb3(spec) if spec["algo"] in SB3_ALGOS else _train_rlgeom(spec)
        record = {**base, **summary, "algo": spec["algo"], "status": "done", "parts": parts,
                  "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_done(spec["run_dir"], record)
        claim.release()
        return record
    except Exception as err:  # a failing run is reported and never stops the others
        lines = traceback.format_exception_only(type(err), err)
        last = (lines[-1].strip() if lines else repr(err)).splitlines()[-1]
        log_path = os.path.join(spec["run_dir"], ERROR_LOG)
        try:
            os.makedirs(spec["run_dir"], exist_ok=True)
            with open(log_path, "w") as f:
                f.write(f"{spec['algo']} on {spec['env']} (seed {spec['seed']}) failed after "
                        f"{time.perf_counter() - start:.1f} s\n\n")
                f.write(traceback.format_exc())
        except OSError as log_err:
            log_path = f"(could not write {log_path}: {log_err})"
        return {**base, "status": "failed", "error": last, "log": log_path, "wall_s": time.perf_counter() - start}


def _train_rlgeom(spec: dict) -> dict:
    """One rlgeom run through rlgeom.tools.train's single-run path, into exactly spec['run_dir']."""
    from rlgeom.tools import train

    argv = [
        "--algo", spec["algo"], "--env", spec["env"], "--seed", str(spec["seed"]),
        "--timesteps", str(spec["timesteps"]), "--logdir", spec["logdir"], "--device", spec["device"],
        "--vectorization", spec["vectorization"], "--eval-episodes", str(spec["eval_episodes"]),
        "--verbose", str(spec["verbose"]), "--no-progress",
    ]
    if spec["n_envs"] is not None:
        argv += ["--n-envs", str(spec["n_envs"])]
    if spec["policy_kwargs"]:
        argv += ["--policy-kwargs", spec["policy_kwargs"]]
    if spec.get("resume_from"):  # the grid checked that this checkpoint is this spec's run (resumable_checkpoint)
        argv += ["--resume", spec["resume_from"]]
    args = train.build_parser().parse_args(argv + list(spec["train_options"]))
    args.hp = list(spec["hp"])
    # the grid moved any earlier directory aside (or continues it from its checkpoint, whose run directory it
    # is), so the run logs to exactly this one
    summary = train.run(args)
    if os.path.abspath(summary["logdir"]) != os.path.abspath(spec["run_dir"]):
        raise RuntimeError(
            f"the run logged to {summary['logdir']}, not to {spec['run_dir']}: another process wrote there "
            "meanwhile; run the grid again"
        )
    return summary


def _sb3_constructor_names(cls) -> set[str]:
    reserved = {"self", "policy", "env", "tensorboard_log", "policy_kwargs", "verbose", "seed", "device",
                "_init_setup_model", "rollout_buffer_class", "rollout_buffer_kwargs"}
    return set(inspect.signature(cls.__init__).parameters) - reserved


def _sb3_value(value):
    """rlgeom's schedule dicts as SB3 schedules (callables of progress_remaining); others as given."""
    if isinstance(value, dict) and value.get("kind") in ("linear", "constant"):
        from rlgeom.training.schedules import schedule_value

        spec = dict(value)
        return lambda progress_remaining: schedule_value(spec, progress_remaining)
    return value


def _sb3_policy_kwargs(policy_kwargs: dict) -> tuple[dict, list[str]]:
    """rlgeom policy_kwargs in SB3's terms (activation names -> torch.nn classes); drops what SB3 lacks."""
    from stable_baselines3.common.policies import ActorCriticPolicy

    from rlgeom.models.policies import ACTIVATIONS

    names = set(inspect.signature(ActorCriticPolicy.__init__).parameters) - {"self", "observation_space",
                                                                            "action_space", "lr_schedule"}
    out, dropped = {}, []
    for key, value in policy_kwargs.items():
        if key not in names:
            dropped.append(key)
        elif key == "activation_fn" and isinstance(value, str):
            if value not in ACTIVATIONS:
                raise ValueError(f"unknown activation_fn {value!r}; accepted: {', '.join(ACTIVATIONS)}")
            out[key] = ACTIVATIONS[value]
        else:
            out[key] = value
    return out, dropped


def sb3contrib_kl_convention(kwargs: dict, action_space) -> dict:
    """rlgeom's max_kl and cg_damping are of the true KL; sb3-contrib's TRPO averages the KL over the
    k action dimensions of a Box space, so the same step needs target_kl and cg_damping divided by k
    (experiments/RESULTS_trpo.md: with this, both compute the same step to 1e-5)."""
    from gymnasium import spaces

    k = math.prod(action_space.shape) if isinstance(action_space, spaces.Box) else 1
    out = dict(kwargs)
    for name, default in (("target_kl", 0.01), ("cg_damping", 0.1)):
        out[name] = out.get(name, default) / k
    return out


def _train_sb3(spec: dict) -> dict:
    """One SB3 / sb3-contrib baseline with the preset's (zoo) hyperparameters, logged with SB3's own tags."""
    import numpy as np
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.logger import configure
    from stable_baselines3.common.vec_env import VecNormalize

    from rlgeom.agents.config import parse_hp_value

    module, cls_name, _ = SB3_ALGOS[spec["algo"]]
    library = importlib.import_module(module)
    cls = getattr(library, cls_name)
    cfg = algo_preset(spec["algo"], spec["env"])
    overrides = {}
    for pair in spec["hp"]:
        key, _, value = pair.partition("=")
        overrides[key.strip()] = parse_hp_value(value.strip())
    renames = SB3_RENAMES.get(spec["algo"], {})
    hyperparameters = {renames.get(k, k): v for k, v in {**cfg["hyperparameters"], **overrides}.items()}
    norm_obs = bool(hyperparameters.pop("normalize_observations", False))
    norm_reward = bool(hyperparameters.pop("normalize_reward", False))
    accepted = _sb3_constructor_names(cls)
    unknown = sorted({renames.get(k, k) for k in overrides} - accepted - {"normalize_observations", "normalize_reward"})
    if unknown:
        raise ValueError(f"--hp {', '.join(unknown)}: not a hyperparameter of {cls_name}; accepted: {', '.join(sorted(accepted))}")
    kwargs = {k: v for k, v in hyperparameters.items() if k in accepted}
    dropped = sorted(set(hyperparameters) - accepted)
    policy_kwargs = dict(cfg["policy_kwargs"])
    if spec["policy_kwargs"]:
        policy_kwargs.update(json.loads(spec["policy_kwargs"]))
    sb3_policy_kwargs, dropped_policy = _sb3_policy_kwargs(policy_kwargs)
    n_envs = spec["n_envs"] or cfg["n_envs"]
    seed, run_dir = spec["seed"], spec["run_dir"]

    env = make_vec_env(spec["env"], n_envs=n_envs, seed=seed)
    if spec["algo"] == "sb3contrib:trpo":
        kwargs = sb3contrib_kl_convention(kwargs, env.action_space)
    if norm_obs or norm_reward:
        env = VecNormalize(env, norm_obs=norm_obs, norm_reward=norm_reward, gamma=kwargs.get("gamma", 0.99))
    model = cls(cfg["policy"], env, seed=seed, device=spec["device"], verbose=spec["verbose"],
                policy_kwargs=sb3_policy_kwargs, **{k: _sb3_value(v) for k, v in kwargs.items()})
    os.makedirs(run_dir, exist_ok=True)
    info = {
        "env_id": spec["env"], "algo": algo_dirname(spec["algo"]), "seed": seed,
        "library": f"{module} {getattr(library, '__version__', '?')}", "class": cls_name, "n_envs": n_envs,
        "policy": cfg["policy"], "policy_kwargs": policy_kwargs, "hyperparameters": kwargs,
        "vec_normalize": {"norm_obs": norm_obs, "norm_reward": norm_reward} if (norm_obs or norm_reward) else None,
        "not_applied": dropped + [f"policy_kwargs.{k}" for k in dropped_policy],
        "preset_source": cfg["source"], "device": str(model.device),
    }
    with open(os.path.join(run_dir, "run.json"), "w") as f:
        json.dump(info, f, indent=2, default=str)
    model.set_logger(configure(run_dir, ["stdout", "tensorboard"] if spec["verbose"] else ["tensorboard"]))
    # SB3 logs every log_interval iterations: PPO/TRPO every one, A2C's short iterations about every 2048 steps
    per_iteration = model.n_steps * model.n_envs
    log_interval = max(1, round(SB3_LOG_EVERY_STEPS / per_iteration)) if cls_name == "A2C" else 1
    start = time.perf_counter()
    model.learn(total_timesteps=spec["timesteps"], log_interval=log_interval)
    wall = time.perf_counter() - start
    model_path = os.path.join(run_dir, "model.zip")  # SB3's own format, where rlgeom's runs put model.safetensors
    model.save(model_path)
    if isinstance(env, VecNormalize):  # what SB3's docs save beside a model trained on VecNormalize
        env.save(os.path.join(run_dir, "vec_normalize.pkl"))

    eval_env = make_vec_env(spec["env"], n_envs=1, seed=seed + 10_000)
    if isinstance(env, VecNormalize):
        eval_env = VecNormalize(eval_env, training=False, norm_obs=norm_obs, norm_reward=False)
        eval_env.obs_rms = env.obs_rms.copy()
    mean, std = evaluate_policy(model, eval_env, n_eval_episodes=spec["eval_episodes"], deterministic=True)
    eval_env.close()
    env.close()
    steps = int(model.num_timesteps)
    # the last point of every curve at the final step, also when training ended between log intervals
    if model.ep_info_buffer:
        model.logger.record("rollout/ep_rew_mean", float(np.mean([e["r"] for e in model.ep_info_buffer])))
        model.logger.record("rollout/ep_len_mean", float(np.mean([e["l"] for e in model.ep_info_buffer])))
    model.logger.record("time/fps", int(steps / max(wall, 1e-9)))
    model.logger.record("eval/mean_reward", float(mean))
    model.logger.dump(steps)
    model.logger.close()
    return {"env": spec["env"], "seed": seed, "eval_return": float(mean), "eval_std": float(std),
            "timesteps": steps, "wall_s": wall, "fps": steps / max(wall, 1e-9), "logdir": run_dir,
            "model": model_path, "preset_source": cfg["source"]}


# ---------------------------------------------------------------- the parent


def _label(spec: dict) -> str:
    return f"{spec['algo']} on {spec['env']} (seed {spec['seed']})"


def _announce(record: dict, finished: int, total: int) -> None:
    head = f"[{finished}/{total}] {_label(record)}:"
    if record["status"] == "failed":
        print(f"{head} FAILED: {record['error']} (traceback: {record['log']})", flush=True)
    else:
        print(f"{head} {record['status']}, eval return {record.get('eval_return', float('nan')):.1f}, "
              f"{record.get('timesteps', 0)} steps in {record.get('wall_s', 0.0):.1f} s", flush=True)


def _pool(workers: int, stop) -> cf.ProcessPoolExecutor:
    kwargs = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
    return cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=die_with_parent, initargs=(os.getpid(), stop), **kwargs)


#: how often a grid worker checks that the grid's process is still alive (seconds)
PARENT_POLL_S = 0.5
#: how long an interrupted worker's run may take to unwind before the worker exits regardless (seconds)
STOP_GRACE_S = 10.0
#: in a worker process: whether a run is in progress (an idle worker that is told to stop just exits)
_worker_state = {"running": False}


def die_with_parent(parent_pid: int, stop=None) -> None:
    """Worker initializer: when the grid's process dies, even by kill -9 (which runs no cleanup and
    leaves the pool no chance to stop its workers), the worker exits too instead of training on as an
    orphan. A daemon thread polls the parent's pid (an orphan is re-parented, so os.getppid() changes);
    polling rather than prctl(PR_SET_PDEATHSIG) because that signal fires when the *thread* that started
    the worker ends (the pool starts replacements from a helper thread) and it exists only on Linux.

    Ctrl-C is the parent's to handle: a worker ignores SIGINT (the terminal sends it to the whole process
    group) until the parent sets `stop`; then its run is interrupted (KeyboardInterrupt: no done.json, so
    a rerun of the grid runs it again) and the worker exits, within STOP_GRACE_S at most."""
    import signal
    import threading

    def on_sigint(signum, frame) -> None:
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt

    def watch() -> None:
        while not (stop is not None and stop.wait(PARENT_POLL_S)) and os.getppid() == parent_pid:
            if stop is None:
                time.sleep(PARENT_POLL_S)
        if os.getppid() != parent_pid:
            os._exit(70)  # the parent is gone: nobody will read this run's result (its run dir is set aside next time)
        if _worker_state["running"]:
            os.kill(os.getpid(), signal.SIGINT)  # on_sigint raises KeyboardInterrupt in the run's thread
            time.sleep(STOP_GRACE_S)
        os._exit(130)

    if os.getppid() != parent_pid or (stop is not None and stop.is_set()):
        os._exit(70)  # a replacement worker started after the grid was interrupted: no new run
    signal.signal(signal.SIGINT, on_sigint)
    threading.Thread(target=watch, name="rlgeom-die-with-parent", daemon=True).start()


def _run_pool(specs: list[dict], workers: int, on_result) -> None:
    """Run `specs` in a pool of `workers`, calling on_result(spec, future) as each ends. On Ctrl-C nothing new
    starts: the workers are told to stop their runs, and the interrupt goes on once they have exited."""
    stop = multiprocessing.get_context("spawn").Event()
    pool = _pool(workers, stop)
    try:
        futures = {pool.submit(run_in_worker, spec): spec for spec in specs}
        for future in cf.as_completed(futures):
            on_result(futures[future], future)
    except KeyboardInterrupt:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _execute(specs: list[dict], workers: int, on_record) -> None:
    """Run specs in a pool; a worker that dies takes its pool down, so the runs it took with it are
    retried one at a time in pools of their own (which tells the crashing run from the bystanders)."""
    from rlgeom.persistence.outputs import OutputError

    crashed: list[dict] = []

    def first_try(spec: dict, future) -> None:
        try:
            on_record(future.result())
        except cf.process.BrokenProcessPool:
            crashed.append(spec)

    def retry(spec: dict, future) -> None:
        try:
            record = future.result()
        except cf.process.BrokenProcessPool as err:
            record = {"algo": spec["algo"], "env": spec["env"], "seed": spec["seed"], "status": "failed",
                      "error": f"the worker process died (killed or crashed): {err}",
                      "log": "(none: the process died before it could write one)", "run_dir": spec["run_dir"]}
        on_record(record)

    _run_pool(specs, workers, first_try)
    for spec in crashed:
        spec = {**spec, "resume_from": None}  # a fresh start: the crash may have come from the checkpoint
        try:
            prepare_run_dir(spec["run_dir"])
        except OutputError as err:  # taken meanwhile by another process: left alone
            on_record(not_started(spec, err))
            continue
        _run_pool([spec], 1, retry)


def not_started(spec: dict, err: Exception) -> dict:
    """The record of a run the grid did not start because its run directory is another process's."""
    return {"algo": spec["algo"], "env": spec["env"], "seed": spec["seed"], "run_dir": spec["run_dir"],
            "status": "failed", "error": str(err), "log": "(none: the run was not started)"}


def format_table(records: list[dict]) -> str:
    """The summary table, one line per run, in plan order."""
    rows = [[header for header, _, _ in TABLE_COLUMNS]]
    for r in records:
        row = []
        for _, key, fmt in TABLE_COLUMNS:
            value = r.get(key)
            row.append("-" if value is None else fmt.format(value))
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def preset_values(algo: str, env_id: str) -> dict:
    """What a run starts from, without the prose of its source: n_envs, budget, policy and its kwargs,
    hyperparameters (recorded in done.json, so a resume can tell whether the preset has changed since)."""
    return {k: v for k, v in algo_preset(algo, env_id).items() if k != "source"}


def command_overrides(spec: dict) -> dict:
    """What the grid's command set on top of the preset (--hp pairs this agent takes, --n-envs,
    --policy-kwargs), recorded in done.json beside the preset: a run trained with --hp reads as such, and a
    resume under other overrides can name it."""
    return {"hp": {key.strip(): value.strip() for key, _, value in (pair.partition("=") for pair in spec["hp"])},
            "n_envs": spec["n_envs"],
            "policy_kwargs": json.loads(spec["policy_kwargs"]) if spec["policy_kwargs"] else None}


def warn_if_overrides_changed(spec: dict, done: dict) -> None:
    """A finished run is kept (skipping it is what the resume promises), but one trained under other
    command-line overrides than this grid's must not pass silently for this grid's: name it. done.json
    files older than this record carry none and are not judged."""
    if "overrides" not in done:
        return
    now = json.loads(json.dumps(command_overrides(spec)))
    if done["overrides"] != now:
        print(f"{_label(spec)}: finished with other overrides than this command's (then: {done['overrides']}; "
              f"now: {now}): kept; move {spec['run_dir']} aside to run it again with these", flush=True)


def warn_if_preset_changed(spec: dict, done: dict) -> None:
    """A finished run is kept as it is, but a table that mixes presets should say so: name the run whose
    preset is no longer the one this grid would start it from (by its values where done.json has them,
    else by its source)."""
    current = algo_preset(spec["algo"], spec["env"])
    if "preset" in done:  # compared as done.json holds it (JSON: tuples are lists there)
        changed = done["preset"] != json.loads(json.dumps(preset_values(spec["algo"], spec["env"])))
    else:
        changed = done.get("preset_source") not in (None, current["source"])
    if changed:
        print(f"{_label(spec)}: finished with another preset (then: {done.get('preset_source')!r}; now: "
              f"{current['source']!r}): kept; move {spec['run_dir']} aside to run it again with the current "
              f"one", flush=True)


def run_grid(args) -> int:
    """The whole grid: plan, skip finished runs, run the rest in parallel, print the summary."""
    launcher = getattr(args, "launcher", "local")
    if getattr(args, "address", None) is not None and launcher != "ray":
        raise GridUsageError("--address names a Ray cluster: use it with --launcher ray")
    if launcher == "ray":  # before anything is planned or moved: a missing Ray is a usage error
        from rlgeom.tools.ray_launcher import require_ray

        require_ray()
    from rlgeom.persistence.outputs import OutputError, lock_directory

    specs = plan(args)
    records: dict[int, dict] = {}
    pending = []
    for i, spec in enumerate(specs):
        done = read_done(spec["run_dir"])
        if done is not None:
            records[i] = {**done, "algo": spec["algo"], "env": spec["env"], "seed": spec["seed"],
                          "status": "skipped (done)"}
            warn_if_preset_changed(spec, done)
            warn_if_overrides_changed(spec, done)
            continue
        checkpoint, why_not = resumable_checkpoint(spec) if os.path.isdir(spec["run_dir"]) else (None, "")
        try:
            if checkpoint is not None:  # not a live run's: its lock is free
                lock_directory(spec["run_dir"], "run directory").release()
                moved = None
            else:
                moved = prepare_run_dir(spec["run_dir"])
        except OutputError as err:  # a live run of another grid or process: left alone, not started
            records[i] = not_started(spec, err)
            continue
        if checkpoint is not None:
            spec["resume_from"] = checkpoint
            print(f"{_label(spec)}: continuing its unfinished run from {checkpoint}", flush=True)
        elif moved is not None:
            print(f"{_label(spec)}: unfinished run directory moved aside to {moved}"
                  f"{f' (not continued from its checkpoint: {why_not})' if why_not else ''}", flush=True)
        pending.append(i)
    total = len(specs)
    busy = sum(r["status"] == "failed" for r in records.values())
    print(f"grid: {total} runs ({total - len(pending) - busy} already done"
          f"{f', {busy} in use by another process' if busy else ''}), logging to {args.logdir}", flush=True)
    for finished, i in enumerate(sorted(records), 1):  # skipped runs count 1, 2, ... like the runs that follow
        _announce(records[i], finished, total)
    if pending:
        workers = args.workers or min(len(pending), os.cpu_count() or 1)
        index = {specs[i]["run_dir"]: i for i in pending}

        def on_record(record: dict) -> None:
            records[index[record["run_dir"]]] = record
            _announce(record, len(records), total)

        if launcher == "ray":
            from rlgeom.tools import ray_launcher

            ray_launcher.execute([specs[i] for i in pending], on_record, args.address)
        else:
            _execute([specs[i] for i in pending], workers, on_record)
    ordered = [records[i] for i in range(total)]
    print()
    print(format_table(ordered))
    failed = [r for r in ordered if r["status"] == "failed"]
    if failed:
        print(f"\n{len(failed)} of {total} runs failed:")
        for r in failed:
            print(f"  {_label(r)}: {r['error']}\n    traceback: {r['log']}")
        print("rerun the same command to retry them (finished runs are skipped)")
    print(f"\nlogs: {args.logdir}  (tensorboard --logdir {args.logdir}; python -m rlgeom.compare {args.logdir})")
    return 1 if failed else 0


def main(args) -> int:
    """Entry from rlgeom.tools.train: 0 all runs succeeded, 1 some failed, 2 bad input, 130 interrupted."""
    try:
        return run_grid(args)
    except GridUsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to finish the grid (finished runs are skipped)", file=sys.stderr)
        return 130


__all__ = ["A2C_PRESETS", "SB3_ALGOS", "GridUsageError", "is_grid", "main", "plan", "run_grid", "run_in_worker"]
