"""Build the evaluator a run asks for: local worker processes or Ray, on CPU or GPUs, with GPU packing.

Local backend, device by device (GPU indices as this process sees them):
- `cpu`: every worker pinned to the CPU (GPUs hidden).
- `auto`: the GPUs when there are any (as `cuda`), else the CPU.
- `cuda`: all visible GPUs; `cuda:N`: GPU N only. No GPU (or no GPU N) is a ConfigError before any work.
- On GPUs, worker i runs on GPU i mod G (round robin), in its own process, and sees it as `cuda:0`.
  At most `evals_per_gpu` workers share a GPU: more workers than G x evals_per_gpu are cut down to that
  (with a warning), fewer leave room unused.
Ray backend: see `evonas.evaluation.ray_backend` (fractional GPUs, 1/evals_per_gpu per evaluation).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from evonas.errors import ConfigError
from evonas.evaluation.base import Evaluator, JobFn, train_job

DEVICES_HELP = "auto, cpu, cuda or cuda:N"


def visible_gpus() -> int:
    """CUDA devices this process can see (0 without CUDA); imports torch."""
    from evonas.training.device import gpu_count

    return gpu_count()


def local_devices(device: str, workers: int, evals_per_gpu: int, gpus: int | None = None) -> list[str]:
    """The device of each local worker (its length is the number of workers to start); ConfigError when the
    device is unknown or asks for a GPU this machine does not have. `gpus`: visible GPUs (None: ask torch)."""
    if not isinstance(device, str):
        raise ConfigError(f"device must be {DEVICES_HELP}, got {device!r}")
    if not isinstance(evals_per_gpu, int) or isinstance(evals_per_gpu, bool) or evals_per_gpu < 1:
        raise ConfigError(f"evals_per_gpu must be an integer >= 1, got {evals_per_gpu!r}")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if device == "cpu":
        return ["cpu"] * workers
    index: int | None = None
    if device.startswith("cuda:") and device[5:].isdigit():
        index = int(device[5:])
    elif device not in ("auto", "cuda"):
        raise ConfigError(f"device must be {DEVICES_HELP}, got {device!r}")
    n = visible_gpus() if gpus is None else gpus
    if n == 0:
        if device == "auto":
            return ["cpu"] * workers
        raise ConfigError(f"device {device!r} requested but this machine has no usable CUDA GPU "
                          f"(torch.cuda.is_available() is False); use --device cpu or auto")
    if index is not None and index >= n:
        raise ConfigError(f"device {device!r} requested but only {n} CUDA GPU(s) are visible (cuda:0..cuda:{n - 1})")
    ids = [index] if index is not None else list(range(n))
    capacity = len(ids) * evals_per_gpu
    if workers > capacity:
        warnings.warn(f"workers: {workers} asked, {capacity} used ({len(ids)} GPU(s) x evals_per_gpu "
                      f"{evals_per_gpu}); raise evals_per_gpu to put more evaluations on each GPU", stacklevel=2)
        workers = capacity
    return [f"cuda:{ids[i % len(ids)]}" for i in range(workers)]


def make_evaluator(backend: str = "local", device: str = "auto", workers: int = 1, timeout: float | None = None,
                   threads: int | None = None, ray_address: str | None = None, evals_per_gpu: int = 1,
                   fn: JobFn = train_job, log: Path | None = None, allocator: str = "auto") -> Evaluator:
    """The evaluator for these settings (local processes or Ray); device and allocator errors are raised here,
    before work. Local workers write what they print to `log` (the run's workers.log) and run with the malloc
    `allocator` names (`evonas.evaluation.allocator`; on Ray, only a local Ray the evaluator starts itself)."""
    if backend == "ray":
        from evonas.evaluation.ray_backend import RayEvaluator

        return RayEvaluator(address=ray_address, timeout=timeout, device=device, evals_per_gpu=evals_per_gpu, fn=fn,
                            allocator=allocator)
    if backend != "local":
        raise ConfigError(f"backend must be local or ray, got {backend!r}")
    from evonas.evaluation.local import LocalEvaluator

    devices = local_devices(device, workers, evals_per_gpu)
    return LocalEvaluator(workers=len(devices), timeout=timeout, devices=devices, threads=threads, fn=fn,
                          evals_per_gpu=evals_per_gpu, log=log, allocator=allocator)
