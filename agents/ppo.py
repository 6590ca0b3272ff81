"""PPO-clip (Schulman et al. 2017, "Proximal Policy Optimization Algorithms").

    for iteration = 1, 2, ...
        collect n_steps × n_envs transitions with π_old; compute GAE advantages Â and returns
        for epoch = 1..n_epochs, for each minibatch:
            r = π_θ(a|s) / π_old(a|s)
            L_clip = E[min(r Â, clip(r, 1-ε, 1+ε) Â)]             (first-order stand-in for TRPO's KL ball)
            L = -L_clip + c_v (V_φ(s) - R)² - c_e H[π_θ]
            stop the epochs early if the estimated KL(π_old ‖ π_θ) > 1.5 target_kl
            Adam step on L with gradient-norm clipping
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlgeom.agents import config as c
from rlgeom.agents.base import OnPolicyAgent
from rlgeom.agents.config import OnPolicyConfig, hp
from rlgeom.agents.critic import explained_variance
from rlgeom.data.buffer import Batch
from rlgeom.geometry.fisher import approximate_kl
from rlgeom.training import distributed
from rlgeom.training.guards import guard_finite, read_stats
from rlgeom.training.optim import clip_gradient_norm, make_optimizer
from rlgeom.training.schedules import schedule_value


@dataclass
class PPOConfig(OnPolicyConfig):
    """PPO's hyperparameters (defaults: SB3's, which follow the paper's MuJoCo settings)."""

    learning_rate: float | dict = hp(3e-4, "Adam step size, or a schedule dict")
    batch_size: int = hp(64, "minibatch size; must divide n_steps * n_envs")
    n_epochs: int = hp(10, "passes over the rollout per update")
    clip_range: float | dict = hp(0.2, "ε of the clipped ratio, or a schedule dict")
    clip_range_vf: float | None = hp(None, "clip the value change around V_old (None: no value clipping)")
    ent_coef: float = hp(0.0, "entropy bonus coefficient c_e")
    vf_coef: float = hp(0.5, "value loss coefficient c_v")
    max_grad_norm: float = hp(0.5, "gradient-norm clipping threshold")
    target_kl: float | None = hp(None, "stop the epochs when the estimated KL(π_old‖π) exceeds 1.5× this")

    def validate(self, n_envs: int) -> None:
        super().validate(n_envs)
        c.schedule(self, "learning_rate")
        c.schedule(self, "clip_range")
        c.divides(self, "batch_size", self.n_steps * n_envs, "the rollout size n_steps * n_envs")
        c.positive_int(self, "n_epochs")
        c.positive(self, "clip_range_vf", allow_none=True)
        c.non_negative(self, "ent_coef")
        c.non_negative(self, "vf_coef")
        c.positive(self, "max_grad_norm")
        c.positive(self, "target_kl", allow_none=True)


BATCH_FIELDS = dataclasses.fields(Batch)

#: train/ tags of PPO's minibatch statistics, SB3's names (policy_gradient_loss is SB3's tag for the clipped loss)
STAT_NAMES = ("policy_gradient_loss", "value_loss", "entropy_loss", "loss", "approx_kl", "clip_fraction")


class PPO(OnPolicyAgent):
    Config = PPOConfig
    algo = "ppo"
    update_calls_evaluate_actions = True  # its loss takes policy.loss_terms (an SB3 class's evaluate_actions)

    def _setup(self) -> None:
        lr = schedule_value(self.config.learning_rate, 1.0)
        # SB3's policy optimiser: Adam with eps 1e-5 unless policy_kwargs name another (one fused step by default)
        self.optimizer = make_optimizer(self.policy.parameters(), lr, self.policy.optimizer_class,
                                        self.policy.optimizer_kwargs, default_eps=1e-5)

    def _sb3_updates_counted(self, stats: dict) -> int:
        """SB3's PPO counts each epoch in train/n_updates (the epochs done, fewer when target_kl stops them)."""
        return int(stats.get("train/n_epochs_done", self.config.n_epochs))

    def update(self, buffer, progress_remaining: float) -> dict:
        cfg = self.config
        lr = schedule_value(cfg.learning_rate, progress_remaining)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        eps = schedule_value(cfg.clip_range, progress_remaining)
        stopped_early = False
        # per minibatch its losses (one stacked row), log-ratios and gradient norm; the statistics are
        # computed from them once after the epochs (one host sync; non-finite values make the base roll
        # the update back). approx_kl is computed per minibatch only to stop early on target_kl.
        step_losses, step_log_ratios, step_grad_norms = [], [], []
        compiler = self.compiler
        # compiled: ε as a tensor, so that a scheduled clip range does not recompile (filled on the device: no copy)
        clip = torch.full((), eps, device=self.device) if compiler.enabled else eps
        for epoch in range(cfg.n_epochs):
            epoch_start = len(step_log_ratios)
            for batch in buffer.minibatches(cfg.batch_size, self.generator, cfg.normalize_advantage):
                policy_loss, value_loss, entropy_loss, loss, log_ratio = compiler.call(
                    "ppo_losses", lambda: functools.partial(self.minibatch_losses, written_out=compiler.written_out),
                    *(getattr(batch, f.name) for f in BATCH_FIELDS), clip)
                with torch.no_grad():  # as SB3, the minibatch that triggers the early stop is in the statistics
                    step_losses.append(torch.stack([policy_loss, value_loss, entropy_loss, loss]))
                    step_log_ratios.append(compiler.keep(log_ratio.detach()))
                    if cfg.target_kl is not None and distributed.mean(approximate_kl(log_ratio)) > 1.5 * cfg.target_kl:
                        stopped_early = True  # every rank sees the same mean, so every rank stops here
                        break
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()  # autograd on the loss; the network's part written out for plain MLPs (eager)
                distributed.average_gradients(self.policy.parameters())  # torchrun: the union minibatch's
                grad_norm = clip_gradient_norm(self.optimizer, cfg.max_grad_norm)  # no host sync
                self.optimizer.step()
                step_grad_norms.append(grad_norm)
            if stopped_early:
                break
        with torch.no_grad():  # minibatches of equal size (batch_size divides the rollout): the mean of their means
            log_ratios, losses = torch.cat(step_log_ratios), torch.stack(step_losses)
            # what SB3 logs under these names: the policy, value and entropy losses averaged over every
            # minibatch, the total loss of the last one, approx_kl over the last epoch's minibatches (how far
            # the policy is from π_old as the update ends), clip_fraction over every epoch's
            approx_kl = distributed.mean(approximate_kl(torch.cat(step_log_ratios[epoch_start:])))
            clip_fraction = ((log_ratios.exp() - 1).abs() > eps).float().mean()
            reported = torch.cat([losses[:, :3].mean(0), losses[-1, 3:], torch.stack([approx_kl, clip_fraction])])
        guard_finite(loss=[losses, reported], gradient_norm=torch.stack(step_grad_norms) if step_grad_norms else None)
        stats = {f"train/{k}": v for k, v in zip(STAT_NAMES, reported.tolist())}
        stats.update({
            "train/learning_rate": lr, "train/clip_range": eps, "train/n_epochs_done": epoch + (not stopped_early),
            "train/explained_variance": explained_variance(buffer.values.flatten(), buffer.returns.flatten()),
        })
        return read_stats(stats)  # the explained variance's host read

    def minibatch_losses(self, *fields: torch.Tensor, written_out: bool | None = None):
        """(policy, value, entropy, total loss, log-ratio) of one minibatch given as Batch's fields then ε:
        the policy's outputs, the family's log-density and entropy, `losses`. The function the compiled path
        compiles (rlgeom.training.compiled), with `written_out=False`."""
        *tensors, eps = fields
        batch = Batch(*tensors)
        # the policy's loss terms: its own modules, or an SB3 policy class's evaluate_actions (rlgeom.models.sb3_policy)
        out, log_probs, entropy = self.policy.loss_terms(batch.obs, batch.actions, written_out=written_out)
        policy_loss, value_loss, entropy_loss, loss, _, log_ratio = self.losses(batch, log_probs, entropy, out.values, eps)
        return policy_loss, value_loss, entropy_loss, loss, log_ratio

    def losses(self, batch, log_probs, entropy, values, eps: float):
        """PPO's loss on one minibatch: (policy, value, entropy, total loss, ratio, log-ratio)."""
        cfg = self.config
        log_ratio = log_probs - batch.old_log_probs
        ratio = log_ratio.exp()
        # The next two lines are the clipped surrogate objective.
        unclipped, clipped = ratio * batch.advantages, ratio.clamp(1 - eps, 1 + eps) * batch.advantages
        policy_loss = -torch.min(unclipped, clipped).mean()
        if cfg.clip_range_vf is not None:
            values = batch.old_values + (values - batch.old_values).clamp(-cfg.clip_range_vf, cfg.clip_range_vf)
        value_loss = F.mse_loss(values, batch.returns)
        entropy_loss = -entropy.mean()
        loss = policy_loss + cfg.ent_coef * entropy_loss + cfg.vf_coef * value_loss
        return policy_loss, value_loss, entropy_loss, loss, ratio, log_ratio
