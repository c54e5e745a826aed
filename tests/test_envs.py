"""The conda environment of the rules (envs/*.yaml) against pyproject.toml, and its use by every rule."""

from __future__ import annotations

import re
import shutil

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from conftest import REPO, snakemake

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))
# conda-forge names of packages whose PyPI name differs
CONDA_TO_PYPI = {"pytorch": "torch", "matplotlib-base": "matplotlib"}
CONDA_ONLY = {"python", "pip"}  # the interpreter and the installer, not dependencies of the package


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def pyproject_requirements() -> dict[str, SpecifierSet]:
    reqs = [Requirement(r) for r in pyproject()["project"]["dependencies"]]
    return {canonicalize_name(r.name): r.specifier for r in reqs}


def conda_spec(entry: str) -> tuple[str, SpecifierSet]:
    """``"pytorch >=2.2"`` (a conda MatchSpec with a version range) → (``"pytorch"``, ``>=2.2``)."""
    m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*(.*?)\s*", entry)
    assert m, entry
    name, version = m.groups()
    assert "=" not in version or version.startswith((">", "<", "!", "==")), \
        f"{entry!r}: use an explicit comparison (>=, <, ==), not conda's fuzzy '='"
    return name, SpecifierSet(version.replace(" ", ""))


def env_requirements(path) -> tuple[dict[str, SpecifierSet], SpecifierSet | None, list[str]]:
    """(packages by PyPI name → version bounds, the python bound, channels) of a conda env file."""
    env = yaml.safe_load(path.read_text())
    packages: dict[str, SpecifierSet] = {}
    python = None
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for req in map(Requirement, dep.get("pip", [])):
                name = canonicalize_name(req.name)
                assert name not in packages, f"{path.name}: {name} listed twice"
                packages[name] = req.specifier
            continue
        name, spec = conda_spec(dep)
        if name == "python":
            python = spec
        if name in CONDA_ONLY:
            continue
        name = canonicalize_name(CONDA_TO_PYPI.get(name, name))
        assert name not in packages, f"{path.name}: {name} listed twice"
        packages[name] = spec
    return packages, python, env.get("channels", [])


def test_there_is_an_env_file():
    assert ENV_FILES, "envs/ has no environment file"


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_names_the_same_packages_and_bounds_as_pyproject(path):
    packages, python, channels = env_requirements(path)
    expected = pyproject_requirements()
    assert sorted(packages) == sorted(expected), (
        f"{path.name} and pyproject.toml name different packages: "
        f"only in the env {sorted(set(packages) - set(expected))}, only in pyproject {sorted(set(expected) - set(packages))}")
    for name, spec in expected.items():
        assert packages[name] == spec, f"{path.name}: {name} {packages[name]} but pyproject.toml says {spec}"
    assert python == SpecifierSet(pyproject()["project"]["requires-python"]), f"{path.name}: python {python}"
    assert channels[0] == "conda-forge" and set(channels) <= {"conda-forge", "nodefaults"}, channels


def rule_blocks() -> dict[str, str]:
    """Every rule of rules/*.smk and the Snakefile: {name: its text}."""
    blocks = {}
    for path in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]:
        parts = re.split(r"^rule (\w+):\n", path.read_text(), flags=re.M)
        for name, body in zip(parts[1::2], parts[2::2]):
            blocks[name] = re.split(r"^\S", body, maxsplit=1, flags=re.M)[0]  # up to the next top-level line
    return blocks


def test_every_rule_with_a_script_names_an_env():
    blocks = rule_blocks()
    assert "finetune" in blocks and "invert" in blocks, sorted(blocks)
    for name, body in blocks.items():
        if "script:" not in body:
            continue
        m = re.search(r"^\s+conda:\s*\n\s+\"([^\"]+)\"", body, flags=re.M)
        assert m, f"rule {name} has a script but no conda: environment"
        env = (REPO / "rules" / m.group(1)).resolve()
        assert env in [p.resolve() for p in ENV_FILES], f"rule {name}: {m.group(1)} is not a file in envs/"


CONDA = shutil.which("mamba") or shutil.which("conda")


@pytest.mark.slow
@pytest.mark.skipif(CONDA is None, reason="no conda or mamba on this machine")
def test_rules_run_in_the_conda_env(tmp_path):
    """Where conda exists: build the environment through Snakemake and run one rule in it."""
    snakemake(tmp_path, "--sdm", "conda", "--cores", "1", "data/digits/test.h5", timeout=3600)
    assert (tmp_path / "data" / "digits" / "test.h5").is_file()
