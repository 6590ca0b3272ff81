"""Issue 29: does the TRPO critic's Adam eps matter? rlgeom's critic Adam took torch's eps (1e-8) until d37118d
(now 1e-5), sb3-contrib's SB3's (1e-5). Two TRPO agents with the MuJoCo preset, the same seed and the same
action noise (so the same weights and, while their policies agree, the same rollouts), one with each eps,
take a few updates side by side, beside a control pair with the same eps (which must stay 0 apart); printed per task:
the critic's Adam denominators √v̂ after the first update (eps is negligible where √v̂ ≫ 1e-5), and how far apart
the two critics and the two policies are after each update, against how far the critic moved.

    OMP_NUM_THREADS=1 python experiments/trpo_adam_eps.py [--updates 3]
"""

from __future__ import annotations

import argparse

import torch

from rlgeom.agents import TRPO
from rlgeom.agents.presets import preset


def build(task: str, eps: float) -> TRPO:
    cfg = preset("trpo", task)
    return TRPO("MlpPolicy", task, n_envs=cfg["n_envs"], seed=0, device="cpu",
                policy_kwargs={**(cfg["policy_kwargs"] or {}), "optimizer_kwargs": {"eps": eps}},
                **cfg["hyperparameters"])


def flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--tasks", nargs="+", default=["Hopper-v5", "HalfCheetah-v5", "Walker2d-v5"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for task in args.tasks:
        a, b, control = build(task, 1e-8), build(task, 1e-5), build(task, 1e-8)
        start = flat(a.policy.critic_parameters())
        for k in range(args.updates):
            for agent in (a, b, control):
                if k == 0:
                    agent._reset_env()
                torch.manual_seed(1000 + k)  # the same action noise for each agent (torch's global generator)
                agent.collect_rollout()
                agent.update(agent.buffer, 1.0)
            if k == 0:
                roots = torch.cat([s["exp_avg_sq"].sqrt().reshape(-1) for s in a.critic_optimizer.state.values()])
                print(f"{task}: critic Adam √v̂ after update 1: median {roots.median():.2e}, 1st percentile "
                      f"{roots.quantile(0.01):.2e}, share below 1e-4: {(roots < 1e-4).float().mean():.1%}")
            critic_a, critic_b = flat(a.policy.critic_parameters()), flat(b.policy.critic_parameters())
            actor_gap = (flat(a.policy.actor_parameters()) - flat(b.policy.actor_parameters())).norm()
            same = (flat(a.policy.parameters()) - flat(control.policy.parameters())).norm()
            print(f"  update {k + 1}: |critic(1e-8) − critic(1e-5)| / |critic(1e-8) − start| = "
                  f"{(critic_a - critic_b).norm() / (critic_a - start).norm():.2e}; |actor gap| {actor_gap:.2e}; "
                  f"control (two 1e-8 agents): parameter gap {same:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
