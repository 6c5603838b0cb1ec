"""Ray backend of the evaluator contract (see evonas.evaluation.base): one Ray task per job.

- `RayEvaluator(address=None)` connects to the cluster at `address` ("auto", "ray://host:10001", "host:6379"),
  or starts a local Ray (no dashboard, quiet logs) when None; it reuses a Ray already initialised in this
  process and only shuts down a Ray it started itself.
- Each job is one task asking for `cpus_per_eval` CPUs and `gpus_per_eval` GPUs, never retried
  (max_retries=0: a crashed evaluation is recorded, not repeated behind our back). Given a `device` instead,
  the GPU request follows it: `cpu` asks for none; `cuda`/`cuda:N` for 1/evals_per_gpu of a GPU (Ray picks
  which one: N is not honoured across a cluster); `auto` for 1/evals_per_gpu when the cluster has GPUs, else
  none. Ray shows a task only the GPU it was given (CUDA_VISIBLE_DEVICES), so the job's device is rewritten
  to `cuda` (that GPU) or `cpu`; with evals_per_gpu > 1 the task also caps its share of the GPU's memory
  (EVONAS_GPU_MEMORY_FRACTION, see evonas.training.device).
- The task is a streaming generator that first reports that it started, so the time limit counts from the
  moment it runs on a worker (queueing for a free GPU does not count). Over the limit: `ray.cancel(force=True)`
  and "timed out after N s".
- Worker deaths (ray.exceptions.WorkerCrashedError, node failures, out of memory) and task errors become
  failed results with the Ray error's name and first line.
- A local Ray that the evaluator starts itself preloads the `allocator` into its workers, as the local backend
  does (`evonas.evaluation.allocator`, through the job's runtime environment). A cluster found by address, or a
  Ray already initialised in this process, keeps its own malloc: a library found here need not exist there.
Ray is optional: it is imported when a RayEvaluator is created.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

from evonas.errors import ConfigError
from evonas.evaluation.allocator import PRELOAD, preload_value, resolve_allocator
from evonas.evaluation.base import (
    Evaluator,
    Job,
    JobFn,
    OnResult,
    call_job,
    failed_result,
    result_from_message,
    train_job,
)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray backend needs Ray: pip install 'evonas[ray]'") from None
    return ray


MEMORY_FRACTION_ENV = "EVONAS_GPU_MEMORY_FRACTION"  # = evonas.training.device.MEMORY_FRACTION_ENV


def _ray_job(fn: JobFn, job: dict, env: dict[str, str] | None = None) -> Iterator[tuple]:
    """Ray task body: say that it started, set the environment, then run the job (exceptions: failed message)."""
    yield ("started", time.time())
    if env:
        os.environ.update(env)
    yield call_job(fn, Job.from_dict(job))


def gpu_request(device: str, evals_per_gpu: int, cluster_gpus: float) -> float:
    """GPUs one evaluation asks Ray for when training on `device` (see the module docstring)."""
    if device == "cpu" or (device == "auto" and cluster_gpus <= 0):
        return 0.0
    return 1.0 / evals_per_gpu


def _ray_error_reason(exc: BaseException) -> str:
    """One line naming what went wrong in Ray: worker death, task error, cancellation."""
    ray = _import_ray()
    if isinstance(exc, ray.exceptions.WorkerCrashedError | ray.exceptions.NodeDiedError):
        return f"worker died ({type(exc).__name__})"
    if isinstance(exc, ray.exceptions.OutOfMemoryError):
        return "worker died (OutOfMemoryError: killed by Ray's memory monitor)"
    cause = getattr(exc, "cause", None)
    if isinstance(exc, ray.exceptions.RayTaskError) and cause is not None:
        exc = cause
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}".rstrip(": ")


class RayEvaluator(Evaluator):
    """One Ray task per job on an existing cluster (by address) or a local Ray."""

    def __init__(
        self,
        address: str | None = None,
        timeout: float | None = None,
        gpus_per_eval: float | None = None,
        cpus_per_eval: float = 1,
        fn: JobFn = train_job,
        max_in_flight: int | None = None,
        num_cpus: int | None = None,
        device: str | None = None,
        evals_per_gpu: int = 1,
        allocator: str = "auto",
    ):
        if timeout is not None and not timeout > 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {timeout}")
        if (gpus_per_eval is not None and gpus_per_eval < 0) or cpus_per_eval < 0:
            raise ConfigError("gpus_per_eval and cpus_per_eval must be >= 0")
        if not isinstance(evals_per_gpu, int) or evals_per_gpu < 1:
            raise ConfigError(f"evals_per_gpu must be an integer >= 1, got {evals_per_gpu!r}")
        if device is not None and device not in ("auto", "cpu", "cuda") and not (
                device.startswith("cuda:") and device[5:].isdigit()):
            raise ConfigError(f"bad device {device!r}: expected auto, cpu, cuda or cuda:N")
        preload = resolve_allocator(allocator)
        ray = _import_ray()
        self.timeout = timeout
        self.fn = fn  # Ray serializes it (by reference for a module-level function)
        self.max_in_flight = max_in_flight
        self._owns_ray = False
        if not ray.is_initialized():
            # log_to_driver=False: what Ray workers print stays in Ray's logs, never in the search's display.
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                                      "log_to_driver": False}
            if address is None and num_cpus is not None:
                kwargs["num_cpus"] = num_cpus
            if address is None and preload is not None:  # a Ray on this machine: its workers find the library
                kwargs["runtime_env"] = {"env_vars": {PRELOAD: preload_value(preload, os.environ.get(PRELOAD))}}
            try:
                ray.init(address=address, **kwargs)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise ConfigError(f"cannot connect to Ray at {address or 'a new local instance'}: {exc}") from None
            self._owns_ray = True
        have = ray.cluster_resources()
        if gpus_per_eval is None:
            gpus_per_eval = gpu_request(device or "cpu", evals_per_gpu, have.get("GPU", 0))
        self.gpus_per_eval = gpus_per_eval
        # the device name inside the task: Ray shows it only its own GPU(s)
        self.job_device = None if device is None else ("cuda" if gpus_per_eval > 0 else "cpu")
        self.task_env: dict[str, str] = {} if self.job_device is None else {"EVONAS_DEVICE": self.job_device}
        if 0 < gpus_per_eval < 1:
            self.task_env[MEMORY_FRACTION_ENV] = f"{gpus_per_eval:.6g}"
        for name, need in (("GPU", gpus_per_eval), ("CPU", cpus_per_eval)):
            if need > have.get(name, 0):
                self.close()
                raise ConfigError(
                    f"each evaluation asks for {need:g} {name}, but the Ray cluster has {have.get(name, 0):g}"
                    + (" (train on CPU with --device cpu)" if name == "GPU" else "")
                )
        self._task = ray.remote(_ray_job).options(
            num_returns="streaming", max_retries=0, num_cpus=cpus_per_eval, num_gpus=gpus_per_eval
        )

    def run(self, jobs: Sequence[Job], on_result: OnResult) -> None:
        """Evaluate all jobs as Ray tasks; see the contract in evonas.evaluation.base."""
        ray = self._ray()
        pending = list(reversed(jobs))
        limit = self.max_in_flight or len(pending)
        inflight: dict[Any, list] = {}  # generator -> [job, start time on the worker or None]
        ok = False
        try:
            while pending or inflight:
                while pending and len(inflight) < limit:
                    job = pending.pop()
                    sent = job.on_device(self.job_device).to_dict()
                    inflight[self._task.remote(self.fn, sent, self.task_env)] = [job, None]
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=self._wait_time(inflight))
                if ready:  # take every generator that has something, not just the first
                    ready, _ = ray.wait(list(inflight), num_returns=len(inflight), timeout=0)
                for gen in ready:
                    job, started = inflight[gen]
                    try:
                        msg = ray.get(next(gen))
                    except StopIteration:
                        msg = ("failed", "task ended without a result", 0.0)
                    except ray.exceptions.RayError as exc:
                        ran = time.monotonic() - started if started is not None else 0.0
                        msg = ("failed", _ray_error_reason(exc), ran)
                    if msg[0] == "started":
                        inflight[gen][1] = time.monotonic()
                        continue
                    del inflight[gen]
                    on_result(job, result_from_message(job, msg))
                now = time.monotonic()
                for gen, (job, started) in list(inflight.items()):
                    if self.timeout is None or started is None or now - started <= self.timeout:
                        continue
                    if ray.wait([gen], num_returns=1, timeout=0)[0]:
                        continue  # finished just now: collected in the next round, not killed
                    ray.cancel(gen, force=True)  # hung, possibly in C code: kill its worker
                    del inflight[gen]
                    on_result(job, failed_result(job, f"timed out after {self.timeout:g} s", now - started))
            ok = True
        finally:
            if not ok:
                # Interrupt (not kill) what nobody will collect: a force-cancel of a task that has just
                # finished could kill the worker that already runs the next task.
                for gen in inflight:
                    ray.cancel(gen, force=False)

    def _wait_time(self, inflight: dict) -> float:
        """Seconds to wait for the next event: until the nearest deadline, at most 1 s."""
        if self.timeout is None:
            return 1.0
        starts = [s for _, s in inflight.values() if s is not None]
        if not starts:
            return 1.0
        return min(1.0, max(0.0, min(starts) + self.timeout - time.monotonic()) + 0.01)

    def _ray(self) -> Any:
        ray = _import_ray()
        if not ray.is_initialized():
            raise ConfigError("Ray was shut down; create a new RayEvaluator")
        return ray

    def close(self) -> None:
        """Shut down Ray if this evaluator started it."""
        if self._owns_ray:
            ray = _import_ray()
            if ray.is_initialized():
                ray.shutdown()
            self._owns_ray = False
