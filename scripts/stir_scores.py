"""stir_scores: every shared-invariance measure of one run's epoch against the run's epoch 0
(stirflow.compare on the stored inversions), with the inversions' losses and loss curves."""

import numpy as np

from stirflow.comparison import INVERSION_OPTIONS, compare
from stirflow.data import read_image_h5, to_tensor
from stirflow.files import atomic_path
from stirflow.inversion import load_inversion
from stirflow.models import load_checkpoint, prepare_for_inversion
from stirflow.workflow import pick_device, run_script


def load_set(paths, blocks):
    """{block: InversionResult} from a checkpoint's inversion files (one per block group), all of one image set."""
    inverted, indices, info = {}, None, {}
    for path in paths:
        results, info = load_inversion(path)
        if indices is not None and not np.array_equal(indices, info["indices"]):
            raise ValueError(f"{path}: inverted a different image set than the other blocks")
        indices = info["indices"]
        inverted.update(results)
    if sorted(inverted) != sorted(blocks):
        raise ValueError(f"{paths[0]}: inversions cover blocks {sorted(inverted)}, expected {sorted(blocks)}")
    return inverted, indices, info


def main(sm):
    device = pick_device(sm.params.device)
    blocks = list(sm.params.blocks)
    p = prepare_for_inversion(load_checkpoint(sm.input.ref_checkpoint, device))
    f = prepare_for_inversion(load_checkpoint(sm.input.checkpoint, device))
    inv_ref, idx_ref, _ = load_set(sm.input.ref_inversions, blocks)
    inv_eval, idx_eval, settings = load_set(sm.input.inversions, blocks)
    if not np.array_equal(idx_ref, idx_eval):
        raise ValueError(f"{sm.input.inversions[0]} and {sm.input.ref_inversions[0]} inverted different images")
    x = to_tensor(read_image_h5(sm.input.images).images[idx_ref]).to(device)
    ds = compare(p, f, x, blocks=blocks, representation=sm.params.representation, similarity=sm.params.similarity,
                 inverted_a=inv_ref, inverted_b=inv_eval)
    ds["image_index"].values[:] = idx_ref
    ds.attrs.update({k: settings[k] for k in INVERSION_OPTIONS if k in settings})  # what made the inversions
    ds.attrs.update(run=sm.wildcards.run, epoch=int(sm.wildcards.epoch), reference=str(sm.input.ref_checkpoint),
                    checkpoint=str(sm.input.checkpoint))
    with atomic_path(sm.output[0]) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf")


run_script(snakemake, main)  # noqa: F821
