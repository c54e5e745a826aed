"""Small fake public data sets in their real archive formats, and a local HTTP mirror serving them.

No pytest dependency, so any test (or a script) can use it::

    files = build_archives(root, ["cifar10", "cifar10_c"])     # file name -> md5
    with serve(root, fail_first={"cifar-10-python.tar.gz": 2}) as mirror:
        prepare_public_dataset(..., mirror=mirror, checksums=files)
        mirror.count("cifar-10-python.tar.gz")                 # requests the server answered

The archives have the real file names, member names and internal layout (CIFAR pickles with
bytes keys and channel-major rows, the Pets annotation lists and JPEGs of assorted sizes and
modes, the EuroSAT ``2750/<Class>/<Class>_<i>.jpg`` zip, CIFAR-10-C's stacked ``.npy`` arrays),
only with a handful of images. They are byte-for-byte deterministic (fixed tar/zip/gzip times),
so their md5s are stable. :func:`build_kind` also returns what a converter must produce from them.
"""

from __future__ import annotations

import contextlib
import email.utils
import gzip
import hashlib
import io
import pickle
import tarfile
import threading
import time
import urllib.parse
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

__all__ = ["FAKE_KINDS", "FakeDataset", "build_kind", "build_archives", "Mirror", "MirrorRequest", "serve"]

FAKE_KINDS = ("cifar10", "cifar100", "oxford_pets", "eurosat", "cifar10_c")

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_C_NAMES = [
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
    "speckle_noise", "gaussian_blur", "spatter", "saturate",
]
EUROSAT_CLASSES = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
                   "PermanentCrop", "Residential", "River", "SeaLake"]
# (breed, class id, species 1=cat 2=dog, breed id within species): the first six real Pets classes.
PET_BREEDS = [("Abyssinian", 1, 1, 1), ("american_bulldog", 2, 2, 1), ("american_pit_bull_terrier", 3, 2, 2),
              ("basset_hound", 4, 2, 3), ("beagle", 5, 2, 4), ("Bengal", 6, 1, 2)]

_MTIME = 1_300_000_000  # fixed member times: identical bytes, identical md5, on every build
_ZIP_TIME = (2017, 8, 1, 12, 0, 0)


@dataclass
class FakeDataset:
    """What a builder wrote, and what converting it must give.

    ``files``: file name → md5. ``splits``: per output (``train``, ``test``, or
    ``<corruption>_<severity>``) a dict with ``labels`` and either ``images`` (lossless sources,
    exact output) or ``colours`` ((N, 3) colour of the image's central square; JPEG sources).
    For EuroSAT the split is the converter's (seeded), so ``splits`` has one ``all`` entry.
    """

    kind: str
    files: dict[str, str]
    classes: list[str]
    splits: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


# --------------------------------------------------------------------------- builders


def build_archives(root: Path, kinds: Iterable[str] = FAKE_KINDS, *, seed: int = 0) -> dict[str, str]:
    """Write the fake archives of ``kinds`` into ``root``; return file name → md5."""
    files: dict[str, str] = {}
    for kind in kinds:
        files.update(build_kind(root, kind, seed=seed).files)
    return files


def build_kind(root: Path, kind: str, *, seed: int = 0) -> FakeDataset:
    """Write one kind's fake archive(s) into ``root`` and describe their content."""
    builders = {"cifar10": _build_cifar10, "cifar100": _build_cifar100, "oxford_pets": _build_pets,
                "eurosat": _build_eurosat, "cifar10_c": _build_cifar10_c}
    if kind not in builders:
        raise ValueError(f"no fake builder for {kind!r}; known: {list(builders)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return builders[kind](root, np.random.default_rng(seed))


def _build_cifar10(root: Path, rng: np.random.Generator) -> FakeDataset:
    folder, per_batch, n_test = "cifar-10-batches-py", 6, 8
    members: dict[str, bytes] = {}
    train_images, train_labels = [], []
    for b in range(1, 6):
        images, labels = _random_images(rng, per_batch, 10)
        members[f"{folder}/data_batch_{b}"] = _cifar_pickle(images, {b"labels": labels.tolist()},
                                                            f"training batch {b} of 5")
        train_images.append(images)
        train_labels.append(labels)
    test_images, test_labels = _random_images(rng, n_test, 10)
    members[f"{folder}/test_batch"] = _cifar_pickle(test_images, {b"labels": test_labels.tolist()},
                                                    "testing batch 1 of 1")
    members[f"{folder}/batches.meta"] = pickle.dumps(
        {b"num_cases_per_batch": per_batch, b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072},
        protocol=2)
    members[f"{folder}/readme.html"] = b"<html>fake CIFAR-10 for tests</html>\n"
    name = "cifar-10-python.tar.gz"
    md5 = _write_tar(root / name, members, gz=True, directories=[folder])
    return FakeDataset("cifar10", {name: md5}, list(CIFAR10_NAMES), {
        "train": {"images": np.concatenate(train_images), "labels": np.concatenate(train_labels)},
        "test": {"images": test_images, "labels": test_labels}})


def _build_cifar100(root: Path, rng: np.random.Generator) -> FakeDataset:
    folder = "cifar-100-python"
    fine = [f"fine_{i:02d}" for i in range(100)]
    coarse = [f"coarse_{i:02d}" for i in range(20)]
    members, splits = {}, {}
    for split, n in (("train", 20), ("test", 10)):
        images, labels = _random_images(rng, n, 100)
        extra = {b"fine_labels": labels.tolist(), b"coarse_labels": (labels // 5).tolist()}
        members[f"{folder}/{split}"] = _cifar_pickle(images, extra, split)
        splits[split] = {"images": images, "labels": labels}
    members[f"{folder}/meta"] = pickle.dumps(
        {b"fine_label_names": [n.encode() for n in fine], b"coarse_label_names": [n.encode() for n in coarse]},
        protocol=2)
    members[f"{folder}/file.txt~"] = b"fake\n"
    name = "cifar-100-python.tar.gz"
    md5 = _write_tar(root / name, members, gz=True, directories=[folder])
    return FakeDataset("cifar100", {name: md5}, fine, splits)


def _random_images(rng: np.random.Generator, n: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    return images, rng.integers(0, num_classes, size=n).astype(np.int64)


def _cifar_pickle(images: np.ndarray, extra: dict, batch_label: str) -> bytes:
    """A batch like the real ones: bytes keys, rows of 1024 R, then G, then B values."""
    data = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))
    batch = {b"batch_label": batch_label.encode(), b"data": data,
             b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(images))], **extra}
    # The real batches were pickled by NumPy 1 (module numpy.core); NumPy 2 writes numpy._core.
    # Protocol-2 GLOBAL opcodes are newline-terminated text, so the name can be swapped in place.
    return pickle.dumps(batch, protocol=2).replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _build_pets(root: Path, rng: np.random.Generator) -> FakeDataset:
    """Three images per breed (two trainval, one test) in assorted sizes and modes.

    Each image has a solid colour in its central square and a contrasting colour in the bands
    beyond it along the long side: short-side resizing plus a centre crop keeps only the colour.
    """
    sizes = [(500, 375), (375, 500), (300, 100), (250, 250), (120, 90), (90, 160)]
    modes = ["RGB", "L", "RGB", "CMYK", "RGB", "RGBA"]
    images_members: dict[str, bytes] = {}
    rows = {"train": [], "test": []}
    expected = {"train": ([], []), "test": ([], [])}
    k = 0
    for breed, class_id, species, breed_id in PET_BREEDS:
        for j in range(3):
            image_id = f"{breed}_{100 + j}"
            size, mode = sizes[k % len(sizes)], modes[k % len(modes)]
            colour = _distinct_colour(k) if mode != "L" else (_distinct_colour(k)[0],) * 3
            images_members[f"images/{image_id}.jpg"] = _pet_image(size, colour, mode)
            split = "train" if j < 2 else "test"
            rows[split].append(f"{image_id} {class_id} {species} {breed_id}")
            expected[split][0].append(colour)
            expected[split][1].append(class_id - 1)
            k += 1
    # Real archive quirks: an image listed nowhere and stray .mat files in images/.
    images_members["images/Abyssinian_999.jpg"] = _pet_image((200, 150), (1, 2, 3), "RGB")
    images_members["images/Abyssinian_101.mat"] = b"MATLAB 5.0 MAT-file, fake\n"
    annotation_members = {
        "annotations/README": b"Oxford-IIIT Pet annotations (fake for tests)\n",
        "annotations/list.txt": ("#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n"
                                 + "\n".join(rows["train"] + rows["test"]) + "\n").encode(),
        "annotations/trainval.txt": ("\n".join(rows["train"]) + "\n").encode(),
        "annotations/test.txt": ("\n".join(rows["test"]) + "\n").encode(),
        "annotations/trimaps/Abyssinian_100.png": _png_bytes(Image.new("L", (10, 10), 2)),
        "annotations/xmls/Abyssinian_100.xml": b"<annotation></annotation>\n",
    }
    files = {"images.tar.gz": _write_tar(root / "images.tar.gz", images_members, gz=True, directories=["images"]),
             "annotations.tar.gz": _write_tar(root / "annotations.tar.gz", annotation_members, gz=True,
                                              directories=["annotations", "annotations/trimaps",
                                                           "annotations/xmls"])}
    classes = [" ".join(p.title() for p in breed.split("_")) for breed, *_ in PET_BREEDS]
    splits = {split: {"colours": np.array(cols, np.int64), "labels": np.array(labels, np.int64)}
              for split, (cols, labels) in expected.items()}
    return FakeDataset("oxford_pets", files, classes, splits)


def _pet_image(size: tuple[int, int], colour: tuple[int, int, int], mode: str) -> bytes:
    w, h = size
    img = Image.new("RGB", size, tuple(255 - c for c in colour))  # the bands a crop must remove
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    img.paste(colour, (left, top, left + s, top + s))
    if mode == "RGBA":  # some Pets ".jpg" files are really PNGs; the alpha is dropped on conversion
        rgba = img.convert("RGBA")
        rgba.putalpha(200)
        return _png_bytes(rgba)
    buf = io.BytesIO()
    img.convert(mode).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _build_eurosat(root: Path, rng: np.random.Generator) -> FakeDataset:
    """Four 64×64 JPEGs per class in the real ``2750/<Class>/<Class>_<i>.jpg`` layout."""
    buf = io.BytesIO()
    colours, labels = [], []
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(zipfile.ZipInfo("2750/", _ZIP_TIME), b"")
        for label, cls in enumerate(EUROSAT_CLASSES):
            zf.writestr(zipfile.ZipInfo(f"2750/{cls}/", _ZIP_TIME), b"")
            for i in range(1, 5):
                colour = _distinct_colour(len(colours))
                img = Image.new("RGB", (64, 64), colour)
                jpeg = io.BytesIO()
                img.save(jpeg, format="JPEG", quality=95)
                info = zipfile.ZipInfo(f"2750/{cls}/{cls}_{i}.jpg", _ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, jpeg.getvalue())
                colours.append(colour)
                labels.append(label)
    md5 = _write_bytes(root / "EuroSAT.zip", buf.getvalue())
    return FakeDataset("eurosat", {"EuroSAT.zip": md5}, list(EUROSAT_CLASSES),
                       {"all": {"colours": np.array(colours, np.int64), "labels": np.array(labels, np.int64)}})


def _build_cifar10_c(root: Path, rng: np.random.Generator, n: int = 4) -> FakeDataset:
    """Every corruption as (5 n, 32, 32, 3) uint8, severities 1..5 stacked; labels.npy (5 n,)."""
    base_labels = rng.integers(0, 10, size=n).astype(np.uint8)
    members = {"CIFAR-10-C/labels.npy": _npy_bytes(np.tile(base_labels, 5))}
    splits = {}
    for corruption in CIFAR10_C_NAMES:
        stacked = rng.integers(0, 256, size=(5 * n, 32, 32, 3), dtype=np.uint8)
        members[f"CIFAR-10-C/{corruption}.npy"] = _npy_bytes(stacked)
        for severity in range(1, 6):
            splits[f"{corruption}_{severity}"] = {"images": stacked[(severity - 1) * n: severity * n],
                                                  "labels": base_labels.astype(np.int64)}
    md5 = _write_tar(root / "CIFAR-10-C.tar", members, gz=False, directories=["CIFAR-10-C"])
    return FakeDataset("cifar10_c", {"CIFAR-10-C.tar": md5}, list(CIFAR10_NAMES), splits)


def _distinct_colour(k: int) -> tuple[int, int, int]:
    """Colours at least 50 apart in some channel for k < 125 (told apart after JPEG)."""
    levels = (25, 75, 125, 175, 225)
    return levels[k % 5], levels[(k // 5) % 5], levels[(k // 25) % 5]


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _write_tar(path: Path, members: Mapping[str, bytes], *, gz: bool, directories: Sequence[str] = ()) -> str:
    """A tar (optionally gzipped) with fixed times and owners, so the bytes are reproducible."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for directory in directories:
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, _MTIME
            tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, _MTIME
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    if gz:
        out = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=_MTIME) as f:
            f.write(data)
        data = out.getvalue()
    return _write_bytes(path, data)


def _write_bytes(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return hashlib.md5(data).hexdigest()


# --------------------------------------------------------------------------- HTTP mirror


@dataclass(frozen=True)
class MirrorRequest:
    """One request the mirror answered: file name, Range header, status, injected fault."""

    filename: str
    range: str | None
    status: int
    fault: str | None


class Mirror(str):
    """The mirror's base URL (a ``str``, usable wherever a URL is), plus its request log."""

    requests: list[MirrorRequest]

    def __new__(cls, url: str) -> "Mirror":
        self = super().__new__(cls, url)
        self.requests = []
        self._lock = threading.Lock()
        return self

    @property
    def url(self) -> str:
        return str(self)

    def count(self, filename: str | None = None) -> int:
        """How many requests were answered (for ``filename``, or in all)."""
        with self._lock:
            return sum(1 for r in self.requests if filename is None or r.filename == filename)

    def _log(self, request: MirrorRequest) -> None:
        with self._lock:
            self.requests.append(request)


class _MirrorServer(ThreadingHTTPServer):
    daemon_threads = True  # a stalled handler must not keep the test process alive

    def __init__(self, root: Path, faults: dict[str, list[str]], stall_seconds: float, ranges: bool):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root.resolve()
        self.faults = faults
        self.stall_seconds = stall_seconds
        self.ranges = ranges
        self.mirror = Mirror(f"http://127.0.0.1:{self.server_address[1]}")
        self.fault_lock = threading.Lock()

    def next_fault(self, filename: str) -> str | None:
        with self.fault_lock:
            queue = self.faults.get(filename)
            return queue.pop(0) if queue else None


class _Handler(BaseHTTPRequestHandler):
    """GET/HEAD of files under the root, with Range support and injected faults."""

    server: _MirrorServer

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        filename = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        path = (self.server.root / filename).resolve()
        range_header = self.headers.get("Range")
        if not path.is_file() or self.server.root not in path.parents:
            return self._error(filename, range_header, 404)
        fault = self.server.next_fault(filename)
        if fault is not None and fault.isdigit():
            return self._error(filename, range_header, int(fault), fault)
        data = path.read_bytes()
        status, start = 200, 0
        if range_header and self.server.ranges and range_header.startswith("bytes=") and range_header.endswith("-"):
            start = int(range_header[len("bytes="):-1])
            if start >= len(data):
                return self._error(filename, range_header, 416, fault)
            status = 206
        payload = data[start:]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Accept-Ranges", "bytes" if self.server.ranges else "none")
        self.send_header("ETag", '"' + hashlib.md5(data).hexdigest() + '"')
        self.send_header("Last-Modified", email.utils.formatdate(path.stat().st_mtime, usegmt=True))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        self.server.mirror._log(MirrorRequest(filename, range_header, status, fault))
        if not body:
            return
        if fault in ("truncate", "stall"):
            # Half the body, then close the connection (truncate) or go silent (stall).
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            if fault == "stall":
                time.sleep(self.server.stall_seconds)
            self.close_connection = True
            return
        self.wfile.write(payload)

    def _error(self, filename: str, range_header: str | None, status: int, fault: str | None = None) -> None:
        self.server.mirror._log(MirrorRequest(filename, range_header, status, fault))
        self.send_error(status)


@contextlib.contextmanager
def serve(root: Path, fail_first: Mapping[str, int] | None = None, *,
          faults: Mapping[str, Sequence[str]] | None = None, stall_seconds: float = 2.0,
          ranges: bool = True) -> Iterator[Mirror]:
    """Serve ``root`` over HTTP on 127.0.0.1 (ephemeral port) in a thread; yield the base URL.

    Args:
        root: the folder whose files are served as ``<base url>/<file name>``.
        fail_first: file name → K: the first K requests for that file answer 503.
        faults: file name → the faults of the next requests, in order, after the ``fail_first``
            ones: an HTTP status (``"503"``, ``"500"``, ``"404"``...), ``"truncate"`` (headers
            with the full Content-Length, half the body, then the connection is closed) or
            ``"stall"`` (half the body, then silence for ``stall_seconds``).
        ranges: honour ``Range: bytes=N-`` requests (206); off, every answer is the full file.

    Yields:
        :class:`Mirror`: the base URL (a ``str``) with ``.requests`` and ``.count(name)``.
    """
    queues = {name: ["503"] * int(k) for name, k in (fail_first or {}).items()}
    for name, seq in (faults or {}).items():
        queues.setdefault(name, []).extend(str(f) for f in seq)
    server = _MirrorServer(Path(root), queues, stall_seconds, ranges)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.mirror
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
