"""The paper's findings, tested on a summary: a statistic, its 95 % interval and a verdict each.

arXiv 2307.06006 reports three findings (DESIGN §2); :func:`findings_table` states, for the runs
in a ``summary.nc``, whether each holds. The rules are fixed here, before any result is looked at,
and the README states them in words (section "How the findings are judged"):

* **F1** — runs finetuned from a pretrained model have lower learning and forgetting in the early
  blocks than runs from scratch. Statistic: the mean over the first half of the blocks
  (blocks 1..⌊L/2⌋) of learning (a row) and of forgetting (a row), scratch minus pretrained, at
  the last scored epoch and (further rows) averaged over the scored epochs ≥ 1. Per target and
  task, wherever both inits ran with the same other settings.
* **F2** — finetuning compresses the pretrained model's invariances toward shallower blocks.
  Statistic: the compression index of the finetuned run at its last scored epoch
  (:func:`stirflow.invariance.compression_index`: the flow matrix's gain over the within-model
  matrix before finetuning, below the diagonal minus above it; 0 before finetuning). Per target
  and task, for pretrained runs (the finding) and from-scratch runs (for comparison).
* **F3** — the spread of forgetting over blocks correlates with robustness, more strongly over the
  first epochs. Statistics, per task kind, from the correlation table: the pooled Pearson r over
  all runs × epochs ≥ 1 with the mean within-run r beside it (absolute robustness: the finding;
  relative robustness: whether it survives taking clean accuracy out), and r over the first k
  epochs minus r over all epochs.

Intervals: over seeds (Student's t for a mean, Welch's t for a difference: with 2–5 seeds a
percentile bootstrap covers the truth far less often than 95 %) where a condition has 2 or more
seeds; otherwise over images (the same bootstrap resamples of the STIR images for every run,
``stir.image_bootstrap``), which shows how much the choice of images moves the statistic but not
how much training does; F3 intervals resample (run, epoch) pairs, and the early-epochs difference
resamples runs. The ``interval`` column says which.

Verdicts, for a statistic whose predicted sign is positive: **reproduced** when its whole interval
is above 0; **not reproduced** when its whole interval is below 0; **inconclusive** otherwise (the
interval contains 0, or there is none). F3 is reproduced only when the pooled interval is above 0
*and* the mean within-run r is positive; it is not reproduced when the pooled interval is below 0
or the within-run interval is. **not testable** says the config cannot test the finding (no
from-scratch run, a single run, no reconstruction run) and why.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from .statistics import difference_interval, mean_interval, pearson

__all__ = ["VERDICTS", "COLUMNS", "verdict", "findings_table", "findings_dataset", "format_markdown",
           "convergence_lines", "summary_html"]

VERDICTS = ("reproduced", "not reproduced", "inconclusive", "not testable")
COLUMNS = ["finding", "claim", "target", "task", "init", "statistic", "value", "ci_low", "ci_high", "n",
           "interval", "verdict", "note"]
#: run coordinates that say what a run is, not which setting it varies
IDENTITY = ("target", "init", "task", "seed", "condition")
#: run coordinates that follow from a setting: from the run's ``model`` (a setting comparable runs
#: share), and the number of training images, from its ``train_fraction``
DERIVED = ("architecture", "layer_kind", "depth", "n_train")


def verdict(low: float, high: float) -> str:
    """The verdict for a statistic predicted to be positive, from its 95 % interval."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive"
    if low > 0:
        return "reproduced"
    if high < 0:
        return "not reproduced"
    return "inconclusive"


def _settings_key(ds: xr.Dataset, run, leave_out: Sequence[str] = ()) -> tuple:
    """The varied settings of a run (grid values, overrides, its model), which comparable runs share;
    coordinates that are the same for every run, and those named in ``leave_out``, are left out."""
    extra = [c for c in ds["run"].coords if c not in ("run", *IDENTITY, *DERIVED) and ds[c].dims == ("run",)
             and not any(c == k or c.startswith(f"{k}_") for k in leave_out)
             and len(set(map(str, ds[c].values))) > 1]
    return tuple((c, str(ds[c].sel(run=run).values)) for c in sorted(extra))


def _groups(ds: xr.Dataset) -> dict[tuple, dict[str, list[str]]]:
    """{(target, task, settings): {init: [runs (one per seed)]}}."""
    groups: dict[tuple, dict[str, list[str]]] = {}
    for run in ds.run.values:
        key = (str(ds["target"].sel(run=run).values), str(ds["task"].sel(run=run).values), _settings_key(ds, run))
        groups.setdefault(key, {}).setdefault(str(ds["init"].sel(run=run).values), []).append(str(run))
    return groups


def own_layers(ds: xr.Dataset, run) -> list[int]:
    """The layers of ``run``'s own model (a summary of several architectures has NaN beyond a shallower one's)."""
    if "relative_depth" in ds.coords:
        depth = ds["relative_depth"].sel(run=run).values
        return [int(b) for b, d in zip(ds.layer.values, depth) if np.isfinite(d)]
    return [int(b) for b in ds.layer.values]


def _scored(ds: xr.Dataset, run: str) -> list[int]:
    f = ds["forgetting"].sel(run=run, layer=own_layers(ds, run))
    return [int(e) for e in ds.epoch.values if np.isfinite(f.sel(epoch=e).values).all()]


def _early_blocks(ds: xr.Dataset, run=None) -> list[int]:
    """The first half of the layers (of ``run``'s model; of the summary when None): blocks 1..⌊L/2⌋."""
    layers = own_layers(ds, run) if run is not None else [int(b) for b in ds.layer.values]
    return layers[:max(1, len(layers) // 2)]


def _per_run(ds: xr.Dataset, runs: Sequence[str], variable: str, when: str, blocks: Sequence[int] | None):
    """Per run: the value (mean over ``blocks`` where the variable has layers) at the last scored epoch
    (``when="last"``) or averaged over scored epochs ≥ 1 (``"mean"``), and the same per image resample
    (None where the summary has no resamples)."""
    values, boots = [], []
    boot_name = f"{variable}_boot"
    per_run_blocks = blocks == "early"
    for run in runs:
        if per_run_blocks:  # the first half of the run's own layers
            blocks = _early_blocks(ds, run)
        epochs = _scored(ds, run)
        epochs = [epochs[-1]] if when == "last" else [e for e in epochs if e >= 1]
        if not epochs:
            values.append(np.nan)
            boots.append(None)
            continue
        sel = {"run": run, "epoch": epochs}
        v = ds[variable].sel(sel)
        b = ds[boot_name].sel(sel) if boot_name in ds else None
        if blocks is not None:
            v = v.sel(layer=blocks).mean("layer")
            b = b.sel(layer=blocks).mean("layer") if b is not None else None
        values.append(float(v.mean("epoch")))
        boots.append(b.mean("epoch").values if b is not None else None)
    return np.array(values), boots


def _difference_row(values_s, boots_s, values_p, boots_p) -> tuple:
    """(value, low, high, n, interval) of mean(scratch) − mean(pretrained): Welch's t interval over
    seeds where both sides have 2 or more, else the image bootstrap, else none."""
    n = f"{len(values_s)} + {len(values_p)}"
    if len(values_s) >= 2 and len(values_p) >= 2:
        return (*difference_interval(values_s, values_p), n, "seeds")
    value = float(np.nanmean(values_s) - np.nanmean(values_p))
    if all(b is not None for b in boots_s + boots_p):
        diff = np.mean(boots_s, axis=0) - np.mean(boots_p, axis=0)
        low, high = np.nanpercentile(diff, [2.5, 97.5])
        return value, float(low), float(high), n, f"images ({diff.size} resamples)"
    return value, np.nan, np.nan, n, "none"


def _mean_row(values, boots, *, bootstrap: int, seed: int) -> tuple:
    if len(values) >= 2:
        value, low, high, n = mean_interval(values, bootstrap=bootstrap, seed=seed)
        return value, low, high, str(n), "seeds"
    if boots and all(b is not None for b in boots):
        mean = np.mean(boots, axis=0)
        low, high = np.nanpercentile(mean, [2.5, 97.5])
        return float(np.nanmean(values)), float(low), float(high), str(len(values)), f"images ({mean.size} resamples)"
    return float(np.nanmean(values)) if len(values) else np.nan, np.nan, np.nan, str(len(values)), "none"


def _row(finding: str, claim: str, statistic: str, value, low, high, n, interval, *, target="", task="", init="",
         note="", judged: str | None = None) -> dict[str, Any]:
    return {"finding": finding, "claim": claim, "target": target, "task": task, "init": init,
            "statistic": statistic, "value": value, "ci_low": low, "ci_high": high, "n": n, "interval": interval,
            "verdict": judged or verdict(low, high), "note": note}


def _untestable(finding: str, claim: str, why: str, **where) -> dict[str, Any]:
    return _row(finding, claim, "", np.nan, np.nan, np.nan, "", "none", judged="not testable", note=why, **where)


def _settings_note(key: tuple) -> str:
    return ", ".join(f"{k} = {v}" for k, v in key)


F1_CLAIM = "pretrained runs learn and forget less in the early blocks than runs from scratch"
F2_CLAIM = "finetuning moves the pretrained model's invariances toward shallower blocks"
F3_CLAIM = "forgetting spread correlates with robustness"
F3_EARLY_CLAIM = "the correlation is stronger over the first epochs"


def _span(ds: xr.Dataset, run) -> str:
    blocks = _early_blocks(ds, run)
    kind = str(ds["layer_kind"].sel(run=run).values) if "layer_kind" in ds.coords else "block"
    return f"{kind}s {blocks[0]}-{blocks[-1]}" if len(blocks) > 1 else f"{kind} {blocks[0]}"


def _f1_f2(ds: xr.Dataset, *, bootstrap: int, seed: int) -> list[dict[str, Any]]:
    rows = []
    for (target, task, key), inits in _groups(ds).items():
        where = dict(target=target, task=task)
        note = _settings_note(key)
        span = _span(ds, next(iter(inits.values()))[0])  # the runs of a group share their model
        if {"pretrained", "scratch"} <= set(inits):
            for measure, when in itertools.product(("learning", "forgetting"), ("last", "mean")):
                s = _per_run(ds, inits["scratch"], measure, when, "early")
                p = _per_run(ds, inits["pretrained"], measure, when, "early")
                stat = (f"mean {measure} over {span}, scratch - pretrained, "
                        + ("last epoch" if when == "last" else "mean over epochs >= 1"))
                rows.append(_row("F1", F1_CLAIM, stat, *_difference_row(*s, *p),
                                 note=note, **where))
        else:
            rows.append(_untestable("F1", F1_CLAIM, f"needs pretrained and from-scratch runs (has {sorted(inits)})",
                                    **where))
        for init, runs in sorted(inits.items()):
            values, boots = _per_run(ds, runs, "compression", "last", None)
            stat = "compression index at the last epoch (flow gain below the diagonal minus above)"
            finding = "F2" if init == "pretrained" else "F2 (scratch, for comparison)"
            rows.append(_row(finding, F2_CLAIM, stat, *_mean_row(values, boots, bootstrap=bootstrap, seed=seed),
                             init=init, note=note, **where))
    if "reconstruction" not in set(map(str, ds["task"].values)):
        rows.append(_untestable("F2", F2_CLAIM, "no reconstruction run: the paper sees compression mostly there",
                                task="reconstruction"))
    return rows


def _corr(ds: xr.Dataset, task: str, scope: str, measure: str, estimate: str, key: str) -> float:
    return float(ds[f"corr_{key}"].sel(task_kind=task, scope=scope, measure=measure, estimate=estimate))


def _f3(ds: xr.Dataset, *, bootstrap: int, seed: int) -> list[dict[str, Any]]:
    from .analysis import _points, _scope_limit

    rows = []
    if "corr_pearson_r" not in ds:
        return [_untestable("F3", F3_CLAIM, "no correlation table in the summary")]
    for task in map(str, ds.task_kind.values):
        for measure in [m for m in ("absolute", "relative") if m in ds.measure.values]:  # corruption robustness
            r = _corr(ds, task, "all", measure, "pooled", "pearson_r")
            low = _corr(ds, task, "all", measure, "pooled", "pearson_ci_low")
            high = _corr(ds, task, "all", measure, "pooled", "pearson_ci_high")
            within = _corr(ds, task, "all", measure, "within_run", "pearson_r")
            w_low = _corr(ds, task, "all", measure, "within_run", "pearson_ci_low")
            w_high = _corr(ds, task, "all", measure, "within_run", "pearson_ci_high")
            partial = _corr(ds, task, "all", measure, "partial", "pearson_r")
            n = int(_corr(ds, task, "all", measure, "pooled", "n"))
            runs = int(_corr(ds, task, "all", measure, "within_run", "n"))
            if not np.isfinite(r):
                rows.append(_untestable("F3" if measure == "absolute" else "F3 (relative robustness)", F3_CLAIM,
                                        f"{n} (run, epoch) pairs: too few, or a constant side", task=task))
                continue
            if np.isfinite(low) and low > 0 and within > 0:
                judged = "reproduced"
            elif (np.isfinite(high) and high < 0) or (np.isfinite(w_high) and w_high < 0):
                judged = "not reproduced"
            else:
                judged = "inconclusive"
            note = (f"mean within-run r {within:.3f} [{w_low:.3f}, {w_high:.3f}] over {runs} runs; "
                    f"partial r (given clean score) {partial:.3f}")
            rows.append(_row("F3" if measure == "absolute" else "F3 (relative robustness)", F3_CLAIM,
                             f"pooled Pearson r, forgetting spread vs {measure} robustness, epochs >= 1",
                             r, low, high, str(n), "(run, epoch) pairs", task=task, note=note, judged=judged))
        for scope in [str(s) for s in ds.scope.values if s != "all"]:
            points = _points(ds, task, None, "absolute")
            limit = _scope_limit(scope)
            value, low, high = _early_difference(ds, points, limit, bootstrap=bootstrap, seed=seed)
            rows.append(_row("F3 (first epochs)", F3_EARLY_CLAIM,
                             f"pooled Pearson r over epochs 1-{limit} minus over all epochs (absolute robustness)",
                             value, low, high, f"{len(points)} runs", "runs" if np.isfinite(low) else "none",
                             task=task, note="interval needs 3 or more runs" if not np.isfinite(low) else ""))
    return rows


def _early_difference(ds: xr.Dataset, points, limit: int, *, bootstrap: int, seed: int) -> tuple[float, float, float]:
    """r(epochs 1..limit) − r(all epochs), pooled, with a bootstrap over runs (3 or more runs)."""
    epochs = [int(e) for e in ds.epoch.values if e >= 1]

    @functools.cache  # a run's points are read once, not once per bootstrap resample
    def run_points(run, up_to):
        sub = ds.sel(run=run, epoch=[e for e in epochs if e <= up_to])
        x, y = sub["forgetting_spread"].values, sub["robustness_oriented"].values
        ok = np.isfinite(x) & np.isfinite(y)
        return x[ok], y[ok]

    def pooled(selection, up_to):
        xs, ys = zip(*(run_points(points[k][0], up_to) for k in selection))
        x, y = np.concatenate(xs), np.concatenate(ys)
        return float(pearson(x, y)) if x.size >= 3 else np.nan

    k_all = list(range(len(points)))
    if not k_all:
        return np.nan, np.nan, np.nan
    value = pooled(k_all, limit) - pooled(k_all, max(epochs))
    if len(points) < 3 or not bootstrap:
        return value, np.nan, np.nan
    rng = np.random.default_rng(seed)
    diffs = [pooled(sel, limit) - pooled(sel, max(epochs)) for sel in rng.integers(0, len(points), (bootstrap, len(points)))]
    diffs = np.asarray(diffs)
    diffs = diffs[np.isfinite(diffs)]
    if not diffs.size:
        return value, np.nan, np.nan
    low, high = np.percentile(diffs, [2.5, 97.5])
    return value, float(low), float(high)


# --------------------------------------------------------------------------- the open questions
#
# Rows that answer the open questions along each axis the summary varies (README, "The open
# questions"). Each has an effect size, its 95 % interval (over seeds where a condition has two or
# more, else over the STIR images' bootstrap resamples, else none) and a plain-words answer in the
# verdict column, decided by :func:`answer` from the interval alone.

NO_EFFECT = "no detectable effect"
NO_INTERVAL = "undetermined (no interval)"


def answer(low: float, high: float, positive: str, negative: str) -> str:
    """The plain-words answer of an effect size from its 95 % interval: ``positive`` when the whole
    interval is above 0, ``negative`` when it is below, :data:`NO_EFFECT` when it contains 0 and
    :data:`NO_INTERVAL` when there is none."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return NO_INTERVAL
    if low > 0:
        return positive
    if high < 0:
        return negative
    return NO_EFFECT


def _reduce(name: str, values: np.ndarray) -> np.ndarray:
    """A run's statistic from its layers' values (last axis: the run's own layers in order)."""
    half = max(1, values.shape[-1] // 2)
    if name == "early":
        return values[..., :half].mean(-1)
    if name == "spread":  # the population std over layers, as forgetting_spread
        return values.std(-1)
    if name == "gradient":  # the second half of the layers minus the first
        return values[..., values.shape[-1] - half:].mean(-1) - values[..., :half].mean(-1)
    raise ValueError(name)


#: The statistics of a run the open questions compare: (variable, reduction, words, what more is).
RUN_STATISTICS = {
    "early learning": ("learning", "early", "mean learning over the first half of the layers", "learning"),
    "early forgetting": ("forgetting", "early", "mean forgetting over the first half of the layers", "forgetting"),
    "forgetting spread": ("forgetting", "spread", "forgetting spread (std over layers)", "forgetting spread"),
    "learning depth gradient": ("learning", "gradient", "learning, second half of the layers minus the first",
                                "learning in the deeper layers"),
    "forgetting depth gradient": ("forgetting", "gradient", "forgetting, second half of the layers minus the first",
                                  "forgetting in the deeper layers"),
}


def run_statistic(ds: xr.Dataset, run, statistic: str) -> tuple[float, np.ndarray | None]:
    """``statistic`` (:data:`RUN_STATISTICS`) of ``run`` at its last scored epoch over its own
    layers, and the same on every image resample (None where the summary has none)."""
    variable, how, _, _ = RUN_STATISTICS[statistic]
    epochs = _scored(ds, run)
    if not epochs:
        return np.nan, None
    sel = {"run": run, "epoch": epochs[-1], "layer": own_layers(ds, run)}
    value = float(_reduce(how, ds[variable].sel(sel).values))
    boot = f"{variable}_boot"
    resampled = _reduce(how, ds[boot].sel(sel).transpose("resample", "layer").values) if boot in ds else None
    return value, resampled


def _question_groups(ds: xr.Dataset, axis: str) -> dict[tuple, list[str]]:
    """Runs that differ only along ``axis`` (and their seed): {(target, task, init, settings): runs}."""
    groups: dict[tuple, list[str]] = {}
    for run in ds.run.values:
        key = tuple(str(ds[c].sel(run=run).values) for c in ("target", "task", "init"))
        groups.setdefault(key + (_settings_key(ds, run, leave_out=(axis,)),), []).append(str(run))
    return groups


def _slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of y on x along the last axis (y may have leading axes)."""
    xc = x - x.mean()
    return ((y - y.mean(-1, keepdims=True)) * xc).sum(-1) / (xc * xc).sum()


def _slope_row(ds: xr.Dataset, runs: Sequence[str], x: np.ndarray, statistic: str) -> tuple:
    """(value, low, high, n, interval) of the slope of ``statistic`` on ``x`` over ``runs``: the mean
    of the per-seed slopes with Student's t where 2 or more seeds cover 2 or more values of x each,
    else the slope with an interval over image resamples, else none."""
    stats = [run_statistic(ds, r, statistic) for r in runs]
    values = np.array([v for v, _ in stats])
    seeds = np.array([int(ds["seed"].sel(run=r)) for r in runs]) if "seed" in ds.coords else np.zeros(len(runs), int)
    per_seed = []
    for s in sorted(set(seeds)):
        k = (seeds == s) & np.isfinite(values)
        if len(set(x[k])) >= 2:
            per_seed.append(float(_slope(x[k], values[k])))
    n = f"{len(runs)} runs, {len(set(x))} values"
    if len(per_seed) >= 2:
        value, low, high, _ = mean_interval(per_seed)
        return value, low, high, f"{n}, {len(per_seed)} seeds", "seeds"
    ok = np.isfinite(values)
    value = float(_slope(x[ok], values[ok])) if len(set(x[ok])) >= 2 else np.nan
    if all(b is not None for _, b in stats) and np.isfinite(value):
        boots = np.stack([b for _, b in stats], axis=-1)[..., ok]  # (resample, run)
        low, high = np.nanpercentile(_slope(x[ok], boots), [2.5, 97.5])
        return value, float(low), float(high), n, f"images ({boots.shape[0]} resamples)"
    return value, np.nan, np.nan, n, "none"


Q_TRAIN_FRACTION = "how does the amount of finetuning data change what is learned and forgotten?"
Q_SCHEDULE = "does the learning-rate schedule change what is learned and forgotten?"
Q_ADVERSARIAL = "does forgetting spread go with adversarial robustness as with corruption robustness?"
Q_ARCHITECTURES = "where in depth do other architectures learn and forget?"
#: statistic → (answer when the effect size is positive, when negative), per open question
TRAIN_FRACTION_ANSWERS = {"early learning": ("more data → more learning", "more data → less learning"),
                          "early forgetting": ("more data → more forgetting", "more data → less forgetting"),
                          "forgetting spread": ("more data → larger forgetting spread",
                                                "more data → smaller forgetting spread")}


def _where(key: tuple) -> dict[str, str]:
    return dict(target=key[0], task=key[1], init=key[2])


def _q_train_fraction(ds: xr.Dataset) -> list[dict[str, Any]]:
    """Q1: the slope of early-layer learning, early-layer forgetting and forgetting spread at the last
    epoch against log10 of the train fraction (per tenfold more data), per target, task, init and
    other settings."""
    if "train_fraction" not in ds.coords:
        return []
    rows = []
    for key, runs in _question_groups(ds, "train_fraction").items():
        x = np.log10([float(ds["train_fraction"].sel(run=r)) for r in runs])
        if len(set(x)) < 2:
            continue
        for statistic, (positive, negative) in TRAIN_FRACTION_ANSWERS.items():
            value, low, high, n, interval = _slope_row(ds, runs, x, statistic)
            words = RUN_STATISTICS[statistic][2]
            rows.append(_row("Q1 train fraction", Q_TRAIN_FRACTION,
                             f"slope of the {words} at the last epoch against log10(train fraction)",
                             value, low, high, n, interval, judged=answer(low, high, positive, negative),
                             note=_settings_note(key[3]), **_where(key)))
    return rows


def _q_schedule(ds: xr.Dataset) -> list[dict[str, Any]]:
    """Q2: each schedule minus the first one of its group (in run order), for early-layer learning,
    early-layer forgetting and forgetting spread at the last epoch."""
    if "schedule" not in ds.coords:
        return []
    rows = []
    for key, runs in _question_groups(ds, "schedule").items():
        by_schedule: dict[str, list[str]] = {}
        for r in runs:
            by_schedule.setdefault(str(ds["schedule"].sel(run=r).values), []).append(r)
        if len(by_schedule) < 2:
            continue
        reference, *others = by_schedule
        for other in others:
            for statistic, (_, _, words, what) in RUN_STATISTICS.items():
                if "gradient" in statistic:
                    continue
                a = [run_statistic(ds, r, statistic) for r in by_schedule[other]]
                b = [run_statistic(ds, r, statistic) for r in by_schedule[reference]]
                value, low, high, n, interval = _difference_row([v for v, _ in a], [s for _, s in a],
                                                                [v for v, _ in b], [s for _, s in b])
                judged = answer(low, high, f"{other}: more {what} than {reference}",
                                f"{other}: less {what} than {reference}")
                rows.append(_row("Q2 schedule", Q_SCHEDULE, f"{words} at the last epoch, {other} - {reference}",
                                 value, low, high, n, interval, judged=judged, note=_settings_note(key[3]),
                                 **_where(key)))
    return rows


def _q_adversarial(ds: xr.Dataset, *, bootstrap: int, seed: int) -> list[dict[str, Any]]:
    """Q3: per task kind and adversarial measure of the correlation table, the pooled Pearson r of
    forgetting spread with it (judged like F3), and its difference from the r with corruption
    robustness on the same (run, epoch) pairs (a paired bootstrap over the pairs)."""
    if "corr_pearson_r" not in ds or "measure" not in ds.coords:
        return []
    rows = []
    for task in map(str, ds.task_kind.values):
        for measure in [str(m) for m in ds.measure.values if str(m).startswith("adversarial_")]:
            r = _corr(ds, task, "all", measure, "pooled", "pearson_r")
            if not np.isfinite(r):
                continue
            low, high = (_corr(ds, task, "all", measure, "pooled", k) for k in ("pearson_ci_low", "pearson_ci_high"))
            within, w_low, w_high = (_corr(ds, task, "all", measure, "within_run", k)
                                     for k in ("pearson_r", "pearson_ci_low", "pearson_ci_high"))
            partial = _corr(ds, task, "all", measure, "partial", "pearson_r")
            which = "relative adversarial robustness" if measure.endswith("_relative") else "adversarial robustness"
            if np.isfinite(low) and low > 0 and within > 0:
                judged = f"spread goes with {which}"
            elif (np.isfinite(high) and high < 0) or (np.isfinite(w_high) and w_high < 0):
                judged = f"spread goes against {which}"
            elif np.isfinite(low):
                judged = "no detectable correlation"
            else:
                judged = NO_INTERVAL
            text = str(ds["measure_description"].sel(measure=measure).values)
            rows.append(_row("Q3 adversarial", Q_ADVERSARIAL,
                             f"pooled Pearson r, forgetting spread vs {text}, epochs >= 1", r, low, high,
                             str(int(_corr(ds, task, "all", measure, "pooled", "n"))), "(run, epoch) pairs",
                             task=task, judged=judged,
                             note=f"mean within-run r {within:.3f} [{w_low:.3f}, {w_high:.3f}]; partial r "
                                  f"(given clean score) {partial:.3f}"))
            base = "relative" if measure.endswith("_relative") else "absolute"
            value, low, high, n = _correlation_difference(ds, task, measure, base, bootstrap=bootstrap, seed=seed)
            rows.append(_row("Q3 adversarial", Q_ADVERSARIAL,
                             f"Pearson r with {text} minus r with {base} corruption robustness, same pairs",
                             value, low, high, str(n), "(run, epoch) pairs" if np.isfinite(low) else "none",
                             task=task, judged=answer(low, high, "spread tracks adversarial robustness more closely",
                                                      "spread tracks corruption robustness more closely")))
    return rows


def _correlation_difference(ds: xr.Dataset, task: str, measure: str, base: str, *, bootstrap: int,
                            seed: int) -> tuple[float, float, float, int]:
    """r(spread, ``measure``) − r(spread, ``base``) over the (run, epoch ≥ 1) pairs of ``task`` where
    both measures exist, with a percentile bootstrap resampling the pairs (the same for both r)."""
    from .analysis import correlation_measures

    measures = correlation_measures(ds)
    sel = {"run": ds.run.values[ds["task"].values == task], "epoch": [e for e in ds.epoch.values if e >= 1]}
    x, u, v = (a.sel(sel).transpose("run", "epoch").values.ravel()
               for a in (ds["forgetting_spread"], measures[measure][1], measures[base][1]))
    keep = np.isfinite(x) & np.isfinite(u) & np.isfinite(v)
    x, u, v = x[keep], u[keep], v[keep]
    if x.size < 3:
        return np.nan, np.nan, np.nan, int(x.size)
    value = float(pearson(x, u) - pearson(x, v))
    if not bootstrap:
        return value, np.nan, np.nan, int(x.size)
    k = np.random.default_rng(seed).integers(0, x.size, (bootstrap, x.size))
    diffs = pearson(x[k], u[k]) - pearson(x[k], v[k])
    diffs = diffs[np.isfinite(diffs)]
    if not diffs.size:
        return value, np.nan, np.nan, int(x.size)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return value, float(low), float(high), int(x.size)


def architecture_groups(ds: xr.Dataset) -> dict[str, dict[tuple, list[str]]]:
    """{model: {(target, task, init, settings): runs}}: per architecture, its runs that differ in
    nothing else (seeds aside). Where other settings vary too, only the groups whose other settings
    every architecture ran, so that the architectures are compared side by side on equal terms
    (all groups where there are no such settings)."""
    def others(key):
        return key[:3] + (tuple((c, v) for c, v in key[3] if c != "model"),)

    by_model: dict[str, dict[tuple, list[str]]] = {}
    for key, runs in _question_groups(ds, "").items():
        by_model.setdefault(str(ds["model"].sel(run=runs[0]).values), {})[key] = runs
    common = set.intersection(*({others(k) for k in groups} for groups in by_model.values()))
    return {model: {k: runs for k, runs in groups.items() if not common or others(k) in common}
            for model, groups in by_model.items()}


def _q_architectures(ds: xr.Dataset, *, bootstrap: int, seed: int) -> list[dict[str, Any]]:
    """Q4, where runs of several architectures (``model``) ran: per model, init and target, learning
    and forgetting in the second half of the model's layers minus the first half, at the last epoch
    (the paper's ViT forgets more in its later blocks), for the runs of :func:`architecture_groups`.
    Comparing pretrained with scratch runs per architecture is F1's rows, which are per model too."""
    if "model" not in ds.coords or len(set(map(str, ds["model"].values))) < 2:
        return []
    rows = []
    for key, runs in [item for groups in architecture_groups(ds).values() for item in groups.items()]:
        model = str(ds["model"].sel(run=runs[0]).values)
        architecture = str(ds["architecture"].sel(run=runs[0]).values) if "architecture" in ds.coords else model
        for statistic in ("learning depth gradient", "forgetting depth gradient"):
            stats = [run_statistic(ds, r, statistic) for r in runs]
            value, low, high, n, interval = _mean_row(np.array([v for v, _ in stats]), [b for _, b in stats],
                                                      bootstrap=bootstrap, seed=seed)
            measure = statistic.split()[0]
            judged = answer(low, high, f"{measure} grows with depth", f"{measure} falls with depth")
            rows.append(_row("Q4 architectures", Q_ARCHITECTURES,
                             f"{RUN_STATISTICS[statistic][2]}, last epoch ({model}: {architecture})", value, low,
                             high, n, interval, judged=judged, note=_settings_note(key[3]), **_where(key)))
    return rows


def question_rows(ds: xr.Dataset, *, bootstrap: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """The open questions' rows for every axis the summary varies (none for an axis it does not)."""
    return (_q_train_fraction(ds) + _q_schedule(ds) + _q_adversarial(ds, bootstrap=bootstrap, seed=seed)
            + _q_architectures(ds, bootstrap=bootstrap, seed=seed))


def findings_table(ds: xr.Dataset, *, bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per finding and per target/task where it applies (columns :data:`COLUMNS`)."""
    if ds.sizes.get("run", 0) < 2:
        rows = [_untestable(f, c, "a single run: nothing to compare")
                for f, c in (("F1", F1_CLAIM), ("F2", F2_CLAIM), ("F3", F3_CLAIM))]
    else:
        rows = _f1_f2(ds, bootstrap=bootstrap, seed=seed) + _f3(ds, bootstrap=bootstrap, seed=seed)
        rows += question_rows(ds, bootstrap=bootstrap, seed=seed)
    return pd.DataFrame(rows, columns=COLUMNS)


def findings_dataset(table: pd.DataFrame) -> xr.Dataset:
    """The findings table as Dataset variables ``finding_<column>`` along dim ``finding_row``."""
    out = xr.Dataset(coords={"finding_row": np.arange(len(table))})
    for column in COLUMNS:
        values = table[column].to_numpy()
        if column not in ("value", "ci_low", "ci_high"):
            values = values.astype(str)
        out[f"finding_{column}"] = ("finding_row", values)
    out.attrs["findings_rules"] = "see stirflow.findings and the README section 'How the findings are judged'"
    return out


def convergence_lines(ds: xr.Dataset) -> list[str]:
    """Plain-words state of the measurement's convergence: the final inversion losses and the check."""
    from .analysis import unconverged

    lines = []
    if "inversion_loss" in ds and np.isfinite(ds["inversion_loss"].values).any():
        worst = ds["inversion_worst_loss"].where(np.isfinite(ds["inversion_worst_loss"]))
        at = worst.argmax(...)
        where = {k: ds[k].values[int(v)] for k, v in at.items()}
        lines.append(f"Final relative inversion loss: mean over images at most {float(ds['inversion_loss'].max()):.4f}; "
                     f"the worst single image {float(worst.max()):.4f} ({where['run']}, epoch {int(where['epoch'])}, "
                     f"block {int(where['layer'])}).")
    if "converged" not in ds:
        lines.append("No convergence check was run (convergence.check: false): the numbers are unchecked.")
        return lines
    tol, factor = ds.attrs["convergence_tolerance"], ds.attrs["convergence_factor"]
    checked = int(ds["converged"].notnull().sum())
    bad = unconverged(ds)
    if bad:
        lines.append(f"NOT CONVERGED: {len(bad)} of {checked} checked (run, epoch, block) move by more than {tol} "
                     f"with {factor}x the steps: " + "; ".join(bad))
    else:
        lines.append(f"Converged: all {checked} checked (run, epoch, block) move by at most {tol} with {factor}x the "
                     f"steps (largest |delta| {ds.attrs['convergence_largest_delta']:.4f}).")
    return lines


def summary_html(ds: xr.Dataset, table: pd.DataFrame) -> str:
    """The report's first page of results: the findings table with verdicts, and convergence."""
    shown = table.copy()
    for column in ("value", "ci_low", "ci_high"):
        shown[column] = shown[column].map(lambda v: "" if not np.isfinite(v) else f"{v:.4f}")
    body = ["<h2>The paper's findings</h2>",
            "<p>Verdicts by the rules fixed before any result was seen (README, 'How the findings are judged'): "
            "reproduced = the whole 95 % interval on the predicted side of 0; not reproduced = on the other side; "
            "inconclusive = the interval contains 0 or there is none.</p>",
            shown.to_html(index=False, na_rep="", border=0),
            "<h2>Convergence of the inversions</h2>",
            *[f"<p>{line}</p>" for line in convergence_lines(ds)]]
    return ("<!doctype html><html><head><meta charset='utf-8'><style>body{font-family:sans-serif;font-size:13px}"
            "table{border-collapse:collapse}td,th{padding:2px 6px;border-bottom:1px solid #ddd;text-align:left}"
            "</style></head><body>" + "\n".join(body) + "</body></html>")


def format_markdown(table: pd.DataFrame) -> str:
    """The findings table as a Markdown table (for the README and the report)."""
    lines = ["| finding | target / task | statistic | value | 95 % interval | n | interval over | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for row in table.itertuples():
        where = "/".join(v for v in (row.target, row.task, row.init) if v)
        value = "" if not np.isfinite(row.value) else f"{row.value:.3f}"
        interval = "" if not np.isfinite(row.ci_low) else f"[{row.ci_low:.3f}, {row.ci_high:.3f}]"
        statistic = row.statistic or row.note
        lines.append(f"| {row.finding} | {where} | {statistic} | {value} | {interval} | {row.n} | {row.interval} "
                     f"| **{row.verdict}** |")
    return "\n".join(lines)
