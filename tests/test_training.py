"""Training settings as researchers write them: augmentations per image, learning-rate schedules with
warm-up, a stratified subset of the training split, bf16 autocast, scratch-only configs, model errors
before any job, and configs/paper_code.yaml."""

from __future__ import annotations

import re
import sys
import subprocess

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from stirflow.augmentation import (augment, color_jitter, random_color_jitter, random_resized_crop,
                                   random_rotation, resized_crop, resized_crop_boxes, rotate)
from stirflow.config import ConfigError, check_weights_file, load_config, run_names, validate_config, vit_arguments
from stirflow.data import ImageSet, make_digits, stratified_indices
from stirflow.models import create_model
from stirflow.training import TrainingError, evaluate, lr_factor, make_scheduler, train

from conftest import LEAN, REPO, SMOKE_CONFIG, jobs_by_rule, snakemake

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def images(n=8, h=12, w=14, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- augmentations

def test_resized_crop_is_torchvisions_resized_crop_per_image():
    import torchvision.transforms.v2.functional as TF

    x = images(16, 20, 24)
    boxes = resized_crop_boxes(16, 20, 24, torch.Generator().manual_seed(1))
    for size in ((32, 30), (8, 8)):  # enlarging (antialiasing changes nothing) and shrinking (none used)
        ours = resized_crop(x, boxes, size)
        ref = torch.stack([TF.resized_crop(x[i], *boxes[i].tolist(), list(size), antialias=False) for i in range(16)])
        assert ours.shape == (16, 3, *size)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    ref = torch.stack([TF.resized_crop(x[i], *boxes[i].tolist(), [32, 30], antialias=True) for i in range(16)])
    torch.testing.assert_close(resized_crop(x, boxes, (32, 30)), ref, atol=1e-5, rtol=0)


def test_crop_boxes_follow_scale_and_ratio():
    boxes = resized_crop_boxes(2000, 32, 32, torch.Generator().manual_seed(0), scale=(0.2, 0.6), ratio=(0.5, 2.0))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    area = (h * w).float() / 32**2
    assert area.min() > 0.2 - 0.05 and area.max() < 0.6 + 0.05  # rounding to whole pixels
    aspect = w.float() / h.float()
    assert aspect.min() > 0.5 * 0.8 and aspect.max() < 2.0 * 1.25
    assert len({tuple(b) for b in boxes.tolist()}) > 500  # a box per image, not one for the batch


def test_rotation_is_torchvisions_rotate_per_image():
    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode

    x = images(12, 15, 17)
    angles = torch.empty(12).uniform_(-30, 30, generator=torch.Generator().manual_seed(2))
    ref = torch.stack([TF.rotate(x[i], float(angles[i]), interpolation=InterpolationMode.NEAREST) for i in range(12)])
    assert torch.equal(rotate(x, angles), ref)


def test_color_jitter_is_torchvisions_adjustments_in_each_images_order():
    import torchvision.transforms.v2.functional as TF

    x = images(16)
    g = torch.Generator().manual_seed(3)
    factors = torch.empty(16, 3).uniform_(0.5, 1.5, generator=g)
    order = torch.rand(16, 3, generator=g).argsort(1)
    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    ref = []
    for i in range(16):
        y = x[i]
        for k in order[i].tolist():
            y = adjust[k](y, float(factors[i, k]))
        ref.append(y)
    torch.testing.assert_close(color_jitter(x, factors, order), torch.stack(ref), atol=1e-6, rtol=0)


AUGMENTATIONS = {
    "random_resized_crop": lambda x, g: random_resized_crop(x, g, size=(16, 16)),
    "color_jitter": lambda x, g: random_color_jitter(x, g, brightness=0.25, contrast=0.25, saturation=0.25),
    "rotation": lambda x, g: random_rotation(x, 20.0, g),
}


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_augmentation_is_seeded_per_image_and_keeps_range(name):
    op = AUGMENTATIONS[name]
    x = images(1).expand(6, -1, -1, -1).contiguous()  # six copies of one image
    a = op(x, torch.Generator().manual_seed(5))
    b = op(x, torch.Generator().manual_seed(5))
    c = op(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b), "the same seed must give the same batch"
    assert not torch.equal(a, c), "another seed must give another batch"
    assert len({tuple(im.flatten().tolist()) for im in a}) == 6, "copies of one image must be augmented apart"
    assert a.shape[:2] == x.shape[:2] and a.dtype == x.dtype
    assert a.min() >= 0 and a.max() <= 1


def test_augmentations_switched_off_draw_nothing():
    """Spelling out the defaults of the new augmentations changes neither the batch nor later draws."""
    x = images(8)
    old, new = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a = augment(x, {"crop_padding": 2, "hflip": True}, old)
    b = augment(x, {"random_resized_crop": None, "crop_padding": 2, "hflip": True,
                    "color_jitter": {"brightness": 0, "contrast": 0, "saturation": 0}, "rotation": 0}, new)
    assert torch.equal(a, b) and torch.equal(old.get_state(), new.get_state())


def test_augment_order_and_output_size():
    x = images(4, 8, 8)
    cfg = {"random_resized_crop": {"scale": [0.5, 1.0], "ratio": [0.75, 1.33]}, "hflip": True,
           "color_jitter": {"brightness": 0.25, "contrast": 0.25, "saturation": 0.25}, "rotation": 2}
    out = augment(x, cfg, torch.Generator().manual_seed(0), size=(24, 24))
    assert out.shape == (4, 3, 24, 24) and out.is_contiguous() and 0 <= out.min() and out.max() <= 1


# --------------------------------------------------------------------------- train() on tiny data

SPEC = {"task": "classification", "num_classes": 10,
        "vit": {"img_size": 8, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}}


@pytest.fixture(scope="module")
def digits():
    split = make_digits(8, 0.25, seed=0)
    return ImageSet(*split["train"], {"num_classes": 10}), ImageSet(*split["test"], {"num_classes": 10})


def run_train(tmp_path, train_set, test_set, **cfg):
    cfg = {"epochs": 3, "batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
           "schedule": "constant", "seed": 0, **cfg}
    torch.manual_seed(cfg["seed"])
    model = create_model(SPEC)
    history = train(model, SPEC, train_set, test_set, cfg, resume_dir=tmp_path / "resume", run="tiny",
                    checkpoints=[tmp_path / f"epoch_{e:03d}.pt" for e in range(cfg["epochs"] + 1)])
    return model, history


def torch_reference_lrs(schedule: dict, *, base: float, epochs: int, steps: int, warmup: int) -> list[float]:
    """The lr at the start of each epoch (epoch 0 = before training) from torch's own schedulers.

    cosine and linear run per step after a per-step linear warm-up (SequentialLR); step and
    exponential run per epoch, as MultiStepLR / ExponentialLR are meant to, the warm-up (shorter
    than an epoch here) overriding the first steps only.
    """
    from torch.optim import lr_scheduler as S

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    name, total = schedule["name"], epochs * steps
    if name in ("step", "exponential"):
        per_epoch = (S.MultiStepLR(opt, schedule["milestones"], schedule.get("gamma", 0.1)) if name == "step"
                     else S.ExponentialLR(opt, schedule["gamma"]))
        lrs = []  # lrs[i]: the lr of (1-based) epoch i + 1
        for _ in range(epochs):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            per_epoch.step()
        first = base / warmup if warmup else lrs[0]  # epochs 0 and 1 record the lr of step 0
        return [first, first] + lrs[1:]
    low = schedule.get("min_factor", 0.0)
    after = (S.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=low * base) if name == "cosine"
             else S.LinearLR(opt, start_factor=1.0, end_factor=low, total_iters=total - warmup))
    sched = S.SequentialLR(opt, [S.LinearLR(opt, 1 / warmup, 1.0, total_iters=warmup - 1), after], [warmup])
    per_step = []
    for _ in range(total):
        per_step.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return [per_step[0]] + [per_step[e * steps] for e in range(epochs)]


@pytest.mark.parametrize("schedule", [
    {"name": "cosine"}, {"name": "cosine", "min_factor": 0.1}, {"name": "linear"},
    {"name": "step", "milestones": [1, 3], "gamma": 0.5}, {"name": "exponential", "gamma": 0.7},
], ids=lambda s: "-".join(str(v) for v in s.values()))
def test_lr_per_epoch_follows_torchs_schedulers(schedule, digits, tmp_path):
    train_set, test_set = digits
    base, epochs, warmup = 0.05, 4, 3
    _, history = run_train(tmp_path, train_set, test_set, epochs=epochs, batch_size=128, schedule=schedule,
                           warmup_steps=warmup, optimizer={"name": "sgd", "lr": base})
    steps = len(train_set) // 128
    expected = torch_reference_lrs(schedule, base=base, epochs=epochs, steps=steps, warmup=warmup)
    assert [r["epoch"] for r in history] == list(range(epochs + 1))
    np.testing.assert_allclose([r["lr"] for r in history], expected, rtol=1e-6)


def test_warmup_in_epochs_is_warmup_in_steps():
    def lrs(**warm):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = make_scheduler(opt, "cosine", steps_per_epoch=7, epochs=5, **warm)
        out = []
        for _ in range(35):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    from stirflow.training import warmup_steps

    assert warmup_steps({"warmup_epochs": 2}, 7) == 14 == warmup_steps({"warmup_steps": 14}, 7)
    assert lrs(warmup_steps=14) == [lr_factor(s, "cosine", steps_per_epoch=7, total_steps=35, warmup_steps=14)
                                    for s in range(35)]
    assert lrs(warmup_steps=14)[:14] == [(s + 1) / 14 for s in range(14)]


def test_stratified_subset_keeps_class_shares_and_is_seeded():
    labels = np.repeat(np.arange(5), [100, 50, 30, 15, 5])
    a = stratified_indices(labels, 0.4, seed=0)
    counts = np.bincount(labels[a], minlength=5)
    assert np.all(np.abs(counts - 0.4 * np.bincount(labels)) <= 1), counts
    assert np.array_equal(a, stratified_indices(labels, 0.4, seed=0)) and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, stratified_indices(labels, 0.4, seed=1))
    assert np.array_equal(stratified_indices(labels, 1.0, seed=3), np.arange(200))


def test_train_fraction_is_a_subset_recorded_in_the_history(digits, tmp_path):
    train_set, test_set = digits
    _, history = run_train(tmp_path / "half", train_set, test_set, epochs=1, train_fraction=0.5, train_subset_seed=4)
    n = len(stratified_indices(train_set.labels, 0.5, seed=4))
    assert abs(n - len(train_set) / 2) <= 1
    assert all(r["train_fraction"] == 0.5 and r["n_train"] == n for r in history), history
    _, full = run_train(tmp_path / "full", train_set, test_set, epochs=1)
    assert all(r["train_fraction"] == 1.0 and r["n_train"] == len(train_set) for r in full)
    with pytest.raises(TrainingError, match="train_fraction = 0.001"):  # one image cannot hold ten classes
        run_train(tmp_path / "tiny", train_set, test_set, epochs=1, train_fraction=0.001)


def test_bf16_trains_and_evaluates_like_fp32(digits, tmp_path):
    """On trained models (not random weights): bf16 autocast in training reaches fp32's test accuracy
    within noise for two seeds, and evaluating an fp32-trained model under bf16 gives its accuracy."""
    train_set, test_set = digits
    cfg = {"epochs": 6, "batch_size": 64, "warmup_epochs": 1, "schedule": "cosine",
           "optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.05}}
    x_test, y_test = torch.from_numpy(test_set.images), torch.from_numpy(test_set.labels)
    noise = 2 * np.sqrt(0.25 / len(test_set))  # two binomial standard errors at the widest
    for seed in (0, 1):
        fp32_model, fp32 = run_train(tmp_path / f"fp32-{seed}", train_set, test_set, seed=seed, **cfg)
        bf16_model, bf16 = run_train(tmp_path / f"bf16-{seed}", train_set, test_set, seed=seed, bf16=True, **cfg)
        acc32, acc16 = fp32[-1]["test_accuracy"], bf16[-1]["test_accuracy"]
        print(f"seed {seed}: test accuracy fp32 {acc32:.4f}, bf16 {acc16:.4f}")
        assert acc32 > 0.7, "the fp32 model must have learned something for the comparison to mean anything"
        assert abs(acc16 - acc32) <= noise, (seed, acc32, acc16)
        assert fp32[-1]["train_loss"] != bf16[-1]["train_loss"], "bf16 autocast had no effect"
        assert all(p.dtype == torch.float32 for p in bf16_model.parameters()), "weights must stay fp32"
        full, half = evaluate(fp32_model, x_test, y_test), evaluate(fp32_model, x_test, y_test, bf16=True)
        assert abs(half["accuracy"] - full["accuracy"]) <= 0.01 and half["loss"] == pytest.approx(full["loss"], rel=0.05)


# --------------------------------------------------------------------------- configs

def smoke_config(**sections) -> dict:
    """configs/smoke.yaml with the given sections replaced whole."""
    config = yaml.safe_load(SMOKE_CONFIG.read_text())
    config.update(sections)
    return config


def write_smoke_config(path, **sections):
    path.write_text(yaml.safe_dump(smoke_config(**sections)))
    return path


@pytest.mark.parametrize("changes,key", [
    ({"finetune": {"runs": [{"target": "digits"}], "schedule": {"name": "step"}}}, "finetune.schedule.milestones"),
    ({"finetune": {"runs": [{"target": "digits"}], "schedule": {"name": "exponential"}}}, "finetune.schedule.gamma"),
    ({"finetune": {"runs": [{"target": "digits"}], "schedule": {"name": "cosine", "gamma": 0.1}}}, "finetune.schedule"),
    ({"finetune": {"runs": [{"target": "digits"}], "epochs": 4, "schedule": {"name": "step", "milestones": [2, 4]}}},
     "finetune.schedule.milestones: [4]"),
    ({"finetune": {"runs": [{"target": "digits"}], "warmup_epochs": 1, "warmup_steps": 10}}, "finetune.warmup_steps"),
    ({"finetune": {"runs": [{"target": "digits"}], "augment": {"random_resized_crop": {"scale": [0.9, 0.1]}}}},
     "finetune.augment.random_resized_crop.scale"),
    ({"finetune": {"runs": [{"target": "digits"}], "train_fraction": 0}}, "finetune.train_fraction"),
    ({"stir": {"image_selection": "last"}}, "stir.image_selection"),
])
def test_training_settings_that_do_not_fit_name_the_key(changes, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        validate_config(smoke_config(**changes))


def test_a_scratch_only_config_needs_no_pretraining_settings():
    config = validate_config({"datasets": {"digits": {"kind": "digits"}},
                              "finetune": {"runs": [{"target": "digits", "init": "scratch"}]}})
    assert config["pretrain"]["dataset"] == "shapes"  # the unused default is not checked
    validate_config({"datasets": {"digits": {"kind": "digits"}}, "pretrain": {"weights": {"file": "nowhere.pth"}},
                     "finetune": {"runs": [{"target": "digits", "init": "scratch"}]}})  # weights no run loads
    with pytest.raises(ConfigError, match="pretrain.dataset: unknown data set 'shapes'"):
        validate_config({"datasets": {"digits": {"kind": "digits"}}, "finetune": {"runs": [{"target": "digits"}]}})


def test_vit_defaults_read_from_timms_source_are_timms():
    import inspect

    from timm.models.vision_transformer import VisionTransformer

    params = list(inspect.signature(VisionTransformer.__init__).parameters.values())[1:]
    assert list(vit_arguments()) == [p.name for p in params]
    literal = (int, float, bool, str, tuple, type(None))
    for p in params:
        if isinstance(p.default, literal):
            assert vit_arguments()[p.name] == p.default, p.name


def test_validating_a_vit_spec_imports_no_torch():
    code = ("import sys; from stirflow.config import validate_config, ConfigError\n"
            "try:\n validate_config({'model': {'vit': {'img_size': 16, 'patch_size': 5, 'embed_dim': 64}}})\n"
            "except ConfigError as err: print(err)\n"
            "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "model.vit.patch_size: 5 does not divide model.vit.img_size = 16" in out, out
    assert "model.vit.num_heads: 12 (the default) does not divide model.vit.embed_dim = 64" in out, out
    assert out.strip().endswith("[]"), out


TIMM_MODEL = {"timm_name": "vit_tiny_patch16_224", "vit": {"img_size": 32, "depth": 2}}


def save_vit_weights(path, **kwargs):
    """A timm ViT-Tiny state dict (random weights) with ``kwargs`` changed, as a weights file."""
    import timm

    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**TIMM_MODEL["vit"], **kwargs}).state_dict(),
               path)
    return str(path)


@pytest.mark.parametrize("model,key", [
    ({"vit": {"img_size": 16, "patch_size": 5, "embed_dim": 32, "depth": 2, "num_heads": 2}},
     "model.vit.patch_size: 5 does not divide model.vit.img_size = 16"),
    ({"vit": {"img_size": 16, "patch_size": 4, "embed_dim": 64, "depth": 2, "num_heads": 3}},
     "model.vit.num_heads: 3 does not divide model.vit.embed_dim = 64"),
    ({"vit": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ration": 2}},
     "model.vit.mlp_ration: not an argument of timm's VisionTransformer"),
    ({"timm_name": "vit_tiny_patch16_224", "vit": {"img_size": 40}},
     "model.vit.patch_size: [16, 16] (vit_tiny_patch16_224's default) does not divide model.vit.img_size = 40"),
    ({"timm_name": "vit_tiny_patch16_224.no_such_weights", "vit": {"img_size": 32}},
     "model.timm_name: timm has no weights 'no_such_weights'"),
    ({"timm_name": "vit_tiny_patch16_224", "vit": {"img_size": 32, "num_heads": 5}},
     "model.vit.num_heads: 5 does not divide model.vit.embed_dim = 192 (vit_tiny_patch16_224's default)"),
    ({"timm_name": "no_such_vit"}, "model.timm_name: 'no_such_vit' is not a timm model"),
], ids=["patch", "heads", "argument", "timm-patch", "timm-tag", "timm-heads", "timm-name"])
def test_model_errors_name_the_key(model, key):
    """Checked in-process by the validation the Snakefile runs before any job (test_pipeline's
    test_bad_config_stops_before_any_job runs one of them through ``snakemake -n``)."""
    with pytest.raises(ConfigError) as err:
        validate_config(smoke_config(model=model))
    assert key in str(err.value), (key, str(err.value))


def test_weights_files_are_checked_before_any_job(tmp_path):
    """A missing weights file and one of another width stop ``snakemake -n`` naming
    pretrain.weights.file; a fitting file builds the DAG."""
    fits = save_vit_weights(tmp_path / "fits.pth")
    wider = save_vit_weights(tmp_path / "wider.pth", embed_dim=96, num_heads=3)
    missing = write_smoke_config(tmp_path / "m.yaml", model=TIMM_MODEL, pretrain={"weights": {"file": str(tmp_path / "no.pth")}})
    with pytest.raises(ConfigError, match=r"pretrain\.weights\.file: .*not found"):
        check_weights_file(load_config(missing))  # in-process; the other two through snakemake -n
    for weights, message in ((wider, "size mismatch"), (fits, None)):
        config = write_smoke_config(tmp_path / "c.yaml", model=TIMM_MODEL, pretrain={"weights": {"file": weights}})
        proc = snakemake(tmp_path / "work", "-n", configfile=config, check=False)
        text = proc.stdout + proc.stderr
        if message is None:
            assert proc.returncode == 0, text[-3000:]
            n_runs = len(run_names(load_config(config)))
            assert "pretrain" not in jobs_by_rule(proc.stdout) and jobs_by_rule(proc.stdout)["finetune"] == n_runs
        else:
            assert proc.returncode != 0, text[-3000:]
            assert re.search(rf"pretrain\.weights\.file: .*{message}", text, re.S), (message, text[-3000:])
        assert not (tmp_path / "work" / "results").exists()


SCRATCH_ONLY = {
    "datasets": {"digits": {"kind": "digits", "image_size": 16, "test_fraction": 0.25, "seed": 0}},
    "finetune": {"runs": [{"target": "digits", "init": "scratch"}], "epochs": 3, "batch_size": 64,
                 "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, "warmup_steps": 4,
                 "schedule": {"name": "step", "milestones": [1, 2], "gamma": 0.5}, "train_fraction": 0.5,
                 "augment": {"random_resized_crop": {"scale": [0.5, 1.0]}, "hflip": True, "rotation": 2,
                             "color_jitter": {"brightness": 0.25, "contrast": 0.25, "saturation": 0.25}}},
    "stir": {"n_images": 32, "steps": 20, "image_selection": "first", "epochs": [3],
             "blocks_per_job": 0},  # both blocks in one job: two inversion jobs instead of four
}


@pytest.mark.slow
def test_scratch_only_config_runs_end_to_end_without_pretraining(tmp_path):
    """Only scratch runs and no pretrain section: no pretraining job, and summary.nc has the lr the
    step schedule gives after the warm-up, the training subset's size and the first test images."""
    raw = smoke_config(**SCRATCH_ONLY, **LEAN)
    del raw["pretrain"]
    config = tmp_path / "scratch.yaml"
    config.write_text(yaml.safe_dump(raw))
    work = tmp_path / "work"
    jobs = jobs_by_rule(snakemake(work, "-n", "--quiet", "rules", configfile=config).stdout)
    assert "pretrain" not in jobs and jobs["prepare_dataset"] == 1 and jobs["finetune"] == 1, jobs
    snakemake(work, "--cores", "2", "results/summary.nc", configfile=config)  # the figures are not about this
    with xr.open_dataset(work / "results" / "summary.nc", engine="h5netcdf") as ds:
        ds = ds.load()
    run = "digits-scratch"
    assert list(ds.run.values) == [run] and np.isfinite(ds["forgetting"].sel(run=run, epoch=[0, 3]).values).all()
    n_train = int(ds["n_train"].sel(run=run))  # one value per run, from its history
    steps = n_train // 64
    ft = SCRATCH_ONLY["finetune"]
    expected = torch_reference_lrs(ft["schedule"], base=0.05, epochs=3, steps=steps, warmup=4)
    np.testing.assert_allclose(ds["lr"].sel(run=run).values, expected, rtol=1e-6)
    assert (ds["train_fraction"].sel(run=run).values == 0.5).all()
    digits_train = 1797 - round(1797 * 0.25)
    assert abs(n_train - digits_train / 2) <= 1
    from stirflow.inversion import load_inversion

    inversions = sorted((work / "results" / "runs" / run / "inversions").rglob("*.h5"))
    assert inversions and all(np.array_equal(load_inversion(p)[1]["indices"], np.arange(32)) for p in inversions)


PAPER_CODE = REPO / "configs" / "paper_code.yaml"


def config_differences(a, b, prefix=""):
    """Dotted keys where two validated configs differ (a mapping in one and not the other counts once)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return {d for k in set(a) | set(b) for d in config_differences(a.get(k), b.get(k), f"{prefix}{k}.")}
    return set() if a == b else {prefix.rstrip(".")}


def test_paper_code_differs_from_paper_where_the_docs_table_says():
    differences = config_differences(load_config(REPO / "configs" / "paper.yaml"), load_config(PAPER_CODE))
    text = (REPO / "docs" / "reproducing.md").read_text()
    section = text[text.index("## The paper's text, its released code and our two configs"):]
    section = section[:section.index("\n## ", 1)]
    documented = set(re.findall(r"^\| `([\w.]+)` \|", section, re.MULTILINE))
    covers = lambda row, key: key == row or key.startswith(row + ".")  # noqa: E731 - a row covers its sub-keys
    undocumented = [k for k in differences if not any(covers(row, k) for row in documented)]
    not_different = [row for row in documented if not any(covers(row, k) for k in differences)]
    assert not undocumented and not not_different, (undocumented, not_different)
    for key in documented:  # each row names both values
        row = next(line for line in section.splitlines() if line.startswith(f"| `{key}` |"))
        assert row.count("|") == 6, row


def test_paper_code_dag_within_30_seconds(tmp_path):
    from test_paper import _check_time, _dry_run, expected_jobs

    proc, wall, cpu = _dry_run(tmp_path, "--workflow-profile", str(REPO / "profiles" / "default"), configfile=PAPER_CODE)
    jobs = jobs_by_rule(proc.stdout)
    expected = expected_jobs(load_config(PAPER_CODE))
    assert jobs == expected and expected["invert_check"] > 0
    _check_time(wall, cpu)
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()


def test_training_benchmarks_run_at_tiny_sizes(tmp_path):
    """The two benchmark scripts still run against the library (their figures are printed, not checked)."""
    def run(script, *args):
        proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True,
                              text=True, timeout=300, cwd=REPO)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    out = run("augment_speed.py", "--n", "4", "--in-size", "8", "--out-size", "12", "--repeats", "1")
    assert re.search(r"^ours \(batched, per-image parameters\)\s+[\d.]+\s+\d+$", out, re.M), out
    assert re.search(r"^torchvision functional, image by image\s+[\d.]+\s+\d+$", out, re.M), out
    run("bf16_training.py", "--seeds", "0", "--epochs", "1", "--image-size", "8", "--dim", "16", "--depth", "1",
        "--json", str(tmp_path / "bf16.json"))
    import json

    (row,) = json.loads((tmp_path / "bf16.json").read_text())["runs"]
    assert 0 <= row["fp32_accuracy"] <= 1 and 0 <= row["bf16_accuracy"] <= 1
