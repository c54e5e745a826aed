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


def test_the_readme_library_example_runs(tmp_path, monkeypatch):
    """The README's library example, run as written (in a temporary directory for its output)."""
    import re

    import numpy as np

    text = (REPO / "README.md").read_text()
    section = text[text.index("## The library"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    ds = namespace["ds"]
    assert ds.sizes["layer"] == 4 and (tmp_path / "ab.nc").is_file()
    assert np.all((ds["forgetting"].values >= 0) & (ds["forgetting"].values <= 1))
    np.testing.assert_allclose(ds["convergence_delta_forgetting"].values,
                               np.abs(ds["forgetting_check"].values - ds["forgetting"].values))
