"""The image corruptions of CIFAR-10-C, reimplemented in torch so they run batched on any device.

CIFAR-10-C (Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations", ICLR 2019) applies 15 common corruptions (plus 4 extra ones) at
5 severities to the CIFAR-10 test set. Its generator is ``make_cifar_c.py`` of
github.com/hendrycks/robustness (``ImageNet-C/create_c/make_cifar_c.py``), written with numpy,
scikit-image, OpenCV, ImageMagick, PIL and photographs of frost. This module redoes each
effect with the same severity constants (:data:`SEVERITY_CONSTANTS`) in torch, so a batch
``(N, 3, H, W)`` in [0, 1] is corrupted on the device it lives on::

    x_c = corrupt(x, "motion_blur", severity=3, seed=0)

Fidelity, measured against the generator's own outputs on 24 photo crops at 32 px
(tests/test_cifar10c_reference.py): the deterministic corruptions give its stored images to
float rounding before truncation, pixelate (PIL's two 8-bit passes per resize) and JPEG (PIL's
own codec) exactly; the random ones draw from the generator's distributions, their mean PSNR
within its seed-to-seed spread plus 0.25 dB. That includes its quirks: glass blur's "swap" of
numpy pixel views is a copy from an up-left neighbour, zoom blur's integer crops shift the zoom
off-centre, water spatter is shaded through Canny edges, a chamfer distance transform and
histogram equalisation as in OpenCV, and frost blends a random crop of one of the generator's
five photographs (package data, ``stirflow/frost``). The departures: elastic transform samples
once through the composed affine and elastic maps where the reference interpolates twice, and a
few borders differ (noted where they do). Store outputs as CIFAR-10-C does, truncated to uint8
(:func:`stirflow.robustness.to_stored_uint8`).

Image size. The constants are in pixels of a 32-px image. With ``s = min(H, W) / 32`` every
spatial constant is scaled by ``s``: blur widths, displacements and motion-blur lengths. For
images smaller than 32 px, kernels are built at the 32-px scale and integrated over the larger
pixels (:func:`_shrink_kernel`), so a small image sees a 32-px corruption followed by
downsampling rather than a blur that rounds away. Random layers (snow, spatter, fog, the
elastic displacement field, the frost crop) are rendered on a grid with a 32-px short side, as
the reference renders them, and resized to the image.

Randomness comes from one CPU ``torch.Generator`` seeded from ``(seed, name, severity)``; every
draw is made on the CPU and moved to the images' device, and matrix products and convolutions
run in full float32 (no TF32). So the output is a deterministic function of the batch, the seed,
the name and the severity, the same on every device up to float rounding. Draws are
batch-shaped, so an image's corruption depends on its position in the batch.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import math
import operator
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .catalog import COMMON_CORRUPTIONS, CORRUPTIONS, EXTRA_CORRUPTIONS

__all__ = [
    "COMMON_CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "CORRUPTIONS",
    "SEVERITY_CONSTANTS",
    "corrupt",
]

# Severity constants, index = severity - 1, copied from make_cifar_c.py of
# github.com/hendrycks/robustness (ImageNet-C/create_c/make_cifar_c.py), the CIFAR values, not
# the ImageNet ones. Spatial values are pixels of a 32-px image (or fractions of the image size
# where the reference writes IMSIZE * fraction).
SEVERITY_CONSTANTS: dict[str, tuple] = {
    # noise standard deviation
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    # photon count per unit intensity: x ~ Poisson(x * c) / c
    "shot_noise": (500, 250, 100, 75, 50),
    # fraction of values set to 0 or 1 (salt & pepper, half each)
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    # (disk radius, sigma of the anti-aliasing gaussian)
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    # (gaussian sigma, max pixel displacement, shuffle iterations)
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    # ImageMagick motion blur (radius, sigma); angle ~ U(-45, 45) degrees
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    # number of zoom factors 1.00, 1.01, ...: the reference's np.arange(1, stop, 0.01) with
    # stop = 1.06, 1.11, 1.16, 1.21, 1.26 has these lengths (floating-point arange)
    "zoom_blur": (7, 12, 16, 21, 26),
    # (noise mean, noise std, zoom, threshold, motion radius, motion sigma, image blend)
    "snow": (
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ),
    # (image weight, frost weight)
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    # (fog amount, plasma-fractal wibble decay)
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    # added to the HSV value channel
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    # factor on the deviation from the per-channel mean
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    # (displacement amplitude, displacement smoothing sigma, affine jitter), fractions of the size
    "elastic_transform": (
        (0, 0, 0.08),
        (0.05, 0.2, 0.07),
        (0.08, 0.06, 0.06),
        (0.1, 0.04, 0.05),
        (0.1, 0.03, 0.03),
    ),
    # resize factor of the box down/up-sampling
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    # JPEG quality
    "jpeg_compression": (80, 65, 58, 50, 40),
    # noise standard deviation, multiplicative: x + x * N(0, c)
    "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
    # gaussian sigma
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1),
    # (noise mean, noise std, smoothing sigma, threshold, water intensity or mud sigma, mud?)
    "spatter": (
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ),
    # (factor, offset) on the HSV saturation channel
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
}

_REFERENCE_SIZE = 32  # the image size the constants were written for
_MIN_SIZE = 8

Tensor = torch.Tensor


# ---------------------------------------------------------------------------------------------
# Small helpers: scale, randomness, resizing
# ---------------------------------------------------------------------------------------------

def _scale(x: Tensor) -> float:
    """Size of ``x`` (N, C, H, W) relative to the 32-px reference, by its short side."""
    return min(x.shape[-2:]) / _REFERENCE_SIZE


def _reference_grid(h: int, w: int) -> tuple[int, int]:
    """The (h, w) of a grid with the image's aspect ratio and a 32-px short side."""
    s = min(h, w) / _REFERENCE_SIZE
    return max(1, round(h / s)), max(1, round(w / s))


def _generator(seed: int, name: str, severity: int) -> torch.Generator:
    """A CPU generator whose seed mixes ``seed``, ``name`` and ``severity``.

    Always on the CPU: CPU and CUDA generators give different streams from one seed, so every
    draw is made on the CPU and moved to the images' device, and a corruption draws the same
    numbers on every device.
    """
    digest = hashlib.sha256(f"stirflow.corruptions/{name}/{severity}/{int(seed)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _rand(shape: Sequence[int], g: torch.Generator, like: Tensor) -> Tensor:
    return torch.rand(tuple(shape), generator=g, dtype=like.dtype).to(like.device)


def _randn(shape: Sequence[int], g: torch.Generator, like: Tensor) -> Tensor:
    return torch.randn(tuple(shape), generator=g, dtype=like.dtype).to(like.device)


def _randint(low: int, high: int, shape: Sequence[int], g: torch.Generator, like: Tensor) -> Tensor:
    return torch.randint(low, high, tuple(shape), generator=g).to(like.device)


def _uniform(shape: Sequence[int], low: float, high: float, g: torch.Generator, like: Tensor) -> Tensor:
    return low + (high - low) * _rand(shape, g, like)


def _resize(t: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``t`` (N, C, h, w) to ``size``, anti-aliased when it shrinks."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    shrink = size[0] < t.shape[-2] or size[1] < t.shape[-1]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def _quantize(t: Tensor) -> Tensor:
    """Round values in [0, 1] to 8 bits, where the reference stores an intermediate as uint8."""
    return torch.round(t.clamp(0, 1) * 255) / 255


def _gray(x: Tensor) -> Tensor:
    """Luma (N, 1, H, W) of RGB ``x`` (N, 3, H, W), OpenCV's RGB2GRAY weights."""
    w = x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


# ---------------------------------------------------------------------------------------------
# Filtering
# ---------------------------------------------------------------------------------------------
# A kernel is weights (..., kh, kw) (or taps (k,) along one axis) plus the offset of element 0:
# the output at p is sum_a K[a] * x[p + a + origin] (a correlation, like conv2d). Every kernel
# here contains the offset 0, so origins are <= 0. Separable filters run as two matrix products
# with the border folded into the matrices, which for images of a few hundred pixels or less is
# much faster than a convolution of single channels.

def _border_index(index: Tensor, size: int, mode: str) -> Tensor:
    """Map indices outside 0..size-1 inside: ``replicate`` repeats the edge pixel (scikit-image's
    "nearest", ImageMagick's "edge"), ``reflect`` mirrors without repeating it (OpenCV's default)."""
    if mode == "replicate" or size == 1:
        return index.clamp(0, size - 1)
    period = 2 * (size - 1)
    index = index.remainder(period)
    return torch.where(index >= size, period - index, index)


def _axis_matrix(size: int, taps: Tensor, origin: int, mode: str) -> Tensor:
    """The (size, size) matrix that filters one axis of length ``size`` with ``taps`` (k,).

    Built on the CPU: several taps can land on one border pixel, and CUDA's atomic adds would
    sum them in a varying order, which breaks bitwise reproducibility.
    """
    cpu_taps = taps.detach().to("cpu", torch.float64)
    i = torch.arange(size)[:, None]
    t = torch.arange(cpu_taps.numel())[None, :]
    source = _border_index(i + origin + t, size, mode)
    matrix = torch.zeros(size, size, dtype=torch.float64)
    matrix.scatter_add_(1, source, cpu_taps.expand(size, -1).contiguous())
    return matrix.to(device=taps.device, dtype=taps.dtype)


def _separable_filter(x: Tensor, taps: tuple[Tensor, int], taps_x: tuple[Tensor, int] | None = None,
                      mode: str = "replicate") -> Tensor:
    """Filter the columns and rows of ``x`` (N, C, H, W) with (taps, origin) pairs along y and x."""
    taps_x = taps if taps_x is None else taps_x
    h, w = x.shape[-2:]
    return _axis_matrix(h, *taps, mode) @ x @ _axis_matrix(w, *taps_x, mode).T


def _filter2d(x: Tensor, kernel: Tensor, oy: int, ox: int, mode: str = "replicate") -> Tensor:
    """Filter every channel of ``x`` (N, C, H, W) with ``kernel`` (kh, kw), or (N, kh, kw) per image.

    ``mode`` as in :func:`_border_index`; a mirrored border wider than the image falls back to
    repeating the edge.
    """
    n, c, h, w = x.shape
    kh, kw = kernel.shape[-2:]
    pad = (-ox, kw - 1 + ox, -oy, kh - 1 + oy)
    if mode == "reflect" and (max(pad[:2]) >= w or max(pad[2:]) >= h):
        mode = "replicate"
    xp = F.pad(x, pad, mode=mode)
    if kernel.dim() == 2:
        return F.conv2d(xp, kernel.expand(c, 1, kh, kw), groups=c)
    weight = kernel.repeat_interleave(c, dim=0)[:, None]
    return F.conv2d(xp.reshape(1, n * c, *xp.shape[-2:]), weight, groups=n * c).view(n, c, h, w)


def _tent_matrix(k0: int, k1: int, m: float, like: Tensor) -> tuple[Tensor, int]:
    """Weights (J, K) that carry reference-pixel offsets k0..k1 to pixels ``m`` times larger.

    Nearest-upsampling by m, filtering, and area-downsampling by m is one filter whose taps are
    the reference taps weighted by the overlap of two m-wide pixels: a tent of half-width m.
    The tents sum to one over j, so kernel sums are kept. Returns the matrix and the first
    offset j0 of the coarse kernel.
    """
    j0, j1 = math.floor(k0 / m), math.ceil(k1 / m)
    j = torch.arange(j0, j1 + 1, device=like.device, dtype=like.dtype)[:, None]
    k = torch.arange(k0, k1 + 1, device=like.device, dtype=like.dtype)[None, :]
    return (1 - (k - j * m).abs() / m).clamp_min(0), j0


def _shrink_kernel(kernel: Tensor, oy: int, ox: int, m: float) -> tuple[Tensor, int, int]:
    """A kernel (..., kh, kw) at the reference scale, for pixels ``m`` >= 1 times larger."""
    if m <= 1:
        return kernel, oy, ox
    ty, jy = _tent_matrix(oy, oy + kernel.shape[-2] - 1, m, kernel)
    tx, jx = _tent_matrix(ox, ox + kernel.shape[-1] - 1, m, kernel)
    return ty @ kernel @ tx.T, jy, jx


def _gaussian_taps(sigma: float, s: float, like: Tensor, truncate: float = 4.0) -> tuple[Tensor, int]:
    """Gaussian taps and origin for a reference ``sigma`` at scale ``s``.

    Truncated as scipy and scikit-image do, at radius ``int(truncate * sigma + 0.5)``.
    """
    sigma_px = sigma * max(s, 1.0)
    radius = int(truncate * sigma_px + 0.5)
    t = torch.arange(-radius, radius + 1, device=like.device, dtype=like.dtype)
    taps = torch.exp(-0.5 * (t / sigma_px) ** 2)
    taps = (taps / taps.sum())[None]
    taps, _, origin = _shrink_kernel(taps, 0, -radius, 1 / s)
    return taps[0], origin


def _gaussian_filter(x: Tensor, sigma: float, s: float = 1.0, truncate: float = 4.0) -> Tensor:
    """Gaussian blur of every channel of ``x`` (N, C, H, W), edges repeated (scikit-image's
    ``gaussian``); ``sigma`` in reference pixels."""
    if sigma <= 0:
        return x
    return _separable_filter(x, _gaussian_taps(sigma, s, x, truncate))


def _box3(x: Tensor) -> Tensor:
    """OpenCV's ``blur(x, (3, 3))``: a 3x3 mean with mirrored borders."""
    return _separable_filter(x, (x.new_full((3,), 1 / 3), -1), mode="reflect")


# ---------------------------------------------------------------------------------------------
# Textures
# ---------------------------------------------------------------------------------------------

def _plasma_fractal(n: int, size: int, decay: float, g: torch.Generator, like: Tensor) -> Tensor:
    """Diamond-square height maps (n, size, size) in [0, 1]; ``size`` a power of two.

    The reference's ``plasma_fractal`` batched: each step adds uniform noise of amplitude
    ``wibble**2`` to the mean of four neighbours (wrapping around), then divides ``wibble`` by
    ``decay``; a smaller decay keeps more fine structure.
    """
    assert size >= 2 and size & (size - 1) == 0
    maps = like.new_zeros(n, size, size)
    step, wibble = size, 100.0

    def wibbled_mean(a: Tensor) -> Tensor:
        return a / 4 + wibble * _uniform(a.shape, -wibble, wibble, g, like)

    while step >= 2:
        half = step // 2
        corners = maps[:, 0::step, 0::step]
        square = corners + corners.roll(-1, 1)
        square = square + square.roll(-1, 2)
        maps[:, half::step, half::step] = wibbled_mean(square)
        centres = maps[:, half::step, half::step]
        corners = maps[:, 0::step, 0::step]
        maps[:, 0::step, half::step] = wibbled_mean(
            centres + centres.roll(1, 1) + corners + corners.roll(-1, 2))
        maps[:, half::step, 0::step] = wibbled_mean(
            centres + centres.roll(1, 2) + corners + corners.roll(-1, 1))
        step //= 2
        wibble /= decay
    flat = maps.flatten(1)
    lo, hi = flat.amin(1).view(n, 1, 1), flat.amax(1).view(n, 1, 1)
    return (maps - lo) / (hi - lo).clamp_min(1e-12)


def _motion_taps(radius: float, sigma: float, angles: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """ImageMagick's ``MotionBlurImage`` taps: weights (k,) and offsets dy, dx (N, k) per angle.

    ``2 * ceil(radius) + 1`` taps of a one-sided gaussian, weights exp(-i^2 / 2 sigma^2) for
    i = 0, 1, ..., at offsets ``i * (cos a, sin a)`` rounded as ImageMagick rounds them. Taps
    below 1e-6 of the first are dropped: they change nothing but the run time.
    """
    width = 2 * math.ceil(radius) + 1
    width = min(width, math.ceil(sigma * math.sqrt(2 * math.log(1e6))) + 1)
    i = torch.arange(width, device=angles.device, dtype=angles.dtype)
    weights = torch.exp(-(i**2) / (2 * sigma**2))
    rad = torch.deg2rad(angles)[:, None]
    dx = torch.ceil(i * torch.cos(rad) - 0.5).long()
    dy = torch.ceil(i * torch.sin(rad) - 0.5).long()
    return weights / weights.sum(), dy, dx


def _shift(x: Tensor, dy: Tensor, dx: Tensor) -> Tensor:
    """``x`` (N, C, H, W) read at p + (dy[n], dx[n]) per image, edges repeated outside."""
    n, c, h, w = x.shape
    rows = (torch.arange(h, device=x.device) + dy[:, None]).clamp(0, h - 1)
    cols = (torch.arange(w, device=x.device) + dx[:, None]).clamp(0, w - 1)
    index = (rows[:, :, None] * w + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return x.reshape(n, c, h * w).gather(2, index).view(n, c, h, w)


def _motion_blur(x: Tensor, radius: float, sigma: float, angles: Tensor, s: float) -> Tensor:
    """Motion blur of ``x`` (N, C, H, W), one angle (degrees) per image; radius and sigma in
    reference pixels, edges repeated (ImageMagick's default virtual pixels)."""
    k = max(s, 1.0)
    weights, dy, dx = _motion_taps(radius * k, sigma * k, angles)
    if s >= 1:  # a few taps along a line: sum shifted copies
        out = torch.zeros_like(x)
        for i in range(weights.numel()):
            out = out + weights[i] * _shift(x, dy[:, i], dx[:, i])
        return out
    # smaller pixels than the reference: a dense per-image kernel, integrated over the pixels
    n = angles.shape[0]
    oy, ox = int(dy.min()), int(dx.min())
    kh, kw = int(dy.max()) - oy + 1, int(dx.max()) - ox + 1
    kernels = x.new_zeros(n, kh * kw)
    kernels.scatter_add_(1, (dy - oy) * kw + (dx - ox), weights.expand(n, -1).contiguous())
    kernels, oy, ox = _shrink_kernel(kernels.view(n, kh, kw), oy, ox, 1 / s)
    return _filter2d(x, kernels, oy, ox)


def _zoom_coordinates(size: int, zoom: float, like: Tensor) -> Tensor:
    """Source coordinates (size,) of the reference's ``clipped_zoom`` along one axis.

    It crops ``ceil(size / zoom)`` pixels starting at ``(size - crop) // 2``, zooms them with
    scipy (``round(crop * zoom)`` pixels, corner pixels aligned) and keeps ``size`` pixels
    starting at ``(zoomed - size) // 2``. The integer crops make the zoom off-centre by up to a
    pixel and its factor slightly different from ``zoom``; that is what CIFAR-10-C contains.
    """
    crop = math.ceil(size / zoom)
    top = (size - crop) // 2
    zoomed = int(round(crop * zoom))
    trim = (zoomed - size) // 2
    step = (crop - 1) / (zoomed - 1) if zoomed > 1 else 0.0
    return top + (torch.arange(size, device=like.device, dtype=like.dtype) + trim) * step


def _linear_matrix(coordinates: Tensor, size: int) -> Tensor:
    """The (len, size) matrix sampling an axis of length ``size`` linearly at ``coordinates``."""
    lo = coordinates.floor().clamp(0, size - 1)
    frac = coordinates - lo
    lo = lo.long()
    hi = (lo + 1).clamp_max(size - 1)
    matrix = coordinates.new_zeros(coordinates.numel(), size)
    matrix.scatter_add_(1, lo[:, None], (1 - frac)[:, None])
    return matrix.scatter_add_(1, hi[:, None], frac[:, None])


def _clipped_zoom(x: Tensor, zoom: float) -> Tensor:
    """Zoom ``x`` (N, C, H, W) into its centre by ``zoom`` >= 1, bilinear, as the reference does."""
    h, w = x.shape[-2:]
    zy = _linear_matrix(_zoom_coordinates(h, zoom, x), h)
    zx = _linear_matrix(_zoom_coordinates(w, zoom, x), w)
    return zy @ x @ zx.T


# ---------------------------------------------------------------------------------------------
# Colour
# ---------------------------------------------------------------------------------------------

def _rgb_to_hsv(x: Tensor) -> Tensor:
    """RGB (N, 3, H, W) in [0, 1] to HSV (N, 3, H, W), all channels in [0, 1] (scikit-image's)."""
    r, g, b = x.unbind(1)
    v, _ = x.max(1)
    delta = v - x.min(1)[0]
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    s = torch.where(v > 0, delta / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    h = torch.where(v == r, (g - b) / safe, torch.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = torch.where(delta > 0, (h / 6) % 1.0, torch.zeros_like(h))
    return torch.stack((h, s, v), 1)


def _hsv_to_rgb(x: Tensor) -> Tensor:
    """HSV (N, 3, H, W) with channels in [0, 1] to RGB (N, 3, H, W)."""
    h, s, v = x.unbind(1)
    n = x.new_tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)
    k = (n + h[:, None] * 6) % 6
    f = torch.minimum(k, 4 - k).clamp(0, 1)
    return v[:, None] - (v * s)[:, None] * f


# ---------------------------------------------------------------------------------------------
# The corruptions. Each takes x (N, 3, H, W) in [0, 1], its severity constant and a generator,
# and returns (N, 3, H, W), not yet clamped.
# ---------------------------------------------------------------------------------------------

def gaussian_noise(x: Tensor, c: float, g: torch.Generator) -> Tensor:
    return x + c * _randn(x.shape, g, x)


def shot_noise(x: Tensor, c: float, g: torch.Generator) -> Tensor:
    # drawn on the CPU (see _generator); the rates x * c are the same on every device
    return torch.poisson((x * c).cpu(), generator=g).to(x.device) / c


def impulse_noise(x: Tensor, c: float, g: torch.Generator) -> Tensor:
    """Salt and pepper on each value independently, as scikit-image's ``random_noise('s&p')``."""
    hit = _rand(x.shape, g, x) < c
    salt = (_rand(x.shape, g, x) < 0.5).to(x.dtype)
    return torch.where(hit, salt, x)


def speckle_noise(x: Tensor, c: float, g: torch.Generator) -> Tensor:
    return x + x * c * _randn(x.shape, g, x)


def gaussian_blur(x: Tensor, c: float, g: torch.Generator) -> Tensor:
    return _gaussian_filter(x, c, _scale(x))


def _disk_kernel(radius: float, alias_sigma: float, like: Tensor, enlarged: bool = False) -> Tensor:
    """The reference ``disk``: pixels within ``radius``, normalised, then a small gaussian blur.

    OpenCV blurs with a 3x3 window; enlarged images get a window of ``ceil(3 sigma)``.
    """
    r = math.floor(radius)
    gr = max(1, math.ceil(3 * alias_sigma)) if enlarged else 1
    t = torch.arange(-r - gr, r + gr + 1, device=like.device, dtype=like.dtype)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius**2).to(like.dtype)
    disk = disk / disk.sum()
    u = torch.arange(-gr, gr + 1, device=like.device, dtype=like.dtype)
    taps = torch.exp(-0.5 * (u / alias_sigma) ** 2)
    taps = taps / taps.sum()  # the disk has a zero margin of gr, so the border never matters
    return _separable_filter(disk[None, None], (taps, -gr), mode="replicate")[0, 0]


def defocus_blur(x: Tensor, c: tuple[float, float], g: torch.Generator) -> Tensor:
    """Filtering with an anti-aliased disk, mirrored borders (OpenCV's ``filter2D``)."""
    s = _scale(x)
    k = max(s, 1.0)
    kernel = _disk_kernel(c[0] * k, c[1] * k, x, enlarged=k > 1)
    r = (kernel.shape[-1] - 1) // 2
    kernel, oy, ox = _shrink_kernel(kernel, -r, -r, 1 / s)
    return _filter2d(x, kernel, oy, ox, mode="reflect")


def _glass_shuffle(x: Tensor, d: int, keep: float, g: torch.Generator) -> Tensor:
    """The reference's local pixel "swaps" over ``x`` (N, C, H, W), as one gather.

    The reference visits rows H-d .. d+1 and columns W-d .. d+1 in reverse order and runs
    ``x[p], x[q] = x[q], x[p]`` with q = p + (dy, dx), dy, dx = ``np.random.randint(-d, d)``
    (so in [-d, d-1]). On numpy pixel views that statement copies x[q] into x[p] and leaves
    x[q] as it was. For d = 1 (the CIFAR constants) every q is visited after p, so each
    visited pixel takes an untouched neighbour's value: exactly this gather. For d > 1
    (enlarged images) the reference would sometimes copy an already-copied pixel; the gather
    ignores those chains. Only a fraction ``keep`` of the pixels move, for images whose pixels
    are larger than a reference pixel.
    """
    n, c, h, w = x.shape
    shape = (n, 1, h, w)
    dy = _randint(-d, d, shape, g, x)
    dx = _randint(-d, d, shape, g, x)
    rows = torch.arange(h, device=x.device).view(1, 1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, 1, w)
    visited = (rows > d) & (rows <= h - d) & (cols > d) & (cols <= w - d)
    if keep < 1:
        visited = visited & (_rand(shape, g, x) < keep)
    rows = (rows + dy * visited).clamp(0, h - 1)
    cols = (cols + dx * visited).clamp(0, w - 1)
    index = (rows * w + cols).view(n, 1, h * w).expand(n, c, h * w)
    return x.reshape(n, c, h * w).gather(2, index).view(n, c, h, w)


def glass_blur(x: Tensor, c: tuple[float, int, int], g: torch.Generator) -> Tensor:
    """Gaussian blur, the reference's local pixel shuffle (:func:`_glass_shuffle`), blur again."""
    sigma, delta, iterations = c
    s = _scale(x)
    x = _gaussian_filter(x, sigma, s)
    x = _quantize(x)
    for _ in range(iterations):
        x = _glass_shuffle(x, max(1, round(delta * s)), min(1.0, s), g)
    return _gaussian_filter(x, sigma, s)


def motion_blur(x: Tensor, c: tuple[float, float], g: torch.Generator) -> Tensor:
    """ImageMagick's motion blur, one random angle in [-45, 45] degrees per image."""
    angles = _uniform((x.shape[0],), -45, 45, g, x)
    return _motion_blur(x, c[0], c[1], angles, _scale(x))


def zoom_blur(x: Tensor, c: int, g: torch.Generator) -> Tensor:
    """Mean of the image and its zooms by 1.00, 1.01, ... (``c`` factors, 1.00 included)."""
    step = (1 + 0.01) - 1  # np.arange's step: its 26th factor rounds 26 * 1.25 up, not to even
    out = x.clone()
    for k in range(c):
        out = out + _clipped_zoom(x, 1 + k * step)
    return out / (c + 1)


def snow(x: Tensor, c: tuple, g: torch.Generator) -> Tensor:
    """Thresholded, zoomed gaussian noise, motion-blurred downwards, added twice (and rotated).

    The snow layer is rendered on the 32-px reference grid with the reference constants and
    resized to the image.
    """
    loc, scale, zoom, threshold, radius, sigma, blend = c
    n, _, h, w = x.shape
    gh, gw = _reference_grid(h, w)
    layer = loc + scale * _randn((n, 1, gh, gw), g, x)
    layer = _clipped_zoom(layer, zoom)
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer).clamp(0, 1)
    layer = _quantize(layer)  # blurred as an 8-bit image
    angles = _uniform((n,), -135, -45, g, x)
    layer = _quantize(_motion_blur(layer, radius, sigma, angles, 1.0))
    layer = _resize(layer, (h, w))
    x = blend * x + (1 - blend) * torch.maximum(x, _gray(x) * 1.5 + 0.5)
    return x + layer + layer.flip(-2, -1)


# The generator's frost photographs, resized by 0.2 as its CIFAR code does (package data, see
# frost/README.md), in the order it draws them: its frost3.png resized equals frost2.png resized.
_FROST_PHOTOS = ("frost1", "frost2", "frost2", "frost4", "frost5")


@functools.lru_cache(maxsize=1)
def frost_photographs() -> tuple[Tensor, ...]:
    """The five photographs the generator draws from, uint8 (3, h, w) each, read from the package."""
    from importlib.resources import files

    folder = files(__package__) / "frost"
    photos = []
    for name in _FROST_PHOTOS:
        with (folder / f"{name}_x0.2.png").open("rb") as f:
            photos.append(torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1).contiguous())
    return tuple(photos)


def _frost_crops(n: int, gh: int, gw: int, g: torch.Generator) -> Tensor:
    """``n`` random (gh, gw) crops (n, 3, gh, gw) in 0..255 of random frost photographs.

    As the generator: a photograph drawn uniformly from five, then the crop's top-left corner
    uniformly from ``0 .. size - crop - 1`` along each axis (``np.random.randint(0, size - crop)``).
    """
    photos = frost_photographs()
    heights = torch.tensor([p.shape[1] for p in photos])
    widths = torch.tensor([p.shape[2] for p in photos])
    stack = torch.zeros(len(photos), 3, int(heights.max()), int(widths.max()), dtype=torch.uint8)
    for i, p in enumerate(photos):
        stack[i, :, : p.shape[1], : p.shape[2]] = p
    which = torch.randint(len(photos), (n,), generator=g)
    top = (torch.rand(n, generator=g, dtype=torch.float64) * (heights[which] - gh)).long()
    left = (torch.rand(n, generator=g, dtype=torch.float64) * (widths[which] - gw)).long()
    rows = top[:, None] + torch.arange(gh)
    cols = left[:, None] + torch.arange(gw)
    crops = stack[which[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (n, gh, gw, 3)
    return crops.permute(0, 3, 1, 2)


def frost(x: Tensor, c: tuple[float, float], g: torch.Generator) -> Tensor:
    """``c0 * x + c1 * frost`` with a random crop of a random frost photograph (the generator's).

    The crop has the image's aspect ratio and a 32-px short side (at most what every photograph
    holds) and is resized to the image, so larger images see the CIFAR-scale frost.
    """
    n, _, h, w = x.shape
    gh, gw = _reference_grid(h, w)
    photos = frost_photographs()
    fit = min(1.0, (min(p.shape[1] for p in photos) - 1) / gh, (min(p.shape[2] for p in photos) - 1) / gw)
    gh, gw = max(1, int(gh * fit)), max(1, int(gw * fit))
    crops = _frost_crops(n, gh, gw, g).to(device=x.device, dtype=x.dtype) / 255
    return c[0] * x + c[1] * _resize(crops, (h, w))


def fog(x: Tensor, c: tuple[float, float], g: torch.Generator) -> Tensor:
    """Add a plasma fractal, then rescale so the brightest value of the image is kept."""
    amount, decay = c
    n, _, h, w = x.shape
    gh, gw = _reference_grid(h, w)
    size = 1 << max(1, math.ceil(math.log2(max(gh, gw))))
    plasma = _plasma_fractal(n, size, decay, g, x)[:, None, :gh, :gw]
    top = x.flatten(1).amax(1).view(n, 1, 1, 1)
    return (x + amount * _resize(plasma, (h, w))) * top / (top + amount)


def brightness(x: Tensor, c: float, g: torch.Generator) -> Tensor:
    hsv = _rgb_to_hsv(x)
    hsv = torch.cat((hsv[:, :2], (hsv[:, 2:] + c).clamp(0, 1)), 1)
    return _hsv_to_rgb(hsv)


def saturate(x: Tensor, c: tuple[float, float], g: torch.Generator) -> Tensor:
    hsv = _rgb_to_hsv(x)
    hsv = torch.cat((hsv[:, :1], (hsv[:, 1:2] * c[0] + c[1]).clamp(0, 1), hsv[:, 2:]), 1)
    return _hsv_to_rgb(hsv)


def contrast(x: Tensor, c: float, g: torch.Generator) -> Tensor:
    mean = x.mean(dim=(-2, -1), keepdim=True)
    return (x - mean) * c + mean


def elastic_transform(x: Tensor, c: tuple[float, float, float], g: torch.Generator) -> Tensor:
    """A random affine warp followed by a smooth random displacement field, bilinear.

    The affine map moves three points around the centre by U(-c2, c2) each (OpenCV's
    ``getAffineTransform``); the field is U(-1, 1) noise smoothed with sigma c1 (truncated at
    3 sigma) times c0, rendered on the 32-px grid. The reference interpolates twice (warp,
    then ``map_coordinates``); here both maps are composed and sampled once, with mirrored
    borders, and the noise is smoothed with repeated rather than mirrored edges.
    """
    alpha, sigma, jitter = c
    n, _, h, w = x.shape
    short = min(h, w)
    ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1).expand(n, h, w)
    xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w).expand(n, h, w)
    if alpha > 0:
        gh, gw = _reference_grid(h, w)
        noise = _uniform((n, 2, gh, gw), -1, 1, g, x)
        field = _gaussian_filter(noise, sigma * _REFERENCE_SIZE, 1.0, truncate=3.0) * alpha * _REFERENCE_SIZE
        field = _resize(field, (h, w)) * (short / _REFERENCE_SIZE)
        xs, ys = xs + field[:, 0], ys + field[:, 1]
    centre = x.new_tensor([w // 2, h // 2])
    half = short // 3
    pts1 = torch.stack((centre + half, centre + x.new_tensor([half, -half]), centre - half))
    pts2 = pts1 + _uniform((n, 3, 2), -jitter * short, jitter * short, g, x)
    src = torch.cat((pts1, pts1.new_ones(3, 1)), 1).expand(n, 3, 3)
    forward = torch.linalg.solve(src, pts2).transpose(1, 2)  # (N, 2, 3): pts1 -> pts2
    a_inv = torch.linalg.inv(forward[:, :, :2])
    t = forward[:, :, 2]
    # the affine warp runs first, so the displaced point is mapped back through it
    px, py = xs - t[:, 0, None, None], ys - t[:, 1, None, None]
    sx = a_inv[:, 0, 0, None, None] * px + a_inv[:, 0, 1, None, None] * py
    sy = a_inv[:, 1, 0, None, None] * px + a_inv[:, 1, 1, None, None] * py
    grid = torch.stack((2 * sx / (w - 1) - 1, 2 * sy / (h - 1) - 1), -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)


@functools.lru_cache(maxsize=64)
def _pil_box_weights(in_size: int, out_size: int) -> Tensor:
    """The (out, in) resampling matrix of PIL's ``Image.resize(..., Image.BOX)`` along one axis.

    PIL averages the input pixels whose centres fall in each output pixel's footprint (for
    enlargement that is the nearest input pixel).
    """
    scale = in_size / out_size
    support = 0.5 * max(scale, 1.0)
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    for o in range(out_size):
        centre = (o + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), in_size)
        for i in range(lo, hi):
            t = (i - centre + 0.5) / max(scale, 1.0)
            weights[o, i] = 1.0 if -0.5 < t <= 0.5 else 0.0
        weights[o] /= weights[o].sum().clamp_min(1e-12)
    return weights


def _pil_resize_axis(v: Tensor, size: int, dim: int) -> Tensor:
    """PIL's BOX resize of 8-bit values ``v`` (N, C, H, W, in 0..255) along ``dim`` (-1 or -2),
    rounded to 8 bits (half up) as PIL stores every pass."""
    weights = _pil_box_weights(v.shape[dim], size).to(device=v.device, dtype=v.dtype)
    out = v @ weights.T if dim == -1 else weights @ v
    return torch.floor(out + 0.5).clamp(0, 255)


def pixelate(x: Tensor, c: float, g: torch.Generator) -> Tensor:
    """PIL's box-downsample to ``int(size * c)`` and box-upsample back, as the reference does on
    8-bit images: each resize runs the horizontal pass, then the vertical one, each rounded."""
    h, w = x.shape[-2:]
    v = torch.round(x * 255)  # the 8-bit image PIL is given
    v = _pil_resize_axis(_pil_resize_axis(v, max(1, int(w * c)), -1), max(1, int(h * c)), -2)
    v = _pil_resize_axis(_pil_resize_axis(v, w, -1), h, -2)
    return v / 255


def _jpeg_roundtrip(images: Tensor, quality: int) -> Tensor:
    """Encode and decode uint8 images (N, 3, H, W) on the CPU with PIL, as the reference does."""
    out = []
    for image in images.permute(0, 2, 3, 1).numpy():
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=quality)
        buffer.seek(0)
        out.append(torch.from_numpy(np.array(Image.open(buffer).convert("RGB"))))
    return torch.stack(out).permute(0, 3, 1, 2)


def jpeg_compression(x: Tensor, c: int, g: torch.Generator) -> Tensor:
    """A real JPEG round trip at quality ``c`` (PIL's defaults otherwise, 4:2:0 chroma)."""
    u8 = (x * 255).round().clamp(0, 255).to(torch.uint8).cpu()
    decoded = _jpeg_roundtrip(u8, int(c))
    return decoded.to(device=x.device, dtype=x.dtype) / 255


def _shifted(t: Tensor, dy: int, dx: int, fill: float = 0.0) -> Tensor:
    """``t`` (N, C, H, W) read at p + (dy, dx), ``fill`` outside the image."""
    h, w = t.shape[-2:]
    padded = F.pad(t, (max(-dx, 0), max(dx, 0), max(-dy, 0), max(dy, 0)), value=fill)
    return padded[..., max(dy, 0):max(dy, 0) + h, max(dx, 0):max(dx, 0) + w]


def _canny(img: Tensor, low: float, high: float) -> Tensor:
    """OpenCV's ``Canny`` (3x3 Sobel, L1 magnitude) of ``img`` (N, 1, H, W) in 0..255, as bool.

    Non-maximum suppression along the gradient direction quantised to 0, 45, 90, 135 degrees
    with OpenCV's tie rules, then hysteresis: pixels above ``low`` that connect (8-neighbours)
    to a pixel above ``high``.
    """
    smooth, diff = (img.new_tensor([1, 2, 1]), -1), (img.new_tensor([-1, 0, 1]), -1)
    gx = _separable_filter(img, smooth, diff)
    gy = _separable_filter(img, diff, smooth)
    mag = gx.abs() + gy.abs()
    ax, ay = gx.abs(), gy.abs()
    tan22 = math.tan(math.radians(22.5))
    horizontal = ay < ax * tan22
    vertical = ~horizontal & (ay > ax * (tan22 + 2))
    s = torch.where((gx < 0) != (gy < 0), -1, 1)
    left, right = _shifted(mag, 0, -1), _shifted(mag, 0, 1)
    up, down = _shifted(mag, -1, 0), _shifted(mag, 1, 0)
    # diagonal neighbours (-1, -s) and (1, s): s = 1 is the main diagonal, s = -1 the other
    diag = torch.where(s > 0, (mag > _shifted(mag, -1, -1)) & (mag > _shifted(mag, 1, 1)),
                       (mag > _shifted(mag, -1, 1)) & (mag > _shifted(mag, 1, -1)))
    peak = torch.where(horizontal, (mag > left) & (mag >= right),
                       torch.where(vertical, (mag > up) & (mag >= down), diag))
    candidate = peak & (mag > low)
    edges = candidate & (mag > high)
    while True:
        grown = candidate & (F.max_pool2d(edges.to(img.dtype), 3, 1, 1) > 0)
        if torch.equal(grown, edges):
            return edges
        edges = grown


# OpenCV's 5x5 chamfer mask for DIST_L2: ((dy, dx), step length)
_CHAMFER_STEPS = (
    *(((dy, dx), 1.0) for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))),
    *(((dy, dx), 1.4) for dy in (-1, 1) for dx in (-1, 1)),
    *(((dy, dx), 2.1969) for dy, dx in ((-2, -1), (-2, 1), (2, -1), (2, 1), (-1, -2), (1, -2), (-1, 2), (1, 2))),
)


def _distance_transform(edges: Tensor, limit: float, like: Tensor) -> Tensor:
    """Distance (N, 1, H, W) to the nearest True of ``edges``, OpenCV's 5x5 ``DIST_L2`` chamfer, capped.

    Chamfer steps 1 (edge neighbours), 1.4 (diagonal), 2.1969 (knight moves), relaxed until no
    distance below ``limit`` changes; the result is OpenCV's, which does the same in two scans.
    """
    h, w = edges.shape[-2:]
    dist = torch.where(edges, 0.0, limit).to(like.dtype)
    for _ in range(math.ceil(limit)):
        padded = F.pad(dist, (2, 2, 2, 2), value=limit)
        relaxed = dist
        for (dy, dx), length in _CHAMFER_STEPS:
            relaxed = torch.minimum(relaxed, padded[..., 2 + dy:2 + dy + h, 2 + dx:2 + dx + w] + length)
        if torch.equal(relaxed, dist):
            break
        dist = relaxed
    return dist.clamp_max(limit)


def _equalize(values: Tensor, levels: int) -> Tensor:
    """OpenCV's ``equalizeHist`` per image of integer ``values`` (N, 1, H, W) in 0..levels-1, to [0, 1]."""
    n = values.shape[0]
    v = values.flatten(1).long()
    counts = torch.zeros(n, levels, device=values.device, dtype=values.dtype)
    counts.scatter_add_(1, v, torch.ones_like(values.flatten(1)))
    cdf = counts.cumsum(1)
    first = torch.where(counts > 0, cdf, torch.full_like(cdf, float("inf"))).amin(1, keepdim=True)
    lut = ((cdf - first) / (cdf[:, -1:] - first).clamp_min(1)).clamp_min(0)
    return lut.gather(1, v).view_as(values)


def spatter(x: Tensor, c: tuple, g: torch.Generator) -> Tensor:
    """Water drops (severities 1-3) or mud (4-5) from thresholded, smoothed gaussian noise.

    Rendered on the 32-px reference grid and resized. Water shades each drop by the distance
    to its Canny edges (capped at 20 px, blurred, histogram-equalised, embossed, blurred), as
    the reference does with OpenCV; mud is a blurred mask kept where it exceeds 0.8.
    """
    loc, scale, sigma, threshold, strength, mud = c
    n, _, h, w = x.shape
    gh, gw = _reference_grid(h, w)
    liquid = _gaussian_filter(loc + scale * _randn((n, 1, gh, gw), g, x), sigma)
    liquid = torch.where(liquid < threshold, torch.zeros_like(liquid), liquid)
    if mud:
        m = _gaussian_filter((liquid > threshold).to(x.dtype), strength)
        m = _resize(torch.where(m < 0.8, torch.zeros_like(m), m), (h, w))
        brown = x.new_tensor([63, 42, 20]).view(1, 3, 1, 1) / 255
        return x * (1 - m) + brown * m
    liquid = torch.floor(liquid * 255) / 255  # an 8-bit image for Canny
    dist = _distance_transform(_canny(liquid * 255, 50, 150), 20, x)
    dist = torch.floor(_box3(dist) + 1e-4)  # truncated to uint8
    dist = _quantize(_equalize(dist, 21))
    emboss = x.new_tensor([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
    dist = _quantize(_filter2d(dist, emboss, -1, -1, mode="reflect"))
    dist = _quantize(_box3(dist))
    m = liquid * dist
    m = m / m.flatten(1).amax(1).clamp_min(1e-12).view(n, 1, 1, 1) * strength
    water = x.new_tensor([175, 238, 238]).view(1, 3, 1, 1) / 255
    return x + _resize(m, (h, w)) * water


_FUNCTIONS: dict[str, Callable[[Tensor, object, torch.Generator], Tensor]] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "snow": snow,
    "frost": frost,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
    "speckle_noise": speckle_noise,
    "gaussian_blur": gaussian_blur,
    "spatter": spatter,
    "saturate": saturate,
}


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _full_float32():
    """Matrix products and convolutions in full float32 precision while corrupting.

    CUDA convolutions (and matrix products, where a user allows it) run in TF32 by default, with
    about 1e-3 relative error; corrupted images must agree across devices to float rounding.
    """
    if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision"):
        settings = [torch.backends.cuda.matmul, torch.backends.cudnn.conv]
        key, full = "fp32_precision", "ieee"
    else:  # torch before the fp32_precision settings
        settings = [torch.backends.cuda.matmul, torch.backends.cudnn]
        key, full = "allow_tf32", False
    before = [getattr(s, key) for s in settings]
    for s in settings:
        setattr(s, key, full)
    try:
        yield
    finally:
        for s, value in zip(settings, before):
            setattr(s, key, value)


def _check_images(images: Tensor) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point with values in [0, 1], got {images.dtype}")
    if min(images.shape[-2:]) < _MIN_SIZE:
        raise ValueError(f"images must be at least {_MIN_SIZE} px on each side, got {tuple(images.shape[-2:])}")


def corrupt(images: Tensor, name: str, severity: int, *, seed: int = 0) -> Tensor:
    """Apply corruption ``name`` at ``severity`` (1..5) to ``images`` (N, 3, H, W) in [0, 1].

    Returns a tensor of the same shape, dtype and device, clamped to [0, 1]. All work stays on
    the images' device except JPEG coding, which runs on the CPU. Deterministic for a given
    batch, ``seed``, ``name``, ``severity`` and device type.

    Raises ValueError for an unknown ``name``, a severity outside 1..5 or a malformed batch.
    """
    if name not in _FUNCTIONS:
        raise ValueError(f"unknown corruption {name!r}; valid names: {', '.join(CORRUPTIONS)}")
    try:
        level = operator.index(severity)
    except TypeError:
        level = None
    if level is None or isinstance(severity, bool) or not 1 <= level <= 5:
        raise ValueError(f"severity must be an integer in 1..5 (valid: 1, 2, 3, 4, 5), got {severity!r}")
    _check_images(images)
    if images.shape[0] == 0:
        return images.clone()
    work = torch.float64 if images.dtype == torch.float64 else torch.float32
    x = images.to(work).clamp(0, 1)
    gen = _generator(seed, name, level)
    with _full_float32():
        out = _FUNCTIONS[name](x, SEVERITY_CONSTANTS[name][level - 1], gen)
    return out.clamp(0, 1).to(images.dtype)
