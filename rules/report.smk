# Aggregation of every score into one xarray Dataset, and the figures drawn from it alone.
# Outputs marked report() make up `snakemake --report results/report.html`: every figure (PNG and
# PDF) with its caption from report/<figure>.rst, and the CSV tables. The landing page
# (report/workflow.rst, the Snakefile's `report:`) describes the workflow and shows the config.

rule aggregate:
    input:
        stir=[f"{RES}/runs/{r}/stir/epoch_{e:03d}.nc" for r in RUNS for e in STIR_EPOCHS],
        convergence=[f"{RES}/runs/{r}/convergence/epoch_{e:03d}.nc" for r, e in CHECK_SAMPLE],
        robustness=[f"{RES}/runs/{r}/robustness/epoch_{e:03d}.h5" for r in RUNS for e in ROBUSTNESS_EPOCHS],
        histories=[f"{RES}/runs/{r}/history.json" for r in RUNS],
        adversarial=[f"{RES}/runs/{r}/adversarial.h5" for r in ADVERSARIAL_RUNS],
    output:
        summary=f"{RES}/summary.nc",
        correlations=report(
            f"{RES}/tables/correlations.csv",
            caption="../report/correlations.rst",
            category="Tables",
            labels={"table": "Forgetting spread against robustness; early-stopping indicator"},
        ),
        overview=report(
            f"{RES}/report/overview.html",
            caption="../report/overview.rst",
            category="0. Findings and convergence",
            labels={"page": "The paper's findings and the convergence of the inversions"},
        ),
        findings=report(
            f"{RES}/tables/findings.csv",
            caption="../report/findings.rst",
            category="Tables",
            labels={"table": "The paper's findings: statistic, interval, verdict"},
        ),
        checkpoints=report(
            f"{RES}/tables/checkpoints.csv",
            caption="../report/checkpoints.rst",
            category="Tables",
            labels={"table": "Robustness of every checkpoint"},
        ),
    params:
        runs=[run_summary(r) for r in RUNS],
        analysis=config["analysis"],
        convergence={k: config["convergence"][k] for k in ("factor", "tolerance")},
        reference_run=config["robustness"]["reference_run"],
        code=code("aggregate"),
    log:
        f"{RES}/logs/aggregate/aggregate.log",
    benchmark:
        f"{RES}/benchmarks/aggregate/aggregate.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/stirflow.yaml"
    script:
        "../scripts/aggregate.py"


rule figures:
    input:
        summary=f"{RES}/summary.nc",
    output:
        [report_figure(name, ext) for name in FIGURE_NAMES for ext in config["figures"]["formats"]],
    params:
        figures=config["figures"],
        code=code("figures"),
    log:
        f"{RES}/logs/figures/figures.log",
    benchmark:
        f"{RES}/benchmarks/figures/figures.tsv"
    threads: 2  # figures drawn side by side (the last job: nothing else runs then)
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/stirflow.yaml"
    script:
        "../scripts/figures.py"
