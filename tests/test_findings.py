"""The findings table on summaries built to satisfy and to violate each finding: the verdict must flip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from stirflow.analysis import correlation_table
from stirflow.findings import findings_dataset, findings_table, format_markdown, summary_html, verdict

EPOCHS = list(range(6))
LAYERS = [1, 2, 3, 4]


def summary(*, f1_gap: float, compression: float, spread_slope: float, seeds=(0, 1, 2), boot: bool = False,
            tasks=("classification",), noise: float = 0.002) -> xr.Dataset:
    """Runs (pretrained and scratch, each seed, each task) whose early-block learning and forgetting
    differ by ``f1_gap`` (scratch minus pretrained), whose compression index is ``compression`` at
    every epoch ≥ 1, and whose robustness follows the forgetting spread with ``spread_slope``."""
    rng = np.random.default_rng(0)
    runs, coords = [], {k: [] for k in ("target", "init", "task", "seed", "condition")}
    for task in tasks:
        for init in ("pretrained", "scratch"):
            for seed in seeds:
                condition = f"digits{'-recon' if task != 'classification' else ''}-{init}"
                runs.append(condition + (f"-s{seed}" if seed else ""))
                for k, v in zip(coords, ("digits", init, task, seed, condition)):
                    coords[k].append(v)
    n_r, n_e, n_l = len(runs), len(EPOCHS), len(LAYERS)
    t = np.array(EPOCHS, float) / EPOCHS[-1]
    base = 0.05 + 0.1 * t[:, None] * np.array(LAYERS)[None] / n_l  # (epoch, layer)
    learning = np.empty((n_r, n_e, n_l))
    for r in range(n_r):
        gap = f1_gap if coords["init"][r] == "scratch" else 0.0
        learning[r] = base + gap * t[:, None] + noise * rng.normal(size=(n_e, n_l))
    learning[:, 0] = 0.001
    forgetting = learning * 0.9
    spread = forgetting.std(axis=2)
    clean = 0.5 + 0.3 * t[None] + 0.01 * rng.normal(size=(n_r, n_e))
    robustness = 0.3 + spread_slope * spread + 0.005 * rng.normal(size=(n_r, n_e))
    comp = np.full((n_r, n_e), compression) + noise * rng.normal(size=(n_r, n_e))
    comp[:, 0] = 0.0
    ds = xr.Dataset(
        {"learning": (("run", "epoch", "layer"), learning), "forgetting": (("run", "epoch", "layer"), forgetting),
         "forgetting_spread": (("run", "epoch"), spread), "compression": (("run", "epoch"), comp),
         "robustness": (("run", "epoch"), robustness), "robustness_oriented": (("run", "epoch"), robustness),
         "robustness_relative": (("run", "epoch"), robustness / clean), "clean_score": (("run", "epoch"), clean)},
        coords={"run": runs, "epoch": EPOCHS, "layer": LAYERS, **{k: ("run", v) for k, v in coords.items()}})
    if boot:
        resamples = 200
        ds["learning_boot"] = ds["learning"].expand_dims(resample=resamples).copy(
            data=learning[None] + 0.003 * rng.normal(size=(resamples, n_r, n_e, n_l)))
        ds["forgetting_boot"] = ds["learning_boot"] * 0.9
        ds["compression_boot"] = ds["compression"].expand_dims(resample=resamples).copy(
            data=comp[None] + 0.003 * rng.normal(size=(resamples, n_r, n_e)))
    corr = correlation_table(ds, [2], bootstrap=300, permutations=100)
    return xr.merge([ds, corr], compat="override", join="outer")


def rows(table: pd.DataFrame, finding: str, **where) -> pd.DataFrame:
    sel = table[table["finding"] == finding]
    for k, v in where.items():
        sel = sel[sel[k] == v]
    assert len(sel), (finding, where, table[["finding", "target", "task", "init"]])
    return sel


def test_verdict_rule():
    assert verdict(0.01, 0.2) == "reproduced"
    assert verdict(-0.2, -0.01) == "not reproduced"
    assert verdict(-0.1, 0.1) == "inconclusive"
    assert verdict(np.nan, np.nan) == "inconclusive"


@pytest.mark.parametrize("gap, expected", [(0.1, "reproduced"), (-0.1, "not reproduced"), (0.0, "inconclusive")])
def test_f1_verdict_follows_the_scratch_minus_pretrained_gap(gap, expected):
    table = findings_table(summary(f1_gap=gap, compression=0.0, spread_slope=1.0), bootstrap=500)
    f1 = rows(table, "F1")
    assert len(f1) == 4  # learning, forgetting x last epoch, mean over epochs
    assert set(f1["interval"]) == {"seeds"} and set(f1["n"]) == {"3 + 3"}
    assert set(f1["verdict"]) == {expected}, f1[["statistic", "value", "ci_low", "ci_high", "verdict"]]
    last = f1[f1["statistic"].str.contains("learning") & f1["statistic"].str.contains("last epoch")]
    assert "blocks 1-2" in last["statistic"].item()  # the first half of four blocks
    assert float(last["value"].item()) == pytest.approx(gap, abs=0.01)


@pytest.mark.parametrize("compression, expected", [(0.05, "reproduced"), (-0.05, "not reproduced")])
def test_f2_verdict_follows_the_compression_index(compression, expected):
    table = findings_table(summary(f1_gap=0.1, compression=compression, spread_slope=1.0), bootstrap=500)
    f2 = rows(table, "F2", init="pretrained")
    assert f2["verdict"].item() == expected and f2["value"].item() == pytest.approx(compression, abs=0.01)
    assert rows(table, "F2 (scratch, for comparison)", init="scratch")["verdict"].item() == expected
    # no reconstruction run here: the row that says F2 cannot be tested where the paper sees it most
    assert rows(table, "F2", task="reconstruction")["verdict"].item() == "not testable"


@pytest.mark.parametrize("slope, expected", [(3.0, "reproduced"), (-3.0, "not reproduced")])
def test_f3_verdict_follows_the_correlation(slope, expected):
    table = findings_table(summary(f1_gap=0.1, compression=0.0, spread_slope=slope), bootstrap=300)
    f3 = rows(table, "F3", task="classification")
    assert f3["verdict"].item() == expected
    assert "within-run r" in f3["note"].item() and "partial r" in f3["note"].item()
    assert len(rows(table, "F3 (relative robustness)")) == 1
    early = rows(table, "F3 (first epochs)")
    assert early["interval"].item() == "runs" and early["n"].item() == "6 runs"


def test_one_seed_takes_its_interval_from_the_image_bootstrap():
    table = findings_table(summary(f1_gap=0.1, compression=0.05, spread_slope=1.0, seeds=(0,), boot=True),
                           bootstrap=300)
    f1 = rows(table, "F1")
    assert all(i.startswith("images") for i in f1["interval"]) and set(f1["verdict"]) == {"reproduced"}
    assert rows(table, "F2", init="pretrained")["interval"].item().startswith("images")
    # without resamples and with one seed there is no interval: inconclusive, never a guess
    bare = findings_table(summary(f1_gap=0.1, compression=0.05, spread_slope=1.0, seeds=(0,)), bootstrap=300)
    assert set(rows(bare, "F1")["verdict"]) == {"inconclusive"} and set(rows(bare, "F1")["interval"]) == {"none"}


def test_untestable_findings_say_why():
    ds = summary(f1_gap=0.1, compression=0.0, spread_slope=1.0)
    only_pretrained = ds.sel(run=[r for r in ds.run.values if "scratch" not in str(r)])
    table = findings_table(only_pretrained, bootstrap=200)
    f1 = rows(table, "F1")
    assert f1["verdict"].item() == "not testable" and "scratch" in f1["note"].item()
    single = findings_table(ds.isel(run=[0]), bootstrap=200)
    assert set(single["verdict"]) == {"not testable"} and single["note"].str.contains("single run").all()


def test_reconstruction_rows_and_outputs():
    ds = summary(f1_gap=0.1, compression=0.05, spread_slope=1.0, tasks=("classification", "reconstruction"))
    table = findings_table(ds, bootstrap=300)
    assert set(rows(table, "F2", init="pretrained")["task"]) == {"classification", "reconstruction"}
    assert set(rows(table, "F3")["task"]) == {"classification", "reconstruction"}
    back = findings_dataset(table)
    assert back.sizes["finding_row"] == len(table)
    np.testing.assert_array_equal(back["finding_verdict"].values, table["verdict"].to_numpy().astype(str))
    md = format_markdown(table)
    assert md.count("\n") == len(table) + 1 and "**reproduced**" in md
    html = summary_html(ds, table)
    assert "<table" in html and "No convergence check was run" in html
