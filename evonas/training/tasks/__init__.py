"""Tasks: turn a cell into metrics by training a model around it (synthetic, text, music).

`get_task(name, data, level)` is the registry: it loads (and caches per process) the task's data. `data` is a
path, or the name of a known data set (`evonas.training.datasets`: jsb, ptb, ...) fetched into the cache.
The interface every task implements is `evonas.training.tasks.base.Task` (its contract is written there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from evonas.errors import ConfigError, DataError
from evonas.training import datasets

if TYPE_CHECKING:
    from evonas.training.tasks.base import Task

TASK_NAMES = ("synthetic", "text", "music")


def get_task(name: str, data: str | None = None, level: str = "word") -> Task:
    """The task `name` with its data loaded; ConfigError for an unknown name, DataError for bad data."""
    if name == "synthetic":
        from evonas.training.tasks import synthetic

        return synthetic.load()
    if name == "text":
        from evonas.training.tasks import text

        if data is None:
            raise DataError("the text task needs a data path (a folder with train/valid/test text files)")
        return text.load(datasets.resolve(name, data), level)
    if name == "music":
        from evonas.training.tasks import music

        if data is None:
            raise DataError("the music task needs a data path (a JSON or pickle file with train/valid/test)")
        return music.load(datasets.resolve(name, data))
    raise ConfigError(f"unknown task {name!r}; known: {', '.join(TASK_NAMES)}")


__all__ = ["TASK_NAMES", "get_task"]
