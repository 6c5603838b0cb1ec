"""The malloc that evaluation workers run with: tcmalloc (else jemalloc) when installed, else the system's.

Why: a training step at the search's sizes makes and frees thousands of small tensors, and PyTorch takes each
one's memory from malloc (`posix_memalign`). With tcmalloc preloaded, a default evaluation takes 1.15-1.2x less
CPU time than with glibc's malloc (`benchmarks/train_speed.py --only evals`), and a default search's evaluations
1.10-1.18x less (README "Training speed"), with the same results bit for bit.

The library is preloaded (`LD_PRELOAD`) into the worker processes only, when they start, as PyTorch's own CPU
launcher does (`python -m torch.backends.xeon.run_cpu --enable-tcmalloc`): the local backend's workers, and
those of a local Ray that the Ray backend starts itself. The process that runs the search, and `evonas train`
in a terminal, keep the system's malloc.

Choices (`RunConfig.allocator`, `--allocator`):
- `auto` (default): tcmalloc, else jemalloc, where found on Linux; else the system's malloc. Nothing is added
  when `LD_PRELOAD` already names an allocator (the user chose one; the workers inherit it);
- `system`: the system's malloc;
- `tcmalloc` / `jemalloc`: that library, a ConfigError when it is not installed;
- a path to a shared library: that file, a ConfigError when it does not exist.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from evonas.errors import ConfigError

# Library names (lib<name>.so*) of each allocator, the preferred first; `auto` tries them in this order.
ALLOCATORS: dict[str, tuple[str, ...]] = {"tcmalloc": ("tcmalloc_minimal", "tcmalloc"), "jemalloc": ("jemalloc",)}
CHOICES = ("auto", "system", *ALLOCATORS)
INSTALL_HINT = "on Debian/Ubuntu: apt install libtcmalloc-minimal4 (or libjemalloc2)"
PRELOAD = "LD_PRELOAD"


def library_dirs() -> list[Path]:
    """Where shared libraries are looked for: the Python environment's lib, then the system's usual folders."""
    machine = os.uname().machine if hasattr(os, "uname") else ""
    dirs = [Path(sys.prefix) / "lib", Path("/usr/local/lib"), Path(f"/usr/lib/{machine}-linux-gnu"),
            Path("/usr/lib64"), Path("/usr/lib")]
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


def find_library(name: str, dirs: list[Path] | None = None) -> Path | None:
    """The first `lib<name>.so` or `lib<name>.so.N` (a loadable library, not a debug build) in `dirs`."""
    for folder in library_dirs() if dirs is None else dirs:
        for candidate in (folder / f"lib{name}.so", *sorted(folder.glob(f"lib{name}.so.[0-9]"))):
            if candidate.is_file():
                return candidate
    return None


def find_allocator(allocator: str, dirs: list[Path] | None = None) -> Path | None:
    """The library of `allocator` ("tcmalloc", "jemalloc"): its first name in `ALLOCATORS` found in `dirs`."""
    for name in ALLOCATORS[allocator]:
        found = find_library(name, dirs)
        if found is not None:
            return found
    return None


def resolve_allocator(choice: str, dirs: list[Path] | None = None, platform: str = sys.platform,
                      environ: Mapping[str, str] | None = None) -> Path | None:
    """The library to preload for `choice` (see the module docstring); None means none is added (the system's
    malloc, or with `auto` one the environment already preloads)."""
    if not isinstance(choice, str) or not choice:
        raise ConfigError(f"allocator must be one of {', '.join(CHOICES)} or a path to a shared library, "
                          f"got {choice!r}")
    if choice == "system":
        return None
    if not platform.startswith("linux"):
        if choice == "auto":
            return None
        raise ConfigError(f"allocator {choice!r}: preloading an allocator needs Linux (this is {platform})")
    if choice == "auto":
        preloaded = (os.environ if environ is None else environ).get(PRELOAD, "")
        if any(word in preloaded for word in ("malloc", *ALLOCATORS)):  # tcmalloc, jemalloc, mimalloc, ...
            return None
        for allocator in ALLOCATORS:  # in order of preference
            found = find_allocator(allocator, dirs)
            if found is not None:
                return found
        return None
    if choice in ALLOCATORS:
        found = find_allocator(choice, dirs)
        if found is not None:
            return found
        looked = ", ".join(str(d) for d in (library_dirs() if dirs is None else dirs))
        raise ConfigError(f"allocator {choice!r} is not installed (looked in {looked}); {INSTALL_HINT}")
    try:
        path = Path(choice).expanduser()  # "~user" with no such user, or a null byte: not a file either
        found = path.is_file()
    except (RuntimeError, ValueError, OSError):
        found = False
    if not found:
        raise ConfigError(f"allocator {choice!r} is neither {', '.join(CHOICES)} nor an existing library file")
    return path.resolve()


def preload_value(library: Path, current: str | None) -> str:
    """`LD_PRELOAD` with `library` first, keeping what was already preloaded."""
    return f"{library}:{current}" if current else str(library)


def allocator_of(text: str) -> str | None:
    """The known allocator ("tcmalloc", "jemalloc") whose library `text` names (a path, a file name, the
    process's memory map), or None."""
    for allocator, names in ALLOCATORS.items():
        if any(f"lib{name}.so" in text for name in names):
            return allocator
    return None


def loaded_allocator() -> str:
    """Which allocator this process runs with: "tcmalloc", "jemalloc" or "system" (from /proc/self/maps)."""
    try:
        return allocator_of(Path("/proc/self/maps").read_text()) or "system"
    except OSError:
        return "system"
