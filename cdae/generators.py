"""Dataset generators: a true SCM plus the image renderer, behind one generic interface.

The pipeline's generic code (prepare-data, evaluate) talks to a :class:`Generator` and never
branches on a dataset's name; :data:`GENERATORS` maps each :class:`~cdae.config.SCMKind` to one.
Label dicts map variable name -> (N,) float64 array in raw units.
"""

from __future__ import annotations

from typing import Callable, Mapping, Protocol

import numpy as np

from cdae.config import SCMKind

Labels = dict[str, np.ndarray]


class Generator(Protocol):
    """What a dataset generator offers (all arrays are numpy; images uint8 (N, C, H, W))."""

    variables: tuple[str, ...]  # labelled variables it produces (subset of the graph)
    measurable: tuple[str, ...]  # variables it can measure on an image
    noise_names: tuple[str, ...]

    def generate(self, base_images: np.ndarray, base_labels: np.ndarray,
                 rng: np.random.Generator, workers: int | None,
                 progress: Callable[[int], None] | None) -> tuple[np.ndarray, Labels,
                                                                    np.ndarray]: ...

    def true_counterfactual(self, base_images: np.ndarray, labels: Labels, noise: np.ndarray,
                            do: Mapping[str, float | np.ndarray],
                            workers: int | None = None) -> tuple[np.ndarray, Labels]: ...

    def counterfactual_labels(self, labels: Labels, noise: np.ndarray,
                              do: Mapping[str, float | np.ndarray]) -> Labels: ...

    def measure(self, images: np.ndarray, workers: int | None = None) -> Labels: ...


class MorphoThicknessIntensity:
    """DeepSCM thickness -> intensity on MNIST digits (DATA.md section 1); digit is the base
    digit's class (a root without children)."""

    variables = ("thickness", "intensity", "digit")
    measurable = ("thickness", "intensity")

    def __init__(self) -> None:
        from cdae.scm import MorphoThicknessIntensitySCM

        self.scm = MorphoThicknessIntensitySCM()
        self.noise_names = tuple(self.scm.noise_names)

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


GENERATORS: dict[SCMKind, Callable[[], Generator]] = {
    SCMKind.MORPHO_THICKNESS_INTENSITY: MorphoThicknessIntensity,
}


def make_generator(kind: SCMKind) -> Generator:
    return GENERATORS[kind]()
