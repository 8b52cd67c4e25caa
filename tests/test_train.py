"""fit(): determinism, checkpoints and resume, divergence, bad input; the train CLI."""

import copy
import math
import json

import pytest
import torch
from torch.testing import assert_close

from pyro_causalvae import LossWeights, TrainingDiverged, fit, load_model
from pyro_causalvae import checkpoint as ckpt
from pyro_causalvae.cli import main
from pyro_causalvae.datasets import ConceptImageDataset

from tiny import CONCEPTS, GRAPH, params, tiny_dataset, tiny_model  # noqa: F401  (a --> b --> c)


def test_fit_returns_history_with_every_term_and_is_deterministic():
    ds = tiny_dataset()
    runs = []
    for _ in range(2):
        torch.manual_seed(0)  # the initial weights
        model = tiny_model()
        hist = fit(model, ds, epochs=2, batch_size=16, seed=3, al_every=2, progress=False)
        runs.append(params(model))
    assert len(hist) == 2
    for term in ("recon", "kl", "labels", "encoder", "label_loss", "dag", "sparsity", "path", "loss", "h"):
        assert all(isinstance(v, float) for v in hist[term])
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k
    assert hist.last()["lam"] > 0  # the augmented Lagrangian was updated


def test_different_seeds_differ():
    ds = tiny_dataset()
    a, b = tiny_model(), tiny_model()
    torch.manual_seed(0)
    b.load_state_dict(a.state_dict())
    fit(a, ds, epochs=1, batch_size=16, seed=1, progress=False)
    fit(b, ds, epochs=1, batch_size=16, seed=2, progress=False)
    assert not torch.equal(a.A_raw, b.A_raw)


def test_resume_matches_uninterrupted_run(tmp_path):
    # prune=False, refit_equations=False: a run that *finished* (epochs=1) is pruned and its equations refitted
    # at its end, and extending it continues from there;
    # this test is about continuing the training state (tests/test_resume.py kills a run mid-epoch instead).
    ds = tiny_dataset()
    torch.manual_seed(0)
    full = tiny_model()
    init = copy.deepcopy(full.state_dict())
    fit(full, ds, epochs=3, batch_size=16, seed=5, al_every=2, progress=False, out_dir=tmp_path / "full", prune=False,
        refit_equations=False)

    part = tiny_model()
    part.load_state_dict(init)
    fit(part, ds, epochs=1, batch_size=16, seed=5, al_every=2, progress=False, out_dir=tmp_path / "part", prune=False,
        refit_equations=False)
    resumed = tiny_model()  # a fresh process would rebuild the model from config.json
    fit(resumed, ds, epochs=3, batch_size=16, seed=5, al_every=2, progress=False, out_dir=tmp_path / "part", resume=True,
        prune=False, refit_equations=False)
    for k, v in params(full).items():
        assert_close(params(resumed)[k], v, msg=k)
    assert resumed.order == full.order
    # the default cadence (at most one a minute, always after the last step): these short runs write at their ends
    assert [p.name for p in ckpt.checkpoints(tmp_path / "part")] == ["checkpoint-00000003.pt", "checkpoint-00000009.pt"]
    cfg = json.loads((tmp_path / "part" / "config.json").read_text())
    assert cfg["model"]["concepts"] == list(CONCEPTS)
    loaded = load_model(tmp_path / "part")
    assert_close(loaded.A_raw, full.A_raw)


def test_keep_last_and_refuse_to_overwrite(tmp_path):
    ds = tiny_dataset()
    fit(tiny_model(), ds, epochs=3, batch_size=16, progress=False, out_dir=tmp_path, keep_last=2, checkpoint_every=3)
    assert [p.name for p in ckpt.checkpoints(tmp_path)] == ["checkpoint-00000006.pt", "checkpoint-00000009.pt"]
    with pytest.raises(ValueError, match="already holds checkpoints"):
        fit(tiny_model(), ds, epochs=1, progress=False, out_dir=tmp_path)


def test_divergence_names_step_and_term_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    ds = tiny_dataset()
    model = tiny_model()
    fit(model, ds, epochs=1, batch_size=16, progress=False, out_dir=tmp_path)
    before = (tmp_path / "checkpoint-00000003.pt").read_bytes()
    calls = {"n": 0}
    forward = model.decoder.forward

    def poisoned(z):
        calls["n"] += 1
        out = forward(z)
        return out * float("nan") if calls["n"] == 2 else out

    monkeypatch.setattr(model.decoder, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match=r"step 4 \(epoch 2\).*recon=nan.*last good checkpoint"):
        fit(model, ds, epochs=2, batch_size=16, progress=False, out_dir=tmp_path, resume=True)
    assert (tmp_path / "checkpoint-00000003.pt").read_bytes() == before
    assert ckpt.latest_checkpoint(tmp_path).name == "checkpoint-00000003.pt"
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad step was not applied


class Raw:
    """A duck-typed dataset, to reach fit()'s own checks with data a ConceptImageDataset would refuse."""

    def __init__(self, images, labels, concepts=CONCEPTS):
        self.images, self.labels, self.concepts = images, labels, concepts
        self.labels_normalised = labels


@pytest.mark.parametrize(
    "data, match",
    [
        (Raw(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.zeros(4, 3)), r"shape \(3, 32, 32\) but the model expects \(3, 16, 16\)"),
        (Raw(torch.zeros(4, 1, 16, 16, dtype=torch.uint8), torch.zeros(4, 3)), "model expects"),
        (Raw(torch.full((4, 3, 16, 16), float("nan")), torch.zeros(4, 3)), "images has non-finite"),
        (Raw(torch.zeros(4, 3, 16, 16, dtype=torch.uint8), torch.zeros(4, 2)), r"labels have shape \[4, 2\]"),
        (Raw(torch.zeros(4, 3, 16, 16, dtype=torch.uint8), torch.tensor([[0.0, float("inf"), 0.0]] * 4)), "labels hold inf"),
        (Raw(torch.zeros(4, 3, 16, 16, dtype=torch.uint8), torch.tensor([[0.0, float("nan"), 0.0]] * 4)),
         r"concept\(s\) \['b'\] have no label at all"),
        (Raw(torch.zeros(4, 3, 16, 16, dtype=torch.uint8), torch.zeros(4, 3), ("a", "b", "zz")), r"unknown to the model: \['zz'\]"),
    ],
)
def test_bad_data_is_refused_before_training(data, match):
    model = tiny_model()
    before = params(model)
    with pytest.raises(ValueError, match=match):
        fit(model, data, epochs=1, progress=False)
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k], v)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(epochs=0), "epochs"),
        (dict(batch_size=-1), "batch_size"),
        (dict(lr=float("nan")), "lr"),
        (dict(resume=True), "needs out_dir"),
        (dict(weights=None, device="cuda:0"), "CUDA is not available"),
        (dict(reading_warmup=-1), "reading_warmup"),
        (dict(reading_warmup=float("nan")), "reading_warmup"),
    ],
)
def test_bad_settings(kw, match, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a machine with a GPU
    with pytest.raises(ValueError, match=match):
        fit(tiny_model(), tiny_dataset(), progress=False, **kw)


def test_loss_weights_are_validated():
    with pytest.raises(ValueError, match="encoder"):
        LossWeights(encoder=-1)


def test_unlabelled_dataset_trains():
    ds = tiny_dataset()
    unl = ConceptImageDataset(ds.images, None, concepts=CONCEPTS)
    hist = fit(tiny_model(GRAPH), unl, epochs=1, batch_size=16, progress=False)
    assert hist.last()["labels"] == 0.0


def test_cli_train_writes_run_and_figures(tmp_path, capsys):
    ds = tiny_dataset(n=32)
    folder = ds.to_folder(tmp_path / "data")
    out = tmp_path / "run"
    code = main(["train", "--dataset", "folder", "--root", str(folder), "--labels", str(folder / "labels.csv"),
                 "--epochs", "1", "--batch-size", "16", "--style-dim", "2",
                 "--graph", "a->b,b->c", "--out", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "learned graph: a->b, b->c" in text
    for f in ("config.json", "checkpoint-00000001.pt", "losses.png", "graph.png", "reconstructions.png"):  # 29 images: 1 step
        assert (out / f).is_file(), f


@pytest.mark.parametrize(
    "argv, match",
    [
        (["train", "--dataset", "folder", "--out", "x"], "needs --labels"),
        (["train", "--dataset", "pendulum", "--size", "16", "--graph", "a->", "--out", "x", "--epochs", "1"], "not concepts"),
        (["train", "--dataset", "pendulum", "--size", "16", "--weight", "foo=1", "--out", "x"], "unknown loss weight"),
        (["train", "--dataset", "folder", "--root", "/nonexistent", "--labels", "/nonexistent.csv", "--out", "x"], "does not exist|not found|No such"),
    ],
)
def test_cli_errors_are_one_line(argv, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyro-causalvae: error:") and len(err.splitlines()) == 1
    assert __import__("re").search(match, err), err


def test_cli_demo_runs_end_to_end_small(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--size", "16", "--epochs", "1", "--batch-size", "256", "--out", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "Pendulum (16x16)" in text and "learned graph:" in text and "vs the true graph: SHD" in text
    assert (out / "graph.png").stat().st_size > 1000 and (out / "reconstructions.png").is_file()


def test_cli_train_celeba_on_a_fake_folder(tmp_path, capsys):
    from test_celeba import write_fake_celeba

    root = tmp_path / "celeba"
    write_fake_celeba(root)
    out = tmp_path / "run"
    code = main(["train", "--dataset", "celeba", "--root", str(root), "--subset", "smile", "--size", "16",
                 "--epochs", "1", "--batch-size", "4", "--style-dim", "1", "--graph", "true", "--out", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "Smiling->Narrow_Eyes" in text and "SHD 0" in text


def test_cli_intervene_and_counterfactual_on_a_trained_run(tmp_path, capsys):
    ds = tiny_dataset(n=32)
    folder = ds.to_folder(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", "--dataset", "folder", "--root", str(folder), "--labels", str(folder / "labels.csv"), "--epochs", "1",
                 "--batch-size", "16", "--style-dim", "2", "--graph", "a->b,b->c", "--out", str(run), "--no-progress",
                 "--test-fraction", "0.25"]) == 0  # 8 held-out images
    assert main(["intervene", str(run), "--concept", "a", "--concept", "c", "--sweep", "3"]) == 0
    assert (run / "intervention_grid.png").stat().st_size > 1000
    assert main(["intervene", str(run), "--concept", "b", "--values", "0.2", "0.4", "--image", str(folder / sorted(p.name for p in folder.glob("*.png"))[0]),
                 "--out", str(tmp_path / "g.png")]) == 0
    assert main(["counterfactual", str(run), "--do", "a=0.9", "--index", "3"]) == 0
    text = capsys.readouterr().out
    assert "do(a) over" in text and "do(b) over 0.2, 0.4" in text
    row = next(line for line in text.splitlines() if line.startswith("a ") and "<- do" in line)
    assert float(row.split()[2]) == pytest.approx(0.9, abs=1e-4)
    assert main(["counterfactual", str(run), "--do", "zz=1"]) == 2
    assert "unknown concept 'zz'" in capsys.readouterr().err
    assert main(["evaluate", str(run)]) == 0
    text = capsys.readouterr().out
    assert "MIC" in text and "graph: a->b, b->c" in text
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["mic"] <= 100 and len(metrics["mic_matrix"]) == 3
    assert "shd" not in metrics  # a folder of images has no true graph to compare with


def test_second_fit_continues_the_learned_graph():
    ds = tiny_dataset()
    model = tiny_model()
    first = fit(model, ds, epochs=1, batch_size=16, progress=False, warm_start_steps=5)
    assert first.graph_search is not None and model.order_initialised
    A = model.A_raw.detach().clone()
    second = fit(model, ds, epochs=1, batch_size=16, progress=False, lr=1e-12)
    assert second.graph_search is None  # no new order search, no reset of A
    assert_close(model.A_raw.detach(), A, atol=1e-6, rtol=0)


def test_bf16_autocast_trains_with_float32_parameters():
    model = tiny_model()
    hist = fit(model, tiny_dataset(), epochs=1, batch_size=16, precision="bf16", progress=False, order_search=False)
    assert all(map(math.isfinite, (hist.last()["loss"], hist.last()["recon"])))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(ValueError, match="precision must be one of"):
        fit(model, tiny_dataset(), epochs=1, precision="fp16", progress=False)


def test_fit_prunes_redundant_edges_after_the_last_epoch_and_records_them(tmp_path):
    # a --> b --> c with c a function of b alone: the edge a -> c, which the model starts with, is redundant
    g = torch.Generator().manual_seed(0)
    a = torch.rand(200, generator=g) * 2 - 1
    b = torch.tanh(2 * a) + 0.1 * torch.randn(200, generator=g)
    c = b**2 + 0.05 * torch.randn(200, generator=g)
    images = (torch.rand(200, 3, 16, 16, generator=g) * 255).to(torch.uint8)
    ds = ConceptImageDataset(images, torch.stack([a, b, c], -1), concepts=CONCEPTS)
    torch.manual_seed(0)
    model = tiny_model()
    model.init_from_order([0, 1, 2])  # A = 1 on a->b, a->c, b->c; no order search in fit
    hist = fit(model, ds, epochs=1, batch_size=50, progress=False, out_dir=tmp_path)
    assert [tuple(r["edge"]) for r in hist.pruned] == [("a", "c")] and hist.pruned[0]["gain"] < 0.01
    assert ("a", "c") not in model.graph().edges() and {("a", "b"), ("b", "c")} <= set(model.graph().edges())
    assert load_model(tmp_path).pruned == model.pruned
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))["pruned"] == hist.pruned
    torch.manual_seed(0)
    off = tiny_model()
    assert fit(off, ds, epochs=1, batch_size=16, progress=False, prune=False, warm_start_steps=50).pruned is None


def test_fit_refits_the_structural_equations_after_the_last_epoch_and_nothing_else(tmp_path):
    # a --> b --> c with b and c near-deterministic: SVI at a large lr leaves the mechanisms loose; the refit
    # after the last epoch fits them to the labels again (A held), and leaves the image model as SVI left it
    g = torch.Generator().manual_seed(0)
    a = torch.rand(256, generator=g) * 2 - 1
    b = torch.tanh(2 * a) + 0.01 * torch.randn(256, generator=g)
    c = b**2 - 0.5 + 0.01 * torch.randn(256, generator=g)
    images = (torch.rand(256, 3, 16, 16, generator=g) * 255).to(torch.uint8)
    ds = ConceptImageDataset(images, torch.stack([a, b, c], -1), concepts=CONCEPTS)
    runs = {}
    for refit in (False, True):
        torch.manual_seed(0)
        model = tiny_model(graph=GRAPH)
        out = tmp_path / str(refit)
        hist = fit(model, ds, epochs=2, batch_size=32, lr=3e-2, seed=1, progress=False, equation_steps=300,
                   refit_equations=refit, out_dir=out)
        with torch.no_grad():
            nll = float(-model.concept_log_prob(ds.labels_normalised).mean(0).sum())  # per row
        runs[refit] = (hist, params(model), nll, out)
    (off, p_off, nll_off, _), (on, p_on, nll_on, out) = runs[False], runs[True]
    assert off.refit is None and json.loads((tmp_path / "False" / ckpt.CONFIG).read_text())["fit"]["refit_equations"] is False
    assert on.refit["rows"] == 256 and on.refit["steps"] == 300
    assert on.refit["nll_after"] < on.refit["nll_before"] - 1.0  # SVI had left the equations far from the labels' fit
    assert nll_on < nll_off - 1.0
    assert abs(on.refit["nll_before"] - nll_off) < 1e-3  # the same SVI run up to the refit
    for k in p_on:
        same = torch.equal(p_on[k], p_off[k])
        assert same == (not k.startswith(("A_raw", "mechanisms.", "noise_scale_raw", "noise_splines."))), k
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(out))["refit"] == on.refit  # saved with the final state
    with torch.no_grad():
        assert abs(float(-load_model(out).concept_log_prob(ds.labels_normalised).mean(0).sum()) - nll_on) < 1e-4


def record_loss_terms_flag(monkeypatch, flag: str) -> list[bool]:
    """Spy on the loss terms fit computes: the list of the boolean keyword ``flag`` at each training step."""
    from pyro_causalvae import loss, train

    seen = []

    def spy(*a, **k):
        seen.append(bool(k.get(flag, False)))
        return loss.loss_terms(*a, **k)

    monkeypatch.setattr(train, "loss_terms", spy)
    return seen


def test_reading_warmup_detaches_the_inferred_concepts_for_its_steps_only(tmp_path, monkeypatch):
    """fit(reading_warmup=1.5) with 4 steps per epoch: the first round(1.5 * 4) = 6 of the 12 steps decode the
    guide's draws detached; the setting is recorded in config.json."""
    seen = record_loss_terms_flag(monkeypatch, "detach_draws")
    ds = tiny_dataset(n=64)  # 4 batches of 16
    fit(tiny_model(), ds, epochs=3, batch_size=16, seed=0, progress=False, reading_warmup=1.5, out_dir=tmp_path / "r",
        refit_equations=False)
    assert seen == [True] * 6 + [False] * 6
    assert json.loads((tmp_path / "r" / ckpt.CONFIG).read_text())["fit"]["reading_warmup"] == 1.5


def test_rereading_starts_at_the_end_of_the_reading_warmup(tmp_path, monkeypatch):
    """LossWeights(rereading=...) > 0: the term is computed from the end of the readings' warm-up on (the
    decoder's first images say nothing yet), recorded in the history; off (weight 0) it is never computed."""
    seen = record_loss_terms_flag(monkeypatch, "rereading")
    ds = tiny_dataset(n=64)  # 4 batches of 16
    hist = fit(tiny_model(), ds, epochs=3, batch_size=16, seed=0, progress=False, reading_warmup=1.5,
               weights=LossWeights(rereading=10.0), refit_equations=False)
    assert seen == [False] * 6 + [True] * 6
    assert hist.rows[0]["rereading"] == 0 and hist.rows[2]["rereading"] != 0
    seen.clear()
    fit(tiny_model(), ds, epochs=1, batch_size=16, seed=0, progress=False, refit_equations=False,
        weights=LossWeights(rereading=0.0))
    assert seen == [False] * 4
