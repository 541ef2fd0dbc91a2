"""Stage `intervene`: counterfactuals of a split's images under do-interventions -> HDF5.

Output layout of one intervention (``cdae intervene --var/--do/--name``)::

    /index            int64   (N,)          dataset rows; -1 - k for the k-th ``--image``
                                            file (attr ``image_files``: their paths, JSON)
    /factual          uint8   (N, C, H, W)
    /counterfactual   uint8   (N, C, H, W)
    /parents_factual  float32 (N, K)        raw units; what the model used as factual parents
    /parents_cf       float32 (N, K)        raw units; intervened values and what the learned
                                            mechanisms propagate to descendants
    attrs: kind "intervention", name, do (JSON), names (JSON), units (JSON), guidance, steps,
           abduction, parents_from, model_step

A sweep (``cdae intervene --var V --values 1.0:4.0:7``) is one file for V values of one
variable, the same images abducted once::

    /index, /factual, /parents_factual   as above
    /values           float32 (V,)          raw units of ``var``, in the order given
    /counterfactual   uint8   (V, N, C, H, W)
    /parents_cf       float32 (V, N, K)     parents_cf[v, :, var] == values[v]
    attrs: kind "sweep", var, do (JSON {var: [values]}), and the attrs above

Files written before ``kind`` existed have no such attr: they are interventions.

``cdae intervene --name X --skip-foreign`` (what dvc.yaml runs for every listed intervention)
writes, when X sets a variable the active graph lacks (an intervention of another profile's
graph), the intervention layout with zero rows and attr ``skipped`` saying why; `render` leaves
such files out.

When the latents file of `encode-latents` matches (same checkpoint, DDIM steps, parents
source, abduction ``invert`` or ``partial`` and the same t0), its x_T is reused and only decoding
runs.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from cdae import config as cfg
from cdae.atomic import atomic_path
from cdae.errors import DataError, InterventionError
from cdae.graph import CausalGraph
from cdae.progress import Progress, log
from cdae.shards import Shard, parse_shard, shard_attrs

if TYPE_CHECKING:  # heavy (torch): imported inside the functions at run time
    import torch

    from cdae.counterfactual import CounterfactualEngine, Factual
    from cdae.dataset import Dataset
    from stages.encode_latents import CachedRows

_SAFE = re.compile(r"[^A-Za-z0-9_.=+-]")


class FileKind(str, Enum):
    """What an intervene output file holds (its ``kind`` attr)."""

    INTERVENTION = "intervention"  # one do(...) for N images
    SWEEP = "sweep"  # V values of one variable for the same N images


class Role(str, Enum):
    """What a sweep does to a variable."""

    SET = "set by do"
    PROPAGATED = "propagated by the learned mechanism"
    UNCHANGED = "unchanged"


def roles(graph: CausalGraph, set_vars: Iterable[str]) -> dict[str, Role]:
    """Each variable's part in do(set_vars): set, propagated (a descendant) or unchanged."""
    set_vars = set(set_vars)
    descendants = set(graph.descendants(set_vars))
    return {n: Role.SET if n in set_vars else Role.PROPAGATED if n in descendants
            else Role.UNCHANGED for n in graph.names}


def file_kind(attrs: Any, path: str | Path) -> FileKind:
    """Kind of the intervene output ``path`` from its HDF5 attrs (no ``kind`` attr: an
    intervention); DataError naming ``path`` for an unknown kind."""
    raw = attrs.get("kind", FileKind.INTERVENTION.value)
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    try:
        return FileKind(text)
    except ValueError:
        raise DataError(f"{path}: unknown counterfactual file kind '{text}'",
                        hint="re-run `cdae intervene`") from None


def default_name(do: dict[str, float]) -> str:
    """File-safe name for an intervention, e.g. ``do_thickness=2.0``."""
    return "do_" + "_".join(f"{k}={v:g}" for k, v in do.items()) if do else "do_nothing"


def output_path(out_dir: str | Path, name: str) -> Path:
    """``out_dir/name.h5``; ``name`` may not escape ``out_dir``."""
    safe = _SAFE.sub("_", name)
    if not safe or safe.startswith(".") or safe != name:
        raise InterventionError(f"intervention name '{name}' is not a safe file name",
                                hint="use letters, digits and _ . = + - only")
    return Path(out_dir) / f"{safe}.h5"


def check_support(engine, do: dict[str, float], strict: bool) -> list[str]:
    """Warn (or, strict, fail) for values outside the train split's 0.5..99.5 percentiles."""
    notes = []
    for name, value in do.items():
        pct = engine.percentile(name, value)
        if pct is None:
            continue
        if pct <= 0.5 or pct >= 99.5:
            msg = (f"{name}={value:g} lies at the {pct:.1f}th percentile of the train split: "
                   "outside the training support, the counterfactual is an extrapolation")
            if strict:
                raise InterventionError(msg, hint="choose a value inside the support or drop "
                                        "--strict")
            log.warning(msg)
            notes.append(msg)
    return notes


def conditional_support(ds: "Dataset", do: dict[str, float], parents_cf: np.ndarray
                        ) -> dict[str, float]:
    """Per intervened continuous variable with parents: the share (0..1) of the images whose set
    value lies off the train support given the image's counterfactual parent values (outside
    the central 98% of the variable's train values at the nearest train parents:
    :func:`cdae.metrics.conditional_ranks`). parents_cf (N, K) raw. Roots are judged by the
    marginal instead (:func:`check_support`)."""
    from cdae.metrics import off_support, variable_ranks

    graph = ds.graph
    train = ds.labels[ds.split == 0]
    out: dict[str, float] = {}
    for name in do:
        if (graph.variable(name).is_categorical or not graph.parents(name)
                or parents_cf.shape[0] == 0):
            continue
        ranks = variable_ranks(graph, name, train, ds.label_std, parents_cf)
        known = np.isfinite(ranks)
        if known.any():
            out[name] = float(off_support(ranks)[known].mean())
    return out


def support_notes(graph, do: dict[str, float], off: dict[str, float], n: int) -> list[str]:
    """A warning per intervened variable whose set value is off the conditional train support
    (``off``: :func:`conditional_support`) for some of the ``n`` images; logged and returned."""
    notes = []
    for name, share in off.items():
        if share > 0:
            parents = ", ".join(graph.parents(name))
            msg = (f"{name}={do[name]:g} is off the train support given {parents} for "
                   f"{share:.0%} of the {n} images (outside the central 98% of train {name} at "
                   f"the nearest train {parents}): those counterfactuals are extrapolations")
            log.warning(msg)
            notes.append(msg)
    return notes


def range_notes(graph, do: dict[str, float], parents_cf: np.ndarray) -> list[str]:
    """A warning per variable that ``do`` did not set whose counterfactual value (parents_cf
    (N, K) raw, columns in ``graph.names`` order) leaves its declared range for some images: a
    learned mechanism extrapolating past what the variable can be. Logged and returned."""
    notes = []
    for j, var in enumerate(graph.variables):
        if var.name in do or var.range is None or parents_cf.shape[0] == 0:
            continue
        values = parents_cf[:, j]
        outside = var.outside(values)
        if outside.any():
            setting = ", ".join(f"{k}={v:g}" for k, v in do.items())
            msg = (f"under do({setting}) {var.name} propagates outside its range "
                   f"{var.describe_range()} for "
                   f"{outside.mean():.0%} of the {values.size} images (from "
                   f"{values.min():g} to {values.max():g}): the learned mechanism extrapolates "
                   "there; choose a value closer to the train support")
            log.warning(msg)
            notes.append(msg)
    return notes


def check_compatible(engine, graph, where: str, model_path: Path,
                     image_shape: tuple[int, ...] | None = None) -> None:
    """DataError saying what differs when a checkpoint does not fit the graph or the images."""
    mine, theirs = engine.graph, graph
    if mine.structure() != theirs.structure():
        if mine.names != theirs.names:
            what = f"variables {', '.join(mine.names)} vs {', '.join(theirs.names)}"
        elif mine.edges != theirs.edges:
            what = (f"edges {', '.join('->'.join(e) for e in mine.edges)} vs "
                    f"{', '.join('->'.join(e) for e in theirs.edges)}")
        else:
            what = "variable types or units differ"
        raise DataError(f"{model_path} was trained on another graph than {where} ({what})",
                        hint="re-run `cdae train` or use the matching params")
    if image_shape is not None and tuple(image_shape) != tuple(engine.model.image_shape):
        raise DataError(f"{model_path} expects images {tuple(engine.model.image_shape)}, "
                        f"{where} holds {tuple(image_shape)}", hint="re-run `cdae train`")


@dataclass
class _Setup:
    """What every counterfactual run over a split needs: engine, dataset rows, cached x_T."""

    engine: CounterfactualEngine
    ds: Dataset
    ip: cfg.InterveneParams
    rows: np.ndarray  # (N,) dataset rows (this shard's)
    cache: dict[str, CachedRows] | None  # encode-latents' u, z, x_T, parents when they match
    generator: torch.Generator  # for noise abduction, reseeded per batch
    seed: int
    shard: Shard
    shard_rows: slice  # this shard's positions among the selected rows of the split
    files: contextlib.ExitStack  # keeps the dataset and latents files open: close when done
    external: np.ndarray | None = None  # (N, C, H, W) uint8 of --image files (rows -1, -2, ...)

    def images(self, sel: np.ndarray) -> np.ndarray:
        """uint8 (B, C, H, W) of rows ``sel``: dataset rows, or -1 - k for image file k."""
        return self.ds.images[sel] if self.external is None else self.external[-1 - sel]


def pick_rows(ds: "Dataset", rows: list[int], where: str) -> np.ndarray:
    """The dataset rows ``rows`` (``--rows``) as an index array; DataError for a row the
    dataset file ``where`` does not hold."""
    n = int(ds.images.shape[0])
    missing = [r for r in rows if r >= n]
    if missing:
        raise DataError(f"--rows: {where} holds no row {missing[0]} (rows 0..{n - 1})",
                        hint="pick rows from the files' index or `cdae render`'s grid")
    return np.asarray(rows, np.int64)


def _setup(params: cfg.Params, label: str,
           validate: Callable[[CounterfactualEngine], list[str]], shard: str | None = None,
           chosen: list[int] | None = None, image_files: list[str] | None = None,
           **overrides: object) -> tuple[_Setup, list[str]]:
    """Load the model, ``validate(engine)`` the intervention (its warnings are returned), then
    the data; check they fit; choose the rows (``chosen`` dataset rows, else the split's
    ``max_images``; ``image_files``: those images instead, rows -1, -2, ..., parents from the
    image) and the x_T cache."""
    import torch

    from cdae.counterfactual import CounterfactualEngine
    from cdae.dataset import open_dataset
    from stages.encode_latents import open_cached, select

    ip = cfg.override(params.intervene, "intervene", **overrides)
    model_path = Path(params.paths.model_dir) / "model.pt"
    if chosen is not None and not image_files:  # a row the file lacks: said before the model loads
        with open_dataset(params.paths.dataset) as ds:
            pick_rows(ds, chosen, str(params.paths.dataset))
    engine = CounterfactualEngine.for_params(model_path, params)
    notes = validate(engine)
    with contextlib.ExitStack() as stack:  # handed to the caller unless this fails
        ds = stack.enter_context(open_dataset(params.paths.dataset))  # images read per batch
        check_compatible(engine, params.graph, "params.yaml", model_path)
        check_compatible(engine, ds.graph, str(params.paths.dataset), model_path,
                         ds.image_shape)
        part = parse_shard(shard)
        external = None
        if image_files:
            from cdae.dataset import read_images
            from cdae.errors import ConfigError

            if ip.parents_from is cfg.ParentsFrom.LABELS:
                raise ConfigError("--image files carry no labels: their parents are read from "
                                  "the image", hint="use --parents-from image")
            external = read_images(image_files, ds.image_shape)
            rows_all = -1 - np.arange(len(image_files), dtype=np.int64)
        elif chosen is not None:
            rows_all = pick_rows(ds, chosen, str(params.paths.dataset))
        else:
            rows_all = select(ds, ip.split, ip.max_images)
        shard_rows = part.rows(rows_all.size, ip.batch_size)
        rows = rows_all[shard_rows]
        cache = None
        if external is None and ip.abduction in (cfg.Abduction.INVERT, cfg.Abduction.PARTIAL):
            cache = stack.enter_context(open_cached(
                params.paths.latents, model_path, rows, ip.steps, ip.parents_from,
                engine.inversion_iters, abduction=ip.abduction, t0=ip.t0,
                solver=engine.solver, spacing=engine.spacing))
        files = stack.pop_all()
    for warning in engine.sampling_warnings(ip.steps):  # after the checks: errors stay one line
        log.warning(warning)
        notes.append(warning)
    log.info("%s on %d images (%s abduction%s, %d steps of %s on a %s grid, guidance %g%s%s)",
             label, rows.size, ip.abduction.value,
             (", cached x_t0" if ip.abduction is cfg.Abduction.PARTIAL else ", cached x_T")
             if cache else "", ip.steps, engine.solver.value, engine.spacing.value, ip.guidance,
             f" from the {ip.guidance_mode.value} condition" if ip.guidance else "",
             f", shard {part}" if part.enabled else "")
    gen = torch.Generator(device=engine.device)
    return _Setup(engine, ds, ip, rows, cache, gen, params.seed, part, shard_rows,
                  files, external), notes


def _abduct_batch(s: _Setup, sel: np.ndarray, sl: slice,
                  images: np.ndarray | None = None) -> Factual:
    """Abduction for dataset rows ``sel`` (positions ``sl`` in ``s.rows``) -> Factual;
    ``images``: those rows' uint8 images when the caller has read them already."""
    import torch

    from cdae.counterfactual import Factual, to_unit

    engine, ip = s.engine, s.ip
    x = to_unit(s.images(sel) if images is None else images).to(engine.device)
    if s.cache is not None:
        dev = engine.device
        z = torch.as_tensor(s.cache["z"][sl], device=dev)
        fact = Factual(u=torch.as_tensor(s.cache["u"][sl], device=dev), z=z, style=None,
                       x_T=torch.as_tensor(s.cache["x_T"][sl], device=dev),
                       parents=torch.as_tensor(s.cache["parents"][sl], device=dev),
                       from_labels=torch.zeros(z.shape[:2], dtype=torch.bool))
        if engine.model.style_dim:
            _, style = engine.model.split_latent(engine.model.encode(x)[0])
            fact.style = style
        return fact
    y = (torch.as_tensor(s.ds.labels[sel], dtype=torch.float32, device=engine.device)
         if ip.parents_from is cfg.ParentsFrom.LABELS else None)
    # seeded by the batch's position in the unsharded run: shards draw the same noise
    s.generator.manual_seed(s.seed * 1_000_003 + s.shard_rows.start + sl.start)
    return engine.abduct(x, y, steps=ip.steps, abduction=ip.abduction, t0=ip.t0,
                         generator=s.generator)


def _act_predict(s: _Setup, fact: Factual,
                 do: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Action and prediction for one batch: uint8 images (B, C, H, W) and counterfactual
    parents (B, K) in raw units (intervened values exact, descendants as the mechanisms say)."""
    from cdae.counterfactual import to_uint8

    engine, ip = s.engine, s.ip
    z_cf = engine.intervene(fact, do)
    x_cf = engine.predict(fact, z_cf, steps=ip.steps, guidance=ip.guidance,
                          abduction=ip.abduction, t0=ip.t0, guidance_mode=ip.guidance_mode)
    pc = engine.model.read_labels(z_cf)
    for var, value in do.items():
        pc[:, engine.graph.index(var)] = value
    return to_uint8(x_cf), pc.cpu().numpy()


def _settings_attrs(s: _Setup, name: str, kind: FileKind) -> dict[str, object]:
    graph = s.engine.graph
    return {"kind": kind.value, "name": name, "names": json.dumps(list(graph.names)),
            "units": json.dumps([graph.variable(n).unit for n in graph.names]),
            "guidance": s.ip.guidance,
            "guidance_mode": s.ip.guidance_mode.value, "steps": s.ip.steps,
            "abduction": s.ip.abduction.value, **s.engine.sampling_attrs(),
            "parents_from": s.ip.parents_from.value, "model_step": s.engine.step}


IMAGE_FILES_ATTR = "image_files"  # attr: the --image files of rows -1, -2, ... (JSON list)
SKIPPED_ATTR = "skipped"  # attr of an intervention file with no rows: why it was skipped


def foreign_variables(do: Any, graph: Any) -> list[str]:
    """The variables that ``do`` ({name: value}) sets and ``graph`` does not have."""
    return [k for k in do if k not in graph.names]


def skip_reason(foreign: list[str], profile: str) -> str:
    """``variable light_angle is not in this graph (profile default)``."""
    what = (f"variable {foreign[0]} is" if len(foreign) == 1
            else f"variables {', '.join(foreign)} are")
    return f"{what} not in this graph (profile {profile})"


def write_skipped(params: cfg.Params, name: str, do: Any, *,
                  out: str | None = None) -> dict[str, object]:
    """The file of listed intervention ``name`` whose ``do`` sets variables the active graph
    lacks (one of another profile's graph; dvc.yaml runs every listed name): the intervention
    layout with zero rows and a ``skipped`` attr saying why. Images are not touched and no
    model is loaded; the dataset gives the image shape."""
    import h5py

    from cdae.dataset import open_dataset

    graph = params.graph
    reason = skip_reason(foreign_variables(do, graph), params.profile)
    target = Path(out) if out else output_path(params.paths.counterfactuals_dir, name)
    with open_dataset(params.paths.dataset) as ds:  # the shape only: no image is read
        c, h, w = ds.image_shape
    k, ip = len(graph.names), params.intervene
    with atomic_path(target) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("index", (0,), np.int64)
        for key in ("factual", "counterfactual"):
            f.create_dataset(key, (0, c, h, w), np.uint8)
        for key in ("parents_factual", "parents_cf"):
            f.create_dataset(key, (0, k), np.float32)
        f.attrs.update({"kind": FileKind.INTERVENTION.value, "name": name,
                        "names": json.dumps(list(graph.names)),
                        "units": json.dumps([graph.variable(n).unit for n in graph.names]),
                        "guidance": ip.guidance, "guidance_mode": ip.guidance_mode.value, "steps": ip.steps,
                        "abduction": ip.abduction.value, "parents_from": ip.parents_from.value,
                        "do": json.dumps({v: float(x) for v, x in do.items()}),
                        SKIPPED_ATTR: reason})
    return {"name": name, "path": str(target), "kind": FileKind.INTERVENTION.value,
            "images": 0, "do": dict(do), SKIPPED_ATTR: reason}


def skipped_reason(attrs: Any) -> str | None:
    """Why an intervene output holds no rows (its ``skipped`` attr), None if it was not
    skipped."""
    raw = attrs.get(SKIPPED_ATTR)
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def run(params: cfg.Params, do: dict[str, float], *, name: str | None = None,
        out: str | None = None, strict: bool = False, guidance: float | None = None,
        steps: int | None = None, abduction: cfg.Abduction | None = None,
        parents_from: cfg.ParentsFrom | None = None,
        max_images: int | None = None, shard: str | None = None,
        guidance_mode: cfg.GuidanceMode | None = None,
        rows: list[int] | None = None,
        image_files: list[str] | None = None) -> dict[str, object]:
    """Counterfactuals of the split's images (or the dataset ``rows``, or the image files
    ``image_files``) under ``do`` ({variable: raw value}) -> one file.

    ``shard`` "i/n" (or the torchrun rank) does one contiguous run of whole batches and writes
    ``<name>.shard-i-of-n.h5``; ``cdae merge`` joins the shards into the unsharded file."""
    import h5py

    from cdae.counterfactual import add_intervention

    name = name or default_name(do)
    checked: dict[str, float] = {}

    def validate(engine: CounterfactualEngine) -> list[str]:
        for k, v in do.items():
            add_intervention(checked, k, v, params.graph)  # the ranges of params.yaml
        return check_support(engine, checked, strict)

    s, notes = _setup(params, f"intervene {name}", validate, shard, guidance=guidance,
                      steps=steps, abduction=abduction, parents_from=parents_from,
                      max_images=max_images, guidance_mode=guidance_mode, chosen=rows,
                      image_files=image_files)
    with s.files:  # the dataset (and latents) file, read batch by batch
        engine, ds, ip, rows = s.engine, s.ds, s.ip, s.rows
        target = s.shard.path(Path(out) if out
                              else output_path(params.paths.counterfactuals_dir, name))
        c, h, w = ds.image_shape
        k = len(engine.graph.names)
        with atomic_path(target) as tmp, h5py.File(tmp, "w") as f, \
                Progress(rows.size, f"intervene {name}", unit="img") as bar:
            f.create_dataset("index", data=rows.astype(np.int64))
            chunk = (min(rows.size, ip.batch_size), c, h, w) if rows.size else None
            dfa = f.create_dataset("factual", (rows.size, c, h, w), np.uint8, chunks=chunk)
            dcf = f.create_dataset("counterfactual", (rows.size, c, h, w), np.uint8,
                                   chunks=chunk)
            dpf = f.create_dataset("parents_factual", (rows.size, k), np.float32)
            dpc = f.create_dataset("parents_cf", (rows.size, k), np.float32)
            for lo in range(0, rows.size, ip.batch_size):
                sel = rows[lo:lo + ip.batch_size]
                sl = slice(lo, lo + sel.size)
                dfa[sl] = images = s.images(sel)
                fact = _abduct_batch(s, sel, sl, images)
                dcf[sl], dpc[sl] = _act_predict(s, fact, checked)
                dpf[sl] = fact.parents.cpu().numpy()
                bar.advance(sel.size)
            pf, pcf = dpf[()], dpc[()]
            f.attrs.update(_settings_attrs(s, name, FileKind.INTERVENTION))
            if image_files:
                f.attrs[IMAGE_FILES_ATTR] = json.dumps(image_files)
            off = conditional_support(ds, checked, pcf)
            f.attrs["do"] = json.dumps(checked)
            f.attrs.update(shard_attrs(s.shard, s.shard_rows, dict.fromkeys(
                ("index", "factual", "counterfactual", "parents_factual", "parents_cf"), 0)))
    notes = notes + support_notes(ds.graph, checked, off, int(rows.size))
    notes = notes + range_notes(params.graph, checked, pcf)
    role = roles(engine.graph, checked)
    summary = {
        "name": name, "path": str(target), "kind": FileKind.INTERVENTION.value,
        "images": int(rows.size), "do": checked,
        "guidance": ip.guidance, "guidance_mode": ip.guidance_mode.value, "steps": ip.steps,
        "abduction": ip.abduction.value, **s.engine.sampling_attrs(),
        "parents_from": ip.parents_from.value, "warnings": notes, "off_support": off,
        "parents": {n: {"factual_mean": float(np.mean(pf[:, j])),
                        "counterfactual_mean": float(np.mean(pcf[:, j])),
                        "intervened": n in checked,
                        "role": role[n].value,
                        "categorical": engine.graph.variable(n).is_categorical,
                        "unit": engine.graph.variable(n).unit}
                    for j, n in enumerate(engine.graph.names)},
        "examples": [{n: [round(float(pf[i, j]), 3), round(float(pcf[i, j]), 3)]
                      for j, n in enumerate(engine.graph.names)} for i in range(min(8, rows.size))],
        "example_rows": [int(r) for r in rows[:8]],  # the dataset rows of ``examples``
        "image_files": list(image_files or []),  # --image: row -1 - k is image file k
    }
    return summary


def run_sweep(params: cfg.Params, var: str, values: list[float], *, name: str | None = None,
              out: str | None = None, strict: bool = False, guidance: float | None = None,
              steps: int | None = None, abduction: cfg.Abduction | None = None,
              parents_from: cfg.ParentsFrom | None = None,
              max_images: int | None = None, shard: str | None = None,
              guidance_mode: cfg.GuidanceMode | None = None,
              rows: list[int] | None = None,
              image_files: list[str] | None = None) -> dict[str, object]:
    """Counterfactuals of the same images under do(var=v) for each of ``values`` (raw units).

    Abduction (the DDIM inversion) runs once per batch; action and prediction once per value.
    Writes one file (layout in the module docstring): counterfactual (V, N, C, H, W), values
    (V,), parents_cf (V, N, K).
    """
    import h5py

    from cdae.counterfactual import add_intervention

    graph = params.graph
    graph.require(var)
    if len(values) < 2:
        raise InterventionError(f"a sweep of '{var}' needs at least 2 values, got {len(values)}",
                                hint="e.g. --values 1.0:4.0:7")
    name = name or f"sweep_{var}"
    dos: list[dict[str, float]] = []

    def validate(engine: CounterfactualEngine) -> list[str]:
        notes: list[str] = []
        for v in values:
            one: dict[str, float] = {}
            add_intervention(one, var, v, params.graph)  # the ranges of params.yaml
            notes += check_support(engine, one, strict)
            dos.append(one)
        return notes

    s, notes = _setup(params, f"sweep {name} over {len(values)} values of {var}", validate,
                      shard, guidance=guidance, steps=steps, abduction=abduction,
                      parents_from=parents_from, max_images=max_images,
                      guidance_mode=guidance_mode, chosen=rows,
                      image_files=image_files)
    with s.files:  # the dataset (and latents) file, read batch by batch
        engine, ds, ip, rows = s.engine, s.ds, s.ip, s.rows
        target = s.shard.path(Path(out) if out
                              else output_path(params.paths.counterfactuals_dir, name))
        n_val = len(dos)
        c, h, w = ds.image_shape
        k = len(engine.graph.names)
        with atomic_path(target) as tmp, h5py.File(tmp, "w") as f, \
                Progress(rows.size * n_val, f"sweep {name}", unit="img") as bar:
            f.create_dataset("index", data=rows.astype(np.int64))
            chunk = (min(rows.size, ip.batch_size), c, h, w) if rows.size else None
            dfa = f.create_dataset("factual", (rows.size, c, h, w), np.uint8, chunks=chunk)
            f.create_dataset("values", data=np.asarray(values, np.float32))
            dcf = f.create_dataset("counterfactual", (n_val, rows.size, c, h, w), np.uint8,
                                   chunks=(1,) + chunk if chunk else None)
            dpf = f.create_dataset("parents_factual", (rows.size, k), np.float32)
            dpc = f.create_dataset("parents_cf", (n_val, rows.size, k), np.float32)
            for lo in range(0, rows.size, ip.batch_size):
                sel = rows[lo:lo + ip.batch_size]
                sl = slice(lo, lo + sel.size)
                dfa[sl] = images = s.images(sel)
                fact = _abduct_batch(s, sel, sl, images)  # once for every value
                dpf[sl] = fact.parents.cpu().numpy()
                for i, one in enumerate(dos):
                    dcf[i, sl], dpc[i, sl] = _act_predict(s, fact, one)
                    bar.advance(sel.size)
            pf, pcf = dpf[()], dpc[()]
            f.attrs.update(_settings_attrs(s, name, FileKind.SWEEP))
            if image_files:
                f.attrs[IMAGE_FILES_ATTR] = json.dumps(image_files)
            off = [conditional_support(ds, one, pcf[i]).get(var, 0.0)
                   for i, one in enumerate(dos)]
            f.attrs["var"] = var
            f.attrs["do"] = json.dumps({var: [d[var] for d in dos]})
            f.attrs.update(shard_attrs(s.shard, s.shard_rows, {
                "index": 0, "factual": 0, "parents_factual": 0, "counterfactual": 1,
                "parents_cf": 1}))
    far = [f"{var}={d[var]:g}: {share:.0%}" for d, share in zip(dos, off) if share > 0]
    if far:
        parents = ", ".join(engine.graph.parents(var))
        notes = notes + [f"off the train support given {parents} (share of the {rows.size} "
                         f"images; there the counterfactuals are extrapolations): "
                         + ", ".join(far)]
        log.warning(notes[-1])
    for i, one in enumerate(dos):
        notes = notes + range_notes(params.graph, one, pcf[i])
    role = roles(engine.graph, [var])
    variables = {}
    for j, n in enumerate(engine.graph.names):
        variables[n] = {"unit": engine.graph.variable(n).unit,
                        "categorical": engine.graph.variable(n).is_categorical,
                        "role": role[n].value, "factual_mean": float(np.mean(pf[:, j]))}
    return {
        "name": name, "path": str(target), "kind": FileKind.SWEEP.value,
        "images": int(rows.size), "var": var, "values": [d[var] for d in dos],
        "shape": [n_val, int(rows.size), c, h, w],
        "guidance": ip.guidance, "guidance_mode": ip.guidance_mode.value, "steps": ip.steps,
        "abduction": ip.abduction.value, **s.engine.sampling_attrs(),
        "parents_from": ip.parents_from.value, "warnings": notes, "variables": variables,
        "sweep": [{"value": d[var],
                   "parents": {n: float(np.mean(pcf[i, :, j]))
                               for j, n in enumerate(engine.graph.names)}}
                  for i, d in enumerate(dos)],
    }
