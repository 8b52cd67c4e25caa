"""The graph stage, training and evaluation at real users' sizes (issue 17; not a test).

    python benchmarks/scale.py graph                 # K = 4..16, n = 1,000 / 10,000 / 50,000, 5 SCMs: ours
    python benchmarks/scale.py graph --methods ours grasp boss exact-bic resit cam-uv dagma-mlp --n 1000 --K 8 12
    python benchmarks/scale.py worlds                # Pendulum / Flow labels, seeds 0-2, ours and the libraries
    python benchmarks/scale.py train                 # training images per CPU-second, K = 4 / 8 / 16
    python benchmarks/scale.py evaluate              # `evaluate` (encodings + MIC/TIC) on 6,000 images
    python benchmarks/scale.py memory                # peak RSS against the dataset's size
    python benchmarks/scale.py threads 1 2           # the graph stage with 1 / 2 intra-op threads (run it
                                                     # while other jobs keep the cores busy: the stall check)
    python benchmarks/scale.py table RESULTS.jsonl   # the graph table of earlier runs

Run it under `/work/tools/cpu-run` (one CPU slot); the libraries need the `bench` extra
(`pip install -e ".[bench]"`: dagma, causal-learn, lingam).

graph / worlds: "ours" is what `fit` runs on the labels before SVI plus the pruning it runs after the
last epoch, on the labels: `discovery.choose_order_and_warm_start` (order search, near-ties broken by the
fewest edges, CAM-style pruning, warm start of `A` within the chosen order; one intra-op thread) on a
fresh `CausalVAE(concepts, (8,))`, then `discovery.redundant_edges` on `model.graph()`. Its time is the
whole of that, in CPU seconds of this process. The SCMs (`graph_baselines.random_scm`): random nonlinear
additive, at most 2 parents per node, tanh mechanisms, Gaussian noise, columns standardised. Every method
gets the same standardised rows; a library given more rows than its cap in `graph_baselines.LIBRARIES`
gets a random subset of that many (said in the table). Each call runs in a forked child with a time
limit (`--timeout`); a call over it is reported as such. Results are appended to `--out` (JSON lines)
and calls already there are skipped, so an interrupted run continues.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from graph_baselines import LIBRARIES, random_scm, shd_edges  # noqa: E402

METHODS = ["ours", *LIBRARIES]


# ------------------------------------------------------------------------------------ graph stage


def _ours(X: np.ndarray, seed: int) -> tuple[set, set, dict]:
    import pyro
    import torch

    from pyro_causalvae import CausalVAE
    from pyro_causalvae.discovery import choose_order_and_warm_start, redundant_edges

    K = X.shape[1]
    names = [f"c{i}" for i in range(K)]
    pyro.set_rng_seed(seed)
    model = CausalVAE(names, (8,))
    labels = torch.as_tensor(X, dtype=torch.float32)
    lines: list[str] = []
    choose_order_and_warm_start(model, labels, seed=seed, log=lines.append)
    idx = {c: i for i, c in enumerate(names)}
    edges = {(idx[a], idx[b]) for a, b in model.graph().edges()}
    t0 = time.process_time()
    edges -= {tuple(r["edge"]) for r in redundant_edges(labels, sorted(edges))}
    lines.append(f"final pruning {time.process_time() - t0:.1f} s")
    return edges, set(), {"log": lines}


def _call(method: str, X: np.ndarray, seed: int, conn) -> None:
    try:
        import torch

        torch.set_num_threads(1)
        if method != "ours":
            os.environ["TQDM_DISABLE"] = "1"  # dagma's per-iteration bar
        t0 = time.process_time()
        if method == "ours":
            d, u, extra = _ours(X, seed)
        else:
            d, u = LIBRARIES[method][0](X, seed)
            extra = {}
        conn.send({"directed": sorted(d), "undirected": [sorted(e) for e in u], "cpu_s": time.process_time() - t0, **extra})
    except Exception as err:  # reported in the table, not hidden
        conn.send({"error": f"{type(err).__name__}: {err}"})


def run_method(method: str, X: np.ndarray, seed: int, timeout: float) -> dict:
    """``method`` on ``X`` in a forked child with a wall-clock limit."""
    ctx = mp.get_context("fork")
    a, b = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_call, args=(method, X, seed, b))
    t0 = time.perf_counter()
    p.start()
    out = a.recv() if a.poll(timeout) else {"error": f"over the {timeout:.0f} s limit"}
    p.kill()
    p.join()
    out["wall_s"] = time.perf_counter() - t0
    return out


def _rows_for(method: str, X: np.ndarray, seed: int) -> np.ndarray:
    cap = LIBRARIES[method][1] if method in LIBRARIES else None
    if cap is None or X.shape[0] <= cap:
        return X
    return X[np.random.default_rng(seed).choice(X.shape[0], cap, replace=False)]


def _done(out: Path) -> dict:
    done = {}
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done[(r["world"], r["K"], r["n"], r["seed"], r["method"])] = r
    return done


def _record(out: Path, row: dict) -> None:
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")


def _run_all(jobs, methods, args) -> None:
    out = Path(args.out)
    done = _done(out)
    available = [m for m in methods if m == "ours" or _importable(m)]
    for m in sorted(set(methods) - set(available)):
        print(f"{m}: not installed (pip install -e '.[bench]'), skipped", flush=True)
    for world, K, n, seed, make in jobs:
        X = edges = None
        for m in available:
            key = (world, K, n, seed, m)
            if key in done:
                continue
            if X is None:
                X, edges = make()
            rows = _rows_for(m, X, seed)
            res = run_method(m, rows, seed, args.timeout)
            row = {"world": world, "K": K, "n": n, "seed": seed, "method": m, "rows": int(rows.shape[0]), **res}
            if "error" not in res:
                row["shd"] = shd_edges({tuple(e) for e in res["directed"]}, {frozenset(e) for e in res["undirected"]}, edges)
                row["true_edges"] = len(edges)
            _record(out, row)
            print(_line(row), flush=True)


def _importable(method: str) -> bool:
    mod = {"dagma-mlp": "dagma", "grasp": "causallearn", "boss": "causallearn", "exact-bic": "causallearn",
           "cam-uv": "causallearn", "resit": "lingam"}[method]
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


def _line(r: dict) -> str:
    head = f"{r['world']:<8} K={r['K']:<3} n={r['n']:<6} seed {r['seed']} {r['method']:<10}"
    if "error" in r:
        return f"{head} {r['error']}"
    extra = "  " + " | ".join(r.get("log", [])) if r.get("log") else ""
    return f"{head} SHD {r['shd']:>2} (true edges {r['true_edges']})  {r['cpu_s']:.1f} CPU-s  rows {r['rows']}{extra}"


def cmd_graph(args) -> None:
    jobs = [("random", K, n, s, (lambda K=K, n=n, s=s: random_scm(K, n, s)))
            for n in args.n for K in args.K for s in args.seeds]
    _run_all(jobs, args.methods, args)
    print_table(Path(args.out))


def _world(name: str):
    from pyro_causalvae.datasets import Flow, Pendulum

    data = (Pendulum if name == "pendulum" else Flow)(split="train", size=16)
    X = data.labels_normalised.double().numpy()
    X = (X - X.mean(0)) / X.std(0)
    idx = {c: i for i, c in enumerate(data.concepts)}
    return X, {(idx[a], idx[b]) for a, b in data.graph.edges()}


def cmd_worlds(args) -> None:
    jobs = []
    for w in ("pendulum", "flow"):
        X, edges = _world(w)
        jobs += [(w, X.shape[1], X.shape[0], s, (lambda X=X, e=edges: (X, e))) for s in args.seeds]
    _run_all(jobs, args.methods, args)
    print_table(Path(args.out))


def print_table(out: Path) -> None:
    """Mean SHD and mean CPU seconds per (world, K, n, method) over the seeds in ``out``."""
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["world"], r["K"], r["n"]), {}).setdefault(r["method"], []).append(r)
    methods = [m for m in METHODS if any(m in g for g in groups.values())]
    print("\nmean SHD over the SCMs / mean CPU-s per call (rows given to the method if subsampled; "
          "'x/y ok': calls that finished)")
    print(f"{'world':<9}{'K':>3}{'n':>7}  " + "".join(f"{m:>20}" for m in methods))
    for (world, K, n), g in sorted(groups.items(), key=lambda kv: (kv[0][0] != "random", kv[0][2], kv[0][1], kv[0][0])):
        cells = []
        for m in methods:
            rs = g.get(m, [])
            ok = [r for r in rs if "shd" in r]
            if not rs:
                cells.append("-")
                continue
            cell = f"{np.mean([r['shd'] for r in ok]):.1f} / {np.mean([r['cpu_s'] for r in ok]):.0f}s" if ok else "fail"
            if len(ok) < len(rs):
                cell += f" {len(ok)}/{len(rs)} ok"
            sub = {r["rows"] for r in ok if r["rows"] < n}
            if sub:
                cell += f" [{min(sub)}]"
            cells.append(cell)
        print(f"{world:<9}{K:>3}{n:>7}  " + "".join(f"{c:>20}" for c in cells))


# ------------------------------------------------------------------------------------ training


def _train_child(K: int, images: int, size: int, conn) -> None:
    import pyro
    import torch

    from pyro_causalvae import CausalVAE, fit
    from pyro_causalvae.datasets import ConceptImageDataset

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (images, 3, size, size), dtype=torch.uint8, generator=g)
    u = torch.rand(images, K, generator=g) * 2 - 1
    names = [f"c{i}" for i in range(K)]
    chain = [(names[i], names[i + 1]) for i in range(K - 1)]
    ds = ConceptImageDataset(x, u, names, graph=chain)
    pyro.set_rng_seed(0)
    model = CausalVAE(names, ds.image_shape, graph=chain)
    fit(model, ds, epochs=1, batch_size=64, progress=False, prune=False)  # warm-up: first steps are slow
    t0 = time.process_time()
    fit(model, ds, epochs=1, batch_size=64, progress=False, prune=False)
    cpu = time.process_time() - t0
    conn.send({"K": K, "images": images, "size": size, "cpu_s": cpu, "images_per_cpu_s": images / cpu})


def _in_child(target, *a, timeout: float = 600) -> dict:
    ctx = mp.get_context("fork")
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=target, args=(*a, w))
    p.start()
    out = r.recv() if r.poll(timeout) else {"error": f"over the {timeout:.0f} s limit"}
    p.join()
    return out


def cmd_train(args) -> None:
    print(f"training images per CPU-second: known chain graph, {args.size}x{args.size} RGB, batch 64, "
          f"{args.images} images, one thread, the second of two epochs")
    for K in args.K:
        r = _in_child(_train_child, K, args.images, args.size)
        print(f"K = {K:>2}: " + (r["error"] if "error" in r else f"{r['images_per_cpu_s']:.0f} images per CPU-s "
                                 f"({r['cpu_s']:.1f} CPU-s per epoch)"), flush=True)


# ------------------------------------------------------------------------------------ evaluate


def _evaluate_child(images: int, size: int, conn) -> None:
    import pyro
    import torch

    from pyro_causalvae import CausalVAE
    from pyro_causalvae.datasets import ConceptImageDataset, PendulumSCM
    from pyro_causalvae.metrics import evaluate_mic_tic

    torch.set_num_threads(1)
    scm = PendulumSCM()
    labels = scm.sample(images, seed=0)
    ds = ConceptImageDataset(scm.render(labels, size=size), labels, list(scm.concepts))
    pyro.set_rng_seed(0)
    model = CausalVAE(ds.concepts, ds.image_shape)
    t0, c0 = time.perf_counter(), time.process_time()
    res = evaluate_mic_tic(model, ds)
    conn.send({"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "mic": res["mic"]})


def cmd_evaluate(args) -> None:
    r = _in_child(_evaluate_child, args.images, args.size)
    if "error" in r:
        print("evaluate:", r["error"])
        return
    print(f"evaluate (encodings + the {4}x{4} MIC/TIC matrices) on {args.images} Pendulum images of "
          f"{args.size}x{args.size}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} CPU-s (one thread; untrained model)")


# ------------------------------------------------------------------------------------ memory


def _memory_child(images: int, size: int, conn) -> None:
    import pyro
    import torch

    from pyro_causalvae import CausalVAE, fit
    from pyro_causalvae.datasets import ConceptImageDataset

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (images, 3, size, size), dtype=torch.uint8, generator=g)
    u = torch.rand(images, 4, generator=g) * 2 - 1
    names = ["a", "b", "c", "d"]
    ds = ConceptImageDataset(x, u, names, graph=[("a", "b"), ("b", "c"), ("c", "d")])
    del x
    pyro.set_rng_seed(0)
    model = CausalVAE(names, ds.image_shape, graph=[("a", "b"), ("b", "c"), ("c", "d")])
    fit(model, ds, epochs=1, batch_size=64, progress=False, prune=False)
    conn.send({"images": images, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20})


def cmd_memory(args) -> None:
    print(f"peak RSS of a process that builds a resident dataset of N random {args.size}x{args.size} RGB images "
          "and trains one epoch on it (known graph, batch 64, one thread)")
    for n in args.images:
        r = _in_child(_memory_child, n, args.size, timeout=1800)
        print(f"N = {n:>7}: " + (r["error"] if "error" in r else f"peak RSS {r['peak_rss_gb']:.2f} GB "
                                 f"(images alone {n * 3 * args.size**2 / 2**30:.2f} GB)"), flush=True)


# ------------------------------------------------------------------------------------ threads


def cmd_threads(args) -> None:
    import pyro
    import torch

    from pyro_causalvae import CausalVAE
    from pyro_causalvae.datasets import Pendulum
    from pyro_causalvae.discovery import choose_order_and_warm_start

    data = Pendulum(split="train")
    print(f"the graph stage on Pendulum's {len(data)} training labels (order search + warm start), in a process "
          f"whose torch default is {torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.2f}")
    for threads in args.threads:
        pyro.set_rng_seed(0)
        model = CausalVAE(data.concepts, (8,), label_loc=data.label_loc, label_scale=data.label_scale)
        t0, c0 = time.perf_counter(), time.process_time()
        choose_order_and_warm_start(model, data.labels_normalised, seed=0, threads=threads)
        print(f"threads = {threads}: {time.perf_counter() - t0:.1f} s wall, {time.process_time() - c0:.1f} CPU-s, "
              f"graph {sorted(model.graph().edges())}", flush=True)


# ------------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("graph", help="random nonlinear SCMs")
    g.add_argument("--K", type=int, nargs="+", default=[4, 6, 8, 10, 12, 16])
    g.add_argument("--n", type=int, nargs="+", default=[1000, 10000, 50000])
    w = sub.add_parser("worlds", help="the Pendulum and Flow label SCMs")
    for p in (g, w):
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4] if p is g else [0, 1, 2])
        p.add_argument("--methods", nargs="+", default=["ours"], choices=METHODS)
        p.add_argument("--timeout", type=float, default=600.0, help="wall-clock seconds per call")
        p.add_argument("--out", default="scale_graph.jsonl")
    t = sub.add_parser("train", help="training images per CPU-second")
    t.add_argument("--K", type=int, nargs="+", default=[4, 8, 16])
    t.add_argument("--images", type=int, default=1024)
    t.add_argument("--size", type=int, default=32)
    e = sub.add_parser("evaluate", help="evaluate on 6,000 images")
    e.add_argument("--images", type=int, default=6000)
    e.add_argument("--size", type=int, default=64)
    m = sub.add_parser("memory", help="peak RSS against the dataset's size")
    m.add_argument("--images", type=int, nargs="+", default=[2000, 10000, 40000])
    m.add_argument("--size", type=int, default=64)
    th = sub.add_parser("threads", help="the graph stage with 1 / 2 intra-op threads")
    th.add_argument("threads", type=int, nargs="*", default=[1, 2])
    tb = sub.add_parser("table", help="print the graph table of a results file")
    tb.add_argument("out")
    args = ap.parse_args()
    if args.cmd != "threads":
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.cmd == "table":
        print_table(Path(args.out))
    else:
        {"graph": cmd_graph, "worlds": cmd_worlds, "train": cmd_train, "evaluate": cmd_evaluate,
         "memory": cmd_memory, "threads": cmd_threads}[args.cmd](args)


if __name__ == "__main__":
    main()
