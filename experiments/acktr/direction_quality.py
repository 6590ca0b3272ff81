"""Is K-FAC's step direction worse per unit of KL than the exact natural gradient's? (issue 29, part 1)

    python experiments/acktr/direction_quality.py --env Walker2d-v5 --seed 100 --at 100000,250000
    python experiments/acktr/direction_quality.py --env Walker2d-v5 --seed 100 --net 256,256 --at 100000

At equal measured KL, NPG (the exact Fisher by conjugate gradient) learns Walker2d where ACKTR (K-FAC) stalls
(experiments/acktr/RESULTS.md §0.10). The arms change a whole agent at a time; this script isolates the one
thing left, the direction of the policy step, on fixed data:

1. Train rlgeom NPG (TRPO's preset for the task, max_kl 0.02: the npg-kl10 arm, which learns) to each step
   count in --at: a policy part-way through learning, with its own critic and normalisation.
2. Collect one batch A (the preset's n_steps × n_envs) and --heldout more batches B₁..B_k from that policy,
   with GAE advantages from its critic, standardised per batch.
3. On batch A, compute several directions d for the actor's parameters from the same gradient g of the
   surrogate L(θ) = E[π_θ(a|s)/π_old(a|s) Â]:
     gradient          g itself;
     cg λ=…, n it      the exact natural gradient, CG on (F + λI) x = g with n iterations (NPG's is its preset's
                       cg_damping and cg_max_steps);
     kfac λ=… (form)   ACKTR's: K-FAC's (A ⊗ G + λI)⁻¹ per layer from A's sampled-target statistics
                       (rlgeom.geometry.kfac), log σ by its exact diagonal block (F_logσ + λ)⁻¹, as agents/acktr.py.
4. Scale each d so that its *measured* mean KL(π_old ‖ π_θ+sd) on A is --kl, then report the surrogate
   improvement L(θ + s d) − L(θ) on A (in-sample) and on each held-out batch (its mean ± standard error over
   the batches: the improvement of the policy itself, not of the fit to A's noise) and its paired difference
   from NPG's direction on the same batches (the sharper test), the share of the step's
   exact quadratic form that is log σ's, the cosine with the most exact direction in the Fisher metric, and, for
   the K-FAC directions, the exact dᵀFd over K-FAC's own dᵀF̂d (the quadratic form ACKTR's trust region uses:
   above 1, the trust region under-predicts the step's KL by that factor).

Nothing here trains ACKTR: the directions are compared on the same policy and the same batches. Results go to
experiments/results/acktr_direction/<env>_<net>_seed<k>.json (--out) and the table to stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from agents import NPG  # noqa: E402
from agents.natural import surrogate  # noqa: E402
from agents.presets import preset  # noqa: E402
from rlgeom.geometry.fisher import PolicyFisher, conjugate_gradient  # noqa: E402
from rlgeom.geometry.kfac import KFACPreconditioner  # noqa: E402
from rlgeom.models.parameters import assign_flat_parameters, flat_gradient, flat_parameters, unflatten  # noqa: E402
from rlgeom.tools.benchmark import code_identity  # noqa: E402

OUT = os.path.join(ROOT, "experiments", "results", "acktr_direction")
CG_DIRECTIONS = ((0.6, 15), (0.1, 15), (0.01, 15), (1e-3, 100))  # (λ, iterations); the last is the reference
KFAC_DIRECTIONS = ((1e-3, "eigen"), (1e-2, "eigen"), (1e-1, "eigen"), (0.6, "eigen"), (1.0, "eigen"),
                   (1e-2, "tikhonov"), (1e-1, "tikhonov"))


def collect_batch(agent):
    """One rollout from the agent's current policy, without updating it: the second-order agents' batch."""
    agent.collect_rollout()  # learn() updates the observation normaliser after an update; this does not
    return agent.buffer.full_batch(normalize_advantage=True)


def fisher_on(policy, batch, damping: float = 0.0) -> PolicyFisher:
    return PolicyFisher(policy.actor, policy.family, policy.actor_inputs(batch.obs), damping=damping)


def cg_direction(fisher: PolicyFisher, g: torch.Tensor, damping: float, iterations: int) -> torch.Tensor:
    fisher.damping = damping
    with fisher.linearised():
        return conjugate_gradient(fisher.fvp, g, iterations, 1e-10).solution


def kfac_direction(policy, batch, fisher: PolicyFisher, g: torch.Tensor, damping: float, form: str,
                   seed: int) -> tuple[torch.Tensor, float]:
    """ACKTR's direction for the actor: K-FAC blocks of this batch's sampled-target statistics for the
    layers, and log σ's exact diagonal block (read from F by Fisher-vector products), each damped by λ.
    -> (d, dᵀF̂d under ACKTR's model: the undamped K-FAC blocks and log σ's exact one)"""
    params = fisher.parameters
    kfac = KFACPreconditioner(policy.actor, damping=damping, damping_form=form)
    try:
        torch.manual_seed(seed)  # the sampled targets ã ~ π(·|s)
        dist_params = policy.actor(policy.actor_inputs(batch.obs))
        with torch.no_grad():
            a_tilde = policy.family.sample(dist_params)
        for p in params:
            p.grad = None
        with kfac.track_statistics() as collecting:
            assert collecting
            (-policy.family.log_prob(dist_params, a_tilde).mean()).backward()
        for p, part in zip(params, unflatten(g.clone(), params)):
            p.grad = part.clone()
        stats = kfac.step()
        assert stats.finite, "K-FAC step not finite"
        scale = policy.actor.scale.raw
        fisher.damping = 0.0
        offset = flat_offset(params, scale)
        with fisher.linearised():
            diag = torch.stack([fisher.fvp(unit_vector(g, offset + i))[offset + i] for i in range(scale.numel())])
        scale.grad = scale.grad / (diag.reshape_as(scale) + damping)
        d = torch.cat([p.grad.reshape(-1) for p in params])
        # ACKTR's quadratic model of d's KL: the undamped K-FAC blocks plus log σ's exact block (its trust region)
        model_quad = kfac.fisher_quadratic_form({p: p.grad for p in params if p is not scale})
        model_quad = float(model_quad + (diag.reshape_as(scale) * scale.grad.pow(2)).sum())
        return d, model_quad
    finally:
        kfac.remove_hooks()
        for p in params:
            p.grad = None


def flat_offset(params: list, param: torch.Tensor) -> int:
    """Where `param` starts in the flat vector of `params` (rlgeom.models.parameters' order)."""
    return sum(p.numel() for p in params[: [id(p) for p in params].index(id(param))])


def unit_vector(like: torch.Tensor, index: int) -> torch.Tensor:
    e = torch.zeros_like(like)
    e[index] = 1.0
    return e


@torch.no_grad()
def improvement_and_kl(policy, fisher: PolicyFisher, batch, params, theta, step) -> tuple[float, float]:
    """(L(θ + step) − L(θ), mean KL(π_θ ‖ π_θ+step)) on one batch; `fisher` snapshots π_θ on it."""
    before = float(surrogate(fisher, batch))
    assign_flat_parameters(params, theta + step)
    try:
        after_params = policy.actor(fisher.inputs)
        after = float(surrogate(fisher, batch, after_params))
        kl = float(fisher.mean_kl(after_params))
    finally:
        assign_flat_parameters(params, theta)
    return after - before, kl


def scale_to_kl(policy, fisher: PolicyFisher, batch, params, theta, d, target: float) -> float:
    """s with mean KL(π_θ ‖ π_θ+sd) = target on `batch` (bisection on log s; the KL grows with s)."""
    low, high = 0.0, 1.0
    while improvement_and_kl(policy, fisher, batch, params, theta, high * d)[1] < target:
        low, high = high, high * 4.0
        if high > 1e12:
            return high
    for _ in range(40):
        mid = 0.5 * (low + high) if low == 0.0 else math.sqrt(low * high)
        if improvement_and_kl(policy, fisher, batch, params, theta, mid * d)[1] < target:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def measure(agent, args, at: int) -> dict:
    policy = agent.policy
    batch = collect_batch(agent)
    heldout = [collect_batch(agent) for _ in range(args.heldout)]
    fisher = fisher_on(policy, batch)
    params = fisher.parameters
    theta = flat_parameters(params).detach().clone()
    g = flat_gradient(surrogate(fisher, batch), params).detach()
    directions = {"gradient": g}
    for damping, iterations in CG_DIRECTIONS:
        directions[f"cg λ={damping:g}, {iterations} it"] = cg_direction(fisher, g, damping, iterations)
    model_quads = {}  # ACKTR's own quadratic form of each K-FAC direction
    for damping, form in KFAC_DIRECTIONS:
        name = f"kfac λ={damping:g} ({form})"
        directions[name], model_quads[name] = kfac_direction(policy, batch, fisher, g, damping, form, args.seed)
    reference = directions[f"cg λ={CG_DIRECTIONS[-1][0]:g}, {CG_DIRECTIONS[-1][1]} it"]
    fisher.damping = 0.0
    scale = policy.actor.scale.raw
    offset = flat_offset(params, scale)
    snapshots = {id(b): fisher_on(policy, b) for b in [batch, *heldout]}  # π_θ on each batch, taken once
    rows = []
    with fisher.linearised():
        f_reference = fisher.fisher_product(reference)
        for name, d in directions.items():
            fd = fisher.fisher_product(d)
            quad = float(d @ fd)
            sigma_part = torch.zeros_like(d)
            sigma_part[offset: offset + scale.numel()] = d[offset: offset + scale.numel()]
            sigma_quad = float(sigma_part @ fisher.fisher_product(sigma_part))
            cosine = float(d @ f_reference) / math.sqrt(max(quad * float(reference @ f_reference), 1e-300))
            s = scale_to_kl(policy, snapshots[id(batch)], batch, params, theta, d, args.kl)
            in_sample, kl = improvement_and_kl(policy, snapshots[id(batch)], batch, params, theta, s * d)
            held = [improvement_and_kl(policy, snapshots[id(b)], b, params, theta, s * d) for b in heldout]
            gains = [h[0] for h in held]
            rows.append({
                "direction": name, "in_sample": in_sample, "kl": kl,
                "heldout_mean": statistics.fmean(gains),
                "heldout_se": statistics.stdev(gains) / math.sqrt(len(gains)) if len(gains) > 1 else float("nan"),
                "heldout_kl": statistics.fmean(h[1] for h in held), "heldout_gains": gains,
                "log_std_share": sigma_quad / quad if quad > 0 else float("nan"),
                "predicted_kl": 0.5 * s * s * quad, "fisher_cosine_to_reference": cosine,
                # how far K-FAC's own quadratic form (the trust region's) is below the exact one on this step
                "exact_over_kfac_quadratic": quad / model_quads[name] if name in model_quads else float("nan"),
            })
    npg = next(r for r in rows if r["direction"].startswith(f"cg λ={CG_DIRECTIONS[0][0]:g},"))
    for r in rows:  # the same held-out batches for every direction: the paired difference is the sharper test
        diffs = [a - b for a, b in zip(r["heldout_gains"], npg["heldout_gains"])]
        r["heldout_minus_npg"] = statistics.fmean(diffs)
        r["heldout_minus_npg_se"] = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    episodes = [info["r"] for info in agent.ep_info_buffer]
    return {"at": at, "ep_rew_mean": statistics.fmean(episodes) if episodes else float("nan"),
            "sigma": float(policy.actor.scale().detach().exp().mean()),
            "batch": len(batch), "rows": rows}


def print_table(result: dict, kl: float) -> None:
    print(f"\n{result['env']} seed {result['seed']}, net {result['net']}, at {result['at']} steps "
          f"(training return {result['ep_rew_mean']:.0f}, σ {result['sigma']:.2f}); every step scaled to a measured "
          f"KL of {kl:g} on batch A")
    print("| direction | gain on A | gain held out (mean ± s.e.) | minus NPG's, paired (mean ± s.e.) | KL held out | "
          "log σ share of dᵀFd | Fisher cosine to cg λ=0.001 | exact dᵀFd ÷ K-FAC's dᵀF̂d |")
    print("|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['direction']} | {r['in_sample']:.4f} | {r['heldout_mean']:.4f} ± {r['heldout_se']:.4f} | "
              f"{r['heldout_minus_npg']:+.4f} ± {r['heldout_minus_npg_se']:.4f} | {r['heldout_kl']:.4f} | "
              f"{r['log_std_share']:.3f} | {r['fisher_cosine_to_reference']:.2f} | "
              f"{'—' if math.isnan(r['exact_over_kfac_quadratic']) else format(r['exact_over_kfac_quadratic'], '.1f')} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="Walker2d-v5")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--at", default="100000,250000", help="step counts at which to measure, comma-separated")
    parser.add_argument("--net", default="64,64", help="the policy's hidden layers (NPG's preset: 64,64; ACKTR's: 256,256)")
    parser.add_argument("--max-kl", type=float, default=0.02, help="NPG's max_kl while training to each --at")
    parser.add_argument("--kl", type=float, default=0.01, help="the measured KL each direction is scaled to")
    parser.add_argument("--heldout", type=int, default=8, help="held-out batches")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    at = sorted(int(x) for x in args.at.split(","))
    net = [int(x) for x in args.net.split(",")]
    cfg = preset("npg", args.env)
    agent = NPG(cfg["policy"], args.env, n_envs=cfg["n_envs"], seed=args.seed,
                policy_kwargs={**cfg["policy_kwargs"], "net_arch": net},
                **{**cfg["hyperparameters"], "max_kl": args.max_kl})
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{args.env}_{'x'.join(map(str, net))}_seed{args.seed}.json")
    record = {"command": "python experiments/acktr/direction_quality.py " + " ".join(argv or sys.argv[1:]),
              "code": code_identity(), "results": []}
    for steps in at:
        start = time.perf_counter()
        if steps > agent.num_timesteps:
            agent.learn(steps - agent.num_timesteps, reset_num_timesteps=agent.num_timesteps == 0)
        result = {"env": args.env, "seed": args.seed, "net": args.net, **measure(agent, args, steps),
                  "wall_s": time.perf_counter() - start}
        record["results"].append(result)
        print_table(result, args.kl)
        with open(path, "w") as f:
            json.dump(record, f, indent=1)
    print(f"\nrecord: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
