"""Adversarial robustness: accuracy under projected gradient descent (PGD) attacks.

PGD (Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018)
maximises the cross-entropy of the true label within a norm ball of radius ``eps`` around each
image: from a random start in the ball, ``steps`` steps of size ``alpha`` along the gradient's
sign (L∞) or its direction (L2), each followed by a projection onto the ball and onto [0, 1].
Images are in [0, 1] and the model normalises its input itself, so ``eps`` is in pixel units of
[0, 1] images (L∞: 8/255 ≈ 0.031 is the CIFAR-10 standard; L2: 0.5).

The attack follows the reference semantics of torchattacks' ``PGD`` and ``PGDL2`` (their
uniform L∞ start, their L2 start of a gaussian direction scaled to a uniform radius); it is
written here because torchattacks pins ``requests`` below 2.26 and has had no release since
2023. The random starts come from a CPU generator seeded per (seed, norm, eps), so every
checkpoint is attacked from the same starts, on every device.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping, Sequence

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from .data import DataFileError
from .files import atomic_path

__all__ = ["NORMS", "pgd", "adversarial_accuracy", "save_adversarial", "load_adversarial", "adversarial_dataarray"]

NORMS = ("linf", "l2")

Tensor = torch.Tensor


def _per_image_norm(t: Tensor) -> Tensor:
    """L2 norm of each image of ``t`` (N, ...), shaped (N, 1, 1, 1) to broadcast."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def _random_start(images: Tensor, norm: str, eps: float, generator: torch.Generator) -> Tensor:
    """A random perturbation (N, C, H, W) in the ``norm`` ball of radius ``eps``, drawn on the CPU."""
    shape = tuple(images.shape)
    if norm == "linf":
        delta = (torch.rand(shape, generator=generator) * 2 - 1) * eps
    else:
        direction = torch.randn(shape, generator=generator)
        radius = torch.rand((shape[0],) + (1,) * (len(shape) - 1), generator=generator)
        delta = direction / _per_image_norm(direction).clamp_min(1e-12) * radius * eps
    return delta.to(device=images.device, dtype=images.dtype)


def _project(delta: Tensor, norm: str, eps: float) -> Tensor:
    """``delta`` moved into the ``norm`` ball of radius ``eps`` (nearest point for L∞ and L2)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    return delta * (eps / _per_image_norm(delta).clamp_min(1e-12)).clamp(max=1.0)


def pgd(model: torch.nn.Module, images: Tensor, labels: Tensor, *, norm: str, eps: float, steps: int,
        step_size: float, random_start: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """Adversarial images (N, C, H, W) in [0, 1] for ``images`` (N, C, H, W) in [0, 1] and ``labels`` (N,).

    ``norm`` is ``"linf"`` or ``"l2"``; ``eps`` the ball's radius and ``step_size`` the absolute
    step (``alpha``), in pixel units. The model is used as given (put it in eval mode first); its
    parameters get no gradients.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if eps < 0 or step_size < 0 or steps < 0:
        raise ValueError(f"eps, step_size and steps must be >= 0, got {eps}, {step_size}, {steps}")
    images = images.detach()
    if eps == 0:
        return images.clone()
    adv = images
    if random_start:
        adv = (images + _random_start(images, norm, eps, generator or torch.Generator())).clamp(0, 1)
    for _ in range(steps):
        adv = adv.detach().requires_grad_(True)
        loss = F.cross_entropy(model(adv), labels)
        (grad,) = torch.autograd.grad(loss, adv)
        if norm == "linf":
            step = grad.sign()
        else:
            step = grad / (_per_image_norm(grad) + 1e-10)
        adv = adv.detach() + step_size * step
        adv = (images + _project(adv - images, norm, eps)).clamp(0, 1)
    return adv.detach()


def _attack_generator(seed: int, norm: str, eps: float) -> torch.Generator:
    digest = hashlib.sha256(f"stirflow.adversarial/{norm}/{float(eps)!r}/{int(seed)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def adversarial_accuracy(model: torch.nn.Module, images: Tensor, labels: Tensor, *, eps: Mapping[str, Sequence[float]],
                         steps: int, step_size: float, random_start: bool = True, seed: int = 0,
                         batch_size: int = 256) -> dict[str, np.ndarray]:
    """Accuracy of ``model`` under PGD for every norm and radius of ``eps`` (``{"linf": [...], "l2": [...]}``).

    ``images`` (N, C, H, W) in [0, 1] and ``labels`` (N,) live on the model's device or the CPU;
    ``step_size`` is relative: each step moves ``step_size * eps``. Returns
    ``{norm: accuracies (len(eps[norm]),)}``. A radius of 0 gives the clean accuracy.
    """
    device = next(model.parameters()).device
    model.eval()
    out = {}
    for norm, radii in eps.items():
        accuracies = []
        for radius in radii:
            generator = _attack_generator(seed, norm, radius)
            correct = 0
            for lo in range(0, len(images), batch_size):
                xb = images[lo:lo + batch_size].to(device)
                yb = labels[lo:lo + batch_size].to(device)
                adv = pgd(model, xb, yb, norm=norm, eps=float(radius), steps=steps, step_size=step_size * radius,
                          random_start=random_start, generator=generator)
                with torch.no_grad():
                    correct += int((model(adv).argmax(1) == yb).sum())
            accuracies.append(correct / len(images))
        out[norm] = np.array(accuracies, dtype=np.float64)
    return out


def save_adversarial(path: str | os.PathLike, epochs: Sequence[int], accuracies: Sequence[Mapping[str, np.ndarray]],
                     eps: Mapping[str, Sequence[float]], **attrs: Any) -> None:
    """Write one run's accuracies (one ``{norm: (len(eps[norm]),)}`` per epoch) to HDF5, atomically.

    Datasets ``accuracy/<norm>`` (epochs, len(eps[norm])) and ``epochs``; ``eps`` (JSON) and
    ``attrs`` as attributes.
    """
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("epochs", data=np.asarray(epochs, dtype=np.int64))
        for norm in eps:
            f.create_dataset(f"accuracy/{norm}", data=np.stack([np.asarray(a[norm], dtype=np.float64)
                                                                for a in accuracies]).reshape(len(epochs), -1))
        f.attrs["eps"] = json.dumps({k: [float(v) for v in vs] for k, vs in eps.items()})
        for key, value in attrs.items():
            f.attrs[key] = value


def load_adversarial(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """``({"epochs": (E,), "accuracy": {norm: (E, len(eps[norm]))}}, attrs)`` with ``attrs["eps"]`` decoded."""
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            attrs["eps"] = json.loads(attrs["eps"])
            data = {"epochs": f["epochs"][...], "accuracy": {k: f[f"accuracy/{k}"][...] for k in attrs["eps"]}}
    except (OSError, KeyError, ValueError) as err:
        raise DataFileError(f"{path}: cannot read adversarial accuracies ({err})") from err
    return data, attrs


def adversarial_dataarray(paths: Sequence[str | os.PathLike], runs: Sequence[str], epochs: Sequence[int]):
    """The accuracies of every run file in ``paths`` as one DataArray (run, epoch, norm, eps).

    Coordinates: ``runs`` and ``epochs`` as given, the norms found (in :data:`NORMS` order), the
    union of their radii; NaN where a run, an epoch or a (norm, eps) pair was not attacked (runs of
    the reconstruction task never are). Every file must use the same radii.
    """
    import xarray as xr

    loaded = [(load_adversarial(p), p) for p in paths]
    eps = loaded[0][0][1]["eps"] if loaded else {}
    for (_, attrs), path in loaded:
        if attrs["eps"] != eps:
            raise ValueError(f"{path}: attacked at radii {attrs['eps']}, other runs at {eps}")
    norms = [n for n in NORMS if n in eps]
    radii = sorted({float(r) for n in norms for r in eps[n]})
    values = np.full((len(runs), len(epochs), len(norms), len(radii)), np.nan)
    for (data, attrs), path in loaded:
        if str(attrs["run"]) not in runs:
            raise ValueError(f"{path}: run {attrs['run']!r} is not among the aggregated runs")
        r = list(runs).index(str(attrs["run"]))
        for i, epoch in enumerate(int(e) for e in data["epochs"]):
            if epoch not in epochs:
                raise ValueError(f"{path}: epoch {epoch} is not in the training history")
            for k, norm in enumerate(norms):
                for j, radius in enumerate(eps[norm]):
                    values[r, list(epochs).index(epoch), k, radii.index(float(radius))] = data["accuracy"][norm][i, j]
    return xr.DataArray(values, dims=("run", "epoch", "norm", "eps"),
                        coords={"run": list(runs), "epoch": list(epochs), "norm": norms, "eps": radii},
                        attrs={"description": "test accuracy under a PGD attack of radius eps in the norm "
                                              "(pixel units of [0, 1] images; eps = 0: clean accuracy on the same images)"})
