"""Semi-supervised training: a tenth of the images labelled (issue target; not a test).

    python benchmarks/semi_supervised.py                          # Pendulum and Flow, seeds 0 1 2
    python benchmarks/semi_supervised.py --dataset pendulum --seeds 0 --epochs 10
    python benchmarks/semi_supervised.py --seeds 0 --epochs 6 --fraction 0.01 --runs runs/semi-f01   # 1 %

For each (dataset, seed), a seeded 10 % of the training images keep their labels and two models are
trained at the default settings:

- ``semi``: every training image, the other 90 % unlabelled (labels NaN: the guide infers them), with
  ``fit``'s default ``labelled_share`` (half of each batch labelled; ``--labelled-share 0``: plain batches);
- ``alone``: the labelled 10 % only, for as many optimisation steps as ``semi`` (in batches of 64, or of
  all of them when fewer are labelled, ``--fraction 0.01``).

Each is scored on the test split: MIC / TIC x 100 (the project's protocol), the learned graph's SHD, and
two finer figures that do not saturate when MIC does: the concept readings' mean absolute error (the
encoder's posterior mean against the labels, normalised units, mean over the concepts) and the
reconstruction's mean squared error per pixel. The same two figures are printed first for two known-bad
references, so their scale can be read: an untrained model of the same configuration, and a constant
guess (the training labels' mean for every concept, the mean training image for every reconstruction).
Runs go to RUNS/<dataset>-seed<k>-<variant> (a finished run there is reused). ``--noise``, ``--decoder``,
``--equation-steps``, ``--encoder-beta`` and ``--reading-warmup`` train another setting than the default (use
another ``--runs`` folder for it); ``--trace-every N`` prints the concept readings every N steps. E.g.

    python benchmarks/semi_supervised.py --dataset flow --variants semi --decoder joint --runs runs/semi-24j
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pyro
import torch

from pyro_causalvae import CausalVAE, fit, load_model
from pyro_causalvae import checkpoint as ckpt
from pyro_causalvae.data_feed import ShardedBatches
from pyro_causalvae.datasets import ConceptImageDataset, Flow, Pendulum
from pyro_causalvae.loss import LossWeights
from pyro_causalvae.metrics import evaluate_mic_tic, shd


def split(train, fraction: float, seed: int) -> torch.Tensor:
    """Indices of the labelled images (a seeded random subset)."""
    g = torch.Generator().manual_seed(10_000 + seed)
    n = train.images.shape[0]
    return torch.randperm(n, generator=g)[: max(16, round(fraction * n))].sort().values


def variant_data(train, labelled: torch.Tensor, variant: str) -> ConceptImageDataset:
    kw = dict(concepts=train.concepts, graph=train.graph, label_loc=train.label_loc, label_scale=train.label_scale,
              name=f"{train.name}-{variant}")
    if variant == "alone":
        return ConceptImageDataset(train.images[labelled], train.labels[labelled], **kw)
    labels = torch.full_like(train.labels, float("nan"))
    labels[labelled] = train.labels[labelled]
    return ConceptImageDataset(train.images, labels, **kw)


def semi_steps(train, labelled: torch.Tensor, epochs: int, share: float, batch: int = 64) -> int:
    """Optimisation steps of the ``semi`` run (batches per epoch as ``fit`` draws them)."""
    rows = torch.zeros(train.images.shape[0], dtype=torch.bool)
    rows[labelled] = True
    return epochs * len(ShardedBatches(rows.numel(), batch, 0, 0, labelled=rows, labelled_share=share))


@torch.no_grad()
def test_errors(model: CausalVAE, test, batch: int = 256) -> dict:
    """On the test split: the concept readings' MAE (normalised units; per concept and their mean) and the
    reconstruction's MSE per pixel."""
    abs_err, sq_err, n = torch.zeros(len(test.concepts)), 0.0, 0
    for i in range(0, len(test), batch):
        x, u = test[i : i + batch]  # [B, C, H, W], [B, K] normalised
        abs_err += (model.posterior(x).loc - u).abs().sum(0)
        sq_err += float((model.reconstruct(x) - x).square().mean((1, 2, 3)).sum())
        n += x.shape[0]
    mae = abs_err / n
    return {"concept_mae": float(mae.mean()), "concept_mae_each": [round(float(v), 4) for v in mae],
            "recon_mse": sq_err / n}


@torch.no_grad()
def reference_errors(name: str, seed: int) -> dict:
    """The two finer figures for known-bad references: an untrained model and a constant guess."""
    D = Pendulum if name == "pendulum" else Flow
    train, test = D(split="train"), D(split="test")
    pyro.set_rng_seed(seed)
    untrained = CausalVAE(train.concepts, train.image_shape, label_loc=train.label_loc,
                          label_scale=train.label_scale, decoder_groups=train.object_groups).eval()
    sum_x, sum_u = 0.0, 0.0
    for i in range(0, len(train), 256):
        x, u = train[i : i + 256]  # [B, C, H, W], [B, K] normalised
        sum_x, sum_u = sum_x + x.sum(0), sum_u + u.sum(0)
    mean_x, mean_u = sum_x / len(train), sum_u / len(train)  # [C, H, W], [K]
    abs_err, sq_err, n = torch.zeros(len(test.concepts)), 0.0, 0
    for i in range(0, len(test), 256):
        x, u = test[i : i + 256]
        abs_err += (u - mean_u).abs().sum(0)
        sq_err += float((x - mean_x).square().mean((1, 2, 3)).sum())
        n += x.shape[0]
    return {"untrained": test_errors(untrained, test),
            "constant": {"concept_mae": float((abs_err / n).mean()), "recon_mse": sq_err / n}}


@torch.no_grad()
def trace(out: Path, test, rows: int = 512) -> None:
    """Print, for each checkpoint of the run: the encoder's concept MAE and mean posterior scale on the first
    ``rows`` test images (normalised units), per concept: how the readings evolve during training."""
    x, u = test[0:rows]  # [rows, C, H, W], [rows, K]
    cfg = ckpt.read_config(out)
    for path in ckpt.checkpoints(out):
        model = ckpt.build_model(cfg["model"], str(out / ckpt.CONFIG))
        ckpt.load_state(model, ckpt.load_checkpoint(path), path, out / ckpt.CONFIG)
        post = model.eval().posterior(x)
        mae = (post.loc - u).abs().mean(0)
        print(f"  {out.name} step {int(path.stem.split('-')[1]):>5}: concept MAE "
              f"{[round(float(v), 3) for v in mae]}  mean scale {[round(float(v), 3) for v in post.scale.mean(0)]}",
              flush=True)


def run(name: str, seed: int, variant: str, epochs: int, fraction: float, share: float, runs: Path,
        noise: str | None = None, decoder: str | None = None, equation_steps: int | None = None,
        encoder_beta: float | None = None, reading_warmup: float | None = None, trace_every: int | None = None,
        rereading: float | None = None) -> dict:
    D = Pendulum if name == "pendulum" else Flow
    train, test = D(split="train"), D(split="test")
    labelled = split(train, fraction, seed)
    data = variant_data(train, labelled, variant)
    steps = semi_steps(train, labelled, epochs, share)
    # alone: as many steps as semi; fewer labelled images than a batch of 64 make one batch of them all
    batch = 64 if variant == "semi" else min(64, len(labelled))
    epochs_here = epochs if variant == "semi" else max(1, round(steps / (len(labelled) // batch)))
    out = runs / f"{name}-seed{seed}-{variant}"
    done = ckpt.progress(out)
    t0 = time.perf_counter()
    if done is not None and done["epoch"] >= epochs_here:
        model, how = load_model(out), "reused"
    else:
        pyro.set_rng_seed(seed)
        model = CausalVAE(data.concepts, data.image_shape, label_loc=data.label_loc, label_scale=data.label_scale,
                          decoder_groups=None if decoder == "joint" else data.object_groups,
                          **({"noise": noise} if noise else {}), **({"decoder": decoder} if decoder else {}))
        fit(model, data, epochs=epochs_here, seed=seed, progress=False, out_dir=out, resume=done is not None,
            labelled_share=share, batch_size=batch, equation_steps=equation_steps,
            weights=LossWeights(**({} if encoder_beta is None else {"encoder_beta": encoder_beta}),
                                **({} if rereading is None else {"rereading": rereading})),
            **({} if reading_warmup is None else {"reading_warmup": reading_warmup}),
            **({} if trace_every is None else {"checkpoint_every": trace_every, "keep_last": 1000}))
        how = f"trained in {time.perf_counter() - t0:.0f} s"
    if trace_every is not None:
        trace(out, test)
    res = evaluate_mic_tic(model.eval(), test)
    errors = test_errors(model, test)
    return {**errors, "dataset": name, "seed": seed, "variant": variant, "labelled": len(labelled), "images": len(data),
            "epochs": epochs_here, "mic": res["mic"], "tic": res["tic"], "shd": shd(model.graph(), test.graph), "how": how}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", nargs="+", default=["pendulum", "flow"], choices=["pendulum", "flow"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["semi", "alone"], choices=["semi", "alone"])
    ap.add_argument("--epochs", type=int, default=20, help="epochs of the semi-supervised run")
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--labelled-share", type=float, default=0.5, help="fit's labelled_share for the semi run")
    ap.add_argument("--runs", default="runs/semi")
    ap.add_argument("--noise", help="the model's noise setting (default: CausalVAE's)")
    ap.add_argument("--decoder", help="the model's decoder (default: CausalVAE's)")
    ap.add_argument("--equation-steps", type=int, help="fit's equation_steps (default: fit's)")
    ap.add_argument("--encoder-beta", type=float, help="LossWeights.encoder_beta (default: LossWeights')")
    ap.add_argument("--rereading", type=float, help="LossWeights.rereading (default: LossWeights')")
    ap.add_argument("--reading-warmup", type=float, help="fit's reading_warmup in epochs (default: fit's)")
    ap.add_argument("--trace-every", type=int, help="checkpoint every this many steps and print the concept "
                    "readings' MAE and scale at each (how they evolve)")
    args = ap.parse_args()
    rows = []
    for name in args.dataset:
        ref = reference_errors(name, args.seeds[0])
        for what, r in ref.items():
            print(f"{name:<9} known-bad reference, {what}: concept MAE {r['concept_mae']:.4f}  "
                  f"recon MSE {r['recon_mse']:.5f}", flush=True)
        for seed in args.seeds:
            for variant in args.variants:
                r = run(name, seed, variant, args.epochs, args.fraction, args.labelled_share, Path(args.runs),
                        args.noise, args.decoder, args.equation_steps, args.encoder_beta, args.reading_warmup,
                        args.trace_every, args.rereading)
                rows.append(r)
                print(f"{name:<9} seed {seed} {variant:<6} ({r['labelled']} labelled of {r['images']} images, "
                      f"{r['epochs']} epochs): MIC {r['mic']:.1f}  TIC {r['tic']:.1f}  SHD {r['shd']}  concept MAE "
                      f"{r['concept_mae']:.4f} {r['concept_mae_each']}  recon MSE {r['recon_mse']:.5f}  ({r['how']})", flush=True)
    for name in args.dataset:
        for variant in args.variants:
            sel = [r for r in rows if r["dataset"] == name and r["variant"] == variant]
            if not sel:
                continue
            sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
            mic, tic, mae, mse = ([r[k] for r in sel] for k in ("mic", "tic", "concept_mae", "recon_mse"))
            print(f"{name} {variant}: MIC {statistics.mean(mic):.1f} +- {sd(mic):.1f}, TIC {statistics.mean(tic):.1f} "
                  f"+- {sd(tic):.1f}, SHD 0 in {sum(r['shd'] == 0 for r in sel)} of {len(sel)}, concept MAE "
                  f"{statistics.mean(mae):.4f} +- {sd(mae):.4f}, recon MSE {statistics.mean(mse):.5f} +- {sd(mse):.5f}")


if __name__ == "__main__":
    main()
