"""The `cdae` command line: one command per pipeline stage, kept thin.

Each command reads params.yaml (``--params``, ``--profile``), applies its CLI overrides, and
calls ``stages.<stage>.run``. Heavy imports happen inside commands so ``cdae --help`` is instant.
User errors print one line (``error: ...``) and exit non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from cdae import __version__
from cdae.config import Abduction, Device, GuidanceMode, ParentsFrom, Solver, Spacing
from cdae.errors import CdaeError

OUT_HELP = "output HDF5 file (with --shard I/N, each shard writes OUT.shard-I-of-N.h5 beside it)"

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Causal Diffusion Autoencoders: train on a causal graph, then ask "
                       "counterfactual questions such as `cdae intervene --var thickness "
                       "--value 2.0`. Settings come from params.yaml; `dvc repro` runs the "
                       "whole pipeline.")

_state = {"debug": False}

ParamsOpt = typer.Option(Path("params.yaml"), "--params", help="params file to read")
ProfileOpt = typer.Option(None, "--profile", help="profile from params.yaml's `profiles` "
                          "(overrides `profile:`)")
SolverOpt = typer.Option(None, help="ODE solver of inversion and decoding (diffusion.solver): "
                         "ddim, or heun (2nd order, 2 network calls per step)")
SpacingOpt = typer.Option(None, help="timestep grid (diffusion.spacing): uniform or quadratic")
DeviceOpt = typer.Option(None, help="where to sample (params `device`): auto (cuda when "
                         "present), cpu or cuda")
JsonOpt = typer.Option(False, "--json", help="print the result as JSON on stdout")
ShardOpt = typer.Option(None, "--shard", help="INDEX/COUNT: process one slice of the images "
                        "(SLURM arrays; torchrun ranks do this by themselves); join the "
                        "outputs with `cdae merge`")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cdae {__version__}")
        raise typer.Exit()


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    _state["debug"] = debug
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    from cdae.progress import setup_logging

    setup_logging()


def _run(fn: Callable[[], Any]) -> Any:
    """Run a stage; turn user errors into one line on stderr and a non-zero exit."""
    try:
        return fn()
    except CdaeError as err:
        if _state["debug"]:
            raise
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(err.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


def _params(path: Path, profile: Optional[str], solver: Optional[Solver] = None,
            spacing: Optional[Spacing] = None, device: Optional[Device] = None):
    """params.yaml (with its profile), the sampling options given on the command line applied."""
    import dataclasses

    from cdae import config

    p = config.load(path, profile)
    changes = {k: v for k, v in (("solver", solver), ("spacing", spacing)) if v is not None}
    if changes:
        p = dataclasses.replace(p, diffusion=dataclasses.replace(p.diffusion, **changes))
    if device is not None:
        p = dataclasses.replace(p, device=device)
    return p


def _emit(result: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=_jsonable))
    else:
        typer.echo(text(result))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Enum):
        return obj.value
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


@app.command("prepare-data")
def prepare_data(params: Path = ParamsOpt, profile: Optional[str] = ProfileOpt,
                 as_json: bool = JsonOpt) -> None:
    """Build the labelled dataset file (HDF5) from the data source and SCM in params.

    Example: cdae prepare-data   (default: 5,000 real MNIST digits through the DeepSCM
    thickness -> intensity model)
    """
    def go():
        from stages import prepare_data as stage

        return stage.run(_params(params, profile))

    _emit(_run(go), as_json, lambda r: f"wrote {r['path']}: {r['train']} train / {r['test']} "
          f"test images {r['image_shape']} ({r['seconds']:.1f} s)")


@app.command()
def train(params: Path = ParamsOpt, profile: Optional[str] = ProfileOpt,
          steps: Optional[int] = typer.Option(None, help="override train.steps"),
          device: Optional[Device] = typer.Option(None, help="auto, cpu or cuda"),
          max_minutes: Optional[float] = typer.Option(
              None, help="override train.max_minutes: stop after this many minutes and write "
              "the model (a later run continues it); 0 = no limit"),
          resume: bool = typer.Option(True, help="continue from models/checkpoint.pt when it "
                                      "matches the settings"),
          as_json: bool = JsonOpt) -> None:
    """Train the Causal Diffusion Autoencoder; checkpoint, resume, stop cleanly on SIGTERM.

    Example: cdae train --steps 500 --device cpu
    Data-parallel (gloo on CPU, NCCL on GPUs): torchrun --nproc_per_node 4 -m cdae train
    """
    def go():
        from dataclasses import replace

        from cdae import config
        from stages import train as stage

        p = _params(params, profile)
        p = replace(p, train=config.override(p.train, "train", steps=steps, device=device,
                                             max_minutes=max_minutes))
        return stage.run(p, resume=resume)

    _emit(_run(go), as_json, lambda r: f"data-parallel worker done at step {r['steps']}"
          if r.get("rank") == "worker" else f"trained {r['steps']} steps in {r['seconds']} s "
          f"({r['images_per_second']} images/s)" + (
              f", final loss {r['final_loss']:.4f}" if r["final_loss"] == r["final_loss"]
              else ", no loss logged yet (train.log_every)"))


@app.command("encode-latents")
def encode_latents(params: Path = ParamsOpt, profile: Optional[str] = ProfileOpt,
                   split: Optional[str] = typer.Option(None, help="train or test"),
                   steps: Optional[int] = typer.Option(None, help="inversion steps (grid points)"),
                   solver: Optional[Solver] = SolverOpt,
                   spacing: Optional[Spacing] = SpacingOpt,
                   device: Optional[Device] = DeviceOpt,
                   out: Optional[Path] = typer.Option(None, help=OUT_HELP),
                   shard: Optional[str] = ShardOpt,
                   as_json: bool = JsonOpt) -> None:
    """Cache u, z and the DDIM-inverted x_T of a split in HDF5 (reused by intervene).

    Example: cdae encode-latents --split test --steps 50
    SLURM array: cdae encode-latents --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT,
    then cdae merge data/latents.h5 data/latents.shard-*.h5
    """
    def go():
        from stages import encode_latents as stage

        return stage.run(_params(params, profile, solver, spacing, device), split=split,
                         steps=steps,
                         out=str(out) if out else None, shard=shard)

    _emit(_run(go), as_json, lambda r: f"wrote {r['path']}: {r['images']} images")


@app.command()
def merge(out: Path = typer.Argument(..., help="the merged HDF5 file to write"),
          parts: list[Path] = typer.Argument(..., help="the shard files (any order)"),
          as_json: bool = JsonOpt) -> None:
    """Merge the shard files of a sharded encode-latents or intervene run into one file,
    identical to what the unsharded run writes.

    Example: cdae merge data/latents.h5 data/latents.shard-*.h5
    """
    def go():
        from cdae.shards import merge as merge_files

        r = merge_files(parts, out)
        return {"path": str(out), **r}

    _emit(_run(go), as_json, lambda r: f"wrote {r['path']}: {r['images']} images from "
          f"{r['shards']} shards")


def _format_intervention(r: dict[str, Any]) -> str:
    lines = [f"wrote {r['path']}: {r['images']} counterfactuals of do("
             + ", ".join(f"{k}={v:g}" for k, v in r["do"].items()) + ")",
             f"  abduction {r['abduction']} (parents from {r['parents_from']}), "
             f"{r['steps']} steps of {r['solver']} on a {r['spacing']} grid, guidance {r['guidance']:g}",
             "  parent values, mean over images (factual -> counterfactual):"]
    width = max([12, *map(len, r["parents"])])  # the names in one column
    for name, p in r["parents"].items():
        tag = p["role"]
        unit = f" {p['unit']}" if p["unit"] else ""
        if p["categorical"] and not p["intervened"]:
            lines.append(f"    {name:<{width}} {'(categorical)':>22}  ({tag})")
            continue
        lines.append(f"    {name:<{width}} {p['factual_mean']:9.3f} -> "
                     f"{p['counterfactual_mean']:9.3f}{unit}  ({tag})")
    if r["images"] <= len(r.get("example_rows", [])):  # a few images: each one's parents
        lines.append("  per image: factual -> counterfactual (* = set by do):")
        files = r.get("image_files", [])
        for row, ex in zip(r["example_rows"], r["examples"]):
            label = files[-1 - row] if row < 0 else f"row {row}"
            lines.append(f"    {label}: " + ", ".join(
                f"{n} {_num(a, r['parents'][n])} -> {_num(b, r['parents'][n])}"
                + ("*" if r["parents"][n]["intervened"] else "") for n, (a, b) in ex.items()))
    for w in r.get("warnings", []):
        lines.append(f"  warning: {w}")
    return "\n".join(lines)


def _num(v: float, parent: dict[str, Any]) -> str:
    """A parent value as the summary prints it: a class as an integer, else 2-3 digits."""
    if parent["categorical"]:
        return str(int(round(v)))
    return f"{v:.0f}" if abs(v) >= 10 else f"{v:.2f}"


def _format_sweep(r: dict[str, Any]) -> str:
    """A table: one row per value, one column per variable (mean counterfactual parents)."""
    var, variables = r["var"], r["variables"]
    unit = variables[var]["unit"]
    lines = [f"wrote {r['path']}: {r['images']} images x {len(r['values'])} values of {var} "
             f"({r['values'][0]:g} .. {r['values'][-1]:g}{' ' + unit if unit else ''}), "
             f"counterfactuals {tuple(r['shape'])}",
             f"  abduction {r['abduction']} once per image (parents from {r['parents_from']}), "
             f"{r['steps']} steps of {r['solver']} on a {r['spacing']} grid, guidance {r['guidance']:g}",
             "  parent values, mean over images:"]
    shown = [n for n, v in variables.items() if n == var or not v["categorical"]]
    heads = [f"{n} [{variables[n]['unit']}]" if variables[n]["unit"] else n for n in shown]
    widths = [max(len(h), 10) for h in heads]
    lines.append("    " + f"{'':<16}" + "  ".join(f"{h:>{w}}" for h, w in zip(heads, widths)))
    lines.append("    " + f"{'factual':<16}" + "  ".join(
        f"{variables[n]['factual_mean']:>{w}.3f}" for n, w in zip(shown, widths)))
    for step in r["sweep"]:
        label = f"do({var}={step['value']:g})"
        lines.append("    " + f"{label:<16}" + "  ".join(
            f"{step['parents'][n]:>{w}.3f}" for n, w in zip(shown, widths)))
    lines.append("  " + "; ".join(f"{n}: {v['role']}" for n, v in variables.items()))
    for w in r.get("warnings", []):
        lines.append(f"  warning: {w}")
    return "\n".join(lines)


@app.command()
def intervene(params: Path = ParamsOpt, profile: Optional[str] = ProfileOpt,
              var: Optional[str] = typer.Option(None, "--var", help="variable to intervene on"),
              value: Optional[str] = typer.Option(None, "--value", help="its new raw value"),
              values: Optional[str] = typer.Option(
                  None, "--values", help="a sweep of --var: START:STOP:COUNT (COUNT values, "
                  "both ends included) or a list 1,2,3; abducts once, writes one file "
                  "(default sweep_VAR.h5) with counterfactuals (V, N, C, H, W)"),
              do: list[str] = typer.Option([], "--do", help="VAR=VALUE, repeatable"),
              name: Optional[str] = typer.Option(None, "--name", help="an intervention listed "
                                                 "in params intervene.interventions, or the "
                                                 "output name for --var/--do"),
              guidance: Optional[float] = typer.Option(None, help="guidance scale s >= 0"),
              guidance_mode: Optional[GuidanceMode] = typer.Option(
                  None, help="unconditional (classifier-free) or factual (amplify only the change)"),
              steps: Optional[int] = typer.Option(None, help="steps (grid points) of inversion and "
                                                  "decoding"),
              solver: Optional[Solver] = SolverOpt,
              spacing: Optional[Spacing] = SpacingOpt,
              device: Optional[Device] = DeviceOpt,
              abduction: Optional[Abduction] = typer.Option(None, help="invert, partial or noise"),
              parents_from: Optional[ParentsFrom] = typer.Option(None, help="labels or image"),
              max_images: Optional[int] = typer.Option(None, help="images of the split, 0 = all"),
              image: list[Path] = typer.Option(
                  [], "--image", help="an image file (PNG, JPEG) of the model's size instead of "
                  "the dataset's images, repeatable; parents read from the image"),
              rows: Optional[str] = typer.Option(
                  None, "--rows", help="these dataset rows instead of the split's images, e.g. "
                  "3,17,42 (the rows `cdae render`'s grid shows); each image's parents are "
                  "printed"),
              out: Optional[Path] = typer.Option(None, help=OUT_HELP),
              strict: bool = typer.Option(False, help="refuse values outside the training "
                                          "support instead of warning"),
              shard: Optional[str] = ShardOpt,
              skip_foreign: bool = typer.Option(
                  False, "--skip-foreign", help="with --name alone: when the listed "
                  "intervention sets a variable that the active graph lacks (one of another "
                  "profile's graph), write its file with zero rows and a `skipped` attr and exit "
                  "0 instead of failing (what dvc.yaml's intervene stages run)"),
              as_json: bool = JsonOpt) -> None:
    """Counterfactuals of the test images under do(var=value): abduct, act, predict.

    Examples: cdae intervene --var thickness --value 2.0 ;
    cdae intervene --do thickness=3.5 --do intensity=150 --guidance 1 ;
    cdae intervene --name thickness_2  (as listed in params.yaml) ;
    cdae intervene --var thickness --value 2 --rows 3,17  (these dataset rows) ;
    cdae intervene --var thickness --value 2 --image my_digit.png  (your own image) ;
    cdae intervene --var thickness --values 1.0:4.0:7  (a sweep -> sweep_thickness.h5;
    `cdae render` draws it as reports/figures/traversal_thickness.png) ;
    cdae intervene --var thickness --value 2 --shard 0/8  (one slice; `cdae merge` joins them)
    """
    def go():
        from cdae.counterfactual import parse_rows
        from cdae.errors import InterventionError
        from stages import intervene as stage

        chosen_by = [flag for flag, given in (("--image", bool(image)),
                                              ("--rows", rows is not None),
                                              ("--max-images", max_images is not None),
                                              # image files are few: no shards of them
                                              ("--shard", shard is not None and bool(image)))
                     if given]
        if len(chosen_by) > 1:
            raise InterventionError(f"{' and '.join(chosen_by)} both choose the images",
                                    hint="give one of them")
        chosen = parse_rows(rows) if rows is not None else None
        files = [str(f) for f in image] or None
        source = parents_from or (ParentsFrom.IMAGE if files else None)
        if skip_foreign and (name is None or var is not None or value is not None
                             or values is not None or do):
            raise InterventionError("--skip-foreign goes with --name alone",
                                    hint="it skips a listed intervention whose variables are "
                                    "not in the active graph, e.g. --name thickness_2 "
                                    "--skip-foreign")
        if values is not None:
            if value is not None or do:
                raise InterventionError("--values sweeps one --var; it does not go with --value "
                                        "or --do", hint="e.g. --var thickness --values 1.0:4.0:7")
            if var is None:
                raise InterventionError("--values needs --var",
                                        hint="e.g. --var thickness --values 1.0:4.0:7")
            p = _params(params, profile, solver, spacing, device)
            from cdae.counterfactual import parse_values

            sweep = parse_values(values, var, p.graph)
            return stage.run_sweep(p, var, sweep, name=name, out=str(out) if out else None,
                                   strict=strict, guidance=guidance, steps=steps,
                                   abduction=abduction, parents_from=source,
                                   max_images=max_images, shard=shard,
                                   guidance_mode=guidance_mode, rows=chosen,
                                   image_files=files)
        p = _params(params, profile, solver, spacing, device)
        items = list(do)
        if (var is None) != (value is None):
            raise InterventionError("--var and --value go together",
                                    hint="e.g. --var thickness --value 2.0")
        if var is not None:
            items.insert(0, f"{var}={value}")
        run_name = name
        if not items:
            if name is None:
                raise InterventionError("no intervention given", hint="use --var/--value, --do "
                                        "VAR=VALUE or --name NAME from params.yaml")
            listed = p.intervene.interventions
            if name not in listed:
                raise InterventionError(f"--name '{name}' is not in intervene.interventions",
                                        hint=f"listed: {', '.join(listed) or '(none)'}")
            foreign = stage.foreign_variables(listed[name], p.graph)
            if foreign and skip_foreign:
                return stage.write_skipped(p, name, listed[name], out=str(out) if out else None)
            if foreign:
                raise InterventionError(
                    f"--name '{name}': {stage.skip_reason(foreign, p.profile)}",
                    hint=f"variables: {', '.join(p.graph.names)}; use the profile whose graph "
                    "has it, or --skip-foreign to write an empty file as `dvc repro` does")
            items = [f"{k}={v}" for k, v in listed[name].items()]
        from cdae.counterfactual import parse_do

        parsed = parse_do(items, p.graph)
        return stage.run(p, parsed, name=run_name, out=str(out) if out else None, strict=strict,
                         guidance=guidance, steps=steps, abduction=abduction,
                         parents_from=source, max_images=max_images, shard=shard,
                         guidance_mode=guidance_mode, rows=chosen,
                         image_files=files)

    def text(r: dict[str, Any]) -> str:
        from stages.intervene import SKIPPED_ATTR, FileKind

        if SKIPPED_ATTR in r:
            return (f"intervene {r['name']}: skipped, {r[SKIPPED_ATTR]}; wrote {r['path']} "
                    "with no counterfactuals")
        return _format_sweep(r) if r["kind"] == FileKind.SWEEP else _format_intervention(r)

    _emit(_run(go), as_json, text)


@app.command()
def render(params: Path = ParamsOpt, profile: Optional[str] = ProfileOpt,
           rows: Optional[int] = typer.Option(None, help="images (rows) per grid"),
           sweep: list[Path] = typer.Option(
               [], "--sweep", help="sweep file(s) of `cdae intervene --values` to draw as "
               "traversal strips (repeatable); default: every sweep file in the "
               "counterfactuals folder"),
           as_json: bool = JsonOpt) -> None:
    """PNG figures annotated with parent values and units: counterfactuals.png (each row a
    factual image and its counterfactuals, one column per intervention file in the
    counterfactuals folder) and, per sweep file, traversal_VAR.png (each row a factual image,
    then the same digit at increasing values of VAR).

    Sweep files in the counterfactuals folder are found by themselves; --sweep names others
    (then only those are drawn).

    Examples: cdae render --rows 8 ;
    cdae intervene --var thickness --values 1:4:7 && cdae render
    """
    def go():
        from stages import render as stage

        return stage.run(_params(params, profile), rows=rows,
                         sweeps=[str(s) for s in sweep] or None)

    _emit(_run(go), as_json, lambda r: "\n".join(
        [f"wrote {f}" for f in r["figures"]]
        + [f"left out {f}: {why}" for f, why in r.get("skipped", {}).items()]))


@app.command("train-predictors")
def train_predictors(params: Path = ParamsOpt, profile: Optional[str] = ProfileOpt,
                     as_json: bool = JsonOpt) -> None:
    """Train the anti-causal predictors q(v | x, children of v) that `evaluate` uses for
    predicted effectiveness -> models/predictors.pt (with each predictor's test error).

    Example: cdae train-predictors && cdae evaluate
    """
    def go():
        from stages import train_predictors as stage

        return stage.run(_params(params, profile))

    def text(r: dict[str, Any]) -> str:
        lines = [f"wrote {r['path']} ({r['seconds']} s)"]
        for var, err in r["test_error"].items():
            lines.append(f"  {var}: " + ", ".join(f"{k}={v:.4g}" for k, v in err.items()
                                                  if k.startswith("test_")))
        return "\n".join(lines)

    _emit(_run(go), as_json, text)


@app.command()
def evaluate(params: Path = ParamsOpt, profile: Optional[str] = ProfileOpt,
             device: Optional[Device] = DeviceOpt,
             split: Optional[str] = typer.Option(None, help="split to score (evaluate.split): "
                                                 "test, or train to choose settings"),
             max_images: Optional[int] = typer.Option(None, help="images of the split "
                                                      "(evaluate.max_images), 0 = all"),
             seeds: Optional[int] = typer.Option(None, help="draws per intervention "
                                                 "(evaluate.seeds)"),
             steps: Optional[int] = typer.Option(None, help="grid points of inversion and "
                                                 "decoding (evaluate.steps)"),
             guidance: Optional[float] = typer.Option(None, help="guidance scale "
                                                      "(evaluate.guidance)"),
             cycle_images: Optional[int] = typer.Option(None, help="images of the composition "
                                                        "and reversibility chains "
                                                        "(evaluate.cycle_images), 0 = none"),
             curves: bool = typer.Option(True, help="the guidance and steps curves "
                                         "(evaluate.sweep_guidance, sweep_steps); --no-curves "
                                         "skips them"),
             out: Optional[Path] = typer.Option(None, help="folder for this scorecard's "
                                                "metrics.json, evaluation.md and evaluation/ "
                                                "(default paths.metrics, paths.report_dir)"),
             as_json: bool = JsonOpt) -> None:
    """The counterfactual scorecard -> metrics.json, plots and reports/evaluation.md.

    Options override params.yaml's evaluate section for this run; with them, --out keeps the
    pipeline's scorecard as it is.

    Example: cdae evaluate && dvc metrics show

    Example: cdae evaluate --split train --max-images 50 --seeds 1 --no-curves --out runs/check
    """
    def go():
        from stages import evaluate as stage

        p = stage.with_overrides(
            _params(params, profile, device=device), out, split=split, max_images=max_images,
            seeds=seeds, steps=steps, guidance=guidance, cycle_images=cycle_images,
            **({} if curves else {"sweep_guidance": (), "sweep_steps": ()}))
        return stage.run(p)

    def text(r: dict[str, Any]) -> str:
        from stages.evaluate import format_metrics

        return format_metrics(r)

    _emit(_run(go), as_json, text)


@app.command()
def combine(runs: list[Path] = typer.Argument(..., help="the metrics.json of each training, "
                                              "or its folder (two or more; `cdae evaluate` "
                                              "writes them)"),
            out: Optional[Path] = typer.Option(None, help="the combined scorecard, a .json "
                                               "file (default paths.report_dir/combined.json); "
                                               "its .md is written beside it"),
            params: Optional[Path] = typer.Option(
                None, "--params", help="params file (floors, graph, report_dir); default "
                "params.yaml where there is one, else the floors and graph the scorecards "
                "recorded"),
            profile: Optional[str] = ProfileOpt, as_json: bool = JsonOpt) -> None:
    """Several trainings' scorecards as one: each number's mean and standard deviation between
    the trainings, and evaluate.floors read off the means and off each training.

    Example: cdae combine runs/seed0/metrics.json runs/seed1/metrics.json runs/seed2/metrics.json
    """
    def go():
        from stages import combine as stage

        default = Path(ParamsOpt.default)
        project = params is not None or profile is not None or default.is_file()
        return stage.run(_params(params or default, profile) if project else None, runs,
                         out=out)

    def text(r: dict[str, Any]) -> str:
        seeds = ", ".join("?" if s is None else str(s) for s in r["train_seeds"])
        lines = [f"wrote {r['path']} and {r['markdown']}: {r['scorecards']} scorecards "
                 f"(train seeds {seeds})"]
        if r["floors"]:
            lines.append(f"  floors met by the mean: {sum(f['met'] for f in r['floors'])} of "
                         f"{len(r['floors'])}")
        for f in r["floors"]:
            mean = "no such number" if f["mean"] is None else (
                f"{f['mean']:.3g}" + (f" ± {f['std']:.2g}" if f["std"] is not None else ""))
            lines.append(f"    {f['metric']} {f['floor']}: {mean}  "
                         f"({'met' if f['met'] else 'missed'}; {f['trainings_meeting']} of "
                         f"{r['scorecards']} trainings meet it)")
        if r["left_out"]:
            lines.append(f"  left out (not in every scorecard): {len(r['left_out'])} numbers")
        if r["settings"] != "params":
            lines.append("  floors and graph: the scorecards' own (no params.yaml here)")
        return "\n".join(lines)

    _emit(_run(go), as_json, text)


@app.command()
def report(params: Path = ParamsOpt, profile: Optional[str] = ProfileOpt,
           out: Optional[Path] = typer.Option(None, help="output HTML file (default "
                                              "paths.report_dir/report.html)"),
           as_json: bool = JsonOpt) -> None:
    """One offline HTML page: causal graph, training loss, figures, metrics with meanings.

    Images are embedded (no network, no JavaScript): the file can be mailed or archived alone.
    Parts whose inputs are missing (no metrics yet, say) are named in the page.

    Example: cdae report && chromium reports/report.html
    """
    def go():
        from stages import report as stage

        return stage.run(_params(params, profile), out=str(out) if out else None)

    def text(r: dict[str, Any]) -> str:
        lines = [f"wrote {r['path']}: {r['images']} images, {len(r['metrics'])} metrics"]
        lines += [f"  missing: {m}" for m in r["missing"]]
        return "\n".join(lines)

    _emit(_run(go), as_json, text)


@app.command()
def info(path: Path = typer.Argument(..., help="dataset/latents/counterfactual .h5 or "
                                     "checkpoint .pt"),
         as_json: bool = JsonOpt) -> None:
    """What a file holds: variables with units and ranges, the graph, sizes, steps, versions.

    Example: cdae info models/model.pt
    """
    def go():
        from stages import info as stage

        return stage.describe(path)

    def text(r: dict[str, Any]) -> str:
        from stages.info import format_info

        return format_info(r)

    _emit(_run(go), as_json, text)


def main() -> None:
    """Console-script entry point (also `python -m cdae`). A bad flag or option value is told as
    every user error is: one ``error: ...`` line (naming the command's --help), exit 2."""
    import importlib

    # click's exceptions, or those of the copy of click that newer typer versions carry
    clickx = importlib.import_module(typer.BadParameter.__module__)
    try:
        code = app(standalone_mode=False)
    except getattr(clickx, "NoArgsIsHelpError", ()) as err:  # a bare `cdae`: the help
        err.show()
        code = err.exit_code
    except clickx.UsageError as err:
        where = err.ctx.command_path if err.ctx is not None else "cdae"
        typer.echo(f"error: {err.format_message()} (see `{where} --help`)", err=True)
        code = err.exit_code
    except clickx.ClickException as err:
        typer.echo(f"error: {err.format_message()}", err=True)
        code = err.exit_code
    except typer.Abort:
        typer.echo("Aborted!", err=True)
        code = 1
    finally:
        sys.stdout.flush()
    sys.exit(code if isinstance(code, int) else 0)
