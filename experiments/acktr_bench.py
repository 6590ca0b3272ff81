"""ACKTR benchmarks: prints each figure and records it as JSON under experiments/acktr/.

    python experiments/acktr_bench.py cartpole [--seeds 0 1 2] [--timesteps 100000] [--hp key=value ...]
    python experiments/acktr_bench.py overhead [--repeats 30]
    python experiments/acktr_bench.py mujoco --env Hopper-v5 [--timesteps 150000] [--seed 0] [--algo acktr|sb3_a2c]
    python experiments/acktr_bench.py atari --env ALE/Pong-v5 [--timesteps 100000] [--n-envs 16]

Everything runs with torch.set_num_threads(1) (the benchmark machine's two cores are shared).
Agents are built as `python -m rlgeom.train` builds them: the preset of agents/presets.py, then overrides.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

torch.set_num_threads(1)
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
OUT = os.path.join(HERE, "acktr")

from rlgeom.agents import ACKTR  # noqa: E402
from rlgeom.agents.config import parse_hp_value  # noqa: E402
from rlgeom.agents.presets import preset  # noqa: E402
from rlgeom.envs import make_vec_env  # noqa: E402
from rlgeom.training.evaluation import evaluate  # noqa: E402


def record(name: str, payload: dict) -> None:
    os.makedirs(OUT, exist_ok=True)
    payload = {"command": "python " + " ".join(sys.argv), "host": platform.node(), "cpu_threads": 1,
               "torch": torch.__version__, **payload}
    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
        json.dump(payload, f, indent=1)
    print(f"recorded experiments/acktr/{name}.json")


def overrides(pairs: list[str]) -> dict:
    return {k: parse_hp_value(v) for k, _, v in (p.partition("=") for p in pairs)}


def make_agent(env_id: str, seed: int, hp: dict, logdir: str | None = None, n_envs: int | None = None) -> ACKTR:
    cfg = preset("acktr", env_id)
    return ACKTR(cfg["policy"], env_id, n_envs=n_envs or cfg["n_envs"], seed=seed, device="cpu",
                 policy_kwargs=cfg["policy_kwargs"], tensorboard_log=logdir, **{**cfg["hyperparameters"], **hp})


def learn_with_eval(agent, env_id: str, timesteps: int, every: int, episodes: int, seed: int) -> list:
    """Train in `every`-step chunks (one learn() run continued) with a deterministic evaluation after each."""
    from stable_baselines3.common.callbacks import BaseCallback

    curve, eval_env = [], make_vec_env(env_id, 1, device=agent.device)

    class PeriodicEval(BaseCallback):
        def __init__(self):
            super().__init__()
            self.next_eval = every

        def _on_step(self) -> bool:
            if self.model.num_timesteps >= self.next_eval:
                self.next_eval += every
                mean, _ = evaluate(self.model, eval_env, episodes, deterministic=True, seed=seed + 10_000)
                curve.append((int(self.model.num_timesteps), mean))
            return True

    agent.learn(timesteps, callback=PeriodicEval())
    eval_env.close()
    return curve


def cmd_cartpole(args) -> None:
    hp = overrides(args.hp)
    rows = []
    for seed in args.seeds:
        agent = make_agent("CartPole-v1", seed, hp, args.logdir)
        start = time.perf_counter()
        curve = learn_with_eval(agent, "CartPole-v1", args.timesteps, args.eval_every, 5, seed)
        wall = time.perf_counter() - start
        eval_env = make_vec_env("CartPole-v1", 1)
        final, final_std = evaluate(agent, eval_env, 10, deterministic=True, seed=seed + 20_000)
        first = next((s for s, r in curve if r >= 475), None)
        rows.append({"seed": seed, "final_eval_10ep": final, "final_eval_std": final_std,
                     "first_step_eval_ge_475": first, "wall_s": wall, "curve": curve,
                     "trust_region_bound_fraction": agent._updates_bound / max(agent.n_updates, 1)})
        print(f"seed {seed}: final deterministic eval {final:.1f} ± {final_std:.1f}; first periodic eval ≥ 475 at "
              f"{first} steps; {wall:.1f} s; η<1 on {rows[-1]['trust_region_bound_fraction']:.0%} of updates")
    cfg = preset("acktr", "CartPole-v1")
    passed = sum(r["final_eval_10ep"] >= 475 for r in rows)
    print(f"{passed}/{len(rows)} seeds ≥ 475 at {args.timesteps} steps")
    record(args.name or "cartpole", {"timesteps": args.timesteps, "preset": cfg, "overrides": hp, "runs": rows,
                                     "seeds_ge_475": passed})


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up (first K-FAC step also decomposes)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def cmd_overhead(args) -> None:
    """Median time of one update on a fixed batch: ACKTR's K-FAC step vs SGD and Adam on the same loss."""
    import torch.nn.functional as F
    from gymnasium import spaces

    from rlgeom.models.policies import ActorCriticPolicy

    results = []
    cases = [("MLP 64-64, CartPole obs, batch 2048", "MlpPolicy", spaces.Box(-1, 1, (4,), np.float32), 2048),
             ("NatureCNN, 4×84×84, batch 80 (16 envs × 5 steps)", "CnnPolicy",
              spaces.Box(0, 255, (4, 84, 84), np.uint8), 80)]
    for label, policy_name, obs_space, batch in cases:
        act_space = spaces.Discrete(6)
        gen = torch.Generator().manual_seed(0)
        if obs_space.dtype == np.uint8:
            obs = torch.randint(0, 256, (batch, *obs_space.shape), generator=gen, dtype=torch.uint8)
        else:
            obs = torch.randn(batch, *obs_space.shape, generator=gen)
        actions = torch.randint(0, 6, (batch,), generator=gen)
        adv, ret = torch.randn(batch, generator=gen), torch.randn(batch, generator=gen)

        def first_order(opt_cls, **kw):
            torch.manual_seed(0)
            pol = ActorCriticPolicy(obs_space, act_space, policy_name)
            opt = opt_cls(pol.parameters(), **kw)

            def step():
                dist = pol.get_distribution(obs)
                loss = (-(dist.log_prob(actions) * adv).mean() + 0.5 * F.mse_loss(pol.value(obs), ret)
                        - 0.01 * dist.entropy().mean())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(pol.parameters(), 0.5)
                opt.step()
            return step

        torch.manual_seed(0)
        agent = ACKTR(policy_name, None, _spaces=(obs_space, act_space), device="cpu", seed=0, n_steps=batch,
                      update_inverse_every=10)
        buffer = _FixedBuffer(obs, actions, adv, ret)
        plain, refresh, eig = [], [], []  # ACKTR updates without / with the eigendecomposition refresh
        for i in range(args.repeats + 1):
            start = time.perf_counter()
            stats = agent.update(buffer, 1.0)
            elapsed = time.perf_counter() - start
            if i == 0:
                continue  # warm-up
            (refresh if stats["geometry/kfac_inverses_updated"] else plain).append(elapsed)
            if stats["geometry/kfac_inverses_updated"]:
                eig.append(stats["geometry/kfac_inverse_seconds"])
        sgd = _timed(first_order(torch.optim.SGD, lr=0.01, momentum=0.9), args.repeats)
        adam = _timed(first_order(torch.optim.Adam, lr=3e-4), args.repeats)
        step = float(np.median(plain))
        eig_s = float(np.median(eig))
        amortized = step + eig_s / 10
        row = {"case": label, "batch": batch, "sgd_s": sgd, "adam_s": adam, "acktr_step_no_refresh_s": step,
               "eigendecomposition_s": eig_s, "n_refreshes": len(eig), "acktr_amortized_Tinv10_s": amortized,
               "ratio_step_no_refresh_vs_sgd": step / sgd, "ratio_step_no_refresh_vs_adam": step / adam,
               "ratio_amortized_Tinv10_vs_adam": amortized / adam}
        results.append(row)
        print(f"{label}: SGD {sgd * 1e3:.2f} ms, Adam {adam * 1e3:.2f} ms | ACKTR update without refresh "
              f"{step * 1e3:.2f} ms ({step / sgd:.2f}× SGD, {step / adam:.2f}× Adam), eigendecompositions "
              f"{eig_s * 1e3:.0f} ms per refresh, amortised over T_inv=10: {amortized * 1e3:.2f} ms "
              f"({amortized / adam:.2f}× Adam)")
    record("overhead", {"repeats": args.repeats, "results": results})


class _FixedBuffer:
    """The two things ACKTR.update reads from a rollout buffer, for a fixed synthetic batch."""

    def __init__(self, obs, actions, adv, ret):
        from rlgeom.data.buffer import Batch

        self._batch = Batch(obs, actions, torch.zeros(len(adv)), torch.zeros(len(adv)), adv, ret)
        self.values, self.returns = torch.zeros(len(adv)), ret

    def full_batch(self, normalize_advantage=False):
        return self._batch


def cmd_mujoco(args) -> None:
    env_id, seed = args.env, args.seed
    start = time.perf_counter()
    if args.algo == "acktr":
        agent = make_agent(env_id, seed, overrides(args.hp), args.logdir)
        curve = learn_with_eval(agent, env_id, args.timesteps, args.eval_every, 5, seed)
        wall = time.perf_counter() - start
        mean, std = evaluate(agent, make_vec_env(env_id, 1), 10, deterministic=True, seed=seed + 20_000)
        train_return = float(np.mean([e["r"] for e in agent.ep_info_buffer])) if agent.ep_info_buffer else None
        extra = {"preset": preset("acktr", env_id), "overrides": overrides(args.hp),
                 "trust_region_bound_fraction": agent._updates_bound / max(agent.n_updates, 1)}
    else:  # SB3 A2C with rl-baselines3-zoo's MuJoCo settings: normalize (VecNormalize), A2C defaults otherwise
        from stable_baselines3 import A2C
        from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env
        from stable_baselines3.common.evaluation import evaluate_policy
        from stable_baselines3.common.vec_env import VecNormalize

        venv = VecNormalize(sb3_make_vec_env(env_id, n_envs=1, seed=seed), gamma=0.99)
        model = A2C("MlpPolicy", venv, seed=seed, device="cpu", verbose=0)
        curve = []
        from stable_baselines3.common.callbacks import BaseCallback

        eval_venv = VecNormalize(sb3_make_vec_env(env_id, n_envs=1, seed=seed + 10_000), training=False,
                                 norm_reward=False)

        class PeriodicEval(BaseCallback):
            def __init__(self):
                super().__init__()
                self.next_eval = args.eval_every

            def _on_step(self) -> bool:
                if self.num_timesteps >= self.next_eval:
                    self.next_eval += args.eval_every
                    eval_venv.obs_rms = venv.obs_rms
                    m, _ = evaluate_policy(self.model, eval_venv, 5, deterministic=True)
                    curve.append((int(self.num_timesteps), float(m)))
                return True

        model.learn(args.timesteps, callback=PeriodicEval())
        wall = time.perf_counter() - start
        eval_venv.obs_rms = venv.obs_rms
        mean, std = evaluate_policy(model, eval_venv, 10, deterministic=True)
        mean, std = float(mean), float(std)
        train_return = float(np.mean([e["r"] for e in model.ep_info_buffer])) if model.ep_info_buffer else None
        extra = {"settings": "rl-baselines3-zoo a2c.yml mujoco defaults: normalize=true (VecNormalize), "
                             "SB3 A2C defaults (n_envs 1, n_steps 5, RMSprop lr 7e-4)"}
    print(f"{args.algo} on {env_id} (seed {seed}), {args.timesteps} steps in {wall:.0f} s: deterministic eval "
          f"{mean:.1f} ± {std:.1f} (10 episodes); training ep_rew_mean (last 100) {train_return}")
    record(args.name or f"mujoco_{args.algo}_{env_id.split('-')[0]}",
           {"env": env_id, "algo": args.algo, "seed": seed, "timesteps": args.timesteps, "wall_s": wall,
            "eval_mean": mean, "eval_std": std, "train_ep_rew_mean_last100": train_return, "curve": curve, **extra})


def cmd_atari(args) -> None:
    agent = make_agent(args.env, args.seed, overrides(args.hp), args.logdir, n_envs=args.n_envs)
    log = []

    original = agent.update

    def update(buffer, progress_remaining):
        stats = original(buffer, progress_remaining)
        rew = float(np.mean([e["r"] for e in agent.ep_info_buffer])) if agent.ep_info_buffer else None
        log.append({"step": agent.num_timesteps, "ep_rew_mean": rew, "n_episodes": len(agent.ep_info_buffer),
                    **{k: stats.get(k) for k in ("train/value_loss", "train/explained_variance",
                                                 "train/entropy_loss", "geometry/eta")}})
        return stats

    agent.update = update
    start = time.perf_counter()
    agent.learn(args.timesteps)
    wall = time.perf_counter() - start
    returns = [e["r"] for e in agent.ep_info_buffer]
    print(f"ACKTR on {args.env}: {agent.num_timesteps} steps ({4 * agent.num_timesteps} frames) in {wall:.0f} s "
          f"({agent.num_timesteps / wall:.0f} steps/s), {len(returns)} episodes in the last-100 window")
    record(args.name or f"atari_{args.env.replace('/', '_')}",
           {"env": args.env, "seed": args.seed, "n_envs": args.n_envs, "timesteps": args.timesteps, "wall_s": wall,
            "preset": preset("acktr", args.env), "overrides": overrides(args.hp), "log": log})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cartpole")
    c.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    c.add_argument("--timesteps", type=int, default=100_000)
    c.add_argument("--eval-every", type=int, default=5_000)
    o = sub.add_parser("overhead")
    o.add_argument("--repeats", type=int, default=20)
    m = sub.add_parser("mujoco")
    m.add_argument("--env", default="Hopper-v5")
    m.add_argument("--algo", default="acktr", choices=["acktr", "sb3_a2c"])
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--timesteps", type=int, default=150_000)
    m.add_argument("--eval-every", type=int, default=25_000)
    a = sub.add_parser("atari")
    a.add_argument("--env", default="ALE/Pong-v5")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--n-envs", type=int, default=16)
    a.add_argument("--timesteps", type=int, default=100_000)
    for s in (c, m, a, o):
        s.add_argument("--hp", nargs="*", default=[], metavar="KEY=VALUE")
        s.add_argument("--name", default=None, help="record name (default: per command)")
        s.add_argument("--logdir", default=None, help="TensorBoard root (default: none)")
    args = p.parse_args()
    {"cartpole": cmd_cartpole, "overhead": cmd_overhead, "mujoco": cmd_mujoco, "atari": cmd_atari}[args.cmd](args)


if __name__ == "__main__":
    main()
