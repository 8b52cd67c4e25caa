"""CelebA on a tiny fake folder written in CelebA's own file formats (never the real data set)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch.testing import assert_close
from torch.utils.data import DataLoader

from pyro_causalvae.datasets import CelebA, ConceptImageDataset
from pyro_causalvae.datasets.celeba import CELEBA_ATTRIBUTES

N = 12


def write_fake_celeba(base, n=N, seed=0):
    """``base/img_align_celeba/*.jpg`` (178x218), ``list_attr_celeba.txt``, ``list_eval_partition.txt``."""
    rng = np.random.default_rng(seed)
    img_dir = base / "img_align_celeba"
    img_dir.mkdir(parents=True)
    files = [f"{i + 1:06d}.jpg" for i in range(n)]
    for i, f in enumerate(files):
        arr = np.empty((218, 178, 3), np.uint8)
        arr[:20] = (255, 0, 0)  # rows cut away by the 178x178 center crop
        arr[-20:] = (255, 0, 0)
        arr[20:-20] = (0, 0, 10 * i)  # the kept square: one flat colour per image
        Image.fromarray(arr).save(img_dir / f, quality=95)
    values = rng.choice([-1, 1], size=(n, 40))
    lines = [str(n), " ".join(CELEBA_ATTRIBUTES) + " "]
    lines += [f + " " + " ".join(f"{v:2d}" for v in row) for f, row in zip(files, values, strict=True)]
    (base / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    partition = [0 if i < n - 4 else 1 if i < n - 2 else 2 for i in range(n)]  # 8 / 2 / 2 for n = 12
    (base / "list_eval_partition.txt").write_text("".join(f"{f} {p}\n" for f, p in zip(files, partition, strict=True)))
    return files, values


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    parent = tmp_path_factory.mktemp("data")
    files, values = write_fake_celeba(parent / "celeba")
    return parent, files, values


def col(name):
    return CELEBA_ATTRIBUTES.index(name)


def test_splits_sizes_and_labels(fake):
    parent, files, values = fake
    base = parent / "celeba"
    for split, idx in [("train", range(0, 8)), ("valid", range(8, 10)), ("test", range(10, 12)), ("all", range(12))]:
        ds = CelebA(base, split=split)
        idx = list(idx)
        assert len(ds) == len(idx)
        assert ds.files == [files[i] for i in idx]
        want = (values[idx][:, [col(c) for c in ds.concepts]] + 1) / 2
        assert_close(ds.labels, torch.tensor(want, dtype=torch.float32))
    assert ds.concepts == ("Male", "Smiling", "Narrow_Eyes", "Mouth_Slightly_Open")
    assert_close(ds.label_loc, torch.full((4,), 0.5))
    assert_close(ds.label_scale, torch.full((4,), 0.5))
    assert set(ds.labels_normalised.unique().tolist()) <= {-1.0, 1.0}
    assert isinstance(ds, ConceptImageDataset) and ds.name == "celeba-smile"


def test_root_may_be_parent_holding_celeba(fake):
    parent, files, _ = fake
    assert CelebA(parent, split="test").files == files[10:]


@pytest.mark.parametrize("size", [64, 128, 16])
def test_items_center_crop_and_resize(fake, size):
    parent, _, values = fake
    ds = CelebA(parent, split="train", size=size)
    assert ds.image_shape == (3, size, size)
    x, y = ds[3]
    assert x.shape == (3, size, size) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # the red bands above and below are cropped away; the kept square is blue 30 (JPEG tolerance)
    assert_close(x.mean((1, 2)), torch.tensor([0.0, 0.0, 30 / 255]), atol=6 / 255, rtol=0)
    assert_close(y, torch.tensor(values[3][[col(c) for c in ds.concepts]], dtype=torch.float32))


def test_preload_matches_lazy_decoding(fake):
    parent, _, _ = fake
    lazy = CelebA(parent, split="valid", size=32)
    eager = CelebA(parent, split="valid", size=32, preload=True)
    assert lazy.images is None and not lazy.preloaded
    assert eager.images.shape == (2, 3, 32, 32) and eager.images.dtype == torch.uint8
    for i in range(2):
        assert_close(lazy[i][0], eager[i][0])
        assert_close(lazy[i][1], eager[i][1])
    assert_close(lazy[-1][0], lazy[1][0])
    with pytest.raises(IndexError):
        lazy[2]


def test_subsets_and_graphs(fake):
    parent, _, values = fake
    smile = CelebA(parent, "smile")
    assert set(smile.graph.edges) == {
        ("Male", "Narrow_Eyes"),
        ("Smiling", "Narrow_Eyes"),
        ("Smiling", "Mouth_Slightly_Open"),
        ("Mouth_Slightly_Open", "Narrow_Eyes"),
    }
    beard = CelebA(parent, "beard")
    assert beard.concepts == ("Young", "Male", "Bald", "No_Beard")
    assert set(beard.graph.edges) == {("Young", "Bald"), ("Male", "Bald"), ("Male", "No_Beard"), ("Young", "No_Beard")}
    custom = CelebA(parent, ["Eyeglasses", "Wearing_Hat"], split="all")
    assert custom.graph is None and custom.concepts == ("Eyeglasses", "Wearing_Hat")
    assert_close(custom.labels, torch.tensor((values[:, [15, 35]] + 1) / 2, dtype=torch.float32))
    given = CelebA(parent, ["Eyeglasses", "Wearing_Hat"], graph=[("Eyeglasses", "Wearing_Hat")])
    assert set(given.graph.edges) == {("Eyeglasses", "Wearing_Hat")}
    assert CelebA(parent, "smile", graph=None).graph is None


def test_view_subset_transform_and_loader(fake):
    parent, files, _ = fake
    ds = CelebA(parent, split="train", size=16, transform=lambda im: 1.0 - im)
    sub = ds.subset([6, 2])
    assert isinstance(sub, CelebA) and sub.files == [files[6], files[2]]
    assert_close(sub.labels, ds.labels[[6, 2]])
    assert_close(sub[0][0], ds[6][0])
    assert float(ds[0][0][0].mean()) > 0.9  # transform applied: 1 - (almost black red channel)
    xb, yb = next(iter(DataLoader(ds, batch_size=5)))
    assert xb.shape == (5, 3, 16, 16) and yb.shape == (5, 4)
    assert "split='train'" in repr(ds) and "n=8" in repr(ds)


def test_save_writes_decoded_images(fake, tmp_path):
    parent, _, _ = fake
    ds = CelebA(parent, split="test", size=16)
    ds.save(tmp_path / "c.npz")
    back = ConceptImageDataset.load(tmp_path / "c.npz")
    assert type(back) is ConceptImageDataset and back.image_shape == (3, 16, 16)
    assert_close(back.images, CelebA(parent, split="test", size=16, preload=True).images)
    assert_close(back.labels, ds.labels)
    assert set(back.graph.edges) == set(ds.graph.edges)


def test_bad_arguments(fake):
    parent, _, _ = fake
    with pytest.raises(ValueError, match="unknown CelebA attribute.*'Smiles'.*valid attributes are .*'Smiling'"):
        CelebA(parent, ["Smiles"])
    with pytest.raises(ValueError, match="unknown CelebA subset 'smiles'.*'beard', 'smile'"):
        CelebA(parent, "smiles")
    with pytest.raises(ValueError, match="unknown CelebA split 'val'"):
        CelebA(parent, split="val")
    with pytest.raises(ValueError, match="size must be an integer >= 16"):
        CelebA(parent, size=8)
    with pytest.raises(ValueError, match="duplicate concept names"):
        CelebA(parent, ["Male", "Male"])
    with pytest.raises(ValueError, match="cycle"):
        CelebA(parent, "smile", graph=[("Male", "Smiling"), ("Smiling", "Male")])


def test_missing_files_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="CelebA folder not found"):
        CelebA(tmp_path / "nowhere")
    base = tmp_path / "celeba"
    files, _ = write_fake_celeba(base, n=4)
    os.remove(base / "list_eval_partition.txt")
    with pytest.raises(FileNotFoundError, match=r"(?s)missing: \[.*list_eval_partition.txt'\].*img_align_celeba/000001.jpg"):
        CelebA(base, split="train")
    assert len(CelebA(base, split="all")) == 4  # the partition is not needed for split="all"
    shutil.rmtree(base / "img_align_celeba")
    with pytest.raises(FileNotFoundError, match="(?s)img_align_celeba.*list_attr_celeba.txt"):
        CelebA(tmp_path, split="all")


def test_missing_image_is_named(tmp_path):
    base = tmp_path / "celeba"
    files, _ = write_fake_celeba(base, n=4)
    os.remove(base / "img_align_celeba" / files[2])
    with pytest.raises(FileNotFoundError, match=r"1 CelebA image\(s\) .* missing .*'000003.jpg'"):
        CelebA(base, split="all")


def test_malformed_attribute_file(tmp_path):
    base = tmp_path / "celeba"
    write_fake_celeba(base, n=3)
    attr = base / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    attr.write_text("\n".join(["5", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match="line 1 says 5 images but 3 rows follow"):
        CelebA(base, split="all")
    bad = lines[3].split()
    bad[col("Male") + 1] = "0"
    attr.write_text("\n".join([*lines[:3], " ".join(bad), *lines[4:]]) + "\n")
    with pytest.raises(ValueError, match="line 4: attribute 'Male' is '0', expected -1 or 1"):
        CelebA(base, split="all")


def test_fit_streams_images_from_disk_with_workers_like_the_preloaded_data(fake):
    """CelebA(preload=False) trains through a DataLoader (1 worker) on the same batches as the preloaded
    dataset, so the two runs end with the same parameters."""
    from pyro_causalvae import CausalVAE, fit

    parent = fake[0]
    runs = []
    for preload, workers in ((True, 0), (False, 1)):
        ds = CelebA(parent, split="train", size=16, preload=preload)
        torch.manual_seed(0)
        model = CausalVAE(ds.concepts, ds.image_shape, style_dim=2, graph=ds.graph,
                          channels=8, hidden=16, mechanism_hidden=8, label_loc=ds.label_loc, label_scale=ds.label_scale)
        fit(model, ds, epochs=2, batch_size=4, seed=1, progress=False, num_workers=workers)
        runs.append({k: v for k, v in model.state_dict().items() if torch.is_tensor(v)})
    assert runs[0].keys() == runs[1].keys()
    for k in runs[0]:
        assert_close(runs[1][k], runs[0][k], msg=k)
