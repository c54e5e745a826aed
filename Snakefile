"""stirflow: what happens to a vision transformer's invariances when it is finetuned.

    snakemake --cores 2                      # the embedded default config (offline, minutes on a CPU)
    snakemake --configfile configs/paper.yaml --workflow-profile profiles/slurm
"""

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/stir.smk"
include: "rules/robustness.smk"
include: "rules/report.smk"


localrules:
    all,
    aggregate,
    figures,


rule all:
    input:
        f"{RES}/summary.nc",
        figure_files(),
    default_target: True
