"""Dict observations as one flat row per observation: how rlgeom stores and moves them.

A gymnasium `Dict` observation (SB3's MultiInputPolicy case) is packed at the env boundary into one
row [D] (each key's values flattened and concatenated, keys in the space's order) and unpacked
again only inside the policy, before the features extractor (rlgeom.models.policies.Preprocess). So
the rollout buffer, the running normaliser, checkpoints and every update keep handling one tensor
per observation, as for any Box.

| key's space            | stored as                             | unpacked to                     |
|------------------------|---------------------------------------|---------------------------------|
| Box (any shape, float) | its values                            | float32 [B, *shape]             |
| Box uint8 (images)     | its values (exact in float32)         | uint8 [B, *shape]               |
| Discrete               | the integer                           | int64 [B]                       |
| MultiDiscrete          | the integers                          | int64 [B, *nvec.shape]          |
| MultiBinary            | 0/1                                   | float32 [B, *shape]             |

Rows are uint8 when every key is uint8 (image-only dicts stay compact), else float32 (integers up
to 2²⁴ are exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from gymnasium import spaces

SUB_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


@dataclass(frozen=True)
class Entry:
    key: str
    space: object
    shape: tuple[int, ...]
    offset: int
    size: int


class NestedSpaceError(NotImplementedError, ValueError):
    """A Dict inside a Dict: SB3 raises NotImplementedError; a ValueError too, as rlgeom's other bad input."""


class DictLayout:
    """Where each key of a Dict observation space lives in the packed row."""

    def __init__(self, space: spaces.Dict):
        if not isinstance(space, spaces.Dict):
            raise TypeError(f"DictLayout needs a gymnasium Dict space, got {space!r}")
        entries, offset = [], 0
        for key, sub in space.spaces.items():
            if isinstance(sub, (spaces.Dict, spaces.Tuple)):
                raise NestedSpaceError(f"Nested observation spaces are not supported (Tuple/Dict space inside "
                                       f"Tuple/Dict space): key {key!r} holds {sub!r} (SB3's error); flatten the "
                                       "Dict into one level of Box, Discrete, MultiDiscrete and MultiBinary keys")
            if not isinstance(sub, SUB_SPACES):
                raise ValueError(f"unsupported space {sub!r} under key {key!r} of a Dict observation; accepted "
                                 "inside a Dict: Box, Discrete, MultiDiscrete, MultiBinary (no nesting)")
            shape = tuple(sub.shape)
            size = int(np.prod(shape)) if shape else 1
            entries.append(Entry(key, sub, shape, offset, size))
            offset += size
        if not entries:
            raise ValueError("a Dict observation space needs at least one key")
        self.space, self.entries, self.width = space, tuple(entries), offset
        self.dtype = np.uint8 if all(isinstance(e.space, spaces.Box) and e.space.dtype == np.uint8
                                     for e in entries) else np.float32

    def pack(self, obs: dict, batched: bool = True) -> np.ndarray:
        """A dict of arrays [N, *shape] (batched) or [*shape] as rows [N, D] (or one row [D])."""
        missing = [e.key for e in self.entries if e.key not in obs]
        if missing or len(obs) != len(self.entries):
            raise ValueError(f"observation keys {sorted(obs)} do not match the Dict space's keys "
                             f"{[e.key for e in self.entries]}")
        parts = []
        for e in self.entries:
            value = np.asarray(obs[e.key])
            expected = value.shape[1:] if batched else value.shape
            if tuple(expected) != e.shape:
                raise ValueError(f"observation[{e.key!r}] has shape {value.shape}; the space's is {e.shape}"
                                 + (" with a leading batch dimension" if batched else ""))
            parts.append(value.reshape(value.shape[0], -1) if batched else value.reshape(-1))
        return np.concatenate(parts, axis=-1, dtype=self.dtype)

    def batch_size(self, obs: dict) -> int | None:
        """N for a batch of observations, None for a single one (judged by the first key's shape)."""
        first = self.entries[0]
        value = np.asarray(obs.get(first.key)) if isinstance(obs, dict) else None
        if value is None or value.shape == first.shape:
            return None
        return value.shape[0] if value.shape[1:] == first.shape else None

    def unpack(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Packed rows [B, D] as {key: tensor [B, *shape]} in each space's natural dtype."""
        out = {}
        for e in self.entries:
            part = rows[:, e.offset:e.offset + e.size].reshape(rows.shape[0], *e.shape)
            if isinstance(e.space, (spaces.Discrete, spaces.MultiDiscrete)):
                part = part.long()
            elif isinstance(e.space, spaces.Box) and e.space.dtype == np.uint8:
                part = part.to(torch.uint8)
            else:
                part = part.float()
            out[e.key] = part
        return out

    def unpack_numpy(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Packed rows [N, D] as SB3 hands Dict observations to callbacks: {key: array [N, *shape]}."""
        return {key: value.numpy().astype(space.dtype, copy=False) for (key, value), space in
                zip(self.unpack(torch.as_tensor(rows)).items(), (e.space for e in self.entries))}

    def float_mask(self) -> torch.Tensor:
        """True on the entries of float Box keys (non-image): what running normalisation may touch (SB3's
        VecNormalize would normalise every key, images included; scaled images and one-hot codes should not be)."""
        mask = torch.zeros(self.width, dtype=torch.bool)
        for e in self.entries:
            if isinstance(e.space, spaces.Box) and np.issubdtype(e.space.dtype, np.floating):
                mask[e.offset:e.offset + e.size] = True
        return mask


def layout_for(space) -> DictLayout | None:
    """The packing layout of a Dict observation space; None for every other space (stored as it is)."""
    return DictLayout(space) if isinstance(space, spaces.Dict) else None
