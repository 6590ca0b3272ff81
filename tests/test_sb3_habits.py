"""What an SB3 user writes, unchanged, with rlgeom's agents: the model API (file objects, exclude/include,
set_env(force_reset), stats_window_size, callable schedules), get_env() as an SB3 VecEnv, and SB3's own
recipes from its documentation (the save/load example, the VecNormalize example, the callbacks page)."""

import io
import warnings

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize

from agents import PPO, VPG
from rlgeom.persistence.serialization import ModelFileError, read_model

SMALL = dict(n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu")
OBS = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)


def same_actions(a, b, obs=OBS):
    np.testing.assert_array_equal(a.predict(obs, deterministic=True)[0], b.predict(obs, deterministic=True)[0])


def test_save_and_load_with_file_objects(tmp_path):
    model = PPO("MlpPolicy", "CartPole-v1", **SMALL).learn(64)
    buffer = io.BytesIO()
    model.save(buffer)
    buffer.seek(0)
    same_actions(model, PPO.load(buffer))
    with open(tmp_path / "model.bin", "wb") as f:
        assert model.save(f) == str(tmp_path / "model.bin")
    with open(tmp_path / "model.bin", "rb") as f:
        same_actions(model, PPO.load(f, env="CartPole-v1"))
    with open(tmp_path / "model.bin", "r", encoding="latin-1") as f, pytest.raises(ModelFileError, match="binary mode"):
        PPO.load(f)


def test_save_writes_the_path_named_as_sb3_does_in_safetensors_format(tmp_path):
    model = PPO("MlpPolicy", "CartPole-v1", **SMALL)
    written = model.save(tmp_path / "x.zip")  # SB3 code saves, loads and deletes the path it named (test_cnn.py)
    assert written == str(tmp_path / "x.zip") and not (tmp_path / "x.safetensors").exists()
    assert (tmp_path / "x.zip").read_bytes()[:4] != b"PK\x03\x04"  # safetensors content, never a (pickle) zip
    same_actions(model, PPO.load(tmp_path / "x.zip"))
    same_actions(model, PPO.load(tmp_path / "x"))  # SB3's load(path) finds path + ".zip"
    (tmp_path / "x.zip").rename(tmp_path / "old.safetensors")  # what save("old.zip") wrote before
    same_actions(model, PPO.load(tmp_path / "old.zip"))
    # any extension is kept, as SB3 keeps it (its tests save policies to "policy.pkl"); none gets .safetensors
    assert model.policy.save(tmp_path / "policy.pkl") == str(tmp_path / "policy.pkl")
    assert (tmp_path / "policy.pkl").read_bytes()[:1] != b"\x80"  # not a pickle: safetensors' header length
    assert model.save(tmp_path / "plain") == str(tmp_path / "plain.safetensors")
    (tmp_path / "plain.safetensors").rename(tmp_path / "m.pt.safetensors")  # what save("m.pt") wrote before
    same_actions(model, PPO.load(tmp_path / "m.pt"))


def test_save_exclude_and_include(tmp_path):
    model = PPO("MlpPolicy", "CartPole-v1", gamma=0.9, **SMALL)
    path = model.save(tmp_path / "m", exclude=["gamma", "seed", "env", "replay_buffer"])  # SB3's names pass
    _, description = read_model(path)
    assert "gamma" not in description["hyperparameters"] and "seed" not in description
    loaded = PPO.load(path)
    assert loaded.gamma == 0.99 and loaded.seed is None  # the defaults, as SB3 loads an excluded attribute
    same_actions(model, loaded)
    _, kept = read_model(model.save(tmp_path / "k", exclude=["gamma"], include=["gamma"]))
    assert kept["hyperparameters"]["gamma"] == 0.9
    for kwargs, message in ((dict(include=["env"]), "never saves"), (dict(exclude=["action_space"]), "needs these"),
                            (dict(exclude=["gama"]), "no such saved entries; accepted: .*gamma")):
        with pytest.raises(ValueError, match=message):
            model.save(tmp_path / "bad", **kwargs)


def test_callable_schedules_train_save_and_come_back_through_custom_objects(tmp_path):
    def linear(progress_remaining):
        return 1e-4 + 2e-4 * progress_remaining

    model = PPO("MlpPolicy", "CartPole-v1", learning_rate=linear, clip_range=lambda p: 0.1 + 0.1 * p, **SMALL)
    model.learn(128)
    assert model.learning_rate is linear and model.clip_range(0.5) == pytest.approx(0.15)
    assert model.optimizer.param_groups[0]["lr"] == pytest.approx(linear(0.0))  # the last update's, at the end
    path = model.save(tmp_path / "m")
    _, description = read_model(path)
    assert description["hyperparameters"]["learning_rate"] == {"kind": "callable", "name": linear.__qualname__}
    with pytest.raises(ModelFileError, match=r"callable schedule\(s\) for clip_range, learning_rate.*custom_objects="):
        PPO.load(path)
    loaded = PPO.load(path, custom_objects={"learning_rate": linear, "clip_range": 0.2, "lr_schedule": linear})
    assert loaded.learning_rate is linear and loaded.clip_range(0.3) == pytest.approx(0.2)
    same_actions(model, loaded)
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        PPO("MlpPolicy", "CartPole-v1", learning_rate=lambda p: -1.0, **SMALL)


def test_set_env_force_reset_and_stats_window_size(tmp_path):
    model = PPO("MlpPolicy", "CartPole-v1", stats_window_size=7, **SMALL).learn(64)
    assert model.ep_info_buffer.maxlen == 7
    last = model._last_obs
    model.set_env(gym.make("CartPole-v1"), force_reset=False)
    assert model._last_obs is last  # learn(reset_num_timesteps=False) goes on from here
    model.set_env(gym.make("CartPole-v1"))
    assert model._last_obs is None
    loaded = PPO.load(model.save(tmp_path / "m"), env="CartPole-v1")
    assert loaded.ep_info_buffer.maxlen == 7
    with pytest.raises(ValueError, match="stats_window_size must be a positive integer"):
        PPO("MlpPolicy", "CartPole-v1", stats_window_size=0, **SMALL)


@pytest.mark.parametrize("given", ["id", "gymnasium", "sb3"])
def test_get_env_is_an_sb3_vec_env_for_the_sb3_recipe(given):
    from stable_baselines3.common.monitor import Monitor

    env = {"id": "CartPole-v1", "gymnasium": gym.make("CartPole-v1"),
           "sb3": DummyVecEnv([lambda: Monitor(gym.make("CartPole-v1"))])}[given]  # SB3's "episode" needs Monitor
    model = PPO("MlpPolicy", env, **SMALL)
    vec_env = model.get_env()
    assert isinstance(vec_env, VecEnv) and model.get_env() is vec_env
    obs = vec_env.reset()
    assert isinstance(obs, np.ndarray) and obs.shape == (1, 4) and obs.dtype == np.float32
    for _ in range(200):
        action, _ = model.predict(obs)
        obs, rewards, dones, infos = vec_env.step(action)
        assert isinstance(rewards, np.ndarray) and dones.dtype == bool and isinstance(infos, list)
        if dones[0]:
            break
    assert dones[0] and infos[0]["episode"]["l"] > 0 and infos[0]["terminal_observation"].shape == (4,)
    assert not np.array_equal(obs[0], infos[0]["terminal_observation"])  # obs is already the next episode's


def test_get_env_serves_get_attr_and_env_method_for_in_process_envs():
    vec_env = PPO("MlpPolicy", "CartPole-v1", n_envs=2, **SMALL).get_env()
    assert vec_env.get_attr("spec")[0].id == "CartPole-v1" and len(vec_env.env_method("get_wrapper_attr", "spec")) == 2
    vec_env.seed(3)
    first = vec_env.reset()
    vec_env.seed(3)
    np.testing.assert_array_equal(first, vec_env.reset())


def test_eval_callback_with_an_sb3_eval_env_raises_no_warning(tmp_path):
    from stable_baselines3.common.callbacks import EvalCallback
    from stable_baselines3.common.monitor import Monitor

    eval_env = DummyVecEnv([lambda: Monitor(gym.make("CartPole-v1"))])
    model = PPO("MlpPolicy", "CartPole-v1", **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # EvalCallback warns "Training and eval env are not of the same type"
        model.learn(128, callback=EvalCallback(eval_env, eval_freq=64, n_eval_episodes=2, log_path=str(tmp_path)))
    assert (tmp_path / "evaluations.npz").exists()


# ------------------------------------------------------------------ SB3's recipes, rlgeom's agents swapped in
def test_sb3_recipe_basic_usage_save_delete_load_enjoy(tmp_path):
    """SB3's examples page, "Basic Usage: Training, Saving, Loading" (DQN on LunarLander there)."""
    from stable_baselines3.common.evaluation import evaluate_policy

    model = PPO("MlpPolicy", "CartPole-v1", verbose=0, **SMALL)
    model.learn(total_timesteps=128, progress_bar=False)
    model.save(str(tmp_path / "ppo_cartpole"))
    del model
    model = PPO.load(str(tmp_path / "ppo_cartpole"), env=gym.make("CartPole-v1"))
    mean_reward, std_reward = evaluate_policy(model, model.get_env(), n_eval_episodes=3)
    assert mean_reward > 0
    vec_env = model.get_env()
    obs = vec_env.reset()
    for _ in range(50):
        action, _states = model.predict(obs, deterministic=True)
        obs, rewards, dones, info = vec_env.step(action)


def test_sb3_recipe_vecnormalize_save_and_load(tmp_path):
    """SB3's examples page, "Normalizing input features" (HalfCheetahBullet there, Pendulum here)."""
    vec_env = DummyVecEnv([lambda: gym.make("Pendulum-v1")])
    vec_env = VecNormalize(vec_env, norm_obs=True, norm_reward=True, clip_obs=10.0)
    model = PPO("MlpPolicy", vec_env, n_steps=64, batch_size=32, n_epochs=1, seed=0)
    model.learn(total_timesteps=128)
    model.save(str(tmp_path / "ppo_pendulum"))
    stats_path = str(tmp_path / "vec_normalize.pkl")
    vec_env.save(stats_path)
    del model, vec_env
    vec_env = DummyVecEnv([lambda: gym.make("Pendulum-v1")])
    vec_env = VecNormalize.load(stats_path, vec_env)
    vec_env.training = False
    vec_env.norm_reward = False
    model = PPO.load(str(tmp_path / "ppo_pendulum"), env=vec_env)
    assert model.get_env() is vec_env and model.get_vec_normalize_env() is vec_env
    obs = vec_env.reset()
    action, _ = model.predict(obs)
    vec_env.step(action)


def test_sb3_recipe_callbacks_page(tmp_path):
    """SB3's callbacks page: a custom callback, CheckpointCallback + EvalCallback in a list, EvalCallback with
    StopTrainingOnRewardThreshold, EveryNTimesteps, StopTrainingOnNoModelImprovement."""
    from stable_baselines3.common.callbacks import (
        BaseCallback, CallbackList, CheckpointCallback, EvalCallback, EveryNTimesteps, StopTrainingOnNoModelImprovement,
        StopTrainingOnRewardThreshold,
    )
    from stable_baselines3.common.monitor import Monitor

    class CustomCallback(BaseCallback):
        def _on_training_start(self):
            self.env_type = type(self.training_env)

        def _on_step(self):
            self.logger.record("custom/n_calls", self.n_calls)
            return True

    custom = CustomCallback()
    checkpoint_callback = CheckpointCallback(save_freq=64, save_path=str(tmp_path / "logs"), name_prefix="rl_model")
    eval_env = DummyVecEnv([lambda: Monitor(gym.make("CartPole-v1"))])
    eval_callback = EvalCallback(eval_env, best_model_save_path=str(tmp_path / "best"), log_path=str(tmp_path / "eval"),
                                 eval_freq=64, n_eval_episodes=2, deterministic=True, render=False)
    model = VPG("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, seed=0)
    model.learn(192, callback=CallbackList([custom, checkpoint_callback, eval_callback]))
    assert issubclass(custom.env_type, VecEnv) and custom.n_calls == 192
    assert sorted(p.name for p in (tmp_path / "logs").iterdir())[0] == "rl_model_128_steps.zip"
    VPG.load(tmp_path / "best" / "best_model.zip")  # saved by EvalCallback under SB3's name

    stop = StopTrainingOnRewardThreshold(reward_threshold=-1, verbose=0)  # any CartPole return beats it
    model.learn(10_000, callback=EvalCallback(eval_env, callback_on_new_best=stop, eval_freq=64, n_eval_episodes=1))
    assert model.num_timesteps == 64
    event = EveryNTimesteps(n_steps=64, callback=CheckpointCallback(save_freq=1, save_path=str(tmp_path / "every")))
    stall = StopTrainingOnNoModelImprovement(max_no_improvement_evals=1, min_evals=0)
    # a policy that does not move, evaluated from one fixed start: every evaluation scores the same, so
    # "no improvement" is certain (a learning policy on random starts can improve at every evaluation)
    class FixedStart(gym.Wrapper):
        def reset(self, **kwargs):
            return self.env.reset(seed=0)

    fixed_env = DummyVecEnv([lambda: Monitor(FixedStart(gym.make("CartPole-v1")))])
    frozen = VPG("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, seed=0, learning_rate=1e-12,
                 vf_learning_rate=1e-12)
    frozen.learn(640, callback=[event, EvalCallback(fixed_env, callback_after_eval=stall, eval_freq=64,
                                                    n_eval_episodes=1)])
    assert frozen.num_timesteps <= 192 and list((tmp_path / "every").iterdir())
