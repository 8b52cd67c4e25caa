"""Which image decoder gives right counterfactual images, sinks included (issue 13; not a test).

    python benchmarks/decoders.py --dataset pendulum --variant joint composite groups
    python benchmarks/decoders.py --dataset flow --variant joint groups --epochs 8 --size 64

Each variant is trained on the ordinary training images of the world (the true graph given, so that only
the decoder differs; default 64 px, 8 epochs, seed 0) and scored on 300 test images: for every concept c,
do(c = v) with v uniform over 90 % of c's range (redrawn until the true counterfactual scene is readable),
against the simulator's true counterfactual images:

  recon      pixel MSE of the reconstructions (x 1e3);
  cf         pixel MSE of the counterfactual images to the true counterfactuals (x 1e3), next to the
             unchanged image's (returning the factual image: the bar a counterfactual must beat);
  eff / slope / leak
             with the interventional judge (pyro_causalvae.metrics.judge, cached): effectiveness MAE and
             slope on c, and the largest move of a non-descendant (normalised units).

Variants (all with the default settings otherwise: no style, learned pixel scale):
  joint      one conv decoder of all concepts (the default before the layered decoder);
  composite  one decoder per concept, logits summed;
  groups     one decoder per object (the world's object_groups: the concepts that describe one thing in
             the picture share a decoder: Pendulum's shadow_length and shadow_position, Flow's
             hole_position and water_flow, whose jet starts at the hole), logits summed;
  layered    one decoder per concept, each painting a layer with a mask (softmax over the layers and a
             learned background: a pixel is owned by one layer);
  layered-groups  one such decoder per object (the default of CausalVAE and `train`);
  layered-groups-min1, -min10  the same with the minimality term (LossWeights.minimality = 1 or 10);
  cycle      joint with the counterfactual cycle term (LossWeights.cycle = 1);
  groups-cycle  groups with the cycle term.
Writes each variant's do(sink) sweep next to the truth to --figures (if given).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyro
import torch

from pyro_causalvae import CausalVAE, fit
from pyro_causalvae.datasets import Flow, Pendulum
from pyro_causalvae.loss import LossWeights
from pyro_causalvae.metrics.judge import JudgeSettings, load_judge
from pyro_causalvae.metrics.soundness import evaluate_soundness

VARIANTS = ("joint", "composite", "groups", "layered", "layered-groups", "layered-groups-min1", "layered-groups-min10",
            "cycle", "groups-cycle")


def world_objects(data) -> list[list[str]]:
    """The world's ``object_groups`` completed with the other concepts alone, in the concepts' order (the
    order of the groups, and so of their initial weights, in the runs docs/method.md reports)."""
    groups = data.object_groups + [[c] for c in data.concepts if not any(c in g for g in data.object_groups)]
    return sorted(groups, key=lambda g: min(data.concepts.index(c) for c in g))


def build(variant: str, data, objects=None) -> tuple[CausalVAE, LossWeights]:
    kw = {"decoder": "joint"}  # joint, cycle
    if variant in ("composite", "groups", "groups-cycle"):
        kw["decoder"] = "composite"
    if variant.startswith("layered"):
        kw["decoder"] = "layered"
    if variant in ("groups", "groups-cycle") or variant.startswith("layered-groups"):
        kw["decoder_groups"] = objects or world_objects(data)
    model = CausalVAE(data.concepts, data.image_shape, graph=data.graph, label_loc=data.label_loc,
                      label_scale=data.label_scale, **kw)
    weights = LossWeights(cycle=1.0) if variant.endswith("cycle") else LossWeights()
    if "-min" in variant:
        weights = LossWeights(minimality=float(variant.split("-min")[1]))
    return model, weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="pendulum", choices=["pendulum", "flow"])
    ap.add_argument("--variant", nargs="+", default=["joint", "composite", "groups"], choices=VARIANTS)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=300, help="test images scored")
    ap.add_argument("--json", help="write the scores here")
    ap.add_argument("--figures", help="folder for each variant's do(sink) sweep next to the truth")
    ap.add_argument("--save", help="folder for the trained runs (one per variant)")
    ap.add_argument("--object", action="append", metavar="A,B",
                    help="objects of the groups variants instead of the world's (repeatable; others alone)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    D = Pendulum if args.dataset == "pendulum" else Flow
    train, test = D(split="train", size=args.size), D(split="test", size=args.size)
    scm = test.scm
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(test), generator=g)
    idx = idx[scm.readable(test.labels[idx])][: args.n]
    x, labels = test.images[idx].float() / 255.0, test.labels[idx]
    objects = [t.split(",") for t in args.object] if args.object else None
    results = {}
    for variant in args.variant:
        pyro.set_rng_seed(args.seed)
        model, weights = build(variant, train, objects)
        t0 = time.perf_counter()
        out_dir = Path(args.save) / f"{args.dataset}-{variant}" if args.save else None
        fit(model, train, epochs=args.epochs, seed=args.seed, progress=False, weights=weights, out_dir=out_dir)
        train_s = time.perf_counter() - t0
        model.eval()
        judge = load_judge(scm, JudgeSettings(design="interventional", size=args.size), progress=False)  # cached
        res = evaluate_soundness(model, scm, x, labels, {"interventional": judge}, seed=args.seed,
                                 composition_steps=0, mic_images=0)
        rec = res["reconstruction"]
        print(f"{args.dataset} {variant}: trained {train_s:.0f} s; recon MSE x1e3 {1e3 * rec['mse']:.2f}; judge R^2 on "
              "recon " + ", ".join(f"{v:.3f}" for v in rec["judge_r2"]["interventional"].values()), flush=True)
        for c, r in res["concepts"].items():
            p, s = r["pixels"], r["judges"]["interventional"]
            print(f"  do({c:<16}) cf {1e3 * p['cf_mse']:6.2f} (unchanged {1e3 * p['unchanged_mse']:5.2f})  "
                  f"eff {s['effectiveness']['mae']:.3f} slope {s['effectiveness']['slope']:.3f}  "
                  f"leak {s['max_leakage']:.3f}", flush=True)
        results[variant] = {"train_seconds": round(train_s, 1), **res}
        if args.figures:
            from counterfactual_accuracy import sink_figure

            sink_figure(model, scm, x[:1], labels[:1], Path(args.figures) / f"{args.dataset}_{variant}_sink_vs_truth.png")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o)))


if __name__ == "__main__":
    main()
