"""A run killed with SIGKILL in the middle of an epoch resumes from its last checkpoint and ends with the
parameters of an uninterrupted run (CPU, same seed).

    a --> b --> c        (tests/tiny.py; the killed process runs tests/kill_worker.py)
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kill_worker import SETTINGS
from tiny import CONCEPTS, params, tiny_dataset, tiny_model

from pyro_causalvae import checkpoint as ckpt
from pyro_causalvae import CausalVAE, fit
from pyro_causalvae.cli import _run_architecture

HERE = Path(__file__).resolve().parent


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(HERE / "kill_worker.py"), str(run)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # 3 steps an epoch, a checkpoint every 2 steps: step 4 is epoch 2, batch 1 of 3. Kill right after it.
    target = run / "checkpoint-00000004.pt"
    deadline = time.monotonic() + 300
    while not target.exists():
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the worker wrote no step-4 checkpoint in 300 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run))
    assert (state["epoch"], state["batch"], state["step"]) == (1, 1, 4)  # mid-epoch: 1 epoch + 1 batch done

    torch.manual_seed(0)
    resumed = tiny_model()  # a new process rebuilds the model; the checkpoint restores everything
    hist_resumed = fit(resumed, tiny_dataset(), out_dir=run, resume=True, **SETTINGS)

    torch.manual_seed(0)
    full = tiny_model()
    hist_full = fit(full, tiny_dataset(), **SETTINGS)
    for k, v in params(full).items():
        assert torch.equal(params(resumed)[k], v), k
    assert resumed.order == full.order
    for a, b in zip(hist_resumed.rows, hist_full.rows, strict=True):
        assert {k: a[k] for k in ("loss", "recon", "kl", "h", "step")} == {k: b[k] for k in ("loss", "recon", "kl", "h", "step")}
    assert hist_resumed.graph_search["order"] == hist_full.graph_search["order"]
    assert not list(run.glob(".*.tmp"))  # a temporary file of a write cut short is removed by the next save


def test_a_run_saved_before_the_spline_settings_resumes_with_its_own_architecture(tmp_path):
    """A run whose config.json predates ``noise_bins`` / ``noise_bound`` (8 bins on [-3, 3] then, 16 on [-5, 5]
    now): ``train --resume`` builds the run's architecture (``cli._run_architecture``), and ``fit`` refuses a
    model of today's defaults by naming the setting, rather than loading mismatched tensors."""
    run = tmp_path / "old"
    settings = dict(epochs=1, batch_size=16, seed=5, warm_start_steps=10, equation_steps=10, progress=False)
    old = CausalVAE(CONCEPTS, (3, 16, 16), style_dim=2, channels=8, hidden=16, mechanism_hidden=8, noise_bins=8, noise_bound=3.0)
    fit(old, tiny_dataset(), out_dir=run, **settings)
    cfg_path = run / ckpt.CONFIG
    cfg = json.loads(cfg_path.read_text())
    del cfg["model"]["noise_bins"], cfg["model"]["noise_bound"]  # as an earlier version wrote it
    cfg_path.write_text(json.dumps(cfg))

    arch = _run_architecture(run)
    assert (arch["noise_bins"], arch["noise_bound"], arch["mechanism_hidden"], arch["hidden"]) == (8, 3.0, 8, 16)
    today = CausalVAE(CONCEPTS, (3, 16, 16), style_dim=2, channels=8, hidden=16, mechanism_hidden=8)
    with pytest.raises(ValueError, match=r"cannot resume .*noise_bins \(the run: 8, now: 16\); noise_bound \(the run: 3\.0, now: 5\.0\)"):
        fit(today, tiny_dataset(), out_dir=run, resume=True, **{**settings, "epochs": 2})
    resumed = CausalVAE(CONCEPTS, (3, 16, 16), style_dim=2, **arch)
    hist = fit(resumed, tiny_dataset(), out_dir=run, resume=True, **{**settings, "epochs": 2})
    assert len(hist.rows) == 2 and resumed.noise_splines.bound == 3.0
