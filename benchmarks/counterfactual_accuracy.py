"""Counterfactual accuracy against the ground-truth simulators (not a test).

    python benchmarks/counterfactual_accuracy.py --dataset pendulum flow            # train (default settings), then score
    python benchmarks/counterfactual_accuracy.py --dataset pendulum --run RUN_DIR   # score a trained run

For test images of each world and each concept c: intervene do(c = v) with v drawn uniformly over c's
range, and compare the model's counterfactual (abduction at the guide's posterior mean, then
poutine.do + replay) with the simulator's true counterfactual (its SCM's abduction-action-prediction,
rendered). Labels are read off images by an independent judge, a small CNN trained on fresh simulator
images only. Prints, per intervened concept: the change achieved on it, R^2 and error of each
descendant against the true mechanism, leakage into non-descendants (normalised label units), and
pixel errors against the true counterfactual images next to the reconstruction error. Writes one
intervention grid per dataset to docs/figures/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyro
import torch

from pyro_causalvae import CausalVAE, fit, load_model
from pyro_causalvae.datasets import Flow, Pendulum
from pyro_causalvae.metrics import intervention_scores, pixel_errors, r2_score
from pyro_causalvae.metrics.judge import train_judge
from pyro_causalvae.plotting import plot_intervention_grid
from pyro_causalvae.queries import intervention_grid

ROOT = Path(__file__).resolve().parents[1]


def evaluate(name: str, run: str | None, epochs: int, n: int, seed: int, judge_images: int, size: int = 96,
             figures: Path = ROOT / "docs" / "figures", save_runs: Path | None = None) -> dict:
    D = Pendulum if name == "pendulum" else Flow
    test = D(split="test", size=size)
    scm = test.scm
    t0 = time.perf_counter()
    if run is None:
        train = D(split="train", size=size)
        pyro.set_rng_seed(seed)
        model = CausalVAE(train.concepts, train.image_shape, label_loc=train.label_loc, label_scale=train.label_scale)
        out_dir = None if save_runs is None else save_runs / f"{name}-seed{seed}"
        fit(model, train, epochs=epochs, seed=seed, progress=False, out_dir=out_dir,
            extra_config={"data": {"dataset": name, "size": size, "data_seed": 0, "noise": 0.0}})
    else:
        model = load_model(run)
    model.eval()
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    judge = train_judge(scm, size=test.image_shape[-1], num_images=judge_images, seed=seed, progress=False)
    held = scm.sample(2000, seed=seed + 999)
    j_held = judge.predict(scm.render(held, size=test.image_shape[-1]).float() / 255.0).numpy()
    judge_r2 = {c: round(r2_score(scm.normalise(held)[:, k].numpy(), j_held[:, k]), 4) for k, c in enumerate(scm.concepts)}
    judge_s = time.perf_counter() - t0

    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(test), generator=g)[:n]
    x = test.images[idx].float() / 255.0
    labels = test.labels[idx]
    u = test.normalise(labels).numpy()
    out = {"dataset": name, "n": int(n), "train_seconds": round(train_s, 1), "judge_seconds": round(judge_s, 1),
           "judge_r2_on_simulator": judge_r2, "graph": [f"{a}->{b}" for a, b in model.graph().edges()], "interventions": {}}
    for k, c in enumerate(test.concepts):
        v_norm = (torch.rand(n, generator=g) * 1.8 - 0.9)
        v_nat = test.denormalise(torch.zeros(n, len(test.concepts)).index_put_((torch.arange(n), torch.full((n,), k)), v_norm))[:, k]
        cf = model.counterfactual(x, do={c: v_nat})
        cf_img, fact_img = cf["images"][0], cf["factual_images"][0]
        true_cf = scm.counterfactual(labels, do={c: v_nat})
        true_img = scm.render(true_cf, size=test.image_shape[-1]).float() / 255.0
        scores = intervention_scores(test.concepts, test.graph, c, v_norm.numpy(), u, test.normalise(true_cf).numpy(),
                                     judge.predict(fact_img).numpy(), judge.predict(cf_img).numpy())
        scores.update(pixel_errors(x.numpy(), fact_img.numpy(), cf_img.numpy(), true_img.numpy()))
        out["interventions"][c] = scores
    leak = [v for s in out["interventions"].values() for v in s["leakage"].values()]
    r2 = [d["r2"] for s in out["interventions"].values() for d in s["descendants"].values()]
    out["max_leakage"] = max(leak) if leak else 0.0
    out["mean_leakage"] = float(np.mean(leak)) if leak else 0.0
    out["min_descendant_r2"] = min(r2) if r2 else float("nan")
    grid = intervention_grid(model, x[:1])
    plot_intervention_grid(x[0], grid, figures / f"{name}_intervention_grid.png", reconstruction=model.reconstruct(x[:1])[0],
                           title=f"{name}: counterfactuals of one test image, do(concept = value) over each concept's range")
    out["figure"] = str(figures / f"{name}_intervention_grid.png")
    return out


def report(res: dict) -> None:
    print(f"\n{res['dataset']}: {res['n']} test images; learned graph {', '.join(res['graph'])}")
    print(f"  judge R^2 on held-out simulator images: {res['judge_r2_on_simulator']}")
    print(f"  {'do(concept)':<22}{'achieved':>9}{'|cf-v|':>8}{'cf MSE':>9}{'rec MSE':>9}  descendants R^2 (MAE) | leakage")
    for c, s in res["interventions"].items():
        desc = ", ".join(f"{k} {d['r2']:.3f} ({d['mae']:.3f})" for k, d in s["descendants"].items()) or "-"
        leak = ", ".join(f"{k} {v:.3f}" for k, v in s["leakage"].items()) or "-"
        print(f"  {c:<22}{s['achieved']:>9.3f}{s['target_error']:>8.3f}{s['cf_mse']:>9.4f}{s['recon_mse']:>9.4f}  {desc} | {leak}")
    print(f"  max leakage {res['max_leakage']:.3f} (target <= 0.05), mean {res['mean_leakage']:.3f}; "
          f"min descendant R^2 {res['min_descendant_r2']:.3f} (target >= 0.9); figure {res['figure']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", nargs="+", default=["pendulum", "flow"], choices=["pendulum", "flow"])
    ap.add_argument("--run", help="a trained run directory (one dataset)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--n", type=int, default=500, help="test images")
    ap.add_argument("--judge-images", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=96, help="image side (smaller for a quick smoke run)")
    ap.add_argument("--figures", default=str(ROOT / "docs" / "figures"), help="folder for the intervention grids")
    ap.add_argument("--save-runs", help="keep the trained runs in this folder (for pyro-causalvae intervene ...)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.run and len(args.dataset) != 1:
        ap.error("--run scores one dataset: give one --dataset")
    results = [evaluate(d, args.run, args.epochs, args.n, args.seed, args.judge_images, args.size, Path(args.figures),
                        Path(args.save_runs) if args.save_runs else None)
               for d in args.dataset]
    for r in results:
        report(r)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
