# Data: prepared image sets (offline ones generated, public ones downloaded and converted),
# and the corrupted test set of each finetuning target.


rule prepare_dataset:
    output:
        train=f"{DATA}/{{dataset}}/train.h5",
        test=f"{DATA}/{{dataset}}/test.h5",
    params:
        name=lambda w: w.dataset,
        spec=lambda w: dataset_spec(w.dataset),
        download=lambda w: download_settings(w.dataset),
        download_dir=f"{DATA}/downloads",
        code=code("prepare_dataset"),
    log:
        f"{RES}/logs/prepare_dataset/{{dataset}}.log",
    benchmark:
        f"{RES}/benchmarks/prepare_dataset/{{dataset}}.tsv"
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../envs/stirflow.yaml"
    script:
        "../scripts/prepare_dataset.py"


rule prepare_corruption_set:
    output:
        index=f"{DATA}/{{dataset}}/index.json",
    params:
        name=lambda w: w.dataset,
        spec=lambda w: dataset_spec(w.dataset),
        download=lambda w: download_settings(w.dataset),
        download_dir=f"{DATA}/downloads",
        code=code("prepare_dataset"),
    log:
        f"{RES}/logs/prepare_corruption_set/{{dataset}}.log",
    benchmark:
        f"{RES}/benchmarks/prepare_corruption_set/{{dataset}}.tsv"
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        "../envs/stirflow.yaml"
    script:
        "../scripts/prepare_dataset.py"


rule corrupt_dataset:
    input:
        unpack(corrupt_inputs),
    output:
        f"{RES}/corrupted/{{dataset}}.h5",
    params:
        robustness={k: config["robustness"][k] for k in ("corruptions", "severities", "n_images", "seed")},
        device=config["compute"]["device"],
        code=code("corrupt_dataset"),
    log:
        f"{RES}/logs/corrupt_dataset/{{dataset}}.log",
    benchmark:
        f"{RES}/benchmarks/corrupt_dataset/{{dataset}}.tsv"
    threads: config["compute"]["threads"]
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/stirflow.yaml"
    script:
        "../scripts/corrupt_dataset.py"
