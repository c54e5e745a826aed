"""Names of what the pipeline can make, importable without torch or matplotlib.

The DAG is built from these tables (``snakemake -n`` never imports torch or matplotlib for a
config without a timm model): the corruptions :mod:`stirflow.corruptions` implements, and the
figures :mod:`stirflow.plots` draws, with where each goes in the Snakemake report.
"""

from __future__ import annotations

__all__ = ["OFFLINE_KINDS", "COMMON_CORRUPTIONS", "EXTRA_CORRUPTIONS", "CORRUPTIONS", "FIGURES", "AXIS_FIGURES"]

#: Data set kinds made on the machine, without a download (:mod:`stirflow.data`).
OFFLINE_KINDS: tuple[str, ...] = ("shapes", "digits", "photos")

#: The 15 benchmark corruptions of CIFAR-10-C (Hendrycks & Dietterich 2019), in the paper's order.
COMMON_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
    "jpeg_compression",
)
#: The 4 extra corruptions in the CIFAR-10-C archive.
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
CORRUPTIONS: tuple[str, ...] = COMMON_CORRUPTIONS + EXTRA_CORRUPTIONS

#: Figure file stem → (report subcategory, title in the report). The stem is also the name of the
#: function of :mod:`stirflow.plots` that draws it.
FIGURES: dict[str, tuple[str, str]] = {
    "learning_forgetting": ("1. Invariances", "Learning and forgetting per block"),
    "flow_matrices": ("1. Invariances", "Invariance flow matrices, STIR both ways and CKA"),
    "spread_vs_robustness": ("2. Robustness", "Forgetting spread against robustness"),
    "stir_over_epochs": ("1. Invariances", "Learning and forgetting per block and epoch"),
    "within_model": ("1. Invariances", "Within-model STIR, before and after finetuning"),
    "training_curves": ("3. Training", "Training curves"),
    "robustness_per_corruption": ("2. Robustness", "Robustness per corruption and severity"),
    "inversion_convergence": ("4. Convergence", "Inversion losses and the convergence check"),
    "axis_train_fraction": ("5. Open questions", "Learning, forgetting and spread against the train fraction"),
    "axis_schedule": ("5. Open questions", "Learning, forgetting and spread per learning-rate schedule"),
    "axis_adversarial": ("5. Open questions", "Forgetting spread against adversarial and corruption robustness"),
    "axis_architectures": ("5. Open questions", "Learning and forgetting by relative depth, per architecture"),
}

#: Figures of an open question's axis → the axis (:func:`stirflow.config.varied_axes`): the DAG
#: draws one only where the config varies its axis.
AXIS_FIGURES: dict[str, str] = {"axis_train_fraction": "train_fraction", "axis_schedule": "schedule",
                                "axis_adversarial": "adversarial", "axis_architectures": "architectures"}
