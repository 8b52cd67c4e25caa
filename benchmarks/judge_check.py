"""Can the judges tell? Their accuracy, and known-good and known-bad counterfactuals (not a test).

    python benchmarks/judge_check.py                         # Pendulum and Flow at 96 px
    python benchmarks/judge_check.py --dataset pendulum --size 64

For each world, two judges (pyro_causalvae.metrics.judge, cached under ~/.cache/pyro_causalvae/judges;
the first run trains them, a few minutes each on one core):
  - "interventional": trained on renders in which every concept is drawn independently over its range;
  - "observational": trained on scm.sample, where effects are functions of their causes (comparison).

Prints:
  1. each judge's R^2 per concept on 2,000 held-out renders of each design;
  2. for each concept c, each judge's error reading c (natural units, mean absolute) on the test images
     and on the true counterfactual renders under do(c = v): a judge that reads an effect off its
     causes misreads the intervened effect;
  3. soundness scores of known cases, scored exactly as a model is (pyro_causalvae.metrics.soundness):
     the simulator wrapped as a model (true counterfactuals: should score perfectly), the same with
     interventions on the sinks ignored (the effect's pixels never change: a known-bad case), and a
     decoder that copies its input (known-bad).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pyro_causalvae.datasets import Flow, Pendulum
from pyro_causalvae.metrics.judge import DESIGNS, JudgeSettings, judge_r2, load_judge
from pyro_causalvae.metrics.reference_models import CopyModel, SimulatorModel
from pyro_causalvae.metrics.soundness import evaluate_soundness, readable_interventions


def load_judges(scm, size: int, cache_dir: str | None = None, progress: bool = True, **settings) -> tuple[dict, dict]:
    """``({design: judge}, {design: seconds to load or train})`` for both designs (``settings``: JudgeSettings fields)."""
    judges, seconds = {}, {}
    for d in DESIGNS:
        t0 = time.perf_counter()
        judges[d] = load_judge(scm, JudgeSettings(design=d, size=size, **settings), cache_dir=cache_dir, progress=progress)
        seconds[d] = round(time.perf_counter() - t0, 1)
    return judges, seconds


def reading_errors(scm, test, judges: dict, n: int, seed: int) -> dict:
    """Per concept and judge: MAE (natural units) on test images and on true do(c) counterfactual renders."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(test), generator=g)[:n]
    labels = test.labels[idx]
    labels = labels[test.scm.readable(labels)]
    images = scm.render(labels, size=test.image_shape[-1])
    out = {}
    for k, c in enumerate(scm.concepts):
        v, ok = readable_interventions(scm, labels, c, generator=g)
        cf = scm.counterfactual(labels[ok], do={c: v[ok] * scm.label_scale[k] + scm.label_loc[k]})
        cf_img = scm.render(cf, size=test.image_shape[-1])
        out[c] = {}
        for name, judge in judges.items():
            def mae(img, lab):
                return float(((judge.predict(img)[:, k] * scm.label_scale[k] + scm.label_loc[k]) - lab[:, k]).abs().mean())
            out[c][name] = {"test_images": mae(images, labels), "intervened": mae(cf_img, cf)}
    return out


def known_cases(scm, test, judges: dict, n: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(test), generator=g)[:n]
    labels = test.labels[idx]
    labels = labels[scm.readable(labels)]
    size = test.image_shape[-1]
    sinks = tuple(c for c in scm.concepts if not list(scm.graph.successors(c)))
    out = {}
    for name, model in (("true counterfactuals", SimulatorModel(scm, size)),
                        (f"sinks frozen ({', '.join(sinks)})", SimulatorModel(scm, size, frozen=sinks)),
                        ("copies its input", CopyModel(scm.concepts, (3, size, size)))):
        images = model.render(labels) if isinstance(model, SimulatorModel) else scm.render(labels, size=size).float() / 255.0
        out[name] = evaluate_soundness(model, scm, images, labels, judges, seed=seed, composition_steps=3,
                                       composition_images=100, mic_images=0)
    return out


def report(name: str, res: dict) -> None:
    concepts = list(res["r2"]["interventional"]["interventional"])
    print(f"\n== {name} ({res['size']} px): judges loaded or trained in {res['judge_seconds']} s")
    print("1. judge R^2 on 2,000 held-out renders")
    print(f"   {'judge':<15}{'renders':<16}" + "".join(f"{c:>17}" for c in concepts))
    for j, by in res["r2"].items():
        for d, r2 in by.items():
            print(f"   {j:<15}{d:<16}" + "".join(f"{r2[c]:>17.4f}" for c in concepts))
    print("2. error reading each concept (natural units, MAE): on test images | on true counterfactuals under do(concept)")
    for c, by in res["reading"].items():
        print(f"   {c:<17}" + "   ".join(f"{j}: {e['test_images']:.3f} | {e['intervened']:.3f}" for j, e in by.items()))
    print("3. known cases (effectiveness MAE / slope in normalised units; composition after 1 and 3; reversibility L1)")
    for case, r in res["known"].items():
        print(f"   {case}")
        for c, s in r["concepts"].items():
            eff = "   ".join(f"{j}: {js['effectiveness']['mae']:.3f} / {js['effectiveness']['slope']:.3f}, leak {js['max_leakage']:.3f}"
                           for j, js in s["judges"].items())
            print(f"     do({c}): {eff}   comp {s['composition'][0]:.4f} -> {s['composition'][-1]:.4f}, "
                  f"rev {s['reversibility_l1']:.4f}, cf MSE {s['pixels']['cf_mse']:.4f} (unchanged {s['pixels']['unchanged_mse']:.4f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", nargs="+", default=["pendulum", "flow"], choices=["pendulum", "flow"])
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--n", type=int, default=1000, help="test images for the reading errors")
    ap.add_argument("--n-known", type=int, default=300, help="test images for the known cases")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", help="judge cache (default ~/.cache/pyro_causalvae/judges)")
    ap.add_argument("--judge-images", type=int, default=JudgeSettings.num_images, help="judge training renders")
    ap.add_argument("--judge-epochs", type=int, default=JudgeSettings.epochs)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    results = {}
    for name in args.dataset:
        test = (Pendulum if name == "pendulum" else Flow)(split="test", size=args.size)
        scm = test.scm
        judges, seconds = load_judges(scm, args.size, args.cache_dir, num_images=args.judge_images, epochs=args.judge_epochs)
        res = {"size": args.size, "judge_seconds": seconds,
               "r2": {j: {d: judge_r2(judge, scm, design=d, seed=args.seed + 777) for d in DESIGNS} for j, judge in judges.items()},
               "reading": reading_errors(scm, test, judges, args.n, args.seed),
               "known": known_cases(scm, test, judges, args.n_known, args.seed)}
        report(name, res)
        results[name] = res
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
