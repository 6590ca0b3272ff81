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
def test_plain_mlp_gradients_equal_autograd(activation, sizes):
    torch.manual_seed(0)
    body = mlp(sizes[:-1], activation)
    layers = list(body) + [nn.Linear(sizes[-2], sizes[-1])]
    net = nn.Sequential(*layers)
    x, weight = torch.randn(16, sizes[0], requires_grad=True), torch.randn(16, sizes[-1])
    plain = PlainMLP.of(layers)
    out, inputs = plain.forward(x)
    torch.testing.assert_close(out, net(x))
    *expected, expected_x = _autograd_grads(list(net.parameters()) + [x], (net(x) * weight).sum())
    grads, grad_x = plain.gradients(inputs, weight, input_gradient=True)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_x, expected_x, rtol=1e-5, atol=1e-6)
    assert plain.gradients(inputs, weight)[1] is None and all(p.grad is None for p in net.parameters())


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


def test_plain_mlp_gradients_of_a_narrow_input_layer():
    torch.manual_seed(2)
    layers = [nn.Linear(11, 64), nn.Tanh(), nn.Linear(64, 3)]  # 11 -> 64 takes the transposed product
    net = nn.Sequential(*layers)
    x, weight = torch.randn(300, 11), torch.randn(300, 3)
    plain = PlainMLP.of(layers)
    _, inputs = plain.forward(x)
    grads, _ = plain.gradients(inputs, weight)
    expected = _autograd_grads(list(net.parameters()), (net(x) * weight).sum())
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


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


def test_gradient_hooks_and_frozen_parameters_are_autograds():
    """Gradients reach the parameters through autograd (the written-out MLP is one node of its graph), so a
    parameter's gradient hook runs and changes what is accumulated, as it would through the modules; a frozen
    parameter gets no gradient. Module forward hooks run only when the layers are called as modules
    (`written_out=False`, what K-FAC asks for)."""
    torch.manual_seed(0)
    policy = _policy(spaces.Box(-1, 1, (2,), np.float32))
    x = torch.randn(4, 5)
    assert networks.written_out_applies(policy.critic, x)
    handle = policy.critic.head.weight.register_hook(lambda g: 3 * g)
    out = policy.outputs(x, actor=False)
    out.backward(out.values.sum())
    handle.remove()
    with torch.no_grad():
        expected = 3 * policy.critic.body(x).sum(0, keepdim=True)  # ∂ Σ V / ∂ W_head, times the hook's 3
    torch.testing.assert_close(policy.critic.head.weight.grad, expected)
    calls = []
    handle = policy.actor.body[0].register_forward_hook(lambda *args: calls.append(1))
    policy.outputs(x, written_out=False)
    assert calls == [1]
    handle.remove()
    policy.actor.scale.raw.requires_grad_(False)  # a fixed σ keeps no gradient
    out = policy.outputs(x)
    out.backward(out.dist_params.sum() + out.values.sum())
    assert policy.actor.scale.raw.grad is None and policy.actor.head.weight.grad is not None


def _sequential_copy(network) -> nn.Sequential:
    """The actor's or critic's body and head as a plain nn.Sequential with copies of its weights: the
    reference that a user's own loss must differentiate identically."""
    layers = [*network.body, network.head]
    copy = nn.Sequential(*[type(m)(m.in_features, m.out_features) if isinstance(m, nn.Linear) else type(m)()
                           for m in layers]).double()
    copy.load_state_dict({k: v.detach().clone() for k, v in nn.Sequential(*layers).state_dict().items()})
    return copy


USER_LOSS_POLICIES = [
    (spaces.Discrete(4), {}),  # separate actor and critic of one net_arch
    (spaces.Discrete(3), {"activation_fn": "relu", "net_arch": {"pi": [16, 8], "vf": [12]}}),
    (spaces.Box(-1, 1, (2,), np.float32), {"normalize_observations": True}),
    (spaces.Box(-1, 1, (2,), np.float32), {"share_features_extractor": True, "net_arch": [16, 16]}),  # shared torso
]


@pytest.mark.parametrize("action_space, kw", USER_LOSS_POLICIES)
@pytest.mark.parametrize("written_out", [True, False], ids=["written_out", "autograd"])
def test_a_users_own_loss_on_the_outputs_backpropagates_as_through_nn_sequential(action_space, kw, written_out):
    """Any loss built on policy.outputs (here log π, entropy, V and a nonlinear mixture of them all), by
    loss.backward(), torch.autograd.grad, and a double backward, gives every parameter the gradient that
    autograd gives through a plain nn.Sequential copy of the same weights (the written-out MLP once left
    the weights' gradients at zero)."""
    torch.manual_seed(0)
    policy = _policy(action_space, **kw).double()
    policy.written_out_derivatives = written_out
    policy.obs_normalizer.update(torch.randn(64, 5, dtype=torch.float64) * 2 + 1)
    obs = torch.randn(24, 5, dtype=torch.float64)
    family = policy.family
    actions = family.sample(policy.dist_params(obs).detach(), False)
    x = policy.actor_inputs(obs)
    if written_out and not policy.share_features_extractor:
        assert networks.written_out_applies(policy.actor, x) and networks.written_out_applies(policy.critic, x)
    actor_copy, critic_copy = _sequential_copy(policy.actor), _sequential_copy(policy.critic)
    scale = policy.actor.scale.raw.detach().clone().requires_grad_(True) if policy.actor.scale is not None else None

    def reference_outputs():
        mean = actor_copy(x)
        dist_params = mean if scale is None else torch.cat([mean, scale.expand_as(mean)], -1)
        return dist_params, critic_copy(x).squeeze(-1)

    def loss(dist_params, values):
        weird = torch.sin(dist_params).pow(3).sum(-1) * torch.tanh(values) + (dist_params[:, 0] * values).exp()
        return ((family.log_prob(dist_params, actions) * values.detach()).mean() - 0.1 * family.entropy(dist_params).mean()
                + 0.5 * values.square().mean() + weird.mean())

    ours = [*policy.actor.body.parameters(), *policy.actor.head.parameters(),
            *([policy.actor.scale.raw] if scale is not None else []),
            *policy.critic.body.parameters(), *policy.critic.head.parameters()]
    theirs = [*actor_copy.parameters(), *([scale] if scale is not None else []), *critic_copy.parameters()]
    expected = torch.autograd.grad(loss(*reference_outputs()), theirs)

    out = policy.outputs(obs)
    out.backward(loss(out.dist_params, out.values))
    for p, want in zip(ours, expected):
        torch.testing.assert_close(p.grad, want)
        assert want.abs().sum() > 0
    out = policy.outputs(obs)
    for got, want in zip(torch.autograd.grad(loss(out.dist_params, out.values), ours), expected):
        torch.testing.assert_close(got, want)

    # a gradient penalty: ‖∂L/∂θ‖² differentiated again (create_graph)
    def penalty(outputs, params):
        grads = torch.autograd.grad(loss(*outputs), params, create_graph=True)
        return sum(g.square().sum() for g in grads)

    expected = torch.autograd.grad(penalty(reference_outputs(), theirs), theirs)
    out = policy.outputs(obs)
    for got, want in zip(torch.autograd.grad(penalty((out.dist_params, out.values), ours), ours), expected):
        torch.testing.assert_close(got, want)


def test_the_written_out_outputs_pass_a_gradient_to_the_observations():
    """An input that needs a gradient (a user differentiating with respect to the observation) gets it."""
    torch.manual_seed(0)
    policy = _policy(spaces.Discrete(3)).double()
    obs = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    out = policy.outputs(obs)
    (got,) = torch.autograd.grad(out.dist_params.square().sum() + out.values.exp().sum(), obs)
    x = obs.detach().clone().requires_grad_(True)
    (want,) = torch.autograd.grad(policy.actor(x).square().sum() + policy.critic(x).exp().sum(), x)
    torch.testing.assert_close(got, want)


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


def test_a_network_the_loss_does_not_use_gets_no_gradient():
    """Actor and critic are one written-out node; a loss on the actor's output alone leaves the critic's
    gradients as autograd leaves them: untouched (None)."""
    torch.manual_seed(0)
    policy = _policy(spaces.Discrete(3))
    out = policy.outputs(torch.randn(6, 5))
    out.backward(out.dist_params.square().sum())
    assert all(p.grad is None for p in policy.critic.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.actor.parameters())
