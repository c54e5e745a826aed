"""corrupt_dataset: the fixed corrupted test set of one target (every corruption × severity)."""

from stirflow.data import read_image_h5
from stirflow.robustness import make_corrupted_set, save_corrupted_set
from stirflow.workflow import log, pick_device, run_script


# Any device gives the same set: the corruptions draw their random numbers on the CPU and compute
# in full float32 (stirflow.corruptions), so devices differ by float rounding only.
def main(sm):
    r = sm.params.robustness
    source = sm.input.corrupted_source if "corrupted_source" in sm.input.keys() else None
    cs = make_corrupted_set(read_image_h5(sm.input.test), r["corruptions"], r["severities"], r["n_images"], r["seed"],
                            source_index=source, device=pick_device(sm.params.device), log=log)
    save_corrupted_set(sm.output[0], cs, dataset=sm.wildcards.dataset)


run_script(snakemake, main)  # noqa: F821
