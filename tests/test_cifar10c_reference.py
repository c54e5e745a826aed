"""stirflow.corruptions against the CIFAR-10-C generator's own outputs (tests/data/cifar10c/README.md).

The deterministic corruptions must give the generator's stored images (``np.uint8`` of its
0..255 output: truncation) up to float rounding; the random ones the same mean PSNR within the
generator's seed-to-seed spread plus a small margin; frost from the generator's photographs,
read from the installed package.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stirflow.corruptions import corrupt, frost_photographs
from stirflow.robustness import to_stored_uint8

DATA = Path(__file__).parent / "data" / "cifar10c"
REFERENCE = np.load(DATA / "deterministic.npz")
CROPS = REFERENCE["crops"]  # (24, 32, 32, 3) uint8 photo crops, the generator's input
RANDOM_PSNR = json.loads((DATA / "random_psnr.json").read_text())
SEVERITIES = (1, 2, 3, 4, 5)
# Float rounding allowed before truncation, in grey levels: float32 sums of a few dozen terms
# differ from the generator's float64 by at most ~1e-4 levels (7.4e-5 measured).
ROUNDING = 2e-4
# Mean-PSNR margin on top of twice the generator's seed spread (dB).
PSNR_MARGIN = 0.25
SEEDS = range(5)


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """Every test here runs torch on one thread (see conftest.one_torch_thread)."""


def clean() -> torch.Tensor:
    return torch.from_numpy(CROPS).permute(0, 3, 1, 2).float() / 255


def grey_levels(name: str, severity: int, seed: int = 0) -> np.ndarray:
    """The corrupted crops (24, 32, 32, 3) in 0..255, before storage."""
    return (corrupt(clean(), name, severity, seed=seed) * 255).permute(0, 2, 3, 1).double().numpy()


@pytest.mark.parametrize("name", ["defocus_blur", "zoom_blur", "brightness", "contrast", "gaussian_blur", "saturate"])
def test_deterministic_corruptions_are_the_generators_up_to_float_rounding(name):
    for severity in SEVERITIES:
        expected = REFERENCE[f"{name}_{severity}"].astype(np.int64)
        values = grey_levels(name, severity)
        # the generator's truncated value lies within float rounding of ours
        low, high = np.floor(values - ROUNDING), np.floor(values + ROUNDING)
        assert ((expected >= low) & (expected <= high)).all(), (name, severity)
        stored = to_stored_uint8(torch.from_numpy(values / 255).permute(0, 3, 1, 2))
        assert (stored == expected).mean() > 0.9, (name, severity)


@pytest.mark.parametrize("name", ["pixelate", "jpeg_compression"])
def test_pixelate_and_jpeg_store_the_generators_images(name):
    # pixelate: PIL's two 8-bit passes per resize, exactly; JPEG: PIL's own codec (a different
    # libjpeg could move a value by one level)
    tolerance = 1 if name == "jpeg_compression" else 0
    for severity in SEVERITIES:
        stored = to_stored_uint8(corrupt(clean(), name, severity)).astype(np.int64)
        assert np.abs(stored - REFERENCE[f"{name}_{severity}"]).max() <= tolerance, (name, severity)


def test_storage_truncates():
    # CIFAR-10-C stores np.uint8(output): 0.99 of a level is dropped, not rounded up
    x = torch.tensor([0.0, 0.5 / 255, 0.99 / 255, 1 / 255, 254.6 / 255, 1.0, 1.2]).view(1, 1, 1, 7)
    assert to_stored_uint8(x).ravel().tolist() == [0, 0, 0, 1, 254, 255, 255]


def psnr(stored: np.ndarray) -> float:
    """Mean over the crops of the PSNR (dB) against the clean crop, capped at 60 dB, as the reference."""
    mse = ((stored.astype(np.float64) - CROPS) ** 2).reshape(len(stored), -1).mean(1)
    return float(np.minimum(10 * np.log10(255.0**2 / np.maximum(mse, 1e-30)), 60).mean())


RANDOM = sorted({key.rsplit("_", 1)[0] for key in RANDOM_PSNR})


def test_every_random_corruption_has_a_reference():
    assert RANDOM == sorted(["gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow",
                             "frost", "fog", "elastic_transform", "speckle_noise", "spatter"])


@pytest.mark.parametrize("name", RANDOM)
def test_random_corruptions_have_the_generators_mean_psnr(name):
    for severity in SEVERITIES:
        ref = RANDOM_PSNR[f"{name}_{severity}"]
        ours = np.mean([psnr(to_stored_uint8(corrupt(clean(), name, severity, seed=s))) for s in SEEDS])
        tolerance = 2 * ref["psnr_seed_sd"] + PSNR_MARGIN
        assert abs(ours - ref["psnr_mean"]) <= tolerance, (name, severity, ours, ref)


# --- frost: the generator's photographs, shipped with the package ----------------------------------

def package_photographs() -> list[np.ndarray]:
    folder = files("stirflow") / "frost"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".png"))
    assert names == ["frost1_x0.2.png", "frost2_x0.2.png", "frost4_x0.2.png", "frost5_x0.2.png"]
    out = {}
    for name in names:
        with (folder / name).open("rb") as f:
            out[name.split("_")[0]] = np.array(Image.open(f).convert("RGB"))
    # the generator's five, in its order: its frost3.png resized is frost2.png resized
    return [out[k] for k in ("frost1", "frost2", "frost2", "frost4", "frost5")]


def test_frost_photographs_come_from_the_installed_package():
    photos = package_photographs()
    assert [p.shape for p in photos] == [(120, 180, 3), (63, 112, 3), (63, 112, 3), (70, 105, 3), (99, 132, 3)]
    loaded = frost_photographs()
    assert len(loaded) == 5
    for photo, tensor in zip(photos, loaded):
        assert np.array_equal(tensor.permute(1, 2, 0).numpy(), photo)
    assert (files("stirflow") / "frost" / "README.md").read_text().count("Apache License") >= 1


def locate(window: np.ndarray, photos: list[np.ndarray]) -> tuple[int, int, int]:
    """(photo, top, left) of the 32x32 window of a photograph equal to ``window`` (to 1e-3)."""
    for i, photo in enumerate(photos):
        rows = np.lib.stride_tricks.sliding_window_view(photo, (32, 3), axis=(1, 2))[:, :, 0]  # (h, w - 31, 32, 3)
        first = np.abs(rows - window[0]).max(axis=(-2, -1)) < 1e-3
        for top, left in np.argwhere(first):
            if top + 32 <= photo.shape[0] and np.abs(photo[top:top + 32, left:left + 32] - window).max() < 1e-3:
                return i, int(top), int(left)
    pytest.fail("a frost layer is no window of any photograph")


def test_frost_is_a_blend_with_a_crop_of_a_photograph():
    # black images leave c1 * crop: every output image must be c1 times a 32x32 window of one
    # of the photographs (to float rounding), and several photographs and positions are drawn
    x = torch.zeros(40, 3, 32, 32)
    c1 = 0.4
    out = corrupt(x, "frost", 3, seed=0).permute(0, 2, 3, 1).numpy() * 255 / c1
    photos = package_photographs()
    found = set()
    for image in out:
        found.add(locate(image, photos))
    assert len({f[0] for f in found}) >= 3 and len(found) >= 30
    # crops start in 0 .. size - 33 along each axis, as np.random.randint(0, size - 32)
    for i, top, left in found:
        assert top <= photos[i].shape[0] - 33 and left <= photos[i].shape[1] - 33
