"""MIC / normalised TIC against minepy 1.2.6 reference values.

The references live in tests/fixtures/minepy_reference.json: a recipe per case (generator, n,
seed, alpha, c) for ``make_case`` below, and minepy's MIC and normalised TIC.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from pyro_causalvae.metrics.mic import mic_matrix, mic_tic

FIXTURE = Path(__file__).parent / "fixtures" / "minepy_reference.json"


def make_case(generator, n, seed):
    """Deterministic data of a fixture recipe: (x, y), each [n].

    The fixtures were produced from this very function: keep it unchanged.
    """
    rng = np.random.default_rng(seed)
    if generator == "linear":
        x = rng.uniform(0, 1, n)
        y = x.copy()
    elif generator == "noisy_linear":
        x = rng.uniform(0, 1, n)
        y = x + rng.normal(0, 0.3, n)
    elif generator == "sine":
        x = rng.uniform(0, 1, n)
        y = np.sin(4 * np.pi * x) + rng.normal(0, 0.1, n)
    elif generator == "independent":
        x = rng.uniform(0, 1, n)
        y = rng.uniform(0, 1, n)
    elif generator == "parabola":
        x = rng.uniform(-1, 1, n)
        y = x**2 + rng.normal(0, 0.05, n)
    elif generator == "int_ties":  # x in {0..4}, y continuous
        x = rng.integers(0, 5, n).astype(float)
        y = x + rng.normal(0, 1.0, n)
    elif generator == "int_both":  # both in {0..4}
        x = rng.integers(0, 5, n).astype(float)
        y = (x + rng.integers(0, 3, n)) % 5
    elif generator == "constantish":  # y is 0 for most samples
        x = rng.normal(0, 1, n)
        y = np.where(rng.uniform(0, 1, n) < 0.02, 1.0, 0.0) + (x > 1.5)
    elif generator == "rounded_noisy":  # many ties on both axes
        x = np.round(rng.normal(0, 1, n), 1)
        y = np.round(np.exp(x) + rng.normal(0, 0.5, n), 1)
    elif generator == "constant":
        x = rng.uniform(0, 1, n)
        y = np.zeros(n)
    else:
        raise KeyError(generator)
    return x, y


REF = json.loads(FIXTURE.read_text())
CASES = REF["cases"]


def _id(case):
    return f"{case['generator']}-n{case['n']}-a{case['alpha']}-c{case['c']}"


def test_fixture_provenance():
    assert REF["reference"] == "minepy"
    assert REF["minepy_version"] == "1.2.6"
    assert {case["n"] for case in CASES} >= {300, 1000, 2000}


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_agrees_with_minepy(case):
    x, y = make_case(case["generator"], case["n"], case["seed"])
    mic, tic = mic_tic(x, y, alpha=case["alpha"], c=case["c"])
    assert abs(mic - case["mic"]) < 0.01
    assert abs(tic - case["tic"]) < 0.01
    # minepy's swapped call gives the same numbers up to rounding (its matrix for (y, x) is
    # the transpose of the one for (x, y)), and so does ours (checked on the smaller cases).
    assert abs(case["mic_swapped"] - case["mic"]) < 1e-9
    assert abs(case["tic_swapped"] - case["tic"]) < 1e-9
    if case["n"] > 1000:
        return
    mic_s, tic_s = mic_tic(y, x, alpha=case["alpha"], c=case["c"])
    assert abs(mic_s - mic) < 1e-9
    assert abs(tic_s - tic) < 1e-9


def test_identity_gives_one():
    x = np.random.default_rng(1).normal(size=500)
    mic, tic = mic_tic(x, x)
    assert mic == pytest.approx(1.0, abs=1e-12)
    # minepy gives 0.9999989186182724: rows of unequal size (500 is not a multiple of 3, ...)
    # put H(Q) slightly below log(rows) in some cells, so TIC is just under 1.
    assert tic == pytest.approx(0.9999989186182724, abs=1e-9)


def test_independent_is_small():
    case = next(c for c in CASES if c["generator"] == "independent" and c["n"] == 2000)
    assert case["mic"] < 0.15  # minepy's own value (about 0.098)
    x, y = make_case("independent", 2000, case["seed"])
    assert mic_tic(x, y)[0] < 0.15


def test_constant_gives_zero():
    x, _ = make_case("linear", 50, 3)
    assert mic_tic(x, np.ones(50)) == (0.0, 0.0)


def test_invariant_to_monotone_transforms():
    x, y = make_case("sine", 400, 7)
    base = mic_tic(x, y)
    for f in (np.exp, lambda v: v**3 + 2.0 * v, lambda v: np.arctan(3.0 * v)):
        fx = f(x)
        order = np.argsort(x)
        assert np.all(np.diff(fx[order]) > 0)  # order kept, no values merged
        mic, tic = mic_tic(fx, y)
        assert abs(mic - base[0]) < 1e-9
        assert abs(tic - base[1]) < 1e-9
    mic, tic = mic_tic(x, np.exp(y))
    assert abs(mic - base[0]) < 1e-9


def test_matrix_matches_pairwise():
    rng = np.random.default_rng(11)
    n = 200
    X = np.column_stack([rng.uniform(size=n), rng.integers(0, 4, n), rng.normal(size=n)])
    Y = np.column_stack([np.sin(6 * X[:, 0]), X[:, 1] + rng.normal(0, 0.5, n)])
    M, T = mic_matrix(X, Y)
    assert M.shape == T.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            expected = mic_tic(X[:, i], Y[:, j])
            assert (M[i, j], T[i, j]) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "x, y, kwargs, match",
    [
        (np.arange(10.0), np.arange(9.0), {}, "same length"),
        (np.arange(3.0), np.arange(3.0), {}, "at least n = 4"),
        (np.array([1.0, np.nan, 2, 3, 4]), np.arange(5.0), {}, "NaN or inf"),
        (np.arange(5.0), np.array([1.0, np.inf, 2, 3, 4]), {}, "NaN or inf"),
        (np.ones((5, 2)), np.arange(5.0), {}, "1-d"),
        (np.arange(5.0), np.arange(5.0), {"alpha": 0.0}, "alpha"),
        (np.arange(5.0), np.arange(5.0), {"alpha": 1.5}, "alpha"),
        (np.arange(5.0), np.arange(5.0), {"c": 0.5}, "c must be"),
        (["a", "b", "c", "d"], np.arange(4.0), {}, "numeric"),
    ],
)
def test_bad_input(x, y, kwargs, match):
    with pytest.raises(ValueError, match=match):
        mic_tic(x, y, **kwargs)


def test_matrix_bad_input():
    with pytest.raises(ValueError, match="2-d"):
        mic_matrix(np.arange(10.0), np.ones((10, 2)))
    with pytest.raises(ValueError, match="same number of rows"):
        mic_matrix(np.ones((10, 2)), np.ones((9, 2)))
    with pytest.raises(ValueError, match="NaN or inf"):
        mic_matrix(np.full((10, 2), np.nan), np.ones((10, 2)))


def test_protocol_scores_known_cases():
    from pyro_causalvae.metrics import mic_tic_scores

    rng = np.random.default_rng(0)
    labels = rng.uniform(-1, 1, (400, 3))
    perfect = mic_tic_scores(np.tanh(labels), labels, ["a", "b", "c"])  # monotone readings: MIC 100
    assert perfect["mic"] == pytest.approx(100.0)
    assert perfect["per_concept"]["b"]["mic"] == pytest.approx(100.0)
    shuffled = mic_tic_scores(labels[:, [1, 2, 0]], labels, ["a", "b", "c"])  # each latent reads another label
    assert shuffled["mic"] < 30 and max(shuffled["mic_matrix"][0]) == pytest.approx(100.0)
    with pytest.raises(ValueError, match=r"shape \[N, 3\]"):
        mic_tic_scores(labels[:, :2], labels, ["a", "b", "c"])
