"""aggregate: every score into results/summary.nc (xarray, NetCDF4 through h5netcdf) and the CSV tables."""

import json

from stirflow.analysis import aggregate, summarise, unconverged, write_tables
from stirflow.files import atomic_path
from stirflow.workflow import log, run_script


def main(sm):
    ds = aggregate(sm.params.runs, sm.input.stir, sm.input.robustness, sm.input.histories,
                   convergence_files=sm.input.convergence, convergence=sm.params.convergence,
                   reference_run=sm.params.reference_run)
    ds = summarise(ds, sm.params.analysis)
    ds.attrs["analysis"] = json.dumps(dict(sm.params.analysis), sort_keys=True)
    ds.attrs["reference_run"] = sm.params.reference_run or ""
    with atomic_path(sm.output.summary) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf")
    write_tables(ds, sm.output.correlations, sm.output.checkpoints)
    if "converged" in ds:
        bad = unconverged(ds)
        tolerance = ds.attrs["convergence_tolerance"]
        if bad:
            log.warning("NOT CONVERGED within %g (%d of %d checked):\n  %s", tolerance, len(bad),
                        int(ds["converged"].notnull().sum()), "\n  ".join(bad))
        else:
            log.info("converged: every checked learning and forgetting moves by at most %g (largest %.4f)",
                     tolerance, ds.attrs["convergence_largest_delta"])
    log.info("%s", ds)


run_script(snakemake, main)  # noqa: F821
