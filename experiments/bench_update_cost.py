"""Cost of one natural-gradient update (issue 3, figure 6).

    python experiments/bench_update_cost.py [REPS_FVP] [REPS_UPDATE]

For the default MLP (separate pi/vf 64-64 tanh, orthogonal init) at batch 2048 (n_steps 2048,
1 env, real rollout data from the untrained policy) on CartPole-v1's and Hopper-v5's spaces, times:
  * one Fisher-vector product (F + λI)v with rlgeom.fisher.PolicyFisher, method gauss_newton
    (forward-mode Jv, analytic F_dist, reverse-mode Jᵀ) and kl_hessian (double backprop of the KL);
  * the natural direction (g, 15 CG iterations on those products, KL scaling);
  * a full TRPO update, agent.update(buffer) (direction + line search + 10 critic epochs, batch 128:
    sb3-contrib's defaults), with parameters and optimiser state restored before every repetition;
  * for reference, sb3-contrib TRPO's train() on a full buffer with the same settings (its FVP is the
    KL-Hessian form), parameters restored before every repetition.
Medians (and IQR) of wall-clock times over repetitions, after warm-up; torch.set_num_threads(1).
Writes experiments/results/update_cost.json and prints a markdown table.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time

import numpy as np
import torch

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))
N_STEPS = 2048


def timeit(fn, reps: int, warmup: int = 3) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    t = np.array(times) * 1e3
    return {"median_ms": float(np.median(t)), "q25_ms": float(np.percentile(t, 25)),
            "q75_ms": float(np.percentile(t, 75)), "reps": reps}


def bench_env(env_id: str, reps_fvp: int, reps_update: int) -> dict:
    from agents.natural import natural_direction
    from agents.trpo import TRPO
    from rlgeom.fisher import PolicyFisher

    out = {"env": env_id}
    agent = TRPO("MlpPolicy", env_id, n_envs=1, seed=0, device="cpu", n_steps=N_STEPS)
    agent._reset_env()
    agent.collect_rollout()
    batch = agent.buffer.full_batch(True)
    policy = agent.policy
    inputs = policy.actor_inputs(batch.obs)
    out["batch"] = int(inputs.shape[0])
    out["actor_parameters"] = sum(p.numel() for p in policy.actor_parameters())
    v = torch.randn(out["actor_parameters"], generator=torch.Generator().manual_seed(1))
    products = {}
    for method in ("gauss_newton", "kl_hessian"):
        fisher = PolicyFisher(policy.actor, policy.family, inputs, damping=0.1, method=method)
        products[method] = fisher.fvp(v)
        out[f"fvp_{method}"] = timeit(lambda: fisher.fvp(v), reps_fvp, warmup=10)
    diff = (products["gauss_newton"] - products["kl_hessian"]).norm() / products["kl_hessian"].norm()
    out["fvp_relative_difference"] = float(diff)

    state = copy.deepcopy(policy.state_dict())
    opt_state = copy.deepcopy(agent.critic_optimizer.state_dict())

    def restore():
        policy.load_state_dict(state)
        agent.critic_optimizer.load_state_dict(opt_state)

    for method in ("gauss_newton", "kl_hessian"):
        agent.config.fisher_method = method
        out[f"direction_{method}"] = timeit(lambda: natural_direction(policy, batch, agent.config, agent.generator),
                                            reps_update)

        def update():
            restore()
            agent.update(agent.buffer, 1.0)

        restore_time = timeit(restore, reps_update)["median_ms"]
        r = timeit(update, reps_update)
        r["restore_ms_subtracted"] = restore_time
        for k in ("median_ms", "q25_ms", "q75_ms"):
            r[k] -= restore_time
        out[f"update_{method}"] = r
    restore()
    agent.env.close()

    # sb3-contrib TRPO reference: same defaults (n_steps 2048, batch 128, cg 15, 10 critic epochs).
    from sb3_contrib import TRPO as SB3TRPO

    model = SB3TRPO("MlpPolicy", env_id, n_steps=N_STEPS, seed=0, device="cpu", verbose=0)
    model.learn(N_STEPS)  # one rollout + one train(); the buffer stays full
    sb3_state = copy.deepcopy(model.policy.state_dict())
    sb3_opt = copy.deepcopy(model.policy.optimizer.state_dict())

    def sb3_restore():
        model.policy.load_state_dict(sb3_state)
        model.policy.optimizer.load_state_dict(sb3_opt)

    def sb3_update():
        sb3_restore()
        model.train()

    rt = timeit(sb3_restore, reps_update)["median_ms"]
    r = timeit(sb3_update, reps_update)
    r["restore_ms_subtracted"] = rt
    for k in ("median_ms", "q25_ms", "q75_ms"):
        r[k] -= rt
    out["update_sb3_contrib"] = r
    model.get_env().close()
    return out


def main(argv) -> int:
    from bench_learning import git_state, machine

    reps_fvp = int(argv[0]) if argv else 200
    reps_update = int(argv[1]) if len(argv) > 1 else 15
    results = {"machine": machine(), "git": git_state(), "command": "python experiments/bench_update_cost.py "
               + " ".join(argv), "rows": []}
    for env_id in ("CartPole-v1", "Hopper-v5"):
        row = bench_env(env_id, reps_fvp, reps_update)
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
    results["loadavg_end"] = os.getloadavg()
    os.makedirs(os.path.join(ROOT, "experiments", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "experiments", "results", "update_cost.json"), "w") as f:
        json.dump(results, f, indent=1)
    print("\n| env | batch | actor params | FVP gauss_newton ms | FVP kl_hessian ms | kl_hessian / gauss_newton | "
          "rel. diff of products | direction (g + 15 CG) GN ms | direction KH ms | TRPO update GN ms | "
          "TRPO update KH ms | KH / GN (update) | sb3-contrib train() ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results["rows"]:
        gn, kh = r["fvp_gauss_newton"]["median_ms"], r["fvp_kl_hessian"]["median_ms"]
        ugn, ukh = r["update_gauss_newton"]["median_ms"], r["update_kl_hessian"]["median_ms"]
        print(f"| {r['env']} | {r['batch']} | {r['actor_parameters']} | {gn:.3f} | {kh:.3f} | {kh / gn:.2f}× | "
              f"{r['fvp_relative_difference']:.1e} | {r['direction_gauss_newton']['median_ms']:.1f} | "
              f"{r['direction_kl_hessian']['median_ms']:.1f} | {ugn:.1f} | {ukh:.1f} | {ukh / ugn:.2f}× | "
              f"{r['update_sb3_contrib']['median_ms']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
