"""Pick the torch device for training: `auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`.

Device names are as this process sees them: a worker pinned to physical GPU 2 (CUDA_VISIBLE_DEVICES=2) sees
it as `cuda:0`. Evaluators pin workers and rewrite each job's device to the worker's own name (also exported
as EVONAS_DEVICE); when several evaluations share a GPU they export EVONAS_GPU_MEMORY_FRACTION (1/share), and
`limit_gpu_memory` caps this process's allocator at that fraction of the device, so an evaluation that needs
more than its share runs out of memory itself instead of starving its neighbours.
"""

from __future__ import annotations

import os
import re

import torch

from evonas.errors import ConfigError

_CUDA = re.compile(r"cuda(?::(\d+))?\Z")
MEMORY_FRACTION_ENV = "EVONAS_GPU_MEMORY_FRACTION"


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for `name`; ConfigError when CUDA is asked for and not available, or the name is unknown."""
    if not isinstance(name, str):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    m = _CUDA.match(name)
    if not m:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available on this machine (use auto or cpu)")
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) are "
                          f"visible to this process (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')})")
    return torch.device(name)


def gpu_count() -> int:
    """CUDA devices visible to this process (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def limit_gpu_memory(device: torch.device) -> float | None:
    """Cap this process's share of `device`'s memory at EVONAS_GPU_MEMORY_FRACTION (if set); returns the cap."""
    raw = os.environ.get(MEMORY_FRACTION_ENV)
    if device.type != "cuda" or not raw:
        return None
    try:
        fraction = float(raw)
    except ValueError:
        raise ConfigError(f"{MEMORY_FRACTION_ENV} must be a number in (0, 1], got {raw!r}") from None
    if not 0 < fraction <= 1:
        raise ConfigError(f"{MEMORY_FRACTION_ENV} must be a number in (0, 1], got {raw!r}")
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction
