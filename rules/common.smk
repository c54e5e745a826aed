# Shared definitions: the validated config, output locations and the DAG's index sets.
# Rules get their settings through `params:` from their own config sub-section only, so that
# Snakemake's params trigger reruns exactly the jobs a config change affects.

import sys

from snakemake.exceptions import WorkflowError

sys.path.insert(0, str(Path(workflow.basedir) / "src"))  # the library, also without `pip install`

from stirflow.config import (
    ConfigError,
    convergence_blocks,
    convergence_sample,
    convergence_steps,
    expand_runs,
    model_layers,
    model_spec,
    run_training,
    stir_blocks,
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
BLOCKS = stir_blocks(config)
MODEL_LAYERS = model_layers(config)  # what a layer is: blocks of a ViT, stages of other models
LAYER_FILES = "blocks" if MODEL_LAYERS["layer_kind"] == "block" else "layers"  # inversion file names
_per_job = config["stir"]["blocks_per_job"] or len(BLOCKS)
BLOCK_GROUPS = [BLOCKS[i : i + _per_job] for i in range(0, len(BLOCKS), _per_job)]
PRETRAINED_WEIGHTS = config["pretrain"]["weights"]
CHECK_SAMPLE = convergence_sample(config)  # (run, epoch) pairs scored again with more steps
CHECK_BLOCKS = convergence_blocks(config)
CHECK_STEPS = convergence_steps(config)


wildcard_constraints:
    run="|".join(RUNS),
    epoch=r"\d{3}",
    blocks=r"\d{2}(-\d{2})*",
    dataset=r"[A-Za-z0-9_.-]+",


def code(script):
    """A hash of the library modules that scripts/<script>.py uses (directly or not), or a
    constant when tracking is switched off (docs/reruns.md)."""
    if not config["track_code_changes"]:
        return "untracked"
    return code_version(script_modules(Path(workflow.basedir) / "scripts" / f"{script}.py"))


def run_target(run):
    return RUN_CONFIGS[run]["target"]


def dataset_files(name, split):
    return f"{DATA}/{name}/{split}.h5"


def checkpoint_path(run, epoch):
    return f"{RES}/runs/{run}/checkpoints/epoch_{int(epoch):03d}.pt"


def block_group_name(blocks):
    return "-".join(f"{b:02d}" for b in blocks)


def inversion_path(run, epoch, blocks):
    return f"{RES}/runs/{run}/inversions/epoch_{int(epoch):03d}/{LAYER_FILES}_{block_group_name(blocks)}.h5"


def check_inversion_path(run, epoch):
    return (f"{RES}/runs/{run}/convergence/inversions/epoch_{int(epoch):03d}/"
            f"{LAYER_FILES}_{block_group_name(CHECK_BLOCKS)}.h5")


def figure_files():
    formats = config["figures"]["formats"]
    return [f"{RES}/figures/{name}.{ext}" for name in FIGURES for ext in formats]


def run_identity(run):
    """What a run is (the finetune job's ``run`` param); its settings are in ``run_training``."""
    return {k: RUN_CONFIGS[run][k] for k in ("name", "target", "init", "task")}


def run_summary(run):
    """What aggregate needs to know of a run: identity, seed, condition and settings."""
    r = RUN_CONFIGS[run]
    return {**run_identity(run), "seed": r["seed"], "condition": r["condition"],
            "settings": run_training(config, r)}


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
            inputs["init"] = f"{RES}/pretrain/checkpoints/epoch_{config['pretrain']['epochs']:03d}.pt"
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
