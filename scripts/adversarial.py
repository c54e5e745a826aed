"""adversarial: PGD accuracy of every checkpoint of one classification run, in one file."""

import torch

from stirflow.adversarial import adversarial_accuracy, save_adversarial
from stirflow.data import read_image_h5, select_indices, to_tensor
from stirflow.models import load_checkpoint
from stirflow.workflow import log, pick_device, run_script


def main(sm):
    a = sm.params.adversarial
    device = pick_device(sm.params.device)
    test = read_image_h5(sm.input.images)
    index = select_indices(len(test), a["n_images"], a["seed"])
    images, labels = to_tensor(test.images[index]), torch.from_numpy(test.labels[index]).long()
    eps = {norm: radii for norm, radii in a["eps"].items() if radii}
    results = []
    for epoch, checkpoint in zip(sm.params.epochs, sm.input.checkpoints):
        model = load_checkpoint(checkpoint, device)
        if model.task != "classification":
            raise ValueError(f"{checkpoint}: adversarial accuracy needs a classification model, not {model.task}")
        results.append(adversarial_accuracy(model, images, labels, eps=eps, steps=a["steps"], step_size=a["step_size"],
                                            random_start=a["random_start"], seed=a["seed"], batch_size=a["batch_size"]))
        log.info("epoch %d: %s", epoch, {n: [round(float(v), 4) for v in acc] for n, acc in results[-1].items()})
    save_adversarial(sm.output[0], sm.params.epochs, results, eps, run=sm.wildcards.run, n_images=len(index),
                     steps=a["steps"], step_size=a["step_size"], random_start=a["random_start"], seed=a["seed"])


run_script(snakemake, main)  # noqa: F821
