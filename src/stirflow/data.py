"""Image data sets as HDF5 files, and the offline default data sets.

Every data set the pipeline uses is stored as ``data/<name>/{train,test}.h5`` with

* ``images``: uint8, shape (N, H, W, C), C = 3;
* ``labels``: int64, shape (N,);
* attributes: ``source`` (where the images came from), ``name``, ``split``, ``num_classes``,
  ``classes`` (JSON list of class names) and any others the producer records.

Models see images as float tensors (N, C, H, W) with values in [0, 1]
(:func:`to_tensor`); input normalisation belongs to the model wrapper.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from .files import DataFileError, atomic_path, check_arrays

__all__ = [
    "ImageSet",
    "select_indices",
    "stratified_indices",
    "write_image_h5",
    "read_image_h5",
    "to_tensor",
    "make_shapes",
    "make_digits",
    "make_photo_crops",
    "PHOTO_CLASSES",
    "DataFileError",
]


class ImageSet:
    """Images (N, H, W, C) uint8 with integer labels and the file's attributes."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, attrs: dict[str, Any]):
        self.images = images
        self.labels = labels
        self.attrs = attrs

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return int(self.attrs.get("num_classes", int(self.labels.max()) + 1))

    def subset(self, n: int | None, seed: int = 0) -> "ImageSet":
        """The first ``n`` images of a seeded permutation (all images when ``n`` is None)."""
        index = select_indices(len(self), n, seed)
        return ImageSet(self.images[index], self.labels[index], {**self.attrs, "subset_seed": seed})


def select_indices(total: int, n: int | None, seed: int, selection: str = "random") -> np.ndarray:
    """Sorted indices of ``n`` of ``total`` items (all items when ``n`` is None or ≥ total).

    ``selection``: ``"random"``, a seeded choice; ``"first"``, items 0..n−1 (what the paper's
    code took: the first images of the test split).
    """
    if n is None or n >= total:
        return np.arange(total)
    if selection == "first":
        return np.arange(n)
    if selection != "random":
        raise ValueError(f"unknown selection {selection!r}; expected 'random' or 'first'")
    return np.sort(np.random.default_rng(seed).permutation(total)[:n])


def stratified_indices(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a stratified, seeded ``fraction`` of the items: each class keeps its share.

    All items when ``fraction`` is 1. scikit-learn's ``train_test_split`` draws the subset; it
    raises ``ValueError`` when the subset would have fewer items than there are classes.
    """
    if fraction >= 1:
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split

    chosen, _ = train_test_split(np.arange(len(labels)), train_size=fraction, random_state=seed, stratify=labels)
    return np.sort(chosen)


def write_image_h5(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray, **attrs: Any) -> None:
    """Write an image set atomically (to ``path.tmp``, then renamed).

    ``images`` is uint8 (N, H, W, C); grey images (N, H, W) are repeated to 3 channels.
    Lists and dicts among ``attrs`` are stored as JSON strings.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=-1)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {labels.shape}")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("images", data=images, chunks=(min(256, len(images)) or 1, *images.shape[1:]),
                         compression="gzip", compression_opts=4)
        f.create_dataset("labels", data=labels)
        for key, value in attrs.items():
            f.attrs[key] = json.dumps(value) if isinstance(value, (list, dict, tuple)) else value


def read_image_h5(path: str | os.PathLike) -> ImageSet:
    """Read an image set written by :func:`write_image_h5`.

    A missing, truncated or foreign file, and one whose content is not an image set (images not
    uint8 (N, H, W, 3), labels not N integers in 0..num_classes−1), raises :class:`DataFileError`
    naming the file and what does not match.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: data file not found")
    try:
        with h5py.File(path, "r") as f:
            missing = {"images", "labels"} - set(f.keys())
            if missing:
                raise DataFileError(f"{path}: not an image set (missing {sorted(missing)})")
            # shapes first: a wrong file is refused before its images are read
            check_arrays(path, {"images": (f["images"], "N H W 3", np.uint8), "labels": (f["labels"], "N", np.integer)})
            images = f["images"][...]
            labels = f["labels"][...].astype(np.int64)
            attrs = {k: _decode_attr(v) for k, v in f.attrs.items()}
    except DataFileError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise DataFileError(f"{path}: cannot read image set ({err})") from err
    n_classes = attrs.get("num_classes")
    if len(labels) and n_classes is not None and not 0 <= labels.min() <= labels.max() < int(n_classes):
        raise DataFileError(f"{path}: labels span {labels.min()}..{labels.max()}, expected 0..{int(n_classes) - 1} "
                            f"(num_classes = {n_classes})")
    return ImageSet(images, labels, attrs)


def _decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) → float32 (N, C, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


# --------------------------------------------------------------------------- offline data sets

SHAPE_CLASSES = ("disc", "ring", "square", "frame", "cross", "triangle", "hbars", "vbars", "checker", "diagonal")


def _shape_mask(kind: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float,
                angle: float, period: float) -> np.ndarray:
    """A binary (H, W) mask of one shape class centred at (cy, cx) with size r."""
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy  # rotated coordinates
    if kind == "disc":
        return dx**2 + dy**2 <= r**2
    if kind == "ring":
        d = np.sqrt(dx**2 + dy**2)
        return (d <= r) & (d >= 0.55 * r)
    if kind == "square":
        return (np.abs(u) <= 0.8 * r) & (np.abs(v) <= 0.8 * r)
    if kind == "frame":
        m = np.maximum(np.abs(u), np.abs(v))
        return (m <= 0.9 * r) & (m >= 0.5 * r)
    if kind == "cross":
        return ((np.abs(u) <= 0.3 * r) | (np.abs(v) <= 0.3 * r)) & (np.maximum(np.abs(u), np.abs(v)) <= r)
    if kind == "triangle":
        return (v <= 0.6 * r) & (v >= -r + 2 * np.abs(u))
    # The texture classes fill the whole image: they differ in orientation and period only.
    if kind == "hbars":
        return np.mod(v, period) < period / 2
    if kind == "vbars":
        return np.mod(u, period) < period / 2
    if kind == "checker":
        return (np.mod(u, period) < period / 2) ^ (np.mod(v, period) < period / 2)
    if kind == "diagonal":
        return np.mod(u + v, period) < period / 2
    raise ValueError(f"unknown shape class {kind!r}")


def make_shapes(n: int, image_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Procedural shapes and textures: ``n`` uint8 images (n, S, S, 3) in 10 classes.

    Each image is one of :data:`SHAPE_CLASSES` at a random position, size, rotation and stripe
    period, in a random foreground colour on a random background colour, with pixel noise.
    The classes need shape, texture and orientation features, so a ViT pretrained on them
    learns invariances (to colour, position, noise) that finetuning on digits can keep or lose.
    """
    rng = np.random.default_rng(seed)
    size = image_size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    labels = rng.integers(0, len(SHAPE_CLASSES), size=n)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for k in range(n):
        kind = SHAPE_CLASSES[labels[k]]
        r = rng.uniform(0.22, 0.42) * size
        cy, cx = rng.uniform(r * 0.8, size - r * 0.8, size=2)
        angle = rng.uniform(-0.35, 0.35) if kind in ("hbars", "vbars") else rng.uniform(0, np.pi)
        if kind == "diagonal":
            angle = rng.uniform(-0.2, 0.2)
        period = rng.uniform(0.2, 0.4) * size
        mask = _shape_mask(kind, yy, xx, cy, cx, r, angle, period)
        fg, bg = rng.uniform(0, 1, size=3), rng.uniform(0, 1, size=3)
        while np.abs(fg - bg).sum() < 0.6:  # keep the shape visible
            fg, bg = rng.uniform(0, 1, size=3), rng.uniform(0, 1, size=3)
        img = np.where(mask[..., None], fg, bg) + rng.normal(0, 0.04, size=(size, size, 3))
        images[k] = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def make_digits(image_size: int, test_fraction: float, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's bundled handwritten digits (1797 images, 8×8, 17 grey levels), offline.

    Upsampled bilinearly to ``image_size`` and repeated to 3 channels; a seeded stratified split
    into ``{"train": (images, labels), "test": (images, labels)}``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    grey = torch.from_numpy(digits.images / 16.0).float()[:, None]  # (N, 1, 8, 8) in [0, 1]
    up = torch.nn.functional.interpolate(grey, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = (up.clamp(0, 1) * 255 + 0.5).to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy()
    labels = digits.target.astype(np.int64)
    i_train, i_test = train_test_split(np.arange(len(labels)), test_size=test_fraction,
                                       random_state=seed, stratify=labels)
    return {"train": (images[np.sort(i_train)], labels[np.sort(i_train)]),
            "test": (images[np.sort(i_test)], labels[np.sort(i_test)])}


#: scikit-image's bundled photographs and textures (offline: they ship in the wheel), one class each.
PHOTO_CLASSES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                 "retina", "brick", "grass", "gravel")


def _photo(name: str) -> np.ndarray:
    """One of :data:`PHOTO_CLASSES` as uint8 (H, W, 3)."""
    from skimage import data as skdata

    image = np.asarray(getattr(skdata, name)())
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return image[..., :3].astype(np.uint8)


def make_photo_crops(n_train: int, n_test: int, image_size: int, seed: int,
                     short_side: int = 128) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Crops of real photographs and textures (scikit-image's bundled images), labelled by their source.

    Each of the 10 images of :data:`PHOTO_CLASSES` is resized so its short side is ``short_side``
    pixels; a crop is a random square of 1–2.5 × ``image_size`` pixels, resized to ``image_size``
    and flipped at random. Training crops come from the left 70 % of each image, test crops from the
    right 30 %, so no test pixel was seen in training. The task needs colour and texture, where
    digits need stroke shape. Returns ``{"train": (images, labels), "test": (images, labels)}``.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = []
    for name in PHOTO_CLASSES:
        img = Image.fromarray(_photo(name))
        scale = short_side / min(img.size)
        sources.append(np.asarray(img.resize((round(img.width * scale), round(img.height * scale)),
                                             Image.Resampling.LANCZOS)))
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, len(PHOTO_CLASSES), size=n)
        images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
        for k, label in enumerate(labels):
            src = sources[label]
            h, w = src.shape[:2]
            lo, hi = (0, int(0.7 * w)) if split == "train" else (int(0.7 * w), w)
            side = int(min(rng.uniform(1.0, 2.5) * image_size, h, hi - lo))
            y = rng.integers(0, h - side + 1)
            x = rng.integers(lo, hi - side + 1)
            crop = Image.fromarray(src[y:y + side, x:x + side]).resize((image_size, image_size),
                                                                       Image.Resampling.BILINEAR)
            crop = np.asarray(crop)
            images[k] = crop[:, ::-1] if rng.random() < 0.5 else crop
        out[split] = (images, labels.astype(np.int64))
    return out
