"""stir_scores: learning, forgetting, the invariance flow and CKA matrices of one run's epoch."""

import numpy as np

from stirflow.data import read_image_h5, to_tensor
from stirflow.inversion import load_inversion
from stirflow.models import load_checkpoint, prepare_for_inversion
from stirflow.invariance import pair_scores, save_scores
from stirflow.workflow import pick_device, run_script


def load_set(paths, blocks, device):
    """{block: X'} from a checkpoint's inversion files (one per block group), all of one image set."""
    inverted, indices = {}, None
    for path in paths:
        images, info = load_inversion(path)
        if indices is not None and not np.array_equal(indices, info["indices"]):
            raise ValueError(f"{path}: inverted a different image set than the other blocks")
        indices = info["indices"]
        inverted.update({b: x.to(device) for b, x in images.items()})
    if sorted(inverted) != sorted(blocks):
        raise ValueError(f"{paths[0]}: inversions cover blocks {sorted(inverted)}, expected {sorted(blocks)}")
    return inverted, indices


def main(sm):
    device = pick_device(sm.params.device)
    blocks = list(sm.params.blocks)
    p = prepare_for_inversion(load_checkpoint(sm.input.ref_checkpoint, device))
    f = prepare_for_inversion(load_checkpoint(sm.input.checkpoint, device))
    inv_ref, idx_ref = load_set(sm.input.ref_inversions, blocks, device)
    inv_eval, idx_eval = load_set(sm.input.inversions, blocks, device)
    if not np.array_equal(idx_ref, idx_eval):
        raise ValueError(f"{sm.input.inversions[0]} and {sm.input.ref_inversions[0]} inverted different images")
    x = to_tensor(read_image_h5(sm.input.images).images[idx_ref]).to(device)
    scores = pair_scores(p, f, x, inv_ref, inv_eval, representation=sm.params.representation,
                         similarity_options=sm.params.similarity)
    save_scores(sm.output[0], scores, blocks, run=sm.wildcards.run, epoch=int(sm.wildcards.epoch),
                representation=sm.params.representation, similarity=str(dict(sm.params.similarity)))


run_script(snakemake, main)  # noqa: F821
