"""One run over many processes (torchrun): the collectives every update uses, in one place.

Each rank steps its own envs and fills its own rollout buffer of the same size; the update is that of
one process on the union of the ranks' batches (the approach of OpenAI baselines' MPI TRPO):

| what                                             | how it is combined                 | where            |
|--------------------------------------------------|------------------------------------|------------------|
| gradients of first-order steps (PPO, VPG, every   | mean, as one flat buffer per step  | `average_gradients` |
| critic fit, ACKTR)                               |                                    |                  |
| the policy gradient g, every Fisher-vector       | mean                               | `mean`           |
| product F v inside CG, the line search's          |                                    |                  |
| surrogate and KL                                 |                                    |                  |
| K-FAC factor statistics (before inversion)       | sum of the accumulated A, G and n  | `sum_`           |
| advantage and observation normalisation          | moments of the union               | `moments`        |
| episode statistics                               | gathered on every rank             | `gather`         |

With equal batch sizes per rank (the agents' n_steps × n_envs on each), the mean of the ranks' means
is the union's mean, so every reduced quantity equals the single-process one to float rounding. For
full-batch steps (NPG, TRPO, VPG's actor, ACKTR) that is the single-process update on the union
exactly; a minibatch step (PPO, the critic fits) takes `batch_size` rows from each rank, i.e. a
minibatch of world_size × batch_size whose rows are drawn per rank: the same update in distribution.
Outside torch.distributed (or with one process) every function here returns its input: a plain run
pays nothing. torchrun sets RANK / WORLD_SIZE / MASTER_ADDR; `init_from_environment` joins the group
(gloo on the CPU, NCCL on CUDA) with a timeout, so a rank that dies or hangs ends the run with an
error instead of a hang. The group it joins it also leaves, at exit (`leave`): gloo's worker threads
left running into interpreter teardown abort the process ("terminate called without an active
exception", pytorch/pytorch#190489), which torchrun reports as a failed run.
"""

from __future__ import annotations

import atexit
import datetime
import os

import torch
import torch.distributed as dist

#: seconds a collective may wait for the other ranks before the run ends with an error
DEFAULT_TIMEOUT_S = float(os.environ.get("RLGEOM_DIST_TIMEOUT", 300))


def active() -> bool:
    """Whether this process is one rank of several (torch.distributed initialised, world size > 1)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Rank 0, the one that logs and writes checkpoints and models (also True outside torchrun)."""
    return rank() == 0


def init_from_environment(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1); False when not
    launched so. Idempotent: a group the caller already initialised is kept."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "gloo"
    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        local_rank, local_world = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        torch.cuda.set_device(local_rank % gpus)
        # NCCL takes one rank per GPU; several ranks sharing a GPU all-reduce its tensors through gloo
        backend = "nccl" if local_world <= gpus else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    atexit.register(leave)  # after the user's code, on every rank, however the run ends
    return True


def leave() -> None:
    """Destroy the process group (a local act, not a collective: a rank may leave while rank 0 still
    evaluates); nothing when there is none. Registered at exit only by `init_from_environment` when it
    created the group: a group the caller created is the caller's to destroy."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of `tensor` (a new tensor, no autograd history); the input itself when
    not distributed."""
    if not active():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.div_(dist.get_world_size())


def sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (no-op when not distributed)."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def maximum(tensor: torch.Tensor) -> torch.Tensor:
    """The maximum over ranks (a new tensor); the input itself when not distributed."""
    if not active():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | int]:
    """(mean, population variance, count) over dim 0 of the union of every rank's `x`, by two
    passes (a sum, then the sum of squared deviations): the same as on the concatenated rows. The
    count is a Python int when not distributed (no device tensor, no host sync on that path)."""
    if not active():
        return x.mean(0), x.var(0, correction=0), x.shape[0]
    count = torch.tensor(float(x.shape[0]), dtype=x.dtype, device=x.device)
    total = torch.cat([x.sum(0).reshape(-1), count.reshape(1)])
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    count = total[-1]
    mu = (total[:-1] / count).reshape(x.shape[1:])
    squares = (x - mu).pow(2).sum(0)
    dist.all_reduce(squares, op=dist.ReduceOp.SUM)
    return mu, squares / count, count


def average_gradients(parameters) -> None:
    """Replace every parameter's gradient by its mean over ranks, with one all-reduce of one flat
    buffer (a parameter without a gradient takes part as zeros, so every rank sends the same sizes)."""
    if not active():
        return
    params = list(parameters)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(dist.get_world_size())
    offset = 0
    for p in params:
        n = p.numel()
        if p.grad is None:
            p.grad = flat[offset:offset + n].view_as(p).clone()
        else:
            p.grad.copy_(flat[offset:offset + n].view_as(p))
        offset += n


def gather(obj) -> list:
    """Every rank's `obj` (picklable), in rank order; [obj] when not distributed."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def broadcast_module(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (one start for all, whatever each rank's seed)."""
    if not active():
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.is_floating_point():  # masks and flags are derived from the spaces, equal everywhere
            dist.broadcast(tensor.data, src=0)


def agree(flag: bool) -> bool:
    """True on every rank if `flag` is True on any (one all-reduce; `flag` itself when not distributed):
    how the ranks take a decision one of them may come to alone (skip an update, stop on a callback)."""
    if not active():
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    vote = torch.tensor([float(flag)], device=device)  # NCCL reduces only CUDA tensors
    dist.all_reduce(vote, op=dist.ReduceOp.MAX)
    return bool(vote.item())
