"""ConceptImageDataset: construction from tensors, arrays and folders; normalisation; items; subsets; checks."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.testing import assert_close
from torch.utils.data import DataLoader

from pyro_causalvae.datasets import ConceptImageDataset

CONCEPTS = ("a", "b", "c")


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def make(gen, n=6, c=3, h=5, w=4, k=3):
    images = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=gen)
    labels = torch.randn(n, k, generator=gen) * 3 + 1
    return images, labels


def write_pngs(folder, images, names=None):
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"img{i:02d}.png" for i in range(len(images))]
    for name, img in zip(names, images, strict=True):
        arr = img.numpy().transpose(1, 2, 0)
        if arr.shape[2] == 1:
            Image.fromarray(arr[:, :, 0], mode="L").save(folder / name)
        else:
            Image.fromarray(arr, mode="RGB").save(folder / name)
    return names


def write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(str(v) for v in r) for r in rows]) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------
# construction from tensors / arrays
# ---------------------------------------------------------------------------------------------------
def test_uint8_tensor_is_stored_as_is(gen):
    images, labels = make(gen)
    ds = ConceptImageDataset(images, labels, CONCEPTS, name="toy")
    assert ds.images is images
    assert ds.labels.dtype == torch.float32
    assert_close(ds.labels, labels)
    assert ds.concepts == CONCEPTS
    assert ds.image_shape == (3, 5, 4)
    assert ds.num_concepts == 3
    assert len(ds) == 6
    assert ds.name == "toy"
    assert ds.graph is None


def test_float_images_are_rounded_to_uint8(gen):
    x = torch.rand(4, 1, 3, 3, generator=gen)
    x[0, 0, 0, 0] = 0.0
    x[0, 0, 0, 1] = 1.0
    ds = ConceptImageDataset(x, torch.zeros(4, 1), ["k"])
    assert ds.images.dtype == torch.uint8
    assert_close(ds.images, torch.round(x * 255).to(torch.uint8))
    assert int(ds.images[0, 0, 0, 0]) == 0 and int(ds.images[0, 0, 0, 1]) == 255


def test_numpy_arrays(gen):
    rng = np.random.default_rng(0)
    x = rng.random((5, 3, 4, 4))  # float64
    y = rng.normal(size=(5, 2))
    ds = ConceptImageDataset(x, y, ["p", "q"])
    assert_close(ds.images, torch.from_numpy(np.round(x * 255).astype(np.uint8)))
    assert_close(ds.labels, torch.from_numpy(y.astype(np.float32)))
    u8 = rng.integers(0, 256, (2, 1, 3, 3), dtype=np.uint8)
    ds8 = ConceptImageDataset(u8, None, ["p"])
    assert_close(ds8.images, torch.from_numpy(u8))


def test_default_normalisation_maps_range_to_minus_one_one(gen):
    images, _ = make(gen, n=4)
    labels = torch.tensor([[0.0, 5.0, 2.0], [10.0, 5.0, 4.0], [4.0, 5.0, 3.0], [6.0, 5.0, 2.0]])
    ds = ConceptImageDataset(images, labels, CONCEPTS)
    assert_close(ds.label_loc, torch.tensor([5.0, 5.0, 3.0]))
    assert_close(ds.label_scale, torch.tensor([5.0, 1.0, 1.0]))  # constant column: scale 1
    norm = ds.labels_normalised
    assert norm.dtype == torch.float32
    assert_close(norm.amin(0), torch.tensor([-1.0, 0.0, -1.0]))
    assert_close(norm.amax(0), torch.tensor([1.0, 0.0, 1.0]))


def test_custom_normalisation_and_round_trip(gen):
    images, labels = make(gen)
    ds = ConceptImageDataset(images, labels, CONCEPTS, label_loc=[1.0, 2.0, 3.0], label_scale=2.0)
    assert_close(ds.label_scale, torch.full((3,), 2.0))
    assert_close(ds.labels_normalised, (labels - torch.tensor([1.0, 2.0, 3.0])) / 2.0)
    assert_close(ds.denormalise(ds.normalise(labels)), labels)
    batch = torch.randn(2, 7, 3, generator=gen)
    assert ds.normalise(batch).shape == (2, 7, 3)
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 3\]"):
        ds.normalise(torch.zeros(4, 2))


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=2, max_size=8),
    st.floats(-100, 100),
    st.floats(1e-2, 100),
)
def test_normalise_denormalise_property(values, loc, scale):
    labels = torch.tensor(values, dtype=torch.float32)[:, None]
    ds = ConceptImageDataset(torch.zeros(len(values), 1, 2, 2, dtype=torch.uint8), labels, ["v"],
                             label_loc=[loc], label_scale=[scale])
    assert_close(ds.denormalise(ds.labels_normalised), labels, rtol=1e-5, atol=1e-3)


def test_getitem_and_dataloader(gen):
    images, labels = make(gen)
    ds = ConceptImageDataset(images, labels, CONCEPTS)
    x, y = ds[2]
    assert x.shape == (3, 5, 4) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert_close(x, images[2].float() / 255)
    assert y.shape == (3,) and y.dtype == torch.float32
    assert_close(y, ds.labels_normalised[2])
    xb, yb = next(iter(DataLoader(ds, batch_size=4)))
    assert xb.shape == (4, 3, 5, 4) and yb.shape == (4, 3)


def test_unlabelled_items_are_images_only(gen):
    images, _ = make(gen)
    ds = ConceptImageDataset(images, None, CONCEPTS)
    assert ds.labels is None and ds.labels_normalised is None
    item = ds[0]
    assert torch.is_tensor(item) and item.shape == (3, 5, 4)
    assert_close(ds.label_loc, torch.zeros(3))
    assert_close(ds.label_scale, torch.ones(3))
    assert "unlabelled" in repr(ds)


def test_graph_from_edges_and_digraph(gen):
    images, labels = make(gen)
    ds = ConceptImageDataset(images, labels, CONCEPTS, [("a", "b"), ("b", "c")])
    assert isinstance(ds.graph, nx.DiGraph)
    assert list(ds.graph.nodes) == list(CONCEPTS)
    assert set(ds.graph.edges) == {("a", "b"), ("b", "c")}
    g = nx.DiGraph([("a", "c")])
    ds2 = ConceptImageDataset(images, labels, CONCEPTS, g)
    assert set(ds2.graph.nodes) == set(CONCEPTS) and set(ds2.graph.edges) == {("a", "c")}
    assert "1 edges" in repr(ds2)


def test_subset_keeps_normalisation(gen):
    images, labels = make(gen, n=8)
    ds = ConceptImageDataset(images, labels, CONCEPTS, [("a", "b")], name="toy")
    sub = ds.subset([5, 1, -1])
    assert type(sub) is ConceptImageDataset
    assert len(sub) == 3
    assert_close(sub.images, images[[5, 1, 7]])
    assert_close(sub.labels_normalised, ds.labels_normalised[[5, 1, 7]])
    assert_close(sub.label_loc, ds.label_loc)
    assert_close(sub.label_scale, ds.label_scale)
    assert set(sub.graph.edges) == {("a", "b")} and sub.name == "toy"
    mask = torch.zeros(8, dtype=torch.bool)
    mask[[0, 3]] = True
    assert_close(ds.subset(mask).labels, labels[[0, 3]])
    assert_close(ds.subset(slice(2, 5)).images, images[2:5])
    assert_close(ds.subset(np.array([4])).images, images[[4]])
    with pytest.raises(ValueError, match="index 8 is out of range"):
        ds.subset([0, 8])
    with pytest.raises(ValueError, match="at least one index"):
        ds.subset([])


def test_to_device_in_place(gen):
    images, labels = make(gen)
    ds = ConceptImageDataset(images, labels, CONCEPTS)
    assert ds.to("cpu") is ds
    assert ds.images.device.type == "cpu" and ds.label_loc.device.type == "cpu"


def test_repr(gen):
    images, labels = make(gen)
    r = repr(ConceptImageDataset(images, labels, CONCEPTS))
    assert "n=6" in r and "(3, 5, 4)" in r and "['a', 'b', 'c']" in r


# ---------------------------------------------------------------------------------------------------
# bad tensor / array input
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.zeros(2, 3, 4, dtype=torch.uint8), "4-d"),
        (torch.zeros(2, 2, 4, 4, dtype=torch.uint8), "1 .grayscale. or 3 .RGB. channels"),
        (torch.full((2, 3, 4, 4), 1.5), r"values in \[0, 1\]"),
        (torch.full((2, 3, 4, 4), -0.1), r"values in \[0, 1\]"),
        (torch.full((2, 3, 4, 4), float("nan")), "images has non-finite"),
        (torch.zeros(2, 3, 4, 4, dtype=torch.int64), "uint8 or floating point"),
        (torch.zeros(0, 3, 4, 4, dtype=torch.uint8), "no images"),
        ([[1, 2]], "must be a uint8 or float tensor"),
    ],
)
def test_bad_images(images, match):
    with pytest.raises(ValueError, match=match):
        ConceptImageDataset(images, None, ["a"])


def test_bad_labels(gen):
    images, labels = make(gen)
    with pytest.raises(ValueError, match="labels have 5 rows but there are 6 images"):
        ConceptImageDataset(images, labels[:5], CONCEPTS)
    with pytest.raises(ValueError, match="labels have 3 columns but 2 concepts"):
        ConceptImageDataset(images, labels, ["a", "b"])
    with pytest.raises(ValueError, match="2-d"):
        ConceptImageDataset(images, labels[:, 0], ["a"])
    bad = labels.clone()
    bad[3, 1] = float("inf")
    with pytest.raises(ValueError, match="concept 'b' .column 1. are not finite"):
        ConceptImageDataset(images, bad, CONCEPTS)
    with pytest.raises(ValueError, match="duplicate concept names"):
        ConceptImageDataset(images, labels, ["a", "b", "a"])
    with pytest.raises(ValueError, match="concepts .* are required"):
        ConceptImageDataset(images, labels)
    with pytest.raises(ValueError, match="concepts .* are required for unlabelled"):
        ConceptImageDataset(images)
    with pytest.raises(ValueError, match="numeric"):
        ConceptImageDataset(images, np.array([["x"] * 3] * 6), CONCEPTS)


def test_bad_normalisation_and_graph(gen):
    images, labels = make(gen)
    with pytest.raises(ValueError, match="label_scale must be > 0.*'b'"):
        ConceptImageDataset(images, labels, CONCEPTS, label_scale=[1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match=r"label_loc must have shape \[3\]"):
        ConceptImageDataset(images, labels, CONCEPTS, label_loc=[0.0, 1.0])
    with pytest.raises(ValueError, match="label_loc has non-finite"):
        ConceptImageDataset(images, labels, CONCEPTS, label_loc=[0.0, float("nan"), 1.0])
    with pytest.raises(ValueError, match="cycle: a -> b -> c -> a"):
        ConceptImageDataset(images, labels, CONCEPTS, [("a", "b"), ("b", "c"), ("c", "a")])
    with pytest.raises(ValueError, match="not concepts"):
        ConceptImageDataset(images, labels, CONCEPTS, [("a", "z")])


# ---------------------------------------------------------------------------------------------------
# folders + CSV
# ---------------------------------------------------------------------------------------------------
def test_folder_sorted_by_name_and_csv_without_filename(tmp_path, gen):
    images, labels = make(gen, n=4)
    names = ["b.png", "a.png", "d.png", "c.png"]
    write_pngs(tmp_path / "imgs", images, names)
    (tmp_path / "imgs" / ".hidden.png").write_bytes(b"not an image")
    (tmp_path / "imgs" / "notes.txt").write_text("ignored")
    order = sorted(range(4), key=lambda i: names[i])  # a, b, c, d
    csv = write_csv(tmp_path / "labels.csv", ["x", "y"], labels[order, :2].tolist())
    ds = ConceptImageDataset(tmp_path / "imgs", csv)
    assert ds.concepts == ("x", "y")
    assert_close(ds.images, images[order])
    assert_close(ds.labels, labels[order, :2])


def test_folder_with_filename_column_maps_rows(tmp_path, gen):
    images, labels = make(gen, n=4)
    names = write_pngs(tmp_path / "imgs", images)
    write_pngs(tmp_path / "imgs", images[:1], ["zz_extra_not_listed.png"])
    rows = [[names[i], *labels[i].tolist()] for i in (2, 0, 3, 1)]
    csv = write_csv(tmp_path / "labels.csv", ["a", "filename", "b", "c"], [[r[1], r[0], r[2], r[3]] for r in rows])
    ds = ConceptImageDataset(str(tmp_path / "imgs"), str(csv), graph=[("a", "c")])
    assert ds.concepts == CONCEPTS
    assert_close(ds.images, images[[2, 0, 3, 1]])
    assert_close(ds.labels, labels[[2, 0, 3, 1]])
    sel = ConceptImageDataset(tmp_path / "imgs", csv, ["c", "a"])
    assert sel.concepts == ("c", "a")
    assert_close(sel.labels, labels[[2, 0, 3, 1]][:, [2, 0]])


def test_folder_grayscale_and_mixed(tmp_path, gen):
    gray, _ = make(gen, n=3, c=1)
    write_pngs(tmp_path / "g", gray)
    ds = ConceptImageDataset(tmp_path / "g", None, ["a"])
    assert ds.image_shape == (1, 5, 4)
    assert_close(ds.images, gray)
    rgb, _ = make(gen, n=1, c=3)
    write_pngs(tmp_path / "g", rgb, ["zz.png"])
    mixed = ConceptImageDataset(tmp_path / "g", None, ["a"])
    assert mixed.image_shape == (3, 5, 4)
    assert_close(mixed.images[0], gray[0].expand(3, -1, -1))


def test_folder_jpeg_and_tensor_images_with_csv(tmp_path, gen):
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "x.jpg")
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "y.JPEG", format="JPEG")
    ds = ConceptImageDataset(tmp_path, None, ["a"])
    assert len(ds) == 2 and ds.image_shape == (3, 6, 6)
    # a CSV with a filename column can label tensor images too (the column is then ignored)
    csv = write_csv(tmp_path / "l.csv", ["filename", "a"], [["p.png", 1.0], ["q.png", 2.0]])
    t = ConceptImageDataset(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), csv)
    assert_close(t.labels, torch.tensor([[1.0], [2.0]]))


def test_folder_errors(tmp_path, gen):
    images, labels = make(gen, n=3)
    names = write_pngs(tmp_path / "imgs", images)
    with pytest.raises(FileNotFoundError, match="nope"):
        ConceptImageDataset(tmp_path / "nope", None, ["a"])
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        ConceptImageDataset(tmp_path / "imgs", tmp_path / "missing.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images in folder"):
        ConceptImageDataset(tmp_path / "empty", None, ["a"])
    csv = write_csv(tmp_path / "two.csv", ["a"], [[1], [2]])
    with pytest.raises(ValueError, match="labels have 2 rows but the folder .* holds 3 images"):
        ConceptImageDataset(tmp_path / "imgs", csv)
    csv = write_csv(tmp_path / "fn.csv", ["filename", "a"], [[names[0], 1], ["ghost.png", 2]])
    with pytest.raises(ValueError, match=r"ghost\.png' \(row 1\): it does not exist \(1 of 2 rows share this problem\)"):
        ConceptImageDataset(tmp_path / "imgs", csv)
    csv = write_csv(tmp_path / "bad.csv", ["a", "b"], [[1, 2], [3, "oops"], [5, 6]])
    with pytest.raises(ValueError, match="non-numeric value 'oops' in column 'b', data row 1 .line 3."):
        ConceptImageDataset(tmp_path / "imgs", csv)
    csv = write_csv(tmp_path / "inf.csv", ["a", "b"], [[1, 2], [3, "inf"], [5, 6]])
    with pytest.raises(ValueError, match="value 'inf' in column 'b', data row 1 .line 3. is not finite"):
        ConceptImageDataset(tmp_path / "imgs", csv)
    csv = write_csv(tmp_path / "ok.csv", ["a", "b"], [[1, 2], [3, 4], [5, 6]])
    with pytest.raises(ValueError, match=r"no concept column\(s\) \['z'\]; available columns are \['a', 'b'\]"):
        ConceptImageDataset(tmp_path / "imgs", csv, ["a", "z"])
    csv = write_csv(tmp_path / "dup.csv", ["a", "a"], [[1, 2], [3, 4], [5, 6]])
    with pytest.raises(ValueError, match="duplicate column names"):
        ConceptImageDataset(tmp_path / "imgs", csv)
    with pytest.raises(ValueError, match="duplicate concept names"):
        ConceptImageDataset(tmp_path / "imgs", tmp_path / "ok.csv", ["a", "a"])


def test_folder_mixed_sizes_names_both_files(tmp_path, gen):
    images, _ = make(gen, n=2)
    write_pngs(tmp_path, images, ["a.png", "b.png"])
    Image.fromarray(np.zeros((7, 9, 3), np.uint8)).save(tmp_path / "c.png")
    with pytest.raises(ValueError, match=r"mixed sizes: .*c\.png' \(row 2\) is 9x7 \(WxH\) but .*a\.png' and 1 other"):
        ConceptImageDataset(tmp_path, None, ["a"])


def test_unreadable_image_file_is_named(tmp_path, gen):
    images, _ = make(gen, n=1)
    write_pngs(tmp_path, images, ["a.png"])
    (tmp_path / "b.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match=r"cannot read image file .*b\.png"):
        ConceptImageDataset(tmp_path, None, ["a"])
