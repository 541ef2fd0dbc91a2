"""User errors: one line naming the problem and the fix, non-zero exit, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cdae.cli import app

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def params_file(tmp_path: Path) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["paths"] = {k: str(tmp_path / Path(v).name) for k, v in raw["paths"].items()}
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code != 0, result.output
    text = result.stderr.strip() if result.stderr else result.output.strip()
    assert "Traceback" not in result.output
    lines = text.splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("error: ")
    for frag in fragments:
        assert frag in lines[0], lines[0]


@pytest.mark.parametrize("args, fragments", [
    (["--var", "colour", "--value", "2"], ["unknown variable 'colour'", "thickness, intensity"]),
    (["--var", "Thicknes", "--value", "2"], ["unknown variable 'Thicknes'",
                                             "did you mean 'thickness'?"]),
    (["--var", "thickness", "--value", "thick"], ["'thick' for 'thickness' is not a number"]),
    (["--var", "thickness"], ["--var and --value go together"]),
    (["--do", "thickness"], ["--do 'thickness' is malformed", "VAR=VALUE"]),
    (["--do", "thickness=2", "--do", "thickness=3"], ["'thickness' is intervened on twice"]),
    (["--do", "digit=11"], ["not one of its classes", "0..9"]),
    (["--do", "thickness=nan"], ["not finite"]),
    (["--var", "thickness", "--value", "99"], ["'99' for 'thickness' is outside its range 0..14",
                                               "choose a value in 0..14"]),
    (["--var", "intensity", "--values", "200:300:3"], ["'300' for 'intensity' is outside"]),
    (["--name", "nope"], ["--name 'nope' is not in intervene.interventions"]),
    ([], ["no intervention given"]),
    (["--var", "thickness", "--values", "1:4"], ["--values '1:4' is malformed",
                                                 "START:STOP:COUNT"]),
    (["--var", "thickness", "--values", "1:4:1"], ["COUNT must be at least 2, got 1"]),
    (["--var", "thickness", "--values", "1:4:x"], ["COUNT 'x' is not an integer"]),
    (["--var", "thickness", "--values", "1,,2"], ["--values '1,,2' is malformed"]),
    (["--var", "thickness", "--values", "1,thick"], ["'thick' for 'thickness' is not a number"]),
    (["--var", "thickness", "--values", "2"], ["holds one value", "--value"]),
    (["--var", "thickness", "--value", "2", "--values", "1,2"], ["not go with --value or --do"]),
    (["--do", "intensity=9", "--var", "thickness", "--values", "1,2"], ["not go with --value"]),
    (["--values", "1:4:7"], ["--values needs --var"]),
    (["--var", "thickness", "--value", "2", "--rows", "3", "--max-images", "4"],
     ["--rows and --max-images both choose the images"]),
    (["--var", "thickness", "--value", "2", "--image", "a.png", "--rows", "3"],
     ["--image and --rows both choose the images"]),
    (["--var", "colour", "--values", "1:4:7"], ["unknown variable 'colour'"]),
    (["--var", "digit", "--values", "0:9:3"], ["'4.5' for 'digit' is not one of its classes"]),
    (["--var", "thickness", "--value", "2", "--guidance", "inf"],
     ["intervene.guidance: expected a finite number, got inf"]),
])
def test_intervene_bad_input(params_file: Path, args, fragments) -> None:
    assert_one_line_error(run("intervene", "--params", str(params_file), *args), *fragments)


def test_missing_files_name_the_fix(params_file: Path) -> None:
    r = run("intervene", "--params", str(params_file), "--var", "thickness", "--value", "2")
    assert_one_line_error(r, "checkpoint not found", "cdae train")
    r = run("train", "--params", str(params_file))
    assert_one_line_error(r, "dataset file not found", "cdae prepare-data")
    r = run("train", "--params", str(params_file.parent / "nope.yaml"))
    assert_one_line_error(r, "params file not found")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA device is present")
@pytest.mark.parametrize("command", [["intervene", "--var", "thickness", "--value", "2"],
                                     ["encode-latents"], ["evaluate"]])
def test_sampling_on_a_missing_gpu(params_file: Path, command: list[str]) -> None:
    r = run(command[0], "--params", str(params_file), "--device", "cuda", *command[1:])
    assert_one_line_error(r, "device (or --device) is cuda, but no CUDA device", "--device cpu")


def test_bad_params_name_the_key(params_file: Path) -> None:
    raw = yaml.safe_load(params_file.read_text())
    raw["graph"]["edges"].append(["intensity", "thickness"])
    params_file.write_text(yaml.safe_dump(raw))
    assert_one_line_error(run("prepare-data", "--params", str(params_file)), "graph.edges",
                          "cycle")
    raw["graph"]["edges"].pop()
    raw["train"]["batch_size"] = -3
    params_file.write_text(yaml.safe_dump(raw))
    assert_one_line_error(run("train", "--params", str(params_file)),
                          "train.batch_size: -3 must be > 0")
    raw["train"]["batch_size"] = 32
    raw["train"]["lr"] = float("inf")
    params_file.write_text(yaml.safe_dump(raw))
    assert_one_line_error(run("train", "--params", str(params_file)),
                          "train.lr: expected a finite number, got inf")


def test_debug_shows_traceback(params_file: Path) -> None:
    from cdae.errors import InterventionError

    args = ("intervene", "--params", str(params_file), "--var", "x", "--value", "1")
    # without --debug the error ends in SystemExit(2) (CliRunner reports that as the exception
    # too); with it the error itself propagates, traceback and all
    quiet = run(*args)
    assert quiet.exit_code == 2 and isinstance(quiet.exception, SystemExit)
    r = run("--debug", *args)
    assert isinstance(r.exception, InterventionError), repr(r.exception)
    assert r.exit_code == 1 and "unknown variable 'x'" in str(r.exception)
    assert r.exc_info is not None and r.exc_info[2] is not None  # the traceback


def test_help_is_cheap_and_version() -> None:
    code = "import sys, cdae.cli; assert 'torch' not in sys.modules and 'h5py' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    r = run("--version")
    assert r.exit_code == 0 and r.output.startswith("cdae ")
    for cmd in ("prepare-data", "train", "encode-latents", "intervene", "render", "evaluate"):
        r = run(cmd, "--help")
        assert r.exit_code == 0 and "Example" in r.output, cmd


def test_params_file_that_is_not_text(tmp_path: Path) -> None:
    binary = tmp_path / "params.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x01graph\x80\x81")
    assert_one_line_error(run("train", "--params", str(binary)), "params.yaml: not a text file",
                          "--params")


@pytest.mark.parametrize("key, value, fragment", [
    ("unet_channels", 12, "model.unet_channels: 12 must be a positive multiple of 8"),
    ("encoder_channels", 5, "model.encoder_channels: 5 must be a positive multiple of 8"),
    ("channel_mult", [2, -1], "model.channel_mult: [2, -1]: every multiplier must be > 0"),
    ("attention_resolutions", [3], "model.attention_resolutions: [3]: every entry must be a "
                                   "downsampling factor of the UNet, one of [1, 2, 4]"),
    ("attention_resolutions", [8], "one of [1, 2, 4] (model.channel_mult has 3 levels)"),
    ("mechanisms", {"thickness": "location_scale"}, "model.mechanisms.thickness: a root "
                                                    "variable, which has no mechanism"),
    ("mechanisms", {"colour": "additive"}, "model.mechanisms.colour: not a variable of the graph"),
    ("mechanisms", {"intensity": "spline"}, "model.mechanisms.intensity"),
])
def test_network_sizes_the_networks_cannot_build(params_file: Path, key, value, fragment) -> None:
    raw = yaml.safe_load(params_file.read_text())
    raw["model"][key] = value
    params_file.write_text(yaml.safe_dump(raw))
    assert_one_line_error(run("train", "--params", str(params_file)), fragment)


def test_info_on_a_file_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello\n")
    assert_one_line_error(run("info", str(tmp_path / "notes.txt")),
                          "notes.txt: neither an HDF5 file nor a torch.save archive",
                          "cdae info reads dataset, latents and counterfactual files")


def test_info_on_a_truncated_hdf5_file(tmp_path: Path) -> None:
    import h5py
    import numpy as np

    whole = tmp_path / "whole.h5"
    with h5py.File(whole, "w") as f:
        f.create_dataset("x_T", data=np.zeros((64, 1, 8, 8), np.float32))
    cut = tmp_path / "cut.h5"
    cut.write_bytes(whole.read_bytes()[:9000])
    assert_one_line_error(run("info", str(cut)), "cut.h5: cannot read the HDF5 file",
                          "truncated or corrupt")


def test_out_that_is_a_folder(params_file: Path, tmp_path: Path) -> None:
    r = run("report", "--params", str(params_file), "--out", str(tmp_path))
    assert_one_line_error(r, "is a folder, not a file", "name a file")


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """The console-script entry point itself (CliRunner bypasses its handling of click errors)."""
    from cdae.cli import main

    monkeypatch.setattr(sys, "argv", ["cdae", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


@pytest.mark.parametrize("args, fragment", [
    (["train", "--steps", "abc"], "Invalid value for '--steps'"),
    (["train", "--stepz", "3"], "No such option: --stepz"),
    (["intervene", "--abduction", "foo"], "Invalid value for '--abduction'"),
    (["merge", "out.h5"], "Missing argument"),
    (["trian"], "No such command 'trian'"),
])
def test_bad_flags_are_one_line_errors(monkeypatch, capsys, args, fragment) -> None:
    code, _, err = run_main(monkeypatch, capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: ") and fragment in lines[0] and "--help`" in lines[0]


def test_entry_point_exit_codes(monkeypatch, capsys, tmp_path: Path) -> None:
    code, out, _ = run_main(monkeypatch, capsys, "--version")
    assert code == 0 and out.startswith("cdae ")
    assert run_main(monkeypatch, capsys, "train", "--help")[0] == 0
    code, _, err = run_main(monkeypatch, capsys, "info", str(tmp_path / "missing.pt"))
    assert code == 2 and err.strip().startswith("error: ")
    code, _, err = run_main(monkeypatch, capsys)
    assert code == 2 and err.startswith("Usage:")  # a bare `cdae`: the help


def test_unknown_counterfactual_kind_names_the_file(tmp_path: Path) -> None:
    import h5py
    import numpy as np

    with h5py.File(tmp_path / "odd.h5", "w") as f:
        f.create_dataset("counterfactual", data=np.zeros((1, 1, 8, 8), np.uint8))
        f.attrs["kind"] = "weird"
    assert_one_line_error(run("info", str(tmp_path / "odd.h5")),
                          "odd.h5: unknown counterfactual file kind 'weird'")
