"""What a person looks at: the HTML run report, its plots, and cell diagrams (Graphviz).

May import: `evonas.errors`, `evonas.defaults`, `evonas.cells`, `evonas.store`. Never the search loop.
"""
