"""robustness: one checkpoint's clean and corrupted test scores."""

from stirflow.models import load_checkpoint
from stirflow.robustness import evaluate_robustness, load_corrupted_set, save_robustness
from stirflow.workflow import log, pick_device, run_script


def main(sm):
    model = load_checkpoint(sm.input.checkpoint, pick_device(sm.params.device))
    cs = load_corrupted_set(sm.input.corrupted)
    scores = evaluate_robustness(model, cs)
    log.info("clean %s, mean corrupted %.4f", {k: v for k, v in scores.items() if k.startswith("clean")},
             float(scores.get("accuracy", scores.get("error")).mean()))
    save_robustness(sm.output[0], scores, cs, task=model.task, run=sm.wildcards.run, epoch=int(sm.wildcards.epoch))


run_script(snakemake, main)  # noqa: F821
