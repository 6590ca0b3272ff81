"""`python -m rlgeom.train --algo trpo`: train one agent on one task with tuned presets.

Defaults come from agents.presets (rl-baselines3-zoo where it has the task); --hp overrides any
hyperparameter of the agent's config (`--help-hp` lists them with their documentation).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import signal
import sys
import time

DEFAULT_LOGDIR = "runs"


class UsageError(ValueError):
    """Bad command-line input: printed without a traceback, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rlgeom.train", description=__doc__.split("\n")[0])
    p.add_argument("--algo", default="ppo", help="agent: vpg, npg, trpo, ppo, acktr; a comma-separated list "
                   "(also sb3:ppo, sb3:a2c, sb3contrib:trpo) runs a grid (rlgeom.tools.benchmark)")
    p.add_argument("--env", default=None, help="env id, or a comma-separated list (default: CartPole-v1)")
    p.add_argument("--timesteps", type=int, default=None, help="environment steps (default: the preset's)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=0)
    seeds.add_argument("--seeds", default=None, help="grid: comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--workers", type=int, default=None, help="grid: parallel runs (default: min(runs, CPU cores))")
    p.add_argument("--max-timesteps", type=int, default=None, help="grid: cap on the presets' budgets")
    p.add_argument("--launcher", choices=("local", "ray"), default="local",
                   help="grid: run in local processes (default) or as tasks on a Ray cluster (pip install "
                        "'rlgeom[ray]'); with ray, --logdir must be a path every node shares")
    p.add_argument("--address", default=None, help="grid with --launcher ray: the cluster to join, 'auto' or "
                   "HOST:PORT (default: start a local Ray instance for this grid)")
    p.add_argument("--gym-packages", nargs="*", default=[], metavar="MODULE",
                   help="modules to import first (they register extra Gymnasium envs)")
    p.add_argument("--n-envs", type=int, default=None, help="parallel envs (default: the preset's)")
    p.add_argument("--vectorization", default="sync", help="sync or async gymnasium vector env")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 1 for MlpPolicy, whose small matmuls only pay thread "
                        "overhead with more; for other policies learn() measures 1 against torch's default and "
                        "takes the faster)")
    p.add_argument("--compile", default=None, metavar="MODE",
                   help="torch.compile the rollout's step and the update's losses (rlgeom.training.compiled): off "
                        "(the default), auto (reduce-overhead on CUDA, which captures CUDA graphs; default on the "
                        "CPU, where only the losses are compiled), default, reduce-overhead, max-autotune, "
                        "max-autotune-no-cudagraphs. Compiling takes a minute or so at the start of a run; on the "
                        "CPU it pays off for long PPO runs")
    p.add_argument("--logdir", default=None, help=f"TensorBoard root (one run dir per task/agent/seed; default: "
                   f"{DEFAULT_LOGDIR}, or with --resume the resumed run's own folder)")
    p.add_argument("--save", default=None, help="model path (default: <run dir>/model.safetensors)")
    p.add_argument("--hp", nargs="*", default=[], metavar="KEY=VALUE", help="override hyperparameters")
    p.add_argument("--policy-kwargs", default=None, help='JSON, e.g. \'{"net_arch": [64, 64]}\'')
    p.add_argument("--eval-episodes", type=int, default=10, help="deterministic evaluation episodes at the end")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--verbose", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="write a checkpoint every N environment steps and at the end (atomic; see --keep-checkpoints); "
                        "in a grid, rerunning the command continues each interrupted run from its newest checkpoint")
    p.add_argument("--checkpoint-dir", default=None, help="where checkpoints go (default: <run dir>/checkpoints)")
    p.add_argument("--keep-checkpoints", type=int, default=3, metavar="K", help="keep the newest K checkpoints")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="PATH|latest",
                   help="continue a run from a checkpoint file, a run or checkpoint directory, or 'latest' (the "
                        "newest checkpoint of this --algo/--env/--seed under --logdir) up to --timesteps in total")
    p.add_argument("--nonfinite", choices=("raise", "sanitize"), default=None,
                   help="NaN/inf from the env: stop with an error (default) or replace by 0 and count")
    p.add_argument("--max-consecutive-skips", type=int, default=None, metavar="N",
                   help="stop after N consecutive updates skipped for non-finite values (default 5)")
    p.add_argument("--geometry-every", type=int, default=None, metavar="N",
                   help="log the Fisher / value-Hessian spectrum under geometry/ every N updates (default: off)")
    p.add_argument("--help-hp", action="store_true", help="list the agent's hyperparameters and exit")
    return p


def parse_overrides(pairs: list[str], config=None) -> dict:
    """--hp KEY=VALUE pairs; with the agent's Config class each value is parsed and checked as its field's
    type (UsageError naming the field, what it accepts and the value)."""
    from rlgeom.agents.config import parse_hp_value

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--hp expects KEY=VALUE pairs, got {pair!r}")
        key = key.strip()
        if config is not None and key in config.__dataclass_fields__:
            try:
                out[key] = config.parse_cli_value(key, value.strip())
            except ValueError as err:
                raise UsageError(f"--hp {err}") from None
        else:
            out[key] = parse_hp_value(value.strip())
    return out


def agent_class(algo: str):
    from rlgeom.agents import AGENTS

    if algo not in AGENTS:
        raise UsageError(f"unknown algorithm {algo!r}; accepted: {', '.join(AGENTS)}")
    return AGENTS[algo]


def run(args) -> dict:
    """Train one (algo, env, seed); returns the summary record."""
    from rlgeom.agents.presets import DEFAULT_ENV, preset
    from rlgeom.envs import make_vec_env
    from rlgeom.training import distributed
    from rlgeom.training.evaluation import evaluate
    from rlgeom.training.guards import TrainingDivergedError

    cls = agent_class(args.algo)
    check_run_args(args)
    logdir = args.logdir or DEFAULT_LOGDIR
    env_id = args.env or DEFAULT_ENV
    overrides = parse_overrides(args.hp, cls.Config)
    cfg = preset(args.algo, env_id, n_envs=args.n_envs, overrides=overrides)
    hyperparameters = {**cfg["hyperparameters"], **overrides}
    policy_kwargs = {**cfg["policy_kwargs"], **parse_policy_kwargs(args.policy_kwargs)}
    threads = args.threads if args.threads is not None else (1 if cfg["policy"] == "MlpPolicy" else None)
    if threads is not None:
        import torch

        if threads < 1:
            raise UsageError(f"--threads must be a positive integer, got {threads}")
        torch.set_num_threads(threads)
    timesteps = args.timesteps if args.timesteps is not None else cfg["timesteps"]
    if timesteps < 1:
        raise UsageError(f"--timesteps must be positive, got {timesteps}")
    options = {k: v for k, v in (("nonfinite", args.nonfinite), ("max_consecutive_skips", args.max_consecutive_skips),
                                 ("geometry_every", args.geometry_every), ("compile", args.compile))
               if v is not None}
    if args.resume is not None:
        agent, env_id = resume_agent(args, cls, env_id, {**overrides, **options})
        if args.timesteps is None and agent._target_timesteps:
            timesteps = agent._target_timesteps
    else:
        agent = cls(
            cfg["policy"], env_id, n_envs=args.n_envs or cfg["n_envs"], seed=args.seed, device=args.device,
            tensorboard_log=logdir, verbose=args.verbose, vectorization=args.vectorization,
            policy_kwargs=policy_kwargs, **options, **hyperparameters,
        )
    if args.save is not None and args.resume is not None:  # the resumed run's own folder is its to write in
        from rlgeom.persistence.outputs import check_outside_other_runs
        from rlgeom.persistence.serialization import model_path

        check_outside_other_runs(os.path.dirname(os.path.abspath(model_path(args.save))), "model file (--save)",
                                 agent._run_dir)
    if args.threads is not None:
        agent.threads = threads  # obeyed even where it equals torch's default
    every = args.checkpoint_every if args.checkpoint_every is not None else agent._checkpoint_every
    remaining = timesteps - agent.num_timesteps
    start, start_steps = time.perf_counter(), agent.num_timesteps  # after --resume: this part only
    if remaining > 0:
        agent.learn(
            remaining, progress_bar=not args.no_progress, reset_num_timesteps=args.resume is None,
            checkpoint_every=every, checkpoint_dir=args.checkpoint_dir, keep_checkpoints=args.keep_checkpoints,
        )
        if agent.untrained_reason:  # not exit 0 as if it had trained (the warnings named each skip)
            raise TrainingDivergedError(f"{agent.untrained_reason}, so it is not saved as the run's model. Try "
                                        "observation/reward normalisation, or check the env's observations and rewards")
    wall = time.perf_counter() - start
    save_path = save_with_fallback(agent.save, args.save or os.path.join(agent._run_dir or logdir, "model"),
                                   agent._run_dir or logdir)
    mean = std = float("nan")
    if distributed.is_main():  # under torchrun rank 0 evaluates, logs and reports
        # a GPU-batched simulator runs every evaluation episode at once, one world each (one kernel launch per
        # physics step either way); other envs evaluate in one env, as before
        eval_env = make_vec_env(env_id, args.eval_episodes if env_id.startswith("warp/") else 1, device=agent.device)
        mean, std = evaluate(agent, eval_env, args.eval_episodes, deterministic=True, seed=args.seed + 10_000,
                             progress_bar=not args.no_progress)
        eval_env.close()
    agent.env.close()
    summary = {
        "algo": args.algo, "env": env_id, "seed": args.seed, "eval_return": mean, "eval_std": std,
        "timesteps": agent.num_timesteps, "trained_steps": agent.num_timesteps - start_steps,
        "resumed_at": start_steps if args.resume is not None else None,
        "wall_s": wall, "fps": (agent.num_timesteps - start_steps) / max(wall, 1e-9), "logdir": agent._run_dir, "model": save_path, "preset_source": cfg["source"],
    }
    agent.logger.record("eval/mean_reward", mean)
    agent.logger.dump(agent.num_timesteps)
    agent.logger.close()
    return summary


def resume_agent(args, cls, env_id: str, overrides: dict):
    """(agent loaded from the checkpoint --resume names, env id): the env id is --env, else the checkpoint's."""
    from rlgeom.agents.presets import DEFAULT_ENV
    from rlgeom.persistence.checkpoint import find_run_checkpoint, latest_checkpoint
    from rlgeom.persistence.serialization import open_model

    if args.resume == "latest":
        base = os.path.join(args.logdir or DEFAULT_LOGDIR, env_id.replace("/", "-"), args.algo, f"seed{args.seed}")
        roots = [base] + sorted(glob.glob(glob.escape(base) + "_*"))
        path = find_run_checkpoint([r for r in roots if os.path.isdir(r)] or [base])
    else:
        path = latest_checkpoint(args.resume)
    description = open_model(path).description
    env_id = args.env or description.get("env_id") or DEFAULT_ENV
    agent = load_to_resume(cls, path, env_id, description, args, overrides)
    agent.verbose = args.verbose
    if args.logdir is not None and not _inside(agent._run_dir, args.logdir):
        # a new --logdir: the resumed run logs and checkpoints there, leaving the original run untouched
        agent._run_dir = agent._checkpoint_dir = None
    if agent._run_dir is None:  # no TensorBoard run beside the checkpoint: log from here on
        agent.tensorboard_log = args.logdir or DEFAULT_LOGDIR
    print(f"resuming {path} at step {agent.num_timesteps}", file=sys.stderr)
    return agent, env_id


def load_to_resume(cls, path: str, env_id: str, description: dict, args, overrides: dict):
    """The checkpoint's agent on `env_id`, with the checkpoint's number of envs, or --n-envs when it names
    another: as SB3's load(path, env=a VecEnv of that size) does. The rollouts then differ from the
    uninterrupted run's (stderr says so), and a batch_size that no longer divides n_steps * n_envs is refused
    (exit 2) before training."""
    from rlgeom.agents import devices
    from rlgeom.agents.devices import resolve_device
    from rlgeom.envs import make_vec_env

    saved_envs = description.get("n_envs", 1)
    if args.n_envs is None or args.n_envs == saved_envs:
        return cls.load(path, env=env_id, device=args.device, **overrides)
    # one device for the env and the agent: "auto" decided as for a new run of this task with --n-envs envs
    device = resolve_device(args.device, lambda: devices.auto_device(env_id, args.n_envs, description.get("policy"),
                                                             description.get("policy_kwargs")))
    env = make_vec_env(env_id, args.n_envs, device=device, vectorization=args.vectorization)
    try:
        agent = cls.load(path, env=env, device=device, **overrides)
    except BaseException:
        env.close()
        raise
    print(f"rlgeom: resuming with --n-envs {args.n_envs} instead of the checkpoint's {saved_envs}: the run continues "
          "with its weights, optimiser and statistics, but its rollouts differ from an uninterrupted run's",
          file=sys.stderr)
    return agent


def _inside(path: str | None, folder: str) -> bool:
    """Whether `path` lies in `folder`, symlinks resolved (a link in a new --logdir to another run's folder is not
    inside it: that run is left untouched)."""
    return path is not None and os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) == os.path.realpath(folder)


def check_run_args(args) -> None:
    """Values argparse lets through that would crash later or be silently replaced, and output folders
    that cannot be written: all refused before anything is built or trained."""
    from rlgeom.persistence.checkpoint import check_checkpoint_dir
    from rlgeom.persistence.outputs import check_outside_other_runs, check_writable_file, ensure_writable_dir

    check_compile_flag(args.compile)
    if args.env is not None and not args.env.strip():
        raise UsageError("--env is empty; give an env id such as CartPole-v1 (or leave --env out for CartPole-v1)")
    for flag, value in (("--n-envs", args.n_envs), ("--eval-episodes", args.eval_episodes),
                        ("--keep-checkpoints", args.keep_checkpoints), ("--checkpoint-every", args.checkpoint_every)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be a positive integer, got {value}")
    if args.resume is None or args.logdir is not None:
        check_outside_other_runs(args.logdir or DEFAULT_LOGDIR, "log directory (--logdir)")
        ensure_writable_dir(args.logdir or DEFAULT_LOGDIR, "log directory (--logdir)")
    if args.checkpoint_dir is not None:
        if args.resume is None:  # a new run owns no checkpoint yet (a resumed one is checked once it is loaded)
            check_checkpoint_dir(args.checkpoint_dir, None, set())
        ensure_writable_dir(args.checkpoint_dir, "checkpoint directory (--checkpoint-dir)")
    if args.save is not None:
        from rlgeom.persistence.serialization import model_path

        if args.resume is None:
            check_outside_other_runs(os.path.dirname(os.path.abspath(model_path(args.save))), "model file (--save)")
        check_writable_file(model_path(args.save), "model file (--save)")


def check_compile_flag(value: str | None) -> None:
    """--compile's value is one compile= accepts as a string (UsageError naming them otherwise)."""
    from rlgeom.training.compiled import MODES

    accepted = ("off", "auto", *MODES)
    if value is not None and value not in accepted:
        raise UsageError(f"--compile {value!r} is not a compile mode; accepted: {', '.join(accepted)}")


def parse_policy_kwargs(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"--policy-kwargs is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise UsageError(f'--policy-kwargs must be a JSON object such as \'{{"net_arch": [64, 64]}}\', got {text!r}')
    if "net_arch" in value:
        from rlgeom.validation import net_arch_size

        net_arch_size("--policy-kwargs net_arch", value["net_arch"])  # before the network is allocated
    return value


def save_with_fallback(save, path: str, fallback_dir: str) -> str:
    """save(path); if that fails after training (disk full, folder gone), the model goes to
    `fallback_dir`/model instead and stderr says where: a trained model is never lost to its path."""
    from rlgeom.persistence.outputs import OutputWriteError

    try:
        return save(path)
    except OutputWriteError as err:
        fallback = os.path.join(fallback_dir, "model")
        if os.path.abspath(fallback) == os.path.abspath(os.path.splitext(path)[0]):
            raise
        written = save(fallback)
        print(f"rlgeom: {err}; the model was saved to {written} instead", file=sys.stderr)
        return written


def steps_line(summary: dict) -> str:
    """What this invocation trained, at what rate (the progress bar's, measured the same way); after
    --resume, the part before the checkpoint is named but not counted."""
    line = f"{summary['trained_steps']} steps in {summary['wall_s']:.1f} s ({summary['fps']:.0f} steps/s)"
    if summary.get("resumed_at") is not None:
        line += f", resumed at step {summary['resumed_at']} ({summary['timesteps']} in all)"
    return line


def lost_peers(err: RuntimeError) -> bool:
    """Whether `err` is a collective that failed because another rank ended or hung (gloo reports a
    timeout or a closed connection as a RuntimeError naming its transport; NCCL as a DistError)."""
    from rlgeom.training import distributed
    import torch.distributed as dist

    if not distributed.active():
        return False
    return isinstance(err, getattr(dist, "DistError", ())) or any(
        word in str(err) for word in ("gloo", "NCCL", "Connection closed", "Connection reset", "Timed out"))


@contextlib.contextmanager
def termination_signals_interrupt():
    """While a run trains, SIGTERM and SIGHUP (a scheduler's stop, a closed terminal) stop it as Ctrl-C does: a
    KeyboardInterrupt carrying the signal, so no temporary file is left, the run's lock is released and the exit
    status says which signal (128 + its number), instead of Python's silent default death. The previous
    handlers come back afterwards (main may be called from a program). Main thread only."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame) -> None:
        raise KeyboardInterrupt(signum)

    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from rlgeom.tools import benchmark
    from rlgeom.envs.boundary import NonFiniteEnvError
    from rlgeom.envs.warp_mujoco import MissingExtraError
    from rlgeom.training.guards import TrainingDivergedError
    from rlgeom.persistence.outputs import OutputWriteError
    from rlgeom.persistence.serialization import ModelFileError

    if benchmark.is_grid(args) and not args.help_hp:
        try:
            check_compile_flag(args.compile)  # before any run starts
        except UsageError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        args.logdir = args.logdir or DEFAULT_LOGDIR
        return benchmark.main(args)

    try:
        if args.help_hp:
            from rlgeom.tools.hyperparameters import print_help

            print_help(args)
            return 0
        benchmark.import_gym_packages(args.gym_packages)
        with termination_signals_interrupt():
            summary = run(args)
    except (UsageError, ValueError, TypeError, ModelFileError, MissingExtraError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (TrainingDivergedError, NonFiniteEnvError, OutputWriteError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        signum = err.args[0] if err.args and isinstance(err.args[0], int) else signal.SIGINT
        print(f"interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum
    except RuntimeError as err:  # under torchrun: another rank died or a collective timed out
        if not lost_peers(err):
            raise
        print(f"error: rank {os.environ.get('RANK', '?')} lost its peers ({type(err).__name__}: {str(err)[:300]}); "
              "another rank ended or hung past RLGEOM_DIST_TIMEOUT seconds. Continue from the last checkpoint "
              "with --resume latest", file=sys.stderr)
        return 1
    from rlgeom.training import distributed

    if not distributed.is_main():
        return 0
    print(
        f"{summary['algo']} on {summary['env']} (seed {summary['seed']}): eval return "
        f"{summary['eval_return']:.1f} ± {summary['eval_std']:.1f} over {args.eval_episodes} episodes | "
        f"{steps_line(summary)} | logs: {summary['logdir']} | model: {summary['model']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
