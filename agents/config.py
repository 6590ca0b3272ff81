"""Hyperparameters: one dataclass per agent is the single source of truth.

The same dataclass feeds `PPO(policy, env, **hyperparameters)`, the presets and the CLI's
`--hp key=value`. Each field's `metadata["help"]` is its documentation (shown by --help-hp).
Derived sizes are properties, never fields filled in at run time.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from dataclasses import dataclass, field

from rlgeom import validation
from rlgeom.training.schedules import validate_schedule


def hp(default, help: str):
    """A hyperparameter field with its documentation."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: json.loads(json.dumps(default)), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class OnPolicyConfig:
    """Hyperparameters every on-policy agent shares (SB3's names where SB3 has one)."""

    n_steps: int = hp(2048, "environment steps per env per rollout")
    gamma: float = hp(0.99, "discount factor")
    gae_lambda: float = hp(0.95, "GAE(λ) trade-off between bias and variance")
    normalize_advantage: bool = hp(True, "normalise advantages to zero mean, unit std")
    normalize_observations: bool = hp(False, "running mean/std observation normalisation (saved with the model)")
    normalize_reward: bool = hp(False, "scale rewards by the running std of the discounted return (as VecNormalize)")
    use_sde: bool = hp(False, "gSDE: state-dependent exploration noise φ(s)E instead of independent noise (Box actions)")
    sde_sample_freq: int = hp(-1, "gSDE: draw new exploration matrices every k steps (-1: only at each rollout's start)")
    written_out_derivatives: bool = hp(
        True, "plain-MLP networks run their forward, backward and Jacobian products written out "
        "(rlgeom.models.networks: one autograd node per network, the same numbers as autograd, faster per minibatch "
        "on a CPU); False: every layer called as a module (what forward hooks on its layers need)")

    def validate(self, n_envs: int) -> None:
        """Raise ValueError naming the first impossible value and what is accepted."""
        positive_int(self, "n_steps")
        boolean(self, "written_out_derivatives")
        boolean(self, "use_sde")
        if isinstance(self.sde_sample_freq, bool) or not isinstance(self.sde_sample_freq, int) or self.sde_sample_freq == 0 \
                or self.sde_sample_freq < -1:
            raise ValueError(f"sde_sample_freq must be -1 (once per rollout) or a positive int, got {self.sde_sample_freq!r}")
        in_range(self, "gamma", 0.0, 1.0)
        in_range(self, "gae_lambda", 0.0, 1.0)

    @classmethod
    def field_help(cls) -> dict[str, tuple[object, str]]:
        out = {}
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out[f.name] = (default, f.metadata.get("help", ""))
        return out

    @classmethod
    def build(cls, overrides: dict) -> "OnPolicyConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(
                f"unknown hyperparameter(s) {', '.join(unknown)} for {cls.__name__}; accepted: {', '.join(sorted(names))}"
            )
        return cls(**overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_hp_value(text: str):
    """CLI value: a Python/JSON literal (3e-4, True, None, {"kind": ...}) or a bare string. No eval."""
    for loader in (json.loads, ast.literal_eval):
        try:
            return loader(text)
        except (ValueError, SyntaxError):
            continue
    if text in ("true", "false"):
        return text == "true"
    return text


# Field checks: rlgeom.validation's rules applied to a config's field by name.
def positive_int(cfg, name: str) -> None:
    validation.positive_int(name, getattr(cfg, name))


def boolean(cfg, name: str) -> None:
    validation.boolean(name, getattr(cfg, name))


def in_range(cfg, name: str, lo: float, hi: float, high_open: bool = False) -> None:
    validation.in_range(name, getattr(cfg, name), lo, hi, high_open=high_open)


def positive(cfg, name: str, allow_none: bool = False) -> None:
    validation.positive(name, getattr(cfg, name), allow_none=allow_none)


def non_negative(cfg, name: str) -> None:
    validation.non_negative(name, getattr(cfg, name))


def schedule(cfg, name: str) -> None:
    validate_schedule(name, getattr(cfg, name))


def divides(cfg, name: str, total: int, what: str) -> None:
    positive_int(cfg, name)
    v = getattr(cfg, name)
    if total % v:
        divisors = [d for d in range(1, total + 1) if total % d == 0]
        shown = ", ".join(map(str, divisors[-8:]))
        raise ValueError(f"{name}={v} does not divide {what} ({total}); accepted: a divisor such as {shown}")

