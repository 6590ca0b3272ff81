"""A grid's runs as tasks on a Ray cluster (`--launcher ray [--address auto|HOST:PORT]`).

The grid keeps its own semantics (rlgeom.tools.benchmark): finished runs are skipped, unfinished run
directories set aside, a failed run reported without stopping the others. Ray only places the runs:
each is one task running `benchmark.run_in_worker` with its CPU / GPU request, on whichever node
has room; `--logdir` must be a path every node can write (a shared filesystem), since each run writes
its own directory there. Ray is an optional extra: `pip install 'rlgeom[ray]'`.
"""

from __future__ import annotations

from rlgeom.tools.benchmark import GridUsageError


class RayUnavailableError(GridUsageError):
    """--launcher ray without Ray installed (a usage error: exit status 2, before any run starts)."""


def require_ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailableError("--launcher ray needs Ray, an optional extra: pip install 'rlgeom[ray]' "
                                  "(or pip install ray); or drop --launcher to run the grid in local processes") from None
    return ray


def execute(specs: list[dict], on_record, address: str | None = None, cpus_per_run: float = 1.0) -> None:
    """Run every spec as a Ray task and hand each record to `on_record` as it finishes (any order).

    address: None starts a local Ray instance for this grid (and stops it after); "auto" or
    "HOST:PORT" joins a running cluster. A run that needs a GPU (device cuda) asks Ray for one.
    """
    ray = require_ray()
    from rlgeom.tools.benchmark import run_in_worker  # here: benchmark imports this module lazily

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        # max_retries=0: a run is retried by rerunning the grid (it skips what finished), never twice at once;
        # max_calls=1: a fresh worker process per run, as the local pool's max_tasks_per_child=1
        task = ray.remote(num_cpus=cpus_per_run, max_retries=0, max_calls=1)(run_in_worker)
        tasks = {}
        for spec in specs:
            gpus = 1 if str(spec.get("device", "")).startswith("cuda") else 0
            tasks[task.options(num_gpus=gpus).remote(spec)] = spec
        pending = list(tasks)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            spec = tasks[done[0]]
            try:
                record = ray.get(done[0])
            except ray.exceptions.RayError as err:  # the worker process died (killed, out of memory, node lost)
                record = {"algo": spec["algo"], "env": spec["env"], "seed": spec["seed"], "status": "failed",
                          "error": f"the Ray task ended without a result: {type(err).__name__}: {str(err)[:300]}",
                          "log": "(none: the process died before it could write one)", "run_dir": spec["run_dir"]}
            on_record(record)
    finally:
        if started_here:
            ray.shutdown()
