"""Quality over seeds: MIC / TIC (this project's protocol) and SHD at the default settings (not a test).

    python benchmarks/quality.py                                  # Pendulum and Flow, seeds 0 1 2, 30 epochs
    python benchmarks/quality.py --seeds 0 --dataset pendulum     # one run
    python benchmarks/quality.py --weight rereading=100 --runs runs/reread   # a loss weight changed

Each (dataset, seed) is trained at the default `train` settings into RUNS/<dataset>-seed<k> (a finished
run there is reused), then evaluated on the test split: MIC and TIC x 100 (pyro_causalvae.metrics.protocol)
and the learned graph's SHD (after fit's pruning of redundant edges; a run trained before fit pruned
is pruned here by the same function). Prints each run and the mean +- standard deviation over seeds, next to the
paper's numbers. The counterfactual measures are in benchmarks/counterfactual_accuracy.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import pyro

from pyro_causalvae import CausalVAE, fit, load_model
from pyro_causalvae import checkpoint as ckpt
from pyro_causalvae.cli import parse_weights
from pyro_causalvae.datasets import Flow, Pendulum
from pyro_causalvae.loss import LossWeights
from pyro_causalvae.metrics import evaluate_mic_tic, shd
from pyro_causalvae.train import prune_learned_graph

PAPER = {"pendulum": (95.1, 2.4, 81.6, 1.9), "flow": (72.1, 1.3, 56.4, 1.6)}


def run(name: str, seed: int, epochs: int, runs: Path, weights: LossWeights | None = None) -> dict:
    D = Pendulum if name == "pendulum" else Flow
    out = runs / f"{name}-seed{seed}"
    t0 = time.perf_counter()
    done = ckpt.progress(out)
    pruned = None
    if done is not None and done["epoch"] >= epochs:
        model = load_model(out)
        trained = "reused"
        state = ckpt.load_checkpoint(ckpt.latest_checkpoint(out))
        if "pruned" not in state and model.spec.learned:
            # Trained before fit() pruned redundant edges after its last epoch: apply that same last step now.
            pruned = prune_learned_graph(model, D(split="train"))
            trained = "reused, pruned post hoc as fit's last step"
        else:
            pruned = state.get("pruned")
    else:
        train = D(split="train")
        pyro.set_rng_seed(seed)
        model = CausalVAE(train.concepts, train.image_shape, label_loc=train.label_loc, label_scale=train.label_scale,
                          decoder_groups=train.object_groups)
        hist = fit(model, train, epochs=epochs, seed=seed, progress=False, out_dir=out, resume=done is not None, weights=weights,
                   extra_config={"data": {"dataset": name, "size": 96, "data_seed": 0, "noise": 0.0}})
        pruned = hist.pruned
        trained = f"trained in {time.perf_counter() - t0:.0f} s"
    test = D(split="test")
    res = evaluate_mic_tic(model, test)
    return {"dataset": name, "seed": seed, "mic": res["mic"], "tic": res["tic"], "shd": shd(model.graph(), test.graph),
            "graph": [f"{a}->{b}" for a, b in model.graph().edges()],
            "pruned": [f"{a}->{b}" for a, b in (r["edge"] for r in pruned or [])], "run": str(out), "how": trained}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", nargs="+", default=["pendulum", "flow"], choices=["pendulum", "flow"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--runs", default="runs/quality")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--weight", action="append", default=[], metavar="NAME=VALUE",
                    help="a LossWeights field for fresh trainings (repeatable), e.g. rereading=100")
    args = ap.parse_args()
    try:
        weights = parse_weights(args.weight)
    except ValueError as e:
        ap.error(f"--weight: {e}")
    results = []
    for name in args.dataset:
        for seed in args.seeds:
            r = run(name, seed, args.epochs, Path(args.runs), weights)
            results.append(r)
            print(f"{name:<9} seed {seed}: MIC {r['mic']:.1f}  TIC {r['tic']:.1f}  SHD {r['shd']}  pruned {r['pruned'] or '-'}  "
                  f"({r['how']})", flush=True)
    for name in args.dataset:
        rows = [r for r in results if r["dataset"] == name]
        sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
        mic, tic = [r["mic"] for r in rows], [r["tic"] for r in rows]
        p = PAPER[name]
        print(f"{name}: MIC {statistics.mean(mic):.1f} +- {sd(mic):.1f}, TIC {statistics.mean(tic):.1f} +- {sd(tic):.1f} "
              f"over {len(rows)} seeds; SHD 0 in {sum(r['shd'] == 0 for r in rows)} of {len(rows)} "
              f"(paper: MIC {p[0]} +- {p[1]}, TIC {p[2]} +- {p[3]})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
