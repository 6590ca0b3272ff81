"""Issue 28: the SB3 surface beyond learn/predict/save, each checked against SB3 itself on the same inputs:
the policy's attributes and methods (with gradients), model.rollout_buffer, schedules, loggers and run folders,
spaces and dtypes, logs across save/load, importing SB3's .zip files, and the warnings SB3 code relies on."""

import copy
import os
import warnings

import gymnasium as gym
import numpy as np
import pytest
import stable_baselines3 as sb3
import torch
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import FloatSchedule
from stable_baselines3.common.vec_env import VecTransposeImage

from agents import PPO, TRPO, VPG
from agents.sb3_compat import RoundedBudgetWarning
from rlgeom.models.policies import ActorCriticPolicy
from rlgeom.persistence.serialization import ModelFileError

TINY = dict(n_steps=32, batch_size=32, n_epochs=2, seed=0, device="cpu")
ARCH = dict(net_arch=dict(pi=[16, 8], vf=[12]))


def pair(env_id="CartPole-v1", **kw):
    """The same model in rlgeom and in SB3."""
    from stable_baselines3.common.env_util import make_vec_env

    kw = {**TINY, **kw}
    n_envs = kw.pop("n_envs", 1)
    return (PPO("MlpPolicy", env_id, policy_kwargs=ARCH, n_envs=n_envs, **kw),
            sb3.PPO("MlpPolicy", make_vec_env(env_id, n_envs), policy_kwargs=ARCH, **kw))


# ------------------------------------------------------------------ item 2: the policy's surface
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_policy_attributes_and_methods_have_sb3_shapes(env_id):
    ours, theirs = pair(env_id)
    p, q = ours.policy, theirs.policy
    assert p.net_arch == q.net_arch == ARCH["net_arch"]
    for name in ("latent_dim_pi", "latent_dim_vf"):
        assert getattr(p.mlp_extractor, name) == getattr(q.mlp_extractor, name)
    assert p.action_net.weight.shape == q.action_net.weight.shape and p.value_net.weight.shape == q.value_net.weight.shape
    # a flattening MLP extractor has no parameters: rlgeom builds one per network (share_features_extractor False)
    assert p.features_extractor is p.pi_features_extractor and p.vf_features_extractor is p.critic.features
    obs = np.stack([ours.observation_space.sample() for _ in range(5)])
    t, batched = p.obs_to_tensor(obs)
    u, sb3_batched = q.obs_to_tensor(obs)
    assert t.shape == u.shape and batched == sb3_batched
    features = p.features_extractor(t)
    pi_latent, vf_latent = p.mlp_extractor(features)
    assert pi_latent.shape == q.mlp_extractor.forward_actor(q.extract_features(u)).shape
    assert torch.equal(p.mlp_extractor.forward_critic(features), vf_latent)
    actions = torch.as_tensor(np.stack([ours.action_space.sample() for _ in range(5)]))
    sb3_actions = actions.float() if env_id == "Pendulum-v1" else actions
    for ours_out, sb3_out in zip(p.evaluate_actions(t, actions), q.evaluate_actions(u, sb3_actions)):
        assert ours_out.shape == sb3_out.shape
    assert p.predict_values(t).shape == q.predict_values(u).shape
    dist, sb3_dist = p.get_distribution(t), q.get_distribution(u)
    assert dist.log_prob(actions).shape == sb3_dist.log_prob(sb3_actions).shape
    for method in ("entropy", "sample", "mode"):
        assert getattr(dist, method)().shape == getattr(sb3_dist, method)().shape
    assert torch.equal(dist.get_actions(deterministic=True), dist.mode())
    # the numbers are the policy's own: the torch distribution's density, the critic's values
    values, log_prob, entropy = p.evaluate_actions(t, actions)
    torch.testing.assert_close(log_prob, dist.distribution.log_prob(actions.float() if env_id == "Pendulum-v1" else actions))
    torch.testing.assert_close(values.squeeze(-1), p.value(t))
    torch.testing.assert_close(entropy, dist.entropy())
    p.set_training_mode(False)
    assert not p.training
    p.set_training_mode(True)
    assert p.training


def _user_loss(policy, obs, actions):
    values, log_prob, entropy = policy.evaluate_actions(obs, actions)
    return -(log_prob * torch.linspace(-1, 1, len(obs))).mean() + (values.squeeze(-1) - 1.0).pow(2).mean() \
        - 0.01 * entropy.mean()


def _grads_through_evaluate_actions(written_out: bool):
    model = PPO("MlpPolicy", "Pendulum-v1", policy_kwargs=ARCH, **TINY)
    policy = model.policy
    policy.written_out_derivatives = written_out
    plain = copy.deepcopy(policy)
    plain.written_out_derivatives = False
    obs = torch.randn(16, 3)
    actions = torch.randn(16, 1)
    for module in (policy, plain):
        module.zero_grad(set_to_none=False)
        _user_loss(module, obs, actions).backward()
    # the reference: plain autograd through the modules themselves, no rlgeom path involved
    reference = copy.deepcopy(plain)
    reference.zero_grad(set_to_none=False)
    params = reference.actor(obs)
    mean, log_std = params[:, :1], params[:, 1:]
    dist = torch.distributions.Normal(mean, log_std.exp())
    values = reference.critic(obs).squeeze(-1)
    loss = (-(dist.log_prob(actions).sum(-1) * torch.linspace(-1, 1, 16)).mean() + (values - 1.0).pow(2).mean()
            - 0.01 * dist.entropy().sum(-1).mean())
    loss.backward()
    return policy, plain, reference


def test_a_user_loss_through_evaluate_actions_backpropagates_on_the_autograd_path():
    _, plain, reference = _grads_through_evaluate_actions(written_out=False)
    for (name, a), b in zip(plain.named_parameters(), reference.parameters()):
        assert a.grad is not None and a.grad.abs().sum() > 0, name
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_a_user_loss_through_evaluate_actions_backpropagates_on_the_written_out_path():
    """The written-out MLP is one autograd node (issue 27): a user's loss reaches every weight as autograd would."""
    policy, _, reference = _grads_through_evaluate_actions(written_out=True)
    for (name, a), b in zip(policy.named_parameters(), reference.parameters()):
        assert a.grad is not None and a.grad.abs().sum() > 0, name
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_policy_save_and_load_round_trip_without_pickle(tmp_path):
    model = PPO("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(**ARCH, activation_fn=torch.nn.ReLU, log_std_init=-0.5),
                **TINY)
    path = model.policy.save(tmp_path / "policy")
    loaded = ActorCriticPolicy.load(path, device="cpu")
    obs = torch.randn(8, 3)
    torch.testing.assert_close(loaded.dist_params(obs), model.policy.dist_params(obs))
    torch.testing.assert_close(loaded.value(obs), model.policy.value(obs))
    assert loaded.net_arch == model.policy.net_arch
    with pytest.raises(ModelFileError, match="not a policy file.*PPO.load"):
        ActorCriticPolicy.load(model.save(tmp_path / "model"))


# ------------------------------------------------------------------ item 3: model.rollout_buffer
FIELDS = ("observations", "actions", "rewards", "returns", "advantages", "values", "log_probs", "episode_starts")


class RolloutEnd(BaseCallback):
    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        buffer = self.model.rollout_buffer
        self.seen = {name: np.array(getattr(buffer, name)) for name in FIELDS}


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_rollout_buffer_fields_have_sb3_shapes_after_learn_and_at_rollout_end(env_id):
    ours, theirs = pair(env_id, n_envs=2, batch_size=64)
    callbacks = RolloutEnd(), RolloutEnd()
    ours.learn(64, callback=callbacks[0])
    theirs.learn(64, callback=callbacks[1])
    for name in FIELDS:  # after learn SB3's get() has flattened some fields (env-major): the same here
        a, b = getattr(ours.rollout_buffer, name), getattr(theirs.rollout_buffer, name)
        assert isinstance(a, np.ndarray) and a.shape == b.shape and a.dtype == b.dtype, name
        assert callbacks[0].seen[name].shape == callbacks[1].seen[name].shape, name
        assert callbacks[0].seen[name].shape[:2] == (32, 2), name
    np.testing.assert_array_equal(ours.rollout_buffer.returns[:32, 0], callbacks[0].seen["returns"][:, 0])
    for seen in (callbacks[0].seen, callbacks[1].seen):  # GAE's identity, at _on_rollout_end in both libraries
        np.testing.assert_allclose(seen["returns"], seen["advantages"] + seen["values"], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ item 4: model attributes and methods
def test_schedules_are_float_schedules_with_sb3_values():
    ours, theirs = pair(clip_range=0.3, learning_rate=1e-3)
    for name in ("lr_schedule", "clip_range"):
        a, b = getattr(ours, name), getattr(theirs, name)
        assert isinstance(a, FloatSchedule) and isinstance(b, FloatSchedule)
        assert a(0.5) == b(0.5)
    assert ours.learning_rate == theirs.learning_rate == 1e-3


def test_run_folders_are_named_as_sb3_names_them(tmp_path):
    for library, root in ((PPO, tmp_path / "ours"), (sb3.PPO, tmp_path / "sb3")):
        model = library("MlpPolicy", "CartPole-v1", tensorboard_log=str(root), **TINY)
        model.learn(32, tb_log_name="PPO")
        model.learn(32, tb_log_name="PPO")
        model.learn(32, tb_log_name="PPO", reset_num_timesteps=False)  # SB3 continues the latest run
        model.learn(32, tb_log_name="custom")
    assert sorted(os.listdir(tmp_path / "ours")) == sorted(os.listdir(tmp_path / "sb3")) == ["PPO_1", "PPO_2", "custom_1"]


def test_set_logger_takes_an_sb3_logger(tmp_path):
    from stable_baselines3.common.logger import configure

    model = PPO("MlpPolicy", "CartPole-v1", **TINY)
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(64)
    header = (tmp_path / "progress.csv").read_text().splitlines()[0].split(",")
    assert {"train/n_updates", "rollout/ep_len_mean", "time/fps"} <= set(header) or "time/fps" in header


class ChannelLastImage(gym.Env):
    observation_space = spaces.Box(0, 255, (40, 40, 3), np.uint8)
    action_space = spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 1.0, False, False, {}


def test_get_env_is_wrapped_in_vec_transpose_image_as_sb3_does():
    ours = PPO("MlpPolicy", ChannelLastImage(), **TINY)
    theirs = sb3.PPO("MlpPolicy", ChannelLastImage(), **TINY)
    env, sb3_env = ours.get_env(), theirs.get_env()
    assert isinstance(env, VecTransposeImage) and isinstance(sb3_env, VecTransposeImage) and ours.get_env() is env
    obs = env.reset()
    assert obs.shape == sb3_env.reset().shape == (1, 3, 40, 40)
    actions, _ = ours.predict(obs, deterministic=True)  # the channel-first frames SB3's env hands out
    np.testing.assert_array_equal(actions, ours.predict(np.moveaxis(obs, 1, -1), deterministic=True)[0])
    env.step(actions)


def test_save_exclude_accepts_sb3_attribute_names(tmp_path):
    ours, theirs = pair()
    names = ["_last_obs", "lr_schedule", "policy", "_n_updates", "ep_info_buffer", "num_timesteps"]
    theirs.save(tmp_path / "sb3", exclude=names)
    loaded = PPO.load(ours.save(tmp_path / "ours", exclude=names))
    assert loaded.num_timesteps == 0


# ------------------------------------------------------------------ item 5: spaces and dtypes
class Float64Actions(gym.Env):
    observation_space = spaces.Box(-1, 1, (3,), np.float32)
    action_space = spaces.Box(-1, 1, (2,), np.float64)

    def reset(self, seed=None):  # no `options`: SB3's DummyVecEnv passes it only when given
        return np.zeros(3, np.float32), {}

    def step(self, action):
        return np.zeros(3, np.float32), 0.0, False, False, {}


def test_predict_returns_the_action_space_dtype_and_reset_without_options_works():
    ours = PPO("MlpPolicy", Float64Actions(), **TINY).learn(32)
    theirs = sb3.PPO("MlpPolicy", Float64Actions(), **TINY).learn(32)
    obs = np.zeros(3, np.float32)
    assert ours.predict(obs)[0].dtype == theirs.predict(obs)[0].dtype == np.float64


class FloatImage(gym.Env):
    observation_space = spaces.Box(0.0, 1.0, (3, 40, 40), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        return np.zeros((3, 40, 40), np.float32), {}

    def step(self, action):
        return np.zeros((3, 40, 40), np.float32), 1.0, False, False, {}


def test_cnn_policy_takes_float_images_with_normalize_images_false():
    kw = dict(policy_kwargs=dict(normalize_images=False), **TINY)
    sb3.PPO("CnnPolicy", FloatImage(), **kw)
    ours = PPO("CnnPolicy", FloatImage(), **kw).learn(32)
    assert ours.predict(np.zeros((3, 40, 40), np.float32))[0] in (0, 1)
    with pytest.raises(ValueError, match="CnnPolicy needs uint8 image"):
        PPO("CnnPolicy", FloatImage(), **TINY)
    # with normalize_images=True SB3's NatureCNN asserts; SB3 code expecting that error gets it from rlgeom too
    with pytest.raises(AssertionError):
        sb3.PPO("CnnPolicy", FloatImage(), **TINY)
    with pytest.raises(AssertionError, match="normalize_images=False"):
        PPO("CnnPolicy", FloatImage(), **TINY)


class NestedDict(Float64Actions):
    observation_space = spaces.Dict({"outer": spaces.Dict({"inner": spaces.Box(-1, 1, (2,))})})


def test_nested_dict_observations_get_sb3s_error():
    with pytest.raises(NotImplementedError, match="Nested observation spaces are not supported"):
        sb3.PPO("MultiInputPolicy", NestedDict(), device="cpu")
    with pytest.raises(NotImplementedError, match="Nested observation spaces are not supported.*'outer'"):
        PPO("MultiInputPolicy", NestedDict(), device="cpu")


# ------------------------------------------------------------------ item 6: logs and files across save/load
def test_a_loaded_model_continues_its_run_folder_as_sb3(tmp_path):
    for library, root in ((PPO, tmp_path / "ours"), (sb3.PPO, tmp_path / "sb3")):
        model = library("MlpPolicy", "CartPole-v1", tensorboard_log=str(root), **TINY)
        model.learn(32, tb_log_name="PPO")
        saved = model.save(str(root / "model"))
        env = "CartPole-v1" if library is PPO else gym.make("CartPole-v1")
        loaded = library.load(saved or str(root / "model"), env=env, device="cpu")
        assert loaded.tensorboard_log == str(root)
        loaded.learn(32, tb_log_name="PPO", reset_num_timesteps=False)  # into PPO_1 again
        loaded.learn(32, tb_log_name="PPO")  # a new PPO_2
        assert sorted(n for n in os.listdir(root) if n.startswith("PPO")) == ["PPO_1", "PPO_2"]
    events = [n for n in os.listdir(tmp_path / "ours" / "PPO_1") if n.startswith("events")]
    assert len(events) == 2  # the loaded model wrote into the first run's folder


def test_train_n_updates_counts_as_sb3_does(monkeypatch):
    from rlgeom.persistence.logger import RunLogger

    ours, theirs = pair(n_epochs=3)
    ours.learn(64)
    theirs.learn(64)
    assert ours.sb3_n_updates == theirs._n_updates == 6 and ours.n_updates == 2
    seen = {}
    monkeypatch.setattr(RunLogger, "dump", lambda self, step=0: seen.update(self.name_to_value))
    ours.learn(32)
    assert seen["train/n_updates"] == 3


@pytest.fixture(scope="module")
def sb3_files(tmp_path_factory):
    import sb3_contrib

    root = tmp_path_factory.mktemp("sb3")
    made = {}
    for name, model in (
        ("ppo", sb3.PPO("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu")),
        ("a2c", sb3.A2C("MlpPolicy", "CartPole-v1", seed=0, device="cpu",
                        policy_kwargs=dict(net_arch=dict(pi=[32], vf=[16]), activation_fn=torch.nn.ReLU))),
        ("trpo", sb3_contrib.TRPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, seed=0, device="cpu")),
    ):
        model.learn(128)  # trained a little, so the weights are not the initial ones
        model.save(root / name)
        made[name] = (str(root / f"{name}.zip"), model)
    return made


@pytest.mark.parametrize("name,cls", [("ppo", PPO), ("a2c", VPG), ("trpo", TRPO)])
def test_sb3_zip_is_named_and_imported_with_the_same_actions_and_values(sb3_files, name, cls):
    path, sb3_model = sb3_files[name]
    with pytest.raises(ModelFileError, match="a Stable-Baselines3 model .*load_sb3"):
        cls.load(path)
    with pytest.raises(ModelFileError, match="a Stable-Baselines3 model"):
        cls.load(path[: -len(".zip")])  # SB3's load finds path + ".zip"
    ours = cls.load_sb3(path, device="cpu")
    obs = np.stack([sb3_model.observation_space.sample() for _ in range(32)])
    np.testing.assert_array_equal(ours.predict(obs, deterministic=True)[0], sb3_model.predict(obs, deterministic=True)[0])
    with torch.no_grad():
        np.testing.assert_allclose(ours.policy.predict_values(torch.as_tensor(obs)).numpy(),
                                   sb3_model.policy.predict_values(sb3_model.policy.obs_to_tensor(obs)[0]).numpy(),
                                   rtol=1e-6, atol=1e-6)
    assert ours.config.gamma == sb3_model.gamma
    other = PPO if cls is not PPO else VPG
    with pytest.raises(ModelFileError, match=f"{cls.__name__}.load_sb3"):
        other.load_sb3(path)


def test_importing_never_unpickles(sb3_files, monkeypatch):
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", lambda *a, weights_only=None, **kw: (
        refuse() if weights_only is not True else torch.serialization.load(*a, weights_only=True, **kw)))
    PPO.load_sb3(sb3_files["ppo"][0], device="cpu")


# ------------------------------------------------------------------ items 7 and 8: silences and SB3's habits
def test_learn_says_when_whole_rollouts_round_the_budget_up():
    model = VPG("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=64, seed=0, device="cpu")
    with pytest.warns(RoundedBudgetWarning, match=r"learn\(100\) runs 128 steps.*n_steps=64 x n_envs=1 = 64"):
        model.learn(100)
    assert model.num_timesteps == 128
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.learn(64)  # a multiple: nothing to say
        model.learn(6401)  # 6464 steps: 1% over the budget is not worth a warning (the CLI's 100,000 runs 100,096)
    assert model.num_timesteps == 6464


def test_the_final_evaluation_shows_progress(capsys):
    from envs import make_vec_env
    from rlgeom.training.evaluation import evaluate

    model = PPO("MlpPolicy", "CartPole-v1", **TINY)
    evaluate(model, make_vec_env("CartPole-v1", 1), n_episodes=3, seed=0, progress_bar=True)
    err = capsys.readouterr().err
    assert "evaluation" in err and "3/3" in err


def test_pre_18_net_arch_is_converted_with_sb3s_warning():
    legacy = dict(net_arch=[dict(pi=[16], vf=[8])])
    with pytest.warns(UserWarning, match="shared layers in the mlp_extractor are removed"):
        theirs = sb3.PPO("MlpPolicy", "CartPole-v1", policy_kwargs=legacy, device="cpu")
    with pytest.warns(UserWarning, match="shared layers in the mlp_extractor are removed"):
        ours = PPO("MlpPolicy", "CartPole-v1", policy_kwargs=legacy, device="cpu")
    assert ours.policy.net_arch == theirs.policy.net_arch == dict(pi=[16], vf=[8])


def test_predict_names_the_gym_vecenv_mix_up():
    model = PPO("MlpPolicy", "CartPole-v1", device="cpu")
    env = gym.make("CartPole-v1")
    with pytest.raises(ValueError, match=r"tuple \(observation, info\).*obs, info = env.reset\(\)"):
        model.predict(env.reset(seed=0))


# ------------------------------------------------------------------ item 1: an SB3 ActorCriticPolicy subclass
class CustomNetwork(torch.nn.Module):
    """SB3's documented custom policy network (the 'Custom Policy' page of its docs)."""

    def __init__(self, feature_dim, last_layer_dim_pi=16, last_layer_dim_vf=8):
        super().__init__()
        self.latent_dim_pi, self.latent_dim_vf = last_layer_dim_pi, last_layer_dim_vf
        self.policy_net = torch.nn.Sequential(torch.nn.Linear(feature_dim, last_layer_dim_pi), torch.nn.ReLU())
        self.value_net = torch.nn.Sequential(torch.nn.Linear(feature_dim, last_layer_dim_vf), torch.nn.ReLU())

    def forward(self, features):
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features):
        return self.policy_net(features)

    def forward_critic(self, features):
        return self.value_net(features)


def custom_policy_class():
    from stable_baselines3.common.policies import ActorCriticPolicy as SB3ActorCriticPolicy

    class CustomActorCriticPolicy(SB3ActorCriticPolicy):
        def __init__(self, *args, **kwargs):
            kwargs["ortho_init"] = False
            super().__init__(*args, **kwargs)

        def _build_mlp_extractor(self):
            self.mlp_extractor = CustomNetwork(self.features_dim)

    return CustomActorCriticPolicy


def test_an_sb3_policy_subclass_acts_as_sb3s_with_the_same_weights_and_says_its_path_once(tmp_path):
    custom = custom_policy_class()
    with pytest.warns(UserWarning, match="CustomActorCriticPolicy .*trains through autograd"):
        ours = PPO(custom, "Pendulum-v1", **TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PPO(custom, "Pendulum-v1", **TINY)  # said once
    theirs = sb3.PPO(custom, "Pendulum-v1", **TINY)
    ours.policy.sb3_policy.load_state_dict(theirs.policy.state_dict())
    obs = np.stack([theirs.observation_space.sample() for _ in range(16)])
    np.testing.assert_allclose(ours.predict(obs, deterministic=True)[0], theirs.predict(obs, deterministic=True)[0],
                               rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(ours.policy.predict_values(torch.as_tensor(obs)).numpy(),
                                   theirs.policy.predict_values(torch.as_tensor(obs)).numpy(), rtol=1e-6, atol=1e-6)
    path = ours.save(tmp_path / "custom")
    with pytest.raises(ModelFileError, match="custom_objects=\\{'policy'"):
        PPO.load(path)
    loaded = PPO.load(path, custom_objects={"policy": custom})
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], ours.predict(obs, deterministic=True)[0])


@pytest.mark.parametrize("cls", [PPO, VPG, TRPO, "NPG", "ACKTR"])
def test_every_agent_trains_an_sb3_policy_subclass(cls):
    import agents

    cls = getattr(agents, cls) if isinstance(cls, str) else cls
    kw = dict(n_steps=32, seed=0, device="cpu", **({"batch_size": 32} if cls is not agents.ACKTR else {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = cls(custom_policy_class(), "CartPole-v1", **kw)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(64)
    moved = [not torch.equal(a, b) for a, b in zip(before, model.policy.parameters())]
    assert len(moved) == 8 and all(moved)  # every SB3 module, actor and critic, was trained


def test_an_sb3_policy_with_its_own_features_extractor_and_net_arch():
    from stable_baselines3.common.policies import ActorCriticPolicy as SB3ActorCriticPolicy
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    class Extractor(BaseFeaturesExtractor):
        def __init__(self, observation_space, features_dim=6):
            super().__init__(observation_space, features_dim)
            self.linear = torch.nn.Linear(observation_space.shape[0], features_dim)

        def forward(self, obs):
            return torch.tanh(self.linear(obs))

    kwargs = dict(features_extractor_class=Extractor, net_arch=dict(pi=[8], vf=[4]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = PPO(SB3ActorCriticPolicy, "CartPole-v1", policy_kwargs=kwargs, **TINY)
    theirs = sb3.PPO("MlpPolicy", "CartPole-v1", policy_kwargs=kwargs, **TINY)
    ours.policy.sb3_policy.load_state_dict(theirs.policy.state_dict())
    assert ours.policy.share_features_extractor == theirs.policy.share_features_extractor
    obs = np.stack([theirs.observation_space.sample() for _ in range(16)])
    np.testing.assert_array_equal(ours.predict(obs, deterministic=True)[0], theirs.predict(obs, deterministic=True)[0])
    ours.learn(32)


def test_a_loaded_model_continues_rlgeoms_run_folder_without_tb_log_name(tmp_path):
    model = PPO("MlpPolicy", "CartPole-v1", tensorboard_log=str(tmp_path), **TINY)
    model.learn(32)
    run = model._run_dir
    model.logger.close()
    loaded = PPO.load(model.save(tmp_path / "model"), env="CartPole-v1")
    loaded.learn(32, reset_num_timesteps=False)  # continues seed0, as SB3 continues its PPO_1
    assert loaded._run_dir == run
    loaded.logger.close()
    loaded.learn(32)  # a new run beside it
    assert loaded._run_dir == run + "_2"


class ChannelFirstImage(ChannelLastImage):
    observation_space = spaces.Box(0, 255, (3, 36, 36), np.uint8)
    action_space = spaces.Discrete(3)


@pytest.mark.parametrize("share", [True, False])
def test_an_sb3_cnn_policy_is_imported_with_the_same_actions_and_values(tmp_path, share):
    theirs = sb3.PPO("CnnPolicy", ChannelFirstImage(), **TINY, policy_kwargs=dict(
        share_features_extractor=share, features_extractor_kwargs=dict(features_dim=32)))
    theirs.save(tmp_path / "cnn")
    with pytest.raises(ModelFileError, match="bounds were written elided.*env="):  # SB3 elides an image's bounds
        PPO.load_sb3(tmp_path / "cnn.zip")
    ours = PPO.load_sb3(tmp_path / "cnn.zip", env=ChannelFirstImage(), device="cpu")
    assert ours.policy.share_features_extractor == share
    obs = np.stack([ChannelFirstImage.observation_space.sample() for _ in range(8)])
    np.testing.assert_array_equal(ours.predict(obs, deterministic=True)[0], theirs.predict(obs, deterministic=True)[0])
    with torch.no_grad():
        np.testing.assert_allclose(ours.policy.predict_values(torch.as_tensor(obs)).numpy(),
                                   theirs.policy.predict_values(theirs.policy.obs_to_tensor(obs)[0]).numpy(),
                                   rtol=1e-5, atol=1e-5)


def test_an_sb3_policy_class_shows_its_own_modules_under_sb3s_names():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = PPO(custom_policy_class(), "CartPole-v1", **TINY)
    theirs = sb3.PPO(custom_policy_class(), "CartPole-v1", **TINY)
    p, q = ours.policy, theirs.policy
    assert type(p.mlp_extractor) is type(q.mlp_extractor) is CustomNetwork
    assert p.mlp_extractor.latent_dim_pi == q.mlp_extractor.latent_dim_pi and p.features_dim == q.features_dim
    assert p.net_arch == {"pi": [16], "vf": [8]} and p.action_net is p.actor.head
    rlgeom_own = PPO("MlpPolicy", "CartPole-v1", policy_kwargs=ARCH, **TINY).policy
    assert rlgeom_own.features_dim == 4


def overriding_policy_class():
    """SB3's test_gae.py pattern: forward makes V a constant (an attribute of the policy); and evaluate_actions
    doubles V, so that which method computed a value can be told."""
    base = custom_policy_class()

    class Overriding(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.constant_value = 0.5

        def forward(self, obs, deterministic=False):
            actions, values, log_prob = super().forward(obs, deterministic)
            return actions, torch.full_like(values, self.constant_value), log_prob

        def evaluate_actions(self, obs, actions):
            values, log_prob, entropy = super().evaluate_actions(obs, actions)
            return 2 * values, log_prob, entropy

    return Overriding


class GAEAtRolloutEnd(BaseCallback):
    """At the rollout's end: SB3's GAE recomputed from model.rollout_buffer's rewards, episode starts and values
    (forward's), bootstrapping the last step from predict_values as SB3's collect_rollouts does."""

    def _on_step(self):
        return True

    def _on_rollout_end(self):
        b, model = self.model.rollout_buffer, self.model
        values, rewards, starts = b.values[:, 0], b.rewards[:, 0], b.episode_starts[:, 0]
        last_obs = torch.as_tensor(np.asarray(torch.as_tensor(model._last_obs).cpu()), dtype=torch.float32)
        with torch.no_grad():
            last_value = float(model.policy.predict_values(last_obs).reshape(-1)[0])
        last_done = float(np.asarray(torch.as_tensor(model._last_episode_starts).cpu()).reshape(-1)[0])
        advantages, running = np.zeros_like(values), 0.0
        for t in reversed(range(len(values))):
            not_done = 1.0 - (last_done if t == len(values) - 1 else starts[t + 1])
            next_value = last_value if t == len(values) - 1 else values[t + 1]
            delta = rewards[t] + model.gamma * next_value * not_done - values[t]
            running = delta + model.gamma * model.gae_lambda * not_done * running
            advantages[t] = running
        self.values, self.advantages, self.expected = values.copy(), b.advantages[:, 0].copy(), advantages


def test_an_sb3_policy_class_overriding_methods_has_them_called_where_sb3_calls_them():
    cls, kw = overriding_policy_class(), dict(TINY, gamma=0.9, gae_lambda=0.8)
    with pytest.warns(UserWarning, match="overrides forward, evaluate_actions: rlgeom calls its forward"):
        ours = PPO(cls, "CartPole-v1", **kw)
    theirs = sb3.PPO(cls, "CartPole-v1", **kw)
    ours.policy.sb3_policy.load_state_dict(theirs.policy.state_dict())
    ours.policy.constant_value = theirs.policy.constant_value = 0.25  # the user's attribute, on the user's policy
    assert ours.policy.sb3_policy.constant_value == 0.25
    obs = torch.as_tensor(np.stack([theirs.observation_space.sample() for _ in range(8)]))
    actions = torch.arange(8) % 2
    for mine, sb3s in zip(ours.policy.evaluate_actions(obs, actions), theirs.policy.evaluate_actions(obs, actions)):
        torch.testing.assert_close(mine, sb3s)  # the doubled values included
    out, log_probs, _ = ours.policy.loss_terms(obs, actions)  # what PPO's loss takes
    torch.testing.assert_close(out.values, theirs.policy.evaluate_actions(obs, actions)[0].reshape(-1))
    torch.testing.assert_close(ours.policy(obs)[1], torch.full((8, 1), 0.25))
    for model in (ours, theirs):  # the rollout's values are forward's, and GAE is SB3's over them
        seen = GAEAtRolloutEnd()
        model.learn(32, callback=seen)
        np.testing.assert_allclose(seen.values, 0.25)
        np.testing.assert_allclose(seen.advantages, seen.expected, rtol=1e-5, atol=1e-5)


def test_agents_that_differentiate_the_modules_refuse_overrides_their_update_would_not_call():
    with pytest.raises(ValueError, match="overrides evaluate_actions; TRPO's update differentiates .* Use PPO"):
        TRPO(overriding_policy_class(), "CartPole-v1", n_steps=32, batch_size=32, seed=0, device="cpu")
    base = custom_policy_class()

    class ForwardOnly(base):
        def forward(self, obs, deterministic=False):
            actions, values, log_prob = super().forward(obs, deterministic)
            return actions, values * 0, log_prob

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = VPG(ForwardOnly, "CartPole-v1", n_steps=32, batch_size=32, seed=0, device="cpu")
    seen = GAEAtRolloutEnd()
    model.learn(32, callback=seen)
    np.testing.assert_array_equal(seen.values, 0.0)  # every agent's rollout calls forward
    np.testing.assert_allclose(seen.advantages, seen.expected, rtol=1e-5, atol=1e-5)


def test_model_env_has_sb3s_vecenv_space_names():
    ours, theirs = PPO("MlpPolicy", "Pendulum-v1", **TINY), sb3.PPO("MlpPolicy", "Pendulum-v1", **TINY)
    assert ours.env.observation_space == theirs.env.observation_space == gym.make("Pendulum-v1").observation_space
    assert ours.env.action_space == theirs.env.action_space


def test_set_parameters_refuses_names_that_are_not_the_models_objects_as_sb3():
    for model in (PPO("MlpPolicy", "CartPole-v1", **TINY), sb3.PPO("MlpPolicy", "CartPole-v1", **TINY)):
        params = {**model.get_parameters(), "not_an_object": "x"}
        for exact_match in (True, False):
            with pytest.raises(ValueError):
                model.set_parameters(params, exact_match=exact_match)
    with pytest.raises(ValueError, match="'not_an_object'.*accepted: \\['policy', 'optimizer'\\]"):
        PPO("MlpPolicy", "CartPole-v1", **TINY).set_parameters(params)


class BatchNormDropout(torch.nn.Module):
    """SB3's test_train_eval_mode.py extractor: a batch norm and a dropout, which act differently in eval mode."""

    def __init__(self, observation_space):
        super().__init__()
        self.features_dim = int(np.prod(observation_space.shape))
        self.batch_norm, self.dropout = torch.nn.BatchNorm1d(self.features_dim), torch.nn.Dropout(0.5)

    def forward(self, obs):
        return self.dropout(self.batch_norm(obs.flatten(1)))


def test_training_mode_as_sb3_sets_it_and_the_users_extractor_under_its_name():
    kw = dict(policy_kwargs=dict(features_extractor_class=BatchNormDropout, net_arch=[8]), **TINY)
    model = PPO("MlpPolicy", "CartPole-v1", **kw)
    norm = model.policy.features_extractor.batch_norm  # the user's module, as in SB3 (not rlgeom's Preprocess)
    assert norm is model.policy.actor.features[1].batch_norm
    obs = np.stack([model.observation_space.sample() for _ in range(4)])
    mean = norm.running_mean.clone()
    first = model.predict(obs, deterministic=True)[0]  # eval mode: no dropout, running statistics left alone
    for _ in range(3):
        np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], first)
    assert torch.equal(norm.running_mean, mean)
    model.learn(32)  # a rollout of single rows runs in eval mode (train mode would refuse one row), updates in train
    assert not torch.equal(norm.running_mean, mean)


def test_a_vec_env_returning_fewer_infos_while_no_env_is_done_is_taken_as_sb3_takes_it():
    from stable_baselines3.common.vec_env import DummyVecEnv

    class FewInfos(DummyVecEnv):  # SB3's test_vec_extract_dict_obs.py env returns [] while no env is done
        def step_wait(self):
            obs, rewards, dones, infos = super().step_wait()
            return obs, rewards, dones, infos if dones.any() else []

    for agent in (PPO, sb3.PPO):
        agent("MlpPolicy", FewInfos([lambda: gym.make("CartPole-v1")]), **TINY).learn(64)


@pytest.mark.parametrize("kwargs", [dict(clip_range_vf=-0.2), dict(n_steps=1)])
def test_an_impossible_hyperparameter_is_the_assertion_error_sb3_raises_and_a_value_error(kwargs):
    with pytest.raises(AssertionError):
        sb3.PPO("MlpPolicy", "Pendulum-v1", **kwargs)
    with pytest.raises(AssertionError) as raised:
        PPO("MlpPolicy", "Pendulum-v1", **kwargs)
    assert isinstance(raised.value, ValueError) and ("must be" in str(raised.value) or "accepted" in str(raised.value))


def test_a_function_callback_of_locals_and_globals_is_sb3s_old_form():
    seen = []

    def stop_after_three(locals_, globals_):
        seen.append(locals_["self"].num_timesteps)
        return len(seen) < 3

    for agent in (PPO, sb3.PPO):
        seen.clear()
        agent("MlpPolicy", "CartPole-v1", **TINY).learn(64, callback=stop_after_three)
        assert seen == [1, 2, 3]
