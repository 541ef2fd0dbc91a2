"""SLURM-style preemption: SIGTERM to a real `cdae train` process saves a checkpoint and exits
cleanly; `cdae train` again resumes, and the final weights equal an uninterrupted run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from cdae import config
from cdae.checkpoint import load_checkpoint
from cdae.dataset import Dataset, normalisation_stats, write_dataset

ROOT = Path(__file__).resolve().parents[1]
STEPS = 60


def make_project(d: Path, name: str) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["profile"] = "tiny"
    raw["profiles"]["tiny"]["train"].update({"steps": STEPS, "checkpoint_every": 5})
    raw["paths"]["dataset"] = str(d / "dataset.h5")
    raw["paths"]["model_dir"] = str(d / name)
    p = d / f"{name}.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def write_data(d: Path) -> None:
    graph = config.resolve(yaml.safe_load((ROOT / "params.yaml").read_text())).graph
    rng = np.random.default_rng(0)
    n = 40
    labels = np.stack([1 + rng.random(n) * 3, 64 + rng.random(n) * 190,
                       rng.integers(0, 10, n)], 1)
    split = (np.arange(n) % 4 == 0).astype(np.uint8)
    mean, std = normalisation_stats(labels, split, graph)
    write_dataset(d / "dataset.h5", Dataset(rng.integers(0, 255, (n, 1, 28, 28), np.uint8),
                                            labels, np.ones((n, 3), bool), split, graph, mean,
                                            std))


def train_cmd(params: Path) -> list[str]:
    return [sys.executable, "-m", "cdae", "train", "--params", str(params)]


def test_sigterm_saves_and_resume_matches(tmp_path: Path) -> None:
    write_data(tmp_path)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    ref = make_project(tmp_path, "ref")
    subprocess.run(train_cmd(ref), check=True, env=env, capture_output=True)

    run = make_project(tmp_path, "run")
    proc = subprocess.Popen(train_cmd(run), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ck = tmp_path / "run" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ck.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "received signal" in err and "resume" in err
    stopped = load_checkpoint(ck)
    assert 0 < stopped["step"] < STEPS
    assert not (tmp_path / "run" / "model.pt").exists()

    subprocess.run(train_cmd(run), check=True, env=env, capture_output=True)
    a = load_checkpoint(tmp_path / "ref" / "model.pt")
    b = load_checkpoint(tmp_path / "run" / "model.pt")
    assert b["step"] == STEPS
    for k in a["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    assert not ck.exists()
