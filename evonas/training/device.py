"""Pick the torch device for training: `auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`."""

from __future__ import annotations

import re

import torch

from evonas.errors import ConfigError

_CUDA = re.compile(r"cuda(?::(\d+))?\Z")


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
        raise ConfigError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return torch.device(name)
