"""Causal graphs from files and from the command line's ``--graph`` / ``--true-graph`` text.

:func:`read_graph_file` detects the format from the file's content (and its suffix):

- **CSV / TSV edge lists**: one ``parent,child`` pair per row (comma, tab or semicolon); a header row
  (``parent,child``, ``source,target``, ``from,to``, ``cause,effect``, or any row naming no concept) is
  optional; further columns (e.g. a weight) are ignored;
- **adjacency matrices** as CSV: a header row of concept names, then one row per parent, first cell its
  name, ``1`` (any non-zero number) in the column of each child;
- **networkx edge lists** (``networkx.write_edgelist``): ``parent child [data]`` per line, whitespace
  separated, ``#`` comments; also ``parent -> child`` lines;
- **JSON**: a list of ``[parent, child]`` pairs, ``{"edges": [...]}`` (what
  :meth:`~pyro_causalvae.datasets.ConceptImageDataset.to_folder` writes), a list of
  ``{"parent"/"source"/"from": ..., "child"/"target"/"to": ...}`` objects, networkx's node-link JSON,
  or an adjacency object ``{"parent": ["child", ...]}``;
- **GraphML** (``.graphml`` / XML, e.g. from networkx, yEd or Cytoscape): node ids, or their ``name`` /
  ``label`` attribute when the ids are not concepts.

An unknown concept (with its line), a self-loop or a cycle is named in the error, with the file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import networkx as nx

from ._validation import check_graph

__all__ = ["read_graph_file", "parse_edges", "parse_graph_arg", "GRAPH_FILE_FORMATS"]

#: The formats :func:`read_graph_file` reads (one phrase, for error messages and help).
GRAPH_FILE_FORMATS = "CSV/TSV parent,child rows, an adjacency-matrix CSV, a networkx edge list, JSON or GraphML"
_HEADER_WORDS = {("parent", "child"), ("source", "target"), ("from", "to"), ("cause", "effect"), ("u", "v"),
                 ("tail", "head"), ("src", "dst")}
_GRAPH_SUFFIXES = (".csv", ".tsv", ".txt", ".json", ".graphml", ".xml", ".edgelist", ".edges", ".el")


def parse_edges(text: str) -> list[tuple[str, str]]:
    """``"a->b, b->c"`` as ``[("a", "b"), ("b", "c")]``.

    :raises ValueError: for a part that is not written ``parent->child``.
    """
    edges = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "->" not in part:
            raise ValueError(f"edge {part!r} must be written parent->child")
        u, v = (s.strip() for s in part.split("->", 1))
        edges.append((u, v))
    return edges


def read_graph_file(path, concepts: Sequence[str] | None = None) -> nx.DiGraph | list[tuple[str, str]]:
    """Read a causal graph from a file (formats: see the module docstring).

    :param path: the file.
    :param concepts: the concept names: when given, the graph is validated against them (unknown names,
        self-loops and cycles are refused) and returned as a ``networkx.DiGraph`` over them; else the raw
        ``(parent, child)`` edges are returned.
    :raises FileNotFoundError: if the file does not exist.
    :raises ValueError: for an unreadable file or a graph that is not a DAG over ``concepts``; the message
        names the file (and the line where it can).
    """
    p = Path(os.fspath(path)).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"graph file not found: {os.fspath(p)!r}" if not p.exists()
                                else f"graph path {os.fspath(p)!r} is a folder, expected a file")
    where = f"graph file {os.fspath(p)!r}"
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{where} is not UTF-8 text ({err})") from None
    head = text.lstrip()
    if p.suffix.lower() in (".graphml", ".xml") or head.startswith("<"):
        edges, lines = _graphml(p, concepts, where), None
    elif p.suffix.lower() == ".json" or head[:1] in ("[", "{"):
        edges, lines = _json(text, where), None
    else:
        edges, lines = _text(text, concepts, where)
    if not edges:
        raise ValueError(f"{where} holds no edges (expected {GRAPH_FILE_FORMATS})")
    if concepts is None:
        return edges
    return _validated(edges, lines, concepts, where)


def _validated(edges, lines, concepts: Sequence[str], where: str) -> nx.DiGraph:
    for i, (u, v) in enumerate(edges):
        at = f", line {lines[i]}" if lines is not None else ""
        for name in (u, v):
            if name not in concepts:
                raise ValueError(f"{where}{at}: {name!r} (in edge {u} -> {v}) is not a concept; concepts are {list(concepts)}")
        if u == v:
            raise ValueError(f"{where}{at}: self-loop {u} -> {u}; a causal graph must be acyclic")
    try:
        return check_graph(edges, concepts)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def _text(text: str, concepts, where: str) -> tuple[list[tuple[str, str]], list[int]]:
    """Edge lists (CSV, TSV, whitespace, arrows) and adjacency-matrix CSV files: edges and their lines."""
    raw = [(i + 1, ln.split("#", 1)[0].strip()) for i, ln in enumerate(text.splitlines())]
    raw = [(i, ln) for i, ln in raw if ln]
    if not raw:
        return [], []
    first = raw[0][1]
    if any("->" in ln for _, ln in raw):
        rows = [(i, [c.strip() for c in ln.split("->", 1)]) if "->" in ln else (i, [ln]) for i, ln in raw]
    elif any(d in first for d in ("\t", ",", ";")):
        delim = next(d for d in ("\t", ",", ";") if d in first)
        rows = []
        for i, ln in raw:
            cells = next(csv.reader(io.StringIO(ln), delimiter=delim))
            rows.append((i, [c.strip() for c in cells]))
    else:
        rows = [(i, ln.split()) for i, ln in raw]
    matrix = _matrix(rows)
    if matrix is not None:
        return matrix
    if _is_header(rows[0][1], concepts):
        rows = rows[1:]
    edges, lines = [], []
    for i, cells in rows:
        if len(cells) < 2 or not cells[0] or not cells[1]:
            raise ValueError(f"{where}, line {i}: expected a parent and a child, got {' '.join(cells)!r} "
                             f"({GRAPH_FILE_FORMATS})")
        edges.append((cells[0], cells[1]))
        lines.append(i)
    return edges, lines


def _is_header(cells: list[str], concepts) -> bool:
    if len(cells) >= 2 and (cells[0].lower(), cells[1].lower()) in _HEADER_WORDS:
        return True
    return concepts is not None and len(cells) >= 2 and cells[0] not in concepts and cells[1] not in concepts


def _matrix(rows):
    """An adjacency-matrix CSV (a header of the K names, optionally after an empty corner cell, then K rows
    ``name, a_1, ..., a_K``; non-zero ``a_j`` is an edge name -> j), as edges and lines; else ``None``."""
    header, data = rows[0][1], rows[1:]
    if not data or len({len(cells) for _, cells in data}) != 1:
        return None
    width = len(data[0][1])
    names = header[1:] if len(header) == width else header if len(header) == width - 1 else None
    if names is None or len(names) < 2 or len(data) != len(names):
        return None
    if not all(_numeric(cells[1:]) for _, cells in data):
        return None
    edges, lines = [], []
    for i, cells in data:
        for child, value in zip(names, cells[1:], strict=True):
            if float(value) != 0:
                edges.append((cells[0], child))
                lines.append(i)
    return edges, lines


def _numeric(cells) -> bool:
    try:
        [float(c) for c in cells]
    except ValueError:
        return False
    return bool(cells)


def _json(text: str, where: str) -> list[tuple[str, str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not valid JSON: {err}") from err
    bad = ValueError(f'{where} must hold a list of [parent, child] pairs, {{"edges": [...]}}, node-link JSON '
                     '({"nodes": ..., "links": [{"source", "target"}]}) or {"parent": ["child", ...]}')
    if isinstance(data, dict):
        if "links" in data or "edges" in data:
            items = data.get("links", data.get("edges"))
            if items is None:
                raise ValueError(f"{where} holds no graph (\"edges\": null)")
        elif "nodes" not in data and all(isinstance(k, str) and isinstance(v, list) for k, v in data.items()):
            return [(str(k), str(c)) for k, children in data.items() for c in children]
        else:
            raise bad
    else:
        items = data
    if not isinstance(items, list):
        raise bad
    edges = []
    for e in items:
        if (isinstance(e, (list, tuple)) and 2 <= len(e) <= 3 and all(isinstance(c, str) for c in e[:2])
                and (len(e) == 2 or isinstance(e[2], (int, float)))):  # [parent, child] or [parent, child, weight]
            edges.append((e[0], e[1]))
            continue
        if isinstance(e, dict):
            pair = next(((e[a], e[b]) for a, b in (("parent", "child"), ("source", "target"), ("from", "to"),
                                                    ("cause", "effect")) if a in e and b in e), None)
            if pair is not None and all(isinstance(c, str) for c in pair):
                edges.append(pair)
                continue
        raise bad
    return edges


def _graphml(p: Path, concepts, where: str) -> list[tuple[str, str]]:
    try:
        g = nx.read_graphml(p)
    except Exception as err:  # networkx raises several parser errors
        raise ValueError(f"{where} is not readable GraphML: {err}") from err
    if not g.is_directed():
        raise ValueError(f"{where} holds an undirected graph; a causal graph must be directed (edgedefault=\"directed\")")
    name = {n: n for n in g.nodes()}
    if concepts is not None and not all(n in concepts for n in g.nodes()):
        for attr in ("name", "label"):
            values = {n: g.nodes[n].get(attr) for n in g.nodes()}
            if all(isinstance(v, str) for v in values.values()) and all(v in concepts for v in values.values()):
                name = values
                break
    return [(str(name[u]), str(name[v])) for u, v in g.edges()]


def parse_graph_arg(text: str, concepts: Sequence[str], flag: str = "--graph") -> nx.DiGraph:
    """A graph given on the command line: a file (any format of :func:`read_graph_file`) or edges
    ``"a->b,b->c"``, validated against ``concepts``.

    :raises FileNotFoundError: for a path that does not exist (something that looks like a file name).
    :raises ValueError: for text that is neither, or a graph that is not a DAG over ``concepts``.
    """
    path = Path(text).expanduser()
    if path.is_file():
        return read_graph_file(path, concepts)
    if "->" in text:
        try:
            return check_graph(parse_edges(text), concepts)
        except ValueError as err:
            raise ValueError(f"{flag} {text!r}: {err}") from None
    if path.suffix.lower() in _GRAPH_SUFFIXES or os.sep in text:
        raise FileNotFoundError(f"{flag} file not found: {text!r}")
    raise ValueError(f"{flag} {text!r} is neither a file nor edges written parent->child (e.g. 'a->b,b->c'); "
                     f"graph files may be {GRAPH_FILE_FORMATS}")
