"""The task interface: what a task gives the trainer (batches, a loss, defaults), with its contract written down.

Contract of a `Task` (every task module implements exactly this; the trainer relies on nothing else):
- `name`; `input_kind`: "tokens" (x holds integer ids below `n_inputs`, fed through an embedding) or
  "dense" (x holds float vectors of width `n_inputs`, fed through a linear projection); `n_outputs` logits
  per step; `report_ppl`: whether exp(loss) (perplexity) is meaningful.
- `batches(split, batch_size, bptt, rng)` yields `Batch`es covering the split once (one epoch). With
  `carry=True` the trainer keeps the recurrent state from one batch to the next (truncated BPTT over a
  stream) unless `reset` is set; with `carry=False` every batch starts from zeros. `rng` (a
  `numpy.random.Generator`) may shuffle the training order; None means a fixed order. The same rng state
  gives the same batches.
- `loss_sum(logits, batch)` returns (sum of per-step losses, number of counted steps) as tensors; the
  reported loss of a split is the total sum divided by the total count (nats per token / per time step).
- `head_loss_sum(hidden, decoder, batch)`: `loss_sum` of the logits `decoder(hidden)` (the model's output
  layer, an `nn.Linear`); the trainer calls this one, so a task can fuse the two (the base class does not).
- `uniform_loss`: the loss of a model that knows nothing (log V, or 88·log 2); divergence ceilings scale it.
- `defaults`: TrainConfig values used where the config leaves a field as None.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from evonas.training.tasks.losses import linear_cross_entropy_sum


@dataclass
class Batch:
    """One training or evaluation chunk: inputs, targets, an optional step mask and whether to reset the state."""

    x: Tensor  # [T, B] long (tokens) or [T, B, F] float (dense)
    y: Tensor  # [T, B] long (tokens) or [T, B, F] float (multi-label targets)
    mask: Tensor | None = None  # [T, B] float, 1 on real steps (None = all real)
    reset: bool = False  # start this batch from a zero state

    def to(self, device: torch.device) -> Batch:
        """The same batch on another device."""
        mask = None if self.mask is None else self.mask.to(device)
        return Batch(self.x.to(device), self.y.to(device), mask, self.reset)


class Task(ABC):
    """A task turns a model's outputs into a loss over batches of its data (see the module docstring)."""

    name: str = ""
    input_kind: str = "tokens"
    carry: bool = True
    report_ppl: bool = True
    n_inputs: int = 0
    n_outputs: int = 0
    defaults: dict = {}

    @abstractmethod
    def batches(self, split: str, batch_size: int, bptt: int,
                rng: np.random.Generator | None = None) -> Iterator[Batch]:
        """Yield the batches of one pass over `split` ("train", "valid" or "test")."""

    @abstractmethod
    def loss_sum(self, logits: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """(sum of per-step losses, number of counted steps) for one batch."""

    def head_loss_sum(self, hidden: Tensor, decoder: nn.Linear, batch: Batch) -> tuple[Tensor, Tensor]:
        """`loss_sum` of the logits `decoder(hidden)`; a task may compute the two together, faster (TokenTask)."""
        return self.loss_sum(decoder(hidden), batch)

    @property
    def uniform_loss(self) -> float:
        """Loss of a model that predicts uniformly: the scale for divergence ceilings."""
        return math.log(max(self.n_outputs, 2))

    def describe(self) -> str:
        """One line: the task and the size of its splits."""
        return f"{self.name}: {self.n_inputs} inputs, {self.n_outputs} outputs"


class TokenTask(Task):
    """Language modelling on token streams (train/valid/test as 1-D id tensors), truncated BPTT with carried state."""

    input_kind = "tokens"
    carry = True
    report_ppl = True

    def __init__(self, name: str, vocab: list[str], train: Tensor, valid: Tensor, test: Tensor, defaults: dict):
        self.name = name
        self.vocab = vocab
        self.splits = {"train": train, "valid": valid, "test": test}
        self.n_inputs = self.n_outputs = len(vocab)
        self.defaults = defaults

    def batches(self, split: str, batch_size: int, bptt: int,
                rng: np.random.Generator | None = None) -> Iterator[Batch]:
        """Cut the stream into `batch_size` columns and walk down them `bptt` steps at a time."""
        data = self.splits[split]
        batch_size = max(1, min(batch_size, len(data) - 1))  # a small split gets fewer, longer columns
        n = (len(data) - 1) // batch_size
        if n < 1:
            raise ValueError(f"the {split} split of {self.name} has {len(data)} tokens, too few to predict any")
        x_all = data[: n * batch_size].view(batch_size, n).t()
        y_all = data[1 : n * batch_size + 1].view(batch_size, n).t()
        for i in range(0, n, bptt):
            yield Batch(x_all[i : i + bptt], y_all[i : i + bptt], None, reset=i == 0)

    def loss_sum(self, logits: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """Summed cross-entropy over the tokens of the batch."""
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.y.reshape(-1),
                                                 reduction="sum")
        return loss, torch.tensor(float(batch.y.numel()))

    def head_loss_sum(self, hidden: Tensor, decoder: nn.Linear, batch: Batch) -> tuple[Tensor, Tensor]:
        """`loss_sum` of `decoder(hidden)`, the output layer and the cross-entropy in one autograd node."""
        loss = linear_cross_entropy_sum(hidden.reshape(-1, hidden.shape[-1]), decoder.weight, decoder.bias,
                                        batch.y.reshape(-1))
        return loss, torch.tensor(float(batch.y.numel()))

    def describe(self) -> str:
        """One line: vocabulary and split sizes."""
        sizes = ", ".join(f"{k} {len(v)}" for k, v in self.splits.items())
        return f"{self.name}: vocabulary {len(self.vocab)}, tokens {sizes}"


def tokens_to_tensor(tokens: list[str], index: dict[str, int], unk: str | None = None) -> Tensor:
    """Map tokens to ids; tokens missing from `index` become `unk` (which must then be in the index)."""
    if unk is None:
        return torch.tensor([index[t] for t in tokens], dtype=torch.long)
    u = index[unk]
    return torch.tensor([index.get(t, u) for t in tokens], dtype=torch.long)
