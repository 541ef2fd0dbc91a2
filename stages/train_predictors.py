"""Stage `train-predictors`: the anti-causal predictors q(v | x, children(v)) -> predictors.pt.

Trained on the train split of ``paths.dataset`` with ``predictors.*`` settings; each
predictor's test error (MAE in raw units, or accuracy) is stored in the file and reported by
`evaluate` beside every predicted number. See :mod:`cdae.predictors`.
"""

from __future__ import annotations

import time
from pathlib import Path

from cdae import config as cfg
from cdae.progress import log

PREDICTORS_FILE = "predictors.pt"  # in paths.model_dir


def run(params: cfg.Params) -> dict[str, object]:
    import torch

    from cdae.dataset import read_dataset
    from cdae.predictors import train

    pp = params.predictors
    t0 = time.perf_counter()
    c0 = time.process_time()
    if pp.threads:
        torch.set_num_threads(pp.threads)
    ds = read_dataset(params.paths.dataset)
    pred = train(ds.images, ds.labels, ds.label_mask, ds.split, ds.graph, ds.label_mean,
                 ds.label_std, steps=pp.steps, batch_size=pp.batch_size, lr=pp.lr,
                 channels=pp.channels, hidden=pp.hidden, seed=pp.seed, judges=pp.judges,
                 log=lambda line: log.info("train-predictors: %s", line))
    path = Path(params.paths.model_dir) / PREDICTORS_FILE
    pred.save(path)
    return {"path": str(path), "test_error": pred.test_error,
            "seconds": round(time.perf_counter() - t0, 1),
            "cpu_seconds": round(time.process_time() - c0, 1),
            "threads": torch.get_num_threads()}
