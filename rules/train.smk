# Training: pretraining on the source set, then finetuning every configured run
# (from the pretrained weights or from scratch) with a checkpoint after every epoch.


from stirflow.config import check_weights_file, pretraining_models


# A weights file is loaded into the model on the meta device once, when the DAG is built (not in
# every job: a large .pth takes seconds to read), so a file of another architecture stops the
# workflow before any job, naming the key.
if workflow.is_main_process:
    try:
        check_weights_file(config)
    except ConfigError as err:
        raise WorkflowError(str(err)) from None


# Only runs from the pretrained init without pretrain.weights need a pretraining stage, one per
# model they finetune (rule `pretrain` for the default model, into results/pretrain/ as always;
# `pretrain_<name>` into results/pretrain-<name>/ for a model of `models`); otherwise asking for
# its outputs fails with Snakemake's "no rule to produce" instead of a job without a data set.
for _model in pretraining_models(config):

    rule:
        name:
            "pretrain" if _model == DEFAULT_MODEL else f"pretrain_{_model}"
        input:
            train=dataset_files(config["pretrain"]["dataset"], "train"),
            test=dataset_files(config["pretrain"]["dataset"], "test"),
        output:
            checkpoints=[pretrain_checkpoint(_model, e) for e in range(config["pretrain"]["epochs"] + 1)],
            history=f"{RES}/{pretrain_dir(_model)}/history.json",
        params:
            training=training_settings(config["pretrain"], bf16=config["compute"]["bf16"]),
            model=model_section(config, _model),
            resume_dir=f"{RES}/.resume/{pretrain_dir(_model)}",
            device=config["compute"]["device"],
            checkpoint_dtype=config["compute"]["checkpoint_dtype"],
            code=code("pretrain"),
        log:
            f"{RES}/logs/pretrain/{pretrain_dir(_model)}.log",
        benchmark:
            f"{RES}/benchmarks/pretrain/{pretrain_dir(_model)}.tsv"
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
        run=lambda w: run_identity(w.run),
        training=lambda w: run_training(config, RUN_CONFIGS[w.run]),
        model=lambda w: run_model(w.run),
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
