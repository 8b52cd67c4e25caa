"""The data side of the command line: dataset arguments, graphs given as files, the held-out split, and
the run directory's record of the data.

Training (:func:`training_data`) runs every check before anything slow: the labels CSV, then the graphs
(``--graph``, ``--true-graph``) against its concepts, then every image file's header; only then are the
images decoded (or streamed, for large folders). The run records the data with absolute paths and the
CSV's SHA-256 (:func:`~TrainingData.record`), so that ``evaluate``, ``intervene`` and ``counterfactual``
(:func:`run_dataset`) work from any working directory, use the same held-out rows, and say clearly what
to pass (``--root``, ``--labels``) when the data folder has moved.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import networkx as nx

from .graph_files import GRAPH_FILE_FORMATS, parse_graph_arg
from .progress import log, phase

__all__ = ["add_data_arguments", "add_run_data_overrides", "TrainingData", "training_data", "run_dataset",
           "graph_argument", "MIN_COMPLETE_ROWS"]

#: Fully labelled rows the causal-order search needs (``discovery.order_search`` refuses fewer).
MIN_COMPLETE_ROWS = 16
#: the largest ``--size`` (image side in pixels)
MAX_SIZE = 1024


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """The dataset arguments of ``train``."""
    p.add_argument("--dataset", choices=["pendulum", "flow", "celeba", "folder"], required=True)
    p.add_argument("--root", help="data folder (celeba: CelebA's folder; folder: the images; default for folder: "
                                  "the labels CSV's folder)")
    p.add_argument("--labels", help="labels CSV for --dataset folder: an image column (file, filename, path, image) "
                                    "and one numeric column per concept; blank / nan / NA cells are missing labels")
    p.add_argument("--image-column", help="the CSV column of image file names (default: found by name)")
    p.add_argument("--concepts", help="comma-separated concept columns of the CSV, in order (default: every numeric column)")
    p.add_argument("--test-fraction", type=float, default=0.1,
                   help="folder: fraction of rows held out for evaluate (seeded by --data-seed) when the CSV has no "
                        "split column (default 0.1)")
    p.add_argument("--true-graph", help=f"the graph to compare with (SHD, precision, recall): {GRAPH_FILE_FORMATS}, "
                                        "or 'a->b,b->c'")
    p.add_argument("--stream", choices=["auto", "on", "off"], default="auto",
                   help="folder: decode images on the fly in DataLoader workers (on), all into memory (off), or by "
                        "size (auto: stream above 1 GiB of decoded images)")
    p.add_argument("--subset", default="smile", help="CelebA concept subset: smile | beard")
    p.add_argument("--noise", type=float, default=0.0, help="synthetic datasets: observation noise on child concepts")
    p.add_argument("--follow-symlinks", action="store_true",
                   help="--dataset folder: read image files outside the image folder (symbolic links leading out of "
                        "it, absolute or ../ names in the CSV)")


def add_run_data_overrides(p: argparse.ArgumentParser) -> None:
    """``--root`` / ``--labels`` of the commands that read a trained run's data (for moved data)."""
    p.add_argument("--root", help="the run's data folder, if it moved since training")
    p.add_argument("--labels", help="the run's labels CSV, if it moved since training")


def _check_size(name: str, size) -> None:
    """``--size`` within [16, MAX_SIZE], and the synthetic images it asks for within the memory budget."""
    from . import _limits
    from .datasets import flow, pendulum

    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= MAX_SIZE:
        raise ValueError(f"--size must be an integer in [16, {MAX_SIZE}] (image side in pixels), got {size!r}")
    count = {"pendulum": pendulum.N_TRAIN + pendulum.N_TEST, "flow": flow.N_TRAIN + flow.N_TEST}.get(name)
    if count is not None:
        _limits.check_memory(count * 3 * size * size, f"--dataset {name} --size {size} ({count} images of "
                             f"{size}x{size} RGB)")


@dataclass
class TrainingData:
    """What ``train`` needs from its data arguments.

    :ivar train: the training dataset.
    :ivar test: the held-out dataset, or ``None``.
    :ivar graph: the model's ``graph`` argument (``"learn"`` or a ``networkx.DiGraph``).
    :ivar record: the ``"data"`` section of the run's ``config.json``.
    :ivar note: how the held-out rows were chosen (one phrase).
    """

    train: object
    test: object | None
    graph: object
    record: dict
    note: str


def graph_argument(text: str | None, concepts, known: nx.DiGraph | None) -> object:
    """``--graph``: ``learn``, ``true`` (``known``), a graph file, or edges ``'a->b,b->c'``."""
    if text is None or text == "learn":
        return "learn"
    if text == "true":
        if known is None:
            raise ValueError("--graph true: this dataset has no known graph; give it with --true-graph FILE "
                             "(or fix the model's graph with --graph FILE)")
        return known
    return parse_graph_arg(text, concepts, "--graph")


def _size(args) -> int | None:
    if args.dataset == "folder":
        if getattr(args, "size", None) is not None:
            raise ValueError("--size does not apply to --dataset folder: the images are used at their own size")
        return None
    size = args.size if getattr(args, "size", None) is not None else (64 if args.dataset == "celeba" else 96)
    _check_size(args.dataset, size)
    return size


def training_data(args, show: bool = False) -> TrainingData:
    """Build the training and held-out data of ``train`` from its arguments, checking everything first.

    :param show: progress bars while checking and decoding.
    """
    if args.dataset == "folder":
        return _folder_training_data(args, show)
    from . import datasets

    size = _size(args)
    with phase(f"data: {args.dataset}") as ph:
        if args.dataset in ("pendulum", "flow"):
            cls = datasets.Pendulum if args.dataset == "pendulum" else datasets.Flow
            train = cls(split="train", size=size, seed=args.data_seed, noise=args.noise)
            test = cls(split="test", size=size, seed=args.data_seed, noise=args.noise)
            record = {"dataset": args.dataset, "size": size, "data_seed": args.data_seed, "noise": args.noise}
        elif args.dataset == "celeba":
            if args.root is None:
                raise ValueError("--dataset celeba needs --root (the folder with img_align_celeba/ and list_attr_celeba.txt)")
            root = Path(args.root).expanduser().resolve()
            train = datasets.CelebA(root, subset=args.subset, split="train", size=size, preload=False)
            test = datasets.CelebA(root, subset=args.subset, split="test", size=size, preload=False)
            record = {"dataset": "celeba", "root": os.fspath(root), "subset": args.subset, "size": size}
        else:
            raise ValueError(f"unknown dataset {args.dataset!r}")
        ph.note = f"{len(train)} training, {len(test)} test images"
    true = _true_graph(args, train.concepts)
    if true is not None:
        train.graph = test.graph = true
        record["true_graph"] = [list(e) for e in true.edges()]
    graph = graph_argument(getattr(args, "graph", "learn"), train.concepts, train.graph)
    return TrainingData(train, test, graph, record, f"the {args.dataset} test split")


def _true_graph(args, concepts) -> nx.DiGraph | None:
    text = getattr(args, "true_graph", None)
    return None if text is None else parse_graph_arg(text, concepts, "--true-graph")


def _concepts(args) -> list[str] | None:
    text = getattr(args, "concepts", None)
    if text is None:
        return None
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise ValueError(f"--concepts {text!r} names no concept")
    return names


def _stream_choice(args) -> bool | None:
    return {"auto": None, "on": True, "off": False}[getattr(args, "stream", "auto") or "auto"]


def _folder_training_data(args, show: bool) -> TrainingData:
    from .datasets import ConceptImageDataset
    from .datasets.split import check_test_fraction, heldout_split
    from .datasets.table import read_labels_csv

    if args.labels is None:
        raise ValueError("--dataset folder needs --labels LABELS.csv (and --root IMAGE_FOLDER unless the CSV's image "
                         "column gives paths relative to the CSV's folder)")
    _size(args)
    check_test_fraction(args.test_fraction)
    with phase("labels CSV") as ph:
        table = read_labels_csv(args.labels, _concepts(args), image_column=getattr(args, "image_column", None))
        ph.note = _describe_table(table)
    true = _true_graph(args, table.concepts)
    graph = graph_argument(getattr(args, "graph", "learn"), table.concepts, true)
    split = heldout_split(table.labels.shape[0], table.split, args.test_fraction, args.data_seed)
    complete = int((~table.labels[split.train_rows].isnan().any(1)).sum())
    if graph == "learn" and complete < MIN_COMPLETE_ROWS:
        raise ValueError(f"--graph learn finds the causal order from the training rows with every label, and needs at "
                         f"least {MIN_COMPLETE_ROWS}; {os.fspath(table.path)!r} has {complete}. Give the graph with --graph FILE")
    root = _folder_root(args.root, table)
    follow = bool(getattr(args, "follow_symlinks", False))
    full = ConceptImageDataset(root, table, graph=true, stream=True, progress=show, name=(root or table.path.parent).name,
                               follow_symlinks=follow)
    stream = _stream_choice(args)
    train = _place(full.subset(split.train_rows), show, stream)
    test = _place(full.subset(split.test_rows), show, stream) if split.test_rows.numel() else None
    record = {"dataset": "folder", "root": None if root is None else os.fspath(root), "labels": os.fspath(table.path),
              "labels_sha256": table.sha256, "image_column": table.image_column, "concepts": list(table.concepts),
              "follow_symlinks": follow, "stream": train.streamed, "split": split.record(),
              "true_graph": None if true is None else [list(e) for e in true.edges()]}
    log.info("held out for evaluate: %s; training on %d images (%s)", split.describe(), len(train),
             "streamed from disk" if train.streamed else "in memory")
    return TrainingData(train, test, graph, record, split.describe())


def _describe_table(table) -> str:
    image = f"image column {table.image_column!r}" if table.image_column else "no image column (rows follow the sorted files)"
    extra = ", split column" if table.split is not None else ""
    ignored = f", ignored text columns {list(table.ignored)}" if table.ignored else ""
    return f"{table.labels.shape[0]} rows, concepts {list(table.concepts)}, {image}{extra}{ignored}"


def _folder_root(root, table) -> Path | None:
    """The image folder: ``--root``, else the CSV's folder when the CSV names no files."""
    if root is not None:
        return Path(root).expanduser().resolve()
    return None if table.filenames is not None else table.path.parent


def _place(ds, show: bool, stream: bool | None):
    """Decode ``ds`` into memory unless it is to be streamed (``stream``; ``None``: by the size rule)."""
    from .datasets.base import RESIDENT_LIMIT_BYTES, resident_bytes

    if stream is None:
        stream = resident_bytes(len(ds), ds.image_shape) > RESIDENT_LIMIT_BYTES
    return ds if stream else ds.to_memory(progress=show)


# --------------------------------------------------------------------------------------------------
# a trained run's data
# --------------------------------------------------------------------------------------------------
def _record(cfg: dict, run_dir, purpose: str) -> dict:
    data = cfg.get("data", {}) if isinstance(cfg, dict) else None
    if not isinstance(data, dict):
        raise ValueError(f"{Path(run_dir) / 'config.json'}: the \"data\" section must be a JSON object, got {type(data).__name__}")
    if data.get("dataset") is None:
        raise ValueError(f"{run_dir}: config.json names no dataset{purpose}")
    return data


def run_dataset(cfg: dict, run_dir, overrides=None, *, purpose: str = "", show: bool = False, decode: bool = True):
    """The held-out data of a trained run (its training data when it held none out), from its record.

    :param overrides: an ``argparse.Namespace`` with ``root`` / ``labels`` for data that has moved.
    :param decode: decode a folder's images into memory (by the size rule); ``False`` leaves them on disk
        (a query reads one image).
    :returns: ``(dataset, note)``; ``note`` says which images these are.
    :raises FileNotFoundError: when the recorded data is gone (the message says to pass ``--root``).
    :raises ValueError: when the labels CSV has changed since training.
    """
    from . import datasets

    data = _record(cfg, run_dir, purpose)
    name = data["dataset"]
    new_root = getattr(overrides, "root", None)
    if name in ("pendulum", "flow"):
        cls = datasets.Pendulum if name == "pendulum" else datasets.Flow
        kw = dict(size=data.get("size") or 96, seed=data.get("data_seed", 0), noise=data.get("noise", 0.0))
        _check_size(name, kw["size"])
        return _with_true_graph(cls(split="test", **kw), data), f"the {name} test split"
    if name == "celeba":
        root = Path(new_root).expanduser().resolve() if new_root else Path(data["root"])
        if not root.is_dir():
            raise FileNotFoundError(_moved("CelebA folder", root, run_dir))
        ds = datasets.CelebA(root, subset=data.get("subset", "smile"), split="test", size=data.get("size") or 64)
        return _with_true_graph(ds, data), "the CelebA test split"
    if name != "folder":
        raise ValueError(f"{run_dir}: unknown dataset {name!r} in config.json")
    return _folder_run_dataset(data, run_dir, overrides, show, decode)


def _moved(what: str, path: Path, run_dir) -> str:
    return (f"{what} of the run not found: {os.fspath(path)!r} (moved or deleted since {os.fspath(run_dir)} was trained?); "
            "pass --root NEW_IMAGE_FOLDER (and --labels NEW.csv if the labels moved too)")


def _folder_paths(data: dict, run_dir, overrides) -> tuple[Path | None, Path]:
    old_root = Path(data["root"]) if data.get("root") else None
    old_labels = Path(data["labels"]) if data.get("labels") else None
    if old_labels is None:
        raise ValueError(f"{run_dir}: config.json names no labels CSV for the folder dataset")
    new_root, new_labels = getattr(overrides, "root", None), getattr(overrides, "labels", None)
    root = Path(new_root).expanduser().resolve() if new_root else old_root
    if new_labels:
        labels = Path(new_labels).expanduser().resolve()
    elif new_root and old_root is not None and old_labels.is_relative_to(old_root):
        labels = root / old_labels.relative_to(old_root)  # the CSV moved with the folder
    elif new_root and old_root is None:
        labels = root / old_labels.name
    else:
        labels = old_labels
    if root is not None and not root.is_dir():
        raise FileNotFoundError(_moved("image folder", root, run_dir))
    if not labels.is_file():
        raise FileNotFoundError(f"label CSV file not found: {os.fspath(labels)!r} (moved or deleted since "
                                f"{os.fspath(run_dir)} was trained?); pass --labels NEW.csv (and --root NEW_IMAGE_FOLDER)")
    return root, labels


def _folder_run_dataset(data: dict, run_dir, overrides, show: bool, decode: bool):
    from .datasets import ConceptImageDataset
    from .datasets.table import read_labels_csv

    root, labels = _folder_paths(data, run_dir, overrides)
    table = read_labels_csv(labels, data.get("concepts"), image_column=data.get("image_column"))
    if data.get("labels_sha256") and table.sha256 != data["labels_sha256"]:
        raise ValueError(f"label CSV {os.fspath(labels)!r} has changed since {os.fspath(run_dir)} was trained (its SHA-256 "
                         "differs from the one recorded): the recorded held-out rows would not be the same images")
    if root is None and table.filenames is None:
        root = labels.parent
    full = _with_true_graph(ConceptImageDataset(root, table, stream=True, progress=show,
                                                follow_symlinks=bool(data.get("follow_symlinks", False))), data)
    split = data.get("split")
    if isinstance(split, dict) and split.get("test_rows"):
        ds = full.subset(split["test_rows"])
        note = f"the {len(ds)} held-out images ({_split_phrase(split)})"
    elif isinstance(split, dict):
        ds, note = full, f"the training images: the run held none out (test fraction {split.get('test_fraction', 0):g})"
    else:
        ds, note = full, "all images: the run recorded no held-out split"
    return (_place(ds, show, None) if decode else ds), note


def _split_phrase(split: dict) -> str:
    if split.get("source") == "column":
        return "the CSV's split column"
    return f"a seeded random {100 * float(split.get('test_fraction', 0)):g}%, seed {split.get('seed', 0)}"


def _with_true_graph(ds, data: dict):
    edges = data.get("true_graph")
    if edges:
        from ._validation import check_graph

        ds.graph = check_graph([tuple(e) for e in edges], ds.concepts)
    return ds
