"""corrupt_dataset: the fixed corrupted test set of one target (every corruption × severity)."""

from stirflow.data import read_image_h5
from stirflow.robustness import make_corrupted_set, save_corrupted_set
from stirflow.workflow import log, run_script


# On the CPU whatever the machine: the random corruptions draw from torch generators, whose
# streams differ between CPU and CUDA, and the same config must give the same corrupted set.
def main(sm):
    r = sm.params.robustness
    source = sm.input.corrupted_source if "corrupted_source" in sm.input.keys() else None
    cs = make_corrupted_set(read_image_h5(sm.input.test), r["corruptions"], r["severities"], r["n_images"], r["seed"],
                            source_index=source, device="cpu", log=log)
    save_corrupted_set(sm.output[0], cs, dataset=sm.wildcards.dataset)


run_script(snakemake, main)  # noqa: F821
