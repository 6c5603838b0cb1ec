"""Fuzzing what users type: cell texts (parser, checker, canonical form, filters, library lookup) and run
configs. Any input either works or raises the one specific EvonasError subclass; nothing else escapes.

The slow variants run 10,000 examples each (hypothesis profile "slow" from conftest.py); the fast ones run
the default profile on every test run.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from strategies import cells, mutated, print_with_style, token_strings, trees

from evonas.cells import (
    FilterConfig,
    Node,
    canonical,
    canonical_text,
    check,
    filter_report,
    library,
    node_count,
    parse,
    to_text,
)
from evonas.errors import CellError, CellSyntaxError, ConfigError, EvonasError
from evonas.evolution.config import RunConfig
from evonas.training.train import TrainConfig

SLOW = settings.get_profile("slow")


@st.composite
def near_misses(draw: st.DrawFn) -> str:
    """A valid cell (styled) with a few characters deleted, inserted or replaced."""
    node = draw(cells())
    return draw(mutated(print_with_style(draw, node)))


@st.composite
def styled_trees(draw: st.DrawFn) -> str:
    """Any tree of the language (often ill-formed) printed with random spacing and aliases."""
    return print_with_style(draw, draw(trees()))


TEXTS = st.one_of(st.text(max_size=80), token_strings(), near_misses(), styled_trees(), cells().map(to_text))


def cell_properties(text: str) -> None:
    """parse -> (Node | CellSyntaxError); a parsed tree round-trips and canonicalises idempotently; check
    gives the node or CellError; filters never crash; library.resolve agrees with parse + check."""
    try:
        node = parse(text)
    except CellSyntaxError as e:
        assert e.column >= 1 and str(e).endswith(f"at column {e.column}")
        assert "\n" not in str(e)  # one line
        if library.lookup(text) is not None:  # a library name in any case, e.g. "TANH_RNN": resolve accepts it
            assert library.resolve(text) == library.lookup(text).cell
        else:
            with pytest.raises(EvonasError):
                library.resolve(text)
        return
    assert isinstance(node, Node)
    assert parse(to_text(node)) == node
    canon = canonical(node)
    assert canonical(canon) == canon and canonical_text(canon) == canonical_text(node)
    assert parse(canonical_text(node)) == canon
    assert node_count(canon) <= node_count(node)  # equivalent spellings merge
    try:
        checked = check(node)
    except CellError as e:
        assert str(e) and "\n" not in str(e)
        with pytest.raises(EvonasError):
            library.resolve(text)
        return
    assert checked == node or canonical_text(checked) == canonical_text(node)
    report = filter_report(node, FilterConfig())
    assert isinstance(report, dict | list | tuple)
    if library.lookup(text) is None:
        assert canonical_text(library.resolve(text)) == canonical_text(node)


@given(TEXTS)
@example("TANH_RNN")  # found by the 10,000-example run: a library name that does not parse
@example(" lstm ")
def test_cell_text_fuzz_fast(text):
    cell_properties(text)


@pytest.mark.slow
@SLOW
@given(TEXTS)
def test_cell_text_fuzz_10000(text):
    cell_properties(text)


# ------------------------------------------------------------------------------------------------ configs

VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
              st.text(max_size=12), st.sampled_from(["core", "extended", "lstm", "gru", "tournament", "cpu",
                                                       "synthetic", "text", "treelstm", "MM", "Tanh"])),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8,
)
RUN_KEYS = st.sampled_from(sorted(RunConfig.__dataclass_fields__) + ["populaton", "", "train.lr"])
TRAIN_KEYS = st.sampled_from(sorted(TrainConfig.__dataclass_fields__) + ["hiden", "learning_rate"])


def config_properties(run: dict, train: dict) -> None:
    """RunConfig/TrainConfig from arbitrary dicts: a config or ConfigError, never another exception."""
    try:
        cfg = RunConfig.from_dict(run)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert RunConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    try:
        tc = TrainConfig.from_dict(train)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert TrainConfig.from_dict(tc.to_dict()) == tc


CONFIGS = (st.dictionaries(RUN_KEYS, VALUES, max_size=4), st.dictionaries(TRAIN_KEYS, VALUES, max_size=4))


@given(*CONFIGS)
@example(run={"ops": None}, train={})
def test_config_fuzz_fast(run, train):
    config_properties(run, train)


@pytest.mark.slow
@SLOW
@given(*CONFIGS)
@example(run={"ops": None}, train={})
def test_config_fuzz_10000(run, train):
    config_properties(run, train)
