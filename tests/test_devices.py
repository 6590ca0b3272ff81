"""Devices: what device="auto" picks, and the env boundary where tensors change device (envs.device).

Without a GPU the boundary is checked with torch's "meta" device as the far side (tensors there have a
device, dtype and shape but no data), and the packing of a step into one buffer with a CPU "device";
the tests marked cuda run the real path where CUDA exists.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch

from agents import PPO, devices
from agents.devices import auto_device, choose_device, mlp_parameters, resolve_device  # auto_device: before conftest patches it
from envs import make_vec_env
from envs.base import StepResult, VecEnv
from envs.device import FIELDS, HostTransfer, OnDevice, on_device
from rlgeom.training.evaluation import evaluate

META = torch.device("meta")


# ----------------------------------------------------------------------------- device="auto"
def test_auto_takes_the_cpu_for_a_small_mlp_on_a_host_env():
    device, reason = choose_device(cuda=True, env_on_cuda=False, images=False, n_envs=8, parameters=mlp_parameters(None))
    assert device.type == "cpu" and "8 env(s)" in reason and "device='cuda'" in reason


@pytest.mark.parametrize("inputs,why", [
    (dict(env_on_cuda=True, images=False, n_envs=8, parameters=100), "env steps on the GPU"),
    (dict(env_on_cuda=False, images=True, n_envs=1, parameters=100), "CNN policy"),
    (dict(env_on_cuda=False, images=False, n_envs=1024, parameters=mlp_parameters(None)), "1024 envs"),
])
def test_auto_takes_cuda_for_a_gpu_env_images_or_large_batches(inputs, why):
    device, reason = choose_device(cuda=True, **inputs)
    assert device.type == "cuda" and why in reason
    assert choose_device(cuda=False, **inputs)[0].type == "cpu"  # never without CUDA


def test_mlp_parameters_reads_net_arch_as_the_policy_does():
    assert mlp_parameters(None) == 2 * (64 * 64 + 128)
    assert mlp_parameters(dict(net_arch=[256, 256])) == 2 * (256 * 256 + 512)
    assert mlp_parameters(dict(net_arch=dict(pi=[8], vf=[32, 32]))) == 8 + 32 * 32 + 64
    assert mlp_parameters(dict(net_arch=[dict(pi=[8], vf=[8])])) == 16


def test_auto_says_once_what_it_chose_and_why(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(devices, "_SAID", set())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        first = auto_device("CartPole-v1", 8, "MlpPolicy", None)
        again = auto_device("CartPole-v1", 8, "MlpPolicy", None)
        native = auto_device("torch/CartPole-v1", 4096, "MlpPolicy", None)
    assert first.type == again.type == "cpu"
    said = [str(w.message) for w in seen if issubclass(w.category, devices.DeviceChoice)]
    assert len(said) == 2 and "chose cpu" in said[0] and "8 env(s)" in said[0]
    assert native.type == "cuda" and "chose cuda: the env steps on the GPU" in said[1]


def test_an_explicit_device_is_obeyed_and_auto_asks_the_agent():
    def never():
        raise AssertionError("auto consulted for an explicit device")

    assert resolve_device("cpu", never) == torch.device("cpu")
    assert resolve_device("auto", lambda: META) == META


# ----------------------------------------------------------------------------- the env boundary
def every_tensor(result: StepResult):
    return [getattr(result, name) for name in FIELDS]


def test_a_cpu_env_seen_from_another_device_gives_every_tensor_there():
    cpu_env = make_vec_env("CartPole-v1", 3, seed=0)
    env = on_device(cpu_env, META)
    assert isinstance(env, OnDevice) and env.device == META and on_device(cpu_env, "cpu") is cpu_env
    assert env.reset(seed=0).device == META
    reference = make_vec_env("CartPole-v1", 3, seed=0)
    reference.reset(seed=0)
    for _ in range(30):  # episodes end on the way: final_obs differs from obs then
        actions = torch.ones(3, dtype=torch.long)
        moved, plain = env.step(actions), reference.step(actions)
        for name, a, b in zip(FIELDS, every_tensor(moved), every_tensor(plain)):
            assert a.device == META and a.dtype == b.dtype and a.shape == b.shape, name


class ActionRecorder(VecEnv):
    """A VecEnv claiming the meta device that records where its actions arrive (outputs on the CPU)."""

    num_envs, device, env_id = 2, META, None
    single_observation_space = single_action_space = None

    def __init__(self):
        self.action_devices = []

    def reset(self, seed=None):
        return torch.zeros(2, 4)

    def step(self, actions):
        self.action_devices.append(actions.device)
        z = torch.zeros(2)
        return StepResult(torch.zeros(2, 4), z, z.bool(), z.bool(), torch.zeros(2, 4), z, z.long())


def test_actions_cross_back_to_the_envs_device():
    inner = ActionRecorder()
    on_device(inner, "cpu").step(torch.zeros(2, dtype=torch.long))
    assert inner.action_devices == [META]


def test_one_packed_copy_per_step_keeps_every_field_and_the_previous_step(monkeypatch):
    """HostTransfer's packing (the CUDA path's one pinned buffer) run with a CPU buffer as the far side."""
    monkeypatch.setattr(HostTransfer, "moves", property(lambda self: True))
    transfer = HostTransfer("cpu")
    rng = np.random.default_rng(0)

    def step(done_any: bool) -> StepResult:
        obs = torch.from_numpy(rng.integers(0, 255, (3, 2, 5), dtype=np.uint8))
        return StepResult(obs, torch.randn(3), torch.tensor([True, False, False]), torch.tensor([False, done_any, False]),
                          obs.clone() if done_any else obs, torch.randn(3), torch.randint(0, 9, (3,)))

    originals = [step(True), step(False), step(True)]
    moved = [transfer.step(s) for s in originals]
    for original, out in zip(originals[1:], moved[1:]):
        for name in FIELDS:
            a, b = getattr(original, name), getattr(out, name)
            assert a.dtype == b.dtype and torch.equal(a, b), name
    assert moved[1].final_obs is moved[1].obs  # no episode ended: one observation, sent once
    assert all(torch.equal(getattr(originals[1], n), getattr(moved[1], n)) for n in FIELDS)  # intact after step 3
    assert moved[2].obs.data_ptr() == moved[0].obs.data_ptr() != moved[1].obs.data_ptr()  # two buffers alternate


@pytest.fixture
def meta_agent(monkeypatch):
    """A PPO agent whose device is "meta": built, never run (meta tensors hold no data)."""
    monkeypatch.setattr(devices, "auto_device", lambda *a, **k: META)
    return PPO("MlpPolicy", make_vec_env("CartPole-v1", 2, seed=0), n_steps=8, batch_size=8, seed=0)


def test_an_agent_tells_the_env_its_device(meta_agent):
    assert meta_agent.device == META and meta_agent.env.device == META
    assert meta_agent.env.reset(seed=0).device == META
    assert all(p.device == META for p in meta_agent.policy.parameters())


def test_evaluate_moves_observations_to_the_agents_device(meta_agent, monkeypatch):
    seen = []

    def draw(obs, deterministic=False):
        seen.append(obs.device)
        raise StopIteration

    monkeypatch.setattr(meta_agent.policy, "draw", draw)
    with pytest.raises(StopIteration):
        evaluate(meta_agent, make_vec_env("CartPole-v1", 1), 1, seed=0)
    assert seen == [META]


def test_the_policy_refuses_observations_on_another_device():
    agent = PPO("MlpPolicy", "CartPole-v1", n_steps=8, batch_size=8, seed=0, device="cpu")
    obs = torch.zeros(2, 4, device=META)
    for call in (lambda: agent.policy.draw(obs), lambda: agent.policy.dist_params(obs),
                 lambda: agent.policy.rollout_terms(obs, torch.zeros(2, dtype=torch.long))):
        with pytest.raises(ValueError, match="observations on meta given to a policy on cpu"):
            call()


def test_cartpole_builds_where_mujoco_cannot_be_imported(tmp_path, monkeypatch):
    """MUJOCO_GL=egl without EGL makes `import mujoco` fail: only MuJoCo tasks may need it."""
    fake = tmp_path / "mujoco"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('simulated: no EGL for MUJOCO_GL=egl')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "mujoco" or m.startswith("mujoco.")]:
        monkeypatch.delitem(sys.modules, name)
    env = make_vec_env("CartPole-v1", 2, seed=0)
    env.reset(seed=0)
    env.step(torch.zeros(2, dtype=torch.long))
    env.close()
    with pytest.raises(Exception, match="simulated: no EGL"):
        make_vec_env("Hopper-v5", 1)


# ----------------------------------------------------------------------------- on the test device, on a GPU
def test_a_cpu_env_trains_and_evaluates_an_agent_on_the_test_device(agent_device):
    env = make_vec_env("CartPole-v1", 4, seed=0)  # built on the CPU, before the agent
    agent = PPO("MlpPolicy", env, n_steps=16, batch_size=32, seed=0, device=agent_device)
    assert agent.env.device == agent_device
    agent.learn(128)
    assert agent.buffer.obs.device.type == agent_device.type
    mean, _ = evaluate(agent, make_vec_env("CartPole-v1", 1), 2, seed=0)
    assert mean > 0
    actions, _ = agent.predict(np.zeros((3, 4), dtype=np.float32))
    assert actions.shape == (3,)


@pytest.mark.cuda
def test_the_cuda_boundary_sends_a_step_through_one_pinned_buffer():
    env = make_vec_env("CartPole-v1", 2, seed=0, device="cuda")
    env.reset(seed=0)
    result = env.step(torch.zeros(2, dtype=torch.long, device="cuda"))
    assert all(t.device.type == "cuda" for t in every_tensor(result))
    buffers = env._transfer._buffers
    assert len(buffers) == 2 and buffers[0].host.is_pinned()


# ----------------------------------------------------------------------------- host syncs in an update
def test_read_stats_reads_every_tensor_exactly():
    from rlgeom.training.guards import read_stats

    stats = {"a": torch.tensor(0.1), "b": torch.tensor(3, dtype=torch.int64), "c": 0.5, "d": 7}
    out = read_stats(stats)
    assert out == {"a": torch.tensor(0.1).item(), "b": 3.0, "c": 0.5, "d": 7}
    assert all(not isinstance(v, torch.Tensor) for v in out.values())


@pytest.mark.parametrize("algo", ["vpg", "npg", "trpo", "ppo", "acktr"])
def test_every_update_statistic_is_a_host_number_read_without_item(algo, monkeypatch):
    """A `.item()` per statistic would wait for a GPU once each: the statistics are read together."""
    from agents import AGENTS

    agent = AGENTS[algo]("MlpPolicy", "CartPole-v1", n_envs=2, n_steps=16, seed=0, device="cpu",
                         **({"batch_size": 32} if algo != "acktr" else {}))
    agent.learn(32)
    items, item = [], torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: items.append(1) or item(self))
    stats = agent.update(agent.buffer, 0.5)
    assert items == []
    assert stats and all(isinstance(v, (int, float)) for v in stats.values()), \
        {k: type(v).__name__ for k, v in stats.items()}


def test_warp_ids_step_on_the_gpu_for_auto(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices._env_on_cuda("warp/Hopper-v5") and devices._env_on_cuda("torch/CartPole-v1")
    assert not devices._env_on_cuda("Hopper-v5")


def test_load_decides_auto_for_the_env_the_model_will_run_on(tmp_path, monkeypatch):
    """A loaded model's "auto" asks the same rule as a new agent, with the env it is given (or the saved task):
    a resumed run does not change device because the file was built without an env."""
    path = PPO("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, seed=0, device="cpu").save(tmp_path / "m")
    asked = []
    monkeypatch.setattr(devices, "auto_device", lambda env, n_envs, policy, kw: asked.append((env, n_envs)) or torch.device("cpu"))
    PPO.load(path, env="torch/CartPole-v1")
    PPO.load(path)
    assert asked == [("torch/CartPole-v1", 1), ("CartPole-v1", 1)]
    PPO.load(path, device="cpu")  # an explicit device: the rule is not asked
    assert len(asked) == 2


def test_the_sb3_backend_checks_final_observations_as_the_gymnasium_backend_does():
    import gymnasium as gym
    from stable_baselines3.common.vec_env import DummyVecEnv

    from envs.boundary import NonFiniteEnvError

    class NaNAtTheEnd(gym.Wrapper):  # the observation of the last step is NaN
        def step(self, action):
            obs, reward, terminated, truncated, info = self.env.step(action)
            return np.full_like(obs, np.nan), reward, True, truncated, info

    env = make_vec_env(DummyVecEnv([lambda: NaNAtTheEnd(gym.make("CartPole-v1"))]), device="cpu")
    env.reset(seed=0)
    with pytest.raises(NonFiniteEnvError, match="final observation"):
        env.step(torch.zeros(1, dtype=torch.long))
