"""Interventions and counterfactuals (pyro_causalvae.queries) on a tiny chain model.

    a --> b --> c        d
"""

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer.reparam import TransformReparam
from torch.testing import assert_close

from pyro_causalvae import CausalVAE
from pyro_causalvae.queries import posterior_mean

CONCEPTS = ("a", "b", "c", "d")
LOC = torch.tensor([10.0, 0.0, 0.0, 0.0])
SCALE = torch.tensor([2.0, 1.0, 1.0, 1.0])


@pytest.fixture
def model():
    m = CausalVAE(CONCEPTS, (3, 16, 16), style_dim=2, graph=[("a", "b"), ("b", "c")], channels=8, hidden=16,
                  mechanism_hidden=8, label_loc=LOC, label_scale=SCALE)
    return m.eval()


def images(n=5):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def test_counterfactual_moves_descendants_only_and_hits_the_value(model):
    x = images()
    out = model.counterfactual(x, do={"a": 11.0})  # natural units: normalised 0.5
    assert out["images"].shape == (1, 5, 3, 16, 16) and out["concepts"].shape == (1, 5, 4)
    cf, fact = out["concepts"][0], out["factual_concepts"][0]
    assert_close(cf[:, 0], torch.full((5,), 11.0))
    assert (cf[:, 1] - fact[:, 1]).abs().min() > 0  # child
    assert (cf[:, 2] - fact[:, 2]).abs().max() > 0  # grandchild
    assert torch.equal(cf[:, 3], fact[:, 3])  # non-descendant: exactly its abducted value
    # the factual concepts at the posterior mean are the encoder's means
    assert_close(out["factual_concepts"][0], model.denormalise(model.encode(x)))
    assert_close(out["factual_images"][0], model.reconstruct(x))


def test_labels_are_held_in_the_abduction(model):
    x = images()
    u = torch.full((5, 4), float("nan"))
    u[:, 1] = torch.linspace(-0.5, 0.5, 5)  # b's labels, natural units (loc 0, scale 1)
    out = model.counterfactual(x, u=u, do={"a": 11.0})
    assert_close(out["factual_concepts"][0][:, 1], u[:, 1])
    enc = model.denormalise(model.encode(x))
    assert_close(out["factual_concepts"][0][:, [0, 2, 3]], enc[:, [0, 2, 3]])


def test_counterfactual_equals_the_handler_composition_written_by_hand(model):
    x = images()
    do = {"b": torch.tensor(0.3)}
    out = model.counterfactual(x, do=do, units="normalised")
    config = {c: TransformReparam() for c in CONCEPTS}
    guide_trace = poutine.trace(posterior_mean(model.guide)).get_trace(x)  # abduction: q(c, style | x) ...
    factual = poutine.trace(poutine.reparam(poutine.replay(model.model, trace=guide_trace), config=config)
                            ).get_trace(None, None, 5)  # ... and each concept's noise "<c>_base"
    noise = {n: s["value"] for n, s in factual.nodes.items() if n.endswith("_base") or n == "style"}
    intervened = poutine.reparam(poutine.do(model.model, data=do), config=config)  # action
    cf = poutine.trace(poutine.condition(intervened, data=noise)).get_trace(None, None, 5)  # prediction
    # equal to float rounding (the library holds non-descendants at their factual value exactly)
    assert_close(out["images"][0], cf.nodes["x"]["value"], rtol=0, atol=1e-4)
    assert_close(out["concepts"][0], cf.nodes["_RETURN"]["value"], rtol=0, atol=1e-5)


def test_sampled_abduction_and_several_concepts(model):
    x = images(3)
    pyro.set_rng_seed(0)
    out = model.counterfactual(x, do={"a": 9.0, "d": torch.tensor([0.1, 0.2, 0.3])}, num_samples=4, abduction="sample")
    assert out["images"].shape == (4, 3, 3, 16, 16)
    assert_close(out["concepts"][..., 0], torch.full((4, 3), 9.0))
    assert_close(out["concepts"][..., 3], torch.tensor([0.1, 0.2, 0.3]).expand(4, 3))
    assert not torch.allclose(out["factual_concepts"][0], out["factual_concepts"][1])  # different draws


def test_intervene_samples_images_under_do(model):
    out = model.intervene({"b": 0.5}, num_samples=6)
    assert out["images"].shape == (6, 3, 16, 16)
    assert_close(out["concepts"][:, 1], torch.full((6,), 0.5))
    assert (out["images"] >= 0).all() and (out["images"] <= 1).all()
    per_sample = model.intervene({"a": torch.linspace(9, 11, 6)}, num_samples=6)
    assert_close(per_sample["concepts"][:, 0], torch.linspace(9, 11, 6))


def test_value_outside_observed_range_warns(model):
    with pytest.warns(UserWarning, match=r"do\['a'\].*outside the concept's observed range \[8, 12\]"):
        model.intervene({"a": 20.0}, num_samples=2)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: m.intervene({"zz": 1.0}), "unknown concept 'zz'"),
        (lambda m: m.intervene({"a": float("nan")}), "not finite"),
        (lambda m: m.intervene({"a": 1.0}, num_samples=0), "num_samples"),
        (lambda m: m.intervene({}, num_samples=2), "do is empty"),
        (lambda m: m.intervene({"a": 1.0}, units="kelvin"), "units"),
        (lambda m: m.counterfactual(torch.rand(2, 3, 8, 8), do={"a": 1.0}), r"x must have shape \[N, 3, 16, 16\]"),
        (lambda m: m.counterfactual(torch.rand(2, 3, 16, 16) + 1, do={"a": 10.0}), r"values in \[0, 1\]"),
        (lambda m: m.counterfactual(images(2), do={"a": torch.ones(3)}), r"shape \[2\]"),
        (lambda m: m.counterfactual(images(2), do={"a": 10.0}, num_samples=2), "abduction='sample'"),
        (lambda m: m.counterfactual(images(2)), "needs do"),
    ],
)
def test_bad_queries_are_refused(model, call, match):
    with pytest.raises(ValueError, match=match):
        call(model)
