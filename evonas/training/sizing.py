"""Equal-parameter comparison: the hidden size at which a cell's model has a target parameter count.

`match_params` in a run config (or `evonas train --match-params`) names the target: a cell-library name (its
model at the run's hidden size, e.g. the LSTM's count) or an integer. A cell whose count cannot come within
`TOLERANCE` of the target at any hidden size is not trained: the reason is recorded instead.
"""

from __future__ import annotations

from functools import lru_cache

from evonas.training.config import TrainConfig

TOLERANCE = 0.05  # relative distance to the target parameter count that counts as "equal parameters"


def _model_shape(train: dict) -> tuple[str, int, int, int, bool]:
    """(input kind, inputs, outputs, layers, tie) of the model a training config builds."""
    from evonas.training.tasks import get_task
    from evonas.training.train import settings

    cfg = TrainConfig.from_dict(train)
    task = get_task(cfg.task, cfg.data, cfg.level)
    s = settings(cfg, task)
    return task.input_kind, task.n_inputs, task.n_outputs, cfg.layers, s.tie


def target_params(target: str | int, train: dict) -> int:
    """The parameter count to match: an integer as is, a library cell's model at the config's hidden size."""
    if isinstance(target, int):
        return target
    return _library_params(target, _freeze(train))


@lru_cache(maxsize=64)
def _library_params(name: str, train: tuple) -> int:
    from evonas.cells.library import resolve
    from evonas.nn.model import CellModel, count_params
    from evonas.training.tasks import get_task
    from evonas.training.train import settings

    d = dict(train)
    cfg = TrainConfig.from_dict(d)
    kind, n_in, n_out, layers, tie = _model_shape(d)
    hidden = settings(cfg, get_task(cfg.task, cfg.data, cfg.level)).hidden
    return count_params(CellModel(resolve(name), kind, n_in, n_out, hidden, layers, tie))


def _freeze(d: dict) -> tuple:
    return tuple(sorted((k, v) for k, v in d.items() if not isinstance(v, dict | list)))


def match_hidden(cell: str, train: dict, target: str | int) -> int | str:
    """The hidden size that brings `cell` within TOLERANCE of the target count, or the reason it cannot."""
    from evonas.nn.model import hidden_for_params
    from evonas.training.train import resolve_cell

    goal = target_params(target, train)
    kind, n_in, n_out, layers, tie = _model_shape(train)
    try:
        hidden, params = hidden_for_params(resolve_cell(cell), kind, n_in, n_out, goal, layers, tie)
    except Exception as e:  # a cell that does not build cannot be sized; training would fail the same way
        return f"cannot size the cell to {goal} parameters: {type(e).__name__}: {e}"
    if abs(params - goal) > TOLERANCE * goal:
        return (f"cannot match {goal} parameters within {TOLERANCE:.0%}: the closest is {params} at hidden "
                f"{hidden}")
    return hidden
