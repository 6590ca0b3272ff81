"""The rollback guard of every agent: `update()` runs under it, and a non-finite loss, gradient,
Fisher product or parameter puts the parameters, optimisers and agent state back as they were.

A skip is counted in `train/skipped_updates`; after `max_consecutive_skips` in a row a final
checkpoint is written and TrainingDivergedError raised. Agents raise `SkippedUpdate` through
`rlgeom.training.guards.guard_finite(name=tensor, ...)` before their parameters move.
"""

from __future__ import annotations

import copy
import os
import sys

import torch

from rlgeom.training import distributed
from rlgeom.training.guards import SkippedUpdate, TrainingDivergedError, guard_finite


class RollbackGuard:
    """Mixin of OnPolicyAgent (agents/base.py): the guarded update and its snapshot."""

    def _guarded_update(self, progress_remaining: float) -> dict:
        """`update()` under the guard: on SkippedUpdate (or non-finite parameters afterwards) the
        parameters, optimisers and extra state go back to their values before the update."""
        snapshot = self._training_snapshot()
        try:
            try:
                stats = self.update(self.buffer, progress_remaining)
                guard_finite(parameters=list(self.policy.parameters()))
            except SkippedUpdate:
                distributed.agree(True)  # the ranks skip together, or their parameters would part
                raise
            if distributed.agree(False):
                raise SkippedUpdate(["another rank's update"])
        except SkippedUpdate as skip:
            self._restore_training_snapshot(snapshot)
            self.skipped_updates += 1
            self._consecutive_skips += 1
            if self.verbose:
                print(f"step {self.num_timesteps}: update skipped ({skip})", file=sys.stderr)
            if self._consecutive_skips >= self.max_consecutive_skips:
                self._stop_diverged(skip)
            stats = {}
        else:
            self.n_updates += 1
            self.sb3_n_updates += self._sb3_updates_counted(stats)
            self._consecutive_skips = 0
        stats["train/skipped_updates"] = self.skipped_updates
        return stats

    def _training_snapshot(self) -> dict:
        return _clone_tree({
            "policy": self.policy.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self._optimizers().items()},
            "extra": self._extra_state(),
        })

    def _restore_training_snapshot(self, snapshot: dict) -> None:
        self.policy.load_state_dict(snapshot["policy"])
        for name, optimizer in self._optimizers().items():
            optimizer.load_state_dict(snapshot["optimizers"][name])
        self._load_extra_state(snapshot["extra"])

    def _stop_diverged(self, skip: SkippedUpdate) -> None:
        self._consecutive_skips = 0  # a run resumed from the final checkpoint starts counting afresh
        directory = self._checkpoint_dir or (os.path.join(self._run_dir, "checkpoints") if self._run_dir else None)
        saved = self._write_checkpoint(directory) if directory and distributed.is_main() else None
        self.logger.record("train/skipped_updates", self.skipped_updates)
        self.logger.dump(self.num_timesteps)
        where = (f"final checkpoint: {saved}" if saved else
                 "no checkpoint written (pass checkpoint_dir= to learn() or tensorboard_log= to the agent)")
        raise TrainingDivergedError(
            f"training stopped at step {self.num_timesteps}: {self.max_consecutive_skips} consecutive updates were "
            f"skipped because of non-finite {', '.join(skip.names)}; the parameters are those of the last good "
            f"update ({where}). Try a smaller learning rate or step size (max_kl, kl_clip), observation/reward "
            "normalisation, or check the environment's observations and rewards"
        )


def _clone_tree(x):
    """Nested dicts/lists/tuples with every tensor cloned (other leaves shared): a cheap deepcopy."""
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, dict):
        return type(x)((k, _clone_tree(v)) for k, v in x.items())
    if isinstance(x, (list, tuple)):
        return type(x)(_clone_tree(v) for v in x)
    return copy.copy(x)
