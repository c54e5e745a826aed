"""STIR: shared invariance between two representations, and the matrices built from it.

``STIR(b | a) = CKA(b(X), b(X'))`` with ``X'`` inverted through ``a`` (:mod:`stirflow.inversion`).
For one pretrained model ``p`` and one finetuned checkpoint ``f`` (DESIGN §2):

* ``flow[i, j] = STIR(f_j | p_i)`` — where block i's pretrained invariances live in ``f``;
* ``flow_reverse[i, j] = STIR(p_j | f_i)``;
* ``forgetting = 1 − diag(flow)``, ``learning = 1 − diag(flow_reverse)``;
* ``cka[i, j] = CKA(p_i(X), f_j(X))``;
* ``within_ref[i, j] = STIR(p_j | p_i)``, ``within_eval[i, j] = STIR(f_j | f_i)``.

Every matrix comes from L inversions per model: an inversion is reused by every score that needs
it, and a score is a forward pass.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .cka import bootstrap_linear_cka, gram_linear, similarity
from .inversion import _eval_mode, _module_of, invert

__all__ = ["stir", "block_features", "stir_matrix", "cka_matrix", "pair_scores", "compression_index",
           "bootstrap_pair_scores", "resample_indices"]


def stir(fn_ref: Callable[[torch.Tensor], torch.Tensor], fn_eval: Callable[[torch.Tensor], torch.Tensor],
         x: torch.Tensor, *, steps: int, step_size: float = 0.5, seed: int = 0,
         similarity_options: Mapping[str, Any] | None = None, **invert_options) -> float:
    """STIR(fn_eval | fn_ref) on images ``x`` (N, C, H, W in [0, 1]): CKA(fn_eval(x), fn_eval(X'))."""
    x_inv = invert(fn_ref, x, steps=steps, step_size=step_size, seed=seed, **invert_options)
    with torch.no_grad(), _eval_mode(_module_of(fn_eval)):
        return similarity(fn_eval(x), fn_eval(x_inv), **dict(similarity_options or {}))


@torch.no_grad()
def block_features(model, images: torch.Tensor, blocks: Sequence[int], representation: str = "tokens",
                   batch_size: int = 256) -> dict[int, torch.Tensor]:
    """Layer (block) representations of ``images`` (N, C, H, W): ``{block: (N, F)}``, one pass per batch."""
    blocks = sorted(set(int(b) for b in blocks))
    device = next(model.parameters()).device
    parts: dict[int, list[torch.Tensor]] = {b: [] for b in blocks}
    with _eval_mode(model):  # features of a model left in train mode would carry dropout noise
        for lo in range(0, len(images), batch_size):
            outs = model.layer_outputs(images[lo:lo + batch_size].to(device), blocks[-1])
            for b in blocks:
                parts[b].append(model.pool(outs[b - 1], representation))
    return {b: torch.cat(p) for b, p in parts.items()}


def stir_matrix(model_eval, x: torch.Tensor, inverted: Mapping[int, torch.Tensor], blocks_eval: Sequence[int], *,
                representation: str = "tokens", similarity_options: Mapping[str, Any] | None = None,
                features_x: Mapping[int, torch.Tensor] | None = None) -> np.ndarray:
    """``M[r, c] = CKA(e_c(x), e_c(X'_r))``: rows follow ``inverted`` (reference block → X'), columns ``blocks_eval``.

    ``features_x`` may pass ``block_features(model_eval, x, ...)`` when the caller already has it.
    """
    options = dict(similarity_options or {})
    fx = features_x or block_features(model_eval, x, blocks_eval, representation)
    out = np.empty((len(inverted), len(blocks_eval)))
    for r, x_inv in enumerate(inverted.values()):
        fi = block_features(model_eval, x_inv, blocks_eval, representation)  # one pass for a whole row
        for c, b in enumerate(blocks_eval):
            out[r, c] = similarity(fx[b], fi[b], **options)
    return out


def cka_matrix(features_a: Mapping[int, torch.Tensor], features_b: Mapping[int, torch.Tensor],
               similarity_options: Mapping[str, Any] | None = None) -> np.ndarray:
    """``C[i, j] = CKA(a_i(X), b_j(X))`` from the two models' block features on the same images."""
    options = dict(similarity_options or {})
    return np.array([[similarity(fa, fb, **options) for fb in features_b.values()] for fa in features_a.values()])


def pair_scores(model_ref, model_eval, x: torch.Tensor, inverted_ref: Mapping[int, torch.Tensor],
                inverted_eval: Mapping[int, torch.Tensor], *, representation: str = "tokens",
                similarity_options: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """All §2 measures between a reference model ``p`` and a model ``f`` on images ``x``.

    ``inverted_ref[i]`` is X' inverted through ``p``'s block i, ``inverted_eval[i]`` through ``f``'s;
    both must cover the same blocks. Returns ``flow``, ``flow_reverse``, ``cka``, ``within_ref``,
    ``within_eval`` (L×L) and ``forgetting``, ``learning`` (L,).
    """
    blocks = sorted(inverted_ref)
    if sorted(inverted_eval) != blocks:
        raise ValueError(f"inversions cover different blocks: {blocks} and {sorted(inverted_eval)}")
    inv_ref = {b: inverted_ref[b] for b in blocks}
    inv_eval = {b: inverted_eval[b] for b in blocks}
    kw = dict(representation=representation, similarity_options=similarity_options)
    fx_ref = block_features(model_ref, x, blocks, representation)
    fx_eval = block_features(model_eval, x, blocks, representation)
    flow = stir_matrix(model_eval, x, inv_ref, blocks, features_x=fx_eval, **kw)
    flow_reverse = stir_matrix(model_ref, x, inv_eval, blocks, features_x=fx_ref, **kw)
    return {
        "flow": flow,
        "flow_reverse": flow_reverse,
        "forgetting": 1.0 - np.diag(flow),
        "learning": 1.0 - np.diag(flow_reverse),
        "cka": cka_matrix(fx_ref, fx_eval, similarity_options),
        "within_ref": stir_matrix(model_ref, x, inv_ref, blocks, features_x=fx_ref, **kw),
        "within_eval": stir_matrix(model_eval, x, inv_eval, blocks, features_x=fx_eval, **kw),
    }


def compression_index(flow: np.ndarray, within_ref: np.ndarray) -> np.ndarray:
    """How far finetuning moved the reference's invariances toward shallower layers (DESIGN §2, F2).

    ``mean_{i>j}(F[i, j] − W[i, j]) − mean_{i<j}(F[i, j] − W[i, j])`` with F the invariance flow
    (STIR(f_j | p_i)) and W the within-model matrix before finetuning (STIR(p_j | p_i)): the
    gain below the diagonal (p_i's invariances found in a shallower f_j) beyond the gain above it.
    0 before finetuning; > 0 for compression. ``flow`` and ``within_ref`` are (..., L, L).
    """
    gain = np.asarray(flow, float) - np.asarray(within_ref, float)
    n = gain.shape[-1]
    if n < 2:
        return np.full(gain.shape[:-2], np.nan)
    below, above = np.tril_indices(n, -1), np.triu_indices(n, 1)
    return gain[..., below[0], below[1]].mean(-1) - gain[..., above[0], above[1]].mean(-1)


def resample_indices(n: int, resamples: int, seed: int = 0) -> torch.Tensor:
    """(resamples, n) indices of bootstrap resamples of n images, from a generator seeded with ``seed``:
    the same for every checkpoint with the same n, so runs on the same images are resampled alike."""
    return torch.randint(0, n, (resamples, n), generator=torch.Generator().manual_seed(int(seed)))


@torch.no_grad()
def bootstrap_pair_scores(model_ref, model_eval, x: torch.Tensor, inverted_ref: Mapping[int, torch.Tensor],
                          inverted_eval: Mapping[int, torch.Tensor], *, representation: str = "tokens",
                          resamples: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    """:func:`pair_scores`' learning, forgetting, flow and within_ref matrix, and the compression
    index, for bootstrap resamples of the images (linear CKA): the measures' spread over which
    images were chosen. Returns ``learning_boot``, ``forgetting_boot`` (B, L), ``flow_boot``,
    ``within_ref_boot`` (B, L, L) and ``compression_boot`` (B,)."""
    blocks = sorted(inverted_ref)
    device = x.device
    idx = resample_indices(len(x), resamples, seed).to(device)

    def grams(model, images):
        return {b: gram_linear(f) for b, f in block_features(model, images, blocks, representation).items()}

    g_ref, g_eval = grams(model_ref, x), grams(model_eval, x)
    flow = np.empty((resamples, len(blocks), len(blocks)))
    within = np.empty_like(flow)
    learning = np.empty((resamples, len(blocks)))
    for r, i in enumerate(blocks):
        g_eval_inv, g_ref_inv = grams(model_eval, inverted_ref[i]), grams(model_ref, inverted_ref[i])
        for c, j in enumerate(blocks):
            flow[:, r, c] = bootstrap_linear_cka(g_eval[j], g_eval_inv[j], idx).cpu().numpy()
            within[:, r, c] = bootstrap_linear_cka(g_ref[j], g_ref_inv[j], idx).cpu().numpy()
        g_back = gram_linear(block_features(model_ref, inverted_eval[i], [i], representation)[i])
        learning[:, r] = 1.0 - bootstrap_linear_cka(g_ref[i], g_back, idx).cpu().numpy()
    return {"learning_boot": learning, "forgetting_boot": 1.0 - np.diagonal(flow, axis1=1, axis2=2),
            "flow_boot": flow, "within_ref_boot": within, "compression_boot": compression_index(flow, within)}
