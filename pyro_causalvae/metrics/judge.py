"""An independent judge: a small CNN that reads concept labels off images.

Trained on simulator images only (labels sampled from the ground-truth SCM, rendered by it), never on
a model's outputs, so that it can score generated counterfactuals without sharing the model's biases.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm


class Judge(nn.Module):
    """CNN regressor ``[N, C, H, W]`` images in [0, 1] -> ``[N, K]`` normalised labels."""

    def __init__(self, channels: int, num_concepts: int, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 4, 2, 1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(2 * width * 16, 128), nn.SiLU(), nn.Linear(128, num_concepts),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2.0 - 1.0)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        self.eval()
        return torch.cat([self(x[i : i + batch_size].float()) for i in range(0, x.shape[0], batch_size)])


def train_judge(scm, size: int = 96, num_images: int = 20000, epochs: int = 6, batch_size: int = 128,
                lr: float = 2e-3, seed: int = 0, progress: bool = True) -> Judge:
    """Train a :class:`Judge` on ``num_images`` fresh simulator images of ``scm`` (labels sampled from it).

    :returns: the judge, in eval mode; it predicts normalised labels (``scm.normalise``).
    """
    torch.manual_seed(seed)
    labels = scm.sample(num_images, seed=seed)
    images = scm.render(labels, size=size)
    target = scm.normalise(labels).float()
    judge = Judge(images.shape[1], target.shape[1])
    opt = torch.optim.Adam(judge.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * (num_images // batch_size))
    g = torch.Generator().manual_seed(seed)
    bar = tqdm(total=epochs * (num_images // batch_size), disable=not progress, desc="judge", unit="step")
    judge.train()
    for _ in range(epochs):
        perm = torch.randperm(num_images, generator=g)
        for b in range(num_images // batch_size):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            loss = ((judge(images[idx].float() / 255.0) - target[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
    bar.close()
    return judge.eval()
