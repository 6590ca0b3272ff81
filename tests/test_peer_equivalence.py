"""rlgeom's TRPO against sb3-contrib's, and its PPO against SB3's: independent implementations of the same
algorithms.

From the same weights, on the same rollouts, both must compute the same advantages, the same policy
step and the same critic fit: one update, and a short stretch of training in which rlgeom collects every
rollout and the peer is fed the same data. (sb3-contrib averages TRPO's KL over the action dimensions as
well as the batch, so its target_kl and cg_damping are rlgeom's divided by the action dimension k.)
HalfCheetah-v5 with a 40-step time limit: k = 6 and time-limit truncations inside every rollout, the
case where both libraries bootstrap from the value of the final observation. PPO runs with one minibatch
per epoch, so the two libraries' shuffles do not matter, and with the written-out derivatives on and off:
the fast path must give SB3's update too.
"""

import numpy as np
import pytest
import torch

pytest.importorskip("mujoco")
sb3_contrib = pytest.importorskip("sb3_contrib")

from stable_baselines3 import PPO as SB3PPO  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.logger import configure  # noqa: E402

from agents import PPO, TRPO  # noqa: E402

TASK, K, N_ENVS, N_STEPS, TIME_LIMIT = "HalfCheetah-v5", 6, 2, 64, 40
TARGET_KL, DAMPING, CRITIC_LR = 0.02, 0.1, 1e-3
PPO_EPOCHS, PPO_LR = 5, 3e-3  # a step large enough that the ratio clips

# SB3 / sb3-contrib parameter name (their MlpPolicy) -> a function giving rlgeom's tensor of the same role
PAIRS = {
    "mlp_extractor.policy_net.0.weight": lambda p: p.actor.body[0].weight,
    "mlp_extractor.policy_net.0.bias": lambda p: p.actor.body[0].bias,
    "mlp_extractor.policy_net.2.weight": lambda p: p.actor.body[2].weight,
    "mlp_extractor.policy_net.2.bias": lambda p: p.actor.body[2].bias,
    "action_net.weight": lambda p: p.actor.head.weight,
    "action_net.bias": lambda p: p.actor.head.bias,
    "log_std": lambda p: p.actor.scale.raw,
    "mlp_extractor.value_net.0.weight": lambda p: p.critic.body[0].weight,
    "mlp_extractor.value_net.0.bias": lambda p: p.critic.body[0].bias,
    "mlp_extractor.value_net.2.weight": lambda p: p.critic.body[2].weight,
    "mlp_extractor.value_net.2.bias": lambda p: p.critic.body[2].bias,
    "value_net.weight": lambda p: p.critic.head.weight,
    "value_net.bias": lambda p: p.critic.head.bias,
}


def same_start(agent, peer):
    """The peer's starting weights copied into rlgeom's agent; the peer's own env only gives the spaces."""
    peer.set_logger(configure(None, []))  # every rollout comes from rlgeom
    with torch.no_grad():
        state = peer.policy.state_dict()
        for name, ours in PAIRS.items():
            ours(agent.policy).copy_(state[name])
    agent._reset_env()
    return agent, peer


def make_pair(batch_size: int):
    agent = TRPO("MlpPolicy", TASK, n_envs=N_ENVS, seed=0, device="cpu", env_kwargs={"max_episode_steps": TIME_LIMIT},
                 n_steps=N_STEPS, batch_size=batch_size, max_kl=TARGET_KL * K, cg_damping=DAMPING * K,
                 cg_max_steps=15, n_critic_updates=3, learning_rate=CRITIC_LR)
    peer = sb3_contrib.TRPO(
        "MlpPolicy", make_vec_env(TASK, n_envs=N_ENVS), n_steps=N_STEPS, batch_size=batch_size, target_kl=TARGET_KL, cg_damping=DAMPING,
        cg_max_steps=15, n_critic_updates=3, learning_rate=CRITIC_LR, seed=0, device="cpu",
    )
    return same_start(agent, peer)


def make_ppo_pair(written_out_derivatives: bool):
    """PPO with SB3's defaults on both sides (Adam eps 1e-5, clip 0.2, GAE 0.95, per-minibatch advantage
    normalisation, gradient norm 0.5), one minibatch per epoch."""
    common = dict(n_steps=N_STEPS, batch_size=N_STEPS * N_ENVS, n_epochs=PPO_EPOCHS, learning_rate=PPO_LR,
                  seed=0, device="cpu")
    agent = PPO("MlpPolicy", TASK, n_envs=N_ENVS, env_kwargs={"max_episode_steps": TIME_LIMIT},
                written_out_derivatives=written_out_derivatives, **common)
    return same_start(agent, SB3PPO("MlpPolicy", make_vec_env(TASK, n_envs=N_ENVS), **common))


def feed(agent, peer) -> None:
    """Write rlgeom's collected rollout into the peer's buffer the way SB3's collect_rollouts would:
    a time-limit truncation adds γ·V(final observation) to the reward and then ends the episode."""
    buf, rb, gamma = agent.buffer, peer.rollout_buffer, agent.config.gamma
    rb.reset()
    with torch.no_grad():
        final_values = agent.policy.value(buf.next_obs.flatten(0, 1)).reshape(buf.rewards.shape)
        last_values = agent.policy.value(agent._last_obs)
    truncated = buf.dones & ~buf.terminated
    rewards = buf.rewards + gamma * final_values * truncated
    rb.observations[:] = buf.obs.numpy()
    rb.actions[:] = buf.actions.numpy()
    rb.rewards[:] = rewards.numpy()
    rb.episode_starts[:] = buf.episode_starts.numpy()
    rb.values[:] = buf.values.numpy()
    rb.log_probs[:] = buf.log_probs.numpy()
    rb.full, rb.pos = True, N_STEPS
    rb.compute_returns_and_advantage(last_values, buf.dones[-1].numpy())


def collect(agent) -> None:
    agent.collect_rollout()
    assert bool((agent.buffer.dones & ~agent.buffer.terminated).any()), "the rollout should contain truncations"


def max_differences(agent, peer) -> tuple[float, float]:
    """(largest |Δ| over the actor's parameters, over the critic's), rlgeom against the peer."""
    state = peer.policy.state_dict()
    actor = max((PAIRS[n](agent.policy) - state[n]).abs().max().item() for n in PAIRS if "value" not in n)
    critic = max((PAIRS[n](agent.policy) - state[n]).abs().max().item() for n in PAIRS if "value" in n)
    return actor, critic


def one_update(agent, peer):
    """Each library's update on rlgeom's first rollout, after checking both computed the same advantages
    and returns: (rlgeom's statistics, the largest parameter move, the largest actor and critic differences)."""
    collect(agent)
    feed(agent, peer)
    np.testing.assert_allclose(agent.buffer.advantages.numpy(), peer.rollout_buffer.advantages, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(agent.buffer.returns.numpy(), peer.rollout_buffer.returns, rtol=1e-4, atol=1e-5)
    before = {n: PAIRS[n](agent.policy).detach().clone() for n in PAIRS}
    stats = agent.update(agent.buffer, 1.0)
    peer.train()
    moved = max((PAIRS[n](agent.policy) - before[n]).abs().max().item() for n in PAIRS)
    return stats, moved, *max_differences(agent, peer)


def test_same_advantages_and_same_update_as_sb3_contrib():
    agent, peer = make_pair(batch_size=N_STEPS * N_ENVS)  # one critic minibatch: no shuffling difference
    # both sides at their own defaults: the critic's Adam eps is sb3-contrib's (SB3's policy Adam, 1e-5)
    assert agent.critic_optimizer.param_groups[0]["eps"] == peer.policy.optimizer.param_groups[0]["eps"] == 1e-5
    stats, moved, actor_diff, critic_diff = one_update(agent, peer)
    assert stats["geometry/line_search_accepted"] == 1.0
    assert moved > 1e-2  # the update did something, so agreement below means something
    assert actor_diff < 1e-4 * moved and critic_diff < 1e-4 * moved


@pytest.mark.parametrize("written_out_derivatives", [True, False], ids=["written-out", "autograd"])
def test_same_advantages_and_same_update_as_sb3_ppo(written_out_derivatives):
    agent, peer = make_ppo_pair(written_out_derivatives)
    stats, moved, actor_diff, critic_diff = one_update(agent, peer)
    assert stats["train/n_epochs_done"] == PPO_EPOCHS
    assert moved > 0.5 * PPO_EPOCHS * PPO_LR  # Adam moved some weight by ~lr per epoch: agreement means something
    assert actor_diff < 1e-3 * moved and critic_diff < 1e-3 * moved
    # the statistics SB3 logs under the same names mean the same: the losses over every minibatch (the
    # total loss: the last one's), clip_fraction over every epoch, approx_kl over the last one
    logged = peer.logger.name_to_value
    assert stats["train/clip_fraction"] > 0.05  # the clipped branch of the surrogate took part
    for tag in ("train/clip_fraction", "train/approx_kl", "train/policy_gradient_loss", "train/value_loss",
                "train/entropy_loss", "train/loss"):
        np.testing.assert_allclose(stats[tag], logged[tag], rtol=1e-4, atol=1e-6, err_msg=tag)


@pytest.mark.parametrize("make", [lambda: make_pair(batch_size=N_STEPS * N_ENVS), lambda: make_ppo_pair(True)],
                         ids=["trpo-sb3-contrib", "ppo-sb3"])
def test_same_parameters_as_the_peer_over_a_stretch_of_training(make):
    agent, peer = make()
    for _ in range(4):  # rlgeom collects every rollout; both libraries update on it
        collect(agent)
        feed(agent, peer)
        agent.update(agent.buffer, 1.0)
        peer.train()
    actor_diff, critic_diff = max_differences(agent, peer)
    assert actor_diff < 1e-3 and critic_diff < 1e-3
