"""Stage `render`: PNG figures of factual images and their counterfactuals.

``counterfactuals.png``: a row per image: the factual image, then one column per intervention
file in the counterfactuals folder (sorted by name), for the images all those files hold.
``traversal_<var>.png``: per sweep file (``cdae intervene --var VAR --values ...``), a row per
image: the factual image, then the same digit at increasing values of VAR
(``traversal_<var>_<file>.png`` when several sweeps share a variable). Under each image its
parent values with units (factual, or counterfactual with the intervened ones marked ``*``; the
others are what the model propagates); a legend at the bottom spells out the abbreviated names.

Intervention files with no rows (``intervene --skip-foreign`` for an intervention of another
profile's graph) are left out of the grid and listed in the result's ``skipped``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from cdae import config as cfg
from cdae.atomic import atomic_path
from cdae.errors import DataError

if TYPE_CHECKING:  # PIL is imported inside the functions at run time
    from PIL import Image, ImageFont

SCALE = 3  # pixel upscaling of each image in the figure
LINE_H = 11  # px per annotation line
TITLE_H = 12  # px per title line
PAD = 4  # px around text in a cell
MIN_CELL_W = 78  # px


@dataclass
class Column:
    """One column of a figure: images uint8 (N, C, H, W), their parents (N, K) in raw units,
    the variables set by do (marked ``*``), title lines and, for the factual column, a line
    naming each image (``row 17``: what ``cdae intervene --rows`` takes, or an --image file)."""

    title: list[str]
    images: np.ndarray
    parents: np.ndarray
    marked: set[str] = field(default_factory=set)
    labels: list[str] | None = None


@dataclass(frozen=True)
class Annotation:
    """How parent values are written: variable names, units ("" = none), categorical ones."""

    names: tuple[str, ...]
    units: tuple[str, ...]
    categorical: frozenset[str] = frozenset()

    @classmethod
    def from_graph(cls, names: Sequence[str], graph: Any) -> "Annotation":
        """Units and types from ``graph`` (a CausalGraph) for the variables it knows."""
        known = set(graph.names)
        units = tuple(graph.variable(n).unit if n in known else "" for n in names)
        cat = frozenset(n for n in names if n in known and graph.variable(n).is_categorical)
        return cls(tuple(names), units, cat)


SHORT = 5  # characters of a variable's name under an image (more where two would clash)


def short_names(names: Sequence[str]) -> dict[str, str]:
    """Each name's first SHORT characters, extended to the shortest prefix no other name of
    ``names`` shares (``shadow_length``, ``shadow_position`` -> ``shadow_l``, ``shadow_p``)."""
    out = {}
    for n in names:
        size = SHORT
        while size < len(n) and any(o != n and o[:size] == n[:size] for o in names):
            size += 1
        out[n] = n[:size]
    return out


def _fmt(ann: Annotation, values: np.ndarray, marked: set[str]) -> list[str]:
    """One line per variable: ``thick* 2.00 [px]``; ``*`` = set by do."""
    out = []
    short = short_names(ann.names)
    for n, unit, v in zip(ann.names, ann.units, values):
        star = "*" if n in marked else ""
        if not np.isfinite(v):
            num = "?"
        elif n in ann.categorical:
            num = f"{int(round(float(v)))}"
        else:
            num = f"{v:.0f}" if abs(v) >= 10 else f"{v:.2f}"
        out.append(f"{short[n]}{star} {num}" + (f" [{unit}]" if unit else ""))
    return out


def _lines(ann: Annotation, col: Column, i: int) -> list[str]:
    """The text under image ``i`` of ``col``: its parents, then its name if known."""
    if np.isnan(col.parents[i]).all():
        return ["(not in this file)"]
    return _fmt(ann, col.parents[i], col.marked) + ([] if col.labels is None
                                                    else [col.labels[i]])


def _legend(ann: Annotation) -> list[str]:
    short = short_names(ann.names)
    parts = [f"{short[n]} = {n}" + (f" [{u}]" if u else "") for n, u in zip(ann.names, ann.units)
             if short[n] != n or u]
    return parts + ["* = set by do, the others as the model propagates them"]


def _wrap(font: ImageFont.ImageFont, parts: list[str], width: float) -> list[str]:
    """Join ``parts`` with ';  ' into lines no wider than ``width`` px (a part is never split)."""
    lines: list[str] = []
    for part in parts:
        if lines and font.getlength(lines[-1] + ";  " + part) <= width:
            lines[-1] += ";  " + part
        else:
            lines.append(part)
    return lines


def grid(columns: list[Column], rows: int, ann: Annotation) -> Image.Image:
    """Compose a PIL image: one column per entry of ``columns`` (sharing the same images in the
    same order), at most ``rows`` rows, each image annotated with its parents and units."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    n = min(rows, min(c.images.shape[0] for c in columns))
    c, h, w = columns[0].images.shape[1:]
    texts = [t for col in columns for t in col.title]
    texts += [t for col in columns for i in range(n) for t in _lines(ann, col, i)]
    text_w = max((font.getlength(t) for t in texts), default=0.0)
    cell_w = int(max(w * SCALE, MIN_CELL_W, np.ceil(text_w) + 2 * PAD))
    lines = len(ann.names) + any(col.labels is not None for col in columns)
    cell_h = h * SCALE + LINE_H * lines + 6
    head = TITLE_H * max(len(col.title) for col in columns) + PAD
    width = cell_w * len(columns)
    legend = _wrap(font, _legend(ann), width - 2 * PAD)
    foot = LINE_H * len(legend) + PAD
    canvas = Image.new("RGB", (width, head + cell_h * n + foot), "white")
    draw = ImageDraw.Draw(canvas)
    for j, col in enumerate(columns):
        for t, text in enumerate(col.title):
            draw.text((j * cell_w + PAD, 2 + t * TITLE_H), text, fill="black", font=font)
        for i in range(n):
            img = col.images[i]
            arr = img[0] if c == 1 else np.transpose(img, (1, 2, 0))
            tile = Image.fromarray(arr).convert("RGB").resize((w * SCALE, h * SCALE),
                                                              Image.NEAREST)
            x0, y0 = j * cell_w + (cell_w - w * SCALE) // 2, head + i * cell_h
            canvas.paste(tile, (x0, y0))
            for t, text in enumerate(_lines(ann, col, i)):
                draw.text((j * cell_w + PAD, y0 + h * SCALE + 2 + t * LINE_H), text,
                          fill="black", font=font)
    y_leg = head + cell_h * n + 2
    for t, text in enumerate(legend):
        draw.text((PAD, y_leg + t * LINE_H), text, fill="dimgray", font=font)
    return canvas


def _do_title(do: dict[str, Any]) -> list[str]:
    """``do(thickness=3,`` / ``intensity=150)``: one line per intervened variable."""
    items = [f"{k}={v:g}" for k, v in do.items()]
    if len(items) <= 1:
        return [f"do({items[0] if items else ''})"]
    return [f"do({items[0]},"] + [f"   {it}," for it in items[1:-1]] + [f"   {items[-1]})"]


def _annotation(attrs: Any, graph: Any) -> Annotation:
    """Names from a file's attrs; units from the file when it has them, else from the graph."""
    names = json.loads(attrs["names"])
    ann = Annotation.from_graph(names, graph)
    if "units" in attrs:
        ann = Annotation(ann.names, tuple(json.loads(attrs["units"])), ann.categorical)
    return ann


def _read_error(path: Path, err: Exception) -> DataError:
    return DataError(f"{path}: cannot read counterfactual file ({err})",
                     hint="re-run `cdae intervene`")


def spread(n: int, k: int) -> list[int]:
    """``min(n, k)`` increasing positions spread evenly over ``range(n)``: rows of a figure
    drawn from the whole selection (datasets stored class by class would otherwise show one
    digit)."""
    if n <= k:
        return list(range(n))
    return sorted({int(round(i * (n - 1) / (k - 1))) for i in range(k)}) if k > 1 else [0]


def _save(figure: Image.Image, target: Path) -> list[int]:
    with atomic_path(target) as tmp:
        figure.save(tmp, format="PNG")
    return list(figure.size)


def _traversal(path: Path, rows: int, graph: Any) -> tuple[str, Image.Image]:
    """(variable, figure) of one sweep file; columns sorted by increasing value."""
    import h5py

    from stages.intervene import FileKind, file_kind

    try:
        with h5py.File(path, "r") as f:
            if file_kind(f.attrs, path) is not FileKind.SWEEP:
                raise DataError(f"{path}: not a sweep file",
                                hint="make one with `cdae intervene --var VAR --values 1:4:7`")
            ann = _annotation(f.attrs, graph)
            var = str(f.attrs["var"])
            values = f["values"][()]
            pos = spread(f["index"].shape[0], rows)
            factual = Column(["factual"], f["factual"][pos], f["parents_factual"][pos],
                             labels=[_label(k) for k in _keys(f)[pos]])
            cf = f["counterfactual"][:, pos]
            pcf = f["parents_cf"][:, pos]
    except (OSError, KeyError) as err:
        raise _read_error(path, err) from None
    unit = dict(zip(ann.names, ann.units)).get(var, "")
    columns = [factual] + [Column([f"{var}={values[v]:g}" + (f" {unit}" if unit else "")],
                                  cf[v], pcf[v], {var})
                           for v in np.argsort(values, kind="stable")]
    return var, grid(columns, rows, ann)


def run(params: cfg.Params, *, rows: int | None = None,
        sweeps: list[str] | None = None) -> dict[str, object]:
    """Render counterfactuals.png from the intervention files and traversal_<var>.png from the
    sweep files (``sweeps``, default: those in the counterfactuals folder)."""
    import h5py

    from stages.intervene import FileKind, file_kind, skipped_reason

    rp = cfg.override(params.render, "render", rows=rows)
    folder = Path(params.paths.counterfactuals_dir)
    found = sorted(folder.glob("*.h5")) if folder.is_dir() else []
    interventions: list[Path] = []
    found_sweeps: list[Path] = []
    skipped: dict[str, str] = {}  # file -> why it holds no rows
    for path in found:
        try:
            with h5py.File(path, "r") as f:
                kind = file_kind(f.attrs, path)
                rows_held = f["index"].shape[0]
                why = skipped_reason(f.attrs)
        except (OSError, KeyError) as err:
            raise _read_error(path, err) from None
        if kind is FileKind.INTERVENTION and rows_held == 0:
            skipped[str(path)] = why or "it holds no images"
            continue
        (found_sweeps if kind is FileKind.SWEEP else interventions).append(path)
    sweep_files = [Path(s) for s in sweeps] if sweeps else found_sweeps
    for s in sweep_files:
        if not s.is_file():
            raise DataError(f"{s}: no such sweep file",
                            hint="make one with `cdae intervene --var VAR --values 1:4:7`")
    if not interventions and not sweep_files and skipped:
        raise DataError(f"{folder}: every counterfactual file holds no images ("
                        + "; ".join(f"{Path(k).name}: {v}" for k, v in skipped.items()) + ")",
                        hint="list interventions on this graph's variables in "
                        "intervene.interventions")
    if not interventions and not sweep_files:
        raise DataError(f"{folder}: no counterfactual files to render",
                        hint="run `cdae intervene` first")
    figures: list[str] = []
    sizes: dict[str, list[int]] = {}
    columns: list[Column] = []
    if interventions:
        columns, ann = _grid_columns(interventions, rp.rows, params.graph)
        target = Path(params.paths.figures_dir) / "counterfactuals.png"
        sizes[str(target)] = _save(grid(columns, rp.rows, ann), target)
        figures.append(str(target))
    strips = [_traversal(s, rp.rows, params.graph) for s in sweep_files]
    per_var = {var: sum(v == var for v, _ in strips) for var, _ in strips}
    for (var, figure), path in zip(strips, sweep_files):
        stem = f"traversal_{var}" if per_var[var] == 1 else f"traversal_{var}_{path.stem}"
        target = Path(params.paths.figures_dir) / f"{stem}.png"
        sizes[str(target)] = _save(figure, target)
        figures.append(str(target))
    return {"figures": figures, "sizes": sizes, "columns": len(columns), "rows": rp.rows,
            "sweeps": [str(s) for s in sweep_files], "skipped": skipped}


MISSING = 128  # grey: a cell whose file does not hold that image ("(not in this file)")


def _grid_columns(files: list[Path], rows: int,
                  graph: Any) -> tuple[list[Column], Annotation]:
    """The factual column, then one column per intervention file, for ``rows`` dataset rows
    spread over those every file holds (files made with other --max-images hold other rows);
    when no row is in every file (``cdae intervene --rows`` beside the pipeline's files), over
    those any file holds, a file's missing images drawn grey."""
    import h5py

    from stages.intervene import default_name

    held: list[dict[int | str, int]] = []  # per file: image key -> position in the file
    for path in files:
        try:
            with h5py.File(path, "r") as f:
                held.append({k: i for i, k in enumerate(_keys(f))})
        except (OSError, KeyError, ValueError) as err:
            raise _read_error(path, err) from None
    common = [r for r in held[0] if all(r in h for h in held[1:])]
    candidates = common or sorted(set().union(*held), key=lambda k: (isinstance(k, str), k))
    shown = [candidates[i] for i in spread(len(candidates), rows)]
    factual: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(shown)
    columns: list[Column] = []
    anns: list[Annotation] = []
    for path, at in zip(files, held):
        try:
            with h5py.File(path, "r") as f:
                anns.append(_annotation(f.attrs, graph))
                do = json.loads(f.attrs["do"])
                images, parents = f["counterfactual"][()], f["parents_cf"][()]
                for k, r in enumerate(shown):
                    if factual[k] is None and r in at:
                        factual[k] = (f["factual"][at[r]], f["parents_factual"][at[r]])
        except (OSError, KeyError) as err:
            raise _read_error(path, err) from None
        if anns[-1].names != anns[0].names:
            raise DataError(f"{path}: holds variables {', '.join(anns[-1].names)}, "
                            f"{files[0]} holds {', '.join(anns[0].names)}",
                            hint="re-run the intervene stages with one model")
        named = [] if path.stem == default_name(do) else [path.stem]  # not twice
        columns.append(Column(named + _do_title(do), *_cells(images, parents, at, shown),
                              set(do)))
    pairs = [pair for pair in factual if pair is not None]  # every shown row is in some file
    columns.insert(0, Column(["factual"], np.stack([a for a, _ in pairs]),
                             np.stack([b for _, b in pairs]), labels=[_label(k) for k in shown]))
    return columns, anns[0]


def _keys(f: Any) -> np.ndarray:
    """Each image's key in an intervene file: its dataset row, or for an ``--image`` file (row
    -1 - k) that file's path, so two files share a key only when they hold the same image."""
    from stages.intervene import IMAGE_FILES_ATTR

    rows = f["index"][()]
    files = json.loads(f.attrs.get(IMAGE_FILES_ATTR, "[]"))
    return np.array([files[-1 - int(r)] if r < 0 else int(r) for r in rows], dtype=object)


def _label(key: int | str) -> str:
    """The line naming an image under the factual column."""
    return Path(key).name if isinstance(key, str) else f"row {key}"


def _cells(images: np.ndarray, parents: np.ndarray, at: dict[int | str, int],
           shown: list[int | str]) -> tuple[np.ndarray, np.ndarray]:
    """A file's images (N, C, H, W) and parents (N, K) at the image keys ``shown`` (see
    :func:`_keys`): grey images and NaN parents for the images it does not hold."""
    out = np.full((len(shown),) + images.shape[1:], MISSING, images.dtype)
    par = np.full((len(shown), parents.shape[1]), np.nan, np.float32)
    for k, r in enumerate(shown):
        if r in at:
            out[k], par[k] = images[at[r]], parents[at[r]]
    return out, par
