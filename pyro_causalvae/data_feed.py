"""Feeding batches to the training loop: the global batch order, its shards, and the two data paths.

The order of the data is a property of the *run*, not of the number of processes: epoch ``e`` visits a
permutation drawn from ``(seed, e)``, cut into global batches of ``batch_size`` images; batch ``b`` of
that epoch is the same set of images whatever the world size, and rank ``r`` of ``W`` takes the ``r``-th
of its ``W`` equal shards (the role ``DistributedSampler`` plays, at batch rather than epoch granularity).
So a run can stop after any step and resume there, on the same or another number of processes.

Few labels (semi-supervised data): when fewer than ``labelled_share`` of the images carry a label, every
global batch is made of ``labelled_share`` labelled images and the rest unlabelled ones
(:func:`balanced_order`; the labelled images are cycled, reshuffled on each pass, and an epoch is one pass
over the unlabelled images), so the label terms see as many labelled images per step whatever the share
(Kingma et al. 2014 draw labelled and unlabelled batches separately for the same reason). Also a function
of ``(seed, epoch)`` only.

Two paths:

- resident: a dataset with an ``images`` tensor (the synthetic worlds, folders, a preloaded CelebA) is
  moved to the device once and batches are indexed there (no DataLoader, no copies);
- streamed: a dataset whose images are read from disk on access (``CelebA(preload=False)``) goes
  through a :class:`~torch.utils.data.DataLoader` with this batch order as its ``batch_sampler``,
  ``num_workers`` worker processes and pinned memory on CUDA.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the ``n`` items in ``epoch`` (``[n]`` int64, on the CPU)."""
    g = torch.Generator(device="cpu").manual_seed(seed * 100003 + epoch)
    return torch.randperm(n, generator=g)


def check_batching(n: int, batch_size: int, world_size: int) -> int:
    """Validate the global batch against the data and the world size; return the steps per epoch.

    :raises ValueError: when ``batch_size`` is not a multiple of ``world_size`` or the data holds fewer
        images than one global batch.
    """
    if batch_size % world_size:
        lo, hi = batch_size - batch_size % world_size, batch_size + world_size - batch_size % world_size
        raise ValueError(f"batch_size {batch_size} (the global batch) is not divisible by the world size {world_size}: "
                         f"every rank must take an equal shard; use {lo or hi} or {hi}")
    if n < batch_size:
        raise ValueError(f"the dataset has {n} images, fewer than one global batch of {batch_size}: lower batch_size")
    return n // batch_size


def balances(labelled: torch.Tensor | None, batch_size: int, share: float) -> bool:
    """Whether an epoch follows :func:`balanced_order`: some images are labelled, fewer than ``share`` of
    them, and the unlabelled ones fill at least one batch."""
    if labelled is None or share <= 0:
        return False
    n, n_lab = labelled.numel(), int(labelled.sum())
    return 0 < n_lab < share * n and balanced_steps(labelled, batch_size, share) >= 1


def _labelled_per_batch(batch_size: int, share: float) -> int:
    return min(batch_size - 1, max(1, round(share * batch_size)))


def balanced_steps(labelled: torch.Tensor, batch_size: int, share: float) -> int:
    """Global batches in one epoch of :func:`balanced_order`: one pass over the unlabelled images."""
    return int((~labelled).sum()) // (batch_size - _labelled_per_batch(batch_size, share))


def balanced_order(labelled: torch.Tensor, batch_size: int, share: float, seed: int, epoch: int) -> torch.Tensor:
    """The global order of one epoch of partly labelled data: ``steps * batch_size`` indices, global batch
    ``b`` at ``[b * batch_size : (b + 1) * batch_size]``, each holding ``round(share * batch_size)``
    labelled images and unlabelled ones for the rest, shuffled within the batch (so every rank's shard
    gets a share of both). ``steps`` = (number of unlabelled images) // (unlabelled per batch).

    :param labelled: ``[n]`` booleans, the images with at least one label.
    """
    g = torch.Generator(device="cpu").manual_seed(seed * 100003 + epoch)
    lab, unl = labelled.nonzero().flatten(), (~labelled).nonzero().flatten()
    b_l = _labelled_per_batch(batch_size, share)
    b_u = batch_size - b_l
    steps = balanced_steps(labelled, batch_size, share)
    unl = unl[torch.randperm(unl.numel(), generator=g)][: steps * b_u].view(steps, b_u)
    passes = -(-steps * b_l // lab.numel())
    lab = torch.cat([lab[torch.randperm(lab.numel(), generator=g)] for _ in range(passes)])[: steps * b_l].view(steps, b_l)
    batches = torch.cat([lab, unl], 1)
    mix = torch.stack([torch.randperm(batch_size, generator=g) for _ in range(steps)])
    return batches.gather(1, mix).flatten()


class ShardedBatches(Sampler[list[int]]):
    """Indices of this rank's shard of each global batch of one epoch, from batch ``start`` on.

    :param n: dataset size.
    :param batch_size: the global batch (all ranks together).
    :param seed: run seed.
    :param epoch: epoch index (0-based).
    :param rank: this process's rank; ``world_size``: number of processes.
    :param start: first global batch to yield (a resumed epoch).
    :param labelled: ``[n]`` booleans (images with a label) or ``None``; with ``labelled_share``, the
        epoch follows :func:`balanced_order` when :func:`balances` says so.
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1, start: int = 0,
                 labelled: torch.Tensor | None = None, labelled_share: float = 0.0):
        self.steps = check_batching(n, batch_size, world_size)
        if balances(labelled, batch_size, labelled_share):
            self.perm = balanced_order(labelled, batch_size, labelled_share, seed, epoch)
            self.steps = self.perm.numel() // batch_size
        else:
            self.perm = epoch_permutation(n, seed, epoch)
        self.batch_size, self.rank, self.world_size, self.start = batch_size, rank, world_size, start

    def shard(self, b: int) -> torch.Tensor:
        """Indices ``[batch_size / world_size]`` of this rank's shard of global batch ``b``."""
        local = self.batch_size // self.world_size
        lo = b * self.batch_size + self.rank * local
        return self.perm[lo : lo + local]

    def __iter__(self) -> Iterator[list[int]]:
        for b in range(self.start, self.steps):
            yield self.shard(b).tolist()

    def __len__(self) -> int:
        return self.steps - self.start


class BatchFeed:
    """Batches ``(x [B, C, H, W] float32 in [0, 1] on the device, u [B, K] normalised labels or None)``.

    :param dataset: a :class:`~pyro_causalvae.datasets.ConceptImageDataset` (or subclass).
    :param n: its number of images.
    :param device: where batches are delivered.
    :param num_workers: DataLoader worker processes for the streamed path (ignored when resident).
    :param labelled_share: the share of labelled images in each batch when the data has fewer (see the
        module docstring); ``0``: plain shuffling.
    """

    def __init__(self, dataset, n: int, batch_size: int, seed: int, device: torch.device, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, labelled_share: float = 0.0):
        self.dataset, self.batch_size, self.seed, self.device = dataset, batch_size, seed, device
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.n = n
        labels = getattr(dataset, "labels", None)
        self.labelled_rows = ~torch.isnan(labels).all(-1) if isinstance(labels, torch.Tensor) else None
        self.labelled_share = labelled_share
        self.balanced = balances(self.labelled_rows, batch_size, labelled_share)
        self.steps_per_epoch = check_batching(self.n, batch_size, world_size)
        if self.balanced:
            self.steps_per_epoch = balanced_steps(self.labelled_rows, batch_size, labelled_share)
        images = getattr(dataset, "images", None)
        self.resident = isinstance(images, torch.Tensor)
        if self.resident:
            self.images = images.to(device)
            labels = dataset.labels_normalised
            self.labels = labels.to(device=device, dtype=torch.float32) if labels is not None else None
        else:
            self.labels = None

    @property
    def labelled(self) -> bool:
        return getattr(self.dataset, "labels", None) is not None

    def _x(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.float().div_(255.0) if raw.dtype == torch.uint8 else raw.float()

    def _sampler(self, epoch: int, start: int = 0) -> ShardedBatches:
        return ShardedBatches(self.n, self.batch_size, self.seed, epoch, self.rank, self.world_size, start,
                              self.labelled_rows, self.labelled_share)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """This rank's batches of ``epoch`` from global batch ``start`` on."""
        sampler = self._sampler(epoch, start)
        if self.resident:
            sampler.perm = sampler.perm.to(self.device)  # shards are indexed on the device
            for b in range(start, sampler.steps):
                idx = sampler.shard(b)
                yield self._x(self.images[idx]), (self.labels[idx] if self.labels is not None else None)
            return
        cuda = self.device.type == "cuda"
        loader = DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.num_workers, pin_memory=cuda,
                            persistent_workers=False)
        for item in loader:
            x, u = (item if isinstance(item, (list, tuple)) else (item, None))
            x = x.to(self.device, non_blocking=cuda).float()
            u = u.to(self.device, dtype=torch.float32, non_blocking=cuda) if u is not None else None
            yield x, u
