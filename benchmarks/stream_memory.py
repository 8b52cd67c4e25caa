"""Peak memory of a folder dataset trained from disk: images streamed through DataLoader workers.

Writes a folder of N 64x64 PNG files and a labels CSV (4 concepts) in a temporary directory, then, in a
fresh process per measurement, builds the dataset (every header checked), takes one full pass of the training feed
(every image decoded once, as in an epoch of ``fit``) and trains a small model for ``--steps`` steps.
Prints the time of each phase and the peak resident memory: RSS of the main process, the largest RSS of a
DataLoader worker (a forked worker's RSS also counts the pages it shares with the main process), and the
peak proportional set size of the whole process tree (shared pages counted once: the memory really used), for the streamed path and (up to ``--resident-max`` images) the in-memory one, and
which of the two the size rule (``stream=None``, the default) picks.

The PNG files are 256 distinct random-texture images written under N names (fast to write; each file is
still decoded in full).

    python benchmarks/stream_memory.py                       # N = 10,000, 50,000, 200,000
    python benchmarks/stream_memory.py --images 20000 --workers 1
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

K = 4


def write_folder(root: Path, n: int, size: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(256):
        base = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((size, size), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        blobs.append(buf.getvalue())
    (root / "images").mkdir(parents=True)
    labels = rng.uniform(-1, 1, (n, K))
    with open(root / "labels.csv", "w") as f:
        f.write("file," + ",".join(f"c{k}" for k in range(K)) + "\n")
        for i in range(n):
            name = f"images/{i:07d}.png"
            (root / name).write_bytes(blobs[i % 256])
            f.write(name + "," + ",".join(f"{v:.4f}" for v in labels[i]) + "\n")
    return root / "labels.csv"


def tree_pss_mb(pid: int) -> float:
    """Proportional set size (shared pages split between the processes sharing them) of ``pid`` and all its
    descendants, in MB: the memory the process tree really uses (Linux ``/proc``)."""
    pids, i = [pid], 0
    while i < len(pids):
        task = f"/proc/{pids[i]}/task"
        i += 1
        try:
            threads = os.listdir(task)
        except OSError:
            continue
        for t in threads:
            try:
                with open(f"{task}/{t}/children") as f:
                    pids += [int(k) for k in f.read().split()]
            except OSError:
                pass
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += sum(int(ln.split()[1]) for ln in f if ln.startswith("Pss:"))
        except OSError:
            pass
    return total / 1024


class PeakPss:
    """Samples :func:`tree_pss_mb` of this process every 0.2 s in a thread; ``peak`` is the largest."""

    def __init__(self):
        import threading

        self.peak, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_pss_mb(os.getpid()))
            self._stop.wait(0.2)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, tree_pss_mb(os.getpid()))


def child(csv: str, stream: str, workers: int, steps: int, batch: int) -> dict:
    """One measurement, in its own process."""
    import torch

    from pyro_causalvae import CausalVAE, fit
    from pyro_causalvae.data_feed import BatchFeed
    from pyro_causalvae.datasets import ConceptImageDataset

    torch.set_num_threads(1)
    out = {}
    pss = PeakPss()
    out["pss_at_start_mb"] = tree_pss_mb(os.getpid())
    t0 = time.perf_counter()
    ds = ConceptImageDataset(None, csv, stream={"auto": None, "on": True, "off": False}[stream])
    out["build_s"] = time.perf_counter() - t0
    out["streamed"] = ds.streamed
    out["rss_after_build_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    feed = BatchFeed(ds, len(ds), batch, 0, torch.device("cpu"), num_workers=workers)
    t0 = time.perf_counter()
    seen = 0
    for x, _ in feed.epoch(0):
        seen += x.shape[0]
    out["pass_s"] = time.perf_counter() - t0
    out["images_per_s_pass"] = seen / out["pass_s"]
    if steps:
        part = ds.subset(torch.arange(min(len(ds), steps * batch)))
        model = CausalVAE(ds.concepts, ds.image_shape, style_dim=1, graph=[("c0", "c1")], channels=16, hidden=64,
                          label_loc=ds.label_loc, label_scale=ds.label_scale)
        t0 = time.perf_counter()
        fit(model, part, epochs=1, batch_size=batch, progress=False, num_workers=workers, order_search=False, prune=False)
        out["fit_s"] = time.perf_counter() - t0
    out["peak_rss_main_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["peak_rss_worker_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    out["peak_pss_total_mb"] = pss.stop()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=50, help="training steps of the small model (0: none)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--resident-max", type=int, default=50_000, help="also measure the in-memory path up to this many images")
    p.add_argument("--child", nargs=2, metavar=("CSV", "STREAM"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.workers, args.steps, args.batch_size)))
        return
    from pyro_causalvae.datasets.base import RESIDENT_LIMIT_BYTES, resident_bytes

    print(f"{'images':>8} {'rule':>9} {'path':>9} {'write s':>8} {'build s':>8} {'pass s':>7} {'img/s':>7} {'fit s':>6} "
          f"{'RSS main MB':>11} {'RSS worker MB':>13} {'PSS all MB':>10}  ({args.size}x{args.size} RGB, {args.workers} workers, "
          f"{args.steps} fit steps of {args.batch_size})")
    for n in args.images:
        tmp = Path(tempfile.mkdtemp(prefix="stream-bench-"))
        try:
            t0 = time.perf_counter()
            csv = write_folder(tmp, n, args.size)
            write_s = time.perf_counter() - t0
            for stream in ("on", "off") if n <= args.resident_max else ("on",):
                cmd = [sys.executable, __file__, "--child", str(csv), stream, "--workers", str(args.workers),
                       "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
                res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True,
                                                env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout.splitlines()[-1])
                path = "streamed" if res["streamed"] else "in memory"
                rule = "streamed" if resident_bytes(n, (3, args.size, args.size)) > RESIDENT_LIMIT_BYTES else "in memory"
                print(f"{n:>8} {rule:>9} {path:>9} {write_s:>8.1f} {res['build_s']:>8.1f} {res['pass_s']:>7.1f} "
                      f"{res['images_per_s_pass']:>7.0f} {res.get('fit_s', 0):>6.1f} {res['peak_rss_main_mb']:>11.0f} "
                      f"{res['peak_rss_worker_mb']:>13.0f} {res['peak_pss_total_mb']:>10.0f}", flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
