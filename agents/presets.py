"""Tuned per-task presets: data only, each with the source it came from.

`preset(algo, env_id)` returns {"n_envs", "timesteps", "policy", "policy_kwargs",
"hyperparameters", "source"}: the task's entry if there is one, else the family's (MuJoCo,
Atari), else the agent's defaults. `rlgeom.zoo` in a source means rl-baselines3-zoo's
hyperparams/<algo>.yml; its `normalize: true` (VecNormalize) maps to normalize_observations and
normalize_reward. gSDE (`use_sde`) has no rlgeom counterpart and is left out.
"""

from __future__ import annotations

import copy

DEFAULT_ENV = "CartPole-v1"
MUJOCO_TASKS = (
    "Hopper-v5", "HalfCheetah-v5", "Walker2d-v5", "Ant-v5", "Swimmer-v5", "InvertedPendulum-v5",
    "InvertedDoublePendulum-v5", "Humanoid-v5", "Reacher-v5",
)
NORMALIZE = {"normalize_observations": True, "normalize_reward": True}
TRPO_MUJOCO = {**NORMALIZE, "batch_size": 128, "n_steps": 1024, "gamma": 0.99, "gae_lambda": 0.95,
               "sub_sampling_factor": 1, "cg_max_steps": 25, "cg_damping": 0.1, "n_critic_updates": 20,
               "learning_rate": 1e-3}
# sb3-contrib's TRPO averages the KL over the action dimensions as well as the batch, so its
# target_kl and cg_damping are the true KL radius and damping divided by the action dimension k
# (measured: experiments/RESULTS_trpo.md reproduces its step exactly with both multiplied by k).
# rlgeom's KL is the true KL(π_old ‖ π_new): the zoo's values are translated per task.
KL_NOTE = "target_kl and cg_damping × action dim (sb3-contrib averages KL over action dims)"
ACTION_DIMS = {"Hopper-v5": 3, "HalfCheetah-v5": 6, "Walker2d-v5": 6, "Ant-v5": 8, "Swimmer-v5": 2}
ZOO_TARGET_KL = {"HalfCheetah-v5": 0.04}  # the zoo's per-task override; 0.01 elsewhere


def zoo_trpo_mujoco(task: str) -> dict:
    k = ACTION_DIMS[task]
    return {**TRPO_MUJOCO, "max_kl": round(ZOO_TARGET_KL.get(task, 0.01) * k, 6),
            "cg_damping": round(TRPO_MUJOCO["cg_damping"] * k, 6)}


ZOO_MUJOCO_NET = {"log_std_init": -2.0, "ortho_init": False, "activation_fn": "relu",
                  "net_arch": {"pi": [256, 256], "vf": [256, 256]}}


# ACKTR on MuJoCo (issue 29, experiments/acktr/RESULTS.md §0.11-0.12). baselines' continuous-control settings (running
# K-FAC factors, stat_decay 0.99, steps sized by a desired_kl of 0.002) left the trust region unbound: those factors
# under-predicted the measured KL 15-90x, and σ barely moved. Here K-FAC takes NPG's setup (a 64-64 tanh network,
# GAE 0.95, no momentum) with the statistics of each batch alone (stat_decay 0, inverted every update), the critic
# fitted in 25 K-FAC passes per batch at its own lr (acktr_cont's value function), and every policy step rescaled
# to spend kl_clip as measured on its batch (policy_step="measured"), the radius TRPO's preset takes on the task.
ACKTR_MUJOCO = {**NORMALIZE, "ent_coef": 0.0, "learning_rate": 0.2, "n_steps": 2048, "max_grad_norm": 10.0,
                "vf_coef": 0.5, "trust_region": "per_network", "gae_lambda": 0.95, "critic_step": "own",
                "critic_updates": 25, "momentum": 0.0, "stat_decay": 0.0, "update_inverse_every": 1,
                "policy_step": "measured", "target_kl": None}
ACKTR_MUJOCO_SOURCE = ("rlgeom's ACKTR MuJoCo setup (experiments/acktr/RESULTS.md §0.12: chosen on seeds 100-102 at "
                       "300k, lr 0.2 and max_grad_norm 10 from zoo1 acktr.yml HalfCheetah-v2, the critic's 25 passes "
                       "from openai/baselines acktr_cont)")


PPO_PAPER_MUJOCO = ("the PPO paper's MuJoCo settings (SB3 PPO defaults: 2048 steps, 10 epochs of 64, lr 3e-4) + "
                    "normalize, as rl-zoo ppo.yml's mujoco defaults and CleanRL's ppo_continuous_action; the zoo's "
                    "v3 entry fails on v5 (experiments/RESULTS_grid_1m.md)")


def _p(n_envs, timesteps, hyperparameters, source, policy="MlpPolicy", policy_kwargs=None):
    return {"n_envs": n_envs, "timesteps": int(timesteps), "policy": policy,
            "policy_kwargs": policy_kwargs or {}, "hyperparameters": hyperparameters, "source": source}


PRESETS: dict[str, dict[str, dict]] = {
    "ppo": {
        "default": _p(1, 1e6, {}, "SB3 PPO defaults (the paper's MuJoCo settings)"),
        "CartPole-v1": _p(8, 1e5, {
            "n_steps": 32, "batch_size": 256, "gae_lambda": 0.8, "gamma": 0.98, "n_epochs": 20, "ent_coef": 0.0,
            "learning_rate": {"kind": "linear", "start": 1e-3, "end": 0.0},
            "clip_range": {"kind": "linear", "start": 0.2, "end": 0.0}}, "rl-zoo ppo.yml CartPole-v1"),
        "Pendulum-v1": _p(4, 1e5, {
            "n_steps": 1024, "gae_lambda": 0.95, "gamma": 0.9, "n_epochs": 10, "ent_coef": 0.0,
            "learning_rate": 1e-3, "clip_range": 0.2}, "rl-zoo ppo.yml Pendulum-v1 (without gSDE)"),
        "Acrobot-v1": _p(16, 1e6, {
            **NORMALIZE, "n_steps": 256, "gae_lambda": 0.94, "gamma": 0.99, "n_epochs": 4, "ent_coef": 0.0},
            "rl-zoo ppo.yml Acrobot-v1"),
        "MountainCarContinuous-v0": _p(1, 2e4, {
            **NORMALIZE, "batch_size": 256, "n_steps": 8 * 32, "gamma": 0.9999, "learning_rate": 7.77e-5,
            "ent_coef": 0.00429, "clip_range": 0.1, "n_epochs": 10, "gae_lambda": 0.9, "max_grad_norm": 5.0,
            "vf_coef": 0.19}, "rl-zoo ppo.yml MountainCarContinuous-v0 (without gSDE; n_steps 256, not 8)",
            policy_kwargs={"log_std_init": -3.29, "ortho_init": False}),
        # Hopper and Walker2d: the PPO paper's MuJoCo settings, not the zoo's tuned v3 entries. On v5 the
        # zoo's Hopper entry (γ 0.999) stands still at the time limit (return ≈ 1000) on 5 of 5 runs, SB3's and
        # rlgeom's alike, its critic's explained variance negative for most of training (the zoo's own report:
        # rl-baselines3-zoo#376); its Walker2d entry let σ collapse from 0.135 to 0.026 with the return flat at
        # ~550 on its one finished run (experiments/RESULTS_grid_1m.md, "PPO presets").
        "Hopper-v5": _p(1, 1e6, {**NORMALIZE}, PPO_PAPER_MUJOCO),
        "HalfCheetah-v5": _p(1, 1e6, {
            **NORMALIZE, "batch_size": 64, "n_steps": 512, "gamma": 0.98, "learning_rate": 2.0633e-05,
            "ent_coef": 0.000401762, "clip_range": 0.1, "n_epochs": 20, "gae_lambda": 0.92, "max_grad_norm": 0.8,
            "vf_coef": 0.58096}, "rl-zoo ppo.yml HalfCheetah-v3", policy_kwargs=ZOO_MUJOCO_NET),
        "Walker2d-v5": _p(1, 1e6, {**NORMALIZE}, PPO_PAPER_MUJOCO),
        "mujoco": _p(1, 1e6, {**NORMALIZE}, "rl-zoo ppo.yml mujoco defaults (normalize, SB3 PPO defaults)"),
        "atari": _p(8, 1e7, {
            "n_steps": 128, "n_epochs": 4, "batch_size": 256, "vf_coef": 0.5, "ent_coef": 0.01,
            "learning_rate": {"kind": "linear", "start": 2.5e-4, "end": 0.0},
            "clip_range": {"kind": "linear", "start": 0.1, "end": 0.0}}, "rl-zoo ppo.yml atari", policy="CnnPolicy"),
    },
    "trpo": {
        "default": _p(1, 1e6, {}, "sb3-contrib TRPO defaults (δ 0.01, 15 CG steps, damping 0.1)"),
        "CartPole-v1": _p(2, 1e5, {
            "n_steps": 512, "batch_size": 512, "cg_damping": 1e-3, "gae_lambda": 0.98, "gamma": 0.99,
            "learning_rate": 1e-3, "n_critic_updates": 20}, "rl-zoo trpo.yml CartPole-v1"),
        "Pendulum-v1": _p(2, 1e5, {"n_steps": 1024, "gamma": 0.9, "n_critic_updates": 15},
                          "rl-zoo trpo.yml Pendulum-v1 (without gSDE)"),
        "Acrobot-v1": _p(2, 1e5, {**NORMALIZE, "n_steps": 1024}, "rl-zoo trpo.yml Acrobot-v1"),
        "MountainCarContinuous-v0": _p(2, 5e4, {**NORMALIZE}, "rl-zoo trpo.yml MountainCarContinuous-v0 (without gSDE)"),
        **{task: _p(2, 1e6, zoo_trpo_mujoco(task), f"rl-zoo trpo.yml {task.replace('-v5', '-v4')}; {KL_NOTE}")
           for task in ACTION_DIMS},
        # rl-zoo's trpo.yml has no InvertedPendulum entry. The generic MuJoCo values (normalised rewards, 2 × 1024
        # steps, 20 critic epochs) collapse on 1 of 10 unseen seeds at 100k; sb3-contrib's defaults did not on the
        # same ten (experiments/RESULTS_classic_control.md, "The presets on unseen seeds").
        "InvertedPendulum-v5": _p(1, 1e5, {}, "sb3-contrib TRPO defaults (δ 0.01, 1 × 2048 steps, 10 critic "
                                  "epochs, no normalisation): 10/10 seeds at 100k through sb3-contrib, checked "
                                  "with rlgeom's TRPO on unseen seeds 20-29"),
        "mujoco": _p(2, 1e6, TRPO_MUJOCO, "rl-zoo trpo.yml mujoco defaults, untranslated (action dim unknown)"),
    },
    "vpg": {
        "default": _p(1, 1e6, {}, "Spinning Up VPG defaults (pi_lr 3e-4, vf_lr 1e-3, λ 0.97, 4000 steps/epoch)"),
        "CartPole-v1": _p(4, 1e5, {"n_steps": 128, "learning_rate": 3e-3, "batch_size": 128},
                          "rlgeom's tuning (2 seeds × 50k steps each; tried 4×500/3e-3: 50 at 25k; 8×32/1e-3: "
                          "366; 8×64/3e-3: unstable; 4×128/3e-3: ~400, kept): Spinning Up VPG, smaller batches"),
        "mujoco": _p(1, 1e6, {"normalize_observations": True, "learning_rate": 1e-3, "n_steps": 2048, "batch_size": 128},
                     "Spinning Up VPG (GAE λ 0.97 critic, vf_lr 1e-3) + observation normalisation, with Tianshou's "
                     "REINFORCE MuJoCo step (examples/mujoco/mujoco_reinforce.py: lr 1e-3, 2048 steps per update); "
                     "Spinning Up's 3e-4 × 4000 moves the policy ~1e-5 nats per update on HalfCheetah, which ends "
                     "at −46 to −76 at 1M, below a cheetah standing still (experiments/RESULTS_grid_1m.md, "
                     "\"VPG on MuJoCo\")"),
    },
    # ACKTR: defaults = the paper's Atari settings via openai/baselines (agents/acktr.py lists each source);
    # "zoo1" = rl-baselines-zoo (SB2) hyperparams/acktr.yml, whose `normalize: true` maps to NORMALIZE.
    "acktr": {
        "default": _p(8, 1e6, {}, "ACKTR paper / baselines defaults (lr 0.25, momentum 0.9, kl_clip 1e-3, n_steps 20)"),
        "CartPole-v1": _p(8, 1e5, {"ent_coef": 0.0, "learning_rate": {"kind": "linear", "start": 0.25, "end": 0.0}},
                          "zoo1 acktr.yml CartPole-v1 (n_envs 8, ent_coef 0) + baselines' linear lr decay "
                          "(3/3 seeds reach 475 with it; constant 0.25 collapsed before the lr·(1-m) fix and "
                          "reached 500 on the one seed tried after it: experiments/acktr/RESULTS.md)"),
        "Acrobot-v1": _p(16, 5e5, {**NORMALIZE, "ent_coef": 0.0}, "zoo1 acktr.yml Acrobot-v1"),
        "Pendulum-v1": _p(4, 2e6, {"ent_coef": 0.0, "n_steps": 16, "learning_rate": 0.06},
                          "zoo1 acktr.yml Pendulum-v0"),
        "MountainCarContinuous-v0": _p(16, 3e5, {**NORMALIZE, "ent_coef": 0.0}, "zoo1 acktr.yml MountainCarContinuous-v0"),
        **{task: _p(1, 1e6, {**ACKTR_MUJOCO, "kl_clip": zoo_trpo_mujoco(task)["max_kl"]},
                    f"{ACKTR_MUJOCO_SOURCE}; kl_clip = TRPO's max_kl here ({KL_NOTE})",
                    policy_kwargs={"net_arch": [64, 64]})
           for task in ACTION_DIMS},
        "mujoco": _p(1, 1e6, {**ACKTR_MUJOCO, "kl_clip": 0.06},
                     f"{ACKTR_MUJOCO_SOURCE}; kl_clip 0.06 (TRPO's Walker2d max_kl; 0.03-0.24 did alike on the "
                     "three tasks at 300k)", policy_kwargs={"net_arch": [64, 64]}),
        "atari": _p(32, 1e7, {"learning_rate": {"kind": "linear", "start": 0.25, "end": 0.0}},
                    "ACKTR paper / baselines run_atari (32 envs, lrschedule linear); zoo1 acktr.yml atari",
                    policy="CnnPolicy"),
    },
}


# warp/ ids (envs.warp_mujoco, thousands of GPU-batched worlds): "Learning to Walk in Minutes" (Rudin et al.
# 2021, Table 1 and legged_gym's LeggedRobotCfgPPO): 4096 envs × 24 steps per env = 98,304 steps per update,
# 4 minibatches, 5 epochs, clip 0.2, γ 0.99, λ 0.95, value coefficient 1.0, gradient norm 1.0. Its adaptive
# learning rate (desired KL 0.01) has no rlgeom counterpart: PPO keeps Adam's 3e-4 and stops the epochs at
# target_kl 0.01; its entropy bonus 0.01 (legged robots) is left at the MuJoCo presets' 0. `minibatches`
# sets batch_size = n_steps × n_envs / minibatches for whatever n_envs the run uses (preset(..., n_envs)).
# TRPO/NPG take the same rollout shape with rl-zoo's TRPO values, the critic fitted in 4 minibatches × 5 epochs
# (PPO's 20 gradient steps); ACKTR its task's entry with 24-step rollouts. The 5e7-step budget is a guess to be
# measured on a GPU (experiments/gpu_check_warp.sh).
WARP_TASKS = ("Hopper-v5", "HalfCheetah-v5", "Walker2d-v5", "Swimmer-v5")
RUDIN = "Rudin et al. 2021 'Learning to Walk in Minutes' (4096 envs × 24 steps, 4 minibatches)"
WARP_SHAPE = {**NORMALIZE, "n_steps": 24, "gamma": 0.99, "gae_lambda": 0.95}


def _warp(hyperparameters, source, policy_kwargs=None, minibatches=4):
    entry = _p(4096, 5e7, {**WARP_SHAPE, **hyperparameters}, source, policy_kwargs=policy_kwargs)
    return {**entry, "minibatches": minibatches} if minibatches else entry


for _task in WARP_TASKS:
    PRESETS["ppo"]["warp/" + _task] = _warp(
        {"n_epochs": 5, "clip_range": 0.2, "learning_rate": 3e-4, "vf_coef": 1.0, "max_grad_norm": 1.0,
         "target_kl": 0.01}, f"{RUDIN}; Adam 3e-4 with target_kl 0.01 for its adaptive rate")
    PRESETS["trpo"]["warp/" + _task] = _warp(
        {**{k: v for k, v in zoo_trpo_mujoco(_task).items() if k not in ("n_steps", "batch_size")},
         "n_critic_updates": 5}, f"{RUDIN}'s rollout shape; rl-zoo trpo.yml {_task.replace('-v5', '-v4')}; {KL_NOTE}")
    PRESETS["acktr"]["warp/" + _task] = _warp(  # ACKTR has no minibatches
        {k: v for k, v in PRESETS["acktr"][_task]["hyperparameters"].items() if k != "n_steps"},
        f"{RUDIN}'s rollout shape; rlgeom's ACKTR {_task} entry",
        policy_kwargs=PRESETS["acktr"][_task]["policy_kwargs"], minibatches=None)
    PRESETS["vpg"]["warp/" + _task] = _warp(
        {k: v for k, v in PRESETS["vpg"]["mujoco"]["hyperparameters"].items() if k not in ("n_steps", "batch_size")},
        f"{RUDIN}'s rollout shape; rlgeom's VPG MuJoCo entry")


# NPG has no published presets: it takes TRPO's tuned values (the same direction, no line search).
PRESETS["npg"] = {
    task: {**copy.deepcopy(entry), "source": f"{entry['source']} (TRPO's tuned values, used for NPG)"}
    for task, entry in PRESETS["trpo"].items()
}


def task_family(env_id: str) -> str | None:
    if env_id in MUJOCO_TASKS or env_id.split("-v")[0] in {t.split("-v")[0] for t in MUJOCO_TASKS}:
        return "mujoco"
    if env_id.startswith("ALE/") or "NoFrameskip" in env_id:
        return "atari"
    return None


def preset(algo: str, env_id: str, n_envs: int | None = None, overrides: dict | None = None) -> dict:
    """The preset for (algo, env_id); a torch-native id, or a warp/ id without its own entry, uses its
    Gymnasium twin's preset. An entry that names its `minibatches` gets batch_size = n_steps × n_envs /
    minibatches for `n_envs` (default: the preset's own) and the user's `overrides` of n_steps (an
    override of batch_size itself wins; the caller applies the overrides)."""
    table = PRESETS.get(algo, {})
    key = env_id.split("/", 1)[1] if env_id.startswith(("torch/", "warp/")) else env_id
    entry = (table.get(env_id) or table.get(key) or table.get(task_family(key) or "") or table.get("default")
             or _p(1, 1e6, {}, "agent defaults"))
    entry = copy.deepcopy(entry)
    minibatches = entry.pop("minibatches", None)
    if minibatches:
        hyperparameters = entry["hyperparameters"]
        n_steps = (overrides or {}).get("n_steps", hyperparameters["n_steps"])
        rollout = n_steps * (n_envs or entry["n_envs"])
        hyperparameters["batch_size"] = rollout // minibatches
    return entry
