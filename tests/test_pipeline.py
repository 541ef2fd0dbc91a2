"""The whole DVC DAG on the tiny profile, in a temporary copy of the project.

Checks: every stage's outputs exist and are readable; a second `dvc repro` runs nothing; a train
param change re-runs train and what follows but not prepare-data; `cdae intervene` prints the
counterfactual parents; sweeps, traversal strips and the HTML report.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("dvc") is None, reason="dvc is not installed")


def sh(cmd: list[str], cwd: Path, stdout_only: bool = False) -> str:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout if stdout_only else proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary copy of the project (code, dvc.yaml, params.yaml on the tiny profile) under
    git and DVC, with nothing run yet."""
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


@pytest.fixture(scope="module")
def repro_log(workspace: Path) -> str:
    """The log of `dvc repro` of the whole DAG, run once per module."""
    return sh(["dvc", "repro"], workspace)


@pytest.fixture(scope="module")
def project(workspace: Path, repro_log: str) -> Path:
    """The copy with every stage's outputs, which the tests below read and add to."""
    return workspace


def test_dvc_repro_tiny(project: Path, repro_log: str) -> None:
    out = repro_log
    for stage in ("prepare-data", "train", "encode-latents", "intervene@thickness_2",
                  "intervene@intensity_120", "intervene@thickness_4", "render",
                  "train-predictors", "evaluate", "report"):
        assert f"Running stage '{stage}'" in out, stage
    # the base list's pendulum interventions run too, as empty files that say why
    assert "Running stage 'intervene@light_angle_60'" in out
    assert ("intervene light_angle_60: skipped, variable light_angle is not in this graph "
            "(profile tiny)") in out
    with h5py.File(project / "data/counterfactuals/light_angle_60.h5") as f:
        assert f["counterfactual"].shape == (0, 1, 28, 28) and "skipped" in f.attrs
    with h5py.File(project / "data/dataset.h5") as f:
        assert f["images"].dtype == np.uint8 and f["images"].shape[1:] == (1, 28, 28)
        assert f["labels"].shape[1] == 3
    with h5py.File(project / "data/latents.h5") as f:
        assert f["x_T"].shape[0] == f["z"].shape[0] > 0
    with h5py.File(project / "data/counterfactuals/thickness_2.h5") as f:
        pc = f["parents_cf"][()]
        assert np.allclose(pc[:, 0], 2.0)  # thickness set by do
        assert f["counterfactual"].shape == f["factual"].shape
    # a batch log gets evaluate's decodes as periodic lines, ending with every image decoded:
    # the null row plus (3 variables + random) x 2 protocols x seeds, images each
    ep = yaml.safe_load((project / "params.yaml").read_text())["profiles"]["tiny"]["evaluate"]
    decoded = ep["max_images"] * (2 + 8 * ep["seeds"])  # null, sample, 8 rows per draw
    assert f"evaluate decodes {decoded}/{decoded} (100%)" in out
    assert f"evaluate: abducted {ep['max_images']} test images ({ep['steps']} steps)" in out
    metrics = json.loads((project / "reports/metrics.json").read_text())
    for key in ("do_thickness", "do_intensity", "null", "do_thickness_do_nothing"):
        assert key in metrics
    assert "thickness_mae" in metrics["do_thickness"]
    assert metrics["setup"]["train_seed"] == yaml.safe_load(
        (project / "params.yaml").read_text())["train"]["seed"]
    check_scorecard(project, metrics)
    assert (project / "reports/figures/counterfactuals.png").stat().st_size > 1000
    page = (project / "reports/report.html").read_text()
    assert "thickness_mae" in page and "<code>light_angle_60</code>: variable light_angle" in page

    assert undeclared(project) == []
    # (the module's first test: tests below rewrite outputs, e.g. `cdae render` and `report`)
    again = sh(["dvc", "repro"], project)
    assert "Running stage" not in again

    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["train"]["lr"] = raw["train"]["lr"] * 0.5  # a train param the tiny profile keeps
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    third = sh(["dvc", "repro"], project)
    assert "Running stage 'prepare-data'" not in third
    assert "Running stage 'train'" in third


def undeclared(project: Path) -> list[str]:
    """Files under data/, models/ and reports/ that no stage declares: DVC git-ignores each
    output it knows of, so an undeclared one shows as untracked (and is not in DVC's cache)."""
    status = sh(["git", "status", "--porcelain", "--untracked-files=all"], project,
                stdout_only=True)
    paths = [line[3:] for line in status.splitlines() if line.startswith("?? ")]
    return [p for p in paths if p.startswith(("data/", "models/", "reports/"))
            and not p.endswith(".gitignore")]


def check_scorecard(project: Path, metrics: dict) -> None:
    """evaluate's scorecard on the tiny profile: every row under both value protocols with
    seeds, the reference rows, cycles, DCI, predictors, plots and evaluation.md."""
    ep = yaml.safe_load((project / "params.yaml").read_text())["profiles"]["tiny"]["evaluate"]
    # samples from noise with the factual latents: scored against the factual values, and far
    # further from the factual images than the null intervention's reconstruction
    sample = metrics["sample"]
    assert {"thickness_mae", "intensity_mae", "predicted_digit_kept"} <= set(sample)
    assert sample["l1_to_factual"] > 2 * metrics["null"]["composition_l1"]
    for key in ("do_thickness", "do_intensity", "do_digit", "random"):
        for name in (key, f"{key}_forced"):
            row = metrics[name]
            assert "predicted_digit_accuracy" in row and "predicted_intensity_mae" in row, name
            assert "thickness_mae_std" in row and "frechet_digit_features" in row, name
            assert f"{name}_do_nothing" in metrics, name
    # under a forced change of thickness the true mechanism lands near the targets (the
    # morphometrics' error), doing nothing misses them by the forced change
    truth = metrics["do_thickness_forced_true_mechanism"]["thickness_mae"]
    assert truth < 0.25 < metrics["do_thickness_forced_do_nothing"]["thickness_mae"]
    # the error on the set value, split by the value's train support given the parents, on
    # the images the variable was set on (every image of do(intensity)): the shares add up
    for name in ("do_intensity", "do_intensity_true_mechanism", "random"):
        row = metrics[name]
        assert 0 <= row["intensity_set_off_support"] <= 1, name
        assert {"intensity_set_mae_in_support", "intensity_set_mae_off_support"} & set(row), name
    inside = "intensity_set_mae_in_support"  # the floor below the ceiling on the same images
    assert (metrics["do_intensity_forced_true_mechanism"][inside]
            < 0.25 * metrics["do_intensity_forced_do_nothing"][inside])
    assert "thickness_set_off_support" not in metrics["do_intensity"]  # thickness was not set
    # the digit a do(intensity) keeps, split the same way
    sides = [k for k in metrics["do_intensity"]
             if k.startswith("predicted_digit_accuracy_intensity_set_") and "std" not in k]
    assert sides and all(0 <= metrics["do_intensity"][k] <= 1 for k in sides)
    # the propagated error splits into the decoder's and the mechanisms' (triangle inequality
    # per image, so also for the means); where intensity is set, the latent stands for the set
    # value, so the decoder's error is the whole error
    for name in ("do_thickness", "do_thickness_forced"):
        row = metrics[name]
        assert row["intensity_mae"] <= (row["intensity_render_mae"]
                                        + row["parent_intensity_mae_labels"] + 1e-6), name
        assert abs(row["intensity_bias"]) <= row["intensity_mae"] + 1e-9, name
    row = metrics["do_intensity"]
    assert row["intensity_render_mae"] == pytest.approx(row["intensity_mae"], rel=0.01, abs=0.05)
    assert "intensity_render_mae" not in metrics["do_intensity_do_nothing"]
    cycles = metrics["cycles"]
    assert {f"composition_l1_{m}" for m in (1, ep["composition_steps"])} <= set(cycles)
    for prefix in ("reversibility", "reversibility_continuous"):  # the digit is categorical
        assert {f"{prefix}_l1_{c}" for c in (1, ep["reversibility_cycles"])} <= set(cycles)
    assert cycles["images"] == ep["cycle_images"]
    assert 0 <= metrics["dci"]["disentanglement_per_block"] <= 1
    judge = metrics["predictors"]
    assert "digit_test_accuracy" in judge and "digit_kept_true_cf_do_digit" not in judge
    assert all(0 <= judge[f"digit_kept_true_cf_do_{v}"] <= 1 for v in ("thickness", "intensity"))
    setup = metrics["setup"]
    assert setup["images"] == ep["max_images"] and setup["ddim_steps"] == ep["steps"]
    assert len(setup["seeds"]) == ep["seeds"] and setup["prediction"] == "eps"
    md = (project / "reports/evaluation.md").read_text()
    # the floors of params.yaml (the tiny profile keeps the base ones), each read and counted
    floors = yaml.safe_load((project / "params.yaml").read_text())["evaluate"]["floors"]
    met = 0
    for key, floor in floors.items():
        row, metric = key.split(".", 1)
        value, bound = metrics[row].get(metric), float(floor[2:])
        if value is None:  # cycles.composition_l1_10: the tiny profile's chain is 3 steps long
            assert f"| `{key}` | {floor[:2]} {bound:g} | no such number | **no** |" in md
            continue
        ok = value <= bound if floor.startswith("<=") else value >= bound
        met += ok
        assert f"| `{key}` | {floor[:2]} {bound:g} | {value:.3g} | {'yes' if ok else '**no**'} |" in md
    assert metrics["floors"] == {"met": met, "of": len(floors)} and len(floors) == 9
    pngs = sorted((project / "reports/evaluation/png").glob("*.png"))
    assert "train_loss.png" in {p.name for p in pngs} and "do_thickness.png" in {p.name for p in pngs}
    for png in pngs:
        assert f"](evaluation/png/{png.name})" in md
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv = (project / "reports/evaluation/csv/do_thickness__thickness_measured.csv").read_text()
    assert csv.startswith("target,value\n") and len(csv.splitlines()) == 1 + ep["max_images"]
    # identity kept: the digit read on do(thickness) counterfactuals against the factual reading
    assert 0 <= metrics["do_thickness"]["predicted_digit_kept"] <= 1
    # ... and by every judge seed (predictors.judges: 3): the first seed is the row's own
    # judge, so its reading lies between the seeds' lowest and highest; doing nothing keeps
    # every digit for every seed
    row = metrics["do_thickness"]
    assert (row["predicted_digit_kept_judges_min"] <= row["predicted_digit_kept"]
            <= row["predicted_digit_kept_judges_max"])
    assert 0 <= row["predicted_digit_lost_all_judges"] <= 1 - row["predicted_digit_kept_judges_max"]
    nothing = metrics["do_thickness_do_nothing"]
    assert nothing["predicted_digit_kept_judges_min"] == 1.0
    assert nothing["predicted_digit_lost_all_judges"] == 0.0
    assert {"digit_test_accuracy_judge_1", "digit_test_accuracy_judge_2"} <= set(judge)
    assert "predicted_digit_kept" not in metrics["do_digit"]  # every digit was intervened on
    for what in ("guidance", "steps"):  # the curves: PNG, one CSV per series, groups
        assert f"sweep_{what}.png" in {p.name for p in pngs}
        lines = (project / f"reports/evaluation/sweep_{what}/null__composition_l1.csv"
                 ).read_text().splitlines()
        assert lines[0] == f"{what},value"
        assert [float(x.split(",")[0]) for x in lines[1:]] == sorted(ep[f"sweep_{what}"])
        assert metrics[f"sweep_{what}_{ep[f'sweep_{what}'][0]:g}"]["images"] == ep["sweep_images"]
    assert "## Against the steps (inversion and decoding)" in md
    # the point both sweeps share (evaluate.steps, evaluate.guidance) is scored once, used twice
    guidance = metrics["setup"]["guidance"]
    assert guidance in ep["sweep_guidance"]
    assert metrics[f"sweep_steps_{ep['steps']}"] == metrics[f"sweep_guidance_{guidance:g}"]


def test_combine_two_trainings_scorecards(project: Path, tmp_path: Path) -> None:
    """`cdae combine` on the tiny pipeline's metrics.json and a second training's (its copy
    with another seed and thickness error): every group the stage writes combines."""
    card = json.loads((project / "reports/metrics.json").read_text())
    other = json.loads(json.dumps(card))
    other["setup"]["train_seed"] = 7
    other["do_thickness"]["thickness_mae"] += 0.5
    (tmp_path / "b.json").write_text(json.dumps(other))
    out = tmp_path / "c.json"
    sh([sys.executable, "-m", "cdae", "combine", "reports/metrics.json", str(tmp_path / "b.json"),
        "--out", str(out)], project)
    data = json.loads(out.read_text())
    assert data["do_thickness"]["thickness_mae"] == pytest.approx(
        card["do_thickness"]["thickness_mae"] + 0.25)
    assert data["do_thickness"]["thickness_mae_std"] == pytest.approx(0.5 / 2 ** 0.5)
    assert data["cycles"]["composition_l1_1"] == pytest.approx(card["cycles"]["composition_l1_1"])
    assert data["setup"]["train_seeds"] == [card["setup"]["train_seed"], 7]
    assert data["floors"]["of"] == len(yaml.safe_load(
        (project / "params.yaml").read_text())["evaluate"]["floors"])
    assert "## At a glance" in out.with_suffix(".md").read_text()

    # outside the project (no params.yaml): the floors and graph the scorecards recorded
    (tmp_path / "a.json").write_text(json.dumps(card))
    (tmp_path / "elsewhere").mkdir()
    sh([sys.executable, "-m", "cdae", "combine", str(tmp_path / "a.json"),
        str(tmp_path / "b.json"), "--out", str(tmp_path / "d.json")], tmp_path / "elsewhere")
    outside = json.loads((tmp_path / "d.json").read_text())
    assert outside["floors"] == data["floors"]
    assert outside["do_thickness"] == data["do_thickness"]
    assert "## At a glance" in (tmp_path / "d.md").read_text()


def test_evaluate_options_override_params_and_out_keeps_the_pipelines_scorecard(
        project: Path, tmp_path: Path) -> None:
    """`cdae evaluate --split train --max-images 3 --seeds 1 --cycle-images 0 --no-curves
    --out DIR`: those settings, the scorecard in DIR, reports/ untouched."""
    before = {p: p.read_bytes() for p in (project / "reports").rglob("*") if p.is_file()}
    out = tmp_path / "quick"
    sh([sys.executable, "-m", "cdae", "evaluate", "--split", "train", "--max-images", "3",
        "--seeds", "1", "--steps", "2", "--guidance", "0", "--cycle-images", "0",
        "--no-curves", "--out", str(out)], project)
    m = json.loads((out / "metrics.json").read_text())
    s = m["setup"]
    assert (s["split"], s["images"], s["seeds"], s["ddim_steps"], s["guidance"]) == (
        "train", 3, [0], 2, 0)
    assert "cycles" not in m and not any(k.startswith("sweep_") for k in m)
    assert "thickness_mae_std" not in m["do_thickness"]  # one draw: no spread
    assert (out / "evaluation.md").is_file() and list((out / "evaluation/png").glob("*.png"))
    after = {p: p.read_bytes() for p in (project / "reports").rglob("*") if p.is_file()}
    assert after == before


@pytest.mark.parametrize("args, fragment", [
    (["--max-images", "-1"], "evaluate.max_images"),
    (["--seeds", "0"], "evaluate.seeds"),
    (["--split", "validation"], "unknown split 'validation'"),
])
def test_evaluate_bad_options_are_one_line_errors(project: Path, tmp_path: Path, args,
                                                  fragment) -> None:
    proc = subprocess.run([sys.executable, "-m", "cdae", "evaluate", *args, "--out",
                           str(tmp_path / "x")], cwd=project, capture_output=True, text=True,
                          env=dict(os.environ, DVC_NO_ANALYTICS="1"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert not (tmp_path / "x").exists()


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
    # roles come from the graph, not from float differences of the read-back values
    assert [result["parents"][n]["role"] for n in ("thickness", "intensity", "digit")] == [
        "unchanged", "set by do", "unchanged"]


def test_info_describes_files(project: Path) -> None:
    out = sh([sys.executable, "-m", "cdae", "info", "models/model.pt"], project, stdout_only=True)
    assert "checkpoint" in out and "intensity [0..255, range 0..255] <- thickness" in out
    assert "condition_space label" in out  # what the model was trained as, from its settings
    ck = json.loads(sh([sys.executable, "-m", "cdae", "info", "models/model.pt", "--json"],
                       project, stdout_only=True))
    digit = next(v for v in ck["variables"] if v["name"] == "digit")
    from cdae.causal import class_separation
    from cdae.counterfactual import CounterfactualEngine

    model = CounterfactualEngine.load(project / "models/model.pt").model  # the EMA weights
    low, mean = (d / model.params.prior_sigma
                 for d in class_separation(model.causal.class_table("digit")))
    assert digit["class_separation"] == f"min {low:.1f}, mean {mean:.1f} prior sigmas"
    js = json.loads(sh([sys.executable, "-m", "cdae", "info", "data/dataset.h5", "--json"],
                       project, stdout_only=True))
    assert js["kind"] == "dataset" and js["images"] == js["train"] + js["test"]
    thickness = next(v for v in js["variables"] if v["name"] == "thickness")
    assert thickness["unit"] == "px" and 0.5 < thickness["observed"][0] < thickness["observed"][1]
    assert thickness["range"] == [0, 14]  # declared in params.yaml, stored with the dataset


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


def test_a_value_off_the_support_given_the_parents_is_named(project: Path) -> None:
    """A set value the train data never shows with the images' parents (intensity 0, far below
    every train stroke, yet inside its declared range 0..255) is flagged per image share, for one value and for a sweep; a root
    (thickness) is judged by its marginal alone."""
    r = run_cli(project, "intervene", "--var", "intensity", "--value", "0", "--max-images",
                "3", "--steps", "2", "--out", "data/dark.h5", "--json")
    assert r.returncode == 0, r.stderr
    assert ("intensity=0 is off the train support given thickness for 100% of the 3 images"
            in r.stderr)
    assert json.loads(r.stdout)["off_support"] == {"intensity": 1.0}
    r = run_cli(project, "intervene", "--var", "intensity", "--values", "0,10",
                "--max-images", "2", "--steps", "2", "--out", "data/dark_sweep.h5")
    assert r.returncode == 0, r.stderr
    assert "intensity=0: 100%, intensity=10: 100%" in r.stdout
    r = run_cli(project, "intervene", "--var", "thickness", "--value", "2.5", "--max-images",
                "2", "--steps", "2", "--out", "data/mid.h5", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["off_support"] == {} and "off the train support" not in r.stderr


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


def test_empty_split_is_refused(project: Path, tmp_path: Path) -> None:
    only_train = tmp_path / "only_train.h5"
    shutil.copy(project / "data/dataset.h5", only_train)
    with h5py.File(only_train, "a") as f:
        f["split"][...] = 0
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["paths"]["dataset"] = str(only_train)
    other = tmp_path / "only_train.yaml"
    other.write_text(yaml.safe_dump(raw))
    r = run_cli(project, "intervene", "--params", str(other), "--var", "thickness", "--value",
                "2", "--steps", "2", "--out", "data/empty.h5")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == "error: the test split is empty (check data.test_fraction)"
    assert not (project / "data/empty.h5").exists()


SWEEP = (1.5, 2.5, 3.5)  # thickness values (px) of the sweep tests


@pytest.fixture(scope="module")
def sweep(project: Path) -> dict:
    """One sweep of 3 thickness values over 4 images, in the counterfactuals folder."""
    js = sh([sys.executable, "-m", "cdae", "intervene", "--var", "thickness", "--values",
             ",".join(map(str, SWEEP)), "--max-images", "4", "--steps", "2", "--json"], project,
            stdout_only=True)
    return json.loads(js)


@pytest.fixture(scope="module")
def linear_sweep(project: Path) -> str:
    """A START:STOP:COUNT sweep written outside the counterfactuals folder: its summary."""
    return sh([sys.executable, "-m", "cdae", "intervene", "--var", "thickness", "--values",
               "1:3:3", "--max-images", "2", "--steps", "2", "--out", "data/sweep_lin.h5"],
              project, stdout_only=True)


def test_sweep_one_file_with_every_value(project: Path, sweep: dict, linear_sweep: str) -> None:
    path = project / "data/counterfactuals/sweep_thickness.h5"
    assert sweep["path"] == "data/counterfactuals/sweep_thickness.h5" and path.is_file()
    with h5py.File(path) as f:
        assert f["counterfactual"].shape == (3, 4, 1, 28, 28)
        assert f["factual"].shape == (4, 1, 28, 28)
        assert f["parents_factual"].shape == (4, 3)
        assert np.allclose(f["values"][()], SWEEP)
        pc = f["parents_cf"][()]
    assert pc.shape == (3, 4, 3)
    assert np.allclose(pc[:, :, 0], np.array(SWEEP)[:, None])  # thickness set by do
    assert [s["value"] for s in sweep["sweep"]] == pytest.approx(list(SWEEP))
    assert [s["parents"]["thickness"] for s in sweep["sweep"]] == pytest.approx(list(SWEEP))
    assert sweep["variables"]["intensity"]["role"] == "propagated by the learned mechanism"
    out = linear_sweep
    assert "do(thickness=1)" in out and "do(thickness=2)" in out and "do(thickness=3)" in out
    assert "intensity [0..255]" in out and "propagated by the learned mechanism" in out


def test_sweep_abducts_once(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cdae import config
    from cdae.counterfactual import CounterfactualEngine
    from stages import intervene as stage

    calls = {"abduct": 0, "predict": 0}
    for method in calls:
        original = getattr(CounterfactualEngine, method)

        def spy(self, *args, _original=original, _method=method, **kwargs):
            calls[_method] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(CounterfactualEngine, method, spy)
    monkeypatch.chdir(project)
    r = stage.run_sweep(config.load("params.yaml"), "thickness", [1.5, 2.0, 3.0], max_images=3,
                        steps=2, out="data/sweep_spy.h5")
    assert r["shape"] == [3, 3, 1, 28, 28]
    assert calls == {"abduct": 1, "predict": 3}  # one batch: inverted once, decoded per value


def test_malformed_sweep_is_refused(project: Path) -> None:
    r = run_cli(project, "intervene", "--var", "thickness", "--values", "1.0:4.0",
                "--out", "data/bad_sweep.h5")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --values '1.0:4.0' is malformed")
    assert not (project / "data/bad_sweep.h5").exists()


def test_render_draws_traversal_strips(project: Path, sweep: dict, linear_sweep: str) -> None:
    from PIL import Image

    result = json.loads(sh([sys.executable, "-m", "cdae", "render", "--json"], project,
                           stdout_only=True))
    strip = "reports/figures/traversal_thickness.png"
    assert strip in result["figures"] and "reports/figures/counterfactuals.png" in result["figures"]
    with Image.open(project / strip) as im:
        width, height = im.size
    assert [width, height] == result["sizes"][strip]
    rows = 3  # render.rows of the tiny profile (the sweep holds 4 images)
    assert width % 4 == 0 and width // 4 >= 28 * 3  # factual + 3 values, images upscaled x3
    assert height >= rows * (28 * 3 + 3 * 11)  # each image with its 3 parent lines
    # the sweep is not a column of the grid; every intervention file is
    folder = project / "data/counterfactuals"
    singles = [p for p in folder.glob("*.h5") if not p.name.startswith("sweep_")]
    skipped = []
    for path in singles:
        with h5py.File(path) as f:
            if f["index"].shape[0] == 0:
                skipped.append(path.name)
    assert sorted(Path(k).name for k in result["skipped"]) == sorted(skipped)
    assert len(skipped) == 3  # light_angle_60, light_angle_120, pendulum_angle_30
    assert result["columns"] == 1 + len(singles) - len(skipped)
    again = json.loads(sh([sys.executable, "-m", "cdae", "render", "--json", "--sweep",
                           "data/sweep_lin.h5"], project, stdout_only=True))
    assert again["sweeps"] == ["data/sweep_lin.h5"]


def test_dvc_declares_the_traversal_strips(project: Path, sweep: dict) -> None:
    """A sweep file in the counterfactuals folder is a change of render's input: `dvc repro`
    re-renders, and the traversal strip it adds is one of render's declared outputs."""
    log = sh(["dvc", "repro", "render"], project)
    assert "Running stage 'render'" in log
    assert (project / "reports/figures/traversal_thickness.png").is_file()
    assert [p for p in undeclared(project) if p.startswith("reports/")] == []


def test_grid_titles_name_a_file_once(project: Path, tmp_path: Path) -> None:
    """A named intervention's column shows its name over do(...); a file with intervene's
    default name (`do_thickness=2`) shows do(...) alone, not the same words twice."""
    from cdae import config as cfg
    from stages.render import _grid_columns

    named = project / "data/counterfactuals/thickness_2.h5"
    plain = tmp_path / "do_thickness=2.h5"
    shutil.copy(named, plain)
    columns, _ = _grid_columns([named, plain], 2, cfg.load(project / "params.yaml").graph)
    assert [c.title for c in columns] == [["factual"], ["thickness_2", "do(thickness=2)"],
                                          ["do(thickness=2)"]]


def test_rows_answer_for_those_images_as_the_whole_run_does(project: Path,
                                                            tmp_path: Path) -> None:
    """`--rows` picks dataset rows in the given order, prints each image's parents, and its
    counterfactuals are those the pipeline's run made of the same images (same cached x_t0)."""
    with h5py.File(project / "data/counterfactuals/thickness_2.h5") as f:
        index, whole = f["index"][()], f["counterfactual"][()]
        whole_pc = f["parents_cf"][()]
    rows = [int(index[-1]), int(index[0])]
    out = tmp_path / "rows.h5"
    r = run_cli(project, "intervene", "--name", "thickness_2", "--rows",
                f"{rows[0]},{rows[1]},{rows[0]}", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert f"row {rows[0]}: thickness" in r.stdout and f"row {rows[1]}: thickness" in r.stdout
    with h5py.File(out) as f:
        assert f["index"][()].tolist() == rows  # in the given order, a repeat dropped
        got, got_pc = f["counterfactual"][()], f["parents_cf"][()]
    for k, pos in enumerate([len(index) - 1, 0]):
        # another batch composition: float rounding may move a pixel by one level
        assert np.abs(got[k].astype(int) - whole[pos]).max() <= 1
        assert got_pc[k] == pytest.approx(whole_pc[pos], abs=1e-3)


@pytest.mark.parametrize("rows, message", [
    ("3,x", "--rows: 'x' is not a row number"),
    ("3,,4", "--rows '3,,4' is malformed"),
    ("-1", "--rows: row -1 is negative"),
    ("99999", "--rows: data/dataset.h5 holds no row 99999 (rows 0..239)"),
])
def test_bad_rows_are_refused(project: Path, rows: str, message: str) -> None:
    r = run_cli(project, "intervene", "--var", "thickness", "--value", "2", "--rows", rows,
                "--out", "data/bad_rows.h5")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(
        f"error: {message}"), r.stderr
    assert not (project / "data/bad_rows.h5").exists()


def test_a_missing_row_is_said_before_the_model_loads(project: Path, tmp_path: Path) -> None:
    """With no model at all, `--rows 99999` still answers with the row (checked first)."""
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["paths"]["model_dir"] = str(tmp_path / "no_models")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    r = run_cli(project, "intervene", "--var", "thickness", "--value", "2", "--rows", "99999",
                "--params", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "x.h5"))
    assert r.returncode == 2 and "holds no row 99999" in r.stderr, r.stderr


def test_grid_of_files_with_no_row_in_common(project: Path, tmp_path: Path) -> None:
    """Files that share no image (a `--rows` run beside the pipeline's) still make one grid:
    rows from any file, a file's missing images grey, the factual column naming each row."""
    from cdae import config as cfg
    from stages.render import MISSING, _grid_columns

    whole = project / "data/counterfactuals/thickness_2.h5"
    with h5py.File(whole) as f:
        index = f["index"][()].tolist()
    first, row = index[0], next(r for r in range(240) if r not in index)  # a train image
    other = tmp_path / "other.h5"
    r = run_cli(project, "intervene", "--var", "thickness", "--value", "3", "--rows", str(row),
                "--out", str(other))
    assert r.returncode == 0, r.stderr
    columns, _ = _grid_columns([whole, other], 50, cfg.load(project / "params.yaml").graph)
    shown = columns[0].labels
    assert f"row {row}" in shown and f"row {first}" in shown
    at = shown.index(f"row {row}")
    assert (columns[1].images[at] == MISSING).all() and np.isnan(columns[1].parents[at]).all()
    assert not (columns[2].images[at] == MISSING).all()
    assert (columns[2].images[shown.index(f"row {first}")] == MISSING).all()


def test_image_files_answer_as_their_dataset_rows_do(project: Path, tmp_path: Path) -> None:
    """`--image` abducts a PNG as intervene abducts the same dataset image with its parents
    read from the image; the grid names it by its file."""
    from PIL import Image

    from cdae import config as cfg
    from stages.render import _grid_columns

    with h5py.File(project / "data/dataset.h5") as f:
        row = int(np.flatnonzero(f["split"][()] == 1)[0])
        Image.fromarray(f["images"][row, 0]).save(tmp_path / "digit.png")
    common = ["--name", "thickness_2", "--parents-from", "image"]
    a = run_cli(project, "intervene", *common, "--image", str(tmp_path / "digit.png"),
                "--out", str(tmp_path / "file.h5"))
    b = run_cli(project, "intervene", *common, "--rows", str(row), "--out",
                str(tmp_path / "row.h5"))
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert f"{tmp_path / 'digit.png'}: thickness" in a.stdout
    with h5py.File(tmp_path / "file.h5") as fa, h5py.File(tmp_path / "row.h5") as fb:
        assert fa["index"][()].tolist() == [-1]
        for key in ("factual", "counterfactual", "parents_factual", "parents_cf"):
            assert np.array_equal(fa[key][()], fb[key][()]), key
    columns, _ = _grid_columns([tmp_path / "file.h5", tmp_path / "row.h5"], 8,
                               cfg.load(project / "params.yaml").graph)
    assert columns[0].labels == [f"row {row}", "digit.png"]
    r = run_cli(project, "intervene", "--name", "thickness_2", "--image",
                str(tmp_path / "digit.png"), "--parents-from", "labels")
    assert r.returncode == 2 and "--image files carry no labels" in r.stderr


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.sources.append(dict(attrs)["src"] or "")
        self.scripts += tag == "script"


def test_report_is_offline_with_images_and_metrics(project: Path, sweep: dict) -> None:
    from PIL import Image

    sh([sys.executable, "-m", "cdae", "render"], project)
    r = json.loads(sh([sys.executable, "-m", "cdae", "report", "--json"], project,
                      stdout_only=True))
    assert r["missing"] == []
    page = (project / "reports/report.html").read_text()
    parser = _Images()
    parser.feed(page)
    assert parser.scripts == 0 and "http://" not in page and "https://" not in page
    assert len(parser.sources) == r["images"] >= 3  # loss curve, grid, traversal strip
    for src in parser.sources:
        if src.startswith("data:image/png;base64,"):
            try:
                data = base64.b64decode(src.split(",", 1)[1], validate=True)
            except binascii.Error as err:
                pytest.fail(f"bad base64 image: {err}")
        else:
            data = (project / "reports" / src).read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            assert im.width > 50 and im.height > 50
    metrics = json.loads((project / "reports/metrics.json").read_text())
    for group in ("do_thickness", "null"):
        for name in metrics[group]:
            assert f"<code>{name}</code>" in page, name
    assert "thickness → intensity" in page and "unit px" in page
    met, of = metrics["floors"]["met"], metrics["floors"]["of"]
    assert f"<h3>Floors</h3><p>{met} of {of} targets of <code>evaluate.floors</code>" in page
    assert "<td><code>do_thickness.thickness_mae</code></td><td>&lt;= 0.2</td>" in page


@pytest.mark.skipif(not any(shutil.which(b) for b in ("chromium", "chromium-browser",
                                                     "google-chrome")),
                    reason="no headless Chromium")
def test_report_renders_in_chromium(project: Path) -> None:
    if not (project / "reports/report.html").is_file():
        sh([sys.executable, "-m", "cdae", "report"], project)
    out = sh(["bash", str(ROOT / "scripts/check_report.sh"), "reports/report.html"], project)
    assert "broken=0" in out and "check_report: OK" in out


SHARD0, SHARD1 = "s.shard-0-of-2.h5", "s.shard-1-of-2.h5"


def run_whole_and_sharded(project: Path, tmp_path: Path, section: str,
                          settings: dict[str, int], command: list[str]) -> None:
    """Run ``command`` unsharded and as shards 0/2 and 1/2 (with the tiny profile's ``section``
    updated by ``settings``), merge the shards (in reverse order), and check that the merged
    file equals the unsharded one array by array and attribute by attribute."""
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["profiles"]["tiny"][section].update(settings)
    small = tmp_path / "small_batches.yaml"
    small.write_text(yaml.safe_dump(raw))
    # the shards of an array job share one --out: each writes OUT.shard-I-of-N.h5 beside it
    for args in (["--out", str(tmp_path / "whole.h5")],
                 ["--shard", "0/2", "--out", str(tmp_path / "s.h5")],
                 ["--shard", "1/2", "--out", str(tmp_path / "s.h5")]):
        r = run_cli(project, command[0], "--params", str(small), *command[1:], *args)
        assert r.returncode == 0, r.stderr
    assert not (tmp_path / "s.h5").exists()
    r = run_cli(project, "merge", str(tmp_path / "merged.h5"), str(tmp_path / SHARD1),
                str(tmp_path / SHARD0))
    assert r.returncode == 0, r.stderr
    with h5py.File(tmp_path / "whole.h5") as a, h5py.File(tmp_path / "merged.h5") as b:
        assert sorted(a) == sorted(b)
        for name in a:
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)
        assert dict(a.attrs) == dict(b.attrs)


def test_sharded_encode_merges_to_the_unsharded_file(project: Path, tmp_path: Path) -> None:
    # 20 images in batches of 8, 8, 4: shard 0 takes one batch, shard 1 two
    run_whole_and_sharded(project, tmp_path, "encode", {"batch_size": 8}, ["encode-latents"])
    with h5py.File(tmp_path / SHARD0) as s0:
        assert s0["u"].shape[0] == 8
    r = run_cli(project, "merge", str(tmp_path / "m2.h5"), str(tmp_path / SHARD0))
    assert r.returncode == 2 and "not one complete set of 2" in r.stderr


@pytest.mark.parametrize("what", [["--var", "thickness", "--value", "2.5"],
                                  ["--var", "thickness", "--values", "1:3:3"]])
def test_sharded_intervene_merges_to_the_unsharded_file(project: Path, tmp_path: Path,
                                                         what: list[str]) -> None:
    run_whole_and_sharded(project, tmp_path, "intervene", {"batch_size": 2, "max_images": 6},
                          ["intervene", "--steps", "2", *what])


def test_python_api_encode_abduct_decode(project: Path) -> None:
    from cdae.counterfactual import CounterfactualEngine, to_uint8, to_unit
    from cdae.dataset import read_dataset

    engine = CounterfactualEngine.load(project / "models/model.pt")
    ds = read_dataset(project / "data/dataset.h5")
    rows = ds.indices("test")[:4]
    images, labels = ds.images[rows], ds.labels[rows]
    enc = engine.encode(images, labels)
    k, d = len(engine.graph.names), engine.model.d
    assert enc.z.shape == (4, k, d) and enc.u.shape == (4, k, d)
    np.testing.assert_allclose(enc.parents, labels, rtol=1e-5)  # labels win where given
    fact = engine.abduct(to_unit(images), torch.as_tensor(labels, dtype=torch.float32), steps=3)
    torch.testing.assert_close(fact.z, enc.z)
    # decode(x_T, z) is prediction with the factual latents: the null counterfactual
    np.testing.assert_array_equal(engine.decode(fact.x_T, fact.z, steps=3),
                                  to_uint8(engine.predict(fact, fact.z, steps=3, guidance=0.0)))
    result = engine.counterfactual(images, {"thickness": 2.0}, labels=labels, steps=3)
    assert result.images.shape == images.shape
    np.testing.assert_allclose(result.parents_cf[:, 0], 2.0)


def test_python_api_default_call_answers_what_intervene_wrote(project: Path) -> None:
    """engine.counterfactual(images, do) with every setting left out uses the model's intervene
    params (partial abduction, factual guidance, the profile's steps and t0): the counterfactuals
    `cdae intervene` wrote for the same rows, up to a grey level where the cached x_t0 of
    encode-latents was inverted in other batches."""
    from cdae.config import Abduction, GuidanceMode
    from cdae.counterfactual import CounterfactualEngine
    from cdae.dataset import read_dataset

    engine = CounterfactualEngine.load(project / "models/model.pt")
    ds = read_dataset(project / "data/dataset.h5")
    with h5py.File(project / "data/counterfactuals/thickness_2.h5") as f:
        rows, written = f["index"][()], f["counterfactual"][()]
    result = engine.counterfactual(ds.images[rows], {"thickness": 2.0}, labels=ds.labels[rows])
    tiny = yaml.safe_load((project / "params.yaml").read_text())["profiles"]["tiny"]["intervene"]
    assert result.settings["abduction"] == Abduction.PARTIAL.value
    assert result.settings["guidance_mode"] == GuidanceMode.FACTUAL.value
    assert (result.settings["steps"], result.settings["t0"]) == (tiny["steps"], tiny["t0"])
    diff = np.abs(result.images.astype(int) - written.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01


def test_factual_guidance_leaves_a_null_intervention_exact(project: Path) -> None:
    """Guidance away from the factual condition amplifies only what an intervention changes:
    with z_cf = z it decodes exactly as unguided; classifier-free guidance does not."""
    from cdae.config import Abduction, GuidanceMode
    from cdae.counterfactual import CounterfactualEngine, to_unit
    from cdae.dataset import read_dataset
    from cdae.errors import ConfigError

    engine = CounterfactualEngine.load(project / "models/model.pt")
    ds = read_dataset(project / "data/dataset.h5")
    rows = ds.indices("test")[:3]
    y = torch.as_tensor(ds.labels[rows], dtype=torch.float32)
    fact = engine.abduct(to_unit(ds.images[rows]), y, steps=4, abduction=Abduction.PARTIAL, t0=70)

    def decode(z, s, mode):
        return engine.predict(fact, z, steps=4, guidance=s, abduction=Abduction.PARTIAL, t0=70,
                              guidance_mode=mode)

    plain = decode(fact.z, 0.0, GuidanceMode.FACTUAL)
    torch.testing.assert_close(decode(fact.z, 2.0, GuidanceMode.FACTUAL), plain)
    assert (decode(fact.z, 2.0, GuidanceMode.UNCONDITIONAL) - plain).abs().max() > 1e-3
    z_cf = engine.intervene(fact, {"thickness": 4.0})
    changed = decode(z_cf, 2.0, GuidanceMode.FACTUAL) - decode(z_cf, 0.0, GuidanceMode.FACTUAL)
    assert changed.abs().max() > 1e-3  # a real intervention is amplified
    # a model trained without the null condition (train.p_uncond 0) has no unconditional mode
    assert engine.null_trained  # the tiny profile trains it
    engine.null_trained = False
    with pytest.raises(ConfigError, match="train.p_uncond 0"):
        decode(z_cf, 2.0, GuidanceMode.UNCONDITIONAL)
    assert decode(z_cf, 2.0, GuidanceMode.FACTUAL).shape == z_cf.shape[:1] + (1, 28, 28)


def test_cli_solver_and_spacing_reach_the_counterfactuals(project: Path) -> None:
    """--solver/--spacing override params: the paper's DDIM on a uniform grid decodes otherwise
    than the default Heun on a quadratic grid, says so in the log and the file, and does not
    reuse encode-latents' x_t0 of the other sampler."""
    args = [sys.executable, "-m", "cdae", "intervene", "--var", "thickness", "--value", "3.0",
            "--max-images", "3", "--steps", "3"]  # encode-latents' steps: its cache matches
    out = sh([*args, "--out", "data/cf_heun.h5"], project)
    assert "3 steps of heun on a quadratic grid" in out and "cached x_t0" in out
    assert "warning: 3 steps of heun: below 15" in out and "--solver ddim" in out
    out = sh([*args, "--solver", "ddim", "--spacing", "uniform", "--out", "data/cf_ddim.h5"],
             project)
    assert "3 steps of ddim on a uniform grid" in out and "cached" not in out
    assert "steps of heun: below" not in out
    with h5py.File(project / "data/cf_ddim.h5") as a, h5py.File(project / "data/cf_heun.h5") as b:
        assert (a.attrs["solver"], b.attrs["solver"]) == ("ddim", "heun")
        assert (a.attrs["spacing"], b.attrs["spacing"]) == ("uniform", "quadratic")
        np.testing.assert_array_equal(a["factual"][()], b["factual"][()])
        assert not np.array_equal(a["counterfactual"][()], b["counterfactual"][()])


def test_gpu_run_script_without_dvc(tmp_path: Path) -> None:
    """scripts/gpu_run.sh (the lent-GPU path, no DVC) runs every stage in order on the tiny
    profile here on the CPU, writes its results into OUT_DIR, and the EMA weights that come back
    in parts load as a checkpoint; CURVES=0 leaves the curves out."""
    from cdae.checkpoint import load_checkpoint

    d = tmp_path / "proj"
    for name in ("cdae", "stages", "scripts"):
        shutil.copytree(ROOT / name, d / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "params.yaml", d / "params.yaml")
    sh([sys.executable, "-m", "cdae", "prepare-data", "--profile", "tiny"], d)
    out = tmp_path / "out"
    env = dict(os.environ, SMOKE="0", CURVES="0", DEVICE="cpu", PYTHON=sys.executable,
               DVC_NO_ANALYTICS="1")
    proc = subprocess.run(["bash", "scripts/gpu_run.sh", str(out), "tiny"], cwd=d, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = proc.stdout + proc.stderr
    for stage in ("train", "predictors", "evaluate", "encode", "intervene-thickness_2",
                  "render", "report"):
        assert f"timing: {stage} " in log, stage
    for name in ("train.json", "train_log.csv", "metrics.json", "evaluation.md",
                 "results.tar.gz"):
        assert (out / name).is_file(), name
    parts = sorted(out.glob("model.pt.part-*"))
    assert parts
    (tmp_path / "model.pt").write_bytes(b"".join(p.read_bytes() for p in parts))
    ck = load_checkpoint(tmp_path / "model.pt")
    assert "ema" in ck and "optimizer" not in ck and ck["step"] == ck["total_steps"]
    assert "sweep" not in (out / "evaluation.md").read_text()

    # a second job continues from the returned weights and keeps the predictors (PREDICTORS=0);
    # UNTIL=evaluate stops after the scorecard
    shutil.copy(tmp_path / "model.pt", d / "models/model.pt")
    (d / "models/checkpoint.pt").unlink(missing_ok=True)
    proc = subprocess.run(["bash", "scripts/gpu_run.sh", str(tmp_path / "out2"), "tiny"], cwd=d,
                          env=dict(env, PREDICTORS="0", UNTIL="evaluate", COMPILE="1"),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = proc.stdout + proc.stderr
    assert f"at step {ck['step']} (EMA weights alone" in log
    assert "kept models/predictors.pt" in log and "timing: predictors" not in log
    assert (tmp_path / "out2/metrics.json").is_file()
    assert "done (UNTIL=evaluate)" in log and "timing: encode" not in log


def test_categorical_accuracy_is_split_by_the_set_value_support() -> None:
    """A digit kept on the images in support and lost on those off it reads 1 and 0."""
    from types import SimpleNamespace

    from stages.evaluate import _categorical_by_support

    ctx = SimpleNamespace(names=["thickness", "intensity", "digit"],
                          categorical=[False, False, True])
    target = {"digit": np.array([3.0, 5.0, 7.0, 1.0])}
    predicted = {"digit": np.array([3, 5, 2, 4]), "intensity": np.zeros(4)}
    on = np.array([True, True, False, False])
    out = _categorical_by_support(ctx, "intensity", target, predicted, on, ~on)
    assert out == {"predicted_digit_accuracy_intensity_set_in_support": 1.0,
                   "predicted_digit_accuracy_intensity_set_off_support": 0.0}
    none_off = _categorical_by_support(ctx, "intensity", target, predicted, on, np.zeros(4, bool))
    assert set(none_off) == {"predicted_digit_accuracy_intensity_set_in_support"}
