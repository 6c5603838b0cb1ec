"""Ranking surrogate: cells as DGL graphs, TreeLSTM and GNN rankers, training, persistence, scoring.

Entry points (import the submodule; importing this package loads nothing heavy):
- `evonas.surrogate.api`: `Surrogate(kind, seed, ensemble)` with `fit(records, warm_start=False)`,
  `score(cells) -> list[float]` (lower = better), `score_with_spread`, `evaluate`, `save`, `Surrogate.load`;
  `make_surrogate(kind, seed)` for the search loop.
- `graph` (cell -> unrolled graph, tree and DAG forms, cache, batching), `template` (fast text path),
  `model` (ranker contract, registry, ensemble), `treelstm`, `gnn`, `train` (loss, normalisation, early
  stopping), `persist` (weights.pt + meta.json), `data` (CSV/JSONL/run-folder readers), `metrics`,
  `sample` (random cells and mutants for datasets and tests).
"""
