"""The Ray backend of sweeps: every grid point a Ray task on a local or existing cluster.

Each task calls the same :func:`grokscope.training.sweep.train_point` the local pool
calls (a ``grokscope train`` subprocess in the point's run directory), with a resource
request of ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs, so Ray runs as many points
at once as the cluster's resources allow. ``ray`` is imported only here, and only when
a sweep asks for it (``pip install 'grokscope[ray]'``).

Where the cluster comes from: ``address`` (or the ``RAY_ADDRESS`` environment
variable) connects to a running cluster, whose nodes must have grokscope installed and
see the sweep directory at the same path (a shared file system); otherwise a local Ray
starts on this machine with ``num_cpus`` CPUs (default: all of them) and stops when the
sweep ends. A sweep inside a process that already called ``ray.init()`` uses that.

Failures: a train process killed by a signal is restarted from its last checkpoint
inside the task (``train_point``); a worker that dies (a node lost, the task's process
killed) is retried by Ray up to ``max_retries`` times, and the retried task resumes the
run from its last checkpoint too (a train process dies with the worker that started it,
so no orphan trains on beside the retry).

Example:
    >>> RayOptions(cpus_per_run=2).remote_options()
    {'num_cpus': 2, 'num_gpus': 0, 'max_retries': 3, 'retry_exceptions': False}
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

INSTALL_HINT = "pip install 'grokscope[ray]'"


class RayMissingError(ImportError):
    """``ray`` is not installed; the message says how to install it."""


def require_ray() -> Any:
    """The ``ray`` module, or :class:`RayMissingError` naming the install command."""
    try:
        import ray
    except ImportError:
        raise RayMissingError(f"the Ray backend needs ray, which is not installed: {INSTALL_HINT}") from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Which Ray cluster runs a sweep, and what each point asks of it.

    Attributes:
        address: a running cluster (``auto``, ``ray://host:10001``, ``host:6379``);
            default: ``RAY_ADDRESS`` if set, else a new local Ray.
        num_cpus: CPUs of a new local Ray (default: the machine's); ignored with an address.
        cpus_per_run: CPUs each point's task reserves (also its train threads).
        gpus_per_run: GPUs each point's task reserves (fractions share a GPU).
        max_retries: Ray's retries of a task whose worker died.
    """

    address: str | None = None
    num_cpus: int | None = None
    cpus_per_run: float = 1
    gpus_per_run: float = 0
    max_retries: int = 3

    def __post_init__(self) -> None:
        if self.cpus_per_run <= 0:
            raise ValueError(f"cpus_per_run must be > 0, got {self.cpus_per_run}")
        if self.gpus_per_run < 0:
            raise ValueError(f"gpus_per_run must be >= 0, got {self.gpus_per_run}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"num_cpus must be >= 1, got {self.num_cpus}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")

    @property
    def cluster_address(self) -> str | None:
        """The address to connect to, or None for a new local Ray."""
        return self.address or os.environ.get("RAY_ADDRESS") or None

    def remote_options(self) -> dict[str, Any]:
        """The ``ray.remote`` options of one point's task."""
        return {"num_cpus": self.cpus_per_run, "num_gpus": self.gpus_per_run,
                "max_retries": self.max_retries, "retry_exceptions": False}


def run_jobs_ray(
    fn: Callable[[Any], dict[str, Any]],
    jobs: list[Any],
    options: RayOptions,
    on_done: Callable[[dict[str, Any]], None],
) -> list[dict[str, Any]]:
    """Run ``fn(job)`` for every job as a Ray task; ``on_done`` gets each result as it
    finishes (in finishing order). A task that fails for good gives
    ``{"name": job.name, "status": "failed (...)"}``; the other points go on.

    Raises:
        RayMissingError: ``ray`` is not installed.
    """
    ray = require_ray()
    if not jobs:
        return []
    started_here = False
    if not ray.is_initialized():
        address = options.cluster_address
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=options.num_cpus or os.cpu_count() or 1, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        started_here = True
    try:
        task = ray.remote(fn).options(**options.remote_options())
        pending = {task.remote(job): job for job in jobs}
        results = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    res = ray.get(ref)
                except ray.exceptions.RayError as e:
                    res = {"name": job.name, "status": f"failed ({type(e).__name__})"}
                results.append(res)
                on_done(res)
        return results
    finally:
        if started_here:
            ray.shutdown()
