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


def test_info_describes_files(project: Path) -> None:
    out = sh([sys.executable, "-m", "cdae", "info", "models/model.pt"], project, stdout_only=True)
    assert "checkpoint" in out and "intensity [0..255] <- thickness" in out
    js = json.loads(sh([sys.executable, "-m", "cdae", "info", "data/dataset.h5", "--json"],
                       project, stdout_only=True))
    assert js["kind"] == "dataset" and js["images"] == js["train"] + js["test"]
    thickness = next(v for v in js["variables"] if v["name"] == "thickness")
    assert thickness["unit"] == "px" and 0.5 < thickness["range"][0] < thickness["range"][1]


def run_cli(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    return subprocess.run([sys.executable, "-m", "cdae", *args], cwd=project, env=env,
                          capture_output=True, text=True)


def test_out_of_support_warns_and_strict_refuses(project: Path) -> None:
    r = run_cli(project, "intervene", "--var", "thickness", "--value", "9.5", "--max-images", "2",
                "--steps", "2", "--out", "data/far.h5")
    assert r.returncode == 0, r.stderr
    assert "percentile of the train split" in r.stderr
    r = run_cli(project, "intervene", "--var", "thickness", "--value", "9.5", "--strict",
                "--out", "data/strict.h5")
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: thickness=9.5 lies at the 100.0th percentile")
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (project / "data/strict.h5").exists()


def test_mismatched_checkpoint_says_what_differs(project: Path, tmp_path: Path) -> None:
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["graph"]["variables"][1]["name"] = "brightness"
    raw["graph"]["edges"] = [["thickness", "brightness"]]
    raw["intervene"]["interventions"] = {}
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(raw))
    r = run_cli(project, "intervene", "--params", str(other), "--var", "thickness", "--value",
                "2", "--out", "data/mismatch.h5")
    assert r.returncode == 2
    assert "trained on another graph" in r.stderr and "Traceback" not in r.stderr
    assert not (project / "data/mismatch.h5").exists()


def test_unwritable_output_is_refused(project: Path) -> None:
    r = run_cli(project, "intervene", "--var", "thickness", "--value", "2", "--steps", "2",
                "--out", "params.yaml/sub/out.h5")
    assert r.returncode == 2
    assert "cannot create output folder" in r.stderr


def test_concurrent_intervene_runs_do_not_interfere(project: Path) -> None:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "cdae", "intervene", "--do", f"thickness={v}",
                               "--max-images", "3", "--steps", "2", "--out", f"data/c{v}.h5"],
                              cwd=project, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for v in (1.5, 3.5)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    for v in (1.5, 3.5):
        with h5py.File(project / f"data/c{v}.h5") as f:
            assert np.allclose(f["parents_cf"][:, 0], v)
            assert f["counterfactual"].shape[0] == 3
    assert not list((project / "data").glob(".*.tmp-*"))
