"""What the benchmark scripts share: where the real data lives and the machine's load (printed with timings)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"  # real data is read from here, never copied into the repo
JSB = SHARED_DATA / "jsb_chorales" / "jsb-chorales-quarter.json"
SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: timings on a shared machine mean little without them."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])
