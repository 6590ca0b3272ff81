"""Issue 30 (validation): sizes, types, saved states and inputs a user or a file may get wrong.

One test per case of experiments/RESULTS_faults.md's "issue 30 (validation)" table. Where the issue names
the CLI the test runs `python -m rlgeom.train` as a real process, with a time limit, and asserts its exit
status and message; model files are crafted by rewriting a real one (with a valid checksum, so the check
that refuses them is the one under test)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
import time
import tracemalloc
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from safetensors.torch import load_file, save_file

from agents import ACKTR, PPO, TRPO
from rlgeom.models.policies import ActorCriticPolicy
from rlgeom.persistence import checkpoint as ckpt
from rlgeom.persistence.serialization import ModelFileError, tensor_digest
from rlgeom.training.guards import SkippedUpdateWarning, TrainingDivergedError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(n_steps=32, batch_size=32, n_epochs=1)

#: envs an adversarial user would write: finite rewards of 3e38, observations of ±3e38 (finite in float32),
#: float64 observations of 1e300 (inf once cast to float32). A module, so the CLI imports it (--gym-packages).
HOSTILE_ENVS = textwrap.dedent('''
    import gymnasium as gym
    import numpy as np
    from gymnasium import spaces


    class Hostile(gym.Env):
        def __init__(self, reward=1.0, big=0.0, dtype=np.float32, length=20):
            self.observation_space = spaces.Box(-np.inf, np.inf, (4,), dtype)
            self.action_space = spaces.Discrete(2)
            self.reward, self.big, self.dtype, self.length = reward, big, dtype, length

        def _obs(self):
            obs = self.np_random.standard_normal(4)
            if self.big:
                obs[0] = self.big * self.np_random.choice([-1.0, 1.0])
            return obs.astype(self.dtype)

        def reset(self, seed=None, options=None):
            super().reset(seed=seed)
            self.t = 0
            return self._obs(), {}

        def step(self, action):
            self.t += 1
            return self._obs(), float(self.reward), False, self.t >= self.length, {}


    for name, kwargs in (("HugeReward-v0", dict(reward=3e38)), ("HugeObs-v0", dict(big=3e38)),
                         ("OverflowObs-v0", dict(big=1e300, dtype=np.float64))):
        if name not in gym.registry:
            gym.register(name, entry_point=Hostile, kwargs=kwargs)
''')


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """The folder holding hostile_envs.py (imported here too, so the API tests can make its envs)."""
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "hostile_envs.py").write_text(HOSTILE_ENVS)
    sys.path.insert(0, str(folder))
    importlib.import_module("hostile_envs")
    yield folder
    sys.path.remove(str(folder))


def _cli(args, cwd, timeout=120, extra_path=None):
    """(exit status, stderr, seconds) of `python -m rlgeom.train ARGS` as a real process."""
    path = os.pathsep.join(p for p in (REPO, extra_path and str(extra_path), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rlgeom.train", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.returncode, proc.stderr + proc.stdout, time.perf_counter() - start


def _rewrite(src, dst, tensors=None, description=None) -> str:
    """The model file `src` with its tensors and/or JSON description edited, re-signed (a valid checksum)."""
    from safetensors import safe_open

    with safe_open(src, "pt") as f:
        meta = f.metadata()
    data = load_file(src)
    if tensors:
        tensors(data)
    d = json.loads(meta["description"])
    if description:
        description(d)
    save_file(data, str(dst), metadata={**meta, "description": json.dumps(d), "tensors_sha256": tensor_digest(data)})
    return str(dst)


# ----------------------------------------------------------------------------- 21. types of hyperparameters
@pytest.mark.parametrize("kwargs, message", [
    (dict(normalize_advantage="no"), "normalize_advantage must be True or False, got 'no'"),
    (dict(normalize_observations=1), "normalize_observations must be True or False, got 1"),
    (dict(n_steps=64.0), "n_steps must be an integer, got 64.0"),
    (dict(gamma="0.9"), "gamma must be a number, got '0.9'"),
    (dict(target_kl="0.01"), "target_kl must be a number or None"),
    (dict(ent_coef=float("inf")), "ent_coef must be >= 0 (and finite), got inf"),  # found probing: every loss inf
])
def test_the_api_refuses_a_hyperparameter_of_the_wrong_type(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PPO("MlpPolicy", "CartPole-v1", **kwargs)


def _main(argv, capsys) -> tuple[int, str]:
    """The CLI's main() in this process (the quick cases; each CLI-named case also runs as a real process)."""
    from rlgeom.tools.train import main

    code = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out + captured.err


@pytest.mark.parametrize("pair, value", [("normalize_advantage=No", "False"), ("normalize_advantage=YES", "True"),
                                         ("use_sde=off", "False"), ("normalize_reward=1", "True")])
def test_the_cli_parses_bool_words(pair, value, capsys):
    code, out = _main(["--help-hp", "--algo", "ppo", "--hp", pair], capsys)
    name = pair.partition("=")[0]
    row = next(line for line in out.splitlines() if line.strip().startswith(name + " "))
    assert code == 0 and row.split()[1:3] == [value, "--hp"]


@pytest.mark.parametrize("argv, message", [
    (["--help-hp", "--algo", "ppo", "--hp", "normalize_advantage=maybe"], "normalize_advantage must be true or false"),
    (["--help-hp", "--algo", "trpo", "--hp", "max_kl=abc"], "max_kl must be a number, got 'abc'"),
    (["--help-hp", "--algo", "acktr", "--hp", "update_inverse_every=2.5"], "update_inverse_every must be an integer"),
    (["--algo", "ppo", "--hp", "target_kl=none-ish"], "target_kl must be a number or None"),
])
def test_the_cli_refuses_a_value_its_field_cannot_take(argv, message, capsys, tmp_path):
    code, out = _main([*argv, "--logdir", str(tmp_path)], capsys)
    assert code == 2 and message in out


@pytest.mark.slow
def test_the_cli_process_refuses_a_bad_bool_and_a_bad_float_with_exit_2(tmp_path):
    code, out, _ = _cli(["--help-hp", "--algo", "ppo", "--hp", "normalize_advantage=maybe"], tmp_path)
    assert code == 2 and "normalize_advantage must be true or false" in out and "yes, no" in out
    code, out, _ = _cli(["--help-hp", "--algo", "trpo", "--hp", "max_kl=abc"], tmp_path)
    assert code == 2 and "max_kl must be a number, got 'abc'" in out


# ----------------------------------------------------------------------------- 3, 5. sizes from a flag or a file
@pytest.mark.slow
def test_a_huge_n_steps_on_the_cli_is_refused_at_once(tmp_path):
    code, out, seconds = _cli(["--algo", "ppo", "--hp", "n_steps=99999999999999", "--logdir", "runs"], tmp_path)
    assert code == 2 and "n_steps * n_envs" in out and "accepted: at most" in out
    assert seconds < 60  # listing the divisors took minutes


def test_a_huge_n_steps_is_refused_at_once_in_the_api_and_in_a_model_file(tmp_path):
    start = time.perf_counter()
    with pytest.raises(ValueError, match="transitions per rollout"):
        PPO("MlpPolicy", "CartPole-v1", n_steps=99999999999999, batch_size=64)
    with pytest.raises(ValueError, match="batch_size=64 does not divide"):  # within the bound: its divisors, at once
        PPO("MlpPolicy", "CartPole-v1", n_steps=2**34 + 1, batch_size=64)
    assert time.perf_counter() - start < 5
    path = PPO("MlpPolicy", "CartPole-v1", **SMALL).save(tmp_path / "model")
    edited = _rewrite(path, tmp_path / "huge.safetensors",
                      description=lambda d: d["hyperparameters"].update(n_steps=99999999999999))
    start = time.perf_counter()
    with pytest.raises(ModelFileError, match="n_steps"):
        PPO.load(edited, env="CartPole-v1")
    assert time.perf_counter() - start < 5


def test_a_batch_size_check_on_a_large_prime_rollout_is_instant():
    from agents.config import nearest_divisors

    start = time.perf_counter()
    assert nearest_divisors(2**31 - 1, 64) == [1, 2**31 - 1]  # a prime: only its trivial divisors
    brute = sorted(sorted((d for d in range(1, 4001) if 4000 % d == 0), key=lambda d: (abs(d - 64), d))[:8])
    assert nearest_divisors(4000, 64) == brute == [16, 20, 25, 32, 40, 50, 80, 100]
    assert time.perf_counter() - start < 1


def test_a_rollout_buffer_larger_than_memory_is_refused_in_the_api(monkeypatch):
    from rlgeom.data import buffer

    sizes = (100, 3, (4,), torch.float32, (), torch.int64, torch.device("cpu"))
    real = buffer.RolloutBuffer(*sizes)  # the estimate is the bytes a real buffer of these sizes holds
    assert buffer.RolloutBuffer.check_fits(*sizes) == sum(
        t.numel() * t.element_size() for t in vars(real).values() if isinstance(t, torch.Tensor))
    monkeypatch.setattr(buffer, "available_memory", lambda device: (2**20, "this test's machine"))
    with pytest.raises(ValueError, match=r"n_steps=65,536 x n_envs=1 asks for a rollout buffer of [\d,]+ "
                                         r"bytes .* this test's machine has 1,048,576 bytes"):
        PPO("MlpPolicy", "CartPole-v1", n_steps=2**16, batch_size=64)
    PPO("MlpPolicy", "CartPole-v1", n_steps=2**10, batch_size=64)  # about 78 KB: fits


@pytest.mark.slow
def test_a_rollout_buffer_larger_than_memory_is_refused_before_allocating(tmp_path):
    code, out, _ = _cli(["--algo", "ppo", "--n-envs", "1", "--hp", "n_steps=1099511627776", "batch_size=64",
                         "--logdir", "runs"], tmp_path)
    assert code == 2
    assert "asks for a rollout buffer of" in out and "bytes" in out and "available" in out
    code, out, _ = _cli(["--algo", "ppo", "--hp", "n_steps=1099511627776", "batch_size=64", "--logdir", "runs"],
                        tmp_path)
    assert code == 2 and "transitions per rollout" in out  # 8 envs: beyond the bound on n_steps * n_envs


# ----------------------------------------------------------------------------- 4. how many envs a file may ask for
def test_a_model_file_asking_for_65536_envs_is_refused_before_any_env_is_built(tmp_path):
    path = PPO("MlpPolicy", "CartPole-v1", **SMALL).save(tmp_path / "model")
    edited = _rewrite(path, tmp_path / "many.safetensors", description=lambda d: d.update(n_envs=65536))
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(ModelFileError, match=r"n_envs=65536 .* accepted: at most 1024 from an env id"):
        PPO.load(edited, env="CartPole-v1")
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    assert time.perf_counter() - start < 5 and peak < 32
    assert PPO.load(edited).n_envs == 65536  # without env= nothing is built: the count is only a record


# ----------------------------------------------------------------------------- 6. every saved state validated
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Checkpoints of a PPO with observation and reward normalisation, and of an ACKTR (K-FAC state)."""
    folder = tmp_path_factory.mktemp("states")
    ppo = PPO("MlpPolicy", "CartPole-v1", seed=0, normalize_observations=True, normalize_reward=True, **SMALL)
    ppo.learn(64)
    acktr = ACKTR("MlpPolicy", "CartPole-v1", seed=0, n_steps=8)
    acktr.learn(32)
    return {"ppo": ppo.save_checkpoint(folder / "ppo"), "acktr": acktr.save_checkpoint(folder / "acktr")}


def _set(key, value):
    def edit(data):
        data[key] = torch.full_like(data[key], value)
    return edit


def _first(data, suffix):
    return next(k for k in sorted(data) if k.endswith(suffix))


def _set_first(suffix, value, where=None):
    def edit(data):
        key = _first(data, suffix)
        t = data[key].clone()
        t.view(-1)[0] = value if where is None else t.view(-1)[0]
        if where is not None:
            t[where] = value
        data[key] = t
    return edit


STATE_CASES = {
    "observation normaliser variance -1": ("ppo", _set("policy.obs_normalizer.var", -1.0), "obs_normalizer.var"),
    "observation normaliser count -5": ("ppo", _set("policy.obs_normalizer.count", -5.0), "obs_normalizer.count"),
    "observation normaliser mean NaN": ("ppo", _set("policy.obs_normalizer.mean", float("nan")), "obs_normalizer.mean"),
    # found probing: finite in float64, inf in the float32 the policy uses (every observation normalised to 0)
    "observation normaliser variance 1e300": ("ppo", _set("policy.obs_normalizer.var", 1e300), "obs_normalizer.var"),
    "reward scaler variance 1e300": ("ppo", _set("extra/reward_scaler/return_stats.var", 1e300), "return_stats.var"),
    "Adam exp_avg NaN": ("ppo", _set_first("exp_avg", float("nan")), "exp_avg"),
    "Adam exp_avg_sq negative": ("ppo", _set_first("exp_avg_sq", -1.0), "exp_avg_sq"),
    "Adam step negative": ("ppo", _set_first("/step", -3.0), "step"),
    "reward scaler variance NaN": ("ppo", _set("extra/reward_scaler/return_stats.var", float("nan")),
                                   "return_stats.var"),
    "reward scaler count negative": ("ppo", _set("extra/reward_scaler/return_stats.count", -1.0),
                                     "return_stats.count"),
    "running return inf": ("ppo", _set("extra/reward_scaler_running_return", float("inf")), "running_return"),
    "K-FAC factor NaN": ("acktr", _set_first(".A", float("nan")), ".A"),
    "K-FAC factor negative diagonal": ("acktr", _set_first(".G", -1.0), ".G"),
    "K-FAC factor asymmetric": ("acktr", _set_first(".G", 5.0, where=(0, 1)), ".G"),
    "K-FAC eigenvalue negative": ("acktr", _set_first(".d_A", -1.0), ".d_A"),
    "K-FAC pi zero": ("acktr", _set_first(".pi", 0.0), ".pi"),
    "SGD momentum buffer inf": ("acktr", _set_first("momentum_buffer", float("inf")), "momentum_buffer"),
}


@pytest.mark.parametrize("case", sorted(STATE_CASES))
def test_a_saved_state_out_of_its_range_is_refused_naming_the_tensor(case, checkpoints, tmp_path):
    algo, edit, named = STATE_CASES[case]
    cls = PPO if algo == "ppo" else ACKTR
    edited = _rewrite(checkpoints[algo], tmp_path / "edited.safetensors", tensors=edit)
    with pytest.raises(ModelFileError, match="saved tensor") as err:
        cls.load(edited, env="CartPole-v1")
    assert named in str(err.value)


JSON_CASES = {
    "K-FAC counter negative": ("acktr", lambda d: d["extra_state"]["kfac"]["meta"].update(steps=-4), "meta.steps"),
    "Adam eps negative": ("ppo", lambda d: d["checkpoint"]["state"]["optimizers"]["optimizer"]["param_groups"][0]
                          .update(eps=-1e-5), "param_groups.0.eps"),
    "Adam betas NaN": ("ppo", lambda d: d["checkpoint"]["state"]["optimizers"]["optimizer"]["param_groups"][0]
                       .update(betas=[float("nan"), 0.999]), "betas"),
    "ACKTR lr multiplier 0": ("acktr", lambda d: d["extra_state"].update(lr_multiplier=0.0), "lr_multiplier"),
    "ACKTR trust-region count -1": ("acktr", lambda d: d["extra_state"].update(trust_region_bound=-1),
                                    "trust_region_bound"),
    "a bool hyperparameter stored as 'no'": ("ppo", lambda d: d["hyperparameters"].update(normalize_advantage="no"),
                                             "normalize_advantage must be True or False"),
}


@pytest.mark.parametrize("case", sorted(JSON_CASES))
def test_a_saved_setting_or_counter_out_of_its_range_is_refused_naming_it(case, checkpoints, tmp_path):
    algo, edit, named = JSON_CASES[case]
    cls = PPO if algo == "ppo" else ACKTR
    edited = _rewrite(checkpoints[algo], tmp_path / "edited.safetensors", description=edit)
    with pytest.raises(ModelFileError, match=named.replace(".", r"\.")):
        cls.load(edited, env="CartPole-v1")


def test_set_parameters_checks_the_statistics_a_state_dict_carries():
    agent = PPO("MlpPolicy", "CartPole-v1", normalize_observations=True, **SMALL)
    params = agent.get_parameters()
    params["policy"]["obs_normalizer.var"] = torch.full_like(params["policy"]["obs_normalizer.var"], -1.0)
    with pytest.raises(ValueError, match="'obs_normalizer.var' is never negative"):
        agent.set_parameters(params)


def test_valid_checkpoints_still_load_and_resume(checkpoints):
    PPO.load(checkpoints["ppo"], env="CartPole-v1").learn(32, reset_num_timesteps=False)
    ACKTR.load(checkpoints["acktr"], env="CartPole-v1").learn(16, reset_num_timesteps=False)


def test_a_last_rollout_past_the_target_never_gives_a_negative_learning_rate():
    agent = PPO("MlpPolicy", "CartPole-v1", n_envs=3, n_steps=16, batch_size=48, n_epochs=1,
                learning_rate={"kind": "linear", "start": 1e-3, "end": 0.0})
    agent.learn(100)  # 3 rollouts of 48 steps: the last ends at 144, past 100
    assert agent.optimizer.param_groups[0]["lr"] >= 0


# ----------------------------------------------------------------------------- 7. load while another process saves
WRITER = textwrap.dedent('''
    import sys, time
    import torch
    torch.set_num_threads(1)
    from agents import PPO
    models = [PPO("MlpPolicy", "CartPole-v1", seed=s, n_steps=32, batch_size=32) for s in range(2)]
    print("ready", flush=True)
    end = time.time() + float(sys.argv[2])
    i = 0
    while time.time() < end:
        models[i % 2].save(sys.argv[1])  # atomic: temporary file, fsync, rename
        i += 1
''')


@pytest.mark.slow
def test_load_while_another_process_resaves_the_same_path(tmp_path):
    path = PPO("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32).save(tmp_path / "model")
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, path, "30"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        failures = []
        for _ in range(40):
            try:
                PPO.load(path)
            except ModelFileError as err:
                failures.append(str(err))
    finally:
        writer.kill()
        writer.wait()
    assert failures == []


def test_the_header_and_tensors_come_from_one_open_file(tmp_path):
    """The path replaced between the header and the tensors (as a writer's rename does): the version whose
    header was read is the one whose tensors come back."""
    from rlgeom.persistence.modelfile import open_model

    first = PPO("MlpPolicy", "CartPole-v1", seed=0).save(tmp_path / "a")
    second = PPO("MlpPolicy", "CartPole-v1", seed=1).save(tmp_path / "b")
    expected = load_file(first)
    with open_model(first) as model:
        os.replace(second, first)
        tensors = model.tensors()  # before: the second version's tensors against the first's checksum
    assert all(torch.equal(tensors[k], v) for k, v in expected.items())


# ----------------------------------------------------------------------------- 8. resume with another --n-envs
@pytest.mark.slow
def test_resume_with_another_n_envs_honours_it_or_refuses_clearly(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the CLI in this process: what is tested is the resume, not the process
    run = ["--algo", "ppo", "--env", "CartPole-v1", "--hp", "n_steps=16", "batch_size=16", "n_epochs=1",
           "--no-progress", "--eval-episodes", "1", "--logdir", "runs", "--checkpoint-every", "128"]
    assert _main([*run, "--n-envs", "8", "--timesteps", "128"], capsys)[0] == 0
    code, out = _main([*run, "--n-envs", "3", "--timesteps", "256", "--resume", "latest"], capsys)
    assert code == 0 and "resuming with --n-envs 3 instead of the checkpoint's 8" in out
    newest = ckpt.list_checkpoints(tmp_path / "runs" / "CartPole-v1" / "ppo" / "seed0" / "checkpoints")[-1][1]
    assert PPO.load(newest).n_envs == 3
    run[run.index("batch_size=16")] = "batch_size=32"
    code, out = _main([*run, "--n-envs", "5", "--timesteps", "512", "--resume", "latest"], capsys)
    assert code == 2 and "batch_size=32 does not divide the rollout size n_steps * n_envs (80)" in out
    assert "does not load with the hyperparameters given (batch_size" in out


# ----------------------------------------------------------------------------- 9. every update skipped
def test_an_env_reward_of_3e38_is_reported_as_each_update_is_skipped(hostile, tmp_path):
    with pytest.warns(SkippedUpdateWarning, match="update skipped .*returns / advantages of the rollout"):
        agent = PPO("MlpPolicy", "HugeReward-v0", tensorboard_log=str(tmp_path), **SMALL)
        agent.learn(64)
    assert agent.n_updates == 0 and agent.skipped_updates == 2
    assert "every update of this learn() call (2) was skipped" in agent.untrained_reason
    agent.logger.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(agent._run_dir)
    events.Reload()
    assert [e.value for e in events.Scalars("train/skipped_updates")] == [1, 2]


def test_the_cli_does_not_exit_0_when_every_update_was_skipped(hostile, tmp_path, capsys):
    code, out = _main(["--algo", "ppo", "--env", "HugeReward-v0", "--n-envs", "1", "--timesteps", "64", "--hp",
                       "n_steps=32", "batch_size=32", "--no-progress", "--eval-episodes", "1", "--logdir",
                       str(tmp_path)], capsys)
    assert code == 1 and "every update of this learn() call (2) was skipped" in out


@pytest.mark.slow
def test_an_env_reward_of_3e38_makes_the_cli_process_exit_1_naming_the_cause(hostile, tmp_path):
    code, out, _ = _cli(["--algo", "ppo", "--env", "HugeReward-v0", "--gym-packages", "hostile_envs", "--n-envs", "1",
                         "--timesteps", "64", "--hp", "n_steps=32", "batch_size=32", "--no-progress",
                         "--eval-episodes", "1", "--logdir", "runs"], tmp_path, extra_path=hostile)
    assert code == 1
    assert "every update of this learn() call (2) was skipped" in out and "overflow float32" in out
    assert "SkippedUpdateWarning: step 32: update skipped" in out


def test_a_run_without_skips_warns_nothing():
    agent = PPO("MlpPolicy", "CartPole-v1", **SMALL)
    agent.learn(32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedUpdateWarning)
        agent.learn(32, reset_num_timesteps=False)
    assert agent.untrained_reason is None


# ----------------------------------------------------------------------------- 14, 15. ACKTR on huge observations
def test_acktr_on_observations_of_3e38_skips_naming_the_overflow_instead_of_a_runtime_error(hostile):
    agent = ACKTR("MlpPolicy", "HugeObs-v0", n_steps=16, max_consecutive_skips=2)
    with pytest.warns(SkippedUpdateWarning, match="K-FAC statistics of .*actor.body.0"), \
            pytest.raises(TrainingDivergedError, match="2 consecutive updates were skipped because of non-finite "
                                                       "K-FAC"):
        agent.learn(64)


def test_overflowing_float64_observations_count_as_non_finite(hostile):
    from envs.boundary import NonFiniteEnvError

    with pytest.raises(NonFiniteEnvError, match="beyond float32"):
        ACKTR("MlpPolicy", "OverflowObs-v0", n_steps=16).learn(32)
    agent = ACKTR("MlpPolicy", "OverflowObs-v0", n_steps=16, nonfinite="sanitize")
    agent.learn(32)
    assert agent.n_updates == 2 and agent._nonfinite.counts["observation"] > 0


@pytest.mark.slow
def test_nonfinite_sanitize_holds_for_the_final_evaluation_too(hostile, tmp_path):
    code, out, _ = _cli(["--algo", "acktr", "--env", "OverflowObs-v0", "--gym-packages", "hostile_envs",
                         "--nonfinite", "sanitize", "--n-envs", "1", "--timesteps", "64", "--hp", "n_steps=16",
                         "--no-progress", "--eval-episodes", "1", "--logdir", "runs"], tmp_path, extra_path=hostile)
    assert code == 0, out
    assert "eval return 20.0" in out


# ----------------------------------------------------------------------------- 10, 11. what predict accepts
@pytest.fixture(scope="module")
def cartpole():
    return PPO("MlpPolicy", "CartPole-v1", seed=0, **SMALL)


@pytest.mark.parametrize("observation, message", [
    (np.array([None, 1, 2, 3]), "dtype object .*None"),
    (np.array([1e300, 0.0, 0.0, 0.0]), "beyond float32's range"),
    (np.array(["a", "b", "c", "d"]), "dtype <U1"),
    ({"obs": np.zeros(4)}, "is a dict"),
    ([[0.0, 0.0], [0.0]], "not a rectangular array"),
    (np.array([1 + 1j, 0, 0, 0]), "complex"),
])
def test_predict_refuses_what_is_not_a_finite_observation(cartpole, observation, message):
    with pytest.raises(ValueError, match=message):
        cartpole.predict(observation)


def test_predict_takes_integer_and_float64_observations_within_float32(cartpole):
    a, _ = cartpole.predict(np.array([1, 0, 0, 0], dtype=np.int64))
    b, _ = cartpole.predict(np.array([1.0, 0, 0, 0]))
    assert a == b


@pytest.mark.parametrize("space, observation, message", [
    (spaces.Discrete(5), 7, "takes whole numbers from 0 to 4; got values from 7 to 7"),
    (spaces.Discrete(5), -1, "from -1 to -1"),
    (spaces.Discrete(5), 2.5, "not all whole numbers"),
    (spaces.Discrete(3, start=-1), np.array([2, 3]), "from -1 to 1; got values from 2 to 3"),
    (spaces.MultiDiscrete([3, 4]), np.array([5, 9]), r"per entry: \[0 0\] to \[2 3\]"),
    (spaces.MultiBinary(3), np.array([0, 2, 1]), "from 0 to 1; got values from 0 to 2"),
])
def test_predict_refuses_a_category_outside_its_space(space, observation, message):
    """Found while probing: out of range, a Discrete observation failed inside torch's one_hot (a raw
    RuntimeError); 2.5 was truncated to 2 and acted on."""
    policy = ActorCriticPolicy(space, spaces.Discrete(2), "MlpPolicy")
    with pytest.raises(ValueError, match=message):
        policy.predict(observation)
    policy.predict(np.asarray(space.sample()))


@pytest.fixture(scope="module")
def image_policy():
    return ActorCriticPolicy(spaces.Box(0, 255, (3, 36, 36), np.uint8), spaces.Discrete(2), "CnnPolicy")


@pytest.mark.parametrize("observation, message", [
    (np.full((3, 36, 36), 300, np.int64), "got int64 values from 300 to 300"),
    (np.full((3, 36, 36), -1, np.int64), "from -1 to -1"),
    (np.full((3, 36, 36), 0.5), "multiplied by 255"),
    (np.full((3, 36, 36), np.nan), "multiplied by 255"),
])
def test_cnn_predict_refuses_what_is_not_a_uint8_image(image_policy, observation, message):
    with pytest.raises(ValueError, match=message):
        image_policy.predict(observation)


def test_cnn_predict_takes_whole_numbers_of_any_dtype_as_the_same_image(image_policy):
    pixels = np.random.default_rng(0).integers(0, 256, (3, 36, 36))
    expected, _ = image_policy.predict(pixels.astype(np.uint8), deterministic=True)
    for dtype in (np.int64, np.float64, np.float32):
        assert image_policy.predict(pixels.astype(dtype), deterministic=True)[0] == expected


def test_dict_predict_checks_each_key_against_its_own_space():
    policy = ActorCriticPolicy(spaces.Dict({"img": spaces.Box(0, 255, (4,), np.uint8), "x": spaces.Box(-1, 1, (2,))}),
                               spaces.Discrete(2), "MultiInputPolicy")
    with pytest.raises(ValueError, match=r"observation\['img'\].*300"):
        policy.predict({"img": np.array([300, 0, 0, 0]), "x": np.zeros(2)})
    with pytest.raises(ValueError, match=r"observation\['x'\] is an array of dtype object"):
        policy.predict({"img": np.zeros(4, np.uint8), "x": np.array([None, 1])})
    with pytest.raises(ValueError, match=r"observation\['x'\] contains NaN or inf"):
        policy.predict({"img": np.zeros(4, np.uint8), "x": np.array([1e300, 0])})
    policy.predict({"img": np.zeros(4, np.uint8), "x": np.zeros(2)})
