"""Batches of partly labelled data (``data_feed.balanced_order``): a fixed share of labelled images in every
global batch, the same batches whatever the world size, and ``fit`` training on them."""

import pytest
import torch

from pyro_causalvae.data_feed import ShardedBatches, balanced_order, balances


def _labelled(n=100, k=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=g)[:k]] = True
    return mask


def test_each_batch_holds_the_share_of_labelled_images_and_each_unlabelled_image_once():
    labelled = _labelled()
    order = balanced_order(labelled, batch_size=8, share=0.5, seed=1, epoch=0)
    batches = order.view(-1, 8)
    assert batches.shape[0] == 90 // 4  # one pass over the 90 unlabelled images, 4 per batch
    assert (labelled[batches].sum(1) == 4).all()
    unl = order[~labelled[order]]
    assert unl.unique().numel() == unl.numel() == 88  # no unlabelled image twice in an epoch
    lab = order[labelled[order]]
    counts = torch.bincount(lab, minlength=100)[labelled]
    assert counts.max() - counts.min() <= 1  # the labelled images are cycled evenly
    assert not torch.equal(order, balanced_order(labelled, 8, 0.5, seed=1, epoch=1))
    assert torch.equal(order, balanced_order(labelled, 8, 0.5, seed=1, epoch=0))


def test_balancing_applies_only_to_partly_labelled_data():
    assert balances(_labelled(k=10), 8, 0.5)
    assert not balances(_labelled(k=60), 8, 0.5)  # labelled share already above the target
    assert not balances(_labelled(k=0), 8, 0.5)  # unlabelled data: nothing to balance
    assert not balances(torch.ones(100, dtype=torch.bool), 8, 0.5)
    assert not balances(_labelled(k=10), 8, 0.0)  # switched off
    assert not balances(None, 8, 0.5)


@pytest.mark.parametrize("world", [1, 2, 4])
def test_balanced_shards_do_not_depend_on_the_world_size(world):
    labelled = _labelled()
    full = ShardedBatches(100, 8, seed=1, epoch=2, labelled=labelled, labelled_share=0.5)
    shards = [ShardedBatches(100, 8, seed=1, epoch=2, rank=r, world_size=world, start=1, labelled=labelled,
                             labelled_share=0.5) for r in range(world)]
    assert len(full) == 22 and all(len(s) == 21 for s in shards)
    for b, parts in enumerate(zip(*shards), start=1):
        assert torch.equal(torch.tensor(sum(parts, [])), full.shard(b))


def test_fit_on_partly_labelled_data_uses_balanced_batches(tmp_path):
    import pyro

    from pyro_causalvae import CausalVAE, fit
    from pyro_causalvae import checkpoint as ckpt
    from pyro_causalvae.datasets import ConceptImageDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=g)
    u = torch.rand(64, 2, generator=g)
    u[8:] = float("nan")  # 8 of 64 images labelled
    ds = ConceptImageDataset(x, u, ["a", "b"], graph=[("a", "b")])
    pyro.set_rng_seed(0)
    model = CausalVAE(["a", "b"], (3, 16, 16), graph=[("a", "b")], channels=8, hidden=16)
    hist = fit(model, ds, epochs=1, batch_size=8, progress=False, out_dir=tmp_path / "run", order_search=False)
    assert hist.rows[0]["step"] == 14  # 56 unlabelled images, 4 per batch (8 would be plain shuffling)
    assert ckpt.read_json(tmp_path / "run" / ckpt.CONFIG)["fit"]["labelled_share"] == 0.5
    hist = fit(CausalVAE(["a", "b"], (3, 16, 16), graph=[("a", "b")], channels=8, hidden=16), ds, epochs=1,
               batch_size=8, progress=False, labelled_share=0.0, order_search=False)
    assert hist.rows[0]["step"] == 8


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, True, "half", float("nan")])
def test_fit_refuses_a_bad_labelled_share_before_any_work(bad):
    from pyro_causalvae import CausalVAE, fit
    from pyro_causalvae.datasets import ConceptImageDataset

    ds = ConceptImageDataset(torch.zeros(8, 3, 16, 16, dtype=torch.uint8), torch.zeros(8, 2), ["a", "b"])
    model = CausalVAE(["a", "b"], (3, 16, 16), channels=8, hidden=16)
    with pytest.raises(ValueError, match="labelled_share must be a number in \\[0, 1\\)"):
        fit(model, ds, epochs=1, batch_size=8, progress=False, labelled_share=bad)
