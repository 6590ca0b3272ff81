"""rlgeom.training.optim.ContiguousAdam against torch.optim.Adam on the separate tensors (the reference)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rlgeom.training.optim import ContiguousAdam


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))


def loss_of(model: nn.Module, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + step)
    x, y = torch.randn(16, 3, generator=g), torch.randn(16, 2, generator=g)
    return ((model(x) - y) ** 2).mean() * (1 + step)  # growing scale: the clip binds on later steps


def train(model, optimizer, steps: int, clip: float | None) -> list[torch.Tensor]:
    norms = []
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss_of(model, step).backward()
        if clip is not None:
            if isinstance(optimizer, ContiguousAdam):
                norms.append(optimizer.clip_grad_norm_(clip))
            else:
                norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
        optimizer.step()
    return norms


@pytest.mark.parametrize("clip", [None, 0.5])
def test_same_trajectory_as_torch_adam(clip):
    ours, ref = net(), net()
    opt = ContiguousAdam(ours.parameters(), lr=1e-2, eps=1e-5)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2, eps=1e-5, foreach=False, fused=False)
    norms = train(ours, opt, 6, clip)
    ref_norms = train(ref, ref_opt, 6, clip)
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    for n, m in zip(norms, ref_norms):
        torch.testing.assert_close(n, m)
    if clip is not None:
        assert max(float(n) for n in norms) > clip  # the clip did bind


@pytest.mark.parametrize("options", [{}, {"weight_decay": 0.1, "betas": (0.8, 0.95)}, {"maximize": True}])
def test_the_options_and_a_changing_learning_rate_are_torch_adams(options):
    """ContiguousAdam's fused step on one buffer follows torch.optim.Adam's trajectory, with Adam's options and
    the learning rate changed between steps as the agents' schedules do."""
    ours, ref = net(), net()
    opt = ContiguousAdam(ours.parameters(), lr=1e-2, eps=1e-5, **options)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2, eps=1e-5, foreach=False, fused=False, **options)
    for step in range(6):
        for optimizer in (opt, ref_opt):
            optimizer.param_groups[0]["lr"] = 1e-2 / (1 + step)
        for model, optimizer in ((ours, opt), (ref, ref_opt)):
            optimizer.zero_grad(set_to_none=True)
            loss_of(model, step).backward()
            optimizer.step()
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert int(opt.state[opt.flat]["step"]) == 6 and opt.param_groups[0]["fused"]


def test_parameters_and_gradients_live_in_one_buffer():
    model = net()
    opt = ContiguousAdam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    loss_of(model, 0).backward()
    start, end = opt.flat.data_ptr(), opt.flat.data_ptr() + opt.flat.numel() * opt.flat.element_size()
    gstart = opt.flat.grad.data_ptr()
    for p in model.parameters():
        assert start <= p.data_ptr() < end  # values are views of the buffer
        assert gstart <= p.grad.data_ptr() < gstart + opt.flat.numel() * 4  # backward accumulated in place
    assert float(opt.flat.grad.abs().sum()) > 0
    opt.step()
    assert all(not torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before))
    opt.zero_grad()
    assert float(opt.flat.grad.abs().sum()) == 0 and all(p.grad is not None for p in model.parameters())


def test_a_replaced_gradient_is_not_lost():
    """Code outside rlgeom may assign p.grad; the next step copies it back into the buffer."""
    ours, ref = net(), net()
    opt = ContiguousAdam(ours.parameters(), lr=1e-2)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2, foreach=False, fused=False)
    for model in (ours, ref):
        for p in model.parameters():
            p.grad = torch.full_like(p, 0.3)
    ours[0].bias.grad = None  # a gradient set to None counts as zero (the buffer cannot skip a slice)
    ref[0].bias.grad = torch.zeros_like(ref[0].bias)
    opt.step()
    ref_opt.step()
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)


def test_state_dict_round_trip_continues_identically():
    a, b = net(), net()
    opt_a = ContiguousAdam(a.parameters(), lr=1e-2)
    train(a, opt_a, 3, None)
    b.load_state_dict(a.state_dict())
    opt_b = ContiguousAdam(b.parameters(), lr=1e-2)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    for model, opt in ((a, opt_a), (b, opt_b)):
        opt.zero_grad()
        loss_of(model, 5).backward()
        opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_mixed_dtypes_are_refused_with_a_clear_error():
    model = net()
    model[2].double()
    with pytest.raises(ValueError, match="one dtype on one device"):
        ContiguousAdam(model.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="no parameters"):
        ContiguousAdam([], lr=1e-3)


def test_moving_a_parameter_out_of_the_buffer_is_an_error_not_a_silent_no_op():
    model = net()
    opt = ContiguousAdam(model.parameters(), lr=1e-3)
    model.to(torch.float64)  # like module.to(device): new storage for every parameter
    loss_of(model.float(), 0).backward()
    with pytest.raises(RuntimeError, match="moved out of ContiguousAdam's buffer"):
        opt.step()


@pytest.mark.parametrize("fused", [True, False])
def test_a_per_parameter_adam_state_loads_and_continues_identically(fused):
    """Checkpoints written before ContiguousAdam hold torch.optim.Adam's per-parameter state."""
    ref, ours = net(), net()
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2, eps=1e-5, fused=fused)
    train(ref, ref_opt, 3, None)
    ours.load_state_dict(ref.state_dict())
    opt = ContiguousAdam(ours.parameters(), lr=1e-2, eps=1e-5)
    opt.load_state_dict(copy.deepcopy(ref_opt.state_dict()))
    assert opt.param_groups[0]["fused"] is True  # keeps its own kernel choice
    for model, o in ((ref, ref_opt), (ours, opt)):
        o.zero_grad()
        loss_of(model, 7).backward()
        o.step()
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_a_per_parameter_state_of_another_network_is_refused():
    other = nn.Sequential(nn.Linear(3, 9), nn.Tanh(), nn.Linear(9, 2))  # same number of tensors, other sizes
    other_opt = torch.optim.Adam(other.parameters(), lr=1e-2)
    train(other, other_opt, 1, None)
    opt = ContiguousAdam(net().parameters(), lr=1e-2)
    with pytest.raises(ValueError, match="different network"):
        opt.load_state_dict(other_opt.state_dict())
