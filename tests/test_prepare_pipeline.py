"""The pipeline's prepare stage against a local HTTP mirror serving archives in the real formats.

Snakemake runs ``prepare_dataset`` for CIFAR-10, CIFAR-100, Oxford-IIIT Pet and EuroSAT,
``prepare_corruption_set`` for CIFAR-10-C, and ``corrupt_dataset`` for CIFAR-10 (which takes its
corrupted images from CIFAR-10-C), with ``download.mirror`` set to the server on 127.0.0.1 and
``download.checksums`` to the md5s of the archives built here. A damaged archive fails its job
with the checksum error, naming the file.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from stirflow.data import read_image_h5, select_indices
from stirflow.robustness import load_corrupted_set

from conftest import jobs_by_rule, snakemake, write_config
from http_mirror import CIFAR10_C_NAMES, _npy_bytes, _write_tar, build_kind, serve

KINDS = ("cifar10", "cifar100", "oxford_pets", "eurosat")
CORRUPTIONS, SEVERITIES = ["fog", "contrast"], [1, 5]
ENV = {"STIRFLOW_DOWNLOAD_BACKOFF": "0"}


def _cifar10_c_like(root, test_labels, rng):
    """CIFAR-10-C.tar in its real layout, lined up with the fake CIFAR-10 test set (like the real one)."""
    n = len(test_labels)
    members = {"CIFAR-10-C/labels.npy": _npy_bytes(np.tile(test_labels.astype(np.uint8), 5))}
    arrays = {}
    for name in CIFAR10_C_NAMES[:3] + ["fog", "contrast"]:
        arrays[name] = rng.integers(0, 256, size=(5 * n, 32, 32, 3), dtype=np.uint8)
        members[f"CIFAR-10-C/{name}.npy"] = _npy_bytes(arrays[name])
    md5 = _write_tar(root / "CIFAR-10-C.tar", members, gz=False, directories=["CIFAR-10-C"])
    return {"CIFAR-10-C.tar": md5}, arrays


def _config(tmp_path, mirror, checksums):
    return write_config(
        tmp_path / "prepare.yaml",
        datasets={"cifar10": {"kind": "cifar10", "corrupted": "cifar10_c"},
                  "cifar100": {"kind": "cifar100"},
                  "oxford_pets": {"kind": "oxford_pets", "image_size": 40},
                  "eurosat": {"kind": "eurosat", "test_fraction": 0.25, "seed": 3},
                  "cifar10_c": {"kind": "cifar10_c", "corruptions": CORRUPTIONS, "severities": SEVERITIES}},
        download={"mirror": str(mirror), "checksums": checksums, "retries": 1, "timeout": 20},
        robustness={"corruptions": CORRUPTIONS, "severities": SEVERITIES, "n_images": 5, "seed": 0},
    )


def _interior_error(images, colours):
    inner = images[:, 2:-2, 2:-2].astype(np.int64)
    return np.abs(inner - np.asarray(colours)[:, None, None, :]).max(axis=(1, 2, 3))


def test_prepare_rules_download_and_convert_every_kind(tmp_path):
    root = tmp_path / "mirror"
    fakes = {kind: build_kind(root, kind) for kind in KINDS}
    checksums = {name: md5 for fake in fakes.values() for name, md5 in fake.files.items()}
    c_files, c_arrays = _cifar10_c_like(root, fakes["cifar10"].splits["test"]["labels"], np.random.default_rng(1))
    checksums.update(c_files)
    work = tmp_path / "work"
    targets = [f"data/{kind}/{split}.h5" for kind in KINDS for split in ("train", "test")]
    targets += ["data/cifar10_c/index.json", "results/corrupted/cifar10.h5"]
    with serve(root) as mirror:
        config = _config(tmp_path, mirror, checksums)
        proc = snakemake(work, "--cores", "2", *targets, configfile=config, env=ENV)
        assert sorted(r.filename for r in mirror.requests) == sorted(checksums)  # each archive once
        assert all(r.status == 200 for r in mirror.requests)
    assert jobs_by_rule(proc.stdout + proc.stderr) == {"prepare_dataset": 4, "prepare_corruption_set": 1,
                                                        "corrupt_dataset": 1}
    data = work / "data"

    for kind in ("cifar10", "cifar100"):  # lossless: exactly the archive's pixels and labels
        for split in ("train", "test"):
            image_set = read_image_h5(data / kind / f"{split}.h5")
            np.testing.assert_array_equal(image_set.images, fakes[kind].splits[split]["images"])
            np.testing.assert_array_equal(image_set.labels, fakes[kind].splits[split]["labels"])
            assert image_set.attrs["classes"] == fakes[kind].classes
            assert image_set.attrs["source"].startswith(f"{mirror}/")
            assert image_set.attrs["md5"] == next(iter(fakes[kind].files.values()))

    for split in ("train", "test"):  # JPEGs of assorted sizes and modes, short side to 40, centre crop
        pets = read_image_h5(data / "oxford_pets" / f"{split}.h5")
        expected = fakes["oxford_pets"].splits[split]
        assert pets.images.shape == (len(expected["labels"]), 40, 40, 3)
        np.testing.assert_array_equal(pets.labels, expected["labels"])
        assert _interior_error(pets.images, expected["colours"]).max() <= 8

    train, test = (read_image_h5(data / "eurosat" / f"{s}.h5") for s in ("train", "test"))
    assert train.images.shape[1:] == (64, 64, 3) and len(train) + len(test) == 40
    assert np.bincount(test.labels, minlength=10).tolist() == [1] * 10  # seeded, stratified 25 %
    assert test.attrs["split_seed"] == 3 and test.attrs["test_fraction"] == 0.25

    # CIFAR-10-C: only the configured corruptions × severities, as <corruption>_<severity>.h5
    index = json.loads((data / "cifar10_c" / "index.json").read_text())
    assert index == {f"{c}_{s}": f"{c}_{s}.h5" for c in CORRUPTIONS for s in SEVERITIES}
    n = len(fakes["cifar10"].splits["test"]["labels"])
    for c in CORRUPTIONS:
        for s in SEVERITIES:
            image_set = read_image_h5(data / "cifar10_c" / index[f"{c}_{s}"])
            np.testing.assert_array_equal(image_set.images, c_arrays[c][(s - 1) * n: s * n])
            assert (image_set.attrs["corruption"], image_set.attrs["severity"]) == (c, s)
    assert not list((data / "cifar10_c").glob("gaussian_noise_*"))

    # CIFAR-10's corrupted test set: the same 5 seeded test images, taken from CIFAR-10-C
    cs = load_corrupted_set(work / "results" / "corrupted" / "cifar10.h5")
    chosen = select_indices(n, 5, 0)
    np.testing.assert_array_equal(cs.clean, fakes["cifar10"].splits["test"]["images"][chosen])
    np.testing.assert_array_equal(cs.labels, fakes["cifar10"].splits["test"]["labels"][chosen])
    assert cs.corruptions == CORRUPTIONS and cs.severities == SEVERITIES
    for k, c in enumerate(CORRUPTIONS):
        for j, s in enumerate(SEVERITIES):
            np.testing.assert_array_equal(cs.corrupted[k, j], c_arrays[c][(s - 1) * n + chosen])


def test_corrupted_archive_fails_with_the_checksum_error(tmp_path):
    root = tmp_path / "mirror"
    fake = build_kind(root, "cifar100")
    archive = root / "cifar-100-python.tar.gz"
    data = bytearray(archive.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])  # damaged in transit
    archive.write_bytes(bytes(data))
    work = tmp_path / "work"
    with serve(root) as mirror:
        config = _config(tmp_path, mirror, fake.files)
        proc = snakemake(work, "--cores", "1", "data/cifar100/train.h5", configfile=config, env=ENV, check=False)
        assert mirror.count("cifar-100-python.tar.gz") == 1  # a checksum error is not retried
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "ChecksumError" in output and "cifar-100-python.tar.gz" in output, output[-3000:]
    log = (work / "results" / "logs" / "prepare_dataset" / "cifar100.log").read_text()
    assert "ChecksumError" in log and "md5 mismatch" in log
    assert f"{mirror}/cifar-100-python.tar.gz" in log
    assert fake.files["cifar-100-python.tar.gz"] in log and hashlib.md5(data).hexdigest() in log
    # nothing half-made is left: no output, no partial or unverified archive
    assert not (work / "data" / "cifar100" / "train.h5").exists()
    assert not (work / "data" / "cifar100" / "test.h5").exists()
    leftovers = [p.name for p in (work / "data" / "downloads").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []
