"""Pretrained weights from a local file (timm's pretrained-config file override).

The file is saved from a randomly initialised timm model at another image size than the one
configured, so loading it must resample the position embeddings; every other encoder weight
must come out exactly as saved. With such a source the pipeline has no pretrain stage and
epoch 0 of finetuning is the loaded model with a new head.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import timm
import torch
import yaml
from timm.layers import resample_abs_pos_embed

from stirflow.config import load_config, model_depth
from stirflow.models import CheckpointError, initial_model, read_checkpoint

from conftest import jobs_by_rule, snakemake, write_config

NAME = "vit_tiny_patch16_224"  # width 192; two blocks keep it fast (the file has two as well)
SAVED = {"img_size": 32, "depth": 2}  # a 2×2 patch grid
CONFIGURED = {"img_size": 48, "depth": 2}  # a 3×3 patch grid


def _spec(task="classification", num_classes=10, vit=CONFIGURED):
    return {"timm_name": NAME, "vit": dict(vit), "mean": [0.5] * 3, "std": [0.5] * 3, "task": task,
            "num_classes": num_classes}


def _save_random(path, fmt="pth", num_classes=7):
    torch.manual_seed(123)
    model = timm.create_model(NAME, pretrained=False, num_classes=num_classes, **SAVED)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return state


def _assert_loaded_from(vit_state, saved):
    """Encoder weights equal the file's; the position embedding is the file's, resampled to 3×3."""
    assert saved["pos_embed"].shape == (1, 1 + 2 * 2, 192)
    assert vit_state["pos_embed"].shape == (1, 1 + 3 * 3, 192)
    expected = resample_abs_pos_embed(saved["pos_embed"], new_size=[3, 3], old_size=[2, 2], num_prefix_tokens=1)
    torch.testing.assert_close(vit_state["pos_embed"], expected)
    # the CLS token's position embedding is carried over unchanged, the patch ones are interpolated
    torch.testing.assert_close(vit_state["pos_embed"][:, 0], saved["pos_embed"][:, 0])
    encoder = [k for k in saved if not k.startswith("head.") and k != "pos_embed"]
    assert len(encoder) > 20
    for key in encoder:
        assert torch.equal(vit_state[key], saved[key]), key


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_weights_file_of_another_image_size(tmp_path, fmt):
    path = tmp_path / f"weights.{fmt}"
    saved = _save_random(path, fmt)
    model = initial_model(_spec(), "pretrained", seed=3, weights={"file": str(path)})
    assert model.img_size == (48, 48) and model.vit.patch_embed.grid_size == (3, 3)
    _assert_loaded_from(model.vit.state_dict(), saved)
    # a new head for this task (10 classes, not the file's 7), drawn from the seed
    assert model.vit.head.weight.shape == (10, 192)
    again = initial_model(_spec(), "pretrained", seed=3, weights={"file": str(path)})
    assert torch.equal(model.vit.head.weight, again.vit.head.weight)
    other = initial_model(_spec(), "pretrained", seed=4, weights={"file": str(path)})
    assert not torch.equal(model.vit.head.weight, other.vit.head.weight)
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 10)


def test_weights_file_for_reconstruction(tmp_path):
    saved = _save_random(tmp_path / "w.pth")
    model = initial_model(_spec("reconstruction", 0), "pretrained", seed=0, weights={"file": str(tmp_path / "w.pth")})
    _assert_loaded_from(model.vit.state_dict(), saved)
    assert model.decoder is not None
    assert model(torch.rand(2, 3, 48, 48)).shape == (2, 3, 48, 48)


def test_scratch_ignores_the_weights(tmp_path):
    saved = _save_random(tmp_path / "w.pth")
    model = initial_model(_spec(), "scratch", seed=0, weights={"file": str(tmp_path / "w.pth")})
    assert not torch.equal(model.vit.state_dict()["blocks.0.attn.qkv.weight"], saved["blocks.0.attn.qkv.weight"])


def test_weights_that_do_not_fit_are_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"missing\.pth: pretrained weights file not found"):
        initial_model(_spec(), "pretrained", weights={"file": str(tmp_path / "missing.pth")})
    saved = _save_random(tmp_path / "w.pth")
    # keys under another prefix: timm would load nothing and only log it
    torch.save({"vit." + k: v for k, v in saved.items()}, tmp_path / "prefixed.pth")
    with pytest.raises(CheckpointError, match=r"prefixed\.pth: the weights do not fit .*missing \['cls_token'"):
        initial_model(_spec(), "pretrained", weights={"file": str(tmp_path / "prefixed.pth")})
    # another architecture (width 384 instead of 192)
    with pytest.raises(CheckpointError, match=r"w\.pth: cannot load these weights into vit_small_patch16_224"):
        initial_model(dict(_spec(), timm_name="vit_small_patch16_224"), "pretrained",
                      weights={"file": str(tmp_path / "w.pth")})


def _weights_config(tmp_path, weights_file):
    path = write_config(
        tmp_path / "weights.yaml",
        pretrain={"dataset": None, "weights": {"file": str(weights_file)}},
        finetune={"runs": [{"target": "digits", "init": "pretrained"}, {"target": "digits", "init": "scratch"}],
                  "epochs": 1, "batch_size": 256},
        stir={"epochs": [0, 1]},
    )
    config = yaml.safe_load(path.read_text())
    config["model"] = {"timm_name": NAME, "vit": dict(CONFIGURED)}  # replaces the smoke model's kwargs whole
    path.write_text(yaml.safe_dump(config))
    return path


def test_pipeline_skips_pretraining_and_starts_from_the_file(tmp_path):
    weights = tmp_path / "weights.pth"
    saved = _save_random(weights)
    config_path = _weights_config(tmp_path, weights)
    config = load_config(config_path)
    assert model_depth(config) == 2

    work = tmp_path / "work"
    run = "digits-pretrained"
    proc = snakemake(work, "--cores", "2", f"results/runs/{run}/history.json",
                     "results/runs/digits-scratch/history.json", configfile=config_path)
    # digits only: no pretraining job, and the pretraining set is not prepared
    assert jobs_by_rule(proc.stdout + proc.stderr) == {"prepare_dataset": 1, "finetune": 2}
    assert not (work / "results" / "pretrain").exists() and not (work / "data" / "shapes").exists()
    epoch0 = read_checkpoint(work / "results" / "runs" / run / "checkpoints" / "epoch_000.pt")
    vit_state = {k[len("net."):]: v for k, v in epoch0["state_dict"].items() if k.startswith("net.")}
    _assert_loaded_from(vit_state, saved)
    assert epoch0["spec"]["kwargs"] == CONFIGURED and epoch0["epoch"] == 0
    scratch0 = read_checkpoint(work / "results" / "runs" / "digits-scratch" / "checkpoints" / "epoch_000.pt")
    assert not torch.equal(scratch0["state_dict"]["net.blocks.0.mlp.fc1.weight"], saved["blocks.0.mlp.fc1.weight"])
    epoch1 = read_checkpoint(work / "results" / "runs" / run / "checkpoints" / "epoch_001.pt")
    assert np.isfinite(epoch1["metrics"]["test_accuracy"])

    # the weights file is an input of the pretrained run: replacing it reruns that run only
    _save_random(weights, num_classes=5)
    dry = snakemake(work, "-n", f"results/runs/{run}/history.json", "results/runs/digits-scratch/history.json",
                    configfile=config_path)
    assert jobs_by_rule(dry.stdout) == {"finetune": 1}
    assert f"run={run}" in dry.stdout and "run=digits-scratch" not in dry.stdout

    # there is no pretraining stage to ask for
    asked = snakemake(work, "-n", "results/pretrain/history.json", configfile=config_path, check=False)
    assert asked.returncode != 0
    assert "No rule to produce results/pretrain/history.json" in asked.stdout + asked.stderr


def test_timm_weights_without_network_name_the_way_out(tmp_path):
    """`timm_pretrained: true` on a machine that cannot reach the hub: a clear error, not a hang."""
    import subprocess
    import sys

    code = ("from stirflow.models import initial_model\n"
            f"initial_model({_spec()!r}, 'pretrained', weights={{'timm_pretrained': True}})\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode != 0
    assert "CheckpointError: timm's pretrained weights for vit_tiny_patch16_224: cannot get them" in proc.stderr
    assert "pretrain.weights.file" in proc.stderr
