"""The library's import structure: building the DAG stays light, and public names do not shadow modules."""

from __future__ import annotations

import subprocess
import sys
import types

from conftest import REPO, SNAKEMAKE


def imported_modules(stderr: str) -> set[str]:
    """Module names from ``python -X importtime`` output (one line per import)."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def test_building_the_dag_imports_neither_torch_nor_matplotlib(tmp_path):
    """``snakemake -n`` on the default config: validation, run names, code hashes and the figure list
    come from torch-free modules, so a dry run costs no torch or matplotlib import."""
    proc = subprocess.run([sys.executable, "-X", "importtime", SNAKEMAKE, "-n", "--snakefile", str(REPO / "Snakefile"),
                           "--directory", str(tmp_path), "--workflow-profile", str(REPO / "profiles" / "default")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    imported = imported_modules(proc.stderr)
    assert {"stirflow.config", "stirflow.catalog", "snakemake"} <= imported  # the check sees the workflow's imports
    assert not {"torch", "matplotlib", "timm"} & imported, sorted({"torch", "matplotlib", "timm"} & imported)


def test_public_functions_do_not_shadow_their_modules():
    import stirflow
    import stirflow.invariance
    import stirflow.inversion

    assert isinstance(stirflow.inversion, types.ModuleType) and isinstance(stirflow.invariance, types.ModuleType)
    assert stirflow.invert is stirflow.inversion.invert and stirflow.stir is stirflow.invariance.stir
    from stirflow import invert, stir  # the names the README uses

    assert callable(invert) and callable(stir)
    assert set(stirflow.__all__) <= set(dir(stirflow))
