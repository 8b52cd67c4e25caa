"""How well the structural equations fit the labels: what bounds the prior's physics (issue 12; not a test).

    python benchmarks/mechanism_fit.py warm-start --dataset pendulum     # the warm start alone, a few settings
    python benchmarks/mechanism_fit.py run runs/sg2/pendulum-seed0       # a trained run (Pendulum or Flow)
    python benchmarks/mechanism_fit.py svi --variant learned known no-penalties   # short trainings, 64 px

A prior draw of a child is its mechanism of the drawn parents plus its noise, so its error against the true
mechanism is about sqrt(residual^2 + s^2), where the residual is the RMS of (label - g(parents' labels)).

``warm-start``: `warm_start.fit_structural_equations` on the training labels, the true graph, for each
(mechanism_hidden, noise_bins, noise_bound, steps) of the grid; prints each child's residual on the labels
and noise scale, and the share of each root's prior draws outside the labels' range (where the mechanisms
were never fitted: a prior child drawn there is off the data's manifold).
``run``: for a trained run, on 500 test images: each child's noise scale, its residual on the labels and on
the encoder's readings, the guide's sd and the encoder's error (normalised units).
``svi``: Pendulum at 64 px, 8 epochs, seed 0, default settings (``learned``), with the true graph given
(``known``), or with the L1 and path penalties off (``no-penalties``); prints each child's residual on the
training labels, its noise scale and the entries of ``A`` into it.
"""

from __future__ import annotations

import argparse
import time

import pyro
import torch

from pyro_causalvae import CausalVAE, load_model
from pyro_causalvae.datasets import Flow, Pendulum
from pyro_causalvae.warm_start import fit_structural_equations

#: (mechanism_hidden, noise_bins, noise_bound, steps): the defaults before issue 12's prior work, then the
#: changes one at a time, then the current defaults (64, 16, 5.0, 4000); step size 1e-2, cosine decay
GRID = [(32, 8, 3.0, 1000), (32, 8, 3.0, 4000), (64, 8, 3.0, 4000), (32, 16, 5.0, 4000), (64, 16, 5.0, 4000)]


def cmd_warm_start(args) -> None:
    data = (Pendulum if args.dataset == "pendulum" else Flow)(split="train")
    u = data.labels_normalised
    lo, hi = u.min(0).values, u.max(0).values
    for hidden, bins, bound, steps in GRID:
        pyro.set_rng_seed(0)
        model = CausalVAE(data.concepts, (8,), graph=data.graph, mechanism_hidden=hidden, noise_bins=bins,
                          noise_bound=bound, label_loc=data.label_loc, label_scale=data.label_scale)
        t0 = time.perf_counter()
        fit_structural_equations(model, u, steps=steps)
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            g, s = model.mechanisms(u, model.scm_adjacency()), model.noise_scales()
            pyro.set_rng_seed(1)
            draws = model.concept_model(None, 50_000)  # [n, K] prior draws
        cells = []
        for i, c in enumerate(model.concepts):
            if model.parents()[i]:
                cells.append(f"{c}: residual {float((u[:, i] - g[:, i]).pow(2).mean().sqrt()):.4f}, s {float(s[i]):.4f}")
            else:  # a root: the share of its prior draws outside the training labels' range
                out = float(((draws[:, i] < lo[i]) | (draws[:, i] > hi[i])).float().mean())
                cells.append(f"{c}: {100 * out:.1f} % of prior draws out of range")
        print(f"hidden {hidden:>3}, {bins:>2} bins on [-{bound:g}, {bound:g}], {steps} steps ({seconds:.0f} s): "
              + "; ".join(cells), flush=True)


def cmd_svi(args) -> None:
    from pyro_causalvae import fit
    from pyro_causalvae.loss import LossWeights

    data = Pendulum(split="train", size=64)
    u = data.labels_normalised
    for variant in args.variant:
        pyro.set_rng_seed(0)
        model = CausalVAE(data.concepts, data.image_shape, graph=data.graph if variant == "known" else "learn",
                          label_loc=data.label_loc, label_scale=data.label_scale)
        weights = LossWeights(sparsity=0.0, path=0.0) if variant == "no-penalties" else LossWeights()
        fit(model, data, epochs=args.epochs, seed=0, progress=False, weights=weights)
        with torch.no_grad():
            g, s, A = model.mechanisms(u, model.scm_adjacency()), model.noise_scales(), model.adjacency
        cells = []
        for i, c in enumerate(model.concepts):
            if model.parents()[i]:
                into = ", ".join(f"{model.concepts[j]} {float(A[j, i]):.3f}" for j in model.parents()[i])
                cells.append(f"{c}: residual {float((u[:, i] - g[:, i]).pow(2).mean().sqrt()):.4f}, s {float(s[i]):.4f}"
                             f" (A from {into})")
        print(f"{variant}: " + "; ".join(cells), flush=True)


@torch.no_grad()
def cmd_run(args) -> None:
    model = load_model(args.run).eval()
    name = "pendulum" if "shadow_length" in model.concepts else "flow"
    test = (Pendulum if name == "pendulum" else Flow)(split="test")
    x, u = test.images[:500].float() / 255, test.labels_normalised[:500]
    post = model.posterior(x)
    A, s = model.scm_adjacency(), model.noise_scales()
    g_lab, g_enc = model.mechanisms(u, A), model.mechanisms(post.loc, A)
    rms = lambda v: float(v.pow(2).mean().sqrt())  # noqa: E731
    for i, c in enumerate(model.concepts):
        line = f"{c:<16} guide sd {float(post.scale[:, i].mean()):.4f}  encoder error {rms(post.loc[:, i] - u[:, i]):.4f}"
        if model.parents()[i]:
            line += (f"  s {float(s[i]):.4f}  residual on labels {rms(u[:, i] - g_lab[:, i]):.4f}"
                     f"  on readings {rms(post.loc[:, i] - g_enc[:, i]):.4f}")
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("warm-start")
    w.add_argument("--dataset", default="pendulum", choices=["pendulum", "flow"])
    r = sub.add_parser("run")
    r.add_argument("run")
    v = sub.add_parser("svi")
    v.add_argument("--variant", nargs="+", default=["learned", "known", "no-penalties"],
                   choices=["learned", "known", "no-penalties"])
    v.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    {"warm-start": cmd_warm_start, "run": cmd_run, "svi": cmd_svi}[args.cmd](args)


if __name__ == "__main__":
    main()
