"""Evaluators: run many training jobs in parallel and report each result as it arrives.

`base` holds the contract (`Evaluator`, `Job`) that every backend meets; `local` runs worker processes on
this machine, `ray_backend` runs Ray tasks on a cluster. May import: `evonas.errors`, `evonas.defaults`,
`evonas.training` (the default job function, lazily inside the worker).
"""

from evonas.evaluation.base import Evaluator, Job, failed_result, train_job
from evonas.evaluation.local import LocalEvaluator

__all__ = ["Evaluator", "Job", "LocalEvaluator", "failed_result", "train_job"]
