"""finetune: one run (a target, an init, a task), a checkpoint after every epoch including epoch 0."""

import json

from stirflow.config import model_spec
from stirflow.data import read_image_h5
from stirflow.models import initial_model
from stirflow.training import train
from stirflow.workflow import pick_device, run_script


def main(sm):
    run = sm.params.run
    train_set, test_set = read_image_h5(sm.input.train), read_image_h5(sm.input.test)
    spec = model_spec({"model": sm.params.model}, run["task"], train_set.num_classes)
    init = sm.input.init if "init" in sm.input.keys() else None
    model = initial_model(spec, run["init"], seed=sm.params.training["seed"], init_checkpoint=init,
                          weights=sm.params.weights)
    history = train(model, spec, train_set, test_set, sm.params.training, checkpoints=sm.output.checkpoints,
                    resume_dir=sm.params.resume_dir, run=run["name"], device=pick_device(sm.params.device),
                    checkpoint_dtype=sm.params.checkpoint_dtype,
                    extra_fingerprint=[run, sm.params.weights, init, sm.input.train, sm.params.code])
    with open(sm.output.history, "w") as f:
        json.dump(history, f, indent=1)


run_script(snakemake, main)  # noqa: F821
