"""Writing files so that a reader never sees half of one.

Every output of the pipeline is written to ``<name>.tmp`` beside its final path and renamed into
place when complete (:func:`os.replace` is atomic on POSIX): a job killed mid-write leaves no
truncated file under the output's name, only a ``.tmp`` that the next attempt overwrites.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

__all__ = ["DataFileError", "atomic_path", "read_netcdf"]


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
