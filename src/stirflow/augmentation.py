"""Random augmentation of training batches: per-image parameters, batched operations.

Every parameter is drawn from a CPU ``torch.Generator`` (the training loop seeds one per epoch
from the run's seed), so a batch is augmented the same way on any device and a resumed epoch
repeats its draws exactly; the images themselves stay on the training device and each operation
runs once per batch. torchvision's transforms draw one parameter set per call, so applied to a
batch they would crop, jitter or rotate every image alike; the operations here follow
torchvision's definitions per image instead (tests compare them with torchvision's functional
API image by image).

Images are float (N, C, H, W) with values in [0, 1]; every operation keeps that range.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "augment",
    "resized_crop_boxes",
    "resized_crop",
    "random_resized_crop",
    "translate",
    "random_hflip",
    "color_jitter",
    "random_color_jitter",
    "rotate",
    "random_rotation",
]

#: torchvision's luma weights (``rgb_to_grayscale``), used by the contrast and saturation jitter.
GREY_WEIGHTS = (0.2989, 0.587, 0.114)


def augment(images: torch.Tensor, cfg: Mapping[str, Any], generator: torch.Generator, *,
            size: Sequence[int] | None = None) -> torch.Tensor:
    """The augmentations ``cfg`` switches on, in torchvision's usual order, each image drawn apart.

    ``cfg`` (the config's ``augment`` section): ``random_resized_crop`` (``{scale, ratio}`` or
    None), ``crop_padding``, ``hflip``, ``color_jitter`` (``{brightness, contrast, saturation}``),
    ``rotation`` (degrees). ``size`` (h, w): the random-resized crop's output size (default: the
    input size). Operations that are off draw nothing, so switching one on leaves the others'
    draws as they were before it.

    Args:
        images: (N, C, H, W) in [0, 1], on any device.
    Returns:
        (N, C, h, w) in [0, 1] on the same device: (h, w) = ``size`` after a random-resized crop.
    """
    crop = cfg.get("random_resized_crop")
    if crop is not None:
        images = random_resized_crop(images, generator, size=size or images.shape[-2:],
                                     scale=crop.get("scale", (0.08, 1.0)), ratio=crop.get("ratio", (3 / 4, 4 / 3)))
    if int(cfg.get("crop_padding", 0)) > 0:
        images = translate(images, int(cfg["crop_padding"]), generator)
    if cfg.get("hflip", False):
        images = random_hflip(images, generator)
    jitter = {k: float(v) for k, v in (cfg.get("color_jitter") or {}).items() if v}
    if jitter:
        images = random_color_jitter(images, generator, **jitter)
    if cfg.get("rotation"):
        images = random_rotation(images, float(cfg["rotation"]), generator)
    return images.contiguous()


# --------------------------------------------------------------------------- geometry

def resized_crop_boxes(n: int, height: int, width: int, generator: torch.Generator, *,
                       scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                       attempts: int = 10) -> torch.Tensor:
    """Crop boxes as torchvision's ``RandomResizedCrop.get_params`` draws them, one per image.

    Up to ``attempts`` tries of an area fraction uniform in ``scale`` and an aspect ratio
    log-uniform in ``ratio``; the first that fits the image wins, at a uniform position. An image
    where none fits gets the central crop of the largest box within ``ratio``.

    Returns:
        (n, 4) int64: top, left, height, width.
    """
    area = height * width
    target = area * torch.empty(n, attempts).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.log(torch.tensor([float(ratio[0]), float(ratio[1])]))
    aspect = torch.exp(torch.empty(n, attempts).uniform_(float(log_ratio[0]), float(log_ratio[1]), generator=generator))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.int8).argmax(1)  # the first attempt that fits (0 where none does)
    rows = torch.arange(n)
    w, h, found = w[rows, first], h[rows, first], fits.any(1)
    # the fallback: the whole image, cut to the nearest aspect ratio within ``ratio``
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    w, h = torch.where(found, w, float(fw)), torch.where(found, h, float(fh))
    u = torch.rand(n, 2, generator=generator)
    top = torch.where(found, torch.floor(u[:, 0] * (height - h + 1)), torch.floor((height - h) / 2))
    left = torch.where(found, torch.floor(u[:, 1] * (width - w + 1)), torch.floor((width - w) / 2))
    return torch.stack([top, left, h, w], 1).long()


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Each image's box, resized bilinearly to ``size``: one ``grid_sample`` for the batch.

    Samples where torchvision's ``resized_crop`` (crop, then bilinear interpolation without
    antialiasing, ``align_corners=False``) samples, clamped to the box as interpolation clamps to
    the cropped image's edge, so the results agree to float rounding. No antialiasing: a box
    smaller than ``size`` (enlarging, the usual case) needs none.

    Args:
        images: (N, C, H, W). boxes: (N, 4) top, left, height, width (pixels). size: (h, w).
    Returns:
        (N, C, h, w).
    """
    n, _, height, width = images.shape
    out_h, out_w = int(size[0]), int(size[1])
    boxes = boxes.to(device=images.device, dtype=images.dtype)
    top, left, h, w = boxes.unbind(1)

    def source(start, extent, out, full):  # (N, out) normalised source coordinates along one axis
        centres = (torch.arange(out, device=images.device, dtype=images.dtype) + 0.5) / out
        pixel = start[:, None] + (centres[None] * extent[:, None] - 0.5).clamp(min=0)
        pixel = torch.minimum(pixel, start[:, None] + extent[:, None] - 1)
        return (2 * pixel + 1) / full - 1

    ys, xs = source(top, h, out_h, height), source(left, w, out_w, width)
    grid = torch.stack([xs[:, None, :].expand(n, out_h, out_w), ys[:, :, None].expand(n, out_h, out_w)], -1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop(images: torch.Tensor, generator: torch.Generator, *, size: Sequence[int],
                        scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """torchvision's ``RandomResizedCrop(size, scale, ratio)`` with a box per image: (N, C, H, W) → (N, C, *size)."""
    n, _, height, width = images.shape
    return resized_crop(images, resized_crop_boxes(n, height, width, generator, scale=scale, ratio=ratio), size)


def translate(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels: reflect padding (zeros when the image is too
    small to reflect), then a crop at a random offset per image. (N, C, H, W) → (N, C, H, W)."""
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect" if pad < min(h, w) else "constant")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None]).to(images.device)  # (N, H)
    cols = (dx[:, None] + torch.arange(w)[None]).to(images.device)  # (N, W)
    idx = torch.arange(n, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def random_hflip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image flipped left-right with probability 1/2. (N, C, H, W) → (N, C, H, W)."""
    flip = (torch.rand(len(images), generator=generator) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def rotate(images: torch.Tensor, degrees: torch.Tensor, mode: str = "nearest") -> torch.Tensor:
    """Each image rotated counter-clockwise by its angle about its centre, corners filled with 0.

    torchvision's ``rotate`` (no expansion, ``fill=None``) with an angle per image: the same inverse
    affine map and the same ``grid_sample`` call. (N, C, H, W), degrees (N,) → (N, C, H, W).
    """
    n, _, h, w = images.shape
    theta = torch.deg2rad(degrees.to(device=images.device, dtype=images.dtype))
    cos, sin = torch.cos(theta), torch.sin(theta)
    # output pixel centres relative to the image centre, in pixels (torchvision's _gen_affine_grid)
    xs = torch.linspace(-w * 0.5 + 0.5, w * 0.5 - 0.5, w, device=images.device, dtype=images.dtype)
    ys = torch.linspace(-h * 0.5 + 0.5, h * 0.5 - 0.5, h, device=images.device, dtype=images.dtype)
    x, y = xs[None, None, :], ys[None, :, None]
    c, s = cos[:, None, None], sin[:, None, None]
    src_x = (c * x - s * y) / (0.5 * w)
    src_y = (s * x + c * y) / (0.5 * h)
    grid = torch.stack([src_x, src_y], -1)  # (N, H, W, 2)
    return F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)


def random_rotation(images: torch.Tensor, degrees: float, generator: torch.Generator) -> torch.Tensor:
    """torchvision's ``RandomRotation(degrees)`` with an angle per image, uniform in [−degrees, degrees]."""
    angles = torch.empty(len(images)).uniform_(-degrees, degrees, generator=generator)
    return rotate(images, angles)


# --------------------------------------------------------------------------- colour

def _grey(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) → (N, 1, H, W) luma, torchvision's ``rgb_to_grayscale``."""
    weights = torch.tensor(GREY_WEIGHTS, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_blend``: factor · images + (1 − factor) · other, clamped to [0, 1] (one fused
    ``lerp``: equal to float rounding)."""
    return torch.lerp(other.expand_as(images), images, factor[:, None, None, None]).clamp_(0, 1)


def color_jitter(images: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast and saturation with a factor each per image, applied in each image's order.

    torchvision's ``adjust_brightness`` (blend with black), ``adjust_contrast`` (with the mean
    grey level of the image) and ``adjust_saturation`` (with the image's grey version).

    Args:
        images: (N, 3, H, W) in [0, 1].
        factors: (N, 3) brightness, contrast, saturation factors (1 = unchanged).
        order: (N, 3) a permutation of 0, 1, 2 per image: which adjustment comes first, second, third.
    """
    factors, order = factors.cpu(), order.cpu()  # which images get what is decided on the CPU: no device sync
    adjustments = (
        lambda x, f: (f[:, None, None, None] * x).clamp_(0, 1),  # _blend with black
        lambda x, f: _blend(x, _grey(x).mean((1, 2, 3), keepdim=True), f),
        lambda x, f: _blend(x, _grey(x), f),
    )
    images = images.clone()
    for position in range(3):
        for k, adjust in enumerate(adjustments):
            # the images whose adjustment at this position is k (and changes them), adjusted together
            chosen = torch.nonzero((order[:, position] == k) & (factors[:, k] != 1)).flatten()
            if len(chosen):
                index = chosen.to(images.device)
                factor = factors[chosen, k].to(images.device, images.dtype)
                images.index_copy_(0, index, adjust(images.index_select(0, index), factor))
    return images


def random_color_jitter(images: torch.Tensor, generator: torch.Generator, *, brightness: float = 0.0,
                        contrast: float = 0.0, saturation: float = 0.0) -> torch.Tensor:
    """torchvision's ``ColorJitter(brightness, contrast, saturation)`` drawn per image: each factor
    uniform in [max(0, 1 − v), 1 + v] (1 where v = 0), the adjustments in a random order."""
    n = len(images)
    order = torch.rand(n, 3, generator=generator).argsort(1)
    factors = torch.ones(n, 3)
    for k, v in enumerate((brightness, contrast, saturation)):
        draw = torch.empty(n).uniform_(max(0.0, 1 - v), 1 + v, generator=generator)
        if v:
            factors[:, k] = draw
    return color_jitter(images, factors, order)
