"""One call for the common job: every shared-invariance measure between two models, as a Dataset.

:func:`compare` inverts each model's layers once (:func:`~stirflow.inversion.invert_blocks`, all
layers of a model in shared passes) and scores every measure of DESIGN §2 by forward passes over
those inversions (:func:`~stirflow.invariance.pair_scores`). Model A is the reference (the model
before finetuning, ``p``), model B the evaluated one (``f_e``):

* ``flow[i, j]`` = STIR(B_j | A_i), ``flow_reverse[i, j]`` = STIR(A_j | B_i), ``cka[i, j]`` = CKA(A_i, B_j);
* ``within_ref[i, j]`` = STIR(A_j | A_i), ``within_eval[i, j]`` = STIR(B_j | B_i);
* ``forgetting`` = 1 − diag(flow), ``learning`` = 1 − diag(flow_reverse);
* the inversions' final and starting relative losses and their loss curves;
* with ``check_steps``, the convergence check: learning and forgetting again from inversions with
  ``check_steps`` steps, and how far they moved.

The pipeline's ``stir_scores`` rule calls it with the inversions its ``invert`` jobs stored; the
``stirflow compare`` command calls it on two checkpoints or timm models.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import xarray as xr

from .inversion import InversionResult, invert_blocks
from .invariance import bootstrap_pair_scores, compression_index, pair_scores

__all__ = ["compare", "convergence_deltas", "scores_dataset", "INVERSION_OPTIONS"]

#: Keyword arguments of :func:`compare` that set up the inversions (stored as attributes).
INVERSION_OPTIONS = ("steps", "step_size", "step_schedule", "final_step_size", "seed", "start", "norm_p")

MATRIX_DESCRIPTIONS = {
    "flow": "STIR(B_j | A_i): X' inverted through A's layer i (layer_ref), CKA at B's layer j (layer_eval)",
    "flow_reverse": "STIR(A_j | B_i): X' inverted through B's layer i (layer_ref), CKA at A's layer j (layer_eval)",
    "cka": "CKA(A_i(X), B_j(X)): A's layer i (layer_ref), B's layer j (layer_eval)",
    "within_ref": "STIR(A_j | A_i), within model A",
    "within_eval": "STIR(B_j | B_i), within model B",
}


def _resolve_model(model, name: str) -> torch.nn.Module:
    """A model object as given, or one loaded from a stirflow checkpoint path or a timm model name."""
    if isinstance(model, torch.nn.Module):
        return model
    from .loading import load_model

    loaded, _ = load_model(str(model), None, None, torch.device("cpu"), f"model_{name}")
    return loaded


def _resolve_images(images, n_images: int | None, image_seed: int, size: int) -> tuple[torch.Tensor, np.ndarray]:
    if isinstance(images, torch.Tensor):
        return images, np.arange(len(images))
    from .loading import load_images

    x, index, _ = load_images(str(images), n_images, image_seed, size)
    return x, index


def _losses(inverted: Mapping[int, InversionResult], blocks: Sequence[int], key: str) -> np.ndarray:
    return np.array([float(getattr(inverted[b], key).double().mean()) for b in blocks])


def _curves(inverted: Mapping[int, InversionResult], blocks: Sequence[int]) -> tuple[list[int], np.ndarray]:
    steps = list(inverted[blocks[0]].curve_steps)
    if any(list(inverted[b].curve_steps) != steps for b in blocks):
        raise ValueError("the inversions of different layers logged their losses at different steps")
    curves = np.full((len(blocks), len(steps)), np.nan)
    for k, b in enumerate(blocks):
        if steps:
            curves[k] = inverted[b].curve.double().mean(1).cpu().numpy()
    return steps, curves


def compare(model_a, model_b, images, *, blocks: str | Sequence[int] = "all", steps: int = 500,
            step_size: float = 0.5, step_schedule: str = "constant", final_step_size: float | None = None,
            seed: int = 0, start: str = "noise", representation: str = "tokens", norm_p: float = 2.0,
            similarity: Mapping[str, Any] | None = None, chunk_size: int | None = None, log_every: int = 0,
            cuda_graphs: bool = False, memory_fraction: float | None = None, check_steps: int | None = None, bootstrap: int = 0, bootstrap_seed: int = 0,
            n_images: int | None = None, image_seed: int = 0,
            inverted_a: Mapping[int, InversionResult] | None = None,
            inverted_b: Mapping[int, InversionResult] | None = None,
            progress: Callable[[int], None] | None = None) -> xr.Dataset:
    """Shared invariance and CKA between ``model_a`` (the reference) and ``model_b``, layer by layer.

    Args:
        model_a, model_b: models (a :class:`~stirflow.models.StirViT`), stirflow checkpoint paths or
            timm model names (timm's pretrained weights; ``stirflow compare`` has more loading options).
        images: (N, 3, H, W) in [0, 1], or an HDF5 image set / a folder of images (``n_images``
            chosen with ``image_seed``, as the pipeline chooses them).
        blocks: ``"all"`` or 1-based layer indices present in both models.
        steps, step_size, step_schedule, final_step_size, seed, start, norm_p: the inversion
            (:func:`~stirflow.inversion.invert_blocks`); ``representation``: ``tokens``, ``cls`` or ``mean``.
        chunk_size, memory_fraction, cuda_graphs: how the inversions run (chunks of the stacked
            rows, or chunks filling a fraction of the free GPU memory; CUDA graphs), not what they give.
        similarity: options of :func:`~stirflow.cka.similarity` (default linear CKA).
        check_steps: also invert with this many steps and report how far learning and forgetting move.
        bootstrap: resamples of the images (with ``bootstrap_seed``) for ``learning_boot``,
            ``forgetting_boot`` (resample, layer) and ``compression_boot`` (resample): the measures'
            spread over the choice of images (linear, biased CKA only).
        inverted_a, inverted_b: inversions already made ({layer: result}), used instead of inverting.
        progress: called with 1 after every inversion step (a progress bar's ``update``).

    Returns:
        An :class:`xarray.Dataset` with dims ``layer_ref``, ``layer_eval``, ``layer``, ``step`` and
        ``image`` (see the module docstring); the settings are its attributes.
    """
    model_a, model_b = _resolve_model(model_a, "a"), _resolve_model(model_b, "b")
    device = next(model_a.parameters()).device
    fixed = [s for m in (model_a, model_b) if m.img_size for s in m.img_size]
    size = max(fixed) if fixed else 224  # image files for two models without a fixed input size
    x, index = _resolve_images(images, n_images, image_seed, size)
    x = x.to(device)
    depth = min(model_a.depth, model_b.depth)
    blocks = list(range(1, depth + 1)) if blocks == "all" else sorted(set(int(b) for b in blocks))
    if not blocks or blocks[0] < 1 or blocks[-1] > depth:
        raise ValueError(f"blocks {blocks} out of range: both models have layers 1..{depth}")
    options = dict(steps=steps, step_size=step_size, step_schedule=step_schedule, final_step_size=final_step_size,
                   seed=seed, start=start, representation=representation, norm_p=norm_p, chunk_size=chunk_size,
                   log_every=log_every, progress=progress, cuda_graphs=cuda_graphs, memory_fraction=memory_fraction)

    def inverted(model, given, label, **changes):
        if given is not None and not changes:
            missing = sorted(set(blocks) - set(given))
            if missing:
                raise ValueError(f"inversions of model {label} lack layers {missing}")
            return {b: given[b] for b in blocks}
        return invert_blocks(model, x, blocks, **{**options, **changes}, label=f"model {label}: ")

    inv_a, inv_b = inverted(model_a, inverted_a, "A"), inverted(model_b, inverted_b, "B")
    scores = pair_scores(model_a, model_b, x, {b: r.images for b, r in inv_a.items()},
                         {b: r.images for b, r in inv_b.items()}, representation=representation,
                         similarity_options=similarity)
    ds = scores_dataset(scores, blocks, index, inv_a, inv_b)
    if bootstrap:
        kind = dict(similarity or {})
        if kind.get("kind", "linear") != "linear" or kind.get("debiased"):
            raise ValueError("the image bootstrap is implemented for linear, biased CKA only")
        boot = bootstrap_pair_scores(model_a, model_b, x, {b: r.images for b, r in inv_a.items()},
                                     {b: r.images for b, r in inv_b.items()}, representation=representation,
                                     resamples=bootstrap, seed=bootstrap_seed)
        ds["learning_boot"] = (("resample", "layer"), boot["learning_boot"],
                               {"description": "learning on bootstrap resamples of the images"})
        ds["forgetting_boot"] = (("resample", "layer"), boot["forgetting_boot"],
                                 {"description": "forgetting on bootstrap resamples of the images"})
        ds["compression_boot"] = (("resample",), boot["compression_boot"],
                                  {"description": "compression index on bootstrap resamples of the images"})
        ds.attrs.update(bootstrap=int(bootstrap), bootstrap_seed=int(bootstrap_seed))
    settings = {"representation": representation, "similarity": repr(dict(similarity or {})), "n_images": len(x)}
    if inverted_a is None or inverted_b is None:  # given inversions carry their own settings
        settings.update({k: options[k] for k in INVERSION_OPTIONS})
    ds.attrs.update({k: "none" if v is None else v for k, v in settings.items()})
    if check_steps:
        if check_steps <= steps:
            raise ValueError(f"check_steps ({check_steps}) must exceed steps ({steps})")
        long_a = inverted(model_a, None, "A (check)", steps=check_steps)
        long_b = inverted(model_b, None, "B (check)", steps=check_steps)
        long = pair_scores(model_a, model_b, x, {b: r.images for b, r in long_a.items()},
                           {b: r.images for b, r in long_b.items()}, representation=representation,
                           similarity_options=similarity)
        ds = ds.merge(convergence_deltas(ds, long["learning"], long["forgetting"], check_steps))
        ds.attrs["check_steps"] = int(check_steps)
    return ds


def convergence_deltas(ds: xr.Dataset, learning: np.ndarray, forgetting: np.ndarray, check_steps: int) -> xr.Dataset:
    """Learning and forgetting from inversions with ``check_steps`` steps beside ``ds``'s, and |Δ|."""
    out = xr.Dataset(coords={"layer": ds.layer.values})
    for name, values in (("learning", learning), ("forgetting", forgetting)):
        out[f"{name}_check"] = ("layer", np.asarray(values, float),
                                {"description": f"{name} from inversions with {check_steps} steps"})
        out[f"convergence_delta_{name}"] = ("layer", np.abs(np.asarray(values, float) - ds[name].values),
                                            {"description": f"|{name} with {check_steps} steps - {name}|"})
    return out


def scores_dataset(scores: Mapping[str, np.ndarray], blocks: list[int], index: np.ndarray,
                   inv_a: Mapping[int, InversionResult], inv_b: Mapping[int, InversionResult]) -> xr.Dataset:
    """:func:`~stirflow.invariance.pair_scores`' arrays and both models' inversion losses as :func:`compare`'s Dataset."""
    pair = ("layer_ref", "layer_eval")
    variables: dict[str, tuple] = {name: (pair, scores[name], text) for name, text in MATRIX_DESCRIPTIONS.items()}
    variables.update({
        "compression": ((), compression_index(scores["flow"], scores["within_ref"]),
                        "compression index: mean over i > j of flow - within_ref, minus the same over i < j"),
        "forgetting": (("layer",), scores["forgetting"], "1 - STIR(B_l | A_l): A's invariances that B lacks"),
        "learning": (("layer",), scores["learning"], "1 - STIR(A_l | B_l): B's invariances that A lacks"),
        "image_index": (("image",), np.asarray(index, dtype=np.int64), "indices of the images in their set"),
    })
    for side, inv in (("a", inv_a), ("b", inv_b)):
        variables[f"inversion_loss_{side}"] = (("layer",), _losses(inv, blocks, "losses"),
                                               f"mean best relative loss of the inversions through {side.upper()}")
        variables[f"inversion_start_loss_{side}"] = (("layer",), _losses(inv, blocks, "start_losses"),
                                                     f"mean relative loss at the start ({side.upper()})")
        variables[f"inversion_worst_loss_{side}"] = (
            ("layer",), np.array([float(inv[b].losses.double().max()) for b in blocks]),
            f"largest best relative loss over the images ({side.upper()})")
    steps_a, curves_a = _curves(inv_a, blocks)
    steps_b, curves_b = _curves(inv_b, blocks)
    if steps_a != steps_b:
        raise ValueError("the two models' inversions logged their losses at different steps")
    variables["inversion_curve_a"] = (("layer", "step"), curves_a, "mean best relative loss through A at each step")
    variables["inversion_curve_b"] = (("layer", "step"), curves_b, "mean best relative loss through B at each step")
    coords = {"layer_ref": blocks, "layer_eval": blocks, "layer": blocks, "step": steps_a}
    return xr.Dataset({name: xr.Variable(dims, np.asarray(values), {"description": text})
                       for name, (dims, values, text) in variables.items()}, coords=coords)
