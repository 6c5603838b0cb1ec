"""`evonas data fetch NAME` and `evonas data list`: the known data sets and the local cache."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click


@click.group()
def data() -> None:
    """Download the standard data sets (checksummed) into a cache that the tasks read by name (--data jsb)."""


class _Bar:
    """A one-line progress bar on stderr, redrawn at most 10 times a second."""

    def __init__(self, name: str):
        self.name = name
        self.last = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - self.last < 0.1 and done != total:
            return
        self.last = now
        if total:
            filled = int(30 * done / total)
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {100 * done / total:5.1f}%  {_size(done)} / {_size(total)}"
        else:
            bar = _size(done)
        sys.stderr.write(f"\rfetching {self.name} {bar}")
        sys.stderr.flush()


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


@data.command("fetch")
@click.argument("name")
@click.option("--dir", "root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache root (default: $EVONAS_DATA, else $XDG_CACHE_HOME/evonas/data or ~/.cache/evonas/data).")
@click.option("--url", default=None, help="Fetch from this URL instead (a mirror, or file:///path); the "
                                          "checksums still apply.")
@click.option("--sha256", default=None, help="Expected sha256 of the download (for a source without a known one).")
@click.option("--no-verify", is_flag=True, help="Cache a source that has no known checksum, unverified.")
@click.option("--force", is_flag=True, help="Fetch again even if the data set is cached.")
def fetch_cmd(name: str, root: Path | None, url: str | None, sha256: str | None, no_verify: bool,
              force: bool) -> None:
    """Download data set NAME (see `evonas data list`), verify it and put it in the cache.

    A checksum mismatch, a truncated download or a server error is one `error:` line and leaves nothing in
    the cache. Tasks then take the name: `evonas train lstm --task music --data jsb`.
    """
    from evonas.training import datasets

    tty = sys.stderr.isatty()
    try:
        m = datasets.fetch(name, root, url=url, sha256=sha256, no_verify=no_verify, force=force,
                           progress=_Bar(name) if tty else None)
    finally:
        if tty:
            sys.stderr.write("\n")
    where = datasets.get(name).path((root or datasets.data_root()).expanduser())
    click.echo(f"fetched {name}: {_size(m['download_bytes'])} from {m['url']}")
    click.echo(f"sha256   {m['download_sha256']}")
    click.echo(f"verified {m['verified']}")
    click.echo(f"path     {where}")
    if root is not None and Path(root).expanduser().resolve() != datasets.data_root().expanduser().resolve():
        click.echo(f"(--data {name} reads the cache at $EVONAS_DATA; set EVONAS_DATA={root} or pass --data {where})")


@data.command("list")
@click.option("--dir", "root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache root (default: $EVONAS_DATA, else $XDG_CACHE_HOME/evonas/data or ~/.cache/evonas/data).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_cmd(root: Path | None, as_json: bool) -> None:
    """The known data sets: task, whether a checksum is known, and what is cached (path, size, verified)."""
    from evonas.training import datasets

    root = (root or datasets.data_root()).expanduser()
    rows = datasets.listing(root)
    if as_json:
        click.echo(json.dumps({"root": str(root), "datasets": rows}, indent=1))
        return
    click.echo(f"cache {root}")
    click.echo(f"{'name':<11} {'task':<6} {'checksum':<10} {'cached':<7} {'size':>9}  {'verified':<18} path")
    for r in rows:
        size = _size(r["bytes"]) if r["cached"] else "-"
        click.echo(f"{r['name']:<11} {r['task']:<6} {r['checksum']:<10} "
                   f"{'yes' if r['cached'] else 'no':<7} {size:>9}  {r['verified'] or '-':<18} "
                   f"{r['path'] if r['cached'] else ''}".rstrip())
