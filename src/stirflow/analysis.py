"""Aggregation of every score into one xarray Dataset, and the forgetting-spread analysis.

``summary.nc`` dimensions: ``run``, ``epoch``, ``layer`` (block, 1-based), ``layer_ref`` /
``layer_eval`` (matrix rows / columns), ``corruption``, ``severity``, ``scope`` (correlation
subsets). Run coordinates ``target``, ``init`` and ``task`` say what each run is. Scores that
were not computed for an epoch (STIR only at ``stir.epochs``) are NaN.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import xarray as xr

__all__ = [
    "aggregate",
    "correlation",
    "correlation_table",
    "early_stopping_table",
    "forgetting_spread",
]

MATRICES = ("flow", "flow_reverse", "cka", "within_ref", "within_eval")
HISTORY_KEYS = ("train_loss", "test_loss", "train_accuracy", "test_accuracy", "train_l1_error", "test_l1_error", "lr")


def forgetting_spread(forgetting: xr.DataArray) -> xr.DataArray:
    """Standard deviation over layers of Forgetting(l, e) (population std, NaN where not scored)."""
    return forgetting.std("layer", ddof=0, skipna=False)


def aggregate(runs: Sequence[Mapping[str, Any]], stir_files: Sequence[str], robustness_files: Sequence[str],
              history_files: Sequence[str], *, reference_run: str | None = None) -> xr.Dataset:
    """Gather the per-job HDF5 files into one Dataset (see the module docstring)."""
    from .robustness import load_robustness
    from .stir import load_scores

    names = [r["name"] for r in runs]
    histories = {n: json.loads(Path(p).read_text()) for n, p in zip(names, history_files)}
    epochs = sorted({rec["epoch"] for h in histories.values() for rec in h})
    stir = [load_scores(p) for p in stir_files]
    blocks = [int(b) for b in stir[0][0]["blocks"]] if stir else []
    rob = [load_robustness(p) for p in robustness_files]
    corruptions = rob[0][1]["corruptions"] if rob else []
    severities = rob[0][1]["severities"] if rob else []

    shape_l = (len(names), len(epochs), len(blocks))
    data = {k: np.full(shape_l, np.nan) for k in ("forgetting", "learning")}
    data.update({k: np.full(shape_l + (len(blocks),), np.nan) for k in MATRICES})
    for scores, attrs in stir:
        r, e = names.index(str(attrs["run"])), epochs.index(int(attrs["epoch"]))
        if [int(b) for b in scores["blocks"]] != blocks:
            raise ValueError(f"STIR files of run {attrs['run']} cover different blocks")
        for key in data:
            data[key][r, e] = scores[key]

    clean = np.full((len(names), len(epochs)), np.nan)
    corrupted = np.full((len(names), len(epochs), len(corruptions), len(severities)), np.nan)
    for (scores, attrs), path in zip(rob, robustness_files):
        if attrs["corruptions"] != corruptions or attrs["severities"] != severities:
            raise ValueError(f"{path}: scored other corruptions or severities than the other checkpoints")
        r, e = names.index(str(attrs["run"])), epochs.index(int(attrs["epoch"]))
        clean_key = "clean_accuracy" if "clean_accuracy" in scores else "clean_error"
        clean[r, e] = scores[clean_key]
        corrupted[r, e] = scores["accuracy" if "accuracy" in scores else "error"]

    history = {k: np.full((len(names), len(epochs)), np.nan) for k in HISTORY_KEYS}
    for r, n in enumerate(names):
        for rec in histories[n]:
            for k in HISTORY_KEYS:
                if k in rec:
                    history[k][r, epochs.index(rec["epoch"])] = rec[k]

    coords = {
        "run": names, "epoch": epochs, "layer": blocks, "layer_ref": blocks, "layer_eval": blocks,
        "corruption": list(corruptions), "severity": list(severities),
        "target": ("run", [r["target"] for r in runs]), "init": ("run", [r["init"] for r in runs]),
        "task": ("run", [r["task"] for r in runs]),
    }
    dims_l, dims_m = ("run", "epoch", "layer"), ("run", "epoch", "layer_ref", "layer_eval")
    ds = xr.Dataset(coords=coords)
    ds["forgetting"] = (dims_l, data["forgetting"], {"long_name": "Forgetting", "description": "1 - STIR(f_e,l | p_l)"})
    ds["learning"] = (dims_l, data["learning"], {"long_name": "Learning", "description": "1 - STIR(p_l | f_e,l)"})
    descriptions = {
        "flow": "invariance flow F[i, j] = STIR(f_e,j | p_i)",
        "flow_reverse": "STIR(p_j | f_e,i)",
        "cka": "CKA(p_i(X), f_e,j(X))",
        "within_ref": "STIR(p_j | p_i), within the model before finetuning",
        "within_eval": "STIR(f_e,j | f_e,i), within the finetuned model",
    }
    for key, text in descriptions.items():
        ds[key] = (dims_m, data[key], {"description": text})
    ds["forgetting_spread"] = forgetting_spread(ds["forgetting"])
    ds["forgetting_spread"].attrs["description"] = "standard deviation over layers of Forgetting(l, e)"
    ds["clean_score"] = (("run", "epoch"), clean, {"description": "clean test accuracy (classification) or L1 error (reconstruction)"})
    ds["corrupted_score"] = (("run", "epoch", "corruption", "severity"), corrupted,
                             {"description": "accuracy (classification) or L1 error (reconstruction) on corrupted images"})
    ds["robustness"] = ds["corrupted_score"].mean(("corruption", "severity"))
    ds["robustness"].attrs["description"] = "mean over corruptions x severities of corrupted_score"
    for k, v in history.items():
        if not np.isnan(v).all():
            ds[k] = (("run", "epoch"), v)
    if reference_run is not None:
        ds["relative_error"] = relative_error(ds, reference_run)
    return ds


def relative_error(ds: xr.Dataset, reference_run: str) -> xr.DataArray:
    """mCE-style: per corruption Σ_s error / Σ_s error of ``reference_run`` at its last epoch; mean over corruptions.

    Error is 1 − accuracy for classification, the L1 error for reconstruction.
    """
    is_cls = (ds["task"] == "classification")
    error = xr.where(is_cls, 1.0 - ds["corrupted_score"], ds["corrupted_score"])
    ref = error.sel(run=reference_run).dropna("epoch", how="all").isel(epoch=-1)
    ce = error.sum("severity", skipna=False) / ref.sum("severity")
    out = ce.mean("corruption")
    out.attrs["description"] = f"mCE-style relative corruption error against run {reference_run} (last epoch)"
    return out


# --------------------------------------------------------------------------- correlation analysis

def correlation(x: np.ndarray, y: np.ndarray, *, bootstrap: int = 1000, permutations: int = 1000,
                seed: int = 0) -> dict[str, float]:
    """Pearson and Spearman r of paired samples, with bootstrap 95% intervals and permutation p-values."""
    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    out: dict[str, float] = {"n": float(n)}
    rng = np.random.default_rng(seed)
    for name, fn in (("pearson", lambda a, b: stats.pearsonr(a, b)[0]),
                     ("spearman", lambda a, b: stats.spearmanr(a, b)[0])):
        if n < 3 or np.std(x) == 0 or np.std(y) == 0:
            out.update({f"{name}_r": np.nan, f"{name}_ci_low": np.nan, f"{name}_ci_high": np.nan, f"{name}_p": np.nan})
            continue
        r = float(fn(x, y))
        boots = []
        for _ in range(bootstrap):
            idx = rng.integers(0, n, n)
            if np.std(x[idx]) > 0 and np.std(y[idx]) > 0:
                boots.append(fn(x[idx], y[idx]))
        perm = [fn(x, rng.permutation(y)) for _ in range(permutations)]
        out[f"{name}_r"] = r
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = (np.percentile(boots, [2.5, 97.5]) if boots else (np.nan, np.nan))
        # two-sided, with the observed arrangement counted (never exactly 0)
        out[f"{name}_p"] = (1 + sum(abs(p) >= abs(r) - 1e-12 for p in perm)) / (1 + permutations) if permutations else np.nan
    return out


def _pairs(ds: xr.Dataset, max_epoch: int | None, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(forgetting spread, robustness) over runs of ``task`` × scored epochs 1..max_epoch (epoch 0 is the reference)."""
    sub = ds.sel(run=ds["task"] == task)
    sub = sub.sel(epoch=[e for e in sub.epoch.values if e >= 1 and (max_epoch is None or e <= max_epoch)])
    x, y = sub["forgetting_spread"].values.ravel(), sub["robustness"].values.ravel()
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def correlation_table(ds: xr.Dataset, first_epochs: Sequence[int], *, bootstrap: int = 1000,
                      permutations: int = 1000, seed: int = 0) -> xr.Dataset:
    """Correlation of forgetting spread with robustness, over all epochs (``scope = "all"``) and the first k."""
    scopes = ["all"] + [f"first_{k}" for k in first_epochs]
    tasks = sorted(set(ds["task"].values.tolist()))
    rows: dict[str, np.ndarray] = {}
    for t, task in enumerate(tasks):
        for s, k in enumerate([None, *first_epochs]):
            result = correlation(*_pairs(ds, k, task), bootstrap=bootstrap, permutations=permutations, seed=seed)
            for key, value in result.items():
                rows.setdefault(key, np.full((len(tasks), len(scopes)), np.nan))[t, s] = value
    out = xr.Dataset({f"corr_{k}": (("task_kind", "scope"), v) for k, v in rows.items()},
                     coords={"task_kind": tasks, "scope": scopes})
    return out


def early_stopping_table(ds: xr.Dataset, sign: float) -> xr.Dataset:
    """Per run: the epoch the forgetting-spread indicator picks (its extreme in the direction of the
    correlation's ``sign``) against the epoch with the best robustness (highest accuracy / lowest error)."""
    picked, best = [], []
    for run in ds.run.values:
        sub = ds.sel(run=run).sel(epoch=[e for e in ds.epoch.values if e >= 1])
        spread = sub["forgetting_spread"].values
        rob = sub["robustness"].values
        epochs = sub.epoch.values
        ok = np.isfinite(spread)
        picked.append(int(epochs[ok][np.argmax(sign * spread[ok])]) if ok.any() else -1)
        task = str(ds["task"].sel(run=run).values)
        good = np.isfinite(rob)
        best_idx = np.argmax(rob[good]) if task == "classification" else np.argmin(rob[good])
        best.append(int(epochs[good][best_idx]) if good.any() else -1)
    return xr.Dataset({"indicator_epoch": ("run", picked), "best_robustness_epoch": ("run", best)},
                      coords={"run": ds.run.values})


def write_tables(ds: xr.Dataset, path: str | Path) -> None:
    """The correlation and early-stopping results as one CSV (a ``table`` column says which)."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    corr_vars = [v for v in ds.data_vars if v.startswith("corr_")]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["table", "task", "scope", *[v[5:] for v in corr_vars], "run", "indicator_epoch", "best_robustness_epoch"])
        for task in ds.task_kind.values:
            for scope in ds.scope.values:
                vals = [f"{float(ds[v].sel(task_kind=task, scope=scope)):.6g}" for v in corr_vars]
                w.writerow(["correlation", task, scope, *vals, "", "", ""])
        for run in ds.run.values:
            w.writerow(["early_stopping", str(ds["task"].sel(run=run).values), "", *[""] * len(corr_vars), run,
                        int(ds["indicator_epoch"].sel(run=run)), int(ds["best_robustness_epoch"].sel(run=run))])


def summarise(ds: xr.Dataset, analysis: Mapping[str, Any]) -> xr.Dataset:
    """Add the correlation and early-stopping tables to the aggregated Dataset."""
    corr = correlation_table(ds, analysis["first_epochs"], bootstrap=analysis["bootstrap"],
                             permutations=analysis["permutations"], seed=analysis["seed"])
    sign = float(np.sign(np.nan_to_num(corr["corr_pearson_r"].sel(scope="all").values[0]))) or 1.0
    return xr.merge([ds, corr, early_stopping_table(ds, sign)])
