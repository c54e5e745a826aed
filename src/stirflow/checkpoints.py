"""Checkpoint files: written as plain data, read without running code.

A stirflow checkpoint is one ``torch.save`` file (a zip archive holding a pickle and the tensors)
whose pickle holds nothing but plain data::

    {"format": "stirflow-checkpoint-2", "spec": {...}, "state_dict": {name: tensor},
     "weights_dtype": "float32", "run": ..., "epoch": ..., "metrics": {...}}

(the resume state adds ``history``, ``optimizer`` and ``scheduler``, plain data too). Every file
is read with ``torch.load(..., weights_only=True)``: PyTorch's restricted unpickler rebuilds
tensors, dicts, lists, tuples, strings and numbers and refuses every other Python object, so
opening a checkpoint cannot run code. Writing checks the same restriction
(:func:`plain_data`), so every file written loads back. Files of the first format
(``stirflow-checkpoint-1``) hold the same plain data and load unchanged.

Why this and not safetensors beside a JSON sidecar: one file per checkpoint keeps every
Snakemake output, hard link and path as it was; the optimizer and scheduler states of the
resume file are nested plain data (integer keys, tuples, ``None``) that PyTorch's restricted
unpickler reads natively, where a flat safetensors file would need a hand-written encoding of
them; and a user's existing checkpoints keep loading. Weights alone may be stored in bfloat16 or
float16 (``weights_dtype``) and are read back as float32.
"""

from __future__ import annotations

import os
import pickle
import shlex
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_DTYPES",
    "plain_data",
    "save_checkpoint",
    "read_checkpoint",
    "convert_checkpoint",
    "check_weight_file",
    "describe_file",
]

CHECKPOINT_FORMAT = "stirflow-checkpoint-2"
READABLE_FORMATS = ("stirflow-checkpoint-1", CHECKPOINT_FORMAT)
CHECKPOINT_DTYPES = ("float32", "bfloat16", "float16")
CONVERT_COMMAND = "stirflow convert-checkpoint"

_WEIGHT_KINDS = ("a safetensors file", "a NumPy .npz archive")
_WEIGHT_HINT = ("a weight file: give it as the weights of a timm model, e.g. --weights-a beside the model's "
                "timm name, or pretrain.weights.file")


class CheckpointError(RuntimeError):
    """A checkpoint or weight file is missing, truncated, unsafe or not what it should be."""


# --------------------------------------------------------------------------- writing

def plain_data(value: Any, where: str = "checkpoint") -> Any:
    """``value`` as plain data: tensors, numbers, strings, None and lists, tuples and dicts of them.

    NumPy scalars become Python numbers and NumPy arrays tensors; anything else raises
    ``TypeError`` naming where it is (``where`` plus the keys leading to it).
    """
    if isinstance(value, np.generic):  # before the Python types: np.float64 is a float subclass
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}, not a string or an integer")
            out[k] = plain_data(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        items = [plain_data(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, np.ndarray) and value.dtype != object:
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{where} is a {type(value).__module__}.{type(value).__qualname__}: a checkpoint holds "
                    f"only tensors, numbers, strings and lists or dicts of them")


def _stored_weights(state_dict: Mapping[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """float32 tensors cast to ``dtype`` for storage; other tensors (integer buffers) unchanged."""
    if dtype not in CHECKPOINT_DTYPES:
        raise ValueError(f"unknown checkpoint dtype {dtype!r}; expected one of {CHECKPOINT_DTYPES}")
    target = getattr(torch, dtype)
    return {k: v.to(target) if v.dtype == torch.float32 else v for k, v in state_dict.items()}


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, spec: Mapping[str, Any], *,
                    dtype: str = "float32", **extra: Any) -> None:
    """Write ``{"format", "spec", "state_dict", "weights_dtype", **extra}`` atomically.

    ``dtype`` (``float32``, ``bfloat16`` or ``float16``) is the storage type of the float32
    weights; they are read back as float32. ``extra`` (``run``, ``epoch``, ``metrics``, the
    optimizer state...) must be plain data (:func:`plain_data`).
    """
    from .files import atomic_path

    content = plain_data({"format": CHECKPOINT_FORMAT, "spec": dict(spec), "weights_dtype": dtype, **extra})
    content["state_dict"] = _stored_weights(model.state_dict(), dtype)
    with atomic_path(path) as tmp:
        torch.save(content, tmp)


# --------------------------------------------------------------------------- reading

def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint dict, weights as float32, read without running code.

    A missing, truncated, unsafe or foreign file raises :class:`CheckpointError` naming the file
    and what it is.
    """
    path = Path(path)
    ckpt = _load_plain(path, map_location, "checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") not in READABLE_FORMATS:
        raise CheckpointError(f"{path}: not a stirflow checkpoint: it is {_describe_content(ckpt)}")
    if not isinstance(ckpt.get("state_dict"), dict) or not isinstance(ckpt.get("spec"), dict):
        raise CheckpointError(f"{path}: damaged stirflow checkpoint (no spec or state_dict)")
    ckpt["state_dict"] = _as_float32(ckpt["state_dict"], ckpt.get("weights_dtype", "float32"))
    ckpt["weights_dtype"] = "float32"
    return ckpt


def _as_float32(state_dict: Mapping[str, torch.Tensor], stored: str) -> dict[str, torch.Tensor]:
    """The weights stored as ``stored`` back in float32 (the inverse of :func:`_stored_weights`)."""
    if stored == "float32":
        return dict(state_dict)
    if stored not in CHECKPOINT_DTYPES:
        raise CheckpointError(f"unknown weights_dtype {stored!r} (expected one of {CHECKPOINT_DTYPES})")
    source = getattr(torch, stored)
    return {k: v.float() if v.dtype == source else v for k, v in state_dict.items()}


def _load_plain(path: Path, map_location: Any, what: str, allow_numpy: bool = False, mmap: bool = False) -> Any:
    """``torch.load`` with PyTorch's restricted unpickler; every failure a :class:`CheckpointError`."""
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    kind = describe_file(path)
    if kind != "a PyTorch file":
        hint = f" ({_WEIGHT_HINT})" if kind in _WEIGHT_KINDS else ""
        raise CheckpointError(f"{path}: not a stirflow {what}: it is {kind}{hint}")
    unsafe = _unsafe_globals(path)
    if unsafe and not (allow_numpy and set(unsafe) <= _NUMPY_DATA):
        raise CheckpointError(_refusal(path, unsafe))
    try:
        if allow_numpy:
            with torch.serialization.safe_globals(_numpy_data_types()):
                return torch.load(path, map_location=map_location, weights_only=True)
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:  # what the restricted unpickler found that the scan did not
        raise CheckpointError(f"{path}: refused: {_unpickler_reason(err)} (nothing was executed)") from None
    except Exception as err:  # torch raises several types for truncated zip files
        raise CheckpointError(f"{path}: cannot read {what} ({type(err).__name__}: {err})") from err


# NumPy values are data, not code: the converter reads them (still without running code) and
# writes them as plain numbers and tensors. Object arrays are left out: they hold Python objects.
_NUMPY_DTYPES = [n for n in dir(np.dtypes) if n.endswith("DType") and n != "ObjectDType"]
_NUMPY_DATA = ({"numpy.ndarray", "numpy.dtype"} | {f"numpy.dtypes.{n}" for n in _NUMPY_DTYPES}
               | {f"{module}.{name}" for module in ("numpy.core.multiarray", "numpy._core.multiarray")
                  for name in ("scalar", "_reconstruct")})  # old pickles name numpy.core, new ones numpy._core


def _numpy_data_types() -> list[Any]:
    """The objects behind :data:`_NUMPY_DATA`, for ``torch.serialization.safe_globals``."""
    core = getattr(np, "_core", None) or np.core
    return [np.ndarray, np.dtype, core.multiarray.scalar, core.multiarray._reconstruct,
            *(getattr(np.dtypes, n) for n in _NUMPY_DTYPES)]


def _unpickler_reason(err: Exception) -> str:
    """The line of PyTorch's weights-only error that says what it refused."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for k, line in enumerate(lines):
        if line.startswith("WeightsUnpickler error") and k + 1 < len(lines):
            return lines[k + 1][:300]
    return lines[-1][:300] if lines else type(err).__name__


def _unsafe_globals(path: Path) -> list[str]:
    """The Python objects (``module.name``) a PyTorch file's pickle refers to beyond tensors and
    plain data, read from its opcodes without unpickling anything."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # a damaged archive: torch.load reports it with its own message
        return []


def _refusal(path: Path, unsafe: list[str]) -> str:
    unsafe = sorted(unsafe)
    names = ", ".join(unsafe[:5]) + (" ..." if len(unsafe) > 5 else "")
    if set(unsafe) <= _NUMPY_DATA:
        return (f"{path}: holds NumPy values ({names}), which checkpoints read without running code may not hold; "
                f"convert it once (NumPy values become plain numbers and tensors, nothing is executed): "
                f"{CONVERT_COMMAND} {shlex.quote(str(path))}")
    return (f"{path}: refused: the file's pickle refers to {names}, Python objects that no stirflow checkpoint or "
            f"weight file holds; unpickling them could run code, so nothing was loaded or executed")


def _describe_content(obj: Any) -> str:
    """What a loaded PyTorch file holds, in words (for errors)."""
    if isinstance(obj, dict):
        tensors = sum(isinstance(v, torch.Tensor) for v in obj.values())
        if obj and tensors == len(obj):
            return f"a state dict of {tensors} tensors ({_WEIGHT_HINT})"
        if obj.get("format") in READABLE_FORMATS:
            return "a stirflow checkpoint (give it as the model itself, e.g. --model-a, not as weights)"
        if "format" in obj:
            return f"a file of format {obj['format']!r}"
        keys = ", ".join(map(str, list(obj)[:6]))
        return f"a PyTorch file holding a dict with keys {keys}"
    return f"a PyTorch file holding a {type(obj).__name__}"


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike | None = None, *,
                       dtype: str | None = None) -> Path:
    """Rewrite a checkpoint in the current format (in place unless ``dst``); returns the path written.

    Reads with the restricted unpickler, additionally accepting NumPy values (data, not code),
    which become plain numbers and tensors; ``dtype`` re-stores the weights (default: as they are).
    """
    from .files import atomic_path

    src = Path(src)
    ckpt = _load_plain(src, "cpu", "checkpoint", allow_numpy=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") not in READABLE_FORMATS:
        raise CheckpointError(f"{src}: not a stirflow checkpoint: it is {_describe_content(ckpt)}")
    stored = ckpt.get("weights_dtype", "float32")
    content = plain_data({k: v for k, v in ckpt.items() if k != "state_dict"}, str(src))
    weights = _as_float32(ckpt["state_dict"], stored)
    content.update(format=CHECKPOINT_FORMAT, weights_dtype=dtype or stored,
                   state_dict=_stored_weights(plain_data(weights), dtype or stored))
    out = Path(dst) if dst else src
    with atomic_path(out) as tmp:
        torch.save(content, tmp)
    return out


# --------------------------------------------------------------------------- weight files and file kinds

def check_weight_file(path: str | os.PathLike, what: str = "weights file", key: str | None = None) -> Path:
    """``path`` if it is a weight file timm can load without running code; else :class:`CheckpointError`.

    ``what`` and ``key`` (a config key or option) name the file in the error. Accepted: safetensors, NumPy ``.npz`` (read without pickles), and PyTorch files whose pickle
    refers to nothing beyond tensors and plain data (timm then reads them with ``weights_only``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found" + (f" ({key})" if key else ""))
    kind = describe_file(path)
    if kind == "a PyTorch file":
        content = _load_plain(path, "cpu", what, mmap=True)  # mapped, not read: a look at what it holds
        if not _is_state_dict(content):
            raise CheckpointError(f"{path}: not a weight file (a state dict of tensors): it is "
                                  f"{_describe_content(content)}")
    elif kind not in _WEIGHT_KINDS:
        raise CheckpointError(f"{path}: not a weight file (.pth/.bin/.safetensors/.npz): it is {kind}")
    return path


def _is_state_dict(obj: Any) -> bool:
    """A dict of tensors, or one under a key where training scripts keep it (as timm reads them)."""
    if not isinstance(obj, dict) or not obj:
        return False
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return True
    return any(_is_state_dict(obj.get(key)) for key in ("state_dict", "model", "state_dict_ema", "model_ema"))


def describe_file(path: str | os.PathLike) -> str:
    """What kind of file ``path`` is, from its first bytes: "a PyTorch file", "an HDF5 file", ..."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "an empty file"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            return "a damaged zip archive"
        if any(n.endswith("data.pkl") for n in names):
            return "a PyTorch file"
        if names and all(n.endswith(".npy") for n in names):
            return "a NumPy .npz archive"
        return "a zip archive"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "an HDF5 file"
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy .npy array"
    if head.startswith((b"CDF\x01", b"CDF\x02")):
        return "a netCDF-3 file"
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff")):
        return "an image"
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:
        return "a pickle (or a PyTorch file in the legacy format, which stirflow does not read)"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "a safetensors file"
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "a binary file of unknown kind"
