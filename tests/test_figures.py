"""Every figure on a synthetic summary with several runs, targets and tasks (one a reconstruction
run) and epochs without STIR scores: drawn, legible at paper size, written as PNG and PDF."""

from __future__ import annotations

import matplotlib.colors as mcolors
import numpy as np
import pytest
from matplotlib.text import Text

from stirflow.plots import FIGURES, INIT_COLOR, STYLE, draw_all

from conftest import SMOKE_CONFIG
from test_analysis import RUNS, synthetic_summary

MIN_FONT_PT = 5.5  # the smallest text (values written in matrix cells); labels are 7-8 pt


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    return synthetic_summary(tmp_path_factory.mktemp("synthetic"))


def _texts(fig) -> list[Text]:
    """The text drawn on the figure: titles, axis and tick labels, legends, annotations, colour bar labels."""
    fig.canvas.draw()
    texts = list(fig.texts)
    for legend in fig.legends:
        texts += legend.get_texts()
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax._right_title, *ax.texts]
        if ax.get_legend() is not None:
            texts += ax.get_legend().get_texts()
        for axis in (ax.xaxis, ax.yaxis) if ax.axison else ():  # an axes drawn without its axes has no ticks
            texts += [axis.label, axis.offsetText]
            for tick in axis._update_ticks():  # the ticks inside the view, those that are drawn
                texts += [label for label in (tick.label1, tick.label2) if label.get_visible()]
    return [t for t in texts if t.get_visible() and t.get_text().strip()]


def _overlaps(fig) -> list[tuple[str, str]]:
    """Pairs of text boxes that overlap, leaving out values written inside matrix cells."""
    renderer = fig.canvas.get_renderer()
    boxes = []
    for t in _texts(fig):
        if t.get_fontsize() <= MIN_FONT_PT + 0.01 and t.axes is not None:  # cell values: inside their cell
            continue
        bb = t.get_window_extent(renderer)
        if bb.width > 0 and bb.height > 0:
            boxes.append((t.get_text(), bb.shrunk(0.97, 0.9)))  # touching is not overlapping
    return [(a, b) for k, (a, ba) in enumerate(boxes) for b, bb in boxes[k + 1:] if ba.overlaps(bb)]


@pytest.mark.parametrize("name", list(FIGURES))
def test_figure_is_legible(summary, name):
    import matplotlib.pyplot as plt

    fig = FIGURES[name](summary, {"epochs": [2], "cmap": "viridis"})
    try:
        width, height = fig.get_size_inches()
        assert width <= 7.5, f"{name}: {width:.1f} in wide, more than a paper's text width"
        sizes = [t.get_fontsize() for t in _texts(fig)]
        assert sizes and min(sizes) >= MIN_FONT_PT, (name, min(sizes))
        assert not _overlaps(fig), _overlaps(fig)
        # every colour bar is labelled
        for ax in fig.axes:
            if ax.get_label() == "<colorbar>":
                assert ax.get_ylabel() or ax.get_xlabel(), f"{name}: unlabelled colour bar"
    finally:
        plt.close(fig)


def _paper_like(summary):
    """Twice the runs, six target × task panels: the layouts that grow with runs and targets."""
    import xarray as xr

    from stirflow.analysis import summarise

    from test_analysis import ANALYSIS

    base = summary.drop_dims(["task_kind", "scope"]).drop_vars(
        ["indicator_direction", "indicator_epoch", "best_robustness_epoch", "indicator_robustness", "best_robustness"])
    other = base.assign_coords(run=[f"{r}-seed1" for r in base.run.values],
                               target=("run", [{"digits": "cifar100", "pets": "oxford_pets"}[str(t)]
                                               for t in base["target"].values]))
    return summarise(xr.concat([base, other], dim="run"), ANALYSIS)


@pytest.mark.parametrize("name", ["learning_forgetting", "spread_vs_robustness", "training_curves",
                                  "robustness_per_corruption"])
def test_wide_figures_stay_legible_with_many_runs(summary, name):
    import matplotlib.pyplot as plt

    ds = _paper_like(summary)
    assert len(ds.run) == 8
    fig = FIGURES[name](ds, {})
    try:
        assert fig.get_size_inches()[0] <= 7.5, name
        assert not _overlaps(fig), _overlaps(fig)
    finally:
        plt.close(fig)


@pytest.mark.parametrize("name", ["learning_forgetting", "spread_vs_robustness", "training_curves"])
def test_init_colours_are_the_same_everywhere(summary, name):
    """Lines and points of runs carry their initialisation's colour (black and greys are annotations)."""
    import matplotlib.pyplot as plt

    fig = FIGURES[name](summary, {})
    try:
        allowed = {mcolors.to_hex(c) for c in INIT_COLOR.values()}
        used = set()
        for ax in fig.axes:
            for line in ax.get_lines():
                used.add(mcolors.to_hex(line.get_color()))
            for coll in ax.collections:
                used.update(mcolors.to_hex(c) for c in coll.get_facecolors())
        greys = {c for c in used if len({c[1:3], c[3:5], c[5:7]}) == 1}
        assert used - greys <= allowed, used - greys - allowed
        assert allowed <= used  # both pretrained and scratch runs are drawn
    finally:
        plt.close(fig)


@pytest.mark.slow
def test_the_smoke_run_draws_every_figure_in_png_and_pdf(smoke_run):
    """The figures rule's own output (configs/smoke.yaml asks for both formats), not a second drawing."""
    import yaml

    from stirflow.config import figure_names, validate_config

    names = figure_names(validate_config(yaml.safe_load(SMOKE_CONFIG.read_text())))
    assert "axis_adversarial" in names and "axis_train_fraction" not in names  # the axes smoke varies
    written = sorted((smoke_run / "results" / "figures").iterdir())
    assert sorted(p.name for p in written) == sorted(f"{n}.{e}" for n in names for e in ("png", "pdf"))
    for path in written:
        head = path.read_bytes()[:8]
        assert head.startswith(b"\x89PNG" if path.suffix == ".png" else b"%PDF"), path
        assert path.stat().st_size > 5000, path


def test_same_summary_same_files(summary, tmp_path, monkeypatch):
    """No creation date or other varying metadata: redrawing gives the same bytes."""
    from stirflow import plots

    monkeypatch.setattr(plots, "FIGURES", {"training_curves": plots.training_curves})
    options = {"formats": ["png", "pdf"], "dpi": 60}
    first, again = draw_all(summary, tmp_path / "a", options), draw_all(summary, tmp_path / "b", options)
    for a, b in zip(first, again):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_figures_drawn_in_processes_are_the_same_files(summary, tmp_path):
    names = ["training_curves", "flow_matrices", "learning_forgetting"]
    options = {"formats": ["png", "pdf"], "dpi": 60}
    serial = draw_all(summary, tmp_path / "serial", options, names)
    forked = draw_all(summary, tmp_path / "forked", options, names, processes=2)
    assert [p.name for p in forked] == [p.name for p in serial] and len(serial) == 2 * len(names)
    for a, b in zip(serial, forked):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_figures_without_correlation_table_or_reference(tmp_path):
    """A Dataset straight from aggregate (no correlations, no relative error), one run: still drawn."""
    from stirflow.analysis import aggregate

    from test_analysis import synthetic_truth, write_synthetic_files

    files = write_synthetic_files(tmp_path, synthetic_truth())
    ds = aggregate(RUNS, *files).isel(run=[0])
    ds = ds.drop_vars([v for v in ds.data_vars if v == "robustness_oriented"])
    import matplotlib.pyplot as plt

    for name, draw in FIGURES.items():
        fig = draw(ds, {})
        plt.close(fig)
    assert STYLE["pdf.fonttype"] == 42
    assert np.isfinite(ds["forgetting_spread"].sel(epoch=2)).all()
