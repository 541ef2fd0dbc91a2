"""Checkpoints and dataset files: refusals of unsafe, corrupt, truncated and newer files."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from cdae.atomic import atomic_path
from cdae.checkpoint import load_checkpoint, save_checkpoint
from cdae.dataset import Dataset, normalisation_stats, read_dataset, write_dataset
from cdae.errors import DataError
from cdae.graph import CausalGraph

GRAPH = CausalGraph.from_dict({"variables": [{"name": "t"}, {"name": "i"},
                                             {"name": "d", "type": "categorical",
                                              "classes": 10}],
                               "edges": [["t", "i"]]})


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def small_dataset(n: int = 12) -> Dataset:
    rng = np.random.default_rng(0)
    labels = np.stack([rng.random(n) + 1, rng.random(n) * 100, rng.integers(0, 10, n)], 1)
    split = (np.arange(n) % 3 == 0).astype(np.uint8)
    mean, std = normalisation_stats(labels, split, GRAPH)
    return Dataset(images=rng.integers(0, 255, (n, 1, 8, 8), dtype=np.uint8), labels=labels,
                   label_mask=np.ones((n, 3), bool), split=split, graph=GRAPH, label_mean=mean,
                   label_std=std, noise=rng.normal(size=(n, 2)), noise_names=("a", "b"),
                   base_index=np.arange(n), base_images=np.zeros((n, 1, 8, 8), np.uint8))


def test_dataset_round_trip(tmp_path: Path) -> None:
    ds = small_dataset()
    write_dataset(tmp_path / "d.h5", ds)
    back = read_dataset(tmp_path / "d.h5")
    np.testing.assert_array_equal(back.images, ds.images)
    np.testing.assert_allclose(back.labels, ds.labels, rtol=1e-6)
    assert back.graph == GRAPH
    assert list(tmp_path.iterdir()) == [tmp_path / "d.h5"]  # no temporary left behind


def test_dataset_written_in_blocks_equals_one_write(tmp_path: Path, monkeypatch) -> None:
    """write_dataset writes each array a block of rows at a time (no full-size temporaries):
    several blocks, a partial last chunk and h5py's own chunk shape for base_images give the
    same datasets, layout and compressed chunks as one ``create_dataset(data=...)`` each."""
    import cdae.dataset

    n = 700  # images chunks of 256 rows: blocks of 256 below, the last chunk partial
    ds = small_dataset(n)
    ds.images[:] = np.arange(n, dtype=np.uint8)[:, None, None, None]  # rows tell apart
    ds.base_images = np.random.default_rng(1).integers(0, 255, (n, 1, 8, 8), dtype=np.uint8)
    monkeypatch.setattr(cdae.dataset, "_WRITE_ROWS", 1)  # one chunk row per block
    write_dataset(tmp_path / "blocks.h5", ds)
    with h5py.File(tmp_path / "one.h5", "w") as f:
        f.create_dataset("images", data=ds.images, chunks=(256, 1, 8, 8), compression="gzip",
                         compression_opts=4)
        f.create_dataset("labels", data=ds.labels.astype(np.float32))
        f.create_dataset("base_images", data=ds.base_images, compression="gzip",
                         compression_opts=4)
    with h5py.File(tmp_path / "blocks.h5", "r") as got, h5py.File(tmp_path / "one.h5") as ref:
        for name in ref:
            a, b = got[name], ref[name]
            assert (a.dtype, a.shape, a.chunks, a.compression) == (b.dtype, b.shape, b.chunks,
                                                                   b.compression), name
            np.testing.assert_array_equal(a[()], b[()])
            for c in range(b.id.get_num_chunks() if b.chunks else 0):
                where = b.id.get_chunk_info(c).chunk_offset
                assert a.id.read_direct_chunk(where) == b.id.read_direct_chunk(where), name
        assert got["base_images"].id.get_num_chunks() > 1


def test_dataset_refusals(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset file not found"):
        read_dataset(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError, match="cannot read the dataset file"):
        read_dataset(tmp_path / "junk.h5")
    write_dataset(tmp_path / "d.h5", small_dataset())
    data = (tmp_path / "d.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.h5"):
        read_dataset(tmp_path / "cut.h5")
    with h5py.File(tmp_path / "d.h5", "a") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(DataError, match="newer cdae"):
        read_dataset(tmp_path / "d.h5")
    bad = small_dataset()
    bad.labels[0, 2] = 12  # digit outside its classes
    with pytest.raises(DataError, match="outside its classes"):
        write_dataset(tmp_path / "bad.h5", bad)
    assert not (tmp_path / "bad.h5").exists()


def test_checkpoint_refuses_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": "cdae-checkpoint", "payload": Evil()}, path)
    with pytest.raises(DataError, match="refused to load"):
        load_checkpoint(path)


def test_checkpoint_corrupt_and_foreign(tmp_path: Path) -> None:
    good = tmp_path / "ck.pt"
    save_checkpoint(good, {"params": {}, "graph": "{}", "image_shape": [1, 8, 8],
                           "ema": {"w": torch.zeros(3)}, "label_mean": [0.0],
                           "label_std": [1.0]})
    assert load_checkpoint(good)["format"] == "cdae-checkpoint"
    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(DataError, match="not a cdae checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with open(tmp_path / "pickle.pt", "wb") as f:
        pickle.dump({"a": 1}, f)
    with warnings.catch_warnings():  # torch.load may warn about the foreign pickle protocol
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(DataError):
            load_checkpoint(tmp_path / "pickle.pt")


@pytest.mark.parametrize("data", [b"hello\n", b"", b"MM", b"\x89HDF\r\n\x1a\n" + bytes(64)],
                         ids=["text", "empty", "short", "hdf5"])
def test_checkpoint_and_predictors_that_are_not_torch_archives(tmp_path: Path, data) -> None:
    # torch's legacy unpickler fails on such bytes with KeyError / IndexError / struct.error
    from cdae.predictors import Predictors

    path = tmp_path / "model.pt"
    path.write_bytes(data)
    with pytest.raises(DataError, match="model.pt: not a cdae checkpoint"):
        load_checkpoint(path)
    with pytest.raises(DataError, match="model.pt: not a cdae predictors file"):
        Predictors.load(path)


def test_checkpoint_without_a_later_setting_gets_the_behaviour_it_was_trained_with(
        tmp_path: Path) -> None:
    # model.condition_space came after the first checkpoints; those decoded from z ("latent"),
    # whatever today's default is
    base = {"graph": "{}", "image_shape": [1, 8, 8], "ema": {"w": torch.zeros(3)},
            "label_mean": [0.0], "label_std": [1.0]}
    save_checkpoint(tmp_path / "old.pt", dict(base, params={"model": {"channels": 8}}))
    save_checkpoint(tmp_path / "new.pt", dict(base, params={"model": {"condition_space": "label"}}))
    assert load_checkpoint(tmp_path / "old.pt")["params"]["model"] == {
        "channels": 8, "condition_space": "latent", "mechanisms": {}, "class_embedding": "free"}
    assert load_checkpoint(tmp_path / "new.pt")["params"]["model"]["condition_space"] == "label"


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_path_refuses_a_folder_as_its_target(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(DataError, match="out: is a folder, not a file"):
        with atomic_path(tmp_path / "out") as tmp:
            tmp.write_bytes(b"data")
    assert list(tmp_path.iterdir()) == [tmp_path / "out"]
    assert not any((tmp_path / "out").iterdir())


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_atomic_path_refuses_a_folder_that_takes_no_files() -> None:
    """/proc passes os.access(W_OK) for root yet creates no file: the refusal is a DataError
    naming the target (h5py's OSError traceback before), not whatever the writer raises."""
    refused = r"^/proc(/cdae-out.h5: cannot write there|: output folder is not writable)"
    with pytest.raises(DataError, match=refused):
        with atomic_path("/proc/cdae-out.h5") as tmp:
            tmp.write_bytes(b"data")


def test_read_images_converts_modes_and_refuses_other_sizes(tmp_path: Path) -> None:
    """`--image` files: RGBA or palette PNGs become the model's grayscale or RGB, pixel for
    pixel; another size, a missing or a non-image file is a DataError naming the file."""
    from PIL import Image

    from cdae.dataset import read_images

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)  # H x W x C
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "a.png")
    Image.fromarray(rgb[..., 0]).convert("P").save(tmp_path / "p.png")
    got = read_images([str(tmp_path / "a.png")], (3, 8, 6))
    assert got.shape == (1, 3, 8, 6) and np.array_equal(got[0], rgb.transpose(2, 0, 1))
    gray = read_images([str(tmp_path / "p.png"), str(tmp_path / "a.png")], (1, 8, 6))
    assert np.array_equal(gray[0, 0], rgb[..., 0])
    assert np.array_equal(gray[1, 0], np.asarray(Image.fromarray(rgb).convert("L")))
    with pytest.raises(DataError, match=r"a.png: the image is 6x8, the model takes 8x8"):
        read_images([str(tmp_path / "a.png")], (3, 8, 8))
    with pytest.raises(DataError, match="no such image file"):
        read_images([str(tmp_path / "none.png")], (1, 8, 6))
    (tmp_path / "t.png").write_text("not an image")
    with pytest.raises(DataError, match="t.png: cannot read the image"):
        read_images([str(tmp_path / "t.png")], (1, 8, 6))


def test_checkpoint_from_a_newer_cdae_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.pt"
    torch.save({"format": "cdae-checkpoint", "schema_version": 99, "params": {}}, path)
    with pytest.raises(DataError, match="newer cdae"):
        load_checkpoint(path)


def test_image_size_mismatch_says_what_differs(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from stages.intervene import check_compatible

    engine = SimpleNamespace(graph=GRAPH, model=SimpleNamespace(image_shape=(1, 28, 28)))
    check_compatible(engine, GRAPH, "d.h5", tmp_path / "m.pt", (1, 28, 28))
    with pytest.raises(DataError, match=r"expects images \(1, 28, 28\), d.h5 holds \(3, 32, 32\)"):
        check_compatible(engine, GRAPH, "d.h5", tmp_path / "m.pt", (3, 32, 32))


def test_labeled_fraction_mask_is_fixed_and_normalisation_ignores_dropped_labels() -> None:
    """Semi-supervision (METHOD.md): the label mask drops a fixed share of TRAIN labels only,
    and the stored normalisation stats use only the labels training may see."""
    from cdae import config as cfg
    from stages.prepare_data import _label_mask, _masked_stats

    graph = CausalGraph.from_dict({"variables": [{"name": "a"}, {"name": "b"}],
                                   "edges": [["a", "b"]]})
    rng = np.random.default_rng(0)
    labels = rng.normal(size=(400, 2))
    labels[:200, 0] += 10.0  # the first half is far off: dropping it must move the mean
    split = np.zeros(400, np.uint8)
    split[::4] = 1
    dp = cfg.DataParams(labeled_fraction=0.5)
    mask = _label_mask(dp, np.random.default_rng(1), labels, split)
    assert np.array_equal(mask, _label_mask(dp, np.random.default_rng(1), labels, split))
    assert mask[split == 1].all()  # test labels are kept for evaluation
    assert 0.4 < mask[split == 0].mean() < 0.6
    mean, std = _masked_stats(labels, mask, split, graph)
    kept = labels[(split == 0) & mask[:, 0], 0]
    assert mean[0] == pytest.approx(kept.mean()) and std[0] == pytest.approx(kept.std())
    assert mean[0] != pytest.approx(normalisation_stats(labels, split, graph)[0][0])
