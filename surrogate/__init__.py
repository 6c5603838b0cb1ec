"""Ranking surrogate: cells as DGL graphs, TreeLSTM and GNN rankers, training, persistence, scoring."""
