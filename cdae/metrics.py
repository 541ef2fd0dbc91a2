"""Counterfactual metrics (EVALUATION.md). Images are uint8 0..255; errors in those units."""

from __future__ import annotations

import numpy as np


def mae(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute error over finite pairs (NaN-safe: unmeasurable images are skipped)."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.abs(a[ok] - b[ok]).mean()) if ok.any() else float("nan")


def l1(x: np.ndarray, y: np.ndarray) -> float:
    """Mean absolute pixel difference in 0..255 (composition, distance to ground truth)."""
    return float(np.abs(x.astype(np.float64) - y.astype(np.float64)).mean())


def psnr(x: np.ndarray, y: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB (peak 255) over all images; capped at 100 (identical)."""
    mse = float(np.square(x.astype(np.float64) - y.astype(np.float64)).mean())
    return 100.0 if mse == 0 else min(100.0, float(10.0 * np.log10(255.0 ** 2 / mse)))
