"""The reconstruction task: encoder without CLS → patch grid → 1×1 conv → PixelShuffle, L1 loss.

Its robustness is the L1 error of reconstructions of corrupted inputs against the clean images;
STIR, learning, forgetting and flow are computed on the encoder blocks as for classification.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from stirflow.config import load_config, run_names, stir_blocks, stir_epochs
from stirflow.data import ImageSet, make_digits, to_tensor
from stirflow.models import ReconstructionHead, create_model, initial_model
from stirflow.robustness import evaluate_robustness, make_corrupted_set
from stirflow.training import evaluate, make_optimizer, task_loss

from conftest import SMOKE_CONFIG


def _spec(img_size=16, **vit):
    return {"vit": {"img_size": img_size, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2, **vit},
            "mean": [0.5] * 3, "std": [0.5] * 3, "task": "reconstruction", "num_classes": 0}


def _digits(n=64):
    images, labels = make_digits(16, 0.25, 0)["test"]
    return ImageSet(images[:n], labels[:n], {"num_classes": 10})


def test_head_shapes_and_locality():
    torch.manual_seed(0)
    head = ReconstructionHead(embed_dim=8, patch_size=4, grid_size=(2, 3))
    assert head.proj.kernel_size == (1, 1) and head.proj.out_channels == 4 * 4 * 3
    tokens = torch.randn(5, 2 * 3, 8)
    out = head(tokens)
    assert out.shape == (5, 3, 8, 12)
    # token k (row-major over the grid) decides exactly the patch at its grid cell, nothing else
    changed = tokens.clone()
    changed[:, 4] += 1.0  # grid cell (1, 1)
    diff = (head(changed) - out).abs().sum(dim=(0, 1)) > 0
    expected = torch.zeros(8, 12, dtype=torch.bool)
    expected[4:8, 4:8] = True
    assert torch.equal(diff, expected)
    # and it is PixelShuffle of the 1×1 convolution's channels
    grid = tokens.transpose(1, 2).reshape(5, 8, 2, 3)
    torch.testing.assert_close(out, torch.nn.functional.pixel_shuffle(head.proj(grid), 4))


def test_model_decodes_patch_tokens_without_cls():
    torch.manual_seed(0)
    model = create_model(_spec(img_size=(16, 24)))
    assert model.task == "reconstruction" and model.num_prefix_tokens == 1
    assert model.decoder.grid_size == (4, 6)
    seen = {}
    model.decoder.register_forward_hook(lambda m, args, out: seen.update(tokens=args[0].shape, out=out.shape))
    x = torch.rand(3, 3, 16, 24)
    y = model(x)
    assert seen == {"tokens": (3, 4 * 6, 32), "out": (3, 3, 16, 24)}  # 24 patch tokens, the CLS token left out
    assert y.shape == x.shape
    # the encoder's blocks are the ones STIR inverts: same token layout as a classifier's
    outs = model.block_outputs(x)
    assert len(outs) == 2 and outs[-1].shape == (3, 1 + 24, 32)
    # a pretrained init keeps the encoder and draws a new decoder from the seed
    a = initial_model(_spec(), "scratch", seed=1)
    b = initial_model(_spec(), "scratch", seed=1)
    assert torch.equal(a.decoder.proj.weight, b.decoder.proj.weight)


def test_one_training_step_lowers_the_l1_loss():
    torch.manual_seed(0)
    model = create_model(_spec())
    x = to_tensor(_digits(64).images)
    labels = torch.zeros(len(x), dtype=torch.long)
    model.train()
    loss, per_sample = task_loss(model, x, labels)
    # L1 against the input itself (the training images after augmentation)
    torch.testing.assert_close(loss, (model(x) - x).abs().mean())
    assert per_sample.shape == (64,)
    optimizer = make_optimizer(model, {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0})
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        after, _ = task_loss(model, x, labels)
    assert float(after) < float(loss.detach()), (float(loss.detach()), float(after))


def test_robustness_error_is_against_the_clean_images():
    test = _digits(48)
    cs = make_corrupted_set(test, ["gaussian_noise", "contrast"], [1, 3, 5], n_images=32, seed=0)
    clean = cs.clean.astype(np.float64) / 255
    corrupted = cs.corrupted.astype(np.float64) / 255

    # a model that reproduces its input exactly: its error is how far the corrupted input is from the clean image
    identity = create_model(_spec()).eval()
    identity.forward = identity.resize
    scores = evaluate_robustness(identity, cs)
    assert set(scores) == {"clean_error", "error"}
    assert scores["clean_error"] == 0.0
    expected = np.abs(corrupted - clean[None, None]).mean(axis=(2, 3, 4, 5))
    np.testing.assert_allclose(scores["error"], expected, rtol=1e-5)
    assert (scores["error"] > 0.005).all()
    assert (np.diff(scores["error"], axis=1) > 0).all()  # more severe, further from the clean image

    # a trained-or-not model: the same, reconstruction of the corrupted input against the clean image
    torch.manual_seed(0)
    model = create_model(_spec()).eval()
    scores = evaluate_robustness(model, cs, batch_size=10)
    with torch.no_grad():
        out = model(to_tensor(cs.corrupted[1, 2])).double()
        manual = float((out - to_tensor(cs.clean).double()).abs().mean())
        wrong = float((out - to_tensor(cs.corrupted[1, 2]).double()).abs().mean())
    np.testing.assert_allclose(scores["error"][1, 2], manual, rtol=1e-5)
    assert abs(manual - wrong) > 1e-3  # the target really differs from the corrupted input
    np.testing.assert_allclose(scores["clean_error"],
                               evaluate(model, cs.clean, torch.zeros(32, dtype=torch.long))["l1_error"], rtol=1e-6)


@pytest.mark.slow
def test_reconstruction_run_end_to_end(smoke_run):
    # configs/smoke.yaml holds a reconstruction run beside the classification ones
    config = load_config(SMOKE_CONFIG)
    run = "digits-recon-pretrained"
    assert run in run_names(config)
    work = smoke_run
    with xr.open_dataset(work / "results" / "summary.nc", engine="h5netcdf") as ds:
        ds = ds.load()
    assert run in ds.run.values and str(ds["task"].sel(run=run).values) == "reconstruction"
    assert list(ds.layer.values) == stir_blocks(config)
    scored = ds.sel(run=run, epoch=stir_epochs(config))
    for name in ("forgetting", "learning", "flow", "cka"):
        assert np.isfinite(scored[name].values).all(), name
        assert ((scored[name].values >= -1e-9) & (scored[name].values <= 1 + 1e-9)).all(), name
    assert (scored["forgetting"].sel(epoch=0).values < 0.1).all()  # epoch 0 against itself
    # robustness: L1 errors (not accuracies) for every checkpoint, corrupted ones worse than clean
    clean, corrupted = ds["clean_score"].sel(run=run).values, ds["robustness"].sel(run=run).values
    assert np.isfinite(clean).all() and np.isfinite(corrupted).all()
    assert (clean > 0).all() and corrupted[-1] > clean[-1]
    history = ds["test_l1_error"].sel(run=run).values
    assert history[-1] < history[0]  # finetuning the decoder reconstructs better than the random one
