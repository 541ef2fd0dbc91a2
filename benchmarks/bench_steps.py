"""DDIM steps vs quality: the fewest steps whose counterfactuals match the paper's 250 steps.

Usage (from the repo root, after `dvc repro` has trained models/model.pt):
    python -m benchmarks.bench_steps [--steps 10,20,50,100,250] [--images 50] [--out FILE]

Runs the evaluate stage (same images, same seeded targets) once per step count, with that many
steps for the DDIM inversion AND for the decoding, and prints per step count: the measured
effectiveness (thickness MAE under do(thickness), intensity MAE under do(intensity)), the
composition L1 of a null intervention, the relative change of each against the largest step
count, the wall time and the speed-up. "Within 5%" is |metric - reference| <= 5% of the reference
(composition, whose reference can be tiny, also passes within 0.1 in 0..255). Writes the table
as CSV (default reports/steps.csv) for DVC plots.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import tempfile
import time
from pathlib import Path

from cdae import config
from cdae.atomic import write_text

KEYS = (("do_thickness", "thickness_mae"), ("do_intensity", "intensity_mae"),
        ("null", "composition_l1"))  # effectiveness and composition: the 5% criterion
EXTRA = (("do_thickness", "intensity_mae"), ("do_intensity", "thickness_moved"))  # reported


def within(value: float, ref: float, key: str) -> bool:
    slack = 0.05 * abs(ref)
    if key == "composition_l1":
        slack = max(slack, 0.1)
    return abs(value - ref) <= slack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--steps", default="10,20,50,100,250")
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=1,
                        help="draws per intervention (evaluate.seeds); 1 keeps the 250-step run short")
    parser.add_argument("--cycle-images", type=int, default=0,
                        help="images of the composition/reversibility chains (0 = skip them)")
    parser.add_argument("--inversion-iters", type=int, default=None,
                        help="fixed-point refinements per inversion step (default: params)")
    parser.add_argument("--out", default="reports/steps.csv")
    args = parser.parse_args()
    from stages import evaluate

    base = config.load(args.params, args.profile)
    if args.inversion_iters is not None:
        base = dataclasses.replace(base, diffusion=dataclasses.replace(
            base.diffusion, inversion_iters=args.inversion_iters))
    counts = sorted({int(s) for s in args.steps.split(",")})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for steps in counts:
            p = dataclasses.replace(
                base,
                evaluate=dataclasses.replace(base.evaluate, steps=steps, max_images=args.images,
                                             seeds=args.seeds, cycle_images=args.cycle_images,
                                             sweep_guidance=(), sweep_steps=()),
                paths=dataclasses.replace(base.paths, metrics=str(Path(tmp) / f"m{steps}.json")))
            start = time.perf_counter()
            m = evaluate.run(p)
            wall = time.perf_counter() - start
            rows.append({"steps": steps, "seconds": round(wall, 1),
                         **{f"{a}.{b}": m[a][b] for a, b in KEYS + EXTRA}})
            print(f"{steps:4d} steps: " + ", ".join(f"{a}.{b}={m[a][b]:.3f}"
                                                    for a, b in KEYS + EXTRA)
                  + f"  ({wall:.0f} s)", flush=True)
    ref = rows[-1]
    print(f"\nreference: {ref['steps']} steps, {args.images} images")
    print(f"{'steps':>5} {'speed-up':>8}  " + "  ".join(f"{a}.{b:<16}" for a, b in KEYS)
          + "  all within 5%")
    fewest = None
    for r in rows:
        ok = all(within(r[f"{a}.{b}"], ref[f"{a}.{b}"], b) for a, b in KEYS)
        if ok and fewest is None:
            fewest = r
        cells = []
        for a, b in KEYS:
            v, v_ref = r[f"{a}.{b}"], ref[f"{a}.{b}"]
            cells.append(f"{v:8.3f} ({100 * (v / v_ref - 1):+5.1f}%)")
        rel = "  ".join(cells)
        print(f"{r['steps']:5d} {ref['steps'] / r['steps']:7.1f}x  {rel}  {'yes' if ok else 'no'}")
    if fewest is not None:
        print(f"fewest steps within 5% of {ref['steps']}: {fewest['steps']} "
              f"({ref['steps'] / fewest['steps']:.1f}x fewer network evaluations, wall "
              f"{ref['seconds'] / max(fewest['seconds'], 1e-9):.1f}x faster)")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_text(Path(args.out), buf.getvalue())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
