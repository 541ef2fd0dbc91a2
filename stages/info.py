"""`cdae info PATH`: what a dataset, latents or counterfactual file, or a checkpoint holds."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import numpy as np

from cdae.errors import DataError


class InfoKind(str, Enum):
    """What `cdae info` found a file to be (its ``kind`` in the JSON)."""

    DATASET = "dataset"
    CHECKPOINT = "checkpoint"
    LATENTS = "latents"
    COUNTERFACTUALS = "counterfactuals"
    SWEEP = "sweep"
    HDF5 = "hdf5"  # an HDF5 file of no cdae kind: its datasets and attributes listed


def _variables(graph, labels: np.ndarray | None) -> list[dict[str, object]]:
    out = []
    for j, v in enumerate(graph.variables):
        row: dict[str, object] = {"name": v.name, "type": v.type.value, "unit": v.unit,
                                  "parents": list(graph.parents(v.name))}
        if v.is_categorical:
            row["classes"] = v.classes
        if v.range is not None:  # declared: what do() accepts
            row["range"] = list(v.range)
        if labels is not None:
            col = labels[:, j][np.isfinite(labels[:, j])]
            if col.size:  # the labels' own min and max
                row["observed"] = [round(float(col.min()), 4), round(float(col.max()), 4)]
                row["labelled"] = int(col.size)
        out.append(row)
    return out


def describe(path: str | Path) -> dict[str, object]:
    from cdae.graph import CausalGraph

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file", hint="pass a dataset (.h5) or checkpoint (.pt)")
    with open(p, "rb") as f:
        magic = f.read(8)
    if magic.startswith(b"\x89HDF"):
        import h5py

        try:
            f = h5py.File(p, "r")
        except OSError as err:
            raise DataError(f"{p}: cannot read the HDF5 file ({err})",
                            hint="it is truncated or corrupt: re-run the stage that wrote it") \
                from None
        with f:
            if "images" in f and "labels" in f and "graph" in f.attrs:
                from cdae.dataset import read_dataset

                ds = read_dataset(p)
                return {"kind": InfoKind.DATASET.value, "path": str(p),
                        "images": int(ds.images.shape[0]),
                        "image_shape": list(ds.image_shape),
                        "train": int((ds.split == 0).sum()), "test": int((ds.split == 1).sum()),
                        "source": ds.source, "scm": ds.scm,
                        "ground_truth": ds.has_ground_truth,
                        "variables": _variables(ds.graph, ds.labels),
                        "graph": ds.graph.describe()}
            kind = (InfoKind.COUNTERFACTUALS if "counterfactual" in f
                    else InfoKind.LATENTS if "x_T" in f else InfoKind.HDF5)
            extra: dict[str, object] = {}
            if kind is InfoKind.COUNTERFACTUALS:
                from stages.intervene import FileKind, file_kind, skipped_reason

                if file_kind(f.attrs, p) is FileKind.SWEEP:
                    kind = InfoKind.SWEEP
                if "index" in f:
                    extra["images"] = int(f["index"].shape[0])
                why = skipped_reason(f.attrs)
                if why is not None:
                    extra["skipped"] = why
            return {"kind": kind.value, "path": str(p), **extra,
                    "datasets": {k: [list(f[k].shape), str(f[k].dtype)] for k in f},
                    "attrs": {k: (v.item() if hasattr(v, "item") else str(v))
                              for k, v in f.attrs.items()}}
    from cdae.causal import checkpoint_class_separations
    from cdae.checkpoint import ZIP_MAGIC, load_checkpoint

    if not magic.startswith(ZIP_MAGIC):
        raise DataError(f"{p}: neither an HDF5 file nor a torch.save archive",
                        hint="cdae info reads dataset, latents and counterfactual files (.h5) "
                             "and checkpoints (.pt)")
    ck = load_checkpoint(p)
    graph = CausalGraph.from_json(ck["graph"])
    n_params = sum(int(np.prod(v.shape)) for v in ck["ema"].values()
                   if hasattr(v, "shape") and v.dtype.is_floating_point)
    q = np.asarray(ck.get("label_quantiles", []), dtype=float)
    rows = _variables(graph, None)
    for j, row in enumerate(rows):
        if q.size and np.isfinite(q[j]).all():
            row["train_range"] = [round(float(q[j][0]), 4), round(float(q[j][-1]), 4)]
    separations = checkpoint_class_separations(ck)
    for row in rows:
        if row["name"] in separations:
            low, mean = separations[str(row["name"])]
            row["class_separation"] = f"min {low:.1f}, mean {mean:.1f} prior sigmas"
    return {"kind": InfoKind.CHECKPOINT.value, "path": str(p), "step": int(ck.get("step", 0)),
            "total_steps": int(ck.get("total_steps", 0)), "parameters": n_params,
            "image_shape": list(ck["image_shape"]), "profile": ck["params"].get("profile"),
            "model": ck["params"].get("model"), "versions": ck.get("versions", {}),
            "variables": rows, "graph": graph.describe()}


def format_info(r: dict[str, object]) -> str:
    lines = [f"{r['path']}: {r['kind']}"]
    for k in ("images", "image_shape", "train", "test", "source", "scm", "ground_truth", "step",
              "total_steps", "parameters", "profile", "versions", "skipped"):
        if k in r:
            lines.append(f"  {k}: {r[k]}")
    if isinstance(r.get("model"), dict):  # a checkpoint's model settings (condition_space, ...)
        lines.append("  model: " + ", ".join(f"{k} {v}" for k, v in r["model"].items()))
    for v in r.get("variables", []):  # type: ignore[union-attr]
        keys = ("unit", "classes", "range", "observed", "train_range", "labelled",
                "class_separation")
        extra = ", ".join(f"{k} {v[k]}" for k in keys if v.get(k) not in (None, ""))
        lines.append(f"  variable {v['name']} ({v['type']}{', ' + extra if extra else ''})")
    if "graph" in r:
        lines.append("  graph:")
        lines += [f"    {line}" for line in str(r["graph"]).splitlines()]
    for k in ("datasets", "attrs"):
        if k in r:
            lines.append(f"  {k}: {json.dumps(r[k], default=str)}")
    return "\n".join(lines)
