"""`evonas.training.datasets` and `evonas data`: fetch over file:// and a loopback HTTP server (good, corrupt,
truncated, server error), checksums, safe archive extraction, the cache, and tasks reading a data-set name.
No test reaches beyond 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from evonas.cli.main import cli

from evonas.errors import DataError
from evonas.training import datasets
from evonas.training.datasets import DataSet, Member
from evonas.training.tasks import get_task

MUSIC = json.dumps({"train": [[[60, 64], [62], [60, 67]], [[55], [57, 60]]], "valid": [[[60], [62]]],
                    "test": [[[64], [65], [67]]]}).encode()
SPLITS = {"train": b"the cat sat\nthe dog sat\n", "valid": b"the cat\n", "test": b"the dog\n"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def tar_gz(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


PTB_MEMBERS = {f"./simple/data/ptb.{s}.txt": SPLITS[s] for s in SPLITS}
PTB_ARCHIVE = tar_gz({**PTB_MEMBERS, "../../evil.txt": b"outside", "/abs.txt": b"absolute"})
WIKI_ARCHIVE = zip_bytes({f"wiki/wiki.{s}.tokens": SPLITS[s] for s in SPLITS} | {"../evil.txt": b"x"})


class Server:
    """A loopback HTTP server: path -> (status, body, declared length or None)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes, int | None]] = {}
        routes = self.routes

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                status, body, length = routes.get(self.path, (404, b"missing", None))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, server: Server) -> Path:
    """Fake data sets served by the loopback server; EVONAS_DATA points at a fresh cache."""
    server.routes.update({"/music.json": (200, MUSIC, None), "/ptb.tgz": (200, PTB_ARCHIVE, None),
                          "/wiki.zip": (200, WIKI_ARCHIVE, None)})
    sets = [
        DataSet("tiny", "music", "tiny music", server.url("/music.json"), (Member("tiny.json"),), sha256=sha(MUSIC)),
        DataSet("loose", "music", "no checksum", server.url("/music.json"), (Member("loose.json"),)),
        DataSet("ptbish", "text", "tar.gz, pins on members", server.url("/ptb.tgz"),
                tuple(Member(f"ptb.{s}.txt", f"simple/data/ptb.{s}.txt", md5=md5(SPLITS[s]),
                             sha256=sha(SPLITS[s]) if s != "train" else None) for s in SPLITS),
                archive="tar.gz", level="word"),
        DataSet("wikish", "text", "zip, md5 on the archive", server.url("/wiki.zip"),
                tuple(Member(f"{s}.txt", f"wiki/wiki.{s}.tokens") for s in SPLITS), md5=md5(WIKI_ARCHIVE),
                archive="zip"),
    ]
    monkeypatch.setattr(datasets, "REGISTRY", {d.name: d for d in sets})
    root = tmp_path / "cache"
    monkeypatch.setenv("EVONAS_DATA", str(root))
    return root


def cache_is_empty(root: Path) -> bool:
    return not root.exists() or not any(root.iterdir())


def test_fetch_over_http_verifies_and_caches(registry: Path) -> None:
    m = datasets.fetch("tiny")
    assert m["verified"] == "sha256" and m["download_sha256"] == sha(MUSIC)
    assert (registry / "tiny" / "tiny.json").read_bytes() == MUSIC
    assert sorted(p.name for p in registry.iterdir()) == ["tiny"]  # no temporary files left
    task = get_task("music", "tiny")
    assert task.describe().startswith("music:tiny.json")
    with pytest.raises(DataError, match="already cached"):
        datasets.fetch("tiny")
    assert datasets.fetch("tiny", force=True)["verified"] == "sha256"


def test_fetch_from_a_file_url(registry: Path, tmp_path: Path) -> None:
    src = tmp_path / "copy.json"
    src.write_bytes(MUSIC)
    m = datasets.fetch("tiny", url=src.as_uri())
    assert m["url"] == src.as_uri() and m["verified"] == "sha256"


@pytest.mark.parametrize("route,message", [
    ((200, MUSIC[:-5] + b"XXXXX", None), "does not match the expected"),  # corrupt: same length, other bytes
    ((200, MUSIC[:100], len(MUSIC)), "truncated"),  # the server closes before the declared length
    ((500, b"oops", None), "server answered 500"),
    ((404, b"", None), "server answered 404"),
    ((200, b"", None), "empty"),
])
def test_bad_downloads_are_refused_and_leave_nothing(registry: Path, server: Server, route, message) -> None:
    server.routes["/music.json"] = route
    with pytest.raises(DataError, match=message):
        datasets.fetch("tiny")
    assert cache_is_empty(registry)
    with pytest.raises(DataError, match="run: evonas data fetch tiny"):
        get_task("music", "tiny")


def test_unreachable_and_unsupported_urls(registry: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot fetch"):
        datasets.fetch("tiny", url=(tmp_path / "missing.json").as_uri())
    with pytest.raises(DataError, match="only http, https, file"):
        datasets.fetch("tiny", url="ftp://127.0.0.1/x")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(DataError, match="cannot use as the data cache"):
        datasets.fetch("tiny", root=tmp_path / "a_file")
    assert cache_is_empty(registry)


def test_unpinned_source_needs_sha256_or_no_verify(registry: Path) -> None:
    with pytest.raises(DataError, match="--sha256 HEX .* --no-verify"):
        datasets.fetch("loose")
    assert cache_is_empty(registry)
    with pytest.raises(DataError, match="does not match"):
        datasets.fetch("loose", sha256="0" * 64)
    with pytest.raises(DataError, match="64 hex digits"):
        datasets.fetch("loose", sha256="abc")
    assert cache_is_empty(registry)
    assert datasets.fetch("loose", sha256=sha(MUSIC))["verified"] == "sha256 (--sha256)"
    m = datasets.fetch("loose", no_verify=True, force=True)
    assert m["verified"] == "no (--no-verify)" and m["download_sha256"] == sha(MUSIC)


def test_tar_archive_extracts_only_the_named_files(registry: Path, tmp_path: Path) -> None:
    m = datasets.fetch("ptbish")
    assert m["verified"] == "files: cited md5 + sha256"
    assert sorted(p.name for p in (registry / "ptbish").iterdir()) == [
        "evonas-data.json", "ptb.test.txt", "ptb.train.txt", "ptb.valid.txt"]
    assert not (tmp_path / "evil.txt").exists() and not (registry / "evil.txt").exists()
    task = get_task("text", "ptbish")
    assert "the" in task.vocab and "cat" in task.vocab


def test_zip_archive_and_a_corrupt_member(registry: Path, server: Server) -> None:
    assert datasets.fetch("wikish")["verified"] == "cited md5"
    assert (registry / "wikish" / "valid.txt").read_bytes() == SPLITS["valid"]
    bad = tar_gz({**PTB_MEMBERS, "./simple/data/ptb.valid.txt": b"changed\n"})
    server.routes["/ptb.tgz"] = (200, bad, None)
    with pytest.raises(DataError, match="ptb.valid.txt: sha256 .* does not match"):
        datasets.fetch("ptbish")
    assert sorted(p.name for p in registry.iterdir()) == ["wikish"]


def test_archive_with_a_link_or_a_missing_member_is_refused(registry: Path, server: Server) -> None:
    members = {k: v for k, v in PTB_MEMBERS.items() if "train" not in k}
    server.routes["/ptb.tgz"] = (200, tar_gz(members, links={"simple/data/ptb.train.txt": "/etc/passwd"}), None)
    with pytest.raises(DataError, match="has no file simple/data/ptb.train.txt"):
        datasets.fetch("ptbish")
    server.routes["/ptb.tgz"] = (200, b"not an archive at all", None)
    with pytest.raises(DataError, match="not a readable tar.gz archive"):
        datasets.fetch("ptbish")
    assert cache_is_empty(registry)


def test_names_and_paths_for_tasks(registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match="is a music data set, not one for the text task"):
        get_task("text", "tiny")
    path = tmp_path / "own.json"
    path.write_bytes(MUSIC)
    assert get_task("music", str(path)).describe().startswith("music:own.json")  # a path still works
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").write_bytes(MUSIC)  # an existing file of that name is used as a path
    assert datasets.resolve("music", "tiny") == "tiny"


def test_data_root_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EVONAS_DATA", str(tmp_path / "a"))
    assert datasets.data_root() == tmp_path / "a"
    monkeypatch.delenv("EVONAS_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert datasets.data_root() == tmp_path / "xdg" / "evonas" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert datasets.data_root() == tmp_path / "home" / ".cache" / "evonas" / "data"


def test_registry_entries_are_consistent() -> None:
    """Every real entry: a task that exists, a cited https/http URL, hex pins, the layout its task reads."""
    for ds in datasets.REGISTRY.values():
        assert ds.task in ("music", "text") and ds.url.startswith(("http://", "https://")), ds.name
        for pin, n in [(ds.sha256, 64), (ds.md5, 32)] + [(p, n) for f in ds.files for p, n in ((f.sha256, 64),
                                                                                             (f.md5, 32))]:
            assert pin is None or (len(pin) == n and int(pin, 16) >= 0), ds.name
        if ds.task == "text":
            names = {f.name for f in ds.files}
            assert names in ({"ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"}, {"train.txt", "valid.txt", "test.txt"})
            assert ds.archive in ("tar.gz", "zip")
    assert datasets.REGISTRY["jsb"].sha256 == "2db9329f1881a1d3f49703ec556bf1d6f84b4f6c1d702c156536e93cf31e1c91"


SHARED_JSB = Path("/work/shared/data/jsb_chorales/jsb-chorales-quarter.json")


@pytest.mark.skipif(not SHARED_JSB.is_file(), reason="the shared JSB copy exists on the dev machine only")
def test_real_jsb_entry_verifies_the_shared_copy(tmp_path: Path) -> None:
    m = datasets.fetch("jsb", root=tmp_path, url=SHARED_JSB.as_uri())
    assert m["verified"] == "sha256"


def run(*args: str):
    return CliRunner().invoke(cli, list(args), obj={}, catch_exceptions=False)


def test_cli_fetch_and_list(registry: Path, server: Server) -> None:
    result = run("data", "list")
    assert result.exit_code == 0 and f"cache {registry}" in result.stdout
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:]}
    assert rows["tiny"][1:4] == ["music", "sha256", "no"] and rows["loose"][2] == "none"
    result = run("data", "fetch", "tiny")
    assert result.exit_code == 0, result.output
    assert "verified sha256" in result.stdout and str(registry / "tiny" / "tiny.json") in result.stdout
    assert result.stderr == ""  # not a terminal: no progress bar
    listed = json.loads(run("data", "list", "--json").stdout)["datasets"]
    tiny = next(r for r in listed if r["name"] == "tiny")
    assert tiny["cached"] and tiny["bytes"] == len(MUSIC) and tiny["verified"] == "sha256"
    server.routes["/ptb.tgz"] = (500, b"", None)
    result = run("data", "fetch", "ptbish")
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    result = run("data", "fetch", "nope")
    assert result.exit_code == 2 and "unknown data set 'nope'" in result.stderr


def test_cli_train_with_a_data_set_name(registry: Path) -> None:
    result = run("train", "tanh_rnn", "--task", "music", "--data", "tiny", "--steps", "2", "--hidden", "4")
    assert result.exit_code == 2 and "run: evonas data fetch tiny" in result.stderr
    assert run("data", "fetch", "tiny").exit_code == 0
    result = run("train", "tanh_rnn", "--task", "music", "--data", "tiny", "--steps", "2", "--hidden", "4",
                 "--threads", "1", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "ok"


def test_progress_bar_draws_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from evonas.cli.data import _Bar

    bar = _Bar("tiny")
    bar(500, 1000)
    bar(1000, 1000)
    err = capsys.readouterr().err
    assert err.startswith("\rfetching tiny [") and "100.0%" in err and "\n" not in err
