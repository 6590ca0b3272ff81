"""ACKTR: actor-critic using a Kronecker-factored trust region (Wu et al. 2017, arXiv 1708.05144).

A synchronous advantage actor-critic (A2C) whose joint actor + critic step is preconditioned by
K-FAC (rlgeom.geometry.kfac) and shrunk to a KL trust region measured with the same K-FAC Fisher:

    for iteration = 1, 2, ...
        collect n_steps × n_envs transitions with π_θ; advantages Â and returns R by GAE(λ)
            (λ = 1: the n-step returns of A2C/ACKTR, bootstrapped from V(s_{t+n}))
        L = -E[log π_θ(a|s) Â] + c_v E[(V_θ(s) - R)²] - c_e H[π_θ]                 (A2C's loss)
        A_l, G_l <- running averages from ∇ of the sampled-target loss             (model Fisher)
                    -log π_θ(ã|s) + ½ (V_θ(s) - ṽ)²,   ã ~ π_θ(·|s), ṽ ~ N(V_θ(s), 1)
        g = ∇L (global norm clipped at max_grad_norm)
        Δ = -lr (F̂ + λI)⁻¹ g,  F̂ = ⊕_l A_l ⊗ G_l                                  (K-FAC direction)
        η = min(1, √(2 kl_clip / ΔᵀF̂Δ))                                            (KL clipping)
            (trust_region="joint", the paper's: one η for actor + critic; "per_network": one η
             for the actor's Δ and one for the critic's, when they share no parameters)
        SGD with momentum m and step size lr (1 - m) on the preconditioned gradient η (F̂ + λI)⁻¹ g
            (the momentum average of the clipped steps, not their sum, is what moves θ)
        optionally (critic_updates = n > 1, baselines' acktr_cont fits its value function in 25 passes):
            n − 1 more K-FAC steps of the critic alone on c_v E[(V_θ(s) - R)²], same batch and factors
        optionally (target_kl, baselines' continuous-control ACKTR): measure KL(π_old ‖ π_θ) and
            lr ← lr / 1.5 if KL > 2 target_kl,  lr ← 1.5 lr if KL < target_kl / 2   (lr within [1e-8, 1])
        or (policy_step="measured", rlgeom's MuJoCo preset; momentum 0): the actor's η = √(2 kl_clip / ΔᵀF̂Δ)
            unclipped, then its change c·Δ with c chosen from the measured KL(π_old ‖ π_θ+cΔ) = kl_clip

The update below follows this box line by line; every piece of K-FAC (statistics hooks, factors,
eigendecompositions, damping, ΔᵀF̂Δ, the non-finite guard) lives in rlgeom.geometry.kfac and the trust-region
scale in rlgeom.geometry.fisher.kl_scale.

Defaults and where they come from:

| hyperparameter         | default | source                                                          |
|------------------------|---------|-----------------------------------------------------------------|
| learning_rate          | 0.25    | Wu et al. 2017 (Atari); openai/baselines acktr `lr=0.25` (which |
|                        |         | decays it linearly: `lrschedule='linear'`, used by our Atari    |
|                        |         | preset)                                                         |
| momentum               | 0.9     | baselines acktr Model: `KfacOptimizer(momentum=0.9)`; the SGD   |
|                        |         | step is lr·(1 − momentum), as baselines' `MomentumOptimizer(    |
|                        |         | lr * (1. - momentum), momentum)`                                |
| kl_clip                | 0.001   | paper, Atari; baselines `kfac_clip=0.001`                       |
| trust_region           | joint   | paper (one η for the joint step); see below for "per_network"   |
| n_steps                | 20      | baselines acktr `nsteps=20`; stable-baselines (SB2) ACKTR       |
| gae_lambda             | 1.0     | n-step returns as in A2C / the paper; < 1 gives GAE             |
| vf_coef                | 0.5     | baselines acktr `vf_coef=0.5` (SB2's ACKTR uses 0.25)           |
| ent_coef               | 0.01    | baselines acktr; SB2 ACKTR                                      |
| max_grad_norm          | 0.5     | baselines acktr / SB2 ACKTR `max_grad_norm=0.5`                 |
| stat_decay             | 0.99    | baselines `stats_decay=0.99`; ikostrikov's KFACOptimizer        |
| damping                | 1e-2    | baselines `epsilon=0.01`; ikostrikov `damping=1e-2`             |
| update_statistics_every| 1       | baselines `kfac_update=1` (statistics every update)             |
| update_inverse_every   | 10      | ikostrikov/pytorch-a2c-ppo-acktr-gail `Tinv=10`                 |
| normalize_advantage    | False   | A2C/ACKTR do not normalise advantages (baselines, SB2, SB3 A2C) |
| target_kl              | None    | off, as in the paper's Atari runs; baselines' continuous-control |
|                        |         | ACKTR (acktr_cont) adapts its step size with desired_kl=0.002   |
| log_std_step           | with_actor | log σ's exact natural-gradient step sized with the actor's;  |
|                        |         | "own": its own η at the scheduled lr; "budget": its step spends  |
|                        |         | half the KL target every update (issue 29; see below)           |
| critic_step            | with_actor | the critic's step size: the actor's (target_kl-adapted) lr,  |
|                        |         | or "own": the scheduled lr (issue 29; see below)                |
| critic_updates         | 1       | K-FAC steps of the critic per rollout: the joint step and       |
|                        |         | n − 1 on the value loss alone (baselines' acktr_cont: 25)       |

Why lr·(1 − m): the trust region scales the *fresh* step only. SGD with momentum m and step size lr
moves θ by the sum of the past clipped steps, up to 1/(1 − m) = 10 of them when they agree, so a KL
budget of 0.001 per fresh step became KL 0.03–0.3 per update (measured: experiments/acktr/RESULTS.md);
with lr·(1 − m) the momentum buffer is an average and, in the steady state, θ moves by the clipped
step itself. This is baselines' (and SB2's) optimizer.

`target_kl`: the trust region bounds the K-FAC *prediction* of the fresh step's KL, but what moves θ
is the momentum average of recent steps, and on MuJoCo the measured KL(π_old ‖ π_θ) per update came
out 25–1000× below kl_clip (experiments/acktr/RESULTS.md). baselines' continuous-control ACKTR steers
its step size by the measured KL instead (÷1.5 above 2·desired_kl, ×1.5 below desired_kl/2, clipped
to [1e-8, 1]); `target_kl` does the same to the scheduled learning rate (the multiplier is logged as
geometry/lr_multiplier and saved in checkpoints). Three things to know:
- it only acts where the trust region does not bind: with η < 1 the step η·lr·(F̂ + λI)⁻¹g does not
  depend on lr, so pair it with a kl_clip above target_kl;
- it scales the joint SGD step, the critic's part too (baselines' acktr_cont fits its value function
  with a separate optimiser at a fixed step size; here the critic keeps its own trust region under
  trust_region="per_network");
- the measured KL sets the step size from then on: a decaying schedule only sets where it starts (the
  multiplier grows as the schedule shrinks, up to the lr ceiling of 1).

`trust_region`: "joint" (default) is the paper's: one η for the joint actor + critic step. The
critic's block of F̂ (the Fisher of a unit-variance Gaussian on V) is not the policy's KL, though:
measured on HalfCheetah-v5 with baselines' MuJoCo settings, the critic's ΔᵀF̂Δ was 10–40× the actor's, so the
joint η spent the policy's KL budget on the value function and the policy barely moved (σ stayed at 1
for 100k steps, per-update KL 2.5e-6; experiments/acktr/RESULTS.md). "per_network" gives the actor's
step and the critic's step one η each (baselines' MuJoCo ACKTR likewise gives the value function its
own K-FAC optimiser); it needs separate networks (a shared CNN torso belongs to both).

Differences from baselines/ikostrikov, on purpose: the trust region is the paper's
η = min(1, √(2·kl_clip / ΔᵀF̂Δ)) with the undamped K-FAC quadratic form of the full step Δ (they use
√(kl_clip / (lr²·vᵀ∇)) with the damped form, no factor 2); the gradient is clipped before
preconditioning (baselines clips only its cold-start SGD steps, ikostrikov does not clip ACKTR);
there is no cold start (K-FAC statistics exist from the first update because each update collects
them before preconditioning).

Parameters outside nn.Linear / nn.Conv2d: the only one in rlgeom's policies is the state-independent
scale of the diagonal Gaussian (`policy.actor.scale.raw`, log σ by default). K-FAC has no block for
it, but its Fisher block is known exactly: with distribution parameters (μ, log σ) the Gaussian's
Fisher is diag(1/σ², 2) and has no (μ, log σ) cross terms, and log σ does not depend on the state,
so F_raw = 2·diag((∂ log σ/∂raw)²) for every sample (= 2I for the log σ parameterisation). ACKTR
preconditions that gradient with (F_raw + λ)⁻¹ and adds Δᵀ F_raw Δ to the trust-region quadratic
form, so the scale moves in the same metric as the rest of the policy (a plain gradient at lr 0.25
with momentum 0.9 would not be bounded by the KL budget). The cross-layer blocks of the Fisher are
ignored as K-FAC ignores them between layers.

`log_std_step`: how that exact step is sized. "with_actor" (default) puts Δ_logσᵀ F_raw Δ_logσ into the
actor's (or the joint) ΔᵀF̂Δ and gives it the actor's learning rate, so log σ's step is scaled by the
weights' η and, with target_kl, by the multiplier that the measured KL sets. On MuJoCo with baselines'
settings (the MuJoCo preset until 2026-12-05) both are set by the weights: K-FAC's damping λ amplifies their
gradient ~1/λ in the directions where the factors' eigenvalues are far below λ, so most of the measured KL is
the mean's, target_kl holds the lr at 0.13–0.67 × the scheduled 0.2, and σ moved from 1 to 0.96–0.99 in 1M
steps (the trust region itself stops binding after the first updates: experiments/acktr/RESULTS.md §0.7).
"own" gives log σ its own η, min(1, √(2 kl_clip / Δ_logσᵀ F_raw Δ_logσ)) (a group beside the actor's weights
and, under "per_network", the critic's), and steps it at the scheduled lr, outside target_kl's adaptation. "budget"
normalises log σ's natural step to spend a KL of k = target_kl / 2 (kl_clip / 2 without a target) on every
update, η = √(2k / Δ_logσᵀ F_raw Δ_logσ) unclipped: TRPO's normalisation, on log σ alone, so σ moves by a
fixed KL per update wherever the weights' K-FAC step takes the rest of the measured KL (the KL rule still sees
both); momentum then averages these unit-KL steps, so a gradient of noisy sign moves σ little. Measured on
MuJoCo at 300k (RESULTS.md §0.9): σ learns (0.62–0.86) but the returns are not better. For reference,
openai/baselines' KfacOptimizer gives a variable without factors (acktr_cont's logstd) its raw gradient,
unpreconditioned, counted with lr²·gᵀg in the one clip; kfac-pytorch leaves unregistered parameters to the
base optimiser.

`critic_step`: the step size of the critic's own parameters under target_kl. "with_actor" (default) steps
the whole policy, critic included, at the lr that the measured KL of the *policy* sets. "own" steps the
critic's parameters at the scheduled lr (its η still from kl_clip under trust_region="per_network"), so the KL
rule throttles the actor only; a torso shared with the actor stays at the actor's lr. For reference, baselines'
acktr_cont fits its value function with an optimiser of its own (K-FAC, a fixed step size, 25 passes per batch),
untouched by desired_kl.

`policy_step`: how the policy's step is sized. "clip" (default) is the paper's trust region: the step
lr·(F̂ + λI)⁻¹g is shrunk to spend at most kl_clip under K-FAC's quadratic model, and is smaller where it
fits; with target_kl the lr, and so the step, follows the measured KL by factors of 1.5. "normalised" always
scales it to spend exactly kl_clip under that model, η = √(2 kl_clip / ΔᵀF̂Δ) unclipped, so the lr cancels from
the policy's step: NPG's rule (which normalises to max_kl under the exact Fisher) with K-FAC's Fisher. Under
trust_region="joint" the normalised group is the whole policy, critic included; under "per_network" the critic
keeps the clip at its own lr. "measured" takes the normalised step, measures its KL on the batch (a forward
pass of the actor), and rescales the actor's change by √(kl_clip / KL), then once more by the power of the step
that KL was measured to grow with, so the step spends kl_clip as measured (to ~1 %), whatever K-FAC's error; it
needs momentum 0 and logs the factor as geometry/kl_rescale (a shared torso, part of the actor, is rescaled
with it). Neither takes target_kl (an error says so). Momentum, if any, averages the normalised steps.
Why: a normalised step is only as good as ΔᵀF̂Δ's estimate of its KL. With the running factors (stat_decay
0.99, eigendecompositions every 10 updates: ~100 updates of a moving policy) that estimate was 30–90× too
small on Walker2d-v5 (1.2–1.8 nats per update for a kl_clip of 0.02). With each update's own statistics
(stat_decay=0, update_inverse_every=1) it was 3.5–3.7× too small on Walker2d and 6–7× on Hopper, steady from
update to update, and ACKTR then learned Walker2d (experiments/acktr/RESULTS.md §0.11); "measured" removes
the task-dependent remainder. With target_kl the same under-estimate is why the trust region never binds on
MuJoCo and the lr multiplier sets the step: its steps of 1.5 spread the KL per update over 0.001–0.08
(10th–90th percentiles), where NPG's stays within 0.009–0.012. The MuJoCo preset (agents/presets.py) takes
"measured" with each update's own statistics, momentum 0 and TRPO's max_kl on the task as kl_clip (§0.12).

`critic_updates`: how many K-FAC steps the critic takes per rollout. With the default 1 the critic moves once
per batch, in the joint step, as in A2C and the paper's Atari ACKTR. With n > 1 the critic's own parameters
take n − 1 more steps on the value loss alone, over the same batch and targets R: each is its gradient
preconditioned by the same K-FAC factors (no new statistics: `KFACPreconditioner.step(repeat=True)` leaves
the eigendecompositions' refresh cadence as it was), clipped to the critic's trust region
η = min(1, √(2 kl_clip / ΔᵀF̂Δ)) and stepped at the critic's lr (critic_step). The actor does not move. It
needs separate actor and critic networks. baselines' acktr_cont fits its value function in 25 K-FAC passes
per batch; TRPO's MuJoCo preset fits its critic in 20 Adam epochs (minibatches of 128).
`train/explained_variance_after_fit` is the critic's explained variance on the batch after its passes
(baselines' EVAfter).

A shared feature extractor (CnnPolicy's NatureCNN) is called once per update, so its factors see the
*sum* of the actor's and the critic's output gradients: the Fisher of the joint model (a categorical
policy and a unit-variance Gaussian value head on the same torso), as in baselines' single network.

Non-finite guard (the base's, agents/base.py): before the parameters move, `guard_finite` checks the
loss, the gradient norm, the preconditioned gradients and ΔᵀF̂Δ, and a K-FAC `finite=False` is a skip
too; `SkippedUpdate` makes `learn()` restore the parameters, the SGD momentum and the K-FAC state
(factors, eigendecompositions, counters: `_extra_state()`) from before the update and count it in
`train/skipped_updates`. Checkpoints carry the same K-FAC state (the momentum buffers are saved with
the optimiser), so a resumed run preconditions exactly as the uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlgeom.agents import config as c
from rlgeom.agents.base import OnPolicyAgent
from rlgeom.agents.config import OnPolicyConfig, hp
from rlgeom.agents.critic import explained_variance
from rlgeom.geometry.fisher import kl_scale, policy_kl, predicted_kl
from rlgeom.training import distributed
from rlgeom.training.guards import SkippedUpdate, guard_finite, read_stats
from rlgeom.geometry.kfac import KFACPreconditioner
from rlgeom.training.schedules import schedule_value


TRUST_REGIONS = ("joint", "per_network")
LOG_STD_STEPS = ("with_actor", "own", "budget")
CRITIC_STEPS = ("with_actor", "own")
POLICY_STEPS = ("clip", "normalised", "measured")


@dataclass
class ACKTRConfig(OnPolicyConfig):
    """ACKTR's hyperparameters (defaults: the paper's Atari settings via openai/baselines; see the module)."""

    n_steps: int = hp(20, "environment steps per env per rollout (n of the n-step returns)")
    gae_lambda: float = hp(1.0, "GAE(λ); 1.0 gives the paper's n-step returns")
    normalize_advantage: bool = hp(False, "normalise advantages to zero mean, unit std (A2C/ACKTR: off)")
    learning_rate: float | dict = hp(0.25, "SGD step size on the preconditioned gradient, or a schedule dict")
    momentum: float = hp(0.9, "SGD momentum, in [0, 1)")
    kl_clip: float = hp(0.001, "trust region: the step is scaled by min(1, sqrt(2 kl_clip / ΔᵀF̂Δ)); > 0")
    trust_region: str = hp("joint", "joint (one η for actor + critic, the paper's) or per_network (one η each)")
    policy_step: str = hp("clip", "the policy's η: min(1, sqrt(2 kl_clip / ΔᵀF̂Δ)), the paper's clip (clip), or "
                                  "sqrt(2 kl_clip / ΔᵀF̂Δ) unclipped, every step spending kl_clip under K-FAC's "
                                  "quadratic model whatever the lr, as NPG's step does under the exact one "
                                  "(normalised), then rescaled to kl_clip by the step's measured KL (measured; momentum 0)")
    log_std_step: str = hp("with_actor", "log σ's natural-gradient step (exact Fisher block): the actor's η and lr "
                                         "(with_actor) or its own η at the scheduled lr, without target_kl's "
                                         "adaptation (own), or its own step normalised to a KL of half the KL "
                                         "target (target_kl, else kl_clip) every update (budget)")
    critic_step: str = hp("with_actor", "the critic's step size: the actor's, adapted by target_kl (with_actor), or "
                                        "the scheduled lr, outside target_kl's adaptation (own)")
    critic_updates: int = hp(1, "K-FAC steps of the critic per rollout: the joint step, then critic_updates - 1 on "
                                "the value loss alone (baselines' continuous-control ACKTR: 25); needs separate "
                                "actor and critic networks")
    ent_coef: float = hp(0.01, "entropy bonus coefficient c_e")
    vf_coef: float = hp(0.5, "value loss coefficient c_v")
    max_grad_norm: float | None = hp(0.5, "clip the gradient's global norm before preconditioning (None: off)")
    damping: float = hp(1e-2, "K-FAC damping λ of (A ⊗ G + λI); > 0")
    stat_decay: float = hp(0.99, "weight of the past in the running K-FAC factors, in [0, 1)")
    update_statistics_every: int = hp(1, "collect K-FAC statistics every this many updates")
    update_inverse_every: int = hp(10, "refresh the factors' eigendecompositions every this many updates")
    target_kl: float | None = hp(None, "adapt lr to the measured KL(π_old‖π): ÷1.5 above 2·target_kl, ×1.5 below "
                                       "target_kl/2 (baselines' continuous ACKTR); None: off")

    def validate(self, n_envs: int) -> None:
        super().validate(n_envs)
        c.schedule(self, "learning_rate")
        _in_half_open(self, "momentum")
        _in_half_open(self, "stat_decay")
        c.positive(self, "kl_clip")
        c.positive(self, "target_kl", allow_none=True)
        if self.trust_region not in TRUST_REGIONS:
            raise ValueError(f"trust_region must be one of {', '.join(TRUST_REGIONS)}, got {self.trust_region!r}")
        if self.log_std_step not in LOG_STD_STEPS:
            raise ValueError(f"log_std_step must be one of {', '.join(LOG_STD_STEPS)}, got {self.log_std_step!r}")
        if self.critic_step not in CRITIC_STEPS:
            raise ValueError(f"critic_step must be one of {', '.join(CRITIC_STEPS)}, got {self.critic_step!r}")
        if self.policy_step not in POLICY_STEPS:
            raise ValueError(f"policy_step must be one of {', '.join(POLICY_STEPS)}, got {self.policy_step!r}")
        if self.policy_step != "clip" and self.target_kl is not None:
            raise ValueError(f"policy_step={self.policy_step!r} gives every policy step a KL of kl_clip whatever the "
                             "learning rate, so target_kl (which adapts the learning rate) would not act on it; "
                             "use target_kl=None with it, or policy_step='clip'")
        if self.policy_step == "measured" and self.momentum != 0:
            raise ValueError(f"policy_step='measured' rescales the step just taken by its measured KL, but with "
                             f"momentum={self.momentum} the step is an average of past ones; use momentum=0 with it")
        c.positive(self, "damping")
        c.non_negative(self, "ent_coef")
        c.non_negative(self, "vf_coef")
        c.positive(self, "max_grad_norm", allow_none=True)
        c.positive_int(self, "update_statistics_every")
        c.positive_int(self, "update_inverse_every")
        c.positive_int(self, "critic_updates")
        for name in ("kl_clip", "damping"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)!r}")


def _kfac_failure(stats) -> str:
    """What a failed K-FAC step names in the skip: the layers whose statistics overflowed (their inputs or
    output gradients square to inf in float32: observations beyond about 1e19 do), or whose step was not finite."""
    if stats.rejected_statistics:
        return (f"K-FAC statistics of {', '.join(stats.rejected_statistics)} (their inputs or gradients square to "
                "inf: observations or rewards too large for float32; normalise them)")
    return f"K-FAC step ({', '.join(stats.nonfinite_layers)})"


def _in_half_open(cfg, name: str) -> None:
    c.in_range(cfg, name, 0.0, 1.0, high_open=True)


class ACKTR(OnPolicyAgent):
    Config = ACKTRConfig
    algo = "acktr"

    supports_sde = False  # K-FAC's factors cover Linear/Conv layers; gSDE's scale matrix is neither

    def _setup(self) -> None:
        cfg = self.config
        if self.policy.optimizer_class is not None or self.policy.optimizer_kwargs is not None:
            raise ValueError("ACKTR's step is K-FAC-preconditioned SGD (its own optimiser): policy_kwargs "
                             "optimizer_class / optimizer_kwargs are not accepted; PPO, VPG, NPG and TRPO take them")
        self.kfac = KFACPreconditioner(
            self.policy, damping=cfg.damping, stat_decay=cfg.stat_decay,
            update_statistics_every=cfg.update_statistics_every, update_inverse_every=cfg.update_inverse_every,
        )
        scale = self.policy.actor.scale
        self._scale_param = None if scale is None else scale.raw
        own = cfg.log_std_step in ("own", "budget")
        if own and self._scale_param is None:
            raise ValueError(f"log_std_step={cfg.log_std_step!r} needs a Gaussian policy with a state-independent "
                             "scale (log σ); this policy has none: use log_std_step='with_actor'")
        # parameters that step at the scheduled lr, outside target_kl's adaptation: log σ under
        # log_std_step="own" or "budget", the critic's own parameters under critic_step="own" (a torso shared with the
        # actor stays with the actor: the measured KL is the policy's). They are the optimiser's second group.
        actor_ids = {id(p) for p in self.policy.actor_parameters()}
        scheduled = [self._scale_param] if own else []
        if cfg.critic_step == "own":
            scheduled += [p for p in self.policy.critic_parameters() if id(p) not in actor_ids]
        self._scheduled_ids = {id(p) for p in scheduled}
        params = ([{"params": [p for p in self.policy.parameters() if id(p) not in self._scheduled_ids]},
                   {"params": scheduled}] if scheduled else self.policy.parameters())
        self.optimizer = torch.optim.SGD(
            params, lr=self._sgd_step_size(schedule_value(cfg.learning_rate, 1.0)), momentum=cfg.momentum)
        self._updates_bound = 0  # applied updates where the trust region shrank the policy's step (η < 1)
        self._lr_multiplier = 1.0  # target_kl's adaptation of the scheduled learning rate
        shared = {id(p) for p in self.policy.actor_parameters()} & {id(p) for p in self.policy.critic_parameters()}
        if cfg.trust_region == "per_network" and shared:
            raise ValueError("trust_region='per_network' needs separate actor and critic networks, but this "
                             "policy shares its feature extractor (CnnPolicy's default); use trust_region='joint' "
                             "or policy_kwargs=dict(share_features_extractor=False)")
        if cfg.critic_updates > 1 and shared:
            raise ValueError(f"critic_updates={cfg.critic_updates} steps the critic alone, which needs separate "
                             "actor and critic networks, but this policy shares its feature extractor (CnnPolicy's "
                             "default); use critic_updates=1 or policy_kwargs=dict(share_features_extractor=False)")
        self._critic_own = [p for p in self.policy.critic_parameters() if id(p) not in actor_ids]
        groups = {"policy": list(self.policy.parameters())} if cfg.trust_region == "joint" else {
            "policy": self.policy.actor_parameters(), "critic": self.policy.critic_parameters()}
        if own:
            groups = {name: [p for p in group if p is not self._scale_param] for name, group in groups.items()}
            groups["log_std"] = [self._scale_param]
        self._trust_region_groups = groups  # the policy's group first

    def update(self, buffer, progress_remaining: float) -> dict:
        cfg, family = self.config, self.policy.family
        scheduled_lr = schedule_value(cfg.learning_rate, progress_remaining)
        lr = scheduled_lr * self._lr_multiplier
        # log_std_step / critic_step "own": the second group steps at the scheduled lr, outside target_kl's adaptation
        lrs = [lr, scheduled_lr][: len(self.optimizer.param_groups)]
        for group, group_lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = self._sgd_step_size(group_lr)
        batch = buffer.full_batch(cfg.normalize_advantage)
        # every layer called once as a module, so that K-FAC's hooks see it (a shared torso sees both heads)
        out = self.policy.outputs(batch.obs, written_out=False)
        dist_params, values = out.dist_params, out.values
        # A2C's loss
        policy_loss = -(family.log_prob(dist_params, batch.actions) * batch.advantages).mean()
        value_loss = F.mse_loss(values, batch.returns)
        entropy = family.entropy(dist_params).mean()
        loss = policy_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy
        # K-FAC statistics from the sampled-target loss (the model Fisher, not the empirical one)
        a_tilde, v_tilde = self.sampled_targets(dist_params, values)
        fisher_loss = -family.log_prob(dist_params, a_tilde).mean() + 0.5 * (values - v_tilde).pow(2).mean()
        self.optimizer.zero_grad(set_to_none=True)
        with self.kfac.track_statistics() as collecting:
            if collecting:
                out.backward(fisher_loss, retain_graph=True)
        # g = ∇L, clipped; then (F̂ + λI)⁻¹ g in place of every gradient
        self.optimizer.zero_grad(set_to_none=True)
        out.backward(loss)
        distributed.average_gradients(self.policy.parameters())  # torchrun: every rank's batch
        grad_norm, kfac_stats = self._clip_and_precondition(list(self.policy.parameters()))
        scale_fisher = self._precondition_scale(cfg.damping, dist_params)
        # trust region: η = min(1, √(2 kl_clip / ΔᵀF̂Δ)) for the full step Δ = -lr (F̂ + λI)⁻¹ g,
        # per trust-region group: one joint group, or the actor's and the critic's (trust_region="per_network")
        quads, etas = self._trust_region_scales(self._trust_region_groups, lr, scheduled_lr, scale_fisher)
        # non-finite guard, before the parameters move (a skip restores the K-FAC state too)
        guard_finite(loss=loss, grad_norm=grad_norm, quadratic_form=quads,
                     natural_gradient=[p.grad for p in self.policy.parameters()])
        self._scale_gradients(self._trust_region_groups, etas)
        measured = cfg.policy_step == "measured"
        actor_start = [p.detach().clone() for p in self.policy.actor_parameters()] if measured else None
        self.optimizer.step()  # SGD with momentum, step lr (1 - m), on η (F̂ + λI)⁻¹ g
        for _ in range(cfg.critic_updates - 1):
            self._critic_pass(batch, lr, scheduled_lr)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            kl = self._batch_kl(dist_params.detach(), batch.obs)
            rescale = None
            if actor_start is not None:  # the step's KL from the distributions themselves, not K-FAC's model of it
                kl, rescale = self._rescale_to_kl(actor_start, dist_params.detach(), batch.obs, kl)
        # the policy's group comes first; a separate critic's and log σ's η and ΔᵀF̂Δ are reported beside it
        extra = [rescale] if rescale is not None else []
        reported = torch.stack([*quads, *etas, kl, *extra]).tolist()  # one host sync
        rescale_value = reported.pop() if extra else None
        n = len(quads)
        quad_value, eta_value, kl_value = reported[0], reported[n], reported[-1]
        others = {}
        for i, name in enumerate(list(self._trust_region_groups)[1:], start=1):
            others[f"geometry/eta_{name}"] = reported[n + i]
            others[f"geometry/quadratic_form_{name}"] = reported[i]
        self._updates_bound += eta_value < 1.0
        stats = self._stats(lr, policy_loss, value_loss, entropy, buffer, kfac_stats, eta_value, quad_value, kl_value)
        if rescale_value is not None:  # what brought the normalised step to kl_clip as measured: K-FAC's error undone
            stats["geometry/kl_rescale"] = rescale_value
        if cfg.critic_updates > 1:  # baselines' EVAfter: how well the passes fit this batch's returns
            with torch.no_grad():
                fitted = self.policy.value(batch.obs)
            stats["train/explained_variance_after_fit"] = float(explained_variance(fitted, batch.returns))
        if cfg.target_kl is not None:
            stats["geometry/lr_multiplier"] = self._lr_multiplier  # the one this update used, as train/learning_rate
            self._adapt_learning_rate(kl_value, scheduled_lr)
        return {**stats, **others}

    # ----------------------------------------------------------------- pieces of the update
    @torch.no_grad()
    def sampled_targets(self, dist_params: torch.Tensor, values: torch.Tensor):
        """ã ~ π(·|s) and ṽ ~ N(V(s), 1): the targets of the model Fisher's loss."""
        return self.policy.family.sample(dist_params), values + torch.randn_like(values)

    def _critic_pass(self, batch, lr: float, scheduled_lr: float) -> None:
        """One more step of the critic alone (critic_updates > 1): g = ∇ c_v E[(V(s) − R)²] over its own
        parameters, clipped, (F̂ + λI)⁻¹ g with this update's factors, the critic's η from kl_clip, its lr."""
        cfg = self.config
        self.optimizer.zero_grad(set_to_none=True)
        out = self.policy.outputs(batch.obs, actor=False, written_out=False)
        out.backward(cfg.vf_coef * F.mse_loss(out.values, batch.returns))
        distributed.average_gradients(self._critic_own)
        grad_norm, _ = self._clip_and_precondition(self._critic_own, repeat=True)
        group = {"critic": self._critic_own}
        quads, etas = self._trust_region_scales(group, lr, scheduled_lr, None)
        guard_finite(critic_pass_grad_norm=grad_norm, critic_pass_quadratic_form=quads,
                     critic_pass_natural_gradient=[p.grad for p in self._critic_own])
        self._scale_gradients(group, etas)
        self.optimizer.step()  # only the critic's parameters have a gradient: nothing else moves

    def _rescale_to_kl(self, actor_start: list, old_dist_params: torch.Tensor, obs: torch.Tensor, kl: torch.Tensor):
        """policy_step="measured": the actor's step Δ scaled by c so that c·Δ spends kl_clip as measured on the
        batch (NPG's radius, without CG) -> (KL of c·Δ, c). First c₁ = √(kl_clip / KL(Δ)), as if KL were quadratic
        in the step; then, KL growing as c^p with p read off the two measurements, c₂ = c₁·(kl_clip / KL(c₁Δ))^(1/p)
        (p kept within [1, 4]). One forward pass each. A step whose KL is zero or not finite is left as it is."""
        target = self.config.kl_clip
        params = self.policy.actor_parameters()
        steps = [p - start for p, start in zip(params, actor_start)]

        def measure_at(scale):
            for p, start, step in zip(params, actor_start, steps):
                p.copy_(start + scale * step)
            return self._batch_kl(old_dist_params, obs)

        one = torch.ones_like(kl)
        valid = torch.isfinite(kl) & (kl > 0)
        first = torch.where(valid, torch.sqrt(target / torch.where(valid, kl, one)), one)
        kl_first = measure_at(first)
        ok = valid & torch.isfinite(kl_first) & (kl_first > 0) & (first != 1)
        power = torch.log(torch.where(ok, kl_first / kl, 4 * one)) / torch.log(torch.where(ok, first, 2 * one))
        power = power.clamp(1.0, 4.0)
        second = torch.where(ok, first * (target / torch.where(ok, kl_first, one)) ** (1 / power), first)
        return measure_at(second), second

    def _batch_kl(self, old_dist_params: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """Mean KL(π_old ‖ π_θ) over the batch at the current parameters (every rank's batch under torchrun)."""
        return distributed.mean(policy_kl(self.policy.family, old_dist_params, self.policy.dist_params(obs)).mean())

    def _clip_and_precondition(self, params: list, repeat: bool = False):
        """g clipped to max_grad_norm over `params`, then (F̂ + λI)⁻¹ g in place (K-FAC; `repeat`: on the
        previous step's statistics); a failed K-FAC step is a skip before anything uses it. -> (norm, stats)"""
        max_norm = self.config.max_grad_norm
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else math.inf)
        kfac_stats = self.kfac.step(repeat=repeat)
        if not kfac_stats.finite:  # a rejected layer has no factors
            raise SkippedUpdate([_kfac_failure(kfac_stats)])
        return grad_norm, kfac_stats

    def _trust_region_scales(self, groups: dict, lr: float, scheduled_lr: float, scale_fisher):
        """ΔᵀF̂Δ and η of every trust-region group for the full step Δ = −lr (F̂ + λI)⁻¹ g (each parameter at
        its own lr, `_step_lr`) -> (quads, etas), in the groups' order."""
        steps = {p: -self._step_lr(p, lr, scheduled_lr) * p.grad
                 for group in groups.values() for p in group if p.grad is not None}
        quads = [self._quadratic_form(group, steps, scale_fisher) for group in groups.values()]
        return quads, [self._trust_region_scale(name, q) for name, q in zip(groups, quads)]

    @staticmethod
    def _scale_gradients(groups: dict, etas) -> None:
        """η·(F̂ + λI)⁻¹ g: each group's preconditioned gradients scaled by its η, before the SGD step."""
        for group, eta in zip(groups.values(), etas):
            for p in group:
                if p.grad is not None:
                    p.grad.mul_(eta)

    def _quadratic_form(self, group, steps, scale_fisher) -> torch.Tensor:
        """ΔᵀF̂Δ over one trust-region group: K-FAC blocks, plus the Gaussian scale's exact block."""
        quad = self.kfac.fisher_quadratic_form({p: steps[p] for p in group if p in steps})
        if scale_fisher is not None and any(p is self._scale_param for p in group):
            quad = quad + (scale_fisher * steps[self._scale_param].pow(2)).sum()
        return quad

    def _trust_region_scale(self, group: str, quad: torch.Tensor) -> torch.Tensor:
        """η of one trust-region group: min(1, √(2 kl_clip / ΔᵀF̂Δ)), the KL clip; for the policy's group under
        policy_step="normalised" or "measured", √(2 kl_clip / ΔᵀF̂Δ) unclipped; for log σ under log_std_step="budget",
        √(2 k / ΔᵀFΔ) unclipped with k half the KL target: its step always spends k."""
        cfg = self.config
        if group == "log_std" and cfg.log_std_step == "budget":
            return kl_scale(quad, (cfg.target_kl if cfg.target_kl is not None else cfg.kl_clip) / 2)
        if group == "policy" and cfg.policy_step != "clip":  # lr·η = √(2 kl_clip / q₁): the lr cancels
            return kl_scale(quad, cfg.kl_clip)
        return kl_scale(quad, cfg.kl_clip, clip=True)

    def _step_lr(self, p, lr: float, scheduled_lr: float) -> float:
        """The lr of p's step: the scheduled one for log σ under log_std_step="own" and for the critic's own
        parameters under critic_step="own", the adapted one for all others."""
        return scheduled_lr if id(p) in self._scheduled_ids else lr

    def _adapt_learning_rate(self, kl: float, scheduled: float) -> None:
        """baselines' acktr_cont rule: the next update's lr ÷1.5 if this one's KL > 2·target_kl, ×1.5 if
        KL < target_kl / 2, the adapted lr (`scheduled` × multiplier) kept within [1e-8, 1]."""
        target = self.config.target_kl
        factor = 1 / 1.5 if kl > 2 * target else 1.5 if kl < target / 2 else 1.0
        if scheduled > 0:
            self._lr_multiplier = min(max(self._lr_multiplier * factor, 1e-8 / scheduled), 1.0 / scheduled)

    def _sgd_step_size(self, lr: float) -> float:
        """lr (1 - m): momentum then averages the clipped steps instead of summing them (baselines)."""
        return lr * (1.0 - self.config.momentum)

    def _precondition_scale(self, damping: float, dist_params: torch.Tensor) -> torch.Tensor | None:
        """(F_raw + λ)⁻¹ on the Gaussian scale's gradient; returns the exact diagonal F_raw (or None).

        F_raw = F_logσ·(∂ log σ/∂raw)²: the (log σ, log σ) block of the Gaussian's Fisher diag(1/σ², 2)
        (the family's `fisher_product`, so 2), state-independent, pulled back to the stored
        parameterisation (log σ, σ or σ²).
        """
        raw = self._scale_param
        if raw is None or raw.grad is None:
            return None
        with torch.enable_grad():
            dlogstd = torch.autograd.grad(self.policy.actor.scale().sum(), raw)[0]  # elementwise map
        family = self.policy.family
        mean_part, log_std_part = family.split(dist_params[:1].detach())
        unit = torch.cat([torch.zeros_like(mean_part), torch.ones_like(log_std_part)], dim=-1)
        fisher_log_std = family.split(family.fisher_product(dist_params[:1].detach(), unit))[1][0]
        fisher = fisher_log_std * dlogstd.pow(2)
        raw.grad.div_(fisher + damping)
        return fisher

    def _stats(self, lr, policy_loss, value_loss, entropy, buffer, kfac_stats, eta, quad, kl) -> dict:
        n = self.n_updates + 1  # this update included (the base counts it after update() returns)
        stats = {
            "train/policy_gradient_loss": policy_loss, "train/value_loss": value_loss,
            "train/entropy_loss": -entropy, "train/learning_rate": lr,
            "train/explained_variance": explained_variance(buffer.values.flatten(), buffer.returns.flatten()),
            "geometry/eta": eta,
            "geometry/trust_region_bound": float(eta < 1.0),
            "geometry/trust_region_bound_fraction": self._updates_bound / n,
            "geometry/quadratic_form": quad,
            "geometry/kl_predicted": predicted_kl(quad, eta),  # of η·Δ: the steady-state step, not this update's
            "geometry/kl": kl,
        }
        for key, value in kfac_stats.scalars().items():
            stats[f"geometry/kfac_{key}"] = value
        return read_stats(stats)  # one host transfer for every statistic

    # ----------------------------------------------------------------- checkpoints
    def _extra_state(self) -> dict:
        """K-FAC factors, eigendecompositions and counters (the SGD momentum is saved with the optimiser)."""
        return {**super()._extra_state(), "kfac": self.kfac.state_dict(), "trust_region_bound": self._updates_bound,
                "lr_multiplier": self._lr_multiplier}

    def _load_extra_state(self, state: dict) -> None:
        super()._load_extra_state(state)
        if "kfac" in state:
            self.kfac.load_state_dict(state["kfac"])
        self._updates_bound = int(state.get("trust_region_bound", 0))
        self._lr_multiplier = float(state.get("lr_multiplier", 1.0))
