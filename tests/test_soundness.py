"""Counterfactual soundness metrics on known cases: the ground truth scores perfectly, a copying decoder
fails effectiveness, an identity map has composition 0; the judges and their cache."""

import numpy as np
import pytest
import torch

from pyro_causalvae import CausalVAE
from pyro_causalvae.datasets import FlowSCM, PendulumSCM
from pyro_causalvae.metrics.composition import composition_curve, model_composition
from pyro_causalvae.metrics.effectiveness import effectiveness
from pyro_causalvae.metrics.interventional_mic import interventional_mic, interventional_mic_scores
from pyro_causalvae.metrics.judge import JudgeSettings, independent_labels, judge_labels, load_judge
from pyro_causalvae.metrics.model_api import read_concepts
from pyro_causalvae.metrics.reference_models import CopyModel, SimulatorModel
from pyro_causalvae.metrics.reversibility import model_reversibility
from pyro_causalvae.metrics.soundness import evaluate_soundness, readable_interventions

SIZE = 32


class OracleJudge:
    """A perfect judge: it reads back the labels of every render of its (recording) SCM."""

    def __init__(self, sim):
        self.sim = sim

    def predict(self, x):
        return self.sim.encode(x)


def _recording(scm, *stores):
    """Make every ``scm.render`` remember its labels in the given SimulatorModels (the oracle's memory)."""
    render = scm.render

    def rec(labels, size=96, seed=None):
        images = render(labels, size=size, seed=seed)
        for s in stores:
            s.remember(images, labels)
        return images

    scm.render = rec
    return scm


def _world(scm, n=40, seed=0, **model_kw):
    """``(model, judge, labels, images)``: the simulator as a model, and a perfect judge, on readable scenes."""
    model, memory = SimulatorModel(scm, SIZE, **model_kw), SimulatorModel(scm, SIZE)
    _recording(scm, model, memory)
    labels = scm.sample(n, seed=seed)
    labels = labels[scm.readable(labels)]
    return model, OracleJudge(memory), labels, model.render(labels)


def test_effectiveness_known_values():
    v = np.linspace(-1, 1, 11)
    assert effectiveness(v, v) == pytest.approx({"mae": 0.0, "slope": 1.0, "intercept": 0.0, "r2": 1.0, "n": 11})
    half = effectiveness(v, 0.5 * v)
    assert half["slope"] == pytest.approx(0.5) and half["mae"] == pytest.approx(np.mean(np.abs(0.5 * v)))
    ignored = effectiveness(v, np.full(11, 0.3))  # the image never changes: slope 0
    assert ignored["slope"] == pytest.approx(0.0) and ignored["mae"] == pytest.approx(np.mean(np.abs(v - 0.3)))
    assert np.isnan(effectiveness(np.zeros(3), np.zeros(3))["slope"])
    with pytest.raises(ValueError, match="shape"):
        effectiveness(v, v[:3])
    with pytest.raises(ValueError, match="NaN"):
        effectiveness([0.0, np.nan], [0.0, 0.0])


def test_composition_curve_of_identity_and_of_a_drifting_map():
    x = torch.rand(4, 3, 8, 8)
    assert composition_curve(x, lambda a: a, steps=10).tolist() == [0.0] * 10
    # x -> 0.9 x + 0.1 drifts towards 1: |x_m - x| = (1 - 0.9^m) |1 - x|
    curve = composition_curve(x, lambda a: 0.9 * a + 0.1, steps=5)
    expected = [(1 - 0.9**m) * float((1 - x).abs().mean()) for m in range(1, 6)]
    assert curve == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="steps"):
        composition_curve(x, lambda a: a, steps=0)


@pytest.mark.parametrize("scm", [PendulumSCM(), FlowSCM()], ids=["pendulum", "flow"])
def test_the_true_counterfactual_scores_perfectly(scm):
    sim, judge, labels, x = _world(scm)
    res = evaluate_soundness(sim, scm, x, labels, {"oracle": judge}, composition_steps=3,
                             composition_images=10, mic_images=200)
    assert all(p["mic"] == pytest.approx(100.0) for p in res["interventional_mic"]["per_concept"].values())
    assert res["reconstruction"]["mse"] == 0.0
    assert all(r2 == pytest.approx(1.0) for r2 in res["reconstruction"]["judge_r2"]["oracle"].values())
    for c, s in res["concepts"].items():
        assert s["n"] >= len(labels) - 2, c  # almost every image has a readable intervention
        j = s["judges"]["oracle"]
        assert j["effectiveness"]["mae"] == pytest.approx(0.0, abs=1e-5)
        assert j["effectiveness"]["slope"] == pytest.approx(1.0, abs=1e-4)
        assert j["max_leakage"] == pytest.approx(0.0, abs=1e-6)
        assert all(d["r2"] == pytest.approx(1.0, abs=1e-5) for d in j["descendants"].values())
        assert s["pixels"]["cf_mse"] == 0.0 and s["pixels"]["unchanged_mse"] > 0.0
        assert s["composition"] == [0.0, 0.0, 0.0] and s["reversibility_l1"] == 0.0


def test_a_decoder_that_copies_its_input_fails_effectiveness():
    scm = PendulumSCM()
    sim, judge, labels, x = _world(scm)
    copy = CopyModel(scm.concepts, (3, SIZE, SIZE), reader=sim.encode)
    res = evaluate_soundness(copy, scm, x, labels, {"oracle": judge}, composition_steps=10,
                             composition_images=10, mic_images=0)
    for c, s in res["concepts"].items():
        eff = s["judges"]["oracle"]["effectiveness"]
        assert eff["mae"] > 0.3 and abs(eff["slope"]) < 0.3, (c, eff)
        assert s["composition"] == [0.0] * 10  # the identity: composition 0, after any number of steps
        assert s["reversibility_l1"] == 0.0
        assert s["pixels"]["cf_mse"] == s["pixels"]["unchanged_mse"] > 0.0


def test_an_effect_that_ignores_its_intervention_is_caught():
    # the known-bad case of the issue: do(shadow_length) leaves the shadow as it was
    scm = PendulumSCM()
    frozen, judge, labels, x = _world(scm, frozen=["shadow_length"])
    res = evaluate_soundness(frozen, scm, x, labels, {"oracle": judge}, composition_steps=1, composition_images=5, mic_images=0)
    assert res["concepts"]["shadow_length"]["judges"]["oracle"]["effectiveness"]["slope"] < 0.3
    assert res["concepts"]["shadow_length"]["pixels"]["cf_mse"] > 0.0
    assert res["concepts"]["shadow_position"]["judges"]["oracle"]["effectiveness"]["mae"] == pytest.approx(0.0, abs=1e-5)


def test_null_intervention_and_reversibility_use_the_models_own_reading():
    scm = FlowSCM()
    sim, _, labels, x = _world(scm, n=12)
    assert model_composition(sim, x, "water_height", steps=2).tolist() == [0.0, 0.0]
    v = torch.full((x.shape[0],), 0.5)
    assert model_reversibility(sim, x, "ball_size", v) == 0.0
    with pytest.raises(ValueError, match="unknown concept"):
        model_composition(sim, x, "nope")


def test_interventional_mic_scores_an_exact_reader_100_and_a_cause_reader_low():
    scm = PendulumSCM()
    labels = independent_labels(scm, 300, seed=0)
    u = ((labels - scm.label_loc) / scm.label_scale).numpy()
    exact = interventional_mic_scores(u, u, scm.concepts)
    assert all(p["mic"] == pytest.approx(100.0) for p in exact["per_concept"].values())
    # an encoder that reads the shadow off the angles (as the observational mechanism would)
    from_causes = u.copy()
    for k, c in ((2, "shadow_length"), (3, "shadow_position")):  # the shadow the angles would cast
        f = scm.mechanism(c, {"pendulum_angle": labels[:, 0], "light_angle": labels[:, 1]})
        from_causes[:, k] = ((f - scm.label_loc[k]) / scm.label_scale[k]).numpy()
    s = interventional_mic_scores(from_causes, u, scm.concepts)["per_concept"]["shadow_length"]
    assert s["mic"] < 50 and s["max_other_mic"] > s["mic"]


def test_independent_labels_break_the_mechanisms_and_stay_readable():
    scm = PendulumSCM()
    lab = independent_labels(scm, 4000, seed=1, margin=0.05)
    z = ((lab - scm.label_loc) / scm.label_scale).numpy()
    assert z.shape == (4000, 4) and np.abs(z).max() <= 1.05 + 1e-5
    assert bool(scm.readable(lab).all())
    obs = judge_labels(scm, 4000, "observational", seed=1)
    corr_int = abs(np.corrcoef(lab[:, 1], lab[:, 3])[0, 1])  # light angle vs shadow position
    corr_obs = abs(np.corrcoef(obs[:, 1], obs[:, 3])[0, 1])
    assert corr_int < 0.1 < 0.5 < corr_obs
    assert torch.equal(independent_labels(scm, 10, seed=3), independent_labels(scm, 10, seed=3))
    with pytest.raises(ValueError, match="margin"):
        independent_labels(scm, 10, margin=-1)


def test_readable_interventions_only_propose_readable_counterfactuals():
    scm = PendulumSCM()
    labels = scm.sample(200, seed=0)
    v, ok = readable_interventions(scm, labels, "shadow_length", generator=torch.Generator().manual_seed(0))
    assert ok.float().mean() > 0.9 and v.abs().max() <= 0.9
    cf = scm.counterfactual(labels[ok], do={"shadow_length": v[ok] * scm.label_scale[2] + scm.label_loc[2]})
    assert bool(scm.readable(cf).all())


def test_read_concepts_accepts_blocks_and_scalars():
    class Blocks:
        concepts, image_shape = ("a", "b"), (3, 4, 4)

        def encode(self, x):
            return torch.arange(6.0).reshape(1, 2, 3).expand(x.shape[0], 2, 3)

    class Scalars(Blocks):
        def encode(self, x):
            return torch.ones(x.shape[0], 2)

    x = torch.zeros(5, 3, 4, 4)
    assert read_concepts(Blocks(), x, batch_size=2).tolist() == [[1.0, 4.0]] * 5
    assert read_concepts(Scalars(), x).shape == (5, 2)


def test_judge_cache_round_trip(tmp_path, monkeypatch):
    import pyro_causalvae.metrics.judge as J

    scm = FlowSCM()
    s = JudgeSettings(size=16, num_images=64, epochs=1, batch_size=32, width=4)
    judge = load_judge(scm, s, cache_dir=tmp_path, progress=False)
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == [s.key(scm)] and set(judge.heldout_r2) == set(scm.concepts)
    blob = torch.load(files[0], weights_only=True)  # tensors and plain values only
    assert blob["settings"]["num_images"] == 64

    def no_training(*a, **k):
        raise AssertionError("the cached judge should have been reused")

    monkeypatch.setattr(J, "train_judge", no_training)
    x = torch.rand(3, 3, 16, 16)
    again = load_judge(scm, s, cache_dir=tmp_path, progress=False)
    assert torch.equal(again.predict(x), judge.predict(x))
    assert s.key(scm) != JudgeSettings(size=16, num_images=64, epochs=1, batch_size=32, width=4, design="observational").key(scm)
    monkeypatch.undo()
    files[0].write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="ignoring the cached judge"):
        load_judge(scm, s, cache_dir=tmp_path, progress=False)
    assert torch.load(files[0], weights_only=True)["version"] == J.VERSION  # rewritten whole
    with pytest.raises(ValueError, match="reads images"):
        judge.predict(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="design"):
        JudgeSettings(design="nope")


def test_the_metrics_run_on_a_causalvae():
    # the glue through the public API: an untrained CausalVAE, a few images
    scm = PendulumSCM()
    labels = scm.sample(6, seed=0)
    x = scm.render(labels, size=SIZE)
    model = CausalVAE(scm.concepts, (3, SIZE, SIZE), graph=list(scm.edges), channels=8, hidden=16,
                      label_loc=scm.label_loc, label_scale=scm.label_scale).eval()
    res = evaluate_soundness(model, scm, x, labels, {"mean colour": MeanColourJudge(len(scm.concepts))},
                             concepts=["shadow_length"], composition_steps=2, composition_images=3, mic_images=16)
    s = res["concepts"]["shadow_length"]
    assert len(s["composition"]) == 2 and np.isfinite(s["composition"]).all() and s["reversibility_l1"] >= 0
    assert set(res["interventional_mic"]["per_concept"]) == set(scm.concepts)
    assert 0.0 <= res["interventional_mic"]["mic"] <= 100.0
    with pytest.raises(ValueError, match="SCM"):
        interventional_mic(CopyModel(("a",), (3, SIZE, SIZE)), scm, n=8)


class MeanColourJudge:
    """A stand-in judge (reads the mean colour): the glue test needs any ``predict``."""

    def __init__(self, k):
        self.k = k

    def predict(self, x):
        return x.float().mean(dim=(1, 2, 3), keepdim=False)[:, None].expand(-1, self.k).contiguous()


def test_a_shadow_off_the_image_edge_is_not_readable():
    scm = PendulumSCM()
    lab = torch.tensor([[0.0, 1.5, 5.0, 10.0], [0.0, 1.5, 5.0, 19.0], [0.0, 1.5, 5.0, 2.0], [0.0, 1.5, 3.0, 18.5]])
    assert scm.readable(lab).tolist() == [True, False, False, True]
    assert bool(FlowSCM().readable(FlowSCM().sample(5, seed=0)).all())


def test_unreadable_factual_scenes_are_left_out():
    scm = PendulumSCM()
    sim, judge, labels, x = _world(scm, n=10)
    off = labels[:1].clone()
    off[0, 3] = 19.5  # the shadow runs off the right edge
    labels2, x2 = torch.cat([labels, off]), torch.cat([x, sim.render(off)])
    res = evaluate_soundness(sim, scm, x2, labels2, {"oracle": judge}, concepts=["light_angle"], composition_steps=1,
                             composition_images=2, mic_images=0)
    assert res["unreadable_dropped"] == 1 and res["n"] == len(labels)
    with pytest.raises(ValueError, match="readable"):
        evaluate_soundness(sim, scm, x2[-1:], labels2[-1:], {"oracle": judge}, mic_images=0)
