"""One API over ArviZ 0.x (``InferenceData``) and ArviZ >= 1.0 (``xarray.DataTree``), on plain draws.

Nothing here knows the model: the functions take draws as NumPy arrays with named dims (or
``xarray.Dataset`` s) and return the installed ArviZ's objects, or tables and datasets that have the same
layout and the same numbers under both versions.

- :func:`from_draws`: ``{group: {variable: (dims, array)}}`` -> an ``arviz.InferenceData`` (0.x) or an
  ``xarray.DataTree`` with one child node per group (>= 1.0); :func:`get_group` reads a group back as an
  ``xarray.Dataset`` under both.
- :func:`summary`: ``az.summary`` with the HDI at ``prob``, columns ``mean, sd, hdi_<p>%_lower,
  hdi_<p>%_upper`` (+ the diagnostics with ``kind="all"``), raw (unrounded) numbers.
- :func:`hdi`: ``az.hdi`` at ``prob`` as a Dataset with a dim ``hdi`` = ``["lower", "upper"]``.
- :func:`forest_intervals` / :func:`plot_forest`: the forest plot of ArviZ 0.x (point: median; thick
  line: quartiles; thin line: the HDI at ``prob``), drawn by ``az.plot_forest`` under both versions; under
  1.x its intervals are computed here and handed to ``arviz_plots.plot_forest`` as precomputed ``stats``.

Which API the installed ArviZ has is found by trying it (:data:`API`), not from a version number or a
name: ArviZ 1.x keeps an ``arviz.InferenceData`` name as a migration stub (it returns ``xarray.DataTree``,
which takes no groups as keyword arguments), and its ``az.summary`` / ``az.hdi`` / ``az.plot_forest``
take ``ci_prob`` / ``prob`` / ``ci_probs`` where 0.x takes ``hdi_prob``. The two also differ in their
defaults (1.x: an equal-tailed 89% interval and the mean as point estimate; 0.x: the 94% HDI and, in the
forest plot, the median), which is why calling ``az.summary(data)`` bare gives different numbers under
the two versions and these wrappers do not.

Under 1.x ``kind="all"`` diagnostics are computed by ArviZ 1.x's own code: ``ess_bulk`` and ``r_hat``
agree with 0.x, ``ess_tail`` and the MCSEs need not (``tests/test_arviz_bridge.py``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

with warnings.catch_warnings():
    # ArviZ 0.x announces its 1.0 refactor with a FutureWarning on import; it is not about this code.
    warnings.filterwarnings("ignore", message=".*ArviZ is undergoing a major refactor.*", category=FutureWarning)
    import arviz as az

__all__ = [
    "API",
    "ARVIZ_1",
    "ARVIZ_VERSION",
    "FOREST_STATS",
    "SAMPLE_DIMS",
    "check_prob",
    "forest_intervals",
    "from_draws",
    "get_group",
    "hdi",
    "plot_forest",
    "summary",
]

SAMPLE_DIMS = ("chain", "draw")
#: the rows of :func:`forest_intervals`, left to right as drawn
FOREST_STATS = ("hdi_lower", "q25", "median", "q75", "hdi_upper")
#: the installed ArviZ's version string
ARVIZ_VERSION: str = str(getattr(az, "__version__", "unknown"))

_DIAGNOSTICS = ("mcse_mean", "mcse_sd", "ess_bulk", "ess_tail", "r_hat")


# ---------------------------------------------------------------------------------------------------------
# which API the installed ArviZ has
# ---------------------------------------------------------------------------------------------------------
def _probe() -> str:
    """``"datatree"`` if ArviZ summarises an ``xarray.DataTree`` with ``ci_prob`` / ``ci_kind`` (1.x),
    ``"inferencedata"`` if it builds an ``InferenceData`` from groups and takes ``hdi_prob`` (0.x).

    :raises ImportError: if the installed ArviZ does neither.
    """
    tiny = xr.Dataset({"v": (SAMPLE_DIMS, np.array([[0.0, 1.0, 2.0, 3.0]]))},
                      coords={"chain": [0], "draw": np.arange(4)})
    errors = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = az.summary(xr.DataTree.from_dict({"/posterior": tiny}), kind="stats", ci_prob=0.5, ci_kind="hdi",
                             round_to="none")
            if np.isclose(float(out["mean"].iloc[0]), 1.5):
                return "datatree"
            errors.append(f"DataTree: az.summary gave a mean of {out['mean'].iloc[0]!r}, not 1.5")
        except Exception as err:  # noqa: BLE001  (any failure means: not this API)
            errors.append(f"DataTree: {type(err).__name__}: {err}")
        try:
            idata = az.InferenceData(posterior=tiny)
            out = az.summary(idata, kind="stats", hdi_prob=0.5, round_to="none")
            if np.isclose(float(out["mean"].iloc[0]), 1.5):
                return "inferencedata"
            errors.append(f"InferenceData: az.summary gave a mean of {out['mean'].iloc[0]!r}, not 1.5")
        except Exception as err:  # noqa: BLE001
            errors.append(f"InferenceData: {type(err).__name__}: {err}")
    raise ImportError(f"pyro_causalvae needs ArviZ 0.x (InferenceData) or >= 1.0 (DataTree); the installed arviz "
                      f"{ARVIZ_VERSION} works as neither ({'; '.join(errors)})")


#: ``"datatree"`` (ArviZ >= 1.0's API) or ``"inferencedata"`` (ArviZ 0.x's API), as found by trying it
API: str = _probe()
#: ``True`` when the installed ArviZ has the 1.x API (objects are ``xarray.DataTree``)
ARVIZ_1: bool = API == "datatree"


def check_prob(prob) -> float:
    """``prob`` as a float in (0, 1), or ``ValueError``."""
    if isinstance(prob, bool) or not isinstance(prob, (int, float, np.floating)) or not 0 < prob < 1:
        raise ValueError(f"prob must be a number in (0, 1), got {prob!r}")
    return float(prob)


# ---------------------------------------------------------------------------------------------------------
# containers
# ---------------------------------------------------------------------------------------------------------
def _dataset(group: str, variables, coords: Mapping) -> xr.Dataset:
    """One group's ``{variable: (dims, array)}`` (or an ``xarray.Dataset``) as a Dataset, with the
    coordinates of the dims it uses."""
    if isinstance(variables, xr.Dataset):
        return variables.copy()  # shallow: the arrays are shared, the attributes are not
    if not isinstance(variables, Mapping):
        raise TypeError(f"group {group!r} must be a mapping {{variable: (dims, array)}} or an xarray.Dataset, "
                        f"got {type(variables).__name__}")
    data_vars, used = {}, {}
    for name, spec in variables.items():
        try:
            dims, values = spec
        except (TypeError, ValueError) as err:
            raise ValueError(f"{group}/{name} must be a (dims, array) pair") from err
        dims, values = tuple(dims), np.asarray(values)
        if len(dims) != values.ndim:
            raise ValueError(f"{group}/{name} has {values.ndim} dims {list(values.shape)} but {len(dims)} names "
                             f"{list(dims)}")
        for d, n in zip(dims, values.shape):
            if d in coords and len(coords[d]) != n:
                raise ValueError(f"{group}/{name}: dim {d!r} has size {n} but {len(coords[d])} coordinates")
            if d in coords:
                used[d] = coords[d]
            elif d in SAMPLE_DIMS:
                used[d] = np.arange(n)
        data_vars[name] = (dims, values)
    return xr.Dataset(data_vars, coords=used)


def from_draws(groups: Mapping[str, Mapping | xr.Dataset | None], coords: Mapping[str, Sequence] | None = None,
               attrs: Mapping | None = None):
    """Bundle draws into the installed ArviZ's container.

    :param groups: ``{group: {variable: (dims, array)}}`` (or ``{group: xarray.Dataset}``; ``None``
        groups are skipped). Sampled groups (``posterior``, ``prior``, ``posterior_predictive``, ...)
        put ``("chain", "draw")`` first: ``[C, S, ...]``.
    :param coords: ``{dim: coordinate values}`` for any dim of any group (``chain`` and ``draw``
        default to ``0..n-1``).
    :param attrs: attributes (strings / numbers) set on every group, and on the root of a DataTree.
    :returns: an ``arviz.InferenceData`` under ArviZ 0.x, an ``xarray.DataTree`` under ArviZ >= 1.0.
    :raises ValueError: if an array's dims do not match its dim names or the coordinates.
    :raises TypeError: if a group is neither a mapping nor a Dataset.
    """
    coords = dict(coords or {})
    attrs = dict(attrs or {})
    datasets = {}
    for name, variables in groups.items():
        if variables is None:
            continue
        ds = _dataset(name, variables, coords)
        ds.attrs = {**ds.attrs, **attrs}
        datasets[name] = ds
    if ARVIZ_1:
        tree = xr.DataTree.from_dict({f"/{name}": ds for name, ds in datasets.items()})
        tree.attrs.update(attrs)
        return tree
    with warnings.catch_warnings():  # 0.x warns about group names outside its schema (e.g. "factual")
        warnings.filterwarnings("ignore", message=".*not defined in the InferenceData scheme.*", category=UserWarning)
        return az.InferenceData(**datasets)


def get_group(data, group: str) -> xr.Dataset:
    """The ``xarray.Dataset`` of one group of an ``InferenceData`` (ArviZ 0.x) or a ``DataTree`` (1.x).

    :raises KeyError: if the group is missing.
    """
    if isinstance(data, xr.DataTree):
        if group not in data.children:
            raise KeyError(f"no group {group!r}; groups are {list(data.children)}")
        return data[group].to_dataset()
    if group not in data.groups():
        raise KeyError(f"no group {group!r}; groups are {list(data.groups())}")
    return data[group]


def _as_tree(data):
    """ArviZ 1.x input: a Dataset of draws becomes the posterior of a DataTree; anything else unchanged."""
    if isinstance(data, xr.Dataset):
        return xr.DataTree.from_dict({"/posterior": data.copy()})
    return data


def _names(var_names) -> list[str] | None:
    if var_names is None:
        return None
    return [var_names] if isinstance(var_names, str) else list(var_names)


# ---------------------------------------------------------------------------------------------------------
# summary and HDI
# ---------------------------------------------------------------------------------------------------------
def summary(data, var_names: Sequence[str] | None = None, coords: Mapping | None = None, prob: float = 0.94,
            kind: str = "stats", round_to: int | None = None, group: str = "posterior") -> pd.DataFrame:
    """``az.summary`` with the HDI at ``prob``, the same table under ArviZ 0.x and 1.x.

    :param data: an object of :func:`from_draws` (or any ArviZ object), or a Dataset of draws.
    :param var_names: variables to summarise (default all in ``group``).
    :param coords: a selection, e.g. ``{"concept": ["light_angle"], "image": [0]}``.
    :param prob: HDI probability (0.x: ``hdi_prob``; 1.x: ``ci_prob`` with ``ci_kind="hdi"``).
    :param kind: ``"stats"`` (mean, sd, HDI), ``"diagnostics"`` (MCSE, ESS, R-hat) or ``"all"``.
    :param round_to: decimals, or ``None`` for the raw numbers (both versions round by default, differently).
    :param group: the group to summarise.
    :returns: a ``pandas.DataFrame``, one row per scalar (``"concepts[0, light_angle]"``), columns
        ``mean, sd, hdi_<p>%_lower, hdi_<p>%_upper`` (``p = 100 * prob``), then
        ``mcse_mean, mcse_sd, ess_bulk, ess_tail, r_hat`` for the diagnostics.
    """
    import pandas as pd  # arviz's dependency

    prob = check_prob(prob)
    if kind not in ("stats", "diagnostics", "all"):
        raise ValueError(f"kind must be 'stats', 'diagnostics' or 'all', got {kind!r}")
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int)):
        raise ValueError(f"round_to must be an integer number of decimals or None, got {round_to!r}")
    args = dict(var_names=_names(var_names), coords=coords, kind=kind, round_to="none", group=group)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Shape validation failed.*", category=UserWarning)
        if ARVIZ_1:
            table = az.summary(_as_tree(data), ci_prob=prob, ci_kind="hdi", **args)
            lower = [c for c in table.columns if str(c).startswith("hdi") and str(c).endswith("_lb")]
            upper = [c for c in table.columns if str(c).startswith("hdi") and str(c).endswith("_ub")]
        else:
            table = az.summary(data, hdi_prob=prob, **args)
            hdis = [c for c in table.columns if str(c).startswith("hdi_")]
            lower, upper = hdis[:1], hdis[1:]
    pct = f"{100 * prob:g}"
    table = pd.DataFrame(table).rename(columns={**{c: f"hdi_{pct}%_lower" for c in lower},
                                                **{c: f"hdi_{pct}%_upper" for c in upper}})
    order = [c for c in ("mean", "sd", f"hdi_{pct}%_lower", f"hdi_{pct}%_upper", *_DIAGNOSTICS) if c in table]
    table = table[order].astype(float)
    return table if round_to is None else table.round(round_to)


def hdi(data, var_names: Sequence[str] | None = None, coords: Mapping | None = None, prob: float = 0.94,
        group: str = "posterior") -> xr.Dataset:
    """``az.hdi`` at ``prob`` (0.x: ``hdi_prob``; 1.x: ``prob``) on one group.

    :returns: an ``xarray.Dataset`` with the sample dims replaced by a dim ``hdi`` = ``["lower", "upper"]``
        (0.x calls it ``hdi`` = ``["lower", "higher"]``, 1.x ``ci_bound`` = ``["lower", "upper"]``).
    """
    prob = check_prob(prob)
    args = dict(var_names=_names(var_names), coords=coords, group=group)
    if ARVIZ_1:
        out = az.hdi(_as_tree(data), prob=prob, **args)
        if isinstance(out, xr.DataTree):
            out = out[group].to_dataset() if group in out.children else out.to_dataset()
        out = out.rename(ci_bound="hdi")
    else:
        out = az.hdi(data, hdi_prob=prob, **args)
    return out.assign_coords(hdi=["lower", "upper"])


# ---------------------------------------------------------------------------------------------------------
# forest plot
# ---------------------------------------------------------------------------------------------------------
def _select(data, var_names, coords, group: str) -> xr.Dataset:
    ds = data if isinstance(data, xr.Dataset) else get_group(data, group)
    names = _names(var_names)
    if names is not None:
        ds = ds[names]
    return ds.sel(coords) if coords else ds


def _forest_numbers(values: np.ndarray, prob: float) -> np.ndarray:
    """``[..., n]`` draws -> ``[..., 5]``: HDI lower, 25%, 50%, 75% quantiles, HDI upper.

    The HDI is ArviZ's (both versions): the narrowest window of ``floor(prob * n) + 1`` sorted draws; the
    quantiles are ``numpy.percentile``'s (linear interpolation), as ArviZ 0.x's forest plot draws them.
    """
    s = np.sort(values, axis=-1)
    n = s.shape[-1]
    k = min(int(np.floor(prob * n)), n - 1)
    widths = s[..., k:] - s[..., : n - k]
    start = np.argmin(widths, axis=-1)[..., None]
    lo = np.take_along_axis(s, start, axis=-1)[..., 0]
    hi = np.take_along_axis(s, start + k, axis=-1)[..., 0]
    q = np.moveaxis(np.percentile(s, [25, 50, 75], axis=-1), 0, -1)
    return np.concatenate([lo[..., None], q, hi[..., None]], axis=-1)


def forest_intervals(data, var_names: Sequence[str] | None = None, coords: Mapping | None = None,
                     prob: float = 0.94, combined: bool = True, group: str = "posterior") -> xr.Dataset:
    """What :func:`plot_forest` draws, as numbers.

    :param data: an ArviZ object or a Dataset of draws (one, not a dict).
    :param combined: pool the chains (else one row per chain, a ``chain`` dim in the result).
    :returns: an ``xarray.Dataset``, each variable with its non-sample dims and a last dim ``forest`` =
        :data:`FOREST_STATS` (HDI lower, quartiles, median, HDI upper).
    """
    prob = check_prob(prob)
    ds = _select(data, var_names, coords, group)
    reduce = [d for d in (SAMPLE_DIMS if combined else ("draw",))]
    out = {}
    for name, da in ds.data_vars.items():
        keep = [d for d in da.dims if d not in reduce]
        flat = da.transpose(*keep, *reduce).values.reshape(*[da.sizes[d] for d in keep], -1)
        out[name] = ((*keep, "forest"), _forest_numbers(flat.astype(np.float64), prob))
    return xr.Dataset(out, coords={**{d: ds[d] for d in ds.dims if d not in reduce and d in ds.coords},
                                   "forest": list(FOREST_STATS)})


def _forest_stats_1x(data, var_names, coords, prob: float, combined: bool) -> dict:
    """The ``stats`` argument of ``arviz_plots.plot_forest``: 0.x's intervals, precomputed."""
    import pandas as pd  # arviz's dependency

    if isinstance(data, dict):
        parts = [forest_intervals(v, var_names, coords, prob, combined) for v in data.values()]
        numbers = xr.concat(parts, dim=pd.Index(list(data.keys()), name="model"))
    else:
        numbers = forest_intervals(data, var_names, coords, prob, combined)

    def pick(lo: str, hi: str) -> xr.Dataset:
        return (numbers.sel(forest=[lo, hi]).rename(forest="ci_bound").assign_coords(ci_bound=["lower", "upper"]))

    return {"twig": pick("hdi_lower", "hdi_upper"), "trunk": pick("q25", "q75"),
            "point_estimate": numbers.sel(forest="median", drop=True)}


def plot_forest(data, var_names: Sequence[str] | None = None, coords: Mapping | None = None, prob: float = 0.94,
                combined: bool = True, **kwargs):
    """``az.plot_forest`` of the posterior with the same intervals under ArviZ 0.x and 1.x: point at the
    median, thick line from the 25% to the 75% quantile, thin line over the HDI at ``prob``
    (:func:`forest_intervals` gives these numbers).

    :param data: one ArviZ object (or ``xarray.Dataset`` of draws), or a ``dict`` ``{label: object}`` to
        compare several (e.g. the factual and counterfactual posteriors), drawn side by side per variable.
    :param var_names: variables to draw (default all in ``group``).
    :param coords: a selection, e.g. ``{"image": [0]}``.
    :param prob: HDI probability of the thin line.
    :param combined: pool the chains.
    :param kwargs: passed to ``az.plot_forest`` (``figsize`` works under both versions).
    :returns: what ``az.plot_forest`` returns: matplotlib axes (0.x) or a ``PlotCollection`` (1.x).
    """
    prob = check_prob(prob)
    if isinstance(data, dict) and not data:
        raise ValueError("data is an empty dict: give one object or {label: object}")
    if ARVIZ_1:
        if "figsize" in kwargs:  # 1.x takes the figure size through the PlotCollection's figure_kwargs
            kwargs["figure_kwargs"] = {**kwargs.get("figure_kwargs", {}), "figsize": kwargs.pop("figsize")}
        stats = _forest_stats_1x(data, var_names, coords, prob, combined)
        data = {k: _as_tree(v) for k, v in data.items()} if isinstance(data, dict) else _as_tree(data)
        return az.plot_forest(data, var_names=_names(var_names), coords=coords, combined=combined,
                              point_estimate="median", ci_kind="hdi", ci_probs=(min(0.5, prob), prob), stats=stats,
                              **kwargs)
    if isinstance(data, dict):
        kwargs.setdefault("model_names", list(data.keys()))
        data = list(data.values())
    return az.plot_forest(data, var_names=_names(var_names), coords=coords, combined=combined, hdi_prob=prob,
                          quartiles=True, **kwargs)
