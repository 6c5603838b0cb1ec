"""The model around a cell: input embedding or projection, stacked compiled cells, dropout, output layer.

Dropout (all off by default; probabilities in [0, 1)):
- `dropout_emb`: embedding dropout (whole rows of the embedding matrix, as in AWD-LSTM), token inputs only;
- `dropout_in`: variational (locked) dropout on the inputs of the first layer, one mask per sequence;
- `dropout_h`: variational dropout on the hidden states h passed between stacked layers, one mask per
  sequence. The compiled cell runs the recurrence inside one call, so this acts on the h sequence a layer
  outputs, not on the h_prev the cell reads back (no weight-drop);
- `dropout_out`: variational dropout on the last layer's h before the output layer;
- `dropout_w`: weight drop (DropConnect, as in AWD-LSTM) on the recurrent MMs, those whose operand depends on
  h_prev or c_prev: one mask per forward call, so the same dropped recurrent weights at every step.
Every layer runs the same cell with input size = hidden size, so every well-formed cell type-checks
(x may appear without an MM). With tokens and `tie=True`, the output layer shares the embedding matrix
(the last layer's size must then equal the embedding size, which is true because all layers have the hidden size).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from evonas.cells import Node, preorder
from evonas.cells.tree import uses
from evonas.nn.compiler import compile_cell

State = list[tuple[Tensor, Tensor | None]]


class LockedDropout(nn.Module):
    """Dropout with one mask per sequence, shared over time steps (variational dropout)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        mask = x.new_empty(1, *x.shape[1:]).bernoulli_(1 - self.p) / (1 - self.p)
        return x * mask


def embedded_dropout(embed: nn.Embedding, words: Tensor, p: float, training: bool) -> Tensor:
    """Embedding lookup that drops whole words (rows of the matrix) with probability p while training."""
    weight = embed.weight
    if training and p > 0.0:
        mask = weight.new_empty(weight.shape[0], 1).bernoulli_(1 - p) / (1 - p)
        weight = weight * mask
    # index_select, not F.embedding: the same rows and the same gradient, but its backward (index_add_) takes
    # 40 us against 60 us for embedding's at 1,120 lookups
    return torch.index_select(weight, 0, words.reshape(-1)).view(*words.shape, weight.shape[1])


class DropConnect(nn.Module):
    """Parametrization that drops weight entries while training (one mask each time the weight is read)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, w: Tensor) -> Tensor:
        return nn.functional.dropout(w, self.p, self.training)


def recurrent_mm_indices(cell: Node) -> list[int]:
    """Indices into `module.mm` (pre-order of the canonical cell) of the MMs whose operand reads the state."""
    mms = [n for n in preorder(cell) if n.op == "MM"]
    return [i for i, n in enumerate(mms) if uses(n, "h_prev") or uses(n, "c_prev")]


class CellModel(nn.Module):
    """Embedding/projection -> `layers` compiled cells -> output logits, for one task's inputs and outputs."""

    def __init__(self, cell: Node | str, input_kind: str, n_inputs: int, n_outputs: int, hidden: int,
                 layers: int = 1, tie: bool = False, dropout_emb: float = 0.0, dropout_in: float = 0.0,
                 dropout_h: float = 0.0, dropout_out: float = 0.0, dropout_w: float = 0.0):
        super().__init__()
        self.input_kind = input_kind
        if input_kind == "tokens":
            self.encoder: nn.Module = nn.Embedding(n_inputs, hidden)  # N(0, 1) init: small models learn faster
        else:
            self.encoder = nn.Linear(n_inputs, hidden)
        self.cells = nn.ModuleList(compile_cell(cell, hidden, hidden) for _ in range(layers))
        if dropout_w > 0:
            for module in self.cells:
                for i in recurrent_mm_indices(module.cell):
                    parametrize.register_parametrization(module.mm[i], "weight", DropConnect(dropout_w))
        self.decoder = nn.Linear(hidden, n_outputs)
        nn.init.zeros_(self.decoder.bias)
        self.tied = bool(tie and input_kind == "tokens")
        if self.tied:
            self.decoder.weight = self.encoder.weight
        self.dropout_emb = dropout_emb
        self.drop_in = LockedDropout(dropout_in)
        self.drop_h = LockedDropout(dropout_h)
        self.drop_out = LockedDropout(dropout_out)

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Logits [T, B, n_outputs] for inputs x ([T, B] ids or [T, B, F] floats) and the new per-layer state."""
        h, new_state = self.features(x, state)
        return self.decoder(h), new_state

    def features(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """What the output layer reads, [T, B, hidden] (the last layer's h after output dropout), and the new
        state: `forward` without `decoder`, for losses that apply the output layer themselves."""
        if self.input_kind == "tokens":
            h = embedded_dropout(self.encoder, x, self.dropout_emb, self.training)
        else:
            h = self.encoder(x)
        h = self.drop_in(h)
        new_state: State = []
        for i, cell in enumerate(self.cells):
            if i > 0:
                h = self.drop_h(h)
            h, s = cell(h, None if state is None else state[i])
            new_state.append(s)
        return self.drop_out(h), new_state


def detach_state(state: State | None) -> State | None:
    """The state cut from the graph (truncated BPTT carries values, not gradients)."""
    if state is None:
        return None
    return [(h.detach(), None if c is None else c.detach()) for h, c in state]


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)



def hidden_for_params(cell: Node | str, input_kind: str, n_inputs: int, n_outputs: int, target: int,
                      layers: int = 1, tie: bool = False, low: int = 1, high: int = 4096) -> tuple[int, int]:
    """The hidden size whose model has the parameter count closest to `target`, and that count.

    Used to compare cells at equal parameters (parameters grow monotonically with the hidden size).
    """
    def params(h: int) -> int:
        return count_params(CellModel(cell, input_kind, n_inputs, n_outputs, h, layers, tie))

    while low < high:
        mid = (low + high) // 2
        if params(mid) < target:
            low = mid + 1
        else:
            high = mid
    best = min({max(low - 1, 1), low}, key=lambda h: abs(params(h) - target))
    return best, params(best)
