"""The config schema's defaults: what validate_config fills in, and why it fills them itself rather
than through ``snakemake.utils.validate(config, schema, set_default=True)``."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO
from stirflow.config import SCHEMA_PATH, _fill_defaults, expand_runs, load_schema, run_training, validate_config


def leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b.0.c": leaf}`` for every leaf of nested mappings and lists (empty ones are leaves)."""
    if isinstance(value, (dict, list)) and value:
        items = value.items() if isinstance(value, dict) else enumerate(value)
        return {k: v for key, sub in items for k, v in leaves(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def test_schema_is_read_from_the_package():
    import stirflow

    assert Path(str(SCHEMA_PATH)).is_relative_to(Path(stirflow.__file__).parent)
    assert load_schema()["properties"].keys() == yaml.safe_load(SCHEMA_PATH.read_text())["properties"].keys()


def test_the_finetune_sections_settings_reach_every_run():
    """A run entry is filled with no setting of its own: the section's optimizer and augmentation
    (given or default) reach every run, a run's own override and a grid value merge key by key."""
    config = validate_config({"finetune": {
        "optimizer": {"name": "adamw", "lr": 0.5}, "augment": {"crop_padding": 3},
        "runs": [{"target": "digits"}, {"target": "digits", "init": "scratch", "optimizer": {"lr": 0.01}}],
        "grid": {"augment": [{"hflip": True}]}}})
    assert config["finetune"]["runs"][0] == {"target": "digits", "init": "pretrained", "task": "classification"}
    settings = {run["name"]: run_training(config, run) for run in expand_runs(config)}
    assert {name: s["optimizer"] for name, s in settings.items()} == {
        "digits-pretrained-augment_custom": {"name": "adamw", "lr": 0.5, "momentum": 0.9, "weight_decay": 0.0001},
        "digits-scratch-augment_custom": {"name": "adamw", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0001}}
    assert all((s["augment"]["crop_padding"], s["augment"]["hflip"]) == (3, True) for s in settings.values())


@pytest.mark.parametrize("path", ["config.yaml", "configs/smoke.yaml", "configs/paper.yaml"])
def test_shipped_configs_finetune_with_their_own_settings(path):
    raw = yaml.safe_load((REPO / path).read_text())
    config = validate_config(raw)
    for run in expand_runs(config):
        settings = run_training(config, run)
        for key in set(raw["finetune"]) & {"optimizer", "augment"}:
            given, used = leaves(raw["finetune"][key]), leaves(settings[key])
            assert {k: used.get(k) for k in given} == given, (run["name"], key)


# --------------------------------------------------------------------------- snakemake.utils.validate

def ours_filled(config: dict) -> dict:
    """``config`` filled by validate_config's default filler alone (no cross-key checks)."""
    schema, config = load_schema(), copy.deepcopy(config)
    _fill_defaults(config, schema, schema)
    return config


def snakemake_filled(config: dict, tmp_path: Path) -> dict:
    """``config`` filled by ``snakemake.utils.validate(set_default=True)`` with our schema (it takes
    a file, so the schema load_schema extends is written to one)."""
    from snakemake.utils import validate

    schema_file = tmp_path / "schema.yaml"
    schema_file.write_text(yaml.safe_dump(load_schema()))
    config = copy.deepcopy(config)
    validate(config, str(schema_file), set_default=True)
    return config


#: A config that sets pretrain.weights, so that snakemake gets past its null default (see below).
WITH_WEIGHTS = {"pretrain": {"weights": {"file": "w.pt"}}}


def test_snakemake_validate_fails_on_a_null_default_beside_an_object_with_defaults(tmp_path):
    """``pretrain.weights`` is ``null`` or an object whose keys have defaults: snakemake's default
    filler calls ``setdefault`` on the ``null`` while trying the object branch of the ``oneOf``."""
    assert ours_filled({})["pretrain"]["weights"] is None
    with pytest.raises(AttributeError, match="setdefault"):
        snakemake_filled({}, tmp_path)


def test_snakemake_validate_misses_the_defaults_of_referenced_definitions(tmp_path):
    """Where a key's default lives in the ``$ref``'d definition (``optimizer`` and ``augment`` of
    pretrain and finetune, ``{}`` filled with the definition's keys' defaults), snakemake fills
    nothing while the key is absent; every other default it fills as we do. When this test fails,
    snakemake may cover our schema: validate_config could hand the filling to it."""
    ours = leaves(ours_filled(WITH_WEIGHTS))
    theirs = leaves(snakemake_filled(WITH_WEIGHTS, tmp_path))
    assert theirs.items() <= ours.items()
    referenced = {f"{section}.{key}" for section in ("pretrain", "finetune") for key in ("optimizer", "augment")}
    missed = {".".join(key.split(".")[:2]) for key in ours.keys() - theirs.keys()}
    assert missed == referenced
    # given, the key is descended into through the $ref and its missing keys are filled
    given = {**WITH_WEIGHTS, "finetune": {"optimizer": {"lr": 0.5}}}
    assert snakemake_filled(given, tmp_path)["finetune"]["optimizer"] == ours_filled(given)["finetune"]["optimizer"]
