"""Shards: whole batches dealt out contiguously, parsing of --shard, merge refusals."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdae.errors import ConfigError, DataError
from cdae.shards import Shard, merge, parse_shard, shard_attrs


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 500), st.integers(1, 64), st.integers(1, 12))
def test_shards_cover_the_rows_once_on_batch_boundaries(n, batch, count) -> None:
    covered = []
    for i in range(count):
        s = Shard(i, count).rows(n, batch)
        assert s.start % batch == 0 or s.start == n
        covered.extend(range(s.start, s.stop))
    assert covered == list(range(n))


@pytest.mark.parametrize("text, fragment", [("3", "malformed"), ("2/2", "0..COUNT-1"),
                                            ("a/b", "malformed"), ("0/0", "0..COUNT-1")])
def test_bad_shard_spec(text, fragment) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_shard(text)


def test_shard_from_torchrun_environment(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    assert parse_shard(None) == Shard(2, 4)
    assert parse_shard("1/3") == Shard(1, 3)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not parse_shard(None).enabled


def write_part(path: Path, shard: Shard, rows: slice, data: np.ndarray, steps: int = 5) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=data[rows])
        f.create_dataset("names", data=np.array([1, 2, 3]))
        f.attrs.update({"steps": steps, **shard_attrs(shard, rows, {"x": 0})})


def test_merge_joins_and_refuses(tmp_path: Path) -> None:
    data = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    parts = []
    for i in range(3):
        sh = Shard(i, 3)
        parts.append(tmp_path / f"p{i}.h5")
        write_part(parts[-1], sh, sh.rows(10, 2), data)
    assert merge(parts[::-1], tmp_path / "all.h5") == {"shards": 3, "images": 10}
    with h5py.File(tmp_path / "all.h5") as f:
        np.testing.assert_array_equal(f["x"][()], data)
        np.testing.assert_array_equal(f["names"][()], [1, 2, 3])
        assert "shard" not in f.attrs and f.attrs["steps"] == 5
        assert json.loads(f.attrs["per_image"]) == {"x": 0}

    with pytest.raises(DataError, match="not one complete set of 3"):
        merge(parts[:2], tmp_path / "bad.h5")
    write_part(tmp_path / "odd.h5", Shard(2, 3), Shard(2, 3).rows(10, 2), data, steps=7)
    with pytest.raises(DataError, match="differs in steps"):
        merge([parts[0], parts[1], tmp_path / "odd.h5"], tmp_path / "bad.h5")
    with pytest.raises(DataError, match="not a sharded cdae output"):
        merge([tmp_path / "all.h5"], tmp_path / "bad.h5")
    assert not (tmp_path / "bad.h5").exists()
