"""Training one cell: the train loop (`evaluate`), its config and result (`TrainConfig`, `EvalResult`),
device choice, and the tasks (`evonas.training.tasks`: synthetic, text, music).

May import: `evonas.errors`, `evonas.defaults`, `evonas.cells`, `evonas.nn`. `config.py` stays torch-free
so that the archive and the CLI can read results without importing torch.
"""
