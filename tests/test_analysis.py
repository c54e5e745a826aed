"""The analysis on small synthetic results whose answers can be checked by hand."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from stirflow.analysis import (
    aggregate,
    correlation,
    correlation_table,
    early_stopping_table,
    forgetting_spread,
    relative_error,
    summarise,
    write_tables,
)

RUNS = [
    {"name": "digits-pretrained", "target": "digits", "init": "pretrained", "task": "classification"},
    {"name": "digits-scratch", "target": "digits", "init": "scratch", "task": "classification"},
    {"name": "pets-pretrained", "target": "pets", "init": "pretrained", "task": "classification"},
    {"name": "digits-recon-pretrained", "target": "digits", "init": "pretrained", "task": "reconstruction"},
]
EPOCHS = list(range(7))  # 0..6
STIR_EPOCHS = [0, 1, 2, 4, 6]  # epochs 3 and 5 have no STIR scores: NaN
BLOCKS = [1, 2, 3, 4]
CORRUPTIONS = ["gaussian_noise", "contrast", "fog"]
SEVERITIES = [1, 3]
ANALYSIS = {"first_epochs": [2, 4], "bootstrap": 200, "permutations": 200, "seed": 0}


def synthetic_truth(seed: int = 0) -> dict[str, np.ndarray]:
    """Scores per run × epoch: forgetting rises with depth and epoch; robustness follows the spread."""
    rng = np.random.default_rng(seed)
    n_r, n_e, n_b = len(RUNS), len(EPOCHS), len(BLOCKS)
    depth = np.array(BLOCKS, float) / n_b
    t = np.array(EPOCHS, float) / EPOCHS[-1]
    forgetting = np.zeros((n_r, n_e, n_b))
    for r in range(n_r):
        forgetting[r] = np.clip(t[:, None] * depth[None] * (0.3 + 0.15 * r) + 0.02 * rng.random((n_e, n_b)), 0, 1)
    forgetting[:, 0] = 0.01 * rng.random((n_r, n_b))  # epoch 0: the model against itself
    learning = np.clip(forgetting * 0.8 + 0.05, 0, 1)
    flow = np.clip(0.4 + 0.5 * rng.random((n_r, n_e, n_b, n_b)), 0, 1)
    flow[..., np.arange(n_b), np.arange(n_b)] = 1 - forgetting
    flow_reverse = np.clip(0.4 + 0.5 * rng.random((n_r, n_e, n_b, n_b)), 0, 1)
    flow_reverse[..., np.arange(n_b), np.arange(n_b)] = 1 - learning
    spread = forgetting.std(axis=2)
    accuracy = np.clip(0.3 + 1.5 * spread[..., None, None] - 0.08 * np.arange(1, 4)[:, None] * np.array(SEVERITIES)
                       / 3 + 0.01 * rng.random((n_r, n_e, len(CORRUPTIONS), len(SEVERITIES))), 0, 1)
    accuracy[:, 0] = 0.1  # untrained head
    l1 = 0.5 - accuracy[3] * 0.4  # reconstruction error: falls as the spread rises
    corrupted = accuracy.copy()
    corrupted[3] = l1
    clean = np.clip(corrupted.mean(axis=(2, 3)) + 0.1, 0, 1)
    clean[3] = corrupted[3].mean(axis=(1, 2)) - 0.05
    return {"forgetting": forgetting, "learning": learning, "flow": flow, "flow_reverse": flow_reverse,
            "cka": np.clip(flow * 0.9, 0, 1), "within_ref": np.clip(flow_reverse * 0.95, 0, 1),
            "within_eval": np.clip(flow * 0.85, 0, 1), "corrupted": corrupted, "clean": clean}


def write_synthetic_files(directory: Path, truth: dict[str, np.ndarray]) -> tuple[list, list, list]:
    """The per-job files the pipeline writes (STIR scores, robustness, history) for :func:`synthetic_truth`."""
    from stirflow.comparison import scores_dataset
    from stirflow.inversion import InversionResult
    from stirflow.robustness import CorruptedSet, save_robustness

    def inversions(loss):  # stand-ins with the losses the summary reads back
        return {b: InversionResult(torch.zeros(2, 3, 2, 2), torch.full((2,), loss * b), torch.ones(2),
                                   torch.full((3, 2), loss * b), [10, 20, 30]) for b in BLOCKS}

    cs = CorruptedSet(np.zeros((1, 2, 2, 3), np.uint8), np.zeros((1,), np.uint8), np.zeros(1, int),
                      CORRUPTIONS, SEVERITIES, {})
    stir_files, rob_files, hist_files = [], [], []
    for r, run in enumerate(RUNS):
        name, cls = run["name"], run["task"] == "classification"
        for e in STIR_EPOCHS:
            path = directory / name / f"stir_{e:03d}.nc"
            path.parent.mkdir(parents=True, exist_ok=True)
            scores = {k: truth[k][r, e] for k in ("forgetting", "learning", "flow", "flow_reverse", "cka",
                                                 "within_ref", "within_eval")}
            ds = scores_dataset(scores, BLOCKS, np.arange(2), inversions(0.01), inversions(0.001 * (e + 1)))
            ds.attrs.update(run=name, epoch=e)
            ds.to_netcdf(path, engine="h5netcdf")
            stir_files.append(str(path))
        for e in EPOCHS:
            path = directory / name / f"robustness_{e:03d}.h5"
            key = "accuracy" if cls else "error"
            save_robustness(path, {f"clean_{key}": truth["clean"][r, e], key: truth["corrupted"][r, e]}, cs,
                            task=run["task"], run=name, epoch=e)
            rob_files.append(str(path))
        history = []
        for e in EPOCHS:
            rec = {"epoch": e, "lr": 0.1 * (1 - e / 7), "train_loss": 2.0 / (e + 1) + 0.1 * r,
                   "test_loss": 2.2 / (e + 1)}
            rec.update({"train_accuracy": 0.1 + 0.12 * e, "test_accuracy": 0.1 + 0.1 * e} if cls
                       else {"train_l1_error": 0.4 - 0.03 * e, "test_l1_error": 0.42 - 0.03 * e})
            history.append(rec)
        path = directory / name / "history.json"
        path.write_text(json.dumps(history))
        hist_files.append(str(path))
    return stir_files, rob_files, hist_files


def synthetic_summary(directory: Path, *, reference_run: str | None = "digits-scratch", seed: int = 0,
                      analysis: dict | None = None) -> xr.Dataset:
    """A summarised Dataset like ``summary.nc``, built from synthetic per-job files by the real code."""
    files = write_synthetic_files(Path(directory), synthetic_truth(seed))
    ds = aggregate(RUNS, *files, reference_run=reference_run)
    return summarise(ds, analysis or ANALYSIS)


@pytest.fixture(scope="module")
def truth():
    return synthetic_truth()


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    return synthetic_summary(tmp_path_factory.mktemp("synthetic"))


# --------------------------------------------------------------------------- aggregation

def test_aggregate_places_every_score(summary, truth):
    ds = summary
    assert list(ds.run.values) == [r["name"] for r in RUNS]
    assert list(ds.epoch.values) == EPOCHS and list(ds.layer.values) == BLOCKS
    assert list(ds["task"].values) == [r["task"] for r in RUNS]
    for key in ("forgetting", "learning", "flow", "flow_reverse", "cka", "within_ref", "within_eval"):
        np.testing.assert_allclose(ds[key].sel(epoch=STIR_EPOCHS).values, truth[key][:, STIR_EPOCHS], err_msg=key)
        assert np.isnan(ds[key].sel(epoch=[3, 5]).values).all(), key  # not scored: NaN, not 0
    np.testing.assert_allclose(ds["corrupted_score"].values, truth["corrupted"])
    np.testing.assert_allclose(ds["clean_score"].values, truth["clean"])
    np.testing.assert_allclose(ds["robustness"].values, truth["corrupted"].mean(axis=(2, 3)))
    # oriented robustness: accuracy as is, minus the error for the reconstruction run
    np.testing.assert_allclose(ds["robustness_oriented"].values[:3], ds["robustness"].values[:3])
    np.testing.assert_allclose(ds["robustness_oriented"].values[3], -ds["robustness"].values[3])
    assert np.isnan(ds["test_accuracy"].sel(run="digits-recon-pretrained")).all()
    np.testing.assert_allclose(ds["test_l1_error"].sel(run="digits-recon-pretrained"), 0.42 - 0.03 * np.arange(7))


def test_forgetting_spread_is_population_std_over_layers():
    f = xr.DataArray([[0.1, 0.2, 0.3, 0.6], [0.5, 0.5, 0.5, 0.5], [0.1, np.nan, 0.3, 0.2]], dims=("epoch", "layer"))
    mean = (0.1 + 0.2 + 0.3 + 0.6) / 4
    by_hand = np.sqrt(((0.1 - mean) ** 2 + (0.2 - mean) ** 2 + (0.3 - mean) ** 2 + (0.6 - mean) ** 2) / 4)
    spread = forgetting_spread(f).values
    assert spread[0] == pytest.approx(by_hand)
    assert spread[1] == 0.0
    assert np.isnan(spread[2])  # a layer not scored: no spread


def test_forgetting_spread_in_summary(summary, truth):
    expected = truth["forgetting"].std(axis=2)
    np.testing.assert_allclose(summary["forgetting_spread"].sel(epoch=STIR_EPOCHS), expected[:, STIR_EPOCHS])
    assert np.isnan(summary["forgetting_spread"].sel(epoch=[3, 5])).all()


# --------------------------------------------------------------------------- correlation

def test_correlation_known_values():
    # dx = -2..2, dy = (-1, -2, 1, 0, 2): Σdxdy = 8, Σdx² = Σdy² = 10, so r = 0.8; the values are their ranks
    x, y = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]
    out = correlation(x, y, bootstrap=500, permutations=20000, seed=1)
    assert out["n"] == 5
    assert out["pearson_r"] == pytest.approx(0.8)
    assert out["spearman_r"] == pytest.approx(0.8)
    # the exact two-sided permutation p-value: the share of all 120 orderings of y with |r| >= 0.8
    rs = [np.corrcoef(x, p)[0, 1] for p in itertools.permutations(y)]
    exact = np.mean(np.abs(rs) >= 0.8 - 1e-12)
    assert out["pearson_p"] == pytest.approx(exact, abs=0.01)
    for name in ("pearson", "spearman"):
        assert out[f"{name}_ci_low"] <= out[f"{name}_r"] <= out[f"{name}_ci_high"] <= 1


def test_correlation_matches_scipy():
    from scipy import stats

    rng = np.random.default_rng(3)
    x = rng.normal(size=40)
    y = 0.5 * x + rng.normal(size=40)
    y[:5] = y[:5].round(0)  # a few ties
    out = correlation(x, y, bootstrap=300, permutations=300)
    assert out["pearson_r"] == pytest.approx(stats.pearsonr(x, y)[0])
    assert out["spearman_r"] == pytest.approx(stats.spearmanr(x, y)[0])
    for name in ("pearson", "spearman"):
        assert out[f"{name}_ci_low"] < out[f"{name}_r"] < out[f"{name}_ci_high"]


def test_permutation_p_small_for_perfect_relation_large_for_shuffled():
    x = np.arange(20.0)
    perfect = correlation(x, 2 * x + 1, bootstrap=200, permutations=999)
    assert perfect["pearson_r"] == pytest.approx(1.0) and perfect["spearman_r"] == pytest.approx(1.0)
    assert perfect["pearson_p"] == pytest.approx(1 / 1000)  # no permutation does as well: the smallest p
    assert perfect["pearson_ci_low"] == pytest.approx(1.0) and perfect["pearson_ci_high"] == pytest.approx(1.0)
    y = np.random.default_rng(5).permutation(x)
    shuffled = correlation(x, y, bootstrap=200, permutations=999)
    assert abs(shuffled["pearson_r"]) < 0.3
    assert shuffled["pearson_p"] > 0.2 and shuffled["spearman_p"] > 0.2
    assert shuffled["pearson_ci_low"] < 0 < shuffled["pearson_ci_high"]
    # the same seed gives the same numbers
    assert correlation(x, y, bootstrap=200, permutations=999) == shuffled


def test_correlation_undefined_cases():
    for x, y in (([1.0, 2.0], [3.0, 4.0]), ([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0])):
        out = correlation(x, y)
        assert out["n"] == len(x)
        assert all(np.isnan(v) for k, v in out.items() if k != "n")
    with pytest.raises(ValueError):
        correlation([1, 2, 3], [1, 2])


def test_correlation_table_scopes_leave_out_epoch_0(summary):
    ds = summary
    assert list(ds.scope.values) == ["all", "first_2", "first_4"]
    assert list(ds.task_kind.values) == ["classification", "reconstruction"]
    cls = [0, 1, 2]
    for scope, epochs in (("all", [1, 2, 4, 6]), ("first_2", [1, 2]), ("first_4", [1, 2, 4])):
        # by hand: the classification runs' scored epochs in the scope, epoch 0 never
        x = ds["forgetting_spread"].isel(run=cls).sel(epoch=epochs).values.ravel()
        y = ds["robustness"].isel(run=cls).sel(epoch=epochs).values.ravel()
        row = ds.sel(task_kind="classification", scope=scope)
        assert int(row["corr_n"]) == len(x) == 3 * len(epochs)
        assert float(row["corr_pearson_r"]) == pytest.approx(np.corrcoef(x, y)[0, 1])
        assert float(row["corr_pearson_ci_low"]) <= float(row["corr_pearson_r"]) <= float(row["corr_pearson_ci_high"])
        assert 0 < float(row["corr_pearson_p"]) <= 1
    # robustness follows the spread by construction: a strong positive correlation over all epochs
    assert float(ds["corr_pearson_r"].sel(task_kind="classification", scope="all")) > 0.9
    # epoch 0 (spread ~0, chance accuracy) is an outlier that would change r if it were included
    with_0 = ds["forgetting_spread"].isel(run=cls).sel(epoch=[0, 1, 2, 4, 6]).values.ravel()
    rob_0 = ds["robustness"].isel(run=cls).sel(epoch=[0, 1, 2, 4, 6]).values.ravel()
    assert abs(np.corrcoef(with_0, rob_0)[0, 1] - float(ds["corr_pearson_r"].sel(task_kind="classification",
                                                                                  scope="all"))) > 1e-3


def test_correlation_table_first_k_beyond_the_last_epoch_is_all(summary):
    table = correlation_table(summary, [1, 100], bootstrap=50, permutations=50)
    assert list(table.scope.values) == ["all", "first_1", "first_100"]
    all_, beyond = table.sel(scope="all"), table.sel(scope="first_100")
    np.testing.assert_array_equal(all_["corr_pearson_r"], beyond["corr_pearson_r"])
    np.testing.assert_array_equal(all_["corr_pearson_p"], beyond["corr_pearson_p"])  # same seed, same draws
    # epoch 1 alone: one point per run, three classification runs
    assert int(table["corr_n"].sel(task_kind="classification", scope="first_1")) == 3


def test_reconstruction_correlation_is_oriented(summary):
    # the reconstruction run's L1 error falls as its spread rises: more spread, more robust, so r > 0
    ds = summary
    run = ds.sel(run="digits-recon-pretrained", epoch=[1, 2, 4, 6])
    raw = np.corrcoef(run["forgetting_spread"], run["robustness"])[0, 1]
    assert raw < -0.9
    r = float(ds["corr_pearson_r"].sel(task_kind="reconstruction", scope="all"))
    assert r == pytest.approx(-raw)
    assert int(ds["corr_n"].sel(task_kind="reconstruction", scope="first_2")) == 2
    assert np.isnan(ds["corr_pearson_r"].sel(task_kind="reconstruction", scope="first_2"))  # 2 pairs: undefined


# --------------------------------------------------------------------------- relative error

def test_relative_error_is_one_for_the_reference_and_hand_checked(summary, truth):
    ds = summary
    assert float(ds["relative_error"].sel(run="digits-scratch", epoch=6)) == pytest.approx(1.0)
    np.testing.assert_allclose(ds["relative_corruption_error"].sel(run="digits-scratch", epoch=6), 1.0)
    # by hand for the pretrained run at epoch 2: Σ_s (1 - acc) / Σ_s (1 - acc_ref at epoch 6), mean over corruptions
    err = 1 - truth["corrupted"][0, 2]
    ref = 1 - truth["corrupted"][1, 6]
    by_hand = np.mean(err.sum(axis=1) / ref.sum(axis=1))
    assert float(ds["relative_error"].sel(run="digits-pretrained", epoch=2)) == pytest.approx(by_hand)
    # another target or task: not comparable with the reference
    assert np.isnan(ds["relative_error"].sel(run="pets-pretrained")).all()
    assert np.isnan(ds["relative_error"].sel(run="digits-recon-pretrained")).all()


def test_relative_error_simple_numbers():
    ds = xr.Dataset(
        {"corrupted_score": (("run", "epoch", "corruption", "severity"),
                             np.array([[[[0.5, 0.5], [0.8, 0.6]]], [[[0.75, 0.75], [0.9, 0.8]]]]))},
        coords={"run": ["ref", "other"], "epoch": [3], "corruption": ["a", "b"], "severity": [1, 2],
                "target": ("run", ["t", "t"]), "task": ("run", ["classification", "classification"])})
    # errors: ref a (0.5, 0.5), b (0.2, 0.4); other a (0.25, 0.25), b (0.1, 0.2): CE_a = 0.5, CE_b = 0.5
    assert float(relative_error(ds, "ref").sel(run="other", epoch=3)) == pytest.approx(0.5)
    assert float(relative_error(ds, "ref").sel(run="ref", epoch=3)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="reference_run"):
        relative_error(ds, "nope")


# --------------------------------------------------------------------------- early stopping

def _toy(spread, robustness, task="classification"):
    e = len(spread)
    return xr.Dataset({"forgetting_spread": (("run", "epoch"), [spread]),
                       "robustness": (("run", "epoch"), [robustness]),
                       "robustness_oriented": (("run", "epoch"),
                                               [np.asarray(robustness) * (1 if task == "classification" else -1)])},
                      coords={"run": ["r"], "epoch": list(range(e)), "task": ("run", [task])})


def test_early_stopping_by_hand():
    nan = np.nan
    # epoch 0 has the largest spread but is never picked; epoch 3 has no STIR score
    ds = _toy([0.9, 0.1, 0.3, nan, 0.2], [0.9, 0.5, 0.6, 0.8, 0.55])
    out = early_stopping_table(ds, {"classification": 1.0})
    assert int(out["indicator_epoch"].item()) == 2 and int(out["best_robustness_epoch"].item()) == 3
    assert float(out["indicator_robustness"].item()) == 0.6 and float(out["best_robustness"].item()) == 0.8
    out = early_stopping_table(ds, {"classification": -1.0})  # spread against robustness: the smallest spread
    assert int(out["indicator_epoch"].item()) == 1 and int(out["indicator_direction"].item()) == -1
    # reconstruction: the best epoch has the lowest error
    rec = early_stopping_table(_toy([0.0, 0.1, 0.3, nan, 0.2], [0.5, 0.4, 0.2, 0.3, 0.25], "reconstruction"), 1.0)
    assert int(rec["best_robustness_epoch"].item()) == 2 and int(rec["indicator_epoch"].item()) == 2
    none = early_stopping_table(_toy([0.0, nan, nan], [0.1, nan, nan]), 1.0)
    assert int(none["indicator_epoch"].item()) == -1 and int(none["best_robustness_epoch"].item()) == -1


def test_early_stopping_in_summary(summary):
    ds = summary
    # robustness rises with the spread for every task: both directions +1, and the indicator picks
    # the last scored epoch (largest spread), which is also the most robust one
    assert (ds["indicator_direction"].values == 1).all()
    assert (ds["indicator_epoch"].values == 6).all()
    assert (ds["best_robustness_epoch"].values == 6).all()


# --------------------------------------------------------------------------- tables and file

def test_tables(summary, tmp_path):
    write_tables(summary, tmp_path / "correlations.csv", tmp_path / "checkpoints.csv")
    rows = list(csv.DictReader(open(tmp_path / "correlations.csv")))
    corr = [r for r in rows if r["table"] == "correlation"]
    stop = [r for r in rows if r["table"] == "early_stopping"]
    assert {(r["task"], r["scope"]) for r in corr} == {(t, s) for t in ("classification", "reconstruction")
                                                      for s in ("all", "first_2", "first_4")}
    row = next(r for r in corr if r["task"] == "classification" and r["scope"] == "first_4")
    assert row["epochs"] == "1-4" and int(row["n"]) == 9
    assert float(row["pearson_r"]) == pytest.approx(
        float(summary["corr_pearson_r"].sel(task_kind="classification", scope="first_4")), rel=1e-5)
    assert next(r for r in corr if r["task"] == "reconstruction")["robustness"] == "minus mean corrupted L1 error"
    assert [r["run"] for r in stop] == [r["name"] for r in RUNS]
    assert all(r["indicator_epoch"] == "6" and r["best_robustness_epoch"] == "6" for r in stop)
    assert all(r["indicator_direction"] == "1" for r in stop)
    # a negative direction is written as such, a missing epoch as an empty cell
    flipped = summary.copy()
    flipped["indicator_direction"] = -flipped["indicator_direction"]
    flipped["indicator_epoch"] = flipped["indicator_epoch"].where(flipped.run != "pets-pretrained", -1)
    write_tables(flipped, tmp_path / "flipped.csv")
    stop = [r for r in csv.DictReader(open(tmp_path / "flipped.csv")) if r["table"] == "early_stopping"]
    assert [r["indicator_direction"] for r in stop] == ["-1"] * 4
    assert [r["indicator_epoch"] for r in stop] == ["6", "6", "", "6"]
    undefined = next(r for r in corr if r["task"] == "reconstruction" and r["scope"] == "first_2")
    assert undefined["pearson_r"] == "" and undefined["n"] == "2"

    rows = list(csv.DictReader(open(tmp_path / "checkpoints.csv")))
    assert len(rows) == len(RUNS) * len(EPOCHS)
    row = next(r for r in rows if r["run"] == "pets-pretrained" and r["epoch"] == "4")
    sel = summary.sel(run="pets-pretrained", epoch=4)
    assert float(row["clean_score"]) == pytest.approx(float(sel["clean_score"]), rel=1e-5)
    assert float(row["contrast_s3"]) == pytest.approx(float(sel["corrupted_score"].sel(corruption="contrast",
                                                                                       severity=3)), rel=1e-5)
    assert float(row["fog_mean"]) == pytest.approx(float(sel["corrupted_score"].sel(corruption="fog").mean()),
                                                   rel=1e-5)
    assert row["relative_error"] == ""  # another target than the reference
    assert next(r for r in rows if r["run"] == "digits-scratch" and r["epoch"] == "3")["forgetting_spread"] == ""


def test_summary_round_trips_through_netcdf(summary, tmp_path):
    path = tmp_path / "summary.nc"
    summary.to_netcdf(path, engine="h5netcdf")
    with xr.open_dataset(path, engine="h5netcdf") as back:
        xr.testing.assert_identical(back.load(), summary)


def test_without_reference_run(tmp_path):
    ds = synthetic_summary(tmp_path, reference_run=None, analysis={"first_epochs": []})
    assert "relative_error" not in ds
    assert list(ds.scope.values) == ["all"]
    write_tables(ds, tmp_path / "c.csv", tmp_path / "k.csv")
    assert all(r["relative_error"] == "" for r in csv.DictReader(open(tmp_path / "k.csv")))
