"""Any timm model with exposed intermediate layers, at tiny sizes on the CPU: a plain ViT, DeiT's
distilled ViT, BEiT (run through timm's forward_intermediates), Swin, ConvNeXt and a ResNet.

Layer outputs must equal timm's own ``forward_intermediates``; a truncated inversion must equal
the inversion of the whole model with the layer read by a forward hook, exactly; each family
trains; configs name what a family cannot do; and a ResNet runs through the pipeline.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from conftest import LEAN, SMOKE_CONFIG, jobs_by_rule, snakemake
from stirflow.config import ConfigError, model_layers, run_names, stir_blocks, stir_epochs, validate_config
from stirflow.data import ImageSet, make_shapes, to_tensor, write_image_h5
from stirflow.inversion import invert_blocks, invert_fn
from stirflow.models import (StirModel, StirViT, create_model, describe_timm_model, initial_model, layer_representation,
                             load_checkpoint, plan_layers, pool_layer, prepare_for_inversion)

STIRFLOW = str(Path(sys.executable).parent / "stirflow")

#: family → (timm name, tiny keyword arguments, expected depth, kind, layout, run one after another)
FAMILIES = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=32, depth=3, embed_dim=32, num_heads=2), 3, "block", "NLC", True),
    "deit": ("deit_tiny_distilled_patch16_224", dict(img_size=32, depth=2, embed_dim=32, num_heads=2), 2, "block",
             "NLC", True),
    "beit": ("beit_base_patch16_224", dict(img_size=32, depth=2, embed_dim=32, num_heads=2), 2, "block", "NLC", False),
    "swin": ("swin_tiny_patch4_window7_224", dict(img_size=32, embed_dim=16, depths=(1, 1, 1, 1),
                                                  num_heads=(1, 1, 1, 1), window_size=2), 4, "stage", "NHWC", True),
    "convnext": ("convnext_atto", dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)), 4, "stage", "NCHW", True),
    "resnet": ("resnet18", dict(layers=[1, 1, 1, 1], channels=[8, 16, 32, 64], stem_width=8), 4, "stage", "NCHW", True),
}
MODULES = {"vit": ["blocks.0", "blocks.1", "blocks.2"], "resnet": ["layer1", "layer2", "layer3", "layer4"],
           "convnext": [f"stages.{i}" for i in range(4)], "swin": [f"layers.{i}" for i in range(4)]}


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """Every test here runs torch on one thread (see conftest.one_torch_thread)."""


def tiny(family: str, num_classes: int = 5, seed: int = 0) -> StirModel:
    name, kwargs, *_ = FAMILIES[family]
    torch.manual_seed(seed)
    return create_model({"timm_name": name, "kwargs": kwargs, "num_classes": num_classes}).eval()


def images(n: int = 4, size: int = 32) -> torch.Tensor:
    return to_tensor(make_shapes(n, size, seed=1)[0])


def timm_intermediates(model: StirModel, x: torch.Tensor) -> list[torch.Tensor]:
    """timm's own forward_intermediates of every layer, as the wrapper's layout holds them."""
    options = {"return_prefix_tokens": True, "output_fmt": "NLC"} if model.plan.layout == "NLC" else {}
    outs = model.net.forward_intermediates(model.normalise(x), intermediates_only=True, **options)
    if model.plan.layout == "NLC":
        outs = [torch.cat([prefix, tokens], 1) for tokens, prefix in outs]
    if model.plan.layout == "NHWC":  # timm permutes Swin's own NHWC stage outputs to NCHW
        outs = [o.permute(0, 2, 3, 1) for o in outs]
    return outs[model.plan.feature_offset:]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_layers_are_found_and_equal_timms_intermediates(family):
    name, kwargs, depth, kind, layout, sequential = FAMILIES[family]
    model = tiny(family)
    assert (model.depth, model.layer_kind, model.plan.layout, model.plan.sequential) == (depth, kind, layout, sequential)
    assert isinstance(model, StirViT) == (family in ("vit", "deit"))
    if family in MODULES:
        assert list(model.plan.modules) == MODULES[family]
    described = describe_timm_model(name, kwargs)  # on the meta device, as config validation does
    assert (described["depth"], described["layer_kind"], described["layer_modules"]) == \
        (depth, kind, list(model.plan.modules))
    x = images()
    with torch.no_grad():
        ours, theirs = model.layer_outputs(x), timm_intermediates(model, x)
        assert len(ours) == len(theirs) == depth
        for layer, (a, b) in enumerate(zip(ours, theirs), start=1):
            assert torch.equal(a, b), (family, layer)
        # only as many layers as asked for are run, and the first ones are the same
        assert [torch.equal(a, b) for a, b in zip(model.layer_outputs(x, 2), ours)] == [True, True]
        assert model(x).shape == (4, 5)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_samples_leave_the_pass_after_their_own_layer(family):
    """exit_outputs on images stacked by exit layer gives each group its layer's output."""
    model = tiny(family)
    x = images(6)
    exits = {1: 2, 2: 1, model.depth: 3} if model.depth > 2 else {1: 2, 2: 4}
    with torch.no_grad():
        outs = model.exit_outputs(x, exits)
        full = model.layer_outputs(x)
    assert len(outs) == len(exits)
    lo = 0
    for out, (layer, k) in zip(outs, sorted(exits.items())):
        torch.testing.assert_close(out, full[layer - 1][lo:lo + k], rtol=1e-5, atol=1e-6)
        lo += k


def _hooked(model: StirModel, layer: int, representation: str):
    """images → the pooled output of ``layer``, read by a forward hook while the whole model runs."""
    module = model.net.get_submodule(model.plan.modules[layer - 1])
    seen = []

    def fn(z):
        handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out))
        try:
            model(z)
        finally:
            handle.remove()
        return model.pool(seen.pop(), representation)

    fn.model = model
    return fn


@pytest.mark.parametrize("family", list(FAMILIES))
def test_truncated_inversion_equals_the_whole_model_read_by_a_hook(family):
    model = prepare_for_inversion(tiny(family))
    x = images(3)
    representation = "tokens" if family != "swin" else "mean"
    for layer in (1, model.depth):
        truncated = invert_blocks(model, x, [layer], steps=4, seed=2, representation=representation)[layer]
        reference = invert_fn(_hooked(model, layer, representation), x, steps=4, seed=2)
        assert torch.equal(truncated.images, reference.images), (family, layer)
        assert torch.equal(truncated.losses, reference.losses), (family, layer)
        assert float(truncated.losses.mean()) < float(truncated.start_losses.mean())


def test_input_size_resizes_for_a_convolutional_model():
    name, kwargs, *_ = FAMILIES["resnet"]
    free = create_model({"timm_name": name, "kwargs": kwargs, "num_classes": 2})
    sized = create_model({"timm_name": name, "kwargs": kwargs, "num_classes": 2, "input_size": 24})
    assert free.img_size is None and sized.img_size == (24, 24)
    with torch.no_grad():
        assert free.layer_outputs(images(2), 1)[0].shape[-2:] == (8, 8)  # 32 px / stride 4
        assert sized.layer_outputs(images(2), 1)[0].shape[-2:] == (6, 6)  # resized to 24 px first
    config = validate_config(_config(timm_name=name, kwargs=kwargs, input_size=24))
    from stirflow.config import model_spec

    assert model_spec(config, "classification", 10)["input_size"] == 24


def test_a_model_without_exposed_layers_is_named():
    with pytest.raises(ValueError, match="Sequential: timm does not expose this model's intermediate layers"):
        plan_layers(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)))


def test_pooling_by_layout():
    h = torch.rand(2, 3, 4, 5)
    torch.testing.assert_close(pool_layer(h, "mean", "NCHW"), h.mean(dim=(2, 3)))
    torch.testing.assert_close(pool_layer(h, "mean", "NHWC"), h.mean(dim=(1, 2)))
    assert pool_layer(h, "tokens", "NCHW").shape == (2, 60)
    tokens = torch.rand(2, 5, 8)
    torch.testing.assert_close(pool_layer(tokens, "mean", "NLC", 1), tokens[:, 1:].mean(1))
    assert torch.equal(pool_layer(tokens, "cls", "NLC", 1), tokens[:, 0])
    with pytest.raises(ValueError, match="needs a model with a class token"):
        tiny("resnet").pool(h, "cls")
    fn = layer_representation(tiny("convnext"), 4, "mean")
    assert fn(images(2)).shape == (2, 64)
    with pytest.raises(ValueError, match=r"stage 5 is out of range: the model has stages 1\.\.4"):
        layer_representation(tiny("convnext"), 5)


@pytest.mark.parametrize("family", ["resnet", "convnext", "swin", "beit"])
def test_training_a_few_steps_and_a_checkpoint_round_trip(family, tmp_path):
    from stirflow.training import train

    name, kwargs, *_ = FAMILIES[family]
    spec = {"timm_name": name, "kwargs": kwargs, "num_classes": 10, "mean": [0.5] * 3, "std": [0.5] * 3,
            "task": "classification"}
    x, y = make_shapes(48, 32, seed=0)
    data = ImageSet(x, y, {"num_classes": 10})
    cfg = {"epochs": 1, "batch_size": 16, "optimizer": {"name": "adamw", "lr": 0.003}, "seed": 0}
    model = initial_model(spec, "scratch", seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    paths = [tmp_path / f"epoch_{e}.pt" for e in range(2)]
    history = train(model, spec, data, data, cfg, checkpoints=paths, resume_dir=tmp_path / "resume", run=family)
    assert np.isfinite(history[-1]["train_loss"]) and 0 <= history[-1]["test_accuracy"] <= 1
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if v.is_floating_point())
    loaded = load_checkpoint(paths[-1])
    assert type(loaded) is type(model) and loaded.checkpoint_info["epoch"] == 1
    with torch.no_grad():
        assert torch.equal(loaded(to_tensor(x[:4])), model.eval()(to_tensor(x[:4])))
    # a pretrained init takes the encoder and draws a new classifier
    finetune = initial_model({**spec, "num_classes": 3}, "pretrained", seed=1, init_checkpoint=paths[-1])
    classifier = f"net.{finetune.net.pretrained_cfg['classifier']}."
    for key, value in loaded.state_dict().items():
        if not key.startswith(classifier):
            assert torch.equal(finetune.state_dict()[key], value), key
    assert finetune(to_tensor(x[:2])).shape == (2, 3)


@pytest.mark.parametrize("family", ["resnet", "convnext"])
def test_pretrained_weights_from_a_local_file(family, tmp_path):
    """A timm weight file of another family: every encoder weight as saved, a new classifier."""
    name, kwargs, *_ = FAMILIES[family]
    import timm

    torch.manual_seed(9)
    saved = timm.create_model(name, num_classes=7, **kwargs).state_dict()
    torch.save(saved, tmp_path / "weights.pth")
    spec = {"timm_name": name, "kwargs": kwargs, "num_classes": 10}
    model = initial_model(spec, "pretrained", seed=3, weights={"file": str(tmp_path / "weights.pth")})
    classifier = model.net.pretrained_cfg["classifier"] + "."
    encoder = [k for k in saved if not k.startswith(classifier)]
    assert len(encoder) > 10
    for key in encoder:
        assert torch.equal(model.net.state_dict()[key], saved[key]), key
    assert model(images(2)).shape == (2, 10)


def test_old_vit_checkpoints_load_into_the_general_wrapper(tmp_path):
    """Checkpoints from before the wrapper held any timm model kept the ViT under ``vit.``."""
    spec = {"num_classes": 4, "vit": dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2)}
    torch.manual_seed(0)
    model = create_model(spec)
    state = {"vit." + k[len("net."):] if k.startswith("net.") else k: v for k, v in model.state_dict().items()}
    torch.save({"format": "stirflow-checkpoint-1", "spec": spec, "state_dict": state, "epoch": 0}, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    assert loaded.vit is loaded.net and loaded.layer_kind == "block"


# --------------------------------------------------------------------------- configs

def _config(**model):
    """configs/smoke.yaml with another model, and its classification runs only (reconstruction
    needs a VisionTransformer)."""
    config = yaml.safe_load(SMOKE_CONFIG.read_text())
    config["model"] = model
    config["finetune"]["runs"] = [r for r in config["finetune"]["runs"] if r.get("task") != "reconstruction"]
    return config


def test_config_reads_any_timm_model_and_names_what_a_family_cannot_do():
    resnet = dict(timm_name="resnet18", kwargs=FAMILIES["resnet"][1])
    config = validate_config(_config(**resnet))
    assert "vit" not in config["model"] and model_layers(config)["layer_kind"] == "stage"
    assert stir_blocks(config) == [1, 2, 3, 4]
    assert stir_blocks(validate_config({**_config(**resnet), "stir": {"layers": [2, 4]}})) == [2, 4]
    bad = {
        "reconstruction": ({"finetune": {"runs": [{"target": "digits", "task": "reconstruction"}]}},
                           "finetune.runs.0.task: reconstruction needs a VisionTransformer, and model.timm_name "
                           "'resnet18' is a resnet18"),
        "cls": ({"stir": {"representation": "cls"}}, "stir.representation: 'cls' needs a model with a class token"),
        "range": ({"stir": {"layers": [3, 5]}}, "stir.layers: [5] out of range: the model has stages 1..4"),
        "both names": ({"stir": {"layers": [1], "blocks": [1]}}, "stir.layers and stir.blocks: give one of them"),
    }
    for what, (changes, message) in bad.items():
        with pytest.raises(ConfigError) as err:
            validate_config({**_config(**resnet), **changes})
        assert message in str(err.value), (what, str(err.value))
    with pytest.raises(ConfigError, match=r"model\.kwargs and model\.vit: give one of them"):
        validate_config(_config(timm_name="resnet18", kwargs={}, vit={}))
    with pytest.raises(ConfigError, match=r"model\.timm_name: 'resnet18' cannot be built with model\.kwargs"):
        validate_config(_config(timm_name="resnet18", kwargs={"img_size": 32}))
    # a ViT given the general name works as with the older one
    vit = dict(timm_name="vit_tiny_patch16_224", kwargs={"img_size": 32, "depth": 2})
    assert model_layers(validate_config(_config(**vit)))["layer_modules"] == ["blocks.0", "blocks.1"]


def test_dag_of_a_non_vit_names_its_files_by_layer(tmp_path):
    config = _config(timm_name="convnext_atto", kwargs=FAMILIES["convnext"][1])
    config["stir"].pop("blocks_per_job", None)  # layers_per_job is its newer name
    config["stir"]["layers_per_job"] = 2
    path = tmp_path / "convnext.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = snakemake(tmp_path / "work", "-n", "--quiet", "rules", configfile=path)
    n_runs, n_epochs = len(run_names(validate_config(config))), len(config["stir"]["epochs"])
    assert jobs_by_rule(proc.stdout)["invert"] == n_runs * n_epochs * 2  # 2 groups of 2 stages
    proc = snakemake(tmp_path / "work", "-n", "results/runs/digits-scratch/inversions/epoch_002/layers_03-04.h5",
                     configfile=path)
    assert "layers_03-04.h5" in proc.stdout


# --------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_a_resnet_runs_through_the_pipeline(tmp_path):
    config = {**_config(timm_name="resnet18", kwargs=FAMILIES["resnet"][1]), **LEAN}
    # the pretrained run only: pretraining, loading its stages, finetuning, inversions, scores and robustness
    # (a scratch ResNet adds only a random initialisation, which the unit tests above build)
    config["finetune"]["runs"] = config["finetune"]["runs"][:1]
    config["stir"].update(layers=[1, 2, 4], layers_per_job=0)
    config["stir"].pop("blocks_per_job", None)
    path = tmp_path / "resnet.yaml"
    path.write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    snakemake(work, "--cores", "2", "results/summary.nc", configfile=path)
    ds = xr.load_dataset(work / "results" / "summary.nc", engine="h5netcdf")
    assert ds.attrs["model"] == "resnet18" and ds.attrs["layer_kind"] == "stage"
    assert list(ds["layer"].values) == [1, 2, 4]
    # what each run's layers are, per run (a summary may hold several architectures)
    assert ds["layer_module"].dims == ("run", "layer")
    assert ds["layer_module"].values.tolist() == [["layer1", "layer2", "layer4"]] * ds.sizes["run"]
    assert set(ds["layer_kind"].values) == {"stage"} and set(ds["depth"].values) == {4}
    np.testing.assert_allclose(ds["relative_depth"].values, [[0.25, 0.5, 1.0]] * ds.sizes["run"])
    scored = [e for e in stir_epochs(validate_config(config)) if e > 0]
    forgetting = ds["forgetting"].sel(epoch=scored).values
    assert np.all(np.isfinite(forgetting)) and np.all((forgetting >= -1e-6) & (forgetting <= 1 + 1e-6))
    assert np.all(np.isfinite(ds["cka"].sel(epoch=scored).values))
    inversions = sorted(p.name for p in (work / "results" / "runs" / "digits-pretrained" / "inversions").rglob("*.h5"))
    assert inversions and set(inversions) == {"layers_01-02-04.h5"}
    # the pretrained run started from the pretrained ResNet's stages, with a new classifier
    pre = load_checkpoint(work / "results" / "pretrain" / "checkpoints" / "epoch_002.pt")
    start = load_checkpoint(work / "results" / "runs" / "digits-pretrained" / "checkpoints" / "epoch_000.pt")
    for key, value in pre.state_dict().items():
        assert torch.equal(start.state_dict()[key], value) != key.startswith("net.fc."), key


def test_compare_accepts_other_families_by_name(tmp_path):
    images_, labels = make_shapes(8, 32, seed=0)
    write_image_h5(tmp_path / "test.h5", images_, labels, name="shapes", split="test", num_classes=10)
    out = tmp_path / "rc.nc"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([STIRFLOW, "compare", "--model-a", "resnet18", "--weights-a", "random", "--model-b",
                           "convnext_atto", "--weights-b", "random", "--images", str(tmp_path / "test.h5"),
                           "--blocks", "1,4", "--steps", "2", "--representation", "mean", "--quiet", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    ds = xr.load_dataset(out, engine="h5netcdf")
    assert list(ds["layer"].values) == [1, 4] and np.all(np.isfinite(ds["flow"].values))
    assert ds.attrs["layer_kind_a"] == "stage" and '"layer4"' in ds.attrs["layer_modules_a"]
    assert '"stages.3"' in ds.attrs["layer_modules_b"]
