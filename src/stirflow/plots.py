"""Figures, drawn from ``summary.nc`` alone. One function per figure; each takes the Dataset and
the ``figures`` config section and returns a matplotlib Figure. :data:`FIGURES` maps file stems to
those functions; :func:`draw_all` writes each in every configured format.

The figures are sized for a paper: at most :data:`TEXT_WIDTH` inches wide wherever the content
allows, with 7–8 pt text, so they can be printed at their own size. Runs keep one colour for
their initialisation in every figure (:data:`INIT_COLOR`: pretrained blue, from scratch orange);
runs of the same target, task and initialisation are told apart by line style.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .catalog import FIGURES as FIGURE_NAMES  # noqa: E402

__all__ = ["FIGURES", "INIT_COLOR", "STYLE", "draw_all", "matrix_figure"]

#: Width of a two-column paper's text block, in inches.
TEXT_WIDTH = 7.0
#: Colour of a run by its initialisation, the same in every figure (Okabe–Ito, colour-blind safe).
INIT_COLOR = {"pretrained": "#0072B2", "scratch": "#D55E00"}
OTHER_COLOR = "#555555"
LINESTYLES = ["-", "--", ":", "-."]
TARGET_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
STYLE = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 7, "figure.titlesize": 9, "legend.frameon": False,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": False, "lines.linewidth": 1.3,
    "lines.markersize": 3.5, "image.interpolation": "nearest",
    "pdf.fonttype": 42, "ps.fonttype": 42,  # TrueType in PDFs: text stays text (editable, searchable)
}
FORMULA = {"learning": r"$1 - \mathrm{STIR}(p_l \mid f_l)$", "forgetting": r"$1 - \mathrm{STIR}(f_l \mid p_l)$"}
MATRIX_PANEL = 1.75  # inches per matrix panel
ANNOTATE_MAX_BLOCKS = 6  # matrices with at most this many blocks get their values written in the cells


def _styled(fn: Callable) -> Callable:
    """Draw under :data:`STYLE`, so that a figure function looks the same called alone or by draw_all."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plt.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------- helpers

def _run_attr(ds: xr.Dataset, run, key: str) -> str:
    return str(ds[key].sel(run=run).values)


def _groups(ds: xr.Dataset) -> list[tuple[str, str]]:
    """(target, task) pairs in run order: one panel each where a figure has a panel per target."""
    seen: list[tuple[str, str]] = []
    for run in ds.run.values:
        key = (_run_attr(ds, run, "target"), _run_attr(ds, run, "task"))
        if key not in seen:
            seen.append(key)
    return seen


def _group_title(target: str, task: str) -> str:
    return target if task == "classification" else f"{target} ({task})"


def _runs_of(ds: xr.Dataset, target: str, task: str) -> list[str]:
    return [str(r) for r in ds.run.values
            if _run_attr(ds, r, "target") == target and _run_attr(ds, r, "task") == task]


def _run_styles(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    """Per run: colour by initialisation; line style numbering runs that share target, task and init."""
    count: dict[tuple, int] = {}
    targets = list(dict.fromkeys(map(str, ds["target"].values)))
    styles = {}
    for run in ds.run.values:
        init = _run_attr(ds, run, "init")
        key = (_run_attr(ds, run, "target"), _run_attr(ds, run, "task"), init)
        k = count[key] = count.get(key, -1) + 1
        styles[str(run)] = {"color": INIT_COLOR.get(init, OTHER_COLOR), "ls": LINESTYLES[k % len(LINESTYLES)],
                            "marker": TARGET_MARKERS[targets.index(key[0]) % len(TARGET_MARKERS)]}
    return styles


def _scored_epochs(ds: xr.Dataset, run=None) -> list[int]:
    """Epochs with STIR scores (of ``run``, or of any run)."""
    f = ds["forgetting"] if run is None else ds["forgetting"].sel(run=run)
    other = [d for d in f.dims if d != "epoch"]
    return [int(e) for e, ok in zip(ds.epoch.values, np.isfinite(f).any(other).values) if ok]


def _last_scored(ds: xr.Dataset, run=None) -> int | None:
    epochs = _scored_epochs(ds, run)
    return epochs[-1] if epochs else None


def _is_cls(task: str) -> bool:
    return task == "classification"


def _score_label(task: str, what: str = "accuracy") -> str:
    return what if _is_cls(task) else "L1 error (lower is better)"


def _oriented(ds: xr.Dataset) -> xr.DataArray:
    if "robustness_oriented" in ds:
        return ds["robustness_oriented"]
    sign = xr.DataArray([1.0 if _is_cls(str(t)) else -1.0 for t in ds["task"].values], dims="run",
                        coords={"run": ds.run.values})
    return ds["robustness"] * sign


def _epoch_axis(ax) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))


def _init_handles(ds: xr.Dataset) -> list[Line2D]:
    inits = list(dict.fromkeys(map(str, ds["init"].values)))
    return [Line2D([], [], color=INIT_COLOR.get(i, OTHER_COLOR), label=i if i != "scratch" else "from scratch")
            for i in inits]


def _legend(fig, handles: Sequence[Any]) -> None:
    """One legend below the panels, in as many columns as fit the figure's width."""
    ncol = min(len(handles), max(2, int(fig.get_size_inches()[0] / 1.35)))
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol)


def _colorbar(fig, im, axes, label: str, height: float = 2.4) -> None:
    """One colour bar for ``axes``, about ``height`` inches tall whatever the figure's height."""
    share = min(1.0, height / fig.get_size_inches()[1])
    fig.colorbar(im, ax=axes, label=label, shrink=share, aspect=20 * share + 5, pad=0.02)


def _matrix(ax, values: np.ndarray, blocks: Sequence[int], cmap: str, *, vmin: float = 0.0, vmax: float = 1.0):
    """A block × block matrix, row i = reference block (bottom to top), column j = evaluated block."""
    im = ax.imshow(values, vmin=vmin, vmax=vmax, cmap=cmap, origin="lower")
    ticks = range(len(blocks))
    step = max(1, int(np.ceil(len(blocks) / 6)))
    ax.set_xticks(list(ticks)[::step], [str(b) for b in blocks][::step])
    ax.set_yticks(list(ticks)[::step], [str(b) for b in blocks][::step])
    ax.tick_params(length=2, pad=1)
    for side in ("top", "right"):
        ax.spines[side].set_visible(True)
    if len(blocks) <= ANNOTATE_MAX_BLOCKS:
        cm = plt.get_cmap(cmap)
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                v = values[i, j]
                if np.isfinite(v):
                    r, g, b, _ = cm((v - vmin) / (vmax - vmin))
                    dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=5.5,
                            color="white" if dark else "black")
    return im


@_styled
def matrix_figure(matrices: Sequence[np.ndarray], blocks: Sequence[int], *, titles: Sequence[str],
                  ylabels: Sequence[str], xlabels: Sequence[str], suptitle: str = "", cmap: str = "viridis") -> plt.Figure:
    """Block × block matrices side by side on one 0–1 colour scale, oriented as every matrix here
    (:func:`_matrix`: row i = reference block from the bottom up, column j = evaluated block)."""
    n = len(matrices)
    fig, axes = plt.subplots(1, n, figsize=(n * MATRIX_PANEL + 0.9, MATRIX_PANEL + 0.6), squeeze=False,
                             layout="constrained")
    im = None
    for ax, values, title, ylabel, xlabel in zip(axes[0], matrices, titles, ylabels, xlabels):
        im = _matrix(ax, np.asarray(values), blocks, cmap)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if im is not None:
        _colorbar(fig, im, axes, "STIR or CKA")
    if suptitle:
        fig.suptitle(suptitle, fontsize=7)
    return fig


# --------------------------------------------------------------------------- figures

def seed_interval(values: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over replicates (axis 0) and its 95 % interval over them (Student's t,
    :func:`stirflow.statistics.mean_interval`), per column: (mean, low, high); NaN with one replicate."""
    from .statistics import mean_interval

    values = np.asarray(values, float)
    out = np.array([mean_interval(values[:, k], bootstrap=1000, seed=seed)[:3] for k in range(values.shape[1])])
    return out[:, 0], out[:, 1], out[:, 2]


@_styled
def learning_forgetting(ds: xr.Dataset, options: Mapping[str, Any]) -> plt.Figure:
    """Learning (top) and forgetting (bottom) against block at the last scored epoch, a column per
    target (and task), pretrained against from scratch. With replicates (seeds) the line is their mean
    and the band its 95 % interval over seeds (Student's t); with one seed the band is the range over the
    scored epochs ≥ 1. Conditions that vary a setting (a grid) are told apart by line style."""
    groups = _groups(ds)
    n = len(groups)
    fig, axes = plt.subplots(2, n, figsize=(min(TEXT_WIDTH, max(3.4, 2.3 * n + 0.6)), 3.9), squeeze=False,
                             sharex=True, sharey="row", layout="constrained")
    layers = ds.layer.values
    conditions = list(dict.fromkeys(map(str, ds["condition"].values))) if "condition" in ds.coords else None
    replicated = False
    for row, measure in enumerate(("learning", "forgetting")):
        top = 0.0
        for col, (target, task) in enumerate(groups):
            ax = axes[row, col]
            runs = _runs_of(ds, target, task)
            keys = list(dict.fromkeys(_run_attr(ds, r, "condition") if conditions else r for r in runs))
            for k, key in enumerate(keys):
                members = [r for r in runs if (_run_attr(ds, r, "condition") if conditions else r) == key]
                init = _run_attr(ds, members[0], "init")
                color = INIT_COLOR.get(init, OTHER_COLOR)
                ls = LINESTYLES[sum(1 for q in keys[:k] if _run_attr(ds, _members(ds, runs, q)[0], "init") == init)
                                % len(LINESTYLES)]
                lasts = [ds[measure].sel(run=r, epoch=_last_scored(ds, r)).values for r in members
                         if _last_scored(ds, r) is not None]
                if not lasts:
                    continue
                if len(lasts) > 1:
                    replicated = True
                    line, lo, hi = seed_interval(np.stack(lasts))
                else:
                    line = lasts[0]
                    later = [e for e in _scored_epochs(ds, members[0]) if e >= 1]
                    span = ds[measure].sel(run=members[0], epoch=later).values if later else line[None]
                    lo, hi = np.nanmin(span, axis=0), np.nanmax(span, axis=0)
                ax.plot(layers, line, ls=ls, marker="o", color=color, label=key)
                if np.isfinite(lo).any():
                    ax.fill_between(layers, lo, hi, color=color, alpha=0.2, lw=0)
                    top = max(top, float(np.nanmax(hi)))
                top = max(top, float(np.nanmax(line)))
            if row == 0:
                ax.set_title(_group_title(target, task), fontsize=7 if n > 3 else 8)
            if row == 1:
                ax.set_xlabel("block")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(len(layers), 12 if n <= 2 else 6)))
            ax.grid(alpha=0.25, lw=0.5)
        axes[row, 0].set_ylabel(f"{measure.capitalize()}\n{FORMULA[measure]}")
        axes[row, 0].set_ylim(0, min(1.0, max(0.05, 1.1 * top)))
    epochs = [e for e in _scored_epochs(ds) if e >= 1]
    band = Patch(color="0.5", alpha=0.3, lw=0,
                 label="95% interval over seeds" if replicated else
                 (f"range over epochs {epochs[0]}–{epochs[-1]}" if epochs else "range over epochs"))
    last = _last_scored(ds)
    handles = [Line2D([], [], color=h.get_color(), marker="o", label=f"{h.get_label()}, epoch {last}")
               for h in _init_handles(ds)] + [band]
    _legend(fig, handles)
    return fig


def _members(ds: xr.Dataset, runs: Sequence[str], condition: str) -> list[str]:
    return [r for r in runs if _run_attr(ds, r, "condition") == condition]


@_styled
def inversion_convergence(ds: xr.Dataset, options: Mapping[str, Any]) -> plt.Figure:
    """How converged the measurement is. Left: the inversions' mean best relative loss against the
    step, a line per block (darker = deeper), at epoch 0 (dashed) and the last scored epoch (solid),
    a row per run. Right: for the checked epochs, how far learning and forgetting move with
    ``factor`` × the steps (|Δ|), against the tolerance (dotted line)."""
    runs = [str(r) for r in ds.run.values]
    has_check = "convergence_delta_learning" in ds
    fig, axes = plt.subplots(len(runs), 2 if has_check else 1, squeeze=False, layout="constrained",
                             figsize=(TEXT_WIDTH * (0.85 if has_check else 0.5), 1.5 * len(runs) + 0.6))
    cmap = plt.get_cmap("viridis")
    layers = [int(b) for b in ds.layer.values]
    steps = ds["step"].values if "step" in ds.coords else np.array([])
    for k, run in enumerate(runs):
        ax = axes[k, 0]
        last = _last_scored(ds, run)
        for b, layer in enumerate(layers):
            color = cmap(0.85 * b / max(1, len(layers) - 1))
            for epoch, ls in ((0, "--"), (last, "-")):
                if epoch is None or not steps.size:
                    continue
                curve = ds["inversion_curve"].sel(run=run, epoch=epoch, layer=layer).values
                ax.plot(steps, curve, ls=ls, color=color, lw=1, label=f"block {layer}" if ls == "-" else None)
        ax.set_yscale("log")
        ax.set_ylabel(f"{run}\nrelative loss")
        ax.grid(alpha=0.25, lw=0.5)
        if k == len(runs) - 1:
            ax.set_xlabel("inversion step")
        if k == 0:
            ax.set_title("mean best loss (dashed: epoch 0, solid: last epoch)", fontsize=7)
            ax.legend(fontsize=6, ncol=2)
        if has_check:
            ax = axes[k, 1]
            width = 0.38
            checked = [int(e) for e in ds.epoch.values
                       if np.isfinite(ds["convergence_delta_learning"].sel(run=run, epoch=e).values).any()]
            for e in checked:
                for offset, name, color in ((-width / 2, "learning", "#009E73"), (width / 2, "forgetting", "#CC79A7")):
                    delta = ds[f"convergence_delta_{name}"].sel(run=run, epoch=e).values
                    ax.bar(np.arange(len(layers)) + offset, delta, width, color=color,
                           label=f"|Δ {name}|" if (k == 0 and e == checked[0]) else None)
            tol = ds.attrs.get("convergence_tolerance", np.nan)
            ax.axhline(tol, color="black", ls=":", lw=1, label="tolerance" if k == 0 else None)
            ax.set_xticks(range(len(layers)), [str(b) for b in layers])
            ax.grid(alpha=0.25, lw=0.5, axis="y")
            ax.set_ylabel(f"epochs {', '.join(map(str, checked))}" if checked else "not checked")
            if k == 0:
                ax.set_title(f"convergence check: {ds.attrs.get('convergence_factor', '?')}x the steps", fontsize=7)
                ax.legend(fontsize=6)
            if k == len(runs) - 1:
                ax.set_xlabel("block")
    return fig


@_styled
def flow_matrices(ds: xr.Dataset, options: Mapping[str, Any]) -> plt.Figure:
    """Per run and chosen epoch (``figures.epochs`` and the last scored one): the invariance flow
    STIR(f_j | p_i), the reverse direction STIR(p_j | f_i) and CKA(p_i, f_j), on one 0–1 colour scale."""
    cmap = options.get("cmap", "viridis")
    rows = []
    for run in ds.run.values:
        scored = _scored_epochs(ds, run)
        if scored:
            rows += [(run, e) for e in sorted({e for e in options.get("epochs", []) if e in scored} | {scored[-1]})]
    blocks = [int(b) for b in ds.layer_ref.values]
    n = max(1, len(rows))
    fig, axes = plt.subplots(n, 3, figsize=(3 * MATRIX_PANEL + 0.9, MATRIX_PANEL * n + 0.5),
                             squeeze=False, sharex=True, sharey=True, layout="constrained")
    titles = [r"invariance flow" "\n" r"$\mathrm{STIR}(f_j \mid p_i)$",
              r"reverse direction" "\n" r"$\mathrm{STIR}(p_j \mid f_i)$",
              r"representations" "\n" r"$\mathrm{CKA}(p_i, f_j)$"]
    im = None
    for k, (run, epoch) in enumerate(rows):
        sel = ds.sel(run=run, epoch=epoch)
        for c, key in enumerate(("flow", "flow_reverse", "cka")):
            im = _matrix(axes[k, c], sel[key].values, blocks, cmap)
        axes[k, 0].set_ylabel(f"{run}\nepoch {epoch}\nblock i")
    for c, title in enumerate(titles):
        axes[0, c].set_title(title)
        axes[-1, c].set_xlabel("block j")
    if im is not None:
        _colorbar(fig, im, axes, "STIR or CKA")
    return fig


def _spread_scatter(ax, ds: xr.Dataset, task: str, values: xr.DataArray, epochs: Sequence[int],
                    styles: Mapping[str, Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Forgetting spread (x) against ``values`` (y, (run, epoch)) of every run of ``task`` at ``epochs``:
    a point per epoch, a thin line along each run, and the least-squares line through all; returns
    the points drawn (xs, ys)."""
    xs, ys = [], []
    for run in ds.run.values:
        if _run_attr(ds, run, "task") != task:
            continue
        x = ds["forgetting_spread"].sel(run=run, epoch=epochs).values
        y = values.sel(run=run, epoch=epochs).values
        ok = np.isfinite(x) & np.isfinite(y)
        st = styles[str(run)]
        ax.plot(x[ok], y[ok], ls=st["ls"], lw=0.6, color=st["color"], alpha=0.5, zorder=2)
        ax.scatter(x[ok], y[ok], s=14, color=st["color"], marker=st["marker"], zorder=3,
                   edgecolors="white", linewidths=0.3, label=str(run))
        xs.extend(x[ok])
        ys.extend(y[ok])
    xs, ys = np.asarray(xs), np.asarray(ys)
    _fit_line(ax, xs, ys)
    return xs, ys


def _fit_line(ax, x: np.ndarray, y: np.ndarray) -> None:
    if len(x) >= 2 and np.ptp(x) > 0:
        slope, icpt = np.polyfit(x, y, 1)
        grid = np.linspace(x.min(), x.max(), 20)
        ax.plot(grid, slope * grid + icpt, "-", color="black", lw=1, zorder=1)


def _corr_text(ds: xr.Dataset, task: str, scope: str, measure: str, x: np.ndarray, y: np.ndarray) -> str:
    """The correlation table's pooled r and ρ (interval, p), mean within-run r and partial r, or r and ρ
    computed here for a Dataset without the table."""
    def get(key, estimate="pooled"):
        name = f"corr_{key}"
        if name in ds and "measure" in ds[name].dims and task in ds.task_kind.values and scope in ds.scope.values:
            return float(ds[name].sel(task_kind=task, scope=scope, measure=measure, estimate=estimate))
        return np.nan

    if not np.isfinite(get("pearson_r")) and len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
        from .statistics import pearson, spearman  # a Dataset without the correlation table: r and ρ alone

        c = {"pearson_r": float(pearson(x, y)), "spearman_r": float(spearman(x, y))}
        get = lambda key, estimate="pooled": c.get(key, np.nan) if estimate == "pooled" else np.nan  # noqa: E731
    lines = []
    for name, symbol in (("pearson", "Pearson r"), ("spearman", "Spearman ρ")):
        r, lo, hi, p = (get(f"{name}_{k}") for k in ("r", "ci_low", "ci_high", "p"))
        if not np.isfinite(r):
            lines.append(f"{symbol}: undefined")
            continue
        text = f"{symbol.split()[1]} = {r:.2f}"
        if np.isfinite(lo):
            text += f" [{lo:.2f}, {hi:.2f}]"
        if np.isfinite(p):
            text += f", p = {p:.2g}"
        lines.append(text)
    within, partial = get("pearson_r", "within_run"), get("pearson_r", "partial")
    if np.isfinite(within) or np.isfinite(partial):
        lines.append(f"within run r̄ = {within:.2f}, partial r = {partial:.2f}")
    return "\n".join(lines)


#: y axis of spread_vs_robustness per measure: summary.nc variable and label
ROBUSTNESS_AXES = {
    "absolute": ("robustness_oriented", {"classification": "mean corrupted accuracy",
                                         "reconstruction": "− mean corrupted L1 error"}),
    "relative": ("robustness_relative", {"classification": "corrupted / clean accuracy",
                                         "reconstruction": "clean / corrupted L1 error"}),
}


@_styled
def spread_vs_robustness(ds: xr.Dataset, options: Mapping[str, Any]) -> plt.Figure:
    """Forgetting spread against robustness, every run × scored epoch ≥ 1: a row per task kind and
    robustness measure (absolute, and relative to the clean score), a column per scope (all epochs,
    then the first k), with a least-squares line, the pooled r and ρ (bootstrap 95 % interval,
    permutation p), the mean within-run r and the partial r given the clean score. Robustness is
    oriented so that up is more robust for every task."""
    scopes = [str(s) for s in ds.scope.values] if "scope" in ds.coords else ["all"]
    tasks = list(dict.fromkeys(map(str, ds["task"].values)))
    measures = [m for m, (variable, _) in ROBUSTNESS_AXES.items() if variable in ds or m == "absolute"]
    rows = [(t, m) for t in tasks for m in measures]
    styles = _run_styles(ds)
    fig, axes = plt.subplots(len(rows), len(scopes), figsize=(min(TEXT_WIDTH, 2.35 * len(scopes) + 0.5),
                                                              2.5 * len(rows) + 0.5),
                             squeeze=False, layout="constrained")
    for row, (task, measure) in enumerate(rows):
        variable, labels = ROBUSTNESS_AXES[measure]
        values = _oriented(ds) if measure == "absolute" else ds[variable]
        for col, scope in enumerate(scopes):
            ax = axes[row, col]
            limit = None if scope == "all" else int(scope.rsplit("_", 1)[1])
            epochs = [int(e) for e in ds.epoch.values if e >= 1 and (limit is None or e <= limit)]
            xs, ys = _spread_scatter(ax, ds, task, values, epochs, styles)
            span = f"epochs {epochs[0]}–{epochs[-1]}" if epochs else "no epochs"
            head = f"{span} ({'all' if limit is None else f'first {limit}'}), n = {len(xs)}"
            ax.set_title(head + "\n" + _corr_text(ds, task, scope, measure, xs, ys), fontsize=6.5, loc="left")
            ax.grid(alpha=0.25, lw=0.5)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
            if row == len(rows) - 1:
                ax.set_xlabel("forgetting spread\n(std over blocks of Forgetting)")
        axes[row, 0].set_ylabel(f"{measure} robustness\n{labels.get(task, task)}"
                                + ("" if len(tasks) == 1 else f"\n[{task}]"))
    targets = list(dict.fromkeys(map(str, ds["target"].values)))
    handles = _init_handles(ds)
    if len(targets) > 1:
        handles += [Line2D([], [], ls="", marker=TARGET_MARKERS[k % len(TARGET_MARKERS)], color="0.3", label=t)
                    for k, t in enumerate(targets)]
    handles.append(Line2D([], [], color="black", lw=1, label="least-squares fit"))
    _legend(fig, handles)
    return fig


@_styled
def stir_over_epochs(ds: xr.Dataset, options: Mapping[str, Any]) -> plt.Figure:
    """Learning and forgetting of every block at every scored epoch (block × epoch heatmaps), a row per run.
    One colour scale for all panels, from 0 to the largest value shown."""
    epochs = _scored_epochs(ds)
    cmap = options.get("cmap", "viridis")
    n = len(ds.run)
    fig, axes = plt.subplots(n, 2, figsize=(TEXT_WIDTH * 0.85, 1.25 * n + 0.8), squeeze=False, sharex=True,
                             sharey=True, layout="constrained")
    values = {m: ds[m].sel(epoch=epochs) for m in ("learning", "forgetting")}
    vmax = max(float(np.nanmax(v.values)) if np.isfinite(v.values).any() else 0.0 for v in values.values())
    vmax = min(1.0, max(0.05, np.ceil(vmax * 20) / 20))  # round up to 0.05
    step = max(1, int(np.ceil(len(epochs) / 12)))
    im = None
    for k, run in enumerate(ds.run.values):
        for c, measure in enumerate(("learning", "forgetting")):
            ax = axes[k, c]
            im = ax.imshow(values[measure].sel(run=run).values.T, vmin=0, vmax=vmax, aspect="auto", cmap=cmap,
                           origin="lower")
            ax.set_xticks(range(len(epochs))[::step], [str(e) for e in epochs][::step])
            ax.set_yticks(range(len(ds.layer)), [str(b) for b in ds.layer.values])
            ax.tick_params(length=2, pad=1)
            if k == 0:
                ax.set_title(f"{measure.capitalize()}  {FORMULA[measure]}")
            if k == n - 1:
                ax.set_xlabel("epoch")
        axes[k, 0].set_ylabel(f"{run}\nblock")
    if im is not None:
        _colorbar(fig, im, axes, f"Learning or Forgetting (scale 0–{vmax:g})")
    return fig


@_styled
def within_model(ds: xr.Dataset, options: Mapping[str, Any]) -> plt.Figure:
    """STIR between blocks of one model, STIR(block j | block i): the model before finetuning (the
    pretrained model, or the random initialisation) and the finetuned model at the last scored epoch."""
    cmap = options.get("cmap", "viridis")
    runs = [r for r in ds.run.values if _last_scored(ds, r) is not None]
    blocks = [int(b) for b in ds.layer_ref.values]
    n = max(1, len(runs))
    fig, axes = plt.subplots(n, 2, figsize=(2 * MATRIX_PANEL + 1.1, MATRIX_PANEL * n + 0.5),
                             squeeze=False, sharex=True, sharey=True, layout="constrained")
    im = None
    for k, run in enumerate(runs):
        last = _last_scored(ds, run)
        init = _run_attr(ds, run, "init")
        before = "pretrained model" if init == "pretrained" else "random initialisation"
        im = _matrix(axes[k, 0], ds["within_ref"].sel(run=run, epoch=last).values, blocks, cmap)
        _matrix(axes[k, 1], ds["within_eval"].sel(run=run, epoch=last).values, blocks, cmap)
        axes[k, 0].set_title(f"before finetuning ({before})", fontsize=7)
        axes[k, 1].set_title(f"finetuned, epoch {last}", fontsize=7)
        axes[k, 0].set_ylabel(f"{run}\nblock i (inverted)")
    for ax in axes[-1]:
        ax.set_xlabel("block j (evaluated)")
    if im is not None:
        _colorbar(fig, im, axes, r"$\mathrm{STIR}(\mathrm{block}\ j \mid \mathrm{block}\ i)$")
    return fig


@_styled
def training_curves(ds: xr.Dataset, options: Mapping[str, Any]) -> plt.Figure:
    """Loss (top) and score (bottom) against epoch, train dashed and test solid, a column per target (and task)."""
    groups = _groups(ds)
    styles = _run_styles(ds)
    n = len(groups)
    fig, axes = plt.subplots(2, n, figsize=(min(TEXT_WIDTH, max(3.4, 2.3 * n + 0.4)), 3.9), squeeze=False,
                             sharex=True, layout="constrained")
    for col, (target, task) in enumerate(groups):
        score = "accuracy" if _is_cls(task) else "l1_error"
        for run in _runs_of(ds, target, task):
            st = styles[run]
            sub = ds.sel(run=run)
            for row, key in ((0, "loss"), (1, score)):
                for split, ls in (("train", "--"), ("test", "-")):
                    name = f"{split}_{key}"
                    if name in ds and np.isfinite(sub[name].values).any():
                        axes[row, col].plot(ds.epoch, sub[name], ls=ls, color=st["color"],
                                            marker="o" if split == "test" else None, ms=2.5)
        axes[0, col].set_title(_group_title(target, task), fontsize=7 if n > 3 else 8)
        if col == 0 or groups[col - 1][1] != task:
            axes[0, col].set_ylabel("loss")
            axes[1, col].set_ylabel("accuracy" if _is_cls(task) else "L1 error")
        axes[1, col].set_xlabel("epoch")
        for ax in axes[:, col]:
            _epoch_axis(ax)
            ax.grid(alpha=0.25, lw=0.5)
    handles = _init_handles(ds) + [Line2D([], [], color="0.3", ls="--", label="train"),
                                   Line2D([], [], color="0.3", ls="-", marker="o", ms=2.5, label="test")]
    _legend(fig, handles)
    return fig


def _corruption_colors(corruptions: Sequence[str]) -> dict[str, Any]:
    """Distinct colours that are neither the pretrained blue nor the from-scratch orange."""
    if len(corruptions) <= 7:
        palette = [plt.get_cmap("tab10")(i) for i in (2, 4, 5, 6, 8, 9, 3)]
    else:
        palette = [plt.get_cmap("tab20")(i) for i in range(4, 20)]
    return {c: palette[k % len(palette)] for k, c in enumerate(corruptions)}


@_styled
def robustness_per_corruption(ds: xr.Dataset, options: Mapping[str, Any]) -> plt.Figure:
    """Per run (at most four side by side): top, the score under each corruption (mean over
    severities), clean and mean corrupted, against epoch; below it, each corruption's score against
    severity at the last epoch with scores."""
    runs = [str(r) for r in ds.run.values]
    n = len(runs)
    ncols = min(n, 4)
    nblocks = int(np.ceil(n / ncols))
    corruptions = [str(c) for c in ds.corruption.values]
    colors = _corruption_colors(corruptions)
    fig, axes = plt.subplots(2 * nblocks, ncols, figsize=(min(TEXT_WIDTH, max(3.4, 1.9 * ncols + 0.6)),
                                                          3.6 * nblocks + 0.5), squeeze=False, layout="constrained")
    for k in range(n, nblocks * ncols):  # unused places of the last block
        axes[2 * (k // ncols), k % ncols].set_visible(False)
        axes[2 * (k // ncols) + 1, k % ncols].set_visible(False)
    for k, run in enumerate(runs):
        top, bottom = axes[2 * (k // ncols), k % ncols], axes[2 * (k // ncols) + 1, k % ncols]
        sub = ds.sel(run=run)
        task = _run_attr(ds, run, "task")
        # only the scored checkpoints (robustness.epochs may leave some out), marked where they are few
        valid = [int(e) for e in ds.epoch.values if np.isfinite(sub["corrupted_score"].sel(epoch=e).values).any()]
        scored = sub.sel(epoch=valid)
        marker = "o" if len(valid) < len(ds.epoch) else None
        for c in corruptions:
            top.plot(valid, scored["corrupted_score"].sel(corruption=c).mean("severity"), color=colors[c], lw=1,
                     marker=marker, ms=2)
        top.plot(valid, scored["clean_score"], color="black", lw=1.8, marker=marker, ms=2.5)
        top.plot(valid, scored["robustness"], color="black", lw=1.4, ls="--", marker=marker, ms=2.5)
        last = valid[-1] if valid else int(ds.epoch.values[-1])
        for c in corruptions:
            bottom.plot(ds.severity, sub["corrupted_score"].sel(corruption=c, epoch=last), color=colors[c],
                        marker="o", lw=1, ms=2.5)
        bottom.axhline(float(sub["clean_score"].sel(epoch=last)), color="black", lw=1.8)
        top.set_title(run, fontsize=7 if len(run) > 22 else 8)
        top.set_xlabel("epoch")
        _epoch_axis(top)
        bottom.set_title(f"epoch {last}", fontsize=7)
        bottom.set_xlabel("severity")
        bottom.set_xticks(ds.severity.values)
        ylabel = "accuracy" if _is_cls(task) else "L1 error (lower is better)"
        if k % ncols == 0 or _run_attr(ds, runs[k - 1], "task") != task:
            top.set_ylabel(ylabel)
            bottom.set_ylabel(ylabel)
        for ax in (top, bottom):
            ax.grid(alpha=0.25, lw=0.5)
            if _is_cls(task):
                ax.set_ylim(0, 1.02)
    handles = [Line2D([], [], color="black", lw=1.8, label="clean"),
               Line2D([], [], color="black", lw=1.4, ls="--", label="mean corrupted")]
    handles += [Line2D([], [], color=colors[c], lw=1, label=c.replace("_", " ")) for c in corruptions]
    _legend(fig, handles)
    return fig


# --------------------------------------------------------------------------- the open questions' axes

def _not_varied(what: str) -> plt.Figure:
    """The figure of an axis a summary does not vary: it says so."""
    fig, ax = plt.subplots(figsize=(3.4, 1.0), layout="constrained")
    ax.set_axis_off()
    ax.text(0.5, 0.5, f"{what}: not varied in this summary", ha="center", va="center", transform=ax.transAxes)
    return fig


def _unconverged(ds: xr.Dataset, run, layers: Sequence[int] | None = None) -> np.ndarray:
    """Per layer of ``layers`` (default: all), True where the convergence check found the run's last
    scored epoch not converged (unchecked layers are False: not known to be unconverged)."""
    layers = [int(b) for b in ds.layer.values] if layers is None else list(layers)
    epoch = _last_scored(ds, run)
    if "converged" not in ds or epoch is None:
        return np.zeros(len(layers), bool)
    return ds["converged"].sel(run=run, epoch=epoch, layer=layers).values == 0


#: Legend entry of the open markers that the axis figures draw over unconverged measurements
UNCONVERGED_LABEL = "open marker: not converged (convergence check)"


def _mark_unconverged(ax, xs: np.ndarray, ys: np.ndarray, mask: np.ndarray, color) -> bool:
    """Open markers at the points of ``mask``; whether any was drawn."""
    if not mask.any():
        return False
    ax.plot(np.asarray(xs)[mask], np.asarray(ys)[mask], ls="", marker="o", mfc="white", mec=color, zorder=3,
            label="_unconverged")
    return True


def _unconverged_handle() -> Line2D:
    return Line2D([], [], color="0.3", ls="", marker="o", mfc="white", label=UNCONVERGED_LABEL)


#: The statistics of a run drawn against an axis: key of stirflow.findings.RUN_STATISTICS, y label
AXIS_STATISTICS = (("early learning", "Learning, first half\nof the layers"),
                   ("early forgetting", "Forgetting, first half\nof the layers"),
                   ("forgetting spread", "Forgetting spread\n(std over layers)"))


def _condition_interval(ds: xr.Dataset, runs: Sequence[str], statistic: str) -> tuple[float, float, float]:
    """(mean, low, high) of a run statistic over ``runs`` (replicates): Student's t over seeds with two
    or more, else the 95 % range over the image resamples, else no interval (NaN)."""
    from .findings import run_statistic

    stats = [run_statistic(ds, r, statistic) for r in runs]
    values = np.array([v for v, _ in stats])
    if len(runs) >= 2:
        mean, low, high = (v[0] for v in seed_interval(values[:, None]))
        return float(mean), float(low), float(high)
    boot = stats[0][1]
    if boot is not None and np.isfinite(boot).any():
        low, high = np.nanpercentile(boot, [2.5, 97.5])
        return float(values[0]), float(low), float(high)
    return float(values[0]), np.nan, np.nan


def _axis_lines(ds: xr.Dataset, axis: str, positions: Mapping[str, float]):
    """Per (target, task) panel, the lines of runs that differ only along ``axis`` (two or more
    positions): (init, label, [(x, [runs]), ...]) with x from ``positions`` (run → position), points
    sorted by x."""
    from .findings import _question_groups, _settings_note

    panels: dict[tuple[str, str], list] = {}
    for (target, task, init, key), runs in _question_groups(ds, axis).items():
        at: dict[float, list[str]] = {}
        for r in runs:
            at.setdefault(positions[r], []).append(r)
        if len(at) < 2:  # runs with no partner along the axis say nothing about it
            continue
        label = "from scratch" if init == "scratch" else init
        label += f" ({_settings_note(key)})" if key else ""
        panels.setdefault((target, task), []).append((init, label, sorted(at.items())))
    return panels


def _draw_axis(ds: xr.Dataset, axis: str, positions: Mapping[str, float], xlabel: str,
               ticks: Sequence[tuple[float, str]] | None = None, log: bool = False) -> plt.Figure:
    """Early-layer learning, early-layer forgetting and forgetting spread at the last scored epoch
    against ``axis`` (x of each run: ``positions``), a row per (target, task), a line per init and
    other settings with its 95 % interval (over seeds, else over the STIR images' resamples); an
    open marker where a layer of one of the point's runs is not converged at that epoch."""
    panels = _axis_lines(ds, axis, positions)
    any_unconverged = False
    fig, axes = plt.subplots(len(panels), len(AXIS_STATISTICS), squeeze=False, layout="constrained",
                             figsize=(TEXT_WIDTH * 0.9, 1.9 * len(panels) + 0.7))
    handles = {}
    for row, ((target, task), lines) in enumerate(panels.items()):
        for col, (statistic, ylabel) in enumerate(AXIS_STATISTICS):
            ax = axes[row, col]
            count: dict[str, int] = {}
            for init, label, points in lines:
                k = count[init] = count.get(init, -1) + 1
                color, ls = INIT_COLOR.get(init, OTHER_COLOR), LINESTYLES[k % len(LINESTYLES)]
                xs = np.array([x for x, _ in points])
                ys = np.array([_condition_interval(ds, runs, statistic) for _, runs in points])
                ax.plot(xs, ys[:, 0], ls=ls, marker="o", color=color, label=label)
                mask = np.array([any(_unconverged(ds, r).any() for r in runs) for _, runs in points])
                any_unconverged |= _mark_unconverged(ax, xs, ys[:, 0], mask, color)
                if np.isfinite(ys[:, 1]).any():
                    ax.errorbar(xs, ys[:, 0], yerr=[ys[:, 0] - ys[:, 1], ys[:, 2] - ys[:, 0]], fmt="none",
                                ecolor=color, elinewidth=0.8, capsize=2)
                handles.setdefault(label, Line2D([], [], color=color, ls=ls, marker="o", label=label))
            if log:
                ax.set_xscale("log")
            if ticks is not None:
                ax.set_xticks([t for t, _ in ticks], [name for _, name in ticks])
                ax.set_xlim(min(t for t, _ in ticks) - 0.5, max(t for t, _ in ticks) + 0.5)
            ax.grid(alpha=0.25, lw=0.5)
            if row == 0:
                ax.set_title(ylabel.replace("\n", " "), fontsize=7)
            if row == len(panels) - 1:
                ax.set_xlabel(xlabel)
        axes[row, 0].set_ylabel(_group_title(target, task))
    _legend(fig, list(handles.values()) + [Line2D([], [], color="0.3", marker="|", ls="",
                                                  label="95% interval (seeds, else images)")]
            + ([_unconverged_handle()] if any_unconverged else []))
    return fig


@_styled
def axis_train_fraction(ds: xr.Dataset, options: Mapping[str, Any]) -> plt.Figure:
    """Open question 1: early-layer learning, early-layer forgetting and forgetting spread at the
    last scored epoch against the fraction of the target's training split finetuned on (log scale),
    a line per init (and other settings), the mean over seeds with its 95 % interval."""
    if "train_fraction" not in ds.coords or len(set(ds["train_fraction"].values)) < 2:
        return _not_varied("finetune.train_fraction")
    positions = {str(r): float(ds["train_fraction"].sel(run=r)) for r in ds.run.values}
    return _draw_axis(ds, "train_fraction", positions, "train fraction (log scale)", log=True)


@_styled
def axis_schedule(ds: xr.Dataset, options: Mapping[str, Any]) -> plt.Figure:
    """Open question 2: the same statistics per learning-rate schedule (in the order the runs have them)."""
    if "schedule" not in ds.coords or len(set(map(str, ds["schedule"].values))) < 2:
        return _not_varied("finetune.schedule")
    names = list(dict.fromkeys(map(str, ds["schedule"].values)))
    positions = {str(r): float(names.index(str(ds["schedule"].sel(run=r).values))) for r in ds.run.values}
    return _draw_axis(ds, "schedule", positions, "learning-rate schedule",
                      ticks=[(float(k), name.replace("(", "\n(")) for k, name in enumerate(names)])


def _corr_compact(ds: xr.Dataset, task: str, measure: str) -> str:
    """The correlation table's pooled r and ρ with their intervals, the mean within-run r and the
    partial r, in three short lines (panels of the adversarial figure are narrow)."""
    def get(key, estimate="pooled"):
        if f"corr_{key}" not in ds or measure not in ds.measure.values:
            return np.nan
        return float(ds[f"corr_{key}"].sel(task_kind=task, scope="all", measure=measure, estimate=estimate))

    lines = []
    for name, symbol in (("pearson", "r"), ("spearman", "ρ")):
        r, lo, hi = (get(f"{name}_{k}") for k in ("r", "ci_low", "ci_high"))
        lines.append(f"{symbol} = {r:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else "")
                     if np.isfinite(r) else f"{symbol}: undefined")
    lines.append(f"within run r̄ = {get('pearson_r', 'within_run'):.2f}, partial {get('pearson_r', 'partial'):.2f}")
    return "\n".join(lines)


@_styled
def axis_adversarial(ds: xr.Dataset, options: Mapping[str, Any]) -> plt.Figure:
    """Open question 3: forgetting spread against adversarial accuracy beside corruption robustness,
    every classification run × epoch ≥ 1: a column per measure (corrupted accuracy, then accuracy
    under PGD per norm and radius), absolute (top) and relative to the clean accuracy (bottom), with
    the pooled r, its interval, the mean within-run r and the partial r of the correlation table."""
    from .analysis import adversarial_measure, correlation_measures

    measures = correlation_measures(ds)
    attacks = [m for m in measures if m.startswith("adversarial_") and not m.endswith("_relative")]
    tasks = [t for t in dict.fromkeys(map(str, ds["task"].values)) if _is_cls(t)]
    if not attacks or not tasks:
        return _not_varied("adversarial (PGD radii above 0)")
    columns = ["absolute"] + attacks
    styles = _run_styles(ds)
    epochs = [int(e) for e in ds.epoch.values if e >= 1]
    fig, axes = plt.subplots(2, len(columns), squeeze=False, layout="constrained", sharex=True,
                             figsize=(min(TEXT_WIDTH, 1.45 * len(columns) + 0.5), 4.9))
    for col, measure in enumerate(columns):
        for row, relative in enumerate((False, True)):
            name = ("relative" if relative else "absolute") if measure == "absolute" else \
                (measure + "_relative" if relative else measure)
            ax = axes[row, col]
            xs, ys = _spread_scatter(ax, ds, tasks[0], measures[name][1], epochs, styles)
            ax.set_title(_corr_compact(ds, tasks[0], name), fontsize=5.5, loc="left")
            ax.grid(alpha=0.25, lw=0.5)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=3))
            if row == 1:
                ax.set_xlabel("forgetting spread")
        norm_eps = "corrupted" if measure == "absolute" else \
            next(f"PGD {n} ε={float(e):g}" for n in ds["adversarial_accuracy"].norm.values
                 for e in ds["adversarial_accuracy"].eps.values if adversarial_measure(str(n), float(e)) == measure)
        axes[0, col].set_ylabel(f"{norm_eps}\naccuracy" if col == 0 else norm_eps, fontsize=6.5)
        axes[1, col].set_ylabel("/ clean accuracy", fontsize=6.5)
    _legend(fig, _init_handles(ds) + [Line2D([], [], color="black", lw=1, label="least-squares fit")])
    return fig


@_styled
def axis_architectures(ds: xr.Dataset, options: Mapping[str, Any]) -> plt.Figure:
    """Open question 4: learning (top) and forgetting (bottom) at the last scored epoch against
    relative depth (layer / the model's depth), a column per architecture side by side, a line per
    init (and other settings), the mean over seeds with its 95 % interval over seeds; an open marker
    where the layer is not converged (convergence check). Where other settings vary too, the runs
    with the settings every architecture ran are drawn."""
    if "model" not in ds.coords or len(set(map(str, ds["model"].values))) < 2:
        return _not_varied("the architecture (model)")
    from .findings import _settings_note, architecture_groups, own_layers

    models = list(dict.fromkeys(map(str, ds["model"].values)))
    fig, axes = plt.subplots(2, len(models), squeeze=False, sharex=True, sharey="row", layout="constrained",
                             figsize=(min(TEXT_WIDTH, 2.0 * len(models) + 0.7), 3.9))

    by_model = architecture_groups(ds)
    handles = {}
    any_unconverged = False
    for col, model in enumerate(models):
        groups = by_model[model]
        for row, measure in enumerate(("learning", "forgetting")):
            ax = axes[row, col]
            count: dict[str, int] = {}
            for (target, task, init, key), runs in groups.items():
                k = count[init] = count.get(init, -1) + 1
                color, ls = INIT_COLOR.get(init, OTHER_COLOR), LINESTYLES[k % len(LINESTYLES)]
                layers = own_layers(ds, runs[0])
                depth = ds["relative_depth"].sel(run=runs[0], layer=layers).values
                last = [ds[measure].sel(run=r, epoch=_last_scored(ds, r), layer=layers).values for r in runs
                        if _last_scored(ds, r) is not None]
                if not last:
                    continue
                line, low, high = seed_interval(np.stack(last)) if len(last) > 1 else (last[0], None, None)
                other = {c: v for c, v in key if c != "model"}
                label = ("from scratch" if init == "scratch" else init) + (
                    f", {target}" if len(_groups(ds)) > 1 else "") + (f" ({_settings_note(tuple(other.items()))})"
                                                                       if other else "")
                ax.plot(depth, line, ls=ls, marker="o", color=color, label=label)
                mask = np.any([_unconverged(ds, r, layers) for r in runs], axis=0)
                any_unconverged |= _mark_unconverged(ax, depth, line, mask, color)
                if low is not None and np.isfinite(low).any():
                    ax.fill_between(depth, low, high, color=color, alpha=0.2, lw=0)
                handles.setdefault(label, Line2D([], [], color=color, ls=ls, marker="o", label=label))
            ax.grid(alpha=0.25, lw=0.5)
            ax.set_xlim(0, 1.05)
            if row == 0:
                runs = [r for rs in groups.values() for r in rs]
                ax.set_title(f"{model}\n{_run_attr(ds, runs[0], 'architecture')} "
                             f"({int(ds['depth'].sel(run=runs[0]))} {_run_attr(ds, runs[0], 'layer_kind')}s)",
                             fontsize=7)
            else:
                ax.set_xlabel("relative depth (layer / depth)")
    axes[0, 0].set_ylabel(f"Learning\n{FORMULA['learning']}")
    axes[1, 0].set_ylabel(f"Forgetting\n{FORMULA['forgetting']}")
    _legend(fig, list(handles.values()) + ([_unconverged_handle()] if any_unconverged else []))
    return fig


FIGURES: dict[str, Callable[[xr.Dataset, Mapping[str, Any]], plt.Figure]] = {
    name: globals()[name] for name in FIGURE_NAMES}


# no creation dates: the same summary gives byte-identical PDF and SVG files
_METADATA = {"pdf": {"Creator": "stirflow", "CreationDate": None}, "svg": {"Date": None}}


def draw_all(ds: xr.Dataset, directory: str | Path, options: Mapping[str, Any],
             names: Sequence[str] | None = None, processes: int = 1) -> list[Path]:
    """Draw every figure of :data:`FIGURES` (or those in ``names``) into ``directory`` in each of
    ``options["formats"]`` (PNG at ``options["dpi"]``; PDF and SVG as vector graphics).

    ``processes`` > 1 draws the figures in that many forked processes (layout and rendering are
    single-threaded: the figures of a large summary take a minute in one); the files are the same.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    chosen = [name for name in FIGURES if names is None or name in names]
    if processes > 1 and len(chosen) > 1:
        import multiprocessing

        # forked: the workers inherit ds and the loaded modules instead of unpickling and importing them
        with multiprocessing.get_context("fork").Pool(min(processes, len(chosen))) as pool:
            parts = pool.map(functools.partial(_draw_one, ds, directory, options), chosen, chunksize=1)
        return [path for part in parts for path in part]
    return [path for name in chosen for path in _draw_one(ds, directory, options, name)]


def _draw_one(ds: xr.Dataset, directory: Path, options: Mapping[str, Any], name: str) -> list[Path]:
    """Draw figure ``name`` and save it in each of ``options["formats"]``: the paths written."""
    fig = FIGURES[name](ds, options)
    written = []
    try:
        for ext in options.get("formats", ["png", "pdf"]):
            path = directory / f"{name}.{ext}"
            with plt.rc_context(STYLE):
                fig.savefig(path, dpi=options.get("dpi", 150), bbox_inches="tight", pad_inches=0.03,
                            metadata=_METADATA.get(ext))
            written.append(path)
    finally:
        plt.close(fig)
    return written
