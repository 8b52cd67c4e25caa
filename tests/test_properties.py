"""Property-based tests (hypothesis) of the public entry points against bad input (issue #8).

The property, for every entry point: an input either works, and then the output is finite (never a
silent NaN), or it is refused with one of the exceptions the docstring names (``ValueError``; also
``FileNotFoundError`` for paths), raised from inside ``pyro_causalvae`` (not from deep inside torch or
numpy), with a one-line message that is not a raw torch / Python error. Where the input is invalid by
construction, the message must also name the offending argument.

Examples are few and derandomised (the file runs in well under a minute on one core).
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyro_causalvae
from pyro_causalvae import CausalVAE, LossWeights, TrainingDiverged, fit
from pyro_causalvae.datasets import ConceptImageDataset
from pyro_causalvae.queries import intervention_grid

from test_safe_loading import CONCEPTS, GRAPH, cli, make_run

PACKAGE = Path(pyro_causalvae.__file__).resolve().parent
#: messages of errors that escaped from torch / numpy / Python internals instead of a check of ours
RAW = re.compile(
    r"size mismatch|must match the size|invalid data type|object is not iterable|not subscriptable|has no attribute|"
    r"index out of range|x not in tuple|invalid literal for int|unexpected keyword|positional argument|"
    r"Cannot copy out of meta|mat1 and mat2|Expected one of cpu|can't convert np\.ndarray|not a mapping|"
    r"too many dimensions|could not convert string"
)


def profile(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def raised_in(err: BaseException) -> Path:
    tb = err.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve()


def assert_clean_error(err: BaseException, allowed=(ValueError,), names: tuple[str, ...] = ()) -> None:
    """The refusal property: a documented type, raised by our own checks, one readable line that (when
    the bad argument is known) names it."""
    msg = str(err)
    assert isinstance(err, allowed), f"{type(err).__name__}: {msg}"
    where = raised_in(err)
    assert PACKAGE in where.parents, f"raised in {where}, not in pyro_causalvae: {type(err).__name__}: {msg}"
    assert msg and "\n" not in msg, repr(msg)
    assert not RAW.search(msg), f"a raw internal error: {msg}"
    if names:
        assert any(re.search(n, msg) for n in names), f"message names none of {names}: {msg}"


def finite(t) -> bool:
    return bool(torch.isfinite(torch.as_tensor(t)).all())


# ---------------------------------------------------------------------------------------------------
# ConceptImageDataset from tensors
# ---------------------------------------------------------------------------------------------------
FLOATS = st.floats(width=32, allow_nan=True, allow_infinity=True)


@st.composite
def image_inputs(draw):
    """``(images, is_valid)``: tensors / arrays of many shapes, dtypes and values."""
    kind = draw(st.sampled_from(["uint8", "float", "float", "float16", "int64", "bool", "complex", "np_uint8",
                                 "np_str", "list", "none"]))
    n = draw(st.integers(0, 3))
    c = draw(st.sampled_from([1, 3, 3, 2, 0, 4]))
    h, w = draw(st.integers(0, 4)), draw(st.integers(0, 4))
    ndim = draw(st.sampled_from([4, 4, 4, 3, 5]))
    shape = ((n, c, h, w) + (2,))[:ndim]
    good_shape = ndim == 4 and n > 0 and c in (1, 3) and h > 0 and w > 0
    if kind in ("list", "none"):
        return ([[0.5]] if kind == "list" else None), False
    if kind == "np_str":
        return np.full(shape, "x"), False
    if kind in ("uint8", "np_uint8"):
        t = torch.randint(0, 256, shape, dtype=torch.uint8)
        return (t.numpy() if kind == "np_uint8" else t), good_shape
    if kind in ("int64", "bool", "complex"):
        return torch.zeros(shape, dtype={"int64": torch.int64, "bool": torch.bool, "complex": torch.complex64}[kind]), False
    value = draw(st.one_of(st.floats(0, 1, width=32), FLOATS))
    t = torch.full(shape, value)
    if kind == "float16":
        t = t.half()  # values beyond float16's range become inf
    v = float(t.flatten()[0]) if t.numel() else 0.0
    return t, good_shape and math.isfinite(v) and 0 <= v <= 1


NAMES = st.sampled_from(["a", "b", "c", "zz", ""])
LABEL_VALUES = st.one_of(st.floats(-1e6, 1e6, width=32), FLOATS, st.sampled_from([3e38, -3e38, 1e38]))


def _check_dataset(ds, n):
    assert ds.images.dtype == torch.uint8 and ds.images.dim() == 4 and len(ds) == n
    assert finite(ds.label_loc) and finite(ds.label_scale) and bool((ds.label_scale > 0).all())
    if ds.labels is not None:
        assert finite(ds.labels_normalised), (ds.labels, ds.label_loc, ds.label_scale)
        image, label = ds[0]
        assert finite(label)
    else:
        image = ds[0]
    assert finite(image) and 0 <= float(image.min()) and float(image.max()) <= 1


@given(images=image_inputs(), labelled=st.booleans())
@profile(40)
def test_dataset_images(images, labelled):
    """Images of every shape / dtype / value, with valid labels and concepts."""
    images, images_ok = images
    n = images.shape[0] if hasattr(images, "shape") and len(images.shape) > 0 else 2
    try:
        ds = ConceptImageDataset(images, torch.rand(n, 3) if labelled else None, CONCEPTS)
    except Exception as err:
        assert_clean_error(err, (ValueError,), ("images",))
        assert not images_ok, f"valid images refused: {err}"
        return
    assert images_ok, f"accepted bad images {type(images).__name__} {getattr(images, 'dtype', '')} {getattr(images, 'shape', '')}"
    _check_dataset(ds, n)


@given(
    label_kind=st.sampled_from(["ok", "none", "wrong_rows", "wrong_cols", "1d", "value", "value", "strings", "complex"]),
    label_value=LABEL_VALUES,
    concepts=st.one_of(st.just(list(CONCEPTS)), st.just(list(CONCEPTS)), st.lists(NAMES, min_size=0, max_size=4),
                       st.just("abc"), st.just([1, 2, 3]), st.just(None)),
    graph=st.one_of(st.none(), st.just(GRAPH), st.lists(st.tuples(NAMES, NAMES), max_size=3),
                    st.just([("a", "b"), ("b", "c"), ("c", "a")]), st.just("a->b"), st.just([("a", "b", "c")])),
    units=st.sampled_from([{}, {}, {"label_loc": 0.5}, {"label_loc": [0.0, float("nan"), 0.0]}, {"label_scale": [1.0, 0.0, 1.0]},
                           {"label_scale": "1"}, {"label_loc": -3e38, "label_scale": 1.0}, {"label_scale": 1e-45}]),
)
@profile(60)
def test_dataset_labels_concepts_graph(label_kind, label_value, concepts, graph, units):
    """Valid images; labels, concepts, graph and normalisation of every kind."""
    n = 3
    k = len(concepts) if isinstance(concepts, list) else 3
    labels = {
        "ok": torch.rand(n, k), "none": None, "wrong_rows": torch.rand(n + 1, k), "wrong_cols": torch.rand(n, k + 1),
        "1d": torch.rand(n), "value": torch.full((n, k), label_value), "strings": np.full((n, k), "1.5"),
        "complex": torch.zeros(n, k, dtype=torch.complex64),
    }[label_kind]
    images = torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8)
    try:
        ds = ConceptImageDataset(images, labels, concepts, graph, **units)
    except Exception as err:
        assert_clean_error(err, (ValueError,), ("label", "concept", "graph", "edge", "cycle", "self-loop"))
        return
    assert label_kind in ("ok", "none", "value"), f"accepted bad labels ({label_kind})"
    assert isinstance(concepts, list) and concepts and len(set(concepts)) == len(concepts) and "" not in concepts
    assert graph is None or graph == GRAPH or all(u in CONCEPTS and v in CONCEPTS and u != v for u, v in graph)
    _check_dataset(ds, n)


@pytest.mark.parametrize("column", [[3e38, 3e38, 3e38], [-3e38, 3e38, 0.0], [3e38, 1e38, 2e38], [1e-45, 0.0, 1e-45]])
def test_dataset_labels_near_the_float32_limits_normalise_finitely(column):
    """The default normalisation ((min + max) / 2, (max - min) / 2) must not overflow float32."""
    labels = torch.tensor(column).reshape(3, 1)
    ds = ConceptImageDataset(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), labels, ["a"])
    _check_dataset(ds, 3)


def test_dataset_labels_that_overflow_when_normalised_are_refused():
    with pytest.raises(ValueError) as info:
        ConceptImageDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([[3e38], [0.0]]), ["a"],
                            label_loc=-3e38, label_scale=1.0)
    assert_clean_error(info.value, (ValueError,), ("overflow float32 when normalised",))


# ---------------------------------------------------------------------------------------------------
# CausalVAE(...)
# ---------------------------------------------------------------------------------------------------
def arg(valid, invalid):
    """A strategy of ``(value, is_valid)``."""
    return st.one_of(st.sampled_from([(v, True) for v in valid]), st.sampled_from([(v, False) for v in invalid]))


MODEL_ARGS = {
    "concepts": arg([CONCEPTS, ["a", "b", "c"]], ["abc", ("a", "a", "b"), ("a", "", "c"), (1, 2, 3), (), None, {"a", "b", "c"}]),
    "image_shape": arg([(3, 16, 16), (1, 16, 16), (5,)], [(3, 15, 15), (2, 16, 16), (3, 16, 20), (16, 16), (3, 16.5, 16.5),
                                                          "3x16x16", None, (0,), (3, -16, -16), (True, 16, 16)]),
    "style_dim": arg([0, 2], [-1, 2.5, True, "2", None]),
    "channels": arg([8], [7, 0, 8.0, False]),
    "hidden": arg([16], [0, True, "16"]),
    "graph": arg(["learn", None, GRAPH], ["true", 5, [("a", "zz")], [("a", "b"), ("b", "a")], [("a", "a")], [("a", "b", "c")]]),
    "required": arg([(), [("a", "b")]], ["ab", 3, [("a", "zz")], [("a",)], [(["a"], "b")]]),
    "forbidden": arg([(), [("c", "a")]], ["ab", 3, [("a", "zz")], [(1, 2)]]),
    "pixel_scale": arg([0.1, 1], [0, -0.1, float("nan"), float("inf"), "0.1", True, None]),
    "mechanism": arg(["mlp", "linear"], ["MLP", None, 1]),
    "noise": arg(["spline", "spline-all", "normal"], ["gauss", "spline_all", None]),
    "edge_threshold": arg([0.0, 0.02], [-0.1, float("nan"), "0.02", True]),
    "edge_relative": arg([0.0, 0.2, 1.0], [-0.1, 1.5, float("inf")]),
    "label_loc": arg([None, [0.0, 1.0, 2.0], torch.zeros(3)], ["abc", ["a", "b", "c"], [0.0], [0, float("nan"), 0],
                                                               torch.zeros(3, dtype=torch.complex64), [[0, 0, 0]]]),
    "label_scale": arg([None, [1.0, 2.0, 0.5]], [[1, 0, 1], [1, -1, 1], [1, float("inf"), 1], [1e-45, 1, 1], "1"]),
}
#: how a message may name each argument
MODEL_NAMES = {
    "concepts": ("concept",), "image_shape": ("image_shape",), "style_dim": ("style_dim",), "channels": ("channels",),
    "hidden": ("hidden",), "graph": ("graph", "cycle", "self-loop", "not concepts", "edge"), "required": ("required",),
    "forbidden": ("forbidden",), "pixel_scale": ("pixel_scale",), "mechanism": ("mechanism",),
    "noise": ("noise",), "edge_threshold": ("edge_threshold",), "edge_relative": ("edge_relative",),
    "label_loc": ("label_loc",), "label_scale": ("label_scale",),
}


@given(st.fixed_dictionaries(MODEL_ARGS))
@profile(50)
def test_model_constructor(drawn):
    kw = {k: v for k, (v, _) in drawn.items()}
    bad = [k for k, (_, ok) in drawn.items() if not ok]
    try:
        model = CausalVAE(**kw, mechanism_hidden=8)
    except Exception as err:
        assert bad, f"valid arguments refused: {type(err).__name__}: {err}"
        assert_clean_error(err, (ValueError,), tuple(n for b in bad for n in MODEL_NAMES[b]))
        return
    assert not bad, f"accepted bad argument(s) {bad}: {[kw[b] for b in bad]}"
    clone = CausalVAE.from_config(model.config())
    assert clone.config() == model.config()
    x = torch.rand(2, *model.image_shape)
    assert finite(model.reconstruct(x))


# ---------------------------------------------------------------------------------------------------
# fit(...)
# ---------------------------------------------------------------------------------------------------
FIT_ARGS = {
    "epochs": arg([1], [0, -1, 1.5, True, "1", None]),
    "batch_size": arg([4, 8, 100], [0, -2, 2.0, False, "8"]),
    "lr": arg([1e-3, 1e-2], [0, -1e-3, float("nan"), float("inf"), "0.1", True, None]),
    "device": arg(["cpu", torch.device("cpu")], ["gpu", "", "cuda:99", "meta", "mps", None, 3.5, "cpu:x"]),
    "weights": arg([None, LossWeights(), LossWeights(kl=0.5)], [{"kl": 1.0}, "kl=1", 1.0]),
    "seed": arg([0, 7], [-1, 1.5, "x", 2**40, None]),
}
FIT_NAMES = {"epochs": ("epochs",), "batch_size": ("batch_size",), "lr": ("lr",), "device": ("device", "cuda", "CUDA"),
             "weights": ("weights", "LossWeights"), "seed": ("seed",)}
FIT_DATA = None


def _fit_data():
    global FIT_DATA
    if FIT_DATA is None:
        g = torch.Generator().manual_seed(0)
        FIT_DATA = ConceptImageDataset((torch.rand(8, 3, 16, 16, generator=g) * 255).to(torch.uint8),
                                       torch.rand(8, 3, generator=g), CONCEPTS, GRAPH)
    return FIT_DATA


@given(st.fixed_dictionaries(FIT_ARGS))
@profile(30)
def test_fit_arguments(drawn):
    kw = {k: v for k, (v, _) in drawn.items()}
    bad = [k for k, (_, ok) in drawn.items() if not ok]
    model = CausalVAE(CONCEPTS, (3, 16, 16), style_dim=2, graph=GRAPH, channels=8, hidden=16, mechanism_hidden=8)
    before = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    try:
        history = fit(model, _fit_data(), progress=False, **kw)
    except TrainingDiverged as err:  # documented: names the step and the term
        assert not bad and re.search(r"step \d+ .*non-finite loss term", str(err)), str(err)
        return
    except Exception as err:
        assert_clean_error(err, (ValueError,), tuple(n for b in bad for n in FIT_NAMES[b]))
        assert bad, f"valid settings {kw} refused: {err}"
        for k, v in before.items():  # refused before any work
            assert torch.equal(model.state_dict()[k].cpu(), v), k
        return
    assert not bad, f"accepted bad setting(s) {bad}: {[kw[b] for b in bad]}"
    assert len(history) == 1
    assert all(math.isfinite(v) for v in history.last().values() if isinstance(v, float))
    assert all(finite(p) for p in model.parameters())


# ---------------------------------------------------------------------------------------------------
# intervene / counterfactual / intervention_grid
# ---------------------------------------------------------------------------------------------------
QUERY_MODEL = None


def _query_model():
    global QUERY_MODEL
    if QUERY_MODEL is None:
        torch.manual_seed(0)
        QUERY_MODEL = CausalVAE(CONCEPTS, (3, 16, 16), style_dim=2, graph=GRAPH, channels=8, hidden=16, mechanism_hidden=8,
                                label_loc=[10.0, 0.0, 0.0], label_scale=[2.0, 1.0, 0.5]).eval()
    return QUERY_MODEL


VALUES = st.one_of(
    st.floats(-30, 30).map(lambda v: (v, True)),
    st.sampled_from([(float("nan"), False), (float("inf"), False), (-float("inf"), False), (1e39, False), (3e38, None),
                     (1e20, None), ("0.5", False), ("x", False), (None, False), (True, False), (1j, False)]),
    st.lists(st.floats(-3, 3), min_size=0, max_size=4).map(lambda v: (v, "len")),
    st.just((torch.zeros(2, 2), False)),
)


@st.composite
def do_dicts(draw):
    """``(do, status)``: status True (valid), False (invalid), None (extreme: may work or be refused), or
    "len" (a per-row list: valid iff its length matches)."""
    items = draw(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "zz", ""]), VALUES), min_size=0, max_size=3,
                          unique_by=lambda t: t[0]))
    do = {k: v for k, (v, _) in items}
    statuses = [(k, s) for k, (_, s) in items]
    return do, statuses


def _do_valid(statuses, n) -> bool | None:
    if not statuses:
        return False
    verdict = True
    for k, s in statuses:
        if k not in CONCEPTS or s is False:
            return False
        if s == "len":
            continue  # decided by the caller from the list length
        if s is None:
            verdict = None
    return verdict


@st.composite
def query_images(draw):
    kind = draw(st.sampled_from(["ok", "ok", "uint8", "single", "wrong_shape", "nan", "above_one", "int64", "complex",
                                 "numpy", "empty", "float64"]))
    return {
        "ok": (torch.rand(2, 3, 16, 16), True), "uint8": (torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8), True),
        "single": (torch.rand(3, 16, 16), True), "float64": (torch.rand(2, 3, 16, 16, dtype=torch.float64), True),
        "wrong_shape": (torch.rand(2, 1, 16, 16), False), "nan": (torch.full((2, 3, 16, 16), float("nan")), False),
        "above_one": (torch.full((2, 3, 16, 16), 2.0), False), "int64": (torch.ones(2, 3, 16, 16, dtype=torch.int64), False),
        "complex": (torch.zeros(2, 3, 16, 16, dtype=torch.complex64), False), "numpy": (np.zeros((2, 3, 16, 16)), False),
        "empty": (torch.rand(0, 3, 16, 16), False),
    }[kind]


def _check_query(call, valid, n_rows):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # values outside the observed range warn
        try:
            out = call()
        except Exception as err:
            assert_clean_error(err, (ValueError,))
            assert valid is not True, f"a valid query was refused: {err}"
            return None
    assert valid is not False, "an invalid query was accepted"
    for key, t in out.items():
        assert finite(t), f"silent non-finite {key}"
    return out


@given(do=do_dicts(), num_samples=arg([1, 3], [0, -1, 2.0, True, "2"]),
       units=arg(["natural", "normalised"], ["kelvin", None, "Natural"]))
@profile(40)
def test_intervene(do, num_samples, units):
    (do, statuses), (num_samples, ns_ok), (units, units_ok) = do, num_samples, units
    valid = _do_valid(statuses, num_samples)
    lens_ok = all(len(do[k]) in (1, num_samples) for k, s in statuses if s == "len" and k in do) if ns_ok else True
    if not (ns_ok and units_ok and lens_ok):
        valid = False
    out = _check_query(lambda: _query_model().intervene(do, num_samples=num_samples, units=units), valid, num_samples)
    if out is not None:
        assert out["images"].shape == (num_samples, 3, 16, 16) and out["concepts"].shape == (num_samples, 3)


@given(x=query_images(), do=do_dicts(), abduction=st.sampled_from([("mean", True), ("sample", True), ("mode", False)]),
       units=arg(["natural", "normalised"], ["raw"]))
@profile(40)
def test_counterfactual(x, do, abduction, units):
    (x, x_ok), (do, statuses), (abduction, ab_ok), (units, units_ok) = x, do, abduction, units
    n = 1 if len(x.shape) == 3 else x.shape[0]
    valid = _do_valid(statuses, n)
    lens_ok = all(len(do[k]) in (1, n) for k, s in statuses if s == "len" and k in do)
    if not (x_ok and ab_ok and units_ok and lens_ok):
        valid = False
    ns = 2 if abduction == "sample" else 1
    out = _check_query(lambda: _query_model().counterfactual(x, do=do, num_samples=ns, abduction=abduction, units=units),
                       valid, n)
    if out is not None:
        assert out["images"].shape == (ns, n, 3, 16, 16) and out["factual_concepts"].shape == (ns, n, 3)


@given(values=st.one_of(
    st.fixed_dictionaries({"a": st.lists(st.floats(8, 12), min_size=1, max_size=3)}).map(lambda v: (v, True)),
    st.sampled_from([({"zz": [0.1]}, False), ({"a": [float("nan")]}, False), ({"a": "x"}, False), ({"a": []}, False),
                     ({"a": [[0.1, 0.2]]}, False), ([0.1], False), ({"a": None}, False), (None, True)])))
@profile(12)
def test_intervention_grid(values):
    values, valid = values
    model = _query_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            grid = intervention_grid(model, torch.rand(1, 3, 16, 16), values, num=2)
        except Exception as err:
            assert_clean_error(err, (ValueError,))
            assert not valid, f"valid values refused: {err}"
            return
    assert valid, f"accepted bad values {values!r}"
    assert all(finite(imgs) for _, imgs in grid.values())


@pytest.mark.parametrize("concept", ["zz", "", 3])
def test_unit_conversion_names_an_unknown_concept(concept):
    model = _query_model()
    for f in (model.normalise, model.denormalise):
        with pytest.raises(ValueError) as info:
            f(torch.tensor(1.0), concept)
        assert_clean_error(info.value, (ValueError,), ("unknown concept",))


@pytest.mark.parametrize("threshold, relative", [(float("nan"), 0.2), (-1.0, 0.2), (0.02, "x"), (0.02, float("inf"))])
def test_graph_threshold_is_checked(threshold, relative):
    with pytest.raises(ValueError) as info:
        _query_model().graph(threshold=threshold, relative=relative)
    assert_clean_error(info.value, (ValueError,), ("threshold", "relative"))


# ---------------------------------------------------------------------------------------------------
# the command line, in-process
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("cli"))


DO_ITEMS = st.sampled_from(["a=0.5", "b=-0.2", "c=1", "a=abc", "a:1", "zz=1", "=1", "a=nan", "a=inf", "a=1e40", "a=",
                            "a==1", " a = 0.3 "])
INDEX = st.sampled_from(["0", "3", "-1", "99", "x"])


@given(items=st.lists(DO_ITEMS, min_size=1, max_size=2), index=INDEX)
@profile(10)
def test_cli_counterfactual_arguments(cli_run, tmp_path_factory, capsys, items, index):
    out = tmp_path_factory.mktemp("cf") / "cf.png"
    argv = ["counterfactual", cli_run, *[a for item in items for a in ("--do", item)], "--index", index, "--out", out]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        code, err = cli(argv, capsys)
    _check_cli(code, err)
    valid = all(re.fullmatch(r"\s*[abc]\s*=\s*-?[0-9.]+\s*", i) for i in items) and index in ("0", "3")
    assert (code == 0) == valid, (argv, code, err)


@given(concepts=st.lists(st.sampled_from(["a", "b", "zz"]), max_size=2),
       values=st.one_of(st.none(), st.lists(st.sampled_from(["0.1", "9", "nan", "abc"]), min_size=1, max_size=2)),
       sweep=st.sampled_from(["2", "0", "-1", "x"]))
@profile(8)
def test_cli_intervene_arguments(cli_run, tmp_path_factory, capsys, concepts, values, sweep):
    out = tmp_path_factory.mktemp("iv") / "grid.png"
    argv = ["intervene", cli_run, *[a for c in concepts for a in ("--concept", c)], "--sweep", sweep, "--out", out]
    if values is not None:
        argv += ["--values", *values]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        code, err = cli(argv, capsys)
    _check_cli(code, err)
    valid = ("zz" not in concepts and sweep == "2" if values is None else
             len(concepts) == 1 and "zz" not in concepts and all(v in ("0.1", "9") for v in values) and sweep != "x")
    assert (code == 0) == valid, (argv, code, err)


def _check_cli(code, err):
    """Exit 0, or 2 with one readable line (argparse's own errors: its usage, then one error line)."""
    assert code in (0, 2), (code, err)
    assert "Traceback" not in err
    if code == 2:
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        if lines[0].startswith("usage:"):
            assert re.match(r"pyro-causalvae.*: error: ", lines[-1]), err
        else:
            assert len(lines) == 1 and lines[0].startswith("pyro-causalvae: error:"), err
            assert not RAW.search(lines[0]), err


# ---------------------------------------------------------------------------------------------------
# analysis.to_inference_data (ArviZ)
# ---------------------------------------------------------------------------------------------------
@given(x=query_images(), num_samples=arg([1, 3], [0, -2, 1.5, True]), num_chains=arg([1, 2], [0, "2"]),
       u=st.sampled_from([(None, True), ("ok", True), ("nan_entry", True), ("inf", False), ("wrong", False), ("text", False)]),
       units=arg(["natural", "normalised"], ["si"]), predictive=arg([False, True, "sample"], ["yes", 2]))
@profile(25)
def test_to_inference_data(x, num_samples, num_chains, u, units, predictive):
    from pyro_causalvae.analysis import get_group, to_inference_data

    (x, x_ok), (S, s_ok), (C, c_ok), (u_kind, u_ok), (units, units_ok), (pp, pp_ok) = x, num_samples, num_chains, u, units, predictive
    n = 1 if len(x.shape) == 3 else x.shape[0]
    u = {None: None, "ok": torch.rand(n, 3), "nan_entry": torch.tensor([[float("nan"), 0.0, 0.0]] * n),
         "inf": torch.full((n, 3), float("inf")), "wrong": torch.rand(n, 2), "text": "labels"}[u_kind]
    valid = x_ok and s_ok and c_ok and u_ok and units_ok and pp_ok
    try:
        data = to_inference_data(_query_model(), x, u, num_samples=S, num_chains=C, posterior_predictive=pp, seed=0,
                                 units=units)
    except Exception as err:
        assert_clean_error(err, (ValueError,))
        assert not valid, f"valid arguments refused: {err}"
        return
    assert valid, "invalid arguments accepted"
    post = get_group(data, "posterior")
    assert post["concepts"].shape == (C, S, n, 3)
    assert np.isfinite(post["concepts"].values).all()
    if pp:
        assert np.isfinite(get_group(data, "posterior_predictive")["x"].values).all()
