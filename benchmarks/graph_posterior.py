"""The Bayesian edge posterior (pyro_causalvae.bayes_graph) on the trained quality runs (not a test).

    python benchmarks/graph_posterior.py                          # runs/quality/{pendulum,flow}-seed{0,1,2}
    python benchmarks/graph_posterior.py --threshold 0.02 --runs runs/quality

For each run written by benchmarks/quality.py: fit the post-hoc edge posterior on the held-out test
labels (networks frozen; default prior Laplace(0, 0.05)), then print the SHD of the point estimate
``model.graph()`` next to the SHD of the posterior graph (edges with P(|A| > threshold) > 0.5) and every
edge probability above 0.02. The probability of an edge the data do not constrain is the prior's mass
above the threshold (exp(-threshold / prior_scale): 0.14 at 0.1, 0.67 at 0.02).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pyro_causalvae import load_model
from pyro_causalvae.bayes_graph import fit_graph_posterior
from pyro_causalvae.datasets import Flow, Pendulum
from pyro_causalvae.metrics import shd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs/quality")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threshold", type=float, default=0.1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name, D in (("pendulum", Pendulum), ("flow", Flow)):
        test = D(split="test")
        for s in args.seeds:
            run = Path(args.runs) / f"{name}-seed{s}"
            if not run.is_dir():
                print(f"{name} seed {s}: no run in {run} (run benchmarks/quality.py first)")
                continue
            model = load_model(run)
            post = fit_graph_posterior(model, test.labels, seed=0, progress=False)
            probs = {f"{a}->{b}": round(p, 3) for (a, b), p in post.edge_probability(args.threshold).items() if p > 0.02}
            print(f"{name} seed {s}: point-estimate SHD {shd(model.graph(), test.graph)}, posterior-graph SHD "
                  f"{shd(post.graph(threshold=args.threshold), test.graph)}; P(|A| > {args.threshold}): {probs}", flush=True)


if __name__ == "__main__":
    main()
