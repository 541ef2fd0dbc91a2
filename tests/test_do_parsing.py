"""`--do` parsing: property-based (any input gives a dict or an InterventionError) and exact."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
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


RANGED = CausalGraph.from_dict({
    "variables": [{"name": "thickness", "unit": "px", "range": [0, 14]},
                  {"name": "intensity", "unit": "0..255", "range": [0, 255]},
                  {"name": "digit", "type": "categorical", "classes": 10}],
    "edges": [["thickness", "intensity"]]})


def test_declared_range_bounds_do_values() -> None:
    assert parse_do(["thickness=0", "intensity=255"], RANGED) == {"thickness": 0.0,
                                                                  "intensity": 255.0}
    with pytest.raises(InterventionError, match=r"'14.5' for 'thickness' is outside its range "
                       r"0..14 px") as err:
        parse_do(["thickness=14.5"], RANGED)
    assert "widen thickness's range" in err.value.hint
    # a unit that spells the range itself ("0..255") is not repeated
    with pytest.raises(InterventionError, match=r"outside its range 0..255 \(choose"):
        parse_do(["intensity=-1"], RANGED)


def test_propagation_past_a_declared_range_is_flagged() -> None:
    from stages.intervene import range_notes

    parents_cf = np.array([[9.0, 300.0, 1], [9.0, 250.0, 2], [9.0, 400.0, 3], [9.0, 10.0, 4]])
    notes = range_notes(RANGED, {"thickness": 9.0}, parents_cf)
    assert len(notes) == 1 and notes[0].startswith("under do(thickness=9) intensity propagates "
                                                    "outside its range 0..255 for 50% of the 4")
    assert "from 10 to 400" in notes[0]
    assert range_notes(RANGED, {"thickness": 9.0}, parents_cf[1:2]) == []
    assert range_notes(RANGED, {"intensity": 300.0}, parents_cf) == []  # set, not propagated
    assert range_notes(GRAPH, {"thickness": 9.0}, parents_cf) == []  # no range declared
