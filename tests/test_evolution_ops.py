"""Evolution building blocks in isolation: DEAP types, tree conversion, generation, variation, selection, config."""

from __future__ import annotations

import copy
import importlib
import math
import random
import warnings

import pytest
from deap import creator
from hypothesis import given
from strategies import cells

from evonas.cells import FilterConfig, canonical_text, height, is_well_formed, node_count, parse, passes_filters
from evonas.errors import ConfigError
from evonas.evolution import genome as gnm
from evonas.evolution import operators as op
from evonas.evolution import screen as scr
from evonas.evolution import toolbox as tbx
from evonas.evolution.config import RunConfig
from evonas.evolution.select import NSGA2, Aging, HallOfFame, Tournament, set_fitness, usable

LSTM = ("Mult(Sigmoid(Add(MM(x),MM(h_prev))),Tanh(Memory(Add(Mult(Sigmoid(Add(MM(x),MM(h_prev))),c_prev),"
        "Mult(Sigmoid(Add(MM(x),MM(h_prev))),Tanh(Add(MM(x),MM(h_prev))))))))")
GRU = ("Gate3(Tanh(Add(MM(x),MM(Mult(Sigmoid(Add(MM(x),MM(h_prev))),h_prev)))),h_prev,"
       "Sigmoid(Add(MM(x),MM(h_prev))))")
RNN = "Tanh(Add(MM(x),MM(h_prev)))"


@pytest.fixture
def setup():
    cfg = RunConfig()
    rng = random.Random(1)
    return cfg, rng, tbx.make_toolbox(cfg, rng)


def ind(text: str, pset, loss=None, params=0):
    i = gnm.make_individual(parse(text), pset)
    set_fitness(i, loss, params)
    return i


# ---------------------------------------------------------------- DEAP types and conversion

def test_creator_types_are_created_once():
    before = creator.EvonasIndividual
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # DEAP warns when a creator class is overwritten
        importlib.reload(gnm)
    assert creator.EvonasIndividual is before
    assert gnm.Individual is before


@given(cells())
def test_node_tree_round_trip(cell):
    pset = gnm.make_pset("all")
    assert gnm.to_node(gnm.to_tree(cell, pset)) == cell


def test_tree_of_unknown_operator_is_config_error():
    with pytest.raises(ConfigError, match="LayerNorm"):
        gnm.to_tree(parse("LayerNorm(Add(MM(x),MM(h_prev)))"), gnm.make_pset("core"))


def test_pset_follows_operator_set():
    names = {p.name for p in gnm.make_pset("extended").primitives[object]}
    assert {"Sub", "Div", "LayerNorm"} <= names and "Diag" not in names
    assert {p.name for p in gnm.make_pset(["MM", "Tanh", "Add"]).primitives[object]} == {"MM", "Tanh", "Add"}


# ---------------------------------------------------------------- generation

def test_gen_ramped_gives_distinct_filtered_cells(setup):
    cfg, rng, tb = setup
    pop = tb.population(30)
    keys = [i.key for i in pop]
    assert len(pop) == 30 and len(set(keys)) == 30
    for i in pop:
        node = gnm.to_node(i)
        assert is_well_formed(node) and passes_filters(node, cfg.filter_config())
        assert i.key == canonical_text(node)
    heights = {height(gnm.to_node(i)) for i in pop}
    assert len(heights) >= 3  # ramped: several heights


def test_gen_ramped_is_reproducible():
    a = tbx.make_toolbox(RunConfig(), random.Random(7)).population(10)
    b = tbx.make_toolbox(RunConfig(), random.Random(7)).population(10)
    assert [i.key for i in a] == [i.key for i in b]


def test_gen_ramped_excludes_and_errors_when_filters_leave_nothing(setup):
    cfg, rng, tb = setup
    first = tb.population(5)
    again = op.gen_ramped(5, tb.pset, random.Random(1), cfg.filter_config(), 2, 5, exclude={i.key for i in first})
    assert not {i.key for i in first} & {i.key for i in again}
    with pytest.raises(ConfigError, match="filters leave nothing"):
        op.gen_ramped(3, tb.pset, rng, FilterConfig(max_nodes=3), 2, 4, max_tries=200)


# ---------------------------------------------------------------- variation

MUTATIONS = ["mut_uniform", "mut_node_replace", "mut_insert", "mut_shrink", "mut_memory"]


@pytest.mark.parametrize("name", MUTATIONS)
def test_mutations_give_well_formed_cells_within_limits(setup, name):
    cfg, rng, tb = setup
    parents = [ind(t, tb.pset) for t in (LSTM, GRU, RNN)] + tb.population(10)
    f = cfg.filter_config()
    changed = 0
    for k in range(150):
        p = parents[k % len(parents)]
        child = getattr(tb, name)(copy.deepcopy(p))[0]
        node = gnm.to_node(child)
        assert is_well_formed(node), node
        assert len(child) <= f.max_nodes and child.height <= f.max_height
        changed += list(child) != list(p)
    assert changed > 100


def test_mut_memory_adds_a_recurring_memory(setup):
    cfg, rng, tb = setup
    added = 0
    for _ in range(50):
        child = tb.mut_memory(ind(RNN, tb.pset))[0]
        node = gnm.to_node(child)
        if "Memory" in str(node):
            added += 1
            assert "c_prev" in str(node)
            report = {r.rule: r.passed for r in __import__("evonas").cells.filter_report(node, cfg.filter_config())}
            assert report["memory_recurrence"]
    assert added > 40


def test_mut_memory_moves_the_memory_of_lstm(setup):
    cfg, rng, tb = setup
    lstm = ind(LSTM, tb.pset)
    moved = {gnm.tree_key(tb.mut_memory(copy.deepcopy(lstm))[0]) for _ in range(40)}
    assert len(moved - {lstm.key}) >= 2
    for key in moved:
        node = parse(key)
        assert str(node).count("Memory") <= 1 and is_well_formed(node)


def test_crossover_swaps_subtrees(setup):
    cfg, rng, tb = setup
    swapped = 0
    for _ in range(50):
        a, b = ind(GRU, tb.pset), ind(RNN, tb.pset)
        ca, cb = op.cx_subtree(copy.deepcopy(a), copy.deepcopy(b), rng)
        assert len(ca) + len(cb) == len(a) + len(b)
        assert is_well_formed(gnm.to_node(ca)) and is_well_formed(gnm.to_node(cb))
        swapped += list(ca) != list(a)
    assert swapped > 30  # some swaps exchange equal subtrees (MM(x) for MM(x))


def test_static_limit_gives_back_the_parent():
    pset = gnm.make_pset("core")

    def grow(i):
        list.__setitem__(i, slice(None), list(gnm.to_tree(parse(LSTM), pset)))
        return (i,)

    limited = op.static_limit(len, 10)(grow)
    parent = ind(RNN, pset)
    assert list(limited(copy.deepcopy(parent))[0]) == list(parent)
    assert len(op.static_limit(len, 40)(grow)(copy.deepcopy(parent))[0]) == node_count(parse(LSTM))


def test_breed_gives_new_filtered_distinct_offspring(setup):
    cfg, rng, tb = setup
    parents = [ind(t, tb.pset) for t in (LSTM, GRU, RNN)] + tb.population(5)
    seen = {p.key for p in parents}
    kids = op.breed(tb, parents, 40, cfg.filter_config(), seen, rng)
    assert len(kids) == 40 and len({k.key for k in kids}) == 40
    assert not seen & {k.key for k in kids}
    assert all(passes_filters(gnm.to_node(k), cfg.filter_config()) for k in kids)
    kinds = {k.mutation for k in kids}
    assert "crossover" in kinds and len(kinds) >= 4


# ---------------------------------------------------------------- selection

@pytest.fixture
def scored():
    pset = gnm.make_pset("core")
    pop = tbx.make_toolbox(RunConfig(), random.Random(3)).population(12)
    losses = [3.0, 2.0, 1.0, math.nan, math.inf, None, 2.5, 1.5, 4.0, 0.5, 5.0, 2.2]
    for i, loss in zip(pop, losses, strict=True):
        set_fitness(i, loss, len(i) * 10)
    return pset, pop


def test_unusable_fitness_is_never_selected(scored):
    _, pop = scored
    bad = {i.key for i in pop if not usable(i)}
    assert len(bad) == 3
    rng = random.Random(0)
    for sel in (Tournament(3, 2, rng), NSGA2(rng), Aging(3, rng)):
        assert not bad & {p.key for p in sel.parents(pop, 200)}
    for sel in (Tournament(3, 2, rng), NSGA2(rng)):
        assert not bad & {s.key for s in sel.survivors(pop[:6], pop[6:], 8)}
    hof = HallOfFame(20)
    hof.update(pop)
    assert len(hof) == 9 and not bad & {i.key for i in hof}
    assert [i.fitness.values[0] for i in hof][:3] == [0.5, 1.0, 1.5]


def test_tournament_keeps_the_elite(scored):
    _, pop = scored
    surv = Tournament(2, 2, random.Random(0)).survivors(pop[:6], pop[6:], 4)
    assert len(surv) == 4 and [s.fitness.values[0] for s in surv[:2]] == [0.5, 1.0]
    assert len({s.key for s in surv}) == 4


def test_nsga2_keeps_the_pareto_front(scored):
    _, pop = scored
    ok = [i for i in pop if usable(i)]
    front = [i for i in ok if not any(j.fitness.dominates(i.fitness) for j in ok)]
    surv = NSGA2(random.Random(0)).survivors(pop[:6], pop[6:], len(front))
    assert {s.key for s in surv} == {f.key for f in front}


def test_aging_is_a_steady_state_queue(scored):
    """Real et al. 2019: each child joins at the young end and the oldest cell leaves, whatever its fitness;
    failed children (no usable fitness) take their place in the queue too."""
    _, pop = scored
    aging = Aging(3, random.Random(0))
    assert aging.survivors([], pop[:6], 4) == pop[:6]  # generation 0: the whole initial population
    surv = aging.survivors(pop[:6], pop[6:9], 4)  # pop[3:6] have no usable fitness
    assert [s.key for s in surv] == [pop[i].key for i in range(3, 9)]


def test_aging_refuses_a_config_that_cannot_age():
    with pytest.raises(ConfigError, match="selection aging needs offspring < population"):
        RunConfig.from_dict({"selection": "aging", "population": 6, "offspring": 6})


# ---------------------------------------------------------------- screen helpers

def test_pick_takes_the_best_and_explores():
    keys = [f"c{i}" for i in range(20)]
    scores = [float(i) for i in range(20)]
    scores[0] = math.nan
    clean = scr.clean_scores(scores, 20)
    assert clean[0] == math.inf
    picked = scr.pick(keys, clean, 8, 0.25, random.Random(0))
    assert picked[:6] == [1, 2, 3, 4, 5, 6] and len(set(picked)) == 8
    assert all(i > 6 or i == 0 for i in picked[6:])
    assert scr.pick(keys, clean, 4, 0.0, random.Random(0)) == [1, 2, 3, 4]


def test_kendall_tau():
    assert scr.kendall_tau([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(1.0)
    assert scr.kendall_tau([1, 2, 3, 4], [0.4, 0.3, 0.2, 0.1]) == pytest.approx(-1.0)
    assert scr.kendall_tau([1, 2], [None, 0.3]) is None


# ---------------------------------------------------------------- config

def test_config_names_bad_key_and_value(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'generatoins'"):
        RunConfig.from_dict({"generatoins": 3})
    with pytest.raises(ConfigError, match=r"population must be an integer >= 1, got -2"):
        RunConfig.from_dict({"population": -2})
    with pytest.raises(ConfigError, match=r"selection must be one of .*got 'roulette'"):
        RunConfig.from_dict({"selection": "roulette"})
    with pytest.raises(ConfigError, match="max_nodes"):
        RunConfig.from_dict({"filters": {"max_nodes": "many"}})
    with pytest.raises(ConfigError, match="mutation: unknown key 'flip'"):
        RunConfig.from_dict({"mutation": {"flip": 1}})
    p = tmp_path / "c.yaml"
    p.write_text("generations: 2\nseed_cells: [lstm]\ntrain: {steps: 5}\n")
    cfg = RunConfig.load(p, {"generations": 7, "seed": None})
    assert cfg.generations == 7 and cfg.seed_cells == ["lstm"] and cfg.train == {"steps": 5}
    p.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        RunConfig.load(p)


def test_memory_mutation_only_with_memory_operator():
    assert "memory" in RunConfig().mutation_weights()
    assert "memory" not in RunConfig(ops=["MM", "Tanh", "Add", "Sigmoid"]).mutation_weights()


def test_aging_evolution_mutates_only():
    cfg = RunConfig(selection="aging", cx_prob=1.0)
    rng = random.Random(0)
    tb = tbx.make_toolbox(cfg, rng)
    kids = op.breed(tb, tb.population(6), 20, cfg.filter_config(), set(), rng)
    assert kids and "crossover" not in {k.mutation for k in kids}
