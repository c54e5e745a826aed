"""The pipeline's configuration: schema validation with defaults, and what the DAG derives from it.

:func:`validate_config` fills every default from ``stirflow/schemas/config.schema.yaml`` (package
data, read with :mod:`importlib.resources`: validation works from an installed wheel as from a
checkout), then checks what a schema cannot (names that must refer to each other, block indices
against the model's depth, timm model and corruption names). Every error is a
:class:`ConfigError` naming the key.
"""

from __future__ import annotations

import copy
import itertools
from importlib.resources import files
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from .catalog import CORRUPTIONS

__all__ = [
    "ConfigError",
    "SCHEMA_PATH",
    "load_schema",
    "validate_config",
    "load_config",
    "run_names",
    "run_config",
    "run_training",
    "expand_runs",
    "stir_epochs",
    "stir_blocks",
    "model_depth",
    "model_spec",
    "training_settings",
    "convergence_sample",
    "convergence_blocks",
    "convergence_steps",
]

#: The config schema: package data, wherever the package is installed (a path-like ``Traversable``).
SCHEMA_PATH = files(__package__) / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


def load_schema(path: str | Path | None = None) -> dict[str, Any]:
    """The config schema, with each finetuning run and the grid allowed every finetuning setting.

    A run entry (``finetune.runs[k]``) and ``finetune.grid`` take the same keys as the finetune
    section's training settings, with the same types but no defaults (a key not given is the
    section's), so the schema file states each setting once. ``$ref``s are inlined before the
    defaults are dropped: a referenced definition's defaults (``optimizer: {}``, its ``lr``, ...)
    filled into a run entry would override the section's settings for every run.
    """
    schema = yaml.safe_load(Path(path).read_text() if path else SCHEMA_PATH.read_text())
    finetune = schema["properties"]["finetune"]["properties"]
    settings = {k: _without_defaults(_inline_refs(v, schema)) for k, v in finetune.items()
                if k not in FINETUNE_STRUCTURE}
    finetune["runs"]["items"]["properties"].update(settings)
    finetune["grid"]["properties"] = {k: {"type": "array", "minItems": 1, "items": v} for k, v in settings.items()}
    return schema


def _without_defaults(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _without_defaults(v) for k, v in schema.items() if k != "default"}
    if isinstance(schema, list):
        return [_without_defaults(v) for v in schema]
    return schema


def _inline_refs(schema: Any, root: Mapping[str, Any]) -> Any:
    """``schema`` with every local ``$ref`` replaced by what it points to (keywords beside it kept)."""
    if isinstance(schema, dict):
        inlined = {k: _inline_refs(v, root) for k, v in schema.items() if k != "$ref"}
        return {**_inline_refs(_resolve(schema, root), root), **inlined} if "$ref" in schema else inlined
    if isinstance(schema, list):
        return [_inline_refs(v, root) for v in schema]
    return schema


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if not ref:
        return schema
    node: Any = root
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return _resolve(node, root)


def _fill_defaults(instance: Any, schema: Mapping[str, Any], root: Mapping[str, Any]) -> None:
    """Insert missing defaults of ``properties`` (recursively, through local ``$ref``s).

    Not ``snakemake.utils.validate(config, schema, set_default=True)``: on this schema it raises
    on ``pretrain.weights``' ``null`` default (it calls ``setdefault`` on the ``null`` while trying
    the object branch of the ``oneOf``), and it fills no default that lives in a ``$ref``'d
    definition (``optimizer: {}`` and its keys' defaults) while the key is absent
    (tests/test_schema.py shows both). It also takes a schema file, not the schema
    :func:`load_schema` extends, and reports the first error only.
    """
    schema = _resolve(schema, root)
    if "items" in schema and isinstance(instance, list):
        for item in instance:
            _fill_defaults(item, schema["items"], root)
    if not isinstance(instance, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        resolved = _resolve(sub, root)
        holder = sub if "default" in sub else resolved
        if key not in instance and "default" in holder:
            instance[key] = copy.deepcopy(holder["default"])
        if key in instance:
            _fill_defaults(instance[key], resolved, root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in schema.get("properties", {}):
                _fill_defaults(value, extra, root)
    for branch in schema.get("oneOf", []):
        branch = _resolve(branch, root)
        if branch.get("type") == "object" and isinstance(instance, dict):
            _fill_defaults(instance, branch, root)


def _key_path(path: Iterable[Any]) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def validate_config(config: Mapping[str, Any], schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A validated copy of ``config``, every default filled in, keys sorted; raises :class:`ConfigError`."""
    import jsonschema

    schema = schema or load_schema()
    config = copy.deepcopy(dict(config))
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError("invalid configuration:\n" + "\n".join(_explain(e) for e in errors))
    _fill_defaults(config, schema, schema)
    _check_references(config)
    return _sorted_keys(config)


def _sorted_keys(value: Any) -> Any:
    """``value`` with every mapping's keys in sorted order (lists keep theirs).

    Rules get config sections as ``params:``, which Snakemake records and compares by their
    ``repr``: without a canonical order, reordering keys in a config file, or spelling out a
    default, would look like a change and rerun jobs.
    """
    if isinstance(value, dict):
        return {k: _sorted_keys(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(v) for v in value]
    return value


def _explain(error) -> str:
    key = _key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        if extra:
            parent = key if error.absolute_path else ""
            names = ", ".join(f"{parent + '.' if parent else ''}{k}" for k in extra)
            return f"  unknown key {names} (allowed here: {', '.join(sorted(error.schema.get('properties', {})))})"
    if error.validator == "oneOf":
        return f"  {key}: {error.instance!r} is not valid: {error.schema.get('description', 'see the schema')}"
    return f"  {key}: {error.message}"


def _check_references(config: dict[str, Any]) -> None:
    problems: list[str] = []
    datasets = config["datasets"]
    robustness = config["robustness"]
    for name, spec in datasets.items():
        for key in ("corruptions", "severities"):
            if key in spec and spec["kind"] != "cifar10_c":
                problems.append(f"datasets.{name}.{key}: only data sets of kind cifar10_c take {key}")
        if spec.get("corrupted") is not None:
            other = datasets.get(spec["corrupted"])
            if other is None or other["kind"] != "cifar10_c":
                problems.append(f"datasets.{name}.corrupted: {spec['corrupted']!r} is not a data set of kind cifar10_c")
                continue
            # the corrupted source must hold every corruption × severity the robustness stage asks for
            for key in ("corruptions", "severities"):
                if key in other:
                    lacking = [c for c in robustness[key] if c not in other[key]]
                    if lacking:
                        problems.append(f"robustness.{key}: {lacking} not in datasets.{spec['corrupted']}.{key}, "
                                        f"the corrupted test set of {name!r}")
    pre = config["pretrain"]
    if pre["weights"] is None:
        if pre["dataset"] not in datasets:
            problems.append(f"pretrain.dataset: unknown data set {pre['dataset']!r} (known: {', '.join(datasets)})")
        elif datasets[pre["dataset"]]["kind"] == "cifar10_c":
            problems.append(f"pretrain.dataset: {pre['dataset']!r} is a corrupted test set, not a training set")
    else:
        w = pre["weights"]
        if not (w.get("timm_pretrained") or w.get("file")):
            problems.append("pretrain.weights: give timm_pretrained: true or a file")
        if w.get("timm_pretrained") and not config["model"]["timm_name"]:
            problems.append("pretrain.weights.timm_pretrained: needs model.timm_name")
        if w.get("file") and not config["model"]["timm_name"]:
            problems.append("pretrain.weights.file: needs model.timm_name (the weights' architecture)")
    for k, run in enumerate(config["finetune"]["runs"]):
        if run["target"] not in datasets:
            problems.append(f"finetune.runs.{k}.target: unknown data set {run['target']!r} (known: {', '.join(datasets)})")
        elif datasets[run["target"]]["kind"] == "cifar10_c":
            problems.append(f"finetune.runs.{k}.target: {run['target']!r} is a corrupted test set")
    names = run_names(config)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"finetune.runs: duplicate run names {duplicates} (give each run a distinct name, or "
                        f"vary a setting with finetune.grid)")
    try:
        depth = model_depth(config)
    except ValueError as err:
        problems.append(str(err))
        depth = None
    blocks = config["stir"]["blocks"]
    if depth is not None and blocks != "all":
        bad = [b for b in blocks if not 1 <= b <= depth]
        if bad:
            problems.append(f"stir.blocks: {bad} out of range: the model has blocks 1..{depth}")
    epochs = config["stir"]["epochs"]
    if isinstance(epochs, list):
        bad = [e for e in epochs if e > config["finetune"]["epochs"]]
        if bad:
            problems.append(f"stir.epochs: {bad} beyond finetune.epochs = {config['finetune']['epochs']}")
    bad = [c for c in config["robustness"]["corruptions"] if c not in CORRUPTIONS]
    if bad:
        problems.append(f"robustness.corruptions: unknown {bad} (known: {', '.join(CORRUPTIONS)})")
    problems += _check_convergence(config, names, depth)
    similarity = config["stir"]["similarity"]
    if config["stir"]["image_bootstrap"] and (similarity["kind"] != "linear" or similarity["debiased"]):
        problems.append("stir.image_bootstrap: implemented for stir.similarity kind linear, not debiased "
                        "(set image_bootstrap: 0 for other kinds)")
    ref = config["robustness"]["reference_run"]
    if ref is not None and ref not in names:
        problems.append(f"robustness.reference_run: no run named {ref!r} (runs: {', '.join(names)})")
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))


def _check_convergence(config: Mapping[str, Any], names: list[str], depth: int | None) -> list[str]:
    conv = config["convergence"]
    if not conv["check"]:
        return []
    problems = []
    if conv["runs"] != "all":
        unknown = [r for r in conv["runs"] if r not in names]
        if unknown:
            problems.append(f"convergence.runs: no runs named {unknown} (runs: {', '.join(names)})")
    if conv["epochs"] != "last":
        scored = stir_epochs(config)
        bad = [e for e in conv["epochs"] if e not in scored]
        if bad:
            problems.append(f"convergence.epochs: {bad} are not scored with STIR (stir.epochs gives {scored})")
    if conv["blocks"] != "all" and depth is not None:
        chosen = stir_blocks(config)
        bad = [b for b in conv["blocks"] if b not in chosen]
        if bad:
            problems.append(f"convergence.blocks: {bad} are not among the STIR blocks {chosen}")
    return problems


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file and validate it."""
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    try:
        return validate_config(raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


# --------------------------------------------------------------------------- what the DAG derives

#: Keys of a run entry that say what the run is; every other key overrides a finetuning setting.
RUN_IDENTITY = ("name", "target", "init", "task")
#: Keys of the finetune section that are not training settings.
FINETUNE_STRUCTURE = ("runs", "seeds", "grid")


def default_run_name(run: Mapping[str, Any]) -> str:
    task = run.get("task", "classification")
    middle = "" if task == "classification" else "-recon"
    return f"{run['target']}{middle}-{run.get('init', 'pretrained')}"


def _label(value: Any) -> str:
    """A setting's value as it appears in a run name (a mapping by its ``name``)."""
    if isinstance(value, Mapping):
        return str(value.get("name", "custom"))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).replace(" ", "")


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override``'s keys; nested mappings (optimizer, augment) merge key by key."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and "name" not in value:
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def expand_runs(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every finetuning run: each entry of ``finetune.runs`` × the ``finetune.grid`` × its seeds.

    A run is its identity (``target``, ``init``, ``task``, ``name``) plus the settings it changes
    (``varied``: its own overrides and its grid values) and its ``seed``. Names are derived and
    stable: ``<target>[-recon]-<init>`` (or the entry's ``name``), then ``-<key>_<value>`` for each
    grid key whose value differs from the finetune section's, then ``-s<seed>`` unless the seed is
    0 — so adding a grid value or a seed never renames an existing run.
    """
    finetune = config["finetune"]
    base = training_settings(finetune)
    grid = finetune.get("grid") or {}
    keys = list(grid)
    runs = []
    for entry in finetune["runs"]:
        overrides = {k: v for k, v in entry.items() if k not in RUN_IDENTITY and k != "seed"}
        seeds = [entry["seed"]] if "seed" in entry else list(finetune.get("seeds") or [base.get("seed", 0)])
        for values in itertools.product(*(grid[k] for k in keys)):
            combo = dict(zip(keys, values))
            name = entry.get("name") or default_run_name(entry)
            for key, value in combo.items():
                if _merge(base, overrides).get(key) != value:
                    name += f"-{key}_{_label(value)}"
            for seed in seeds:
                varied = {**overrides, **combo}
                runs.append({"name": name + (f"-s{seed}" if seed else ""), "condition": name,
                             "target": entry["target"], "init": entry.get("init", "pretrained"),
                             "task": entry.get("task", "classification"), "seed": int(seed), "varied": varied})
    return runs


def run_names(config: Mapping[str, Any]) -> list[str]:
    return [run["name"] for run in expand_runs(config)]


def run_config(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The run named ``name`` (see :func:`expand_runs`)."""
    for run in expand_runs(config):
        if run["name"] == name:
            return run
    raise KeyError(f"no run named {name!r}")


def run_training(config: Mapping[str, Any], run: Mapping[str, Any]) -> dict[str, Any]:
    """The finetuning settings of ``run``: the finetune section's, with the run's own and its seed."""
    return _sorted_keys(_merge(training_settings(config["finetune"]), {**run["varied"], "seed": run["seed"]}))


def model_depth(config: Mapping[str, Any]) -> int:
    """Number of blocks of the configured ViT (from the kwargs, or from timm's config for a named model)."""
    model = config["model"]
    if model.get("timm_name"):
        import timm

        name = model["timm_name"]
        if not timm.is_model(name.split(".")[0]):
            raise ValueError(f"model.timm_name: {name!r} is not a timm model")
        if "depth" in model["vit"]:
            return int(model["vit"]["depth"])
        return _timm_depth(name)
    return int(model["vit"].get("depth", 12))


def _timm_depth(name: str) -> int:
    import torch
    import timm

    # Building on the meta device allocates nothing, so even ViT-H costs no memory here.
    with torch.device("meta"):
        return len(timm.create_model(name.split(".")[0], pretrained=False).blocks)


def stir_blocks(config: Mapping[str, Any]) -> list[int]:
    blocks = config["stir"]["blocks"]
    return list(range(1, model_depth(config) + 1)) if blocks == "all" else sorted(blocks)


def stir_epochs(config: Mapping[str, Any]) -> list[int]:
    """Epochs scored with STIR: always including 0 (the reference) and the last epoch."""
    last = int(config["finetune"]["epochs"])
    sel = config["stir"]["epochs"]
    if sel == "all":
        chosen = set(range(last + 1))
    elif isinstance(sel, list):
        chosen = set(sel)
    else:
        chosen = set(range(min(sel["first"], last + 1))) | set(range(0, last + 1, sel["every"]))
    return sorted(chosen | {0, last})


def convergence_sample(config: Mapping[str, Any]) -> list[tuple[str, int]]:
    """The (run, epoch) pairs the convergence check scores again (none when it is off)."""
    conv = config["convergence"]
    if not conv["check"]:
        return []
    runs = run_names(config) if conv["runs"] == "all" else list(conv["runs"])
    epochs = [int(config["finetune"]["epochs"])] if conv["epochs"] == "last" else sorted(conv["epochs"])
    return [(r, e) for r in runs for e in epochs]


def convergence_blocks(config: Mapping[str, Any]) -> list[int]:
    blocks = config["convergence"]["blocks"]
    return stir_blocks(config) if blocks == "all" else sorted(blocks)


def convergence_steps(config: Mapping[str, Any]) -> int:
    return int(config["stir"]["steps"]) * int(config["convergence"]["factor"])


def model_spec(config: Mapping[str, Any], task: str, num_classes: int) -> dict[str, Any]:
    """The constructor arguments of the configured model (see :func:`stirflow.models.create_model`)."""
    model = config["model"]
    return {"timm_name": model["timm_name"], "vit": dict(model["vit"]), "mean": list(model["mean"]),
            "std": list(model["std"]), "task": task, "num_classes": num_classes}


def training_settings(section: Mapping[str, Any]) -> dict[str, Any]:
    """The training keys of ``pretrain`` or ``finetune`` (runs, replicates, grid and data choice left out)."""
    return {k: v for k, v in section.items() if k not in (*FINETUNE_STRUCTURE, "dataset", "weights")}
