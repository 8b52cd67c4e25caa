"""Quickstart, as a plain script: train a CausalVAE on Pendulum, look at the graph, intervene.

    python examples/quickstart.py                 # about 2 minutes on 2 CPU cores
    python examples/quickstart.py --epochs 1 --size 32   # a smoke run in seconds

Writes figures to ``runs/quickstart/``.
"""

import argparse
from pathlib import Path

import pyro
import torch

from pyro_causalvae import CausalVAE, fit
from pyro_causalvae.datasets import Pendulum
from pyro_causalvae.metrics import shd
from pyro_causalvae.plotting import plot_graph, plot_intervention_grid, plot_losses, plot_reconstructions
from pyro_causalvae.queries import intervention_grid

ap = argparse.ArgumentParser()
ap.add_argument("--epochs", type=int, default=12)
ap.add_argument("--size", type=int, default=96)
ap.add_argument("--out", default="runs/quickstart")
args = ap.parse_args()
out = Path(args.out)

# 1. Data: the paper's Pendulum world, with its ground-truth SCM in train.scm.
train, test = Pendulum(split="train", size=args.size), Pendulum(split="test", size=args.size)
print(train)

# 2. The model: one structural-equation site per concept; the graph is learned.
pyro.set_rng_seed(0)
model = CausalVAE(train.concepts, train.image_shape, label_loc=train.label_loc, label_scale=train.label_scale,
                  decoder_groups=train.object_groups)
history = fit(model, train, epochs=args.epochs)
plot_losses(history, out / "losses.png")

# 3. The learned graph, against the true one.
learned = model.graph()
print("learned:", list(learned.edges()), "SHD", shd(learned, train.graph))
plot_graph(learned, out / "graph.png", true_graph=train.graph)

# 4. Reconstructions and counterfactuals of test images.
x = test.images[:8].float() / 255
plot_reconstructions(x, model.reconstruct(x), out / "reconstructions.png")
cf = model.counterfactual(x, do={"light_angle": 1.2})  # radians
print("shadow length before / after do(light_angle = 1.2):",
      cf["factual_concepts"][0, :4, 2].tolist(), cf["concepts"][0, :4, 2].tolist())
grid = intervention_grid(model, x[:1])
plot_intervention_grid(x[0], grid, out / "intervention_grid.png", reconstruction=model.reconstruct(x[:1])[0])
print("figures in", out)
assert torch.isfinite(cf["images"]).all()
