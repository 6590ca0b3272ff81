"""rlgeom.models.networks, the one switchable layer between autograd and the written-out derivatives of plain
MLPs (rlgeom.models.mlp_backprop), against autograd and torch.func, the obviously-correct references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn

from agents import PPO, TRPO
from rlgeom.models import networks
from rlgeom.models.mlp_backprop import PlainMLP
from rlgeom.models.policies import ActorCriticPolicy, mlp


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


def test_plain_mlp_refuses_what_it_does_not_write_out():
    assert PlainMLP.of([nn.Linear(3, 4), nn.ELU(), nn.Linear(4, 1)]) is None
    assert PlainMLP.of([nn.Linear(3, 4), nn.Tanh()]) is None  # does not end with a Linear
    assert PlainMLP.of([nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1)]) is None


def _policy(action_space, **kw):
    return ActorCriticPolicy(spaces.Box(-np.inf, np.inf, (5,), np.float32), action_space, ortho_init=False, **kw)


POLICIES = [
    (spaces.Discrete(4), {}),
    (spaces.Discrete(3), {"activation_fn": "relu", "normalize_observations": True}),
    (spaces.Box(-1, 1, (2,), np.float32), {"normalize_observations": True}),
    (spaces.Box(-1, 1, (2,), np.float32), {"scale_parameterisation": "std", "net_arch": {"pi": [8], "vf": [6, 4]}}),
    (spaces.Box(-1, 1, (3,), np.float32), {"scale_parameterisation": "var", "log_std_init": -0.5}),
]


@pytest.mark.parametrize("action_space, kw", POLICIES)
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_linearisation_products_equal_torch_func(action_space, kw, device):
    """J v and Jᵀ u of the written-out form equal torch.func's jvp and vjp of the module itself."""
    torch.manual_seed(0)
    actor = _policy(action_space, **kw).actor.to(device).double()
    x = torch.randn(16, 5, dtype=torch.float64, device=device)
    assert networks.written_out_applies(actor, x)
    lin = networks.linearise(actor, x)
    names, params = networks.trainable_parameters(actor)
    assert [id(p) for p in lin.parameters] == [id(p) for p in params]
    f = lambda *theta: torch.func.functional_call(actor, dict(zip(names, theta)), (x,))  # noqa: E731
    theta = tuple(p.detach() for p in params)
    tangents = tuple(torch.randn_like(t) for t in theta)
    y, jv = torch.func.jvp(f, theta, tangents)
    _, pullback = torch.func.vjp(f, *theta)
    u = torch.randn_like(y)
    torch.testing.assert_close(lin.output, y)
    torch.testing.assert_close(lin.jvp(tangents), jv)
    for ours, theirs in zip(lin.vjp(u), pullback(u)):
        torch.testing.assert_close(ours, theirs)
    generic = networks.linearise(actor, x, written_out=False)  # the torch.func form, the same numbers
    torch.testing.assert_close(generic.jvp(tangents), jv)
    for ours, theirs in zip(generic.vjp(u), pullback(u)):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize(
    "env_id, hp",
    [
        ("CartPole-v1", {"ent_coef": 0.01}),
        ("Pendulum-v1", {"clip_range_vf": 0.2, "ent_coef": 0.003, "clip_range": 0.1}),
    ],
)
def test_ppo_updates_identically_written_out_and_by_autograd(env_id, hp):
    """Two agents from one state, two updates each (the second far from π_old = π, many ratios clipped):
    the written-out network derivatives and autograd move the parameters to the same place."""
    def trained(written_out: bool):
        agent = PPO("MlpPolicy", env_id, n_steps=128, batch_size=32, n_epochs=3, seed=3, device="cpu",
                    written_out_derivatives=written_out, **hp)
        agent.learn(256)
        return torch.cat([p.detach().flatten() for p in agent.policy.parameters()])

    torch.testing.assert_close(trained(True), trained(False), rtol=1e-4, atol=1e-5)


def test_natural_gradient_agents_update_identically_written_out_and_by_autograd():
    """TRPO's Fisher products and critic fit, written out and by autograd / torch.func: the same run."""
    def trained(written_out: bool):
        agent = TRPO("MlpPolicy", "Pendulum-v1", n_steps=128, batch_size=64, seed=0, device="cpu",
                     written_out_derivatives=written_out)
        agent.learn(256)
        return torch.cat([p.detach().flatten() for p in agent.policy.parameters()])

    torch.testing.assert_close(trained(True), trained(False), rtol=1e-4, atol=1e-5)


def test_hooks_and_frozen_parameters_send_gradients_back_to_autograd():
    """A gradient hook, a module hook or a frozen parameter is honoured only by autograd, so the layer
    declines the written-out form for gradients (inference keeps it: no gradient is involved)."""
    policy = _policy(spaces.Box(-1, 1, (2,), np.float32))
    x = torch.zeros(4, 5)
    assert networks.written_out_applies(policy.actor, x) and networks.written_out_applies(policy.critic, x)
    handle = policy.critic.head.weight.register_hook(lambda g: g)
    assert not networks.written_out_applies(policy.critic, x)
    handle.remove()
    handle = policy.actor.body[0].register_forward_pre_hook(lambda *args: None)
    assert not networks.written_out_applies(policy.actor, x)
    handle.remove()
    policy.actor.scale.raw.requires_grad_(False)  # a fixed σ keeps no gradient
    assert not networks.written_out_applies(policy.actor, x)
    out = policy.outputs(x)
    out.backward(out.dist_params.sum() + out.values.sum())
    assert policy.actor.scale.raw.grad is None and policy.actor.head.weight.grad is not None


def test_a_replaced_layer_is_the_one_used():
    torch.manual_seed(0)
    policy = _policy(spaces.Box(-1, 1, (2,), np.float32))
    obs = torch.randn(8, 5)
    policy.outputs(obs)  # builds the cached PlainMLP
    policy.actor.head = nn.Linear(64, 2)
    torch.testing.assert_close(policy.outputs(obs).dist_params, policy.dist_params(obs))


def test_cnn_and_custom_modules_take_autograd():
    cnn = ActorCriticPolicy(spaces.Box(0, 255, (4, 84, 84), np.uint8), spaces.Discrete(3), "CnnPolicy")
    x = cnn.actor_inputs(torch.zeros(2, 4, 84, 84, dtype=torch.uint8))
    assert not networks.written_out_applies(cnn.actor, x)
    custom = nn.Sequential(nn.Linear(5, 3))
    assert not networks.written_out_applies(custom, torch.zeros(2, 5))
