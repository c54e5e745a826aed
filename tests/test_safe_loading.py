"""Opening a file never runs code: checkpoints, resume states, weight files and downloaded archives.

The crafted checkpoint below is a real stirflow checkpoint whose metrics hold an object with a
``__reduce__`` payload: unpickling it the unrestricted way creates a marker file (checked once, in
a subprocess, so that the other tests are known to test something). Every loader must refuse it,
name the file, and leave the marker uncreated.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shlex
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import snakemake, write_config
from http_mirror import build_archives
from stirflow.checkpoints import CHECKPOINT_FORMAT, convert_checkpoint, describe_file, save_checkpoint
from stirflow.data import DataFileError, make_shapes, write_image_h5
from stirflow.models import CheckpointError, create_model, initial_model, load_checkpoint, read_checkpoint
from stirflow.public_datasets import prepare_public_dataset
from test_download import _tar_gz
from test_faults import failed_outputs, output_files

STIRFLOW = str(Path(sys.executable).parent / "stirflow")
SPEC = {"num_classes": 10, "vit": dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2)}


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """Every test here runs torch on one thread (see conftest.one_torch_thread)."""


class CreatesFile:
    """Unpickled without restriction, this calls ``open(marker, "w")``: the file appears."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def craft(path: Path, marker: Path, base: Path | None = None) -> Path:
    """A checkpoint (``base``'s content, or a tiny model's) with the payload in its metrics."""
    if base is not None:
        content = torch.load(base, weights_only=True)
    else:
        torch.manual_seed(0)
        content = {"format": CHECKPOINT_FORMAT, "spec": SPEC, "state_dict": create_model(SPEC).state_dict(),
                   "weights_dtype": "float32", "run": "x", "epoch": 1}
    content["metrics"] = {"test_accuracy": 0.5, "note": CreatesFile(marker)}
    path.unlink(missing_ok=True)  # a new file: pipeline checkpoints are hard links into the resume state
    torch.save(content, path)
    return path


def test_the_crafted_checkpoint_runs_code_when_unpickled_without_restriction(tmp_path):
    evil = craft(tmp_path / "evil.pt", tmp_path / "marker")
    code = f"import torch; torch.load({str(evil)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    assert (tmp_path / "marker").exists()


def test_library_loaders_refuse_it(tmp_path):
    marker = tmp_path / "marker"
    evil = craft(tmp_path / "evil.pt", marker)
    loaders = {
        "read_checkpoint": lambda: read_checkpoint(evil),
        "load_checkpoint": lambda: load_checkpoint(evil),
        "initial_model": lambda: initial_model(SPEC, "pretrained", init_checkpoint=evil),
        "convert_checkpoint": lambda: convert_checkpoint(evil, tmp_path / "converted.pt"),
        "weights file": lambda: create_model({**SPEC, "timm_name": "vit_tiny_patch16_224",
                                              "vit": {"img_size": 32, "depth": 2}}, weights_file=evil),
    }
    for name, load in loaders.items():
        with pytest.raises(CheckpointError) as err:
            load()
        message = str(err.value)
        assert str(evil) in message and "refused" in message and "io.open" in message, (name, message)
        assert not marker.exists(), name
    assert not (tmp_path / "converted.pt").exists()


def test_compare_refuses_it(tmp_path):
    marker = tmp_path / "marker"
    evil = craft(tmp_path / "evil.pt", marker)
    good = tmp_path / "good.pt"
    save_checkpoint(good, create_model(SPEC), SPEC)
    images, labels = make_shapes(8, 16, seed=0)
    write_image_h5(tmp_path / "test.h5", images, labels, name="shapes", split="test", num_classes=10)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for models in (["--model-a", str(evil), "--model-b", str(good)],
                   ["--model-a", "vit_tiny_patch16_224", "--weights-a", str(evil), "--img-size", "16",
                    "--model-b", str(good)]):
        proc = subprocess.run([STIRFLOW, "compare", *models, "--images", str(tmp_path / "test.h5"), "--steps", "1",
                               "--quiet", "--out", str(tmp_path / "ab.nc")], capture_output=True, text=True,
                              timeout=300, env=env)
        assert proc.returncode == 2, proc.stderr
        assert f"{evil}: refused" in proc.stderr and "--" in proc.stderr, proc.stderr
        assert not marker.exists() and not (tmp_path / "ab.nc").exists()


def test_resume_state_is_read_without_running_code(tmp_path):
    from stirflow.data import ImageSet
    from stirflow.training import train

    images, labels = make_shapes(32, 16, seed=0)
    data = ImageSet(images, labels, {"num_classes": 10})
    cfg = {"epochs": 2, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.01}, "seed": 0}
    paths = [tmp_path / "out" / f"epoch_{e:03d}.pt" for e in range(3)]
    torch.manual_seed(0)
    train(create_model(SPEC), SPEC, data, data, cfg, checkpoints=paths, resume_dir=tmp_path / "resume", run="r")
    (state,) = (tmp_path / "resume").glob("*/state.pt")
    marker = tmp_path / "marker"
    craft(state, marker)
    before = {p: p.read_bytes() for p in paths}
    with pytest.raises(CheckpointError, match=rf"{state}: refused: .*io\.open"):
        train(create_model(SPEC), SPEC, data, data, cfg, checkpoints=paths, resume_dir=tmp_path / "resume", run="r")
    assert not marker.exists()
    assert {p: p.read_bytes() for p in paths} == before  # no checkpoint lost or rewritten


@pytest.mark.slow
def test_pipeline_jobs_refuse_a_crafted_checkpoint(smoke_copy):
    """Every job reading the crafted checkpoint (inversion, scores, robustness) fails naming it;
    nothing is executed and no output of another job is removed."""
    work = smoke_copy
    bad = work / "results" / "runs" / "digits-scratch" / "checkpoints" / "epoch_002.pt"  # an epoch that STIR scores
    marker = work / "marker"
    craft(bad, marker, base=bad)
    before = output_files(work)
    proc = snakemake(work, "--cores", "1", "--keep-going", check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-3000:]
    rel = str(bad.relative_to(work))
    messages = [line for line in text.splitlines() if line.startswith("stirflow: rule")]
    # the inversions and robustness scores of that epoch; its STIR scores wait for the inversions
    assert {"invert", "robustness"} <= {m.split()[2].rstrip(":") for m in messages}, messages
    assert all(f"{rel}: refused" in m for m in messages), messages
    assert not marker.exists()
    assert bad.is_file(), "the bad input itself was removed"
    lost = before - output_files(work)
    assert lost <= failed_outputs(text), f"outputs of other jobs were removed: {sorted(lost - failed_outputs(text))}"


@pytest.mark.slow
def test_pipeline_refuses_a_crafted_resume_state(smoke_copy):
    work = smoke_copy
    (state,) = (work / "results" / ".resume" / "digits-scratch").glob("*/state.pt")
    marker = work / "marker"
    craft(state, marker, base=state)
    (work / "results" / "runs" / "digits-scratch" / "history.json").unlink()  # the job runs again, resuming
    before = output_files(work)
    proc = snakemake(work, "--cores", "1", "results/runs/digits-scratch/history.json", check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    rel = str(state.relative_to(work))
    assert f"stirflow: rule finetune failed: CheckpointError: {rel}: refused" in text, text[-3000:]
    assert not marker.exists()
    lost = before - output_files(work)
    assert lost <= failed_outputs(text), f"outputs of other jobs were removed: {sorted(lost - failed_outputs(text))}"


# --------------------------------------------------------------------------- formats and dtypes

def _old_format(path: Path, ckpt: dict) -> None:
    """What the first format's writer wrote: ``torch.save({"format", "spec", "state_dict", **extra})``,
    with the ViT's weights under ``vit.`` and its arguments under ``spec["vit"]``."""
    extra = {k: v for k, v in ckpt.items() if k not in ("format", "spec", "state_dict", "weights_dtype")}
    spec = {("vit" if k == "kwargs" else k): v for k, v in ckpt["spec"].items()}
    state = {("vit." + k[len("net."):] if k.startswith("net.") else k): v for k, v in ckpt["state_dict"].items()}
    assert any(k.startswith("vit.") for k in state)
    torch.save({"format": "stirflow-checkpoint-1", "spec": spec, "state_dict": state, **extra}, path)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_old_and_new_format_checkpoints_of_the_smoke_run_load_alike(smoke_run, tmp_path):
    checkpoints = sorted((smoke_run / "results").glob("**/checkpoints/epoch_*.pt"))
    assert len(checkpoints) >= 6
    for path in checkpoints:
        raw = torch.load(path, weights_only=True)
        assert raw["format"] == CHECKPOINT_FORMAT and raw["weights_dtype"] == "float32"
        _old_format(tmp_path / "old.pt", raw)
        new, old = load_checkpoint(path), load_checkpoint(tmp_path / "old.pt")
        assert _same_weights(new, old), path
        assert old.checkpoint_info["epoch"] == new.checkpoint_info["epoch"] == raw["epoch"]
        assert old.checkpoint_info["metrics"] == new.checkpoint_info["metrics"]


def test_bf16_and_fp16_checkpoints_load_as_rounded_fp32(tmp_path):
    torch.manual_seed(0)
    model = create_model(SPEC)
    save_checkpoint(tmp_path / "fp32.pt", model, SPEC)
    for dtype in ("bfloat16", "float16"):
        save_checkpoint(tmp_path / f"{dtype}.pt", model, SPEC, dtype=dtype, epoch=3)
        raw = torch.load(tmp_path / f"{dtype}.pt", weights_only=True)
        assert raw["weights_dtype"] == dtype and raw["state_dict"]["net.cls_token"].dtype == getattr(torch, dtype)
        loaded = load_checkpoint(tmp_path / f"{dtype}.pt")
        for key, value in model.state_dict().items():
            got = loaded.state_dict()[key]
            assert got.dtype == torch.float32, key
            assert torch.equal(got, value.to(getattr(torch, dtype)).float()), key
        assert loaded.checkpoint_info["epoch"] == 3
        size = (tmp_path / f"{dtype}.pt").stat().st_size / (tmp_path / "fp32.pt").stat().st_size
        assert 0.45 < size < 0.6, size


@pytest.mark.slow
def test_pipeline_stores_bf16_checkpoints_and_a_float32_resume_state(tmp_path):
    config = write_config(tmp_path / "bf16.yaml", compute={"checkpoint_dtype": "bfloat16"})
    work = tmp_path / "work"
    snakemake(work, "--cores", "2", "results/runs/digits-scratch/history.json", configfile=config)
    checkpoints = sorted((work / "results" / "runs" / "digits-scratch" / "checkpoints").glob("*.pt"))
    assert len(checkpoints) == 3
    for path in checkpoints:
        raw = torch.load(path, weights_only=True)
        assert raw["weights_dtype"] == "bfloat16" and raw["state_dict"]["net.pos_embed"].dtype == torch.bfloat16
    (state,) = (work / "results" / ".resume" / "digits-scratch").glob("*/state.pt")
    raw = torch.load(state, weights_only=True)
    assert raw["weights_dtype"] == "float32" and raw["state_dict"]["net.pos_embed"].dtype == torch.float32
    last = torch.load(checkpoints[-1], weights_only=True)["state_dict"]  # the same weights, rounded
    assert all(torch.equal(last[k], v.to(last[k].dtype)) for k, v in raw["state_dict"].items())


def test_numpy_values_are_named_with_the_one_line_conversion(tmp_path):
    torch.manual_seed(0)
    model = create_model(SPEC)
    old = tmp_path / "old numpy.pt"
    torch.save({"format": "stirflow-checkpoint-1", "spec": SPEC, "state_dict": model.state_dict(), "epoch": 2,
                "metrics": {"test_accuracy": np.float64(0.75), "n": np.int64(5), "curve": np.arange(3.0)}}, old)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(old)
    message = str(err.value)
    assert message.startswith(f"{old}: holds NumPy values")
    command = shlex.split(message[message.index("stirflow convert-checkpoint"):])  # the command the error gives
    assert command == ["stirflow", "convert-checkpoint", str(old)]
    proc = subprocess.run([STIRFLOW, *command[1:]], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = load_checkpoint(old)
    assert _same_weights(loaded, model)
    metrics = loaded.checkpoint_info["metrics"]
    assert metrics["test_accuracy"] == 0.75 and type(metrics["test_accuracy"]) is float
    assert metrics["n"] == 5 and type(metrics["n"]) is int
    assert torch.equal(metrics["curve"], torch.arange(3.0, dtype=torch.float64))
    assert torch.load(old, weights_only=True)["format"] == CHECKPOINT_FORMAT


def test_writing_refuses_what_could_not_be_read_back(tmp_path):
    with pytest.raises(TypeError, match=r"checkpoint\.metrics\.when is a datetime\.date"):
        import datetime

        save_checkpoint(tmp_path / "x.pt", create_model(SPEC), SPEC, metrics={"when": datetime.date(2024, 1, 1)})
    assert not (tmp_path / "x.pt").exists()


# --------------------------------------------------------------------------- files of another kind

def _other_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    images, labels = make_shapes(4, 16, seed=0)
    write_image_h5(tmp_path / "images.h5", images, labels, name="shapes", split="test", num_classes=10)
    torch.save(create_model(SPEC).state_dict(), tmp_path / "state_dict.pth")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    (tmp_path / "notes.pt").write_text("not a checkpoint\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "weights.safetensors"))
    return {
        "hdf5": (tmp_path / "images.h5", "it is an HDF5 file"),
        "state dict": (tmp_path / "state_dict.pth", "it is a state dict of"),
        "list": (tmp_path / "list.pt", "it is a PyTorch file holding a list"),
        "text": (tmp_path / "notes.pt", "it is a text file"),
        "empty": (tmp_path / "empty.pt", "it is an empty file"),
        "safetensors": (tmp_path / "weights.safetensors", "it is a safetensors file (a weight file"),
    }


def test_a_file_that_is_not_a_checkpoint_is_named_with_what_it_is(tmp_path, capsys):
    from stirflow.cli import main

    files = _other_files(tmp_path)
    for name, (path, what) in files.items():
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path)
        assert str(err.value).startswith(f"{path}: not a stirflow checkpoint: {what}"), (name, str(err.value))
        assert main(["compare", "--model-a", str(path), "--model-b", str(path), "--images", str(tmp_path / "images.h5"),
                     "--quiet", "--out", str(tmp_path / "x.nc")]) == 2
        assert f"--model-a: {path}: not a stirflow checkpoint: {what}" in capsys.readouterr().err, name
    # as a weight file: a state dict and a safetensors file are accepted, the others named
    for name in ("hdf5", "list", "text"):
        path, what = files[name]
        with pytest.raises(CheckpointError, match=rf"{path}: not a weight file .*: {what}"):
            create_model({**SPEC, "timm_name": "vit_tiny_patch16_224", "vit": {"img_size": 32}}, weights_file=path)
    path = files["hdf5"][0]
    assert main(["compare", "--model-a", "vit_tiny_patch16_224", "--weights-a", str(path), "--model-b", str(path),
                 "--images", str(path), "--quiet", "--out", str(tmp_path / "x.nc")]) == 2
    assert f"--weights-a: {path}: not a weight file (.pth/.bin/.safetensors/.npz): it is an HDF5 file" in \
        capsys.readouterr().err
    assert describe_file(tmp_path / "images.h5") == "an HDF5 file"


# --------------------------------------------------------------------------- downloaded archives

def _rewrite_with(archive: Path, name: str, data: bytes = b"x", link: str | None = None) -> str:
    """``archive`` (a tar, tar.gz or zip) with one more member; returns the new md5."""
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf:
            members = [(info, zf.read(info)) for info in zf.infolist()]
        with zipfile.ZipFile(archive, "w") as zf:
            for info, content in members:
                zf.writestr(info, content)
            zf.writestr(name, data)
    else:
        gz = archive.name.endswith(".gz")
        with tarfile.open(archive, "r:*") as tar:
            members = [(info, tar.extractfile(info).read() if info.isfile() else None) for info in tar.getmembers()]
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
            extra = tarfile.TarInfo(name)
            if link is None:
                extra.size = len(data)
            else:
                extra.type, extra.linkname = tarfile.SYMTYPE, link
            for info, content in [*members, (extra, None if link else data)]:
                tar.addfile(info, io.BytesIO(content) if content is not None else None)
        archive.write_bytes(buf.getvalue())
    return hashlib.md5(archive.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind, archive, member, link", [
    ("cifar100", "cifar-100-python.tar.gz", "/tmp/cifar-100-python/meta", None),
    ("cifar100", "cifar-100-python.tar.gz", "cifar-100-python/../../meta", None),
    ("cifar100", "cifar-100-python.tar.gz", "cifar-100-python/extra", "/etc/passwd"),
    ("cifar10_c", "CIFAR-10-C.tar", "../CIFAR-10-C/fog.npy", None),
    ("oxford_pets", "images.tar.gz", "images/../../Abyssinian_1.jpg", None),
    ("eurosat", "EuroSAT.zip", "/2750/Forest/Forest_9999.jpg", None),
    ("eurosat", "EuroSAT.zip", "2750/../Forest/Forest_9999.jpg", None),
], ids=["absolute", "dotdot", "link-outside", "cifar10_c-dotdot", "pets-dotdot", "zip-absolute", "zip-dotdot"])
def test_archive_members_outside_the_layout_are_refused(tmp_path, kind, archive, member, link):
    mirror = tmp_path / "mirror"
    files = build_archives(mirror, [kind])
    files[archive] = _rewrite_with(mirror / archive, member, link=link)
    spec = {"kind": kind, **({"image_size": 16} if kind == "oxford_pets" else {})}
    with pytest.raises(DataFileError, match="lies outside the archive's own tree") as err:
        prepare_public_dataset(kind, spec, tmp_path / "out", download_dir=tmp_path / "dl", mirror=str(mirror),
                               checksums=files, progress=False)
    assert archive in str(err.value) and member in str(err.value)
    assert not list((tmp_path / "out").glob("*.h5"))


def _calling_pickle(module: str, name: str, marker: Path) -> bytes:
    """A protocol-0 pickle that calls ``module.name(marker, "w")`` when loaded."""
    return f"c{module}\n{name}\n(S'{marker}'\nS'w'\ntR.".encode()


def test_the_archive_pickle_payload_runs_code_when_unpickled_without_restriction(tmp_path):
    pickle.loads(_calling_pickle("builtins", "open", tmp_path / "marker")).close()
    assert (tmp_path / "marker").exists()


@pytest.mark.parametrize("module, name", [("builtins", "open"), ("builtins", "eval"), ("os", "system"),
                                          ("subprocess", "Popen"), ("numpy", "load"),
                                          ("numpy.core.multiarray", "fromfile")])
def test_archive_pickles_referring_to_other_globals_are_refused(tmp_path, module, name):
    mirror = tmp_path / "mirror"
    files = build_archives(mirror, ["cifar100"])
    archive = mirror / "cifar-100-python.tar.gz"
    evil = _calling_pickle(module, name, tmp_path / "marker")
    with tarfile.open(archive, "r:gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    members["cifar-100-python/meta"] = evil
    archive.write_bytes(_tar_gz(members))
    files[archive.name] = hashlib.md5(archive.read_bytes()).hexdigest()
    with pytest.raises(DataFileError, match=rf"meta.*refusing to load {module}\.{name}"):
        prepare_public_dataset("c100", {"kind": "cifar100"}, tmp_path / "out", download_dir=tmp_path / "dl",
                               mirror=str(mirror), checksums=files, progress=False)
    assert not (tmp_path / "marker").exists()

