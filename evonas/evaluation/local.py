"""LocalEvaluator: worker processes on this machine (the contract is in `evonas.evaluation.base`).
`LocalEvaluator` specifics: spawned processes (never fork: safe with torch/CUDA), one job at a time per
worker, the time limit counted from the moment the job is handed to a ready worker (startup and imports
excluded), a hung worker SIGKILLed; worker `i` is pinned to `devices[i % len(devices)]` and gets
OMP/MKL/torch threads = max(1, cores // workers).
Devices, as this (parent) process names them: "cpu" hides the GPUs; "cuda:N" shows the worker only GPU N
(CUDA_VISIBLE_DEVICES set to the physical GPU behind the parent's index N), which the worker sees as
`cuda:0`; "cuda" inherits the parent's GPUs; None inherits everything. The worker exports its own name of
the device as EVONAS_DEVICE and rewrites each job's `config["device"]` to it, so training runs on the device
the worker was given under a name it can see. With `evals_per_gpu` > 1 (several workers on one GPU) each GPU
worker exports EVONAS_GPU_MEMORY_FRACTION = 1/evals_per_gpu (see `evonas.training.device`).
Workers ignore Ctrl-C and SIGTERM (the parent handles them and stops its workers, so an interrupted
evaluation is never recorded as a failure) and exit by themselves within a second when the parent dies.
With `log`, a worker's stdout and stderr (its file descriptors, so C libraries too) go to the end of that
file instead of the parent's terminal (the search passes RUN/workers.log).
Workers start with the allocator `allocator` names preloaded (default `auto`: tcmalloc or jemalloc when
installed, see `evonas.evaluation.allocator`); each reports the one it runs with (`worker_allocators`).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle  # only to name its error: workers send results through multiprocessing pipes
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Any

from evonas.errors import ConfigError
from evonas.evaluation.allocator import PRELOAD, loaded_allocator, preload_value, resolve_allocator
from evonas.evaluation.base import (
    Evaluator,
    Job,
    JobFn,
    OnResult,
    call_job,
    describe_exception,
    failed_result,
    fn_reference,
    resolve_fn,
    result_from_message,
    train_job,
)

# Consecutive worker deaths before any job was handed over, after which the pool gives up.
MAX_START_FAILURES = 3
# Seconds a new worker may take to start (interpreter, imports of the job function's module) before it is killed.
STARTUP_TIMEOUT = 300.0
# = evonas.training.device.MEMORY_FRACTION_ENV (not imported: that module imports torch)
MEMORY_FRACTION_ENV = "EVONAS_GPU_MEMORY_FRACTION"


def default_threads(workers: int) -> int:
    """Torch threads per worker: the machine's cores shared evenly, at least one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, workers))


def physical_gpu(index: int) -> str:
    """The CUDA_VISIBLE_DEVICES entry of this process's GPU `index` (its own list when set, else the index)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return str(index)
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if index >= len(entries):
        raise ConfigError(f"device 'cuda:{index}' requested but CUDA_VISIBLE_DEVICES={visible!r} shows "
                          f"{len(entries)} GPU(s)")
    return entries[index]


def _device_env(device: str | None, memory_fraction: float | None = None) -> dict[str, str]:
    """Environment pinning a worker to `device` ("cpu", "cuda", "cuda:N"; None = inherit)."""
    if device is None:
        return {}
    if device == "cpu":
        return {"CUDA_VISIBLE_DEVICES": "", "EVONAS_DEVICE": "cpu"}
    if device == "cuda":
        env = {"EVONAS_DEVICE": "cuda"}
    elif device.startswith("cuda:") and device[5:].isdigit():
        env = {"CUDA_VISIBLE_DEVICES": physical_gpu(int(device[5:])), "EVONAS_DEVICE": "cuda:0"}
    else:
        raise ConfigError(f"bad device {device!r}: expected cpu, cuda or cuda:N")
    if memory_fraction is not None:
        env[MEMORY_FRACTION_ENV] = f"{memory_fraction:.6g}"
    return env


# ---------------------------------------------------------------- local process pool


def _watch_parent(parent_pid: int) -> None:
    """Exit this worker as soon as the process that started it is gone (no orphaned training)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(1)


def _redirect_output(path: str, malloc: str) -> None:
    """Send this process's stdout and stderr (file descriptors 1 and 2: C libraries too) to the end of `path`."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError:  # the log cannot be written: keep the terminal quiet all the same
        fd = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.reconfigure(line_buffering=True)
    print(f"--- {mp.current_process().name} (pid {os.getpid()}) started {time.strftime('%Y-%m-%d %H:%M:%S')}, "
          f"malloc: {malloc}", flush=True)


def _worker_main(conn: Any, fn_ref: Any, env: dict[str, str], threads: int, parent_pid: int,
                 log: str | None = None) -> None:
    """Worker process: output to `log` (when given), set up threads/device, then answer one job at a time."""
    malloc = loaded_allocator()
    if log is not None:
        _redirect_output(log, malloc)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and SIGTERM are the parent's to handle
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    os.environ.update(env)
    device = env.get("EVONAS_DEVICE")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    try:
        fn = resolve_fn(fn_ref)
    except Exception as exc:  # reported to the parent, which stops spawning workers
        conn.send(("fatal", f"cannot load job function: {describe_exception(exc)}"))
        return
    try:
        conn.send(("ready", os.getpid(), malloc))
    except OSError:  # BrokenPipeError: the parent was killed while this worker started; exit quietly
        return
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
        reply = call_job(fn, Job.from_dict(msg).on_device(device))
        try:
            conn.send(reply)
        except OSError:  # BrokenPipeError: the parent is gone (killed); exit quietly, nobody is listening
            return
        except (TypeError, AttributeError, ValueError, pickle.PicklingError) as exc:  # unpicklable result
            conn.send(("failed", f"result cannot be sent back: {describe_exception(exc)}", 0.0))


_ENVIRON_LOCK = threading.Lock()


@contextlib.contextmanager
def _preloading(library: Path | None) -> Iterator[None]:
    """While a worker starts: `library` preloaded in the environment it inherits (spawn takes this process's
    environment when it executes the new interpreter, and a library must be preloaded from its start)."""
    if library is None:
        yield
        return
    with _ENVIRON_LOCK:
        before = os.environ.get(PRELOAD)
        os.environ[PRELOAD] = preload_value(library, before)
        try:
            yield
        finally:
            if before is None:
                del os.environ[PRELOAD]
            else:
                os.environ[PRELOAD] = before


class _Worker:
    """Parent-side handle of one worker process."""

    def __init__(self, ctx: Any, slot: int, fn_ref: Any, device: str | None, threads: int,
                 memory_fraction: float | None = None, log: str | None = None, preload: Path | None = None):
        self.slot, self.device = slot, device
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(
            target=_worker_main,
            args=(child_conn, fn_ref, _device_env(device, memory_fraction), threads, os.getpid(), log),
            name=f"evonas-worker-{slot}",
        )
        with _preloading(preload):
            self.proc.start()
        child_conn.close()
        self.conn = parent_conn
        self.ready = False
        self.allocator: str | None = None  # the malloc the worker reports it runs with (once ready)
        self.job: Job | None = None
        self.started = 0.0
        self.spawned = time.monotonic()

    def assign(self, job: Job) -> bool:
        """Hand one job over and start its clock; False if the worker is already gone."""
        try:
            self.conn.send(job.to_dict())
        except OSError:  # died while idle; noticed and replaced by the next service round
            return False
        self.job, self.started = job, time.monotonic()
        return True

    def kill(self) -> None:
        """SIGKILL the process and release the pipe."""
        if self.proc.exitcode is None:
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()

    def stop(self) -> None:
        """Ask the process to exit, kill it if it does not."""
        if self.proc.exitcode is None and not self.conn.closed:
            try:
                self.conn.send(None)
            except OSError:
                pass  # already gone
            self.proc.join(2)
        self.kill()


def _death_reason(exitcode: int | None) -> str:
    """'worker died (exit code -9, SIGKILL)'."""
    if exitcode is not None and exitcode < 0:
        try:
            return f"worker died (exit code {exitcode}, {signal.Signals(-exitcode).name})"
        except ValueError:
            pass
    return f"worker died (exit code {exitcode})"


def _shutdown(workers: list[_Worker]) -> None:
    for w in workers:
        w.stop()
    workers.clear()


class LocalEvaluator(Evaluator):
    """N worker processes (spawned) on this machine, each pinned to a device; a time limit per evaluation."""

    def __init__(
        self,
        workers: int = 1,
        timeout: float | None = None,
        devices: Sequence[str | None] | None = None,
        fn: JobFn = train_job,
        threads: int | None = None,
        startup_timeout: float = STARTUP_TIMEOUT,
        evals_per_gpu: int = 1,
        log: str | os.PathLike | None = None,
        allocator: str = "auto",
    ):
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        if not isinstance(evals_per_gpu, int) or evals_per_gpu < 1:
            raise ConfigError(f"evals_per_gpu must be an integer >= 1, got {evals_per_gpu!r}")
        self.memory_fraction = 1.0 / evals_per_gpu if evals_per_gpu > 1 else None
        if timeout is not None and not timeout > 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {timeout}")
        self.n_workers = int(workers)
        self.timeout = timeout
        self.devices = list(devices) if devices else [None]
        for d in self.devices:
            _device_env(d)  # validates
        self.fn_ref = fn_reference(fn)
        if not callable(self.fn_ref):
            resolve_fn(self.fn_ref)  # fail here, not in every worker
        self.threads = threads or default_threads(self.n_workers)
        self.startup_timeout = startup_timeout
        self.log = os.fspath(log) if log is not None else None  # where workers print (None: this process's streams)
        self.preload = resolve_allocator(allocator)  # the library preloaded into workers (None: system malloc)
        self._ctx = mp.get_context("spawn")
        self._workers: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)

    def _spawn(self, slot: int) -> _Worker:
        return _Worker(self._ctx, slot, self.fn_ref, self.devices[slot % len(self.devices)], self.threads,
                       self.memory_fraction, self.log, self.preload)

    def worker_devices(self) -> list[str | None]:
        """The device (as this process names it) each worker slot is pinned to."""
        return [self.devices[i % len(self.devices)] for i in range(self.n_workers)]

    def worker_allocators(self) -> list[str | None]:
        """The malloc each running worker reported ("tcmalloc", "jemalloc", "system"; None until it is ready)."""
        return [w.allocator for w in self._workers]

    def run(self, jobs: Sequence[Job], on_result: OnResult) -> None:
        """Evaluate all jobs; see the module contract."""
        pending = deque(jobs)
        if not pending:
            return
        while len(self._workers) < self.n_workers:
            self._workers.append(self._spawn(len(self._workers)))
        start_failures, give_up = 0, ""
        ok = False
        try:
            while pending or any(w.job is not None for w in self._workers):
                if give_up and not self._workers:
                    while pending:
                        job = pending.popleft()
                        on_result(job, failed_result(job, f"worker failed to start: {give_up}"))
                    break
                for w in self._workers:
                    if w.ready and w.job is None and pending and w.assign(pending[0]):
                        pending.popleft()
                mp_wait([w.conn for w in self._workers] + [w.proc.sentinel for w in self._workers], self._wait_time())
                for w in list(self._workers):
                    reason = self._service(w, on_result)
                    if reason is None:
                        continue
                    w.kill()
                    slot = self._workers.index(w)
                    if w.job is not None:
                        job, seconds, w.job = w.job, time.monotonic() - w.started, None
                        start_failures = 0
                        on_result(job, failed_result(job, reason, seconds))
                    elif not w.ready:
                        start_failures += 1
                    if reason.startswith("cannot load") or start_failures >= MAX_START_FAILURES:
                        give_up = reason
                    if give_up:
                        del self._workers[slot]
                    else:
                        self._workers[slot] = self._spawn(w.slot)
            ok = True
        finally:
            if not ok:  # on_result raised or we were interrupted: stop the work nobody will collect
                for w in [w for w in self._workers if w.job is not None]:
                    w.kill()
                    self._workers.remove(w)  # respawned by the next run

    def _wait_time(self) -> float | None:
        """Seconds until the nearest deadline of a busy or starting worker (None = wait for an event)."""
        deadlines = [w.spawned + self.startup_timeout for w in self._workers if not w.ready]
        if self.timeout is not None:
            deadlines += [w.started + self.timeout for w in self._workers if w.job is not None]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic()) + 0.01

    def _service(self, w: _Worker, on_result: OnResult) -> str | None:
        """Read what the worker sent; report results; return why it is dead/killed, or None if healthy."""
        if w.conn.closed:
            return _death_reason(w.proc.exitcode)
        while True:
            try:
                if not w.conn.poll():
                    break
                msg = w.conn.recv()
            except (EOFError, OSError):
                w.proc.join(5)
                return _death_reason(w.proc.exitcode)
            if msg[0] == "ready":
                w.ready = True
                w.allocator = msg[2]
            elif msg[0] == "fatal":
                return msg[1]
            elif w.job is not None:
                job, w.job = w.job, None
                on_result(job, result_from_message(job, msg))
        if w.proc.exitcode is not None:
            return _death_reason(w.proc.exitcode)
        if w.job is not None and self.timeout is not None and time.monotonic() - w.started > self.timeout:
            return f"timed out after {self.timeout:g} s"
        if not w.ready and time.monotonic() - w.spawned > self.startup_timeout:
            return f"worker did not start within {self.startup_timeout:g} s"
        return None

    def close(self) -> None:
        """Stop all worker processes."""
        _shutdown(self._workers)
