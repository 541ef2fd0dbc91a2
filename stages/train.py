"""Stage `train`: dataset file -> models/model.pt (+ models/train_log.csv, models/train.json)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from cdae import config as cfg
from cdae.atomic import ensure_writable_dir, write_text


def run(params: cfg.Params, *, resume: bool = True) -> dict[str, float]:
    from cdae.dataset import read_dataset
    from cdae.training import train

    ds = read_dataset(params.paths.dataset)
    if ds.graph.structure() != params.graph.structure():
        from cdae.errors import DataError

        raise DataError(f"{params.paths.dataset}: its graph differs from params.yaml's graph",
                        hint="re-run `cdae prepare-data` after changing graph")
    out = ensure_writable_dir(Path(params.paths.model_dir))
    result = train(params, ds, out, resume=resume)
    rows = result.log_rows
    if not result.is_main:  # data-parallel rank > 0: rank 0 writes the outputs
        return {"steps": result.step, "rank": "worker"}
    if rows:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (int(v) if k == "step" else round(v, 6)) for k, v in r.items()})
        write_text(out / "train_log.csv", buf.getvalue())
    summary = {"steps": result.step, "seconds": round(result.seconds, 1),
               "images_per_second": round(result.images_per_second, 1),
               "stopped_by_signal": result.stopped_by_signal,
               "stopped_by_time": result.out_of_time,
               "final_loss": rows[-1]["loss"] if rows else float("nan")}
    if not result.stopped_by_signal:
        summary.update(_class_check(out / "model.pt"))
        write_text(out / "train.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _class_check(model_path: Path) -> dict[str, object]:
    """train.json's ``class_separation`` (per categorical variable: the smallest and mean
    distance between two class prior means, in prior sigmas); a warning where two classes lie
    closer than ``SEPARATION_WARN`` (the condition then barely tells them apart)."""
    from cdae.causal import SEPARATION_WARN, checkpoint_class_separations
    from cdae.checkpoint import load_checkpoint
    from cdae.progress import log

    seps = checkpoint_class_separations(load_checkpoint(model_path))
    for name, (low, _mean) in seps.items():
        if low < SEPARATION_WARN:
            log.warning("train: two classes of %s have prior means %.1f prior sigmas apart: the "
                        "condition barely tells them apart (model.class_embedding: normalised "
                        "keeps the table's scale)", name, low)
    if not seps:
        return {}
    return {"class_separation": {n: {"min": round(lo, 2), "mean": round(me, 2)}
                                 for n, (lo, me) in seps.items()}}
