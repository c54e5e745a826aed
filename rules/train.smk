# Training: pretraining on the source set, then finetuning every configured run
# (from the pretrained weights or from scratch) with a checkpoint after every epoch.


# With pretrained weights (pretrain.weights) there is no pretraining stage: asking for its
# outputs then fails with Snakemake's "no rule to produce" instead of a job without a data set.
if PRETRAINED_WEIGHTS is None:

    rule pretrain:
        input:
            train=dataset_files(config["pretrain"]["dataset"], "train"),
            test=dataset_files(config["pretrain"]["dataset"], "test"),
        output:
            checkpoints=[f"{RES}/pretrain/checkpoints/epoch_{e:03d}.pt" for e in range(config["pretrain"]["epochs"] + 1)],
            history=f"{RES}/pretrain/history.json",
        params:
            training=training_settings(config["pretrain"]),
            model=config["model"],
            resume_dir=f"{RES}/.resume/pretrain",
            device=config["compute"]["device"],
            checkpoint_dtype=config["compute"]["checkpoint_dtype"],
            code=code("pretrain"),
        log:
            f"{RES}/logs/pretrain/pretrain.log",
        benchmark:
            f"{RES}/benchmarks/pretrain/pretrain.tsv"
        threads: config["compute"]["train_threads"]
        resources:
            mem_mb=8000,
            runtime=600,
        conda:
            "../envs/stirflow.yaml"
        script:
            "../scripts/pretrain.py"


rule finetune:
    input:
        unpack(finetune_inputs),
    output:
        checkpoints=[f"{RES}/runs/{{run}}/checkpoints/epoch_{e:03d}.pt" for e in EPOCHS],
        history=f"{RES}/runs/{{run}}/history.json",
    params:
        run=lambda w: run_config(config, w.run),
        training=training_settings(config["finetune"]),
        model=config["model"],
        weights=PRETRAINED_WEIGHTS,
        resume_dir=lambda w: f"{RES}/.resume/{w.run}",
        device=config["compute"]["device"],
        checkpoint_dtype=config["compute"]["checkpoint_dtype"],
        code=code("finetune"),
    log:
        f"{RES}/logs/finetune/{{run}}.log",
    benchmark:
        f"{RES}/benchmarks/finetune/{{run}}.tsv"
    threads: config["compute"]["train_threads"]
    resources:
        mem_mb=8000,
        runtime=1440,
    conda:
        "../envs/stirflow.yaml"
    script:
        "../scripts/finetune.py"
