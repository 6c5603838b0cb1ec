"""Conformance suite of the evaluator contract, run against every backend (local processes, Ray)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import evaluator_jobs as jobs_mod
import pytest

from evonas.errors import ConfigError
from evonas.evaluation import Evaluator, Job, LocalEvaluator

TESTS_DIR = str(Path(__file__).parent)
# With `pytest -n N --dist loadgroup` every Ray test runs in one xdist worker, so Ray starts once.
BACKENDS = ["local", pytest.param("ray", marks=pytest.mark.xdist_group("ray"))]


def make_jobs(*cells: str) -> list[Job]:
    return [Job(key=c, cell=c, config={"task": "synthetic", "seed": i}, generation=1) for i, c in enumerate(cells)]


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray for the whole module (startup takes seconds); workers import the fake jobs from tests/."""
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (TESTS_DIR, os.environ.get("PYTHONPATH")) if p))
        # On a shared machine, other processes' memory must not get our tiny workers killed by Ray's OOM monitor.
        mp.setenv("RAY_memory_monitor_refresh_ms", "0")
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", ignore_reinit_error=True)
        yield ray
        ray.shutdown()


@pytest.fixture
def make_evaluator(request):
    """make_evaluator(timeout=...) -> an evaluator of the parametrised backend running the scripted jobs."""
    made: list[Evaluator] = []

    def make(timeout: float | None = None, **kw) -> Evaluator:
        if request.param == "local":
            ev: Evaluator = LocalEvaluator(workers=2, timeout=timeout, fn=jobs_mod.scripted, **kw)
        else:
            request.getfixturevalue("ray_instance")
            from evonas.evaluation.ray_backend import RayEvaluator

            ev = RayEvaluator(timeout=timeout, fn=jobs_mod.scripted, **kw)
        made.append(ev)
        return ev

    yield make
    for ev in made:
        ev.close()


def collect(ev: Evaluator, jobs: list[Job]) -> dict:
    """Run and return key -> result, checking exactly-once and that on_result runs in this process."""
    got: dict = {}
    calls: list[tuple[int, str]] = []

    def on_result(job: Job, result) -> None:
        assert job.key not in got, f"{job.key} reported twice"
        calls.append((os.getpid(), threading.current_thread().name))
        got[job.key] = result

    ev.run(jobs, on_result)
    assert sorted(got) == sorted(j.key for j in jobs)
    assert set(calls) <= {(os.getpid(), threading.current_thread().name)}
    return got


@pytest.mark.parametrize("make_evaluator", BACKENDS, indirect=True)
def test_ok_results_come_back_intact(make_evaluator):
    ev = make_evaluator(timeout=60)
    keys = [f"ok-{i}" for i in range(5)]
    got = collect(ev, make_jobs(*keys))
    for k in keys:
        assert got[k].to_dict() == jobs_mod.ok_result(k), got[k].reason
    assert collect(ev, []) == {}


@pytest.mark.timeout(300)  # a pool that failed to recover would hang here
@pytest.mark.parametrize("make_evaluator", BACKENDS, indirect=True)
def test_faults_are_recorded_and_the_rest_still_run(make_evaluator):
    timeout = 2.0
    ev = make_evaluator(timeout=timeout)
    cells = ["ok-a", "raise-1", "exit-1", "kill-1", "hang-1", "ok-b", "ok-c", "none-1"]
    got = collect(ev, make_jobs(*cells))
    for k in ("ok-a", "ok-b", "ok-c"):
        assert got[k].status == "ok" and got[k].valid_loss == jobs_mod.loss_of(k), got[k].reason
    for k in ("raise-1", "exit-1", "kill-1", "hang-1", "none-1"):
        assert got[k].status == "failed", (k, got[k])
        assert got[k].cell == k and got[k].valid_loss is None
    assert "ValueError: boom in raise-1" in got["raise-1"].reason
    assert "died" in got["exit-1"].reason
    assert "died" in got["kill-1"].reason
    assert f"timed out after {timeout:g} s" == got["hang-1"].reason
    assert timeout <= got["hang-1"].seconds < timeout + 30
    assert 0 <= got["kill-1"].seconds < 30
    assert "NoneType" in got["none-1"].reason
    # the pool recovered: the same evaluator still works
    again = collect(ev, make_jobs("ok-d", "raise-2", "ok-e"))
    assert [again[k].status for k in ("ok-d", "raise-2", "ok-e")] == ["ok", "failed", "ok"]


@pytest.mark.parametrize("make_evaluator", BACKENDS, indirect=True)
def test_time_limit_counts_from_the_start_of_each_evaluation(make_evaluator):
    """Four 0.9 s jobs on two workers with a 1.6 s limit: waiting in the queue does not count."""
    ev = make_evaluator(timeout=1.6)
    got = collect(ev, make_jobs(*[f"sleep-0.9-{i}" for i in range(4)]))
    assert all(r.status == "ok" for r in got.values()), {k: r.reason for k, r in got.items()}


@pytest.mark.parametrize("make_evaluator", BACKENDS, indirect=True)
def test_error_in_on_result_propagates_and_evaluator_stays_usable(make_evaluator):
    ev = make_evaluator(timeout=30)

    def on_result(job, result):
        raise RuntimeError("archive full")

    with pytest.raises(RuntimeError, match="archive full"):
        ev.run(make_jobs("ok-1", "hang-2", "ok-2"), on_result)
    got = collect(ev, make_jobs("ok-3"))
    assert got["ok-3"].status == "ok", got["ok-3"].reason


def test_ray_error_reasons():
    ray = pytest.importorskip("ray")
    from evonas.evaluation.ray_backend import _ray_error_reason

    assert _ray_error_reason(ray.exceptions.WorkerCrashedError()) == "worker died (WorkerCrashedError)"
    assert _ray_error_reason(ray.exceptions.TaskCancelledError()).startswith("TaskCancelledError")
    assert _ray_error_reason(ray.exceptions.RayError("lost\nobject gone")) == "RayError: object gone"


@pytest.mark.xdist_group("ray")
def test_ray_refuses_resources_the_cluster_does_not_have(ray_instance):
    from evonas.evaluation.ray_backend import RayEvaluator

    with pytest.raises(ConfigError, match="asks for 1 GPU, but the Ray cluster has 0"):
        RayEvaluator(gpus_per_eval=1, fn=jobs_mod.scripted)
    assert ray_instance.is_initialized()  # a Ray it did not start is left alone


# ---------------------------------------------------------------- local pool specifics


def test_local_exit_codes_in_reasons():
    with LocalEvaluator(workers=1, timeout=30, fn=jobs_mod.scripted) as ev:
        got = collect(ev, make_jobs("kill-1", "exit-1", "unpicklable-1", "ok-1"))
    assert got["kill-1"].reason == "worker died (exit code -9, SIGKILL)"
    assert got["exit-1"].reason == "worker died (exit code 3)"
    assert got["unpicklable-1"].status == "failed" and "cannot be sent back" in got["unpicklable-1"].reason
    assert got["ok-1"].status == "ok"


def test_local_devices_round_robin_and_threads():
    with LocalEvaluator(workers=3, devices=["cpu", "cuda:1"], threads=2, fn=jobs_mod.scripted) as ev:
        got = collect(ev, make_jobs(*[f"env-{i}" for i in range(9)], *[f"pid-{i}" for i in range(6)]))
    envs = {got[f"env-{i}"].reason for i in range(9)}
    assert envs <= {"|cpu|2", "1|cuda:0|2"}  # the worker pinned to GPU 1 sees it as cuda:0
    pids = {got[f"pid-{i}"].reason for i in range(6)}
    assert 1 <= len(pids) <= 3 and str(os.getpid()) not in pids


def test_local_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="module-level"):
        LocalEvaluator(fn=lambda job: None)
    with pytest.raises(ConfigError, match="workers"):
        LocalEvaluator(workers=0, fn=jobs_mod.scripted)
    with pytest.raises(ConfigError, match="device"):
        LocalEvaluator(devices=["tpu"], fn=jobs_mod.scripted)
    with pytest.raises(ConfigError, match="timeout"):
        LocalEvaluator(timeout=0, fn=jobs_mod.scripted)


def test_local_gives_up_when_workers_cannot_start(monkeypatch):
    ev = LocalEvaluator(workers=2, timeout=30, fn=jobs_mod.scripted)
    monkeypatch.setenv("EVONAS_TEST_BREAK_IMPORT", "1")  # spawned workers fail to import the job module
    try:
        got = collect(ev, make_jobs("ok-1", "ok-2", "ok-3"))
    finally:
        ev.close()
    for r in got.values():
        assert r.status == "failed"
        assert "cannot load job function" in r.reason and "broken on purpose" in r.reason


def test_local_gives_up_when_workers_hang_at_startup(monkeypatch):
    ev = LocalEvaluator(workers=2, timeout=30, fn=jobs_mod.scripted, startup_timeout=0.5)
    monkeypatch.setenv("EVONAS_TEST_SLOW_IMPORT", "60")
    try:
        got = collect(ev, make_jobs("ok-1", "ok-2"))
    finally:
        ev.close()
    assert {r.reason for r in got.values()} == {"worker failed to start: worker did not start within 0.5 s"}


def test_local_workers_exit_when_the_parent_is_killed(tmp_path):
    pidfile = tmp_path / "worker.pid"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {TESTS_DIR!r})
        import evaluator_jobs
        from evonas.evaluation import Job, LocalEvaluator
        if __name__ == "__main__":
            ev = LocalEvaluator(workers=1, fn=evaluator_jobs.scripted)
            ev.run([Job("pidfile-1", "pidfile-1", {{"pidfile": {str(pidfile)!r}}})], print)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 120
        while not pidfile.exists() or not pidfile.read_text():
            assert time.monotonic() < deadline, "worker never started"
            assert proc.poll() is None, "parent exited early"
            time.sleep(0.05)
        worker = int(pidfile.read_text())
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 30
        while _alive(worker):
            assert time.monotonic() < deadline, "orphaned worker still running"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_local_worker_killed_while_idle_is_replaced():
    import signal

    with LocalEvaluator(workers=2, timeout=30, fn=jobs_mod.scripted) as ev:
        got = collect(ev, make_jobs("pid-1", "pid-2", "pid-3"))
        for pid in {int(r.reason) for r in got.values()}:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        again = collect(ev, make_jobs("ok-1", "ok-2", "ok-3", "ok-4"))
    assert all(r.status == "ok" for r in again.values())


def test_process_exits_cleanly_without_close():
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {TESTS_DIR!r})
        import evaluator_jobs
        from evonas.evaluation import Job, LocalEvaluator
        if __name__ == "__main__":
            ev = LocalEvaluator(workers=2, fn=evaluator_jobs.scripted)
            ev.run([Job("ok-1", "ok-1", {{}})], lambda j, r: print(r.status))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_local_worker_output_goes_to_the_log_not_the_terminal(tmp_path, capfd):
    """What workers print (Python streams and raw file descriptors) lands in the log file, never on ours."""
    log = tmp_path / "workers.log"
    with LocalEvaluator(workers=2, fn=jobs_mod.noisy, log=log) as ev:
        got = collect(ev, make_jobs("a", "b", "c"))
    assert all(r.status == "ok" for r in got.values())
    out, err = capfd.readouterr()
    assert "stdout" not in out + err and "fd1" not in out + err and "fd2" not in out + err, out + err
    text = log.read_text()
    for key in "abc":
        for what in ("python stdout", "python stderr", "fd1", "fd2"):
            assert f"{what} {key}\n" in text
    assert text.count("started") >= 1 and "evonas-worker-" in text
