"""Run directories under clumsy and concurrent use (issue 16, items 2-4; issue 17, item 5):

- a folder of the user's own files is never trained into (its files are named), unless ``force``;
- one training per run directory (``train.lock``, the holder's PID named; a killed holder's lock is
  taken over, a stopped one's is not);
- a resume applies the ``lr`` given now (not the saved optimiser's) and records it in ``config.json``,
  and refuses another seed, graph or model size, naming it;
- a non-finite *parameter* (a finite loss whose update overflows) stops training before any checkpoint
  can hold it: the newest checkpoint is always the last finite one;
- a full disk is one line, and the checkpoints already written are intact;
- the checkpoint cadence: by time by default, every N steps, or only at the end; ``keep_last``.

    a --> b --> c        (tests/tiny.py and tests/test_safe_loading.py)
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from test_safe_loading import CONCEPTS, GRAPH, tiny_dataset

import pyro_causalvae.train as T
from pyro_causalvae import CausalVAE, TrainingDiverged, fit, load_model
from pyro_causalvae import checkpoint as ckpt
from pyro_causalvae.rundir import LOCK, RunLock

HERE = Path(__file__).resolve().parent
FAST = dict(batch_size=8, progress=False)  # 16 images: 2 steps an epoch; a known graph: no order search


@pytest.fixture
def ds():
    return tiny_dataset(n=16)


def model_for(ds, graph=GRAPH, **kw):
    torch.manual_seed(0)
    sizes = {"style_dim": 2, "channels": 8, "hidden": 16, "mechanism_hidden": 8, **kw}
    return CausalVAE(CONCEPTS, (3, 16, 16), graph=graph, label_loc=ds.label_loc, label_scale=ds.label_scale, **sizes)


# ---------------------------------------------------------------------------------------------------
# --out: the user's own files
# ---------------------------------------------------------------------------------------------------
def test_a_folder_of_other_files_is_refused_and_named(tmp_path, ds):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"mine": 1}')
    (mine / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"mine is not empty and is not a run of pyro_causalvae: training would overwrite "
                                         r"config\.json there; choose a new or empty folder, or pass force=True"):
        fit(model_for(ds), ds, epochs=1, out_dir=mine, **FAST)
    assert (mine / "config.json").read_text() == '{"mine": 1}' and sorted(os.listdir(mine)) == ["config.json", "notes.txt"]
    fit(model_for(ds), ds, epochs=1, out_dir=mine, force=True, **FAST)
    assert json.loads((mine / "config.json").read_text())["fit"]["epochs"] == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    fit(model_for(ds), ds, epochs=1, out_dir=empty, **FAST)  # an empty folder is fine
    assert not (empty / LOCK).exists()  # released


# ---------------------------------------------------------------------------------------------------
# one training per run directory
# ---------------------------------------------------------------------------------------------------
HOLDER = """
import sys, time
sys.path.insert(0, sys.argv[2])
from pyro_causalvae.rundir import RunLock
lock = RunLock(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


def _holder(run: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run), str(HERE.parent)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_training_is_refused_with_the_holders_pid_and_a_killed_holder_is_stale(tmp_path, ds):
    run = tmp_path / "run"
    fit(model_for(ds), ds, epochs=1, out_dir=run, **FAST)
    proc = _holder(run)
    try:
        with pytest.raises(ValueError, match=rf"run is in use by another training \(PID {proc.pid} on host .*, since "):
            fit(model_for(ds), ds, epochs=2, out_dir=run, resume=True, **FAST)
        proc.send_signal(signal.SIGSTOP)  # stopped, not dead: still the holder
        with pytest.raises(ValueError, match=rf"PID {proc.pid}"):
            fit(model_for(ds), ds, epochs=2, out_dir=run, resume=True, **FAST)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert (run / LOCK).exists()  # left behind by the killed process ...
    hist = fit(model_for(ds), ds, epochs=2, out_dir=run, resume=True, **FAST)  # ... and taken over
    assert [r["step"] for r in hist.rows] == [2, 4]
    assert not (run / LOCK).exists()


def test_the_lock_in_process(tmp_path):
    with RunLock(tmp_path) as lock:
        with pytest.raises(ValueError, match=rf"in use by another training \(PID {os.getpid()}"):
            RunLock(tmp_path)
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK).exists()
    lock.release()  # idempotent
    RunLock(tmp_path).release()


# ---------------------------------------------------------------------------------------------------
# resume: what the command line says is what is applied, and what cannot change is refused
# ---------------------------------------------------------------------------------------------------
def test_resume_applies_the_new_lr_and_records_it(tmp_path, ds):
    run = tmp_path / "run"
    # refit_equations=False: the equations' refit after the last epoch runs its own Adam (its own step size)
    fit(model_for(ds), ds, epochs=1, lr=1e-3, out_dir=run, refit_equations=False, **FAST)
    seen = []
    orig = torch.optim.Adam.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return orig(self, *a, **k)

    torch.optim.Adam.step = spy
    try:
        fit(model_for(ds), ds, epochs=2, lr=3e-4, out_dir=run, resume=True, refit_equations=False, **FAST)
    finally:
        torch.optim.Adam.step = orig
    assert seen == [3e-4, 3e-4]
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run))
    assert state["optim"]["param_groups"][0]["lr"] == 3e-4
    cfg = json.loads((run / ckpt.CONFIG).read_text())
    assert cfg["fit"]["lr"] == 3e-4 and cfg["fit"]["epochs"] == 2
    assert cfg["fit"]["resumed"] == [{"step": 2, "changed": {"epochs": [1, 2], "lr": [1e-3, 3e-4]}}]


@pytest.mark.parametrize("change, match", [
    (dict(seed=9), r"seed \(the run: 0, now: 9\)"),
    (dict(graph=[("a", "c")]), r"graph \(the run: .*\[\"a\", \"b\"\], \[\"b\", \"c\"\].*now: .*\[\"a\", \"c\"\]"),
    (dict(hidden=32), r"hidden \(the run: 16, now: 32\)"),
    (dict(channels=4), r"channels \(the run: 8, now: 4\)"),
])
def test_resume_refuses_another_seed_graph_or_size_and_says_which(tmp_path, ds, change, match):
    run = tmp_path / "run"
    fit(model_for(ds), ds, epochs=1, out_dir=run, **FAST)
    before = (run / ckpt.CONFIG).read_text()
    seed = change.pop("seed", 0)
    model = model_for(ds, **change)
    with pytest.raises(ValueError, match=r"cannot resume .*run with other settings than the run's: " + match):
        fit(model, ds, epochs=2, seed=seed, out_dir=run, resume=True, **FAST)
    assert (run / ckpt.CONFIG).read_text() == before
    assert [p.name for p in ckpt.checkpoints(run)] == ["checkpoint-00000002.pt"]


def test_resume_with_another_batch_size_never_numbers_checkpoints_backwards(tmp_path, ds):
    run = tmp_path / "run"
    fit(model_for(ds), ds, epochs=2, batch_size=4, progress=False, out_dir=run)  # 4 steps an epoch
    fit(model_for(ds), ds, epochs=3, batch_size=8, progress=False, out_dir=run, resume=True)  # 2 steps an epoch
    steps = [int(p.stem.split("-")[1]) for p in ckpt.checkpoints(run)]
    assert steps == sorted(steps) and steps[-1] == 10
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(run))["epoch"] == 3


# ---------------------------------------------------------------------------------------------------
# divergence: a finite loss, a non-finite update
# ---------------------------------------------------------------------------------------------------
def test_a_non_finite_update_is_caught_before_it_can_be_checkpointed(tmp_path, ds):
    """The loss stays finite; a gradient hook makes one parameter's update NaN at the 3rd step (epoch 2),
    as an overflowing Adam step (``--lr 1e39``) did."""
    run = tmp_path / "run"
    fit(model_for(ds), ds, epochs=1, out_dir=run, **FAST)
    good = (run / "checkpoint-00000002.pt").read_bytes()
    model = model_for(ds)
    calls = {"n": 0}
    name, weight = next((k, p) for k, p in model.named_parameters() if k.endswith("weight"))

    def hook(grad):
        calls["n"] += 1
        return grad * float("inf") if calls["n"] == 1 else grad

    weight.register_hook(hook)
    with pytest.raises(TrainingDiverged, match=rf"diverged at step 2 \(epoch 2\): the optimiser's update made parameter\(s\) "
                                               rf"{name} non-finite while the loss was finite \(lr 0\.001\); the last good "
                                               rf"checkpoint, .*checkpoint-00000002\.pt, is kept"):
        fit(model, ds, epochs=3, out_dir=run, resume=True, checkpoint_every=1, **FAST)
    assert [p.name for p in ckpt.checkpoints(run)] == ["checkpoint-00000002.pt"]
    assert (run / "checkpoint-00000002.pt").read_bytes() == good
    loaded = load_model(run)  # what --resume and the queries load is finite
    assert all(torch.isfinite(p).all() for p in loaded.parameters())


# ---------------------------------------------------------------------------------------------------
# a full disk
# ---------------------------------------------------------------------------------------------------
def test_a_full_disk_is_one_line_and_the_older_checkpoints_stay(tmp_path, ds, monkeypatch):
    """Writes go to /dev/full, which fails every write with ENOSPC, exactly as a full disk does."""
    run = tmp_path / "run"
    fit(model_for(ds), ds, epochs=1, out_dir=run, **FAST)
    good = (run / "checkpoint-00000002.pt").read_bytes()
    real = tempfile.mkstemp

    def full(*a, **k):
        fd, name = real(*a, **k)
        if not k.get("prefix", "").startswith(".checkpoint-"):
            return fd, name
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name

    monkeypatch.setattr(ckpt.tempfile, "mkstemp", full)
    with pytest.raises(OSError, match=r"cannot write .*checkpoint-00000004\.pt: no space left on the device \(ENOSPC\); "
                                      r".* free there; the files already in that folder are intact") as info:
        fit(model_for(ds), ds, epochs=2, out_dir=run, resume=True, **FAST)
    assert info.value.errno == errno.ENOSPC and "\n" not in str(info.value)
    assert [p.name for p in ckpt.checkpoints(run)] == ["checkpoint-00000002.pt"]
    assert (run / "checkpoint-00000002.pt").read_bytes() == good
    assert not list(run.glob(".*.tmp"))


# ---------------------------------------------------------------------------------------------------
# checkpoint cadence
# ---------------------------------------------------------------------------------------------------
def _steps(run):
    return [int(p.stem.split("-")[1]) for p in ckpt.checkpoints(run)]


def test_checkpoint_every_0_writes_only_at_the_end(tmp_path, ds):
    written = []
    orig = ckpt.save_checkpoint

    def spy(run_dir, step, state, **kw):
        written.append(step)
        return orig(run_dir, step, state, **kw)

    ckpt.save_checkpoint = spy
    try:
        fit(model_for(ds), ds, epochs=3, out_dir=tmp_path / "zero", checkpoint_every=0, **FAST)
        fit(model_for(ds), ds, epochs=3, out_dir=tmp_path / "every", checkpoint_every=3, keep_last=10, **FAST)
        fit(model_for(ds), ds, epochs=3, out_dir=tmp_path / "default", **FAST)
    finally:
        ckpt.save_checkpoint = orig
    assert written == [6, 0, 3, 6, 6]  # end only; every 3 steps (and before the first); by time: the end
    assert _steps(tmp_path / "zero") == [6] and _steps(tmp_path / "every") == [0, 3, 6]


def test_the_time_cadence_writes_when_the_interval_passed(tmp_path, ds, monkeypatch):
    """Each step "takes" 20 s on the cadence's clock; the interval is 60 s."""
    clock = {"t": 0.0}
    monkeypatch.setattr(T._Cadence, "clock", staticmethod(lambda: clock["t"]))
    terms = T.loss_terms

    def slow(*a, **k):
        clock["t"] += 20.0
        return terms(*a, **k)

    monkeypatch.setattr(T, "loss_terms", slow)
    fit(model_for(ds), ds, epochs=5, out_dir=tmp_path / "run", checkpoint_interval=60.0, keep_last=10, **FAST)
    # after steps 3, 6, 9 (60 s each, mid-epoch or at an epoch's end) and after the last one
    assert _steps(tmp_path / "run") == [3, 6, 9, 10]


def test_keep_last_is_honoured(tmp_path, ds):
    fit(model_for(ds), ds, epochs=4, out_dir=tmp_path / "run", checkpoint_every=1, keep_last=2, **FAST)
    assert _steps(tmp_path / "run") == [7, 8]
    assert ckpt.progress(tmp_path / "run") == {"epoch": 4, "batch": 0, "step": 8}
