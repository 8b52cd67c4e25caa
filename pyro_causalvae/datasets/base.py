"""The container every dataset of this package is: images + concept labels (+ an optional causal graph).

:class:`ConceptImageDataset` holds ``N`` images as one ``uint8`` tensor ``[N, C, H, W]`` (``C`` is 1 or 3),
or, for a large folder, only the list of its files (``images is None``: each image is decoded when it is
read, by DataLoader workers in training); their concept labels in natural units as a ``float32`` tensor
``[N, K]`` with NaN for missing labels (or ``None`` for unlabelled images), the ``K`` concept names, an
optional causal graph over the concepts, and the affine map that normalises labels for the model:
``normalised = (labels - label_loc) / label_scale``.

Reading label CSVs lives in :mod:`pyro_causalvae.datasets.table`, image files, saving (``.npz``) and
exporting (PNG folder) in :mod:`pyro_causalvae.datasets.io`, the held-out split in
:mod:`pyro_causalvae.datasets.split`; they are exposed here as the constructor,
:meth:`ConceptImageDataset.save`, :meth:`ConceptImageDataset.load`, :meth:`ConceptImageDataset.to_folder`,
:meth:`ConceptImageDataset.from_folder` and :meth:`ConceptImageDataset.heldout_split`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import networkx as nx
import numpy as np
import torch
from torch.utils.data import Dataset

from .._validation import GraphLike, check_concepts, check_finite, check_graph, check_real_vector, check_scale
from ..progress import log as _log
from ..progress import phase
from . import io as _io
from .split import HeldOutSplit, heldout_split
from .table import LabelTable, read_labels_csv

PathLike = str | os.PathLike

__all__ = ["ConceptImageDataset", "RESIDENT_LIMIT_BYTES", "resident_bytes"]

#: A folder dataset is decoded into memory when its decoded images (``N * C * H * W`` bytes of uint8)
#: take at most this much (1 GiB: 6,000 images of 3x96x96 take 158 MiB, 200,000 of 3x64x64 take 2.3 GiB);
#: larger ones are streamed from disk. ``stream=True`` / ``False`` overrides the rule.
RESIDENT_LIMIT_BYTES = 2**30
_VIEW_FIELDS = ("images", "labels", "concepts", "graph", "label_loc", "label_scale", "name", "image_files",
                "row_splits", "_header")


def _is_path(x: object) -> bool:
    return isinstance(x, (str, os.PathLike))


def _as_vector(value, k: int, what: str) -> torch.Tensor:
    """``value`` as a finite float32 tensor of shape ``[k]`` (a scalar is broadcast), or ``ValueError``."""
    return check_real_vector(value, k, what, broadcast=True)


class ConceptImageDataset(Dataset):
    """Images with concept labels (some may be missing) and an optional causal graph over the concepts.

    :param images: one of

        - a ``uint8`` tensor / numpy array ``[N, C, H, W]`` (stored as is);
        - a floating tensor / numpy array ``[N, C, H, W]`` with values in ``[0, 1]``
          (stored as ``uint8`` via ``round(x * 255)``);
        - a path to a folder of image files (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.tif``, ``.tiff``,
          ``.webp``; names starting with ``.`` are skipped; only those formats are decoded, whatever the
          name, see :func:`~pyro_causalvae.datasets.io.open_image`). Rows follow the sorted file names,
          unless ``labels`` is a CSV file with an image column (``file``, ``filename``, ``path``,
          ``image``..., any case, or ``image_column``), which then maps each row to its file: a path
          relative to this folder or to the CSV's folder (files not listed are ignored);
        - ``None`` with a CSV whose image column names the files (relative to the CSV's folder).

        Images are converted to RGB unless all are grayscale (an alpha channel is dropped). ``C`` must be
        1 or 3. Every file's header is checked (existence, format, size, mode) before any is decoded.
    :param labels: concept labels in natural units: a tensor / numpy array ``[N, K]`` (NaN marks a missing
        label), a path to a CSV file (layouts: :mod:`pyro_causalvae.datasets.table`; blank / ``nan`` /
        ``NA`` cells are missing labels), a :class:`~pyro_causalvae.datasets.table.LabelTable`, or
        ``None`` for unlabelled images (then ``concepts`` is required).
    :param concepts: the ``K`` concept names. Required with tensor labels or no labels; with a CSV file it
        selects and orders columns (default: every numeric column but the image and split columns).
    :param graph: a ``networkx.DiGraph`` or a list of ``(parent, child)`` edges over the concepts, or
        ``None`` (unknown graph). Must be acyclic.
    :param label_loc: ``[K]`` centre of the normalisation (default from the data: ``(min + max) / 2`` per
        column over the labels present; ``0`` without labels). A scalar is broadcast.
    :param label_scale: ``[K]`` positive scale of the normalisation (default ``(max - min) / 2`` per column,
        a zero range replaced by 1; ``1`` without labels). A scalar is broadcast.
    :param name: a short name for the dataset.
    :param image_column: the CSV column of image file names (default: found by name).
    :param stream: for a folder: ``False`` decodes every image into memory now (``images`` is a uint8
        tensor); ``True`` keeps only the file list and decodes each image when it is read (``images`` is
        ``None``; :func:`~pyro_causalvae.fit` then feeds it through a DataLoader with workers); ``None``
        (default) streams when the decoded images would take more than :data:`RESIDENT_LIMIT_BYTES`.
    :param progress: show progress bars while checking headers and decoding.
    :param follow_symlinks: for a folder, accept image files outside it: symbolic links to places outside
        it, absolute names and ``../`` names in the CSV (all refused by default).

    Items: ``dataset[i]`` is ``(image, label)`` with ``image`` a float32 tensor ``[C, H, W]`` in ``[0, 1]``
    and ``label`` the *normalised* float32 labels ``[K]`` (NaN where missing). For an unlabelled dataset
    ``dataset[i]`` is the image tensor alone.

    Attributes beyond the arguments: ``image_files`` (the absolute paths of a folder's images in row
    order, else ``None``) and ``row_splits`` (``"train"`` / ``"test"`` per row from a CSV's ``split``
    column, else ``None``; see :meth:`heldout_split`).

    :raises ValueError: for malformed input (the message names the problem), before any decoding.
    :raises FileNotFoundError: for a missing image folder or CSV file.
    """

    #: Absolute paths of the image files, in row order (folders only).
    image_files: list[str] | None = None
    #: ``"train"`` / ``"test"`` per row, from a CSV's ``split`` column.
    row_splits: list[str] | None = None
    _header: _io.ImageHeader | None = None

    def __init__(
        self,
        images,
        labels=None,
        concepts: Sequence[str] | None = None,
        graph: GraphLike = None,
        *,
        label_loc=None,
        label_scale=None,
        name: str = "custom",
        image_column: str | None = None,
        stream: bool | None = None,
        progress: bool = False,
        follow_symlinks: bool = False,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        if stream not in (None, True, False):
            raise ValueError(f"stream must be None, True or False, got {stream!r}")
        if concepts is not None:
            concepts = check_concepts(concepts)

        # --- labels (cheap to validate, so before images) ----------------------------------------
        table: LabelTable | None = None
        if _is_path(labels):
            table = read_labels_csv(labels, concepts, image_column=image_column)
        elif isinstance(labels, LabelTable):
            table = labels
            if concepts is not None and tuple(concepts) != table.concepts:
                raise ValueError(f"concepts {list(concepts)} differ from the label table's {list(table.concepts)}")
        if table is not None:
            concepts, label_t = table.concepts, table.labels.clone()
        elif labels is not None:
            if concepts is None:
                raise ValueError("concepts (the K concept names) are required when labels is a tensor or array")
            label_t = _labels_tensor(labels)
            if label_t.shape[1] != len(concepts):
                raise ValueError(
                    f"labels have {label_t.shape[1]} columns but {len(concepts)} concepts were named "
                    f"({list(concepts)}); labels must have shape [N, K] with K = len(concepts)"
                )
        else:
            if concepts is None:
                raise ValueError("concepts (the K concept names) are required for unlabelled images (labels=None)")
            label_t = None
        k = len(concepts)
        if label_t is not None:
            _check_label_columns(label_t, concepts)

        checked_graph = check_graph(graph, concepts)
        loc, scale = _normalisation(label_t, k, concepts, label_loc, label_scale)

        # --- images: headers checked first, then decoded (or streamed) ---------------------------------
        image_t, files, header = None, None, None
        filenames = table.filenames if table is not None else None
        if _is_path(images) or (images is None and filenames is not None):
            csv_dir = table.path.parent if table is not None and table.path is not None else None
            files = _io.list_image_files(images, filenames, follow_symlinks, csv_dir=csv_dir)
            if label_t is not None and label_t.shape[0] != len(files):
                raise ValueError(
                    f"labels have {label_t.shape[0]} rows but the folder {os.fspath(images)!r} holds "
                    f"{len(files)} images; labels must have one row per image (or name each row's file in an "
                    "image column)"
                )
            with phase(f"checking {len(files)} image headers") as ph:
                header = _io.check_image_files(files, progress=progress)
                ph.note = f"{header.width}x{header.height} {'grayscale' if header.channels == 1 else 'RGB'}"
            by_rule = stream is None
            if by_rule:
                stream = resident_bytes(len(files), header.shape) > RESIDENT_LIMIT_BYTES
            if not stream:
                with phase(f"decoding {len(files)} images") as ph:
                    image_t = _io.read_images(files, progress=progress, header=header)
                    ph.note = f"{image_t.numel() / 2**20:.0f} MiB in memory"
            elif by_rule:
                _log.info("streaming %d images from disk (%.0f MiB decoded would exceed the %.0f MiB resident limit)",
                          len(files), resident_bytes(len(files), header.shape) / 2**20, RESIDENT_LIMIT_BYTES / 2**20)
        else:
            image_t = _images_tensor(images)
            if label_t is not None and label_t.shape[0] != image_t.shape[0]:
                raise ValueError(
                    f"labels have {label_t.shape[0]} rows but there are {image_t.shape[0]} images; "
                    "labels must have one row per image"
                )

        self.images: torch.Tensor | None = image_t
        self.labels: torch.Tensor | None = label_t
        self.concepts: tuple[str, ...] = tuple(concepts)
        self.graph: nx.DiGraph | None = checked_graph
        # concepts drawn as one thing in the picture (CausalVAE's decoder_groups); known for simulated worlds
        self.object_groups: list[list[str]] | None = None
        self.label_loc: torch.Tensor = loc.to(torch.float32)
        self.label_scale: torch.Tensor = scale.to(torch.float32)
        self.name: str = name
        if files is not None:
            self.image_files = [os.fspath(f.absolute()) for f in files]
            self._header = header
        if table is not None and table.split is not None:
            self.row_splits = list(table.split)

    # ------------------------------------------------------------------------------------------------
    # shape and labels
    # ------------------------------------------------------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""
        if self.images is None:
            return self._header.shape
        return tuple(int(s) for s in self.images.shape[1:])

    @property
    def streamed(self) -> bool:
        """Whether the images are decoded from disk when read (``images is None``)."""
        return self.images is None

    @property
    def num_concepts(self) -> int:
        """``K``, the number of concepts."""
        return len(self.concepts)

    @property
    def labels_normalised(self) -> torch.Tensor | None:
        """``(labels - label_loc) / label_scale`` as float32 ``[N, K]``, or ``None`` without labels."""
        if self.labels is None:
            return None
        return self.normalise(self.labels)

    def normalise(self, labels) -> torch.Tensor:
        """Map labels ``[..., K]`` in natural units to the model's scale."""
        t = self._label_like(labels, "labels")
        return (t - self.label_loc) / self.label_scale

    def denormalise(self, labels_norm) -> torch.Tensor:
        """Inverse of :meth:`normalise`: normalised labels ``[..., K]`` back to natural units."""
        t = self._label_like(labels_norm, "labels_norm")
        return t * self.label_scale + self.label_loc

    def _label_like(self, labels, what: str) -> torch.Tensor:
        t = torch.as_tensor(labels, dtype=torch.float32, device=self.label_loc.device)
        if t.dim() == 0 or t.shape[-1] != self.num_concepts:
            raise ValueError(
                f"{what} must have shape [..., {self.num_concepts}] (concepts {list(self.concepts)}), "
                f"got shape {list(t.shape)}"
            )
        return t

    # ------------------------------------------------------------------------------------------------
    # Dataset protocol
    # ------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        if self.images is None:
            return len(self.image_files)
        return int(self.images.shape[0])

    def __getitem__(self, i):
        """``(image float32 [C, H, W] in [0, 1], normalised labels float32 [K])``; the image alone if unlabelled.

        A streamed dataset decodes the image file here (in a DataLoader's worker processes when fed by one).
        """
        if self.images is None:
            n = len(self)
            i = int(i)
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of range for a dataset of {n} items")
            raw = _io.decode_image(self.image_files[i], self._header).to(self.label_loc.device)
        else:
            raw = self.images[i]
        image = raw.to(torch.float32) / 255.0
        if self.labels is None:
            return image
        return image, (self.labels[i] - self.label_loc) / self.label_scale

    def _all_images_uint8(self) -> torch.Tensor:
        """All images as a CPU ``uint8`` tensor ``[N, C, H, W]`` (decoded now for a streamed dataset)."""
        if self.images is None:
            return _io.read_images(self.image_files, header=self._header)
        return self.images.cpu()

    def to_memory(self, progress: bool = False) -> ConceptImageDataset:
        """This dataset with every image decoded into memory (``self`` if it is not streamed).

        :param progress: show a progress bar while decoding.
        """
        if self.images is not None:
            return self
        view = self._view(torch.arange(len(self)))
        with phase(f"decoding {len(self)} images") as ph:
            view.images = _io.read_images(self.image_files, progress=progress, header=self._header)
            ph.note = f"{view.images.numel() / 2**20:.0f} MiB in memory"
        return view

    def heldout_split(self, test_fraction: float = 0.1, seed: int = 0) -> tuple[ConceptImageDataset, ConceptImageDataset | None, HeldOutSplit]:
        """Training and held-out parts: the CSV's ``split`` column if there was one, else a seeded
        random ``test_fraction`` of the rows (:func:`~pyro_causalvae.datasets.split.heldout_split`).

        :returns: ``(train, test, split)``; ``test`` is ``None`` when no row is held out. Both keep this
            dataset's normalisation and graph.
        """
        split = heldout_split(len(self), self.row_splits, test_fraction, seed)
        test = self.subset(split.test_rows) if split.test_rows.numel() else None
        return self.subset(split.train_rows), test, split

    def _index(self, indices) -> torch.Tensor:
        n = len(self)
        if isinstance(indices, slice):
            return torch.arange(n)[indices]
        idx = torch.as_tensor(np.asarray(indices) if not torch.is_tensor(indices) else indices)
        if idx.dtype == torch.bool:
            if idx.shape != (n,):
                raise ValueError(f"a boolean mask must have shape [{n}], got {list(idx.shape)}")
            return idx.nonzero().flatten()
        if idx.numel() == 0:
            return torch.zeros(0, dtype=torch.long)
        if idx.is_floating_point() or idx.is_complex() or idx.dim() > 1:
            raise ValueError(f"indices must be a 1-d sequence of integers, a boolean mask or a slice, got {indices!r}")
        idx = idx.reshape(-1).to(torch.long)
        if ((idx < -n) | (idx >= n)).any():
            bad = int(idx[(idx < -n) | (idx >= n)][0])
            raise ValueError(f"index {bad} is out of range for a dataset of {n} items")
        return torch.where(idx < 0, idx + n, idx)

    def subset(self, indices) -> ConceptImageDataset:
        """A new :class:`ConceptImageDataset` with the rows ``indices`` (integers, a boolean mask or a slice).

        The concepts, graph, name, ``label_loc`` and ``label_scale`` are kept (so normalised labels agree
        with the parent's). The result is a plain :class:`ConceptImageDataset` even for a subclass, whose
        extra per-dataset state (e.g. a simulator) does not follow the rows.
        """
        idx = self._index(indices)
        if idx.numel() == 0:
            raise ValueError("subset needs at least one index")
        if self.images is None or self.image_files is not None or self.row_splits is not None:
            return self._view(idx)
        return ConceptImageDataset(
            self.images[idx.to(self.images.device)],
            None if self.labels is None else self.labels[idx.to(self.labels.device)],
            self.concepts,
            self.graph,
            label_loc=self.label_loc,
            label_scale=self.label_scale,
            name=self.name,
        )

    def _view(self, idx: torch.Tensor) -> ConceptImageDataset:
        """The rows ``idx`` of a folder dataset as a plain :class:`ConceptImageDataset` (files, labels,
        split marks and resident images follow the rows; nothing is decoded)."""
        view = ConceptImageDataset.__new__(ConceptImageDataset)
        view.__dict__.update({k: v for k, v in self.__dict__.items() if k in _VIEW_FIELDS})
        rows = idx.tolist()
        if self.images is not None:
            view.images = self.images[idx.to(self.images.device)]
        else:
            view.images = None
        if self.labels is not None:
            view.labels = self.labels[idx.to(self.labels.device)]
        if self.image_files is not None:
            view.image_files = [self.image_files[j] for j in rows]
        if self.row_splits is not None:
            view.row_splits = [self.row_splits[j] for j in rows]
        return view

    def to(self, device) -> ConceptImageDataset:
        """Move images, labels, ``label_loc`` and ``label_scale`` to ``device`` in place; returns ``self``.

        (Images that are decoded lazily, ``images is None``, are moved to the labels' device when read.)
        """
        if self.images is not None:
            self.images = self.images.to(device)
        if self.labels is not None:
            self.labels = self.labels.to(device)
        self.label_loc = self.label_loc.to(device)
        self.label_scale = self.label_scale.to(device)
        return self

    def __repr__(self) -> str:
        graph = "None" if self.graph is None else f"{self.graph.number_of_edges()} edges"
        labelled = "labelled" if self.labels is not None else "unlabelled"
        if self.labels is not None and bool(torch.isnan(self.labels).any()):
            labelled = f"labelled ({int(torch.isnan(self.labels).sum())} labels missing)"
        where = ", streamed from disk" if self.images is None else ""
        return (
            f"{type(self).__name__}(name={self.name!r}, n={len(self)}, image_shape={self.image_shape}, "
            f"concepts={list(self.concepts)}, {labelled}, graph={graph}{where})"
        )

    # ------------------------------------------------------------------------------------------------
    # saving / loading
    # ------------------------------------------------------------------------------------------------
    def save(self, path: PathLike, *, compress: bool = False) -> Path:
        """Save to one ``.npz`` file at ``path`` (used exactly as given), atomically.

        The file holds ``images`` (uint8), ``labels`` (float32, if any), ``label_loc``, ``label_scale`` and
        a JSON ``meta`` string (concepts, graph edges, name, format version); it loads with
        ``numpy.load(path, allow_pickle=False)``. The data are written to a temporary file in the same
        directory, flushed and fsync'ed, then renamed over ``path``: an interrupted save leaves any
        existing file at ``path`` intact. ``compress=True`` uses ``numpy.savez_compressed``.
        """
        return _io.save_npz(self, path, compress=compress)

    @classmethod
    def load(cls, path: PathLike) -> ConceptImageDataset:
        """Load a file written by :meth:`save`, never unpickling anything.

        Always returns a plain :class:`ConceptImageDataset` (a saved ``Pendulum``, ``Flow`` or ``CelebA``
        loads back as its images, labels, concepts, graph and normalisation, without simulator state).

        :raises FileNotFoundError: if ``path`` does not exist.
        :raises ValueError: if the file would need unpickling, lacks or has unexpected keys, or has an
            unknown format version.
        """
        return _io.load_npz(path)

    def to_folder(self, path: PathLike, *, overwrite: bool = False) -> Path:
        """Export as a folder: zero-padded PNG files, ``labels.csv``, ``graph.json`` and ``meta.json``.

        ``labels.csv`` has a ``filename`` column and one column per concept (values written with enough
        digits to round-trip float32); ``graph.json`` holds the concepts and edges (``null`` for no graph);
        ``meta.json`` the name, ``label_loc`` and ``label_scale``. The folder is written to a temporary
        sibling and renamed into place. An existing non-empty folder is only replaced with
        ``overwrite=True``, and then only after the new one is complete.

        ``ConceptImageDataset(path, path / "labels.csv", graph=...)`` reads it back with identical images
        and labels; :meth:`from_folder` also restores the graph, name and normalisation.

        :raises FileExistsError: if ``path`` is a non-empty folder and ``overwrite`` is false, or a file.
        """
        return _io.export_folder(self, path, overwrite=overwrite)

    @classmethod
    def from_folder(cls, path: PathLike) -> ConceptImageDataset:
        """Read back a folder written by :meth:`to_folder` (graph, name and normalisation included)."""
        return _io.import_folder(path)


def _labels_tensor(labels) -> torch.Tensor:
    """Tensor/array labels as a float32 tensor ``[N, K]`` (not yet checked for finiteness)."""
    if torch.is_tensor(labels):
        t = labels.detach()
    else:
        try:
            arr = np.asarray(labels)
        except (TypeError, ValueError) as err:
            raise ValueError(f"labels must be a tensor, an array, a CSV path or None, got {type(labels).__name__}") from err
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise ValueError(f"labels must be numeric, got an array of dtype {arr.dtype}")
        t = torch.as_tensor(np.ascontiguousarray(arr))
    if t.is_complex():
        raise ValueError("labels must be real numbers, got a complex tensor")
    if t.dim() != 2:
        raise ValueError(f"labels must be 2-d [N, K], got shape {list(t.shape)}")
    return t.to(device="cpu", dtype=torch.float32).clone()


def resident_bytes(n: int, shape: Sequence[int]) -> int:
    """Bytes of ``n`` decoded uint8 images of ``shape`` ``(C, H, W)``."""
    c, h, w = shape
    return int(n) * int(c) * int(h) * int(w)


def _normalisation(labels: torch.Tensor | None, k: int, concepts: Sequence[str], label_loc, label_scale):
    """``(loc [K], scale [K])``: given, or from the range of the labels present (NaN ignored)."""
    present = labels is not None and labels.shape[0] > 0
    if present:
        lo, hi = _nan_range(labels)
    if label_loc is not None:
        loc = _as_vector(label_loc, k, "label_loc")
    elif present:
        loc = lo / 2 + hi / 2  # halves first: (min + max) would overflow float32 for labels near its largest value
    else:
        loc = torch.zeros(k)
    if label_scale is not None:
        scale = _as_vector(label_scale, k, "label_scale")
        if not (scale > 0).all():
            bad = int((scale <= 0).nonzero()[0, 0])
            raise ValueError(f"label_scale must be > 0, got {float(scale[bad])} for concept {concepts[bad]!r}")
        check_scale(scale, "label_scale", concepts)
    elif present:
        scale = hi / 2 - lo / 2
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    else:
        scale = torch.ones(k)
    if labels is not None:
        _check_normalised(labels, loc, scale, concepts)
    return loc, scale


def _nan_range(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column min and max of ``[N, K]`` labels, ignoring NaN (missing labels)."""
    nan = torch.isnan(labels)
    return (labels.masked_fill(nan, float("inf")).amin(0), labels.masked_fill(nan, float("-inf")).amax(0))


def _check_label_columns(labels: torch.Tensor, concepts: Sequence[str]) -> None:
    """NaN is a missing label; +-inf is refused, and so is a column with no label at all."""
    bad = torch.isinf(labels)
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"labels of concept {concepts[col]!r} (column {col}) are not finite: {float(labels[row, col])} "
            f"in row {row} ({int(bad[:, col].sum())} bad entries in that column; NaN marks a missing label)"
        )
    if labels.shape[0]:
        empty = [c for c, e in zip(concepts, torch.isnan(labels).all(0).tolist()) if e]
        if empty:
            raise ValueError(f"concept(s) {empty} have no label at all (every entry NaN); leave them out or label some images")


def _check_normalised(labels: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, concepts: Sequence[str]) -> None:
    """Raise ``ValueError`` if ``(labels - loc) / scale`` overflows float32 (the model would see inf)."""
    bad = torch.isinf((labels - loc) / scale)
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"labels of concept {concepts[col]!r} (column {col}) overflow float32 when normalised: "
            f"({float(labels[row, col])} - label_loc {float(loc[col])}) / label_scale {float(scale[col])} in row {row}; "
            "rescale the labels or pass label_loc / label_scale"
        )


def _images_tensor(images) -> torch.Tensor:
    """Tensor/array images as a uint8 tensor ``[N, C, H, W]``, validated."""
    if torch.is_tensor(images):
        t = images.detach() if images.requires_grad else images
    elif isinstance(images, np.ndarray):
        if images.dtype == object:
            raise ValueError("images must be a numeric array, got an object array")
        if images.dtype.kind not in "biufc":
            raise ValueError(f"images must be a numeric array, got an array of dtype {images.dtype}")
        t = torch.as_tensor(np.ascontiguousarray(images))
    else:
        raise ValueError(
            "images must be a uint8 or float tensor / numpy array [N, C, H, W] or a path to a folder of "
            f"images, got {type(images).__name__}"
        )
    if t.dim() != 4:
        raise ValueError(f"images must be 4-d [N, C, H, W], got shape {list(t.shape)}")
    if t.shape[1] not in (1, 3):
        raise ValueError(
            f"images must have 1 (grayscale) or 3 (RGB) channels in dim 1 ([N, C, H, W]), got {t.shape[1]} "
            f"(shape {list(t.shape)})"
        )
    if t.shape[0] == 0:
        raise ValueError("images is empty: there are no images (N = 0)")
    if t.shape[2] == 0 or t.shape[3] == 0:
        raise ValueError(f"images have zero height or width: shape {list(t.shape)}")
    if t.dtype == torch.uint8:
        return t
    if not t.is_floating_point():
        raise ValueError(f"images must be uint8 or floating point with values in [0, 1], got dtype {t.dtype}")
    check_finite(t, "images")
    lo, hi = float(t.min()), float(t.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"float images must have values in [0, 1], got values in [{lo}, {hi}] "
            "(pass uint8 images for the 0..255 range)"
        )
    work = torch.float64 if t.dtype == torch.float64 else torch.float32
    return torch.round(t.to(dtype=work) * 255.0).to(torch.uint8)
