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

__all__ = ["atomic_path"]


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
