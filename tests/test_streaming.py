"""Streaming readers of encode-latents and intervene: RowReader, open_dataset, open_cached."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from cdae import config as cfg
from cdae.dataset import Dataset, RowReader, normalisation_stats, open_dataset, read_dataset, \
    write_dataset
from cdae.graph import CausalGraph
from stages.encode_latents import SCHEMA_VERSION, file_sha256, load_cached, open_cached

GRAPH = {"variables": [{"name": "t", "type": "continuous"}, {"name": "i", "type": "continuous"}],
         "edges": [["t", "i"]]}


def tiny_dataset(n: int = 600) -> Dataset:
    rng = np.random.default_rng(0)
    graph = CausalGraph.from_json(json.dumps(GRAPH))
    labels = rng.normal(size=(n, 2))
    split = (np.arange(n) % 3 == 0).astype(np.uint8)
    mean, std = normalisation_stats(labels, split, graph)
    images = rng.integers(0, 256, (n, 1, 4, 4), dtype=np.uint8)
    return Dataset(images, labels, np.ones((n, 2), bool), split, graph, mean, std)


@pytest.mark.parametrize("rows", [[5, 1, 3], [599, 0], [7, 7, 2], [], list(range(100, 300)),
                                  np.array([2, 580, 300])])
def test_row_reader_reads_the_rows_in_the_order_asked(tmp_path: Path, rows) -> None:
    data = np.arange(600 * 3, dtype=np.int32).reshape(600, 3)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("x", data=data, chunks=(64, 3))
    with h5py.File(tmp_path / "a.h5", "r") as f:
        r = RowReader(f["x"])
        assert r.shape == data.shape and len(r) == 600 and r.ndim == 2
        np.testing.assert_array_equal(r[rows], data[np.asarray(rows, np.int64)])
        np.testing.assert_array_equal(r[10:20], data[10:20])
        with pytest.raises(IndexError):
            r[[600]]


def test_open_dataset_streams_the_same_data(tmp_path: Path) -> None:
    ds = tiny_dataset()
    write_dataset(tmp_path / "d.h5", ds)
    whole = read_dataset(tmp_path / "d.h5")
    assert isinstance(whole.images, np.ndarray)
    with open_dataset(tmp_path / "d.h5") as lazy:
        assert isinstance(lazy.images, RowReader) and lazy.image_shape == (1, 4, 4)
        rows = lazy.indices("test")[::7]
        np.testing.assert_array_equal(lazy.images[rows], ds.images[rows])
        np.testing.assert_array_equal(lazy.labels, whole.labels)


def test_open_cached_reads_the_asked_rows_and_refuses_others(tmp_path: Path) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    index = np.array([3, 8, 11, 20, 42], np.int64)
    x_t = np.arange(5 * 4, dtype=np.float32).reshape(5, 1, 2, 2)
    with h5py.File(tmp_path / "lat.h5", "w") as f:
        f.create_dataset("index", data=index)
        for key, shape in (("u", (2, 3)), ("z", (2, 3)), ("parents", (2,))):
            f.create_dataset(key, data=np.zeros((5, *shape), np.float32))
        f.create_dataset("x_T", data=x_t, chunks=(2, 1, 2, 2))
        f.attrs.update({"schema_version": SCHEMA_VERSION, "steps": 3, "inversion_iters": 1,
                        "parents_from": "labels", "checkpoint_sha256": file_sha256(model),
                        "abduction": "invert", "t0": 70})
    args = (tmp_path / "lat.h5", model)
    rows = np.array([11, 42, 3])
    with open_cached(*args, rows, 3, cfg.ParentsFrom.LABELS, 1) as cache:
        assert cache["x_T"].shape == (3, 1, 2, 2)
        np.testing.assert_array_equal(cache["x_T"][1:3], x_t[[4, 0]])
    whole = load_cached(*args, rows, 3, cfg.ParentsFrom.LABELS, 1)
    np.testing.assert_array_equal(whole["x_T"], x_t[[2, 4, 0]])
    assert load_cached(*args, np.array([3, 4]), 3, cfg.ParentsFrom.LABELS, 1) is None
    assert load_cached(*args, rows, 5, cfg.ParentsFrom.LABELS, 1) is None
    with open_cached(tmp_path / "none.h5", model, rows, 3, cfg.ParentsFrom.LABELS, 1) as c:
        assert c is None
    # x_T of a full inversion is no x_t0 for partial abduction, and x_t0 only serves its own t0
    assert load_cached(*args, rows, 3, cfg.ParentsFrom.LABELS, 1,
                       abduction=cfg.Abduction.PARTIAL, t0=70) is None
    with h5py.File(tmp_path / "lat.h5", "a") as f:
        f.attrs["abduction"] = "partial"
    assert load_cached(*args, rows, 3, cfg.ParentsFrom.LABELS, 1) is None
    assert load_cached(*args, rows, 3, cfg.ParentsFrom.LABELS, 1,
                       abduction=cfg.Abduction.PARTIAL, t0=70) is not None
    assert load_cached(*args, rows, 3, cfg.ParentsFrom.LABELS, 1,
                       abduction=cfg.Abduction.PARTIAL, t0=60) is None
    # x_t0 of one solver or grid is no x_t0 of another (files before these attrs: DDIM, uniform)
    assert load_cached(*args, rows, 3, cfg.ParentsFrom.LABELS, 1, abduction=cfg.Abduction.PARTIAL,
                       t0=70, solver=cfg.Solver.HEUN) is None
    assert load_cached(*args, rows, 3, cfg.ParentsFrom.LABELS, 1, abduction=cfg.Abduction.PARTIAL,
                       t0=70, spacing=cfg.Spacing.QUADRATIC) is None
    with h5py.File(tmp_path / "lat.h5", "a") as f:
        f.attrs.update({"solver": "heun", "spacing": "quadratic"})
    assert load_cached(*args, rows, 3, cfg.ParentsFrom.LABELS, 1, abduction=cfg.Abduction.PARTIAL,
                       t0=70, solver=cfg.Solver.HEUN, spacing=cfg.Spacing.QUADRATIC) is not None


def test_encode_and_intervene_stream_the_rows_they_write(tmp_path: Path) -> None:
    import dataclasses

    import torch

    from cdae.training import train
    from stages import encode_latents, intervene

    root = Path(__file__).resolve().parents[1]
    base = cfg.load(root / "params.yaml", "tiny")
    params = dataclasses.replace(
        base, paths=dataclasses.replace(base.paths, dataset=str(tmp_path / "d.h5"),
                                        model_dir=str(tmp_path / "m"),
                                        latents=str(tmp_path / "lat.h5")),
        train=dataclasses.replace(base.train, steps=1, device=cfg.Device.CPU),
        encode=dataclasses.replace(base.encode, max_images=7, steps=1, batch_size=3),
        intervene=dataclasses.replace(base.intervene, max_images=7, steps=1, batch_size=3))
    rng = np.random.default_rng(1)
    n = 40
    t = rng.uniform(1, 4, n)
    labels = np.stack([t, 64 + 40 * t, rng.integers(0, 10, n)], 1)
    split = (np.arange(n) % 2).astype(np.uint8)
    mean, std = normalisation_stats(labels, split, params.graph)
    ds = Dataset(rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8), labels,
                 np.ones((n, 3), bool), split, params.graph, mean, std)
    write_dataset(params.paths.dataset, ds)
    torch.manual_seed(0)
    (tmp_path / "m").mkdir()
    train(params, ds, tmp_path / "m", resume=False, show_progress=False)
    encode_latents.run(params)
    intervene.run(params, {"thickness": 2.0}, out=str(tmp_path / "cf.h5"))
    with h5py.File(tmp_path / "lat.h5") as lat, h5py.File(tmp_path / "cf.h5") as cf:
        index = cf["index"][()]
        np.testing.assert_array_equal(index, lat["index"][()])
        assert index.size == 7 and (split[index] == 1).all()
        np.testing.assert_array_equal(cf["factual"][()], ds.images[index])
        assert cf["factual"].chunks[0] == cf["counterfactual"].chunks[0] == 3
        assert lat["x_T"].chunks[0] == 3 and lat["x_T"].shape == (7, 1, 28, 28)
        np.testing.assert_allclose(cf["parents_cf"][:, 0], 2.0)
