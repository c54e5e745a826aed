"""The package ships its data: a wheel built from the source tree, installed on its own (the source
tree deleted), corrupts with the frost photographs and validates configs with the schema read from
where it is installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import REPO


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> dict:
    """One wheel of the source tree, installed into a folder of its own; the copied source is gone.

    Returns ``target`` (the install folder), ``names`` (the wheel's members) and ``run(script)``,
    which runs Python code with only ``target`` added to the interpreter's path.
    """
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    wheels, target = tmp / "wheels", tmp / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
                   check=True, capture_output=True, text=True, cwd=tmp)
    (wheel,) = wheels.glob("stirflow-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True, cwd=tmp)
    shutil.rmtree(source)  # nothing may come from the source tree

    def run(script: str, stdin: str = "") -> list[str]:
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp, input=stdin,
                              env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.splitlines()

    return {"target": target, "names": names, "run": run}


def test_installed_wheel_reads_the_frost_photographs_from_its_own_location(installed_wheel):
    target, names = installed_wheel["target"], installed_wheel["names"]
    assert {f"stirflow/frost/frost{i}_x0.2.png" for i in (1, 2, 4, 5)} | {"stirflow/frost/README.md"} <= names
    script = (
        "import stirflow.corruptions as c, torch\n"
        "from importlib.resources import files\n"
        "print(c.__file__)\n"
        "print(files('stirflow') / 'frost')\n"
        "print(len(c.frost_photographs()), float(c.corrupt(torch.zeros(2, 3, 32, 32), 'frost', 1).max()))\n"
    )
    module, folder, result = installed_wheel["run"](script)
    assert module.startswith(str(target)) and folder.startswith(str(target))
    n, brightest = result.split()
    assert int(n) == 5 and 0 < float(brightest) <= 0.2  # frost at severity 1: 0.2 x a photograph


VALIDATE = """
import json, sys
import stirflow.config as c
from stirflow.config import ConfigError, validate_config
print(c.SCHEMA_PATH)
for config in json.loads(sys.stdin.read()):
    try:
        print(json.dumps(validate_config(config), sort_keys=True))
    except ConfigError as err:
        print("ConfigError", json.dumps(str(err)))
"""


def test_installed_wheel_validates_configs_with_its_own_schema(installed_wheel):
    """The embedded default config, the empty config (every key a default) and a bad one, validated
    by the installed package alone: the same results as the checkout's, the bad key named."""
    from stirflow.config import validate_config

    target, names = installed_wheel["target"], installed_wheel["names"]
    assert "stirflow/schemas/config.schema.yaml" in names
    default = yaml.safe_load((REPO / "config.yaml").read_text())
    configs = [default, {}, {"stir": {"steps": "many"}}]
    schema_path, *results = installed_wheel["run"](VALIDATE, stdin=json.dumps(configs))
    assert Path(schema_path).is_relative_to(target) and Path(schema_path).is_file()
    assert [json.loads(r) for r in results[:2]] == [json.loads(json.dumps(validate_config(c))) for c in configs[:2]]
    assert json.loads(results[0])["finetune"]["runs"][0]["init"] == "pretrained"  # a default was filled in
    assert results[2].startswith("ConfigError") and "stir.steps" in results[2]
