"""Graph and params validation: messages name the key path; profiles and overrides."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cdae import config
from cdae.errors import ConfigError
from cdae.graph import CausalGraph

MORPHO = {"variables": [{"name": "thickness", "type": "continuous", "unit": "px"},
                        {"name": "intensity", "type": "continuous"},
                        {"name": "digit", "type": "categorical", "classes": 10}],
          "edges": [["thickness", "intensity"]]}


def base_raw() -> dict:
    with open(config.Path(__file__).resolve().parents[1] / "params.yaml") as f:
        return yaml.safe_load(f)


def test_topological_order_and_descendants() -> None:
    g = CausalGraph.from_dict({"variables": [{"name": n} for n in "abcde"],
                               "edges": [["c", "a"], ["a", "b"], ["b", "d"], ["e", "d"]]})
    order = g.topological_order()
    for p, c in g.edges:
        assert order.index(p) < order.index(c)
    assert g.descendants(["a"]) == ("b", "d")
    assert g.descendants(["e"]) == ("d",)
    assert g.descendants(["d"]) == ()
    assert g.parents("d") == ("b", "e")


@pytest.mark.parametrize("edges, fragment", [
    ([["thickness", "intensity"], ["intensity", "thickness"]], "cycle"),
    ([["thickness", "colour"]], "graph.edges[0]: unknown variable 'colour'"),
    ([["thickness", "thickness"]], "self-loop"),
    ([["thickness", "intensity"], ["thickness", "intensity"]], "duplicate edge"),
    ([["thickness"]], "graph.edges[0]: expected [parent, child]"),
])
def test_bad_graphs_name_the_key(edges, fragment) -> None:
    raw = copy.deepcopy(MORPHO)
    raw["edges"] = edges
    with pytest.raises(ConfigError, match=None) as err:
        CausalGraph.from_dict(raw)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_duplicate_variable_and_bad_type() -> None:
    raw = copy.deepcopy(MORPHO)
    raw["variables"].append({"name": "digit", "type": "categorical", "classes": 3})
    with pytest.raises(ConfigError, match=r"graph.variables\[3\].name: duplicate"):
        CausalGraph.from_dict(raw)
    raw = copy.deepcopy(MORPHO)
    raw["variables"][0]["type"] = "ordinal"
    with pytest.raises(ConfigError, match=r"graph.variables\[0\].type"):
        CausalGraph.from_dict(raw)


@pytest.mark.parametrize("variable, fragment", [
    ({"name": "digit", "type": "categorical", "classes": 10, "range": [0, 9]},
     "graph.variables[0].range: only continuous variables have a range"),
    ({"name": "t", "range": [3, 1]}, "graph.variables[0].range: low 3 must be below high 1"),
    ({"name": "t", "range": [0]}, "graph.variables[0].range: expected [low, high]"),
    ({"name": "t", "range": [0, ".inf"]}, "expected [low, high] (two finite numbers)"),
    ({"name": "t", "range": [0, float("inf")]}, "expected [low, high] (two finite numbers)"),
    ({"name": "t", "ranges": [0, 1]}, "graph.variables[0].ranges: unknown key"),
])
def test_bad_ranges_name_the_key(variable, fragment) -> None:
    with pytest.raises(ConfigError) as err:
        CausalGraph.from_dict({"variables": [variable]})
    assert fragment in str(err.value)


def test_ranges_round_trip_and_stay_out_of_the_structure() -> None:
    from cdae.checkpoint import config_hash

    raw = copy.deepcopy(MORPHO)
    plain = CausalGraph.from_dict(raw)
    raw["variables"][0]["range"] = [0, 14]
    ranged = CausalGraph.from_dict(raw)
    assert ranged.variable("thickness").range == (0.0, 14.0)
    assert CausalGraph.from_json(ranged.to_json()) == ranged
    assert ranged.to_dict() != plain.to_dict() and ranged.structure() == plain.structure()
    assert "thickness [px, range 0..14] (root)" in ranged.describe()
    # a range changed after training neither refuses the checkpoint nor restarts its training
    params = config.to_dict(config.resolve(base_raw()))
    widened = copy.deepcopy(params)
    widened["graph"]["variables"][0]["range"] = [0, 20]
    assert config_hash(widened) == config_hash(params)
    widened["graph"]["variables"][0]["unit"] = "mm"
    assert config_hash(widened) != config_hash(params)


def test_params_file_loads_with_every_profile() -> None:
    raw = base_raw()
    for profile in ["default", *raw["profiles"]]:
        p = config.resolve(raw, profile)
        assert p.profile == profile
    assert config.resolve(raw, "paper").model.unet_channels == 128
    assert config.resolve(raw, "tiny").train.steps < config.resolve(raw).train.steps
    # floors are named after one graph's metrics: the pendulum's {} replaces the base's nine
    assert len(config.resolve(raw).evaluate.floors) == 9
    assert dict(config.resolve(raw, "pendulum").evaluate.floors) == {}
    assert config.resolve(raw, "tiny").evaluate.floors == config.resolve(raw).evaluate.floors


@pytest.mark.parametrize("path, value, fragment", [
    (("train", "batch_size"), 0, "train.batch_size: 0 must be > 0"),
    (("train", "lr"), "fast", "train.lr: expected a number"),
    (("train", "colour"), 1, "train.colour: unknown key"),
    (("model", "mechanism"), "spline", "model.mechanism: 'spline' is not valid"),
    (("data", "labeled_fraction"), 1.5, "data.labeled_fraction: 1.5 must be in [0, 1]"),
    (("model", "channel_mult"), 2, "model.channel_mult: expected a list"),
    (("intervene", "t0"), 1000, "intervene.t0: 1000 must be below diffusion.timesteps (1000)"),
    (("evaluate", "sweep_steps"), [10, 0], "evaluate.sweep_steps: [10, 0]: every step count"),
    (("evaluate", "sweep_guidance"), [1, -1], "evaluate.sweep_guidance: [1.0, -1.0]: every"),
    (("evaluate", "floors"), {"do_thickness.thickness_mae": "< 0.2"},
     "evaluate.floors.do_thickness.thickness_mae: '< 0.2' is not a floor"),
    (("evaluate", "floors"), {"cycles.composition_l1_1": "<= lots"},
     "evaluate.floors.cycles.composition_l1_1: '<= lots' is not a floor"),
    (("evaluate", "floors"), {"thickness_mae": "<= 0.2"},
     "evaluate.floors.thickness_mae: name a number of metrics.json as ROW.METRIC"),
    (("evaluate", "floors"), ["<= 0.2"], "evaluate.floors: expected a mapping"),
])
def test_bad_params_name_the_key(path, value, fragment) -> None:
    raw = base_raw()
    raw[path[0]][path[1]] = value
    with pytest.raises(ConfigError) as err:
        config.resolve(raw)
    assert fragment in str(err.value)


def test_unknown_profile_and_override() -> None:
    with pytest.raises(ConfigError, match="unknown profile 'h100'"):
        config.resolve(base_raw(), "h100")
    p = config.resolve(base_raw())
    t = config.override(p.train, "train", steps=7)
    assert t.steps == 7 and t.lr == p.train.lr
    with pytest.raises(ConfigError, match="train.steps: -1 must be > 0"):
        config.override(p.train, "train", steps=-1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), max_size=10))
def test_random_graphs_are_dags_or_rejected(pairs) -> None:
    names = [f"v{i}" for i in range(6)]
    raw = {"variables": [{"name": n} for n in names],
           "edges": [[names[a], names[b]] for a, b in pairs]}
    try:
        g = CausalGraph.from_dict(raw)
    except ConfigError as err:
        assert any(w in str(err) for w in ("cycle", "self-loop", "duplicate"))
        return
    order = g.topological_order()
    assert sorted(order) == sorted(names)
    for a, b in g.edges:
        assert order.index(a) < order.index(b)
        assert b in g.descendants([a])


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([("train", "batch_size"), ("train", "lr"), ("train", "steps"),
                        ("model", "latent_dim"), ("data", "labeled_fraction"),
                        ("intervene", "guidance"), ("model", "mechanism"), ("train", "bf16")]),
       st.one_of(st.integers(-5, 5), st.floats(-2, 2, allow_nan=False), st.text(max_size=6),
                 st.booleans(), st.none(), st.lists(st.integers(), max_size=2)))
def test_any_params_value_is_accepted_or_named(path, value) -> None:
    raw = base_raw()
    raw[path[0]][path[1]] = value
    try:
        p = config.resolve(raw)
    except ConfigError as err:
        assert str(err).startswith(f"{path[0]}.{path[1]}:"), str(err)
        assert "\n" not in str(err)
        return
    assert getattr(getattr(p, path[0]), path[1]) is not None


def test_a_key_left_out_means_the_shipped_value() -> None:
    """The dataclasses' defaults are params.yaml's base values: a params file with the graph
    alone resolves to the shipped settings (bar the example interventions and the floors, both
    named after the shipped graph's variables), so leaving a key out can never select a setting
    the README does not document."""
    raw = base_raw()
    full = config.resolve(raw)
    minimal = config.resolve({"graph": raw["graph"]})
    for section in dataclasses.fields(config.Params):
        want, got = getattr(full, section.name), getattr(minimal, section.name)
        if section.name == "intervene":
            want = dataclasses.replace(want, interventions={})
        if section.name == "evaluate":
            want = dataclasses.replace(want, floors={})
        assert got == want, section.name
