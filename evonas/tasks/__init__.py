"""Tasks: turn a cell into metrics by training a model around it (synthetic, text, music)."""
