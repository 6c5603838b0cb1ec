"""Known data sets: where they come from, their checksums, and a local cache that `evonas data fetch` fills.

The cache root is `$EVONAS_DATA`, else `$XDG_CACHE_HOME/evonas/data`, else `~/.cache/evonas/data`; data set NAME
lives in `ROOT/NAME/` with a manifest `evonas-data.json` (what was fetched from where, sha256 of every file,
how it was verified). A fetch downloads to a temporary folder inside the root, checks every pin it has, and
only then renames the folder into place: a failed or refused fetch leaves nothing in the cache.

Trust: a data set is verified when its download matches a pinned checksum, or every file extracted from it
does. Pins are sha256 values computed here from known copies (/work/shared/data/README.md on the dev machine)
or md5 values cited from a widely used loader's source (marked "cited md5": they catch corruption, not
tampering). A source with no pin is refused unless the user gives `--sha256 HEX` or `--no-verify`.
Archives (tar.gz, zip) are never extracted as a whole: only the named members, only regular files, each
written under a name chosen here, so an archive's paths cannot escape the cache (no path traversal).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import secrets
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from evonas.errors import DataError

MANIFEST = "evonas-data.json"
CHUNK = 1 << 16
MAX_MEMBER_BYTES = 1 << 31  # 2 GiB: an archive member larger than this is refused (no decompression bombs)
SCHEMES = ("http", "https", "file")

Progress = Callable[[int, int | None], None]  # (bytes so far, total bytes or None)


@dataclass(frozen=True)
class Member:
    """One file of a data set: its name in the cache and, for an archive, its path inside the archive."""

    name: str
    member: str | None = None
    sha256: str | None = None
    md5: str | None = None  # cited from a public loader, where no sha256 could be verified


@dataclass(frozen=True)
class DataSet:
    """A known data set: the task that reads it, one download, and the files it leaves in the cache."""

    name: str
    task: str
    description: str
    url: str
    files: tuple[Member, ...]
    sha256: str | None = None  # of the download itself
    md5: str | None = None
    archive: str | None = None  # None (a plain file), "tar.gz" or "zip"
    level: str | None = None  # text data sets: word or char
    notes: dict[str, str] = field(default_factory=dict)

    def path(self, root: Path) -> Path:
        """What a task reads: the one file of a music data set, the folder of a text data set."""
        return root / self.name / self.files[0].name if self.task == "music" else root / self.name

    def pinned(self) -> bool:
        """Whether a fetch can verify everything it writes without help from the user."""
        return bool(self.sha256 or self.md5) or all(f.sha256 or f.md5 for f in self.files)

    def pin_kind(self) -> str:
        """How a fetch verifies it: sha256, cited md5, per file (pins on the extracted files), or none."""
        if self.sha256:
            return "sha256"
        if self.md5:
            return "cited md5"
        return "per file" if self.pinned() else "none"


_BOULANGER = "Boulanger-Lewandowski, Bengio & Vincent (ICML 2012), their train/valid/test split"
# URL: the authors' page http://www-etud.iro.umontreal.ca/~boulanni/icml2012, as fetched by many public loaders
# (e.g. shell scripts in the search index: `curl .../~boulanni/Nottingham.pickle > $1/nottingham.pkl`). No
# checksum of these pickles could be verified or found cited: sha256 None, so fetching needs --sha256 or
# --no-verify (the manifest then records the sha256 of what was downloaded). They are read by the music
# task's restricted unpickler (plain lists and numbers only; anything else is refused, no code runs).
_BOULANNI = "http://www-etud.iro.umontreal.ca/~boulanni/"

REGISTRY: dict[str, DataSet] = {d.name: d for d in [
    # czhuang/JSB-Chorales-dataset (cited in magenta/models/coconet/traindata/README.md): the Boulanger-Lewandowski
    # split at quarter-note steps as JSON. sha256 computed from the copy in /work/shared/data/jsb_chorales (see
    # /work/shared/data/README.md); the same value is pinned for this URL in other public code.
    DataSet("jsb", "music", f"JSB Chorales, quarter notes, JSON ({_BOULANGER})",
            "https://raw.githubusercontent.com/czhuang/JSB-Chorales-dataset/master/jsb-chorales-quarter.json",
            (Member("jsb-chorales-quarter.json"),),
            sha256="2db9329f1881a1d3f49703ec556bf1d6f84b4f6c1d702c156536e93cf31e1c91"),
    DataSet("nottingham", "music", f"Nottingham folk tunes, pickle ({_BOULANGER})", _BOULANNI + "Nottingham.pickle",
            (Member("Nottingham.pickle"),)),
    DataSet("musedata", "music", f"MuseData classical music, pickle ({_BOULANGER})", _BOULANNI + "MuseData.pickle",
            (Member("MuseData.pickle"),)),
    DataSet("piano-midi", "music", f"Piano-midi.de, pickle ({_BOULANGER})", _BOULANNI + "Piano-midi.de.pickle",
            (Member("Piano-midi.de.pickle"),)),
    # Mikolov's simple-examples.tgz (the URL of TensorFlow's ptb_word_lm tutorial and many loaders); the archive's
    # own checksum is not known, its members are pinned: valid/test sha256 verified (/work/shared/data/README.md),
    # train md5 cited from pytorch/text torchtext/datasets/penntreebank.py (whose valid/test md5s equal ours).
    DataSet("ptb", "text", "Penn Treebank, Mikolov's word-level preprocessing (10k vocabulary)",
            "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz",
            (Member("ptb.train.txt", "simple-examples/data/ptb.train.txt", md5="f26c4b92c5fdc7b3f8c7cdcb991d8420"),
             Member("ptb.valid.txt", "simple-examples/data/ptb.valid.txt",
                    sha256="c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
                    md5="aa0affc06ff7c36e977d7cd49e3839bf"),
             Member("ptb.test.txt", "simple-examples/data/ptb.test.txt",
                    sha256="dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
                    md5="8b80168b89c18661a38ef683c0dc3721")),
            archive="tar.gz", level="word"),
    # URL and md5 cited from pytorch/text torchtext/datasets/wikitext2.py; no sha256 verified.
    DataSet("wikitext2", "text", "WikiText-2 (v1, tokenized, Merity et al. 2016)",
            "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip",
            (Member("train.txt", "wikitext-2/wiki.train.tokens"), Member("valid.txt", "wikitext-2/wiki.valid.tokens"),
             Member("test.txt", "wikitext-2/wiki.test.tokens")),
            md5="542ccefacc6c27f945fb54453812b3cd", archive="zip", level="word"),
]}


def data_root() -> Path:
    """The cache root: $EVONAS_DATA, else $XDG_CACHE_HOME/evonas/data, else ~/.cache/evonas/data."""
    if os.environ.get("EVONAS_DATA"):
        return Path(os.environ["EVONAS_DATA"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "evonas" / "data"


def get(name: str) -> DataSet:
    """The known data set `name`; DataError listing the known names otherwise."""
    if name not in REGISTRY:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def manifest(name: str, root: Path | None = None) -> dict[str, Any] | None:
    """The manifest of a cached data set, or None when it is not (completely) cached."""
    ds = get(name)
    folder = (root or data_root()) / name
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or not all((folder / f.name).is_file() for f in ds.files):
        return None
    return data


def resolve(task: str, data: str) -> str:
    """A task's data argument as a path: a known data-set name becomes its cached path, anything else stays.

    An existing file or folder of that name is still used as a path (write `./jsb` to be explicit).
    """
    if data not in REGISTRY or Path(data).exists():
        return data
    ds = REGISTRY[data]
    if ds.task != task:
        raise DataError(f"{data} is a {ds.task} data set, not one for the {task} task (use --task {ds.task})")
    root = data_root()
    if manifest(data, root) is None:
        raise DataError(f"data set {data} is not in the cache {root}; run: evonas data fetch {data}")
    return str(ds.path(root))


# ------------------------------------------------------------------ fetching


class _Hashes:
    """sha256 and md5 of a byte stream, fed chunk by chunk."""

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.bytes = 0

    def update(self, chunk: bytes) -> None:
        self.sha256.update(chunk)
        self.md5.update(chunk)
        self.bytes += len(chunk)


def _check(what: str, hashes: _Hashes, sha256: str | None, md5: str | None) -> str | None:
    """Compare with the pins; DataError on a mismatch; the kind of pin that matched, or None without one."""
    got = hashes.sha256.hexdigest()
    if sha256 is not None and got != sha256.lower():
        raise DataError(f"{what}: sha256 {got} does not match the expected {sha256.lower()} (nothing was cached)")
    if md5 is not None and hashes.md5.hexdigest() != md5.lower():
        raise DataError(f"{what}: md5 {hashes.md5.hexdigest()} does not match the expected {md5.lower()} "
                        "(nothing was cached)")
    return "sha256" if sha256 is not None else "cited md5" if md5 is not None else None


def download(url: str, dest: IO[bytes], progress: Progress | None = None, timeout: float = 60.0) -> _Hashes:
    """Stream `url` (http, https or file) into `dest`, hashing it; DataError on any failure or a short read."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        raise DataError(f"{url}: only {', '.join(SCHEMES)} URLs can be fetched")
    hashes = _Hashes()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - scheme checked above
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            while chunk := response.read(CHUNK):
                dest.write(chunk)
                hashes.update(chunk)
                if progress is not None:
                    progress(hashes.bytes, total)
    except urllib.error.HTTPError as e:
        raise DataError(f"{url}: the server answered {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise DataError(f"{url}: cannot fetch ({e.reason})") from None
    except http.client.IncompleteRead as e:
        raise DataError(f"{url}: download truncated after {hashes.bytes + len(e.partial)} bytes") from None
    except (OSError, http.client.HTTPException) as e:
        raise DataError(f"{url}: download failed ({type(e).__name__}: {e})") from None
    if total is not None and hashes.bytes != total:
        raise DataError(f"{url}: download truncated: got {hashes.bytes} of {total} bytes")
    if hashes.bytes == 0:
        raise DataError(f"{url}: the download is empty")
    return hashes


def _copy_member(source: IO[bytes], target: Path) -> _Hashes:
    hashes = _Hashes()
    with open(target, "wb") as out:
        while chunk := source.read(CHUNK):
            hashes.update(chunk)
            if hashes.bytes > MAX_MEMBER_BYTES:
                raise DataError(f"{target.name}: archive member larger than {MAX_MEMBER_BYTES} bytes")
            out.write(chunk)
    return hashes


def _strip_dot(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def extract(archive: Path, kind: str, files: tuple[Member, ...], folder: Path, url: str) -> dict[str, _Hashes]:
    """Copy the named members (regular files only) out of a tar.gz or zip to `folder/<member name>`."""
    out: dict[str, _Hashes] = {}
    try:
        if kind == "tar.gz":
            with tarfile.open(archive, "r:gz") as tar:
                members = {_strip_dot(m.name): m for m in tar.getmembers()}
                for f in files:
                    m = members.get(f.member or "")
                    if m is None or not m.isfile():
                        raise DataError(f"{url}: the archive has no file {f.member}")
                    source = tar.extractfile(m)
                    assert source is not None  # a regular file always has a stream
                    with source:
                        out[f.name] = _copy_member(source, folder / f.name)
        else:
            with zipfile.ZipFile(archive) as zf:
                names = {_strip_dot(i.filename): i for i in zf.infolist()}
                for f in files:
                    info = names.get(f.member or "")
                    if info is None or info.is_dir():
                        raise DataError(f"{url}: the archive has no file {f.member}")
                    with zf.open(info) as source:
                        out[f.name] = _copy_member(source, folder / f.name)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise DataError(f"{url}: not a readable {kind} archive ({type(e).__name__}: {e})") from None
    return out


def fetch(name: str, root: Path | None = None, url: str | None = None, sha256: str | None = None,
          no_verify: bool = False, force: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Download, verify and cache data set `name`; return its manifest (DataError when refused)."""
    ds = get(name)
    root = (root or data_root()).expanduser()
    if sha256 is not None and (len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256.lower())):
        raise DataError(f"--sha256 must be 64 hex digits, got {sha256!r}")
    if manifest(name, root) is not None and not force:
        raise DataError(f"{name} is already cached in {root / name} (use --force to fetch it again)")
    if not (ds.pinned() or sha256 or no_verify):
        raise DataError(f"{name}: no verified checksum is known for {url or ds.url}; pass --sha256 HEX if you know "
                        "it, or --no-verify to cache it unverified (its sha256 is then recorded and shown)")
    source = url or ds.url
    work = root / f".{name}.{secrets.token_hex(4)}.partial"  # os.mkdir honours the umask (mkdtemp makes it 0700)
    try:
        root.mkdir(parents=True, exist_ok=True)
        work.mkdir()
    except OSError as e:
        raise DataError(f"{root}: cannot use as the data cache ({e.strerror})") from None
    try:
        with open(work / ".download", "wb") as dest:
            got = download(source, dest, progress)
        way = _check(f"{name} from {source}", got, sha256 or ds.sha256, None if sha256 else ds.md5)
        files: dict[str, _Hashes]
        if ds.archive is None:
            os.replace(work / ".download", work / ds.files[0].name)
            files = {ds.files[0].name: got}
        else:
            files = extract(work / ".download", ds.archive, ds.files, work, source)
            (work / ".download").unlink()
        member_ways = {_check(f"{name}: {f.member or f.name}", files[f.name], f.sha256, f.md5) for f in ds.files}
        if sha256:
            verified = "sha256 (--sha256)"
        elif way is not None:
            verified = way
        elif None not in member_ways:
            verified = "files: " + " + ".join(sorted(w for w in member_ways if w))
        else:
            verified = "no (--no-verify)"
        data = {"format": 1, "name": name, "task": ds.task, "url": source, "fetched": time.strftime(
                    "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "download_sha256": got.sha256.hexdigest(),
                "download_bytes": got.bytes, "verified": verified,
                "files": {n: {"sha256": h.sha256.hexdigest(), "bytes": h.bytes} for n, h in files.items()}}
        (work / MANIFEST).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        final = root / name
        if final.exists():  # --force: move the old copy aside first, remove it once the new one is in place
            old = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=root))
            os.replace(final, old / name)
            os.replace(work, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, final)
        return data
    except OSError as e:  # writing the cache (disk full, permissions); download errors are DataErrors already
        raise DataError(f"{root}: cannot write the data cache ({type(e).__name__}: {e})") from None
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def listing(root: Path | None = None) -> list[dict[str, Any]]:
    """Every known data set with its cache state: name, task, path, bytes, verified (None when not cached)."""
    root = root or data_root()
    rows = []
    for ds in REGISTRY.values():
        m = manifest(ds.name, root)
        rows.append({"name": ds.name, "task": ds.task, "description": ds.description, "url": ds.url,
                     "pinned": ds.pinned(), "checksum": ds.pin_kind(), "cached": m is not None,
                     "path": str(ds.path(root)),
                     "bytes": sum(f.get("bytes", 0) for f in m["files"].values()) if m else None,
                     "verified": m.get("verified") if m else None})
    return rows
