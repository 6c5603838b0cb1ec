"""Fake job functions for the evaluator tests: module-level (picklable), fast, and faulty on demand.

`scripted` reads what to do from the job's cell text, "<action>-<anything>":
ok (a result whose valid_loss is derived from the key), raise, exit (os._exit(3)), kill (SIGKILL itself),
hang (sleeps far past any test timeout), env (reports its device environment in `reason`), pid, malloc
(its allocator and LD_PRELOAD),
gather (reports its worker's placement once `config["n"]` workers have each taken one gather job, so that
every worker is seen), resolve (simulates the GPUs that CUDA_VISIBLE_DEVICES shows, then reports what
`resolve_device` makes of the job's device).
They return the EvalResult dict form (allowed by the contract), so workers need not import torch.
"""

from __future__ import annotations

import json
import os
import signal
import time
import zlib
from pathlib import Path

if os.environ.get("EVONAS_TEST_BREAK_IMPORT"):
    raise ImportError("broken on purpose")
time.sleep(float(os.environ.get("EVONAS_TEST_SLOW_IMPORT", "0")))


def loss_of(key: str) -> float:
    """Deterministic fake validation loss for a key."""
    return 1.0 + (zlib.crc32(key.encode()) % 1000) / 1000


def ok_result(key: str, reason: str = "") -> dict:
    """A complete ok result for `key`."""
    return {"cell": key, "status": "ok", "reason": reason, "valid_loss": loss_of(key), "valid_ppl": None,
            "test_loss": None, "test_ppl": None, "params": len(key), "seconds": 0.01, "steps": 3, "epochs": 0.5,
            "cpu_seconds": 0.01, "curve": []}


def scripted(job) -> dict:  # noqa: ANN001 - evonas.evaluation.Job
    """Do what the job's cell text says (see the module docstring)."""
    action = job.cell.split("-", 1)[0]
    if action == "raise":
        raise ValueError(f"boom in {job.key}")
    if action == "exit":
        os._exit(3)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
    if action == "hang":
        time.sleep(3600)
    if action == "sleep":  # sleep-<seconds>-<tag>
        time.sleep(float(job.cell.split("-")[1]))
    if action == "env":
        env = f"{os.environ.get('CUDA_VISIBLE_DEVICES', '-')}|{os.environ.get('EVONAS_DEVICE', '-')}|"
        return ok_result(job.key, env + os.environ.get("OMP_NUM_THREADS", "-"))
    if action == "pid":
        return ok_result(job.key, str(os.getpid()))
    if action == "malloc":  # the allocator this worker runs with, and what it preloaded
        from evonas.evaluation.allocator import loaded_allocator

        return ok_result(job.key, f"{loaded_allocator()}|{os.environ.get('LD_PRELOAD', '-')}")
    if action == "gather":
        return ok_result(job.key, json.dumps(_gather(job)))
    if action == "resolve":
        return ok_result(job.key, _resolve_with_simulated_gpus(job.config["device"]))
    if action == "pidfile":  # write the worker pid where the test can find it, then hang
        with open(job.config["pidfile"], "w") as f:
            f.write(str(os.getpid()))
        time.sleep(3600)
    if action == "none":
        return None
    if action == "unpicklable":
        return {**ok_result(job.key), "extra": lambda: None}
    return ok_result(job.key)



def noisy(job) -> dict:  # noqa: ANN001 - evonas.evaluation.Job
    """Print through Python and straight to file descriptors 1 and 2 (as C code would), then succeed."""
    import sys

    print(f"python stdout {job.key}")
    print(f"python stderr {job.key}", file=sys.stderr)
    os.write(1, f"fd1 {job.key}\n".encode())
    os.write(2, f"fd2 {job.key}\n".encode())
    return ok_result(job.key)


def placement(job) -> dict:  # noqa: ANN001 - evonas.evaluation.Job
    """Where this worker process runs the job: pid, GPU visibility, its device names, memory cap."""
    return {"pid": os.getpid(), "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "evonas_device": os.environ.get("EVONAS_DEVICE"), "job_device": job.config.get("device"),
            "memory_fraction": os.environ.get("EVONAS_GPU_MEMORY_FRACTION")}


def _gather(job) -> dict:  # noqa: ANN001
    """Write this worker's placement to config["dir"], then wait until config["n"] workers have done so
    (each worker holds its job meanwhile, so n jobs reach n different workers)."""
    folder = Path(job.config["dir"])
    mine = placement(job)
    (folder / f"{os.getpid()}.json").write_text(json.dumps(mine))
    deadline = time.monotonic() + 120
    while len(list(folder.glob("*.json"))) < int(job.config["n"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return mine


def _resolve_with_simulated_gpus(device: str) -> str:
    """Pretend this process sees as many GPUs as CUDA_VISIBLE_DEVICES lists, then resolve `device`."""
    import torch

    from evonas.errors import ConfigError
    from evonas.training.device import resolve_device

    visible = [e for e in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if e.strip()]
    torch.cuda.is_available = lambda: bool(visible)
    torch.cuda.device_count = lambda: len(visible)
    try:
        return str(resolve_device(device))
    except ConfigError as e:
        return f"ConfigError: {e}"
