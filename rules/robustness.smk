# Robustness: every checkpoint on the clean and the corrupted test images of its target.


rule robustness:
    input:
        checkpoint=lambda w: checkpoint_path(w.run, w.epoch),
        corrupted=lambda w: f"{RES}/corrupted/{run_target(w.run)}.h5",
    output:
        f"{RES}/runs/{{run}}/robustness/epoch_{{epoch}}.h5",
    params:
        device=config["compute"]["device"],
        code=code("robustness"),
    log:
        f"{RES}/logs/robustness/{{run}}/epoch_{{epoch}}.log",
    benchmark:
        f"{RES}/benchmarks/robustness/{{run}}/epoch_{{epoch}}.tsv"
    threads: config["compute"]["threads"]
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/stirflow.yaml"
    script:
        "../scripts/robustness.py"
