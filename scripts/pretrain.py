"""pretrain: train the configured ViT on the source data set, a checkpoint after every epoch."""

import json

import torch

from stirflow.config import model_spec
from stirflow.data import read_image_h5
from stirflow.models import create_model
from stirflow.training import train
from stirflow.workflow import pick_device, run_script


def main(sm):
    train_set, test_set = read_image_h5(sm.input.train), read_image_h5(sm.input.test)
    spec = model_spec({"model": sm.params.model}, "classification", train_set.num_classes)
    torch.manual_seed(sm.params.training["seed"])
    model = create_model(spec)
    history = train(model, spec, train_set, test_set, sm.params.training, checkpoints=sm.output.checkpoints,
                    resume_dir=sm.params.resume_dir, run="pretrain", device=pick_device(sm.params.device),
                    checkpoint_dtype=sm.params.checkpoint_dtype,
                    extra_fingerprint=[sm.input.train, sm.params.code])
    with open(sm.output.history, "w") as f:
        json.dump(history, f, indent=1)


run_script(snakemake, main)  # noqa: F821
