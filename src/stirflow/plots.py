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

@_styled
def learning_forgetting(ds: xr.Dataset, options: Mapping[str, Any]) -> plt.Figure:
    """Learning (top) and forgetting (bottom) against block, a column per target (and task), pretrained
    against from scratch: the line is the last scored epoch, the band the range over epochs ≥ 1 (and
    over runs, where several runs share target, task and initialisation)."""
    groups = _groups(ds)
    n = len(groups)
    fig, axes = plt.subplots(2, n, figsize=(min(TEXT_WIDTH, max(3.4, 2.3 * n + 0.6)), 3.9), squeeze=False,
                             sharex=True, sharey="row", layout="constrained")
    layers = ds.layer.values
    top = {}
    for row, measure in enumerate(("learning", "forgetting")):
        top[measure] = 0.0
        for col, (target, task) in enumerate(groups):
            ax = axes[row, col]
            runs = _runs_of(ds, target, task)
            for init in dict.fromkeys(_run_attr(ds, r, "init") for r in runs):
                members = [r for r in runs if _run_attr(ds, r, "init") == init]
                color = INIT_COLOR.get(init, OTHER_COLOR)
                lasts, spans = [], []
                for r in members:
                    last = _last_scored(ds, r)
                    if last is None:
                        continue
                    lasts.append(ds[measure].sel(run=r, epoch=last).values)
                    later = [e for e in _scored_epochs(ds, r) if e >= 1]
                    if later:
                        spans.append(ds[measure].sel(run=r, epoch=later).values)
                if not lasts:
                    continue
                line = np.nanmean(lasts, axis=0)
                ax.plot(layers, line, "-", marker="o", color=color)
                if spans:
                    span = np.concatenate(spans, axis=0)
                    lo, hi = np.nanmin(span, axis=0), np.nanmax(span, axis=0)
                    ax.fill_between(layers, lo, hi, color=color, alpha=0.2, lw=0)
                    top[measure] = max(top[measure], float(np.nanmax(hi)))
                top[measure] = max(top[measure], float(np.nanmax(line)))
            if row == 0:
                ax.set_title(_group_title(target, task), fontsize=7 if n > 3 else 8)
            if row == 1:
                ax.set_xlabel("block")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(len(layers), 12 if n <= 2 else 6)))
            ax.grid(alpha=0.25, lw=0.5)
        axes[row, 0].set_ylabel(f"{measure.capitalize()}\n{FORMULA[measure]}")
        axes[row, 0].set_ylim(0, min(1.0, max(0.05, 1.1 * top[measure])))
    epochs = [e for e in _scored_epochs(ds) if e >= 1]
    band = Patch(color="0.5", alpha=0.3, lw=0,
                 label=f"range over epochs {epochs[0]}–{epochs[-1]}" if epochs else "range over epochs")
    last = _last_scored(ds)
    handles = [Line2D([], [], color=h.get_color(), marker="o", label=f"{h.get_label()}, epoch {last}")
               for h in _init_handles(ds)] + [band]
    _legend(fig, handles)
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


def _fit_line(ax, x: np.ndarray, y: np.ndarray) -> None:
    if len(x) >= 2 and np.ptp(x) > 0:
        slope, icpt = np.polyfit(x, y, 1)
        grid = np.linspace(x.min(), x.max(), 20)
        ax.plot(grid, slope * grid + icpt, "-", color="black", lw=1, zorder=1)


def _corr_text(ds: xr.Dataset, task: str, scope: str, x: np.ndarray, y: np.ndarray) -> str:
    def get(key):
        name = f"corr_{key}"
        if name in ds and "task_kind" in ds[name].dims and task in ds.task_kind.values and scope in ds.scope.values:
            return float(ds[name].sel(task_kind=task, scope=scope))
        return np.nan

    if not np.isfinite(get("pearson_r")) and len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
        from scipy.stats import rankdata  # a Dataset without the correlation table: r and ρ alone

        c = {"pearson_r": np.corrcoef(x, y)[0, 1], "spearman_r": np.corrcoef(rankdata(x), rankdata(y))[0, 1]}
        get = lambda key: c.get(key, np.nan)  # noqa: E731
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
    return "\n".join(lines)


@_styled
def spread_vs_robustness(ds: xr.Dataset, options: Mapping[str, Any]) -> plt.Figure:
    """Forgetting spread against robustness, every run × scored epoch ≥ 1, a row per task kind and a
    column per scope (all epochs, then the first k), with a least-squares line, r and ρ (bootstrap 95%
    interval, permutation p). Robustness is oriented so that up is more robust for every task."""
    scopes = [str(s) for s in ds.scope.values] if "scope" in ds.coords else ["all"]
    tasks = list(dict.fromkeys(map(str, ds["task"].values)))
    styles = _run_styles(ds)
    oriented = _oriented(ds)
    fig, axes = plt.subplots(len(tasks), len(scopes), figsize=(min(TEXT_WIDTH, 2.35 * len(scopes) + 0.5),
                                                               2.5 * len(tasks) + 0.5),
                             squeeze=False, layout="constrained")
    for row, task in enumerate(tasks):
        for col, scope in enumerate(scopes):
            ax = axes[row, col]
            limit = None if scope == "all" else int(scope.rsplit("_", 1)[1])
            epochs = [int(e) for e in ds.epoch.values if e >= 1 and (limit is None or e <= limit)]
            xs, ys = [], []
            for run in ds.run.values:
                if _run_attr(ds, run, "task") != task:
                    continue
                x = ds["forgetting_spread"].sel(run=run, epoch=epochs).values
                y = oriented.sel(run=run, epoch=epochs).values
                ok = np.isfinite(x) & np.isfinite(y)
                st = styles[str(run)]
                ax.plot(x[ok], y[ok], ls=st["ls"], lw=0.6, color=st["color"], alpha=0.5, zorder=2)
                ax.scatter(x[ok], y[ok], s=14, color=st["color"], marker=st["marker"], zorder=3,
                           edgecolors="white", linewidths=0.3)
                xs.extend(x[ok])
                ys.extend(y[ok])
            xs, ys = np.asarray(xs), np.asarray(ys)
            _fit_line(ax, xs, ys)
            span = f"epochs {epochs[0]}–{epochs[-1]}" if epochs else "no epochs"
            head = f"{span} ({'all' if limit is None else f'first {limit}'}), n = {len(xs)}"
            ax.set_title(head + "\n" + _corr_text(ds, task, scope, xs, ys), fontsize=6.5, loc="left")
            ax.grid(alpha=0.25, lw=0.5)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
            if row == len(tasks) - 1:
                ax.set_xlabel("forgetting spread\n(std over blocks of Forgetting)")
        axes[row, 0].set_ylabel("robustness\n" + ("mean corrupted accuracy" if _is_cls(task)
                                                  else "− mean corrupted L1 error") + ("" if len(tasks) == 1
                                                                                        else f"\n[{task}]"))
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
        for c in corruptions:
            top.plot(ds.epoch, sub["corrupted_score"].sel(corruption=c).mean("severity"), color=colors[c], lw=1)
        top.plot(ds.epoch, sub["clean_score"], color="black", lw=1.8)
        top.plot(ds.epoch, sub["robustness"], color="black", lw=1.4, ls="--")
        valid = [int(e) for e in ds.epoch.values if np.isfinite(sub["corrupted_score"].sel(epoch=e).values).any()]
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


FIGURES: dict[str, Callable[[xr.Dataset, Mapping[str, Any]], plt.Figure]] = {
    name: globals()[name] for name in FIGURE_NAMES}


# no creation dates: the same summary gives byte-identical PDF and SVG files
_METADATA = {"pdf": {"Creator": "stirflow", "CreationDate": None}, "svg": {"Date": None}}


def draw_all(ds: xr.Dataset, directory: str | Path, options: Mapping[str, Any]) -> list[Path]:
    """Draw every figure of :data:`FIGURES` into ``directory`` in each of ``options["formats"]``
    (PNG at ``options["dpi"]``; PDF and SVG as vector graphics)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in FIGURES.items():
        fig = draw(ds, options)
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
