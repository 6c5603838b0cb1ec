"""The cell language: parse, print, canonicalise, check and filter cells (see DESIGN.md)."""

from evonas.cells.check import check, is_well_formed
from evonas.cells.equations import equations
from evonas.cells.filters import RULES, FilterConfig, FilterResult, filter_report, passes_filters
from evonas.cells.ops import ALL, CORE, EXTENDED, OPS, SOURCES, OpSpec, op_set
from evonas.cells.parse import parse
from evonas.cells.tree import Node, canonical, canonical_text, height, node_count, op_counts, preorder, to_text

__all__ = [
    "ALL", "CORE", "EXTENDED", "OPS", "RULES", "SOURCES", "FilterConfig", "FilterResult", "Node", "OpSpec",
    "canonical", "canonical_text", "check", "equations", "filter_report", "height", "is_well_formed",
    "node_count", "op_counts", "op_set", "parse", "passes_filters", "preorder", "to_text",
]
