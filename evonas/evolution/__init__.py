"""Evolution: DEAP genetic programming over cells, selection, and the search loop."""
