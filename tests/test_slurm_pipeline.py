"""The pipeline on a real SLURM: configs/smoke.yaml through profiles/slurm gives a local run's results."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from conftest import REPO, SMOKE_CONFIG, SNAKEMAKE

pytest.importorskip("snakemake_executor_plugin_slurm", reason="snakemake-executor-plugin-slurm is not installed")

from slurm_cluster import adapt_profile, slurm_cluster  # noqa: E402,F401  (fixture)


@pytest.mark.slurm
@pytest.mark.slow
def test_smoke_config_on_slurm_equals_local_run(slurm_cluster, smoke_run, tmp_path):  # noqa: F811
    import subprocess

    # The test node has no GPU: a copy of the profile with gpu=0, memory scaled to the node.
    profile = adapt_profile(REPO / "profiles" / "slurm", tmp_path / "profile", partition=slurm_cluster.partition,
                            mem_mb="1500 * attempt", cores=slurm_cluster.cpus)
    workdir = tmp_path / "work"
    workdir.mkdir()
    proc = subprocess.run([SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
                           "--configfile", str(SMOKE_CONFIG), "--workflow-profile", str(profile)],
                          env=slurm_cluster.env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:] + slurm_cluster.logs()

    # jobs really went through SLURM: the cluster remembers one per rule (MinJobAge is long)
    submitted = slurm_cluster.run("squeue", "-h", "-t", "all", "-o", "%k").stdout.split()
    for rule in ("pretrain", "finetune", "invert", "stir_scores", "robustness"):
        assert any(name.startswith(f"rule_{rule}") for name in submitted), (rule, submitted)

    with xr.open_dataset(workdir / "results" / "summary.nc", engine="h5netcdf") as on_slurm, \
            xr.open_dataset(smoke_run / "results" / "summary.nc", engine="h5netcdf") as local:
        assert set(on_slurm.data_vars) == set(local.data_vars)
        for name in local.data_vars:
            a, b = on_slurm[name].values, local[name].values
            if np.issubdtype(a.dtype, np.floating):
                # same seeds, same CPU, same thread counts: the same numbers (to float64 round-off)
                np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=name)
            else:
                assert (a == b).all(), name
