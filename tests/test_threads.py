"""learn()'s CPU thread count (rlgeom.training.threads): the agent's `threads`, else the user's own
torch.set_num_threads, else measured for the policy; restored when learn returns."""

from __future__ import annotations

import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback

from agents import PPO
from rlgeom.training import threads


class _Recorder(BaseCallback):
    """Records torch's thread count at every step."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def _on_step(self) -> bool:
        self.seen.add(torch.get_num_threads())
        return True


def _agent(**kw):
    return PPO("MlpPolicy", "CartPole-v1", n_steps=16, batch_size=16, n_epochs=1, seed=0, device="cpu", **kw)


@pytest.fixture
def fresh(monkeypatch):
    """torch's count as rlgeom saw it at import, no environment override, no earlier measurement."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_CHOSEN", {})
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "THREADS_AT_IMPORT", before)
    yield before
    torch.set_num_threads(before)


def test_threads_given_to_the_agent_are_used_and_the_count_is_restored(fresh):
    recorder = _Recorder()
    agent = _agent(threads=3)
    agent.learn(32, callback=recorder)
    assert recorder.seen == {3} and agent.threads_used == 3
    assert torch.get_num_threads() == fresh


def test_the_users_own_set_num_threads_is_respected_without_measuring(fresh, monkeypatch):
    monkeypatch.setattr(threads, "measure", lambda *a, **k: pytest.fail("measured despite the user's choice"))
    mine = 3 if fresh != 3 else 2
    torch.set_num_threads(mine)
    recorder = _Recorder()
    _agent().learn(32, callback=recorder)
    assert recorder.seen == {mine} and torch.get_num_threads() == mine


@pytest.mark.parametrize("faster", ["one", "many"])
def test_an_unset_count_is_measured_once_and_the_faster_is_used(fresh, monkeypatch, faster):
    """1 thread unless more are measured faster by the margin; the measurement runs once per policy shape."""
    many = 4
    torch.set_num_threads(many)
    monkeypatch.setattr(threads, "THREADS_AT_IMPORT", many)  # as if torch's default were 4 threads
    calls = []

    def fake_measure(step, minibatch, steps, minibatches, candidates):
        calls.append(candidates)
        return {1: 1.0, many: 0.5} if faster == "many" else {1: 1.0, many: 0.95}  # 0.95: within the margin
    monkeypatch.setattr(threads, "measure", fake_measure)
    said, recorder = [], _Recorder()
    agent = _agent()
    with threads.learning_threads(agent.policy, 1, 16, 16, None, said.append):
        pass
    agent.learn(32, callback=recorder)
    agent.learn(32, callback=recorder)
    expected = many if faster == "many" else 1
    assert calls == [(1, many)] and recorder.seen == {expected} and agent.threads_used == expected
    assert len(said) == 1 and f"{expected} CPU thread" in said[0]
    assert torch.get_num_threads() == many


def test_the_measurement_times_the_policy_without_drawing_random_numbers(fresh):
    agent = _agent()
    step, minibatch = threads.policy_workloads(agent.policy, 2, 32)
    assert step().shape == (2,)
    grads = minibatch()
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None or not p.grad.any() for p in agent.policy.parameters())  # nothing accumulated
    state = torch.get_rng_state()
    with torch.random.fork_rng(devices=[]):
        cost = threads.measure(step, minibatch, 16, 1, (1, 2))
    assert set(cost) == {1, 2} and all(0 < c < 10 for c in cost.values())
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == fresh


def test_threads_must_be_a_positive_integer():
    with pytest.raises(ValueError, match="threads must be a positive integer or None"):
        _agent(threads=0)


class _BatchNorm(torch.nn.Module):
    """A features extractor whose forward in train mode moves running statistics (and refuses one row)."""

    def __init__(self, observation_space):
        super().__init__()
        self.features_dim = observation_space.shape[0]
        self.norm = torch.nn.BatchNorm1d(self.features_dim)

    def forward(self, obs):
        return self.norm(obs)


def test_the_measurement_leaves_a_batch_norm_and_the_policys_mode_as_they_were(fresh, monkeypatch):
    torch.set_num_threads(2)  # a count of 2 as torch's default, so that learning_threads measures 1 against it
    monkeypatch.setattr(threads, "THREADS_AT_IMPORT", 2)
    agent = _agent(policy_kwargs=dict(features_extractor_class=_BatchNorm))
    norm = agent.policy.actor.features[1].norm
    state = {k: v.clone() for k, v in norm.state_dict().items()}
    with threads.learning_threads(agent.policy, 1, 16, 16, None, lambda message: None):
        pass  # measured here: the rollout's step on one row would fail in train mode
    assert all(torch.equal(v, norm.state_dict()[k]) for k, v in state.items()) and agent.policy.training
