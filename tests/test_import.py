"""Imported datasets (cdae.importers): data.source morphomnist and folder, their bad input, and
what evaluate can still compute on them."""

from __future__ import annotations

import copy
import gzip
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cdae import config as cfg
from cdae import mnist
from cdae.cli import app
from cdae.dataset import Dataset, normalisation_stats, read_dataset
from cdae.generators import make_generator
from cdae.morpho import measure
from cdae.scm import MorphoThicknessIntensitySCM
from stages import evaluate as ev
from stages import prepare_data

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "morphomnist"
needs_shared = pytest.mark.skipif(not (SHARED / "t10k-morpho.csv").is_file(),
                                  reason="no shared Morpho-MNIST t10k split")

FOLDER_GRAPH = {"variables": [{"name": "size", "type": "continuous", "unit": "px"},
                              {"name": "shade", "type": "continuous"},
                              {"name": "kind", "type": "categorical", "classes": 3}],
                "edges": [["size", "shade"]]}


# ------------------------------------------------------------------ helpers
def _raw(tmp_path: Path, **data) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["paths"] = {k: str(tmp_path / "out" / Path(v).name) for k, v in raw["paths"].items()}
    raw["data"].update(workers=1, **data)
    return raw


def _params_file(tmp_path: Path, raw: dict) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def _idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    head = (0x0800 | arr.ndim).to_bytes(4, "big")
    return head + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) + arr.tobytes()


def _write_morpho_split(folder: Path, prefix: str, images: np.ndarray, digits: np.ndarray,
                        rows: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images)))
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_bytes(digits))
    (folder / f"{prefix}-morpho.csv").write_text("\n".join(rows) + "\n")


def _morpho_rows(n: int, order: np.ndarray | None = None) -> list[str]:
    order = np.arange(n) if order is None else order
    return ["index,thickness,intensity"] + [f"{k},{1.5 + 0.1 * k},{100 + k}" for k in order]


@pytest.fixture()
def morpho_dir(tmp_path: Path) -> Path:
    """A tiny DeepSCM-layout folder: t10k only, 6 images, CSV rows in shuffled order."""
    rng = np.random.default_rng(1)
    d = tmp_path / "mm"
    _write_morpho_split(d, "t10k", rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
                        np.arange(6, dtype=np.uint8) % 10,
                        _morpho_rows(6, np.array([3, 0, 5, 1, 4, 2])))
    return d


def _png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(arr).save(path)


@pytest.fixture()
def image_dir(tmp_path: Path) -> Path:
    """12 tiny grayscale PNGs (8x8) + labels.csv with two empty cells and a split column."""
    d = tmp_path / "imgs"
    d.mkdir()
    rows = ["file,size,shade,kind,split"]
    for k in range(12):
        _png(d / f"im{k:02d}.png", np.full((8, 8), 10 * k, np.uint8))
        size = "" if k == 3 else f"{1.0 + k}"
        kind = "" if k == 7 else f"{k % 3}"
        rows.append(f"im{k:02d}.png,{size},{20.0 * k},{kind},{'test' if k >= 9 else 'train'}")
    (d / "labels.csv").write_text("\n".join(rows) + "\n")
    return d


def _folder_raw(tmp_path: Path, folder: Path, **data) -> dict:
    raw = _raw(tmp_path, source="folder", image_dir=str(folder), **data)
    raw["graph"] = FOLDER_GRAPH
    return raw


def _cli(params_file: Path):
    return CliRunner().invoke(app, ["prepare-data", "--params", str(params_file)])


def _assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    text = result.stderr if result.stderr else result.output
    assert "Traceback" not in text
    errors = [ln for ln in text.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, text
    for frag in fragments:
        assert frag in errors[0], errors[0]


# ------------------------------------------------------------------ morphomnist
@needs_shared
def test_morphomnist_real_t10k(tmp_path: Path) -> None:
    raw = _raw(tmp_path, source="morphomnist", idx_dir=str(SHARED), max_images=300,
               test_fraction=0.25)
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("cdae")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        r = _cli(_params_file(tmp_path, raw))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert r.exit_code == 0, r.output
    assert any("no train split" in m and "test_fraction" in m for m in seen), seen
    ds = read_dataset(raw["paths"]["dataset"])
    assert ds.images.shape == (300, 1, 28, 28) and ds.images.dtype == np.uint8
    assert ds.noise is None and ds.base_images is None and ds.base_index is None
    assert not ds.has_ground_truth and ds.scm == "morpho_thickness_intensity"
    assert ds.source == "morphomnist" and ds.label_mask.all()
    assert 0 < (ds.split == 1).sum() < 300
    rows = ds.source_index
    assert rows is not None and np.all(np.diff(rows) > 0)
    table = mnist.load_morpho_csv(SHARED / "t10k-morpho.csv")
    by_index = np.argsort(table["index"])
    names = ds.graph.names
    for var in ("thickness", "intensity"):
        want = table[var][by_index][rows].astype(np.float32)
        assert np.array_equal(ds.labels[:, names.index(var)].astype(np.float32), want)
    images, digits = mnist.load_idx_pair(SHARED / "t10k-images-idx3-ubyte.gz",
                                         SHARED / "t10k-labels-idx1-ubyte.gz")
    assert np.array_equal(ds.labels[:, names.index("digit")], digits[rows])
    assert np.array_equal(ds.images[:, 0], images[rows])
    # the evaluation's do-nothing inputs: imported digits measured in label units, per image
    # (EVALUATION.md: 0.123 px and 0.51 over the whole t10k split)
    measured = make_generator(cfg.SCMKind(ds.scm)).measure(ds.images[:60])
    for var, tol in (("thickness", 0.2), ("intensity", 1.5)):
        err = np.abs(measured[var] - ds.labels[:60, names.index(var)])
        assert err.mean() < tol, (var, err.mean())


def test_morphomnist_both_splits_and_csv_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    d = tmp_path / "mm"
    train_img = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    test_img = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    _write_morpho_split(d, "train", train_img, np.array([0, 1, 2, 3, 4], np.uint8),
                        _morpho_rows(5, np.array([4, 2, 0, 1, 3])))
    _write_morpho_split(d, "t10k", test_img, np.array([9, 8, 7, 6], np.uint8), _morpho_rows(4))
    params = cfg.resolve(_raw(tmp_path, source="morphomnist", idx_dir=str(d)))
    prepare_data.run(params)
    ds = read_dataset(params.paths.dataset)
    assert ds.split.tolist() == [0] * 5 + [1] * 4
    assert np.array_equal(ds.images[:, 0], np.concatenate([train_img, test_img]))
    assert np.allclose(ds.labels[:, 0], 1.5 + 0.1 * np.r_[np.arange(5), np.arange(4)])
    assert np.allclose(ds.labels[:, 1], 100 + np.r_[np.arange(5), np.arange(4)])
    assert ds.labels[:, 2].tolist() == [0, 1, 2, 3, 4, 9, 8, 7, 6]


@needs_shared
def test_deepscm_labels_follow_the_scm() -> None:
    """Why label-level targets are computable for imported Morpho-MNIST: the CSV's labels are
    the DeepSCM SCM's samples, so the abducted intensity noise is standard normal."""
    table = mnist.load_morpho_csv(SHARED / "t10k-morpho.csv")
    e = MorphoThicknessIntensitySCM().abduct_noise(table["thickness"], table["intensity"])[:, 1]
    assert abs(e.mean()) < 0.05 and abs(e.std() - 1.0) < 0.05


# ------------------------------------------------------------------ folder
def test_folder_labels_mask_and_split(tmp_path: Path, image_dir: Path) -> None:
    raw = _folder_raw(tmp_path, image_dir)
    r = _cli(_params_file(tmp_path, raw))
    assert r.exit_code == 0, r.output
    ds = read_dataset(raw["paths"]["dataset"])
    assert ds.images.shape == (12, 1, 8, 8)
    assert [int(ds.images[k, 0, 0, 0]) for k in range(12)] == [10 * k for k in range(12)]
    expected_mask = np.ones((12, 3), bool)
    expected_mask[3, 0] = expected_mask[7, 2] = False
    assert np.array_equal(ds.label_mask, expected_mask)
    assert np.array_equal(np.isfinite(ds.labels), expected_mask)
    assert ds.split.tolist() == [0] * 9 + [1] * 3
    assert ds.scm == "" and not ds.has_ground_truth and ds.noise is None
    assert ds.labels[4].tolist() == [5.0, 80.0, 1.0]


def test_labels_outside_a_declared_range_are_refused(tmp_path: Path, image_dir: Path) -> None:
    """shade runs 0..220 in labels.csv: a declared range 0..200 contradicts the data."""
    raw = _folder_raw(tmp_path, image_dir)
    raw["graph"] = copy.deepcopy(FOLDER_GRAPH)
    raw["graph"]["variables"][1]["range"] = [0, 200]
    _assert_one_line_error(_cli(_params_file(tmp_path, raw)),
                           "1 label of shade lies outside its declared range 0..200 (from 220 "
                           "to 220)", "widen graph.variables[1].range")
    assert not Path(raw["paths"]["dataset"]).exists()
    raw["graph"]["variables"][1]["range"] = [0, 220]
    assert _cli(_params_file(tmp_path, raw)).exit_code == 0
    assert read_dataset(raw["paths"]["dataset"]).graph.variable("shade").range == (0.0, 220.0)


def test_folder_rgb_random_split(tmp_path: Path) -> None:
    d = tmp_path / "rgb"
    d.mkdir()
    rows = ["name,kind,shade,size,extra"]
    for k in range(10):
        _png(d / f"c{k}.png", np.full((6, 10, 3), k, np.uint8))
        rows.append(f"c{k}.png,{k % 3},{k},{k},x")
    (tmp_path / "lab.csv").write_text("\n".join(rows) + "\n")
    params = cfg.resolve(_folder_raw(tmp_path, d, labels_csv=str(tmp_path / "lab.csv"),
                                     test_fraction=0.3))
    prepare_data.run(params)
    ds = read_dataset(params.paths.dataset)
    assert ds.images.shape == (10, 3, 6, 10) and int((ds.split == 1).sum()) == 3
    assert ds.labels[:, ds.graph.names.index("kind")].tolist() == [k % 3 for k in range(10)]


# ------------------------------------------------------------------ bad input
def _corrupt_morpho(case: str, d: Path) -> None:
    csv_path = d / "t10k-morpho.csv"
    if case == "truncated":
        p = d / "t10k-images-idx3-ubyte.gz"
        p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-100]))
    elif case == "count":
        (d / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(5, np.uint8)))
    elif case == "column":
        csv_path.write_text("index,thick,intensity\n0,1,100\n")
    elif case == "rows":
        csv_path.write_text("\n".join(_morpho_rows(5)) + "\n")
    elif case == "index":
        csv_path.write_text("\n".join(_morpho_rows(6)).replace("\n5,", "\n9,") + "\n")
    elif case == "duplicate":
        csv_path.write_text("\n".join(_morpho_rows(6)).replace("\n5,", "\n4,") + "\n")
    elif case == "number":
        csv_path.write_text("\n".join(_morpho_rows(6)).replace("\n2,1.7,", "\n2,thin,") + "\n")
    elif case == "incomplete":
        (d / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(2, np.uint8)))


@pytest.mark.parametrize("case, fragments", [
    ("missing", ["nope: data.idx_dir does not exist"]),
    ("empty", ["data.idx_dir: empty, but data.source is morphomnist"]),
    ("truncated", ["t10k-images-idx3-ubyte.gz: truncated"]),
    ("count", ["t10k-labels-idx1-ubyte: 5 labels but", "holds 6 images"]),
    ("column", ["t10k-morpho.csv: missing column(s) thickness"]),
    ("rows", ["t10k-morpho.csv: 5 rows but", "holds 6 images"]),
    ("index", ["t10k-morpho.csv: index 9 is out of range for the 6 images"]),
    ("duplicate", ["t10k-morpho.csv: index 4 appears more than once"]),
    ("number", ["t10k-morpho.csv: line 4: column thickness is not a number ('thin')"]),
    ("incomplete", ["the train split is incomplete: no train-images-idx3-ubyte(.gz)"]),
    ("scm", ["data.scm: pendulum, but data.source morphomnist holds labels of "
             "morpho_thickness_intensity"]),
])
def test_morphomnist_bad_input(tmp_path: Path, morpho_dir: Path, case: str, fragments) -> None:
    _corrupt_morpho(case, morpho_dir)
    idx_dir = {"missing": str(tmp_path / "nope"), "empty": ""}.get(case, str(morpho_dir))
    raw = _raw(tmp_path, source="morphomnist", idx_dir=idx_dir)
    if case == "scm":
        raw["data"]["scm"] = "pendulum"
    _assert_one_line_error(_cli(_params_file(tmp_path, raw)), *fragments)
    assert not Path(raw["paths"]["dataset"]).exists()
    assert not any(Path(raw["paths"]["dataset"]).parent.glob(".dataset.h5.tmp*"))


def _corrupt_folder(case: str, d: Path) -> None:
    from PIL import Image

    csv_path = d / "labels.csv"
    text = csv_path.read_text()
    if case == "column":
        csv_path.write_text(text.replace(",shade,", ",shadow,", 1))
    elif case == "no_image":
        (d / "im05.png").unlink()
    elif case == "unlisted":
        _png(d / "zz.png", np.zeros((8, 8), np.uint8))
    elif case == "size":
        _png(d / "im04.png", np.zeros((9, 8), np.uint8))
    elif case == "mode":
        _png(d / "im06.png", np.zeros((8, 8, 3), np.uint8))
    elif case == "unsupported":
        Image.new("RGBA", (8, 8)).save(d / "im00.png")
    elif case == "classes":
        csv_path.write_text(text.replace("im02.png,3.0,40.0,2,", "im02.png,3.0,40.0,3,"))
    elif case == "fraction":
        csv_path.write_text(text.replace("im02.png,3.0,40.0,2,", "im02.png,3.0,40.0,1.5,"))
    elif case == "number":
        csv_path.write_text(text.replace("im05.png,6.0,", "im05.png,big,"))
    elif case == "split":
        csv_path.write_text(text.replace("im01.png,2.0,20.0,1,train", "im01.png,2.0,20.0,1,val"))
    elif case == "cells":
        csv_path.write_text(text.replace("im01.png,2.0,20.0,1,train", "im01.png,2.0,20.0,1"))
    elif case == "csv":
        csv_path.unlink()


@pytest.mark.parametrize("case, fragments", [
    ("missing", ["nope: data.image_dir does not exist"]),
    ("empty", ["data.image_dir: empty, but data.source is folder"]),
    ("csv", ["labels.csv: labels CSV not found"]),
    ("column", ["labels.csv: missing column(s) shade for the graph variables"]),
    ("no_image", ["labels.csv: line 7: no image", "im05.png"]),
    ("unlisted", ["labels.csv: 12 rows, but", "1 more image(s) without one (first: zz.png)"]),
    ("size", ["images differ in size", "im00.png is 8x8", "im04.png is 8x9"]),
    ("mode", ["images differ in mode", "im00.png is L", "im06.png is RGB"]),
    ("unsupported", ["im00.png: image mode RGBA is not supported"]),
    ("classes", ["labels.csv: line 4: column kind: '3' is not one of its classes 0..2"]),
    ("fraction", ["line 4: column kind: '1.5' is not one of its classes 0..2"]),
    ("number", ["labels.csv: line 7: column size: 'big' is not a number"]),
    ("split", ["labels.csv: line 3: column split: 'val' is neither train nor test"]),
    ("cells", ["labels.csv: line 3: 4 cells, the header has 5"]),
])
def test_folder_bad_input(tmp_path: Path, image_dir: Path, case: str, fragments) -> None:
    _corrupt_folder(case, image_dir)
    folder = {"missing": str(tmp_path / "nope"), "empty": ""}.get(case, str(image_dir))
    raw = _folder_raw(tmp_path, Path(folder) if folder else image_dir)
    raw["data"]["image_dir"] = folder
    _assert_one_line_error(_cli(_params_file(tmp_path, raw)), *fragments)
    assert not Path(raw["paths"]["dataset"]).exists()


# ------------------------------------------------------------------ evaluate on imported data
def test_evaluation_plan_for_imported_morphomnist(tmp_path: Path, morpho_dir: Path) -> None:
    params = cfg.resolve(_raw(tmp_path, source="morphomnist", idx_dir=str(morpho_dir)))
    prepare_data.run(params)
    ds = read_dataset(params.paths.dataset)
    gen = make_generator(cfg.SCMKind(ds.scm))
    plan = ev.plan_evaluation(ds, gen)
    assert not plan.true_images and plan.targets is ev.TargetSource.LABELS
    assert plan.measurable == ("thickness", "intensity")
    assert ev.GROUND_TRUTH_MISSING in plan.notes()["ground_truth"]
    labels = {n: ds.labels[:, j] for j, n in enumerate(ds.graph.names)}
    do = {"thickness": np.full(6, 2.0)}
    target = ev.counterfactual_targets(plan, gen, ds.graph, labels, ds.noise, do)
    _, i_cf = MorphoThicknessIntensitySCM().counterfactual_labels(
        labels["thickness"], labels["intensity"], do)
    assert np.allclose(target["intensity"], i_cf) and np.all(target["thickness"] == 2.0)
    assert np.array_equal(target["digit"], labels["digit"])
    # the do-nothing row's inputs: the imported images' measured attributes, in label units
    # (random pixels here: label units on real digits are checked in test_morphomnist_real_t10k)
    measured = gen.measure(ds.images[:2])
    assert set(plan.measurable) <= set(measured)
    t_direct, i_direct = measure(ds.images[:2, 0])
    assert np.array_equal(measured["thickness"], t_direct)
    assert np.array_equal(measured["intensity"], i_direct)


def test_evaluation_plan_for_folder_and_generated(tmp_path: Path, image_dir: Path) -> None:
    params = cfg.resolve(_folder_raw(tmp_path, image_dir))
    prepare_data.run(params)
    ds = read_dataset(params.paths.dataset)
    plan = ev.plan_evaluation(ds, None)
    assert plan.measurable == () and not plan.true_images
    assert plan.targets is ev.TargetSource.GRAPH
    labels = {n: ds.labels[:, j] for j, n in enumerate(ds.graph.names)}
    target = ev.counterfactual_targets(plan, None, ds.graph, labels, None,
                                       {"size": np.full(12, 4.0)})
    assert set(target) == {"size", "kind"}  # shade is a descendant: no target
    assert np.all(target["size"] == 4.0)
    assert np.array_equal(target["kind"], labels["kind"], equal_nan=True)
    # a generated file keeps the full protocol
    graph = cfg.resolve(_raw(tmp_path)).graph
    n = 4
    lab = np.column_stack([np.full(n, 2.5), np.full(n, 150.0), np.arange(n) % 10])
    split = np.array([0, 0, 1, 1], np.uint8)
    mean, std = normalisation_stats(lab, split, graph)
    gen_ds = Dataset(np.zeros((n, 1, 28, 28), np.uint8), lab, np.ones((n, 3), bool), split,
                     graph, mean, std, noise=np.zeros((n, 2)), scm="morpho_thickness_intensity",
                     has_ground_truth=True)
    full = ev.plan_evaluation(gen_ds, make_generator(cfg.SCMKind.MORPHO_THICKNESS_INTENSITY))
    assert full.true_images and full.targets is ev.TargetSource.STORED_NOISE


def _tiny(raw: dict) -> dict:
    """The tiny profile with 2 training steps and 3 evaluated images (seconds on a CPU)."""
    raw["profile"] = "tiny"
    tiny = raw["profiles"]["tiny"]
    tiny["data"] = {"workers": 1}
    tiny["train"].update(steps=2, checkpoint_every=2, batch_size=4)
    tiny["evaluate"] = {"max_images": 3, "steps": 2}
    return raw


@needs_shared
def test_evaluate_runs_on_imported_files(tmp_path: Path, image_dir: Path) -> None:
    """Train 2 steps and evaluate: the ground-truth rows are skipped with a note, the measured
    rows (Morpho-MNIST) or the null row (folder, no SCM) are there."""
    from stages import train, train_predictors

    mm = cfg.resolve(_tiny(_raw(tmp_path / "mm", source="morphomnist", idx_dir=str(SHARED),
                                max_images=40, test_fraction=0.25)))
    prepare_data.run(mm)
    train.run(mm)
    train_predictors.run(mm)
    r = ev.run(mm)
    assert {"null", "do_thickness", "do_intensity", "do_thickness_do_nothing"} <= set(r)
    assert not any(k.endswith("_true_mechanism") for k in r)
    assert "l1_to_true_counterfactual" not in r["do_thickness"]
    assert np.isfinite(r["do_thickness"]["intensity_mae"])
    assert ev.GROUND_TRUTH_MISSING in r["setup"]["ground_truth"]
    assert Path(mm.paths.metrics).is_file()

    fo = cfg.resolve(_tiny(_folder_raw(tmp_path / "fo", image_dir)))
    prepare_data.run(fo)
    train.run(fo)
    train_predictors.run(fo)
    r = ev.run(fo)
    # no SCM: nothing is measured or has a true counterfactual; effectiveness is PREDICTED by the
    # anti-causal predictors, one row per variable
    assert {"null", "setup", "cost", "do_size", "do_shade", "do_kind"} <= set(r)
    assert not any(k.endswith("_true_mechanism") for k in r)
    assert any(k.startswith("predicted_") for k in r["do_size"])
    assert not any(k in r["do_size"] for k in ("size_mae", "l1_to_true_counterfactual"))
    assert "none measured" in r["setup"]["attributes"]
    assert np.isfinite(r["null"]["l1_to_factual"])


def test_train_draws_append_new_renderings_of_the_train_digits(tmp_path: Path) -> None:
    """data.train_draws k: k - 1 more SCM draws of every train digit are appended as train
    rows (same base digit and class, new thickness and intensity, rendered to their labels);
    the first draw and the test rows are those of k = 1."""
    one = cfg.resolve(_raw(tmp_path / "one", max_images=40))
    three = cfg.resolve(_raw(tmp_path / "three", max_images=40, train_draws=3))
    prepare_data.run(one)
    prepare_data.run(three)
    a, b = read_dataset(one.paths.dataset), read_dataset(three.paths.dataset)
    n, train = a.images.shape[0], a.indices("train")
    assert b.images.shape[0] == n + 2 * train.size and train.size > 0
    np.testing.assert_array_equal(b.images[:n], a.images)
    np.testing.assert_array_equal(b.labels[:n], a.labels)
    np.testing.assert_array_equal(b.split[:n], a.split)
    rep = np.tile(train, 2)
    assert (b.split[n:] == 0).all()
    np.testing.assert_array_equal(b.base_index[n:], rep)
    names = b.graph.names
    d, t = names.index("digit"), names.index("thickness")
    np.testing.assert_array_equal(b.labels[n:, d], a.labels[rep, d])
    assert np.abs(b.labels[n:, t] - a.labels[rep, t]).mean() > 0.2  # new draws
    gen = make_generator(cfg.SCMKind(b.scm))
    measured = gen.measure(b.images[n:n + 8], workers=1)
    assert np.abs(measured["thickness"] - b.labels[n:n + 8, t]).mean() < 0.5


def test_train_draws_refused_for_imported_images(tmp_path: Path, image_dir: Path) -> None:
    raw = _folder_raw(tmp_path, image_dir, train_draws=2)
    _assert_one_line_error(_cli(_params_file(tmp_path, raw)), "data.train_draws: 2",
                           "no SCM", "set data.train_draws: 1")
    assert not (tmp_path / "out" / "dataset.h5").exists()
