"""Why ACKTR trails TRPO and PPO on HalfCheetah-v5 at 1M (issue 16): controlled arms on diagnostic seeds.

    python experiments/diag_acktr_halfcheetah.py run --arm critic-steps-25 --seed 100
    python experiments/diag_acktr_halfcheetah.py summary
    python experiments/diag_acktr_halfcheetah.py sigma-share --seed 100 --timesteps 61440 [--hp damping=0.6]

The grid's ACKTR runs fit the critic badly on HalfCheetah (median explained variance 0.11-0.21 where
TRPO's is 0.8-0.99) and keep σ near 1 on every task (RESULTS_grid_1m.md, "ACKTR on MuJoCo"). Each arm changes one thing against `baseline` (the CLI preset), trains
300k steps (--timesteps) on seeds that are not the grid's (100, 101, 102), and ends with the CLI's
deterministic evaluation of 10 episodes. Runs go to experiments/results/acktr_halfcheetah/<arm>/ (events and
run.json; the model is not kept); `summary` prints, per arm and seed, the final evaluation, the median
explained variance of the critic on fresh data (before its fit), after its fit where the arm logs it, and σ:

  baseline          the preset: one joint K-FAC step per update (A2C's), per-network trust region, λ = 1;
  critic-steps-25   then 24 more K-FAC steps of the critic alone on the same batch, each in its own trust
                    region (openai/baselines' continuous ACKTR fits its value function with 25 K-FAC steps
                    per batch); the learning rate is the update's (the actor's target_kl adaptation included);
  critic-steps-25-own-lr   the same, the extra steps at the scheduled learning rate (no target_kl adaptation);
  gae-0.97          GAE λ = 0.97 (baselines' continuous ACKTR) instead of the n-step returns;
  kl-budget-x10     target_kl 0.02 and kl_clip 0.1 instead of 0.002 and 0.01 (the policy's KL per update
                    ten times larger, the clip kept at 5× the target);
  damping-0.6       K-FAC damping λ = 0.6 (the damping of TRPO's HalfCheetah preset, 0.1 × 6) instead of
                    baselines' 0.01, for the weights' blocks and log σ's alike.

The two critic-steps arms patch ACKTR.update in this process only (one process per run), so nothing else
sees them.

`sigma-share` trains the preset (or it with --hp overrides) for a few updates and prints how the actor's trust-region quadratic form
ΔᵀF̂Δ splits between the network's weights (K-FAC blocks) and log σ (its exact block 2I): the share log σ
gets of the KL budget, and its fresh step |Δ log σ| per update.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "experiments", "results", "acktr_halfcheetah")
TASK = "HalfCheetah-v5"
ARMS = ("baseline", "critic-steps-25", "critic-steps-25-own-lr", "gae-0.97", "kl-budget-x10", "damping-0.6")


def patch_critic_steps(extra_steps: int, own_lr: bool) -> None:
    """After ACKTR's update, `extra_steps` K-FAC steps of the critic alone on the value loss of the same batch."""
    import rlgeom.agents.acktr as acktr
    from rlgeom.agents.critic import explained_variance
    from rlgeom.geometry.fisher import kl_scale
    from rlgeom.training.schedules import schedule_value

    joint_update = acktr.ACKTR.update

    def update(self, buffer, progress_remaining):
        stats = joint_update(self, buffer, progress_remaining)
        cfg = self.config
        batch = buffer.full_batch(cfg.normalize_advantage)
        lr = stats["train/learning_rate"]
        if own_lr:
            lr = schedule_value(cfg.learning_rate, progress_remaining)
            for group in self.optimizer.param_groups:
                group["lr"] = self._sgd_step_size(lr)
        critic = self.policy.critic_parameters()
        for _ in range(extra_steps):
            self.optimizer.zero_grad(set_to_none=True)
            out = self.policy.outputs(batch.obs, actor=False)
            out.backward(cfg.vf_coef * F.mse_loss(out.values, batch.returns))
            torch.nn.utils.clip_grad_norm_(critic, cfg.max_grad_norm)
            # precondition with the current eigendecompositions: these steps do not advance K-FAC's
            # refresh counter (the inverses stay refreshed every update_inverse_every updates)
            counted = self.kfac._steps
            self.kfac._steps = 1
            self.kfac.step()
            self.kfac._steps = counted
            steps = {p: -lr * p.grad for p in critic if p.grad is not None}
            eta = kl_scale(self.kfac.fisher_quadratic_form(steps), cfg.kl_clip, clip=True)
            for p in critic:
                if p.grad is not None:
                    p.grad.mul_(eta)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            values = self.policy.outputs(batch.obs, actor=False).values
        stats["train/ev_after_fit"] = explained_variance(values, batch.returns).item()
        return stats

    acktr.ACKTR.update = update


def run(arm: str, seed: int, timesteps: int, out: str) -> int:
    from rlgeom.train import main as train

    extra = []
    if arm == "critic-steps-25":
        patch_critic_steps(24, own_lr=False)
    elif arm == "critic-steps-25-own-lr":
        patch_critic_steps(24, own_lr=True)
    elif arm == "gae-0.97":
        extra = ["--hp", "gae_lambda=0.97"]
    elif arm == "kl-budget-x10":
        extra = ["--hp", "target_kl=0.02", "kl_clip=0.1"]
    elif arm == "damping-0.6":
        extra = ["--hp", "damping=0.6"]
    logdir = os.path.join(out, arm)
    code = train(["--algo", "acktr", "--env", TASK, "--seed", str(seed), "--timesteps", str(timesteps),
                  "--logdir", logdir, "--no-progress", *extra])
    model = os.path.join(logdir, TASK, "acktr", f"seed{seed}", "model.safetensors")
    if os.path.exists(model):
        os.remove(model)  # 5 MB per run; the events and run.json are the record
    return code


def sigma_share(seed: int, timesteps: int, out: str, hyperparameters: list[str]) -> int:
    """The median share of log σ in the actor's ΔᵀF̂Δ and its median |Δ log σ| per fresh step, over the updates."""
    import rlgeom.agents.acktr as acktr
    from rlgeom.train import main as train

    shares, sigma_steps = [], []
    quadratic_form = acktr.ACKTR._quadratic_form

    def recorded(self, group, steps, scale_fisher):
        total = quadratic_form(self, group, steps, scale_fisher)
        if scale_fisher is not None and any(p is self._scale_param for p in group):
            weights_only = quadratic_form(self, group, steps, None)  # the K-FAC blocks without log σ's
            shares.append(float((total - weights_only) / total))
            sigma_steps.append(float(steps[self._scale_param].abs().mean()))
        return total

    acktr.ACKTR._quadratic_form = recorded
    code = train(["--algo", "acktr", "--env", TASK, "--seed", str(seed), "--timesteps", str(timesteps),
                  "--logdir", os.path.join(out, "sigma-share", *hyperparameters), "--no-progress", "--eval-episodes", "1",
                  *(["--hp", *hyperparameters] if hyperparameters else [])])
    print(f"{len(shares)} updates: log σ's share of the actor's ΔᵀF̂Δ, median {statistics.median(shares):.4f}, "
          f"max {max(shares):.4f}; |Δ log σ| per fresh step (lr included, before η and momentum), median "
          f"{statistics.median(sigma_steps):.2e}")
    return code


def _scalars(run_dir: str) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents*")))
    acc = EventAccumulator(files[-1], size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def summary(out: str) -> None:
    print("| arm | seed | final eval (10 ep) | critic EV on fresh data (median) | EV after the fit (median) | σ at the end |")
    print("|---|---|---|---|---|---|")
    for arm in ARMS:
        for run_dir in sorted(glob.glob(os.path.join(out, arm, TASK, "acktr", "seed*"))):
            s = _scalars(run_dir)
            if "eval/mean_reward" not in s:
                continue
            after = s.get("train/ev_after_fit")
            print(f"| {arm} | {run_dir.rsplit('seed', 1)[1]} | {s['eval/mean_reward'][-1]:.1f} | "
                  f"{statistics.median(s['train/explained_variance']):.2f} | "
                  f"{'—' if after is None else f'{statistics.median(after):.2f}'} | {s['train/std'][-1]:.3f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train one arm on one seed")
    r.add_argument("--arm", choices=ARMS, required=True)
    r.add_argument("--seed", type=int, required=True)
    r.add_argument("--timesteps", type=int, default=300_000)
    r.add_argument("--out", default=OUT)
    s = sub.add_parser("summary", help="print the table of what is recorded")
    s.add_argument("--out", default=OUT)
    q = sub.add_parser("sigma-share", help="how the actor's KL budget splits between the weights and log σ")
    q.add_argument("--seed", type=int, default=100)
    q.add_argument("--timesteps", type=int, default=61_440)
    q.add_argument("--out", default="/tmp/rlgeom_acktr_sigma_share")
    q.add_argument("--hp", nargs="*", default=[], metavar="KEY=VALUE", help="hyperparameters over the preset's")
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args.arm, args.seed, args.timesteps, args.out)
    if args.command == "sigma-share":
        return sigma_share(args.seed, args.timesteps, args.out, args.hp)
    summary(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
