"""The time of each phase on a user's folder: N images + labels.csv + a graph file, through the command line.

Exports N Pendulum images (at --size px) with ``to_folder`` into a temporary folder, writes the true graph
as ``dag.csv`` (rows ``parent,child``), then runs, as a user would (``--no-progress``):

    pyro-causalvae train --dataset folder --labels DIR/labels.csv --true-graph DIR/dag.csv --epochs E --out RUN
    pyro-causalvae evaluate RUN
    pyro-causalvae intervene RUN
    pyro-causalvae counterfactual RUN --do light_angle=0.5

and prints every phase line (each ends with its time) and each command's wall time.

    python benchmarks/own_data.py                 # 6,000 images at 96 px, 1 epoch
    python benchmarks/own_data.py --images 2000 --size 64 --graph-given
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=6000)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--graph-given", action="store_true", help="--graph dag.csv instead of learning it (no order search)")
    p.add_argument("--keep", help="write the folder and the run here instead of a temporary directory")
    args = p.parse_args()

    import torch

    from pyro_causalvae.datasets import Pendulum

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="own-data-"))
    try:
        t0 = time.perf_counter()
        full = Pendulum(split="all", size=args.size)
        ds = full.subset(torch.randperm(len(full), generator=torch.Generator().manual_seed(0))[: args.images])
        folder = ds.to_folder(work / "pendulum", overwrite=True)
        with open(folder / "dag.csv", "w", newline="") as f:
            csv.writer(f).writerows([("parent", "child"), *ds.graph.edges()])
        print(f"folder: {len(ds)} PNG files {args.size}x{args.size}, labels.csv, dag.csv ({time.perf_counter() - t0:.1f} s to write)")
        run = work / "run"
        shutil.rmtree(run, ignore_errors=True)
        graph = ["--graph", str(folder / "dag.csv")] if args.graph_given else []
        commands = [
            ["train", "--dataset", "folder", "--labels", str(folder / "labels.csv"), "--true-graph", str(folder / "dag.csv"),
             *graph, "--epochs", str(args.epochs), "--out", str(run), "--no-progress"],
            ["evaluate", str(run), "--no-progress"],
            ["intervene", str(run)],
            ["counterfactual", str(run), "--do", "light_angle=0.5"],
        ]
        for cmd in commands:
            t0 = time.perf_counter()
            res = subprocess.run([sys.executable, "-m", "pyro_causalvae", *cmd], capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if res.returncode:
                sys.exit(f"{cmd[0]} failed: {res.stderr.strip()}")
            print(f"\n$ pyro-causalvae {cmd[0]}  ({wall:.1f} s wall, including Python start-up)")
            for line in res.stdout.splitlines():
                if re.search(r"\(\d+\.\d s[,)]", line) or line.startswith(("vs the true graph", "MIC", "graph:", "learned graph")):
                    print("  " + line)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
