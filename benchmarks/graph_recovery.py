"""Graph recovery from the concept labels alone: the graph stage of `fit` (not a test).

    python benchmarks/graph_recovery.py            # Pendulum and Flow, noise 0 and 0.05, seeds 0-2
    python benchmarks/graph_recovery.py --no-order-search   # the same from A = 0 under the augmented Lagrangian

Runs what `fit` does before SVI (pyro_causalvae.discovery.choose_order_and_warm_start: the order search,
near-ties broken by the sparsest warm-started graph) on the training labels of the default split, with
the seed setting the model's initial weights and the rows the order search samples, as in `fit`. With
--no-order-search: the label loss + L1 + path penalty + augmented Lagrangian from A = 0 on the full
support, for comparison. Prints the SHD against the true graph. The full training
(`benchmarks/train_speed.py`, `benchmarks/quality.py`) reports the graph at the end of SVI.
"""

from __future__ import annotations

import argparse
import time

import pyro
import torch

from pyro_causalvae import CausalVAE
from pyro_causalvae.datasets import Flow, Pendulum
from pyro_causalvae.discovery import choose_order_and_warm_start
from pyro_causalvae.loss import LossWeights
from pyro_causalvae.metrics import shd


def free_al(model: CausalVAE, labels: torch.Tensor, steps: int, seed: int, al_every: int = 100) -> None:
    """Label loss + L1 + path penalty + augmented Lagrangian from A = 0, no order (the comparison)."""
    w = LossWeights()
    opt = torch.optim.Adam(list(model.mechanisms.parameters()) + [model.A_raw], lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        ub = labels[torch.randint(0, len(labels), (256,), generator=g)]  # [256, K]
        A = model.adjacency
        Aa = A.abs()
        loss = (((ub - model.mechanisms(ub, A)) ** 2).sum(-1).mean() + model.al.penalty(model.acyclicity())
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
                data = D(split="train", size=16, noise=noise)
                pyro.set_rng_seed(seed)
                model = CausalVAE(data.concepts, data.image_shape)
                labels = data.labels_normalised
                if args.no_order_search:
                    free_al(model, labels, args.steps, seed)
                    found = "-"
                else:
                    order, _, candidates = choose_order_and_warm_start(model, labels, seed=seed, steps=args.steps)
                    found = " < ".join(data.concepts[i] for i in order) + f" (of {len(candidates)} candidate orders)"
                learned = model.graph()
                s = shd(learned, data.graph)
                total.append(s)
                print(f"{data.name:<9} noise {noise:<5} seed {seed}: SHD {s}  h(A) {model.acyclicity().item():.1e}  "
                      f"order {found}  edges {', '.join(f'{a}->{b}' for a, b in learned.edges())}  "
                      f"({time.perf_counter() - t0:.1f} s)", flush=True)
    print(f"SHD 0 in {sum(s == 0 for s in total)} of {len(total)} runs")


if __name__ == "__main__":
    main()
