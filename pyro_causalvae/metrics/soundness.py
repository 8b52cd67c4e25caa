"""All the counterfactual soundness measures of one model on one simulated world, per concept.

:func:`evaluate_soundness` intervenes on every concept of a world with a ground-truth SCM, sinks
included, and gathers (each defined in its own module):

- per judge (:mod:`~pyro_causalvae.metrics.judge`; the interventional judge is the one that counts,
  an observational one is a comparison): effectiveness (:mod:`~pyro_causalvae.metrics.effectiveness`),
  leakage into non-descendants and descendants' R^2 against the true counterfactual
  (:func:`~pyro_causalvae.metrics.counterfactual.intervention_scores`), and the same judge's
  effectiveness on the *true* counterfactual images (how well it can score at all);
- pixel errors against the true counterfactual images, next to the unchanged image's and the
  reconstruction's (:func:`~pyro_causalvae.metrics.counterfactual.pixel_errors`);
- composition after 1 .. m null interventions (:mod:`~pyro_causalvae.metrics.composition`) and
  reversibility (:mod:`~pyro_causalvae.metrics.reversibility`);

and, once per world, the reconstructions' judge R^2 per concept and the interventional MIC
(:mod:`~pyro_causalvae.metrics.interventional_mic`).

**Interventions.** For each image and concept ``c``, ``v`` is drawn uniformly over ``[low, high]``
(normalised units; default 90 % of the range) and redrawn (up to ``tries`` times) while the true
counterfactual scene is not readable (:meth:`SCM.readable`); images with no readable draw are left
out of that concept's scores (their number is reported as ``n``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .composition import model_composition
from .counterfactual import intervention_scores, pixel_errors, r2_score
from .effectiveness import effectiveness
from .interventional_mic import interventional_mic
from .model_api import counterfactual_images, reconstructions
from .reversibility import model_reversibility

__all__ = ["evaluate_soundness", "readable_interventions"]


def readable_interventions(scm, labels: torch.Tensor, concept: str, low: float = -0.9, high: float = 0.9, tries: int = 20,
                           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Intervention values whose true counterfactual is readable (see the module docstring).

    :param labels: ``[n, K]`` factual labels, natural units.
    :returns: ``(v, ok)``: ``[n]`` values in normalised units and ``[n]`` bool, whether a readable value
        was found for that image (``v`` is meaningless where ``ok`` is False).
    """
    if not -np.inf < low < high < np.inf:
        raise ValueError(f"need low < high, got {low}, {high}")
    k = list(scm.concepts).index(concept)
    n = labels.shape[0]
    v = torch.zeros(n)
    ok = torch.zeros(n, dtype=torch.bool)
    for _ in range(tries):
        todo = (~ok).nonzero().flatten()
        if todo.numel() == 0:
            break
        cand = low + (high - low) * torch.rand(todo.numel(), generator=generator)  # [m]
        nat = cand * scm.label_scale[k] + scm.label_loc[k]
        good = scm.readable(scm.counterfactual(labels[todo], do={concept: nat}))
        v[todo[good]] = cand[good]
        ok[todo[good]] = True
    return v, ok


def _judge_scores(judge, concepts, graph, concept, v, u, true_cf, judged_recon, cf, true_img) -> dict:
    k = concepts.index(concept)
    s = intervention_scores(concepts, graph, concept, v.numpy(), u, true_cf, judged_recon, judge.predict(cf).numpy())
    s["max_leakage"] = max(s["leakage"].values()) if s["leakage"] else 0.0
    s["min_descendant_r2"] = min(d["r2"] for d in s["descendants"].values()) if s["descendants"] else float("nan")
    s["true_cf_effectiveness"] = effectiveness(v.numpy(), judge.predict(true_img).numpy()[:, k])
    return s


def evaluate_soundness(model, scm, images: torch.Tensor, labels: torch.Tensor, judges: Mapping[str, object], *,
                       concepts: Sequence[str] | None = None, seed: int = 0, composition_steps: int = 10,
                       composition_images: int = 200, mic_images: int = 1000, low: float = -0.9, high: float = 0.9,
                       batch_size: int = 256) -> dict:
    """The soundness measures of ``model`` on factual ``images`` of the world ``scm`` (module docstring).

    :param model: a counterfactual image model (:mod:`~pyro_causalvae.metrics.model_api`) whose
        concepts are the SCM's, in its order.
    :param images: ``[n, 3, H, W]`` factual images (uint8, or float in [0, 1]), renders of ``labels``;
        those whose scene is not readable (:meth:`SCM.readable`) are left out (counted in
        ``"unreadable_dropped"``).
    :param labels: ``[n, K]`` their true labels, natural units.
    :param judges: ``{name: judge}``, each with ``predict(images) -> [N, K]`` normalised labels.
    :param concepts: the concepts to intervene on (default: all).
    :param seed: seed of the intervention values and of the interventional MIC's renders.
    :param composition_steps: null interventions applied for composition.
    :param composition_images: images (the first ones) used for composition and reversibility.
    :param mic_images: interventional renders for the interventional MIC (0: skip it).
    :returns: ``{"reconstruction": {...}, "interventional_mic": {...} | None, "concepts": {c: {...}}}``
        (all label errors in normalised units, pixel errors for images in [0, 1]).
    :raises ValueError: for concepts or images that do not match the model and the SCM.
    """
    names = list(scm.concepts)
    if tuple(model.concepts) != tuple(names):
        raise ValueError(f"model concepts {list(model.concepts)} are not the SCM's {names}")
    concepts = names if concepts is None else list(concepts)
    bad = [c for c in concepts if c not in names]
    if bad:
        raise ValueError(f"unknown concepts {bad}; concepts are {names}")
    if images.shape[0] != labels.shape[0] or images.shape[0] == 0:
        raise ValueError(f"need one label row per image and at least one image, got {images.shape[0]} and {labels.shape[0]}")
    if tuple(images.shape[1:]) != tuple(model.image_shape):
        raise ValueError(f"images have shape {list(images.shape[1:])} but the model reads {list(model.image_shape)}")
    if not judges:
        raise ValueError("need at least one judge")
    size = int(images.shape[-1])
    labels = labels.float().cpu()
    readable = scm.readable(labels)  # [n]: scenes whose concepts a judge can read at all
    if not bool(readable.any()):
        raise ValueError("none of the images shows a readable scene (SCM.readable)")
    images, labels = images[readable], labels[readable]
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    u = ((labels - scm.label_loc) / scm.label_scale).numpy()  # [n, K]
    recon = reconstructions(model, x, batch_size)  # [n, 3, H, W]
    judged_recon = {j: judge.predict(recon).numpy() for j, judge in judges.items()}  # [n, K] each
    judged_x = {j: judge.predict(x).numpy() for j, judge in judges.items()}
    out = {
        "n": int(x.shape[0]),
        "unreadable_dropped": int((~readable).sum()),
        "reconstruction": {
            "mse": float(((recon - x) ** 2).mean()), "l1": float((recon - x).abs().mean()),
            "judge_r2": {j: {c: r2_score(u[:, k], judged_recon[j][:, k]) for k, c in enumerate(names)} for j in judges},
            "judge_r2_on_images": {j: {c: r2_score(u[:, k], judged_x[j][:, k]) for k, c in enumerate(names)} for j in judges},
        },
        "interventional_mic": interventional_mic(model, scm, n=mic_images, seed=seed, batch_size=batch_size) if mic_images else None,
        "concepts": {},
    }
    g = torch.Generator().manual_seed(seed)
    for c in concepts:
        k = names.index(c)
        v, ok = readable_interventions(scm, labels, c, low, high, generator=g)
        idx = ok.nonzero().flatten()
        if idx.numel() == 0:
            out["concepts"][c] = {"n": 0}
            continue
        v = v[idx]
        lab = labels[idx]
        true_cf = scm.counterfactual(lab, do={c: v * scm.label_scale[k] + scm.label_loc[k]})  # [m, K] natural
        true_img = scm.render(true_cf, size=size).float() / 255.0
        cf = counterfactual_images(model, x[idx], {c: v}, batch_size)
        true_cf_norm = ((true_cf - scm.label_loc) / scm.label_scale).numpy()
        res = {"n": int(idx.numel()), "judges": {
            j: _judge_scores(judge, names, scm.graph, c, v, u[idx.numpy()], true_cf_norm, judged_recon[j][idx.numpy()], cf, true_img)
            for j, judge in judges.items()}}
        res["pixels"] = pixel_errors(x[idx].numpy(), recon[idx].numpy(), cf.numpy(), true_img.numpy())
        m = min(int(composition_images), int(idx.numel()))
        if m > 0 and composition_steps > 0:
            res["composition"] = model_composition(model, x[idx[:m]], c, composition_steps, batch_size).tolist()
            res["reversibility_l1"] = model_reversibility(model, x[idx[:m]], c, v[:m], batch_size)
            res["composition_recon_l1"] = float((recon[idx[:m]] - x[idx[:m]]).abs().mean())
        out["concepts"][c] = res
    return out
