"""Label tables: a CSV file of concept labels, in the layouts people actually keep them.

:func:`read_labels_csv` reads one CSV file and returns a :class:`LabelTable`:

- the delimiter is a comma, a semicolon or a tab (found from the header line); a UTF-8 byte-order mark,
  Windows line ends (CRLF) and cp1252 text (Excel's "CSV" on Windows) are accepted; with semicolons, a
  decimal comma (``1,5``) is read as ``1.5``;
- the first line is the header. The **image column** (optional) is found by name (``file``,
  ``filename``, ``path``, ``image`` and a few variants, any case; see :data:`IMAGE_COLUMN_NAMES`) or
  given as ``image_column``. A column named ``split`` (any case) marks held-out rows (see
  :data:`SPLIT_VALUES`);
- the **concept columns** are every other numeric column, in file order, or the ``concepts`` given.
  Columns of text (no cell is a number: notes, ids) are ignored and listed in ``LabelTable.ignored``;
- blank cells and ``nan``, ``NA``, ``N/A``, ``null``, ``none`` (any case) are **missing labels** (NaN).
  A concept column with no label at all is refused; ``inf`` is refused.

Every error names the file, the column and the first bad row, and says how many rows share the problem.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["IMAGE_COLUMN_NAMES", "MISSING_VALUES", "SPLIT_VALUES", "LabelTable", "read_labels_csv"]

#: Header names (compared in lower case) taken as the column of image file names.
IMAGE_COLUMN_NAMES = ("file", "filename", "file_name", "filepath", "file_path", "path", "image", "image_path",
                      "image_file", "img")
#: Cells (compared in lower case, after stripping spaces) that mark a missing label.
MISSING_VALUES = frozenset({"", "nan", "na", "n/a", "null", "none"})
#: Values of a ``split`` column (lower case): ``train`` rows are trained on; the others are held out.
SPLIT_VALUES = {"train": "train", "training": "train", "test": "test", "testing": "test", "val": "test",
                "valid": "test", "validation": "test", "holdout": "test", "heldout": "test", "held-out": "test"}
_SPLIT_COLUMN = "split"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class LabelTable:
    """A parsed label CSV.

    :ivar concepts: the ``K`` concept column names, in order.
    :ivar labels: float32 ``[N, K]`` in natural units; NaN where a label is missing.
    :ivar filenames: the ``N`` image file names as written in the image column, or ``None`` without one.
    :ivar split: ``"train"`` / ``"test"`` per row from a ``split`` column, or ``None`` without one.
    :ivar path: the CSV file, resolved to an absolute path.
    :ivar sha256: hex digest of the file's bytes (a run records it, to notice a changed file).
    :ivar image_column: the name of the image column, or ``None``.
    :ivar ignored: text columns that were not used.
    """

    concepts: tuple[str, ...]
    labels: torch.Tensor
    filenames: list[str] | None
    split: list[str] | None = None
    path: Path | None = None
    sha256: str | None = None
    image_column: str | None = None
    ignored: tuple[str, ...] = field(default_factory=tuple)

    def missing_counts(self) -> dict[str, int]:
        """Missing labels per concept: ``{concept: count}``."""
        return dict(zip(self.concepts, torch.isnan(self.labels).sum(0).tolist(), strict=True))


def _existing_file(path, what: str) -> Path:
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} not found: {os.fspath(p)!r}")
    if p.is_dir():
        raise ValueError(f"{what} {os.fspath(p)!r} is a folder, expected a file")
    return p


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        try:
            return raw.decode("cp1252")
        except UnicodeDecodeError:
            raise ValueError(f"{where} is not UTF-8 text ({err}); save it as UTF-8") from None


def _delimiter(first_line: str) -> str:
    """The delimiter of a header line: the most frequent of comma, semicolon, tab (comma on a tie)."""
    counts = {d: 0 for d in (",", ";", "\t")}
    quoted = False
    for ch in first_line:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in counts:
            counts[ch] += 1
    best = max(counts.values())
    return next(d for d in (",", ";", "\t") if counts[d] == best) if best else ","


def _rows(text: str, delimiter: str, where: str) -> list[tuple[int, list[str]]]:
    """``(line number, stripped cells)`` of the non-blank rows."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, skipinitialspace=True)
    out = []
    try:
        for row in reader:
            cells = [c.strip() for c in row]
            if any(cells):
                out.append((reader.line_num, cells))
    except csv.Error as err:  # e.g. a cell longer than csv.field_size_limit()
        raise ValueError(f"{where}: line {reader.line_num}: {err}") from err
    return out


def _parse_number(cell: str, decimal_comma: bool) -> float | None:
    """The value of a cell: ``nan`` for a missing label, ``None`` if it is not a number."""
    if cell.lower() in MISSING_VALUES:
        return math.nan
    try:
        return float(cell)
    except ValueError:
        pass
    if decimal_comma and cell.count(",") == 1 and "." not in cell:
        try:
            return float(cell.replace(",", "."))
        except ValueError:
            return None
    return None


def _image_column(header: list[str], given: str | None, explicit: Sequence[str] | None, where: str) -> str | None:
    if given is not None:
        if given not in header:
            raise ValueError(f"{where} has no column {given!r} (the image column given); its columns are {header}")
        return given
    found = [h for h in header if h.lower() in IMAGE_COLUMN_NAMES and (explicit is None or h not in explicit)]
    if len(found) > 1:
        raise ValueError(f"{where}: several columns could name the image files: {found}; choose one with "
                         "--image-column (image_column=...)")
    return found[0] if found else None


def _split_column(header: list[str], explicit: Sequence[str] | None, where: str) -> str | None:
    found = [h for h in header if h.lower() == _SPLIT_COLUMN and (explicit is None or h not in explicit)]
    if len(found) > 1:
        raise ValueError(f"{where}: several split columns {found}")
    return found[0] if found else None


def _count_note(count: int, total: int, what: str) -> str:
    return f"{count} of {total} rows {what}"


def read_labels_csv(path, concepts: Sequence[str] | None = None, *, image_column: str | None = None) -> LabelTable:
    """Read concept labels (and image file names) from a CSV file; see the module docstring for layouts.

    :param path: the CSV file.
    :param concepts: the concept columns to use, in this order (default: every numeric column other than
        the image and split columns, in file order).
    :param image_column: the column of image file names (default: found by name, see
        :data:`IMAGE_COLUMN_NAMES`; none is fine: rows then follow the sorted files of the image folder).
    :returns: the :class:`LabelTable`; ``labels`` is float32 ``[N, K]`` with NaN for missing labels.
    :raises FileNotFoundError: if the file does not exist.
    :raises ValueError: for an empty file, empty or duplicate column names, unknown ``concepts`` or
        ``image_column`` (the columns are listed), rows with the wrong number of cells, a column mixing
        numbers and text, infinite values, a concept column without any label, empty or duplicate file
        names, unknown split values, or no data rows. The message names the column and first bad row and
        says how many rows share the problem.
    """
    p = _existing_file(path, "label CSV file")
    where = f"label CSV {os.fspath(p)!r}"
    raw = p.read_bytes()
    text = _decode(raw, where)
    first = next((ln for ln in text.splitlines() if ln.strip()), None)
    if first is None:
        raise ValueError(f"{where} is empty: expected a header naming the concepts")
    delim = _delimiter(first)
    rows = _rows(text, delim, where)
    header = rows[0][1]
    data = rows[1:]
    if any(not h for h in header):
        raise ValueError(f"{where} has an empty column name in its header {header}")
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise ValueError(f"{where} has duplicate column names {dup}")
    explicit = None if concepts is None else tuple(concepts)
    img_col = _image_column(header, image_column, explicit, where)
    split_col = _split_column(header, explicit, where)
    if explicit is not None:
        unknown = [c for c in explicit if c not in header or c == img_col]
        if unknown:
            available = [h for h in header if h not in (img_col, split_col)]
            raise ValueError(f"{where} has no concept column(s) {unknown}; available columns are {available}")
    if not data:
        raise ValueError(f"{where} has a header but no data rows")
    n, width = len(data), len(header)
    bad_width = [(line, len(cells)) for line, cells in data if len(cells) != width]
    if bad_width:
        line, cells = bad_width[0]
        r = next(i for i, (ln, _) in enumerate(data) if ln == line)
        raise ValueError(f"{where}: line {line} (data row {r}) has {cells} cells but the header has {width} "
                         f"({_count_note(len(bad_width), n, 'have the wrong number of cells')}; delimiter {delim!r})")
    columns = {h: [cells[j] for _, cells in data] for j, h in enumerate(header)}
    candidates = explicit if explicit is not None else [h for h in header if h not in (img_col, split_col)]
    values, chosen, ignored = [], [], []
    for name in candidates:
        col = _numeric_column(name, columns[name], data, delim == ";", where, required=explicit is not None,
                              image_column_found=img_col is not None)
        if col is None:
            ignored.append(name)
        else:
            chosen.append(name)
            values.append(col)
    if not chosen:
        raise ValueError(f"{where} has no numeric concept columns (header {header}"
                         + (f"; text columns {ignored} are not labels" if ignored else "") + ")")
    with np.errstate(over="ignore"):  # values beyond float32 become inf, refused below
        labels = torch.from_numpy(np.stack(values, axis=1).astype(np.float32))
    _check_finite_labels(labels, chosen, columns, data, where)
    filenames = _filenames(columns[img_col], img_col, data, where) if img_col is not None else None
    split = _splits(columns[split_col], split_col, data, where) if split_col is not None else None
    return LabelTable(concepts=tuple(chosen), labels=labels, filenames=filenames, split=split, path=p.resolve(),
                      sha256=hashlib.sha256(raw).hexdigest(), image_column=img_col, ignored=tuple(ignored))


def _numeric_column(name: str, cells: list[str], data, decimal_comma: bool, where: str, *, required: bool,
                    image_column_found: bool) -> np.ndarray | None:
    """The column as float64 ``[N]`` (NaN = missing); ``None`` for a text column (when not required)."""
    out = np.empty(len(cells), dtype=np.float64)
    bad = []
    for r, cell in enumerate(cells):
        v = _parse_number(cell, decimal_comma)
        if v is None:
            bad.append(r)
            v = math.nan
        out[r] = v
    present = sum(1 for c in cells if c.lower() not in MISSING_VALUES)
    if bad and (required or len(bad) < present):
        r = bad[0]
        raise ValueError(
            f"{where}: non-numeric value {cells[r]!r} in column {name!r}, data row {r} (line {data[r][0]}) "
            f"({_count_note(len(bad), len(cells), 'of that column are not numbers')}; a missing label is an empty "
            "cell, nan or NA)")
    if bad:  # a text column
        if not image_column_found and cells[bad[0]].lower().endswith(_IMAGE_SUFFIXES):
            raise ValueError(f"{where}: column {name!r} holds file names ({cells[bad[0]]!r}) but is not named like "
                             f"an image column {list(IMAGE_COLUMN_NAMES)}; pass --image-column {name} "
                             f"(image_column={name!r})")
        return None
    if present == 0:
        raise ValueError(f"{where}: concept column {name!r} has no label at all (all {len(cells)} cells are "
                         "missing); remove it, or choose the concept columns with --concepts (concepts=...)")
    return out


def _check_finite_labels(labels: torch.Tensor, concepts: Sequence[str], columns: dict, data, where: str) -> None:
    bad = torch.isinf(labels)
    if bad.any():
        r, k = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{where}: value {columns[concepts[k]][r]!r} in column {concepts[k]!r}, data row {r} (line {data[r][0]}) "
                         f"is not finite in float32 ({_count_note(int(bad[:, k].sum()), labels.shape[0], 'of that column share this')}); "
                         "a missing label is an empty cell, nan or NA")


def _filenames(cells: list[str], name: str, data, where: str) -> list[str]:
    empty = [r for r, c in enumerate(cells) if not c]
    if empty:
        r = empty[0]
        raise ValueError(f"{where}: empty file name in column {name!r}, data row {r} (line {data[r][0]}) "
                         f"({_count_note(len(empty), len(cells), 'have no file name')})")
    seen: dict[str, int] = {}
    dups = []
    for r, c in enumerate(cells):
        if c in seen:
            dups.append(r)
        else:
            seen[c] = r
    if dups:
        r = dups[0]
        raise ValueError(f"{where}: file name {cells[r]!r} appears twice (data rows {seen[cells[r]]} and {r}) "
                         f"({_count_note(len(dups), len(cells), 'repeat an earlier file name')})")
    return cells


def _splits(cells: list[str], name: str, data, where: str) -> list[str]:
    out = [SPLIT_VALUES.get(c.lower()) for c in cells]
    bad = [r for r, v in enumerate(out) if v is None]
    if bad:
        r = bad[0]
        raise ValueError(f"{where}: split value {cells[r]!r} in column {name!r}, data row {r} (line {data[r][0]}) is "
                         f"not one of {sorted(SPLIT_VALUES)} ({_count_note(len(bad), len(cells), 'share this')})")
    return out
