"""What `predict` accepts as an observation, checked before it reaches the policy (issue 30, items 10-11).

The env boundary (envs.boundary) stores uint8 image spaces as uint8 and everything else as float32;
`predict` casts a caller's array the same way, so the checks are on what the cast would do:
- an array of numbers only (an object array holding None, strings or mixed types is refused);
- for a uint8 space (images): whole numbers in [0, 255]. numpy's cast would wrap 300 to 44 and turn a float
  image scaled to [0, 1) into zeros; SB3 casts without a check (its preprocess_obs then divides by 255), so
  rlgeom refuses instead of guessing a scale;
- for every other space: finite after the cast to float32 (float64 1e300 becomes inf there), and for the
  spaces the policy one-hot encodes (Discrete, MultiDiscrete, MultiBinary) whole numbers within the space.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

#: dtype kinds that are numbers: bool, signed and unsigned integers, floats
NUMERIC_KINDS = "biuf"


def checked_observation(value, space, what: str = "observation") -> np.ndarray:
    """`value` as an array of the dtype the policy takes for `space` (uint8 or float32); ValueError naming
    what is wrong with it and what is accepted."""
    if isinstance(value, dict):
        raise ValueError(f"{what} is a dict, but this model's observation space is {space}; accepted: an array")
    try:
        arr = np.asarray(value)
    except ValueError as err:  # a ragged nested list
        raise ValueError(f"{what} is not a rectangular array of numbers: {err}") from None
    if arr.dtype.kind not in NUMERIC_KINDS:
        inside = " (it holds None, strings or mixed types)" if arr.dtype == object else ""
        raise ValueError(f"{what} is an array of dtype {arr.dtype}{inside}; accepted: an array of numbers "
                         "(bool, integer or float)")
    if getattr(space, "dtype", None) == np.uint8:
        return _uint8(arr, what)
    with np.errstate(over="ignore"):  # an overflow to inf is reported just below, by name
        out = arr.astype(np.float32, copy=False)
    if not np.isfinite(out).all():
        raise ValueError(f"{what} contains NaN or inf, or numbers beyond float32's range (about ±3.4e38, which "
                         "become inf in the cast the policy takes); rlgeom acts only on finite observations")
    _check_categories(arr, space, what)
    return out


def _check_categories(arr: np.ndarray, space, what: str) -> None:
    """Discrete, MultiDiscrete and MultiBinary observations are one-hot encoded by the policy: each value a
    whole number within the space (2.5 would be truncated, 7 of a Discrete(5) fail inside torch's one_hot)."""
    if isinstance(space, spaces.Discrete):
        low, high = np.int64(space.start), np.int64(space.start + space.n - 1)
    elif isinstance(space, spaces.MultiDiscrete):
        low, high = space.start, space.start + space.nvec - 1
    elif isinstance(space, spaces.MultiBinary):
        low, high = 0, 1
    else:
        return
    shape = tuple(space.shape)
    if shape and arr.shape[arr.ndim - len(shape):] != shape:
        return  # the shape check names the problem
    whole = arr.dtype.kind in "biu" or bool((arr == np.round(arr)).all())
    if not whole or bool((arr < low).any() or (arr > high).any()):
        per_entry = f" (per entry: {low} to {high})" if np.ndim(low) else ""
        raise ValueError(f"{what}: this model's observation space is {space}, which takes whole numbers from "
                         f"{np.min(low)} to {np.max(high)}{per_entry}; got values from {arr.min()} to {arr.max()}"
                         f"{'' if whole else ' (not all whole numbers)'}")


def _uint8(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.dtype == np.uint8 or arr.dtype == np.bool_ or arr.size == 0:
        return arr.astype(np.uint8, copy=False)
    whole = arr.dtype.kind in "iu" or bool(np.isfinite(arr).all() and (arr == np.round(arr)).all())
    low, high = arr.min(), arr.max()
    if not whole or low < 0 or high > 255:
        hint = (" (a float image scaled to [0, 1] must be multiplied by 255 and rounded: pass the env's "
                "observations unscaled)" if not whole else "")
        raise ValueError(f"{what}: this model's observations are uint8 (images: whole numbers from 0 to 255), got "
                         f"{arr.dtype} values from {low} to {high}{hint}; numpy's cast would wrap or truncate them")
    return arr.astype(np.uint8)


__all__ = ["checked_observation"]
