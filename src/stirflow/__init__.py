"""stirflow: what happens to a vision transformer's invariances when it is finetuned.

The library under the pipeline: build or load models (:mod:`stirflow.models`), invert their layer
representations (:mod:`stirflow.inversion`), score shared invariance and representation similarity
(:mod:`stirflow.invariance`, :mod:`stirflow.cka`), compare two models in one call
(:func:`stirflow.compare`), corrupt images (:mod:`stirflow.corruptions`) and aggregate results
(:mod:`stirflow.analysis`).

The names below are imported on first use, so ``import stirflow.config`` (what building the
pipeline's DAG needs) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name → the module that defines it
_API = {
    "linear_cka": "cka",
    "invert": "inversion",
    "invert_blocks": "inversion",
    "stir": "invariance",
    "pair_scores": "invariance",
    "block_representation": "models",
    "layer_representation": "models",
    "create_model": "models",
    "load_checkpoint": "models",
    "compare": "comparison",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'stirflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
