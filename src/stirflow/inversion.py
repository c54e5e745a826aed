"""Representation inversion: images that a layer cannot tell apart from the given ones.

The method of STIR (Nanda et al., ICML 2022) as its reference code runs it: start from noise,
minimise the relative L2 distance ``‖a(X') − a(X)‖ / ‖a(X)‖`` per sample with unconstrained,
per-sample normalised gradient steps ``x ← clamp(x − η·g/‖g‖₂, 0, 1)``, and keep each sample's
lowest-loss iterate. Only the input receives gradients; the model stays in eval mode.

Step sizes. The reference keeps η fixed, so each iterate moves by η in image space whatever its
distance to a minimum: the best iterate settles slowly, to within about η. ``step_schedule``
``cosine`` or ``geometric`` lowers η from ``step_size`` to ``final_step_size`` over the steps
(:func:`step_sizes`), which reaches the same minimum in fewer steps (``benchmarks/inversion_convergence.py``
measures how many). ``constant`` is the reference, and the default.

Convergence. A number from an unconverged inversion measures the optimiser, not the model. Every
inversion records its loss curve (each sample's best loss every ``log_every`` steps); the
pipeline's convergence check reruns a sample of inversions with k× the steps and reports how much
learning and forgetting move (:mod:`stirflow.invariance`, DESIGN §2).

Samples never interact (ViTs have no batch statistics), so a batch can be split into chunks, and
inversions through different blocks of one model can share a pass (:func:`invert_blocks`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

__all__ = [
    "START_TYPES",
    "STEP_SCHEDULES",
    "step_sizes",
    "InversionResult",
    "NonFiniteLossError",
    "inversion_start",
    "relative_loss",
    "descend",
    "invert",
    "invert_fn",
    "invert_blocks",
    "save_inversion",
    "load_inversion",
]

log = logging.getLogger(__name__)

START_TYPES = ("noise", "shared_noise", "uniform", "black", "white")
STEP_SCHEDULES = ("constant", "cosine", "geometric")


class NonFiniteLossError(FloatingPointError):
    """An inversion produced a NaN or infinite loss."""


@dataclass
class InversionResult:
    """Inverted images (N, C, H, W) in [0, 1]; best and starting relative loss per sample (N,).

    ``curve`` (T, N): each sample's best loss so far at the steps ``curve_steps`` (T,), every
    ``log_every`` steps and the last one (T = 0 when ``log_every`` is 0).
    """

    images: torch.Tensor
    losses: torch.Tensor
    start_losses: torch.Tensor
    curve: torch.Tensor = field(default_factory=lambda: torch.empty(0, 0))
    curve_steps: list[int] = field(default_factory=list)

    @property
    def history(self) -> list[float]:
        """Mean best loss at each of ``curve_steps``."""
        return [float(v) for v in self.curve.double().mean(1)] if self.curve.numel() else []


def step_sizes(steps: int, step_size: float = 0.5, schedule: str = "constant",
               final_step_size: float | None = None) -> list[float]:
    """η for each of the ``steps`` steps: fixed (``constant``, the reference), or lowered from
    ``step_size`` to ``final_step_size`` (default ``step_size / 100``) along half a cosine
    (``cosine``) or geometrically (``geometric``); the last step uses ``final_step_size``."""
    if schedule not in STEP_SCHEDULES:
        raise ValueError(f"unknown step schedule {schedule!r}; expected one of {STEP_SCHEDULES}")
    if schedule == "constant" or steps <= 1:
        return [float(step_size)] * steps
    final = step_size / 100 if final_step_size is None else float(final_step_size)
    if not 0 < final <= step_size:
        raise ValueError(f"final step size {final} must lie in (0, step_size = {step_size}]")
    fractions = [t / (steps - 1) for t in range(steps)]
    if schedule == "cosine":
        return [final + (step_size - final) * 0.5 * (1 + math.cos(math.pi * f)) for f in fractions]
    return [step_size * (final / step_size) ** f for f in fractions]


def inversion_start(x: torch.Tensor, start: str = "noise", seed: int = 0) -> torch.Tensor:
    """The starting images X'₀, shaped like ``x`` (N, C, H, W), drawn from a generator seeded with ``seed``.

    ``noise``: i.i.d. standard normal per pixel and image (the reference "super-noise", clamped
    to [0, 1] by the first step); ``shared_noise``: one such image for all; ``uniform``: U[0, 1];
    ``black`` / ``white``: constant 0 / 1. Drawn on the CPU so every device starts identically.
    """
    gen = torch.Generator().manual_seed(int(seed))
    shape = tuple(x.shape)
    if start == "noise":
        x0 = torch.randn(shape, generator=gen)
    elif start == "shared_noise":
        x0 = torch.randn((1, *shape[1:]), generator=gen).expand(shape).clone()
    elif start == "uniform":
        x0 = torch.rand(shape, generator=gen)
    elif start == "black":
        x0 = torch.zeros(shape)
    elif start == "white":
        x0 = torch.ones(shape)
    else:
        raise ValueError(f"unknown inversion start {start!r}; expected one of {START_TYPES}")
    return x0.to(device=x.device, dtype=x.dtype)


def relative_loss(rep: torch.Tensor, target: torch.Tensor, p: float = 2.0, eps: float = 1e-12) -> torch.Tensor:
    """Per-sample ``‖rep − target‖_p / ‖target‖_p`` for representations (N, ...) → (N,)."""
    diff = (rep - target).flatten(1).float()
    return torch.linalg.vector_norm(diff, ord=p, dim=1) / (
        torch.linalg.vector_norm(target.flatten(1).float(), ord=p, dim=1) + eps)


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module | None) -> Iterator[None]:
    """Run with ``module`` in eval mode (dropout off), restoring its train/eval flag afterwards."""
    if module is None:
        yield
        return
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _module_of(fn: Callable) -> torch.nn.Module | None:
    """The module behind ``fn``: ``fn`` itself, or the ``model`` that :func:`block_representation` attaches."""
    if isinstance(fn, torch.nn.Module):
        return fn
    model = getattr(fn, "model", None)
    return model if isinstance(model, torch.nn.Module) else None


def descend(loss_fn: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, *, steps: int,
            step_size: float = 0.5, step_schedule: str = "constant", final_step_size: float | None = None,
            log_every: int = 0, label: str = "", progress: Callable[[int], None] | None = None) -> InversionResult:
    """Minimise the per-sample losses ``loss_fn(x) → (N,)`` from ``x0`` (N, C, H, W).

    Each step moves every sample by η (:func:`step_sizes`) along its own normalised negative
    gradient and clamps to [0, 1]; each sample's lowest-loss iterate is returned, with its loss
    curve every ``log_every`` steps. A non-finite loss raises :class:`NonFiniteLossError` naming
    the step rather than returning garbage. ``progress(1)`` is called after every step (a
    progress bar's ``update``).
    """
    etas = step_sizes(steps, step_size, step_schedule, final_step_size)
    with torch.enable_grad():  # a caller's no_grad() must not switch off the input gradient
        return _descend(loss_fn, x0, etas=etas, log_every=log_every, label=label, progress=progress)


def _descend(loss_fn: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, *, etas: Sequence[float],
             log_every: int, label: str, progress: Callable[[int], None] | None) -> InversionResult:
    steps = len(etas)
    x = x0.detach().clone()
    best = x.clamp(0, 1)
    best_loss = torch.full((x.shape[0],), math.inf, device=x.device)
    start_loss = None
    curve: list[torch.Tensor] = []
    curve_steps: list[int] = []
    view = (-1,) + (1,) * (x.dim() - 1)
    for step in range(steps + 1):
        x.requires_grad_(True)
        loss = loss_fn(x)
        if not torch.isfinite(loss).all():
            raise NonFiniteLossError(f"{label}inversion loss is not finite at step {step} "
                                     f"({int((~torch.isfinite(loss)).sum())} of {len(loss)} samples)")
        with torch.no_grad():
            if step > 0:  # the raw start may lie outside [0, 1]; only clamped iterates are candidates
                improved = loss < best_loss
                best_loss = torch.where(improved, loss, best_loss)
                best = torch.where(improved.view(view), x, best)  # no masked copy: no host sync
            else:
                start_loss = loss.detach().clone()
        if log_every and (step % log_every == 0 or step == steps) and step > 0:
            curve.append(best_loss.detach().clone())  # kept on the device: no host sync per log
            curve_steps.append(step)
            log.info("%sstep %d/%d  mean loss %.4f  mean best %.4f", label, step, steps,
                     float(loss.detach().mean()), float(best_loss.mean()))
        if step == steps:
            break
        (grad,) = torch.autograd.grad(loss.sum(), x)
        with torch.no_grad():
            norm = grad.flatten(1).norm(dim=1).view(view)
            x = (x - etas[step] * grad / (norm + 1e-10)).clamp_(0, 1)
        if progress is not None:
            progress(1)
    if steps == 0:
        best_loss = start_loss
    stacked = torch.stack(curve) if curve else torch.empty(0, x.shape[0], device=x.device)
    return InversionResult(best.detach(), best_loss.detach(), start_loss, stacked, curve_steps)


def _concat(parts: Sequence[InversionResult]) -> InversionResult:
    """The inversions of consecutive chunks of samples as one result (samples in order)."""
    return InversionResult(torch.cat([r.images for r in parts]), torch.cat([r.losses for r in parts]),
                           torch.cat([r.start_losses for r in parts]), torch.cat([r.curve for r in parts], dim=1),
                           parts[0].curve_steps)


def _samples(result: InversionResult, sl: slice) -> InversionResult:
    """The inversions of samples ``sl`` of ``result``."""
    return InversionResult(result.images[sl], result.losses[sl], result.start_losses[sl], result.curve[:, sl],
                           result.curve_steps)


def invert_fn(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, steps: int, step_size: float = 0.5,
              step_schedule: str = "constant", final_step_size: float | None = None, seed: int = 0,
              start: str = "noise", norm_p: float = 2.0, batch_size: int | None = None, log_every: int = 0,
              label: str = "", progress: Callable[[int], None] | None = None) -> InversionResult:
    """Invert ``fn`` at images ``x`` (N, C, H, W in [0, 1]), in chunks of ``batch_size`` images.

    The start is drawn for the whole set before chunking, so results do not depend on the chunk size.
    When ``fn`` is a module, or carries one as ``fn.model`` (:func:`~stirflow.models.block_representation`
    does), that module runs in eval mode during the inversion.
    """
    x0 = inversion_start(x, start, seed)
    batch_size = batch_size or len(x)
    parts = []
    with _eval_mode(_module_of(fn)):
        for lo in range(0, len(x), batch_size):
            xs = x[lo:lo + batch_size]
            with torch.no_grad():
                target = fn(xs).detach()
            parts.append(descend(lambda z: relative_loss(fn(z), target, norm_p), x0[lo:lo + batch_size],
                                 steps=steps, step_size=step_size, step_schedule=step_schedule,
                                 final_step_size=final_step_size, log_every=log_every, label=label,
                                 progress=progress))
    return _concat(parts)


def invert(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, steps: int, step_size: float = 0.5,
           seed: int = 0, **options) -> torch.Tensor:
    """X' (shaped like ``x``, in [0, 1]) that ``fn`` maps close to ``fn(x)``, found from seeded noise.

    ``options``: ``step_schedule``, ``final_step_size``, ``start``, ``norm_p``, ``batch_size``,
    ``log_every``, ``progress`` (see :func:`invert_fn`).
    """
    return invert_fn(fn, x, steps=steps, step_size=step_size, seed=seed, **options).images


def invert_blocks(model, x: torch.Tensor, blocks: Sequence[int], *, steps: int, step_size: float = 0.5,
                  step_schedule: str = "constant", final_step_size: float | None = None, seed: int = 0,
                  start: str = "noise", representation: str = "tokens", norm_p: float = 2.0,
                  chunk_size: int | None = None, log_every: int = 0, label: str = "",
                  progress: Callable[[int], None] | None = None) -> dict[int, InversionResult]:
    """Invert several layers (blocks) of one :class:`~stirflow.models.StirModel` in shared passes.

    The images for all blocks are stacked (block-major) and descended together; each sample's loss is
    taken at its own block, and a sample leaves the forward pass after its block, so no block is
    run further than needed. ``chunk_size`` bounds the images × blocks in one pass (GPU memory).
    Every block starts from the same seeded noise as a one-block inversion with ``seed`` would.
    The model runs in eval mode; ``progress(1)`` is called after every step of every chunk.
    """
    with _eval_mode(model):
        return _invert_blocks(model, x, blocks, steps=steps, step_size=step_size, step_schedule=step_schedule,
                              final_step_size=final_step_size, seed=seed, start=start,
                              representation=representation, norm_p=norm_p, chunk_size=chunk_size,
                              log_every=log_every, label=label, progress=progress)


def _invert_blocks(model, x: torch.Tensor, blocks: Sequence[int], *, steps: int, step_size: float,
                   step_schedule: str, final_step_size: float | None, seed: int, start: str, representation: str,
                   norm_p: float, chunk_size: int | None, log_every: int, label: str,
                   progress: Callable[[int], None] | None) -> dict[int, InversionResult]:
    blocks = sorted(set(int(b) for b in blocks))
    if not blocks or blocks[0] < 1 or blocks[-1] > model.depth:  # block 0 would index outs[-1] silently
        kind = model.layer_kind
        raise ValueError(f"{kind}s {blocks} out of range: the model has {kind}s 1..{model.depth}")
    n = len(x)
    with torch.no_grad():  # per block: layers of a hierarchical model differ in width
        outs = model.layer_outputs(x, blocks[-1])
        targets = [model.pool(outs[b - 1], representation).flatten(1) for b in blocks]
    stacked_x0 = inversion_start(x, start, seed).repeat(len(blocks), 1, 1, 1)

    def loss_on(sl: slice) -> Callable[[torch.Tensor], torch.Tensor]:
        # Stacking is block-major with blocks ascending, so within any chunk the samples that stop
        # at the shallowest block come first: each exit is a slice, never a boolean mask (no
        # gather/scatter in the backward pass, and no host sync on a GPU).
        exit_count, exit_targets = {}, []
        for k, b in enumerate(blocks):
            lo, hi = max(sl.start, k * n), min(sl.stop, (k + 1) * n)  # this block's rows in the chunk
            if lo < hi:
                exit_count[b] = hi - lo
                exit_targets.append(targets[k][lo - k * n:hi - k * n])

        def loss_fn(z: torch.Tensor) -> torch.Tensor:
            # the model stops each sample's forward pass after its own block (StirModel.exit_outputs)
            outputs = model.exit_outputs(z, exit_count)
            return torch.cat([relative_loss(model.pool(h, representation), target, norm_p)
                              for h, target in zip(outputs, exit_targets)])

        return loss_fn

    total = len(stacked_x0)
    chunk_size = chunk_size or total
    parts = []
    for lo in range(0, total, chunk_size):
        sl = slice(lo, min(lo + chunk_size, total))
        parts.append(descend(loss_on(sl), stacked_x0[sl], steps=steps, step_size=step_size,
                             step_schedule=step_schedule, final_step_size=final_step_size,
                             log_every=log_every, label=label, progress=progress))
    result = _concat(parts)
    return {b: _samples(result, slice(k * n, (k + 1) * n)) for k, b in enumerate(blocks)}


# --------------------------------------------------------------------------- storage

def save_inversion(path, results: Mapping[int, InversionResult], indices, **attrs) -> None:
    """Write the inversions of one checkpoint's blocks to HDF5 (atomically).

    Datasets: ``blocks`` (B,), ``images`` (B, N, C, H, W) float32, ``losses`` and ``start_losses``
    (B, N), ``indices`` (N,) (which test images were inverted), and the loss curves:
    ``curve_steps`` (T,) and ``curves`` (B, T, N), each image's best loss at each logged step;
    the settings as attributes.
    """
    import h5py
    import numpy as np

    from .files import atomic_path

    blocks = sorted(results)
    stack = lambda key: np.stack([getattr(results[b], key).float().cpu().numpy() for b in blocks])  # noqa: E731
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("blocks", data=np.asarray(blocks, dtype=np.int64))
        f.create_dataset("images", data=stack("images"), compression="gzip", compression_opts=1)
        f.create_dataset("losses", data=stack("losses"))
        f.create_dataset("start_losses", data=stack("start_losses"))
        f.create_dataset("indices", data=np.asarray(indices, dtype=np.int64))
        f.create_dataset("curve_steps", data=np.asarray(results[blocks[0]].curve_steps, dtype=np.int64))
        f.create_dataset("curves", data=stack("curve"))
        for key, value in attrs.items():
            f.attrs[key] = value if value is not None else "none"


def load_inversion(path, expected: Mapping[str, Any] | None = None) -> tuple[dict[int, InversionResult], dict]:
    """``({block: InversionResult}, info)`` from :func:`save_inversion`'s file; ``info`` holds
    ``indices`` (N,) and the attributes (the settings that made the inversions).

    ``expected``: values the file must hold, e.g. ``{"run": "digits-scratch", "epoch": 3,
    "steps": 100, "blocks": [1, 2], "indices": idx}`` (``blocks`` and ``indices`` are compared with
    the file's arrays, every other key with its attribute).

    A missing, truncated or foreign file, arrays whose shapes disagree with ``blocks`` and
    ``indices``, or values other than ``expected``'s raise :class:`~stirflow.data.DataFileError`
    naming the file and what does not match.
    """
    from pathlib import Path

    import h5py
    import numpy as np

    from .files import DataFileError, check_arrays, check_attrs

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            check_arrays(path, {"blocks": (f["blocks"], "B", np.integer), "indices": (f["indices"], "N", np.integer),
                                "curve_steps": (f["curve_steps"], "T", np.integer),
                                "images": (f["images"], "B N C H W", np.floating),
                                "losses": (f["losses"], "B N"), "start_losses": (f["start_losses"], "B N"),
                                "curves": (f["curves"], "B T N")})
            blocks = [int(b) for b in f["blocks"][...]]
            arrays = {k: torch.from_numpy(f[k][...]) for k in ("images", "losses", "start_losses", "curves")}
            steps = [int(t) for t in f["curve_steps"][...]]
            info = {"indices": f["indices"][...], **dict(f.attrs)}
    except (OSError, KeyError) as err:
        raise DataFileError(f"{path}: cannot read inversion ({err})") from err
    check_attrs(path, {**info, "blocks": blocks}, expected, "inversion")
    results = {b: InversionResult(arrays["images"][k], arrays["losses"][k], arrays["start_losses"][k],
                                  arrays["curves"][k], steps) for k, b in enumerate(blocks)}
    return results, info
