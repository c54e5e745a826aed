"""The open questions as experiment axes, on synthetic per-job files whose effects are known: runs
of two architectures of different depths (per-run layers in one summary), train fractions, two
lr schedules and PGD radii; the findings rows' answers flip with the built-in effect; every axis
figure draws what the summary holds (read back from its Axes)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from stirflow.analysis import (adversarial_measure, aggregate, correlation_measures, forgetting_spread, summarise,
                               write_tables)
from stirflow.findings import answer, findings_table, run_statistic
from stirflow.statistics import pearson

EPOCHS = list(range(5))
#: model → (architecture, layer kind, layer modules)
MODELS = {"default": ("VisionTransformer", "block", [f"blocks.{i}" for i in range(4)]),
          "resnet": ("resnet18", "stage", ["layer1", "layer2", "layer3"])}
EPS = {"linf": [0.0, 0.03], "l2": [0.0, 0.25]}
CORRUPTIONS, SEVERITIES = ["gaussian_noise", "contrast"], [1, 3]
RESAMPLES = 40
ANALYSIS = {"first_epochs": [], "bootstrap": 100, "permutations": 20, "seed": 0}


def synthetic_runs() -> list[dict]:
    """Runs as the DAG describes them to aggregate (common.smk: run_summary)."""
    runs = []

    def add(init, model="default", fraction=1.0, schedule="cosine"):
        name = f"digits-{init}" + (f"-model_{model}" if model != "default" else "")
        name += (f"-train_fraction_{fraction:g}" if fraction != 1.0 else "") + (
            f"-schedule_{schedule}" if schedule != "cosine" else "")
        architecture, kind, modules = MODELS[model]
        runs.append({"name": name, "target": "digits", "init": init, "task": "classification", "seed": 0,
                     "condition": name, "model": model,
                     "settings": {"train_fraction": fraction, "schedule": schedule, "seed": 0},
                     "layers": {"model": architecture, "layer_kind": kind, "layer_modules": modules,
                                "depth": len(modules)}})

    for init in ("pretrained", "scratch"):
        for fraction in (0.1, 0.3, 1.0):
            add(init, fraction=fraction)
        add(init, schedule="constant")
        add(init, model="resnet")
    return runs


def truth(runs, *, data_effect: float = 0.05, schedule_effect: float = 0.04, adversarial_slope: float = 2.0,
          depth_effect: float = 0.2, seed: int = 0) -> dict[str, dict]:
    """Per run: forgetting and learning (epoch, own layer) and their image resamples, robustness and
    PGD accuracies. Early forgetting grows by ``data_effect`` per tenfold more data, the constant
    schedule forgets ``schedule_effect`` more than cosine, forgetting grows with relative depth by
    ``depth_effect``, and adversarial accuracy follows the forgetting spread with ``adversarial_slope``.
    The first three may be given per init ({init: effect}), so that one summary holds both signs."""
    rng = np.random.default_rng(seed)

    def of(effect, run):
        return effect[run["init"]] if isinstance(effect, dict) else effect

    t = np.array(EPOCHS, float) / EPOCHS[-1]
    out = {}
    for r in runs:
        depth = r["layers"]["depth"]
        rel = np.arange(1, depth + 1) / depth
        s = r["settings"]
        level = (0.1 + (0.05 if r["init"] == "scratch" else 0.0) + of(data_effect, r) * np.log10(s["train_fraction"])
                 + (of(schedule_effect, r) if s["schedule"] == "constant" else 0.0))
        forgetting = t[:, None] * (level + of(depth_effect, r) * rel[None]) + 0.003 * rng.random((len(EPOCHS), depth))
        forgetting[0] = 0.002 * rng.random(depth)
        learning = 0.8 * forgetting + 0.02
        boot_f = forgetting[:, None] + 0.002 * rng.normal(size=(len(EPOCHS), RESAMPLES, depth))
        spread = forgetting.std(axis=1)
        clean = 0.5 + 0.4 * t
        accuracy = np.clip(0.3 + 1.5 * spread[:, None, None] + 0.01 * rng.random((len(EPOCHS), 2, 2)), 0, 1)
        adversarial = {norm: np.stack([np.clip(0.5 + 3 * adversarial_slope * (1 - e) * spread
                                               + 0.005 * rng.random(len(EPOCHS)), 0, 1) if e else clean
                                       for e in radii], axis=1) for norm, radii in EPS.items()}
        out[r["name"]] = {"forgetting": forgetting, "learning": learning, "forgetting_boot": boot_f,
                          "learning_boot": 0.8 * boot_f + 0.02, "clean": clean, "accuracy": accuracy,
                          "adversarial": adversarial}
    return out


def write_files(directory: Path, runs, values) -> dict[str, list[str]]:
    """The per-job files of the pipeline for ``values``: STIR scores with each run's own layers,
    robustness, history and adversarial accuracies."""
    import torch

    from stirflow.adversarial import save_adversarial
    from stirflow.comparison import scores_dataset
    from stirflow.inversion import InversionResult
    from stirflow.robustness import CorruptedSet, save_robustness

    cs = CorruptedSet(np.zeros((1, 2, 2, 3), np.uint8), np.zeros((1,), np.uint8), np.zeros(1, int),
                      CORRUPTIONS, SEVERITIES, {})
    files = {"stir": [], "robustness": [], "history": [], "adversarial": []}
    for r in runs:
        v, name = values[r["name"]], r["name"]
        blocks = list(range(1, r["layers"]["depth"] + 1))
        folder = directory / name
        folder.mkdir(parents=True, exist_ok=True)
        inversions = {b: InversionResult(torch.zeros(2, 3, 2, 2), torch.full((2,), 0.01), torch.ones(2),
                                         torch.full((2, 2), 0.01), [10, 20]) for b in blocks}
        for e in EPOCHS:
            n = len(blocks)
            matrix = np.full((n, n), 0.5)
            scores = {"forgetting": v["forgetting"][e], "learning": v["learning"][e], "flow": matrix,
                      "flow_reverse": matrix, "cka": matrix, "within_ref": matrix, "within_eval": matrix}
            ds = scores_dataset(scores, blocks, np.arange(2), inversions, inversions)
            ds["forgetting_boot"] = (("resample", "layer"), v["forgetting_boot"][e])
            ds["learning_boot"] = (("resample", "layer"), v["learning_boot"][e])
            ds["compression_boot"] = (("resample",), np.zeros(RESAMPLES))
            ds.attrs.update(run=name, epoch=e)
            ds.to_netcdf(folder / f"stir_{e}.nc", engine="h5netcdf")
            files["stir"].append(str(folder / f"stir_{e}.nc"))
            save_robustness(folder / f"rob_{e}.h5", {"clean_accuracy": v["clean"][e], "accuracy": v["accuracy"][e]},
                            cs, task="classification", run=name, epoch=e)
            files["robustness"].append(str(folder / f"rob_{e}.h5"))
        fraction = r["settings"]["train_fraction"]  # finetune.py records the data a run trained on
        history = [{"epoch": e, "train_loss": 1.0, "test_loss": 1.0, "test_accuracy": float(v["clean"][e]),
                    "train_accuracy": float(v["clean"][e]), "train_fraction": fraction,
                    "n_train": int(round(1000 * fraction))} for e in EPOCHS]
        (folder / "history.json").write_text(json.dumps(history))
        files["history"].append(str(folder / "history.json"))
        epochs_acc = [{norm: v["adversarial"][norm][e] for norm in EPS} for e in EPOCHS]
        save_adversarial(folder / "adversarial.h5", EPOCHS, epochs_acc, EPS, run=name)
        files["adversarial"].append(str(folder / "adversarial.h5"))
    return files


def summary_of(directory: Path, summarised: bool = True, **effects) -> tuple[xr.Dataset, list[dict], dict]:
    """The summary of :func:`truth`'s runs, built by the real aggregation (and, with ``summarised``,
    the correlation table: the adversarial rows need it, the other questions do not)."""
    runs = synthetic_runs()
    values = truth(runs, **effects)
    files = write_files(Path(directory), runs, values)
    ds = aggregate(runs, files["stir"], files["robustness"], files["history"], adversarial_files=files["adversarial"])
    return (summarise(ds, ANALYSIS) if summarised else ds), runs, values


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return summary_of(tmp_path_factory.mktemp("questions"))


@pytest.fixture(scope="module")
def summary(built):
    return built[0]


# --------------------------------------------------------------------------- aggregation

def test_runs_of_two_depths_share_one_summary(built):
    ds, runs, values = built
    assert list(ds.layer.values) == [1, 2, 3, 4]  # 1..the largest depth
    # the data each run finetuned on, from its history: one value per run
    assert ds["train_fraction"].dims == ("run",) and ds["n_train"].dims == ("run",)
    assert ds["train_fraction"].sel(run="digits-scratch-train_fraction_0.1").item() == 0.1
    assert ds["n_train"].sel(run="digits-scratch-train_fraction_0.1").item() == 100
    for r in runs:
        name, depth = r["name"], r["layers"]["depth"]
        f = ds["forgetting"].sel(run=name).values
        np.testing.assert_allclose(f[:, :depth], values[name]["forgetting"])
        assert np.isnan(f[:, depth:]).all()  # beyond the run's own layers
        np.testing.assert_allclose(ds["relative_depth"].sel(run=name).values[:depth], np.arange(1, depth + 1) / depth)
        assert np.isnan(ds["relative_depth"].sel(run=name).values[depth:]).all()
        assert list(ds["layer_module"].sel(run=name).values[:depth]) == r["layers"]["layer_modules"]
        assert (str(ds["model"].sel(run=name).values), int(ds["depth"].sel(run=name))) == (r["model"], depth)
        assert str(ds["layer_kind"].sel(run=name).values) == r["layers"]["layer_kind"]
        # the spread is over the run's own layers, and the bootstrap resamples land on them too
        np.testing.assert_allclose(ds["forgetting_spread"].sel(run=name).values,
                                   values[name]["forgetting"].std(axis=1))
        np.testing.assert_allclose(ds["forgetting_boot"].sel(run=name).values[..., :depth],
                                   values[name]["forgetting_boot"])
    # the flow matrix of a 3-stage run fills its own 3 x 3 corner
    flow = ds["flow"].sel(run="digits-pretrained-model_resnet", epoch=1).values
    assert np.isfinite(flow[:3, :3]).all() and np.isnan(flow[3]).all() and np.isnan(flow[:, 3]).all()
    assert str(ds["schedule"].sel(run="digits-pretrained-schedule_constant").values) == "constant"


def test_spread_with_a_missing_own_layer_is_nan():
    f = xr.DataArray([[0.1, np.nan, 0.3, np.nan], [0.1, 0.2, 0.3, np.nan]], dims=("run", "layer"))
    own = xr.DataArray([[True, True, True, True], [True, True, True, False]], dims=("run", "layer"))
    spread = forgetting_spread(f, own).values
    assert np.isnan(spread[0]) and spread[1] == pytest.approx(np.std([0.1, 0.2, 0.3]))


def test_the_schedule_coordinate_says_each_schedule_in_words():
    from stirflow.analysis import run_coordinates

    runs = [{"name": "a", "target": "d", "settings": {"schedule": "cosine"}},
            {"name": "b", "target": "d", "settings": {"schedule": {"name": "step", "milestones": [3, 6], "gamma": 0.5}}}]
    assert run_coordinates(runs)["schedule"][1] == ["cosine", "step(gamma=0.5, milestones=[3,6])"]


# --------------------------------------------------------------------------- adversarial correlations

def test_adversarial_measures_are_reported_like_the_corruption_ones(summary, tmp_path):
    measures = [str(m) for m in summary.measure.values]
    attacks = [adversarial_measure(n, e) for n, radii in EPS.items() for e in radii if e > 0]
    assert measures == ["absolute", "relative"] + [m + s for m in attacks for s in ("", "_relative")]
    for measure in attacks:
        r = summary["corr_pearson_r"].sel(task_kind="classification", scope="all", measure=measure, estimate="pooled")
        values = correlation_measures(summary)[measure][1].sel(epoch=slice(1, None))
        x, y = summary["forgetting_spread"].sel(epoch=slice(1, None)).values.ravel(), values.values.ravel()
        assert float(r) == pytest.approx(float(pearson(x, y)), abs=1e-12)
        assert float(r) > 0.5  # built in: adversarial accuracy follows the spread
        for estimate in ("within_run", "partial"):
            assert np.isfinite(float(summary["corr_pearson_r"].sel(task_kind="classification", scope="all",
                                                                   measure=measure, estimate=estimate)))
    # relative: divided by the accuracy at eps 0 of the same norm
    rel = correlation_measures(summary)[adversarial_measure("linf", 0.03, relative=True)][1]
    adv = summary["adversarial_accuracy"].sel(norm="linf")
    np.testing.assert_allclose(rel.values, (adv.sel(eps=0.03) / adv.sel(eps=0.0)).values)
    write_tables(summary, tmp_path / "corr.csv")
    rows = list(csv.DictReader(open(tmp_path / "corr.csv")))
    linf = [row for row in rows if row["measure"] == adversarial_measure("linf", 0.03)]
    assert len(linf) == 3 and "PGD attack, linf radius 0.03" in linf[0]["robustness"]  # 3 estimates
    # the early-stopping rows stay on corruption robustness
    assert {row["measure"] for row in rows if row["table"] == "early_stopping"} == {"absolute"}


# --------------------------------------------------------------------------- findings rows

def rows(table, finding, **where):
    sel = table[table["finding"] == finding]
    for k, v in where.items():
        sel = sel[sel[k] == v]
    return sel


def test_answer_rule():
    assert answer(0.1, 0.2, "up", "down") == "up" and answer(-0.2, -0.1, "up", "down") == "down"
    assert answer(-0.1, 0.1, "up", "down") == "no detectable effect"
    assert answer(np.nan, np.nan, "up", "down") == "undetermined (no interval)"


#: opposite effects for the two inits, so that one summary shows both signs of each answer
DATA_EFFECT = {"pretrained": 0.05, "scratch": -0.05}
SCHEDULE_EFFECT = {"pretrained": 0.04, "scratch": -0.04}
DEPTH_EFFECT = {"pretrained": 0.2, "scratch": -0.05}


@pytest.fixture(scope="module")
def opposite(tmp_path_factory):
    """A summary (without the correlation table) whose data, schedule and depth effects have
    opposite signs for the two inits."""
    ds, runs, values = summary_of(tmp_path_factory.mktemp("opposite"), summarised=False, data_effect=DATA_EFFECT,
                                  schedule_effect=SCHEDULE_EFFECT, depth_effect=DEPTH_EFFECT)
    return ds, runs, values, findings_table(ds, bootstrap=200)


@pytest.fixture(scope="module")
def no_data_effect(tmp_path_factory):
    ds, _, _ = summary_of(tmp_path_factory.mktemp("flat"), summarised=False, data_effect=0.0)
    return findings_table(ds, bootstrap=200)


def test_train_fraction_rows_follow_the_built_in_effect(opposite, no_data_effect):
    ds, runs, values, table = opposite
    q1 = rows(table, "Q1 train fraction")
    assert set(q1["init"]) == {"pretrained", "scratch"} and len(q1) == 6  # 3 statistics per init
    early = q1[q1["statistic"].str.contains("mean forgetting over the first half")]
    verdicts = dict(zip(early["init"], early["verdict"]))
    assert verdicts == {"pretrained": "more data → more forgetting", "scratch": "more data → less forgetting"}, \
        early[["init", "value", "ci_low", "ci_high", "verdict"]]
    assert set(early["interval"]) == {f"images ({RESAMPLES} resamples)"}
    for init in ("pretrained", "scratch"):
        # the slope by hand: early forgetting (the first 2 of 4 blocks) at the last epoch on log10(fraction)
        names = [f"digits-{init}-train_fraction_{f:g}" for f in (0.1, 0.3)] + [f"digits-{init}"]
        y = [values[n]["forgetting"][-1, :2].mean() for n in names]
        slope = np.polyfit(np.log10([0.1, 0.3, 1.0]), y, 1)[0]
        assert early[early["init"] == init]["value"].item() == pytest.approx(slope)
        assert early[early["init"] == init]["value"].item() == pytest.approx(DATA_EFFECT[init], abs=0.005)
    flat = rows(no_data_effect, "Q1 train fraction")
    flat = flat[flat["statistic"].str.contains("mean forgetting over the first half")]
    assert set(flat["verdict"]) == {"no detectable effect"}, flat[["init", "value", "ci_low", "ci_high"]]


def test_schedule_rows_follow_the_built_in_effect(opposite):
    _, _, values, table = opposite
    q2 = rows(table, "Q2 schedule")
    early = q2[q2["statistic"].str.contains("mean forgetting over the first half")]
    assert dict(zip(early["init"], early["verdict"])) == {"pretrained": "constant: more forgetting than cosine",
                                                          "scratch": "constant: less forgetting than cosine"}
    for init in ("pretrained", "scratch"):
        by_hand = (values[f"digits-{init}-schedule_constant"]["forgetting"][-1, :2].mean()
                   - values[f"digits-{init}"]["forgetting"][-1, :2].mean())
        assert early[early["init"] == init]["value"].item() == pytest.approx(by_hand)
    assert "constant - cosine" in early["statistic"].iloc[0]


@pytest.mark.parametrize("slope, expected", [(2.0, "spread goes with adversarial robustness"),
                                             (-2.0, "spread goes against adversarial robustness")])
def test_adversarial_rows_follow_the_built_in_correlation(slope, expected, summary, tmp_path):
    ds = summary if slope == 2.0 else summary_of(tmp_path, adversarial_slope=slope)[0]  # 2.0: truth's default
    q3 = rows(findings_table(ds, bootstrap=100), "Q3 adversarial")
    pooled = q3[q3["statistic"].str.startswith("pooled") & ~q3["statistic"].str.contains("/")]
    assert len(pooled) == 2 and set(pooled["verdict"]) == {expected}
    difference = q3[q3["statistic"].str.contains("minus r with absolute")]
    assert len(difference) == 2 and difference["interval"].eq("(run, epoch) pairs").all()
    measure = adversarial_measure("l2", 0.25)
    r_adv = float(ds["corr_pearson_r"].sel(task_kind="classification", scope="all", measure=measure, estimate="pooled"))
    r_cor = float(ds["corr_pearson_r"].sel(task_kind="classification", scope="all", measure="absolute",
                                           estimate="pooled"))
    row = difference[difference["statistic"].str.contains("l2 radius 0.25")]
    assert row["value"].item() == pytest.approx(r_adv - r_cor)


def test_architecture_rows_per_model(opposite):
    _, _, values, table = opposite
    q4 = rows(table, "Q4 architectures")
    forgetting = q4[q4["statistic"].str.startswith("forgetting")]
    # one row per architecture and init among the runs that differ in nothing else
    assert len(forgetting[forgetting["statistic"].str.contains("resnet: resnet18")]) == 2
    # the ViT's runs with the settings the ResNet ran too (train fraction 1, cosine), not every ViT run
    assert len(forgetting) == 4 and forgetting["note"].str.contains("train_fraction = 1.0").all()
    expected = {"pretrained": "forgetting grows with depth", "scratch": "forgetting falls with depth"}
    for init, verdict in expected.items():
        assert set(forgetting[forgetting["init"] == init]["verdict"]) == {verdict}, \
            forgetting[["statistic", "init", "value", "verdict"]]
    f = values["digits-pretrained-model_resnet"]["forgetting"][-1]  # 3 stages: the last one minus the first
    resnet = forgetting[forgetting["statistic"].str.contains("resnet") & (forgetting["init"] == "pretrained")]
    assert resnet["value"].item() == pytest.approx(f[2] - f[0])
    # F1 compares the inits per architecture, over each model's own first half
    f1 = rows(table, "F1")
    notes = set(f1["note"])
    assert any("model = resnet" in n for n in notes) and any("model = default" in n for n in notes)
    assert any("stage 1" in s for s in f1["statistic"]) and any("blocks 1-2" in s for s in f1["statistic"])


def test_run_statistic_uses_the_runs_own_layers(built):
    ds, runs, values = built
    value, boot = run_statistic(ds, "digits-scratch-model_resnet", "forgetting spread")
    f = values["digits-scratch-model_resnet"]["forgetting"][-1]
    assert value == pytest.approx(f.std()) and boot.shape == (RESAMPLES,)
    np.testing.assert_allclose(boot, values["digits-scratch-model_resnet"]["forgetting_boot"][-1].std(axis=1))


def test_no_question_rows_for_axes_a_summary_does_not_vary(summary):
    only = summary.sel(run=["digits-pretrained", "digits-scratch"])
    table = findings_table(only, bootstrap=100)
    assert not table["finding"].str.startswith(("Q1", "Q2", "Q4")).any()


# --------------------------------------------------------------------------- figures

def _lines(ax) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The labelled lines of an Axes: label → (x, y) as drawn."""
    return {line.get_label(): (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float))
            for line in ax.get_lines() if not line.get_label().startswith("_")}


def _axes_titled(fig, text: str):
    return [ax for ax in fig.axes if text in ax.get_title() or text in ax.get_title(loc="left")]


def early(values, name, what="forgetting"):
    return values[name][what][-1, :2].mean()  # first half of a 4-block ViT, last epoch


def test_train_fraction_figure_draws_the_summary(built):
    import matplotlib.pyplot as plt

    from stirflow.plots import axis_train_fraction

    ds, _, values = built
    fig = axis_train_fraction(ds, {})
    try:
        fractions = [0.1, 0.3, 1.0]
        for title, what in (("Learning, first half", "learning"), ("Forgetting, first half", "forgetting")):
            (ax,) = _axes_titled(fig, title)
            assert ax.get_xscale() == "log"
            lines = _lines(ax)
            for init in ("pretrained", "scratch"):
                label = next(k for k in lines if k.startswith("from scratch" if init == "scratch" else init))
                x, y = lines[label]
                names = [f"digits-{init}-train_fraction_{f:g}" for f in fractions[:2]] + [f"digits-{init}"]
                np.testing.assert_allclose(x, fractions)
                np.testing.assert_allclose(y, [early(values, n, what) for n in names])
            assert len(lines) == 2  # runs without a partner along the axis (another model, schedule) are not lines
        (ax,) = _axes_titled(fig, "Forgetting spread")
        x, y = next(v for k, v in _lines(ax).items() if k.startswith("pretrained"))
        np.testing.assert_allclose(y, [values[n]["forgetting"][-1].std() for n in
                                       ("digits-pretrained-train_fraction_0.1", "digits-pretrained-train_fraction_0.3",
                                        "digits-pretrained")])
    finally:
        plt.close(fig)


def test_schedule_figure_draws_the_summary(built):
    import matplotlib.pyplot as plt

    from stirflow.plots import axis_schedule

    ds, _, values = built
    fig = axis_schedule(ds, {})
    try:
        (ax,) = _axes_titled(fig, "Forgetting, first half")
        assert [t.get_text() for t in ax.get_xticklabels()] == ["cosine", "constant"]
        for init in ("pretrained", "scratch"):
            x, y = next(v for k, v in _lines(ax).items() if k.startswith("from scratch" if init == "scratch" else init))
            np.testing.assert_allclose(x, [0, 1])
            np.testing.assert_allclose(y, [early(values, f"digits-{init}"),
                                           early(values, f"digits-{init}-schedule_constant")])
    finally:
        plt.close(fig)


def test_adversarial_figure_draws_the_summary(built):
    import matplotlib.pyplot as plt

    from stirflow.plots import axis_adversarial

    ds, runs, values = built
    fig = axis_adversarial(ds, {})
    try:
        grid = np.array(fig.axes[:6]).reshape(2, 3)  # corruption, linf 0.03, l2 0.25; absolute, relative
        assert "PGD linf ε=0.03" in grid[0, 1].get_ylabel() and "corrupted" in grid[0, 0].get_ylabel()
        epochs = slice(1, None)
        for run in ("digits-scratch", "digits-pretrained-model_resnet"):
            spread = ds["forgetting_spread"].sel(run=run, epoch=epochs).values
            points = {c.get_label(): c.get_offsets() for c in grid[0, 1].collections if c.get_label() == run}
            np.testing.assert_allclose(points[run][:, 0], spread)
            np.testing.assert_allclose(points[run][:, 1], values[run]["adversarial"]["linf"][1:, 1])
            rel = {c.get_label(): c.get_offsets() for c in grid[1, 2].collections}[run]
            np.testing.assert_allclose(rel[:, 1], values[run]["adversarial"]["l2"][1:, 1]
                                       / values[run]["adversarial"]["l2"][1:, 0])
            cor = {c.get_label(): c.get_offsets() for c in grid[0, 0].collections}[run]
            np.testing.assert_allclose(cor[:, 1], values[run]["accuracy"][1:].mean(axis=(1, 2)))
        r = float(ds["corr_pearson_r"].sel(task_kind="classification", scope="all",
                                           measure=adversarial_measure("linf", 0.03), estimate="pooled"))
        assert f"r = {r:.2f}" in grid[0, 1].get_title(loc="left")
    finally:
        plt.close(fig)


def test_architectures_figure_draws_the_summary(built):
    import matplotlib.pyplot as plt

    from stirflow.plots import axis_architectures

    ds, _, values = built
    fig = axis_architectures(ds, {})
    try:
        top = [ax for ax in fig.axes if ax.get_title()]
        assert [ax.get_title().splitlines()[0] for ax in top] == ["default", "resnet"]
        bottom = fig.axes[2:4]  # forgetting row
        resnet = _lines(bottom[1])
        x, y = next(v for k, v in resnet.items() if k.startswith("pretrained"))
        np.testing.assert_allclose(x, [1 / 3, 2 / 3, 1.0])
        np.testing.assert_allclose(y, values["digits-pretrained-model_resnet"]["forgetting"][-1])
        x, y = next(v for k, v in _lines(fig.axes[0]).items() if k.startswith("from scratch"))
        np.testing.assert_allclose(x, [0.25, 0.5, 0.75, 1.0])
        np.testing.assert_allclose(y, values["digits-scratch"]["learning"][-1])
    finally:
        plt.close(fig)


def _with_unconverged(ds, run: str, layer: int):
    """``ds`` whose convergence check found ``run``'s last scored epoch not converged at ``layer``
    only (every other (run, epoch, layer) checked and converged)."""
    from stirflow.plots import _last_scored

    ds = ds.copy()
    converged = xr.ones_like(ds["learning"])
    converged.loc[dict(run=run, epoch=_last_scored(ds, run), layer=layer)] = 0
    ds["converged"] = converged
    return ds


def _open_markers(ax) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for line in ax.get_lines() if line.get_markerfacecolor() in ("white", (1, 1, 1, 1))
            for x, y in zip(line.get_xdata(), line.get_ydata())]


def test_axis_figures_mark_unconverged_measurements(built):
    import matplotlib.pyplot as plt

    from stirflow.plots import UNCONVERGED_LABEL, axis_architectures, axis_schedule

    ds, _, values = built
    for figure in (axis_architectures, axis_schedule):  # all checked and converged: no open marker
        fig = figure(ds, {})
        assert not any(_open_markers(ax) for ax in fig.axes)
        assert UNCONVERGED_LABEL not in [t.get_text() for legend in fig.legends for t in legend.get_texts()]
        plt.close(fig)
    marked = _with_unconverged(ds, "digits-scratch", 4)
    fig = axis_architectures(marked, {})
    try:  # the scratch ViT's layer 4 (relative depth 1.0), learning row and forgetting row
        assert _open_markers(fig.axes[0]) == [(1.0, pytest.approx(values["digits-scratch"]["learning"][-1][3]))]
        assert _open_markers(fig.axes[2]) == [(1.0, pytest.approx(values["digits-scratch"]["forgetting"][-1][3]))]
        assert not _open_markers(fig.axes[1]) and not _open_markers(fig.axes[3])  # the ResNet's column
        assert UNCONVERGED_LABEL in [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    finally:
        plt.close(fig)
    fig = axis_schedule(marked, {})
    try:  # the scratch line's cosine point (the default run) is open, nothing else
        (ax,) = _axes_titled(fig, "Forgetting, first half")
        assert _open_markers(ax) == [(0.0, pytest.approx(early(values, "digits-scratch")))]
    finally:
        plt.close(fig)


@pytest.mark.parametrize("name", ["axis_train_fraction", "axis_schedule", "axis_adversarial", "axis_architectures"])
def test_axis_figures_are_legible_and_say_when_not_varied(built, name):
    import matplotlib.pyplot as plt

    from stirflow.plots import FIGURES
    from test_figures import _overlaps, _texts

    ds = built[0]
    fig = FIGURES[name](ds, {})
    try:
        assert fig.get_size_inches()[0] <= 7.5
        assert min(t.get_fontsize() for t in _texts(fig)) >= 5.5
        assert not _overlaps(fig), _overlaps(fig)
    finally:
        plt.close(fig)
    one = ds.sel(run=["digits-pretrained"]).drop_vars(["adversarial_accuracy"])
    fig = FIGURES[name](one, {})
    try:
        assert any("not varied in this summary" in t.get_text() for t in _texts(fig))
    finally:
        plt.close(fig)


def test_draw_all_draws_the_named_figures(summary, tmp_path):
    from stirflow.plots import draw_all

    written = draw_all(summary, tmp_path, {"formats": ["png"], "dpi": 50}, names=["axis_schedule"])
    assert [p.name for p in written] == ["axis_schedule.png"]


# --------------------------------------------------------------------------- configs and the DAG

from conftest import REPO, SMOKE_CONFIG, jobs_by_rule, snakemake  # noqa: E402

TINY_RESNET = {"timm_name": "resnet18", "input_size": 32,
               "kwargs": {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8}}


#: the two classification runs the tests below count on (the smoke config has more)
TWO_RUNS = [{"target": "digits", "init": "pretrained"}, {"target": "digits", "init": "scratch"}]


def smoke_with(**changes) -> dict:
    """configs/smoke.yaml with its two first runs (:data:`TWO_RUNS`), top-level sections replaced or
    (finetune) merged."""
    import yaml

    config = yaml.safe_load(SMOKE_CONFIG.read_text())
    config["finetune"]["runs"] = TWO_RUNS
    for key, value in changes.items():
        config[key] = {**config[key], **value} if key == "finetune" else value
    return config


def test_runs_pick_their_model_and_name_it():
    from stirflow.config import expand_runs, model_spec, pretraining_models, run_blocks, run_training, validate_config

    config = validate_config(smoke_with(models={"resnet": TINY_RESNET},
                                        finetune={"grid": {"model": ["default", "resnet"]}}))
    runs = {r["name"]: r for r in expand_runs(config)}
    assert list(runs) == ["digits-pretrained", "digits-pretrained-model_resnet", "digits-scratch",
                          "digits-scratch-model_resnet"]
    assert [runs[n]["model"] for n in runs] == ["default", "resnet", "default", "resnet"]
    assert run_blocks(config, runs["digits-scratch"]) == [1, 2]
    assert run_blocks(config, runs["digits-scratch-model_resnet"]) == [1, 2, 3, 4]
    # the model is no training setting: the default model's runs train exactly as without `models`
    plain = validate_config(smoke_with())
    assert run_training(config, runs["digits-pretrained"]) == run_training(plain, expand_runs(plain)[0])
    assert run_training(config, runs["digits-pretrained-model_resnet"]) == run_training(plain, expand_runs(plain)[0])
    assert pretraining_models(config) == ["default", "resnet"]
    assert model_spec(config, "classification", 10, "resnet")["timm_name"] == "resnet18"
    assert config["models"]["resnet"]["mean"] == [0.5, 0.5, 0.5]  # an entry of models has the model section's defaults
    # a run's own model names the run too
    own = validate_config(smoke_with(models={"resnet": TINY_RESNET},
                                     finetune={"runs": [{"target": "digits", "model": "resnet"}]},
                                     convergence={"runs": ["digits-pretrained-model_resnet"]}))
    assert [r["name"] for r in expand_runs(own)] == ["digits-pretrained-model_resnet"]


@pytest.mark.parametrize("changes, message", [
    ({"finetune": {"grid": {"model": ["default", "resnt"]}}}, "finetune.grid.model: unknown model 'resnt' (models: default, resnet)"),
    ({"finetune": {"runs": [{"target": "digits", "model": "x"}]}}, "finetune.runs.0.model: unknown model 'x'"),
    ({"finetune": {"model": "x"}}, "finetune.model: unknown model 'x'"),
    ({"models": {"resnet": TINY_RESNET, "default": TINY_RESNET}}, "models.default: `default` is the name of the `model` section"),
    ({"stir": {"blocks": [1, 3]}, "finetune": {"grid": {"model": ["default", "resnet"]}}},
     "stir.blocks: [3] out of range: model 'default' (model) has blocks 1..2"),
    ({"models": {"resnet": {**TINY_RESNET, "kwargs": {"img_size": 3}}}},
     "models.resnet.timm_name: 'resnet18' cannot be built with models.resnet.kwargs"),
    ({"models": {"resnet": {**TINY_RESNET, "vit": {}}}}, "models.resnet.kwargs and models.resnet.vit: give one of them"),
    ({"finetune": {"grid": {"model": ["default", "resnet"]}, "runs": [{"target": "digits", "task": "reconstruction"}]}},
     "finetune.runs.0.task: reconstruction needs a VisionTransformer, and models.resnet.timm_name 'resnet18'"),
    ({"finetune": {"grid": {"model": ["default", "resnet"]}}, "pretrain": {"weights": {"file": str(REPO / "README.md")}}},
     "pretrain.weights.file: one file holds one architecture's weights"),
])
def test_model_choices_that_cannot_work_name_the_key(changes, message):
    from stirflow.config import ConfigError, validate_config

    config = smoke_with(models={"resnet": TINY_RESNET})
    for key, value in changes.items():
        config[key] = {**config[key], **value} if key in ("finetune", "models") else value
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    assert message in str(err.value), str(err.value)


def test_axis_figures_only_for_the_axes_a_config_varies():
    import yaml

    from stirflow.config import figure_names, validate_config, varied_axes

    default = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    assert varied_axes(default) == ["adversarial"]
    assert [n for n in figure_names(default) if n.startswith("axis_")] == ["axis_adversarial"]
    config = validate_config(smoke_with(models={"resnet": TINY_RESNET}, adversarial={"enabled": False},
                                        finetune={"grid": {"model": ["default", "resnet"],
                                                           "schedule": ["cosine", {"name": "cosine"}]}}))
    assert varied_axes(config) == ["architectures"]  # the same schedule written two ways is not an axis
    config["finetune"]["grid"]["train_fraction"] = [0.5, 1.0]
    assert varied_axes(config) == ["train_fraction", "architectures"]


def test_dag_of_two_architectures(tmp_path):
    """Each architecture is pretrained into its own place, each run inverts its own model's layers
    (files named by what a layer is), and the default model's paths stay where they were."""
    import yaml

    config = smoke_with(models={"resnet": TINY_RESNET}, finetune={"grid": {"model": ["default", "resnet"]}},
                        stir={"epochs": [0, 1, 2], "n_images": 48, "steps": 60, "blocks_per_job": 1},
                        convergence={"runs": ["digits-scratch", "digits-pretrained-model_resnet"]})
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = snakemake(tmp_path / "work", "-n", configfile=path)
    jobs = jobs_by_rule(proc.stdout)
    assert jobs["pretrain"] == 1 and jobs["pretrain_resnet"] == 1
    assert jobs["invert"] == 2 * 3 * 2 + 2 * 3 * 4  # runs x epochs x their own layers, one per job
    assert jobs["invert_check"] == 2 * 2  # the two runs checked x (epoch 0, the last)
    out = proc.stdout
    assert "results/pretrain/checkpoints/epoch_002.pt" in out and "results/pretrain-resnet/history.json" in out
    assert "results/runs/digits-scratch-model_resnet/inversions/epoch_001/layers_04.h5" in out
    assert "results/runs/digits-scratch/inversions/epoch_001/blocks_02.h5" in out
    assert "results/runs/digits-scratch/inversions/epoch_001/blocks_03.h5" not in out
    assert "results/runs/digits-pretrained-model_resnet/convergence/inversions/epoch_002/layers_01-02-03-04.h5" in out
    assert "results/figures/axis_architectures.png" in out and "axis_train_fraction" not in out
