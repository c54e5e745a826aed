"""Public data sets of the paper: official sources, download, and conversion to image-set HDF5 files.

:data:`SOURCES` lists, for each kind, the files to download (file name, official URL, md5; the
URLs and md5s are the ones torchvision's dataset classes use, and Zenodo's listing for
CIFAR-10-C). :func:`prepare_public_dataset` fetches them into a shared download folder (with
:func:`stirflow.download.fetch`: verified, atomic, retried, never fetched twice) and converts
them, reading members straight from the archives instead of extracting them to disk:

==============  =====================================================================================
kind            output
==============  =====================================================================================
``cifar10``     ``train.h5`` (50000) and ``test.h5`` (10000), 32×32, classes from ``batches.meta``
``cifar100``    ``train.h5`` / ``test.h5`` with the 100 fine labels, classes from ``meta``
``oxford_pets`` ``train.h5`` (annotations/trainval.txt) and ``test.h5`` (annotations/test.txt),
                37 breeds, resized (short side) and centre-cropped to ``image_size`` (default 224)
``eurosat``     seeded, stratified ``train.h5`` / ``test.h5`` split (``test_fraction``, ``seed``)
                of the 27000 64×64 RGB images in 10 classes
``cifar10_c``   ``<corruption>_<severity>.h5`` for every corruption in the archive and severity 1..5
==============  =====================================================================================

Spec options (all optional except ``kind``): ``image_size`` (default: the native size; 224 for
Pets, whose images vary in size), ``test_fraction`` (EuroSAT, default 0.2), ``seed`` (default 0),
``max_train`` / ``max_test`` (a seeded subset of at most that many images; for CIFAR-10-C the same
test images for every corruption and severity, and the same ones ``cifar10`` picks with the same
seed and ``max_test``), ``corruptions`` and ``severities`` (CIFAR-10-C: which files to write).
"""

from __future__ import annotations

import io
import pickle
import re
import sys
import tarfile
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image
from tqdm import tqdm

from .catalog import CORRUPTIONS
from .data import DataFileError, write_image_h5
from .download import ChecksumError, DownloadError, RemoteFile, fetch, file_md5, resolve_url

__all__ = [
    "SOURCES",
    "PUBLIC_KINDS",
    "CIFAR10_CLASSES",
    "CIFAR10_C_CORRUPTIONS",
    "files_for",
    "prepare_public_dataset",
    # re-exported so that callers catch every failure from one module
    "DataFileError",
    "DownloadError",
    "ChecksumError",
]

SOURCES: dict[str, tuple[RemoteFile, ...]] = {
    "cifar10": (
        RemoteFile("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                   "c58f30108f718f92721af3b95e74349a"),
    ),
    "cifar100": (
        RemoteFile("cifar-100-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                   "eb9058c3a382ffc7106e4002c42a8d85"),
    ),
    "oxford_pets": (
        RemoteFile("images.tar.gz", "https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz",
                   "5c4f3ee8e5d25df40f4fd59a7f44e54c"),
        RemoteFile("annotations.tar.gz", "https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz",
                   "95a8c909bbe2e81eed6a22bccdf3f68f"),
    ),
    "eurosat": (
        # The RGB release; torchvision downloads it from this pinned Hugging Face revision since
        # the original host (madm.dfki.de) went offline. Same md5 as the original file.
        RemoteFile("EuroSAT.zip",
                   "https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
                   "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip",
                   "c8fa014336c82ac7804f0398fcb19387"),
    ),
    "cifar10_c": (
        RemoteFile("CIFAR-10-C.tar", "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar?download=1",
                   "56bf5dcef84df0e2308c6dcbcbbd8499"),
    ),
}

PUBLIC_KINDS: tuple[str, ...] = tuple(SOURCES)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

CIFAR10_C_CORRUPTIONS = CORRUPTIONS  # the archive holds all 19, in this order

# Native sizes, except for Pets whose images vary in size (the paper's ViT input size).
DEFAULT_IMAGE_SIZE = {"cifar10": 32, "cifar100": 32, "oxford_pets": 224, "eurosat": 64, "cifar10_c": 32}

_CIFAR_LAYOUT = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
                    test=["test_batch"], meta="batches.meta", names_key="label_names", labels_key="labels"),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], meta="meta",
                     names_key="fine_label_names", labels_key="fine_labels"),
}


def files_for(kind: str) -> list[str]:
    """The file names a kind downloads (into the shared download folder)."""
    return [entry.filename for entry in SOURCES[_check_kind(kind)]]


def prepare_public_dataset(name: str, spec: dict, out_dir: Path, *, download_dir: Path, mirror: str | None = None,
                           checksums: dict[str, str] | None = None, retries: int = 3, timeout: float = 60,
                           progress: bool = True) -> list[Path]:
    """Download a public data set (if needed) and write it as image-set HDF5 files in ``out_dir``.

    Args:
        name: the data set's key in the config (stored as the ``name`` attribute).
        spec: the data set's config section; ``spec["kind"]`` is one of :data:`PUBLIC_KINDS`.
        out_dir: where ``train.h5`` / ``test.h5`` (or CIFAR-10-C's per-corruption files) go.
        download_dir: the archive cache shared by all data sets.
        mirror: a base URL (or local folder) serving the files under their file names.
        checksums: md5 per file name, overriding :data:`SOURCES` (other builds of a file).
        retries, timeout, progress: passed to :func:`stirflow.download.fetch`.

    Returns:
        The paths written.
    """
    kind = _check_kind(spec.get("kind"), f"data set {name!r}: ")
    out_dir, download_dir = Path(out_dir), Path(download_dir)
    archives: dict[str, Path] = {}
    provenance: dict[str, dict[str, str]] = {}
    for entry in SOURCES[kind]:
        url = resolve_url(entry, mirror)
        md5 = (checksums or {}).get(entry.filename, entry.md5)
        path = fetch(url, download_dir / entry.filename, md5=md5, retries=retries, timeout=timeout,
                     progress=progress)
        archives[entry.filename] = path
        provenance[entry.filename] = {"url": url, "md5": md5 or file_md5(path)}
    primary = provenance[SOURCES[kind][0].filename]
    attrs = {"name": name, "kind": kind, "source": primary["url"], "md5": primary["md5"], "files": provenance}
    _say(f"[{name}] converting {kind} into {out_dir}")
    written = _CONVERTERS[kind](archives, spec, out_dir, attrs, progress)
    _say(f"[{name}] wrote {len(written)} file(s) in {out_dir}")
    return written


def _check_kind(kind: Any, where: str = "") -> str:
    if kind not in SOURCES:
        raise ValueError(f"{where}unknown public data set kind {kind!r}; known kinds: {', '.join(PUBLIC_KINDS)}")
    return kind


# --------------------------------------------------------------------------- CIFAR-10 / CIFAR-100


def _convert_cifar(kind: str) -> Callable[..., list[Path]]:
    layout = _CIFAR_LAYOUT[kind]

    def convert(archives: dict[str, Path], spec: dict, out_dir: Path, attrs: dict, progress: bool) -> list[Path]:
        archive = archives[SOURCES[kind][0].filename]
        with _open_tar(archive, "r:*") as tar:
            meta = _read_pickle(tar, archive, f"{layout['folder']}/{layout['meta']}")
            classes = [_text(c) for c in _field(meta, layout["names_key"], archive, layout["meta"])]
            splits = {split: _read_cifar_batches(tar, archive, layout, members) for split, members in
                      (("train", layout["train"]), ("test", layout["test"]))}
        written = []
        for split, (images, labels) in splits.items():
            index = _cap(len(labels), spec.get(f"max_{split}"), _seed(spec))
            images = _resize_all(images[index], _image_size(spec, kind), progress, f"resize {split}")
            written.append(_write(out_dir / f"{split}.h5", images, labels[index], attrs, split=split,
                                  classes=classes))
        return written

    return convert


def _read_cifar_batches(tar: tarfile.TarFile, archive: Path, layout: dict, members: list[str]
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate CIFAR pickle batches into (N, 32, 32, 3) uint8 images and int64 labels."""
    images, labels = [], []
    for member in members:
        batch = _read_pickle(tar, archive, f"{layout['folder']}/{member}")
        data = np.asarray(_field(batch, "data", archive, member))
        batch_labels = np.asarray(_field(batch, layout["labels_key"], archive, member), dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(batch_labels):
            raise DataFileError(f"{archive}: member {member}: expected uint8 data (N, 3072) and N labels, "
                                f"got {data.dtype} {data.shape} and {batch_labels.shape} labels")
        # Rows are channel-major (1024 red, 1024 green, 1024 blue values): to (N, H, W, C).
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(batch_labels)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays only: a pickle from a mirror cannot run code."""

    _ALLOWED = {"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"}

    def find_class(self, module: str, name: str) -> Any:
        if module == "_codecs" and name == "encode":  # how Python 3 protocol-2 pickles store bytes
            return super().find_class(module, name)
        if module.split(".")[0] == "numpy" and name in self._ALLOWED:
            if module.startswith("numpy.core") and hasattr(np, "_core"):
                module = "numpy._core" + module[len("numpy.core"):]  # old pickles, NumPy 2 names
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_pickle(tar: tarfile.TarFile, archive: Path, member: str) -> dict:
    """A CIFAR batch or meta pickle (written by Python 2: latin1 decodes its strings)."""
    with _member(tar, archive, member) as f:
        try:
            obj = _NumpyUnpickler(f, encoding="latin1").load()
        except Exception as err:  # any unpickling failure means a damaged or foreign file
            raise DataFileError(f"{archive}: member {member}: not a CIFAR pickle ({err})") from err
    if not isinstance(obj, dict):
        raise DataFileError(f"{archive}: member {member}: expected a dict, got {type(obj).__name__}")
    return {_text(k): v for k, v in obj.items()}


def _field(batch: dict, key: str, archive: Path, member: str) -> Any:
    if key not in batch:
        raise DataFileError(f"{archive}: member {member}: missing key {key!r} (has {sorted(batch)})")
    return batch[key]


# --------------------------------------------------------------------------- Oxford-IIIT Pet


def _convert_pets(archives: dict[str, Path], spec: dict, out_dir: Path, attrs: dict, progress: bool) -> list[Path]:
    images_tar, annotations_tar = archives["images.tar.gz"], archives["annotations.tar.gz"]
    lists = {}
    with _open_tar(annotations_tar, "r:*") as tar:
        for split, member in (("train", "annotations/trainval.txt"), ("test", "annotations/test.txt")):
            with _member(tar, annotations_tar, member) as f:
                lists[split] = _parse_pet_list(f.read().decode("utf-8", "replace"), annotations_tar, member)
    classes = _pet_classes([row for rows in lists.values() for row in rows])
    size = _image_size(spec, "oxford_pets")
    for split in lists:  # cap before decoding: decoding is the slow part
        lists[split] = _take(lists[split], _cap(len(lists[split]), spec.get(f"max_{split}"), _seed(spec)))
    wanted = {f"images/{image_id}.jpg": (split, i) for split, rows in lists.items()
              for i, (image_id, _) in enumerate(rows)}
    images = {split: np.zeros((len(rows), size, size, 3), np.uint8) for split, rows in lists.items()}
    found = _scan_tar_images(images_tar, wanted, size, images, progress)
    missing = sorted(set(wanted) - found)
    if missing:
        raise DataFileError(f"{images_tar}: {len(missing)} image(s) listed in {annotations_tar.name} are missing, "
                            f"e.g. {missing[:3]}")
    written = []
    for split, rows in lists.items():
        labels = np.array([label for _, label in rows], dtype=np.int64)
        written.append(_write(out_dir / f"{split}.h5", images[split], labels, attrs, split=split, classes=classes))
    return written


def _parse_pet_list(text: str, archive: Path, member: str) -> list[tuple[str, int]]:
    """Rows ``<image name> <class id 1..37> <species> <breed id>`` → [(image name, label 0..36)]."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) < 2 or not fields[1].isdigit() or int(fields[1]) < 1:
            raise DataFileError(f"{archive}: {member} line {number}: expected "
                                f"'<image> <class id> <species> <breed id>', got {line!r}")
        rows.append((fields[0], int(fields[1]) - 1))
    if not rows:
        raise DataFileError(f"{archive}: {member} lists no images")
    return rows


def _pet_classes(rows: list[tuple[str, int]]) -> list[str]:
    """Breed names by label, from image names (``american_bulldog_12`` → "American Bulldog")."""
    names: dict[int, str] = {}
    for image_id, label in rows:
        names.setdefault(label, " ".join(part.title() for part in image_id.rsplit("_", 1)[0].split("_")))
    return [names.get(k, f"class_{k + 1}") for k in range(max(names) + 1)]


def _scan_tar_images(archive: Path, wanted: dict[str, tuple[str, int]], size: int,
                     images: dict[str, np.ndarray], progress: bool) -> set[str]:
    """One sequential pass over a (gzipped) tar: decode and fit the wanted images as they come."""
    found = set()
    with _open_tar(archive, "r|*") as tar, tqdm(total=len(wanted), desc=f"decode {archive.name}", unit="img",
                                                 file=sys.stderr, disable=not progress, leave=False) as bar:
        try:
            for info in tar:
                _check_member(archive, info.name, info.linkname if info.issym() or info.islnk() else None)
                name = info.name[2:] if info.name.startswith("./") else info.name
                if not info.isfile() or name not in wanted:
                    continue
                split, i = wanted[name]
                data = tar.extractfile(info).read()
                images[split][i] = _fit(_decode(data, archive, name), size)
                found.add(name)
                bar.update(1)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
            raise DataFileError(f"{archive}: damaged tar archive ({err})") from err
    return found


# --------------------------------------------------------------------------- EuroSAT


def _convert_eurosat(archives: dict[str, Path], spec: dict, out_dir: Path, attrs: dict, progress: bool) -> list[Path]:
    archive = archives["EuroSAT.zip"]
    test_fraction = float(spec.get("test_fraction", 0.2))
    if not 0 < test_fraction < 1:
        raise ValueError(f"eurosat: test_fraction must be in (0, 1), got {test_fraction}")
    size, seed = _image_size(spec, "eurosat"), _seed(spec)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataFileError(f"{archive}: not a readable zip archive ({err})") from err
    with zf:
        by_class = _eurosat_members(zf, archive)
        classes = sorted(by_class)  # ImageFolder order: AnnualCrop, Forest, ...
        rng = np.random.default_rng(seed)
        splits: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
        for label, cls in enumerate(classes):  # stratified: the same fraction of every class
            members = by_class[cls]
            n_test = int(round(test_fraction * len(members)))
            is_test = np.zeros(len(members), bool)
            is_test[rng.permutation(len(members))[:n_test]] = True
            for member, test in zip(members, is_test):
                splits["test" if test else "train"].append((member, label))
        written = []
        for split, rows in splits.items():
            rows = _take(rows, _cap(len(rows), spec.get(f"max_{split}"), seed))
            images = np.zeros((len(rows), size, size, 3), np.uint8)
            for i, (member, _) in enumerate(tqdm(rows, desc=f"decode {split}", unit="img", file=sys.stderr,
                                                 disable=not progress, leave=False)):
                images[i] = _fit(_decode(_zip_read(zf, archive, member), archive, member), size)
            labels = np.array([label for _, label in rows], dtype=np.int64)
            written.append(_write(out_dir / f"{split}.h5", images, labels, attrs, split=split, classes=classes,
                                  test_fraction=test_fraction, split_seed=seed))
    return written


def _eurosat_members(zf: zipfile.ZipFile, archive: Path) -> dict[str, list[str]]:
    """JPEG members by class folder (``2750/<Class>/<Class>_<i>.jpg``), in natural order."""
    by_class: dict[str, list[str]] = {}
    for info in zf.infolist():
        _check_member(archive, info.filename)
        parts = PurePosixPath(info.filename).parts
        if info.is_dir() or len(parts) < 2 or any(p.startswith(("__MACOSX", ".")) for p in parts):
            continue
        if PurePosixPath(parts[-1]).suffix.lower() in (".jpg", ".jpeg"):
            by_class.setdefault(parts[-2], []).append(info.filename)
    if len(by_class) < 2:
        raise DataFileError(f"{archive}: expected JPEG images in class folders (2750/<Class>/<Class>_<i>.jpg), "
                            f"found {sum(map(len, by_class.values()))} in {len(by_class)} folder(s)")
    return {cls: sorted(members, key=_natural_key) for cls, members in by_class.items()}


def _zip_read(zf: zipfile.ZipFile, archive: Path, member: str) -> bytes:
    try:
        return zf.read(member)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise DataFileError(f"{archive}: member {member}: cannot read ({err})") from err


# --------------------------------------------------------------------------- CIFAR-10-C


def _convert_cifar10_c(archives: dict[str, Path], spec: dict, out_dir: Path, attrs: dict,
                       progress: bool) -> list[Path]:
    archive = archives["CIFAR-10-C.tar"]
    severities = [int(s) for s in spec.get("severities", range(1, 6))]
    if not severities or any(s not in range(1, 6) for s in severities):
        raise ValueError(f"cifar10_c: severities must be among 1..5, got {severities}")
    size, written = _image_size(spec, "cifar10_c"), []
    with _open_tar(archive, "r:*") as tar:
        arrays = {PurePosixPath(m.name).stem: m.name for m in tar.getmembers()
                  if m.isfile() and m.name.endswith(".npy") and not PurePosixPath(m.name).name.startswith(".")}
        if "labels" not in arrays:
            raise DataFileError(f"{archive}: no CIFAR-10-C/labels.npy member")
        labels = _read_npy(tar, archive, arrays.pop("labels")).astype(np.int64)
        if labels.ndim != 1 or len(labels) % 5:
            raise DataFileError(f"{archive}: labels.npy must hold 5 × N labels, got shape {labels.shape}")
        n = len(labels) // 5
        corruptions = _select_corruptions(spec, arrays, archive)
        index = _cap(n, spec.get("max_test"), _seed(spec))  # the same test images for every file
        for corruption in corruptions:
            stacked = _read_npy(tar, archive, arrays[corruption])
            if stacked.dtype != np.uint8 or stacked.shape != (5 * n, 32, 32, 3):
                raise DataFileError(f"{archive}: {arrays[corruption]}: expected uint8 {(5 * n, 32, 32, 3)}, "
                                    f"got {stacked.dtype} {stacked.shape}")
            for severity in severities:
                rows = slice((severity - 1) * n, severity * n)  # severities are stacked 1..5
                images = _resize_all(stacked[rows][index], size, False, "")
                path = out_dir / f"{corruption}_{severity}.h5"
                written.append(_write(path, images, labels[rows][index], attrs, split="test",
                                      classes=list(CIFAR10_CLASSES), corruption=corruption, severity=severity))
            _say(f"  {corruption}: severities {severities} written")
    return written


def _select_corruptions(spec: dict, arrays: dict[str, str], archive: Path) -> list[str]:
    """The requested corruptions (default: every one in the archive, canonical order first)."""
    present = [c for c in CIFAR10_C_CORRUPTIONS if c in arrays] + sorted(set(arrays) - set(CIFAR10_C_CORRUPTIONS))
    requested = list(spec.get("corruptions") or present)
    missing = [c for c in requested if c not in arrays]
    if missing:
        raise DataFileError(f"{archive}: no member for corruption(s) {missing}; present: {present}")
    if not requested:
        raise DataFileError(f"{archive}: no corruption arrays (CIFAR-10-C/<corruption>.npy) found")
    return requested


def _read_npy(tar: tarfile.TarFile, archive: Path, member: str) -> np.ndarray:
    """A .npy member read straight into its array (np.load cannot take tar members: no fileno)."""
    fmt = np.lib.format
    with _member(tar, archive, member) as f:
        try:
            version = fmt.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"unsupported .npy format version {version}")
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran_order, dtype = read_header(f)
            if dtype.hasobject:
                raise ValueError("object arrays are not image data")
            array = np.empty(shape, dtype, order="F" if fortran_order else "C")
            buffer = memoryview(array.reshape(-1, order="A")).cast("B") if array.size else memoryview(b"")
            filled = 0
            while filled < len(buffer):
                n = f.readinto(buffer[filled:])
                if not n:
                    raise ValueError(f"truncated data: {filled} of {len(buffer)} bytes")
                filled += n
        except (ValueError, OSError, EOFError) as err:
            raise DataFileError(f"{archive}: member {member}: not a readable .npy array ({err})") from err
    return array


# --------------------------------------------------------------------------- shared helpers


_CONVERTERS: dict[str, Callable[..., list[Path]]] = {
    "cifar10": _convert_cifar("cifar10"),
    "cifar100": _convert_cifar("cifar100"),
    "oxford_pets": _convert_pets,
    "eurosat": _convert_eurosat,
    "cifar10_c": _convert_cifar10_c,
}


@contextmanager
def _open_tar(archive: Path, mode: str) -> Iterator[tarfile.TarFile]:
    """Open a tar archive; a damaged one, or one with a member outside its own tree, is a
    DataFileError naming the file (a streamed archive's members are checked as they are read)."""
    try:
        tar = tarfile.open(archive, mode)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataFileError(f"{archive}: not a readable tar archive ({err})") from err
    with tar:
        if "|" not in mode:
            try:
                members = tar.getmembers()
            except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
                raise DataFileError(f"{archive}: damaged tar archive ({err})") from err
            for info in members:
                _check_member(archive, info.name, info.linkname if info.issym() or info.islnk() else None)
        yield tar


def _check_member(archive: Path, name: str, link: str | None = None) -> None:
    """Refuse a member (or link target) with an absolute path or ``..``: official archives have
    neither, and a member that points outside the archive's tree is not what its name says."""
    for path, what in ((name, ""), (link, f" (a link to {link})")):
        if path is None:
            continue
        pure = PurePosixPath(path.replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts or re.match(r"^[A-Za-z]:", path):
            raise DataFileError(f"{archive}: member {name}{what} lies outside the archive's own tree "
                                f"(an absolute path or '..'); refusing it")


@contextmanager
def _member(tar: tarfile.TarFile, archive: Path, member: str) -> Iterator[io.BufferedReader]:
    """A file-like view of one member, read straight from the archive (nothing extracted)."""
    try:
        f = tar.extractfile(member)
    except KeyError:
        raise DataFileError(f"{archive}: member {member} is missing") from None
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataFileError(f"{archive}: member {member}: cannot read ({err})") from err
    if f is None:
        raise DataFileError(f"{archive}: member {member} is not a regular file")
    try:
        with f:
            yield f
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise DataFileError(f"{archive}: member {member}: cannot read ({err})") from err


def _decode(data: bytes, archive: Path, member: str) -> Image.Image:
    """Decode an image file's bytes to RGB (grey, palette, RGBA and CMYK files exist in Pets)."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as err:  # PIL raises many types for damaged files
        raise DataFileError(f"{archive}: {member}: cannot decode image ({err})") from err
    if img.mode == "P":
        img = img.convert("RGBA")  # palette transparency is only resolved through RGBA
    return img if img.mode == "RGB" else img.convert("RGB")


def _fit(img: Image.Image, size: int) -> np.ndarray:
    """Resize the short side to ``size`` (bicubic, antialiased), then centre-crop to size × size."""
    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


def _resize_all(images: np.ndarray, size: int, progress: bool, label: str) -> np.ndarray:
    """Fit every image of an (N, H, W, 3) array to size × size; no copy when already that size."""
    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((len(images), size, size, 3), np.uint8)
    for i in tqdm(range(len(images)), desc=label, file=sys.stderr, disable=not progress, leave=False):
        out[i] = _fit(Image.fromarray(images[i]), size)
    return out


def _cap(n: int, max_n: Any, seed: int) -> np.ndarray | slice:
    """Indices of at most ``max_n`` of ``n`` items: the sorted first ``max_n`` of a seeded permutation."""
    if max_n is None or int(max_n) >= n:
        return slice(None)
    return np.sort(np.random.default_rng(seed).permutation(n)[: int(max_n)])


def _take(rows: list, index: np.ndarray | slice) -> list:
    return [rows[i] for i in np.arange(len(rows))[index]]


def _image_size(spec: dict, kind: str) -> int:
    size = int(spec.get("image_size") or DEFAULT_IMAGE_SIZE[kind])
    if size < 1:
        raise ValueError(f"{kind}: image_size must be positive, got {size}")
    return size


def _seed(spec: dict) -> int:
    return int(spec.get("seed", 0))


def _write(path: Path, images: np.ndarray, labels: np.ndarray, attrs: dict, *, split: str, classes: list[str],
           **extra: Any) -> Path:
    if len(labels) == 0:
        raise DataFileError(f"{path}: no images for split {split!r} (source {attrs['source']})")
    write_image_h5(path, images, labels, **attrs, split=split, num_classes=len(classes), classes=list(classes),
                   **extra)
    _say(f"  wrote {path} ({len(labels)} images, {images.shape[1]}×{images.shape[2]})")
    return path


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _natural_key(name: str) -> list:
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

