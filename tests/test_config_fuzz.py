"""Fuzz the config loader and the --set parser: whatever the YAML tree or override string, loading and
building a run's parts either succeeds or raises ConfigError (a one-line exit 2 in the CLI), never
another exception. Random trees start from the shipped configs and replace, add or delete keys at
random paths with random YAML values, including the extremes (huge, negative, zero, NaN, wrong types)."""
from __future__ import annotations

import copy
import math

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hwsim.build import build_backend, build_estimator, build_network
from hwsim.config import Config, ConfigError, PinnConfig, apply_override, from_dict, read_raw

BASES = {"mnist_tt_zo": Config, "mnist_tt_fixed8": Config, "hjb20_zo_tt_sg": PinnConfig}
NAMES = ["seed", "data", "model", "layers", "backend", "name", "bits", "noise", "preset", "sim", "lanes",
         "estimator", "rge", "cge", "num_queries", "mu", "optimizer", "lr", "schedule", "train", "steps",
         "epochs", "batch_size", "rank", "in_factors", "out_factors", "in_features", "out_features",
         "int_bits", "formats", "rounding", "overflow", "pde", "points", "derivatives", "level", "dim",
         "checkpoint", "energy", "calibrate", "params", "0", "1", "2", "x"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 40),
    st.sampled_from([0, -1, 2 ** 31, 2 ** 63, 10 ** 12, 10 ** 30, -(10 ** 12)]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(NAMES),
    st.text(max_size=8),
    st.sampled_from(["ideal", "fixed", "photonic", "rtl", "rge", "cge", "hybrid", "fo", "typical", "mnist",
                     "verilator", "icarus", "phases", "gain", "saturate", "wrap", "floor", "half_even"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(NAMES), inner, max_size=4)), max_leaves=8)
paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=4)
edits = st.lists(st.tuples(st.sampled_from(["set", "delete"]), paths, values), min_size=1, max_size=4)


def _edit(tree: dict, op: str, path: list[str], value) -> None:
    """Replace (or delete) the node at ``path``, creating mappings on the way; list items by index."""
    node = tree
    for part in path[:-1]:
        key = int(part) if isinstance(node, list) and part.isdigit() else part
        if isinstance(node, list):
            if not isinstance(key, int) or key >= len(node):
                return
        elif not isinstance(node, dict):
            return
        elif key not in node:
            node[key] = {}
        node = node[key]
    last = path[-1]
    if isinstance(node, dict):
        node.pop(last, None) if op == "delete" else node.__setitem__(last, value)
    elif isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value


def _build(kind, raw) -> None:
    """Everything that happens to a config before the first step, short of loading data."""
    cfg = from_dict(kind, raw)
    network = build_network(cfg.model)
    backend = build_backend(cfg.backend, network)
    build_estimator(cfg.estimator, backend.param_space(network), backend)


def _only_config_errors(kind, raw) -> None:
    try:
        _build(kind, raw)
        event("built")
    except ConfigError as e:
        event("refused")
        assert str(e) and "\n" not in str(e), repr(e)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("base", sorted(BASES))
@FUZZ
@given(edits=edits)
def test_random_config_trees_are_loaded_or_refused_with_a_config_error(base, edits):
    raw = copy.deepcopy(read_raw(base))
    for op, path, value in edits:
        _edit(raw, op, path, value)
    _only_config_errors(BASES[base], raw)


override_text = st.one_of(
    st.text(max_size=30),
    st.builds(lambda path, value: ".".join(path) + "=" + value, paths,
              st.one_of(st.text(max_size=12), values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()))))


@FUZZ
@given(overrides=st.lists(override_text, min_size=1, max_size=3))
def test_random_set_strings_are_applied_or_refused_with_a_config_error(overrides):
    raw = copy.deepcopy(read_raw("mnist_tt_zo"))
    try:
        for text in overrides:
            apply_override(raw, text)
    except ConfigError as e:
        assert str(e).startswith("--set ") and "\n" not in str(e), repr(e)
        event("--set refused")
        return
    _only_config_errors(Config, raw)


def test_the_fuzzers_reach_both_outcomes():
    """The strategies are not vacuous: some edits load, some are refused."""
    ok = refused = 0
    for value in (7, -1, math.nan, "x", [1], {"x": 1}):
        raw = copy.deepcopy(read_raw("mnist_tt_zo"))
        _edit(raw, "set", ["train", "steps"], value)
        try:
            _build(Config, raw)
            ok += 1
        except ConfigError:
            refused += 1
    assert ok == 1 and refused == 5
