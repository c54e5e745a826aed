"""Writing files so that a reader never sees half of one, and refusing files that hold the wrong thing.

Every output of the pipeline is written to ``<name>.tmp`` beside its final path and renamed into
place when complete (:func:`os.replace` is atomic on POSIX): a job killed mid-write leaves no
truncated file under the output's name, only a ``.tmp`` that the next attempt overwrites.

A file that reads fine can still hold the wrong content (arrays of other shapes, another run's
results, other settings): :func:`check_arrays` and :func:`check_attrs` raise a
:class:`DataFileError` naming the file and what does not match.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

__all__ = ["DataFileError", "atomic_path", "read_netcdf", "check_arrays", "check_attrs"]


class DataFileError(RuntimeError):
    """An input data file is missing, truncated or not in the expected format."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on error remove it.

    The parent directory is created. Write to the yielded path with any library (h5py,
    ``torch.save``, xarray)::

        with atomic_path(out) as tmp:
            ds.to_netcdf(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_netcdf(path: str | os.PathLike, what: str, required: tuple[str, ...] = ()):
    """The :class:`xarray.Dataset` in ``path``, loaded; a missing, truncated or foreign file (one that
    lacks a ``required`` variable) raises :class:`DataFileError` naming it and ``what`` it should hold."""
    import xarray as xr

    try:
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            ds = ds.load()
    except (OSError, ValueError) as err:  # h5py's message for a truncated file does not name it
        raise DataFileError(f"{path}: cannot read {what} ({err})") from err
    missing = [k for k in required if k not in ds.variables]
    if missing:
        raise DataFileError(f"{path}: not a file of {what} (no {', '.join(missing)})")
    return ds


def check_arrays(path: str | os.PathLike, arrays: Mapping[str, tuple], known: Mapping[str, tuple[int, str]] | None = None
                 ) -> dict[str, int]:
    """Check the shapes (and dtypes) of a file's arrays; return the size of every named dimension.

    ``arrays``: name → ``(array, dims)`` or ``(array, dims, dtype)``. ``dims`` spells the shape:
    ``"N H W 3"`` (``""`` for a scalar); a name is a size that must be the same wherever it
    appears, and the one ``known`` gives (name → (size, where it comes from)); a number is fixed.
    ``array`` may be anything with a ``shape`` (an h5py dataset is not read). ``dtype`` is a NumPy
    type or kind (``np.uint8``, ``np.integer``, ``np.floating``). Raises :class:`DataFileError`
    naming ``path``, the array and the mismatch.
    """
    sizes = dict(known or {})
    for name, (array, dims, *dtype) in arrays.items():
        if dtype and not np.issubdtype(array.dtype, dtype[0]):
            raise DataFileError(f"{path}: {name} is {array.dtype}, expected {getattr(dtype[0], '__name__', dtype[0])}")
        shape, want = tuple(np.shape(array)), dims.split()
        expected = f"({', '.join(want)})" if want else "a scalar"
        if len(shape) != len(want):
            raise DataFileError(f"{path}: {name} has shape {shape}, expected {expected}")
        for dim, size in zip(want, shape):
            if dim.isdigit() and size != int(dim):
                raise DataFileError(f"{path}: {name} has shape {shape}, expected {expected}")
            if not dim.isdigit() and sizes.setdefault(dim, (size, name))[0] != size:
                raise DataFileError(f"{path}: {name} has shape {shape}, expected {expected} with {dim} = "
                                    f"{sizes[dim][0]} as in {sizes[dim][1]}")
    return {dim: size for dim, (size, _) in sizes.items()}


def check_attrs(path: str | os.PathLike, attrs: Mapping[str, Any], expected: Mapping[str, Any] | None, what: str) -> None:
    """Raise :class:`DataFileError` naming ``path`` and every attribute whose value is not ``expected``'s.

    Values compare after NumPy scalars and arrays become Python ones and ``"none"`` (how HDF5
    attributes store ``None``) becomes ``None``.
    """
    wrong = []
    for key, want in (expected or {}).items():
        if key not in attrs:
            wrong.append(f"no {key} (expected {want!r})")
        elif _plain(attrs[key]) != _plain(want):
            wrong.append(f"{key} is {_plain(attrs[key])!r}, expected {_plain(want)!r}")
    if wrong:
        raise DataFileError(f"{path}: not the {what} expected: {'; '.join(wrong)}")


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, (np.generic, np.ndarray)):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return None if value == "none" else value
