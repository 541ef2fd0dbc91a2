"""Causal graphs over labelled variables.

A :class:`CausalGraph` is a DAG of :class:`Variable` objects. It is built from the ``graph``
section of params.yaml (or a dataset/checkpoint's stored metadata) and validated on construction:
unknown names, duplicates, self-loops and cycles raise :class:`~cdae.errors.ConfigError` with the
offending key path in the message.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterable, Mapping

import numpy as np

from cdae.errors import ConfigError


class VarType(str, Enum):
    """Kind of a causal variable."""

    CONTINUOUS = "continuous"
    CATEGORICAL = "categorical"


@dataclass(frozen=True)
class Variable:
    """One causal variable.

    ``unit`` names the raw unit users speak (e.g. ``px``); ``classes`` is the number of classes of
    a categorical variable (values 0..classes-1). ``range`` (continuous only, optional) is the
    closed interval (low, high), in ``unit``, of the values the variable can take at all (e.g.
    0..255 for a pixel intensity): ``do()`` refuses a value outside it, and a counterfactual that
    propagates a descendant outside it is flagged. It is a declaration about the variable, not
    the training support (which ``intervene`` judges from the data).
    """

    name: str
    type: VarType
    unit: str = ""
    classes: int = 0
    range: tuple[float, float] | None = None

    @property
    def is_categorical(self) -> bool:
        return self.type is VarType.CATEGORICAL

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type.value}
        if self.unit:
            out["unit"] = self.unit
        if self.is_categorical:
            out["classes"] = self.classes
        if self.range is not None:
            out["range"] = list(self.range)
        return out

    def outside(self, values: Any) -> np.ndarray:
        """Whether each of ``values`` (raw units, a number or an array) lies outside the declared
        range: bool array of ``values``' shape (all False without a range; NaN is not outside)."""
        v = np.asarray(values, dtype=np.float64)
        if self.range is None:
            return np.zeros(v.shape, bool)
        return (v < self.range[0]) | (v > self.range[1])

    def describe_range(self) -> str:
        """``0..14``-style text of the declared range ("" without one)."""
        return "" if self.range is None else f"{self.range[0]:g}..{self.range[1]:g}"


@dataclass(frozen=True)
class CausalGraph:
    """A validated DAG. ``edges`` are (parent, child) name pairs."""

    variables: tuple[Variable, ...]
    edges: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        names = [v.name for v in self.variables]
        if not names:
            raise ConfigError("graph.variables is empty", hint="declare at least one variable")
        seen: set[str] = set()
        for i, n in enumerate(names):
            if n in seen:
                raise ConfigError(f"graph.variables[{i}].name: duplicate variable '{n}'",
                                  hint="give each variable a unique name")
            seen.add(n)
        for k, (a, b) in enumerate(self.edges):
            for end in (a, b):
                if end not in seen:
                    raise ConfigError(f"graph.edges[{k}]: unknown variable '{end}'",
                                      hint=f"use one of: {', '.join(names)}")
            if a == b:
                raise ConfigError(f"graph.edges[{k}]: self-loop on '{a}'", hint="remove the edge")
        if len(set(self.edges)) != len(self.edges):
            dup = next(e for e in self.edges if self.edges.count(e) > 1)
            raise ConfigError(f"graph.edges: duplicate edge {dup[0]} -> {dup[1]}",
                              hint="list each edge once")
        self._check_acyclic()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], key: str = "graph") -> "CausalGraph":
        """Parse ``{"variables": [...], "edges": [[parent, child], ...]}``; messages name ``key``."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{key}: expected a mapping with 'variables' and 'edges'")
        unknown = set(raw) - {"variables", "edges"}
        if unknown:
            raise ConfigError(f"{key}.{sorted(unknown)[0]}: unknown key",
                              hint="allowed keys: variables, edges")
        raw_vars = raw.get("variables")
        if not isinstance(raw_vars, list):
            raise ConfigError(f"{key}.variables: expected a list of variables")
        variables = [_parse_variable(v, f"{key}.variables[{i}]") for i, v in enumerate(raw_vars)]
        raw_edges = raw.get("edges", []) or []
        if not isinstance(raw_edges, list):
            raise ConfigError(f"{key}.edges: expected a list of [parent, child] pairs")
        edges = []
        for i, e in enumerate(raw_edges):
            if (not isinstance(e, (list, tuple)) or len(e) != 2
                    or not all(isinstance(s, str) for s in e)):
                raise ConfigError(f"{key}.edges[{i}]: expected [parent, child], got {e!r}")
            edges.append((e[0], e[1]))
        try:
            return cls(tuple(variables), tuple(edges))
        except ConfigError as err:
            if key != "graph":
                raise ConfigError(err.message.replace("graph.", f"{key}.", 1), hint=err.hint) from None
            raise

    @classmethod
    def from_json(cls, text: str) -> "CausalGraph":
        return cls.from_dict(json.loads(text))

    def to_dict(self) -> dict[str, Any]:
        return {"variables": [v.to_dict() for v in self.variables],
                "edges": [list(e) for e in self.edges]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def structure(self) -> dict[str, Any]:
        """What a trained model or a dataset depends on: :meth:`to_dict` without the declared
        ranges, which only bound what ``do()`` accepts (so they can change after training)."""
        out = self.to_dict()
        for v in out["variables"]:
            v.pop("range", None)
        return out

    # ------------------------------------------------------------------ queries
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variables)

    def index(self, name: str) -> int:
        return self.names.index(self.require(name))

    def variable(self, name: str) -> Variable:
        return self.variables[self.index(name)]

    def require(self, name: str) -> str:
        if name not in self.names:
            import difflib

            from cdae.errors import InterventionError

            lower = {n.lower(): n for n in self.names}
            close = difflib.get_close_matches(name.lower(), list(lower), n=1, cutoff=0.6)
            guess = f"did you mean '{lower[close[0]]}'? " if close else ""
            raise InterventionError(f"unknown variable '{name}'",
                                    hint=f"{guess}variables in the graph: {', '.join(self.names)}")
        return name

    def parents(self, name: str) -> tuple[str, ...]:
        """Parents of ``name`` in declaration order of the variables."""
        ps = {a for a, b in self.edges if b == name}
        return tuple(n for n in self.names if n in ps)

    def children(self, name: str) -> tuple[str, ...]:
        cs = {b for a, b in self.edges if a == name}
        return tuple(n for n in self.names if n in cs)

    def topological_order(self) -> tuple[str, ...]:
        """Kahn's algorithm, ties broken by declaration order (deterministic)."""
        indeg = {n: len(self.parents(n)) for n in self.names}
        order: list[str] = []
        ready = [n for n in self.names if indeg[n] == 0]
        while ready:
            n = ready.pop(0)
            order.append(n)
            for c in self.children(n):
                indeg[c] -= 1
                if indeg[c] == 0:
                    ready.append(c)
            ready.sort(key=self.names.index)
        return tuple(order)

    def descendants(self, names: Iterable[str]) -> tuple[str, ...]:
        """Strict descendants of any of ``names``, in topological order, excluding ``names``."""
        start = set(names)
        found: set[str] = set()
        frontier = list(start)
        while frontier:
            for c in self.children(frontier.pop()):
                if c not in found:
                    found.add(c)
                    frontier.append(c)
        return tuple(n for n in self.topological_order() if n in found and n not in start)

    def describe(self) -> str:
        """Human-readable text, one line per variable: ``thickness [px, range 0..14] (root)``."""
        lines = []
        for v in self.variables:
            kind = f"{v.classes} classes" if v.is_categorical else (v.unit or "continuous")
            if v.range is not None:
                kind += f", range {v.describe_range()}"
            ps = self.parents(v.name)
            lines.append(f"{v.name} [{kind}]" + (f" <- {', '.join(ps)}" if ps else " (root)"))
        return "\n".join(lines)

    # ------------------------------------------------------------------ internal
    def _check_acyclic(self) -> None:
        color = {n: 0 for n in self.names}
        adj = {n: [b for a, b in self.edges if a == n] for n in self.names}

        def visit(n: str, path: list[str]) -> None:
            color[n] = 1
            for c in adj[n]:
                if color[c] == 1:
                    cyc = path[path.index(c):] + [n, c] if c in path else [n, c]
                    raise ConfigError(f"graph.edges: cycle {' -> '.join(cyc)}",
                                      hint="a causal graph must be acyclic; remove one edge")
                if color[c] == 0:
                    visit(c, path + [n])
            color[n] = 2

        for n in self.names:
            if color[n] == 0:
                visit(n, [])


def _parse_variable(raw: Any, key: str) -> Variable:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key}: expected a mapping with name and type")
    unknown = set(raw) - {"name", "type", "unit", "classes", "range"}
    if unknown:
        raise ConfigError(f"{key}.{sorted(unknown)[0]}: unknown key",
                          hint="allowed keys: name, type, unit, classes, range")
    name = raw.get("name")
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"{key}.name: expected an identifier (letters, digits, _), got {name!r}")
    try:
        vtype = VarType(raw.get("type", "continuous"))
    except ValueError:
        raise ConfigError(f"{key}.type: {raw.get('type')!r} is not a variable type",
                          hint="use continuous or categorical") from None
    unit = raw.get("unit", "")
    if not isinstance(unit, str):
        raise ConfigError(f"{key}.unit: expected a string, got {unit!r}")
    classes = raw.get("classes", 0)
    if vtype is VarType.CATEGORICAL:
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
            raise ConfigError(f"{key}.classes: a categorical variable needs an integer >= 2, "
                              f"got {classes!r}")
    elif classes not in (0, None):
        raise ConfigError(f"{key}.classes: only categorical variables have classes")
    return Variable(name=name, type=vtype, unit=unit, classes=int(classes or 0),
                    range=_parse_range(raw.get("range"), vtype, f"{key}.range"))


def _parse_range(raw: Any, vtype: VarType, key: str) -> tuple[float, float] | None:
    """``[low, high]`` (finite numbers, low < high) of a continuous variable, or None."""
    if raw is None:
        return None
    if vtype is VarType.CATEGORICAL:
        raise ConfigError(f"{key}: only continuous variables have a range",
                          hint="a categorical variable's values are its classes")
    ok = (isinstance(raw, (list, tuple)) and len(raw) == 2
          and all(isinstance(b, (int, float)) and not isinstance(b, bool)
                  and math.isfinite(b) for b in raw))
    if not ok:
        raise ConfigError(f"{key}: expected [low, high] (two finite numbers), got {raw!r}")
    low, high = float(raw[0]), float(raw[1])
    if not low < high:
        raise ConfigError(f"{key}: low {low:g} must be below high {high:g}")
    return (low, high)
