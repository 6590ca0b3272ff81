"""Cost of one natural-gradient update (issue 3, figure 6).

    python experiments/bench_update_cost.py [REPS_FVP] [REPS_UPDATE]
    python experiments/bench_update_cost.py same-step [ENV_ID]   # one TRPO step, rlgeom vs sb3-contrib

For the default MLP (separate pi/vf 64-64 tanh, orthogonal init) at batch 2048 (n_steps 2048,
1 env, real rollout data from the untrained policy) on CartPole-v1's and Hopper-v5's spaces, times:
  * one Fisher-vector product (F + λI)v with rlgeom.geometry.fisher.PolicyFisher, method gauss_newton
    (forward-mode Jv, analytic F_dist, reverse-mode Jᵀ) and kl_hessian (double backprop of the KL),
    each per call (every product re-reads θ) and inside `PolicyFisher.linearised()` (what CG uses:
    one forward per solve, then for gauss_newton on these MLP actors the written-out Jv and Jᵀu,
    for kl_hessian two reverse passes per product through a retained graph), plus the cost of
    opening that block once;
  * the natural direction (g, 15 CG iterations on those products, KL scaling);
  * a full TRPO update, agent.update(buffer) (direction + line search + 10 critic epochs, batch 128:
    sb3-contrib's defaults), with parameters and optimiser state restored before every repetition;
  * for reference, sb3-contrib TRPO's train() on a full buffer with the same settings (its FVP is the
    KL-Hessian form), parameters restored before every repetition.
Medians (min, IQR) of wall-clock times, and medians of process CPU time (less sensitive to other
processes on the shared cores), over repetitions after warm-up, the two forms timed in turn
(A B A B ...) so that both see the same load of this shared machine; torch.set_num_threads(1).
Writes experiments/results/update_cost.json and prints a markdown table.
"""

from __future__ import annotations

import contextlib
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


def _summary(times: list[float], cpu: list[float]) -> dict:
    t, c = np.array(times) * 1e3, np.array(cpu) * 1e3
    return {"median_ms": float(np.median(t)), "min_ms": float(t.min()), "q25_ms": float(np.percentile(t, 25)),
            "q75_ms": float(np.percentile(t, 75)), "cpu_median_ms": float(np.median(c)), "reps": len(times)}


def timeit(fn, reps: int, warmup: int = 3) -> dict:
    return timeit_interleaved({"x": fn}, reps, warmup)["x"]


def timeit_interleaved(fns: dict, reps: int, warmup: int = 3, setup=None) -> dict:
    """Time several callables rep by rep in turn (A B A B ...), so that they see the same machine load
    (this machine is shared); `setup(name)` runs untimed before each call."""
    for _ in range(warmup):
        for name, fn in fns.items():
            if setup is not None:
                setup(name)
            fn()
    times, cpu = {name: [] for name in fns}, {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            if setup is not None:
                setup(name)
            c, t = time.process_time(), time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    return {name: _summary(times[name], cpu[name]) for name in fns}


def bench_env(env_id: str, reps_fvp: int, reps_update: int) -> dict:
    from rlgeom.agents.natural import natural_direction
    from rlgeom.agents.trpo import TRPO
    from rlgeom.geometry.fisher import PolicyFisher

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
    fishers = {m: PolicyFisher(policy.actor, policy.family, inputs, damping=0.1, method=m)
               for m in ("gauss_newton", "kl_hessian")}
    products = {m: f.fvp(v) for m, f in fishers.items()}
    timed = timeit_interleaved({m: (lambda f=f: f.fvp(v)) for m, f in fishers.items()}, reps_fvp, warmup=10)
    for m in fishers:
        out[f"fvp_{m}"] = timed[m]
    def open_block(f):  # the one forward + graph a CG solve pays for (closing it frees the graph)
        with f.linearised():
            pass

    timed = timeit_interleaved({m: (lambda f=f: open_block(f)) for m, f in fishers.items()}, reps_fvp, warmup=10)
    for m in fishers:
        out[f"linearise_{m}"] = timed[m]
    with contextlib.ExitStack() as blocks:
        for f in fishers.values():
            blocks.enter_context(f.linearised())
        lin_products = {m: f.fvp(v) for m, f in fishers.items()}
        timed = timeit_interleaved({m: (lambda f=f: f.fvp(v)) for m, f in fishers.items()}, reps_fvp, warmup=10)
    for m in fishers:
        out[f"fvp_{m}_linearised"] = timed[m]
        out[f"fvp_{m}_linearised"]["relative_difference_to_per_call"] = float(
            (lin_products[m] - products[m]).norm() / products[m].norm())
    diff = (products["gauss_newton"] - products["kl_hessian"]).norm() / products["kl_hessian"].norm()
    out["fvp_relative_difference"] = float(diff)

    state = copy.deepcopy(policy.state_dict())
    opt_state = copy.deepcopy(agent.critic_optimizer.state_dict())

    def restore():
        policy.load_state_dict(state)
        agent.critic_optimizer.load_state_dict(opt_state)

    def set_method(name):
        agent.config.fisher_method = name.split(":")[1]

    def direction():
        return natural_direction(policy, batch, agent.config, agent.generator)

    timed = timeit_interleaved({"d:gauss_newton": direction, "d:kl_hessian": direction}, reps_update, setup=set_method)
    for method in ("gauss_newton", "kl_hessian"):
        out[f"direction_{method}"] = timed[f"d:{method}"]
        agent.config.fisher_method = method
        out[f"direction_{method}"]["cg_iterations"] = direction().step.cg.iterations  # + 1 product for the residual

    def setup_update(name):
        restore()  # untimed: parameters and critic optimiser state back to the same start
        set_method(name)

    def update():
        agent.update(agent.buffer, 1.0)

    timed = timeit_interleaved({"u:gauss_newton": update, "u:kl_hessian": update}, reps_update, setup=setup_update)
    for method in ("gauss_newton", "kl_hessian"):
        out[f"update_{method}"] = timed[f"u:{method}"]
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

    out["update_sb3_contrib"] = timeit_interleaved({"train": model.train}, reps_update,
                                                   setup=lambda _: sb3_restore())["train"]
    model.get_env().close()
    return out


def same_step(env_id: str = "Hopper-v5") -> dict:
    """One TRPO policy step of rlgeom and of sb3-contrib from the same weights on the same rollout.

    sb3-contrib's KL for a diagonal Gaussian is kl_divergence(Normal, Normal).mean() over batch *and*
    action dimensions, i.e. KL / action_dim; its Fisher, damping and target_kl are therefore those of
    rlgeom's (true, summed) KL divided by action_dim. Prints the steps for rlgeom with the same numbers
    (max_kl 0.01, damping 0.1) and with the equivalent ones (max_kl 0.01·k, damping 0.1·k, k = action_dim).
    """
    from sb3_contrib import TRPO as SB3TRPO
    from torch.distributions import kl_divergence

    from rlgeom.agents.natural import natural_direction
    from rlgeom.agents.trpo import TRPO
    from rlgeom.data.buffer import Batch, normalize
    from rlgeom.geometry.fisher import backtracking_line_search
    from rlgeom.models.parameters import assign_flat_parameters, flat_parameters

    model = SB3TRPO("MlpPolicy", env_id, n_steps=N_STEPS, seed=0, device="cpu", verbose=0)
    _, callback = model._setup_learn(N_STEPS, None)
    callback.on_training_start(locals(), globals())
    model.collect_rollouts(model.env, callback, model.rollout_buffer, N_STEPS)
    rb = model.rollout_buffer
    k = int(np.prod(model.action_space.shape))
    obs = torch.as_tensor(rb.observations.reshape(N_STEPS, -1), dtype=torch.float32)
    act = torch.as_tensor(rb.actions.reshape(N_STEPS, -1), dtype=torch.float32)
    logp = torch.as_tensor(rb.log_probs.reshape(N_STEPS), dtype=torch.float32)
    adv = torch.as_tensor(rb.advantages.reshape(N_STEPS), dtype=torch.float32)
    agent = TRPO("MlpPolicy", None, _spaces=(model.observation_space, model.action_space), seed=0, device="cpu",
                 n_steps=N_STEPS)
    sp = copy.deepcopy(model.policy.state_dict())
    names = ["mlp_extractor.policy_net.0.weight", "mlp_extractor.policy_net.0.bias", "mlp_extractor.policy_net.2.weight",
             "mlp_extractor.policy_net.2.bias", "action_net.weight", "action_net.bias", "log_std"]
    ours = [agent.policy.actor.body[0].weight, agent.policy.actor.body[0].bias, agent.policy.actor.body[2].weight,
            agent.policy.actor.body[2].bias, agent.policy.actor.head.weight, agent.policy.actor.head.bias,
            agent.policy.actor.scale.raw]
    with torch.no_grad():
        for p, n in zip(ours, names):
            p.copy_(sp[n])
    batch = Batch(obs, act, logp, torch.zeros(N_STEPS), normalize(adv), torch.zeros(N_STEPS))
    out = {"env": env_id, "action_dim": k, "logp_max_abs_diff":
           float((agent.policy.get_distribution(obs).log_prob(act) - logp).abs().max())}
    # sb3-contrib's own KL on this batch for a fixed perturbation, vs the true (summed) KL
    model.train()
    sb_delta = torch.cat([(model.policy.state_dict()[n] - sp[n]).flatten() for n in names])
    with torch.no_grad():
        new = model.policy.get_distribution(obs).distribution
        model.policy.load_state_dict(sp)
        old = model.policy.get_distribution(obs).distribution
        kl_sb3 = kl_divergence(new, old).mean().item()  # what sb3-contrib's line search tests (KL(new‖old))
    start = [p.detach().clone() for p in ours]
    for label, max_kl, damping in (("same numbers", 0.01, 0.1), (f"×{k} (equivalent)", 0.01 * k, 0.1 * k)):
        with torch.no_grad():
            for p, s0 in zip(ours, start):
                p.copy_(s0)
        agent.config.max_kl, agent.config.cg_damping = max_kl, damping
        d = natural_direction(agent.policy, batch, agent.config, agent.generator)
        params = d.fisher.parameters
        old_flat = flat_parameters(params)
        res = backtracking_line_search(params, d.step.step, d.improvement_and_kl, max_kl=max_kl,
                                       expected_improvement=d.step.expected_improvement)
        delta = flat_parameters(params) - old_flat
        cos = float(torch.dot(delta, sb_delta) / (delta.norm() * sb_delta.norm()))
        out[label] = {"max_kl": max_kl, "cg_damping": damping, "accepted": res.accepted, "true_kl": res.kl,
                      "step_norm": float(delta.norm()), "cosine_with_sb3": cos,
                      "rel_diff_to_sb3": float((delta - sb_delta).norm() / sb_delta.norm())}
        assign_flat_parameters(params, old_flat)
    out["sb3"] = {"step_norm": float(sb_delta.norm()), "sb3_reported_kl": kl_sb3}
    model.get_env().close()
    return out


def main(argv) -> int:
    from bench_learning import git_state, machine

    if argv and argv[0] == "same-step":
        env_id = argv[1] if len(argv) > 1 else "Hopper-v5"
        out = same_step(env_id)
        print(json.dumps(out, indent=1))
        os.makedirs(os.path.join(ROOT, "experiments", "results"), exist_ok=True)
        with open(os.path.join(ROOT, "experiments", "results", f"same_step_{env_id}.json"), "w") as f:
            json.dump({**out, "git": git_state(), "command": "python experiments/bench_update_cost.py " + " ".join(argv)}, f, indent=1)
        return 0

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
          "rel. diff of products | direction (g + ≤15 CG it.) GN ms | direction KH ms | TRPO update GN ms | "
          "TRPO update KH ms | KH / GN (update) | update min GN / KH ms | sb3-contrib train() ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results["rows"]:
        gn, kh = r["fvp_gauss_newton"]["median_ms"], r["fvp_kl_hessian"]["median_ms"]
        ugn, ukh = r["update_gauss_newton"]["median_ms"], r["update_kl_hessian"]["median_ms"]
        print(f"| {r['env']} | {r['batch']} | {r['actor_parameters']} | {gn:.2f} (min {r['fvp_gauss_newton']['min_ms']:.2f}) | "
              f"{kh:.2f} (min {r['fvp_kl_hessian']['min_ms']:.2f}) | {kh / gn:.2f}× | "
              f"{r['fvp_relative_difference']:.1e} | {r['direction_gauss_newton']['median_ms']:.1f} "
              f"({r['direction_gauss_newton']['cg_iterations']} it) | "
              f"{r['direction_kl_hessian']['median_ms']:.1f} ({r['direction_kl_hessian']['cg_iterations']} it) | {ugn:.1f} | {ukh:.1f} | {ukh / ugn:.2f}× | "
              f"{r['update_gauss_newton']['min_ms']:.1f} / {r['update_kl_hessian']['min_ms']:.1f} | "
              f"{r['update_sb3_contrib']['median_ms']:.1f} |")
    print("\nFisher-vector products inside `linearised()` (what CG uses), wall median ms:\n")
    print("| env | GN per call | GN linearised | speed-up | KH per call | KH linearised | speed-up | "
          "open block GN / KH |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["rows"]:
        m = {k: r[k]["median_ms"] for k in r if isinstance(r[k], dict) and "median_ms" in r[k]}
        print(f"| {r['env']} | {m['fvp_gauss_newton']:.2f} | {m['fvp_gauss_newton_linearised']:.2f} | "
              f"{m['fvp_gauss_newton'] / m['fvp_gauss_newton_linearised']:.2f}× | {m['fvp_kl_hessian']:.2f} | "
              f"{m['fvp_kl_hessian_linearised']:.2f} | {m['fvp_kl_hessian'] / m['fvp_kl_hessian_linearised']:.2f}× | "
              f"{m['linearise_gauss_newton']:.2f} / {m['linearise_kl_hessian']:.2f} |")
    print("\nprocess CPU time, medians (ms):\n")
    print("| env | FVP GN | FVP KH | KH / GN | direction GN | direction KH | update GN | update KH | KH / GN (update) | sb3-contrib train() |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results["rows"]:
        c = {k: r[k]["cpu_median_ms"] for k in r if isinstance(r[k], dict) and "cpu_median_ms" in r[k]}
        print(f"| {r['env']} | {c['fvp_gauss_newton']:.2f} | {c['fvp_kl_hessian']:.2f} | "
              f"{c['fvp_kl_hessian'] / c['fvp_gauss_newton']:.2f}× | {c['direction_gauss_newton']:.1f} | "
              f"{c['direction_kl_hessian']:.1f} | {c['update_gauss_newton']:.1f} | {c['update_kl_hessian']:.1f} | "
              f"{c['update_kl_hessian'] / c['update_gauss_newton']:.2f}× | {c['update_sb3_contrib']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
