"""Pretraining and finetuning, with a checkpoint after every epoch and exact resumption.

Every random draw of epoch ``e`` (shuffling, augmentation, dropout) comes from generators seeded
with ``(seed, e)``, so a run killed during epoch ``e`` and restarted from the state saved after
epoch ``e − 1`` reproduces the uninterrupted run bit for bit on the CPU.

Checkpoints are first written to a resume directory that the workflow does not manage, then
hard-linked to their output paths: a job that dies loses its outputs (Snakemake removes them) but
not the epochs it completed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .augmentation import augment
from .data import ImageSet, stratified_indices, to_tensor
from .files import atomic_path
from .models import StirViT, read_checkpoint, save_checkpoint

__all__ = [
    "TrainingError",
    "make_optimizer",
    "SCHEDULES",
    "lr_factor",
    "make_scheduler",
    "warmup_steps",
    "augment",
    "task_loss",
    "evaluate",
    "train",
    "fingerprint",
]

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, a resume state that does not fit)."""


def make_optimizer(model: torch.nn.Module, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """SGD (with momentum) or AdamW from ``cfg``: ``name``, ``lr``, ``momentum``, ``weight_decay``."""
    name = cfg.get("name", "sgd")
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg.get("momentum", 0.9),
                               weight_decay=cfg.get("weight_decay", 1e-4))
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.05))
    raise ValueError(f"unknown optimizer {name!r}; expected 'sgd' or 'adamw'")


SCHEDULES = ("cosine", "linear", "constant", "step", "exponential")


def lr_factor(step: int, schedule: str | Mapping[str, Any], *, steps_per_epoch: int, total_steps: int,
              warmup_steps: int = 0) -> float:
    """The learning rate after ``step`` optimizer steps, as a fraction of the base rate.

    The first ``warmup_steps`` steps rise linearly to 1 (step s: (s + 1) / warmup_steps). Then
    ``schedule``, a name or a mapping ``{name, ...parameters}``:

    * ``cosine``: half a cosine from 1 to ``min_factor`` (default 0) over the steps after the warm-up;
    * ``linear``: a straight line from 1 to ``min_factor`` over the same steps;
    * ``constant``: 1;
    * ``step``: ``gamma`` (default 0.1) to the power of the number of ``milestones`` (epochs)
      completed — the lr drops after each milestone epoch, as ``MultiStepLR`` stepped per epoch;
    * ``exponential``: ``gamma`` to the power of the completed epochs, as ``ExponentialLR``.

    Epochs count from the start of training, so a milestone means the same epoch with or without
    a warm-up.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    schedule = {"name": schedule} if isinstance(schedule, str) else dict(schedule)
    name = schedule["name"]
    epochs_done = step // max(1, steps_per_epoch)
    if name in ("cosine", "linear"):
        low = float(schedule.get("min_factor", 0.0))
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if name == "cosine" else 1.0 - progress
        return low + (1.0 - low) * shape
    if name == "constant":
        return 1.0
    if name == "step":
        return float(schedule.get("gamma", 0.1)) ** sum(epochs_done >= m for m in schedule["milestones"])
    if name == "exponential":
        return float(schedule["gamma"]) ** epochs_done
    raise ValueError(f"unknown schedule {name!r}; expected one of {SCHEDULES}")


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str | Mapping[str, Any], *, steps_per_epoch: int,
                   epochs: int, warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` following :func:`lr_factor`; its state (the step count) resumes exactly."""
    total = epochs * steps_per_epoch

    def factor(step: int) -> float:  # a plain function: the scheduler's state holds only its step count
        return lr_factor(step, schedule, steps_per_epoch=steps_per_epoch, total_steps=total, warmup_steps=warmup_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_steps(cfg: Mapping[str, Any], steps_per_epoch: int) -> int:
    """The warm-up in optimizer steps: ``warmup_steps``, or ``warmup_epochs`` epochs of steps."""
    return int(cfg.get("warmup_steps", 0)) or int(cfg.get("warmup_epochs", 0)) * steps_per_epoch


def _autocast(device: torch.device, bf16: bool):
    """bf16 autocast on ``device`` when ``bf16`` (weights, gradients and optimizer state stay fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(bf16))


def task_loss(model: StirViT, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss, per-sample score): cross-entropy and correctness, or L1 and per-sample L1 error."""
    out = model(images).float()  # the loss in fp32 under bf16 autocast too (a no-op in fp32)
    if model.task == "classification":
        return F.cross_entropy(out, labels), (out.argmax(1) == labels).float()
    target = model.resize(images)
    per_sample = (out - target).abs().flatten(1).mean(1)
    return per_sample.mean(), per_sample


@torch.no_grad()
def evaluate(model: StirViT, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256,
             target_images: torch.Tensor | None = None, *, bf16: bool = False) -> dict[str, float]:
    """Loss and accuracy (classification) or L1 error (reconstruction) over a whole set.

    ``images`` are float (N, C, H, W) in [0, 1] or uint8 (N, H, W, C). For reconstruction,
    ``target_images`` (clean images, same format) replaces the input as the target — the
    robustness measure: corrupted inputs against clean targets. ``bf16``: the forward passes
    under bf16 autocast (losses and errors summed in fp32).
    """
    model.eval()
    device = next(model.parameters()).device
    total, score = 0.0, 0.0
    for lo in range(0, len(images), batch_size):
        xb = _as_float(images[lo:lo + batch_size]).to(device)
        yb = labels[lo:lo + batch_size].to(device)
        with _autocast(device, bf16):
            out = model(xb).float()
        if model.task == "classification":
            total += float(F.cross_entropy(out, yb, reduction="sum"))
            score += float((out.argmax(1) == yb).sum())
        else:
            tgt = xb if target_images is None else _as_float(target_images[lo:lo + batch_size]).to(device)
            err = (out - model.resize(tgt)).abs().flatten(1).mean(1)
            total += float(err.sum())
    n = len(images)
    if model.task == "classification":
        return {"loss": total / n, "accuracy": score / n}
    return {"loss": total / n, "l1_error": total / n}


def _as_float(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(images, np.ndarray) or images.dtype == torch.uint8:
        return to_tensor(np.asarray(images))
    return images


def _to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W, C) → float (N, C, H, W) in [0, 1] on ``device``: moved as bytes, converted there."""
    return images.to(device).permute(0, 3, 1, 2).float().div_(255.0)


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-able settings and file contents (paths hashed by content)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, (str, os.PathLike)) and Path(part).is_file():
            with open(part, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _link_or_copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            import shutil

            shutil.copyfile(src, tmp)


def train(model: StirViT, spec: Mapping[str, Any], train_set: ImageSet, test_set: ImageSet, cfg: Mapping[str, Any], *,
          checkpoints: Sequence[str | os.PathLike], resume_dir: str | os.PathLike, run: str,
          device: torch.device | str = "cpu", extra_fingerprint: Any = None,
          checkpoint_dtype: str = "float32") -> list[dict[str, Any]]:
    """Train ``model`` for ``len(checkpoints) − 1`` epochs, saving ``checkpoints[e]`` after epoch ``e``.

    ``checkpoints[0]`` is the model before training. Every setting comes from ``cfg`` (the config's
    ``pretrain`` or ``finetune`` section): ``epochs``, ``batch_size``, ``optimizer`` (see
    :func:`make_optimizer`), ``schedule`` (see :func:`lr_factor`), ``warmup_epochs`` or
    ``warmup_steps``, ``grad_clip``, ``augment`` (see :func:`~stirflow.augmentation.augment`),
    ``seed``, ``eval_batch_size``, ``train_fraction`` with ``train_subset_seed`` (a stratified
    subset of ``train_set``), and ``bf16`` (autocast for training and evaluation).
    State after each epoch goes to ``resume_dir`` (keyed by a fingerprint of ``spec``, ``cfg``
    and ``extra_fingerprint``); a restarted job resumes after the last completed epoch.
    ``checkpoint_dtype`` stores the weights of ``checkpoints`` in float32, bfloat16 or float16
    (read back as float32); the resume state is always float32, so resumption stays exact.
    Returns the per-epoch history (epoch, lr, train/test loss and accuracy or L1 error,
    train_fraction, n_train, seconds).
    """
    epochs = len(checkpoints) - 1
    if epochs != cfg["epochs"]:
        raise ValueError(f"{len(checkpoints)} checkpoint paths for {cfg['epochs']} epochs (need epochs + 1)")
    seed = int(cfg.get("seed", 0))
    bf16 = bool(cfg.get("bf16", False))
    device = torch.device(device)
    # stored epochs of another dtype must not be taken over (float32 keeps the fingerprints it had)
    dtype_key = [] if checkpoint_dtype == "float32" else [checkpoint_dtype]
    resume_dir = Path(resume_dir) / fingerprint(spec, cfg, extra_fingerprint, *dtype_key)
    resume_dir.mkdir(parents=True, exist_ok=True)
    model.to(device)

    fraction = float(cfg.get("train_fraction", 1.0))
    try:
        subset = stratified_indices(train_set.labels, fraction, int(cfg.get("train_subset_seed", 0)))
    except ValueError as err:  # fewer images than classes
        raise TrainingError(f"{run}: train_fraction = {fraction} of {len(train_set)} training images: {err}") from None
    x_train = torch.from_numpy(train_set.images[subset])  # uint8 (N, H, W, C); converted per batch
    y_train = torch.from_numpy(train_set.labels[subset])
    x_test, y_test = torch.from_numpy(test_set.images), torch.from_numpy(test_set.labels)
    bs = int(cfg["batch_size"])
    steps_per_epoch = max(1, len(x_train) // bs)  # drop the last partial batch: equal steps every epoch
    optimizer = make_optimizer(model, cfg["optimizer"])
    scheduler = make_scheduler(optimizer, cfg.get("schedule", "cosine"), steps_per_epoch=steps_per_epoch,
                               epochs=epochs, warmup_steps=warmup_steps(cfg, steps_per_epoch))

    history: list[dict[str, Any]] = []
    start_epoch = 0
    state_path = resume_dir / "state.pt"
    if state_path.is_file():
        state = read_checkpoint(state_path, map_location=device)
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = state["history"]
        start_epoch = state["epoch"] + 1
        log.info("%s: resuming after epoch %d from %s", run, state["epoch"], resume_dir)
    for e in range(start_epoch):  # completed epochs: restore their outputs
        _link_or_copy(resume_dir / f"epoch_{e:03d}.pt", Path(checkpoints[e]))

    eval_bs = int(cfg.get("eval_batch_size", 256))
    for epoch in range(start_epoch, epochs + 1):
        t0 = time.time()
        record: dict[str, Any] = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                                  "train_fraction": fraction, "n_train": len(x_train)}
        if epoch > 0:
            record.update(_train_epoch(model, x_train, y_train, optimizer, scheduler, cfg, seed, epoch,
                                       steps_per_epoch, device, run))
        else:
            record.update({f"train_{k}": v for k, v in evaluate(model, x_train, y_train, eval_bs, bf16=bf16).items()})
        record.update({f"test_{k}": v for k, v in evaluate(model, x_test, y_test, eval_bs, bf16=bf16).items()})
        record["seconds"] = time.time() - t0
        history.append(record)
        log.info("%s: epoch %d/%d  %s", run, epoch, epochs,
                 "  ".join(f"{k} {v:.4f}" for k, v in record.items() if isinstance(v, float)))
        # weights-only checkpoint for the pipeline; full state (optimizer, schedule) for resumption
        epoch_path = resume_dir / f"epoch_{epoch:03d}.pt"
        save_checkpoint(epoch_path, model, dict(spec), dtype=checkpoint_dtype, run=run, epoch=epoch, metrics=record)
        save_checkpoint(state_path, model, dict(spec), run=run, epoch=epoch, history=history,
                        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict())
        _link_or_copy(epoch_path, Path(checkpoints[epoch]))
    return history


def _train_epoch(model: StirViT, x: torch.Tensor, y: torch.Tensor, optimizer, scheduler, cfg, seed: int,
                 epoch: int, steps: int, device: torch.device, run: str) -> dict[str, float]:
    model.train()
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    torch.manual_seed(seed * 1_000_003 + epoch)  # dropout / drop-path draws, if configured
    order = torch.randperm(len(x), generator=gen)
    bs = int(cfg["batch_size"])
    # a random-resized crop comes out at the model's input size (the model's resize is then the identity)
    crop_size = getattr(model, "img_size", None)
    total_loss, total_score, seen = 0.0, 0.0, 0
    log_every = max(1, steps // 5)
    for step in range(steps):
        idx = order[step * bs:(step + 1) * bs]
        xb = augment(_to_device(x[idx], device), cfg.get("augment", {}), gen, size=crop_size)
        yb = y[idx].to(device)
        with _autocast(device, cfg.get("bf16", False)):
            loss, score = task_loss(model, xb, yb)
        if not torch.isfinite(loss):
            raise TrainingError(f"{run}: non-finite training loss ({float(loss)}) at epoch {epoch}, step {step}; "
                                f"lower the learning rate (optimizer.lr = {cfg['optimizer']['lr']})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.get("grad_clip"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg["grad_clip"]))
        optimizer.step()
        scheduler.step()
        total_loss += float(loss.detach()) * len(idx)
        total_score += float(score.sum())
        seen += len(idx)
        if (step + 1) % log_every == 0:
            log.info("%s: epoch %d step %d/%d loss %.4f", run, epoch, step + 1, steps, total_loss / seen)
    key = "accuracy" if model.task == "classification" else "l1_error"
    return {"train_loss": total_loss / seen, f"train_{key}": total_score / seen}
