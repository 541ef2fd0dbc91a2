"""Counterfactual generation: abduction, action, prediction (METHOD.md), and the notebook API.

>>> engine = CounterfactualEngine.load("models/model.pt")          # doctest: +SKIP
>>> result = engine.counterfactual(images, do={"thickness": 2.0})   # doctest: +SKIP
>>> result.images, result.parents_cf                                  # doctest: +SKIP

Images are uint8 (N, C, H, W) 0..255 at the API boundary; values are RAW label units.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import torch

from cdae import config as cfg
from cdae.checkpoint import load_checkpoint
from cdae.diffusion import GaussianDiffusion, guided_eps_fn
from cdae.errors import ConfigError, DataError, InterventionError
from cdae.graph import CausalGraph
from cdae.model import CausalDiffAE

_DO_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(\S+)\s*$")


def parse_do(items: Iterable[str], graph: CausalGraph) -> dict[str, float]:
    """Parse ``["thickness=2.0", "digit=3"]`` into ``{"thickness": 2.0, "digit": 3.0}``.

    Raises InterventionError for a malformed item, an unknown variable, a non-number, a value
    that is not one of a categorical variable's classes or lies outside a continuous variable's
    declared range, or the same variable twice.
    """
    out: dict[str, float] = {}
    for item in items:
        m = _DO_RE.match(item)
        if m is None:
            raise InterventionError(f"--do '{item}' is malformed", hint="write --do VAR=VALUE, "
                                    "e.g. --do thickness=2.0")
        name, text = m.group(1), m.group(2)
        add_intervention(out, name, text, graph)
    return out


_SWEEP_HINT = "write START:STOP:COUNT (COUNT values, both ends included), e.g. 1.0:4.0:7, " \
    "or a list, e.g. 1,2,3"


def parse_values(spec: str, name: str, graph: CausalGraph) -> list[float]:
    """Parse the sweep ``--values`` of variable ``name`` into raw values (the variable's unit).

    ``START:STOP:COUNT`` gives COUNT evenly spaced values, both ends included (like
    ``numpy.linspace``); ``1,2.5,3`` gives the listed values in that order. A sweep has at least
    2 values; each is validated as in ``--do`` (a finite number, one of a categorical variable's
    classes, inside the declared range). Raises InterventionError naming the problem.
    """
    graph.require(name)
    text = spec.strip()
    if ":" in text:
        parts = [p.strip() for p in text.split(":")]
        if len(parts) != 3 or not all(parts) or "," in text:
            raise InterventionError(f"--values '{spec}' is malformed", hint=_SWEEP_HINT)
        start, stop, count_text = parts
        try:
            count = int(count_text)
        except ValueError:
            raise InterventionError(f"--values '{spec}': COUNT '{count_text}' is not an integer",
                                    hint=_SWEEP_HINT) from None
        if count < 2:
            raise InterventionError(f"--values '{spec}': COUNT must be at least 2, got {count}",
                                    hint=_SWEEP_HINT)
        ends: dict[str, float] = {}
        add_intervention(ends, name, start, graph)
        lo = ends.pop(name)
        add_intervention(ends, name, stop, graph)
        raw: list[str | float] = [float(v) for v in np.linspace(lo, ends[name], count)]
    else:
        raw = [p.strip() for p in text.split(",")]
        if not all(raw):
            raise InterventionError(f"--values '{spec}' is malformed", hint=_SWEEP_HINT)
        if len(raw) < 2:
            raise InterventionError(f"--values '{spec}' holds one value",
                                    hint="a sweep needs at least 2; for one use --value")
    out = []
    for v in raw:
        one: dict[str, float] = {}
        add_intervention(one, name, v, graph)
        out.append(one[name])
    return out


def parse_rows(spec: str) -> list[int]:
    """Parse ``--rows`` (``3,17,42``): dataset rows, as the files' ``index`` and `cdae render`'s
    grid name them, in the given order without repeats. Raises ConfigError naming the problem;
    whether each row exists is checked against the dataset by the caller."""
    from cdae.errors import ConfigError

    hint = "give dataset rows as a comma list, e.g. --rows 3,17,42; `cdae render` shows them"
    parts = [p.strip() for p in spec.split(",")]
    if not all(parts):
        raise ConfigError(f"--rows '{spec}' is malformed", hint=hint)
    rows: list[int] = []
    for part in parts:
        try:
            row = int(part)
        except ValueError:
            raise ConfigError(f"--rows: '{part}' is not a row number", hint=hint) from None
        if row < 0:
            raise ConfigError(f"--rows: row {row} is negative", hint=hint)
        if row not in rows:
            rows.append(row)
    return rows


def add_intervention(do: dict[str, float], name: str, value: str | float,
                     graph: CausalGraph) -> None:
    """Validate one (variable, value) pair and add it to ``do`` (in place)."""
    graph.require(name)
    if name in do:
        raise InterventionError(f"variable '{name}' is intervened on twice",
                                hint="give each variable one value")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InterventionError(f"value '{value}' for '{name}' is not a number",
                                hint=f"e.g. {name}=2.0") from None
    if not math.isfinite(number):
        raise InterventionError(f"value '{value}' for '{name}' is not finite",
                                hint="give a finite number")
    var = graph.variable(name)
    if var.is_categorical and (number != round(number) or not 0 <= number < var.classes):
        raise InterventionError(f"value '{value}' for '{name}' is not one of its classes",
                                hint=f"use an integer 0..{var.classes - 1}")
    if var.outside(number):
        span = var.describe_range()
        unit = f" {var.unit}" if var.unit and var.unit != span else ""
        raise InterventionError(f"value '{value}' for '{name}' is outside its range {span}{unit}",
                                hint=f"choose a value in {span}, or widen {name}'s range under "
                                "graph.variables in params.yaml")
    do[name] = number


@dataclass
class Factual:
    """Abduction result for a batch: exogenous u, factual z (B, K, d), style, x_T (B, C, H, W)."""

    u: torch.Tensor
    z: torch.Tensor
    style: torch.Tensor | None
    x_T: torch.Tensor
    parents: torch.Tensor  # (B, K) raw values the model uses as factual parents
    from_labels: torch.Tensor  # (B, K) bool


@dataclass
class Encoded:
    """What the encoder gives: u, z (N, K, d), style (N, style_dim) or None, parents (N, K) raw."""

    u: torch.Tensor
    z: torch.Tensor
    style: torch.Tensor | None
    parents: np.ndarray


@dataclass
class CounterfactualResult:
    """images uint8 (N, C, H, W); parents_factual / parents_cf (N, K) in raw units."""

    images: np.ndarray
    parents_factual: np.ndarray
    parents_cf: np.ndarray
    names: tuple[str, ...]
    do: dict[str, float]
    settings: dict[str, object] = field(default_factory=dict)


def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, C, H, W) 0..255 -> float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).cpu().numpy()


def partial_grid_steps(steps: int, t_stop: int | None, num_timesteps: int) -> int:
    """Grid points of a grid that stops at ``t_stop`` (None: the full grid) for ``steps`` points
    over all ``num_timesteps``: a partial grid keeps the full grid's density."""
    if t_stop is None:
        return steps
    return max(1, round(steps * (t_stop + 1) / num_timesteps))


#: fewest grid points at which Heun with fixed-point inversion measured stable: at 10 points the
#: inversion does not converge on the coarse top steps (null-intervention L1 18.7; README)
HEUN_MIN_STEPS = 15


class CounterfactualEngine:
    """A trained model (EMA weights) plus its diffusion schedule, ready to answer do-queries."""

    def __init__(self, model: CausalDiffAE, diffusion: GaussianDiffusion,
                 label_quantiles: np.ndarray | None = None, step: int = 0,
                 null_trained: bool = True, intervene: cfg.InterveneParams | None = None,
                 sampling: cfg.DiffusionParams | None = None,
                 train_seed: int | None = None) -> None:
        self.model = model.eval()
        self.diffusion = diffusion
        self.graph = model.graph
        self.device = next(model.parameters()).device
        self.label_quantiles = label_quantiles
        self.step = step
        self.train_seed = train_seed  # train.seed of the checkpoint (None: not from one)
        # inversion_iters (fixed-point refinements per inversion step), solver (the ODE solver of
        # inversion and decoding) and spacing (their timestep grid): ``sampling``'s, else
        # params.yaml's defaults
        self.set_sampling(sampling if sampling is not None else cfg.DiffusionParams())
        # whether training ever showed the learned null condition (train.p_uncond or p_block_drop
        # > 0): classifier-free (unconditional) guidance needs it
        self.null_trained = null_trained
        # what :meth:`counterfactual` does when a call leaves a setting out: the intervene
        # section of the model's params (what `cdae intervene` does), else params.yaml's defaults
        self.defaults = intervene if intervene is not None else cfg.InterveneParams()

    def set_sampling(self, dp: cfg.DiffusionParams) -> None:
        """Use the sampling settings of ``dp`` (inversion_iters, solver, spacing): they are not
        training settings, so the current params win over the checkpoint's."""
        self.inversion_iters = dp.inversion_iters
        self.solver = cfg.Solver(dp.solver)
        self.spacing = cfg.Spacing(dp.spacing)

    def sampling_attrs(self) -> dict[str, object]:
        """The sampling settings as file attributes (what inverted or decoded a file's images)."""
        return {"inversion_iters": self.inversion_iters, "solver": self.solver.value,
                "spacing": self.spacing.value}

    def sampling_warnings(self, steps: int) -> list[str]:
        """One-line warnings for sampling settings known to fail at ``steps`` grid points."""
        if self.solver is cfg.Solver.HEUN and steps < HEUN_MIN_STEPS:
            return [f"{steps} steps of heun: below {HEUN_MIN_STEPS} its inversion measured "
                    "unstable (a null intervention moved pixels by 18.7 at 10 steps); use "
                    f"{HEUN_MIN_STEPS}+ steps or --solver ddim"]
        return []

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "CounterfactualEngine":
        from cdae.training import build_model, make_diffusion

        ck = load_checkpoint(path, map_location="cpu")
        try:
            params = cfg.resolve(ck["params"], profile="default")
        except cfg.ConfigError as err:
            raise DataError(f"{path}: checkpoint settings are invalid ({err})",
                            hint="re-run `cdae train`") from None
        model = build_model(params, tuple(ck["image_shape"]), np.asarray(ck["label_mean"]),
                            np.asarray(ck["label_std"]))
        try:
            model.load_state_dict(ck["ema"])
        except RuntimeError as err:
            raise DataError(f"{path}: weights do not match the stored settings "
                            f"({str(err).splitlines()[0][:100]})",
                            hint="re-run `cdae train`") from None
        model.to(device)
        q = ck.get("label_quantiles")
        engine = cls(model, make_diffusion(params).to(device),
                     np.asarray(q) if q is not None else None, int(ck.get("step", 0)),
                     null_trained=params.train.p_uncond > 0 or params.train.p_block_drop > 0,
                     intervene=params.intervene, sampling=params.diffusion,
                     train_seed=params.train.seed)
        return engine

    @classmethod
    def for_params(cls, path: str | Path, params: cfg.Params) -> "CounterfactualEngine":
        """The model at ``path`` on ``params.device`` (auto: cuda when present), sampling with
        ``params.diffusion``'s solver, grid and inversion iterations and, in :meth:`counterfactual`,
        ``params.intervene``'s settings: what the stages use."""
        from cdae.training import select_device

        engine = cls.load(path, device=select_device(params.device, "device"))
        engine.set_sampling(params.diffusion)
        engine.defaults = params.intervene
        return engine

    # ------------------------------------------------------------------ support checks
    def percentile(self, name: str, value: float) -> float | None:
        """Percentile (0..100) of ``value`` in the train split's labels of ``name``."""
        if self.label_quantiles is None:
            return None
        q = self.label_quantiles[self.graph.index(name)]
        if not np.isfinite(q).all():
            return None
        return float(np.interp(value, q, np.linspace(0, 100, q.size)))

    # ------------------------------------------------------------------ the three steps
    def _eps_fn(self, c: torch.Tensor, guidance: float) -> Callable:
        return guided_eps_fn(self.model.eps, c, self.model.null_cond, guidance)

    @torch.no_grad()
    def abduct(self, images: torch.Tensor, labels: torch.Tensor | None, *, steps: int,
               abduction: cfg.Abduction = cfg.Abduction.INVERT, t0: int = 700,
               generator: torch.Generator | None = None,
               inversion_iters: int | None = None) -> Factual:
        """Abduction. images (B, C, H, W) in [-1, 1]; labels (B, K) raw (NaN = unknown) or None
        (parents read from the image). Returns u, z and x_T (x_{t0} for partial)."""
        ab = self.model.abduct(images, labels)
        c = self.model.condition(ab.z, ab.style)
        if abduction is cfg.Abduction.NOISE:
            t = torch.full((images.shape[0],), self.diffusion.num_timesteps - 1,
                           device=images.device, dtype=torch.long)
            noise = torch.randn(images.shape, generator=generator, device=images.device)
            x_T = self.diffusion.q_sample(images, t, noise)
        else:
            t_stop = t0 if abduction is cfg.Abduction.PARTIAL else None
            iters = self.inversion_iters if inversion_iters is None else inversion_iters
            x_T = self.diffusion.ddim_invert(images, self._eps_fn(c, 0.0),
                                             self._steps_for(steps, t_stop), t_stop=t_stop,
                                             fixed_point_iters=iters, solver=self.solver,
                                             spacing=self.spacing)
        parents = self.model.read_labels(ab.z)
        if labels is not None:
            parents = torch.where(torch.isfinite(labels), labels, parents)
        return Factual(ab.u, ab.z, ab.style, x_T, parents, ab.from_labels)

    def _steps_for(self, steps: int, t_stop: int | None) -> int:
        return partial_grid_steps(steps, t_stop, self.diffusion.num_timesteps)

    @torch.no_grad()
    def intervene(self, factual: Factual,
                  do: Mapping[str, float | np.ndarray | torch.Tensor]) -> torch.Tensor:
        """Action: z_cf (B, K, d). Intervened blocks := prior mean of the raw value (a number, or
        one value per image (B,)); only their descendants are recomputed with the abducted u."""
        if not do:
            return factual.z.clone()
        b = factual.z.shape[0]
        dev = factual.z.device
        y = torch.full((b, len(self.graph.names)), float("nan"), device=dev)
        for name, value in do.items():
            y[:, self.graph.index(name)] = torch.as_tensor(value, dtype=torch.float32,
                                                           device=dev)
        mu = self.model.prior_mean(y)
        blocks = {self.graph.index(n): mu[:, self.graph.index(n)] for n in do}
        return self.model.causal.intervene(factual.z, factual.u, blocks)

    @torch.no_grad()
    def predict(self, factual: Factual, z_cf: torch.Tensor, *, steps: int, guidance: float,
                abduction: cfg.Abduction = cfg.Abduction.INVERT, t0: int = 700,
                guidance_mode: cfg.GuidanceMode = cfg.GuidanceMode.FACTUAL) -> torch.Tensor:
        """Prediction: DDIM-decode x_T with c_cf = flatten(z_cf) and guidance s -> (B, C, H, W).

        ``guidance_mode`` FACTUAL (params' default): eps~ = eps(c_cf) + s (eps(c_cf) - eps(c)),
        c the factual condition: it amplifies only what the intervention changed; UNCONDITIONAL:
        eps~ = eps(c_cf) + s (eps(c_cf) - eps(null)) (classifier-free). One doubled-batch
        forward either way."""
        if (guidance_mode is cfg.GuidanceMode.UNCONDITIONAL and guidance != 0
                and not self.null_trained):
            raise ConfigError("guidance_mode unconditional needs the learned null condition, "
                              "but this model was trained with train.p_uncond 0",
                              hint="use guidance_mode factual, guidance 0, or retrain with "
                              "train.p_uncond > 0")
        c = self.model.condition(z_cf, factual.style)
        ref = (self.model.null_cond if guidance_mode is cfg.GuidanceMode.UNCONDITIONAL
               else self.model.condition(factual.z, factual.style))
        t_start = t0 if abduction is cfg.Abduction.PARTIAL else None
        eps_fn = guided_eps_fn(self.model.eps, c, ref, guidance)
        return self.diffusion.ddim_sample(factual.x_T, eps_fn, self._steps_for(steps, t_start),
                                          t_start=t_start, solver=self.solver,
                                          spacing=self.spacing)

    # ------------------------------------------------------------------ notebook helpers
    @torch.no_grad()
    def encode(self, images: np.ndarray, labels: np.ndarray | None = None) -> Encoded:
        """uint8 images (N, C, H, W) -> u, z (N, K, d), style and parents (N, K) raw units.

        No diffusion: the encoder (and, where ``labels`` (N, K) raw with NaN = unknown are given,
        the labels through the mechanisms) gives the exogenous noise and the latents."""
        x = to_unit(images).to(self.device)
        y = (torch.as_tensor(labels, dtype=torch.float32, device=self.device)
             if labels is not None else None)
        ab = self.model.abduct(x, y)
        parents = self.model.read_labels(ab.z)
        if y is not None:
            parents = torch.where(torch.isfinite(y), y, parents)
        return Encoded(ab.u, ab.z, ab.style, parents.cpu().numpy())

    @torch.no_grad()
    def decode(self, x_T: torch.Tensor, z: torch.Tensor, *, style: torch.Tensor | None = None,
               steps: int = 50, guidance: float = 0.0) -> np.ndarray:
        """Decode x_T (N, C, H, W) from t = T by the deterministic ODE (the engine's solver and
        grid: DDIM or Heun) with condition flatten(z) (z (N, K, d), plus
        ``style`` when the model has a style block) -> uint8 images (N, C, H, W). With x_T from
        :meth:`abduct` and its z this reconstructs the images; with x_T ~ N(0, I) it samples new
        images with those latents."""
        c = self.model.condition(z.to(self.device), style)
        x = self.diffusion.ddim_sample(x_T.to(self.device), self._eps_fn(c, guidance), steps,
                                       solver=self.solver, spacing=self.spacing)
        return to_uint8(x)

    # ------------------------------------------------------------------ one call
    @torch.no_grad()
    def counterfactual(self, images: np.ndarray, do: Mapping[str, float], *,
                       labels: np.ndarray | None = None, guidance: float | None = None,
                       steps: int | None = None, abduction: cfg.Abduction | None = None,
                       t0: int | None = None, guidance_mode: cfg.GuidanceMode | None = None,
                       batch_size: int | None = None, seed: int = 0,
                       progress: Callable[[int], None] | None = None) -> CounterfactualResult:
        """Counterfactuals for uint8 images (N, C, H, W) under ``do`` ({name: raw value}).

        ``labels`` (N, K) raw, NaN = unknown: abduct parents from labels where given (else the
        image). A setting left out (None) is the engine's :attr:`defaults`: for a loaded model
        the intervene section of its params, so the call answers what `cdae intervene` answers.
        Returns images, factual and counterfactual parents (what the model believes).
        """
        d = self.defaults
        guidance = d.guidance if guidance is None else guidance
        steps = d.steps if steps is None else steps
        abduction = d.abduction if abduction is None else cfg.Abduction(abduction)
        t0 = d.t0 if t0 is None else t0
        guidance_mode = d.guidance_mode if guidance_mode is None else cfg.GuidanceMode(guidance_mode)
        batch_size = d.batch_size if batch_size is None else batch_size
        checked: dict[str, float] = {}
        for name, value in do.items():
            add_intervention(checked, name, value, self.graph)
        outs, pf, pc = [], [], []
        gen = torch.Generator(device=self.device).manual_seed(seed)
        for lo in range(0, images.shape[0], batch_size):
            x = to_unit(images[lo:lo + batch_size]).to(self.device)
            y = (torch.as_tensor(labels[lo:lo + batch_size], dtype=torch.float32,
                                 device=self.device) if labels is not None else None)
            fact = self.abduct(x, y, steps=steps, abduction=abduction, t0=t0, generator=gen)
            z_cf = self.intervene(fact, checked)
            x_cf = self.predict(fact, z_cf, steps=steps, guidance=guidance, abduction=abduction,
                                t0=t0, guidance_mode=guidance_mode)
            outs.append(to_uint8(x_cf))
            pf.append(fact.parents.cpu().numpy())
            cf_par = self.model.read_labels(z_cf)
            for name, value in checked.items():
                cf_par[:, self.graph.index(name)] = value
            pc.append(cf_par.cpu().numpy())
            if progress is not None:
                progress(x.shape[0])
        return CounterfactualResult(
            images=np.concatenate(outs), parents_factual=np.concatenate(pf),
            parents_cf=np.concatenate(pc), names=self.graph.names, do=checked,
            settings={"guidance": guidance, "guidance_mode": guidance_mode.value, "steps": steps,
                      "abduction": abduction.value, "t0": t0,
                      "parents_from": "labels" if labels is not None else "image"})
