"""Torch-native batched tasks against Gymnasium 1.4's own implementations (float64, CPU)."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
import torch

from envs.base import StepResult, VecEnv
from envs.torch_native import TORCH_NATIVE_IDS, make_torch_native

F64 = torch.float64
GYM_ID = {tid: tid.split("/", 1)[1] for tid in TORCH_NATIVE_IDS}
LIMITS = {
    "torch/CartPole-v1": 500,
    "torch/Pendulum-v1": 200,
    "torch/Acrobot-v1": 500,
    "torch/MountainCarContinuous-v0": 999,
}
RESET_BOX = {  # gymnasium's uniform reset ranges, per state variable
    "torch/CartPole-v1": ([-0.05] * 4, [0.05] * 4),
    "torch/Pendulum-v1": ([-np.pi, -1.0], [np.pi, 1.0]),
    "torch/Acrobot-v1": ([-0.1] * 4, [0.1] * 4),
    "torch/MountainCarContinuous-v0": ([-0.6, 0.0], [-0.4, 0.0]),
}
# states well inside the dynamics' range, for wide coverage (terminations, wrapping, clipping)
WIDE_BOX = {
    "torch/CartPole-v1": ([-2.6, -3.0, -0.25, -3.5], [2.6, 3.0, 0.25, 3.5]),
    "torch/Pendulum-v1": ([-4 * np.pi, -9.0], [4 * np.pi, 9.0]),
    "torch/Acrobot-v1": ([-3.5, -3.5, -4 * np.pi, -9 * np.pi], [3.5, 3.5, 4 * np.pi, 9 * np.pi]),
    "torch/MountainCarContinuous-v0": ([-1.25, -0.075], [0.65, 0.075]),
}
DISCRETE = {"torch/CartPole-v1": 2, "torch/Acrobot-v1": 3}
ACTION_RANGE = {"torch/Pendulum-v1": 3.0, "torch/MountainCarContinuous-v0": 1.5}  # beyond the bounds
# a state that no single step from terminates, with an action that keeps it so
SAFE = {
    "torch/CartPole-v1": ([0.0, 0.0, 0.0, 0.0], 1),
    "torch/Pendulum-v1": ([0.5, 0.0], 0.0),
    "torch/Acrobot-v1": ([0.0, 0.0, 0.0, 0.0], 1),
    "torch/MountainCarContinuous-v0": ([-0.5, 0.0], 0.0),
}


def sample_states(tid: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """Half slightly beyond the reset box (1.5x), half from the wide box."""
    lo, hi = (np.asarray(b, dtype=np.float64) for b in RESET_BOX[tid])
    mid, half = (lo + hi) / 2, (hi - lo) / 2 * 1.5
    if tid == "torch/MountainCarContinuous-v0":
        half[1] = 0.01
    near = rng.uniform(mid - half, mid + half, size=(n // 2, lo.size))
    wlo, whi = (np.asarray(b, dtype=np.float64) for b in WIDE_BOX[tid])
    wide = rng.uniform(wlo, whi, size=(n - n // 2, lo.size))
    return np.concatenate([near, wide])


def sample_actions(tid: str, rng: np.random.Generator, n: int) -> np.ndarray:
    if tid in DISCRETE:
        return rng.integers(0, DISCRETE[tid], size=n)
    r = ACTION_RANGE[tid]
    return rng.uniform(-r, r, size=(n, 1))


def torch_actions(tid: str, actions: np.ndarray) -> torch.Tensor:
    if tid in DISCRETE:
        return torch.as_tensor(actions, dtype=torch.long)
    return torch.as_tensor(actions, dtype=F64)


def gym_action(tid: str, a):
    return int(a) if tid in DISCRETE else np.asarray(a, dtype=np.float64)


def obs_of_gym_state(tid: str, s: np.ndarray) -> np.ndarray:
    """Gymnasium's observation of its state, without its final float32 cast."""
    if tid == "torch/Pendulum-v1":
        return np.array([np.cos(s[0]), np.sin(s[0]), s[1]])
    if tid == "torch/Acrobot-v1":
        return np.array([np.cos(s[0]), np.sin(s[0]), np.cos(s[1]), np.sin(s[1]), s[2], s[3]])
    return np.asarray(s, dtype=np.float64)


def close(actual, expected, tol):
    torch.testing.assert_close(
        torch.as_tensor(np.asarray(actual), dtype=F64), torch.as_tensor(np.asarray(expected), dtype=F64),
        atol=tol, rtol=tol,
    )


# ------------------------------------------------------------------------------------ registry / API
def test_registry_and_spaces():
    assert TORCH_NATIVE_IDS == tuple(LIMITS)
    for tid in TORCH_NATIVE_IDS:
        env = make_torch_native(tid, 3)
        ref = gymnasium.make(GYM_ID[tid])
        assert isinstance(env, VecEnv)
        assert env.env_id == tid and env.num_envs == 3 and env.device == torch.device("cpu")
        assert env.single_observation_space == ref.observation_space
        assert env.single_action_space == ref.action_space
        assert env.max_episode_steps == LIMITS[tid] == ref.spec.max_episode_steps
        obs = env.reset(seed=0)
        assert obs.shape == (3, *ref.observation_space.shape) and obs.dtype == torch.float32
        ref.close()


def test_unknown_id_and_bad_input():
    with pytest.raises(ValueError, match="torch/CartPole-v1.*torch/Pendulum-v1"):
        make_torch_native("torch/Nope-v0", 4)
    with pytest.raises(ValueError, match="did you mean 'torch/CartPole-v1'"):
        make_torch_native("CartPole-v1", 4)
    with pytest.raises(ValueError, match="dtype"):
        make_torch_native("torch/CartPole-v1", 4, dtype=torch.int32)
    with pytest.raises(ValueError, match="num_envs"):
        make_torch_native("torch/CartPole-v1", 0)
    env = make_torch_native("torch/CartPole-v1", 4)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(torch.zeros(4, dtype=torch.long))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"\[4\]"):
        env.step(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        env.step(torch.zeros(4))
    pend = make_torch_native("torch/Pendulum-v1", 4, seed=0)
    pend.reset()
    with pytest.raises(ValueError, match=r"\[4, 1\]"):
        pend.step(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="set_state"):
        pend.set_state(torch.zeros(4, 3))


def test_action_shapes_accepted():
    cp = make_torch_native("torch/CartPole-v1", 4, seed=0, dtype=F64)
    cp.reset()
    s = cp.state
    r1 = cp.step(torch.tensor([0, 1, 1, 0]))
    cp.set_state(s)
    r2 = cp.step(torch.tensor([[0], [1], [1], [0]]))
    assert torch.equal(r1.final_obs, r2.final_obs)
    pend = make_torch_native("torch/Pendulum-v1", 4, seed=0, dtype=F64)
    pend.reset()
    s = pend.state
    r1 = pend.step(torch.tensor([[0.5], [-1.0], [2.0], [0.0]]))
    pend.set_state(s)
    r2 = pend.step(torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float32))
    assert torch.equal(r1.final_obs, r2.final_obs)


# ------------------------------------------------------------------------------------ dynamics
@pytest.mark.parametrize("tid", TORCH_NATIVE_IDS)
def test_transitions_match_gymnasium(tid):
    n = 1500
    rng = np.random.default_rng(123)
    states = sample_states(tid, rng, n)
    actions = sample_actions(tid, rng, n)

    env = make_torch_native(tid, n, seed=0, dtype=F64)
    env.reset()
    env.set_state(torch.as_tensor(states))
    res = env.step(torch_actions(tid, actions))
    assert isinstance(res, StepResult)
    for name in ("obs", "final_obs", "reward", "episode_return"):
        assert getattr(res, name).dtype == F64, name
    assert res.terminated.dtype == torch.bool and res.truncated.dtype == torch.bool
    assert res.episode_length.dtype == torch.int64
    assert not res.truncated.any()
    state_after = env.state

    gym_env = gymnasium.make(GYM_ID[tid]).unwrapped
    gym_env.reset(seed=0)
    g_obs, g_obs64, g_rew, g_term, g_state = [], [], [], [], []
    for i in range(n):
        gym_env.state = states[i].copy()
        gym_env.steps_beyond_terminated = None  # CartPole: a fresh state, not a step after the end
        obs, rew, term, trunc, _ = gym_env.step(gym_action(tid, actions[i]))
        assert not trunc
        g_obs.append(obs)
        g_obs64.append(obs_of_gym_state(tid, gym_env.state))
        g_rew.append(rew)
        g_term.append(term)
        g_state.append(np.asarray(gym_env.state, dtype=np.float64))
    g_term = np.array(g_term)

    # observation (gymnasium returns float32), reward and termination to 1e-6
    close(res.final_obs, np.stack(g_obs), 1e-6)
    close(res.reward, np.array(g_rew), 1e-6)
    assert np.array_equal(res.terminated.numpy(), g_term)
    if tid != "torch/MountainCarContinuous-v0":  # gymnasium keeps MountainCar's state in float32
        close(res.final_obs, np.stack(g_obs64), 1e-9)  # the float64 dynamics agree much more tightly
        keep = ~g_term
        close(state_after[torch.as_tensor(keep)], np.stack(g_state)[keep], 1e-9)
    # the sample exercises both outcomes where the task can terminate
    if tid != "torch/Pendulum-v1":
        assert 0 < g_term.sum() < n
    # where not done, obs is the next observation; where done, a fresh reset observation
    done = res.done
    assert torch.equal(res.obs[~done], res.final_obs[~done])
    assert (res.episode_length == 1).all()
    torch.testing.assert_close(res.episode_return, res.reward)


@pytest.mark.parametrize("tid", TORCH_NATIVE_IDS)
def test_trajectories_match_gymnasium_time_limit(tid):
    """Whole episodes through gymnasium.make (TimeLimit included), resyncing after each reset."""
    n, steps = 3, LIMITS[tid] + 25
    rng = np.random.default_rng(7)
    env = make_torch_native(tid, n, seed=11, dtype=F64)
    env.reset()
    gyms = [gymnasium.make(GYM_ID[tid]) for _ in range(n)]
    for i, g in enumerate(gyms):
        g.reset(seed=i)
        g.unwrapped.state = env.state[i].numpy().copy()
    run_ret, run_len = np.zeros(n), np.zeros(n, dtype=np.int64)
    n_trunc = n_term = 0
    for _ in range(steps):
        actions = sample_actions(tid, rng, n)
        if tid in ACTION_RANGE:
            actions = np.clip(actions, -1.0, 1.0)  # in-bounds actions for gymnasium's checker
        if tid == "torch/MountainCarContinuous-v0":
            # gymnasium rounds MountainCar's state to float32 after every step; over hundreds of
            # steps that rounding drifts past 1e-6, so start each step from the same state
            for i, g in enumerate(gyms):
                g.unwrapped.state = env.state[i].numpy().copy()
        res = env.step(torch_actions(tid, actions))
        new_state = env.state
        for i, g in enumerate(gyms):
            obs, rew, term, trunc, _ = g.step(gym_action(tid, actions[i]))
            run_ret[i] += rew
            run_len[i] += 1
            close(res.final_obs[i], obs, 1e-6)
            close(res.reward[i], rew, 1e-6)
            assert bool(res.terminated[i]) == term
            assert bool(res.truncated[i]) == (trunc and not term)
            if term or trunc:
                n_trunc += int(trunc and not term)
                n_term += int(term)
                assert int(res.episode_length[i]) == run_len[i]
                close(res.episode_return[i], run_ret[i], 1e-6)
                close(res.obs[i], env._observe(new_state[i : i + 1])[0], 0.0)
                run_ret[i], run_len[i] = 0.0, 0
                g.reset()
                g.unwrapped.state = new_state[i].numpy().copy()
            else:
                assert torch.equal(res.obs[i], res.final_obs[i])
    if tid != "torch/CartPole-v1":  # random CartPole play always falls long before the limit
        assert n_trunc >= n
    else:
        assert n_term > 0


# ------------------------------------------------------------------------------------ reset, limits
@pytest.mark.parametrize("tid", TORCH_NATIVE_IDS)
def test_reset_distribution(tid):
    n = 20000
    env = make_torch_native(tid, n, dtype=F64)
    obs = env.reset(seed=3)
    s = env.state
    lo = torch.tensor(RESET_BOX[tid][0], dtype=F64)
    hi = torch.tensor(RESET_BOX[tid][1], dtype=F64)
    assert (s >= lo).all() and (s <= hi).all()
    span = hi - lo
    # covers the whole box (uniform): extremes within 0.5% of the edges, mean near the centre
    assert ((s.min(0).values - lo) <= 0.005 * span).all()
    assert ((hi - s.max(0).values) <= 0.005 * span).all()
    assert ((s.mean(0) - (lo + hi) / 2).abs() <= 0.02 * span + 1e-12).all()
    space = env.single_observation_space
    assert all(space.contains(o) for o in obs[:200].numpy().astype(np.float32))
    # auto-reset states come from the same distribution
    safe_state, safe_action = SAFE[tid]
    # force every env to the limit: step from a fresh counter with max_episode_steps=1
    lim1 = make_torch_native(tid, n, seed=5, dtype=F64, max_episode_steps=1)
    lim1.reset()
    lim1.set_state(torch.tensor(safe_state, dtype=F64))
    a = torch.full((n,), safe_action, dtype=torch.long) if tid in DISCRETE else torch.full((n, 1), safe_action, dtype=F64)
    res = lim1.step(a)
    assert res.truncated.all() and not res.terminated.any()
    s2 = lim1.state
    assert (s2 >= lo).all() and (s2 <= hi).all()
    assert ((s2.min(0).values - lo) <= 0.005 * span).all() and ((hi - s2.max(0).values) <= 0.005 * span).all()


@pytest.mark.parametrize("tid", TORCH_NATIVE_IDS)
def test_truncation_exactly_at_limit(tid):
    n, limit = 3, LIMITS[tid]
    safe_state, safe_action = SAFE[tid]
    safe_state = torch.tensor(safe_state, dtype=F64)
    a = torch.full((n,), safe_action, dtype=torch.long) if tid in DISCRETE else torch.full((n, 1), safe_action, dtype=F64)
    env = make_torch_native(tid, n, seed=0, dtype=F64)
    env.reset()
    # where one safe step leads (reference env without a binding time limit)
    ref = make_torch_native(tid, n, seed=0, dtype=F64, max_episode_steps=10 * limit)
    ref.reset()
    ref.set_state(safe_state)
    expected = ref.step(a)
    assert not expected.done.any()
    total = torch.zeros(n, dtype=F64)
    for t in range(1, limit + 1):
        env.set_state(safe_state)
        res = env.step(a)
        total += res.reward
        if t < limit:
            assert not res.done.any(), t
            assert (res.episode_length == t).all()
            assert (env.elapsed_steps == t).all()
    assert res.truncated.all() and not res.terminated.any()
    assert (res.episode_length == limit).all()
    torch.testing.assert_close(res.episode_return, total)
    torch.testing.assert_close(res.final_obs, expected.final_obs, atol=0.0, rtol=0.0)
    # obs is a fresh reset observation, not the last one
    assert not torch.equal(res.obs, res.final_obs)
    torch.testing.assert_close(res.obs, env._observe(env.state), atol=0.0, rtol=0.0)
    lo = torch.tensor(RESET_BOX[tid][0], dtype=F64)
    hi = torch.tensor(RESET_BOX[tid][1], dtype=F64)
    assert ((env.state >= lo) & (env.state <= hi)).all()
    assert (env.elapsed_steps == 0).all()
    # the next episode counts from zero again
    env.set_state(safe_state)
    res = env.step(a)
    assert (res.episode_length == 1).all() and not res.done.any()
    torch.testing.assert_close(res.episode_return, res.reward)


def test_episode_stats_cartpole_many_envs():
    n = 64
    env = make_torch_native("torch/CartPole-v1", n, seed=1)
    env.reset()
    gen = torch.Generator().manual_seed(0)
    run_len = torch.zeros(n, dtype=torch.int64)
    finished = 0
    for _ in range(120):
        res = env.step(torch.randint(0, 2, (n,), generator=gen))
        run_len += 1
        assert not (res.terminated & res.truncated).any()
        assert torch.equal(res.episode_length, run_len)
        # CartPole's reward is +1 every step, so the return equals the length
        assert torch.equal(res.episode_return, run_len.to(torch.float32))
        finished += int(res.done.sum())
        run_len[res.done] = 0
    assert finished > n


# ------------------------------------------------------------------------------------ determinism
@pytest.mark.parametrize("tid", ["torch/CartPole-v1", "torch/Pendulum-v1", "torch/Acrobot-v1"])
def test_seeding_determinism(tid):
    def rollout(env, seed, steps=80):
        out = [env.reset(seed=seed)]
        gen = torch.Generator().manual_seed(99)
        for _ in range(steps):
            if tid in DISCRETE:
                a = torch.randint(0, DISCRETE[tid], (env.num_envs,), generator=gen)
            else:
                a = torch.rand(env.num_envs, 1, generator=gen) * 4 - 2
            r = env.step(a)
            out += [r.obs, r.final_obs, r.reward, r.done.float()]
        return torch.cat([o.flatten().double() for o in out])

    a = rollout(make_torch_native(tid, 16), seed=5)
    env = make_torch_native(tid, 16)
    b = rollout(env, seed=5)
    c = rollout(env, seed=5)  # the same env, reseeded
    d = rollout(env, seed=6)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.equal(a, d)
    # a constructor seed is used by the first reset()
    e1 = make_torch_native(tid, 16, seed=5)
    e2 = make_torch_native(tid, 16)
    assert torch.equal(e1.reset(), e2.reset(seed=5))


def test_step_does_not_sync_with_host(monkeypatch):
    """No .item()/.cpu()/.numpy()/.tolist()/bool() of a tensor inside step()."""
    envs = [make_torch_native(tid, 8, seed=0) for tid in TORCH_NATIVE_IDS]
    acts = []
    for env in envs:
        env.reset()
        acts.append(
            torch.ones(8, dtype=torch.long) if env.env_id in DISCRETE else torch.zeros(8, 1)
        )

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync inside step()")

    for name in ("item", "cpu", "numpy", "tolist", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    for env, a in zip(envs, acts):
        for _ in range(3):
            env.step(a)


# ------------------------------------------------------------------------------------ CUDA
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
@pytest.mark.parametrize("tid", TORCH_NATIVE_IDS)
def test_cuda_matches_cpu(tid):
    n = 256
    rng = np.random.default_rng(0)
    states = torch.as_tensor(sample_states(tid, rng, n))
    actions = torch_actions(tid, sample_actions(tid, rng, n))
    cpu = make_torch_native(tid, n, seed=0, dtype=F64)
    gpu = make_torch_native(tid, n, device="cuda", seed=0, dtype=F64)
    cpu.reset()
    obs = gpu.reset()
    assert obs.device.type == "cuda"
    cpu.set_state(states)
    gpu.set_state(states.cuda())
    a_gpu = actions.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        r_gpu = gpu.step(a_gpu)
        for _ in range(3):
            gpu.step(a_gpu)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    r_cpu = cpu.step(actions)
    for name in ("obs", "reward", "terminated", "truncated", "final_obs", "episode_return", "episode_length"):
        assert getattr(r_gpu, name).device.type == "cuda", name
    torch.testing.assert_close(r_gpu.final_obs.cpu(), r_cpu.final_obs, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(r_gpu.reward.cpu(), r_cpu.reward, atol=1e-9, rtol=1e-9)
    assert torch.equal(r_gpu.terminated.cpu(), r_cpu.terminated)
    # float32 on the GPU runs as well
    env32 = make_torch_native(tid, n, device="cuda", seed=0)
    env32.reset()
    r = env32.step(a_gpu if tid in DISCRETE else a_gpu.float())
    assert r.obs.dtype == torch.float32 and r.obs.device.type == "cuda"
