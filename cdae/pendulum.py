"""The CausalVAE pendulum scene: structural equations, reference grid and a numpy renderer.

Re-implemented from ``shared/spec/DATA.md`` section 2 ("Pendulum (CausalVAE)"); the reference
code is not used. Graph::

    pendulum_angle -> {shadow_length, shadow_position} <- light_angle

Scene (axes units: x in (0, 20) left to right, y in (-1, 21) bottom to top; the axes fill the
whole image, no axis drawn, white background)::

    theta (pendulum angle), phi (light angle), in radians
    pivot (10, 10.5); bob = (10 + 8 sin theta, 10.5 - 8 cos theta), circle r = 1.5, firebrick
    rod pivot -> bob, black, linewidth 3 pt (4 px at the reference 96 px)
    proj(x0, y0, base) = (base - (y0 - x0 tan phi)) / tan phi    # where the light ray hits y = base
    light = circle at (proj(10, 10.5, 20.5), 20.5), r = 3, orange
    tip = (10 + 9.5 sin theta, 10.5 - 9.5 cos theta)
    a = proj(10, 10.5, -0.5); b = proj(tip_x, tip_y, -0.5)
    shadow_position = (a + b) / 2 + sd_position * u_position
    shadow_length   = max(3, |a - b| + sd_length * u_length)
    shadow = black segment on y = -0.5 centred at shadow_position, length shadow_length,
             linewidth 3 pt

The exogenous shadow noise ``u ~ N(0, 1)`` is this module's extension (DATA.md asks for optional
noise on the shadow equations); with ``sd_* = 0`` (the default) the equations are the reference's,
noise-free. The length noise sits inside the ``max(3, .)`` so the shadow never gets shorter than
the reference's minimum.

Units: angles in degrees in the public API (``theta = i * pi / 200`` is ``i * 0.9`` deg), shadow
length and position in scene (axes) units; images RGB uint8 (N, 3, H, W) with H = W = ``size``.

Reference grid: ``i`` in -40..43 (outer loop) and ``j`` in 60..147 without 100 (inner loop):
84 x 87 = 7,308 scenes; every 4th scene starting at the 5th (0-based rows 4, 8, ...) is test:
5,482 train / 1,826 test. The reference labels are the integers of its file names: the grid
indices ``i``, ``j`` (angle units of pi/200 rad = 0.9 deg) and the truncated shadow length and
position; :func:`reference_labels` gives them.

Rendering is a vectorised numpy rasteriser with analytic anti-aliasing (no supersampling
needed): a stroke covers a pixel by the product of the pixel's overlaps along and across it
(the exact area for the horizontal shadow), a disc by ``clip(0.5 - d, 0, 1)`` for the signed
distance ``d`` (px) of the pixel centre to its outline. Shapes are composited over white in
the order rod, bob, light, shadow. The rod and shadow have butt ends. The pure colours are
:data:`WHITE`, :data:`BLACK`, :data:`FIREBRICK`, :data:`ORANGE`; :func:`measure` inverts this
compositing to read the variables back from images. Departures from the reference's matplotlib
figure, which DATA.md leaves open: the axes are taken to fill the whole image (no margins), and
the strokes' ends are butt. The analytic anti-aliasing replaces DATA.md's suggested Pillow
supersampling (same purpose, exact for the shadow, no Pillow needed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = [
    "VARIABLES", "GRID_I", "GRID_J", "ANGLE_STEP_DEG", "PENDULUM_RANGE_DEG", "LIGHT_RANGE_DEG",
    "ReferenceGrid", "reference_grid", "shadow", "reference_labels", "sample_angles", "render",
    "measure", "check_light_angle",
]

#: the scene's variables, in the order arrays use them
VARIABLES: tuple[str, ...] = ("pendulum_angle", "light_angle", "shadow_length", "shadow_position")

GRID_I = tuple(range(-40, 44))  # pendulum angle index, theta = i * pi / 200
GRID_J = tuple(j for j in range(60, 148) if j != 100)  # light angle index, phi = j * pi / 200
ANGLE_STEP_DEG = 0.9  # pi / 200 rad in degrees: the unit of the reference's angle labels
PENDULUM_RANGE_DEG = (GRID_I[0] * ANGLE_STEP_DEG, GRID_I[-1] * ANGLE_STEP_DEG)  # (-36, 38.7)
LIGHT_RANGE_DEG = (GRID_J[0] * ANGLE_STEP_DEG, GRID_J[-1] * ANGLE_STEP_DEG)  # (54, 132.3)

# scene geometry (axes units)
X_RANGE = (0.0, 20.0)
Y_RANGE = (-1.0, 21.0)
PIVOT = (10.0, 10.5)
ROD_LENGTH = 8.0
TIP_LENGTH = 9.5
BOB_RADIUS = 1.5
LIGHT_RADIUS = 3.0
LIGHT_Y = 20.5
SHADOW_Y = -0.5
MIN_SHADOW = 3.0
LINE_WIDTH_PX_AT_96 = 4.0  # linewidth 3 pt at 96 dpi
REFERENCE_SIZE = 96

WHITE = np.array([255.0, 255.0, 255.0])
BLACK = np.array([0.0, 0.0, 0.0])
FIREBRICK = np.array([178.0, 34.0, 34.0])  # matplotlib 'firebrick' #B22222
ORANGE = np.array([255.0, 165.0, 0.0])  # matplotlib 'orange' #FFA500


# ---------------------------------------------------------------------------- equations

def check_light_angle(phi_deg: np.ndarray) -> None:
    """ValueError unless every light angle lies strictly inside (0, 180) degrees (tan phi != 0:
    the light ray must reach the floor)."""
    phi = np.asarray(phi_deg, np.float64)
    if not np.all(np.isfinite(phi)) or np.any((phi <= 0.0) | (phi >= 180.0)):
        raise ValueError("light_angle must lie strictly between 0 and 180 degrees")


def _proj(x0: np.ndarray, y0: np.ndarray, base: float, tan_phi: np.ndarray) -> np.ndarray:
    """x where the light ray through (x0, y0) at angle phi meets y = base (DATA.md formula)."""
    return (base - (y0 - x0 * tan_phi)) / tan_phi


def shadow(theta_deg: np.ndarray, phi_deg: np.ndarray, u_length: np.ndarray | float = 0.0,
           u_position: np.ndarray | float = 0.0, sd_length: float = 0.0,
           sd_position: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Shadow ``(length, position)`` (N,) float64 in scene units from the pendulum angle and the
    light angle (N,) in degrees, with exogenous noise ``u_*`` scaled by ``sd_*`` (scene units).

    ``position = (a + b) / 2 + sd_position * u_position``,
    ``length = max(3, |a - b| + sd_length * u_length)`` with ``a``, ``b`` the floor hits of the
    rays through the pivot and the rod tip (module docstring; DATA.md section 2).
    """
    theta = np.deg2rad(np.asarray(theta_deg, np.float64))
    phi_deg = np.asarray(phi_deg, np.float64)
    check_light_angle(phi_deg)
    tan_phi = np.tan(np.deg2rad(phi_deg))
    tip_x = PIVOT[0] + TIP_LENGTH * np.sin(theta)
    tip_y = PIVOT[1] - TIP_LENGTH * np.cos(theta)
    a = _proj(np.float64(PIVOT[0]), np.float64(PIVOT[1]), SHADOW_Y, tan_phi)
    b = _proj(tip_x, tip_y, SHADOW_Y, tan_phi)
    position = (a + b) / 2.0 + sd_position * np.asarray(u_position, np.float64)
    length = np.maximum(MIN_SHADOW, np.abs(a - b) + sd_length * np.asarray(u_length, np.float64))
    return np.asarray(length, np.float64), np.asarray(position, np.float64)


def light_x(phi_deg: np.ndarray) -> np.ndarray:
    """x (scene units) of the light's centre, ``proj(10, 10.5, 20.5)``, for angles in degrees."""
    tan_phi = np.tan(np.deg2rad(np.asarray(phi_deg, np.float64)))
    return _proj(np.float64(PIVOT[0]), np.float64(PIVOT[1]), LIGHT_Y, tan_phi)


@dataclass(frozen=True)
class ReferenceGrid:
    """The reference grid, one row per scene in the reference's loop order (i outer, j inner).

    ``i``, ``j`` int64 (7308,) grid indices; ``pendulum_angle``, ``light_angle`` float64 (7308,)
    in degrees (``i * 0.9``, ``j * 0.9``); ``split`` uint8 (7308,), 0 train, 1 test.
    """

    i: np.ndarray
    j: np.ndarray
    pendulum_angle: np.ndarray
    light_angle: np.ndarray
    split: np.ndarray


def reference_grid() -> ReferenceGrid:
    """The 84 x 87 = 7,308 reference scenes with their 5,482 / 1,826 train/test split."""
    i, j = np.meshgrid(np.asarray(GRID_I, np.int64), np.asarray(GRID_J, np.int64), indexing="ij")
    i, j = i.ravel(), j.ravel()
    rows = np.arange(i.size)
    split = ((rows % 4 == 0) & (rows >= 4)).astype(np.uint8)  # the 5th, 9th, ... scene
    return ReferenceGrid(i=i, j=j, pendulum_angle=np.rad2deg(i * np.pi / 200.0),
                         light_angle=np.rad2deg(j * np.pi / 200.0), split=split)


def reference_labels(pendulum_angle: np.ndarray, light_angle: np.ndarray,
                     shadow_length: np.ndarray, shadow_position: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The reference's integer labels (N,) float64 from exact labels: angles in grid-index units
    (pi/200 rad; the file names' ``i``, ``j``) and shadows in scene units, all truncated toward
    zero like Python's ``int()``. Angles are rounded to 1e-9 first, so grid angles give their
    exact index despite the degree round trip."""
    def trunc(x: np.ndarray) -> np.ndarray:
        return np.trunc(np.asarray(x, np.float64))

    return (trunc(np.round(np.asarray(pendulum_angle) / ANGLE_STEP_DEG, 9)),
            trunc(np.round(np.asarray(light_angle) / ANGLE_STEP_DEG, 9)),
            trunc(shadow_length), trunc(shadow_position))


def sample_angles(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(pendulum_angle, light_angle) (n,) float64 degrees, uniform over the reference grid's
    ranges [-36, 38.7] and [54, 132.3] deg."""
    theta = rng.uniform(*PENDULUM_RANGE_DEG, size=int(n))
    phi = rng.uniform(*LIGHT_RANGE_DEG, size=int(n))
    return theta, phi


# ---------------------------------------------------------------------------- rendering

def _to_px(x: np.ndarray, y: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Scene units -> pixel coordinates (column, row; 0 at the image's top-left corner)."""
    sx = size / (X_RANGE[1] - X_RANGE[0])
    sy = size / (Y_RANGE[1] - Y_RANGE[0])
    return (np.asarray(x) - X_RANGE[0]) * sx, (Y_RANGE[1] - np.asarray(y)) * sy


def _overlap(centre: np.ndarray, half: np.ndarray | float) -> np.ndarray:
    """Length of [-half, half] inside the unit pixel interval [centre - 0.5, centre + 0.5]."""
    return np.clip(np.minimum(centre + 0.5, half) - np.maximum(centre - 0.5, -half), 0.0, 1.0)


def _segment_coverage(px: np.ndarray, py: np.ndarray, ax: np.ndarray, ay: np.ndarray,
                      bx: np.ndarray, by: np.ndarray, half_width: float) -> np.ndarray:
    """Coverage in [0, 1] (N, H, W) of each pixel by a stroke of half width ``half_width`` px
    from A to B with butt ends: the product of the pixel's overlaps along and across the stroke
    (exact area for an axis-aligned stroke). Endpoints (N, 1, 1), pixel centres broadcastable."""
    dx, dy = bx - ax, by - ay
    length = np.hypot(dx, dy)
    safe = np.where(length > 0, length, 1.0)
    ux, uy = np.where(length > 0, dx / safe, 1.0), np.where(length > 0, dy / safe, 0.0)
    mx, my = (ax + bx) / 2.0, (ay + by) / 2.0
    along = (px - mx) * ux + (py - my) * uy
    across = -(px - mx) * uy + (py - my) * ux
    return _overlap(along, length / 2.0) * _overlap(across, half_width)


def _ellipse_coverage(px: np.ndarray, py: np.ndarray, cx: np.ndarray, cy: np.ndarray,
                      rx: float, ry: float) -> np.ndarray:
    """Coverage in [0, 1] (N, H, W) of each pixel by an axis-aligned ellipse (a scene circle,
    which the unequal x and y scales of the axes stretch): ``clip(0.5 - d, 0, 1)`` for the
    first-order signed distance ``d`` (px) of the pixel centre to the outline."""
    dx, dy = px - cx, py - cy
    k0 = np.hypot(dx / rx, dy / ry)
    k1 = np.hypot(dx / rx ** 2, dy / ry ** 2)
    d = np.where(k1 > 0, k0 * (k0 - 1.0) / np.where(k1 > 0, k1, 1.0), -min(rx, ry))
    return np.clip(0.5 - d, 0.0, 1.0)


def _c(v: np.ndarray) -> np.ndarray:
    """(N,) -> (N, 1, 1), to broadcast per-image values over the pixel grid."""
    return np.asarray(v)[:, None, None]


def _over(canvas: np.ndarray, coverage: np.ndarray, colour: np.ndarray) -> None:
    """Composite a shape of the given colour and coverage (N, H, W) over ``canvas``
    (N, 3, H, W) float, in place."""
    alpha = coverage[:, None]
    canvas *= 1.0 - alpha
    canvas += alpha * colour[None, :, None, None]


def render(pendulum_angle: np.ndarray, light_angle: np.ndarray, shadow_length: np.ndarray,
           shadow_position: np.ndarray, size: int = REFERENCE_SIZE, chunk: int = 256,
           progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Images uint8 (N, 3, size, size) RGB of the scenes (angles in degrees, shadow in scene
    units, each (N,)). The shadow is drawn as given, so an intervened shadow need not satisfy the
    equations. ``progress(n_done)`` is called after each chunk of ``chunk`` images.
    Deterministic and per-image: an image does not depend on the others in the batch."""
    theta = np.deg2rad(np.asarray(pendulum_angle, np.float64)).reshape(-1)
    phi = np.asarray(light_angle, np.float64).reshape(-1)
    length = np.asarray(shadow_length, np.float64).reshape(-1)
    position = np.asarray(shadow_position, np.float64).reshape(-1)
    n = theta.shape[0]
    if not (phi.shape[0] == length.shape[0] == position.shape[0] == n):
        raise ValueError("pendulum_angle, light_angle, shadow_length and shadow_position must "
                         "have one value per image")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    check_light_angle(phi)
    half_width = LINE_WIDTH_PX_AT_96 * size / REFERENCE_SIZE / 2.0
    sx = size / (X_RANGE[1] - X_RANGE[0])
    sy = size / (Y_RANGE[1] - Y_RANGE[0])
    centres = np.arange(size, dtype=np.float64) + 0.5
    py, px = centres[None, :, None], centres[None, None, :]
    out = np.empty((n, 3, size, size), np.uint8)
    step = max(1, int(chunk))
    for lo in range(0, n, step):
        sl = slice(lo, min(n, lo + step))
        t, p = theta[sl], phi[sl]
        bob_x, bob_y = _to_px(PIVOT[0] + ROD_LENGTH * np.sin(t), PIVOT[1] - ROD_LENGTH * np.cos(t),
                              size)
        piv_x, piv_y = _to_px(np.full_like(t, PIVOT[0]), np.full_like(t, PIVOT[1]), size)
        lx, ly = _to_px(light_x(p), np.full_like(t, LIGHT_Y), size)
        s0x, s0y = _to_px(position[sl] - length[sl] / 2.0, np.full_like(t, SHADOW_Y), size)
        s1x, s1y = _to_px(position[sl] + length[sl] / 2.0, np.full_like(t, SHADOW_Y), size)
        canvas = np.broadcast_to(WHITE[None, :, None, None], (t.size, 3, size, size)).copy()
        rod = _segment_coverage(px, py, _c(piv_x), _c(piv_y), _c(bob_x), _c(bob_y), half_width)
        _over(canvas, rod, BLACK)
        bob = _ellipse_coverage(px, py, _c(bob_x), _c(bob_y), BOB_RADIUS * sx, BOB_RADIUS * sy)
        _over(canvas, bob, FIREBRICK)
        light = _ellipse_coverage(px, py, _c(lx), _c(ly), LIGHT_RADIUS * sx, LIGHT_RADIUS * sy)
        _over(canvas, light, ORANGE)
        floor = _segment_coverage(px, py, _c(s0x), _c(s0y), _c(s1x), _c(s1y), half_width)
        _over(canvas, floor, BLACK)
        out[sl] = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
        if progress is not None:
            progress(t.size)
    return out


# ---------------------------------------------------------------------------- measurement

_PALETTE = np.stack([WHITE, BLACK, FIREBRICK, ORANGE], axis=1)  # (3, 4) colours as columns
_UNMIX = np.linalg.inv(np.vstack([_PALETTE, np.ones((1, 4))]))  # (4, 4): [rgb; 1] -> weights


def _unmix(images: np.ndarray) -> np.ndarray:
    """Per-pixel weights (N, 4, H, W) of white, black, firebrick, orange that mix to each pixel.

    The renderer composites these four colours linearly, so the weights are its coverages
    (exact up to the uint8 rounding)."""
    x = np.asarray(images, np.float64)
    rgb1 = np.concatenate([x, np.ones_like(x[:, :1])], axis=1)  # (N, 4, H, W)
    return np.clip(np.einsum("ck,nkhw->nchw", _UNMIX, rgb1), 0.0, 1.0)


def measure(images: np.ndarray, chunk: int = 512) -> dict[str, np.ndarray]:
    """Read the four variables from scene images uint8 (N, 3, H, W) (any square size): dict of
    (N,) float64, angles in degrees and shadows in scene units; NaN where a part is not visible.

    DATA.md gives no measurement for the pendulum; this one inverts the renderer's geometry:

    - ``pendulum_angle``: the firebrick (bob) coverage centroid ``(bx, by)``,
      ``atan2(bx - 10, 10.5 - by)``;
    - ``light_angle``: the light centre's x from the orange coverage (its x centroid; where the
      disc runs past the left or right image edge, from the visible chord of the pixel row
      through its centre and the known radius), ``atan2(10, x - 10)`` (the inverse of
      ``proj(10, 10.5, 20.5)``);
    - ``shadow_length`` / ``shadow_position``: the black coverage of the rows below y = 1 (the
      rod never gets there): its area over the stroke width, and its x centroid. A shadow that
      leaves the image is measured by its visible part.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must be RGB (N, 3, S, S), got {images.shape}")
    n, size = images.shape[0], images.shape[-1]
    sx = size / (X_RANGE[1] - X_RANGE[0])
    sy = size / (Y_RANGE[1] - Y_RANGE[0])
    centres = np.arange(size, dtype=np.float64) + 0.5
    width_px = LINE_WIDTH_PX_AT_96 * size / REFERENCE_SIZE
    floor_rows = (Y_RANGE[1] - centres / sy) < 1.0  # row centres below y = 1
    ly_px = (Y_RANGE[1] - LIGHT_Y) * sy
    row = int(min(size - 1, np.floor(ly_px)))
    rx, ry = LIGHT_RADIUS * sx, LIGHT_RADIUS * sy
    half_chord = rx * np.sqrt(max(0.0, 1.0 - ((row + 0.5 - ly_px) / ry) ** 2))
    out = {name: np.full(n, np.nan) for name in VARIABLES}
    with np.errstate(invalid="ignore", divide="ignore"):
        for lo in range(0, n, chunk):
            sl = slice(lo, min(n, lo + chunk))
            w = _unmix(images[sl])
            bob, light, black = w[:, 2], w[:, 3], w[:, 1]
            mass = bob.sum((1, 2))
            bx = (bob.sum(1) * centres).sum(1) / mass / sx + X_RANGE[0]
            by = Y_RANGE[1] - (bob.sum(2) * centres).sum(1) / mass / sy
            out["pendulum_angle"][sl] = np.rad2deg(np.arctan2(bx - PIVOT[0], PIVOT[1] - by))
            profile = light.sum(1)  # (n, W) orange per column
            cx = (profile * centres).sum(1) / profile.sum(1)
            chord = light[:, row, :].sum(1)  # visible chord length of the centre row (px)
            left_cut = light[:, row, 0] > 0.99  # the disc runs past the image edge
            right_cut = light[:, row, -1] > 0.99
            cx = np.where(left_cut & ~right_cut, chord - half_chord, cx)
            cx = np.where(right_cut & ~left_cut, size - chord + half_chord, cx)
            lxs = cx / sx + X_RANGE[0]
            out["light_angle"][sl] = np.rad2deg(np.arctan2(LIGHT_Y - PIVOT[1], lxs - PIVOT[0]))
            floor = (black * floor_rows[None, :, None]).sum(1)  # (n, W)
            area = floor.sum(1)
            out["shadow_length"][sl] = area / width_px / sx
            out["shadow_position"][sl] = ((floor * centres).sum(1) / area / sx + X_RANGE[0])
    return out
