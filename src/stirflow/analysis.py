"""Aggregation of every score into one xarray Dataset, and the forgetting-spread analysis.

``summary.nc`` dimensions: ``run``, ``epoch``, ``layer`` (block, 1-based), ``layer_ref`` /
``layer_eval`` (matrix rows / columns), ``corruption``, ``severity``, and for the correlation
table ``task_kind`` × ``scope`` (``"all"`` or ``"first_<k>"``). Run coordinates ``target``,
``init`` and ``task`` say what each run is. Scores that were not computed for an epoch (STIR only
at ``stir.epochs``) are NaN.

Robustness has a direction that depends on the task: for classification it is an accuracy
(higher is better), for reconstruction an L1 error (lower is better). ``robustness`` and
``corrupted_score`` keep the measured values; ``robustness_oriented`` is ``robustness`` times
:data:`ROBUSTNESS_DIRECTION` (accuracy, or minus the error), so that higher always means more
robust. The correlations and the early-stopping indicator use ``robustness_oriented``: a positive
r means "more forgetting spread goes with more robustness" for every task.

Epoch 0 (the model before finetuning) is left out of the correlations and of the indicator. At
epoch 0 the model is compared with itself, so Forgetting is 0 up to inversion noise and the
spread is ~0 for every run, while its robustness is that of an untrained head (chance accuracy
for a pretrained backbone, and for a scratch run an untrained network). Such points are not part
of the finetuning trajectory the indicator has to choose from, and one such outlier per run
would decide the correlation by itself.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

__all__ = [
    "ROBUSTNESS_DIRECTION",
    "aggregate",
    "correlation_table",
    "early_stopping_table",
    "forgetting_spread",
    "relative_error",
    "correlation_measures",
    "adversarial_measure",
    "layer_coordinates",
    "schedule_label",
    "summarise",
    "write_tables",
]

MATRICES = ("flow", "flow_reverse", "cka", "within_ref", "within_eval")
#: summary.nc variable → variable of a stir_scores file (the checkpoint's own inversions are model B's)
INVERSION_LOSSES = {"inversion_loss": "inversion_loss_b", "inversion_worst_loss": "inversion_worst_loss_b",
                    "inversion_start_loss": "inversion_start_loss_b"}
HISTORY_KEYS = ("train_loss", "test_loss", "train_accuracy", "test_accuracy", "train_l1_error", "test_l1_error", "lr",
                "train_fraction", "n_train")
#: history keys that hold one value per run (the data it finetuned on): coordinates of ``run``
PER_RUN_HISTORY = ("train_fraction", "n_train")
#: +1 where the robustness score is an accuracy (higher is better), −1 where it is an error.
ROBUSTNESS_DIRECTION = {"classification": 1.0, "reconstruction": -1.0}
#: What ``robustness`` measures, and what ``robustness_oriented`` is, per task (for tables and labels).
ROBUSTNESS_MEASURE = {"classification": "mean corrupted accuracy", "reconstruction": "mean corrupted L1 error"}


def forgetting_spread(forgetting: xr.DataArray, own: xr.DataArray | None = None) -> xr.DataArray:
    """Standard deviation over layers of Forgetting(l, e): the population std (ddof = 0), NaN
    wherever any layer was not scored (a spread over part of the layers is not comparable).

    ``own`` (run, layer), true where a layer is one of the run's own (runs of shallower models have
    fewer): the spread of each run over its own layers; without it, over every layer.
    """
    if own is None:
        return forgetting.std("layer", ddof=0, skipna=False)
    missing = (forgetting.isnull() & own).any("layer")
    return forgetting.where(own).std("layer", ddof=0, skipna=True).where(~missing)


def own_layers(ds: xr.Dataset) -> xr.DataArray | None:
    """(run, layer): true where the layer is one of the run's own (``relative_depth`` is defined);
    None for a summary without the runs' depths."""
    return ds["relative_depth"].notnull() if "relative_depth" in ds.coords else None


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records a training job wrote to ``history.json``; a clear error names a bad file."""
    from .data import DataFileError

    try:
        records = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise DataFileError(f"{path}: cannot read training history ({err})") from err
    if not isinstance(records, list) or not all(isinstance(r, dict) and "epoch" in r for r in records):
        raise DataFileError(f"{path}: not a training history (expected a list of records with an 'epoch')")
    return records


def read_scores(path: str | Path) -> xr.Dataset:
    """One ``stir_scores`` (or convergence check) file: :func:`stirflow.compare`'s Dataset with ``run`` and
    ``epoch`` attributes; a missing, truncated or foreign file raises DataFileError naming it."""
    from .files import DataFileError, read_netcdf

    ds = read_netcdf(path, "STIR scores", required=("forgetting", "learning", "flow"))
    if "run" not in ds.attrs or "epoch" not in ds.attrs:
        raise DataFileError(f"{path}: STIR scores without the run and epoch they belong to")
    return ds


def scored_layers(stir: Sequence[xr.Dataset], paths: Sequence[str]) -> list[int]:
    """The ``layer`` coordinate of a summary: every layer some run scored, in order. Runs of models
    of different depths score their own layers; the files of one run must all cover the same ones."""
    per_run: dict[str, list[int]] = {}
    for scores, path in zip(stir, paths):
        layers = [int(b) for b in scores.layer.values]
        run = str(scores.attrs["run"])
        if per_run.setdefault(run, layers) != layers:
            raise ValueError(f"{path}: covers blocks {layers}, other STIR files of run {run} {per_run[run]}")
    return sorted({b for layers in per_run.values() for b in layers})


def layer_coordinates(runs: Sequence[Mapping[str, Any]], layers: Sequence[int]) -> dict[str, tuple]:
    """Coordinates saying what each run's layers are, for runs that carry their model's description
    (``run["model"]``: the config's name of the architecture; ``run["layers"]``: ``model``,
    ``layer_kind``, ``layer_modules`` and ``depth``, see :func:`stirflow.config.model_layers`).

    ``model``, ``architecture`` (timm's name or class), ``layer_kind`` and ``depth`` along ``run``;
    ``relative_depth`` (run, layer) = layer / depth, NaN beyond a run's depth; ``layer_module``
    (run, layer): the module a layer is the output of ("" beyond the run's depth).
    """
    if not runs or not all("layers" in r for r in runs):
        return {}
    described = [r["layers"] for r in runs]
    depth = np.array([int(d["depth"]) for d in described], float)
    grid = np.asarray(layers, float)[None, :]
    return {
        "model": ("run", [str(r.get("model", "default")) for r in runs]),
        "architecture": ("run", [str(d["model"]) for d in described]),
        "layer_kind": ("run", [str(d["layer_kind"]) for d in described]),
        "depth": ("run", depth.astype(int)),
        "relative_depth": (("run", "layer"), np.where(grid <= depth[:, None], grid / depth[:, None], np.nan)),
        "layer_module": (("run", "layer"), [[d["layer_modules"][b - 1] if b <= len(d["layer_modules"]) else ""
                                             for b in layers] for d in described]),
    }


def aggregate(runs: Sequence[Mapping[str, Any]], stir_files: Sequence[str], robustness_files: Sequence[str],
              history_files: Sequence[str], *, convergence_files: Sequence[str] = (),
              convergence: Mapping[str, Any] | None = None, reference_run: str | None = None,
              adversarial_files: Sequence[str] = ()) -> xr.Dataset:
    """Gather the per-job files into one Dataset (see the module docstring).

    ``convergence_files`` are the convergence check's scores (``convergence``: its ``factor`` and
    ``tolerance``); see :func:`convergence_summary`.
    """
    from .robustness import load_robustness

    names = [r["name"] for r in runs]
    histories = {n: read_history(p) for n, p in zip(names, history_files)}
    epochs = sorted({rec["epoch"] for h in histories.values() for rec in h})
    stir = [read_scores(p) for p in stir_files]
    blocks = scored_layers(stir, stir_files)  # every run's own layers: the union, NaN where a run has none
    steps = [int(t) for t in stir[0].step.values] if stir else []
    rob = [load_robustness(p) for p in robustness_files]
    corruptions = rob[0][1]["corruptions"] if rob else []
    severities = rob[0][1]["severities"] if rob else []

    shape_l = (len(names), len(epochs), len(blocks))
    data = {k: np.full(shape_l, np.nan) for k in ("forgetting", "learning", *INVERSION_LOSSES)}
    data.update({k: np.full(shape_l + (len(blocks),), np.nan) for k in MATRICES})
    curves = np.full(shape_l + (len(steps),), np.nan)
    compression = np.full(shape_l[:2], np.nan)
    resamples = int(stir[0].sizes.get("resample", 0)) if stir else 0
    boot = {k: np.full(shape_l[:2] + (resamples, len(blocks)), np.nan) for k in ("learning_boot", "forgetting_boot")}
    compression_boot = np.full(shape_l[:2] + (resamples,), np.nan)
    for scores, path in zip(stir, stir_files):
        r, e = names.index(str(scores.attrs["run"])), epochs.index(int(scores.attrs["epoch"]))
        at = [blocks.index(int(b)) for b in scores.layer.values]  # where the file's layers go
        square = np.ix_(at, at)
        if [int(t) for t in scores.step.values] != steps:
            raise ValueError(f"{path}: loss curves at other steps than the other STIR files")
        for key in data:
            # the checkpoint's own inversions (model B of its comparison against epoch 0)
            values = scores[INVERSION_LOSSES[key] if key in INVERSION_LOSSES else key].values
            if key in MATRICES:
                data[key][r, e][square] = values
            else:
                data[key][r, e, at] = values
        curves[r, e, at] = scores["inversion_curve_b"].values
        compression[r, e] = float(scores["compression"])
        if resamples:
            if int(scores.sizes.get("resample", 0)) != resamples:
                raise ValueError(f"{path}: {scores.sizes.get('resample', 0)} image resamples, other STIR files "
                                 f"{resamples}")
            for key in boot:
                boot[key][r, e][:, at] = scores[key].transpose("resample", "layer").values
            compression_boot[r, e] = scores["compression_boot"].values

    clean = np.full((len(names), len(epochs)), np.nan)
    corrupted = np.full((len(names), len(epochs), len(corruptions), len(severities)), np.nan)
    for (scores, attrs), path in zip(rob, robustness_files):
        if attrs["corruptions"] != corruptions or attrs["severities"] != severities:
            raise ValueError(f"{path}: scored other corruptions or severities than the other checkpoints")
        r, e = names.index(str(attrs["run"])), epochs.index(int(attrs["epoch"]))
        clean[r, e] = scores["clean_accuracy" if "clean_accuracy" in scores else "clean_error"]
        corrupted[r, e] = scores["accuracy" if "accuracy" in scores else "error"]

    history = {k: np.full((len(names), len(epochs)), np.nan) for k in HISTORY_KEYS}
    for r, n in enumerate(names):
        for rec in histories[n]:
            for k in HISTORY_KEYS:
                if k in rec:
                    history[k][r, epochs.index(rec["epoch"])] = rec[k]

    coords = {
        "run": names, "epoch": epochs, "layer": blocks, "layer_ref": blocks, "layer_eval": blocks,
        "corruption": list(corruptions), "severity": list(severities), **run_coordinates(runs),
    }
    dims_l, dims_m = ("run", "epoch", "layer"), ("run", "epoch", "layer_ref", "layer_eval")
    coords["step"] = steps
    coords.update(layer_coordinates(runs, blocks))
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
    ds["forgetting_spread"] = forgetting_spread(ds["forgetting"], own_layers(ds))
    ds["forgetting_spread"].attrs["description"] = "population standard deviation over layers of Forgetting(l, e)"
    ds["clean_score"] = (("run", "epoch"), clean,
                         {"description": "clean test accuracy (classification) or L1 error (reconstruction)"})
    ds["corrupted_score"] = (("run", "epoch", "corruption", "severity"), corrupted,
                             {"description": "accuracy (classification) or L1 error (reconstruction) "
                                             "on corrupted images"})
    ds["robustness"] = ds["corrupted_score"].mean(("corruption", "severity"), skipna=False)
    ds["robustness"].attrs["description"] = ("mean over corruptions x severities of corrupted_score "
                                             "(accuracy: higher is better; L1 error: lower is better)")
    ds["robustness_oriented"] = ds["robustness"] * direction(ds)
    ds["robustness_oriented"].attrs["description"] = ("robustness with higher = more robust: the mean corrupted "
                                                      "accuracy, or minus the mean corrupted L1 error")
    is_cls = ds["task"] == "classification"
    with np.errstate(divide="ignore", invalid="ignore"):
        ds["robustness_relative"] = xr.where(is_cls, ds["robustness"] / ds["clean_score"],
                                             ds["clean_score"] / ds["robustness"])
    ds["robustness_relative"].attrs["description"] = (
        "robustness relative to the clean score, higher = more robust: corrupted / clean accuracy, or "
        "clean / corrupted L1 error (separates robustness from how well the model does at all)")
    for k, v in history.items():
        if np.isnan(v).all():
            continue
        if k in PER_RUN_HISTORY:  # the same at every epoch of a run: a coordinate of `run`, beside the settings
            ds = ds.assign_coords({k: ("run", [row[np.isfinite(row)][0] if np.isfinite(row).any() else np.nan
                                               for row in v])})
        else:
            ds[k] = (("run", "epoch"), v)
    ds["inversion_loss"] = (dims_l, data["inversion_loss"],
                            {"description": "mean over the images of the inversions' final (best) relative loss "
                                            "||f_e,l(X') - f_e,l(X)|| / ||f_e,l(X)||"})
    ds["inversion_worst_loss"] = (dims_l, data["inversion_worst_loss"],
                                  {"description": "largest final relative loss over the images"})
    ds["inversion_start_loss"] = (dims_l, data["inversion_start_loss"],
                                  {"description": "mean relative loss at the start (noise)"})
    ds["inversion_curve"] = (dims_l + ("step",), curves,
                             {"description": "mean best relative loss of the inversions at each logged step"})
    ds["compression"] = (("run", "epoch"), compression,
                         {"description": "compression index: mean over i > j of flow - within_ref, minus the "
                                         "same over i < j (> 0: invariances moved toward shallower layers)"})
    if resamples:
        for key, text in (("learning_boot", "learning"), ("forgetting_boot", "forgetting")):
            ds[key] = (("run", "epoch", "resample", "layer"), boot[key],
                       {"description": f"{text} on bootstrap resamples of the STIR images"})
        ds["compression_boot"] = (("run", "epoch", "resample"), compression_boot,
                                  {"description": "compression index on bootstrap resamples of the STIR images"})
    if convergence_files:
        checked = convergence_summary(ds, [read_scores(p) for p in convergence_files], **dict(convergence or {}))
        ds = ds.merge(checked)
        ds.attrs.update(checked.attrs)
    if adversarial_files:
        from .adversarial import adversarial_dataarray

        ds["adversarial_accuracy"] = adversarial_dataarray(adversarial_files, names, epochs)
    if reference_run is not None:
        ds["relative_corruption_error"] = relative_error(ds, reference_run, per_corruption=True)
        ds["relative_error"] = relative_error(ds, reference_run)
    return ds


def convergence_summary(ds: xr.Dataset, checks: Sequence[xr.Dataset], *, factor: int = 4,
                        tolerance: float = 0.01) -> xr.Dataset:
    """The convergence check: learning and forgetting from inversions with ``factor`` × the steps
    (``checks``, one per checked run × epoch) against the measured values in ``ds``.

    Variables ``learning_check``, ``forgetting_check`` and ``convergence_delta_learning`` /
    ``convergence_delta_forgetting`` (|check − measured|), dims (run, epoch, layer), NaN where not
    checked; ``converged`` (run, epoch, layer): 1 where both deltas are within ``tolerance``, 0 where
    not, NaN where not checked. Attributes: the factor, the tolerance and the largest delta.
    """
    shape = (ds.sizes["run"], ds.sizes["epoch"], ds.sizes["layer"])
    values = {k: np.full(shape, np.nan) for k in ("learning_check", "forgetting_check")}
    runs, epochs, layers = list(ds.run.values), list(ds.epoch.values), list(ds.layer.values)
    for check in checks:
        r, e = runs.index(str(check.attrs["run"])), epochs.index(int(check.attrs["epoch"]))
        for layer in check.layer.values:
            for name in ("learning", "forgetting"):
                values[f"{name}_check"][r, e, layers.index(int(layer))] = float(check[name].sel(layer=layer))
    out = xr.Dataset(coords={"run": ds.run, "epoch": ds.epoch, "layer": ds.layer})
    dims = ("run", "epoch", "layer")
    for name in ("learning", "forgetting"):
        out[f"{name}_check"] = (dims, values[f"{name}_check"],
                                {"description": f"{name} from inversions with {factor}x the steps (convergence check)"})
        out[f"convergence_delta_{name}"] = np.abs(out[f"{name}_check"] - ds[name])
        out[f"convergence_delta_{name}"].attrs["description"] = f"|{name} with {factor}x the steps - {name}|"
    worst = np.fmax(out["convergence_delta_learning"], out["convergence_delta_forgetting"])
    out["converged"] = xr.where(np.isfinite(worst), (worst <= tolerance).astype(float), np.nan)
    out["converged"].attrs["description"] = (f"1 where learning and forgetting move by at most {tolerance} with "
                                             f"{factor}x the steps, 0 where they move more, NaN where not checked")
    largest = float(np.nanmax(worst.values)) if np.isfinite(worst.values).any() else np.nan
    out.attrs.update(convergence_factor=int(factor), convergence_tolerance=float(tolerance),
                     convergence_largest_delta=largest)
    return out


def unconverged(ds: xr.Dataset) -> list[str]:
    """Plain-words list of the checked (run, epoch, layer) whose measurement is not converged."""
    if "converged" not in ds:
        return []
    bad = ds["converged"].where(ds["converged"] == 0).to_dataframe().dropna().reset_index()
    out = []
    for row in bad.itertuples():
        dl = float(ds["convergence_delta_learning"].sel(run=row.run, epoch=row.epoch, layer=row.layer))
        df = float(ds["convergence_delta_forgetting"].sel(run=row.run, epoch=row.epoch, layer=row.layer))
        out.append(f"{row.run} epoch {row.epoch} block {row.layer}: |Δ learning| {dl:.4f}, |Δ forgetting| {df:.4f}")
    return out


def _flat(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as flat keys: {"optimizer": {"lr": 0.1}} → {"optimizer_lr": 0.1}."""
    out = {}
    for key, value in settings.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}_"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def run_coordinates(runs: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, list]]:
    """Coordinates of ``run``: ``target``, ``init``, ``task``, ``seed``, ``condition`` (the run's name
    without its seed: runs that are replicates of each other share it), and every finetuning setting
    that differs between runs (nested keys joined by ``_``, e.g. ``optimizer_lr``; the lr schedule in
    words, :func:`schedule_label`), so that ``ds.groupby("init")`` or ``ds.where(ds.seed == 0)``
    select runs by what they are."""
    coords: dict[str, tuple[str, list]] = {
        "target": ("run", [r["target"] for r in runs]),
        "init": ("run", [r.get("init", "pretrained") for r in runs]),
        "task": ("run", [r.get("task", "classification") for r in runs]),
        "seed": ("run", [int(r.get("seed", 0)) for r in runs]),
        "condition": ("run", [r.get("condition", r["name"]) for r in runs]),
    }
    # a schedule is one coordinate in words (not one per parameter): runs group by it as they trained
    settings = [_flat({k: schedule_label(v) if k == "schedule" else v for k, v in r.get("settings", {}).items()})
                for r in runs]
    for key in sorted({k for s in settings for k in s} - {"seed"}):
        values = [s.get(key) for s in settings]
        if len({json.dumps(v, sort_keys=True) for v in values}) < 2:
            continue  # the same for every run: a setting of the experiment, not a coordinate
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        coords[key] = ("run", [float(v) for v in values] if numeric else [str(v) for v in values])
    return coords


def schedule_label(schedule: str | Mapping[str, Any]) -> str:
    """A learning-rate schedule in words: its name, with its parameters where it has some
    (``step(gamma=0.5, milestones=[3, 6])``)."""
    if isinstance(schedule, str):
        return schedule
    params = [f"{k}={_label_value(v)}" for k, v in sorted(schedule.items()) if k != "name"]
    return str(schedule.get("name", "?")) + (f"({', '.join(params)})" if params else "")


def _label_value(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).replace(" ", "")


def direction(ds: xr.Dataset) -> xr.DataArray:
    """Per run: +1 where robustness is an accuracy, −1 where it is an error (:data:`ROBUSTNESS_DIRECTION`)."""
    return xr.DataArray([ROBUSTNESS_DIRECTION[str(t)] for t in ds["task"].values], dims="run",
                        coords={"run": ds.run.values})


def relative_error(ds: xr.Dataset, reference_run: str, *, per_corruption: bool = False) -> xr.DataArray:
    """mCE-style relative corruption error (Hendrycks & Dietterich 2019) against ``reference_run``.

    ``CE_c = Σ_s E(c, s) / Σ_s E_ref(c, s)`` per corruption ``c``, with ``E_ref`` the reference run's
    errors at its last epoch with robustness scores; the result is the mean of ``CE_c`` over
    corruptions (or ``CE_c`` itself with ``per_corruption``). The error ``E`` is 1 − accuracy for
    classification and the L1 error for reconstruction. Below 1: more robust than the reference.
    Runs of another target or task than the reference were scored on other images or in other
    units, so their relative error is NaN.
    """
    if reference_run not in ds.run.values:
        raise ValueError(f"robustness.reference_run: no run named {reference_run!r} "
                         f"(runs: {', '.join(map(str, ds.run.values))})")
    is_cls = ds["task"] == "classification"
    error = xr.where(is_cls, 1.0 - ds["corrupted_score"], ds["corrupted_score"])
    ref = error.sel(run=reference_run).dropna("epoch", how="all")
    if ref.sizes["epoch"] == 0:
        raise ValueError(f"reference run {reference_run!r} has no robustness scores")
    ref_sum = ref.isel(epoch=-1).sum("severity", skipna=False)
    ref_sum = ref_sum.drop_vars([c for c in ref_sum.coords if c not in ref_sum.dims])
    ce = error.sum("severity", skipna=False) / ref_sum.where(ref_sum > 0)
    comparable = ((ds["target"] == ds["target"].sel(run=reference_run))
                  & (ds["task"] == ds["task"].sel(run=reference_run)))
    ce = ce.where(comparable)
    out = ce if per_corruption else ce.mean("corruption", skipna=False)
    out.attrs["description"] = (f"mCE-style relative corruption error against run {reference_run} at epoch "
                                f"{int(ref.epoch[-1])}: sum over severities of the error divided by the reference's"
                                + (" per corruption" if per_corruption else ", mean over corruptions")
                                + " (NaN for runs of another target or task)")
    out.attrs["reference_run"] = reference_run
    return out


# --------------------------------------------------------------------------- correlation analysis

#: The robustness measures correlated with forgetting spread: summary.nc variable, and in words.
MEASURES = {
    "absolute": ("robustness_oriented", "mean corrupted accuracy (reconstruction: minus the mean corrupted L1 error)"),
    "relative": ("robustness_relative", "corrupted / clean accuracy (reconstruction: clean / corrupted L1 error)"),
}
#: How the (run, epoch) points are combined into one correlation.
ESTIMATES = {
    "pooled": "all runs x epochs as one sample",
    "within_run": "each run over its epochs, averaged over runs (interval over runs)",
    "partial": "all runs x epochs, controlling for the clean score (residuals of a linear fit on it)",
}


def _scope_epochs(ds: xr.Dataset, max_epoch: int | None) -> list[int]:
    """Epochs 1..max_epoch of ``ds`` (all from 1 when None): epoch 0 is left out, see the module docstring."""
    return [int(e) for e in ds.epoch.values if e >= 1 and (max_epoch is None or e <= max_epoch)]


def _scope_limit(scope: str) -> int | None:
    return None if scope == "all" else int(str(scope).rsplit("_", 1)[1])


def adversarial_measure(norm: str, eps: float, relative: bool = False) -> str:
    """The correlation table's name of the measure "accuracy under PGD in ``norm`` at radius ``eps``"."""
    return f"adversarial_{norm}_{float(eps):g}" + ("_relative" if relative else "")


def correlation_measures(ds: xr.Dataset) -> dict[str, tuple[str, xr.DataArray]]:
    """The robustness measures correlated with forgetting spread: name → (in words, values (run, epoch)).

    The corruption measures of :data:`MEASURES` (``absolute``, ``relative``), then per norm and
    radius ε > 0 of ``adversarial_accuracy`` two more, reported exactly like them: the accuracy under
    the attack (:func:`adversarial_measure`) and the same relative to the clean accuracy on the same
    images (ε = 0 of that norm; the clean test accuracy where ε = 0 was not attacked), ``..._relative``.
    """
    out = {name: (text, ds[variable]) for name, (variable, text) in MEASURES.items() if variable in ds}
    if "adversarial_accuracy" not in ds:
        return out
    adv = ds["adversarial_accuracy"]
    for norm in map(str, adv.norm.values):
        radii = [float(e) for e in adv.eps.values]
        clean, clean_text = ((adv.sel(norm=norm, eps=0.0), "the clean accuracy on the same images") if 0.0 in radii
                             else (ds["clean_score"], "the clean test accuracy"))
        for eps in radii:
            values = adv.sel(norm=norm, eps=eps, drop=True)
            if eps <= 0 or not np.isfinite(values.values).any():  # radii are the union over norms
                continue
            attack = f"accuracy under a PGD attack, {norm} radius {eps:g}"
            out[adversarial_measure(norm, eps)] = (attack, values)
            with np.errstate(divide="ignore", invalid="ignore"):
                relative = values / clean.drop_vars([c for c in ("norm", "eps") if c in clean.coords])
            out[adversarial_measure(norm, eps, relative=True)] = (f"{attack} / {clean_text}", relative)
    return out


def _points(ds: xr.Dataset, task: str, max_epoch: int | None, measure: str) -> list[tuple[str, np.ndarray, ...]]:
    """Per run of ``task``: (run, spread, robustness measure, clean score) at epochs 1..max_epoch where
    all three exist. The clean score is oriented like robustness (higher = better)."""
    values = correlation_measures(ds)[measure][1]
    out = []
    for run in ds.run.values[ds["task"].values == task]:
        sub = ds.sel(run=run, epoch=_scope_epochs(ds, max_epoch))
        x, y = sub["forgetting_spread"].values, values.sel(run=run, epoch=_scope_epochs(ds, max_epoch)).values
        z = sub["clean_score"].values * ROBUSTNESS_DIRECTION[task]
        keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(z)
        out.append((str(run), x[keep], y[keep], z[keep]))
    return out


def correlation_table(ds: xr.Dataset, first_epochs: Sequence[int], *, bootstrap: int = 1000,
                      permutations: int = 1000, seed: int = 0) -> xr.Dataset:
    """Forgetting spread against robustness, per task kind × scope × measure × estimate.

    ``scope``: all epochs ≥ 1 (``"all"``) or epochs 1..k (``"first_<k>"``); ``measure``: see
    :func:`correlation_measures` (the corruption measures, and the adversarial ones where the summary
    has adversarial accuracies); ``estimate``: see :data:`ESTIMATES`. Variables ``corr_<key>`` for the keys of
    :func:`stirflow.statistics.correlation` (``n`` counts (run, epoch) pairs, or runs for
    ``within_run``), and ``corr_run_pearson_r`` / ``corr_run_spearman_r`` (run, scope, measure):
    each run's own correlation.
    """
    from .statistics import correlation, partial_correlation, within_group_correlation

    scopes = ["all"] + [f"first_{int(k)}" for k in first_epochs]
    tasks = sorted(set(map(str, ds["task"].values)))
    described = correlation_measures(ds)
    measures, estimates = list(described), list(ESTIMATES)
    shape = (len(tasks), len(scopes), len(measures), len(estimates))
    table: dict[str, np.ndarray] = {}
    per_run = {m: np.full((ds.sizes["run"], len(scopes), len(measures)), np.nan) for m in ("pearson", "spearman")}
    runs = list(map(str, ds.run.values))
    options = dict(bootstrap=bootstrap, permutations=permutations, seed=seed)
    for (t, task), (s, scope), (m, measure) in itertools.product(enumerate(tasks), enumerate(scopes),
                                                                 enumerate(measures)):
        points = _points(ds, task, _scope_limit(scope), measure)
        x, y, z = (np.concatenate([p[k] for p in points]) if points else np.empty(0) for k in (1, 2, 3))
        within, each = within_group_correlation([p[1] for p in points], [p[2] for p in points], **options)
        results = {"pooled": correlation(x, y, **options), "within_run": within,
                   "partial": partial_correlation(x, y, z, **options)}
        for e, estimate in enumerate(estimates):
            for key, value in results[estimate].items():
                table.setdefault(key, np.full(shape, np.nan))[t, s, m, e] = value
        for method in per_run:
            for p, r in zip(points, each[method]):
                per_run[method][runs.index(p[0]), s, m] = r
    dims = ("task_kind", "scope", "measure", "estimate")
    out = xr.Dataset({f"corr_{k}": (dims, v) for k, v in table.items()},
                     coords={"task_kind": tasks, "scope": scopes, "measure": measures, "estimate": estimates,
                             "measure_description": ("measure", [described[m][0] for m in measures]),
                             "estimate_description": ("estimate", [ESTIMATES[e] for e in estimates])})
    for method, values in per_run.items():
        out[f"corr_run_{method}_r"] = (("run", "scope", "measure"), values,
                                       {"description": f"{method} r of forgetting spread with robustness within "
                                                       f"each run, over its epochs"})
    out = out.assign_coords(run=ds.run.values)
    out["corr_n"].attrs["description"] = "(run, epoch) pairs, or runs for the within_run estimate"
    for name in ("pearson", "spearman"):
        out[f"corr_{name}_r"].attrs["description"] = f"{name} correlation of forgetting_spread with robustness"
        out[f"corr_{name}_p"].attrs["description"] = f"two-sided permutation p-value ({permutations} permutations)"
        for side in ("low", "high"):
            out[f"corr_{name}_ci_{side}"].attrs["description"] = f"bootstrap 95% interval ({bootstrap} resamples)"
    return out


def early_stopping_table(ds: xr.Dataset, directions: Mapping[str, float] | float = 1.0) -> xr.Dataset:
    """Per run: the epoch the forgetting-spread indicator picks, against the epochs with the best robustness.

    The indicator picks, among epochs ≥ 1 with a forgetting spread, the one with the largest spread
    where the run's task has ``directions[task] > 0`` (spread goes with robustness) and the smallest
    where it is < 0 (ties: the earliest). The best epochs are the most robust epochs ≥ 1 by each
    measure of :data:`MEASURES`. Epoch −1: nothing to choose from. Also given: the (measured, not
    oriented) robustness at the picked and the best epoch.
    """
    picked, rob_picked, signs = [], [], []
    best = {m: [] for m in MEASURES}
    rob_best = []
    epochs = _scope_epochs(ds, None)
    for run in ds.run.values:
        task = str(ds["task"].sel(run=run).values)
        sign = directions if isinstance(directions, (int, float)) else directions.get(task, 1.0)
        sign = 1.0 if not np.isfinite(sign) or sign == 0 else float(np.sign(sign))
        sub = ds.sel(run=run, epoch=epochs)
        spread, rob = sub["forgetting_spread"].values, sub["robustness"].values
        ok = np.isfinite(spread)
        i = int(np.flatnonzero(ok)[np.argmax(sign * spread[ok])]) if ok.any() else None
        picked.append(epochs[i] if i is not None else -1)
        rob_picked.append(rob[i] if i is not None else np.nan)
        signs.append(int(sign))
        for measure, (variable, _) in MEASURES.items():
            values = sub[variable].values
            good = np.isfinite(values)
            j = int(np.flatnonzero(good)[np.argmax(values[good])]) if good.any() else None
            best[measure].append(epochs[j] if j is not None else -1)
            if measure == "absolute":
                rob_best.append(rob[j] if j is not None else np.nan)
    out = xr.Dataset(
        {"indicator_direction": ("run", signs, {"description": "+1: the indicator picks the largest forgetting "
                                                "spread, -1: the smallest (the sign of the pooled Pearson r with "
                                                "absolute robustness over all epochs)"}),
         "indicator_epoch": ("run", picked,
                             {"description": "epoch picked by the forgetting-spread indicator (-1: none)"}),
         "best_robustness_epoch": ("run", best["absolute"],
                                   {"description": "most robust epoch >= 1 by absolute robustness (-1: none)"}),
         "best_relative_robustness_epoch": ("run", best["relative"],
                                            {"description": "most robust epoch >= 1 by relative robustness"}),
         "indicator_robustness": ("run", rob_picked, {"description": "robustness at indicator_epoch"}),
         "best_robustness": ("run", rob_best, {"description": "robustness at best_robustness_epoch"})},
        coords={"run": ds.run.values})
    out.attrs["indicator_measure"] = "absolute"
    return out


def summarise(ds: xr.Dataset, analysis: Mapping[str, Any]) -> xr.Dataset:
    """Add the correlation table and the early-stopping indicator to the aggregated Dataset.

    The indicator's direction for each task kind is the sign of that task's pooled Pearson r with
    absolute robustness over all epochs (+1 where it is undefined).
    """
    corr = correlation_table(ds, analysis.get("first_epochs", []), bootstrap=analysis.get("bootstrap", 1000),
                             permutations=analysis.get("permutations", 1000), seed=analysis.get("seed", 0))
    r_all = corr["corr_pearson_r"].sel(scope="all", measure="absolute", estimate="pooled")
    directions = {str(t): float(np.sign(np.nan_to_num(r_all.sel(task_kind=t).item()))) or 1.0
                  for t in corr.task_kind.values}
    stopping = early_stopping_table(ds, directions)
    out = xr.merge([ds, corr, stopping], compat="override", join="outer")
    out.attrs.update(ds.attrs)
    out.attrs["indicator_measure"] = stopping.attrs["indicator_measure"]
    return out


# --------------------------------------------------------------------------- CSV tables

def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (str, np.str_)):
        return str(value)
    value = float(value)
    if not np.isfinite(value):
        return ""
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.6g}"


def correlation_rows(ds: xr.Dataset) -> list[dict[str, str]]:
    """The correlation rows (task kind × scope × measure × estimate) and early-stopping rows (one per
    run) of the CSV table."""
    keys = ["n"] + [f"{m}_{k}" for m in ("pearson", "spearman") for k in ("r", "ci_low", "ci_high", "p")]
    rows = []
    for task, scope, measure, estimate in itertools.product(ds.task_kind.values, ds.scope.values,
                                                            ds.measure.values, ds.estimate.values):
        epochs = _scope_epochs(ds, _scope_limit(str(scope)))
        sel = dict(task_kind=task, scope=scope, measure=measure, estimate=estimate)
        rows.append({"table": "correlation", "task": str(task), "scope": str(scope),
                     "epochs": f"{epochs[0]}-{epochs[-1]}" if epochs else "", "measure": str(measure),
                     "estimate": str(estimate), "robustness": _measure_text(ds, str(measure)),
                     **{k: _fmt(ds[f"corr_{k}"].sel(sel).item()) for k in keys}})
    for run in ds.run.values:
        task = str(ds["task"].sel(run=run).values)
        rows.append({"table": "early_stopping", "task": task, "run": str(run),
                     "target": str(ds["target"].sel(run=run).values), "init": str(ds["init"].sel(run=run).values),
                     "measure": ds.attrs.get("indicator_measure", "absolute"),
                     "robustness": ROBUSTNESS_MEASURE.get(task, "robustness"),
                     "indicator_direction": _fmt(ds["indicator_direction"].sel(run=run).item()),
                     **{k: _fmt(v) if (v := ds[k].sel(run=run).item()) >= 0 else ""  # -1: no epoch to pick
                        for k in ("indicator_epoch", "best_robustness_epoch", "best_relative_robustness_epoch")},
                     **{k: _fmt(ds[k].sel(run=run).item()) for k in ("indicator_robustness", "best_robustness")}})
    return rows


def _measure_text(ds: xr.Dataset, measure: str) -> str:
    if "measure_description" in ds.coords:
        return str(ds["measure_description"].sel(measure=measure).values)
    return MEASURES[measure][1]


CORRELATION_COLUMNS = ["table", "task", "scope", "epochs", "measure", "estimate", "robustness", "n",
                       "pearson_r", "pearson_ci_low", "pearson_ci_high", "pearson_p",
                       "spearman_r", "spearman_ci_low", "spearman_ci_high", "spearman_p",
                       "run", "target", "init", "indicator_direction", "indicator_epoch", "best_robustness_epoch",
                       "best_relative_robustness_epoch", "indicator_robustness", "best_robustness"]


def checkpoint_table(ds: xr.Dataset) -> pd.DataFrame:
    """One row per run × epoch: what the run is, clean score, robustness (absolute and relative),
    relative error, forgetting spread, and the score for each corruption (mean over severities,
    ``<corruption>_mean``) and each corruption × severity (``<corruption>_s<severity>``)."""
    scalars = ("clean_score", "robustness", "robustness_relative", "relative_error", "forgetting_spread")
    table = ds[[k for k in scalars if k in ds]].reset_coords(drop=True).to_dataframe()
    table = table.reindex(columns=list(scalars))  # a measure not computed (no reference run): empty cells
    score = ds["corrupted_score"].reset_coords(drop=True)
    means = score.mean("severity", skipna=False).to_series().unstack("corruption")
    means.columns = [f"{c}_mean" for c in means.columns]
    each = score.to_series().unstack(["corruption", "severity"])
    each.columns = [f"{c}_s{s}" for c, s in each.columns]
    table = pd.concat([table, means[[f"{c}_mean" for c in ds.corruption.values]],
                       each[[f"{c}_s{s}" for c in ds.corruption.values for s in ds.severity.values]]], axis=1)
    identity = pd.DataFrame({k: ds[k].values for k in ("target", "init", "task")}, index=pd.Index(ds.run.values,
                                                                                                    name="run"))
    table = table.join(identity, on="run").reset_index()
    first = ["run", "target", "init", "task", "epoch"]
    return table[first + [c for c in table.columns if c not in first]]


def _write_csv(path: str | Path, table: pd.DataFrame) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False, na_rep="", float_format="%.6g")


def write_tables(ds: xr.Dataset, correlations: str | Path, checkpoints: str | Path | None = None) -> None:
    """Write the CSV tables of a summarised Dataset.

    ``correlations``: one table whose ``table`` column says what a row is: ``correlation`` (per
    task kind × scope × measure × estimate: n, Pearson and Spearman r, bootstrap interval,
    permutation p) or ``early_stopping`` (per run: indicator epoch against the most robust epochs).
    ``checkpoints``: per run × epoch, every robustness score (see :func:`checkpoint_table`).
    """
    _write_csv(correlations, pd.DataFrame(correlation_rows(ds), columns=CORRELATION_COLUMNS))
    if checkpoints is not None:
        _write_csv(checkpoints, checkpoint_table(ds))
