"""ChiRho interop: under ChiRho's counterfactual handlers the model gives the library's counterfactual.

    a --> b --> c        d
"""

import pyro.poutine as poutine
import pytest
import torch
from torch.testing import assert_close

chirho = pytest.importorskip("chirho")  # the optional extra: pip install "pyro_causalvae[chirho]"
from chirho.counterfactual.handlers import MultiWorldCounterfactual, TwinWorldCounterfactual  # noqa: E402
from chirho.interventional.handlers import do  # noqa: E402
from chirho.observational.handlers import condition  # noqa: E402

from pyro_causalvae import CausalVAE  # noqa: E402
from pyro_causalvae.queries import posterior_mean  # noqa: E402

N = 5


@pytest.fixture
def setup():
    model = CausalVAE(("a", "b", "c", "d"), (3, 16, 16), concept_dim=2, graph=[("a", "b"), ("b", "c")],
                      channels=8, hidden=16, mechanism_hidden=8).eval()
    x = torch.rand(N, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return model, x


def _worlds(t, event_shape):
    """ChiRho puts the world index in a batch dim left of the data plate: [2, ..., N, *event] -> [2, N, *event]."""
    return t.reshape(2, N, *event_shape)


@pytest.mark.parametrize("handler", [TwinWorldCounterfactual, MultiWorldCounterfactual])
def test_chirho_counterfactual_equals_library_counterfactual(setup, handler):
    model, x = setup
    v = torch.tensor(0.7)
    ours = model.counterfactual(x, do={"a": v}, units="normalised")
    guide_trace = poutine.trace(posterior_mean(model.guide)).get_trace(x)  # abduction, as in the library
    with handler():
        with do(actions={"a": v}):
            with condition(data={"x": x}):
                tr = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(None, None, N)
    images = _worlds(tr.nodes["x_counterfactual"]["fn"].mean, (3, 16, 16))
    assert_close(images[0], ours["factual_images"][0])
    assert_close(images[1], ours["images"][0])
    blocks = {c: _worlds(tr.nodes[c]["value"], (2,)) for c in "abc"}
    assert_close(blocks["a"][1], torch.full((N, 2), 0.7))
    assert (blocks["c"][1] - blocks["c"][0]).abs().max() > 0  # multi-hop, in ChiRho's worlds too
    # d is not a descendant of a: ChiRho does not even split it into worlds (one value, shared)
    assert tr.nodes["d"]["value"].shape == (N, 2)
