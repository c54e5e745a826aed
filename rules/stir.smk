# STIR: one inversion per (checkpoint, block), reused by every score that needs it (blocks of a
# checkpoint may share a job and a batched pass: stir.blocks_per_job);
# scores per (run, epoch) against the run's epoch 0 (the model before finetuning). Each run scores
# its own model's layers (RUN_BLOCKS); inversion files say what a layer is: blocks_* of a ViT,
# layers_* of other models.

INVERSION_KEYS = ("n_images", "image_selection", "image_seed", "steps", "step_size", "step_schedule",
                  "final_step_size", "start", "representation", "norm_p", "seed", "chunk_size", "log_every")
INVERSION_PARAMS = {k: config["stir"][k] for k in INVERSION_KEYS}
INVERSION_COMPUTE = {k: config["compute"][k] for k in ("device", "bf16", "compile", "cuda_graphs", "fused_attention",
                                                       "chunk_memory_fraction")}


rule invert:
    input:
        checkpoint=lambda w: checkpoint_path(w.run, w.epoch),
        images=lambda w: dataset_files(run_target(w.run), "test"),
    output:
        f"{RES}/runs/{{run}}/inversions/epoch_{{epoch}}/{{layer_files}}_{{blocks}}.h5",
    params:
        stir=INVERSION_PARAMS,
        compute=INVERSION_COMPUTE,
        code=code("invert"),
    log:
        f"{RES}/logs/invert/{{run}}/epoch_{{epoch}}_{{layer_files}}_{{blocks}}.log",
    benchmark:
        f"{RES}/benchmarks/invert/{{run}}/epoch_{{epoch}}_{{layer_files}}_{{blocks}}.tsv"
    group:
        "invert"
    threads: config["compute"]["threads"]
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../envs/stirflow.yaml"
    script:
        "../scripts/invert.py"


rule stir_scores:
    input:
        ref_checkpoint=lambda w: checkpoint_path(w.run, 0),
        checkpoint=lambda w: checkpoint_path(w.run, w.epoch),
        ref_inversions=lambda w: [inversion_path(w.run, 0, g) for g in RUN_BLOCK_GROUPS[w.run]],
        inversions=lambda w: [inversion_path(w.run, w.epoch, g) for g in RUN_BLOCK_GROUPS[w.run]],
        images=lambda w: dataset_files(run_target(w.run), "test"),
    output:
        f"{RES}/runs/{{run}}/stir/epoch_{{epoch}}.nc",
    params:
        blocks=lambda w: RUN_BLOCKS[w.run],
        representation=config["stir"]["representation"],
        similarity=config["stir"]["similarity"],
        bootstrap=config["stir"]["image_bootstrap"],
        device=config["compute"]["device"],
        code=code("stir_scores"),
    log:
        f"{RES}/logs/stir_scores/{{run}}/epoch_{{epoch}}.log",
    benchmark:
        f"{RES}/benchmarks/stir_scores/{{run}}/epoch_{{epoch}}.tsv"
    threads: config["compute"]["threads"]
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../envs/stirflow.yaml"
    script:
        "../scripts/stir_scores.py"


# The convergence check (DESIGN §2): a sample of (run, epoch) scored again from inversions with
# convergence.factor × the steps; aggregate compares their learning and forgetting with the
# measurement's. The check inverts each sampled checkpoint and its run's epoch 0 once, all the
# checked blocks in one job.


rule invert_check:
    input:
        checkpoint=lambda w: checkpoint_path(w.run, w.epoch),
        images=lambda w: dataset_files(run_target(w.run), "test"),
    output:
        f"{RES}/runs/{{run}}/convergence/inversions/epoch_{{epoch}}/{{layer_files}}_{{blocks}}.h5",
    params:
        stir={**INVERSION_PARAMS, "steps": CHECK_STEPS},
        compute=INVERSION_COMPUTE,
        code=code("invert"),
    log:
        f"{RES}/logs/invert_check/{{run}}/epoch_{{epoch}}_{{layer_files}}_{{blocks}}.log",
    benchmark:
        f"{RES}/benchmarks/invert_check/{{run}}/epoch_{{epoch}}_{{layer_files}}_{{blocks}}.tsv"
    group:
        "invert"
    threads: config["compute"]["threads"]
    resources:
        mem_mb=4000,
        runtime=240,
    conda:
        "../envs/stirflow.yaml"
    script:
        "../scripts/invert.py"


rule stir_scores_check:
    input:
        ref_checkpoint=lambda w: checkpoint_path(w.run, 0),
        checkpoint=lambda w: checkpoint_path(w.run, w.epoch),
        ref_inversions=lambda w: [check_inversion_path(w.run, 0)],
        inversions=lambda w: [check_inversion_path(w.run, w.epoch)],
        images=lambda w: dataset_files(run_target(w.run), "test"),
    output:
        f"{RES}/runs/{{run}}/convergence/epoch_{{epoch}}.nc",
    params:
        blocks=lambda w: CHECK_BLOCKS[w.run],
        representation=config["stir"]["representation"],
        similarity=config["stir"]["similarity"],
        bootstrap=0,
        device=config["compute"]["device"],
        code=code("stir_scores"),
    log:
        f"{RES}/logs/stir_scores_check/{{run}}/epoch_{{epoch}}.log",
    benchmark:
        f"{RES}/benchmarks/stir_scores_check/{{run}}/epoch_{{epoch}}.tsv"
    threads: config["compute"]["threads"]
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../envs/stirflow.yaml"
    script:
        "../scripts/stir_scores.py"
