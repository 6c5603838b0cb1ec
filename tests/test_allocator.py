"""The allocator preloaded into evaluation workers: how it is found, refused, and that workers really run with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import evaluator_jobs as jobs_mod
import pytest
from reliability_jobs import assert_one_line_error, run_cli

from evonas.errors import ConfigError
from evonas.evaluation import Job, LocalEvaluator
from evonas.evaluation.allocator import (
    allocator_of,
    find_library,
    loaded_allocator,
    preload_value,
    resolve_allocator,
)
from evonas.evolution.config import RunConfig

INSTALLED = resolve_allocator("auto")  # a real tcmalloc/jemalloc on this machine (.ci/run installs tcmalloc)


def fake_libs(folder: Path, *names: str) -> list[Path]:
    """A library folder holding empty files named like shared libraries."""
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return [folder]


def test_auto_prefers_tcmalloc_then_jemalloc_and_else_the_system(tmp_path):
    both = fake_libs(tmp_path / "both", "libjemalloc.so.2", "libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
    assert resolve_allocator("auto", both) == tmp_path / "both" / "libtcmalloc_minimal.so.4"
    only_je = fake_libs(tmp_path / "je", "libjemalloc.so.2", "libtcmalloc_minimal_debug.so.4")
    assert resolve_allocator("auto", only_je) == tmp_path / "je" / "libjemalloc.so.2"
    assert resolve_allocator("jemalloc", only_je) == tmp_path / "je" / "libjemalloc.so.2"
    assert resolve_allocator("auto", fake_libs(tmp_path / "none", "libc.so.6")) is None
    assert resolve_allocator("system", both) is None
    assert find_library("tcmalloc", both) == tmp_path / "both" / "libtcmalloc.so.4"
    assert [allocator_of(n) for n in ("libtcmalloc_minimal.so.4", "/x/libjemalloc.so.2", "libc.so.6")] == [
        "tcmalloc", "jemalloc", None]


def test_auto_adds_nothing_when_the_environment_already_preloads_an_allocator(tmp_path):
    both = fake_libs(tmp_path / "both", "libjemalloc.so.2", "libtcmalloc_minimal.so.4")
    assert resolve_allocator("auto", both, environ={"LD_PRELOAD": "/opt/libmimalloc.so.2"}) is None
    assert resolve_allocator("auto", both, environ={"LD_PRELOAD": "/x/libjemalloc.so.2"}) is None
    other = resolve_allocator("auto", both, environ={"LD_PRELOAD": "/x/libfoo.so"})
    assert other == both[0] / "libtcmalloc_minimal.so.4"
    assert resolve_allocator("tcmalloc", both, environ={"LD_PRELOAD": "/x/libjemalloc.so.2"}) is not None  # asked


def test_unusable_choices_are_config_errors_that_name_them(tmp_path):
    empty = fake_libs(tmp_path / "empty")
    with pytest.raises(ConfigError, match=r"allocator 'tcmalloc' is not installed .*apt install libtcmalloc"):
        resolve_allocator("tcmalloc", empty)
    with pytest.raises(ConfigError, match=r"allocator '/no/such/libx.so' is neither"):
        resolve_allocator("/no/such/libx.so", empty)
    for odd in ("~no_such_user_0/lib.so", "~\x00", "lib\x00.so"):  # found by the config fuzzer
        with pytest.raises(ConfigError, match="is neither"):
            resolve_allocator(odd, empty)
    with pytest.raises(ConfigError, match="allocator must be one of"):
        resolve_allocator("", empty)
    with pytest.raises(ConfigError, match="needs Linux"):
        resolve_allocator("jemalloc", fake_libs(tmp_path / "je", "libjemalloc.so.2"), platform="darwin")
    assert resolve_allocator("auto", fake_libs(tmp_path / "je", "libjemalloc.so.2"), platform="darwin") is None
    lib = tmp_path / "je" / "libjemalloc.so.2"
    assert resolve_allocator(str(lib), empty) == lib.resolve()  # a path to a library file is taken as it is
    with pytest.raises(ConfigError, match="allocator 'nope'"):
        RunConfig.from_dict({"allocator": "nope"})


def test_preloading_keeps_what_was_preloaded_before():
    assert preload_value(Path("/a/libtcmalloc.so.4"), None) == "/a/libtcmalloc.so.4"
    assert preload_value(Path("/a/libtcmalloc.so.4"), "/b/libx.so") == "/a/libtcmalloc.so.4:/b/libx.so"


def test_cli_refuses_an_unknown_allocator_in_one_line(tmp_path):
    proc = run_cli("evolve", "--allocator", "nope", "--out", str(tmp_path / "run"), timeout=120)
    assert_one_line_error(proc, "allocator 'nope' is neither")
    assert not (tmp_path / "run").exists()


def malloc_of_workers(allocator: str, workers: int = 2) -> tuple[set[str], list[str | None]]:
    """What each worker of a LocalEvaluator reports: (allocator|LD_PRELOAD) and the pool's own record."""
    got = {}
    with LocalEvaluator(workers=workers, fn=jobs_mod.scripted, allocator=allocator) as ev:
        jobs = [Job(key=f"malloc-{i}", cell=f"malloc-{i}", config={}, generation=0) for i in range(4)]
        ev.run(jobs, lambda job, r: got.__setitem__(job.key, r.reason))
        seen = ev.worker_allocators()
    return set(got.values()), seen


@pytest.mark.skipif(INSTALLED is None, reason="no tcmalloc/jemalloc installed (.ci/run installs tcmalloc)")
def test_workers_run_with_the_preloaded_allocator_and_the_parent_keeps_its_own():
    before = os.environ.get("LD_PRELOAD")
    reported, seen = malloc_of_workers("auto")
    kind = allocator_of(INSTALLED.name)
    assert reported == {f"{kind}|{INSTALLED}"}, reported
    assert len(seen) == 2 and kind in seen and set(seen) <= {kind, None}  # None: a worker not ready yet
    assert os.environ.get("LD_PRELOAD") == before  # only the workers' environment had it
    if before is None:
        assert loaded_allocator() == "system"  # this process keeps its own malloc


def test_system_choice_preloads_nothing():
    reported, seen = malloc_of_workers("system", workers=1)
    expected = os.environ.get("LD_PRELOAD", "-")
    assert reported == {f"{loaded_allocator()}|{expected}"}, reported
    assert seen == [loaded_allocator()]  # the one worker ran the jobs, so it was ready


RAY_MALLOC = """
import json, sys
sys.path.insert(0, {tests!r})
import evaluator_jobs
from evonas.evaluation import Job
from evonas.evaluation.ray_backend import RayEvaluator
got = {{}}
ev = RayEvaluator(fn=evaluator_jobs.scripted, num_cpus=1, allocator={allocator!r})
ev.run([Job("malloc-0", "malloc-0", {{}})], lambda job, r: got.update(reason=r.reason))
ev.close()
print(json.dumps(got))
"""


@pytest.mark.slow
@pytest.mark.skipif(INSTALLED is None, reason="no tcmalloc/jemalloc installed (.ci/run installs tcmalloc)")
def test_a_local_ray_the_evaluator_starts_preloads_the_allocator_into_its_workers():
    pytest.importorskip("ray")
    tests = str(Path(__file__).resolve().parent)
    kind = allocator_of(INSTALLED.name)
    for allocator, expected in (("auto", f"{kind}|{INSTALLED}"), ("system", "system|-")):
        proc = subprocess.run([sys.executable, "-c", RAY_MALLOC.format(tests=tests, allocator=allocator)],
                              capture_output=True, text=True, timeout=600,
                              env={**os.environ, "PYTHONPATH": tests, "RAY_memory_monitor_refresh_ms": "0"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(proc.stdout.strip().splitlines()[-1])["reason"] == expected
