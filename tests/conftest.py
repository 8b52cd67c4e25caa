import os

import pyro
import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_pyro():
    """Each test starts with an empty param store, a fixed seed and Pyro's validation on."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    with pyro.validation_enabled(True):
        yield


@pytest.fixture(autouse=True)
def _few_equation_steps(monkeypatch):
    """Tests fit the structural equations for 100 steps (``fit``'s default is 1000): small data, few steps.
    Tests of the warm start itself pass ``equation_steps`` explicitly."""
    from pyro_causalvae import train

    monkeypatch.setattr(train, "EQUATION_STEPS", 100)
