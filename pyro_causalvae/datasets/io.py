"""Reading image files; atomic saving and safe loading of datasets.

- :func:`read_labels_csv` -- label CSV files (:mod:`pyro_causalvae.datasets.table`, re-exported here).
- :func:`open_image` -- the one place where an image file is opened: only PNG, JPEG, BMP, TIFF and WebP
  are decoded (Pillow picks a decoder from the content, so without this a ``.png`` holding PostScript
  would be handed to Ghostscript), and a file that declares more than :data:`MAX_IMAGE_PIXELS` pixels is
  refused before it is decoded.
- :func:`list_image_files` -- the image files of a folder, or those a CSV's image column names (paths
  leaving the folder, and symbolic links to places outside it, refused unless followed).
- :func:`check_image_files` -- every file's header (existence, format, size, channels) checked before
  anything is decoded; one line names the first problem and how many rows share it.
- :func:`decode_image`, :func:`read_images` -- decoding to uint8 tensors (the decoded size of a whole
  folder checked against the memory budget first).
- :func:`save_npz` / :func:`load_npz` -- one ``.npz`` file, written atomically (temporary file, fsync,
  ``os.replace``) and read with ``allow_pickle=False`` (a file that would need unpickling is refused).
- :func:`export_folder` / :func:`import_folder` -- PNG files + ``labels.csv`` + ``graph.json`` +
  ``meta.json``, written to a temporary sibling folder and renamed into place.

The functions that build datasets import :class:`~pyro_causalvae.datasets.base.ConceptImageDataset` lazily
(``base`` imports this module).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .._limits import check_memory, fmt_bytes
from .table import LabelTable, _existing_file, read_labels_csv

if TYPE_CHECKING:  # pragma: no cover
    from .base import ConceptImageDataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGE_FORMATS",
    "MAX_IMAGE_PIXELS",
    "open_image",
    "FORMAT",
    "FORMAT_VERSION",
    "LabelTable",
    "read_labels_csv",
    "ImageHeader",
    "list_image_files",
    "check_image_files",
    "decode_image",
    "read_images",
    "save_npz",
    "load_npz",
    "export_folder",
    "import_folder",
]

#: File name endings (lower case) that :func:`list_image_files` picks up in a folder.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: The only Pillow formats :func:`open_image` decodes (whatever a file's name says).
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
#: Most pixels (width x height) one image file may declare (8192 x 8192); larger ones are refused unread.
MAX_IMAGE_PIXELS = 8192 * 8192
#: ``format`` field of the metadata in files written by :func:`save_npz`.
FORMAT = "pyro_causalvae.ConceptImageDataset"
#: Version of the ``.npz`` layout written by :func:`save_npz`; :func:`load_npz` reads only this one.
FORMAT_VERSION = 1

_FILENAME = "filename"
_NPZ_REQUIRED = frozenset({"images", "label_loc", "label_scale", "meta"})
_NPZ_OPTIONAL = frozenset({"labels"})
_GRAY_MODES = frozenset({"1", "L", "LA"})
_UNSUPPORTED_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


_UMASK = _umask()


# ----------------------------------------------------------------------------------------------------
# image folders
# ----------------------------------------------------------------------------------------------------
def open_image(path) -> Image.Image:
    """Open one image file for reading: the one function of this package that calls ``Image.open``.

    Only the formats of :data:`IMAGE_FORMATS` are tried (``Image.open(..., formats=IMAGE_FORMATS)``): a
    file whose content is another format (e.g. PostScript, which Pillow would hand to Ghostscript) is
    refused, whatever its name. Only the header is read here; the caller decodes (``im.convert``...) and
    closes it (use ``with open_image(path) as im:``).

    :raises ValueError: for a missing or unreadable file, another format, or more than
        :data:`MAX_IMAGE_PIXELS` pixels (a decompression bomb: refused before decoding); the file is named.
    """
    f = Path(os.fspath(path))
    try:
        im = Image.open(f, formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as err:
        raise ValueError(f"image file {os.fspath(f)!r} is refused as a decompression bomb: {err}") from err
    except UnidentifiedImageError as err:
        raise ValueError(f"cannot read image file {os.fspath(f)!r}: it is not a {', '.join(IMAGE_FORMATS[:-1])} or "
                         f"{IMAGE_FORMATS[-1]} image (the formats read)") from err
    except OSError as err:
        raise _open_error(f, err) from err
    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS:
        im.close()
        raise ValueError(f"image file {os.fspath(f)!r} declares {w}x{h} pixels, more than the limit of "
                         f"{MAX_IMAGE_PIXELS} pixels per image (a decompression bomb, or an image to shrink first)")
    return im


def _refuse_links_out(root: Path, files: list[Path], follow_symlinks: bool) -> None:
    """Refuse files that resolve (through symbolic links) to a place outside ``root``."""
    if follow_symlinks:
        return
    top = root.resolve()
    for f in files:
        real = f.resolve()
        if not real.is_relative_to(top):
            raise ValueError(f"image file {os.fspath(f)!r} is a symbolic link to {os.fspath(real)!r}, outside the image "
                             f"folder {os.fspath(root)!r}; pass follow_symlinks=True (--follow-symlinks) to read it")


def list_image_files(folder, filenames=None, follow_symlinks: bool = False, *, csv_dir=None) -> list[Path]:
    """The image files of a dataset, in row order (existence is checked by :func:`check_image_files`).

    :param folder: the image folder, or ``None`` when ``filenames`` are given relative to ``csv_dir``.
    :param filenames: names giving the row order, e.g. a CSV's image column: paths relative to ``folder``
        or to ``csv_dir`` (the folder of the CSV file); the first of the two under which the first listed
        file exists is the base of every row (``folder`` when neither). Default: every file of ``folder``
        whose name ends in one of :data:`IMAGE_EXTENSIONS` (any case) and does not start with ``.``,
        sorted by name; sub-folders are not searched.
    :param follow_symlinks: accept files outside the base folder: names (absolute, or with ``..``) and
        symbolic links that lead outside it (all refused by default). Without ``folder``, absolute names in
        ``filenames`` are accepted as they are (a spreadsheet that lists its files by absolute path).
    :raises FileNotFoundError: if ``folder`` does not exist.
    :raises ValueError: if it is not a folder or holds no images, or a name or a symbolic link leads
        outside the base folder (without ``follow_symlinks``).
    """
    root = None if folder is None else Path(os.fspath(folder)).expanduser()
    if root is not None:
        if not root.exists():
            raise FileNotFoundError(f"image folder not found: {os.fspath(root)!r}")
        if not root.is_dir():
            raise ValueError(f"images path {os.fspath(root)!r} is not a folder")
    if filenames is None:
        if root is None:
            raise ValueError("no image folder and no image column: give the folder of the images")
        files = sorted(
            (e for e in root.iterdir() if e.name.lower().endswith(IMAGE_EXTENSIONS) and not e.name.startswith(".")),
            key=lambda e: e.name,
        )
        files = [f for f in files if f.is_file()]
        if not files:
            raise ValueError(
                f"no images in folder {os.fspath(root)!r}: expected files ending in {list(IMAGE_EXTENSIONS)}"
            )
        _refuse_links_out(root, files, follow_symlinks)
        return files
    names = list(filenames)
    bases = [b for b in (root, None if csv_dir is None else Path(os.fspath(csv_dir))) if b is not None]
    if not names or not bases:
        raise ValueError("no images listed" if not names else "relative image file names need the image folder or the CSV's folder")
    base = next((b for b in bases if (b / names[0]).exists()), bases[0])
    files = [Path(n) if Path(n).is_absolute() else base / n for n in names]
    if not follow_symlinks:
        # a spreadsheet that names its files by absolute path, with no image folder given, is read as it is
        checked = [(r, n, f) for r, (n, f) in enumerate(zip(names, files)) if root is not None or not Path(n).is_absolute()]
        inside = (base.resolve(), Path(os.path.normpath(base.absolute())))
        for r, name, f in checked:
            lexical = Path(os.path.normpath(f.absolute()))  # ".." resolved by name; links are checked below
            if not any(lexical.is_relative_to(top) for top in inside):
                raise ValueError(f"image file name {name!r} (row {r}) leads outside the image folder {os.fspath(base)!r}; "
                                 "pass follow_symlinks=True (--follow-symlinks) to read files outside it")
        _refuse_links_out(base, [f for _, _, f in checked], follow_symlinks)
    return files


@dataclass(frozen=True)
class ImageHeader:
    """What the headers of a set of image files say: the common size and the channels to decode to."""

    width: int
    height: int
    channels: int  # 1 if every image is grayscale, else 3

    @property
    def mode(self) -> str:
        """The PIL mode the images are converted to when decoded (``"L"`` or ``"RGB"``)."""
        return "L" if self.channels == 1 else "RGB"

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return (self.channels, self.height, self.width)


_PROBLEMS = {
    "missing": "image files do not exist",
    "folder": "image paths are folders",
    "unreadable": "files are unreadable or refused",
    "depth": "images have 16-bit or float pixels",
    "size": "images have another size",
}


def check_image_files(files, *, progress: bool = False) -> ImageHeader:
    """Check every image file from its header (existence, format, size, channels) before anything is
    decoded: Pillow's ``Image.open`` reads the header without decoding the pixels.

    All files are checked; the error names the first problem (the file and its row) and how many rows
    share it. The size of the images is the most common size among them.

    :param files: the image files, in row order.
    :param progress: show a progress bar.
    :returns: the :class:`ImageHeader` (common size; 1 channel if every image is grayscale, else 3).
    :raises ValueError: for missing or unreadable files, 16-bit / float images, or mixed sizes.
    """
    from tqdm.auto import tqdm

    files = [Path(f) for f in files]
    if not files:
        raise ValueError("no image files to read")
    sizes: list[tuple[int, int] | None] = []
    gray = True
    problems: list[tuple[int, str, str]] = []  # (row, kind, message)
    for r, f in enumerate(tqdm(files, desc="image headers", unit="file", disable=not progress, leave=False)):
        size = None
        if not f.exists():
            problems.append((r, "missing", f"cannot read image file {os.fspath(f)!r} (row {r}): it does not exist"))
        elif f.is_dir():
            problems.append((r, "folder", f"image path {os.fspath(f)!r} (row {r}) is a folder, not a file"))
        else:
            try:
                with open_image(f) as im:
                    size, mode = im.size, im.mode
            except ValueError as err:  # open_image's one line: format, decompression bomb, unreadable
                name = repr(os.fspath(f))  # the row goes right after the file's name
                problems.append((r, "unreadable", str(err).replace(name, f"{name} (row {r})", 1)))
                sizes.append(None)
                continue
            if mode in _UNSUPPORTED_MODES:
                problems.append((r, "depth", f"image file {os.fspath(f)!r} (row {r}) has mode {mode!r} (16-bit or "
                                             "float); only 8-bit images are supported"))
                size = None
            else:
                gray = gray and mode in _GRAY_MODES
        sizes.append(size)
    known = [s for s in sizes if s is not None]
    if known:
        (w, h), n_ref = Counter(known).most_common(1)[0]
        ref = next(r for r, s in enumerate(sizes) if s == (w, h))
        for r, s in enumerate(sizes):
            if s is not None and s != (w, h):
                problems.append((r, "size", f"images have mixed sizes: {os.fspath(files[r])!r} (row {r}) is "
                                            f"{s[0]}x{s[1]} (WxH) but {os.fspath(files[ref])!r} and {n_ref - 1} "
                                            f"other(s) are {w}x{h}; all images must have the same size"))
    if problems:
        raise ValueError(_problem_line(problems, len(files)))
    return ImageHeader(width=w, height=h, channels=1 if gray else 3)


def _problem_line(problems: list[tuple[int, str, str]], n: int) -> str:
    """One line: the first problem (in row order), how many rows share its kind, and the other kinds."""
    problems = sorted(problems)
    _, kind, message = problems[0]
    counts = Counter(k for _, k, _ in problems)
    if n == 1:
        return message
    others = [f"{c} {_PROBLEMS[k]}" for k, c in counts.items() if k != kind]
    return (f"{message} ({counts[kind]} of {n} rows share this problem"
            + (f"; also {', '.join(others)}" if others else "") + ")")


def decode_image(path, header: ImageHeader) -> torch.Tensor:
    """Decode one image file as uint8 ``[C, H, W]`` (converted to ``header.mode``; alpha dropped).

    :raises ValueError: if it cannot be decoded or its size is not the header's.
    """
    f = Path(path)
    try:
        with open_image(f) as im:
            arr = np.array(im.convert(header.mode), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise _open_error(f, err) from err
    if arr.shape[:2] != (header.height, header.width):
        raise ValueError(f"image file {os.fspath(f)!r} is {arr.shape[1]}x{arr.shape[0]} (WxH) but the dataset's images "
                         f"are {header.width}x{header.height} (was it changed after the check?)")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def _open_error(f: Path, err: Exception) -> ValueError:
    return ValueError(f"cannot read image file {os.fspath(f)!r}: {err}")


def read_images(files, *, progress: bool = False, header: ImageHeader | None = None) -> torch.Tensor:
    """Decode image files of one size into a uint8 tensor ``[N, C, H, W]``.

    All headers are checked first (:func:`check_image_files`, unless ``header`` is given), and the memory
    the decoded tensor needs; then the images are decoded. ``C`` is 1 if every image is grayscale (PIL
    mode ``1``, ``L`` or ``LA``), else 3 (converted to RGB; alpha dropped).

    :param progress: show a progress bar while decoding.
    :raises ValueError: for missing or unreadable files or another format than :data:`IMAGE_FORMATS`, an
        image of more than :data:`MAX_IMAGE_PIXELS` pixels, 16-bit / float images, mixed sizes, or images
        whose decoded tensor would not fit in the memory budget (:func:`pyro_causalvae._limits.memory_budget`).
    """
    from tqdm.auto import tqdm

    files = [Path(f) for f in files]
    header = header if header is not None else check_image_files(files, progress=progress)
    c, h, w = header.shape
    check_memory(len(files) * c * h * w, f"decoding {len(files)} images of {w}x{h} pixels ({c} channel(s), uint8)")
    out = torch.empty((len(files), *header.shape), dtype=torch.uint8)
    for i, f in enumerate(tqdm(files, desc="decoding", unit="image", disable=not progress, leave=False)):
        out[i] = decode_image(f, header)
    return out


# ----------------------------------------------------------------------------------------------------
# atomic file helpers
# ----------------------------------------------------------------------------------------------------
def _fsync_dir(d: Path) -> None:
    """Best effort: make a rename in ``d`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _parent_dir(path: Path, what: str) -> Path:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"cannot write {what} {os.fspath(path)!r}: folder {os.fspath(parent)!r} does not exist")
    return parent


def _meta(ds: ConceptImageDataset) -> dict:
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "class": type(ds).__name__,
        "name": ds.name,
        "concepts": list(ds.concepts),
        "edges": None if ds.graph is None else [[str(u), str(v)] for u, v in ds.graph.edges()],
    }


def save_npz(ds: ConceptImageDataset, path, *, compress: bool = False) -> Path:
    """Write ``ds`` to one ``.npz`` file at ``path`` atomically; see :meth:`ConceptImageDataset.save`."""
    path = Path(os.fspath(path))
    parent = _parent_dir(path, "dataset file")
    if path.is_dir():
        raise ValueError(f"cannot save dataset to {os.fspath(path)!r}: it is a folder")
    arrays = {
        "images": ds._all_images_uint8().cpu().numpy(),
        "label_loc": ds.label_loc.detach().cpu().numpy().astype(np.float32),
        "label_scale": ds.label_scale.detach().cpu().numpy().astype(np.float32),
        "meta": np.array(json.dumps(_meta(ds))),
    }
    if ds.labels is not None:
        arrays["labels"] = ds.labels.detach().cpu().numpy().astype(np.float32)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if compress:
                np.savez_compressed(f, **arrays)
            else:
                np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(parent)
    return path


def _refuse_pickle(path: Path, err: Exception) -> ValueError:
    return ValueError(
        f"refusing to unpickle {os.fspath(path)!r}: it holds pickled (object) data, which can run arbitrary "
        f"code when loaded; files written by ConceptImageDataset.save never do ({err})"
    )


def _is_pickle_error(err: Exception) -> bool:
    return "pickle" in str(err).lower()


def _check_npz_sizes(npz, where: str) -> None:
    """Read each member's ``.npy`` header (not its data) and refuse, before anything is allocated, an array
    whose header declares more bytes than the member holds, or arrays that would not fit in memory."""
    total = packed = 0
    for key in npz.files:
        member = key if key in npz.zip.namelist() else f"{key}.npy"
        info = npz.zip.getinfo(member)
        try:
            with npz.zip.open(member) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                else:  # (3, 0): a UTF-8 header, read by numpy's own (private) reader
                    shape, _, dtype = np.lib.format._read_array_header(f, version)
                offset = f.tell()
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"{where}: cannot read the header of array {key!r}: {err}") from err
        if dtype.hasobject:
            continue  # refused as pickled data when read
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if nbytes > info.file_size - offset:
            raise ValueError(f"{where}: array {key!r} declares shape {list(shape)} ({fmt_bytes(nbytes)}) but the file "
                             f"holds {fmt_bytes(max(info.file_size - offset, 0))} for it (truncated or forged)")
        total += nbytes
        packed += info.compress_size
    check_memory(total, f"{where}: loading its arrays ({fmt_bytes(packed)} in the file)")


def load_npz(path) -> ConceptImageDataset:
    """Read a file written by :func:`save_npz` with ``allow_pickle=False``; see :meth:`ConceptImageDataset.load`."""
    from .base import ConceptImageDataset

    path = Path(os.fspath(path))
    if not path.exists():
        raise FileNotFoundError(f"dataset file not found: {os.fspath(path)!r}")
    if path.is_dir():
        raise ValueError(f"dataset path {os.fspath(path)!r} is a folder, expected an .npz file")
    where = f"dataset file {os.fspath(path)!r}"
    try:
        npz = np.load(path, allow_pickle=False)
    except ValueError as err:
        if _is_pickle_error(err):
            raise _refuse_pickle(path, err) from err
        raise ValueError(f"{where} is not a readable .npz file: {err}") from err
    except PermissionError:
        raise
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{where} is not a readable .npz file: {err}") from err
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{where} is a single .npy array, not an .npz archive written by ConceptImageDataset.save")
    with npz:
        keys = set(npz.files)
        missing = sorted(_NPZ_REQUIRED - keys)
        extra = sorted(keys - _NPZ_REQUIRED - _NPZ_OPTIONAL)
        if missing or extra:
            raise ValueError(
                f"{where} is not a ConceptImageDataset file: missing keys {missing}, unexpected keys {extra} "
                f"(expected {sorted(_NPZ_REQUIRED)} and optionally {sorted(_NPZ_OPTIONAL)})"
            )
        _check_npz_sizes(npz, where)
        arrays = {}
        for key in sorted(keys):
            try:
                arrays[key] = npz[key]
            except ValueError as err:
                if _is_pickle_error(err):
                    raise _refuse_pickle(path, err) from err
                raise ValueError(f"{where}: cannot read array {key!r}: {err}") from err
            except (OSError, EOFError, zipfile.BadZipFile) as err:
                raise ValueError(f"{where}: cannot read array {key!r}: {err}") from err
    meta_arr = arrays["meta"]
    if meta_arr.shape != () or meta_arr.dtype.kind != "U":
        raise ValueError(f"{where}: 'meta' must be a JSON string, got dtype {meta_arr.dtype} shape {meta_arr.shape}")
    try:
        meta = json.loads(str(meta_arr))
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: 'meta' is not valid JSON: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{where}: 'meta' does not describe a {FORMAT} file")
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{where} has format version {meta.get('version')!r}; this code reads version {FORMAT_VERSION}"
        )
    for field in ("name", "concepts", "edges"):
        if field not in meta:
            raise ValueError(f"{where}: 'meta' lacks the field {field!r}")
    images = arrays["images"]
    if images.dtype != np.uint8:
        raise ValueError(f"{where}: 'images' must be uint8, got {images.dtype}")
    labels = arrays.get("labels")
    for key in ("labels", "label_loc", "label_scale"):
        a = arrays.get(key)
        if a is not None and a.dtype != np.float32:
            raise ValueError(f"{where}: {key!r} must be float32, got {a.dtype}")
    return ConceptImageDataset(
        torch.from_numpy(images),
        None if labels is None else torch.from_numpy(labels),
        meta["concepts"],
        None if meta["edges"] is None else [tuple(e) for e in meta["edges"]],
        label_loc=torch.from_numpy(arrays["label_loc"]),
        label_scale=torch.from_numpy(arrays["label_scale"]),
        name=meta["name"],
    )


# ----------------------------------------------------------------------------------------------------
# PNG folders
# ----------------------------------------------------------------------------------------------------
def _float_text(x: float) -> str:
    """Exact text of a float32 value: the repr of its (exact) float64 value parses back to the same bits."""
    return repr(float(x))


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def export_folder(ds: ConceptImageDataset, path, *, overwrite: bool = False) -> Path:
    """Write ``ds`` as PNG files + ``labels.csv`` + ``graph.json`` + ``meta.json``; see
    :meth:`ConceptImageDataset.to_folder`. The small text files and the folders are fsync'ed; the PNG
    files are not individually."""
    path = Path(os.fspath(path))
    parent = _parent_dir(path, "dataset folder")
    if path.exists() or path.is_symlink():
        if not path.is_dir() or path.is_symlink():
            raise FileExistsError(f"cannot export dataset to {os.fspath(path)!r}: it exists and is not a folder")
        if any(path.iterdir()) and not overwrite:
            raise FileExistsError(
                f"folder {os.fspath(path)!r} exists and is not empty; pass overwrite=True to replace it"
            )
    if _FILENAME in ds.concepts:
        raise ValueError(f"cannot export a concept named {_FILENAME!r}: labels.csv uses that column for file names")
    images = ds._all_images_uint8().cpu()
    n = int(images.shape[0])
    width = max(5, len(str(n - 1)))
    names = [f"{i:0{width}d}.png" for i in range(n)]
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{path.name}.tmp-"))
    try:
        for name, img in zip(names, images, strict=True):
            arr = img.numpy().transpose(1, 2, 0)
            pil = Image.fromarray(arr[:, :, 0], mode="L") if arr.shape[2] == 1 else Image.fromarray(arr, mode="RGB")
            pil.save(tmp / name, format="PNG")
        labels = None if ds.labels is None else ds.labels.detach().cpu().to(torch.float32).tolist()
        header = [_FILENAME] if labels is None else [_FILENAME, *ds.concepts]
        lines = []
        for i, name in enumerate(names):
            lines.append([name] + ([] if labels is None else [_float_text(v) for v in labels[i]]))
        with open(tmp / "labels.csv", "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            w.writerows(lines)
            f.flush()
            os.fsync(f.fileno())
        edges = None if ds.graph is None else [[str(u), str(v)] for u, v in ds.graph.edges()]
        _write_text(tmp / "graph.json", json.dumps({"concepts": list(ds.concepts), "edges": edges}, indent=1) + "\n")
        meta = {
            "format": FORMAT + ".folder",
            "version": FORMAT_VERSION,
            "name": ds.name,
            "label_loc": [float(v) for v in ds.label_loc.detach().cpu().tolist()],
            "label_scale": [float(v) for v in ds.label_scale.detach().cpu().tolist()],
        }
        _write_text(tmp / "meta.json", json.dumps(meta, indent=1) + "\n")
        os.chmod(tmp, 0o777 & ~_UMASK)
        _fsync_dir(tmp)
        if path.exists():
            backup = Path(tempfile.mkdtemp(dir=parent, prefix=f".{path.name}.old-"))
            os.rmdir(backup)
            os.rename(path, backup)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(backup, path)
                raise
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(parent)
    return path


def import_folder(path) -> ConceptImageDataset:
    """Read a folder written by :func:`export_folder` (images, labels, graph, name, normalisation)."""
    from .base import ConceptImageDataset

    root = Path(os.fspath(path))
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {os.fspath(root)!r}")
    csv_path = _existing_file(root / "labels.csv", "labels.csv of the dataset folder")
    graph_path = _existing_file(root / "graph.json", "graph.json of the dataset folder")
    try:
        graph_info = json.loads(graph_path.read_text(encoding="utf-8"))
        meta_path = root / "meta.json"
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
    except json.JSONDecodeError as err:
        raise ValueError(f"dataset folder {os.fspath(root)!r}: invalid JSON: {err}") from err
    if not isinstance(graph_info, dict) or "concepts" not in graph_info or "edges" not in graph_info:
        raise ValueError(f"{os.fspath(graph_path)!r} must hold an object with 'concepts' and 'edges'")
    if not isinstance(meta, dict):
        raise ValueError(f"{os.fspath(meta_path)!r} must hold a JSON object, got {type(meta).__name__}")
    concepts = graph_info["concepts"]
    raw_edges = graph_info["edges"]
    if raw_edges is not None and not (
        isinstance(raw_edges, list) and all(isinstance(e, list) and len(e) == 2 for e in raw_edges)
    ):
        raise ValueError(f"{os.fspath(graph_path)!r}: 'edges' must be null or a list of [parent, child] pairs, got {raw_edges!r}")
    edges = None if raw_edges is None else [tuple(e) for e in raw_edges]
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), [])
    labelled = any(h.strip() != _FILENAME for h in header)
    kwargs = {
        "label_loc": meta.get("label_loc"),
        "label_scale": meta.get("label_scale"),
        "name": meta.get("name", "custom"),
    }
    if labelled:
        return ConceptImageDataset(root, csv_path, concepts, edges, **kwargs)
    return ConceptImageDataset(root, None, concepts, edges, **kwargs)
