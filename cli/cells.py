"""`evonas cells list` and `evonas cells show`: the cell library and any cell text."""

from __future__ import annotations

import json

import click

from evonas.cells import canonical_text, equations, filter_report, height, node_count, op_counts, passes_filters
from evonas.cells.filters import FilterConfig
from evonas.cells.library import library, lookup, resolve
from evonas.cells.ops import SOURCES
from evonas.cells.tree import Node


@click.group()
def cells() -> None:
    """Inspect the cell library and any cell text."""


def limit_options(f):
    """--max-nodes / --max-height: the size limits the filter verdicts use (DESIGN's 21 nodes by default)."""
    f = click.option("--max-height", type=click.IntRange(1), default=FilterConfig.max_height, show_default=True,
                     help="Height limit of the filters.")(f)
    return click.option("--max-nodes", type=click.IntRange(1), default=FilterConfig.max_nodes, show_default=True,
                        help="Node limit of the filters (Schrimpf et al.'s 21; `evonas evolve` defaults to 36, "
                             "so LSTM-sized cells can be searched).")(f)


def _summary(node: Node, cfg: FilterConfig) -> dict:
    """The facts `show` prints, as a JSON-safe mapping."""
    counts = op_counts(node)
    return {
        "canonical": canonical_text(node),
        "nodes": node_count(node),
        "height": height(node),
        "operators": {op: n for op, n in sorted(counts.items()) if op not in SOURCES},
        "sources": {s: counts[s] for s in SOURCES if counts[s]},
        "filters": [{"rule": r.rule, "passed": r.passed, "reason": r.reason} for r in filter_report(node, cfg)],
        "limits": {"max_nodes": cfg.max_nodes, "max_height": cfg.max_height},
        "equations": equations(node),
    }


@cells.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the library as JSON instead of a table.")
@limit_options
def list_cells(as_json: bool, max_nodes: int, max_height: int) -> None:
    """List the library: name, node count, height, whether it passes the filters, description."""
    cfg = FilterConfig(max_nodes=max_nodes, max_height=max_height)
    rows = []
    for entry in library().values():
        node = entry.cell
        rows.append({
            "name": entry.name,
            "nodes": node_count(node),
            "height": height(node),
            "filters": passes_filters(node, cfg),
            "failed": [r.rule for r in filter_report(node, cfg) if not r.passed],
            "description": entry.description,
            "citation": entry.citation,
            "text": entry.text,
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    click.echo(f"filters with max_nodes {max_nodes}, max_height {max_height} (see --max-nodes)")
    click.echo(f"{'name':<{width}}  nodes  height  filters  description")
    for r in rows:
        ok = "yes" if r["filters"] else "no"
        click.echo(f"{r['name']:<{width}}  {r['nodes']:>5}  {r['height']:>6}  {ok:<7}  {r['description']}")


@cells.command("show")
@click.argument("name_or_text")
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Also draw the cell with Graphviz to FILE.svg, FILE.png or FILE.dot (.dot needs no Graphviz).")
@limit_options
def show(name_or_text: str, as_json: bool, out: str | None, max_nodes: int, max_height: int) -> None:
    """Show one cell (a library name or a cell text): canonical text, size, operators, filters, equations."""
    node = resolve(name_or_text)  # CellSyntaxError/CellError -> one line on stderr, exit code 2
    entry = lookup(name_or_text)
    if out is not None:
        from evonas.reporting.diagram import write_diagram

        path = write_diagram(node, out, entry.name if entry is not None else "")  # EvonasError -> exit code 2
        click.echo(f"wrote {path}", err=True)
    facts = _summary(node, FilterConfig(max_nodes=max_nodes, max_height=max_height))
    if entry is not None:
        facts = {"name": entry.name, "citation": entry.citation, "description": entry.description,
                 "notes": entry.notes, **facts}
    if as_json:
        click.echo(json.dumps(facts, indent=2, ensure_ascii=False))
        return
    if entry is not None:
        click.echo(f"name:        {entry.name}")
        click.echo(f"citation:    {entry.citation}")
        click.echo(f"description: {entry.description}")
        if entry.notes:
            click.echo(f"notes:       {entry.notes}")
    click.echo(f"canonical:   {facts['canonical']}")
    click.echo(f"nodes:       {facts['nodes']}")
    click.echo(f"height:      {facts['height']}")
    ops = ", ".join(f"{op} {n}" for op, n in facts["operators"].items())
    srcs = ", ".join(f"{s} {n}" for s, n in facts["sources"].items())
    click.echo(f"operators:   {ops}")
    click.echo(f"sources:     {srcs}")
    click.echo(f"filters (max_nodes {max_nodes}, max_height {max_height}; see --max-nodes):")
    width = max(len(f["rule"]) for f in facts["filters"])
    for f in facts["filters"]:
        verdict = "pass" if f["passed"] else f"FAIL  {f['reason']}"
        click.echo(f"  {f['rule']:<{width}}  {verdict}")
    click.echo("equations:")
    for line in facts["equations"]:
        click.echo(f"  {line}")
