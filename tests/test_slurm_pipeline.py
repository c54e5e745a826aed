"""The pipeline on a real SLURM: one run's branch of configs/smoke.yaml (pretraining, finetuning,
inversions, STIR scores and robustness of its last epoch) through profiles/slurm gives the local run's files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import xarray as xr

from conftest import REPO, SMOKE_CONFIG, SNAKEMAKE

pytest.importorskip("snakemake_executor_plugin_slurm", reason="snakemake-executor-plugin-slurm is not installed")

from slurm_cluster import adapt_profile, slurm_cluster  # noqa: E402,F401  (fixture)


@pytest.mark.slurm
@pytest.mark.slow
def test_smoke_config_on_slurm_equals_local_run(slurm_cluster, request, tmp_path):  # noqa: F811
    import subprocess

    # The test node has no GPU: a copy of the profile with gpu=0, memory scaled to the node.
    profile = adapt_profile(REPO / "profiles" / "slurm", tmp_path / "profile", partition=slurm_cluster.partition,
                            mem_mb="1500 * attempt", cores=slurm_cluster.cpus)
    workdir = tmp_path / "work"
    workdir.mkdir()
    # one pretrained run's last epoch: every kind of GPU job, a tenth of the smoke run's SLURM submissions
    run = "digits-pretrained"
    targets = [f"results/runs/{run}/stir/epoch_002.nc", f"results/runs/{run}/robustness/epoch_002.h5"]
    proc = subprocess.run([SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
                           "--configfile", str(SMOKE_CONFIG), "--workflow-profile", str(profile), *targets],
                          env=slurm_cluster.env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:] + slurm_cluster.logs()

    # jobs really went through SLURM: the cluster remembers one per rule (MinJobAge is long)
    submitted = slurm_cluster.run("squeue", "-h", "-t", "all", "-o", "%k").stdout.split()
    for rule in ("pretrain", "finetune", "invert", "stir_scores", "robustness"):
        assert any(name.startswith(f"rule_{rule}") for name in submitted), (rule, submitted)

    # the local run is asked for only now: the shared smoke run computes while the SLURM jobs wait
    smoke_run = request.getfixturevalue("smoke_run")
    for target in targets:
        if target.endswith(".nc"):
            on_slurm, local = (xr.load_dataset(root / target, engine="h5netcdf") for root in (workdir, smoke_run))
            assert set(on_slurm.data_vars) == set(local.data_vars), target
            arrays = {name: (on_slurm[name].values, local[name].values) for name in local.data_vars}
        else:
            with h5py.File(workdir / target) as a, h5py.File(smoke_run / target) as b:
                assert set(a) == set(b), target
                arrays = {name: (a[name][()], b[name][()]) for name in b}
        assert arrays, target
        for name, (a, b) in arrays.items():
            if np.issubdtype(np.asarray(a).dtype, np.floating):
                # same seeds, same CPU, same thread counts: the same numbers (to float64 round-off)
                np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=f"{target}: {name}")
            else:
                assert np.array_equal(a, b), f"{target}: {name}"
