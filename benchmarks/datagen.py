"""Data-generation throughput of the synthetic worlds (images per second on this machine).

Renders the full Pendulum grid (7,308 images) and the full Flow grid (8,100 images) at 96 x 96 with
torch's default number of threads, through the dataset classes (``split="all"``: label grid, shuffle
and rendering), and through ``SCM.render`` alone. The official matplotlib generator makes about 66
Pendulum images per second on a 2-core CPU.

Run: ``python benchmarks/datagen.py [--size 96] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

try:
    import pyro_causalvae  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyro_causalvae.datasets import Flow, FlowSCM, Pendulum, PendulumSCM  # noqa: E402


def _best_time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs; the best is reported")
    args = parser.parse_args()
    s = args.size
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, dataset, scm in (("pendulum", Pendulum, PendulumSCM()), ("flow", Flow, FlowSCM())):
        n = len(dataset(split="all", size=16))  # warm-up; the grid size
        t = _best_time(lambda ds=dataset: ds(split="all", size=s), args.repeat)
        print(
            f"{name} {s}x{s}: {n} images in {t:.2f} s = {n / t:.0f} images/s (dataset, split='all')"
        )
        labels = scm.sample(n, seed=0)
        t = _best_time(lambda m=scm, x=labels: m.render(x, size=s), args.repeat)
        print(
            f"{name} {s}x{s}: {n} images in {t:.2f} s = {n / t:.0f} images/s "
            "(SCM.render of sampled labels)"
        )


if __name__ == "__main__":
    main()
