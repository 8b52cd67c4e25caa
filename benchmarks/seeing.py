"""Seeing vs the simulator, and the prior on the data's manifold (issue targets; not a test).

    python benchmarks/seeing.py                         # Pendulum and Flow, the seed-0 runs of quality.py
    python benchmarks/seeing.py --runs runs/quality --seed 1

For a trained run (trained by benchmarks/quality.py's recipe into RUNS/<dataset>-seed<k> if absent):

Seeing. For each non-root concept c and v at the 10th / 50th / 90th percentile of its training labels,
the posterior of each parent of c given c = v (normalised units), from the model's concept sites with
``x=None``: self-normalised importance sampling with the prior as proposal over 200,000 independent
copies of the query in the data plate of ``model.concept_model`` (the model's concept sites without the
decoder); for the median, Pyro's ``Importance`` on ``model.model`` (images unobserved) as a check of the
same program. The simulator's conditional: 4,000,000 labels from ``scm.sample``, the ones within a narrow
window of v (+-0.005 normalised, widened until 2,000 rows fall in it), their parents' mean and sd.
Targets: |mean difference| <= 0.1 and sd within 30 %.

The prior. 50,000 prior draws of the concepts: each root's sd against the training labels' (target
within 10 %), and each child's error against the true mechanism applied to its drawn parents (RMS,
normalised units), next to the same error of the encoder's readings on the test images (target <= 1.5x).
Beside them: each root's share of prior draws outside the training labels' range ("outside"), and each
child's prior error over the draws whose parents all lie inside that range (where its mechanism saw labels).

Known-bad check (``--untrained``): the same tables for an untrained model with the true graph (random
mechanisms, initial noise scales): the benchmark must flag its rows.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import EmpiricalMarginal, Importance

from pyro_causalvae import CausalVAE, fit, load_model
from pyro_causalvae import checkpoint as ckpt
from pyro_causalvae.datasets import Flow, Pendulum

QUANTILES = (0.1, 0.5, 0.9)


def trained_model(name: str, seed: int, runs: Path, epochs: int) -> CausalVAE:
    out = runs / f"{name}-seed{seed}"
    done = ckpt.progress(out)
    if done is not None and done["epoch"] >= epochs:
        return load_model(out).eval()
    D = Pendulum if name == "pendulum" else Flow
    train = D(split="train")
    pyro.set_rng_seed(seed)
    model = CausalVAE(train.concepts, train.image_shape, label_loc=train.label_loc, label_scale=train.label_scale,
                      decoder_groups=train.object_groups)
    fit(model, train, epochs=epochs, seed=seed, progress=False, out_dir=out, resume=done is not None,
        extra_config={"data": {"dataset": name, "size": 96, "data_seed": 0, "noise": 0.0}})
    return model.eval()


@torch.no_grad()
def model_posterior(model: CausalVAE, child: str, v: float, parents: list[str], n: int, seed: int) -> dict:
    """Posterior mean and sd of each parent given child = v: importance sampling over the data plate."""
    pyro.set_rng_seed(seed)
    seen = poutine.condition(model.concept_model, data={child: torch.full((n,), v)})
    tr = poutine.trace(seen).get_trace(None, n)
    tr.compute_log_prob()
    w = torch.softmax(tr.nodes[child]["log_prob"].double(), 0)
    ess = float(1.0 / (w * w).sum())
    out = {"ess": ess}
    for p in parents:
        x = tr.nodes[p]["value"].double()
        m = (w * x).sum()
        out[p] = (float(m), float((w * (x - m) ** 2).sum().sqrt()))
    return out


@torch.no_grad()
def pyro_importance(model: CausalVAE, child: str, v: float, parent: str, num_samples: int, seed: int) -> float:
    """The same query with Pyro's Importance on the full model (images unobserved, x=None)."""
    pyro.set_rng_seed(seed)
    seen = poutine.condition(model.model, data={child: torch.tensor([v])})
    with pyro.validation_enabled(False):
        post = Importance(seen, guide=None, num_samples=num_samples).run(None, None, 1)
    return float(EmpiricalMarginal(post, parent).mean)


def simulator_conditional(scm, model: CausalVAE, child: str, v: float, parents: list[str], n: int, seed: int) -> dict:
    labels = model.normalise(scm.sample(n, seed=seed))  # [n, K] normalised with the model's units
    k = model.concepts.index(child)
    width = 0.005
    while True:
        sel = (labels[:, k] - v).abs() < width
        if int(sel.sum()) >= 2000 or width > 0.2:
            break
        width *= 1.5
    rows = labels[sel]
    out = {"rows": int(sel.sum()), "width": width}
    for p in parents:
        x = rows[:, model.concepts.index(p)].double()
        out[p] = (float(x.mean()), float(x.std()))
    return out


@torch.no_grad()
def prior_check(model: CausalVAE, train, test, n: int, seed: int) -> list[dict]:
    scm = train.scm
    pyro.set_rng_seed(seed)
    draws = model.concept_model(None, n)  # [n, K] normalised
    nat = model.denormalise(draws)
    enc = []
    images = test.images
    for start in range(0, images.shape[0], 256):
        enc.append(model.encode(images[start:start + 256].float() / 255))
    enc = torch.cat(enc)
    enc_nat = model.denormalise(enc)
    data = train.labels_normalised
    inside = (draws >= data.min(0).values) & (draws <= data.max(0).values)  # [n, K]: within the labels' range
    graph = scm.graph
    rows = []
    for i, c in enumerate(model.concepts):
        parents = list(graph.predecessors(c))
        if not parents:
            rows.append({"concept": c, "kind": "root", "prior_sd": float(draws[:, i].std()), "data_sd": float(data[:, i].std()),
                         "outside": float(1 - inside[:, i].float().mean())})
            continue

        def error(values_nat, values_norm, rows_kept=None):
            truth = scm.mechanism(c, {p: values_nat[:, model.concepts.index(p)] for p in parents})
            t = model.normalise(truth, c)
            keep = torch.isfinite(t)  # Flow's sqrt is undefined where a drawn parent leaves its domain
            if rows_kept is not None:
                keep &= rows_kept
            return float(((values_norm[keep, i] - t[keep]) ** 2).mean().sqrt())

        # the prior draws whose parents all lie within the training labels' range (the mechanism saw labels there)
        in_range = inside[:, [model.concepts.index(p) for p in parents]].all(1)
        rows.append({"concept": c, "kind": "child", "prior_err": error(nat, draws), "encoder_err": error(enc_nat, enc),
                     "prior_err_in_range": error(nat, draws, in_range), "parents_in_range": float(in_range.float().mean())})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", nargs="+", default=["pendulum", "flow"], choices=["pendulum", "flow"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default="runs/quality")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--particles", type=int, default=200_000)
    ap.add_argument("--importance", type=int, default=2000, help="samples of the Pyro Importance check")
    ap.add_argument("--untrained", action="store_true", help="known-bad check: an untrained model, true graph")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name in args.dataset:
        t0 = time.perf_counter()
        D = Pendulum if name == "pendulum" else Flow
        train, test = D(split="train"), D(split="test")
        if args.untrained:
            pyro.set_rng_seed(args.seed)
            model = CausalVAE(train.concepts, train.image_shape, graph=train.graph, label_loc=train.label_loc,
                              label_scale=train.label_scale).eval()
        else:
            model = trained_model(name, args.seed, Path(args.runs), args.epochs)
        scm = train.scm
        print(f"\n== {name} (seed {args.seed}; graph {sorted(model.graph().edges())})")
        print(f"{'child':<16}{'q':>4}{'v':>8}  {'parent':<16}{'model mean':>11}{'sim mean':>10}{'|diff|':>8}"
              f"{'model sd':>10}{'sim sd':>8}{'sd ratio':>9}  ok   (ESS, Pyro Importance)")
        fails = 0
        for child in scm.concepts:
            parents = list(scm.graph.predecessors(child))
            if not parents:
                continue
            k = model.concepts.index(child)
            for q in QUANTILES:
                v = float(torch.quantile(train.labels_normalised[:, k], q))
                post = model_posterior(model, child, v, parents, args.particles, args.seed)
                sim = simulator_conditional(scm, model, child, v, parents, 4_000_000, args.seed + 1)
                for p in parents:
                    (mm, ms), (sm, ss) = post[p], sim[p]
                    ok = abs(mm - sm) <= 0.1 and abs(ms / max(ss, 1e-12) - 1) <= 0.3
                    fails += not ok
                    extra = f"(ESS {post['ess']:.0f}"
                    if q == 0.5 and p == parents[0] and args.importance:
                        extra += f", Importance {pyro_importance(model, child, v, p, args.importance, args.seed):.3f}"
                    print(f"{child:<16}{q:>4}{v:>8.3f}  {p:<16}{mm:>11.3f}{sm:>10.3f}{abs(mm - sm):>8.3f}"
                          f"{ms:>10.3f}{ss:>8.3f}{ms / max(ss, 1e-12):>9.2f}  {'yes' if ok else 'NO '}  {extra})")
        print(f"seeing: {fails} of the rows miss a target")
        print(f"{'concept':<16}{'prior sd':>10}{'data sd':>9}{'ratio':>7}{'outside':>9}   |   {'prior err':>10}"
              f"{'encoder err':>12}{'ratio':>7}   | parents in range: {'share':>6}{'prior err':>10}{'ratio':>7}")
        for r in prior_check(model, train, test, 50_000, args.seed):
            if r["kind"] == "root":
                print(f"{r['concept']:<16}{r['prior_sd']:>10.3f}{r['data_sd']:>9.3f}{r['prior_sd'] / r['data_sd']:>7.2f}"
                      f"{100 * r['outside']:>8.1f}%   |")
            else:
                enc_err = max(r['encoder_err'], 1e-12)
                print(f"{r['concept']:<16}{'':>35}   |   {r['prior_err']:>10.4f}{r['encoder_err']:>12.4f}"
                      f"{r['prior_err'] / enc_err:>7.2f}   | {'':>18}{100 * r['parents_in_range']:>5.1f}%"
                      f"{r['prior_err_in_range']:>10.4f}{r['prior_err_in_range'] / enc_err:>7.2f}")
        print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
