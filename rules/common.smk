# Shared definitions: the validated config, output locations and the DAG's index sets.
# Rules get their settings through `params:` from their own config sub-section only, so that
# Snakemake's params trigger reruns exactly the jobs a config change affects.

import sys

from snakemake.exceptions import WorkflowError

sys.path.insert(0, str(Path(workflow.basedir) / "src"))  # the library, also without `pip install`

from stirflow.config import (
    DEFAULT_MODEL,
    ConfigError,
    convergence_blocks,
    convergence_sample,
    convergence_steps,
    evaluated_epochs,
    expand_runs,
    figure_names,
    model_layers,
    model_section,
    models_in_use,
    pretrain_dir,
    run_blocks,
    run_training,
    stir_epochs,
    training_settings,
    validate_config,
)
from stirflow.catalog import FIGURES, OFFLINE_KINDS
from stirflow.workflow import code_version, script_modules

try:
    _validated = validate_config(config)
except ConfigError as err:
    raise WorkflowError(str(err)) from None
config.clear()
config.update(_validated)

RES = config["results_dir"]
DATA = config["data_dir"]
RUN_CONFIGS = {run["name"]: run for run in expand_runs(config)}  # runs × grid × seeds
RUNS = list(RUN_CONFIGS)
EPOCHS = list(range(config["finetune"]["epochs"] + 1))
STIR_EPOCHS = stir_epochs(config)
ROBUSTNESS_EPOCHS = evaluated_epochs(config, "robustness")
ADVERSARIAL_EPOCHS = evaluated_epochs(config, "adversarial")
# Each run has its model's layers (blocks of a ViT, stages of other models): STIR scores its own.
MODEL_LAYERS = {m: model_layers(config, m) for m in models_in_use(config)}
RUN_BLOCKS = {r: run_blocks(config, RUN_CONFIGS[r]) for r in RUNS}


def block_groups(blocks):
    """A checkpoint's layers split into the groups one inversion job each inverts (stir.blocks_per_job)."""
    per_job = config["stir"]["blocks_per_job"] or len(blocks)
    return [blocks[i : i + per_job] for i in range(0, len(blocks), per_job)]


RUN_BLOCK_GROUPS = {r: block_groups(b) for r, b in RUN_BLOCKS.items()}
PRETRAINED_WEIGHTS = config["pretrain"]["weights"]
CHECK_SAMPLE = convergence_sample(config)  # (run, epoch) pairs scored again with more steps
CHECK_BLOCKS = {r: convergence_blocks(config, RUN_CONFIGS[r]["model"]) for r, _ in CHECK_SAMPLE}
CHECK_STEPS = convergence_steps(config)


wildcard_constraints:
    run="|".join(RUNS),
    epoch=r"\d{3}",
    blocks=r"\d{2}(-\d{2})*",
    layer_files="blocks|layers",
    dataset=r"[A-Za-z0-9_.-]+",


def code(script):
    """A hash of the library modules that scripts/<script>.py uses (directly or not), or a
    constant when tracking is switched off (docs/reruns.md)."""
    if not config["track_code_changes"]:
        return "untracked"
    return code_version(script_modules(Path(workflow.basedir) / "scripts" / f"{script}.py"))


def run_target(run):
    return RUN_CONFIGS[run]["target"]


def run_model(run):
    """The model section a run finetunes (``model``, or its entry of ``models``)."""
    return model_section(config, RUN_CONFIGS[run]["model"])


def layer_files(run):
    """How a run's inversion files are named: ``blocks_*`` for a ViT's blocks, ``layers_*`` otherwise."""
    return "blocks" if MODEL_LAYERS[RUN_CONFIGS[run]["model"]]["layer_kind"] == "block" else "layers"


def pretrain_checkpoint(model, epoch):
    return f"{RES}/{pretrain_dir(model)}/checkpoints/epoch_{int(epoch):03d}.pt"


def dataset_files(name, split):
    return f"{DATA}/{name}/{split}.h5"


def checkpoint_path(run, epoch):
    return f"{RES}/runs/{run}/checkpoints/epoch_{int(epoch):03d}.pt"


def block_group_name(blocks):
    return "-".join(f"{b:02d}" for b in blocks)


def inversion_path(run, epoch, blocks):
    return f"{RES}/runs/{run}/inversions/epoch_{int(epoch):03d}/{layer_files(run)}_{block_group_name(blocks)}.h5"


def check_inversion_path(run, epoch):
    return (f"{RES}/runs/{run}/convergence/inversions/epoch_{int(epoch):03d}/"
            f"{layer_files(run)}_{block_group_name(CHECK_BLOCKS[run])}.h5")


FIGURE_NAMES = figure_names(config)  # every figure, less those of an open question's axis the config does not vary


def figure_files():
    formats = config["figures"]["formats"]
    return [f"{RES}/figures/{name}.{ext}" for name in FIGURE_NAMES for ext in formats]


def run_identity(run):
    """What a run is (the finetune job's ``run`` param); its settings are in ``run_training``."""
    return {k: RUN_CONFIGS[run][k] for k in ("name", "target", "init", "task")}


def run_summary(run):
    """What aggregate needs to know of a run: identity, seed, condition, settings and its model's layers."""
    r = RUN_CONFIGS[run]
    layers = MODEL_LAYERS[r["model"]]
    return {**run_identity(run), "seed": r["seed"], "condition": r["condition"],
            "settings": run_training(config, r), "model": r["model"],
            "layers": {k: layers[k] for k in ("model", "layer_kind", "layer_modules", "depth")}}


def dataset_spec(name):
    return config["datasets"][name]


def download_settings(name):
    """The download section for a data set that is downloaded; nothing for one made offline, so
    that download settings never rerun its preparation."""
    return {} if dataset_spec(name)["kind"] in OFFLINE_KINDS else config["download"]


def corrupt_inputs(w):
    inputs = {"test": dataset_files(w.dataset, "test")}
    source = dataset_spec(w.dataset).get("corrupted")
    if source:
        inputs["corrupted_source"] = f"{DATA}/{source}/index.json"
    return inputs


def finetune_inputs(w):
    run = RUN_CONFIGS[w.run]
    inputs = {"train": dataset_files(run["target"], "train"), "test": dataset_files(run["target"], "test")}
    if run["init"] == "pretrained":
        weights = config["pretrain"]["weights"]
        if weights is None:
            inputs["init"] = pretrain_checkpoint(run["model"], config["pretrain"]["epochs"])
        elif weights.get("file"):
            inputs["init"] = weights["file"]
    return inputs


def report_figure(name, ext):
    subcategory, title = FIGURES[name]  # where the figure goes in the report, and its name there
    return report(
        f"{RES}/figures/{name}.{ext}",
        caption=f"../report/{name}.rst",
        category="Figures",
        subcategory=subcategory,
        labels={"figure": title, "format": ext.upper()},
    )
