"""A training run for tests/test_resume.py to SIGKILL in the middle of an epoch:

    python tests/kill_worker.py RUN_DIR

Each step sleeps 0.2 s (in the loss, which changes no number) so that the test can kill it between
two checkpoints.
"""

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pyro_causalvae.train as T  # noqa: E402
from tiny import tiny_dataset, tiny_model  # noqa: E402

SETTINGS = dict(epochs=3, batch_size=16, seed=5, al_every=2, checkpoint_every=2, warm_start_steps=50, progress=False,
                equation_steps=100)  # explicit: the in-process reference runs under the tests' conftest


def slow(fn):
    def wrapped(*args, **kwargs):
        time.sleep(0.2)
        return fn(*args, **kwargs)

    return wrapped


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.manual_seed(0)
    T.loss_terms = slow(T.loss_terms)
    T.fit(tiny_model(), tiny_dataset(), out_dir=sys.argv[1], **SETTINGS)
