"""stirflow: what happens to a vision transformer's invariances when it is finetuned.

    snakemake --cores 2                      # the embedded default config (offline, minutes on a CPU)
    snakemake --configfile configs/paper.yaml --workflow-profile profiles/slurm
"""

import os

from snakemake.utils import min_version

min_version("9.0")


report: "report/workflow.rst"


# The embedded default applies only when no --configfile is given: a user's config file replaces it
# whole (every default lives in the schema), so settings of the tiny default never leak into it.
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config.yaml")


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
