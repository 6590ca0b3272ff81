"""The rollback guard of every agent: `update()` runs under it, and a non-finite loss, gradient,
Fisher product or parameter puts the parameters, optimisers and agent state back as they were.

A skip is reported as it happens (SkippedUpdateWarning) and counted in `train/skipped_updates`; after
`max_consecutive_skips` in a row a final checkpoint is written and TrainingDivergedError raised. A learn()
call whose every update was skipped ends with a SkippedUpdateWarning and `untrained_reason` set (the CLI
then exits 1). Agents raise `SkippedUpdate` through
`rlgeom.training.guards.guard_finite(name=tensor, ...)` before their parameters move.
"""

from __future__ import annotations

import copy
import os
import warnings

import torch

from rlgeom.training import distributed
from rlgeom.training.guards import SkippedUpdate, SkippedUpdateWarning, TrainingDivergedError, guard_finite


#: the name a skip gives when the rollout's returns or advantages are not finite
ROLLOUT_OVERFLOW = ("returns / advantages of the rollout (the rewards' discounted sums overflow float32: scale the "
                    "rewards, e.g. normalize_reward=True)")


class RollbackGuard:
    """Mixin of OnPolicyAgent (agents/base.py): the guarded update and its snapshot."""

    def _guarded_update(self, progress_remaining: float) -> dict:
        """`update()` under the guard: on SkippedUpdate (or non-finite parameters afterwards) the
        parameters, optimisers and extra state go back to their values before the update."""
        snapshot = self._training_snapshot()
        try:
            try:
                # finite rewards whose discounted sums overflow float32 (3e38 each) make every loss NaN: named here
                guard_finite(**{ROLLOUT_OVERFLOW: [self.buffer.returns, self.buffer.advantages]})
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
            self._last_skip = skip
            if distributed.is_main():  # reported as it happens, whatever the verbosity (and in train/skipped_updates)
                warnings.warn(f"step {self.num_timesteps}: update skipped ({skip}); the parameters stay as they were "
                              f"({self._consecutive_skips} in a row, training stops at {self.max_consecutive_skips})",
                              SkippedUpdateWarning, stacklevel=2)
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

    def _check_some_update_applied(self, updates_before: int, skips_before: int) -> None:
        """At the end of learn(): a call whose every update was skipped did not train. The API warns (a skip
        is a warning until max_consecutive_skips in a row; learn() in short pieces may see one alone) and
        keeps the reason in `untrained_reason`, which the CLI turns into exit status 1."""
        skipped = self.skipped_updates - skips_before
        self.untrained_reason = None
        if self.n_updates == updates_before and skipped > 0:
            self.untrained_reason = (f"every update of this learn() call ({skipped}) was skipped because of non-finite "
                                     f"{', '.join(self._last_skip.names)}: the model did not train")
            if distributed.is_main():
                warnings.warn(self.untrained_reason, SkippedUpdateWarning, stacklevel=3)

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
