"""aggregate: every score into results/summary.nc (xarray, NetCDF4 through h5netcdf) and the CSV tables."""

import json

from stirflow.analysis import aggregate, summarise, write_tables
from stirflow.files import atomic_path
from stirflow.findings import convergence_lines, findings_dataset, findings_table, summary_html
from stirflow.workflow import log, run_script


def main(sm):
    ds = aggregate(sm.params.runs, sm.input.stir, sm.input.robustness, sm.input.histories,
                   convergence_files=sm.input.convergence, convergence=sm.params.convergence,
                   reference_run=sm.params.reference_run, adversarial_files=sm.input.adversarial)
    ds = summarise(ds, sm.params.analysis)
    findings = findings_table(ds, bootstrap=sm.params.analysis["bootstrap"], seed=sm.params.analysis["seed"])
    ds = ds.merge(findings_dataset(findings), combine_attrs="override")
    with atomic_path(sm.output.findings) as tmp:
        findings.to_csv(tmp, index=False)
    with atomic_path(sm.output.overview) as tmp:
        tmp.write_text(summary_html(ds, findings))
    log.info("findings:\n%s", findings[["finding", "target", "task", "init", "value", "ci_low", "ci_high",
                                        "verdict"]].to_string())
    ds.attrs["analysis"] = json.dumps(dict(sm.params.analysis), sort_keys=True)
    ds.attrs["reference_run"] = sm.params.reference_run or ""
    # what a layer is (a ViT's blocks, another model's stages): per run in the coordinates, and here
    # the architectures and layer kinds of all runs
    ds.attrs.update(model=", ".join(dict.fromkeys(map(str, ds["architecture"].values))),
                    layer_kind=", ".join(dict.fromkeys(map(str, ds["layer_kind"].values))))
    with atomic_path(sm.output.summary) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf")
    write_tables(ds, sm.output.correlations, sm.output.checkpoints)
    for line in convergence_lines(ds):
        (log.warning if line.startswith("NOT CONVERGED") else log.info)("%s", line)
    log.info("%s", ds)


run_script(snakemake, main)  # noqa: F821
