"""The rollout buffer and GAE against plain, obviously-correct loops."""

import pytest
import torch

from envs.base import StepResult
from rlgeom.data.buffer import RolloutBuffer, compute_gae


def reference_gae(rewards, values, final_values, terminated, truncated, last_values, gamma, lam):
    """Per env, walk backwards one transition at a time, written from the GAE paper's definition.

    values[t] = V(s_t); the successor of step t is s_{t+1} unless the episode ended at t, in which
    case it is the final observation (value final_values[t]); a terminal successor is worth 0.
    """
    T, N = rewards.shape
    adv = torch.zeros(T, N, dtype=torch.float64)
    for n in range(N):
        next_adv = 0.0
        for t in reversed(range(T)):
            if terminated[t, n]:
                next_value = 0.0
            elif truncated[t, n]:
                next_value = final_values[t, n]
            elif t == T - 1:
                next_value = last_values[n]
            else:
                next_value = values[t + 1, n]
            delta = rewards[t, n] + gamma * next_value - values[t, n]
            ended = terminated[t, n] or truncated[t, n]
            next_adv = delta + (0.0 if ended else gamma * lam * next_adv)
            adv[t, n] = next_adv
    return adv, adv + values


def test_gae_matches_plain_loop_with_truncation_and_termination():
    g = torch.Generator().manual_seed(0)
    T, N, gamma, lam = 37, 4, 0.97, 0.9
    rewards = torch.randn(T, N, generator=g, dtype=torch.float64)
    values = torch.randn(T, N, generator=g, dtype=torch.float64)
    final_values = torch.randn(T, N, generator=g, dtype=torch.float64)
    last_values = torch.randn(N, generator=g, dtype=torch.float64)
    u = torch.rand(T, N, generator=g)
    terminated, truncated = u < 0.08, (u >= 0.08) & (u < 0.16)
    dones = terminated | truncated
    # next_values as the buffer builds them: V(true successor of each step)
    next_values = torch.cat([values[1:], last_values[None]])
    next_values = torch.where(dones, final_values, next_values)
    adv, ret = compute_gae(rewards, values, next_values, terminated, dones, gamma, lam)
    ref_adv, ref_ret = reference_gae(rewards, values, final_values, terminated, truncated, last_values, gamma, lam)
    assert terminated.any() and truncated.any()
    torch.testing.assert_close(adv, ref_adv)
    torch.testing.assert_close(ret, ref_ret)


@pytest.mark.parametrize("T", [1, 2, 5, 64, 1000])
def test_gae_of_long_rollouts_in_float32_matches_the_plain_loop(T):
    """The doubling scan over rollouts of every length class (powers of two and not), with episodes of
    many lengths, against the float64 plain loop."""
    g = torch.Generator().manual_seed(T)
    N, gamma, lam = 3, 0.99, 0.95
    rewards, values = torch.randn(T, N, generator=g), torch.randn(T, N, generator=g)
    final_values, last_values = torch.randn(T, N, generator=g), torch.randn(N, generator=g)
    u = torch.rand(T, N, generator=g)
    terminated, truncated = u < 0.01, (u >= 0.01) & (u < 0.015)
    dones = terminated | truncated
    next_values = torch.where(dones, final_values, torch.cat([values[1:], last_values[None]]))
    adv, ret = compute_gae(rewards, values, next_values, terminated, dones, gamma, lam)
    ref_adv, ref_ret = reference_gae(rewards.double(), values.double(), final_values.double(), terminated, truncated,
                                     last_values.double(), gamma, lam)
    assert adv.dtype == torch.float32
    torch.testing.assert_close(adv.double(), ref_adv, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ret.double(), ref_ret, rtol=1e-5, atol=1e-4)


def test_truncation_bootstraps_but_termination_does_not():
    rewards = torch.ones(1, 2, dtype=torch.float64)
    values = torch.zeros(1, 2, dtype=torch.float64)
    next_values = torch.full((1, 2), 10.0, dtype=torch.float64)
    terminated = torch.tensor([[True, False]])
    dones = torch.tensor([[True, True]])  # env 1 truncated
    adv, _ = compute_gae(rewards, values, next_values, terminated, dones, 0.5, 1.0)
    assert adv.tolist() == [[1.0, 1.0 + 0.5 * 10.0]]


def test_infinite_horizon_constant_reward_approaches_one_over_one_minus_gamma():
    T, gamma = 2000, 0.99
    rewards = torch.ones(T, 1, dtype=torch.float64)
    values = torch.zeros(T, 1, dtype=torch.float64)
    never = torch.zeros(T, 1, dtype=torch.bool)
    _, returns = compute_gae(rewards, values, torch.zeros_like(values), never, never, gamma, 1.0)
    assert abs(returns[0, 0].item() - (1 - gamma**T) / (1 - gamma)) < 1e-9
    assert abs(returns[0, 0].item() - 1 / (1 - gamma)) < 1e-6


def _filled_buffer(T=8, N=3, obs_dim=2):
    buf = RolloutBuffer(T, N, (obs_dim,), torch.float32, (), torch.long, torch.device("cpu"))
    for t in range(T):
        obs = torch.full((N, obs_dim), float(t)) + torch.arange(N)[:, None] * 100
        done = torch.tensor([t == 3, False, t == 5])
        step = StepResult(obs + 1, torch.ones(N), done & torch.tensor([True, False, False]),
                          done & torch.tensor([False, False, True]), obs + 1, torch.full((N,), 7.0),
                          torch.full((N,), 4, dtype=torch.long))
        buf.add(obs, torch.arange(N) + t, torch.zeros(N, dtype=torch.bool), step)
    buf.compute_advantages(lambda o: o[:, 0] * 0, 0.99, 0.95)
    return buf


def test_minibatches_cover_every_sample_once_per_epoch():
    buf = _filled_buffer()
    seen = []
    for mb in buf.minibatches(5, torch.Generator().manual_seed(1)):
        assert len(mb) <= 5
        seen += mb.obs[:, 0].tolist()
    full = buf.full_batch().obs[:, 0].tolist()
    assert sorted(seen) == sorted(full) and len(seen) == 24
    # a second epoch is shuffled differently
    again = [v for mb in buf.minibatches(5, torch.Generator().manual_seed(2)) for v in mb.obs[:, 0].tolist()]
    assert again != seen and sorted(again) == sorted(seen)


@pytest.mark.parametrize("chunk", [5, 4096])
def test_policy_terms_are_evaluated_for_each_transition(monkeypatch, chunk):
    """log π_old and V_old, filled after the rollout (in chunks of `chunk` rows), sit in their transition's row."""
    import rlgeom.data.buffer as buffer_module

    monkeypatch.setattr(buffer_module, "EVALUATION_CHUNK", chunk)
    buf = _filled_buffer()
    buf.evaluate_policy_terms(lambda obs, actions: (obs[:, 0] + 0.5 * actions, -obs[:, 1]))
    for t in range(8):
        for n in range(3):
            assert buf.log_probs[t, n].item() == buf.obs[t, n, 0].item() + 0.5 * buf.actions[t, n].item()
            assert buf.values[t, n].item() == -buf.obs[t, n, 1].item()


@pytest.mark.parametrize("batch_size", [1, 4, 6, 7, 23, 24])
def test_each_minibatch_advantage_is_normalised_on_its_own(batch_size):
    """Against the textbook per-minibatch formula (adv - mean) / (sample std + 1e-8) on the same
    shuffled rows; a minibatch of one is left as it is (SB3's rule). 24 rows: batch sizes that divide it
    and that leave a last, shorter minibatch (of one row for 23)."""
    buf = _filled_buffer()
    buf.advantages = torch.randn(8, 3, generator=torch.Generator().manual_seed(3)) * 5 + 2
    raw = list(buf.minibatches(batch_size, torch.Generator().manual_seed(9)))
    normalised = list(buf.minibatches(batch_size, torch.Generator().manual_seed(9), normalize_advantage=True))
    assert len(raw) == len(normalised) == -(-24 // batch_size)
    for r, n in zip(raw, normalised):
        assert torch.equal(r.obs, n.obs)
        a = r.advantages
        expected = a if len(a) == 1 else (a - a.mean()) / (a.std() + 1e-8)
        torch.testing.assert_close(n.advantages, expected, rtol=1e-5, atol=1e-6)


def test_minibatch_rows_stay_aligned():
    buf = _filled_buffer()
    for mb in buf.minibatches(7, torch.Generator().manual_seed(0)):
        t = mb.obs[:, 0] % 100
        env = (mb.obs[:, 0] // 100).long()
        assert torch.equal(mb.actions, env + t.long())


def test_advantage_normalisation_and_finished_episodes():
    buf = _filled_buffer()
    buf.advantages = torch.randn(8, 3) * 5 + 2
    adv = buf.full_batch(normalize_advantage=True).advantages
    assert abs(adv.mean().item()) < 1e-5 and abs(adv.std().item() - 1) < 1e-4
    returns, lengths = buf.finished_episodes()
    assert returns == [7.0, 7.0] and lengths == [4, 4]


def test_reward_scaler_matches_plain_loop_across_rollouts():
    """Rewards / std of the running discounted return (VecNormalize's rule), against a plain Python
    loop over every env and step, with the running return carried from one rollout to the next."""
    import numpy as np

    from rlgeom.data.normalization import RewardScaler

    gamma, rng = 0.9, np.random.default_rng(0)
    scaler = RewardScaler(gamma)
    running, seen_all = np.zeros(3), []
    for _ in range(2):
        rewards, dones = rng.normal(size=(50, 3)), rng.random((50, 3)) < 0.1
        scaled = scaler.scale_rollout(torch.tensor(rewards, dtype=torch.float32), torch.tensor(dones))
        for t in range(50):
            for i in range(3):
                running[i] = gamma * running[i] + rewards[t, i]
                seen_all.append(running[i])
                if dones[t, i]:
                    running[i] = 0.0
        expected = np.clip(rewards / np.sqrt(np.var(seen_all) + 1e-8), -10, 10)
        np.testing.assert_allclose(scaled.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_add_stores_the_same_rows_without_the_private_multi_tensor_copy(monkeypatch):
    """RolloutBuffer.add uses torch._foreach_copy_ while torch has it (measured faster); a torch without it
    takes the public copy_ loop, which must store exactly the same rows in every field."""
    fast = _filled_buffer()
    monkeypatch.delattr(torch, "_foreach_copy_")
    plain = _filled_buffer()
    fields = ("obs", "next_obs", "actions", "rewards", "terminated", "dones", "episode_starts", "episode_returns",
              "episode_lengths")
    for name in fields:
        assert torch.equal(getattr(fast, name), getattr(plain, name)), name
    assert plain.dones.any() and plain.episode_returns.abs().sum() > 0  # the rows were written, not left zero
