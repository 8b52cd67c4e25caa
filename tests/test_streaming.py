"""Folder datasets streamed from disk: the same items as in memory, lazy views, the size rule, and fit
through the DataLoader path (with a worker) ending where the resident path ends."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.testing import assert_close

from pyro_causalvae import fit
from pyro_causalvae.datasets import ConceptImageDataset
from pyro_causalvae.datasets import base as dbase

from tiny import GRAPH, params, tiny_dataset, tiny_model


@pytest.fixture
def folder(tmp_path):
    ds = tiny_dataset(n=32)
    ds.labels[3, 1] = float("nan")  # a missing label travels too
    return ds.to_folder(tmp_path / "data")


def test_streamed_items_equal_resident_items(folder):
    resident = ConceptImageDataset(folder, folder / "labels.csv", stream=False)
    streamed = ConceptImageDataset(folder, folder / "labels.csv", stream=True)
    assert resident.images is not None and streamed.images is None and streamed.streamed
    assert len(streamed) == 32 and streamed.image_shape == resident.image_shape == (3, 16, 16)
    assert "streamed from disk" in repr(streamed) and "1 labels missing" in repr(streamed)
    for i in (0, 3, 31, -1):
        (x, u), (y, v) = resident[i], streamed[i]
        assert torch.equal(x, y) and torch.equal(u.nan_to_num(7.0), v.nan_to_num(7.0))
    with pytest.raises(IndexError, match="index 32 is out of range"):
        streamed[32]
    assert torch.equal(streamed._all_images_uint8(), resident.images)
    assert torch.equal(streamed.to_memory().images, resident.images)


def test_streamed_subset_is_a_lazy_view(folder):
    streamed = ConceptImageDataset(folder, folder / "labels.csv", stream=True)
    sub = streamed.subset([5, 1, 30])
    assert sub.streamed and len(sub) == 3 and sub.image_files == [streamed.image_files[j] for j in (5, 1, 30)]
    assert torch.equal(sub[1][0], streamed[1][0])
    assert_close(sub.label_loc, streamed.label_loc)
    train, test, split = streamed.heldout_split(0.25, seed=3)
    assert len(train) == 24 and len(test) == 8 and train.streamed and test.streamed
    assert sorted(split.train_rows.tolist() + split.test_rows.tolist()) == list(range(32))
    again = streamed.heldout_split(0.25, seed=3)[2]
    assert torch.equal(again.test_rows, split.test_rows)  # seeded
    assert not torch.equal(streamed.heldout_split(0.25, seed=4)[2].test_rows, split.test_rows)


def test_size_rule_chooses_streaming(folder, monkeypatch):
    assert dbase.resident_bytes(200_000, (3, 64, 64)) > dbase.RESIDENT_LIMIT_BYTES > dbase.resident_bytes(6000, (3, 96, 96))
    assert ConceptImageDataset(folder, folder / "labels.csv").images is not None  # 24 KiB: in memory
    monkeypatch.setattr(dbase, "RESIDENT_LIMIT_BYTES", 32 * 3 * 16 * 16 - 1)
    assert ConceptImageDataset(folder, folder / "labels.csv").streamed


def test_fit_through_the_dataloader_with_a_worker_matches_the_resident_path(folder):
    resident = ConceptImageDataset(folder, folder / "labels.csv", stream=False)
    streamed = ConceptImageDataset(folder, folder / "labels.csv", stream=True)
    runs = []
    for ds, workers in ((resident, 0), (streamed, 1)):
        torch.manual_seed(0)
        model = tiny_model(GRAPH)
        hist = fit(model, ds, epochs=1, batch_size=16, progress=False, num_workers=workers, seed=1)
        runs.append((params(model), hist.last()["loss"]))
    (p0, l0), (p1, l1) = runs
    assert l0 == pytest.approx(l1, rel=1e-6)
    for k in p0:
        assert_close(p0[k], p1[k], rtol=1e-5, atol=1e-6, msg=k)


def test_a_file_changed_after_the_check_is_named(folder):
    streamed = ConceptImageDataset(folder, folder / "labels.csv", stream=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(streamed.image_files[2])
    with pytest.raises(ValueError, match=r"00002\.png' is 8x8 \(WxH\) but the dataset's images are 16x16"):
        streamed[2]


def test_unlabelled_streamed_dataset(tmp_path):
    ds = ConceptImageDataset(tiny_dataset(n=4).images, None, ["a", "b", "c"])
    ds.to_folder(tmp_path / "u")
    back = ConceptImageDataset(tmp_path / "u", None, ["a", "b", "c"], stream=True)
    assert torch.equal(back[1], ds[1])
