"""A user's own data through the command line, as people actually keep it: a folder of images and a
spreadsheet in several layouts, a graph file, missing labels. Each layout is trained with relative paths
from one working directory, then evaluated and queried from another; the errors come before any image is
decoded, with messages that name the problem."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from PIL import Image

from pyro_causalvae import checkpoint as ckpt
from pyro_causalvae.cli import main
from pyro_causalvae.datasets import io as dio

CONCEPTS = ("size", "height", "shadow")
EDGES = [("size", "shadow"), ("height", "shadow")]
N = 40


def world(n=N, seed=0):
    """Labels of a small causal world and tiny 16x16 images drawn from them (a bar and a dot)."""
    rng = np.random.default_rng(seed)
    size, height = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    shadow = size + height + rng.normal(0, 0.05, n)
    images = np.full((n, 16, 16, 3), 230, np.uint8)
    for i in range(n):
        images[i, 14:, : 2 + int(12 * shadow[i] / 2.2)] = 60
        r = 12 - int(10 * height[i])
        images[i, r : r + 1 + int(3 * size[i]), 6:10] = (200, 40, 40)
    return np.stack([size, height, shadow], 1), images


def save_png(arr, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def write_rows(path, header, rows, delimiter=","):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [delimiter.join(header)] + [delimiter.join(str(c) for c in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def cell(v, decimal_comma=False):
    text = f"{v:.5f}"
    return text.replace(".", ",") if decimal_comma else text


# ---------------------------------------------------------------------------------------------------
# the layouts: each builds data under `base` and returns the train arguments, relative to `base`
# ---------------------------------------------------------------------------------------------------
def sorted_files_and_a_csv_elsewhere(base):
    """imgs/ with sorted files, meta/labels.csv with no image column; graph as CSV parent,child."""
    labels, images = world()
    for i in range(N):
        save_png(images[i], base / "imgs" / f"frame_{i:03d}.png")
    write_rows(base / "meta" / "labels.csv", CONCEPTS, [[cell(v) for v in r] for r in labels])
    write_rows(base / "meta" / "dag.csv", ["parent", "child"], EDGES)
    return ["--root", "imgs", "--labels", "meta/labels.csv", "--graph", "meta/dag.csv", "--true-graph", "meta/dag.csv"]


def csv_beside_an_images_folder(base):
    """labels.csv with a `file` column naming images/x.png (relative to the CSV), no --root; JSON graph."""
    labels, images = world()
    rows = []
    for i in range(N):
        save_png(images[i], base / "shoot" / "images" / f"{i:05d}.png")
        rows.append([f"images/{i:05d}.png", *(cell(v) for v in labels[i])])
    write_rows(base / "shoot" / "labels.csv", ["file", *CONCEPTS], rows)
    (base / "shoot" / "graph.json").write_text(json.dumps({"edges": [list(e) for e in EDGES]}))
    return ["--labels", "shoot/labels.csv", "--graph", "true", "--true-graph", "shoot/graph.json"]


def excel_semicolons_with_absolute_paths_and_a_split(base):
    """Excel-style: semicolons, decimal commas, CRLF, a BOM, absolute `Path`s, a notes column, a split column;
    graph as a networkx edge list."""
    labels, images = world()
    rows = []
    for i in range(N):
        f = (base / "pics" / f"p{i}.png").resolve()
        save_png(images[i], f)
        rows.append([str(f), "nice" if i % 2 else "blurry", *(cell(v, True) for v in labels[i]), "test" if i % 5 == 0 else "train"])
    text = "\r\n".join([";".join(["Path", "notes", *CONCEPTS, "Split"])] + [";".join(r) for r in rows]) + "\r\n"
    (base / "sheet.csv").write_bytes(("\ufeff" + text).encode("utf-8"))
    (base / "dag.edgelist").write_text("size shadow {}\nheight shadow {}\n")
    return ["--labels", "sheet.csv", "--graph", "dag.edgelist", "--true-graph", "dag.edgelist"]


def tsv_with_missing_labels(base):
    """A TSV whose image column is chosen with --image-column, paths relative to --root, a third of the
    labels missing (blank, nan, NA); graph as GraphML; streamed through a DataLoader worker."""
    labels, images = world()
    rng = np.random.default_rng(1)
    markers = ["", "nan", "NA"]
    rows = []
    for i in range(N):
        save_png(images[i], base / "data" / "png" / f"{i}.png")
        cells = [cell(v) for v in labels[i]]
        for k in range(3):
            if i >= 8 and rng.random() < 0.15:  # the first 8 rows keep every label
                cells[k] = markers[(i + k) % 3]
        rows.append([f"png/{i}.png", *cells])
    write_rows(base / "data" / "labels.tsv", ["shot", *CONCEPTS], rows, delimiter="\t")
    nx.write_graphml(nx.DiGraph(EDGES), base / "data" / "dag.graphml")
    return ["--root", "data", "--labels", "data/labels.tsv", "--image-column", "shot", "--graph", "data/dag.graphml",
            "--true-graph", "data/dag.graphml", "--stream", "on", "--workers", "1", "--test-fraction", "0.3"]


LAYOUTS = [sorted_files_and_a_csv_elsewhere, csv_beside_an_images_folder, excel_semicolons_with_absolute_paths_and_a_split,
           tsv_with_missing_labels]


def train(argv, out, capsys, *extra):
    code = main(["train", "--dataset", "folder", *argv, "--out", str(out), "--epochs", "1", "--batch-size", "16",
                 "--style-dim", "1", "--no-progress", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def phase_lines(text):
    return [ln for ln in text.splitlines() if re.search(r"\(\d+\.\d s[,)]", ln)]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda f: f.__name__)
def test_layout_trains_and_is_evaluated_and_queried_from_another_directory(layout, tmp_path, capsys, monkeypatch):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    argv = layout(work)
    monkeypatch.chdir(work)
    text = train(argv, "runs/mine", capsys)
    run = (work / "runs" / "mine").resolve()
    assert "learned graph: size->shadow, height->shadow" in text and "vs the true graph: SHD 0" in text
    phases = " | ".join(phase_lines(text))
    for name in ("labels CSV", f"checking {N} image headers", "epoch 1/1"):
        assert name in phases, (name, text)
    data = json.loads((run / "config.json").read_text())["data"]
    assert Path(data["labels"]).is_absolute() and len(data["labels_sha256"]) == 64
    assert data["root"] is None or Path(data["root"]).is_absolute()
    assert data["true_graph"] == [list(e) for e in EDGES]
    test_rows = data["split"]["test_rows"]
    if layout is excel_semicolons_with_absolute_paths_and_a_split:
        assert data["split"]["source"] == "column" and test_rows == list(range(0, N, 5))
    else:
        assert data["split"]["source"] == "random" and len(test_rows) == (12 if layout is tsv_with_missing_labels else 4)

    monkeypatch.chdir(elsewhere)
    assert main(["evaluate", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "evaluating on the" in out and "held-out images" in out and "SHD 0" in out
    assert "encoding" in " ".join(phase_lines(out)) and "MIC/TIC" in " ".join(phase_lines(out))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["shd"] == 0 and "held-out" in metrics["split"] and 0 <= metrics["mic"] <= 100
    assert main(["intervene", str(run), "--concept", "size", "--sweep", "2", "--out", "grid.png"]) == 0
    assert main(["counterfactual", str(run), "--do", "size=0.9", "--index", "1"]) == 0
    out = capsys.readouterr().out
    assert (elsewhere / "grid.png").is_file() and (run / "counterfactual.png").is_file()
    assert re.search(r"image 1 of the \d+ held-out images", out), out


def test_partial_labels_are_reported_and_trained_on(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = tsv_with_missing_labels(tmp_path)
    text = train(argv, "run", capsys, "--stream", "off")
    line = next(ln for ln in text.splitlines() if ln.startswith("missing labels of 28 rows:"))  # the training rows
    counts = [int(m) for m in re.findall(r"(?:size|height|shadow) (\d+)", line)]
    assert len(counts) == 3 and all(c > 0 for c in counts), line
    assert main(["evaluate", "run", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"held-out images .*; \d+ with missing labels skipped", out), out


def test_partial_labels_with_a_learned_graph(tmp_path):
    """fit with NaN labels and the order search: the search and the pruning use the fully labelled rows."""
    import torch

    from pyro_causalvae import CausalVAE, fit
    from pyro_causalvae.datasets import ConceptImageDataset

    labels, images = world(n=64)
    labels = torch.tensor(labels, dtype=torch.float32)
    labels[::3, 2] = float("nan")
    labels[1::7, 0] = float("nan")
    ds = ConceptImageDataset(torch.tensor(images).permute(0, 3, 1, 2).contiguous(), labels, CONCEPTS)
    assert torch.isfinite(ds.label_loc).all() and torch.isfinite(ds.label_scale).all()
    model = CausalVAE(CONCEPTS, ds.image_shape, style_dim=1, channels=8, hidden=16, mechanism_hidden=8,
                      label_loc=ds.label_loc, label_scale=ds.label_scale)
    hist = fit(model, ds, epochs=1, batch_size=16, progress=False, warm_start_steps=5)
    assert hist.graph_search is not None and all(np.isfinite(v) for v in (hist.last()["loss"], hist.last()["labels"]))


def test_a_moved_data_folder_needs_root_and_a_changed_csv_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = sorted_files_and_a_csv_elsewhere(tmp_path)
    train(argv, "run", capsys)
    (tmp_path / "imgs").rename(tmp_path / "moved")
    code = main(["evaluate", "run"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert re.search(r"image folder of the run not found: '.*imgs' \(moved or deleted since .*\?\); pass --root", err), err
    assert main(["evaluate", "run", "--root", "moved", "--no-progress"]) == 0
    assert main(["counterfactual", "run", "--root", "moved", "--do", "height=0.1"]) == 0
    capsys.readouterr()
    with open(tmp_path / "meta" / "labels.csv", "a") as f:
        f.write("0.5,0.5,1.0\n")
    assert main(["evaluate", "run", "--root", "moved"]) == 2
    assert "has changed since" in capsys.readouterr().err


def test_folder_and_csv_moved_together(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train(csv_beside_an_images_folder(tmp_path), "run", capsys)
    shutil.move(tmp_path / "shoot", tmp_path / "archive")
    assert main(["evaluate", "run"]) == 2
    assert "label CSV file not found" in capsys.readouterr().err
    assert main(["evaluate", "run", "--labels", "archive/labels.csv", "--no-progress"]) == 0


# ---------------------------------------------------------------------------------------------------
# every check before the slow part
# ---------------------------------------------------------------------------------------------------
def no_decoding(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("an image was decoded before the checks finished")

    monkeypatch.setattr(dio, "decode_image", refuse)


def one_line_error(argv, capsys, out):
    code = main(["train", "--dataset", "folder", "--out", str(out), "--epochs", "1", "--no-progress", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("pyro-causalvae: error:"), err
    assert not ckpt.checkpoints(out)
    return err


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda d: [(d / f"frame_{i:03d}.png").unlink() for i in (3, 7, 8)],
         r"cannot read image file '.*frame_003\.png' \(row 3\): it does not exist \(3 of 40 rows share this problem\)"),
        (lambda d: [(d / f"frame_{i:03d}.png").write_bytes(b"not a png") for i in (5, 6)],
         r"cannot read image file '.*frame_005\.png' \(row 5\): .*\(2 of 40 rows share this problem\)"),
        (lambda d: [Image.new("RGB", (20, 16)).save(d / f"frame_{i:03d}.png") for i in (9, 12)],
         r"mixed sizes: '.*frame_009\.png' \(row 9\) is 20x16 \(WxH\) but '.*frame_000\.png' and 37 other\(s\) are 16x16.*"
         r"\(2 of 40 rows share this problem\)"),
        (lambda d: Image.fromarray(np.zeros((16, 16), np.uint16)).save(d / "frame_010.png"),
         r"'.*frame_010\.png' \(row 10\) has mode 'I;16' \(16-bit or float\)"),
        (lambda d: ((d / "frame_001.png").unlink(), (d / "frame_002.png").write_bytes(b"")),
         r"frame_001\.png' \(row 1\): it does not exist \(1 of 40 rows share this problem; also 1 files are unreadable or refused\)"),
    ],
)
def test_image_problems_are_found_from_the_headers_before_decoding(tmp_path, capsys, monkeypatch, damage, match):
    argv = sorted_files_and_a_csv_elsewhere(tmp_path)
    damage(tmp_path / "imgs")
    if len(list((tmp_path / "imgs").glob("*.png"))) < N:  # rows follow the files: name them in a CSV instead
        labels, _ = world()
        write_rows(tmp_path / "meta" / "labels.csv", ["file", *CONCEPTS],
                   [[f"frame_{i:03d}.png", *(cell(v) for v in labels[i])] for i in range(N)])
    monkeypatch.chdir(tmp_path)
    no_decoding(monkeypatch)
    err = one_line_error(argv, capsys, tmp_path / "run")
    assert re.search(match, err), err


def test_graph_and_csv_problems_come_before_any_image_header(tmp_path, capsys, monkeypatch):
    argv = sorted_files_and_a_csv_elsewhere(tmp_path)
    monkeypatch.chdir(tmp_path)

    def no_headers(*a, **k):
        raise AssertionError("image headers were read before the CSV and graph checks")

    monkeypatch.setattr(dio, "check_image_files", no_headers)
    (tmp_path / "meta" / "cyclic.csv").write_text("size,shadow\nshadow,height\nheight,size\n")
    err = one_line_error([*argv[:4], "--graph", "meta/cyclic.csv"], capsys, tmp_path / "run")
    assert re.search(r"graph file '.*cyclic\.csv': graph has a cycle: .*size.*; a causal graph must be acyclic", err), err
    (tmp_path / "meta" / "typo.csv").write_text("size,shadow\nheigth,shadow\n")
    err = one_line_error([*argv[:4], "--true-graph", "meta/typo.csv"], capsys, tmp_path / "run")
    assert re.search(r"typo\.csv', line 2: 'heigth' \(in edge heigth -> shadow\) is not a concept", err), err
    err = one_line_error([*argv[:4], "--concepts", "size,colour"], capsys, tmp_path / "run")
    assert "no concept column(s) ['colour']" in err
    err = one_line_error([*argv[:4], "--epochs", "0"], capsys, tmp_path / "run")
    assert "epochs must be a positive integer" in err


def test_with_no_progress_every_phase_prints_one_line_with_its_time(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = sorted_files_and_a_csv_elsewhere(tmp_path)
    text = train(argv, "run", capsys, "--epochs", "2")
    names = [re.sub(r"[:(].*", "", ln).strip() for ln in phase_lines(text)]
    assert names == ["labels CSV", f"checking {N} image headers", f"decoding {N - 4} images", "decoding 4 images",
                     f"structural equations fitted to {N - 4} labelled rows before SVI", "epoch 1/2", "epoch 2/2",
                     f"structural equations fitted to {N - 4} labelled rows after the last epoch"], text


def test_order_search_and_pruning_log_their_time(caplog):
    import logging

    from pyro_causalvae import fit

    from tiny import tiny_dataset, tiny_model

    with caplog.at_level(logging.INFO, logger="pyro_causalvae"):
        fit(tiny_model(), tiny_dataset(), epochs=1, batch_size=16, progress=False, warm_start_steps=5)
    lines = [r.getMessage() for r in caplog.records]
    # one line per phase, in the order the work is done, each with its time
    patterns = [r"missing labels of 48 rows: a 0, b 0, c 0",
                r"graph stage: order search \d+\.\d s \(3 concepts, .*\)",
                r"graph stage: warm start \d+\.\d s \(5 steps, \d edges\)",
                r"causal order from the labels: [abc] < [abc] < [abc] \(\d+\.\d s\)",
                r"structural equations fitted to 48 labelled rows before SVI: -log p per row .* \(\d+\.\d s\)",
                r"epoch 1/1: loss .* \(\d+\.\d s, \d+ images/s\)",
                r"graph stage: pruning \d+\.\d s \(\d redundant edge\(s\) removed.*\)",
                r"structural equations fitted to 48 labelled rows after the last epoch: -log p per row .* \(\d+\.\d s\)"]
    assert len(lines) == len(patterns), lines
    for pattern, line in zip(patterns, lines):
        assert re.fullmatch(pattern, line), (pattern, line)
