"""Glue between Snakemake's ``script:`` entry points and the library.

Scripts stay thin: they call :func:`run_script`, which sends logging, stdout and stderr to the
rule's log file, sets the torch thread count, and makes any failure exit non-zero with the
message in the log. Scripts see only their rule's ``params``, never the global config.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    import torch

__all__ = ["run_script", "pick_device", "code_version", "script_modules", "UNTRACKED_MODULES"]

log = logging.getLogger("stirflow")

#: Modules left out of the code hashes: the glue between Snakemake and the scripts (this module)
#: and config validation, which builds the DAG and does not change results (docs/reruns.md).
UNTRACKED_MODULES = frozenset({"workflow", "config"})


def pick_device(preference: str = "auto") -> "torch.device":
    """``auto``: the first CUDA device when there is one, else the CPU; otherwise the device named."""
    import torch

    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"compute.device is {preference!r} but no CUDA device is available")
    return device


def _module_file(name: str) -> Path:
    """The source file of module ``stirflow.<name>`` of this package (nothing is imported)."""
    path = Path(__file__).with_name(f"{name}.py")
    if not path.is_file():
        raise ValueError(f"no module stirflow.{name}")
    return path


# Building the DAG hashes each rule's modules (13 rules sharing about 20 modules): parsing each file's
# text once instead of once per rule takes a dry run of the smoke config from 5.1 s to 2.4 s.
@functools.lru_cache(maxsize=None)
def _analysed(source: str) -> tuple[str, frozenset[str]]:
    """(:func:`behaviour_source`, :func:`_stirflow_imports`) of a file's text."""
    tree = ast.parse(source)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif node.module and node.module.startswith("stirflow."):
                found.add(node.module.split(".")[1])
            elif node.module == "stirflow":
                found |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("stirflow.")}
        elif isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False), frozenset(found)


def behaviour_source(path: str | Path) -> str:
    """What of a Python file can change what it does: its syntax tree without docstrings.

    Comments, blank lines, formatting and docstrings are not in it, so editing them changes
    nothing; any other edit (a constant, a default, a statement) does.
    """
    return _analysed(Path(path).read_text())[0]


def code_version(modules: Iterable[str]) -> str:
    """A short hash of what the ``stirflow`` modules ``modules`` do (e.g. ``["training", "models"]``).

    Rules pass it as a parameter so that Snakemake's params trigger reruns them when library code
    they depend on changes (its code trigger sees only the script file itself). Only behaviour
    counts (:func:`behaviour_source`): a comment or docstring edit reruns nothing.
    """
    h = hashlib.sha256()
    for name in sorted(set(modules)):
        h.update(name.encode())
        h.update(behaviour_source(_module_file(name)).encode())
    return h.hexdigest()[:12]


def _stirflow_imports(path: Path) -> frozenset[str]:
    """The stirflow modules a file imports anywhere (module level or inside functions)."""
    return _analysed(Path(path).read_text())[1]


def script_modules(script: str | Path) -> set[str]:
    """The stirflow modules a script uses, directly or through other stirflow modules, less
    :data:`UNTRACKED_MODULES` (names ``from stirflow import x`` that are not modules are skipped)."""
    seen: set[str] = set()
    todo = list(_stirflow_imports(Path(script)) - UNTRACKED_MODULES)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            path = _module_file(name)
        except ValueError:
            continue  # a function or class imported from the package, not a module
        seen.add(name)
        todo += _stirflow_imports(path) - UNTRACKED_MODULES
    return seen


def run_script(snakemake: Any, main: Callable[[Any], None]) -> None:
    """Run ``main(snakemake)`` with logging to ``snakemake.log[0]`` and a clean failure."""
    log_path = Path(snakemake.log[0]) if len(snakemake.log) else None
    stream = open(log_path, "a", buffering=1) if log_path else sys.stderr
    if log_path:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout = sys.stderr = stream
    logging.basicConfig(level=logging.INFO, stream=stream, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    threads = max(1, int(getattr(snakemake, "threads", 1) or 1))
    # only scripts that use torch pay for importing it (3 s a job): one that has not imported it by now
    # (aggregate, figures) gets the thread count through the environment, should it import torch later
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    else:
        os.environ["OMP_NUM_THREADS"] = str(threads)
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
