"""Saving (.npz, atomic), safe loading (never unpickle) and PNG-folder export of ConceptImageDataset."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch.testing import assert_close

from pyro_causalvae.datasets import ConceptImageDataset
from pyro_causalvae.datasets import io as dio

CONCEPTS = ("a", "b", "c")


@pytest.fixture
def ds():
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (7, 3, 6, 5), dtype=torch.uint8, generator=g)
    labels = torch.randn(7, 3, generator=g) * 10
    labels[0] = torch.tensor([1 / 3, 1e-8, -123456.789])  # awkward float32 values must round-trip
    return ConceptImageDataset(images, labels, CONCEPTS, [("a", "b"), ("c", "b")], label_loc=[0.5, -1.0, 2.0],
                               label_scale=[3.0, 0.25, 7.0], name="toy")


def assert_same(x: ConceptImageDataset, y: ConceptImageDataset, *, graph=True, norm=True):
    assert torch.equal(x.images, y.images)
    assert x.images.dtype == y.images.dtype == torch.uint8
    if x.labels is None:
        assert y.labels is None
    else:
        assert y.labels.dtype == torch.float32
        assert torch.equal(x.labels, y.labels)  # bit-exact
    assert x.concepts == y.concepts
    if graph:
        if x.graph is None:
            assert y.graph is None
        else:
            assert list(x.graph.nodes) == list(y.graph.nodes)
            assert sorted(x.graph.edges) == sorted(y.graph.edges)
    if norm:
        assert torch.equal(x.label_loc, y.label_loc) and torch.equal(x.label_scale, y.label_scale)
        assert x.name == y.name


# ---------------------------------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------------------------------
def test_save_load_round_trip_exact(ds, tmp_path):
    path = tmp_path / "toy.npz"
    assert ds.save(path) == path
    back = ConceptImageDataset.load(path)
    assert type(back) is ConceptImageDataset
    assert_same(ds, back)
    assert os.listdir(tmp_path) == ["toy.npz"]
    # plain numpy reads it without pickle; metadata is a JSON string
    with np.load(path, allow_pickle=False) as z:
        assert set(z.files) == {"images", "labels", "label_loc", "label_scale", "meta"}
        meta = json.loads(str(z["meta"]))
    assert meta["concepts"] == list(CONCEPTS) and meta["version"] == dio.FORMAT_VERSION
    assert meta["edges"] == [["a", "b"], ["c", "b"]]


def test_save_load_unlabelled_no_graph_compressed(tmp_path):
    ds = ConceptImageDataset(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), None, ["x"])
    ds.save(tmp_path / "u.data", compress=True)  # the path is used exactly as given
    back = ConceptImageDataset.load(tmp_path / "u.data")
    assert_same(ds, back)


def test_subclass_loads_back_as_base_class(ds, tmp_path):
    class Special(ConceptImageDataset):
        pass

    sp = Special(ds.images, ds.labels, ds.concepts, ds.graph, name="special")
    sp.save(tmp_path / "s.npz")
    back = ConceptImageDataset.load(tmp_path / "s.npz")
    assert type(back) is ConceptImageDataset and back.name == "special"
    assert type(Special.load(tmp_path / "s.npz")) is ConceptImageDataset


def _fail_midway(monkeypatch):
    real = np.savez

    def broken(file, *args, **kwargs):
        file.write(b"PK\x03\x04 half-written archive" * 100)  # some bytes reach the temporary file
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(np, "savez", broken)
    return real


def test_interrupted_save_keeps_old_file_and_leaves_no_temp(ds, tmp_path, monkeypatch):
    path = tmp_path / "toy.npz"
    old = ConceptImageDataset(ds.images[:2], ds.labels[:2], CONCEPTS, name="old")
    old.save(path)
    before = path.read_bytes()
    _fail_midway(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        ds.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["toy.npz"]
    assert ConceptImageDataset.load(path).name == "old"
    with pytest.raises(OSError, match="disk full"):
        ds.save(tmp_path / "new.npz")
    assert os.listdir(tmp_path) == ["toy.npz"]  # no half-written new file, no temp


def test_save_into_missing_folder(ds, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ds.save(tmp_path / "no" / "such" / "x.npz")


class _Marker:
    """Unpickling this creates a folder: evidence that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_load_refuses_to_unpickle(ds, tmp_path):
    marker = tmp_path / "pwned"
    evil = np.empty(1, dtype=object)
    evil[0] = _Marker(str(marker))
    path = tmp_path / "evil.npz"
    np.savez(path, images=evil, label_loc=np.zeros(1, np.float32), label_scale=np.ones(1, np.float32),
             meta=np.array("{}"))
    with pytest.raises(ValueError, match="refusing to unpickle"):
        ConceptImageDataset.load(path)
    assert not marker.exists()
    # the payload is real: numpy with pickling enabled would run it
    control = tmp_path / "control"
    evil[0] = _Marker(str(control))
    np.savez(tmp_path / "control.npz", images=evil)
    with np.load(tmp_path / "control.npz", allow_pickle=True) as z:
        z["images"]
    assert control.exists()
    # a bare pickle file is refused too
    raw = tmp_path / "raw.npz"
    raw.write_bytes(pickle.dumps(_Marker(str(marker))))
    with pytest.raises(ValueError, match="refusing to unpickle"):
        ConceptImageDataset.load(raw)
    assert not marker.exists()


def _write_npz(path, **overrides):
    arrays = {
        "images": np.zeros((2, 1, 3, 3), np.uint8),
        "labels": np.zeros((2, 1), np.float32),
        "label_loc": np.zeros(1, np.float32),
        "label_scale": np.ones(1, np.float32),
        "meta": np.array(json.dumps({"format": dio.FORMAT, "version": 1, "name": "n", "concepts": ["k"],
                                     "edges": None})),
    }
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_load_rejects_bad_files(tmp_path):
    assert ConceptImageDataset.load(_write_npz(tmp_path / "ok.npz")).concepts == ("k",)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        ConceptImageDataset.load(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match=r"missing keys \['label_scale'\]"):
        ConceptImageDataset.load(_write_npz(tmp_path / "k.npz", label_scale=None))
    with pytest.raises(ValueError, match=r"unexpected keys \['extra'\]"):
        ConceptImageDataset.load(_write_npz(tmp_path / "e.npz", extra=np.zeros(1)))
    v2 = np.array(json.dumps({"format": dio.FORMAT, "version": 2, "name": "n", "concepts": ["k"], "edges": None}))
    with pytest.raises(ValueError, match="format version 2"):
        ConceptImageDataset.load(_write_npz(tmp_path / "v.npz", meta=v2))
    with pytest.raises(ValueError, match="does not describe"):
        ConceptImageDataset.load(_write_npz(tmp_path / "f.npz", meta=np.array('{"format": "other"}')))
    with pytest.raises(ValueError, match="not valid JSON"):
        ConceptImageDataset.load(_write_npz(tmp_path / "j.npz", meta=np.array("{")))
    with pytest.raises(ValueError, match="'images' must be uint8"):
        ConceptImageDataset.load(_write_npz(tmp_path / "d.npz", images=np.zeros((2, 1, 3, 3))))
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single .npy array"):
        ConceptImageDataset.load(tmp_path / "single.npy")
    (tmp_path / "trunc.npz").write_bytes((tmp_path / "ok.npz").read_bytes()[:50])
    with pytest.raises(ValueError, match="not a readable .npz"):
        ConceptImageDataset.load(tmp_path / "trunc.npz")


# ---------------------------------------------------------------------------------------------------
# to_folder
# ---------------------------------------------------------------------------------------------------
def test_to_folder_round_trip_exact(ds, tmp_path):
    out = tmp_path / "export"
    assert ds.to_folder(out) == out
    files = sorted(os.listdir(out))
    assert files == [f"{i:05d}.png" for i in range(7)] + ["graph.json", "labels.csv", "meta.json"]
    header = (out / "labels.csv").read_text().splitlines()[0]
    assert header == "filename,a,b,c"
    graph = json.loads((out / "graph.json").read_text())
    back = ConceptImageDataset(out, out / "labels.csv", graph=graph["edges"])
    assert_same(ds, back, norm=False)
    assert_same(ds, ConceptImageDataset.from_folder(out))
    assert sorted(os.listdir(tmp_path)) == ["export"]


def test_to_folder_grayscale_and_unlabelled(tmp_path):
    g = torch.Generator().manual_seed(2)
    ds = ConceptImageDataset(torch.randint(0, 256, (3, 1, 4, 4), dtype=torch.uint8, generator=g), None, ["k"])
    ds.to_folder(tmp_path / "gray")
    assert_same(ds, ConceptImageDataset.from_folder(tmp_path / "gray"))


def test_to_folder_overwrite_protection(ds, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty; pass overwrite=True"):
        ds.to_folder(out)
    assert os.listdir(out) == ["precious.txt"]
    ds.to_folder(out, overwrite=True)
    assert "precious.txt" not in os.listdir(out)
    assert_same(ds, ConceptImageDataset.from_folder(out))
    assert sorted(os.listdir(tmp_path)) == ["export"]  # no temporary or backup sibling left
    (tmp_path / "empty").mkdir()
    ds.to_folder(tmp_path / "empty")  # an empty folder is fine without overwrite
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        ds.to_folder(tmp_path / "file", overwrite=True)


def test_interrupted_to_folder_keeps_old_folder(ds, tmp_path, monkeypatch):
    out = tmp_path / "export"
    old = ds.subset([0, 1])
    old.to_folder(out)
    before = {f: (out / f).read_bytes() for f in os.listdir(out)}
    calls = []
    real_save = Image.Image.save

    def flaky(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise OSError("disk full (simulated)")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", flaky)
    with pytest.raises(OSError, match="disk full"):
        ds.to_folder(out, overwrite=True)
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before
    assert sorted(os.listdir(tmp_path)) == ["export"]


# ---------------------------------------------------------------------------------------------------
# CSV / image helpers
# ---------------------------------------------------------------------------------------------------
def test_read_labels_csv_errors(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        dio.read_labels_csv(p)
    p.write_text("a,b\n")
    with pytest.raises(ValueError, match="no data rows"):
        dio.read_labels_csv(p)
    p.write_text("a,b\n1,2\n3\n")
    with pytest.raises(ValueError, match="line 3 .data row 1. has 1 cells but the header has 2"):
        dio.read_labels_csv(p)
    p.write_text("filename,a\nx.png,1\nx.png,2\n")
    with pytest.raises(ValueError, match=r"file name 'x.png' appears twice \(data rows 0 and 1\)"):
        dio.read_labels_csv(p)
    p.write_text("filename\nx.png\n")
    with pytest.raises(ValueError, match="no numeric concept columns"):
        dio.read_labels_csv(p)
    p.write_text("\ufeff a , b \n 1 , 2.5 \n\n-3e2,4\n")  # BOM, spaces and blank lines are tolerated
    t = dio.read_labels_csv(p)
    assert t.concepts == ("a", "b") and t.filenames is None
    assert_close(t.labels, torch.tensor([[1.0, 2.5], [-300.0, 4.0]]))


def test_list_image_files_resolves_names_against_the_folder_or_the_csv(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "x.png").write_bytes(b"")
    # relative to the image folder
    assert dio.list_image_files(tmp_path / "imgs", ["x.png"], csv_dir=tmp_path) == [tmp_path / "imgs" / "x.png"]
    # relative to the CSV's folder (the first name decides which base is used)
    assert dio.list_image_files(tmp_path / "imgs", ["imgs/x.png"], csv_dir=tmp_path) == [tmp_path / "imgs/x.png"]
    assert dio.list_image_files(None, ["imgs/x.png"], csv_dir=tmp_path) == [tmp_path / "imgs/x.png"]
    # absolute names are used as they are
    absolute = str(tmp_path / "imgs" / "x.png")
    assert dio.list_image_files(tmp_path, [absolute]) == [tmp_path / "imgs" / "x.png"]
    (tmp_path / "f.png").write_bytes(b"")
    with pytest.raises(ValueError, match="not a folder"):
        dio.list_image_files(tmp_path / "f.png")


def test_names_that_lead_outside_the_image_folder_are_refused_unless_followed(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "x.png").write_bytes(b"")
    (tmp_path / "secret.png").write_bytes(b"")
    outside = str(tmp_path / "secret.png")
    for name in ("../secret.png", outside):
        with pytest.raises(ValueError, match=r"image file name '.*secret\.png' \(row 1\) leads outside the image folder"):
            dio.list_image_files(tmp_path / "imgs", ["x.png", name])
        assert dio.list_image_files(tmp_path / "imgs", ["x.png", name], follow_symlinks=True)[1].resolve() == tmp_path / "secret.png"
    # "a/../x.png" stays inside; without an image folder, a CSV's absolute names are read as they are
    assert dio.list_image_files(tmp_path / "imgs", ["x.png", "sub/../x.png"])[1] == tmp_path / "imgs" / "sub/../x.png"
    assert dio.list_image_files(None, [outside], csv_dir=tmp_path / "imgs") == [tmp_path / "secret.png"]
    # relative names of a CSV without an image folder stay inside the CSV's folder
    with pytest.raises(ValueError, match="leads outside the image folder"):
        dio.list_image_files(None, ["../secret.png"], csv_dir=tmp_path / "imgs")
