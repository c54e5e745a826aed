"""Models and images as ``stirflow compare`` and :func:`stirflow.comparison.compare` take them:
a stirflow checkpoint or a timm model name; an HDF5 image set or a folder of image files.

Kept apart from :mod:`stirflow.cli` so that what imports them (the pipeline's scoring, through
:mod:`stirflow.comparison`) does not depend on the command line's figures and tables.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CompareError", "IMAGE_SUFFIXES", "load_model", "load_images"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class CompareError(ValueError):
    """Bad input to ``stirflow compare``: the message names the argument or file."""


# --------------------------------------------------------------------------- inputs

def _looks_like_path(spec: str) -> bool:
    return os.sep in spec or spec.startswith(".") or Path(spec).suffix in (".pt", ".pth", ".ckpt", ".bin")


def load_model(spec: str, weights: str | None, img_size: int | None, device: torch.device,
               option: str = "--model-a", seed: int = 0) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A :class:`~stirflow.models.StirModel` from a stirflow checkpoint path or a timm model name.

    For a timm name (any model whose layers timm exposes: ViT, DeiT, BEiT, Swin, ConvNeXt,
    ResNet, ...), ``weights`` is a local weight file (``.pth``/``.safetensors``/``.npz``, loaded
    through timm, position embeddings resampled to ``img_size``), ``"random"`` for a random
    initialisation drawn with ``seed``, or None for timm's pretrained weights (a download).
    ``img_size`` is a ViT's or Swin's ``img_size``; a convolutional model's images are resized to it.
    Returns the model in eval mode on ``device`` and a description of where it came from.
    """
    import timm

    from .checkpoints import CheckpointError, check_weight_file
    from .models import create_model, describe_timm_model, load_checkpoint

    weights_option = option.replace("model", "weights")
    if Path(spec).is_file():
        if weights:
            raise CompareError(f"{weights_option} applies to timm model names; {spec} is a stirflow checkpoint")
        try:  # read without running code; a file of another kind is named with what it is
            model = load_checkpoint(spec, device)
        except CheckpointError as err:
            raise CompareError(f"{option}: {err}") from None
        return model, {"source": "checkpoint", "path": str(Path(spec).resolve())}
    if _looks_like_path(spec):
        raise CompareError(f"{option}: {spec}: checkpoint file not found")
    if not timm.is_model(spec.split(".")[0]):
        raise CompareError(f"{option}: {spec!r} is neither an existing checkpoint file nor a timm model name")
    if weights and weights != "random":
        try:
            check_weight_file(weights, "weight file")
        except CheckpointError as err:
            raise CompareError(f"{weights_option}: {err}") from None

    try:
        fixed_size = describe_timm_model(spec)["fixed_input_size"]
    except ValueError as err:  # no feature_info / forward_intermediates
        raise CompareError(f"{option}: {spec!r}: {err}") from None
    cfg = timm.models.get_pretrained_cfg(spec, allow_unregistered=True)
    model_spec: dict[str, Any] = {
        "timm_name": spec, "num_classes": 0,  # no head: only layer outputs are compared
        "mean": tuple(cfg.mean) if cfg else (0.5, 0.5, 0.5), "std": tuple(cfg.std) if cfg else (0.5, 0.5, 0.5),
        "kwargs": {"img_size": img_size} if img_size and fixed_size else {},
        "input_size": img_size if not fixed_size else None,
    }
    torch.manual_seed(seed)
    try:
        if weights == "random":
            model = create_model(model_spec)
        else:
            model = create_model(model_spec, pretrained=not weights, weights_file=weights)
    except (OSError, RuntimeError) as err:
        what = f"weights {weights}" if weights else "timm's pretrained weights (download)"
        raise CompareError(f"{option}: cannot load {what} for {spec!r}: {err}") from err
    info = {"source": "timm", "name": spec, "weights": str(Path(weights).resolve()) if weights and weights != "random"
            else (weights or "timm pretrained"), "img_size": list(model.img_size) if model.img_size else None}
    return model.to(device).eval(), info


def load_images(path: str, n: int | None, seed: int, size: int) -> tuple[torch.Tensor, np.ndarray, dict[str, Any]]:
    """Images (N, 3, H, W) in [0, 1], the selected indices, and a description.

    ``path`` is an HDF5 image set (``prepare_dataset``'s format; used at its own size) or a folder
    of image files (sorted by name, converted to RGB and resized to ``size`` × ``size``).
    ``n`` images are chosen as the pipeline chooses them (:func:`~stirflow.data.select_indices`).
    """
    from .data import read_image_h5, select_indices, to_tensor

    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise CompareError(f"--images: {path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        from PIL import Image

        index = select_indices(len(files), n, seed)
        arrays = []
        for k in index:
            try:
                with Image.open(files[k]) as img:
                    arrays.append(np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)))
            except OSError as err:
                raise CompareError(f"--images: {files[k]}: cannot read image ({err})") from err
        x = to_tensor(np.stack(arrays))
        info = {"kind": "folder", "path": str(p.resolve()), "total": len(files), "resized_to": size}
    elif p.is_file():
        images = read_image_h5(p)  # DataFileError names the file
        index = select_indices(len(images), n, seed)
        x = to_tensor(images.images[index])
        info = {"kind": "hdf5", "path": str(p.resolve()), "total": len(images)}
    else:
        raise CompareError(f"--images: {path}: no such file or folder")
    if len(index) < 4:
        raise CompareError(f"--images: {path}: {len(index)} images selected; CKA needs at least 4")
    return x, np.asarray(index), info
