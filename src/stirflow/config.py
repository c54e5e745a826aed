"""The pipeline's configuration: schema validation with defaults, and what the DAG derives from it.

:func:`validate_config` fills every default from ``schemas/config.schema.yaml``, then checks what a
schema cannot (names that must refer to each other, block indices against the model's depth,
timm model and corruption names). Every error is a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import copy
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
    "stir_epochs",
    "stir_blocks",
    "model_depth",
    "model_layers",
    "model_kwargs",
    "model_spec",
    "training_settings",
]

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


def load_schema(path: Path | None = None) -> dict[str, Any]:
    path = path or SCHEMA_PATH
    with open(path) as f:
        return yaml.safe_load(f)


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if not ref:
        return schema
    node: Any = root
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return _resolve(node, root)


def _fill_defaults(instance: Any, schema: Mapping[str, Any], root: Mapping[str, Any]) -> None:
    """Insert missing defaults of ``properties`` (recursively, through local ``$ref``s)."""
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
    given = copy.deepcopy(config)
    _fill_defaults(config, schema, schema)
    problems = _apply_aliases(config, given)
    _check_references(config, problems, _selection_key(given))
    return _sorted_keys(config)


#: (section, general name) → the older, ViT-only name of the same key. A config gives one of them;
#: the configured model's keyword arguments stay under the name given, the STIR layer selection
#: goes under the older name, which the rules read.
ALIASES = {("model", "kwargs"): "vit", ("stir", "layers"): "blocks", ("stir", "layers_per_job"): "blocks_per_job"}


def _apply_aliases(config: dict[str, Any], given: Mapping[str, Any]) -> list[str]:
    problems = []
    for (section, name), old in ALIASES.items():
        if name not in given.get(section, {}):
            continue
        if old in given[section]:
            problems.append(f"{section}.{name} and {section}.{old}: give one of them ({old} is the older name)")
        if section == "model":
            config[section].pop(old, None)  # the default ViT arguments filled in beside the given ones
        else:
            config[section][old] = config[section].pop(name)
    return problems


def _selection_key(given: Mapping[str, Any]) -> str:
    """The name under which the config gave the STIR layer selection (for messages)."""
    return "stir.layers" if "layers" in given.get("stir", {}) else "stir.blocks"


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


def _check_references(config: dict[str, Any], problems: list[str] | None = None,
                      selection_key: str = "stir.blocks") -> None:
    problems = list(problems or [])
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
    try:
        layers = model_layers(config)
    except ValueError as err:
        problems.append(str(err))
        layers = None
    names = []
    for k, run in enumerate(config["finetune"]["runs"]):
        if layers and run.get("task") == "reconstruction" and not layers["vision_transformer"]:
            problems.append(f"finetune.runs.{k}.task: reconstruction needs a VisionTransformer, and model.timm_name "
                            f"{config['model']['timm_name']!r} is a {layers['model']}")
        if run["target"] not in datasets:
            problems.append(f"finetune.runs.{k}.target: unknown data set {run['target']!r} (known: {', '.join(datasets)})")
        elif datasets[run["target"]]["kind"] == "cifar10_c":
            problems.append(f"finetune.runs.{k}.target: {run['target']!r} is a corrupted test set")
        names.append(run.get("name") or default_run_name(run))
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"finetune.runs: duplicate run names {duplicates} (give each run a distinct name)")
    blocks = config["stir"]["blocks"]
    if layers is not None and blocks != "all":
        bad = [b for b in blocks if not 1 <= b <= layers["depth"]]
        if bad:
            problems.append(f"{selection_key}: {bad} out of range: the model has {layers['layer_kind']}s "
                            f"1..{layers['depth']}")
    if layers is not None and config["stir"]["representation"] == "cls" and not layers["class_token"]:
        problems.append(f"stir.representation: 'cls' needs a model with a class token; {layers['model']} has none "
                        f"(use tokens or mean)")
    epochs = config["stir"]["epochs"]
    if isinstance(epochs, list):
        bad = [e for e in epochs if e > config["finetune"]["epochs"]]
        if bad:
            problems.append(f"stir.epochs: {bad} beyond finetune.epochs = {config['finetune']['epochs']}")
    bad = [c for c in config["robustness"]["corruptions"] if c not in CORRUPTIONS]
    if bad:
        problems.append(f"robustness.corruptions: unknown {bad} (known: {', '.join(CORRUPTIONS)})")
    ref = config["robustness"]["reference_run"]
    if ref is not None and ref not in names:
        problems.append(f"robustness.reference_run: no run named {ref!r} (runs: {', '.join(names)})")
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file and validate it."""
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    try:
        return validate_config(raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


# --------------------------------------------------------------------------- what the DAG derives

def default_run_name(run: Mapping[str, Any]) -> str:
    task = run.get("task", "classification")
    middle = "" if task == "classification" else "-recon"
    return f"{run['target']}{middle}-{run.get('init', 'pretrained')}"


def run_names(config: Mapping[str, Any]) -> list[str]:
    return [run.get("name") or default_run_name(run) for run in config["finetune"]["runs"]]


def run_config(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The run entry named ``name``, with its name filled in."""
    for run in config["finetune"]["runs"]:
        if (run.get("name") or default_run_name(run)) == name:
            return {**run, "name": name}
    raise KeyError(f"no run named {name!r}")


def model_kwargs(model: Mapping[str, Any]) -> dict[str, Any]:
    """The ``model`` section's constructor arguments: ``kwargs``, or ``vit`` (their older name)."""
    return dict(model.get("kwargs", model.get("vit")) or {})


def model_layers(config: Mapping[str, Any]) -> dict[str, Any]:
    """What the configured model's layers are (see :func:`stirflow.models.describe_timm_model`).

    Without ``model.timm_name`` (timm's VisionTransformer from the keyword arguments) this reads
    the arguments and imports nothing; a timm name is built on the meta device (no memory, no
    download), which imports torch and timm.
    """
    model = config["model"]
    kwargs = model_kwargs(model)
    if model.get("timm_name"):
        return _timm_layers(model["timm_name"], kwargs, "kwargs" if "kwargs" in model else "vit")
    depth = int(kwargs.get("depth", 12))
    return {"model": "VisionTransformer", "family": "VisionTransformer", "layer_kind": "block",
            "layer_modules": [f"blocks.{i}" for i in range(depth)], "depth": depth, "layout": "NLC",
            "sequential": True, "class_token": bool(kwargs.get("class_token", True)), "vision_transformer": True}


def _timm_layers(name: str, kwargs: dict[str, Any], key: str) -> dict[str, Any]:
    import timm

    if not timm.is_model(name.split(".")[0]):
        raise ValueError(f"model.timm_name: {name!r} is not a timm model")
    from .models import describe_timm_model

    try:
        return describe_timm_model(name, kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        raise ValueError(f"model.timm_name: {name!r} cannot be built with model.{key} = {kwargs} "
                         f"({type(err).__name__}: {err})") from None


def model_depth(config: Mapping[str, Any]) -> int:
    """Number of layers of the configured model (blocks of a ViT, stages of a hierarchical model)."""
    return model_layers(config)["depth"]


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


def model_spec(config: Mapping[str, Any], task: str, num_classes: int) -> dict[str, Any]:
    """The constructor arguments of the configured model (see :func:`stirflow.models.create_model`)."""
    model = config["model"]
    spec = {"timm_name": model["timm_name"], "kwargs": model_kwargs(model), "mean": list(model["mean"]),
            "std": list(model["std"]), "task": task, "num_classes": num_classes}
    if model.get("input_size") is not None:
        spec["input_size"] = model["input_size"]
    return spec


def training_settings(section: Mapping[str, Any]) -> dict[str, Any]:
    """The training keys of ``pretrain`` or ``finetune`` (the runs list and data choice left out)."""
    return {k: v for k, v in section.items() if k not in ("runs", "dataset", "weights")}
