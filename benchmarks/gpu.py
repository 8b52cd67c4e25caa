"""Training speed and peak GPU memory on a CUDA device, float32 and bfloat16 (not a test).

    python benchmarks/gpu.py                                  # Pendulum 96x96, batch 64 and 256, fp32 and bf16
    python benchmarks/gpu.py --epochs 3 --batch-size 64 --precision fp32
    python benchmarks/gpu.py --device cpu --epochs 1 --size 32 # a smoke run of this script without a GPU

For each (batch size, precision): a fresh model on the resident Pendulum data (moved to the GPU once),
``--epochs`` epochs at the default settings; prints images/s (median epoch after the first, which holds
the order search's warm-up and CUDA's first-call costs), peak GPU memory
(``torch.cuda.max_memory_allocated``), the learned graph's SHD and the card's name. One JSON line per
configuration with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="append one JSON line per configuration here")
    args = ap.parse_args()

    import pyro
    import torch

    from pyro_causalvae import CausalVAE, fit
    from pyro_causalvae.datasets import Pendulum
    from pyro_causalvae.metrics import shd

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py: CUDA is not available on this machine (use --device cpu for a smoke run)")
    card = torch.cuda.get_device_name() if cuda else "cpu"
    t0 = time.perf_counter()
    data = Pendulum(split="train", size=args.size)
    print(f"{card}; torch {torch.__version__}; Pendulum {len(data)} images {data.image_shape} ({time.perf_counter() - t0:.1f} s)",
          flush=True)
    for bs in args.batch_size:
        for precision in args.precision:
            pyro.set_rng_seed(args.seed)
            model = CausalVAE(data.concepts, data.image_shape, label_loc=data.label_loc, label_scale=data.label_scale,
                              decoder_groups=data.object_groups)
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            hist = fit(model, data, epochs=args.epochs, batch_size=bs, precision=precision, device=args.device,
                       seed=args.seed, progress=False)
            wall = time.perf_counter() - t0
            ips = [r["images_per_s"] for r in hist.rows]
            steady = ips[1:] or ips
            row = {"card": card, "batch_size": bs, "precision": precision, "epochs": args.epochs,
                   "images_per_s_median": round(statistics.median(steady), 1), "images_per_s_first_epoch": round(ips[0], 1),
                   "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None,
                   "wall_seconds": round(wall, 1),
                   "order_search_seconds": round(hist.graph_search["seconds"], 1) if hist.graph_search else None,
                   "shd": shd(model.cpu().graph(), data.graph), "loss": round(hist.last()["loss"], 1)}
            print(f"batch {bs:>4} {precision}: {row['images_per_s_median']:>8.0f} images/s "
                  f"(first epoch {row['images_per_s_first_epoch']:.0f}), peak GPU memory {row['peak_gpu_gb']} GB, "
                  f"SHD {row['shd']}, wall {row['wall_seconds']} s", flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
