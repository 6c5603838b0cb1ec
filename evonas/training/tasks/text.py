"""The `text` task: word- or character-level language modelling from plain text files.

Data: a folder with `ptb.train.txt`, `ptb.valid.txt`, `ptb.test.txt` (the PTB layout) or `train.txt`,
`valid.txt`, `test.txt`; or one text file (e.g. tinyshakespeare/input.txt), split 90/5/5 at line breaks.
Tokens: words split on whitespace (`level="word"`) or characters (`level="char"`, spaces included);
`<eos>` ends every line; tokens unseen in training map to `<unk>`. The loss is in nats per token and
the perplexity is reported.
"""

from __future__ import annotations

import functools
from pathlib import Path

from evonas.errors import DataError
from evonas.training.tasks.base import TokenTask, tokens_to_tensor

EOS, UNK = "<eos>", "<unk>"
LAYOUTS = (("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"), ("train.txt", "valid.txt", "test.txt"))
SPLITS = ("train", "valid", "test")

DEFAULTS = {
    "word": {"hidden": 200, "batch_size": 20, "eval_batch_size": 10, "bptt": 35, "lr": 2e-3, "optimizer": "adam",
             "clip": 0.5, "epochs": 1},
    "char": {"hidden": 128, "batch_size": 32, "eval_batch_size": 32, "bptt": 100, "lr": 2e-3, "optimizer": "adam",
             "clip": 1.0, "epochs": 1},
}


def _read(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    return text


def split_single(text: str) -> tuple[str, str, str]:
    """Split one text 90/5/5 at the line breaks nearest after 90% and 95% of its characters."""
    n = len(text)

    def cut(frac: float) -> int:
        i = text.find("\n", int(n * frac))
        return n if i < 0 else i + 1

    a, b = cut(0.90), cut(0.95)
    return text[:a], text[a:b], text[b:]


def read_splits(path: str | Path) -> tuple[dict[str, str], str]:
    """The three texts and a description of where they came from; DataError naming the path and problem."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder (text data: a folder with train/valid/test files or one file)")
    if p.is_dir():
        for layout in LAYOUTS:
            if all((p / f).is_file() for f in layout):
                return {s: _read(p / f) for s, f in zip(SPLITS, layout, strict=True)}, str(p)
        raise DataError(f"{p}: folder has neither ptb.train.txt/ptb.valid.txt/ptb.test.txt nor "
                        "train.txt/valid.txt/test.txt")
    parts = split_single(_read(p))
    if not parts[1].strip() or not parts[2].strip():
        raise DataError(f"{p}: too short to split 90/5/5 into train/valid/test at line breaks")
    return dict(zip(SPLITS, parts, strict=True)), f"{p} (split 90/5/5)"


def tokenize(text: str, level: str) -> list[str]:
    """Tokens of a text: words or characters of every line, each line ended by `<eos>`."""
    out: list[str] = []
    for line in text.splitlines():
        out.extend(line.split() if level == "word" else line)
        out.append(EOS)
    return out


@functools.lru_cache(maxsize=4)
def _load(path: str, level: str, stamp: tuple[int, ...]) -> TokenTask:
    texts, where = read_splits(path)
    tokens = {s: tokenize(texts[s], level) for s in SPLITS}
    vocab = [EOS, UNK, *sorted(set(tokens["train"]) - {EOS, UNK})]
    index = {t: i for i, t in enumerate(vocab)}
    streams = {s: tokens_to_tensor(tokens[s], index, UNK) for s in SPLITS}
    for s in SPLITS:
        if len(streams[s]) < 2:
            raise DataError(f"{where}: the {s} split has fewer than 2 tokens")
    return TokenTask(f"text:{level}", vocab, streams["train"], streams["valid"], streams["test"],
                     dict(DEFAULTS[level]))


def load(path: str | Path, level: str = "word") -> TokenTask:
    """The text task for a data path (cached per path, level and file modification times)."""
    if level not in DEFAULTS:
        raise DataError(f"text level must be word or char, got {level!r}")
    p = Path(path).expanduser().resolve()
    stamp: tuple[int, ...] = ()
    if p.is_dir():
        stamp = tuple(f.stat().st_mtime_ns for f in sorted(p.glob("*.txt")))
    elif p.is_file():
        stamp = (p.stat().st_mtime_ns,)
    return _load(str(p), level, stamp)
