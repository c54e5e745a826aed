"""The pipeline's configuration: schema validation with defaults, and what the DAG derives from it.

:func:`validate_config` fills every default from ``stirflow/schemas/config.schema.yaml`` (package
data, read with :mod:`importlib.resources`: validation works from an installed wheel as from a
checkout), then checks what a schema cannot (names that must refer to each other, block indices
against the model's depth, timm model and corruption names). Every error is a
:class:`ConfigError` naming the key.
"""

from __future__ import annotations

import ast
import copy
import functools
import importlib.util
import itertools
import json
from importlib.resources import files
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from .catalog import AXIS_FIGURES, CORRUPTIONS, FIGURES

__all__ = [
    "ConfigError",
    "DEFAULT_MODEL",
    "SCHEMA_PATH",
    "load_schema",
    "validate_config",
    "load_config",
    "run_names",
    "run_config",
    "run_training",
    "expand_runs",
    "stir_epochs",
    "evaluated_epochs",
    "stir_blocks",
    "model_depth",
    "model_layers",
    "model_kwargs",
    "model_spec",
    "model_names",
    "model_section",
    "models_in_use",
    "run_blocks",
    "pretraining_models",
    "pretrain_dir",
    "training_settings",
    "varied_axes",
    "figure_names",
    "uses_pretrained_init",
    "needs_pretraining",
    "vit_arguments",
    "check_weights_file",
    "convergence_sample",
    "convergence_blocks",
    "convergence_steps",
]

#: The config schema: package data, wherever the package is installed (a path-like ``Traversable``).
SCHEMA_PATH = files(__package__) / "schemas" / "config.schema.yaml"
#: The name of the ``model`` section among the architectures (``models`` holds the others).
DEFAULT_MODEL = "default"


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
    # every entry of `models` is a model section: the same keys and defaults as `model`
    schema["properties"]["models"]["additionalProperties"] = {
        k: v for k, v in copy.deepcopy(schema["properties"]["model"]).items() if k != "default"}
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
    for model, section in given.get("models", {}).items():  # each entry of `models` is a model section
        if "kwargs" in section:
            if "vit" in section:
                problems.append(f"models.{model}.kwargs and models.{model}.vit: give one of them (vit is the older name)")
            config["models"][model].pop("vit", None)
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
    if needs_pretraining(config):  # the pretraining settings matter only to a pretraining run
        if pre["dataset"] not in datasets:
            problems.append(f"pretrain.dataset: unknown data set {pre['dataset']!r} (known: {', '.join(datasets)})")
        elif datasets[pre["dataset"]]["kind"] == "cifar10_c":
            problems.append(f"pretrain.dataset: {pre['dataset']!r} is a corrupted test set, not a training set")
    elif pre["weights"] is not None and uses_pretrained_init(config):  # weights that no run loads are not checked
        problems += _check_weights(config)
    unknown = _unknown_models(config)
    if unknown:  # every later check needs each run's model
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems + unknown))
    layers: dict[str, dict[str, Any]] = {}  # what each model's layers are, for the models that can be built
    for model in model_names(config):
        model_problems = _check_model(config, model)
        problems += model_problems
        if not model_problems:
            try:
                layers[model] = model_layers(config, model)
            except ValueError as err:
                problems.append(str(err))
    runs = expand_runs(config)
    for k, entry in enumerate(config["finetune"]["runs"]):
        if entry["target"] not in datasets:
            problems.append(f"finetune.runs.{k}.target: unknown data set {entry['target']!r} (known: {', '.join(datasets)})")
        elif datasets[entry["target"]]["kind"] == "cifar10_c":
            problems.append(f"finetune.runs.{k}.target: {entry['target']!r} is a corrupted test set")
        for model in dict.fromkeys(r["model"] for r in runs if r["entry"] == k):
            found = layers.get(model)
            if found and entry.get("task") == "reconstruction" and not found["vision_transformer"]:
                problems.append(f"finetune.runs.{k}.task: reconstruction needs a VisionTransformer, and "
                                f"{_model_key(model)}.timm_name {model_section(config, model)['timm_name']!r} "
                                f"is a {found['model']}")
    names = [r["name"] for r in runs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"finetune.runs: duplicate run names {duplicates} (give each run a distinct name, or "
                        f"vary a setting with finetune.grid)")
    if needs_pretraining(config):
        problems += _check_training("pretrain", pre)
    problems += _check_training("finetune", config["finetune"])
    for run in runs:
        where = f"finetune (run {run['name']})"
        if set(run["varied"]) - {"model"}:  # a run's own settings or grid values must fit together too
            problems += [p for p in _check_training(where, run_training(config, run)) if p not in problems]
        if "epochs" in run["varied"]:
            problems.append(f"{where}.epochs: every run trains for finetune.epochs (the DAG's checkpoints are "
                            f"the same for all runs); vary other settings per run or in finetune.grid")
    blocks = config["stir"]["blocks"]
    for model in models_in_use(config):
        found = layers.get(model)
        if found is None:
            continue
        owner = "the model" if len(models_in_use(config)) == 1 else f"model {model!r} ({_model_key(model)})"
        if blocks != "all":
            bad = [b for b in blocks if not 1 <= b <= found["depth"]]
            if bad:  # one list for every model: it must fit the shallowest
                problems.append(f"{selection_key}: {bad} out of range: {owner} has {found['layer_kind']}s "
                                f"1..{found['depth']}")
        if config["stir"]["representation"] == "cls" and not found["class_token"]:
            problems.append(f"stir.representation: 'cls' needs a model with a class token; {found['model']} "
                            f"({owner}) has none (use tokens or mean)")
    for section in ("stir", "robustness", "adversarial"):
        epochs = config[section]["epochs"]
        if isinstance(epochs, list):
            bad = [e for e in epochs if e > config["finetune"]["epochs"]]
            if bad:
                problems.append(f"{section}.epochs: {bad} beyond finetune.epochs = {config['finetune']['epochs']}")
    bad = [c for c in config["robustness"]["corruptions"] if c not in CORRUPTIONS]
    if bad:
        problems.append(f"robustness.corruptions: unknown {bad} (known: {', '.join(CORRUPTIONS)})")
    problems += _check_convergence(config, names, set(layers) >= set(models_in_use(config)))
    similarity = config["stir"]["similarity"]
    if config["stir"]["image_bootstrap"] and (similarity["kind"] != "linear" or similarity["debiased"]):
        problems.append("stir.image_bootstrap: implemented for stir.similarity kind linear, not debiased "
                        "(set image_bootstrap: 0 for other kinds)")
    ref = config["robustness"]["reference_run"]
    if ref is not None and ref not in names:
        problems.append(f"robustness.reference_run: no run named {ref!r} (runs: {', '.join(names)})")
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))


def _check_weights(config: Mapping[str, Any]) -> list[str]:
    """``pretrain.weights`` against the models of the pretrained runs, which all load them."""
    w, problems = config["pretrain"]["weights"], []
    if w.get("file") and not Path(w["file"]).is_file():
        problems.append(f"pretrain.weights.file: {w['file']} not found")
    if not (w.get("timm_pretrained") or w.get("file")):
        problems.append("pretrain.weights: give timm_pretrained: true or a file")
    models = pretrained_models(config)
    if w.get("file") and len(models) > 1:
        problems.append(f"pretrain.weights.file: one file holds one architecture's weights, and pretrained runs "
                        f"use the models {models} (give timm_pretrained: true, or pretrain them)")
    for model in models:
        if model not in model_names(config) or model_section(config, model)["timm_name"]:
            continue
        key = _model_key(model)
        if w.get("timm_pretrained"):
            problems.append(f"pretrain.weights.timm_pretrained: needs {key}.timm_name")
        if w.get("file"):
            problems.append(f"pretrain.weights.file: needs {key}.timm_name (the weights' architecture)")
    return problems


def _unknown_models(config: Mapping[str, Any]) -> list[str]:
    """Runs, the finetune section or the grid naming a model that is neither `default` nor in `models`."""
    known = model_names(config)
    problems = []
    if "default" in config.get("models", {}):
        problems.append("models.default: `default` is the name of the `model` section; give this one another name")
    finetune = config["finetune"]
    where = [("finetune.model", finetune["model"])]
    where += [(f"finetune.runs.{k}.model", run["model"]) for k, run in enumerate(finetune["runs"]) if "model" in run]
    where += [("finetune.grid.model", m) for m in (finetune.get("grid") or {}).get("model", [])]
    for key, model in where:
        if model not in known:
            problems.append(f"{key}: unknown model {model!r} (models: {', '.join(known)})")
    return problems


#: The parameters each learning-rate schedule takes (schemas/config.schema.yaml, definitions.schedule).
SCHEDULE_PARAMETERS = {"cosine": {"min_factor"}, "linear": {"min_factor"}, "constant": set(),
                       "step": {"milestones", "gamma"}, "exponential": {"gamma"}}


def _check_training(name: str, section: Mapping[str, Any]) -> list[str]:
    """The training settings of ``pretrain`` or ``finetune`` that fit the schema but not each other."""
    problems = []
    if section["warmup_epochs"] and section["warmup_steps"]:
        problems.append(f"{name}.warmup_steps: give the warm-up in epochs or in steps, not both "
                        f"({name}.warmup_epochs = {section['warmup_epochs']})")
    schedule = section["schedule"]
    schedule = {"name": schedule} if isinstance(schedule, str) else schedule
    kind = schedule["name"]
    misplaced = sorted(set(schedule) - {"name"} - SCHEDULE_PARAMETERS[kind])
    if misplaced:
        problems.append(f"{name}.schedule: {', '.join(misplaced)} not a parameter of the {kind} schedule "
                        f"(it takes: {', '.join(sorted(SCHEDULE_PARAMETERS[kind])) or 'none'})")
    if kind == "step" and "milestones" not in schedule:
        problems.append(f"{name}.schedule.milestones: the step schedule needs the epochs after which the lr drops "
                        f"(e.g. {{name: step, milestones: [30, 60], gamma: 0.1}})")
    if kind == "exponential" and "gamma" not in schedule:
        problems.append(f"{name}.schedule.gamma: the exponential schedule needs its factor per epoch")
    late = [m for m in schedule.get("milestones", []) if m >= section["epochs"]]
    if late:
        problems.append(f"{name}.schedule.milestones: {late} not before the last epoch ({name}.epochs = {section['epochs']})")
    crop = section["augment"]["random_resized_crop"]
    if crop is not None:
        for key in ("scale", "ratio"):
            low, high = crop[key]
            if low > high:
                problems.append(f"{name}.augment.random_resized_crop.{key}: {crop[key]} is not [min, max]")
    return problems


# --------------------------------------------------------------------------- the model spec

def _check_model(config: Mapping[str, Any], name: str = "default") -> list[str]:
    """What would stop the model ``name`` (``default``: the ``model`` section, else an entry of
    ``models``) from being built, each problem naming its key.

    Without ``timm_name`` the check is arithmetic on ``vit`` and the defaults of timm's
    VisionTransformer, read from timm's source (:func:`vit_arguments`), so it imports no torch. A
    named model is built on the meta device (no memory, no weights), which needs timm and torch.
    """
    model = model_section(config, name)
    kwargs = model_kwargs(model)
    key = "kwargs" if "kwargs" in model else "vit"
    problems = [p.replace("model.vit.", f"model.{key}.").replace("model.vit =", f"model.{key} =")
                for p in _model_problems(model, kwargs)]
    return [_in_section(p, name) for p in problems]


def _model_key(name: str) -> str:
    """The config key of the model section ``name``: ``model`` or ``models.<name>``."""
    return "model" if name == DEFAULT_MODEL else f"models.{name}"


def _in_section(message: str, name: str) -> str:
    """A message about the ``model`` section's keys, about those of the section ``name``."""
    import re

    return message if name == DEFAULT_MODEL else re.sub(r"\bmodel\.(?=\w)", f"{_model_key(name)}.", message)


def _model_problems(model: Mapping[str, Any], kwargs: dict[str, Any]) -> list[str]:
    problems = []
    if "num_classes" in kwargs:
        problems.append("model.vit.num_classes: set from the target data set; leave it out")
    if kwargs.get("in_chans", 3) != 3:
        problems.append(f"model.vit.in_chans: {kwargs['in_chans']}, but images have 3 channels")
    if problems:
        return problems
    if not model["timm_name"]:
        defaults = vit_arguments()
        unknown = sorted(set(kwargs) - set(defaults))
        if unknown:
            return [f"model.vit.{key}: not an argument of timm's VisionTransformer (its arguments: "
                    f"{', '.join(defaults)})" for key in unknown]
        return _vit_shape_problems({**defaults, **kwargs}, given=set(kwargs))
    return _check_timm_model(model["timm_name"], kwargs)


def _pairs(value: Any) -> tuple[int, int] | None:
    """An int or an (h, w) pair as (h, w); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    return None


def _vit_shape_problems(settings: Mapping[str, Any], given: set[str], where: str = "") -> list[str]:
    """Patch size against image size, heads against width, depth: the constraints timm's ViT has.

    ``settings``: img_size, patch_size, embed_dim, num_heads, depth (given or default); a value the
    user did not give is named as the default (of ``where``, timm's VisionTransformer by default).
    """
    def shown(key: str) -> str:  # the value, and where it came from when the user did not give it
        return f"{settings[key]!r}" + ("" if key in given else f" ({where or 'the'} default)")

    problems = []
    img, patch = _pairs(settings.get("img_size")), _pairs(settings.get("patch_size"))
    for key, value in (("img_size", img), ("patch_size", patch)):
        if value is None or min(value) < 1:
            problems.append(f"model.vit.{key}: {settings.get(key)!r} is not a positive int or [height, width]")
    if img and patch and min(img) > 0 and min(patch) > 0 and (img[0] % patch[0] or img[1] % patch[1]):
        problems.append(f"model.vit.patch_size: {shown('patch_size')} does not divide model.vit.img_size = {shown('img_size')}")
    width, heads, depth = settings.get("embed_dim"), settings.get("num_heads"), settings.get("depth")
    positive = {}
    for key, value in (("embed_dim", width), ("num_heads", heads), ("depth", depth)):
        positive[key] = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        if not positive[key]:
            problems.append(f"model.vit.{key}: {value!r} is not a positive integer")
    if positive["embed_dim"] and positive["num_heads"] and width % heads:
        problems.append(f"model.vit.num_heads: {shown('num_heads')} does not divide model.vit.embed_dim = {shown('embed_dim')}")
    return problems


@functools.lru_cache(maxsize=1)
def vit_arguments() -> dict[str, Any]:
    """The keyword arguments of timm's ``VisionTransformer`` with their defaults, from timm's source.

    Parsing the class's signature (a fraction of a second) instead of importing timm keeps torch
    out of building the DAG. A default that is not a literal (a layer class) maps to None. Falls
    back to importing timm if its source does not have the class where expected.
    """
    spec = importlib.util.find_spec("timm")  # finds the package without running it
    source = Path(spec.origin).parent / "models" / "vision_transformer.py" if spec and spec.origin else None
    try:
        tree = ast.parse(source.read_text())
        init = next(f for c in tree.body if isinstance(c, ast.ClassDef) and c.name == "VisionTransformer"
                    for f in c.body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
    except (AttributeError, OSError, StopIteration, SyntaxError):
        import inspect

        from timm.models.vision_transformer import VisionTransformer

        params = list(inspect.signature(VisionTransformer.__init__).parameters.values())[1:]
        return {p.name: (None if p.default is inspect.Parameter.empty else p.default) for p in params}
    args = init.args.args[1:] + init.args.kwonlyargs
    defaults = [None] * (len(init.args.args) - 1 - len(init.args.defaults)) + list(init.args.defaults)
    defaults += list(init.args.kw_defaults)

    def literal(node):
        try:
            return ast.literal_eval(node) if node is not None else None
        except ValueError:
            return None

    return {a.arg: literal(d) for a, d in zip(args, defaults)}


@functools.lru_cache(maxsize=8)
def _meta_model(name: str, kwargs_json: str):
    """timm's ``name`` built on the meta device with ``kwargs`` (JSON): no memory, no weights."""
    import warnings

    import timm
    import torch

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return timm.create_model(name, pretrained=False, **json.loads(kwargs_json))


def _check_timm_model(name: str, kwargs: dict[str, Any]) -> list[str]:
    import timm

    base, _, tag = name.partition(".")
    if not timm.is_model(base):
        return [f"model.timm_name: {name!r} is not a timm model (see timm.list_models())"]
    if tag and name not in timm.list_pretrained(f"{base}.*"):
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{base}.*")]
        return [f"model.timm_name: timm has no weights {tag!r} for {base} (it has: {', '.join(tags) or 'none'})"]
    default = _meta_model(base, "{}")
    settings = _vit_settings(default)
    if settings is not None:  # a plain ViT: name the key that breaks it
        problems = _vit_shape_problems({**settings, **kwargs}, given=set(kwargs), where=f"{base}'s")
        if problems:
            return problems
    try:
        _meta_model(base, json.dumps(kwargs, sort_keys=True))
    except (AssertionError, TypeError, ValueError, RuntimeError, KeyError) as err:
        return [f"model.timm_name: {name!r} cannot be built with model.vit = {kwargs} ({type(err).__name__}: {err})"]
    return []


def _vit_settings(vit) -> dict[str, Any] | None:
    """img_size, patch_size, embed_dim, num_heads, depth of a built timm VisionTransformer (None for other models)."""
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(vit, VisionTransformer):
        return None
    return {"img_size": list(vit.patch_embed.img_size), "patch_size": list(vit.patch_embed.patch_size),
            "embed_dim": vit.embed_dim, "num_heads": vit.blocks[0].attn.num_heads, "depth": len(vit.blocks)}


def check_weights_file(config: Mapping[str, Any]) -> None:
    """Load ``pretrain.weights.file`` into the configured model on the meta device: a file that is not
    weights, or weights of another architecture, raise :class:`ConfigError` naming the key.

    The file is read (seconds for a large ``.pth``; a ``.safetensors`` file is mapped, not read),
    so the workflow calls this once per invocation, not in every job.
    """
    weights = config["pretrain"]["weights"]
    if not (weights and weights.get("file")) or not uses_pretrained_init(config):
        return
    import warnings

    import torch

    from .models import create_model

    # one architecture loads the file (validation refuses a file for several)
    spec = model_spec(config, "classification", 2, pretrained_models(config)[0])  # a new head: any class count fits
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # copying into meta tensors is a no-op, and torch says so
            create_model(spec, weights_file=weights["file"])
    except Exception as err:  # noqa: BLE001 - whatever the loader raises, the file does not fit
        lines = str(err).strip().splitlines()  # a state dict that does not fit lists every tensor: show a few
        shown = "\n    ".join(line.strip() for line in lines[:4]) + (f"\n    ... ({len(lines) - 4} more lines)"
                                                                   if len(lines) > 4 else "")
        raise ConfigError(f"invalid configuration:\n  pretrain.weights.file: {shown}") from None


def _check_convergence(config: Mapping[str, Any], names: list[str], built: bool) -> list[str]:
    """``built``: every model in use could be described (its layers are known)."""
    conv = config["convergence"]
    if not conv["check"]:
        return []
    problems = []
    if conv["runs"] != "all":
        unknown = [r for r in conv["runs"] if r not in names]
        if unknown:
            problems.append(f"convergence.runs: no runs named {unknown} (runs: {', '.join(names)})")
            return problems
    if conv["epochs"] != "last":
        scored = stir_epochs(config)
        bad = [e for e in conv["epochs"] if e not in scored]
        if bad:
            problems.append(f"convergence.epochs: {bad} are not scored with STIR (stir.epochs gives {scored})")
    if conv["blocks"] != "all" and built:
        checked = {r for r, _ in convergence_sample(config)}
        for model in dict.fromkeys(r["model"] for r in expand_runs(config) if r["name"] in checked):
            chosen = stir_blocks(config, model)
            bad = [b for b in conv["blocks"] if b not in chosen]
            if bad:
                where = "" if model == DEFAULT_MODEL else f" of model {model!r}"
                problems.append(f"convergence.blocks: {bad} are not among the STIR blocks{where} {chosen}")
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
#: Run settings (of the finetune section, a run, the grid) that say what a run is, not how it trains:
#: the finetune job gets them as parameters of their own, so that adding one reruns nothing.
NOT_TRAINING = ("model",)


def default_run_name(run: Mapping[str, Any], model: str = DEFAULT_MODEL) -> str:
    """``<target>[-recon]-<init>``, then ``-model_<name>`` where the run's own ``model`` is not ``model``
    (the finetune section's)."""
    task = run.get("task", "classification")
    middle = "" if task == "classification" else "-recon"
    own = run.get("model", model)
    return f"{run['target']}{middle}-{run.get('init', 'pretrained')}" + (f"-model_{own}" if own != model else "")


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

    A run is its identity (``target``, ``init``, ``task``, ``name``), its architecture (``model``:
    ``default`` or a name of ``models``), the settings it changes (``varied``: its own overrides and
    its grid values), its ``seed`` and the index of its entry (``entry``). Names are derived and
    stable: ``<target>[-recon]-<init>`` (then ``-model_<name>`` where the entry picks another model
    than the finetune section's; or the entry's ``name``), then ``-<key>_<value>`` for each grid
    key whose value differs from the finetune section's, then ``-s<seed>`` unless the seed is 0 —
    so adding a grid value, a model or a seed never renames an existing run.
    """
    finetune = config["finetune"]
    section_model = finetune.get("model", DEFAULT_MODEL)
    base = {**training_settings(finetune), "model": section_model}  # what a run's name is relative to
    grid = finetune.get("grid") or {}
    keys = list(grid)
    runs = []
    for k, entry in enumerate(finetune["runs"]):
        overrides = {key: v for key, v in entry.items() if key not in RUN_IDENTITY and key != "seed"}
        seeds = [entry["seed"]] if "seed" in entry else list(finetune.get("seeds") or [base.get("seed", 0)])
        for values in itertools.product(*(grid[key] for key in keys)):
            combo = dict(zip(keys, values))
            name = entry.get("name") or default_run_name(entry, section_model)
            for key, value in combo.items():
                if _merge(base, overrides).get(key) != value:
                    name += f"-{key}_{_label(value)}"
            for seed in seeds:
                varied = {**overrides, **combo}
                runs.append({"name": name + (f"-s{seed}" if seed else ""), "condition": name,
                             "target": entry["target"], "init": entry.get("init", "pretrained"),
                             "task": entry.get("task", "classification"), "seed": int(seed),
                             "model": varied.get("model", section_model), "varied": varied, "entry": k})
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
    base = training_settings(config["finetune"], bf16=config["compute"]["bf16"])
    varied = {k: v for k, v in run["varied"].items() if k not in NOT_TRAINING}
    return _sorted_keys(_merge(base, {**varied, "seed": run["seed"]}))


def model_kwargs(model: Mapping[str, Any]) -> dict[str, Any]:
    """The ``model`` section's constructor arguments: ``kwargs``, or ``vit`` (their older name)."""
    return dict(model.get("kwargs", model.get("vit")) or {})


def model_names(config: Mapping[str, Any]) -> list[str]:
    """Every configured architecture: ``default`` (the ``model`` section), then the ``models``."""
    return [DEFAULT_MODEL, *(config.get("models") or {})]


def model_section(config: Mapping[str, Any], name: str = DEFAULT_MODEL) -> Mapping[str, Any]:
    """The model section called ``name``: ``model`` for ``default``, else ``models.<name>``."""
    if name == DEFAULT_MODEL:
        return config["model"]
    try:
        return config["models"][name]
    except KeyError:
        raise ConfigError(f"no model {name!r} (models: {', '.join(model_names(config))})") from None


def models_in_use(config: Mapping[str, Any]) -> list[str]:
    """The architectures some run finetunes, in the order of :func:`model_names`."""
    used = {run["model"] for run in expand_runs(config)}
    return [m for m in model_names(config) if m in used] + sorted(used - set(model_names(config)))


def model_layers(config: Mapping[str, Any], model: str = DEFAULT_MODEL) -> dict[str, Any]:
    """What the layers of the model section ``model`` are (see :func:`stirflow.models.describe_timm_model`).

    Without a ``timm_name`` (timm's VisionTransformer from the keyword arguments) this reads
    the arguments and imports nothing; a timm name is built on the meta device (no memory, no
    download), which imports torch and timm.
    """
    section = model_section(config, model)
    kwargs = model_kwargs(section)
    if section.get("timm_name"):
        return _cached_timm_layers(section["timm_name"], json.dumps(kwargs, sort_keys=True),
                                   f"{_model_key(model)}.{'kwargs' if 'kwargs' in section else 'vit'}")
    depth = int(kwargs.get("depth", 12))
    return {"model": "VisionTransformer", "family": "VisionTransformer", "layer_kind": "block",
            "layer_modules": [f"blocks.{i}" for i in range(depth)], "depth": depth, "layout": "NLC",
            "sequential": True, "class_token": bool(kwargs.get("class_token", True)), "vision_transformer": True}


@functools.lru_cache(maxsize=32)
def _cached_timm_layers(name: str, kwargs_json: str, key: str) -> dict[str, Any]:
    """:func:`_timm_layers`, once per model: the DAG asks for every run's layers."""
    return _timm_layers(name, json.loads(kwargs_json), key)


def _timm_layers(name: str, kwargs: dict[str, Any], key: str) -> dict[str, Any]:
    import timm

    section = key.rsplit(".", 1)[0]
    if not timm.is_model(name.split(".")[0]):
        raise ValueError(f"{section}.timm_name: {name!r} is not a timm model")
    from .models import describe_timm_model

    try:
        return describe_timm_model(name, kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        raise ValueError(f"{section}.timm_name: {name!r} cannot be built with {key} = {kwargs} "
                         f"({type(err).__name__}: {err})") from None


def model_depth(config: Mapping[str, Any], model: str = DEFAULT_MODEL) -> int:
    """Number of layers of a configured model (blocks of a ViT, stages of a hierarchical model)."""
    return model_layers(config, model)["depth"]


def stir_blocks(config: Mapping[str, Any], model: str = DEFAULT_MODEL) -> list[int]:
    """The layers scored with STIR in runs of ``model``: all of its own (``stir.blocks: all``) or the list."""
    blocks = config["stir"]["blocks"]
    return list(range(1, model_depth(config, model) + 1)) if blocks == "all" else sorted(blocks)


def run_blocks(config: Mapping[str, Any], run: Mapping[str, Any]) -> list[int]:
    """The layers scored with STIR in ``run`` (an entry of :func:`expand_runs`): those of its model."""
    return stir_blocks(config, run["model"])


def _selected_epochs(sel: str | list | Mapping[str, int], last: int) -> list[int]:
    """An epochs selection ("all", a list, or {first, every}) over 0..last, always with 0 and last."""
    if sel == "all":
        chosen = set(range(last + 1))
    elif isinstance(sel, list):
        chosen = set(sel)
    else:
        chosen = set(range(min(sel["first"], last + 1))) | set(range(0, last + 1, sel["every"]))
    return sorted(chosen | {0, last})


def stir_epochs(config: Mapping[str, Any]) -> list[int]:
    """Epochs scored with STIR: always including 0 (the reference) and the last epoch."""
    return _selected_epochs(config["stir"]["epochs"], int(config["finetune"]["epochs"]))


def evaluated_epochs(config: Mapping[str, Any], section: str) -> list[int]:
    """Epochs whose checkpoints the ``robustness`` or ``adversarial`` section scores: its
    ``epochs`` selection, where "stir" means the epochs scored with STIR (:func:`stir_epochs`)."""
    sel = config[section]["epochs"]
    return stir_epochs(config) if sel == "stir" else _selected_epochs(sel, int(config["finetune"]["epochs"]))


def uses_pretrained_init(config: Mapping[str, Any]) -> bool:
    """Whether any finetuning run starts from pretrained weights."""
    return any(run.get("init", "pretrained") == "pretrained" for run in config["finetune"]["runs"])


def pretrained_models(config: Mapping[str, Any]) -> list[str]:
    """The architectures of the runs that start from pretrained weights."""
    used = {run["model"] for run in expand_runs(config) if run["init"] == "pretrained"}
    return [m for m in model_names(config) if m in used] + sorted(used - set(model_names(config)))


def pretraining_models(config: Mapping[str, Any]) -> list[str]:
    """The architectures pretrained by the DAG: those of pretrained runs, unless weights replace pretraining."""
    return pretrained_models(config) if config["pretrain"]["weights"] is None else []


def needs_pretraining(config: Mapping[str, Any]) -> bool:
    """Whether the DAG has a pretraining job: some run starts pretrained and no weights replace pretraining."""
    return bool(pretraining_models(config))


def pretrain_dir(model: str = DEFAULT_MODEL) -> str:
    """Where a model's pretraining goes under the results: ``pretrain`` for the default model (the
    place it always had, so that its results stay valid), ``pretrain-<name>`` for the others."""
    return "pretrain" if model == DEFAULT_MODEL else f"pretrain-{model}"


def convergence_sample(config: Mapping[str, Any]) -> list[tuple[str, int]]:
    """The (run, epoch) pairs the convergence check scores again (none when it is off)."""
    conv = config["convergence"]
    if not conv["check"]:
        return []
    runs = run_names(config) if conv["runs"] == "all" else list(conv["runs"])
    epochs = [int(config["finetune"]["epochs"])] if conv["epochs"] == "last" else sorted(conv["epochs"])
    return [(r, e) for r in runs for e in epochs]


def convergence_blocks(config: Mapping[str, Any], model: str = DEFAULT_MODEL) -> list[int]:
    """The layers the convergence check scores again in runs of ``model``."""
    blocks = config["convergence"]["blocks"]
    return stir_blocks(config, model) if blocks == "all" else sorted(blocks)


def convergence_steps(config: Mapping[str, Any]) -> int:
    return int(config["stir"]["steps"]) * int(config["convergence"]["factor"])


def model_spec(config: Mapping[str, Any], task: str, num_classes: int, model: str = DEFAULT_MODEL) -> dict[str, Any]:
    """The constructor arguments of a configured model (see :func:`stirflow.models.create_model`)."""
    model = model_section(config, model)
    spec = {"timm_name": model["timm_name"], "kwargs": model_kwargs(model), "mean": list(model["mean"]),
            "std": list(model["std"]), "task": task, "num_classes": num_classes}
    if model.get("input_size") is not None:
        spec["input_size"] = model["input_size"]
    return spec


def training_settings(section: Mapping[str, Any], *, bf16: bool = False) -> dict[str, Any]:
    """The training keys of ``pretrain`` or ``finetune`` (runs, replicates, grid and data choice left
    out), and ``bf16``: whether training runs under bf16 autocast (``compute.bf16``)."""
    return {**{k: v for k, v in section.items() if k not in (*FINETUNE_STRUCTURE, *NOT_TRAINING, "dataset", "weights")},
            "bf16": bool(bf16)}


# --------------------------------------------------------------------------- the open questions' axes

#: The axes of the open questions a config can vary (README, "The open questions").
AXES = ("train_fraction", "schedule", "adversarial", "architectures")


def varied_axes(config: Mapping[str, Any]) -> list[str]:
    """The open questions' axes that ``config`` varies: runs that differ in ``train_fraction``, in
    the lr ``schedule``, in their ``model`` (architectures); and ``adversarial``: PGD attacks with a
    radius above 0 on some classification run. Imports nothing heavy (it decides the DAG's figures)."""
    runs = expand_runs(config)
    settings = [run_training(config, r) for r in runs]
    varied = []
    if len({float(s["train_fraction"]) for s in settings}) > 1:
        varied.append("train_fraction")
    schedules = [{"name": s["schedule"]} if isinstance(s["schedule"], str) else s["schedule"] for s in settings]
    if len({json.dumps(s, sort_keys=True) for s in schedules}) > 1:
        varied.append("schedule")
    adv = config["adversarial"]
    if (adv["enabled"] and any(e > 0 for radii in adv["eps"].values() for e in radii)
            and any(r["task"] == "classification" for r in runs)):
        varied.append("adversarial")
    if len({r["model"] for r in runs}) > 1:
        varied.append("architectures")
    return varied


def figure_names(config: Mapping[str, Any]) -> list[str]:
    """The figures the DAG draws: every one of :data:`stirflow.catalog.FIGURES`, less those of an
    open question's axis that ``config`` does not vary (:data:`stirflow.catalog.AXIS_FIGURES`)."""
    axes = set(varied_axes(config))
    return [name for name in FIGURES if AXIS_FIGURES.get(name, "") in axes or name not in AXIS_FIGURES]
