"""The whole DVC DAG on the tiny profile, in a temporary copy of the project.

Checks: every stage's outputs exist and are readable; a second `dvc repro` runs nothing; a train
param change re-runs train and what follows but not prepare-data; `cdae intervene` prints the
counterfactual parents.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("dvc") is None, reason="dvc is not installed")


def sh(cmd: list[str], cwd: Path, stdout_only: bool = False) -> str:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout if stdout_only else proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("project")
    for name in ("cdae", "stages"):
        shutil.copytree(ROOT / name, d / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", d / "dvc.yaml")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["profile"] = "tiny"
    (d / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    sh(["git", "init", "-q"], d)
    sh(["dvc", "init", "-q"], d)
    sh(["dvc", "config", "core.autostage", "false"], d)
    return d


def test_dvc_repro_tiny(project: Path) -> None:
    out = sh(["dvc", "repro"], project)
    for stage in ("prepare-data", "train", "encode-latents", "intervene@thickness_2",
                  "intervene@intensity_120", "intervene@thickness_4", "render", "evaluate"):
        assert f"Running stage '{stage}'" in out, stage
    with h5py.File(project / "data/dataset.h5") as f:
        assert f["images"].dtype == np.uint8 and f["images"].shape[1:] == (1, 28, 28)
        assert f["labels"].shape[1] == 3
    with h5py.File(project / "data/latents.h5") as f:
        assert f["x_T"].shape[0] == f["z"].shape[0] > 0
    with h5py.File(project / "data/counterfactuals/thickness_2.h5") as f:
        pc = f["parents_cf"][()]
        assert np.allclose(pc[:, 0], 2.0)  # thickness set by do
        assert f["counterfactual"].shape == f["factual"].shape
    metrics = json.loads((project / "reports/metrics.json").read_text())
    for key in ("do_thickness", "do_intensity", "null", "do_thickness_do_nothing"):
        assert key in metrics
    assert "thickness_mae" in metrics["do_thickness"]
    assert (project / "reports/figures/counterfactuals.png").stat().st_size > 1000

    again = sh(["dvc", "repro"], project)
    assert "Running stage" not in again

    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["train"]["lr"] = raw["train"]["lr"] * 0.5  # a train param the tiny profile keeps
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    third = sh(["dvc", "repro"], project)
    assert "Running stage 'prepare-data'" not in third
    assert "Running stage 'train'" in third


def test_cli_intervene_prints_parents(project: Path) -> None:
    out = sh([sys.executable, "-m", "cdae", "intervene", "--var", "thickness", "--value", "2.0",
              "--max-images", "4", "--steps", "2"], project)
    assert "thickness" in out and "-> " in out and "2.000" in out
    assert "intensity" in out and "propagated by the learned mechanism" in out
    assert (project / "data/counterfactuals/do_thickness=2.h5").is_file()
    js = sh([sys.executable, "-m", "cdae", "intervene", "--do", "intensity=150", "--json",
             "--max-images", "2", "--steps", "2"], project, stdout_only=True)
    result = json.loads(js)
    assert result["parents"]["intensity"]["counterfactual_mean"] == pytest.approx(150.0)
    # intensity has no descendants: thickness keeps its factual value
    t = result["parents"]["thickness"]
    assert t["counterfactual_mean"] == pytest.approx(t["factual_mean"], abs=1e-4)
