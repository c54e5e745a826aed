"""Files that read fine but hold the wrong content are refused, naming the file and the mismatch:
image sets, inversions, corrupted test sets and robustness scores."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from stirflow.data import DataFileError, read_image_h5, write_image_h5
from stirflow.inversion import InversionResult, load_inversion, save_inversion
from stirflow.robustness import CorruptedSet, load_corrupted_set, load_robustness, save_corrupted_set, save_robustness


def refused(path: Path, *fragments: str):
    """``pytest.raises`` for a DataFileError whose message starts with ``path`` and holds ``fragments``."""
    return pytest.raises(DataFileError, match=re.escape(str(path)) + ".*" + ".*".join(map(re.escape, fragments)))


def write_h5(path: Path, attrs: dict | None = None, **arrays) -> Path:
    with h5py.File(path, "w") as f:
        for name, array in arrays.items():
            f.create_dataset(name, data=array)
        f.attrs.update(attrs or {})
    return path


# --------------------------------------------------------------------------- image sets

IMAGES = np.zeros((10, 8, 8, 3), np.uint8)
LABELS = np.arange(10) % 5


def test_a_well_formed_image_set_reads(tmp_path):
    write_image_h5(tmp_path / "ok.h5", IMAGES, LABELS, num_classes=5)
    data = read_image_h5(tmp_path / "ok.h5")
    assert data.images.shape == (10, 8, 8, 3) and data.labels.tolist() == LABELS.tolist()


@pytest.mark.parametrize("arrays,fragments", [
    ({"images": IMAGES.astype(np.float32)}, ["images is float32, expected uint8"]),
    ({"images": IMAGES[..., 0]}, ["images has shape (10, 8, 8), expected (N, H, W, 3)"]),
    ({"images": IMAGES[..., :1]}, ["images has shape (10, 8, 8, 1), expected (N, H, W, 3)"]),
    ({"labels": LABELS[:9]}, ["labels has shape (9,)", "N = 10 as in images"]),
    ({"labels": LABELS[:, None]}, ["labels has shape (10, 1), expected (N)"]),
    ({"labels": LABELS.astype(np.float64)}, ["labels is float64, expected integer"]),
    ({"labels": LABELS + 3}, ["labels span 3..7, expected 0..4 (num_classes = 5)"]),
], ids=["float-images", "grey", "one-channel", "short-labels", "2d-labels", "float-labels", "label-range"])
def test_an_image_set_with_the_wrong_content_is_refused(tmp_path, arrays, fragments):
    path = write_h5(tmp_path / "bad.h5", {"num_classes": 5}, **{"images": IMAGES, "labels": LABELS, **arrays})
    with refused(path, *fragments):
        read_image_h5(path)


# --------------------------------------------------------------------------- inversions

def inversion(n: int = 4, steps: int = 3) -> InversionResult:
    return InversionResult(torch.rand(n, 3, 8, 8), torch.rand(n), torch.rand(n) + 1, torch.rand(steps, n),
                           list(range(10, 10 * steps + 1, 10)))


@pytest.fixture
def inversion_file(tmp_path) -> Path:
    path = tmp_path / "block_01-02.h5"
    save_inversion(path, {1: inversion(), 2: inversion()}, np.array([3, 5, 8, 13]), run="digits-scratch", epoch=2,
                   steps=30, step_size=0.5, final_step_size=None)
    return path


def test_an_inversion_with_the_expected_content_loads(inversion_file):
    results, info = load_inversion(inversion_file, expected={
        "run": "digits-scratch", "epoch": 2, "steps": 30, "final_step_size": None, "blocks": [1, 2],
        "indices": np.array([3, 5, 8, 13])})
    assert sorted(results) == [1, 2] and results[2].images.shape == (4, 3, 8, 8) and info["indices"].tolist() == [3, 5, 8, 13]


def test_an_inversion_of_another_run_epoch_or_setting_is_refused(inversion_file):
    with refused(inversion_file, "not the inversion expected", "run is 'digits-scratch', expected 'digits-pretrained'",
                 "epoch is 2, expected 3", "no norm_p (expected 2.0)"):
        load_inversion(inversion_file, expected={"run": "digits-pretrained", "epoch": 3, "step_size": 0.5, "norm_p": 2.0})
    with refused(inversion_file, "blocks is [1, 2], expected [1, 2, 3]"):
        load_inversion(inversion_file, expected={"blocks": [1, 2, 3]})
    with refused(inversion_file, "indices is [3, 5, 8, 13], expected [3, 5, 8, 14]"):
        load_inversion(inversion_file, expected={"indices": np.array([3, 5, 8, 14])})


@pytest.mark.parametrize("name,array,fragments", [
    ("indices", np.arange(5), ["images has shape (2, 4, 3, 8, 8)", "N = 5 as in indices"]),
    ("blocks", np.array([1, 2, 3]), ["images has shape (2, 4, 3, 8, 8)", "B = 3 as in blocks"]),
    ("curve_steps", np.arange(4), ["curves has shape (2, 3, 4)", "T = 4 as in curve_steps"]),
    ("losses", np.zeros((2, 3)), ["losses has shape (2, 3)", "N = 4 as in indices"]),
    ("images", np.zeros((2, 4, 8, 8)), ["images has shape (2, 4, 8, 8), expected (B, N, C, H, W)"]),
])
def test_an_inversion_whose_arrays_disagree_is_refused(inversion_file, name, array, fragments):
    with h5py.File(inversion_file, "a") as f:
        del f[name]
        f.create_dataset(name, data=array)
    with refused(inversion_file, *fragments):
        load_inversion(inversion_file)


# --------------------------------------------------------------------------- corrupted sets and robustness scores

def corrupted_set(k: int = 2, s: int = 3, n: int = 6) -> CorruptedSet:
    rng = np.random.default_rng(0)
    return CorruptedSet(rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
                        rng.integers(0, 256, (k, s, n, 8, 8, 3), dtype=np.uint8), np.arange(n) % 3,
                        ["gaussian_noise", "contrast"][:k], [1, 3, 5][:s], {"seed": 0})


def test_a_corrupted_set_reads_back(tmp_path):
    cs = corrupted_set()
    save_corrupted_set(tmp_path / "ok.h5", cs)
    back = load_corrupted_set(tmp_path / "ok.h5")
    assert np.array_equal(back.corrupted, cs.corrupted) and back.corruptions == cs.corruptions


@pytest.mark.parametrize("cs,fragments", [
    (CorruptedSet(*[getattr(corrupted_set(), a) for a in ("clean", "corrupted", "labels")],
                  ["gaussian_noise", "contrast", "fog"], [1, 3, 5], {}),
     ["corrupted has shape (2, 3, 6, 8, 8, 3)", "K = 3 as in the corruptions attribute"]),
    (CorruptedSet(corrupted_set().clean, corrupted_set(n=5).corrupted, corrupted_set().labels,
                  ["gaussian_noise", "contrast"], [1, 3, 5], {}),
     ["corrupted has shape (2, 3, 5, 8, 8, 3)", "N = 6 as in clean"]),
    (CorruptedSet(corrupted_set().clean, corrupted_set().corrupted, np.arange(4), ["gaussian_noise", "contrast"],
                  [1, 3, 5], {}),
     ["labels has shape (4,)", "N = 6 as in clean"]),
], ids=["corruptions-axis", "images-axis", "labels"])
def test_a_corrupted_set_with_mismatched_axes_is_refused(tmp_path, cs, fragments):
    save_corrupted_set(tmp_path / "bad.h5", cs)
    with refused(tmp_path / "bad.h5", *fragments):
        load_corrupted_set(tmp_path / "bad.h5")


def test_robustness_scores_of_other_axes_or_another_run_are_refused(tmp_path):
    cs = corrupted_set()
    ok = tmp_path / "epoch_002.h5"
    save_robustness(ok, {"clean_accuracy": 0.9, "accuracy": np.full((2, 3), 0.5)}, cs, task="classification",
                    run="digits-scratch", epoch=2)
    scores, attrs = load_robustness(ok, expected={"run": "digits-scratch", "epoch": 2})
    assert scores["accuracy"].shape == (2, 3) and attrs["severities"] == [1, 3, 5]
    with refused(ok, "not the robustness scores expected", "epoch is 2, expected 4"):
        load_robustness(ok, expected={"run": "digits-scratch", "epoch": 4})
    bad = tmp_path / "bad.h5"
    save_robustness(bad, {"clean_accuracy": 0.9, "accuracy": np.full((2, 2), 0.5)}, cs, run="digits-scratch", epoch=2)
    with refused(bad, "accuracy has shape (2, 2)", "S = 3 as in the severities attribute"):
        load_robustness(bad)
    save_robustness(bad, {"clean_loss": 0.9}, cs, run="digits-scratch", epoch=2)
    with refused(bad, "not robustness scores", "['clean_loss']"):
        load_robustness(bad)
