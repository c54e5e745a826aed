# Robustness: every checkpoint on the clean and the corrupted test images of its target.
# One job scores a group of a run's checkpoints (robustness.checkpoints_per_job; 0: all of them),
# loading the corrupted set once: a short evaluation costs less than starting a process for it.
# A group's outputs are its checkpoints' files, so a rule is made per group of epochs: `robustness`
# when a run's checkpoints form one group, else `robustness_<first>_<last>`.

# robustness.epochs chooses the checkpoints ("stir": those scored with STIR).

_per_job = config["robustness"]["checkpoints_per_job"] or len(ROBUSTNESS_EPOCHS)
ROBUSTNESS_GROUPS = [ROBUSTNESS_EPOCHS[i : i + _per_job] for i in range(0, len(ROBUSTNESS_EPOCHS), _per_job)]


for _epochs in ROBUSTNESS_GROUPS:

    rule:
        name:
            "robustness" if len(ROBUSTNESS_GROUPS) == 1 else f"robustness_{_epochs[0]:03d}_{_epochs[-1]:03d}"
        input:
            checkpoints=lambda w, epochs=_epochs: [checkpoint_path(w.run, e) for e in epochs],
            corrupted=lambda w: f"{RES}/corrupted/{run_target(w.run)}.h5",
        output:
            [f"{RES}/runs/{{run}}/robustness/epoch_{e:03d}.h5" for e in _epochs],
        params:
            epochs=_epochs,
            device=config["compute"]["device"],
            code=code("robustness"),
        log:
            f"{RES}/logs/robustness/{{run}}/epochs_{_epochs[0]:03d}-{_epochs[-1]:03d}.log",
        benchmark:
            f"{RES}/benchmarks/robustness/{{run}}/epochs_{_epochs[0]:03d}-{_epochs[-1]:03d}.tsv"
        threads: config["compute"]["threads"]
        resources:
            mem_mb=4000,
            runtime=60,
        conda:
            "../envs/stirflow.yaml"
        script:
            "../scripts/robustness.py"


# Adversarial robustness: PGD accuracy of a classification run's checkpoints (adversarial.epochs),
# one job per run.
ADVERSARIAL_RUNS = (
    [r for r in RUNS if RUN_CONFIGS[r]["task"] == "classification"] if config["adversarial"]["enabled"] else []
)


rule adversarial:
    input:
        checkpoints=lambda w: [checkpoint_path(w.run, e) for e in ADVERSARIAL_EPOCHS],
        images=lambda w: dataset_files(run_target(w.run), "test"),
    output:
        f"{RES}/runs/{{run}}/adversarial.h5",
    params:
        adversarial={k: v for k, v in config["adversarial"].items() if k not in ("enabled", "epochs")},
        epochs=ADVERSARIAL_EPOCHS,
        device=config["compute"]["device"],
        code=code("adversarial"),
    log:
        f"{RES}/logs/adversarial/{{run}}.log",
    benchmark:
        f"{RES}/benchmarks/adversarial/{{run}}.tsv"
    threads: config["compute"]["threads"]
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../envs/stirflow.yaml"
    script:
        "../scripts/adversarial.py"
