"""Correlations and intervals for small samples: pooled, within-group and partial, with scipy's
bootstrap and permutation tests.

Every function takes plain arrays and returns a dict of floats; NaN where the statistic is
undefined (fewer than 3 pairs, a constant side). Conventions:

* interval: the 95 % percentile bootstrap interval (:func:`scipy.stats.bootstrap`, resampling
  pairs, or groups for a mean over groups) — except for means over a few replicates (seeds),
  which get Student's t interval (:func:`mean_interval`, :func:`difference_interval`);
* p-value: two-sided permutation test (:func:`scipy.stats.permutation_test`, permuting the
  pairing; exact when all pairings are fewer than the resamples; twice the smaller one-sided p). The test assumes the pairs
  are exchangeable: epochs of one run are not independent, so read p as descriptive;
* within-group correlation: the correlation computed in each group (a run's epochs) and
  averaged over groups; its interval resamples groups, its p-value permutes within groups —
  the question "does forgetting spread go with robustness *along a run*", which pooled data
  can answer with the opposite sign (Simpson's paradox) when runs differ in both;
* partial correlation: the correlation of what is left of x and y after a least-squares fit on
  a covariate z (for Spearman, of their ranks): the association not carried by z.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np
from scipy import stats

__all__ = ["METHODS", "pearson", "spearman", "correlation", "within_group_correlation", "partial_correlation",
           "mean_interval", "difference_interval"]


def pearson(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Pearson r along ``axis`` (vectorised over the other axes); NaN where a side is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    xc = x - x.mean(axis=axis, keepdims=True)
    yc = y - y.mean(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(axis=axis) / np.sqrt((xc * xc).sum(axis=axis) * (yc * yc).sum(axis=axis))
    constant = (np.ptp(x, axis=axis) == 0) | (np.ptp(y, axis=axis) == 0)
    return np.where(constant, np.nan, np.clip(r, -1.0, 1.0))


def spearman(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman ρ: Pearson r of average ranks (as :func:`scipy.stats.spearmanr`), vectorised."""
    return pearson(stats.rankdata(x, axis=axis), stats.rankdata(y, axis=axis), axis=axis)


METHODS: dict[str, Callable[..., np.ndarray]] = {"pearson": pearson, "spearman": spearman}


def _nan_result(n: int) -> dict[str, float]:
    out = {"n": float(n)}
    for name in METHODS:
        out.update({f"{name}_{k}": np.nan for k in ("r", "ci_low", "ci_high", "p")})
    return out


def _usable(*arrays: np.ndarray) -> bool:
    return arrays[0].size >= 3 and all(np.ptp(a) > 0 for a in arrays)


def _interval(data: tuple, statistic, *, resamples: int, seed: int, paired: bool = True) -> tuple[float, float]:
    if not resamples:
        return np.nan, np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # resamples with a constant side: NaN, dropped below
        res = stats.bootstrap(data, statistic, paired=paired, vectorized=True, n_resamples=resamples,
                              method="percentile", random_state=np.random.default_rng(seed))
    # the percentiles of the resamples where the statistic is defined (scipy's own interval is NaN
    # as soon as one resample of a small sample has a constant side)
    distribution = res.bootstrap_distribution
    distribution = distribution[np.isfinite(distribution)]
    if distribution.size == 0:
        return np.nan, np.nan
    low, high = np.percentile(distribution, [2.5, 97.5])
    return float(low), float(high)


def _permutation_p(data: tuple, statistic, *, permutations: int, seed: int) -> float:
    if not permutations:
        return np.nan
    res = stats.permutation_test(data, statistic, permutation_type="pairings", vectorized=True,
                                 n_resamples=permutations, alternative="two-sided",
                                 random_state=np.random.default_rng(seed))
    return float(res.pvalue)


def correlation(x: np.ndarray, y: np.ndarray, *, bootstrap: int = 1000, permutations: int = 1000,
                seed: int = 0) -> dict[str, float]:
    """Pearson and Spearman r of paired samples, bootstrap 95 % intervals, permutation p-values.

    Keys ``n`` and ``<method>_r``, ``_ci_low``, ``_ci_high``, ``_p`` for ``pearson`` and ``spearman``.
    """
    x, y = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.size} vs {y.size}")
    if not _usable(x, y):
        return _nan_result(x.size)
    out = {"n": float(x.size)}
    for name, fn in METHODS.items():
        out[f"{name}_r"] = float(fn(x, y))
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = _interval((x, y), fn, resamples=bootstrap, seed=seed)
        out[f"{name}_p"] = _permutation_p((x, y), fn, permutations=permutations, seed=seed)
    return out


def _residual(v: np.ndarray, z: np.ndarray, axis: int) -> np.ndarray:
    """``v`` less its least-squares fit ``a + b·z`` along ``axis``."""
    vc = v - v.mean(axis=axis, keepdims=True)
    zc = z - z.mean(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = (vc * zc).sum(axis=axis, keepdims=True) / (zc * zc).sum(axis=axis, keepdims=True)
    return vc - np.nan_to_num(slope) * zc


def partial_correlation(x: np.ndarray, y: np.ndarray, z: np.ndarray, *, bootstrap: int = 1000,
                        permutations: int = 1000, seed: int = 0) -> dict[str, float]:
    """Pearson and Spearman partial correlation of x and y given z (keys as :func:`correlation`).

    The interval refits the covariate in every bootstrap resample; the p-value permutes the
    pairing of the residuals (a permutation test of the partial association).
    """
    x, y, z = (np.asarray(a, float).ravel() for a in (x, y, z))
    if not (x.shape == y.shape == z.shape):
        raise ValueError(f"x, y and z differ in length: {x.size}, {y.size}, {z.size}")
    if not _usable(x, y):
        return _nan_result(x.size)
    out = {"n": float(x.size)}
    for name, fn in METHODS.items():
        rank = name == "spearman"

        def partial(a, b, c, axis=-1, rank=rank):
            if rank:
                a, b, c = (stats.rankdata(v, axis=axis) for v in (a, b, c))
            return pearson(_residual(a, c, axis), _residual(b, c, axis), axis=axis)

        out[f"{name}_r"] = float(partial(x, y, z))
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = _interval((x, y, z), partial, resamples=bootstrap, seed=seed)
        if rank:
            x_res, y_res = (_residual(stats.rankdata(v), stats.rankdata(z), -1) for v in (x, y))
        else:
            x_res, y_res = _residual(x, z, -1), _residual(y, z, -1)
        out[f"{name}_p"] = (_permutation_p((x_res, y_res), pearson, permutations=permutations, seed=seed)
                            if np.ptp(x_res) > 0 and np.ptp(y_res) > 0 else np.nan)
    return out


def within_group_correlation(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], *, bootstrap: int = 1000,
                             permutations: int = 1000, seed: int = 0) -> tuple[dict[str, float], dict[str, list]]:
    """The mean over groups of each group's Pearson and Spearman r (groups with 3+ varying pairs).

    Returns ``(summary, per_group)``: ``summary`` has ``n`` (the groups used) and, per method, the
    mean r, a bootstrap interval over groups (NaN with fewer than 2 groups) and a permutation
    p-value that shuffles y within every group at once; ``per_group`` holds each group's r (NaN
    where undefined), in the order given.
    """
    per_group = {name: [float(fn(np.asarray(x, float), np.asarray(y, float))) if _usable(np.asarray(x, float),
                                                                                          np.asarray(y, float))
                        else np.nan for x, y in zip(xs, ys)] for name, fn in METHODS.items()}
    keep = [k for k, r in enumerate(per_group["pearson"]) if np.isfinite(r)]
    out = {"n": float(len(keep))}
    if not keep:
        out.update({f"{m}_{k}": np.nan for m in METHODS for k in ("r", "ci_low", "ci_high", "p")})
        return out, per_group
    rng = np.random.default_rng(seed)
    groups = [(np.asarray(xs[k], float), np.asarray(ys[k], float)) for k in keep]
    for name, fn in METHODS.items():
        rs = np.array([per_group[name][k] for k in keep])
        out[f"{name}_r"] = float(rs.mean())
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = (
            _interval((rs,), np.mean, resamples=bootstrap, seed=seed, paired=False) if len(rs) >= 2
            and np.ptp(rs) > 0 else (np.nan, np.nan))
        if permutations:
            # stratified permutation: y shuffled within each group, the mean r recomputed
            perm = np.mean([fn(np.broadcast_to(x, (permutations, x.size)),
                               rng.permuted(np.broadcast_to(y, (permutations, y.size)), axis=1)) for x, y in groups],
                           axis=0)
            extreme = np.sum(np.abs(perm) >= abs(out[f"{name}_r"]) - 1e-12)
            out[f"{name}_p"] = float((1 + extreme) / (1 + permutations))
        else:
            out[f"{name}_p"] = np.nan
    return out, per_group


def mean_interval(values: np.ndarray, *, bootstrap: int = 1000, seed: int = 0) -> tuple[float, float, float, int]:
    """(mean, 95 % interval low, high, n) of replicate values (NaNs dropped).

    The interval is Student's t (:meth:`scipy.stats.ttest_1samp`'s ``confidence_interval``), not a
    bootstrap: replicates are few (seeds: 2–5), and a percentile bootstrap of a mean of n = 3 values
    covers the true mean far less often than 95 % (its widest interval is the range of the values).
    NaN with fewer than 2 values. ``bootstrap`` and ``seed`` are accepted for a uniform call and unused.
    """
    v = np.asarray(values, float).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.nan, np.nan, np.nan, 0
    if v.size < 2 or np.ptp(v) == 0:
        return float(v.mean()), np.nan, np.nan, int(v.size)
    ci = stats.ttest_1samp(v, 0.0).confidence_interval(0.95)
    return float(v.mean()), float(ci.low), float(ci.high), int(v.size)


def difference_interval(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """(mean(a) − mean(b), 95 % interval low, high): Welch's t interval for replicates of two
    conditions (:func:`scipy.stats.ttest_ind` with unequal variances); NaN interval with fewer than
    2 values on a side."""
    a, b = (np.asarray(v, float)[np.isfinite(v)] for v in (a, b))
    if a.size == 0 or b.size == 0:
        return np.nan, np.nan, np.nan
    value = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return value, np.nan, np.nan
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    return value, float(ci.low), float(ci.high)
