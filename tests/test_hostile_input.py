"""Hostile and oversized input through the library's API (issue 16, items 1, 2 and 4): image files that
would run Ghostscript or inflate to gigabytes, symbolic links out of the data folder, forged or
oversized ``.npz`` members, huge CSV cells, model sizes that cannot be built, malformed checkpoint
fields. Each is refused in one line that names the file (and the field) before anything is decoded or
allocated. The command line's side of the same cases is tests/test_cli_walk.py.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import EpsImagePlugin, Image

from hostile import eps_named_png, fake_ghostscript, png_header_only
from test_safe_loading import make_run, tiny_dataset, tiny_model

from pyro_causalvae import fit, load_model
from pyro_causalvae import checkpoint as ckpt
from pyro_causalvae.datasets import ConceptImageDataset
from pyro_causalvae.datasets import io as dio

MEMORY = "PYRO_CAUSALVAE_MEMORY_LIMIT"


# ---------------------------------------------------------------------------------------------------
# image files
# ---------------------------------------------------------------------------------------------------
def test_postscript_named_png_never_reaches_ghostscript(tmp_path, monkeypatch):
    """Pillow picks a decoder from the content: a .png holding EPS goes to Ghostscript unless the formats
    are restricted. A stand-in ``gs`` on PATH records whether it ran."""
    marker = tmp_path / "gs-ran"
    monkeypatch.setenv("PATH", fake_ghostscript(tmp_path / "bin", marker)["PATH"])
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # Pillow looks gs up again on this PATH
    folder = tmp_path / "data"
    tiny_dataset(n=4).to_folder(folder)
    eps_named_png(folder / "00001.png")
    with pytest.raises(ValueError, match=r"00001\.png.*not a PNG, JPEG, BMP, TIFF or WEBP image"):
        ConceptImageDataset(folder, folder / "labels.csv")
    with pytest.raises(ValueError, match="not a PNG"):
        dio.read_images([folder / "00001.png"])
    assert not marker.exists()
    # the control: Pillow left to itself does run it
    with pytest.raises(Exception):
        with Image.open(folder / "00001.png") as im:
            im.load()
    assert marker.exists()


def test_every_documented_format_is_read_and_others_are_not(tmp_path):
    rgb = (np.arange(16 * 16 * 3) % 251).astype(np.uint8).reshape(16, 16, 3)
    for fmt, ext in [("PNG", "png"), ("JPEG", "jpg"), ("BMP", "bmp"), ("TIFF", "tif"), ("WEBP", "webp")]:
        Image.fromarray(rgb).save(tmp_path / f"x.{ext}", format=fmt)
        x = dio.read_images([tmp_path / f"x.{ext}"])
        assert x.shape == (1, 3, 16, 16) and x.dtype == torch.uint8, fmt
    Image.fromarray(rgb).save(tmp_path / "gif.png", format="GIF")  # a GIF under a PNG name
    with pytest.raises(ValueError, match=r"gif\.png.*not a PNG"):
        dio.read_images([tmp_path / "gif.png"])
    assert sorted(dio.IMAGE_FORMATS) == ["BMP", "JPEG", "PNG", "TIFF", "WEBP"]


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path):
    bomb = png_header_only(tmp_path / "bomb.png", 30000, 30000)
    assert bomb.stat().st_size < 200
    with pytest.raises(ValueError, match=r"bomb\.png.*decompression bomb"):
        dio.read_images([bomb])
    big = png_header_only(tmp_path / "big.png", 9000, 9000)  # under Pillow's own limits, over ours
    with pytest.raises(ValueError, match=r"big\.png'( \(row 0\))? declares 9000x9000 pixels, more than the limit of 67108864"):
        dio.read_images([big])


def test_total_decoded_pixels_are_checked_against_the_memory_budget(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    tiny_dataset(n=8).to_folder(folder)
    monkeypatch.setenv(MEMORY, "4K")
    with pytest.raises(ValueError, match=r"decoding 8 images of 16x16 pixels \(3 channel\(s\), uint8\) needs 6\.0 KB of memory, "
                                         r"more than the budget of 4\.0 KB \(PYRO_CAUSALVAE_MEMORY_LIMIT=4K\)"):
        ConceptImageDataset(folder, folder / "labels.csv")
    monkeypatch.setenv(MEMORY, "1M")
    assert len(ConceptImageDataset(folder, folder / "labels.csv")) == 8
    monkeypatch.setenv(MEMORY, "lots")
    with pytest.raises(ValueError, match="PYRO_CAUSALVAE_MEMORY_LIMIT='lots' must be a number of bytes"):
        ConceptImageDataset(folder, folder / "labels.csv")


def test_symlinks_out_of_the_data_folder_are_refused_unless_followed(tmp_path):
    folder = tmp_path / "data"
    tiny_dataset(n=4).to_folder(folder)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (folder / "00002.png").rename(outside / "secret.png")
    (folder / "00002.png").symlink_to(outside / "secret.png")
    with pytest.raises(ValueError, match=r"00002\.png' is a symbolic link to .*secret\.png', outside the image folder"):
        ConceptImageDataset(folder, folder / "labels.csv")
    with pytest.raises(ValueError, match="symbolic link"):
        dio.list_image_files(folder)  # without a CSV too
    assert len(ConceptImageDataset(folder, folder / "labels.csv", follow_symlinks=True)) == 4
    (folder / "00002.png").unlink()  # a link that stays inside the folder is fine
    (outside / "secret.png").rename(folder / "real.png")
    (folder / "00002.png").symlink_to(folder / "real.png")
    assert len(ConceptImageDataset(folder, folder / "labels.csv")) == 4


def test_a_csv_cell_beyond_the_field_limit_is_one_line(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("a,b\n1,2\n3," + "9" * 140_000 + "\n")
    with pytest.raises(ValueError, match=r"labels\.csv': line 3: field larger than field limit \(131072\)"):
        dio.read_labels_csv(path)


# ---------------------------------------------------------------------------------------------------
# .npz members
# ---------------------------------------------------------------------------------------------------
def _valid_arrays(images):
    meta = {"format": dio.FORMAT, "version": dio.FORMAT_VERSION, "name": "n", "concepts": ["k"], "edges": None}
    return {"images": images, "labels": np.zeros((images.shape[0], 1), np.float32),
            "label_loc": np.zeros(1, np.float32), "label_scale": np.ones(1, np.float32), "meta": np.array(json.dumps(meta))}


def test_an_npz_that_inflates_beyond_the_budget_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, **_valid_arrays(np.zeros((40, 1, 500, 500), np.uint8)))  # 10 MB of zeros in ~10 KB
    assert path.stat().st_size < 100_000
    monkeypatch.setenv(MEMORY, "2M")
    with pytest.raises(ValueError, match=r"zeros\.npz': loading its arrays \(.* in the file\) needs 9\.5 MB of memory, "
                                         r"more than the budget of 2\.0 MB"):
        ConceptImageDataset.load(path)
    monkeypatch.delenv(MEMORY)
    assert len(ConceptImageDataset.load(path)) == 40


def test_an_npz_header_that_lies_about_its_shape_is_refused_unallocated(tmp_path):
    """A member whose .npy header declares 2.7 TB while the file holds a few bytes: numpy would allocate the
    declared array before reading."""
    good = tmp_path / "good.npz"
    np.savez(good, **_valid_arrays(np.zeros((2, 1, 3, 3), np.uint8)))
    forged = tmp_path / "forged.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (900000, 1, 1000, 3000)})
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(forged, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename == "images.npy":
                data = header.getvalue() + bytes(18)
            zout.writestr(item, data)
    with pytest.raises(ValueError, match=r"forged\.npz': array 'images' declares shape \[900000, 1, 1000, 3000\] "
                                         r"\(2\.5 TB\) but the file holds .* for it \(truncated or forged\)"):
        ConceptImageDataset.load(forged)


# ---------------------------------------------------------------------------------------------------
# config.json sizes and checkpoint fields, through load_model and fit(resume=True)
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path)


def _set_model(run, **changes):
    cfg = json.loads((run / ckpt.CONFIG).read_text())
    cfg["model"].update(changes)
    (run / ckpt.CONFIG).write_text(json.dumps(cfg))


@pytest.mark.parametrize("field, value, match", [
    ("hidden", 10**100, r"config\.json: model field 'hidden' = 1e\+100 is out of range \(at most 65536\)"),
    ("channels", 10**12, r"config\.json: model field 'channels' = 1e\+12 is out of range"),
    ("mechanism_hidden", 70000, r"config\.json: model field 'mechanism_hidden' = 70000 is out of range"),
])
def test_config_sizes_out_of_range_name_the_file_and_field(run, field, value, match):
    _set_model(run, **{field: value})
    with pytest.raises(ValueError, match=match):
        load_model(run)


def test_config_sizes_beyond_memory_are_refused_unallocated(run, monkeypatch):
    _set_model(run, hidden=4096, channels=512)
    monkeypatch.setenv(MEMORY, "100M")
    with pytest.raises(ValueError, match=r"config\.json: the model \(.*channels=512, hidden=4096.*; 199\.2 MB of parameters\) "
                                         r"needs 199\.2 MB of memory, more than the budget of 100\.0 MB"):
        load_model(run)


def test_a_checkpoint_with_non_finite_parameters_is_refused(run):
    path = ckpt.latest_checkpoint(run)
    state = torch.load(path, weights_only=True)
    name = next(k for k in state["model"] if k.endswith("weight"))
    state["model"][name][0] = float("nan")
    torch.save(state, path)
    with pytest.raises(ValueError, match=rf"checkpoint-\d+\.pt: field 'model' holds non-finite values in {name} \(a diverged run\)"):
        load_model(run)
    with pytest.raises(ValueError, match="refusing to write .*non-finite parameter"):
        ckpt.save_checkpoint(run, 5, state, finite=[name])
    assert ckpt.latest_checkpoint(run) == path  # nothing was written


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run written by fit (2 steps), and the data and model to resume it."""
    run = tmp_path_factory.mktemp("trained") / "run"
    ds = tiny_dataset(n=16)
    torch.manual_seed(0)
    fit(tiny_model(ds), ds, epochs=1, batch_size=8, progress=False, out_dir=run)
    return run, ds


def _resume(run, ds, **kw):
    torch.manual_seed(0)
    return fit(tiny_model(ds), ds, epochs=2, batch_size=8, progress=False, out_dir=run, resume=True, **kw)


BAD_FIELDS = [
    ("no-optim", lambda s: s.pop("optim"), r"has no optimiser state \(field 'optim'\): it can be queried but not resumed"),
    ("optim-not-a-dict", lambda s: s.update(optim=[1]), r"field 'optim' must be an optimiser state dict"),
    ("optim-other-model", lambda s: s["optim"]["param_groups"][0]["params"].pop(), r"field 'optim' does not match the model"),
    ("no-history", lambda s: s.pop("history"), r"field 'history' must be a list of per-epoch dicts"),
    ("history-row-text", lambda s: s["history"][0].update(loss="x"), r"field 'history' row 0 has 'loss' = 'x', not a number"),
    ("history-length", lambda s: s.update(history=[]), r"field 'history' has 0 rows but field 'epoch' says 1"),
    ("batch-negative", lambda s: s.update(batch=-3), r"field 'batch' must be an integer >= 0, got -3"),
    ("epoch-text", lambda s: s.update(epoch="abc"), r"field 'epoch' must be an integer >= 0, got 'abc'"),
    ("epoch-missing", lambda s: s.pop("epoch"), r"field 'epoch' is missing"),
    ("step-bool", lambda s: s.update(step=True), r"field 'step' must be an integer >= 0, got True"),
    ("sums-shape", lambda s: s.update(sums=torch.zeros(3)), r"field 'sums' must be a float tensor of shape \[\d+\]"),
    ("graph-search", lambda s: s.update(graph_search="x"), r"field 'graph_search' must be null or a dict"),
    ("pruned", lambda s: s.update(pruned=[1]), r"field 'pruned' must be null or a list"),
    ("refit", lambda s: s.update(refit={"rows": "x"}), r"field 'refit' must be null or a dict of numbers"),
    ("world-size-0", lambda s: s.update(world_size=0), r"field 'world_size' must be an integer >= 1"),
    ("model-other-shape", lambda s: s["model"].update({next(iter(s["model"])): torch.zeros(1)}), r"does not match .*config\.json"),
]


@pytest.mark.parametrize("name, edit, match", BAD_FIELDS, ids=[b[0] for b in BAD_FIELDS])
def test_malformed_checkpoint_fields_on_resume_are_one_line(trained, tmp_path, name, edit, match):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    path = ckpt.latest_checkpoint(run)
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)
    before = (run / ckpt.CONFIG).read_text()
    with pytest.raises(ValueError) as info:
        _resume(run, trained[1])
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg, msg
    assert __import__("re").search(match, msg), (match, msg)
    assert (run / ckpt.CONFIG).read_text() == before  # nothing rewritten
    assert ckpt.checkpoints(run) == [path]
