"""Downloads and public data set conversion, over real HTTP on 127.0.0.1 (tests/http_mirror.py).

No network beyond the loopback mirror and no mocks of urllib: the server injects the failures.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from http_mirror import FAKE_KINDS, build_archives, build_kind, serve
from stirflow import download
from stirflow.data import DataFileError, read_image_h5
from stirflow.download import ChecksumError, DownloadError, RemoteFile, fetch, resolve_url
from stirflow.public_datasets import (CIFAR10_C_CORRUPTIONS, PUBLIC_KINDS, SOURCES, files_for,
                                      prepare_public_dataset)

FAST = 0.01  # backoff base for tests: retries cost milliseconds
JPEG_TOLERANCE = 8  # solid colours survive JPEG (quality 95) + bicubic resizing within a few levels


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch):
    monkeypatch.setattr(download, "BACKOFF_BASE", FAST)


@pytest.fixture
def blob(tmp_path) -> tuple[Path, bytes, str]:
    """A served folder holding one 300 kB file; returns (folder, content, md5)."""
    root = tmp_path / "mirror"
    root.mkdir()
    data = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    (root / "blob.bin").write_bytes(data)
    return root, data, hashlib.md5(data).hexdigest()


def _leftovers(folder: Path, name: str) -> list[str]:
    """Files for ``name`` in ``folder`` other than the lock file."""
    return sorted(p.name for p in folder.glob(name + "*") if not p.name.endswith(".lock"))


# --------------------------------------------------------------------------- fetch


def test_fetch_downloads_verifies_and_never_again(tmp_path, blob, monkeypatch):
    root, data, md5 = blob
    dest = tmp_path / "dl" / "blob.bin"
    hashed = []  # files hashed from disk (the download itself is hashed while streaming)
    real_md5 = download.file_md5
    monkeypatch.setattr(download, "file_md5", lambda path, *a: hashed.append(path) or real_md5(path, *a))
    with serve(root) as mirror:
        assert fetch(f"{mirror}/blob.bin", dest, md5=md5, progress=False) == dest
        assert dest.read_bytes() == data
        assert json.loads((tmp_path / "dl" / "blob.bin.md5").read_text())["md5"] == md5
        assert _leftovers(dest.parent, "blob.bin") == ["blob.bin", "blob.bin.md5"]
        assert (mirror.count(), len(hashed)) == (1, 0)

        # Verified once: neither the network nor a re-hash (the sidecar vouches for size and mtime).
        fetch(f"{mirror}/blob.bin", dest, md5=md5, progress=False)
        assert (mirror.count(), len(hashed)) == (1, 0)

        # Without the sidecar the file is hashed once more, still without network access.
        (tmp_path / "dl" / "blob.bin.md5").unlink()
        fetch(f"{mirror}/blob.bin", dest, md5=md5, progress=False)
        assert (mirror.count(), len(hashed)) == (1, 1)

        # A damaged file (same size, new mtime) fails verification and is downloaded again.
        damaged = bytearray(data)
        damaged[1000] ^= 0xFF
        dest.write_bytes(bytes(damaged))
        os.utime(dest, ns=(time.time_ns() + 10**9,) * 2)
        fetch(f"{mirror}/blob.bin", dest, md5=md5, progress=False)
        assert (mirror.count(), len(hashed)) == (2, 2)
        assert dest.read_bytes() == data


def test_fetch_retries_503_then_succeeds(tmp_path, blob):
    root, data, md5 = blob
    with serve(root, fail_first={"blob.bin": 2}) as mirror:
        fetch(f"{mirror}/blob.bin", tmp_path / "blob.bin", md5=md5, retries=3, progress=False)
    assert [r.status for r in mirror.requests] == [503, 503, 200]
    assert (tmp_path / "blob.bin").read_bytes() == data


def test_fetch_resumes_a_truncated_response(tmp_path, blob):
    root, data, md5 = blob
    with serve(root, faults={"blob.bin": ["truncate"]}) as mirror:
        fetch(f"{mirror}/blob.bin", tmp_path / "blob.bin", md5=md5, progress=False)
    first, second = mirror.requests
    assert first.fault == "truncate" and second.status == 206
    assert second.range == f"bytes={len(data) // 2}-"  # continued where the cut happened
    assert (tmp_path / "blob.bin").read_bytes() == data


def test_fetch_restarts_when_the_server_ignores_range(tmp_path, blob):
    root, data, md5 = blob
    with serve(root, faults={"blob.bin": ["truncate", "truncate"]}, ranges=False) as mirror:
        fetch(f"{mirror}/blob.bin", tmp_path / "blob.bin", md5=md5, progress=False)
    assert [r.status for r in mirror.requests] == [200, 200, 200]
    assert (tmp_path / "blob.bin").read_bytes() == data


def test_fetch_retries_a_stalled_response(tmp_path, blob):
    root, data, md5 = blob
    with serve(root, faults={"blob.bin": ["stall"]}, stall_seconds=3) as mirror:
        fetch(f"{mirror}/blob.bin", tmp_path / "blob.bin", md5=md5, timeout=0.5, progress=False)
    assert mirror.count("blob.bin") == 2
    assert (tmp_path / "blob.bin").read_bytes() == data


def test_fetch_gives_up_and_leaves_nothing(tmp_path, blob):
    root, _, md5 = blob
    with serve(root, faults={"blob.bin": ["truncate", "500", "truncate"]}) as mirror:
        url = f"{mirror}/blob.bin"
        with pytest.raises(DownloadError, match="3 attempt") as err:
            fetch(url, tmp_path / "blob.bin", md5=md5, retries=2, progress=False)
    assert url in str(err.value)
    assert mirror.count() == 3
    assert _leftovers(tmp_path, "blob.bin") == []  # neither dest nor a partial file


def test_fetch_404_fails_at_once(tmp_path, blob):
    root, _, _ = blob
    with serve(root) as mirror:
        url = f"{mirror}/missing.tar.gz"
        with pytest.raises(DownloadError, match="404") as err:
            fetch(url, tmp_path / "missing.tar.gz", md5=None, retries=5, progress=False)
        assert mirror.count() == 1
    assert url in str(err.value) and not isinstance(err.value, ChecksumError)
    assert _leftovers(tmp_path, "missing.tar.gz") == []


def test_fetch_checksum_mismatch_removes_the_file(tmp_path, blob):
    root, _, md5 = blob
    wrong = "0" * 32
    with serve(root) as mirror:
        url = f"{mirror}/blob.bin"
        with pytest.raises(ChecksumError) as err:
            fetch(url, tmp_path / "blob.bin", md5=wrong, progress=False)
    message = str(err.value)
    assert all(part in message for part in ("blob.bin", url, wrong, md5))
    assert isinstance(err.value, DownloadError)
    assert _leftovers(tmp_path, "blob.bin") == []


def test_interrupted_download_leaves_no_file_at_dest(tmp_path, blob):
    """Kill a process in the middle of a download: dest must not exist; the next fetch works."""
    root, data, md5 = blob
    dest = tmp_path / "dl" / "blob.bin"
    code = ("import sys; from stirflow.download import fetch; "
            "fetch(sys.argv[1], sys.argv[2], md5=sys.argv[3], timeout=60, progress=False)")
    with serve(root, faults={"blob.bin": ["stall"]}, stall_seconds=30) as mirror:
        proc = subprocess.Popen([sys.executable, "-c", code, f"{mirror}/blob.bin", str(dest), md5],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            part = dest.with_name("blob.bin.part")
            deadline = time.monotonic() + 20
            while not (part.exists() and part.stat().st_size > 0) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert part.exists(), "the download never started"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert not dest.exists()
        fetch(f"{mirror}/blob.bin", dest, md5=md5, progress=False)
    assert dest.read_bytes() == data
    assert _leftovers(dest.parent, "blob.bin") == ["blob.bin", "blob.bin.md5"]  # the stale .part is gone


def test_concurrent_fetches_of_one_file_download_it_once(tmp_path, blob):
    """A second process waits for the first one's download instead of starting its own."""
    root, data, md5 = blob
    dest = tmp_path / "dl" / "blob.bin"
    code = ("import sys; from stirflow.download import fetch; "
            "fetch(sys.argv[1], sys.argv[2], md5=sys.argv[3], timeout=1, progress=False)")
    env = {**os.environ, "STIRFLOW_DOWNLOAD_BACKOFF": str(FAST)}
    with serve(root, faults={"blob.bin": ["stall"]}, stall_seconds=3) as mirror:
        args = [sys.executable, "-c", code, f"{mirror}/blob.bin", str(dest), md5]
        first = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
        part = dest.with_name("blob.bin.part")
        deadline = time.monotonic() + 20
        while not part.exists() and time.monotonic() < deadline:  # the first one holds the lock
            time.sleep(0.02)
        second = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
        outputs = [p.communicate(timeout=30)[1] for p in (first, second)]
        assert [first.returncode, second.returncode] == [0, 0], outputs
        assert mirror.count() == 2  # the stalled request and its retry, both by the first process
    # The second process either waited on the lock or found the verified file: it never downloaded.
    assert "downloaded" not in outputs[1], outputs[1]
    assert dest.read_bytes() == data


def test_resolve_url_and_file_mirrors(tmp_path, blob):
    root, data, md5 = blob
    entry = RemoteFile("blob.bin", "https://example.org/data/blob.bin?download=1", md5)
    assert resolve_url(entry, None) == entry.url
    assert resolve_url(entry, "http://10.0.0.1/mirror/") == "http://10.0.0.1/mirror/blob.bin"
    assert resolve_url({"filename": "a b.tar", "url": "x"}, "http://h/m") == "http://h/m/a%20b.tar"
    assert resolve_url(("blob.bin", "https://x/blob.bin"), "http://h") == "http://h/blob.bin"
    # A local folder as mirror becomes a file:// URL that fetch can read.
    url = resolve_url(entry, str(root))
    assert url.startswith("file://")
    assert fetch(url, tmp_path / "blob.bin", md5=md5, progress=False).read_bytes() == data


def test_fetch_without_md5_keeps_an_existing_file(tmp_path, blob):
    root, _, _ = blob
    (tmp_path / "blob.bin").write_bytes(b"placed by hand")
    with serve(root) as mirror:
        fetch(f"{mirror}/blob.bin", tmp_path / "blob.bin", md5=None, progress=False)
    assert mirror.count() == 0 and (tmp_path / "blob.bin").read_bytes() == b"placed by hand"


# --------------------------------------------------------------------------- public data sets


def _spec(kind: str, **options) -> dict:
    defaults = {"oxford_pets": {"image_size": 40}, "eurosat": {"test_fraction": 0.25, "seed": 3}}
    return {"kind": kind, **defaults.get(kind, {}), **options}


def _interior_error(images: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Per image, the largest deviation from its colour away from the 2-pixel border."""
    inner = images[:, 2:-2, 2:-2].astype(np.int64)
    return np.abs(inner - colours[:, None, None, :]).max(axis=(1, 2, 3))


@pytest.mark.parametrize("kind", FAKE_KINDS)
def test_prepare_converts_each_kind_and_never_downloads_twice(tmp_path, kind):
    fake = build_kind(tmp_path / "mirror", kind)
    with serve(tmp_path / "mirror") as mirror:
        paths = prepare_public_dataset(kind, _spec(kind), tmp_path / "out", download_dir=tmp_path / "dl",
                                       mirror=mirror, checksums=fake.files, progress=False)
        assert mirror.count() == len(fake.files) == len(files_for(kind))
        sets = {p.stem: read_image_h5(p) for p in paths}
        for image_set in sets.values():
            assert image_set.images.dtype == np.uint8 and image_set.images.ndim == 4
            assert image_set.labels.dtype == np.int64
            assert image_set.attrs["classes"] == fake.classes
            assert image_set.attrs["num_classes"] == len(fake.classes)
            assert image_set.attrs["name"] == kind
            first = SOURCES[kind][0].filename
            assert image_set.attrs["source"] == f"{mirror}/{first}"
            assert image_set.attrs["md5"] == fake.files[first]
        _CHECKS[kind](fake, sets)

        again = prepare_public_dataset(kind, _spec(kind), tmp_path / "out2", download_dir=tmp_path / "dl",
                                       mirror=mirror, checksums=fake.files, progress=False)
        assert mirror.count() == len(fake.files)  # the verified archives are reused
        assert [p.name for p in again] == [p.name for p in paths]


def _check_lossless(fake, sets) -> None:
    assert set(sets) == set(fake.splits)
    for key, expected in fake.splits.items():
        np.testing.assert_array_equal(sets[key].images, expected["images"])
        np.testing.assert_array_equal(sets[key].labels, expected["labels"])


def _check_cifar10_c(fake, sets) -> None:
    _check_lossless(fake, sets)
    assert len(sets) == 19 * 5
    fog = sets["fog_3"]
    assert (fog.attrs["corruption"], fog.attrs["severity"], fog.attrs["split"]) == ("fog", 3, "test")


def _check_pets(fake, sets) -> None:
    assert set(sets) == {"train", "test"}
    for split, image_set in sets.items():
        expected = fake.splits[split]
        assert image_set.images.shape == (len(expected["labels"]), 40, 40, 3)
        np.testing.assert_array_equal(image_set.labels, expected["labels"])
        # The bands beyond the central square have the inverse colour: any squashing instead of
        # cropping, or a lost grey/CMYK/RGBA conversion, shows up as a large error.
        assert _interior_error(image_set.images, expected["colours"]).max() <= JPEG_TOLERANCE


def _check_eurosat(fake, sets) -> None:
    colours, labels = fake.splits["all"]["colours"], fake.splits["all"]["labels"]
    seen = []
    for split, image_set in sets.items():
        assert image_set.images.shape[1:] == (64, 64, 3)
        assert image_set.attrs["split_seed"] == 3 and image_set.attrs["test_fraction"] == 0.25
        mean = image_set.images.reshape(len(image_set), -1, 3).mean(axis=1)
        match = np.abs(mean[:, None, :] - colours[None]).max(axis=2).argmin(axis=1)
        assert _interior_error(image_set.images, colours[match]).max() <= JPEG_TOLERANCE
        np.testing.assert_array_equal(image_set.labels, labels[match])
        seen.extend(match.tolist())
    assert sorted(seen) == list(range(len(colours)))  # every image exactly once
    # Stratified: 4 images per class → 1 test and 3 train images of every class.
    assert np.bincount(sets["test"].labels, minlength=10).tolist() == [1] * 10
    assert np.bincount(sets["train"].labels, minlength=10).tolist() == [3] * 10


_CHECKS = {"cifar10": _check_lossless, "cifar100": _check_lossless, "oxford_pets": _check_pets,
           "eurosat": _check_eurosat, "cifar10_c": _check_cifar10_c}


def test_eurosat_split_is_seeded(tmp_path):
    fake = build_kind(tmp_path / "mirror", "eurosat")
    with serve(tmp_path / "mirror") as mirror:
        def test_labels_and_pixels(out: str, seed: int) -> bytes:
            paths = prepare_public_dataset("eurosat", _spec("eurosat", seed=seed), tmp_path / out,
                                           download_dir=tmp_path / "dl", mirror=mirror, checksums=fake.files,
                                           progress=False)
            return read_image_h5(paths[1]).images.tobytes()
        assert test_labels_and_pixels("a", 1) == test_labels_and_pixels("b", 1)
        assert test_labels_and_pixels("a", 1) != test_labels_and_pixels("c", 2)


def test_shared_download_dir_fetches_each_archive_once(tmp_path):
    files = build_archives(tmp_path / "mirror", ["cifar10", "cifar10_c"])
    with serve(tmp_path / "mirror") as mirror:
        for name, spec in [("cifar10", {"kind": "cifar10"}), ("cifar10_small", {"kind": "cifar10", "max_train": 7}),
                           ("cifar10_c", {"kind": "cifar10_c", "corruptions": ["fog"]})]:
            prepare_public_dataset(name, spec, tmp_path / "data" / name, download_dir=tmp_path / "dl",
                                   mirror=mirror, checksums=files, progress=False)
        assert mirror.count("cifar-10-python.tar.gz") == 1 and mirror.count("CIFAR-10-C.tar") == 1


def test_caps_and_cifar10_c_selection(tmp_path):
    fake10 = build_kind(tmp_path / "mirror", "cifar10")
    fake_c = build_kind(tmp_path / "mirror", "cifar10_c")
    files = {**fake10.files, **fake_c.files}
    with serve(tmp_path / "mirror") as mirror:
        common = dict(download_dir=tmp_path / "dl", mirror=mirror, checksums=files, progress=False)
        train, test = prepare_public_dataset("c10", {"kind": "cifar10", "max_train": 7, "max_test": 3, "seed": 1},
                                             tmp_path / "c10", **common)
        paths = prepare_public_dataset("c10c", {"kind": "cifar10_c", "corruptions": ["fog", "snow"],
                                                "severities": [1, 5], "max_test": 2, "image_size": 48},
                                       tmp_path / "c10c", **common)
    small = read_image_h5(train)
    assert len(small) == 7 and len(read_image_h5(test)) == 3
    full = fake10.splits["train"]["images"]
    rows = [int(np.flatnonzero((full == img).all(axis=(1, 2, 3)))[0]) for img in small.images]
    assert rows == sorted(rows)  # a subset, in the original order
    assert sorted(p.name for p in paths) == ["fog_1.h5", "fog_5.h5", "snow_1.h5", "snow_5.h5"]
    fog5 = read_image_h5(tmp_path / "c10c" / "fog_5.h5")
    assert fog5.images.shape == (2, 48, 48, 3)  # resized on request
    index = np.sort(np.random.default_rng(0).permutation(4)[:2])
    np.testing.assert_array_equal(fog5.labels, fake_c.splits["fog_5"]["labels"][index])


def test_prepare_retries_transient_failures(tmp_path):
    files = build_archives(tmp_path / "mirror", ["oxford_pets"])
    faults = {"images.tar.gz": ["503", "truncate"], "annotations.tar.gz": ["truncate"]}
    with serve(tmp_path / "mirror", faults=faults) as mirror:
        paths = prepare_public_dataset("pets", _spec("oxford_pets"), tmp_path / "out", download_dir=tmp_path / "dl",
                                       mirror=mirror, checksums=files, progress=False)
    assert mirror.count("images.tar.gz") == 3 and mirror.count("annotations.tar.gz") == 2
    assert [p.name for p in paths] == ["train.h5", "test.h5"]


def test_prepare_404_names_the_url(tmp_path):
    (tmp_path / "mirror").mkdir()
    with serve(tmp_path / "mirror") as mirror:
        with pytest.raises(DownloadError, match="404") as err:
            prepare_public_dataset("c10", {"kind": "cifar10"}, tmp_path / "out", download_dir=tmp_path / "dl",
                                   mirror=mirror, progress=False)
        assert mirror.count() == 1
    assert f"{mirror}/cifar-10-python.tar.gz" in str(err.value)


def test_corrupted_archive_raises_checksum_error(tmp_path):
    files = build_archives(tmp_path / "mirror", ["cifar100"])
    archive = tmp_path / "mirror" / "cifar-100-python.tar.gz"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2: len(data) // 2 + 8] = bytes(b ^ 0xFF for b in data[len(data) // 2: len(data) // 2 + 8])
    archive.write_bytes(bytes(data))
    with serve(tmp_path / "mirror") as mirror:
        with pytest.raises(ChecksumError) as err:
            prepare_public_dataset("c100", {"kind": "cifar100"}, tmp_path / "out", download_dir=tmp_path / "dl",
                                   mirror=mirror, checksums=files, progress=False)
    message = str(err.value)
    assert "cifar-100-python.tar.gz" in message and f"{mirror}/cifar-100-python.tar.gz" in message
    assert files["cifar-100-python.tar.gz"] in message and hashlib.md5(data).hexdigest() in message
    assert _leftovers(tmp_path / "dl", "cifar-100-python.tar.gz") == []
    assert not (tmp_path / "out").exists()


def _serve_bytes_as(tmp_path: Path, kind: str, filename: str, data: bytes, spec: dict | None = None):
    """Run prepare for ``kind`` with ``filename`` replaced by ``data`` (its md5 accepted)."""
    files = build_archives(tmp_path / "mirror", [kind])
    (tmp_path / "mirror" / filename).write_bytes(data)
    files[filename] = hashlib.md5(data).hexdigest()
    with serve(tmp_path / "mirror") as mirror:
        return prepare_public_dataset(kind, spec or {"kind": kind}, tmp_path / "out", download_dir=tmp_path / "dl",
                                      mirror=mirror, checksums=files, progress=False)


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_malformed_archives_are_named(tmp_path):
    with pytest.raises(DataFileError, match=r"EuroSAT\.zip.*not a readable zip"):
        _serve_bytes_as(tmp_path / "a", "eurosat", "EuroSAT.zip", b"this is not a zip file" * 10)
    with pytest.raises(DataFileError, match=r"cifar-10-python\.tar\.gz.*batches\.meta is missing"):
        _serve_bytes_as(tmp_path / "b", "cifar10", "cifar-10-python.tar.gz",
                        _tar_gz({"cifar-10-batches-py/readme.html": b"x"}))
    evil = b"cos\nsystem\n(S'echo pwned'\ntR."  # a pickle that would run a shell command
    with pytest.raises(DataFileError, match=r"meta.*refusing to load os\.system"):
        _serve_bytes_as(tmp_path / "c", "cifar100", "cifar-100-python.tar.gz",
                        _tar_gz({"cifar-100-python/meta": evil}))
    with pytest.raises(DataFileError, match=r"annotations\.tar\.gz: annotations/trainval\.txt line 1"):
        _serve_bytes_as(tmp_path / "d", "oxford_pets", "annotations.tar.gz",
                        _tar_gz({"annotations/trainval.txt": b"Abyssinian_100 cat\n",
                                 "annotations/test.txt": b"Abyssinian_102 1 1 1\n"}), _spec("oxford_pets"))
    with pytest.raises(DataFileError, match=r"CIFAR-10-C\.tar.*labels\.npy"):
        _serve_bytes_as(tmp_path / "e", "cifar10_c", "CIFAR-10-C.tar", _tar_gz({"CIFAR-10-C/fog.npy": b"x"}))


def test_unknown_kind_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="imagenet") as err:
        prepare_public_dataset("x", {"kind": "imagenet"}, tmp_path, download_dir=tmp_path)
    assert all(kind in str(err.value) for kind in PUBLIC_KINDS)
    with pytest.raises(ValueError, match="known kinds"):
        files_for("imagenet")


def test_sources_table():
    assert PUBLIC_KINDS == ("cifar10", "cifar100", "oxford_pets", "eurosat", "cifar10_c")
    assert set(FAKE_KINDS) == set(PUBLIC_KINDS)
    for kind, entries in SOURCES.items():
        for entry in entries:
            assert entry.url.startswith("https://") and entry.filename in entry.url
            assert len(entry.md5) == 32 and int(entry.md5, 16) >= 0
    assert files_for("oxford_pets") == ["images.tar.gz", "annotations.tar.gz"]
    assert files_for("cifar10_c") == ["CIFAR-10-C.tar"]
    assert SOURCES["cifar10_c"][0].md5 == "56bf5dcef84df0e2308c6dcbcbbd8499"
    assert len(CIFAR10_C_CORRUPTIONS) == 19


def test_sources_table_agrees_with_torchvision(tmp_path, monkeypatch):
    """File name, URL and md5 of every data set torchvision knows are torchvision's own constants
    (EuroSAT keeps them inside its download method: recorded by running it with the fetch replaced)."""
    from torchvision import datasets
    from torchvision.datasets import eurosat

    calls = []
    monkeypatch.setattr(eurosat, "download_and_extract_archive", lambda url, **kw: calls.append((url, kw["md5"])))
    euro = datasets.EuroSAT.__new__(datasets.EuroSAT)
    euro._base_folder, euro._data_folder = str(tmp_path / "eurosat"), str(tmp_path / "eurosat" / "2750")
    euro.download()

    def entries(pairs):
        return [(url.rsplit("/", 1)[-1], url, md5) for url, md5 in pairs]

    torchvision_table = {
        "cifar10": [(datasets.CIFAR10.filename, datasets.CIFAR10.url, datasets.CIFAR10.tgz_md5)],
        "cifar100": [(datasets.CIFAR100.filename, datasets.CIFAR100.url, datasets.CIFAR100.tgz_md5)],
        "oxford_pets": entries(datasets.OxfordIIITPet._RESOURCES),
        "eurosat": entries(calls),
    }
    assert len(calls) == 1
    assert {kind: [(e.filename, e.url, e.md5) for e in SOURCES[kind]] for kind in torchvision_table} == torchvision_table
