"""Build the evaluator a run asks for (local worker processes or Ray) from its config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evonas.evaluation.base import Evaluator


def make_evaluator(cfg: Any, log: Path | None = None) -> Evaluator:
    """The evaluator named by a run config (`backend`, `device`, `workers`, `eval_timeout`, `ray_address`,
    `train.threads`): local processes or Ray; local workers write their output to `log`."""
    if cfg.backend == "ray":
        from evonas.evaluation.ray_backend import RayEvaluator

        gpus = 1 if cfg.device.startswith("cuda") else 0
        return RayEvaluator(address=cfg.ray_address, timeout=cfg.eval_timeout, gpus_per_eval=gpus)
    from evonas.evaluation import LocalEvaluator

    devices = None  # auto on a machine without GPUs: workers inherit the environment
    if cfg.device == "cpu" or ":" in cfg.device:
        devices = [cfg.device]
    elif cfg.device in ("cuda", "auto"):
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n:  # one device per worker, round robin over the GPUs
            devices = [f"cuda:{i}" for i in range(n)]
        elif cfg.device == "cuda":
            devices = ["cuda"]  # no GPU visible: each evaluation fails with the training code's message
    return LocalEvaluator(workers=cfg.workers, timeout=cfg.eval_timeout, devices=devices,
                          threads=cfg.train.get("threads"), log=log)
