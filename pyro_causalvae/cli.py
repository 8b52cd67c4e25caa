"""Command line: ``pyro-causalvae demo | train | intervene | counterfactual | evaluate`` (also ``python -m pyro_causalvae``).

Errors are printed as one readable line (exit status 2), whatever raised them; ``--debug`` (before or
after the subcommand) shows the traceback instead. docs/hardening.md lists the messages.

Data-parallel: ``torchrun --nproc_per_node N -m pyro_causalvae train ...`` (``--batch-size`` is the global
batch); rank 0 prints, writes the checkpoints and the figures.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from pathlib import Path

from .cli_data import add_data_arguments, add_run_data_overrides, run_dataset, training_data
from .graph_files import GRAPH_FILE_FORMATS
from .progress import log_to_stdout, phase

EPILOG = "Run 'pyro-causalvae COMMAND --help' for a command's options."


def parse_weights(items: list[str] | None):
    """``LossWeights`` from ``NAME=VALUE`` strings (``train --weight``; the benchmarks' ``--weight`` too).

    :raises ValueError: one line naming the item that is not ``NAME=VALUE``, an unknown name or a value that
        is not a number (or that ``LossWeights`` refuses).
    """
    from .loss import LossWeights

    kw = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--weight {item!r} must be NAME=VALUE")
        k, v = item.split("=", 1)
        if k not in LossWeights.__dataclass_fields__:
            raise ValueError(f"unknown loss weight {k!r}; known: {sorted(LossWeights.__dataclass_fields__)}")
        try:
            kw[k] = float(v)
        except ValueError as err:
            raise ValueError(f"--weight {k}={v!r} is not a number") from err
    return LossWeights(**kw)


#: the most values ``intervene`` draws a grid for (``--sweep``, ``--values``)
MAX_SWEEP = 100


def _add_train_args(p: argparse.ArgumentParser, demo: bool = False) -> None:
    from .distributed import DEFAULT_PEER_TIMEOUT
    from .model import DECODERS, CausalVAE

    graph_defaults = inspect.signature(CausalVAE.__init__).parameters
    if not demo:
        add_data_arguments(p)
    p.add_argument("--size", type=int, default=None if not demo else 96,
                   help="image side in pixels (default: 96 for pendulum/flow, 64 for celeba; folder images are used as they are)")
    p.add_argument("--out", default="runs/demo" if demo else None, required=not demo, help="run directory")
    p.add_argument("--epochs", type=int, default=12 if demo else 30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--style-dim", type=int, default=0, help="unsupervised style latents outside the graph (default 0: none; a wide style block can absorb the concepts, see docs/method.md)")
    p.add_argument("--decoder", default=graph_defaults["decoder"].default, choices=DECODERS,
                   help="layered (default): one decoder per object, each painting a layer with a mask; joint: one decoder "
                        "of all concepts (the earlier default: resume a run trained with it with --decoder joint); "
                        "composite: one per object, logits summed (see docs/method.md, 'Counterfactual images')")
    p.add_argument("--object", action="append", metavar="CONCEPT,CONCEPT", dest="objects",
                   help="concepts that describe one thing in the picture, drawn by one decoder of a composite or layered "
                        "decoder (repeatable; default: the dataset's objects for pendulum/flow, else each concept alone)")
    p.add_argument("--graph", default="learn",
                   help=f"learn | true (the dataset's or --true-graph's) | a graph file ({GRAPH_FILE_FORMATS}) | 'a->b,b->c'")
    p.add_argument("--weight", action="append", metavar="NAME=VALUE", help="loss weight, e.g. --weight kl=0.5 (repeatable)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (under torchrun: cuda:LOCAL_RANK on each rank)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast the loss to bfloat16")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers for images read from disk (celeba, large folders; default: min(4, cores - 1))")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="write a checkpoint every N steps (0: only at the end; default: by time, see --checkpoint-interval)")
    p.add_argument("--checkpoint-interval", type=float, default=60.0,
                   help="without --checkpoint-every: at most one checkpoint per this many seconds (always one at the end)")
    p.add_argument("--keep-last", type=int, default=3, help="checkpoints to keep")
    p.add_argument("--force", action="store_true", help="train into a non-empty --out that is not a run (its files may be overwritten)")
    p.add_argument("--peer-timeout", type=float, default=DEFAULT_PEER_TIMEOUT,
                   help="torchrun: seconds after which a rank that stopped responding ends the job")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data split")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--threshold", type=float, default=graph_defaults["edge_threshold"].default,
                   help="an edge is in the graph (and in the structural equations) when |A| exceeds this")
    p.add_argument("--relative", type=float, default=graph_defaults["edge_relative"].default,
                   help="... and this fraction of the strongest edge into the same concept")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (one line per phase is still printed)")


def _do_arg(items: list[str]) -> dict[str, float]:
    do = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--do {item!r} must be CONCEPT=VALUE")
        k, v = item.split("=", 1)
        if k.strip() in do:
            raise ValueError(f"--do {k.strip()} is given twice")
        try:
            do[k.strip()] = float(v)
        except ValueError as err:
            raise ValueError(f"--do {item!r}: {v!r} is not a number") from err
    return do


def _check_out_suffix(out, suffix: str) -> None:
    """``--out`` of a query must name a ``suffix`` file (so that a typo cannot overwrite another file)."""
    if out is None:
        return
    path = Path(out)
    if path.suffix.lower() != suffix:
        raise ValueError(f"--out {out} must name a {suffix} file")
    if path.is_dir():
        raise ValueError(f"--out {out} is a folder; name a {suffix} file")


def _query_image(args, model, cfg):
    """The image a query starts from: ``--image FILE`` or image ``--index`` of the run's held-out data."""
    import torch

    from .datasets.io import read_images

    if args.image is not None:
        x = read_images([args.image])
        if tuple(x.shape[1:]) != model.image_shape:
            raise ValueError(f"--image {args.image} has shape {tuple(x.shape[1:])} but the model expects {model.image_shape} (C, H, W)")
        return x.float() / 255.0
    ds, note = run_dataset(cfg, args.run_dir, args, purpose="; pass --image FILE", decode=False)
    if not 0 <= args.index < len(ds):
        raise ValueError(f"--index {args.index} is out of range: the run's data has {len(ds)} images ({note})")
    files = getattr(ds, "image_files", None)
    print(f"image {args.index} of {note}" + (f": {files[args.index]}" if files else ""))
    x = ds[args.index]
    return (x[0] if isinstance(x, tuple) else x).unsqueeze(0).to(torch.float32)


def run_intervene(args) -> int:
    from . import plotting
    from .checkpoint import CONFIG, load_model, read_json
    from .queries import intervention_grid, sweep_values

    if not args.values and not 1 <= args.sweep <= MAX_SWEEP:
        raise ValueError(f"--sweep must be >= 1 and at most {MAX_SWEEP}, got {args.sweep}")
    if args.values and len(args.values) > MAX_SWEEP:
        raise ValueError(f"--values takes at most {MAX_SWEEP} values, got {len(args.values)}")
    _check_out_suffix(args.out, ".png")
    model = load_model(args.run_dir)
    cfg = read_json(Path(args.run_dir) / CONFIG)
    concepts = args.concept or list(model.concepts)
    for c in concepts:
        if c not in model.concepts:
            raise ValueError(f"unknown concept {c!r}; the model's concepts are {list(model.concepts)}")
    if args.values and len(concepts) != 1:
        raise ValueError("--values applies to one --concept; use --sweep for several")
    x = _query_image(args, model, cfg)
    values = {c: (args.values if args.values else sweep_values(model, c, args.sweep)) for c in concepts}
    grid = intervention_grid(model, x, values)
    out = Path(args.out) if args.out else Path(args.run_dir) / "intervention_grid.png"
    plotting.plot_intervention_grid(x[0], grid, out, reconstruction=model.reconstruct(x)[0],
                                    title="counterfactuals: do(concept = value), natural units")
    for c, (vals, _) in grid.items():
        print(f"do({c}) over {', '.join(f'{float(v):.4g}' for v in vals)}")
    print("figure:", out)
    return 0


def run_counterfactual(args) -> int:
    import torch

    from . import plotting
    from .checkpoint import CONFIG, load_model, read_json

    do = _do_arg(args.do)
    _check_out_suffix(args.out, ".png")
    model = load_model(args.run_dir)
    cfg = read_json(Path(args.run_dir) / CONFIG)
    x = _query_image(args, model, cfg)
    out = model.counterfactual(x, do=do)
    print(f"{'concept':<24}{'factual':>12}{'counterfactual':>16}")
    for k, c in enumerate(model.concepts):
        mark = "  <- do" if c in do else ""
        print(f"{c:<24}{float(out['factual_concepts'][0, 0, k]):>12.4g}{float(out['concepts'][0, 0, k]):>16.4g}{mark}")
    path = Path(args.out) if args.out else Path(args.run_dir) / "counterfactual.png"
    grid = {", ".join(f"{k}={v:g}" for k, v in do.items()): (torch.tensor([0.0]), out["images"][0])}
    plotting.plot_intervention_grid(x[0], grid, path, reconstruction=out["factual_images"][0, 0], title="original | reconstruction | counterfactual")
    print("figure:", path)
    return 0


def run_evaluate(args) -> int:
    import torch

    from .checkpoint import CONFIG, load_model, read_json, write_json
    from .graph_files import parse_graph_arg
    from .metrics import edge_precision_recall, shd
    from .metrics.protocol import concept_latents, mic_tic_scores

    _check_out_suffix(args.out, ".json")
    show = not args.no_progress
    model = load_model(args.run_dir)
    cfg = read_json(Path(args.run_dir) / CONFIG)
    with phase("evaluate data") as ph:
        ds, note = run_dataset(cfg, args.run_dir, args, purpose=" to evaluate on", show=show)
        ph.note = note
    if args.true_graph is not None:
        ds.graph = parse_graph_arg(args.true_graph, model.concepts, "--true-graph")
    if getattr(ds, "labels", None) is None:
        raise ValueError("evaluate needs labelled data: the MIC/TIC protocol compares latents with labels")
    complete = ~torch.isnan(ds.labels).any(1)
    if not bool(complete.all()):
        skipped = int((~complete).sum())
        if not bool(complete.any()):
            raise ValueError(f"evaluate needs images with every label; none of the {len(ds)} images of {note} has all")
        ds = ds.subset(complete)
        note += f"; {skipped} with missing labels skipped"
    if len(ds) < 4:
        raise ValueError(f"evaluate needs at least 4 labelled images for MIC/TIC; {note} are {len(ds)} "
                         "(train with a larger --test-fraction)")
    print(f"{args.run_dir}: evaluating on {note}")
    t0 = time.perf_counter()
    with phase(f"encoding {len(ds)} images"):
        latents = concept_latents(model, ds.images if ds.images is not None else ds, progress=show)
    with phase("MIC/TIC"):
        res = {"run": str(args.run_dir), "split": note, "images": len(ds)}
        res.update(mic_tic_scores(latents, ds.labels.cpu().numpy(), ds.concepts, progress=show))
    res["seconds"] = round(time.perf_counter() - t0, 1)
    learned = model.graph()
    res["graph"] = [f"{a}->{b}" for a, b in learned.edges()]
    if ds.graph is not None:
        p, r = edge_precision_recall(learned, ds.graph)
        res.update(shd=shd(learned, ds.graph), precision=p, recall=r, true_graph=[f"{a}->{b}" for a, b in ds.graph.edges()])
    print(f"MIC {res['mic']:.1f}  TIC {res['tic']:.1f}  (x 100, mean over concepts of the matched pairs)")
    width = max(len(c) for c in model.concepts)
    header = "latent / label"
    print(f"{header:<{width}}  " + "  ".join(f"{c[:10]:>10}" for c in model.concepts) + "   (MIC x 100)")
    for c, row in zip(model.concepts, res["mic_matrix"]):
        print(f"{c:<{width}}  " + "  ".join(f"{v:>10.1f}" for v in row))
    graph_line = ", ".join(res["graph"]) or "(no edges)"
    if "shd" in res:
        graph_line += f"; vs the true graph: SHD {res['shd']}, precision {res['precision']:.2f}, recall {res['recall']:.2f}"
    print("graph:", graph_line)
    out = Path(args.out) if args.out else Path(args.run_dir) / "metrics.json"
    write_json(out, res)
    print("written:", out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyro-causalvae", description="CausalVAE as a Pyro program.", epilog=EPILOG)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="generate Pendulum, train a CausalVAE on it, write figures")
    _add_train_args(demo, demo=True)
    train = sub.add_parser("train", help="train a CausalVAE")
    _add_train_args(train)
    inter = sub.add_parser("intervene", help="the intervention grid of one image: counterfactuals over a sweep of values")
    inter.add_argument("run_dir")
    inter.add_argument("--concept", action="append", help="concept to intervene on (repeatable; default: all)")
    inter.add_argument("--values", type=float, nargs="+", help="values (natural units) for one --concept")
    inter.add_argument("--sweep", type=int, default=7, help="number of values over each concept's observed range")
    cf = sub.add_parser("counterfactual", help="the counterfactual of one image under do(concept=value, ...)")
    cf.add_argument("run_dir")
    cf.add_argument("--do", action="append", required=True, metavar="CONCEPT=VALUE", help="intervention, natural units (repeatable)")
    for p in (inter, cf):
        p.add_argument("--image", help="image file (default: an image of the run's held-out data)")
        p.add_argument("--index", type=int, default=0, help="which held-out image, without --image")
        p.add_argument("--out", help="PNG to write (default: in RUN_DIR)")
    ev = sub.add_parser("evaluate", help="MIC/TIC (this project's protocol) and graph recovery of a trained run, on its held-out images")
    ev.add_argument("run_dir")
    ev.add_argument("--out", help="JSON to write (default: RUN_DIR/metrics.json)")
    ev.add_argument("--true-graph", help=f"the graph to compare with (default: the run's): {GRAPH_FILE_FORMATS}, or 'a->b,b->c'")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars (one line per phase is still printed)")
    for p in (inter, cf, ev):
        add_run_data_overrides(p)
    for p in (demo, train, inter, cf, ev):
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return parser


def _objects(args, train) -> list[list[str]] | None:
    """``decoder_groups`` for the model: ``--object`` lists, else the dataset's objects (composite and layered
    decoders only; the joint decoder draws every concept from all of them)."""
    objects = getattr(args, "objects", None)
    if objects:
        if args.decoder == "joint":
            raise ValueError("--object needs --decoder composite or layered (the joint decoder draws every concept "
                             "from all of them)")
        return [[c.strip() for c in text.split(",") if c.strip()] for text in objects]
    if args.decoder == "joint":
        return None
    return getattr(train, "object_groups", None) or None


def _check_graph_args(args) -> None:
    import math

    for name in ("threshold", "relative"):
        v = getattr(args, name)
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"--{name} must be a finite number >= 0, got {v}")


#: the figures ``train`` writes into --out (besides what fit writes)
FIGURES = ("losses.png", "graph.png", "reconstructions.png")


def _check_out(args) -> None:
    """--out before any work: not a file, not a folder of other files (unless --force), not a run
    holding checkpoints without --resume."""
    from .checkpoint import checkpoints
    from .rundir import FIT_WRITES, check_out_dir

    out = Path(args.out)
    check_out_dir(out, force=args.force, writes=FIT_WRITES + FIGURES, flag="--force")
    if not args.resume and checkpoints(out):
        raise ValueError(f"{out} already holds checkpoints; pass --resume to continue it, or choose a new --out")


def _workers(args, train) -> int:
    """``--workers``, or by default: none for data in memory, ``min(4, cores - 1)`` (at least 1) for data
    decoded from disk."""
    if args.workers is not None:
        return args.workers
    if getattr(train, "images", None) is not None:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(4, max(1, cores - 1))


def _run_architecture(out: Path) -> dict:
    """``train --resume``: the settings of the run in ``out`` that ``train`` has no flag for (widths, noise
    shapes, ...), so that a run resumes with its own architecture even where today's defaults differ (a
    run saved before a setting existed gets the value it had, :data:`~pyro_causalvae.model.LEGACY_CONFIG`).
    Empty when ``out`` holds no config (``fit`` then names what is missing)."""
    from .checkpoint import CONFIG, read_config
    from .model import ARCHITECTURE_KEYS, LEGACY_CONFIG

    if not (out / CONFIG).is_file():
        return {}
    saved = {**LEGACY_CONFIG, **read_config(out)["model"]}
    return {k: saved[k] for k in ARCHITECTURE_KEYS if k in saved}


def run_training(args, dataset_args) -> int:
    import pyro
    import torch

    from . import _limits, distributed, plotting
    from .checkpoint import CONFIG
    from .metrics import edge_precision_recall, shd
    from .model import CausalVAE
    from .train import check_settings, fit

    _check_graph_args(args)
    weights = parse_weights(args.weight)
    check_settings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weights=weights, seed=args.seed,
                   keep_last=args.keep_last, checkpoint_every=args.checkpoint_every,
                   checkpoint_interval=args.checkpoint_interval, peer_timeout=args.peer_timeout,
                   precision=args.precision, num_workers=args.workers if args.workers is not None else 0,
                   device=args.device)
    main_rank = distributed.env_rank() == 0
    if main_rank:
        _check_out(args)
    say = print if main_rank else (lambda *a, **k: None)
    data = training_data(dataset_args, not args.no_progress and main_rank)
    train, test = data.train, data.test
    say(f"data: {train!r}")
    workers = _workers(args, train)
    if train.images is None:
        say(f"images are decoded on the fly by {workers} DataLoader worker(s)")
    pyro.set_rng_seed(args.seed)  # the initial weights too
    model_args = dict(style_dim=args.style_dim, graph=data.graph, edge_threshold=args.threshold, edge_relative=args.relative,
                      label_loc=train.label_loc, label_scale=train.label_scale, decoder=args.decoder,
                      decoder_groups=_objects(args, train))
    out = Path(args.out)
    where = "the command line"
    if args.resume:
        arch = _run_architecture(out)
        model_args.update(arch)
        if arch:
            where = f"the command line and {out / CONFIG}"

    def build():
        return CausalVAE(train.concepts, train.image_shape, **model_args)

    _limits.check_model_build(build, model_args, where, factor=4)  # parameters, gradients, Adam moments
    model = build()
    history = fit(model, train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weights=weights,
                  device=args.device, seed=args.seed, out_dir=out, resume=args.resume, progress=not args.no_progress and main_rank,
                  checkpoint_every=args.checkpoint_every, checkpoint_interval=args.checkpoint_interval,
                  keep_last=args.keep_last, force=args.force, peer_timeout=args.peer_timeout,
                  precision=args.precision, num_workers=workers, extra_config={"data": data.record})
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    if not main_rank:
        return 0
    model.cpu()
    last = history.last()
    print(f"trained {last['epoch']} epochs: loss {last['loss']:.1f}, recon {last['recon']:.1f}, "
          f"h(A) {last['h']:.2e}, {last['images_per_s']:.0f} images/s")
    if history.graph_search is not None:  # its time is on the graph stage's line above
        print(f"causal order found in the labels: {' < '.join(history.graph_search['order'])} "
              "(then A learned under the augmented Lagrangian)")
    if history.pruned:
        print("pruned as redundant given the other parents:", ", ".join(f"{a}->{b}" for a, b in (r["edge"] for r in history.pruned)))
    learned = model.graph()
    print("learned graph:", ", ".join(f"{u}->{v}" for u, v in learned.edges()) or "(no edges)")
    if train.graph is not None:
        p, r = edge_precision_recall(learned, train.graph)
        print(f"vs the true graph: SHD {shd(learned, train.graph)}, precision {p:.2f}, recall {r:.2f}")
    evalset = test if test is not None else train
    if evalset.images is not None:
        x = evalset.images[:8].float() / 255.0
    else:  # read from disk
        x = torch.stack([evalset[i][0] for i in range(min(8, len(evalset)))]).cpu()
    figs = [plotting.plot_losses(history, out / "losses.png"),
            plotting.plot_graph(learned, out / "graph.png", true_graph=train.graph),
            plotting.plot_reconstructions(x, model.reconstruct(x), out / "reconstructions.png")]
    print("figures:", ", ".join(str(f) for f in figs))
    return 0


#: errors whose message is written for the user (any other type is named in front of its message)
_OURS = (ValueError, FileNotFoundError, FileExistsError, OSError)


def error_line(err: BaseException) -> str:
    """The one line printed for ``err``: its message with line breaks folded; the exception's type in
    front where the message is not one of ours (an error from inside a library), and an allocator
    failure as what it is."""
    from . import _limits
    from .train import TrainingDiverged

    oom = _limits.out_of_memory_message(err)
    if oom is not None:
        return oom
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in text:
        text = f"{text}: {err.filename}"
    if isinstance(err, _OURS) or isinstance(err, TrainingDiverged) or type(err).__name__ == "PeerLost":
        return text
    return f"{type(err).__name__}: {text} (an unexpected error; --debug shows where)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .distributed import env_rank

    if env_rank() == 0:  # under torchrun, rank 0 prints
        log_to_stdout()
    try:
        if args.command == "demo":
            ds = argparse.Namespace(dataset="pendulum", root=None, labels=None, subset=None, noise=0.0, size=args.size,
                                    data_seed=args.data_seed, graph=args.graph)
            print(f"pyro-causalvae demo: Pendulum ({args.size}x{args.size}), a CausalVAE trained for {args.epochs} epochs")
            return run_training(args, ds)
        if args.command == "train":
            return run_training(args, args)
        if args.command == "intervene":
            return run_intervene(args)
        if args.command == "counterfactual":
            return run_counterfactual(args)
        if args.command == "evaluate":
            return run_evaluate(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every error is one line (the traceback with --debug)
        if args.debug:
            raise
        print(f"pyro-causalvae: error: {error_line(err)}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
