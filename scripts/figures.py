"""figures: the figures of stirflow.plots.FIGURES that the rule outputs, from summary.nc."""

from pathlib import Path

import xarray as xr

from stirflow.plots import draw_all
from stirflow.workflow import log, run_script


def main(sm):
    try:
        with xr.open_dataset(sm.input.summary, engine="h5netcdf") as ds:
            ds = ds.load()
    except (OSError, ValueError) as err:  # h5py's message for a truncated file does not name it
        raise OSError(f"{sm.input.summary}: cannot read the summary ({err})") from err
    names = list(dict.fromkeys(Path(p).stem for p in sm.output))  # the config's figures (common.smk: FIGURE_NAMES)
    for path in draw_all(ds, Path(sm.output[0]).parent, sm.params.figures, names, processes=sm.threads):
        log.info("wrote %s", path)


run_script(snakemake, main)  # noqa: F821
