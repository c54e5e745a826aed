"""stirflow: what happens to a vision transformer's invariances when it is finetuned.

The library under the pipeline: build or load ViTs (:mod:`stirflow.models`), invert their block
representations (:mod:`stirflow.invert`), score shared invariance and representation similarity
(:mod:`stirflow.stir`, :mod:`stirflow.cka`), corrupt images (:mod:`stirflow.corruptions`) and
aggregate results (:mod:`stirflow.analysis`).
"""

__version__ = "0.1.0"

from .cka import linear_cka
from .invert import invert, invert_blocks
from .models import block_representation, create_model, load_checkpoint
from .stir import pair_scores, stir

__all__ = [
    "__version__",
    "linear_cka",
    "invert",
    "invert_blocks",
    "block_representation",
    "create_model",
    "load_checkpoint",
    "pair_scores",
    "stir",
]
