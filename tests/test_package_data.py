"""The package ships its data: a wheel built from the source tree, installed on its own, corrupts
with the frost photographs read from where it is installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from conftest import REPO


def test_installed_wheel_reads_the_frost_photographs_from_its_own_location(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
                   check=True, capture_output=True, text=True, cwd=tmp_path)
    (wheel,) = wheels.glob("stirflow-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"stirflow/frost/frost{i}_x0.2.png" for i in (1, 2, 4, 5)} | {"stirflow/frost/README.md"} <= names
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True, cwd=tmp_path)
    shutil.rmtree(source)  # nothing may come from the source tree
    script = (
        "import stirflow.corruptions as c, torch\n"
        "from importlib.resources import files\n"
        "print(c.__file__)\n"
        "print(files('stirflow') / 'frost')\n"
        "print(len(c.frost_photographs()), float(c.corrupt(torch.zeros(2, 3, 32, 32), 'frost', 1).max()))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    module, folder, result = proc.stdout.splitlines()
    assert module.startswith(str(target)) and folder.startswith(str(target))
    n, brightest = result.split()
    assert int(n) == 5 and 0 < float(brightest) <= 0.2  # frost at severity 1: 0.2 x a photograph
