"""figures: every figure of stirflow.plots.FIGURES from summary.nc."""

import xarray as xr

from stirflow.plots import draw_all
from stirflow.workflow import log, run_script


def main(sm):
    with xr.open_dataset(sm.input.summary, engine="h5netcdf") as ds:
        for path in draw_all(ds.load(), sm.params.directory, sm.params.figures):
            log.info("wrote %s", path)


run_script(snakemake, main)  # noqa: F821
