"""Atomic file output: write to a temporary name beside the target, then rename into place.

A killed stage never leaves a truncated file where the next stage would read it, and two
processes writing different outputs never see each other's temporary files.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator

from cdae.errors import DataError


def ensure_writable_dir(path: Path) -> Path:
    """Create ``path`` (a folder) if needed; raise DataError when it cannot be written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{path}: cannot create output folder ({err.strerror})",
                        hint="choose a writable location") from None
    if not os.access(path, os.W_OK):
        raise DataError(f"{path}: output folder is not writable", hint="choose a writable location")
    return path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s folder; on success rename it to ``target``.

    On any exception the temporary file is removed and ``target`` is left untouched. DataError
    when ``target`` is a folder (``--out reports/``) or its folder cannot be written.
    """
    target = Path(target)
    if target.is_dir():
        raise DataError(f"{target}: is a folder, not a file",
                        hint="name a file to write, e.g. one inside that folder")
    ensure_writable_dir(target.parent)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:  # a folder may pass os.access and still refuse a file (root, /proc, a full disk)
        with open(tmp, "xb"):
            pass
    except OSError as err:
        raise DataError(f"{target}: cannot write there ({err.strerror})",
                        hint="choose a writable location") from None
    try:
        yield tmp
        try:
            os.replace(tmp, target)
        except OSError as err:
            raise DataError(f"{target}: cannot write there ({err.strerror})",
                            hint="choose a writable location") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(target: str | os.PathLike[str], text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
