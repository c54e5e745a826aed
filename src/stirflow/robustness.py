"""Robustness: a fixed corrupted test set per target, and each checkpoint's score on it.

The corrupted set is made once (``corrupt_dataset``): ``n_images`` test images chosen with a seed,
every configured corruption × severity applied deterministically, stored as uint8 like
CIFAR-10-C. Where a real corrupted set exists (CIFAR-10-C), the same images are taken from it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np
import torch

from .data import DataFileError, ImageSet, read_image_h5, select_indices, to_tensor
from .files import atomic_path, check_arrays, check_attrs

__all__ = ["make_corrupted_set", "to_stored_uint8", "save_corrupted_set", "load_corrupted_set", "CorruptedSet", "evaluate_robustness",
           "save_robustness", "load_robustness"]


class CorruptedSet:
    """``clean`` (N, H, W, C) uint8, ``corrupted`` (K, S, N, H, W, C) uint8, ``labels`` (N,)."""

    def __init__(self, clean: np.ndarray, corrupted: np.ndarray, labels: np.ndarray,
                 corruptions: Sequence[str], severities: Sequence[int], attrs: Mapping[str, Any]):
        self.clean, self.corrupted, self.labels = clean, corrupted, labels
        self.corruptions, self.severities, self.attrs = list(corruptions), list(severities), dict(attrs)


def to_stored_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [0, 1] → (N, H, W, C) uint8, truncated as CIFAR-10-C stores its images.

    The generator saves ``np.uint8(output)`` of outputs in 0..255: the fractional part is dropped,
    not rounded (rounding would make every image about half a grey level brighter than CIFAR-10-C's).
    """
    return torch.floor(images.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def make_corrupted_set(test: ImageSet, corruptions: Sequence[str], severities: Sequence[int], n_images: int,
                       seed: int, *, source_index: str | os.PathLike | None = None,
                       device: torch.device | str = "cpu", log=None) -> CorruptedSet:
    """Corrupt a seeded choice of ``n_images`` test images with every corruption × severity.

    With ``source_index`` (the index.json of a prepared CIFAR-10-C), the corrupted images are read
    from it at the same indices instead of generated; its labels must match the test set's.
    """
    from .corruptions import corrupt

    index = select_indices(len(test), n_images, seed)
    clean = test.images[index]
    out = np.empty((len(corruptions), len(severities), *clean.shape), dtype=np.uint8)
    x = to_tensor(clean).to(device)
    files = json.loads(Path(source_index).read_text()) if source_index else None
    for k, name in enumerate(corruptions):
        for s, severity in enumerate(severities):
            if files is not None:
                key = f"{name}_{severity}"
                if key not in files:
                    raise DataFileError(f"{source_index}: no {key} (the corrupted source lacks this corruption)")
                src = read_image_h5(Path(source_index).parent / files[key])
                if len(src) != len(test) or not np.array_equal(src.labels[index], test.labels[index]):
                    raise DataFileError(f"{files[key]}: its images do not line up with the test set")
                out[k, s] = src.images[index]
            else:
                out[k, s] = to_stored_uint8(corrupt(x, name, severity, seed=seed))
            if log:
                log.info("corrupted %s severity %d", name, severity)
    return CorruptedSet(clean, out, test.labels[index], corruptions, severities,
                        {"seed": seed, "source": str(source_index or "stirflow.corruptions")})


def save_corrupted_set(path: str | os.PathLike, cs: CorruptedSet, **attrs: Any) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("clean", data=cs.clean)
        f.create_dataset("corrupted", data=cs.corrupted, compression="gzip", compression_opts=1)
        f.create_dataset("labels", data=cs.labels)
        f.attrs["corruptions"] = json.dumps(cs.corruptions)
        f.attrs["severities"] = json.dumps([int(s) for s in cs.severities])
        for key, value in {**cs.attrs, **attrs}.items():
            f.attrs[key] = value


def load_corrupted_set(path: str | os.PathLike) -> CorruptedSet:
    """The :class:`CorruptedSet` in ``path``; a file that cannot be read, or whose arrays disagree
    with each other or with its corruptions and severities, raises :class:`DataFileError` naming it."""
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            corruptions, severities = json.loads(attrs.pop("corruptions")), json.loads(attrs.pop("severities"))
            check_arrays(path, {"clean": (f["clean"], "N H W 3", np.uint8), "labels": (f["labels"], "N", np.integer),
                                "corrupted": (f["corrupted"], "K S N H W 3", np.uint8)},
                         known={"K": (len(corruptions), "the corruptions attribute"),
                                "S": (len(severities), "the severities attribute")})
            return CorruptedSet(f["clean"][...], f["corrupted"][...], f["labels"][...], corruptions, severities, attrs)
    except (OSError, KeyError, ValueError) as err:
        raise DataFileError(f"{path}: cannot read corrupted test set ({err})") from err


def evaluate_robustness(model, cs: CorruptedSet, batch_size: int = 256) -> dict[str, Any]:
    """Clean and per corruption × severity scores of ``model``.

    Classification: ``clean_accuracy`` and ``accuracy`` (K, S). Reconstruction: ``clean_error``
    and ``error`` (K, S), the L1 error of reconstructions of corrupted inputs against clean images.
    """
    from .training import evaluate

    labels = torch.from_numpy(cs.labels)
    clean = evaluate(model, cs.clean, labels, batch_size)
    key = "accuracy" if model.task == "classification" else "l1_error"
    scores = np.empty(cs.corrupted.shape[:2])
    for k in range(scores.shape[0]):
        for s in range(scores.shape[1]):
            target = cs.clean if model.task == "reconstruction" else None
            scores[k, s] = evaluate(model, cs.corrupted[k, s], labels, batch_size, target_images=target)[key]
    name = "accuracy" if key == "accuracy" else "error"
    return {f"clean_{name}": clean[key], name: scores}


def save_robustness(path: str | os.PathLike, scores: Mapping[str, Any], cs: CorruptedSet, **attrs: Any) -> None:
    """Write :func:`evaluate_robustness`' scores to HDF5 (atomically) with the corruption axes as attributes."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for key, value in scores.items():
            f.create_dataset(key, data=np.asarray(value, dtype=np.float64))
        f.attrs["corruptions"] = json.dumps(cs.corruptions)
        f.attrs["severities"] = json.dumps([int(s) for s in cs.severities])
        for key, value in attrs.items():
            f.attrs[key] = value


def load_robustness(path: str | os.PathLike, expected: Mapping[str, Any] | None = None
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(scores, attrs)`` from :func:`save_robustness`' file.

    ``expected``: attribute values the file must hold (e.g. ``{"run": ..., "epoch": 3}``). A file
    that cannot be read, holds neither accuracies nor errors, whose scores are not one value per
    corruption × severity, or whose attributes differ from ``expected`` raises
    :class:`DataFileError` naming it and the mismatch.
    """
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            attrs["corruptions"] = json.loads(attrs["corruptions"])
            attrs["severities"] = json.loads(attrs["severities"])
            scores = {k: f[k][()] for k in f.keys()}
    except (OSError, KeyError, ValueError) as err:
        raise DataFileError(f"{path}: cannot read robustness scores ({err})") from err
    name = next((k for k in ("accuracy", "error") if k in scores and f"clean_{k}" in scores), None)
    if name is None:
        raise DataFileError(f"{path}: not robustness scores (no accuracy and clean_accuracy, nor error and "
                            f"clean_error; it holds {sorted(scores)})")
    check_arrays(path, {f"clean_{name}": (scores[f"clean_{name}"], ""), name: (scores[name], "K S")},
                 known={"K": (len(attrs["corruptions"]), "the corruptions attribute"),
                        "S": (len(attrs["severities"]), "the severities attribute")})
    check_attrs(path, attrs, expected, "robustness scores")
    return scores, attrs
