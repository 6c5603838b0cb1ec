"""What a run leaves on disk: the SQLite archive of evaluations, the atomic JSON checkpoint, the logbook,
best cells and the copy of the config. No pickle anywhere.

May import: `evonas.errors`, `evonas.defaults`, and types from `evonas.evaluation`/`evonas.training.config`.
"""
