"""aggregate: every score into results/summary.nc (xarray, NetCDF4 through h5netcdf) and the CSV tables."""

import json

from stirflow.analysis import aggregate, summarise, write_tables
from stirflow.workflow import log, run_script


def main(sm):
    ds = aggregate(sm.params.runs, sm.input.stir, sm.input.robustness, sm.input.histories,
                   reference_run=sm.params.reference_run)
    ds = summarise(ds, sm.params.analysis)
    ds.attrs["analysis"] = json.dumps(dict(sm.params.analysis), sort_keys=True)
    ds.attrs["reference_run"] = sm.params.reference_run or ""
    model = sm.params.model  # what a layer is: a ViT's blocks, another model's stages
    ds.attrs.update(model=model["model"], layer_kind=model["layer_kind"])
    ds = ds.assign_coords(layer_module=("layer", [model["layer_modules"][int(b) - 1] for b in ds["layer"].values]))
    ds.to_netcdf(sm.output.summary, engine="h5netcdf")
    write_tables(ds, sm.output.correlations, sm.output.checkpoints)
    log.info("%s", ds)


run_script(snakemake, main)  # noqa: F821
