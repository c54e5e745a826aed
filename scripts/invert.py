"""invert: the inverted images X' of one checkpoint's blocks (one batched pass), for the run's STIR image set."""

import torch

from stirflow.data import read_image_h5, select_indices, to_tensor
from stirflow.inversion import invert_blocks, save_inversion
from stirflow.models import load_checkpoint, prepare_for_inversion
from stirflow.workflow import pick_device, run_script


def main(sm):
    s, compute = sm.params.stir, sm.params.compute
    device = pick_device(compute["device"])
    blocks = [int(b) for b in sm.wildcards.blocks.split("-")]
    model = prepare_for_inversion(load_checkpoint(sm.input.checkpoint, device), compile=compute["compile"],
                                  fused_attention=compute["fused_attention"])
    test = read_image_h5(sm.input.images)
    indices = select_indices(len(test), s["n_images"], s["image_seed"], s["image_selection"])
    x = to_tensor(test.images[indices]).to(device)
    label = f"{sm.wildcards.run} epoch {int(sm.wildcards.epoch)} blocks {blocks}: "
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=compute["bf16"]):
        results = invert_blocks(model, x, blocks, steps=s["steps"], step_size=s["step_size"],
                                step_schedule=s["step_schedule"], final_step_size=s["final_step_size"],
                                seed=s["seed"], start=s["start"], representation=s["representation"],
                                norm_p=s["norm_p"], chunk_size=s["chunk_size"] or None, log_every=s["log_every"],
                                label=label, cuda_graphs=compute["cuda_graphs"],
                                memory_fraction=compute["chunk_memory_fraction"] or None)
    save_inversion(sm.output[0], results, indices, run=sm.wildcards.run, epoch=int(sm.wildcards.epoch),
                   checkpoint=str(sm.input.checkpoint), images=str(sm.input.images),
                   **{k: v for k, v in s.items() if k not in ("log_every", "chunk_size")},
                   **{k: compute[k] for k in ("bf16", "compile", "cuda_graphs", "fused_attention")})


run_script(snakemake, main)  # noqa: F821
