"""Data-parallel training: 2 CPU processes (gloo, launched by torchrun) compute what one process
computes on the same global batch, and a checkpoint resumes under another process count."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from cdae.checkpoint import load_checkpoint

from test_interrupt import ROOT, write_data

STEPS = 6
# Gradients are averaged over two half-batches instead of one full batch: the same sum in a
# different float order. After 6 AdamW steps the weights agree to 2e-6 (measured); 1e-4 leaves
# room for other BLAS builds while any real difference (wrong slice, unsynchronised ranks,
# duplicated randomness) moves weights by >1e-3 at lr 1e-3.
ATOL = 1e-4

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch built without torch.distributed")


def make_params(d: Path, name: str, steps: int) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["profile"] = "tiny"
    raw["profiles"]["tiny"]["train"].update({"steps": steps, "checkpoint_every": 100})
    # tiny's 8-channel encoder stem has one channel per GroupNorm group, which makes the stem
    # conv's bias gradient exactly zero up to float noise, and AdamW turns noise into +-lr steps
    # that differ with the summation order; 16 channels give it a real gradient.
    raw["profiles"]["tiny"]["model"]["encoder_channels"] = 16
    raw["paths"]["dataset"] = str(d / "dataset.h5")
    raw["paths"]["model_dir"] = str(d / name)
    p = d / f"{name}_{steps}.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def train(params: Path, procs: int) -> str:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={procs}"] if procs > 1 else [sys.executable])
    proc = subprocess.run([*launch, "-m", "cdae", "train", "--params", str(params)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a
               if a[k].dtype.is_floating_point)


@pytest.fixture(scope="module")
def tmp_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the data and the one-process reference run (models under ``single/``),
    trained once for the module; each test trains its own runs beside it under other names."""
    d = tmp_path_factory.mktemp("distributed")
    write_data(d)
    train(make_params(d, "single", STEPS), 1)
    return d


def test_two_processes_match_one(tmp_data: Path) -> None:
    out = train(make_params(tmp_data, "ddp", STEPS), 2)
    # rank 0 alone logs, reports and writes; rank 1 says it is a worker
    assert out.count("INFO trained 6 steps") == 1
    assert out.count("data-parallel worker done at step 6") == 1
    single = load_checkpoint(tmp_data / "single" / "model.pt")
    ddp = load_checkpoint(tmp_data / "ddp" / "model.pt")
    assert ddp["step"] == STEPS
    assert max_diff(single["model"], ddp["model"]) < ATOL
    assert max_diff(single["ema"], ddp["ema"]) < ATOL
    assert sorted(p.name for p in (tmp_data / "ddp").iterdir()) == [
        "model.pt", "train.json", "train_log.csv"]


def test_resume_with_another_process_count(tmp_data: Path) -> None:
    train(make_params(tmp_data, "mixed", STEPS // 2), 2)   # first half on 2 processes
    half = load_checkpoint(tmp_data / "mixed" / "model.pt")
    # the tolerance is far below what three more steps change
    assert max_diff(half["ema"], load_checkpoint(tmp_data / "single" / "model.pt")["ema"]) \
        > 10 * ATOL
    out = train(make_params(tmp_data, "mixed", STEPS), 1)  # second half on 1
    assert f"resuming from {tmp_data / 'mixed' / 'model.pt'} at step {STEPS // 2}" in out
    single = load_checkpoint(tmp_data / "single" / "model.pt")
    mixed = load_checkpoint(tmp_data / "mixed" / "model.pt")
    assert mixed["step"] == STEPS
    assert max_diff(single["ema"], mixed["ema"]) < ATOL


def test_two_processes_with_a_compiled_loss_match_one_eager(tmp_data: Path) -> None:
    """train.compile under DistributedDataParallel (the `gpu` profile under torchrun): the
    compiled loss's backward still reaches DDP's gradient averaging, so 2 compiled processes
    train what 1 eager process does."""
    params = make_params(tmp_data, "compiled", STEPS)
    raw = yaml.safe_load(params.read_text())
    raw["profiles"]["tiny"]["train"]["compile"] = True
    params.write_text(yaml.safe_dump(raw))
    train(params, 2)
    single = load_checkpoint(tmp_data / "single" / "model.pt")
    compiled = load_checkpoint(tmp_data / "compiled" / "model.pt")
    assert compiled["step"] == STEPS
    assert max_diff(single["model"], compiled["model"]) < ATOL
    assert max_diff(single["ema"], compiled["ema"]) < ATOL
