"""One rank of the data-parallel test (tests/test_distributed.py), launched as

    torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py --out DIR [--mean-guide] [--run-dir RUN]

Trains the tiny model (tests/tiny.py, a --> b --> c) with a global batch of 8 and writes this rank's
parameters to DIR/rank<r>.pt. ``train`` is also called in-process by the test for the single-process
reference with the same global batch.
"""

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tiny import params, tiny_dataset, tiny_model  # noqa: E402

from pyro_causalvae import fit  # noqa: E402
from pyro_causalvae import loss as L  # noqa: E402

# label_dropout=0: which labels a batch hides is drawn per process, so two ranks and one process would hide
# different labels; without it (and with the mean guide) the three compute the same loss.
SETTINGS = dict(batch_size=8, seed=3, al_every=2, warm_start_steps=50, progress=False, label_dropout=0.0,
                equation_steps=100)  # explicit: the in-process reference runs under the tests' conftest


@contextlib.contextmanager
def mean_guide():
    """The guide's latent sites at their posterior mean: the loss without Monte-Carlo noise, so that one process and
    two ranks (whose noise draws differ) compute the same gradients up to float rounding."""
    orig = L.guide_draws  # the guide's draws of the training loss

    def at_mean(model, post, seen):
        return post.loc, post.style_loc if model.style_dim else None

    L.guide_draws = at_mean
    try:
        yield
    finally:
        L.guide_draws = orig


def train(epochs: int = 2, run: str | None = None, mean: bool = False, resume: bool = False, **kw):
    torch.manual_seed(0)  # the initial weights (DDP also broadcasts rank 0's)
    model = tiny_model()
    with mean_guide() if mean else contextlib.nullcontext():
        hist = fit(model, tiny_dataset(n=32), epochs=epochs, out_dir=run, resume=resume, **{**SETTINGS, **kw})
    return model, hist


def die_after(step: int):
    """A callback that ends this process (as a crash would) once the epoch ending at ``step`` is checkpointed."""
    def callback(epoch, row):
        if row["step"] >= step:
            os._exit(1)
    return callback


if __name__ == "__main__":
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--run-dir")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--mean-guide", action="store_true")
    ap.add_argument("--no-refit", action="store_true", help="fit(refit_equations=False)")
    ap.add_argument("--checkpoint-every", type=int, default=200)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--crash-rank1-at-step", type=int, help="first attempt only (TORCHELASTIC_RESTART_COUNT=0)")
    args = ap.parse_args()
    kw = {"refit_equations": False} if args.no_refit else {}
    if (args.crash_rank1_at_step and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
            and os.environ.get("RANK") == "1"):
        kw["callback"] = die_after(args.crash_rank1_at_step)
    model, hist = train(args.epochs, args.run_dir, args.mean_guide, resume=args.resume,
                        checkpoint_every=args.checkpoint_every, **kw)
    rank = torch.distributed.get_rank()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"params": params(model), "order": list(model.order)}, out / f"rank{rank}.pt")
    (out / f"history{rank}.json").write_text(json.dumps({"rows": hist.rows, "graph_search": hist.graph_search}))
