"""Defaults read by more than one layer, defined once: the CLI, the run config and the API all import them.

Layer 0 (like `evonas.errors`): imports nothing from evonas. A default used by one module only stays there.
"""

from __future__ import annotations

# Models in the surrogate's ensemble: 3 TreeLSTMs rank held-out cells better than one (tau 0.518 vs 0.477,
# README "Surrogate"), at 3x the fit time.
SURROGATE_ENSEMBLE = 3
SURROGATE_KIND = "treelstm"

# Structural filters of a search. Schrimpf et al. allow 21 nodes (the cell language's own default,
# `evonas.cells.FilterConfig`), which excludes the LSTM itself (31 nodes; GRU has 21). 36 lets LSTM-sized
# offspring exist (an LSTM plus a peephole or an extra gate term) while keeping trees small enough to train
# quickly. Height 10 leaves the LSTM (height 8) room for an insertion.
SEARCH_FILTERS = {"max_nodes": 36, "max_height": 10}

# Seed cells of a search: baselines from the cell library, trained first and kept in every record.
SEED_CELLS = ("tanh_rnn", "lstm", "gru")

# Evaluations sharing one GPU (each in its own worker process; on Ray, 1/this of a GPU per task). A cell of
# evonas's sizes (hidden <= a few hundred, batch 32) leaves most of a modern GPU idle: its step is a chain of
# small kernels, so the GPU waits on Python dispatch, batching and validation. A second process fills those
# gaps, while its cost is one more CUDA context (a few hundred MB) and one more CPU core; 2 fits every GPU of
# 4 GB or more and every GPU machine with 2 cores per GPU. Larger packings pay off only where cores and memory
# allow: measure with benchmarks/gpu_check.py (evaluations per hour at 1, 2 and 4 per GPU).
EVALS_PER_GPU = 2
