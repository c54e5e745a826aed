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
    "descend_graphed",
    "chunk_size_for_memory",
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


def _improve(loss: torch.Tensor, best_loss: torch.Tensor, best: torch.Tensor, x: torch.Tensor):
    """Each sample's lowest loss and its iterate after step loss = L(x): (best_loss, best)."""
    improved = loss < best_loss
    view = (-1,) + (1,) * (x.dim() - 1)
    return torch.where(improved, loss, best_loss), torch.where(improved.view(view), x, best)  # no masked copy: no host sync


def _step(x: torch.Tensor, grad: torch.Tensor, eta) -> torch.Tensor:
    """One normalised gradient step of every sample by η, clamped to [0, 1]."""
    norm = grad.flatten(1).norm(dim=1).view((-1,) + (1,) * (x.dim() - 1))
    return (x - eta * grad / (norm + 1e-10)).clamp_(0, 1)


def _non_finite(label: str, step: int, bad: int, n: int) -> NonFiniteLossError:
    return NonFiniteLossError(f"{label}inversion loss is not finite at step {step} ({bad} of {n} samples)")


def _log_step(label: str, step: int, steps: int, loss: torch.Tensor, best_loss: torch.Tensor) -> None:
    log.info("%sstep %d/%d  mean loss %.4f  mean best %.4f", label, step, steps,
             float(loss.detach().mean()), float(best_loss.mean()))


def _descend(loss_fn: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, *, etas: Sequence[float],
             log_every: int, label: str, progress: Callable[[int], None] | None) -> InversionResult:
    steps = len(etas)
    x = x0.detach().clone()
    best = x.clamp(0, 1)
    best_loss = torch.full((x.shape[0],), math.inf, device=x.device)
    start_loss = None
    curve: list[torch.Tensor] = []
    curve_steps: list[int] = []
    for step in range(steps + 1):
        x.requires_grad_(True)
        loss = loss_fn(x)
        if not torch.isfinite(loss).all():
            raise _non_finite(label, step, int((~torch.isfinite(loss)).sum()), len(loss))
        with torch.no_grad():
            if step > 0:  # the raw start may lie outside [0, 1]; only clamped iterates are candidates
                best_loss, best = _improve(loss, best_loss, best, x)
            else:
                start_loss = loss.detach().clone()
        if log_every and (step % log_every == 0 or step == steps) and step > 0:
            curve.append(best_loss.detach().clone())  # kept on the device: no host sync per log
            curve_steps.append(step)
            _log_step(label, step, steps, loss, best_loss)
        if step == steps:
            break
        (grad,) = torch.autograd.grad(loss.sum(), x)
        with torch.no_grad():
            x = _step(x, grad, etas[step])
        if progress is not None:
            progress(1)
    if steps == 0:
        best_loss = start_loss
    stacked = torch.stack(curve) if curve else torch.empty(0, x.shape[0], device=x.device)
    return InversionResult(best.detach(), best_loss.detach(), start_loss, stacked, curve_steps)


def descend_graphed(loss_fn: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, *, steps: int,
                    step_size: float = 0.5, step_schedule: str = "constant", final_step_size: float | None = None,
                    log_every: int = 0, label: str = "", progress: Callable[[int], None] | None = None,
                    warmup: int = 3) -> InversionResult:
    """:func:`descend` on fixed buffers, its inner steps replayed as one CUDA graph on a GPU.

    The iterate, the best iterate and loss, η and the non-finite record live in tensors updated in
    place, so one step (forward, backward, update) is the same kernels on the same memory every
    time: on a CUDA device it is captured once (after ``warmup`` eager steps on a side stream, which
    capture needs) and replayed, with no Python or kernel-launch cost per step and no host sync
    (a non-finite loss is recorded on the device and raised after the loop, naming its first step).
    On other devices the same step runs uncaptured: the arithmetic of :func:`descend`, in its order,
    so results equal it bit for bit. ``loss_fn`` must keep its shapes and run no host syncs.
    """
    etas = step_sizes(steps, step_size, step_schedule, final_step_size)
    with torch.enable_grad():
        return _descend_graphed(loss_fn, x0, etas=etas, log_every=log_every, label=label, progress=progress,
                                warmup=warmup)


def _descend_graphed(loss_fn: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, *, etas: Sequence[float],
                     log_every: int, label: str, progress: Callable[[int], None] | None,
                     warmup: int) -> InversionResult:
    steps, device, n = len(etas), x0.device, x0.shape[0]
    x = x0.detach().clone().requires_grad_(True)
    best = x.detach().clamp(0, 1)
    best_loss = torch.full((n,), math.inf, device=device)
    eta = torch.zeros((), device=device)
    step_now = torch.zeros((), dtype=torch.long, device=device)
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # first step with a non-finite loss
    bad_count = torch.zeros((), dtype=torch.long, device=device)
    eta_all = torch.tensor(list(etas) + [0.0], device=device)  # η per step, copied into ``eta`` on the device
    curve: list[torch.Tensor] = []
    curve_steps: list[int] = []

    def record_finite(loss: torch.Tensor) -> None:
        bad = (~torch.isfinite(loss)).sum()
        new = (first_bad < 0) & (bad > 0)
        first_bad.copy_(torch.where(new, step_now, first_bad))
        bad_count.copy_(torch.where(new, bad, bad_count))

    def evaluate(improve: bool) -> torch.Tensor:
        loss = loss_fn(x)
        with torch.no_grad():
            record_finite(loss)
            if improve:
                new_loss, new_best = _improve(loss, best_loss, best, x)
                best_loss.copy_(new_loss)
                best.copy_(new_best)
        return loss

    def update(loss: torch.Tensor) -> None:
        (grad,) = torch.autograd.grad(loss.sum(), x)
        with torch.no_grad():
            x.copy_(_step(x, grad, eta))

    def inner_step() -> torch.Tensor:  # steps 1..steps-1: evaluate, keep the best, move
        loss = evaluate(improve=True)
        update(loss)
        return loss

    def set_step(t: int) -> None:
        step_now.fill_(t)
        eta.copy_(eta_all[t])

    def after(t: int, loss: torch.Tensor) -> None:
        if log_every and t > 0 and (t % log_every == 0 or t == steps):
            curve.append(best_loss.detach().clone())
            curve_steps.append(t)
            _log_step(label, t, steps, loss, best_loss)

    set_step(0)
    loss = evaluate(improve=False)
    start_loss = loss.detach().clone()
    if steps:
        update(loss)
        if progress is not None:
            progress(1)
    capture = device.type == "cuda" and steps - 1 > warmup
    with _graph_safe_autocast(device) if capture else contextlib.nullcontext():
        t = 1
        if capture:  # capture needs a few eager steps on a side stream first (cuBLAS, autograd set-up)
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for t in range(1, 1 + warmup):
                    set_step(t)
                    after(t, inner_step())
                    if progress is not None:
                        progress(1)
            torch.cuda.current_stream(device).wait_stream(side)
            t = 1 + warmup
            graph = torch.cuda.CUDAGraph()
            set_step(t)
            with torch.cuda.graph(graph):
                static_loss = inner_step()  # recorded, not run
        for t in range(t, steps):
            set_step(t)
            if capture:
                graph.replay()
                loss = static_loss
            else:
                loss = inner_step()
            after(t, loss)
            if progress is not None:
                progress(1)
    if steps:
        set_step(steps)
        after(steps, evaluate(improve=True))
    if int(first_bad) >= 0:  # the one host sync for the finiteness of every step
        raise _non_finite(label, int(first_bad), int(bad_count), n)
    if steps == 0:
        best_loss = start_loss
    stacked = torch.stack(curve) if curve else torch.empty(0, n, device=device)
    return InversionResult(best.detach(), best_loss.detach(), start_loss, stacked, curve_steps)


@contextlib.contextmanager
def _graph_safe_autocast(device: torch.device) -> Iterator[None]:
    """The caller's autocast, without its cast cache (which CUDA graph capture cannot use)."""
    if not torch.is_autocast_enabled(device.type):
        yield
        return
    with torch.autocast(device.type, dtype=torch.get_autocast_dtype(device.type), cache_enabled=False):
        yield


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
                  progress: Callable[[int], None] | None = None, cuda_graphs: bool = False,
                  memory_fraction: float | None = None) -> dict[int, InversionResult]:
    """Invert several layers (blocks) of one :class:`~stirflow.models.StirModel` in shared passes.

    The images for all blocks are stacked (block-major) and descended together; each sample's loss is
    taken at its own block, and a sample leaves the forward pass after its block, so no block is
    run further than needed. ``chunk_size`` bounds the images × blocks in one pass (GPU memory);
    on a CUDA device ``memory_fraction`` instead sizes the chunks to fill that fraction of the free
    GPU memory, from one measured step per block (:func:`chunk_size_for_memory`). ``cuda_graphs``
    runs each chunk's steps as one replayed CUDA graph (:func:`descend_graphed`; uncaptured, and
    equal to :func:`descend`, elsewhere). Every block starts from the same seeded noise as a
    one-block inversion with ``seed`` would, so results do not depend on the chunks.
    The model runs in eval mode; ``progress(1)`` is called after every step of every chunk.
    """
    if memory_fraction is not None and not 0 < memory_fraction <= 1:
        raise ValueError(f"memory_fraction {memory_fraction} must lie in (0, 1]")
    with _eval_mode(model):
        return _invert_blocks(model, x, blocks, steps=steps, step_size=step_size, step_schedule=step_schedule,
                              final_step_size=final_step_size, seed=seed, start=start,
                              representation=representation, norm_p=norm_p, chunk_size=chunk_size,
                              log_every=log_every, label=label, progress=progress, cuda_graphs=cuda_graphs,
                              memory_fraction=memory_fraction)


def _invert_blocks(model, x: torch.Tensor, blocks: Sequence[int], *, steps: int, step_size: float,
                   step_schedule: str, final_step_size: float | None, seed: int, start: str, representation: str,
                   norm_p: float, chunk_size: int | None, log_every: int, label: str,
                   progress: Callable[[int], None] | None, cuda_graphs: bool,
                   memory_fraction: float | None) -> dict[int, InversionResult]:
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
    if memory_fraction is not None:
        if x.device.type == "cuda":
            chunk_size = _chunk_size_on_gpu(loss_on, stacked_x0, len(blocks), n, memory_fraction, x.device)
            log.info("%schunks of %d rows fill %.2f of the free GPU memory", label, chunk_size, memory_fraction)
        else:
            log.info("%smemory_fraction is for CUDA devices: chunks of %d", label, chunk_size)
    run = descend_graphed if cuda_graphs else descend
    parts = []
    for lo in range(0, total, chunk_size):
        sl = slice(lo, min(lo + chunk_size, total))
        parts.append(run(loss_on(sl), stacked_x0[sl], steps=steps, step_size=step_size,
                         step_schedule=step_schedule, final_step_size=final_step_size,
                         log_every=log_every, label=label, progress=progress))
    result = _concat(parts)
    return {b: _samples(result, slice(k * n, (k + 1) * n)) for k, b in enumerate(blocks)}


def chunk_size_for_memory(row_bytes: Sequence[float], budget: float, fixed: float = 0.0) -> int:
    """The chunk size for rows costing ``row_bytes`` (in stacking order) such that every chunk of
    consecutive rows, plus ``fixed``, fits in ``budget``: the fewest chunks, then the smallest size
    that keeps that number (chunks as even as they can be). Raises :class:`MemoryError` when one
    row alone does not fit."""
    rows = [float(b) for b in row_bytes]
    room = budget - fixed
    if not rows:
        return 1
    if max(rows) > room:
        raise MemoryError(f"one row of an inversion pass needs {max(rows) / 2**20:.1f} MiB; "
                          f"{max(room, 0) / 2**20:.1f} MiB are left of the budget")
    prefix = [0.0]
    for b in rows:
        prefix.append(prefix[-1] + b)
    total = len(rows)

    def fits(size: int) -> bool:
        return all(prefix[min(lo + size, total)] - prefix[lo] <= room for lo in range(0, total, size))

    size = next(s for s in range(total, 0, -1) if fits(s))  # size 1 fits: checked above
    even = -(-total // -(-total // size))  # the same number of chunks, evened out
    return even if fits(even) else size


def _chunk_size_on_gpu(loss_on: Callable[[slice], Callable], stacked_x0: torch.Tensor, n_blocks: int, n: int,
                       fraction: float, device: torch.device) -> int:
    """Rows per chunk from one measured step (forward and backward) of a few rows of each block,
    against ``fraction`` of the GPU memory free after emptying the cache."""
    probe = min(n, 4)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    budget = fraction * torch.cuda.mem_get_info(device)[0]
    row_bytes = []
    for k in range(n_blocks):
        sl = slice(k * n, k * n + probe)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.enable_grad():
            z = stacked_x0[sl].clone().requires_grad_(True)
            torch.autograd.grad(loss_on(sl)(z).sum(), z)
        del z
        # the step's peak per row, and the descent's own buffers (iterate, best, gradient, start)
        per_row = (torch.cuda.max_memory_allocated(device) - base) / probe
        row_bytes += [per_row + 4 * stacked_x0[0].nbytes] * n
    torch.cuda.empty_cache()
    return chunk_size_for_memory(row_bytes, budget)


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
