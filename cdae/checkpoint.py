"""Checkpoints: everything needed to use a model alone, loaded without unpickling code.

A checkpoint is a dict of tensors and plain values written with ``torch.save`` and read with
``torch.load(weights_only=True)``: a file holding a pickled object is refused. Keys::

    format: "cdae-checkpoint", schema_version: int
    params: dict (the full resolved params), graph: JSON text
    image_shape: [C, H, W], label_mean, label_std: lists
    step: int, total_steps: int, config_hash: str
    model: state_dict (raw weights), ema: state_dict (EMA weights: used for sampling)
    optimizer: state_dict, versions: {cdae, torch, python}
"""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
import platform
import zipfile
from pathlib import Path
from typing import Any

import torch

from cdae import __version__
from cdae.atomic import atomic_path
from cdae.errors import DataError
from cdae.graph import CausalGraph

FORMAT = "cdae-checkpoint"
SCHEMA_VERSION = 1
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip archive, the only format cdae writes


SAMPLING_KEYS = ("inversion_iters", "solver", "spacing")  # of params' diffusion section

# Settings added after checkpoints were first written, with the behaviour those checkpoints were
# trained with: a stored params dict without the key gets this value, not today's default.
LEGACY_SETTINGS: dict[tuple[str, str], Any] = {
    ("model", "condition_space"): "latent",
    ("model", "mechanisms"): {},  # every variable of model.mechanism's kind
    ("model", "class_embedding"): "free",
    ("train", "mechanism_fit"): "joint",
}


def config_hash(params_dict: dict[str, Any]) -> str:
    """Hash of the settings that determine a training run (for safe resume). ``train.steps`` is
    left out: training a finished run for more steps continues it (as does ``train.max_minutes``:
    a run stopped by its time budget resumes); so are settings that only
    affect sampling (``diffusion.inversion_iters``, ``solver``, ``spacing``) or bookkeeping, and
    the variables' declared ranges (they bound ``do()`` only: :meth:`CausalGraph.structure`)."""
    keys = ("graph", "data", "model", "diffusion", "train", "seed")
    sub = {k: params_dict.get(k) for k in keys}
    if sub["graph"] is not None:
        sub["graph"] = CausalGraph.from_dict(sub["graph"]).structure()
    sub["diffusion"] = {k: v for k, v in (sub["diffusion"] or {}).items()
                        if k not in SAMPLING_KEYS}  # not training settings
    sub["train"] = {k: v for k, v in (sub["train"] or {}).items()
                    if k not in ("steps", "max_minutes", "checkpoint_every", "log_every",
                                 "threads", "device", "compile", "compile_mode")}
    return hashlib.sha256(json.dumps(sub, sort_keys=True, default=str).encode()).hexdigest()[:16]


def versions() -> dict[str, str]:
    return {"cdae": __version__, "torch": str(torch.__version__), "python": platform.python_version()}


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write atomically; ``payload`` must hold only tensors and plain values."""
    payload = dict(payload, format=FORMAT, schema_version=SCHEMA_VERSION, versions=versions())
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def require_torch_archive(path: Path, what: str, hint: str) -> None:
    """DataError unless ``path`` starts as torch.save's zip archive does: any other file (text,
    HDF5, a bare pickle) would reach torch's legacy unpickler, which fails on such bytes with
    KeyError, IndexError or struct.error instead of a message."""
    try:
        with open(path, "rb") as f:
            magic = f.read(len(ZIP_MAGIC))
    except OSError as err:
        raise DataError(f"{path}: cannot read the {what} ({err.strerror})", hint=hint) from None
    if magic != ZIP_MAGIC:
        raise DataError(f"{path}: not a cdae {what} (not a torch.save archive)", hint=hint)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint; DataError for missing, corrupt, unsafe or foreign files."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: checkpoint not found", hint="run `cdae train` first")
    require_torch_archive(p, "checkpoint", hint="pass a file written by `cdae train`")
    try:
        ck = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).splitlines()[0] if str(err) else ""
        raise DataError(f"{p}: refused to load: the file holds pickled objects, not only "
                        f"weights ({first[:120]})",
                        hint="only load checkpoints written by cdae") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{p}: truncated or corrupt checkpoint ({first[:120]})",
                        hint="delete it and re-run `cdae train`") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise DataError(f"{p}: not a cdae checkpoint", hint="pass a file written by `cdae train`")
    if int(ck.get("schema_version", -1)) > SCHEMA_VERSION:
        raise DataError(f"{p}: written by a newer cdae (schema {ck['schema_version']} > "
                        f"{SCHEMA_VERSION})", hint="upgrade cdae")
    missing = [k for k in ("params", "graph", "image_shape", "ema", "label_mean", "label_std")
               if k not in ck]
    if missing:
        raise DataError(f"{p}: checkpoint lacks '{missing[0]}'", hint="re-run `cdae train`")
    if isinstance(ck["params"], dict):
        for (section, key), value in LEGACY_SETTINGS.items():
            sub = ck["params"].get(section)
            if isinstance(sub, dict) and key not in sub:
                sub[key] = copy.deepcopy(value)  # a fresh {} per load
    return ck
