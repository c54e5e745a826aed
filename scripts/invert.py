"""invert: the inverted images X' of one checkpoint's block, for the run's STIR image set."""

import torch

from stirflow.data import read_image_h5, select_indices, to_tensor
from stirflow.invert import invert_fn, save_inversion
from stirflow.models import block_representation, load_checkpoint, prepare_for_inversion
from stirflow.workflow import pick_device, run_script


def main(sm):
    s, compute = sm.params.stir, sm.params.compute
    device = pick_device(compute["device"])
    block = int(sm.wildcards.block)
    model = prepare_for_inversion(load_checkpoint(sm.input.checkpoint, device), compile=compute["compile"])
    test = read_image_h5(sm.input.images)
    indices = select_indices(len(test), s["n_images"], s["image_seed"])
    x = to_tensor(test.images[indices]).to(device)
    label = f"{sm.wildcards.run} epoch {int(sm.wildcards.epoch)} block {block}: "
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=compute["bf16"]):
        result = invert_fn(block_representation(model, block, s["representation"]), x, steps=s["steps"],
                           step_size=s["step_size"], seed=s["seed"], start=s["start"], norm_p=s["norm_p"],
                           batch_size=s["batch_size"] or None, log_every=s["log_every"], label=label)
    save_inversion(sm.output[0], result, indices, block=block, run=sm.wildcards.run, epoch=int(sm.wildcards.epoch),
                   checkpoint=str(sm.input.checkpoint), images=str(sm.input.images),
                   **{k: v for k, v in s.items() if k != "log_every"}, bf16=compute["bf16"])


run_script(snakemake, main)  # noqa: F821
