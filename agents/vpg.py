"""Vanilla policy gradient: REINFORCE with GAE advantages and a learned value baseline
(Williams 1992; Schulman et al. 2016 for GAE; Spinning Up's VPG for the structure).

    for iteration = 1, 2, ...
        collect n_steps × n_envs transitions with π_θ; compute GAE advantages Â and returns R
        g = ∇_θ E[log π_θ(a|s) Â] (+ c_e ∇_θ H[π_θ])
        one Adam step on the actor along g                       (Euclidean steepest ascent)
        fit V_φ to R: n_critic_updates epochs of minibatch regression (critic optimiser only)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlgeom.agents import config as c
from rlgeom.agents.base import OnPolicyAgent
from rlgeom.agents.config import OnPolicyConfig, hp
from rlgeom.agents.critic import critic_optimizer, explained_variance, fit_value_function
from rlgeom.geometry.fisher import approximate_kl
from rlgeom.training import distributed
from rlgeom.training.guards import guard_finite, read_stats
from rlgeom.training.optim import clip_gradient_norm, make_optimizer
from rlgeom.training.schedules import schedule_value


@dataclass
class VPGConfig(OnPolicyConfig):
    """VPG's hyperparameters (defaults after Spinning Up: pi_lr 3e-4, vf_lr 1e-3, λ 0.97)."""

    n_steps: int = hp(4000, "environment steps per env per rollout")
    gae_lambda: float = hp(0.97, "GAE(λ)")
    learning_rate: float | dict = hp(3e-4, "the actor's Adam step size, or a schedule dict")
    vf_learning_rate: float = hp(1e-3, "the critic's Adam step size")
    n_critic_updates: int = hp(10, "epochs of critic regression per update")
    batch_size: int = hp(200, "critic minibatch size; must divide n_steps * n_envs (the default divides 4000)")
    ent_coef: float = hp(0.0, "entropy bonus coefficient")
    max_grad_norm: float | None = hp(None, "clip the actor's gradient norm (None: no clipping)")

    def validate(self, n_envs: int) -> None:
        super().validate(n_envs)
        c.schedule(self, "learning_rate")
        c.positive(self, "vf_learning_rate")
        c.positive_int(self, "n_critic_updates")
        c.divides(self, "batch_size", self.n_steps * n_envs, "the rollout size n_steps * n_envs")
        c.non_negative(self, "ent_coef")
        c.positive(self, "max_grad_norm", allow_none=True)


class VPG(OnPolicyAgent):
    Config = VPGConfig
    algo = "vpg"
    needs_separate_networks = True

    def _setup(self) -> None:
        cfg = self.config
        self.actor_optimizer = make_optimizer(self.policy.actor_parameters(), schedule_value(cfg.learning_rate, 1),
                                              self.policy.optimizer_class, self.policy.optimizer_kwargs)
        self.critic_optimizer = critic_optimizer(self.policy, cfg.vf_learning_rate)

    def update(self, buffer, progress_remaining: float) -> dict:
        cfg = self.config
        batch = buffer.full_batch(cfg.normalize_advantage)
        lr = schedule_value(cfg.learning_rate, progress_remaining)
        for group in self.actor_optimizer.param_groups:
            group["lr"] = lr
        family, out = self.policy.family, self.policy.outputs(batch.obs, critic=False)
        policy_loss = -(family.log_prob(out.dist_params, batch.actions) * batch.advantages).mean()
        entropy = family.entropy(out.dist_params).mean()
        self.actor_optimizer.zero_grad(set_to_none=True)
        out.backward(policy_loss - cfg.ent_coef * entropy)
        distributed.average_gradients(self.policy.actor_parameters())  # torchrun: every rank's batch
        if cfg.max_grad_norm is not None:
            clip_gradient_norm(self.actor_optimizer, cfg.max_grad_norm)
        guard_finite(policy_loss=policy_loss, policy_gradient=[p.grad for p in self.policy.actor_parameters()])
        self.actor_optimizer.step()
        with torch.no_grad():
            approx_kl = approximate_kl(family.log_prob(self.policy.dist_params(batch.obs), batch.actions)
                                       - batch.old_log_probs)
        value_loss = fit_value_function(
            self.policy, self.critic_optimizer, buffer, cfg.n_critic_updates, cfg.batch_size, self.generator,
            self.compiler,
        )
        guard_finite(value_loss=value_loss)  # the base rolls the critic back too
        return read_stats({  # one host transfer for every statistic
            "train/policy_gradient_loss": policy_loss, "train/value_loss": value_loss,
            "train/entropy_loss": -entropy, "train/approx_kl": approx_kl, "train/learning_rate": lr,
            "train/explained_variance": explained_variance(buffer.values.flatten(), buffer.returns.flatten()),
        })
