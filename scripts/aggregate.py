"""aggregate: every score into results/summary.nc (xarray, NetCDF4 through h5netcdf) and the CSV tables."""

from stirflow.analysis import aggregate, summarise, write_tables
from stirflow.workflow import log, run_script


def main(sm):
    ds = aggregate(sm.params.runs, sm.input.stir, sm.input.robustness, sm.input.histories,
                   reference_run=sm.params.reference_run)
    ds = summarise(ds, sm.params.analysis)
    ds.attrs["analysis"] = str(dict(sm.params.analysis))
    ds.to_netcdf(sm.output.summary, engine="h5netcdf")
    write_tables(ds, sm.output.correlations)
    log.info("%s", ds)


run_script(snakemake, main)  # noqa: F821
