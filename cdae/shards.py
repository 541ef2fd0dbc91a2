"""Sharded per-image stages (encode-latents, intervene) for clusters, and merging their outputs.

A shard ``i/n`` (0-based, e.g. ``--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``) takes a
contiguous run of whole BATCHES of the selected images, so every batch holds exactly the images
it holds in the unsharded run and the merged output is identical to it. Under ``torchrun`` each
rank takes shard ``RANK/WORLD_SIZE`` when no shard is given.

Sharded files record ``shard`` ("i/n"), ``shard_rows`` (their first row and row count in the
unsharded order) and ``per_image`` (JSON: dataset name -> the axis that runs over images);
:func:`merge` concatenates those datasets along that axis and copies everything else, after
checking that the shards are complete and were written with the same settings.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from cdae.errors import ConfigError, DataError

# attributes that legitimately differ between the shards of one run
SHARD_ATTRS = ("shard", "shard_rows")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0 <= index < count)."""

    index: int = 0
    count: int = 1

    @property
    def enabled(self) -> bool:
        return self.count > 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def rows(self, n: int, batch_size: int) -> slice:
        """This shard's slice of ``n`` rows processed in batches of ``batch_size``: batches
        are dealt out contiguously, so shard boundaries fall on batch boundaries."""
        batches = -(-n // batch_size) if n else 0
        lo_b = (self.index * batches) // self.count
        hi_b = ((self.index + 1) * batches) // self.count
        return slice(min(lo_b * batch_size, n), min(hi_b * batch_size, n))

    def path(self, target: Path) -> Path:
        """Default output name of this shard: ``name.shard-I-of-N.h5`` beside ``target``."""
        if not self.enabled:
            return target
        return target.with_name(f"{target.stem}.shard-{self.index}-of-{self.count}"
                                f"{target.suffix}")


def parse_shard(text: str | None) -> Shard:
    """``"i/n"`` -> Shard(i, n); None -> this torchrun rank's shard (or the whole run)."""
    if text is None:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        return Shard(int(os.environ.get("RANK", "0") or 0), world) if world > 1 else Shard()
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise ConfigError(f"--shard '{text}' is malformed", hint="write INDEX/COUNT, e.g. 0/4")
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1 or index >= count:
        raise ConfigError(f"--shard {text}: the index must lie in 0..COUNT-1",
                          hint="e.g. --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT")
    return Shard(index, count)


def shard_attrs(shard: Shard, rows: slice, per_image: dict[str, int]) -> dict[str, str | int]:
    """Attributes a stage writes into its (possibly sharded) HDF5 output."""
    out: dict[str, str | int] = {"per_image": json.dumps(per_image, sort_keys=True)}
    if shard.enabled:
        out.update({"shard": str(shard),
                    "shard_rows": json.dumps([rows.start, rows.stop - rows.start])})
    return out


def _same(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    return a == b


def merge(parts: Sequence[Path], target: Path) -> dict[str, int]:
    """Merge the shard files ``parts`` (any order) into ``target`` (written atomically).

    Refuses (DataError naming the file) shards of different runs, missing or duplicated shards,
    and files that are not sharded outputs. Returns {"shards": n, "images": rows}.
    """
    import h5py

    from cdae.atomic import atomic_path

    if not parts:
        raise DataError("no shard files given", hint="pass the files written with --shard")
    info = []
    for p in parts:
        p = Path(p)
        if not p.is_file():
            raise DataError(f"{p}: shard file not found", hint="check the path")
        try:
            with h5py.File(p, "r") as f:
                attrs = dict(f.attrs)
        except OSError as err:
            raise DataError(f"{p}: cannot read the shard file ({err})",
                            hint="re-run that shard") from None
        if "shard" not in attrs or "per_image" not in attrs:
            raise DataError(f"{p}: not a sharded cdae output (no 'shard' attribute)",
                            hint="only files written with --shard can be merged")
        sh = parse_shard(str(attrs["shard"]))
        first, count = json.loads(attrs["shard_rows"])
        info.append((sh, first, count, p, attrs))
    info.sort(key=lambda r: r[0].index)
    n = info[0][0].count
    if [r[0].index for r in info] != list(range(n)) or any(r[0].count != n for r in info):
        have = ", ".join(str(r[0]) for r in info)
        raise DataError(f"shards {have} are not one complete set of {n}",
                        hint="pass every shard 0..N-1 exactly once")
    base = {k: v for k, v in info[0][4].items() if k not in SHARD_ATTRS}
    expect = 0
    for sh, first, count, p, attrs in info:
        other = {k: v for k, v in attrs.items() if k not in SHARD_ATTRS}
        diff = sorted(k for k in set(base) | set(other)
                      if k not in base or k not in other or not _same(base[k], other[k]))
        if diff:
            raise DataError(f"{p}: written with other settings than {info[0][3]} "
                            f"(differs in {', '.join(diff)})", hint="re-run the shards alike")
        if first != expect:
            raise DataError(f"{p}: shard {sh} starts at row {first}, expected {expect}",
                            hint="the shards come from runs over different images")
        expect += count
    per_image: dict[str, int] = json.loads(base["per_image"])
    with atomic_path(target) as tmp, h5py.File(tmp, "w") as out:
        sources = [h5py.File(r[3], "r") for r in info]
        try:
            first_file = sources[0]
            for name in first_file:
                if name in per_image:
                    axis = per_image[name]
                    data = np.concatenate([s[name][()] for s in sources], axis=axis)
                    chunks = first_file[name].chunks
                    if chunks is not None:
                        chunks = tuple(min(c, s) for c, s in zip(chunks, data.shape))
                    out.create_dataset(name, data=data, chunks=chunks)
                else:
                    first_file.copy(first_file[name], out, name)
                out[name].attrs.update(dict(first_file[name].attrs))
            out.attrs.update(base)
        finally:
            for s in sources:
                s.close()
    return {"shards": n, "images": expect}
