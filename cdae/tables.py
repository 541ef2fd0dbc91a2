"""Cells of the scorecard's markdown tables (reports/evaluation.md, combined.md)."""

from __future__ import annotations

import math
from collections.abc import Mapping


def mean_std_cell(row: Mapping[str, object], metric: str) -> str:
    """``row[metric]`` as text, with ``± row[metric + '_std']`` when the row holds a finite
    spread: 3 significant digits (whole numbers from 1000 up), the spread to 2; "–" when the
    row lacks the number. A spread below float noise of the value reads 0."""
    v = row.get(metric)
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return "–"
    sd = row.get(f"{metric}_std")
    text = f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    if isinstance(sd, float) and abs(sd) < 1e-9 * max(1.0, abs(v)):
        sd = 0.0  # float noise of identical draws
    return text + (f" ± {sd:.2g}" if isinstance(sd, float) and math.isfinite(sd) else "")


def md_cell(text: str) -> str:
    """Text for a markdown table cell (a pipe would end the cell)."""
    return text.replace("|", "\\|")
