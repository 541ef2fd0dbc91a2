"""`--do` parsing: property-based (any input gives a dict or an InterventionError) and exact."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdae.counterfactual import parse_do
from cdae.errors import CdaeError, InterventionError
from cdae.graph import CausalGraph
from stages.intervene import default_name, output_path

GRAPH = CausalGraph.from_dict({
    "variables": [{"name": "thickness", "unit": "px"}, {"name": "intensity"},
                  {"name": "digit", "type": "categorical", "classes": 10}],
    "edges": [["thickness", "intensity"]]})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=20), max_size=4))
def test_any_text_parses_or_fails_cleanly(items) -> None:
    try:
        do = parse_do(items, GRAPH)
    except InterventionError as err:
        assert "\n" not in str(err)
        return
    assert set(do) <= set(GRAPH.names) and len(do) == len(items)
    assert all(math.isfinite(v) for v in do.values())


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["thickness", "intensity"]),
       st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_numbers_round_trip(name, value) -> None:
    assert parse_do([f"{name}={value!r}"], GRAPH) == {name: float(repr(value))}


def test_categorical_and_spacing() -> None:
    assert parse_do([" digit = 3 ", "thickness=2.5"], GRAPH) == {"digit": 3.0, "thickness": 2.5}
    for bad in (["digit=3.5"], ["digit=10"], ["digit=-1"]):
        with pytest.raises(InterventionError, match="not one of its classes"):
            parse_do(bad, GRAPH)


def test_output_names_cannot_escape(tmp_path: Path) -> None:
    assert output_path(tmp_path, default_name({"thickness": 2.0})) == \
        tmp_path / "do_thickness=2.h5"
    for evil in ("../x", "/etc/passwd", "a/b", ".hidden", "", "a b"):
        with pytest.raises(CdaeError, match="not a safe file name"):
            output_path(tmp_path, evil)
