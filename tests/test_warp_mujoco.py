"""warp/ MuJoCo tasks (MuJoCo Warp on the CPU) against Gymnasium's own v5 envs, the VecEnv contract and the agents.

Warp compiles its kernels on first use (minutes on 2 cores, cached after in ~/.cache/warp or $WARP_CACHE_PATH),
so the worlds are few and the envs are shared per module; experiments/RESULTS_warp.md has the timings.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys

import gymnasium
import numpy as np
import pytest
import torch

from envs.mujoco_tasks import TASKS

GYM_CLASSES = {
    "Hopper-v5": "gymnasium.envs.mujoco.hopper_v5:HopperEnv",
    "Walker2d-v5": "gymnasium.envs.mujoco.walker2d_v5:Walker2dEnv",
    "HalfCheetah-v5": "gymnasium.envs.mujoco.half_cheetah_v5:HalfCheetahEnv",
    "Swimmer-v5": "gymnasium.envs.mujoco.swimmer_v5:SwimmerEnv",
}
N_WORLDS = 16
# float32 physics (Warp) against float64 (CPU MuJoCo), one env step of 4-5 physics steps from the same state.
# Largest differences measured over 256 states per task (experiments/RESULTS_warp.md): observations 5.4e-4
# absolute / 1.3e-4 relative (HalfCheetah, far from the reset pose; contact solves), rewards 5.9e-5; about 2x here
OBS_ATOL, OBS_RTOL = 1e-3, 2e-4
REWARD_ATOL = 1e-4


def gym_class(gym_id):
    module, name = GYM_CLASSES[gym_id].split(":")
    return getattr(__import__(module, fromlist=[name]), name)


@pytest.mark.parametrize("gym_id", sorted(TASKS))
def test_task_numbers_are_gymnasiums_defaults(gym_id):
    """Every number of a task (and its time limit) is the default of Gymnasium's v5 constructor."""
    task = TASKS[gym_id]
    defaults = {k: p.default for k, p in inspect.signature(gym_class(gym_id).__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    expected = {"xml_file": defaults["xml_file"], "frame_skip": defaults["frame_skip"],
                "ctrl_cost_weight": defaults["ctrl_cost_weight"], "reset_noise_scale": defaults["reset_noise_scale"],
                "forward_reward_weight": defaults["forward_reward_weight"],
                "healthy_reward": defaults.get("healthy_reward"),
                "healthy_z_range": defaults.get("healthy_z_range"),
                "healthy_angle_range": defaults.get("healthy_angle_range"),
                "healthy_state_range": defaults.get("healthy_state_range"),
                "max_episode_steps": gymnasium.spec(gym_id).max_episode_steps}
    assert {k: getattr(task, k) for k in expected} == expected
    assert defaults["exclude_current_positions_from_observation"] is True
    assert defaults.get("terminate_when_unhealthy", task.healthy_reward is not None) is (task.healthy_reward is not None)


@pytest.mark.parametrize("algo", ["ppo", "trpo", "npg", "vpg"])
def test_warp_presets_keep_four_minibatches_for_any_n_envs(algo):
    from agents.presets import preset

    assert preset(algo, "warp/Hopper-v5")["hyperparameters"]["batch_size"] == 4096 * 24 // 4
    assert preset(algo, "warp/Hopper-v5", n_envs=64)["hyperparameters"]["batch_size"] == 64 * 24 // 4
    assert preset(algo, "warp/Walker2d-v5", n_envs=2, overrides={"n_steps": 4})["hyperparameters"]["batch_size"] == 2
    assert preset(algo, "Hopper-v5", n_envs=64) == preset(algo, "Hopper-v5")  # other ids: as before


def test_help_hp_shows_the_minibatch_size_the_run_uses(capsys):
    from rlgeom.tools.train import main

    assert main(["--algo", "ppo", "--env", "warp/Hopper-v5", "--n-envs", "64", "--hp", "n_steps=8", "--help-hp"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["batch_size"])
    assert line.split()[1:3] == [str(64 * 8 // 4), "preset"]


def test_missing_mujoco_warp_names_the_extra(monkeypatch):
    from envs import make_vec_env

    monkeypatch.setitem(sys.modules, "mujoco_warp", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"rlgeom\[warp\]"):
        make_vec_env("warp/Hopper-v5", 2)


def test_unknown_warp_id_lists_the_accepted_ones():
    from envs.warp_mujoco import make_warp_mujoco

    with pytest.raises(ValueError, match="accepted ids: warp/Hopper-v5"):
        make_warp_mujoco("warp/Humanoid-v5", 2)


# ------------------------------------------------------------------------------ with MuJoCo Warp
@pytest.fixture(scope="module")
def warp_env():
    """One env per task for the module (each construction loads Warp's kernels), compiled at -O0: on the CPU a
    step is launch-bound, so -O0 runs about as fast as Warp's -O2 and compiles in about half the time
    (experiments/RESULTS_warp.md §3)."""
    pytest.importorskip("mujoco_warp")
    import warp

    from envs.warp_mujoco import make_warp_mujoco

    level, warp.config.optimization_level = warp.config.optimization_level, 0

    made = {}

    def get(gym_id):
        if gym_id not in made:
            made[gym_id] = make_warp_mujoco("warp/" + gym_id, N_WORLDS, seed=0)
        return made[gym_id]

    yield get
    for env in made.values():
        env.close()
    warp.config.optimization_level = level


def random_states(gym, rng, n):
    """Half near the reset distribution, half far from it (falls, hard contacts, terminations); float32 values
    so that both simulators start from the same numbers."""
    nq, nv = gym.model.nq, gym.model.nv
    scale = np.where(np.arange(n)[:, None] < n // 2, 0.1, 0.8)
    qpos = gym.init_qpos + rng.uniform(-1, 1, (n, nq)) * scale
    qvel = rng.uniform(-1, 1, (n, nv)) * scale * 10
    return np.concatenate([qpos, qvel], axis=1).astype(np.float32).astype(np.float64)


def gymnasium_one_step(gym, states, actions):
    """Gymnasium's (obs, reward, terminated, truncated) of one step from each state (reset, then set_state)."""
    nq, rows = gym.unwrapped.model.nq, []
    for i, (state, action) in enumerate(zip(states, actions)):
        gym.reset(seed=i)
        gym.unwrapped.set_state(state[:nq], state[nq:])
        rows.append(gym.step(action)[:4])
    return tuple(np.array(x) for x in zip(*rows))


@pytest.mark.parametrize("gym_id", sorted(TASKS))
def test_one_step_equals_gymnasium(gym_id, warp_env):
    """From the same state and action, one step gives Gymnasium's observation, reward, terminated, truncated."""
    env = warp_env(gym_id)
    gym = gymnasium.make(gym_id)
    rng = np.random.default_rng(1)
    states = random_states(gym.unwrapped, rng, N_WORLDS)
    actions = rng.uniform(-1.3, 1.3, (N_WORLDS, env.nu)).astype(np.float32)  # beyond the bounds: cost as sent
    env.reset(seed=0)
    env.set_state(torch.as_tensor(states, dtype=torch.float32))
    got = env.step(torch.as_tensor(actions))
    obs, reward, terminated, truncated = gymnasium_one_step(gym, states, actions)
    np.testing.assert_allclose(got.final_obs.numpy(), obs, atol=OBS_ATOL, rtol=OBS_RTOL)
    np.testing.assert_allclose(got.reward.numpy(), reward, atol=REWARD_ATOL, rtol=0)
    assert got.terminated.tolist() == terminated.tolist() and got.truncated.tolist() == truncated.tolist()
    if TASKS[gym_id].healthy_reward is not None:
        assert 0 < terminated.sum() < N_WORLDS  # both outcomes covered
    # where the episode ended the obs is a fresh reset state, else the step's
    done = got.done.numpy()
    np.testing.assert_array_equal(got.obs.numpy()[~done], got.final_obs.numpy()[~done])
    gym.close()


def test_spaces_are_gymnasiums(warp_env):
    env, gym = warp_env("Hopper-v5"), gymnasium.make("Hopper-v5")
    assert env.single_observation_space == gym.observation_space
    assert env.single_action_space == gym.action_space


def test_reset_distribution_seeding_time_limit_and_autoreset(warp_env):
    """Seeded resets repeat and follow Gymnasium's noise around the initial pose; a time limit truncates
    (bootstrapped from final_obs), a termination on the last step is not a truncation, and both reset
    their world on the same step with a cold solver."""
    from envs.warp_mujoco import make_warp_mujoco

    hopper = warp_env("Hopper-v5")
    first = hopper.reset(seed=3)
    assert torch.equal(first, hopper.reset(seed=3)) and not torch.equal(first, hopper.reset(seed=4))
    init = np.concatenate([hopper._init_qpos.numpy()[1:], hopper._init_qvel.numpy()])
    assert np.abs(first.numpy() - init).max() <= TASKS["Hopper-v5"].reset_noise_scale + 1e-7

    env = make_warp_mujoco("warp/Hopper-v5", 2, seed=0, max_episode_steps=2)
    env.reset()
    standing = env.state[0]
    fallen = standing.clone()
    fallen[1] = 0.5  # z below 0.7: unhealthy after one step
    env.set_state(torch.stack([standing, standing]))
    step = env.step(torch.zeros(2, 3))
    assert not step.done.any()
    env.set_state(torch.stack([standing, fallen]))  # counters kept: the next step is the second
    step = env.step(torch.zeros(2, 3))
    assert step.truncated.tolist() == [True, False] and step.terminated.tolist() == [False, True]
    assert step.episode_length.tolist() == [2, 2]
    assert not torch.equal(step.obs, step.final_obs)
    assert env.elapsed_steps.tolist() == [0, 0] and env._warmstart.abs().sum() == 0


AGENT_HP = {
    "vpg": {"n_steps": 4, "batch_size": 8},
    "npg": {"n_steps": 4, "batch_size": 8},
    "trpo": {"n_steps": 4, "batch_size": 8},
    "ppo": {"n_steps": 4, "batch_size": 8, "n_epochs": 1},
    "acktr": {"n_steps": 4},
}


@pytest.mark.parametrize("algo", sorted(AGENT_HP))
def test_every_agent_learns_on_warp_hopper(algo, warp_env):
    from agents import AGENTS

    warp_env("Hopper-v5")  # kernels loaded
    model = AGENTS[algo]("MlpPolicy", "warp/Hopper-v5", n_envs=2, seed=0, **AGENT_HP[algo]).learn(8)
    assert model.num_timesteps == 8
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())


def test_models_move_between_warp_and_gymnasium_hopper(tmp_path, warp_env):
    """A model trained on warp/Hopper-v5 loads and runs on Gymnasium's Hopper-v5 (SB3's evaluate_policy) and
    back on warp/ (its spaces are Gymnasium's)."""
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor

    from agents import PPO
    from rlgeom.training.evaluation import evaluate

    from envs.warp_mujoco import make_warp_mujoco

    warp_env("Hopper-v5")
    PPO("MlpPolicy", "warp/Hopper-v5", n_envs=2, seed=0, n_steps=4, batch_size=8, n_epochs=1).learn(8).save(
        tmp_path / "warp_trained")
    on_gym = PPO.load(tmp_path / "warp_trained", env="Hopper-v5")
    mean, _ = evaluate_policy(on_gym, Monitor(gymnasium.make("Hopper-v5", max_episode_steps=10)), n_eval_episodes=2)
    assert np.isfinite(mean)
    PPO("MlpPolicy", "Hopper-v5", seed=0, n_steps=8, batch_size=8, n_epochs=1).learn(8).save(tmp_path / "gym_trained")
    short = make_warp_mujoco("warp/Hopper-v5", 2, max_episode_steps=10)  # a standing hopper lasts 1000 steps
    on_warp = PPO.load(tmp_path / "gym_trained", env=short)
    mean, _ = evaluate(on_warp, short, n_episodes=2)
    assert np.isfinite(mean)


def test_cli_trains_checkpoints_and_resumes_on_warp_hopper(tmp_path, warp_env, monkeypatch):
    """The CLI on warp/Hopper-v5: the preset's minibatches follow --n-envs and --hp n_steps, TensorBoard
    events and a checkpoint are written, --resume continues; 10-step episodes keep its evaluation short."""
    from rlgeom.tools.train import main

    warp_env("Hopper-v5")
    monkeypatch.setitem(TASKS, "Hopper-v5", dataclasses.replace(TASKS["Hopper-v5"], max_episode_steps=10))
    common = ["--algo", "ppo", "--env", "warp/Hopper-v5", "--n-envs", "2", "--no-progress", "--eval-episodes", "1",
              "--logdir", str(tmp_path / "runs"), "--hp", "n_steps=4", "n_epochs=1"]
    assert main([*common, "--timesteps", "8", "--checkpoint-every", "8"]) == 0
    run_dir = tmp_path / "runs" / "warp-Hopper-v5" / "ppo" / "seed0"
    assert list(run_dir.glob("events.out.tfevents.*")), sorted(p.name for p in tmp_path.rglob("*"))
    assert (run_dir / "checkpoints" / "checkpoint_000000000008.safetensors").exists()
    assert main([*common, "--timesteps", "16", "--resume", "latest"]) == 0
    from agents import PPO

    assert PPO.load(run_dir / "model").num_timesteps == 16
