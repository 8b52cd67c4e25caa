"""Graph files in every format people write DAGs in, detected from the content; errors name the file,
the line and the problem (cycle, self-loop, unknown concept)."""

from __future__ import annotations

import json

import networkx as nx
import pytest

from pyro_causalvae.graph_files import parse_graph_arg, read_graph_file

CONCEPTS = ("size", "height", "shadow")
EDGES = {("size", "shadow"), ("height", "shadow")}


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def graphml(tmp_path, g, name="g.graphml"):
    p = tmp_path / name
    nx.write_graphml(g, p)
    return p


LAYOUTS = {
    "csv with header": ("g.csv", "parent,child\nsize,shadow\nheight,shadow\n"),
    "csv without header": ("g.csv", "size,shadow\nheight,shadow\n"),
    "csv, other header words": ("edges.txt", "source,target,weight\nsize,shadow,0.8\nheight,shadow,1.2\n"),
    "csv, unknown header": ("g.csv", "Ursache,Wirkung\nsize,shadow\nheight,shadow\n"),
    "tsv with CRLF": ("g.tsv", "cause\teffect\r\nsize\tshadow\r\nheight\tshadow\r\n"),
    "semicolons": ("g.csv", "from;to\nsize;shadow\nheight;shadow\n"),
    "networkx edge list": ("g.edgelist", "# written by networkx\nsize shadow {'weight': 1.0}\nheight shadow {}\n"),
    "whitespace, no suffix": ("graph", "size   shadow\n\nheight shadow\n"),
    "arrows": ("g.txt", "size -> shadow\nheight->shadow  # the shadow widens\n"),
    "adjacency matrix": ("m.csv", ",size,height,shadow\nsize,0,0,1\nheight,0,0,1\nshadow,0,0,0\n"),
    "adjacency matrix, no corner": ("m.csv", "size,height,shadow\nsize,0,0,1\nheight,0,0,1\nshadow,0,0,0\n"),
    "json pairs": ("g.json", json.dumps([["size", "shadow"], ["height", "shadow"]])),
    "json pairs with weights": ("g.json", json.dumps([["size", "shadow", 0.5], ["height", "shadow", 1]])),
    "json edges object (to_folder)": ("graph.json", json.dumps({"concepts": list(CONCEPTS), "edges": [["size", "shadow"], ["height", "shadow"]]})),
    "json parent/child objects": ("g.json", json.dumps([{"parent": "size", "child": "shadow"}, {"parent": "height", "child": "shadow"}])),
    "json node-link": ("g.json", json.dumps(nx.node_link_data(nx.DiGraph(sorted(EDGES)), edges="links"))),
    "json adjacency": ("g.json", json.dumps({"size": ["shadow"], "height": ["shadow"], "shadow": []})),
    "json, no suffix": ("graph.dat", json.dumps([["size", "shadow"], ["height", "shadow"]])),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layouts_are_detected(tmp_path, layout):
    name, text = LAYOUTS[layout]
    g = read_graph_file(write(tmp_path, name, text), CONCEPTS)
    assert isinstance(g, nx.DiGraph) and list(g.nodes) == list(CONCEPTS)
    assert set(g.edges) == EDGES
    assert set(parse_graph_arg(str(tmp_path / name), CONCEPTS).edges) == EDGES  # --graph PATH


def test_graphml_by_id_and_by_label(tmp_path):
    assert set(read_graph_file(graphml(tmp_path, nx.DiGraph(sorted(EDGES))), CONCEPTS).edges) == EDGES
    g = nx.DiGraph()
    for i, c in enumerate(CONCEPTS):
        g.add_node(f"n{i}", label=c)  # yEd / Cytoscape style: ids n0.., names in a label
    g.add_edges_from([("n0", "n2"), ("n1", "n2")])
    assert set(read_graph_file(graphml(tmp_path, g, "y.xml"), CONCEPTS).edges) == EDGES
    with pytest.raises(ValueError, match="undirected graph"):
        read_graph_file(graphml(tmp_path, nx.Graph(sorted(EDGES)), "u.graphml"), CONCEPTS)


def test_raw_edges_without_concepts(tmp_path):
    assert read_graph_file(write(tmp_path, "g.csv", "a,b\nb,c\n")) == [("a", "b"), ("b", "c")]


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("g.csv", "parent,child\nsize,shadow\nshadow,size\n", r"graph file '.*g\.csv': graph has a cycle: (size -> shadow -> size|shadow -> size -> shadow)"),
        ("g.csv", "size,shadow\nheight,height\n", r"graph file '.*g\.csv', line 2: self-loop height -> height"),
        ("g.csv", "parent,child\nsize,shadow\nsize,colour\n",
         r"graph file '.*g\.csv', line 3: 'colour' \(in edge size -> colour\) is not a concept; concepts are \['size', 'height', 'shadow'\]"),
        ("g.txt", "size -> shadow\nheight\n", r"line 2: expected a parent and a child, got 'height'"),
        ("g.json", "{oops", "is not valid JSON"),
        ("g.json", '{"nodes": ["a"]}', r"must hold a list of \[parent, child\] pairs"),
        ("g.json", '[["size", "shadow", "height"]]', r"must hold a list of \[parent, child\] pairs"),
        ("g.json", '{"concepts": ["size"], "edges": null}', r"holds no graph"),
        ("g.csv", "# nothing\n\n", "holds no edges"),
        ("g.graphml", "<graphml><broken", "is not readable GraphML"),
    ],
)
def test_errors_name_the_file_and_the_problem(tmp_path, name, text, match):
    with pytest.raises(ValueError, match=match):
        read_graph_file(write(tmp_path, name, text), CONCEPTS)


def test_graph_argument_text(tmp_path):
    assert set(parse_graph_arg("size->shadow, height->shadow", CONCEPTS).edges) == EDGES
    with pytest.raises(ValueError, match=r"--graph 'size-shadow' is neither a file nor edges written parent->child"):
        parse_graph_arg("size-shadow", CONCEPTS)
    with pytest.raises(FileNotFoundError, match=r"--true-graph file not found: 'dag\.csv'"):
        parse_graph_arg("dag.csv", CONCEPTS, "--true-graph")
    with pytest.raises(ValueError, match=r"--graph 'size->shadow,shadow->size': graph has a cycle"):
        parse_graph_arg("size->shadow,shadow->size", CONCEPTS)
    with pytest.raises(FileNotFoundError, match="graph file not found"):
        read_graph_file(tmp_path / "nope.csv", CONCEPTS)
