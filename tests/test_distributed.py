"""Data-parallel training on torch.distributed: torchrun with 2 gloo processes on the CPU, the batch order
and its shards, and the errors of a bad launch.

    a --> b --> c        (tests/tiny.py; the worker is tests/ddp_worker.py)
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from ddp_worker import train
from tiny import params, tiny_dataset, tiny_model

from pyro_causalvae import checkpoint as ckpt
from pyro_causalvae import fit
from pyro_causalvae.data_feed import ShardedBatches, check_batching, epoch_permutation
from pyro_causalvae.distributed import setup

HERE = Path(__file__).resolve().parent


def torchrun(out: Path, *args: str) -> list[dict]:
    """Run tests/ddp_worker.py on 2 CPU processes (gloo); return each rank's parameters and order."""
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "ddp_worker.py"), "--out", str(out), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def test_two_ranks_equal_each_other_and_one_process_with_the_same_global_batch(tmp_path):
    r0, r1 = torchrun(tmp_path, "--mean-guide")
    for k, v in r0["params"].items():
        assert torch.equal(v, r1["params"][k]), k  # bit-identical: gradients all-reduced, same updates
    assert r0["order"] == r1["order"]
    # One process, global batch 8 (the ranks took 4 each). Without Monte-Carlo noise the two compute the
    # same loss; what remains is float rounding (gradient averaging order), measured at 4e-5 while the
    # parameters move by up to 0.9 in these 8 steps. Tolerance: 2e-4 absolute.
    model, _ = train(2, None, mean=True)
    single = params(model)
    torch.manual_seed(0)
    init = params(tiny_model())
    moved = max(float((single[k] - init[k]).abs().max()) for k in init if init[k].is_floating_point() and k != "al.h_prev")
    assert moved > 0.05  # the comparison is not vacuous: the parameters moved
    for k, v in single.items():
        if v.is_floating_point():
            assert_close(r0["params"][k], v, atol=2e-4, rtol=0, msg=k)
    assert r0["order"] == list(model.order)


def test_two_ranks_with_noise_stay_identical_and_the_run_resumes_on_one_process(tmp_path):
    run = tmp_path / "run"
    r0, r1 = torchrun(tmp_path, "--run-dir", str(run), "--checkpoint-every", "3")
    for k, v in r0["params"].items():
        assert torch.equal(v, r1["params"][k]), k
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run))
    assert (state["world_size"], state["epoch"], state["step"]) == (2, 2, 8)
    assert ckpt.read_json(run / ckpt.CONFIG)["fit"]["world_size"] == 2
    # Continue the 2-process run on 1 process (a different world size): it picks up at step 8.
    model, hist = train(3, str(run), resume=True)
    assert [r["step"] for r in hist.rows] == [4, 8, 12]
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run))
    assert (state["world_size"], state["step"]) == (1, 12)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("world", [1, 2, 4])
def test_shards_of_a_global_batch_do_not_depend_on_the_world_size(world):
    n, bs = 37, 8
    full = ShardedBatches(n, bs, seed=1, epoch=2)
    shards = [ShardedBatches(n, bs, seed=1, epoch=2, rank=r, world_size=world, start=1) for r in range(world)]
    assert len(full) == 4 and all(len(s) == 3 for s in shards)
    for b, parts in enumerate(zip(*shards), start=1):
        assert torch.equal(torch.tensor(sum(parts, [])), full.shard(b))
    assert not torch.equal(epoch_permutation(n, 1, 2), epoch_permutation(n, 1, 3))


def test_bad_batching_and_launch_errors(monkeypatch):
    with pytest.raises(ValueError, match="batch_size 10 .* not divisible by the world size 4.*use 8 or 12"):
        check_batching(100, 10, 4)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        check_batching(5, 8, 2)
    with pytest.raises(ValueError, match="needs a data-parallel launch"):
        setup("cpu", distributed=True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for var in ("MASTER_ADDR", "MASTER_PORT", "RANK"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match="rendezvous is incomplete: MASTER_ADDR, MASTER_PORT, RANK not set"):
        setup("cpu")
    with pytest.raises(ValueError, match="rendezvous is incomplete"):
        fit(tiny_model(), tiny_dataset(), epochs=1, progress=False)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not a positive integer"):
        setup("cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not setup("cpu").distributed
