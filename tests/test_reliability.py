"""Safe loading of bad files, numerical guards (NaN injection), non-finite envs, determinism."""

from __future__ import annotations

import dataclasses
import json

import gymnasium as gym
import numpy as np
import pytest
import torch

import agents.critic
import agents.ppo
from agents import AGENTS, PPO, VPG
from envs import NonFiniteEnvError
from rlgeom.persistence import checkpoint as ckpt
from rlgeom.training.guards import SkippedUpdate, TrainingDivergedError, guard_finite
from rlgeom.persistence.serialization import ModelFileError

TINY = dict(n_steps=32, batch_size=32, n_epochs=2, n_critic_updates=2)



def tiny(cls) -> dict:
    """The TINY hyperparameters this agent's config has (so later agents are covered too)."""
    names = {f.name for f in dataclasses.fields(cls.Config)}
    return {k: v for k, v in TINY.items() if k in names}


def make(cls=PPO, env="CartPole-v1", **kw):
    return cls("MlpPolicy", env, seed=0, device="cpu", **{**tiny(cls), **kw})


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> str:
    agent = make()
    agent.learn(32)
    return agent.save(tmp_path_factory.mktemp("m") / "ppo")


def _header(path) -> tuple[int, bytes, bytes]:
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    return n, raw[8 : 8 + n], raw[8 + n :]


def _rewrite_description(src, dst, edit) -> str:
    """Hand-edit the JSON description inside the header, as a user with a text editor would."""
    n, header, body = _header(src)
    meta = json.loads(header)
    description = json.loads(meta["__metadata__"]["description"])
    edit(description)
    meta["__metadata__"]["description"] = json.dumps(description)
    new = json.dumps(meta).encode()
    new += b" " * (-len(new) % 8)
    with open(dst, "wb") as f:
        f.write(len(new).to_bytes(8, "little") + new + body)
    return str(dst)


# ----------------------------------------------------------------------------- bad files
def test_truncated_file(saved, tmp_path):
    raw = open(saved, "rb").read()
    for cut in (0, 5, 100, len(raw) // 2, len(raw) - 1):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(raw[:cut])
        with pytest.raises(ModelFileError, match=f"cut{cut}"):
            PPO.load(bad)


def test_corrupted_weights_fail_the_checksum(saved, tmp_path):
    raw = bytearray(open(saved, "rb").read())
    raw[-3] ^= 0xFF
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="flipped.safetensors: checksum mismatch"):
        PPO.load(bad)


def test_corrupted_header(saved, tmp_path):
    n, header, body = _header(saved)
    bad = tmp_path / "header.safetensors"
    bad.write_bytes(n.to_bytes(8, "little") + header.replace(b'"', b"'", 3) + body)
    with pytest.raises(ModelFileError, match="header.safetensors: not a readable safetensors"):
        PPO.load(bad)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["hyperparameters"].update(n_steps=-1), "n_steps must be a positive integer"),
        (lambda d: d["observation_space"].update(shape=[5], low=[0] * 5, high=[1] * 5), "weights do not fit"),
        (lambda d: d.pop("action_space"), "incomplete or inconsistent"),
        (lambda d: d["hyperparameters"].update(warp_drive=1), "unknown hyperparameter"),
        (lambda d: d.update(extra_state={"__tensor__": "extra/gone"}), "missing"),
        (lambda d: d.update(num_timesteps="many"), "bad step counters"),
    ],
    ids=["bad-value", "other-obs-space", "no-action-space", "unknown-hp", "dangling-tensor", "bad-counter"],
)
def test_hand_edited_description(saved, tmp_path, edit, message):
    bad = _rewrite_description(saved, tmp_path / "edited.safetensors", edit)
    with pytest.raises(ModelFileError, match=message) as err:
        PPO.load(bad)
    assert "edited.safetensors" in str(err.value)


def test_description_that_is_not_json(saved, tmp_path):
    n, header, body = _header(saved)
    meta = json.loads(header)
    meta["__metadata__"]["description"] = "{not json"
    new = json.dumps(meta).encode()
    bad = tmp_path / "nojson.safetensors"
    bad.write_bytes(len(new).to_bytes(8, "little") + new + body)
    with pytest.raises(ModelFileError, match="nojson.safetensors: .*not valid JSON"):
        PPO.load(bad)


def test_file_of_another_agent(saved):
    with pytest.raises(ModelFileError, match="holds a PPO model, not VPG; load it with PPO.load"):
        VPG.load(saved)


def test_incompatible_env_spaces_name_the_file(saved):
    with pytest.raises(ModelFileError, match=r"ppo.safetensors: does not fit this env: .*observation space"):
        PPO.load(saved, env="Pendulum-v1")


def test_foreign_files_are_never_executed(tmp_path):
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ModelFileError, match="not an rlgeom model"):
        PPO.load(plain)
    # the bytes of a Python pickle stream (protocol 4, the object None): rejected as data, never unpickled
    pickled = tmp_path / "model.pkl"
    pickled.write_bytes(b"\x80\x04\x95\x01\x00\x00\x00\x00\x00\x00\x00N.")
    with pytest.raises(ModelFileError, match="model.pkl: not a readable safetensors"):
        PPO.load(pickled)
    with pytest.raises(ModelFileError, match="no such model file"):
        PPO.load(tmp_path / "missing")


def test_checkpoint_optimizer_state_that_does_not_fit(tmp_path):
    agent = make()
    agent.learn(32, checkpoint_every=32, checkpoint_dir=tmp_path)
    path = ckpt.checkpoint_path(tmp_path, 32)

    def drop_optimizer(d):
        d["checkpoint"]["state"]["optimizers"] = {}

    bad = _rewrite_description(path, tmp_path / "noopt.safetensors", drop_optimizer)
    with pytest.raises(ModelFileError, match="noopt.safetensors: the checkpoint has no state for the optimiser 'optimizer'"):
        PPO.load(bad)


# ----------------------------------------------------------------------------- numerical guards
def test_guard_finite_names_the_culprits():
    guard_finite(loss=torch.tensor(1.0), grads=[torch.ones(3), None], lr=3e-4)
    with pytest.raises(SkippedUpdate, match="non-finite grads, cg_solution"):
        guard_finite(loss=torch.tensor(1.0), grads=[torch.tensor([float("nan")])], cg_solution=torch.tensor(float("inf")))


class _NanOnCalls:
    """Wrap a function so that chosen calls return NaN (counting calls across the run)."""

    def __init__(self, fn, bad_calls):
        self.fn, self.bad_calls, self.calls = fn, set(bad_calls), 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        out = self.fn(*args, **kwargs)
        return out * float("nan") if self.calls in self.bad_calls else out


def _params(agent):
    return [p.detach().clone() for p in agent.policy.parameters()]


@pytest.mark.parametrize("cls, module", [(PPO, agents.ppo), (VPG, agents.critic)], ids=["PPO", "VPG"])
def test_nan_loss_is_skipped_and_rolled_back(cls, module, monkeypatch, tmp_path):
    agent = make(cls, tensorboard_log=str(tmp_path))
    agent.learn(32)  # one good update
    before = _params(agent)
    opt_before = {k: {i: {n: t.clone() for n, t in s.items()} for i, s in o.state_dict()["state"].items()}
                  for k, o in agent._optimizers().items()}
    monkeypatch.setattr(module.F, "mse_loss", _NanOnCalls(module.F.mse_loss, bad_calls={1}))
    agent.learn(32, reset_num_timesteps=False)  # the value loss of its first minibatch is NaN
    assert agent.skipped_updates == 1 and agent.n_updates == 1
    assert all(torch.equal(a, b) for a, b in zip(before, _params(agent)))
    for k, o in agent._optimizers().items():
        for i, s in o.state_dict()["state"].items():
            assert all(torch.equal(t, opt_before[k][i][n]) for n, t in s.items())
    agent.learn(32, reset_num_timesteps=False)  # training goes on normally
    assert agent.skipped_updates == 1 and agent.n_updates == 2
    assert all(torch.isfinite(p).all() for p in agent.policy.parameters())
    agent.logger.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(agent._run_dir)
    acc.Reload()
    assert [e.value for e in acc.Scalars("train/skipped_updates")] == [0, 1, 1]


@pytest.mark.parametrize("cls", [PPO, VPG], ids=["PPO", "VPG"])
def test_nan_gradient_never_reaches_the_parameters(cls):
    agent = make(cls)
    agent.learn(32)
    before = _params(agent)
    first = next(iter(agent.policy.actor_parameters())) if cls is VPG else next(iter(agent.policy.parameters()))
    handle = first.register_hook(lambda g: torch.full_like(g, float("nan")))
    agent.learn(32, reset_num_timesteps=False)
    handle.remove()
    assert agent.skipped_updates == 1
    assert all(torch.equal(a, b) for a, b in zip(before, _params(agent)))


def test_consecutive_skips_stop_training_with_a_final_checkpoint(monkeypatch, tmp_path):
    agent = make(PPO, max_consecutive_skips=3)
    monkeypatch.setattr(agents.ppo.F, "mse_loss", _NanOnCalls(agents.ppo.F.mse_loss, bad_calls=range(10_000)))
    with pytest.raises(TrainingDivergedError, match="3 consecutive updates were skipped because of non-finite loss") as err:
        agent.learn(10 * 32, checkpoint_every=10_000, checkpoint_dir=tmp_path)
    assert agent.num_timesteps == 96 and agent.skipped_updates == 3
    final = ckpt.checkpoint_path(tmp_path, 96)
    assert final in str(err.value)
    restored = PPO.load(final)
    assert all(torch.isfinite(p).all() for p in restored.policy.parameters())


# ----------------------------------------------------------------------------- non-finite envs
class NaNAfter(gym.Wrapper):
    """CartPole whose observation (or reward) turns NaN on chosen steps."""

    def __init__(self, what="obs", steps=(5,)):
        super().__init__(gym.make("CartPole-v1"))
        self.what, self.steps, self.t = what, set(steps), 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.t += 1
        if self.t in self.steps:
            if self.what == "obs":
                obs = obs.copy()
                obs[1] = np.nan
            else:
                reward = float("inf")
        return obs, reward, terminated, truncated, info


def test_nonfinite_observation_raises_naming_env_index_and_step():
    agent = make(PPO, env=NaNAfter("obs", steps=(5,)))
    with pytest.raises(NonFiniteEnvError, match=r"non-finite observation .* at vector step 5, env index\(es\) \[0\]"):
        agent.learn(32)


def test_nonfinite_values_can_be_sanitised_and_counted(tmp_path):
    agent = make(PPO, env=NaNAfter("reward", steps=(3, 7)), nonfinite="sanitize", tensorboard_log=str(tmp_path))
    agent.learn(64)
    assert agent._nonfinite.counts == {"reward": 2}
    assert torch.isfinite(agent.buffer.rewards).all()
    agent.logger.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(agent._run_dir)
    acc.Reload()
    assert [e.value for e in acc.Scalars("rollout/nonfinite_sanitized")] == [2, 2]


# ----------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("algo", sorted(AGENTS))
def test_same_seed_same_returns_and_parameters_on_cpu(algo):
    cls = AGENTS[algo]

    def run():
        agent = make(cls)
        agent.learn(3 * 32)
        return [e["r"] for e in agent.ep_info_buffer], _params(agent)

    (returns_a, params_a), (returns_b, params_b) = run(), run()
    assert returns_a == returns_b
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b))


def test_different_seeds_differ():
    a, b = make(PPO), PPO("MlpPolicy", "CartPole-v1", seed=1, device="cpu", **tiny(PPO))
    assert not all(torch.equal(x, y) for x, y in zip(_params(a), _params(b)))
