"""The run's DEAP toolbox: generators, variation operators wrapped by their limits, selection.

Every random choice goes through the run's `random.Random` (never the global `random`), so a run is
reproducible from its seed and resumable from the RNG state saved in its checkpoint.
"""

from __future__ import annotations

import random
from typing import Any

from deap import base, gp

from evonas.evolution import operators as op
from evonas.evolution import select as sel
from evonas.evolution.genome import make_pset


def make_toolbox(config: Any, rng: random.Random, pset: gp.PrimitiveSet | None = None) -> base.Toolbox:
    """The run's DEAP toolbox, built like DEAP's own examples: generators, variation (with limits), selection.

    `config` is a RunConfig; `rng` the run's random source, shared by every registered operator.
    """
    pset = pset or make_pset(config.ops)
    fcfg = config.filter_config()
    tb = base.Toolbox()
    tb.pset = pset
    tb.register("expr", op.gen_half_and_half, pset=pset, rng=rng,
                min_height=config.init_min_height, max_height=config.init_max_height)
    tb.register("population", op.gen_ramped, pset=pset, rng=rng, filters=fcfg,
                min_height=config.init_min_height, max_height=config.init_max_height)
    tb.register("expr_mut", op.gen_half_and_half, pset=pset, rng=rng, min_height=0, max_height=config.mut_max_height)
    tb.register("mate", op.cx_subtree, rng=rng)
    tb.register("mut_uniform", op.mut_uniform, expr=tb.expr_mut, rng=rng)
    tb.register("mut_node_replace", op.mut_node_replace, pset=pset, rng=rng)
    tb.register("mut_insert", op.mut_insert, pset=pset, rng=rng)
    tb.register("mut_shrink", op.mut_shrink, rng=rng)
    tb.register("mut_memory", op.mut_memory, pset=pset, rng=rng)
    for name in ("mate", "mut_uniform", "mut_node_replace", "mut_insert", "mut_shrink", "mut_memory"):
        tb.decorate(name, op.well_formed(pset))
        tb.decorate(name, op.static_limit(len, fcfg.max_nodes))
        tb.decorate(name, op.static_limit(lambda t: t.height, fcfg.max_height))
    tb.register("mutate", op.mut_mixture, rng=rng, weights=config.mutation_weights(),
                ops={name: getattr(tb, f"mut_{name}") for name in config.mutation_weights()})
    cx_prob = 0.0 if config.selection == "aging" else config.cx_prob  # aging evolution mutates only (Real et al.)
    tb.register("vary", op.vary, rng=rng, mate=tb.mate, mutate=tb.mutate, cx_prob=cx_prob)
    tb.register("selector", sel.make_selector, config, rng)
    return tb
