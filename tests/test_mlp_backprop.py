"""The hand-written backward (rlgeom.mlp_backprop, the policy's *_with_vjp, PPO's loss derivatives)
against autograd, the obviously-correct reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn

from agents import PPO
from rlgeom.mlp_backprop import PlainMLP, tanh
from rlgeom.policies import ActorCriticPolicy, mlp


def _autograd_grads(module_params, loss):
    return torch.autograd.grad(loss, module_params)


@pytest.mark.parametrize("activation", [nn.Tanh, nn.ReLU])
@pytest.mark.parametrize("sizes", [[5, 3], [5, 8, 3], [5, 8, 6, 2]])
def test_plain_mlp_backward_equals_autograd(activation, sizes):
    torch.manual_seed(0)
    body = mlp(sizes[:-1], activation)
    layers = list(body) + [nn.Linear(sizes[-2], sizes[-1])]
    net = nn.Sequential(*layers)
    x, weight = torch.randn(16, sizes[0]), torch.randn(16, sizes[-1])
    plain = PlainMLP.of(layers)
    out, inputs = plain.forward(x)
    torch.testing.assert_close(out, net(x))
    expected = _autograd_grads(list(net.parameters()), (net(x) * weight).sum())
    for p in net.parameters():  # backward adds into an existing gradient, as autograd does
        p.grad = torch.ones_like(p)
    plain.backward(inputs, weight)
    for p, g in zip(net.parameters(), expected):
        torch.testing.assert_close(p.grad, g + 1, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", [nn.Tanh, nn.ReLU])
@pytest.mark.parametrize("sizes", [[5, 3], [5, 8, 3], [5, 8, 6, 2]])
def test_plain_mlp_jvp_equals_forward_mode_autodiff(activation, sizes):
    torch.manual_seed(1)
    layers = list(mlp(sizes[:-1], activation)) + [nn.Linear(sizes[-2], sizes[-1])]
    net = nn.Sequential(*layers).double()
    x = torch.randn(16, sizes[0], dtype=torch.float64)
    plain = PlainMLP.of(layers)
    params = dict(net.named_parameters())
    tangents = {name: torch.randn_like(p) for name, p in params.items()}
    _, expected = torch.func.jvp(lambda ps: torch.func.functional_call(net, ps, (x,)), (params,), (tangents,))
    _, inputs = plain.forward(x)
    by_layer = [(tangents[f"{k}.weight"], tangents[f"{k}.bias"]) for k in range(0, len(layers), 2)]
    torch.testing.assert_close(plain.jvp(inputs, by_layer), expected)


def test_plain_mlp_backward_can_write_into_given_tensors():
    torch.manual_seed(2)
    layers = [nn.Linear(11, 64), nn.Tanh(), nn.Linear(64, 3)]  # 11 -> 64 takes the transposed product
    net = nn.Sequential(*layers)
    x, weight = torch.randn(300, 11), torch.randn(300, 3)
    plain = PlainMLP.of(layers)
    _, inputs = plain.forward(x)
    into = [(torch.zeros_like(m.weight), torch.zeros_like(m.bias)) for m in plain.linears]
    plain.backward(inputs, weight, into=into)
    expected = _autograd_grads(list(net.parameters()), (net(x) * weight).sum())
    for got, want in zip([t for pair in into for t in pair], expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert all(p.grad is None for p in net.parameters())  # nothing went into .grad


def test_tanh_takes_the_sigmoid_form_only_where_it_is_safe():
    x = torch.randn(256, 64) * 3
    before = x.clone()
    fast = tanh(x)
    torch.testing.assert_close(fast, torch.tanh(x), rtol=0, atol=3e-7)
    assert not torch.equal(fast, torch.tanh(x))  # the sigmoid form was taken (it rounds differently)
    assert torch.equal(x, before)  # the input is left as it was
    small = torch.randn(4, 8)
    assert torch.equal(tanh(small), torch.tanh(small))
    leaf = x.clone().requires_grad_()
    y = tanh(leaf)  # autograd differentiates torch.tanh
    assert torch.equal(y, torch.tanh(leaf)) and y.grad_fn is not None


def test_plain_mlp_refuses_what_it_does_not_write_out():
    assert PlainMLP.of([nn.Linear(3, 4), nn.ELU(), nn.Linear(4, 1)]) is None
    assert PlainMLP.of([nn.Linear(3, 4), nn.Tanh()]) is None  # does not end with a Linear
    assert PlainMLP.of([nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1)]) is None


def _policy(action_space, **kw):
    return ActorCriticPolicy(spaces.Box(-np.inf, np.inf, (5,), np.float32), action_space, ortho_init=False, **kw)


@pytest.mark.parametrize(
    "action_space, kw",
    [
        (spaces.Discrete(4), {}),
        (spaces.Discrete(3), {"activation_fn": "relu", "normalize_observations": True}),
        (spaces.Box(-1, 1, (2,), np.float32), {"normalize_observations": True}),
        (spaces.Box(-1, 1, (2,), np.float32), {"scale_parameterisation": "std", "net_arch": {"pi": [8], "vf": [6, 4]}}),
        (spaces.Box(-1, 1, (3,), np.float32), {"scale_parameterisation": "var", "log_std_init": -0.5}),
    ],
)
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_evaluate_actions_with_vjp_equals_autograd(action_space, kw, device):
    """Outputs equal evaluate_actions'; vjp adds what loss.backward() adds, for any output derivatives."""
    torch.manual_seed(0)
    policy = _policy(action_space, **kw).to(device)
    policy.obs_normalizer.update(torch.randn(64, 5, device=device) * 3 + 1)
    obs = torch.randn(32, 5, device=device)
    actions = policy.act(obs)[0].clone()
    log_prob, entropy, values, vjp = policy.evaluate_actions_with_vjp(obs, actions)
    ref = policy.evaluate_actions(obs, actions)
    for ours, theirs in zip((log_prob, entropy, values), ref):
        torch.testing.assert_close(ours, theirs.detach(), rtol=1e-5, atol=1e-6)
    d_lp, d_h, d_v = (torch.randn(32, device=device) for _ in range(3))
    params = list(policy.parameters())
    expected = torch.autograd.grad((ref[0] * d_lp + ref[1] * d_h + ref[2] * d_v).sum(), params, retain_graph=True)
    for p in params:
        p.grad = None
    vjp(d_lp, d_h, d_v)
    for p, g in zip(params, expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    for p in params:  # numbers for the entropy derivative (PPO's -c_e / B) work the same
        p.grad = None
    vjp(d_lp, 0.25, d_v)
    expected = torch.autograd.grad((ref[0] * d_lp + ref[1] * 0.25 + ref[2] * d_v).sum(), params)
    for p, g in zip(params, expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def test_value_with_vjp_equals_autograd():
    torch.manual_seed(1)
    policy = _policy(spaces.Discrete(2), normalize_observations=True)
    policy.obs_normalizer.update(torch.randn(64, 5))
    obs, d_v = torch.randn(20, 5), torch.randn(20)
    values, vjp = policy.value_with_vjp(obs)
    torch.testing.assert_close(values, policy.value(obs).detach())
    params = policy.critic_parameters()
    expected = torch.autograd.grad((policy.value(obs) * d_v).sum(), params)
    vjp(d_v)
    for p, g in zip(params, expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in policy.actor_parameters())


@pytest.mark.parametrize(
    "action_space, kw",
    [
        (spaces.MultiDiscrete([2, 3]), {}),
        (spaces.Discrete(2), {"activation_fn": "elu"}),
    ],
)
def test_vjp_is_offered_only_where_written_out(action_space, kw):
    policy = _policy(action_space, **kw)
    assert policy.evaluate_actions_with_vjp(torch.zeros(2, 5), policy.act(torch.zeros(2, 5))[0]) is None
    cnn = ActorCriticPolicy(spaces.Box(0, 255, (4, 84, 84), np.uint8), spaces.Discrete(3), policy="CnnPolicy")
    assert cnn.evaluate_actions_with_vjp(torch.zeros(2, 4, 84, 84, dtype=torch.uint8), torch.zeros(2)) is None


@pytest.mark.parametrize(
    "env_id, hp",
    [
        ("CartPole-v1", {"ent_coef": 0.01}),
        ("Pendulum-v1", {"clip_range_vf": 0.2, "ent_coef": 0.003, "clip_range": 0.1}),
    ],
)
def test_ppo_updates_identically_by_hand_and_by_autograd(env_id, hp):
    """Two agents from one state, one update each: the hand-written backward and autograd move the
    parameters to the same place (PPO's loss derivatives, including clipping, checked end to end)."""
    def trained(hand_written: bool):
        agent = PPO("MlpPolicy", env_id, n_steps=128, batch_size=32, n_epochs=3, seed=3, device="cpu", **hp)
        agent.hand_written_backward = hand_written
        agent.learn(256)  # two rollouts and two updates: the second one starts far from π_old = π
        return torch.cat([p.detach().flatten() for p in agent.policy.parameters()])

    by_hand, by_autograd = trained(True), trained(False)
    torch.testing.assert_close(by_hand, by_autograd, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("clip_range_vf", [None, 0.3])
def test_ppo_loss_derivatives_equal_autograd(clip_range_vf):
    """On a minibatch where many ratios and value changes are clipped: PPO.loss_derivatives is the
    gradient of PPO.losses with respect to log π, H and V."""
    from rlgeom.buffer import Batch

    agent = PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, ent_coef=0.05, vf_coef=0.7,
                clip_range_vf=clip_range_vf, seed=0, device="cpu")
    g = torch.Generator().manual_seed(0)
    n = 256
    old_log_probs, old_values = -torch.rand(n, generator=g), torch.randn(n, generator=g)
    batch = Batch(torch.zeros(n, 4), torch.zeros(n), old_log_probs, old_values,
                  torch.randn(n, generator=g), torch.randn(n, generator=g))
    log_probs = (old_log_probs + 0.6 * torch.randn(n, generator=g)).requires_grad_()  # ratios far outside 1 ± ε
    entropy = torch.rand(n, generator=g).requires_grad_()
    values = (old_values + torch.randn(n, generator=g)).requires_grad_()
    eps = 0.2
    loss, ratio = agent.losses(batch, log_probs, entropy, values, eps)[3:5]
    expected = torch.autograd.grad(loss, [log_probs, entropy, values])
    assert ((ratio - 1).abs() > eps).float().mean() > 0.3
    d_log_prob, d_entropy, d_value = agent.loss_derivatives(batch, ratio.detach(), values.detach(), eps)
    torch.testing.assert_close(d_log_prob, expected[0])
    torch.testing.assert_close(torch.full((n,), d_entropy), expected[1])
    torch.testing.assert_close(d_value, expected[2])


def test_value_function_fit_is_the_same_by_hand_and_by_autograd(monkeypatch):
    """VPG / NPG / TRPO's critic regression: the hand-written backward fits the same critic."""
    import copy

    from agents.critic import critic_optimizer, fit_value_function
    from agents import TRPO

    agent = TRPO("MlpPolicy", "Pendulum-v1", n_steps=256, seed=0, device="cpu")
    agent.learn(256)
    results = []
    for hand_written in (True, False):
        policy = copy.deepcopy(agent.policy)
        if not hand_written:
            monkeypatch.setattr(policy, "value_with_vjp", lambda obs: None)
        loss = fit_value_function(policy, critic_optimizer(policy, 1e-3), agent.buffer, 3, 64,
                                  torch.Generator().manual_seed(0))
        results.append((loss, torch.cat([p.detach().flatten() for p in policy.critic_parameters()])))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-6)
    assert not torch.equal(results[0][1], torch.cat([p.detach().flatten() for p in agent.policy.critic_parameters()]))


def test_a_gradient_hook_sends_the_update_back_to_autograd():
    """A hook on a parameter's gradient is called only by autograd, so the policy then declines the
    hand-written backward rather than bypass the hook."""
    policy = _policy(spaces.Discrete(2))
    obs = torch.zeros(4, 5)
    actions = policy.act(obs)[0].clone()
    assert policy.evaluate_actions_with_vjp(obs, actions) is not None
    handle = policy.critic.head.weight.register_hook(lambda g: g)
    assert policy.evaluate_actions_with_vjp(obs, actions) is None and policy.value_with_vjp(obs) is None
    handle.remove()
    assert policy.evaluate_actions_with_vjp(obs, actions) is not None and policy.value_with_vjp(obs) is not None


def test_frozen_parameters_and_replaced_layers_are_respected():
    """A frozen parameter (requires_grad=False) keeps no gradient, so the policy declines the hand-written
    path; a layer replaced after construction is the one the hand-written path uses."""
    torch.manual_seed(0)
    policy = _policy(spaces.Box(-1, 1, (2,), np.float32))
    obs = torch.randn(8, 5)
    actions = policy.act(obs)[0].clone()
    policy.actor.scale.raw.requires_grad_(False)  # a fixed σ
    assert policy.evaluate_actions_with_vjp(obs, actions) is None
    assert policy.value_with_vjp(obs) is not None  # the critic is still all trained
    policy.actor.scale.raw.requires_grad_(True)
    policy.actor.head = nn.Linear(64, 2)
    log_prob = policy.evaluate_actions_with_vjp(obs, actions)[0]
    torch.testing.assert_close(log_prob, policy.evaluate_actions(obs, actions)[0].detach())
