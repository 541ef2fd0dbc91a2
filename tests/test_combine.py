"""`cdae combine`: several trainings' scorecards as one (mean, spread between trainings, floors)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cdae.cli import app
from cdae.metrics import combine_scorecards, setup_difference

ROOT = Path(__file__).resolve().parents[1]
SETUP = {"images": 100, "ddim_steps": 20, "guidance": 0.1, "model_step": 3400, "seed": 0,
         "dataset": "data/dataset.h5", "notes": [], "rows": "100 images x 3 seeds"}


def card(train_seed: int, t_mae: float, kept: float, rev: float, **setup) -> dict:
    """A scorecard as `cdae evaluate` writes it (the few groups the floors read)."""
    return {"setup": {**SETUP, "train_seed": train_seed, **setup},
            "cost": {"seconds": 100.0 + train_seed},
            "floors": {"met": 1, "of": 2},
            "do_thickness": {"thickness_mae": t_mae, "thickness_mae_std": 0.5,
                             "predicted_digit_kept": kept, "images": 100},
            "cycles": {"composition_l1_1": 0.02, "reversibility_l1_1": rev}}


def test_combine_scorecards_means_and_spread_between_trainings() -> None:
    runs = [card(0, 0.10, 0.99, 2.0), card(1, 0.14, 0.97, 4.0), card(2, 0.18, 0.98, 9.0)]
    runs[2]["do_thickness"]["extra"] = 1.0  # in one scorecard only
    runs[1]["cycles"]["reversibility_l1_1"] = float("nan")  # one training could not read it
    c = combine_scorecards(runs)
    row = c.results["do_thickness"]
    assert row["thickness_mae"] == pytest.approx(0.14)
    assert row["thickness_mae_std"] == pytest.approx(0.04)  # sample std of .10 .14 .18
    assert row["images"] == 100 and row["images_std"] == 0
    assert "thickness_mae_std_std" not in row  # the draws' spread is not a score
    assert c.values["do_thickness"]["predicted_digit_kept"] == [0.99, 0.97, 0.98]
    assert c.left_out == ["do_thickness.extra"]
    assert c.results["cycles"]["reversibility_l1_1"] == pytest.approx(5.5)  # the NaN left out
    assert "setup" not in c.results and "cost" not in c.results and "floors" not in c.results
    with pytest.raises(ValueError):
        combine_scorecards(runs[:1])


def test_setup_difference_is_the_protocol_not_the_seeds() -> None:
    a, b = card(0, 0.1, 1, 1)["setup"], card(1, 0.1, 1, 1, seed=5, dataset="x.h5")["setup"]
    assert setup_difference([a, b]) is None
    assert setup_difference([a, b, {**b, "guidance": 0.2}]) == ("guidance", 2, 0.1, 0.2)
    assert setup_difference([a, {**a, "model_step": 6800}])[0] == "model_step"


@pytest.fixture()
def params_file(tmp_path: Path) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["paths"]["report_dir"] = str(tmp_path / "reports")
    raw["evaluate"]["floors"] = {"do_thickness.thickness_mae": "<= 0.15",
                                 "cycles.reversibility_l1_1": "<= 3.0",
                                 "do_intensity.intensity_mae": "<= 3.0"}
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def write_cards(tmp_path: Path, *cards: dict) -> list[str]:
    paths = []
    for k, c in enumerate(cards):
        p = tmp_path / f"seed{k}" / "metrics.json"
        p.parent.mkdir()
        p.write_text(json.dumps(c))
        paths.append(str(p))
    return paths


def test_cli_writes_the_combined_scorecard_and_reads_the_floors(params_file: Path,
                                                                 tmp_path: Path) -> None:
    paths = write_cards(tmp_path, card(0, 0.10, 0.99, 2.0), card(1, 0.14, 0.97, 4.0),
                        card(2, 0.18, 0.98, 2.5))
    r = CliRunner().invoke(app, ["combine", *paths, "--params", str(params_file), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    out = tmp_path / "reports" / "combined.json"
    assert summary["path"] == str(out) and summary["train_seeds"] == [0, 1, 2]
    floors = {f["metric"]: f for f in summary["floors"]}
    # 0.14 <= 0.15 on the mean, met by two of three trainings
    assert floors["do_thickness.thickness_mae"]["met"]
    assert floors["do_thickness.thickness_mae"]["trainings_meeting"] == 2
    # the mean 2.83 meets 3.0 although one training misses it
    assert floors["cycles.reversibility_l1_1"]["met"]
    assert floors["cycles.reversibility_l1_1"]["trainings_meeting"] == 2
    assert floors["do_intensity.intensity_mae"]["mean"] is None  # no such row: missed
    data = json.loads(out.read_text())
    assert data["floors"] == {"met": 2, "of": 3, "met_by_every_training": 0}
    assert math.isclose(data["do_thickness"]["thickness_mae_std"], 0.04)
    assert data["setup"]["train_seeds"] == [0, 1, 2]
    assert data["setup"]["scorecards"] == paths
    md = out.with_suffix(".md").read_text()
    assert "| `do_thickness.thickness_mae` | <= 0.15 | 0.14 ± 0.04 | 0.1 | 0.14 | 0.18 | yes " \
           "| 2 of 3 |" in md
    assert "| `do_intensity.intensity_mae` | <= 3 | no such number |" in md
    assert "| do(thickness): thickness reaches the set value |" in md  # the glance rows

    folders = [str(Path(p).parent) for p in paths[:2]]  # `cdae evaluate --out DIR`'s folders
    text = CliRunner().invoke(app, ["combine", *folders, "--params", str(params_file),
                                    "--out", str(tmp_path / "two.json")])
    assert text.exit_code == 0, text.output
    assert "2 scorecards (train seeds 0, 1)" in text.stdout
    assert ("do_thickness.thickness_mae <= 0.15: 0.12 ± 0.028  (met; 2 of 2 trainings"
            in text.stdout)


GRAPH = {"variables": [{"name": "thickness", "type": "continuous", "unit": "px"},
                       {"name": "digit", "type": "categorical", "classes": 10}], "edges": []}
FLOORS = {"do_thickness.thickness_mae": "<= 0.15", "cycles.reversibility_l1_1": "<= 3.0"}


def test_cli_outside_a_project_reads_the_floors_and_graph_the_scorecards_recorded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no params.yaml here
    paths = write_cards(tmp_path, card(0, 0.10, 0.99, 2.0, graph=GRAPH, floors=FLOORS),
                        card(1, 0.14, 0.97, 4.2, graph=GRAPH, floors=FLOORS))
    r = CliRunner().invoke(app, ["combine", *paths, "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["settings"] == "the scorecards' own"
    assert summary["path"] == str(Path("reports") / "combined.json")
    floors = {f["metric"]: f for f in summary["floors"]}
    assert set(floors) == set(FLOORS)
    assert floors["do_thickness.thickness_mae"]["met"]  # 0.12 <= 0.15
    assert not floors["cycles.reversibility_l1_1"]["met"]  # 3.1 > 3.0
    md = (tmp_path / "reports" / "combined.md").read_text()
    assert "| do(thickness): thickness reaches the set value |" in md  # the recorded graph

    # scorecards from before evaluate recorded them: no floors, no glance rows, still combined
    (tmp_path / "old").mkdir()
    old = write_cards(tmp_path / "old", card(0, 0.1, 1, 1), card(1, 0.2, 1, 1))
    r = CliRunner().invoke(app, ["combine", *old, "--out", "old.json", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["floors"] == []
    assert "## At a glance" not in (tmp_path / "old.md").read_text()

    for cards, fragment in (
            ((card(0, 0.1, 1, 1, floors=FLOORS), card(1, 0.2, 1, 1, floors={})),
             "were scored against different evaluate.floors"),
            ((card(0, 0.1, 1, 1, floors={"do_thickness.thickness_mae": "about 2"}),
              card(1, 0.2, 1, 1, floors={"do_thickness.thickness_mae": "about 2"})),
             "setup.floors.do_thickness.thickness_mae: 'about 2' is not a floor"),
            ((card(0, 0.1, 1, 1, graph={"variables": []}), card(1, 0.2, 1, 1,
                                                              graph={"variables": []})),
             "setup.graph.variables is empty")):
        folder = tmp_path / f"bad{len(list(tmp_path.glob('bad*')))}"
        folder.mkdir()
        r = CliRunner().invoke(app, ["combine", *write_cards(folder, *cards),
                                     "--out", str(folder / "c.json")])
        assert r.exit_code == 2 and fragment in r.stderr, r.output
        assert not (folder / "c.json").exists()
    # a --profile or --params names a project: its file must exist
    r = CliRunner().invoke(app, ["combine", *paths, "--profile", "tiny"])
    assert r.exit_code == 2 and "params.yaml: params file not found" in r.stderr


@pytest.mark.parametrize("make, fragments", [
    (lambda p: [p[0]], ["combine needs two or more scorecards, got 1"]),
    (lambda p: [p[0], p[0]], ["hold the same scorecard"]),
    (lambda p: [p[0], p[2]], ["were scored differently: setup.guidance 0.1 against 0.05",
                              "one evaluate protocol"]),
    (lambda p: [p[0], p[1] + ".missing"], ["no such file"]),
    (lambda p: [p[0], p[3]], ["not JSON (line 1"]),
    (lambda p: [p[0], p[4]], ["not a scorecard of `cdae evaluate` (no setup group)"]),
])
def test_cli_errors_write_nothing(params_file: Path, tmp_path: Path, make, fragments) -> None:
    paths = write_cards(tmp_path, card(0, 0.1, 1, 1), card(1, 0.2, 1, 1),
                        card(2, 0.2, 1, 1, guidance=0.05))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"loss": 1.0}))
    r = CliRunner().invoke(app, ["combine", *make(paths + [str(bad), str(foreign)]),
                                 "--params", str(params_file)])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    for frag in fragments:
        assert frag in lines[0], lines[0]
    assert not (tmp_path / "reports").exists()


def test_cli_out_must_be_a_new_json_file(params_file: Path, tmp_path: Path) -> None:
    paths = write_cards(tmp_path, card(0, 0.1, 1, 1), card(1, 0.2, 1, 1))
    for out, fragment in ((tmp_path / "c.md", "is a .json file"),
                          (Path(paths[0]), "is one of the scorecards")):
        r = CliRunner().invoke(app, ["combine", *paths, "--params", str(params_file),
                                     "--out", str(out)])
        assert r.exit_code == 2 and fragment in r.stderr, r.output
    assert json.loads(Path(paths[0]).read_text())["do_thickness"]["thickness_mae"] == 0.1
