"""robustness: clean and corrupted test scores of a group of one run's checkpoints, one file each."""

from stirflow.models import load_checkpoint
from stirflow.robustness import evaluate_robustness, load_corrupted_set, save_robustness
from stirflow.workflow import log, pick_device, run_script


def main(sm):
    device = pick_device(sm.params.device)
    cs = load_corrupted_set(sm.input.corrupted)  # once for every checkpoint of the job
    for epoch, checkpoint, output in zip(sm.params.epochs, sm.input.checkpoints, sm.output):
        model = load_checkpoint(checkpoint, device)
        scores = evaluate_robustness(model, cs)
        log.info("epoch %d: clean %s, mean corrupted %.4f", epoch,
                 {k: v for k, v in scores.items() if k.startswith("clean")},
                 float(scores.get("accuracy", scores.get("error")).mean()))
        save_robustness(output, scores, cs, task=model.task, run=sm.wildcards.run, epoch=epoch)


run_script(snakemake, main)  # noqa: F821
