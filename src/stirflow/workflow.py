"""Glue between Snakemake's ``script:`` entry points and the library.

Scripts stay thin: they call :func:`run_script`, which sends logging, stdout and stderr to the
rule's log file, sets the torch thread count, and makes any failure exit non-zero with the
message in the log. Scripts see only their rule's ``params``, never the global config.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

__all__ = ["run_script", "pick_device", "code_version"]

log = logging.getLogger("stirflow")


def pick_device(preference: str = "auto") -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU; otherwise the device named."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"compute.device is {preference!r} but no CUDA device is available")
    return device


def code_version(modules: Iterable[str]) -> str:
    """A short hash of the source files of ``stirflow`` modules (e.g. ``["training", "models"]``).

    Rules pass it as a parameter so that Snakemake's params trigger reruns them when library code
    they depend on changes (its code trigger sees only the script file itself).
    """
    h = hashlib.sha256()
    for name in sorted(set(modules)):
        spec = importlib.util.find_spec(f"stirflow.{name}")
        if spec is None or spec.origin is None:
            raise ValueError(f"no module stirflow.{name}")
        h.update(name.encode())
        h.update(Path(spec.origin).read_bytes())
    return h.hexdigest()[:12]


def run_script(snakemake: Any, main: Callable[[Any], None]) -> None:
    """Run ``main(snakemake)`` with logging to ``snakemake.log[0]`` and a clean failure."""
    log_path = Path(snakemake.log[0]) if len(snakemake.log) else None
    stream = open(log_path, "a", buffering=1) if log_path else sys.stderr
    if log_path:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout = sys.stderr = stream
    logging.basicConfig(level=logging.INFO, stream=stream, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    threads = int(getattr(snakemake, "threads", 1) or 1)
    torch.set_num_threads(max(1, threads))
    log.info("rule %s, wildcards %s, %d thread(s)", snakemake.rule, dict(snakemake.wildcards), threads)
    try:
        main(snakemake)
    except Exception as err:
        log.error("%s: %s\n%s", type(err).__name__, err, traceback.format_exc())
        sys.__stderr__.write(f"stirflow: rule {snakemake.rule} failed: {type(err).__name__}: {err}\n")
        raise SystemExit(1) from None
    finally:
        if log_path:
            stream.flush()
