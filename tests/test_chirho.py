"""ChiRho interop: under ChiRho's counterfactual handlers the model gives the library's counterfactual,
with no adaptor: each concept site's distribution is its structural equation, so ChiRho abducts the
exogenous noise of every conditioned concept itself.

    a --> b --> c        d
"""

import pytest
import torch
from torch.testing import assert_close

chirho = pytest.importorskip("chirho")  # the optional extra: pip install "pyro_causalvae[chirho]"
from chirho.counterfactual.handlers import MultiWorldCounterfactual, TwinWorldCounterfactual  # noqa: E402
from chirho.interventional.handlers import do  # noqa: E402
from chirho.observational.handlers import condition  # noqa: E402

from pyro_causalvae import CausalVAE  # noqa: E402

N = 5
CONCEPTS = ("a", "b", "c", "d")


@pytest.fixture
def setup():
    model = CausalVAE(CONCEPTS, (3, 16, 16), style_dim=2, graph=[("a", "b"), ("b", "c")],
                      channels=8, hidden=16, mechanism_hidden=8).eval()
    x = torch.rand(N, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return model, x


def _worlds(t, event_shape=()):
    """ChiRho puts the world index in a batch dim left of the data plate: [2, ..., N, *event] -> [2, N, *event]."""
    return t.reshape(2, N, *event_shape)


@pytest.mark.parametrize("handler", [TwinWorldCounterfactual, MultiWorldCounterfactual])
def test_chirho_counterfactual_equals_library_counterfactual(setup, handler):
    model, x = setup
    v = torch.tensor(0.7)
    ours = model.counterfactual(x, do={"a": v}, units="normalised")
    # the factual world is the image's abducted concepts and style (the guide's posterior mean)
    post = model.posterior(x)
    observed = {c: post.loc[:, i].detach() for i, c in enumerate(CONCEPTS)}
    observed["style"] = post.style_loc.detach()
    with handler():
        with do(actions={"a": v}):
            with condition(data=observed):
                c_all = model.model(None, None, N)
    concepts = _worlds(c_all, (4,))
    assert_close(concepts[0], ours["factual_concepts"][0], atol=1e-5, rtol=0)
    assert_close(concepts[1], ours["concepts"][0], atol=1e-5, rtol=0)
    assert_close(concepts[1][:, 0], torch.full((N,), 0.7))
    assert (concepts[1][:, 2] - concepts[0][:, 2]).abs().max() > 0  # multi-hop, in ChiRho's worlds too
    assert torch.equal(concepts[1][:, 3], concepts[0][:, 3])  # d is not a descendant of a
    images = model.decode(concepts, observed["style"])
    assert_close(images[1], ours["images"][0], atol=1e-4, rtol=0)
