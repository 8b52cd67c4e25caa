"""Graph recovery from the concept labels alone: the graph stage of `fit` (not a test).

    python benchmarks/graph_recovery.py            # Pendulum and Flow, noise 0 and 0.05, seeds 0-2
    python benchmarks/graph_recovery.py --no-order-search   # the same from A = 0 under the augmented Lagrangian
    python benchmarks/graph_recovery.py --fraction 0.02 0.05 0.1 --seeds 0 1 2 3 4 5 6 7   # few labelled rows
    python benchmarks/graph_recovery.py --chance --fraction 0.02 0.05 0.1 1 --seeds 0 1 2 3 4 5 6 7

Runs what `fit` does before SVI (pyro_causalvae.discovery.choose_order_and_warm_start: the order search,
near-ties broken by the sparsest warm-started graph) on the training labels of the default split, with
the seed setting the model's initial weights and the rows the order search samples, as in `fit`. With
--no-order-search: the label loss + L1 + path penalty + augmented Lagrangian from A = 0 on the full
support, for comparison. Prints the SHD against the true graph. The full training
(`benchmarks/train_speed.py`, `benchmarks/quality.py`) reports the graph at the end of SVI.

With --fraction: the graph stage on the labelled rows of a semi-supervised run
(`benchmarks/semi_supervised.py`'s seeded subset of the training images, the seed both the subset's and the
search's). With --chance: no search; the out-of-sample gain (share of variance,
`pyro_causalvae.discovery.select_parents`' criterion) of one independent root regressed on another (the
chance gain a spurious parent shows) next to the smallest gain of a true parent given the child's other true
parents, over the seeds, for each fraction (what `discovery.selection_threshold` is set from).
"""

from __future__ import annotations

import argparse
import itertools
import time

import pyro
import torch

from pyro_causalvae import CausalVAE
from pyro_causalvae.datasets import Flow, Pendulum
from pyro_causalvae.discovery import _table, choose_order_and_warm_start
from pyro_causalvae.loss import LossWeights
from pyro_causalvae.metrics import shd
from semi_supervised import split  # the labelled subset of a semi-supervised run (benchmarks/ is on sys.path)


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


def chance_gains(D, fractions: list[float], seeds: list[int]) -> None:
    """Print, per fraction: the gain of an independent root as a parent of another root (chance), against
    the smallest gain of a true parent beyond the child's other true parents, over the seeds."""
    train = D(split="train")
    idx = {c: k for k, c in enumerate(train.concepts)}
    roots = [idx[c] for c in train.concepts if train.graph.in_degree(c) == 0]
    nulls = [(j, c) for j in roots for c in roots if j != c]
    trues = [(idx[a], idx[b], [idx[p] for p in train.graph.predecessors(b) if p != a]) for a, b in train.graph.edges()]
    for frac in fractions:
        chance, true = [], []
        for seed in seeds:
            t = _table(train.labels_normalised[split(train, frac, seed)], None, seed)
            gain = lambda c, base, extra: (t.regress(c, base)[0] - t.regress(c, base + extra)[0]) / float(t.var[c])  # noqa: E731
            chance += [gain(c, [], [j]) for j, c in nulls]
            true += [gain(c, others, [j]) for j, c, others in trues]
        chance, true = torch.tensor(chance), torch.tensor(true)
        print(f"{train.name:<9} fraction {frac:<5} rows per half {t.n:<5} chance gain: mean {chance.mean():+.4f} "
              f"sd {chance.std():.4f} max {chance.max():.4f} ({len(chance)} draws)  | true parents' smallest gain "
              f"{true.min():.4f}  | threshold {selection_threshold(0.01, t.n):.4f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.05])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--no-order-search", action="store_true")
    ap.add_argument("--fraction", type=float, nargs="+", default=[1.0],
                    help="share of the training images labelled (semi_supervised.py's seeded subset)")
    ap.add_argument("--chance", action="store_true", help="print the chance and true parents' gains instead")
    args = ap.parse_args()
    if args.chance:
        for D in (Pendulum, Flow):
            chance_gains(D, args.fraction, args.seeds)
        return
    total = []
    for D, noise, frac in itertools.product((Pendulum, Flow), args.noise, args.fraction):
        for seed in args.seeds:
            t0 = time.perf_counter()
            data = D(split="train", size=16, noise=noise)
            pyro.set_rng_seed(seed)
            model = CausalVAE(data.concepts, data.image_shape)
            labels = data.labels_normalised if frac >= 1 else data.labels_normalised[split(data, frac, seed)]
            if args.no_order_search:
                free_al(model, labels, args.steps, seed)
                found = "-"
            else:
                order, _, candidates = choose_order_and_warm_start(model, labels, seed=seed, steps=args.steps)
                found = " < ".join(data.concepts[i] for i in order) + f" (of {len(candidates)} candidate orders)"
            learned = model.graph()
            s = shd(learned, data.graph)
            total.append(s)
            print(f"{data.name:<9} noise {noise:<5} labelled {len(labels):<5} seed {seed}: SHD {s}  h(A) {model.acyclicity().item():.1e}  "
                  f"order {found}  edges {', '.join(f'{a}->{b}' for a, b in learned.edges())}  "
                  f"({time.perf_counter() - t0:.1f} s)", flush=True)
    print(f"SHD 0 in {sum(s == 0 for s in total)} of {len(total)} runs")


if __name__ == "__main__":
    main()
