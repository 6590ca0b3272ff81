"""Atari preprocessing: frames, and games that need FIRE do not freeze."""

import pytest
import torch

pytest.importorskip("ale_py")
pytest.importorskip("cv2")

from envs import make_vec_env  # noqa: E402


def test_breakout_frames_and_a_noop_policy_still_ends_episodes():
    env = make_vec_env("ALE/Breakout-v5", 1, seed=0)
    obs = env.reset(seed=0)
    assert obs.shape == (1, 4, 84, 84) and obs.dtype == torch.uint8
    noop = torch.zeros(1, dtype=torch.long)
    # The ball is launched at the start and after every lost life, so a paddle that never moves
    # loses all five lives long before the 27k-step time limit.
    for t in range(3000):
        step = env.step(noop)
        if step.done.item():
            break
    env.close()
    assert step.terminated.item(), f"no episode ended in {t + 1} no-op steps"
    assert step.episode_length.item() < 3000
