"""What a person looks at: the HTML run report, its plots, and cell diagrams (Graphviz); and which cell of a
run leaves evonas through `evonas export` (`handoff.py`).

May import: `evonas.errors`, `evonas.defaults`, `evonas.cells`, `evonas.store`. Never the search loop.
"""
