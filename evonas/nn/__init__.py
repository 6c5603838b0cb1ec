"""Cells as PyTorch modules: the compiler (`compile_cell`), its fast evaluator, operator semantics, and the
language model around a cell (`CellModel`).

May import: `evonas.errors`, `evonas.defaults`, `evonas.cells`, torch. Nothing above it (training, search, ...).
"""
