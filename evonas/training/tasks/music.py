"""The `music` task: polyphonic music as piano rolls (JSB Chorales format), NLL per time step.

Data: one JSON or pickle file holding a mapping with `train`, `valid` and `test`, each a list of
sequences; a sequence is a list of time steps; a step is a list of the MIDI notes sounding (21..108,
the 88 piano keys; integral floats accepted). Pickles are read with an unpickler that refuses every class
or function reference, so only plain lists, tuples, dicts, numbers and strings load and no code runs.
Model: at step t the input is the roll at t, the target the roll at t+1 (a sequence of length L gives
L-1 predictions). Loss: binary cross-entropy summed over the 88 notes, averaged over all predicted steps
of the split (the usual "NLL per time step"). Batches are padded to the longest sequence, with a mask;
every batch starts from a zero state and is back-propagated through whole (bptt is not used).
"""

from __future__ import annotations

import functools
import io
import json
import math
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from evonas.errors import DataError
from evonas.training.tasks.base import Batch, Task

LOW, HIGH = 21, 108
N_NOTES = HIGH - LOW + 1
SPLITS = ("train", "valid", "test")
DEFAULTS = {"hidden": 128, "batch_size": 8, "eval_batch_size": 32, "bptt": 1000, "lr": 3e-3, "optimizer": "adam",
            "clip": 1.0, "epochs": 30}


class _NoClassUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global (class or function): plain containers and numbers only."""

    def find_class(self, module: str, name: str) -> None:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain lists, dicts and numbers "
                                     "are allowed in a music pickle")


def read_file(path: Path) -> object:
    """The decoded JSON or (restricted) pickle content of a music data file."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if not raw:
        raise DataError(f"{path}: the file is empty")
    if raw[:1] == b"\x80" or path.suffix.lower() in (".pkl", ".pickle"):
        try:
            return _NoClassUnpickler(io.BytesIO(raw)).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as e:
            raise DataError(f"{path}: not a readable plain-data pickle ({e})") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def to_rolls(path: Path, data: object) -> dict[str, list[np.ndarray]]:
    """Validate the structure and turn every sequence into a bool piano roll [T, 88]."""
    if not isinstance(data, dict) or not all(s in data for s in SPLITS):
        raise DataError(f"{path}: expected a mapping with keys train, valid, test")
    out: dict[str, list[np.ndarray]] = {}
    for split in SPLITS:
        seqs = data[split]
        if not isinstance(seqs, list | tuple) or not seqs:
            raise DataError(f"{path}: {split} must be a non-empty list of sequences")
        rolls = []
        for i, seq in enumerate(seqs):
            if not isinstance(seq, list | tuple) or not seq:
                raise DataError(f"{path}: {split}[{i}] must be a non-empty list of time steps")
            roll = np.zeros((len(seq), N_NOTES), dtype=bool)
            for t, step in enumerate(seq):
                if not isinstance(step, list | tuple):
                    raise DataError(f"{path}: {split}[{i}][{t}] must be a list of MIDI notes")
                for note in step:
                    ok = isinstance(note, int | float) and not isinstance(note, bool) and math.isfinite(note)
                    if not ok or note != int(note) or not LOW <= note <= HIGH:
                        raise DataError(f"{path}: {split}[{i}][{t}] has {note!r}, not a MIDI note {LOW}..{HIGH}")
                    roll[t, int(note) - LOW] = True
            rolls.append(roll)
        if not any(len(r) >= 2 for r in rolls):
            raise DataError(f"{path}: {split} has no sequence of 2 or more steps")
        out[split] = rolls
    return out


class MusicTask(Task):
    """Next-step prediction of piano rolls: dense 88-note inputs, 88 independent Bernoulli outputs."""

    input_kind = "dense"
    carry = False
    report_ppl = False
    n_inputs = n_outputs = N_NOTES

    def __init__(self, name: str, rolls: dict[str, list[np.ndarray]]):
        self.name = name
        self.rolls = {s: [torch.from_numpy(r.astype(np.float32)) for r in rolls[s] if len(r) >= 2] for s in SPLITS}
        self.defaults = dict(DEFAULTS)
        self._fixed: dict[tuple[str, int], list[Batch]] = {}  # unshuffled batches, see `batches`

    @property
    def uniform_loss(self) -> float:
        """88 log 2: predicting every note with probability 1/2."""
        return N_NOTES * math.log(2.0)

    def batches(self, split: str, batch_size: int, bptt: int,
                rng: np.random.Generator | None = None) -> Iterator[Batch]:
        """Padded batches of whole sequences, shuffled by `rng` when given. Without `rng` the batches are always
        the same, so they are made once per split and batch size (validation then builds none)."""
        if rng is not None:
            order = rng.permutation(len(self.rolls[split]))
            return (self._batch(split, order[i : i + batch_size]) for i in range(0, len(order), batch_size))
        key = (split, batch_size)
        if key not in self._fixed:
            n = len(self.rolls[split])
            self._fixed[key] = [self._batch(split, range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
        return iter(self._fixed[key])

    def _batch(self, split: str, chosen: Sequence[int]) -> Batch:
        """The sequences `chosen` of `split`, zero-padded to the longest (inputs, targets, step mask)."""
        seqs = [self.rolls[split][int(j)] for j in chosen]
        x = pad_sequence([s[:-1] for s in seqs])  # [steps, batch, 88], zeros after each sequence's end
        y = pad_sequence([s[1:] for s in seqs])
        lengths = torch.tensor([len(s) - 1 for s in seqs])
        mask = (torch.arange(x.shape[0]).unsqueeze(1) < lengths).float()
        return Batch(x, y, mask, reset=True)

    def loss_sum(self, logits: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """BCE summed over notes and masked steps; the count is the number of real steps."""
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.y, reduction="none").sum(-1)
        assert batch.mask is not None
        return (bce * batch.mask).sum(), batch.mask.sum()

    def describe(self) -> str:
        """One line: sequences and steps per split."""
        parts = [f"{s} {len(v)} seqs/{sum(len(r) for r in v)} steps" for s, v in self.rolls.items()]
        return f"{self.name}: {', '.join(parts)}"


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int) -> MusicTask:
    p = Path(path)
    return MusicTask(f"music:{p.name}", to_rolls(p, read_file(p)))


def load(path: str | Path) -> MusicTask:
    """The music task for a JSON or pickle file (cached per path and modification time)."""
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise DataError(f"{p}: no such file (music data: a JSON or pickle file with train/valid/test)")
    return _load(str(p), p.stat().st_mtime_ns)
