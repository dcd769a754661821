"""Time of ``vmunet.evaluation.metrics.hd95`` per organ on a 150 x 512 x 512 volume (the Synapse case size).

    python benchmarks/hd95.py [--medpy] [--repeats 3]

Synthetic organs: ellipsoids of liver, kidney and aorta size; predictions with a wobbly boundary (a good
prediction), a 3-voxel shift (a poor one) and a far false-positive blob (the case HD95 is known for).
``--medpy`` also times medpy's hd95 and checks that the values agree (slow: tens of seconds per organ).
"""

import argparse
import time

import numpy as np
from scipy import ndimage

from vmunet.evaluation.metrics import hd95

SHAPE = (150, 512, 512)


def ellipsoid(center, radii, wobble=None):
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    r = sum(((c - m) / s) ** 2 for c, m, s in zip((z, y, x), center, radii))
    return r < (1.0 if wobble is None else 1.0 + wobble)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--medpy", action="store_true", help="also time medpy and compare values")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    noise = ndimage.zoom(rng.random((16, 52, 52)), 10, order=1)[: SHAPE[0], : SHAPE[1], : SHAPE[2]] - 0.5
    organs = {"liver": ((75, 250, 200), (50, 120, 110)), "kidney": ((70, 300, 350), (20, 30, 25)),
              "aorta": ((75, 220, 260), (70, 10, 10))}
    print(f"volume {SHAPE}, best of {args.repeats}")
    for organ, (center, radii) in organs.items():
        gt = ellipsoid(center, radii)
        far = ellipsoid(center, radii, 0.3 * noise)
        far[140:146, 20:30, 30:40] = True
        cases = {"wobbly": ellipsoid(center, radii, 0.3 * noise),
                 "shifted": ellipsoid(tuple(c + 3 for c in center), radii), "far FP": far}
        for name, pred in cases.items():
            for spacing in (None, (2.5, 0.75, 0.75)):
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    value = hd95(pred, gt, spacing)
                    times.append(time.perf_counter() - start)
                line = f"  {organ:>6} {name:>7} spacing {str(spacing):>16}: hd95 {value:8.3f} in {min(times):.3f} s"
                if args.medpy:
                    from medpy.metric.binary import hd95 as medpy_hd95

                    start = time.perf_counter()
                    expected = medpy_hd95(pred, gt, voxelspacing=spacing)
                    line += f" | medpy {expected:8.3f} in {time.perf_counter() - start:.1f} s"
                    line += " (same)" if abs(expected - value) <= 1e-9 * max(1.0, expected) else " (DIFFERENT)"
                print(line, flush=True)


if __name__ == "__main__":
    main()
