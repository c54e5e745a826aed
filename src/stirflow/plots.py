"""Figures, drawn from ``summary.nc`` alone. One function per figure; each takes the Dataset and
returns a matplotlib Figure. :data:`FIGURES` maps file stems to those functions."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

__all__ = ["FIGURES", "draw_all"]

INIT_STYLE = {"pretrained": "-", "scratch": "--"}
MEASURE_COLOR = {"learning": "tab:blue", "forgetting": "tab:red"}


def _scored_epochs(ds: xr.Dataset) -> list[int]:
    return [int(e) for e in ds.epoch.values if np.isfinite(ds["forgetting"].sel(epoch=e).values).any()]


def _last_scored(ds: xr.Dataset) -> int:
    return _scored_epochs(ds)[-1]


def learning_forgetting(ds: xr.Dataset, options: Mapping[str, Any]) -> plt.Figure:
    """Learning and forgetting against layer, pretrained vs scratch, a panel per target and task."""
    groups = sorted({(str(t), str(k)) for t, k in zip(ds["target"].values, ds["task"].values)})
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.4), squeeze=False, sharey=True)
    last = _last_scored(ds)
    later = [e for e in _scored_epochs(ds) if e >= 1]
    for ax, (target, task) in zip(axes[0], groups):
        for run in ds.run.values:
            if str(ds["target"].sel(run=run).values) != target or str(ds["task"].sel(run=run).values) != task:
                continue
            init = str(ds["init"].sel(run=run).values)
            for measure in ("learning", "forgetting"):
                da = ds[measure].sel(run=run)
                ax.plot(ds.layer, da.sel(epoch=last), INIT_STYLE.get(init, "-"), marker="o", ms=3,
                        color=MEASURE_COLOR[measure], label=f"{measure}, {init}")
                if later:  # shaded: the range over all scored epochs after the start
                    span = da.sel(epoch=later)
                    ax.fill_between(ds.layer, span.min("epoch"), span.max("epoch"), color=MEASURE_COLOR[measure],
                                    alpha=0.12 if init == "pretrained" else 0.06, lw=0)
        ax.set_title(f"{target} ({task})" if task != "classification" else target)
        ax.set_xlabel("block")
        ax.set_xticks(ds.layer.values)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel(f"1 − STIR at epoch {last}")
    axes[0, -1].legend(fontsize=7, loc="upper left")
    fig.suptitle("Learning and forgetting per block (line: last epoch; band: range over epochs)", fontsize=10)
    fig.tight_layout()
    return fig


def _matrix(ax, values: np.ndarray, blocks: Sequence[int], title: str, cmap: str):
    im = ax.imshow(values, vmin=0, vmax=1, cmap=cmap, origin="lower")
    ax.set_xticks(range(len(blocks)), blocks)
    ax.set_yticks(range(len(blocks)), blocks)
    ax.set_title(title, fontsize=8)
    return im


def flow_matrices(ds: xr.Dataset, options: Mapping[str, Any]) -> plt.Figure:
    """Per run and chosen epoch: STIR(f_j | p_i), STIR(p_j | f_i) and CKA(p_i, f_j) on one 0–1 scale."""
    scored = _scored_epochs(ds)
    epochs = sorted({e for e in options.get("epochs", []) if e in scored} | {scored[-1]})
    rows = [(run, e) for run in ds.run.values for e in epochs]
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 2.9 * len(rows)), squeeze=False)
    cmap = options.get("cmap", "viridis")
    blocks = ds.layer_ref.values
    im = None
    for (run, epoch), ax_row in zip(rows, axes):
        sel = ds.sel(run=run, epoch=epoch)
        im = _matrix(ax_row[0], sel["flow"].values, blocks, f"{run}, epoch {epoch}\nSTIR(finetuned j | pretrained i)", cmap)
        _matrix(ax_row[1], sel["flow_reverse"].values, blocks, "STIR(pretrained j | finetuned i)", cmap)
        _matrix(ax_row[2], sel["cka"].values, blocks, "CKA(pretrained i, finetuned j)", cmap)
        for ax in ax_row:
            ax.set_xlabel("block j (evaluated)")
        ax_row[0].set_ylabel("block i (reference)")
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    cax = fig.add_axes((0.92, 0.15, 0.02, 0.7))
    fig.colorbar(im, cax=cax, label="similarity (0–1)")
    return fig


def spread_vs_robustness(ds: xr.Dataset, options: Mapping[str, Any]) -> plt.Figure:
    """Forgetting spread against robustness, every run × scored epoch ≥ 1, with a least-squares fit and r."""
    scopes = list(ds.scope.values) if "scope" in ds.coords else ["all"]
    task = "classification" if "classification" in ds["task"].values else str(ds["task"].values[0])
    fig, axes = plt.subplots(1, len(scopes), figsize=(4 * len(scopes), 3.5), squeeze=False)
    for ax, scope in zip(axes[0], scopes):
        limit = None if scope == "all" else int(str(scope).split("_")[1])
        xs, ys = [], []
        for run in ds.run.values:
            if str(ds["task"].sel(run=run).values) != task:
                continue
            sub = ds.sel(run=run)
            epochs = [e for e in sub.epoch.values if e >= 1 and (limit is None or e <= limit)]
            x = sub["forgetting_spread"].sel(epoch=epochs).values
            y = sub["robustness"].sel(epoch=epochs).values
            ok = np.isfinite(x) & np.isfinite(y)
            ax.scatter(x[ok], y[ok], s=18, label=str(run))
            xs.extend(x[ok])
            ys.extend(y[ok])
        if len(xs) >= 2 and np.std(xs) > 0:
            slope, icpt = np.polyfit(xs, ys, 1)
            grid = np.linspace(min(xs), max(xs), 20)
            ax.plot(grid, slope * grid + icpt, "k-", lw=1)
        r = ds["corr_pearson_r"].sel(task_kind=task, scope=scope).item() if "corr_pearson_r" in ds else np.nan
        rho = ds["corr_spearman_r"].sel(task_kind=task, scope=scope).item() if "corr_spearman_r" in ds else np.nan
        ax.set_title(f"{'all epochs' if limit is None else f'epochs 1–{limit}'}: Pearson r = {r:.2f}, Spearman ρ = {rho:.2f}",
                     fontsize=8)
        ax.set_xlabel("forgetting spread (std over blocks)")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("robustness (mean corrupted accuracy)" if task == "classification" else "corrupted L1 error")
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def stir_over_epochs(ds: xr.Dataset, options: Mapping[str, Any]) -> plt.Figure:
    """Layer × epoch heatmaps of learning and forgetting for every run."""
    epochs = _scored_epochs(ds)
    fig, axes = plt.subplots(len(ds.run), 2, figsize=(9, 2.4 * len(ds.run)), squeeze=False)
    im = None
    for ax_row, run in zip(axes, ds.run.values):
        for ax, measure in zip(ax_row, ("learning", "forgetting")):
            values = ds[measure].sel(run=run, epoch=epochs).values.T  # (layer, epoch)
            im = ax.imshow(values, vmin=0, vmax=1, aspect="auto", cmap=options.get("cmap", "viridis"), origin="lower")
            ax.set_xticks(range(len(epochs)), epochs, fontsize=7)
            ax.set_yticks(range(len(ds.layer)), ds.layer.values)
            ax.set_title(f"{run}: {measure}", fontsize=9)
            ax.set_xlabel("epoch")
            ax.set_ylabel("block")
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    fig.colorbar(im, cax=fig.add_axes((0.92, 0.15, 0.02, 0.7)), label="1 − STIR")
    return fig


def within_model(ds: xr.Dataset, options: Mapping[str, Any]) -> plt.Figure:
    """STIR between blocks of one model: before finetuning and at the last epoch, per run."""
    last = _last_scored(ds)
    fig, axes = plt.subplots(len(ds.run), 2, figsize=(6.4, 2.9 * len(ds.run)), squeeze=False)
    im = None
    for ax_row, run in zip(axes, ds.run.values):
        sel = ds.sel(run=run, epoch=last)
        im = _matrix(ax_row[0], sel["within_ref"].values, ds.layer_ref.values,
                     f"{run}: before finetuning\nSTIR(block j | block i)", options.get("cmap", "viridis"))
        _matrix(ax_row[1], sel["within_eval"].values, ds.layer_ref.values, f"epoch {last}", options.get("cmap", "viridis"))
        for ax in ax_row:
            ax.set_xlabel("block j")
        ax_row[0].set_ylabel("block i (inverted)")
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    fig.colorbar(im, cax=fig.add_axes((0.9, 0.15, 0.025, 0.7)), label="STIR")
    return fig


def training_curves(ds: xr.Dataset, options: Mapping[str, Any]) -> plt.Figure:
    """Train and test loss, and test accuracy (or L1 error), against epoch for every run."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for k, run in enumerate(ds.run.values):
        color = f"C{k}"
        sub = ds.sel(run=run)
        for key, style in (("train_loss", "--"), ("test_loss", "-")):
            if key in ds:
                axes[0].plot(ds.epoch, sub[key], style, color=color, label=f"{run} {key.split('_')[0]}")
        score = "test_accuracy" if str(sub["task"].values) == "classification" else "test_l1_error"
        if score in ds:
            axes[1].plot(ds.epoch, sub[score], "-", marker="o", ms=3, color=color, label=f"{run}")
    axes[0].set(xlabel="epoch", ylabel="loss", title="loss (dashed: train, solid: test)")
    axes[1].set(xlabel="epoch", ylabel="test accuracy / L1 error", title="test score")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def robustness_per_corruption(ds: xr.Dataset, options: Mapping[str, Any]) -> plt.Figure:
    """Per run: clean score and each corruption's score (mean over severities) against epoch."""
    fig, axes = plt.subplots(1, len(ds.run), figsize=(4.2 * len(ds.run), 3.4), squeeze=False, sharey=True)
    for ax, run in zip(axes[0], ds.run.values):
        sub = ds.sel(run=run)
        ax.plot(ds.epoch, sub["clean_score"], "k-", lw=2, label="clean")
        for k, c in enumerate(ds.corruption.values):
            ax.plot(ds.epoch, sub["corrupted_score"].sel(corruption=c).mean("severity"), color=plt.cm.tab20(k % 20),
                    lw=1, label=str(c))
        ax.set_title(str(run), fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("accuracy (mean over severities)")
    axes[0, -1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


FIGURES: dict[str, Callable[[xr.Dataset, Mapping[str, Any]], plt.Figure]] = {
    "learning_forgetting": learning_forgetting,
    "flow_matrices": flow_matrices,
    "spread_vs_robustness": spread_vs_robustness,
    "stir_over_epochs": stir_over_epochs,
    "within_model": within_model,
    "training_curves": training_curves,
    "robustness_per_corruption": robustness_per_corruption,
}


def draw_all(ds: xr.Dataset, directory: str | Path, options: Mapping[str, Any]) -> list[Path]:
    """Draw every figure of :data:`FIGURES` into ``directory`` in each of ``options["formats"]``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    plt.rcParams.update({"font.size": 9, "axes.titlesize": 9})
    for name, draw in FIGURES.items():
        fig = draw(ds, options)
        for ext in options.get("formats", ["png"]):
            path = directory / f"{name}.{ext}"
            fig.savefig(path, dpi=options.get("dpi", 150), bbox_inches="tight")
            written.append(path)
        plt.close(fig)
    return written
