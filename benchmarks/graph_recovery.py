"""Graph recovery from the concept labels alone: causal-order search + warm start (not a test).

    python benchmarks/graph_recovery.py            # Pendulum and Flow, noise 0 and 0.05, seeds 0-2
    python benchmarks/graph_recovery.py --no-order-search   # the same from A = 0 under the augmented Lagrangian

Runs the graph stage of `fit` on the labels (pyro_causalvae.discovery.order_search, then warm_start_graph
with the default settings; with --no-order-search: the label loss + L1 + path penalty + augmented
Lagrangian from A = 0 on the full support, for comparison) and prints the SHD against the true graph.
The full training (`benchmarks/train_speed.py`) reports the graph at the end of SVI.
"""

from __future__ import annotations

import argparse
import time

import pyro
import torch

from pyro_causalvae import CausalVAE
from pyro_causalvae.datasets import Flow, Pendulum
from pyro_causalvae.discovery import order_search, warm_start_graph
from pyro_causalvae.loss import LossWeights
from pyro_causalvae.metrics import shd


def free_al(model: CausalVAE, labels: torch.Tensor, steps: int, seed: int, al_every: int = 100) -> None:
    """Label loss + L1 + path penalty + augmented Lagrangian from A = 0, no order (the comparison)."""
    w = LossWeights()
    opt = torch.optim.Adam(list(model.mechanisms.parameters()) + [model.A_raw], lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    d = model.concept_dim
    for step in range(steps):
        ub = labels[torch.randint(0, len(labels), (256,), generator=g)][..., None].expand(-1, -1, d)
        A = model.adjacency
        Aa = A.abs()
        loss = (((ub - model.mechanisms(ub, A)) ** 2).sum((-1, -2)).mean() / d + model.al.penalty(model.acyclicity())
                + w.sparsity * Aa.sum() + w.path * (Aa @ Aa).sum())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % al_every == 0:
            model.al.update(model.acyclicity().detach())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.05])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--no-order-search", action="store_true")
    args = ap.parse_args()
    total = []
    for D in (Pendulum, Flow):
        for noise in args.noise:
            for seed in args.seeds:
                t0 = time.perf_counter()
                data = D(split="train", size=16, seed=seed, noise=noise)
                pyro.set_rng_seed(seed)
                model = CausalVAE(data.concepts, data.image_shape)
                labels = data.labels_normalised
                if args.no_order_search:
                    free_al(model, labels, args.steps, seed)
                    found = "-"
                else:
                    order, _ = order_search(labels, seed=seed)
                    warm_start_graph(model, labels, order, steps=args.steps, seed=seed)
                    found = " < ".join(data.concepts[i] for i in order)
                learned = model.graph()
                s = shd(learned, data.graph)
                total.append(s)
                print(f"{data.name:<9} noise {noise:<5} seed {seed}: SHD {s}  h(A) {model.acyclicity().item():.1e}  "
                      f"order {found}  edges {', '.join(f'{a}->{b}' for a, b in learned.edges())}  "
                      f"({time.perf_counter() - t0:.1f} s)", flush=True)
    print(f"SHD 0 in {sum(s == 0 for s in total)} of {len(total)} runs")


if __name__ == "__main__":
    main()
