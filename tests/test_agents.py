"""The SB3-style surface every agent shares: predict, save/load, SB3 interop, learning at all."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents import AGENTS, PPO, TRPO
from agents.presets import preset
from envs import make_vec_env
from rlgeom.training.evaluation import evaluate
from rlgeom.persistence.serialization import ModelFileError

TINY = {
    "vpg": dict(n_steps=64, batch_size=64),
    "npg": dict(n_steps=64, batch_size=64),
    "trpo": dict(n_steps=64, batch_size=64),
    "ppo": dict(n_steps=64, batch_size=32, n_epochs=2),
    "acktr": dict(n_steps=16),
}


def tiny(algo, env="CartPole-v1", **kw):
    return AGENTS[algo]("MlpPolicy", env, seed=0, **{**TINY[algo], **kw})


@pytest.mark.parametrize("algo", sorted(AGENTS))
def test_predict_shapes_follow_sb3(algo):
    model = tiny(algo)
    obs = np.zeros(4, dtype=np.float32)
    action, state = model.predict(obs, deterministic=True)
    assert state is None and np.shape(action) == () and action in (0, 1)
    assert isinstance(action, np.ndarray)  # a 0-d array, as SB3's predict returns (its test_predict.py checks)
    actions, _ = model.predict(np.zeros((5, 4), dtype=np.float32))
    assert actions.shape == (5,)
    cont = tiny(algo, "Pendulum-v1")
    a, _ = cont.predict(np.zeros(3, dtype=np.float32))
    assert a.shape == (1,) and -2 <= a[0] <= 2
    assert cont.predict(np.zeros((2, 3)))[0].shape == (2, 1)
    with pytest.raises(ValueError, match="does not match the model's observation space"):
        model.predict(np.zeros(3))


@pytest.mark.parametrize("algo", sorted(AGENTS))
def test_save_load_gives_identical_predictions(algo, tmp_path):
    model = tiny(algo, "Pendulum-v1", normalize_observations=True).learn(128)
    path = model.save(tmp_path / "m")
    assert path.endswith(".safetensors")
    loaded = AGENTS[algo].load(tmp_path / "m")
    obs = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])
    assert loaded.num_timesteps == model.num_timesteps and loaded.config == model.config
    assert torch.equal(loaded.policy.obs_normalizer.mean, model.policy.obs_normalizer.mean)


def test_loading_into_the_wrong_class_names_both(tmp_path):
    tiny("ppo").save(tmp_path / "ppo_model")
    with pytest.raises(ModelFileError, match="holds a PPO model, not TRPO"):
        TRPO.load(tmp_path / "ppo_model")


def test_evaluate_policy_and_sb3_callbacks(tmp_path):
    from stable_baselines3.common.callbacks import (
        BaseCallback, CheckpointCallback, EvalCallback, StopTrainingOnRewardThreshold,
    )
    from stable_baselines3.common.evaluation import evaluate_policy

    class Counter(BaseCallback):
        def __init__(self):
            super().__init__()
            self.steps = self.rollouts = 0
            self.started = self.ended = False

        def _on_training_start(self):
            self.started = True

        def _on_rollout_end(self):
            self.rollouts += 1

        def _on_step(self):
            self.steps += 1
            return True

        def _on_training_end(self):
            self.ended = True

    model = tiny("ppo", n_steps=32)
    counter = Counter()
    stop = StopTrainingOnRewardThreshold(reward_threshold=-1.0)  # any return beats it: stops at first eval
    eval_cb = EvalCallback(gym.make("CartPole-v1"), eval_freq=96, n_eval_episodes=2, callback_on_new_best=stop,
                           best_model_save_path=str(tmp_path / "best"), verbose=0)
    ckpt = CheckpointCallback(save_freq=32, save_path=str(tmp_path / "ckpt"), name_prefix="ppo")
    model.learn(1000, callback=[counter, eval_cb, ckpt])
    assert counter.started and counter.ended and counter.rollouts >= 2
    assert model.num_timesteps == 96 == counter.steps  # stopped by the threshold at the first evaluation
    assert (tmp_path / "best" / "best_model.safetensors").exists()  # SB3 saves "best_model" (no suffix)
    saved = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert saved == [f"ppo_{n}_steps.zip" for n in (32, 64, 96)]
    PPO.load(tmp_path / "ckpt" / saved[-1])
    mean, std = evaluate_policy(model, gym.make("CartPole-v1"), n_eval_episodes=3)
    assert mean > 0 and std >= 0


def test_sb3_vec_envs_including_vecnormalize():
    from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    venv = VecNormalize(sb3_make_vec_env("Pendulum-v1", n_envs=2, seed=0))
    model = TRPO("MlpPolicy", venv, seed=0, n_steps=128, batch_size=64).learn(512)
    assert model.get_env() is venv and model.get_vec_normalize_env() is venv
    assert model.num_timesteps == 512 and len(model.ep_info_buffer) == 2  # 2 envs × 256 steps, 200-step episodes
    # the logged returns are the unnormalised ones (Monitor), around Pendulum's scale
    assert all(e["r"] < -50 for e in model.ep_info_buffer)


def test_gymnasium_env_instance_and_vector_env():
    model = PPO("MlpPolicy", gym.make("CartPole-v1"), n_steps=64, batch_size=64, seed=0).learn(64)
    assert model.num_timesteps == 64
    bad = gym.make_vec("CartPole-v1", num_envs=2)  # NEXT_STEP autoreset by default
    with pytest.raises(ValueError, match="SAME_STEP"):
        PPO("MlpPolicy", bad)


def test_envs_built_from_an_id_pass_on_only_episode_records():
    """The per-step infos rlgeom never reads are dropped before the vector env merges them; the
    episode record (RecordEpisodeStatistics) and the final observation still come through."""
    from envs.gymnasium_backend import EpisodeInfoOnly

    env = make_vec_env("Pendulum-v1", 2, seed=0)
    assert all(isinstance(e, EpisodeInfoOnly) for e in env.backend.envs)  # outermost on every sub-env
    env.reset(seed=0)
    for _ in range(200):  # to Pendulum's time limit
        step = env.step(torch.zeros(2, 1))
    assert step.truncated.all() and step.episode_length.tolist() == [200, 200]
    assert not torch.equal(step.final_obs, step.obs)  # the last observation, not the reset one
    recorded = EpisodeInfoOnly(gym.wrappers.RecordEpisodeStatistics(gym.make("Pendulum-v1", max_episode_steps=3)))
    recorded.reset(seed=0)
    infos = [recorded.step(recorded.action_space.sample())[-1] for _ in range(3)]
    assert infos[0] == {} and infos[1] == {}
    assert set(infos[2]) == {"episode"} and infos[2]["episode"]["l"] == 3


def test_time_limit_truncation_reaches_the_buffer():
    env = make_vec_env("Pendulum-v1", 2, seed=0)
    model = TRPO("MlpPolicy", env, n_steps=200, batch_size=100, seed=0)
    model.learn(400)
    buf = model.buffer
    assert buf.dones[-1].all() and not buf.terminated.any()  # 200-step time limit, never terminal
    # the stored successor of the last step is the final observation, not the reset one
    assert not torch.equal(buf.next_obs[-1], model._last_obs)


@pytest.mark.parametrize("algo", ["vpg", "npg", "trpo", "ppo"])
def test_learning_happens_on_cartpole(algo):
    """Fixed seed, short budget: the trained policy beats the initial one by a wide margin.

    Both are evaluated stochastically: the argmax of an untrained policy's near-zero logits is a
    linear controller that can balance CartPole by chance, which says nothing about learning."""
    cfg = preset(algo, "CartPole-v1")
    model = AGENTS[algo]("MlpPolicy", "CartPole-v1", n_envs=cfg["n_envs"], seed=0, **cfg["hyperparameters"])
    env = make_vec_env("CartPole-v1", 4)
    torch.manual_seed(1)
    before, _ = evaluate(model, env, 8, deterministic=False, seed=1)
    model.learn(25_000)
    torch.manual_seed(1)
    after, _ = evaluate(model, env, 8, deterministic=False, seed=1)
    assert after > before + 50, (before, after)


def test_callbacks_see_sb3_style_infos_for_finished_episodes():
    from stable_baselines3.common.callbacks import BaseCallback

    class EpisodeCollector(BaseCallback):
        def __init__(self):
            super().__init__()
            self.returns = []

        def _on_step(self):
            assert len(self.locals["infos"]) == len(self.locals["dones"]) == 2
            self.returns += [info["episode"]["r"] for info in self.locals["infos"] if "episode" in info]
            return True

    model = tiny("ppo", n_envs=2)
    collector = EpisodeCollector()
    model.learn(256, callback=collector)
    assert collector.returns and collector.returns == [e["r"] for e in model.ep_info_buffer]


class TwoKnobs(gym.Env):
    """MultiDiscrete([3, 2]) actions; reward 1 when the knobs match the observation's signs."""

    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gym.spaces.MultiDiscrete([3, 2])

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.obs = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return self.obs, {}

    def step(self, action):
        self.t += 1
        reward = float(action[0] == (self.obs[0] > 0) + 1) + float(action[1] == (self.obs[1] > 0))
        self.obs = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        return self.obs, reward, False, self.t >= 10, {}


@pytest.mark.parametrize("algo", sorted(AGENTS))
def test_multidiscrete_actions(algo):
    model = AGENTS[algo]("MlpPolicy", TwoKnobs(), seed=0, **TINY[algo]).learn(64)
    actions, _ = model.predict(np.zeros((3, 2), dtype=np.float32))
    assert actions.shape == (3, 2) and actions[:, 0].max() <= 2 and actions[:, 1].max() <= 1
    assert model.buffer.actions.shape[-1] == 2


def test_async_vectorization_trains_like_sync():
    runs = []
    for mode in ("sync", "async"):
        model = PPO("MlpPolicy", "CartPole-v1", n_envs=2, vectorization=mode, seed=0, n_steps=32, batch_size=64)
        model.learn(64)
        runs.append(model.buffer.rewards.clone())
        model.env.close()
    assert torch.equal(runs[0], runs[1])  # same seeds, same transitions, whichever process steps them


def test_ppo_target_kl_stops_the_epochs_early():
    """target_kl is PPO's early stop (SB3's): the first minibatch (ratio 1, KL 0) takes a step, the next
    sees KL > 1.5·target_kl and stops the update; that minibatch's KL is in the statistics."""
    agent = PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=16, n_epochs=10, learning_rate=1e-2,
                target_kl=1e-6, seed=0, device="cpu")
    agent._reset_env()
    agent.collect_rollout()
    stats = agent.update(agent.buffer, 1.0)
    assert stats["train/n_epochs_done"] == 0
    assert float(agent.optimizer.state_dict()["state"][0]["step"]) == 1  # one Adam step, then the stop
    assert stats["train/approx_kl"] > 0  # mean over the stepped minibatch (KL 0) and the stopping one


def test_sb3_model_api_hyperparameters_parameters_and_callback_locals(tmp_path):
    import numpy as np
    from stable_baselines3.common.callbacks import BaseCallback, StopTrainingOnMaxEpisodes

    model = PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu", n_steps=64, batch_size=32, gamma=0.98,
                clip_range={"kind": "linear", "start": 0.2, "end": 0.0})
    assert model.gamma == 0.98 and model.n_steps == 64 and model.batch_size == 32
    assert model.clip_range(1.0) == pytest.approx(0.2) and model.clip_range(0.5) == pytest.approx(0.1)

    class Seen(BaseCallback):
        def _on_step(self):
            self.kinds = {k: type(self.locals[k]) for k in ("actions", "rewards", "dones", "new_obs")}
            return True

    seen = Seen()
    stop = StopTrainingOnMaxEpisodes(max_episodes=3)  # SB3's, reading locals["dones"] with numpy
    model.learn(5000, callback=[seen, stop])
    assert set(seen.kinds.values()) == {np.ndarray} and model.num_timesteps < 5000

    params = model.get_parameters()
    assert set(params) == {"policy", "optimizer"}
    other = PPO("MlpPolicy", "CartPole-v1", seed=1, device="cpu", n_steps=64, batch_size=32)
    other.set_parameters(params)
    obs = np.zeros((3, 4), np.float32)
    np.testing.assert_array_equal(other.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])
    third = PPO("MlpPolicy", "CartPole-v1", seed=2, device="cpu", n_steps=64, batch_size=32)
    third.set_parameters(model.save(tmp_path / "m"))
    np.testing.assert_array_equal(third.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])
    with pytest.raises(AttributeError):
        model.no_such_thing
