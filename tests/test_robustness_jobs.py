"""Robustness in few jobs, and adversarial accuracy in summary.nc, on real Snakemake runs of configs/smoke.yaml."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import xarray as xr

from stirflow.config import evaluated_epochs, load_config, run_config, run_names, stir_epochs

from conftest import SMOKE_CONFIG, jobs_by_rule, snakemake, write_config


def summary(workdir) -> xr.Dataset:
    with xr.open_dataset(workdir / "results" / "summary.nc", engine="h5netcdf") as ds:
        return ds.load()


@pytest.mark.slow
def test_one_robustness_job_per_run_scores_every_checkpoint(smoke_run):
    config = load_config(SMOKE_CONFIG)
    runs = run_names(config)
    epochs = config["finetune"]["epochs"] + 1
    for run in runs:
        logs = sorted((smoke_run / "results" / "logs" / "robustness" / run).iterdir())
        assert [p.name for p in logs] == [f"epochs_000-{epochs - 1:03d}.log"]
        text = logs[0].read_text()
        assert all(f"epoch {e}:" in text for e in range(epochs))
        files = sorted(p.name for p in (smoke_run / "results" / "runs" / run / "robustness").iterdir())
        assert files == [f"epoch_{e:03d}.h5" for e in range(epochs)]


@pytest.mark.slow
def test_grouping_checkpoints_changes_no_result(smoke_copy, smoke_run, tmp_path):
    """Groups of two checkpoints per job (the last group holding one) write the same per-checkpoint files
    as one job per run, value for value; one run's files are asked for (the other runs' jobs are the
    same rules with other wildcards, and aggregate reads the same file names either way)."""
    config = write_config(tmp_path / "grouped.yaml", robustness={"checkpoints_per_job": 2})
    run, epochs = run_names(load_config(config))[0], load_config(config)["finetune"]["epochs"] + 1
    groups = [(first, min(first + 2, epochs) - 1) for first in range(0, epochs, 2)]
    assert groups == [(0, 1), (2, 2)]  # the smoke config's 3 checkpoints: an uneven last group
    targets = [f"results/runs/{run}/robustness/epoch_{e:03d}.h5" for e in range(epochs)]
    for target in targets:
        (smoke_copy / target).unlink()
    dry = snakemake(smoke_copy, "-n", *targets, configfile=config)
    assert jobs_by_rule(dry.stdout) == {f"robustness_{a:03d}_{b:03d}": 1 for a, b in groups}
    snakemake(smoke_copy, "--cores", "2", *targets, configfile=config)
    for target in targets:
        with h5py.File(smoke_copy / target) as grouped, h5py.File(smoke_run / target) as single:
            assert set(grouped) == set(single) and set(single), target
            for name in single:
                np.testing.assert_array_equal(grouped[name][()], single[name][()], err_msg=f"{target}: {name}")
    logs = {p.name for p in (smoke_copy / "results" / "logs" / "robustness" / run).iterdir()}
    assert {f"epochs_{a:03d}-{b:03d}.log" for a, b in groups} <= logs


def test_evaluated_epochs_follow_the_selection(tmp_path):
    config = load_config(write_config(tmp_path / "c.yaml", finetune={"epochs": 6}, stir={"epochs": [2]},
                                      robustness={"epochs": "stir"}, adversarial={"epochs": {"first": 2, "every": 3}}))
    assert evaluated_epochs(config, "robustness") == stir_epochs(config) == [0, 2, 6]
    assert evaluated_epochs(config, "adversarial") == [0, 1, 3, 6]
    config = load_config(write_config(tmp_path / "c.yaml", finetune={"epochs": 6}, robustness={"epochs": [4]}))
    assert evaluated_epochs(config, "robustness") == [0, 4, 6]  # 0 and the last always
    assert evaluated_epochs(config, "adversarial") == list(range(7))  # the default: all


@pytest.mark.slow
def test_checkpoints_left_out_of_robustness_are_missing_values(smoke_copy, smoke_run, tmp_path):
    """robustness.epochs and adversarial.epochs "stir": only the STIR epochs' checkpoints are scored
    (the smoke config scores epochs 0 and 2 of 0..2); summary.nc has NaN at epoch 1 and the one-job
    run's values elsewhere, and the findings table is still written."""
    config = write_config(tmp_path / "stir_epochs.yaml", robustness={"epochs": "stir"}, adversarial={"epochs": "stir"})
    runs, epochs = run_names(load_config(config)), stir_epochs(load_config(config))
    assert epochs == [0, 2]
    attacked = [r for r in runs if run_config(load_config(config), r)["task"] == "classification"]
    dry = snakemake(smoke_copy, "-n", "results/summary.nc", configfile=config)
    assert jobs_by_rule(dry.stdout) == {"robustness": len(runs), "adversarial": len(attacked), "aggregate": 1}
    snakemake(smoke_copy, "--cores", "2", "results/summary.nc", configfile=config)
    for run in runs:
        text = next((smoke_copy / "results" / "logs" / "robustness" / run).glob("epochs_000-002.log")).read_text()
        assert "epoch 0:" in text and "epoch 2:" in text and "epoch 1:" not in text, run
    new, old = summary(smoke_copy), summary(smoke_run)
    for name in ("clean_score", "robustness", "adversarial_accuracy"):
        assert np.isnan(new[name].sel(epoch=1).values).all(), name
        np.testing.assert_array_equal(new[name].sel(epoch=epochs).values, old[name].sel(epoch=epochs).values)
    assert np.isfinite(old["clean_score"].sel(epoch=1).values).all()
    assert (smoke_copy / "results" / "tables" / "findings.csv").stat().st_mtime > \
        (smoke_run / "results" / "tables" / "findings.csv").stat().st_mtime


@pytest.mark.slow
def test_adversarial_accuracy_in_the_summary(smoke_run):
    config = load_config(SMOKE_CONFIG)
    eps = config["adversarial"]["eps"]
    acc = summary(smoke_run)["adversarial_accuracy"]
    assert acc.dims == ("run", "epoch", "norm", "eps")
    assert list(acc.norm.values) == ["linf", "l2"]
    assert list(acc.eps.values) == sorted({float(v) for radii in eps.values() for v in radii})
    attacked = [run for run in run_names(config) if run_config(config, run)["task"] == "classification"]
    assert len(attacked) < len(run_names(config))  # the reconstruction run is not attacked
    assert np.isnan(acc.sel(run=sorted(set(run_names(config)) - set(attacked))).values).all()
    for run in attacked:
        for norm, radii in eps.items():
            values = acc.sel(run=run, norm=norm, eps=radii).values  # (epoch, eps)
            assert np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()
            assert (np.diff(values, axis=1) <= 0).all(), (run, norm, values)  # falls with eps
        # radii of the other norm only were not attacked in this one
        assert np.isnan(acc.sel(run=run, norm="l2", eps=eps["linf"][-1]).values).all()
    # eps = 0 is the clean accuracy of the same images, for both norms
    np.testing.assert_array_equal(acc.sel(norm="linf", eps=0.0).values, acc.sel(norm="l2", eps=0.0).values)
