"""Safe loading (issue #8): planted pickles are refused and never run; bad config.json files get a clear error.

A run directory is built by hand (``config.json`` + one checkpoint, no training), so these tests do not
depend on ``fit``. Every malicious file carries a payload whose ``__reduce__`` creates a marker folder: the
marker must not exist afterwards.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_causalvae import CausalVAE, load_model
from pyro_causalvae import checkpoint as ckpt
from pyro_causalvae.cli import main
from pyro_causalvae.datasets import ConceptImageDataset
from pyro_causalvae.datasets import io as dio

CONCEPTS = ("a", "b", "c")
GRAPH = [("a", "b"), ("b", "c")]
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------
# helpers shared with test_properties.py and test_cli_errors.py
# ---------------------------------------------------------------------------------------------------
class Payload:
    """Unpickling this creates the folder ``path``: evidence that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def tiny_dataset(n=8, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.rand(n, len(CONCEPTS), generator=g)
    images = (torch.rand(n, 3, size, size, generator=g) * 255).to(torch.uint8)
    return ConceptImageDataset(images, labels, concepts=CONCEPTS, graph=GRAPH)


def tiny_model(ds=None, graph=GRAPH, size=16):
    kw = {} if ds is None else dict(label_loc=ds.label_loc, label_scale=ds.label_scale)
    return CausalVAE(CONCEPTS, (3, size, size), style_dim=2, graph=graph, channels=8, hidden=16, mechanism_hidden=8, **kw)


def make_run(root: Path, name: str = "run") -> Path:
    """A run directory as ``fit`` writes it (config.json with model and data sections, one checkpoint),
    for an untrained tiny model on a folder dataset under ``root/data``."""
    data = root / "data"
    if not data.exists():
        tiny_dataset().to_folder(data)
    ds = ConceptImageDataset(data, data / "labels.csv")
    torch.manual_seed(0)
    model = tiny_model(ds)
    run = root / name
    ckpt.write_json(run / ckpt.CONFIG, {
        "model": model.config(),
        "fit": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "seed": 0},
        "data": {"dataset": "folder", "root": str(data), "labels": str(data / "labels.csv")},
    })
    ckpt.save_checkpoint(run, 1, {"model": model.state_dict(), "epoch": 1, "step": 1})
    return run


def only_checkpoint(run: Path) -> Path:
    (path,) = ckpt.checkpoints(run)
    return path


def cli(argv, capsys) -> tuple[int, str]:
    """Run the CLI in-process: ``(exit status, stderr)``; argparse's exits become their status."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code
    return code, capsys.readouterr().err


def assert_one_line_error(code, err, *patterns):
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyro-causalvae: error:"), err
    assert "Traceback" not in err
    for p in patterns:
        assert re.search(p, lines[0]), (p, lines[0])


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path)


# ---------------------------------------------------------------------------------------------------
# (a) a malicious checkpoint
# ---------------------------------------------------------------------------------------------------
def test_torch_weights_only_refuses_a_pickled_object_inside_the_state_dict(tmp_path):
    """What torch itself does: ``torch.save`` stores the object (its ``__reduce__`` is not called when
    saving) and ``torch.load(weights_only=True)`` raises ``UnpicklingError`` naming the blocked global
    without calling it; ``weights_only=False`` would run it."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "extra": Payload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match=r"(?s)Weights only load failed.*(posix|os)\.mkdir"):
        torch.load(path, weights_only=True)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the control: the payload is real
    assert marker.is_dir()


@pytest.mark.parametrize("kind", ["in_state_dict", "as_state", "raw_pickle", "legacy_format"])
def test_load_checkpoint_and_load_model_refuse_a_planted_pickle(run, tmp_path, kind):
    marker = tmp_path / "pwned"
    good = only_checkpoint(run)
    state = torch.load(good, weights_only=True)
    good.unlink()
    path = run / "checkpoint-0001.pt"
    if kind == "in_state_dict":
        torch.save({**state, "model": {**state["model"], "evil": Payload(marker)}}, path)
    elif kind == "as_state":
        torch.save(Payload(marker), path)
    elif kind == "raw_pickle":
        path.write_bytes(pickle.dumps({"model": Payload(marker)}))
    else:
        torch.save({"model": Payload(marker)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match=r"refusing to load .*checkpoint-0001\.pt.*weights_only=True"):
        ckpt.load_checkpoint(path)
    with pytest.raises(ValueError, match=r"refusing to load .*checkpoint-0001\.pt"):
        load_model(run)
    assert not marker.exists()


def test_a_newer_malicious_checkpoint_is_refused_not_skipped(run, tmp_path):
    """load_model takes the newest checkpoint; a planted newer one is refused (not silently passed over)."""
    marker = tmp_path / "pwned"
    torch.save({"model": Payload(marker)}, run / "checkpoint-99999999.pt")
    with pytest.raises(ValueError, match=r"checkpoint-99999999\.pt"):
        load_model(run)
    assert not marker.exists()


@pytest.mark.parametrize("command", [["evaluate"], ["intervene", "--sweep", "2"], ["counterfactual", "--do", "a=0.5"]])
def test_cli_refuses_a_planted_checkpoint_in_one_line(run, tmp_path, capsys, command):
    marker = tmp_path / "pwned"
    only_checkpoint(run).unlink()
    torch.save({"model": Payload(marker)}, run / "checkpoint-0001.pt")
    code, err = cli([command[0], run, *command[1:]], capsys)
    assert_one_line_error(code, err, r"refusing to load .*checkpoint-0001\.pt")
    assert not marker.exists()


def test_cli_subprocess_planted_checkpoint_exit_status_and_no_traceback(run, tmp_path):
    """The real entry point, ``python -m pyro_causalvae evaluate RUN_DIR``, in a fresh process."""
    marker = tmp_path / "pwned"
    only_checkpoint(run).unlink()
    torch.save({"model": Payload(marker)}, run / "checkpoint-0001.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "pyro_causalvae", "evaluate", str(run)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "Warning" not in ln and not ln.startswith(" ")]
    assert lines == [lines[0]] and lines[0].startswith("pyro-causalvae: error: refusing to load"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()


def test_corrupt_checkpoints_are_refused_clearly(run):
    path = only_checkpoint(run)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match="refusing to load"):
        load_model(run)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="refusing to load"):
        load_model(run)


@pytest.mark.parametrize(
    "state",
    [pytest.param([1, 2], id="not-a-dict"), pytest.param({"epoch": 1}, id="no-model-key"),
     pytest.param({"model": "weights"}, id="model-not-a-dict")],
)
def test_checkpoint_of_the_wrong_structure_is_a_clear_value_error(run, state, capsys):
    """A checkpoint that loads with weights_only=True but is not a state: ValueError naming the file."""
    path = only_checkpoint(run)
    torch.save(state, path)
    with pytest.raises(ValueError, match=re.escape(path.name)):
        load_model(run)
    assert_one_line_error(*cli(["evaluate", run], capsys), re.escape(path.name))


def test_checkpoint_that_does_not_match_config_is_one_clear_line(run, capsys):
    """config.json says style_dim=3 but the checkpoint holds style_dim=2 weights."""
    cfg = json.loads((run / ckpt.CONFIG).read_text())
    cfg["model"]["style_dim"] = 3
    (run / ckpt.CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"checkpoint-\d+\.pt"):
        load_model(run)
    assert_one_line_error(*cli(["evaluate", run], capsys), r"checkpoint-\d+\.pt")


def test_missing_files_are_file_not_found(tmp_path, run):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "nope.pt")
    only_checkpoint(run).unlink()
    with pytest.raises(FileNotFoundError, match=r"no checkpoint-\*\.pt"):
        load_model(run)
    (run / ckpt.CONFIG).unlink()
    with pytest.raises(FileNotFoundError, match="missing config.json"):
        load_model(run)


# ---------------------------------------------------------------------------------------------------
# (b) a saved dataset with a pickle inside
# ---------------------------------------------------------------------------------------------------
def _valid_arrays():
    meta = {"format": dio.FORMAT, "version": dio.FORMAT_VERSION, "name": "n", "concepts": ["k"], "edges": None}
    return {"images": np.zeros((2, 1, 3, 3), np.uint8), "labels": np.zeros((2, 1), np.float32),
            "label_loc": np.zeros(1, np.float32), "label_scale": np.ones(1, np.float32), "meta": np.array(json.dumps(meta))}


@pytest.mark.parametrize("key", ["images", "labels", "label_loc", "meta"])
def test_dataset_npz_with_an_object_array_is_refused_and_not_run(tmp_path, key):
    marker = tmp_path / "pwned"
    evil = np.empty(1, dtype=object)
    evil[0] = Payload(marker)
    path = tmp_path / "evil.npz"
    np.savez(path, **{**_valid_arrays(), key: evil})
    with pytest.raises(ValueError, match=r"refusing to unpickle .*evil\.npz"):
        ConceptImageDataset.load(path)
    assert not marker.exists()
    with np.load(path, allow_pickle=True) as z:  # the control: numpy with pickling on runs it
        z[key]
    assert marker.is_dir()


def test_dataset_file_that_is_a_bare_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "data.npz"
    path.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ValueError, match="refusing to unpickle"):
        ConceptImageDataset.load(path)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------
# (c) config.json: malformed, unknown keys, wrong types
# ---------------------------------------------------------------------------------------------------
def _edit_config(run: Path, edit) -> None:
    cfg = json.loads((run / ckpt.CONFIG).read_text())
    new = edit(cfg)
    (run / ckpt.CONFIG).write_text(new if isinstance(new, str) else json.dumps(new))


def _model(**changes):
    def edit(cfg):
        cfg["model"].update(changes)
        return cfg
    return edit


def _drop(key):
    def edit(cfg):
        del cfg["model"][key]
        return cfg
    return edit


BAD_CONFIGS = [
    ("malformed", lambda cfg: "{not json", r"config\.json is not valid JSON"),
    ("empty", lambda cfg: "", r"config\.json is not valid JSON"),
    ("unknown-model-key", _model(bogus=1), r"unknown key\(s\) \['bogus'\]"),
    ("missing-concepts", _drop("concepts"), r"missing key\(s\) \['concepts'\]"),
    ("missing-graph-spec", _drop("graph_spec"), r"missing key\(s\) \['graph_spec'\]"),
    ("graph-spec-not-object", _model(graph_spec=3), "graph_spec must be an object"),
    ("graph-spec-lacks-keys", _model(graph_spec={"known": None}), "graph_spec must be an object"),
    ("graph-spec-unknown-node", _model(graph_spec={"known": [["a", "zz"]], "required": [], "forbidden": []}), "'zz'.*not a concept"),
    ("graph-spec-cycle", _model(graph_spec={"known": [["a", "b"], ["b", "a"]], "required": [], "forbidden": []}), "cycle"),
    ("style-dim-string", _model(style_dim="2"), "style_dim must be a non-negative integer, got '2'"),
    ("style-dim-float", _model(style_dim=2.5), "style_dim must be a non-negative integer"),
    ("image-shape-string", _model(image_shape="abc"), "image_shape must be"),
    ("image-shape-null", _model(image_shape=None), "image_shape must be"),
    ("label-loc-string", _model(label_loc="abc"), "label_loc must be 3 numbers"),
    ("label-loc-short", _model(label_loc=[0.0]), r"label_loc must have shape \[3\]"),
    ("label-scale-zero", _model(label_scale=[1.0, 0.0, 1.0]), "label_scale must be positive"),
    ("pixel-scale-nan", lambda cfg: json.dumps(cfg).replace('"pixel_scale": "learned"', '"pixel_scale": NaN'), "not plain JSON|pixel_scale"),
    ("concepts-not-names", _model(concepts=[1, 2, 3]), "concept names must be non-empty strings"),
]


@pytest.mark.parametrize("name, edit, match", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_json_is_a_clear_value_error(run, capsys, name, edit, match):
    _edit_config(run, edit)
    with pytest.raises(ValueError, match=match):
        load_model(run)
    assert_one_line_error(*cli(["evaluate", run], capsys), match)


@pytest.mark.parametrize(
    "edit",
    [pytest.param(lambda cfg: [1, 2], id="a-list"), pytest.param(lambda cfg: {"fit": cfg["fit"]}, id="no-model-section"),
     pytest.param(lambda cfg: {**cfg, "model": "x"}, id="model-section-a-string")],
)
def test_config_json_of_the_wrong_shape_is_a_clear_value_error(run, capsys, edit):
    """The top level of config.json (read by checkpoint.load_model) is checked too."""
    _edit_config(run, edit)
    with pytest.raises(ValueError, match=r"config\.json|model config"):
        load_model(run)
    assert_one_line_error(*cli(["evaluate", run], capsys), r"config\.json|model config")


def test_config_data_section_of_the_wrong_type_is_one_line(run, capsys):
    """The CLI reads config.json's "data" section to find the run's images."""
    _edit_config(run, lambda cfg: {**cfg, "data": "pendulum"})
    assert_one_line_error(*cli(["evaluate", run], capsys), "data")


def test_from_config_refuses_non_dicts_and_round_trips():
    model = tiny_model()
    clone = CausalVAE.from_config(model.config())
    assert clone.config() == model.config()
    for bad in (None, [1], "model"):
        with pytest.raises(ValueError, match="model config must be a JSON object"):
            CausalVAE.from_config(bad)
