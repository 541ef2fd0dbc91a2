"""`cdae combine`: the scorecards of several trainings (metrics.json of `cdae evaluate`, one per
``train.seed``, say) as one: each number's mean and its standard deviation between the trainings,
the floors of ``evaluate.floors`` read off the means and off each training.

Writes ``<out>.json`` (metrics.json's nesting: `dvc metrics show` reads it) and ``<out>.md``
beside it, atomically. Not a DVC stage: its inputs are several trainings, which one DAG run
does not make. Outside a project (no params) the floors and the graph come from the
scorecards themselves (``setup.floors``, ``setup.graph``, which `cdae evaluate` records).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from cdae import config as cfg
from cdae.atomic import write_text
from cdae.errors import ConfigError, DataError
from cdae.graph import CausalGraph
from cdae.metrics import (Combined, FloorCheck, check_floors, combine_scorecards,
                          setup_difference)
from cdae.tables import md_cell, mean_std_cell

COMBINED_FILE = "combined.json"
SEED_KEY = "train_seed"  # the training's seed in a scorecard's setup (evaluate writes it)


def read_scorecard(path: Path) -> dict[str, Any]:
    """A metrics.json of `cdae evaluate` (``path``, or ``path``/metrics.json for a folder, as
    `cdae evaluate --out DIR` writes); DataError for a missing, unreadable or foreign file."""
    hint = "pass the metrics.json files that `cdae evaluate` wrote (paths.metrics)"
    if path.is_dir():
        path = path / "metrics.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file", hint=hint) from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read it ({getattr(err, 'strerror', None) or err})",
                        hint=hint) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not JSON (line {err.lineno}: {err.msg})", hint=hint) from None
    if not isinstance(data, dict) or not isinstance(data.get("setup"), dict):
        raise DataError(f"{path}: not a scorecard of `cdae evaluate` (no setup group)", hint=hint)
    return data


def _show(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def check_runs(paths: Sequence[Path], runs: Sequence[Mapping[str, Any]]) -> None:
    """ConfigError for fewer than two scorecards or one given twice; DataError where two were
    scored under different protocols (a ``setup`` key other than the seeds and paths)."""
    if len(paths) < 2:
        raise ConfigError(f"combine needs two or more scorecards, got {len(paths)}",
                          hint="pass one metrics.json per training, e.g. of train.seed 0, 1, 2")
    for k, run in enumerate(runs):
        for j in range(k):
            if run == runs[j]:
                raise ConfigError(f"{paths[j]} and {paths[k]} hold the same scorecard",
                                  hint="pass each training's scorecard once")
    diff = setup_difference([r["setup"] for r in runs])
    if diff is not None:
        key, k, a, b = diff
        raise DataError(f"{paths[0]} and {paths[k]} were scored differently: setup.{key} "
                        f"{_show(a)[:80]} against {_show(b)[:80]}",
                        hint="combine scorecards of one evaluate protocol (the same evaluate "
                             "settings and model step), e.g. trainings that differ in train.seed")


def recorded_settings(paths: Sequence[Path], runs: Sequence[Mapping[str, Any]]
                      ) -> tuple[dict[str, str], CausalGraph | None]:
    """The floors and the graph the scorecards were scored under (``setup.floors``,
    ``setup.graph``), for a combination without params: ({}, None) where the scorecards predate
    them; ConfigError where they name different floors, DataError where a recorded floor or
    the graph is not one."""
    hint = "pass --params with the floors to read"
    floors = [r["setup"].get("floors") for r in runs]
    for k, f in enumerate(floors[1:], start=1):
        if f != floors[0]:
            raise ConfigError(f"{paths[0]} and {paths[k]} were scored against different "
                              "evaluate.floors", hint=hint)
    recorded = floors[0] or {}
    if not isinstance(recorded, Mapping):
        raise DataError(f"{paths[0]}: setup.floors is not a mapping", hint=hint)
    try:
        cfg.check_floor_table(recorded, f"{paths[0]}: setup.floors")
    except ConfigError as err:
        raise DataError(err.message, hint=hint) from None
    raw = runs[0]["setup"].get("graph")
    try:
        graph = CausalGraph.from_dict(raw, key=f"{paths[0]}: setup.graph") if raw else None
    except ConfigError as err:
        raise DataError(err.message, hint="pass --params with the project's graph") from None
    return dict(recorded), graph


def met_by_every(per_run: Sequence[Sequence[FloorCheck]]) -> int:
    """How many floors every scorecard meets (``per_run``: each one's checks, same order)."""
    return sum(all(checks) for checks in zip(*([c.met for c in pr] for pr in per_run)))


def combined_markdown(combined: Combined, paths: Sequence[Path],
                      runs: Sequence[Mapping[str, Any]], mean_checks: Sequence[FloorCheck],
                      per_run: Sequence[Sequence[FloorCheck]],
                      graph: CausalGraph | None) -> str:
    """<out>.md: the floors (met by the mean, and by how many trainings), the scorecard's
    headline rows (given a graph), then every number: mean ± standard deviation between the
    trainings and each training's own value."""
    from stages.report import glance_rows

    res, values = combined.results, combined.values
    n = len(runs)
    heads = [f"run {k}" for k in range(1, n + 1)]  # the first table says which file is which
    setup = runs[0]["setup"]
    lines = [f"# Scorecard of {n} trainings", "",
             f"Each cell: the mean over the {n} scorecards ± their sample standard deviation "
             "(the spread between trainings; each scorecard's own numbers are means over its "
             f"draws), then each one's value. {setup.get('rows', '')}.", "",
             "| run | scorecard | train seed | model step |", "|---|---|---|---|"]
    lines += [f"| {h} | `{p}` | {r['setup'].get(SEED_KEY, 'not recorded')} | "
              f"{r['setup'].get('model_step')} |" for h, p, r in zip(heads, paths, runs)]
    lines.append("")
    cols = " | ".join(md_cell(h) for h in heads)
    if mean_checks:
        lines += ["## Floors", "",
                  f"{sum(c.met for c in mean_checks)} of {len(mean_checks)} targets of "
                  f"`evaluate.floors` met by the mean; every training met "
                  f"{met_by_every(per_run)}.",
                  "", f"| metric | floor | mean | {cols} | met by the mean | trainings "
                  "meeting it |", "|---" * (n + 5) + "|"]
        for i, c in enumerate(mean_checks):
            group, _, metric = c.metric.partition(".")
            mean = c.reading if c.value is None else mean_std_cell(res[group], metric)
            each = " | ".join(pr[i].reading for pr in per_run)
            lines.append(f"| `{c.metric}` | {md_cell(str(c.floor))} | {mean} | {each} | "
                         f"{'yes' if c.met else '**no**'} | "
                         f"{sum(pr[i].met for pr in per_run)} of {n} |")
        lines.append("")

    def row(group: str, metric: str) -> str:
        return " | ".join([mean_std_cell(res[group], metric)]
                          + [f"{v:.3g}" for v in values[group][metric]])

    glance = [] if graph is None else [(label, g, m) for label, g, m in glance_rows(res, graph)
                                       if m in values.get(g, {})]
    if glance:
        lines += ["## At a glance", "", f"| what | metric | mean | {cols} |",
                  "|---" * (n + 3) + "|"]
        lines += [f"| {md_cell(label)} | `{g}.{m}` | {row(g, m)} |" for label, g, m in glance]
        lines.append("")
    for group, metrics in values.items():
        lines += [f"## `{group}`", "", f"| metric | mean | {cols} |", "|---" * (n + 2) + "|"]
        lines += [f"| `{m}` | {row(group, m)} |" for m in metrics]
        lines.append("")
    if combined.left_out:
        lines += ["## Left out", "", "Numbers that some scorecards lack (not averaged): "
                  + ", ".join(f"`{k}`" for k in combined.left_out) + ".", ""]
    return "\n".join(lines) + "\n"


def run(params: cfg.Params | None, runs: Sequence[Path], *, out: Path | None = None
        ) -> dict[str, Any]:
    """Combine the scorecards ``runs`` -> ``out`` (default paths.report_dir/combined.json) and
    the markdown beside it. ``params`` None (no project): the floors and graph the scorecards
    recorded, the default paths. Returns a summary (paths, seeds, floors met)."""
    paths = [Path(p) for p in runs]
    cards = [read_scorecard(p) for p in paths]
    check_runs(paths, cards)
    if params is None:
        floors, graph = recorded_settings(paths, cards)
        report_dir = cfg.PathsParams().report_dir
    else:
        floors, graph = dict(params.evaluate.floors), params.graph
        report_dir = params.paths.report_dir
    target = Path(out) if out is not None else Path(report_dir) / COMBINED_FILE
    if target.suffix != ".json":
        raise ConfigError(f"--out {target}: the combined scorecard is a .json file",
                          hint="name it e.g. reports/combined.json (the .md goes beside it)")
    if target.resolve() in {p.resolve() for p in paths}:
        raise ConfigError(f"--out {target} is one of the scorecards to combine",
                          hint="write the combination to another file")
    combined = combine_scorecards(cards)
    res: dict[str, Any] = dict(combined.results)
    seeds = [c["setup"].get(SEED_KEY) for c in cards]
    res["setup"] = {**{k: v for k, v in cards[0]["setup"].items() if k not in ("notes", SEED_KEY)},
                    "scorecards": [str(p) for p in paths], "train_seeds": seeds,
                    "combined": f"each number: the mean over {len(cards)} scorecards; "
                                "<metric>_std: their sample standard deviation (between "
                                "trainings, not between draws)"}
    mean_checks = check_floors(combined.results, floors)
    per_run = [check_floors(c, floors) for c in cards]
    if mean_checks:
        res["floors"] = {"met": sum(c.met for c in mean_checks), "of": len(mean_checks),
                         "met_by_every_training": met_by_every(per_run)}
    md = combined_markdown(combined, paths, cards, mean_checks, per_run, graph)
    write_text(target, json.dumps(res, indent=2, sort_keys=True, default=float) + "\n")
    write_text(target.with_suffix(".md"), md)
    return {"path": str(target), "markdown": str(target.with_suffix(".md")),
            "scorecards": len(cards), "train_seeds": seeds,
            "floors": [{"metric": c.metric, "floor": str(c.floor), "mean": c.value,
                        "std": (combined.results.get(c.metric.partition(".")[0], {})
                                .get(c.metric.partition(".")[2] + "_std")),
                        "met": c.met, "trainings_meeting": sum(pr[i].met for pr in per_run)}
                       for i, c in enumerate(mean_checks)],
            "left_out": combined.left_out,
            "settings": "params" if params is not None else "the scorecards' own"}
