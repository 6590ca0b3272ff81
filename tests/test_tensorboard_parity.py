"""TensorBoard parity with SB3: SB3's PPO and A2C and rlgeom's PPO and VPG write into one logdir, and every
tag SB3 writes for a quantity rlgeom also computes is written by rlgeom under the same name, so the curves
share TensorBoard's cards. The console-only tags (SB3's exclude="tensorboard") are checked on the logger."""

import glob
import os

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents import PPO, VPG

#: SB3's A2C calls the policy-gradient loss train/policy_loss; rlgeom names one quantity once (SB3 PPO's name)
A2C_TO_RLGEOM = {"train/policy_loss": "train/policy_gradient_loss"}
#: what SB3 prints but keeps out of TensorBoard (exclude="tensorboard" in SB3's dump_logs and PPO.train)
CONSOLE_ONLY = ("time/iterations", "time/time_elapsed", "time/total_timesteps")


def scalar_tags(run_dir: str) -> set[str]:
    events = EventAccumulator(run_dir)
    events.Reload()
    return set(events.Tags()["scalars"])


def run_dirs(root) -> dict[str, str]:
    dirs = {os.path.dirname(p) for p in glob.glob(f"{root}/**/events.out.tfevents.*", recursive=True)}
    return {os.path.relpath(d, root): d for d in dirs}


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    import stable_baselines3 as sb3

    root = str(tmp_path_factory.mktemp("tb"))
    common = dict(seed=0, device="cpu", tensorboard_log=root)
    steps = 256  # past Pendulum's 200-step episodes, so rollout/ep_rew_mean is written
    sb3.PPO("MlpPolicy", "Pendulum-v1", n_steps=128, batch_size=64, n_epochs=1, **common).learn(steps, tb_log_name="sb3_ppo")
    sb3.A2C("MlpPolicy", "Pendulum-v1", n_steps=64, **common).learn(steps, tb_log_name="sb3_a2c", log_interval=1)
    PPO("MlpPolicy", "Pendulum-v1", n_steps=128, batch_size=64, n_epochs=1, **common).learn(steps)
    VPG("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=64, **common).learn(steps)
    return root


@pytest.mark.parametrize("sb3_run,rlgeom_run,renamed", [
    ("sb3_ppo_1", "Pendulum-v1/ppo/seed0", {}),
    ("sb3_a2c_1", "Pendulum-v1/vpg/seed0", A2C_TO_RLGEOM),
])
def test_every_sb3_tag_has_its_rlgeom_twin(logdir, sb3_run, rlgeom_run, renamed):
    runs = run_dirs(logdir)
    sb3_tags = scalar_tags(runs[sb3_run])
    assert {"rollout/ep_rew_mean", "time/fps", "train/std", "train/value_loss"} <= sb3_tags  # the check has teeth
    expected = {renamed.get(tag, tag) for tag in sb3_tags}
    missing = expected - scalar_tags(runs[rlgeom_run])
    assert not missing, f"{rlgeom_run} lacks SB3's tags {sorted(missing)}"


def test_train_std_is_the_policy_sigma_and_console_tags_follow_sb3(monkeypatch):
    from rlgeom.persistence.logger import RunLogger

    model = PPO("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu",
                policy_kwargs=dict(log_std_init=-1.0))
    seen, excluded = {}, set()
    monkeypatch.setattr(RunLogger, "dump", lambda self, step=0: (seen.update(self.name_to_value),  # one dump's
                                                                 excluded.update(self._excluded)))
    model.learn(64)
    assert seen["train/std"] == pytest.approx(float(model.policy.actor.scale().detach().exp().mean()), rel=1e-6)
    assert seen["train/std"] == pytest.approx(0.3679, abs=0.01)  # exp(-1), one small update later
    assert seen["time/iterations"] == 1 and seen["time/total_timesteps"] == 64 and seen["time/time_elapsed"] >= 0
    assert set(CONSOLE_ONLY) <= excluded
