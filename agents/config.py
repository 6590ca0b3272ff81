"""Hyperparameters: one dataclass per agent is the single source of truth.

The same dataclass feeds `PPO(policy, env, **hyperparameters)`, the presets and the CLI's
`--hp key=value`. Each field's `metadata["help"]` is its documentation (shown by --help-hp).
Derived sizes are properties, never fields filled in at run time.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field

import numpy as np

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
        self.check_types()
        positive_int(self, "n_steps")
        rollout = self.n_steps * validation.positive_int("n_envs", n_envs)
        if rollout > MAX_ROLLOUT_STEPS:  # before any check whose cost grows with the rollout (divisors)
            raise ValueError(f"n_steps * n_envs = {self.n_steps:,} * {n_envs:,} = {rollout:,} transitions per rollout; "
                             f"accepted: at most {MAX_ROLLOUT_STEPS:,} (the rollout buffer holds every one)")
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
        config = cls(**overrides)
        config.check_types()
        return config

    def check_types(self) -> None:
        """Every field against its annotation (bool, int, float, str, Literal, Optional; schedules, the fields
        that also take a dict, are checked by their own rule): ValueError naming the field, the accepted type
        and the value. A string is never a bool: 'no' would be truthy."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            check_type(f.name, getattr(self, f.name), hints[f.name])

    @classmethod
    def parse_cli_value(cls, name: str, text: str):
        """A --hp value as this field's type takes it: a bool field also takes true/false, yes/no, on/off and
        1/0 (any case); every other value is a literal (parse_hp_value) checked against the field's type."""
        hint = typing.get_type_hints(cls).get(name)
        if hint is not None and _accepts(hint, bool):
            word = text.strip().lower()
            if word not in BOOL_WORDS:
                raise ValueError(f"{name} must be true or false (also accepted, any case: "
                                 f"{', '.join(BOOL_WORDS)}), got {text!r}")
            return BOOL_WORDS[word]
        value = parse_hp_value(text)
        if hint is not None:
            check_type(name, value, hint)
        return value

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: the most transitions one rollout may hold (n_steps * n_envs): far beyond any machine's memory, small enough
#: that the divisor search of a refused batch_size stays instant; the buffer's bytes are checked against the
#: memory available when the agent is built (RolloutBuffer.check_fits)
MAX_ROLLOUT_STEPS = 2**40
#: what a bool hyperparameter takes on the command line (case-insensitive)
BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False, "1": True, "0": False}


def _members(hint) -> tuple:
    """The types a (possibly Optional / union) annotation admits."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _accepts(hint, kind) -> bool:
    return kind in _members(hint)


def check_type(name: str, value, hint) -> None:
    """Raise ValueError unless `value` is of the annotated type: bool only for bool (numpy's included), int
    for int (not bool), float for a finite-or-not real number (not bool), str, a Literal's choices, None
    where Optional. A field that also takes a dict is a schedule: its own check (validate_schedule) runs."""
    members = _members(hint)
    if dict in members or value is None and type(None) in members:
        return
    for kind in members:
        if typing.get_origin(kind) is typing.Literal and value in typing.get_args(kind):
            return
        if kind is bool and isinstance(value, (bool, np.bool_)):
            return
        if kind is int and validation._is_int(value):
            return
        if kind is float and validation._is_number(value):
            return
        if kind is str and isinstance(value, str):
            return
    raise ValueError(f"{name} must be {_describe(members)}, got {value!r}")


def _describe(members) -> str:
    words = {bool: "True or False", int: "an integer", float: "a number", str: "a string", type(None): "None"}
    parts = []
    for kind in members:
        if typing.get_origin(kind) is typing.Literal:
            parts.append("one of " + ", ".join(map(repr, typing.get_args(kind))))
        else:
            parts.append(words.get(kind, getattr(kind, "__name__", str(kind))))
    return " or ".join(parts)


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


class HyperparameterError(ValueError, AssertionError):
    """An impossible hyperparameter: a ValueError naming it and what is accepted, and also the AssertionError
    SB3 raises for one (`clip_range_vf=-0.2`, `n_steps=1` with advantage normalisation), so SB3 code that
    expects that error keeps working."""


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
        shown = ", ".join(map(str, nearest_divisors(total, v)))
        raise ValueError(f"{name}={v} does not divide {what} ({total}); accepted: a divisor such as {shown}")


def nearest_divisors(total: int, near: int, count: int = 8) -> list[int]:
    """The `count` divisors of `total` closest to `near`, ascending: pairs (d, total // d) for d up to
    sqrt(total), so O(sqrt(total)): with total bounded by MAX_ROLLOUT_STEPS, 2**20 steps (a fraction of a second)."""
    found = set()
    for d in range(1, math.isqrt(total) + 1):
        if total % d == 0:
            found.update((d, total // d))
    return sorted(sorted(found, key=lambda d: (abs(d - near), d))[:count])

