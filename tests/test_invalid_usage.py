"""One test per row of README.md's "Errors you may see": common misuse gives a clear error."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents import PPO, VPG
from envs import NonFiniteEnvError
from rlgeom.training.guards import TrainingDivergedError
from rlgeom.persistence.serialization import ModelFileError

SMALL = dict(n_steps=32, batch_size=32, n_epochs=1)



@pytest.fixture(scope="module")
def ppo_file(tmp_path_factory) -> str:
    return PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu", **SMALL).save(tmp_path_factory.mktemp("f") / "ppo")


def test_unknown_env_id():
    with pytest.raises(ValueError, match="unknown env id 'CartPol-v1'"):
        PPO("MlpPolicy", "CartPol-v1")


def test_wrong_env_type():
    with pytest.raises(TypeError, match="unsupported env type list; accepted: an env id string"):
        PPO("MlpPolicy", [1, 2])


def test_no_env():
    with pytest.raises(ValueError, match="needs an env"):
        PPO("MlpPolicy", None)


def test_next_step_autoreset_vector_env():
    with pytest.raises(ValueError, match="needs same-step autoreset"):
        PPO("MlpPolicy", gym.make_vec("CartPole-v1", num_envs=2))


def test_single_env_instance_with_several_envs():
    with pytest.raises(ValueError, match="cannot be copied into n_envs=2"):
        PPO("MlpPolicy", gym.make("CartPole-v1"), n_envs=2)


def test_unknown_policy():
    with pytest.raises(ValueError, match="unknown policy 'FooPolicy'; accepted: MlpPolicy, CnnPolicy"):
        PPO("FooPolicy", "CartPole-v1")


def test_unknown_hyperparameter():
    with pytest.raises(ValueError, match="unknown hyperparameter.*learning_rat.*accepted:"):
        PPO("MlpPolicy", "CartPole-v1", learning_rat=1e-3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_steps=0), "n_steps must be a positive integer"),
    (dict(n_steps=64, batch_size=7), "batch_size=7 does not divide"),
    (dict(gamma=1.5), r"gamma must be a number in \[0.0, 1.0\]"),
    (dict(nonfinite="ignore"), "nonfinite='ignore' is not a mode; accepted: 'raise', 'sanitize'"),
    (dict(max_consecutive_skips=0), "max_consecutive_skips must be a positive integer"),
])
def test_bad_hyperparameter_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PPO("MlpPolicy", "CartPole-v1", **kwargs)


def test_bad_policy_kwargs():
    with pytest.raises(ValueError, match="invalid policy_kwargs"):
        PPO("MlpPolicy", "CartPole-v1", policy_kwargs=dict(foo=1))
    with pytest.raises(ValueError, match="cannot share a feature extractor"):
        VPG("MlpPolicy", "CartPole-v1", policy_kwargs=dict(share_features_extractor=True))


def test_unknown_or_unavailable_device():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        PPO("MlpPolicy", "CartPole-v1", device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            PPO("MlpPolicy", "CartPole-v1", device="cuda")


def test_predict_with_an_observation_of_the_wrong_shape():
    model = PPO("MlpPolicy", "CartPole-v1", device="cpu", **SMALL)
    with pytest.raises(ValueError, match=r"observation of shape \(3,\) does not match .* \(4,\)"):
        model.predict(np.zeros(3))


def test_learn_on_a_model_loaded_without_env(ppo_file):
    model = PPO.load(ppo_file)
    model.predict(np.zeros(4))  # inference needs no env
    with pytest.raises(ValueError, match="this model has no env: pass env= to load"):
        model.learn(32)


def test_bad_total_timesteps():
    with pytest.raises(ValueError, match="total_timesteps must be a positive integer"):
        PPO("MlpPolicy", "CartPole-v1", **SMALL).learn(0)


def test_checkpoints_without_a_place_to_write():
    with pytest.raises(ValueError, match="checkpoint_every needs a place to write"):
        PPO("MlpPolicy", "CartPole-v1", **SMALL).learn(32, checkpoint_every=32)


def test_bad_callback():
    with pytest.raises(TypeError, match="lacks init_callback"):
        PPO("MlpPolicy", "CartPole-v1", **SMALL).learn(32, callback=object())


def test_loading_into_the_wrong_class(ppo_file):
    with pytest.raises(ModelFileError, match="holds a PPO model, not VPG"):
        VPG.load(ppo_file)


def test_loading_with_an_env_of_other_spaces(ppo_file):
    with pytest.raises(ModelFileError, match="does not fit this env"):
        PPO.load(ppo_file, env="Pendulum-v1")


def test_set_env_with_other_spaces():
    model = PPO("MlpPolicy", "CartPole-v1", **SMALL)
    with pytest.raises(ValueError, match="the new env's observation space .* differs from the model's"):
        model.set_env("Pendulum-v1")


def test_loading_a_missing_or_damaged_file(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        PPO.load(tmp_path / "nothing")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ModelFileError, match="junk.safetensors: not a readable safetensors model file"):
        PPO.load(tmp_path / "junk.safetensors")


class _NaNObs(gym.Wrapper):
    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs * np.nan, reward, terminated, truncated, info


def test_env_that_returns_nan():
    model = PPO("MlpPolicy", _NaNObs(gym.make("CartPole-v1")), device="cpu", **SMALL)
    with pytest.raises(NonFiniteEnvError, match="at vector step 1, env index"):
        model.learn(32)


def test_training_that_diverges(monkeypatch):
    model = PPO("MlpPolicy", "CartPole-v1", device="cpu", max_consecutive_skips=2, **SMALL)
    monkeypatch.setattr(model, "update", lambda *a: (_ for _ in ()).throw(
        __import__("rlgeom.training.guards", fromlist=["SkippedUpdate"]).SkippedUpdate(["loss"])))
    with pytest.raises(TrainingDivergedError, match="2 consecutive updates were skipped"):
        model.learn(5 * 32)


@pytest.mark.parametrize("argv, message", [
    (["--algo", "sac"], "unknown algorithm 'sac'"),
    (["--hp", "n_steps"], "--hp expects KEY=VALUE"),
    (["--env", "CartPol-v1", "--timesteps", "32"], "unknown env id"),
    (["--resume", "/nonexistent/run"], "no checkpoint found"),
])
def test_cli_prints_the_error_without_traceback(argv, message, capsys, tmp_path):
    from rlgeom.tools.train import main

    assert main([*argv, "--logdir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_seeds_are_checked():
    for bad in (-1, "0", 10**20, 1.5, True):
        with pytest.raises(ValueError, match="seed must be"):
            PPO("MlpPolicy", "CartPole-v1", seed=bad, device="cpu")


def test_predict_takes_uint8_vectors_and_refuses_non_finite_observations():
    model = PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu")
    action, _ = model.predict(np.array([1, 0, 2, 0], np.uint8), deterministic=True)  # cast to the space's floats
    assert action in (0, 1)
    for deterministic in (False, True):
        with pytest.raises(ValueError, match="NaN or inf"):
            model.predict(np.array([0.0, np.nan, 0.0, 0.0], np.float32), deterministic=deterministic)


def test_model_files_with_non_finite_weights_wrong_dtypes_or_no_checksum_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    from rlgeom.persistence.serialization import tensor_digest

    path = PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu").save(tmp_path / "model")
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    tensors = load_file(path)
    key = next(k for k in tensors if k.endswith("weight"))

    def rewrite(name, tensors, meta):
        out = str(tmp_path / name)
        save_file(tensors, out, metadata=meta)
        return out

    nan = dict(tensors, **{key: tensors[key].clone().fill_(float("nan"))})
    with pytest.raises(ModelFileError, match="non-finite"):
        PPO.load(rewrite("nan.safetensors", nan, {**meta, "tensors_sha256": tensor_digest(nan)}))
    double = dict(tensors, **{key: tensors[key].double()})
    with pytest.raises(ModelFileError, match="dtype"):
        PPO.load(rewrite("double.safetensors", double, {**meta, "tensors_sha256": tensor_digest(double)}))
    unsigned = {k: v for k, v in meta.items() if k != "tensors_sha256"}
    with pytest.raises(ModelFileError, match="no tensors_sha256"):
        PPO.load(rewrite("nochecksum.safetensors", tensors, unsigned))


def test_a_nan_weight_is_reported_before_any_nan_action_reaches_the_env():
    from rlgeom.training.guards import NonFinitePolicyError

    model = PPO("MlpPolicy", "Pendulum-v1", seed=0, device="cpu", n_steps=64, batch_size=64)
    model.learn(64)
    with torch.no_grad():
        model.policy.actor.body[0].weight[0, 0] = float("nan")
    with pytest.raises(NonFinitePolicyError, match="actor.body.0.weight"):
        model.learn(64, reset_num_timesteps=False)


@pytest.mark.parametrize("cls", [PPO, VPG])
def test_one_step_rollouts_of_one_env_train(cls):
    """Advantage normalisation over a single sample only centres it (no 0/0)."""
    model = cls("MlpPolicy", "Pendulum-v1", seed=0, device="cpu", n_steps=1, batch_size=1)
    model.learn(40)
    assert model.skipped_updates == 0 and model.n_updates == 40


def test_absurd_policy_sizes_and_scales_are_refused_before_anything_is_allocated():
    from agents import PPO

    for policy_kwargs, match in [({"net_arch": [65536, 65536]}, "weights between hidden layers"),
                                 ({"net_arch": [10**9]}, "layer widths"),
                                 ({"net_arch": {"pi": [64, True], "vf": [64]}}, "layer widths"),
                                 ({"log_std_init": 1e9}, "log_std_init"),
                                 ({"log_std_init": float("nan")}, "log_std_init")]:
        with pytest.raises(ValueError, match=match):
            PPO("MlpPolicy", "Pendulum-v1", device="cpu", policy_kwargs=policy_kwargs)
    with pytest.raises(ValueError, match="finite number"):
        PPO("MlpPolicy", "Pendulum-v1", device="cpu", learning_rate=float("inf"))
