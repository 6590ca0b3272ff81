"""The compiled fast path (rlgeom.training.compiled, `compile=`) against the plain path it replaces:
the rollout's draw, PPO's and TRPO's updates, the syncless CG and line search; options and the CLI flag.

On the CPU the compiled functions are built with torch.compile's "aot_eager" backend (dynamo's graphs and
AOT autograd's forward and backward, run by eager kernels, with eager's random numbers) or "eager" (the
graphs alone): inductor's C++ build would take minutes on a small machine, and its own random numbers
would make a sampled rollout differ. The CUDA test runs inductor with mode="reduce-overhead" (CUDA graphs).
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from agents import NPG, PPO, TRPO
from torch.overrides import TorchFunctionMode

from agents.natural import natural_direction
from rlgeom.geometry.fisher import backtracking_line_search, conjugate_gradient
from rlgeom.training.compiled import compile_options

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def parameters(agent) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in agent.policy.parameters()]).cpu()


# ------------------------------------------------------------------ syncless CG and line search


class NoHostReads(TorchFunctionMode):
    """Fails on any read of a tensor's value by the host (what is a device sync on CUDA)."""

    READS = (torch.Tensor.__bool__, torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__float__,
             torch.Tensor.__int__, torch.Tensor.__index__)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            raise AssertionError(f"a host read ({func.__name__}) on the syncless path")
        return func(*args, **(kwargs or {}))


def spd(d: int, seed: int, negative: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    eig = torch.linspace(0.1, 10.0, d)
    if negative:
        eig[::3] *= -1  # indefinite: CG meets a non-positive curvature and stops
    return q @ torch.diag(eig) @ q.T


@pytest.mark.parametrize("case", ["max_iterations", "tolerance", "zero", "nan", "indefinite"])
def test_syncless_cg_gives_the_early_stopping_solution(case):
    a = spd(24, 0, negative=case == "indefinite")
    b = torch.randn(24, generator=torch.Generator().manual_seed(1))
    iterations, tol = 8, 1e-10
    if case == "tolerance":
        iterations, tol = 60, 1e-3  # converges and stops well before 60
    if case == "zero":
        b = torch.zeros(24)
    if case == "nan":
        b[3] = float("nan")
    calls = {"plain": 0, "syncless": 0}

    def matvec(which):
        def product(v):
            calls[which] += 1
            return a @ v
        return product

    plain = conjugate_gradient(matvec("plain"), b, iterations, tol)
    with NoHostReads():
        fast = conjugate_gradient(matvec("syncless"), b, iterations, tol, syncless=True)
    assert torch.equal(plain.solution, fast.solution)
    assert isinstance(fast.iterations, torch.Tensor) and int(fast.iterations) == plain.iterations
    torch.testing.assert_close(fast.residual_norm, plain.residual_norm, equal_nan=True)
    assert calls["syncless"] == iterations + 1  # a fixed count: every product, then A x
    if case in ("tolerance", "zero", "nan", "indefinite"):
        assert plain.iterations < iterations  # the plain solve did stop early here


def quadratic_problem(accept_at: int | None, nan_first: bool = False):
    """params θ (one tensor), a step s and evaluate() whose KL is ‖θ − θ0‖², so that the trial βʲs is within
    the radius from j = accept_at on; improvement stays positive (or NaN at the first trial)."""
    theta0 = torch.tensor([0.5, -1.0, 2.0])
    param = theta0.clone()
    step = torch.tensor([1.0, 2.0, -2.0])  # ‖s‖² = 9
    beta = 0.8
    max_kl = 9 * beta ** (2 * accept_at) * 1.01 if accept_at is not None else 1e-9
    trials = []

    def evaluate():
        delta = param - theta0
        trials.append(1)
        improvement = torch.dot(delta, step) - 0.01 * delta.dot(delta)
        if nan_first and len(trials) == 1:
            improvement = torch.tensor(float("nan"))
        return improvement, delta.dot(delta)

    return [param], step, evaluate, max_kl, beta, theta0


@pytest.mark.parametrize("accept_at,nan_first", [(0, False), (3, False), (None, False), (0, True)])
def test_syncless_line_search_takes_the_plain_searchs_step(accept_at, nan_first):
    results = []
    for syncless in (False, True):
        params, step, evaluate, max_kl, beta, theta0 = quadratic_problem(accept_at, nan_first)
        with NoHostReads() if syncless else contextlib.nullcontext():
            result = backtracking_line_search(params, step, evaluate, max_kl=max_kl,
                                              expected_improvement=step.dot(step), backtrack_coef=beta,
                                              max_backtracks=6, syncless=syncless)
        results.append((params[0].clone(), result, theta0))
    (plain_theta, plain, theta0), (fast_theta, fast, _) = results
    assert torch.equal(plain_theta, fast_theta)  # the same parameters, bit for bit
    assert bool(fast.accepted) == plain.accepted
    assert float(fast.step_fraction) == pytest.approx(plain.step_fraction, rel=1e-6)
    assert int(fast.backtracks) == plain.backtracks
    if accept_at is None:
        assert torch.equal(fast_theta, theta0)  # nothing accepted: θ_old exactly
    else:
        assert plain.backtracks == accept_at + nan_first
        assert math.isclose(float(fast.kl), plain.kl, rel_tol=1e-6)


# ------------------------------------------------------------------ options


def test_compile_options_accept_torch_compile_names_and_refuse_others():
    assert not compile_options(None, "cpu").enabled and not compile_options(False, "cpu").enabled
    assert not compile_options("off", "cuda").enabled
    assert compile_options(True, "cpu").mode == "default"
    assert compile_options("auto", "cuda").mode == "reduce-overhead"  # CUDA graphs, LeanRL's choice
    assert compile_options({"backend": "aot_eager"}, "cpu").backend == "aot_eager"
    from rlgeom.training.compiled import Compiler

    on_cpu, on_cuda = (Compiler(compile_options(True, d), d) for d in ("cpu", "cuda"))
    assert not on_cpu.rollout and not on_cpu.syncless  # measured slower on the CPU: only asked for
    assert on_cuda.rollout and on_cuda.syncless and on_cuda.cuda_graphs
    forced = Compiler(compile_options({"rollout": True, "syncless": True}, "cpu"), "cpu")
    assert forced.rollout and forced.syncless and not forced.cuda_graphs
    with pytest.raises(ValueError, match="rollout and syncless None, True or False"):
        compile_options({"rollout": "yes"}, "cpu")
    with pytest.raises(ValueError, match="unknown compile mode 'fast'; accepted: .*reduce-overhead"):
        compile_options("fast", "cpu")
    with pytest.raises(ValueError, match="unknown option.*speed"):
        compile_options({"mode": "default", "speed": 2}, "cpu")
    with pytest.raises(ValueError, match="unknown compile mode 'fast'"):
        PPO("MlpPolicy", "CartPole-v1", n_steps=16, batch_size=16, compile="fast", device="cpu")


def test_cli_refuses_a_bad_compile_mode(capsys):
    from rlgeom.tools.train import main

    assert main(["--compile", "fastest", "--timesteps", "64"]) == 2
    err = capsys.readouterr().err
    assert "--compile 'fastest' is not a compile mode; accepted: off, auto, default, reduce-overhead" in err
    assert "Traceback" not in err


def test_load_takes_compile_and_save_does_not_keep_it(tmp_path):
    agent = PPO("MlpPolicy", "CartPole-v1", n_steps=16, batch_size=16, seed=0, device="cpu",
                compile={"mode": "default", "backend": "eager"})
    path = agent.save(tmp_path / "model")
    assert not PPO.load(path, device="cpu").compiler.enabled
    loaded = PPO.load(path, device="cpu", compile="default")
    assert loaded.compiler.enabled and loaded.compiler.options.mode == "default"


# ------------------------------------------------------------------ the compiled agents against the plain ones


def one_update(cls, device, compile, env="CartPole-v1", **hp):
    """Two agents of one seed, one plain, one compiled; the plain one collects a rollout and both update on it.
    Returns (plain, compiled, their update statistics)."""
    hp = {"n_steps": 32, "seed": 3, "device": device, **hp}
    plain, fast = cls("MlpPolicy", env, **hp), cls("MlpPolicy", env, compile=compile, **hp)
    assert torch.equal(parameters(plain), parameters(fast))
    plain._reset_env()
    plain.collect_rollout()
    stats = plain.update(plain.buffer, 1.0), fast.update(plain.buffer, 1.0)
    return plain, fast, stats


@pytest.mark.slow  # ~10 s on the loaded 2-core machine: AOT autograd traces PPO's loss forward and backward
def test_compiled_ppo_update_matches_the_plain_one():
    """PPO's minibatch losses compiled with AOT autograd (forward and backward graphs): after one update
    (2 epochs of 2 minibatches, Adam, clipping) the parameters are the plain path's to float rounding."""
    plain, fast, (s_plain, s_fast) = one_update(PPO, "cpu", {"mode": "default", "backend": "aot_eager"},
                                                batch_size=16, n_epochs=2)
    torch.testing.assert_close(parameters(fast), parameters(plain), rtol=1e-5, atol=1e-6)
    assert s_fast["train/approx_kl"] == pytest.approx(s_plain["train/approx_kl"], rel=1e-3, abs=1e-7)
    assert s_fast["train/loss"] == pytest.approx(s_plain["train/loss"], rel=1e-4)


@pytest.mark.parametrize("cls", [TRPO, NPG])
def test_compiled_natural_update_matches_the_plain_one(cls):
    """TRPO / NPG with compile on: the critic's loss compiled, CG and the line search without host syncs.
    The step (direction, line search, accepted fraction) and the critic fit are the plain path's."""
    plain, fast, (s_plain, s_fast) = one_update(cls, "cpu", {"mode": "default", "backend": "eager", "syncless": True},
                                                env="Pendulum-v1", batch_size=16, n_critic_updates=2)
    torch.testing.assert_close(parameters(fast), parameters(plain), rtol=1e-5, atol=1e-6)
    for tag in ("geometry/cg_iterations", "geometry/line_search_backtracks", "geometry/line_search_accepted"):
        if tag in s_plain:
            assert s_fast[tag] == s_plain[tag], tag
    assert s_fast["geometry/kl"] == pytest.approx(s_plain["geometry/kl"], rel=1e-4)
    batch = plain.buffer.full_batch(fast.config.normalize_advantage)
    with NoHostReads():  # the direction (gradient, CG) and the step rule read nothing on the host
        fast.take_step(natural_direction(fast.policy, batch, fast.config, fast.generator, syncless=True))


def test_compiled_rollout_draws_the_plain_actions():
    """The compiled step (the policy's modules traced, aot_eager's random numbers being eager's) draws the
    actions policy.draw draws from the same generator state."""
    agent = PPO("MlpPolicy", "Pendulum-v1", n_envs=3, n_steps=8, batch_size=24, seed=0, device="cpu",
                compile={"mode": "default", "backend": "aot_eager", "rollout": True})
    obs = agent.env.reset(seed=0)
    draw = agent._rollout_draw()
    assert draw != agent.policy.draw
    for _ in range(2):  # the second call runs the compiled function without tracing
        torch.manual_seed(5)
        expected = agent.policy.draw(obs)
        torch.manual_seed(5)
        torch.testing.assert_close(draw(obs), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.parametrize("cls", [PPO, TRPO])
def test_reduce_overhead_on_cuda_matches_the_plain_update(cls):
    """CUDA graphs (inductor, mode="reduce-overhead"): one update equals the plain one to float rounding
    (outputs kept across replays are copied), and a learn() runs the graphed rollout and updates."""
    hp = {"batch_size": 16, "n_epochs": 2} if cls is PPO else {"batch_size": 16, "n_critic_updates": 2}
    plain, fast, _ = one_update(cls, "cuda", "reduce-overhead", **hp)
    torch.testing.assert_close(parameters(fast), parameters(plain), rtol=1e-4, atol=1e-5)
    if cls is TRPO:  # the direction and the step queue their kernels without one host sync
        batch = plain.buffer.full_batch(fast.config.normalize_advantage)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            fast.take_step(natural_direction(fast.policy, batch, fast.config, fast.generator, syncless=True))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    fast.learn(96)
    assert torch.isfinite(parameters(fast)).all() and fast.num_timesteps >= 96
