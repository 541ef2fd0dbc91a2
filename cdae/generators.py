"""Dataset generators: a true SCM plus the image renderer, behind one generic interface.

The pipeline's generic code (prepare-data, evaluate) talks to a :class:`Generator` and never
branches on a dataset's name; :data:`GENERATORS` maps each :class:`~cdae.config.SCMKind` to a
factory that takes the ``data`` params. Label dicts map variable name -> (N,) float64 array in
raw units. A generator either draws on base images (MNIST digits from ``data.source``) or makes
its own scenes (``data.source: scenes``); :meth:`Generator.scenes` says which.
"""

from __future__ import annotations

from typing import Callable, Mapping, Protocol

import numpy as np

from cdae import pendulum
from cdae.config import DataParams, PendulumLabels, PendulumSampling, SCMKind
from cdae.errors import InterventionError

Labels = dict[str, np.ndarray]


class Generator(Protocol):
    """What a dataset generator offers (all arrays are numpy; images uint8 (N, C, H, W))."""

    variables: tuple[str, ...]  # labelled variables it produces (subset of the graph)
    measurable: tuple[str, ...]  # variables it can measure on an image
    noise_names: tuple[str, ...]
    measurement: str  # how `measure` reads the variables (for reports)
    #: True when :meth:`counterfactual_labels` needs only the factual labels (the exogenous noise
    #: is a function of them and is abducted), so it also serves imported data, which stores
    #: no noise (pass ``noise=None``); False when it needs the stored noise
    counterfactual_from_labels: bool

    def scenes(self, dp: DataParams, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray] | None:
        """``(scene ids (N,) int64, split (N,) uint8 0 train / 1 test)`` for a generator that
        makes its own scenes (``data.source: scenes``; the ids go to :meth:`generate` as
        ``base_labels``, with ``base_images`` None); None for one that needs base images."""
        ...

    def generate(self, base_images: np.ndarray | None, base_labels: np.ndarray,
                 rng: np.random.Generator, workers: int | None,
                 progress: Callable[[int], None] | None) -> tuple[np.ndarray, Labels,
                                                                    np.ndarray]: ...

    def true_counterfactual(self, base_images: np.ndarray | None, labels: Labels,
                            noise: np.ndarray, do: Mapping[str, float | np.ndarray],
                            workers: int | None = None) -> tuple[np.ndarray, Labels]: ...

    def counterfactual_labels(self, labels: Labels, noise: np.ndarray,
                              do: Mapping[str, float | np.ndarray]) -> Labels: ...

    def measure(self, images: np.ndarray, workers: int | None = None) -> Labels: ...


class MorphoThicknessIntensity:
    """DeepSCM thickness -> intensity on MNIST digits (DATA.md section 1); digit is the base
    digit's class (a root without children)."""

    variables = ("thickness", "intensity", "digit")
    measurable = ("thickness", "intensity")
    measurement = "Morpho-MNIST morphometrics (DATA.md section 1)"
    counterfactual_from_labels = True  # e = (logit((i-64)/191) - 2(t-2.5)) / 0.5

    def __init__(self, data: DataParams | None = None) -> None:
        from cdae.scm import MorphoThicknessIntensitySCM

        self.scm = MorphoThicknessIntensitySCM()
        self.noise_names = tuple(self.scm.noise_names)

    def scenes(self, dp, rng):
        """None: the digits come from ``data.source`` (prepare-data's ``load_base``)."""
        return None

    def generate(self, base_images, base_labels, rng, workers, progress):
        """base_images uint8 (N, H, W) or (N, 1, H, W); base_labels (N,) digit classes."""
        base = base_images.reshape(base_images.shape[0], *base_images.shape[-2:])
        noise = self.scm.sample_noise(base.shape[0], rng)
        t, i = self.scm.labels_from_noise(noise)
        images = self.scm.render(base, t, i, workers=workers, progress=progress)
        labels = {"thickness": t, "intensity": i,
                  "digit": np.asarray(base_labels, np.float64)}
        return images[:, None], labels, noise

    def counterfactual_labels(self, labels, noise, do):
        """Abducts the intensity noise from the factual labels; ``noise`` is not read (None for
        imported data)."""
        t_cf, i_cf = self.scm.counterfactual_labels(
            labels["thickness"], labels["intensity"],
            {k: v for k, v in do.items() if k in ("thickness", "intensity")})
        out = dict(labels)
        out["thickness"], out["intensity"] = np.asarray(t_cf, np.float64), np.asarray(i_cf,
                                                                                      np.float64)
        if "digit" in do:
            out["digit"] = np.broadcast_to(np.asarray(do["digit"], np.float64),
                                           labels["digit"].shape).copy()
        return out

    def true_counterfactual(self, base_images, labels, noise, do, workers=None):
        """The image the true mechanism makes from the same base digit and noise.
        (An intervention on digit has no base digit to draw from: it is not supported.)"""
        if "digit" in do:
            raise ValueError("the true counterfactual of do(digit) is undefined: the base digit "
                             "is the exogenous noise of this SCM")
        cf = self.counterfactual_labels(labels, noise, do)
        base = base_images.reshape(base_images.shape[0], *base_images.shape[-2:])
        images = self.scm.render(base, cf["thickness"], cf["intensity"], workers=workers)
        return images[:, None], cf

    def measure(self, images, workers=None):
        from cdae.morpho import measure_batch

        t, i = measure_batch(images.reshape(images.shape[0], *images.shape[-2:]), workers=workers)
        return {"thickness": np.asarray(t, np.float64), "intensity": np.asarray(i, np.float64)}


class Pendulum:
    """The CausalVAE pendulum (DATA.md section 2; equations and renderer in
    :mod:`cdae.pendulum`): pendulum_angle, light_angle -> shadow_length, shadow_position.

    No base images: the scenes come from the reference grid or are sampled (``data.pendulum``).
    Noise (N, 4) float64: the two root angles in degrees (a root's exogenous noise is its value,
    kept exact: stored labels are float32 or truncated) and the shadow noises ``u ~ N(0, 1)``
    that ``data.pendulum.shadow_*_noise`` scale. Labels, interventions and measurements are in
    label units: degrees and scene units (``labels: exact``), or the reference's angle grid
    index (0.9 deg per unit) and truncated shadows (``labels: reference``; intervened values
    are kept as given, measurements are not truncated). Images RGB uint8 (N, 3, S, S),
    S = ``data.pendulum.image_size``.
    """

    variables: tuple[str, ...] = pendulum.VARIABLES
    measurable: tuple[str, ...] = pendulum.VARIABLES
    noise_names = ("pendulum_angle_deg", "light_angle_deg", "shadow_length_u",
                   "shadow_position_u")
    measurement = ("pendulum scene geometry read from the rendered colours "
                   "(cdae.pendulum.measure: bob and light centres, shadow extent)")
    counterfactual_from_labels = False  # shadow noise and exact roots live in the noise

    def __init__(self, data: DataParams | None = None) -> None:
        self.settings = (data or DataParams()).pendulum
        self.reference_labels = self.settings.labels is PendulumLabels.REFERENCE
        #: degrees per label unit of an angle
        self.angle_unit = pendulum.ANGLE_STEP_DEG if self.reference_labels else 1.0

    def scenes(self, dp, rng):
        """The reference grid's 7,308 scenes and split, or ``data.pendulum.samples`` scenes
        split at random by ``data.test_fraction``."""
        if self.settings.sampling is PendulumSampling.GRID:
            split = pendulum.reference_grid().split
            return np.arange(split.size, dtype=np.int64), split
        n = self.settings.samples
        split = np.zeros(n, np.uint8)
        split[rng.permutation(n)[: int(round(dp.test_fraction * n))]] = 1
        return np.arange(n, dtype=np.int64), split

    def generate(self, base_images, base_labels, rng, workers, progress):
        """``base_labels``: scene ids (N,) from :meth:`scenes` (rows of the reference grid;
        for random sampling only their number counts). ``base_images`` (None) and ``workers``
        are not used: the numpy renderer runs in this process."""
        ids = np.asarray(base_labels, np.int64)
        if self.settings.sampling is PendulumSampling.GRID:
            grid = pendulum.reference_grid()
            theta, phi = grid.pendulum_angle[ids], grid.light_angle[ids]
        else:
            theta, phi = pendulum.sample_angles(ids.size, rng)
        u = rng.standard_normal((ids.size, 2))
        noise = np.stack([theta, phi, u[:, 0], u[:, 1]], axis=1).astype(np.float64)
        exact = self._exact(noise, {})
        return self._render(exact, progress), self._to_label_units(exact), noise

    def counterfactual_labels(self, labels, noise, do):
        """Labels (label units) of the same scenes and shadow noise under ``do`` (label units):
        roots from the stored noise unless intervened, shadows through the equations unless
        intervened. ``labels`` is not read: the stored noise holds the exact truth."""
        noise = self._noise(noise)
        exact, given = self._do(do, noise.shape[0])
        return {**self._to_label_units(self._exact(noise, exact)), **given}

    def true_counterfactual(self, base_images, labels, noise, do, workers=None):
        """The re-rendered scenes under ``do``, and their labels; ``do={}`` gives the stored
        images exactly."""
        noise = self._noise(noise)
        exact_do, given = self._do(do, noise.shape[0])
        exact = self._exact(noise, exact_do)
        return self._render(exact, None), {**self._to_label_units(exact), **given}

    def measure(self, images, workers=None):
        """The four variables read from images (label units, not truncated)."""
        m = pendulum.measure(images)
        for name in ("pendulum_angle", "light_angle"):
            m[name] = m[name] / self.angle_unit
        return m

    # ---------------------------------------------------------------- helpers
    def _exact(self, noise: np.ndarray, do: Mapping[str, np.ndarray]) -> Labels:
        """Exact values (degrees, scene units) from the noise (N, 4) and an exact-unit ``do``."""
        theta = do.get("pendulum_angle", noise[:, 0])
        phi = do.get("light_angle", noise[:, 1])
        length, position = pendulum.shadow(theta, phi, noise[:, 2], noise[:, 3],
                                           self.settings.shadow_length_noise,
                                           self.settings.shadow_position_noise)
        return {"pendulum_angle": np.asarray(theta, np.float64),
                "light_angle": np.asarray(phi, np.float64),
                "shadow_length": do.get("shadow_length", length),
                "shadow_position": do.get("shadow_position", position)}

    def _to_label_units(self, exact: Labels) -> Labels:
        if not self.reference_labels:
            return {k: np.array(v, np.float64) for k, v in exact.items()}
        values = pendulum.reference_labels(*(exact[k] for k in self.variables))
        return dict(zip(self.variables, values))

    def _render(self, exact: Labels, progress: Callable[[int], None] | None) -> np.ndarray:
        return pendulum.render(*(exact[k] for k in self.variables),
                               size=self.settings.image_size, progress=progress)

    def _do(self, do: Mapping[str, float | np.ndarray], n: int
            ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Validated intervention, each value (n,) float64: in exact units (degrees, scene
        units) and as given (label units)."""
        out: dict[str, np.ndarray] = {}
        given: dict[str, np.ndarray] = {}
        for name, value in dict(do or {}).items():
            if name not in self.variables:
                raise InterventionError(f"unknown variable {name!r} in the intervention",
                                        hint=f"choose from {', '.join(self.variables)}")
            try:
                arr = np.broadcast_to(np.asarray(value, np.float64), (n,)).copy()
            except (TypeError, ValueError):
                raise InterventionError(f"do({name}) must be a number or {n} numbers, got "
                                        f"{np.shape(value)}", hint="give one value, or one per "
                                        "sample") from None
            if not np.all(np.isfinite(arr)):
                raise InterventionError(f"do({name}) has non-finite values",
                                        hint="give finite numbers")
            given[name] = arr.copy()
            if name in ("pendulum_angle", "light_angle"):
                arr = arr * self.angle_unit
            if name == "light_angle" and np.any((arr <= 0.0) | (arr >= 180.0)):
                raise InterventionError("do(light_angle) must lie strictly between 0 and 180 deg",
                                        hint="the light must shine down onto the floor")
            if name == "shadow_length" and np.any(arr < 0.0):
                raise InterventionError("do(shadow_length) must be >= 0",
                                        hint="e.g. do(shadow_length=5)")
            out[name] = arr
        return out, given

    @staticmethod
    def _noise(noise: np.ndarray) -> np.ndarray:
        arr = np.asarray(noise, np.float64)
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise ValueError(f"pendulum noise must have shape (n, 4), got {arr.shape}")
        return arr


GENERATORS: dict[SCMKind, Callable[[DataParams], Generator]] = {
    SCMKind.MORPHO_THICKNESS_INTENSITY: MorphoThicknessIntensity,
    SCMKind.PENDULUM: Pendulum,
}


def make_generator(kind: SCMKind, data: DataParams | None = None) -> Generator:
    """The generator of ``kind`` with the settings in ``data`` (defaults when None)."""
    return GENERATORS[kind](data if data is not None else DataParams())
