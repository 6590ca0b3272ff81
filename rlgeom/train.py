"""`python -m rlgeom.train --algo trpo`: train one agent on one task with tuned presets.

Defaults come from agents.presets (rl-baselines3-zoo where it has the task); --hp overrides any
hyperparameter of the agent's config (`--help-hp` lists them with their documentation).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

DEFAULT_LOGDIR = "runs"


class UsageError(ValueError):
    """Bad command-line input: printed without a traceback, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rlgeom.train", description=__doc__.split("\n")[0])
    p.add_argument("--algo", default="ppo", help="agent: vpg, npg, trpo, ppo, acktr")
    p.add_argument("--env", default=None, help="env id (default: CartPole-v1)")
    p.add_argument("--timesteps", type=int, default=None, help="environment steps (default: the preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-envs", type=int, default=None, help="parallel envs (default: the preset's)")
    p.add_argument("--vectorization", default="sync", help="sync or async gymnasium vector env")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--logdir", default=DEFAULT_LOGDIR, help="TensorBoard root (one run dir per task/agent/seed)")
    p.add_argument("--save", default=None, help="model path (default: <run dir>/model.safetensors)")
    p.add_argument("--hp", nargs="*", default=[], metavar="KEY=VALUE", help="override hyperparameters")
    p.add_argument("--policy-kwargs", default=None, help='JSON, e.g. \'{"net_arch": [64, 64]}\'')
    p.add_argument("--eval-episodes", type=int, default=10, help="deterministic evaluation episodes at the end")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--verbose", type=int, default=0)
    p.add_argument("--help-hp", action="store_true", help="list the agent's hyperparameters and exit")
    return p


def parse_overrides(pairs: list[str]) -> dict:
    from agents.config import parse_hp_value

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--hp expects KEY=VALUE pairs, got {pair!r}")
        out[key.strip()] = parse_hp_value(value.strip())
    return out


def agent_class(algo: str):
    from agents import AGENTS

    if algo not in AGENTS:
        raise UsageError(f"unknown algorithm {algo!r}; accepted: {', '.join(AGENTS)}")
    return AGENTS[algo]


def run(args) -> dict:
    """Train one (algo, env, seed); returns the summary record."""
    from agents.presets import DEFAULT_ENV, preset
    from envs import make_vec_env
    from rlgeom.evaluation import evaluate

    cls = agent_class(args.algo)
    env_id = args.env or DEFAULT_ENV
    cfg = preset(args.algo, env_id)
    hyperparameters = {**cfg["hyperparameters"], **parse_overrides(args.hp)}
    policy_kwargs = dict(cfg["policy_kwargs"])
    if args.policy_kwargs:
        try:
            policy_kwargs.update(json.loads(args.policy_kwargs))
        except json.JSONDecodeError as err:
            raise UsageError(f"--policy-kwargs is not valid JSON: {err}") from None
    timesteps = args.timesteps if args.timesteps is not None else cfg["timesteps"]
    if timesteps < 1:
        raise UsageError(f"--timesteps must be positive, got {timesteps}")
    agent = cls(
        cfg["policy"], env_id, n_envs=args.n_envs or cfg["n_envs"], seed=args.seed, device=args.device,
        tensorboard_log=args.logdir, verbose=args.verbose, vectorization=args.vectorization,
        policy_kwargs=policy_kwargs, **hyperparameters,
    )
    start = time.perf_counter()
    agent.learn(timesteps, progress_bar=not args.no_progress)
    wall = time.perf_counter() - start
    save_path = agent.save(args.save or os.path.join(agent._run_dir, "model"))
    eval_env = make_vec_env(env_id, 1, device=agent.device)
    mean, std = evaluate(agent, eval_env, args.eval_episodes, deterministic=True, seed=args.seed + 10_000)
    eval_env.close()
    agent.env.close()
    summary = {
        "algo": args.algo, "env": env_id, "seed": args.seed, "eval_return": mean, "eval_std": std,
        "timesteps": agent.num_timesteps, "wall_s": wall, "fps": agent.num_timesteps / max(wall, 1e-9),
        "logdir": agent._run_dir, "model": save_path, "preset_source": cfg["source"],
    }
    agent.logger.record("eval/mean_reward", mean)
    agent.logger.dump(agent.num_timesteps)
    agent.logger.close()
    return summary


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from rlgeom.serialization import ModelFileError

    try:
        if args.help_hp:
            cls = agent_class(args.algo)
            for name, (default, help_text) in cls.Config.field_help().items():
                print(f"{name:28s} {default!r:>24}  {help_text}")
            return 0
        summary = run(args)
    except (UsageError, ValueError, TypeError, ModelFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(
        f"{summary['algo']} on {summary['env']} (seed {summary['seed']}): eval return "
        f"{summary['eval_return']:.1f} ± {summary['eval_std']:.1f} over {args.eval_episodes} episodes | "
        f"{summary['timesteps']} steps in {summary['wall_s']:.1f} s ({summary['fps']:.0f} steps/s) | "
        f"logs: {summary['logdir']} | model: {summary['model']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
