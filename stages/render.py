"""Stage `render`: PNG grids of factual images and their counterfactuals.

One figure ``counterfactuals.png`` with a row per image: the factual image, then one column per
intervention file in the counterfactuals folder (sorted by name); under each image the parent
values (factual, or counterfactual with the intervened ones marked ``*``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cdae import config as cfg
from cdae.atomic import atomic_path
from cdae.errors import DataError

SCALE = 3  # pixel upscaling of each image in the figure


def _fmt(names: list[str], values: np.ndarray, marked: set[str]) -> list[str]:
    out = []
    for n, v in zip(names, values):
        short = n[:5]
        star = "*" if n in marked else ""
        out.append(f"{short}{star} {v:.0f}" if abs(v) >= 10 else f"{short}{star} {v:.2f}")
    return out


def grid(columns: list[dict], rows: int, names: list[str]):
    """Compose a PIL image. columns: [{"title", "images" (N,C,H,W) uint8, "parents" (N,K),
    "marked": set}] sharing the same rows."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    n = min(rows, min(c["images"].shape[0] for c in columns))
    c, h, w = columns[0]["images"].shape[1:]
    line_h = 11
    cell_w = max(w * SCALE, 78)
    cell_h = h * SCALE + line_h * len(names) + 6
    head = 28
    canvas = Image.new("RGB", (cell_w * len(columns), head + cell_h * n), "white")
    draw = ImageDraw.Draw(canvas)
    for j, col in enumerate(columns):
        for t, text in enumerate(col["title"].split("\n")[:2]):
            draw.text((j * cell_w + 2, 2 + t * 12), text, fill="black", font=font)
        for i in range(n):
            img = col["images"][i]
            arr = img[0] if c == 1 else np.transpose(img, (1, 2, 0))
            tile = Image.fromarray(arr).convert("RGB").resize((w * SCALE, h * SCALE),
                                                              Image.NEAREST)
            x0, y0 = j * cell_w + (cell_w - w * SCALE) // 2, head + i * cell_h
            canvas.paste(tile, (x0, y0))
            for t, text in enumerate(_fmt(names, col["parents"][i], col["marked"])):
                draw.text((j * cell_w + 2, y0 + h * SCALE + 2 + t * line_h), text, fill="black",
                          font=font)
    return canvas


def run(params: cfg.Params, *, rows: int | None = None) -> dict[str, object]:
    import h5py

    rp = cfg.override(params.render, "render", rows=rows)
    folder = Path(params.paths.counterfactuals_dir)
    files = sorted(folder.glob("*.h5")) if folder.is_dir() else []
    if not files:
        raise DataError(f"{folder}: no counterfactual files to render",
                        hint="run `cdae intervene` first")
    columns: list[dict] = []
    names: list[str] = []
    index = None
    for path in files:
        try:
            with h5py.File(path, "r") as f:
                names = json.loads(f.attrs["names"])
                do = json.loads(f.attrs["do"])
                idx = f["index"][()]
                if index is None:
                    index = idx
                    columns.append({"title": "factual", "images": f["factual"][()],
                                    "parents": f["parents_factual"][()], "marked": set()})
                elif not np.array_equal(idx[: rp.rows], index[: rp.rows]):
                    raise DataError(f"{path}: holds other images than {files[0]}",
                                    hint="re-run the intervene stages with the same split")
                title = "do(" + ", ".join(f"{k}={v:g}" for k, v in do.items()) + ")"
                columns.append({"title": f"{path.stem}\n{title}",
                                "images": f["counterfactual"][()],
                                "parents": f["parents_cf"][()], "marked": set(do)})
        except (OSError, KeyError) as err:
            raise DataError(f"{path}: cannot read counterfactual file ({err})",
                            hint="re-run `cdae intervene`") from None
    figure = grid(columns, rp.rows, names)
    target = Path(params.paths.figures_dir) / "counterfactuals.png"
    with atomic_path(target) as tmp:
        figure.save(tmp, format="PNG")
    return {"figures": [str(target)], "columns": len(columns), "rows": rp.rows}
