"""``stirflow compare`` end to end: the console script on small checkpoints and timm models, offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from stirflow.cli import main
from stirflow.data import make_shapes, read_image_h5, select_indices, to_tensor, write_image_h5
from stirflow.inversion import invert_blocks
from stirflow.models import create_model, load_checkpoint, prepare_for_inversion, save_checkpoint
from stirflow.invariance import pair_scores

STIRFLOW = str(Path(sys.executable).parent / "stirflow")
TINY_SPEC = {"num_classes": 10, "vit": dict(img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=2)}


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """Every test here runs torch on one thread (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Two seeded tiny checkpoints, an HDF5 image set, a folder of PNGs and a local timm weight file."""
    import timm
    from PIL import Image

    d = tmp_path_factory.mktemp("compare")
    for seed in (0, 1):
        torch.manual_seed(seed)
        save_checkpoint(d / f"model{seed}.pt", create_model(TINY_SPEC), TINY_SPEC)
    images, labels = make_shapes(24, 16, seed=0)
    write_image_h5(d / "test.h5", images, labels, name="shapes", split="test", num_classes=10)
    (d / "folder").mkdir()
    for k in range(6):
        Image.fromarray(images[k]).resize((20, 20)).save(d / "folder" / f"{k:02d}.png")
    (d / "folder" / "notes.txt").write_text("not an image")
    torch.manual_seed(7)  # a randomly initialised timm ViT stands in for downloaded weights
    torch.save(timm.create_model("vit_tiny_patch16_224", img_size=32).state_dict(), d / "vit_tiny.pth")
    return d


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([STIRFLOW, *args], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, f"stirflow {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def check_file(out: Path, n_blocks: int) -> xr.Dataset:
    """Shapes, ranges and the relations between the variables of a compare file; its PNG exists."""
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ds = xr.load_dataset(out, engine="h5netcdf")
    for name in ("flow", "flow_reverse", "cka", "within_ref", "within_eval"):
        assert ds[name].dims == ("layer_ref", "layer_eval") and ds[name].shape == (n_blocks, n_blocks)
        values = ds[name].values
        assert np.all(np.isfinite(values)) and np.all(values >= 0) and np.all(values <= 1 + 1e-9), name
    np.testing.assert_allclose(ds["forgetting"].values, 1 - np.diag(ds["flow"].values))
    np.testing.assert_allclose(ds["learning"].values, 1 - np.diag(ds["flow_reverse"].values))
    assert np.all(ds["inversion_loss_a"].values < ds["inversion_start_loss_a"].values)
    assert np.all(ds["inversion_loss_b"].values < ds["inversion_start_loss_b"].values)
    assert ds.sizes["layer"] == n_blocks
    return ds


def test_compare_two_checkpoints_matches_the_library(inputs, tmp_path):
    out = tmp_path / "sub" / "ab.nc"
    proc = run_cli("compare", "--model-a", str(inputs / "model0.pt"), "--model-b", str(inputs / "model1.pt"),
                   "--images", str(inputs / "test.h5"), "--n-images", "16", "--image-seed", "3",
                   "--steps", "12", "--seed", "5", "--chunk-size", "20", "--out", str(out))
    assert "inverting A and B" in proc.stderr and "wrote" in proc.stderr  # progress bar and summary
    assert "loss A" in proc.stderr  # the summary reports the inversions' final losses
    ds = check_file(out, 3)
    assert list(ds["layer_ref"].values) == [1, 2, 3]
    assert ds.attrs["steps"] == 12 and ds.attrs["seed"] == 5 and ds.attrs["representation"] == "tokens"
    assert ds.attrs["device"] == "cpu" and ds.attrs["bf16"] == 0

    # the same numbers as the library functions the pipeline uses, on the same images and seeds
    index = select_indices(24, 16, 3)
    np.testing.assert_array_equal(ds["image_index"].values, index)
    x = to_tensor(read_image_h5(inputs / "test.h5").images[index])
    a, b = (prepare_for_inversion(load_checkpoint(inputs / f"model{s}.pt")) for s in (0, 1))
    inv = [{k: r.images for k, r in invert_blocks(m, x, [1, 2, 3], steps=12, seed=5).items()} for m in (a, b)]
    scores = pair_scores(a, b, x, inv[0], inv[1])
    np.testing.assert_allclose(ds["flow"].values, scores["flow"], atol=1e-5)
    np.testing.assert_allclose(ds["flow_reverse"].values, scores["flow_reverse"], atol=1e-5)
    np.testing.assert_allclose(ds["cka"].values, scores["cka"], atol=1e-9)


def test_compare_timm_names_with_local_weights_on_an_image_folder(inputs, tmp_path):
    out = tmp_path / "timm.nc"
    run_cli("compare", "--model-a", "vit_tiny_patch16_224", "--weights-a", str(inputs / "vit_tiny.pth"),
            "--model-b", "vit_tiny_patch16_224", "--weights-b", "random", "--img-size", "32",
            "--images", str(inputs / "folder"), "--blocks", "1,3-4", "--steps", "6", "--representation", "cls",
            "--out", str(out), "--quiet")
    ds = check_file(out, 3)
    assert list(ds["layer"].values) == [1, 3, 4]
    assert ds.sizes["image"] == 6  # the text file is skipped
    assert '"kind": "folder"' in ds.attrs["images_info"] and '"resized_to": 32' in ds.attrs["images_info"]
    assert "vit_tiny.pth" in ds.attrs["model_a_info"]


def test_compare_a_model_with_itself_is_symmetric(inputs, tmp_path):
    out = tmp_path / "aa.nc"
    model = str(inputs / "model0.pt")
    assert main(["compare", "--model-a", model, "--model-b", model, "--images", str(inputs / "test.h5"),
                 "--n-images", "8", "--steps", "6", "--blocks", "2,3", "--threads", "1", "--quiet",
                 "--out", str(out)]) == 0
    ds = check_file(out, 2)
    np.testing.assert_allclose(ds["flow"].values, ds["flow_reverse"].values)
    np.testing.assert_allclose(np.diag(ds["cka"].values), 1.0, atol=1e-9)


@pytest.mark.parametrize("change, message", [
    ({"--model-a": "vit_does_not_exist"}, "neither an existing checkpoint file nor a timm model name"),
    ({"--model-b": "missing/model.pt"}, "checkpoint file not found"),
    ({"--model-a": "vit_tiny_patch16_224", "--weights-a": "missing.pth"}, "weight file not found"),
    ({"--model-a": "resnet18", "--weights-a": "random", "--blocks": "4"},
     "[4] out of range: layers 1..3 exist in both models"),  # 4 ResNet stages, 3 ViT blocks
    ({"--blocks": "2,4"}, "[4] out of range: blocks 1..3"),
    ({"--blocks": "two"}, "is not 'all' or a list"),
    ({"--images": "missing.h5"}, "no such file or folder"),
    ({"--n-images": "3"}, "CKA needs at least 4"),
    ({"--similarity": "minibatch"}, "needs --cka-batch-size"),
])
def test_compare_errors_are_clear(inputs, tmp_path, capsys, change, message):
    args = {"--model-a": str(inputs / "model0.pt"), "--model-b": str(inputs / "model1.pt"),
            "--images": str(inputs / "test.h5"), "--steps": "1", "--out": str(tmp_path / "x.nc"), **change}
    argv = ["compare", "--quiet", "--threads", "1"] + [item for pair in args.items() for item in pair]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.nc").exists()


def test_compare_convergence_check_reports_how_far_the_measures_move(inputs, tmp_path):
    out = tmp_path / "check.nc"
    proc = run_cli("compare", "--model-a", str(inputs / "model0.pt"), "--model-b", str(inputs / "model1.pt"),
                   "--images", str(inputs / "test.h5"), "--n-images", "8", "--steps", "3", "--check-steps", "30",
                   "--blocks", "1,3", "--out", str(out))
    assert "convergence check with 30 steps: largest |Δ|" in proc.stderr
    ds = check_file(out, 2)
    assert ds.attrs["check_steps"] == 30
    for name in ("learning", "forgetting"):
        np.testing.assert_allclose(ds[f"convergence_delta_{name}"].values,
                                   np.abs(ds[f"{name}_check"].values - ds[name].values))
    # 3 steps from noise are far from converged: the check sees it
    assert float(ds["convergence_delta_forgetting"].max()) > 0.01
    # the loss curve: one entry per logged step... none here (log_every 0), the final losses are kept
    assert np.all(ds["inversion_worst_loss_a"].values >= ds["inversion_loss_a"].values)


def test_compare_heatmap_has_the_pipelines_orientation(inputs, tmp_path):
    """Row i of every matrix is drawn from the bottom up, in the CLI's heatmap as in the pipeline's
    flow matrices: an asymmetric matrix comes back from the Axes unchanged and with origin 'lower'."""
    import matplotlib.pyplot as plt
    import xarray as xr

    from stirflow.cli import heatmap_figure
    from stirflow.plots import flow_matrices

    blocks = [1, 2, 3]
    flow = np.array([[0.9, 0.1, 0.2], [0.3, 0.8, 0.4], [0.5, 0.6, 0.7]])
    pair = ("layer_ref", "layer_eval")
    ds = xr.Dataset({"flow": (pair, flow), "flow_reverse": (pair, flow.T), "cka": (pair, flow * 0.5)},
                    coords={"layer_ref": blocks, "layer_eval": blocks})
    fig = heatmap_figure(ds)
    image = fig.axes[0].images[0]
    np.testing.assert_array_equal(np.asarray(image.get_array()), flow)
    assert image.origin == "lower"
    plt.close(fig)
    summary = ds.expand_dims(run=["r"], epoch=[1]).assign(
        forgetting=(("run", "epoch", "layer"), np.zeros((1, 1, 3))),
        target=("run", ["t"]), init=("run", ["pretrained"]), task=("run", ["classification"]))
    summary = summary.assign_coords(layer=blocks)
    fig = flow_matrices(summary, {})
    image = fig.axes[0].images[0]
    np.testing.assert_array_equal(np.asarray(image.get_array()), flow)
    assert image.origin == "lower"
    plt.close(fig)
