"""Stage `report`: one offline HTML page, ``<paths.report_dir>/report.html``.

Sections: the causal graph (variables with type and unit, edges), the training loss curve
(drawn with Pillow from ``<paths.model_dir>/train_log.csv``), the counterfactual grid and the
traversal strips of ``<paths.figures_dir>`` (written by `render`), and the metrics of
``paths.metrics`` (written by `evaluate`), one table per intervention with a line per metric
saying what it measures. Every image is embedded as a base64 ``data:`` URI, so the file is
self-contained: no network, no CDN, no JavaScript. A part whose input is missing is named in
the page and in the result's ``missing`` list instead of failing the stage. Interventions that
`intervene` skipped (files of ``<paths.counterfactuals_dir>`` with a ``skipped`` attr: they set
a variable this graph lacks) are named under the grid with the reason.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from cdae import config as cfg
from cdae.atomic import write_text
from cdae.errors import DataError
from cdae.graph import CausalGraph
from cdae.metrics import FloorCheck, check_floors

if TYPE_CHECKING:  # PIL is imported inside the functions at run time
    from PIL import Image

REPORT_NAME = "report.html"
CHART_SIZE = (640, 300)  # px, the loss chart
CHART_SERIES = ("loss", "mse")  # train_log.csv columns drawn, in this order
CHART_COLORS = ((31, 119, 180), (255, 127, 14))


class Baseline(str, Enum):
    """Suffixes of the reference rows `evaluate` writes beside each intervention."""

    DO_NOTHING = "_do_nothing"  # the factual image left as it is (x* = x)
    TRUE_MECHANISM = "_true_mechanism"  # the true SCM's own counterfactual image


BASELINE_TITLES = {Baseline.DO_NOTHING: "do nothing (x* = x)",
                   Baseline.TRUE_MECHANISM: "true mechanism"}
NOT_RESULTS = ("setup", "cost")  # metrics.json keys that hold no metric rows

_PIXEL_L1 = "mean absolute pixel difference (0..255)"
_FIXED_MEANINGS = {
    "met": "floors (evaluate.floors) the scorecard meets",
    "of": "floors checked",
    "l1_to_true_counterfactual": f"{_PIXEL_L1} to the true SCM's counterfactual image; "
                                 "lower is better",
    "psnr_to_true_counterfactual": "PSNR in dB (peak 255) against the true SCM's counterfactual "
                                   "image; higher is better, 100 = identical",
    "l1_to_factual": f"{_PIXEL_L1} to the factual image: how much the image changed",
    "composition_l1": f"{_PIXEL_L1} between the factual image and the model's counterfactual "
                      "under no intervention (composition); 0 is perfect",
    "images": "images the row was scored on",
    "disentanglement_per_dimension": "DCI disentanglement of the encoder's z, one code per "
                                     "dimension: 1 = each dimension informs one variable",
    "completeness_per_dimension": "DCI completeness, per dimension: 1 = each variable is read "
                                  "from one dimension",
    "disentanglement_per_block": "DCI disentanglement with each variable's block of z as one "
                                 "code: 1 = each block informs one variable",
    "completeness_per_block": "DCI completeness, per block: 1 = each variable is read from one "
                              "block (ideally its own)",
    "train_images": "images whose codes fit the DCI models",
    "test_images": "images whose codes score informativeness",
}
_PATTERN_MEANINGS = (
    (re.compile(r"^(\w+)_std$"),
     "standard deviation over the seeds' intervention draws of {var}"),
    (re.compile(r"^composition_l1_(\d+)$"),
     f"{_PIXEL_L1} between the factual image and the null intervention applied {{var}} "
     "times; 0 is perfect"),
    (re.compile(r"^reversibility_l1_(\d+)$"),
     f"{_PIXEL_L1} between the factual image and the image after {{var}} cycle(s) of "
     "do(pa*) then do(pa); 0 is perfect"),
    (re.compile(r"^reversibility_continuous_l1_(\d+)$"),
     f"{_PIXEL_L1} between the factual image and the image after {{var}} cycle(s) of "
     "do(pa*) then do(pa) on the continuous parents only (categorical parents, e.g. the digit, "
     "stay factual); 0 is perfect"),
    (re.compile(r"^predicted_(\w+)_accuracy_\w+_set_(in|off)_support$"),
     "share of images whose {var} PREDICTED on the counterfactual equals the target, over the "
     "images whose set value lies in (in) or off (off; the decoder extrapolates there) the "
     "train support given the parents; higher is better"),
    (re.compile(r"^predicted_(\w+)_set_mae_(in|off)_support$"),
     "mean |{var} PREDICTED by q({var} | x, ...) − set value|{unit} over the images whose set "
     "value lies in (in) or off (off) the train support given the parents; lower is better"),
    (re.compile(r"^(?:predicted_)?(\w+)_set_off_support$"),
     "share of the images whose {var} the intervention set where the set value lies outside "
     "the central 98% of train {var} values at the 200 train images with the nearest parent "
     "values (a combination, e.g. a thin but bright stroke, that training hardly saw)"),
    (re.compile(r"^(\w+)_set_mae_(in|off)_support$"),
     "mean |{var} measured − set value|{unit} over the images whose set value lies in (in) or "
     "off (off; the model extrapolates there) the train support given the parents (see "
     "_set_off_support); lower is better"),
    (re.compile(r"^predicted_(\w+)_mae$"),
     "mean |{var} PREDICTED on the image by q({var} | x, children) − target|{unit}; read it "
     "beside the predictor's own test error; lower is better"),
    (re.compile(r"^predicted_(\w+)_accuracy$"),
     "share of images whose {var} PREDICTED by q({var} | x, ...) equals the target; read it "
     "beside the predictor's own test accuracy; higher is better"),
    (re.compile(r"^predicted_(\w+)_kept$"),
     "share of images whose {var} was NOT intervened on and whose {var} predicted on the "
     "counterfactual equals the one predicted on the factual image (identity kept; the "
     "predictor's own errors cancel); higher is better"),
    (re.compile(r"^predicted_(\w+)_kept_judges_(min|max)$"),
     "predicted_{var}_kept read by each seed of the {var} predictor (predictors.judges): the "
     "lowest (min) or highest (max) share over the seeds; the spread a judge alone adds"),
    (re.compile(r"^predicted_(\w+)_lost_all_judges$"),
     "share of images whose {var} was NOT intervened on and whose {var} changed for every seed "
     "of the {var} predictor (lost beyond the judge's doubt); lower is better"),
    (re.compile(r"^frechet_(\w+)_features$"),
     "Frechet distance between the penultimate features of this project's {var} predictor "
     "on the images and on train images (not Inception: no FID); lower is more realistic"),
    (re.compile(r"^informativeness_(\w+)_mae$"),
     "DCI informativeness: test MAE{unit} of {var} predicted from the encoder's z by "
     "gradient boosting"),
    (re.compile(r"^informativeness_(\w+)_r2$"),
     "DCI informativeness: test R^2 of {var} predicted from z (1 = perfect)"),
    (re.compile(r"^informativeness_(\w+)_accuracy$"),
     "DCI informativeness: test accuracy of {var} classified from z"),
    (re.compile(r"^(\w+)_test_mae$"),
     "the predictor q({var} | x, ...)'s own MAE{unit} on the labelled test split"),
    (re.compile(r"^(\w+)_test_accuracy$"),
     "the predictor q({var} | x)'s own accuracy on the labelled test split"),
    (re.compile(r"^(\w+)_test_accuracy_judge_(\d+)$"),
     "the {var} predictor's own test accuracy at seed predictors.seed + {other} (a judge seed)"),
    (re.compile(r"^(\w+)_test_examples$"), "labelled test images that scored the {var} predictor"),
    (re.compile(r"^(\w+)_kept_true_cf_do_(\w+)$"),
     "share of the split's images whose {var} predicted on the TRUE SCM counterfactual under "
     "do({other} = a train-marginal value) equals the {var} predicted on the factual image: "
     "the judge's own robustness, so the ceiling of predicted_{var}_kept under do({other}); "
     "higher is better, 1 = a judge blind to {other}"),
    (re.compile(r"^(\w+)_kept_true_cf_examples$"),
     "images (the whole split) that scored the {var} predictor on true counterfactuals"),
    (re.compile(r"^parent_(\w+)_mae_labels$"),
     "mean |{var} the learned mechanisms predict − true SCM counterfactual|{unit}, factual "
     "parents abducted from the labels (no image involved); lower is better"),
    (re.compile(r"^parent_(\w+)_mae_image$"),
     "mean |{var} the learned mechanisms predict − true SCM counterfactual|{unit}, factual "
     "parents read from the image by the encoder; lower is better"),
    (re.compile(r"^(\w+)_render_mae$"),
     "mean |{var} measured on the counterfactual − the value its latent stands for|{unit} "
     "(the set value if {var} is intervened on, else the learned mechanisms' value): the "
     "decoder's own error, the mechanisms' excluded ({var}_mae <= this + "
     "parent_{var}_mae_labels where {var} is not set); lower is better"),
    (re.compile(r"^(\w+)_bias$"),
     "mean ({var} measured on the image − target){unit}: the sign says which way {var}_mae "
     "leans (0 = no systematic error)"),
    (re.compile(r"^(\w+)_moved$"),
     "mean |{var} measured on the counterfactual − on the factual image|{unit}: how far the "
     "image moved"),
    (re.compile(r"^(\w+)_mae$"),
     "mean |{var} measured on the counterfactual image − target|{unit}; target: the set "
     "value if {var} is intervened on, else the true SCM's counterfactual; lower is better"),
)


def metric_meaning(name: str, units: Mapping[str, str]) -> str:
    """One line saying what metric ``name`` of metrics.json measures, with its unit."""
    if name in _FIXED_MEANINGS:
        return _FIXED_MEANINGS[name]
    if "__" in name:  # a sweep group's <row>__<metric>
        row, metric = name.split("__", 1)
        return f"{row}: {metric_meaning(metric, units)}"
    for pattern, text in _PATTERN_MEANINGS:
        m = pattern.match(name)
        if m is not None:
            var = m.group(1)
            unit = units.get(var, "")
            other = m.group(2) if (m.re.groups or 0) > 1 else ""
            return text.format(var=var, other=other, unit=f" in {unit}" if unit else "")
    return "(not described)"


def group_meaning(key: str) -> str:
    """What one intervention row of metrics.json is."""
    if key == "null":
        return ("do(): no intervention; the model must give the factual image back "
                "(composition)")
    if key == "sample":
        return ("no abduction of the noise: the factual latents decoded from x_T ~ N(0, I), "
                "scored against the factual values (what the condition alone sets)")
    sweep = re.match(r"^sweep_(guidance|steps)_(.+)$", key)
    if sweep:
        what = "guidance scale s" if sweep.group(1) == "guidance" else "steps"
        return (f"curve point: the null intervention and each do(v) (train-marginal values, "
                f"first seed) re-scored with {what} = {sweep.group(2)} on the first "
                "evaluate.sweep_images images")
    forced = key.endswith("_forced")
    base = key[:-len("_forced")] if forced else key
    how = ("a train value from another decile bin (another class) than the factual one"
           if forced else "a value drawn from the train marginal")
    beside = ("; mean over seeds; beside the model: the factual image left as it is (do "
              "nothing) and the true SCM's own counterfactual image (true mechanism)")
    if base.startswith("do_"):
        return f"do({base[3:]} = {how}, one per image){beside}"
    if base == "random":
        return (f"a fair coin per variable and image (at least one) picks the intervened "
                f"variables, each set to {how}{beside}")
    return {"cycles": "composition and reversibility chains (full abduct-act-predict per step)",
            "dci": "disentanglement, completeness, informativeness of the encoder's z",
            "predictors": "the anti-causal predictors' own test errors",
            "floors": "the targets of evaluate.floors: how many the scorecard meets "
                      "(evaluation.md lists each)"}.get(key, "")


@dataclass
class Embedded:
    """A PNG ready for an <img>: base64 data URI and its pixel size."""

    uri: str
    width: int
    height: int


def _embed_png(data: bytes, what: str) -> Embedded:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            size = im.size
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{what}: not a readable image ({err})",
                        hint="re-run `cdae render`") from None
    return Embedded("data:image/png;base64," + base64.b64encode(data).decode("ascii"), *size)


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------- loss chart

def read_train_log(path: Path) -> dict[str, np.ndarray]:
    """Columns of train_log.csv as float arrays (step, loss, ...); DataError if unreadable."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        cols = {k: np.array([float(r[k]) for r in rows]) for k in (rows[0] if rows else {})}
    except (OSError, ValueError, TypeError, csv.Error) as err:
        raise DataError(f"{path}: cannot read the training log ({err})",
                        hint="re-run `cdae train`") from None
    if "step" not in cols or "loss" not in cols:
        raise DataError(f"{path}: the training log has no step and loss columns",
                        hint="re-run `cdae train`")
    return cols


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)] if hi > lo else [lo]


def loss_chart(log: Mapping[str, np.ndarray]) -> Image.Image:
    """A line chart of the CHART_SERIES columns of ``log`` against ``step``; log-scaled y when
    the values span more than a factor 30. Returns an RGB image of CHART_SIZE px."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    width, height = CHART_SIZE
    left, right, top, bottom = 62, 16, 24, 36
    pw, ph = width - left - right, height - top - bottom
    steps = np.asarray(log["step"], np.float64)
    series = {k: np.asarray(log[k], np.float64) for k in CHART_SERIES if k in log}
    finite = np.concatenate([v[np.isfinite(v)] for v in series.values()])
    log_y = finite.size > 0 and finite.min() > 0 and finite.max() / finite.min() > 30
    tf = np.log10 if log_y else (lambda a: a)
    ys = tf(finite) if finite.size else np.zeros(1)
    y0, y1 = float(ys.min()), float(ys.max())
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5, y1 + 0.5
    s0, s1 = float(steps.min()), float(steps.max())

    def px(step: float, value: float) -> tuple[float, float]:
        fx = 0.5 if s1 == s0 else (step - s0) / (s1 - s0)
        return left + fx * pw, top + (1.0 - (value - y0) / (y1 - y0)) * ph

    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((left, top, left + pw, top + ph), outline="black")
    for t in _ticks(y0, y1):
        _, y = px(s0, t)
        draw.line((left - 4, y, left, y), fill="black")
        draw.line((left + 1, y, left + pw - 1, y), fill=(230, 230, 230))
        label = f"{10 ** t:.3g}" if log_y else f"{t:.3g}"
        draw.text((left - 6 - font.getlength(label), y - 6), label, fill="black", font=font)
    for t in _ticks(s0, s1):
        x, _ = px(t, y0)
        draw.line((x, top + ph, x, top + ph + 4), fill="black")
        label = f"{t:.0f}"
        draw.text((x - font.getlength(label) / 2, top + ph + 6), label, fill="black", font=font)
    draw.text((left + pw / 2 - 12, height - 14), "step", fill="black", font=font)
    title = "training loss" + (" (log scale)" if log_y else "")
    draw.text((left, 6), title, fill="black", font=font)
    x_leg = left + pw
    for (name, values), color in zip(reversed(list(series.items())),
                                     reversed(CHART_COLORS[:len(series)])):
        x_leg -= font.getlength(name) + 26
        draw.line((x_leg, 12, x_leg + 16, 12), fill=color, width=2)
        draw.text((x_leg + 20, 6), name, fill="black", font=font)
        ok = np.isfinite(values)
        pts = [px(s, v) for s, v in zip(steps[ok], tf(values[ok]))]
        if len(pts) == 1:
            x, y = pts[0]
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=color)
        elif pts:
            draw.line(pts, fill=color, width=2)
    return canvas


# ---------------------------------------------------------------------------- HTML

_STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; }
img { image-rendering: pixelated; max-width: 100%; height: auto; border: 1px solid #eee; }
.missing { color: #a00; }
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _img(e: Embedded, alt: str) -> str:
    return (f'<img src="{e.uri}" alt="{_esc(alt)}" width="{e.width}" '
            f'height="{e.height}">')


def _figure(e: Embedded, alt: str, caption: str) -> str:
    return f"<figure>{_img(e, alt)}<figcaption>{_esc(caption)}</figcaption></figure>"


def _missing(text: str) -> str:
    return f'<p class="missing">{_esc(text)}</p>'


def _graph_html(graph: CausalGraph) -> str:
    items = []
    for v in graph.variables:
        kind = (f"categorical, classes 0..{v.classes - 1}" if v.is_categorical
                else f"continuous, unit {v.unit}" if v.unit else "continuous")
        ps = graph.parents(v.name)
        how = (f"caused by {', '.join(ps)} through a learned mechanism" if ps
               else "root (exogenous)")
        items.append(f"<li><b>{_esc(v.name)}</b>: {_esc(kind)}; {_esc(how)}</li>")
    edges = [f"<li>{_esc(a)} → {_esc(b)}</li>" for a, b in graph.edges] or ["<li>(none)</li>"]
    return ("<h3>Variables</h3><ul>" + "".join(items) + "</ul>"
            "<h3>Edges (cause → effect)</h3><ul>" + "".join(edges) + "</ul>")


def _fmt_number(v: object) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return "nan" if isinstance(v, float) and math.isnan(v) else f"{v:.4g}"
    return _esc(v)


def _fmt_value(v: object) -> str:
    return _esc(json.dumps(v)) if isinstance(v, (dict, list)) else _fmt_number(v)


def glance_rows(results: Mapping[str, Any], graph: CausalGraph) -> list[tuple[str, str, str]]:
    """The scorecard's headline: (what it says, group, metric) per do(v) row, from the graph
    alone: v's own effectiveness, each descendant's propagated value and the mechanisms' error
    behind it, each non-descendant kept; then the sample row (each variable as the latent
    alone sets it); then composition and reversibility."""
    out: list[tuple[str, str, str]] = []

    def first(group: str, *metrics: str) -> str | None:
        row = results.get(group)
        return next((m for m in metrics if isinstance(row, Mapping) and m in row), None)

    for v in graph.names:
        group = f"do_{v}"
        if not isinstance(results.get(group), Mapping):
            continue
        own = first(group, f"{v}_mae", f"predicted_{v}_mae", f"predicted_{v}_accuracy")
        if own is not None:
            out.append((f"do({v}): {v} reaches the set value", group, own))
        below = graph.descendants([v])
        for d in below:
            m = first(group, f"{d}_mae", f"predicted_{d}_mae")
            if m is not None:
                out.append((f"do({v}): {d} follows through the mechanisms", group, m))
            m = first(group, f"parent_{d}_mae_labels")
            if m is not None:
                out.append((f"do({v}): {d}, the mechanisms' own error (no image)", group, m))
        for w in graph.names:
            if w != v and w not in below:
                m = first(group, f"predicted_{w}_kept", f"{w}_mae", f"predicted_{w}_mae")
                if m is not None:
                    out.append((f"do({v}): {w} stays as it was", group, m))
    for v in graph.names:  # samples from noise: what the condition alone sets
        m = first("sample", f"predicted_{v}_kept", f"{v}_mae", f"predicted_{v}_mae")
        if m is not None:
            out.append((f"sample from noise: {v} as its latent says", "sample", m))
    cycles = results.get("cycles")
    if isinstance(cycles, Mapping):
        chains = sorted((int(k.rsplit("_", 1)[1]), k) for k in cycles
                        if k.startswith("composition_l1_") and not k.endswith("_std"))
        wanted = [(k, f"composition: {n} null intervention{'s' if n > 1 else ''}")
                  for n, k in chains]
        wanted += [("reversibility_l1_1", "reversibility: 1 cycle through every parent"),
                   ("reversibility_continuous_l1_1", "reversibility: 1 cycle, continuous parents")]
        out += [(label, "cycles", m) for m, label in wanted if m in cycles]
    return out


def _glance_html(metrics: Mapping[str, Any], graph: CausalGraph) -> str:
    """The headline table (:func:`glance_rows`) with the do-nothing and true-mechanism values."""
    body = []
    for label, group, m in glance_rows(metrics, graph):
        cells = "".join(
            f'<td class="num">{_fmt_number(metrics[k][m])}</td>'
            if isinstance(metrics.get(k), Mapping) and m in metrics[k]
            else '<td class="num">–</td>'
            for k in (group, group + Baseline.DO_NOTHING.value,
                      group + Baseline.TRUE_MECHANISM.value))
        body.append(f"<tr><td>{_esc(label)}</td><td><code>{_esc(group)}.{_esc(m)}</code></td>"
                    f"{cells}</tr>")
    if not body:
        return ""
    return ("<h3>At a glance</h3><table><tr><th>what</th><th>metric</th><th>model</th>"
            f"<th>{_esc(BASELINE_TITLES[Baseline.DO_NOTHING])}</th>"
            f"<th>{_esc(BASELINE_TITLES[Baseline.TRUE_MECHANISM])}</th></tr>"
            + "".join(body) + "</table>")


def _floors_html(checks: Sequence[FloorCheck]) -> str:
    """The targets of ``evaluate.floors``: metric, floor, the model's value, whether it holds."""
    if not checks:
        return ""
    body = "".join(
        f"<tr><td><code>{_esc(c.metric)}</code></td><td>{_esc(str(c.floor))}</td>"
        f'<td class="num">{_esc(c.reading)}</td>'
        f"<td>{'yes' if c.met else '<b>no</b>'}</td></tr>" for c in checks)
    return (f"<h3>Floors</h3><p>{sum(c.met for c in checks)} of {len(checks)} targets of "
            "<code>evaluate.floors</code> met.</p><table><tr><th>metric</th><th>floor</th>"
            "<th>model</th><th>met</th></tr>" + body + "</table>")


def _metrics_html(metrics: Mapping[str, Any], units: Mapping[str, str],
                  graph: CausalGraph, floors: Sequence[FloorCheck] = ()) -> tuple[str, list[str]]:
    """The floors, the headline table, one table per intervention (model, do nothing, true
    mechanism), then setup and cost."""
    suffixes = tuple(b.value for b in Baseline)
    groups = [k for k in metrics if k not in NOT_RESULTS and isinstance(metrics[k], Mapping)
              and not k.endswith(suffixes)]
    groups.sort(key=lambda k: (k != "null", k != "sample", k))
    parts: list[str] = [_floors_html(floors), _glance_html(metrics, graph)]
    names: list[str] = []
    for g in groups:
        cols = [(g, "model")] + [(g + b.value, BASELINE_TITLES[b]) for b in Baseline
                                 if isinstance(metrics.get(g + b.value), Mapping)]
        rows: list[str] = []
        for col_key, _ in cols:
            rows += [m for m in metrics[col_key] if m not in rows]
        names += [m for m in rows if m not in names]
        head = "".join(f"<th>{_esc(t)}</th>" for _, t in cols)
        body = []
        for m in rows:
            cells = "".join(f'<td class="num">{_fmt_number(metrics[k][m])}</td>'
                            if m in metrics[k] else '<td class="num">–</td>' for k, _ in cols)
            body.append(f"<tr><td><code>{_esc(m)}</code></td>{cells}"
                        f"<td>{_esc(metric_meaning(m, units))}</td></tr>")
        parts.append(f"<h3><code>{_esc(g)}</code></h3><p>{_esc(group_meaning(g))}</p>"
                     f"<table><tr><th>metric</th>{head}<th>meaning</th></tr>"
                     + "".join(body) + "</table>")
    for key in NOT_RESULTS:
        block = metrics.get(key)
        if isinstance(block, Mapping):
            items = "".join(f"<tr><td>{_esc(k)}</td><td>{_fmt_value(v)}</td></tr>"
                            for k, v in block.items())
            parts.append(f"<h3>{_esc(key)}</h3><table>{items}</table>")
    return "".join(parts), names


def skipped_interventions(folder: Path) -> dict[str, str]:
    """{file stem: why} of the intervention files in ``folder`` that `intervene` skipped."""
    import h5py

    from stages.intervene import skipped_reason

    out: dict[str, str] = {}
    for path in sorted(folder.glob("*.h5")) if folder.is_dir() else []:
        try:
            with h5py.File(path, "r") as f:
                why = skipped_reason(f.attrs)
        except OSError as err:
            raise DataError(f"{path}: cannot read counterfactual file ({err})",
                            hint="re-run `cdae intervene`") from None
        if why is not None:
            out[path.stem] = why
    return out


def run(params: cfg.Params, *, out: str | None = None) -> dict[str, object]:
    """Write the report; returns its path, the number of images, metric names, missing parts."""
    target = Path(out) if out else Path(params.paths.report_dir) / REPORT_NAME
    graph = params.graph
    units = {v.name: v.unit for v in graph.variables}
    missing: list[str] = []
    sections: list[str] = [f"<h2>Causal graph</h2>{_graph_html(graph)}"]
    images = 0

    log_path = Path(params.paths.model_dir) / "train_log.csv"
    if log_path.is_file():
        chart = _embed_png(_png_bytes(loss_chart(read_train_log(log_path))), str(log_path))
        sections.append("<h2>Training</h2>" + _figure(
            chart, "training loss curve", f"total loss and its denoising (mse) term per logged "
            f"step, from {log_path}"))
        images += 1
    else:
        missing.append(f"training log {log_path} (run `cdae train`)")
        sections.append("<h2>Training</h2>" + _missing(f"no training log at {log_path}"))

    figures_dir = Path(params.paths.figures_dir)
    grid_path = figures_dir / "counterfactuals.png"
    part = "<h2>Counterfactuals</h2>"
    if grid_path.is_file():
        part += _figure(_embed_png(grid_path.read_bytes(), str(grid_path)),
                        "counterfactual grid",
                        "Each row: a test image (left), then one column per intervention. Under "
                        "each image its parent values with units; * marks the intervened "
                        "variables, the others are what the model propagates.")
        images += 1
    else:
        missing.append(f"counterfactual grid {grid_path} (run `cdae render`)")
        part += _missing(f"no counterfactual grid at {grid_path}")
    skipped = skipped_interventions(Path(params.paths.counterfactuals_dir))
    if skipped:
        part += ("<p>Listed in <code>intervene.interventions</code> but skipped (no column): "
                 + "; ".join(f"<code>{_esc(k)}</code>: {_esc(v)}" for k, v in skipped.items())
                 + ".</p>")
    sections.append(part)
    strips = sorted(figures_dir.glob("traversal_*.png")) if figures_dir.is_dir() else []
    if strips:
        part = "<h2>Traversals</h2>"
        for s in strips:
            part += _figure(_embed_png(s.read_bytes(), str(s)), s.stem,
                            f"{s.name}: each row a test image (left), then the same image at "
                            "increasing values of the swept variable (*).")
            images += 1
        sections.append(part)

    metrics_path = Path(params.paths.metrics)
    metric_names: list[str] = []
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text())
        except (OSError, ValueError) as err:
            raise DataError(f"{metrics_path}: cannot read the metrics ({err})",
                            hint="re-run `cdae evaluate`") from None
        if not isinstance(metrics, Mapping):
            raise DataError(f"{metrics_path}: expected a JSON object",
                            hint="re-run `cdae evaluate`")
        checks = check_floors(metrics, params.evaluate.floors)
        table, metric_names = _metrics_html(metrics, units, graph, checks)
        how = metrics.get("setup", {}).get("attributes") if isinstance(
            metrics.get("setup"), Mapping) else None
        note = f" Attributes {_esc(how)}." if how else ""
        sections.append(f"<h2>Metrics</h2><p>From {_esc(metrics_path)}.{note}</p>{table}")
    else:
        missing.append(f"metrics {metrics_path} (run `cdae evaluate`)")
        sections.append("<h2>Metrics</h2>" + _missing(f"no metrics at {metrics_path}"))

    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>cdae report</title>"
            f"<style>{_STYLE}</style></head><body>"
            "<h1>Causal Diffusion Autoencoder: report</h1>"
            f"<p>Profile <code>{_esc(params.profile)}</code>. Self-contained page: images are "
            "embedded, nothing is fetched.</p>" + "\n".join(sections) + "</body></html>\n")
    write_text(target, page)
    return {"path": str(target), "images": images, "metrics": metric_names,
            "missing": missing, "skipped": skipped, "bytes": len(page.encode())}
