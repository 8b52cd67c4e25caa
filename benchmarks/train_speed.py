"""Training speed, peak memory and the learned graph at the default settings (not a test).

    python benchmarks/train_speed.py                      # Pendulum and Flow, default `train` settings
    python benchmarks/train_speed.py --epochs 2 --dataset pendulum   # a quick look
    python benchmarks/train_speed.py --epochs 2 --dataset pendulum --decoder layered joint   # the decoders' cost
    python benchmarks/train_speed.py --epochs 3 --dataset pendulum --weight rereading=0 --weight rereading=100   # a term's cost

For each dataset, in a fresh process (so that peak memory is that run's own): generate the data, time
training steps at the default settings (images/s over whole epochs, as the training loop reports them),
run the default number of epochs, and print the learned graph against the true one (SHD), plus the
process's peak resident memory. Compare the figures only with others measured in the same run: the
machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def run_one(name: str, epochs: int, seed: int, graph: str, decoder: str, weight: str = "") -> dict:
    import pyro
    import torch

    from pyro_causalvae import CausalVAE, fit
    from pyro_causalvae.cli import parse_weights
    from pyro_causalvae.datasets import Flow, Pendulum
    from pyro_causalvae.metrics import edge_precision_recall, shd

    t0 = time.perf_counter()
    data = (Pendulum if name == "pendulum" else Flow)(split="train")
    t_data = time.perf_counter() - t0
    pyro.set_rng_seed(seed)
    model = CausalVAE(data.concepts, data.image_shape, graph="learn" if graph == "learn" else data.graph,
                      label_loc=data.label_loc, label_scale=data.label_scale, decoder=decoder,
                      decoder_groups=None if decoder == "joint" else data.object_groups)
    weights = parse_weights(weight.split(",") if weight else [])
    hist = fit(model, data, epochs=epochs, seed=seed, progress=False, weights=weights)
    learned = model.graph()
    p, r = edge_precision_recall(learned, data.graph)
    ips = [row["images_per_s"] for row in hist.rows]
    return {
        "dataset": name,
        "images": len(data),
        "image_shape": list(data.image_shape),
        "threads": torch.get_num_threads(),
        "data_seconds": round(t_data, 2),
        "epochs": epochs,
        "train_seconds": round(sum(hist["seconds"]), 1),
        "images_per_s_median": round(sorted(ips)[len(ips) // 2], 1),
        "images_per_s_best": round(max(ips), 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "graph_mode": graph,
        "decoder": decoder,
        "weights": weight or "defaults",
        "learned_edges": [f"{u}->{v}" for u, v in learned.edges()],
        "shd": shd(learned, data.graph),
        "precision": round(p, 3),
        "recall": round(r, 3),
        "h": hist.last()["h"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", nargs="+", default=["pendulum", "flow"], choices=["pendulum", "flow"])
    ap.add_argument("--epochs", type=int, default=None, help="default: the CLI's `train` default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--graph", default="learn", choices=["learn", "true"])
    ap.add_argument("--decoder", nargs="+", default=["layered"], choices=["layered", "joint", "composite"],
                    help="decoders to time, one after the other in this run (default: the default, layered)")
    ap.add_argument("--weight", action="append", metavar="NAME=VALUE[,NAME=VALUE]",
                    help="LossWeights settings to time, one run per occurrence (default: the defaults)")
    ap.add_argument("--single", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.epochs is None:
        from pyro_causalvae.cli import build_parser

        args.epochs = build_parser().parse_args(["train", "--dataset", "pendulum", "--out", "x"]).epochs
    if args.single:
        print(json.dumps(run_one(args.single, args.epochs, args.seed, args.graph, args.decoder[0], (args.weight or [""])[0])))
        return
    for name in args.dataset:
        for decoder, weight in ((d, w) for d in args.decoder for w in args.weight or [""]):
            cmd = [sys.executable, __file__, "--single", name, "--epochs", str(args.epochs), "--seed", str(args.seed), "--graph", args.graph,
                   "--decoder", decoder] + (["--weight", weight] if weight else [])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ).stdout
            res = json.loads(out.strip().splitlines()[-1])
            print(f"{name} {res['image_shape']}, {decoder} decoder, weights {res['weights']}: {res['images']} train images, data generated in {res['data_seconds']} s")
            print(f"  training: {res['images_per_s_median']} images/s median over {res['epochs']} epochs "
                  f"(best {res['images_per_s_best']}), {res['train_seconds']} s, {res['threads']} threads")
            print(f"  peak memory (RSS): {res['peak_rss_gb']} GB")
            print(f"  graph ({res['graph_mode']}): {', '.join(res['learned_edges']) or '(none)'}; SHD {res['shd']}, "
                  f"precision {res['precision']}, recall {res['recall']}, h(A) {res['h']:.2e}")
            print("  json:", json.dumps(res))


if __name__ == "__main__":
    main()
