"""The compiled fast path: `torch.compile` around the rollout's per-step draw and the updates' minibatch
losses, behind one switch (the agents' `compile=`, the CLI's `--compile`), off by default.

What it wraps, each a function that exists once and runs eagerly when the switch is off:
- the rollout's step: the policy's `dist_params` and the family's `sample` (agents/base.py);
- PPO's minibatch losses (outputs, log-density, entropy, `PPO.losses`) and the critic's regression loss
  (agents/critic.py: NPG, TRPO, VPG). autograd's backward of a compiled forward is compiled with it.

The compiled functions trace the plain modules (`written_out=False`): the written-out MLP node
(rlgeom.models.networks.WrittenOutMLP, a torch.autograd.Function) makes torch.compile break the graph
around it, so with it on there would be two graphs and an eager node between them; the compiler fuses
the plain layers itself.

With compile on, NPG and TRPO also solve CG and run the line search without host syncs
(`syncless`: rlgeom.geometry.fisher), so an update queues its kernels without waiting.

Two parts are on CUDA only unless asked for (`compile={"mode": ..., "rollout": True, "syncless": True}`),
because on the CPU they were measured slower (experiments/RESULTS_speed.md, "The compiled path"): the
compiled draw (per call, dynamo's guards and the plain layers cost more than the written-out inference
function they replace: ~1.7 against ~0.5 ms on the loaded 2-core machine), and the syncless step (every CG
iteration and every line-search trial computed, where the host would stop early; no sync to save there).

On CUDA, mode "reduce-overhead" (what `compile=True` picks there) captures CUDA graphs (LeanRL's
approach): a graph's outputs live in memory the next replay overwrites, so a caller that keeps one
across calls takes `keep(t)`, and `call` starts each call as a new CUDA-graph step
(`torch.compiler.cudagraph_mark_step_begin`).

Not compiled: log π_old and V_old of a rollout (once per rollout, one batched eager pass), the optimiser's
step, ACKTR's update (K-FAC's statistics need the modules' hooks). PPO with `target_kl` still reads the
KL once per minibatch to decide the early stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

#: torch.compile's modes
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: the torch.compile options `compile=` may give as a dict, then rlgeom's own (None: on CUDA only)
OPTIONS = ("mode", "backend", "fullgraph", "dynamic", "rollout", "syncless")
ACCEPTED = ("None/False/'off' (eager), True/'auto' ('reduce-overhead' on CUDA: CUDA graphs; 'default' on the CPU), "
            f"one of torch.compile's modes ({', '.join(MODES)}), or a dict of torch.compile options "
            "(mode, backend, fullgraph, dynamic) and rlgeom's rollout, syncless (True/False; default: on CUDA only)")


@dataclass(frozen=True)
class CompileOptions:
    """How to compile: None mode means off."""

    mode: str | None = None
    backend: str = "inductor"
    fullgraph: bool = False
    dynamic: bool | None = False  # the shapes of a run are fixed (n_envs, batch_size): no symbolic shapes
    rollout: bool | None = None  # compile the rollout's draw (None: on CUDA only)
    syncless: bool | None = None  # NPG/TRPO's step without host syncs (None: on CUDA only)

    @property
    def enabled(self) -> bool:
        return self.mode is not None


def compile_options(value, device: torch.device | str) -> CompileOptions:
    """`compile=` as CompileOptions for an agent on `device` (ValueError naming what is accepted)."""
    device = torch.device(device)
    settings = dict(value) if isinstance(value, dict) else {"mode": value}
    unknown = sorted(set(settings) - set(OPTIONS))
    if unknown:
        raise ValueError(f"compile got unknown option(s) {', '.join(unknown)}; accepted: {ACCEPTED}")
    mode = settings.get("mode", "auto" if isinstance(value, dict) else None)
    if mode is None or mode is False or mode == "off":
        if isinstance(value, dict) and len(settings) > 1:
            raise ValueError(f"compile={value!r} gives options without a mode; accepted: {ACCEPTED}")
        return CompileOptions()
    if mode is True or mode == "auto":
        mode = "reduce-overhead" if device.type == "cuda" else "default"
    if mode not in MODES:
        raise ValueError(f"unknown compile mode {mode!r}; accepted: {ACCEPTED}")
    backend = settings.get("backend", "inductor")
    if not isinstance(backend, str) or not backend:
        raise ValueError(f"compile's backend must be the name of a torch.compile backend, got {backend!r}")
    fullgraph, dynamic = settings.get("fullgraph", False), settings.get("dynamic", False)
    rollout, syncless = settings.get("rollout"), settings.get("syncless")
    if not isinstance(fullgraph, bool) or any(v not in (None, True, False) for v in (dynamic, rollout, syncless)):
        raise ValueError(f"compile's fullgraph must be True or False, and dynamic, rollout and syncless None, True or "
                         f"False, got {fullgraph!r}, {dynamic!r}, {rollout!r}, {syncless!r}")
    return CompileOptions(mode, backend, fullgraph, dynamic, rollout, syncless)


class Compiler:
    """An agent's compiled functions, built on first use and kept for the agent's life."""

    def __init__(self, options: CompileOptions, device: torch.device | str):
        self.options = options
        self.device = torch.device(device)
        self._functions: dict[str, Callable] = {}

    @property
    def enabled(self) -> bool:
        return self.options.enabled

    @property
    def syncless(self) -> bool:
        """Whether NPG/TRPO take CG and the line search without host syncs (compile on; CUDA unless asked)."""
        return self.enabled and self._on("syncless")

    @property
    def rollout(self) -> bool:
        """Whether the rollout's draw is compiled (compile on; CUDA unless asked)."""
        return self.enabled and self._on("rollout")

    def _on(self, part: str) -> bool:
        chosen = getattr(self.options, part)
        return self.device.type == "cuda" if chosen is None else chosen

    @property
    def written_out(self) -> bool | None:
        """The `written_out` that compiled functions pass to the policy (None: the policy's own setting)."""
        return False if self.enabled else None

    @property
    def cuda_graphs(self) -> bool:
        """Whether the compiled functions replay CUDA graphs (their outputs are overwritten by the next replay)."""
        return (self.enabled and self.device.type == "cuda" and self.options.backend == "inductor"
                and self.options.mode in ("reduce-overhead", "max-autotune"))

    def compile(self, fn: Callable) -> Callable:
        """`fn` compiled with this agent's options (`fn` itself when compile is off)."""
        if not self.enabled:
            return fn
        o = self.options
        # mode is inductor's option; another backend (aot_eager, in the tests) takes none
        mode = o.mode if o.backend == "inductor" else None
        return torch.compile(fn, mode=mode, backend=o.backend, fullgraph=o.fullgraph, dynamic=o.dynamic)

    def function(self, key: str, make: Callable[[], Callable]) -> Callable:
        """The compiled form of `make()`, built once per key (eager `make()` itself when compile is off)."""
        if not self.enabled:
            return make()
        if key not in self._functions:
            self._functions[key] = self.compile(make())
        return self._functions[key]

    def call(self, key: str, make: Callable[[], Callable], *args):
        """`function(key, make)(*args)`, starting a new CUDA-graph step first where graphs are replayed."""
        fn = self.function(key, make)
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        return fn(*args)

    def keep(self, t: torch.Tensor) -> torch.Tensor:
        """`t`, safe to keep past the next compiled call (a copy of a CUDA graph's output, else `t`)."""
        return t.clone() if self.cuda_graphs else t

    def __getstate__(self):  # compiled functions are rebuilt on use, never copied or pickled
        return {**self.__dict__, "_functions": {}}


#: the compiler of an agent built without compile
def eager(device: torch.device | str = "cpu") -> Compiler:
    return Compiler(CompileOptions(), device)


def draw_function(policy) -> Callable[[torch.Tensor], torch.Tensor]:
    """obs ↦ actions sampled from the policy (the rollout's step, as `policy.draw` computes it), through
    the modules themselves: what the compiled rollout traces."""
    def draw(obs: torch.Tensor) -> torch.Tensor:
        return policy.family.sample(policy.dist_params(obs))
    return draw
