"""CelebA concept subsets, read lazily from a local copy of CelebA in its own file layout.

Nothing is downloaded. The folder must hold (either ``root`` itself or ``root/celeba``)::

    img_align_celeba/000001.jpg ...   aligned & cropped 178x218 JPEG images
    list_attr_celeba.txt              line 1: image count; line 2: the 40 attribute names;
                                      then "filename v1 ... v40" with values -1 / 1
    list_eval_partition.txt           "filename 0|1|2" (train / valid / test); not needed for split="all"

``torchvision.datasets.CelebA`` is deliberately not used: it verifies the md5 of the distributed archives,
so a small local folder (as in the tests) could not pass, and the code path users run would differ from the
one the tests run.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import UnidentifiedImageError
from torchvision.transforms import v2

from .._validation import check_concepts, check_graph
from .base import ConceptImageDataset
from .io import open_image

__all__ = ["CelebA", "CELEBA_ATTRIBUTES", "CELEBA_SUBSETS"]

#: The 40 binary attributes of CelebA, in the order of ``list_attr_celeba.txt``.
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby",
    "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male",
    "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose",
    "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair",
    "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip

#: Named concept subsets: ``name -> (concepts, graph edges)``.
#:
#: - ``smile``: the paper's CelebA (Smile) subset with the edges of its figure.
#: - ``beard``: the paper's CelebA (Beard) subset. The paper does not publish its graph; the edges here are
#:   this project's assumption: age (``Young``) and sex (``Male``) are causes of baldness and of beard
#:   growth, and not the other way round.
CELEBA_SUBSETS: dict[str, tuple[tuple[str, ...], tuple[tuple[str, str], ...]]] = {
    "smile": (
        ("Male", "Smiling", "Narrow_Eyes", "Mouth_Slightly_Open"),
        (
            ("Male", "Narrow_Eyes"),
            ("Smiling", "Narrow_Eyes"),
            ("Smiling", "Mouth_Slightly_Open"),
            ("Mouth_Slightly_Open", "Narrow_Eyes"),
        ),
    ),
    "beard": (
        ("Young", "Male", "Bald", "No_Beard"),
        (("Young", "Bald"), ("Male", "Bald"), ("Male", "No_Beard"), ("Young", "No_Beard")),
    ),
}

_SPLITS = {"train": 0, "valid": 1, "test": 2, "all": None}
_IMG_DIR = "img_align_celeba"
_ATTR_FILE = "list_attr_celeba.txt"
_PART_FILE = "list_eval_partition.txt"
_CROP = 178
_DEFAULT_GRAPH = object()


def _layout(base: Path) -> str:
    # one line: the command line prints an error as one line
    return (
        "expected CelebA's own layout (the 'Align&Cropped Images' download), in root or in root/celeba: "
        f"{os.fspath(base / _IMG_DIR)}/000001.jpg ... (the aligned 178x218 JPEG images), "
        f"{os.fspath(base / _ATTR_FILE)} (attribute labels), "
        f"{os.fspath(base / _PART_FILE)} (train/valid/test partition; not needed for split='all')"
    )


def _resolve_root(root) -> Path:
    r = Path(os.fspath(root)).expanduser()
    if not r.is_dir():
        raise FileNotFoundError(f"CelebA folder not found: {os.fspath(r)!r}; {_layout(r)}")
    for base in (r, r / "celeba"):
        if (base / _IMG_DIR).is_dir() or (base / _ATTR_FILE).is_file():
            return base
    return r


def _parse_attr_file(path: Path, concepts: Sequence[str]) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    """Files, ``{-1, 1}`` values ``[N, K]`` of ``concepts`` and all attribute names of ``list_attr_celeba.txt``."""
    where = f"CelebA attribute file {os.fspath(path)!r}"
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if len(lines) < 2:
        raise ValueError(f"{where} is too short: expected a count line and a line of attribute names")
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise ValueError(f"{where}: line 1 must be the image count, got {lines[0][:60]!r}") from None
    names = tuple(lines[1].split())
    unknown = [c for c in concepts if c not in names]
    if unknown:
        raise ValueError(f"unknown CelebA attribute(s) {unknown}; valid attributes are {list(names)}")
    cols = [names.index(c) + 1 for c in concepts]
    files: list[str] = []
    values = np.empty((max(count, 0), len(concepts)), dtype=np.int8)
    rows = [(i + 3, ln) for i, ln in enumerate(lines[2:]) if ln.strip()]
    if len(rows) != count:
        raise ValueError(f"{where}: line 1 says {count} images but {len(rows)} rows follow (truncated file?)")
    for r, (line_no, ln) in enumerate(rows):
        tok = ln.split()
        if len(tok) != len(names) + 1:
            raise ValueError(
                f"{where}: line {line_no} has {len(tok) - 1} values, expected {len(names)} after the file name"
            )
        files.append(tok[0])
        for k, j in enumerate(cols):
            v = tok[j]
            if v == "1":
                values[r, k] = 1
            elif v == "-1":
                values[r, k] = -1
            else:
                raise ValueError(
                    f"{where}: line {line_no}: attribute {concepts[k]!r} is {v!r}, expected -1 or 1"
                )
    return files, values, names


def _parse_partition(path: Path) -> dict[str, int]:
    where = f"CelebA partition file {os.fspath(path)!r}"
    out: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, ln in enumerate(f, start=1):
            tok = ln.split()
            if not tok:
                continue
            if len(tok) != 2 or tok[1] not in ("0", "1", "2"):
                raise ValueError(f"{where}: line {line_no} must be 'filename 0|1|2', got {ln.strip()[:60]!r}")
            out[tok[0]] = int(tok[1])
    return out


class CelebA(ConceptImageDataset):
    """A CelebA concept subset, decoded lazily from a local folder in CelebA's own layout.

    :param root: the CelebA folder (holding ``img_align_celeba/``, ``list_attr_celeba.txt``,
        ``list_eval_partition.txt``) or a parent folder holding it as ``celeba/``.
    :param subset: ``"smile"`` (Male, Smiling, Narrow_Eyes, Mouth_Slightly_Open; graph from the paper's
        figure), ``"beard"`` (Young, Male, Bald, No_Beard; the paper does not publish this graph: this
        project assumes Young -> Bald, Male -> Bald, Male -> No_Beard, Young -> No_Beard, because age and
        sex cause baldness and beard growth), or a list of attribute names (graph ``None`` unless given).
    :param split: ``"train"``, ``"valid"``, ``"test"`` (CelebA's official partition) or ``"all"``.
    :param size: side of the square output images (64 or 128 usually; any int >= 16).
    :param transform: optional callable applied to each float image ``[3, size, size]`` in ``__getitem__``.
    :param preload: decode every image of the split into a uint8 tensor in memory (small subsets only).
    :param graph: keyword only; overrides the subset's graph (``None``: no graph).

    Each item is ``(image, label)``: ``image`` float32 ``[3, size, size]`` in ``[0, 1]`` (the 178x218 image
    center-cropped to 178x178, then resized with antialiasing; decoded with PIL, because torchvision 0.29
    deprecates its own image decoders), ``label`` float32 ``[K]`` normalised to
    ``{-1, 1}``. ``labels`` holds the attributes in natural units ``{0, 1}`` (``label_loc = label_scale =
    0.5``). ``files`` lists the image file names of the split, in the order of ``list_attr_celeba.txt``.
    ``images`` is ``None`` unless ``preload=True``.

    At construction every listed file of the split is checked to exist (one directory listing, no
    decoding). :meth:`subset` returns a lazy :class:`CelebA` view; :meth:`save` and :meth:`to_folder`
    decode all images of the dataset (at ``size``) and write a plain :class:`ConceptImageDataset`.

    :raises FileNotFoundError: for a missing folder or file (the expected layout is listed) or a listed
        image that is missing (named).
    :raises ValueError: for an unknown subset, attribute (valid ones listed) or split, a bad size, or
        malformed label files.
    """

    def __init__(
        self,
        root,
        subset: str | Sequence[str] = "smile",
        split: str = "train",
        size: int = 64,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        preload: bool = False,
        *,
        graph=_DEFAULT_GRAPH,
    ) -> None:
        # --- arguments -----------------------------------------------------------------------------
        if isinstance(subset, str):
            if subset not in CELEBA_SUBSETS:
                raise ValueError(
                    f"unknown CelebA subset {subset!r}; use one of {sorted(CELEBA_SUBSETS)} or a list of "
                    "attribute names"
                )
            concepts, default_edges = CELEBA_SUBSETS[subset]
            name = f"celeba-{subset}"
        else:
            concepts, default_edges, name = check_concepts(subset), None, "celeba"
        unknown = [c for c in concepts if c not in CELEBA_ATTRIBUTES]
        if unknown:
            raise ValueError(f"unknown CelebA attribute(s) {unknown}; valid attributes are {list(CELEBA_ATTRIBUTES)}")
        if split not in _SPLITS:
            raise ValueError(f"unknown CelebA split {split!r}; use one of {list(_SPLITS)}")
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16:
            raise ValueError(f"size must be an integer >= 16 (64 or 128 usually), got {size!r}")
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable or None, got {type(transform).__name__}")
        edges = default_edges if graph is _DEFAULT_GRAPH else graph
        checked_graph = check_graph(edges, concepts)

        # --- files ---------------------------------------------------------------------------------
        base = _resolve_root(root)
        img_dir, attr_path, part_path = base / _IMG_DIR, base / _ATTR_FILE, base / _PART_FILE
        missing = [p for p in (img_dir,) if not p.is_dir()] + [p for p in (attr_path,) if not p.is_file()]
        if split != "all" and not part_path.is_file():
            missing.append(part_path)
        if missing:
            raise FileNotFoundError(
                f"CelebA files missing: {[os.fspath(p) for p in missing]}; {_layout(base)}"
            )
        if not any(img_dir.glob("*.jpg")) and (img_dir / _IMG_DIR).is_dir():
            img_dir = img_dir / _IMG_DIR  # archives that unpack to img_align_celeba/img_align_celeba/

        files, values, _ = _parse_attr_file(attr_path, concepts)
        if split != "all":
            part = _parse_partition(part_path)
            code = _SPLITS[split]
            keep = [i for i, f in enumerate(files) if part.get(f) == code]
            files = [files[i] for i in keep]
            values = values[keep]
        if not files:
            raise ValueError(f"CelebA split {split!r} has no images in {os.fspath(attr_path)!r}")
        present = set(os.listdir(img_dir))
        absent = [f for f in files if f not in present]
        if absent:
            shown = ", ".join(repr(f) for f in absent[:5]) + (", ..." if len(absent) > 5 else "")
            raise FileNotFoundError(
                f"{len(absent)} CelebA image(s) listed in {_ATTR_FILE} for split {split!r} are missing from "
                f"{os.fspath(img_dir)!r}: {shown}"
            )

        # --- state ---------------------------------------------------------------------------------
        self.root: Path = base
        self.image_dir: Path = img_dir
        self.subset_name: str = subset if isinstance(subset, str) else "custom"
        self.split: str = split
        self.size: int = int(size)
        self.transform = transform
        self.files: list[str] = files
        self.labels: torch.Tensor = torch.from_numpy((values.astype(np.float32) + 1.0) / 2.0)
        self.concepts: tuple[str, ...] = tuple(concepts)
        self.graph = checked_graph
        self.label_loc: torch.Tensor = torch.full((len(concepts),), 0.5, dtype=torch.float32)
        self.label_scale: torch.Tensor = torch.full((len(concepts),), 0.5, dtype=torch.float32)
        self.name: str = name
        self._resize = v2.Compose([v2.CenterCrop(_CROP), v2.Resize((self.size, self.size), antialias=True)])
        self.images: torch.Tensor | None = None
        if preload:
            self.images = self._decode_all()

    # ------------------------------------------------------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)

    @property
    def preloaded(self) -> bool:
        """Whether the images are held in memory."""
        return self.images is not None

    def __len__(self) -> int:
        return len(self.files)

    def _decode(self, i: int) -> torch.Tensor:
        """Image ``i`` as uint8 ``[3, size, size]`` (decoded, center-cropped 178x178, resized)."""
        path = self.image_dir / self.files[i]
        if not path.is_file():
            raise FileNotFoundError(f"CelebA image missing: {os.fspath(path)!r}")
        try:
            with open_image(path) as im:
                arr = np.array(im.convert("RGB"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot decode CelebA image {os.fspath(path)!r}: {err}") from err
        return self._resize(torch.from_numpy(arr).permute(2, 0, 1))

    def _decode_all(self) -> torch.Tensor:
        out = torch.empty((len(self), 3, self.size, self.size), dtype=torch.uint8)
        for i in range(len(self)):
            out[i] = self._decode(i)
        return out

    def _all_images_uint8(self) -> torch.Tensor:
        return self.images.cpu() if self.images is not None else self._decode_all()

    def __getitem__(self, i):
        """``(image float32 [3, size, size] in [0, 1], labels float32 [K] in {-1, 1})``."""
        n = len(self)
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of range for a dataset of {n} items")
        i %= n
        device = self.label_loc.device
        img = self.images[i] if self.images is not None else self._decode(i).to(device)
        image = img.to(torch.float32) / 255.0
        if self.transform is not None:
            image = self.transform(image)
        return image, (self.labels[i] - self.label_loc) / self.label_scale

    def subset(self, indices) -> CelebA:
        """A lazy :class:`CelebA` view of the rows ``indices`` (integers, a boolean mask or a slice)."""
        idx = self._index(indices)
        if idx.numel() == 0:
            raise ValueError("subset needs at least one index")
        view = copy.copy(self)
        view.files = [self.files[int(j)] for j in idx]
        view.labels = self.labels[idx.to(self.labels.device)]
        if self.images is not None:
            view.images = self.images[idx.to(self.images.device)]
        return view

    def __repr__(self) -> str:
        graph = "None" if self.graph is None else f"{self.graph.number_of_edges()} edges"
        return (
            f"CelebA(root={os.fspath(self.root)!r}, subset={self.subset_name!r}, split={self.split!r}, "
            f"n={len(self)}, image_shape={self.image_shape}, concepts={list(self.concepts)}, graph={graph}, "
            f"preloaded={self.preloaded})"
        )
